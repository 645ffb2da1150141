"""``spectool data``: prepare chat data, generate hidden states."""

from __future__ import annotations

from spectool.cli.data_generate import generate
from spectool.cli.data_prepare import prepare
from spectool.cli.help import Command, typer_app

data_app = typer_app("Prepare chat data and generate the verifier's hidden states.")
data_app.command("prepare", cls=Command)(prepare)
data_app.command("generate", cls=Command)(generate)
