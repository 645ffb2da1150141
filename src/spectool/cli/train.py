"""``spectool train`` and ``spectool resume``: check the options, call the engine, render progress."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from spectool.cli.common import console, err_console, fail, is_main_rank
from spectool.cli.options import config_command
from spectool.config import GROUPS, ConfigError, RunConfig, check_data_path


class ConsoleProgress:
    """Rank 0's view of a run: a progress bar and one kept line per epoch on a terminal;
    plain lines (at most one per ``every_s`` seconds, plus each epoch's end) when piped."""

    def __init__(self, every_s: float = 10.0):
        self.tty = console.is_terminal
        self.every_s = every_s
        self.bar = None
        self.task = None
        self._last_plain = 0.0
        self._epoch_sums: dict[str, float] = {}
        self._epoch_steps = 0
        self.status = console.status("starting") if self.tty else None

    def waiting(self, text: str) -> None:
        """What happens before the first step (importing torch, loading the verifier...)."""
        if self.status is not None:
            self.status.update(text)
            self.status.start()
        else:
            console.print(text)

    def start(self, info) -> None:
        if self.status is not None:
            self.status.stop()
        resumed = f", resuming from {info.resumed_from}" if info.resumed_from else ""
        console.print(f"training {info.speculator_type} on {info.device} (world {info.world_size}): "
                      f"{info.epochs} epochs x {info.steps_per_epoch} steps, {info.total_steps} steps in all{resumed}")
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                TextColumn("{task.fields[stats]}"), console=console.get(), transient=True)
            self.task = self.bar.add_task("train", total=info.total_steps, completed=info.start_step,
                                          epoch=f"{info.start_epoch + 1}/{info.epochs}", stats="")
            self.bar.start()

    def step(self, info) -> None:
        from spectool.engine.progress import format_eta, format_step, format_values

        for k, v in info.values.items():
            self._epoch_sums[k] = self._epoch_sums.get(k, 0.0) + v
        self._epoch_steps += 1
        if self.bar is not None:
            stats = f"{format_values(info.values)}, {info.tokens_per_s:,.0f} tok/s, ETA {format_eta(info.eta_s)}"
            self.bar.update(self.task, completed=info.global_step, epoch=f"{info.epoch + 1}/{info.epochs}", stats=stats)
        elif info.global_step == 1 or info.batch == info.batches or time.monotonic() - self._last_plain > self.every_s:
            self._last_plain = time.monotonic()
            console.print(format_step(info))
        if info.batch == info.batches:
            mean = {k: v / self._epoch_steps for k, v in self._epoch_sums.items()}
            console.print(f"epoch {info.epoch + 1}/{info.epochs} train (mean of {self._epoch_steps} steps): {format_values(mean)}")
            self._epoch_sums, self._epoch_steps = {}, 0

    def validation(self, epoch: int, values: dict) -> None:
        from spectool.engine.progress import format_values

        console.print(f"epoch {epoch + 1} validation: {format_values(values)}")

    def message(self, text: str) -> None:
        console.print(text)

    def end(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        if self.status is not None:
            self.status.stop()


def preflight(cfg: RunConfig, need_data: bool = True) -> None:
    """Every check that needs no model and no torch, so that a wrong option answers at once."""
    from spectool.model_source import check_model_source

    cfg.validate()
    check_model_source(cfg.model.verifier_name_or_path)
    for flag, value in (("--from-pretrained", cfg.model.from_pretrained), ("--draft-config", cfg.model.draft_config),
                        ("--d2t-path", cfg.vocab.d2t_path), ("--t2d-path", cfg.vocab.t2d_path)):
        if value and not Path(value).exists():
            raise ConfigError(f"{flag} {value}: no such file or directory")
    if need_data and not cfg.model.dry_run:
        check_data_path(cfg.data.data_path)
    save = Path(cfg.training.save_path)
    if save.exists() and not save.is_dir():
        raise ConfigError(f"--save-path {save} is a file: pass a directory")


def quiet_third_party() -> None:
    """One output stream: no transformers/hub progress bars, no known-harmless warnings.
    Call after the checks: it imports transformers."""
    import os
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # FSDP2's fully_shard on a parameter view; harmless for our parameters
    warnings.filterwarnings("ignore", message=r".*returned a view tensor.*")
    warnings.filterwarnings("ignore", message=r".*TypedStorage is deprecated.*")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights: 0%|...| 0/272"
    hf_logging.set_verbosity_error()


def run_training(cfg: RunConfig) -> None:
    """Train a draft as the options say (resumes automatically)."""
    import logging
    import sys

    cfg.with_absolute_paths()
    preflight(cfg)
    main_rank = is_main_rank()
    progress = ConsoleProgress() if main_rank else None
    try:
        if progress is not None:
            progress.waiting(f"loading the verifier {cfg.model.verifier_name_or_path} and planning the data...")
        quiet_third_party()
        # rank 0 speaks for the run; the others only report errors
        logging.basicConfig(level=logging.WARNING if main_rank else logging.ERROR, format="%(message)s")
        from spectool.engine import train
        from spectool.engine.progress import NullProgress

        if cfg.model.dry_run:
            from spectool.engine.trainer import dry_run

            out = dry_run(cfg)
            console.print(f"[green]saved[/] initialised draft to [bold]{out}[/] (dry run); train from it with --from-pretrained {out}")
            return
        result = train(cfg, progress or NullProgress())
    finally:
        if progress is not None:
            progress.end()  # also on errors: the terminal gets its cursor back
    if not main_rank:
        if result.status == "interrupted":
            sys.exit(130)
        return
    if result.status == "interrupted":
        err_console.print(f"interrupted: saved {result.last_checkpoint}; continue with `spectool resume {cfg.training.save_path}`")
        sys.exit(130)
    best = f", best {result.best_checkpoint}" if result.best_checkpoint else ""
    console.print(f"[green]done[/] ({result.status}) after {result.global_step} steps: latest {Path(cfg.training.save_path) / 'latest'}{best}")


train_command = config_command(run_training, list(GROUPS), config_file=True)
TRAIN_HELP = ("Train an EAGLE-3, DFlash or P-EAGLE draft on a verifier's hidden states (resumes automatically; "
              "torchrun -m spectool train for several processes). --config run.yaml takes the options from a file.")


def resume(save_dir: Path = typer.Argument(..., metavar="SAVE_DIR", help="A --save-path of an earlier run (holds run.yaml).")) -> None:
    """Continue a run from SAVE_DIR/run.yaml and its latest complete checkpoint (from any directory)."""
    cfg_path = save_dir / "run.yaml"
    if not cfg_path.is_file():
        fail(f"{cfg_path} not found: SAVE_DIR must be the --save-path of a `spectool train` run")
    cfg = RunConfig.load_yaml(cfg_path)
    cfg.training.save_path = str(save_dir.resolve())
    cfg.training.no_resume_from_checkpoint = False
    cfg.model.dry_run = False
    run_training(cfg)
