"""Property tests of the Student-t regression expert."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

from moekit import MixtureOfExperts, SoftmaxGate, fit_em
from moekit._mstep import maximize
from moekit.distributions import StudentT
from moekit.experts import student_t as student_t_module
from moekit.experts.student_t import StudentTExpert

DT = torch.float64


def _t_noise(g, n, df, d=None):
    """Student-t draws with integer df from a seeded generator: (n,) or (n, d)."""
    shape = (n,) if d is None else (n, d)
    z = torch.randn(*shape, generator=g, dtype=DT)
    chi2 = (torch.randn(*shape, df, generator=g, dtype=DT) ** 2).sum(-1)
    return z / (chi2 / df).sqrt()


def _line_data(n=300, d_x=2, d_y=None, df=3, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_x, generator=g, dtype=DT)
    p = d_x + 1
    b = torch.randn(p, 1 if d_y is None else d_y, generator=g, dtype=DT)
    mu = torch.cat([torch.ones(n, 1, dtype=DT), x], 1) @ b
    y = mu + scale * _t_noise(g, n, df, 1 if d_y is None else d_y)
    if d_y is None:
        y = y[:, 0]
    return x, y, g


def _randomise(e, g):
    """Random parameters (every leading-axis entry different)."""
    with torch.no_grad():
        e.coef.copy_(torch.randn(e.coef.shape, generator=g, dtype=DT))
        e.log_scale.copy_(0.3 * torch.randn(e.log_scale.shape, generator=g, dtype=DT))
        e.log_df.copy_(math.log(4.0) + 0.5 * torch.randn(e.log_df.shape, generator=g, dtype=DT))
    return e


def _assert_stats_close(a, b, rtol=1e-10, atol=1e-9):
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)


# ---------------------------------------------------------------- statistics
@pytest.mark.parametrize("n_experts", [None, 3])
@pytest.mark.parametrize("n_outputs", [None, 2])
def test_suff_stats_are_additive_over_row_batches(n_experts, n_outputs):
    x, y, g = _line_data(n=120, d_y=n_outputs, seed=1)
    e = _randomise(StudentTExpert(2, n_outputs=n_outputs, n_experts=n_experts), g)
    k = 1 if n_experts is None else n_experts
    w = torch.rand(120, k, generator=g, dtype=DT)
    w = w[:, 0] if n_experts is None else w
    full = e.suff_stats(x, y, w)
    parts = [e.suff_stats(x[s], y[s], w[s]) for s in (slice(0, 17), slice(17, 80), slice(80, 120))]
    _assert_stats_close(sum(parts), full)
    assert full["xux"].shape == (k, 1 if n_outputs is None else n_outputs, 3, 3)
    assert full["objective"].shape == ()
    torch.testing.assert_close(full["loglik"].sum(), full["objective"])
    # the objective is the weighted log-likelihood at the current parameters
    lp = e.log_prob(x, y)
    torch.testing.assert_close(full["objective"], (w * lp).sum())


@pytest.mark.parametrize("n_experts", [None, 2])
def test_integer_weights_equal_duplicated_rows(n_experts):
    x, y, g = _line_data(n=60, seed=2)
    e = _randomise(StudentTExpert(2, n_experts=n_experts), g)
    k = 1 if n_experts is None else n_experts
    reps = torch.randint(0, 4, (60, k), generator=g)
    if n_experts is None:
        idx = torch.repeat_interleave(torch.arange(60), reps[:, 0])
        a = e.suff_stats(x, y, reps[:, 0].to(DT))
        b = e.suff_stats(x[idx], y[idx])
        _assert_stats_close(a, b)
    else:
        # expert j sees weight column j; duplicating rows per column gives the same column
        a = e.suff_stats(x, y, reps.to(DT))
        for j in range(k):
            idx = torch.repeat_interleave(torch.arange(60), reps[:, j])
            bj = e.select(j).suff_stats(x[idx], y[idx])
            for key in ("sw", "xux", "xuy", "yuy", "swu", "elogu_u", "loglik"):
                torch.testing.assert_close(a[key][j], bj[key][0], rtol=1e-10, atol=1e-9)


# --------------------------------------------------------- limits and optima
@pytest.mark.parametrize("n_outputs", [None, 2])
def test_huge_fixed_df_is_weighted_least_squares(n_outputs):
    x, y, g = _line_data(n=200, d_y=n_outputs, df=5, seed=3)
    w = 0.1 + torch.rand(200, generator=g, dtype=DT) * 3
    e = StudentTExpert(2, n_outputs=n_outputs, df=1e6)
    e.init_from_responsibilities(x, y, w)
    xd = np.hstack([np.ones((200, 1)), x.numpy()])
    yy = y.numpy().reshape(200, -1)
    sw = np.sqrt(w.numpy())[:, None]
    beta = np.linalg.lstsq(xd * sw, yy * sw, rcond=None)[0]
    np.testing.assert_allclose(e.coef[0].detach().numpy(), beta, rtol=1e-5, atol=1e-5)
    var = (w.numpy()[:, None] * (yy - xd @ beta) ** 2).sum(0) / w.numpy().sum()
    np.testing.assert_allclose(e.scale()[0].detach().numpy() ** 2, var, rtol=1e-5)
    assert e.log_df.requires_grad is False and "log_df" in dict(e.named_buffers())
    assert e.n_parameters() == 3 * e._d + e._d


def _lbfgs_fit(e, x, y, w):
    params = [e.coef, e.log_scale, e.log_df]
    opt = torch.optim.LBFGS(
        params, lr=1, max_iter=2000, tolerance_grad=1e-12, tolerance_change=1e-15,
        history_size=50, line_search_fn="strong_wolfe",
    )
    total = float(w.sum())

    def closure():
        opt.zero_grad()
        loss = -(w * e.log_prob(x, y)).sum() / total
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    return e


def test_ecm_optimum_equals_lbfgs_optimum():
    x, y, g = _line_data(n=1500, d_x=2, df=3, scale=0.5, seed=4)
    w = (0.05 + torch.rand(1500, generator=g, dtype=DT) * 2.0) * (1 + (x[:, 0] > 0).to(DT))  # random, non-uniform
    ecm = StudentTExpert(2)
    ecm.init_from_responsibilities(x, y, w)
    maximize(ecm, lambda: ecm.suff_stats(x, y, w), max_steps=5000, tol=0.0)

    ref = StudentTExpert(2)
    with torch.no_grad():  # an independent start: unweighted OLS, df = 8
        xd = torch.cat([torch.ones(1500, 1, dtype=DT), x], 1)
        ref.coef[0] = torch.linalg.lstsq(xd, y[:, None]).solution
        ref.log_scale.fill_(0.0)
        ref.log_df.fill_(math.log(8.0))
    _lbfgs_fit(ref, x, y, w)

    f_ecm = float(ecm.suff_stats(x, y, w)["objective"])
    f_ref = float(ref.suff_stats(x, y, w)["objective"])
    assert f_ecm >= f_ref - 1e-7 * abs(f_ref)
    torch.testing.assert_close(ecm.coef, ref.coef, rtol=0, atol=1e-5)
    torch.testing.assert_close(ecm.scale(), ref.scale(), rtol=1e-5, atol=0)
    torch.testing.assert_close(ecm.df, ref.df, rtol=1e-5, atol=0)
    # at a stationary point in sigma the precision weights average to one: sum w u = sum w
    st = ecm.suff_stats(x, y, w)
    torch.testing.assert_close(st["swu"][0, 0], st["sw"][0], rtol=1e-6, atol=0)
    assert 2.0 < ecm.df.tolist()[0] < 4.5  # and it is near the truth (df = 3)


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(n_experts=3), dict(n_outputs=2, n_experts=2), dict(df=2.0), dict(df_bounds=(2.5, 50.0))],
)
def test_ecm_steps_never_lower_the_objective(kw):
    x, y, g = _line_data(n=250, d_y=kw.get("n_outputs"), df=2, seed=5)
    y = y.clone()
    y[:20] += 8.0  # outliers make it a genuinely non-Gaussian problem
    e = _randomise(StudentTExpert(2, **kw), g)
    if "df" in kw:
        e.log_df.data.fill_(math.log(kw["df"]))
    if "df_bounds" in kw:
        e.log_df.data.fill_(math.log(3.0))
    k = e._k
    w = torch.rand(250, k, generator=g, dtype=DT)
    if k == 3:
        w[:, 1] = 0.0  # an expert without weight keeps its parameters
    w = w if e.stacked else w[:, 0]
    frozen = {n: p.detach().clone() for n, p in e.named_parameters()}
    stats = e.suff_stats(x, y, w)
    objs = [float(stats["objective"])]
    for _ in range(60):  # raw ECM cycles, no step-halving safety net
        e.m_step(stats)
        stats = e.suff_stats(x, y, w)
        objs.append(float(stats["objective"]))
    assert all(math.isfinite(f) for f in objs)
    diffs = np.diff(objs)
    assert (diffs >= -1e-10 * (1 + np.abs(objs[1:]))).all(), diffs.min()
    assert objs[-1] > objs[0]
    lo, hi = e.df_bounds
    if "df" not in kw:
        assert bool(((e.df >= lo * (1 - 1e-12)) & (e.df <= hi * (1 + 1e-12))).all())
    if k == 3:
        for n, p in e.named_parameters():
            torch.testing.assert_close(p[1], frozen[n][1], rtol=0, atol=0)
    for p in e.parameters():
        assert torch.isfinite(p).all()


def test_robust_to_gross_outliers():
    g = torch.Generator().manual_seed(6)
    n = 400
    x = torch.rand(n, 1, generator=g, dtype=DT)
    y = 1.0 + 2.0 * x[:, 0] + 0.1 * torch.randn(n, generator=g, dtype=DT)
    bad = torch.randperm(n, generator=g)[: n // 10]
    y[bad] += 5.0 + 20.0 * x[bad, 0]  # 10% gross outliers, worst at large x
    e = StudentTExpert(1, max_m_steps=200)
    e.init_from_responsibilities(x, y, torch.ones(n, dtype=DT))
    xd = np.hstack([np.ones((n, 1)), x.numpy()])
    ols = np.linalg.lstsq(xd, y.numpy(), rcond=None)[0]
    err_t = abs(float(e.coef.detach()[0, 1, 0]) - 2.0)
    err_ols = abs(ols[1] - 2.0)
    assert err_ols > 0.5
    assert err_t < 0.05 and err_t < 0.05 * err_ols
    assert float(e.df.detach()[0]) < 5.0


# ------------------------------------------------------------------ stacking
@pytest.mark.parametrize("kw", [dict(), dict(n_outputs=2), dict(df=5.0)])
def test_stacked_equals_list(kw):
    x, y, g = _line_data(n=200, d_y=kw.get("n_outputs"), df=3, seed=7)
    stacked = _randomise(StudentTExpert(2, n_experts=3, max_m_steps=8, **kw), g)
    singles = stacked.unstack()
    assert all(not s.stacked for s in singles)
    lp = stacked.log_prob(x, y)
    assert lp.shape == (200, 3)
    for j, s in enumerate(singles):
        torch.testing.assert_close(s.log_prob(x, y), lp[:, j], rtol=1e-12, atol=1e-12)
    # a fixed number of ECM cycles (no early stop from random starts) on the same weights
    w = torch.rand(200, 3, generator=g, dtype=DT)
    stacked.fit_weighted(x, y, w)
    for j, s in enumerate(singles):
        s.fit_weighted(x, y, w[:, j])
        for (name, p), q in zip(s.named_parameters(), [stacked.get_parameter(n) for n, _ in s.named_parameters()]):
            torch.testing.assert_close(p[0], q[j], rtol=1e-9, atol=1e-10, msg=name)
        torch.testing.assert_close(s.log_df[0], stacked.log_df[j], rtol=1e-9, atol=1e-10)
    restacked = StudentTExpert.stack(singles)
    torch.testing.assert_close(restacked.log_prob(x, y), stacked.log_prob(x, y), rtol=1e-9, atol=1e-9)


def test_fit_em_mixture_of_two_t_lines_never_decreases():
    g = torch.Generator().manual_seed(8)
    n = 400
    x = torch.rand(n, 1, generator=g, dtype=DT) * 2 - 1
    up = x[:, 0] > 0
    y = torch.where(up, 1.0 + 3.0 * x[:, 0], -1.0 - 2.0 * x[:, 0]) + 0.1 * _t_noise(g, n, 3)
    moe = MixtureOfExperts(SoftmaxGate(1, 2), StudentTExpert(1, n_experts=2, max_m_steps=10))
    res = fit_em(moe, x, y, random_state=0, max_iter=100, tol=1e-7)
    h = res.history
    assert all(b >= a - 1e-9 * (1 + abs(a)) for a, b in zip(h, h[1:]))
    assert all(math.isfinite(v) for v in h)
    slopes = sorted(moe.experts.coef[:, 1, 0].tolist())
    np.testing.assert_allclose(slopes, [-2.0, 3.0], atol=0.1)
    mean = moe(x).mean
    assert mean.shape == (n,) and torch.isfinite(mean).all()


# -------------------------------------------------------- likelihood details
def test_gradcheck_log_prob():
    x, y, g = _line_data(n=12, d_y=2, seed=9)
    e = _randomise(StudentTExpert(2, n_outputs=2, n_experts=2), g)
    coef = e.coef.detach().clone().requires_grad_(True)
    ls = e.log_scale.detach().clone().requires_grad_(True)
    ldf = e.log_df.detach().clone().requires_grad_(True)

    def f(c, s, d):
        return _lp(e, c, s, d, x, y)

    assert torch.autograd.gradcheck(f, (coef, ls, ldf), eps=1e-6, atol=1e-6)
    x1, y1, g1 = _line_data(n=10, seed=10)
    e1 = _randomise(StudentTExpert(2), g1)
    c1 = e1.coef.detach().clone().requires_grad_(True)
    s1 = e1.log_scale.detach().clone().requires_grad_(True)
    d1 = e1.log_df.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c, s, d: _lp(e1, c, s, d, x1, y1), (c1, s1, d1), eps=1e-6, atol=1e-6)


class _LogProb(torch.nn.Module):
    """Calls the wrapped expert's ``log_prob`` so that ``functional_call`` can swap its parameters."""

    def __init__(self, e):
        super().__init__()
        self.e = e

    def forward(self, x, y):
        return self.e.log_prob(x, y)


def _lp(e, c, s, d, x, y):
    return torch.func.functional_call(_LogProb(e), {"e.coef": c, "e.log_scale": s, "e.log_df": d}, (x, y))


@pytest.mark.parametrize("n_experts", [None, 3])
@pytest.mark.parametrize("n_outputs", [None, 2])
def test_forward_distribution_matches_log_prob(n_experts, n_outputs):
    x, y, g = _line_data(n=30, d_y=n_outputs, seed=11)
    e = _randomise(StudentTExpert(2, n_outputs=n_outputs, n_experts=n_experts), g)
    dist = e(x)
    batch = (30,) if n_experts is None else (30, n_experts)
    assert tuple(dist.batch_shape) == batch
    assert tuple(dist.event_shape) == (() if n_outputs is None else (n_outputs,))
    yy = y if n_experts is None else y.unsqueeze(1)
    torch.testing.assert_close(dist.log_prob(yy), e.log_prob(x, y), rtol=1e-12, atol=1e-12)
    if n_outputs is None:
        base = dist
        assert isinstance(base, StudentT)
        c = base.cdf(yy)
        assert c.shape == batch and bool(((c > 0) & (c < 1)).all())


def test_zero_weight_and_degenerate_data_never_nan():
    x = torch.linspace(0, 1, 50, dtype=DT)[:, None]
    y = 3.0 * x[:, 0] + 1.0  # a perfect line: the scale hits the floor
    e = StudentTExpert(1, n_experts=2, var_floor=1e-8)
    w = torch.zeros(50, 2, dtype=DT)
    w[:, 0] = 1.0
    before = [p.detach().clone() for p in e.parameters()]
    e.init_from_responsibilities(x, y, w)
    for p, b in zip(e.parameters(), before):
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p[1], b[1], rtol=0, atol=0)
    np.testing.assert_allclose(e.coef[0, :, 0].detach().numpy(), [1.0, 3.0], atol=1e-6)
    assert float(e.scale().detach()[0, 0]) ** 2 == pytest.approx(1e-8, rel=1e-6)
    assert torch.isfinite(e.log_prob(x, y)).all()
    # all weights zero: nothing moves
    e2 = StudentTExpert(1)
    e2.fit_weighted(x, y, torch.zeros(50, dtype=DT))
    assert float(e2.coef.detach().abs().sum()) == 0.0 and float(e2.log_scale.detach().abs().sum()) == 0.0


def test_select_keeps_fixed_df_a_buffer_and_counts_parameters():
    e = StudentTExpert(3, n_outputs=2, n_experts=4, df=7.0)
    s = e.select([1, 3])
    assert s.n_experts == 2 and "log_df" in dict(s.named_buffers())
    torch.testing.assert_close(s.df, torch.full((2,), 7.0, dtype=DT))
    assert e.n_parameters() == 4 * 2 + 2
    assert StudentTExpert(3, n_outputs=2).n_parameters() == 4 * 2 + 2 + 1


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(n_features=-1), "n_features"),
        (dict(n_features=1, n_outputs=0), "n_outputs"),
        (dict(n_features=1, df=0.0), "df"),
        (dict(n_features=1, df_bounds=(5.0, 2.0)), "df_bounds"),
        (dict(n_features=1, var_floor=0.0), "var_floor"),
        (dict(n_features=1, max_m_steps=0), "max_m_steps"),
    ],
)
def test_invalid_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        StudentTExpert(**kw)


def test_wrong_y_shape_is_explained():
    e = StudentTExpert(1, n_outputs=2)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        e.log_prob(torch.zeros(5, 1, dtype=DT), torch.zeros(5, dtype=DT))


def test_docstring_examples():
    res = doctest.testmod(student_t_module, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0 and res.failed == 0
