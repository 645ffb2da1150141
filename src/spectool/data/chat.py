"""Chat data -> processed dataset: read chats, tokenise with the verifier's template, mask.

The loss mask is derived the way speculators derives it (speculators-formats.md §1.4), by
rendering prefixes of the conversation with the verifier's own chat template, so that it
works for templates without ``{% generation %}`` tags. For each assistant turn j >= 1::

    P = render(turns[:j], add_generation_prompt=True)
    F = render(turns[:j + 1])
    boundary = len(P)                          if F starts with P
             = common prefix length of P, F    if H = render(turns[:j]) is a prefix of F and
                                               that length >= len(H) (templates that pre-fill
                                               or strip <think> blocks)
    otherwise the whole conversation is rejected (counted).
    row: input_ids = F, loss_mask = 0 before the boundary, 1 after it

One conversation with k assistant turns gives k rows, each rendered as inference sees it.
Nothing here imports typer or rich: the CLI passes a ``progress`` callback.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spectool import __version__ as spectool_version
from spectool.data.dataset import is_processed_dataset, write_processed_dataset
from spectool.errors import SpectoolError

DEFAULT_MAX_SEQ_LEN = 8192
DEFAULT_SEED = 0
TOKEN_FREQ_FILE = "token_freq.pt"

ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}
# Turn keys carried through to the template besides role and content.
_EXTRA_TURN_KEYS = ("tool_calls", "tool_call_id", "name")
# Files that belong to a processed dataset (or are derived from one) and may be replaced
# by --overwrite.
_DATASET_FILES = ("input_ids.npy", "loss_mask.npy", "offsets.npy", "meta.json", TOKEN_FREQ_FILE, "d2t.npy", "t2d.npy")

# Drop reasons (rows, i.e. assistant turns, unless said otherwise).
ASSISTANT_FIRST = "assistant_turn_first"  # an assistant turn at position 0 has no context
TEMPLATE_MISMATCH = "template_prefix_mismatch"  # rendered prefixes disagree: conversation rejected
TEMPLATE_ERROR = "template_error"  # the template raised for this conversation
NO_SUPERVISED = "no_supervised_tokens"  # the turn renders to no token after the boundary
PROMPT_TOO_LONG = "prompt_exceeds_max_seq_len"  # truncation left no supervised token
DROP_REASONS = (ASSISTANT_FIRST, TEMPLATE_MISMATCH, TEMPLATE_ERROR, NO_SUPERVISED, PROMPT_TOO_LONG)


class ChatDataError(SpectoolError, ValueError):
    """Bad chat input or output directory; the message names the file (and line) and the fix."""


@dataclass
class Conversation:
    turns: list[dict]
    tools: list | None
    where: str  # "file:line", for messages


# --------------------------------------------------------------------------- reading


def source_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files behind ``--data`` arguments: files as given, directories recursively."""
    if not paths:
        raise ChatDataError("no input data: pass --data FILE (.jsonl or .json), once per file")
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in (".jsonl", ".json"))
            if not found:
                raise ChatDataError(f"{p}: directory holds no .jsonl or .json file: pass the data files with --data")
            files += found
        elif p.is_file():
            if p.suffix not in (".jsonl", ".json"):
                raise ChatDataError(f"{p}: unsupported file type {p.suffix or '(none)'}: use .jsonl (one chat per line) or .json (a list of chats)")
            files.append(p)
        else:
            raise ChatDataError(f"{p}: no such file: check the --data path")
    return files


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _iter_json_records(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """(line, record) for a .jsonl file (one object per line) or a .json list."""
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ChatDataError(f"{path}:{lineno}: invalid JSON ({exc.msg}, column {exc.colno}): fix or remove the line") from None
        return
    # .json: a list of chats. Decode element by element to know each one's line.
    decoder = json.JSONDecoder()
    n = len(text)

    def skip_ws(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    i = skip_ws(0)
    if i >= n or text[i] != "[":
        if i < n and text[i] == "{":
            raise ChatDataError(f"{path}:{_line_of(text, i)}: expected a JSON list of chats, found an object: wrap the chats in [...] or write one chat per line as .jsonl")
        raise ChatDataError(f"{path}:{_line_of(text, i)}: expected a JSON list of chats: wrap the chats in [...] or use .jsonl")
    i = skip_ws(i + 1)
    if i < n and text[i] == "]":
        return
    while True:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise ChatDataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}, column {exc.colno}): fix the file") from None
        yield _line_of(text, i), obj
        i = skip_ws(end)
        if i < n and text[i] == ",":
            i = skip_ws(i + 1)
            continue
        if i < n and text[i] == "]":
            if skip_ws(i + 1) < n:
                raise ChatDataError(f"{path}:{_line_of(text, skip_ws(i + 1))}: text after the closing ']': fix the file")
            return
        raise ChatDataError(f"{path}:{_line_of(text, min(i, n - 1))}: expected ',' or ']' in the list of chats: fix the file")


def _content_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: text only
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ChatDataError(f"{where}: content part of type {kind!r} is not supported (text-only chats): remove the conversation or convert it to text")
        return "".join(parts)
    raise ChatDataError(f"{where}: turn content must be a string, got {type(content).__name__}: fix the input")


def normalize_turn(turn: Any, where: str) -> dict:
    """A turn in role/content form (ShareGPT from/value accepted), extras preserved."""
    if not isinstance(turn, dict):
        raise ChatDataError(f"{where}: a turn must be an object with role/content (or from/value), got {type(turn).__name__}: fix the input")
    raw_role = turn.get("role", turn.get("from"))
    if not isinstance(raw_role, str):
        raise ChatDataError(f"{where}: turn has no 'role' (or ShareGPT 'from'): fix the input")
    role = ROLE_ALIASES.get(raw_role.strip().lower())
    if role is None:
        known = ", ".join(sorted(ROLE_ALIASES))
        raise ChatDataError(f"{where}: unknown role {raw_role!r}: use one of {known}")
    if "content" in turn:
        content = turn["content"]
    elif "value" in turn:
        content = turn["value"]
    else:
        content = None
        if not (role == "assistant" and turn.get("tool_calls")):
            raise ChatDataError(f"{where}: {raw_role} turn has no 'content' (or ShareGPT 'value'): fix the input")
    out: dict[str, Any] = {"role": role, "content": _content_text(content, where)}
    for key in _EXTRA_TURN_KEYS:
        if turn.get(key) is not None:
            out[key] = turn[key]
    reasoning = turn.get("reasoning_content", turn.get("thinking"))
    if reasoning is not None:
        if not isinstance(reasoning, str):
            raise ChatDataError(f"{where}: reasoning_content/thinking must be a string: fix the input")
        out["reasoning_content"] = out["thinking"] = reasoning  # templates read either key
    return out


def _conversation(record: Any, where: str) -> Conversation:
    if not isinstance(record, dict):
        raise ChatDataError(f"{where}: expected an object with a 'conversations' or 'messages' list, got {type(record).__name__}: fix the input")
    turns = record.get("conversations", record.get("messages"))
    if not isinstance(turns, list):
        what = "is not a list" if turns is not None else "is missing"
        raise ChatDataError(f"{where}: 'conversations' (or 'messages') {what}: each chat needs a list of turns")
    norm = [normalize_turn(t, f"{where} (turn {k})") for k, t in enumerate(turns)]
    system = record.get("system")
    if isinstance(system, str) and system and not (norm and norm[0]["role"] == "system"):
        norm.insert(0, {"role": "system", "content": system})
    tools = record.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools) if tools.strip() else None
        except json.JSONDecodeError:
            raise ChatDataError(f"{where}: 'tools' is a string but not JSON: give a list of tool schemas") from None
    if tools is not None and not isinstance(tools, list):
        raise ChatDataError(f"{where}: 'tools' must be a list of tool schemas: fix the input")
    return Conversation(norm, tools or None, where)


def read_chat_file(path: str | Path) -> tuple[list[Conversation], str]:
    """All conversations of one file and the file's sha256. Errors name file:line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ChatDataError(f"{path}:{line}: not UTF-8 text: convert the file to UTF-8") from None
    convs = [_conversation(rec, f"{path}:{line}") for line, rec in _iter_json_records(path, text)]
    return convs, hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- masking


def chat_template_sha256(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates
        template = json.dumps(template, sort_keys=True)
    if not template:
        raise ChatDataError(
            f"the tokenizer of {getattr(tokenizer, 'name_or_path', 'the verifier')} has no chat template: "
            "use the verifier's chat/instruct checkpoint (its tokenizer_config.json or chat_template.jinja holds one)"
        )
    return hashlib.sha256(template.encode()).hexdigest()


class ChatRenderer:
    """Renders turns with the tokenizer's chat template and tokenises the text as vLLM does."""

    def __init__(self, tokenizer, chat_template_kwargs: dict | None = None):
        self.tokenizer = tokenizer
        self.kwargs = dict(chat_template_kwargs or {})

    def text(self, turns: list[dict], add_generation_prompt: bool, tools: list | None = None) -> str:
        return self.tokenizer.apply_chat_template(
            turns, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt, **self.kwargs
        )

    def ids(self, turns: list[dict], add_generation_prompt: bool, tools: list | None = None) -> list[int]:
        text = self.text(turns, add_generation_prompt, tools)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class ConversationRows:
    rows: list[tuple[list[int], list[int]]] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    candidates: int = 0  # assistant turns seen
    error: str | None = None  # first template error/mismatch detail, for the summary


def conversation_rows(conv: Conversation, renderer: ChatRenderer, max_seq_len: int) -> ConversationRows:
    """One row per assistant turn (j >= 1), with the loss mask derived by prefix rendering."""
    out = ConversationRows()
    positions = [j for j, t in enumerate(conv.turns) if t["role"] == "assistant"]
    out.candidates = len(positions)
    rows = []
    try:
        for j in positions:
            if j == 0:
                out.dropped[ASSISTANT_FIRST] += 1
                continue
            prompt = renderer.ids(conv.turns[:j], True, conv.tools)
            full = renderer.ids(conv.turns[: j + 1], False, conv.tools)
            if full[: len(prompt)] == prompt:
                boundary = len(prompt)
            else:
                history = renderer.ids(conv.turns[:j], False, conv.tools)
                boundary = _common_prefix(prompt, full)
                if full[: len(history)] != history or boundary < len(history):
                    # The whole conversation goes: rows made for its earlier turns too.
                    out.dropped = Counter({ASSISTANT_FIRST: out.dropped[ASSISTANT_FIRST]})
                    out.dropped[TEMPLATE_MISMATCH] += len(positions) - out.dropped[ASSISTANT_FIRST]
                    out.error = f"{conv.where}: turn {j}: the rendered conversation does not extend its rendered prefix"
                    return out
            if boundary >= len(full):
                out.dropped[NO_SUPERVISED] += 1
                continue
            if boundary >= max_seq_len:
                out.dropped[PROMPT_TOO_LONG] += 1
                continue
            ids = full[:max_seq_len]
            mask = [0] * boundary + [1] * (len(ids) - boundary)
            rows.append((ids, mask))
    except Exception as exc:  # jinja TemplateError, raise_exception() in templates, ...
        if isinstance(exc, SpectoolError):
            raise
        out.dropped = Counter({ASSISTANT_FIRST: out.dropped[ASSISTANT_FIRST]})
        out.dropped[TEMPLATE_ERROR] += len(positions) - out.dropped[ASSISTANT_FIRST]
        out.error = f"{conv.where}: the chat template failed: {type(exc).__name__}: {exc}".splitlines()[0]
        return out
    out.rows = rows
    return out


# --------------------------------------------------------------------------- preparing


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


def check_output_dir(output: str | Path, overwrite: bool) -> None:
    """Refuse to replace an existing dataset unless asked; never delete what isn't ours."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ChatDataError(f"{output} exists and is not a directory: choose another --output")
    if not output.is_dir():
        return
    holds = is_processed_dataset(output) or (output / "meta.json").is_file() or (output / TOKEN_FREQ_FILE).is_file()
    if holds and not overwrite:
        raise ChatDataError(f"{output} already holds a dataset: pass --overwrite to replace it, or choose another --output")
    if holds and (output / "hidden_states").is_dir() and any((output / "hidden_states").iterdir()):
        raise ChatDataError(
            f"{output}/hidden_states holds a hidden-state cache of the old dataset that would not match the new one: "
            "delete it or choose another --output"
        )


def _remove_old_dataset(output: Path) -> None:
    for name in _DATASET_FILES:
        p = output / name
        if p.is_file():
            p.unlink()
    partial = output.with_name(output.name + ".partial")
    if partial.is_dir():
        shutil.rmtree(partial)


def save_token_freq(path: str | Path, rows: Sequence[tuple[list[int], list[int]]]) -> dict[int, int]:
    """Counts of token ids at supervised positions, saved as a plain dict (weights_only-safe)."""
    import torch

    counts: Counter = Counter()
    for ids, mask in rows:
        counts.update(t for t, m in zip(ids, mask) if m)
    freq = {int(k): int(counts[k]) for k in sorted(counts)}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(freq, tmp)
    os.replace(tmp, path)
    return freq


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
    if output.is_dir():
        _remove_old_dataset(output)
    meta = write_processed_dataset(output, rows, meta)
    save_token_freq(output / TOKEN_FREQ_FILE, rows)
    return PrepareResult(output=output, summary=summary, meta=meta)
