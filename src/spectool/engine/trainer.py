"""The training loop: data -> forward_train -> backward -> clip -> step; validation,
checkpoints, resumption and graceful shutdown. Each concern lives in its own module;
this one only sequences them.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectool.attention.backends import resolve_attn_impl
from spectool.config import ConfigError, RunConfig, check_data_path, resume_changes
from spectool.engine import distributed as D
from spectool.engine.checkpoint import (
    CheckpointManager, DamagedCheckpoint, ResumeError, SavePathError, TrainerState, checkpoint_name, run_lock, save_path_error, set_rng_state,
)
from spectool.engine.finite import FiniteGuard, check_weights
from spectool.engine.metrics import MetricSum, build_sinks, check_loggers, reduce_steps
from spectool.engine.optim import build_optimizers, build_schedulers
from spectool.engine.progress import LogProgress, NullProgress, Progress, RunInfo, StepInfo
from spectool.errors import RunFailed
from spectool.fsutil import atomic_write

SHUTDOWN_SAVE_TIMEOUT_S = 120.0
RESUME_LOG = "resume.log"  # changed settings and damaged checkpoints, one line each, in the save path


@dataclass
class _PendingStep:
    """A step whose metrics are still on the device (reduced in batches of --log-steps)."""

    epoch: int
    batch: int
    batches: int
    global_step: int
    metrics: dict
    tokens: float
    seconds: float
    lrs: dict[str, float]  # after the step, per optimizer


@dataclass
class TrainResult:
    status: str  # completed | max_steps | interrupted | dry_run
    global_step: int = 0
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    steps: list[dict[str, float]] = field(default_factory=list)  # per-step train values (rank 0)
    validation: list[dict[str, float]] = field(default_factory=list)
    hidden_states: dict = field(default_factory=dict)  # Accounting.as_dict() of the run's training samples (this rank)
    supervised_tokens: int = 0  # loss-mask tokens trained on by this invocation, all ranks


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_generator(*key: int) -> torch.Generator:
    """A CPU generator that depends only on ``key``: DFlash anchors of (seed, epoch, batch, rank)
    are the same after a resume, with no generator state to carry."""
    state = np.random.SeedSequence(list(key)).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def train_command_text(env: D.DistEnv) -> str:
    from spectool.version import __version__

    header = [
        f"# Timestamp: {time.strftime('%Y-%m-%dT%H:%M:%S')}",
        f"# World size: {env.world_size}",
        f"# spectool: {__version__}",
        f"# torch: {torch.__version__}",
    ]
    return "\n".join(header + [shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])]) + "\n"


def dry_run(cfg: RunConfig) -> Path:
    """Build, initialise and save the draft to --save-path (what `spectool init` does)."""
    from spectool.models import save_draft
    from spectool.models.build import initialise_draft

    cfg.validate()
    out = check_save_path(cfg)
    model = initialise_draft(cfg)
    check_weights(model, cfg.model.from_pretrained or "the initialised draft")
    try:
        save_draft(model, out)
        cfg.save_yaml(out / "run.yaml")
        atomic_write(out / "train_command.txt", train_command_text(D.DistEnv()))
    except OSError as exc:
        raise save_path_error(exc, out, "the draft") from exc
    return out


def check_save_path(cfg: RunConfig) -> Path:
    """Refuse a --save-path that is a file or a dataset directory (checkpoints would mix into the data)."""
    from spectool.data.dataset import is_processed_dataset

    out = Path(cfg.training.save_path)
    if out.exists() and not out.is_dir():
        raise SavePathError(f"--save-path {out} is a file: pass a directory (it is created if missing)")
    if out.is_dir() and (is_processed_dataset(out) or out.resolve() == cfg.hidden_states_path.resolve() or (out / "layers.json").is_file()):
        raise SavePathError(f"--save-path {out} is a dataset directory: pass another --save-path (checkpoints must not be written into the data)")
    return out


class GracefulStop:
    """First SIGINT/SIGTERM asks the loop to checkpoint and stop; a second one kills.

    A watchdog bounds the shutdown save: ``os._exit(1)`` after ``timeout`` seconds.
    """

    def __init__(self, timeout: float = SHUTDOWN_SAVE_TIMEOUT_S):
        self.requested = False
        self.timeout = timeout
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            os._exit(128 + signum)
        self.requested = True
        timer = threading.Timer(self.timeout, lambda: os._exit(1))
        timer.daemon = True
        timer.start()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Trainer:
    def __init__(self, cfg: RunConfig, env: D.DistEnv, progress: Progress | None = None):
        self.cfg, self.env = cfg, env
        self.progress = (progress or LogProgress()) if env.is_main else NullProgress()
        self.ckpt = CheckpointManager(cfg.training.save_path)
        self.stop = GracefulStop()
        self._prepare()

    # ---- set-up ----------------------------------------------------------------------
    def _prepare(self) -> None:
        """Every check that can fail runs here, before the first step."""
        from spectool.data.dataset import ProcessedDataset
        from spectool.models import plugin_for
        from spectool.models.build import initialise_draft
        from spectool.verifier import load_verifier_info

        cfg, env = self.cfg, self.env
        cfg.validate()
        check_loggers(cfg)
        self.notes: list[str] = []  # shown once when the run starts
        self.resumed_from, resume = self._resume_point()
        if resume is not None:  # refuse changed settings before any expensive set-up
            self._check_settings(self.resumed_from)
        data_path = Path(cfg.data.data_path)
        check_data_path(data_path)
        if cfg.data.legacy_data:
            from spectool.data.hidden_states.legacy import LegacyDataset

            self.dataset = LegacyDataset(data_path)
        else:
            self.dataset = ProcessedDataset(data_path)
        train_idx, val_idx = self.dataset.split(cfg.data.val_ratio)
        if not train_idx:
            raise ConfigError(f"{data_path} has no training samples")
        lengths = np.asarray(self.dataset.lengths)[train_idx]
        if cfg.data.total_seq_len < lengths.min():
            raise ConfigError(f"--total-seq-len {cfg.data.total_seq_len} is shorter than every training sample "
                              f"(shortest {lengths.min()} tokens, longest {lengths.max()}): use --total-seq-len >= {lengths.max()} to keep every sample whole")
        info = load_verifier_info(cfg.model.verifier_name_or_path, cfg.model.trust_remote_code)
        seed_everything(cfg.training.seed)
        model = initialise_draft(cfg, info)
        check_weights(model, cfg.model.from_pretrained or "the initialised draft")
        self.spec = model.config
        self.plugin = plugin_for(self.spec)
        self.cuda = env.device.type == "cuda"
        self.amp_dtype = getattr(torch, cfg.training.hidden_states_dtype) if self.cuda else torch.float32
        self.attn_impl = resolve_attn_impl(cfg.attention.draft_attn_impl, env.device, training=True)
        # float16 autocast needs loss scaling; disabled (a pass-through) otherwise. Its step
        # reads the found-inf flag on the host: the one sync float16 costs.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        from spectool.data.hidden_states.factory import build_source

        source = build_source(cfg, self.dataset, aux_layer_ids=self.spec.aux_layer_ids, device=env.device)
        self.train_loader = self._loader(source, train_idx, cfg.dataloader.noise_std)
        self.val_loader = self._loader(source, val_idx, 0.0) if val_idx else None
        self.steps_per_epoch = self.train_loader.num_batches(0)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{data_path}: no training batch could be planned (samples empty?)")

        self.state = TrainerState()
        self.guard = FiniteGuard(env.device)
        self.tokens_pending = 0  # supervised tokens of this rank not yet summed into the state
        latest = self.resumed_from
        if resume is not None:
            _check_fits(model, resume[0], latest)
            model.load_state_dict(resume[0], strict=True)
            check_weights(model, str(latest))
        self.model = D.shard_model(model.to(env.device), env)
        if env.distributed:
            from torch.distributed.fsdp import register_fsdp_forward_method

            register_fsdp_forward_method(self.model, "forward_train")
        self.optimizers = build_optimizers(self.model, cfg)
        self.schedulers = build_schedulers(self.optimizers, cfg, self.steps_per_epoch)
        self.total_steps = min(cfg.training.epochs * self.steps_per_epoch, cfg.training.max_steps or 1 << 62)
        if resume is not None:
            _, opt_states, sched_states, self.state, rng = resume
            if len(opt_states) != len(self.optimizers):
                raise ConfigError(f"{latest} holds {len(opt_states)} optimizer states, this run has {len(self.optimizers)}: same --optimizer or --no-resume-from-checkpoint")
            for opt, st in zip(self.optimizers, opt_states):
                D.load_optimizer_state_dict(self.model, opt, st, env)
            for sch, st in zip(self.schedulers, sched_states):
                sch.load_state_dict(st)
            set_rng_state(rng)
        if env.is_main:
            root = Path(cfg.training.save_path)
            try:
                root.mkdir(parents=True, exist_ok=True)
                cfg.save_yaml(root / "run.yaml")
                atomic_write(root / "train_command.txt", train_command_text(env))
            except OSError as exc:
                raise save_path_error(exc, root, "run.yaml") from exc
        try:
            self.sinks = build_sinks(cfg, env)
        except OSError as exc:
            raise ConfigError(f"--log-dir {cfg.training.log_dir} cannot be written ({exc.strerror or exc}): pass a writable --log-dir") from exc

    # ---- resumption --------------------------------------------------------------------
    def _resume_point(self) -> tuple[Path | None, tuple | None]:
        """The newest checkpoint that loads. Damaged ones (cut or changed files) are moved
        aside as damaged-<name> by rank 0, said once, and the one before is used."""
        if self.cfg.training.no_resume_from_checkpoint:
            return None, None
        damaged: list[tuple[Path, str]] = []
        chosen, loaded = None, None
        for path in reversed(self.ckpt.complete()):
            try:
                chosen, loaded = path, self.ckpt.load(path)
                break
            except DamagedCheckpoint as exc:
                chosen = None
                damaged.append((path, str(exc)))
        if damaged:
            D.barrier(self.env)  # every rank has read what it needs before rank 0 renames
            if self.env.is_main:
                for path, why in damaged:
                    aside = self.ckpt.move_aside(path)
                    fallback = f"resuming from {chosen.name}" if chosen else "no complete checkpoint left"
                    self._note(f"checkpoint {path.name} is damaged ({why}): moved it aside to {aside.name}; {fallback}")
                self.ckpt.relink_latest(chosen)
            D.barrier(self.env)
            if chosen is None:
                raise ResumeError(f"every checkpoint under {self.ckpt.root} is damaged (moved aside as damaged-*): "
                                  f"run again to start over, or restore one of them by hand")
        return chosen, loaded

    def _check_settings(self, checkpoint: Path) -> None:
        """Refuse settings that change the data order or the model; record optimizer changes."""
        root = Path(self.cfg.training.save_path)
        saved = checkpoint / "run.yaml" if (checkpoint / "run.yaml").is_file() else root / "run.yaml"
        if not saved.is_file():
            return
        refused, warned = resume_changes(RunConfig.load_yaml(saved), self.cfg)
        if refused:
            raise ResumeError(f"{checkpoint} was trained with other settings ({'; '.join(refused)}) that fix the data order "
                              f"or the model: resume with the saved values, pass --no-resume-from-checkpoint to start over, "
                              f"or use a new --save-path")
        if warned:
            self._note(f"resuming {checkpoint.name} with changed settings: {'; '.join(warned)}")

    def _note(self, text: str) -> None:
        """Say ``text`` once at start and append it to SAVE/resume.log (rank 0)."""
        self.notes.append(text)
        if not self.env.is_main:
            return
        log = Path(self.cfg.training.save_path) / RESUME_LOG
        old = log.read_text() if log.is_file() else ""
        try:
            atomic_write(log, old + f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")
        except OSError as exc:
            raise save_path_error(exc, log.parent, RESUME_LOG) from exc

    def _require_supervised(self) -> None:
        """Sum every rank's pending supervised-token count into the state (one collective);
        an epoch with none so far fails the run before a checkpoint records it as trained."""
        pending = D.all_reduce_sum(torch.tensor([float(self.tokens_pending)]), self.env)
        self.tokens_pending = 0
        self.state.supervised_tokens += int(pending[0])
        if self.state.supervised_tokens == 0:
            acc = self.train_loader.accounting
            skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(acc.skipped.items())) or "none"
            raise RunFailed(f"epoch {self.state.epoch + 1} trained on no supervised token in {self.state.batch} batches (hidden states: "
                            f"{acc.ok} cached, {acc.generated} generated, skipped: {skipped}; or every loss mask is 0): check the "
                            f"hidden-state source (--on-missing, --vllm-endpoint, the cache) and the data's loss masks")

    def _loader(self, source: Any, indices: list[int], noise_std: float):
        """Train and validation share one hidden-state source (one verifier if generated locally)."""
        from spectool.data.loader import PackedLoader

        cfg, env = self.cfg, self.env
        return PackedLoader(
            self.dataset, indices, lambda: source, cfg.data.total_seq_len,
            rank=env.rank, world_size=env.world_size, seed=cfg.training.seed,
            sample_transform=self.plugin.sample_transform,
            noise_std=noise_std, num_workers=cfg.dataloader.num_workers,
            prefetch_factor=cfg.dataloader.prefetch_factor, dtype=self.amp_dtype,
        )

    # ---- one step --------------------------------------------------------------------
    def _forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        kwargs = self.plugin.train_kwargs(self.cfg, self.spec, generator=generator)
        host = {f"{k}_host": batch[k] for k in ("loss_mask", "document_ids")}  # rows are planned on the host: no device sync
        batch = {k: v.to(self.env.device, non_blocking=True) for k, v in batch.items()} | host
        autocast = torch.autocast("cuda", dtype=self.amp_dtype) if self.cuda and self.amp_dtype != torch.float32 else contextlib.nullcontext()
        with autocast:
            return self.model.forward_train(batch, attn_impl=self.attn_impl, **kwargs)

    def _train_step(self, batch: dict[str, torch.Tensor], epoch: int, b: int) -> dict:
        gen = derived_generator(self.cfg.training.seed, epoch, b, self.env.rank)
        loss, metrics = self._forward(batch, gen)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        for opt in self.optimizers:
            self.scaler.unscale_(opt)
        params = [p for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        if self.cfg.training.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.training.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        # With float16 the scaler skips overflowed steps itself: only the loss must be finite.
        self.guard.observe(self.state.global_step + 1, loss, None if self.scaler.is_enabled() else norm)
        for opt in self.optimizers:
            self.scaler.step(opt)
        self.scaler.update()
        for sch in self.schedulers:
            sch.step()
        return metrics

    # ---- validation ------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, epoch: int) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        self.model.eval()
        acc = MetricSum()
        for b, batch in enumerate(self._guarded(self.val_loader.iterate(0))):
            acc.add(self._forward(batch, derived_generator(self.cfg.training.seed, 1 << 20, b, self.env.rank))[1])
        self.model.train()
        return acc.values(self.env)

    # ---- checkpoints -----------------------------------------------------------------
    def save(self) -> Path | None:
        """All ranks gather; rank 0 writes. Never after a non-finite step."""
        env = self.env
        self.guard.check(env, self.ckpt)
        self._require_supervised()
        weights = D.full_model_state_dict(self.model, env)
        opt_states = [D.full_optimizer_state_dict(self.model, o, env) for o in self.optimizers]
        path = None
        if env.is_main:
            root = Path(self.cfg.training.save_path)
            extra = {name: (root / name).read_text() for name in ("train_command.txt", "run.yaml")}
            path = self.ckpt.save(self.model, weights, opt_states, [s.state_dict() for s in self.schedulers], self.state, extra)
        D.barrier(env)
        return path

    def _record_best(self, val: dict[str, float]) -> bool:
        """With --save-best: is this validation the best so far? (recorded before the save,
        so the checkpoint carries its own best record)."""
        if not self.cfg.checkpoint.save_best or not val:
            return False
        by_acceptance = self.cfg.checkpoint.save_best_metric == "acceptance"
        value = val.get("acceptance_length" if by_acceptance else "loss")
        best = self.state.best_value
        if value is None or not (best is None or (value > best if by_acceptance else value < best)):
            return False
        self.state.best_value = value
        self.state.best_name = checkpoint_name(self.state)
        return True

    # ---- the loop --------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg, env, st = self.cfg, self.env, self.state
        result = TrainResult(status="completed")
        start_epoch, start_batch = st.epoch, st.batch
        if st.epoch_complete:
            start_epoch, start_batch = st.epoch + 1, 0
        self.progress.start(RunInfo(self.spec.speculator_type, cfg.training.epochs, self.steps_per_epoch, self.total_steps, start_epoch,
                                    st.global_step, env.world_size, str(env.device), cfg.training.save_path,
                                    str(self.resumed_from) if self.resumed_from else None))
        for note in self.notes:
            self.progress.message(note)
        if self.resumed_from is not None:
            self.progress.message(f"resumed from {self.resumed_from} (epoch {st.epoch + 1}, {st.batch} batches done, step {st.global_step})")
        self.stop.install()
        self.model.train()
        last_path: Path | None = None
        self._t0, self._steps_timed = time.perf_counter(), 0
        pending: list[_PendingStep] = []
        try:
            for epoch in range(start_epoch, cfg.training.epochs):
                batches = self.train_loader.num_batches(epoch)
                st.epoch, st.epoch_complete = epoch, False
                first = start_batch if epoch == start_epoch else 0
                st.batch = first
                if first == 0:
                    st.supervised_tokens = 0
                for b, batch in enumerate(self._guarded(self.train_loader.iterate(epoch, first)), start=first):
                    step_start = time.perf_counter()
                    tokens = float((batch["document_ids"] >= 0).sum())  # the host batch: no device sync
                    supervised = int(batch["loss_mask"].sum())
                    self.tokens_pending += supervised
                    result.supervised_tokens += supervised
                    metrics = self._train_step(batch, epoch, b)
                    st.batch, st.global_step = b + 1, st.global_step + 1
                    lrs = {type(o).__name__: o.param_groups[0]["lr"] for o in self.optimizers}
                    pending.append(_PendingStep(epoch, b + 1, batches, st.global_step, metrics, tokens, time.perf_counter() - step_start, lrs))
                    at_max = cfg.training.max_steps is not None and st.global_step >= cfg.training.max_steps
                    k = cfg.checkpoint.checkpoint_steps
                    save_now = bool(k and st.global_step % k == 0 and b + 1 < batches)
                    if at_max or save_now or b + 1 == batches or st.global_step % cfg.training.log_steps == 0:
                        pending = self._flush(pending, result)
                    # Several ranks agree on a stop (a collective) where they flush; alone, every step.
                    if (not pending or not env.distributed) and D.any_rank(self.stop.requested, env):
                        pending = self._flush(pending, result)
                        result.status = "interrupted"
                        self.progress.message("stop requested: saving a checkpoint")
                        result.last_checkpoint = self.save()
                        return self._finish(result)
                    if at_max:
                        break
                    if save_now:
                        last_path = self.save()
                else:
                    at_max = False
                pending = self._flush(pending, result)
                st.epoch_complete = st.batch >= batches
                self._log(self.train_loader.epoch_accounting.metrics(), st.global_step)
                self._require_supervised()
                val = self.validate(epoch) if st.epoch_complete else {}
                st.val = val
                if val:
                    result.validation.append(val)
                    self.progress.validation(epoch, val)
                    self._log({f"val/{k}": v for k, v in val.items()}, st.global_step)
                last_epoch = epoch + 1 == cfg.training.epochs or at_max
                improved = self._record_best(val)
                if last_epoch or improved or (epoch + 1) % cfg.checkpoint.checkpoint_freq == 0:
                    last_path = self.save()
                    if improved and self.env.is_main and last_path is not None:
                        self.ckpt.mark_best(last_path)
                if at_max:
                    result.status = "max_steps"
                    break
                start_batch = 0
            result.last_checkpoint = last_path
        finally:
            self.stop.restore()
        return self._finish(result)

    def _guarded(self, batches: Any) -> Any:
        """``batches`` as they come; a hidden-state source that cannot go on (dead vLLM
        server) ends the run with a checkpoint of the steps done and its one-line error."""
        from spectool.data.hidden_states.files import SourceFailure
        from spectool.errors import SpectoolError

        try:
            yield from batches
        except SourceFailure as exc:
            try:
                saved = f"checkpoint of step {self.state.global_step} saved: {self.save()}"
            except SpectoolError as refused:  # e.g. nothing trained yet: no checkpoint to make
                saved = f"no checkpoint saved: {refused}"
            raise SourceFailure(f"{exc} ({saved})") from None

    def _finish(self, result: TrainResult) -> TrainResult:
        result.global_step = self.state.global_step
        result.hidden_states = self.train_loader.accounting.as_dict()
        self.progress.message(self.train_loader.accounting.summary())
        best = Path(self.cfg.training.save_path) / "best"
        result.best_checkpoint = best.resolve() if best.exists() else None
        for sink in self.sinks:
            sink.close()
        self.progress.end()
        return result

    def _flush(self, pending: list[_PendingStep], result: TrainResult) -> list[_PendingStep]:
        """Reduce the pending steps' metrics (one collective, one device-to-host copy), stop
        on a non-finite step, then log and report each step; returns the empty queue."""
        if not pending:
            return pending
        extra = [torch.tensor([p.tokens for p in pending]), self.guard.first_bad >= 0]
        values, rest = reduce_steps([p.metrics for p in pending], self.env, extra)
        if rest[-1]:  # some rank saw a non-finite step: every rank raises the guard's error
            self.guard.check(self.env, self.ckpt)
        cfg = self.cfg
        for p, vals, tokens in zip(pending, values, rest):
            self._steps_timed += 1
            eta = (time.perf_counter() - self._t0) / self._steps_timed * (self.total_steps - p.global_step)
            lr = list(p.lrs.values())[-1]
            self._log_step(vals, p.lrs, tokens / p.seconds, p.epoch, p.global_step)
            result.steps.append(vals)
            self.progress.step(StepInfo(p.epoch, cfg.training.epochs, p.batch, p.batches, p.global_step, self.total_steps,
                                        vals, lr, tokens / p.seconds, eta))
        return []

    def _log_step(self, values: dict[str, float], lrs: dict[str, float], tokens_per_s: float, epoch: int, step: int) -> None:
        payload = {f"train/{k}": v for k, v in values.items()}
        payload.update({f"lr/{name}": lr for name, lr in lrs.items()})
        payload["perf/tokens_per_s"] = tokens_per_s
        payload["epoch"] = float(epoch)
        self._log(payload, step)

    def _log(self, payload: dict[str, float], step: int) -> None:
        for sink in self.sinks:
            sink.log(payload, step)

    def log_config(self) -> None:
        for sink in self.sinks:
            sink.log_config(self.cfg.to_dict())


def _check_fits(model: torch.nn.Module, weights: dict[str, torch.Tensor], checkpoint: Path) -> None:
    """One line instead of load_state_dict's multi-line RuntimeError."""
    own = model.state_dict()
    problems = [f"missing {k}" for k in sorted(own.keys() - weights.keys())]
    problems += [f"unexpected {k}" for k in sorted(weights.keys() - own.keys())]
    problems += [f"{k} {tuple(weights[k].shape)} -> {tuple(own[k].shape)}" for k in sorted(own.keys() & weights.keys())
                 if own[k].shape != weights[k].shape]
    if problems:
        shown = ", ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise ResumeError(f"{checkpoint} does not fit the draft these settings build ({shown}): resume with the run's own "
                          f"settings, pass --no-resume-from-checkpoint to start over, or use a new --save-path")


def train(cfg: RunConfig, progress: Progress | None = None) -> TrainResult:
    """Train a draft as ``cfg`` says (single process, or one rank of torchrun)."""
    if cfg.model.dry_run:
        dry_run(cfg)
        return TrainResult(status="dry_run")
    cfg.validate()
    root = check_save_path(cfg)
    env = D.init_distributed()
    try:
        if env.device.type == "cuda" and cfg.training.deterministic_cuda:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        with contextlib.ExitStack() as held:
            if env.is_main:  # rank 0 holds the run's lock; torchrun ends the other ranks if it fails
                try:
                    held.enter_context(run_lock(root))
                except OSError as exc:
                    raise save_path_error(exc, root, "the run lock") from exc
            trainer = Trainer(cfg, env, progress)
            trainer.log_config()
            return trainer.run()
    finally:
        D.shutdown(env)
