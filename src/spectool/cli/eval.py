"""``spectool eval``: acceptance length of a draft, measured by lossless greedy speculative
decoding with the verifier in-process (or read from a vLLM server's counters)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from spectool.cli.common import console, err_console, fail


def eval_command(
    draft: Path = typer.Argument(..., metavar="DRAFT", help="Draft checkpoint directory (config.json + model.safetensors)."),
    verifier_name_or_path: Optional[str] = typer.Option(
        None, "--verifier-name-or-path", help="Verifier model id or local dir (its chat template renders the prompts). Required unless --vllm-endpoint."
    ),
    data: Path = typer.Option(..., "--data", help="Prompts: chat jsonl (conversations/messages; role/content or from/value); turns before the first assistant turn are the prompt."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N prompts."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="New tokens per prompt (greedy)."),
    num_speculative_tokens: Optional[int] = typer.Option(
        None, "--num-speculative-tokens", help="Tokens drafted per step (default: ttt_steps for EAGLE-3, block_size-1 for DFlash)."
    ),
    no_check: bool = typer.Option(False, "--no-check", help="Skip the comparison with plain greedy decoding (halves the time)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute the verifier over the whole sequence each step (no KV cache)."),
    simulated_data: Optional[Path] = typer.Option(
        None, "--simulated-data", help="Processed data dir with hidden states: also report the simulated acceptance length on its held-out split."
    ),
    vllm_endpoint: Optional[str] = typer.Option(
        None, "--vllm-endpoint", help="Measure a vLLM server that serves DRAFT instead (Prometheus counters at /metrics around greedy completions)."
    ),
    baseline_endpoint: Optional[str] = typer.Option(None, "--baseline-endpoint", help="With --vllm-endpoint: a server without speculation, for the tokens/s ratio."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the verifier's repository code to run."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Measure a draft's acceptance length (1 + accepted drafts per verifier step, vLLM's definition), checked lossless."""
    from spectool.model_source import check_model_source

    if not draft.is_dir():
        fail(f"{draft}: no such directory (DRAFT is a checkpoint directory)")
    if not data.exists():
        fail(f"--data {data}: no such file or directory")
    if verifier_name_or_path and not vllm_endpoint:
        check_model_source(verifier_name_or_path)
    from spectool.cli.train import quiet_third_party

    quiet_third_party()
    from spectool.eval import evaluate, read_prompts, vllm_acceptance

    if vllm_endpoint:
        result = vllm_acceptance(vllm_endpoint, read_prompts(data, limit), max_new_tokens, baseline_endpoint)
        if as_json:
            console.print_json(json.dumps(result))
        else:
            _render_vllm(result)
        return
    if not verifier_name_or_path:
        fail("--verifier-name-or-path is required (unless --vllm-endpoint)")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("decoding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err_console.get(), transient=True, disable=as_json) as bar:
        task = bar.add_task("eval", total=limit)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = evaluate(
            draft,
            verifier_name_or_path,
            data,
            limit=limit,
            max_new_tokens=max_new_tokens,
            num_speculative_tokens=num_speculative_tokens,
            check_lossless=not no_check,
            use_cache=not no_cache,
            simulated_data=simulated_data,
            trust_remote_code=trust_remote_code,
            progress=progress,
        )
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
        return
    _render(report)


def _render(r) -> None:
    from rich.table import Table

    t = Table(title=f"{r.speculator_type} draft {r.draft}", show_header=False)
    t.add_row("acceptance length", f"[bold]{r.acceptance_length:.3f}[/]")
    t.add_row("convention", r.convention)
    t.add_row("output tokens per verifier step", f"{r.committed_per_step:.3f} (cut at end-of-sequence and --max-new-tokens)")
    t.add_row("prompts / new tokens / verifier steps", f"{r.num_prompts} / {r.new_tokens} / {r.steps}")
    t.add_row("speculative tokens per step", str(r.num_speculative_tokens))
    for j, rate in enumerate(r.per_position_acceptance):
        t.add_row(f"acceptance at position {j}", f"{rate:.3f}")
    t.add_row("accepted draft tokens per step (0..K)", " ".join(str(n) for n in r.accepted_histogram))
    if r.lossless_checked:
        ties = f" ({r.near_ties} prompt(s) parted at a floating-point tie)" if r.near_ties else ""
        t.add_row("lossless", f"[green]output equals plain greedy decoding[/]{ties}")
    else:
        t.add_row("lossless", "not checked (--no-check)")
    t.add_row("time", f"speculative {r.spec_seconds:.1f}s" + (f", greedy reference {r.greedy_seconds:.1f}s" if r.greedy_seconds is not None else ""))
    if r.simulated:
        t.add_row("simulated acceptance length (held-out)", f"{r.simulated['acceptance_length']:.3f}")
    console.print(t)


def _render_vllm(r: dict) -> None:
    from rich.table import Table

    t = Table(title=f"vLLM {r['endpoint']}", show_header=False)
    t.add_row("acceptance length", f"[bold]{r['acceptance_length']:.3f}[/]")
    t.add_row("convention", r["convention"])
    t.add_row("drafts / draft tokens / accepted", f"{r['drafts']:.0f} / {r['draft_tokens']:.0f} / {r['accepted_tokens']:.0f}")
    for j, rate in enumerate(r["per_position_acceptance"]):
        t.add_row(f"acceptance at position {j}", f"{rate:.3f}")
    t.add_row("speculative tokens/s", f"{r['spec']['tokens_per_s']:.1f}")
    if "baseline" in r:
        t.add_row("baseline tokens/s", f"{r['baseline']['tokens_per_s']:.1f}")
        t.add_row("speed-up", f"{r['speedup']:.2f}x")
    console.print(t)
