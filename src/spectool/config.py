"""The typed run configuration: one tree of dataclasses, the single source of truth.

Every option of ``spectool train`` is a field here; its default, its help text, its flag
spelling and its help panel live in the field's metadata, and the CLI builds its options
from them (``spectool.cli.options``). The library is usable without the CLI:
``spectool.train(RunConfig(...))``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spectool.errors import SpectoolError
from spectool.fsutil import atomic_write
from spectool.loss_spec import parse_loss
from spectool.layer_ids import check_layer_ids


class ConfigError(SpectoolError, ValueError):
    """A bad option or combination of options; the message is one line naming the fix."""


def check_data_path(path: str | Path) -> None:
    """--data-path must be a directory (the CLI checks it before torch loads, the trainer again)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--data-path {path} is a file, not a data directory: pass the directory `spectool data prepare` wrote")
    if not path.is_dir():
        raise ConfigError(f"--data-path {path} does not exist: run `spectool data prepare` first")


def opt(default: Any, help: str, *, flag: str | None = None, negatable: bool = False, choices: tuple | None = None, **kw) -> Any:
    """A config field with its CLI help. ``negatable`` gives ``--x/--no-x`` booleans."""
    meta = {"help": help, "flag": flag, "negatable": negatable, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


SPECULATOR_TYPES = ("eagle3", "dflash", "peagle")
DRAFT_ARCHS = ("llama", "qwen3")
ATTN_IMPLS = ("simple_flex_attention", "sdpa", "eager")
DTYPES = ("float32", "float16", "bfloat16")
LOGGERS = ("tensorboard", "wandb", "mlflow", "trackio")


@dataclass
class ModelConfig:
    """Model Arguments."""

    verifier_name_or_path: str = opt("", "HF model id or local path of the verifier (target) model. Required.")
    trust_remote_code: bool = opt(False, "Allow executing code from the verifier's repository (opt-in only).")
    speculator_type: str = opt("eagle3", "Speculator to train.", choices=SPECULATOR_TYPES)
    from_pretrained: str = opt("", "Draft checkpoint (or a directory holding only a speculator config.json) to start from. Excludes --draft-config and the decoder-shaping flags.")
    draft_config: str = opt("", "Decoder config (directory or JSON; LlamaConfig for eagle3, Qwen3Config for dflash) used as the draft transformer_layer_config. Excludes --from-pretrained and the decoder-shaping flags.")
    dry_run: bool = opt(False, "Build and initialise the draft, save it to --save-path, exit before training (same as `spectool init`).")
    num_layers: int = opt(1, "Number of transformer layers in the draft.")
    draft_arch: str = opt("llama", "Decoder layer architecture of EAGLE-3 and P-EAGLE drafts (DFlash is always Qwen3-style).", choices=DRAFT_ARCHS)
    draft_hidden_act: str = opt("silu", "Activation of the draft MLP; 'None' inherits the verifier's.")
    sliding_window: int = opt(2048, "Sliding attention window of the draft layers (0 = full attention).")
    sliding_window_indices: list[int] | None = opt(None, "Draft layers that use the sliding window (default: all layers).")
    target_layer_ids: list[int] | None = opt(None, "Verifier layer ids whose hidden states feed the draft, vLLM convention (default: 2, L//2, L-3).")


@dataclass
class DataConfig:
    """Data Arguments."""

    data_path: str = opt("./data", "Processed data directory (from `spectool data prepare`).")
    on_missing: str = opt("generate", "When a cached hidden-state file is missing or invalid: generate it, skip, warn and skip, or raise.", choices=("generate", "skip", "warn", "raise"))
    on_generate: str = opt("delete", "After generating hidden states: delete them (online) or cache them (hybrid).", choices=("cache", "delete"))
    hidden_states_path: str | None = opt(None, "Hidden-state cache directory (default: {data-path}/hidden_states).")
    vllm_endpoint: str = opt("http://localhost:8000/v1", "vLLM server (with /v1) that generates hidden states on demand.")
    vllm_hidden_states_path: str = opt("/tmp/hidden_states", "Directory the vLLM server writes hidden states to (its `spectool vllm launch --hidden-states-path`); replies naming files elsewhere are refused.")
    hidden_states_generator: str = opt("auto", "Who generates missing hidden states: the vLLM server, the verifier loaded in-process, or auto (vLLM if it answers, else local).", choices=("auto", "vllm", "local"))
    request_timeout: float = opt(180.0, "Timeout in seconds of one vLLM request.")
    max_retries: int = opt(3, "Retries of one vLLM request on connection errors, timeouts and 5xx.")
    max_consecutive_failures: int = opt(5, "Stop the run, with a checkpoint, after this many vLLM requests in a row failed (retries count).")
    legacy_data: bool = opt(False, "DEPRECATED: read the old per-sample data_{i}.pt format.")
    total_seq_len: int = opt(8192, "Tokens per packed training row.")
    val_ratio: float = opt(0.05, "Share of samples held out (deterministically, the tail) for validation.")


@dataclass
class VocabConfig:
    """Vocabulary Mapping Arguments."""

    draft_vocab_size: int | None = opt(None, "Draft vocabulary size (default: the full verifier vocabulary).")
    token_freq_path: str | None = opt(None, "token_freq.pt used to pick the draft vocabulary (default: {data-path}/token_freq.pt).")
    d2t_path: str | None = opt(None, "d2t.npy mapping; give together with --t2d-path.")
    t2d_path: str | None = opt(None, "t2d.npy mapping; give together with --d2t-path.")
    mask_token_id: int | None = opt(None, "Mask token of DFlash blocks and P-EAGLE mask slots (default: auto-detected from the tokenizer).")


@dataclass
class TrainingConfig:
    """Training Arguments."""

    save_path: str = opt("./checkpoints", "Directory of checkpoints and the run configuration.")
    epochs: int = opt(20, "Number of training epochs.")
    lr: float = opt(1e-4, "Learning rate.")
    no_resume_from_checkpoint: bool = opt(False, "Start fresh even if --save-path holds checkpoints.")
    logger: str = opt("", "Comma-separated metric loggers: tensorboard, wandb, mlflow, trackio.")
    log_dir: str = opt("./logs", "Directory of training logs (tensorboard).")
    run_name: str | None = opt(None, "Run name for the loggers (default: derived from the save path).")
    seed: int = opt(42, "Random seed.")
    hidden_states_dtype: str = opt("bfloat16", "Hidden-state / autocast dtype on GPU (weights stay fp32; float16 adds a gradient scaler).", choices=DTYPES)
    log_steps: int = opt(10, "Reduce train metrics every N steps (each step is still logged; one device sync per N steps).")
    deterministic_cuda: bool = opt(False, "Deterministic CUDA kernels (slower).")
    max_steps: int | None = opt(None, "Stop after this many optimizer steps (default: run all epochs).")
    grad_clip: float = opt(1.0, "Gradient-norm clipping threshold (0 disables).")


@dataclass
class OptimizerConfig:
    """Optimizer Arguments."""

    optimizer: str = opt("adamw", "adamw, or muon (Muon on 2-D hidden matrices, AdamW on the rest).", choices=("adamw", "muon"))
    weight_decay: float = opt(0.01, "AdamW weight decay (also the AdamW group in muon mode).")
    muon_lr: float = opt(0.02, "Learning rate of the Muon group.")
    muon_momentum: float = opt(0.95, "Muon momentum.")
    muon_weight_decay: float = opt(0.1, "Muon weight decay.")
    muon_ns_steps: int = opt(5, "Newton-Schulz steps of Muon.")
    muon_adjust_lr_fn: str = opt("match_rms_adamw", "Muon learning-rate adjustment.", choices=("original", "match_rms_adamw"))


@dataclass
class Eagle3Config:
    """EAGLE-3 Arguments."""

    use_off_policy_tokens: bool = opt(False, "Accepted for compatibility: ground-truth tokens are always fed unless --ttt-tokens draft.")
    ttt_tokens: str = opt("ground-truth", "Tokens fed at test-time-training steps: the data's ground truth, or the draft's own argmax (explicit choice).", choices=("ground-truth", "draft"))
    norm_before_residual: bool = opt(True, "Normalise the hidden input before the residual connection.", negatable=True)
    embed_requires_grad: bool | None = opt(None, "Train the embedding (default: off for EAGLE-3, on for P-EAGLE).", negatable=True)
    norm_before_fc: bool = opt(False, "RMSNorm over the concatenated aux states before fc (gpt-oss style).")
    fc_norm: bool = opt(False, "Per-aux-layer RMSNorm before fc (EAGLE 3.1). Excludes --norm-before-fc.")
    norm_output: bool = opt(False, "Feed the normalised draft state back across steps (EAGLE 3.1).")
    ttt_steps: int = opt(3, "Test-time-training steps (= tokens drafted per step in vLLM).")
    ttt_step_loss_decay: float = opt(1.0, "Loss weight decay per TTT step.")


@dataclass
class AttentionConfig:
    """Attention Backend Arguments."""

    draft_attn_impl: str = opt("simple_flex_attention", "Draft attention kernel; flex on GPU (CPU trains with sdpa and says so).", choices=ATTN_IMPLS)


@dataclass
class DFlashConfig:
    """DFlash Arguments."""

    block_size: int = opt(8, "DFlash block size (drafts block_size - 1 tokens per step).")
    max_anchors: int = opt(256, "Maximum anchor positions per packed row (DFlash anchors, P-EAGLE seeds).")
    dflash_decay_gamma: float = opt(4.0, "Decay gamma of the per-position loss weights exp(-(s-1)/gamma).")
    sliding_window_non_causal: bool = opt(False, "Bidirectional attention inside a block on sliding layers (vLLM serves causal only).")


@dataclass
class PEagleConfig:
    """P-EAGLE Arguments."""

    num_depths: int = opt(8, "Parallel prediction depths (= tokens drafted per step in vLLM).")
    down_sample_ratio: float = opt(0.7, "COD sampling: depth d keeps a share down_sample_ratio**d of the seeds.")
    down_sample_ratio_min: float = opt(0.2, "COD sampling: the floor of that share at deep depths.")


@dataclass
class LossConfig:
    """Loss Arguments."""

    loss: str = opt(
        "kl",
        "Loss to the verifier: kl (forward KL), rkl (reverse KL), jsd, ce (cross-entropy to the verifier's argmax), "
        "tv (1 - acceptance), lk (-log acceptance), lk_hybrid (KL/TV blend), or a JSON mix of weights, e.g. '{\"ce\": 0.1, \"tv\": 0.9}'.",
    )


@dataclass
class DataloaderConfig:
    """Dataloader Arguments."""

    num_workers: int = opt(12, "Dataloader worker processes (capped at the CPUs available).")
    prefetch_factor: int = opt(4, "Batches prefetched per worker.")
    noise_std: float = opt(0.05, "Half-width of the uniform noise added to training hidden states.")


@dataclass
class CheckpointConfig:
    """Checkpoint Arguments."""

    checkpoint_freq: int = opt(1, "Save a checkpoint every N epochs (>= 1).")
    checkpoint_steps: int = opt(0, "Also save every N optimizer steps inside an epoch (0 = off).")
    save_best: bool = opt(False, "Keep a 'best' link to the checkpoint with the best validation metric.")
    save_best_metric: str = opt("loss", "Validation metric for --save-best: lowest loss or highest simulated acceptance length.", choices=("loss", "acceptance"))


@dataclass
class SchedulerConfig:
    """Learning Rate Scheduler Arguments."""

    scheduler_type: str = opt("linear", "Learning-rate schedule.", choices=("linear", "cosine", "constant"))
    scheduler_warmup_steps: int | None = opt(None, "Warmup steps (default: 1% of total).")
    scheduler_total_steps: int | None = opt(None, "Total steps (default: epochs x steps per epoch).")
    scheduler_num_cosine_cycles: float = opt(0.5, "Cosine cycles of the cosine schedule.")


GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "vocab": VocabConfig,
    "training": TrainingConfig,
    "optimizer": OptimizerConfig,
    "eagle3": Eagle3Config,
    "attention": AttentionConfig,
    "dflash": DFlashConfig,
    "peagle": PEagleConfig,
    "loss": LossConfig,
    "dataloader": DataloaderConfig,
    "checkpoint": CheckpointConfig,
    "scheduler": SchedulerConfig,
}


# (old section, key) -> the section the key lives in now
MOVED_KEYS = {("vocab", "target_layer_ids"): "model"}


@dataclass
class RunConfig:
    """Everything a training run needs; saved as ``run.yaml`` in the save path."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    eagle3: Eagle3Config = field(default_factory=Eagle3Config)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    dflash: DFlashConfig = field(default_factory=DFlashConfig)
    peagle: PEagleConfig = field(default_factory=PEagleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    dataloader: DataloaderConfig = field(default_factory=DataloaderConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    # ---- derived paths -------------------------------------------------------------
    @property
    def hidden_states_path(self) -> Path:
        return Path(self.data.hidden_states_path or Path(self.data.data_path) / "hidden_states")

    @property
    def token_freq_path(self) -> Path:
        return Path(self.vocab.token_freq_path or Path(self.data.data_path) / "token_freq.pt")

    # ---- flat access (CLI) ---------------------------------------------------------
    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> "RunConfig":
        """Build from ``{field_name: value}`` as the CLI parses them; unknown names fail."""
        cfg = cls()
        index = field_index()
        for name, value in values.items():
            if name not in index:
                raise ConfigError(f"unknown option {name!r}")
            setattr(getattr(cfg, index[name]), name, value)
        return cfg

    def flat(self) -> dict[str, Any]:
        return {k: v for group in GROUPS for k, v in dataclasses.asdict(getattr(self, group)).items()}

    # ---- YAML round trip -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        from spectool import __version__

        return {VERSION_KEY: __version__, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Any, source: str = "run configuration") -> "RunConfig":
        """Build from the nested mapping of run.yaml; refuse what does not fit as a whole
        (not a mapping, unknown section or key, a value of the wrong type)."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{source} must be a mapping of sections (model:, data:, ...), got {type(data).__name__}")
        cfg = cls()
        index = field_index()
        for group, values in data.items():
            if group == VERSION_KEY:
                continue
            if group not in GROUPS:
                hint = f"{index[group]}.{group}" if group in index else _closest(str(group), [*GROUPS, VERSION_KEY])
                raise ConfigError(f"unknown section {group!r} in {source}" + (f": did you mean {hint!r}?" if hint else f": sections are {', '.join(GROUPS)}"))
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"section {group!r} of {source} must be a mapping of keys, got {type(values).__name__}")
            for name, value in values.items():
                target = MOVED_KEYS.get((group, name), group)  # run.yaml files written before a move
                fields = {f.name: f for f in dataclasses.fields(GROUPS[target])}
                if name not in fields:
                    hint = f"{index[name]}.{name}" if name in index else _closest(str(name), [f"{g}.{n}" for n, g in index.items()], key=lambda c: c.split(".", 1)[1])
                    raise ConfigError(f"unknown key {group}.{name} in {source}" + (f": did you mean {hint}?" if hint else ""))
                setattr(getattr(cfg, target), name, _typed(value, fields[name], f"{target}.{name}", source))
        return cfg

    def save_yaml(self, path: str | Path) -> None:
        """Atomic: a failed write (disk full, file-size limit) leaves the old run.yaml whole."""
        import yaml

        atomic_write(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load_yaml(cls, path: str | Path) -> "RunConfig":
        """Read a run.yaml strictly: a file that does not parse as a whole is refused."""
        import yaml

        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} cannot be read ({exc}): give a run.yaml") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{path}{where}: not valid YAML ({problem}): fix or restore the file") from None
        return cls.from_dict(data, str(path))

    def with_absolute_paths(self) -> "RunConfig":
        """Paths made absolute (in place), so run.yaml works from any directory; a verifier
        or draft given as a hub id stays as it is."""
        for group, name in PATH_FIELDS:
            section = getattr(self, group)
            value = getattr(section, name)
            if value and (name not in HUB_OR_PATH_FIELDS or Path(value).expanduser().exists()):
                setattr(section, name, str(Path(value).expanduser().resolve()))
        return self

    # ---- validation ----------------------------------------------------------------
    def validate(self) -> "RunConfig":
        """Check every combination that can be checked without touching disk or models."""
        m, d, v, t, e, df = self.model, self.data, self.vocab, self.training, self.eagle3, self.dflash
        for group in GROUPS:
            for f in dataclasses.fields(GROUPS[group]):
                choices = f.metadata.get("choices")
                value = getattr(getattr(self, group), f.name)
                if choices and value not in choices:
                    raise ConfigError(f"{flag_name(f)} must be one of {', '.join(choices)}, got {value!r}")
                if isinstance(value, float) and not math.isfinite(value):
                    raise ConfigError(f"{flag_name(f)} must be a finite number, got {value}")
        if not m.verifier_name_or_path:
            raise ConfigError("--verifier-name-or-path is required")
        shaping = [n for n in ("num_layers", "draft_arch", "draft_hidden_act", "sliding_window", "sliding_window_indices")
                   if getattr(m, n) != getattr(ModelConfig(), n)]
        if m.from_pretrained and m.draft_config:
            raise ConfigError("--from-pretrained and --draft-config exclude each other: give one")
        if (m.from_pretrained or m.draft_config) and shaping:
            which = "--from-pretrained" if m.from_pretrained else "--draft-config"
            flags = ", ".join("--" + n.replace("_", "-") for n in shaping)
            raise ConfigError(f"{which} defines the decoder; drop {flags}")
        if m.num_layers < 1:
            raise ConfigError("--num-layers must be >= 1")
        if m.sliding_window < 0:
            raise ConfigError("--sliding-window must be >= 0 (0 = full attention)")
        if m.sliding_window_indices is not None and any(not 0 <= i < m.num_layers for i in m.sliding_window_indices):
            raise ConfigError(f"--sliding-window-indices must lie in [0, {m.num_layers - 1}] for --num-layers {m.num_layers}")
        if (v.d2t_path is None) != (v.t2d_path is None):
            raise ConfigError("--d2t-path and --t2d-path go together: give both or neither")
        if v.draft_vocab_size is not None and v.draft_vocab_size < 1:
            raise ConfigError("--draft-vocab-size must be >= 1")
        if m.target_layer_ids is not None:
            check_layer_ids(m.target_layer_ids)
        if t.epochs < 1:
            raise ConfigError("--epochs must be >= 1")
        if t.lr <= 0:
            raise ConfigError("--lr must be > 0")
        if t.grad_clip < 0:
            raise ConfigError(f"--grad-clip must be >= 0 (0 disables clipping), got {t.grad_clip}")
        if t.max_steps is not None and t.max_steps < 1:
            raise ConfigError("--max-steps must be >= 1")
        if t.log_steps < 1:
            raise ConfigError("--log-steps must be >= 1")
        if e.ttt_steps < 1:
            raise ConfigError("--ttt-steps must be >= 1")
        if e.norm_before_fc and e.fc_norm:
            raise ConfigError("--norm-before-fc and --fc-norm exclude each other: give one")
        if not 0 < e.ttt_step_loss_decay:
            raise ConfigError("--ttt-step-loss-decay must be > 0")
        try:
            parse_loss(self.loss.loss)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if df.block_size < 2:
            raise ConfigError("--block-size must be >= 2")
        if df.block_size > d.total_seq_len:
            raise ConfigError(f"--block-size {df.block_size} exceeds --total-seq-len {d.total_seq_len}: a block must fit in a packed row")
        if df.max_anchors < 1:
            raise ConfigError("--max-anchors must be >= 1")
        if df.dflash_decay_gamma <= 0:
            raise ConfigError("--dflash-decay-gamma must be > 0")
        pe = self.peagle
        if pe.num_depths < 1:
            raise ConfigError("--num-depths must be >= 1")
        if not 0 < pe.down_sample_ratio <= 1 or not 0 <= pe.down_sample_ratio_min <= 1:
            raise ConfigError("--down-sample-ratio must lie in (0, 1] and --down-sample-ratio-min in [0, 1]")
        if d.total_seq_len < 16:
            raise ConfigError("--total-seq-len must be >= 16")
        if not 0 <= d.val_ratio < 1:
            raise ConfigError("--val-ratio must lie in [0, 1)")
        if d.request_timeout <= 0 or d.max_retries < 0:
            raise ConfigError("--request-timeout must be > 0 and --max-retries >= 0")
        if d.max_consecutive_failures < 1:
            raise ConfigError(f"--max-consecutive-failures must be >= 1, got {d.max_consecutive_failures}")
        if self.checkpoint.checkpoint_freq < 1:
            raise ConfigError("--checkpoint-freq must be >= 1")
        if self.checkpoint.checkpoint_steps < 0:
            raise ConfigError("--checkpoint-steps must be >= 0")
        if self.dataloader.num_workers < 0 or self.dataloader.prefetch_factor < 1:
            raise ConfigError("--num-workers must be >= 0 and --prefetch-factor >= 1")
        if self.dataloader.noise_std < 0:
            raise ConfigError("--noise-std must be >= 0")
        o = self.optimizer
        if o.weight_decay < 0 or o.muon_weight_decay < 0:
            raise ConfigError("--weight-decay and --muon-weight-decay must be >= 0")
        if o.muon_lr <= 0:
            raise ConfigError(f"--muon-lr must be > 0, got {o.muon_lr}")
        if not 0 <= o.muon_momentum < 1:
            raise ConfigError(f"--muon-momentum must lie in [0, 1), got {o.muon_momentum}")
        if o.muon_ns_steps < 1:
            raise ConfigError(f"--muon-ns-steps must be >= 1, got {o.muon_ns_steps}")
        if v.mask_token_id is not None and v.mask_token_id < 0:
            raise ConfigError("--mask-token-id must be a token id >= 0")
        s = self.scheduler
        if s.scheduler_warmup_steps is not None and s.scheduler_warmup_steps < 0:
            raise ConfigError("--scheduler-warmup-steps must be >= 0")
        if s.scheduler_total_steps is not None and s.scheduler_total_steps < 1:
            raise ConfigError("--scheduler-total-steps must be >= 1")
        if s.scheduler_num_cosine_cycles <= 0:
            raise ConfigError("--scheduler-num-cosine-cycles must be > 0")
        for name in filter(None, (x.strip() for x in t.logger.split(","))):
            if name not in LOGGERS:
                raise ConfigError(f"--logger {name!r} is unknown: use tensorboard, wandb, mlflow or trackio")
        if self.checkpoint.save_best and d.val_ratio == 0:
            raise ConfigError("--save-best needs a validation split: set --val-ratio > 0")
        return self


VERSION_KEY = "spectool_version"  # the version that wrote a run.yaml (ignored on reading)
# (group, field) holding a filesystem path; the second set may also be a hub id
PATH_FIELDS = (("model", "verifier_name_or_path"), ("model", "from_pretrained"), ("model", "draft_config"),
               ("data", "data_path"), ("data", "hidden_states_path"), ("data", "vllm_hidden_states_path"),
               ("vocab", "token_freq_path"), ("vocab", "d2t_path"), ("vocab", "t2d_path"),
               ("training", "save_path"), ("training", "log_dir"))
HUB_OR_PATH_FIELDS = {"verifier_name_or_path", "from_pretrained", "draft_config"}


def _closest(word: str, candidates: list[str], key=lambda c: c) -> str | None:
    """The candidate nearest to ``word`` (by ``key``), for "did you mean" hints."""
    import difflib

    keys = {key(c): c for c in candidates}
    match = difflib.get_close_matches(word, list(keys), n=1, cutoff=0.5)
    return keys[match[0]] if match else None


def _typed(value: Any, f: dataclasses.Field, key: str, source: str) -> Any:
    """``value`` if it fits the field's type (an int is a fine float), else ConfigError."""
    kind = str(f.type)
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"{key} in {source} must not be empty (null)")
    if kind.startswith("bool"):
        ok = isinstance(value, bool)
    elif kind.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind.startswith("list"):
        ok = isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{key} in {source} must be {kind.split(' ')[0].replace('list[int]', 'a list of integers')}, got {value!r}")
    return value


# What resume may change. Every other setting fixes the data order (data, split, packing,
# seed) or the model (type, shape, vocabulary, layers) that the checkpoints were trained
# with; changing one would break the promise that a resumed run is the uninterrupted run,
# so resume refuses it. New settings are refused until listed here.
RESUME_FREE = frozenset({
    "trust_remote_code", "dry_run", "on_missing", "on_generate", "hidden_states_path", "vllm_endpoint",
    "vllm_hidden_states_path", "hidden_states_generator", "request_timeout", "max_retries", "save_path",
    "no_resume_from_checkpoint", "logger", "log_dir", "run_name", "deterministic_cuda", "draft_attn_impl",
    "num_workers", "prefetch_factor", "checkpoint_freq", "checkpoint_steps", "save_best", "save_best_metric",
    "use_off_policy_tokens", "log_steps", "max_consecutive_failures",
})
# Optimizer, schedule and loss hyper-parameters: allowed, with a warning recorded in the run.
RESUME_WARN = frozenset({
    "lr", "weight_decay", "muon_lr", "muon_momentum", "muon_weight_decay", "muon_ns_steps", "muon_adjust_lr_fn",
    "grad_clip", "scheduler_type", "scheduler_warmup_steps", "scheduler_total_steps", "scheduler_num_cosine_cycles",
    "epochs", "max_steps", "loss", "ttt_step_loss_decay", "dflash_decay_gamma", "noise_std", "ttt_tokens",
    "hidden_states_dtype", "down_sample_ratio", "down_sample_ratio_min",
})


def resume_changes(old: RunConfig, new: RunConfig) -> tuple[list[str], list[str]]:
    """(refused, warned) changes from the run's saved settings, each ``--flag old -> new``."""
    flags = {f.name: flag_name(f) for cls in GROUPS.values() for f in dataclasses.fields(cls)}
    before, after = old.flat(), new.flat()
    refused, warned = [], []
    for name, value in after.items():
        if name in RESUME_FREE or before.get(name) == value:
            continue
        (warned if name in RESUME_WARN else refused).append(f"{flags[name]} {before.get(name)} -> {value}")
    return refused, warned


def field_index() -> dict[str, str]:
    """Field name -> group name (field names are unique across groups)."""
    return {f.name: group for group, cls in GROUPS.items() for f in dataclasses.fields(cls)}


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")
