"""The vLLM client against a fake server on 127.0.0.1: retries, refusals, the lock protocol."""

from __future__ import annotations

import time

import pytest
from _hs_util import AUX, H, FakeVllm, make_dataset

from spectool.data.hidden_states.cache import HiddenStateSource
from spectool.data.hidden_states.files import cache_file, read_hidden_states
from spectool.data.vllm_client import InvalidResponseError, TransientError, VllmClient, VllmUnreachable

MODEL = "tiny/verifier"


@pytest.fixture()
def env(tmp_path):
    ds = make_dataset(tmp_path / "data", [10, 6, 8])
    servers = []

    def start(mode="good", **kw):
        s = FakeVllm(tmp_path / "vllm_hs", MODEL, mode, **kw)
        servers.append(s)
        client = VllmClient(s.endpoint, MODEL, AUX, H, tmp_path / "vllm_hs", request_timeout=0.3, max_retries=2, backoff=0.01)
        return s, client

    yield ds, tmp_path, start
    for s in servers:
        s.close()


def test_good_reply_waits_for_the_lock_and_validates(env):
    ds, tmp, start = env
    server, client = start(lock_hold=0.4)
    t0 = time.monotonic()
    gen = client.generate(ds[0])
    assert time.monotonic() - t0 >= 0.35  # waited for the writer's flock
    assert gen.path.parent == tmp / "vllm_hs" and not gen.path.with_name(gen.path.name + ".lock").exists()
    assert gen.hidden_states.shape == (10, 4, H)
    assert server.requests == 1


def test_handshake_names_served_model_name(env):
    ds, tmp, start = env
    server, _ = start()
    client = VllmClient(server.endpoint, "other/model", AUX, H, tmp / "vllm_hs")
    with pytest.raises(InvalidResponseError, match="--served-model-name other/model"):
        client.handshake()
    assert client.handshake is not None
    dead = VllmClient("http://127.0.0.1:9/v1", MODEL, AUX, H)
    with pytest.raises(VllmUnreachable):
        dead.handshake(timeout=0.5)


@pytest.mark.parametrize("mode,error,kind,attempts", [
    ("timeout", TransientError, "timeout", 3),
    ("500", TransientError, "server error", 3),
    ("400", InvalidResponseError, "rejected request", 1),
    ("outside", InvalidResponseError, "path outside directory", 1),
    ("echo", InvalidResponseError, "token echo mismatch", 1),
    ("nan", InvalidResponseError, "bad file (non-finite values)", 1),
    ("layers", InvalidResponseError, "bad file (wrong shape)", 1),
])
def test_failures_retry_only_when_transient(env, mode, error, kind, attempts):
    ds, tmp, start = env
    server, client = start(mode)
    with pytest.raises(error) as exc:
        client.generate(ds[1])
    assert exc.value.kind == kind
    assert server.requests == attempts  # max_retries=2 -> 3 attempts for transient errors only
    leftovers = list((tmp / "vllm_hs").glob("*.safetensors"))
    assert leftovers == []  # bad files are deleted, nothing is kept to train on


def test_connection_refused_is_retried(env):
    ds, tmp, _ = env
    client = VllmClient("http://127.0.0.1:9/v1", MODEL, AUX, H, tmp / "vllm_hs", request_timeout=0.3, max_retries=2, backoff=0.01)
    with pytest.raises(TransientError) as exc:
        client.generate(ds[0])
    assert exc.value.kind == "connection error"


@pytest.mark.parametrize("on_generate", ["cache", "delete"])
def test_source_moves_or_deletes_vllm_files(env, on_generate):
    ds, tmp, start = env
    server, client = start()
    cache = tmp / "data" / "hidden_states"
    src = HiddenStateSource(ds, cache, len(AUX), H, on_missing="generate", on_generate=on_generate, generator=client)
    for i in range(3):
        assert src.load(i)["hidden_states"].shape == (len(ds[i].input_ids), 3 * H)
    assert list((tmp / "vllm_hs").iterdir()) == []
    if on_generate == "cache":
        for i in range(3):
            read_hidden_states(cache_file(cache, i), ds[i].input_ids, 4, H)
        src.load(0)
        assert server.requests == 3 and src.accounting.ok == 1
    else:
        assert not cache.exists() or not list(cache.glob("hs_*"))
    assert src.accounting.generated == 3


def test_source_skips_on_server_failure_with_reason(env):
    ds, tmp, start = env
    _, client = start("echo")
    src = HiddenStateSource(ds, tmp / "hs", len(AUX), H, on_missing="generate", generator=client, warn=lambda m: None)
    assert src.load(0) is None
    assert src.accounting.skipped == {"generation failed (token echo mismatch)": 1}
