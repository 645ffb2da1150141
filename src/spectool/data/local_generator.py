"""Hidden states from the verifier loaded in-process (transformers), in vLLM's file layout.

Layer ids follow vLLM: id k < L is HF ``output_hidden_states[k]`` (the input of decoder
layer k); id L is the last decoder layer's output BEFORE the final norm. HF's
``hidden_states[L]`` is post-norm, so that slot is captured with a forward pre-hook on
the final norm. Output dtype = the verifier's dtype, as vLLM writes; on CPU the forward
runs in float32 (bf16 matmuls on CPU are slow and less accurate).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectool.data.hidden_states.files import Generated, GenerationError, HiddenStateError


class LocalGenerator:
    """Loads the verifier lazily on first use; one instance per process (not for DataLoader workers)."""

    name = "local"
    needs_main_process = True

    def __init__(self, name_or_path: str, aux_layer_ids: Sequence[int], device: str | torch.device | None = None, trust_remote_code: bool = False):
        self.name_or_path = name_or_path
        self.aux_layer_ids = list(aux_layer_ids)
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.trust_remote_code = trust_remote_code
        self._model = None
        self._norm = None
        self.dtype: torch.dtype | None = None

    # ---- loading ----------------------------------------------------------------------
    def _load(self) -> None:
        from transformers import AutoModelForCausalLM

        from spectool.verifier import load_verifier_info

        info = load_verifier_info(self.name_or_path, self.trust_remote_code)
        self.dtype = info.torch_dtype
        compute = torch.float32 if self.device.type == "cpu" else self.dtype
        check_fits(self.name_or_path, info.torch_dtype, compute, self.device)
        model = AutoModelForCausalLM.from_pretrained(self.name_or_path, dtype=compute, trust_remote_code=self.trust_remote_code)
        model.eval().to(self.device)
        base = model.base_model
        norm = getattr(base, "norm", None) or getattr(base, "final_layernorm", None)
        if norm is None:
            raise HiddenStateError(f"{self.name_or_path}: cannot find the final norm module to capture the pre-norm output")
        self.num_layers = info.num_layers
        self._model, self._base, self._norm = model, base, norm

    # ---- generation -------------------------------------------------------------------
    @torch.inference_mode()
    def generate_batch(self, token_lists: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """[len_i, n_aux + 1, H] per sequence (verifier dtype, on CPU). Right padding keeps causal outputs exact."""
        if self._model is None:
            self._load()
        lengths = [len(t) for t in token_lists]
        width = max(lengths)
        ids = torch.zeros(len(token_lists), width, dtype=torch.long)
        mask = torch.zeros(len(token_lists), width, dtype=torch.long)
        for row, toks in enumerate(token_lists):
            ids[row, : len(toks)] = torch.as_tensor(np.asarray(toks, dtype=np.int64))
            mask[row, : len(toks)] = 1
        captured: list[torch.Tensor] = []
        handle = self._norm.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            out = self._base(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), output_hidden_states=True, use_cache=False)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise HiddenStateError(f"{self.name_or_path}: the final norm ran {len(captured)} times in one forward; cannot capture the pre-norm output")
        slots = [out.hidden_states[k] for k in self.aux_layer_ids] + [captured[0]]
        stacked = torch.stack(slots, dim=2).to(self.dtype).cpu()  # [B, T, n, H]
        return [stacked[row, :n].contiguous() for row, n in enumerate(lengths)]

    def generate(self, sample: Any) -> Generated:
        try:
            return Generated(self.generate_batch([sample.input_ids])[0])
        except (RuntimeError, ValueError) as exc:  # e.g. out of memory on a long sample
            raise GenerationError("local forward failed", f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from exc


def weights_bytes(name_or_path: str) -> int:
    """Size of the verifier's safetensors (or .bin) weights on disk; 0 when not a local directory."""
    path = Path(name_or_path)
    if not path.is_dir():
        return 0
    files = list(path.glob("*.safetensors")) or list(path.glob("*.bin"))
    return sum(f.stat().st_size for f in files)


def available_memory(device: torch.device) -> int:
    """Free bytes on the device (GPU: cudaMemGetInfo; CPU: MemAvailable)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(name_or_path: str, stored: torch.dtype, compute: torch.dtype, device: torch.device, headroom: float = 1.2) -> None:
    """Refuse (before loading) a verifier whose weights would not fit the device."""
    on_disk = weights_bytes(name_or_path)
    if not on_disk:
        return
    params = on_disk / torch.empty((), dtype=stored).element_size()
    need = int(params * torch.empty((), dtype=compute).element_size() * headroom)
    free = available_memory(device)
    if need > free:
        raise HiddenStateError(
            f"the verifier {name_or_path} needs about {need / 2**30:.1f} GiB on {device} "
            f"({params / 1e9:.2f} B params in {compute}), only {free / 2**30:.1f} GiB free: "
            "generate hidden states with vLLM (--hidden-states-generator vllm) or on a larger device"
        )
