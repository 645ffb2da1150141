"""DFlash (speculators-algorithms.md section 4): the plug-in."""

from __future__ import annotations

from typing import Any

import torch

from spectool.models.dflash.config import DFlashSpeculatorConfig
from spectool.models.dflash.model import DFlashDraft, select_anchors
from spectool.models.plugin import SpeculatorPlugin

EVAL_MAX_ANCHORS = 256  # anchors per packed row when measuring a saved draft (the training default)


class DFlashPlugin(SpeculatorPlugin):
    name = "dflash"
    config_class = DFlashSpeculatorConfig
    model_class = DFlashDraft
    options_group = "dflash"

    def spec_fields(self, cfg, info) -> dict[str, Any]:
        from spectool.models.build import resolve_mask_token_id

        return {
            "block_size": cfg.dflash.block_size,
            "mask_token_id": resolve_mask_token_id(cfg, info),
            "sliding_window_non_causal": cfg.dflash.sliding_window_non_causal,
        }

    def train_kwargs(self, cfg, spec, *, generator: torch.Generator) -> dict[str, Any]:
        d = cfg.dflash
        return {"block_size": spec.block_size, "max_anchors": d.max_anchors, "decay_gamma": d.dflash_decay_gamma, "loss": cfg.loss.loss, "generator": generator}

    def eval_kwargs(self, spec, *, generator: torch.Generator) -> dict[str, Any]:
        return {"block_size": spec.block_size, "max_anchors": EVAL_MAX_ANCHORS, "generator": generator}

    def metric_names(self, spec) -> list[str]:
        slots = range(1, spec.block_size)
        return ["loss", *(f"position_{s}_acc" for s in slots), *(f"full_acc_{s - 1}" for s in slots)]

    def max_speculative_tokens(self, spec) -> int | None:
        return spec.block_size - 1

    def summary(self, spec) -> dict[str, Any]:
        return {"block_size": spec.block_size, "mask_token_id": spec.mask_token_id}


PLUGIN = DFlashPlugin()

__all__ = ["PLUGIN", "DFlashDraft", "DFlashPlugin", "DFlashSpeculatorConfig", "select_anchors"]
