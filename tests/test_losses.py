"""The loss catalogue: each term equals its textbook formula (written here, in float64,
independently of the module), its gradient equals autograd through that formula, chunking
changes nothing, a JSON mix is the weighted sum, and bad specs fail in one line."""

from __future__ import annotations

import pytest
import torch

from spectool import losses
from spectool.config import ConfigError, RunConfig

N, D = 23, 41


def formula(name: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-row loss [N], straight from the definitions (float64, differentiable in x)."""
    q, p = x.double().softmax(-1), t.double().softmax(-1)
    kl = (p * (p.log() - q.log())).sum(-1)
    tv = 0.5 * (p - q).abs().sum(-1)  # = 1 - sum min(p, q)
    if name == "kl":
        return kl
    if name == "rkl":
        return (q * (q.log() - p.log())).sum(-1)
    if name == "jsd":
        m = (p + q) / 2
        return 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    if name == "ce":
        return -q.gather(-1, t.argmax(-1, keepdim=True)).squeeze(-1).log()
    if name == "tv":
        return tv
    if name == "lk":
        return -(1 - tv).clamp_min(1e-5).log()
    assert name == "lk_hybrid"
    lam = torch.exp(-3.0 * (1 - tv)).detach()
    return lam * kl + (1 - lam) * tv


def inputs(seed: int = 0, dtype: torch.dtype = torch.float32, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    draft = (scale * torch.randn(N, D, generator=g)).to(dtype)
    target = (scale * torch.randn(N, D, generator=g)).to(dtype)
    weight = torch.rand(N, generator=g) * (torch.rand(N, generator=g) > 0.3)  # some rows unweighted
    return draft, target, weight


def loss_and_grad(draft, target, weight, spec):
    x = draft.clone().requires_grad_()
    total, terms = losses.weighted_loss(x, target, weight, spec)
    (grad,) = torch.autograd.grad(total, x)
    return total, grad, terms


# chunk sizes (elements): everything in one chunk, one row per chunk, uneven chunks
CHUNKS = [1 << 22, D, 5 * D + 3]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("name", losses.TERMS)
def test_each_term_equals_its_formula_and_autograd_gradient(monkeypatch, name, chunk):
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", chunk)
    draft, target, weight = inputs()
    total, grad, terms = loss_and_grad(draft, target, weight, name)
    x = draft.double().requires_grad_()
    want = (formula(name, x, target) * weight.double()).sum()
    (want_grad,) = torch.autograd.grad(want, x)
    assert terms == {}  # a single term is the total itself
    torch.testing.assert_close(total.double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad.double(), want_grad, atol=1e-6, rtol=1e-5)
    assert grad[weight == 0].abs().max() == 0


@pytest.mark.parametrize("name", losses.TERMS)
def test_chunked_equals_unchunked(monkeypatch, name):
    draft, target, weight = inputs(1)
    whole, whole_grad, _ = loss_and_grad(draft, target, weight, name)
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", 4 * D)
    assert len(losses._chunks(N, D)) == 6
    chunked, chunked_grad, _ = loss_and_grad(draft, target, weight, name)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(chunked_grad, whole_grad, atol=1e-7, rtol=1e-6)


def test_chunks_cover_rows_evenly_and_small_sizes_take_one_chunk(monkeypatch):
    assert losses._chunks(512, 8192) == [slice(0, 512)]  # 4 Mi elements: no chunking at T=512, D=8192
    sizes = [s.stop - s.start for s in losses._chunks(2048, 32000)]
    assert sum(sizes) == 2048 and max(sizes) - min(sizes) <= 1 and max(sizes) * 32000 <= 1 << 22
    assert losses._chunks(0, 100) == []


@pytest.mark.parametrize("name", losses.TERMS)
def test_bfloat16_logits_computed_in_fp32(name):
    draft, target, weight = inputs(2, torch.bfloat16)
    total, grad, _ = loss_and_grad(draft, target, weight, name)
    assert grad.dtype == torch.bfloat16
    x = draft.double().requires_grad_()
    want = (formula(name, x, target.double()) * weight.double()).sum()
    (want_grad,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(total.double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad.double(), want_grad, atol=2e-3, rtol=1e-2)


def test_json_mix_is_the_weighted_sum_and_logs_each_term(monkeypatch):
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", 3 * D)
    draft, target, weight = inputs(3)
    mix = {"ce": 0.1, "tv": 0.9, "kl": 0.25, "lk_hybrid": 2.0, "rkl": 0.5, "jsd": 1.0, "lk": 0.3}
    total, grad, terms = loss_and_grad(draft, target, weight, '{"ce": 0.1, "tv": 0.9, "kl": 0.25, "lk_hybrid": 2.0, "rkl": 0.5, "jsd": 1.0, "lk": 0.3}')
    assert set(terms) == set(mix)
    want, want_grad = 0.0, torch.zeros_like(draft)
    for name, w in mix.items():
        single, single_grad, _ = loss_and_grad(draft, target, weight, name)
        torch.testing.assert_close(terms[name], single)
        want, want_grad = want + w * single, want_grad + w * single_grad
    torch.testing.assert_close(total, want)
    torch.testing.assert_close(grad, want_grad, atol=1e-7, rtol=1e-5)
    assert not terms["tv"].requires_grad


def test_reference_spellings_and_mapping_specs():
    draft, target, weight = inputs(4)
    assert losses.parse_loss("kl_div") == {"kl": 1.0} and losses.parse_loss(" nla ") == {"lk": 1.0}
    assert losses.parse_loss('{"kl_div": 1, "nla": 0.5}') == {"kl": 1.0, "lk": 0.5}
    by_alias, _, _ = loss_and_grad(draft, target, weight, "nla")
    by_name, _, _ = loss_and_grad(draft, target, weight, {"lk": 1.0})
    assert torch.equal(by_alias, by_name)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("kll", "neither a loss nor a JSON mix"),
        ('{"kl": 1, "bogus": 1}', "'bogus' is unknown"),
        ("[1, 2]", "non-empty JSON object"),
        ("{}", "non-empty JSON object"),
        ('{"kl": -1}', "finite number >= 0"),
        ('{"kl": "1"}', "finite number >= 0"),
        ('{"kl": true}', "finite number >= 0"),
        ('{"kl": NaN}', "finite number >= 0"),
        ('{"kl": 0, "tv": 0}', "all zero"),
        ('{"kl": 1, "kl_div": 1}', "twice"),
    ],
)
def test_bad_specs_fail_in_one_line_at_config_time(spec, says):
    with pytest.raises(losses.LossSpecError) as err:
        losses.parse_loss(spec)
    message = str(err.value)
    assert says in message and "\n" not in message and message.startswith("--loss")
    with pytest.raises(ConfigError) as cfg_err:
        RunConfig.from_flat({"verifier_name_or_path": "v", "loss": spec}).validate()
    assert str(cfg_err.value) == message
    if "unknown" in says or "neither" in says:
        assert all(name in message for name in losses.TERMS)


def test_help_names_every_term_and_valid_specs_validate():
    from spectool.config import LossConfig

    help_text = next(f for f in LossConfig.__dataclass_fields__.values() if f.name == "loss").metadata["help"]
    assert all(name in help_text for name in losses.TERMS)
    RunConfig.from_flat({"verifier_name_or_path": "v", "loss": '{"ce": 0.1, "tv": 0.9}'}).validate()
    assert RunConfig().loss.loss == "kl"


@pytest.mark.parametrize(("spec", "saves_target"), [("kl", True), ("ce", False), ('{"ce": 1, "tv": 1}', True)])
def test_backward_keeps_no_fp32_copies(spec, saves_target):
    """Saved for backward: the logits as they came (bf16 here), the targets unless only CE
    needs them (then the argmax), the weights: nothing of the fp32 softmaxes."""
    draft, target, weight = inputs(5, torch.bfloat16)
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        losses.weighted_loss(draft.clone().requires_grad_(), target, weight, spec)
    big = [t for t in saved if t.numel() == N * D]
    assert all(t.dtype == torch.bfloat16 for t in big) and len(big) == (2 if saves_target else 1)
    assert sum(t.numel() for t in saved if t.numel() != N * D) <= 3 * N + len(losses.parse_loss(spec))  # weights, labels, rows


def test_targets_get_no_gradient_and_identical_distributions_cost_nothing():
    x = torch.randn(4, 9)
    target = x.clone().requires_grad_()
    for name in ("kl", "rkl", "jsd", "tv"):
        total, _ = losses.weighted_loss(x.clone().requires_grad_(), target, torch.ones(4), name)
        assert total.item() == pytest.approx(0.0, abs=1e-6)
        total.backward()
        assert target.grad is None


def test_no_rows():
    x = torch.zeros(0, 7, requires_grad=True)
    total, _ = losses.weighted_loss(x, torch.zeros(0, 7), torch.zeros(0), '{"kl": 1, "ce": 1}')
    total.backward()
    assert total.item() == 0 and x.grad.shape == (0, 7)


@pytest.mark.parametrize("kind", ["eagle3", "dflash"])
def test_models_log_each_term_and_train_on_the_mix(tiny_llama, kind):
    from test_models import make_batch

    from spectool.models.build import initialise_draft

    model = initialise_draft(RunConfig.from_flat({"verifier_name_or_path": str(tiny_llama), "speculator_type": kind, "block_size": 4}))
    batch = make_batch(64, 3, 64, 448)
    kwargs = {"ttt_steps": 3} if kind == "eagle3" else {"block_size": 4, "max_anchors": 8, "generator": torch.Generator().manual_seed(0)}
    loss, metrics = model.forward_train(batch, loss='{"kl": 0.5, "ce": 2}', **kwargs)
    value = {name: float(pair[0] / pair[1]) for name, pair in metrics.items()}
    steps = [f"_{k}" for k in range(3)] if kind == "eagle3" else [""]
    for s in steps:
        assert value[f"loss{s}"] == pytest.approx(0.5 * value[f"kl_loss{s}"] + 2 * value[f"ce_loss{s}"], rel=1e-5)
    assert float(loss.detach()) == pytest.approx(sum(value[f"loss{s}"] for s in steps), rel=1e-5)
    _, kl_metrics = model.forward_train(batch, loss="kl", **kwargs)
    assert not any(name.startswith("kl_loss") for name in kl_metrics)
    loss.backward()
    assert model.fc.weight.grad is not None and torch.isfinite(model.fc.weight.grad).all()


def test_cli_refuses_a_bad_loss_in_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "spectool", "train", "--verifier-name-or-path", "v", "--data-path", str(tmp_path),
         "--save-path", str(tmp_path / "save"), "--loss", '{"kl": 1, "foo": 2}'],
        check=False, capture_output=True, text=True, timeout=120,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and lines == ["error: --loss term 'foo' is unknown: use kl, rkl, jsd, ce, tv, lk, lk_hybrid"], proc.stderr
    assert not (tmp_path / "save").exists()


@pytest.mark.parametrize("chunk", CHUNKS)
def test_all_rows_path_equals_the_weighted_rows_path(monkeypatch, chunk):
    """On an accelerator every row is computed (no host sync); on CPU only weighted rows:
    the same values and gradients either way."""
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", chunk)
    draft, target, weight = inputs(6)
    spec = '{"kl": 1, "ce": 0.5, "lk_hybrid": 0.25}'
    cpu, cpu_grad, cpu_terms = loss_and_grad(draft, target, weight, spec)
    monkeypatch.setattr(losses, "_weighted_rows", lambda w: None)
    every, every_grad, every_terms = loss_and_grad(draft, target, weight, spec)
    torch.testing.assert_close(cpu, every)
    torch.testing.assert_close(cpu_grad, every_grad)
    assert cpu_terms.keys() == every_terms.keys()


def test_unweighted_rows_are_not_computed_on_cpu():
    draft, target, weight = inputs(7)
    draft[weight == 0] = float("nan")  # a prompt row the loss must never touch
    total, grad, _ = loss_and_grad(draft, target, weight, "kl")
    assert torch.isfinite(total) and torch.isfinite(grad).all() and grad[weight == 0].abs().max() == 0


def head_inputs(seed: int, head_trains: bool):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, 16, generator=g).requires_grad_()
    head = (0.5 * torch.randn(D, 16, generator=g)).requires_grad_(head_trains)
    _, target, weight = inputs(seed)
    return hidden, head, target, weight


@pytest.mark.parametrize("all_rows", [False, True])
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("spec", [*losses.TERMS, '{"kl": 1, "ce": 0.5, "lk_hybrid": 0.25}'])
def test_fused_head_loss_equals_lm_head_then_loss(monkeypatch, spec, chunk, all_rows):
    """The lm_head fused into the loss: the same total, terms, argmax and gradients (of the
    hidden states and of a trained head) as logits = hidden @ head.T followed by weighted_loss,
    on CPU's weighted-rows path and the accelerator's all-rows path."""
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", chunk)
    if all_rows:
        monkeypatch.setattr(losses, "_weighted_rows", lambda w: None)
    hidden, head, target, weight = head_inputs(8, head_trains=True)
    logits = hidden @ head.t()
    want, want_terms = losses.weighted_loss(logits, target, weight, spec)
    want_grads = torch.autograd.grad(2.5 * want, (hidden, head))
    total, terms, pred = losses.weighted_head_loss(hidden, head, target, weight, spec)
    grads = torch.autograd.grad(2.5 * total, (hidden, head))
    torch.testing.assert_close(total, want)
    assert terms.keys() == want_terms.keys() and all(torch.allclose(terms[k], want_terms[k]) for k in terms)
    assert torch.equal(pred, logits.argmax(-1))  # every row, weighted or not (the metrics read them all)
    for got, ref in zip(grads, want_grads):
        torch.testing.assert_close(got, ref)


def test_fused_head_loss_keeps_no_logits_and_a_frozen_head_gets_no_gradient():
    hidden, head, target, weight = head_inputs(9, head_trains=False)
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        total, _, _ = losses.weighted_head_loss(hidden, head, target, weight, "kl")
    assert not any(t.shape[-1] == D for t in saved)  # what backward keeps is [N, H], never [N, D]
    total.backward()
    assert hidden.grad.shape == hidden.shape and head.grad is None
    with torch.no_grad():
        again, _, _ = losses.weighted_head_loss(hidden, head, target, weight, "kl")
    assert torch.equal(again, total.detach())
