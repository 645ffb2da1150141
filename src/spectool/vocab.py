"""Reduced draft vocabulary: token_freq.pt -> d2t.npy / t2d.npy (speculators format).

* ``d2t`` int64 [D]: offsets, target id of draft id i = i + d2t[i]; selected ids ascending.
* ``t2d`` bool [V]: True exactly at the selected target ids; V = verifier config vocab_size.
* ``vocab.json`` sidecar: D, V and where the mapping came from, so a mapping built for
  another D or V is refused with a clear message instead of silently misused.

Mappings derived automatically into a data directory are keyed by the content they came
from (``d2t-{D}-{sha}.npy``, sha of token_freq.pt), so a re-prepared dataset never reuses
a mapping built from its old token frequencies. Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spectool.errors import SpectoolError
from spectool.fsutil import atomic_path, atomic_write

SIDECAR = "vocab.json"


class VocabError(SpectoolError):
    """A vocabulary mapping is missing, malformed or built for another vocabulary."""


@dataclass(frozen=True)
class VocabMapping:
    d2t: np.ndarray  # int64 [D]
    t2d: np.ndarray  # bool [V]

    @property
    def draft_vocab_size(self) -> int:
        return int(self.d2t.shape[0])

    @property
    def target_vocab_size(self) -> int:
        return int(self.t2d.shape[0])

    @property
    def target_ids(self) -> np.ndarray:
        """Target id of each draft id, ascending."""
        return np.arange(self.draft_vocab_size, dtype=np.int64) + self.d2t


def load_token_freq(path: str | Path) -> dict[int, int]:
    """Read ``token_freq.pt`` safely (``weights_only=True``) and check it is dict[int, int]."""
    path = Path(path)
    if not path.is_file():
        raise VocabError(f"token frequency file {path} not found: run `spectool data prepare` or pass --token-freq-path")
    try:
        freq = torch.load(path, weights_only=True)
    except Exception as exc:
        raise VocabError(f"{path} is not a readable token_freq.pt ({type(exc).__name__}): re-run `spectool data prepare`") from exc
    if not isinstance(freq, dict) or not all(isinstance(k, int) and isinstance(v, int) for k, v in freq.items()):
        raise VocabError(f"{path} must hold a dict[int, int] of token counts: re-run `spectool data prepare`")
    return freq


def build_vocab_mapping(token_freq: dict[int, int], draft_vocab_size: int, target_vocab_size: int) -> VocabMapping:
    """Top-D tokens by (count desc, id asc), padded with the smallest unused ids, sorted ascending."""
    if not 0 < draft_vocab_size <= target_vocab_size:
        raise VocabError(f"--draft-vocab-size {draft_vocab_size} must lie in [1, {target_vocab_size}] (the verifier vocab size)")
    out_of_range = [t for t in token_freq if not 0 <= t < target_vocab_size]
    if out_of_range:
        raise VocabError(
            f"token_freq holds ids {out_of_range[:3]} outside the verifier vocab of {target_vocab_size}: was the data prepared with another tokenizer?"
        )
    ranked = sorted(token_freq.items(), key=lambda kv: (-kv[1], kv[0]))
    selected = [t for t, _ in ranked[:draft_vocab_size]]
    if len(selected) < draft_vocab_size:
        chosen = set(selected)
        pad = (t for t in range(target_vocab_size) if t not in chosen)
        selected += [next(pad) for _ in range(draft_vocab_size - len(selected))]
    sel = np.sort(np.asarray(selected, dtype=np.int64))
    d2t = sel - np.arange(draft_vocab_size, dtype=np.int64)
    t2d = np.zeros(target_vocab_size, dtype=bool)
    t2d[sel] = True
    return VocabMapping(d2t=d2t, t2d=t2d)


def save_vocab_mapping(mapping: VocabMapping, d2t_path: str | Path, t2d_path: str | Path, source: str) -> None:
    d2t_path, t2d_path = Path(d2t_path), Path(t2d_path)
    d2t_path.parent.mkdir(parents=True, exist_ok=True)
    t2d_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(d2t_path) as tmp:
        np.save(tmp, mapping.d2t.astype(np.int64))
    with atomic_path(t2d_path) as tmp:
        np.save(tmp, mapping.t2d.astype(bool))
    sidecar = {
        "draft_vocab_size": mapping.draft_vocab_size,
        "target_vocab_size": mapping.target_vocab_size,
        "source": source,
        "d2t_sha256": hashlib.sha256(mapping.d2t.astype(np.int64).tobytes()).hexdigest(),
        "files": [d2t_path.name, t2d_path.name],
    }
    atomic_write(_sidecar_path(d2t_path), json.dumps(sidecar, indent=2) + "\n")


def _sidecar_path(d2t_path: Path) -> Path:
    """``vocab.json`` beside ``d2t.npy``; ``vocab-{D}.json`` beside ``d2t-{D}.npy``."""
    stem = d2t_path.stem
    return d2t_path.with_name(SIDECAR if stem == "d2t" else f"vocab{stem[3:]}.json")


def load_vocab_mapping(
    d2t_path: str | Path,
    t2d_path: str | Path,
    *,
    draft_vocab_size: int | None = None,
    target_vocab_size: int | None = None,
) -> VocabMapping:
    """Load and check a mapping; refuse one built for another D or V."""
    d2t_path, t2d_path = Path(d2t_path), Path(t2d_path)
    for p in (d2t_path, t2d_path):
        if not p.is_file():
            raise VocabError(f"vocab mapping file {p} not found: run `spectool vocab build` or fix --d2t-path/--t2d-path")
    try:
        d2t = np.load(d2t_path, allow_pickle=False)
        t2d = np.load(t2d_path, allow_pickle=False)
    except Exception as exc:
        raise VocabError(f"cannot read vocab mapping {d2t_path} / {t2d_path} ({exc}): rebuild it with `spectool vocab build`") from exc
    if d2t.ndim != 1 or d2t.dtype != np.int64:
        raise VocabError(f"{d2t_path} must be int64 [D] offsets, got {d2t.dtype} {list(d2t.shape)}: rebuild it with `spectool vocab build`")
    if t2d.ndim != 1 or t2d.dtype != np.bool_:
        raise VocabError(f"{t2d_path} must be bool [V], got {t2d.dtype} {list(t2d.shape)}: rebuild it with `spectool vocab build`")
    mapping = VocabMapping(d2t=d2t, t2d=t2d)
    sidecar = _sidecar_path(d2t_path)
    try:
        recorded = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        if not isinstance(recorded, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise VocabError(f"{sidecar} does not parse ({type(exc).__name__}): rebuild the mapping with `spectool vocab build`") from None
    D, V = mapping.draft_vocab_size, mapping.target_vocab_size
    if recorded and (recorded.get("draft_vocab_size") != D or recorded.get("target_vocab_size") != V):
        raise VocabError(f"{sidecar} says D={recorded.get('draft_vocab_size')}, V={recorded.get('target_vocab_size')} but the arrays have D={D}, V={V}: rebuild the mapping")
    if draft_vocab_size is not None and draft_vocab_size != D:
        raise VocabError(f"vocab mapping {d2t_path} was built for draft vocab {D}, not --draft-vocab-size {draft_vocab_size}: rebuild it or change the option")
    if target_vocab_size is not None and target_vocab_size != V:
        raise VocabError(f"vocab mapping {t2d_path} covers a target vocab of {V}, the verifier has {target_vocab_size}: rebuild it for this verifier")
    ids = mapping.target_ids
    if int(t2d.sum()) != D or (D and (ids.min() < 0 or ids.max() >= V or not t2d[ids].all() or np.any(np.diff(ids) <= 0))):
        raise VocabError(f"{d2t_path} and {t2d_path} disagree (d2t offsets must select the True entries of t2d, ascending): rebuild them")
    return mapping


def derived_vocab_mapping(data_dir: str | Path, token_freq_path: str | Path, draft_vocab_size: int, target_vocab_size: int) -> VocabMapping:
    """The mapping for ``token_freq_path``, cached in ``data_dir`` under a name keyed by that
    file's content (``d2t-{D}-{sha12}.npy``): reused only for the same token counts."""
    token_freq_path, data_dir = Path(token_freq_path), Path(data_dir)
    freq = load_token_freq(token_freq_path)
    digest = hashlib.sha256(token_freq_path.read_bytes()).hexdigest()[:12]
    d2t = data_dir / f"d2t-{draft_vocab_size}-{digest}.npy"
    t2d = data_dir / f"t2d-{draft_vocab_size}-{digest}.npy"
    if d2t.is_file() and t2d.is_file():
        return load_vocab_mapping(d2t, t2d, draft_vocab_size=draft_vocab_size, target_vocab_size=target_vocab_size)
    mapping = build_vocab_mapping(freq, draft_vocab_size, target_vocab_size)
    if data_dir.is_dir():
        save_vocab_mapping(mapping, d2t, t2d, source=f"{token_freq_path} (sha256 {digest}...)")
    return mapping
