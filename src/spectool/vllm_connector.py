"""A CPU-safe hidden-states connector, loaded by vLLM inside its own process.

vLLM's ``ExampleHiddenStatesConnector`` copies the captured hidden states out of its KV
cache on a CUDA stream into pinned memory, which fails on a CPU-only machine
("pin_memory=True requires a CUDA or other accelerator backend"). This subclass copies
from the CPU cache synchronously and hands the tensors to the parent's writer thread,
lock-file handling and completion bookkeeping unchanged, so the files are the same:
``{shared_storage_path}/{request_id}.safetensors`` holding ``hidden_states``
[seq, n_layers, H] (verifier dtype) and ``token_ids`` [seq] int64, guarded by
``<file>.lock`` (exclusive flock held until the write is done).

vLLM loads it from ``--kv_transfer_config`` with ``"kv_connector": "CpuHiddenStatesConnector"``
and ``"kv_connector_module_path": "spectool.vllm_connector"`` (see
:func:`spectool.vllm_launch.kv_transfer_config`). vLLM is imported only when this module is,
i.e. in the vLLM process; the module depends on nothing else from spectool.
"""

from __future__ import annotations

import fcntl
import os
from functools import partial

import torch
from vllm.distributed.kv_transfer.kv_connector.v1 import example_hidden_states_connector as _ehs

__all__ = ["CpuHiddenStatesConnector"]


class _CopyDone:
    """Stands in for the CUDA event the parent waits on: a synchronous copy is done at once."""

    def synchronize(self) -> None:
        return None

    def query(self) -> bool:
        return True


class CpuHiddenStatesConnector(_ehs.ExampleHiddenStatesConnector):
    """``ExampleHiddenStatesConnector`` with a synchronous copy out of a CPU KV cache."""

    def _submit_async_write(self, pending: _ehs.PendingSave) -> None:
        if not self._is_tp_rank_zero:
            return
        assert self._kv_cache is not None
        block_ids = torch.tensor(pending.block_ids, dtype=torch.long)
        offsets = torch.arange(self._block_size, dtype=torch.long)
        slot_mapping = (block_ids.reshape(-1, 1) * self._block_size + offsets.reshape(1, -1)).flatten()
        num_tokens = pending.token_ids.shape[0]
        # Copy now: the blocks are freed as soon as get_finished reports this request.
        hidden_states = _ehs.extract_from_kv_cache(self._kv_cache, slot_mapping.to(self._kv_cache.device), num_tokens)
        tensors = {
            "hidden_states": hidden_states.to("cpu").contiguous().clone(),
            "token_ids": pending.token_ids.to(torch.long).clone(),
        }
        assert pending.req_id not in self._req_futures, "Found another KV transfer request with same req_id!"
        os.makedirs(os.path.dirname(pending.filename), exist_ok=True)
        lock_fd = self._lock_fds.pop(pending.req_id, None)  # pre-created (LOCK_EX held) by wait_for_save
        if lock_fd is None and self.use_lock:
            lock_fd = os.open(pending.filename + ".lock", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        done = _CopyDone()
        future = self._executor.submit(self._write_tensors, tensors, done, pending.filename, lock_fd)
        self._req_copy_events[pending.req_id] = done
        self._req_futures[pending.req_id] = future
        future.add_done_callback(partial(self._on_write_done, pending.req_id))
