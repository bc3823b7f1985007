"""The one exception type for bad input: the CLI prints its message and exits non-zero."""


class EdgetuneError(Exception):
    """A problem the user can fix (missing file, unknown model, budget too small, ...).

    The message is shown as is, without a traceback, so it must name the problem and, where
    possible, what to do about it.
    """

    exit_code = 1


class MemoryStop(EdgetuneError):
    """A run stopped, saved, before it would run out of memory: it can resume. Exits 75
    (EX_TEMPFAIL, "try again later"), so a supervisor tells it from bad input."""

    exit_code = 75
