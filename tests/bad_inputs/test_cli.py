"""The bad-input catalogue for the command line: each case is a command run for real (``moekit.cli.main``, the
function behind the console script, with its output captured), its exit code and a pattern for its one-line
error on stderr.  Nothing is written, no input changes, and stdout stays empty.

Exit codes (``moekit --help``): 2 a usage error (the command line itself is wrong), 1 a data error (a file, or
what it holds, does not fit), 3 never (a bug).

The cases of issue 16 are here: ``--select-k`` ranges far beyond the data (adversary 8), ``--keep`` of a column
named like an output and ``-o`` over an input (adversary 9), ``--level 2`` (adversary 11), an HME deeper than the
data supports (adversary 7), a constant target under ``--select-k`` (adversary 5), an ID-like text column used
as an input (newcomer), the options that do not fit a model.  The older cases stay where they were written and
count too: ``tests/cli/test_commands.py::test_usage_and_data_errors`` (21 cases: no command, unknown choices, a
missing --target, --select-k syntax, K and --select-k together, a device this machine lacks, options of another
model, a missing column or folder, text in a numeric target, output formats) and
``tests/cli/test_commands.py::test_bad_inputs_give_one_line_and_the_right_exit_code`` (6 cases, in subprocesses:
a missing or empty data file, a missing target column, a non-numeric cell, a data file given as a model file,
an unknown --what), ``test_missing_values_and_header_only`` (2), ``test_unknown_category_at_prediction`` and
``test_model_saved_from_python_needs_feature_names``.  Text printed by numerical libraries on stdout (adversary 1)
is covered by ``tests/cli/test_stdout.py``.

The cases of issue 14 follow: ``moekit summary`` of models without standard errors (an MDN, an MLP expert, a fit
without them), of files that are not models, with bad options; ``moekit fit --formula`` naming a missing column,
clashing with the options that choose columns, not parsing, or using a transform that learns from the data; and a
formula model given --target or data without its column.
"""

import hashlib
import os
import re
import shutil
import time

import numpy as np
import pytest

from moekit.cli import main
from moekit.estimators import MoERegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

N = 60


def _csv(path, columns: dict):
    names = list(columns)
    rows = zip(*(columns[c] for c in names))
    path.write_text(",".join(names) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Data files, a fitted model (also under a .csv name) and links to the data, in one folder."""
    d = tmp_path_factory.mktemp("cli-bad")
    rng = np.random.default_rng(0)
    x = rng.normal(size=N)
    y = np.where(x > 0, 2 * x, -x) + 0.1 * rng.normal(size=N)
    _csv(d / "t.csv", {"x": x.tolist(), "y": y.tolist(), "id": list(range(N))})
    _csv(d / "keep.csv", {"x": x.tolist(), "y": y.tolist(), "y_mean": y.tolist(), "y_lower": y.tolist()})
    _csv(d / "small.csv", {"x": x[:4].tolist(), "y": y[:4].tolist()})
    _csv(d / "const.csv", {"x": x.tolist(), "y": [3.0] * N})
    _csv(d / "country.csv", {"country": [f"c{i}" for i in range(28)], "x": x[:28].tolist(), "y": y[:28].tolist()})
    assert main(["fit", str(d / "t.csv"), "-t", "y", "--features", "x", "--max-iter", "30", "-q",
                 "-o", str(d / "m.moekit")]) == 0
    # models that have no standard errors to show, one written as a formula, and a damaged file
    assert main(["fit", str(d / "t.csv"), "-t", "y", "--features", "x", "--model", "mdn", "-k", "2", "--max-iter", "3",
                 "-q", "-o", str(d / "mdn.moekit")]) == 0
    MoERegressor(n_experts=2, expert="mlp", hidden_layer_sizes=(2,), max_iter=3, random_state=0).fit(
        x[:, None], y).save(d / "mlp.moekit")
    MoERegressor(n_experts=2, max_iter=30, random_state=0, compute_se=False).fit(x[:, None], y).save(d / "nose.moekit")
    assert main(["fit", str(d / "t.csv"), "--formula", "y ~ x", "--max-iter", "30", "-q", "-o", str(d / "f.moekit")]) == 0
    raw = (d / "m.moekit").read_bytes()
    (d / "damaged.moekit").write_bytes(raw[: len(raw) // 2])
    _csv(d / "inputs.csv", {"id": list(range(N))})
    shutil.copy(d / "m.moekit", d / "model.csv")
    os.symlink("t.csv", d / "link.csv")
    os.symlink("t.csv", d / "link.html")
    return d


def _snapshot(d):
    return {p: hashlib.sha256(open(os.path.join(d, p), "rb").read()).hexdigest() for p in sorted(os.listdir(d))}


FIT = ["fit", "t.csv", "-t", "y", "--features", "x"]
PRED = ["predict", "m.moekit", "t.csv"]

# (id, argv, exit code, pattern of the one-line error, seconds it may take at most)
CASES = [
    # --select-k: bounded before anything is built (issue 16, adversary 8: 1..300000000 took 44 s and 12 GB)
    ("select-k huge range", [*FIT, "--select-k", "1..300000000", "-o", "o.moekit"], 2,
     r"--select-k 1\.\.300000000 asks for up to 300000000 experts but the data has 60 rows; every K must be at "
     r"most the number of rows: give a range such as 1\.\.8", 10),
    ("select-k huge negative start", [*FIT, "--select-k=-300000000..3", "-o", "o.moekit"], 2,
     r"--select-k -300000000\.\.3: every number of experts must be at least 1, got -300000000", 10),
    ("select-k huge dash range", [*FIT, "--select-k", "2-99999999999999999999", "-o", "o.moekit"], 2,
     r"--select-k 2\.\.99999999999999999999 asks for up to", 10),
    ("select-k list beyond the rows", [*FIT, "--select-k", "2,61", "-o", "o.moekit"], 2,
     r"--select-k 2,61 asks for up to 61 experts but the data has 60 rows", 10),
    ("select-k empty range", [*FIT, "--select-k", "5..1", "-o", "o.moekit"], 2,
     r"argument --select-k: '5\.\.1' holds no number of experts; give the smaller number first", 10),
    ("select-k not numbers", [*FIT, "--select-k", "1..x", "-o", "o.moekit"], 2,
     r"argument --select-k: '1\.\.x': give a range such as 1\.\.8 or a list such as 2,3,5", 10),
    ("select-k float", [*FIT, "--select-k", "1.5", "-o", "o.moekit"], 2, r"argument --select-k: '1\.5': give a range", 10),
    # outputs never overwrite inputs (adversary 9)
    ("predict --keep an output name", ["predict", "m.moekit", "keep.csv", "--keep", "y_mean", "-o", "p.csv"], 2,
     r"--keep y_mean: the kept input column 'y_mean' has the name of an output column of --what mean "
     r"\(the outputs are y_mean\); leave it out of --keep or rename it", None),
    ("predict --keep an output name among others", ["predict", "m.moekit", "keep.csv", "--keep", "x", "y_mean",
                                                    "y_lower", "--what", "interval", "-o", "p.csv"], 2,
     r"--keep y_lower: .* output column of --what interval \(the outputs are y_lower, y_upper\)", None),
    ("predict -o the data file", [*PRED, "-o", "t.csv"], 2,
     r"-o t\.csv is the input DATA file 't\.csv'; writing there would destroy it: give -o another file name", None),
    ("predict -o the data file, spelled otherwise", [*PRED, "-o", "./sub/../t.csv"], 2, r"is the input DATA file", None),
    ("predict -o a link to the data file", [*PRED, "-o", "link.csv"], 2, r"-o link\.csv is the input DATA file", None),
    ("predict -o the model file", ["predict", "model.csv", "t.csv", "-o", "model.csv"], 2,
     r"-o model\.csv is the input MODEL file 'model\.csv'", None),
    ("fit -o the data file", [*FIT, "-o", "t.csv"], 2, r"-o t\.csv is the input DATA file 't\.csv'", None),
    ("fit -o a link to the data file", [*FIT, "-o", "link.csv"], 2, r"-o link\.csv is the input DATA file", None),
    ("report -o a link to the data file", ["report", "m.moekit", "t.csv", "-o", "link.html"], 2,
     r"-o link\.html is the input DATA file 't\.csv'", None),
    # levels and weights name the option, the value given and the range (adversary 11: '--level 2' said 'got -0.5')
    ("interval --level 2", [*PRED, "--what", "interval", "--level", "2", "-o", "p.csv"], 2,
     r"argument --level: expected a number strictly between 0 and 1 \(e\.g\. 0\.9\), got 2 \(see 'moekit predict", None),
    ("interval --level 0", [*PRED, "--what", "interval", "--level", "0", "-o", "p.csv"], 2,
     r"argument --level: .*strictly between 0 and 1.*got 0", None),
    ("interval --level nan", [*PRED, "--what", "interval", "--level", "nan", "-o", "p.csv"], 2,
     r"argument --level: .*got nan", None),
    ("interval --level text", [*PRED, "--what", "interval", "--level", "high", "-o", "p.csv"], 2,
     r"argument --level: .*got 'high'", None),
    ("quantiles 0", [*PRED, "--what", "quantiles", "--quantiles", "0", "0.5", "-o", "p.csv"], 2,
     r"argument --quantiles: expected a number strictly between 0 and 1 .*got 0", None),
    ("quantiles 1.5", [*PRED, "--what", "quantiles", "--quantiles", "1.5", "-o", "p.csv"], 2,
     r"argument --quantiles: .*got 1\.5", None),
    ("modes --min-weight 1", [*PRED, "--what", "modes", "--min-weight", "1", "-o", "p.csv"], 2,
     r"argument --min-weight: expected a number from 0 to 1 .*got 1", None),
    ("evaluate --level 1", ["evaluate", "m.moekit", "t.csv", "--level", "1"], 2, r"argument --level: .*got 1", None),
    ("report --level -1", ["report", "m.moekit", "t.csv", "--level", "-1", "-o", "r.html"], 2,
     r"argument --level: .*got -1", None),
    # counts
    ("fit --n-init 0", [*FIT, "--n-init", "0", "-o", "o.moekit"], 2, r"argument --n-init: expected a positive integer, got 0",
     None),
    ("fit --max-iter -5", [*FIT, "--max-iter", "-5", "-o", "o.moekit"], 2, r"argument --max-iter: .*got -5", None),
    ("fit --depth 0", [*FIT, "--model", "hme", "--depth", "0", "-o", "o.moekit"], 2,
     r"argument --depth: expected a positive integer, got 0", None),
    ("fit --experts 2.5", [*FIT, "--experts", "2.5", "-o", "o.moekit"], 2, r"argument --experts/-k: .*got '2\.5'", None),
    ("fit --threads 0", [*FIT, "--threads", "0", "-o", "o.moekit"], 2, r"argument --threads: .*got 0", None),
    ("fit --seed text", [*FIT, "--seed", "x", "-o", "o.moekit"], 2, r"argument --seed: invalid int value: 'x'", None),
    # options that do not fit the model
    ("mdn --n-init", [*FIT, "--model", "mdn", "--n-init", "2", "-o", "o.moekit"], 2,
     r"--n-init applies to --model moe and hme", None),
    ("hme --branching with --experts", [*FIT, "--model", "hme", "--branching", "2", "-k", "3", "-o", "o.moekit"], 2,
     r"--branching, --experts and --select-k all set the branching; give one", None),
    ("mdn --expert poisson", [*FIT, "--model", "mdn", "--expert", "poisson", "-o", "o.moekit"], 2,
     r"--expert poisson does not apply to --model mdn", None),
    ("--criterion without --select-k", [*FIT, "--criterion", "aic", "-o", "o.moekit"], 2,
     r"--criterion chooses among the K of --select-k", None),
    # sizes the data cannot support, said before the work (adversary 7: depth 18 built the tree for 102 s)
    ("hme --depth 18", [*FIT, "--model", "hme", "--depth", "18", "-o", "o.moekit"], 1,
     r"the tree is larger than the data supports: 262144 leaves", 60),
    # BIC on as many parameters as rows: every K skipped (the message names the options, not Python's parameters)
    ("select-k with too many parameters for BIC", ["fit", "small.csv", "-t", "y", "--select-k", "2,3", "-o", "o.moekit"],
     1, r"choosing K by bic failed: --select-k: every candidate has at least as many free parameters as the data has "
        r"rows \(4\).*--criterion heldout$", None),
    # a constant target under --select-k (adversary 5: BIC ranked K on a variance floor of 1e-36)
    ("constant target", ["fit", "const.csv", "-t", "y", "--select-k", "1..3", "-o", "o.moekit"], 1, r"y is constant", None),
    # an ID-like column used as an input (newcomer: '--select-k' failed without naming 'country')
    ("ID-like text input", ["fit", "country.csv", "-t", "y", "--select-k", "1..3", "-o", "o.moekit"], 1,
     r"input column 'country' of country\.csv has a different value in every row", None),
    # moekit summary (issue 14): models without standard errors, files that are not models, bad options
    ("summary of an MDN", ["summary", "mdn.moekit"], 1,
     r"'mdn\.moekit' holds an estimator of type MDNRegressor, which has no coefficient table", None),
    ("summary of an MLP expert", ["summary", "mlp.moekit"], 1,
     r"mlp\.moekit: .*needs a likelihood Hessian.*MLPExpert.*summary\(se='bootstrap', X=X, y=y\)", None),
    ("summary without standard errors", ["summary", "nose.moekit"], 1,
     r"nose\.moekit: this model holds no standard errors .*compute_se.*summary\(X=X, y=y\)", None),
    ("summary of a missing file", ["summary", "none.moekit"], 1, r"model file 'none\.moekit' does not exist", None),
    ("summary of a data file", ["summary", "t.csv"], 1, r"'t\.csv' is not a moekit model file", None),
    ("summary of a damaged file", ["summary", "damaged.moekit"], 1, r"damaged\.moekit", None),
    ("summary --level 1.5", ["summary", "m.moekit", "--level", "1.5"], 2,
     r"argument --level: expected a number strictly between 0 and 1 \(e\.g\. 0\.9\), got 1\.5 "
     r"\(see 'moekit summary", None),
    ("summary --level 0", ["summary", "m.moekit", "--level", "0"], 2, r"argument --level: .*got 0", None),
    ("summary --se bootstrap", ["summary", "m.moekit", "--se", "bootstrap"], 2,
     r"argument --se: invalid choice: 'bootstrap'", None),
    ("summary --json --csv", ["summary", "m.moekit", "--json", "--csv"], 2,
     r"argument --csv: not allowed with argument --json", None),
    # moekit fit --formula (issue 14): the formula names the target, so the options that choose columns clash
    ("formula naming a missing column", ["fit", "t.csv", "--formula", "y ~ x + z", "-o", "o.moekit"], 1,
     r"--formula names the column 'z', which is not in t\.csv; its columns are: x, y, id", None),
    ("gate formula naming a missing column", ["fit", "t.csv", "--formula", "y ~ x", "--gate-formula", "~ w",
                                             "-o", "o.moekit"], 1, r"--gate-formula names the column 'w'", None),
    ("formula naming a missing target", ["fit", "t.csv", "--formula", "yy ~ x", "-o", "o.moekit"], 1,
     r"--formula names the column 'yy', which is not in t\.csv", None),
    ("formula with --target", ["fit", "t.csv", "--formula", "y ~ x", "-t", "y", "-o", "o.moekit"], 2,
     r"--target and --formula both choose columns: .*leave out --target", None),
    ("formula with --features", ["fit", "t.csv", "--formula", "y ~ x", "--features", "x", "-o", "o.moekit"], 2,
     r"--features and --formula both choose columns", None),
    ("formula with --categorical", ["fit", "t.csv", "--formula", "y ~ x", "--categorical", "id", "-o", "o.moekit"], 2,
     r"--categorical and --formula both choose columns", None),
    ("gate formula without formula", ["fit", "t.csv", "-t", "y", "--gate-formula", "~ x", "-o", "o.moekit"], 2,
     r"--gate-formula needs --formula", None),
    ("neither --target nor --formula", ["fit", "t.csv", "-o", "o.moekit"], 2,
     r"the following arguments are required: --target \(or --formula", None),
    ("formula for an MDN", ["fit", "t.csv", "--formula", "y ~ x", "--model", "mdn", "-o", "o.moekit"], 2,
     r"--formula applies to --model moe and hme", None),
    ("formula that does not parse", ["fit", "t.csv", "--formula", "y ~ x +", "-o", "o.moekit"], 2,
     r"--formula 'y ~ x \+' cannot be read as a formula: [^\x1b]*$", None),
    ("formula without a left side", ["fit", "t.csv", "--formula", "~ x", "-o", "o.moekit"], 2,
     r"--formula '~ x' names no target: write it as 'target ~ terms'", None),
    ("gate formula with a left side", ["fit", "t.csv", "--formula", "y ~ x", "--gate-formula", "y ~ x",
                                       "-o", "o.moekit"], 2, r"--gate-formula 'y ~ x' has a left side", None),
    ("formula with a transform that learns", ["fit", "t.csv", "--formula", "y ~ center(x)", "-o", "o.moekit"], 1,
     r"uses a transform that learns from the data \(center\(x\)\)", None),
    ("formula whose term would run code", ["fit", "t.csv", "--formula", "y ~ I(open('t.csv') and x)", "-o",
                                           "o.moekit"], 1, r"calls 'open'; formula terms may use columns", None),
    ("formula with a text target", ["fit", "country.csv", "--formula", "country ~ x", "-o", "o.moekit"], 2,
     r"the target 'country' of --formula holds text labels.*--target country", None),
    ("formula model on data without its column", ["predict", "f.moekit", "inputs.csv", "-o", "p.csv"], 1,
     r"input column 'x' is not in inputs\.csv", None),
    ("formula model with --target", ["evaluate", "f.moekit", "t.csv", "--target", "y"], 2,
     r"--target does not apply to this model: it was written as the formula 'y ~ x'", None),
]


@pytest.mark.parametrize("argv, code, pattern, seconds", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_command_line(argv, code, pattern, seconds, folder, capsys, monkeypatch):
    monkeypatch.chdir(folder)
    before = _snapshot(folder)
    capsys.readouterr()
    t0 = time.perf_counter()
    rc = main(argv)
    took = time.perf_counter() - t0
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == code, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("moekit: error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err and out == ""
    assert _snapshot(folder) == before  # nothing written, no input changed
    if seconds is not None:
        assert took < seconds, f"took {took:.1f} s"
