"""GammaExpert and NegativeBinomialExpert: conformance, K = 1 against statsmodels, weights, EM monotonicity, bad y."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import statsmodels.api as sm
import torch
from scipy import stats as sps
from scipy.optimize import minimize_scalar
from statsmodels.discrete.discrete_model import NegativeBinomial as DiscreteNB

from moekit import (
    GammaExpert,
    MixtureOfExperts,
    NegativeBinomialExpert,
    PointMassExpert,
    PoissonExpert,
    SoftmaxGate,
    fit_em,
)
from moekit.distributions import Gamma, MixtureDistribution, NegativeBinomial
from moekit.experts.gamma import SHAPE_BOUNDS
from moekit.experts.negative_binomial import ALPHA_BOUNDS
from moekit.testing import check_expert

D = torch.float64


# --------------------------------------------------------------------- data
def gamma_data(n=60, shape=2.0, seed=1, offset=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    off = 0.5 * rng.normal(size=n)
    mu = np.exp(0.5 + 0.4 * x[:, 0] - 0.3 * x[:, 1] + (off if offset else 0.0))
    y = rng.gamma(shape, mu / shape)
    xx = np.column_stack([x, off]) if offset else x
    return torch.as_tensor(xx), torch.as_tensor(y)


def nb_data(n=60, alpha=0.5, seed=1, offset=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    off = 0.5 * rng.normal(size=n)
    mu = np.exp(0.5 + 0.4 * x[:, 0] - 0.3 * x[:, 1] + (off if offset else 0.0))
    y = rng.negative_binomial(1 / alpha, 1 / (1 + alpha * mu)).astype(float)
    xx = np.column_stack([x, off]) if offset else x
    return torch.as_tensor(xx), torch.as_tensor(y)


FAMILIES = {"gamma": (GammaExpert, gamma_data), "negative_binomial": (NegativeBinomialExpert, nb_data)}
family = pytest.mark.parametrize("fam", list(FAMILIES))


def make(fam, *args, **kw):
    return FAMILIES[fam][0](*args, **kw)


def data(fam, **kw):
    return FAMILIES[fam][1](**kw)


def dispersion_log(e):
    """The log-scale dispersion parameter of either family."""
    return e.log_shape if isinstance(e, GammaExpert) else e.log_alpha


def converge(e, x, y, w=None, rounds=20):
    """Repeated weighted fits from the current point until nothing moves (statsmodels-level precision)."""
    for _ in range(rounds):
        before = torch.cat([p.detach().reshape(-1) for p in e.parameters()])
        e.fit_weighted(x, y, w)
        after = torch.cat([p.detach().reshape(-1) for p in e.parameters()])
        if bool((after - before).abs().max() < 1e-13):
            break
    return e


def loglik_of(e, x, y):
    with torch.no_grad():
        return float(e.log_prob(x, y).sum())


def fitted(fam, x, y, w=None, **kw):
    e = make(fam, x.shape[1] - (1 if kw.get("offset") else 0), max_m_steps=50, **kw)
    e.init_from_responsibilities(x, y, w)
    return converge(e, x, y, w)


# -------------------------------------------------------------- conformance
CONFORMANCE = {
    "single": ({}, {}),
    "stacked": ({"n_experts": 3}, {}),
    "offset": ({"offset": True}, {"offset": True}),
    "stacked-offset": ({"n_experts": 2, "offset": True}, {"offset": True}),
}


@family
@pytest.mark.parametrize("case", list(CONFORMANCE))
def test_conformance(fam, case):
    kw, dkw = CONFORMANCE[case]
    x, y = data(fam, **dkw)
    check_expert(lambda: make(fam, 2, **kw), x, y)


@family
def test_conformance_shared_coefficients(fam):
    """The suite's properties with shared=[0] (its optimum check moves coefficients one by one, untying them, so the
    optimum is checked below in the tied parametrisation)."""
    x, y = data(fam)
    check_expert(lambda: make(fam, 2, n_experts=2, shared=[0]), x, y, exact_m_step=False)


@family
def test_shared_coefficients_reach_the_tied_optimum(fam):
    x, y = data(fam, n=200)
    w = torch.as_tensor(np.random.default_rng(0).uniform(0.1, 1.0, size=(200, 2)))
    e = fitted(fam, x, y, w, n_experts=2, shared=[0])
    coef = e.coef.detach()
    assert torch.equal(coef[0, 1], coef[1, 1])  # the shared slope stays tied
    assert not torch.allclose(coef[0, 2], coef[1, 2])  # the others are free
    obj = (w * e.log_prob(x, y)).sum()
    g_coef, g_disp = torch.autograd.grad(obj, [e.coef, dispersion_log(e)])
    scale = float(obj.detach().abs())
    assert float(g_coef[:, [0, 2]].abs().max()) < 1e-6 * scale
    assert float(g_coef[:, 1].sum().abs()) < 1e-6 * scale  # stationary along the tied direction
    assert float(g_disp.abs().max()) < 1e-6 * scale


@family
def test_stack_equals_unstacked(fam):
    x, y = data(fam)
    e = make(fam, 2, n_experts=2)
    e.init_from_responsibilities(x, y, torch.rand(60, 2, generator=torch.Generator().manual_seed(0), dtype=D) + 0.1)
    lp = e.log_prob(x, y)
    for k, single in enumerate(e.unstack()):
        torch.testing.assert_close(single.log_prob(x, y), lp[:, k], rtol=1e-14, atol=1e-14)
    assert e.n_parameters() == 2 + 1 + 1  # slopes, intercept and the dispersion


# ------------------------------------------------------- K = 1: statsmodels
@pytest.mark.parametrize("offset", [False, True])
def test_gamma_k1_matches_statsmodels(offset):
    x, y = gamma_data(n=500, shape=1.7, seed=3, offset=offset)
    e = fitted("gamma", x, y, offset=offset)
    xn, yn = x.numpy(), y.numpy()
    fam = sm.families.Gamma(sm.families.links.Log())
    res = sm.GLM(yn, sm.add_constant(xn[:, :2]), family=fam, offset=xn[:, 2] if offset else None).fit(tol=1e-14, maxiter=200)
    np.testing.assert_allclose(e.coef[0].detach().numpy(), res.params, rtol=0, atol=1e-6)
    # statsmodels' scale is Pearson's; the maximum-likelihood scale at its coefficients:
    best = minimize_scalar(lambda s: -fam.loglike(yn, res.mu, scale=np.exp(s)), bracket=(-2.0, 2.0), tol=1e-12)
    np.testing.assert_allclose(e.dispersion.item(), np.exp(best.x), rtol=1e-6)
    loglik = loglik_of(e, x, y)
    np.testing.assert_allclose(loglik, -best.fun, rtol=1e-10, atol=1e-6)
    # and the log-likelihood, by scipy, of moekit's own parameters
    mu = e(x).mean.detach().numpy()
    nu = e.shape.item()
    np.testing.assert_allclose(loglik, sps.gamma.logpdf(yn, nu, scale=mu / nu).sum(), rtol=1e-12)


@pytest.mark.parametrize("offset", [False, True])
def test_negative_binomial_k1_matches_statsmodels(offset):
    x, y = nb_data(n=600, alpha=0.7, seed=5, offset=offset)
    e = fitted("negative_binomial", x, y, offset=offset)
    xn, yn = x.numpy(), y.numpy()
    off = xn[:, 2] if offset else None
    xd = sm.add_constant(xn[:, :2])
    alpha = e.alpha.item()
    loglik = loglik_of(e, x, y)
    # the discrete NB2 model estimates alpha itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nb2 = DiscreteNB(yn, xd, loglike_method="nb2", offset=off).fit(method="newton", maxiter=200, tol=1e-14, disp=0)
    np.testing.assert_allclose(e.coef[0].detach().numpy(), nb2.params[:3], rtol=0, atol=1e-6)
    np.testing.assert_allclose(alpha, nb2.params[3], rtol=1e-6)
    np.testing.assert_allclose(loglik, nb2.llf, rtol=1e-10, atol=1e-6)
    # the GLM with alpha fixed at moekit's estimate
    glm = sm.GLM(yn, xd, family=sm.families.NegativeBinomial(alpha=alpha), offset=off).fit(tol=1e-14, maxiter=200)
    np.testing.assert_allclose(e.coef[0].detach().numpy(), glm.params, rtol=0, atol=1e-6)
    np.testing.assert_allclose(loglik, glm.llf, rtol=1e-10, atol=1e-6)
    # scipy's pmf at moekit's parameters
    mu = e(x).mean.detach().numpy()
    np.testing.assert_allclose(loglik, sps.nbinom.logpmf(yn, 1 / alpha, 1 / (1 + alpha * mu)).sum(), rtol=1e-12)


def test_negative_binomial_tends_to_poisson():
    """Poisson data: alpha goes to its floor, and the fit and log-likelihood are Poisson regression's."""
    rng = np.random.default_rng(4)
    x = torch.as_tensor(rng.normal(size=(400, 1)))
    y = torch.as_tensor(rng.poisson(np.exp(0.3 + 0.5 * x[:, 0].numpy())).astype(float))
    e = fitted("negative_binomial", x, y)
    p = PoissonExpert(1, max_m_steps=50)
    p.init_from_responsibilities(x, y, None)
    converge(p, x, y)
    mu = p.log_rate(x).exp().detach()
    assert float(((y - mu) ** 2 - y).sum()) < 0  # NB2's score in alpha at 0: this draw's maximum is at alpha = 0
    assert e.alpha.item() < 1e-4
    assert e.alpha.item() >= ALPHA_BOUNDS[0] * (1 - 1e-12)
    np.testing.assert_allclose(e.coef.detach().numpy(), p.coef.detach().numpy(), atol=1e-4)
    np.testing.assert_allclose(loglik_of(e, x, y), loglik_of(p, x, y), rtol=1e-6)


# ----------------------------------------------------- weights = repeated rows
@family
@pytest.mark.parametrize("offset", [False, True])
def test_integer_weights_equal_repeated_rows(fam, offset):
    x, y = data(fam, n=120, seed=7, offset=offset)
    reps = torch.as_tensor(np.random.default_rng(8).integers(0, 4, size=120))
    idx = torch.repeat_interleave(torch.arange(120), reps)
    a = fitted(fam, x, y, reps.to(D), offset=offset)
    b = fitted(fam, x[idx], y[idx], offset=offset)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.detach(), pb.detach(), rtol=1e-8, atol=1e-9)


# ---------------------------------------------------------------------- EM
def _nondecreasing(h, rel=1e-10):
    h = np.asarray(h)
    return len(h) > 2 and np.all(np.diff(h) >= -rel * (1 + np.abs(h[:-1])))


def _two_expert_data(fam, n=600, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 1))
    z = rng.random(n) < 1 / (1 + np.exp(-3 * x[:, 0]))
    mu = np.where(z, np.exp(2.0 + 0.5 * x[:, 0]), np.exp(0.2 - 0.8 * x[:, 0]))
    if fam == "gamma":
        y = rng.gamma(np.where(z, 8.0, 2.0), mu / np.where(z, 8.0, 2.0))
    else:
        y = rng.negative_binomial(np.where(z, 10.0, 1.0), 1 / (1 + np.where(z, 0.1, 1.0) * mu)).astype(float)
    return torch.as_tensor(x), torch.as_tensor(y)


@family
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_em_never_lowers_the_likelihood(fam):
    x, y = _two_expert_data(fam)
    w = torch.as_tensor(np.random.default_rng(1).uniform(0.5, 2.0, size=len(y)))
    moe = MixtureOfExperts(SoftmaxGate(1, 2), make(fam, 1, n_experts=2))
    res = fit_em(moe, x, y, w, random_state=0, max_iter=60, tol=1e-12)
    assert _nondecreasing(res.history)
    assert np.isfinite(res.history).all()
    # the two experts separate: one with a high mean and a small dispersion
    disp = moe.experts.dispersion if fam == "gamma" else moe.experts.alpha
    assert float(disp.detach().max() / disp.detach().min()) > 2


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_em_with_offset_and_list_of_experts():
    x, y = _two_expert_data("negative_binomial", seed=3)
    off = torch.as_tensor(np.random.default_rng(4).normal(scale=0.2, size=(len(y), 1)))
    xo = torch.cat([x, off], 1)
    moe = MixtureOfExperts(SoftmaxGate(1, 2), [NegativeBinomialExpert(1, offset=True) for _ in range(2)],
                           gate_features=[0], expert_features=[0, 1])
    res = fit_em(moe, xo, y, random_state=0, max_iter=40, tol=1e-12)
    assert _nondecreasing(res.history)


# ------------------------------------------------------------- distributions
@torch.no_grad()
def test_forward_distributions_mean_variance_cdf():
    x, y = gamma_data()
    g = GammaExpert(2)
    g.init_from_responsibilities(x, y, None)
    d = g(x)
    assert isinstance(d, Gamma) and d.batch_shape == (60,)
    mu = g.log_mean(x).exp()
    torch.testing.assert_close(d.mean, mu)
    torch.testing.assert_close(d.variance, mu**2 * g.dispersion)
    nu = g.shape.item()
    np.testing.assert_allclose(d.cdf(y).numpy(), sps.gamma.cdf(y.numpy(), nu, scale=mu.detach().numpy() / nu), rtol=1e-10)
    assert d.log_prob(torch.zeros(60, dtype=D)).eq(-np.inf).all()  # off the support: -inf, not NaN
    assert d.cdf(-torch.ones(60, dtype=D)).eq(0).all()

    x, y = nb_data()
    e = NegativeBinomialExpert(2, n_experts=2)
    e.init_from_responsibilities(x, y, torch.ones(60, 2, dtype=D))
    d = e(x)
    assert isinstance(d, NegativeBinomial) and d.batch_shape == (60, 2)
    mu = e.log_mean(x).exp()
    a = e.alpha
    torch.testing.assert_close(d.mean, mu)
    torch.testing.assert_close(d.variance, mu + a * mu**2)
    k = y[:, None].expand(60, 2)
    want = sps.nbinom.cdf(k.numpy(), (1 / a).detach().numpy(), (1 / (1 + a * mu)).detach().numpy())
    np.testing.assert_allclose(d.cdf(k).numpy(), want, rtol=1e-10)
    assert d.log_prob(-torch.ones(60, 2, dtype=D)).eq(-np.inf).all()
    # a mixture of NB experts is discrete: integer quantiles, sampling
    mix = MixtureDistribution(torch.full((60, 2), 0.5, dtype=D).log(), d)
    q = mix.icdf(0.5)
    assert torch.equal(q, q.floor()) and bool((mix.cdf(q) >= 0.5).all()) and bool((mix.cdf(q - 1) < 0.5).all())
    assert mix.sample((3,)).shape == (3, 60)


def test_extreme_inputs_stay_finite():
    x = torch.tensor([[1e6, 0.0], [-1e6, 0.0], [0.0, 0.0]], dtype=D)
    for e, y in ((GammaExpert(2), torch.tensor([1e-300, 1e300, 1.0], dtype=D)),
                 (NegativeBinomialExpert(2), torch.tensor([0.0, 1e12, 3.0], dtype=D))):
        with torch.no_grad():
            e.coef.copy_(torch.tensor([[0.0, 1.0, 0.0]], dtype=D))
            dispersion_log(e).fill_(0.0)
        assert torch.isfinite(e.log_prob(x, y)).all()
        s = e.suff_stats(x, y)
        assert all(bool(torch.isfinite(t).all()) for t in s.tensors())
        for bound in (SHAPE_BOUNDS if isinstance(e, GammaExpert) else ALPHA_BOUNDS):
            with torch.no_grad():
                dispersion_log(e).fill_(float(np.log(bound)))
            assert torch.isfinite(e.log_prob(x, y)).all()


# ---------------------------------------------------------------- bad input
@family
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_y_is_named(fam, bad):
    x, y = data(fam)
    y = y.clone()
    y[5] = bad
    kept = y.clone()
    e = make(fam, 2)
    calls = (lambda: e.init_from_responsibilities(x, y, None), lambda: e.log_prob(x, y), lambda: e.suff_stats(x, y),
             lambda: e.fit_weighted(x, y))
    for call in calls:
        with pytest.raises(ValueError, match=r"y must .*finite.*y\[5\]"):
            call()
    assert torch.equal(y.nan_to_num(123.0), kept.nan_to_num(123.0))  # the caller's data is unchanged


@pytest.mark.parametrize(
    "fam, bad, what",
    [
        ("gamma", 0.0, "positive"),
        ("gamma", -1.0, "positive"),
        ("negative_binomial", -1.0, "non-negative integer"),
        ("negative_binomial", 2.5, "non-negative integer"),
    ],
)
def test_y_outside_the_support(fam, bad, what):
    """Outside the support: log-density -inf (a point mass may explain the row), no weight at the start, and a
    ValueError naming y when a weighted fit gives the row weight."""
    x, y = data(fam)
    y = y.clone()
    y[5] = bad
    kept = y.clone()
    e = make(fam, 2)
    for call in (lambda: e.suff_stats(x, y), lambda: e.fit_weighted(x, y)):
        with pytest.raises(ValueError, match=rf"y must be .*{what}.*y\[5\]"):
            call()
    others = torch.arange(60) != 5
    e.init_from_responsibilities(x, y, None)  # the start ignores the row
    ref = make(fam, 2)
    ref.init_from_responsibilities(x[others], y[others], None)
    for pa, pb in zip(e.parameters(), ref.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        lp = e.log_prob(x, y)
    assert lp[5] == -np.inf and torch.isfinite(lp[others]).all()
    w = others.to(D)  # zero weight on the row: a valid fit, equal to the fit without it
    e.fit_weighted(x, y, w)
    ref.fit_weighted(x[others], y[others])
    for pa, pb in zip(e.parameters(), ref.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12)
    assert torch.equal(y, kept)


def test_hurdle_gamma_with_a_point_mass_at_zero():
    """A point mass at 0 beside a Gamma expert (zeros and positive amounts): EM is monotone, the Gamma expert takes
    no responsibility for the zeros, and its fit equals the K = 1 fit on the positive rows."""
    rng = np.random.default_rng(11)
    x = torch.as_tensor(rng.uniform(-1, 1, size=(500, 1)))
    zero = rng.random(500) < 1 / (1 + np.exp(-(-0.5 + 2 * x[:, 0].numpy())))
    y = torch.as_tensor(np.where(zero, 0.0, rng.gamma(3.0, np.exp(1.0 + 0.5 * x[:, 0].numpy()) / 3.0)))
    moe = MixtureOfExperts(SoftmaxGate(1, 2), [PointMassExpert(0.0), GammaExpert(1)])
    res = fit_em(moe, x, y, random_state=0, max_iter=50)
    assert _nondecreasing(res.history) and np.isfinite(res.history).all()
    pos = y > 0
    ref = fitted("gamma", x[pos], y[pos])
    for pa, pb in zip(moe.experts[1].parameters(), ref.parameters()):
        torch.testing.assert_close(pa.detach(), pb.detach(), rtol=1e-6, atol=1e-6)


@family
def test_wrong_width_of_x_names_the_offset(fam):
    x, y = data(fam)
    with pytest.raises(ValueError, match="offset"):
        make(fam, 2, offset=True).log_prob(x, y)


def test_m_step_keeps_dispersion_inside_bounds_for_a_perfect_fit():
    x = torch.linspace(0, 1, 20, dtype=D)[:, None]
    y = torch.exp(0.5 + x[:, 0])
    e = GammaExpert(1)
    e.init_from_responsibilities(x, y, None)
    converge(e, x, y)
    assert e.shape.item() <= SHAPE_BOUNDS[1] * (1 + 1e-9)
    assert torch.isfinite(e.log_prob(x, y)).all()
    e2 = copy.deepcopy(e)
    e2.fit_weighted(x, y)  # at the cap, nothing moves and nothing breaks
    torch.testing.assert_close(e2.log_shape, e.log_shape)
