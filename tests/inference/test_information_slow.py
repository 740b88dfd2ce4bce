"""Coverage of the Wald intervals from the observed information and the sandwich (issue 14; slow).

Data are drawn from known parameters; each replicate's EM starts from the truth (no label
switching to undo) and runs to convergence; the 95 % interval estimate +- 1.96 se is checked
against the truth.
"""

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate, fit_em
from moekit.inference.information import observed_information

pytestmark = pytest.mark.slow

GATE = np.array([[0.0, 0.0], [0.3, -1.2]])  # rows: components; columns: intercept, x
COEF = np.array([[1.0, 2.0], [-1.0, -0.5]])  # experts' (intercept, slope)
SIGMA = np.array([0.5, 0.8])


def _model(gate, coef, log_sigma):
    m = MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_experts=2))
    m.gate.coef.data = torch.as_tensor(gate, dtype=torch.float64).clone()
    m.experts.coef.data = torch.as_tensor(coef, dtype=torch.float64)[:, :, None].clone()
    m.experts.log_scale.data = torch.as_tensor(log_sigma, dtype=torch.float64)[:, None].clone()
    return m


def test_wald_intervals_cover_the_truth():
    rng = np.random.default_rng(2026)
    n, reps = 1000, 500
    truth = None
    hits = []
    for _ in range(reps):
        x = rng.normal(size=(n, 1))
        prob = np.exp(log_softmax(np.c_[np.ones(n), x] @ GATE.T, axis=1))
        comp = (rng.uniform(size=(n, 1)) > prob.cumsum(axis=1)).sum(axis=1)
        y = COEF[comp, 0] + COEF[comp, 1] * x[:, 0] + SIGMA[comp] * rng.normal(size=n)
        m = _model(GATE, COEF, np.log(SIGMA))
        xt, yt = torch.as_tensor(x), torch.as_tensor(y)
        fit_em(m, xt, yt, init=None, tol=1e-9, max_iter=2000)
        info = observed_information(m, xt, yt)
        if truth is None:
            truth = []
            for p in info.parameters:
                if p.block == "gate":
                    truth.append(GATE[p.component, p.term] - GATE[0, p.term])
                elif p.term == "sigma":
                    truth.append(SIGMA[p.component])
                else:
                    truth.append(COEF[p.component, p.term])
            truth = np.array(truth)
            coef_rows = np.array([p.term != "sigma" for p in info.parameters])
        est, se = info.estimate.numpy(), info.std_error.numpy()
        hits.append(np.abs(est - truth) <= 1.96 * se)
    cover = np.mean(hits, axis=0)[coef_rows]  # gate and expert coefficients
    print(f"coverage per coefficient {np.round(cover, 3)}, mean {cover.mean():.4f}")
    assert 0.94 <= cover.mean() <= 0.96, cover
    assert np.all((cover >= 0.92) & (cover <= 0.98)), cover


def test_sandwich_covers_under_heteroscedastic_noise_where_the_hessian_does_not():
    rng = np.random.default_rng(7)
    n, reps = 500, 400
    hit = {"hessian": [], "sandwich": []}
    for _ in range(reps):
        x = rng.normal(size=(n, 1))
        y = 1.0 + 2.0 * x[:, 0] + (0.2 + np.abs(x[:, 0]) ** 1.5) * rng.normal(size=n)
        m = MixtureOfExperts(SoftmaxGate(1, 1), LinearGaussianExpert(1, n_experts=1))
        xt, yt = torch.as_tensor(x), torch.as_tensor(y)
        fit_em(m, xt, yt, random_state=0, tol=1e-10)
        for method in hit:
            info = observed_information(m, xt, yt, method=method)
            i = next(j for j, p in enumerate(info.parameters) if p.term == 1)  # the slope
            hit[method].append(abs(float(info.estimate[i]) - 2.0) <= 1.96 * float(info.std_error[i]))
    print({k: float(np.mean(v)) for k, v in hit.items()})
    assert 0.92 <= np.mean(hit["sandwich"]) <= 0.98, np.mean(hit["sandwich"])
    assert np.mean(hit["hessian"]) < 0.85, np.mean(hit["hessian"])
