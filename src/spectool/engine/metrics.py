"""Metric accumulation and sinks (tensorboard built in; wandb, mlflow, trackio optional).

Models report ``name -> tensor([sum, count])``; a value is sum / count after summing over
steps and ranks (a micro-average, so ranks with more tokens weigh more).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any, Protocol

import torch

from spectool.config import ConfigError, RunConfig
from spectool.engine.distributed import DistEnv, all_reduce_sum
from spectool.models.base import simulated_acceptance_length


class MetricSum:
    """Sums ``[sum, count]`` pairs on the device they live on; ``values()`` reduces over
    ranks and divides (the one host sync, when the values are wanted)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for name, pair in metrics.items():
            pair = pair.detach().to(torch.float64)
            self.sums[name] = self.sums[name] + pair if name in self.sums else pair.clone()

    def values(self, env: DistEnv) -> dict[str, float]:
        if not self.sums:
            return {}
        return reduce_steps([self.sums], env)[0][0]


def _ratios(names: list[str], pairs: list[list[float]]) -> dict[str, float]:
    return with_acceptance({n: s / c if c > 0 else 0.0 for n, (s, c) in zip(names, pairs)})


def reduce_steps(steps: list[dict[str, torch.Tensor]], env: DistEnv, extra: list[torch.Tensor] = ()) -> tuple[list[dict[str, float]], list[float]]:
    """Values of several steps' metrics (each summed over ranks) and of ``extra`` scalars
    (summed over ranks too), with one collective and one device-to-host copy for all."""
    names = sorted(steps[0])
    device = steps[0][names[0]].device
    parts = [torch.stack([m[n] for n in names]).to(torch.float64).flatten() for m in steps]
    parts += [x.detach().to(device, torch.float64).flatten() for x in extra]
    flat = all_reduce_sum(torch.cat(parts), env).tolist()
    width = 2 * len(names)
    values = [_ratios(names, [flat[i * width + 2 * j : i * width + 2 * j + 2] for j in range(len(names))]) for i in range(len(steps))]
    return values, flat[width * len(steps) :]


def with_acceptance(values: dict[str, float]) -> dict[str, float]:
    """Add ``acceptance_length`` = 1 + sum_k full_acc_k (tokens per verifier step, bonus incl.)."""
    full = [values[k] for k in sorted((k for k in values if k.startswith("full_acc_")), key=lambda k: int(k.rsplit("_", 1)[1]))]
    if full:
        values["acceptance_length"] = simulated_acceptance_length(full)
    return values


class MetricSink(Protocol):
    def log_config(self, config: dict[str, Any]) -> None: ...
    def log(self, values: dict[str, float], step: int) -> None: ...
    def close(self) -> None: ...


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "/"))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


# TensorBoard custom-scalars layout: metrics that belong together in one chart each
# (tags are regexes). EAGLE-3's "loss" is the sum over TTT steps of the per-step loss_k.
TB_LAYOUT = {
    "acceptance": {
        "train: full accuracy per position (position k = k+1-th drafted token)": ["Multiline", [r"train/full_acc_\d+"]],
        "val: full accuracy per position": ["Multiline", [r"val/full_acc_\d+"]],
        "train: conditional accuracy per position": ["Multiline", [r"train/cond_acc_\d+"]],
        "acceptance length (simulated)": ["Multiline", [r"(train|val)/acceptance_length"]],
    },
    "loss": {
        "train: loss (EAGLE-3: sum over TTT steps of loss_k) and its terms": ["Multiline", [r"train/loss.*"]],
        "val: loss (EAGLE-3: sum over TTT steps of loss_k) and its terms": ["Multiline", [r"val/loss.*"]],
    },
}


class TensorBoardSink:
    """Scalars, the run config as text, the custom-scalars layout, and at close an hparams
    entry (run config -> final metrics) so runs can be compared in the HPARAMS tab."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.hparams: dict[str, Any] = {}
        self.last: dict[str, float] = {}

    def log_config(self, config: dict[str, Any]) -> None:
        import yaml

        text = "```\n" + yaml.safe_dump(config, sort_keys=False) + "```"
        self.writer.add_text("config", text, 0)
        self.writer.add_custom_scalars(TB_LAYOUT)
        self.hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in _flat(config).items()}

    def log(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
            self.last[name] = value
        self.writer.flush()

    def final_metrics(self) -> dict[str, float]:
        """The last validation values (the last training values when there is no validation)."""
        prefix = "val/" if any(k.startswith("val/") for k in self.last) else "train/"
        return {k: v for k, v in self.last.items() if k.startswith(prefix)}

    def close(self) -> None:
        from torch.utils.tensorboard.summary import hparams

        metrics = self.final_metrics()
        if self.hparams and metrics:
            # written into this run (add_hparams would open a sub-run); the metric tags
            # name scalars of this run, so the HPARAMS tab shows their last values
            for summary in hparams(self.hparams, metrics):
                self.writer.file_writer.add_summary(summary)
        self.writer.close()


class WandbSink:
    def __init__(self, module: Any, run_name: str, log_dir: Path):
        self.run = module.init(name=run_name, dir=str(log_dir), resume="allow")

    def log_config(self, config: dict[str, Any]) -> None:
        self.run.config.update(_flat(config), allow_val_change=True)

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioSink(WandbSink):
    """trackio mirrors wandb's init/log/finish API."""

    def __init__(self, module: Any, run_name: str, log_dir: Path):
        self.module = module
        self.run = module.init(project="spectool", name=run_name)

    def log_config(self, config: dict[str, Any]) -> None:
        self.module.config.update(_flat(config)) if hasattr(self.module, "config") else None

    def log(self, values: dict[str, float], step: int) -> None:
        self.module.log(values, step=step)

    def close(self) -> None:
        self.module.finish()


class MlflowSink:
    def __init__(self, module: Any, run_name: str, log_dir: Path):
        self.mlflow = module
        self.mlflow.start_run(run_name=run_name)

    def log_config(self, config: dict[str, Any]) -> None:
        self.mlflow.log_params({k.replace("/", "."): v for k, v in _flat(config).items()})

    def log(self, values: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({k.replace("/", "."): v for k, v in values.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


_OPTIONAL = {"wandb": WandbSink, "mlflow": MlflowSink, "trackio": TrackioSink}


def logger_names(cfg: RunConfig) -> list[str]:
    return [n for n in (x.strip() for x in cfg.training.logger.split(",")) if n]


def check_loggers(cfg: RunConfig) -> None:
    """Fail before any work when an optional logger's package is missing."""
    for name in logger_names(cfg):
        if name in _OPTIONAL and importlib.util.find_spec(name) is None:
            raise ConfigError(f"--logger {name} needs the {name} package: pip install {name}")


def run_name(cfg: RunConfig) -> str:
    return cfg.training.run_name or Path(cfg.training.save_path).resolve().name


def build_sinks(cfg: RunConfig, env: DistEnv) -> list[MetricSink]:
    """Rank 0 only; the others log nothing."""
    if not env.is_main:
        return []
    check_loggers(cfg)
    name = run_name(cfg)
    log_dir = Path(cfg.training.log_dir) / name
    sinks: list[MetricSink] = []
    for kind in logger_names(cfg):
        if kind == "tensorboard":
            sinks.append(TensorBoardSink(log_dir))
        else:
            sinks.append(_OPTIONAL[kind](importlib.import_module(kind), name, log_dir))
    return sinks
