"""Stop at the first non-finite loss or gradient without ever checkpointing its result.

``FiniteGuard.observe`` folds a step's loss and gradient norm into a flag kept on the
device (no host sync); ``FiniteGuard.check`` reads it (one sync) and raises. The trainer
checks wherever it already syncs (when step metrics are reduced) and before every
checkpoint write, so a checkpoint is only ever written from weights whose every step was
finite. ``check_weights`` refuses non-finite starting weights (a --from-pretrained draft
with a NaN would otherwise train into an all-NaN checkpoint).
"""

from __future__ import annotations

import torch
from torch import nn

from spectool.engine import distributed as D
from spectool.engine.checkpoint import CheckpointManager
from spectool.errors import RunFailed, SpectoolError


class NonFiniteError(RunFailed):
    """A step produced a non-finite loss or gradient; the run stopped without saving it."""


class FiniteGuard:
    def __init__(self, device: torch.device):
        # global step of the first non-finite step, -1 while every step was finite
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.what = torch.zeros((), dtype=torch.int64, device=device)  # 1 loss, 2 gradient

    def observe(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        """Record step ``step`` on the device; no host sync."""
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor norm
            grad_norm = grad_norm.full_tensor()
        loss_ok = torch.isfinite(loss.detach()).all()
        grad_ok = torch.isfinite(grad_norm.detach()).all() if grad_norm is not None else torch.ones_like(loss_ok)
        new = (self.first_bad < 0) & ~(loss_ok & grad_ok)
        self.first_bad = torch.where(new, torch.full_like(self.first_bad, step), self.first_bad)
        self.what = torch.where(new, torch.where(loss_ok, 2, 1).to(self.what), self.what)

    def check(self, env: D.DistEnv, ckpt: CheckpointManager) -> None:
        """Raise NonFiniteError if any rank saw a non-finite step (one sync, one collective)."""
        local = int(self.first_bad)
        if not D.any_rank(local >= 0, env):
            return
        what = "loss" if int(self.what) == 1 else "gradient"
        at = f"at step {local}" if local >= 0 else "on another rank"
        last = ckpt.latest()
        kept = f"the last good checkpoint {last} is intact" if last else "no checkpoint was written"
        raise NonFiniteError(
            f"non-finite {what} {at}: stopped without saving it; {kept}: lower --lr, set --grad-clip "
            f"or check the data's hidden states, then train again with --save-path {ckpt.root} (it resumes there)"
        )


def check_weights(model: nn.Module, origin: str) -> None:
    """Refuse a draft whose starting weights are not all finite (one sync, at set-up)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SpectoolError(f"{origin} holds non-finite values in {name}: re-create the draft (`spectool init`) or start from another one")
