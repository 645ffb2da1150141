"""``spectool vllm``: start vLLM for hidden-state extraction."""

from __future__ import annotations

from typing import Optional

import typer

from spectool.cli.common import console
from spectool.cli.help import Command, typer_app

vllm_app = typer_app("Run vLLM as the verifier's hidden-state server.")


def _parse_layer_ids(values: list[str] | None, extra: list[str]) -> tuple[list[int] | None, list[str]]:
    """``--target-layer-ids`` values, in any of the forms ``2 4 5``, ``2,4,5`` or repeated.

    ``--target-layer-ids 2 4 5`` leaves ``4 5`` among the positional vLLM args; vLLM's
    server takes no positional arguments, so leading integers there belong to the ids.
    """
    if not values:
        return None, extra
    tokens = [t for v in values for t in v.replace(",", " ").split()]
    rest = list(extra)
    while rest and rest[0].lstrip("-").isdigit() and not rest[0].startswith("-"):
        tokens.append(rest.pop(0))
    from spectool.layer_ids import parse_layer_ids

    return parse_layer_ids(tokens), rest


@vllm_app.command(
    "launch",
    cls=Command,
    context_settings={"help_option_names": ["-h", "--help"]},
)
def launch(
    model: str = typer.Argument(..., metavar="MODEL", help="Verifier: a local model directory (or a cached hub id)."),
    vllm_args: Optional[list[str]] = typer.Argument(
        None, metavar="[-- VLLM_ARGS...]", help="Passed to vLLM unchanged (after --), e.g. -- --port 8000.", show_default=False
    ),
    hidden_states_path: str = typer.Option(
        "/tmp/hidden_states", "--hidden-states-path", help="Directory vLLM writes {request_id}.safetensors into."
    ),
    target_layer_ids: Optional[list[str]] = typer.Option(
        None,
        "--target-layer-ids",
        help="Aux layer ids to capture (vLLM convention), e.g. 2 4 5; L is appended. Default [2, L//2, L-3].",
        show_default=False,
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda. cpu uses spectool's CPU-safe connector."),
    vllm_python: Optional[str] = typer.Option(
        None,
        "--vllm-python",
        help="Python that has vLLM. Default: $SPECTOOL_VLLM_PYTHON, <repo>/.vllm-venv/bin/python, python.",
        show_default=False,
    ),
    print_only: bool = typer.Option(False, "--print-only", help="Print the command (shell-quoted) instead of running it."),
) -> None:
    """Start a vLLM server that writes the verifier's hidden states for each completion request.

    Clients send POST /v1/completions with token ids as prompt, max_tokens 1 and
    return_token_ids true; the reply's kv_transfer_params.hidden_states_path names the file.
    """
    from spectool.vllm_launch import build_extraction_command, exec_command

    ids, passthrough = _parse_layer_ids(target_layer_ids, list(vllm_args or []))
    command = build_extraction_command(
        model,
        hidden_states_path=hidden_states_path,
        target_layer_ids=ids,
        device=device,
        vllm_python=vllm_python,
        vllm_args=passthrough,
    )
    if print_only:
        console.print(command.shell(), highlight=False, soft_wrap=True, markup=False)
        return
    console.print(
        f"[dim]vLLM on {command.device}, layers {command.layer_ids}, files in {command.hidden_states_path}[/]",
        highlight=False,
    )
    exec_command(command)
