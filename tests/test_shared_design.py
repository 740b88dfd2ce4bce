"""The gate and the linear-Gaussian experts sharing one pass over their design (issue 12): the same statistics.

``MixtureOfExperts.suff_stats`` builds ``[1, x]`` once per row chunk and forms the packed outer
products once for the gate's information and the experts' Gram matrices where both see the same
columns; for scalar y it runs the whole E-step over the transposed design, experts by rows
(``_transposed_design_stats``).  The statistics must equal those each component computes on its own.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate
import moekit._linalg as linalg
from moekit._linalg import CHUNK_ELEMENTS, design_cache, gram, packed_design, transposed_design, weighted_grams

D = torch.float64


def _model(d, k, n_outputs=None, hessian="full", offset=False, gate_features=None, expert_features=None, seed=0,
           **expert_kw):
    torch.manual_seed(seed)
    d_gate = d if gate_features is None else len(gate_features)
    d_exp = d if expert_features is None else len(expert_features)
    gate = SoftmaxGate(d_gate, k, hessian=hessian)
    expert_kw = {"covariance": "diag", **expert_kw}
    experts = LinearGaussianExpert(d_exp, n_outputs=n_outputs, n_experts=k, offset=offset, **expert_kw)
    with torch.no_grad():
        gate.coef.normal_()
        experts.coef.normal_()
        getattr(experts, "log_scale").uniform_(-0.5, 0.5)
    return MixtureOfExperts(gate, experts, gate_features=gate_features, expert_features=expert_features)


def _data(n, d, n_outputs=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=D)
    y = torch.randn(n, generator=g, dtype=D) if n_outputs is None else torch.randn(n, n_outputs, generator=g, dtype=D)
    w = torch.rand(n, generator=g, dtype=D) + 0.5
    return x, y, w


def _separate(m, x, y, w):
    """Each component's statistics on its own, from the same responsibilities."""
    log_gate = m.log_gate(x)
    joint = log_gate + m.expert_log_prob(x, y)
    targets = w[:, None] * (joint - torch.logsumexp(joint, 1, keepdim=True)).exp()
    return m.gate.suff_stats(m.gate_input(x), targets, log_gate=log_gate), m.experts.suff_stats(m.expert_input(x), y, targets)


@pytest.mark.parametrize(
    "n,d,k,n_outputs,hessian",
    [
        (400, 1, 2, None, "full"),
        (400, 6, 3, None, "full"),
        (300, 10, 8, None, "full"),
        (300, 10, 8, 2, "full"),
        (300, 3, 4, None, "block"),
        (300, 1, 3, None, "bound"),
        (CHUNK_ELEMENTS // 3 + 517, 1, 2, None, "full"),  # several row chunks
    ],
)
@torch.no_grad()
def test_shared_pass_equals_each_components_own_statistics(n, d, k, n_outputs, hessian):
    m = _model(d, k, n_outputs, hessian)
    x, y, w = _data(n, d, n_outputs)
    log_gate, joint, _ = m._joint_tree(x, y)
    targets = w[:, None] * (joint - torch.logsumexp(joint, 1, keepdim=True)).exp()
    assert m._shared_design_stats(x, y, targets, log_gate) is not None  # the shared pass is taken here
    stats = m.suff_stats(x, y, w)
    with design_cache():  # the transposed design and the packed outer products kept, as in fit_em
        m.suff_stats(x, y, w)
        cached = m.suff_stats(x, y, w)
    gate, experts = _separate(m, x, y, w)
    for key in ("objective", "grad", "info"):
        torch.testing.assert_close(cached["gate"][key], gate[key], rtol=1e-11, atol=1e-9)
    for key in ("sw", "xwx", "xwy", "ywy"):
        torch.testing.assert_close(cached["experts"]["stacked"][key], experts[key], rtol=1e-11, atol=1e-9)
    for key in ("objective", "grad", "info"):
        torch.testing.assert_close(stats["gate"][key], gate[key], rtol=1e-11, atol=1e-9)
    for key in ("sw", "xwx", "xwy", "ywy"):
        torch.testing.assert_close(stats["experts"]["stacked"][key], experts[key], rtol=1e-11, atol=1e-9)


def _declining_case(case):
    """A model and data where a shared or transposed pass should be declined: ``(model, x, y, w)``."""
    kw, n_outputs, d, k = {}, None, 3, 3
    if case == "syrk-is-cheaper":  # K = 2, p = 11: one symmetric product per Gram matrix is cheaper apart
        d, k = 10, 2
    elif case == "gate-symmetric-product":  # K = 8 on one input: the gate's information is one symmetric product
        d, k = 1, 8
    elif case == "different-columns":
        kw = {"gate_features": [0, 1], "expert_features": [1, 2]}
    elif case == "offset":
        kw = {"offset": True}
    elif case in ("missing-y", "vector-y"):
        n_outputs = 2
    m = _model(d, k, n_outputs, **kw)
    x, y, w = _data(200, d, n_outputs)
    if case == "offset":
        x = torch.cat([x, torch.randn(200, 1, dtype=D)], 1)
        m.expert_features = None
        m.gate_features = list(range(d))
    if case == "missing-y":
        y[5, 1] = float("nan")
    if case == "float32-data":
        x = x.float()
    return m, x, y, w


@pytest.mark.parametrize(
    "case",
    ["syrk-is-cheaper", "gate-symmetric-product", "different-columns", "offset", "missing-y", "float32-data"],
)
@torch.no_grad()
def test_shared_pass_is_declined_where_it_would_not_be_the_same_or_cheaper(case):
    m, x, y, w = _declining_case(case)
    k = m.n_experts
    targets = w[:, None].expand(-1, k) / k
    log_gate = m.log_gate(x.to(D))
    assert m._shared_design_stats(x, y, targets, log_gate) is None
    if case != "float32-data":
        stats = m.suff_stats(x, y, w)  # the components' own path still gives the statistics
        assert torch.isfinite(stats["gate"]["info"]).all()


@pytest.mark.parametrize(
    "d, k, hessian, weighted, expert_kw",
    [
        (1, 2, "full", True, {}),
        (10, 2, "full", True, {}),
        (10, 8, "full", True, {}),
        (3, 2, "full", False, {}),
        (4, 3, "block", True, {}),
        (2, 5, "bound", True, {}),
        (10, 3, "full", True, {"covariance": "tied"}),
        (0, 2, "full", True, {}),
        (3, 2, "full", True, {"shared": [1]}),
        (1, 2, "full", True, {"n": CHUNK_ELEMENTS // 7 + 517}),  # several row chunks
    ],
)
@torch.no_grad()
def test_transposed_pass_equals_each_components_own_statistics(d, k, hessian, weighted, expert_kw):
    """Scalar y: the E-step over the transposed design gives every component's own statistics."""
    expert_kw = dict(expert_kw)
    n = expert_kw.pop("n", 700)
    m = _model(d, k, None, hessian, **expert_kw)
    x, y, w = _data(n, d)
    w = w if weighted else torch.ones_like(w)
    assert m._transposed_design_stats(x, y, w if weighted else None, None) is not None  # the transposed pass is taken
    gate, experts = _separate(m, x, y, w)
    joint = m.joint_log_prob(x, y)
    for cached in (False, True):
        with design_cache() if cached else contextlib.nullcontext():
            data: dict = {}
            stats = m.suff_stats(x, y, w if weighted else None, data=data)
        torch.testing.assert_close(stats["loglik"], (w * torch.logsumexp(joint, 1)).sum(), rtol=1e-12, atol=1e-9)
        for key in ("objective", "grad", "info"):
            torch.testing.assert_close(stats["gate"][key], gate[key], rtol=1e-11, atol=1e-9)
        for key in ("sw", "xwx", "xwy", "ywy"):
            torch.testing.assert_close(stats["experts"]["stacked"][key], experts[key], rtol=1e-11, atol=1e-9)
        # the weighted data kept for the Newton steps: the gate's targets, as the general path records them
        comp, (xg, targets) = data[("gate",)]
        assert comp is m.gate and xg.shape == x.shape
        torch.testing.assert_close(targets, w[:, None] * (joint - torch.logsumexp(joint, 1, keepdim=True)).exp(),
                                   rtol=1e-12, atol=1e-12)
        assert data[("experts", "stacked")][0] is m.experts


@pytest.mark.parametrize("case", ["vector-y", "offset", "gate-symmetric-product", "different-columns", "float32-data"])
@torch.no_grad()
def test_transposed_pass_is_declined_where_it_does_not_apply(case):
    m, x, y, w = _declining_case(case)
    assert m._transposed_design_stats(x, y, w, None) is None
    if case != "float32-data":
        stats = m.suff_stats(x, y, w)  # the general path still gives the statistics
        assert torch.isfinite(stats["gate"]["info"]).all()


def test_weighted_grams_of_no_columns():
    assert weighted_grams(torch.ones(5, 3, dtype=D), torch.ones(5, 0, dtype=D)).shape == (0, 3, 3)


def test_gram_holds_blas_at_torchs_thread_count_and_restores_it():
    a = torch.randn(5000, 40, dtype=D)
    blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with threadpool_limits(limits=2, user_api="blas"):
            counts = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
            torch.testing.assert_close(gram(a), a.T @ a, rtol=1e-12, atol=1e-9)
            after = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
        assert after == counts  # the user's setting is put back
    finally:
        torch.set_num_threads(before)
    assert len(blas) >= 1


def test_scalar_gaussian_m_step_is_weighted_least_squares():
    """The unmasked M-step of scalar-y experts: weighted least squares, the weighted residual variance, floored."""
    torch.manual_seed(3)
    n, d, k = 200, 2, 3
    ex = LinearGaussianExpert(d, n_experts=k, var_floor=0.05)
    x = torch.randn(n, d, dtype=D)
    y = x @ torch.tensor([1.0, -2.0], dtype=D) + 0.1 * torch.randn(n, dtype=D)
    w = torch.rand(n, k, dtype=D)
    ex.m_step(ex.suff_stats(x, y, w))
    xd = torch.cat([torch.ones(n, 1, dtype=D), x], 1)
    for j in range(k):
        beta = torch.linalg.solve(xd.T @ (w[:, j, None] * xd), xd.T @ (w[:, j] * y))
        var = (w[:, j] * (y - xd @ beta) ** 2).sum() / w[:, j].sum()
        torch.testing.assert_close(ex.coef.data[j, :, 0], beta, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ex.log_scale.data[j, 0], 0.5 * var.clamp_min(0.05).log(), rtol=1e-10, atol=1e-12)
    assert bool((ex.log_scale.data == 0.5 * torch.tensor(0.05, dtype=D).log()).any())  # the floor was reached


def test_transposed_design_is_kept_only_within_the_cache_and_follows_in_place_changes():
    x = torch.randn(50, 3, dtype=D)
    want = torch.cat([torch.ones(50, 1, dtype=D), x], 1).T
    assert transposed_design(x) is not transposed_design(x)  # no cache outside the context
    with design_cache():
        first = transposed_design(x)
        torch.testing.assert_close(first, want, rtol=0, atol=0)
        assert first.is_contiguous()
        assert transposed_design(x) is first  # the same batch: built once
        assert transposed_design(x.clone()) is not first
        x[3, 1] = 7.0  # changed in place: a new design
        again = transposed_design(x)
        assert again is not first and float(again[2, 3]) == 7.0
    assert transposed_design(x) is not again


@pytest.mark.parametrize("k", [2, 8])
def test_weighted_grams_from_the_transposed_design(k):
    xd = torch.randn(300, 5, dtype=D)
    w = torch.rand(300, k, dtype=D) - 0.2
    torch.testing.assert_close(weighted_grams(None, w, xt=xd.T.contiguous()), weighted_grams(xd, w), rtol=1e-13, atol=1e-12)


def test_packed_design_is_the_rows_outer_products_within_the_cache_and_budget(monkeypatch):
    x = torch.randn(40, 3, dtype=D)
    xd = torch.cat([torch.ones(40, 1, dtype=D), x], 1)
    rows, cols = torch.triu_indices(4, 4)
    assert packed_design(x) is None  # outside the cache
    with design_cache():
        q = packed_design(x)
        torch.testing.assert_close(q, (xd[:, rows] * xd[:, cols]).T, rtol=0, atol=0)
        assert packed_design(x) is q
        assert packed_design(x[:]) is q  # a new view of the same rows finds them
        assert packed_design(x[:20]) is not None  # other rows: their own, within the budget
        # kept so far: the design of x (4 x 40), its products (10 x 40), those of x[:20] (design 4 x 20, 10 x 20)
        monkeypatch.setattr(linalg, "DESIGN_CACHE_ELEMENTS", 14 * 60 + 4 * 40 + 100)  # room for one more design
        other = x.clone()
        assert packed_design(other) is None  # its design fits, its products no longer do
        assert transposed_design(other) is transposed_design(other)
        third = x.clone()
        assert transposed_design(third) is not transposed_design(third)  # nothing more is kept
    w = torch.rand(40, 5, dtype=D)
    torch.testing.assert_close(weighted_grams(xd, w, q=q), weighted_grams(xd, w), rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("d, k, hessian", [(1, 2, "full"), (10, 3, "full"), (4, 3, "block"), (2, 4, "bound")])
@torch.no_grad()
def test_gate_statistics_over_the_transposed_design_equal_the_rows_by_experts_form(d, k, hessian):
    """SoftmaxGate.suff_stats (its initial fit's and Newton steps' statistics) over the transposed design, in
    several row chunks, equals multinomial_newton_stats on [1, x], with and without the E-step's log-weights."""
    from moekit._linalg import add_intercept
    from moekit.experts.newton import multinomial_newton_stats

    gate = _model(d, k, hessian=hessian).gate
    n = CHUNK_ELEMENTS // (2 * k + gate.design_columns(d + 1)) + 333
    x, _, w = _data(n, d)
    targets = w[:, None] * torch.softmax(torch.randn(n, k, dtype=D), 1)
    xd = add_intercept(x)
    logg = torch.log_softmax(xd @ gate.coef.detach().T, 1)
    objective, grad, info = multinomial_newton_stats(xd, logg[:, None, :], targets[:, None, :], hessian)
    for log_gate in (None, logg):
        stats = gate.suff_stats(x, targets, log_gate=log_gate)
        torch.testing.assert_close(stats["objective"], objective, rtol=1e-11, atol=1e-9)
        torch.testing.assert_close(stats["grad"], grad.reshape(k - 1, d + 1), rtol=1e-11, atol=1e-9)
        torch.testing.assert_close(stats["info"], info[0], rtol=1e-11, atol=1e-9)


@pytest.mark.parametrize("weight_shape", ["none", "rows", "rows-by-experts"])
@torch.no_grad()
def test_expert_statistics_over_the_transposed_design_equal_weighted_least_squares(weight_shape):
    """LinearGaussianExpert.suff_stats for scalar y (its initial fit) over the transposed design, in several row
    chunks: the weighted least-squares sums, for every form of weight."""
    k, d = 3, 4
    ex = _model(d, k).experts
    n = CHUNK_ELEMENTS // (2 * k) + 211
    x, y, _ = _data(n, d)
    w = {"none": None, "rows": None, "rows-by-experts": torch.rand(n, k, dtype=D)}[weight_shape]
    if weight_shape == "rows":
        ex = LinearGaussianExpert(d, n_experts=None)
        k, w = 1, torch.rand(n, dtype=D)
    stats = ex.suff_stats(x, y, w)
    wk = torch.ones(n, k, dtype=D) if w is None else (w[:, None] if w.dim() == 1 else w)
    xd = torch.cat([torch.ones(n, 1, dtype=D), x], 1)
    for j in range(k):
        torch.testing.assert_close(stats["sw"][j], wk[:, j].sum(), rtol=1e-12, atol=0)
        torch.testing.assert_close(stats["xwx"][j], xd.T @ (wk[:, j, None] * xd), rtol=1e-11, atol=1e-9)
        torch.testing.assert_close(stats["xwy"][j, :, 0], xd.T @ (wk[:, j] * y), rtol=1e-11, atol=1e-9)
        torch.testing.assert_close(stats["ywy"][j, 0, 0], (wk[:, j] * y * y).sum(), rtol=1e-11, atol=1e-9)
