"""Hidden-state sources: the cache, a vLLM server, the verifier in-process, legacy files.

Every source answers one question — "the training tensors of sample i, or None when the
policy drops it" — and every file, wherever it came from, goes through the one reader
:func:`read_hidden_states` so that no bad file is ever silently trained on.

File format (byte-for-byte what vLLM's extract_hidden_states connector writes):
``hs_{i}.safetensors`` with ``hidden_states`` [seq, n_aux + 1, H] (verifier dtype, layers
by depth, last slot = final decoder output before the final norm) and ``token_ids`` [seq]
int64. ``layers.json`` next to the files records the extraction layer ids.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from spectool.errors import SpectoolError

log = logging.getLogger(__name__)

LAYERS_FILE = "layers.json"
ON_MISSING = ("generate", "skip", "warn", "raise")
ON_GENERATE = ("cache", "delete")


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


# ---------------------------------------------------------------------------------------
# accounting


@dataclass
class Accounting:
    """How samples were served: valid cache hits, generated, skipped per reason (thread-safe)."""

    ok: int = 0
    generated: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # first detailed message per reason
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, status: str, reason: str | None = None, detail: str | None = None) -> None:
        with self._lock:
            if status == "ok":
                self.ok += 1
            elif status == "generated":
                self.generated += 1
            elif status == "skipped":
                self.skipped[reason or "unknown"] += 1
                if detail:
                    self.examples.setdefault(reason or "unknown", detail)
            else:
                raise ValueError(f"unknown status {status!r}")

    def merge(self, other: "Accounting | dict") -> None:
        d = other.as_dict() if isinstance(other, Accounting) else other
        with self._lock:
            self.ok += d["ok"]
            self.generated += d["generated"]
            self.skipped.update(d["skipped"])
            for k, v in d.get("examples", {}).items():
                self.examples.setdefault(k, v)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"ok": self.ok, "generated": self.generated, "skipped": dict(self.skipped), "examples": dict(self.examples)}

    def __getstate__(self) -> dict:
        return self.as_dict()

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self.merge(state)


# ---------------------------------------------------------------------------------------
# the one reader


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


# ---------------------------------------------------------------------------------------
# layer-id record next to the cache


def extraction_ids(aux_ids: Sequence[int], num_layers: int) -> list[int]:
    return [*aux_ids, num_layers]


def check_layer_record(cache_dir: str | Path, aux_ids: Sequence[int], num_layers: int) -> bool:
    """Refuse a cache made with other layer ids; True when a record exists (and matches)."""
    record = Path(cache_dir) / LAYERS_FILE
    if not record.is_file():
        return False
    try:
        saved = json.loads(record.read_text())["layer_ids"]
    except (OSError, ValueError, KeyError) as exc:
        raise HiddenStateError(f"{record} is unreadable ({exc}): delete it if the cache is known good") from exc
    wanted = extraction_ids(aux_ids, num_layers)
    if list(saved) != wanted:
        raise HiddenStateError(
            f"{cache_dir} was extracted with layer ids {saved}, this run needs {wanted}: "
            f"pass --target-layer-ids {' '.join(map(str, saved[:-1]))} or use another --hidden-states-path"
        )
    return True


def write_layer_record(cache_dir: str | Path, aux_ids: Sequence[int], num_layers: int, hidden_size: int, verifier: str) -> None:
    """Record the extraction ids (after checking an existing record agrees)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if check_layer_record(cache_dir, aux_ids, num_layers):
        return
    record = {"layer_ids": extraction_ids(aux_ids, num_layers), "num_layers": num_layers, "hidden_size": hidden_size, "verifier": verifier}
    tmp = cache_dir / f".{LAYERS_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, cache_dir / LAYERS_FILE)


# ---------------------------------------------------------------------------------------
# generators and sources


@dataclass
class Generated:
    """Hidden states of one sample: the validated tensor and, for vLLM, the file holding it."""

    hidden_states: torch.Tensor
    path: Path | None = None


class Generator(Protocol):
    name: str
    needs_main_process: bool

    def generate(self, sample: Any) -> Generated: ...


class HiddenStateSource:
    """Cache first; a missing or invalid file is handled by the ``on_missing`` policy.

    ``generate`` asks ``generator`` (vLLM or the local verifier); after generation
    ``on_generate`` = ``cache`` moves/writes the file to ``hs_{i}`` (hybrid) and
    ``delete`` removes vLLM's file (pure online).
    """

    def __init__(
        self,
        dataset: Any,
        cache_dir: str | Path,
        num_aux: int,
        hidden_size: int,
        on_missing: str = "generate",
        on_generate: str = "delete",
        generator: Generator | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        if on_missing not in ON_MISSING or on_generate not in ON_GENERATE:
            raise HiddenStateError(f"on_missing must be one of {ON_MISSING} and on_generate one of {ON_GENERATE}")
        if on_missing == "generate" and generator is None:
            raise HiddenStateError("on_missing=generate needs a generator (vLLM endpoint or local verifier)")
        self.dataset = dataset
        self.cache_dir = Path(cache_dir)
        self.num_slots = num_aux + 1
        self.hidden_size = hidden_size
        self.on_missing = on_missing
        self.on_generate = on_generate
        self.generator = generator
        self.warn = warn or log.warning
        self.accounting = Accounting()

    @property
    def needs_main_process(self) -> bool:
        """True when generation runs a model in this process (DataLoader workers would each load it)."""
        return self.on_missing == "generate" and bool(getattr(self.generator, "needs_main_process", False))

    def load(self, index: int, accounting: Accounting | None = None) -> dict[str, torch.Tensor] | None:
        return self.get(self.dataset[index], accounting)

    def get(self, sample: Any, accounting: Accounting | None = None) -> dict[str, torch.Tensor] | None:
        """Training tensors of ``sample`` or None when the policy drops it.

        The outcome is counted in ``accounting`` (default: this source's own), so that
        DataLoader workers can hand their counts back with each batch.
        """
        acc = accounting if accounting is not None else self.accounting
        hidden, status, reason, detail = self._hidden(sample)
        acc.add(status, reason, detail)
        if hidden is None:
            return None
        return to_training_sample(sample.input_ids, sample.loss_mask, hidden)

    def _hidden(self, sample: Any) -> tuple[torch.Tensor | None, str, str | None, str | None]:
        path = cache_file(self.cache_dir, sample.index)
        try:
            return read_hidden_states(path, sample.input_ids, self.num_slots, self.hidden_size), "ok", None, None
        except FileNotFoundError:
            kind, detail = "missing", f"{path} does not exist"
        except InvalidHiddenStates as exc:
            kind, detail = f"invalid cache file ({exc.kind})", f"{path}: {exc.detail}"
        if self.on_missing == "raise":
            raise HiddenStateError(f"sample {sample.index}: {kind}: {detail} (--on-missing raise)")
        if self.on_missing in ("skip", "warn"):
            if self.on_missing == "warn":
                self.warn(f"skipping sample {sample.index}: {kind}: {detail}")
            return None, "skipped", kind, detail
        try:
            gen = self.generator.generate(sample)
        except (GenerationError, InvalidHiddenStates) as exc:
            reason = f"generation failed ({exc.kind})"
            self.warn(f"skipping sample {sample.index}: {reason}: {exc.detail}")
            return None, "skipped", reason, exc.detail
        self._after_generate(sample, gen)
        return gen.hidden_states, "generated", None, None

    def _after_generate(self, sample: Any, gen: Generated) -> None:
        target = cache_file(self.cache_dir, sample.index)
        if self.on_generate == "cache":
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            if gen.path is not None:
                shutil.move(str(gen.path), str(target))
            else:
                save_hidden_states(target, gen.hidden_states, sample.input_ids)
        elif gen.path is not None:
            gen.path.unlink(missing_ok=True)


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


# ---------------------------------------------------------------------------------------
# building a source from the run configuration


def build_source(
    cfg: Any,
    dataset: Any,
    *,
    aux_layer_ids: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    info: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> HiddenStateSource | LegacySource:
    """The hidden-state source a run configuration asks for.

    ``info`` receives one-off notes (e.g. the auto generator falling back to the local
    verifier), ``warn`` per-sample skips; both default to this module's logger.
    """
    from spectool.verifier import load_verifier_info

    d = cfg.data
    verifier = load_verifier_info(cfg.model.verifier_name_or_path, cfg.model.trust_remote_code)
    aux = verifier.resolve_layer_ids(list(aux_layer_ids) if aux_layer_ids is not None else cfg.model.target_layer_ids)
    info = info or log.info
    if d.legacy_data:
        info("--legacy-data is deprecated: legacy layer id k is vLLM id k+1 (see `spectool inspect`)")
        policy = d.on_missing if d.on_missing != "generate" else "warn"
        return LegacySource(dataset, len(aux), verifier.hidden_size, on_missing=policy, warn=warn)
    cache_dir = cfg.hidden_states_path
    if not check_layer_record(cache_dir, aux, verifier.num_layers) and cache_dir.is_dir() and any(cache_dir.glob("hs_*.safetensors")):
        info(f"{cache_dir} has no {LAYERS_FILE}: its layer ids cannot be checked (only the layer count is)")
    generator = None
    if d.on_missing == "generate":
        generator = make_generator(
            d.hidden_states_generator, cfg.model.verifier_name_or_path, aux, verifier,
            endpoint=d.vllm_endpoint, vllm_hidden_states_path=d.vllm_hidden_states_path,
            request_timeout=d.request_timeout, max_retries=d.max_retries,
            trust_remote_code=cfg.model.trust_remote_code, device=device, info=info,
        )
        if d.on_generate == "cache":
            write_layer_record(cache_dir, aux, verifier.num_layers, verifier.hidden_size, cfg.model.verifier_name_or_path)
    return HiddenStateSource(dataset, cache_dir, len(aux), verifier.hidden_size, d.on_missing, d.on_generate, generator, warn=warn)


def make_generator(
    kind: str,
    verifier_name: str,
    aux_ids: Sequence[int],
    verifier: Any,
    *,
    endpoint: str,
    vllm_hidden_states_path: str | Path = "/tmp/hidden_states",
    request_timeout: float = 180.0,
    max_retries: int = 3,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
    info: Callable[[str], None] | None = None,
    probe_timeout: float = 3.0,
) -> Generator:
    """``vllm`` (handshake now, fail fast), ``local``, or ``auto``: vLLM if it answers, else local (said once)."""
    from spectool.data.local_generator import LocalGenerator
    from spectool.data.vllm_client import VllmClient, VllmUnreachable

    info = info or log.info
    if kind not in ("auto", "vllm", "local"):
        raise HiddenStateError(f"--hidden-states-generator must be auto, vllm or local, got {kind!r}")
    if kind in ("auto", "vllm"):
        client = VllmClient(endpoint, verifier_name, aux_ids, verifier.hidden_size, vllm_hidden_states_path, request_timeout, max_retries)
        try:
            client.handshake(timeout=probe_timeout if kind == "auto" else None)
            return client
        except VllmUnreachable as exc:
            if kind == "vllm":
                raise HiddenStateError(f"vLLM at {endpoint} is not reachable ({exc}): start it with `spectool vllm launch` or use --hidden-states-generator local") from exc
            info(f"vLLM at {endpoint} is not reachable ({exc}); generating hidden states with the verifier loaded in-process")
    return LocalGenerator(verifier_name, aux_ids, device=device, trust_remote_code=trust_remote_code)
