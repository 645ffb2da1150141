"""End to end: `spectool vllm launch` starts a real vLLM CPU server that writes hidden states.

Checks the files against HF transformers run on the same verifier: aux id k equals
``output_hidden_states[k]`` and id L equals the last decoder layer's output before the
final norm, to bf16 precision; plus the file protocol (path, .lock, token_ids, dtype).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from vllm_server import read_hidden_states_file, spectool_extraction_server

pytestmark = pytest.mark.slow

AUX_IDS = [2, 4, 5]


@pytest.fixture(scope="module")
def vllm_verifier(tiny_llama: Path) -> Path:
    """The shared tiny Llama verifier (head_dim 32, which vLLM's CPU attention accepts)."""
    return tiny_llama


def _hf_reference(model_dir: Path, ids: list[int], layer_ids: list[int]):
    """HF hidden states at vLLM's capture ids: [seq, len(layer_ids), H] (bf16 -> fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    num_layers = model.config.num_hidden_layers
    captured = {}
    hook = model.model.norm.register_forward_pre_hook(lambda _m, args: captured.__setitem__("pre_norm", args[0]))
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_hidden_states=True)
    finally:
        hook.remove()
    layers = [captured["pre_norm"][0] if k == num_layers else out.hidden_states[k][0] for k in layer_ids]
    return torch.stack(layers, dim=1).float(), out.hidden_states[num_layers][0].float()


def test_extraction_matches_hf(vllm_verifier, tmp_path):
    import torch

    hs_dir = tmp_path / "hidden_states"
    vocab = 300  # below the tokenizer length; any id < vocab_size is a valid prompt token
    rng = random.Random(0)
    prompts = [[rng.randrange(3, vocab) for _ in range(n)] for n in (37, 5, 130)]
    prompts.append(list(prompts[0]))  # a repeat: served from the prefix cache, file must be the same
    layer_ids = AUX_IDS + [8]

    with spectool_extraction_server(
        vllm_verifier,
        hs_dir,
        tmp_path / "vllm.log",
        target_layer_ids=AUX_IDS,
        vllm_args=["--enforce-eager", "--max-model-len", "512", "--dtype", "bfloat16"],
    ) as server:
        model = server.served_model()
        files = []
        for ids in prompts:
            reply = server.post("/v1/completions", {"model": model, "prompt": ids, "max_tokens": 1, "return_token_ids": True})
            assert reply["choices"][0]["prompt_token_ids"] == ids
            path = Path(reply["kv_transfer_params"]["hidden_states_path"])
            assert path.parent == hs_dir.absolute(), path
            data = read_hidden_states_file(path)
            assert not os.path.exists(str(path) + ".lock")
            files.append(data)

    for ids, data in zip(prompts, files):
        hidden, tokens = data["hidden_states"], data["token_ids"]
        assert set(data) == {"hidden_states", "token_ids"}
        assert tokens.dtype == torch.int64 and tokens.tolist() == ids
        assert hidden.dtype == torch.bfloat16
        assert hidden.shape == (len(ids), len(layer_ids), 64)  # tiny_llama: hidden 64
        assert torch.isfinite(hidden).all()
        ref, post_norm = _hf_reference(vllm_verifier, ids, layer_ids)
        got = hidden.float()
        for slot, k in enumerate(layer_ids):
            scale = ref[:, slot].abs().max().item()
            err = (got[:, slot] - ref[:, slot]).abs().max().item()
            # bf16 has 8 mantissa bits; kernels differ (fused add+norm), so allow a few ulps.
            assert err <= 0.03 * scale, f"layer id {k}: max |vLLM - HF| = {err:.4g} (scale {scale:.4g})"
            # and the check is sharp: the neighbouring HF layer would not pass
            if slot + 1 < len(layer_ids):
                other = (got[:, slot] - ref[:, slot + 1]).abs().max().item()
                assert other > 0.03 * scale, f"layer id {k} indistinguishable from {layer_ids[slot + 1]}"

        # the last slot is the pre-norm output: HF's post-norm hidden_states[L] must not match
        assert (got[:, -1] - post_norm).abs().max().item() > 0.1 * post_norm.abs().max().item()

    # the prefix-cached repeat wrote the same states
    assert torch.equal(files[0]["hidden_states"], files[-1]["hidden_states"])
