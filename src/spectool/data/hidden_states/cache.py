"""The cache source: ``hs_{i}`` first, then the ``on_missing`` / ``on_generate`` policies."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from spectool.data.hidden_states.accounting import Accounting
from spectool.data.hidden_states.files import (
    Generated,
    GenerationError,
    Generator,
    HiddenStateError,
    InvalidHiddenStates,
    cache_file,
    check_header,
    place_file,
    read_hidden_states,
    save_hidden_states,
    to_training_sample,
)

log = logging.getLogger(__name__)

ON_MISSING = ("generate", "skip", "warn", "raise")
ON_GENERATE = ("cache", "delete")


class HiddenStateSource:
    """Cache first; a missing or invalid file is handled by the ``on_missing`` policy.

    ``generate`` asks ``generator`` (vLLM or the local verifier); after generation
    ``on_generate`` = ``cache`` moves/writes the file to ``hs_{i}`` (hybrid) and
    ``delete`` removes vLLM's file (pure online).
    """

    def __init__(
        self,
        dataset: Any,
        cache_dir: str | Path,
        num_aux: int,
        hidden_size: int,
        on_missing: str = "generate",
        on_generate: str = "delete",
        generator: Generator | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        if on_missing not in ON_MISSING or on_generate not in ON_GENERATE:
            raise HiddenStateError(f"on_missing must be one of {ON_MISSING} and on_generate one of {ON_GENERATE}")
        if on_missing == "generate" and generator is None:
            raise HiddenStateError("on_missing=generate needs a generator (vLLM endpoint or local verifier)")
        self.dataset = dataset
        self.cache_dir = Path(cache_dir)
        self.num_slots = num_aux + 1
        self.hidden_size = hidden_size
        self.on_missing = on_missing
        self.on_generate = on_generate
        self.generator = generator
        self.warn = warn or log.warning
        self.accounting = Accounting()

    @property
    def needs_main_process(self) -> bool:
        """True when generation runs a model in this process (DataLoader workers would each load it)."""
        return self.on_missing == "generate" and bool(getattr(self.generator, "needs_main_process", False))

    def clean_up(self) -> None:
        """Between epochs and at the end: let the generator remove what it left behind."""
        clean_up = getattr(self.generator, "clean_up", None)
        if clean_up is not None:
            clean_up()

    def check_cache(self) -> None:
        """Before training: refuse a cache entry that is a directory; with ``on_missing=raise``
        also every missing, truncated or mis-shaped file (headers only, so it is cheap)."""
        problems = []
        if self.on_missing == "raise":
            for i in range(len(self.dataset)):
                problem = check_header(cache_file(self.cache_dir, i), int(self.dataset.lengths[i]), self.num_slots, self.hidden_size)
                if problem:
                    problems.append(problem)
        elif self.cache_dir.is_dir():
            problems = [f"{p} is a directory, not a hidden-state file" for p in sorted(self.cache_dir.glob("hs_*.safetensors")) if p.is_dir()]
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            fix = "generate them with `spectool data generate` or pass --on-missing generate" if self.on_missing == "raise" else "remove it"
            raise HiddenStateError(f"{problems[0]}{more}: {fix}")

    def load(self, index: int, accounting: Accounting | None = None) -> dict[str, torch.Tensor] | None:
        return self.get(self.dataset[index], accounting)

    def get(self, sample: Any, accounting: Accounting | None = None) -> dict[str, torch.Tensor] | None:
        """Training tensors of ``sample`` or None when the policy drops it.

        The outcome is counted in ``accounting`` (default: this source's own), so that
        DataLoader workers can hand their counts back with each batch.
        """
        acc = accounting if accounting is not None else self.accounting
        hidden, status, reason, detail = self._hidden(sample)
        acc.add(status, reason, detail)
        if hidden is None:
            return None
        return to_training_sample(sample.input_ids, sample.loss_mask, hidden)

    def _hidden(self, sample: Any) -> tuple[torch.Tensor | None, str, str | None, str | None]:
        path = cache_file(self.cache_dir, sample.index)
        try:
            return read_hidden_states(path, sample.input_ids, self.num_slots, self.hidden_size), "ok", None, None
        except FileNotFoundError:
            kind, detail = "missing", f"{path} does not exist"
        except InvalidHiddenStates as exc:
            kind, detail = f"invalid cache file ({exc.kind})", f"{path}: {exc.detail}"
        if self.on_missing == "raise":
            raise HiddenStateError(f"sample {sample.index}: {kind}: {detail} (--on-missing raise)")
        if self.on_missing in ("skip", "warn"):
            if self.on_missing == "warn":
                self.warn(f"skipping sample {sample.index}: {kind}: {detail}")
            return None, "skipped", kind, detail
        try:
            gen = self.generator.generate(sample)
        except (GenerationError, InvalidHiddenStates) as exc:
            reason = f"generation failed ({exc.kind})"
            self.warn(f"skipping sample {sample.index}: {reason}: {exc.detail}")
            return None, "skipped", reason, exc.detail
        self._after_generate(sample, gen)
        return gen.hidden_states, "generated", None, None

    def _after_generate(self, sample: Any, gen: Generated) -> None:
        target = cache_file(self.cache_dir, sample.index)
        if self.on_generate == "cache":
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            if gen.path is not None:
                place_file(gen.path, target)
            else:
                save_hidden_states(target, gen.hidden_states, sample.input_ids)
        elif gen.path is not None:
            gen.path.unlink(missing_ok=True)
