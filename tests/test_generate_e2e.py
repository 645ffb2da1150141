"""Slow: the real vLLM CPU server (``spectool vllm launch``) fills the hidden-state cache.

Checks, on one server (start-up is the expensive part): ``data generate`` files equal the
local generator's output to bf16 precision; online loading with on_generate cache, then
delete; and a server killed mid-run is survived with an exact account.
"""

from __future__ import annotations

from pathlib import Path

import threading
import time

import numpy as np
import pytest
import torch
from _hs_util import make_dataset
from typer.testing import CliRunner
from vllm_server import spectool_extraction_server

from spectool.cli.app import app
from spectool.data.generate import generate_cache
from spectool.data.hidden_states.cache import HiddenStateSource
from spectool.data.hidden_states.files import cache_file, read_hidden_states
from spectool.data.local_generator import LocalGenerator
from spectool.data.vllm_client import VllmClient

pytestmark = pytest.mark.slow

AUX = [2, 4, 5]
H = 64  # the shared tiny_llama fixture


@pytest.fixture(scope="module")
def vllm_verifier(tiny_llama: Path) -> Path:
    """The shared tiny Llama verifier (head_dim 32, which vLLM's CPU attention accepts)."""
    return tiny_llama


def test_generate_online_and_server_death(vllm_verifier, tmp_path):
    model = str(vllm_verifier)
    ds = make_dataset(tmp_path / "data", np.random.default_rng(0).integers(20, 120, size=12).tolist())
    big = make_dataset(tmp_path / "big", np.random.default_rng(1).integers(200, 400, size=300).tolist(), seed=1)
    vdir = tmp_path / "vllm_hs"
    cache = tmp_path / "data" / "hidden_states"
    with spectool_extraction_server(model, vdir, tmp_path / "vllm.log", target_layer_ids=AUX) as server:
        endpoint = server.url + "/v1"
        # 1. offline generation equals the local generator (bf16 compute in vLLM, fp32 locally)
        r = CliRunner().invoke(app, ["data", "generate", "--verifier-name-or-path", model, "--data-path", str(tmp_path / "data"),
                                     "--generator", "vllm", "--vllm-endpoint", endpoint, "--vllm-hidden-states-path", str(vdir),
                                     "--concurrency", "4"])
        assert r.exit_code == 0, r.output
        local = LocalGenerator(model, AUX)
        for i in range(len(ds)):
            got = read_hidden_states(cache_file(cache, i), ds[i].input_ids, 4, H).float()
            ref = local.generate_batch([ds[i].input_ids])[0].float()
            scale = ref.abs().amax(dim=(0, 2), keepdim=True)  # per layer slot
            torch.testing.assert_close(got / scale, ref / scale, atol=3e-2, rtol=0)
        assert list(vdir.glob("*.safetensors")) == []

        # 2. online: on_generate cache moves files into the cache, delete leaves nothing
        client = VllmClient(endpoint, model, AUX, H, vdir, request_timeout=60, max_retries=1, backoff=0.1)
        client.handshake()
        for policy in ("cache", "delete"):
            c = tmp_path / f"online_{policy}"
            src = HiddenStateSource(ds, c, len(AUX), H, on_missing="generate", on_generate=policy, generator=client)
            for i in range(4):
                assert src.load(i) is not None
            assert src.accounting.generated == 4 and list(vdir.glob("*.safetensors")) == []
            assert len(list(c.glob("hs_*.safetensors"))) == (4 if policy == "cache" else 0)

        # 3. kill the server mid-run: every written file valid, account exact
        big_cache = tmp_path / "big" / "hidden_states"
        client = VllmClient(endpoint, model, AUX, H, vdir, request_timeout=10, max_retries=1, backoff=0.1)
        result = {}
        t = threading.Thread(target=lambda: result.update(r=generate_cache(big, big_cache, client, 4, H, concurrency=4)))
        t.start()
        deadline = time.monotonic() + 120
        while len(list(big_cache.glob("hs_*.safetensors"))) < 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        server.stop()
        t.join(timeout=300)
    report = result["r"]
    files = sorted(big_cache.glob("hs_*.safetensors"))
    assert report.generated == len(files) >= 10
    assert report.generated + sum(report.failed.values()) + report.aborted == len(big)
    # A reply that arrived just before the kill can name a file the dying server never wrote, or
    # (a request the shutting-down engine aborted) carry no hidden-states path at all (seen once in
    # 2 CI runs). After --max-consecutive-failures failed requests in a row the client declares the
    # server dead.
    dying_server = {"connection error", "timeout", "server error", "file not found", "no hidden states path", "server failed"}
    assert report.failed and set(report.failed) <= dying_server
    for f in files:
        i = int(f.stem.split("_")[1])
        read_hidden_states(f, big[i].input_ids, 4, H)
