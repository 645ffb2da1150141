"""``spectool init``: build an initialised draft checkpoint that vLLM loads as it is."""

from __future__ import annotations

from spectool.cli.app import app
from spectool.cli.common import console, handle_errors
from spectool.cli.options import config_command
from spectool.config import RunConfig

INIT_GROUPS = ["model", "vocab", "eagle3", "dflash", "peagle"]
INIT_EXTRA = ("save_path", "seed", "data_path")


@handle_errors
def _run(cfg: RunConfig) -> None:
    from spectool.engine.trainer import dry_run
    from spectool.models import read_config

    out = dry_run(cfg)
    spec = read_config(out)
    console.print(
        f"[green]saved[/] {spec.speculator_type} draft to [bold]{out}[/] "
        f"(layers {spec.num_layers}, aux ids {spec.aux_layer_ids}, draft vocab {spec.draft_vocab_size}/{spec.vocab_size}, "
        f"{spec.speculative_tokens} speculative tokens). Check it with `spectool inspect {out}`."
    )


config_command(
    app,
    "init",
    INIT_GROUPS,
    _run,
    help="Build a draft for a verifier, initialise it and save a checkpoint vLLM loads as it is (what `train --dry-run` does).",
    skip={"dry_run"},
    extra=INIT_EXTRA,
)
