"""The one exception family users see: a one-line message that names the fix."""


class SpectoolError(Exception):
    """Bad input or state. The CLI prints ``error: <message>`` and exits with status 2."""
