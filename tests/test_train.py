"""Training engine: objectives learn, resume is exact, checkpoints are atomic, FSDP2 works,
loggers write, bad options fail in one line. CPU only; tiny verifier built offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spectool.config import RunConfig
from spectool.data.dataset import write_processed_dataset
from spectool.data.hidden_states.files import cache_file, save_hidden_states
from spectool.data.hidden_states.layers import write_layer_record

HERE = Path(__file__).parent
PY = sys.executable


def make_data(path: Path, verifier: Path, lengths: list[int], seed: int = 0) -> Path:
    """A processed dataset plus its hidden-state cache from the real (tiny) verifier."""
    from spectool.data.local_generator import LocalGenerator
    from spectool.verifier import load_verifier_info

    info = load_verifier_info(str(verifier))
    aux = info.resolve_layer_ids(None)
    rng = np.random.default_rng(seed)
    samples = []
    for n in lengths:
        ids = rng.integers(3, 300, size=n).tolist()
        samples.append((ids, [0] * (n // 4) + [1] * (n - n // 4)))
    write_processed_dataset(path, samples, {"verifier": str(verifier)})
    gen = LocalGenerator(str(verifier), aux, device="cpu")
    cache = path / "hidden_states"
    write_layer_record(cache, aux, info.num_layers, info.hidden_size, str(verifier))
    for i, (ids, _) in enumerate(samples):
        save_hidden_states(cache_file(cache, i), gen.generate_batch([ids])[0], np.asarray(ids))
    return path


@pytest.fixture(scope="session")
def train_data(tmp_path_factory, tiny_llama) -> Path:
    return make_data(tmp_path_factory.mktemp("train") / "data", tiny_llama, [48, 40, 56, 32, 64, 44, 36, 52, 60, 28])


@pytest.fixture(scope="session")
def one_sample(tmp_path_factory, pretrained_llama) -> Path:
    return make_data(tmp_path_factory.mktemp("one") / "data", pretrained_llama, [40], seed=1)


def config(verifier: Path, data: Path, save: Path, kind: str = "eagle3", **over) -> RunConfig:
    cfg = RunConfig()
    cfg.model.verifier_name_or_path = str(verifier)
    cfg.model.speculator_type = kind
    cfg.data.data_path = str(data)
    cfg.data.on_missing = "raise"
    cfg.data.total_seq_len = 128
    cfg.data.val_ratio = 0.2
    cfg.training.save_path = str(save)
    cfg.training.log_dir = str(save.parent / "logs")
    cfg.training.epochs = 2
    cfg.training.lr = 3e-3
    cfg.dataloader.num_workers = 0
    cfg.dataloader.noise_std = 0.0
    cfg.dflash.block_size = 4
    cfg.peagle.num_depths = 3
    cfg.vocab.mask_token_id = 0
    for key, value in over.items():
        group = next(g for g in ("model", "data", "training", "optimizer", "eagle3", "dflash", "peagle", "checkpoint", "scheduler", "dataloader", "loss") if hasattr(getattr(cfg, g), key))
        setattr(getattr(cfg, group), key, value)
    return cfg


@pytest.mark.parametrize("kind", ["eagle3", "dflash", "peagle"])
def test_loss_decreases(kind, tiny_llama, train_data, tmp_path):
    from spectool import train

    cfg = config(tiny_llama, train_data, tmp_path / "save", kind, epochs=6, scheduler_type="constant", scheduler_warmup_steps=0)
    result = train(cfg)
    losses = [s["loss"] for s in result.steps]
    assert result.status == "completed" and len(losses) >= 12
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
    assert len(result.validation) == 6 and result.validation[-1]["loss"] < result.validation[0]["loss"]
    # every checkpoint is a servable draft that loads strictly
    from spectool.models import load_draft

    latest = Path(cfg.training.save_path) / "latest"
    assert load_draft(latest).config.speculator_type == kind
    assert (Path(cfg.training.save_path) / "run.yaml").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["eagle3", "dflash", "peagle"])
def test_overfit_one_sample(kind, pretrained_llama, one_sample, tmp_path):
    """A draft that memorises one sample predicts every TTT step / block position exactly."""
    from spectool import train

    # Cross-entropy to the verifier's argmax: KL can be tiny while near-tied argmaxes flip.
    cfg = config(pretrained_llama, one_sample, tmp_path / "save", kind, epochs=600, val_ratio=0.0, lr=3e-3, loss="ce",
                 scheduler_type="linear", scheduler_warmup_steps=0, checkpoint_freq=1000, grad_clip=0.0)
    result = train(cfg)
    last = result.steps[-1]
    accs = {k: v for k, v in last.items() if k.startswith("full_acc_")}
    assert len(accs) == 3  # ttt_steps 3 / block_size 4 / num_depths 3
    assert all(v == 1.0 for v in accs.values()), accs
    assert last["acceptance_length"] == pytest.approx(1 + len(accs))


def _driver(cfg: RunConfig, tmp: Path, losses: str, *extra: str) -> subprocess.CompletedProcess:
    yaml_path = tmp / f"{Path(losses).stem}.yaml"
    cfg.save_yaml(yaml_path)
    return subprocess.run([PY, str(HERE / "train_driver.py"), str(yaml_path), str(tmp / losses), *extra],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))})


def _losses(path: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines())}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["eagle3", "dflash", "peagle"])
def test_resume_after_kill9_matches_uninterrupted(kind, tiny_llama, train_data, tmp_path):
    over = dict(epochs=2, checkpoint_steps=2, optimizer="muon", noise_std=0.05)
    ref = _driver(config(tiny_llama, train_data, tmp_path / "ref", kind, **over), tmp_path, "ref.jsonl")
    assert ref.returncode == 0, ref.stderr[-2000:]
    cfg = config(tiny_llama, train_data, tmp_path / "run", kind, **over)
    killed = _driver(cfg, tmp_path, "run.jsonl", "--kill-at-step", "3")
    assert killed.returncode == -9
    assert os.readlink(tmp_path / "run" / "latest") == "epoch1_step2"  # a mid-epoch checkpoint
    resumed = _driver(cfg, tmp_path, "run.jsonl")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ref_l, run_l = _losses(tmp_path / "ref.jsonl"), _losses(tmp_path / "run.jsonl")
    assert sorted(run_l) == sorted(ref_l)
    for step in ref_l:  # steps 4, 5 ran twice; the resumed run rewrote them
        assert run_l[step] == pytest.approx(ref_l[step], rel=1e-6, abs=1e-7), (step, run_l[step], ref_l[step])


@pytest.mark.slow
def test_kill_during_checkpoint_write_resumes_previous(tiny_llama, train_data, tmp_path):
    cfg = config(tiny_llama, train_data, tmp_path / "run", epochs=2, checkpoint_steps=2)
    killed = _driver(cfg, tmp_path, "run.jsonl", "--kill-in-checkpoint", "2")
    assert killed.returncode == -9
    save = tmp_path / "run"
    from spectool.engine.checkpoint import CheckpointManager

    half = [p for p in save.iterdir() if p.name.startswith(".tmp-")]
    assert len(half) == 1 and (half[0] / "model.safetensors").is_file()  # the kill hit mid-write
    assert os.readlink(save / "latest") == "epoch1_step2"
    assert [p.name for p in CheckpointManager(save).complete()] == ["epoch1_step2"]
    resumed = _driver(cfg, tmp_path, "resumed.jsonl")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert min(_losses(tmp_path / "resumed.jsonl")) == 3  # resumed after step 2


def test_tensorboard_scalars_read_back(tiny_llama, train_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from spectool import train

    cfg = config(tiny_llama, train_data, tmp_path / "save", epochs=1, logger="tensorboard", run_name="tb")
    result = train(cfg)
    acc = EventAccumulator(str(tmp_path / "logs" / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/full_acc_0", "train/cond_acc_2", "train/acceptance_length", "val/loss", "lr/AdamW", "perf/tokens_per_s"} <= tags
    logged = [e.value for e in acc.Scalars("train/loss")]
    assert logged == pytest.approx([s["loss"] for s in result.steps], rel=1e-6)
    assert "config/text_summary" in acc.Tags()["tensors"]


BAD = [
    (["--from-pretrained", "x", "--draft-config", "y"], "exclude each other"),
    (["--epochs", "0"], "--epochs"),
    (["--d2t-path", "a.npy"], "--t2d-path"),
    (["--logger", "wandb"], "pip install wandb"),
    (["--target-layer-ids", "2", "99"], "99"),
    (["--data-path", "/nonexistent/data"], "/nonexistent/data"),
    (["--save-best", "--val-ratio", "0"], "--val-ratio"),
]


@pytest.mark.parametrize("args,needle", BAD)
def test_bad_options_fail_in_one_line(args, needle, tiny_llama, train_data, tmp_path):
    if args[0] == "--logger" and __import__("importlib").util.find_spec("wandb"):
        pytest.skip("wandb is installed here")
    base = ["train", "--verifier-name-or-path", str(tiny_llama), "--data-path", str(train_data),
            "--save-path", str(tmp_path / "save"), "--num-workers", "0"]
    proc = subprocess.run([PY, "-m", "spectool", *base, *args], capture_output=True, text=True, timeout=300)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], proc.stderr
    assert not (tmp_path / "save" / "latest").exists()


def test_dry_run_and_resume_cli(tiny_llama, train_data, tmp_path):
    save = tmp_path / "init"
    proc = subprocess.run([PY, "-m", "spectool", "train", "--verifier-name-or-path", str(tiny_llama),
                           "--save-path", str(save), "--dry-run"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (save / "config.json").is_file() and (save / "model.safetensors").is_file() and (save / "run.yaml").is_file()
    cfg = config(tiny_llama, train_data, tmp_path / "run", epochs=1, max_steps=2)
    from spectool import train

    assert train(cfg).status == "max_steps"
    proc = subprocess.run([PY, "-m", "spectool", "resume", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stdout


def test_muon_routing_and_schedules(tiny_llama, train_data, tmp_path):
    from spectool.engine.optim import build_optimizers, is_muon_param, lr_factor
    from spectool.models.build import initialise_draft

    cfg = config(tiny_llama, train_data, tmp_path / "s", optimizer="muon")
    model = initialise_draft(cfg)
    muon, adamw = build_optimizers(model, cfg)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    for p in muon.param_groups[0]["params"]:
        assert p.ndim == 2 and "embed" not in names[id(p)] and "lm_head" not in names[id(p)]
    assert all(not is_muon_param(names[id(p)], p) for p in adamw.param_groups[0]["params"])
    assert muon.param_groups[0]["lr"] == cfg.optimizer.muon_lr
    assert [lr_factor(s, "linear", 100, 10) for s in (0, 5, 10, 55, 100)] == pytest.approx([0, 0.5, 1, 0.5, 0])
    assert lr_factor(55, "cosine", 100, 10) == pytest.approx(0.5)
    assert lr_factor(50, "constant", 100, 10) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["eagle3", "dflash", "peagle"])
def test_torchrun_fsdp2_two_ranks(kind, tiny_llama, train_data, tmp_path):
    """`torchrun -m spectool train` on 2 CPU ranks (gloo, FSDP2); the saved weights load in one process."""
    from safetensors.torch import load_file

    from spectool.models import load_draft

    save = tmp_path / "save"
    torchrun = Path(PY).with_name("torchrun")
    args = [
        str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "spectool", "train",
        "--verifier-name-or-path", str(tiny_llama), "--data-path", str(train_data), "--save-path", str(save),
        "--speculator-type", kind, "--on-missing", "raise", "--total-seq-len", "128", "--epochs", "2",
        "--lr", "3e-3", "--num-workers", "0", "--block-size", "4", "--num-depths", "3", "--mask-token-id", "0", "--val-ratio", "0.2",
        "--optimizer", "muon", "--log-dir", str(tmp_path / "logs"),
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    model = load_draft(save / "latest")
    assert model.config.speculator_type == kind
    master = load_file(str(save / "latest" / "trainer_state" / "master.safetensors"))
    assert set(master) == set(model.state_dict()) and all(torch.isfinite(v.float()).all() for v in master.values())
    # The gathered full weights are what one process sees: bf16 copy of the fp32 masters.
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            assert torch.equal(tensor.to(torch.bfloat16), master[name].to(torch.bfloat16)), name
    assert "epoch 1 validation" in proc.stdout + proc.stderr
