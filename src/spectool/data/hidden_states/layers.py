"""Layer-id records: which layer ids a directory of hidden-state files holds.

``layers.json`` beside a cache records the ids its files were extracted with, so a run that
needs other ids is refused instead of training on the wrong layers. ``vllm_layers.json`` in
a vLLM server's hidden-states directory is written by ``spectool vllm launch`` and records
what that server extracts, so the client can refuse a server launched for other ids.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from spectool.data.hidden_states.files import HiddenStateError
from spectool.fsutil import atomic_write

LAYERS_FILE = "layers.json"
SERVER_LAYERS_FILE = "vllm_layers.json"


def extraction_ids(aux_ids: Sequence[int], num_layers: int) -> list[int]:
    return [*aux_ids, num_layers]


def _read_record(record: Path) -> list[int]:
    """The ``layer_ids`` of a record; refuses a file that does not parse as a whole."""
    try:
        saved = json.loads(record.read_text())["layer_ids"]
        if not isinstance(saved, list) or not all(isinstance(k, int) for k in saved):
            raise ValueError("layer_ids is not a list of integers")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HiddenStateError(f"{record} is unreadable ({type(exc).__name__}: {exc}): delete it if the files beside it are known good") from exc
    return saved


def check_layer_record(cache_dir: str | Path, aux_ids: Sequence[int], num_layers: int) -> bool:
    """Refuse a cache made with other layer ids; True when a record exists (and matches)."""
    record = Path(cache_dir) / LAYERS_FILE
    if not record.is_file():
        return False
    saved = _read_record(record)
    wanted = extraction_ids(aux_ids, num_layers)
    if list(saved) != wanted:
        raise HiddenStateError(
            f"{cache_dir} was extracted with layer ids {saved}, this run needs {wanted}: "
            f"pass --target-layer-ids {' '.join(map(str, saved[:-1]))} or use another --hidden-states-path"
        )
    return True


def write_layer_record(cache_dir: str | Path, aux_ids: Sequence[int], num_layers: int, hidden_size: int, verifier: str) -> None:
    """Record the extraction ids (after checking an existing record agrees); written atomically."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if check_layer_record(cache_dir, aux_ids, num_layers):
        return
    record = {"layer_ids": extraction_ids(aux_ids, num_layers), "num_layers": num_layers, "hidden_size": hidden_size, "verifier": verifier}
    atomic_write(cache_dir / LAYERS_FILE, json.dumps(record, indent=2) + "\n")


def write_server_record(hidden_states_dir: str | Path, layer_ids: Sequence[int], model: str) -> None:
    """What a vLLM server launched into ``hidden_states_dir`` extracts (ids include L)."""
    hidden_states_dir = Path(hidden_states_dir)
    hidden_states_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(hidden_states_dir / SERVER_LAYERS_FILE, json.dumps({"layer_ids": list(layer_ids), "model": str(model)}, indent=2) + "\n")


def read_server_record(hidden_states_dir: str | Path) -> list[int] | None:
    """The layer ids the server writing into ``hidden_states_dir`` extracts; None when unrecorded."""
    record = Path(hidden_states_dir) / SERVER_LAYERS_FILE
    return _read_record(record) if record.is_file() else None
