"""The layer-id record (``layers.json``) beside a hidden-state cache: which ids its files hold."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from spectool.data.hidden_states.files import HiddenStateError

LAYERS_FILE = "layers.json"


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
