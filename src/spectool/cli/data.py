"""``spectool data``: prepare chat data, generate hidden states."""

from __future__ import annotations

import typer

data_app = typer.Typer(help="Prepare chat data and generate the verifier's hidden states.", no_args_is_help=True)
