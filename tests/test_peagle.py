"""P-EAGLE: COD sampling, the attention mask, the model and its checkpoint format."""

from __future__ import annotations

import pytest
import torch

from spectool.attention import AttentionMask, materialize
from spectool.models.peagle.cod import cod_sample, depth_size
from spectool.models.peagle.mask import peagle_mask


def _doc_ids(lengths: list[int], padding: int) -> torch.Tensor:
    return torch.tensor([i for i, n in enumerate(lengths) for _ in range(n)] + [-1] * padding)


# ---- COD sampling ------------------------------------------------------------------------


def test_cod_depth_sizes_follow_the_geometric_decay_with_its_floor():
    assert [depth_size(100, d, 0.7, 0.2) for d in range(1, 8)] == [69, 48, 33, 23, 19, 18, 18]
    assert depth_size(3, 3, 0.7, 0.2) == 0 and depth_size(3, 5, 0.7, 0.2) == 0
    T = 300
    anchor, depth = cod_sample(torch.ones(T), torch.zeros(T, dtype=torch.long), 5, 0.7, 0.2, generator=torch.Generator().manual_seed(0))
    sizes = [int((depth == d).sum()) for d in range(5)]
    assert sizes == [T] + [depth_size(T, d, 0.7, 0.2) for d in range(1, 5)]
    capped = cod_sample(torch.ones(T), torch.zeros(T, dtype=torch.long), 3, 0.5, 0.1, max_anchors=40, generator=torch.Generator().manual_seed(0))
    assert [int((capped[1] == d).sum()) for d in range(3)] == [T, 19, 9]  # floor(39 * .5), floor(38 * .25)


@pytest.mark.parametrize("seed", range(4))
def test_cod_candidate_pools(seed):
    """Depth d draws from the positions drawn at d-1 plus one that are supervised and in the
    anchor's document (depth 1: the seeds), as many as the decay allows."""
    g = torch.Generator().manual_seed(seed)
    doc = _doc_ids([37, 1, 50, 29], padding=11)
    T = doc.shape[0]
    mask = (torch.rand(T, generator=g) > 0.35) & (doc >= 0)
    anchor, depth = cod_sample(mask, doc, 6, 0.8, 0.3, generator=g)
    assert torch.equal(anchor[depth == 0], torch.nonzero(doc >= 0).flatten())  # every real row, no padding
    seeds = {int(p) for p in torch.nonzero(mask).flatten()}
    pool = {p for p in seeds if p >= 1 and doc[p - 1] == doc[p]}
    for d in range(1, 6):
        drawn = sorted(int(a) + d for a in anchor[depth == d])
        assert drawn == sorted(set(drawn)) and set(drawn) <= pool
        assert len(drawn) == min(depth_size(len(seeds), d, 0.8, 0.3), len(pool))
        assert torch.equal(anchor[depth == d], anchor[depth == d].sort().values)
        pool = {p + 1 for p in drawn if p + 1 < T and mask[p + 1] and doc[p + 1] == doc[p + 1 - (d + 1)]}
    rows = anchor + depth
    assert bool(mask[rows[depth > 0]].all())  # every mask slot is supervised
    assert bool((doc[rows] == doc[anchor]).all())  # chains stay in their document
    # a chain at depth d exists at every depth below
    for d in range(2, 6):
        assert set(anchor[depth == d].tolist()) <= set(anchor[depth == d - 1].tolist())


def test_cod_is_deterministic_for_a_generator():
    mask, doc = torch.ones(64), torch.zeros(64, dtype=torch.long)
    a = cod_sample(mask, doc, 4, 0.7, 0.2, 20, torch.Generator().manual_seed(3))
    b = cod_sample(mask, doc, 4, 0.7, 0.2, 20, torch.Generator().manual_seed(3))
    c = cod_sample(mask, doc, 4, 0.7, 0.2, 20, torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])


# ---- the mask ------------------------------------------------------------------------------


def brute_force_mask(anchor: list[int], depth: list[int], doc: list[int], window: int | None) -> torch.Tensor:
    """What element (a, d) sees at inference: its document's rows up to a (the context, fed
    by the verifier), then its own mask slots 1..d, limited by the window on positions."""
    n = len(anchor)
    out = torch.zeros(n, n, dtype=torch.bool)
    index = {(a, d): i for i, (a, d) in enumerate(zip(anchor, depth))}
    for q, (a, d) in enumerate(zip(anchor, depth)):
        if doc[a] < 0:
            continue
        visible = [(r, 0) for r in range(a + 1) if doc[r] == doc[a]] + [(a, s) for s in range(1, d + 1)]
        for r, s in visible:
            if (r, s) in index and (window is None or (a + d) - (r + s) < window):
                out[q, index[(r, s)]] = True
    return out


@pytest.mark.parametrize("window", [None, 5])
def test_mask_equals_brute_force_definition(window):
    g = torch.Generator().manual_seed(1)
    doc = _doc_ids([13, 9, 17], padding=3)
    mask = (torch.rand(doc.shape[0], generator=g) > 0.2) & (doc >= 0)
    anchor, depth = cod_sample(mask, doc, 4, 0.9, 0.5, generator=g)
    assert int((depth > 0).sum()) > 20
    got = materialize(peagle_mask(anchor, depth, doc, window), anchor.shape[0], anchor.shape[0])
    assert torch.equal(got, brute_force_mask(anchor.tolist(), depth.tolist(), doc.tolist(), window))
    assert bool(got.diagonal().all())  # no row is fully masked (sdpa would give NaN)


def test_mask_block_mask_matches_dense():
    doc = _doc_ids([70, 90], padding=0)
    anchor, depth = cod_sample(torch.ones(160), doc, 3, 0.7, 0.2, generator=torch.Generator().manual_seed(0))
    n = anchor.shape[0]
    m = AttentionMask(peagle_mask(anchor, depth, doc, 64), n, n, torch.device("cpu"))
    block = m.block_mask()
    dense_from_block = block.to_dense()[0, 0].bool()  # [q blocks, kv blocks] that hold any True
    q_block, kv_block = block.BLOCK_SIZE
    dense = m.dense()
    for qb in range(dense_from_block.shape[0]):
        for kb in range(dense_from_block.shape[1]):
            tile = dense[qb * q_block : (qb + 1) * q_block, kb * kv_block : (kb + 1) * kv_block]
            assert bool(tile.any()) <= bool(dense_from_block[qb, kb])
