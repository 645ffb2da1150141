"""Helpers shared by the hidden-state tests: a processed dataset and a fake vLLM server."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch

from spectool.data.dataset import ProcessedDataset, write_processed_dataset
from spectool.data.hidden_states.files import save_hidden_states

AUX = [2, 4, 5]  # tiny_llama defaults; files hold layers [2, 4, 5, 8]
H = 64


def make_dataset(path: Path, lengths: list[int], vocab: int = 300, seed: int = 0) -> ProcessedDataset:
    rng = np.random.default_rng(seed)
    samples = []
    for n in lengths:
        ids = rng.integers(3, vocab, size=n).tolist()
        mask = [0] * (n // 2) + [1] * (n - n // 2)
        samples.append((ids, mask))
    write_processed_dataset(path, samples, {"verifier": "tiny"})
    return ProcessedDataset(path)


def fake_hidden(token_ids, num_slots: int = len(AUX) + 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + len(token_ids))
    return torch.randn(len(token_ids), num_slots, H, generator=g).to(torch.bfloat16)


def write_file(path: Path, token_ids, hidden: torch.Tensor | None = None) -> None:
    save_hidden_states(path, fake_hidden(token_ids) if hidden is None else hidden, np.asarray(token_ids))


class FakeVllm:
    """An http.server on 127.0.0.1 speaking the completions + file protocol; ``mode`` picks a failure.

    Files are named as vLLM names them: ``cmpl-{X-Request-Id}-0-{suffix}.safetensors``.
    ``foreign`` (with ``mode="foreign"``) is a path the reply names instead of its own file.
    """

    def __init__(self, storage: Path, model: str, mode: str = "good", lock_hold: float = 0.0, foreign: Path | None = None,
                 die_after: int | None = None):
        self.storage, self.model, self.mode, self.lock_hold, self.foreign = storage, model, mode, lock_hold, foreign
        self.die_after = die_after  # answer this many completions well, then only HTTP 500
        self.requests = 0
        storage.mkdir(parents=True, exist_ok=True)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, code: int, body: dict) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": fake.model, "object": "model"}]})

            def do_POST(self):
                fake.requests += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._send(*fake.reply(body, self.headers.get("X-Request-Id") or uuid.uuid4().hex))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def reply(self, body: dict, request_id: str) -> tuple[int, dict]:
        ids = list(body["prompt"])
        if self.mode == "timeout":
            time.sleep(1.0)
        if self.mode == "500" or (self.die_after is not None and self.requests > self.die_after):
            return 500, {"error": "engine dead"}
        if self.mode == "400":
            return 400, {"error": "bad request"}
        path = self.storage / f"cmpl-{request_id}-0-{uuid.uuid4().hex[:8]}.safetensors"
        if self.mode == "outside":
            path = self.storage.parent / f"elsewhere-{uuid.uuid4().hex}.safetensors"
        if self.mode in ("foreign", "directory"):
            named = self.foreign if self.mode == "foreign" else self.storage
            return 200, {"choices": [{"text": "x", "prompt_token_ids": ids}], "kv_transfer_params": {"hidden_states_path": str(named)}}
        echo = ids if self.mode != "echo" else ids[:-1] + [ids[-1] + 1]
        hidden = fake_hidden(ids)
        if self.mode == "nan":
            hidden[0, 0, 0] = float("nan")
        if self.mode == "layers":
            hidden = fake_hidden(ids, num_slots=3)
        if self.lock_hold:
            self._write_locked(path, ids, hidden)
        else:
            write_file(path, ids, hidden)
        return 200, {"choices": [{"text": "x", "prompt_token_ids": echo}], "kv_transfer_params": {"hidden_states_path": str(path)}}

    def _write_locked(self, path: Path, ids, hidden) -> None:
        """vLLM's async writer: hold an exclusive flock on <file>.lock while writing."""
        lock = path.with_name(path.name + ".lock")
        fd = os.open(lock, os.O_CREAT | os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)

        def later():
            time.sleep(self.lock_hold)
            write_file(path, ids, hidden)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

        threading.Thread(target=later, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
