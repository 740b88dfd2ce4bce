"""Structure options of the linear-Gaussian expert: tied covariances, shared coefficients, offsets, intercept-only.

Conformance (``check_expert``) for every option; the tied M-step against the pooled closed form; one
shared-coefficient CM step against a direct joint weighted least squares (numpy ``lstsq`` on the stacked,
whitened design) and the ECM fixed point against scipy on the joint objective; K = 1 with an offset against
least squares of ``y - offset`` and statsmodels' Gaussian GLM; EM monotonicity; parameter counts (BIC);
select / unstack / stack.
"""

import math

import numpy as np
import pytest
import statsmodels.api as sm
import torch
from scipy.optimize import minimize

from moekit import ConstantGate, LinearGaussianExpert, MixtureOfExperts, SoftmaxGate, fit_em
from moekit.testing import check_expert, regression_data

D = torch.float64
TIED = ["tied", "tied_diag", "tied_spherical"]


def _soft(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(n, k, generator=g, dtype=D) + 0.05
    return r / r.sum(1, keepdim=True) * (0.5 + torch.rand(n, 1, generator=g, dtype=D))


def _with_offset(x, seed=3):
    off = torch.randn(x.shape[0], 1, generator=torch.Generator().manual_seed(seed), dtype=D)
    return torch.cat([x, off], 1)


def _nondecreasing(h, rel=1e-10):
    h = np.asarray(h)
    return bool(np.all(np.diff(h) >= -rel * (1 + np.abs(h[:-1]))))


# ------------------------------------------------------------------ conformance
@pytest.mark.parametrize("cov", TIED)
@pytest.mark.parametrize("d_y", [None, 3])
def test_tied_conformance(cov, d_y):
    x, y = regression_data(n=70, d=2, d_y=d_y, seed=1)
    check_expert(lambda: LinearGaussianExpert(2, d_y, cov, n_experts=3), x, y)


@pytest.mark.parametrize("d_y,cov,shared", [(None, "full", [1]), (None, "full", [0, 1]), (3, "full", [0]),
                                            (3, "diag", [1]), (2, "tied", [0, 1]), (None, "tied", [0])])
def test_shared_conformance(d_y, cov, shared):
    x, y = regression_data(n=70, d=2, d_y=d_y, seed=2)
    check_expert(lambda: LinearGaussianExpert(2, d_y, cov, n_experts=2, shared=shared), x, y)


@pytest.mark.parametrize("n_experts,cov,shared", [(None, "full", ()), (3, "full", ()), (2, "tied", [0])])
def test_offset_conformance(n_experts, cov, shared):
    x, y = regression_data(n=70, d=2, seed=3)
    xo = _with_offset(x)
    check_expert(lambda: LinearGaussianExpert(2, covariance=cov, n_experts=n_experts, offset=True, shared=shared),
                 xo, y + xo[:, 2])


@pytest.mark.parametrize("d_y,n_experts,cov,offset", [(None, None, "full", False), (None, 3, "full", False),
                                                      (None, 3, "tied", False), (2, 2, "full", False),
                                                      (2, 2, "tied_diag", False), (None, 2, "full", True)])
def test_intercept_only_conformance(d_y, n_experts, cov, offset):
    x, y = regression_data(n=70, d=1, d_y=d_y, seed=4)
    x0 = _with_offset(x[:, :0]) if offset else x[:, :0]
    check_expert(lambda: LinearGaussianExpert(0, d_y, cov, n_experts=n_experts, offset=offset), x0, y)


# ------------------------------------------------------------------ tied covariances
@pytest.mark.parametrize("cov", TIED)
@pytest.mark.parametrize("d_y", [None, 3])
def test_tied_m_step_is_the_pooled_closed_form(cov, d_y):
    k = 3
    x, y = regression_data(n=120, d=2, d_y=d_y, seed=5)
    w = _soft(120, k, 6)
    e = LinearGaussianExpert(2, d_y, cov, n_experts=k).fit_weighted(x, y, w)
    xd = np.c_[np.ones(120), x.numpy()]
    yy = y.numpy().reshape(120, -1)
    rss, sw = 0.0, 0.0
    for j in range(k):
        wj = w[:, j].numpy()
        beta = np.linalg.solve(xd.T @ (wj[:, None] * xd), xd.T @ (wj[:, None] * yy))
        np.testing.assert_allclose(e.coef[j].detach().numpy(), beta, rtol=1e-10, atol=1e-12)
        r = yy - xd @ beta
        rss = rss + r.T @ (wj[:, None] * r)
        sw += wj.sum()
    pooled = rss / sw
    if cov == "tied_diag" or d_y is None:
        pooled = np.diag(np.diag(pooled))
    if cov == "tied_spherical":
        pooled = np.eye(pooled.shape[0]) * np.trace(pooled) / pooled.shape[0]
    got = e.covariance_matrix().detach().numpy()
    for j in range(k):
        np.testing.assert_allclose(got[j], pooled, rtol=1e-10, atol=1e-14)


def test_tied_n_parameters_count_the_covariance_once_for_bic():
    k, d = 3, 2
    tied = LinearGaussianExpert(1, d, "tied", n_experts=k)
    free = LinearGaussianExpert(1, d, "full", n_experts=k)
    assert free.n_parameters_total() == k * (2 * d + 3)
    assert tied.n_parameters_total() == k * 2 * d + 3
    assert LinearGaussianExpert(1, d, "tied_diag", n_experts=k).n_parameters_total() == k * 2 * d + d
    assert LinearGaussianExpert(1, None, "tied", n_experts=k).n_parameters_total() == k * 2 + 1
    assert tied.n_parameters() == free.n_parameters() == 2 * d + 3  # one expert on its own
    gate = SoftmaxGate(1, k)
    assert MixtureOfExperts(gate, tied).n_parameters() == gate.n_parameters() + k * 2 * d + 3
    assert MixtureOfExperts(gate, free).n_parameters() == gate.n_parameters() + k * (2 * d + 3)


def test_tied_stack_unstacks_into_ordinary_experts_and_stacks_back():
    x, y = regression_data(n=80, d=1, d_y=2, seed=7)
    e = LinearGaussianExpert(1, 2, "tied", n_experts=3).fit_weighted(x, y, _soft(80, 3, 8))
    singles = e.unstack()
    for j, s in enumerate(singles):
        assert not s.stacked and s.n_parameters_total() == s.n_parameters() == 2 * 2 + 3
        torch.testing.assert_close(s.log_prob(x, y), e.log_prob(x, y)[:, j], rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(s.covariance_matrix()[0], e.covariance_matrix()[0])
    back = LinearGaussianExpert.stack(singles)
    torch.testing.assert_close(back.log_prob(x, y), e.log_prob(x, y), rtol=0, atol=0)
    pair = e.select([2, 0])
    torch.testing.assert_close(pair.log_prob(x, y), e.log_prob(x, y)[:, [2, 0]], rtol=0, atol=0)
    singles[1].fit_weighted(x, y)  # now its covariance differs from the others'
    with pytest.raises(ValueError, match="tied covariance or shared coefficients"):
        LinearGaussianExpert.stack(singles)


# ------------------------------------------------------------------ shared coefficients
def _stacked_whitened_lstsq(x, y, w, cov, shared, alpha=0.0):
    """The joint weighted least squares of K experts with tied rows, as one numpy lstsq on the stacked design."""
    n = x.shape[0]
    xd = np.c_[np.ones(n), x]
    p = xd.shape[1]
    yy = y.reshape(n, -1)
    d = yy.shape[1]
    k = w.shape[1]
    sh = [1 + j for j in shared]
    own = [j for j in range(p) if j not in sh]
    n_par = k * len(own) * d + len(sh) * d

    def col(kk, j, c):  # column of coefficient (expert kk, row j, output c) in the joint unknown
        if j in sh:
            return k * len(own) * d + sh.index(j) * d + c
        return kk * len(own) * d + own.index(j) * d + c

    rows, rhs = [], []
    for kk in range(k):
        li = np.linalg.inv(np.linalg.cholesky(cov[kk]))  # whitening: L^-1 y ~ N(L^-1 B^T x, I)
        for i in range(n):
            des = np.zeros((d, n_par))
            for j in range(p):
                for c in range(d):
                    des[c, col(kk, j, c)] += xd[i, j]
            s = math.sqrt(w[i, kk])
            rows.append(s * li @ des)
            rhs.append(s * li @ yy[i])
        if alpha > 0:  # ridge rows: 0.5 alpha tr(Sigma^-1 B'^T B') = 0.5 alpha sum_j |L^-1 b_j|^2 over slope rows j
            for j in range(1, p):
                des = np.zeros((d, n_par))
                for c in range(d):
                    des[c, col(kk, j, c)] = 1.0
                rows.append(math.sqrt(alpha) * li @ des)
                rhs.append(np.zeros(d))
    sol = np.linalg.lstsq(np.vstack(rows), np.concatenate(rhs), rcond=None)[0]
    out = np.zeros((k, p, d))
    for kk in range(k):
        for j in range(p):
            for c in range(d):
                out[kk, j, c] = sol[col(kk, j, c)]
    return out


@pytest.mark.parametrize("d_y,cov,shared,alpha", [(None, "full", [1], 0.0), (None, "full", [0, 1], 0.0),
                                                  (2, "full", [0], 0.0), (2, "diag", [1], 0.0),
                                                  (None, "full", [1], 2.0), (2, "full", [0], 1.5)])
def test_shared_coefficient_step_is_the_joint_weighted_least_squares(d_y, cov, shared, alpha):
    k, n = 3, 50
    x, y = regression_data(n=n, d=2, d_y=d_y, seed=9)
    w = _soft(n, k, 10)
    e = LinearGaussianExpert(2, d_y, cov, n_experts=k, shared=shared, alpha=alpha)
    d = 1 if d_y is None else d_y
    g = torch.Generator().manual_seed(11)
    a = torch.randn(k, d, d, generator=g, dtype=D)
    sigma = a @ a.transpose(-1, -2) + 0.5 * torch.eye(d, dtype=D)  # unequal noise covariances
    if cov == "diag":
        sigma = torch.diag_embed(sigma.diagonal(dim1=-2, dim2=-1))
    got = e.shared_coef_step(e.suff_stats(x, y, w), sigma)
    want = _stacked_whitened_lstsq(x.numpy(), y.numpy(), w.numpy(), sigma.numpy(), shared, alpha)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-10)
    for j in shared:
        assert torch.equal(got[:, 1 + j], got[:1, 1 + j].expand(k, -1))


def test_shared_ecm_fixed_point_is_the_joint_maximum_found_by_scipy():
    k, n = 2, 150
    g = torch.Generator().manual_seed(12)
    x = torch.randn(n, 2, generator=g, dtype=D)
    z = torch.rand(n, generator=g, dtype=D) < 0.5
    y = 0.7 * x[:, 0] + torch.where(z, 1 + 2 * x[:, 1], -1 - x[:, 1]) + torch.where(z, 0.3, 1.0) * torch.randn(
        n, generator=g, dtype=D)
    w = _soft(n, k, 13)
    e = LinearGaussianExpert(2, n_experts=k, shared=[0]).fit_weighted(x, y, w)
    mine = float((w * e.log_prob(x, y)).sum().detach())

    xn, yn, wn = x.numpy(), y.numpy(), w.numpy()

    def negloglik(theta):  # theta: per expert (intercept, slope 1, log sigma), then the shared slope 0
        out = 0.0
        for j in range(k):
            b0, b1, ls = theta[3 * j : 3 * j + 3]
            mu = b0 + theta[-1] * xn[:, 0] + b1 * xn[:, 1]
            out -= (wn[:, j] * (-0.5 * ((yn - mu) / np.exp(ls)) ** 2 - ls - 0.5 * math.log(2 * math.pi))).sum()
        return out

    res = minimize(negloglik, np.zeros(3 * k + 1), method="BFGS", options={"gtol": 1e-10, "maxiter": 10_000})
    assert mine >= -res.fun - 1e-8
    np.testing.assert_allclose(mine, -res.fun, rtol=1e-10)
    c = e.coef.detach().numpy()[:, :, 0]
    for j in range(k):
        np.testing.assert_allclose(c[j, [0, 2]], res.x[3 * j : 3 * j + 2], atol=1e-5)
        np.testing.assert_allclose(c[j, 1], res.x[-1], atol=1e-5)
    np.testing.assert_allclose(e.scale_tril()[:, 0, 0].detach().numpy(), np.exp(res.x[2:3 * k:3]), rtol=1e-5)


def test_shared_coefficients_stay_tied_and_count_once():
    x, y = regression_data(n=90, d=3, seed=14)
    e = LinearGaussianExpert(3, n_experts=3, shared=[0, 2]).fit_weighted(x, y, _soft(90, 3, 15))
    c = e.coef.detach()
    assert torch.equal(c[:, [1, 3]], c[:1, [1, 3]].expand(3, -1, -1))
    assert not torch.allclose(c[0, 2], c[1, 2])  # the own slope differs
    assert e.n_parameters_total() == 3 * (4 - 2) + 2 + 3
    assert LinearGaussianExpert(3, 2, n_experts=3, shared=[1]).n_parameters_total() == 3 * 3 * 2 + 2 + 3 * 3
    assert LinearGaussianExpert(3, n_experts=3, shared=[1], covariance="tied").n_parameters_total() == 3 * 3 + 1 + 1
    gate = SoftmaxGate(3, 3)
    assert MixtureOfExperts(gate, e).n_parameters() == gate.n_parameters() + e.n_parameters_total()


def test_shared_with_an_expert_without_weight_moves_its_shared_rows_only():
    x, y = regression_data(n=60, d=2, seed=16)
    e = LinearGaussianExpert(2, n_experts=3, shared=[0])
    with torch.no_grad():
        e.coef[2, 2, 0] = 5.0
    w = _soft(60, 3, 17)
    w[:, 2] = 0.0
    e.fit_weighted(x, y, w)
    c = e.coef.detach()
    assert float(c[2, 2, 0]) == 5.0 and float(c[2, 0, 0]) == 0.0
    assert torch.equal(e.coef[:, 1], e.coef[:1, 1].expand(3, -1))
    assert torch.isfinite(e.log_prob(x, y)).all()


# ------------------------------------------------------------------ offsets
@torch.no_grad()
def test_offset_k1_is_least_squares_of_y_minus_offset_and_statsmodels_glm():
    g = torch.Generator().manual_seed(18)
    n = 200
    x = torch.randn(n, 2, generator=g, dtype=D)
    off = 3 * torch.rand(n, generator=g, dtype=D)
    y = 0.5 + x @ torch.tensor([1.0, -2.0], dtype=D) + off + 0.4 * torch.randn(n, generator=g, dtype=D)
    w = torch.rand(n, generator=g, dtype=D) + 0.5
    xo = torch.cat([x, off[:, None]], 1)
    e = LinearGaussianExpert(2, offset=True).fit_weighted(xo, y, w)
    ref = LinearGaussianExpert(2).fit_weighted(x, y - off, w)
    torch.testing.assert_close(e.coef, ref.coef, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(e.scale_tril(), ref.scale_tril(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(e.log_prob(xo, y), ref.log_prob(x, y - off), rtol=1e-12, atol=1e-12)
    glm = sm.GLM(y.numpy(), sm.add_constant(x.numpy()), family=sm.families.Gaussian(), offset=off.numpy(),
                 var_weights=w.numpy()).fit()
    np.testing.assert_allclose(e.coef[0, :, 0].detach().numpy(), glm.params, rtol=1e-6, atol=1e-8)
    # maximum-likelihood variance from statsmodels' coefficients, and the log-likelihood
    resid = y.numpy() - glm.fittedvalues
    var = float((w.numpy() * resid**2).sum() / w.numpy().sum())
    np.testing.assert_allclose(float(e.scale_tril()[0, 0, 0]) ** 2, var, rtol=1e-6)
    mine = float((w * e.log_prob(xo, y)).sum())
    want = float((w.numpy() * (-0.5 * resid**2 / var - 0.5 * math.log(2 * math.pi * var))).sum())
    np.testing.assert_allclose(mine, want, rtol=1e-6)
    unweighted = sm.GLM(y.numpy(), sm.add_constant(x.numpy()), family=sm.families.Gaussian(), offset=off.numpy()).fit()
    e1 = LinearGaussianExpert(2, offset=True).fit_weighted(xo, y)
    np.testing.assert_allclose(float(e1.log_prob(xo, y).sum()), unweighted.llf, rtol=1e-6)
    # the mean includes the offset; the offset is no feature: input_slopes are the two slopes
    torch.testing.assert_close(e(xo).mean, ref(x).mean + off)
    assert e.input_slopes().shape == (1, 2, 1)


def test_offset_absorbs_an_input_scale_exactly():
    x, y = regression_data(n=60, d=2, seed=19)
    xo = _with_offset(x)
    e = LinearGaussianExpert(2, offset=True).fit_weighted(torch.cat([x * 2.0**-5, xo[:, 2:]], 1), y + xo[:, 2])
    before = e.log_prob(torch.cat([x * 2.0**-5, xo[:, 2:]], 1), y + xo[:, 2])
    e.absorb_input_scale_(5)
    assert torch.equal(e.log_prob(xo, y + xo[:, 2]), before)


# ------------------------------------------------------------------ intercept-only
@torch.no_grad()
def test_intercept_only_fit_is_the_weighted_mean_and_variance():
    g = torch.Generator().manual_seed(20)
    y = 3 + 2 * torch.randn(100, generator=g, dtype=D)
    w = torch.rand(100, generator=g, dtype=D)
    x0 = torch.empty(100, 0, dtype=D)
    e = LinearGaussianExpert(0).fit_weighted(x0, y, w)
    mean = float((w * y).sum() / w.sum())
    var = float((w * (y - mean) ** 2).sum() / w.sum())
    np.testing.assert_allclose(float(e.coef[0, 0, 0]), mean, rtol=1e-12)
    np.testing.assert_allclose(float(e.covariance_matrix()[0, 0, 0]), var, rtol=1e-12)
    assert e(x0).batch_shape == (100,) and e.input_slopes().shape == (1, 0, 1)
    assert e.n_parameters() == 2
    s = LinearGaussianExpert(0, 2, n_experts=3)
    assert s(x0).batch_shape == (100, 3) and s(x0).event_shape == (2,)


def test_intercept_only_experts_under_a_covariate_gate_em_never_decreases():
    g = torch.Generator().manual_seed(21)
    n = 400
    x = torch.randn(n, 1, generator=g, dtype=D)
    z = torch.rand(n, generator=g, dtype=D) < torch.sigmoid(3 * x[:, 0])
    y = torch.where(z, 2.0, -1.0) + 0.5 * torch.randn(n, generator=g, dtype=D)
    for cov in ["full", "tied"]:
        moe = MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(0, covariance=cov, n_experts=2),
                               expert_features=[])
        res = fit_em(moe, x, y, random_state=0, max_iter=80)
        assert _nondecreasing(res.history)
        const = MixtureOfExperts(ConstantGate(2), LinearGaussianExpert(0, covariance=cov, n_experts=2),
                                 expert_features=[])
        rc = fit_em(const, x, y, random_state=0, max_iter=80)
        assert res.history[-1] >= rc.history[-1] - 1e-6  # a covariate gate can only help here
        assert sorted(moe.experts.coef[:, 0, 0].tolist()) == pytest.approx([-1.0, 2.0], abs=0.2)


# ------------------------------------------------------------------ EM monotonicity
def _two_lines(n=400, seed=0, d_y=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=D) * 2 - 1
    z = torch.rand(n, generator=g, dtype=D) < torch.sigmoid(4 * x[:, 0])
    y = 0.8 * x[:, 1] + torch.where(z, 2 * x[:, 0] + 1, -x[:, 0]) + 0.2 * torch.randn(n, generator=g, dtype=D)
    if d_y is not None:
        y = torch.stack([y, 0.5 * y + 0.1 * torch.randn(n, generator=g, dtype=D)], 1)
    return x, y


@pytest.mark.parametrize("d_y,cov,shared", [(None, "tied", ()), (None, "full", [1]), (None, "tied", [1]),
                                            (2, "tied", ()), (2, "tied_spherical", ()), (2, "full", [1])])
def test_em_with_tied_or_shared_never_decreases(d_y, cov, shared):
    x, y = _two_lines(d_y=d_y)
    moe = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, d_y, cov, n_experts=2, shared=shared))
    res = fit_em(moe, x, y, random_state=1, max_iter=60)
    assert _nondecreasing(res.history), np.diff(res.history).min()
    assert res.history[-1] > res.history[0]
    c = moe.experts.coef.detach()
    for j in shared:
        assert torch.equal(c[:, 1 + j], c[:1, 1 + j].expand(2, -1))
    if cov.startswith("tied"):
        cm = moe.experts.covariance_matrix().detach()
        assert torch.equal(cm[0], cm[1])


def test_em_with_offsets_never_decreases():
    x, y = _two_lines()
    xo = _with_offset(x)
    moe = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, n_experts=2, offset=True, shared=[1]),
                           gate_features=[0, 1], expert_features=[0, 1, 2])
    res = fit_em(moe, xo, y + xo[:, 2], random_state=1, max_iter=60)
    assert _nondecreasing(res.history)


# ------------------------------------------------------------------ errors
def test_bad_structure_arguments_are_named():
    with pytest.raises(ValueError, match="shared must list feature indices in 0..1"):
        LinearGaussianExpert(2, n_experts=2, shared=[2])
    with pytest.raises(ValueError, match=r"shared must be empty for an expert without features \(n_features=0\)"):
        LinearGaussianExpert(0, n_experts=2, shared=[0])
    with pytest.raises(ValueError, match="offset=True needs a scalar target"):
        LinearGaussianExpert(2, 3, offset=True)
    with pytest.raises(ValueError, match="covariance must be one of"):
        LinearGaussianExpert(2, covariance="tide")
    e = LinearGaussianExpert(2, offset=True)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\) \(2 features, then the offset\)"):
        e.log_prob(torch.zeros(4, 2, dtype=D), torch.zeros(4, dtype=D))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
        e.suff_stats(torch.zeros(4, 2, dtype=D), torch.zeros(4, dtype=D))


@pytest.mark.filterwarnings("ignore:EM did not converge")
@pytest.mark.parametrize("cov,shared", [("tied", ()), ("full", [0]), ("tied_diag", [1])])
def test_tied_and_shared_with_missing_target_coordinates(cov, shared):
    """The structure options combine with NaN coordinates of a vector y (marginalised): conformance and monotone EM."""
    x, y = regression_data(n=90, d=2, d_y=3, seed=1)
    y = y.clone()
    y[torch.rand(y.shape, generator=torch.Generator().manual_seed(3), dtype=D) < 0.2] = float("nan")
    check_expert(lambda: LinearGaussianExpert(2, 3, cov, n_experts=2, shared=shared), x, y)
    moe = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, 3, cov, n_experts=2, shared=shared))
    res = fit_em(moe, x, y, random_state=0, max_iter=30, tol=0.0)
    assert _nondecreasing(res.history)
