"""Draft models: the one reader/writer of draft checkpoints (config.json + model.safetensors
in the speculators format that vLLM loads as it is). Each algorithm is a plug-in package
``models/<algorithm>/`` reached through :mod:`spectool.models.registry`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from spectool.errors import SpectoolError
from spectool.fsutil import atomic_path, atomic_write
from spectool.models.base import DraftModel
from spectool.models.config import SpeculatorConfig, SpeculatorConfigError
from spectool.models.registry import get_plugin, plugin_for, plugins, register

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class CheckpointError(SpectoolError):
    """A draft checkpoint directory is missing, incomplete or inconsistent."""


def build_draft(config: SpeculatorConfig) -> DraftModel:
    return plugin_for(config).model_class(config)


def expected_tensors(config: SpeculatorConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Exactly the tensor names, shapes and saved dtypes vLLM expects for this config."""
    with torch.device("meta"):
        model = build_draft(config)
    return {name: (tuple(t.shape), _saved_dtype(t)) for name, t in model.state_dict().items()}


def _saved_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.bfloat16 if t.is_floating_point() else t.dtype


def save_draft(model: DraftModel, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write config.json and model.safetensors (floats in bf16, d2t int64, t2d bool), each
    atomically, so a kill during `spectool init` never leaves a truncated file.

    ``state_dict`` lets distributed training pass the gathered full state dict.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = state_dict if state_dict is not None else model.state_dict()
    tensors = {k: v.detach().to("cpu", _saved_dtype(v)).contiguous() for k, v in state.items()}
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic_write(directory / CONFIG, json.dumps(model.config.to_json(), indent=2) + "\n")
    return directory


def read_config(directory: str | Path) -> SpeculatorConfig:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path} not found: not a draft checkpoint (make one with `spectool init`)")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}): rewrite it with `spectool init`") from exc
    return SpeculatorConfig.from_json(data)


def load_draft(directory: str | Path, config: SpeculatorConfig | None = None) -> DraftModel:
    """Build the draft of ``directory/config.json`` and load its weights strictly (fp32)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config = config or read_config(directory)
    model = build_draft(config)
    path = directory / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path} not found: the checkpoint has no weights")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc}): use another checkpoint") from exc
    expected = expected_tensors(config)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, (shape, _) in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(f"{path}: tensor {name} has shape {list(tensors[name].shape)}, config implies {list(shape)}")
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in tensors.items()}, strict=True)
    return model


__all__ = [
    "CheckpointError",
    "DraftModel",
    "SpeculatorConfig",
    "SpeculatorConfigError",
    "build_draft",
    "expected_tensors",
    "get_plugin",
    "load_draft",
    "plugin_for",
    "plugins",
    "read_config",
    "register",
    "save_draft",
]
