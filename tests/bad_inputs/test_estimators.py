"""The bad-input catalogue of the Python API: one row per bad call, its exception type and its message.

Every message names the argument (X, y, sample_weight, a parameter, a column) and says what to do.
The cases of issue 16 (string y for a regressor, predict_quantiles before fit, DataFrames with text
or category columns, ID-like columns, MDN devices, hidden_layer_sizes=-3) are here with the older ones
and those found since.  Numerical extremes are in test_numerics.py, model files in
test_model_files.py, the command line in test_cli.py; every public method before fit is in
tests/estimators/test_not_fitted.py (enumerated from the classes).
"""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

from moekit import HMEClassifier, HMERegressor, MDNRegressor, MoEClassifier, MoERegressor
from moekit.selection import parse_n_experts, select_n_experts

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

N = 40
X = np.linspace(-1, 1, N)[:, None]
Y = 2 * X[:, 0] + 0.1 * np.sin(7 * X[:, 0])
YC = (X[:, 0] > 0).astype(int)
RNG = np.random.default_rng(0)
DF = pd.DataFrame({"x": X[:, 0], "g": RNG.choice(["a", "b", "c"], N),
                   "h": pd.Categorical(RNG.choice(["lo", "hi"], N), categories=["lo", "hi"])})


@pytest.fixture(scope="module")
def m():
    """Fitted models the prediction cases call."""
    return SimpleNamespace(
        reg=MoERegressor(n_experts=1, random_state=0).fit(X, Y),
        reg2=MoERegressor(n_experts=1, random_state=0).fit(X, np.c_[Y, -Y]),
        clf=MoEClassifier(n_experts=1, random_state=0).fit(X, YC),
        df=MoERegressor(n_experts=1, random_state=0).fit(DF, Y),
        hme=HMERegressor(depth=1, random_state=0, max_iter=10).fit(X, Y),
    )


def _fit(est, X=X, y=Y, **kw):
    return lambda m: est.fit(X, y, **kw)


def _ids(n):
    return pd.DataFrame({"country": [f"c{i:02d}" for i in range(n)], "x": np.linspace(0, 1, n)})


V, T, NF = ValueError, TypeError, NotFittedError

CASES = [
    # ------------------------------------------------------------------ before fit
    ("predict_quantiles before fit", lambda m: MoERegressor().predict_quantiles(X, 0.5), NF,
     r"MoERegressor instance is not fitted yet.*before 'predict_quantiles'"),
    ("MDN predict_quantiles before fit", lambda m: MDNRegressor().predict_quantiles(X, [0.1, 0.9]), NF,
     r"MDNRegressor instance is not fitted yet.*'predict_quantiles'"),
    ("HME predict_interval before fit", lambda m: HMERegressor().predict_interval(X), NF, r"'predict_interval'"),
    ("predict_proba before fit", lambda m: MoEClassifier().predict_proba(X), NF, r"'predict_proba'"),
    ("HME render_tree before fit", lambda m: HMEClassifier().render_tree(), NF, r"'render_tree'"),
    ("save before fit", lambda m: MDNRegressor().save("never.moekit"), NF, r"'save'"),
    ("score before fit", lambda m: MoERegressor().score(X, Y), NF, r"before 'score'"),
    ("target_shape before fit", lambda m: MoERegressor().target_shape(), NF, r"'target_shape'"),
    # ------------------------------------------------------------------ X
    ("X None", _fit(MoERegressor(), X=None), V, r"X is None"),
    ("X 1-D", _fit(MoERegressor(), X=X[:, 0]), V, r"X must be 2-D .*1-D .*Reshape your data: X\.reshape\(-1, 1\)"),
    ("X 3-D", _fit(MoERegressor(), X=X[:, :, None]), V, r"X must be 2-D .*3-D array of shape \(40, 1, 1\)"),
    ("X no rows", _fit(MoERegressor(), X=X[:0], y=Y[:0]), V, r"X has no rows"),
    ("X ragged", _fit(MoERegressor(), X=[[1.0], [2.0, 3.0]], y=[1.0, 2.0]), V, r"X is ragged"),
    ("X NaN", _fit(MoERegressor(), X=np.where(X > 0.5, np.nan, X)), V, r"Input X contains NaN"),
    ("X inf", _fit(MoERegressor(), X=np.where(X > 0.5, np.inf, X)), V, r"Input X contains infinity"),
    ("X text array", _fit(MoERegressor(), X=np.array([["a"]] * N)), V, r"X holds text .*DataFrame"),
    ("X complex", _fit(MoERegressor(), X=X + 1j), V, r"X holds complex numbers"),
    ("predict X 1-D", lambda m: m.reg.predict(X[:, 0]), V, r"X must be 2-D"),
    ("predict X no rows", lambda m: m.reg.predict(X[:0]), V, r"X has no rows"),
    ("predict X NaN", lambda m: m.reg.predict(X * np.nan), V, r"Input X contains NaN"),
    ("predict X wrong width", lambda m: m.reg.predict(np.c_[X, X]), V,
     r"X has 2 features, but MoERegressor is expecting 1"),
    ("predict X text for numeric model", lambda m: m.reg.predict(DF[["g"]]), V,
     r"X has text or category columns \['g'\].*fitted on numbers only"),
    # ------------------------------------------------------------------ y
    ("y None", _fit(MoERegressor(), y=None), V, r"requires y to be passed, but the target y is None"),
    ("y length", _fit(MoERegressor(), y=Y[:-1]), V, r"y has 39 rows but X has 40"),
    ("y 3-D", _fit(MoERegressor(), y=Y[:, None, None]), V, r"y must be 1-D \(n,\) or 2-D \(n, d_y\), got a 3-D"),
    ("y NaN", _fit(MoERegressor(), y=np.where(Y > 0.5, np.nan, Y)), V, r"Input y contains NaN"),
    ("y inf", _fit(MoERegressor(), y=np.where(Y > 0.5, np.inf, Y)), V, r"Input y contains infinity"),
    ("string y for a regressor", _fit(MoERegressor(), y=np.array(["lo", "hi"] * (N // 2))), V,
     r"y holds text \(dtype <U2, e\.g\. 'lo'\); a regressor needs numbers.*MoEClassifier"),
    ("string y for MDN", _fit(MDNRegressor(), y=np.array(["a"] * N, dtype=object)), V, r"y holds text \(dtype object"),
    ("string y for HME", _fit(HMERegressor(), y=pd.Series(["a", "b"] * (N // 2))), V, r"y holds text"),
    ("category y for a regressor", _fit(MoERegressor(), y=pd.Series(["a", "b"] * (N // 2), dtype="category")), V,
     r"y holds text \(dtype category"),
    ("string y in score_samples", lambda m: m.reg.score_samples(X, np.array(["a"] * N)), V, r"y holds text"),
    ("string y in score", lambda m: m.reg.score(X, np.array(["a"] * N)), V, r"y holds text"),
    ("score y length", lambda m: m.reg.score(X, Y[:3]), V, r"y has 3 rows but X has 40"),
    ("score_samples y length", lambda m: m.reg.score_samples(X, Y[:-1]), V, r"y must have shape \(40,\)"),
    ("score_samples 2-D y for 1-D model", lambda m: m.reg.score_samples(X, np.c_[Y, Y]), V, r"y must have shape"),
    ("score_samples y NaN", lambda m: m.reg.score_samples(X, Y * np.nan), V, r"y contains NaN"),
    ("responsibilities y length", lambda m: m.reg.responsibilities(X, Y[:5]), V, r"y must have shape"),
    ("render_tree y length", lambda m: m.hme.render_tree(X, Y[:3]), V, r"y must have shape"),
    ("classifier continuous y", _fit(MoEClassifier(), y=Y), V, r"y holds continuous numbers .*use a regressor"),
    ("classifier one class", _fit(MoEClassifier(), y=np.zeros(N)), V, r"y has only 1 class"),
    ("classifier 2-D y", _fit(MoEClassifier(), y=np.c_[YC, YC]), V, r"y should be a 1d array"),
    ("classifier unseen labels", lambda m: m.clf.score_samples(X, YC + 5), V, r"y holds labels not seen in fit"),
    ("classifier score y length", lambda m: m.clf.score(X, YC[:4]), V, r"y has 4 rows but X has 40"),
    ("poisson negative y", _fit(MoERegressor(expert="poisson"), y=-np.ones(N)), V,
     r"y must hold non-negative integer counts"),
    # ------------------------------------------------------------------ sample_weight
    ("sample_weight length", _fit(MoERegressor(), sample_weight=np.ones(3)), V, r"sample_weight has 3 entries"),
    ("sample_weight negative", _fit(MoERegressor(), sample_weight=-np.ones(N)), V, r"sample_weight must be non-neg"),
    ("sample_weight NaN", _fit(MoERegressor(), sample_weight=np.full(N, np.nan)), V, r"sample_weight contains 40 NaN"),
    ("sample_weight zero", _fit(MoERegressor(), sample_weight=np.zeros(N)), V, r"sample_weight sums to zero"),
    ("sample_weight 2-D", _fit(MoERegressor(), sample_weight=np.ones((N, 2))), V, r"sample_weight must be 1-D"),
    # ------------------------------------------------------------------ parameters
    ("n_experts 0", _fit(MoERegressor(n_experts=0)), V, r"n_experts must be an integer >= 1, got 0"),
    ("n_experts text", _fit(MoERegressor(n_experts="2")), V, r"n_experts must be an integer >= 1, got '2'"),
    ("expert name", _fit(MoERegressor(expert="foo")), V, r"expert must be one of .*got 'foo'"),
    ("gate name", _fit(MoERegressor(gate="bar")), V, r"gate must be one of .*got 'bar'"),
    ("fit_method", _fit(MoERegressor(fit_method="sgd")), V, r"fit_method must be one of .*got 'sgd'"),
    ("covariance", _fit(MoERegressor(covariance="weird")), V, r"covariance must be one of"),
    ("init", _fit(MoERegressor(init="bogus")), V, r"init must be one of"),
    ("max_iter", _fit(MoERegressor(max_iter=-1)), V, r"max_iter must be an integer >= 1"),
    ("tol", _fit(MoERegressor(tol=-1)), V, r"tol must be a number in \[0\.0, inf\)"),
    ("n_init", _fit(MoERegressor(n_init=0)), V, r"n_init must be an integer >= 1"),
    ("dtype", _fit(MoERegressor(dtype="int8")), V, r"dtype must be 'float64' or 'float32'"),
    ("device", _fit(MoERegressor(device="bogus")), V, r"device must be .*got 'bogus'"),
    ("MDN device", _fit(MDNRegressor(device="bogus")), V, r"device must be .*got 'bogus'"),
    ("hidden_layer_sizes -3", _fit(MoERegressor(expert="mlp", hidden_layer_sizes=-3)), V,
     r"hidden_layer_sizes must hold positive integers, got -3"),
    ("MDN hidden_layer_sizes -3", _fit(MDNRegressor(hidden_layer_sizes=-3)), V, r"hidden_layer_sizes must hold"),
    ("random_state", _fit(MoERegressor(random_state="x")), V, r"random_state must be"),
    ("var_floor", _fit(MoERegressor(var_floor=-1)), V, r"var_floor must be a number in \(0\.0, inf\)"),
    ("alpha", _fit(MoERegressor(alpha=-1)), V, r"alpha must be a number in \[0\.0, inf\)"),
    ("HME depth 0", _fit(HMERegressor(depth=0)), V, r"depth must be an integer >= 1"),
    ("MDN n_components 0", _fit(MDNRegressor(n_components=0)), V, r"n_components must be an integer >= 1"),
    ("MDN activation", _fit(MDNRegressor(activation="bogus")), V, r"activation must be one of"),
    ("MDN learning_rate", _fit(MDNRegressor(learning_rate=-1)), V, r"learning_rate must be a number in \(0\.0"),
    ("gate_features name without names", _fit(MoERegressor(gate_features=["z"])), V,
     r"gate_features holds the column name 'z' but X has no column names"),
    ("gate_features index", _fit(MoERegressor(gate_features=[5])), V, r"gate_features: column index 5 is out of range"),
    ("more parameters than rows", _fit(MoERegressor(n_experts=5), X=X[:5], y=Y[:5]), V,
     r"got 5 sample\(s\) with positive weight, but a model with n_experts=5 .* 23 free parameters"),
    # ------------------------------------------------------------------ prediction arguments
    ("q 0", lambda m: m.reg.predict_quantiles(X, 0), V, r"q must hold levels strictly between 0 and 1, got 0"),
    ("q 1.5", lambda m: m.reg.predict_quantiles(X, [1.5]), V, r"q must hold levels .*got \[1\.5\]"),
    ("q NaN", lambda m: m.reg.predict_quantiles(X, np.nan), V, r"q must hold levels .*got nan"),
    ("quantiles of a 2-D y", lambda m: m.reg2.predict_quantiles(X, 0.5), V, r"predict_quantiles needs a scalar"),
    ("interval of a 2-D y", lambda m: m.reg2.predict_interval(X), V, r"predict_interval needs a scalar"),
    ("interval kind", lambda m: m.reg.predict_interval(X, kind="bogus"), V, r"kind must be 'hdr' or 'central'"),
    ("interval level 2", lambda m: m.reg.predict_interval(X, level=2), V, r"level must be a probability .*got 2"),
    ("central level 2", lambda m: m.reg.predict_interval(X, level=2, kind="central"), V, r"level must be a prob"),
    ("sample_y n_samples", lambda m: m.reg.sample_y(X, n_samples=0), V, r"n_samples must be a positive integer"),
    ("modes max_modes", lambda m: m.reg.predict_modes(X, max_modes=0), V, r"max_modes must be None or a positive"),
    ("modes min_weight", lambda m: m.reg.predict_modes(X, min_weight=2), V, r"min_weight must be a number in"),
    # ------------------------------------------------------------------ DataFrames
    ("DataFrame unseen category", lambda m: m.df.predict(DF.assign(g="zz")), V,
     r"input column 'g' of X holds the category 'zz' in row 1, which the model never saw in training"),
    ("DataFrame unseen declared category", lambda m: m.df.predict(DF.assign(h=pd.Categorical(["mid"] * N))), V,
     r"input column 'h' of X holds the category 'mid'"),
    ("DataFrame missing column", lambda m: m.df.predict(DF[["x", "g"]]), V, r"X must have the columns .*missing \['h'\]"),
    ("DataFrame extra column", lambda m: m.df.predict(DF.assign(z=1.0)), V, r"not seen in fit \['z'\]"),
    ("array of the wrong width for a DataFrame model", lambda m: m.df.predict(X), V,
     r"X must be a DataFrame with the columns \['x', 'g', 'h'\]"),
    ("ID-like column", _fit(MoERegressor(), X=_ids(N)), V,
     r"input column 'country' has a different value in every row \(40 levels in 40 rows\).*X\.drop"),
    ("too many levels", _fit(MoERegressor(), X=pd.DataFrame({"k": [f"k{i % 201}" for i in range(402)]}),
                             y=np.arange(402.0)), V, r"input column 'k' has 201 distinct text values, too many"),
    ("missing text value", _fit(MoERegressor(), X=DF.assign(g=[None] + list(DF.g[1:]))), V,
     r"X column 'g' has a missing value in row 1"),
    ("non-numeric value in a numeric text column",
     _fit(MoERegressor(), X=pd.DataFrame({"x": ["1.5"] * (N - 1) + ["oops"]}, dtype=object)), V,
     r"X column 'x' holds the non-numeric value 'oops' in row 40"),
    ("single-level categories only", _fit(MoERegressor(), X=pd.DataFrame({"g": ["a"] * N})), V,
     r"X: every column is a category with a single level"),
    ("duplicate column names", _fit(MoERegressor(), X=pd.DataFrame([["a", "b"]] * N, columns=["g", "g"])), V,
     r"X has duplicate column names \['g'\]"),
    ("gate_features original name of an encoded column", _fit(MoERegressor(gate_features=["g"]), X=DF), V,
     r"gate_features: column 'g' is not in X's columns \['x', 'g\[T\.b\]'"),
    # ------------------------------------------------------------------ selection
    ("select criterion", lambda m: select_n_experts(MoERegressor, X, Y, [1], criterion="mdl"), V,
     r"criterion must be one of"),
    ("select ks empty", lambda m: select_n_experts(MoERegressor, X, Y, []), V, r"ks must be a non-empty sequence"),
    ("select ks twice", lambda m: select_n_experts(MoERegressor, X, Y, [1, 1]), V, r"ks lists a value twice"),
    ("select every K too large", lambda m: select_n_experts(lambda k: MoERegressor(n_experts=k), X[:8], Y[:8], [3, 4]),
     V, r"ks: every candidate has at least as many free parameters as the data has rows \(8\)"),
    ("select weights with BIC", lambda m: select_n_experts(MoERegressor, X, Y, [1], sample_weight=np.ones(N)), V,
     r"criterion='bic' does not take sample_weight"),
    ("select n_folds", lambda m: select_n_experts(MoERegressor, X, Y, [1], criterion="cv", n_folds=1), V,
     r"n_folds must be an integer between 2"),
    ("parse ks text", lambda m: parse_n_experts("a..b"), V, r"give a range such as 1\.\.8"),
    ("parse ks range", lambda m: parse_n_experts("0..3"), V, r"between 1 and 64"),
]


@pytest.mark.parametrize(("call", "exc", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_call(m, call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(m)


def test_catalogue_size():
    assert len(CASES) >= 90
    assert len({c[0] for c in CASES}) == len(CASES)
