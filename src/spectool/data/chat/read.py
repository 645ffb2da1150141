"""Reading chat files: one conversation per JSONL line or a JSON list, turns normalised."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectool.errors import SpectoolError

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
class ChatDataError(SpectoolError, ValueError):
    """Bad chat input or output directory; the message names the file (and line) and the fix."""


@dataclass
class Conversation:
    turns: list[dict]
    tools: list | None
    where: str  # "file:line", for messages


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
