"""moekit fit's model-structure flags (issue 15): --offset, --trials, --lower, --upper (columns taken out of the
inputs and read again from new data by predict and evaluate), --shared, --covariance tied*, --expert NAME ...,
--missing drop, --point-mass-value; each bad input is one line with its exit code."""

import json

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run_main

from moekit import experts, load
from moekit.cli.fit import _estimator_for
from moekit.cli.parser import build_parser

N = 300


def _write(path, cols: dict) -> str:
    pd.DataFrame(cols).to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    d = tmp_path_factory.mktemp("structure")
    rng = np.random.default_rng(0)
    x, z = rng.normal(size=N), rng.normal(size=N)
    right = rng.uniform(size=N) < 1 / (1 + np.exp(-2 * x))
    logexpo = np.log(rng.uniform(0.5, 2.0, N))
    counts = rng.poisson(np.exp(np.where(right, 1.5 + 0.8 * z, -0.5 - 0.6 * z) + 0.4 * x + logexpo))
    trials = rng.integers(1, 10, N)
    succ = rng.binomial(trials, 1 / (1 + np.exp(-np.where(right, 1 + z, -1 - z))))
    zip_y = np.where(right, rng.poisson(np.exp(1 + 0.5 * z)), 0)
    latent = np.where(right, 1 + x, -0.5 - x) + 0.5 * rng.normal(size=N)
    a, b = latent, -latent + 0.3 * rng.normal(size=N)
    holes = rng.uniform(size=(N, 2)) < 0.2
    holes[holes.all(1), 0] = False
    xm = x.copy()
    xm[:5] = np.nan
    return {
        "counts": _write(d / "counts.csv", {"x": x, "z": z, "logexpo": logexpo, "y": counts, "trials": trials,
                                            "succ": succ, "zy": zip_y, "cy": np.maximum(latent, 0.0),
                                            "floor": np.zeros(N)}),
        "new": _write(d / "new.csv", {"x": x[:6], "z": z[:6], "logexpo": logexpo[:6], "trials": trials[:6]}),
        "bare": _write(d / "bare.csv", {"x": x[:6], "z": z[:6]}),
        "holes": _write(d / "holes.csv", {"x": xm, "a": np.where(holes[:, 0], np.nan, a),
                                          "b": np.where(holes[:, 1], np.nan, b)}),
        "dir": d,
    }


def _fit(tables, capsys, name, *flags, data="counts"):
    path = str(tables["dir"] / f"{name}.moekit")
    rc, out, err = run_main(["fit", tables.get(data, str(tables["dir"] / f"{data}.csv")), *flags, "-o", path], capsys)
    assert rc == 0, err
    return path, out


def _args(*extra):
    return build_parser().parse_args(["fit", "data.csv", "--target", "y", "-o", "m.moekit", *extra])


def test_structure_options_reach_the_estimator():
    p = _estimator_for(_args("--covariance", "tied_diag", "--shared", "x", "z", "--missing", "drop"), "regression",
                       None).get_params()
    assert (p["covariance"], p["shared_features"], p["missing"]) == ("tied_diag", ["x", "z"], "drop")
    p = _estimator_for(_args("--expert", "point_mass", "poisson", "--point-mass-value", "1"), "regression",
                       None).get_params()
    assert (p["expert"], p["n_experts"], p["point_mass_value"]) == (["point_mass", "poisson"], 2, 1.0)
    assert _estimator_for(_args("--expert", "gamma"), "regression", None).get_params()["expert"] == "gamma"
    for option in ("--offset", "--trials", "--lower", "--upper", "--shared", "--covariance", "--missing",
                   "--point-mass-value"):
        assert getattr(_args(), option[2:].replace("-", "_")) is None  # not given: the estimator's default


def test_offset_column_is_read_again_by_predict_and_evaluate(tables, capsys):
    model, out = _fit(tables, capsys, "offset", "-t", "y", "--features", "x", "z", "--expert", "poisson",
                      "--offset", "logexpo", "--shared", "x")
    assert "2 input column(s)" in out  # the offset column is not an input
    est = load(model)
    new = pd.read_csv(tables["new"])
    rc, got, err = run_main(["predict", model, tables["new"], "-o", "-"], capsys)
    assert rc == 0, err
    want = est.predict(new[["x", "z"]], offset=new.logexpo.to_numpy())
    np.testing.assert_allclose(pd.read_csv(pd.io.common.StringIO(got)).y_mean, want, rtol=1e-9)
    rc, got, err = run_main(["evaluate", model, tables["counts"], "--json"], capsys)
    assert rc == 0, err
    data = pd.read_csv(tables["counts"])
    ll = est.score_samples(data[["x", "z"]], data.y, offset=data.logexpo.to_numpy()).sum()
    assert json.loads(got)["log_likelihood"] == pytest.approx(ll, rel=1e-10)
    rc, got, err = run_main(["predict", model, tables["bare"], "-o", "-"], capsys)
    assert rc == 1 and err.count("\n") == 1
    assert "fitted with --offset logexpo" in err and "'logexpo'" in err
    rc, got, err = run_main(["predict", model, tables["bare"], "--what", "gate", "-o", "-"], capsys)
    assert rc == 0 and got.startswith('"gate0","gate1"'), err  # the gate needs no offset
    rc, got, err = run_main(["summary", model, "--csv"], capsys)
    t = pd.read_csv(pd.io.common.StringIO(got))
    assert rc == 0 and t[t.block == "shared"].term.tolist() == ["x"]


def test_info_names_the_offset_column(tables, capsys):
    model, _ = _fit(tables, capsys, "offset_info", "-t", "y", "--features", "x", "z", "--expert", "poisson",
                    "--offset", "logexpo")
    rc, got, err = run_main(["info", model], capsys)
    assert rc == 0 and "--offset column: logexpo" in got, err


def test_binomial_trials_column(tables, capsys):
    model, _ = _fit(tables, capsys, "binomial", "-t", "succ", "--features", "x", "z", "--expert", "binomial",
                    "--trials", "trials")
    rc, got, err = run_main(["predict", model, tables["new"], "-o", "-"], capsys)
    assert rc == 0, err
    new = pd.read_csv(tables["new"])
    want = load(model).predict(new[["x", "z"]], trials=new.trials.to_numpy())  # trials * p
    np.testing.assert_allclose(pd.read_csv(pd.io.common.StringIO(got)).succ_mean, want, rtol=1e-9)


def test_zero_inflated_poisson_and_tied_variance(tables, capsys):
    model, _ = _fit(tables, capsys, "zip", "-t", "zy", "--features", "x", "z", "--expert", "point_mass", "poisson")
    rc, got, err = run_main(["summary", model], capsys)
    assert rc == 0 and "0: point_mass, 1: poisson" in got, err
    model, _ = _fit(tables, capsys, "tied", "-t", "cy", "--features", "x", "z", "--covariance", "tied")
    rc, got, err = run_main(["summary", model, "--csv"], capsys)
    t = pd.read_csv(pd.io.common.StringIO(got))
    assert rc == 0 and t[t.block == "shared"].term.tolist() == ["sigma"], err


def test_missing_inputs_dropped_and_missing_target_coordinates(tables, capsys):
    rc, _, err = run_main(["fit", tables["holes"], "-t", "a", "b", "--features", "x", "-o",
                           str(tables["dir"] / "no.moekit")], capsys)
    assert rc == 1 and "input column 'x'" in err and "5 missing" in err
    model, out = _fit(tables, capsys, "holes", "-t", "a", "b", "--features", "x", "--missing", "drop", data="holes")
    assert f"on {N - 5} of {N} rows" in out
    assert load(model).n_rows_dropped_ == 5
    rc, _, err = run_main(["predict", model, tables["holes"], "-o", "-"], capsys)  # predictions need every input
    assert rc == 1 and "input column 'x'" in err and err.count("\n") == 1
    complete = _write(tables["dir"] / "complete.csv", pd.read_csv(tables["holes"]).dropna(subset=["x"]).to_dict("list"))
    rc, got, err = run_main(["evaluate", model, complete, "--json"], capsys)  # holes in the targets: strict JSON
    assert rc == 0, err
    m = json.loads(got, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert m["n"] == N - 5 and np.isfinite(m["log_likelihood"])
    holes = pd.read_csv(tables["holes"]).fillna({"x": 0.0})
    holes["g"] = np.where(np.arange(N) % 50 == 7, None, np.where(holes.x > 0, "up", "down"))  # 6 categories missing
    _write(tables["dir"] / "categories.csv", holes.to_dict("list"))
    model, out = _fit(tables, capsys, "categories", "-t", "a", "b", "--missing", "drop", data="categories")
    assert f"on {N - 6} of {N} rows" in out and "2 input column(s)" in out


def test_censored_target(tables, capsys):
    if getattr(experts, "CensoredGaussianExpert", None) is None:
        pytest.skip("CensoredGaussianExpert has not landed")
    model, out = _fit(tables, capsys, "tobit", "-t", "cy", "--features", "x", "--lower", "floor")
    rc, got, err = run_main(["evaluate", model, tables["counts"], "--json"], capsys)
    assert rc == 0, err
    data = pd.read_csv(tables["counts"])
    ll = load(model).score_samples(data[["x"]], data.cy, lower=data.floor.to_numpy()).sum()
    assert json.loads(got)["log_likelihood"] == pytest.approx(ll, rel=1e-10)
    # interval censoring: an empty target between two limits; an empty limit is no limit
    rng = np.random.default_rng(1)
    exact = rng.uniform(size=N) < 0.5
    lo = np.floor(data.cy.to_numpy())
    table = _write(tables["dir"] / "interval.csv", {"x": data.x, "y": np.where(exact, data.cy, np.nan),
                                                     "lo": np.where(exact, np.nan, lo),
                                                     "hi": np.where(exact, np.nan, lo + 1)})
    model = str(tables["dir"] / "interval.moekit")
    rc, out, err = run_main(["fit", table, "-t", "y", "--features", "x", "--lower", "lo", "--upper", "hi", "-o",
                             model], capsys)
    assert rc == 0, err
    rc, got, err = run_main(["evaluate", model, table, "--json"], capsys)
    assert rc == 0 and np.isfinite(json.loads(got)["log_likelihood"]), err


BAD = [
    (["-t", "y", "--expert", "poisson", "--trials", "trials"], 2, "--trials gives the numbers of trials"),
    (["-t", "y", "--expert", "poisson", "--offset", "nope"], 1, "--offset names the column 'nope'"),
    (["-t", "y", "--features", "x", "logexpo", "--offset", "logexpo"], 2, "both --offset and --features"),
    (["-t", "y", "--offset", "y"], 2, "both --offset and --target"),
    (["-t", "y", "--offset", "logexpo", "--lower", "logexpo"], 2, "each needs its own column"),
    (["-t", "y", "--expert", "point_mass", "poisson", "--experts", "3"], 2, "lists 2 families but --experts is 3"),
    (["-t", "y", "--expert", "point_mass", "poisson", "--select-k", "1..3"], 2, "leave out --select-k"),
    (["-t", "y", "--model", "hme", "--expert", "point_mass", "poisson"], 2, "applies to --model moe"),
    (["-t", "y", "--expert", "poisson", "--point-mass-value", "1"], 2, "needs --expert with point_mass"),
    (["-t", "y", "--expert", "point_mass", "poisson", "--point-mass-value", "7.5"], 1, "never occurs in y"),
    (["-t", "y", "--shared", "nope"], 2, "--shared names 'nope', which is not an input column"),
    (["-t", "y", "--model", "mdn", "--shared", "x"], 2, "--shared does not apply to MDNRegressor"),
    (["-t", "y", "--model", "mdn", "--offset", "logexpo"], 2, "--offset applies to --model moe and hme"),
    (["-t", "y", "--offset", "logexpo", "--select-k", "1..2"], 2, "--select-k does not take --offset"),
    (["-t", "y", "z", "--lower", "floor"], 2, "censor one target"),
    (["-t", "y", "--expert", "student_t", "--offset", "logexpo"], 1, "offset"),
    (["-t", "y", "--covariance", "banded"], 2, "invalid choice: 'banded'"),
    (["-t", "y", "--missing", "impute"], 2, "invalid choice: 'impute'"),
    (["--formula", "y ~ x", "--missing", "drop"], 2, "with --formula, remove the rows"),
    (["-t", "y", "--expert", "poisson", "tobit"], 2, "invalid choice: 'tobit'"),
    (["-t", "y", "--expert", "point_mass", "poisson", "--point-mass-value", "inf"], 2, "expected a finite number"),
]


@pytest.mark.parametrize("flags, code, message", BAD, ids=[" ".join(b[0][2:]) for b in BAD])
def test_bad_structure_flags_are_one_line(tables, capsys, flags, code, message):
    rc, out, err = run_main(["fit", tables["counts"], *flags, "-o", str(tables["dir"] / "bad.moekit")], capsys)
    assert rc == code, err
    assert message in err and err.count("\n") == 1 and out == ""
