"""Run-state fault suite: every fault ends in one line naming the problem and the fix, a
true exit code, and no file lost or silently changed (bytes compared before and after).

Disk faults use RLIMIT_FSIZE in the child process, or a small tmpfs where mount works.
"""

from __future__ import annotations

import fcntl
import os
import resource
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spectool.config import RunConfig
from spectool.engine.checkpoint import COMPLETE, LOCK, STATE, CheckpointManager, ResumeError
from spectool.engine.finite import NonFiniteError
from spectool.engine.progress import NullProgress
from spectool.errors import SpectoolError
from test_train import make_data

PY = sys.executable
# Files a run rewrites by design at every start (the lock's holder pid, the settings in force).
VOLATILE = {LOCK, "run.yaml", "train_command.txt", "resume.log"}


@pytest.fixture(scope="session")
def data(tmp_path_factory, tiny_llama) -> Path:
    return make_data(tmp_path_factory.mktemp("faults") / "data", tiny_llama, [48, 40, 56, 32, 64, 44, 36, 52, 60, 28])


def train_args(verifier: Path, data: Path, save: Path, *extra: str) -> list[str]:
    return ["train", "--verifier-name-or-path", str(verifier), "--data-path", str(data), "--save-path", str(save),
            "--on-missing", "raise", "--total-seq-len", "128", "--val-ratio", "0.2", "--log-dir", str(save.parent / "logs"),
            "--epochs", "1", "--lr", "3e-3", "--num-workers", "0", "--noise-std", "0", "--checkpoint-steps", "1",
            "--draft-attn-impl", "sdpa", *extra]


def cli(*args: str, fsize: int | None = None) -> subprocess.CompletedProcess:
    """``python -m spectool ARGS``; ``fsize`` caps the size of any file it writes (RLIMIT_FSIZE)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([PY, "-m", "spectool", *args], capture_output=True, text=True, timeout=600,
                          preexec_fn=limit if fsize else None, env={**os.environ, "OMP_NUM_THREADS": "1"})


def one_line(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def one_line_error(exc: SpectoolError, code: int, *needles: str) -> str:
    text = str(exc)
    assert "\n" not in text and exc.exit_code == code, text
    for needle in needles:
        assert needle in text, text
    return text


def snapshot(root: Path, skip: set[str] = VOLATILE) -> dict[str, bytes | str]:
    """Every file's bytes and every link's target under ``root`` (``skip``: top-level names)."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel.split("/")[0] in skip:
            continue
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


@pytest.fixture(scope="session")
def baseline(tmp_path_factory, tiny_llama, data) -> Path:
    """One finished EAGLE-3 run with a checkpoint after every step (made through the CLI,
    so its run.yaml is exactly what the same command line gives)."""
    save = tmp_path_factory.mktemp("baseline") / "save"
    proc = cli(*train_args(tiny_llama, data, save))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(CheckpointManager(save).complete()) >= 3
    return save


@pytest.fixture
def run(baseline, tmp_path) -> Path:
    save = tmp_path / "save"
    shutil.copytree(baseline, save, symlinks=True)
    return save


def saved_config(save: Path, **over) -> RunConfig:
    cfg = RunConfig.load_yaml(save / "run.yaml")
    cfg.training.save_path = str(save)
    index = {f: g for g in ("model", "data", "vocab", "training", "optimizer", "eagle3", "dflash", "scheduler") for f in vars(getattr(cfg, g))}
    for key, value in over.items():
        setattr(getattr(cfg, index[key]), key, value)
    return cfg


class Recorder(NullProgress):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)


# ---- run.yaml and checkpoints under disk faults -------------------------------------------
def test_failed_run_yaml_write_keeps_the_old_file(run, tiny_llama, data):
    before, old_yaml = snapshot(run, {LOCK}), (run / "run.yaml").read_bytes()
    proc = cli(*train_args(tiny_llama, data, run), fsize=len(old_yaml) // 2)
    one_line(proc, 2, "run.yaml", "file-size limit", "--save-path")
    assert snapshot(run, {LOCK}) == before
    assert (run / "run.yaml").read_bytes() == old_yaml
    assert not [p for p in run.iterdir() if p.name.startswith(".")  and p.name != LOCK]  # no temp file left


def test_failed_checkpoint_write_keeps_the_previous_one(run, tiny_llama, data):
    before = snapshot(run)
    latest = os.readlink(run / "latest")
    smallest = min(p.stat().st_size for p in (run / latest).rglob("*.safetensors"))
    proc = cli(*train_args(tiny_llama, data, run, "--epochs", "2"), fsize=smallest // 2)
    one_line(proc, 2, "checkpoint", "file-size limit", f"{latest} is still the latest checkpoint")
    assert snapshot(run) == before  # every checkpoint and link as it was
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp-")]
    assert "--epochs 1 -> 2" in (run / "resume.log").read_text()  # the allowed change is on record
    assert RunConfig.load_yaml(run / "run.yaml").training.epochs == 2


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _remount(mnt: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True, capture_output=True)


def test_full_disk_keeps_every_checkpoint(baseline, tmpfs, tiny_llama, data):
    save = tmpfs / "save"
    shutil.copytree(baseline, save, symlinks=True)
    fs = os.statvfs(tmpfs)
    _remount(tmpfs, f"size={(fs.f_blocks - fs.f_bfree) * fs.f_frsize + 64 * 1024}")  # room for run.yaml, not for another checkpoint
    before = snapshot(save)
    proc = cli(*train_args(tiny_llama, data, save, "--epochs", "2"))
    one_line(proc, 2, "No space left on device", "free disk space")
    assert snapshot(save) == before
    assert not [p for p in save.iterdir() if p.name.startswith(".tmp-")]


def test_read_only_save_path(baseline, tmpfs, tiny_llama, data):
    save = tmpfs / "save"
    shutil.copytree(baseline, save, symlinks=True)
    _remount(tmpfs, "ro")
    before = snapshot(save, set())
    proc = cli(*train_args(tiny_llama, data, save))
    one_line(proc, 2, "read-only", "writable --save-path")
    assert snapshot(save, set()) == before


def test_save_path_that_is_a_file(tmp_path, tiny_llama, data):
    target = tmp_path / "file"
    target.write_bytes(b"keep me")
    one_line(cli(*train_args(tiny_llama, data, target)), 2, "is a file", "pass a directory")
    assert target.read_bytes() == b"keep me"


def test_save_path_under_a_file(tmp_path, tiny_llama, data):
    (tmp_path / "file").write_bytes(b"keep me")
    one_line(cli(*train_args(tiny_llama, data, tmp_path / "file" / "save")), 2, "--save-path", "a parent of it is a file")
    assert (tmp_path / "file").read_bytes() == b"keep me"


def test_log_dir_not_writable(tmp_path, tiny_llama, data):
    (tmp_path / "file").write_bytes(b"keep me")
    proc = cli(*train_args(tiny_llama, data, tmp_path / "save", "--logger", "tensorboard", "--log-dir", str(tmp_path / "file" / "logs")))
    one_line(proc, 2, "--log-dir", "writable --log-dir")
    assert not CheckpointManager(tmp_path / "save").complete()


def test_dry_run_refuses_a_dataset_directory(tmp_path, tiny_llama, data):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    before = snapshot(copy, set())
    proc = cli("train", "--verifier-name-or-path", str(tiny_llama), "--dry-run", "--save-path", str(copy))
    one_line(proc, 2, "dataset directory", "another --save-path")
    assert snapshot(copy, set()) == before


def test_training_refuses_its_hidden_state_cache_as_save_path(tiny_llama, data):
    before = snapshot(data / "hidden_states", set())
    one_line(cli(*train_args(tiny_llama, data, data / "hidden_states")), 2, "dataset directory")
    assert snapshot(data / "hidden_states", set()) == before


# ---- option ranges -----------------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["--optimizer", "muon", "--muon-lr", "-1"], "--muon-lr"),
    (["--grad-clip", "-1"], "--grad-clip"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--muon-momentum", "1.5"], "--muon-momentum"),
    (["--scheduler-num-cosine-cycles", "0"], "--scheduler-num-cosine-cycles"),
    (["--speculator-type", "dflash", "--block-size", "4096"], "--block-size"),
])
def test_numeric_option_out_of_range(args, needle, tmp_path, tiny_llama, data):
    one_line(cli(*train_args(tiny_llama, data, tmp_path / "save", *args)), 2, needle)
    assert not (tmp_path / "save").exists()


def test_total_seq_len_shorter_than_every_sample(tmp_path, tiny_llama, data):
    from spectool.data.dataset import ProcessedDataset

    dataset = ProcessedDataset(data)
    lengths = [int(dataset.lengths[i]) for i in dataset.split(0.2)[0]]
    one_line(cli(*train_args(tiny_llama, data, tmp_path / "save", "--total-seq-len", "16")), 2,
             "--total-seq-len 16", f"shortest {min(lengths)}", f"longest {max(lengths)}", f"--total-seq-len >= {max(lengths)}")
    assert not CheckpointManager(tmp_path / "save").complete()


# ---- resume: refused and allowed changes --------------------------------------------------
def test_resume_refuses_a_changed_seed_in_one_line(run, tiny_llama, data):
    before = snapshot(run, {LOCK})
    one_line(cli(*train_args(tiny_llama, data, run, "--seed", "7")), 2, "--seed 42 -> 7", "--no-resume-from-checkpoint", "new --save-path")
    assert snapshot(run, {LOCK}) == before


@pytest.mark.parametrize("change,shown", [
    ({"total_seq_len": 256}, "--total-seq-len 128 -> 256"),
    ({"val_ratio": 0.3}, "--val-ratio 0.2 -> 0.3"),
    ({"speculator_type": "dflash"}, "--speculator-type eagle3 -> dflash"),
    ({"draft_vocab_size": 100}, "--draft-vocab-size None -> 100"),
    ({"num_layers": 2}, "--num-layers 1 -> 2"),
    ({"optimizer": "muon"}, "--optimizer adamw -> muon"),
])
def test_resume_refuses_data_order_and_model_changes(change, shown, run):
    before = snapshot(run, {LOCK})
    from spectool import train

    with pytest.raises(ResumeError) as err:
        train(saved_config(run, **change), NullProgress())
    one_line_error(err.value, 2, shown, "--no-resume-from-checkpoint")
    assert snapshot(run, {LOCK}) == before


def test_resume_refuses_another_data_path(run, data, tmp_path):
    from spectool import train

    copy = tmp_path / "other-data"
    shutil.copytree(data, copy)
    with pytest.raises(ResumeError) as err:
        train(saved_config(run, data_path=str(copy)), NullProgress())
    one_line_error(err.value, 2, f"--data-path {data} -> {copy}")


def test_resume_with_a_new_lr_warns_once_and_records_it(run):
    from spectool import train

    progress = Recorder()
    result = train(saved_config(run, lr=1e-3, epochs=2), progress)
    assert result.status == "completed"
    changed = [m for m in progress.messages if "changed settings" in m]
    assert len(changed) == 1 and "--lr 0.003 -> 0.001" in changed[0] and "--epochs 1 -> 2" in changed[0]
    log = (run / "resume.log").read_text().splitlines()
    assert len(log) == 1 and "--lr 0.003 -> 0.001" in log[0]
    # the next resume compares with the new settings: nothing changed, nothing recorded
    again = Recorder()
    train(saved_config(run, lr=1e-3, epochs=2), again)
    assert not [m for m in again.messages if "changed settings" in m]
    assert len((run / "resume.log").read_text().splitlines()) == 1


# ---- damaged checkpoints ------------------------------------------------------------------
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated master": lambda ck: _truncate(ck / STATE / "master.safetensors"),
    "garbled optimizer": lambda ck: (ck / STATE / "optimizer.pt").write_bytes(b"\0" * (ck / STATE / "optimizer.pt").stat().st_size),
    "truncated served weights": lambda ck: _truncate(ck / "model.safetensors"),
    "missing rng": lambda ck: (ck / STATE / "rng.pt").unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_latest_checkpoint_is_moved_aside_and_the_previous_resumed(damage, run, baseline):
    from safetensors.torch import load_file

    from spectool import train

    latest = run / os.readlink(run / "latest")
    previous = CheckpointManager(run).complete()[-2]
    DAMAGE[damage](latest)
    damaged_bytes = snapshot(latest, set())
    others = {p.name: snapshot(p, set()) for p in CheckpointManager(run).complete() if p != latest}
    progress = Recorder()
    result = train(saved_config(run), progress)
    assert result.status == "completed"
    aside = run / f"damaged-{latest.name}"
    assert snapshot(aside, set()) == damaged_bytes  # kept as it was, never deleted
    said = [m for m in progress.messages if m.startswith("checkpoint ")]
    assert len(said) == 1 and latest.name in said[0] and f"resuming from {previous.name}" in said[0], progress.messages
    assert any(m.startswith(f"resumed from {previous}") for m in progress.messages)
    assert f"checkpoint {latest.name} is damaged" in (run / "resume.log").read_text()
    for name, files in others.items():
        assert snapshot(run / name, set()) == files
    # the re-trained checkpoint equals the one the uninterrupted run wrote, bit for bit
    redone = load_file(str(run / latest.name / STATE / "master.safetensors"))
    original = load_file(str(baseline / latest.name / STATE / "master.safetensors"))
    assert redone.keys() == original.keys() and all(torch.equal(redone[k], original[k]) for k in original)
    assert os.readlink(run / "latest") == latest.name


def _drop_manifest(ck: Path) -> None:
    """What a checkpoint written before COMPLETE listed its files looks like."""
    (ck / COMPLETE).write_text('{"global_step": 1}\n')


def test_checkpoint_with_an_extra_tensor_is_one_line(run):
    from safetensors.torch import load_file, save_file

    from spectool import train

    latest = run / os.readlink(run / "latest")
    _drop_manifest(latest)
    master = latest / STATE / "master.safetensors"
    weights = load_file(str(master))
    save_file({**weights, "extra.weight": torch.zeros(2)}, str(master))
    before = snapshot(run, {LOCK})
    with pytest.raises(ResumeError) as err:
        train(saved_config(run), NullProgress())
    one_line_error(err.value, 2, "unexpected extra.weight", "--no-resume-from-checkpoint")
    assert snapshot(run, {LOCK}) == before


def test_state_json_with_an_unknown_key_is_one_line(run):
    import json

    from spectool import train

    latest = run / os.readlink(run / "latest")
    _drop_manifest(latest)
    state = latest / STATE / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "surprise": 1}))
    before = snapshot(run, {LOCK})
    with pytest.raises(ResumeError) as err:
        train(saved_config(run), NullProgress())
    one_line_error(err.value, 2, "unknown keys surprise", "--no-resume-from-checkpoint")
    assert snapshot(run, {LOCK}) == before


# ---- the run lock -------------------------------------------------------------------------
def test_second_train_on_a_locked_save_path_fails_at_once(run, tiny_llama, data):
    before = snapshot(run, {LOCK})
    with open(run / LOCK, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"{os.getpid()} {socket.gethostname()}\n")
        held.flush()
        one_line(cli(*train_args(tiny_llama, data, run, "--epochs", "2")), 2, "in use by another", f"pid {os.getpid()}", "another --save-path")
    assert snapshot(run, {LOCK}) == before


@pytest.mark.slow
def test_two_real_trainings_on_one_save_path(tmp_path, tiny_llama, data):
    import time

    save = tmp_path / "save"
    first = subprocess.Popen([PY, "-m", "spectool", *train_args(tiny_llama, data, save, "--epochs", "200")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not CheckpointManager(save).complete():
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.5)
        one_line(cli(*train_args(tiny_llama, data, save, "--epochs", "200")), 2, "in use by another", f"pid {first.pid}")
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()
    # killed (-9): the OS released the lock; resuming just works
    step = int(CheckpointManager(save).complete()[-1].name.split("step")[1])
    proc = cli(*train_args(tiny_llama, data, save, "--epochs", "200", "--max-steps", str(step + 1)))
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---- runs that trained on nothing, non-finite values --------------------------------------
def test_run_without_a_supervised_token_fails_with_exit_1(tmp_path, tiny_llama, data):
    empty = tmp_path / "no-hidden-states"
    empty.mkdir()
    save = tmp_path / "save"
    proc = cli(*train_args(tiny_llama, data, save, "--on-missing", "skip", "--hidden-states-path", str(empty)))
    one_line(proc, 1, "no supervised token", "--on-missing")
    assert not CheckpointManager(save).complete()


def test_nan_in_a_pretrained_draft_is_refused(tmp_path, baseline):
    from safetensors.torch import load_file, save_file

    from spectool import train
    from spectool.engine.trainer import dry_run

    draft = tmp_path / "draft"
    dry_run(saved_config(baseline, dry_run=True, save_path=str(draft)))
    weights = load_file(str(draft / "model.safetensors"))
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.ndim == 2)
    weights[name][0, 0] = float("nan")
    save_file(weights, str(draft / "model.safetensors"), metadata={"format": "pt"})
    save = tmp_path / "save"
    with pytest.raises(SpectoolError) as err:
        train(saved_config(baseline, from_pretrained=str(draft), save_path=str(save)), NullProgress())
    one_line_error(err.value, 2, "non-finite", name)
    assert not CheckpointManager(save).complete()


def test_non_finite_loss_stops_before_any_checkpoint(run):
    """A loss weight of 1e30**2 overflows fp32: the first resumed step is non-finite."""
    from spectool import train

    before = snapshot(run)
    step = int(os.readlink(run / "latest").split("step")[1])
    with pytest.raises(NonFiniteError) as err:
        train(saved_config(run, epochs=2, ttt_step_loss_decay=1e30), NullProgress())
    one_line_error(err.value, 1, f"non-finite loss at step {step + 1}", f"last good checkpoint {run / os.readlink(run / 'latest')}")
    assert snapshot(run) == before  # no checkpoint written after it

