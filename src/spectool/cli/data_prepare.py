"""``spectool data prepare``: chat files -> processed dataset (tokens, loss masks, token_freq.pt)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from spectool.cli.common import console

# Defaults live in the library (spectool.data.chat.prepare); repeated here only as literals that a
# test checks against it, so that `--help` stays free of heavy imports.
_DEFAULT_MAX_SEQ_LEN = 8192
_DEFAULT_SEED = 0


def prepare(
    verifier_name_or_path: str = typer.Option(
        ..., "--verifier-name-or-path", help="Verifier model id or local dir; its tokenizer and chat template are used."
    ),
    data: list[Path] = typer.Option(
        ..., "--data", help="Chat file (.jsonl, or .json list) or a directory of them; repeat for several."
    ),
    output: Path = typer.Option(..., "--output", help="Directory to write the processed dataset to."),
    max_seq_len: int = typer.Option(_DEFAULT_MAX_SEQ_LEN, "--max-seq-len", help="Truncate rows to this many tokens."),
    seed: int = typer.Option(_DEFAULT_SEED, "--seed", help="Seed of the conversation shuffle (recorded in meta.json)."),
    max_samples: Optional[int] = typer.Option(None, "--max-samples", help="Stop after this many rows (assistant turns)."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Allow the verifier's tokenizer to run code from its repository."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset already in --output."),
) -> None:
    """Tokenise chats with the verifier's chat template; supervise assistant turns only (one row per turn)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from spectool.model_source import check_model_source

    check_model_source(verifier_name_or_path, files=("config.json", "tokenizer_config.json", "tokenizer.json"))
    missing = [str(p) for p in data if not p.exists()]
    if missing:
        raise FileNotFoundError(2, "no such file or directory", missing[0])
    # absolute paths in meta.json: inspect and train find the tokenizer from any directory
    if Path(verifier_name_or_path).expanduser().is_dir():
        verifier_name_or_path = str(Path(verifier_name_or_path).expanduser().resolve())
    data = [p.resolve() for p in data]
    from spectool.data.chat.prepare import prepare_chat_data

    with Progress(
        TextColumn("tokenising"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console.get(), transient=True, disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("chats", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = prepare_chat_data(
            data,
            output,
            verifier_name_or_path,
            max_seq_len=max_seq_len,
            seed=seed,
            max_samples=max_samples,
            trust_remote_code=trust_remote_code,
            overwrite=overwrite,
            progress=progress,
        )
    render_summary(result)


def render_summary(result) -> None:
    from rich.table import Table

    s = result.summary
    table = Table(title=f"spectool data prepare -> {result.output}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("conversations read", f"{s.conversations_in:,}")
    if s.conversations_used != s.conversations_in:
        table.add_row("conversations used (--max-samples)", f"{s.conversations_used:,}")
    if s.conversations_without_assistant:
        table.add_row("conversations without assistant turn", f"{s.conversations_without_assistant:,}")
    table.add_row("rows in (assistant turns)", f"{s.rows_in:,}")
    for reason, count in s.dropped.items():
        table.add_row(f"  dropped: {reason}", f"[yellow]{count:,}[/]")
    table.add_row("rows out", f"[green]{s.rows_out:,}[/]")
    table.add_row("tokens", f"{s.tokens:,}")
    table.add_row("supervised tokens", f"{s.supervised_tokens:,}")
    table.add_row("supervised share", f"{s.supervised_share:.1%}")
    table.add_row("max seq len / seed", f"{result.meta['max_seq_len']} / {result.meta['seed']}")
    table.add_row("chat template sha256", result.meta["chat_template_sha256"][:16])
    console.print(table)
    if s.first_error:
        console.print(f"[yellow]first rejected conversation:[/] {s.first_error}", highlight=False, soft_wrap=True)
