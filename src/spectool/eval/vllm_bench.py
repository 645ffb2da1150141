"""Acceptance of a running vLLM server that serves the draft: its spec-decode counters diffed
around a run of greedy chat completions (stdlib HTTP only)."""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from spectool.eval.prometheus import spec_decode_counters
from spectool.eval.report import CONVENTION, EvalError


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
