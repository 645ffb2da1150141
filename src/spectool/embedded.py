"""The embedded default: a tiny verifier and chat data made offline, in seconds, on CPU.

Nothing here downloads anything. The tokenizer is a byte-level BPE trained on the
generated corpus, the verifier a small Llama (or Qwen3) decoder briefly pretrained on the
same synthetic chats so that its greedy replies have structure a draft can learn. Tests
build their verifiers with the same functions (usually with ``pretrain_steps=0``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_WORDS = (
    "apple river stone cloud green quick slow north south light dark paper glass "
    "tiger maple ocean silver copper window garden bridge winter summer candle"
).split()


def _task(rng: random.Random) -> tuple[str, str]:
    """One synthetic question and its deterministic answer."""
    kind = rng.randrange(5)
    if kind == 0:
        a = rng.randrange(0, 50)
        b = a + rng.randrange(3, 9)
        return f"Count from {a} to {b}.", " ".join(str(i) for i in range(a, b + 1))
    if kind == 1:
        words = rng.sample(_WORDS, rng.randrange(3, 6))
        return f"Reverse the words: {' '.join(words)}", " ".join(reversed(words))
    if kind == 2:
        word = rng.choice(_WORDS)
        return f"Spell the word {word}.", " ".join(word)
    if kind == 3:
        a, b = rng.randrange(1, 40), rng.randrange(1, 40)
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    words = rng.sample(_WORDS, rng.randrange(3, 6))
    return f"Sort the words: {' '.join(words)}", " ".join(sorted(words))


def make_chat_dataset(num_conversations: int, seed: int = 0) -> list[dict]:
    """Synthetic chats (user/assistant turns, a quarter of them with two exchanges)."""
    rng = random.Random(seed)
    rows = []
    for i in range(num_conversations):
        turns = []
        for _ in range(2 if rng.random() < 0.25 else 1):
            question, answer = _task(rng)
            turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"id": f"embedded-{i}", "conversations": turns})
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _render_chatml(turns: list[dict]) -> str:
    return "".join(f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in turns)


def build_tokenizer(vocab_size: int = 384, seed: int = 0, chat_template: str = CHATML_TEMPLATE):
    """A byte-level BPE tokenizer trained on the synthetic corpus (ChatML specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [_render_chatml(r["conversations"]) for r in make_chat_dataset(2000, seed)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    hf_tok.chat_template = chat_template
    return hf_tok


def build_tiny_verifier(
    output_dir: str | Path,
    arch: str = "llama",
    *,
    num_layers: int = 8,
    hidden_size: int = 64,
    pretrain_steps: int = 300,
    seed: int = 0,
    dtype: str = "bfloat16",
    tie_word_embeddings: bool = True,
    chat_template: str = CHATML_TEMPLATE,
) -> Path:
    """Write a tiny verifier (config, bf16 safetensors, tokenizer with chat template).

    The vocabulary is padded to a multiple of 64 above the tokenizer's length, as real
    checkpoints often are, so that code which confuses the two is caught by tests.
    Does nothing when ``output_dir/config.json`` already exists.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    output_dir = Path(output_dir)
    if (output_dir / "config.json").exists():
        return output_dir
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(seed=seed, chat_template=chat_template)
    vocab_size = (len(tokenizer) // 64 + 1) * 64
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        # head_dim 32: the smallest vLLM's CPU attention accepts (16 fails at the first request).
        num_attention_heads=max(1, hidden_size // 32),
        num_key_value_heads=max(1, hidden_size // 64),
        head_dim=32,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "llama":
        config = LlamaConfig(rope_theta=10000.0, **common)
    elif arch == "qwen3":
        config = Qwen3Config(rope_theta=1000000.0, use_sliding_window=False, **common)
    else:
        raise ValueError(f"unknown verifier arch {arch!r}: use llama or qwen3")
    model = AutoModelForCausalLM.from_config(config)
    if pretrain_steps:
        _pretrain(model, tokenizer, pretrain_steps, seed)
    model = model.to(getattr(torch, dtype))
    tmp = output_dir.with_name(output_dir.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(output_dir)
    return output_dir


def _pretrain(model, tokenizer, steps: int, seed: int, batch_size: int = 16, seq_len: int = 96) -> None:
    """A few hundred AdamW steps on the synthetic chats: enough for structured replies."""
    import torch

    rows = make_chat_dataset(4000, seed + 1)
    ids = []
    for row in rows:
        ids += tokenizer(_render_chatml(row["conversations"]))["input_ids"]
    data = torch.tensor(ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=gen)
        batch = torch.stack([data[s : s + seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def regenerate_replies(verifier_dir: str | Path, rows: list[dict], max_new_tokens: int = 48, batch_size: int = 32) -> list[dict]:
    """Replace every assistant turn by the verifier's own greedy reply (on-policy data, as
    drafts should be trained on); earlier turns keep the regenerated history."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(verifier_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(verifier_dir, dtype=torch.float32).eval()
    rows = [{**r, "conversations": [dict(t) for t in r["conversations"]]} for r in rows]
    max_turns = max(len(r["conversations"]) for r in rows)
    for turn in range(1, max_turns, 2):  # assistant turns sit at odd positions
        todo = [r for r in rows if len(r["conversations"]) > turn]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            prompts = [tok.apply_chat_template(r["conversations"][:turn], add_generation_prompt=True, tokenize=False) for r in chunk]
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            for r, ids in zip(chunk, out[:, enc["input_ids"].shape[1] :]):
                r["conversations"][turn]["content"] = tok.decode(ids, skip_special_tokens=True).strip()
    return rows


def main(argv: list[str] | None = None) -> None:
    """``python -m spectool.embedded DIR``: write DIR/verifier and DIR/chat.jsonl (the embedded default)."""
    import argparse
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads; see spectool.cli.app.main
    parser = argparse.ArgumentParser(prog="python -m spectool.embedded", description=main.__doc__)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--conversations", type=int, default=400)
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--arch", choices=("llama", "qwen3"), default="llama")
    parser.add_argument("--no-regenerate", action="store_true", help="keep the template replies instead of the verifier's own")
    args = parser.parse_args(argv)
    verifier = build_tiny_verifier(args.output_dir / "verifier", args.arch, pretrain_steps=args.pretrain_steps)
    rows = make_chat_dataset(args.conversations, seed=1)
    if not args.no_regenerate:
        rows = regenerate_replies(verifier, rows)
    chats = write_jsonl(rows, args.output_dir / "chat.jsonl")
    prompts = write_jsonl(
        [{"id": r["id"], "conversations": r["conversations"][:1]} for r in make_chat_dataset(50, seed=2)], args.output_dir / "prompts.jsonl"
    )
    print(f"verifier: {verifier}\nchat data (replies by the verifier): {chats}\nheld-out prompts: {prompts}")


if __name__ == "__main__":
    main()
