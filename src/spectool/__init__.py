"""spectool: train speculative-decoding draft models that vLLM serves as they are."""

from spectool.version import __version__


def train(cfg, progress=None):
    """Train a draft from a RunConfig (``spectool.engine.train``; imported lazily so the
    CLI's --help stays fast)."""
    from spectool.engine import train as _train

    return _train(cfg, progress)


__all__ = ["__version__", "train"]
