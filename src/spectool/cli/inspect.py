"""``spectool inspect PATH``: show and validate a checkpoint, config, vocab, data or run dir."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from spectool.cli.app import app
from spectool.cli.common import console, fail, handle_errors


def _print_report(report: dict) -> None:
    table = Table(title=f"{report['kind']}: {report['path']}", show_header=False, title_justify="left")
    for key, value in report.items():
        if key in ("kind", "path", "problems", "valid", "parameters", "files", "dtypes"):
            continue
        table.add_row(key, str(value))
    for key in ("dtypes",):
        if key in report:
            table.add_row(key, ", ".join(f"{k}: {v:,}" for k, v in report[key].items()))
    console.print(table)
    if report.get("parameters"):
        params = Table("module", "parameters", title="parameters by module", title_justify="left")
        for name, count in report["parameters"].items():
            params.add_row(name, f"{count:,}")
        params.add_row("[bold]total[/]", f"[bold]{report['total_parameters']:,}[/]")
        console.print(params)
    if report.get("files"):
        files = Table("file", "bytes", title="files", title_justify="left")
        for name, size in report["files"].items():
            files.add_row(name, f"{size:,}")
        console.print(files)
    if report["valid"]:
        console.print("[green]valid[/]: vLLM's key contract is met" if report["kind"] in ("checkpoint", "config") else "[green]valid[/]")
    else:
        console.print("[red]invalid[/]:")
        for problem in report["problems"]:
            console.print(f"  - {problem}", highlight=False, soft_wrap=True)


def _print_run(report: dict) -> None:
    console.print(f"[bold]run[/] {report['path']}: {report['speculator_type']} draft for {report['verifier']}, data {report['data_path']}", highlight=False)
    table = Table("checkpoint", "epoch", "step", "val loss", "val AL", "", "vLLM", title_justify="left")
    for c in report["checkpoints"]:
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        table.add_row(c["name"], str(c["epoch"]), str(c["global_step"]), fmt(c["val_loss"]), fmt(c["val_acceptance_length"]),
                      ", ".join(c["links"]), "[green]valid[/]" if c["valid"] else "[red]invalid[/]")
    console.print(table)
    if report["incomplete_ignored"]:
        console.print(f"incomplete writes (never resumed): {', '.join(report['incomplete_ignored'])}")
    for problem in report["problems"]:
        console.print(f"[red]-[/] {problem}", highlight=False, soft_wrap=True)


@app.command("inspect")
@handle_errors
def inspect_path(
    path: Path = typer.Argument(..., help="Checkpoint dir, config.json, vocab dir, processed data dir or run dir."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report for machines."),
) -> None:
    """Show what PATH holds and check it; exit status 1 when it is invalid."""
    from spectool import inspection

    kind = inspection.detect_kind(path)
    reports: list[dict]
    if kind == "missing":
        fail(f"{path} does not exist")
    if kind == "data":
        from spectool.cli.inspect_data import show_dataset

        raise typer.Exit(show_dataset(path, as_json))
    if kind == "checkpoint":
        reports = [inspection.inspect_checkpoint(path)]
    elif kind == "config":
        reports = [inspection.inspect_config(path if path.is_file() else path / "config.json")]
    elif kind == "vocab":
        reports = [inspection.inspect_vocab_dir(path)]
    elif kind == "run":
        reports = [inspection.inspect_run(path)]
    else:
        fail(f"{path} is not a checkpoint, config, vocab, data or run directory")
    report = reports[0]
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    elif kind == "run":
        _print_run(report)
    else:
        _print_report(report)
    raise typer.Exit(0 if report["valid"] else 1)
