"""Recovery at n = 20,000 through the estimators (issue 15): known parameters come back (slow tests)."""

import numpy as np
import pytest
import torch

from moekit import MoERegressor

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")]

N = 20_000


def test_zero_inflated_poisson_with_a_covariate_gate_recovers_its_parameters():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, 1))
    exposure = rng.uniform(0.5, 2.0, N)
    p_zero = 1 / (1 + np.exp(-(-0.5 + 1.0 * X[:, 0])))
    y = np.where(rng.random(N) < p_zero, 0.0, rng.poisson(exposure * np.exp(1.0 + 0.3 * X[:, 0]))).astype(float)
    est = MoERegressor(n_experts=2, expert=["point_mass", "poisson"], random_state=0, compute_se=False,
                       tol=1e-9, max_iter=500).fit(X, y, offset=np.log(exposure))
    np.testing.assert_allclose(est.model_.experts[1].coef.detach().numpy()[0], [1.0, 0.3], atol=0.04)
    g = est.predict_gate(X)
    slope, intercept = np.polyfit(X[:, 0], np.log(g[:, 0] / g[:, 1]), 1)  # the gate's log odds of the point mass
    assert intercept == pytest.approx(-0.5, abs=0.08) and slope == pytest.approx(1.0, abs=0.08)


def test_shared_coefficients_and_tied_variances_recover_their_values():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(N, 2))
    k = rng.random(N) < 0.4
    y = np.where(k, 2.0 + 1.0 * X[:, 1], -1.0 - 1.0 * X[:, 1]) + 1.5 * X[:, 0] + 0.5 * rng.normal(size=N)
    est = MoERegressor(n_experts=2, gate="constant", shared_features=[0], covariance="tied", random_state=0,
                       compute_se=False, tol=1e-10).fit(X, y)
    coef = est.model_.experts.coef.detach().numpy().reshape(2, -1)  # [intercept, x1, x0 (shared)] per expert
    coef = coef[np.argsort(coef[:, 0])]
    np.testing.assert_allclose(coef, [[-1.0, -1.0, 1.5], [2.0, 1.0, 1.5]], atol=0.03)
    with torch.no_grad():
        var = est.model_.experts(torch.as_tensor(X[:1])).variance.numpy()[0]
    np.testing.assert_allclose(var, 0.25, rtol=0.05)
    np.testing.assert_allclose(np.sort(est.predict_gate(X[:1])[0]), [0.4, 0.6], atol=0.02)
