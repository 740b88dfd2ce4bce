"""The error of moekit's model files, and how its messages quote what a file holds."""

from __future__ import annotations

__all__ = ["ModelFileError", "short"]


class ModelFileError(ValueError):
    """A model file cannot be written or read (not a moekit file, damaged, too new, not storable).

    A subclass of ``ValueError``; raised by :func:`save`, :func:`load` and
    :func:`read_info`.

    Parameters
    ----------
    message : str
        What is wrong, naming the file or the parameter that cannot be stored.

    Attributes
    ----------
    args : tuple
        ``(message,)``.

    Examples
    --------
    >>> import os, tempfile
    >>> import moekit
    >>> from moekit.io import ModelFileError
    >>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
    >>> with open(path, "w") as f:
    ...     _ = f.write("not a model")
    >>> try:
    ...     moekit.load(path)
    ... except ModelFileError as e:
    ...     print("not a moekit model file" in str(e), isinstance(e, ValueError))
    True True
    """

    __module__ = "moekit.io"  # where users import it from


def short(v, n: int = 60) -> str:
    """``repr(v)``, cut to ``n`` characters (a hostile file's values can be megabytes long)."""
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."
