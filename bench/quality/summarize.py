"""Result files of bench/quality/run.sh (standard library only: runs under any python3).

``summarize.py train spectool|speculators RUN SAVE``
    One training run as JSON on stdout: the checkpoint to serve, optimizer steps, the last
    validation (names without speculators' ``_epoch`` suffix), wall / CPU time and peak RSS of
    the training process, and the draft config fields where the two trainers' defaults differ.
``summarize.py table RESULTS_DIR [VLLM_SUFFIX]``
    Joins train-/eval-/vllm-<run>.json into RESULTS_DIR/quality.json and quality.md (one column
    per run; spectool/speculators ratios of the vLLM and in-process AL for each pair) and prints
    the markdown.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CONFIG_FIELDS = ("norm_before_fc", "norm_output", "fc_norm", "norm_before_residual", "embed_requires_grad",
                 "block_size", "max_anchors", "num_depths", "mask_token_id", "draft_vocab_size")


def _config(ckpt: Path) -> dict:
    cfg = json.loads((ckpt / "config.json").read_text())
    nested = {**cfg.get("dflash_config", {}), **cfg}
    out = {k: nested[k] for k in CONFIG_FIELDS if k in nested}
    out["speculators_model_type"] = cfg.get("speculators_model_type")
    out["dtype"] = cfg.get("dtype", cfg.get("torch_dtype"))
    return out


def train_record(side: str, run: str, save: Path) -> dict:
    rec: dict = {"run": run, "side": side, "save_path": str(save)}
    if side == "spectool":
        ckpt = (save / "latest").resolve()
        state = json.loads((ckpt / "trainer_state" / "state.json").read_text())
        rec["steps"] = state["global_step"]
        rec["val"] = state.get("val") or {}
    else:
        epochs = sorted((p for p in (save / "checkpoints").iterdir() if p.is_dir() and not p.is_symlink() and p.name.isdigit()),
                        key=lambda p: int(p.name))
        ckpt = epochs[-1]
        records = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines() if line.strip()]
        steps = [r for r in records if "train" in r]
        vals = [r["val"] for r in records if "val" in r]
        rec["steps"] = len(steps)
        # --max-steps: speculators still runs one step per remaining epoch (at lr 0 once the
        # schedule has ended); counted apart so the budget comparison stays honest.
        rec["steps_at_lr_0"] = sum(1 for r in steps if r.get("lr") == 0)
        rec["val"] = {k.removesuffix("_epoch"): v for k, v in (vals[-1] if vals else {}).items()}
    rec["checkpoint"] = str(ckpt)
    rec["config"] = _config(ckpt)
    time_file = save / "time.json"
    if time_file.is_file():
        rec.update(json.loads(time_file.read_text()))
    return rec


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def table(res: Path, vsfx: str) -> str:
    runs = sorted(p.name[len("train-"):-len(".json")] for p in res.glob("train-*.json"))
    rows: dict[str, dict] = {}
    for run in runs:
        tr, ev, vl = _load(res / f"train-{run}.json"), _load(res / f"eval-{run}.json"), _load(res / f"vllm-{run}{vsfx}.json")
        ho = (_load(res / f"heldout-{run}.json") or {}).get("heldout", {}).get(run)
        rows[run] = {
            "side": tr["side"],
            "steps": tr["steps"],
            "steps_at_lr_0": tr.get("steps_at_lr_0", 0),
            "final_val_loss": tr["val"].get("loss"),
            "final_val_full_acc": [tr["val"][k] for k in sorted(tr["val"]) if k.startswith("full_acc_")] or tr["val"].get("full_acc"),
            "train_wall_s": tr.get("wall_s"),
            "train_cpu_s": tr.get("cpu_s"),
            "train_max_rss_mb": tr.get("max_rss_mb"),
            "config": tr["config"],
            "checkpoint": tr["checkpoint"],
            "inprocess_al": ev["acceptance_length"] if ev else None,
            "inprocess_per_position": ev["per_position_acceptance"] if ev else None,
            "simulated_al": ev["simulated"]["acceptance_length"] if ev and ev.get("simulated") else None,
            "vllm_al": vl["acceptance_length"] if vl else None,
            "vllm_per_position": vl["per_position_acceptance"] if vl else None,
            "vllm_drafts": vl["drafts"] if vl else None,
            "vllm_tokens_per_s": vl["spec"]["tokens_per_s"] if vl else None,
            "heldout_loss": ho["loss"] if ho else None,
            "heldout_full_acc": [ho[k] for k in sorted(ho) if k.startswith("full_acc_")] if ho else None,
            "heldout_al": ho["acceptance_length"] if ho else None,
        }
    base = _load(res / f"vllm-baseline{vsfx}.json")
    ratios = {}
    for run, r in rows.items():
        ref = rows.get(f"speculators-{run}")
        if r["side"] == "spectool" and ref:
            ratios[run] = {k: (r[k] / ref[k] if r[k] and ref[k] else None) for k in ("vllm_al", "inprocess_al", "heldout_al", "train_wall_s", "train_cpu_s")}
    out = {"runs": rows, "spectool_over_speculators": ratios, "baseline_tokens_per_s": base["tokens_per_s"] if base else None}
    (res / "quality.json").write_text(json.dumps(out, indent=1) + "\n")

    def f(x, nd=3):
        if x is None:
            return "-"
        if isinstance(x, list):
            return " / ".join(f(v, nd) for v in x)
        return f"{x:.{nd}f}" if isinstance(x, float) else str(x)

    lines = ["| | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
    spec = [
        ("trainer", lambda r: r["side"]),
        ("optimizer steps (at lr 0)", lambda r: f"{r['steps']}" + (f" ({r['steps_at_lr_0']})" if r["steps_at_lr_0"] else "")),
        ("final val loss", lambda r: f(r["final_val_loss"])),
        ("final val full_acc per step/position", lambda r: f(r["final_val_full_acc"])),
        ("training wall / CPU s", lambda r: f"{f(r['train_wall_s'], 0)} / {f(r['train_cpu_s'], 0)}"),
        ("training peak RSS MB", lambda r: f(r["train_max_rss_mb"])),
        ("**vLLM AL**" + (f" ({vsfx[1:]})" if vsfx else ""), lambda r: f"**{f(r['vllm_al'])}**"),
        ("vLLM per-position acceptance", lambda r: f(r["vllm_per_position"])),
        ("in-process AL", lambda r: f(r["inprocess_al"])),
        ("simulated AL (held-out)", lambda r: f(r["simulated_al"])),
        ("held-out loss, one evaluator (heldout.py)", lambda r: f(r["heldout_loss"])),
        ("held-out full_acc, one evaluator", lambda r: f(r["heldout_full_acc"])),
        ("held-out simulated AL, one evaluator", lambda r: f(r["heldout_al"])),
        ("vLLM tokens/s", lambda r: f(r["vllm_tokens_per_s"], 1)),
        ("norm_before_fc / norm_output", lambda r: f"{r['config'].get('norm_before_fc', '-')} / {r['config'].get('norm_output', '-')}"),
    ]
    for name, get in spec:
        lines.append(f"| {name} | " + " | ".join(get(r) for r in rows.values()) + " |")
    for run, q in ratios.items():
        lines.append(f"\n{run}: spectool / speculators vLLM AL {f(q['vllm_al'])}, in-process AL {f(q['inprocess_al'])}, "
                     f"held-out AL {f(q['heldout_al'])}, "
                     f"training wall {f(q['train_wall_s'], 2)}, CPU {f(q['train_cpu_s'], 2)}")
    if any(r["side"] == "spectool" and r["final_val_loss"] is None for r in rows.values()):
        lines.append("\nspectool validates at the end of an epoch only: none under --max-steps that stops mid-epoch.")
    if any(r["steps_at_lr_0"] for r in rows.values()):
        lines.append("\n(at lr 0): speculators' --max-steps still runs one step per remaining epoch, after its schedule ended.")
    if base:
        lines.append(f"\nvLLM without speculation: {base['tokens_per_s']:.1f} tokens/s")
    md = "\n".join(lines) + "\n"
    (res / "quality.md").write_text(md)
    return md


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    if cmd == "train":
        print(json.dumps(train_record(rest[0], rest[1], Path(rest[2])), indent=1))
    elif cmd == "table":
        print(table(Path(rest[0]), rest[1] if len(rest) > 1 else ""), end="")
    else:
        sys.exit(f"unknown command {cmd!r}: train or table")
