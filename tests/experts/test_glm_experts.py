"""Property tests of the GLM experts: LogisticExpert, SoftmaxExpert, PoissonExpert."""

from __future__ import annotations

import doctest
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, PoissonRegressor
from torch import nn
from torch.distributions import Bernoulli, Categorical

import moekit._linalg as _linalg
import moekit.experts.logistic as logistic_mod
import moekit.experts.poisson as poisson_mod
from moekit import ConstantGate, MixtureOfExperts, SoftmaxGate, fit_em
from moekit.distributions import Poisson
from moekit.experts.logistic import LogisticExpert, SoftmaxExpert
from moekit.experts.poisson import PoissonExpert

DT = torch.float64
N_CLASSES = 3


# --------------------------------------------------------------------- data
def _gen(seed):
    return torch.Generator().manual_seed(seed)


def data_binary(n=400, d=2, seed=0):
    g = _gen(seed)
    x = torch.randn(n, d, generator=g, dtype=DT)
    beta = torch.linspace(-1.0, 1.5, d, dtype=DT)
    y = torch.bernoulli(torch.sigmoid(0.3 + x @ beta), generator=g)
    return x, y.long()


def data_categorical(n=400, d=2, seed=0):
    g = _gen(seed)
    x = torch.randn(n, d, generator=g, dtype=DT)
    b = torch.randn(N_CLASSES, d + 1, generator=g, dtype=DT)
    logits = torch.cat([torch.ones(n, 1, dtype=DT), x], 1) @ b.T
    y = torch.multinomial(logits.softmax(1), 1, generator=g)[:, 0]
    return x, y


def data_count(n=400, d=2, seed=0):
    g = _gen(seed)
    x = torch.rand(n, d, generator=g, dtype=DT) * 2 - 1
    beta = torch.linspace(-0.5, 1.0, d, dtype=DT)
    y = torch.poisson(torch.exp(0.7 + x @ beta), generator=g)
    return x, y


FAMILIES = {
    "logistic": (lambda d, k=None, **kw: LogisticExpert(d, n_experts=k, **kw), data_binary),
    "softmax": (lambda d, k=None, **kw: SoftmaxExpert(d, N_CLASSES, n_experts=k, **kw), data_categorical),
    "poisson": (lambda d, k=None, **kw: PoissonExpert(d, n_experts=k, **kw), data_count),
}
family = pytest.mark.parametrize("fam", list(FAMILIES))


def make(fam, d, k=None, **kw):
    return FAMILIES[fam][0](d, k, **kw)


def data(fam, **kw):
    return FAMILIES[fam][1](**kw)


def randomise(expert, seed=1, scale=0.5):
    with torch.no_grad():
        expert.coef.copy_(scale * torch.randn(expert.coef.shape, generator=_gen(seed), dtype=DT))
    return expert


def canonical(expert) -> torch.Tensor:
    """Identifiable coefficients: softmax rows relative to the reference class."""
    c = expert.coef.detach()
    if isinstance(expert, SoftmaxExpert):
        return c - c[:, -1:, :]
    return c


def weights(n, k=None, seed=3):
    shape = (n,) if k is None else (n, k)
    return torch.rand(shape, generator=_gen(seed), dtype=DT) * 2


def fit(expert, x, y, w=None, steps=60):
    expert.max_m_steps = steps
    return expert.fit_weighted(x, y, w)


def weighted_objective(expert, coef, x, y, w):
    """sum w log p - penalty as a differentiable function of the (canonical) coefficients."""
    wrapper = _LogProb(expert)
    lp = torch.func.functional_call(wrapper, {"e.coef": coef}, (x, y))
    obj = (w * lp).sum()
    if expert.l2 > 0:
        c = coef - coef[:, -1:, :] if isinstance(expert, SoftmaxExpert) else coef
        c = c[:, :-1, 1:] if isinstance(expert, SoftmaxExpert) else c[:, 1:]
        obj = obj - 0.5 * expert.l2 * (c**2).sum()
    return obj


class _LogProb(nn.Module):
    def __init__(self, e):
        super().__init__()
        self.e = e

    def forward(self, x, y):
        return self.e.log_prob(x, y)


# ------------------------------------------------ K = 1: scikit-learn fits
def test_logistic_matches_sklearn_weighted():
    x, y = data_binary(n=500, d=3)
    w = weights(500)
    e = fit(LogisticExpert(3), x, y, w)
    sk = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=1000)
    sk.fit(x.numpy(), y.numpy(), sample_weight=w.numpy())
    ref = np.concatenate([sk.intercept_, sk.coef_[0]])
    np.testing.assert_allclose(e.coef[0].detach().numpy(), ref, atol=1e-6)


def test_logistic_l2_matches_sklearn_C():
    x, y = data_binary(n=300, d=3, seed=5)
    w = weights(300, seed=6)
    l2 = 2.5
    e = fit(LogisticExpert(3, l2=l2), x, y, w)
    sk = LogisticRegression(C=1.0 / l2, solver="newton-cholesky", tol=1e-12, max_iter=1000)
    sk.fit(x.numpy(), y.numpy(), sample_weight=w.numpy())
    ref = np.concatenate([sk.intercept_, sk.coef_[0]])
    np.testing.assert_allclose(e.coef[0].detach().numpy(), ref, atol=1e-6)


def test_softmax_matches_sklearn_multinomial():
    x, y = data_categorical(n=600, d=2)
    w = weights(600)
    e = fit(SoftmaxExpert(2, N_CLASSES), x, y, w)
    sk = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=1000)
    sk.fit(x.numpy(), y.numpy(), sample_weight=w.numpy())
    ref = np.concatenate([sk.intercept_[:, None], sk.coef_], axis=1)
    ref = ref - ref[-1]  # sklearn's unpenalised multinomial is identified up to a shift
    np.testing.assert_allclose(canonical(e)[0].numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(e(x).probs.detach().numpy(), sk.predict_proba(x.numpy()), atol=1e-8)


def test_poisson_matches_sklearn_weighted():
    x, y = data_count(n=500, d=3)
    w = weights(500)
    e = fit(PoissonExpert(3), x, y, w)
    sk = PoissonRegressor(alpha=0.0, solver="newton-cholesky", tol=1e-12, max_iter=1000)
    sk.fit(x.numpy(), y.numpy(), sample_weight=w.numpy())
    ref = np.concatenate([[sk.intercept_], sk.coef_])
    np.testing.assert_allclose(e.coef[0].detach().numpy(), ref, atol=1e-6)


def test_poisson_l2_matches_sklearn_alpha():
    x, y = data_count(n=300, d=3, seed=2)
    w = weights(300, seed=4)
    alpha = 0.05
    e = fit(PoissonExpert(3, l2=alpha * float(w.sum())), x, y, w)
    sk = PoissonRegressor(alpha=alpha, solver="newton-cholesky", tol=1e-12, max_iter=1000)
    sk.fit(x.numpy(), y.numpy(), sample_weight=w.numpy())
    ref = np.concatenate([[sk.intercept_], sk.coef_])
    np.testing.assert_allclose(e.coef[0].detach().numpy(), ref, atol=1e-6)


# ------------------------------------- Newton M-step == L-BFGS optimum
@family
@pytest.mark.parametrize("l2", [0.0, 3.0])
def test_newton_equals_lbfgs_optimum(fam, l2):
    x, y = data(fam, n=300, d=2, seed=11)
    w = weights(300, seed=12)
    e = fit(make(fam, 2, l2=l2), x, y, w)
    shape = e.coef.shape
    softmax = isinstance(e, SoftmaxExpert)
    total = float(w.sum())

    def to_coef(v):
        c = torch.as_tensor(v, dtype=DT)
        if softmax:  # free rows only; reference row fixed at zero
            c = torch.cat([c.reshape(1, shape[1] - 1, shape[2]), torch.zeros(1, 1, shape[2], dtype=DT)], 1)
        return c.reshape(shape)

    def fun(v):
        c = to_coef(v).requires_grad_(True)
        f = -weighted_objective(e, c, x, y, w) / total
        (gr,) = torch.autograd.grad(f, c)
        gr = gr[:, :-1] if softmax else gr
        return float(f.detach()), gr.reshape(-1).numpy()

    n_free = e.n_parameters()
    res = minimize(fun, np.zeros(n_free), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-13, "ftol": 0.0, "maxiter": 20000, "maxcor": 30})
    np.testing.assert_allclose(canonical(e).numpy(), to_coef(res.x).numpy(), atol=1e-6)


@family
@pytest.mark.parametrize("k", [None, 3])
@pytest.mark.parametrize("l2", [0.0, 0.7])
def test_statistics_are_exact_gradient_and_hessian(fam, k, l2):
    """grad and info are the autograd gradient and minus the Hessian (block-diagonal over experts)."""
    x, y = data(fam, n=60, d=2, seed=7)
    e = randomise(make(fam, 2, k, l2=l2), seed=8)
    w = weights(60, k, seed=9)
    s = e.suff_stats(x, y, w)
    c0 = canonical(e).clone()
    kk = c0.shape[0]
    free = (lambda c: c[:, :-1]) if fam == "softmax" else (lambda c: c)
    obj = lambda c: weighted_objective(e, c, x, y, w)  # noqa: E731
    c = c0.clone().requires_grad_(True)
    f = obj(c)
    (gr,) = torch.autograd.grad(f, c)
    np.testing.assert_allclose(float(s["objective"]) - float(e.penalty()), float(f.detach()), rtol=1e-12)
    grad = s["grad"] - (e.l2 * e._penalty_mask() * e._free(e.coef.detach()))
    np.testing.assert_allclose(grad.numpy(), free(gr).reshape(kk, -1).numpy(), rtol=1e-9, atol=1e-9)
    h = torch.autograd.functional.hessian(obj, c0)  # (coef shape) x (coef shape)
    m = e._n_free()
    h = h.reshape(kk, -1, kk, c0[0].numel())
    if fam == "softmax":
        h = h.reshape(kk, N_CLASSES, -1, kk, N_CLASSES, c0.shape[-1])[:, :-1, :, :, :-1, :].reshape(kk, m, kk, m)
    for a in range(kk):
        for b in range(kk):
            want = -h[a, :, b, :]
            got = s["info"][a] + torch.diag(e.l2 * e._penalty_mask()) if a == b else torch.zeros(m, m, dtype=DT)
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9, atol=1e-9)


@family
def test_m_step_is_one_newton_step(fam):
    x, y = data(fam, n=80, d=2, seed=3)
    e = randomise(make(fam, 2, 2), seed=4, scale=0.1)
    w = weights(80, 2)
    s = e.suff_stats(x, y, w)
    before = e._free(e.coef.detach()).clone()
    e.m_step(s)
    want = before + torch.linalg.solve(s["info"], s["grad"][..., None])[..., 0]
    np.testing.assert_allclose(e._free(e.coef.detach()).numpy(), want.numpy(), rtol=1e-8, atol=1e-10)


# --------------------------------------------------------- additivity
@family
@pytest.mark.parametrize("k", [None, 3])
def test_statistics_are_additive(fam, k):
    x, y = data(fam, n=101, d=2, seed=1)
    e = randomise(make(fam, 2, k), seed=2)
    w = weights(101, k)
    whole = e.suff_stats(x, y, w)
    a, b = e.suff_stats(x[:40], y[:40], w[:40]), e.suff_stats(x[40:], y[40:], w[40:])
    summed = a + b
    assert set(whole) == set(summed) == {"objective", "grad", "info", "sw"}
    for key in whole:
        np.testing.assert_allclose(summed[key].numpy(), whole[key].numpy(), rtol=1e-11, atol=1e-11)


@family
def test_chunked_statistics_equal_unchunked(fam, monkeypatch):
    x, y = data(fam, n=97, d=2, seed=4)
    e = randomise(make(fam, 2, 2), seed=5)
    w = weights(97, 2)
    whole = e.suff_stats(x, y, w)
    monkeypatch.setattr(_linalg, "CHUNK_MIN_ROWS", 1)
    monkeypatch.setattr(_linalg, "CHUNK_MAX_ROWS", 10)
    chunked = e.suff_stats(x, y, w)
    for key in whole:
        np.testing.assert_allclose(chunked[key].numpy(), whole[key].numpy(), rtol=1e-11, atol=1e-11)


# ---------------------------------------- integer weights == duplicates
@family
def test_integer_weights_equal_duplicated_rows(fam):
    x, y = data(fam, n=150, d=2, seed=8)
    reps = torch.randint(0, 4, (150,), generator=_gen(9))
    a = fit(make(fam, 2), x, y, reps.to(DT))
    b = fit(make(fam, 2), x.repeat_interleave(reps, 0), y.repeat_interleave(reps, 0))
    np.testing.assert_allclose(canonical(a).numpy(), canonical(b).numpy(), atol=1e-9)


# ------------------------------------------------------- stacked vs list
@family
def test_stacked_equals_list_of_singles(fam):
    x, y = data(fam, n=200, d=2, seed=13)
    stacked = randomise(make(fam, 2, 3), seed=14)
    singles = stacked.unstack()
    assert len(singles) == 3 and all(not s.stacked for s in singles)
    lp = stacked.log_prob(x, y)
    assert lp.shape == (200, 3)
    for k, s in enumerate(singles):
        assert s.log_prob(x, y).shape == (200,)
        np.testing.assert_allclose(s.log_prob(x, y).detach().numpy(), lp[:, k].detach().numpy(), rtol=1e-13)
    w = weights(200, 3, seed=15)
    fit(stacked, x, y, w)
    for k, s in enumerate(singles):
        fit(s, x, y, w[:, k])
        np.testing.assert_allclose(canonical(s)[0].numpy(), canonical(stacked)[k].numpy(), atol=1e-8)
    restacked = type(stacked).stack(singles)
    np.testing.assert_allclose(restacked.log_prob(x, y).detach().numpy(), stacked.log_prob(x, y).detach().numpy(), atol=1e-9)


# ------------------------------------------------------ EM monotonicity
def _two_expert_data(fam, n=500, seed=21):
    g = _gen(seed)
    x = torch.randn(n, 1, generator=g, dtype=DT)
    z = torch.bernoulli(torch.sigmoid(3 * x[:, 0]), generator=g).bool()
    if fam == "logistic":
        eta = torch.where(z, 2 + 3 * x[:, 0], -1 - 2 * x[:, 0])
        y = torch.bernoulli(torch.sigmoid(eta), generator=g).long()
    elif fam == "softmax":
        l0 = torch.stack([2 * x[:, 0], -x[:, 0], torch.zeros(n, dtype=DT)], 1)
        l1 = torch.stack([-x[:, 0], torch.ones(n, dtype=DT), 2 * x[:, 0]], 1)
        y = torch.multinomial(torch.where(z[:, None], l0, l1).softmax(1), 1, generator=g)[:, 0]
    else:
        y = torch.poisson(torch.where(z, torch.exp(1 + x[:, 0]), torch.exp(2 - 0.5 * x[:, 0])), generator=g)
    return x, y


@family
@pytest.mark.parametrize("gate", ["softmax", "constant"])
def test_em_never_lowers_loglik(fam, gate):
    x, y = _two_expert_data(fam)
    g = SoftmaxGate(1, 2) if gate == "softmax" else ConstantGate(2)
    moe = MixtureOfExperts(g, make(fam, 1, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_em(moe, x, y, max_iter=40, tol=1e-10, random_state=0)
    h = np.asarray(res.history)
    assert np.all(np.isfinite(h))
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h[:-1])), np.diff(h).min()
    assert h[-1] > h[0]
    assert np.isfinite(moe.log_prob(x, y).detach().numpy()).all()


@family
def test_em_with_list_of_experts_never_lowers_loglik(fam):
    x, y = _two_expert_data(fam, n=300, seed=5)
    moe = MixtureOfExperts(SoftmaxGate(1, 2), make(fam, 1, 2).unstack())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_em(moe, x, y, max_iter=20, random_state=1, sample_weight=weights(300, seed=2))
    h = np.asarray(res.history)
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h[:-1]))


@family
def test_streaming_statistics_through_the_mixture(fam):
    """MixtureOfExperts.suff_stats / m_step work with these experts (batches summed)."""
    x, y = _two_expert_data(fam, n=200)
    moe = MixtureOfExperts(SoftmaxGate(1, 2), randomise(make(fam, 1, 2), seed=3, scale=0.3))
    s = moe.suff_stats(x[:120], y[:120]) + moe.suff_stats(x[120:], y[120:])
    whole = moe.suff_stats(x, y)
    for a, b in zip(s.tensors(), whole.tensors()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-10)
    moe.m_step(s)
    assert all(torch.isfinite(p).all() for p in moe.parameters())


# ------------------------------------------------------------ gradcheck
@family
@pytest.mark.parametrize("k", [None, 2])
def test_gradcheck_log_prob(fam, k):
    x, y = data(fam, n=12, d=2, seed=6)
    e = randomise(make(fam, 2, k), seed=7, scale=0.3)
    wrapper = _LogProb(e)
    c = e.coef.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: torch.func.functional_call(wrapper, {"e.coef": c}, (x, y)), (c,))


# ------------------------------------------------------- extreme inputs
def _finite(e, x, y):
    assert all(torch.isfinite(p).all() for p in e.parameters())
    lp = e.log_prob(x, y)
    assert not torch.isnan(lp).any()
    return lp


@family
def test_large_inputs_no_nan(fam):
    x, y = data(fam, n=200, d=2, seed=3)
    xb = x * 1e6
    e = fit(make(fam, 2, 2), xb, y, weights(200, 2))
    lp = _finite(e, xb, y)
    assert torch.isfinite(lp).all()
    e2 = randomise(make(fam, 2, 2), seed=1, scale=100.0)
    assert not torch.isnan(e2.log_prob(xb, y)).any()
    assert not torch.isnan(e2.suff_stats(xb, y, weights(200, 2))["info"]).any()


@pytest.mark.parametrize("fam", ["logistic", "softmax"])
def test_separable_data_no_nan(fam):
    g = _gen(0)
    x = torch.randn(100, 1, generator=g, dtype=DT)
    y = (x[:, 0] > 0).long() if fam == "logistic" else torch.bucketize(x[:, 0], torch.tensor([-0.5, 0.5], dtype=DT))
    e = fit(make(fam, 1, 2), x, y, weights(100, 2), steps=200)
    lp = _finite(e, x, y)
    assert torch.isfinite(lp).all()
    assert lp.mean() > -1e-2  # (almost) perfect separation reached
    moe = MixtureOfExperts(SoftmaxGate(1, 2), make(fam, 1, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit_em(moe, x, y, max_iter=15, random_state=0)
    assert np.all(np.isfinite(res.history))


def test_poisson_all_zero_counts_and_huge_counts_no_nan():
    x, _ = data_count(n=100, d=1)
    zeros = torch.zeros(100, dtype=DT)
    e = fit(PoissonExpert(1), x, zeros, steps=100)
    assert torch.isfinite(e.coef).all() and e.coef[0, 0] < -5
    huge = torch.full((100,), 1e15, dtype=DT)
    e = fit(PoissonExpert(1), x * 1e3, huge, steps=100)
    assert torch.isfinite(e.coef).all()
    assert torch.isfinite(e.log_prob(x * 1e3, huge)).all()
    assert float(e.log_rate(x * 1e3).detach().max()) <= 30.0


@family
def test_zero_weight_expert_in_a_stack_is_left_unchanged(fam):
    x, y = data(fam, n=150, d=2, seed=2)
    e = randomise(make(fam, 2, 3, l2=0.5), seed=3)
    w = weights(150, 3)
    w[:, 1] = 0.0
    before = canonical(e)[1].clone()
    fit(e, x, y, w)
    _finite(e, x, y)
    np.testing.assert_allclose(canonical(e)[1].numpy(), before.numpy(), atol=1e-12)
    single = fit(make(fam, 2, l2=0.5), x, y, w[:, 0])
    np.testing.assert_allclose(canonical(e)[0].numpy(), canonical(single)[0].numpy(), atol=1e-8)
    alone = randomise(make(fam, 2), seed=3)
    c0 = canonical(alone).clone()
    fit(alone, x, y, torch.zeros(150, dtype=DT))  # no weight at all
    np.testing.assert_allclose(canonical(alone).numpy(), c0.numpy())


# ---------------------------------------------------- distributions / API
@family
@pytest.mark.parametrize("k", [None, 4])
def test_forward_distribution_and_log_prob(fam, k):
    x, y = data(fam, n=30, d=2)
    e = randomise(make(fam, 2, k), seed=1)
    d = e(x)
    batch = (30,) if k is None else (30, 4)
    assert tuple(d.batch_shape) == batch
    cls = {"logistic": Bernoulli, "softmax": Categorical, "poisson": Poisson}[fam]
    assert isinstance(d, cls)
    yy = y if k is None else y[:, None]
    np.testing.assert_allclose(d.log_prob(yy).detach().numpy(), e.log_prob(x, y).detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(d.log_prob(yy.to(DT)).detach().numpy(), e.log_prob(x, y.to(DT)).detach().numpy(), rtol=1e-12)
    assert e.y_kind == {"logistic": "binary", "softmax": "categorical", "poisson": "count"}[fam]
    assert e.n_parameters() == {"logistic": 3, "softmax": 6, "poisson": 3}[fam]
    assert e.log_prob(x, y).dtype == DT


def test_log_prob_sums_to_one_over_outcomes():
    x, _ = data_binary(n=20)
    e = randomise(LogisticExpert(2, n_experts=2), seed=3)
    p = e.log_prob(x, torch.ones(20)).exp() + e.log_prob(x, torch.zeros(20)).exp()
    np.testing.assert_allclose(p.detach().numpy(), 1.0, rtol=1e-12)
    s = randomise(SoftmaxExpert(2, N_CLASSES, n_experts=2), seed=3)
    tot = sum(s.log_prob(x, torch.full((20,), c)).exp() for c in range(N_CLASSES))
    np.testing.assert_allclose(tot.detach().numpy(), 1.0, rtol=1e-12)
    pe = randomise(PoissonExpert(2, n_experts=2), seed=3, scale=0.2)
    tot = sum(pe.log_prob(x, torch.full((20,), float(c))).exp() for c in range(80))
    np.testing.assert_allclose(tot.detach().numpy(), 1.0, rtol=1e-10)


@family
def test_mixture_distribution_log_prob_with_integer_y(fam):
    x, y = _two_expert_data(fam, n=40)
    moe = MixtureOfExperts(SoftmaxGate(1, 2), randomise(make(fam, 1, 2), seed=2))
    yi = y.long()
    np.testing.assert_allclose(moe(x).log_prob(yi).detach().numpy(), moe.log_prob(x, y).detach().numpy(), rtol=1e-12)


def test_poisson_cdf_single():
    x, _ = data_count(n=10, d=1)
    e = randomise(PoissonExpert(1), seed=1)
    d = e(x)
    k = torch.full((10,), 3.0, dtype=DT)
    want = sum(d.log_prob(torch.full((10,), float(j), dtype=DT)).exp() for j in range(4))
    np.testing.assert_allclose(d.cdf(k).detach().numpy(), want.detach().numpy(), rtol=1e-10)


def test_poisson_mixture_cdf_stacked():
    x, y = _two_expert_data("poisson", n=10)
    moe = MixtureOfExperts(SoftmaxGate(1, 2), randomise(PoissonExpert(1, n_experts=2), seed=2))
    c = moe(x).cdf(y)
    assert c.shape == (10,) and bool(((c >= 0) & (c <= 1)).all())


@pytest.mark.parametrize(
    "expert, y",
    [
        (LogisticExpert(1), torch.tensor([0.0, 2.0, 1.0])),
        (SoftmaxExpert(1, 3), torch.tensor([0, 3, 1])),
        (SoftmaxExpert(1, 3), torch.tensor([0.0, 0.5, 1.0])),
        (PoissonExpert(1), torch.tensor([1.0, -1.0, 0.0])),
    ],
)
def test_bad_targets_raise(expert, y):
    x = torch.zeros(3, 1, dtype=DT)
    with pytest.raises(ValueError, match="y must"):
        expert.fit_weighted(x, y)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="n_classes"):
        SoftmaxExpert(2, 1)
    with pytest.raises(ValueError, match="l2"):
        LogisticExpert(2, l2=-1.0)
    with pytest.raises(ValueError, match="x must have shape"):
        PoissonExpert(2).log_prob(torch.zeros(3, 3, dtype=DT), torch.zeros(3))


def test_accepts_float32_inputs_and_bool_targets():
    x, y = data_binary(n=100)
    a = fit(LogisticExpert(2), x.float(), y.bool())
    b = fit(LogisticExpert(2), x, y)
    np.testing.assert_allclose(a.coef.detach().numpy(), b.coef.detach().numpy(), atol=1e-5)


def test_docstring_examples_run():
    for mod in (logistic_mod, poisson_mod):
        res = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert res.failed == 0 and res.attempted > 0


def test_two_class_softmax_equals_logistic():
    """With C = 2 and class 1 as reference, row 0 of the softmax is the logistic fit of y == 0."""
    x, y = data_binary(n=300, d=2, seed=17)
    w = weights(300, seed=18)
    s = fit(SoftmaxExpert(2, 2), x, y, w)
    b = fit(LogisticExpert(2), x, 1 - y, w)
    np.testing.assert_allclose(canonical(s)[0, 0].numpy(), b.coef[0].detach().numpy(), atol=1e-9)
    np.testing.assert_allclose(s.log_prob(x, y).detach().numpy(), b.log_prob(x, 1 - y).detach().numpy(), atol=1e-10)


@family
def test_intercept_only_expert(fam):
    """n_features = 0: the fit is the weighted mean response through the link."""
    _, y = data(fam, n=200, d=1, seed=19)
    x = torch.zeros(200, 0, dtype=DT)
    w = weights(200, seed=20)
    e = fit(make(fam, 0), x, y, w)
    if fam == "softmax":
        freq = (torch.nn.functional.one_hot(y, N_CLASSES).to(DT) * w[:, None]).sum(0) / w.sum()
        np.testing.assert_allclose(e(x).probs[0].detach().numpy(), freq.numpy(), atol=1e-9)
    else:
        ybar = float((w * y.to(DT)).sum() / w.sum())
        np.testing.assert_allclose(float(e(x).mean[0].detach()), ybar, atol=1e-9)
