"""COD (conditional-on-distribution) sampling of P-EAGLE's training elements.

An element is ``(anchor, depth)``: it predicts row ``anchor + depth`` of the packed row
(after the EAGLE-3 shift: the token ``depth + 1`` places after the anchor's input token),
fed the anchor's real token and aux states at depth 0 and the mask token with
``mask_hidden`` at depth >= 1. Per packed row:

* depth 0: every row of the packed row (the context every chain attends to; padding rows
  too, as in the reference, so that a row of padding only still has elements);
* seeds: the supervised rows, randomly cut to ``max_anchors``; S = their number;
* depth d = 1..D-1: ``floor((S - d) * max(r**d, r_min))`` positions drawn without
  replacement from the candidate pool (depth 1: the seeds; depth d+1: the positions drawn
  at depth d plus one that are supervised), kept sorted, stored as anchor = position - d.

So a chain exists at depth d only if it exists at every depth below (its rows 1..d are all
supervised), and a depth's elements are a uniform random subset of the chains that could
reach it. Unlike the reference, a chain never leaves its anchor's document (its rows
would be supervised by the next document's targets).
"""

from __future__ import annotations

import math

import torch


def depth_size(num_seeds: int, depth: int, ratio: float, ratio_min: float) -> int:
    """Elements drawn at ``depth`` >= 1 (fewer when the candidate pool is smaller)."""
    return math.floor(max(0, num_seeds - depth) * max(ratio**depth, ratio_min))


def _subset(pool: torch.Tensor, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """``size`` random elements of ``pool``, sorted (CPU permutation: the same on every device)."""
    if pool.numel() <= size:
        return pool
    pick = torch.randperm(pool.numel(), generator=generator)[:size].to(pool.device)
    return pool[pick].sort().values


def cod_sample(
    loss_mask: torch.Tensor,
    document_ids: torch.Tensor,
    num_depths: int,
    down_sample_ratio: float,
    down_sample_ratio_min: float,
    max_anchors: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchor, depth) of every element of one packed row ``[T]``, depth-major, anchors sorted."""
    T = loss_mask.shape[0]
    doc = document_ids
    supervised = loss_mask.bool() & (doc >= 0)
    first = torch.arange(T, device=doc.device)
    anchors, depths = [first], [torch.zeros_like(first)]
    seeds = torch.nonzero(supervised).flatten()
    if max_anchors is not None:
        seeds = _subset(seeds, max_anchors, generator)
    pool = seeds
    for d in range(1, num_depths):
        pool = pool[pool >= d]
        pool = pool[doc[pool - d] == doc[pool]]
        size = depth_size(seeds.numel(), d, down_sample_ratio, down_sample_ratio_min)
        if size == 0 or pool.numel() == 0:
            break
        drawn = _subset(pool, size, generator)
        anchors.append(drawn - d)
        depths.append(torch.full_like(drawn, d))
        nxt = drawn + 1
        nxt = nxt[nxt < T]
        pool = nxt[supervised[nxt]]
    return torch.cat(anchors), torch.cat(depths)
