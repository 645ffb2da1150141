"""The algorithm plug-in interface: everything the engine, ``eval``, ``init`` and ``inspect``
need to know about one speculator algorithm, so that none of them branches on its type.

A plug-in is a package ``models/<algorithm>/`` whose ``__init__.py`` defines ``PLUGIN``, an
instance of a :class:`SpeculatorPlugin` subclass; the registry (``models/registry.py``)
finds it by its ``speculators_model_type``. See ``_notes/PLUGIN.md`` / the README.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from spectool.models.config import SpeculatorConfig
from spectool.models.contract import common_problems

if TYPE_CHECKING:
    from spectool.config import RunConfig
    from spectool.models.base import DraftModel
    from spectool.verifier import VerifierInfo

Sample = dict[str, torch.Tensor]
SampleTransform = Callable[[Sample], "Sample | None"]
# proposer(aux [n, A*H] of x_0..x_{n-1}, tokens [n+1] = x_0..x_n, k) -> up to k target ids
Proposer = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
Tensors = dict[str, torch.Tensor]


class SpeculatorPlugin:
    """One algorithm. Subclasses set the class variables and override what differs."""

    name: ClassVar[str]  # speculators_model_type (= config_class.speculator_type)
    config_class: ClassVar[type[SpeculatorConfig]]
    model_class: ClassVar[type["DraftModel"]]
    options_group: ClassVar[str | None] = None  # the RunConfig section holding its run options

    # ---- init / build ---------------------------------------------------------------
    def decoder_model_type(self, cfg: "RunConfig") -> str:
        """model_type of the synthesised draft decoder (llama or qwen3)."""
        return self.config_class.decoder_model_type or cfg.model.draft_arch

    def spec_fields(self, cfg: "RunConfig", info: "VerifierInfo") -> dict[str, Any]:
        """The algorithm's SpeculatorConfig fields taken from the run options (``spectool init``)."""
        return {}

    # ---- training -------------------------------------------------------------------
    sample_transform: ClassVar[SampleTransform | None] = None  # per-sample alignment before packing

    def train_kwargs(self, cfg: "RunConfig", spec: SpeculatorConfig, *, generator: torch.Generator) -> dict[str, Any]:
        """Keyword arguments of ``forward_train`` (besides ``batch`` and ``attn_impl``) for a
        training step; ``generator`` is the step's derived RNG (resume-exact)."""
        return {}

    def eval_kwargs(self, spec: SpeculatorConfig, *, generator: torch.Generator) -> dict[str, Any]:
        """``forward_train`` keyword arguments that measure a saved draft as it will be served
        (simulated acceptance in ``spectool eval``)."""
        return {}

    def metric_names(self, spec: SpeculatorConfig) -> list[str]:
        """Names of the metrics ``forward_train`` returns (TensorBoard layout, tests)."""
        return ["loss"]

    # ---- eval -----------------------------------------------------------------------
    def max_speculative_tokens(self, spec: SpeculatorConfig) -> int | None:
        """Most tokens one proposal can hold (None: any, a chain); ``spectool eval`` drafts
        ``spec.speculative_tokens`` unless told otherwise."""
        return None

    def proposer(self, draft: "DraftModel") -> Proposer:
        """The greedy proposer ``spectool eval`` decodes with (the model's ``propose``)."""

        def propose(aux: torch.Tensor, tokens: torch.Tensor, k: int) -> torch.Tensor:
            return draft.propose(aux.to(draft.lm_head.weight.dtype), tokens, k)

        return propose

    # ---- inspect ----------------------------------------------------------------------
    def summary(self, spec: SpeculatorConfig) -> dict[str, Any]:
        """Algorithm fields shown by ``spectool inspect``."""
        return {}

    def checkpoint_problems(self, spec: SpeculatorConfig, tensors: Tensors, verifier_layers: int | None) -> list[str]:
        """Every invariant of the saved weights beyond names/shapes/dtypes (one line each).
        ``verifier_layers`` is the verifier's layer count when known (aux ids must lie in
        [0, L]). The base checks what every algorithm shares."""
        return common_problems(spec, tensors, verifier_layers)
