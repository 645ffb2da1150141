"""Verifier layer ids, vLLM's convention, from flag to server: the one parser, the one
validator and the one default rule (used by train, init, data generate, vllm launch, eval).

Id k is the input of decoder layer k (HF ``output_hidden_states[k]``, 0 = the embeddings);
id L is the last layer's output before the final norm. The aux ids that feed a draft lie in
[0, L-1], ascending without repeats; L is always captured after them, for the targets.
No torch here: the CLI imports it to parse flags.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from spectool.errors import SpectoolError

FLAG = "--target-layer-ids"


class LayerIdError(SpectoolError, ValueError):
    """Layer ids that are not integers, not ascending, repeated or outside the verifier."""


def parse_layer_ids(values: str | Iterable[str] | None, flag: str = FLAG) -> list[int] | None:
    """``"2,4,5"``, ``"2 4 5"`` or ``["2", "4,5"]`` -> [2, 4, 5]; None/empty -> None (the default).
    ``flag`` names the option in the error (other integer-list options parse alike)."""
    if values is None:
        return None
    texts = [values] if isinstance(values, str) else list(values)
    tokens = [t for text in texts for t in re.split(r"[,\s]+", str(text).strip()) if t]
    if not tokens:
        return None
    try:
        return [int(t) for t in tokens]
    except ValueError:
        raise LayerIdError(f"{flag} takes integers separated by commas or spaces, got {' '.join(tokens)!r}: e.g. {flag} 2 4 5") from None


def default_layer_ids(num_layers: int) -> list[int]:
    """vLLM's default aux ids [2, L//2, L-3] (deduplicated and kept below L for shallow verifiers)."""
    return sorted({min(2, num_layers - 1), num_layers // 2, max(num_layers - 3, 0)})


def check_layer_ids(ids: Sequence[int], num_layers: int | None = None) -> list[int]:
    """Validate aux ids; ``num_layers`` None checks what can be checked without the verifier."""
    ids = list(ids)
    if not ids:
        raise LayerIdError(f"{FLAG} is empty: give at least one id, e.g. {FLAG} 2 4")
    if any(isinstance(k, bool) or not isinstance(k, int) for k in ids):
        raise LayerIdError(f"{FLAG} takes integers, got {ids}")
    if min(ids) < 0:
        raise LayerIdError(f"{FLAG} must be non-negative layer ids, got {ids}")
    if any(b <= a for a, b in zip(ids, ids[1:])):
        raise LayerIdError(f"{FLAG} must be strictly ascending without repeats (layers by depth), got {ids}: pass {sorted(set(ids))}")
    if num_layers is not None:
        if num_layers in ids:
            raise LayerIdError(f"{FLAG} must not include the final layer {num_layers}: it is appended for the targets; drop it")
        bad = [k for k in ids if k >= num_layers]
        if bad:
            raise LayerIdError(f"{FLAG} {bad} out of range: the verifier has {num_layers} layers, use ids in [0, {num_layers - 1}], e.g. {default_layer_ids(num_layers)}")
    return ids


def resolve_layer_ids(ids: Sequence[int] | None, num_layers: int) -> list[int]:
    """The aux ids of a run: the given ones, validated, or the default rule."""
    if num_layers < 1:
        raise LayerIdError(f"the verifier has {num_layers} layers; need at least 1")
    return default_layer_ids(num_layers) if ids is None else check_layer_ids(ids, num_layers)


def extraction_layer_ids(num_layers: int, ids: Sequence[int] | None = None) -> list[int]:
    """The ids a hidden-state file holds, by depth: the aux ids, then L (the targets)."""
    return [*resolve_layer_ids(ids, num_layers), num_layers]
