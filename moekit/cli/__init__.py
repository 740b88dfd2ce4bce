"""The ``moekit`` command (also ``python -m moekit``).

Subcommands::

    moekit demo [robot-arm|inverse-sine|tone|tracking] [-o FOLDER]
    moekit fit DATA --target COL [COL ...] [--features COL ...] [--model moe|hme|mdn]
               [--experts K | --select-k 1..8 [--criterion bic|aic|icl|heldout|cv]]
               [--expert linear|poisson|student_t|mlp|logistic] [--depth D] [--branching B] -o MODEL
    moekit fit DATA --formula "y ~ x + I(x**2)" [--gate-formula "~ x"] ... -o MODEL
    moekit predict MODEL DATA -o OUT [--what mean|modes|quantiles|interval|samples|gate]
    moekit evaluate MODEL DATA [--json]
    moekit report MODEL DATA -o report.html
    moekit info MODEL [--json]
    moekit summary MODEL [--se hessian|sandwich] [--level 0.95] [--json | --csv]

DATA is a CSV (``.csv``, ``.tsv``) or Parquet (``.parquet``, ``.pq``) file with a
header row, read with pyarrow.  Text columns used as inputs are categorical:
they are one-hot encoded (the first level, in sorted order, is the reference)
and the levels are recorded in the model file, so that ``predict`` encodes
new data the same way.  With ``--formula`` (MoE, HME), R's formulas (formulaic) choose the experts' and the
gate's columns; the formula's left side names the target, so ``--target``, ``--features`` and
``--categorical`` are then usage errors (the formula says it all); the model file keeps the design, and
``predict``, ``evaluate``, ``report`` and ``info`` evaluate it on new data.  Models saved from Python work
too: one written as formulas, one fitted on a DataFrame with text columns (its encoding), or one with
column names.

Exit codes: 0 success; 2 a usage error (the command line itself is wrong:
an unknown option, a bad value, options that do not fit the model); 1 a data
error (a file is missing, empty, not what it should be, or its contents do
not fit: a missing column, a non-numeric value in a numeric column, a model
file that is not a moekit file); 3 an internal error (a bug: please report
it; ``MOEKIT_DEBUG=1`` shows the traceback).  Every error is one line on
stderr that says what is wrong and how to fix it.

Standard output carries only what a command is asked to print (tables, JSON, ``predict -o -``): while a
command runs, file descriptor 1 is pointed at standard error, so that text printed by numerical libraries
from C (e.g. Intel MKL's complaints about an argument of a LAPACK routine) lands on stderr, and only
``sys.stdout``, the command's own output, reaches the real standard output.

Outputs never overwrite inputs: ``-o`` naming the DATA or MODEL file of the same command is a usage error,
and a ``predict --keep`` column with the name of an output column is too.  An existing file named by ``-o``
is replaced (``fit``, ``predict``, ``report``); ``demo -o FOLDER`` replaces the files it writes there.

Long work shows a progress bar on a terminal (never in a pipe or a file);
``--quiet`` silences everything but errors and requested output.

The package: :mod:`~moekit.cli.parser` (the options; imports nothing heavy, so ``--help`` is fast),
:mod:`~moekit.cli.tables` (CSV and Parquet files, the column schema), one module per command
(:mod:`~moekit.cli.fit`, :mod:`~moekit.cli.predict`, :mod:`~moekit.cli.evaluate` for evaluate and
report, :mod:`~moekit.cli.info`, :mod:`~moekit.cli.summary`, :mod:`~moekit.cli.demos`), loaded when its command
runs, :mod:`~moekit.cli.formulas` (``--formula``: the columns a formula names, the schema of a model written as
formulas) and :mod:`~moekit.cli.common` (what the commands share).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import io
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
        with _output_only_on_stdout():
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


def _flush_c_streams() -> None:
    """Flush C's stdio buffers (text printed from C sits there until flushed, e.g. at exit)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def _output_only_on_stdout():
    """While the command runs, file descriptor 1 points at stderr; ``sys.stdout`` keeps the real stdout.

    Numerical libraries that print from C (Intel MKL's ``DGELSY`` complaint, OpenMP notices) write to file
    descriptor 1, which here leads to stderr; the command's own output goes through ``sys.stdout``, which,
    when it wrote to descriptor 1, is replaced by a stream on a copy of the real stdout.  Where ``sys.stdout``
    is something else (a test's capture), it is left alone.  Where the descriptors cannot be copied (no
    stdout at all), nothing is redirected.
    """
    saved = None
    try:
        sys.stdout.flush()
        _flush_c_streams()
        saved = os.dup(1)
        os.dup2(2, 1)
    except (AttributeError, OSError, ValueError):  # no stdout or no stderr descriptor: nothing to protect
        if saved is not None:
            os.close(saved)
        saved = None
    if saved is None:
        yield
        return
    old = sys.stdout
    try:
        writes_fd1 = old.fileno() == 1
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        writes_fd1 = False
    if writes_fd1:
        sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(os.dup(saved), "w")), encoding=old.encoding,
                                      errors=old.errors, line_buffering=old.line_buffering)
    try:
        yield
    finally:
        _flush_c_streams()  # what C printed during the work goes to stderr, before fd 1 is restored
        os.dup2(saved, 1)
        os.close(saved)
        if writes_fd1:
            replacement, sys.stdout = sys.stdout, old
            with contextlib.suppress(OSError, ValueError):
                replacement.close()
