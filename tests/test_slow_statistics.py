"""Slow statistical tests (``-m slow``; run in CI after the default suite)."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from moekit import (
    ConstantGate,
    LinearGaussianExpert,
    LogisticExpert,
    MixtureOfExperts,
    PoissonExpert,
    SoftmaxExpert,
    SoftmaxGate,
    StudentTExpert,
    fit_em,
)

pytestmark = pytest.mark.slow
D = torch.float64


def _simulate_gated(n, d, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=D)
    xd = torch.cat([torch.ones(n, 1, dtype=D), x], 1)
    gate_coef = 3 * torch.randn(k, d + 1, generator=g, dtype=D)
    gate_coef[-1] = 0
    z = torch.multinomial(torch.softmax(xd @ gate_coef.T, 1), 1, generator=g)[:, 0]
    beta = 2 * torch.randn(k, d + 1, generator=g, dtype=D)
    sd = 0.2 + 0.3 * torch.rand(k, generator=g, dtype=D)
    y = (xd * beta[z]).sum(1) + sd[z] * torch.randn(n, generator=g, dtype=D)
    return x, y, gate_coef, beta, sd


def test_parameter_recovery_large_n():
    x, y, gate_coef, beta, sd = _simulate_gated(20_000, 2, 3, seed=11)
    moe = MixtureOfExperts(SoftmaxGate(2, 3), LinearGaussianExpert(2, n_experts=3))
    res = fit_em(moe, x, y, n_init=5, random_state=0, max_iter=500)
    assert np.all(np.diff(res.history) >= -1e-10 * (1 + np.abs(res.history[:-1])))
    est = moe.experts.coef[:, :, 0].detach()
    # match experts to the truth by their coefficients (labels are arbitrary)
    order = [int(torch.cdist(beta[k : k + 1], est).argmin()) for k in range(3)]
    assert sorted(order) == [0, 1, 2]
    torch.testing.assert_close(est[order], beta, atol=0.05, rtol=0)
    est_sd = moe.experts.covariance_matrix()[:, 0, 0].sqrt().detach()[order]
    torch.testing.assert_close(est_sd, sd, atol=0.02, rtol=0)
    # the gate, up to the reference row: compare gate probabilities on fresh x
    xt = torch.randn(2000, 2, dtype=D, generator=torch.Generator().manual_seed(5))
    true_g = torch.softmax(torch.cat([torch.ones(2000, 1, dtype=D), xt], 1) @ gate_coef.T, 1)
    got_g = moe.log_gate(xt).exp().detach()[:, order]
    assert (true_g - got_g).abs().mean() < 0.02


def _family_problem(family, seed):
    g = torch.Generator().manual_seed(seed)
    n = 600
    x = torch.randn(n, 2, generator=g, dtype=D)
    z = (x[:, 0] + 0.5 * torch.randn(n, generator=g, dtype=D)) > 0
    eta = torch.where(z, 1.0 + x[:, 1], -0.5 - x[:, 1])
    if family == "gaussian":
        return x, eta + 0.3 * torch.randn(n, generator=g, dtype=D), LinearGaussianExpert(2, n_experts=2)
    if family == "student_t":
        t = torch.as_tensor(np.random.default_rng(seed).standard_t(3.0, size=n), dtype=D)
        return x, eta + 0.3 * t, StudentTExpert(2, n_experts=2)
    if family == "poisson":
        return x, torch.poisson(eta.exp(), generator=g), PoissonExpert(2, n_experts=2)
    if family == "logistic":
        return x, (torch.rand(n, generator=g, dtype=D) < torch.sigmoid(2 * eta)).long(), LogisticExpert(2, n_experts=2)
    logits = torch.stack([eta, -eta, 0 * eta], 1)
    return x, torch.multinomial(torch.softmax(logits, 1), 1, generator=g)[:, 0], SoftmaxExpert(2, 3, n_experts=2)


@pytest.mark.parametrize("family", ["gaussian", "student_t", "poisson", "logistic", "softmax"])
@pytest.mark.parametrize("gate", ["softmax", "constant"])
def test_em_never_decreases_across_seeds(family, gate):
    for seed in range(10):
        x, y, experts = _family_problem(family, seed)
        g = SoftmaxGate(2, 2) if gate == "softmax" else ConstantGate(2)
        moe = MixtureOfExperts(g, experts)
        w = torch.rand(len(x), dtype=D, generator=torch.Generator().manual_seed(100 + seed)) * 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = fit_em(moe, x, y, w, random_state=seed, max_iter=80, init="kmeans" if seed % 2 else "random")
        h = np.asarray(res.history)
        assert np.all(np.diff(h) >= -1e-9 * (1 + np.abs(h[:-1]))), (family, gate, seed, np.diff(h).min())
        assert np.isfinite(h).all()
