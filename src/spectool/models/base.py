"""What every draft (EAGLE-3, DFlash, P-EAGLE) shares: vocabularies, frozen verifier pieces, metric helpers.

* ``embed_tokens`` [V, H]: the verifier's embedding (frozen unless asked otherwise).
* ``lm_head`` [D, H]: the verifier's lm_head rows of the draft vocabulary, frozen.
* ``d2t`` / ``t2d`` buffers only when D < V (saved; vLLM reads d2t).
* ``verifier_norm_weight`` / ``verifier_lm_head_weight``: non-persistent buffers that turn
  the verifier's pre-norm last hidden state into target logits; never saved.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spectool.models.config import SpeculatorConfig
from spectool.models.layers import RMSNorm, Rotary, init_weights, verifier_logits
from spectool.vocab import VocabMapping

Metrics = dict[str, torch.Tensor]  # name -> tensor([sum, count]); value = sum / count


def metric(total: torch.Tensor | float, count: torch.Tensor | float) -> torch.Tensor:
    """``[sum, count]`` on the device of the tensor given: no host sync in the step (the
    trainer reduces metrics when it logs them)."""
    device = next((x.device for x in (total, count) if isinstance(x, torch.Tensor)), None)
    pair = [torch.as_tensor(x, device=device).detach().to(torch.float64) for x in (total, count)]
    return torch.stack(pair)


class DraftModel(nn.Module):
    def __init__(self, config: SpeculatorConfig):
        super().__init__()
        self.config = config.validate()
        self.hf_config = config.hf_layer_config()
        H, V, D = config.hidden_size, config.vocab_size, config.draft_vocab_size
        self.eps = float(self.hf_config.rms_norm_eps)
        self.embed_tokens = nn.Embedding(V, H)
        self.embed_tokens.weight.requires_grad_(config.embed_requires_grad)
        self.norm = RMSNorm(H, self.eps)
        self.lm_head = nn.Linear(H, D, bias=False)
        self.lm_head.weight.requires_grad_(False)
        if D < V:
            self.register_buffer("d2t", torch.zeros(D, dtype=torch.long))
            self.register_buffer("t2d", torch.zeros(V, dtype=torch.bool))
        self.register_buffer("verifier_norm_weight", torch.ones(H), persistent=False)
        self.register_buffer("verifier_lm_head_weight", torch.zeros(D, H), persistent=False)
        self.rotary = Rotary(self.hf_config)
        self.windows = config.layer_windows()

    # ---- initialisation -----------------------------------------------------------
    def reset_parameters(self, seed: int) -> None:
        """Random decoder weights (deterministic for a seed); verifier parts come later."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            init_weights(self)

    def set_vocab_mapping(self, mapping: VocabMapping | None) -> None:
        if mapping is None:
            if hasattr(self, "d2t"):
                raise ValueError("this draft has a reduced vocabulary: a mapping is required")
            return
        if mapping.draft_vocab_size != self.config.draft_vocab_size or mapping.target_vocab_size != self.config.vocab_size:
            raise ValueError("vocab mapping does not match the draft's vocab sizes")
        self.d2t.copy_(torch.from_numpy(mapping.d2t))
        self.t2d.copy_(torch.from_numpy(mapping.t2d))

    def target_ids(self) -> torch.Tensor:
        """Target-vocab id of each draft id."""
        D = self.config.draft_vocab_size
        ids = torch.arange(D, device=self.lm_head.weight.device)
        return ids + self.d2t if hasattr(self, "d2t") else ids

    def attach_verifier(self, tensors: dict[str, torch.Tensor], *, copy_embed_and_head: bool) -> None:
        """Install the verifier's final norm and lm_head rows (targets); optionally also
        initialise ``embed_tokens`` and ``lm_head`` from them (a fresh draft)."""
        rows = self.target_ids().cpu()
        head_rows = tensors["lm_head"][rows].float()
        with torch.no_grad():
            self.verifier_norm_weight.copy_(tensors["norm"].float())
            self.verifier_lm_head_weight.copy_(head_rows)
            if copy_embed_and_head:
                self.embed_tokens.weight.copy_(tensors["embed"].float())
                self.lm_head.weight.copy_(head_rows)

    # ---- shared pieces of the objectives ------------------------------------------
    def target_logits(self, last_hidden: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return verifier_logits(last_hidden, self.verifier_norm_weight, self.verifier_lm_head_weight.to(last_hidden.dtype), self.eps)

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids] if hasattr(self, "d2t") else draft_ids

    def window_masks(self, build) -> dict[int | None, object]:
        """One mask per distinct sliding window among the layers."""
        return {w: build(w) for w in dict.fromkeys(self.windows)}


def simulated_acceptance_length(full_acc: list[float]) -> float:
    """1 + sum_k P(first k+1 drafted tokens all accepted): tokens per verifier step, bonus included."""
    return 1.0 + float(np.sum(full_acc))
