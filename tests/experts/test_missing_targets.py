"""Vector targets with missing (NaN) coordinates under linear-Gaussian experts, marginalised exactly.

Ghahramani & Jordan (1994): the likelihood of a row is the marginal density of its observed
coordinates; EM's statistics hold the missing coordinates' conditional means and covariances.
"""

import copy
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import moekit.experts._missing as missing
import moekit.experts.gaussian as gaussian
from moekit import (
    LinearGaussianExpert,
    MixtureOfExperts,
    PoissonExpert,
    SoftmaxGate,
    StudentTExpert,
    fit_em,
)
from moekit._validation import incomplete_targets
from moekit.experts._missing import (
    expected_stats,
    iterate_em,
    marginal_log_prob,
    missing_patterns,
)
from moekit.inference.information import observed_information
from moekit.testing import check_expert
from moekit.training.starts import small_em

D = torch.float64
NAN = float("nan")

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _covariances():
    """The noise structures this expert takes (the tied ones where they exist)."""
    out = []
    for c in ("full", "diag", "spherical", "tied", "tied_diag", "tied_spherical"):
        try:
            LinearGaussianExpert(1, 2, covariance=c, n_experts=2)
        except ValueError:
            continue
        out.append(c)
    return out


COVS = _covariances()
BASIC = ["full", "diag", "spherical"]


@pytest.fixture(params=["by_pattern", "by_row"])
def strategy(request, monkeypatch):
    """Both computations: rows grouped by missingness pattern, and every row in one batch (many patterns)."""
    if request.param == "by_row":
        monkeypatch.setattr(missing, "MAX_GROUPS", 0)
    return request.param


def _data(n=300, dx=2, dy=3, frac=0.3, seed=0, all_missing_rows=2):
    """Two linear experts under a softmax gate; ``frac`` of y's coordinates missing at random."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=g, dtype=D)
    z = torch.rand(n, generator=g, dtype=D) < torch.sigmoid(2 * x[:, 0])
    b0 = torch.randn(dx + 1, dy, generator=g, dtype=D)
    b1 = torch.randn(dx + 1, dy, generator=g, dtype=D)
    xd = torch.cat([torch.ones(n, 1, dtype=D), x], 1)
    noise = torch.randn(n, dy, generator=g, dtype=D) @ torch.tensor([[0.5, 0.2, 0.0], [0.0, 0.4, 0.1], [0.0, 0.0, 0.3]], dtype=D)[:dy, :dy]
    y = torch.where(z[:, None], xd @ b0, xd @ b1) + noise
    y_full = y.clone()
    y[torch.rand(n, dy, generator=g) < frac] = NAN
    y[:all_missing_rows] = NAN  # rows with nothing observed
    return x, y, y_full


def _random_expert(cov, dx=2, dy=3, k=2, seed=1):
    torch.manual_seed(seed)
    e = LinearGaussianExpert(dx, dy, covariance=cov, n_experts=k)
    with torch.no_grad():
        for p in e.parameters():
            p.normal_(0.0, 0.4)
    return e


def _scipy_log_prob(loc, cov, y):
    """log N(y_o; mu_o, Sigma_oo) row by row, expert by expert, with scipy (0 where nothing is observed)."""
    n, k, _ = loc.shape
    out = np.zeros((n, k))
    for i in range(n):
        o = ~np.isnan(y[i])
        if not o.any():
            continue
        for j in range(k):
            out[i, j] = multivariate_normal(loc[i, j, o], cov[j][np.ix_(o, o)]).logpdf(y[i, o])
    return out


# ------------------------------------------------------------------ the expert
@pytest.mark.parametrize("cov", COVS)
def test_log_prob_is_the_marginal_of_the_observed_coordinates(cov, strategy):
    x, y, _ = _data(n=120)
    e = _random_expert(cov)
    lp = e.log_prob(x, y).detach().numpy()
    ref = _scipy_log_prob(e._loc(x).detach().numpy(), e.covariance_matrix().detach().numpy(), y.numpy())
    np.testing.assert_allclose(lp, ref, rtol=1e-10, atol=1e-10)
    assert np.all(lp[:2] == 0.0)  # nothing observed: no information


@pytest.mark.parametrize("cov", COVS)
def test_complete_data_through_the_missing_data_path_is_todays_numbers(cov, strategy):
    x, _, y = _data(n=150)
    e = _random_expert(cov)
    w = torch.rand(150, 2, generator=torch.Generator().manual_seed(3), dtype=D)
    loc, lt = e._loc(x), e.scale_tril()
    torch.testing.assert_close(marginal_log_prob(y, loc, lt), e.log_prob(x, y), rtol=1e-12, atol=1e-12)
    got = expected_stats(torch.cat([torch.ones(150, 1, dtype=D), x], 1), y, w, loc.detach(), lt.detach())
    want = e.suff_stats(x, y, w)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-12, atol=1e-12)


def test_no_nan_takes_todays_path_bit_for_bit(monkeypatch):
    x, _, y = _data(n=200)
    moe = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, 3, n_experts=2))
    calls = []
    real = gaussian.marginal_log_prob
    monkeypatch.setattr(gaussian, "marginal_log_prob", lambda *a: calls.append(1) or real(*a))
    fit_em(moe, x, y, init="random", random_state=0, max_iter=5)
    assert calls == []


@pytest.mark.parametrize("cov", BASIC)
def test_missing_data_em_equals_complete_data_em_when_nothing_is_missing(cov, monkeypatch):
    """EM forced through the missing-data statistics on complete data reaches the same numbers (1e-12)."""
    x, _, y = _data(n=250, seed=4)
    a = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, 3, covariance=cov, n_experts=2))
    b = copy.deepcopy(a)
    ra = fit_em(a, x, y, init="random", random_state=0, max_iter=40, tol=0)
    monkeypatch.setattr(gaussian, "has_missing", lambda y: True)  # every call takes the missing-data path
    rb = fit_em(b, x, y, init="random", random_state=0, max_iter=40, tol=0)
    np.testing.assert_allclose(rb.history, ra.history, rtol=1e-12, atol=0)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cov", COVS)
def test_conformance_with_missing_coordinates(cov):
    """check_expert on a stack (a single expert's check compares with forward(x).log_prob(y), NaN by definition)."""
    x, y, _ = _data(n=90, seed=2)
    check_expert(lambda: LinearGaussianExpert(2, 3, covariance=cov, n_experts=2), x, y)


@pytest.mark.parametrize("cov", BASIC)
def test_single_expert_properties_with_missing_coordinates(cov):
    x, y, _ = _data(n=80, seed=5)
    w = torch.rand(80, generator=torch.Generator().manual_seed(1), dtype=D) + 0.1
    e = LinearGaussianExpert(2, 3, covariance=cov)
    # additive statistics at fixed parameters
    whole = e.suff_stats(x, y, w)
    parts = e.suff_stats(x[:30], y[:30], w[:30]) + e.suff_stats(x[30:], y[30:], w[30:])
    for key in whole:
        torch.testing.assert_close(parts[key], whole[key], rtol=1e-12, atol=1e-12)
    # one M-step on the expected statistics is one EM step: never lowers the weighted objective
    objective = lambda: float((w * e.log_prob(x, y)).sum().detach())  # noqa: E731
    before = objective()
    for _ in range(5):
        e.m_step(e.suff_stats(x, y, w))
        after = objective()
        assert after >= before - 1e-12 * abs(before)
        before = after
    # integer weights equal repeated rows
    reps = torch.randint(0, 4, (80,), generator=torch.Generator().manual_seed(2))
    idx = torch.repeat_interleave(torch.arange(80), reps)
    a, b = LinearGaussianExpert(2, 3, covariance=cov), LinearGaussianExpert(2, 3, covariance=cov)
    a.fit_weighted(x, y, reps.to(D))
    b.fit_weighted(x[idx], y[idx])
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-7, atol=1e-9)
    # gradients in the parameters
    e.fit_weighted(x, y, w)
    names = [n for n, _ in e.named_parameters()]
    inputs = tuple(p.detach().clone().requires_grad_(True) for p in e.parameters())

    def fn(*v):
        saved = {n: e._parameters[n] for n in names}
        e._parameters.update(dict(zip(names, v)))
        try:
            return e.log_prob(x[:15], y[:15])
        finally:
            e._parameters.update(saved)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cov", COVS)
def test_gradients_are_finite(cov, strategy):
    x, y, _ = _data(n=60)
    e = _random_expert(cov)
    e.log_prob(x, y).sum().backward()
    for p in e.parameters():
        assert torch.isfinite(p.grad).all()


def test_fit_weighted_reaches_the_maximum_of_the_observed_likelihood():
    x, y, _ = _data(n=200, seed=6)
    e = LinearGaussianExpert(2, 3)
    e.fit_weighted(x, y)
    assert iterate_em(e, x, y) == 1  # already at the fixed point
    base = float(e.log_prob(x, y).sum().detach())
    g = torch.Generator().manual_seed(0)
    saved = [p.detach().clone() for p in e.parameters()]
    for _ in range(8):
        with torch.no_grad():
            for p, s in zip(e.parameters(), saved):
                p.copy_(s + 1e-4 * torch.randn(s.shape, generator=g, dtype=D))
        assert float(e.log_prob(x, y).sum().detach()) <= base + 1e-9 * abs(base)


def test_conformance_row_by_row(monkeypatch):
    monkeypatch.setattr(missing, "MAX_GROUPS", 0)
    x, y, _ = _data(n=90, seed=2)
    check_expert(lambda: LinearGaussianExpert(2, 3, n_experts=2), x, y)


def test_the_two_computations_agree():
    x, y, _ = _data(n=200, seed=12)
    e = _random_expert("full")
    w = torch.rand(200, 2, generator=torch.Generator().manual_seed(0), dtype=D)
    loc, lt = e._loc(x).detach(), e.scale_tril().detach()
    xd = torch.cat([torch.ones(200, 1, dtype=D), x], 1)
    grouped, stats = marginal_log_prob(y, loc, lt), expected_stats(xd, y, w, loc, lt)
    old, missing.MAX_GROUPS = missing.MAX_GROUPS, 0
    try:
        rows, stats_rows = marginal_log_prob(y, loc, lt), expected_stats(xd, y, w, loc, lt)
    finally:
        missing.MAX_GROUPS = old
    torch.testing.assert_close(rows, grouped, rtol=1e-12, atol=1e-12)
    for key in stats:
        torch.testing.assert_close(stats_rows[key], stats[key], rtol=1e-12, atol=1e-12)


def test_patterns_group_rows():
    y = torch.tensor([[1.0, NAN, 2.0], [NAN, NAN, NAN], [3.0, NAN, 4.0], [1.0, 2.0, 3.0]], dtype=D)
    pats, order = missing_patterns(y)
    got = sorted((p.rows.tolist(), p.observed.tolist(), p.missing.tolist()) for p in pats)
    assert got == [([0, 2], [0, 2], [1]), ([1], [], [0, 1, 2]), ([3], [0, 1, 2], [])]
    assert sorted(order.tolist()) == [0, 1, 2, 3]


# ------------------------------------------------------------------- mixtures and EM
@pytest.mark.parametrize("cov", BASIC)
def test_em_log_likelihood_equals_the_direct_marginal_likelihood(cov, strategy):
    x, y, _ = _data(n=300, seed=7)
    w = torch.rand(300, generator=torch.Generator().manual_seed(8), dtype=D) + 0.5
    moe = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, 3, covariance=cov, n_experts=2))
    res = fit_em(moe, x, y, w, init="kmeans", random_state=0, max_iter=30)
    with torch.no_grad():
        log_gate = moe.log_gate(x).numpy()
        loc = moe.experts._loc(x).numpy()
        sigma = moe.experts.covariance_matrix().numpy()
    comp = _scipy_log_prob(loc, sigma, y.numpy())
    direct = float((w.numpy() * np.logaddexp.reduce(log_gate + comp, axis=1)).sum())
    assert math.isclose(res.log_likelihood, direct, rel_tol=1e-10, abs_tol=1e-10)
    assert math.isclose(float((w * moe.log_prob(x, y)).sum().detach()), direct, rel_tol=1e-10, abs_tol=1e-10)


@pytest.mark.parametrize("init", ["random", "kmeans", "auto"])
def test_em_is_monotone_with_30_percent_missing(init):
    x, y, _ = _data(n=400, seed=9, frac=0.3)
    assert 0.25 < float(torch.isnan(y).double().mean()) < 0.35
    y_before = y.clone()
    moe = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, 3, n_experts=2))
    res = fit_em(moe, x, y, init=init, random_state=1, max_iter=100)
    h = res.history
    assert all(b >= a - 1e-12 * abs(a) for a, b in zip(h, h[1:]))
    assert math.isfinite(res.log_likelihood)
    assert torch.equal(torch.isnan(y), torch.isnan(y_before)) and torch.equal(y.nan_to_num(), y_before.nan_to_num())


@pytest.mark.parametrize("options", [{"covariance": "tied"}, {"shared": [0]}, {"covariance": "diag", "shared": [1]}])
def test_em_is_monotone_with_tied_noise_and_shared_coefficients(options):
    try:
        expert = LinearGaussianExpert(2, 3, n_experts=2, **options)
    except (TypeError, ValueError) as err:  # pragma: no cover - structures not on this branch
        pytest.skip(f"structure not available: {err}")
    x, y, _ = _data(n=300, seed=11)
    h = fit_em(MixtureOfExperts(SoftmaxGate(2, 2), expert), x, y, init="kmeans", random_state=0, max_iter=60).history
    assert all(b >= a - 1e-12 * abs(a) for a, b in zip(h, h[1:]))


def test_race_and_hierarchy_accept_missing_targets():
    x, y, _ = _data(n=300, seed=10)
    moe = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, 3, n_experts=2))
    race = small_em(moe, x, y, random_state=0, max_iter=20)
    assert race.history and all(math.isfinite(v) for v in race.history)
    inner = [MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, 3, n_experts=2)) for _ in range(2)]
    tree = MixtureOfExperts(SoftmaxGate(2, 2), inner)
    assert tree.accepts_missing_y
    h = fit_em(tree, x, y, init="random", random_state=0, max_iter=30).history
    assert all(b >= a - 1e-12 * abs(a) for a, b in zip(h, h[1:]))


# ------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "make, y_shape",
    [
        (lambda: PoissonExpert(1, n_experts=2), (40,)),
        (lambda: StudentTExpert(1, n_experts=2), (40,)),
        (lambda: LinearGaussianExpert(1, n_experts=2), (40,)),
    ],
)
def test_families_that_cannot_marginalise_refuse_nan(make, y_shape):
    x = torch.randn(40, 1, dtype=D)
    y = torch.rand(*y_shape, dtype=D).round()
    y[3] = NAN
    moe = MixtureOfExperts(SoftmaxGate(1, 2), make())
    with pytest.raises(ValueError, match="cannot marginalise missing targets"):
        fit_em(moe, x, y)
    with pytest.raises(ValueError, match="cannot marginalise missing targets"):
        small_em(moe, x, y)


def test_a_column_never_observed_is_refused():
    x = torch.randn(40, 1, dtype=D)
    y = torch.randn(40, 2, dtype=D)
    y[:, 1] = NAN
    with pytest.raises(ValueError, match="y column 1 is missing"):
        fit_em(MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, 2, n_experts=2)), x, y)


def test_infinite_targets_stay_refused():
    x = torch.randn(40, 1, dtype=D)
    y = torch.randn(40, 2, dtype=D)
    y[0, 0], y[1, 1] = NAN, math.inf
    moe = MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, 2, n_experts=2))
    with pytest.raises(ValueError, match="infinite"):
        fit_em(moe, x, y)
    with incomplete_targets(), pytest.raises(ValueError, match="infinite"):  # as the estimators call it
        fit_em(moe, x, y)


def test_observed_information_is_finite_with_missing_coordinates():
    """Second derivatives of the marginal log-likelihood (standard errors) stay finite and symmetric."""
    x, y, _ = _data(n=300, seed=3)
    moe = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, 3, n_experts=2))
    fit_em(moe, x, y, init="kmeans", random_state=0, max_iter=200)
    info = observed_information(moe, x, y).information
    assert torch.isfinite(info).all()
    torch.testing.assert_close(info, info.T, rtol=1e-8, atol=1e-8)
