"""Mask functions ``(b, h, q_idx, kv_idx) -> bool`` shared by every attention backend.

They are written with tensor ops only, so the same function drives flex_attention's
BlockMask (GPU) and the dense boolean mask of the sdpa/eager path (CPU), and tests can
check both against a brute-force reference. ``document_ids`` is -1 on padding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _in_window(q_pos: torch.Tensor, kv_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    if not window:
        return torch.ones_like(q_pos, dtype=torch.bool) | torch.zeros_like(kv_pos, dtype=torch.bool)
    return q_pos - kv_pos < window


def document_causal(document_ids: torch.Tensor, window: int | None = None) -> MaskMod:
    """Causal attention within a document (and a sliding window): the standard packed mask."""

    def mask_mod(b, h, q_idx, kv_idx):
        same_doc = (document_ids[q_idx] == document_ids[kv_idx]) & (document_ids[q_idx] >= 0)
        return same_doc & (q_idx >= kv_idx) & _in_window(q_idx, kv_idx, window)

    return mask_mod


def eagle3_ttt(document_ids: torch.Tensor, window: int | None = None) -> MaskMod:
    """EAGLE-3 test-time training: keys of step s live at ``[s*T, (s+1)*T)``.

    Step-0 keys: causal, same document, in window. Keys of later steps: only the query's
    own row (the diagonal), i.e. the chain of draft states the row built itself. The
    diagonal also keeps padding rows from being fully masked.
    """
    seq_len = document_ids.shape[0]
    base = document_causal(document_ids, window)

    def mask_mod(b, h, q_idx, kv_idx):
        kv_row = kv_idx % seq_len
        return ((kv_idx < seq_len) & base(b, h, q_idx, kv_row)) | (kv_row == q_idx)

    return mask_mod


def dflash_anchor_blocks(
    document_ids: torch.Tensor,
    anchors: torch.Tensor,
    block_size: int,
    window: int | None = None,
    causal_in_block: bool = True,
) -> MaskMod:
    """DFlash: queries are ``len(anchors) * block_size`` block slots; keys are the packed
    context ``[0, T)`` followed by the block slots ``[T, T + Q)``.

    A block sees context of its anchor's document strictly before the anchor (within
    the window of each slot's own position, as vLLM's sliding window does), and the slots of its own block (causally unless ``causal_in_block`` is
    false).
    """
    seq_len = document_ids.shape[0]

    def mask_mod(b, h, q_idx, kv_idx):
        block = q_idx // block_size
        anchor = anchors[block]
        ctx_row = kv_idx.clamp(max=seq_len - 1)
        anchor_doc = document_ids[anchor]
        in_context = (
            (kv_idx < seq_len)
            & (document_ids[ctx_row] == anchor_doc)
            & (anchor_doc >= 0)
            & (kv_idx < anchor)
            & _in_window(anchor + q_idx % block_size, kv_idx, window)
        )
        slot = kv_idx - seq_len
        in_block = (kv_idx >= seq_len) & (slot // block_size == block)
        if causal_in_block:
            in_block = in_block & (slot <= q_idx)
        return in_context | in_block

    return mask_mod


def materialize(mask_mod: MaskMod, q_len: int, kv_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Dense boolean mask ``[q_len, kv_len]`` (True = attend) from a mask function."""
    q = torch.arange(q_len, device=device)[:, None]
    kv = torch.arange(kv_len, device=device)[None, :]
    zero = torch.zeros((), dtype=torch.long, device=device)
    return mask_mod(zero, zero, q, kv).expand(q_len, kv_len)
