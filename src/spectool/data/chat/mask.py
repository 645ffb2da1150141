"""The loss mask: tokenise with the verifier's chat template, supervise the assistant replies.

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
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

from spectool.data.chat.read import ChatDataError, Conversation
from spectool.errors import SpectoolError

# Drop reasons (rows, i.e. assistant turns, unless said otherwise).
ASSISTANT_FIRST = "assistant_turn_first"  # an assistant turn at position 0 has no context
TEMPLATE_MISMATCH = "template_prefix_mismatch"  # rendered prefixes disagree: conversation rejected
TEMPLATE_ERROR = "template_error"  # the template raised for this conversation
NO_SUPERVISED = "no_supervised_tokens"  # the turn renders to no token after the boundary
PROMPT_TOO_LONG = "prompt_exceeds_max_seq_len"  # truncation left no supervised token
DROP_REASONS = (ASSISTANT_FIRST, TEMPLATE_MISMATCH, TEMPLATE_ERROR, NO_SUPERVISED, PROMPT_TOO_LONG)



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
