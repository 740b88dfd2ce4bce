"""``moekit summary MODEL``: the coefficient table of a saved model, with the standard errors computed at fit (no
data needed), as text (``print(model.summary())``), JSON (``to_dict()``) or CSV (the table); run for real."""

import io
import json

import numpy as np
import pandas as pd
import pytest

import moekit
import moekit.io
from moekit.cli import main
from moekit.datasets import load_npreg, load_tonedata
from cli_helpers import run as _run
from cli_helpers import run_main as _main
from moekit.estimators.summary import COLUMNS


pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def npreg(tmp_path_factory):
    """NPreg as a CSV and the quadratic-expert model of flexmix's example, fitted by 'moekit fit --formula'."""
    d = tmp_path_factory.mktemp("summary")
    load_npreg(as_frame=True).frame.to_csv(d / "npreg.csv", index=False)
    assert main(["fit", str(d / "npreg.csv"), "--formula", "yn ~ x + I(x**2)", "--gate-formula", "~ x", "-q",
                 "-o", str(d / "m.moekit")]) == 0
    return d


def test_summary_prints_the_table_of_a_model_file(npreg):
    rc, out, err = _run("summary", "m.moekit", cwd=npreg)
    assert rc == 0 and err == "", err
    est = moekit.load(npreg / "m.moekit")
    assert out == str(est.summary()) + "\n"  # print(model.summary()), without the data
    for term in ("(Intercept)", "x", "I(x ** 2)", "sigma"):
        assert f" {term} " in out, term
    assert "Gate (log-odds against component 0):" in out and "Experts:" in out
    assert "Log-likelihood: -642.06" in out and "BIC:" in out and "AIC:" in out and "ICL:" in out


def test_summary_csv_is_the_table(npreg, capsys, monkeypatch):
    monkeypatch.chdir(npreg)
    rc, out, err = _main(["summary", "m.moekit", "--csv"], capsys)
    assert rc == 0 and err == "", err
    t = pd.read_csv(io.StringIO(out), keep_default_na=False, na_values=[""])
    assert list(t.columns) == COLUMNS
    want = moekit.load(npreg / "m.moekit").summary().table
    assert list(t["term"]) == list(want["term"]) and list(t["block"]) == list(want["block"])
    for c in ("estimate", "std_error", "ci_low", "ci_high"):
        np.testing.assert_allclose(t[c].to_numpy(dtype=float), want[c].to_numpy(dtype=float), rtol=1e-8)


def test_summary_json_with_sandwich_errors_and_a_level(npreg, capsys, monkeypatch):
    monkeypatch.chdir(npreg)
    rc, out, err = _main(["summary", "m.moekit", "--json", "--se", "sandwich", "--level", "0.9"], capsys)
    assert rc == 0 and err == "", err
    got = json.loads(out)
    want = moekit.load(npreg / "m.moekit").summary(se="sandwich", level=0.9).to_dict()
    assert got["se"] == "sandwich" and got["level"] == 0.9
    assert got["log_likelihood"] == pytest.approx(-642.064, abs=1e-3)
    assert [r["term"] for r in got["coefficients"]] == [r["term"] for r in want["coefficients"]]
    for g, w in zip(got["coefficients"], want["coefficients"], strict=True):
        assert g["std_error"] == pytest.approx(w["std_error"], rel=1e-12)
        assert (g["p_value"] is None) == (w["p_value"] is None)  # sigma: no z test, null in JSON
    hessian = moekit.load(npreg / "m.moekit").summary().table["std_error"].to_numpy()
    assert not np.allclose([r["std_error"] for r in got["coefficients"]], hessian)  # another kind of error


def test_summary_names_the_columns_of_a_command_line_fit(tmp_path, capsys, monkeypatch):
    """'moekit fit' fits on the encoded columns with their names: the coefficients carry them."""
    monkeypatch.chdir(tmp_path)
    d = load_tonedata()
    rng = np.random.default_rng(0)
    pd.DataFrame({"stretch": d.data[:, 0], "group": rng.choice(["a", "b"], size=len(d.target)),
                  "tuned": d.target}).to_csv("tone.csv", index=False)
    assert _main(["fit", "tone.csv", "-t", "tuned", "-q", "-o", "m.moekit"], capsys)[0] == 0
    rc, out, err = _main(["summary", "m.moekit", "--csv"], capsys)
    assert rc == 0, err
    assert set(pd.read_csv(io.StringIO(out))["term"]) == {"(Intercept)", "stretch", "group[T.b]", "sigma"}


def test_summary_names_the_columns_from_the_schema_of_an_unnamed_fit(tmp_path, capsys, monkeypatch):
    """A model fitted on unnamed columns whose file records the command line's schema (as older 'moekit fit'
    wrote them) is summarised with the schema's column names."""
    monkeypatch.chdir(tmp_path)
    d = load_tonedata()
    est = moekit.MoERegressor(n_experts=2, random_state=0).fit(d.data, d.target)
    schema = {"features": [{"name": "stretch", "kind": "numeric"}], "encoded_features": ["stretch"],
              "targets": ["tuned"], "task": "regression"}
    moekit.io.save(est, "m.moekit", metadata={"cli": schema})
    rc, out, err = _main(["summary", "m.moekit"], capsys)
    assert rc == 0, err
    assert " stretch " in out and " x0 " not in out
