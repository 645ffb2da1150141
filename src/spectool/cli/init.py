"""``spectool init``: build an initialised draft checkpoint that vLLM loads as it is."""

from __future__ import annotations

from spectool.cli.common import console, working
from spectool.cli.options import config_command
from spectool.config import RunConfig

INIT_GROUPS = ["model", "vocab", "eagle3", "dflash", "peagle"]
INIT_EXTRA = ("save_path", "seed", "data_path")
INIT_HELP = "Build a draft for a verifier, initialise it and save a checkpoint vLLM loads as it is (what `train --dry-run` does)."


def _run(cfg: RunConfig) -> None:
    """Build, initialise and save the draft."""
    from spectool.cli.train import preflight, quiet_third_party

    cfg.with_absolute_paths()
    preflight(cfg, need_data=False)
    quiet_third_party()
    with working(f"building a {cfg.model.speculator_type} draft for {cfg.model.verifier_name_or_path}..."):
        from spectool.engine.trainer import dry_run
        from spectool.models import read_config

        out = dry_run(cfg)
    spec = read_config(out)
    console.print(
        f"[green]saved[/] {spec.speculator_type} draft to [bold]{out}[/] "
        f"(layers {spec.num_layers}, aux ids {spec.aux_layer_ids}, draft vocab {spec.draft_vocab_size}/{spec.vocab_size}, "
        f"{spec.speculative_tokens} speculative tokens). Check it with `spectool inspect {out}`."
    )


init_command = config_command(_run, INIT_GROUPS, skip={"dry_run"}, extra=INIT_EXTRA)
