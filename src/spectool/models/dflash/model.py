"""DFlash draft: block diffusion drafting with Qwen3-style layers.

Context features c = hidden_norm(fc(aux states)) are injected as keys/values into every
layer (k = rope(k_norm(k_proj(c))), v = v_proj(c), as vLLM precomputes them). A block is
[anchor token, mask, ..., mask] at positions anchor..anchor+B-1; slot s >= 1 predicts the
token at anchor+s, i.e. the verifier distribution at row anchor+s-1. The block sees the
context of its document strictly before the anchor, and its own slots (causally on
sliding layers unless ``sliding_window_non_causal``).
"""

from __future__ import annotations

import torch
from torch import nn

from spectool.attention import AttentionMask, DFlashMask, dflash_anchor_blocks
from spectool.losses import weighted_head_loss
from spectool.models.base import DraftModel, Metrics, metric
from spectool.models.config import SpeculatorConfig
from spectool.models.layers import DecoderLayer, RMSNorm


def select_anchors(loss_mask: torch.Tensor, document_ids: torch.Tensor, max_anchors: int, generator: torch.Generator | None) -> torch.Tensor:
    """Sorted random anchors among supervised positions (sorted: attention blocks stay dense)."""
    T = loss_mask.shape[0]
    candidates = torch.nonzero(loss_mask.bool() & (document_ids >= 0), as_tuple=False).flatten()
    candidates = candidates[candidates < T - 1]
    if candidates.numel() > max_anchors:
        pick = torch.randperm(candidates.numel(), generator=generator, device="cpu")[:max_anchors].to(candidates.device)
        candidates = candidates[pick]
    return candidates.sort().values


class DFlashDraft(DraftModel):
    def __init__(self, config: SpeculatorConfig):
        super().__init__(config)
        H, A = config.hidden_size, config.num_aux
        self.fc = nn.Linear(A * H, H, bias=False)
        self.hidden_norm = RMSNorm(H, self.eps)
        self.layers = nn.ModuleList(DecoderLayer(self.hf_config, qk_norm=True) for _ in range(config.num_layers))

    @property
    def causal_in_block(self) -> bool:
        # vLLM: causal on sliding layers unless sliding_window_non_causal; full layers bidirectional.
        return self.windows[0] is not None and not self.config.sliding_window_non_causal

    def blocks_forward(self, aux, context_positions, block_tokens, block_positions, masks, impl, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The lm_head's input [1, Q, H] for the block slots (only slots ``rows`` if given) given the context aux states [1, T, A*H]."""
        context = self.hidden_norm(self.fc(aux))
        ctx_cos, ctx_sin = self.rotary(context, context_positions)
        cos, sin = self.rotary(context, block_positions)
        x = self.embed_tokens(block_tokens)
        for layer, window in zip(self.layers, self.windows):
            x, _ = layer(x, cos, sin, masks[window], impl, context=(context, ctx_cos, ctx_sin))
        return self.norm(x if rows is None else x[:, rows])

    def forward_train(
        self,
        batch: dict[str, torch.Tensor],
        *,
        block_size: int,
        max_anchors: int,
        decay_gamma: float = 4.0,
        loss: str = "kl",
        attn_impl: str = "sdpa",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, Metrics]:
        ids, doc = batch["input_ids"][0], batch["document_ids"][0]
        pos = batch["position_ids"][0]
        T, B, device = ids.shape[0], block_size, ids.device
        # Anchors and supervised slots are planned on the host copies (no device sync).
        host_mask = batch.get("loss_mask_host", batch["loss_mask"])[0].bool()
        host_doc = batch.get("document_ids_host", batch["document_ids"])[0]
        host_anchors = select_anchors(host_mask, host_doc, max_anchors, generator)
        n = host_anchors.numel()
        host_slots = torch.arange(B)
        host_rows = (host_anchors[:, None] + host_slots).clamp(max=T - 1)
        # Slot s >= 1 is supervised when token anchor+s is, and lies in the anchor's document.
        host_sup = (host_anchors[:, None] + host_slots < T) & host_mask[host_rows] & (host_doc[host_rows] == host_doc[host_anchors][:, None]) & (host_slots >= 1)
        sup_rows = torch.nonzero(host_sup.flatten()).flatten()
        anchors, sup_rows = host_anchors.to(device, non_blocking=True), sup_rows.to(device, non_blocking=True)
        supervised = host_sup.to(device, non_blocking=True)
        slots = torch.arange(B, device=device)
        rows_c = host_rows.to(device, non_blocking=True)
        block_tokens = torch.full((n, B), self.config.mask_token_id, dtype=torch.long, device=device)
        block_tokens[:, 0] = ids[anchors]
        block_positions = pos[anchors][:, None] + slots
        masks = self.window_masks(lambda w: DFlashMask(
            dflash_anchor_blocks(doc, anchors, B, w, self.causal_in_block), n * B, T + n * B, device,
            host_doc, host_anchors, B, w, self.causal_in_block,
        ))
        # Draft logits and verifier targets of the supervised slots only.
        head_in = self.blocks_forward(
            batch["hidden_states"], pos[None], block_tokens.view(1, -1), block_positions.view(1, -1), masks, attn_impl, sup_rows
        )[0]
        targets = self.target_logits(batch["verifier_last_hidden_states"][0][(rows_c - 1).clamp(min=0).flatten()[sup_rows]])
        decay = torch.exp(-(slots - 1).clamp(min=0).float() / decay_gamma)
        weight = decay.repeat(n)[sup_rows] / (sup_rows.shape[0] + 1e-5)
        total, terms, draft_pred = weighted_head_loss(head_in, self.lm_head.weight, targets, weight, loss)
        metrics: Metrics = {"loss": metric(total, 1)} | {f"{name}_loss": metric(value, 1) for name, value in terms.items()}
        with torch.no_grad():
            hit = draft_pred == targets.argmax(-1)
            correct = torch.zeros(n * B, dtype=torch.bool, device=device).index_put_((sup_rows,), hit).view(n, B)
            chain = torch.cumprod(correct[:, 1:].long(), dim=1).bool()
            for s in range(1, B):
                metrics[f"position_{s}_acc"] = metric(correct[:, s].sum(), supervised[:, s].sum())
                metrics[f"full_acc_{s - 1}"] = metric((chain[:, s - 1] & supervised[:, s]).sum(), supervised[:, s].sum())
        return total, metrics

    @torch.no_grad()
    def propose(self, aux: torch.Tensor, tokens: torch.Tensor, num_tokens: int | None = None, attn_impl: str = "sdpa") -> torch.Tensor:
        """Block of ``block_size - 1`` target ids after ``tokens`` (x_0..x_n), given the
        verifier's aux states ``aux`` [n, A*H] of x_0..x_{n-1} (the anchor is x_n)."""
        B = self.config.block_size
        n, device = aux.shape[0], aux.device
        # Context rows 0..n-1 plus a dummy row n for the anchor (never attended: kv < anchor).
        aux = torch.cat([aux, aux.new_zeros(1, aux.shape[1])])
        doc = torch.zeros(n + 1, dtype=torch.long, device=device)
        anchors = torch.tensor([n], device=device)
        block = torch.full((1, B), self.config.mask_token_id, dtype=torch.long, device=device)
        block[0, 0] = tokens[n]
        masks = self.window_masks(lambda w: AttentionMask(dflash_anchor_blocks(doc, anchors, B, w, self.causal_in_block), B, n + 1 + B, device))
        positions = torch.arange(n + 1, device=device)[None]
        head_in = self.blocks_forward(aux[None], positions, block, (n + torch.arange(B, device=device))[None], masks, attn_impl)
        draft = self.to_target_ids(self.lm_head(head_in[0, 1:]).argmax(-1))
        return draft[: num_tokens or B - 1]

