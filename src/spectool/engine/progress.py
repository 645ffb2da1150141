"""The progress protocol the trainer reports through (the CLI renders it; no rich here)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("spectool.train")


@dataclass
class RunInfo:
    speculator_type: str
    epochs: int
    steps_per_epoch: int
    total_steps: int
    start_epoch: int
    start_step: int
    world_size: int
    device: str
    save_path: str
    resumed_from: str | None = None


@dataclass
class StepInfo:
    epoch: int
    epochs: int
    batch: int  # batches of this epoch done
    batches: int  # batches in this epoch
    global_step: int
    total_steps: int
    values: dict[str, float] = field(default_factory=dict)  # loss, full_acc_k, cond_acc_k, acceptance_length, ...
    lr: float = 0.0
    tokens_per_s: float = 0.0
    eta_s: float | None = None


class Progress(Protocol):
    def start(self, info: RunInfo) -> None: ...
    def step(self, info: StepInfo) -> None: ...
    def validation(self, epoch: int, values: dict[str, float]) -> None: ...
    def message(self, text: str) -> None: ...
    def end(self) -> None: ...


class NullProgress:
    """Reports nothing (ranks other than 0)."""

    def start(self, info: RunInfo) -> None: ...
    def step(self, info: StepInfo) -> None: ...
    def validation(self, epoch: int, values: dict[str, float]) -> None: ...
    def message(self, text: str) -> None: ...
    def end(self) -> None: ...


class LogProgress(NullProgress):
    """Plain log lines: the default for library use (``spectool.train(cfg)``)."""

    def __init__(self, every: int = 10):
        self.every = every

    def start(self, info: RunInfo) -> None:
        log.info("training %s: %d epochs x %d steps on %s (world %d)", info.speculator_type, info.epochs, info.steps_per_epoch, info.device, info.world_size)

    def step(self, info: StepInfo) -> None:
        if info.global_step % self.every == 0 or info.batch == info.batches:
            log.info("%s", format_step(info))

    def validation(self, epoch: int, values: dict[str, float]) -> None:
        log.info("epoch %d validation: %s", epoch + 1, format_values(values))

    def message(self, text: str) -> None:
        log.info("%s", text)


def format_values(values: dict[str, float], limit: int = 4) -> str:
    """``loss 0.71, acc@1 0.80 @2 0.62, AL 2.31``: the loss, the full accuracy at the first
    ``limit`` drafted positions (1-based, labelled) and the simulated acceptance length."""
    parts = []
    if "loss" in values:
        parts.append(f"loss {values['loss']:.4f}")
    accs = sorted((k for k in values if k.startswith("full_acc_")), key=lambda k: int(k.rsplit("_", 1)[1]))[:limit]
    if accs:
        parts.append("acc" + " ".join(f"@{int(k.rsplit('_', 1)[1]) + 1} {values[k]:.3f}" for k in accs))
    if "acceptance_length" in values:
        parts.append(f"AL {values['acceptance_length']:.3f}")
    return ", ".join(parts)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def format_step(info: StepInfo) -> str:
    return (
        f"epoch {info.epoch + 1}/{info.epochs} step {info.batch}/{info.batches} (global {info.global_step}/{info.total_steps}) "
        f"{format_values(info.values)}, lr {info.lr:.2e}, {info.tokens_per_s:,.0f} tok/s, ETA {format_eta(info.eta_s)}"
    )
