"""DEPRECATED: speculators' old per-sample ``data_{i}.pt`` files, read with weights_only=True."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from spectool.data.hidden_states.accounting import Accounting
from spectool.data.hidden_states.files import HiddenStateError, InvalidHiddenStates, to_training_sample, validate_hidden_states

log = logging.getLogger(__name__)


class LegacySource:
    """DEPRECATED per-sample ``data_{i}.pt`` files (speculators' old format, read with weights_only=True).

    Each file holds ``input_ids``, ``loss_mask`` and ``hidden_states``, a list of [seq, H]
    tensors, one per captured layer, the last being the final layer. Legacy layer id k was
    the OUTPUT of decoder layer k, i.e. vLLM id k+1; a draft trained on legacy ids
    [a, b, c] must advertise ``--target-layer-ids`` [a+1, b+1, c+1].
    """

    needs_main_process = False

    def __init__(self, dataset: "LegacyDataset", num_aux: int, hidden_size: int, on_missing: str = "warn", warn: Callable[[str], None] | None = None):
        self.dataset = dataset
        self.num_slots = num_aux + 1
        self.hidden_size = hidden_size
        self.on_missing = on_missing
        self.warn = warn or log.warning
        self.accounting = Accounting()

    def load(self, index: int, accounting: Accounting | None = None) -> dict[str, torch.Tensor] | None:
        acc = accounting if accounting is not None else self.accounting
        path = self.dataset.path / f"data_{index}.pt"
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            layers = data["hidden_states"]
            if not isinstance(layers, (list, tuple)) or not layers:
                raise InvalidHiddenStates("wrong shape", f"{path}: hidden_states must be a non-empty list of [seq, H] tensors")
            ids = torch.as_tensor(data["input_ids"]).to(torch.int64).reshape(-1)
            hidden = validate_hidden_states(torch.stack(list(layers), dim=1), ids, ids.numpy(), self.num_slots, self.hidden_size)
            mask = torch.as_tensor(data["loss_mask"]).to(torch.int64).reshape(-1)
            if mask.shape != ids.shape:
                raise InvalidHiddenStates("wrong shape", f"{path}: loss_mask has {len(mask)} entries, input_ids {len(ids)}")
        except FileNotFoundError:
            kind, detail = "missing", f"{path} does not exist"
        except InvalidHiddenStates as exc:
            kind, detail = f"invalid legacy file ({exc.kind})", exc.detail
        except Exception as exc:  # unpickling refused / corrupt zip / missing keys
            kind, detail = "invalid legacy file (unreadable file)", f"{path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        else:
            acc.add("ok")
            return to_training_sample(ids.numpy(), mask.numpy(), hidden)
        if self.on_missing == "raise":
            raise HiddenStateError(f"sample {index}: {kind}: {detail} (--on-missing raise)")
        if self.on_missing != "skip":
            self.warn(f"skipping sample {index}: {kind}: {detail}")
        acc.add("skipped", kind, detail)
        return None


class LegacyDataset:
    """Index of a legacy directory: lengths from ``sample_lengths.json`` ({"<i>": seq_len})."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        lengths_file = self.path / "sample_lengths.json"
        if not lengths_file.is_file():
            raise HiddenStateError(f"{self.path} has no sample_lengths.json: not a legacy data directory (drop --legacy-data)")
        raw = json.loads(lengths_file.read_text())
        n = len(raw)
        try:
            self._lengths = np.asarray([int(raw[str(i)]) for i in range(n)], dtype=np.int64)
        except KeyError as exc:
            raise HiddenStateError(f"{lengths_file} must map every index 0..{n - 1} to a length (missing {exc})") from exc

    def __len__(self) -> int:
        return len(self._lengths)

    @property
    def lengths(self) -> np.ndarray:
        return self._lengths

    def split(self, val_ratio: float) -> tuple[list[int], list[int]]:
        """Same rule as ProcessedDataset: the tail ``ceil(N * ratio)`` samples validate."""
        n = len(self)
        n_val = 0 if val_ratio <= 0 or n < 2 else max(1, min(n - 1, int(np.ceil(n * val_ratio))))
        return list(range(n - n_val)), list(range(n - n_val, n))
