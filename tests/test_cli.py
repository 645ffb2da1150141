"""The CLI as a user meets it: 80-column help that cuts nothing, --version, --config files,
one-line errors before any heavy import, resume from another directory, one clean output
stream (no third-party bars or warnings, one `done` line), TensorBoard layout and hparams."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from spectool import __version__
from spectool.cli.app import app
from spectool.config import GROUPS, ConfigError, RunConfig

PY = sys.executable
runner = CliRunner()


def _commands(group, path=()):
    """(path, command) of every command and group of the app."""
    yield path, group
    for name, sub in getattr(group, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def _help(path: tuple[str, ...]) -> str:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


def _all_commands():
    import typer

    return list(_commands(typer.main.get_command(app)))


@pytest.mark.parametrize("path,command", _all_commands(), ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_help_at_80_columns_cuts_no_name_choice_or_default(path, command):
    text = _help(path)
    lines = text.splitlines()
    assert "..." not in text.replace("[-- VLLM_ARGS...]", "").replace("[ARGS]...", "") and "…" not in text
    assert "<bool>" not in text and "{" not in lines[0], lines[0]
    for line in lines:
        # a line may only run past 80 columns when it is one option name with its metavar
        assert len(line) <= 80 or (line.startswith("  --") and " " not in line.strip().split(" ", 1)[-1]), line
    words = set(re.findall(r"\S+", text))
    for param in command.params:
        if param.hidden:
            continue
        for opt in [*param.opts, *param.secondary_opts] if param.param_type_name == "option" else []:
            assert opt in words or opt + "," in words, f"{opt} cut in `{' '.join(path)} --help`"
        choices = getattr(param.type_descriptor, "choices", None) or []
        if param.metavar and param.metavar.startswith("[") and param.param_type_name == "option":
            assert param.metavar in words, param.metavar
        for choice in choices:
            assert choice in text
        if param.param_type_name == "option" and not param.is_flag and param.default not in (None, "", False) and param.show_default:
            default = " ".join(map(str, param.default)) if isinstance(param.default, (list, tuple)) else str(param.default)
            assert any(f"[default: {default}]" in line for line in lines), f"default of {param.opts[0]} cut"


def test_required_verifier_is_marked_and_flags_have_no_metavar():
    for path in (("train",), ("init",)):
        text = _help(path)
        block = text[text.index("--verifier-name-or-path"):].split("\n  --", 1)[0]
        assert "[required]" in block, block
        assert re.search(r"^  --dry-run +\S", text, re.M) or path == ("init",)
    assert "--hidden-states-generator" in _help(("data", "generate"))  # one spelling with train


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"spectool {__version__}\n"


def _capture_config(tmp_path: Path, args: list[str]) -> RunConfig:
    """Parse ``train`` options (with --config) exactly as the CLI does, without training."""
    import typer

    from spectool.cli.options import config_command

    seen: list[RunConfig] = []
    probe = typer.Typer()
    probe.command("train")(config_command(seen.append, list(GROUPS), config_file=True))
    probe.command("other")(lambda: None)
    result = CliRunner().invoke(probe, ["train", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return seen[0]


def _saved_config(tiny_llama: Path, tmp_path: Path) -> Path:
    cfg = RunConfig()
    cfg.model.verifier_name_or_path = str(tiny_llama)
    cfg.model.target_layer_ids = [1, 4, 5]
    cfg.training.epochs = 7
    cfg.training.run_name = "r"
    cfg.optimizer.optimizer = "muon"
    cfg.eagle3.norm_before_residual = False
    cfg.with_absolute_paths()
    path = tmp_path / "run.yaml"
    cfg.save_yaml(path)
    return path


def test_config_round_trip_with_override(tiny_llama, tmp_path):
    path = _saved_config(tiny_llama, tmp_path)
    saved = RunConfig.load_yaml(path)
    assert yaml.safe_load(path.read_text())["spectool_version"] == __version__
    assert _capture_config(tmp_path, ["--config", str(path)]).to_dict() == saved.to_dict()
    over = _capture_config(tmp_path, ["--config", str(path), "--epochs", "3", "--target-layer-ids", "2,3", "--norm-before-residual"])
    expected = RunConfig.load_yaml(path)
    expected.training.epochs, expected.model.target_layer_ids, expected.eagle3.norm_before_residual = 3, [2, 3], True
    assert over.to_dict() == expected.to_dict()


def _cli_error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


@pytest.mark.parametrize("text,needle", [
    ("training:\n  epoch: 3\n", "did you mean training.epochs?"),
    ("training:\n  warmup_steps: 3\n", "did you mean scheduler.scheduler_warmup_steps?"),
    ("trainin:\n  epochs: 3\n", "did you mean 'training'?"),
    ("model:\n  epochs: 3\n", "did you mean training.epochs?"),
    ("- just\n- a list\n", "must be a mapping"),
    ("training: [1, 2\n", "not valid YAML"),
    ("training:\n  epochs: three\n", "training.epochs"),
    ("data: 5\n", "section 'data'"),
    ("\x00\x01garbage", "not valid YAML"),
])
def test_bad_config_file_is_one_line_naming_the_fix(tmp_path, text, needle):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    line = _cli_error(["train", "--config", str(path), "--verifier-name-or-path", "x"])
    assert needle in line, line
    with pytest.raises(ConfigError, match=re.escape(needle)):
        RunConfig.load_yaml(path)


def test_truncated_run_yaml_is_refused(tiny_llama, tmp_path):
    path = _saved_config(tiny_llama, tmp_path)
    text = path.read_text()
    path.write_text(text[: text.index("weight_decay:") + len("weight_decay")])  # cut mid-key
    with pytest.raises(ConfigError):
        RunConfig.load_yaml(path)


@pytest.mark.parametrize("args,needle", [
    (["train"], "--verifier-name-or-path"),
    (["train", "--verifier-name-or-path", "./no/such/dir"], "no such directory"),
    (["train", "--verifier-name-or-path", "org/not-cached-model"], "not in the hub cache"),
    (["inspect", "nope"], "no such file or directory"),
    (["train", "--verifier-name-or-path", "x", "--epochs", "x"], "--epochs"),
    (["train", "--bogus"], "--bogus"),
])
def test_bad_invocations_fail_at_once_without_torch(args, needle, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = f"import sys; from spectool.cli.app import run; rc = run({args!r}); assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr


def test_not_a_model_directory(tmp_path):
    from spectool.model_source import ModelSourceError, check_model_source

    with pytest.raises(ModelSourceError, match="not a model directory"):
        check_model_source(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    check_model_source(str(tmp_path))


def test_help_and_completion_import_nothing_heavy():
    code = ("import sys; from spectool.cli.app import run; run(['train', '--help']); "
            "heavy = {'torch', 'transformers', 'numpy'} & set(sys.modules); assert not heavy, heavy")
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    env = {**os.environ, "_SPECTOOL_COMPLETE": "complete_bash", "COMP_WORDS": "spectool train --logger ", "COMP_CWORD": "3"}
    proc = subprocess.run([PY, "-m", "spectool"], env=env, capture_output=True, text=True, timeout=120)
    assert set(proc.stdout.split()) == {"tensorboard", "wandb", "mlflow", "trackio"}, proc.stdout + proc.stderr


# ---- real runs -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_data(tmp_path_factory, tiny_llama) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_train import make_data

    return make_data(tmp_path_factory.mktemp("cli") / "data", tiny_llama, [48, 40, 56, 32, 64, 44, 36, 52])


def _train_args(verifier: str, data: str, save: str, *extra: str) -> list[str]:
    return ["train", "--verifier-name-or-path", verifier, "--data-path", data, "--save-path", save,
            "--on-missing", "raise", "--total-seq-len", "128", "--epochs", "1", "--num-workers", "0",
            "--val-ratio", "0.25", "--log-dir", "logs", *extra]


def _assert_clean(out: str) -> None:
    assert not re.search(r"\d+%\|", out) and "it/s]" not in out, out  # no tqdm bar
    assert "Warning" not in out, out
    assert len([line for line in out.splitlines() if line.startswith("done")]) == 1, out


def test_piped_run_is_clean_and_resumes_from_another_directory(tiny_llama, small_data, tmp_path):
    import shutil

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(small_data, work / "data")
    os.symlink(tiny_llama, work / "verifier")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "40"}
    proc = subprocess.run([PY, "-m", "spectool", *_train_args("verifier", "data", "run", "--logger", "tensorboard")],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_clean(proc.stdout + proc.stderr)
    assert any(len(line) > 40 for line in proc.stdout.splitlines())  # piped lines are not re-wrapped
    saved = yaml.safe_load((work / "run" / "run.yaml").read_text())
    assert saved["data"]["data_path"] == str(work / "data") and Path(saved["training"]["save_path"]).is_absolute()
    assert saved["spectool_version"] == __version__
    assert (work / "run" / "epoch1_step3").is_dir() or any(p.name.startswith("epoch1_") for p in (work / "run").iterdir())
    proc = subprocess.run([PY, "-m", "spectool", "resume", str(work / "run")], cwd="/", env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resumed from" in proc.stdout
    _assert_clean(proc.stdout + proc.stderr)
    _check_tensorboard(work / "logs" / "run")


def _check_tensorboard(log_dir: Path) -> None:
    """The real event files: the custom-scalars layout and the hparams entry (config -> final val metrics)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    tensors = set(acc.Tags()["tensors"])
    assert "custom_scalars__config__" in tensors
    layout = layout_pb2.Layout()
    layout.ParseFromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    per_position = next(tags for title, tags in charts.items() if title.startswith("val: full accuracy"))
    scalars = set(acc.Tags()["scalars"])
    assert len([t for t in scalars if re.fullmatch(per_position[0], t)]) >= 3  # all positions in one chart
    assert any(title.startswith("train: loss") for title in charts)
    data = plugin_data_pb2.HParamsPluginData()
    data.ParseFromString(acc.SummaryMetadata("_hparams_/experiment").plugin_data.content)
    hparams = {h.name for h in data.experiment.hparam_infos}
    metrics = {m.name.tag for m in data.experiment.metric_infos}
    assert {"training/lr", "model/speculator_type"} <= hparams
    assert "val/loss" in metrics and metrics <= scalars


@pytest.mark.slow
def test_torchrun_two_ranks_one_clean_stream(tiny_llama, small_data, tmp_path):
    torchrun = Path(PY).with_name("torchrun")
    args = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "spectool",
            *_train_args(str(tiny_llama), str(small_data), str(tmp_path / "run"))]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    _assert_clean(proc.stdout + proc.stderr)


def test_inspect_data_shows_vocab_files_and_coverage(tiny_llama, small_data, tmp_path):
    import shutil

    import numpy as np
    import torch

    from spectool.vocab import build_vocab_mapping, save_vocab_mapping

    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    freq = {3: 5, 4: 3, 7: 2}
    torch.save(freq, data / "token_freq.pt")
    mapping = build_vocab_mapping(freq, 2, 320)
    save_vocab_mapping(mapping, data / "d2t-2.npy", data / "t2d-2.npy", source=str(data / "token_freq.pt"))
    assert np.load(data / "t2d-2.npy").sum() == 2
    result = runner.invoke(app, ["inspect", str(data)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "d2t-2.npy" in result.output and "80.00%" in result.output  # (5 + 3) / 10
    result = runner.invoke(app, ["inspect", str(data), "--json"])
    assert f'"spectool_version": "{__version__}"' in result.output


def test_every_config_field_is_a_train_option():
    text = _help(("train",))
    for cls in GROUPS.values():
        for f in dataclasses.fields(cls):
            assert (f.metadata.get("flag") or "--" + f.name.replace("_", "-")) in text


def test_command_modules_do_not_import_the_app():
    """cli/app.py imports the command modules, never the other way round (no import cycle)."""
    import ast

    cli = Path(__file__).resolve().parent.parent / "src" / "spectool" / "cli"
    for path in cli.glob("*.py"):
        if path.name == "app.py":
            continue
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "spectool.cli.app" not in imported, f"{path.name} imports spectool.cli.app"
