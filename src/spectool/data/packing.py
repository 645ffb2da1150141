"""Length-aware packing of samples into rows of ``total_seq_len`` tokens, and the collate.

Planning: per epoch the indices are shuffled with ``default_rng((seed, epoch))`` and
packed window by window with best-fit-decreasing (each sample, longest first, goes into
the fullest row that still has room). Windows keep the shuffle's randomness across
epochs; the emptiest rows of a window are reopened in the next one so only the very last
rows of an epoch are under-filled. Rows are then dealt to ranks so every rank gets the
same number of batches (rows are split, never dropped, to make the count divisible):
every sample appears exactly once per epoch across all ranks.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np
import torch

KEYS = ("input_ids", "loss_mask", "hidden_states", "verifier_last_hidden_states", "position_ids")


def best_fit_decreasing(items: Sequence[tuple[int, int]], capacity: int) -> list[list[int]]:
    """Pack ``(index, length)`` items into rows of ``capacity`` tokens; lengths are clipped to it."""
    order = sorted(items, key=lambda item: -min(item[1], capacity))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, row id)
    for index, length in order:
        length = min(length, capacity)
        pos = bisect.bisect_left(free, (length, -1))
        if pos < len(free):
            remaining, row = free.pop(pos)
            rows[row].append(index)
            remaining -= length
        else:
            row = len(rows)
            rows.append([index])
            remaining = capacity - length
        if remaining > 0:
            bisect.insort(free, (remaining, row))
    return rows


def pack_epoch(
    indices: Sequence[int],
    lengths: Sequence[int] | np.ndarray,
    capacity: int,
    seed: int,
    epoch: int,
    window_rows: int = 64,
    reopen: int = 8,
) -> list[list[int]]:
    """Rows of sample indices for one epoch (shuffled order, deterministic for (seed, epoch)).

    ``lengths[i]`` is the length of sample ``i`` (indexed by sample index). Windows hold
    about ``window_rows`` rows' worth of tokens; the ``reopen`` emptiest rows of a window
    go back into the next one.
    """
    rng = np.random.default_rng((seed, epoch))
    order = [int(indices[j]) for j in rng.permutation(len(indices))]
    clipped = {i: min(int(lengths[i]), capacity) for i in order}
    budget = window_rows * capacity
    rows: list[list[int]] = []
    carry: list[int] = []
    pos = 0
    while pos < len(order) or carry:
        window, tokens = list(carry), sum(clipped[i] for i in carry)
        while pos < len(order) and tokens < budget:
            window.append(order[pos])
            tokens += clipped[order[pos]]
            pos += 1
        packed = best_fit_decreasing([(i, clipped[i]) for i in window], capacity)
        if pos >= len(order):
            rows.extend(packed)
            break
        packed.sort(key=lambda row: -sum(clipped[i] for i in row))
        keep = max(1, len(packed) - reopen)
        rows.extend(packed[:keep])
        carry = [i for row in packed[keep:] for i in row]
    perm = rng.permutation(len(rows))
    return [rows[j] for j in perm]


def distribute(rows: list[list[int]], world_size: int, lengths: Sequence[int] | np.ndarray) -> list[list[list[int]]]:
    """Batches as ``[batch][rank] -> indices``; equal count on every rank.

    When the row count is not divisible by ``world_size``, the rows with most samples are
    split in two (greedy halves by length); if no row can be split, empty rows (all
    padding) fill the last batch.
    """
    rows = [list(r) for r in rows]
    while len(rows) % world_size:
        splittable = [j for j, r in enumerate(rows) if len(r) > 1]
        if not splittable:
            rows.append([])
            continue
        j = max(splittable, key=lambda k: len(rows[k]))
        a, b, ta, tb = [], [], 0, 0
        for i in sorted(rows[j], key=lambda i: -int(lengths[i])):
            if ta <= tb:
                a.append(i)
                ta += int(lengths[i])
            else:
                b.append(i)
                tb += int(lengths[i])
        rows[j] = a
        rows.append(b)
    return [rows[b * world_size : (b + 1) * world_size] for b in range(len(rows) // world_size)]


def plan_epoch(indices: Sequence[int], lengths: Sequence[int] | np.ndarray, capacity: int, world_size: int, seed: int, epoch: int) -> list[list[list[int]]]:
    """Every rank computes the same plan; rank r uses ``plan[b][r]`` for batch b."""
    return distribute(pack_epoch(indices, lengths, capacity, seed, epoch), world_size, lengths)


def packing_efficiency(plan: list[list[list[int]]], lengths: Sequence[int] | np.ndarray, capacity: int) -> float:
    """Share of non-padding tokens over all rows of a plan (lengths clipped to the row)."""
    rows = [row for batch in plan for row in batch]
    if not rows:
        return 0.0
    used = sum(min(sum(min(int(lengths[i]), capacity) for i in row), capacity) for row in rows)
    return used / (len(rows) * capacity)


def collate(
    samples: Sequence[dict[str, torch.Tensor]],
    total_seq_len: int,
    dtype: torch.dtype = torch.bfloat16,
    widths: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Pack samples back to back into one row: a dict of [1, total_seq_len, ...] tensors.

    Hidden-state buffers are allocated directly in ``dtype`` (the cast is fused into the
    copy). ``position_ids`` come from each sample (per document); ``document_ids`` are
    0..n-1 per sample and -1 on padding, so attention never crosses documents. Samples
    that do not fit are truncated at the budget. ``widths`` = (A*H, H) shapes an
    all-padding row when every sample of it was dropped.
    """
    T = total_seq_len
    first = next((s for s in samples if s["input_ids"].numel()), None)
    if first is not None:
        A, H = first["hidden_states"].shape[-1], first["verifier_last_hidden_states"].shape[-1]
    else:
        A, H = widths or (0, 0)
    out = {
        "input_ids": torch.zeros(T, dtype=torch.long),
        "loss_mask": torch.zeros(T, dtype=torch.long),
        "hidden_states": torch.zeros(T, A, dtype=dtype),
        "verifier_last_hidden_states": torch.zeros(T, H, dtype=dtype),
        "position_ids": torch.zeros(T, dtype=torch.long),
        "document_ids": torch.full((T,), -1, dtype=torch.long),
    }
    pos, doc = 0, 0
    for s in samples:
        n = min(int(s["input_ids"].shape[0]), T - pos)
        if n <= 0:
            continue
        for key in KEYS:
            out[key][pos : pos + n] = s[key][:n]
        out["document_ids"][pos : pos + n] = doc
        pos += n
        doc += 1
    return {k: v.unsqueeze(0) for k, v in out.items()}


def add_uniform_noise(sample: dict[str, torch.Tensor], std: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``hidden_states + U(-std, std)`` (computed in float32); targets are never noised."""
    h = sample["hidden_states"]
    noise = (torch.rand(h.shape, generator=generator, dtype=torch.float32) * 2 - 1) * std
    return {**sample, "hidden_states": h.float() + noise}
