"""The merged TTT attention (spans + diagonal, log-sum-exp) equals the dense-mask reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spectool.attention import TTTMask, attend
from spectool.attention import merged as M


def _packed_docs(lengths: list[int], pad: int) -> torch.Tensor:
    ids = [torch.full((n,), i) for i, n in enumerate(lengths)] + [torch.full((pad,), -1)]
    return torch.cat(ids)


def _dense_ttt(q, keys, values, mask: TTTMask, scale):
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask.dense(), scale=scale, enable_gqa=q.shape[1] != keys.shape[1])


CASES = [
    # lengths, padding, window, heads (q, kv)
    ([7, 13, 1, 20], 3, None, (4, 2)),
    ([40, 25, 9], 0, 8, (2, 2)),
    ([64], 5, None, (2, 1)),
    ([30, 50], 4, 16, (4, 2)),
]


@pytest.mark.parametrize("lengths,pad,window,heads", CASES)
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_merged_equals_dense_values_and_grads(lengths, pad, window, heads, steps, monkeypatch):
    monkeypatch.setattr(M, "_WINDOW_CHUNK", 12)  # several query chunks per windowed span
    torch.manual_seed(len(lengths) * 10 + steps)
    doc = _packed_docs(lengths, pad)
    T, D = doc.shape[0], 8
    Hq, Hkv = heads
    q = torch.randn(1, Hq, T, D, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, Hkv, steps * T, D, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, Hkv, steps * T, D, dtype=torch.float64, requires_grad=True)
    mask = TTTMask(doc, window, T, torch.device("cpu"))
    for _ in range(steps - 1):
        mask = mask.extend_diagonal()
    scale = D**-0.5
    upstream = torch.randn(1, Hq, T, D, dtype=torch.float64)

    got = attend(q, k, v, mask, "sdpa", scale)
    grads = torch.autograd.grad((got * upstream).sum(), (q, k, v))
    want = _dense_ttt(q, k, v, mask, scale)
    want_grads = torch.autograd.grad((want * upstream).sum(), (q, k, v))

    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


def test_merged_fp32_matches_dense_within_float_tolerance():
    torch.manual_seed(0)
    doc = _packed_docs([100, 60, 90], 6)
    T = doc.shape[0]
    q = torch.randn(1, 4, T, 16, requires_grad=True)
    k = torch.randn(1, 2, 3 * T, 16, requires_grad=True)
    v = torch.randn(1, 2, 3 * T, 16, requires_grad=True)
    mask = TTTMask(doc, None, T, torch.device("cpu")).extend_diagonal().extend_diagonal()
    got = attend(q, k, v, mask, "sdpa", 0.25)
    want = _dense_ttt(q, k, v, mask, 0.25)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g = torch.autograd.grad(got.square().sum(), (q, k, v))
    w = torch.autograd.grad(want.square().sum(), (q, k, v))
    for a, b in zip(g, w):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_flex_merged_forward_equals_dense():
    """The GPU path (flex over the step-0 BlockMask + diagonal merge) run eagerly on CPU."""
    torch.manual_seed(1)
    doc = _packed_docs([70, 30, 20], 8)
    T = doc.shape[0]
    q = torch.randn(1, 4, T, 16)
    k = torch.randn(1, 2, 3 * T, 16)
    v = torch.randn(1, 2, 3 * T, 16)
    for window in (None, 24):
        mask = TTTMask(doc, window, T, torch.device("cpu")).extend_diagonal().extend_diagonal()
        got = attend(q, k, v, mask, "simple_flex_attention", 0.25)
        torch.testing.assert_close(got, _dense_ttt(q, k, v, mask, 0.25), rtol=1e-5, atol=1e-5)


def test_eagle3_training_step_merged_equals_dense(tiny_llama):
    """Whole EAGLE-3 objective (2 layers, one windowed, 3 TTT steps, packed docs + padding):
    loss and every parameter gradient of the merged path equal the dense-mask path."""
    from spectool.config import RunConfig
    from spectool.models.build import initialise_draft

    from test_models import make_batch

    cfg = RunConfig.from_flat({"verifier_name_or_path": str(tiny_llama), "num_layers": 2, "sliding_window": 16, "sliding_window_indices": [0]})
    model = initialise_draft(cfg).double()
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in make_batch(96, 3, 64, 448).items()}
    results = {}
    for impl in ("sdpa", "eager"):
        model.zero_grad(set_to_none=True)
        loss, _ = model.forward_train(batch, ttt_steps=3, attn_impl=impl)
        loss.backward()
        results[impl] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(results["sdpa"][0], results["eager"][0], rtol=1e-9, atol=1e-10)
    assert results["sdpa"][1].keys() == results["eager"][1].keys() and len(results["sdpa"][1]) > 5
    for name, grad in results["sdpa"][1].items():
        torch.testing.assert_close(grad, results["eager"][1][name], rtol=1e-7, atol=1e-10, msg=name)



@pytest.mark.parametrize("window,causal", [(None, False), (None, True), (20, True)])
def test_dflash_chunked_equals_dense_values_and_grads(window, causal, monkeypatch):
    """Packed row of several documents + padding, sorted anchors, chunks smaller than a document."""
    from spectool.attention import DFlashMask, dflash_anchor_blocks
    from spectool.attention import merged

    monkeypatch.setattr(merged, "_DFLASH_CHUNK_QUERIES", 12)  # 3 blocks of 4 per call
    torch.manual_seed(7)
    doc = _packed_docs([30, 45, 5, 40], 4)
    T, B = doc.shape[0], 4
    anchors = torch.tensor([0, 3, 7, 12, 20, 29, 31, 33, 40, 52, 70, 76, 80, 86, 95, 110, 118])
    n = anchors.shape[0]
    mask = DFlashMask(dflash_anchor_blocks(doc, anchors, B, window, causal), n * B, T + n * B, torch.device("cpu"),
                      doc, anchors, B, window, causal)
    q = torch.randn(1, 4, n * B, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, T + n * B, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, T + n * B, 8, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(1, 4, n * B, 8, dtype=torch.float64)
    got = attend(q, k, v, mask, "sdpa", 0.3)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense(), scale=0.3, enable_gqa=True)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for g, w in zip(torch.autograd.grad((got * upstream).sum(), (q, k, v)), torch.autograd.grad((want * upstream).sum(), (q, k, v))):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
    calls = list(mask.chunks())
    assert len(calls) > 4 and sum(a.numel() for *_, a in calls) < mask.dense().numel() / 3  # far fewer scores than dense
