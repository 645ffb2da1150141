"""The one exception family users see: a one-line message that names the fix."""


class SpectoolError(Exception):
    """Bad input or state. The CLI prints ``error: <message>`` and exits with ``exit_code``."""

    exit_code = 2


class RunFailed(SpectoolError):
    """The run itself failed (non-finite loss, nothing trained on): exit status 1, not 2,
    so scripts can tell a failed run from a refused command line."""

    exit_code = 1
