"""Checkpoint invariants every algorithm shares, beyond tensor names, shapes and dtypes
(those come from the model itself, :func:`spectool.models.expected_tensors`): what vLLM
would load without complaint yet serve wrongly."""

from __future__ import annotations

import torch

from spectool.models.config import SpeculatorConfig


def vocab_mapping_problems(d2t: torch.Tensor, t2d: torch.Tensor, vocab_size: int) -> list[str]:
    """d2t offsets must give strictly increasing verifier ids inside [0, V); t2d must mark exactly them."""
    if d2t.dtype != torch.int64 or t2d.dtype != torch.bool or d2t.dim() != 1 or t2d.dim() != 1:
        return []  # dtype/shape problems are reported by the name/shape/dtype check
    ids = torch.arange(d2t.shape[0]) + d2t
    problems = []
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        problems.append(f"d2t maps draft ids to verifier ids outside [0, {vocab_size}): rebuild it with `spectool vocab build`")
    if ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all()):
        problems.append("d2t gives verifier ids that are not strictly increasing: rebuild it with `spectool vocab build`")
    if t2d.shape[0] == vocab_size and not problems:
        marked = torch.zeros(vocab_size, dtype=torch.bool)
        marked[ids] = True
        if not torch.equal(marked, t2d):
            problems.append(f"t2d marks {int(t2d.sum())} ids, not exactly the {ids.numel()} ids d2t selects: rebuild both with `spectool vocab build`")
    return problems


def common_problems(spec: SpeculatorConfig, tensors: dict[str, torch.Tensor], verifier_layers: int | None) -> list[str]:
    problems = []
    if verifier_layers is not None:
        bad = [i for i in spec.aux_layer_ids if not 0 <= i < verifier_layers]
        if bad:
            problems.append(f"aux layer ids {bad} lie outside the verifier's {verifier_layers} layers (ids 0..{verifier_layers - 1}): re-create the draft for this verifier")
    nonfinite = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if nonfinite:
        problems.append(f"non-finite values (NaN/Inf) in {', '.join(sorted(nonfinite)[:5])}: use an earlier checkpoint")
    if "d2t" in tensors and "t2d" in tensors:
        problems += vocab_mapping_problems(tensors["d2t"], tensors["t2d"], spec.vocab_size)
    return problems
