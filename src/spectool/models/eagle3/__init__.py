"""EAGLE-3 (speculators-algorithms.md section 3): the plug-in."""

from __future__ import annotations

from typing import Any

import torch

from spectool.models.eagle3.config import Eagle3SpeculatorConfig
from spectool.models.eagle3.model import Eagle3Draft, shift_sample
from spectool.models.plugin import SpeculatorPlugin


class Eagle3Plugin(SpeculatorPlugin):
    name = "eagle3"
    config_class = Eagle3SpeculatorConfig
    model_class = Eagle3Draft
    options_group = "eagle3"
    sample_transform = staticmethod(shift_sample)

    def spec_fields(self, cfg, info) -> dict[str, Any]:
        e = cfg.eagle3
        return {
            "ttt_steps": e.ttt_steps,
            "norm_before_residual": e.norm_before_residual,
            "norm_before_fc": e.norm_before_fc,
            "fc_norm": e.fc_norm,
            "norm_output": e.norm_output,
            "embed_requires_grad": bool(e.embed_requires_grad),
        }

    def train_kwargs(self, cfg, spec, *, generator: torch.Generator) -> dict[str, Any]:
        e = cfg.eagle3
        return {"ttt_steps": e.ttt_steps, "step_loss_decay": e.ttt_step_loss_decay, "loss": cfg.loss.loss, "ttt_tokens": e.ttt_tokens}

    def eval_kwargs(self, spec, *, generator: torch.Generator) -> dict[str, Any]:
        return {"ttt_steps": spec.ttt_steps}

    def metric_names(self, spec) -> list[str]:
        steps = range(spec.ttt_steps)
        return ["loss", *(f"{m}_{k}" for k in steps for m in ("loss", "full_acc", "cond_acc"))]

    def summary(self, spec) -> dict[str, Any]:
        return {"ttt_steps": spec.ttt_steps, "norm_before_residual": spec.norm_before_residual}


PLUGIN = Eagle3Plugin()

__all__ = ["PLUGIN", "Eagle3Draft", "Eagle3Plugin", "Eagle3SpeculatorConfig", "shift_sample"]
