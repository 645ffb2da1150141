"""`spectool data generate`: resumable cache filling, accounting, layer-id record."""

from __future__ import annotations

import json

import torch
from _hs_util import AUX, H, FakeVllm, make_dataset
from typer.testing import CliRunner

from spectool.cli.app import app
from spectool.data.hidden_states.files import cache_file, read_hidden_states
from spectool.data.local_generator import LocalGenerator


def _run(*args):
    return CliRunner().invoke(app, ["data", "generate", *map(str, args)])


def test_local_generation_is_resumable_and_regenerates_bad_files(tiny_llama, tmp_path):
    ds = make_dataset(tmp_path / "data", [12, 30, 7, 19, 25])
    cache = tmp_path / "data" / "hidden_states"
    base = ("--verifier-name-or-path", tiny_llama, "--data-path", tmp_path / "data", "--generator", "local")
    r = _run(*base)
    assert r.exit_code == 0, r.output
    assert json.loads((cache / "layers.json").read_text())["layer_ids"] == [*AUX, 8]
    ref = LocalGenerator(str(tiny_llama), AUX)
    for i in range(len(ds)):
        got = read_hidden_states(cache_file(cache, i), ds[i].input_ids, 4, H)
        torch.testing.assert_close(got, ref.generate_batch([ds[i].input_ids])[0])  # batched == single (bf16)
    cache_file(cache, 1).write_bytes(b"garbage")
    cache_file(cache, 3).unlink()
    r = _run(*base)
    assert r.exit_code == 0, r.output
    import re

    assert re.search(r"valid \(kept\)\s*│\s*3\s*│", r.output) and re.search(r"generated\s*│\s*2\s*│", r.output), r.output
    assert "unreadable file" in r.output
    read_hidden_states(cache_file(cache, 1), ds[1].input_ids, 4, H)
    r = _run(*base, "--target-layer-ids", "1,3,5")
    assert r.exit_code == 2 and "extracted with layer ids [2, 4, 5, 8]" in r.output


def test_vllm_generation_accounts_for_failures(tiny_llama, tmp_path):
    make_dataset(tmp_path / "data", [10, 11, 12, 13])
    server = FakeVllm(tmp_path / "vllm_hs", str(tiny_llama), "good")
    try:
        base = ("--verifier-name-or-path", tiny_llama, "--data-path", tmp_path / "data", "--generator", "vllm",
                "--vllm-endpoint", server.endpoint, "--vllm-hidden-states-path", tmp_path / "vllm_hs", "--concurrency", 2)
        r = _run(*base, "--max-samples", 2)
        assert r.exit_code == 0, r.output
        assert all(cache_file(tmp_path / "data" / "hidden_states", i).exists() for i in range(2))
        server.mode = "echo"
        r = _run(*base, "--max-retries", 0)
        assert r.exit_code == 1
        assert "token echo mismatch" in r.output and "2 samples have no hidden states" in r.output
        assert list((tmp_path / "vllm_hs").glob("*.safetensors")) == []
    finally:
        server.close()
