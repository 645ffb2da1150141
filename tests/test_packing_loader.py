"""Packing plans, the collate, and the resumable packed loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _hs_util import AUX, H, make_dataset, write_file

from spectool.data.hidden_states.cache import HiddenStateSource
from spectool.data.hidden_states.files import cache_file
from spectool.data.loader import PackedLoader
from spectool.data.packing import collate, pack_epoch, packing_efficiency, plan_epoch


def _lengths(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(300), 0.9, n).astype(int), 8, 8192)


@pytest.mark.parametrize("world_size", [1, 3, 4])
def test_plan_covers_every_sample_once_with_equal_batches(world_size):
    lengths = _lengths()
    indices = list(range(0, 3000, 1))[:2999]
    plan = plan_epoch(indices, lengths, 2048, world_size, seed=1, epoch=0)
    assert all(len(batch) == world_size for batch in plan)
    seen = [i for batch in plan for row in batch for i in row]
    assert sorted(seen) == sorted(indices)
    for batch in plan:
        for row in batch:
            assert sum(min(int(lengths[i]), 2048) for i in row) <= 2048
    assert packing_efficiency(plan, lengths, 2048) > 0.95


def test_plan_is_deterministic_per_seed_and_epoch():
    lengths = _lengths(500)
    a = plan_epoch(range(500), lengths, 4096, 2, seed=3, epoch=1)
    assert a == plan_epoch(range(500), lengths, 4096, 2, seed=3, epoch=1)
    assert a != plan_epoch(range(500), lengths, 4096, 2, seed=3, epoch=2)
    assert a != plan_epoch(range(500), lengths, 4096, 2, seed=4, epoch=1)


def test_long_samples_are_truncated_not_dropped():
    lengths = np.array([5000, 10, 20])
    rows = pack_epoch([0, 1, 2], lengths, 1024, seed=0, epoch=0)
    assert sorted(i for r in rows for i in r) == [0, 1, 2]


def _sample(n, value, start_pos=0):
    return {
        "input_ids": torch.full((n,), value, dtype=torch.long),
        "loss_mask": torch.ones(n, dtype=torch.long),
        "hidden_states": torch.full((n, 6), float(value)),
        "verifier_last_hidden_states": torch.full((n, 2), float(value)),
        "position_ids": torch.arange(start_pos, start_pos + n),
    }


def test_collate_keeps_documents_apart_and_truncates():
    b = collate([_sample(5, 1), _sample(4, 2, start_pos=1), _sample(10, 3)], 16, torch.bfloat16)
    assert {k: tuple(v.shape) for k, v in b.items()} == {
        "input_ids": (1, 16), "loss_mask": (1, 16), "hidden_states": (1, 16, 6),
        "verifier_last_hidden_states": (1, 16, 2), "position_ids": (1, 16), "document_ids": (1, 16)}
    assert b["document_ids"][0].tolist() == [0] * 5 + [1] * 4 + [2] * 7
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]
    assert b["hidden_states"].dtype == torch.bfloat16
    pad = collate([_sample(3, 1)], 8, torch.float32)
    assert pad["document_ids"][0, 3:].eq(-1).all() and pad["loss_mask"][0, 3:].eq(0).all()
    empty = collate([], 8, torch.float32, widths=(6, 2))
    assert empty["hidden_states"].shape == (1, 8, 6) and empty["document_ids"].eq(-1).all()


@pytest.fixture()
def cached(tmp_path):
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=40).tolist()
    ds = make_dataset(tmp_path / "data", lengths)
    cache = tmp_path / "data" / "hidden_states"
    cache.mkdir()
    for i in range(len(ds)):
        write_file(cache_file(cache, i), ds[i].input_ids)
    return ds, cache


def _loader(ds, cache, rank=0, world=1, workers=0, noise=0.05):
    def shift(s):  # an EAGLE-3-like transform that shortens samples by one
        return {"input_ids": s["input_ids"][1:], "loss_mask": s["loss_mask"][1:], "hidden_states": s["hidden_states"][:-1],
                "verifier_last_hidden_states": s["verifier_last_hidden_states"][1:], "position_ids": s["position_ids"][1:]}

    return PackedLoader(ds, range(len(ds)), lambda: HiddenStateSource(ds, cache, len(AUX), H, on_missing="raise"),
                        total_seq_len=128, rank=rank, world_size=world, seed=7, sample_transform=shift,
                        noise_std=noise, num_workers=workers, prefetch_factor=2, dtype=torch.float32)


def test_loader_resume_equals_tail_of_full_iteration_with_workers(cached):
    ds, cache = cached
    loader = _loader(ds, cache)
    full = list(loader.iterate(epoch=2))
    n = len(full)
    assert n == len(loader) == loader.num_batches(2)
    tail = list(_loader(ds, cache, workers=2).iterate(epoch=2, start_batch=3))
    assert len(tail) == n - 3
    for a, b in zip(full[3:], tail):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    other_epoch = list(_loader(ds, cache).iterate(epoch=3))
    assert not torch.equal(full[0]["hidden_states"], other_epoch[0]["hidden_states"])


def test_loader_noise_is_uniform_and_train_only(cached):
    ds, cache = cached
    noisy = next(iter(_loader(ds, cache).iterate(0)))
    clean = next(iter(_loader(ds, cache, noise=0.0).iterate(0)))
    real = noisy["document_ids"][0] >= 0
    diff = (noisy["hidden_states"] - clean["hidden_states"])[0][real]
    assert diff.abs().max() <= 0.05 + 1e-6 and diff.abs().max() > 0.04  # U(-std, std), added in float32
    assert torch.equal(noisy["verifier_last_hidden_states"], clean["verifier_last_hidden_states"])
    assert torch.equal(noisy["hidden_states"][0][~real], clean["hidden_states"][0][~real])


def test_loader_ranks_equal_batches_every_sample_once(cached):
    ds, cache = cached
    loaders = [_loader(ds, cache, rank=r, world=3, noise=0.0) for r in range(3)]
    counts = {len(l) for l in loaders}
    assert len(counts) == 1
    tokens = 0
    for l in loaders:
        for batch in l.iterate(0):
            tokens += int((batch["document_ids"] >= 0).sum())
        assert l.accounting.ok == sum(len(b[l.rank]) for b in l.plan(0))
    assert tokens == int(sum(ds.lengths) - len(ds))  # each sample once, shortened by the transform
