"""P-EAGLE draft: EAGLE-3's fc and decoder layers, drafting all K tokens in one forward.

Training elements come from COD sampling (:mod:`.cod`): a depth-0 element is EAGLE-3's
row (the anchor's token and aux states, shifted as :func:`shift_sample` does); a depth-d
element is the mask token with the trained ``mask_hidden`` in place of the aux states, at
position anchor + d, predicting the verifier distribution at row anchor + d. All elements
run through the layers once, under the P-EAGLE mask (:mod:`.mask`); the loss is one
masked mean over every supervised element (depths pooled, no decay).

Inference (vLLM's parallel drafting, and :meth:`PEagleDraft.propose`): the context rows,
then K - 1 mask slots after the last one; the last context row and the slots give the K
draft tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from spectool.attention import AttentionMask
from spectool.losses import weighted_head_loss
from spectool.models.base import Metrics, metric
from spectool.models.eagle3 import Eagle3Draft
from spectool.models.peagle.cod import cod_sample
from spectool.models.peagle.mask import peagle_mask


class PEagleDraft(Eagle3Draft):
    def __init__(self, config):
        super().__init__(config)
        self.mask_hidden = nn.Parameter(torch.zeros(1, 1, config.num_aux * config.hidden_size))

    def reset_parameters(self, seed: int) -> None:
        super().reset_parameters(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            with torch.no_grad():
                self.mask_hidden.normal_()

    def element_features(
        self,
        ids: torch.Tensor,
        aux: torch.Tensor,
        positions: torch.Tensor,
        document_ids: torch.Tensor,
        anchor: torch.Tensor,
        depth: torch.Tensor,
        attn_impl: str,
    ) -> torch.Tensor:
        """The lm_head's input [N, H] for the elements (anchor, depth) over rows with input
        tokens ``ids`` [T], aux states ``aux`` [T, A*H] and position ids ``positions`` [T]."""
        n = anchor.shape[0]
        real = depth == 0
        tokens = torch.where(real, ids[anchor], torch.full_like(anchor, self.config.mask_token_id))
        fill = self.mask_hidden.view(1, -1).to(aux.dtype)
        hidden = self.combine_aux(torch.where(real[:, None], aux[anchor], fill))
        embeds = self.embed_tokens(tokens)
        masks = self.window_masks(lambda w: AttentionMask(peagle_mask(anchor, depth, document_ids, w), n, n, anchor.device))
        _, head_in, _ = self.decode(hidden[None], embeds[None], (positions[anchor] + depth)[None], masks, attn_impl, [None] * len(self.layers))
        return head_in[0]

    def forward_train(
        self,
        batch: dict[str, torch.Tensor],
        *,
        num_depths: int,
        down_sample_ratio: float = 0.7,
        down_sample_ratio_min: float = 0.2,
        max_anchors: int | None = None,
        loss: str = "kl",
        attn_impl: str = "sdpa",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, Metrics]:
        """Loss and per-depth metrics of one packed, shifted row ``[1, T, ...]``."""
        ids, doc = batch["input_ids"][0], batch["document_ids"][0]
        mask = batch["loss_mask"][0].bool()
        anchor, depth = cod_sample(mask, doc, num_depths, down_sample_ratio, down_sample_ratio_min, max_anchors, generator)
        rows = anchor + depth
        head_in = self.element_features(ids, batch["hidden_states"][0], batch["position_ids"][0], doc, anchor, depth, attn_impl)
        targets = self.target_logits(batch["verifier_last_hidden_states"][0][rows])
        supervised = mask[rows]
        weight = supervised.float() / (supervised.sum() + 1e-5)
        total, terms, draft_pred = weighted_head_loss(head_in, self.lm_head.weight, targets, weight, loss)
        metrics: Metrics = {"loss": metric(total, 1), **{f"{name}_loss": metric(value, 1) for name, value in terms.items()}}
        with torch.no_grad():
            correct = draft_pred == targets.argmax(-1)
            # full_acc_d = P(depths 0..d all right) over chains whose anchor row and row
            # anchor+d are supervised (COD makes rows 1..d-1 supervised too), as EAGLE-3's.
            chain = torch.zeros_like(mask)
            for d in range(num_depths):
                at = depth == d
                a = anchor[at]
                ok = correct[at] & (mask[a] if d == 0 else chain[a])
                counted = mask[a] & supervised[at]
                metrics[f"position_{d}_acc"] = metric((correct[at] & supervised[at]).sum(), supervised[at].sum())
                metrics[f"full_acc_{d}"] = metric((ok & counted).sum(), counted.sum())
                chain = torch.zeros_like(mask)
                chain[a] = ok
        return total, metrics

    @torch.no_grad()
    def propose(self, aux: torch.Tensor, tokens: torch.Tensor, num_tokens: int, attn_impl: str = "sdpa") -> torch.Tensor:
        """``num_tokens`` target ids after ``tokens`` (x_0..x_n) in one forward, given the
        verifier's aux states ``aux`` [n, A*H] of x_0..x_{n-1} (as vLLM drafts in parallel)."""
        n, device = aux.shape[0], aux.device
        slots = torch.arange(1, num_tokens, device=device)
        anchor = torch.cat([torch.arange(n, device=device), torch.full_like(slots, n - 1)])
        depth = torch.cat([torch.zeros(n, dtype=torch.long, device=device), slots])
        positions = torch.arange(1, n + 1, device=device)
        doc = torch.zeros(n, dtype=torch.long, device=device)
        head_in = self.element_features(tokens[1 : n + 1], aux, positions, doc, anchor, depth, attn_impl)
        return self.to_target_ids(self.lm_head(head_in[n - 1 :]).argmax(-1))
