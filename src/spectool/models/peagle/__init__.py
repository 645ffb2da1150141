"""P-EAGLE (speculators-algorithms.md section 5): parallel drafting, the plug-in.

Run options (``peagle`` group): ``--num-depths``, ``--down-sample-ratio``,
``--down-sample-ratio-min``; also EAGLE-3's ``--norm-before-residual``,
``--norm-before-fc``, ``--embed-requires-grad`` (default on here), the shared
``--mask-token-id`` and ``--max-anchors`` (seeds per packed row).
"""

from __future__ import annotations

from typing import Any

import torch

from spectool.errors import SpectoolError
from spectool.models.eagle3 import shift_sample
from spectool.models.peagle.config import PEagleSpeculatorConfig
from spectool.models.peagle.model import PEagleDraft
from spectool.models.plugin import SpeculatorPlugin

# COD sampling when measuring a saved draft: every depth keeps all chains that can reach
# it (the estimate is unbiased at any ratio; keeping all lowers its variance), from at most
# 256 seeds per packed row so the element count stays near T + 256 * (num_depths - 1).
EVAL_SAMPLING = {"down_sample_ratio": 1.0, "down_sample_ratio_min": 1.0, "max_anchors": 256}


class PEagleOptionError(SpectoolError):
    """An EAGLE-3 option P-EAGLE cannot honour."""


class PEaglePlugin(SpeculatorPlugin):
    name = "peagle"
    config_class = PEagleSpeculatorConfig
    model_class = PEagleDraft
    options_group = "peagle"
    sample_transform = staticmethod(shift_sample)

    def spec_fields(self, cfg, info) -> dict[str, Any]:
        from spectool.models.build import resolve_mask_token_id

        e = cfg.eagle3
        for flag, value in (("--fc-norm", e.fc_norm), ("--norm-output", e.norm_output)):
            if value:
                raise PEagleOptionError(f"{flag} is not served by vLLM's P-EAGLE: drop it")
        return {
            "num_depths": cfg.peagle.num_depths,
            "mask_token_id": resolve_mask_token_id(cfg, info),
            "norm_before_residual": e.norm_before_residual,
            "norm_before_fc": e.norm_before_fc,
            "embed_requires_grad": True if e.embed_requires_grad is None else e.embed_requires_grad,
        }

    def train_kwargs(self, cfg, spec, *, generator: torch.Generator) -> dict[str, Any]:
        p = cfg.peagle
        return {
            "num_depths": spec.num_depths,
            "down_sample_ratio": p.down_sample_ratio,
            "down_sample_ratio_min": p.down_sample_ratio_min,
            "max_anchors": cfg.dflash.max_anchors,
            "loss": cfg.loss.loss,
            "generator": generator,
        }

    def eval_kwargs(self, spec, *, generator: torch.Generator) -> dict[str, Any]:
        return {"num_depths": spec.num_depths, "generator": generator, **EVAL_SAMPLING}

    def metric_names(self, spec) -> list[str]:
        depths = range(spec.num_depths)
        return ["loss", *(f"position_{d}_acc" for d in depths), *(f"full_acc_{d}" for d in depths)]

    def max_speculative_tokens(self, spec) -> int | None:
        return spec.num_depths  # deeper mask slots were never trained

    def summary(self, spec) -> dict[str, Any]:
        return {"num_depths": spec.num_depths, "mask_token_id": spec.mask_token_id, "norm_before_residual": spec.norm_before_residual}



PLUGIN = PEaglePlugin()

__all__ = ["PLUGIN", "PEagleDraft", "PEaglePlugin", "PEagleSpeculatorConfig"]
