"""``spectool train`` and ``spectool resume``: parse, call the engine, render progress."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from spectool.cli.app import app
from spectool.cli.common import console, err_console, fail, handle_errors
from spectool.cli.options import config_command
from spectool.config import GROUPS, RunConfig


class ConsoleProgress:
    """Progress lines on the console: a rich status line on a terminal, plain lines otherwise."""

    def __init__(self, every: int = 1):
        self.tty = console.is_terminal
        self.every = every
        self.status = None
        self._last_plain = 0.0

    def start(self, info) -> None:
        resumed = f", resuming from {info.resumed_from}" if info.resumed_from else ""
        console.print(f"training {info.speculator_type} on {info.device} (world {info.world_size}): "
                      f"{info.epochs} epochs x {info.steps_per_epoch} steps, {info.total_steps} steps in all{resumed}", highlight=False)
        if self.tty:
            self.status = console.status("starting")
            self.status.start()

    def step(self, info) -> None:
        from spectool.engine.progress import format_step

        line = format_step(info)
        if self.status is not None:
            self.status.update(line)
        elif info.global_step % self.every == 0 or info.batch == info.batches or time.monotonic() - self._last_plain > 30:
            self._last_plain = time.monotonic()
            print(line, flush=True)

    def validation(self, epoch: int, values: dict) -> None:
        from spectool.engine.progress import format_values

        console.print(f"epoch {epoch + 1} validation: {format_values(values)}", highlight=False)

    def message(self, text: str) -> None:
        console.print(text, highlight=False)

    def end(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def run_training(cfg: RunConfig) -> None:
    import logging

    from spectool.engine import train

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    cfg.validate()
    if cfg.model.dry_run:
        from spectool.engine.trainer import dry_run

        out = dry_run(cfg)
        console.print(f"[green]saved[/] initialised draft to [bold]{out}[/] (dry run); train from it with --from-pretrained {out}")
        return
    result = train(cfg, ConsoleProgress())
    if result.status == "interrupted":
        err_console.print(f"interrupted: saved {result.last_checkpoint}; continue with `spectool resume {cfg.training.save_path}`")
        sys.exit(130)
    best = f", best {result.best_checkpoint}" if result.best_checkpoint else ""
    console.print(f"[green]done[/] ({result.status}) after {result.global_step} steps: latest {Path(cfg.training.save_path) / 'latest'}{best}", highlight=False)


config_command(
    app,
    "train",
    list(GROUPS),
    handle_errors(run_training),
    help="Train an EAGLE-3, DFlash or P-EAGLE draft on a verifier's hidden states (resumes automatically; torchrun -m spectool train for several processes).",
)


@app.command("resume")
@handle_errors
def resume(save_dir: Path = typer.Argument(..., help="A --save-path of an earlier run (holds run.yaml).")) -> None:
    """Continue a run from SAVE_DIR/run.yaml and its latest complete checkpoint."""
    cfg_path = save_dir / "run.yaml"
    if not cfg_path.is_file():
        fail(f"{cfg_path} not found: SAVE_DIR must be the --save-path of a `spectool train` run")
    cfg = RunConfig.load_yaml(cfg_path)
    cfg.training.save_path = str(save_dir)
    cfg.training.no_resume_from_checkpoint = False
    cfg.model.dry_run = False
    run_training(cfg)
