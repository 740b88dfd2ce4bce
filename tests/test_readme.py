"""The README's code runs as written: each Python block on its own, and its cheap shell commands.

Every ```python block runs in a fresh interpreter (a subprocess in an empty
temporary folder, ``-W error``: any warning fails it), so a block that uses a
name defined in another block, or that warns, fails here.  The set-up's main
job (``moekit demo``) and the commands for one's own table run through
``python -m moekit`` on small files; the demo must converge and warn about
nothing.
"""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from moekit.datasets import load_tonedata

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
# what a block must print (by a line of code it holds), beyond running cleanly
EXPECTED = {"print(moe.score_samples(d.data, d.target).sum())": "145.65",  # the quickstart
            'formula="yn ~ x + I(x**2)"': "Log-likelihood: -642.06",  # statistics
            # model structure: a covariate gate over intercept-only experts beats the best constant-weight mixture
            "expert_features=[], random_state=0).fit(f.data, f.target)": "-869.51",
            'shared_features=[1], covariance="tied"': "Shared by all experts:",
            'expert=["point_mass", "poisson"]': "0: point_mass, 1: poisson"}


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for k in ("PYTHONWARNINGS", "MOEKIT_DEBUG"):
        env.pop(k, None)
    return env


def _python(args, cwd, timeout=600):
    r = subprocess.run([sys.executable, "-W", "error", *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                       timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def test_readme_has_its_blocks_and_set_up_commands():
    assert len(BLOCKS) >= 4
    assert "    pip install torch==2.13.0 -e . && moekit demo\n" in README
    assert '    pip install torch==2.13.0 -e ".[test]" && python -m pytest -n 2\n' in README
    assert re.search(r"The tests take about \d+ minutes", README)  # the expected duration is stated


@pytest.mark.parametrize("i", range(len(BLOCKS)), ids=[f"block{i + 1}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs_on_its_own(i, tmp_path):
    block = BLOCKS[i]
    rc, out, err = _python(["-c", block], cwd=tmp_path)
    assert rc == 0, f"README python block {i + 1} failed on its own:\n{err}"
    assert err == "", f"README python block {i + 1} wrote to stderr (a warning?):\n{err}"
    for code, printed in EXPECTED.items():
        if code in block:
            assert printed in out, f"README python block {i + 1} should print {printed!r}"
    assert os.listdir(tmp_path) == []  # a block writes no files


def test_readme_main_job_moekit_demo_converges_without_warnings(tmp_path):
    cmd = re.search(r"&& (moekit demo)\n", README).group(1)
    rc, out, err = _python(["-m", *shlex.split(cmd)], cwd=tmp_path)
    assert rc == 0, err
    assert "warning" not in err.lower(), err
    page = (tmp_path / "moekit-output" / "demo-robot-arm" / "report.html").read_text(encoding="utf-8")
    assert "did not converge" not in page and "converged" in page
    # the README quotes the demo's numbers: they are the ones it prints
    for label in ("MLP regressor (one averaged answer)", "MDN top branch", "MDN every branch (mean over branches)"):
        quoted = re.search(re.escape(label) + r"\s+([0-9.]+)", README).group(1)
        printed = re.search(re.escape(label) + r"\s+([0-9.]+)", out).group(1)
        assert float(quoted) / 2 <= float(printed) <= 2 * float(quoted), (label, printed, quoted)


def _write_csv(path, x, y):
    with open(path, "w") as f:
        f.write("stretch,y\n")
        f.writelines(f"{float(a)!r},{float(b)!r}\n" for a, b in zip(x, y))


@pytest.mark.slow
def test_readme_own_table_commands_run(tmp_path):
    cmds = re.findall(r"^    (moekit (?:fit|predict|evaluate|report) .*)$", README, flags=re.M)
    assert [c.split()[1] for c in cmds] == ["fit", "predict", "evaluate", "report"]
    d = load_tonedata()
    x, y = d.data[:, 0], d.target
    rng = np.random.default_rng(0)
    test = rng.permutation(len(y))[:40]
    _write_csv(tmp_path / "data.csv", x, y)
    _write_csv(tmp_path / "new.csv", x[test], y[test])
    _write_csv(tmp_path / "test.csv", x[test], y[test])
    for cmd in cmds:
        rc, out, err = _python(["-m", *shlex.split(cmd)], cwd=tmp_path)
        assert rc == 0, f"{cmd}:\n{err}"
    assert {"model.moekit", "pred.csv", "report.html"} <= set(os.listdir(tmp_path))
