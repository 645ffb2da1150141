"""P-EAGLE: COD sampling, the attention mask, the model and its checkpoint format."""

from __future__ import annotations

import json

import pytest
import torch
from test_models import EAGLE3_KEYS, EAGLE3_SPEC, make_batch
from test_train import train_data  # noqa: F401 (fixture)

from spectool.attention import AttentionMask, materialize
from spectool.config import RunConfig
from spectool.models import expected_tensors, load_draft, save_draft
from spectool.models.build import initialise_draft
from spectool.models.peagle.cod import cod_sample, depth_size
from spectool.models.peagle.mask import peagle_mask


def _doc_ids(lengths: list[int], padding: int) -> torch.Tensor:
    return torch.tensor([i for i, n in enumerate(lengths) for _ in range(n)] + [-1] * padding)


# ---- COD sampling ------------------------------------------------------------------------


def test_cod_depth_sizes_follow_the_geometric_decay_with_its_floor():
    assert [depth_size(100, d, 0.7, 0.2) for d in range(1, 8)] == [69, 48, 33, 23, 19, 18, 18]
    assert depth_size(3, 3, 0.7, 0.2) == 0 and depth_size(3, 5, 0.7, 0.2) == 0
    T = 300
    _, depth = cod_sample(torch.ones(T), torch.zeros(T, dtype=torch.long), 5, 0.7, 0.2, generator=torch.Generator().manual_seed(0))
    sizes = [int((depth == d).sum()) for d in range(5)]
    assert sizes == [T] + [depth_size(T, d, 0.7, 0.2) for d in range(1, 5)]
    capped = cod_sample(torch.ones(T), torch.zeros(T, dtype=torch.long), 3, 0.5, 0.1, max_anchors=40, generator=torch.Generator().manual_seed(0))
    assert [int((capped[1] == d).sum()) for d in range(3)] == [T, 19, 9]  # floor(39 * .5), floor(38 * .25)


@pytest.mark.parametrize("seed", range(4))
def test_cod_candidate_pools(seed):
    """Depth d draws from the positions drawn at d-1 plus one that are supervised and in the
    anchor's document (depth 1: the seeds), as many as the decay allows."""
    g = torch.Generator().manual_seed(seed)
    doc = _doc_ids([37, 1, 50, 29], padding=11)
    T = doc.shape[0]
    mask = (torch.rand(T, generator=g) > 0.35) & (doc >= 0)
    anchor, depth = cod_sample(mask, doc, 6, 0.8, 0.3, generator=g)
    assert torch.equal(anchor[depth == 0], torch.arange(T))  # every row is context
    seeds = {int(p) for p in torch.nonzero(mask).flatten()}
    pool = {p for p in seeds if p >= 1 and doc[p - 1] == doc[p]}
    for d in range(1, 6):
        drawn = sorted(int(a) + d for a in anchor[depth == d])
        assert drawn == sorted(set(drawn)) and set(drawn) <= pool
        assert len(drawn) == min(depth_size(len(seeds), d, 0.8, 0.3), len(pool))
        assert torch.equal(anchor[depth == d], anchor[depth == d].sort().values)
        pool = {p + 1 for p in drawn if p + 1 < T and mask[p + 1] and doc[p + 1] == doc[p + 1 - (d + 1)]}
    rows = anchor + depth
    assert bool(mask[rows[depth > 0]].all())  # every mask slot is supervised
    assert bool((doc[rows] == doc[anchor]).all())  # chains stay in their document
    # a chain at depth d exists at every depth below
    for d in range(2, 6):
        assert set(anchor[depth == d].tolist()) <= set(anchor[depth == d - 1].tolist())


def test_cod_is_deterministic_for_a_generator():
    mask, doc = torch.ones(64), torch.zeros(64, dtype=torch.long)
    a = cod_sample(mask, doc, 4, 0.7, 0.2, 20, torch.Generator().manual_seed(3))
    b = cod_sample(mask, doc, 4, 0.7, 0.2, 20, torch.Generator().manual_seed(3))
    c = cod_sample(mask, doc, 4, 0.7, 0.2, 20, torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])


# ---- the mask ------------------------------------------------------------------------------


def brute_force_mask(anchor: list[int], depth: list[int], doc: list[int], window: int | None) -> torch.Tensor:
    """What element (a, d) sees at inference: its document's rows up to a (the context, fed
    by the verifier), then its own mask slots 1..d, limited by the window on positions."""
    n = len(anchor)
    out = torch.zeros(n, n, dtype=torch.bool)
    index = {(a, d): i for i, (a, d) in enumerate(zip(anchor, depth))}
    for q, (a, d) in enumerate(zip(anchor, depth)):
        if doc[a] < 0:  # padding: only itself
            out[q, q] = True
            continue
        visible = [(r, 0) for r in range(a + 1) if doc[r] == doc[a]] + [(a, s) for s in range(1, d + 1)]
        for r, s in visible:
            if (r, s) in index and (window is None or (a + d) - (r + s) < window):
                out[q, index[(r, s)]] = True
    return out


@pytest.mark.parametrize("window", [None, 5])
def test_mask_equals_brute_force_definition(window):
    g = torch.Generator().manual_seed(1)
    doc = _doc_ids([13, 9, 17], padding=3)
    mask = (torch.rand(doc.shape[0], generator=g) > 0.2) & (doc >= 0)
    anchor, depth = cod_sample(mask, doc, 4, 0.9, 0.5, generator=g)
    assert int((depth > 0).sum()) > 20
    got = materialize(peagle_mask(anchor, depth, doc, window), anchor.shape[0], anchor.shape[0])
    assert torch.equal(got, brute_force_mask(anchor.tolist(), depth.tolist(), doc.tolist(), window))
    assert bool(got.diagonal().all())  # no row is fully masked (sdpa would give NaN)


def test_mask_block_mask_matches_dense():
    doc = _doc_ids([70, 90], padding=0)
    anchor, depth = cod_sample(torch.ones(160), doc, 3, 0.7, 0.2, generator=torch.Generator().manual_seed(0))
    n = anchor.shape[0]
    m = AttentionMask(peagle_mask(anchor, depth, doc, 64), n, n, torch.device("cpu"))
    block = m.block_mask()
    dense_from_block = block.to_dense()[0, 0].bool()  # [q blocks, kv blocks] that hold any True
    q_block, kv_block = block.BLOCK_SIZE
    dense = m.dense()
    for qb in range(dense_from_block.shape[0]):
        for kb in range(dense_from_block.shape[1]):
            tile = dense[qb * q_block : (qb + 1) * q_block, kb * kv_block : (kb + 1) * kv_block]
            assert bool(tile.any()) <= bool(dense_from_block[qb, kb])


# ---- the model and its checkpoint ------------------------------------------------------------

def peagle(verifier, **options):
    return initialise_draft(RunConfig.from_flat({"verifier_name_or_path": str(verifier), "speculator_type": "peagle", **options}))


def test_tensor_names_and_shapes_match_spec(tiny_llama, tmp_path):
    torch.save({i: 1000 - i for i in range(200)}, tmp_path / "tf.pt")
    base = {"draft_vocab_size": 96, "token_freq_path": str(tmp_path / "tf.pt"), "data_path": str(tmp_path)}
    got = {k: v[0] for k, v in expected_tensors(peagle(tiny_llama, **base).config).items()}
    assert got == {**EAGLE3_SPEC, "mask_hidden": (1, 1, 192)}  # all EAGLE-3 tensors + mask_hidden [1, 1, A*H]
    with_input_norm = expected_tensors(peagle(tiny_llama, norm_before_fc=True, target_layer_ids=[2, 5], **base).config)
    assert with_input_norm["input_norm.weight"][0] == (128,) and with_input_norm["mask_hidden"][0] == (1, 1, 128)


def test_config_json_fields_match_spec(tiny_llama, tmp_path):
    model = peagle(tiny_llama, num_depths=5, mask_token_id=7)
    save_draft(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert set(cfg) == EAGLE3_KEYS | {"mask_token_id"}
    assert cfg["speculators_model_type"] == "peagle" and cfg["architectures"] == ["PEagleDraftModel"]
    assert cfg["mask_token_id"] == 7 and cfg["norm_before_residual"] is True and cfg["embed_requires_grad"] is True
    assert cfg["fc_norm"] is False and cfg["norm_output"] is False
    assert cfg["speculators_config"]["algorithm"] == "peagle"
    assert cfg["speculators_config"]["proposal_methods"] == [
        {"proposal_type": "greedy", "speculative_tokens": 5, "verifier_accept_k": 1, "accept_tolerance": 0.0}
    ]
    assert cfg["transformer_layer_config"]["model_type"] == "llama"


def test_save_load_round_trip_is_bit_exact(tiny_qwen3, tmp_path):
    torch.save({i: i for i in range(300)}, tmp_path / "tf.pt")
    model = peagle(tiny_qwen3, draft_vocab_size=64, token_freq_path=str(tmp_path / "tf.pt"), data_path=str(tmp_path), num_depths=3)
    save_draft(model, tmp_path / "a")
    loaded = load_draft(tmp_path / "a")
    assert loaded.config == model.config
    save_draft(loaded, tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "a" / "model.safetensors"))
    assert torch.equal(saved["mask_hidden"], model.mask_hidden.detach().to(torch.bfloat16))
    assert float(saved["mask_hidden"].float().std()) > 0.5  # randn-initialised, not a zero placeholder


def test_embeddings_train_by_default_and_eagle3_only_options_are_refused(tiny_llama):
    from spectool.errors import SpectoolError

    assert peagle(tiny_llama).embed_tokens.weight.requires_grad
    assert not peagle(tiny_llama, embed_requires_grad=False).embed_tokens.weight.requires_grad
    assert not initialise_draft(RunConfig.from_flat({"verifier_name_or_path": str(tiny_llama)})).embed_tokens.weight.requires_grad
    with pytest.raises(SpectoolError, match="--fc-norm"):
        peagle(tiny_llama, fc_norm=True)


def test_forward_shapes_and_backends_agree(tiny_llama):
    model = peagle(tiny_llama, num_layers=2, num_depths=4, sliding_window=16)
    batch = make_batch(128, 3, 64, 448)
    results = {}
    for impl in ("sdpa", "eager", "simple_flex_attention"):
        with torch.no_grad():
            results[impl] = model.forward_train(batch, num_depths=4, attn_impl=impl, generator=torch.Generator().manual_seed(0))
    loss, metrics = results["sdpa"]
    assert loss.shape == () and torch.isfinite(loss)
    for impl in ("eager", "simple_flex_attention"):
        torch.testing.assert_close(results[impl][0], loss, atol=1e-4, rtol=1e-4)
    assert set(metrics) == {"loss", *(f"position_{d}_acc" for d in range(4)), *(f"full_acc_{d}" for d in range(4))}
    loss, _ = model.forward_train(batch, num_depths=4, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert model.mask_hidden.grad is not None and model.mask_hidden.grad.abs().sum() > 0
    assert model.embed_tokens.weight.grad is not None
    proposal = model.propose(torch.randn(10, 3 * 64), torch.randint(0, 448, (11,)), 4)
    assert proposal.shape == (4,) and proposal.dtype == torch.long and (proposal < 448).all()


def test_propose_equals_the_training_forward_on_each_prefix(tiny_llama):
    """The K tokens proposed after a prefix are the argmaxes the training forward computes
    for that prefix's chain: same inputs, positions and mask, and nothing leaks from later rows."""
    torch.manual_seed(0)
    model = peagle(tiny_llama, num_depths=4, sliding_window=8)
    with torch.no_grad():
        model.mask_hidden.mul_(3.0)
    T = 20
    ids = torch.randint(0, 448, (T,))
    aux = torch.randn(T, 192)
    doc = torch.zeros(T, dtype=torch.long)
    anchor, depth = cod_sample(torch.ones(T), doc, 4, 1.0, 1.0)  # every chain at every depth
    with torch.no_grad():
        logits = model.lm_head(model.element_features(ids, aux, torch.arange(1, T + 1), doc, anchor, depth, "sdpa"))
    pred = model.to_target_ids(logits.argmax(-1))
    for a in (0, 5, 11, 16):
        chain = [int(pred[(anchor == a) & (depth == d)]) for d in range(4)]
        tokens = torch.cat([torch.tensor([1]), ids[: a + 1]])  # x_0 (any) then the shifted inputs
        assert model.propose(aux[: a + 1], tokens, 4).tolist() == chain, a


# ---- init, inspect, eval ---------------------------------------------------------------------


def test_init_then_inspect_is_valid(tiny_llama, tmp_path):
    from typer.testing import CliRunner

    from spectool.cli.app import app

    runner = CliRunner()
    out = tmp_path / "draft"
    result = runner.invoke(app, ["init", "--verifier-name-or-path", str(tiny_llama), "--speculator-type", "peagle",
                                 "--save-path", str(out), "--num-depths", "4", "--mask-token-id", "3"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["inspect", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["valid"] and report["speculator_type"] == "peagle" and report["speculative_tokens"] == 4
    # A config without mask_hidden is refused by vLLM: inspect must say so.
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(out / "model.safetensors"))
    del tensors["mask_hidden"]
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    result = runner.invoke(app, ["inspect", str(out), "--json"])
    assert result.exit_code == 1 and "mask_hidden" in result.output


def test_eval_proposes_all_tokens_in_one_forward(tiny_llama, tmp_path, monkeypatch):
    from spectool.engine.trainer import dry_run
    from spectool.eval import evaluate
    from spectool.models.peagle.model import PEagleDraft

    cfg = RunConfig.from_flat({"verifier_name_or_path": str(tiny_llama), "speculator_type": "peagle", "num_depths": 3,
                               "mask_token_id": 0, "save_path": str(tmp_path / "draft")})
    draft = dry_run(cfg)
    calls = {"decode": 0, "propose": 0}
    decode, propose = PEagleDraft.decode, PEagleDraft.propose

    def counting_decode(self, *args, **kw):
        calls["decode"] += 1
        return decode(self, *args, **kw)

    def counting_propose(self, *args, **kw):
        calls["propose"] += 1
        out = propose(self, *args, **kw)
        assert out.shape == (args[2],) and 1 <= args[2] <= 3  # k tokens (fewer near the token limit)
        return out

    monkeypatch.setattr(PEagleDraft, "decode", counting_decode)
    monkeypatch.setattr(PEagleDraft, "propose", counting_propose)
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Count from 3 to 9."}]}) + "\n")
    report = evaluate(draft, str(tiny_llama), data, max_new_tokens=12)
    assert report.lossless_checked and report.num_speculative_tokens == 3 and report.speculator_type == "peagle"
    assert report.steps > 0 and 1.0 <= report.acceptance_length <= 4
    assert calls["propose"] > 0 and calls["decode"] == calls["propose"]  # one draft forward per step


def test_simulated_acceptance_measures_every_depth(tiny_llama, train_data, tmp_path):  # noqa: F811 (fixture)
    from spectool.engine.trainer import dry_run
    from spectool.eval import simulated_acceptance

    cfg = RunConfig.from_flat({"verifier_name_or_path": str(tiny_llama), "speculator_type": "peagle", "num_depths": 4,
                               "mask_token_id": 0, "save_path": str(tmp_path / "draft")})
    sim = simulated_acceptance(dry_run(cfg), train_data, str(tiny_llama), val_ratio=0.3, total_seq_len=128)
    assert len(sim["full_acc"]) == 4 and sim["batches"] >= 1
    assert all(a >= b for a, b in zip(sim["full_acc"], sim["full_acc"][1:]))  # cumulative: can only drop
    assert sim["acceptance_length"] == pytest.approx(1 + sum(sim["full_acc"]))


@pytest.mark.parametrize(
    "damage,needle",
    [
        (lambda c: c["speculators_config"]["proposal_methods"][0].__setitem__("speculative_tokens", 10**6), "num_depths (speculative_tokens) 1000000 must lie in [1, 64]"),
        (lambda c: c.__setitem__("mask_token_id", 448), "mask_token_id 448 must lie in [0, 448)"),
        (lambda c: c.pop("mask_token_id"), "mask_token_id None"),
        (lambda c: c.__setitem__("fc_norm", True), "fc_norm is true, but vLLM's P-EAGLE ignores it"),
        (lambda c: c.pop("norm_before_residual"), "must state norm_before_residual explicitly"),
    ],
)
def test_inspect_refuses_what_vllm_would_misread(tiny_llama, tmp_path, damage, needle):
    from typer.testing import CliRunner

    from spectool.cli.app import app

    runner = CliRunner()
    out = tmp_path / "draft"
    assert runner.invoke(app, ["init", "--verifier-name-or-path", str(tiny_llama), "--speculator-type", "peagle", "--save-path", str(out)]).exit_code == 0
    cfg = json.loads((out / "config.json").read_text())
    damage(cfg)
    (out / "config.json").write_text(json.dumps(cfg))
    result = runner.invoke(app, ["inspect", str(out), "--json"])
    assert result.exit_code == 1 and any(needle in p for p in json.loads(result.output)["problems"]), result.output


def test_rows_without_supervision_or_documents_give_zero_loss(tiny_llama):
    model = peagle(tiny_llama, num_depths=3)
    for damage in ("no supervision", "all padding"):
        batch = make_batch(32, 3, 64, 448)
        batch["loss_mask"][:] = 0
        if damage == "all padding":
            batch["document_ids"][:] = -1
        loss, metrics = model.forward_train(batch, num_depths=3, generator=torch.Generator().manual_seed(0))
        loss.backward()
        assert loss.item() == 0.0 and metrics["full_acc_0"][1] == 0, damage
