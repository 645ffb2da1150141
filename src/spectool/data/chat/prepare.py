"""``spectool data prepare``: chats -> tokens, loss masks and token frequencies on disk.

Nothing here imports typer or rich: the CLI passes a ``progress`` callback.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spectool import __version__ as spectool_version
from spectool.data.chat.mask import ChatRenderer, chat_template_sha256, conversation_rows
from spectool.data.chat.output import check_output_dir, remove_stale_derived
from spectool.data.chat.read import ChatDataError, Conversation, read_chat_file, source_files
from spectool.data.dataset import write_processed_dataset

DEFAULT_MAX_SEQ_LEN = 8192
DEFAULT_SEED = 0


@dataclass
class PrepareSummary:
    conversations_in: int = 0
    conversations_used: int = 0  # processed before --max-samples was reached
    conversations_without_assistant: int = 0
    rows_in: int = 0  # assistant turns of the conversations used
    rows_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # rows by reason
    tokens: int = 0
    supervised_tokens: int = 0
    first_error: str | None = None

    @property
    def supervised_share(self) -> float:
        return self.supervised_tokens / self.tokens if self.tokens else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["supervised_share"] = self.supervised_share
        return d


@dataclass
class PrepareResult:
    output: Path
    summary: PrepareSummary
    meta: dict


def load_tokenizer(verifier_name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(verifier_name_or_path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # OSError (not found / offline), ValueError (remote code), ...
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "pass --trust-remote-code if you trust it" if "trust_remote_code" in str(exc) else "check --verifier-name-or-path (a local dir or a cached hub id)"
        raise ChatDataError(f"cannot load the tokenizer of {verifier_name_or_path}: {msg}: {hint}") from None


def prepare_chat_data(
    data: Sequence[str | Path],
    output: str | Path,
    verifier_name_or_path: str | None = None,
    *,
    tokenizer=None,
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    seed: int = DEFAULT_SEED,
    max_samples: int | None = None,
    trust_remote_code: bool = False,
    overwrite: bool = False,
    chat_template_kwargs: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PrepareResult:
    """Read chats, tokenise and mask them, write the processed dataset and token_freq.pt.

    Conversations from all files are shuffled with ``seed`` before their rows are written,
    so the result is a function of the inputs, the tokenizer and the options only.
    ``--max-samples`` stops after that many rows. ``progress(done, total)`` is called per
    conversation.
    """
    if max_seq_len < 2:
        raise ChatDataError(f"--max-seq-len must be at least 2, got {max_seq_len}")
    if max_samples is not None and max_samples < 1:
        raise ChatDataError(f"--max-samples must be at least 1, got {max_samples}")
    output = Path(output)
    check_output_dir(output, overwrite)
    files = source_files(data)
    if tokenizer is None:
        if not verifier_name_or_path:
            raise ChatDataError("no verifier: pass --verifier-name-or-path")
        tokenizer = load_tokenizer(verifier_name_or_path, trust_remote_code)
    template_hash = chat_template_sha256(tokenizer)

    conversations: list[Conversation] = []
    sources = []
    for f in files:
        convs, digest = read_chat_file(f)
        conversations += convs
        sources.append({"path": str(f.resolve()), "sha256": digest, "conversations": len(convs)})
    random.Random(seed).shuffle(conversations)

    renderer = ChatRenderer(tokenizer, chat_template_kwargs)
    summary = PrepareSummary(conversations_in=len(conversations))
    dropped: Counter = Counter()
    rows: list[tuple[list[int], list[int]]] = []
    for done, conv in enumerate(conversations, 1):
        if max_samples is not None and len(rows) >= max_samples:
            break
        summary.conversations_used += 1
        res = conversation_rows(conv, renderer, max_seq_len)
        if res.candidates == 0:
            summary.conversations_without_assistant += 1
        summary.rows_in += res.candidates
        dropped.update(res.dropped)
        if res.error and summary.first_error is None:
            summary.first_error = res.error
        rows += res.rows
        if progress is not None:
            progress(done, len(conversations))
    if max_samples is not None and len(rows) > max_samples:
        dropped["over_max_samples"] += len(rows) - max_samples
        rows = rows[:max_samples]
    summary.dropped = {k: int(v) for k, v in sorted(dropped.items()) if v}
    summary.rows_out = len(rows)
    summary.tokens = sum(len(ids) for ids, _ in rows)
    summary.supervised_tokens = sum(sum(m) for _, m in rows)

    if not rows:
        why = ", ".join(f"{k}={v}" for k, v in summary.dropped.items()) or "no assistant turns"
        detail = f"; first problem: {summary.first_error}" if summary.first_error else ""
        raise ChatDataError(
            f"no training rows from {summary.conversations_in} conversations ({why}){detail}: "
            "check that the chats have assistant replies after a user turn, the verifier's chat template, and --max-seq-len"
        )

    meta = {
        "verifier": verifier_name_or_path or getattr(tokenizer, "name_or_path", None),
        "tokenizer_class": type(tokenizer).__name__,
        "tokenizer_len": len(tokenizer),
        "chat_template_sha256": template_hash,
        "chat_template_kwargs": dict(chat_template_kwargs or {}),
        "max_seq_len": max_seq_len,
        "seed": seed,
        "max_samples": max_samples,
        "sources": sources,
        "conversations_in": summary.conversations_in,
        "conversations_used": summary.conversations_used,
        "conversations_without_assistant": summary.conversations_without_assistant,
        "rows_in": summary.rows_in,
        "rows_out": summary.rows_out,
        "dropped": summary.dropped,
        "loss_mask": "assistant turns, one row per turn, boundary by prefix rendering",
        "spectool_version": spectool_version,
    }
    meta = write_processed_dataset(output, rows, meta, token_freq=True)
    remove_stale_derived(output)
    return PrepareResult(output=output, summary=summary, meta=meta)
