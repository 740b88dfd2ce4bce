"""Scale equivariance of the estimators, and the clear error outside the supported range.

A fit on ``X * 2**k`` (or ``y * 2**k``) must give the predictions of the fit on the original data, up
to that scale, for every k whose data lies in :func:`moekit._validation.supported_magnitudes` of the
model's dtype; outside that range ``fit`` raises a ``ValueError`` that names the argument and states
the range (never a crash inside torch, a message on stdout, or a column silently ignored).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from moekit import HMEClassifier, HMERegressor, MDNRegressor, MoEClassifier, MoERegressor
from moekit._validation import supported_magnitudes

LO, HI = supported_magnitudes(torch.float64)
#: Powers of two spanning the supported float64 range of data whose columns have magnitude about 3.
K_INSIDE = [-490, -300, -100, -20, 20, 100, 300, 495]
#: Powers of two beyond it (the data's magnitude is about 3 * 2**k).
K_OUTSIDE = [-1000, -520, -502, 499, 600, 1000]

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


@pytest.mark.parametrize("k", K_INSIDE)
def test_x_scaled_by_a_power_of_two_gives_the_same_predictions(data, reference, k):
    X, y = data
    s = math.ldexp(1.0, k)
    est = _fit_quiet(_reg(), X * s, y)
    pred, ll = reference
    np.testing.assert_allclose(est.predict(X * s), pred, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(est.score_samples(X * s, y), ll, rtol=1e-6, atol=1e-6)


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
@pytest.mark.parametrize("which", ["X", "y"])
def test_outside_the_supported_range_is_a_clear_error(data, which, k, capfd):
    X, y = data
    s = math.ldexp(1.0, k)
    Xs, ys = (X * s, y) if which == "X" else (X, y * s)
    if not (np.isfinite(Xs).all() and np.isfinite(ys).all()):
        pytest.skip("beyond float64 itself")
    with pytest.raises(ValueError, match=rf"^{which}( column \d)? has magnitude .*{RANGE_RE}"):
        _reg().fit(Xs, ys)
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
@pytest.mark.parametrize("k", [-480, 0, 480, 1000])
def test_every_float64_estimator_follows_the_same_rule(data, make, k):
    X, y = data
    est = make()
    if isinstance(est, (MoEClassifier, HMEClassifier)):
        y = (y > 0).astype(int)
    Xs = X * math.ldexp(1.0, k)
    if k == 1000:
        with pytest.raises(ValueError, match=RANGE_RE):
            est.fit(Xs, y)
        return
    _fit_quiet(est, Xs, y)
    assert np.isfinite(est.predict(Xs)).all() if not hasattr(est, "classes_") else est.score(Xs, y) > 0.5


@pytest.mark.parametrize("k", [-100, -40, 0, 40, 100])
def test_mdn_standardises_any_scale(data, k):
    """The MDN standardises x and y in float64: a float32 network fits float64 data of any magnitude."""
    X, y = data
    s = math.ldexp(1.0, k)
    kw = {"n_components": 2, "max_epochs": 3, "random_state": 0, "early_stopping": False, "dtype": "float64"}
    ref = MDNRegressor(**kw).fit(X, y).predict(X)
    got = MDNRegressor(**kw).fit(X * s, y * s).predict(X * s) / s
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-8)
