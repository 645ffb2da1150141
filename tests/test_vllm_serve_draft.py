"""End to end: drafts written by `spectool init` are served by vLLM as speculative models.

vLLM (CPU build, offline API) runs the tiny verifier with the untrained draft as
speculative model. Loading proves the config and tensor names/shapes are what vLLM
expects; ``vllm:spec_decode_num_drafts`` > 0 proves the draft actually proposed tokens.
(Acceptance of an untrained draft is ~0, so it is not asserted here.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vllm_server import run_offline_generate

pytestmark = pytest.mark.slow

K = 3  # speculative tokens


@pytest.fixture(scope="module")
def vllm_verifier(tiny_llama: Path) -> Path:
    """The shared tiny Llama verifier (head_dim 32, which vLLM's CPU attention accepts)."""
    return tiny_llama


def _spectool_init(verifier: Path, save_path: Path, speculator_type: str, *extra: str) -> Path:
    cmd = [sys.executable, "-m", "spectool", "init", "--verifier-name-or-path", str(verifier)]
    cmd += ["--speculator-type", speculator_type, "--save-path", str(save_path), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"spectool init failed:\n{proc.stdout}\n{proc.stderr}"
    assert (save_path / "config.json").is_file() and (save_path / "model.safetensors").is_file()
    return save_path


@pytest.mark.parametrize(
    ("speculator_type", "init_args"),
    [("eagle3", ()), ("dflash", ("--block-size", str(K + 1)))],
)
def test_init_draft_is_served(vllm_verifier, tmp_path, speculator_type, init_args):
    draft = _spectool_init(vllm_verifier, tmp_path / "draft", speculator_type, *init_args)
    prompts = [[5, 6, 7, 8, 9, 10], [20, 30, 40, 50, 60, 70, 80], list(range(100, 140))]
    result = run_offline_generate(
        vllm_verifier,
        prompts,
        tmp_path / "vllm",
        max_tokens=12,
        llm_kwargs={
            "max_model_len": 512,
            "dtype": "bfloat16",
            "speculative_config": {"model": str(draft), "method": speculator_type, "num_speculative_tokens": K},
        },
    )
    metrics = result["metrics"]
    assert [len(o) for o in result["outputs"]] == [12] * len(prompts)
    assert metrics.get("vllm:spec_decode_num_drafts", 0) > 0, {k: v for k, v in metrics.items() if "spec" in k}
    assert metrics.get("vllm:spec_decode_num_draft_tokens", 0) >= K * metrics["vllm:spec_decode_num_drafts"]
    assert "vllm:spec_decode_num_accepted_tokens" in metrics
