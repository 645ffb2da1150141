"""vLLM's Prometheus text format: samples, and the spec-decode counters summed over label sets."""

from __future__ import annotations

import re

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfINFaN]+)(\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
SPEC_COUNTERS = ("num_drafts", "num_draft_tokens", "num_accepted_tokens")


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            labels = dict(_LABEL.findall(m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def spec_decode_counters(text: str) -> dict[str, float]:
    """Sum of vLLM's spec-decode counters over label sets (engines, models); per-position
    accepted tokens as ``accepted_pos_{i}``."""
    totals: dict[str, float] = {}
    for name, labels, value in parse_prometheus(text):
        if not name.startswith("vllm:spec_decode_") or not name.endswith("_total"):
            continue
        base = name[len("vllm:spec_decode_") : -len("_total")]
        if "position" in labels:
            key = f"accepted_pos_{int(labels['position'])}" if "per_pos" in base else None
            if key is None:
                continue
        elif base in SPEC_COUNTERS:
            key = base
        else:
            continue
        totals[key] = totals.get(key, 0.0) + value
    return totals
