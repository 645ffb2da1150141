"""How each sample's hidden states were served: cache hits, generated, skipped per reason."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Accounting:
    """How samples were served: valid cache hits, generated, skipped per reason (thread-safe)."""

    ok: int = 0
    generated: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # first detailed message per reason
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, status: str, reason: str | None = None, detail: str | None = None) -> None:
        with self._lock:
            if status == "ok":
                self.ok += 1
            elif status == "generated":
                self.generated += 1
            elif status == "skipped":
                self.skipped[reason or "unknown"] += 1
                if detail:
                    self.examples.setdefault(reason or "unknown", detail)
            else:
                raise ValueError(f"unknown status {status!r}")

    def merge(self, other: "Accounting | dict") -> None:
        d = other.as_dict() if isinstance(other, Accounting) else other
        with self._lock:
            self.ok += d["ok"]
            self.generated += d["generated"]
            self.skipped.update(d["skipped"])
            for k, v in d.get("examples", {}).items():
                self.examples.setdefault(k, v)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"ok": self.ok, "generated": self.generated, "skipped": dict(self.skipped), "examples": dict(self.examples)}

    def summary(self) -> str:
        """One line for the end of a run or an epoch, e.g.
        ``hidden states: 90 cached, 8 generated, 2 skipped (missing: 2)``."""
        d = self.as_dict()
        skipped = sum(d["skipped"].values())
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(d["skipped"].items()))
        return f"hidden states: {d['ok']} cached, {d['generated']} generated, {skipped} skipped" + (f" ({reasons})" if reasons else "")

    def metrics(self, prefix: str = "hidden_states") -> dict[str, float]:
        """Counts as metrics for the sinks: ``{prefix}/cached``, ``/generated``, ``/skipped``, ``/skipped/<reason>``."""
        d = self.as_dict()
        out = {f"{prefix}/cached": float(d["ok"]), f"{prefix}/generated": float(d["generated"]), f"{prefix}/skipped": float(sum(d["skipped"].values()))}
        out.update({f"{prefix}/skipped/{k}": float(v) for k, v in d["skipped"].items()})
        return out

    def __getstate__(self) -> dict:
        return self.as_dict()

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self.merge(state)
