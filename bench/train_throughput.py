"""Training throughput of EAGLE-3 and DFlash drafts on a synthetic packed batch.

Measures supervised tokens/s of full optimizer steps (forward_train, backward, AdamW) and
peak memory above set-up (VmHWM after a /proc/self/clear_refs reset on CPU, torch.cuda.max_memory_allocated on GPU), and writes a
"Training throughput" section to BENCHMARKS.md. Runs on CPU or CUDA (flex attention and
bf16 autocast on GPU, sdpa/fp32 on CPU, as the trainer does).

    python bench/train_throughput.py [--hidden 576 --seq 2048 --draft-vocab 8192 --steps 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from spectool.attention.backends import resolve_attn_impl
from spectool.models import build_draft, get_plugin
from spectool.models.config import SpeculatorConfig

SECTION = "## Training throughput (bench/train_throughput.py)"


def make_config(kind: str, H: int, V: int, D: int) -> SpeculatorConfig:
    """A SmolLM2-135M-shaped verifier (hidden 576, 9 heads / 3 KV heads) and a 1-layer draft."""
    layer = {
        "model_type": "qwen3" if kind == "dflash" else "llama", "hidden_size": H, "intermediate_size": 1536,
        "num_hidden_layers": 1, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": H // 9,
        "vocab_size": V, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 8192,
        "hidden_act": "silu", "tie_word_embeddings": False,
    }
    fields = {"ttt_steps": 3} if kind == "eagle3" else {"block_size": 8, "mask_token_id": 0}
    return get_plugin(kind).config_class(
        layer_config=layer, draft_vocab_size=D, aux_layer_ids=[2, 15, 27],
        verifier_name_or_path="synthetic", verifier_architectures=["LlamaForCausalLM"], **fields,
    )


def synthetic_batch(T: int, H: int, V: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    docs, pos, doc, start = [], [], 0, 0
    while start < T:  # documents of 512 tokens
        n = min(512, T - start)
        docs += [doc] * n
        pos += list(range(n))
        start, doc = start + n, doc + 1
    batch = {
        "input_ids": torch.randint(3, V, (1, T), generator=g),
        "loss_mask": torch.ones(1, T, dtype=torch.long),
        "hidden_states": torch.randn(1, T, 3 * H, generator=g).to(dtype),
        "verifier_last_hidden_states": torch.randn(1, T, H, generator=g).to(dtype),
        "position_ids": torch.tensor([pos]),
        "document_ids": torch.tensor([docs]),
    }
    return {k: v.to(device) for k, v in batch.items()}


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))


def reset_peak_memory(device: torch.device) -> float:
    """Start counting the step's peak now (after set-up); returns the baseline."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    return _status_mib("VmRSS")


def peak_memory_mib(device: torch.device, baseline: float) -> float:
    """Peak above the set-up baseline (CUDA: allocator peak; CPU: VmHWM since the reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20 - baseline
    return _status_mib("VmHWM") - baseline


def run(kind: str, args: argparse.Namespace, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    model = build_draft(make_config(kind, args.hidden, args.vocab, args.draft_vocab)).to(device)
    model.reset_parameters(0)
    if hasattr(model, "d2t"):
        model.t2d[: args.draft_vocab] = True
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    dtype = torch.bfloat16 if cuda else torch.float32
    batch = synthetic_batch(args.seq, args.hidden, args.vocab, device, dtype)
    impl = resolve_attn_impl("simple_flex_attention", device, training=True)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    baseline = reset_peak_memory(device)

    def step() -> None:
        with amp:
            if kind == "eagle3":
                loss, _ = model.forward_train(batch, ttt_steps=3, attn_impl=impl)
            else:
                loss, _ = model.forward_train(batch, block_size=8, max_anchors=args.max_anchors, attn_impl=impl,
                                              generator=torch.Generator().manual_seed(0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / args.steps
    sup = int(batch["loss_mask"].sum())
    return {"kind": kind, "impl": impl, "step_s": dt, "tok_s": sup / dt, "peak_mib": peak_memory_mib(device, baseline)}


def write_section(path: Path, text: str) -> None:
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    pattern = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.S)
    new = pattern.sub(text.rstrip("\n"), old) if SECTION in old else old.rstrip("\n") + "\n\n" + text
    path.write_text(new.rstrip("\n") + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--draft-vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--max-anchors", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "BENCHMARKS.md"))
    p.add_argument("--kind", choices=("eagle3", "dflash"), help="measure one draft in this process and print JSON (internal)")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.kind:
        print(json.dumps(run(args.kind, args, device)))
        return
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    rows = []
    for kind in ("eagle3", "dflash"):  # one process each: peak RSS is per process
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--kind", kind], check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{kind}: {r['tok_s']:,.0f} supervised tok/s, {r['step_s']:.2f} s/step, peak {r['peak_mib']:,.0f} MiB ({r['impl']})")
        rows.append(r)
    mem = "max_memory_allocated" if device.type == "cuda" else "peak RSS"
    text = "\n".join([
        SECTION, "",
        f"Device: {where}; torch {torch.__version__}. Synthetic packed row: hidden {args.hidden} (SmolLM2-135M shape), "
        f"T {args.seq} (documents of 512), verifier vocab {args.vocab}, draft vocab {args.draft_vocab}, 1 draft layer, "
        f"EAGLE-3 ttt_steps 3, DFlash block 8 / max_anchors {args.max_anchors}; AdamW; {args.steps} timed steps after {args.warmup} warm-up.",
        "", f"| draft | attention | s/step | supervised tokens/s | step peak memory ({mem} above set-up, MiB) |", "|---|---|---|---|---|",
        *[f"| {r['kind']} | {r['impl']} | {r['step_s']:.2f} | {r['tok_s']:,.0f} | {r['peak_mib']:,.0f} |" for r in rows], "",
    ])
    write_section(Path(args.out), text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
