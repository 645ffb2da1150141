"""What a checkpoint, config or vocab-mapping directory holds, and whether vLLM will load it
and serve it right.

The verdict checks a draft against vLLM's key contract (the config fields vLLM requires,
exactly the tensor names the draft model knows, shapes implied by the config, the dtypes of
d2t/t2d) and then every invariant of the format that its algorithm's plug-in states
(``SpeculatorPlugin.checkpoint_problems``: d2t/t2d consistent, aux ids inside the
verifier, finite weights, ...). Each problem is one line; unreadable input (random bytes,
symlink loops, oversized files) is a problem or a one-line :class:`InspectError`, never a
traceback.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from spectool.errors import SpectoolError
from spectool.models import CONFIG, WEIGHTS, expected_tensors, plugin_for
from spectool.models.config import SpeculatorConfig, SpeculatorConfigError

REQUIRED_FIELDS = ("speculators_model_type", "transformer_layer_config", "draft_vocab_size", "speculators_config")
MAX_JSON_BYTES = 16 << 20  # a draft config.json is a few kB; anything this large is not one


class InspectError(SpectoolError):
    """The path cannot be inspected at all (unreadable, a symlink loop)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_json(path: Path) -> tuple[Any, str | None]:
    """(parsed JSON, None) or (None, one-line problem); the size is checked before reading."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            return None, f"{path.name} is {size / 2**20:,.0f} MiB: not a speculator config (at most {MAX_JSON_BYTES >> 20} MiB)"
        return json.loads(path.read_bytes().decode("utf-8")), None
    except UnicodeDecodeError:
        return None, f"{path.name} is not text (binary data): not a speculator config"
    except ValueError as exc:
        return None, f"{path.name} is not valid JSON ({_first_line(exc)})"
    except OSError as exc:
        return None, f"{path.name} cannot be read ({exc.strerror or _first_line(exc)})"


def verifier_layers(spec: SpeculatorConfig) -> int | None:
    """The verifier's layer count when its config is a local directory (inspect stays offline)."""
    from spectool.verifier import VerifierError, load_verifier_info

    if not spec.verifier_name_or_path or not Path(spec.verifier_name_or_path).is_dir():
        return None
    try:
        return load_verifier_info(spec.verifier_name_or_path).num_layers
    except VerifierError:
        return None


def _config_problems(data: Any) -> tuple[SpeculatorConfig | None, list[str]]:
    if not isinstance(data, dict):
        return None, [f"config.json holds a {type(data).__name__}, not a JSON object: not a speculator config"]
    problems = [f"config.json lacks {key}" for key in REQUIRED_FIELDS if key not in data]
    spec = None
    try:
        spec = SpeculatorConfig.from_json(data)
    except SpeculatorConfigError as exc:
        problems.append(_first_line(exc))
    if spec is not None:
        problems += [f"config.json must state {key} explicitly (vLLM's default differs)" for key in spec.explicit_fields if key not in data]
        if len(data["speculators_config"].get("proposal_methods", [])) != 1:
            problems.append("speculators_config must hold exactly one proposal method")
    return spec, problems


def _config_report(path: Path) -> tuple[dict[str, Any], SpeculatorConfig | None]:
    data, problem = read_json(path)
    spec, problems = (None, [problem]) if problem else _config_problems(data)
    report: dict[str, Any] = {"kind": "config", "path": str(path), "problems": problems}
    if spec is not None:
        report.update(_summary(spec), verifier_layers=verifier_layers(spec))
    report["valid"] = not problems
    return report, spec


def inspect_config(path: Path) -> dict[str, Any]:
    """Summary and verdict of a draft config.json (the invariants that need no weights)."""
    report, spec = _config_report(path)
    if spec is not None:
        report["problems"] += plugin_for(spec).checkpoint_problems(spec, {}, report["verifier_layers"])
        report["valid"] = not report["problems"]
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
        **plugin_for(spec).summary(spec),
    }


def _read_header(weights: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}


def inspect_checkpoint(directory: Path) -> dict[str, Any]:
    """Summary and vLLM-compatibility verdict of a draft checkpoint directory."""
    from safetensors.torch import load_file

    report, spec = _config_report(directory / CONFIG)
    report.update(kind="checkpoint", path=str(directory))
    problems: list[str] = report["problems"]
    weights = directory / WEIGHTS
    report["files"] = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
    if not weights.is_file():
        problems.append(f"{WEIGHTS} is missing")
        report["valid"] = False
        return report
    try:
        found = _read_header(weights)
    except Exception as exc:  # safetensors raises its own error types, OSError and ValueError
        problems.append(f"{WEIGHTS} cannot be read ({_first_line(exc)}): not a safetensors file")
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
    if spec is not None:
        header_problems: list[str] = []
        try:
            expected = expected_tensors(spec)
        except Exception as exc:  # transformers' config classes raise many types on odd values
            expected = {}
            header_problems.append(f"the draft model cannot be built from config.json ({_first_line(exc)})")
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        if missing:
            header_problems.append(f"missing tensors vLLM needs: {', '.join(missing)}")
        if extra:
            header_problems.append(f"unknown tensors vLLM would reject: {', '.join(extra)}")
        want_dtype = {"d2t": "I64", "t2d": "BOOL"}
        for name in set(expected) & set(found):
            if found[name][0] != expected[name][0]:
                header_problems.append(f"{name} has shape {list(found[name][0])}, config implies {list(expected[name][0])}")
            if name in want_dtype and found[name][1] != want_dtype[name]:
                header_problems.append(f"{name} must be {want_dtype[name]}, found {found[name][1]}")
        problems += header_problems
        try:
            tensors = load_file(str(weights)) if not header_problems else {}
        except Exception as exc:  # a valid header over truncated data
            tensors = {}
            problems.append(f"{WEIGHTS} cannot be read ({_first_line(exc)}): the file is damaged")
        problems += plugin_for(spec).checkpoint_problems(spec, tensors, report["verifier_layers"])
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

    try:
        run = yaml.safe_load((directory / "run.yaml").read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InspectError(f"{directory / 'run.yaml'} cannot be read ({_first_line(exc)}): not a spectool run directory") from None
    if not isinstance(run, dict):
        raise InspectError(f"{directory / 'run.yaml'} is not a run configuration: not a spectool run directory")
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

    if path.is_symlink() and not path.exists():
        raise InspectError(f"{path} is a symlink loop or points to nothing: inspect its target")
    if path.is_file():
        return "config" if path.suffix == ".json" else "unknown"
    if not path.is_dir():
        return "missing"
    if is_processed_dataset(path):
        return "data"
    if _present(path / CONFIG):
        return "checkpoint" if _present(path / WEIGHTS) else "config"
    if (path / "run.yaml").is_file():
        return "run"
    if any(path.glob("d2t*.npy")):
        return "vocab"
    return "unknown"


def _present(path: Path) -> bool:
    """A file, or a link that should be one (a loop is then reported as unreadable)."""
    return path.is_file() or path.is_symlink()
