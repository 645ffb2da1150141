#compdef spectool

_spectool_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _SPECTOOL_COMPLETE=complete_zsh spectool)
}

compdef _spectool_completion spectool
