"""Shared CLI plumbing: the consoles and the one-line error."""

from __future__ import annotations

from typing import NoReturn

from rich.console import Console

from spectool.errors import SpectoolError

# soft_wrap: never re-wrap our lines (piped output stays one line per message)
console = Console(soft_wrap=True, highlight=False)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)


class CliError(SpectoolError):
    """Bad command-line input found by the CLI itself."""


def fail(message: str) -> NoReturn:
    """Stop the command; ``main()`` prints ``error: message`` on one line and exits 2."""
    raise CliError(message)


def print_error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)


def is_main_rank() -> bool:
    """Rank 0 (or no torchrun): the only process that prints."""
    import os

    return os.environ.get("RANK", "0") == "0"
