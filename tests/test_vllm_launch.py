"""Building the vLLM extraction command (fast: no vLLM, no model load)."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spectool import vllm_launch as vl
from spectool.cli.app import app
from spectool.errors import SpectoolError
from spectool.layer_ids import LayerIdError, default_layer_ids


def _write_config(path: Path, config: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def verifier_dir(tmp_path) -> Path:
    return _write_config(tmp_path / "verifier", {"model_type": "llama", "num_hidden_layers": 8, "hidden_size": 64})


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_default_layer_ids_and_last_layer_appended():
    assert default_layer_ids(32) == [2, 16, 29]
    assert vl.extraction_layer_ids(32) == [2, 16, 29, 32]
    assert vl.extraction_layer_ids(8) == [2, 4, 5, 8]
    assert vl.extraction_layer_ids(8, [2, 4, 5]) == [2, 4, 5, 8]
    assert vl.extraction_layer_ids(8, [0, 4]) == [0, 4, 8]  # 0 = embeddings, capturable in vLLM 0.32
    # tiny verifiers: defaults collapse but stay ascending and unique
    assert vl.extraction_layer_ids(4) == [1, 2, 4]


@pytest.mark.parametrize("ids", [[-1, 4], [2, 9], [-1], [4, 2], [2, 2, 5], [], [3, 8]])  # L is appended, never given
def test_bad_layer_ids_are_one_line_errors(ids):
    with pytest.raises(LayerIdError) as info:
        vl.extraction_layer_ids(8, ids)
    assert isinstance(info.value, SpectoolError)
    assert "\n" not in str(info.value)


def test_cpu_command_uses_spectool_connector(verifier_dir, tmp_path):
    cmd = vl.build_extraction_command(
        verifier_dir,
        hidden_states_path=tmp_path / "hs",
        target_layer_ids=[2, 4, 5],
        device="cpu",
        vllm_python="/opt/vllm/bin/python",
        vllm_args=["--port", "8123", "--enforce-eager"],
        environ={"PYTHONPATH": "/elsewhere"},
    )
    argv = cmd.argv
    assert argv[:3] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert _flag(argv, "--model") == str(verifier_dir)
    assert json.loads(_flag(argv, "--speculative_config")) == {
        "method": "extract_hidden_states",
        "num_speculative_tokens": 1,
        "draft_model_config": {"hf_config": {"eagle_aux_hidden_state_layer_ids": [2, 4, 5, 8]}},
    }
    assert json.loads(_flag(argv, "--kv_transfer_config")) == {
        "kv_connector": "CpuHiddenStatesConnector",
        "kv_connector_module_path": "spectool.vllm_connector",
        "kv_role": "kv_producer",
        "kv_connector_extra_config": {"shared_storage_path": str(tmp_path / "hs")},
    }
    assert argv[-3:] == ["--port", "8123", "--enforce-eager"]  # user args last, unchanged
    assert cmd.env["VLLM_TARGET_DEVICE"] == "cpu"
    src = Path(vl.__file__).resolve().parent.parent
    assert cmd.env["PYTHONPATH"].split(os.pathsep) == [str(src), "/elsewhere"]
    assert (src / "spectool" / "vllm_connector.py").is_file()
    assert cmd.layer_ids == [2, 4, 5, 8]


def test_cuda_command_uses_vllm_connector(verifier_dir):
    cmd = vl.build_extraction_command(verifier_dir, device="cuda", vllm_python="python", environ={})
    kv = json.loads(_flag(cmd.argv, "--kv_transfer_config"))
    assert kv["kv_connector"] == "ExampleHiddenStatesConnector"
    assert "kv_connector_module_path" not in kv
    assert kv["kv_connector_extra_config"]["shared_storage_path"] == "/tmp/hidden_states"
    assert "VLLM_TARGET_DEVICE" not in cmd.env and "PYTHONPATH" not in cmd.env
    spec = json.loads(_flag(cmd.argv, "--speculative_config"))
    assert spec["draft_model_config"]["hf_config"]["eagle_aux_hidden_state_layer_ids"] == [2, 4, 5, 8]


def test_auto_device_follows_cuda_availability(monkeypatch, verifier_dir):
    monkeypatch.setattr(vl, "cuda_available", lambda: False)
    assert vl.build_extraction_command(verifier_dir, vllm_python="python").device == "cpu"
    monkeypatch.setattr(vl, "cuda_available", lambda: True)
    assert vl.build_extraction_command(verifier_dir, vllm_python="python").device == "cuda"
    with pytest.raises(vl.DeviceError):
        vl.resolve_device("tpu")


def test_multimodal_config_uses_text_config(tmp_path):
    path = _write_config(
        tmp_path / "vlm",
        {"model_type": "llava", "text_config": {"num_hidden_layers": 12, "hidden_size": 32}, "vision_config": {}},
    )
    cmd = vl.build_extraction_command(path, device="cpu", vllm_python="python", environ={})
    ids = json.loads(_flag(cmd.argv, "--speculative_config"))["draft_model_config"]["hf_config"]
    assert ids["eagle_aux_hidden_state_layer_ids"] == [2, 6, 9, 12]


def test_missing_or_bad_config_is_a_spectool_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(vl.VerifierConfigError):
        vl.read_verifier_config(tmp_path)  # a directory without config.json
    with pytest.raises(vl.VerifierConfigError):
        vl.read_verifier_config("no-such-org/no-such-model-spectool-test")
    _write_config(tmp_path / "odd", {"model_type": "clip"})
    with pytest.raises(vl.VerifierConfigError, match="num_hidden_layers"):
        vl.read_verifier_config(tmp_path / "odd")


def test_vllm_python_resolution(tmp_path, monkeypatch):
    assert vl.resolve_vllm_python("/x/python", {vl.VLLM_PYTHON_ENV: "/y/python"}) == "/x/python"
    assert vl.resolve_vllm_python(None, {vl.VLLM_PYTHON_ENV: "/y/python"}) == "/y/python"
    monkeypatch.setattr(vl, "_REPO_DIR", tmp_path)
    assert vl.resolve_vllm_python(None, {}) == "python"
    venv_python = tmp_path / ".vllm-venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.touch()
    assert vl.resolve_vllm_python(None, {}) == str(venv_python)


def test_shell_line_round_trips(verifier_dir, tmp_path):
    cmd = vl.build_extraction_command(
        verifier_dir, hidden_states_path=tmp_path / "h s", device="cpu", vllm_python="python", environ={}
    )
    words = shlex.split(cmd.shell())
    env_words = [w for w in words if "=" in w and not w.startswith("-") and not w.startswith("{")][:2]
    assert sorted(w.split("=", 1)[0] for w in env_words) == ["PYTHONPATH", "VLLM_TARGET_DEVICE"]
    assert words[len(env_words) :] == cmd.argv


# ----------------------------------------------------------------------------- CLI


runner = CliRunner()


def _cli(*args: str):
    return runner.invoke(app, ["vllm", "launch", *args], prog_name="spectool")


@pytest.mark.parametrize(
    "id_args",
    [["--target-layer-ids", "2", "4", "5"], ["--target-layer-ids", "2,4,5"], ["--target-layer-ids", "2", "--target-layer-ids", "4", "--target-layer-ids", "5"]],
)
def test_cli_print_only(verifier_dir, tmp_path, id_args):
    result = _cli(
        str(verifier_dir),
        "--print-only",
        "--device",
        "cpu",
        "--vllm-python",
        "/v/bin/python",
        "--hidden-states-path",
        str(tmp_path / "hs"),
        *id_args,
        "--",
        "--port",
        "8001",
        "--max-model-len",
        "256",
    )
    assert result.exit_code == 0, result.output
    words = shlex.split(result.output.strip())
    assert words[0] == "VLLM_TARGET_DEVICE=cpu"
    # PYTHONPATH=<src> follows unless the caller's PYTHONPATH already holds the sources.
    argv = words[2:] if words[1].startswith("PYTHONPATH=") else words[1:]
    assert argv[0] == "/v/bin/python"
    spec = json.loads(_flag(argv, "--speculative_config"))
    assert spec["draft_model_config"]["hf_config"]["eagle_aux_hidden_state_layer_ids"] == [2, 4, 5, 8]
    assert argv[-4:] == ["--port", "8001", "--max-model-len", "256"]
    assert not (tmp_path / "hs").exists()  # print-only touches nothing


def test_cli_bad_layer_ids_one_line_error(verifier_dir):
    result = _cli(str(verifier_dir), "--print-only", "--device", "cpu", "--target-layer-ids", "2", "12")
    assert result.exit_code == 2
    assert "[12] out of range" in result.output
    assert "Traceback" not in result.output
    result = _cli(str(verifier_dir), "--print-only", "--device", "cpu", "--target-layer-ids", "two")
    assert result.exit_code == 2 and "integers" in result.output


def test_cli_missing_model_dir(tmp_path):
    result = _cli(str(tmp_path / "nope" / "model"), "--print-only", "--device", "cpu")
    assert result.exit_code == 2
    assert "config.json" in result.output


def test_cli_execs_vllm(verifier_dir, tmp_path, monkeypatch):
    seen = {}

    def fake_exec(file, argv, env):
        seen.update(file=file, argv=argv, env=env)
        raise SystemExit(0)

    monkeypatch.setattr(vl.os, "execvpe", fake_exec)
    result = _cli(str(verifier_dir), "--device", "cpu", "--vllm-python", "/v/python", "--hidden-states-path", str(tmp_path / "hs"))
    assert result.exit_code == 0, result.output
    assert seen["file"] == "/v/python" and seen["argv"][0] == "/v/python"
    assert seen["env"]["VLLM_TARGET_DEVICE"] == "cpu"
    assert (tmp_path / "hs").is_dir()


def test_cli_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, spectool.cli.app; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
