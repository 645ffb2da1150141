"""Thin Typer layer: one module per command group; parse, call the library, render with rich.

Keep imports of torch/transformers inside the command functions so that ``--help`` and
shell completion stay fast.
"""
