"""What ``--loss`` may say, checked without importing torch (the CLI validates options
before loading anything heavy); the losses themselves are in :mod:`spectool.losses`."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from spectool.errors import SpectoolError

TERMS = ("kl", "rkl", "jsd", "ce", "tv", "lk", "lk_hybrid")
ALIASES = {"kl_div": "kl", "nla": "lk"}  # the reference trainer's names
_EXAMPLE = '\'{"ce": 0.1, "tv": 0.9}\''


class LossSpecError(SpectoolError, ValueError):
    """A --loss value that names no loss; the message lists the valid ones."""


def parse_loss(spec: str | Mapping[str, float]) -> dict[str, float]:
    """``{term: weight}`` of a loss spec: a name (weight 1) or a JSON object of weights."""
    if isinstance(spec, str):
        name = ALIASES.get(spec.strip(), spec.strip())
        if name in TERMS:
            return {name: 1.0}
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError:
            raise LossSpecError(f"--loss {spec!r} is neither a loss nor a JSON mix: use one of {', '.join(TERMS)}, or weights like {_EXAMPLE}") from None
    if not isinstance(spec, Mapping) or not spec:
        raise LossSpecError(f"--loss must be one of {', '.join(TERMS)} or a non-empty JSON object of weights like {_EXAMPLE}")
    mix: dict[str, float] = {}
    for key, weight in spec.items():
        name = ALIASES.get(key, key)
        if name not in TERMS:
            raise LossSpecError(f"--loss term {key!r} is unknown: use {', '.join(TERMS)}")
        if name in mix:
            raise LossSpecError(f"--loss names {name!r} twice (as {key!r} too): give each term once")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise LossSpecError(f"--loss weight of {key!r} must be a finite number >= 0, got {weight!r}")
        mix[name] = float(weight)
    if not any(mix.values()):
        raise LossSpecError("--loss weights are all zero: give at least one term a positive weight")
    return mix
