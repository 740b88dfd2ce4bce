"""``moekit fit --formula 'y ~ x + I(x**2)' --gate-formula '~ x'``: R's formulas on the command line (formulaic).

The formula's left side names the target; the model file keeps the design, and predict, evaluate, report, info
and summary evaluate it on new data.  Models written as formulas in Python work under the command too.  Run for
real (a subprocess for the NPreg example, ``moekit.cli.main`` for the rest); the bad inputs are in
tests/bad_inputs/test_cli.py.
"""

import io
import json

import numpy as np
import pandas as pd
import pyarrow.csv as pcsv
import pytest

import moekit
import moekit.io
from moekit.datasets import load_npreg, load_tonedata
from cli_helpers import run as _run
from cli_helpers import run_main as _main

NPREG_LOGLIK = -642.064  # flexmix's quadratic-expert fit of NPreg (issue 14; ../shared/data/README.md)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _csv_out(out):
    return pcsv.read_csv(io.BytesIO(out.encode()))


@pytest.fixture(scope="module")
def npreg(tmp_path_factory):
    d = tmp_path_factory.mktemp("formula")
    frame = load_npreg(as_frame=True).frame
    frame.to_csv(d / "npreg.csv", index=False)
    frame[["x"]].to_csv(d / "new.csv", index=False)  # new data: the inputs only
    rc, out, err = _run("fit", "npreg.csv", "--formula", "yn ~ x + I(x**2)", "--gate-formula", "~ x",
                        "-o", "m.moekit", cwd=d)
    assert rc == 0, err
    return d, frame, out


def test_npreg_formula_reproduces_the_quadratic_fit(npreg):
    d, frame, out = npreg
    assert "-> yn: log-likelihood -642.064" in out
    est = moekit.load(d / "m.moekit")
    assert est.formula == "yn ~ x + I(x**2)" and est.gate_formula == "~ x"
    assert est.formula_design_["names"] == ["x", "I(x ** 2)"]
    cli = moekit.io.read_info(d / "m.moekit")["metadata"]["cli"]
    assert cli["formula"]["formula"] == "yn ~ x + I(x**2)" and cli["targets"] == ["yn"]
    assert cli["encoded_features"] == ["x", "I(x ** 2)"]
    assert cli["formula_columns"] == [{"name": "x", "kind": "numeric"}]
    assert list(cli["training_data"]["columns"]) == ["x", "yn"]
    # the command fits what Python fits
    py = moekit.MoERegressor(formula="yn ~ x + I(x**2)", gate_formula="~ x", random_state=0).fit(frame)
    np.testing.assert_allclose(est.predict(frame), py.predict(frame), rtol=1e-10)


def test_npreg_formula_model_predicts_evaluates_and_describes_itself(npreg, capsys, monkeypatch):
    d, frame, _ = npreg
    monkeypatch.chdir(d)
    est = moekit.load(d / "m.moekit")
    rc, out, err = _main(["predict", "m.moekit", "new.csv", "-o", "-"], capsys)  # the design evaluated on new data
    assert rc == 0, err
    np.testing.assert_allclose(_csv_out(out).column("yn_mean").to_numpy(), est.predict(frame), rtol=1e-12)
    rc, out, err = _main(["predict", "m.moekit", "new.csv", "--what", "interval", "-o", "-"], capsys)
    assert rc == 0 and _csv_out(out).column_names == ["yn_lower", "yn_upper"], err
    rc, out, err = _main(["evaluate", "m.moekit", "npreg.csv", "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out)["log_likelihood"] == pytest.approx(NPREG_LOGLIK, abs=1e-3)
    rc, out, err = _main(["info", "m.moekit"], capsys)
    assert rc == 0, err
    assert "formula: yn ~ x + I(x**2); gate formula: ~ x" in out and "(x, I(x ** 2))" in out
    rc, out, err = _main(["summary", "m.moekit"], capsys)
    assert rc == 0, err
    assert "I(x ** 2)" in out and "Log-likelihood: -642.06" in out


def test_npreg_formula_model_report(npreg, capsys, monkeypatch):
    d, _, _ = npreg
    monkeypatch.chdir(d)
    rc, _, err = _main(["report", "m.moekit", "npreg.csv", "-q", "-o", "r.html"], capsys)
    assert rc == 0, err
    assert "<img" in (d / "r.html").read_text()


def test_formula_with_select_k_keeps_the_design(npreg, capsys, monkeypatch):
    d, frame, _ = npreg
    monkeypatch.chdir(d)
    rc, out, err = _main(["fit", "npreg.csv", "--formula", "yn ~ x + I(x**2)", "--gate-formula", "~ x",
                          "--select-k", "1..3", "-o", "k.moekit"], capsys)
    assert rc == 0, err
    assert "BIC (lower is better) by number of experts:" in out and "K= 2" in out
    est = moekit.load(d / "k.moekit")
    assert est.n_experts_ == 2 and est.formula_design_["gate_features"] == [0]
    assert float(est.score_samples(frame, frame["yn"]).sum()) == pytest.approx(NPREG_LOGLIK, abs=1e-3)
    sel = moekit.io.read_info(d / "k.moekit")["metadata"]["cli"]["selection"]
    assert sel["chosen"] == 2 and set(sel["scores"]) == {"1", "2", "3"}


def test_formula_with_a_factor_and_a_transformed_target(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = load_tonedata()
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"stretch": d.data[:, 0], "group": rng.choice(["a", "b", "c"], size=len(d.target)),
                          "tuned": d.target + 1.0})
    frame.to_csv("tone.csv", index=False)
    rc, out, err = _main(["fit", "tone.csv", "--formula", "tuned ~ stretch + group", "--gate-formula", "~ stretch",
                          "-o", "g.moekit"], capsys)
    assert rc == 0, err
    py = moekit.MoERegressor(formula="tuned ~ stretch + group", gate_formula="~ stretch", random_state=0).fit(frame)
    rc, out, err = _main(["predict", "g.moekit", "tone.csv", "-o", "-"], capsys)
    assert rc == 0, err
    np.testing.assert_allclose(_csv_out(out).column("tuned_mean").to_numpy(), py.predict(frame), rtol=1e-10)
    rc, out, err = _main(["info", "g.moekit"], capsys)
    assert "one-hot encoded: group -> levels ['a', 'b', 'c'] (reference: a)" in out
    rc, out, err = _main(["summary", "g.moekit", "--csv"], capsys)
    assert rc == 0, err
    terms = pd.read_csv(io.StringIO(out))
    assert set(terms[terms.block == "expert"]["term"]) == {"(Intercept)", "stretch", "group[T.b]", "group[T.c]",
                                                           "sigma"}
    assert set(terms[terms.block == "gate"]["term"]) == {"(Intercept)", "stretch"}
    frame.assign(group=frame["group"].replace("c", "z")).to_csv("unseen.csv", index=False)
    rc, out, err = _main(["predict", "g.moekit", "unseen.csv", "-o", "p.csv"], capsys)
    assert rc == 1 and "'group'" in err and "'z'" in err and len(err.strip().splitlines()) == 1, err
    # a transformed left side: evaluate computes the same y as the fit did
    rc, out, err = _main(["fit", "tone.csv", "--formula", "log(tuned) ~ stretch", "-q", "-o", "l.moekit"], capsys)
    assert rc == 0, err
    rc, out, err = _main(["evaluate", "l.moekit", "tone.csv", "--json"], capsys)
    assert rc == 0, err
    est = moekit.load("l.moekit")
    want = est.score_samples(frame, np.log(frame["tuned"].to_numpy())).sum()
    assert json.loads(out)["log_likelihood"] == pytest.approx(float(want), rel=1e-10)


def test_formula_model_saved_from_python(tmp_path, capsys, monkeypatch):
    """A model written as formulas in Python: its schema comes from its design (no --features or --target)."""
    monkeypatch.chdir(tmp_path)
    frame = load_npreg(as_frame=True).frame
    frame.to_csv("npreg.csv", index=False)
    est = moekit.MoERegressor(formula="yn ~ x + I(x**2)", gate_formula="~ x", random_state=0).fit(frame)
    est.save("py.moekit")
    rc, out, err = _main(["predict", "py.moekit", "npreg.csv", "-o", "-"], capsys)
    assert rc == 0, err
    np.testing.assert_allclose(_csv_out(out).column("yn_mean").to_numpy(), est.predict(frame), rtol=1e-12)
    rc, out, err = _main(["evaluate", "py.moekit", "npreg.csv", "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out)["log_likelihood"] == pytest.approx(NPREG_LOGLIK, abs=1e-3)
    rc, out, err = _main(["info", "py.moekit"], capsys)
    assert rc == 0 and "formula: yn ~ x + I(x**2); gate formula: ~ x" in out, err
    rc, out, err = _main(["summary", "py.moekit"], capsys)
    assert rc == 0 and "I(x ** 2)" in out, err


def test_formula_classifier_with_numeric_labels(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    load_npreg(as_frame=True).frame.to_csv("npreg.csv", index=False)
    rc, out, err = _main(["fit", "npreg.csv", "--formula", "yb ~ x", "--task", "classification", "-k", "1", "-q",
                          "-o", "c.moekit"], capsys)
    assert rc == 0, err
    rc, out, err = _main(["predict", "c.moekit", "npreg.csv", "-o", "-"], capsys)
    assert rc == 0, err
    assert _csv_out(out).column_names[0] == "yb_predicted"
