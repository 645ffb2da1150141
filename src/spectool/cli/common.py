"""Shared CLI plumbing: the console and the one-line error exit."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr (one line) and exit."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn SpectoolError (and missing files) into a one-line error instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from spectool.errors import SpectoolError

        try:
            return fn(*args, **kwargs)
        except SpectoolError as exc:
            fail(str(exc), exc.exit_code)
        except FileNotFoundError as exc:
            fail(f"{exc.strerror or 'not found'}: {exc.filename}: check the path")
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper
