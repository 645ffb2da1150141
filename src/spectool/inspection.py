"""What a checkpoint, config or vocab-mapping directory holds, and whether vLLM will load it.

The compatibility verdict checks a draft against vLLM's key contract: the config fields
vLLM requires, exactly the tensor names the draft model knows (nothing missing, nothing
extra such as verifier_* or optimizer state), shapes implied by the config, the dtypes of
d2t/t2d and a mask token inside the vocabulary.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from spectool.models import CONFIG, WEIGHTS, expected_tensors
from spectool.models.config import SpeculatorConfig, SpeculatorConfigError

REQUIRED_FIELDS = ("speculators_model_type", "transformer_layer_config", "draft_vocab_size", "speculators_config")


def _config_problems(data: dict[str, Any]) -> tuple[SpeculatorConfig | None, list[str]]:
    problems = [f"config.json lacks {key}" for key in REQUIRED_FIELDS if key not in data]
    spec = None
    try:
        spec = SpeculatorConfig.from_json(data)
    except SpeculatorConfigError as exc:
        problems.append(str(exc))
    if spec is not None:
        kind = spec.speculator_type
        explicit = ("norm_before_residual",) if kind == "eagle3" else ("sliding_window_non_causal", "mask_token_id")
        problems += [f"config.json must state {key} explicitly (vLLM's default differs)" for key in explicit if key not in data]
        if len(data["speculators_config"].get("proposal_methods", [])) != 1:
            problems.append("speculators_config must hold exactly one proposal method")
    return spec, problems


def inspect_config(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    spec, problems = _config_problems(data)
    report: dict[str, Any] = {"kind": "config", "path": str(path), "problems": problems, "valid": not problems}
    if spec is not None:
        report.update(_summary(spec))
    return report


def _summary(spec: SpeculatorConfig) -> dict[str, Any]:
    return {
        "speculator_type": spec.speculator_type,
        "verifier": spec.verifier_name_or_path,
        "verifier_architectures": spec.verifier_architectures,
        "aux_layer_ids": spec.aux_layer_ids,
        "draft_layers": spec.num_layers,
        "draft_arch": spec.layer_config.get("model_type"),
        "hidden_size": spec.hidden_size,
        "vocab_size": spec.vocab_size,
        "draft_vocab_size": spec.draft_vocab_size,
        "speculative_tokens": spec.speculative_tokens,
        "mask_token_id": spec.mask_token_id,
    }


def inspect_checkpoint(directory: Path) -> dict[str, Any]:
    """Summary and vLLM-compatibility verdict of a draft checkpoint directory."""
    from safetensors import safe_open

    report = inspect_config(directory / CONFIG)
    report.update(kind="checkpoint", path=str(directory))
    problems: list[str] = report["problems"]
    weights = directory / WEIGHTS
    report["files"] = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
    if not weights.is_file():
        problems.append(f"{WEIGHTS} is missing")
        report["valid"] = False
        return report
    try:
        with safe_open(str(weights), framework="pt") as f:
            found = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except Exception as exc:
        problems.append(f"{WEIGHTS} cannot be read: {exc}")
        report["valid"] = False
        return report
    params: dict[str, int] = defaultdict(int)
    dtypes: dict[str, int] = defaultdict(int)
    for name, (shape, dtype) in found.items():
        count = 1
        for d in shape:
            count *= d
        params[name.split(".")[0] if not name.startswith("layers.") else ".".join(name.split(".")[:2])] += count
        dtypes[dtype] += count
    report["parameters"] = dict(params)
    report["total_parameters"] = sum(params.values())
    report["dtypes"] = dict(dtypes)
    spec = SpeculatorConfig.from_json(json.loads((directory / CONFIG).read_text())) if not problems else None
    if spec is not None:
        expected = expected_tensors(spec)
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        if missing:
            problems.append(f"missing tensors vLLM needs: {', '.join(missing)}")
        if extra:
            problems.append(f"unknown tensors vLLM would reject: {', '.join(extra)}")
        want_dtype = {"d2t": "I64", "t2d": "BOOL"}
        for name in set(expected) & set(found):
            if found[name][0] != expected[name][0]:
                problems.append(f"{name} has shape {list(found[name][0])}, config implies {list(expected[name][0])}")
            if name in want_dtype and found[name][1] != want_dtype[name]:
                problems.append(f"{name} must be {want_dtype[name]}, found {found[name][1]}")
    report["valid"] = not problems
    return report


def inspect_vocab_dir(directory: Path) -> dict[str, Any]:
    from spectool.vocab import VocabError, load_vocab_mapping

    report: dict[str, Any] = {"kind": "vocab", "path": str(directory), "problems": []}
    pairs = sorted(directory.glob("d2t*.npy"))
    report["mappings"] = []
    for d2t in pairs:
        t2d = d2t.with_name("t2d" + d2t.name[3:])
        try:
            mapping = load_vocab_mapping(d2t, t2d)
            report["mappings"].append({"d2t": d2t.name, "t2d": t2d.name, "draft_vocab_size": mapping.draft_vocab_size, "target_vocab_size": mapping.target_vocab_size})
        except VocabError as exc:
            report["problems"].append(str(exc))
    report["valid"] = not report["problems"]
    return report


def inspect_run(directory: Path) -> dict[str, Any]:
    """A training run: its configuration, every complete checkpoint (with the validation
    metrics it recorded and its own vLLM verdict), which one ``latest``/``best`` point at,
    and incomplete writes that resume ignores."""
    import yaml

    from spectool.engine.checkpoint import COMPLETE, STATE, CheckpointManager

    run = yaml.safe_load((directory / "run.yaml").read_text()) or {}
    manager = CheckpointManager(directory)
    links = {name: (directory / name).resolve().name for name in ("latest", "best") if (directory / name).is_symlink()}
    checkpoints = []
    for path in manager.complete():
        state_file = path / STATE / "state.json"
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        verdict = inspect_checkpoint(path)
        checkpoints.append({
            "name": path.name,
            "epoch": None if state.get("epoch") is None else state["epoch"] + 1,  # 1-based, as the log
            "global_step": state.get("global_step"),
            "val_loss": state.get("val", {}).get("loss"),
            "val_acceptance_length": state.get("val", {}).get("acceptance_length"),
            "links": [name for name, target in links.items() if target == path.name],
            "valid": verdict["valid"],
            "problems": verdict["problems"],
        })
    incomplete = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.is_symlink() and not (p / COMPLETE).is_file() and p.name != "logs")
    problems = [f"{c['name']}: {problem}" for c in checkpoints for problem in c["problems"]]
    if not checkpoints:
        problems.append("no complete checkpoint yet")
    model = run.get("model", {})
    return {
        "kind": "run",
        "path": str(directory),
        "speculator_type": model.get("speculator_type"),
        "verifier": model.get("verifier_name_or_path"),
        "data_path": run.get("data", {}).get("data_path"),
        "checkpoints": checkpoints,
        "incomplete_ignored": incomplete,
        "problems": problems,
        "valid": not problems,
    }


def detect_kind(path: Path) -> str:
    """checkpoint | config | vocab | data | run | unknown"""
    from spectool.data.dataset import is_processed_dataset

    if path.is_file():
        return "config" if path.suffix == ".json" else "unknown"
    if not path.is_dir():
        return "missing"
    if is_processed_dataset(path):
        return "data"
    if (path / CONFIG).is_file():
        return "checkpoint" if (path / WEIGHTS).is_file() else "config"
    if (path / "run.yaml").is_file():
        return "run"
    if any(path.glob("d2t*.npy")):
        return "vocab"
    return "unknown"
