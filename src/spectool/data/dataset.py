"""The processed dataset directory: memory-mapped tokens and loss masks, sample i = identity.

Layout (format version 1)::

    DATA/meta.json        format, version, verifier, chat-template hash, counts
    DATA/input_ids.npy    int32 [total_tokens]   all samples back to back
    DATA/loss_mask.npy    uint8 [total_tokens]   1 = supervised (assistant) token
    DATA/offsets.npy      int64 [N + 1]          sample i = [offsets[i], offsets[i+1])
    DATA/token_freq.pt    dict[int, int]         supervised-token counts (written by prepare)

Sample index i is its identity everywhere (``hs_{i}.safetensors``). This module is the
one reader and the one writer of the format.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spectool.errors import SpectoolError
from spectool.fsutil import atomic_path

FORMAT = "spectool-processed-data"
VERSION = 1
TOKEN_FREQ_FILE = "token_freq.pt"


class DatasetError(SpectoolError, ValueError):
    """The directory is not a valid processed dataset; the message names the fix."""


@dataclass(frozen=True)
class Sample:
    index: int
    input_ids: np.ndarray  # int64 [seq]
    loss_mask: np.ndarray  # int64 [seq], 0/1


def is_processed_dataset(path: str | Path) -> bool:
    meta = Path(path) / "meta.json"
    if not meta.is_file():
        return False
    try:
        record = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("format") == FORMAT


def write_processed_dataset(path: str | Path, samples: Iterable[tuple[list[int], list[int]]], meta: dict, *, token_freq: bool = False) -> dict:
    """Write samples ``(input_ids, loss_mask)`` (and, with ``token_freq``, ``token_freq.pt``:
    counts of the supervised token ids); returns the final meta.

    Every file is first written in full beside its target; only then are they renamed into
    place, ``meta.json`` (what makes a directory a dataset) removed first and renamed last.
    A failed write (disk full, size limit) leaves a previous dataset untouched, and a crash
    never leaves a half dataset that looks complete.
    """
    path = Path(path)
    ids_parts, mask_parts, offsets = [], [], [0]
    for input_ids, loss_mask in samples:
        if len(input_ids) != len(loss_mask):
            raise DatasetError("input_ids and loss_mask differ in length")
        ids_parts.append(np.asarray(input_ids, dtype=np.int32))
        mask_parts.append(np.asarray(loss_mask, dtype=np.uint8))
        offsets.append(offsets[-1] + len(input_ids))
    input_ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
    loss_mask = np.concatenate(mask_parts) if mask_parts else np.zeros(0, np.uint8)
    meta = {
        **meta,
        "format": FORMAT,
        "version": VERSION,
        "num_samples": len(offsets) - 1,
        "num_tokens": int(len(input_ids)),
        "num_supervised_tokens": int(loss_mask.sum()),
    }
    path.mkdir(parents=True, exist_ok=True)
    arrays = {"input_ids.npy": input_ids, "loss_mask.npy": loss_mask, "offsets.npy": np.asarray(offsets, dtype=np.int64)}
    names = ["meta.json", *([TOKEN_FREQ_FILE] if token_freq else []), *reversed(arrays)]
    with contextlib.ExitStack() as stack:  # exits in reverse: arrays, token_freq, meta.json
        tmp = {name: stack.enter_context(atomic_path(path / name)) for name in names}
        stack.push(lambda failed, *_: None if failed else (path / "meta.json").unlink(missing_ok=True))
        for name, array in arrays.items():
            np.save(tmp[name], array)
        if token_freq:
            import torch

            torch.save(supervised_token_counts(input_ids, loss_mask), tmp[TOKEN_FREQ_FILE])
        tmp["meta.json"].write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def supervised_token_counts(input_ids: np.ndarray, loss_mask: np.ndarray) -> dict[int, int]:
    """``token_freq.pt``'s content: how often each token id is supervised (a plain dict, weights_only-safe)."""
    counts = Counter(input_ids[loss_mask.astype(bool)].tolist())
    return {int(k): int(counts[k]) for k in sorted(counts)}


class ProcessedDataset:
    """Random access to samples of a processed data directory (memory-mapped)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_file():
            raise DatasetError(f"{self.path} is a file, not a data directory: pass the directory `spectool data prepare` wrote")
        if not (self.path / "meta.json").is_file():
            raise DatasetError(f"{self.path} is not a processed dataset (no meta.json): run `spectool data prepare` first")
        try:
            self.meta = json.loads((self.path / "meta.json").read_text())
            if not isinstance(self.meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:  # cut or garbled: never guess the rest
            raise DatasetError(f"{self.path}/meta.json does not parse ({type(exc).__name__}: {exc}): re-run `spectool data prepare`") from None
        if self.meta.get("format") != FORMAT:
            raise DatasetError(f"{self.path}/meta.json is not a spectool dataset: run `spectool data prepare`")
        if self.meta.get("version") != VERSION:
            raise DatasetError(f"{self.path} has format version {self.meta.get('version')}, expected {VERSION}: re-run `spectool data prepare`")
        try:
            self._ids = np.load(self.path / "input_ids.npy", mmap_mode="r")
            self._mask = np.load(self.path / "loss_mask.npy", mmap_mode="r")
            self.offsets = np.load(self.path / "offsets.npy")
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{self.path} is corrupt ({exc}): re-run `spectool data prepare`") from exc
        if len(self.offsets) != self.meta["num_samples"] + 1 or self.offsets[-1] != len(self._ids) or len(self._ids) != len(self._mask):
            raise DatasetError(f"{self.path} is inconsistent (offsets vs arrays): re-run `spectool data prepare`")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(index)
        start, end = self.offsets[index], self.offsets[index + 1]
        return Sample(
            index=index,
            input_ids=np.asarray(self._ids[start:end], dtype=np.int64),
            loss_mask=np.asarray(self._mask[start:end], dtype=np.int64),
        )

    def split(self, val_ratio: float) -> tuple[list[int], list[int]]:
        """Deterministic train/validation split: the last ``ceil(N * ratio)`` samples validate."""
        n = len(self)
        n_val = 0 if val_ratio <= 0 or n < 2 else max(1, min(n - 1, int(np.ceil(n * val_ratio))))
        return list(range(n - n_val)), list(range(n - n_val, n))
