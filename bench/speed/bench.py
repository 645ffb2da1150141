"""spectool vs the reference trainer `speculators` 0.9.0: one EAGLE-3 / DFlash training step on
identical drafts and identical batches, both sides in one run.

Run with the interpreter of bench/speed/setup.sh (it holds both packages):

    .speculators-venv/bin/python bench/speed/bench.py --verifier DIR --out results.jsonl \
        [--kinds eagle3,dflash] [--seq-lens 2048,8192] [--draft-vocabs 8192,32000] [--batches kit,random]

Set-up (one process, not timed): per (kind, D) a speculators draft is built from the verifier (1
layer; EAGLE-3 TTT 3; DFlash block 8) with a draft vocabulary of exactly D ids (every id < D/2
plus D/2 evenly spaced ids above), saved with speculators' own ``save_pretrained``; spectool
loads the same directory (same weights). Per (kind, T) two packed batches are written: ``random``
(random ids and hidden states, one document, every token supervised) and ``kit`` (the kit's
verifier-regenerated conversations, chat template applied, prompt tokens unsupervised, packed
several documents per row, hidden states from the verifier itself). Checks: both sides' losses
agree on the same weights and batch.

Timing: one child process per (kind, T, D, batch, side) that loads only its own model and the
batch, then times forward + backward + AdamW step: wall time and process CPU time per step
(warm-up excluded). Peak memory: after set-up, /proc/self/clear_refs resets the peak RSS
(VmHWM) to the current RSS; the step's peak is VmHWM minus that RSS (CUDA: max_memory_allocated
above the set-up allocation). The two sides alternate which runs first. Every result is one
JSON line in --out; a markdown table follows at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TTT = 3
BLOCK = 8
MAX_ANCHORS = 512
WINDOW = 2048  # DFlash sliding window (both trainers' default)
THIS = Path(__file__).resolve()


# ---------------------------------------------------------------------------- set-up
def draft_vocab_ids(V: int, D: int) -> list[int]:
    """Exactly D sorted target ids: every id < D/2, then D - D/2 evenly spaced ids of the rest."""
    import numpy as np

    if D >= V:
        return list(range(V))
    low = D // 2
    high = np.unique(np.round(np.linspace(low, V - 1, D - low)).astype(np.int64))
    ids = list(range(low)) + high.tolist()
    assert len(ids) == D and len(set(ids)) == D, (V, D, len(ids))
    return ids


def build_reference(kind: str, verifier: str, D: int, out: Path, attn: str) -> None:
    """A speculators draft from the verifier, saved with speculators' own save_pretrained."""
    import torch
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(verifier)
    V = cfg.vocab_size
    ids = draft_vocab_ids(V, D)
    t2d = torch.zeros(V, dtype=torch.bool)
    t2d[ids] = True
    d2t = torch.tensor(ids) - torch.arange(D)
    maps = {"t2d": t2d, "d2t": d2t} if D < V else {"t2d": None, "d2t": None}
    cfg.num_hidden_layers = 1
    torch.manual_seed(0)
    common = dict(verifier_name_or_path=verifier, draft_vocab_size=D, draft_attn_impl=attn)
    if kind == "eagle3":
        from speculators.models.eagle3 import Eagle3DraftModel

        model = Eagle3DraftModel.from_training_args(cfg, **maps, norm_before_residual=True, ttt_steps=TTT, **common)
    else:
        from speculators.models.dflash import DFlashDraftModel
        from speculators.train.cli import create_transformer_layer_config

        # What speculators' train CLI builds for DFlash by default: Qwen3 layers, sliding window 2048.
        layer = create_transformer_layer_config(verifier, 1, "qwen3", None, WINDOW, [])
        model = DFlashDraftModel.from_training_args(layer, **maps, block_size=BLOCK, mask_token_id=0, **common)
    model.save_pretrained(out)


def kit_documents(verifier: str, kit: Path, kind: str, limit: int) -> list[tuple[list[int], list[int]]]:
    """(ids, loss mask) of the kit's regenerated conversations: prompt tokens 0, reply tokens 1."""
    from transformers import AutoTokenizer

    from spectool.data.chat.mask import ChatRenderer, conversation_rows
    from spectool.data.chat.read import read_chat_file

    tok = AutoTokenizer.from_pretrained(verifier)
    renderer = ChatRenderer(tok)
    convs, _ = read_chat_file(kit / "regen" / "train600.regen.jsonl")
    docs = []
    for conv in convs[:limit]:
        docs += conversation_rows(conv, renderer, 1 << 30).rows
    return docs


def pack(docs, T: int, kind: str, verifier: str, aux: list[int]):
    """One packed row of length T: whole documents while they fit, then a cut one (>= 64
    tokens) or padding. EAGLE-3 rows are shifted per document as spectool's loader does."""
    import torch

    from spectool.data.local_generator import LocalGenerator
    from spectool.models.eagle3 import shift_sample

    gen = LocalGenerator(verifier, aux, device="cpu")
    parts, used = [], 0
    for ids, mask in docs:
        room = T - used + (1 if kind == "eagle3" else 0)
        if room < 64:
            break
        ids, mask = ids[:room], mask[:room]
        states = gen.generate_batch([ids])[0].float()  # [n, A + 1, H]
        sample = {
            "input_ids": torch.tensor(ids), "loss_mask": torch.tensor(mask),
            "hidden_states": states[:, :-1].flatten(1), "verifier_last_hidden_states": states[:, -1],
            "position_ids": torch.arange(len(ids)),
        }
        if kind == "eagle3":
            sample = shift_sample(sample)
        sample["document_ids"] = torch.full((len(sample["input_ids"]),), len(parts))
        parts.append(sample)
        used += len(sample["input_ids"])
    row = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    pad = T - used
    if pad:
        fill = {"document_ids": -1}
        row = {k: torch.cat([v, torch.full((pad, *v.shape[1:]), fill.get(k, 0), dtype=v.dtype)]) for k, v in row.items()}
    row["position_ids"] = row["position_ids"] + (1 if kind == "eagle3" else 0)
    return {k: v[None].contiguous() for k, v in row.items()}, len(parts)


def random_batch(T: int, H: int, A: int, V: int, kind: str):
    """Random ids and hidden states, one document, every token supervised (DFlash: the last
    block unsupervised, so both trainers draw anchors from the same candidates)."""
    import torch

    g = torch.Generator().manual_seed(0)
    mask = torch.ones(1, T, dtype=torch.long)
    if kind == "dflash":
        mask[:, -BLOCK:] = 0
    return {
        "hidden_states": torch.randn(1, T, A * H, generator=g),
        "input_ids": torch.randint(0, V, (1, T), generator=g),
        "document_ids": torch.zeros(1, T, dtype=torch.long),
        "loss_mask": mask,
        "position_ids": (torch.arange(T) + (1 if kind == "eagle3" else 0))[None],
        "verifier_last_hidden_states": torch.randn(1, T, H, generator=g),
    }


def setup(args) -> None:
    """Drafts and batches for every configuration, written under --workdir."""
    from safetensors.torch import save_file

    from spectool.models import read_config

    work = Path(args.workdir)
    for kind in args.kinds:
        for D in args.draft_vocabs:
            out = work / f"{kind}-D{D}"
            if not (out / "config.json").is_file():
                build_reference(kind, args.verifier, D, out, args.attn)
        cfg = read_config(work / f"{kind}-D{args.draft_vocabs[0]}")
        H, A, V = cfg.hidden_size, cfg.num_aux, cfg.vocab_size
        docs = None
        for T in args.seq_lens:
            for name in args.batches:
                path = work / f"batch-{kind}-{name}-T{T}.safetensors"
                if path.is_file():
                    continue
                if name == "random":
                    batch, n_docs = random_batch(T, H, A, V, kind), 1
                else:
                    docs = docs or kit_documents(args.verifier, Path(args.kit), kind, args.kit_samples)
                    batch, n_docs = pack(docs, T, kind, args.verifier, list(cfg.aux_layer_ids))
                save_file(batch, str(path), metadata={"documents": str(n_docs)})


# ---------------------------------------------------------------------------- one side
def load_side(side: str, kind: str, path: Path, device: str, attn: str):
    if side == "speculators":
        if kind == "eagle3":
            from speculators.models.eagle3 import Eagle3DraftModel as cls
        else:
            from speculators.models.dflash import DFlashDraftModel as cls
        config = cls.config_class.from_pretrained(path)
        config.transformer_layer_config._attn_implementation = attn  # read by __init__ (mask builder, kernels)
        model = cls.from_pretrained(path, config=config)
        model.load_verifier_weights()  # verifier_lm_head / norm are not in the checkpoint
    else:
        from safetensors.torch import load_file

        from spectool.models import build_draft, read_config
        from spectool.verifier import load_verifier_info, read_verifier_tensors

        config = read_config(path)
        model = build_draft(config)
        verifier = read_verifier_tensors(load_verifier_info(config.verifier_name_or_path))
        tensors = load_file(str(path / "model.safetensors"))
        # speculators' DFlash checkpoints omit embed_tokens (it reloads the verifier's): same here.
        tensors.setdefault("embed_tokens.weight", verifier["embed"])
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, strict=True)
        model.attach_verifier(verifier, copy_embed_and_head=False)
    return model.float().to(device)


def step_fn(side: str, kind: str, model, batch: dict, device: str, attn: str, seed: int):
    """A closure computing the loss (and the metrics) of one training step."""
    import torch

    if side == "speculators":
        from speculators.losses import resolve_loss_config

        loss_config = resolve_loss_config("kl_div", "fused" if device == "cuda" else "eager")
        args = dict(hidden_states=batch["hidden_states"], input_ids=batch["input_ids"], document_ids=batch["document_ids"],
                    loss_mask=batch["loss_mask"].bool(), position_ids=batch["position_ids"],
                    verifier_last_hidden_states=batch["verifier_last_hidden_states"], loss_config=loss_config)
        if kind == "eagle3":
            return lambda: model(**args, ttt_steps=TTT)[1:]
        return lambda: model(**args, max_anchors=MAX_ANCHORS, gamma=4.0, per_position_loss_weight="fixed-exp-decay")[1:]
    host = {f"{k}_host": batch[k].cpu() for k in ("loss_mask", "document_ids")}  # as spectool's trainer passes them
    full = batch | host
    if kind == "eagle3":
        return lambda: model.forward_train(full, ttt_steps=TTT, loss="kl", attn_impl=attn)
    return lambda: model.forward_train(full, block_size=BLOCK, max_anchors=MAX_ANCHORS, decay_gamma=4.0, loss="kl",
                                       attn_impl=attn, generator=torch.Generator().manual_seed(seed))


def proc_status(field: str) -> float:
    """MiB of a /proc/self/status field (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def count_flops(step) -> int:
    """FLOPs of one step as torch's FlopCounterMode counts them (matmuls and attention
    kernels; an attention call counts its full q x k rectangle, so work skipped inside a
    causal call is not credited, work skipped by not calling is)."""
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu not in fc.flop_registry:  # CPU kernels are not registered
        fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)(
            lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v))
        fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)(
            lambda g, q, k, v, *a, out_shape=None, **kw: fc.sdpa_backward_flop_count(g, q, k, v))
    with fc.FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def count_cuda_syncs(compute, opt, amp) -> int:
    """Host synchronisations of one step (forward, backward, optimizer) that CUDA's sync
    debug mode reports."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with amp:
                loss = compute()[0]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)


def measured_peak_tflops(device: str, bf16: bool) -> float:
    """Dense matmul throughput of this device and thread count (fp32 on CPU, bf16 with --bf16 on CUDA)."""
    import torch

    dtype = torch.bfloat16 if device == "cuda" and bf16 else torch.float32
    n = 8192 if device == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10 if device == "cuda" else 2):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / (10 if device == "cuda" else 2))
    return 2 * n**3 / best / 1e12


def time_one(args) -> dict:
    """Child process: one side, one configuration; nothing else alive in it."""
    import gc

    import torch
    from safetensors.torch import load_file

    cuda = args.device == "cuda"
    work = Path(args.workdir)
    torch.manual_seed(0)
    model = load_side(args.side, args.kind, work / f"{args.kind}-D{args.draft_vocab}", args.device, args.attn)
    batch_path = work / f"batch-{args.kind}-{args.batch}-T{args.seq_len}.safetensors"
    batch = {k: v.to(args.device) for k, v in load_file(str(batch_path)).items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    compute = step_fn(args.side, args.kind, model, batch, args.device, args.attn, seed=0)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and args.bf16 else torch.autocast("cpu", enabled=False)

    def step() -> float:
        with amp:
            loss = compute()[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = proc_status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    for _ in range(args.warmup):
        step()
    wall, cpu, losses = [], [], []
    for _ in range(args.steps):
        if cuda:
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(step())
        if cuda:
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = torch.cuda.max_memory_allocated() / 2**20 - base if cuda else proc_status("VmHWM") - base
    flops = count_flops(step) if args.flops else None
    syncs = count_cuda_syncs(compute, opt, amp) if cuda else None
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    mask = batch["loss_mask"]
    return {
        "kind": "timing", "draft": args.kind, "side": args.side, "device": args.device, "attn": args.attn,
        "seq_len": args.seq_len, "draft_vocab": args.draft_vocab, "batch": args.batch,
        "supervised_tokens": int(mask.sum()), "documents": int(batch["document_ids"].max()) + 1,
        "trainable_params": sum(p.numel() for p in params), "threads": torch.get_num_threads(),
        "step_wall_ms": 1000 * med(wall), "step_cpu_ms": 1000 * med(cpu),
        "step_wall_ms_all": [round(1000 * t, 1) for t in wall], "step_cpu_ms_all": [round(1000 * t, 1) for t in cpu],
        "peak_mem_mb": peak, "losses": losses, "step_flops": flops, "cuda_host_syncs_in_step": syncs,
        "achieved_tflops": flops / med(wall) / 1e12 if flops else None,
        "device_peak_tflops": args.peak_tflops or (measured_peak_tflops(args.device, args.bf16) if flops else None),
        "mem_kind": "cuda max_memory_allocated above set-up" if cuda else "VmHWM above post-set-up RSS (clear_refs)",
    }


def check(args) -> dict:
    """Both sides' loss and parameter gradients on the same weights and batch: the two
    trainers then differ only in what they feed a step (batches, order, seeds), not in it."""
    work = Path(args.workdir)
    from safetensors.torch import load_file

    batch = load_file(str(work / f"batch-{args.kind}-{args.batch}-T{args.seq_len}.safetensors"))
    out = {"kind": "loss-check", "draft": args.kind, "draft_vocab": args.draft_vocab, "seq_len": args.seq_len, "batch": args.batch}
    grads = {}
    for side in ("speculators", "spectool"):
        model = load_side(side, args.kind, work / f"{args.kind}-D{args.draft_vocab}", "cpu", "sdpa")
        loss = step_fn(side, args.kind, model, batch, "cpu", "sdpa", seed=0)()[0]
        loss.backward()
        out[f"{side}_loss"] = float(loss.detach())
        # Parameter names are the checkpoint's on both sides (spectool loads speculators' file).
        grads[side] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        del model
    out["rel_diff"] = abs(out["speculators_loss"] - out["spectool_loss"]) / abs(out["speculators_loss"])
    ours, ref = grads["spectool"], grads["speculators"]
    if set(ours) != set(ref):
        out["grad_params_differ"] = sorted(set(ours) ^ set(ref))
    out["grad_rel_diff_max"] = max(float((ours[n] - ref[n]).norm() / ref[n].norm().clamp_min(1e-30)) for n in set(ours) & set(ref))
    return out


# ---------------------------------------------------------------------------- driver
def _gflop(r: dict) -> str:
    return f"{r['step_flops'] / 1e9:.1f}" if r.get("step_flops") else "-"


def _mfu(r: dict) -> str:
    return f"{r['achieved_tflops'] / r['device_peak_tflops']:.0%}" if r.get("step_flops") and r.get("device_peak_tflops") else "-"


def table(results: list[dict]) -> str:
    rows = ["| draft | batch | T | D | speculators wall / CPU ms | spectool wall / CPU ms | CPU-time ratio | speculators peak MB | spectool peak MB | mem ratio | GFLOP/step spec / ours | MFU spec / ours |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    timing: dict = {}
    for r in results:
        if r["kind"] == "timing":
            timing.setdefault((r["draft"], r["batch"], r["seq_len"], r["draft_vocab"]), {})[r["side"]] = r
    for (kind, batch, T, D), sides in sorted(timing.items()):
        a, b = sides.get("speculators"), sides.get("spectool")
        if a and b:
            rows.append(f"| {kind} | {batch} | {T} | {D} | {a['step_wall_ms']:.0f} / {a['step_cpu_ms']:.0f} | {b['step_wall_ms']:.0f} / {b['step_cpu_ms']:.0f} | "
                        f"{b['step_cpu_ms'] / a['step_cpu_ms']:.2f} | {a['peak_mem_mb']:.0f} | {b['peak_mem_mb']:.0f} | {b['peak_mem_mb'] / max(a['peak_mem_mb'], 1e-9):.2f} | "
                        f"{_gflop(a)} / {_gflop(b)} | {_mfu(a)} / {_mfu(b)} |")
    return "\n".join(rows)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--verifier", required=True)
    p.add_argument("--kit", default="/work/shared/kit")
    p.add_argument("--kit-samples", type=int, default=600, help="kit conversations available for packing")
    p.add_argument("--workdir", default=str(THIS.parents[2] / ".cache" / "bench-speed"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "simple_flex_attention"), help="both sides; flex trains on CUDA only")
    p.add_argument("--bf16", action="store_true", help="CUDA: bf16 autocast on both sides")
    p.add_argument("--kinds", default="eagle3,dflash")
    p.add_argument("--seq-lens", default="2048,8192")
    p.add_argument("--draft-vocabs", default="8192,32000")
    p.add_argument("--batches", default="kit,random")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1, help="repeat the grid; the side that runs first alternates")
    p.add_argument("--threads", type=int, default=1, help="torch threads per child")
    p.add_argument("--out", required=True, help="JSONL file of the results (appended)")
    p.add_argument("--flops", action="store_true", help="count each step's FLOPs (one extra step) and the device's matmul peak")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (default: a measured dense matmul)")
    p.add_argument("--mode", default="all", choices=("all", "setup", "check", "time"))
    p.add_argument("--side", default="spectool")
    p.add_argument("--kind", default="eagle3")
    p.add_argument("--batch", default="random")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--draft-vocab", type=int, default=8192)
    args = p.parse_args()
    args.kinds, args.batches = args.kinds.split(","), args.batches.split(",")
    args.verifier = str(Path(args.verifier).resolve())  # recorded in the drafts the children load
    args.seq_lens, args.draft_vocabs = ints(args.seq_lens), ints(args.draft_vocabs)
    import torch

    torch.set_num_threads(args.threads)
    if args.mode == "setup":
        setup(args)
        return
    if args.mode in ("check", "time"):
        print(json.dumps(check(args) if args.mode == "check" else time_one(args)), flush=True)
        return
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    results = []
    base = [sys.executable, str(THIS), "--verifier", args.verifier, "--kit", args.kit, "--workdir", args.workdir,
            "--device", args.device, "--attn", args.attn, "--warmup", str(args.warmup), "--steps", str(args.steps),
            "--threads", str(args.threads), "--out", args.out, "--kinds", ",".join(args.kinds),
            "--seq-lens", ",".join(map(str, args.seq_lens)), "--draft-vocabs", ",".join(map(str, args.draft_vocabs)),
            "--batches", ",".join(args.batches), "--kit-samples", str(args.kit_samples), "--peak-tflops", str(args.peak_tflops)]
    base += (["--bf16"] if args.bf16 else []) + (["--flops"] if args.flops else [])
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}

    def child(extra: list[str]) -> dict:
        res = subprocess.run(base + extra, capture_output=True, text=True, env=env)
        if res.returncode:
            r = {"kind": "error", "cmd": extra, "stderr": res.stderr[-3000:]}
        else:
            r = json.loads(res.stdout.strip().splitlines()[-1]) if extra[1] != "setup" else {"kind": "setup-done"}
        print(json.dumps(r), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(r) + "\n")
        results.append(r)
        return r

    if child(["--mode", "setup"])["kind"] == "error":
        sys.exit(1)
    T0 = min(args.seq_lens)
    for kind in args.kinds if "random" in args.batches else ():  # the parity check reads the random batch
        for D in args.draft_vocabs:
            child(["--mode", "check", "--kind", kind, "--batch", "random", "--seq-len", str(T0), "--draft-vocab", str(D)])
    order = ["speculators", "spectool"]
    for _ in range(args.rounds):
        for kind in args.kinds:
            for T in args.seq_lens:
                for D in args.draft_vocabs:
                    for batch in args.batches:
                        for side in order:
                            child(["--mode", "time", "--side", side, "--kind", kind, "--batch", batch, "--seq-len", str(T), "--draft-vocab", str(D)])
                        order.reverse()
    text = table(results)
    print("\n" + text)
    with open(Path(args.out).with_suffix(".md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
