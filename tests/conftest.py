"""Shared fixtures: tiny real verifiers built offline (no hub downloads, ever)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """An 8-layer, hidden-64 Llama verifier with tied embeddings and a ChatML tokenizer (untrained)."""
    from spectool.embedded import build_tiny_verifier

    return build_tiny_verifier(tmp_path_factory.mktemp("verifiers") / "llama", "llama", pretrain_steps=0)


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    """An 8-layer, hidden-64 Qwen3 verifier with untied lm_head (untrained)."""
    from spectool.embedded import build_tiny_verifier

    return build_tiny_verifier(
        tmp_path_factory.mktemp("verifiers") / "qwen3", "qwen3", pretrain_steps=0, tie_word_embeddings=False
    )


@pytest.fixture(scope="session")
def pretrained_llama(tmp_path_factory) -> Path:
    """The tiny Llama briefly pretrained on the synthetic chats: peaked, learnable targets
    (an untrained verifier's targets are near-ties that only memorisation can follow)."""
    from spectool.embedded import build_tiny_verifier

    return build_tiny_verifier(tmp_path_factory.mktemp("verifiers") / "llama-pretrained", "llama", pretrain_steps=200)
