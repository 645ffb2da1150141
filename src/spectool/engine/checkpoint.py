"""Training checkpoints: each a servable vLLM dir plus the trainer state to resume exactly.

Layout under --save-path::

    run.yaml, train_command.txt
    epoch{E}_step{G}/            (E 1-based) config.json + model.safetensors (bf16; what vLLM loads)
        trainer_state/           master.safetensors (fp32 weights), optimizer.pt,
                                 scheduler.pt, rng.pt, state.json
        COMPLETE                 written last: only complete checkpoints are resumed
    latest -> epoch{E}_step{G}   best -> ...   (relative symlinks, replaced atomically)

A checkpoint is written into ``.tmp-<name>`` (every file fsynced, COMPLETE last), then
renamed into place, so a kill at any moment leaves the previous checkpoint as the latest
complete one. ``.pt`` files hold only tensors and plain containers and are read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectool.errors import SpectoolError
from spectool.models import DraftModel, save_draft

COMPLETE = "COMPLETE"
STATE = "trainer_state"
_NAME = re.compile(r"^epoch(\d+)_step(\d+)$")


def checkpoint_name(state: "TrainerState") -> str:
    """``epoch{E}_step{G}`` with E 1-based, as the log counts epochs (runs written before
    that used 0-based names; both are read, ordered by the global step)."""
    return f"epoch{state.epoch + 1}_step{state.global_step}"


class ResumeError(SpectoolError):
    """A checkpoint cannot be resumed; the message names the fix."""


@dataclass
class TrainerState:
    """Where the run stands. ``batch`` = batches of ``epoch`` consumed (== its length at epoch end)."""

    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    epoch_complete: bool = False
    best_value: float | None = None
    best_name: str | None = None
    val: dict[str, float] = field(default_factory=dict)


def rng_state() -> dict[str, Any]:
    """Global RNGs (python, numpy, torch CPU and CUDA) as weights_only-loadable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for d in [*sorted(p for p in root.rglob("*") if p.is_dir()), root]:
        _fsync_dir(d)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link(root: Path, name: str, target: str) -> None:
    """Point ``root/name`` at ``target`` atomically (relative symlink)."""
    tmp = root / f".{name}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, root / name)


class CheckpointManager:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ---- discovery -----------------------------------------------------------------
    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first (by global step)."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            m = _NAME.match(p.name)
            if m and not p.is_symlink() and (p / COMPLETE).is_file():
                found.append((int(m.group(2)), int(m.group(1)), p))
        return [p for *_, p in sorted(found)]

    def latest(self) -> Path | None:
        found = self.complete()
        return found[-1] if found else None

    # ---- writing (rank 0) ------------------------------------------------------------
    def save(
        self,
        model: DraftModel,
        weights: dict[str, torch.Tensor],
        optimizers: list[dict],
        schedulers: list[dict],
        state: TrainerState,
        extra_files: dict[str, str] | None = None,
    ) -> Path:
        """Write one checkpoint atomically and point ``latest`` at it."""
        name = checkpoint_name(state)
        final = self.root / name
        tmp = self.root / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        save_draft(model, tmp, state_dict=weights)
        sdir = tmp / STATE
        sdir.mkdir()
        _write_trainer_state(sdir, weights, optimizers, schedulers, state)
        for fname, text in (extra_files or {}).items():
            (tmp / fname).write_text(text)
        (tmp / COMPLETE).write_text(json.dumps({"global_step": state.global_step}) + "\n")
        _fsync_tree(tmp)
        if final.exists():
            old = self.root / f".old-{name}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(self.root)
        _link(self.root, "latest", name)
        return final

    def mark_best(self, path: Path) -> None:
        _link(self.root, "best", path.name)

    # ---- reading ---------------------------------------------------------------------
    def load(self, path: Path) -> tuple[dict[str, torch.Tensor], list[dict], list[dict], TrainerState, dict]:
        """(fp32 weights, optimizer states, scheduler states, trainer state, rng state)."""
        from safetensors.torch import load_file

        sdir = path / STATE
        if not (path / COMPLETE).is_file() or not sdir.is_dir():
            raise ResumeError(f"{path} is not a complete training checkpoint: remove it or pass --no-resume-from-checkpoint")
        try:
            weights = load_file(str(sdir / "master.safetensors"))
            optimizers = torch.load(sdir / "optimizer.pt", weights_only=True)
            schedulers = torch.load(sdir / "scheduler.pt", weights_only=True)
            rng = torch.load(sdir / "rng.pt", weights_only=True)
            state = TrainerState(**json.loads((sdir / "state.json").read_text()))
        except (OSError, ValueError, RuntimeError) as exc:
            raise ResumeError(f"{path} cannot be read ({exc}): remove it or pass --no-resume-from-checkpoint") from exc
        return weights, optimizers, schedulers, state, rng


def _write_trainer_state(sdir: Path, weights: dict[str, torch.Tensor], optimizers: list[dict], schedulers: list[dict], state: TrainerState) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(sdir / "master.safetensors"))
    torch.save(optimizers, sdir / "optimizer.pt")
    torch.save(schedulers, sdir / "scheduler.pt")
    torch.save(rng_state(), sdir / "rng.pt")
    (sdir / "state.json").write_text(json.dumps(asdict(state), indent=2) + "\n")
