"""Fault suite, data side: every fault ends in one clear line, a true exit code and intact files.

Disk faults run the writer in a child process under RLIMIT_FSIZE (SIGXFSZ ignored, so the
write fails with EFBIG instead of killing it); vLLM faults use the fake server of _hs_util
on 127.0.0.1 with short timeouts and few retries.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _hs_util import AUX, H, FakeVllm, fake_hidden, make_dataset, write_file

from spectool.config import RunConfig
from spectool.data.dataset import DatasetError, ProcessedDataset, write_processed_dataset
from spectool.data.generate import generate_cache
from spectool.data.hidden_states.accounting import Accounting
from spectool.data.hidden_states.cache import HiddenStateSource
from spectool.data.hidden_states.factory import build_source, make_generator, stamp_layer_record
from spectool.data.hidden_states.files import (
    HiddenStateError,
    InvalidHiddenStates,
    SourceFailure,
    cache_file,
    read_hidden_states,
)
from spectool.data.hidden_states.layers import LAYERS_FILE, SERVER_LAYERS_FILE, check_layer_record, write_server_record
from spectool.data.loader import PackedLoader
from spectool.data.vllm_client import InvalidResponseError, TransientError, VllmClient, VllmDeadError
from spectool.vocab import VocabError, build_vocab_mapping, derived_vocab_mapping, load_vocab_mapping, save_vocab_mapping

MODEL = "tiny/verifier"
SRC = Path(__file__).resolve().parent.parent / "src"
L = 8  # tiny_llama layers


def one_line(message: str) -> str:
    """The message is one line and says what to do (a ':' separates problem and fix)."""
    assert "\n" not in message and ": " in message, message
    return message


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_limited(code: str, limit: int) -> subprocess.CompletedProcess:
    """Run ``code`` in a child whose files may not grow beyond ``limit`` bytes."""
    prelude = textwrap.dedent(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(Path(__file__).parent)])}
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, timeout=120, env=env)


def assert_write_failed(proc: subprocess.CompletedProcess) -> None:
    """The child failed for the size limit (EFBIG, or numpy's short-write OSError), not for a bug."""
    assert proc.returncode != 0 and ("File too large" in proc.stderr or "OSError" in proc.stderr), proc.stderr


# ------------------------------------------------------------------ atomic writes, whole reads


def test_hidden_state_file_write_past_size_limit_keeps_the_old_file(tmp_path):
    path = tmp_path / "hs_0.safetensors"
    write_file(path, list(range(3, 13)))
    before = snapshot(tmp_path)
    proc = run_limited(f"""
        import torch
        from spectool.data.hidden_states.files import save_hidden_states
        save_hidden_states({str(path)!r}, torch.zeros(4000, 4, 64), list(range(4000)))
    """, limit=64 * 1024)
    assert_write_failed(proc)
    assert snapshot(tmp_path) == before  # old bytes intact, no temporary file left


def test_dataset_overwrite_past_size_limit_keeps_the_old_dataset(tmp_path):
    data = tmp_path / "data"
    write_processed_dataset(data, [([5, 6, 7, 8], [0, 0, 1, 1])], {"verifier": "tiny"}, token_freq=True)
    before = snapshot(tmp_path)
    proc = run_limited(f"""
        from spectool.data.dataset import write_processed_dataset
        rows = [(list(range(3, 20003)), [1] * 20000)]
        write_processed_dataset({str(data)!r}, rows, {{"verifier": "tiny"}}, token_freq=True)
    """, limit=32 * 1024)
    assert_write_failed(proc)
    assert snapshot(tmp_path) == before
    assert ProcessedDataset(data)[0].input_ids.tolist() == [5, 6, 7, 8]


def test_vocab_write_past_size_limit_keeps_the_old_mapping(tmp_path):
    mapping = build_vocab_mapping({i: 100 - i for i in range(50)}, 10, 100)
    save_vocab_mapping(mapping, tmp_path / "d2t.npy", tmp_path / "t2d.npy", source="test")
    before = snapshot(tmp_path)
    proc = run_limited(f"""
        from pathlib import Path
        from spectool.vocab import build_vocab_mapping, save_vocab_mapping
        big = build_vocab_mapping({{i: 1 for i in range(20000)}}, 10000, 200000)
        save_vocab_mapping(big, Path({str(tmp_path)!r}) / "d2t.npy", Path({str(tmp_path)!r}) / "t2d.npy", source="big")
    """, limit=16 * 1024)
    assert_write_failed(proc)
    assert snapshot(tmp_path) == before


def test_layer_record_write_past_size_limit_leaves_no_cut_record(tmp_path):
    cache = tmp_path / "hs"
    cache.mkdir()
    proc = run_limited(f"""
        from spectool.data.hidden_states.layers import write_layer_record
        write_layer_record({str(cache)!r}, list(range(2, 5)), 8, 64, "x" * 5000)
    """, limit=1024)
    assert_write_failed(proc)
    assert list(cache.iterdir()) == []  # no record rather than a cut one


@pytest.mark.parametrize("which", ["meta", "layers", "vocab"])
def test_cut_records_are_refused_in_one_line(tmp_path, which):
    data = tmp_path / "data"
    write_processed_dataset(data, [([5, 6, 7, 8], [0, 0, 1, 1])], {"verifier": "tiny"})
    if which == "meta":
        target, call, error = data / "meta.json", lambda: ProcessedDataset(data), DatasetError
    elif which == "layers":
        (data / "hs").mkdir()
        target, call, error = data / "hs" / LAYERS_FILE, lambda: check_layer_record(data / "hs", AUX, L), HiddenStateError
        target.write_text(json.dumps({"layer_ids": [2, 4, 5, 8], "num_layers": 8}))
    else:
        save_vocab_mapping(build_vocab_mapping({3: 1}, 4, 10), data / "d2t.npy", data / "t2d.npy", source="t")
        target, error = data / "vocab.json", VocabError
        call = lambda: load_vocab_mapping(data / "d2t.npy", data / "t2d.npy")  # noqa: E731
    text = target.read_text()
    target.write_text(text[: len(text) // 2])  # what a failed in-place write used to leave
    before = snapshot(tmp_path)
    with pytest.raises(error) as exc:
        call()
    assert "does not parse" in one_line(str(exc.value)) or "unreadable" in str(exc.value)
    assert snapshot(tmp_path) == before


def test_data_path_that_is_a_file_says_so(tmp_path):
    f = tmp_path / "data.jsonl"
    f.write_text("{}\n")
    with pytest.raises(DatasetError, match="is a file, not a data directory") as exc:
        ProcessedDataset(f)
    one_line(str(exc.value))


def test_train_data_path_that_is_a_file_exits_2_in_one_line(tiny_llama, tmp_path):
    f = tmp_path / "data.jsonl"
    f.write_text("{}\n")
    proc = subprocess.run([sys.executable, "-m", "spectool", "train", "--verifier-name-or-path", str(tiny_llama),
                           "--data-path", str(f), "--save-path", str(tmp_path / "save")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "is a file, not a data directory" in lines[0], proc.stderr
    assert f.read_text() == "{}\n"


# ------------------------------------------------------------------ vLLM: only its own files


@pytest.fixture()
def shared(tmp_path):
    """A dataset whose vLLM directory IS its cache directory, hs_1 a valid cache file."""
    ds = make_dataset(tmp_path / "data", [10, 6, 8])
    cache = tmp_path / "data" / "hidden_states"
    cache.mkdir()
    write_file(cache_file(cache, 1), ds[1].input_ids)
    servers = []

    def start(mode: str, **kw) -> tuple[FakeVllm, VllmClient]:
        server = FakeVllm(cache, MODEL, mode, **kw)
        servers.append(server)
        return server, VllmClient(server.endpoint, MODEL, AUX, H, cache, request_timeout=0.3, max_retries=1, backoff=0.01)

    yield ds, cache, start
    for s in servers:
        s.close()


@pytest.mark.parametrize("on_generate", ["cache", "delete"])
def test_reply_naming_another_samples_file_touches_nothing(shared, on_generate):
    ds, cache, start = shared
    _, client = start("foreign", foreign=cache_file(cache, 1))
    before = snapshot(cache)
    src = HiddenStateSource(ds, cache, len(AUX), H, on_missing="generate", on_generate=on_generate, generator=client, warn=lambda m: None)
    assert src.load(0) is None
    assert src.accounting.skipped == {"generation failed (foreign file)": 1}
    assert snapshot(cache) == before  # hs_1 neither moved nor deleted
    read_hidden_states(cache_file(cache, 1), ds[1].input_ids, len(AUX) + 1, H)


def test_data_generate_with_a_foreign_reply_keeps_the_cache(shared):
    ds, cache, start = shared
    _, client = start("foreign", foreign=cache_file(cache, 1))
    before = snapshot(cache)
    report = generate_cache(ds, cache, client, len(AUX) + 1, H, concurrency=2)
    assert report.ok == 1 and report.failed == {"foreign file": 2}
    assert "nothing was moved or deleted" in one_line(report.examples["foreign file"])
    assert snapshot(cache) == before


def test_reply_naming_the_directory_itself_is_one_line(shared):
    ds, cache, start = shared
    _, client = start("directory")
    with pytest.raises(InvalidResponseError) as exc:
        client.generate(ds[0])
    assert exc.value.kind == "not a request file"
    one_line(str(exc.value))
    assert cache.is_dir() and cache_file(cache, 1).is_file()


def test_timed_out_requests_leave_no_files(tmp_path):
    ds = make_dataset(tmp_path / "data", [10])
    vllm_dir = tmp_path / "vllm_hs"
    server = FakeVllm(vllm_dir, MODEL, "timeout")  # replies after 1 s, then writes the file anyway
    try:
        client = VllmClient(server.endpoint, MODEL, AUX, H, vllm_dir, request_timeout=0.2, max_retries=1, backoff=0.01)
        with pytest.raises(TransientError):
            client.generate(ds[0])
        deadline = time.monotonic() + 5
        while len(list(vllm_dir.glob("*.safetensors"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list(vllm_dir.glob("*.safetensors"))) == 2  # the server did write both late
        client.reap()  # what the next request does first
        assert list(vllm_dir.iterdir()) == []
    finally:
        server.close()


def test_timed_out_files_from_dataloader_workers_are_removed_at_epoch_end(tmp_path):
    ds = make_dataset(tmp_path / "data", [10, 6])
    vllm_dir = tmp_path / "vllm_hs"
    server = FakeVllm(vllm_dir, MODEL, "timeout")
    try:
        client = VllmClient(server.endpoint, MODEL, AUX, H, vllm_dir, request_timeout=0.2, max_retries=0, backoff=0.01)
        src = HiddenStateSource(ds, tmp_path / "hs", len(AUX), H, on_missing="generate", generator=client, warn=lambda m: None)
        loader = PackedLoader(ds, range(2), lambda: src, 16, num_workers=1)
        batches = loader.iterate(0)
        next(batches, None)  # the worker's requests time out; the server writes their files later
        deadline = time.monotonic() + 5
        while len(list(vllm_dir.glob("*.safetensors"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list(vllm_dir.glob("*.safetensors"))) == 2
        list(batches)  # the epoch ends in the main process, whose client never saw the timeouts
        assert list(vllm_dir.iterdir()) == []
        assert loader.accounting.skipped == {"generation failed (timeout)": 2}
    finally:
        server.close()


# ------------------------------------------------------------------ vLLM: dead or hanging server


def test_dead_server_stops_after_consecutive_failures_in_one_line(tmp_path):
    ds = make_dataset(tmp_path / "data", [10, 6, 8, 9])
    server = FakeVllm(tmp_path / "vllm_hs", MODEL, "500")
    try:
        client = VllmClient(server.endpoint, MODEL, AUX, H, tmp_path / "vllm_hs", request_timeout=0.3, max_retries=1,
                            backoff=0.01, max_consecutive_failures=3)
        src = HiddenStateSource(ds, tmp_path / "hs", len(AUX), H, on_missing="generate", generator=client, warn=lambda m: None)
        assert src.load(0) is None  # two failed attempts: skipped, not yet dead
        with pytest.raises(VllmDeadError) as exc:
            src.load(1)
        message = one_line(str(exc.value))
        assert server.endpoint in message and "3 requests in a row" in message and "HTTP 500" in message
        assert server.requests == 3
    finally:
        server.close()


def test_dead_server_error_leaves_dataloader_workers_as_one_line(tmp_path):
    ds = make_dataset(tmp_path / "data", [10, 6, 8, 9])
    dead = "http://127.0.0.1:9/v1"
    client = VllmClient(dead, MODEL, AUX, H, tmp_path / "vllm_hs", request_timeout=0.3, max_retries=0, backoff=0.01,
                        max_consecutive_failures=2)
    src = HiddenStateSource(ds, tmp_path / "hs", len(AUX), H, on_missing="generate", generator=client, warn=lambda m: None)
    loader = PackedLoader(ds, range(4), lambda: src, 16, num_workers=1)
    with pytest.raises(SourceFailure) as exc:
        list(loader.iterate(0))
    assert dead in one_line(str(exc.value)) and "connection error" in str(exc.value)


def test_train_with_a_dead_server_saves_a_checkpoint_and_exits_1(tiny_llama, tmp_path):
    ds = make_dataset(tmp_path / "data", [20, 24, 18, 22, 26, 30])
    server = FakeVllm(tmp_path / "vllm_hs", str(tiny_llama), die_after=2)  # some steps train, then the server dies
    save = tmp_path / "save"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "spectool", "train", "--verifier-name-or-path", str(tiny_llama), "--data-path", str(ds.path),
             "--save-path", str(save), "--hidden-states-generator", "vllm", "--vllm-endpoint", server.endpoint,
             "--vllm-hidden-states-path", str(tmp_path / "vllm_hs"), "--max-retries", "0", "--request-timeout", "2",
             "--max-consecutive-failures", "2", "--num-workers", "0", "--total-seq-len", "64", "--epochs", "1"],
            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(SRC)},
        )
    finally:
        server.close()
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert proc.returncode == 1, proc.stderr
    assert errors == lines[-1:] and server.endpoint in errors[0] and "HTTP 500" in errors[0], proc.stderr
    assert re.search(r"checkpoint of step [1-9]\d* saved", errors[0]), errors[0]
    assert "Traceback" not in proc.stderr
    assert (save / "latest").exists()


# ------------------------------------------------------------------ cache checks and values


def _cfg(verifier: Path, data: Path, **data_over) -> RunConfig:
    cfg = RunConfig()
    cfg.model.verifier_name_or_path = str(verifier)
    cfg.data.data_path = str(data)
    for k, v in data_over.items():
        setattr(cfg.data, k, v)
    return cfg


def test_on_missing_raise_checks_every_file_before_training(tiny_llama, tmp_path):
    ds = make_dataset(tmp_path / "data", [12, 9, 15, 7])
    cache = tmp_path / "data" / "hidden_states"
    cache.mkdir()
    for i in (0, 1, 3):
        write_file(cache_file(cache, i), ds[i].input_ids)
    cut = cache_file(cache, 3).read_bytes()
    cache_file(cache, 3).write_bytes(cut[: len(cut) - 100])
    before = snapshot(tmp_path)
    with pytest.raises(HiddenStateError) as exc:
        build_source(_cfg(tiny_llama, tmp_path / "data", on_missing="raise"), ds)
    message = one_line(str(exc.value))
    assert "hs_2.safetensors does not exist" in message and "1 more" in message and "spectool data generate" in message
    assert snapshot(tmp_path) == before


def test_directory_in_place_of_a_cache_file_is_one_line(tiny_llama, tmp_path):
    ds = make_dataset(tmp_path / "data", [12, 9, 15, 7])
    cache = tmp_path / "data" / "hidden_states"
    (cache / "hs_3.safetensors").mkdir(parents=True)
    cfg = _cfg(tiny_llama, tmp_path / "data", on_missing="generate", on_generate="cache", hidden_states_generator="local")
    with pytest.raises(HiddenStateError) as exc:
        build_source(cfg, ds)
    assert "hs_3.safetensors is a directory, not a hidden-state file" in one_line(str(exc.value))
    assert (cache / "hs_3.safetensors").is_dir()


def test_data_generate_with_a_directory_in_place_of_a_cache_file_is_one_line(tiny_llama, tmp_path):
    from typer.testing import CliRunner

    from spectool.cli.app import app

    make_dataset(tmp_path / "data", [12, 9, 15, 7])
    (tmp_path / "data" / "hidden_states" / "hs_3.safetensors").mkdir(parents=True)
    r = CliRunner().invoke(app, ["data", "generate", "--verifier-name-or-path", str(tiny_llama), "--data-path", str(tmp_path / "data"),
                                 "--generator", "local"])
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 2 and len(lines) == 1 and "hs_3.safetensors is a directory" in lines[0], r.output
    assert (tmp_path / "data" / "hidden_states" / "hs_3.safetensors").is_dir()


def test_implausible_finite_values_are_refused_and_accounted(tmp_path):
    ds = make_dataset(tmp_path / "data", [10, 6])
    cache = tmp_path / "hs"
    cache.mkdir()
    hidden = fake_hidden(ds[0].input_ids)
    hidden[3, 1, 7] = 1e30
    write_file(cache_file(cache, 0), ds[0].input_ids, hidden)
    write_file(cache_file(cache, 1), ds[1].input_ids)
    with pytest.raises(InvalidHiddenStates) as exc:
        read_hidden_states(cache_file(cache, 0), ds[0].input_ids, len(AUX) + 1, H)
    assert exc.value.kind == "implausible values" and "1e+30" in one_line(str(exc.value))
    src = HiddenStateSource(ds, cache, len(AUX), H, on_missing="skip")
    assert src.load(0) is None and src.load(1) is not None
    assert src.accounting.skipped == {"invalid cache file (implausible values)": 1}
    assert "1 skipped (invalid cache file (implausible values): 1)" in src.accounting.summary()


def test_accounting_summary_and_metrics():
    acc = Accounting()
    for status, reason in [("ok", None), ("ok", None), ("generated", None), ("skipped", "missing"), ("skipped", "missing")]:
        acc.add(status, reason)
    assert acc.summary() == "hidden states: 2 cached, 1 generated, 2 skipped (missing: 2)"
    assert acc.metrics() == {"hidden_states/cached": 2.0, "hidden_states/generated": 1.0, "hidden_states/skipped": 2.0,
                             "hidden_states/skipped/missing": 2.0}


def test_loader_keeps_run_and_epoch_accounting(tmp_path):
    ds = make_dataset(tmp_path / "data", [10, 6, 8])
    cache = tmp_path / "hs"
    cache.mkdir()
    write_file(cache_file(cache, 0), ds[0].input_ids)
    src = HiddenStateSource(ds, cache, len(AUX), H, on_missing="skip")
    loader = PackedLoader(ds, range(3), lambda: src, 32)
    for epoch in (0, 1):
        list(loader.iterate(epoch))
        assert loader.epoch_accounting.as_dict()["ok"] == 1 and loader.epoch_accounting.as_dict()["skipped"] == {"missing": 2}
    assert loader.accounting.summary() == "hidden states: 2 cached, 0 generated, 4 skipped (missing: 4)"


def test_local_fallback_notice_is_a_warning_said_once(tiny_llama, tmp_path, caplog):
    ds = make_dataset(tmp_path / "data", [12, 9])
    cfg = _cfg(tiny_llama, tmp_path / "data", vllm_endpoint="http://127.0.0.1:9/v1")
    with caplog.at_level(logging.WARNING):
        src = build_source(cfg, ds)
    notes = [r for r in caplog.records if "no vLLM endpoint answers" in r.getMessage()]
    assert src.generator.name == "local" and len(notes) == 1 and notes[0].levelno == logging.WARNING
    assert "using the verifier in-process" in notes[0].getMessage()


# ------------------------------------------------------------------ layer ids of the server


def test_client_refuses_a_server_extracting_other_layers(tmp_path):
    vllm_dir = tmp_path / "vllm_hs"
    server = FakeVllm(vllm_dir, MODEL)
    try:
        write_server_record(vllm_dir, [1, 4, 5, 8], MODEL)
        client = VllmClient(server.endpoint, MODEL, AUX, H, vllm_dir, num_layers=L)
        with pytest.raises(HiddenStateError) as exc:
            client.handshake()
        message = one_line(str(exc.value))
        assert "[1, 4, 5, 8]" in message and "[2, 4, 5, 8]" in message and "--target-layer-ids 2 4 5" in message
        assert server.requests == 0
    finally:
        server.close()


def test_cache_record_is_stamped_with_the_servers_layers(tiny_llama, tmp_path):
    from spectool.verifier import load_verifier_info

    vllm_dir, cache = tmp_path / "vllm_hs", tmp_path / "cache"
    server = FakeVllm(vllm_dir, str(tiny_llama))
    try:
        write_server_record(vllm_dir, [2, 4, 5, 8], str(tiny_llama))
        info = load_verifier_info(str(tiny_llama))
        gen = make_generator("vllm", str(tiny_llama), AUX, info, endpoint=server.endpoint, vllm_hidden_states_path=vllm_dir)
        assert gen.extracted_layer_ids == [2, 4, 5, 8]
        stamp_layer_record(cache, gen, AUX, info, str(tiny_llama))
        assert json.loads((cache / LAYERS_FILE).read_text())["layer_ids"] == [2, 4, 5, 8]
    finally:
        server.close()


def test_vllm_launch_records_the_layers_it_extracts(tmp_path, monkeypatch):
    import spectool.vllm_launch as vl

    hs = tmp_path / "hs"
    command = vl.build_extraction_command("some/model", hidden_states_path=hs, target_layer_ids=[1, 3], device="cpu",
                                          vllm_python="/v/bin/python", num_hidden_layers=6)
    execs = []
    monkeypatch.setattr(vl.os, "execvpe", lambda *a: execs.append(a))
    vl.exec_command(command)
    assert execs and json.loads((hs / SERVER_LAYERS_FILE).read_text()) == {"layer_ids": [1, 3, 6], "model": "some/model"}


# ------------------------------------------------------------------ derived vocab files


def test_re_prepared_dataset_does_not_reuse_an_old_mapping(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    torch.save({i: 100 - i for i in range(50)}, data / "token_freq.pt")  # favours low ids
    first = derived_vocab_mapping(data, data / "token_freq.pt", 10, 100)
    assert first.target_ids.tolist() == list(range(10))
    old = snapshot(data)
    torch.save({i: i for i in range(50)}, data / "token_freq.pt")  # re-prepared: favours high ids
    second = derived_vocab_mapping(data, data / "token_freq.pt", 10, 100)
    assert second.target_ids.tolist() == list(range(40, 50))
    assert np.array_equal(second.d2t, build_vocab_mapping({i: i for i in range(50)}, 10, 100).d2t)
    kept = {k: v for k, v in snapshot(data).items() if k != "token_freq.pt"}
    assert all(kept[k] == v for k, v in old.items() if k != "token_freq.pt")  # old mapping untouched, not reused
    assert len(list(data.glob("d2t-10-*.npy"))) == 2


def test_train_reports_hidden_state_accounting_per_epoch_and_at_the_end(tiny_llama, tmp_path):
    from spectool import train
    from spectool.data.hidden_states.layers import write_layer_record
    from spectool.engine.progress import NullProgress

    ds = make_dataset(tmp_path / "data", [20, 24, 18, 22, 26, 30])
    cache = tmp_path / "data" / "hidden_states"
    write_layer_record(cache, AUX, L, H, str(tiny_llama))
    for i in range(5):  # sample 5 has none
        write_file(cache_file(cache, i), ds[i].input_ids)

    class Recorder(NullProgress):
        def __init__(self):
            self.messages: list[str] = []

        def message(self, text: str) -> None:
            self.messages.append(text)

    cfg = _cfg(tiny_llama, tmp_path / "data", on_missing="skip", total_seq_len=64, val_ratio=0.0)
    cfg.training.save_path = str(tmp_path / "save")
    cfg.training.log_dir = str(tmp_path / "logs")
    cfg.training.epochs = 2
    cfg.dataloader.num_workers = 0
    cfg.training.logger, cfg.training.run_name = "tensorboard", "tb"
    progress = Recorder()
    result = train(cfg, progress)
    assert result.hidden_states["ok"] == 10 and result.hidden_states["skipped"] == {"missing": 2}
    assert "hidden states: 10 cached, 0 generated, 2 skipped (missing: 2)" in progress.messages
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "logs" / "tb"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("hidden_states/cached")] == [5.0, 5.0]  # one value per epoch
    assert [e.value for e in acc.Scalars("hidden_states/skipped/missing")] == [1.0, 1.0]


def test_request_ids_do_not_claim_each_others_files():
    from spectool.data.vllm_client import _names_request

    assert _names_request("cmpl-spectool-ab-7-1-0-1f2e3d4c.safetensors", "spectool-ab-7-1")
    assert not _names_request("cmpl-spectool-ab-7-10-0-1f2e3d4c.safetensors", "spectool-ab-7-1")
    assert not _names_request("hs_3.safetensors", "hs_3")
