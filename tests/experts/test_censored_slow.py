"""Recovery of a censored two-expert mixture from known parameters (n = 20,000, >= 30 % censored rows)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moekit import MixtureOfExperts, SoftmaxGate, fit_em
from moekit._validation import incomplete_targets
from moekit.experts.censored import CensoredGaussianExpert

DT = torch.float64
N = 20_000
GATE = (0.3, 2.5)  # P(expert 0 | x) = sigmoid(0.3 + 2.5 x)
COEF = np.array([[1.0, 1.5], [-0.5, -1.0]])
SCALE = np.array([0.4, 0.6])


def _latent(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, 1, generator=g, dtype=DT) * 4 - 2
    first = torch.rand(N, generator=g, dtype=DT) < torch.sigmoid(GATE[0] + GATE[1] * x[:, 0])
    c, s = torch.as_tensor(COEF), torch.as_tensor(SCALE)
    k = torch.where(first, 0, 1)
    latent = c[k, 0] + c[k, 1] * x[:, 0] + s[k] * torch.randn(N, generator=g, dtype=DT)
    return x, latent


def _check_recovery(moe):
    coef = moe.experts.coef.detach().numpy()
    scale = moe.experts.scale().detach().numpy()
    order = np.argsort(-coef[:, 1])  # expert 0 has the positive slope
    np.testing.assert_allclose(coef[order], COEF, atol=0.06)
    np.testing.assert_allclose(scale[order], SCALE, atol=0.03)
    gate = moe.gate.coef.detach().numpy()
    logit = gate[order[0]] - gate[order[1]]  # log-odds of expert 0 against expert 1
    np.testing.assert_allclose(logit, GATE, atol=0.2)


@pytest.mark.slow
def test_recovers_a_two_expert_mixture_with_detection_limits():
    """Every row has both detection limits (finite): 43 % of rows are left- or right-censored."""
    x, latent = _latent(0)
    lo, hi = -0.5, 2.0
    y = torch.stack([latent.clamp(lo, hi), torch.full_like(latent, lo), torch.full_like(latent, hi)], 1)
    assert float(((y[:, 0] == lo) | (y[:, 0] == hi)).to(DT).mean()) >= 0.3
    moe = MixtureOfExperts(SoftmaxGate(1, 2), CensoredGaussianExpert(1, n_experts=2))
    res = fit_em(moe, x, y, random_state=0, n_init=2, max_iter=500, tol=1e-9)
    assert res.converged
    assert all(b >= a - 1e-10 * (1 + abs(a)) for a, b in zip(res.history, res.history[1:]))
    _check_recovery(moe)


@pytest.mark.slow
def test_recovers_a_two_expert_mixture_with_interval_and_one_sided_rows():
    """Left-censored rows, interval-censored rows (NaN y, unit bins) and exact rows, ±inf for no limit."""
    x, latent = _latent(1)
    g = torch.Generator().manual_seed(2)
    lo, hi = torch.full_like(latent, -math.inf), torch.full_like(latent, math.inf)
    y = latent.clone()
    left = latent <= -0.5
    y[left], lo[left] = -0.5, -0.5
    binned = ~left & (torch.rand(N, generator=g, dtype=DT) < 0.3)
    y[binned] = math.nan
    lo[binned] = torch.floor(latent[binned])
    hi[binned] = lo[binned] + 1
    assert float((left | binned).to(DT).mean()) >= 0.3
    y3 = torch.stack([y, lo, hi], 1)
    moe = MixtureOfExperts(SoftmaxGate(1, 2), CensoredGaussianExpert(1, n_experts=2))
    with incomplete_targets():
        res = fit_em(moe, x, y3, random_state=0, n_init=2, max_iter=500, tol=1e-9)
    assert res.converged
    assert all(b >= a - 1e-10 * (1 + abs(a)) for a, b in zip(res.history, res.history[1:]))
    _check_recovery(moe)
