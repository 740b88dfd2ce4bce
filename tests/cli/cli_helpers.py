"""Running the command in tests: in a fresh interpreter, or in-process with captured output."""

import os
import subprocess
import sys

from moekit.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(*args, cwd):
    """``python -m moekit ARGS`` in ``cwd``: ``(exit code, stdout, stderr)``."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("MOEKIT_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "moekit", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr


def run_main(argv, capsys):
    """``moekit.cli.main(argv)`` with pytest's ``capsys``: ``(exit code, stdout, stderr)`` of this call alone."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err
