"""Slow: 1,000 seeded trainings of mixture density networks never produce a NaN or infinite loss.

Two problems, 1,000 seeds each: Bishop's inverse sine (scalar y) and a
10-dimensional-output synthetic problem (correlated noise, every covariance
type).  Every seed also draws hostile settings: targets scaled by 1e-3 to
1e6 and shifted, learning rates up to 0.1, K up to 10, tiny and full
batches, several activations.  Networks are small and trained for a few
epochs: the property under test is numerical (no NaN/inf, ever), not fit
quality.  ``fit_mdn`` raises ``FloatingPointError`` as soon as an epoch's
summed minibatch losses (so any single minibatch loss) or the validation loss
is not finite; the test also checks every recorded value and the final
log-densities on fresh data.
"""

import math
import warnings

import numpy as np
import pytest
import torch

from moekit.datasets import make_inverse_sine
from moekit import MixtureDensityNetwork
from moekit.training.mdn import fit_mdn

pytestmark = pytest.mark.slow

N_SEEDS = 1000
CHUNK = 100
ACTIVATIONS = ["tanh", "relu", "gelu", "softplus"]


def _hostile_settings(rng):
    return dict(
        n_components=int(rng.integers(1, 11)),
        hidden=[(8,), (16,), (16, 16)][int(rng.integers(0, 3))],
        activation=ACTIVATIONS[int(rng.integers(0, len(ACTIVATIONS)))],
        learning_rate=float(10 ** rng.uniform(-3, -1)),
        batch_size=int([8, 32, 64, 1000][int(rng.integers(0, 4))]),
        y_scale=float(10 ** rng.uniform(-3, 6)),
        y_shift=float(rng.normal(0, 1e3)),
    )


def _check_result(res, model, x_new, y_new):
    assert all(math.isfinite(v) for v in res.history), res.history
    if res.validation_history is not None:
        assert all(math.isfinite(v) for v in res.validation_history), res.validation_history
    assert math.isfinite(res.log_likelihood)
    with torch.no_grad():
        lp = model.log_prob(torch.as_tensor(x_new, dtype=model.dtype), torch.as_tensor(y_new, dtype=model.dtype))
    assert torch.isfinite(lp).all()


def _ten_d_problem(n, rng):
    """x in R^3; y in R^10 from a 3-component conditional mixture with correlated noise."""
    x = rng.uniform(-2, 2, size=(n, 3))
    a = rng.normal(size=(3, 10))
    base = np.tanh(x) @ a
    comp = rng.integers(0, 3, size=n)
    offsets = np.array([[0.0] * 10, [3.0] * 10, [-3.0] * 10])
    chol = np.tril(rng.normal(scale=0.3, size=(10, 10)), -1) + np.diag(rng.uniform(0.05, 0.5, size=10))
    noise = rng.normal(size=(n, 10)) @ chol.T
    col_scale = 10 ** rng.uniform(-3, 3, size=10)
    return x, (base + offsets[comp] + noise) * col_scale


@pytest.mark.parametrize("start", range(0, N_SEEDS, CHUNK))
def test_inverse_sine_never_nan(start):
    for seed in range(start, start + CHUNK):
        rng = np.random.default_rng(seed)
        s = _hostile_settings(rng)
        X, y = make_inverse_sine(200, random_state=seed)
        y = y * s["y_scale"] + s["y_shift"]
        model = MixtureDensityNetwork(1, None, s["n_components"], s["hidden"], s["activation"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = fit_mdn(model, X, y, max_epochs=5, batch_size=s["batch_size"], learning_rate=s["learning_rate"],
                          patience=2, random_state=seed)
        Xn, yn = make_inverse_sine(100, random_state=seed + 10**6)
        _check_result(res, model, Xn, yn * s["y_scale"] + s["y_shift"])


@pytest.mark.parametrize("start", range(0, N_SEEDS, CHUNK))
def test_ten_dimensional_output_never_nan(start):
    for seed in range(start, start + CHUNK):
        rng = np.random.default_rng(seed)
        s = _hostile_settings(rng)
        x, y = _ten_d_problem(300, rng)
        y = y + s["y_shift"]
        cov = ["full", "diag", "spherical"][seed % 3]
        model = MixtureDensityNetwork(3, 10, min(s["n_components"], 5), s["hidden"], s["activation"], covariance=cov)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = fit_mdn(model, x[:200], y[:200], max_epochs=5, batch_size=s["batch_size"],
                          learning_rate=s["learning_rate"], patience=2, random_state=seed)
        _check_result(res, model, x[200:], y[200:])
