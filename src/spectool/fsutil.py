"""Atomic file writes: a reader sees the old file or the new one, never a cut one.

Every file spectool writes outside a checkpoint directory (run.yaml, state, layers.json,
meta.json, vocab files, cache files) goes through :func:`atomic_write`: the bytes are
written to a temporary file in the same directory, fsynced, then renamed over the target.
A failed write (disk full, file-size limit, kill) leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto
    ``path``, on any error it is removed and ``path`` is left as it was.

    For writers that want a file name (``np.save``, ``safetensors.save_file``): the
    temporary name ends in the target's suffix, so ``np.save`` adds none, and it starts
    with a dot, so globs such as ``hs_*.safetensors`` never match it."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically (text is UTF-8)."""
    payload = data.encode() if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
