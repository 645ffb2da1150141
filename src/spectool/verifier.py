"""What spectool needs from a verifier without loading it whole.

The config (layer count, hidden size, vocab size, rope, ...), the default aux layer ids in
vLLM's convention, and partial safetensors reads of exactly three tensors: the token
embedding, the lm_head (the embedding again when tied) and the final norm.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spectool.errors import SpectoolError
from spectool.layer_ids import default_layer_ids, resolve_layer_ids


class VerifierError(SpectoolError):
    """The verifier cannot be read or does not fit the request."""


@dataclass(frozen=True)
class VerifierInfo:
    name_or_path: str
    config: Any  # transformers PretrainedConfig of the text model

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def architectures(self) -> list[str]:
        return list(getattr(self.config, "architectures", None) or [])

    @property
    def torch_dtype(self) -> torch.dtype:
        dtype = getattr(self.config, "dtype", None) or getattr(self.config, "torch_dtype", None) or torch.float32
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype

    def default_layer_ids(self) -> list[int]:
        return default_layer_ids(self.num_layers)

    def resolve_layer_ids(self, layer_ids: list[int] | None) -> list[int]:
        """Aux layer ids (vLLM convention, without the final layer L), validated."""
        return resolve_layer_ids(layer_ids, self.num_layers)


def load_verifier_info(name_or_path: str, trust_remote_code: bool = False) -> VerifierInfo:
    """Read the verifier's config (text config for multimodal models) without its weights."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises OSError/ValueError variants
        raise VerifierError(f"cannot read the verifier config of {name_or_path!r} ({type(exc).__name__}: {str(exc).splitlines()[0]}): pass a local model directory or a cached hub id") from exc
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attr in ("num_hidden_layers", "hidden_size", "vocab_size"):
        if getattr(text, attr, None) is None:
            raise VerifierError(f"verifier config of {name_or_path!r} has no {attr}: is it a causal language model?")
    if not getattr(text, "architectures", None) and getattr(config, "architectures", None):
        text.architectures = config.architectures
    return VerifierInfo(name_or_path=name_or_path, config=text)


def _local_files(name_or_path: str) -> tuple[Path, list[str]]:
    """Directory and safetensors files of the verifier (downloaded only if not local)."""
    path = Path(name_or_path)
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = sorted(p.name for p in path.glob("*.safetensors"))
        if not files:
            raise VerifierError(f"{path} holds no *.safetensors weights: convert the verifier to safetensors")
        return path, files
    from huggingface_hub import hf_hub_download

    try:
        index_file = Path(hf_hub_download(name_or_path, "model.safetensors.index.json"))
        files = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
    except Exception:
        try:
            index_file = Path(hf_hub_download(name_or_path, "model.safetensors"))
            files = ["model.safetensors"]
        except Exception as exc:
            raise VerifierError(f"cannot find safetensors weights of {name_or_path!r}: pass a local directory") from exc
    for f in files:
        hf_hub_download(name_or_path, f)
    return index_file.parent, files


_EMBED_NAMES = ("embed_tokens.weight", "tok_embeddings.weight", "wte.weight")
_LM_HEAD_NAMES = ("lm_head.weight", "output.weight")


def read_verifier_tensors(info: VerifierInfo) -> dict[str, torch.Tensor]:
    """Partial reads of ``embed`` [V, H], ``lm_head`` [V, H] and ``norm`` [H] (verifier dtype)."""
    from safetensors import safe_open

    directory, files = _local_files(info.name_or_path)
    located: dict[str, tuple[str, str]] = {}
    for fname in files:
        with safe_open(str(directory / fname), framework="pt") as f:
            for key in f.keys():
                if "layers." in key or "vision" in key or "visual" in key or "mtp" in key:
                    continue
                if key.endswith(_EMBED_NAMES):
                    located.setdefault("embed", (fname, key))
                elif key.endswith(_LM_HEAD_NAMES):
                    located.setdefault("lm_head", (fname, key))
                elif key.endswith("norm.weight"):
                    located.setdefault("norm", (fname, key))
    if "embed" not in located or "norm" not in located:
        raise VerifierError(f"{info.name_or_path}: cannot find the token embedding and final norm tensors in its safetensors files")
    if "lm_head" not in located:
        if not getattr(info.config, "tie_word_embeddings", False):
            raise VerifierError(f"{info.name_or_path}: no lm_head tensor and tie_word_embeddings is false: the checkpoint is incomplete")
        located["lm_head"] = located["embed"]
    out = {}
    for name, (fname, key) in located.items():
        with safe_open(str(directory / fname), framework="pt") as f:
            out[name] = f.get_tensor(key)
    V, H = info.vocab_size, info.hidden_size
    for name in ("embed", "lm_head"):
        if tuple(out[name].shape) != (V, H):
            raise VerifierError(f"{info.name_or_path}: {name} has shape {tuple(out[name].shape)}, config says [{V}, {H}]")
    if tuple(out["norm"].shape) != (H,):
        raise VerifierError(f"{info.name_or_path}: final norm has shape {tuple(out['norm'].shape)}, expected [{H}]")
    return out
