"""Recovery of a two-expert vector-y mixture with 30 % of the target coordinates missing at random (slow)."""

import itertools

import numpy as np
import pytest
import torch

from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate, fit_em

D = torch.float64


@pytest.mark.slow
def test_recovery_with_30_percent_missing_coordinates():
    n, dy = 20_000, 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g, dtype=D)
    gate_true = torch.tensor([[0.3, 2.0, -1.0]], dtype=D)  # logit of expert 0 against expert 1: [1, x]
    xd = torch.cat([torch.ones(n, 1, dtype=D), x], 1)
    z = torch.rand(n, generator=g, dtype=D) < torch.sigmoid(xd @ gate_true[0])
    coef = torch.tensor(
        [[[1.0, -1.0, 0.5], [2.0, 0.0, -1.0], [0.0, 1.0, 1.0]], [[-1.0, 1.0, 0.0], [-0.5, 1.5, 1.0], [1.0, -2.0, 0.0]]],
        dtype=D,
    )  # (K, p, d_y)
    chol = torch.tensor(
        [[[0.5, 0.0, 0.0], [0.3, 0.4, 0.0], [-0.2, 0.1, 0.3]], [[0.3, 0.0, 0.0], [-0.1, 0.6, 0.0], [0.2, 0.2, 0.4]]],
        dtype=D,
    )
    eps = torch.randn(n, dy, generator=g, dtype=D)
    y = torch.where(z[:, None], xd @ coef[0] + eps @ chol[0].T, xd @ coef[1] + eps @ chol[1].T)
    y[torch.rand(n, dy, generator=g) < 0.3] = float("nan")
    frac = float(torch.isnan(y).double().mean())
    assert 0.29 < frac < 0.31

    moe = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, dy, n_experts=2))
    res = fit_em(moe, x, y, init="kmeans", random_state=0, max_iter=500, tol=1e-9)
    h = res.history
    assert all(b >= a - 1e-12 * abs(a) for a, b in zip(h, h[1:]))

    sigma_true = chol @ chol.transpose(-1, -2)
    with torch.no_grad():
        got_coef, got_sigma = moe.experts.coef, moe.experts.covariance_matrix()
        perm = min(itertools.permutations(range(2)), key=lambda p: float((got_coef[list(p)] - coef).abs().sum()))
        got_coef, got_sigma = got_coef[list(perm)], got_sigma[list(perm)]
        # the gate's log-odds of the expert matched to the true expert 0
        lg = moe.log_gate(torch.cat([torch.zeros(1, 2, dtype=D), torch.eye(2, dtype=D)]))  # x = 0, e1, e2
        logit = lg[:, perm[0]] - lg[:, perm[1]]
        gate_got = torch.stack([logit[0], logit[1] - logit[0], logit[2] - logit[0]])
    np.testing.assert_allclose(got_coef.numpy(), coef.numpy(), atol=0.05)
    np.testing.assert_allclose(got_sigma.numpy(), sigma_true.numpy(), atol=0.03)
    np.testing.assert_allclose(gate_got.numpy(), gate_true[0].numpy(), atol=0.1)
