"""Mask functions against brute-force references; flex, sdpa and eager agree on CPU."""

from __future__ import annotations

import random

import pytest
import torch

from spectool.attention import AttentionMask, attend, dflash_anchor_blocks, document_causal, eagle3_ttt, materialize


def random_documents(seed: int, length: int) -> torch.Tensor:
    rng = random.Random(seed)
    ids, doc = [], 0
    while len(ids) < length:
        n = rng.randint(1, 12)
        ids += [doc] * n
        doc += 1
    ids = ids[:length]
    pad = rng.randint(0, 6)
    return torch.tensor(ids[: length - pad] + [-1] * pad)


def brute_causal(doc, q, kv, window):
    return doc[q] >= 0 and doc[q] == doc[kv] and kv <= q and (window is None or q - kv < window)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("window", [None, 3])
def test_eagle3_ttt_mask_matches_brute_force(seed, window):
    doc = random_documents(seed, 40)
    T, steps = len(doc), 3
    got = materialize(eagle3_ttt(doc, window), T, steps * T)
    for q in range(T):
        for kv in range(steps * T):
            want = (kv < T and brute_causal(doc, q, kv, window)) or kv % T == q
            assert bool(got[q, kv]) == want, (q, kv)
    # Extending step by step (identity blocks) gives the same dense mask.
    mask = AttentionMask(eagle3_ttt(doc, window), T, T, torch.device("cpu"))
    mask.dense()
    for _ in range(steps - 1):
        mask = mask.extend_diagonal(eagle3_ttt(doc, window))
    assert torch.equal(mask.dense(), got)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("window,causal", [(None, True), (None, False), (4, True)])
def test_dflash_anchor_block_mask_matches_brute_force(seed, window, causal):
    doc = random_documents(seed, 48)
    T, B = len(doc), 4
    rng = random.Random(seed)
    anchors = torch.tensor(sorted(rng.sample([i for i in range(T) if doc[i] >= 0], 6)))
    Q = len(anchors) * B
    got = materialize(dflash_anchor_blocks(doc, anchors, B, window, causal), Q, T + Q)
    for q in range(Q):
        j, s = divmod(q, B)
        a = int(anchors[j])
        for kv in range(T + Q):
            if kv < T:
                want = doc[a] >= 0 and doc[kv] == doc[a] and kv < a and (window is None or (a + s) - kv < window)
            else:
                slot = kv - T
                want = slot // B == j and (not causal or slot <= q)
            assert bool(got[q, kv]) == want, (q, kv)


def test_document_causal_never_crosses_documents():
    doc = torch.tensor([0, 0, 1, 1, 1, -1])
    m = materialize(document_causal(doc), 6, 6)
    assert not m[2, :2].any() and m[4, 2:5].all() and not m[5].any()


def _qkv(seed, tq, tk, hq=4, hkv=2, d=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, hq, tq, d, generator=g), torch.randn(1, hkv, tk, d, generator=g), torch.randn(1, hkv, tk, d, generator=g))


@pytest.mark.parametrize("which", ["eagle3", "dflash"])
def test_flex_sdpa_eager_agree_on_cpu(which):
    doc = random_documents(7, 128)
    T = len(doc)
    if which == "eagle3":
        mask_mod, q_len, kv_len = eagle3_ttt(doc, None), T, 2 * T
    else:
        anchors = torch.tensor([5, 20, 40, 90])
        mask_mod, q_len, kv_len = dflash_anchor_blocks(doc, anchors, 4, None, True), 16, T + 16
    q, k, v = _qkv(0, q_len, kv_len)
    outs = {}
    for impl in ("sdpa", "eager", "simple_flex_attention"):
        mask = AttentionMask(mask_mod, q_len, kv_len, torch.device("cpu"))
        outs[impl] = attend(q, k, v, mask, impl, 8**-0.5)
    torch.testing.assert_close(outs["sdpa"], outs["eager"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["sdpa"], outs["simple_flex_attention"], atol=1e-4, rtol=1e-4)


def test_block_mask_extension_equals_a_fresh_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    doc = random_documents(3, 256)
    T = len(doc)
    mask = AttentionMask(eagle3_ttt(doc, None), T, T, torch.device("cpu"))
    mask.block_mask()
    for step in range(2, 4):
        mask = mask.extend_diagonal(eagle3_ttt(doc, None))
        fresh = create_block_mask(eagle3_ttt(doc, None), None, None, T, step * T, device="cpu")
        assert torch.equal(mask.block_mask().to_dense(), fresh.to_dense())
        q, k, v = _qkv(step, T, step * T)
        torch.testing.assert_close(attend(q, k, v, mask, "simple_flex_attention", 0.3), attend(q, k, v, mask, "sdpa", 0.3), atol=1e-4, rtol=1e-4)
