"""Property-based tests of every estimator against hostile data and parameters (issue 16).

The property: a call either returns finite numbers (predictions, densities, quantiles) or raises
one of the documented exception types (``ValueError``, ``TypeError``, scikit-learn's
``NotFittedError``) with a message that reads as moekit's own (it names an argument or a limit,
never an internal assertion of a numerical library); the caller's arrays are never modified.
"""

import re
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError

from moekit import HMEClassifier, HMERegressor, MDNRegressor, MoEClassifier, MoERegressor

# what a message from a numerical library or Python's internals looks like: never what a user should see
_INTERNAL = re.compile(r"INTERNAL ASSERT|please report a bug|ufunc|could not convert|object is not|"
                       r"has no attribute|index \d+ is out of bounds|unsupported operand|"
                       r"Expected all tensors|illegal value|must be a tensor|NoneType", re.I)
# the arguments a message may name (any one of them, or a limit such as 'float32')
_NAMED = re.compile(r"\b(X|y|sample_weight|n_experts|n_components|depth|max_iter|tol|dtype|device|"
                    r"hidden_layer_sizes|input|target|classes?|class|row|column|feature|features|"
                    r"range|scale|float32|float64|finite|NaN|inf|weight|sample|samples|label|labels|"
                    r"init|alpha|q|level|value|values|variance|constant|n_init|branching|distinct|random_state)\b", re.I)

ALLOWED = (ValueError, TypeError, NotFittedError)


def _make(kind: str, k: int):
    if kind == "moe_reg":
        return MoERegressor(n_experts=k, max_iter=15, random_state=0)
    if kind == "moe_clf":
        return MoEClassifier(n_experts=k, max_iter=15, random_state=0)
    if kind == "hme_reg":
        return HMERegressor(depth=1, branching=max(k, 2), max_iter=15, random_state=0)
    if kind == "hme_clf":
        return HMEClassifier(depth=1, branching=max(k, 2), max_iter=15, random_state=0)
    return MDNRegressor(n_components=k, hidden_layer_sizes=(4,), max_epochs=3, random_state=0)


@st.composite
def _data(draw):
    kind = draw(st.sampled_from(["moe_reg", "moe_clf", "hme_reg", "hme_clf", "mdn"]))
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 3))
    k = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x_exp = draw(st.sampled_from([0, 0, 0, -300, -200, -160, -40, 40, 150, 154, 200, 300]))
    y_exp = draw(st.sampled_from([0, 0, 0, -300, -160, -40, 40, 154, 300]))
    X = rng.normal(size=(n, d)) * 10.0 ** x_exp
    if draw(st.booleans()) and n > 1:
        X[:, 0] = 1.0  # a constant column
    bad = draw(st.sampled_from([None, None, None, np.nan, np.inf, -np.inf]))
    if bad is not None:
        X[rng.integers(n), rng.integers(d)] = bad
    if kind.endswith("clf"):
        y = rng.integers(0, draw(st.integers(1, 3)), size=n)
    else:
        y = (X[:, 0] if np.all(np.isfinite(X)) else rng.normal(size=n)) * 0 + rng.normal(size=n)
        y = y * 10.0 ** y_exp
        if draw(st.booleans()):
            y = np.full(n, draw(st.sampled_from([0.0, 3.0, -1e300, 1e-300])))
    dtype = draw(st.sampled_from([np.float64, np.float32, np.int64]))
    if dtype is not np.float64:
        with np.errstate(all="ignore"):
            X = X.astype(dtype) if dtype is not np.int64 else np.nan_to_num(X).clip(-1e9, 1e9).astype(np.int64)
    w = None
    if draw(st.booleans()):
        w = rng.uniform(0, 2, size=n)
        if draw(st.booleans()):
            w[rng.integers(n)] = draw(st.sampled_from([0.0, -1.0, np.nan, 1e300]))
    return kind, k, X, y, w


def _check_message(err: Exception, name: str | None = None) -> None:
    """The message reads as moekit's own and names the argument (``name`` when known)."""
    msg = str(err)
    assert msg, f"{type(err).__name__} without a message"
    assert not _INTERNAL.search(msg), f"internal message reached the user: {type(err).__name__}: {msg}"
    if name is None:
        assert _NAMED.search(msg), f"the message names no argument: {type(err).__name__}: {msg}"
    else:
        assert name in msg, f"the error for a bad {name} does not name it: {type(err).__name__}: {msg}"


def _finite(a, what: str) -> None:
    a = np.asarray(a, dtype=float)
    assert np.all(np.isfinite(a)), f"{what} returned a non-finite value: {a.ravel()[:5]}"


@given(_data())
def test_fit_and_predict_finite_or_clear_error(case):
    kind, k, X, y, w = case
    X0, y0, w0 = X.copy(), y.copy(), None if w is None else w.copy()
    est = _make(kind, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            est.fit(X, y, sample_weight=w)
        except ALLOWED as err:
            _check_message(err)
            return
        finally:
            np.testing.assert_array_equal(X, X0)
            np.testing.assert_array_equal(y, y0)
            if w is not None:
                np.testing.assert_array_equal(w, w0)
        for name, call in [("predict", lambda: est.predict(X)),
                           ("score_samples", lambda: est.score_samples(X, y)),
                           ("predict_gate", lambda: est.predict_gate(X))]:
            try:
                out = call()
            except ALLOWED as err:  # e.g. rows beyond what the fitted model's dtype can hold
                _check_message(err)
                continue
            _finite(out, name)
        if not kind.endswith("clf"):
            try:
                _finite(est.predict_quantiles(X, [0.1, 0.5, 0.9]), "predict_quantiles")
            except ALLOWED as err:
                _check_message(err)
        np.testing.assert_array_equal(X, X0)
        np.testing.assert_array_equal(y, y0)


@given(st.sampled_from(["moe_reg", "moe_clf", "hme_reg", "hme_clf", "mdn"]),
       st.sampled_from(["n_experts", "max_iter", "tol", "dtype", "device", "random_state"]),
       st.sampled_from([-3, 0, 0.5, 1e300, float("nan"), "bogus", None, [1, 2], True]))
def test_bad_parameters_clear_error(kind, name, value):
    est = _make(kind, 2)
    if kind == "mdn" and name == "n_experts":
        name = "n_components"
    if kind.startswith("hme") and name == "n_experts":
        name = "branching"
    if kind == "mdn" and name in ("max_iter", "tol"):
        name = {"max_iter": "max_epochs", "tol": "batch_size"}[name]
    est.set_params(**{name: value})
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 2))
    y = rng.integers(0, 2, size=30) if kind.endswith("clf") else rng.normal(size=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            est.fit(X, y)
        except ALLOWED as err:
            _check_message(err, name)
            return
    _finite(est.predict(X), "predict")


@pytest.mark.parametrize("kind", ["moe_reg", "moe_clf", "hme_reg", "hme_clf", "mdn"])
def test_public_methods_before_fit_raise_not_fitted(kind):
    est = _make(kind, 2)
    X = np.zeros((3, 2))
    with pytest.raises(NotFittedError):
        est.predict(X)
