"""Training checkpoints: each a servable vLLM dir plus the trainer state to resume exactly.

Layout under --save-path::

    run.yaml, train_command.txt
    epoch{E}_step{G}/            (E 1-based) config.json + model.safetensors (bf16; what vLLM loads)
        trainer_state/           master.safetensors (fp32 weights), optimizer.pt,
                                 scheduler.pt, rng.pt, state.json
        COMPLETE                 written last: only complete checkpoints are resumed
    latest -> epoch{E}_step{G}   best -> ...   (relative symlinks, replaced atomically)
    .lock                        flock held by the one `spectool train` using this save path
    damaged-epoch{E}_step{G}/    a checkpoint that failed to load, moved aside (never deleted)

A checkpoint is written into ``.tmp-<name>`` (every file fsynced, COMPLETE last), then
renamed into place, so a kill at any moment leaves the previous checkpoint as the latest
complete one. COMPLETE lists every file's size: a file cut, grown or removed afterwards
marks the checkpoint as damaged (files added beside them are ignored), and resume falls back to the one before. ``.pt`` files hold only
tensors and plain containers and are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pickle
import random
import re
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectool.errors import SpectoolError
from spectool.models import DraftModel, save_draft

COMPLETE = "COMPLETE"
STATE = "trainer_state"
LOCK = ".lock"
DAMAGED = "damaged-"
_NAME = re.compile(r"^epoch(\d+)_step(\d+)$")
# How long a new run waits for a lock still held by the orphaned dataloader workers of a
# killed run (they notice their parent's death within ~5 s and exit).
ORPHAN_LOCK_WAIT_S = 30.0


def checkpoint_name(state: "TrainerState") -> str:
    """``epoch{E}_step{G}`` with E 1-based, as the log counts epochs (runs written before
    that used 0-based names; both are read, ordered by the global step)."""
    return f"epoch{state.epoch + 1}_step{state.global_step}"


class ResumeError(SpectoolError):
    """A checkpoint cannot be resumed; the message names the fix."""


class DamagedCheckpoint(ResumeError):
    """A complete checkpoint whose files were cut or changed after it was written."""


class SavePathError(SpectoolError):
    """--save-path cannot hold the run (not writable, full, a file, locked)."""


def save_path_error(exc: OSError, root: Path, what: str) -> SavePathError:
    """One line for a failed write under the save path, naming the fix for the usual causes."""
    fix = {
        errno.ENOSPC: "free disk space or pass another --save-path",
        errno.EDQUOT: "free disk quota or pass another --save-path",
        errno.EFBIG: "the file-size limit (ulimit -f) is too low: raise it or pass another --save-path",
        errno.EROFS: "the file system is read-only: pass a writable --save-path",
        errno.EACCES: "no write permission: pass a writable --save-path",
        errno.EPERM: "no write permission: pass a writable --save-path",
        errno.ENOTDIR: "a parent of it is a file: pass a directory --save-path",
    }.get(exc.errno or 0, "pass another --save-path")
    return SavePathError(f"cannot write {what} under --save-path {root} ({exc.strerror or exc}): {fix}")


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
    supervised_tokens: int = 0  # loss-mask tokens trained on so far in ``epoch`` (all ranks)


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


def _manifest(root: Path) -> dict[str, int]:
    """Size of every file under ``root`` by relative path (COMPLETE excluded)."""
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file() and p.name != COMPLETE}


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
        from safetensors import SafetensorError

        shutil.rmtree(tmp, ignore_errors=True)
        try:
            save_draft(model, tmp, state_dict=weights)
            sdir = tmp / STATE
            sdir.mkdir()
            _write_trainer_state(sdir, weights, optimizers, schedulers, state)
            for fname, text in (extra_files or {}).items():
                (tmp / fname).write_text(text)
            complete = {"global_step": state.global_step, "files": _manifest(tmp)}
            (tmp / COMPLETE).write_text(json.dumps(complete) + "\n")
            _fsync_tree(tmp)
        except (OSError, RuntimeError, SafetensorError) as exc:  # torch.save and safetensors wrap the OSError
            shutil.rmtree(tmp, ignore_errors=True)
            os_exc = exc if isinstance(exc, OSError) else _os_error_in(exc)
            last = self.latest()
            kept = f"; {last.name} is still the latest checkpoint" if last else ""
            if os_exc is not None:
                raise save_path_error(os_exc, self.root, f"checkpoint {name}{kept}") from exc
            raise SavePathError(f"cannot write checkpoint {name} under --save-path {self.root} ({_first_line(exc)}){kept}: check the disk, then `spectool resume {self.root}`") from exc
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
        """(fp32 weights, optimizer states, scheduler states, trainer state, rng state).

        Raises DamagedCheckpoint when a file is cut, changed or unparsable (the caller moves
        the checkpoint aside and tries the previous one); ResumeError for anything else."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        sdir = path / STATE
        if not (path / COMPLETE).is_file() or not sdir.is_dir():
            raise DamagedCheckpoint(f"{path} has no trainer state")
        try:
            expected = json.loads((path / COMPLETE).read_text()).get("files")
            if expected is not None:
                actual = _manifest(path)
                for rel, size in expected.items():
                    if actual.get(rel) != size:
                        got = "missing" if rel not in actual else f"{actual[rel]} bytes"
                        raise DamagedCheckpoint(f"{path}/{rel} is {got}, {size} bytes were written")
            weights = load_file(str(sdir / "master.safetensors"))
            optimizers = torch.load(sdir / "optimizer.pt", weights_only=True)
            schedulers = torch.load(sdir / "scheduler.pt", weights_only=True)
            rng = torch.load(sdir / "rng.pt", weights_only=True)
            raw = json.loads((sdir / "state.json").read_text())
        except (PermissionError, IsADirectoryError) as exc:
            raise ResumeError(f"{path} cannot be read ({exc.strerror}): fix its permissions or pass --no-resume-from-checkpoint") from exc
        except (OSError, ValueError, RuntimeError, EOFError, KeyError, TypeError, AttributeError, pickle.UnpicklingError, SafetensorError) as exc:
            # cut/garbled files: json/pickle/zip/safetensors parse errors, or a file missing
            raise DamagedCheckpoint(f"{path} cannot be read ({_first_line(exc)})") from exc
        known = {f.name for f in fields(TrainerState)}
        unknown = sorted(set(raw) - known) if isinstance(raw, dict) else []
        if not isinstance(raw, dict) or unknown:
            what = f"unknown keys {', '.join(unknown)}" if unknown else "not a JSON object"
            raise ResumeError(f"{sdir / 'state.json'} holds {what} (written by another spectool version?): resume with that version, or pass --no-resume-from-checkpoint / a new --save-path")
        return weights, optimizers, schedulers, TrainerState(**raw), rng

    def move_aside(self, path: Path) -> Path:
        """Rename a damaged checkpoint to ``damaged-<name>`` (never deleted; resume skips it)."""
        target = self.root / f"{DAMAGED}{path.name}"
        n = 1
        while target.exists():
            n += 1
            target = self.root / f"{DAMAGED}{path.name}.{n}"
        os.rename(path, target)
        _fsync_dir(self.root)
        return target

    def relink_latest(self, path: Path | None) -> None:
        """Point ``latest`` at ``path`` (or remove it) after checkpoints were moved aside."""
        if path is None:
            (self.root / "latest").unlink(missing_ok=True)
        else:
            _link(self.root, "latest", path.name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind a wrapped one: safetensors says "(os error 27)", torch.save only
    the strerror text."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError):
        return cause
    text = str(exc)
    code = re.search(r"os error (\d+)", text)
    if code:
        return OSError(int(code.group(1)), os.strerror(int(code.group(1))))
    for n in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES):
        if os.strerror(n) in text:
            return OSError(n, os.strerror(n))
    return None


@contextlib.contextmanager
def run_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``root/.lock`` for the run: a second `spectool train` on
    the same save path fails at once. The OS releases it when the holder dies (kill -9), so
    resuming after a crash just works; the lock file itself stays (removing it would race)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, root)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _acquire(fd: int, root: Path) -> None:
    deadline = time.monotonic() + ORPHAN_LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            pid, host = (int(holder[0]) if holder and holder[0].isdigit() else None), (holder[1] if len(holder) > 1 else None)
            if pid is None or host != socket.gethostname() or _alive(pid) or time.monotonic() > deadline:
                who = f"pid {pid} on {host}" if pid is not None else "another process"
                raise SavePathError(f"--save-path {root} is in use by another `spectool train` ({who}): wait for it to end, stop it, or pass another --save-path")
            time.sleep(0.2)  # the holder died; its forked dataloader workers still hold the lock briefly


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_trainer_state(sdir: Path, weights: dict[str, torch.Tensor], optimizers: list[dict], schedulers: list[dict], state: TrainerState) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(sdir / "master.safetensors"))
    torch.save(optimizers, sdir / "optimizer.pt")
    torch.save(schedulers, sdir / "scheduler.pt")
    torch.save(rng_state(), sdir / "rng.pt")
    (sdir / "state.json").write_text(json.dumps(asdict(state), indent=2) + "\n")
