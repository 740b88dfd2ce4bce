"""Censored Gaussian (Tobit) experts: contract, reductions, a direct Tobit maximisation, EM monotonicity, bad input."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import log_ndtr, ndtr

from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate, fit_em
from moekit._validation import incomplete_targets
from moekit.experts.censored import CensoredGaussianExpert, LatentNormal, censored_log_prob
from moekit.testing import check_expert
from moekit.training.em import e_step_pass

DT = torch.float64
INF = math.inf
NAN = math.nan


# --------------------------------------------------------------------- data
def censored_data(n=150, d=2, seed=0, offset=False, interval=True, far=INF):
    """x (n, d [+1]) and y (n, 3): left-censored at -0.3, right-censored at 1.4, some interval rows (NaN y).

    ``far``: the limit used where a row has none (inf; or a large finite number, for fit_em's finite-data check).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=DT)
    beta = torch.linspace(1.0, -0.7, d, dtype=DT)
    latent = 0.5 + x @ beta + 0.6 * torch.randn(n, generator=g, dtype=DT)
    if offset:
        off = 0.4 * torch.randn(n, 1, generator=g, dtype=DT)
        latent = latent + off[:, 0]
        x = torch.cat([x, off], 1)
    lo = torch.full((n,), -far, dtype=DT)
    hi = torch.full((n,), far, dtype=DT)
    y = latent.clone()
    left = latent <= -0.3
    right = latent >= 1.4
    y[left], lo[left] = -0.3, -0.3
    y[right], hi[right] = 1.4, 1.4
    if interval:
        exact = ~left & ~right
        rows = exact & (torch.arange(n) % 6 == 0)
        y[rows] = NAN
        lo[rows] = torch.floor(2 * latent[rows]) / 2
        hi[rows] = lo[rows] + 0.5
        one_sided = exact & (torch.arange(n) % 6 == 3)  # NaN with only a lower limit: above lower
        y[one_sided] = NAN
        lo[one_sided] = latent[one_sided] - 0.2
    return x, torch.stack([y, lo, hi], 1)


def _weights(n, k=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g, dtype=DT) + 0.1 if k is None else torch.rand(n, k, generator=g, dtype=DT) + 0.1


# --------------------------------------------------------------- contract
@pytest.mark.parametrize(
    "k, offset", [(None, False), (3, False), (2, True)], ids=["single", "stacked", "offset"]
)
def test_conformance_with_censored_rows(k, offset):
    x, y = censored_data(offset=offset)
    yv = y[:, 0]
    kinds = [(yv == y[:, 1]).sum(), (yv == y[:, 2]).sum(), yv.isnan().sum(), ((yv > y[:, 1]) & (yv < y[:, 2])).sum()]
    assert all(int(c) >= 5 for c in kinds)  # left, right, interval and exact rows all present
    check_expert(lambda: CensoredGaussianExpert(2, n_experts=k, offset=offset), x, y)


def test_conformance_uncensored_and_intercept_only():
    x, y = censored_data(interval=False)
    check_expert(lambda: CensoredGaussianExpert(2), x, y[:, 0].clamp(-0.3, 1.4))
    check_expert(lambda: CensoredGaussianExpert(0, n_experts=2), x[:, :0], y)


def test_log_prob_by_hand_and_latent_predictions():
    e = CensoredGaussianExpert(1)
    with torch.no_grad():
        e.coef.copy_(torch.tensor([[0.2, 1.5]], dtype=DT))
        e.log_scale.fill_(math.log(0.7))
    x = torch.tensor([[0.0], [1.0], [-1.0], [0.5], [0.1]], dtype=DT)
    y = torch.tensor([[0.1, -INF, INF], [1.0, 1.0, INF], [0.0, -INF, 0.0], [NAN, 0.0, 1.0], [NAN, 0.5, INF]], dtype=DT)
    mu = (0.2 + 1.5 * x[:, 0]).numpy()
    s = 0.7
    want = [
        -0.5 * ((0.1 - mu[0]) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi),
        log_ndtr((1.0 - mu[1]) / s),
        log_ndtr((mu[2] - 0.0) / s),
        math.log(ndtr((1.0 - mu[3]) / s) - ndtr((0.0 - mu[3]) / s)),
        log_ndtr((mu[4] - 0.5) / s),
    ]
    np.testing.assert_allclose(e.log_prob(x, y).detach().numpy(), want, rtol=1e-13, atol=1e-13)
    dist = e(x)
    assert isinstance(dist, LatentNormal)
    np.testing.assert_allclose(dist.mean.detach().numpy(), mu, rtol=1e-14)  # predictions are of the latent y
    np.testing.assert_allclose(dist.log_prob(y).detach().numpy(), want, rtol=1e-13, atol=1e-13)


def test_extreme_limits_stay_finite_with_finite_gradients():
    """Far tails, tiny and huge intervals: finite log-probabilities and gradients (no torch.where NaN trap)."""
    e = CensoredGaussianExpert(1, n_experts=2)
    with torch.no_grad():
        e.coef.copy_(torch.tensor([[0.0, 1.0], [50.0, -3.0]], dtype=DT))
        e.log_scale.copy_(torch.tensor([math.log(0.01), 0.0], dtype=DT))
    x = torch.linspace(-2, 2, 8, dtype=DT)[:, None]
    y = torch.tensor(
        [
            [-300.0, -300.0, INF],  # left-censored far below: P ~ 1
            [300.0, -INF, 300.0],  # right-censored far above: P ~ 0, log P ~ -4.5e8
            [NAN, 40.0, 40.000001],  # a tiny interval in the upper tail
            [NAN, -1e4, 1e4],  # a huge interval straddling the mean
            [NAN, -41.0, -40.0],  # lower tail
            [NAN, -0.5, 0.5],
            [0.3, -INF, INF],
            [NAN, -INF, 2.0],
        ],
        dtype=DT,
    )
    lp = e.log_prob(x, y)
    assert torch.isfinite(lp).all()
    lp.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in e.parameters())
    mean_var = e.suff_stats(x, y)
    assert all(torch.isfinite(t).all() for t in mean_var.tensors())


def test_log_prob_between_matches_scipy_over_a_grid():
    a = np.array([-40.0, -8.0, -3.0, -1.0, -0.2, 0.0, 0.3, 2.0, 7.0, 30.0])
    rows, ref = [], []
    for i, lo in enumerate(a):
        for hi in a[i + 1 :]:
            rows.append([NAN, lo, hi])
            with np.errstate(divide="ignore"):
                # the reference: the smaller of two tail differences, in log space
                if hi <= 0:
                    r = log_ndtr(hi) + np.log1p(-np.exp(log_ndtr(lo) - log_ndtr(hi)))
                else:
                    r = log_ndtr(-lo) + np.log1p(-np.exp(log_ndtr(-hi) - log_ndtr(-lo)))
            ref.append(r)
    y = torch.tensor(rows, dtype=DT)
    got = censored_log_prob(y, torch.zeros(len(rows), 1, dtype=DT), torch.ones(1, dtype=DT))[:, 0]
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-11)


# ---------------------------------------------------------- reductions
@pytest.mark.parametrize("k", [None, 3])
def test_no_censoring_equals_linear_gaussian(k):
    x, _ = censored_data()
    g = torch.Generator().manual_seed(3)
    y = 0.5 + x @ torch.tensor([1.0, -0.7], dtype=DT) + 0.6 * torch.randn(x.shape[0], generator=g, dtype=DT)
    w = _weights(x.shape[0], k)
    lg = LinearGaussianExpert(2, n_experts=k).fit_weighted(x, y, w)
    ce = CensoredGaussianExpert(2, n_experts=k).fit_weighted(x, y, w)
    np.testing.assert_allclose(ce.coef.detach().numpy(), lg.coef.detach()[..., 0].numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ce.scale().detach().numpy(), lg.scale_tril()[:, 0, 0].detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(ce.log_prob(x, y).detach().numpy(), lg.log_prob(x, y).detach().numpy(), rtol=1e-12, atol=1e-12)
    three = torch.stack([y, torch.full_like(y, -INF), torch.full_like(y, INF)], 1)  # the (n, 3) form, no limits
    np.testing.assert_allclose(ce.log_prob(x, three).detach().numpy(), lg.log_prob(x, y).detach().numpy(), rtol=1e-12, atol=1e-12)
    ce3 = CensoredGaussianExpert(2, n_experts=k).fit_weighted(x, three, w)
    np.testing.assert_allclose(ce3.coef.detach().numpy(), ce.coef.detach().numpy(), rtol=1e-12, atol=1e-12)
    # one M-step is the exact least-squares solution
    one = CensoredGaussianExpert(2, n_experts=k)
    one.m_step(one.suff_stats(x, y, w))
    np.testing.assert_allclose(one.coef.detach().numpy(), lg.coef.detach()[..., 0].numpy(), rtol=1e-12, atol=1e-12)


def _tobit_nll(theta, xd, y):
    """The Tobit negative log-likelihood and its gradient, written independently of moekit (NumPy/SciPy)."""
    p = xd.shape[1]
    beta, s = theta[:p], math.exp(theta[p])
    mu = xd @ beta
    yv, lo, hi = y[:, 0], y[:, 1], y[:, 2]
    nan = np.isnan(yv)
    left, right = ~nan & (yv == lo), ~nan & (yv == hi)
    exact = ~nan & ~left & ~right
    ll = np.zeros_like(mu)
    dmu = np.zeros_like(mu)  # d loglik / d mu
    dls = np.zeros_like(mu)  # d loglik / d log s
    z = (yv[exact] - mu[exact]) / s
    ll[exact] = -0.5 * z**2 - math.log(s) - 0.5 * math.log(2 * math.pi)
    dmu[exact], dls[exact] = z / s, z**2 - 1
    phi = lambda t: np.exp(-0.5 * t**2) / math.sqrt(2 * math.pi)  # noqa: E731
    b = (lo[left] - mu[left]) / s
    lam = np.exp(np.log(phi(b)) - log_ndtr(b))
    ll[left], dmu[left], dls[left] = log_ndtr(b), -lam / s, -lam * b
    a = (hi[right] - mu[right]) / s
    lam = np.exp(np.log(phi(a)) - log_ndtr(-a))
    ll[right], dmu[right], dls[right] = log_ndtr(-a), lam / s, lam * a
    a, b = (lo[nan] - mu[nan]) / s, (hi[nan] - mu[nan]) / s
    pa = np.where(np.isfinite(a), phi(np.where(np.isfinite(a), a, 0)), 0)
    pb = np.where(np.isfinite(b), phi(np.where(np.isfinite(b), b, 0)), 0)
    prob = ndtr(b) - ndtr(a)
    ll[nan] = np.log(prob)
    dmu[nan] = (pa - pb) / (prob * s)
    dls[nan] = (np.where(np.isfinite(a), a, 0) * pa - np.where(np.isfinite(b), b, 0) * pb) / prob
    grad = np.concatenate([xd.T @ dmu, [dls.sum()]])
    return -ll.sum(), -grad


def test_k1_matches_direct_tobit_maximisation():
    x, y = censored_data(n=400, seed=5)
    yv = y[:, 0]
    assert int((yv == y[:, 1]).sum()) > 40 and int((yv == y[:, 2]).sum()) > 40 and int(yv.isnan().sum()) > 40
    e = CensoredGaussianExpert(2)
    e.init_from_responsibilities(x, y, torch.ones(400, dtype=DT))
    xd = np.column_stack([np.ones(400), x.numpy()])
    lo_n, hi_n, nan = y[:, 1].numpy(), y[:, 2].numpy(), np.isnan(yv.numpy())
    mid = np.where(np.isinf(hi_n), lo_n, 0.5 * (lo_n + np.where(np.isinf(hi_n), 0.0, hi_n)))
    filled = np.where(nan, mid, yv.numpy())
    start = np.append(np.linalg.lstsq(xd, filled, rcond=None)[0], 0.0)  # least squares on the rows filled in
    res = minimize(_tobit_nll, start, args=(xd, y.numpy()), jac=True, method="BFGS", options={"gtol": 1e-10, "maxiter": 10000})
    for _ in range(3):  # Newton polish on the BFGS answer (finite-difference Hessian of the exact gradient)
        g0 = _tobit_nll(res.x, xd, y.numpy())[1]
        h = np.column_stack([(_tobit_nll(res.x + 1e-6 * ei, xd, y.numpy())[1] - g0) / 1e-6 for ei in np.eye(4)])
        res.x = res.x - np.linalg.solve(0.5 * (h + h.T), g0)
    assert np.abs(_tobit_nll(res.x, xd, y.numpy())[1]).max() < 1e-8
    np.testing.assert_allclose(e.coef.detach()[0].numpy(), res.x[:3], atol=1e-6)
    np.testing.assert_allclose(float(e.scale().detach()[0]), math.exp(res.x[3]), atol=1e-6)
    ll = float(e.log_prob(x, y).detach().sum())
    assert abs(ll - (-_tobit_nll(res.x, xd, y.numpy())[0])) < 1e-8
    # moekit's log-likelihood at scipy's point agrees with scipy's
    with torch.no_grad():
        e.coef.copy_(torch.as_tensor(res.x[None, :3]))
        e.log_scale.fill_(res.x[3])
    assert abs(float(e.log_prob(x, y).detach().sum()) + _tobit_nll(res.x, xd, y.numpy())[0]) < 1e-9


def test_fit_converges_when_most_rows_are_censored():
    """90 % left-censored rows (plain EM would take about 900 steps): fit_weighted reaches the Tobit optimum."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2000, 2, generator=g, dtype=DT)
    latent = x @ torch.tensor([1.0, 0.5], dtype=DT) + torch.randn(2000, generator=g, dtype=DT)
    y = torch.stack([latent.clamp_min(1.5), torch.full_like(latent, 1.5), torch.full_like(latent, INF)], 1)
    assert float((latent <= 1.5).to(DT).mean()) > 0.85
    e = CensoredGaussianExpert(2)
    e.init_from_responsibilities(x, y, None)
    theta = np.append(e.coef.detach()[0].numpy(), float(e.log_scale.detach()[0]))
    xd = np.column_stack([np.ones(2000), x.numpy()])
    grad = _tobit_nll(theta, xd, y.numpy())[1]
    # a stationary point of the censored likelihood: the fit stops when the total over 2,000 rows no longer rises,
    # which float64 cannot see below gradients of about 1e-6 (a change of 1e-16 relative); 1e-5 is 5e-9 per row
    assert np.abs(grad).max() < 1e-5, grad


def test_integer_weights_equal_repeated_rows():
    x, y = censored_data(n=120, seed=2)
    reps = torch.randint(0, 4, (120,), generator=torch.Generator().manual_seed(4))
    idx = torch.repeat_interleave(torch.arange(120), reps)
    for k in (None, 2):
        w = reps.to(DT) if k is None else reps.to(DT)[:, None].expand(120, k).contiguous()
        ones = torch.ones(len(idx), dtype=DT) if k is None else torch.ones(len(idx), k, dtype=DT)
        a = CensoredGaussianExpert(2, n_experts=k).fit_weighted(x, y, w)
        b = CensoredGaussianExpert(2, n_experts=k).fit_weighted(x[idx], y[idx], ones)
        np.testing.assert_allclose(a.coef.detach().numpy(), b.coef.detach().numpy(), rtol=1e-8, atol=1e-9)
        np.testing.assert_allclose(a.scale().detach().numpy(), b.scale().detach().numpy(), rtol=1e-8)
        np.testing.assert_allclose(float(a.weighted_log_likelihood(x, y, w)), float(b.weighted_log_likelihood(x[idx], y[idx], ones)), rtol=1e-12)


def test_each_em_step_raises_the_censored_likelihood_and_statistics_add():
    x, y = censored_data(n=200, seed=6)
    e = CensoredGaussianExpert(2)
    w = _weights(200)
    prev = float(e.weighted_log_likelihood(x, y, w))
    for _ in range(25):
        e.m_step(e.suff_stats(x, y, w))  # a bare EM step, no step-halving
        now = float(e.weighted_log_likelihood(x, y, w))
        assert now >= prev - 1e-10 * abs(prev)
        prev = now
    whole = e.suff_stats(x, y, w)
    parts = e.suff_stats(x[:70], y[:70], w[:70]) + e.suff_stats(x[70:], y[70:], w[70:])
    for u, v in zip(whole.tensors(), parts.tensors()):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


def test_var_floor_and_input_rescaling():
    x, y = censored_data(n=100, seed=7)
    e = CensoredGaussianExpert(2, var_floor=4.0).fit_weighted(x, y)
    assert float(e.scale().detach()[0]) == pytest.approx(2.0)
    e = CensoredGaussianExpert(2, offset=False).fit_weighted(x, y)
    scaled = copy.deepcopy(e)
    scaled.absorb_input_scale_(3)  # answers for x as it answered for x * 2**-3
    torch.testing.assert_close(scaled.log_prob(x * 8, y), e.log_prob(x, y), rtol=0, atol=0)
    assert e.n_parameters() == 4
    assert CensoredGaussianExpert(0, n_experts=3).n_parameters() == 2


# --------------------------------------------------------------------- EM
def _nondecreasing(h, rel=1e-10):
    h = np.asarray(h)
    return bool(np.all(np.diff(h) >= -rel * (1 + np.abs(h[:-1]))))


def _two_expert_data(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g, dtype=DT) * 4 - 2
    z = torch.rand(n, generator=g, dtype=DT) < torch.sigmoid(2.5 * x[:, 0])
    latent = torch.where(z, 1.0 + 1.5 * x[:, 0], -0.5 - x[:, 0]) + 0.4 * torch.randn(n, generator=g, dtype=DT)
    return x, latent


def test_em_of_a_two_expert_mixture_never_decreases_with_fit_em():
    """fit_em with both detection limits finite in every row (left- and right-censored and exact rows)."""
    x, latent = _two_expert_data()
    lo, hi = torch.full_like(latent, -0.8), torch.full_like(latent, 2.0)
    y = torch.stack([latent.clamp(-0.8, 2.0), lo, hi], 1)
    assert float(((y[:, 0] == lo) | (y[:, 0] == hi)).to(DT).mean()) > 0.2
    moe = MixtureOfExperts(SoftmaxGate(1, 2), CensoredGaussianExpert(1, n_experts=2))
    res = fit_em(moe, x, y, random_state=0, max_iter=60)
    assert _nondecreasing(res.history), np.diff(res.history).min()
    assert res.history[-1] > res.history[0]


def test_em_with_interval_rows_never_decreases():
    """fit_em on rows with ±inf limits and NaN (interval-censored) y, inside incomplete_targets()."""
    x, latent = _two_expert_data(seed=1)
    n = latent.shape[0]
    lo, hi = torch.full_like(latent, -INF), torch.full_like(latent, INF)
    y = latent.clone()
    left = latent < -0.8
    y[left], lo[left] = -0.8, -0.8
    rows = ~left & (torch.arange(n) % 3 == 0)
    y[rows] = NAN
    lo[rows], hi[rows] = torch.floor(latent[rows]), torch.floor(latent[rows]) + 1
    y3 = torch.stack([y, lo, hi], 1)
    moe = MixtureOfExperts(SoftmaxGate(1, 2), CensoredGaussianExpert(1, n_experts=2))
    with incomplete_targets():
        res = fit_em(moe, x, y3, random_state=0, max_iter=60)
    assert all(math.isfinite(h) for h in res.history)
    assert _nondecreasing(res.history), np.diff(res.history).min()
    assert res.history[-1] > res.history[0]
    # the same EM step by hand: e_step_pass, then m_step with the passes
    history = []
    for _ in range(5):
        stats, passes = e_step_pass(moe, [(x, y3, torch.ones(n, dtype=DT))])
        history.append(float(stats["loglik"]) / n)
        moe.m_step(stats, passes)
    assert history[0] == pytest.approx(res.history[-1], rel=1e-12) and _nondecreasing(history)


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "row, match",
    [
        ([0.0, 1.0, 0.5], "lower must be < upper"),
        ([0.0, 1.0, 1.0], "lower must be < upper"),
        ([2.0, -INF, 1.0], "must bracket y"),
        ([-2.0, -1.0, INF], "must bracket y"),
        ([NAN, -INF, INF], "no finite limit"),
        ([INF, -INF, INF], "infinite"),
        ([0.0, NAN, INF], "NaN"),
    ],
)
def test_bad_limits_name_the_rows_and_the_fix(row, match):
    e = CensoredGaussianExpert(1)
    x = torch.zeros(3, 1, dtype=DT)
    y = torch.tensor([[0.0, -INF, INF], row, [0.0, -INF, INF]], dtype=DT)
    before = y.clone()
    with pytest.raises(ValueError, match=match) as info:
        e.log_prob(x, y)
    assert "[1]" in str(info.value)  # the offending row
    with pytest.raises(ValueError, match=match):
        e.fit_weighted(x, y)
    torch.testing.assert_close(y, before, equal_nan=True)  # the caller's data is unchanged


def test_bad_shapes_and_arguments():
    e = CensoredGaussianExpert(2, offset=True)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\) \(2 features, then the offset\)"):
        e.log_prob(torch.zeros(4, 2, dtype=DT), torch.zeros(4, dtype=DT))
    with pytest.raises(ValueError, match=r"\(4, 3\) with columns \[y, lower, upper\]"):
        e.log_prob(torch.zeros(4, 3, dtype=DT), torch.zeros(4, 2, dtype=DT))
    with pytest.raises(ValueError, match="pass y as"):
        e.log_prob(torch.zeros(2, 3, dtype=DT), torch.tensor([0.0, NAN], dtype=DT))
    with pytest.raises(ValueError, match="var_floor"):
        CensoredGaussianExpert(1, var_floor=0.0)
    with pytest.raises(ValueError, match="max_m_steps"):
        CensoredGaussianExpert(1, max_m_steps=0)
    with pytest.raises(ValueError, match="n_features"):
        CensoredGaussianExpert(-1)
