"""P-EAGLE's attention mask over its COD elements (queries = keys = the elements).

Element (a, d) sits at position a + d. It sees, within its anchor's document and the
sliding window of its position:
* the context: depth-0 elements with anchor <= a (the verifier-fed rows up to its anchor);
* its own chain: elements of anchor a with depth <= d (the mask slots before it).
This is what vLLM's parallel drafting computes: the K - 1 mask slots appended after the
last real token attend causally over the context and the slots before them. A padding
element sees only itself (never a fully masked row, which sdpa would turn into NaN).
"""

from __future__ import annotations

import torch

from spectool.attention.masks import MaskMod


def peagle_mask(anchor: torch.Tensor, depth: torch.Tensor, document_ids: torch.Tensor, window: int | None = None) -> MaskMod:
    """Mask function over element indices (tensor ops only: drives flex, sdpa and eager)."""

    def mask_mod(b, h, q_idx, kv_idx):
        q_anchor, kv_anchor = anchor[q_idx], anchor[kv_idx]
        q_depth, kv_depth = depth[q_idx], depth[kv_idx]
        q_doc = document_ids[q_anchor]
        same_doc = (q_doc == document_ids[kv_anchor]) & (q_doc >= 0)
        context = (kv_depth == 0) & (kv_anchor <= q_anchor)
        chain = (kv_anchor == q_anchor) & (kv_depth <= q_depth)
        allowed = same_doc & (context | chain)
        if window:
            allowed = allowed & ((q_anchor + q_depth) - (kv_anchor + kv_depth) < window)
        return allowed | (q_idx == kv_idx)

    return mask_mod
