"""Startup benchmark of the CLI: --help of every command, shell completion, and the time to
the first error of bad invocations (wall time of a fresh process each, median and min of N).

    python bench/startup.py [--runs 7] [--out bench/results/startup.md]

Goals (issue 11): every --help and completion under 0.3 s; a wrong option answers in
under 1 s. The machine's load is recorded beside the numbers: on a shared machine compare
the min and CPU columns (CPU = user + system time of the process, which load inflates least).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELP = [[], ["data"], ["data", "prepare"], ["data", "generate"], ["vocab"], ["vocab", "build"], ["init"],
        ["train"], ["resume"], ["inspect"], ["eval"], ["vllm"], ["vllm", "launch"]]
COMPLETION = {
    "spectool in<TAB>": "spectool in",
    "spectool train --logger <TAB>": "spectool train --logger ",
    "spectool train --speculator-type <TAB>": "spectool train --speculator-type ",
}


def bad_invocations(tmp: Path) -> dict[str, list[str]]:
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("training:\n  epoch: 3\n")
    return {
        "train (no options)": ["train"],
        "train --speculator-type eagle": ["train", "--speculator-type", "eagle", "--verifier-name-or-path", str(tmp)],
        "train --verifier-name-or-path org/not-cached (offline)": ["train", "--verifier-name-or-path", "org/not-cached"],
        "inspect nope": ["inspect", "nope"],
        "train --config (unknown key)": ["train", "--config", str(bad_yaml)],
    }


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], env: dict[str, str], runs: int) -> tuple[float, float, float, int]:
    """(median wall, min wall, median CPU seconds of the process, exit status)."""
    times, cpu, code = [], [], 0
    for _ in range(runs):
        start, cpu0 = time.perf_counter(), _child_cpu()
        proc = subprocess.run([sys.executable, "-m", "spectool", *argv], env=env, capture_output=True)
        times.append(time.perf_counter() - start)
        cpu.append(_child_cpu() - cpu0)
        code = proc.returncode
    return statistics.median(times), min(times), statistics.median(cpu), code


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "startup.md"))
    a = p.parse_args()
    env = {**os.environ, "COLUMNS": "80", "HF_HUB_OFFLINE": "1"}
    rows: list[tuple[str, str, float, float, float, int]] = []
    for words in HELP:
        rows.append(("help", " ".join(["spectool", *words, "--help"]), *timed([*words, "--help"], env, a.runs)))
    for label, line in COMPLETION.items():
        cenv = {**env, "_SPECTOOL_COMPLETE": "complete_bash", "COMP_WORDS": line,
                "COMP_CWORD": str(len(line.split()) - (0 if line.endswith(" ") else 1))}
        rows.append(("completion", label, *timed([], cenv, a.runs)))
    with tempfile.TemporaryDirectory() as tmp:
        for label, argv in bad_invocations(Path(tmp)).items():
            rows.append(("first error", label, *timed(argv, env, a.runs)))
    load = os.getloadavg()
    lines = [
        "# CLI startup (wall seconds per fresh process)",
        "",
        f"`python bench/startup.py --runs {a.runs}` on {os.cpu_count()} CPUs, load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min), python {sys.version.split()[0]}.",
        "Goals: --help and completion < 0.3 s; a wrong option answers < 1 s.",
        "",
        "| kind | invocation | median wall s | min wall s | median CPU s | exit |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {kind} | `{label}` | {med:.3f} | {low:.3f} | {cpu:.3f} | {code} |" for kind, label, med, low, cpu, code in rows]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
