"""spectool: train speculative-decoding draft models that vLLM serves as they are."""

__version__ = "0.1.0"


def train(cfg, progress=None):
    """Train a draft from a RunConfig (``spectool.engine.train``; imported lazily so the
    CLI's --help stays fast)."""
    from spectool.engine import train as _train

    return _train(cfg, progress)
