"""Training engine: loop (trainer), checkpoints, optimizers/schedulers, distributed, metric sinks.

Nothing here imports typer or rich.console: progress goes through :class:`Progress`.
"""

from spectool.engine.progress import Progress, RunInfo, StepInfo
from spectool.engine.trainer import TrainResult, train

__all__ = ["Progress", "RunInfo", "StepInfo", "TrainResult", "train"]
