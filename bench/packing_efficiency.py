"""Share of non-padding tokens of the packing plan on realistic length distributions.

Distributions: lognormal chat lengths (median ~300 tokens, tail clipped at 8k) and the
kit's SmolLM2 regenerated chats (prompt + reply, ~4 characters per token). Writes
bench/results/packing.md and prints it.

    .venv/bin/python bench/packing_efficiency.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from spectool.data.packing import packing_efficiency, plan_epoch

KIT = Path("/work/shared/kit/regen")
OUT = Path(__file__).parent / "results" / "packing.md"


def lognormal(n: int = 20000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(300), 1.0, n), 16, 8192).astype(np.int64)


def kit_lengths() -> np.ndarray | None:
    """Character-based estimate (4 chars/token + 5 template tokens per turn) of the kit's chats."""
    lengths = []
    for f in sorted(KIT.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            turns = json.loads(line).get("conversations", [])
            lengths.append(sum(len(t["content"]) // 4 + 5 for t in turns))
    return np.asarray(lengths, dtype=np.int64) if lengths else None


def main() -> None:
    dists = {"lognormal (median 300, tail to 8k), 20k samples": lognormal()}
    kit = kit_lengths()
    if kit is not None:
        dists[f"kit SmolLM2 regen chats ({len(kit)} samples, median {int(np.median(kit))})"] = kit
    lines = ["# Packing efficiency (share of non-padding tokens)", "",
             "| lengths | total_seq_len | ranks | batches/rank | non-padding | plan time |", "|---|---|---|---|---|---|"]
    for name, lengths in dists.items():
        for T in (8192, 2048):
            for ranks in (1, 4):
                t0 = time.perf_counter()
                plan = plan_epoch(range(len(lengths)), lengths, T, ranks, seed=42, epoch=0)
                dt = time.perf_counter() - t0
                eff = packing_efficiency(plan, lengths, T)
                lines.append(f"| {name} | {T} | {ranks} | {len(plan)} | {eff:.2%} | {dt:.2f} s |")
    text = "\n".join(lines) + "\n"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
