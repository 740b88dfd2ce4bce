"""Slow statistical tests of the count families: a zero-inflated Poisson with a covariate gate recovered at
n = 20,000, and flexmix's Poisson mixture of NPreg reached.

Run with ``-m slow``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch.func import functional_call

from moekit import ConstantGate, MixtureOfExperts, PointMassExpert, PoissonExpert, SoftmaxGate, fit_em
from moekit.datasets import load_npreg

F64 = torch.float64

pytestmark = pytest.mark.slow


class _LogLik(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, x, y):
        return self.m.log_prob(x, y).sum()


def _free_hessian(model, x, y, names):
    """Hessian of the log-likelihood in the named parameters (flattened, in that order)."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])

    def total(f):
        out, i = {}, 0
        for n, s in zip(names, shapes):
            out[f"m.{n}"] = f[i:i + s.numel()].reshape(s)
            i += s.numel()
        return functional_call(_LogLik(model), out, (x, y))

    return torch.autograd.functional.hessian(total, flat), flat


def test_zero_inflated_poisson_with_a_covariate_gate_is_recovered():
    n = 20_000
    g = torch.Generator().manual_seed(2024)
    x = torch.randn(n, 2, generator=g, dtype=F64)
    gate_true = np.array([-0.4, 1.2, -0.6])  # log-odds of a structural zero: intercept, x1, x2
    pois_true = np.array([0.8, 0.3, 0.5])  # log rate
    p_zero = torch.sigmoid(gate_true[0] + x @ torch.tensor(gate_true[1:], dtype=F64))
    lam = torch.exp(pois_true[0] + x @ torch.tensor(pois_true[1:], dtype=F64))
    y = torch.where(torch.rand(n, generator=g, dtype=F64) < p_zero, torch.zeros(n, dtype=F64),
                    torch.poisson(lam, generator=g))
    m = MixtureOfExperts(SoftmaxGate(2, 2), [PointMassExpert(0.0), PoissonExpert(2)])
    res = fit_em(m, x, y, random_state=0, max_iter=1000, tol=1e-10)
    assert res.converged and all(b >= a - 1e-12 for a, b in zip(res.history, res.history[1:]))
    # the gate's free row is the point mass's (row 1 is the reference, held at zero)
    assert torch.equal(m.gate.coef[1].detach(), torch.zeros(3, dtype=F64))
    est = np.concatenate([m.gate.coef[0].detach().numpy(), m.experts[1].coef[0].detach().numpy()])
    h, _ = _free_hessian(m, x, y, ["gate.coef", "experts.1.coef"])
    free = [0, 1, 2, 6, 7, 8]  # gate row 0 and the Poisson coefficients (gate row 1 is not free)
    cov = torch.linalg.inv(-h[free][:, free]).numpy()
    se = np.sqrt(np.diag(cov))
    truth = np.concatenate([gate_true, pois_true])
    z = (est - truth) / se
    assert np.all(np.abs(z) < 4.5), (est, truth, se)
    assert np.all(se < 0.06)  # n = 20,000 determines them well
    # the fitted zero share and mean agree with the sample's
    mix = m(x)
    assert abs(float(mix.cdf(torch.zeros(n, dtype=F64)).detach().mean()) - float((y == 0).to(F64).mean())) < 5e-3
    assert abs(float(mix.mean.detach().mean()) - float(y.mean())) < 0.03


@pytest.mark.parametrize("stacked", [True, False])
def test_npreg_poisson_mixture_reaches_flexmix(stacked):
    """NPreg ``yp ~ x``, two Poisson experts, constant weights: flexmix's -440.6403 (best of 3 random starts)."""
    d = load_npreg()
    x = torch.tensor(d.data, dtype=F64)
    y = torch.tensor(d.columns["yp"], dtype=F64)
    best = None
    for seed in range(3):
        experts = PoissonExpert(1, n_experts=2) if stacked else [PoissonExpert(1), PoissonExpert(1)]
        m = MixtureOfExperts(ConstantGate(2), experts)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = fit_em(m, x, y, random_state=seed, max_iter=3000, tol=1e-12)
        assert all(b >= a - 1e-12 for a, b in zip(res.history, res.history[1:]))
        if best is None or res.log_likelihood > best[0]:
            best = (res.log_likelihood, m)
    ll, m = best
    assert abs(ll - (-440.6403)) < 1e-3
    coef = (m.experts.coef if stacked else torch.cat([e.coef for e in m.experts])).detach().numpy()
    weights = m.gate.logits.detach().softmax(0).numpy()
    order = np.argsort(coef[:, 0])  # flexmix's components: intercept 1.2473 first
    np.testing.assert_allclose(coef[order], [[1.2473, 0.0647], [1.8643, -0.1619]], atol=2e-3)
    np.testing.assert_allclose(weights[order], [0.462, 0.538], atol=2e-3)
    assert math.isfinite(ll)
