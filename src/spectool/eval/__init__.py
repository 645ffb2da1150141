"""``spectool eval``: acceptance you can trust, by owner.

- :mod:`.speculative`  in-process lossless greedy speculative decoding (the verifier loaded here)
- :mod:`.simulated`    simulated acceptance from held-out accuracies (the trainer's validation)
- :mod:`.vllm_bench`   a vLLM server's acceptance from its Prometheus counters
- :mod:`.prometheus`   the Prometheus text parser; :mod:`.prompts` the prompts; :mod:`.report` results

Importing this package loads neither torch nor transformers.
"""

from spectool.eval.prometheus import parse_prometheus, spec_decode_counters
from spectool.eval.prompts import read_prompts, render_prompts
from spectool.eval.report import (
    CONVENTION,
    SIMULATED_CONVENTION,
    EvalError,
    EvalReport,
    LosslessError,
    PromptTrace,
    summarize,
)
from spectool.eval.simulated import simulated_acceptance
from spectool.eval.speculative import (
    VerifierRunner,
    compare_with_greedy,
    default_num_tokens,
    eos_ids,
    evaluate,
    evaluate_prompts,
    greedy_generate,
    load_verifier,
    speculative_generate,
)
from spectool.eval.vllm_bench import run_completions, settled_counters, vllm_acceptance

__all__ = [
    "CONVENTION",
    "SIMULATED_CONVENTION",
    "EvalError",
    "EvalReport",
    "LosslessError",
    "PromptTrace",
    "VerifierRunner",
    "compare_with_greedy",
    "default_num_tokens",
    "eos_ids",
    "evaluate",
    "evaluate_prompts",
    "greedy_generate",
    "load_verifier",
    "parse_prometheus",
    "read_prompts",
    "render_prompts",
    "run_completions",
    "settled_counters",
    "simulated_acceptance",
    "spec_decode_counters",
    "speculative_generate",
    "summarize",
    "vllm_acceptance",
]
