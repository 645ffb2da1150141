"""Loss region cost: spectool's chunked loss vs the plain unchunked (eager) computation and
the previous chunked version (commit PREVIOUS), forward + backward from the lm_head output, fp32 on CPU,
1 thread. Peak is the memory high-water mark above the set-up (VmHWM after clear_refs),
each case in its own process, with glibc's mmap threshold fixed so freed buffers leave the
resident set (otherwise the allocator's cache hides or inflates the peak).

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/loss_memory.py [--out bench/results/loss_memory.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SIZES = [(512, 8192), (2048, 8192), (2048, 32000), (8192, 8192)]
WEIGHTED = [1.0, 0.5]  # share of rows with weight (1.0: the loss gets supervised rows only)
IMPLS = ["eager", "previous", "spectool"]
HIDDEN = 256
PREVIOUS = "f1278afd8e1d7e4125305ea8f4c5a5f65922508b"  # the last commit with the previous chunked loss (row gather, 16 MiB chunks)


def _hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def eager_kl(logits, targets, weight):
    """The unchunked computation (as speculators' eager reference): fp32 softmaxes, autograd."""
    import torch

    log_q = torch.log_softmax(logits.float(), -1)
    p = torch.softmax(targets.float(), -1)
    per_row = torch.nn.functional.kl_div(log_q, p, reduction="none").sum(-1)
    return (per_row * weight).sum()


def child(impl: str, T: int, D: int, weighted: float) -> dict:
    import torch

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(T, HIDDEN, generator=g, requires_grad=True)
    head = torch.randn(D, HIDDEN, generator=g) / HIDDEN**0.5
    targets = torch.randn(T, D, generator=g) * 2
    weight = (torch.rand(T, generator=g) < weighted).float() / T
    if impl == "spectool":
        from spectool.losses import weighted_loss

        fn = lambda x: weighted_loss(x, targets, weight, "kl")[0]
    elif impl == "previous":
        import importlib.util

        src = subprocess.run(["git", "show", f"{PREVIOUS}:src/spectool/losses.py"], capture_output=True, text=True, check=True).stdout
        path = Path("/tmp/_previous_losses.py")
        path.write_text(src)
        spec = importlib.util.spec_from_file_location("_previous_losses", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        fn = lambda x: mod.weighted_divergence(x, targets, weight, "kl")
    else:
        fn = lambda x: eager_kl(x, targets, weight)

    def step():
        loss = fn(h @ head.T)
        loss.backward()
        h.grad = None
        return loss

    step()  # warm-up (allocator, lazy imports)
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_kib()
    times = []
    for _ in range(3):
        t0 = time.process_time()
        value = float(step().detach())
        times.append(time.process_time() - t0)
    return {"impl": impl, "T": T, "D": D, "weighted": weighted, "peak_mib": (_hwm_kib() - base) / 1024, "cpu_s": min(times), "loss": value}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/loss_memory.md")
    ap.add_argument("--child", nargs=4)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), int(a.child[2]), float(a.child[3]))))
        return
    rows = []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    for (T, D), w, impl in ((size, w, impl) for size in SIZES for w in WEIGHTED for impl in IMPLS):
        out = subprocess.run([sys.executable, __file__, "--child", impl, str(T), str(D), str(w)], capture_output=True, text=True, check=True, env=env)
        rows.append(json.loads(out.stdout))
        print(rows[-1], flush=True)
    lines = ["# Loss region: forward + backward from the lm_head output (forward KL, fp32, CPU, 1 thread)", "",
             f"Command: `PYTHONPATH=src OMP_NUM_THREADS=1 python bench/loss_memory.py` (hidden {HIDDEN}). \"weighted\": share of rows",
             "with non-zero weight (the eager computation does every row; spectool and the previous version skip the others on CPU).",
             "Peak: memory high-water mark above the state before the step (logits, softmaxes, gradients). CPU s: best of 3.", "",
             "| T | D | weighted | eager peak MiB | previous peak MiB | spectool peak MiB | eager CPU s | previous CPU s | spectool CPU s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (T, D), w in ((size, w) for size in SIZES for w in WEIGHTED):
        r = {x["impl"]: x for x in rows if x["T"] == T and x["D"] == D and x["weighted"] == w}
        lines.append(f"| {T} | {D} | {w:g} | " + " | ".join(f"{r[i]['peak_mib']:.0f}" for i in IMPLS) + " | "
                     + " | ".join(f"{r[i]['cpu_s']:.3f}" for i in IMPLS) + " |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
