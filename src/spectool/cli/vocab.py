"""``spectool vocab build``: token_freq.pt -> d2t.npy / t2d.npy (reduced draft vocabulary)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from spectool.cli.common import console, fail
from spectool.cli.help import Command, typer_app

vocab_app = typer_app("Build the reduced draft vocabulary (d2t.npy / t2d.npy).")


@vocab_app.command("build", cls=Command)
def build(
    token_freq_path: Path = typer.Option(..., "--token-freq-path", help="token_freq.pt from `spectool data prepare`."),
    draft_vocab_size: int = typer.Option(..., "--draft-vocab-size", help="Draft vocabulary size D."),
    output_dir: Path = typer.Option(..., "--output-dir", help="Where d2t.npy, t2d.npy and vocab.json go."),
    verifier_name_or_path: Optional[str] = typer.Option(None, "--verifier-name-or-path", help="Verifier whose config vocab_size is the target vocab size V."),
    target_vocab_size: Optional[int] = typer.Option(None, "--target-vocab-size", help="Target vocab size V (instead of --verifier-name-or-path)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the verifier repository's code (opt-in)."),
) -> None:
    """Pick the D most frequent supervised tokens and write the speculators mapping files."""
    from spectool.model_source import check_model_source

    if (verifier_name_or_path is None) == (target_vocab_size is None):
        fail("give exactly one of --verifier-name-or-path and --target-vocab-size")
    if verifier_name_or_path is not None:
        check_model_source(verifier_name_or_path)
    if not token_freq_path.is_file():
        fail(f"--token-freq-path {token_freq_path}: no such file (`spectool data prepare` writes DATA/token_freq.pt)")
    from spectool.verifier import load_verifier_info
    from spectool.vocab import build_vocab_mapping, load_token_freq, save_vocab_mapping
    V = target_vocab_size if target_vocab_size is not None else load_verifier_info(verifier_name_or_path, trust_remote_code).vocab_size
    freq = load_token_freq(token_freq_path)
    mapping = build_vocab_mapping(freq, draft_vocab_size, V)
    save_vocab_mapping(mapping, output_dir / "d2t.npy", output_dir / "t2d.npy", source=str(token_freq_path))
    seen = sum(freq.values())
    covered = sum(c for t, c in freq.items() if mapping.t2d[t])
    padded = max(0, draft_vocab_size - len(freq))
    console.print(
        f"[green]wrote[/] {output_dir}/d2t.npy, t2d.npy (D={draft_vocab_size}, V={V}): the draft vocabulary covers "
        f"{covered / max(seen, 1):.2%} of {seen} supervised tokens" + (f"; padded with {padded} unseen ids" if padded else "")
    )
