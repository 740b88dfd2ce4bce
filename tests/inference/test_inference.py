"""Modes, branches and intervals of conditional mixtures (moekit.inference), by property."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch.distributions import Gumbel, Independent, MultivariateNormal, Normal, Poisson

from moekit import MixtureDistribution, MoEClassifier, MoERegressor
from moekit.distributions import StudentT
from moekit.inference import (
    branches,
    central_interval,
    find_modes,
    hdr,
    in_intervals,
    interval_length,
)

D = torch.float64


def _random_gmm(n, k, d, seed, spread=2.0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, k, d, generator=g, dtype=D) * spread
    a = torch.randn(n, k, d, d, generator=g, dtype=D) * scale
    cov = a @ a.transpose(-1, -2) + 0.2 * torch.eye(d, dtype=D)
    lw = torch.log_softmax(torch.randn(n, k, generator=g, dtype=D), -1)
    return MixtureDistribution(lw, MultivariateNormal(mu, covariance_matrix=cov))


def _grad_hess(mix, x):
    """Gradient and Hessian of log p at x (n, d) by autograd (vector y)."""
    x = x.clone().requires_grad_(True)
    lp = mix.log_prob(x).sum()
    (g,) = torch.autograd.grad(lp, x, create_graph=True)
    rows = [torch.autograd.grad(g[:, j].sum(), x, retain_graph=True)[0] for j in range(x.shape[1])]
    return g.detach(), torch.stack(rows, -1).detach()


# ------------------------------------------------------------------ modes
def test_well_separated_modes_are_the_component_means():
    mu = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], [[-20.0, 5.0], [20.0, 5.0], [0.0, -30.0]]], dtype=D)
    cov = torch.diag_embed(torch.tensor([[[1.0, 2.0], [0.5, 0.5], [2.0, 1.0]]] * 2, dtype=D))
    w = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=D)
    mix = MixtureDistribution(w.log(), MultivariateNormal(mu, covariance_matrix=cov))
    res = find_modes(mix)
    order = torch.argsort(w, dim=1, descending=True)
    np.testing.assert_allclose(res.weights, w.gather(1, order), atol=1e-12)
    np.testing.assert_allclose(res.modes, mu.gather(1, order[..., None].expand(-1, -1, 2)), atol=1e-6)
    np.testing.assert_allclose(res.covariances, cov.gather(1, order[..., None, None].expand(-1, -1, 2, 2)), rtol=1e-4, atol=1e-12)
    assert res.n_modes.tolist() == [3, 3]
    modes, weights = res  # unpacks as a pair
    assert modes.shape == (2, 3, 2) and weights.shape == (2, 3)


def test_scalar_modes_shapes_and_values():
    lw = torch.tensor([[0.7, 0.3], [0.2, 0.8]], dtype=D).log()
    mix = MixtureDistribution(lw, Normal(torch.tensor([[-5.0, 5.0], [0.0, 20.0]], dtype=D), torch.ones(2, 2, dtype=D)))
    modes, weights = find_modes(mix)
    assert modes.shape == (2, 2)
    np.testing.assert_allclose(modes, [[-5.0, 5.0], [20.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(weights, [[0.7, 0.3], [0.8, 0.2]], atol=1e-10)
    cov = find_modes(mix).covariances
    np.testing.assert_allclose(cov, np.ones((2, 2)), rtol=1e-5)


def test_unimodal_mixture_returns_one_mode_with_all_mass():
    # two equal Gaussians closer than 2 sd: one mode, at the midpoint
    mix = MixtureDistribution(torch.full((1, 2), 0.5, dtype=D).log(),
                              Normal(torch.tensor([[-0.9, 0.9]], dtype=D), torch.ones(1, 2, dtype=D)))
    res = find_modes(mix, min_weight=0.0)
    assert res.n_modes.tolist() == [1]
    assert res.modes.shape == (1, 1)
    assert abs(res.modes[0, 0].item()) < 1e-7
    assert abs(res.weights[0, 0].item() - 1.0) < 1e-12
    # the local covariance is the inverse curvature of log p at the top
    x = torch.zeros(1, dtype=D, requires_grad=True)
    (g,) = torch.autograd.grad(mix.log_prob(x).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    np.testing.assert_allclose(res.covariances[0, 0].item(), -1 / h.item(), rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", ["newton", "fixed_point"])
def test_modes_are_local_maxima_of_random_mixtures(seed, method):
    mix = _random_gmm(300, 5, 2, seed)
    res = find_modes(mix, min_weight=0.0, method=method)
    ok = ~torch.isnan(res.modes[..., 0])
    pts = res.modes[ok]
    rows = torch.nonzero(ok)[:, 0]
    sub = MixtureDistribution(mix.log_weights[rows], MultivariateNormal(
        mix.components.loc[rows], scale_tril=mix.components.scale_tril[rows]))
    g, h = _grad_hess(sub, pts)
    scale = sub.components.covariance_matrix.diagonal(dim1=-2, dim2=-1).max().sqrt()
    assert g.abs().max() * scale < 1e-5
    assert (torch.linalg.eigvalsh(h).amax(-1) < 0).all()  # strict local maxima
    # masses: positive, sum to one, sorted
    w = res.weights
    np.testing.assert_allclose(torch.nansum(w, 1), 1.0, atol=1e-12)
    assert (torch.nan_to_num(w[:, 1:], nan=-1) <= torch.nan_to_num(w[:, :-1], nan=2) + 1e-15).all()
    # no two modes of a row coincide
    d = torch.cdist(res.modes.nan_to_num(1e9), res.modes.nan_to_num(1e9))
    eye = torch.eye(d.shape[1], dtype=torch.bool)
    both = ok[:, :, None] & ok[:, None, :] & ~eye
    assert (d[both] > 1e-4).all()


def test_newton_and_fixed_point_find_the_same_modes():
    mix = _random_gmm(200, 4, 2, 7)
    a = find_modes(mix, min_weight=0.0, method="newton")
    b = find_modes(mix, min_weight=0.0, method="fixed_point", tol=1e-11, max_iter=5000)
    assert torch.equal(a.n_modes, b.n_modes)

    def by_location(r):
        key = r.modes[..., 0].nan_to_num(1e9)
        o = torch.argsort(key, 1)
        return r.modes.gather(1, o[..., None].expand_as(r.modes)).nan_to_num(0), r.weights.gather(1, o).nan_to_num(0)

    (ma, wa), (mb, wb) = by_location(a), by_location(b)
    np.testing.assert_allclose(ma, mb, atol=1e-5)  # the same modes
    # the same masses, except where a component mean lies near the boundary between two basins
    # (each method's climb may then end on either side)
    same = (wa - wb).abs().amax(1) < 1e-12
    assert same.double().mean() > 0.97


def test_every_mode_of_a_1d_mixture_matches_a_dense_grid():
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        mu = torch.randn(1, 6, generator=g, dtype=D) * 3
        sd = torch.rand(1, 6, generator=g, dtype=D) + 0.3
        lw = torch.log_softmax(torch.randn(1, 6, generator=g, dtype=D), -1)
        mix = MixtureDistribution(lw, Normal(mu, sd))
        grid = torch.linspace(-15, 15, 300001, dtype=D)
        lp = mix.log_prob(grid[:, None])[:, 0]
        peaks = grid[1:-1][(lp[1:-1] > lp[:-2]) & (lp[1:-1] > lp[2:])]
        res = find_modes(mix, min_weight=0.0)
        found = torch.sort(res.modes[0][~torch.isnan(res.modes[0])]).values
        assert len(found) == len(peaks)
        np.testing.assert_allclose(found, peaks, atol=2e-4)


def test_stacked_and_list_components_and_nesting_agree():
    mix = _random_gmm(50, 3, 2, 3)
    comps = [MultivariateNormal(mix.components.loc[:, k], scale_tril=mix.components.scale_tril[:, k]) for k in range(3)]
    listed = MixtureDistribution(mix.log_weights, comps)
    # the same mixture as a two-level hierarchy: (0) and (1, 2)
    lw = mix.log_weights
    inner = MixtureDistribution(lw[:, 1:] - torch.logsumexp(lw[:, 1:], 1, keepdim=True), comps[1:])
    nested = MixtureDistribution(torch.stack([lw[:, 0], torch.logsumexp(lw[:, 1:], 1)], 1), [comps[0], inner])
    a, b, c = (find_modes(m, min_weight=0.0) for m in (mix, listed, nested))
    for other in (b, c):
        np.testing.assert_allclose(a.modes.nan_to_num(0), other.modes.nan_to_num(0), atol=1e-7)
        np.testing.assert_allclose(a.weights.nan_to_num(0), other.weights.nan_to_num(0), atol=1e-12)
    bm, bw = branches(nested)
    assert bm.shape == (50, 3, 2)
    np.testing.assert_allclose(torch.sort(bw, 1).values, torch.sort(lw.exp(), 1).values, atol=1e-12)


def test_independent_normal_and_student_t_components():
    loc = torch.tensor([[[0.0, 0.0], [8.0, 8.0]]], dtype=D)
    sc = torch.tensor([[[1.0, 0.5], [0.7, 2.0]]], dtype=D)
    lw = torch.tensor([[0.4, 0.6]], dtype=D).log()
    for comps in (Independent(Normal(loc, sc), 1), Independent(StudentT(torch.full_like(sc, 3.0), loc, sc), 1)):
        res = find_modes(MixtureDistribution(lw, comps))
        np.testing.assert_allclose(res.modes[0], loc[0].flip(0), atol=1e-5)
        np.testing.assert_allclose(res.weights[0], [0.6, 0.4], atol=1e-4)
    # scalar Student-t mixtures that overlap: the result is a stationary point with negative curvature
    mix = MixtureDistribution(torch.tensor([[0.5, 0.5]], dtype=D).log(),
                              StudentT(torch.tensor([[2.5, 4.0]], dtype=D), torch.tensor([[0.0, 2.5]], dtype=D),
                                       torch.tensor([[1.0, 0.6]], dtype=D)))
    res = find_modes(mix, min_weight=0.0)
    for m in res.modes[0][~torch.isnan(res.modes[0])]:
        x = m.clone().reshape(1).requires_grad_(True)
        (g,) = torch.autograd.grad(mix.log_prob(x).sum(), x)
        assert abs(g.item()) < 1e-6


def test_mixed_families_in_a_list():
    lw = torch.tensor([[0.5, 0.5]], dtype=D).log()
    comps = [Normal(torch.tensor([0.0], dtype=D), torch.tensor([1.0], dtype=D)),
             StudentT(torch.tensor([5.0], dtype=D), torch.tensor([10.0], dtype=D), torch.tensor([1.0], dtype=D))]
    mix = MixtureDistribution(lw, comps)
    res = find_modes(mix)
    np.testing.assert_allclose(torch.sort(res.modes[0]).values, [0.0, 10.0], atol=1e-3)  # tails shift them a little
    x = res.modes[0].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(mix.log_prob(x[:, None].expand(2, 1)).sum(), x)
    assert g.abs().max() < 1e-8


def test_generic_fallback_for_other_continuous_families():
    # Gumbel has no closed form here: gradient ascent with autograd; its mode is loc
    lw = torch.tensor([[0.3, 0.7]], dtype=D).log()
    mix = MixtureDistribution(lw, Gumbel(torch.tensor([[0.0, 30.0]], dtype=D), torch.tensor([[1.0, 2.0]], dtype=D)))
    res = find_modes(mix)
    np.testing.assert_allclose(res.modes[0], [30.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(res.weights[0], [0.7, 0.3], atol=1e-6)
    assert res.covariances[0, 0] > 0


def test_discrete_components_are_refused_with_a_clear_error():
    mix = MixtureDistribution(torch.zeros(2, 1, dtype=D), Poisson(torch.ones(2, 1, dtype=D)))
    with pytest.raises(TypeError, match="continuous y.*Poisson"):
        find_modes(mix)
    with pytest.raises(TypeError, match="continuous y"):
        hdr(mix)


def test_max_modes_min_weight_padding_and_empty_components():
    mu = torch.tensor([[0.0, 10.0, 20.0, 30.0]], dtype=D).repeat(2, 1)
    w = torch.tensor([[0.5, 0.3, 0.195, 0.005], [1.0, 0.0, 0.0, 0.0]], dtype=D)
    with np.errstate(divide="ignore"):
        lw = w.log()  # -inf log weights: components that are switched off
    mix = MixtureDistribution(lw, Normal(mu, torch.ones_like(mu)))
    res = find_modes(mix)
    assert res.modes.shape == (2, 3)  # 30 (mass 0.005) is below min_weight=0.01
    assert res.n_modes.tolist() == [3, 1]
    assert torch.isnan(res.modes[1, 1:]).all() and torch.isnan(res.weights[1, 1:]).all()
    res2 = find_modes(mix, max_modes=5, min_weight=0.0)
    assert res2.modes.shape == (2, 5)
    assert res2.n_modes.tolist() == [4, 1]
    res3 = find_modes(mix, max_modes=1)
    np.testing.assert_allclose(res3.modes, [[0.0], [0.0]], atol=1e-8)


def test_float32_in_float32_out_and_user_data_untouched():
    mix64 = _random_gmm(20, 3, 2, 1)
    loc = mix64.components.loc.float()
    loc_copy = loc.clone()
    mix = MixtureDistribution(mix64.log_weights.float(), MultivariateNormal(loc, scale_tril=mix64.components.scale_tril.float()))
    res = find_modes(mix)
    assert res.modes.dtype == torch.float32 and res.weights.dtype == torch.float32
    assert torch.equal(loc, loc_copy)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"max_modes": 0}, "max_modes"), ({"min_weight": 1.5}, "min_weight"), ({"tol": -1.0}, "tol"),
     ({"merge_tol": 0}, "merge_tol"), ({"method": "bfgs"}, "method")],
)
def test_bad_options_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        find_modes(_random_gmm(2, 2, 2, 0), **kwargs)


def test_branches_sorted_by_weight():
    lw = torch.tensor([[0.1, 0.6, 0.3]], dtype=D).log()
    mix = MixtureDistribution(lw, Normal(torch.tensor([[1.0, 2.0, 3.0]], dtype=D), torch.ones(1, 3, dtype=D)))
    means, w = branches(mix)
    assert means.tolist() == [[2.0, 3.0, 1.0]]
    np.testing.assert_allclose(w, [[0.6, 0.3, 0.1]])
    means, w = branches(mix, sort=False)
    assert means.tolist() == [[1.0, 2.0, 3.0]]


# -------------------------------------------------------------- intervals
def test_hdr_of_a_gaussian_is_the_central_interval():
    mu = torch.tensor([[0.0], [3.0], [-1.0]], dtype=D)
    sd = torch.tensor([[1.0], [0.01], [25.0]], dtype=D)
    mix = MixtureDistribution(torch.zeros(3, 1, dtype=D), Normal(mu, sd))
    for level in (0.5, 0.9, 0.99):
        iv, mass = hdr(mix, level)
        assert iv.shape == (3, 1, 2)
        np.testing.assert_allclose(iv, central_interval(mix, level), rtol=1e-7, atol=1e-9 * sd.max().item())
        np.testing.assert_allclose(mass, level, atol=1e-8)


def test_hdr_of_a_bimodal_mixture_is_two_intervals_and_shortest():
    lw = torch.tensor([[0.6, 0.4], [0.5, 0.5]], dtype=D).log()
    mu = torch.tensor([[-4.0, 4.0], [-0.5, 0.5]], dtype=D)
    mix = MixtureDistribution(lw, Normal(mu, torch.ones(2, 2, dtype=D)))
    iv, mass = hdr(mix, 0.9)
    assert iv.shape == (2, 2, 2)
    assert torch.isfinite(iv[0]).all()  # separated: two intervals
    assert torch.isfinite(iv[1, 0]).all() and torch.isnan(iv[1, 1]).all()  # unimodal: one
    np.testing.assert_allclose(mass, 0.9, atol=1e-8)
    # the density is the same at every end point (a level set) ...
    ends = iv[0].reshape(-1)
    lp = mix.log_prob(ends[:, None].expand(4, 2))[:, 0]
    np.testing.assert_allclose(lp, lp[0].expand(4), atol=1e-6)
    # ... and the region is no longer than the central interval with the same probability
    ln, lc = interval_length(iv), interval_length(central_interval(mix, 0.9))
    assert ln[0] < lc[0] - 1.0  # much shorter when bimodal
    assert abs(ln[1] - lc[1]) < 1e-6  # equal for a symmetric unimodal density


def test_hdr_and_central_intervals_cover_at_their_level():
    g = torch.Generator().manual_seed(0)
    n = 2000
    mu = torch.randn(n, 3, generator=g, dtype=D) * 3
    sd = torch.rand(n, 3, generator=g, dtype=D) + 0.2
    lw = torch.log_softmax(torch.randn(n, 3, generator=g, dtype=D), -1)
    mix = MixtureDistribution(lw, Normal(mu, sd))
    with torch.random.fork_rng():
        torch.manual_seed(1)
        y = mix.sample()
    for level, iv in ((0.8, hdr(mix, 0.8)[0]), (0.5, central_interval(mix, 0.5))):
        cover = in_intervals(y, iv).double().mean().item()
        assert abs(cover - level) < 4 * math.sqrt(level * (1 - level) / n)


def test_hdr_bad_input():
    mix = _random_gmm(2, 2, 2, 0)
    with pytest.raises(ValueError, match="scalar y"):
        hdr(mix)
    scalar = MixtureDistribution(torch.zeros(1, 1, dtype=D), Normal(torch.zeros(1, 1, dtype=D), torch.ones(1, 1, dtype=D)))
    with pytest.raises(ValueError, match="level"):
        hdr(scalar, 1.0)
    with pytest.raises(ValueError, match="max_intervals"):
        hdr(scalar, 0.9, max_intervals=0)


def test_in_intervals_and_length():
    iv = np.array([[[0.0, 1.0], [2.0, 3.0]], [[0.0, 1.0], [np.nan, np.nan]]])
    assert in_intervals(np.array([2.5, 2.5]), iv).tolist() == [True, False]
    assert in_intervals(np.array([0.0, 1.0]), iv).tolist() == [True, True]
    np.testing.assert_allclose(interval_length(iv), [2.0, 1.0])
    with pytest.raises(ValueError, match="rows"):
        in_intervals(np.zeros(3), iv)


# ------------------------------------------------------------ estimators
def _two_branch_data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    branch = rng.integers(0, 2, n)
    y = np.where(branch == 0, 2 + x, -2 - x) + 0.05 * rng.normal(size=n)
    return x[:, None], y


def test_estimator_modes_branches_intervals():
    X, y = _two_branch_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MoERegressor(n_experts=2, n_init=3, random_state=0, gate="constant").fit(X, y)
    grid = np.array([[-0.5], [0.0], [0.5]])
    modes, weights = est.predict_modes(grid)
    assert isinstance(modes, np.ndarray) and modes.shape == (3, 2)
    truth = np.sort(np.column_stack([2 + grid[:, 0], -2 - grid[:, 0]]), 1)
    np.testing.assert_allclose(np.sort(modes, 1), truth, atol=0.05)
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-9)
    means, w = est.predict_branches(grid)
    assert means.shape == (3, 2) and w.shape == (3, 2)
    iv = est.predict_interval(grid, 0.9)
    assert iv.shape == (3, 2, 2)  # one interval around each branch
    c = est.predict_interval(grid, 0.9, kind="central")
    assert c.shape == (3, 1, 2)
    np.testing.assert_allclose(c[:, 0], est.predict_quantiles(grid, [0.05, 0.95]), atol=1e-8)
    with pytest.raises(ValueError, match="kind"):
        est.predict_interval(grid, kind="hpd")


def test_estimator_vector_y_and_classifier():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 1))
    Y = np.column_stack([X[:, 0], -X[:, 0]]) + 0.1 * rng.normal(size=(300, 2))
    est = MoERegressor(n_experts=1).fit(X, Y)
    modes, _ = est.predict_modes(X[:5])
    assert modes.shape == (5, 1, 2)
    np.testing.assert_allclose(modes[:, 0], est.predict(X[:5]), atol=1e-8)
    with pytest.raises(ValueError, match="scalar"):
        est.predict_interval(X[:5])
    clf = MoEClassifier(n_experts=1).fit(X, (X[:, 0] > 0).astype(int))
    assert not hasattr(clf, "predict_modes") and not hasattr(clf, "predict_interval")
