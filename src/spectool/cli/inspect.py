"""``spectool inspect PATH``: show and validate a checkpoint, config, vocab, data or run dir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from spectool.cli.common import console, fail


def _print_report(report: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{report['kind']}: {report['path']}", show_header=False, title_justify="left")
    for key, value in report.items():
        if key in ("kind", "path", "problems", "valid", "parameters", "files", "dtypes", "mappings", "spectool_version"):
            continue
        table.add_row(key, str(value))
    for key in ("dtypes",):
        if key in report:
            table.add_row(key, ", ".join(f"{k}: {v:,}" for k, v in report[key].items()))
    console.print(table if table.row_count else f"{report['kind']}: {report['path']}")
    if report.get("mappings"):
        console.print(vocab_table(report["mappings"], Path(report["path"])))
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
    from rich.table import Table

    console.print(f"[bold]run[/] {report['path']}: {report['speculator_type']} draft for {report['verifier']}, data {report['data_path']}", highlight=False)
    table = Table("checkpoint", "epoch", "step", "val loss", "val AL", "link", "vLLM", title_justify="left")
    for c in report["checkpoints"]:
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        epoch = "-" if c["epoch"] is None else str(c["epoch"])
        table.add_row(c["name"], epoch, str(c["global_step"]), fmt(c["val_loss"]), fmt(c["val_acceptance_length"]),
                      ", ".join(c["links"]), "[green]valid[/]" if c["valid"] else "[red]invalid[/]")
    console.print(table)
    if report["incomplete_ignored"]:
        console.print(f"incomplete writes (never resumed): {', '.join(report['incomplete_ignored'])}")
    for problem in report["problems"]:
        console.print(f"[red]-[/] {problem}", highlight=False, soft_wrap=True)


def vocab_coverage(t2d_path: Path, token_freq_path: Path | None) -> float | None:
    """Share of the supervised tokens counted in token_freq.pt that the draft vocabulary covers."""
    if token_freq_path is None or not token_freq_path.is_file():
        return None
    import numpy as np
    import torch

    t2d = np.load(t2d_path, allow_pickle=False)
    freq = torch.load(token_freq_path, weights_only=True)
    total = sum(freq.values())
    covered = sum(c for t, c in freq.items() if 0 <= int(t) < len(t2d) and t2d[int(t)])
    return covered / total if total else None


def _token_freq_for(directory: Path, d2t_name: str) -> Path | None:
    """token_freq.pt of a mapping: the one its vocab sidecar names, else the one beside it."""
    stem = Path(d2t_name).stem
    sidecar = directory / ("vocab.json" if stem == "d2t" else f"vocab{stem[3:]}.json")
    if sidecar.is_file():
        try:
            source = json.loads(sidecar.read_text()).get("source")
        except ValueError:
            source = None
        if source and Path(source).is_file():
            return Path(source)
    beside = directory / "token_freq.pt"
    return beside if beside.is_file() else None


def vocab_table(mappings: list[dict], directory: Path) -> Any:
    """One row per d2t/t2d pair: D, V and the coverage of the supervised tokens (a rich Table)."""
    from rich.table import Table

    table = Table("d2t", "t2d", "draft vocab D", "verifier vocab V", "coverage", title="vocabulary mappings", title_justify="left")
    for m in mappings:
        cov = vocab_coverage(directory / m["t2d"], _token_freq_for(directory, m["d2t"]))
        table.add_row(m["d2t"], m["t2d"], f"{m['draft_vocab_size']:,}", f"{m['target_vocab_size']:,}", "-" if cov is None else f"{cov:.2%}")
    return table


def inspect_path(
    path: Path = typer.Argument(..., metavar="PATH", help="Checkpoint dir, config.json, vocab dir, processed data dir or run dir."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report for machines."),
) -> None:
    """Show what PATH holds and check it; exit status 1 when it is invalid."""
    if not path.exists() and not path.is_symlink():
        fail(f"{path}: no such file or directory")
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
        from spectool import __version__

        report = {"spectool_version": __version__, **report}
        print(json.dumps(report, indent=2, default=str))
    elif kind == "run":
        _print_run(report)
    else:
        _print_report(report)
    raise typer.Exit(0 if report["valid"] else 1)
