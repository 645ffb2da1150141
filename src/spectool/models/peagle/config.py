"""P-EAGLE's config.json fields (speculators-formats.md 5.2): EAGLE-3's keys plus
``mask_token_id``; ``speculative_tokens`` = ``num_depths``; embeddings trained by default.

vLLM's P-EAGLE loader reads neither ``fc_norm`` nor ``norm_output`` (and a parallel draft
feeds no state back, so ``norm_output`` means nothing): both are written false and a
config that sets them is refused rather than served differently than trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from spectool.models.config import SpeculatorConfig, SpeculatorConfigError

MAX_DEPTHS = 64  # one parallel forward drafts num_depths tokens; more is a typo


@dataclass
class PEagleSpeculatorConfig(SpeculatorConfig):
    num_depths: int = 8
    mask_token_id: int | None = None
    norm_before_residual: bool = True
    norm_before_fc: bool = False
    embed_requires_grad: bool = True

    fc_norm: ClassVar[bool] = False
    norm_output: ClassVar[bool] = False
    speculator_type: ClassVar[str] = "peagle"
    architecture: ClassVar[str] = "PEagleDraftModel"
    explicit_fields: ClassVar[tuple[str, ...]] = ("norm_before_residual", "mask_token_id")

    @property
    def speculative_tokens(self) -> int:
        return self.num_depths

    def validate_algorithm(self) -> None:
        if not isinstance(self.num_depths, int) or not 1 <= self.num_depths <= MAX_DEPTHS:
            raise SpeculatorConfigError(f"num_depths (speculative_tokens) {self.num_depths} must lie in [1, {MAX_DEPTHS}]")
        if not isinstance(self.mask_token_id, int) or not 0 <= self.mask_token_id < self.vocab_size:
            raise SpeculatorConfigError(f"mask_token_id {self.mask_token_id} must lie in [0, {self.vocab_size}) for P-EAGLE: pass --mask-token-id")

    def algorithm_json(self) -> dict[str, Any]:
        return {
            "eagle_aux_hidden_state_layer_ids": list(self.aux_layer_ids),
            "norm_before_residual": self.norm_before_residual,
            "norm_before_fc": self.norm_before_fc,
            "fc_norm": False,
            "norm_output": False,
            "embed_requires_grad": self.embed_requires_grad,
            "mask_token_id": self.mask_token_id,
        }

    @classmethod
    def algorithm_fields(cls, data: dict[str, Any], speculative_tokens: int) -> dict[str, Any]:
        for key in ("fc_norm", "norm_output"):
            if data.get(key):
                raise SpeculatorConfigError(f"{key} is true, but vLLM's P-EAGLE ignores it: re-create the draft with `spectool init --speculator-type peagle`")
        return {
            "aux_layer_ids": list(data.get("eagle_aux_hidden_state_layer_ids") or []),
            "num_depths": speculative_tokens,
            "mask_token_id": data.get("mask_token_id"),
            # vLLM's P-EAGLE default is False when the key is missing (inspect flags that).
            "norm_before_residual": bool(data.get("norm_before_residual", False)),
            "norm_before_fc": bool(data.get("norm_before_fc", False)),
            "embed_requires_grad": bool(data.get("embed_requires_grad", True)),
        }
