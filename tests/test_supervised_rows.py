"""Only what the loss needs: draft logits and verifier targets on supervised rows equal the
computation over every row (loss, metrics, gradients)."""

from __future__ import annotations

import pytest
import torch

from spectool.config import RunConfig
from spectool.models.build import initialise_draft

from test_models import make_batch


def kl_per_row(draft: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Forward KL(p_verifier || q_draft) per row, plain and unchunked (the reference)."""
    log_p, log_q = torch.log_softmax(target.float(), -1), torch.log_softmax(draft.float(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


@pytest.mark.parametrize("ttt_tokens", ["ground-truth", "draft"])
def test_eagle3_supervised_rows_only_equals_full_computation(tiny_llama, monkeypatch, ttt_tokens):
    """lm_head and verifier targets on the planned rows only: loss, metrics and gradients
    equal the computation over every row."""
    from spectool.models.eagle3 import model as eagle3

    model = initialise_draft(RunConfig.from_flat({"verifier_name_or_path": str(tiny_llama)})).double()
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in make_batch(80, 3, 64, 448, seed=3).items()}
    batch["loss_mask"][0, 10:30] = 0  # a prompt span: rows there are unsupervised
    plan = eagle3._row_plan
    results = {}
    for name, all_rows in (("planned", None), ("full", True)):
        if all_rows:
            monkeypatch.setattr(eagle3, "_row_plan", lambda mask, steps, _all, device: plan(mask, steps, True, device))
        model.zero_grad(set_to_none=True)
        loss, metrics = model.forward_train(batch, ttt_steps=3, ttt_tokens=ttt_tokens)
        loss.backward()
        results[name] = (loss.detach(), metrics, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    if ttt_tokens == "ground-truth":
        assert plan(batch["loss_mask"][0].bool(), 3, False, torch.device("cpu")).numel() < 60  # fewer rows really were computed
    torch.testing.assert_close(results["planned"][0], results["full"][0], rtol=1e-10, atol=1e-12)
    assert results["planned"][1].keys() == results["full"][1].keys()
    for name, value in results["planned"][1].items():
        torch.testing.assert_close(value, results["full"][1][name], rtol=1e-10, atol=1e-12, msg=name)
    for name, grad in results["planned"][2].items():
        torch.testing.assert_close(grad, results["full"][2][name], rtol=1e-9, atol=1e-12, msg=name)


def test_dflash_supervised_slots_only_equals_full_computation(tiny_llama):
    model = initialise_draft(RunConfig.from_flat({"verifier_name_or_path": str(tiny_llama), "speculator_type": "dflash", "block_size": 4})).double()
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in make_batch(96, 3, 64, 448, seed=5).items()}
    batch["loss_mask"][0, 20:40] = 0
    loss, metrics = model.forward_train(batch, block_size=4, max_anchors=12, generator=torch.Generator().manual_seed(0))
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])

    # The reference: every slot's logits and target, the weight zero where unsupervised.
    from spectool.attention import AttentionMask, dflash_anchor_blocks
    from spectool.models.dflash import select_anchors

    ids, doc, mask, pos = batch["input_ids"][0], batch["document_ids"][0], batch["loss_mask"][0].bool(), batch["position_ids"][0]
    T, B = 96, 4
    anchors = select_anchors(mask, doc, 12, torch.Generator().manual_seed(0))
    n = anchors.numel()
    slots = torch.arange(B)
    rows = (anchors[:, None] + slots).clamp(max=T - 1)
    supervised = (anchors[:, None] + slots < T) & mask[rows] & (doc[rows] == doc[anchors][:, None]) & (slots >= 1)
    tokens = torch.full((n, B), model.config.mask_token_id)
    tokens[:, 0] = ids[anchors]
    masks = model.window_masks(lambda w: AttentionMask(dflash_anchor_blocks(doc, anchors, B, w, model.causal_in_block), n * B, T + n * B, ids.device))
    logits = model.lm_head(model.blocks_forward(batch["hidden_states"], pos[None], tokens.view(1, -1), (pos[anchors][:, None] + slots).view(1, -1), masks, "sdpa")[0])
    targets = model.target_logits(batch["verifier_last_hidden_states"][0][(rows - 1).clamp(min=0)]).reshape(n * B, -1)
    weight = (supervised.double() * torch.exp(-(slots - 1).clamp(min=0).double() / 4.0)).flatten() / (supervised.sum() + 1e-5)
    want = (weight.float() * kl_per_row(logits, targets)).sum()
    want_grads = torch.autograd.grad(want, [p for p in model.parameters() if p.requires_grad])
    assert 0 < supervised.sum() < n * (B - 1)  # some slots really were skipped
    # The divergences themselves run in fp32 (both versions): fp32 tolerances.
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-7)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-9)
    correct = (logits.argmax(-1) == targets.argmax(-1)).view(n, B) & supervised
    for s in range(1, B):
        assert metrics[f"position_{s}_acc"].tolist() == [float(correct[:, s].sum()), float(supervised[:, s].sum())]
