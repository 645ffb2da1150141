"""``spectool data generate``: fill the hidden-state cache offline (vLLM or the local verifier)."""

from __future__ import annotations

from typing import Optional

import typer

from spectool.cli.common import console, err_console, fail


def generate(
    verifier_name_or_path: str = typer.Option(..., help="Verifier model (must equal vLLM's served model name)."),
    data_path: str = typer.Option("./data", help="Processed data directory (from `spectool data prepare`)."),
    hidden_states_path: Optional[str] = typer.Option(None, help="Cache directory (default: {data-path}/hidden_states)."),
    vllm_endpoint: str = typer.Option("http://localhost:8000/v1", help="vLLM server (with /v1)."),
    vllm_hidden_states_path: str = typer.Option("/tmp/hidden_states", help="Directory the vLLM server writes its files to (its --hidden-states-path)."),
    target_layer_ids: Optional[str] = typer.Option(None, help="Aux layer ids, vLLM convention, e.g. '2,4,5' (default: 2, L//2, L-3)."),
    generator: str = typer.Option("auto", "--hidden-states-generator", "--generator", metavar="[auto|vllm|local]",
                                  autocompletion=lambda: ["auto", "vllm", "local"],
                                  help="Who generates: the vLLM server, the verifier in-process, or auto (vLLM if it answers, else local). --generator is an alias."),
    concurrency: int = typer.Option(32, min=1, help="Requests in flight to vLLM."),
    request_timeout: float = typer.Option(180.0, help="Timeout in seconds of one vLLM request."),
    max_retries: int = typer.Option(3, min=0, help="Retries of one request on connection errors, timeouts and 5xx."),
    max_consecutive_errors: Optional[int] = typer.Option(None, help="Stop after this many failures in a row (default: --concurrency)."),
    max_samples: Optional[int] = typer.Option(None, min=1, help="Only the first N samples."),
    batch_tokens: int = typer.Option(8192, min=1, help="Padded tokens per forward of the local verifier."),
    trust_remote_code: bool = typer.Option(False, help="Allow code from the verifier's repository."),
) -> None:
    """Generate the verifier's hidden states for every sample (resumable: valid files are kept)."""
    from spectool.model_source import check_model_source

    if generator not in ("auto", "vllm", "local"):
        fail(f"--hidden-states-generator must be auto, vllm or local, got {generator!r}")
    check_model_source(verifier_name_or_path)
    from pathlib import Path

    from spectool.cli.train import quiet_third_party

    quiet_third_party()

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Table

    from spectool.data.dataset import ProcessedDataset
    from spectool.data.generate import generate_cache
    from spectool.data.hidden_states.factory import make_generator, stamp_layer_record
    from spectool.layer_ids import parse_layer_ids
    from spectool.verifier import load_verifier_info

    dataset = ProcessedDataset(data_path)
    verifier = load_verifier_info(verifier_name_or_path, trust_remote_code)
    aux = verifier.resolve_layer_ids(parse_layer_ids(target_layer_ids))
    cache_dir = Path(hidden_states_path or Path(data_path) / "hidden_states")
    gen = make_generator(
        generator, verifier_name_or_path, aux, verifier, endpoint=vllm_endpoint,
        vllm_hidden_states_path=vllm_hidden_states_path, request_timeout=request_timeout,
        max_retries=max_retries, trust_remote_code=trust_remote_code,
        # the client counts attempts (retries too); this command counts samples
        max_consecutive_failures=(max_consecutive_errors or concurrency) * (max_retries + 1),
        info=lambda msg: err_console.print(f"[yellow]note:[/] {msg}", highlight=False),
    )
    stamp_layer_record(cache_dir, gen, aux, verifier, verifier_name_or_path)
    console.print(f"generating hidden states of layers {aux + [verifier.num_layers]} with {gen.name} into {cache_dir}", highlight=False)
    columns = (TextColumn("hidden states"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console.get(), transient=False) as bar:
        task = bar.add_task("generate", total=None, rate="")
        start: dict[str, float] = {}

        def progress(done: int, total: int) -> None:
            import time

            now = time.monotonic()
            start.setdefault("t", now)
            start.setdefault("done", done)
            elapsed = now - start["t"]
            rate = (done - start["done"]) / elapsed if elapsed > 0 else 0.0
            bar.update(task, completed=done, total=total, rate=f"{rate:.1f} samples/s")

        report = generate_cache(
            dataset, cache_dir, gen, len(aux) + 1, verifier.hidden_size, max_samples=max_samples,
            concurrency=concurrency, batch_tokens=batch_tokens,
            max_consecutive_errors=max_consecutive_errors, progress=progress,
        )
    table = Table(title="hidden-state cache", show_header=True)
    table.add_column("outcome")
    table.add_column("samples", justify="right")
    table.add_column("detail", overflow="fold")
    table.add_row("valid (kept)", str(report.ok), "")
    table.add_row("generated", str(report.generated), "")
    for kind, count in sorted(report.replaced_invalid.items()):
        table.add_row("  replaced invalid", str(count), kind)
    for kind, count in sorted(report.failed.items()):
        table.add_row(f"[red]failed: {kind}[/]", str(count), report.examples.get(kind, ""))
    if report.aborted:
        table.add_row("[red]not attempted (too many consecutive errors)[/]", str(report.aborted), "")
    table.add_row("skipped (beyond --max-samples)", str(report.skipped), "")
    console.print(table)
    if report.failed or report.aborted:
        err_console.print(f"[bold red]error:[/] {sum(report.failed.values()) + report.aborted} samples have no hidden states: re-run to retry them", highlight=False)
        raise typer.Exit(1)
