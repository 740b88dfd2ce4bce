"""summary(), named coefficients and formulas (issue 14)."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

from moekit import HMEClassifier, HMERegressor, MDNRegressor, MoEClassifier, MoERegressor, load
from moekit.datasets import load_npreg
from moekit.estimators.summary import COLUMNS, Summary


@pytest.fixture(scope="module")
def npreg():
    return load_npreg(as_frame=True).frame


@pytest.fixture(scope="module")
def quadratic(npreg):
    return MoERegressor(n_experts=2, formula="yn ~ x + I(x**2)", gate_formula="~ x", random_state=0).fit(npreg)


def _soft_two(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, size=(n, 1))
    right = rng.uniform(size=n) < 1 / (1 + np.exp(-2 * X[:, 0]))
    return X, np.where(right, 2 * X[:, 0], -X[:, 0] + 1) + 0.3 * rng.normal(size=n)


def test_formula_reproduces_the_quadratic_expert_fit_with_formula_names(quadratic, npreg):
    assert quadratic.log_likelihood_ == pytest.approx(-642.064, abs=1e-3)
    assert list(quadratic.feature_names_in_) == ["x", "I(x ** 2)"]
    s = quadratic.summary()
    assert isinstance(s, Summary) and list(s.table.columns) == COLUMNS
    experts = s.table[s.table.block == "expert"]
    assert experts.term.tolist() == ["(Intercept)", "x", "I(x ** 2)", "sigma"] * 2
    gate = s.table[s.table.block == "gate"]
    assert gate.term.tolist() == ["(Intercept)", "x"] and gate.component.tolist() == [1, 1]  # against component 0
    assert (s.table.node == "").all() and (s.table.output == "").all()
    np.testing.assert_allclose(quadratic.predict(npreg), quadratic.predict(npreg[["x"]]))


def test_summary_prints_like_r_and_renders_html(quadratic):
    s = quadratic.summary(level=0.9)
    text = str(s)
    for piece in ("Estimate", "Std. Error", "z value", "Pr(>|z|)", "I(x ** 2)", "Log-likelihood: -642.06",
                  "BIC:", "AIC:", "ICL:", "90 % confidence intervals"):
        assert piece in text, piece
    assert "<table" in s._repr_html_()
    d = s.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["n_parameters"] == 10 and d["bic"] == pytest.approx(-2 * s.log_likelihood + 10 * math.log(200))
    t = s.table
    q = 1.6448536269514722
    np.testing.assert_allclose(t.ci_high - t.estimate, q * t.std_error, rtol=1e-12)
    coef = t[t.term != "sigma"]
    np.testing.assert_allclose(coef.z, coef.estimate / coef.std_error, rtol=1e-12)
    assert t[t.term == "sigma"].z.isna().all()


def test_named_coefficient_frames(quadratic):
    g, e = quadratic.gate_coef_, quadratic.expert_coef_
    assert list(g.columns) == ["(Intercept)", "x"] and len(g) == 1
    assert list(e.columns) == ["(Intercept)", "x", "I(x ** 2)", "sigma"] and len(e) == 2
    s = quadratic.summary().table
    np.testing.assert_allclose(sorted(e["I(x ** 2)"]), sorted(s[s.term == "I(x ** 2)"].estimate))


def test_standard_errors_survive_the_model_file(quadratic, npreg, tmp_path):
    path = os.path.join(tmp_path, "q.moekit")
    quadratic.save(path)
    back = load(path)
    pd.testing.assert_frame_equal(back.summary().table, quadratic.summary().table)
    pd.testing.assert_frame_equal(back.summary(se="sandwich").table, quadratic.summary(se="sandwich").table)
    np.testing.assert_allclose(back.predict(npreg), quadratic.predict(npreg))


def test_summary_from_data_equals_the_one_kept_at_fit():
    X, y = _soft_two()
    est = MoERegressor(n_experts=2, random_state=0).fit(X, y)
    lazy = MoERegressor(n_experts=2, random_state=0, compute_se=False).fit(X, y)
    assert not hasattr(lazy, "inference_")
    with pytest.raises(ValueError, match="compute_se=False"):
        lazy.summary()
    pd.testing.assert_frame_equal(lazy.summary(X=X, y=y).table, est.summary().table)


def test_bootstrap_standard_errors_are_near_the_observed_information():
    X, y = _soft_two(n=600, seed=1)
    est = MoERegressor(n_experts=2, random_state=0).fit(X, y)
    h = est.summary().table
    b = est.summary(se="bootstrap", X=X, y=y, n_boot=60, random_state=0).table
    assert b.term.tolist() == h.term.tolist()
    ratio = b.std_error / h.std_error
    assert ratio.between(0.6, 1.6).all(), ratio.tolist()


def test_tree_and_classifier_summaries():
    X, y = _soft_two(n=500)
    tree = HMERegressor(depth=2, random_state=0).fit(X, y).summary().table
    assert set(tree[tree.block == "gate"].node) == {"", "0", "1"}
    assert set(tree[tree.block == "expert"].node) == {"0.0", "0.1", "1.0", "1.1"}
    labels = np.where(X[:, 0] + 0.5 * np.random.default_rng(0).normal(size=500) > 0, "yes", "no")
    clf = MoEClassifier(n_experts=2, random_state=0).fit(X, labels).summary().table
    assert set(clf[clf.block == "expert"].output) == {"yes"}  # a logistic expert models its second class
    three = np.array(["a", "b", "c"])[np.digitize(X[:, 0], [-0.7, 0.7])]
    multi = HMEClassifier(depth=1, random_state=0).fit(X, three).summary().table
    assert set(multi[multi.block == "expert"].output) == {"b", "c"}  # against the first class


def test_summary_bad_inputs():
    X, y = _soft_two(n=200)
    with pytest.raises(NotFittedError):
        MoERegressor().summary()
    est = MoERegressor(n_experts=2, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="level must be a number strictly between 0 and 1"):
        est.summary(level=1.5)
    with pytest.raises(ValueError, match="se must be one of"):
        est.summary(se="jackknife")
    with pytest.raises(ValueError, match="n_boot must be an integer >= 2"):
        est.summary(se="bootstrap", X=X, y=y, n_boot=1)
    with pytest.raises(ValueError, match="pass the training data"):
        est.summary(se="bootstrap")
    neural = MoERegressor(n_experts=2, gate="mlp", random_state=0, max_iter=5).fit(X, y)
    with pytest.raises(TypeError, match="se='bootstrap'"):
        neural.summary()
    assert not hasattr(MDNRegressor(), "summary")


def test_formula_bad_inputs(npreg):
    with pytest.raises(ValueError, match="names 'z', which is not a column of the data"):
        MoERegressor(formula="yn ~ z").fit(npreg)
    with pytest.raises(ValueError, match="y is given"):
        MoERegressor(formula="yn ~ x").fit(npreg, npreg.yn)
    with pytest.raises(ValueError, match="gate_formula needs formula"):
        MoERegressor(gate_formula="~ x").fit(npreg[["x"]], npreg.yn)
    with pytest.raises(ValueError, match="formula must name the target"):
        MoERegressor(formula="~ x").fit(npreg)
    with pytest.raises(ValueError, match="gate_features and formula both choose columns"):
        MoERegressor(formula="yn ~ x", gate_features=[0]).fit(npreg)
    data = npreg.assign(grp=np.where(npreg["class"] == 1, "a", "b"))
    est = MoERegressor(n_experts=1, formula="yn ~ x + grp", random_state=0).fit(data)
    assert list(est.feature_names_in_) == ["x", "grp[T.b]"]
    assert est.summary().table.term.tolist() == ["(Intercept)", "x", "grp[T.b]", "sigma"]
    with pytest.raises(ValueError, match="column 'grp' holds the level 'c', which the model never saw"):
        est.predict(data.assign(grp="c"))


def test_auto_computes_standard_errors_only_under_its_budget(monkeypatch):
    import moekit.estimators.summary as summary_module

    X, y = _soft_two(n=200)
    assert hasattr(MoERegressor(n_experts=2, random_state=0).fit(X, y), "inference_")  # 200 rows x 8 parameters
    monkeypatch.setattr(summary_module, "AUTO_SE_BUDGET", 1000)
    big = MoERegressor(n_experts=2, random_state=0).fit(X, y)
    assert not hasattr(big, "inference_")
    with pytest.raises(ValueError, match="'auto' on more than"):
        big.summary()
    assert hasattr(MoERegressor(n_experts=2, random_state=0, compute_se=True).fit(X, y), "inference_")
    assert len(big.summary(X=X, y=y).table) == 8


def test_singular_information_warns_naming_the_parameter():
    X, y = _soft_two(n=300)
    X2 = np.c_[X, X]  # two copies of x: the data cannot tell their coefficients apart
    est = MoERegressor(n_experts=2, random_state=0).fit(pd.DataFrame(X2, columns=["a", "b"]), y)
    with pytest.warns(UserWarning, match=r"singular.*term '(a|b)'"):
        s = est.summary()
    assert s.notes and s.table[s.table.term.isin(["a", "b"])].std_error.isna().all()


def test_formulas_are_data_not_code(npreg, tmp_path):
    """formulaic evaluates terms as Python: moekit's formulas, and those a model file holds, run no code."""
    import struct

    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from moekit.io import ModelFileError, _checksum

    marker = tmp_path / "ran"
    evil = f"I(x + len(open({str(marker)!r}, 'w').name))"
    with pytest.raises(ValueError, match="calls '(len|open)'"):
        MoERegressor(formula=f"yn ~ {evil}").fit(npreg)
    with pytest.raises(ValueError, match="reads an attribute"):
        MoERegressor(formula="yn ~ I(x.__class__)").fit(npreg)
    # a model file whose formula was rewritten (and re-signed) is refused before anything is evaluated
    path = tmp_path / "m.moekit"
    MoERegressor(n_experts=1, formula="yn ~ I(x + 0)", random_state=0).fit(npreg).save(path)
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    meta = json.loads(blob[8:8 + n])["__metadata__"]
    tensors = st_load(blob)
    meta["config"] = meta["config"].replace("I(x + 0)", evil.replace("'", "\\u0027").replace('"', '\\"'))
    assert evil.split("open")[0] in meta["config"]
    meta["checksum"] = _checksum(meta["config"], tensors)
    path.write_bytes(st_save(tensors, metadata=meta))
    with pytest.raises(ModelFileError):
        load(path)
    assert not marker.exists()


def test_summary_from_data_takes_the_per_row_extras():
    """summary(X=..., y=..., offset=...) recomputes the standard errors with the model's own x (offset column)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 1))
    log_expo = np.log(rng.uniform(0.5, 3, size=600))
    y = rng.poisson(np.exp(log_expo + 0.5 + 0.3 * X[:, 0]))
    est = MoERegressor(n_experts=1, expert="poisson", random_state=0).fit(X, y, offset=log_expo)
    at_fit = est.summary().table
    again = est.summary(X=X, y=y, offset=log_expo).table
    np.testing.assert_allclose(again["std_error"], at_fit["std_error"], rtol=1e-10)
    boot = est.summary(X=X, y=y, offset=log_expo, se="bootstrap", n_boot=10, random_state=0).table
    assert np.isfinite(boot["std_error"]).all()
    with pytest.raises(ValueError, match="offset given without X and y"):
        est.summary(offset=log_expo)
    with pytest.raises(ValueError, match="pass offset= here too"):
        est.summary(X=X, y=y)
