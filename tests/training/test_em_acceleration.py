"""fit_em(accelerate="squarem"): monotone, the same maximum as plain EM, and a correct fall-back."""

import itertools
import math

import pytest
import torch

from moekit import (
    LinearGaussianExpert,
    LogisticExpert,
    MixtureOfExperts,
    PoissonExpert,
    SoftmaxGate,
    fit_em,
)
from moekit.training import em as em_mod
from moekit.tree import build_tree


def _mean_ll(moe, x, y):
    with torch.no_grad():
        return float(moe.log_prob(x, y).mean())


def _data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g, dtype=torch.float64) * 2 - 1
    z = x[:, 0] + 0.3 * torch.randn(n, generator=g, dtype=torch.float64) > 0
    return x, z, g


def _linear():
    x, z, g = _data()
    y = torch.where(z, 1 + 2 * x[:, 0], -1 - x[:, 0]) + 0.3 * torch.randn(x.shape[0], generator=g, dtype=torch.float64)
    return MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_experts=2)), x, y


def _poisson():
    x, z, g = _data(seed=1)
    rate = torch.where(z, (1 + x[:, 0]).exp(), (0.5 - x[:, 0]).exp())
    y = torch.poisson(rate, generator=g)
    return MixtureOfExperts(SoftmaxGate(1, 2), [PoissonExpert(1), PoissonExpert(1)]), x, y


def _logistic():
    x, z, g = _data(seed=2)
    p = torch.where(z, torch.sigmoid(3 * x[:, 0]), torch.sigmoid(-2 - 3 * x[:, 0]))
    y = torch.bernoulli(p, generator=g).long()
    return MixtureOfExperts(SoftmaxGate(1, 2), [LogisticExpert(1), LogisticExpert(1)]), x, y


def _tree():
    x, z, g = _data(seed=3)
    x = torch.cat([x, torch.rand(x.shape[0], 1, generator=g, dtype=torch.float64)], 1)
    y = torch.where(z, x[:, 1], -x[:, 1]) + 0.2 * torch.randn(x.shape[0], generator=g, dtype=torch.float64)
    return build_tree(2, depth=2, branching=2, prune_threshold=None), x, y


@pytest.mark.parametrize("make", [_linear, _poisson, _logistic, _tree], ids=["linear", "poisson", "logistic", "tree"])
@pytest.mark.parametrize("seed", [0, 1])
def test_squarem_history_never_decreases(make, seed):
    moe, x, y = make()
    res = fit_em(moe, x, y, random_state=seed, init="random", max_iter=150, tol=1e-9, accelerate="squarem")
    h = res.history
    assert all(b >= a - 1e-10 for a, b in itertools.pairwise(h))
    assert math.isfinite(res.log_likelihood)
    assert res.n_iter >= len(h) - 1  # M-steps counted, rejected extrapolations included
    # the model kept is the one the last history value was measured at
    assert _mean_ll(moe, x, y) == pytest.approx(h[-1], abs=1e-8)


@pytest.mark.parametrize("make", [_linear, _poisson])
def test_squarem_reaches_the_same_maximum_as_plain_em(make):
    finals = {}
    for acc in (None, "squarem"):
        moe, x, y = make()
        res = fit_em(moe, x, y, random_state=0, init="random", max_iter=5000, tol=1e-12, accelerate=acc)
        assert res.converged
        finals[acc] = res.mean_log_likelihood
    assert finals["squarem"] == pytest.approx(finals[None], abs=1e-6)


def test_default_is_plain_em_and_bad_option_refused():
    moe, x, y = _linear()
    a = fit_em(moe, x, y, random_state=0, init="random")
    moe2, _, _ = _linear()
    b = fit_em(moe2, x, y, random_state=0, init="random", accelerate=None)
    assert a.history == b.history and a.n_iter == b.n_iter
    with pytest.raises(ValueError, match="accelerate"):
        fit_em(moe, x, y, accelerate="anderson")


def _three_points(moe, x, y):
    """theta0, theta1, theta2 from two plain EM steps from a random start, and theta2's E-step."""
    fit_em(moe, x, y, random_state=0, init="random", max_iter=0)
    source = em_mod.ArrayBatches(x, y, torch.ones(x.shape[0], dtype=x.dtype))
    thetas = [em_mod._snapshot(moe)]
    for _ in range(2):
        moe.m_step(*em_mod.e_step_pass(moe, source))
        thetas.append(em_mod._snapshot(moe))
    stats, passes = em_mod.e_step_pass(moe, source)
    return source, thetas, stats, passes, float(stats["loglik"]) / x.shape[0]


@pytest.mark.parametrize("scale, m_steps", [(1e3, 0), (1.0, 1)], ids=["refused-at-jump", "refused-after-em-step"])
def test_overshooting_extrapolation_falls_back_to_the_plain_step(scale, m_steps):
    """r large, v tiny: a huge step length.  Far out (1e3) the jumped point is refused before any M-step (its
    likelihood is not finite or an expert would be pruned); nearer (1) the EM step from it ends below theta2."""
    moe, x, y = _linear()
    source, (t0, t1, t2), stats, passes, ll2 = _three_points(moe, x, y)
    t0 = {n: t2[n] - 2 * scale * torch.ones_like(t2[n]) for n in t2}
    t1 = {n: t2[n] - scale * torch.ones_like(t2[n]) + 1e-3 for n in t2}
    recorded, state = [], {"n_iter": 5, "accelerate": True}
    s, p = em_mod._squarem_jump(moe, em_mod._Data(source, None), x.shape[0], 1e-4, t0, t1, t2, ll2, stats, passes, state, recorded.append)
    assert s is stats and p is passes and recorded == []  # rejected: nothing recorded
    assert state["n_iter"] == 5 + m_steps  # the stabilising M-step's work is counted when it was done
    for n, v in em_mod._snapshot(moe).items():
        assert torch.equal(v, t2[n])  # the model is back at theta2
    assert _mean_ll(moe, x, y) == pytest.approx(ll2, abs=1e-12)


def test_good_extrapolation_is_kept_and_not_below_theta2():
    moe, x, y = _linear()
    source, (t0, t1, t2), stats, passes, ll2 = _three_points(moe, x, y)
    recorded, state = [], {"n_iter": 2, "accelerate": True}
    em_mod._squarem_jump(moe, em_mod._Data(source, None), x.shape[0], 1e-4, t0, t1, t2, ll2, stats, passes, state, recorded.append)
    assert state["n_iter"] == 3  # the stabilising M-step counts
    if recorded:  # kept: its log-likelihood is at least theta2's and it is the model's
        assert recorded[0] >= ll2
        assert _mean_ll(moe, x, y) == pytest.approx(recorded[0], abs=1e-10)
    else:
        assert _mean_ll(moe, x, y) == pytest.approx(ll2, abs=1e-12)


def test_fallback_inside_fit_keeps_monotone(monkeypatch):
    """Every extrapolation made to overshoot (alpha forced far out): the fit is plain EM in effect, still monotone."""
    real = em_mod._squarem_jump
    rejected = []

    def far(m, source, total, thr, t0, t1, t2, ll2, s2, p2, state, record):
        t0 = {n: t2[n] - 2e3 * torch.ones_like(t2[n]) for n in t2}
        t1 = {n: t2[n] - 1e3 * torch.ones_like(t2[n]) + 1e-3 for n in t2}
        out = real(m, source, total, thr, t0, t1, t2, ll2, s2, p2, state, lambda v: rejected.append(v))
        return out

    monkeypatch.setattr(em_mod, "_squarem_jump", far)
    moe, x, y = _linear()
    res = fit_em(moe, x, y, random_state=0, init="random", max_iter=300, tol=1e-8, accelerate="squarem")
    plain_moe, _, _ = _linear()
    ref = fit_em(plain_moe, x, y, random_state=0, init="random", max_iter=300, tol=1e-8)
    assert rejected == []
    h = res.history
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(h))
    assert res.mean_log_likelihood == pytest.approx(ref.mean_log_likelihood, abs=1e-6)
    # the kept points are exactly plain EM's
    assert h == pytest.approx(ref.history, abs=1e-12)
    assert res.n_iter >= ref.n_iter  # a jump refused before its M-step (non-finite, pruning) costs none
