"""Linear-Gaussian experts and gates: closed forms against references, by property."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from sklearn.linear_model import LinearRegression

from moekit import ConstantGate, LinearGaussianExpert, MLPGate, SoftmaxGate, SuffStats
from moekit._mstep import maximize

D = torch.float64


def _data(n=300, d=2, dy=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=D)
    b = torch.randn(d + 1, 1 if dy is None else dy, generator=g, dtype=D)
    xd = torch.cat([torch.ones(n, 1, dtype=D), x], 1)
    y = xd @ b + 0.3 * torch.randn(n, b.shape[1], generator=g, dtype=D)
    if dy is not None:
        mix = torch.randn(dy, dy, generator=g, dtype=D)
        y = y + 0.2 * torch.randn(n, dy, generator=g, dtype=D) @ mix
    w = torch.rand(n, generator=g, dtype=D) * 2
    return x, (y[:, 0] if dy is None else y), w


def test_suffstats_value_semantics():
    a = SuffStats(n=torch.tensor(1.0), inner=SuffStats(s=torch.ones(2)))
    b = SuffStats(n=torch.tensor(2.0), inner=SuffStats(s=torch.ones(2)))
    c = a + b
    assert float(c["n"]) == 3.0 and torch.equal(c["inner"]["s"], torch.full((2,), 2.0))
    assert float(a["n"]) == 1.0  # values, not buffers: a is unchanged
    assert sum([a, b])["n"] == 3.0
    assert c.scale(2)["inner"]["s"].tolist() == [4.0, 4.0]
    assert [t.shape for t in c.with_tensors(c.tensors()).tensors()] == [t.shape for t in c.tensors()]
    with pytest.raises(ValueError, match="different keys"):
        a + SuffStats(m=torch.tensor(1.0))


def test_k1_equals_weighted_ols():
    x, y, w = _data()
    e = LinearGaussianExpert(2).fit_weighted(x, y, w)
    ref = LinearRegression().fit(x.numpy(), y.numpy(), sample_weight=w.numpy())
    np.testing.assert_allclose(e.coef[0, 1:, 0].detach().numpy(), ref.coef_, atol=1e-10)
    np.testing.assert_allclose(e.coef[0, 0, 0].item(), ref.intercept_, atol=1e-10)
    resid = y.numpy() - ref.predict(x.numpy())
    var = np.sum(w.numpy() * resid**2) / w.numpy().sum()
    np.testing.assert_allclose(e.covariance_matrix()[0, 0, 0].item(), var, rtol=1e-10)


@pytest.mark.parametrize("cov", ["full", "diag", "spherical"])
def test_vector_y_covariance_structures(cov):
    x, y, w = _data(dy=3)
    e = LinearGaussianExpert(2, 3, covariance=cov).fit_weighted(x, y, w)
    xd = np.column_stack([np.ones(len(x)), x.numpy()])
    wn = w.numpy()
    beta = np.linalg.solve(xd.T @ (wn[:, None] * xd), xd.T @ (wn[:, None] * y.numpy()))
    np.testing.assert_allclose(e.coef[0].detach().numpy(), beta, atol=1e-10)
    r = y.numpy() - xd @ beta
    s = (wn[:, None] * r).T @ r / wn.sum()
    want = {"full": s, "diag": np.diag(np.diag(s)), "spherical": np.eye(3) * np.trace(s) / 3}[cov]
    np.testing.assert_allclose(e.covariance_matrix()[0].detach().numpy(), want, atol=1e-10)
    # the fast log_prob equals the torch distribution's
    np.testing.assert_allclose(e.log_prob(x, y).detach().numpy(), e(x).log_prob(y).detach().numpy(), atol=1e-10)


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_closed_form_m_step_equals_numerical_optimum(cov):
    x, y, w = _data(n=200, dy=2, seed=3)
    e = LinearGaussianExpert(2, 2, covariance=cov).fit_weighted(x, y, w)
    best = float((w * e.log_prob(x, y)).sum().detach())
    params = [p for p in e.parameters()]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def f(theta):
        t = torch.tensor(theta, dtype=D, requires_grad=True)
        chunks = torch.split(t, sizes)
        m = LinearGaussianExpert(2, 2, covariance=cov)
        for (name, _), c, s in zip(m.named_parameters(), chunks, shapes):
            setattr(m, name, torch.nn.Parameter(c.reshape(s)))
        loss = -(w * m.log_prob(x, y)).sum()
        gr = torch.autograd.grad(loss, list(m.parameters()))
        return loss.item(), torch.cat([g.reshape(-1) for g in gr]).detach().numpy()

    res = minimize(f, np.zeros(sum(sizes)), jac=True, method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-10})
    assert -res.fun <= best + 1e-6  # nothing beats the closed form
    assert -res.fun == pytest.approx(best, abs=1e-5)


def test_stats_additive_and_weights_equal_duplicates():
    x, y, w = _data(dy=2)
    e = LinearGaussianExpert(2, 2, n_experts=3)
    wk = torch.rand(len(x), 3, dtype=D)
    s_all = e.suff_stats(x, y, wk)
    s_sum = e.suff_stats(x[:100], y[:100], wk[:100]) + e.suff_stats(x[100:], y[100:], wk[100:])
    for a, b in zip(s_all.tensors(), s_sum.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    counts = torch.randint(0, 4, (len(x),), generator=torch.Generator().manual_seed(1))
    a = LinearGaussianExpert(2, 2).fit_weighted(x, y, counts.to(D))
    rep = torch.repeat_interleave(torch.arange(len(x)), counts)
    b = LinearGaussianExpert(2, 2).fit_weighted(x[rep], y[rep])
    torch.testing.assert_close(a.coef, b.coef, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a.scale_tril(), b.scale_tril(), rtol=1e-10, atol=1e-10)


def test_stacked_equals_list():
    x, y, _ = _data(dy=2)
    wk = torch.rand(len(x), 3, dtype=D, generator=torch.Generator().manual_seed(2))
    stacked = LinearGaussianExpert(2, 2, n_experts=3).fit_weighted(x, y, wk)
    singles = [LinearGaussianExpert(2, 2).fit_weighted(x, y, wk[:, k]) for k in range(3)]
    lp = stacked.log_prob(x, y)
    for k, s in enumerate(singles):
        torch.testing.assert_close(lp[:, k], s.log_prob(x, y), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(stacked.select(k).coef, s.coef)
    for k, u in enumerate(stacked.unstack()):
        torch.testing.assert_close(u.log_prob(x, y), lp[:, k])
    restacked = LinearGaussianExpert.stack(stacked.unstack())
    torch.testing.assert_close(restacked.log_prob(x, y), lp)


def test_variance_floor_and_dead_expert():
    x = torch.linspace(0, 1, 20, dtype=D)[:, None]
    y = 3 * x[:, 0] + 1  # a perfect line: the variance would be 0
    e = LinearGaussianExpert(1, var_floor=1e-4).fit_weighted(x, y)
    assert e.covariance_matrix()[0, 0, 0].item() == pytest.approx(1e-4)
    s = LinearGaussianExpert(1, n_experts=2)
    before = s.coef.detach().clone()
    w = torch.stack([torch.ones(20, dtype=D), torch.zeros(20, dtype=D)], 1)
    s.fit_weighted(x, y, w)
    assert torch.equal(s.coef[1], before[1])  # no weight: left as it was, no NaN
    assert torch.isfinite(s.log_prob(x, y)).all()


def test_gradcheck_log_prob():
    x, y, _ = _data(n=8, dy=2)
    e = LinearGaussianExpert(2, 2, n_experts=2)
    with torch.no_grad():
        e.coef.normal_()
        e.scale_tril_raw.normal_(std=0.3)

    class LogProb(torch.nn.Module):
        def __init__(self, expert):
            super().__init__()
            self.e = expert

        def forward(self, x, y):
            return self.e.log_prob(x, y)

    wrapper = LogProb(e)

    def f(coef, raw):
        return torch.func.functional_call(wrapper, {"e.coef": coef, "e.scale_tril_raw": raw}, (x, y))

    assert torch.autograd.gradcheck(f, (e.coef.detach().clone().requires_grad_(), e.scale_tril_raw.detach().clone().requires_grad_()))


# ------------------------------------------------------------------- gates
def _soft_targets(n=400, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=D)
    logits = torch.cat([torch.ones(n, 1, dtype=D), x], 1) @ torch.randn(3, k, generator=g, dtype=D)
    r = torch.softmax(logits + 0.5 * torch.randn(n, k, generator=g, dtype=D), 1)
    w = torch.rand(n, generator=g, dtype=D) + 0.5
    return x, w[:, None] * r


def test_gate_outputs_are_log_weights():
    x, _ = _soft_targets()
    for gate in (SoftmaxGate(2, 3), ConstantGate(3), MLPGate(2, 3, generator=torch.Generator().manual_seed(0))):
        lg = gate(x)
        assert lg.shape == (len(x), 3)
        torch.testing.assert_close(torch.logsumexp(lg, 1), torch.zeros(len(x), dtype=D))


def test_softmax_gate_newton_equals_lbfgs_optimum():
    x, t = _soft_targets()
    gate = SoftmaxGate(2, 3, max_m_steps=50)
    gate.fit_weighted(x, t)
    newton = float(gate.objective(x, t))
    ref = SoftmaxGate(2, 3)
    opt = torch.optim.LBFGS(ref.parameters(), max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -ref.objective(x, t)
        loss.backward()
        return loss

    opt.step(closure)
    assert newton >= float(ref.objective(x, t)) - 1e-8
    torch.testing.assert_close(gate(x).exp(), ref(x).exp().detach(), atol=1e-5, rtol=0)


def test_softmax_gate_stats_additive_and_monotone_steps():
    x, t = _soft_targets(n=500)
    gate = SoftmaxGate(2, 3)
    s = gate.suff_stats(x, t)
    s2 = gate.suff_stats(x[:123], t[:123]) + gate.suff_stats(x[123:], t[123:])
    for a, b in zip(s.tensors(), s2.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-9)
    values = []
    for _ in range(6):
        values.append(float(gate.objective(x, t)))
        maximize(gate, lambda: gate.suff_stats(x, t), max_steps=1)
    assert all(b >= a - 1e-10 for a, b in zip(values, values[1:]))


def test_softmax_gate_separable_targets_stay_finite():
    x = torch.linspace(-1, 1, 50, dtype=D)[:, None]
    t = torch.stack([(x[:, 0] > 0).to(D), (x[:, 0] <= 0).to(D)], 1)
    gate = SoftmaxGate(1, 2, max_m_steps=50)
    gate.fit_weighted(x, t)
    assert torch.isfinite(gate.coef).all() and torch.isfinite(gate(x)).all()


def test_constant_gate_is_exact():
    x, t = _soft_targets()
    gate = ConstantGate(3).fit_weighted(x, t)
    torch.testing.assert_close(gate(x[:1]).exp()[0], t.sum(0) / t.sum())


def test_mlp_gate_m_step_never_lowers_objective():
    x, t = _soft_targets()
    gate = MLPGate(2, 3, generator=torch.Generator().manual_seed(0))
    before = float(gate.objective(x, t))
    for _ in range(5):
        gate.fit_weighted(x, t)
        now = float(gate.objective(x, t))
        assert now >= before - 1e-12
        before = now


def test_gate_select_keeps_rows():
    x, _ = _soft_targets()
    gate = SoftmaxGate(2, 3)
    with torch.no_grad():
        gate.coef.normal_()
    sub = gate.select([0, 2])
    full = gate(x)
    want = full[:, [0, 2]] - torch.logsumexp(full[:, [0, 2]], 1, keepdim=True)
    torch.testing.assert_close(sub(x), want)
