"""DFlash's config.json fields (speculators-formats.md 5.3) and their validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from spectool.models.config import SpeculatorConfig, SpeculatorConfigError

MAX_BLOCK_SIZE = 256  # a block is one draft forward over block_size slots; larger is a typo


@dataclass
class DFlashSpeculatorConfig(SpeculatorConfig):
    block_size: int = 8
    mask_token_id: int | None = None
    sliding_window_non_causal: bool = False

    speculator_type: ClassVar[str] = "dflash"
    architecture: ClassVar[str] = "DFlashDraftModel"
    decoder_model_type: ClassVar[str | None] = "qwen3"
    explicit_fields: ClassVar[tuple[str, ...]] = ("sliding_window_non_causal", "mask_token_id")

    @property
    def speculative_tokens(self) -> int:
        return self.block_size - 1

    def validate_algorithm(self) -> None:
        if not isinstance(self.block_size, int) or not 2 <= self.block_size <= MAX_BLOCK_SIZE:
            raise SpeculatorConfigError(f"block_size {self.block_size} must lie in [2, {MAX_BLOCK_SIZE}]")
        if not isinstance(self.mask_token_id, int) or not 0 <= self.mask_token_id < self.vocab_size:
            raise SpeculatorConfigError(f"mask_token_id {self.mask_token_id} must lie in [0, {self.vocab_size}) for DFlash: pass --mask-token-id")
        if len({w is None for w in self.layer_windows()}) > 1:
            raise SpeculatorConfigError("vLLM's V1 runner refuses DFlash drafts that mix sliding and full attention layers: make all layers alike")

    def algorithm_json(self) -> dict[str, Any]:
        return {
            "block_size": self.block_size,
            "aux_hidden_state_layer_ids": list(self.aux_layer_ids),
            "mask_token_id": self.mask_token_id,
            "sliding_window_non_causal": self.sliding_window_non_causal,
            "sample_from_anchor": False,
        }

    @classmethod
    def algorithm_fields(cls, data: dict[str, Any], speculative_tokens: int) -> dict[str, Any]:
        if data.get("sample_from_anchor"):
            raise SpeculatorConfigError("sample_from_anchor DFlash drafts are not supported (vLLM does not serve them)")
        return {
            "aux_layer_ids": list(data.get("aux_hidden_state_layer_ids") or []),
            "block_size": int(data.get("block_size", speculative_tokens + 1)),
            "mask_token_id": data.get("mask_token_id"),
            "sliding_window_non_causal": bool(data.get("sliding_window_non_causal", False)),
        }
