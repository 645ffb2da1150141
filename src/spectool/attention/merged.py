"""EAGLE-3 TTT attention without the T x (k+1)T mask or score matrix.

At TTT step k a row attends to the step-0 keys of its document (causal, in the window)
plus its own keys of steps 1..k (one per step: the diagonal). The dense formulation
materialises a [T, (k+1)T] mask and spends as much on masked keys as on visible ones.
Here the step-0 part runs as causal attention per document span (CPU: the flash kernel's
own causal path, one call per span, windows in query chunks; GPU: flex_attention with a
[T, T] BlockMask), returning its log-sum-exp; the k diagonal scores cost O(T) each; the
two are merged exactly by log-sum-exp. Padding rows (document -1) attend to themselves
only, as in the dense mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from spectool.attention.masks import MaskMod, dflash_anchor_blocks, eagle3_ttt, materialize

_WINDOW_CHUNK = 512  # query rows per flash call on windowed spans: bounds the float mask to chunk x (chunk + window)
_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


@dataclass
class TTTMask:
    """The attention structure of TTT step ``steps - 1`` over a packed row of ``seq_len``.

    Drop-in for :class:`AttentionMask` (``dense()``/``block_mask()`` still give the dense
    reference); :func:`ttt_attention` uses the structure instead. Span boundaries and
    the step-0 BlockMask are built once per row and shared by every step.
    """

    document_ids: torch.Tensor
    window: int | None
    seq_len: int
    device: torch.device
    steps: int = 1
    _shared: dict = field(default_factory=dict, repr=False)

    @property
    def q_len(self) -> int:
        return self.seq_len

    @property
    def kv_len(self) -> int:
        return self.steps * self.seq_len

    @property
    def mask_mod(self):
        return eagle3_ttt(self.document_ids, self.window)

    def dense(self) -> torch.Tensor:
        """The dense [T, steps*T] mask (eager kernel and tests)."""
        return materialize(self.mask_mod, self.q_len, self.kv_len, self.device)

    def block_mask(self):
        """BlockMask of all steps (the dense-equivalent flex call; the merged path uses ``step0_block_mask``)."""
        from torch.nn.attention.flex_attention import create_block_mask

        return create_block_mask(self.mask_mod, None, None, self.q_len, self.kv_len, device=str(self.device))

    def step0_block_mask(self):
        if "block" not in self._shared:
            from torch.nn.attention.flex_attention import create_block_mask

            T = self.seq_len
            self._shared["block"] = create_block_mask(self.mask_mod, None, None, T, T, device=str(self.device))
        return self._shared["block"]

    def spans(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(split indices where the document changes, padding rows): CPU tensors, no sync."""
        if "spans" not in self._shared:
            doc = self.document_ids
            self._shared["spans"] = (torch.nonzero(doc[1:] != doc[:-1]).flatten() + 1, doc < 0)
        return self._shared["spans"]

    def extend_diagonal(self, mask_mod=None) -> "TTTMask":
        """The next TTT step: one more diagonal key per row (``mask_mod`` is implied)."""
        return TTTMask(self.document_ids, self.window, self.seq_len, self.device, self.steps + 1, self._shared)


def _window_mask(rows: range, cols: range, window: int) -> torch.Tensor:
    q = torch.arange(rows.start, rows.stop)[:, None]
    kv = torch.arange(cols.start, cols.stop)[None, :]
    allowed = (q >= kv) & (q - kv < window)
    return torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))


def _span_calls(length: int, window: int | None):
    """(query range, key range, window mask or None for the kernel's causal path) of the
    flash calls covering one document span of ``length``."""
    if not window or length <= window:
        yield range(length), range(length), None
        return
    for a in range(0, length, _WINDOW_CHUNK):
        b = min(a + _WINDOW_CHUNK, length)
        rows, cols = range(a, b), range(max(0, a - window + 1), b)
        yield rows, cols, _window_mask(rows, cols, window)


def _span_forward(q, k, v, window, scale):
    """Causal (windowed) attention over one document span: output and log-sum-exp."""
    outs, lses = [], []
    for rows, cols, mask in _span_calls(q.shape[2], window):
        if mask is None:
            o, lse = _flash(q, k, v, 0.0, True, scale=scale)
        else:
            sl_q, sl_k = slice(rows.start, rows.stop), slice(cols.start, cols.stop)
            o, lse = _flash(q[:, :, sl_q], k[:, :, sl_k], v[:, :, sl_k], 0.0, False, attn_mask=mask.to(q.dtype), scale=scale)
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs, 2), torch.cat(lses, 2)


def _span_backward(d_out, q, k, v, out, lse, window, scale):
    """Gradients of one span's keys/values/queries given the merged output and log-sum-exp
    (the flash backward then yields the exact gradients of this key subset)."""
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for rows, cols, mask in _span_calls(q.shape[2], window):
        sl_q, sl_k = slice(rows.start, rows.stop), slice(cols.start, cols.stop)
        causal = mask is None
        mask = None if causal else mask.to(q.dtype)
        g = _flash_bwd(
            d_out[:, :, sl_q].contiguous(), q[:, :, sl_q].contiguous(), k[:, :, sl_k].contiguous(), v[:, :, sl_k].contiguous(),
            out[:, :, sl_q].contiguous(), lse[:, :, sl_q].contiguous(), 0.0, causal, attn_mask=mask, scale=scale,
        )
        dq[:, :, sl_q] += g[0]
        dk[:, :, sl_k] += g[1]
        dv[:, :, sl_k] += g[2]
    return dq, dk, dv


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for half types, else the input's own (float64 stays exact in tests)."""
    return torch.promote_types(x.dtype, torch.float32)


def _diag_scores(q, keys, pad, scale):
    """[S+1, B, H, T] scores of the diagonal keys: step 0's own key on padding rows only, then steps 1..S."""
    acc = _acc_dtype(q)
    own = (q * keys[0]).sum(-1).to(acc) * scale
    first = own.masked_fill(~pad, float("-inf"))[None]
    rest = (q[None] * keys[1:]).sum(-1).to(acc) * scale
    return torch.cat([first, rest])


class _SpanMergedAttention(torch.autograd.Function):
    """CPU: per-span causal flash attention over step-0 keys + diagonal keys, merged by LSE."""

    @staticmethod
    def forward(ctx, q, keys, values, bounds, pad, window, scale):
        # keys/values: [S+1, B, H, T, D] (step 0 first), heads already expanded to q's.
        k0, v0 = keys[0], values[0]
        parts = [_span_forward(*xs, window, scale) for xs in zip(*(torch.tensor_split(t, bounds, 2) for t in (q, k0, v0)))]
        out_a = torch.cat([p[0] for p in parts], 2).masked_fill(pad[:, None], 0.0)
        lse_a = torch.cat([p[1] for p in parts], 2).masked_fill(pad, float("-inf"))
        scores = _diag_scores(q, keys, pad, scale)
        lse = torch.logsumexp(torch.cat([lse_a.to(scores.dtype)[None], scores]), 0)
        weights = torch.exp(scores - lse)  # [S+1, B, H, T]
        out = torch.exp(lse_a - lse)[..., None].to(q.dtype) * out_a
        out = out + (weights[..., None].to(q.dtype) * values).sum(0)
        ctx.save_for_backward(q, keys, values, bounds, pad, out, lse, weights)
        ctx.window, ctx.scale = window, scale
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, keys, values, bounds, pad, out, lse, weights = ctx.saved_tensors
        window, scale = ctx.window, ctx.scale
        d_out = d_out.contiguous()
        d_span = d_out.masked_fill(pad[:, None], 0.0)
        split = lambda t: torch.tensor_split(t, bounds, 2)  # noqa: E731
        grads = [_span_backward(*xs, window, scale) for xs in zip(split(d_span), split(q), split(keys[0]), split(values[0]), split(out), split(lse))]
        dq = torch.cat([g[0] for g in grads], 2)
        d_keys = torch.empty_like(keys)
        d_values = torch.empty_like(values)
        d_keys[0] = torch.cat([g[1] for g in grads], 2)
        d_values[0] = torch.cat([g[2] for g in grads], 2)
        acc = _acc_dtype(q)
        delta = (d_out * out).sum(-1).to(acc)  # [B, H, T]
        d_scores = weights * ((d_out[None] * values).sum(-1).to(acc) - delta)  # [S+1, B, H, T]
        ds = (d_scores * scale)[..., None].to(q.dtype)
        dq = dq + (ds * keys).sum(0)
        d_keys[1:] = ds[1:] * q[None]
        d_keys[0] += ds[0] * q
        d_values[1:] = weights[1:, ..., None].to(q.dtype) * d_out[None]
        d_values[0] += weights[0, ..., None].to(q.dtype) * d_out
        return dq, d_keys, d_values, None, None, None, None


def _flex_merged(q, k0, v0, diag_k, diag_v, mask: TTTMask, scale: float) -> torch.Tensor:
    """GPU: flex over the step-0 BlockMask (LSE returned, differentiable), diagonal merged by autograd."""
    from spectool.attention.backends import _flex

    out_a, lse_a = _flex(q.is_cuda)(q, k0, v0, block_mask=mask.step0_block_mask(), scale=scale, enable_gqa=q.shape[1] != k0.shape[1], return_lse=True)
    if diag_k.shape[0] == 0:
        return out_a
    B, Hq, T, D = q.shape
    Hkv = k0.shape[1]
    qg = q.view(B, Hkv, Hq // Hkv, T, D)
    scores = (qg[None] * diag_k[:, :, :, None]).sum(-1).float().reshape(-1, B, Hq, T) * scale  # [S, B, Hq, T]
    lse = torch.logsumexp(torch.cat([lse_a.float()[None], scores]), 0)
    weights = torch.exp(scores - lse).to(q.dtype).view(-1, B, Hkv, Hq // Hkv, T, 1)
    out = torch.exp(lse_a.float() - lse)[..., None].to(q.dtype) * out_a
    return out + (weights * diag_v[:, :, :, None]).sum(0).view(B, Hq, T, D)


def ttt_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: TTTMask, impl: str, scale: float) -> torch.Tensor:
    """``q`` [B, Hq, T, D]; ``k, v`` [B, Hkv, steps*T, D] (step-major, as the TTT cache holds them)."""
    B, Hkv, _, D = k.shape
    T, S = mask.seq_len, mask.steps
    keys = k.view(B, Hkv, S, T, D).permute(2, 0, 1, 3, 4)
    values = v.view(B, Hkv, S, T, D).permute(2, 0, 1, 3, 4)
    if impl == "simple_flex_attention":
        return _flex_merged(q, keys[0], values[0], keys[1:], values[1:], mask, scale)
    groups = q.shape[1] // Hkv
    if groups > 1:
        keys, values = keys.repeat_interleave(groups, dim=2), values.repeat_interleave(groups, dim=2)
    bounds, pad = mask.spans()
    return _SpanMergedAttention.apply(q.contiguous(), keys.contiguous(), values.contiguous(), bounds, pad, mask.window, scale)


# ------------------------------------------------------------------------------ DFlash
_DFLASH_CHUNK_QUERIES = 512  # block slots per sdpa call: bounds each call's mask to chunk x (context + chunk)


@dataclass
class DFlashMask:
    """DFlash's anchor-block pattern (``mask_mod`` on the device tensors) plus the host
    copies it is planned from. Drop-in for :class:`AttentionMask` (dense / BlockMask).

    The dense mask is [n*B, T + n*B] and mostly false: a block sees its own document's
    context before its anchor and its own B slots. :func:`dflash_attention` runs one sdpa
    call per chunk of consecutive blocks of one document (anchors are sorted), over just
    the keys that chunk can see, with the mask function evaluated on that sub-grid.
    """

    mask_mod: MaskMod
    q_len: int
    kv_len: int
    device: torch.device
    host_document_ids: torch.Tensor
    host_anchors: torch.Tensor
    block_size: int
    window: int | None
    causal_in_block: bool
    _cache: dict = field(default_factory=dict, repr=False)

    def dense(self) -> torch.Tensor:
        if "dense" not in self._cache:
            self._cache["dense"] = materialize(self.mask_mod, self.q_len, self.kv_len, self.device)
        return self._cache["dense"]

    def block_mask(self):
        if "block" not in self._cache:
            from torch.nn.attention.flex_attention import create_block_mask

            self._cache["block"] = create_block_mask(self.mask_mod, None, None, self.q_len, self.kv_len, device=str(self.device))
        return self._cache["block"]

    def chunks(self):
        """(query index, key index, mask) of each call, planned with host tensor ops only."""
        doc, anchors, B = self.host_document_ids, self.host_anchors, self.block_size
        T = doc.shape[0]
        starts = torch.cat([torch.zeros(1, dtype=torch.long), torch.nonzero(doc[1:] != doc[:-1]).flatten() + 1])
        block_doc = doc[anchors]
        first_row = starts[torch.searchsorted(starts, anchors, right=True) - 1]
        per_chunk = max(1, _DFLASH_CHUNK_QUERIES // B)
        n = anchors.shape[0]
        blocks = torch.arange(n)
        cut = (block_doc[1:] != block_doc[:-1]) | ((blocks[1:] % per_chunk) == 0)
        mask_mod = dflash_anchor_blocks(doc, anchors, B, self.window, self.causal_in_block)
        zero = torch.zeros((), dtype=torch.long)
        for group in torch.tensor_split(blocks, torch.nonzero(cut).flatten() + 1):
            b0, b1 = group[0], group[-1]
            low = first_row[b0] if not self.window else torch.maximum(first_row[b0], anchors[b0] - self.window + 1)
            q_idx = torch.arange(b0 * B, (b1 + 1) * B)
            kv_idx = torch.cat([torch.arange(low, anchors[b1]), T + q_idx])
            yield q_idx, kv_idx, mask_mod(zero, zero, q_idx[:, None], kv_idx[None, :])


def dflash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: DFlashMask, scale: float) -> torch.Tensor:
    """``q`` [B, H, n*B, D]; ``k, v`` [B, Hkv, T + n*B, D] (context keys, then block slots)."""
    gqa = q.shape[1] != k.shape[1]
    outs = []
    for q_idx, kv_idx, allowed in mask.chunks():
        q_idx, kv_idx, allowed = (t.to(q.device, non_blocking=True) for t in (q_idx, kv_idx, allowed))
        outs.append(F.scaled_dot_product_attention(
            q.index_select(2, q_idx), k.index_select(2, kv_idx), v.index_select(2, kv_idx), attn_mask=allowed, scale=scale, enable_gqa=gqa))
    return torch.cat(outs, 2) if outs else q.new_zeros(q.shape[:-1] + (v.shape[-1],))
