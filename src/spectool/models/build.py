"""From run options to an initialised draft: vocab mapping, layer ids, mask token, decoder
config (synthesised, ``--draft-config`` or ``--from-pretrained``), verifier weights."""

from __future__ import annotations

import json
from pathlib import Path

from spectool.config import RunConfig
from spectool.errors import SpectoolError
from spectool.models import CONFIG, WEIGHTS, DraftModel, build_draft, get_plugin, load_draft, read_config
from spectool.models.config import DRAFT_MODEL_TYPES, SpeculatorConfig, build_layer_config
from spectool.verifier import VerifierInfo, load_verifier_info, read_verifier_tensors
from spectool.vocab import VocabMapping, derived_vocab_mapping, load_vocab_mapping


class BuildError(SpectoolError):
    """The draft cannot be built from these options."""


def resolve_vocab_mapping(cfg: RunConfig, vocab_size: int) -> VocabMapping | None:
    """Explicit files -> ``{data}/d2t-{D}-{sha of token_freq}.npy`` (built and cached on first use) -> none."""
    v = cfg.vocab
    if v.d2t_path:
        mapping = load_vocab_mapping(v.d2t_path, v.t2d_path, draft_vocab_size=v.draft_vocab_size, target_vocab_size=vocab_size)
        return None if mapping.draft_vocab_size == vocab_size else mapping
    D = v.draft_vocab_size
    if D is None or D == vocab_size:
        return None
    if D > vocab_size:
        raise BuildError(f"--draft-vocab-size {D} exceeds the verifier vocab size {vocab_size}")
    return derived_vocab_mapping(cfg.data.data_path, cfg.token_freq_path, D, vocab_size)


def resolve_mask_token_id(cfg: RunConfig, info: VerifierInfo) -> int:
    """Explicit -> tokenizer mask token -> first unused embedding row -> pad/eos/unk (for the
    algorithms that draft from mask tokens)."""
    if cfg.vocab.mask_token_id is not None:
        mask_id = cfg.vocab.mask_token_id
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(info.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
        candidates = [tok.mask_token_id, len(tok) if len(tok) < info.vocab_size else None, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id]
        mask_id = next((c for c in candidates if c is not None), None)
        if mask_id is None:
            raise BuildError("cannot pick a mask token from the tokenizer: pass --mask-token-id")
    if not 0 <= mask_id < info.vocab_size:
        raise BuildError(f"--mask-token-id {mask_id} lies outside the verifier vocab [0, {info.vocab_size})")
    return int(mask_id)


def _read_decoder_config(path: str, speculator_type: str) -> dict:
    """A decoder config dict from a JSON file or directory (a full speculator config's nested one is taken)."""
    p = Path(path)
    file = p / CONFIG if p.is_dir() else p
    if not file.is_file():
        raise BuildError(f"--draft-config {path}: no such file (give a config.json or its directory)")
    data = json.loads(file.read_text())
    if "transformer_layer_config" in data:
        data = data["transformer_layer_config"]
    forced = get_plugin(speculator_type).config_class.decoder_model_type
    if forced and data.get("model_type") != forced:
        raise BuildError(f"--draft-config for {speculator_type} must have model_type {forced}, got {data.get('model_type')!r}")
    if data.get("model_type") not in DRAFT_MODEL_TYPES:
        raise BuildError(f"--draft-config model_type {data.get('model_type')!r} is not supported: use one of {', '.join(DRAFT_MODEL_TYPES)}")
    return data


def _speculator_config(cfg: RunConfig, info: VerifierInfo, layer_config: dict, draft_vocab_size: int) -> SpeculatorConfig:
    m = cfg.model
    if int(layer_config["hidden_size"]) != info.hidden_size:
        raise BuildError(f"draft hidden_size {layer_config['hidden_size']} differs from the verifier's {info.hidden_size}: not supported")
    layer_config = {**layer_config, "vocab_size": info.vocab_size, "tie_word_embeddings": False}
    plugin = get_plugin(m.speculator_type)
    return plugin.config_class(
        layer_config=layer_config,
        draft_vocab_size=draft_vocab_size,
        aux_layer_ids=info.resolve_layer_ids(cfg.model.target_layer_ids),
        verifier_name_or_path=m.verifier_name_or_path,
        verifier_architectures=info.architectures,
        **plugin.spec_fields(cfg, info),
    ).validate()


def check_compatible(spec: SpeculatorConfig, info: VerifierInfo, cfg: RunConfig) -> None:
    """A pretrained draft must fit this verifier and these options."""
    if spec.speculator_type != cfg.model.speculator_type:
        raise BuildError(f"--from-pretrained is a {spec.speculator_type} draft but --speculator-type is {cfg.model.speculator_type}")
    if spec.vocab_size != info.vocab_size or spec.hidden_size != info.hidden_size:
        raise BuildError(
            f"--from-pretrained draft has vocab {spec.vocab_size}/hidden {spec.hidden_size}, the verifier {info.vocab_size}/{info.hidden_size}: use a draft made for this verifier"
        )
    if cfg.model.target_layer_ids is not None and list(cfg.model.target_layer_ids) != spec.aux_layer_ids:
        raise BuildError(f"--target-layer-ids {cfg.model.target_layer_ids} differ from the draft's {spec.aux_layer_ids}: drop the option")
    if cfg.vocab.draft_vocab_size is not None and cfg.vocab.draft_vocab_size != spec.draft_vocab_size:
        raise BuildError(f"--draft-vocab-size {cfg.vocab.draft_vocab_size} differs from the draft's {spec.draft_vocab_size}: drop the option")
    info.resolve_layer_ids(spec.aux_layer_ids)


def initialise_draft(cfg: RunConfig, info: VerifierInfo | None = None) -> DraftModel:
    """The draft a run starts from, with the verifier's norm/lm_head installed for targets."""
    cfg.validate()
    m = cfg.model
    info = info or load_verifier_info(m.verifier_name_or_path, m.trust_remote_code)
    tensors = read_verifier_tensors(info)
    pretrained = Path(m.from_pretrained) if m.from_pretrained else None
    if pretrained is not None and (pretrained / WEIGHTS).is_file():
        spec = read_config(pretrained)
        check_compatible(spec, info, cfg)
        spec.verifier_name_or_path = m.verifier_name_or_path
        model = load_draft(pretrained, spec)
        model.attach_verifier(tensors, copy_embed_and_head=False)
        return model
    if pretrained is not None:
        if not (pretrained / CONFIG).is_file():
            raise BuildError(f"--from-pretrained {pretrained}: no config.json or model.safetensors there")
        spec = read_config(pretrained)
        check_compatible(spec, info, cfg)
        spec.verifier_name_or_path = m.verifier_name_or_path
        mapping = resolve_vocab_mapping(cfg, info.vocab_size) if spec.draft_vocab_size < info.vocab_size else None
        if spec.draft_vocab_size < info.vocab_size and mapping is None:
            raise BuildError(f"the config in {pretrained} has draft_vocab_size {spec.draft_vocab_size}: pass --draft-vocab-size with token_freq or --d2t-path/--t2d-path")
    else:
        if m.draft_config:
            layer_config = _read_decoder_config(m.draft_config, m.speculator_type)
        else:
            layer_config = build_layer_config(
                info.config,
                model_type=get_plugin(m.speculator_type).decoder_model_type(cfg),
                num_layers=m.num_layers,
                hidden_act=m.draft_hidden_act,
                sliding_window=m.sliding_window,
                sliding_window_indices=m.sliding_window_indices,
            )
        mapping = resolve_vocab_mapping(cfg, info.vocab_size)
        spec = _speculator_config(cfg, info, layer_config, mapping.draft_vocab_size if mapping else info.vocab_size)
    if mapping is not None and mapping.draft_vocab_size != spec.draft_vocab_size:
        raise BuildError(f"vocab mapping has {mapping.draft_vocab_size} tokens, the draft config {spec.draft_vocab_size}")
    model = build_draft(spec)
    model.reset_parameters(cfg.training.seed)
    model.set_vocab_mapping(mapping)
    model.attach_verifier(tensors, copy_embed_and_head=True)
    return model
