"""`spectool data prepare`: loss masks per chat-template family, fan-out, truncation, outputs.

Every template here is a minimal but faithful copy of the family's real template (the
parts that decide where the assistant reply starts and ends), installed on the embedded
byte-level tokenizer with the family's special tokens. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spectool.data.chat.mask import (
    ASSISTANT_FIRST,
    NO_SUPERVISED,
    PROMPT_TOO_LONG,
    TEMPLATE_ERROR,
    TEMPLATE_MISMATCH,
)
from spectool.data.chat.prepare import ChatDataError, prepare_chat_data
from spectool.data.dataset import ProcessedDataset
from spectool.embedded import CHATML_TEMPLATE, build_tokenizer, make_chat_dataset, write_jsonl

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
# Llama 3's pre-tokenizer split (newline runs are one piece), over the byte-level BPE.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

QWEN3_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}"
    "{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if ns.multi_step_tool and message.role == 'user' and message.content is string"
    " and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}"
    "{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.content is string %}{%- set content = message.content %}{%- else %}{%- set content = '' %}{%- endif %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is string %}{%- set reasoning_content = message.reasoning_content %}"
    "{%- else %}{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index %}"
    "{%- if loop.last or (not loop.last and reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or (messages[loop.index0 - 1].role != 'tool') %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


def _save(tok, path: Path) -> Path:
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def chatml_dir(tmp_path_factory) -> Path:
    return _save(build_tokenizer(), tmp_path_factory.mktemp("tok") / "chatml")


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory) -> Path:
    from tokenizers import Regex, pre_tokenizers

    tok = build_tokenizer(chat_template=LLAMA3_TEMPLATE)
    tok.add_special_tokens(
        {"additional_special_tokens": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    )
    tok.bos_token = "<|begin_of_text|>"
    tok.eos_token = "<|eot_id|>"
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return _save(tok, tmp_path_factory.mktemp("tok") / "llama3")


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory) -> Path:
    tok = build_tokenizer(chat_template=QWEN3_TEMPLATE)
    tok.add_special_tokens({"additional_special_tokens": ["<think>", "</think>", "<tool_response>", "</tool_response>"]})
    return _save(tok, tmp_path_factory.mktemp("tok") / "qwen3")


def _tok(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _supervised_text(tok, ids: np.ndarray, mask: np.ndarray) -> str:
    """Decode the supervised positions; asserts they form one contiguous suffix."""
    where = np.flatnonzero(mask)
    assert len(where) > 0
    assert (np.diff(where) == 1).all(), "supervised tokens are not contiguous"
    return tok.decode(ids[where].tolist(), skip_special_tokens=False)


def _context_text(tok, ids, mask) -> str:
    return tok.decode(ids[mask == 0].tolist(), skip_special_tokens=False)


def _prepare(tmp_path, verifier, chats, name="out", **kw):
    src = write_jsonl(chats, tmp_path / f"{name}.jsonl")
    res = prepare_chat_data([src], tmp_path / name, str(verifier), **kw)
    return res, ProcessedDataset(tmp_path / name)


TWO_TURNS = {
    "conversations": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Count from 1 to 3."},
        {"role": "assistant", "content": "1 2 3"},
        {"role": "user", "content": "Spell the word tiger."},
        {"role": "assistant", "content": "t i g e r"},
    ]
}


# ----------------------------------------------------------------------------- families


def test_chatml_mask_is_assistant_content_and_end_of_turn(tmp_path, chatml_dir):
    res, ds = _prepare(tmp_path, chatml_dir, [TWO_TURNS])
    tok = _tok(chatml_dir)
    assert len(ds) == 2  # one row per assistant turn
    by_len = sorted((ds[i] for i in range(len(ds))), key=lambda s: len(s.input_ids))
    first, second = by_len
    assert _supervised_text(tok, first.input_ids, first.loss_mask) == "1 2 3<|im_end|>\n"
    assert _supervised_text(tok, second.input_ids, second.loss_mask) == "t i g e r<|im_end|>\n"
    # the second row carries the first reply as unsupervised context
    ctx = _context_text(tok, second.input_ids, second.loss_mask)
    assert ctx.endswith("<|im_start|>assistant\n") and "1 2 3<|im_end|>" in ctx
    assert res.summary.rows_in == 2 and res.summary.rows_out == 2 and res.summary.dropped == {}


def test_llama3_mask_is_assistant_content_and_eot(tmp_path, llama3_dir):
    _, ds = _prepare(tmp_path, llama3_dir, [TWO_TURNS])
    tok = _tok(llama3_dir)
    texts = sorted(_supervised_text(tok, ds[i].input_ids, ds[i].loss_mask) for i in range(len(ds)))
    assert texts == ["1 2 3<|eot_id|>", "t i g e r<|eot_id|>"]
    ids = ds[0].input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert (ids == ids[0]).sum() == 1, "BOS must appear once (no double BOS from add_special_tokens)"
    ctx = _context_text(tok, ds[0].input_ids, ds[0].loss_mask)
    assert "Cutting Knowledge Date" in ctx and ctx.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_qwen3_think_block_is_supervised_and_history_reasoning_stripped(tmp_path, qwen3_dir):
    chat = {
        "messages": [
            {"role": "user", "content": "Count from 1 to 3."},
            {"role": "assistant", "content": "<think>\ncounting up\n</think>\n\n1 2 3"},
            {"role": "user", "content": "Spell the word tiger."},
            {"role": "assistant", "content": "t i g e r", "reasoning_content": "letters one by one"},
        ]
    }
    _, ds = _prepare(tmp_path, qwen3_dir, [chat])
    tok = _tok(qwen3_dir)
    rows = sorted((ds[i] for i in range(len(ds))), key=lambda s: len(s.input_ids))
    # thinking on (the template's default): the reply the verifier generates starts with <think>
    assert _supervised_text(tok, rows[0].input_ids, rows[0].loss_mask) == "<think>\ncounting up\n</think>\n\n1 2 3<|im_end|>\n"
    assert _supervised_text(tok, rows[1].input_ids, rows[1].loss_mask) == "<think>\nletters one by one\n</think>\n\nt i g e r<|im_end|>\n"
    # the template strips reasoning from history: the second row is rendered as inference sees it
    ctx = _context_text(tok, rows[1].input_ids, rows[1].loss_mask)
    assert "counting up" not in ctx and "<|im_start|>assistant\n1 2 3<|im_end|>" in ctx


def test_qwen3_prefilled_empty_think_uses_common_prefix_rule(tmp_path, qwen3_dir):
    """enable_thinking=False pre-fills an empty think block, so F does not start with P."""
    tok = _tok(qwen3_dir)
    no_reasoning = {"messages": [{"role": "user", "content": "Spell the word tiger."}, {"role": "assistant", "content": "t i g e r"}]}
    with_reasoning = {
        "messages": [
            {"role": "user", "content": "Count from 1 to 3."},
            {"role": "assistant", "content": "1 2 3", "reasoning_content": "counting up"},
        ]
    }
    res, ds = _prepare(tmp_path, qwen3_dir, [no_reasoning, with_reasoning], chat_template_kwargs={"enable_thinking": False})
    assert res.summary.rows_out == 2 and res.summary.dropped == {}
    texts = {_supervised_text(tok, ds[i].input_ids, ds[i].loss_mask) for i in range(2)}
    # no reasoning: the pre-filled empty think block is prompt, only the reply is supervised
    assert "t i g e r<|im_end|>\n" in texts
    # reasoning present: supervision starts where the rendering leaves the pre-fill, i.e.
    # after "<think>" and the newline tokens both share (tokenizer-dependent), before the reasoning
    (reasoned,) = texts - {"t i g e r<|im_end|>\n"}
    assert reasoned.endswith("counting up\n</think>\n\n1 2 3<|im_end|>\n")
    assert "<think>" not in reasoned and reasoned.strip("\n").startswith("counting up")
    assert res.meta["chat_template_kwargs"] == {"enable_thinking": False}


def test_prefix_mismatch_rejects_conversation_with_count(tmp_path):
    """A template whose generation prompt is not what it renders for assistant turns."""
    bad = (
        "{% for m in messages %}{{ '<|im_start|>' + ('bot' if m['role'] == 'assistant' else m['role']) + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% else %}{{ '<|endoftext|>' }}{% endif %}"
    )
    tdir = _save(build_tokenizer(chat_template=bad), tmp_path / "bad")
    with pytest.raises(ChatDataError) as ei:
        _prepare(tmp_path, tdir, [TWO_TURNS])
    msg = str(ei.value)
    assert "\n" not in msg and f"{TEMPLATE_MISMATCH}=2" in msg and "out.jsonl:1" in msg


def test_template_error_is_counted(tmp_path, chatml_dir):
    raising = CHATML_TEMPLATE + "{% if messages|length > 3 %}{{ raise_exception('roles must alternate') }}{% endif %}"
    tdir = _save(build_tokenizer(chat_template=raising), tmp_path / "raising")
    ok = {"conversations": TWO_TURNS["conversations"][1:3]}
    res, ds = _prepare(tmp_path, tdir, [ok, TWO_TURNS])
    assert len(ds) == 1
    assert res.summary.dropped == {TEMPLATE_ERROR: 2}
    assert "roles must alternate" in res.summary.first_error


# ----------------------------------------------------------------------------- inputs


def test_sharegpt_and_messages_and_json_list_give_the_same_rows(tmp_path, chatml_dir):
    sharegpt = {
        "id": "x",
        "conversations": [
            {"from": "system", "value": "You are terse."},
            {"from": "human", "value": "Count from 1 to 3."},
            {"from": "gpt", "value": "1 2 3"},
            {"from": "human", "value": "Spell the word tiger."},
            {"from": "gpt", "value": "t i g e r"},
        ],
    }
    _, a = _prepare(tmp_path, chatml_dir, [sharegpt], name="a")
    _, b = _prepare(tmp_path, chatml_dir, [{"messages": TWO_TURNS["conversations"]}], name="b")
    (tmp_path / "c.json").write_text(json.dumps([TWO_TURNS], indent=2))
    prepare_chat_data([tmp_path / "c.json"], tmp_path / "c", str(chatml_dir))
    c = ProcessedDataset(tmp_path / "c")
    for ds in (b, c):
        assert len(ds) == len(a) == 2
        for i in range(2):
            assert a[i].input_ids.tolist() == ds[i].input_ids.tolist()
            assert a[i].loss_mask.tolist() == ds[i].loss_mask.tolist()


def test_several_files_and_a_directory(tmp_path, chatml_dir):
    d = tmp_path / "chats"
    write_jsonl(make_chat_dataset(5, seed=1), d / "one.jsonl")
    write_jsonl(make_chat_dataset(7, seed=2), d / "sub" / "two.jsonl")
    res = prepare_chat_data([d / "one.jsonl", d / "sub" / "two.jsonl"], tmp_path / "files", str(chatml_dir))
    res_dir = prepare_chat_data([d], tmp_path / "dir", str(chatml_dir))
    assert res.summary.conversations_in == res_dir.summary.conversations_in == 12
    assert [s["conversations"] for s in res.meta["sources"]] == [5, 7]
    assert ProcessedDataset(tmp_path / "files")[0].input_ids.tolist() == ProcessedDataset(tmp_path / "dir")[0].input_ids.tolist()


def test_fan_out_counts_and_first_turn_assistant(tmp_path, chatml_dir):
    chats = [
        TWO_TURNS,
        {"conversations": [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes"}]},
        {"conversations": [{"role": "user", "content": "nobody answers"}]},
    ]
    res, ds = _prepare(tmp_path, chatml_dir, chats)
    s = res.summary
    assert (s.conversations_in, s.rows_in, s.rows_out) == (3, 4, 3)
    assert s.dropped == {ASSISTANT_FIRST: 1}
    assert s.conversations_without_assistant == 1
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["dropped"] == {ASSISTANT_FIRST: 1} and meta["rows_out"] == 3 == meta["num_samples"]


def test_truncation_and_drop_counting(tmp_path, chatml_dir):
    tok = _tok(chatml_dir)
    long_user = "Count " + " ".join(str(i) for i in range(60))
    chats = [
        {"conversations": [{"role": "user", "content": long_user}, {"role": "assistant", "content": "0 1 2"}]},
        {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " ".join(["tiger"] * 40)}]},
        {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "ok"}]},
    ]
    max_len = 24
    res, ds = _prepare(tmp_path, chatml_dir, chats, max_seq_len=max_len)
    assert res.summary.dropped == {PROMPT_TOO_LONG: 1}
    assert res.summary.rows_out == 2
    lengths = sorted(len(ds[i].input_ids) for i in range(len(ds)))
    assert lengths[-1] == max_len  # the long reply is cut at max_seq_len, its head kept supervised
    long_row = next(ds[i] for i in range(len(ds)) if len(ds[i].input_ids) == max_len)
    assert _supervised_text(tok, long_row.input_ids, long_row.loss_mask).startswith("tiger tiger")
    assert res.meta["max_seq_len"] == max_len
    # nothing left at all is an error that says why
    with pytest.raises(ChatDataError, match=f"{PROMPT_TOO_LONG}=3"):
        _prepare(tmp_path, chatml_dir, chats, name="tiny", max_seq_len=4)


def test_empty_assistant_reply_still_supervises_end_of_turn(tmp_path, chatml_dir):
    res, ds = _prepare(tmp_path, chatml_dir, [{"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}])
    assert _supervised_text(_tok(chatml_dir), ds[0].input_ids, ds[0].loss_mask) == "<|im_end|>\n"
    assert NO_SUPERVISED not in res.summary.dropped


def test_max_samples_limits_rows(tmp_path, chatml_dir):
    res, ds = _prepare(tmp_path, chatml_dir, make_chat_dataset(40, seed=3), max_samples=5)
    assert len(ds) == 5 and res.summary.rows_out == 5 and res.meta["max_samples"] == 5
    assert res.summary.conversations_used < res.summary.conversations_in


# ----------------------------------------------------------------------------- outputs


def test_token_freq_counts_supervised_tokens_only(tmp_path, chatml_dir):
    _, ds = _prepare(tmp_path, chatml_dir, make_chat_dataset(30, seed=4))
    freq = torch.load(tmp_path / "out" / "token_freq.pt", weights_only=True)
    assert type(freq) is dict and all(type(k) is int and type(v) is int for k, v in freq.items())
    expected: dict[int, int] = {}
    for i in range(len(ds)):
        s = ds[i]
        for t in s.input_ids[s.loss_mask == 1].tolist():
            expected[t] = expected.get(t, 0) + 1
    assert freq == expected
    assert sum(freq.values()) == ds.meta["num_supervised_tokens"] < ds.meta["num_tokens"]
    tok = _tok(chatml_dir)
    # prompt-only tokens never count: <|im_start|> and the "user" role never appear in replies
    assert tok.convert_tokens_to_ids("<|im_start|>") not in freq
    assert freq[tok.convert_tokens_to_ids("<|im_end|>")] == len(ds)


def test_deterministic_for_a_seed_and_recorded(tmp_path, chatml_dir):
    chats = make_chat_dataset(25, seed=5)
    src = write_jsonl(chats, tmp_path / "chats.jsonl")
    outs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        prepare_chat_data([src], tmp_path / name, str(chatml_dir), seed=seed)
        outs[name] = {f: (tmp_path / name / f).read_bytes() for f in ("input_ids.npy", "loss_mask.npy", "offsets.npy", "meta.json")}
    assert outs["a"] == outs["b"]
    assert outs["a"]["input_ids.npy"] != outs["c"]["input_ids.npy"]  # the seed shuffles
    meta = json.loads(outs["a"]["meta.json"])
    assert meta["seed"] == 7


def test_meta_records_provenance(tmp_path, chatml_dir):
    import hashlib

    res, ds = _prepare(tmp_path, chatml_dir, make_chat_dataset(6, seed=6))
    meta = ds.meta
    tok = _tok(chatml_dir)
    assert meta["verifier"] == str(chatml_dir)
    assert meta["tokenizer_class"] == type(tok).__name__
    assert meta["chat_template_sha256"] == hashlib.sha256(tok.chat_template.encode()).hexdigest()
    assert meta["max_seq_len"] == 8192 and meta["seed"] == 0
    src = meta["sources"][0]
    assert src["path"] == str((tmp_path / "out.jsonl").resolve())
    assert src["sha256"] == hashlib.sha256((tmp_path / "out.jsonl").read_bytes()).hexdigest()
    assert meta["rows_out"] == len(ds) and "dropped" in meta


def test_refuses_existing_dataset_unless_overwrite(tmp_path, chatml_dir):
    chats = make_chat_dataset(4, seed=7)
    _prepare(tmp_path, chatml_dir, chats)
    with pytest.raises(ChatDataError, match="already holds a dataset: pass --overwrite"):
        _prepare(tmp_path, chatml_dir, chats)
    (tmp_path / "out" / "d2t.npy").write_bytes(b"stale")
    res, ds = _prepare(tmp_path, chatml_dir, chats[:2], overwrite=True)
    assert len(ds) == res.summary.rows_out
    assert not (tmp_path / "out" / "d2t.npy").exists(), "a vocab mapping of the old data must not survive"
    (tmp_path / "out" / "hidden_states").mkdir()
    (tmp_path / "out" / "hidden_states" / "hs_0.safetensors").write_bytes(b"x")
    with pytest.raises(ChatDataError, match="hidden-state cache"):
        _prepare(tmp_path, chatml_dir, chats, overwrite=True)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("broken.jsonl", '{"conversations": []}\n\n{"conversations": [\n', r"broken\.jsonl:3: invalid JSON"),
        ("norole.jsonl", '{"conversations": [{"role": "user", "content": "a"}]}\n{"conversations": [{"content": "a"}]}\n', r"norole\.jsonl:2 \(turn 0\): turn has no 'role'"),
        ("role.jsonl", '{"messages": [{"role": "wizard", "content": "a"}]}\n', r"role\.jsonl:1 \(turn 0\): unknown role 'wizard': use one of"),
        ("nolist.jsonl", '{"text": "hello"}\n', r"nolist\.jsonl:1: 'conversations' \(or 'messages'\) is missing"),
        ("image.jsonl", '{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}\n', r"image\.jsonl:1 \(turn 0\): content part of type 'image_url'"),
        ("list.json", '[\n  {"conversations": []},\n  {"conversations": [{"from": "gpt"}]}\n]\n', r"list\.json:3 \(turn 0\): gpt turn has no 'content'"),
        ("obj.json", '{"conversations": []}', r"obj\.json:1: expected a JSON list of chats"),
        ("bad.json", '[\n {"conversations": []},\n {"conversations": [}\n]', r"bad\.json:3: invalid JSON"),
        ("data.txt", "hello", r"data\.txt: unsupported file type \.txt"),
    ],
)
def test_bad_input_is_one_line_error_with_file_and_line(tmp_path, chatml_dir, name, text, expected):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(ChatDataError, match=expected) as ei:
        prepare_chat_data([f], tmp_path / "out", str(chatml_dir))
    assert "\n" not in str(ei.value)
    assert not (tmp_path / "out").exists()


def test_missing_file_and_template_and_verifier(tmp_path, chatml_dir):
    with pytest.raises(ChatDataError, match="no such file"):
        prepare_chat_data([tmp_path / "nope.jsonl"], tmp_path / "out", str(chatml_dir))
    src = write_jsonl(make_chat_dataset(2), tmp_path / "c.jsonl")
    tok = build_tokenizer()
    tok.chat_template = None
    with pytest.raises(ChatDataError, match="has no chat template"):
        prepare_chat_data([src], tmp_path / "out", tokenizer=tok)
    with pytest.raises(ChatDataError, match="cannot load the tokenizer") as ei:
        prepare_chat_data([src], tmp_path / "out", str(tmp_path / "no-such-verifier"))
    assert "\n" not in str(ei.value)


# ----------------------------------------------------------------------------- CLI


def test_cli_prepare_end_to_end(tmp_path, tiny_llama):
    from typer.testing import CliRunner

    from spectool.cli.app import app

    src = write_jsonl(make_chat_dataset(12, seed=8), tmp_path / "chats.jsonl")
    out = tmp_path / "data"
    args = ["data", "prepare", "--verifier-name-or-path", str(tiny_llama), "--data", str(src), "--data", str(src),
            "--output", str(out), "--max-seq-len", "64", "--seed", "3", "--max-samples", "10"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "rows out" in r.output and "supervised share" in r.output
    ds = ProcessedDataset(out)
    assert len(ds) == 10 and ds.meta["seed"] == 3 and ds.meta["max_seq_len"] == 64
    assert len(ds.meta["sources"]) == 2
    assert (out / "token_freq.pt").is_file()
    # again without --overwrite: one-line error naming the fix, exit status 2
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2
    assert "already holds a dataset: pass --overwrite" in r.output
    assert "Traceback" not in r.output
    r = CliRunner().invoke(app, args + ["--overwrite"])
    assert r.exit_code == 0, r.output


def test_cli_bad_input_one_line(tmp_path, chatml_dir):
    from typer.testing import CliRunner

    from spectool.cli.app import app

    (tmp_path / "x.jsonl").write_text('{"conversations": [\n')
    r = CliRunner().invoke(app, ["data", "prepare", "--verifier-name-or-path", str(chatml_dir), "--data", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "o")])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "x.jsonl:1: invalid JSON" in lines[0], r.output


def test_cli_defaults_match_library():
    import inspect

    from spectool.cli import data_prepare
    from spectool.data.chat import prepare as chat

    params = inspect.signature(data_prepare.prepare).parameters
    assert params["max_seq_len"].default.default == chat.DEFAULT_MAX_SEQ_LEN
    assert params["seed"].default.default == chat.DEFAULT_SEED


# ----------------------------------------------------------------------------- inspection


def test_describe_dataset_marks_supervised_span(tmp_path, chatml_dir):
    from spectool.data.report import describe_dataset

    _prepare(tmp_path, chatml_dir, [TWO_TURNS, {"conversations": TWO_TURNS["conversations"][:3]}])
    info = describe_dataset(tmp_path / "out", tokenizer=_tok(chatml_dir))
    ds = ProcessedDataset(tmp_path / "out")
    assert info["num_samples"] == 3 == sum(b["count"] for b in info["length_histogram"])
    assert info["num_supervised_tokens"] == ds.meta["num_supervised_tokens"]
    assert 0 < info["supervised_share"] < 1
    assert info["files"]["token_freq.pt"] and info["token_freq"]["total"] == info["num_supervised_tokens"]
    sample = info["sample"]
    (a, b), = sample["supervised_char_spans"]
    assert sample["text"][b:] == ""
    assert sample["text"][a:b] in ("1 2 3<|im_end|>\n", "t i g e r<|im_end|>\n")
    assert sample["text"][:a].endswith("<|im_start|>assistant\n")
    # without a tokenizer argument the verifier's local tokenizer (from meta.json) is used
    assert describe_dataset(tmp_path / "out")["sample"]["text"] == sample["text"]
    json.dumps(info)  # JSON-ready


def test_show_dataset_rich_and_json(tmp_path, chatml_dir, capsys):
    from spectool.cli.inspect_data import show_dataset

    _prepare(tmp_path, chatml_dir, [TWO_TURNS])
    assert show_dataset(tmp_path / "out", as_json=True) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_samples"] == 2 and "supervised_char_spans" in info["sample"]
    assert show_dataset(tmp_path / "out", as_json=False) == 0
    out = capsys.readouterr().out
    assert "supervised tokens" in out and "<|im_start|>assistant" in out
    from spectool.errors import SpectoolError

    with pytest.raises(SpectoolError, match="not a processed dataset"):
        show_dataset(tmp_path / "nothing", as_json=False)
