"""The ``spectool`` application: imports each command module's function or sub-app and
registers it (command modules never import this one), and ``main()``, the one place where
errors become a one-line message and an exit status.

Building the app imports typer, rich's console and the config dataclasses only: no torch,
transformers or numpy, so that ``--help`` and shell completion answer at once.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from spectool import __version__
from spectool.cli.data import data_app
from spectool.cli.eval import eval_command
from spectool.cli.help import Command, Group
from spectool.cli.init import INIT_HELP, init_command
from spectool.cli.inspect import inspect_path
from spectool.cli.train import TRAIN_HELP, resume, train_command
from spectool.cli.vllm import vllm_app
from spectool.cli.vocab import vocab_app


class RootGroup(Group):
    """The root command: its ``main`` is where every failure becomes one ``error:`` line on
    stderr and a status (2 for bad input: SpectoolError, usage errors, missing files; 1 for a run that
    failed (an error's ``exit_code``); 130
    when interrupted). ``main()`` and tests (CliRunner) both come through here."""

    def main(self, args: Any = None, prog_name: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        code = self._guarded(list(sys.argv[1:] if args is None else args), prog_name or "spectool", extra)
        if standalone_mode:
            sys.exit(code)
        return code

    def _guarded(self, argv: list[str], prog_name: str, extra: dict) -> int:
        from typer._click import exceptions as click

        from spectool.cli.common import print_error
        from spectool.cli.options import join_list_arguments
        from spectool.errors import SpectoolError

        if _help_only(argv):
            return 0
        try:
            code = super().main(join_list_arguments(argv), prog_name=prog_name, standalone_mode=False, **extra)
        except SpectoolError as exc:
            print_error(_one_line(exc))
            return getattr(exc, "exit_code", 2)
        except click.NoArgsIsHelpError as exc:
            sys.stdout.write(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            return 0
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else prog_name
            print_error(f"{_one_line(exc.format_message())} (see `{where} --help`)")
            return exc.exit_code
        except click.ClickException as exc:
            print_error(_one_line(exc.format_message()))
            return exc.exit_code
        except FileNotFoundError as exc:
            print_error(f"{exc.strerror or 'not found'}: {exc.filename}: check the path")
            return 2
        except (KeyboardInterrupt, typer.Abort):
            print("interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            sys.stdout = None  # the reader went away (| head): stop quietly
            return 1
        return code if isinstance(code, int) else 0


app = typer.Typer(
    name="spectool",
    help="Train speculative-decoding draft models (EAGLE-3, DFlash, P-EAGLE) that vLLM serves as they are.",
    cls=RootGroup,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        print(f"spectool {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version, help="Print the version and exit."),
) -> None:
    """Train speculative-decoding draft models (EAGLE-3, DFlash, P-EAGLE) that vLLM serves as they are."""


# in the order of the user's path: data -> vocab -> init -> train/resume -> inspect -> eval; vllm beside
app.add_typer(data_app, name="data")
app.add_typer(vocab_app, name="vocab")
app.command("init", cls=Command, help=INIT_HELP)(init_command)
app.command("train", cls=Command, help=TRAIN_HELP)(train_command)
app.command("resume", cls=Command)(resume)
app.command("inspect", cls=Command)(inspect_path)
app.command("eval", cls=Command)(eval_command)
app.add_typer(vllm_app, name="vllm")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _help_only(argv: list[str]) -> bool:
    """``spectool [GROUP] [COMMAND] --help``: render it directly. Parsing would first
    coerce the root options, which makes typer import pydantic (a third of the budget)."""
    if not argv or argv[-1] not in ("--help", "-h") or any(a.startswith("-") for a in argv[:-1]):
        return False
    from typer._click import Context

    from spectool.cli.help import render

    command: Any = typer.main.get_command(app)
    ctx = Context(command, info_name="spectool")
    for word in argv[:-1]:
        command = getattr(command, "commands", {}).get(word)
        if command is None:
            return False
        ctx = Context(command, info_name=word, parent=ctx)
    if argv[-1] == "-h" and "-h" not in ctx.help_option_names:
        return False
    sys.stdout.write(render(command, ctx))
    return True


def run(argv: list[str]) -> int:
    """Run the CLI on ``argv`` and return the exit status."""
    return typer.main.get_command(app).main(argv, prog_name="spectool", standalone_mode=False)


def main() -> None:
    # OpenMP threads spin while they wait; on a busy CPU that makes torch many times
    # slower (measured in shared/kit/README.md). Passive waiting unless the user chose.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(run(sys.argv[1:]))
