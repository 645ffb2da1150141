"""Run the reference trainer (speculators 0.9.0, its own venv) on spectool's data, on CPU.

Three subcommands, all run by ``.speculators-venv/bin/python`` (``bench/quality/run.sh``):

``convert SPECTOOL_DATA OUT --draft-vocab-size D --d2t F --t2d F``
    Writes the data directory speculators' trainer reads (``speculators.train.data.ArrowDataset``):
    an HF ``save_to_disk`` dataset with ``input_ids`` / ``loss_mask`` (int64) and ``seq_len``,
    torch format, row i = spectool sample i; ``hidden_states/`` = spectool's cache (a symlink:
    ``hs_{i}.safetensors`` with ``hidden_states [seq, n_aux + 1, H]`` and ``token_ids`` is the
    file format both trainers share); ``token_freq.pt``; and the draft vocabulary spectool trains
    with as ``d2t-{D}.npy`` / ``t2d-{D}.npy``, which speculators loads before building its own.
    So both trainers see the same samples, hidden states and draft vocabulary.

``train --metrics OUT.jsonl -- SPECULATORS_TRAIN_ARGS...``
    ``speculators train`` in this process with three patches, because its trainer assumes an
    accelerator: the local rank's device (``Trainer`` moves the model and every batch to
    ``get_local_rank()``, i.e. ``cuda:0``) becomes ``cpu``; the checkpointer's device (loading on
    resume uses ``get_current_device()``, ``cuda:0`` without an accelerator) becomes ``cpu``;
    ``torch.accelerator.synchronize`` (called by its step timer) becomes a no-op. Without an
    accelerator its ``torch.autocast("cuda", ...)`` disables itself, so with
    ``--hidden-states-dtype float32`` it trains in fp32, as spectool does on CPU. Every metric
    record (train steps, validation) is appended to ``--metrics``. Nothing of speculators is
    copied here.

``with-embeddings CKPT OUT --verifier DIR``
    The checkpoint ``spectool eval`` loads for one of speculators' drafts (see the function).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np


def convert(args: argparse.Namespace) -> None:
    import torch
    from datasets import Dataset

    src, out = Path(args.spectool_data), Path(args.out)
    meta = json.loads((src / "meta.json").read_text())
    ids = np.load(src / "input_ids.npy", mmap_mode="r")
    mask = np.load(src / "loss_mask.npy", mmap_mode="r")
    offsets = np.load(src / "offsets.npy")
    n = len(offsets) - 1
    if n != meta["num_samples"]:
        sys.exit(f"{src}: offsets hold {n} samples, meta.json says {meta['num_samples']}: re-run `spectool data prepare`")
    hs_dir = Path(args.hidden_states or src / "hidden_states").resolve()
    missing = [i for i in range(n) if not (hs_dir / f"hs_{i}.safetensors").is_file()]
    if missing:
        sys.exit(f"{hs_dir} lacks hidden states of {len(missing)} samples (first {missing[:3]}): run `spectool data generate`")

    rows = {
        "input_ids": [np.asarray(ids[offsets[i]:offsets[i + 1]], dtype=np.int64) for i in range(n)],
        "loss_mask": [np.asarray(mask[offsets[i]:offsets[i + 1]], dtype=np.int64) for i in range(n)],
        "seq_len": [int(offsets[i + 1] - offsets[i]) for i in range(n)],
    }
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    ds = Dataset.from_dict(rows)
    ds.set_format(type="torch")
    ds.save_to_disk(str(tmp))  # speculators loads the dataset from --data-path itself
    (tmp / "hidden_states").symlink_to(hs_dir)
    shutil.copyfile(src / "token_freq.pt", tmp / "token_freq.pt")
    d2t, t2d = np.load(args.d2t), np.load(args.t2d)
    if d2t.shape != (args.draft_vocab_size,):
        sys.exit(f"{args.d2t} has {d2t.shape[0]} draft ids, not {args.draft_vocab_size}")
    np.save(tmp / f"d2t-{args.draft_vocab_size}.npy", d2t)
    np.save(tmp / f"t2d-{args.draft_vocab_size}.npy", t2d)
    (tmp / "converted_from.json").write_text(json.dumps({"spectool_data": str(src.resolve()), "hidden_states": str(hs_dir), "num_samples": n}) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)

    # Read it back the way the trainer does: the first sample's tokens equal its cached token ids.
    from datasets import load_from_disk
    from safetensors.torch import load_file

    back = load_from_disk(str(out))
    first = load_file(str(out / "hidden_states" / "hs_0.safetensors"))
    if not torch.equal(first["token_ids"], back[0]["input_ids"]):
        sys.exit(f"{out}: sample 0's input_ids differ from its cached token_ids")
    print(f"[speculators_train] converted {n} samples ({int(sum(rows['seq_len']))} tokens) to {out}")


def with_embeddings(args: argparse.Namespace) -> None:
    """Print the checkpoint that ``spectool eval`` loads for speculators' draft ``args.ckpt``.

    speculators leaves the frozen ``embed_tokens`` out of DFlash checkpoints (it reloads the
    verifier's); spectool's loader wants every tensor. The copy in ``args.out`` adds the
    verifier's embedding, which is exactly what speculators trained and serves with. A
    checkpoint that has it already is printed unchanged. vLLM serves the original.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    ckpt, out = Path(args.ckpt), Path(args.out)
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        if "embed_tokens.weight" in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
            print(ckpt)
            return
    tensors = load_file(str(ckpt / "model.safetensors"))
    weights = Path(args.verifier) / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        name = next((k for k in f.keys() if k.endswith("embed_tokens.weight")), None)  # noqa: SIM118
        if name is None:
            sys.exit(f"{weights} has no embed_tokens.weight")
        tensors["embed_tokens.weight"] = f.get_tensor(name).to(tensors["lm_head.weight"].dtype)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ckpt / "config.json", out / "config.json")
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    print(out)


class _JsonlHandler(logging.Handler):
    """Appends each dict record of ``speculators.metrics`` (one JSON object a line)."""

    def __init__(self, path: Path):
        super().__init__()
        self.file = path.open("a")

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, dict) and not getattr(record, "hparams", False):
            self.file.write(json.dumps({"step": getattr(record, "step", None), **record.msg}, default=float) + "\n")
            self.file.flush()


def _patch_for_cpu(metrics_path: Path) -> None:
    import torch
    from speculators.train import checkpointer, cli, trainer

    trainer.get_local_rank = lambda: torch.device("cpu")
    checkpointer.get_current_device = lambda: "cpu"
    torch.accelerator.synchronize = lambda *args, **kwargs: None

    original = cli.setup_metric_logger

    def setup_metric_logger(*args, **kwargs):  # its dictConfig replaces the logger's handlers
        original(*args, **kwargs)
        logging.getLogger("speculators.metrics").addHandler(_JsonlHandler(metrics_path))

    cli.setup_metric_logger = setup_metric_logger


def train(args: argparse.Namespace, rest: list[str]) -> None:
    import torch

    if torch.accelerator.is_available():
        sys.exit("an accelerator is visible: this runner is for CPU runs (run speculators' own CLI there)")
    metrics = Path(args.metrics)
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text("")
    _patch_for_cpu(metrics)
    from speculators.train.cli import main
    from speculators.train.config import TrainConfig

    main(TrainConfig.resolve(rest))


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="spectool processed data -> speculators' data directory")
    c.add_argument("spectool_data")
    c.add_argument("out")
    c.add_argument("--hidden-states", help="spectool's hidden-state cache (default: SPECTOOL_DATA/hidden_states)")
    c.add_argument("--draft-vocab-size", type=int, required=True)
    c.add_argument("--d2t", required=True)
    c.add_argument("--t2d", required=True)
    t = sub.add_parser("train", help="speculators' trainer on CPU; its arguments after --")
    t.add_argument("--metrics", required=True, help="JSONL file of its metric records")
    e = sub.add_parser("with-embeddings", help="checkpoint for `spectool eval`: adds the verifier's embed_tokens if absent")
    e.add_argument("ckpt")
    e.add_argument("out")
    e.add_argument("--verifier", required=True)
    if "--" in argv:
        cut = argv.index("--")
        return p.parse_args(argv[:cut]), argv[cut + 1:]
    return p.parse_args(argv), []


if __name__ == "__main__":
    ns, extra = parse(sys.argv[1:])
    if ns.command == "convert":
        convert(ns)
    elif ns.command == "with-embeddings":
        with_embeddings(ns)
    else:
        train(ns, extra)
