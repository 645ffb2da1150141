"""Draft decoder building blocks (Llama / Qwen3 layers), with the parameter names vLLM loads.

Written out rather than borrowed from transformers' decoder layers because drafts attend
in ways those layers do not: EAGLE-3's first layer reads [embedding | hidden] (2H wide)
and carries a KV cache across test-time-training steps; DFlash injects context keys and
values into every layer. Rotary embeddings and activations do come from transformers, so
every rope scaling type the verifier uses works unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spectool.attention import AttentionMask, attend


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Functional RMSNorm (the verifier's final norm, applied to target hidden states)."""
    xf = x.float()
    return (weight.float() * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps))).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, D]; cos/sin [B, T, D] (neox style, as Llama/Qwen3 and vLLM use)."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


class Rotary(nn.Module):
    """transformers' rotary embedding for the draft config (handles every rope type)."""

    def __init__(self, hf_config):
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        self.inner = LlamaRotaryEmbedding(hf_config)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.inner(x, position_ids)
        return cos.to(x.dtype), sin.to(x.dtype)


KV = tuple[torch.Tensor, torch.Tensor]  # keys, values [B, Hkv, T, D]
Context = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # DFlash context states [B, T, H], cos, sin


class Attention(nn.Module):
    def __init__(self, cfg, in_features: int, qk_norm: bool):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        bias = bool(getattr(cfg, "attention_bias", False))
        self.q_proj = nn.Linear(in_features, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(in_features, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(in_features, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=bias)
        if qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.qk_norm = qk_norm

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x.view(*x.shape[:-1], n, self.head_dim)

    def keys_values(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Roped (and k-normed) keys and values [B, Hkv, T, D] of input ``x`` [B, T, in]."""
        k = self._heads(self.k_proj(x), self.num_kv_heads)
        if self.qk_norm:
            k = self.k_norm(k)
        k = apply_rope(k.transpose(1, 2), cos, sin)
        v = self._heads(self.v_proj(x), self.num_kv_heads).transpose(1, 2)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: AttentionMask,
        impl: str,
        past_kv: KV | None = None,
        context: Context | None = None,
    ) -> tuple[torch.Tensor, KV]:
        """Attend from ``x``; returns the output and the keys/values so far (``past_kv`` +
        this input's), which EAGLE-3 feeds to the next TTT step. DFlash ``context`` states
        are projected to keys/values here (inside the layer, where sharded weights are
        gathered) and prepended, but not returned.

        Caches are passed as tensors in and out, never mutated in place, so that
        module hooks (FSDP2) that rebuild arguments cannot lose them."""
        q = self._heads(self.q_proj(x), self.num_heads)
        if self.qk_norm:
            q = self.q_norm(q)
        q = apply_rope(q.transpose(1, 2), cos, sin)
        k, v = self.keys_values(x, cos, sin)
        if past_kv is not None:
            k, v = torch.cat([past_kv[0], k], dim=2), torch.cat([past_kv[1], v], dim=2)
        keys, values = k, v
        if context is not None:
            ctx_k, ctx_v = self.keys_values(*context)
            keys, values = torch.cat([ctx_k, k], dim=2), torch.cat([ctx_v, v], dim=2)
        out = attend(q, keys, values, mask, impl, self.head_dim**-0.5)
        return self.o_proj(out.transpose(1, 2).reshape(*x.shape[:-1], -1)), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        from transformers.activations import ACT2FN

        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.act = ACT2FN[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer. ``eagle3_first``: the EAGLE-3 layer that reads [emb | hidden]."""

    def __init__(self, cfg, *, qk_norm: bool, eagle3_first: bool = False, norm_before_residual: bool = True):
        super().__init__()
        hidden = cfg.hidden_size
        self.eagle3_first = eagle3_first
        self.norm_before_residual = norm_before_residual
        self.input_layernorm = RMSNorm(hidden, cfg.rms_norm_eps)
        if eagle3_first:
            self.hidden_norm = RMSNorm(hidden, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, 2 * hidden if eagle3_first else hidden, qk_norm)
        self.post_attention_layernorm = RMSNorm(hidden, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: AttentionMask,
        impl: str,
        past_kv: KV | None = None,
        embeds: torch.Tensor | None = None,
        context: Context | None = None,
    ) -> tuple[torch.Tensor, KV]:
        if self.eagle3_first:
            hidden = self.hidden_norm(x)
            residual = hidden if self.norm_before_residual else x
            attn_in = torch.cat([self.input_layernorm(embeds), hidden], dim=-1)
        else:
            residual, attn_in = x, self.input_layernorm(x)
        attn, kv = self.self_attn(attn_in, cos, sin, mask, impl, past_kv, context)
        x = residual + attn
        return x + self.mlp(self.post_attention_layernorm(x)), kv


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Normal(0, std) linears/embeddings, unit norms (what HF's _init_weights does)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, RMSNorm):
            nn.init.ones_(m.weight)


def verifier_logits(last_hidden: torch.Tensor, norm_weight: torch.Tensor, lm_head_weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Verifier logits over the draft vocabulary from its pre-norm last hidden state."""
    return F.linear(rms_norm(last_hidden, norm_weight, eps), lm_head_weight)
