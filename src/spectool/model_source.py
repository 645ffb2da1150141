"""Is a model name usable, answered at once (no torch, no transformers, no hub retries)?

transformers answers an unusable name after its own retries (37 s of ``Retrying in 8s``
offline) with "Repo id must be in the form..." or "Should have a model_type key". This
check gives the one-line reason first: a missing path, a directory without config.json,
or a hub id that is neither cached nor reachable.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from spectool.errors import SpectoolError


class ModelSourceError(SpectoolError):
    """A model name that is neither a model directory nor a usable hub id."""


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
    return home / "hub"


def _cached(repo_id: str) -> bool:
    snapshots = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return any(snapshots.glob("*/*.json"))


def _offline() -> bool:
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_reachable(timeout: float = 2.0) -> bool:
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


def check_model_source(name: str, flag: str = "--verifier-name-or-path", files: tuple[str, ...] = ("config.json",)) -> None:
    """Raise ModelSourceError unless ``name`` is a model directory (holding one of
    ``files``), a cached hub id, or a hub id while the hub answers."""
    path = Path(name).expanduser()
    if path.exists() or _looks_like_path(name):
        if not path.exists():
            raise ModelSourceError(f"{flag} {name}: no such directory")
        if not path.is_dir():
            raise ModelSourceError(f"{flag} {name}: not a model directory (a file; give the directory that holds config.json)")
        if not any((path / f).is_file() for f in files):
            raise ModelSourceError(f"{flag} {name}: not a model directory (no {' or '.join(files)} in it)")
        return
    if _cached(name):
        return
    if _offline():
        raise ModelSourceError(f"{flag} {name}: no such directory, and not in the hub cache {hub_cache_dir()} (offline): pass a local model directory")
    if not _hub_reachable():
        raise ModelSourceError(f"{flag} {name}: no such directory, and the hub is not reachable: pass a local model directory")
