"""Standard output carries only the command's output: text that numerical libraries print from C during the
work (Intel MKL's ``DGELSY`` complaint, for one) goes to stderr, never into a table or JSON on stdout."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from moekit.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
C_NOISE = "Intel MKL ERROR: Parameter 7 was incorrect on entry to DGELSY."
LIBRARY_TEXT = r"(?i)MKL|DGELS|LAPACK|BLAS|parameter \d+ was incorrect|OpenMP"

# a script that fits, predicts (CSV on stdout) and evaluates while "the linear algebra" prints from C
PROBE = f"""
import ctypes, sys
import moekit.cli
from moekit.estimators import MoERegressor

libc = ctypes.CDLL(None)
fit = MoERegressor.fit

def noisy_fit(self, *a, **k):
    libc.printf({C_NOISE + chr(10)!r}.encode())  # buffered by C's stdio, as MKL's xerbla prints
    return fit(self, *a, **k)

MoERegressor.fit = noisy_fit
sys.exit(moekit.cli.main(sys.argv[1:]))
"""


def _table(path, scale=1.0, n=40):
    rng = np.random.default_rng(0)
    x = rng.normal(size=n)
    y = np.where(x > 0, 2 * x, -x) + 0.1 * rng.normal(size=n)
    path.write_text("x,y\n" + "".join(f"{a * scale!r},{b * scale!r}\n" for a, b in zip(x.tolist(), y.tolist())))
    return path


def _run(args, cwd, probe=True):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("MOEKIT_DEBUG", None)
    cmd = [sys.executable, "-c", PROBE] if probe else [sys.executable, "-m", "moekit"]
    return subprocess.run([*cmd, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_text_printed_from_c_during_the_work_goes_to_stderr(tmp_path):
    _table(tmp_path / "t.csv")
    r = _run(["fit", "t.csv", "-t", "y", "--max-iter", "20", "-o", "m.moekit"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert C_NOISE not in r.stdout and C_NOISE in r.stderr
    assert r.stdout.startswith("fitted MoERegressor")
    r = _run(["predict", "m.moekit", "t.csv", "-o", "-"], tmp_path, probe=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == '"y_mean"' and len(r.stdout.splitlines()) == 41


@pytest.mark.parametrize("scale", [1e154, 1e-200])
def test_extreme_scales_print_no_library_text_on_stdout(tmp_path, scale):
    """Inputs of magnitude 1e154 once made MKL print its DGELSY complaint on stdout under 'moekit fit'."""
    _table(tmp_path / "t.csv", scale)
    for argv in (["fit", "t.csv", "-t", "y", "--max-iter", "20", "-o", "m.moekit"],
                 ["fit", "t.csv", "-t", "y", "--select-k", "1..3", "--max-iter", "20", "-o", "m.moekit"]):
        r = _run(argv, tmp_path, probe=False)
        assert r.returncode in (0, 1), r.stderr
        assert "Traceback" not in r.stderr
        assert not re.search(LIBRARY_TEXT, r.stdout), r.stdout
    if (tmp_path / "m.moekit").exists():
        r = _run(["predict", "m.moekit", "t.csv", "-o", "-"], tmp_path, probe=False)
        assert r.returncode in (0, 1) and not re.search(LIBRARY_TEXT, r.stdout), r.stdout


def test_in_process_the_output_still_reaches_a_captured_stdout(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _table(tmp_path / "t.csv")
    assert main(["fit", "t.csv", "-t", "y", "--max-iter", "20", "-q", "-o", "m.moekit"]) == 0
    capfd.readouterr()
    assert main(["predict", "m.moekit", "t.csv", "-o", "-"]) == 0
    out, _ = capfd.readouterr()
    assert out.splitlines()[0] == '"y_mean"' and len(out.splitlines()) == 41
    os.write(1, b"after\n")  # the descriptor is restored after the command
    assert capfd.readouterr().out == "after\n"
