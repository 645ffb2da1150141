"""Helpers for tests that run a real vLLM (CPU build) from the separate vLLM virtualenv.

Reusable by any slow test: find the vLLM interpreter, start a server with given argv in
its own process group, wait for ``/health`` with a deadline, talk to it (JSON POST,
``/metrics`` parsing), read hidden-state files under their ``.lock`` protocol, and always
stop the whole process group (dumping the server log when something went wrong).

The vLLM venv is made by ``scripts/setup-vllm-env.sh``. Without it the tests skip, except
under CI (``CI=true``) where a missing vLLM is a failure, so a broken set-up cannot pass.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"

# Small, quick CPU settings for every test server.
BASE_ENV = {
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


# ------------------------------------------------------------------------ the vLLM venv


def vllm_python() -> str:
    """The vLLM interpreter spectool would use; skip (fail under CI) when it has no vLLM."""
    from spectool.vllm_launch import resolve_vllm_python

    python = resolve_vllm_python()
    try:
        probe = subprocess.run(
            [python, "-c", "import importlib.util as u, sys; sys.exit(0 if u.find_spec('vllm') else 3)"],
            capture_output=True,
            timeout=60,
        )
        ok = probe.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        message = f"no vLLM in {python!r}: run scripts/setup-vllm-env.sh (or set SPECTOOL_VLLM_PYTHON)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return python


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(BASE_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    env.update(extra or {})
    return env


# ------------------------------------------------------------------------ HTTP


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def post_json(url: str, body: dict, timeout: float = 120.0) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        raise AssertionError(f"POST {url} -> {err.code}: {err.read().decode(errors='replace')[:2000]}") from None


_METRIC_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> ``{name: value summed over label sets}`` (comments skipped)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if not match:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        values[match.group(1)] = values.get(match.group(1), 0.0) + value
    return values


# ------------------------------------------------------------------------ hidden-state files


def read_hidden_states_file(path: str | os.PathLike, timeout: float = 10.0) -> dict:
    """Load a connector file the way the trainer does: wait out the writer's ``.lock`` flock.

    If ``<file>.lock`` exists, poll ``flock(LOCK_EX | LOCK_NB)`` every 0.1 s up to ``timeout``,
    then remove the lock file and read.
    """
    from safetensors.torch import load_file

    path = str(path)
    lock_path = path + ".lock"
    if os.path.exists(lock_path):
        deadline = time.monotonic() + timeout
        fd = os.open(lock_path, os.O_RDONLY)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{lock_path} still locked after {timeout} s") from None
                    time.sleep(0.1)
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock_path)
    return load_file(path)


# ------------------------------------------------------------------------ the server


class VllmServer:
    """A vLLM server subprocess in its own process group, logging to a file.

    Use as a context manager (``with VllmServer(argv, log_path, port) as server:``): it
    waits for ``/health`` and, on exit, kills the whole group; if the body raised (or the
    start failed) the log tail is printed so the failure says why.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_path: str | os.PathLike,
        port: int,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        startup_timeout: float = 300.0,
    ):
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.port = port
        self.host = host
        self.env = server_env(env)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> VllmServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,  # its own process group: stop() kills vLLM's engine workers too
        )
        return self

    def wait_ready(self) -> float:
        """Seconds until ``/health`` answered 200; raises (with the log) on exit or deadline."""
        assert self.proc is not None
        start = time.monotonic()
        deadline = start + self.startup_timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(f"vLLM exited with {code} before becoming ready\n{self.log_tail()}")
            try:
                status, _ = http_get(self.url + "/health", timeout=2)
                if status == 200:
                    return time.monotonic() - start
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"vLLM not ready after {self.startup_timeout:.0f} s\n{self.log_tail()}")
            time.sleep(0.5)

    def metrics(self) -> dict[str, float]:
        status, text = http_get(self.url + "/metrics")
        assert status == 200, f"/metrics -> {status}"
        return parse_metrics(text)

    def post(self, path: str, body: dict, timeout: float = 120.0) -> dict:
        return post_json(self.url + path, body, timeout=timeout)

    def served_model(self) -> str:
        status, text = http_get(self.url + "/v1/models")
        assert status == 200, f"/v1/models -> {status}: {text[:500]}"
        return json.loads(text)["data"][0]["id"]

    def log_tail(self, max_chars: int = 20000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "----- vLLM server log (tail) -----\n" + text[-max_chars:]

    def stop(self, grace: float = 15.0) -> None:
        if self.proc is not None:  # even if the leader exited, its children may live
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            # Whatever of the group is left (engine core, workers) goes now.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> VllmServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()
        if exc_type is not None:
            sys.stderr.write(self.log_tail() + "\n")


@contextlib.contextmanager
def spectool_extraction_server(
    model: str | os.PathLike,
    hidden_states_path: str | os.PathLike,
    log_path: str | os.PathLike,
    *,
    target_layer_ids: Sequence[int] | None = None,
    vllm_args: Sequence[str] = (),
    startup_timeout: float = 300.0,
) -> Iterator[VllmServer]:
    """``spectool vllm launch MODEL --device cpu ... -- --port P ...`` as a ready server."""
    python = vllm_python()
    port = free_port()
    argv = [sys.executable, "-m", "spectool", "vllm", "launch", str(model), "--device", "cpu"]
    argv += ["--vllm-python", python, "--hidden-states-path", str(hidden_states_path)]
    if target_layer_ids is not None:
        argv += ["--target-layer-ids", ",".join(str(k) for k in target_layer_ids)]
    argv += ["--", "--host", "127.0.0.1", "--port", str(port), *vllm_args]
    with VllmServer(argv, log_path, port, startup_timeout=startup_timeout) as server:
        yield server


# ------------------------------------------------------------------------ offline API


OFFLINE_SCRIPT = Path(__file__).resolve().parent / "vllm_offline_generate.py"


def run_offline_generate(
    model: str | os.PathLike,
    prompts: Sequence[Sequence[int]],
    work_dir: str | os.PathLike,
    *,
    llm_kwargs: Mapping | None = None,
    max_tokens: int = 16,
    timeout: float = 480.0,
    env: Mapping[str, str] | None = None,
) -> dict:
    """Greedy generation with ``vllm.LLM`` (enforce_eager) in the vLLM venv, as a subprocess.

    No ports, nothing to clean up but the process group. Returns ``{"outputs": [[ids]...],
    "metrics": {name: value}}`` (metric names as in ``llm.get_metrics()``, ``_total``
    stripped, e.g. ``vllm:spec_decode_num_drafts``). Raises with the log tail on failure.
    """
    python = vllm_python()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_path = work_dir / "offline_spec.json"
    log_path = work_dir / "offline.log"
    spec = {"model": str(model), "prompts": [list(p) for p in prompts], "max_tokens": max_tokens, "llm_kwargs": dict(llm_kwargs or {})}
    spec_path.write_text(json.dumps(spec))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [python, str(OFFLINE_SCRIPT), str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=server_env(env),
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # vLLM's engine/worker processes too
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    text = log_path.read_text(errors="replace")
    results = [line[len("RESULT ") :] for line in text.splitlines() if line.startswith("RESULT ")]
    if code != 0 or not results:
        status = "timed out" if code is None else f"exited with {code}"
        raise AssertionError(f"offline vLLM run {status}\n----- log (tail) -----\n{text[-20000:]}")
    result = json.loads(results[-1])
    result["log"] = text
    return result
