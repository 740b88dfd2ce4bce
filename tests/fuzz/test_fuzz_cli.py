"""Property-based tests of the command line: random command lines over small random CSV files.

Each example writes a small table (random column names, some awkward; columns of any scale from 1e-300 to
1e300, constant, with NaN or inf cells, integers or text) and a model file into a fresh folder, runs a random
``moekit fit``, ``predict``, ``evaluate`` or ``info`` command line (random options, valid or not, and random
values) through ``moekit.cli.main``, and checks what the command line documents:

- the exit code is 0 (success), 1 (a data error) or 2 (a usage error), never 3 (a bug);
- a failure is one line ``moekit: error: ...`` on stderr and there is no traceback;
- stdout (the file descriptor, so text printed from C counts) carries no numerical library's text;
- nothing is written but the requested output (``-o``), and no input file changes.
"""

import csv
import hashlib
import os
import re
import shutil

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from moekit.cli import main

pytestmark = pytest.mark.filterwarnings("ignore")

NAMES = ["x0", "x1", "y", "y2", "id", "grp", "y_mean", "naïve col", "a,b", 'q"uote', " ", "p_a"]
SCALES = [1e-300, 1e-200, 1e-12, 1.0, 1.0, 1.0, 1.0, 1e12, 1e154, 1e300]
KINDS = ["normal"] * 6 + ["constant", "nan", "inf", "int", "text"]
LIBRARY_TEXT = re.compile(r"(?i)MKL|DGELS|LAPACK|BLAS|parameter \d+ was incorrect|OpenMP|Traceback")


@st.composite
def tables(draw, ok=False):
    """(column names, columns as lists of str cells) of a small random table; ``ok``: the model's columns x0, x1
    and y, finite numbers (of any scale), so that the commands get past the schema to the work."""
    n = draw(st.integers(2, 30))
    if ok:
        names = ["x0", "x1", "y"]
    else:
        names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    cols = []
    for _ in names:
        kind = draw(st.sampled_from(["normal"] * 4 + ["constant", "int"] if ok else KINDS))
        v = rng.normal(size=n) * draw(st.sampled_from(SCALES))
        if kind == "constant":
            v = np.full(n, v[0])
        elif kind == "nan":
            v[rng.integers(n)] = np.nan
        elif kind == "inf":
            v[rng.integers(n)] = np.inf
        if kind == "int":
            cells = [str(int(a)) for a in rng.integers(-3, 4, size=n)]
        elif kind == "text":
            cells = [str(a) for a in rng.choice(["a", "b", "c"], size=n)]
        else:
            cells = ["" if np.isnan(a) else repr(float(a)) for a in v]
        cols.append(cells)
    return names, cols


def _write_csv(path, names, cols):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        w.writerows(zip(*cols))


def _files(folder) -> dict:
    """Every file under the folder, by relative path, with its digest."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


COUNTS = (["1", "2", "3"], ["-1", "0", "x", "2.5"])
LEVELS = (["0.9", "0.5", "0.1", "0.99", "1e-300"], ["0", "1", "2", "-0.1", "nan", "inf", "x"])
OUTPUTS = (["out.csv", "out.tsv", "out.parquet", "-", "sub/../out.csv"],
           ["out.json", "out.moekit", "data.csv", "model.moekit", "no/such/folder/out.csv"])
MODEL_OUTPUTS = (["out.moekit", "sub/out.model", "model.moekit"], ["data.csv", "no/such/folder/out.moekit"])


@st.composite
def fit_argv(draw, ok):
    """With ``ok``, only valid values (the command gets to the fitting); else any value."""

    def pick(choices, rare=False):
        """A value from the valid choices (and, unless ``ok``, the invalid ones); None if a rare option is left out."""
        if rare and draw(st.integers(0, 3)) != 0:
            return None
        return draw(st.sampled_from(choices[0] if ok else choices[0] + choices[1]))

    argv = ["fit", pick((["data.csv"], ["missing.csv", "model.moekit"]))]
    argv += ["--target", *(draw(st.sampled_from([["y"], ["x1"], ["y", "x1"]])) if ok else
                           draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=2)))]
    argv += ["--max-iter", pick((["1", "2", "3"], ["0"]))]  # always small: the fuzz must stay fast
    if not ok and draw(st.booleans()):
        argv += ["--features", *draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3))]
    model = pick((["moe", "moe", "hme", "mdn"], ["svm"]))
    argv += ["--model", model]
    size = draw(st.sampled_from(["default", "experts", "select-k"] + ([] if ok else ["both"])))
    if size in ("experts", "both"):
        argv += ["--experts", pick(COUNTS)]
    if size in ("select-k", "both"):
        argv += [pick((["--select-k=1..2", "--select-k=2,3"],
                       ["--select-k=0..2", "--select-k=1..99999999", "--select-k=3..1", "--select-k=a"]))]
        crit = pick((["bic", "aic", "icl", "heldout", "cv"], []), rare=True)
        argv += ["--criterion", crit] if crit else []
    if model == "hme":
        depth = pick((["1", "2"], ["0", "x"]), rare=True)
        argv += ["--depth", depth] if depth else []
    if model != "mdn":
        n_init = pick(COUNTS, rare=True)
        argv += ["--n-init", n_init] if n_init else []
    for option, choices in (("--expert", (["linear", "student_t"], ["poisson", "logistic", "mlp"])),
                            ("--task", (["auto", "regression"], ["classification"])),
                            ("--categorical", (["x0"], ["grp", "y"])), ("--seed", (["0", "7"], ["-1", "x"]))):
        v = pick(choices, rare=True)
        argv += [option, v] if v else []
    return [*argv, "-q", "-o", pick(MODEL_OUTPUTS)]


@st.composite
def use_argv(draw, ok):
    """predict, evaluate or info; with ``ok``, valid values only."""

    def pick(choices, rare=False):
        if rare and draw(st.integers(0, 3)) != 0:
            return None
        return draw(st.sampled_from(choices[0] if ok else choices[0] + choices[1]))

    cmd = draw(st.sampled_from(["predict", "predict", "evaluate", "info"]))
    model = pick((["model.moekit"], ["data.csv", "missing.moekit"]))
    if cmd == "info":
        return ["info", model, *draw(st.sampled_from([[], ["--json"]]))]
    argv = [cmd, model, pick((["data.csv"], ["missing.csv", "model.moekit"]))]
    level = pick(LEVELS, rare=True)
    argv += ["--level", level] if level else []
    if cmd == "evaluate":
        return argv + draw(st.sampled_from([[], ["--json"]]))
    argv += ["--what", draw(st.sampled_from(["mean", "modes", "quantiles", "interval", "samples", "gate"]))]
    if draw(st.integers(0, 3)) == 0:
        argv += ["--quantiles", *draw(st.lists(st.sampled_from(LEVELS[0] if ok else LEVELS[0] + LEVELS[1]),
                                               min_size=1, max_size=3))]
    if draw(st.integers(0, 3)) == 0:
        argv += ["--keep", *draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=2))]
    for option, choices in (("--n-samples", COUNTS), ("--max-modes", COUNTS), ("--min-weight", LEVELS)):
        v = pick(choices, rare=True)
        argv += [option, v] if v else []
    return [*argv, "-q", "-o", pick(OUTPUTS)]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A model fitted on columns x0, x1 -> y (the names the random tables draw from)."""
    d = tmp_path_factory.mktemp("fuzz-model")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2))
    y = np.where(x[:, 0] > 0, 2 * x[:, 1], -x[:, 1]) + 0.1 * rng.normal(size=40)
    _write_csv(d / "train.csv", ["x0", "x1", "y"], [x[:, 0].tolist(), x[:, 1].tolist(), y.tolist()])
    assert main(["fit", str(d / "train.csv"), "-t", "y", "--max-iter", "20", "-q", "-o", str(d / "m.moekit")]) == 0
    return d / "m.moekit"


def _check_run(argv, table, model_file, tmp_path, capfd):
    folder = tmp_path / f"run{len(os.listdir(tmp_path))}"
    folder.mkdir()
    (folder / "sub").mkdir()
    _write_csv(folder / "data.csv", *table)
    shutil.copy(model_file, folder / "model.moekit")
    before = _files(folder)
    capfd.readouterr()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        rc = main(argv)
    finally:
        os.chdir(cwd)
    out, err = capfd.readouterr()
    assert rc in (0, 1, 2), (argv, rc, err)
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
    assert not LIBRARY_TEXT.search(out), (argv, out)
    errors = [line for line in err.splitlines() if line.startswith("moekit: error: ")]
    assert len(errors) == (rc != 0), (argv, err)
    after = _files(folder)
    out_path = argv[argv.index("-o") + 1] if "-o" in argv else None
    requested = os.path.relpath(os.path.realpath(folder / out_path), os.path.realpath(folder)) if out_path else None
    for path, digest in before.items():  # inputs unchanged; only the requested output may be replaced
        assert after.get(path) == digest or path == requested, (argv, path)
    written = set(after) - set(before)
    assert written <= {requested}, (argv, written)
    if rc != 0:
        assert not written, (argv, written)  # a failed command leaves nothing behind


def cases(argv_strategy):
    """(command line, table): half the examples valid throughout, so that they reach the work."""
    return st.booleans().flatmap(lambda ok: st.tuples(argv_strategy(ok), tables(ok)))


@given(case=cases(fit_argv))
def test_random_fit_command_lines(case, model_file, tmp_path, capfd):
    _check_run(*case, model_file, tmp_path, capfd)


@given(case=cases(use_argv))
def test_random_predict_evaluate_info_command_lines(case, model_file, tmp_path, capfd):
    _check_run(*case, model_file, tmp_path, capfd)
