"""Render what a processed data directory holds (used by ``spectool inspect DIR``)."""

from __future__ import annotations

import json
from pathlib import Path

from spectool.cli.common import console


def show_dataset(path: Path, as_json: bool) -> int:
    """Print the dataset description as rich tables (supervised span highlighted) or JSON.

    Returns the exit status (0); a bad directory raises SpectoolError (main() reports it).
    """
    from spectool.data.report import describe_dataset

    info = describe_dataset(path)
    if as_json:
        from spectool import __version__

        info = {"spectool_version": __version__, **info}
        # plain print: rich would wrap and highlight, breaking machine-readable output
        print(json.dumps(info, indent=2))
        return 0
    _render(info)
    return 0


def _mappings(root: Path) -> list[dict]:
    """d2t.npy / d2t-{D}.npy pairs in the data dir (with their sizes)."""
    import numpy as np

    out = []
    for d2t in sorted(root.glob("d2t*.npy")):
        t2d = d2t.with_name("t2d" + d2t.name[3:])
        if t2d.is_file():
            D = np.load(d2t, mmap_mode="r", allow_pickle=False).shape[0]
            V = np.load(t2d, mmap_mode="r", allow_pickle=False).shape[0]
            out.append({"d2t": d2t.name, "t2d": t2d.name, "draft_vocab_size": int(D), "target_vocab_size": int(V)})
    return out


def _render(info: dict) -> None:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"processed dataset {info['path']}", show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value")
    t.add_row("format", f"{info['format']} v{info['version']}")
    t.add_row("verifier", str(info.get("verifier")))
    t.add_row("tokenizer", str(info.get("tokenizer_class")))
    if info.get("chat_template_sha256"):
        t.add_row("chat template sha256", info["chat_template_sha256"][:16])
    t.add_row("samples", f"{info['num_samples']:,}")
    t.add_row("tokens", f"{info['num_tokens']:,}")
    t.add_row("supervised tokens", f"{info['num_supervised_tokens']:,} ({info['supervised_share']:.1%})")
    ln = info["length"]
    t.add_row("length min/p50/mean/p90/max", f"{ln['min']} / {ln['p50']} / {ln['mean']:.1f} / {ln['p90']} / {ln['max']}")
    t.add_row("max seq len / seed", f"{info.get('max_seq_len')} / {info.get('seed')}")
    if info.get("rows_in") is not None:
        t.add_row("rows in / out", f"{info['rows_in']:,} / {info['rows_out']:,}")
    for reason, count in (info.get("dropped") or {}).items():
        t.add_row(f"  dropped: {reason}", f"{count:,}")
    for src in info.get("sources") or []:
        t.add_row("source", f"{src.get('path')} ({src.get('conversations')} chats)")
    files = info["files"]
    tf = info.get("token_freq", {})
    tf_text = f"{tf['distinct_tokens']:,} distinct" if "distinct_tokens" in tf else tf.get("error", "missing")
    t.add_row("token_freq.pt", tf_text if files["token_freq.pt"] else "[yellow]missing[/]")
    mappings = _mappings(Path(info["path"]))
    if not mappings:
        t.add_row("vocab mappings (d2t*.npy)", "none: `spectool vocab build` makes one")
    t.add_row("hidden-state cache files", f"{files['hidden_states']:,}")
    console.print(t)
    if mappings:
        from spectool.cli.inspect import vocab_table

        console.print(vocab_table(mappings, Path(info["path"])))

    hist = info.get("length_histogram") or []
    if hist:
        h = Table(title="sample lengths (tokens)", title_justify="left")
        h.add_column("range", justify="right")
        h.add_column("count", justify="right")
        h.add_column("histogram")
        top = max(b["count"] for b in hist) or 1
        for b in hist:
            rng = f"{b['lo']}" if b["hi"] - b["lo"] == 1 else f"{b['lo']}-{b['hi'] - 1}"
            h.add_row(rng, f"{b['count']:,}", "█" * max(0, round(30 * b["count"] / top)))
        console.print(h)

    sample = info.get("sample")
    if sample:
        title = f"sample {sample['index']}: {sample['num_tokens']} tokens, {sample['num_supervised_tokens']} supervised (highlighted)"
        if sample.get("shown_from_token"):
            title += f", shown from token {sample['shown_from_token']}"
        if "text" in sample:
            body = Text(sample["text"])
            for a, b in sample["supervised_char_spans"]:
                body.stylize("bold black on green", a, b)
        else:
            body = Text("(tokenizer not available locally; token ids, supervised in green)\n", style="dim")
            sup = {i for a, b in sample["supervised_token_spans"] for i in range(a, b)}
            for i, tid in enumerate(sample["token_ids"]):
                body.append(f"{tid} ", style="bold green" if i in sup else None)
        console.print(Panel(body, title=title, title_align="left"))
