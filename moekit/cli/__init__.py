"""The ``moekit`` command (also ``python -m moekit``).

Subcommands::

    moekit demo [robot-arm|inverse-sine|tone|tracking] [-o FOLDER]
    moekit fit DATA --target COL [COL ...] [--features COL ...] [--model moe|hme|mdn]
               [--experts K | --select-k 1..8] [--expert linear|poisson|student_t|mlp|logistic]
               [--depth D] [--branching B] -o MODEL
    moekit predict MODEL DATA -o OUT [--what mean|modes|quantiles|interval|samples|gate]
    moekit evaluate MODEL DATA [--json]
    moekit report MODEL DATA -o report.html
    moekit info MODEL [--json]

DATA is a CSV (``.csv``, ``.tsv``) or Parquet (``.parquet``, ``.pq``) file with a
header row, read with pyarrow.  Text columns used as inputs are categorical:
they are one-hot encoded (the first level, in sorted order, is the reference)
and the levels are recorded in the model file, so that ``predict`` encodes
new data the same way.

Exit codes: 0 success; 2 a usage error (the command line itself is wrong:
an unknown option, a bad value, options that do not fit the model); 1 a data
error (a file is missing, empty, not what it should be, or its contents do
not fit: a missing column, a non-numeric value in a numeric column, a model
file that is not a moekit file); 3 an internal error (a bug: please report
it; ``MOEKIT_DEBUG=1`` shows the traceback).  Every error is one line on
stderr that says what is wrong and how to fix it.

Long work shows a progress bar on a terminal (never in a pipe or a file);
``--quiet`` silences everything but errors and requested output.

The package: :mod:`~moekit.cli.parser` (the options; imports nothing heavy, so ``--help`` is fast),
:mod:`~moekit.cli.tables` (CSV and Parquet files, the column schema), one module per command
(:mod:`~moekit.cli.fit`, :mod:`~moekit.cli.predict`, :mod:`~moekit.cli.evaluate` for evaluate and
report, :mod:`~moekit.cli.info`, :mod:`~moekit.cli.demos`), loaded when its command runs, and
:mod:`~moekit.cli.common` (what the commands share).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

from .errors import CLIError, DataError, UsageError, one_line
from .parser import build_parser

__all__ = ["CLIError", "DataError", "UsageError", "build_parser", "main"]


def main(argv=None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.argv = argv
        if args.command is None:
            raise UsageError("no command given; try 'moekit demo', or 'moekit --help' for the list of commands")
        # per-command loading: torch, pyarrow and the rest load only when a command runs, not for --help
        module = importlib.import_module(f"{__name__}.{args.command_module}")
        return int(getattr(module, f"cmd_{args.command}")(args) or 0)
    except CLIError as e:
        print(f"moekit: error: {one_line(e)}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("moekit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        with contextlib.suppress(Exception):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the pipe reader left; say nothing more
        return 1
    except Exception as e:  # a bug, not a user mistake
        if os.environ.get("MOEKIT_DEBUG"):
            raise
        print(f"moekit: internal error: {type(e).__name__}: {one_line(e)[:500]} (this is a bug; please report it. "
              "Set MOEKIT_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 3

