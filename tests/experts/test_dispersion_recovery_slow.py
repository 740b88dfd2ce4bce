"""Recovery at n = 20,000 of two-expert Gamma and negative-binomial mixtures under a covariate gate (slow)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from moekit import GammaExpert, MixtureOfExperts, NegativeBinomialExpert, SoftmaxGate, fit_em

N = 20_000
# expert 0: high mean, small dispersion; expert 1: low mean, large dispersion; gate logit of expert 0: 0.3 + 2 x
COEF = np.array([[2.0, 0.5], [0.5, -1.0]])
GATE = np.array([0.3, 2.0])
DISPERSION = {"gamma": np.array([0.1, 0.8]), "negative_binomial": np.array([0.2, 0.6])}


def _data(fam, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(N, 1))
    z = rng.random(N) < 1 / (1 + np.exp(-(GATE[0] + GATE[1] * x[:, 0])))
    k = np.where(z, 0, 1)
    mu = np.exp(COEF[k, 0] + COEF[k, 1] * x[:, 0])
    d = DISPERSION[fam][k]
    if fam == "gamma":
        y = rng.gamma(1 / d, mu * d)
    else:
        y = rng.negative_binomial(1 / d, 1 / (1 + d * mu)).astype(float)
    return torch.as_tensor(x), torch.as_tensor(y)


@pytest.mark.slow
@pytest.mark.parametrize("fam", ["gamma", "negative_binomial"])
def test_two_expert_mixture_recovers_its_parameters(fam):
    x, y = _data(fam)
    expert = GammaExpert(1, n_experts=2) if fam == "gamma" else NegativeBinomialExpert(1, n_experts=2)
    moe = MixtureOfExperts(SoftmaxGate(1, 2), expert)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit_em(moe, x, y, random_state=0, max_iter=150, tol=1e-8)
    h = np.asarray(res.history)
    assert np.all(np.diff(h) >= -1e-10 * (1 + np.abs(h[:-1])))
    coef = moe.experts.coef.detach().numpy()
    order = np.argsort(-coef[:, 0])  # expert 0 has the larger intercept
    coef = coef[order]
    disp = (moe.experts.dispersion if fam == "gamma" else moe.experts.alpha).detach().numpy()[order]
    np.testing.assert_allclose(coef, COEF, atol=0.15)
    np.testing.assert_allclose(disp, DISPERSION[fam], rtol=0.2)
    # the gate's log-odds of expert 0 against expert 1
    g = moe.gate.coef.detach().numpy()  # (K, 1 + d): the last row is the reference
    logodds = g[order[0]] - g[order[1]]
    np.testing.assert_allclose(logodds, GATE, atol=0.3)
