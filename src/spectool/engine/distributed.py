"""Process-group set-up under torchrun, FSDP2 wrapping and the collectives the trainer needs.

One process (no WORLD_SIZE, or WORLD_SIZE=1) never touches torch.distributed, so the
single-device path has no distributed code in it at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistEnv:
    """Read torchrun's environment; start nccl (GPU) or gloo (CPU) when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=timedelta(minutes=30), **kwargs)
    return DistEnv(rank, world, local, device)


def shutdown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard_model(model: nn.Module, env: DistEnv) -> nn.Module:
    """FSDP2: one shard group per decoder layer, the root holds fc, norms, embeddings, heads.

    Master weights stay fp32 (no MixedPrecisionPolicy): autocast does the bf16 compute,
    the same precision story as the single-device path.
    """
    if not env.distributed:
        return model
    from torch.distributed.fsdp import fully_shard

    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def full_model_state_dict(model: nn.Module, env: DistEnv) -> dict[str, torch.Tensor]:
    """The whole state dict on CPU; under FSDP it is gathered on rank 0 only (others get {})."""
    if not env.distributed:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv) -> dict:
    if not env.distributed:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, env: DistEnv) -> None:
    """Every rank read the same full state dict from disk; FSDP takes its own shard of it."""
    if not env.distributed:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum over ranks (a copy on the collective's device, returned on the caller's)."""
    if not env.distributed:
        return t
    work = t.to(env.device)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(t.device)


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True when any rank says so: keeps ranks in lock step on a stop request."""
    if not env.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()
