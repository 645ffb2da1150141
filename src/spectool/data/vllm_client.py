"""Client of a vLLM server started for hidden-state extraction (standard library HTTP only).

Protocol (speculators-formats.md §3): ``GET {endpoint}/models`` once (the served id must
equal --verifier-name-or-path); per sample ``POST {endpoint}/completions`` with the token
ids as prompt and ``max_tokens: 1``; the reply's ``kv_transfer_params.hidden_states_path``
names the file vLLM wrote, guarded by ``<file>.lock`` (exclusive flock while writing).

Connection errors, timeouts and HTTP 5xx are retried with exponential backoff; a
malformed reply (4xx, token echo mismatch, a path outside the directory, a bad file) is
not: retrying cannot fix it. After ``max_consecutive_failures`` failed requests in a row
(retries count) the client raises :class:`VllmDeadError`: the run stops instead of skipping every sample.

Each request carries its own id (``X-Request-Id``), which vLLM puts in the file's name.
The client moves or deletes only a file whose name holds the id it sent, never a file a
reply merely names (with the vLLM directory equal to the cache directory, that could be
another sample's valid cache file). Files of requests that timed out are removed when
they appear (checked before every request, and by :meth:`VllmClient.clean_up` between
epochs and at the end).
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import re
import socket
import threading
import time
import uuid
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from spectool.data.hidden_states.files import Generated, GenerationError, HiddenStateError, InvalidHiddenStates, SourceFailure, read_hidden_states
from spectool.data.hidden_states.layers import SERVER_LAYERS_FILE, extraction_ids, read_server_record

DEFAULT_VLLM_HIDDEN_STATES_PATH = "/tmp/hidden_states"
DEFAULT_MAX_CONSECUTIVE_FAILURES = 5
_CACHE_NAME = re.compile(r"hs_\d+\.safetensors")


def _names_request(name: str, request_id: str) -> bool:
    """Whether file ``name`` is the file of ``request_id`` (vLLM: ``cmpl-{id}-0[-suffix].safetensors``);
    ``...-1`` must not claim the file of ``...-10``, nor may any request claim a cache file."""
    return re.search(re.escape(request_id) + r"(?![0-9])", name) is not None and not _CACHE_NAME.fullmatch(name)


class TransientError(GenerationError):
    """Connection refused/reset, timeout, HTTP 5xx: worth retrying."""


class VllmUnreachable(GenerationError):
    """The handshake could not reach the server at all."""


class InvalidResponseError(GenerationError):
    """A reply that retrying cannot fix."""


class VllmDeadError(SourceFailure):
    """Too many requests in a row failed: the server is dead or hanging; the run must stop."""


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
        num_layers: int | None = None,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
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
        self.wanted_layer_ids = extraction_ids(aux_layer_ids, num_layers) if num_layers is not None else None
        self.extracted_layer_ids: list[int] | None = None  # from the server's record, at handshake
        self.max_consecutive_failures = max_consecutive_failures
        self._tag = f"spectool-{uuid.uuid4().hex[:12]}"
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._failures = 0
        self._abandoned: dict[str, float] = {}  # request id -> when it timed out
        self._next_reap = 0.0

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_lock"], state["_counter"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._counter = itertools.count()

    # ---- HTTP -------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict | None, timeout: float, request_id: str | None = None) -> Any:
        """One HTTP exchange; maps failures onto transient / invalid errors."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if request_id is not None:
            headers["X-Request-Id"] = request_id
        req = urllib.request.Request(f"{self.endpoint}{path}", data=data, method=method, headers=headers)
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
        self.check_server_layers()
        return self.model

    def check_server_layers(self) -> None:
        """Refuse a server that extracts other layer ids than the draft needs (from its record)."""
        self.extracted_layer_ids = read_server_record(self.hidden_states_dir)
        if self.extracted_layer_ids is None or self.wanted_layer_ids is None:
            return
        if self.extracted_layer_ids != self.wanted_layer_ids:
            got = " ".join(map(str, self.extracted_layer_ids[:-1]))
            want = " ".join(map(str, self.wanted_layer_ids[:-1]))
            raise HiddenStateError(
                f"vLLM at {self.endpoint} extracts layers {self.extracted_layer_ids} ({self.hidden_states_dir / SERVER_LAYERS_FILE}), "
                f"the draft needs {self.wanted_layer_ids}: relaunch it with `spectool vllm launch --target-layer-ids {want}` "
                f"or train with --target-layer-ids {got}"
            )

    def request(self, token_ids: Sequence[int]) -> Path:
        """POST the prompt (retried on transient errors); returns the checked path of vLLM's file."""
        self.reap()
        ids = [int(t) for t in token_ids]
        body = {"model": self.model, "prompt": ids, "max_tokens": 1, "return_token_ids": True}
        sent: list[str] = []

        def attempt() -> Any:
            request_id = f"{self._tag}-{os.getpid()}-{next(self._counter)}"
            sent.append(request_id)
            try:
                return self._call("POST", "/completions", body, self.request_timeout, request_id)
            except TransientError as exc:
                if exc.kind == "timeout":  # vLLM may still write this request's file later
                    with self._lock:
                        self._abandoned[request_id] = time.monotonic()
                self._failed(exc)
                raise

        reply = self._retrying()(attempt)
        try:
            echo = reply["choices"][0].get("prompt_token_ids")
            params = reply.get("kv_transfer_params") or {}
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise InvalidResponseError("malformed reply", f"completions reply lacks choices[0]: {str(reply)[:200]}") from exc
        raw_path = params.get("hidden_states_path") if isinstance(params, dict) else None
        if not raw_path or not isinstance(raw_path, str):
            raise InvalidResponseError("no hidden states path", "reply has no kv_transfer_params.hidden_states_path: was vLLM started with `spectool vllm launch`?")
        path = self._own_file(Path(raw_path), sent[-1])
        self._wait_for_lock(path)
        if echo is None or list(echo) != ids:
            path.unlink(missing_ok=True)  # hidden states of some other prompt: never keep them
            raise InvalidResponseError("token echo mismatch", f"vLLM echoed {len(echo or [])} prompt token ids that differ from the {len(ids)} sent (tokenizer or truncation drift)")
        if not path.is_file():
            raise InvalidResponseError("file not found", f"{path} is not a file here: vLLM and the trainer must share the filesystem")
        return path

    def _own_file(self, raw: Path, request_id: str) -> Path:
        """The reply's path if it is this request's file directly in the vLLM directory, else refuse it untouched."""
        directory = self.hidden_states_dir.resolve()
        path = raw.resolve()
        if not path.is_relative_to(directory):
            raise InvalidResponseError("path outside directory", f"vLLM wrote {raw}, outside {self.hidden_states_dir}: pass the directory vLLM writes to")
        if path.parent != directory or not path.name.endswith(".safetensors"):
            raise InvalidResponseError("not a request file", f"vLLM named {raw}, not a .safetensors file directly in {self.hidden_states_dir}: nothing was touched")
        if not _names_request(path.name, request_id):
            raise InvalidResponseError(
                "foreign file",
                f"vLLM named {raw}, which is not the file of request {request_id}: nothing was moved or deleted "
                "(is another server writing into this directory?)",
            )
        return path

    def reap(self) -> None:
        """Delete the files of timed-out requests that have appeared since (complete, lock released).

        One pass over the directory at most every few seconds: it may be the cache itself,
        holding a file per sample."""
        now = time.monotonic()
        with self._lock:
            if not self._abandoned or now < self._next_reap:
                return
            self._next_reap = now + min(5.0, self.request_timeout)
            pending = dict(self._abandoned)
        found: set[str] = set()
        if not self.hidden_states_dir.is_dir():
            return
        with os.scandir(self.hidden_states_dir) as entries:
            for entry in entries:
                owner = next((rid for rid in pending if _names_request(entry.name, rid)), None) if entry.name.endswith(".safetensors") else None
                if owner is not None:
                    path = Path(entry.path)
                    self._wait_for_lock(path)
                    path.unlink(missing_ok=True)
                    found.add(owner)
        expiry = 10 * (self.request_timeout + self.lock_timeout)  # a server that never writes it
        with self._lock:
            for rid, since in pending.items():
                if rid in found or now - since > expiry:
                    self._abandoned.pop(rid, None)

    def clean_up(self) -> None:
        """Remove every file this client's requests left behind (timed out, then written).

        Safe only while none of its requests is in flight (between epochs, at the end): the
        files of answered requests are gone by then, so whatever still carries this client's
        tag is an orphan. Covers DataLoader workers too (forked copies share the tag)."""
        self.reap()
        for path in self.hidden_states_dir.glob(f"*{self._tag}-*.safetensors"):
            if not _CACHE_NAME.fullmatch(path.name):
                self._wait_for_lock(path)
                path.unlink(missing_ok=True)

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
        """Hidden states of one sample from vLLM, validated like the cache; bad files (ours) are deleted.

        Raises :class:`VllmDeadError` once ``max_consecutive_failures`` requests in a row failed.
        """
        try:
            path = self.request(sample.input_ids)
            try:
                hidden = read_hidden_states(path, sample.input_ids, self.num_slots, self.hidden_size)
            except InvalidHiddenStates as exc:
                path.unlink(missing_ok=True)
                raise InvalidResponseError(f"bad file ({exc.kind})", exc.detail) from exc
        except InvalidResponseError as exc:
            self._failed(exc)
            raise
        with self._lock:
            self._failures = 0
        return Generated(hidden, path)

    def _failed(self, exc: GenerationError) -> None:
        """Count a failed request (each retry counts); raise VllmDeadError at the limit."""
        with self._lock:
            self._failures += 1
            count = self._failures
        if count >= self.max_consecutive_failures:
            raise VllmDeadError(
                f"vLLM at {self.endpoint} failed {count} requests in a row (last: {exc.kind}: {exc.detail}): "
                "check the server (its log, GET /models), then resume: `spectool resume` or re-run `spectool data generate`"
            ) from exc
