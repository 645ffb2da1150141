"""Attention masks (as mask functions) and the kernels that apply them."""

from spectool.attention.backends import AttentionMask, attend, resolve_attn_impl
from spectool.attention.merged import DFlashMask, TTTMask, dflash_attention, ttt_attention
from spectool.attention.masks import dflash_anchor_blocks, document_causal, eagle3_ttt, materialize

__all__ = ["AttentionMask", "DFlashMask", "TTTMask", "dflash_attention", "ttt_attention", "attend", "resolve_attn_impl", "dflash_anchor_blocks", "document_causal", "eagle3_ttt", "materialize"]
