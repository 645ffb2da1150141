"""spectool: train speculative-decoding draft models that vLLM serves as they are."""

__version__ = "0.1.0"
