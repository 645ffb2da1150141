"""EAGLE-3 draft: fc over the verifier's aux hidden states, one (or more) decoder layers fed
[token embedding | hidden], trained with test-time training (TTT) over ``ttt_steps``.

Alignment (per sample, before packing; see :func:`shift_sample`): row i pairs the aux
features g_i of token i with the embedding of token i+1 and is supervised by the verifier
distribution at position i+1 (over token i+2), masked by the loss mask of token i+1.
At TTT step k row i is fed token i+1+k (ground truth by default) and the draft's own
hidden state from step k-1, attends to step-0 keys of its document plus its own keys of
steps 1..k, and predicts the verifier distribution at row i+k.
"""

from __future__ import annotations

import torch
from torch import nn

from spectool.attention import AttentionMask, TTTMask, document_causal, eagle3_ttt
from spectool.losses import weighted_head_loss
from spectool.models.base import DraftModel, Metrics, metric
from spectool.models.config import SpeculatorConfig
from spectool.models.layers import KV, DecoderLayer, RMSNorm


def shift_sample(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """x[t+1], g[t], y[t+1], l[t+1], positions t+1 (what the EAGLE-3 objective expects)."""
    if sample["input_ids"].shape[0] < 2:
        return None
    return {
        "input_ids": sample["input_ids"][1:],
        "hidden_states": sample["hidden_states"][:-1],
        "verifier_last_hidden_states": sample["verifier_last_hidden_states"][1:],
        "loss_mask": sample["loss_mask"][1:],
        "position_ids": sample["position_ids"][1:],
    }


def _row_plan(mask: torch.Tensor, steps: int, all_rows: bool, device: torch.device) -> torch.Tensor:
    """The target rows j whose verifier distribution some TTT step reads: step k predicts
    row j from row i = j - k, needed when j is supervised (mask[j]) or i starts an accuracy
    chain (mask[i]); with draft tokens every row (the next step's input is its argmax).
    Every step computes its draft logits on rows ``j - k`` of these, so the targets are
    one tensor shared by all steps. Planned from the host copy of the loss mask, so no step
    waits on the device for a row count."""
    T = mask.shape[0]
    read = torch.ones(T, dtype=torch.bool) if all_rows else mask.clone()
    for k in range(1, steps):
        read[k:] |= mask[: T - k]
    return torch.nonzero(read).flatten().to(device, non_blocking=True)


class Eagle3Draft(DraftModel):
    def __init__(self, config: SpeculatorConfig):
        super().__init__(config)
        H, A, eps = config.hidden_size, config.num_aux, self.eps
        if config.norm_before_fc:
            self.input_norm = RMSNorm(A * H, eps)
        if config.fc_norm:
            self.fc_norm = nn.ModuleList(RMSNorm(H, eps) for _ in range(A))
        self.fc = nn.Linear(A * H, H, bias=False)
        qk_norm = config.layer_config["model_type"] == "qwen3"
        self.layers = nn.ModuleList(
            DecoderLayer(self.hf_config, qk_norm=qk_norm, eagle3_first=i == 0, norm_before_residual=config.norm_before_residual)
            for i in range(config.num_layers)
        )

    def combine_aux(self, aux: torch.Tensor) -> torch.Tensor:
        """[.., A*H] verifier aux states -> [.., H] draft input (vLLM's combine_hidden_states)."""
        if self.config.norm_before_fc:
            aux = self.input_norm(aux)
        elif self.config.fc_norm:
            aux = torch.cat([norm(chunk) for norm, chunk in zip(self.fc_norm, aux.split(self.config.hidden_size, -1))], -1)
        return self.fc(aux)

    def decode(self, hidden, embeds, position_ids, masks, impl, past: list[KV | None], rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, list[KV]]:
        """Run the layers; returns (state fed to the next step, the normed output of ``rows``
        of the sequence (all if None), which is the lm_head's input, each layer's keys/values so far)."""
        cos, sin = self.rotary(hidden, position_ids)
        x, new_past = hidden, []
        for layer, window, past_kv in zip(self.layers, self.windows, past):
            x, kv = layer(x, cos, sin, masks[window], impl, past_kv, embeds=embeds if layer.eagle3_first else None)
            new_past.append(kv)
        normed = self.norm(x)
        return (normed if self.config.norm_output else x), (normed if rows is None else normed[:, rows]), new_past

    def forward_train(
        self,
        batch: dict[str, torch.Tensor],
        *,
        ttt_steps: int,
        step_loss_decay: float = 1.0,
        loss: str = "kl",
        ttt_tokens: str = "ground-truth",
        attn_impl: str = "sdpa",
    ) -> tuple[torch.Tensor, Metrics]:
        """Loss (sum over TTT steps) and metrics of one packed row ``[1, T, ...]``."""
        ids = batch["input_ids"][0]
        doc = batch["document_ids"][0]
        pos = batch["position_ids"]
        mask = batch["loss_mask"][0].bool()
        T = ids.shape[0]
        target_rows = _row_plan(batch.get("loss_mask_host", batch["loss_mask"])[0].bool(), ttt_steps, ttt_tokens == "draft", ids.device)
        targets = self.target_logits(batch["verifier_last_hidden_states"][0][target_rows])
        target_ids = targets.argmax(-1)
        hidden = self.combine_aux(batch["hidden_states"])
        masks = self.window_masks(lambda w: TTTMask(doc, w, T, ids.device))
        past: list[KV | None] = [None] * len(self.layers)
        chain_ok = mask.clone()
        total = hidden.new_zeros((), dtype=torch.float32)
        metrics: Metrics = {}
        step_ids = ids
        for k in range(ttt_steps):
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.embed_tokens.weight.requires_grad):
                embeds = self.embed_tokens(step_ids)[None]
            # Rows i = j - k predict the planned targets j; j < k has no row (row 0 stands in, weight 0).
            valid = target_rows >= k
            rows = (target_rows - k).clamp(min=0)
            hidden, head_in, past = self.decode(hidden, embeds, pos + k, masks, attn_impl, past, rows)
            supervised = mask[k:]
            n_sup = supervised.sum()
            weight = (mask[target_rows] & valid).float() * (step_loss_decay**k) / (n_sup + 1e-5)
            step_loss, terms, draft_pred = weighted_head_loss(head_in[0], self.lm_head.weight, targets, weight, loss)
            total = total + step_loss
            with torch.no_grad():
                # Chains start at supervised rows i and count where the k-th target i+k is
                # supervised too: full_acc_k = P(steps 0..k all right), cond_acc_k = P(step k
                # right | steps 0..k-1 right). Rows outside ``rows`` are never counted.
                hit = ((draft_pred == target_ids) & valid).long()
                correct = torch.zeros(T - k, dtype=torch.long, device=ids.device).index_put_((rows,), hit, accumulate=True) > 0
                counted = mask[: T - k] & supervised
                prev = chain_ok[: T - k] & counted
                chain_ok[: T - k] &= correct
                metrics[f"loss_{k}"] = metric(step_loss, 1)
                metrics.update({f"{name}_loss_{k}": metric(value, 1) for name, value in terms.items()})
                metrics[f"full_acc_{k}"] = metric((chain_ok[: T - k] & counted).sum(), counted.sum())
                metrics[f"cond_acc_{k}"] = metric((chain_ok[: T - k] & counted).sum(), prev.sum())
            if k + 1 < ttt_steps:
                if ttt_tokens == "draft":  # rows = 0 (k times), then every i < T-k; the last k rows are never read again
                    step_ids = torch.cat([self.to_target_ids(draft_pred[k:]), ids.new_zeros(k)])
                else:
                    step_ids = torch.cat([ids[k + 1 :], ids.new_zeros(k + 1)])
                masks = {w: m.extend_diagonal(eagle3_ttt(doc, w)) for w, m in masks.items()}
        metrics["loss"] = metric(total, 1)
        return total, metrics

    @torch.no_grad()
    def propose(self, aux: torch.Tensor, tokens: torch.Tensor, num_tokens: int, attn_impl: str = "sdpa") -> torch.Tensor:
        """Greedy chain of ``num_tokens`` target ids after ``tokens`` (x_0..x_n), given the
        verifier's aux states ``aux`` [n, A*H] of x_0..x_{n-1} (as vLLM drafts)."""
        n = aux.shape[0]
        device = aux.device
        positions = torch.arange(1, n + 1, device=device)[None]
        doc = torch.zeros(n, dtype=torch.long, device=device)
        masks = self.window_masks(lambda w: AttentionMask(document_causal(doc, w), n, n, device))
        hidden, head_in, past = self.decode(
            self.combine_aux(aux)[None], self.embed_tokens(tokens[1 : n + 1])[None], positions, masks, attn_impl, [None] * len(self.layers)
        )
        logits = self.lm_head(head_in[:, -1:])  # only the last row proposes
        out = []
        for k in range(num_tokens):
            token = self.to_target_ids(logits[0, -1].argmax())
            out.append(token)
            if k + 1 == num_tokens:
                break
            kv_len = n + k + 1
            # One new query at position n+k+1: all step-0 keys (window-limited) and its own chain keys.
            step_masks = {}
            for w in masks:
                allowed = torch.ones(1, kv_len, dtype=torch.bool, device=device)
                if w:
                    allowed[0, :n] = torch.arange(n, device=device) > n - 1 - w
                step_masks[w] = AttentionMask(lambda b, h, q, kv: q >= 0, 1, kv_len, device, _dense=allowed)
            hidden, head_in, past = self.decode(hidden[:, -1:], self.embed_tokens(token.view(1, 1)), positions[:, -1:] + k + 1, step_masks, attn_impl, past)
            logits = self.lm_head(head_in)
        return torch.stack(out)
