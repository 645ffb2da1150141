"""Run vLLM's offline API once and print a JSON summary (run it with the vLLM venv's python).

    python tests/vllm_offline_generate.py SPEC.json

SPEC: {"model": ..., "llm_kwargs": {...}, "prompts": [[token ids], ...], "max_tokens": N}.
Greedy generation; the summary (last stdout line, prefixed ``RESULT ``) holds the output
token ids and every counter/gauge of ``llm.get_metrics()`` by name (``_total`` stripped),
vectors as lists. Used by tests that serve drafts (see tests/vllm_server.py).
"""

from __future__ import annotations

import json
import sys


def main(spec_path: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    spec = json.loads(open(spec_path).read())
    kwargs = {"enforce_eager": True, "disable_log_stats": False, "seed": 0, **spec.get("llm_kwargs", {})}
    llm = LLM(model=spec["model"], **kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=spec.get("max_tokens", 16), ignore_eos=True)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in spec["prompts"]], params, use_tqdm=False)
    metrics: dict[str, object] = {}
    for metric in llm.get_metrics():
        name = metric.name.removesuffix("_total")
        if hasattr(metric, "values"):
            metrics[name] = list(metric.values)
        elif hasattr(metric, "value"):
            metrics[name] = metrics.get(name, 0) + metric.value
    result = {"outputs": [list(o.outputs[0].token_ids) for o in outputs], "metrics": metrics}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":  # vLLM starts worker processes: keep module import side-effect free
    main(sys.argv[1])
