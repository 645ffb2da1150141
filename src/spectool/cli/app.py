"""The ``spectool`` Typer application: registers each command group's module."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="spectool",
    help="Train speculative-decoding draft models (EAGLE-3, DFlash) that vLLM serves as they are.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _register() -> None:
    """Each command module adds its commands or sub-app to ``app``, in the order of the
    user's path (data -> vocab -> init -> train/resume -> inspect -> eval; vllm beside)."""
    from spectool.cli.data import data_app
    from spectool.cli.vllm import vllm_app
    from spectool.cli.vocab import vocab_app

    import spectool.cli.data_prepare  # noqa: F401  (registers on data_app)
    import spectool.cli.data_generate  # noqa: F401

    app.add_typer(data_app, name="data")
    app.add_typer(vocab_app, name="vocab")
    import spectool.cli.init  # noqa: F401
    import spectool.cli.train  # noqa: F401  (train, resume)
    import spectool.cli.inspect  # noqa: F401
    import spectool.cli.eval  # noqa: F401

    app.add_typer(vllm_app, name="vllm")


_register()


def main() -> None:
    import os
    import sys

    # OpenMP threads spin while they wait; on a busy CPU that makes torch many times
    # slower (measured in shared/kit/README.md). Passive waiting unless the user chose.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from spectool.cli.options import join_list_arguments

    app(args=join_list_arguments(sys.argv[1:]), prog_name="spectool")
