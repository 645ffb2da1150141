"""Optimizers (AdamW; Muon on 2-D hidden matrices + AdamW on the rest) and LR schedules.

One scheduler per optimizer, so Muon and AdamW warm up and decay independently.
Schedules are plain LambdaLR functions of the step: their state is the step counter only.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from spectool.config import RunConfig


def is_muon_param(name: str, param: nn.Parameter) -> bool:
    """Muon orthogonalises hidden matrices: trainable, 2-D with both dims > 1, not embeddings/heads."""
    return (
        param.requires_grad
        and param.ndim == 2
        and min(param.shape) > 1
        and "embed_tokens" not in name
        and "lm_head" not in name
    )


def build_optimizers(model: nn.Module, cfg: RunConfig) -> list[torch.optim.Optimizer]:
    """``[AdamW]`` or ``[Muon, AdamW]`` (AdamW omitted when it would get no parameter)."""
    o = cfg.optimizer
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("the draft has no trainable parameters")
    if o.optimizer == "adamw":
        return [torch.optim.AdamW([p for _, p in params], lr=cfg.training.lr, weight_decay=o.weight_decay)]
    muon = [p for n, p in params if is_muon_param(n, p)]
    rest = [p for n, p in params if not is_muon_param(n, p)]
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.Muon(
            muon,
            lr=o.muon_lr,
            weight_decay=o.muon_weight_decay,
            momentum=o.muon_momentum,
            ns_steps=o.muon_ns_steps,
            adjust_lr_fn=o.muon_adjust_lr_fn,
        )
    ]
    if rest:
        optimizers.append(torch.optim.AdamW(rest, lr=cfg.training.lr, weight_decay=o.weight_decay))
    return optimizers


def resolve_steps(cfg: RunConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(total, warmup): total = --scheduler-total-steps or the run's steps; warmup = explicit or 1 %."""
    s = cfg.scheduler
    run_steps = cfg.training.epochs * steps_per_epoch
    if cfg.training.max_steps is not None:
        run_steps = min(run_steps, cfg.training.max_steps)
    total = s.scheduler_total_steps or max(1, run_steps)
    warmup = s.scheduler_warmup_steps if s.scheduler_warmup_steps is not None else int(0.01 * total)
    return total, min(warmup, total)


def lr_factor(step: int, kind: str, total: int, warmup: int, cycles: float = 0.5) -> float:
    """Multiplier of the base LR after ``step`` optimizer steps (HF's warmup schedules)."""
    if warmup > 0 and step < warmup:
        return step / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 2.0 * cycles * progress)))


class _Schedule:
    """A picklable-free LR lambda (LambdaLR stores only its step counter)."""

    def __init__(self, kind: str, total: int, warmup: int, cycles: float):
        self.kind, self.total, self.warmup, self.cycles = kind, total, warmup, cycles

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.kind, self.total, self.warmup, self.cycles)


def build_schedulers(optimizers: list[torch.optim.Optimizer], cfg: RunConfig, steps_per_epoch: int) -> list[LambdaLR]:
    total, warmup = resolve_steps(cfg, steps_per_epoch)
    s = cfg.scheduler
    return [LambdaLR(opt, _Schedule(s.scheduler_type, total, warmup, s.scheduler_num_cosine_cycles)) for opt in optimizers]
