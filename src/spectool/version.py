"""The package version, in a module of its own so that library modules can read it without
importing the ``spectool`` package's entry points (which import the engine: a cycle)."""

__version__ = "0.1.0"
