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

The simulated acceptance length is in :mod:`spectool.eval.simulated`, a vLLM server's
acceptance in :mod:`spectool.eval.vllm_bench`. No typer/rich here; torch and transformers
are imported inside functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from spectool.eval.prompts import read_prompts, render_prompts
from spectool.eval.report import (
    CONVENTION,
    DEFAULT_TIE_TOLERANCE,
    EvalError,
    EvalReport,
    LosslessError,
    PromptTrace,
    summarize,
)
from spectool.eval.simulated import simulated_acceptance

if TYPE_CHECKING:
    from spectool.models.plugin import Proposer


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
        from spectool.layer_ids import LayerIdError, check_layer_ids

        try:
            check_layer_ids(aux_layer_ids, _num_layers(model))
        except LayerIdError as exc:
            raise EvalError(f"the draft's aux layer ids do not fit this verifier ({exc}): use the draft made for this verifier") from None
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


def default_num_tokens(spec_config, override: int | None) -> int:
    """The checkpoint's own proposal length unless ``override`` (within what the algorithm proposes)."""
    from spectool.models import plugin_for

    limit = plugin_for(spec_config).max_speculative_tokens(spec_config)
    if override is not None and override < 1:
        raise EvalError("--num-speculative-tokens must be >= 1")
    if override is not None and limit is not None and override > limit:
        raise EvalError(f"--num-speculative-tokens {override}: this {spec_config.speculator_type} draft proposes at most {limit} tokens per step")
    return override or spec_config.speculative_tokens


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

    from spectool.models import load_draft, plugin_for, read_config

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
            plugin_for(spec).proposer(draft),
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
