"""The hidden-state file: ``hs_{i}.safetensors``, its one reader and its one writer.

Byte-for-byte what vLLM's extract_hidden_states connector writes: ``hidden_states``
[seq, n_aux + 1, H] (verifier dtype, layers by depth, last slot = final decoder output
before the final norm) and ``token_ids`` [seq] int64. Every file, wherever it came from
(cache, vLLM, the local verifier), goes through :func:`read_hidden_states`, so that no bad
file is ever silently trained on.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from spectool.errors import SpectoolError


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


def cache_file(cache_dir: str | Path, index: int) -> Path:
    return Path(cache_dir) / f"hs_{index}.safetensors"


def validate_hidden_states(hidden: Any, token_ids: Any, expected_ids: np.ndarray | Sequence[int], num_slots: int, hidden_size: int) -> torch.Tensor:
    """Check a file's tensors against the sample; returns ``hidden_states`` [seq, num_slots, H]."""
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
    keys, token mismatch, wrong shape i.e. layer count, NaN/Inf).
    """
    from safetensors.torch import load_file

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


def save_hidden_states(path: str | Path, hidden: torch.Tensor, token_ids: Sequence[int] | np.ndarray | torch.Tensor) -> None:
    """Write an ``hs`` file atomically (temp file + rename), in vLLM's layout."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int64)) if not isinstance(token_ids, torch.Tensor) else token_ids.to(torch.int64)
    save_file({"hidden_states": hidden.contiguous(), "token_ids": ids.contiguous()}, str(tmp))
    os.replace(tmp, path)


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
