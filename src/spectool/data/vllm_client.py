"""Client of a vLLM server started for hidden-state extraction (standard library HTTP only).

Protocol (speculators-formats.md §3): ``GET {endpoint}/models`` once (the served id must
equal --verifier-name-or-path); per sample ``POST {endpoint}/completions`` with the token
ids as prompt and ``max_tokens: 1``; the reply's ``kv_transfer_params.hidden_states_path``
names the file vLLM wrote, guarded by ``<file>.lock`` (exclusive flock while writing).

Connection errors, timeouts and HTTP 5xx are retried with exponential backoff; a
malformed reply (4xx, token echo mismatch, a path outside the directory, a bad file) is
not: retrying cannot fix it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from spectool.data.hidden_states.files import Generated, GenerationError, InvalidHiddenStates, read_hidden_states

DEFAULT_VLLM_HIDDEN_STATES_PATH = "/tmp/hidden_states"


class TransientError(GenerationError):
    """Connection refused/reset, timeout, HTTP 5xx: worth retrying."""


class VllmUnreachable(GenerationError):
    """The handshake could not reach the server at all."""


class InvalidResponseError(GenerationError):
    """A reply that retrying cannot fix."""


class VllmClient:
    """Generates hidden states of one sample at a time; safe to share between threads."""

    name = "vllm"
    needs_main_process = False

    def __init__(
        self,
        endpoint: str,
        model: str,
        aux_layer_ids: Sequence[int],
        hidden_size: int,
        hidden_states_dir: str | Path = DEFAULT_VLLM_HIDDEN_STATES_PATH,
        request_timeout: float = 180.0,
        max_retries: int = 3,
        backoff: float = 2.0,
        lock_timeout: float = 10.0,
    ):
        self.endpoint = endpoint.rstrip("/")
        self.model = model
        self.num_slots = len(aux_layer_ids) + 1
        self.hidden_size = hidden_size
        self.hidden_states_dir = Path(hidden_states_dir)
        self.request_timeout = request_timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.lock_timeout = lock_timeout

    # ---- HTTP -------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict | None, timeout: float) -> Any:
        """One HTTP exchange; maps failures onto transient / invalid errors."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.endpoint}{path}", data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read()[:300].decode(errors="replace").strip() if exc.fp else ""
            if exc.code >= 500:
                raise TransientError("server error", f"HTTP {exc.code} from {path}: {text}") from exc
            raise InvalidResponseError("rejected request", f"HTTP {exc.code} from {path}: {text}") from exc
        except (TimeoutError, socket.timeout) as exc:
            raise TransientError("timeout", f"no reply from {self.endpoint}{path} within {timeout:g} s") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                raise TransientError("timeout", f"no reply from {self.endpoint}{path} within {timeout:g} s") from exc
            raise TransientError("connection error", f"{self.endpoint}{path}: {exc.reason}") from exc
        except (ConnectionError, OSError) as exc:
            raise TransientError("connection error", f"{self.endpoint}{path}: {exc}") from exc
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise InvalidResponseError("malformed reply", f"{path} returned no JSON: {raw[:200]!r}") from exc

    def _retrying(self) -> Retrying:
        return Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=wait_exponential(multiplier=self.backoff, exp_base=2, max=60),
            retry=retry_if_exception_type(TransientError),
            reraise=True,
        )

    # ---- protocol ---------------------------------------------------------------------
    def handshake(self, timeout: float | None = None) -> str:
        """Check the served model id; raises VllmUnreachable or a one-line mismatch error."""
        try:
            reply = self._call("GET", "/models", None, timeout or self.request_timeout)
        except TransientError as exc:
            raise VllmUnreachable(exc.kind, exc.detail) from exc
        except InvalidResponseError as exc:
            raise VllmUnreachable(exc.kind, exc.detail) from exc
        ids = [m.get("id") for m in reply.get("data", []) if isinstance(m, dict)] if isinstance(reply, dict) else []
        if self.model not in ids:
            raise InvalidResponseError(
                "wrong model",
                f"vLLM at {self.endpoint} serves {ids}, not {self.model!r}: start it with --served-model-name {self.model} "
                "(it must equal --verifier-name-or-path)",
            )
        return self.model

    def request(self, token_ids: Sequence[int]) -> Path:
        """POST the prompt (retried on transient errors); returns the checked path of vLLM's file."""
        ids = [int(t) for t in token_ids]
        body = {"model": self.model, "prompt": ids, "max_tokens": 1, "return_token_ids": True}
        reply = self._retrying()(self._call, "POST", "/completions", body, self.request_timeout)
        try:
            echo = reply["choices"][0].get("prompt_token_ids")
            params = reply.get("kv_transfer_params") or {}
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise InvalidResponseError("malformed reply", f"completions reply lacks choices[0]: {str(reply)[:200]}") from exc
        raw_path = params.get("hidden_states_path") if isinstance(params, dict) else None
        if not raw_path:
            raise InvalidResponseError("no hidden states path", "reply has no kv_transfer_params.hidden_states_path: was vLLM started with `spectool vllm launch`?")
        path = Path(raw_path).resolve()
        if not path.is_relative_to(self.hidden_states_dir.resolve()):
            raise InvalidResponseError("path outside directory", f"vLLM wrote {raw_path}, outside {self.hidden_states_dir}: pass the directory vLLM writes to")
        self._wait_for_lock(path)
        if echo is None or list(echo) != ids:
            path.unlink(missing_ok=True)  # hidden states of some other prompt: never keep them
            raise InvalidResponseError("token echo mismatch", f"vLLM echoed {len(echo or [])} prompt token ids that differ from the {len(ids)} sent (tokenizer or truncation drift)")
        if not path.is_file():
            raise InvalidResponseError("file not found", f"{path} does not exist here: vLLM and the trainer must share the filesystem")
        return path

    def _wait_for_lock(self, path: Path) -> None:
        """vLLM holds an exclusive flock on ``<file>.lock`` while it writes; wait for it, then remove it."""
        lock = path.with_name(path.name + ".lock")
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        break  # the reader below validates; a half-written file is caught there
                    time.sleep(0.1)
        finally:
            os.close(fd)
            lock.unlink(missing_ok=True)

    def generate(self, sample: Any) -> Generated:
        """Hidden states of one sample from vLLM, validated like the cache; bad files are deleted."""
        path = self.request(sample.input_ids)
        try:
            hidden = read_hidden_states(path, sample.input_ids, self.num_slots, self.hidden_size)
        except InvalidHiddenStates as exc:
            path.unlink(missing_ok=True)
            raise InvalidResponseError(f"bad file ({exc.kind})", exc.detail) from exc
        return Generated(hidden, path)
