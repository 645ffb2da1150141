"""Typer options generated from the run configuration's fields (one source of truth).

Each field of a group in ``spectool.config`` becomes one option with its default, help,
choices and the group's help panel; the command receives a ``RunConfig``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, Optional

import typer

from spectool.config import GROUPS, RunConfig, flag_name


def _list_fields() -> set[str]:
    return {f.name for cls in GROUPS.values() for f in dataclasses.fields(cls) if "list" in str(f.type)}


def _option(f: dataclasses.Field, panel: str) -> tuple[Any, typer.models.OptionInfo]:
    flag = flag_name(f)
    meta = f.metadata
    default = f.default if f.default is not dataclasses.MISSING else None
    kind = str(f.type)
    choices = meta.get("choices")
    choice_kw = {"metavar": "[" + "|".join(choices) + "]", "autocompletion": lambda: list(choices)} if choices else {}
    if kind.startswith("bool"):
        names = (f"{flag}/--no-{flag[2:]}",) if meta.get("negatable") else (flag,)
        return bool, typer.Option(default, *names, help=meta["help"], rich_help_panel=panel)
    if "list" in kind:
        return Optional[str], typer.Option(None, flag, help=meta["help"] + " Space- or comma-separated.", rich_help_panel=panel, metavar="IDS")
    base = {"int": int, "float": float, "str": str}[kind.split(" ")[0].split("|")[0].strip()]
    annotation = Optional[base] if "None" in kind else base
    return annotation, typer.Option(default, flag, help=meta["help"], rich_help_panel=panel, show_default=default is not None, **choice_kw)


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
            annotation, option = _option(f, panel)
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
    return params


def config_command(
    app: typer.Typer,
    name: str,
    groups: list[str],
    run: Callable[[RunConfig], Any],
    help: str,
    skip: set[str] = frozenset(),
    extra: tuple[str, ...] = (),
) -> None:
    """Register ``name`` on ``app`` with the options of ``groups``; ``run`` gets a RunConfig."""
    list_fields = _list_fields()

    def command(**values: Any) -> Any:
        for key in list_fields & values.keys():
            values[key] = _parse_ids(values[key], "--" + key.replace("_", "-"))
        return run(RunConfig.from_flat(values))

    command.__signature__ = inspect.Signature(config_options(groups, skip, extra))  # type: ignore[attr-defined]
    command.__doc__ = help
    app.command(name, help=help)(command)


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
