"""Plain-text help that fits any terminal: option names, choices and defaults are never cut.

Typer's rich help crops the name column at 80 columns (``--no-resume-from-chec...``) and
costs ~0.3 s to render the train command. This renders the same panels as plain text:
a name that does not fit its column gets a line of its own, help text wraps on spaces
only (never inside ``--flag-names``), and ``[default: X]`` / ``[required]`` stay whole.
"""

from __future__ import annotations

import shutil
import textwrap
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

NAME_WIDTH = 30  # indent of the help column
_METAVARS = {int: "INT", float: "FLOAT", str: "TEXT", bool: ""}


def width() -> int:
    """Terminal width (COLUMNS honoured), at least 60 so that help stays readable."""
    return max(60, min(shutil.get_terminal_size((80, 24)).columns, 120))


def _wrap(text: str, w: int) -> list[str]:
    return textwrap.wrap(text, w, break_on_hyphens=False, break_long_words=False) or [""]


def metavar(param: Any) -> str:
    """``[a|b]`` for choices, an explicit metavar, else INT/FLOAT/PATH/TEXT; flags have none."""
    if getattr(param, "is_flag", False):
        return ""
    if param.metavar:
        return param.metavar
    desc = param.type_descriptor
    if getattr(desc, "is_choice", False) and desc.choices:
        return "[" + "|".join(str(c) for c in desc.choices) + "]"
    name = param.name or ""
    if name.endswith("name_or_path"):
        return "MODEL"
    if name.endswith(("layer_ids", "_indices")):
        return "IDS"
    if getattr(desc, "is_path", False) or name.endswith(("_path", "_dir")):
        return "PATH"
    annotation = desc.annotation
    return _METAVARS.get(annotation, "TEXT") if isinstance(annotation, type) else "TEXT"


def _default_text(param: Any) -> str:
    if param.required or not param.show_default or param.default in (None, "", False) or callable(param.default):
        return ""
    if getattr(param, "is_flag", False):
        if not param.secondary_opts:
            return ""
        return (param.opts if param.default else param.secondary_opts)[0].lstrip("-")
    if isinstance(param.default, (list, tuple)):
        return " ".join(str(x) for x in param.default)
    return str(param.default)


def option_row(param: Any) -> tuple[str, str, list[str]]:
    """(names with metavar, help, notes such as ``[default: X]`` that are never split)."""
    names = ", ".join(param.opts)
    if param.secondary_opts:
        names += " / " + ", ".join(param.secondary_opts)
    if param.param_type_name == "argument":
        names = metavar(param) or param.name.upper()
    elif metavar(param):
        names += " " + metavar(param)
    notes = []
    if param.required:
        notes.append("[required]")
    default = _default_text(param)
    if default:
        notes.append(f"[default: {default}]")
    return names, param.help or "", notes


def write_rows(rows: list[tuple[str, str, list[str]]], out: list[str], w: int, name_width: int = NAME_WIDTH) -> None:
    """Two columns; a name wider than its column moves its help to the next line, and a
    note that does not fit the last help line starts a line of its own."""
    help_w = w - name_width
    for name, text, notes in rows:
        lines = _wrap(" ".join(text.split()), help_w) if text else []
        for note in notes:
            if lines and len(lines[-1]) + 1 + len(note) <= help_w:
                lines[-1] = f"{lines[-1]} {note}".strip()
            else:
                lines.append(note)
        lines = lines or [""]
        if len(name) + 4 <= name_width:
            out.append(f"  {name:<{name_width - 2}}{lines[0]}".rstrip())
        else:
            out.append(f"  {name}")
            out.append(" " * name_width + lines[0])
        out.extend(" " * name_width + line for line in lines[1:])


def _column(rows: list[tuple[str, str, list[str]]]) -> int:
    """Name column width: the longest name plus padding, at most NAME_WIDTH."""
    return min(NAME_WIDTH, max((len(r[0]) + 4 for r in rows), default=NAME_WIDTH))


def _sections(ctx: Any, params: list[Any]) -> dict[str, list[tuple[str, str, list[str]]]]:
    sections: dict[str, list[tuple[str, str, list[str]]]] = {}
    for p in params:
        if getattr(p, "hidden", False):
            continue
        title = "Arguments" if p.param_type_name == "argument" else (getattr(p, "rich_help_panel", None) or "Options")
        sections.setdefault(title, []).append(option_row(p))
    return sections


def usage_pieces(command: Any, ctx: Any) -> list[str]:
    """``[OPTIONS] DRAFT`` (no ``{draft}``): arguments by metavar, optional ones in brackets."""
    pieces = ["[OPTIONS]"]
    for p in command.get_params(ctx):
        if p.param_type_name == "argument":
            name = metavar(p) or p.name.upper()
            if p.nargs == -1 and "..." not in name:
                name += "..."
            pieces.append(name if p.required or name.startswith("[") else f"[{name}]")
    if getattr(command, "commands", None):
        pieces.append("COMMAND [ARGS]...")
    return pieces


def render(command: Any, ctx: Any) -> str:
    w = width()
    out = [" ".join(["Usage:", ctx.command_path, *usage_pieces(command, ctx)]), ""]
    if command.help:
        for para in command.help.split("\n\n"):
            out.extend("  " + line for line in _wrap(" ".join(para.split()), w - 2))
            out.append("")
    params = command.get_params(ctx)
    sections = _sections(ctx, params)
    order = ["Arguments", "Options"] + [t for t in sections if t not in ("Arguments", "Options")]
    name_width = _column([r for rows in sections.values() for r in rows])
    for title in order:
        if title in sections:
            out.append(f"{title}:")
            write_rows(sections[title], out, w, name_width)
            out.append("")
    commands = getattr(command, "commands", None)
    if commands:
        out.append("Commands:")
        rows = [(name, (c.short_help or (c.help or "").split("\n\n")[0]).strip(), []) for name, c in commands.items() if not c.hidden]
        write_rows(rows, out, w, _column(rows))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


class HelpMixin:
    def format_help(self, ctx: Any, formatter: Any) -> None:
        formatter.write(render(self, ctx))


class Command(HelpMixin, TyperCommand):
    """A command whose --help is :func:`render`'s plain text."""


class Group(HelpMixin, TyperGroup):
    """A command group whose --help is :func:`render`'s plain text."""


def typer_app(help: str, **kw: Any) -> typer.Typer:
    """A Typer app (or sub-app) with spectool's help, no rich markup and no pretty tracebacks."""
    return typer.Typer(help=help, cls=Group, no_args_is_help=True, rich_markup_mode=None,
                       pretty_exceptions_enable=False, add_completion=kw.pop("add_completion", False), **kw)


