"""Offline generation of the whole hidden-state cache (``spectool data generate``).

Resumable: existing files are validated and kept when valid, regenerated when not.
vLLM requests run concurrently in threads (the server batches them); the local verifier
runs length-sorted batches. Progress goes through a callback the caller supplies.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spectool.data.hidden_states.files import (
    GenerationError,
    InvalidHiddenStates,
    cache_file,
    SourceFailure,
    place_file,
    read_hidden_states,
    save_hidden_states,
)

Progress = Callable[[int, int], None]  # (samples done, samples total)


@dataclass
class GenerateReport:
    """What ``data generate`` did: kept valid files, generated, replaced invalid, failed per reason."""

    total: int = 0
    ok: int = 0
    generated: int = 0
    replaced_invalid: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    skipped: int = 0  # outside --max-samples
    aborted: int = 0  # not attempted after too many consecutive errors

    def fail(self, kind: str, detail: str) -> None:
        self.failed[kind] += 1
        self.examples.setdefault(kind, detail)


def scan_cache(dataset: Any, indices: Sequence[int], cache_dir: Path, num_slots: int, hidden_size: int, report: GenerateReport) -> list[int]:
    """Indices that need generating; valid files count as ok, invalid ones are noted."""
    todo = []
    for i in indices:
        try:
            read_hidden_states(cache_file(cache_dir, i), dataset[i].input_ids, num_slots, hidden_size)
            report.ok += 1
        except FileNotFoundError:
            todo.append(i)
        except InvalidHiddenStates as exc:
            report.replaced_invalid[exc.kind] += 1
            todo.append(i)
    return todo


def generate_cache(
    dataset: Any,
    cache_dir: str | Path,
    generator: Any,
    num_slots: int,
    hidden_size: int,
    *,
    max_samples: int | None = None,
    concurrency: int = 32,
    batch_tokens: int = 8192,
    max_consecutive_errors: int | None = None,
    progress: Progress | None = None,
) -> GenerateReport:
    """Fill ``cache_dir`` with ``hs_{i}.safetensors`` for every sample (resumable)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    n = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    report = GenerateReport(total=len(dataset), skipped=len(dataset) - n)
    todo = scan_cache(dataset, range(n), cache_dir, num_slots, hidden_size, report)
    done = n - len(todo)
    progress = progress or (lambda _d, _t: None)
    progress(done, n)
    if generator.needs_main_process:
        _generate_batched(dataset, todo, cache_dir, generator, batch_tokens, report, lambda k: progress(done + k, n))
    else:
        _generate_threaded(dataset, todo, cache_dir, generator, concurrency,
                           max_consecutive_errors if max_consecutive_errors is not None else max(concurrency, 1),
                           report, lambda k: progress(done + k, n))
        clean_up = getattr(generator, "clean_up", None)
        if clean_up is not None:  # nothing in flight now: remove what timed-out requests left
            clean_up()
    return report


def _generate_threaded(dataset, todo, cache_dir, client, concurrency, max_consecutive, report, progress) -> None:
    """Concurrent vLLM requests; each reply's file is validated by the client, then moved into the cache."""
    consecutive = 0
    finished = 0

    def one(i: int) -> None:
        sample = dataset[i]
        gen = client.generate(sample)
        target = cache_file(cache_dir, i)
        if gen.path is not None:
            place_file(gen.path, target)
        else:
            save_hidden_states(target, gen.hidden_states, sample.input_ids)

    pending_iter = iter(todo)
    window = 2 * max(concurrency, 1)
    aborting = False
    with ThreadPoolExecutor(max_workers=max(concurrency, 1)) as pool:
        running: dict = {}

        def refill() -> None:
            for i in pending_iter:
                running[pool.submit(one, i)] = i
                if len(running) >= window:
                    break

        refill()
        while running:
            finished_now, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished_now:
                running.pop(fut)
                if fut.cancelled():
                    report.aborted += 1
                    continue
                exc = fut.exception()
                finished += 1
                if exc is None:
                    report.generated += 1
                    consecutive = 0
                elif isinstance(exc, (GenerationError, InvalidHiddenStates)):
                    report.fail(exc.kind, exc.detail)
                    consecutive += 1
                elif isinstance(exc, SourceFailure):  # the server is dead: stop now
                    report.fail("server failed", str(exc))
                    consecutive = max_consecutive
                else:
                    report.fail(type(exc).__name__, str(exc))
                    consecutive += 1
                progress(finished)
            if not aborting and consecutive >= max_consecutive:
                aborting = True
                report.aborted += sum(1 for _ in pending_iter)
                for fut in running:
                    fut.cancel()
            if not aborting:
                refill()


def _generate_batched(dataset, todo, cache_dir, generator, batch_tokens, report, progress) -> None:
    """In-process verifier: length-sorted batches of about ``batch_tokens`` padded tokens."""
    order = sorted(todo, key=lambda i: int(dataset.lengths[i]))
    finished = 0
    batch: list[int] = []

    def flush() -> None:
        nonlocal finished
        samples = [dataset[i] for i in batch]
        try:
            outs = generator.generate_batch([s.input_ids for s in samples])
        except (RuntimeError, ValueError) as exc:
            for _ in samples:
                report.fail("local forward failed", f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        else:
            for s, hidden in zip(samples, outs):
                save_hidden_states(cache_file(cache_dir, s.index), hidden, s.input_ids)
                report.generated += 1
        finished += len(samples)
        progress(finished)
        batch.clear()

    for i in order:
        if batch and (len(batch) + 1) * int(dataset.lengths[i]) > batch_tokens:
            flush()
        batch.append(i)
    if batch:
        flush()
