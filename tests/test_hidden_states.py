"""Hidden-state sources: validation of every file, the on-missing policies, local generation."""

from __future__ import annotations

import logging

import pytest
import torch
from _hs_util import AUX, H, make_dataset, write_file

from spectool.config import RunConfig
from spectool.data.hidden_states.cache import HiddenStateSource
from spectool.data.hidden_states.factory import build_source
from spectool.data.hidden_states.files import HiddenStateError, InvalidHiddenStates, cache_file, read_hidden_states
from spectool.data.hidden_states.layers import write_layer_record
from spectool.data.hidden_states.legacy import LegacyDataset, LegacySource
from spectool.data.local_generator import LocalGenerator, check_fits


@pytest.fixture()
def data(tmp_path):
    ds = make_dataset(tmp_path / "data", [12, 9, 15, 7])
    cache = tmp_path / "data" / "hidden_states"
    cache.mkdir()
    return ds, cache


def _break(kind: str, ds, cache, i: int) -> None:
    """Write hs_i broken in one way."""
    ids = ds[i].input_ids
    path = cache_file(cache, i)
    if kind == "corrupt":
        write_file(path, ids)
        path.write_bytes(path.read_bytes()[:-40])  # truncated
    elif kind == "tokens":
        wrong = ids.copy()
        wrong[3] += 1
        write_file(path, wrong)
    elif kind == "layers":
        from _hs_util import fake_hidden

        write_file(path, ids, fake_hidden(ids, num_slots=3))
    elif kind == "nan":
        from _hs_util import fake_hidden

        h = fake_hidden(ids)
        h[2, 1, 5] = float("nan")
        write_file(path, ids, h)


EXPECTED_KIND = {"corrupt": "unreadable file", "tokens": "token ids differ", "layers": "wrong shape", "nan": "non-finite values"}


@pytest.mark.parametrize("kind", list(EXPECTED_KIND))
def test_reader_names_what_is_wrong(data, kind):
    ds, cache = data
    _break(kind, ds, cache, 1)
    with pytest.raises(InvalidHiddenStates) as exc:
        read_hidden_states(cache_file(cache, 1), ds[1].input_ids, len(AUX) + 1, H)
    assert exc.value.kind == EXPECTED_KIND[kind]


def test_good_file_splits_into_draft_input_and_target(data):
    ds, cache = data
    write_file(cache_file(cache, 0), ds[0].input_ids)
    src = HiddenStateSource(ds, cache, len(AUX), H, on_missing="skip")
    s = src.load(0)
    raw = read_hidden_states(cache_file(cache, 0), ds[0].input_ids, 4, H)
    assert s["hidden_states"].shape == (12, 3 * H)
    assert torch.equal(s["hidden_states"][:, H : 2 * H], raw[:, 1])  # layer blocks in file order
    assert torch.equal(s["verifier_last_hidden_states"], raw[:, -1])
    assert torch.equal(s["position_ids"], torch.arange(12))
    assert s["input_ids"].dtype == torch.int64 and s["loss_mask"].dtype == torch.int64
    assert src.accounting.ok == 1


@pytest.mark.parametrize("kind", list(EXPECTED_KIND))
@pytest.mark.parametrize("policy", ["skip", "warn", "raise"])
def test_bad_file_is_never_trained_on(data, kind, policy, caplog):
    ds, cache = data
    _break(kind, ds, cache, 1)
    src = HiddenStateSource(ds, cache, len(AUX), H, on_missing=policy)
    if policy == "raise":
        with pytest.raises(HiddenStateError, match=EXPECTED_KIND[kind]):
            src.load(1)
        return
    with caplog.at_level(logging.WARNING):
        assert src.load(1) is None
    reason = f"invalid cache file ({EXPECTED_KIND[kind]})"
    assert src.accounting.skipped == {reason: 1}
    assert ("skipping sample 1" in caplog.text) == (policy == "warn")


class _Gen:
    """A generator double that records calls (the real ones are tested below and in test_vllm_client)."""

    name = "double"
    needs_main_process = False

    def __init__(self, fail: bool = False):
        self.calls, self.fail = [], fail

    def generate(self, sample):
        from spectool.data.hidden_states.files import GenerationError, Generated
        from _hs_util import fake_hidden

        self.calls.append(sample.index)
        if self.fail:
            raise GenerationError("timeout", "no reply")
        return Generated(fake_hidden(sample.input_ids, seed=99))


@pytest.mark.parametrize("on_generate", ["cache", "delete"])
@pytest.mark.parametrize("kind", ["missing", *EXPECTED_KIND])
def test_generate_policy_replaces_missing_or_bad_files(data, kind, on_generate):
    ds, cache = data
    if kind != "missing":
        _break(kind, ds, cache, 2)
    gen = _Gen()
    src = HiddenStateSource(ds, cache, len(AUX), H, on_missing="generate", on_generate=on_generate, generator=gen)
    s = src.load(2)
    assert gen.calls == [2] and s is not None and s["hidden_states"].shape == (15, 3 * H)
    assert src.accounting.generated == 1
    if on_generate == "cache":
        read_hidden_states(cache_file(cache, 2), ds[2].input_ids, 4, H)  # now valid
        assert src.load(2) is not None and gen.calls == [2]  # second epoch hits the cache
        assert src.accounting.ok == 1


def test_generation_failure_skips_with_reason(data):
    ds, cache = data
    src = HiddenStateSource(ds, cache, len(AUX), H, on_missing="generate", generator=_Gen(fail=True))
    assert src.load(0) is None
    assert src.accounting.skipped == {"generation failed (timeout)": 1}


def test_local_generator_matches_hf(tiny_llama):
    from transformers import AutoModelForCausalLM

    gen = LocalGenerator(str(tiny_llama), AUX)
    seqs = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    outs = gen.generate_batch(seqs)  # batched with right padding
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).eval()
    for seq, out in zip(seqs, outs):
        assert out.shape == (len(seq), 4, H) and out.dtype == torch.bfloat16
        with torch.no_grad():
            ref = model.model(input_ids=torch.tensor([seq]), output_hidden_states=True)
        for slot, k in enumerate(AUX):
            torch.testing.assert_close(out[:, slot], ref.hidden_states[k][0].to(torch.bfloat16))  # bf16 tolerance (padding changes kernels)
        # the last slot is PRE-norm: normalising it gives HF's post-norm hidden_states[L]
        post = ref.hidden_states[8][0]
        assert not torch.allclose(out[:, 3].float(), post, atol=1e-2)
        torch.testing.assert_close(model.model.norm(out[:, 3].float()), post, atol=2e-2, rtol=2e-2)


def test_local_generator_refuses_a_verifier_too_large(tiny_llama, monkeypatch):
    import spectool.data.local_generator as lg

    monkeypatch.setattr(lg, "available_memory", lambda device: 1000)
    with pytest.raises(HiddenStateError, match="GiB on cpu"):
        check_fits(str(tiny_llama), torch.bfloat16, torch.float32, torch.device("cpu"))


def _cfg(tiny_llama, data_path, **data):
    cfg = RunConfig()
    cfg.model.verifier_name_or_path = str(tiny_llama)
    cfg.data.data_path = str(data_path)
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def test_auto_falls_back_to_local_once_and_generates(tiny_llama, data, tmp_path):
    ds, cache = data
    notes = []
    cfg = _cfg(tiny_llama, tmp_path / "data", vllm_endpoint="http://127.0.0.1:9/v1", on_generate="cache")
    src = build_source(cfg, ds, info=notes.append)
    assert src.generator.name == "local" and src.needs_main_process
    assert len([n for n in notes if "no vLLM endpoint answers" in n]) == 1
    s = src.load(3)
    assert s is not None and src.accounting.generated == 1
    ref = LocalGenerator(str(tiny_llama), AUX).generate_batch([ds[3].input_ids])[0]
    assert torch.equal(read_hidden_states(cache_file(cache, 3), ds[3].input_ids, 4, H), ref)


def test_cache_made_with_other_layer_ids_is_refused(tiny_llama, data, tmp_path):
    ds, cache = data
    write_layer_record(cache, [1, 3, 5], 8, H, str(tiny_llama))
    cfg = _cfg(tiny_llama, tmp_path / "data", on_missing="skip")
    with pytest.raises(HiddenStateError, match=r"extracted with layer ids \[1, 3, 5, 8\].*--target-layer-ids 1 3 5"):
        build_source(cfg, ds)
    cfg.model.target_layer_ids = [1, 3, 5]
    build_source(cfg, ds)


def test_legacy_files_are_read_safely(tmp_path, tiny_llama):
    import json
    import pickle

    d = tmp_path / "legacy"
    d.mkdir()
    ids = torch.arange(3, 13)
    layers = [torch.randn(10, H, dtype=torch.bfloat16) for _ in range(4)]
    torch.save({"input_ids": ids, "loss_mask": torch.ones(10, dtype=torch.long), "hidden_states": layers}, d / "data_0.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (d / "data_1.pt").write_bytes(pickle.dumps({"input_ids": Evil()}))
    torch.save({"input_ids": ids, "loss_mask": torch.ones(10), "hidden_states": layers[:3]}, d / "data_2.pt")
    (d / "sample_lengths.json").write_text(json.dumps({"0": 10, "1": 10, "2": 10}))
    ds = LegacyDataset(d)
    src = LegacySource(ds, len(AUX), H, on_missing="skip")
    s = src.load(0)
    assert torch.equal(s["hidden_states"], torch.cat(layers[:3], dim=-1)) and torch.equal(s["verifier_last_hidden_states"], layers[3])
    assert src.load(1) is None and src.load(2) is None
    assert src.accounting.ok == 1 and sum(src.accounting.skipped.values()) == 2
    assert "invalid legacy file (wrong shape)" in src.accounting.skipped
    cfg = _cfg(tiny_llama, d, legacy_data=True)
    assert isinstance(build_source(cfg, ds), LegacySource)
