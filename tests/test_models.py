"""Draft models: forward shapes, attention backends agree, checkpoint format exactly as specified."""

from __future__ import annotations

import json

import pytest
import torch

from spectool.attention import AttentionMask, document_causal
from spectool.config import RunConfig
from spectool.models import expected_tensors, load_draft, save_draft
from spectool.models.build import initialise_draft


def make_batch(T: int, A: int, H: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    doc = torch.tensor([0] * (T // 2) + [1] * (T - T // 2 - 3) + [-1] * 3)
    pos = torch.cat([torch.arange(T // 2), torch.arange(T - T // 2 - 3), torch.zeros(3, dtype=torch.long)])
    mask = (torch.rand(T, generator=g) > 0.3).long() * (doc >= 0)
    return {
        "input_ids": torch.randint(0, vocab, (1, T), generator=g),
        "hidden_states": torch.randn(1, T, A * H, generator=g),
        "verifier_last_hidden_states": torch.randn(1, T, H, generator=g),
        "loss_mask": mask[None],
        "position_ids": pos[None],
        "document_ids": doc[None],
    }


def draft(verifier, **options):
    return initialise_draft(RunConfig.from_flat({"verifier_name_or_path": str(verifier), **options}))


EAGLE3_SPEC = {  # speculators-formats.md 5.4, tiny llama verifier: H=64, V=448, A=3, heads 4/2, hd 16, I=128
    "embed_tokens.weight": (448, 64), "fc.weight": (64, 192),
    "layers.0.input_layernorm.weight": (64,), "layers.0.hidden_norm.weight": (64,),
    "layers.0.self_attn.q_proj.weight": (64, 128), "layers.0.self_attn.k_proj.weight": (32, 128),
    "layers.0.self_attn.v_proj.weight": (32, 128), "layers.0.self_attn.o_proj.weight": (64, 64),
    "layers.0.post_attention_layernorm.weight": (64,), "layers.0.mlp.gate_proj.weight": (128, 64),
    "layers.0.mlp.up_proj.weight": (128, 64), "layers.0.mlp.down_proj.weight": (64, 128),
    "norm.weight": (64,), "lm_head.weight": (96, 64), "d2t": (96,), "t2d": (448,),
}


def test_eagle3_tensor_names_and_shapes_match_spec(tiny_llama, tmp_path):
    torch.save({i: 1000 - i for i in range(200)}, tmp_path / "tf.pt")
    base = dict(draft_vocab_size=96, token_freq_path=str(tmp_path / "tf.pt"), data_path=str(tmp_path))
    got = {k: v[0] for k, v in expected_tensors(draft(tiny_llama, **base).config).items()}
    assert got == EAGLE3_SPEC
    with_input_norm = expected_tensors(draft(tiny_llama, norm_before_fc=True, **base).config)
    assert set(with_input_norm) - set(EAGLE3_SPEC) == {"input_norm.weight"} and with_input_norm["input_norm.weight"][0] == (192,)
    with_fc_norm = expected_tensors(draft(tiny_llama, fc_norm=True, **base).config)
    assert set(with_fc_norm) - set(EAGLE3_SPEC) == {"fc_norm.0.weight", "fc_norm.1.weight", "fc_norm.2.weight"}
    qwen = expected_tensors(draft(tiny_llama, draft_arch="qwen3", **base).config)
    assert set(qwen) - set(EAGLE3_SPEC) == {"layers.0.self_attn.q_norm.weight", "layers.0.self_attn.k_norm.weight"}
    full_vocab = expected_tensors(draft(tiny_llama).config)
    assert "d2t" not in full_vocab and "t2d" not in full_vocab and full_vocab["lm_head.weight"][0] == (448, 64)
    two_layers = expected_tensors(draft(tiny_llama, num_layers=2).config)
    assert two_layers["layers.1.self_attn.q_proj.weight"][0] == (64, 64) and "layers.1.hidden_norm.weight" not in two_layers


def test_dflash_tensor_names_match_spec(tiny_qwen3):
    spec = draft(tiny_qwen3, speculator_type="dflash", num_layers=2, block_size=4).config
    names = set(expected_tensors(spec))
    layer = {"input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
             "self_attn.o_proj", "self_attn.q_norm", "self_attn.k_norm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
    want = {"embed_tokens.weight", "fc.weight", "hidden_norm.weight", "norm.weight", "lm_head.weight"}
    want |= {f"layers.{i}.{n}.weight" for i in range(2) for n in layer}
    assert names == want  # no mask_hidden, no verifier_* tensors


EAGLE3_KEYS = {"architectures", "speculators_model_type", "speculators_version", "transformers_version", "dtype", "torch_dtype",
               "draft_vocab_size", "target_hidden_size", "eagle_aux_hidden_state_layer_ids", "norm_before_residual",
               "norm_before_fc", "fc_norm", "norm_output", "embed_requires_grad", "transformer_layer_config", "speculators_config"}
DFLASH_KEYS = {"architectures", "speculators_model_type", "speculators_version", "transformers_version", "dtype", "torch_dtype",
               "draft_vocab_size", "target_hidden_size", "block_size", "aux_hidden_state_layer_ids", "mask_token_id",
               "sliding_window_non_causal", "sample_from_anchor", "transformer_layer_config", "speculators_config"}


@pytest.mark.parametrize("kind", ["eagle3", "dflash"])
def test_config_json_fields_match_spec(tiny_llama, tmp_path, kind):
    model = draft(tiny_llama, speculator_type=kind, block_size=6, ttt_steps=4)
    save_draft(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert set(cfg) == (EAGLE3_KEYS if kind == "eagle3" else DFLASH_KEYS)
    assert cfg["speculators_config"]["proposal_methods"] == [
        {"proposal_type": "greedy", "speculative_tokens": 4 if kind == "eagle3" else 5, "verifier_accept_k": 1, "accept_tolerance": 0.0}
    ]
    assert cfg["speculators_config"]["verifier"] == {"name_or_path": str(tiny_llama), "architectures": ["LlamaForCausalLM"]}
    layer = cfg["transformer_layer_config"]
    assert layer["model_type"] == ("llama" if kind == "eagle3" else "qwen3")
    assert layer["vocab_size"] == 448 and layer["hidden_size"] == 64 and layer["tie_word_embeddings"] is False
    assert cfg["dtype"] == cfg["torch_dtype"] == "bfloat16" and cfg["target_hidden_size"] is None


@pytest.mark.parametrize("kind", ["eagle3", "dflash"])
def test_save_load_round_trip_is_bit_exact(tiny_qwen3, tmp_path, kind):
    torch.save({i: i for i in range(300)}, tmp_path / "tf.pt")
    model = draft(tiny_qwen3, speculator_type=kind, draft_vocab_size=64, token_freq_path=str(tmp_path / "tf.pt"), data_path=str(tmp_path))
    save_draft(model, tmp_path / "a")
    loaded = load_draft(tmp_path / "a")
    save_draft(loaded, tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "a" / "model.safetensors"))
    assert saved["d2t"].dtype == torch.int64 and saved["t2d"].dtype == torch.bool
    assert all(t.dtype == torch.bfloat16 for n, t in saved.items() if n not in ("d2t", "t2d"))
    for name, tensor in model.state_dict().items():
        want = tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
        assert torch.equal(saved[name], want), name


def test_save_interrupted_mid_write_leaves_previous_draft_whole(tiny_llama, tmp_path, monkeypatch):
    import safetensors.torch

    model = draft(tiny_llama)
    save_draft(model, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def dies_half_way(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", dies_half_way)
    with pytest.raises(OSError):
        save_draft(draft(tiny_llama, seed=1), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp file left either
    load_draft(tmp_path)


def test_verifier_weights_installed_with_tied_and_untied_heads(tiny_llama, tiny_qwen3):
    from spectool.verifier import load_verifier_info, read_verifier_tensors

    for verifier in (tiny_llama, tiny_qwen3):
        model = draft(verifier)
        tensors = read_verifier_tensors(load_verifier_info(str(verifier)))
        assert torch.equal(model.embed_tokens.weight, tensors["embed"].float())
        assert torch.equal(model.lm_head.weight, tensors["lm_head"].float())
        assert not model.lm_head.weight.requires_grad and not model.embed_tokens.weight.requires_grad
    tied = read_verifier_tensors(load_verifier_info(str(tiny_llama)))
    assert torch.equal(tied["lm_head"], tied["embed"])
    untied = read_verifier_tensors(load_verifier_info(str(tiny_qwen3)))
    assert not torch.equal(untied["lm_head"], untied["embed"])


@pytest.mark.parametrize("kind", ["eagle3", "dflash"])
def test_forward_shapes_and_backends_agree(tiny_llama, kind):
    model = draft(tiny_llama, speculator_type=kind, num_layers=2, block_size=4)
    batch = make_batch(128, 3, 64, 448)
    kwargs = {"ttt_steps": 3} if kind == "eagle3" else {"block_size": 4, "max_anchors": 16}
    results = {}
    for impl in ("sdpa", "eager", "simple_flex_attention"):
        if kind == "dflash":
            kwargs["generator"] = torch.Generator().manual_seed(0)
        with torch.no_grad():
            results[impl] = model.forward_train(batch, attn_impl=impl, **kwargs)
    loss, metrics = results["sdpa"]
    assert loss.shape == () and torch.isfinite(loss)
    for impl in ("eager", "simple_flex_attention"):
        torch.testing.assert_close(results[impl][0], loss, atol=1e-4, rtol=1e-4)
    assert {"full_acc_0", "full_acc_1", "full_acc_2"} <= set(metrics)
    tokens = torch.randint(0, 448, (11,))
    proposal = model.propose(torch.randn(10, 3 * 64), tokens, 3)
    assert proposal.shape == (3,) and proposal.dtype == torch.long and (proposal < 448).all()


def test_eagle3_propose_first_token_matches_training_forward(tiny_llama):
    """The greedy chain's first token equals the training forward's argmax at the last row."""
    model = draft(tiny_llama)
    n = 12
    aux = torch.randn(n, 3 * 64)
    tokens = torch.randint(0, 448, (n + 1,))
    with torch.no_grad():
        hidden, head_in, _ = model.decode(
            model.combine_aux(aux)[None], model.embed_tokens(tokens[1:])[None], torch.arange(1, n + 1)[None],
            model.window_masks(lambda w: AttentionMask(document_causal(torch.zeros(n, dtype=torch.long), w), n, n, torch.device("cpu"))),
            "sdpa", [None] * len(model.layers),
        )
    assert model.propose(aux, tokens, 1).item() == model.lm_head(head_in)[0, -1].argmax().item()
