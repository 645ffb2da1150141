"""The chunked fp32 divergences equal the plain reference, values and gradients."""

from __future__ import annotations

import pytest
import torch

import spectool.losses as losses


@pytest.mark.parametrize("kind", ["kl", "ce"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_equals_reference(monkeypatch, kind, dtype):
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", 3 * 50)  # 3 rows per chunk
    g = torch.Generator().manual_seed(0)
    draft = torch.randn(17, 50, generator=g).to(dtype).requires_grad_()
    target = torch.randn(17, 50, generator=g).to(dtype)
    weight = torch.rand(17, generator=g) * (torch.rand(17, generator=g) > 0.3)
    got = losses.weighted_divergence(draft, target, weight, kind)
    (grad,) = torch.autograd.grad(got, draft)
    ref_input = draft.detach().float().requires_grad_()
    want = losses.reference_divergence(ref_input, target.float(), weight, kind)
    (ref_grad,) = torch.autograd.grad(want, ref_input)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(grad.float(), ref_grad, atol=tol, rtol=tol)


def test_kl_is_zero_for_identical_distributions_and_targets_get_no_grad():
    x = torch.randn(4, 9)
    target = x.clone().requires_grad_()
    loss = losses.weighted_divergence(x.clone().requires_grad_(), target, torch.ones(4), "kl")
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert target.grad is None
