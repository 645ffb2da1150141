"""spectool vs the reference trainer `speculators` on identical EAGLE-3 drafts.

Run with the interpreter of bench/speed/setup.sh (it holds both packages):

    .speculators-venv/bin/python bench/speed/bench_eagle3.py --verifier DIR [--device cpu|cuda]

One speculators Eagle3DraftModel is built from the verifier (1 layer, ttt 3, draft vocab D),
saved with speculators' own save_pretrained, and loaded by spectool's load_draft: same
weights. Both get the same packed batch (random aux/last hidden states, random ids, all
tokens supervised, one document). Checks: the two losses (forward KL summed over 3 TTT
steps) and per-step full accuracies agree. Then, per side, a child process times
forward + backward + AdamW step (warm-up excluded) and records peak memory (CPU: the
child's peak RSS over its post-setup RSS; CUDA: torch.cuda.max_memory_allocated).
Prints one JSON line per measurement, and a markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TTT = 3


def build_pair(verifier: str, draft_vocab: int, workdir: Path, device: str, attn: str = "sdpa"):
    """(speculators model, spectool model) with identical weights, on device, fp32."""
    import torch
    from transformers import AutoConfig

    from speculators.models.eagle3 import Eagle3DraftModel
    from spectool.models import load_draft
    from spectool.verifier import load_verifier_info, read_verifier_tensors

    cfg = AutoConfig.from_pretrained(verifier)
    V = cfg.vocab_size
    t2d = torch.zeros(V, dtype=torch.bool)
    # A deterministic, non-contiguous draft vocabulary: every id < D/2 plus every 5th id after.
    ids = sorted(set(range(draft_vocab // 2)) | set(range(draft_vocab // 2, V, 5)))[:draft_vocab]
    t2d[ids] = True
    d2t = torch.tensor(ids) - torch.arange(draft_vocab)
    cfg.num_hidden_layers = 1
    torch.manual_seed(0)
    ref = Eagle3DraftModel.from_training_args(
        cfg,
        t2d=t2d if draft_vocab < V else None,
        d2t=d2t if draft_vocab < V else None,
        verifier_name_or_path=verifier,
        draft_vocab_size=draft_vocab,
        norm_before_residual=True,
        ttt_steps=TTT,
        draft_attn_impl=attn,
    )
    out = workdir / f"speculators-D{draft_vocab}"
    ref.save_pretrained(out)
    ours = load_draft(out)
    ours.attach_verifier(read_verifier_tensors(load_verifier_info(verifier)), copy_embed_and_head=False)
    return ref.float().to(device), ours.float().to(device), out


def make_batch(H: int, A: int, V: int, T: int, device: str, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(1, T, A * H, generator=g).to(device),
        "input_ids": torch.randint(0, V, (1, T), generator=g).to(device),
        "document_ids": torch.zeros(1, T, dtype=torch.long).to(device),
        "loss_mask": torch.ones(1, T, dtype=torch.long).to(device),
        "position_ids": (1 + torch.arange(T))[None].to(device),
        "verifier_last_hidden_states": torch.randn(1, T, H, generator=g).to(device),
    }


def ref_step(model, batch, loss_config):
    _, loss, metrics = model(
        hidden_states=batch["hidden_states"],
        input_ids=batch["input_ids"],
        document_ids=batch["document_ids"],
        loss_mask=batch["loss_mask"].bool(),
        position_ids=batch["position_ids"],
        verifier_last_hidden_states=batch["verifier_last_hidden_states"],
        ttt_steps=TTT,
        loss_config=loss_config,
    )
    return loss, metrics


ATTN = {"attn": "sdpa"}


def ours_step(model, batch):
    return model.forward_train(batch, ttt_steps=TTT, loss="kl", attn_impl=ATTN["attn"])


def check(args) -> dict:
    import torch

    from speculators.losses import resolve_loss_config

    with tempfile.TemporaryDirectory() as tmp:
        ref, ours, _ = build_pair(args.verifier, args.draft_vocab, Path(tmp), args.device, args.attn)
    H, A, V = ours.config.hidden_size, ours.config.num_aux, ours.config.vocab_size
    batch = make_batch(H, A, V, args.seq_len, args.device, seed=1)
    same = all(torch.equal(p.float(), ours.state_dict()[k].float()) for k, p in ref.state_dict().items() if k in ours.state_dict())
    with torch.no_grad():
        l_ref, m_ref = ref_step(ref, batch, resolve_loss_config("kl_div", "eager"))
        l_ours, m_ours = ours_step(ours, batch)
    def ratio(m, name):
        return float(m[f"{name}_sum"] / m[f"{name}_total"])

    acc_ref = [ratio(m_ref, f"full_acc_{k}") for k in range(TTT)]
    acc_ours = [float(m_ours[f"full_acc_{k}"][0] / m_ours[f"full_acc_{k}"][1]) for k in range(TTT)]
    step_ref = [ratio(m_ref, f"loss_{k}") for k in range(TTT)]
    step_ours = [float(m_ours[f"loss_{k}"][0] / m_ours[f"loss_{k}"][1]) for k in range(TTT)]
    return {
        "kind": "loss-check",
        "seq_len": args.seq_len,
        "draft_vocab": args.draft_vocab,
        "shared_weights_equal": same,
        "speculators_loss": float(l_ref),
        "spectool_loss": float(l_ours),
        "rel_diff": abs(float(l_ref) - float(l_ours)) / abs(float(l_ref)),
        "speculators_step_losses": step_ref,
        "spectool_step_losses": step_ours,
        "spectool_full_acc": acc_ours,
        "speculators_full_acc": acc_ref,
    }


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def time_one(args) -> dict:
    """Child process: one side, one configuration."""
    import torch

    from speculators.losses import resolve_loss_config

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ref, ours, _ = build_pair(args.verifier, args.draft_vocab, Path(tmp), args.device, args.attn)
    model = ref if args.side == "speculators" else ours
    other = ours if args.side == "speculators" else ref
    del other
    H, A, V = ours.config.hidden_size, ours.config.num_aux, ours.config.vocab_size
    batch = make_batch(H, A, V, args.seq_len, args.device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    loss_config = resolve_loss_config("kl_div", "fused" if args.device == "cuda" else "eager")
    cuda = args.device == "cuda"

    def step():
        loss = ref_step(model, batch, loss_config)[0] if args.side == "speculators" else ours_step(model, batch)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    import gc

    gc.collect()
    base = rss_mb()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated() / 2**20
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "kind": "timing",
        "side": args.side,
        "device": args.device,
        "attn": args.attn,
        "seq_len": args.seq_len,
        "draft_vocab": args.draft_vocab,
        "trainable_params": sum(p.numel() for p in params),
        "step_ms_median": 1000 * sorted(times)[len(times) // 2],
        "step_ms_all": [round(1000 * t, 1) for t in times],
        "peak_mem_mb": (torch.cuda.max_memory_allocated() / 2**20 - base_cuda) if cuda else peak - base,
        "threads": __import__("torch").get_num_threads(),
        "mem_kind": "cuda max_memory_allocated above model" if cuda else "peak RSS above post-setup RSS",
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--verifier", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "simple_flex_attention"), help="both sides; flex trains on CUDA only")
    p.add_argument("--seq-lens", default="512,1024,2048")
    p.add_argument("--draft-vocabs", default="1024,8192")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads per child (0: torch's default)")
    p.add_argument("--out", default=None, help="JSONL file of the results")
    # child modes
    p.add_argument("--mode", default="all", choices=("all", "check", "time"))
    p.add_argument("--side", default="spectool")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--draft-vocab", type=int, default=1024)
    args = p.parse_args()
    ATTN["attn"] = args.attn
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.mode == "check":
        print(json.dumps(check(args)), flush=True)
        return
    if args.mode == "time":
        print(json.dumps(time_one(args)), flush=True)
        return
    results = []
    out = open(args.out, "a") if args.out else None

    def child(extra):
        cmd = [sys.executable, __file__, "--verifier", args.verifier, "--device", args.device, "--attn", args.attn, "--warmup", str(args.warmup), "--steps", str(args.steps), "--threads", str(args.threads), *extra]
        res = subprocess.run(cmd, capture_output=True, text=True, env={"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONWARNINGS": "ignore"})
        if res.returncode:
            r = {"kind": "error", "cmd": extra, "stderr": res.stderr[-3000:]}
        else:
            r = json.loads(res.stdout.strip().splitlines()[-1])
        print(json.dumps(r), flush=True)
        if out:
            out.write(json.dumps(r) + "\n")
            out.flush()
        results.append(r)
        return r

    for D in [int(x) for x in args.draft_vocabs.split(",")]:
        child(["--mode", "check", "--seq-len", "256", "--draft-vocab", str(D)])
    for T in [int(x) for x in args.seq_lens.split(",")]:
        for D in [int(x) for x in args.draft_vocabs.split(",")]:
            for side in ("speculators", "spectool"):
                child(["--mode", "time", "--side", side, "--seq-len", str(T), "--draft-vocab", str(D)])
    print("\n| seq len | draft vocab | speculators step ms | spectool step ms | time ratio (spectool/speculators) | speculators peak MB | spectool peak MB | mem ratio |")
    print("|---|---|---|---|---|---|---|---|")
    timing = {(r["seq_len"], r["draft_vocab"], r["side"]): r for r in results if r["kind"] == "timing"}
    for T in [int(x) for x in args.seq_lens.split(",")]:
        for D in [int(x) for x in args.draft_vocabs.split(",")]:
            a, b = timing.get((T, D, "speculators")), timing.get((T, D, "spectool"))
            if a and b:
                print(
                    f"| {T} | {D} | {a['step_ms_median']:.0f} | {b['step_ms_median']:.0f} | {b['step_ms_median'] / a['step_ms_median']:.2f} | "
                    f"{a['peak_mem_mb']:.0f} | {b['peak_mem_mb']:.0f} | {b['peak_mem_mb'] / max(a['peak_mem_mb'], 1e-9):.2f} |"
                )


if __name__ == "__main__":
    main()
