"""Attention kernels: flex_attention (GPU), sdpa and eager, all driven by one mask function.

flex_attention has no backward on CPU, so training there uses sdpa with the dense mask
from the same mask function (``resolve_attn_impl`` says so once).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from spectool.attention.masks import MaskMod, materialize
from spectool.attention.merged import DFlashMask, TTTMask, dflash_attention, ttt_attention

log = logging.getLogger(__name__)
FLEX = "simple_flex_attention"
_warned: set[str] = set()


def resolve_attn_impl(impl: str, device: torch.device, training: bool) -> str:
    """The kernel that will really run: flex needs CUDA to train."""
    if impl == FLEX and device.type != "cuda" and training:
        if "flex-cpu" not in _warned:
            _warned.add("flex-cpu")
            log.warning("flex_attention has no backward on %s: training with sdpa and the same mask", device.type)
        return "sdpa"
    return impl


@dataclass
class AttentionMask:
    """A mask function with its sizes; builds (and caches) what the chosen kernel needs."""

    mask_mod: MaskMod
    q_len: int
    kv_len: int
    device: torch.device
    _dense: torch.Tensor | None = field(default=None, repr=False)
    _block: object | None = field(default=None, repr=False)

    def dense(self) -> torch.Tensor:
        if self._dense is None:
            self._dense = materialize(self.mask_mod, self.q_len, self.kv_len, self.device)
        return self._dense

    def block_mask(self):
        if self._block is None:
            from torch.nn.attention.flex_attention import create_block_mask

            self._block = create_block_mask(self.mask_mod, None, None, self.q_len, self.kv_len, device=str(self.device))
        return self._block

    def extend_diagonal(self, mask_mod: MaskMod) -> "AttentionMask":
        """EAGLE-3's next TTT step: ``q_len`` more keys, each visible to its own row only.

        Extends what was already built instead of re-evaluating the mask function over
        the whole grid: the dense mask gets an identity block appended; the BlockMask
        gets one diagonal block per query block (``mask_mod`` must be the TTT mask, which
        is defined for every key index).
        """
        new = AttentionMask(mask_mod, self.q_len, self.kv_len + self.q_len, self.device)
        if self._dense is not None:
            eye = torch.eye(self.q_len, dtype=torch.bool, device=self.device)
            new._dense = torch.cat([self._dense, eye], dim=1)
        if self._block is not None:
            new._block = _extend_block_mask_diagonal(self._block, mask_mod, self.q_len, self.kv_len)
        return new


def _extend_block_mask_diagonal(block_mask, mask_mod: MaskMod, q_len: int, kv_len: int):
    """Append, for each query block b, the key block holding rows of b at the new step."""
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask

    q_block, kv_block = block_mask.BLOCK_SIZE
    if q_block != kv_block or q_len % q_block or kv_len % kv_block:
        return create_block_mask(mask_mod, None, None, q_len, kv_len + q_len, device=str(block_mask.kv_indices.device))
    num_q_blocks = q_len // q_block
    first_new = kv_len // kv_block
    kv_num = block_mask.kv_num_blocks.clone()
    kv_idx = F.pad(block_mask.kv_indices, (0, num_q_blocks))
    rows = torch.arange(num_q_blocks, device=kv_idx.device)
    kv_idx[..., rows, kv_num[..., rows].long()] = (first_new + rows).to(kv_idx.dtype).expand_as(kv_idx[..., rows, 0])
    kv_num = kv_num + 1
    full_num, full_idx = block_mask.full_kv_num_blocks, block_mask.full_kv_indices
    if full_idx is not None:
        full_idx = F.pad(full_idx, (0, num_q_blocks))
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_mask.BLOCK_SIZE, mask_mod=mask_mod, seq_lengths=(q_len, kv_len + q_len)
    )


@functools.cache
def _flex(compiled: bool):
    """flex_attention, compiled into a fused kernel on GPU (eager on CPU: tests, inference)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: "AttentionMask | TTTMask | DFlashMask", impl: str, scale: float) -> torch.Tensor:
    """Attention over ``q`` [B, Hq, Tq, D] and ``k, v`` [B, Hkv, Tk, D] (grouped heads allowed).

    A :class:`TTTMask` takes the merged path (no dense mask) with flex, and with sdpa on CPU;
    a :class:`DFlashMask` its per-chunk path with sdpa on CPU (flex skips empty blocks itself)."""
    if isinstance(mask, TTTMask) and (impl == FLEX or (impl == "sdpa" and q.device.type == "cpu")):
        return ttt_attention(q, k, v, mask, impl, scale)
    if isinstance(mask, DFlashMask) and impl == "sdpa" and q.device.type == "cpu":
        return dflash_attention(q, k, v, mask, scale)
    if impl == FLEX:
        return _flex(q.is_cuda)(q, k, v, block_mask=mask.block_mask(), scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    dense = mask.dense()
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=dense, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    if impl == "eager":
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = (q @ k.transpose(-1, -2)).float() * scale
        scores = scores.masked_fill(~dense, float("-inf"))
        return (scores.softmax(-1).to(v.dtype)) @ v
    raise ValueError(f"unknown attention implementation {impl!r}")
