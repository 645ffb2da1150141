"""Typer options generated from the run configuration's fields (one source of truth).

Each field of a group in ``spectool.config`` becomes one option with its default, help,
choices and the group's help panel; the command receives a ``RunConfig``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from spectool.config import GROUPS, LOGGERS, RunConfig, flag_name

REQUIRED = {"verifier_name_or_path"}


def _list_fields() -> set[str]:
    return {f.name for cls in GROUPS.values() for f in dataclasses.fields(cls) if "list" in str(f.type)}


def _metavar(f: dataclasses.Field) -> str:
    kind = str(f.type).split(" ")[0]
    if f.name.endswith("name_or_path"):
        return "MODEL"
    if f.name.endswith(("_path", "_dir")) or f.name in ("from_pretrained", "draft_config"):
        return "PATH"
    return {"int": "INT", "float": "FLOAT"}.get(kind, "TEXT")


def _option(f: dataclasses.Field, panel: str, required: bool = False) -> tuple[Any, typer.models.OptionInfo]:
    flag = flag_name(f)
    meta = f.metadata
    default = f.default if f.default is not dataclasses.MISSING else None
    kind = str(f.type)
    choices = meta.get("choices")
    choice_kw = {"metavar": "[" + "|".join(choices) + "]", "autocompletion": lambda: list(choices),
                 "callback": _choice_check(flag, choices)} if choices else {}
    help = meta["help"].removesuffix(" Required.")
    if kind.startswith("bool"):
        names = (f"{flag}/--no-{flag[2:]}",) if meta.get("negatable") else (flag,)
        return bool, typer.Option(default, *names, help=help, rich_help_panel=panel)
    if "list" in kind:
        return Optional[str], typer.Option(None, flag, help=help + " Space- or comma-separated.", rich_help_panel=panel, metavar="IDS")
    if f.name == "logger":
        choice_kw = {"autocompletion": complete_loggers, "metavar": "NAMES"}
    base = {"int": int, "float": float, "str": str}[kind.split(" ")[0].split("|")[0].strip()]
    annotation = Optional[base] if "None" in kind else base
    return annotation, typer.Option(... if required else default, flag, help=help, rich_help_panel=panel,
                                    show_default=default not in (None, ""), metavar=choice_kw.pop("metavar", _metavar(f)), **choice_kw)


def _choice_check(flag: str, choices: tuple[str, ...]) -> Callable[[Optional[str]], Optional[str]]:
    """Refuse a value outside ``choices`` while parsing (before anything is loaded), naming the closest."""

    def check(value: Optional[str]) -> Optional[str]:
        if value is not None and value not in choices:
            import difflib

            close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
            hint = f": did you mean {close[0]}?" if close else ""
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}{hint}")
        return value

    return check


def complete_loggers(incomplete: str) -> list[str]:
    """``--logger <TAB>``: the backends (also after a comma: ``tensorboard,w<TAB>``)."""
    head, _, last = incomplete.rpartition(",")
    prefix = head + "," if head else ""
    return [prefix + name for name in LOGGERS if name.startswith(last) and name not in head.split(",")]


def _parse_ids(value: str | None, flag: str) -> list[int] | None:
    from spectool.layer_ids import LayerIdError, parse_layer_ids

    try:
        return parse_layer_ids(value, flag)
    except LayerIdError as exc:
        raise typer.BadParameter(str(exc)) from None


def config_options(groups: list[str], skip: set[str] = frozenset(), extra: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """Options of whole ``groups`` (minus ``skip``) plus single ``extra`` fields of other groups."""
    params = []
    extra_groups = [g for g in GROUPS if g not in groups and any(f.name in extra for f in dataclasses.fields(GROUPS[g]))]
    for group in list(groups) + extra_groups:
        cls = GROUPS[group]
        panel = (cls.__doc__ or group).strip().rstrip(".")
        for f in dataclasses.fields(cls):
            if f.name in skip or (group in extra_groups and f.name not in extra):
                continue
            annotation, option = _option(f, panel, required=f.name in REQUIRED)
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
    return params


def _load_config_file(ctx: typer.Context, value: Optional[Path]) -> Optional[Path]:
    """--config (eager, so it is read first): its values become the option defaults, so
    flags given on the command line override them and required options may come from it."""
    if value is None or ctx.resilient_parsing:
        return value
    flat = RunConfig.load_yaml(value).flat()
    list_fields = _list_fields()
    ctx.default_map = {k: ",".join(map(str, v)) if k in list_fields and v is not None else v for k, v in flat.items() if v is not None}
    return value


def config_command(
    run: Callable[[RunConfig], Any],
    groups: list[str],
    skip: set[str] = frozenset(),
    extra: tuple[str, ...] = (),
    config_file: bool = False,
) -> Callable[..., Any]:
    """A command function with the options of ``groups``; ``run`` gets the RunConfig.
    With ``config_file``: a ``--config run.yaml`` option whose values the flags override."""
    list_fields = _list_fields()

    def command(**values: Any) -> Any:
        values.pop("config", None)
        for key in list_fields & values.keys():
            values[key] = _parse_ids(values[key], "--" + key.replace("_", "-"))
        return run(RunConfig.from_flat(values))

    params = config_options(groups, skip, extra)
    if config_file:
        option = typer.Option(None, "--config", help="Run configuration YAML (the schema of a saved run.yaml); flags override its values.",
                              is_eager=True, callback=_load_config_file, metavar="PATH", rich_help_panel="Options",
                              dir_okay=False)
        params.insert(0, inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Optional[Path]))
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = run.__doc__
    return command


def join_list_arguments(argv: list[str]) -> list[str]:
    """Accept the contract's space-separated ids (``--target-layer-ids 2 15 27``) by
    joining the integers that follow a list option into one argument."""
    flags = {"--" + n.replace("_", "-") for n in _list_fields()}
    out: list[str] = []
    i = 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] in flags:
            j = i + 1
            while j < len(argv) and argv[j].lstrip("-").isdigit() and not argv[j].startswith("--"):
                j += 1
            if j > i + 1:
                out.append(",".join(argv[i + 1 : j]))
                i = j
                continue
        i += 1
    return out


__all__ = ["config_command", "config_options", "join_list_arguments"]
