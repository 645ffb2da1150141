"""The loss catalogue: divergences between draft and verifier logits, in fp32, memory-bounded
over the vocabulary.

p = softmax(verifier logits), q = softmax(draft logits), both over the draft vocabulary;
alpha = sum_v min(p_v, q_v) is the acceptance rate of speculative sampling.

========== ==============================================================================
kl         forward KL(p || q) (the default)
rkl        reverse KL(q || p)
jsd        Jensen-Shannon: (KL(p || m) + KL(q || m)) / 2, m = (p + q) / 2
ce         cross-entropy to the verifier's argmax, -log q[argmax p]
tv         total variation, 1 - alpha
lk         the LK loss, -log max(alpha, 1e-5)
lk_hybrid  lambda * KL(p || q) + (1 - lambda) * TV with lambda = exp(-3 * alpha), alpha
           not differentiated
========== ==============================================================================

A loss spec is one name or a JSON object of non-negative weights, ``{"ce": 0.1, "tv": 0.9}``
(weights are not normalised); the reference trainer's spellings ``kl_div`` and ``nla`` are
accepted too. The rows are processed in chunks of about 16 MiB of fp32 per tensor, so the
fp32 softmaxes of one chunk exist at a time whatever the row count; nothing fp32 is kept
for backward, which recomputes each chunk from the saved logits (and, for ``ce`` alone,
only the verifier's argmax). Targets never receive gradients. Rows of zero weight are
skipped on CPU; on an accelerator every row is computed, because finding them would read
a value back to the host (callers that select supervised rows before the lm_head pass
only those).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cached_property

import torch

from spectool.loss_spec import ALIASES, TERMS, LossSpecError, parse_loss  # noqa: F401  (re-exported)

LK_EPS = 1e-5  # floor of alpha in -log(alpha), as the reference trainer
LK_HYBRID_ETA = 3.0  # lambda = exp(-eta * alpha) (the LK paper's best hybrid setting)
_CHUNK_ELEMENTS = 1 << 22  # fp32 elements per chunk and tensor: 16 MiB (cache-friendly; 64 MiB ran 2x slower on CPU)


def _chunks(rows: int, vocab: int) -> list[slice]:
    """Even row slices of at most about _CHUNK_ELEMENTS elements each (one slice when the
    whole [rows, vocab] fits: small sizes pay no chunking overhead)."""
    n = max(1, math.ceil(rows * vocab / _CHUNK_ELEMENTS))
    step = max(1, math.ceil(rows / n))
    return [slice(s, min(s + step, rows)) for s in range(0, rows, step)]


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a[i, v] * b[i, v] per row, without an [n, D] temporary (torch.linalg.vecdot and
    (a * b).sum allocate one)."""
    return torch.einsum("nd,nd->n", a, b)


class _Chunk:
    """The fp32 quantities of one chunk of rows, each computed once and only when a term
    needs it. KL and reverse KL are written with log-sum-exps and row dot products
    (KL = <p, t - x> + lse(x) - lse(t)): one [n, D] temporary, no log-softmax buffers."""

    def __init__(self, draft: torch.Tensor, target: torch.Tensor | None, label: torch.Tensor | None):
        self.x = draft.float()
        self.t = None if target is None else target.float()
        self.label = label

    @cached_property
    def lse_q(self) -> torch.Tensor:
        return torch.logsumexp(self.x, -1)

    @cached_property
    def lse_p(self) -> torch.Tensor:
        # From p, which every term but ce needs anyway: p_max = exp(t_max - lse) saves an exp pass.
        return self.t.amax(-1) - torch.log(self.p.amax(-1))

    @cached_property
    def q(self) -> torch.Tensor:
        return torch.softmax(self.x, -1)

    @cached_property
    def p(self) -> torch.Tensor:
        return torch.softmax(self.t, -1)

    @cached_property
    def log_q(self) -> torch.Tensor:
        return self.x - self.lse_q[:, None]

    @cached_property
    def log_p(self) -> torch.Tensor:
        return self.t - self.lse_p[:, None]

    @cached_property
    def log_m(self) -> torch.Tensor:
        return torch.logaddexp(self.log_p, self.log_q).sub_(math.log(2.0))

    @cached_property
    def alpha(self) -> torch.Tensor:
        return torch.minimum(self.p, self.q).sum(-1)

    @cached_property
    def kl(self) -> torch.Tensor:
        shift = self.lse_q - self.lse_p  # the log-sum-exps first: their temporaries come before p
        return _rowdot(self.p, self.t - self.x) + shift

    @cached_property
    def rkl(self) -> torch.Tensor:
        shift = self.lse_p - self.lse_q
        return _rowdot(self.q, self.x - self.t) + shift

    @cached_property
    def kl_qm(self) -> torch.Tensor:
        return _rowdot(self.q, self.log_q - self.log_m)

    @cached_property
    def lk_lambda(self) -> torch.Tensor:
        return torch.exp(-LK_HYBRID_ETA * self.alpha)

    def loss(self, name: str) -> torch.Tensor:
        """Per-row loss [n]."""
        if name == "kl":
            return self.kl
        if name == "rkl":
            return self.rkl
        if name == "jsd":
            return 0.5 * (_rowdot(self.p, self.log_p - self.log_m) + self.kl_qm)
        if name == "ce":
            return self.lse_q - self.x.gather(-1, self.label[:, None]).squeeze(-1)
        if name == "tv":
            return 1.0 - self.alpha
        if name == "lk":
            return -torch.log(self.alpha.clamp_min(LK_EPS))
        lam = self.lk_lambda
        return lam * self.kl + (1.0 - lam) * (1.0 - self.alpha)

    @cached_property
    def tv_grad(self) -> torch.Tensor:
        """d(1 - alpha)/d draft logits = -q * (1[q <= p] - S), S = sum of q where q <= p."""
        below = (self.q <= self.p).float()
        s = _rowdot(self.q, below)
        return below.sub_(s[:, None]).mul_(self.q).neg_()

    def grad(self, name: str, last: bool) -> torch.Tensor:
        """Per-row d loss / d draft logits [n, D], a tensor the caller may scale in place.
        ``last``: no other term follows, so the cached softmaxes may be overwritten."""
        if name == "kl":
            return self.q.sub_(self.p) if last else self.q - self.p
        if name == "rkl":
            return (self.x - self.t).sub_((self.lse_q - self.lse_p + self.rkl)[:, None]).mul_(self.q)
        if name == "jsd":
            return (self.log_q - self.log_m).sub_(self.kl_qm[:, None]).mul_(self.q).mul_(0.5)
        if name == "ce":
            g = self.q if last else self.q.clone()
            g.scatter_add_(-1, self.label[:, None], torch.full_like(g[:, :1], -1.0))
            return g
        if name == "tv":
            return self.tv_grad if last else self.tv_grad.clone()
        if name == "lk":
            # -log(max(alpha, eps)): (1/alpha) * d TV where alpha >= eps, flat below.
            scale = torch.where(self.alpha >= LK_EPS, 1.0 / self.alpha.clamp_min(LK_EPS), 0.0)
            return self.tv_grad * scale[:, None]
        lam = self.lk_lambda[:, None]
        return (self.q - self.p).mul_(lam).add_(self.tv_grad * (1.0 - lam))


def _weighted_rows(weight: torch.Tensor) -> torch.Tensor | None:
    """The rows that carry weight, where finding them needs no device-to-host sync (CPU);
    None means every row (all weighted, or an accelerator: compute them all, never sync)."""
    if weight.device.type != "cpu":
        return None
    rows = weight.nonzero().squeeze(-1)
    return None if rows.numel() == weight.numel() else rows


def _chunk_index(rows: torch.Tensor | None, sl: slice) -> torch.Tensor | slice:
    """Rows of one chunk: a slice (a view, no copy) or the chunk's share of ``rows``."""
    return sl if rows is None else rows[sl]


def _mixed_grad(chunk: _Chunk, names: tuple[str, ...], scales: list[torch.Tensor]) -> torch.Tensor:
    """sum_j scales[j][:, None] * d term_j / d draft logits for one chunk (the last term may
    overwrite the chunk's cached softmaxes)."""
    g = None
    for j, name in enumerate(names):
        term = chunk.grad(name, last=j + 1 == len(names)).mul_(scales[j][:, None])
        g = term if g is None else g.add_(term)
    return g


class _WeightedTerms(torch.autograd.Function):
    """[sum_i weight_i * term_j(row i) for each term j], chunked over the rows."""

    @staticmethod
    def forward(ctx, draft, target, weight, names: tuple[str, ...]):
        rows = _weighted_rows(weight)
        label = target.argmax(-1) if "ce" in names else None
        needs_target = any(n != "ce" for n in names)
        out = torch.zeros(len(names), dtype=torch.float32, device=draft.device)
        for sl in _chunks(draft.shape[0] if rows is None else rows.numel(), draft.shape[-1]):
            idx = _chunk_index(rows, sl)
            chunk = _Chunk(draft[idx], target[idx], None if label is None else label[idx])
            out += torch.stack([chunk.loss(n) for n in names]) @ weight[idx]
        ctx.save_for_backward(draft, target if needs_target else None, weight, label, rows)
        ctx.names = names
        return out

    @staticmethod
    def backward(ctx, grad_out):
        draft, target, weight, label, rows = ctx.saved_tensors
        slices = _chunks(draft.shape[0] if rows is None else rows.numel(), draft.shape[-1])
        # One chunk of all rows writes its gradient in place; otherwise chunks fill a buffer.
        grad = torch.zeros_like(draft) if rows is not None else torch.empty_like(draft) if len(slices) > 1 else None
        for sl in slices:
            idx = _chunk_index(rows, sl)
            chunk = _Chunk(draft[idx], None if target is None else target[idx], None if label is None else label[idx])
            g = _mixed_grad(chunk, ctx.names, [grad_out[j] * weight[idx] for j in range(len(ctx.names))])
            del chunk
            if grad is None:
                grad = g.to(draft.dtype)
            else:
                grad[idx] = g.to(draft.dtype)
        if grad is None:  # no rows
            grad = torch.zeros_like(draft)
        return grad, None, None, None


class _HeadWeightedLoss(torch.autograd.Function):
    """``sum_j mix_j * sum_i weight_i * term_j(row i)`` on the logits ``hidden @ head.T``
    without keeping them: each chunk's logits are made, scored and differentiated in the
    forward, so what autograd keeps is the gradient of ``hidden`` [N, H] (and of ``head``
    [D, H] when it trains), not [N, D] logits; backward only scales it. The same matmuls
    as lm_head + loss, none repeated. Also returns the per-term sums and each row's argmax."""

    @staticmethod
    def forward(ctx, hidden, head, target, weight, names: tuple[str, ...], mix: tuple[float, ...]):
        n_rows, vocab = hidden.shape[0], head.shape[0]
        head_w = head.to(hidden.dtype)
        label = target.argmax(-1) if "ce" in names else None
        want_hidden, want_head = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.zeros_like(hidden) if want_hidden else None
        grad_head = torch.zeros(head.shape, dtype=torch.float32, device=head.device) if want_head else None
        values = torch.zeros(len(names), dtype=torch.float32, device=hidden.device)
        pred = torch.empty(n_rows, dtype=torch.long, device=hidden.device)
        skip_unweighted = _weighted_rows(weight) is not None  # CPU, some rows unweighted
        for sl in _chunks(n_rows, vocab):
            x = hidden[sl] @ head_w.t()
            pred[sl] = x.argmax(-1)
            keep: torch.Tensor | slice = sl
            if skip_unweighted:
                local = (weight[sl] != 0).nonzero().squeeze(-1)
                x, keep = x[local], local + sl.start
            w = weight[keep]
            chunk = _Chunk(x, target[keep], None if label is None else label[keep])
            values += torch.stack([chunk.loss(name) for name in names]) @ w
            if want_hidden or want_head:
                g = _mixed_grad(chunk, names, [mix[j] * w for j in range(len(names))]).to(hidden.dtype)
                if want_hidden:
                    grad_hidden[keep] = g @ head_w
                if want_head:
                    grad_head += g.t().float() @ hidden[keep].float()
            del chunk, x
        ctx.save_for_backward(grad_hidden, grad_head)
        ctx.head_dtype = head.dtype
        ctx.mark_non_differentiable(values, pred)
        total = sum(m * values[j] for j, m in enumerate(mix))  # python weights: no host-to-device copy
        return total, values, pred

    @staticmethod
    def backward(ctx, grad_total, _grad_values, _grad_pred):
        grad_hidden, grad_head = ctx.saved_tensors
        return (
            None if grad_hidden is None else grad_hidden * grad_total.to(grad_hidden.dtype),
            None if grad_head is None else (grad_head * grad_total).to(ctx.head_dtype),
            None, None, None, None,
        )


def weighted_head_loss(
    hidden: torch.Tensor, head_weight: torch.Tensor, target_logits: torch.Tensor, weight: torch.Tensor,
    spec: str | Mapping[str, float] = "kl",
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """:func:`weighted_loss` of the draft logits ``hidden @ head_weight.T`` (hidden [N, H],
    the lm_head weight [D, H]) with the lm_head fused in, plus each row's draft argmax [N]
    (for metrics): the [N, D] logits never outlive one chunk, which is what bounds a training
    step's memory in the vocabulary size."""
    mix = parse_loss(spec)
    names = tuple(mix)
    total, values, pred = _HeadWeightedLoss.apply(
        hidden, head_weight, target_logits.detach(), weight.detach().float(), names, tuple(float(mix[n]) for n in names)
    )
    terms = {n: values[j] for j, n in enumerate(names)} if len(names) > 1 else {}
    return total, terms, pred


def weighted_loss(
    draft_logits: torch.Tensor, target_logits: torch.Tensor, weight: torch.Tensor, spec: str | Mapping[str, float] = "kl"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(sum_j w_j * sum_i weight[i] * term_j(row i), {term_j: its sum})`` for draft logits
    [N, D], targets [N, D] and weight [N].

    The per-term values (unscaled by the mix weights w_j, detached) are returned only for a
    mix of two or more terms, for logging. Normalisation (e.g. by the supervised-token count)
    and per-row decays are the caller's, folded into ``weight``.
    """
    mix = parse_loss(spec)
    names = tuple(mix)
    values = _WeightedTerms.apply(draft_logits, target_logits.detach(), weight.detach().float(), names)
    total = sum(mix[n] * values[j] for j, n in enumerate(names))
    terms = {n: values[j].detach() for j, n in enumerate(names)} if len(names) > 1 else {}
    return total, terms
