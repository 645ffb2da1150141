"""Build the command that starts vLLM as a hidden-state extraction server.

vLLM runs the verifier with the speculative method ``extract_hidden_states`` and a
kv-transfer connector that writes, per request, ``{hidden_states_path}/{request_id}.safetensors``
(``hidden_states`` [seq, n_layers, H] in the verifier dtype, ``token_ids`` [seq] int64).
On CUDA that connector is vLLM's own ``ExampleHiddenStatesConnector``; on CPU it is
spectool's :mod:`spectool.vllm_connector` (vLLM's uses CUDA streams and pinned memory).

vLLM lives in its own virtual environment; which interpreter runs it is resolved by
:func:`resolve_vllm_python`. Nothing here imports vllm, typer or rich.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spectool.errors import SpectoolError
from spectool.layer_ids import extraction_layer_ids

DEFAULT_HIDDEN_STATES_PATH = "/tmp/hidden_states"
VLLM_PYTHON_ENV = "SPECTOOL_VLLM_PYTHON"
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
GPU_CONNECTOR = "ExampleHiddenStatesConnector"
CPU_CONNECTOR = "CpuHiddenStatesConnector"
CPU_CONNECTOR_MODULE = "spectool.vllm_connector"
DEVICES = ("auto", "cpu", "cuda")

_SRC_DIR = Path(__file__).resolve().parent.parent  # the directory holding the spectool package
_REPO_DIR = _SRC_DIR.parent


class VerifierConfigError(SpectoolError):
    """The verifier's config.json cannot be found or read."""


class DeviceError(SpectoolError):
    """An unknown or unavailable device for vLLM."""


# ---------------------------------------------------------------------------------------
# verifier facts
# ---------------------------------------------------------------------------------------


def read_verifier_config(model: str | os.PathLike) -> dict:
    """The verifier's text config (``text_config`` of a multimodal config, else the config).

    ``model`` is a local directory with ``config.json`` or a hub id already in the local
    cache (nothing is downloaded when ``HF_HUB_OFFLINE=1``).
    """
    path = Path(model)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise VerifierConfigError(f"{path} has no config.json: pass the verifier's model directory")
    else:
        try:
            from huggingface_hub import hf_hub_download

            config_file = Path(hf_hub_download(str(model), "config.json"))
        except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
            raise VerifierConfigError(
                f"cannot read config.json of {model!s} ({type(exc).__name__}): pass a local model "
                "directory, or download the model first"
            ) from None
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise VerifierConfigError(f"cannot parse {config_file}: {exc}") from None
    text = config.get("text_config")
    if isinstance(text, dict) and "num_hidden_layers" in text:
        config = {**text, "torch_dtype": text.get("torch_dtype", config.get("torch_dtype"))}
    if not isinstance(config.get("num_hidden_layers"), int):
        raise VerifierConfigError(f"{config_file} has no integer num_hidden_layers: is it a decoder LLM config?")
    return config


# ---------------------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------------------


def resolve_vllm_python(explicit: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The interpreter that runs vLLM.

    Order: ``explicit`` (``--vllm-python``), ``$SPECTOOL_VLLM_PYTHON``, ``<repo>/.vllm-venv/bin/python``
    when it exists (made by ``scripts/setup-vllm-env.sh``), else ``python`` on PATH.
    """
    environ = os.environ if environ is None else environ
    if explicit:
        return str(explicit)
    if environ.get(VLLM_PYTHON_ENV):
        return environ[VLLM_PYTHON_ENV]
    venv_python = _REPO_DIR / ".vllm-venv" / "bin" / "python"
    if venv_python.exists():
        return str(venv_python)
    return "python"


def cuda_available() -> bool:
    """Whether a CUDA GPU is visible here (torch if importable, else nvidia-smi)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return False
    try:
        import torch
    except ImportError:
        return shutil.which("nvidia-smi") is not None
    return bool(torch.cuda.is_available())


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


# ---------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------


def speculative_config(layer_ids: Sequence[int]) -> dict:
    """vLLM's ``--speculative_config`` for hidden-state extraction (ids include ``L``)."""
    return {
        "method": "extract_hidden_states",
        "num_speculative_tokens": 1,
        "draft_model_config": {"hf_config": {"eagle_aux_hidden_state_layer_ids": list(layer_ids)}},
    }


def kv_transfer_config(hidden_states_path: str | os.PathLike, device: str) -> dict:
    """vLLM's ``--kv_transfer_config``: the file connector writing into ``hidden_states_path``.

    On CPU, spectool's connector (loaded by module path); on CUDA, vLLM's own.
    """
    config: dict = {
        "kv_connector": CPU_CONNECTOR if device == "cpu" else GPU_CONNECTOR,
        "kv_role": "kv_producer",
        "kv_connector_extra_config": {"shared_storage_path": str(hidden_states_path)},
    }
    if device == "cpu":
        config["kv_connector_module_path"] = CPU_CONNECTOR_MODULE
    return config


@dataclass
class VllmCommand:
    """A resolved vLLM launch: argv plus the environment variables it needs on top of ours."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    layer_ids: list[int] = field(default_factory=list)
    device: str = "cpu"
    hidden_states_path: str = DEFAULT_HIDDEN_STATES_PATH

    def full_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default ``os.environ``) with :attr:`env` applied."""
        env = dict(os.environ if base is None else base)
        env.update(self.env)
        return env

    def shell(self) -> str:
        """One shell line: ``VAR=value ... python -m vllm...``, quoted for copy and paste."""
        assignments = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
        return " ".join(assignments + [shlex.join(self.argv)])


def build_extraction_command(
    model: str | os.PathLike,
    *,
    hidden_states_path: str | os.PathLike = DEFAULT_HIDDEN_STATES_PATH,
    target_layer_ids: Sequence[int] | None = None,
    device: str = "auto",
    vllm_python: str | os.PathLike | None = None,
    vllm_args: Sequence[str] = (),
    num_hidden_layers: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> VllmCommand:
    """The vLLM server command for hidden-state extraction from ``model``.

    ``target_layer_ids`` are the aux ids (``L`` is appended when missing; default
    ``[2, L//2, L-3]``). ``num_hidden_layers`` overrides reading the verifier config.
    ``vllm_args`` are passed to vLLM unchanged, after ours.
    """
    environ = os.environ if environ is None else environ
    if num_hidden_layers is None:
        num_hidden_layers = read_verifier_config(model)["num_hidden_layers"]
    layer_ids = extraction_layer_ids(num_hidden_layers, target_layer_ids)
    device = resolve_device(device)
    hs_path = str(Path(hidden_states_path).expanduser().absolute())
    python = resolve_vllm_python(vllm_python, environ)
    argv = [
        python,
        "-m",
        VLLM_SERVER_MODULE,
        "--model",
        str(model),
        "--speculative_config",
        json.dumps(speculative_config(layer_ids), separators=(",", ":")),
        "--kv_transfer_config",
        json.dumps(kv_transfer_config(hs_path, device), separators=(",", ":")),
        *vllm_args,
    ]
    env: dict[str, str] = {}
    if device == "cpu":
        env["VLLM_TARGET_DEVICE"] = "cpu"
        # The vLLM venv need not have spectool installed: let it import our connector from here.
        existing = environ.get("PYTHONPATH", "")
        parts = [p for p in existing.split(os.pathsep) if p]
        if str(_SRC_DIR) not in parts:
            env["PYTHONPATH"] = os.pathsep.join([str(_SRC_DIR), *parts])
    return VllmCommand(argv=argv, env=env, layer_ids=layer_ids, device=device, hidden_states_path=hs_path)


def exec_command(command: VllmCommand) -> None:
    """Replace this process with vLLM (never returns).

    First records in the hidden-states directory which layer ids this server extracts
    (``vllm_layers.json``), so that clients refuse a server launched for other ids."""
    from spectool.data.hidden_states.layers import write_server_record

    model = command.argv[command.argv.index("--model") + 1]
    write_server_record(command.hidden_states_path, command.layer_ids, model)
    try:
        os.execvpe(command.argv[0], command.argv, command.full_env())
    except FileNotFoundError:
        raise SpectoolError(
            f"vLLM python {command.argv[0]!r} not found: run scripts/setup-vllm-env.sh or pass --vllm-python"
        ) from None
