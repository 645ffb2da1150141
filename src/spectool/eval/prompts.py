"""The prompts ``spectool eval`` decodes: each chat's turns before its first assistant reply."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from spectool.eval.report import EvalError


def read_prompts(path: str | Path, limit: int | None = None) -> list[list[dict]]:
    """Each chat's turns before its first assistant turn (system + user), in input order."""
    from spectool.data.chat.read import read_chat_file

    convs, _ = read_chat_file(path)
    prompts = []
    for conv in convs:
        turns = []
        for turn in conv.turns:
            if turn["role"] == "assistant":
                break
            turns.append({"role": turn["role"], "content": turn["content"]})
        if not any(t["role"] == "user" for t in turns):
            raise EvalError(f"{conv.where}: no user turn before the first assistant turn: every prompt needs one")
        prompts.append(turns)
        if limit is not None and len(prompts) >= limit:
            break
    if not prompts:
        raise EvalError(f"{path}: no prompts")
    return prompts


def render_prompts(tokenizer, prompts: Sequence[list[dict]]) -> list[list[int]]:
    if not getattr(tokenizer, "chat_template", None):
        raise EvalError("the verifier's tokenizer has no chat template: use its chat/instruct checkpoint")
    out = []
    for turns in prompts:
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return out
