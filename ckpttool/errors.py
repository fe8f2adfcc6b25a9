"""Errors a user can act on. The CLI prints them as one line and exits 2."""


class CkptError(Exception):
    """Bad input or usage: the message is shown to the user as one line."""


class FormatError(CkptError):
    """A file is not in the format it claims, or is truncated/corrupt."""


class UnsafeError(CkptError):
    """A file references code that would run if it were unpickled for real."""


class CheckFailed(Exception):
    """A requested check failed (exit 1). The report is still printed."""
