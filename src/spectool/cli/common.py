"""Shared CLI plumbing: the consoles and the one-line error."""

from __future__ import annotations

from typing import Any, NoReturn

from spectool.errors import SpectoolError


class LazyConsole:
    """A rich Console made on first use: importing rich.console costs a fifth of the
    start-up that --help and completion must keep under 0.3 s. ``get()`` gives the real
    Console (for rich's Progress/Live); attributes are forwarded to it."""

    def __init__(self, **kwargs: Any):
        self._kwargs = kwargs
        self._console: Any = None

    def get(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._kwargs)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


# soft_wrap: never re-wrap our lines (piped output stays one line per message)
console = LazyConsole(soft_wrap=True, highlight=False)
err_console = LazyConsole(stderr=True, soft_wrap=True, highlight=False)


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


def working(text: str) -> Any:
    """A spinner saying what happens (loading a model, importing torch) on a terminal;
    nothing when piped."""
    import contextlib

    return console.status(text) if console.is_terminal else contextlib.nullcontext()
