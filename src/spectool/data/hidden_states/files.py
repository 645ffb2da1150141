"""The hidden-state file: ``hs_{i}.safetensors``, its one reader and its one writer.

Byte-for-byte what vLLM's extract_hidden_states connector writes: ``hidden_states``
[seq, n_aux + 1, H] (verifier dtype, layers by depth, last slot = final decoder output
before the final norm) and ``token_ids`` [seq] int64. Every file, wherever it came from
(cache, vLLM, the local verifier), goes through :func:`read_hidden_states`, so that no bad
file is ever silently trained on.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from spectool.errors import SpectoolError
from spectool.fsutil import atomic_path

# No real verifier comes near this: the largest "massive activations" reported for LLMs are
# a few thousand. A finite value beyond it is a corrupt or foreign file, not a hidden state.
MAX_ABS_HIDDEN = 1e5


class HiddenStateError(SpectoolError):
    """Hidden states cannot be provided (policy ``raise``, a cache made with other ids, ...)."""


class InvalidHiddenStates(HiddenStateError):
    """A hidden-state file that must not be trained on. ``kind`` is a short category for accounting."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class GenerationError(HiddenStateError):
    """Generating hidden states failed (after retries where they apply)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class SourceFailure(HiddenStateError):
    """The source cannot serve any more samples (e.g. a dead vLLM server): stop the run with a
    checkpoint. A failure of the run, not of its input: the CLI exits with ``exit_code``."""

    exit_code = 1


def cache_file(cache_dir: str | Path, index: int) -> Path:
    return Path(cache_dir) / f"hs_{index}.safetensors"


def validate_hidden_states(
    hidden: Any, token_ids: Any, expected_ids: np.ndarray | Sequence[int], num_slots: int, hidden_size: int, max_abs: float = MAX_ABS_HIDDEN
) -> torch.Tensor:
    """Check a file's tensors against the sample; returns ``hidden_states`` [seq, num_slots, H].

    Values must be finite and within ``max_abs``: a finite 1e30 would train just as silently
    wrong as a NaN."""
    if not isinstance(hidden, torch.Tensor) or not isinstance(token_ids, torch.Tensor):
        raise InvalidHiddenStates("missing tensors", "hidden_states and token_ids must both be tensors")
    expected = torch.as_tensor(np.asarray(expected_ids, dtype=np.int64))
    if token_ids.dim() != 1 or token_ids.shape[0] != expected.shape[0] or not torch.equal(token_ids.to(torch.int64), expected):
        n = token_ids.shape[0] if token_ids.dim() == 1 else tuple(token_ids.shape)
        first = _first_difference(token_ids, expected)
        raise InvalidHiddenStates("token ids differ", f"file has {n} token ids, the sample {len(expected)}{first}: the cache was made from other data")
    if hidden.dim() != 3 or tuple(hidden.shape) != (len(expected), num_slots, hidden_size):
        raise InvalidHiddenStates(
            "wrong shape",
            f"hidden_states has shape {list(hidden.shape)}, expected [{len(expected)}, {num_slots}, {hidden_size}] "
            f"({num_slots - 1} aux layers + final layer): extracted with other layer ids or another verifier",
        )
    if not hidden.is_floating_point():
        raise InvalidHiddenStates("wrong dtype", f"hidden_states has dtype {hidden.dtype}, expected a float type")
    finite = torch.isfinite(hidden)
    if not bool(finite.all()):
        bad_slots = sorted(set(torch.nonzero(~finite)[:, 1].tolist()))
        raise InvalidHiddenStates("non-finite values", f"{int((~finite).sum())} NaN/Inf values in layer slots {bad_slots}")
    peak = float(hidden.abs().max()) if hidden.numel() else 0.0
    if peak > max_abs:
        raise InvalidHiddenStates(
            "implausible values",
            f"|hidden_states| reaches {peak:.3g}, beyond the plausible {max_abs:g} of any verifier: regenerate the file",
        )
    return hidden


def _first_difference(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.dim() != 1:
        return ""
    n = min(len(a), len(b))
    diff = torch.nonzero(a[:n].to(torch.int64) != b[:n])
    return f", first difference at position {int(diff[0])}" if len(diff) else ""


def read_hidden_states(path: str | Path, expected_ids: np.ndarray | Sequence[int], num_slots: int, hidden_size: int) -> torch.Tensor:
    """Read and validate one ``hs`` file (cache, vLLM or generated): [seq, num_slots, H].

    Raises :class:`InvalidHiddenStates` naming what is wrong (unreadable/truncated, missing
    keys, token mismatch, wrong shape i.e. layer count, NaN/Inf, implausible magnitudes),
    FileNotFoundError when there is no file and :class:`HiddenStateError` when the path is
    a directory (a fault of the set-up, not of one sample).
    """
    from safetensors.torch import load_file

    if Path(path).is_dir():
        raise HiddenStateError(f"{path} is a directory, not a hidden-state file: remove it or choose another --hidden-states-path")
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors raises SafetensorError / OSError variants on corrupt files
        raise InvalidHiddenStates("unreadable file", f"{path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    missing = [k for k in ("hidden_states", "token_ids") if k not in tensors]
    if missing:
        raise InvalidHiddenStates("missing tensors", f"{path} lacks {missing}")
    return validate_hidden_states(tensors["hidden_states"], tensors["token_ids"], expected_ids, num_slots, hidden_size)


def check_header(path: str | Path, seq_len: int, num_slots: int, hidden_size: int) -> str | None:
    """Cheap check of one cache file from its safetensors header only (no tensor is read).

    Returns None when the file exists and declares ``hidden_states`` [seq_len, num_slots,
    hidden_size] and ``token_ids`` [seq_len] whose bytes fit the file, else what is wrong.
    """
    path = Path(path)
    if path.is_dir():
        return f"{path} is a directory, not a hidden-state file"
    try:
        with open(path, "rb") as f:
            size = path.stat().st_size
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size - 8, 100_000_000):
                return f"{path}: safetensors header length {n} does not fit the {size}-byte file (truncated?)"
            header = json.loads(f.read(n))
    except FileNotFoundError:
        return f"{path} does not exist"
    except (OSError, ValueError, struct.error) as exc:
        return f"{path}: unreadable safetensors header ({type(exc).__name__})"
    want = {"hidden_states": [seq_len, num_slots, hidden_size], "token_ids": [seq_len]}
    for key, shape in want.items():
        entry = header.get(key)
        if not isinstance(entry, dict) or entry.get("shape") != shape:
            got = entry.get("shape") if isinstance(entry, dict) else "no such tensor"
            return f"{path}: {key} is {got}, expected {shape}"
    ends = [e["data_offsets"][1] for k, e in header.items() if k != "__metadata__" and isinstance(e, dict) and "data_offsets" in e]
    if 8 + n + max(ends, default=0) > size:
        return f"{path} is truncated ({size} bytes, its header needs {8 + n + max(ends)})"
    return None


def save_hidden_states(path: str | Path, hidden: torch.Tensor, token_ids: Sequence[int] | np.ndarray | torch.Tensor) -> None:
    """Write an ``hs`` file atomically (temp file, fsync, rename), in vLLM's layout."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.is_dir():
        raise HiddenStateError(f"{path} is a directory, not a hidden-state file: remove it or choose another --hidden-states-path")
    ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int64)) if not isinstance(token_ids, torch.Tensor) else token_ids.to(torch.int64)
    with atomic_path(path) as tmp:
        save_file({"hidden_states": hidden.contiguous(), "token_ids": ids.contiguous()}, str(tmp))


def place_file(source: Path, target: Path) -> None:
    """Move a generated file (ours) to its cache name ``target``: atomic, never into a directory."""
    import shutil

    if target.is_dir():
        raise HiddenStateError(f"{target} is a directory, not a hidden-state file: remove it or choose another --hidden-states-path")
    try:
        os.replace(source, target)  # same filesystem: one atomic rename
    except OSError:
        with atomic_path(target) as tmp:  # across filesystems: copy beside the target, then rename
            shutil.copyfile(source, tmp)
        source.unlink(missing_ok=True)


def to_training_sample(input_ids: np.ndarray, loss_mask: np.ndarray, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split a file's [seq, A+1, H] into the draft input (aux layers concatenated) and the target slot."""
    seq = hidden.shape[0]
    return {
        "input_ids": torch.as_tensor(np.asarray(input_ids, dtype=np.int64)),
        "loss_mask": torch.as_tensor(np.asarray(loss_mask, dtype=np.int64)),
        "hidden_states": hidden[:, :-1, :].reshape(seq, -1),
        "verifier_last_hidden_states": hidden[:, -1, :],
        "position_ids": torch.arange(seq, dtype=torch.int64),
    }


@dataclass
class Generated:
    """Hidden states of one sample: the validated tensor and, for vLLM, the file holding it."""

    hidden_states: torch.Tensor
    path: Path | None = None


class Generator(Protocol):
    name: str
    needs_main_process: bool

    def generate(self, sample: Any) -> Generated: ...
