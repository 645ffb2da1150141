"""Runs ``spectool.train`` from a run.yaml in a subprocess for the kill/resume tests.

Usage: python train_driver.py RUN_YAML LOSSES_JSONL [--kill-at-step N] [--kill-in-checkpoint N]
--kill-at-step: SIGKILL this process right after optimizer step N (a kill -9 mid-epoch).
--kill-in-checkpoint: SIGKILL during the Nth checkpoint write, after its weights are written.
"""

from __future__ import annotations

import argparse
import json
import os
import signal

from spectool.config import RunConfig
from spectool.engine import checkpoint
from spectool.engine.progress import NullProgress
from spectool.engine.trainer import train


class Recorder(NullProgress):
    def __init__(self, path: str, kill_at: int | None):
        self.path, self.kill_at = path, kill_at

    def step(self, info) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": info.global_step, "loss": info.values["loss"]}) + "\n")
        if self.kill_at is not None and info.global_step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_yaml")
    p.add_argument("losses")
    p.add_argument("--kill-at-step", type=int)
    p.add_argument("--kill-in-checkpoint", type=int)
    a = p.parse_args()
    if a.kill_in_checkpoint:
        calls = {"n": 0}
        real = checkpoint._write_trainer_state

        def dying(sdir, *args, **kw):
            calls["n"] += 1
            real(sdir, *args, **kw)
            if calls["n"] == a.kill_in_checkpoint:
                os.kill(os.getpid(), signal.SIGKILL)

        checkpoint._write_trainer_state = dying
    train(RunConfig.load_yaml(a.run_yaml), Recorder(a.losses, a.kill_at_step))


if __name__ == "__main__":
    main()
