"""Binomial experts with trials, point-mass experts (zero-inflated mixtures), and the GLM offset / shared checks.

K = 1 reductions against statsmodels' GLM (binomial with trials, with an offset, with frequency
weights; Poisson with an offset), the conformance suite for both new families, shared coefficients
at the joint weighted optimum (scipy), and a zero-inflated Poisson mixture against its direct formula.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import optimize, stats
from scipy.special import gammaln
from torch.func import functional_call

import moekit
from moekit import (
    BinomialExpert,
    ConstantGate,
    MixtureOfExperts,
    PointMassExpert,
    PoissonExpert,
    SoftmaxGate,
    fit_em,
)
from moekit.distributions import Binomial, MixtureDistribution, PointMass, Poisson
from moekit.testing import check_expert

sm = pytest.importorskip("statsmodels.api")

F64 = torch.float64


# ------------------------------------------------------------------ data
def _binomial_data(n=80, seed=0, offset=False):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g, dtype=F64)
    trials = torch.randint(1, 12, (n,), generator=g).to(F64)
    off = 0.4 * torch.randn(n, generator=g, dtype=F64)
    eta = 0.2 + 0.7 * z[:, 0] - 0.4 * z[:, 1] + (off if offset else 0.0)
    y = torch.binomial(trials, torch.sigmoid(eta), generator=g)
    x = torch.cat([z, off[:, None], trials[:, None]] if offset else [z, trials[:, None]], dim=1)
    return x, y, z, off, trials


def _poisson_offset_data(n=300, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g, dtype=F64)
    off = torch.log(torch.rand(n, generator=g, dtype=F64) * 5 + 0.5)  # log exposure
    y = torch.poisson(torch.exp(0.3 + 0.5 * z[:, 0] - 0.2 * z[:, 1] + off), generator=g)
    return torch.cat([z, off[:, None]], dim=1), y, z, off


def _zip_data(n=1500, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g, dtype=F64)
    p_zero = torch.sigmoid(-0.5 + 1.0 * x[:, 0])
    lam = torch.exp(1.0 + 0.5 * x[:, 0])
    structural = torch.rand(n, generator=g, dtype=F64) < p_zero
    y = torch.where(structural, torch.zeros(n, dtype=F64), torch.poisson(lam, generator=g))
    return x, y


def _zip_model(d=1):
    return MixtureOfExperts(SoftmaxGate(d, 2), [PointMassExpert(0.0), PoissonExpert(d)])


def _monotone(history, slack=1e-9):
    return all(b >= a - slack * (1 + abs(a)) for a, b in zip(history, history[1:]))


# ------------------------------------------------------------ conformance
@pytest.mark.parametrize("offset", [False, True])
@pytest.mark.parametrize("k", [None, 3])
def test_binomial_conformance(offset, k):
    x, y, *_ = _binomial_data(offset=offset)
    check_expert(lambda: BinomialExpert(2, n_experts=k, offset=offset), x, y)


@pytest.mark.parametrize("offset", [False, True])
def test_binomial_shared_conformance(offset):
    """Shared coefficients: contract, additivity, monotone M-step, repeated rows, gradcheck, device.

    (The conformance suite's optimum check moves every coefficient at random, untying the shared
    one; the joint optimum is checked against scipy below instead.)
    """
    x, y, *_ = _binomial_data(offset=offset)
    check_expert(lambda: BinomialExpert(2, n_experts=3, shared=[0], offset=offset), x, y, exact_m_step=False)


@pytest.mark.parametrize("k", [None, 2])
@pytest.mark.parametrize("value", [0.0, -1.5])
def test_point_mass_conformance(k, value):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 3, generator=g, dtype=F64)
    check_expert(lambda: PointMassExpert(value, n_experts=k), x, torch.full((40,), value, dtype=F64))


# ------------------------------------------------- binomial: the family
def test_binomial_distribution_against_scipy():
    trials = torch.tensor([1.0, 5.0, 12.0, 30.0], dtype=F64)
    logits = torch.tensor([-2.0, 0.3, 1.1, 35.0], dtype=F64)  # the last: p within 1e-15 of one
    d = Binomial(trials, logits=logits, validate_args=False)
    p = torch.sigmoid(logits).numpy()
    n, lt = trials.numpy(), logits.numpy()
    for k in [-1.0, 0.0, 0.5, 1.0, 3.0, 11.7, 29.0, 30.0, 40.0]:
        v = torch.full((4,), k, dtype=F64)
        np.testing.assert_allclose(d.cdf(v).numpy()[:3], stats.binom.cdf(np.floor(k), n[:3], p[:3]), rtol=1e-10)
        # exact in log space with log(1 - p) from the logits (scipy's bdtr loses 1 - p once p rounds near one)
        j = np.arange(0, 31)[:, None]
        logpmf = (gammaln(n + 1) - gammaln(j + 1) - gammaln(np.maximum(n - j, 0) + 1)
                  - j * np.logaddexp(0, -lt) - (n - j) * np.logaddexp(0, lt))
        logpmf = np.where((j <= n) & (j <= np.floor(k)), logpmf, -np.inf)
        want = np.exp(np.logaddexp.reduce(logpmf, axis=0))
        np.testing.assert_allclose(d.cdf(v).numpy(), want, rtol=1e-9, atol=0)
    ks = torch.tensor([1.0, 2.0, 7.0, 30.0], dtype=F64)
    np.testing.assert_allclose(d.log_prob(ks).numpy(), stats.binom.logpmf(ks.numpy(), trials.numpy(), p), rtol=1e-10,
                               atol=1e-12)
    assert torch.isneginf(d.log_prob(torch.tensor([2, 6, 13, -1]))).all()  # integer y outside 0..n
    assert torch.isneginf(d.log_prob(torch.tensor([0.5, 6.0, 13.0, -1.0], dtype=F64))).all()
    torch.testing.assert_close(d.mean, trials * torch.sigmoid(logits))
    # the probabilities sum to one over 0..n
    grid = torch.arange(0, 31, dtype=F64)[:, None].expand(31, 4)
    torch.testing.assert_close(torch.logsumexp(d.log_prob(grid), 0), torch.zeros(4, dtype=F64))


def test_binomial_forward_is_trials_times_p_and_log_prob_agrees():
    x, y, z, off, trials = _binomial_data(offset=True)
    e = BinomialExpert(2, n_experts=2, offset=True)
    with torch.no_grad():
        e.coef.copy_(torch.tensor([[0.1, 0.5, -0.3], [-0.4, 0.2, 0.9]], dtype=F64))
    d = e(x)
    assert tuple(d.batch_shape) == (80, 2)
    eta = torch.stack([0.1 + z @ torch.tensor([0.5, -0.3], dtype=F64), -0.4 + z @ torch.tensor([0.2, 0.9], dtype=F64)], 1)
    eta = eta + off[:, None]
    torch.testing.assert_close(d.mean, trials[:, None] * torch.sigmoid(eta))
    torch.testing.assert_close(e.log_prob(x, y), d.log_prob(y[:, None]))
    want = stats.binom.logpmf(y.numpy()[:, None], trials.numpy()[:, None], torch.sigmoid(eta).numpy())
    np.testing.assert_allclose(e.log_prob(x, y).detach().numpy(), want, rtol=1e-10)
    # stacked equals the list of singles
    for j, single in enumerate(e.unstack()):
        torch.testing.assert_close(single.log_prob(x, y), e.log_prob(x, y)[:, j])


def test_binomial_mixture_cdf_and_quantiles_are_integers():
    x, y, *_ = _binomial_data()
    moe = MixtureOfExperts(SoftmaxGate(3, 2), BinomialExpert(2, n_experts=2), gate_features=[0, 1, 2],
                           expert_features=[0, 1, 2])
    moe.gate.coef.data[0, 1] = 0.5
    moe.experts.coef.data[:] = torch.tensor([[1.0, 0.5, 0.0], [-1.0, 0.0, 0.5]], dtype=F64)
    mix = moe(x)
    q = mix.quantiles([0.1, 0.5, 0.9])
    assert torch.equal(q, q.round())
    assert bool((q >= 0).all()) and bool((q <= x[:, -1:]).all())
    # smallest integer with cdf >= level
    for j, lev in enumerate([0.1, 0.5, 0.9]):
        assert bool((mix.cdf(q[:, j]) >= lev - 1e-12).all()) and bool((mix.cdf(q[:, j] - 1) < lev).all())


@pytest.mark.parametrize(
    "x_tr, y, word",
    [
        ([5.0, 5.0, 5.0], [1.0, 2.5, 0.0], "y must hold non-negative integer"),
        ([5.0, 5.0, 5.0], [1.0, -1.0, 0.0], "y must hold non-negative integer"),
        ([5.0, 2.0, 5.0], [1.0, 3.0, 0.0], "y must not exceed trials"),
        ([5.0, 0.0, 5.0], [1.0, 0.0, 0.0], "trials"),
        ([5.0, 2.5, 5.0], [1.0, 1.0, 0.0], "trials"),
        ([5.0, math.nan, 5.0], [1.0, 1.0, 0.0], "trials"),
        ([5.0, -3.0, 5.0], [1.0, 1.0, 0.0], "trials"),
    ],
)
def test_binomial_bad_inputs_raise(x_tr, y, word):
    x = torch.stack([torch.zeros(3, dtype=F64), torch.tensor(x_tr, dtype=F64)], 1)
    yy = torch.tensor(y, dtype=F64)
    xc, yc = x.clone(), yy.clone()
    for call in (lambda e: e.fit_weighted(x, yy), lambda e: e.log_prob(x, yy), lambda e: e.suff_stats(x, yy),
                 lambda e: e.init_from_responsibilities(x, yy, torch.ones(3, dtype=F64))):
        with pytest.raises(ValueError, match=word):
            call(BinomialExpert(1))
    assert torch.equal(x.nan_to_num(7.0), xc.nan_to_num(7.0)) and torch.equal(yy, yc)  # the caller's data unchanged
    with pytest.raises(ValueError, match="trials"):  # no trials column
        BinomialExpert(1).log_prob(torch.zeros(3, 1, dtype=F64), yy)


def test_parameter_counts():
    assert BinomialExpert(2).n_parameters() == 3 and BinomialExpert(2, offset=True).n_parameters() == 3
    assert BinomialExpert(2, n_experts=3).n_parameters_total() == 9
    assert BinomialExpert(2, n_experts=3, shared=[0]).n_parameters_total() == 7  # one slope for the stack
    moe = MixtureOfExperts(SoftmaxGate(2, 2), [PointMassExpert(0.0), PoissonExpert(2)])
    assert moe.n_parameters() == 3 + 0 + 3


def test_binomial_with_one_trial_is_logistic_regression():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(300, 2, generator=g, dtype=F64)
    y = torch.bernoulli(torch.sigmoid(0.3 + z[:, 0] - z[:, 1]), generator=g)
    b = BinomialExpert(2).fit_weighted(torch.cat([z, torch.ones(300, 1, dtype=F64)], 1), y)
    lg = moekit.LogisticExpert(2).fit_weighted(z, y)
    torch.testing.assert_close(b.coef, lg.coef, rtol=1e-8, atol=1e-8)


# ------------------------------------------- K = 1 against statsmodels
def _fit(expert, x, y, w=None):
    expert.init_from_responsibilities(x, y, torch.ones(x.shape[0], dtype=F64) if w is None else w)
    for _ in range(5):
        expert.fit_weighted(x, y, w)
    return expert


def _total_loglik(expert, x, y, w=None):
    lp = expert.log_prob(x, y).detach()
    return float(lp.sum() if w is None else (w * lp).sum())


@pytest.mark.parametrize("offset", [False, True])
def test_binomial_with_trials_matches_statsmodels(offset):
    x, y, z, off, trials = _binomial_data(n=200, seed=7, offset=offset)
    e = _fit(BinomialExpert(2, offset=offset), x, y)
    endog = np.column_stack([y.numpy(), (trials - y).numpy()])
    res = sm.GLM(endog, sm.add_constant(z.numpy()), family=sm.families.Binomial(),
                 offset=off.numpy() if offset else None).fit(tol=1e-13, maxiter=100)
    np.testing.assert_allclose(e.coef[0].detach().numpy(), res.params, rtol=0, atol=1e-6)
    # statsmodels' llf includes log C(n, y), as log_prob does
    assert abs(_total_loglik(e, x, y) - res.llf) < 1e-6
    want = stats.binom.logpmf(y.numpy(), trials.numpy(), res.predict(sm.add_constant(z.numpy()),
                                                                     offset=off.numpy() if offset else None)).sum()
    assert abs(res.llf - want) < 1e-8


@pytest.mark.parametrize("offset", [False, True])
def test_binomial_frequency_weights_equal_repeated_rows_and_statsmodels(offset):
    x, y, z, off, trials = _binomial_data(n=120, seed=8, offset=offset)
    reps = torch.randint(0, 4, (120,), generator=torch.Generator().manual_seed(9))
    idx = torch.repeat_interleave(torch.arange(120), reps)
    w = reps.to(F64)
    a = _fit(BinomialExpert(2, offset=offset), x, y, w)
    b = _fit(BinomialExpert(2, offset=offset), x[idx], y[idx])
    torch.testing.assert_close(a.coef, b.coef, rtol=0, atol=1e-9)
    endog = np.column_stack([y.numpy(), (trials - y).numpy()])
    res = sm.GLM(endog, sm.add_constant(z.numpy()), family=sm.families.Binomial(),
                 offset=off.numpy() if offset else None, freq_weights=w.numpy()).fit(tol=1e-13, maxiter=100)
    np.testing.assert_allclose(a.coef[0].detach().numpy(), res.params, rtol=0, atol=1e-6)
    assert abs(_total_loglik(a, x, y, w) - res.llf) < 1e-6
    assert abs(_total_loglik(b, x[idx], y[idx]) - res.llf) < 1e-6


def test_poisson_with_offset_matches_statsmodels():
    x, y, z, off = _poisson_offset_data()
    e = _fit(PoissonExpert(2, offset=True), x, y)
    res = sm.GLM(y.numpy(), sm.add_constant(z.numpy()), family=sm.families.Poisson(), offset=off.numpy()).fit(
        tol=1e-13, maxiter=100)
    np.testing.assert_allclose(e.coef[0].detach().numpy(), res.params, rtol=0, atol=1e-6)
    assert abs(_total_loglik(e, x, y) - res.llf) < 1e-6
    # the offset is a known term: the predicted mean is exposure * exp(beta^T [1, z])
    torch.testing.assert_close(e(x).mean, torch.exp(e.coef[0, 0] + z @ e.coef[0, 1:] + off).detach())


def test_poisson_with_offset_and_weights_matches_statsmodels():
    x, y, z, off = _poisson_offset_data(seed=4)
    w = torch.randint(0, 4, (x.shape[0],), generator=torch.Generator().manual_seed(4)).to(F64)
    e = _fit(PoissonExpert(2, offset=True), x, y, w)
    res = sm.GLM(y.numpy(), sm.add_constant(z.numpy()), family=sm.families.Poisson(), offset=off.numpy(),
                 freq_weights=w.numpy()).fit(tol=1e-13, maxiter=100)
    np.testing.assert_allclose(e.coef[0].detach().numpy(), res.params, rtol=0, atol=1e-6)
    assert abs(_total_loglik(e, x, y, w) - res.llf) < 1e-6


# -------------------------------------------- shared: the joint optimum
def _joint_optimum(loglik_rows, x_design, w, shared, k, p):
    """scipy's maximum of sum_k w_k . loglik_rows(x_design @ beta_k), the ``shared`` columns tied across k."""
    own = [j for j in range(p) if j not in shared]
    n_free = k * len(own) + len(shared)

    def unpack(theta):
        beta = np.zeros((k, p))
        beta[:, own] = theta[: k * len(own)].reshape(k, len(own))
        beta[:, shared] = theta[k * len(own):]
        return beta

    def f(theta):
        eta = x_design @ unpack(theta).T  # (n, K)
        val, dval, d2 = loglik_rows(eta)
        g_beta = (w * dval).T @ x_design  # (K, p)
        grad = np.concatenate([g_beta[:, own].reshape(-1), g_beta[:, shared].sum(0)])
        hb = np.einsum("nk,np,nq->kpq", w * d2, x_design, x_design)
        h = np.zeros((n_free, n_free))
        no = len(own)
        for kk in range(k):
            h[kk * no:(kk + 1) * no, kk * no:(kk + 1) * no] = hb[kk][np.ix_(own, own)]
            cross = hb[kk][np.ix_(own, shared)]
            h[kk * no:(kk + 1) * no, k * no:] = cross
            h[k * no:, kk * no:(kk + 1) * no] = cross.T
        h[k * no:, k * no:] = hb[:, shared][:, :, shared].sum(0)
        return -float((w * val).sum()), -grad, -h

    res = optimize.minimize(lambda t: f(t)[0], np.zeros(n_free), jac=lambda t: f(t)[1], hess=lambda t: f(t)[2],
                            method="trust-exact", options={"gtol": 1e-9, "maxiter": 500})
    theta = res.x
    for _ in range(3):  # trust-exact stops at |grad| ~ 1e-7 (rounding in its model); polish with Newton steps
        _, grad, hess = f(theta)
        theta = theta - np.linalg.solve(hess, grad)
    value, grad, _ = f(theta)
    assert np.abs(grad).max() < 1e-9  # a stationary point of a concave objective: the maximum
    return unpack(theta), -value


def _poisson_rows(y):
    def rows(eta):
        mu = np.exp(eta)
        return y[:, None] * eta - mu - gammaln(y[:, None] + 1), y[:, None] - mu, -mu
    return rows


def _binomial_rows(y, trials):
    def rows(eta):
        p = 1 / (1 + np.exp(-eta))
        n, yy = trials[:, None], y[:, None]
        val = yy * eta - n * np.logaddexp(0, eta) + gammaln(n + 1) - gammaln(yy + 1) - gammaln(n - yy + 1)
        return val, yy - n * p, -n * p * (1 - p)
    return rows


def test_poisson_shared_coefficients_reach_the_joint_weighted_optimum():
    g = torch.Generator().manual_seed(11)
    n = 400
    z = torch.randn(n, 2, generator=g, dtype=F64)
    y = torch.poisson(torch.exp(0.5 + 0.3 * z[:, 0] + 0.4 * z[:, 1]), generator=g)
    w = torch.rand(n, 2, generator=g, dtype=F64) + 0.05
    e = _fit(PoissonExpert(2, n_experts=2, shared=[1]), z, y, w)
    coef = e.coef.detach().numpy()
    assert coef[0, 2] == coef[1, 2]  # tied exactly
    xd = np.column_stack([np.ones(n), z.numpy()])
    beta, best = _joint_optimum(_poisson_rows(y.numpy()), xd, w.numpy(), [2], 2, 3)
    np.testing.assert_allclose(coef, beta, rtol=0, atol=1e-6)
    assert abs(_total_loglik(e, z, y, w) - best) < 1e-6
    # and it is not the untied optimum: the free fit differs
    free = _fit(PoissonExpert(2, n_experts=2), z, y, w).coef.detach().numpy()
    assert abs(free[0, 2] - free[1, 2]) > 1e-3


def test_binomial_shared_coefficients_reach_the_joint_weighted_optimum():
    x, y, z, off, trials = _binomial_data(n=300, seed=12)
    w = torch.rand(300, 3, generator=torch.Generator().manual_seed(12), dtype=F64) + 0.05
    e = _fit(BinomialExpert(2, n_experts=3, shared=[0]), x, y, w)
    coef = e.coef.detach().numpy()
    assert coef[0, 1] == coef[1, 1] == coef[2, 1]
    xd = np.column_stack([np.ones(300), z.numpy()])
    beta, best = _joint_optimum(_binomial_rows(y.numpy(), trials.numpy()), xd, w.numpy(), [1], 3, 3)
    np.testing.assert_allclose(coef, beta, rtol=0, atol=1e-6)
    assert abs(_total_loglik(e, x, y, w) - best) < 1e-6


# ------------------------------------------------------- point mass
def test_point_mass_distribution():
    d = PointMass(torch.tensor([0.0, 2.0, -1.5], dtype=F64))
    assert d.log_prob(torch.tensor([0.0, 2.0, 1.0], dtype=F64)).tolist() == [0.0, 0.0, -math.inf]
    assert d.log_prob(torch.tensor([math.nan, 2, 3])).tolist() == [-math.inf, 0.0, -math.inf]  # never NaN
    assert d.cdf(torch.tensor([-0.1, 2.0, 5.0], dtype=F64)).tolist() == [0.0, 1.0, 1.0]
    assert d.icdf(torch.tensor([0.3, 0.5, 0.9], dtype=F64)).tolist() == [0.0, 2.0, -1.5]
    assert d.sample((4,)).shape == (4, 3) and bool((d.sample((4,)) == d.value).all())
    assert d.variance.tolist() == [0.0, 0.0, 0.0] and d.mean.tolist() == [0.0, 2.0, -1.5]
    assert d.expand((2, 3)).batch_shape == (2, 3)


def test_point_mass_expert_contract():
    e = PointMassExpert(0.0, n_experts=2)
    x = torch.zeros(4, 0, dtype=F64)  # no inputs at all
    y = torch.tensor([0, 1, 0, 3])  # integer y
    lp = e.log_prob(x, y)
    assert lp.shape == (4, 2) and lp[:, 0].tolist() == [0.0, -math.inf, 0.0, -math.inf]
    assert e(x).batch_shape == (4, 2) and e.n_parameters() == 0 and list(e.parameters()) == []
    assert e.select(1).log_prob(x, y).shape == (4,) and PointMassExpert.stack(e.unstack()).n_experts == 2
    assert e.suff_stats(x, y, torch.ones(4, 2, dtype=F64))["sw"].tolist() == [4.0, 4.0]
    with pytest.raises(ValueError, match="value must be a finite"):
        PointMassExpert(math.inf)
    with pytest.raises(TypeError, match="value must be a number"):
        PointMassExpert("0")
    with pytest.raises(ValueError, match="y must have shape"):
        e.log_prob(x, torch.zeros(4, 2))


def _zip_direct(model, x, y):
    """log p(y | x) of a zero-inflated Poisson regression, written out."""
    pz = model.log_gate(x).exp()[:, 0].detach()  # weight of the point mass
    lam = torch.exp(model.experts[1].coef[0, 0] + x @ model.experts[1].coef[0, 1:]).detach()
    zero = torch.log(pz + (1 - pz) * torch.exp(-lam))
    pos = torch.log1p(-pz) + y * torch.log(lam) - lam - torch.lgamma(y + 1)
    return torch.where(y == 0, zero, pos), pz, lam


def test_zero_inflated_poisson_loglik_and_predictive_distribution():
    x, y = _zip_data(n=300)
    m = _zip_model()
    with torch.no_grad():
        m.gate.coef.copy_(torch.tensor([[-0.3, 0.8], [0.0, 0.0]], dtype=F64))
        m.experts[1].coef.copy_(torch.tensor([[0.9, 0.4]], dtype=F64))
    direct, pz, lam = _zip_direct(m, x, y)
    torch.testing.assert_close(m.log_prob(x, y).detach(), direct, rtol=1e-12, atol=1e-12)
    mix = m(x)
    torch.testing.assert_close(mix.mean.detach(), (1 - pz) * lam)
    torch.testing.assert_close(mix.variance.detach(), (1 - pz) * lam * (1 + pz * lam))
    torch.testing.assert_close(mix.cdf(torch.zeros(300, dtype=F64)).detach(), pz + (1 - pz) * torch.exp(-lam))
    levels = [0.05, 0.5, 0.95]
    q = mix.quantiles(levels)
    grid = np.arange(200)
    cdf = pz.numpy()[:, None] + (1 - pz.numpy()[:, None]) * stats.poisson.cdf(grid[None, :], lam.numpy()[:, None])
    for j, lev in enumerate(levels):
        assert q[:, j].tolist() == np.argmax(cdf >= lev, axis=1).astype(float).tolist()  # smallest k with F(k) >= q
    s = mix.sample((2000,))
    assert s.shape == (2000, 300) and bool((s == s.round()).all()) and bool((s >= 0).all())
    assert abs(float(s.mean()) - float(mix.mean.detach().mean())) < 0.1
    assert abs(float((s == 0).to(F64).mean()) - float(mix.cdf(torch.zeros(300, dtype=F64)).detach().mean())) < 0.01


@pytest.mark.parametrize("init", ["random", "auto", "kmeans"])
def test_zero_inflated_poisson_fits_by_em_without_nan(init):
    x, y = _zip_data()
    m = _zip_model()
    seen = []

    def watch(it, ll, model):
        r = model.log_responsibilities(x, y).exp()
        seen.append(bool(torch.isfinite(r).all()) and bool(torch.isfinite(model.log_prob(x, y)).all()))

    res = fit_em(m, x, y, init=init, random_state=0, max_iter=500, tol=1e-9, callback=watch)
    assert all(seen) and all(math.isfinite(h) for h in res.history)
    assert _monotone(res.history)
    assert res.converged
    # rows with y > 0 are never the point mass's
    r = m.log_responsibilities(x, y).exp()
    assert bool((r[y > 0, 0] == 0).all())
    direct, *_ = _zip_direct(m, x, y)
    assert abs(float(direct.sum()) - res.log_likelihood) < 1e-6
    # near the truth (n = 1500: loose)
    np.testing.assert_allclose(m.gate.coef[0].detach().numpy(), [-0.5, 1.0], atol=0.35)
    np.testing.assert_allclose(m.experts[1].coef[0].detach().numpy(), [1.0, 0.5], atol=0.15)


def test_zero_inflated_poisson_starts_agree():
    x, y = _zip_data()
    lls = []
    for init in ("random", "auto", "kmeans"):
        m = _zip_model()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no pruning, no convergence warning
            lls.append(fit_em(m, x, y, init=init, random_state=1, max_iter=500, tol=1e-10).log_likelihood)
    assert max(lls) - min(lls) < 1e-5


def test_zero_inflated_poisson_gradients_and_hessian_are_finite():
    """Through -inf entries: logsumexp gives the -inf component weight zero, never 0 * inf."""
    x, y = _zip_data(n=400)
    m = _zip_model()
    fit_em(m, x, y, random_state=0, max_iter=50)
    names = [k for k, _ in m.named_parameters()]
    shapes = [p.shape for p in m.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    def total(f):
        params, i = {}, 0
        for name, s in zip(names, shapes):
            params[name] = f[i:i + s.numel()].reshape(s)
            i += s.numel()
        return _log_lik(m, params, x, y)

    h = torch.autograd.functional.hessian(total, flat)
    assert bool(torch.isfinite(h).all())
    f = flat.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(total(f), f)
    assert bool(torch.isfinite(grad).all())
    # per-row scores too (the sandwich's double backward)
    lp = m.log_prob(x, y)
    rows = torch.autograd.grad(lp.sum(), list(m.parameters()), allow_unused=True)
    assert all(g is None or bool(torch.isfinite(g).all()) for g in rows)
    # the observed information of the Poisson-and-gate part is negative definite at the optimum
    ev = torch.linalg.eigvalsh(h[[0, 1] + list(range(4, flat.numel()))][:, [0, 1] + list(range(4, flat.numel()))])
    assert bool((ev < 0).all())


class _LogLik(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, x, y):
        return self.m.log_prob(x, y).sum()


def _log_lik(model, params, x, y):
    return functional_call(_LogLik(model), {f"m.{k}": v for k, v in params.items()}, (x, y))


def test_two_point_masses_and_a_poisson_under_a_constant_gate():
    """Two point masses and a Poisson under a constant gate: the shares of 0s and 1s are estimated."""
    g = torch.Generator().manual_seed(13)
    y = torch.poisson(torch.full((600,), 3.0, dtype=F64), generator=g)
    y[:150] = 0.0
    y[150:250] = 1.0
    x = torch.zeros(600, 0, dtype=F64)
    m = MixtureOfExperts(ConstantGate(3), [PointMassExpert(0.0), PointMassExpert(1.0), PoissonExpert(0)])
    res = fit_em(m, x, y, random_state=0, max_iter=1000, tol=1e-12)
    assert _monotone(res.history) and math.isfinite(res.log_likelihood)
    # the point masses' weights: the excess of 0s and 1s over the Poisson's
    w = m.gate.logits.softmax(0).detach()
    lam = float(m.experts[2].coef[0, 0].detach().exp())
    p_pois = float(w[2])
    np.testing.assert_allclose(float(w[0]) + p_pois * math.exp(-lam), float((y == 0).to(F64).mean()), atol=1e-6)
    np.testing.assert_allclose(float(w[1]) + p_pois * lam * math.exp(-lam), float((y == 1).to(F64).mean()), atol=1e-6)


def test_mixture_distribution_with_point_mass_first_is_discrete():
    mix = MixtureDistribution(torch.log(torch.tensor([[0.3, 0.7]], dtype=F64)),
                              [PointMass(torch.zeros(1, dtype=F64)), Poisson(torch.tensor([4.0], dtype=F64))])
    q = mix.quantiles([0.2, 0.32, 0.5])
    assert q.tolist() == [[0.0, 1.0, 3.0]]
