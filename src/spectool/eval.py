"""Acceptance you can trust: greedy speculative decoding with the verifier in-process.

Each cycle the draft proposes a chain of K tokens after the committed tokens x_0..x_n
(given the verifier's aux hidden states of x_0..x_{n-1}); the verifier checks the chain in
one forward over [x_n, d_1..d_K]; the longest prefix of d that equals the verifier's greedy
tokens is accepted and the verifier's own next token (the bonus) is appended. The aux
states of the accepted positions come from that same forward, as in vLLM, so every cycle
costs exactly one verifier forward.

Convention (stated in every report): **acceptance length = tokens committed per verifier
step, the bonus token included** (vLLM's ``1 + accepted / drafts``). The prefill forward,
which commits the first new token without a draft, is not a step.

Speculative greedy decoding is lossless, so the output must equal plain greedy decoding of
the verifier; :func:`evaluate` checks it and raises :class:`LosslessError` with the first
differing position otherwise. A divergence at a position where the verifier's top-2 logits
are within ``tie_tolerance`` is a floating-point tie (chunked vs one-token forwards round
differently), counted and reported, not an error.

Also: the simulated acceptance length from held-out accuracies (1 + sum_k full_acc_k) and
the measurement of a vLLM server's acceptance from its Prometheus counters.

No typer/rich here; torch and transformers are imported inside functions.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spectool.errors import SpectoolError

CONVENTION = (
    "acceptance length = 1 + accepted draft tokens per drafting verifier step (the bonus token included; "
    "vLLM's 1 + accepted/drafts; tokens accepted past an end-of-sequence count, as in vLLM)"
)
SIMULATED_CONVENTION = "simulated acceptance length = 1 + sum_k P(first k+1 drafted tokens all match), from held-out accuracies"
DEFAULT_TIE_TOLERANCE = 1e-3

# proposer(aux [n, A*H] of x_0..x_{n-1}, tokens [n+1] = x_0..x_n, k) -> up to k target ids
Proposer = Callable[[Any, Any, int], Any]


class EvalError(SpectoolError):
    """Evaluation input or state is wrong (prompts, draft/verifier mismatch, server)."""


class LosslessError(EvalError):
    """Speculative decoding produced a different output than plain greedy decoding."""


# --------------------------------------------------------------------------- results


@dataclass
class PromptTrace:
    """One prompt's speculative run."""

    new_tokens: list[int]
    steps: int = 0
    committed_in_steps: int = 0
    accepted_per_step: list[int] = field(default_factory=list)
    drafted_per_step: list[int] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)  # verifier top1-top2 logit gap per new token


@dataclass
class EvalReport:
    convention: str
    num_prompts: int
    num_speculative_tokens: int
    steps: int
    committed_in_steps: int
    new_tokens: int
    acceptance_length: float
    committed_per_step: float  # output tokens per verifier step (cut at end-of-sequence and the token limit)
    per_position_acceptance: list[float]  # accepted at position j / steps that drafted position j
    accepted_histogram: list[int]  # steps that accepted exactly a draft tokens, a = 0..K
    lossless_checked: bool
    near_ties: int  # prompts whose comparison stopped at a floating-point tie
    spec_seconds: float
    greedy_seconds: float | None
    simulated: dict | None = None
    verifier: str = ""
    draft: str = ""
    speculator_type: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(traces: Sequence[PromptTrace], k: int) -> dict:
    steps = sum(t.steps for t in traces)
    committed = sum(t.committed_in_steps for t in traces)
    drafted = [0] * k
    accepted = [0] * k
    hist = [0] * (k + 1)
    drafting_steps = accepted_tokens = 0
    for t in traces:
        for a, d in zip(t.accepted_per_step, t.drafted_per_step):
            hist[a] += 1
            drafting_steps += d > 0
            accepted_tokens += a
            for j in range(d):
                drafted[j] += 1
                accepted[j] += int(j < a)
    return {
        "steps": steps,
        "committed_in_steps": committed,
        "new_tokens": sum(len(t.new_tokens) for t in traces),
        "acceptance_length": 1 + accepted_tokens / drafting_steps if drafting_steps else float("nan"),
        "committed_per_step": committed / steps if steps else float("nan"),
        "per_position_acceptance": [a / d if d else float("nan") for a, d in zip(accepted, drafted)],
        "accepted_histogram": hist,
    }


# --------------------------------------------------------------------------- verifier


def load_verifier(name_or_path: str, trust_remote_code: bool = False):
    """(model in float32 eval mode, tokenizer); local directories or cached ids only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise EvalError(f"cannot load the verifier {name_or_path}: {str(exc).splitlines()[0]}: check --verifier-name-or-path") from None
    model.eval()
    return model, tokenizer


def _num_layers(model) -> int:
    config = model.config
    config = getattr(config, "text_config", None) or config
    return int(config.num_hidden_layers)


class VerifierRunner:
    """The verifier's forwards over a growing sequence, with or without a KV cache.

    ``extend(tokens)`` appends tokens and returns (aux [m, A*H], logits [m, V]) of those m
    new positions; ``truncate(n)`` forgets everything from position n on.
    """

    def __init__(self, model, aux_layer_ids: Sequence[int], use_cache: bool = True):
        layers = _num_layers(model)
        bad = [k for k in aux_layer_ids if not 0 <= k < layers]
        if bad:
            raise EvalError(f"aux layer ids {bad} do not fit the verifier ({layers} layers): use the draft made for this verifier")
        self.model = model
        self.aux_ids = list(aux_layer_ids)
        self.use_cache = use_cache
        self.tokens: list[int] = []
        self.cache = None
        import inspect

        # transformers >= 5.2x names it ``cache`` (``past_key_values`` deprecated); 4.x only knows the latter.
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @property
    def device(self):
        return next(self.model.parameters()).device

    def reset(self) -> None:
        self.tokens, self.cache = [], None

    def truncate(self, n: int) -> None:
        self.tokens = self.tokens[:n]
        if self.cache is not None:
            excess = self.cache.get_seq_length() - n
            if excess > 0:
                self.cache.crop(-excess)

    def extend(self, new: Sequence[int]):
        import torch

        new = list(new)
        start = len(self.tokens)
        self.tokens += new
        m = len(new)
        with torch.no_grad():
            if self.use_cache:
                if self.cache is None:
                    from transformers import DynamicCache

                    self.cache = DynamicCache(config=self.model.config)
                ids = torch.tensor([new], device=self.device)
                positions = torch.arange(start, start + m, device=self.device)[None]
                out = self.model(input_ids=ids, position_ids=positions, use_cache=True, output_hidden_states=True, **{self._cache_kw: self.cache})
                hs, logits = out.hidden_states, out.logits[0]
            else:
                ids = torch.tensor([self.tokens], device=self.device)
                out = self.model(input_ids=ids, output_hidden_states=True, logits_to_keep=m)
                hs, logits = [h[:, -m:] for h in out.hidden_states], out.logits[0]
        aux = torch.cat([hs[k][0] for k in self.aux_ids], dim=-1).float()
        return aux, logits.float()


def _greedy_and_margin(logits):
    top = logits.topk(2, dim=-1)
    return top.indices[:, 0].tolist(), (top.values[:, 0] - top.values[:, 1]).tolist()


# --------------------------------------------------------------------------- decoding


def speculative_generate(
    runner: VerifierRunner,
    prompt_ids: Sequence[int],
    proposer: Proposer,
    num_speculative_tokens: int,
    max_new_tokens: int,
    eos_token_ids: Sequence[int] = (),
) -> PromptTrace:
    """Greedy speculative decoding of one prompt (see the module docstring)."""
    import torch

    if not prompt_ids:
        raise EvalError("empty prompt: every prompt needs at least one token")
    eos = set(eos_token_ids)
    runner.reset()
    aux, logits = runner.extend(prompt_ids)  # prefill: aux of x_0..x_{n-1}, first new token
    greedy, margin = _greedy_and_margin(logits[-1:])
    trace = PromptTrace(new_tokens=[greedy[0]], margins=[margin[0]])
    aux_rows = [aux]
    tokens = list(prompt_ids) + greedy  # x_0..x_n; x_n not yet seen by the verifier
    while len(trace.new_tokens) < max_new_tokens and trace.new_tokens[-1] not in eos:
        remaining = max_new_tokens - len(trace.new_tokens)
        k = min(num_speculative_tokens, remaining - 1)
        draft: list[int] = []
        if k > 0:
            all_aux = torch.cat(aux_rows) if len(aux_rows) > 1 else aux_rows[0]
            aux_rows = [all_aux]
            proposal = proposer(all_aux, torch.tensor(tokens, device=all_aux.device), k)
            draft = [int(t) for t in torch.as_tensor(proposal).flatten().tolist()][:k]
        n = len(tokens) - 1
        aux, logits = runner.extend([tokens[-1]] + draft)  # one verifier forward: x_n, d_1..d_k
        greedy, margin = _greedy_and_margin(logits)
        accepted = 0
        while accepted < len(draft) and draft[accepted] == greedy[accepted]:
            accepted += 1
        commit = draft[:accepted] + [greedy[accepted]]
        margins = margin[: accepted + 1]
        # Stop at the first end-of-sequence token inside the committed run.
        for i, t in enumerate(commit):
            if t in eos:
                commit, margins = commit[: i + 1], margins[: i + 1]
                break
        trace.steps += 1
        trace.committed_in_steps += len(commit)
        trace.accepted_per_step.append(accepted)
        trace.drafted_per_step.append(len(draft))
        trace.new_tokens += commit
        trace.margins += margins
        # Positions n..n+accepted are valid verifier states; the rest belonged to rejected drafts.
        aux_rows.append(aux[: accepted + 1])
        runner.truncate(n + accepted + 1)
        tokens += commit
    return trace


def greedy_generate(runner: VerifierRunner, prompt_ids: Sequence[int], max_new_tokens: int, eos_token_ids: Sequence[int] = ()) -> PromptTrace:
    """Plain greedy decoding of the verifier, one token per forward (the reference)."""
    eos = set(eos_token_ids)
    runner.reset()
    _, logits = runner.extend(prompt_ids)
    out, margins = [], []
    while True:
        greedy, margin = _greedy_and_margin(logits[-1:])
        out.append(greedy[0])
        margins.append(margin[0])
        if len(out) >= max_new_tokens or greedy[0] in eos:
            return PromptTrace(new_tokens=out, margins=margins)
        _, logits = runner.extend(greedy)


def compare_with_greedy(spec: PromptTrace, ref: PromptTrace, tie_tolerance: float, where: str) -> bool:
    """True if equal; False if they part at a floating-point tie; LosslessError otherwise."""
    a, b = spec.new_tokens, ref.new_tokens
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            gap = min(spec.margins[i], ref.margins[i])
            if gap <= tie_tolerance:
                return False
            raise LosslessError(
                f"{where}: speculative output differs from plain greedy decoding at new token {i}: "
                f"{x} vs {y} (verifier top-2 logit gap {gap:.3g}, not a tie): the eval loop or the verifier forward is wrong"
            )
    if len(a) != len(b):
        i = min(len(a), len(b))
        raise LosslessError(
            f"{where}: speculative output has {len(a)} new tokens, plain greedy {len(b)}; they part at new token {i}"
        )
    return True


# --------------------------------------------------------------------------- prompts


def read_prompts(path: str | Path, limit: int | None = None) -> list[list[dict]]:
    """Each chat's turns before its first assistant turn (system + user), in input order."""
    from spectool.data.chat.read import read_chat_file

    convs, _ = read_chat_file(path)
    prompts = []
    for conv in convs:
        turns = []
        for turn in conv.turns:
            if turn["role"] == "assistant":
                break
            turns.append({"role": turn["role"], "content": turn["content"]})
        if not any(t["role"] == "user" for t in turns):
            raise EvalError(f"{conv.where}: no user turn before the first assistant turn: every prompt needs one")
        prompts.append(turns)
        if limit is not None and len(prompts) >= limit:
            break
    if not prompts:
        raise EvalError(f"{path}: no prompts")
    return prompts


def render_prompts(tokenizer, prompts: Sequence[list[dict]]) -> list[list[int]]:
    if not getattr(tokenizer, "chat_template", None):
        raise EvalError("the verifier's tokenizer has no chat template: use its chat/instruct checkpoint")
    out = []
    for turns in prompts:
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return out


def eos_ids(tokenizer, model) -> list[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


# --------------------------------------------------------------------------- the evaluation


def draft_proposer(draft) -> Proposer:
    """The proposer of a loaded EAGLE-3 / DFlash draft (its greedy chain / block)."""

    def propose(aux, tokens, k):
        return draft.propose(aux.to(draft.lm_head.weight.dtype), tokens, k)

    return propose


def default_num_tokens(spec_config, override: int | None) -> int:
    if spec_config.speculator_type == "dflash":
        limit = spec_config.block_size - 1
        if override is not None and not 1 <= override <= limit:
            raise EvalError(f"--num-speculative-tokens {override}: a DFlash draft with block size {spec_config.block_size} proposes 1..{limit} tokens")
        return override or limit
    if override is not None and override < 1:
        raise EvalError("--num-speculative-tokens must be >= 1")
    return override or spec_config.ttt_steps


def evaluate_prompts(
    model,
    prompt_ids: Sequence[Sequence[int]],
    proposer: Proposer,
    aux_layer_ids: Sequence[int],
    num_speculative_tokens: int,
    max_new_tokens: int,
    eos_token_ids: Sequence[int] = (),
    *,
    check_lossless: bool = True,
    use_cache: bool = True,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[EvalReport, list[PromptTrace]]:
    """Run speculative decoding on every prompt (and the greedy reference when checking)."""
    if max_new_tokens < 1:
        raise EvalError("--max-new-tokens must be >= 1")
    runner = VerifierRunner(model, aux_layer_ids, use_cache=use_cache)
    traces: list[PromptTrace] = []
    spec_s, greedy_s, ties = 0.0, 0.0, 0
    for i, ids in enumerate(prompt_ids):
        t0 = time.perf_counter()
        trace = speculative_generate(runner, ids, proposer, num_speculative_tokens, max_new_tokens, eos_token_ids)
        spec_s += time.perf_counter() - t0
        if check_lossless:
            t0 = time.perf_counter()
            ref = greedy_generate(runner, ids, max_new_tokens, eos_token_ids)
            greedy_s += time.perf_counter() - t0
            ties += not compare_with_greedy(trace, ref, tie_tolerance, f"prompt {i}")
        traces.append(trace)
        if progress:
            progress(i + 1, len(prompt_ids))
    s = summarize(traces, num_speculative_tokens)
    report = EvalReport(
        convention=CONVENTION,
        num_prompts=len(traces),
        num_speculative_tokens=num_speculative_tokens,
        lossless_checked=check_lossless,
        near_ties=ties,
        spec_seconds=spec_s,
        greedy_seconds=greedy_s if check_lossless else None,
        **s,
    )
    return report, traces


def evaluate(
    draft_dir: str | Path,
    verifier_name_or_path: str,
    data: str | Path,
    *,
    limit: int | None = None,
    max_new_tokens: int = 128,
    num_speculative_tokens: int | None = None,
    check_lossless: bool = True,
    use_cache: bool = True,
    simulated_data: str | Path | None = None,
    trust_remote_code: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """``spectool eval``: load draft and verifier, decode the prompts, report acceptance."""
    import torch

    from spectool.models import load_draft, read_config

    spec = read_config(draft_dir)
    k = default_num_tokens(spec, num_speculative_tokens)
    model, tokenizer = load_verifier(verifier_name_or_path, trust_remote_code)
    vocab = model.get_input_embeddings().weight.shape[0]
    if vocab != spec.vocab_size:
        raise EvalError(f"the draft was made for a vocabulary of {spec.vocab_size}, the verifier has {vocab}: use the draft's verifier")
    draft = load_draft(draft_dir, spec)
    draft.eval()
    prompts = render_prompts(tokenizer, read_prompts(data, limit))
    with torch.no_grad():
        report, _ = evaluate_prompts(
            model,
            prompts,
            draft_proposer(draft),
            spec.aux_layer_ids,
            k,
            max_new_tokens,
            eos_ids(tokenizer, model),
            check_lossless=check_lossless,
            use_cache=use_cache,
            progress=progress,
        )
    report.verifier, report.draft, report.speculator_type = str(verifier_name_or_path), str(draft_dir), spec.speculator_type
    if simulated_data is not None:
        report.simulated = simulated_acceptance(draft_dir, simulated_data, verifier_name_or_path)
    return report


# --------------------------------------------------------------------------- simulated AL


def simulated_acceptance(
    draft_dir: str | Path,
    data_dir: str | Path,
    verifier_name_or_path: str | None = None,
    *,
    val_ratio: float = 0.05,
    total_seq_len: int = 8192,
    max_anchors: int = 256,
    seed: int = 0,
) -> dict:
    """Held-out simulated acceptance length of a draft on a processed data dir whose hidden
    states are cached (``DATA/hidden_states``; missing files are skipped, never generated).

    Reuses the training engine's validation pieces: the same split (the tail ``val_ratio``),
    packed loader, ``forward_train`` metrics (full_acc_k) and ``with_acceptance``
    (1 + sum_k full_acc_k), so the number is the one ``spectool train`` logs."""
    import torch

    from spectool.config import RunConfig
    from spectool.data.dataset import ProcessedDataset
    from spectool.data.hidden_states.factory import build_source
    from spectool.data.loader import PackedLoader
    from spectool.engine.distributed import DistEnv
    from spectool.engine.metrics import MetricSum
    from spectool.models import load_draft, read_config
    from spectool.models.eagle3 import shift_sample
    from spectool.verifier import load_verifier_info, read_verifier_tensors

    spec = read_config(draft_dir)
    verifier = verifier_name_or_path or spec.verifier_name_or_path
    cfg = RunConfig()
    cfg.model.verifier_name_or_path = verifier
    cfg.data.data_path = str(data_dir)
    cfg.data.on_missing = "skip"
    cfg.data.total_seq_len = total_seq_len
    dataset = ProcessedDataset(Path(data_dir))
    _, val_idx = dataset.split(val_ratio)
    if not val_idx:
        raise EvalError(f"{data_dir}: no held-out samples (val ratio {val_ratio}): use a larger dataset")
    draft = load_draft(draft_dir, spec)
    draft.attach_verifier(read_verifier_tensors(load_verifier_info(verifier)), copy_embed_and_head=False)
    draft.eval()
    source = build_source(cfg, dataset, aux_layer_ids=spec.aux_layer_ids)
    loader = PackedLoader(
        dataset, val_idx, lambda: source, total_seq_len, seed=seed,
        sample_transform=shift_sample if spec.speculator_type == "eagle3" else None,
        noise_std=0.0, num_workers=0, dtype=torch.float32,
    )
    acc = MetricSum()
    batches = 0
    with torch.no_grad():
        for b, batch in enumerate(loader.iterate(0)):
            if spec.speculator_type == "eagle3":
                _, metrics = draft.forward_train(batch, ttt_steps=spec.ttt_steps)
            else:
                gen = torch.Generator().manual_seed(seed + b)
                _, metrics = draft.forward_train(batch, block_size=spec.block_size, max_anchors=max_anchors, generator=gen)
            acc.add(metrics)
            batches += 1
    if not batches:
        raise EvalError(f"{data_dir}: none of the {len(val_idx)} held-out samples has cached hidden states: generate them first")
    values = acc.values(DistEnv())
    full = [values[f"full_acc_{k}"] for k in range(len([k for k in values if k.startswith("full_acc_")]))]
    return {
        "convention": SIMULATED_CONVENTION,
        "acceptance_length": values["acceptance_length"],
        "full_acc": full,
        "held_out_samples": len(val_idx),
        "batches": batches,
    }


# --------------------------------------------------------------------------- vLLM server


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfINFaN]+)(\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
SPEC_COUNTERS = ("num_drafts", "num_draft_tokens", "num_accepted_tokens")


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            labels = dict(_LABEL.findall(m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def spec_decode_counters(text: str) -> dict[str, float]:
    """Sum of vLLM's spec-decode counters over label sets (engines, models); per-position
    accepted tokens as ``accepted_pos_{i}``."""
    totals: dict[str, float] = {}
    for name, labels, value in parse_prometheus(text):
        if not name.startswith("vllm:spec_decode_") or not name.endswith("_total"):
            continue
        base = name[len("vllm:spec_decode_") : -len("_total")]
        if "position" in labels:
            key = f"accepted_pos_{int(labels['position'])}" if "per_pos" in base else None
            if key is None:
                continue
        elif base in SPEC_COUNTERS:
            key = base
        else:
            continue
        totals[key] = totals.get(key, 0.0) + value
    return totals


def _http(url: str, payload: dict | None = None, timeout: float = 600.0) -> bytes:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()
    except urllib.error.HTTPError as exc:
        raise EvalError(f"{url}: HTTP {exc.code} {exc.read()[:300]!r}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise EvalError(f"{url}: cannot connect ({getattr(exc, 'reason', exc)}): is the vLLM server up?") from None


def _base(endpoint: str) -> tuple[str, str]:
    """(API base with /v1, server root for /metrics)."""
    endpoint = endpoint.rstrip("/")
    root = endpoint[: -len("/v1")] if endpoint.endswith("/v1") else endpoint
    return root + "/v1", root


def _served_model(api: str) -> str:
    models = json.loads(_http(f"{api}/models", timeout=30))
    data = models.get("data") or []
    if not data:
        raise EvalError(f"{api}/models lists no model")
    return data[0]["id"]


def run_completions(endpoint: str, prompts: Sequence[list[dict]], max_new_tokens: int, model: str | None = None) -> dict:
    """Greedy chat completions one at a time (the server applies its chat template); tokens,
    prompt lengths (to compare with the in-process rendering) and wall time."""
    api, _ = _base(endpoint)
    model = model or _served_model(api)
    tokens, prompt_tokens, finish, t0 = 0, [], {}, time.perf_counter()
    for turns in prompts:
        reply = json.loads(
            _http(f"{api}/chat/completions", {"model": model, "messages": turns, "max_tokens": max_new_tokens, "temperature": 0.0})
        )
        usage = reply.get("usage") or {}
        tokens += int(usage.get("completion_tokens", 0))
        prompt_tokens.append(int(usage.get("prompt_tokens", 0)))
        reason = str((reply.get("choices") or [{}])[0].get("finish_reason"))
        finish[reason] = finish.get(reason, 0) + 1
    seconds = time.perf_counter() - t0
    return {
        "model": model,
        "completion_tokens": tokens,
        "prompt_tokens": prompt_tokens,
        "finish_reasons": finish,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds else math.nan,
    }


def settled_counters(root: str, wait: float = 0.25, timeout: float = 10.0) -> dict[str, float]:
    """Spec-decode counters once two reads ``wait`` s apart agree (the server may record a
    finished request's last step just after its reply was sent), at most ``timeout`` s."""
    current = spec_decode_counters(_http(f"{root}/metrics", timeout=30).decode())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(wait)
        again = spec_decode_counters(_http(f"{root}/metrics", timeout=30).decode())
        if again == current:
            break
        current = again
    return current


def vllm_acceptance(
    endpoint: str,
    prompts: Sequence[list[dict]],
    max_new_tokens: int,
    baseline_endpoint: str | None = None,
) -> dict:
    """Acceptance of a vLLM server that serves the draft: Prometheus counters diffed around
    a run of greedy completions. AL = 1 + accepted/drafts; per position accepted_i/drafts."""
    _, root = _base(endpoint)
    before = settled_counters(root)
    run = run_completions(endpoint, prompts, max_new_tokens)
    after = settled_counters(root)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    drafts = delta.get("num_drafts", 0.0)
    if drafts <= 0:
        raise EvalError(f"{root}/metrics: no speculative drafts were counted (vllm:spec_decode_num_drafts_total did not grow): does the server serve a draft?")
    positions = sorted(int(k.rsplit("_", 1)[1]) for k in delta if k.startswith("accepted_pos_"))
    out = {
        "convention": CONVENTION,
        "endpoint": endpoint,
        "num_prompts": len(prompts),
        "drafts": drafts,
        "draft_tokens": delta.get("num_draft_tokens", 0.0),
        "accepted_tokens": delta.get("num_accepted_tokens", 0.0),
        "acceptance_length": 1.0 + delta.get("num_accepted_tokens", 0.0) / drafts,
        "per_position_acceptance": [delta[f"accepted_pos_{i}"] / drafts for i in positions],
        "spec": run,
    }
    if baseline_endpoint:
        base = run_completions(baseline_endpoint, prompts, max_new_tokens)
        out["baseline"] = base
        out["speedup"] = run["tokens_per_s"] / base["tokens_per_s"] if base["tokens_per_s"] else math.nan
    return out
