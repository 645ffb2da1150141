"""The plug-in boundary: nothing outside ``models/`` knows which algorithms exist."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import spectool
from spectool.config import GROUPS, SPECULATOR_TYPES, RunConfig
from spectool.models import get_plugin, plugins

SRC = Path(spectool.__file__).parent
# Dict literals whose keys are the type names but mean RunConfig sections, not a dispatch.
ALLOWED_DICTS = {("config.py", "GROUPS")}


def type_branches(source: str, names: set[str], filename: str = "<src>") -> list[str]:
    """Places in ``source`` that branch on a speculator type name: comparisons (``==``,
    ``in``) with the name, dict literals keyed by it (dispatch tables), ``match`` cases."""

    def is_name(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant) and node.value in names:
            return True
        return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(is_name(e) for e in node.elts)

    tree = ast.parse(source)
    allowed = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if isinstance(getattr(node, "value", None), ast.Dict):
            if any(isinstance(t, ast.Name) and (Path(filename).name, t.id) in ALLOWED_DICTS for t in targets):
                allowed.add(id(node.value))
    found = []
    for node in ast.walk(tree):
        hit = (
            (isinstance(node, ast.Compare) and any(is_name(x) for x in [node.left, *node.comparators]))
            or (isinstance(node, ast.Dict) and id(node) not in allowed and any(k is not None and is_name(k) for k in node.keys))
            or (isinstance(node, ast.MatchValue) and is_name(node.value))
        )
        if hit:
            found.append(f"{filename}:{node.lineno}")
    return found


def test_no_module_outside_models_branches_on_the_speculator_type():
    names = set(plugins())
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if (SRC / "models") in path.parents:
            continue
        found += type_branches(path.read_text(), names, str(path.relative_to(SRC)))
    assert not found, f"branches on the speculator type outside models/: {found}"


@pytest.mark.parametrize(
    "snippet",
    [
        "if spec.speculator_type == 'eagle3': pass",
        "x = 1 if kind != 'dflash' else 2",
        "if kind in ('eagle3', 'x'): pass",
        "f = {'eagle3': a, 'dflash': b}[kind]",
        "match kind:\n    case 'dflash':\n        pass",
    ],
)
def test_the_scan_catches_each_form_of_branch(snippet):
    assert type_branches(snippet, {"eagle3", "dflash"})


def test_the_scan_ignores_mentions_that_are_not_branches():
    assert type_branches("help = 'LlamaConfig for eagle3'\nSPECULATOR_TYPES = ('eagle3', 'dflash')", {"eagle3", "dflash"}) == []


def test_registry_matches_the_cli_choices_and_run_config_groups():
    assert set(SPECULATOR_TYPES) == set(plugins())
    for name, plugin in plugins().items():
        assert get_plugin(name) is plugin and plugin.config_class.speculator_type == name
        assert plugin.options_group is None or plugin.options_group in GROUPS
        assert plugin.config_class.architecture


def test_unknown_type_is_a_one_line_error_naming_the_known_ones():
    from spectool.models import SpeculatorConfigError

    with pytest.raises(SpeculatorConfigError, match="use one of dflash, eagle3"):
        get_plugin("medusa")


@pytest.mark.parametrize("kind", ["eagle3", "dflash", "peagle"])
def test_train_kwargs_read_only_run_options(kind):
    """Every keyword the plug-in passes is a forward_train parameter (the trainer never branches)."""
    import inspect

    import torch

    plugin = get_plugin(kind)
    spec = plugin.config_class(layer_config={}, draft_vocab_size=1, aux_layer_ids=[1], verifier_name_or_path="v")
    accepted = set(inspect.signature(plugin.model_class.forward_train).parameters)
    for kwargs in (plugin.train_kwargs(RunConfig(), spec, generator=torch.Generator()), plugin.eval_kwargs(spec, generator=torch.Generator())):
        assert set(kwargs) <= accepted - {"self", "batch", "attn_impl"}


@pytest.mark.parametrize("kind", ["eagle3", "dflash", "peagle"])
def test_metric_names_and_json_round_trip_per_algorithm(tiny_llama, kind):
    """What the plug-in declares is what its model returns, and its config.json reads back equal."""
    import torch
    from test_models import make_batch

    from spectool.models import SpeculatorConfig
    from spectool.models.build import initialise_draft

    cfg = RunConfig.from_flat({"verifier_name_or_path": str(tiny_llama), "speculator_type": kind, "block_size": 4, "ttt_steps": 2, "num_depths": 3})
    model = initialise_draft(cfg)
    plugin = get_plugin(kind)
    spec = model.config
    assert type(spec) is plugin.config_class and isinstance(model, plugin.model_class)
    batch = make_batch(64, 3, 64, 448)
    if plugin.sample_transform is not None:  # the transform is per sample; shapes stay aligned
        assert plugin.sample_transform({k: v[0] for k, v in batch.items()})["input_ids"].shape == (63,)
    with torch.no_grad():
        _, metrics = model.forward_train(batch, attn_impl="sdpa", **plugin.train_kwargs(cfg, spec, generator=torch.Generator().manual_seed(0)))
    assert set(metrics) == set(plugin.metric_names(spec))
    again = SpeculatorConfig.from_json(spec.to_json())
    assert again == spec and type(again) is type(spec)
    assert again.speculative_tokens == (2 if kind == "eagle3" else 3)
