"""``speculators_model_type`` -> plug-in. Built-in plug-ins are found, not listed: every
package under ``models/`` whose ``__init__`` defines ``PLUGIN`` is one. Others (outside
spectool) call :func:`register`."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from spectool.models.config import SpeculatorConfigError
from spectool.models.plugin import SpeculatorPlugin

_PLUGINS: dict[str, SpeculatorPlugin] = {}
_discovered = False


def register(plugin: SpeculatorPlugin) -> SpeculatorPlugin:
    """Make ``plugin`` reachable by its ``name`` (its speculators_model_type)."""
    if plugin.name != plugin.config_class.speculator_type:
        raise ValueError(f"plug-in {plugin.name!r} has a config class of type {plugin.config_class.speculator_type!r}")
    _PLUGINS[plugin.name] = plugin
    return plugin


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if info.ispkg:
            module = importlib.import_module(f"{__package__}.{info.name}")
            if isinstance(getattr(module, "PLUGIN", None), SpeculatorPlugin):
                _PLUGINS.setdefault(module.PLUGIN.name, module.PLUGIN)
    _discovered = True


def plugins() -> dict[str, SpeculatorPlugin]:
    _discover()
    return dict(_PLUGINS)


def get_plugin(name: str) -> SpeculatorPlugin:
    """The plug-in of ``speculators_model_type`` ``name``; one-line error naming the known ones."""
    found = plugins().get(name)
    if found is None:
        raise SpeculatorConfigError(f"speculator type {name!r} is not supported: use one of {', '.join(sorted(plugins()))}")
    return found


def plugin_for(spec) -> SpeculatorPlugin:
    """The plug-in of a SpeculatorConfig instance."""
    return get_plugin(spec.speculator_type)
