"""d2t/t2d semantics (speculators format) and the D/V sidecar."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectool.vocab import VocabError, build_vocab_mapping, load_token_freq, load_vocab_mapping, save_vocab_mapping


def test_top_tokens_by_count_then_id_sorted_ascending_as_offsets():
    freq = {7: 5, 3: 5, 9: 1, 1: 9, 4: 2}
    m = build_vocab_mapping(freq, 3, 12)
    # counts: 1 (9), then 3 and 7 (5 each, lower id first) -> {1, 3, 7}
    assert m.target_ids.tolist() == [1, 3, 7]
    assert m.d2t.tolist() == [1, 2, 5]  # offsets: target = i + d2t[i]
    assert m.d2t.dtype == np.int64 and m.t2d.dtype == np.bool_
    assert m.t2d.shape == (12,) and np.flatnonzero(m.t2d).tolist() == [1, 3, 7]


def test_pads_with_smallest_unused_ids_when_too_few_tokens():
    m = build_vocab_mapping({5: 3, 2: 1}, 5, 10)
    assert m.target_ids.tolist() == [0, 1, 2, 3, 5]


def test_rejects_ids_outside_vocab_and_bad_sizes():
    with pytest.raises(VocabError, match="outside the verifier vocab"):
        build_vocab_mapping({50: 1}, 2, 10)
    with pytest.raises(VocabError, match="must lie in"):
        build_vocab_mapping({1: 1}, 11, 10)


def test_round_trip_and_sidecar_mismatch_refused(tmp_path):
    m = build_vocab_mapping({i: 100 - i for i in range(40)}, 16, 64)
    save_vocab_mapping(m, tmp_path / "d2t.npy", tmp_path / "t2d.npy", source="test")
    back = load_vocab_mapping(tmp_path / "d2t.npy", tmp_path / "t2d.npy", draft_vocab_size=16, target_vocab_size=64)
    assert np.array_equal(back.d2t, m.d2t) and np.array_equal(back.t2d, m.t2d)
    with pytest.raises(VocabError, match="built for draft vocab 16, not --draft-vocab-size 8"):
        load_vocab_mapping(tmp_path / "d2t.npy", tmp_path / "t2d.npy", draft_vocab_size=8)
    with pytest.raises(VocabError, match="covers a target vocab of 64, the verifier has 128"):
        load_vocab_mapping(tmp_path / "d2t.npy", tmp_path / "t2d.npy", target_vocab_size=128)
    # A mapping rebuilt for another D next to a stale sidecar is refused.
    other = build_vocab_mapping({i: 1 for i in range(40)}, 8, 64)
    np.save(tmp_path / "d2t.npy", other.d2t)
    np.save(tmp_path / "t2d.npy", other.t2d)
    with pytest.raises(VocabError, match="vocab.json says D=16"):
        load_vocab_mapping(tmp_path / "d2t.npy", tmp_path / "t2d.npy")


def test_inconsistent_pair_and_wrong_dtype_refused(tmp_path):
    m = build_vocab_mapping({i: 1 for i in range(10)}, 4, 16)
    t2d = m.t2d.copy()
    t2d[15] = True
    t2d[0] = False
    np.save(tmp_path / "d2t.npy", m.d2t)
    np.save(tmp_path / "t2d.npy", t2d)
    with pytest.raises(VocabError, match="disagree"):
        load_vocab_mapping(tmp_path / "d2t.npy", tmp_path / "t2d.npy")
    np.save(tmp_path / "d2t.npy", m.d2t.astype(np.int32))
    with pytest.raises(VocabError, match="must be int64"):
        load_vocab_mapping(tmp_path / "d2t.npy", tmp_path / "t2d.npy")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_token_freq_is_loaded_without_unpickling_objects(tmp_path):
    torch.save({1: 2, 3: 4}, tmp_path / "ok.pt")
    assert load_token_freq(tmp_path / "ok.pt") == {1: 2, 3: 4}
    torch.save({"x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(VocabError, match="not a readable token_freq.pt"):
        load_token_freq(tmp_path / "evil.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(VocabError, match="dict\\[int, int\\]"):
        load_token_freq(tmp_path / "list.pt")
