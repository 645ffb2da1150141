"""What ``spectool eval`` reports, and the acceptance-length convention it states."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from spectool.errors import SpectoolError

CONVENTION = (
    "acceptance length = 1 + accepted draft tokens per drafting verifier step (the bonus token included; "
    "vLLM's 1 + accepted/drafts; tokens accepted past an end-of-sequence count, as in vLLM)"
)
SIMULATED_CONVENTION = "simulated acceptance length = 1 + sum_k P(first k+1 drafted tokens all match), from held-out accuracies"
DEFAULT_TIE_TOLERANCE = 1e-3

class EvalError(SpectoolError):
    """Evaluation input or state is wrong (prompts, draft/verifier mismatch, server)."""


class LosslessError(EvalError):
    """Speculative decoding produced a different output than plain greedy decoding."""


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
