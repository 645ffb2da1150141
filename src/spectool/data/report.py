"""What a processed data directory holds: counts, lengths, supervision, one decoded sample.

Library code (no rich): ``describe_dataset`` returns a JSON-ready dict that the CLI renders
(``spectool inspect DATA``) or prints as JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spectool.data.dataset import TOKEN_FREQ_FILE, ProcessedDataset

DEFAULT_SAMPLE_TOKENS = 512


def _length_histogram(lengths: np.ndarray, max_bins: int = 10) -> list[dict[str, int]]:
    """Bins [lo, hi) over sample lengths (the last bin includes the maximum)."""
    if len(lengths) == 0:
        return []
    lo, hi = int(lengths.min()), int(lengths.max())
    n_bins = max(1, min(max_bins, hi - lo + 1))
    edges = np.linspace(lo, hi + 1, n_bins + 1)
    edges = np.unique(np.floor(edges).astype(np.int64))
    counts, _ = np.histogram(lengths, bins=edges)
    return [{"lo": int(a), "hi": int(b), "count": int(c)} for a, b, c in zip(edges[:-1], edges[1:], counts)]


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [start, end) of mask == 1, in token positions."""
    out, start = [], None
    for i, m in enumerate(mask.tolist()):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    if start is not None:
        out.append((start, len(mask)))
    return out


def _load_tokenizer_for(meta: dict):
    """The verifier's tokenizer when it is a local directory (never downloads)."""
    verifier = meta.get("verifier")
    if not verifier or not Path(verifier).is_dir():
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(verifier, local_files_only=True)
    except Exception:  # a tokenizer needing remote code, a moved dir: show token ids instead
        return None


def decode_sample(input_ids: np.ndarray, loss_mask: np.ndarray, tokenizer) -> dict[str, Any]:
    """Decoded text with supervised spans as character offsets into that text.

    Each run of equal mask values is decoded on its own and the pieces are joined, so the
    offsets agree with the text by construction.
    """
    pieces, spans, pos = [], [], 0
    bounds = [0]
    for a, b in _spans(loss_mask):
        bounds += [a, b]
    bounds.append(len(input_ids))
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b <= a:
            continue
        text = tokenizer.decode([int(t) for t in input_ids[a:b]], skip_special_tokens=False)
        if loss_mask[a]:
            spans.append([pos, pos + len(text)])
        pieces.append(text)
        pos += len(text)
    return {"text": "".join(pieces), "supervised_char_spans": spans}


def describe_dataset(
    path: str | Path,
    tokenizer=None,
    *,
    sample_index: int = 0,
    max_sample_tokens: int = DEFAULT_SAMPLE_TOKENS,
) -> dict[str, Any]:
    """Counts, length histogram, supervised share, provenance and one decoded sample.

    ``tokenizer``: used to decode the sample; when None, the verifier's tokenizer is loaded
    from meta.json if that is a local directory, else the sample is given as token ids.
    Raises DatasetError (one line, names the fix) for a directory that is not a dataset.
    """
    ds = ProcessedDataset(path)
    meta = ds.meta
    lengths = ds.lengths.astype(np.int64)
    supervised_per_sample = np.add.reduceat(np.asarray(ds._mask, dtype=np.int64), ds.offsets[:-1]) if len(ds) else np.zeros(0, np.int64)
    # reduceat gives a wrong value for empty samples; there are none by construction, guard anyway
    supervised_per_sample = np.where(lengths > 0, supervised_per_sample, 0)
    n_tokens = int(lengths.sum())
    n_sup = int(supervised_per_sample.sum())
    root = Path(path)
    hs_dir = root / "hidden_states"
    info: dict[str, Any] = {
        "kind": "processed-dataset",
        "path": str(root),
        "format": meta.get("format"),
        "version": meta.get("version"),
        "num_samples": len(ds),
        "num_tokens": n_tokens,
        "num_supervised_tokens": n_sup,
        "supervised_share": (n_sup / n_tokens) if n_tokens else 0.0,
        "length": {
            "min": int(lengths.min()) if len(ds) else 0,
            "mean": float(lengths.mean()) if len(ds) else 0.0,
            "p50": int(np.percentile(lengths, 50)) if len(ds) else 0,
            "p90": int(np.percentile(lengths, 90)) if len(ds) else 0,
            "max": int(lengths.max()) if len(ds) else 0,
        },
        "length_histogram": _length_histogram(lengths),
        "supervised_per_sample": {
            "min": int(supervised_per_sample.min()) if len(ds) else 0,
            "mean": float(supervised_per_sample.mean()) if len(ds) else 0.0,
            "max": int(supervised_per_sample.max()) if len(ds) else 0,
        },
        "verifier": meta.get("verifier"),
        "tokenizer_class": meta.get("tokenizer_class"),
        "chat_template_sha256": meta.get("chat_template_sha256"),
        "max_seq_len": meta.get("max_seq_len"),
        "seed": meta.get("seed"),
        "sources": meta.get("sources", []),
        "rows_in": meta.get("rows_in"),
        "rows_out": meta.get("rows_out"),
        "dropped": meta.get("dropped", {}),
        "files": {
            "token_freq.pt": (root / TOKEN_FREQ_FILE).is_file(),
            "d2t.npy": (root / "d2t.npy").is_file(),
            "t2d.npy": (root / "t2d.npy").is_file(),
            "hidden_states": len(list(hs_dir.glob("hs_*.safetensors"))) if hs_dir.is_dir() else 0,
        },
    }
    if (root / TOKEN_FREQ_FILE).is_file():
        import torch

        try:
            freq = torch.load(root / TOKEN_FREQ_FILE, weights_only=True)
            info["token_freq"] = {"distinct_tokens": len(freq), "total": int(sum(freq.values()))}
        except Exception as exc:  # a corrupt file is reported, not fatal for inspection
            info["token_freq"] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}

    if len(ds):
        index = min(max(sample_index, 0), len(ds) - 1)
        sample = ds[index]
        ids, mask = sample.input_ids, sample.loss_mask
        truncated = len(ids) > max_sample_tokens
        if truncated:  # keep the end: that is where the supervised reply is
            ids, mask = ids[-max_sample_tokens:], mask[-max_sample_tokens:]
        entry: dict[str, Any] = {
            "index": index,
            "num_tokens": int(len(sample.input_ids)),
            "num_supervised_tokens": int(sample.loss_mask.sum()),
            "shown_from_token": int(len(sample.input_ids) - len(ids)),
            "supervised_token_spans": [list(s) for s in _spans(mask)],
        }
        tok = tokenizer if tokenizer is not None else _load_tokenizer_for(meta)
        if tok is not None:
            entry.update(decode_sample(ids, mask, tok))
        else:
            entry["token_ids"] = [int(t) for t in ids]
        info["sample"] = entry
    return info
