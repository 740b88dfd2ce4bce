"""The command line's errors: each is reported as one line on stderr with an exit code."""

from __future__ import annotations

__all__ = ["CLIError", "DataError", "UsageError", "one_line"]


class CLIError(Exception):
    """An error reported as one line with an exit code."""

    code = 1


class UsageError(CLIError):
    """The command line itself is wrong (exit code 2)."""

    code = 2


class DataError(CLIError):
    """A file, or what it holds, does not fit (exit code 1)."""

    code = 1


def one_line(msg) -> str:
    """A message on one line (runs of white space, newlines included, become one space)."""
    return " ".join(str(msg).split())
