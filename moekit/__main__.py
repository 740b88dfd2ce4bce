"""``python -m moekit``: the same as the ``moekit`` command (see :mod:`moekit.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
