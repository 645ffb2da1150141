"""EAGLE-3's config.json fields (speculators-formats.md 5.2) and their validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from spectool.models.config import SpeculatorConfig, SpeculatorConfigError

MAX_TTT_STEPS = 64  # vLLM drafts one token per step; more is a typo, not a draft


@dataclass
class Eagle3SpeculatorConfig(SpeculatorConfig):
    ttt_steps: int = 3
    norm_before_residual: bool = True
    norm_before_fc: bool = False
    fc_norm: bool = False
    norm_output: bool = False

    speculator_type: ClassVar[str] = "eagle3"
    architecture: ClassVar[str] = "Eagle3DraftModel"
    explicit_fields: ClassVar[tuple[str, ...]] = ("norm_before_residual",)

    @property
    def speculative_tokens(self) -> int:
        return self.ttt_steps

    def validate_algorithm(self) -> None:
        if not 1 <= self.ttt_steps <= MAX_TTT_STEPS:
            raise SpeculatorConfigError(f"ttt_steps (speculative_tokens) {self.ttt_steps} must lie in [1, {MAX_TTT_STEPS}]")
        if self.norm_before_fc and self.fc_norm:
            raise SpeculatorConfigError("norm_before_fc and fc_norm exclude each other")

    def algorithm_json(self) -> dict[str, Any]:
        return {
            "eagle_aux_hidden_state_layer_ids": list(self.aux_layer_ids),
            "norm_before_residual": self.norm_before_residual,
            "norm_before_fc": self.norm_before_fc,
            "fc_norm": self.fc_norm,
            "norm_output": self.norm_output,
            "embed_requires_grad": self.embed_requires_grad,
        }

    @classmethod
    def algorithm_fields(cls, data: dict[str, Any], speculative_tokens: int) -> dict[str, Any]:
        return {
            "aux_layer_ids": list(data.get("eagle_aux_hidden_state_layer_ids") or []),
            "ttt_steps": speculative_tokens,
            "norm_before_residual": bool(data.get("norm_before_residual", True)),
            "norm_before_fc": bool(data.get("norm_before_fc", False)),
            "fc_norm": bool(data.get("fc_norm", False)),
            "norm_output": bool(data.get("norm_output", False)),
            "embed_requires_grad": bool(data.get("embed_requires_grad", False)),
        }
