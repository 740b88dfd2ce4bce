"""Scale equivariance of the estimators, and the clear error outside the supported range.

A fit on ``X * 2**k`` must give the predictions of the fit on the original data for every k that
float64 can represent (X outside :func:`moekit._validation.supported_magnitudes` is rescaled
internally by a power of two, so the fits are the same bit for bit); a fit on ``y * 2**k`` the
predictions times ``2**k`` for every k whose y lies in that range.  Outside it (y, or X where the
rescaling cannot be undone) ``fit`` raises a ``ValueError`` that names the argument, states the
range and why (never a crash inside torch, a message on stdout, or a column silently ignored).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone

from moekit import HMEClassifier, HMERegressor, MDNRegressor, MoEClassifier, MoERegressor
from moekit._validation import supported_magnitudes

LO, HI = supported_magnitudes(torch.float64)
#: Powers of two spanning the supported float64 range of data whose columns have magnitude about 3.
K_INSIDE = [-490, -300, -100, -20, 20, 100, 300, 495]
#: Powers of two beyond it (the data's magnitude is about 3 * 2**k).
K_OUTSIDE = [-1000, -520, -502, 499, 600, 1000]
#: Scales of X across float64, 2**-1000 to 2**1020: the slopes in X's units (about 1 / |X|) stay normal numbers too.
K_ANY = [-1000, -700, -520, -502, *K_INSIDE, 499, 600, 800, 1000, 1020]

RANGE_RE = r"outside the range a float64 model supports: column magnitudes .* from 1\.22e-150 to 3\.27e\+150"


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2))
    y = np.where(X[:, 1] > 0, 2 * X[:, 0], -X[:, 0]) + 0.1 * rng.normal(size=200)
    return X, y


def _reg(**kw):
    return MoERegressor(**{"n_experts": 2, "random_state": 0, "max_iter": 50, **kw})


@pytest.fixture(scope="module")
def reference(data):
    X, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = _reg().fit(X, y)
    return est.predict(X), est.score_samples(X, y)


def _fit_quiet(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, y)


@pytest.mark.parametrize("k", K_ANY)
def test_x_scaled_by_a_power_of_two_gives_the_same_predictions(data, reference, k):
    X, y = data
    s = math.ldexp(1.0, k)
    est = _fit_quiet(_reg(), X * s, y)
    pred, ll = reference
    np.testing.assert_allclose(est.predict(X * s), pred, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(est.score_samples(X * s, y), ll, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k", [-1000, -520, 520, 1000])
def test_x_rescaled_internally_is_exact(data, k):
    """Outside the range X is divided by a power of two: every such fit is the same, bit for bit."""
    X, y = data
    a = _fit_quiet(_reg(), X * math.ldexp(1.0, k), y)
    b = _fit_quiet(_reg(), X * math.ldexp(1.0, 600), y)
    np.testing.assert_array_equal(a.mean_log_likelihood_history_, b.mean_log_likelihood_history_)
    np.testing.assert_array_equal(a.predict(X * math.ldexp(1.0, k)), b.predict(X * math.ldexp(1.0, 600)))


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda: _reg(alpha=0.1), r"alpha > 0"),
        (lambda: _reg(expert="mlp", max_iter=3), r"other than linearly"),
        (lambda: _reg(gate="mlp", max_iter=3), r"other than linearly"),
    ],
    ids=["ridge", "mlp-expert", "mlp-gate"],
)
@pytest.mark.parametrize("k", [-600, 600])
def test_x_outside_the_range_that_cannot_be_rescaled_is_a_clear_error(data, make, why, k, capfd):
    X, y = data
    with pytest.raises(ValueError, match=rf"^X column 0 has magnitude .*{RANGE_RE}.*rescaled internally only .*{why}"):
        make().fit(X * math.ldexp(1.0, k), y)
    assert capfd.readouterr().out == ""


def test_x_columns_too_far_apart_to_share_one_rescaling(data):
    X, y = data
    Xs = np.column_stack([X[:, 0] * 1e300, X[:, 1]])
    with pytest.raises(ValueError, match=r"^X column 0 has magnitude .*differ in magnitude by more than the range"):
        _reg().fit(Xs, y)


def test_coefficients_beyond_float64_in_x_units_are_a_clear_error(data):
    """X of subnormal magnitude: the slopes in X's units (about 2**1070) do not exist in float64."""
    X, y = data
    with pytest.raises(ValueError, match=r"^X was multiplied internally by 2\*\*-?\d+ to bring it into the supported range, but the fitted coefficients"):
        _reg().fit(X * math.ldexp(1.0, -1070), y)


@pytest.mark.parametrize("k", K_INSIDE)
def test_y_scaled_by_a_power_of_two_gives_the_predictions_scaled(data, reference, k):
    X, y = data
    s = math.ldexp(1.0, k)
    est = _fit_quiet(_reg(), X, y * s)
    pred, ll = reference
    np.testing.assert_allclose(est.predict(X) / s, pred, rtol=1e-6, atol=1e-6)
    # the log-density of y * s is that of y less log s (the change of units)
    np.testing.assert_allclose(est.score_samples(X, y * s) + k * math.log(2.0), ll, rtol=1e-6, atol=1e-6)
    assert np.isfinite(est.log_likelihood_)


@pytest.mark.parametrize("k", K_OUTSIDE)
def test_y_outside_the_supported_range_is_a_clear_error(data, k, capfd):
    X, y = data
    with pytest.raises(ValueError, match=rf"^y has magnitude .*{RANGE_RE}"):
        _reg().fit(X, y * math.ldexp(1.0, k))
    out = capfd.readouterr()
    assert out.out == "", "a numerical library wrote to stdout"


@pytest.mark.parametrize(
    "make",
    [
        lambda: HMERegressor(depth=1, random_state=0, max_iter=30),
        lambda: MoEClassifier(n_experts=2, random_state=0, max_iter=30),
        lambda: HMEClassifier(depth=1, random_state=0, max_iter=30),
        lambda: _reg(fit_method="gradient", max_iter=5),
    ],
    ids=["hme-regressor", "moe-classifier", "hme-classifier", "moe-gradient"],
)
@pytest.mark.parametrize("k", [-1000, -480, 0, 480, 1000])
def test_every_linear_estimator_takes_any_scale_of_x(data, make, k):
    X, y = data
    est = make()
    if isinstance(est, (MoEClassifier, HMEClassifier)):
        y = (y > 0).astype(int)
    ref = _fit_quiet(clone(est), X, y).predict(X)
    Xs = X * math.ldexp(1.0, k)
    got = _fit_quiet(est, Xs, y).predict(Xs)
    if hasattr(est, "classes_"):
        assert np.mean(got == ref) > 0.98
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k", [-100, -40, 0, 40, 100])
def test_mdn_standardises_any_scale(data, k):
    """The MDN standardises x and y in float64: a float32 network fits float64 data of any magnitude."""
    X, y = data
    s = math.ldexp(1.0, k)
    kw = {"n_components": 2, "max_epochs": 3, "random_state": 0, "early_stopping": False, "dtype": "float64"}
    ref = MDNRegressor(**kw).fit(X, y).predict(X)
    got = MDNRegressor(**kw).fit(X * s, y * s).predict(X * s) / s
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-8)
