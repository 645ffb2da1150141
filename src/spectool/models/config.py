"""The speculator config: what ``config.json`` of a draft checkpoint says, exactly as vLLM reads it.

One writer (:meth:`SpeculatorConfig.to_json`) and one reader (:meth:`from_json`) of the
speculators format (speculators-formats.md section 5): ``speculators_model_type``, the
draft decoder's ``transformer_layer_config``, ``draft_vocab_size``, one greedy proposal
method and the verifier. The algorithm's own keys (EAGLE-3 norm flags, DFlash block/mask
fields, always explicit) are written and read by its subclass in ``models/<algorithm>/``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

from spectool.errors import SpectoolError
from spectool.layer_ids import LayerIdError, check_layer_ids

SPECULATORS_VERSION = "0.6.0"  # the speculators format version we write (vLLM does not check it)
DRAFT_MODEL_TYPES = ("llama", "qwen3")  # decoder layers vLLM serves in drafts
# Upper bounds far above any real draft: a config beyond them is damaged, and building it
# would allocate without limit.
SANE_LIMITS = {
    "vocab_size": 1 << 22,
    "hidden_size": 1 << 16,
    "intermediate_size": 1 << 18,
    "num_hidden_layers": 64,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
}


class SpeculatorConfigError(SpectoolError):
    """A draft config.json that vLLM would refuse or misread."""


@dataclass
class SpeculatorConfig:
    """Fields every algorithm shares; each plug-in subclasses it with its own fields
    (``models/<algorithm>/config.py``) and sets the class variables below."""

    layer_config: dict[str, Any]  # transformer_layer_config (HF decoder config dict of the draft)
    draft_vocab_size: int
    aux_layer_ids: list[int]
    verifier_name_or_path: str
    verifier_architectures: list[str] = field(default_factory=list)
    embed_requires_grad: bool = False

    speculator_type: ClassVar[str] = ""  # speculators_model_type, the registry key
    architecture: ClassVar[str] = ""  # config.json "architectures"[0]
    decoder_model_type: ClassVar[str | None] = None  # forced transformer_layer_config.model_type (None: llama or qwen3)
    explicit_fields: ClassVar[tuple[str, ...]] = ()  # JSON keys whose vLLM default differs: must be written

    # ---- derived ------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.layer_config["hidden_size"])

    @property
    def vocab_size(self) -> int:
        return int(self.layer_config["vocab_size"])

    @property
    def num_layers(self) -> int:
        return int(self.layer_config["num_hidden_layers"])

    @property
    def num_aux(self) -> int:
        return len(self.aux_layer_ids)

    @property
    def speculative_tokens(self) -> int:
        """Tokens one drafting step proposes (the greedy proposal's speculative_tokens)."""
        raise NotImplementedError

    def layer_windows(self) -> list[int | None]:
        """Sliding window of each draft layer (None = full attention)."""
        types = self.layer_config.get("layer_types") or ["full_attention"] * self.num_layers
        window = self.layer_config.get("sliding_window")
        return [window if t == "sliding_attention" else None for t in types]

    def hf_layer_config(self):
        """The transformers config object of the draft decoder (rotary embedding, act fn)."""
        from transformers import LlamaConfig, Qwen3Config

        cls = {"llama": LlamaConfig, "qwen3": Qwen3Config}[self.layer_config["model_type"]]
        values = {k: v for k, v in self.layer_config.items() if k not in ("model_type", "transformers_version")}
        return cls(**values)

    # ---- validation ---------------------------------------------------------------
    def validate(self) -> "SpeculatorConfig":
        lc = self.layer_config
        if lc.get("model_type") not in DRAFT_MODEL_TYPES:
            raise SpeculatorConfigError(f"draft model_type {lc.get('model_type')!r}: vLLM serves llama or qwen3 draft layers")
        if self.decoder_model_type and lc["model_type"] != self.decoder_model_type:
            raise SpeculatorConfigError(f"{self.speculator_type} drafts need transformer_layer_config.model_type {self.decoder_model_type}, got {lc['model_type']!r}")
        for key, limit in SANE_LIMITS.items():
            if not isinstance(lc.get(key), int) or isinstance(lc.get(key), bool) or not 1 <= lc[key] <= limit:
                raise SpeculatorConfigError(f"transformer_layer_config.{key} must be an integer in [1, {limit}], got {lc.get(key)!r}")
        for key in ("head_dim", "sliding_window"):  # optional; when given, positive integers
            value = lc.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= SANE_LIMITS["intermediate_size"]):
                raise SpeculatorConfigError(f"transformer_layer_config.{key} must be a positive integer or null, got {value!r}")
        if lc["num_attention_heads"] % lc["num_key_value_heads"]:
            raise SpeculatorConfigError("num_attention_heads must be a multiple of num_key_value_heads")
        if isinstance(self.draft_vocab_size, bool) or not isinstance(self.draft_vocab_size, int) or not 0 < self.draft_vocab_size <= self.vocab_size:
            raise SpeculatorConfigError(f"draft_vocab_size {self.draft_vocab_size} must lie in [1, {self.vocab_size}]")
        if not self.aux_layer_ids:
            raise SpeculatorConfigError("the draft needs at least one aux hidden-state layer id")
        try:
            check_layer_ids(self.aux_layer_ids)
        except LayerIdError as exc:
            raise SpeculatorConfigError(f"aux hidden-state layer ids: {exc}") from None
        types = lc.get("layer_types")
        if types is not None and len(types) != self.num_layers:
            raise SpeculatorConfigError(f"layer_types has {len(types)} entries for {self.num_layers} draft layers")
        if any(w is not None for w in self.layer_windows()) and not lc.get("sliding_window"):
            raise SpeculatorConfigError("sliding_attention layers need transformer_layer_config.sliding_window")
        self.validate_algorithm()
        return self

    def validate_algorithm(self) -> None:
        """The algorithm's own checks (raise SpeculatorConfigError)."""

    # ---- config.json --------------------------------------------------------------
    def algorithm_json(self) -> dict[str, Any]:
        """The algorithm's top-level config.json keys."""
        return {}

    @classmethod
    def algorithm_fields(cls, data: dict[str, Any], speculative_tokens: int) -> dict[str, Any]:
        """Constructor keyword arguments of the algorithm's fields read from config.json."""
        return {}

    def to_json(self) -> dict[str, Any]:
        import transformers

        out: dict[str, Any] = {
            "architectures": [self.architecture],
            "speculators_model_type": self.speculator_type,
            "speculators_version": SPECULATORS_VERSION,
            "transformers_version": transformers.__version__,
            "dtype": "bfloat16",
            "torch_dtype": "bfloat16",
            "draft_vocab_size": self.draft_vocab_size,
            "target_hidden_size": None,
        }
        out.update(self.algorithm_json())
        out["transformer_layer_config"] = copy.deepcopy(self.layer_config)
        out["speculators_config"] = {
            "algorithm": self.speculator_type,
            "proposal_methods": [
                {"proposal_type": "greedy", "speculative_tokens": self.speculative_tokens, "verifier_accept_k": 1, "accept_tolerance": 0.0}
            ],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": self.verifier_name_or_path, "architectures": list(self.verifier_architectures)},
        }
        return out

    @staticmethod
    def from_json(data: dict[str, Any]) -> "SpeculatorConfig":
        """Read any registered algorithm's config.json (the registry picks the class)."""
        from spectool.models.registry import get_plugin

        try:
            kind = str(data["speculators_model_type"])
            spec = data["speculators_config"]
            tokens = int(spec["proposal_methods"][0]["speculative_tokens"])
            verifier = spec["verifier"]
            common = dict(
                layer_config=dict(data["transformer_layer_config"]),
                draft_vocab_size=int(data.get("draft_vocab_size") or data["transformer_layer_config"].get("vocab_size", 0)),
                verifier_name_or_path=str(verifier.get("name_or_path", "")),
                verifier_architectures=list(verifier.get("architectures") or []),
            )
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise SpeculatorConfigError(f"not a speculators config.json (missing or bad {exc}): build drafts with `spectool init`") from exc
        cls = get_plugin(kind).config_class
        try:
            cfg = cls(**common, **cls.algorithm_fields(data, tokens))
            return cfg.validate()
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, SpectoolError):
                raise
            raise SpeculatorConfigError(f"bad {kind} field in config.json ({exc}): rewrite it with `spectool init`") from exc


def build_layer_config(
    verifier_config: Any,
    *,
    model_type: str,
    num_layers: int,
    hidden_act: str | None,
    sliding_window: int,
    sliding_window_indices: list[int] | None,
) -> dict[str, Any]:
    """The draft decoder config synthesised from the verifier's (same width, heads, rope)."""
    import transformers

    vc = verifier_config
    hidden = int(vc.hidden_size)
    heads = int(vc.num_attention_heads)
    # transformers 5 keeps rope in rope_parameters (and aliases rope_scaling to it); 4.x in
    # rope_theta + rope_scaling. Normalise to one dict, then write both spellings.
    rope_params = dict(getattr(vc, "rope_parameters", None) or getattr(vc, "rope_scaling", None) or {})
    rope_params.setdefault("rope_theta", getattr(vc, "rope_theta", 10000.0))
    rope_params.setdefault("rope_type", rope_params.pop("type", "default"))
    for key in ("mrope_interleaved", "mrope_section", "partial_rotary_factor"):
        rope_params.pop(key, None)
    rope_theta = rope_params["rope_theta"]
    rope_scaling = None if rope_params["rope_type"] == "default" else {k: v for k, v in rope_params.items() if k != "rope_theta"}
    intermediate = getattr(vc, "intermediate_size", None) or 3 * hidden
    act = getattr(vc, "hidden_act", "silu") if hidden_act in (None, "None", "none") else hidden_act
    layer_types = [
        "sliding_attention" if sliding_window and (sliding_window_indices is None or i in sliding_window_indices) else "full_attention"
        for i in range(num_layers)
    ]
    config: dict[str, Any] = {
        "model_type": model_type,
        "vocab_size": int(vc.vocab_size),
        "hidden_size": hidden,
        "intermediate_size": int(intermediate),
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(getattr(vc, "num_key_value_heads", None) or heads),
        "head_dim": int(getattr(vc, "head_dim", None) or hidden // heads),
        "hidden_act": act,
        "max_position_embeddings": int(getattr(vc, "max_position_embeddings", 4096)),
        "initializer_range": 0.02,
        "rms_norm_eps": float(getattr(vc, "rms_norm_eps", 1e-6)),
        # Both spellings: transformers 4.x reads rope_theta/rope_scaling, 5.x rope_parameters.
        "rope_theta": float(rope_theta),
        "rope_scaling": rope_scaling,
        "rope_parameters": rope_params,
        "attention_bias": False,
        "tie_word_embeddings": False,
        "layer_types": layer_types,
        "sliding_window": sliding_window or None,
        "use_sliding_window": bool(sliding_window),
        "transformers_version": transformers.__version__,
    }
    if model_type == "llama":
        config["mlp_bias"] = False
    else:
        config["max_window_layers"] = num_layers
    return config
