"""The hidden-state source and generator a run configuration asks for."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from spectool.data.hidden_states.cache import HiddenStateSource
from spectool.data.hidden_states.files import Generator, HiddenStateError
from spectool.data.hidden_states.layers import LAYERS_FILE, check_layer_record, write_layer_record
from spectool.data.hidden_states.legacy import LegacySource
from spectool.data.local_generator import LocalGenerator
from spectool.data.vllm_client import DEFAULT_MAX_CONSECUTIVE_FAILURES, VllmClient, VllmUnreachable

log = logging.getLogger(__name__)


def build_source(
    cfg: Any,
    dataset: Any,
    *,
    aux_layer_ids: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    info: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> HiddenStateSource | LegacySource:
    """The hidden-state source a run configuration asks for, its cache checked up front.

    ``info`` receives one-off notes, each said once (e.g. the auto generator falling back
    to the local verifier), ``warn`` per-sample skips; both default to this module's
    logger at WARNING, a level the CLI shows.
    """
    from spectool.verifier import load_verifier_info

    d = cfg.data
    verifier = load_verifier_info(cfg.model.verifier_name_or_path, cfg.model.trust_remote_code)
    aux = verifier.resolve_layer_ids(list(aux_layer_ids) if aux_layer_ids is not None else cfg.model.target_layer_ids)
    info = info or log.warning
    if d.legacy_data:
        info("--legacy-data is deprecated: legacy layer id k is vLLM id k+1 (see `spectool inspect`)")
        policy = d.on_missing if d.on_missing != "generate" else "warn"
        return LegacySource(dataset, len(aux), verifier.hidden_size, on_missing=policy, warn=warn)
    cache_dir = cfg.hidden_states_path
    if not check_layer_record(cache_dir, aux, verifier.num_layers) and cache_dir.is_dir() and any(cache_dir.glob("hs_*.safetensors")):
        info(f"{cache_dir} has no {LAYERS_FILE}: its layer ids cannot be checked (only the layer count is)")
    generator = None
    if d.on_missing == "generate":
        generator = make_generator(
            d.hidden_states_generator, cfg.model.verifier_name_or_path, aux, verifier,
            endpoint=d.vllm_endpoint, vllm_hidden_states_path=d.vllm_hidden_states_path,
            request_timeout=d.request_timeout, max_retries=d.max_retries,
            max_consecutive_failures=d.max_consecutive_failures,
            trust_remote_code=cfg.model.trust_remote_code, device=device, info=info,
        )
        if d.on_generate == "cache":
            stamp_layer_record(cache_dir, generator, aux, verifier, cfg.model.verifier_name_or_path)
    source = HiddenStateSource(dataset, cache_dir, len(aux), verifier.hidden_size, d.on_missing, d.on_generate, generator, warn=warn)
    source.check_cache()
    return source


def stamp_layer_record(cache_dir: Path, generator: Generator, aux_ids: Sequence[int], verifier: Any, verifier_name: str) -> None:
    """Record in ``cache_dir`` the ids its generated files really hold: those the vLLM server
    records it extracts (the client refused any other), else the ids the generator was asked for."""
    extracted = getattr(generator, "extracted_layer_ids", None)
    ids = extracted[:-1] if extracted else list(aux_ids)
    write_layer_record(cache_dir, ids, verifier.num_layers, verifier.hidden_size, verifier_name)


def make_generator(
    kind: str,
    verifier_name: str,
    aux_ids: Sequence[int],
    verifier: Any,
    *,
    endpoint: str,
    vllm_hidden_states_path: str | Path = "/tmp/hidden_states",
    request_timeout: float = 180.0,
    max_retries: int = 3,
    max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
    info: Callable[[str], None] | None = None,
    probe_timeout: float = 3.0,
) -> Generator:
    """``vllm`` (handshake now, fail fast), ``local``, or ``auto``: vLLM if it answers, else
    local, said once through ``info`` (default: this module's logger at WARNING)."""
    info = info or log.warning
    if kind not in ("auto", "vllm", "local"):
        raise HiddenStateError(f"--hidden-states-generator must be auto, vllm or local, got {kind!r}")
    if kind in ("auto", "vllm"):
        client = VllmClient(
            endpoint, verifier_name, aux_ids, verifier.hidden_size, vllm_hidden_states_path, request_timeout, max_retries,
            num_layers=verifier.num_layers, max_consecutive_failures=max_consecutive_failures,
        )
        try:
            client.handshake(timeout=probe_timeout if kind == "auto" else None)
        except VllmUnreachable as exc:
            if kind == "vllm":
                raise HiddenStateError(f"vLLM at {endpoint} is not reachable ({exc}): start it with `spectool vllm launch` or use --hidden-states-generator local") from exc
            info(f"no vLLM endpoint answers at {endpoint} ({exc}): using the verifier in-process")
        else:
            if client.extracted_layer_ids is None:
                info(f"vLLM at {endpoint} did not record its layer ids in {vllm_hidden_states_path} (not started by `spectool vllm launch`?): only the layer count is checked")
            return client
    return LocalGenerator(verifier_name, aux_ids, device=device, trust_remote_code=trust_remote_code)
