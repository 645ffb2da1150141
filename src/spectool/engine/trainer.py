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
from spectool.config import ConfigError, RunConfig
from spectool.engine import distributed as D
from spectool.engine.checkpoint import CheckpointManager, TrainerState, set_rng_state
from spectool.engine.metrics import MetricSum, build_sinks, check_loggers, reduce_steps
from spectool.engine.optim import build_optimizers, build_schedulers
from spectool.engine.progress import LogProgress, NullProgress, Progress, RunInfo, StepInfo
from spectool.errors import SpectoolError

SHUTDOWN_SAVE_TIMEOUT_S = 120.0


class NonFiniteError(SpectoolError):
    """A loss or gradient norm was NaN/inf (seen when metrics are reduced or before a save)."""


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
    import spectool

    header = [
        f"# Timestamp: {time.strftime('%Y-%m-%dT%H:%M:%S')}",
        f"# World size: {env.world_size}",
        f"# spectool: {spectool.__version__}",
        f"# torch: {torch.__version__}",
    ]
    return "\n".join(header + [shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])]) + "\n"


def dry_run(cfg: RunConfig) -> Path:
    """Build, initialise and save the draft to --save-path (what `spectool init` does)."""
    from spectool.models import save_draft
    from spectool.models.build import initialise_draft

    cfg.validate()
    model = initialise_draft(cfg)
    out = Path(cfg.training.save_path)
    save_draft(model, out)
    cfg.save_yaml(out / "run.yaml")
    (out / "train_command.txt").write_text(train_command_text(D.DistEnv()))
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
        from spectool.models.build import initialise_draft
        from spectool.verifier import load_verifier_info

        cfg, env = self.cfg, self.env
        cfg.validate()
        check_loggers(cfg)
        data_path = Path(cfg.data.data_path)
        if not data_path.is_dir():
            raise ConfigError(f"--data-path {data_path} does not exist: run `spectool data prepare` first")
        if cfg.data.legacy_data:
            from spectool.data.hidden_states import LegacyDataset

            self.dataset = LegacyDataset(data_path)
        else:
            self.dataset = ProcessedDataset(data_path)
        train_idx, val_idx = self.dataset.split(cfg.data.val_ratio)
        if not train_idx:
            raise ConfigError(f"{data_path} has no training samples")
        info = load_verifier_info(cfg.model.verifier_name_or_path, cfg.model.trust_remote_code)
        seed_everything(cfg.training.seed)
        model = initialise_draft(cfg, info)
        self.spec = model.config
        self.kind = self.spec.speculator_type
        self.cuda = env.device.type == "cuda"
        self.amp_dtype = getattr(torch, cfg.training.hidden_states_dtype) if self.cuda else torch.float32
        self.attn_impl = resolve_attn_impl(cfg.attention.draft_attn_impl, env.device, training=True)
        # float16 autocast needs loss scaling; disabled (a pass-through) otherwise. Its step
        # reads the found-inf flag on the host: the one sync float16 costs.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        # Steps with a non-finite loss or gradient norm so far, kept on the device; read
        # when metrics are reduced and before every checkpoint (``check_finite``).
        self.nonfinite = torch.zeros((), dtype=torch.float64, device=env.device)

        from spectool.data.hidden_states import build_source

        source = build_source(cfg, self.dataset, aux_layer_ids=self.spec.aux_layer_ids, device=env.device)
        self.train_loader = self._loader(source, train_idx, cfg.dataloader.noise_std)
        self.val_loader = self._loader(source, val_idx, 0.0) if val_idx else None
        self.steps_per_epoch = self.train_loader.num_batches(0)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{data_path}: no training batch could be planned (samples empty?)")

        self.state = TrainerState()
        self.resumed_from: Path | None = None
        resume = None
        latest = None if cfg.training.no_resume_from_checkpoint else self.ckpt.latest()
        if latest is not None:
            resume = self.ckpt.load(latest)
            model.load_state_dict(resume[0], strict=True)
            self.resumed_from = latest
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
            root.mkdir(parents=True, exist_ok=True)
            cfg.save_yaml(root / "run.yaml")
            (root / "train_command.txt").write_text(train_command_text(env))
        self.sinks = build_sinks(cfg, env)

    def _loader(self, source: Any, indices: list[int], noise_std: float):
        """Train and validation share one hidden-state source (one verifier if generated locally)."""
        from spectool.data.loader import PackedLoader
        from spectool.models.eagle3 import shift_sample

        cfg, env = self.cfg, self.env
        return PackedLoader(
            self.dataset, indices, lambda: source, cfg.data.total_seq_len,
            rank=env.rank, world_size=env.world_size, seed=cfg.training.seed,
            sample_transform=shift_sample if self.kind == "eagle3" else None,
            noise_std=noise_std, num_workers=cfg.dataloader.num_workers,
            prefetch_factor=cfg.dataloader.prefetch_factor, dtype=self.amp_dtype,
        )

    # ---- one step --------------------------------------------------------------------
    def _forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        host = {f"{k}_host": batch[k] for k in ("loss_mask", "document_ids")}  # rows are planned on the host: no device sync
        batch = {k: v.to(self.env.device, non_blocking=True) for k, v in batch.items()} | host
        autocast = torch.autocast("cuda", dtype=self.amp_dtype) if self.cuda and self.amp_dtype != torch.float32 else contextlib.nullcontext()
        with autocast:
            if self.kind == "eagle3":
                return self.model.forward_train(
                    batch, ttt_steps=cfg.eagle3.ttt_steps, step_loss_decay=cfg.eagle3.ttt_step_loss_decay,
                    loss=cfg.loss.loss, ttt_tokens=cfg.eagle3.ttt_tokens, attn_impl=self.attn_impl,
                )
            return self.model.forward_train(
                batch, block_size=self.spec.block_size, max_anchors=cfg.dflash.max_anchors,
                decay_gamma=cfg.dflash.dflash_decay_gamma, loss=cfg.loss.loss, attn_impl=self.attn_impl, generator=generator,
            )

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
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
            norm = norm.full_tensor()
        finite = torch.isfinite(loss.detach())
        if not self.scaler.is_enabled():  # with float16 the scaler skips overflowed steps itself
            finite = finite & torch.isfinite(norm)
        self.nonfinite += (~finite).to(torch.float64)
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
        for b, batch in enumerate(self.val_loader.iterate(0)):
            acc.add(self._forward(batch, derived_generator(self.cfg.training.seed, 1 << 20, b, self.env.rank))[1])
        self.model.train()
        return acc.values(self.env)

    # ---- checkpoints -----------------------------------------------------------------
    def check_finite(self, where: str) -> None:
        """Raise when any step so far had a non-finite loss or gradient (a host sync)."""
        bad = int(D.all_reduce_sum(self.nonfinite.clone(), self.env).item())
        if bad:
            raise NonFiniteError(f"non-finite loss or gradient in {bad} step(s) before {where}: lower --lr or use --hidden-states-dtype float32")

    def save(self) -> Path | None:
        """All ranks gather; rank 0 writes (never a checkpoint of non-finite weights)."""
        env = self.env
        self.check_finite(f"the checkpoint at step {self.state.global_step}")
        weights = D.full_model_state_dict(self.model, env)
        opt_states = [D.full_optimizer_state_dict(self.model, o, env) for o in self.optimizers]
        path = None
        if env.is_main:
            extra = {"train_command.txt": (Path(self.cfg.training.save_path) / "train_command.txt").read_text()}
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
        self.state.best_name = f"epoch{self.state.epoch}_step{self.state.global_step}"
        return True

    # ---- the loop --------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg, env, st = self.cfg, self.env, self.state
        result = TrainResult(status="completed")
        start_epoch, start_batch = st.epoch, st.batch
        if st.epoch_complete:
            start_epoch, start_batch = st.epoch + 1, 0
        self.progress.start(RunInfo(self.kind, cfg.training.epochs, self.steps_per_epoch, self.total_steps, start_epoch,
                                    st.global_step, env.world_size, str(env.device), cfg.training.save_path,
                                    str(self.resumed_from) if self.resumed_from else None))
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
                for b, batch in enumerate(self.train_loader.iterate(epoch, first), start=first):
                    step_start = time.perf_counter()
                    tokens = float((batch["document_ids"] >= 0).sum())  # the host batch: no device sync
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

    def _finish(self, result: TrainResult) -> TrainResult:
        result.global_step = self.state.global_step
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
        extra = [torch.tensor([p.tokens for p in pending]), self.nonfinite]
        values, rest = reduce_steps([p.metrics for p in pending], self.env, extra)
        if rest[-1]:
            raise NonFiniteError(f"non-finite loss or gradient by step {pending[-1].global_step}: lower --lr or use --hidden-states-dtype float32")
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


def train(cfg: RunConfig, progress: Progress | None = None) -> TrainResult:
    """Train a draft as ``cfg`` says (single process, or one rank of torchrun)."""
    if cfg.model.dry_run:
        dry_run(cfg)
        return TrainResult(status="dry_run")
    env = D.init_distributed()
    try:
        if env.device.type == "cuda" and cfg.training.deterministic_cuda:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        trainer = Trainer(cfg, env, progress)
        trainer.log_config()
        return trainer.run()
    finally:
        D.shutdown(env)
