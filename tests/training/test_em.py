"""Mixtures, predictive distributions and EM: properties and known optima."""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression

from moekit import (
    ConstantGate,
    LinearGaussianExpert,
    MixtureOfExperts,
    MLPGate,
    PoissonExpert,
    SoftmaxGate,
    StudentTExpert,
    fit_em,
    fit_gradient,
)
from moekit.datasets import load_npreg, load_tonedata
from moekit.training.init import initial_responsibilities

D = torch.float64


def _two_lines(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g, dtype=D) * 2 - 1
    z = torch.rand(n, generator=g, dtype=D) < torch.sigmoid(4 * x[:, 0])
    y = torch.where(z, 2 * x[:, 0] + 1, -x[:, 0]) + 0.1 * torch.randn(n, generator=g, dtype=D)
    return x, y


def _moe(gate="softmax", k=2, d=1, dy=None, cov="full"):
    gates = {
        "softmax": lambda: SoftmaxGate(d, k),
        "constant": lambda: ConstantGate(k),
        "mlp": lambda: MLPGate(d, k, (8,), generator=torch.Generator().manual_seed(0)),
    }
    return MixtureOfExperts(gates[gate](), LinearGaussianExpert(d, dy, cov, n_experts=k))


def _nondecreasing(h, rel=1e-10):
    h = np.asarray(h)
    return np.all(np.diff(h) >= -rel * (1 + np.abs(h[:-1])))


# ------------------------------------------------------------ distribution
def test_predictive_moments_match_monte_carlo():
    x, y = _two_lines()
    moe = _moe()
    fit_em(moe, x, y, random_state=0)
    xs = x[:5]
    dist = moe(xs)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        s = dist.sample((200_000,))
    assert s.shape == (200_000, 5)
    torch.testing.assert_close(s.mean(0), dist.mean, atol=0.01, rtol=0)
    torch.testing.assert_close(s.var(0), dist.variance, atol=0.02, rtol=0.02)
    q = dist.quantiles([0.1, 0.5, 0.9])
    emp = torch.quantile(s, torch.tensor([0.1, 0.5, 0.9], dtype=D), dim=0).T
    torch.testing.assert_close(q, emp, atol=0.02, rtol=0)
    torch.testing.assert_close(dist.cdf(q[:, 1]), torch.full((5,), 0.5, dtype=D), atol=1e-9, rtol=0)


def test_vector_mixture_law_of_total_covariance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 1, generator=g, dtype=D)
    y = torch.randn(300, 2, generator=g, dtype=D) + x
    moe = _moe(dy=2)
    fit_em(moe, x, y, random_state=0, max_iter=20)
    dist = moe(x[:3])
    w = dist.weights
    mu = dist.component_means
    cov = dist.component_covariances
    m = (w[..., None] * mu).sum(1)
    want = (w[..., None, None] * (cov + mu[..., :, None] * mu[..., None, :])).sum(1) - m[:, :, None] * m[:, None, :]
    torch.testing.assert_close(dist.covariance_matrix, want)
    torch.testing.assert_close(dist.log_prob(y[:3]), moe.log_prob(x[:3], y[:3]))


def test_moe_log_prob_and_responsibilities_by_hand():
    x, y = _two_lines(50)
    moe = _moe()
    fit_em(moe, x, y, random_state=0, max_iter=5)
    lg = moe.log_gate(x)
    lp = torch.stack([moe.experts.select(k).log_prob(x, y) for k in range(2)], 1)
    torch.testing.assert_close(moe.log_prob(x, y), torch.logsumexp(lg + lp, 1))
    r = moe.log_responsibilities(x, y).exp()
    torch.testing.assert_close(r.sum(1), torch.ones(50, dtype=D))


# -------------------------------------------------------------------- EM
@pytest.mark.parametrize("gate", ["softmax", "constant", "mlp"])
@pytest.mark.parametrize("dy,cov", [(None, "full"), (2, "full"), (2, "diag"), (2, "spherical")])
def test_em_never_decreases(gate, dy, cov):
    x, y = _two_lines()
    if dy is not None:
        y = torch.stack([y, 0.5 * y + 0.1 * torch.randn(len(y), generator=torch.Generator().manual_seed(9), dtype=D)], 1)
    moe = _moe(gate, dy=dy, cov=cov)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_em(moe, x, y, random_state=1, max_iter=60)
    assert _nondecreasing(res.history), np.diff(res.history).min()
    assert res.history[-1] > res.history[0]


def test_em_with_sample_weights_and_mixed_families_never_decreases():
    x, y = _two_lines()
    yc = torch.poisson(torch.exp(0.5 + x[:, 0]), generator=torch.Generator().manual_seed(0))
    w = torch.rand(len(x), dtype=D, generator=torch.Generator().manual_seed(1)) + 0.1
    moe = MixtureOfExperts(SoftmaxGate(1, 2), [LinearGaussianExpert(1), StudentTExpert(1)])
    res = fit_em(moe, x, y, w, random_state=0, max_iter=40)
    assert _nondecreasing(res.history)
    moe = MixtureOfExperts(SoftmaxGate(1, 2), [PoissonExpert(1), PoissonExpert(1)])
    res = fit_em(moe, x, yc, w, random_state=0, max_iter=40)
    assert _nondecreasing(res.history)


def test_k1_reduces_to_least_squares():
    x, y = _two_lines()
    moe = MixtureOfExperts(ConstantGate(1), LinearGaussianExpert(1, n_experts=1))
    res = fit_em(moe, x, y)
    ref = LinearRegression().fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(moe.experts.coef[0, :, 0].detach().numpy(), [ref.intercept_, ref.coef_[0]], atol=1e-10)
    assert res.converged


def test_stacked_and_list_em_give_same_numbers():
    x, y = _two_lines()
    a = _moe()
    b = MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_experts=2).unstack())
    ra = fit_em(a, x, y, random_state=4, max_iter=30)
    rb = fit_em(b, x, y, random_state=4, max_iter=30)
    np.testing.assert_allclose(ra.history, rb.history, rtol=1e-10)
    for k in range(2):
        torch.testing.assert_close(a.experts.select(k).coef, b.experts[k].coef)


def test_moe_statistics_additive_and_streaming_step_matches_in_memory():
    x, y = _two_lines()
    moe = _moe("constant")
    fit_em(moe, x, y, random_state=0, max_iter=3)
    s = moe.suff_stats(x, y)
    s2 = moe.suff_stats(x[:150], y[:150]) + moe.suff_stats(x[150:], y[150:])
    for a, b in zip(s.tensors(), s2.tensors()):
        torch.testing.assert_close(a, b)
    # exact components: one M-step from summed batch statistics == one in-memory EM step
    other = _moe("constant")
    other.load_state_dict(moe.state_dict())
    moe.m_step(s2)
    other.em_step(x, y)
    for p, q in zip(moe.parameters(), other.parameters()):
        torch.testing.assert_close(p, q)


def test_n_init_keeps_best_and_history_is_of_best():
    x, y = _two_lines()
    res = fit_em(_moe(), x, y, n_init=4, random_state=0)
    assert len(res.init_mean_log_likelihoods) == 4
    assert res.mean_log_likelihood == pytest.approx(max(res.init_mean_log_likelihoods))
    assert res.history[-1] == pytest.approx(res.mean_log_likelihood)
    # one meaning per name: log_likelihood is the total, history and mean_* the mean per unit weight
    assert res.total_weight == res.train_weight == len(y)
    assert res.log_likelihood == pytest.approx(float(res.model.log_prob(x, y).sum()), rel=1e-12)
    with pytest.warns(DeprecationWarning, match="init_mean_log_likelihoods"):
        assert res.init_log_likelihoods == res.init_mean_log_likelihoods


def test_vanishing_expert_is_pruned_with_warning_not_nan():
    x, y = _two_lines()
    moe = MixtureOfExperts(ConstantGate(3), LinearGaussianExpert(1, n_experts=3))
    r = torch.zeros(len(x), 3, dtype=D)
    r[:, 0] = 0.5
    r[:, 1] = 0.5
    r[0, 2] = 1e-9  # expert 2 starts with (almost) nothing
    with pytest.warns(RuntimeWarning, match=r"pruned expert\(s\) \[2\]"):
        res = fit_em(moe, x, y, init=r.numpy() + 1e-12, max_iter=50)
    assert res.pruned == [2] and moe.n_experts == 2
    assert all(math.isfinite(v) for v in res.history)


def test_single_convergence_warning_with_remedy():
    x, y = _two_lines()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fit_em(_moe(), x, y, max_iter=2, n_init=3, random_state=0)
    conv = [w for w in rec if issubclass(w.category, ConvergenceWarning)]
    assert len(conv) == 1 and "Increase max_iter" in str(conv[0].message)


def test_fit_em_bad_input():
    x, y = _two_lines(30)
    x0 = x.clone()
    with pytest.raises(ValueError, match="x has 30 rows but y has 29"):
        fit_em(_moe(), x, y[:29])
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x contains 1 NaN or infinite"):
        fit_em(_moe(), bad, y)
    with pytest.raises(ValueError, match="x must be 2-D"):
        fit_em(_moe(), x[:, 0], y)
    with pytest.raises(ValueError, match="sample_weight must be non-negative"):
        fit_em(_moe(), x, y, -torch.ones(30, dtype=D))
    with pytest.raises(TypeError, match="x must be numeric"):
        fit_em(_moe(), np.array([["a"]] * 30), y)
    with pytest.raises(ValueError, match="init must be"):
        fit_em(_moe(), x, y, init="spectral")
    assert torch.equal(x, x0)


def test_gradient_training_lbfgs_and_adam():
    x, y = _two_lines(600)
    em = _moe()
    r_em = fit_em(em, x, y, random_state=0)
    lb = _moe()
    r_lb = fit_gradient(lb, x, y, optimizer="lbfgs", init="random", random_state=0, early_stopping=False, max_epochs=50)
    assert r_lb.mean_log_likelihood == pytest.approx(r_em.mean_log_likelihood, abs=1e-4)
    ad = _moe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        r_ad = fit_gradient(ad, x, y, init="random", random_state=0, max_epochs=300, learning_rate=0.05, batch_size=64)
    assert r_ad.validation_history is not None and len(r_ad.history) >= 2
    assert r_ad.mean_log_likelihood > r_em.mean_log_likelihood - 0.05


def test_generalised_em_with_mlp_gate_improves_on_linear_gate():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(600, 1, generator=g, dtype=D) * 2 - 1
    inside = x[:, 0].abs() < 0.5  # the experts swap twice: not a linear gate
    y = torch.where(inside, 2.0, -2.0) + 0.2 * torch.randn(600, generator=g, dtype=D)
    lin = fit_em(_moe("softmax"), x, y, random_state=0, n_init=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = fit_em(_moe("mlp"), x, y, random_state=0, n_init=3, max_iter=300)
    assert _nondecreasing(mlp.history)
    assert mlp.mean_log_likelihood > lin.mean_log_likelihood + 0.2


def test_nested_mixture_is_an_expert():
    x, y = _two_lines()
    inner = MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_experts=2))
    outer = MixtureOfExperts(SoftmaxGate(1, 2), [inner, LinearGaussianExpert(1)])
    res = fit_em(outer, x, y, random_state=0, max_iter=50)
    assert _nondecreasing(res.history)
    d = outer(x[:4])
    assert d.mean.shape == (4,) and d.sample((3,)).shape == (3, 4)


# ------------------------------------------------------- known optima
@pytest.mark.parametrize("gate,classic", [("softmax", 142.848), ("constant", 141.198)])
def test_tonedata_known_optima(gate, classic):
    d = load_tonedata()
    x, y = torch.tensor(d.data), torch.tensor(d.target)
    totals = []
    for seed in range(10):
        moe = _moe(gate)
        res = fit_em(moe, x, y, n_init=5, random_state=seed)
        totals.append(res.log_likelihood)
    best_known = {"softmax": 145.6503, "constant": 145.4168}[gate]
    assert max(totals) <= best_known + 1e-3  # never above the global maximum
    assert sum(t >= classic - 1e-3 for t in totals) >= 9


@pytest.mark.parametrize("gate,optimum", [("softmax", -642.0639), ("constant", -642.5320)])
def test_npreg_global_maxima(gate, optimum):
    d = load_npreg()
    x = torch.tensor(np.column_stack([d.data, d.data**2]))
    y = torch.tensor(d.target)
    gates = {"softmax": SoftmaxGate(1, 2), "constant": ConstantGate(2)}
    moe = MixtureOfExperts(gates[gate], LinearGaussianExpert(2, n_experts=2), gate_features=[0])
    res = fit_em(moe, x, y, n_init=5, random_state=0, tol=1e-10, max_iter=2000)
    assert res.log_likelihood == pytest.approx(optimum, abs=1e-3)
    # the recovered components: slope 5 through 0, and 15 + 10x - x^2
    coefs = sorted(moe.experts.coef[:, :, 0].tolist(), key=lambda c: c[0])
    np.testing.assert_allclose(coefs[0], [0, 5, 0], atol=1.5)
    np.testing.assert_allclose(coefs[1], [15, 10, -1], atol=2.5)


def test_tonedata_single_regression_optimum():
    d = load_tonedata()
    moe = MixtureOfExperts(ConstantGate(1), LinearGaussianExpert(1, n_experts=1))
    res = fit_em(moe, torch.tensor(d.data), torch.tensor(d.target))
    assert res.log_likelihood == pytest.approx(9.3821, abs=1e-3)


def test_fit_em_callable_init_runs_once_per_start_with_its_seed():
    d = load_tonedata()
    x = torch.tensor(d.data, dtype=torch.float64)
    y = torch.tensor(d.target, dtype=torch.float64)
    seen = []

    def start(m, x_, y_, w_, seed):  # the same start as init="kmeans" draws for this seed
        seen.append(seed)
        r = initial_responsibilities(x_, y_, m.n_experts, "kmeans", seed, w_)
        m.init_from_responsibilities(x_, y_, w_[:, None] * r)

    def moe():
        return MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_experts=2))

    a = fit_em(moe(), x, y, init=start, n_init=3, random_state=4)
    b = fit_em(moe(), x, y, init="kmeans", n_init=3, random_state=4)
    assert seen == list(np.random.default_rng(4).integers(0, 2**31 - 1, size=3))
    assert a.init_mean_log_likelihoods == b.init_mean_log_likelihoods
