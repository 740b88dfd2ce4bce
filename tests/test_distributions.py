"""Predictive mixtures (moekit.distributions), by property: moments, log-density, CDF and
quantiles, nested leaves, marginals, and the Poisson / Student-t wrappers."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import Categorical, Independent, MultivariateNormal, Normal

from moekit.distributions import (
    MixtureDistribution,
    Poisson,
    StudentT,
    check_scalar,
    covariance,
    flatten_leaves,
    marginal,
)

D = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _lw(n, k, seed):
    return torch.log_softmax(torch.randn(n, k, generator=_gen(seed), dtype=D), -1)


def _normal_mix(n=4, k=3, seed=0):
    g = _gen(seed)
    mu = 3 * torch.randn(n, k, generator=g, dtype=D)
    sd = 0.3 + torch.rand(n, k, generator=g, dtype=D)
    return MixtureDistribution(_lw(n, k, seed + 1), Normal(mu, sd))


def _mvn_mix(n=3, k=2, d=3, seed=0):
    g = _gen(seed)
    mu = 2 * torch.randn(n, k, d, generator=g, dtype=D)
    a = torch.randn(n, k, d, d, generator=g, dtype=D)
    cov = a @ a.transpose(-1, -2) + 0.5 * torch.eye(d, dtype=D)
    return MixtureDistribution(_lw(n, k, seed + 1), MultivariateNormal(mu, covariance_matrix=cov))


# ----------------------------------------------------------------- moments
def test_mean_and_variance_follow_the_law_of_total_variance():
    mix = _normal_mix()
    w, mu, var = mix.weights, mix.components.mean, mix.components.variance
    mean = (w * mu).sum(1)
    torch.testing.assert_close(mix.mean, mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(mix.variance, (w * (var + mu**2)).sum(1) - mean**2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mix.stddev, mix.variance.sqrt())
    torch.testing.assert_close(mix.covariance_matrix[:, 0, 0], mix.variance)


def test_moments_match_monte_carlo():
    torch.manual_seed(0)
    mix = _mvn_mix()
    s = mix.sample((200_000,))  # (S, n, d)
    assert s.shape == (200_000, 3, 3)
    np.testing.assert_allclose(s.mean(0), mix.mean, atol=0.03)
    cov_mc = torch.einsum("sni,snj->nij", s - s.mean(0), s - s.mean(0)) / s.shape[0]
    np.testing.assert_allclose(cov_mc, mix.covariance_matrix, rtol=0.03, atol=0.05)
    np.testing.assert_allclose(torch.diagonal(mix.covariance_matrix, dim1=-2, dim2=-1), mix.variance, rtol=1e-12)


def test_list_of_components_equals_the_stacked_form():
    mix = _normal_mix()
    listed = MixtureDistribution(mix.log_weights, [Normal(mix.components.loc[:, k], mix.components.scale[:, k])
                                                   for k in range(3)])
    y = torch.linspace(-4, 4, 4, dtype=D)
    torch.testing.assert_close(listed.log_prob(y), mix.log_prob(y), rtol=0, atol=1e-14)
    torch.testing.assert_close(listed.mean, mix.mean, rtol=0, atol=1e-14)
    torch.testing.assert_close(listed.variance, mix.variance, rtol=0, atol=1e-14)
    torch.testing.assert_close(listed.cdf(y), mix.cdf(y), rtol=0, atol=1e-14)


def test_covariance_of_a_diagonal_family_is_the_diagonal_matrix():
    ind = Independent(Normal(torch.zeros(2, 3, dtype=D), torch.tensor([1.0, 2.0, 3.0], dtype=D).expand(2, 3)), 1)
    assert torch.equal(covariance(ind)[0], torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=D)))
    mvn = MultivariateNormal(torch.zeros(3, dtype=D), covariance_matrix=2 * torch.eye(3, dtype=D))
    assert torch.equal(covariance(mvn), mvn.covariance_matrix)


# ------------------------------------------------------------- log-density
def test_log_prob_is_the_logsumexp_of_the_weighted_components():
    mix = _normal_mix()
    y = torch.tensor([[-1.0, 0.0, 0.5, 2.0], [3.0, -3.0, 0.0, 1.0]], dtype=D)  # (m, n)
    expected = torch.logsumexp(mix.log_weights + mix.components.log_prob(y[..., None]), dim=-1)
    torch.testing.assert_close(mix.log_prob(y), expected, rtol=0, atol=0)
    vec = _mvn_mix()
    yv = torch.randn(3, 3, generator=_gen(5), dtype=D)
    comp = torch.stack([MultivariateNormal(vec.components.loc[:, k], vec.components.covariance_matrix[:, k])
                        .log_prob(yv) for k in range(2)], -1)
    torch.testing.assert_close(vec.log_prob(yv), torch.logsumexp(vec.log_weights + comp, -1), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------- CDF and quantiles
def test_cdf_and_icdf_round_trip():
    mix = _normal_mix(n=5, k=3, seed=2)
    for q in (1e-4, 0.1, 0.5, 0.9, 0.9999):
        y = mix.icdf(q)
        torch.testing.assert_close(mix.cdf(y), torch.full((5,), q, dtype=D), rtol=0, atol=1e-10)
    y = torch.linspace(-2, 2, 5, dtype=D)  # levels well inside (0, 1)
    back = mix.icdf(mix.cdf(y))
    # exact up to the flatness of F: the error in y times the density is the error in level
    assert float(((back - y).abs() * mix.log_prob(y).exp()).max()) < 1e-10
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        mix.icdf(1.0)


def test_quantiles_are_monotone_in_the_level():
    mix = _normal_mix(n=6, k=4, seed=3)
    qs = mix.quantiles(np.linspace(0.01, 0.99, 25))
    assert qs.shape == (6, 25)
    assert bool((qs[:, 1:] > qs[:, :-1]).all())


def test_cdf_and_quantiles_need_scalar_y():
    vec = _mvn_mix()
    with pytest.raises(ValueError, match="cdf is defined for scalar y only; this mixture has event shape \\(3,\\)"):
        vec.cdf(torch.zeros(3, 3, dtype=D))
    with pytest.raises(ValueError, match="icdf is defined for scalar y only"):
        vec.icdf(0.5)
    with pytest.raises(ValueError, match="hdr is defined for scalar y only"):
        check_scalar(vec, "hdr")
    check_scalar(_normal_mix(), "hdr")


# ------------------------------------------------------------ nested leaves
def _nested():
    """A two-level mixture: [inner stacked Normal mixture, a Normal, a Student-t], and its flat twin."""
    n = 4
    g = _gen(7)
    inner_c = Normal(torch.randn(n, 2, generator=g, dtype=D), 0.5 + torch.rand(n, 2, generator=g, dtype=D))
    b = Normal(torch.randn(n, generator=g, dtype=D), torch.ones(n, dtype=D))
    t = StudentT(torch.full((n,), 5.0, dtype=D), torch.randn(n, generator=g, dtype=D), torch.ones(n, dtype=D))
    inner_lw, outer_lw = _lw(n, 2, 8), _lw(n, 3, 9)
    nested = MixtureDistribution(outer_lw, [MixtureDistribution(inner_lw, inner_c), b, t])
    flat_lw = torch.cat([outer_lw[:, :1] + inner_lw, outer_lw[:, 1:]], 1)
    flat = MixtureDistribution(flat_lw, [Normal(inner_c.loc[:, 0], inner_c.scale[:, 0]),
                                         Normal(inner_c.loc[:, 1], inner_c.scale[:, 1]), b, t])
    return nested, flat


def test_flattening_a_nested_mixture_gives_the_flat_mixture():
    nested, flat = _nested()
    groups = flatten_leaves(nested)
    shapes = [(tuple(g.log_weights.shape), g.stacked) for g in groups]
    assert shapes == [((4, 2), True), ((4, 1), False), ((4, 1), False)]
    lw = torch.cat([g.log_weights for g in groups], 1)
    torch.testing.assert_close(lw, flat.log_weights, rtol=0, atol=0)
    torch.testing.assert_close(torch.logsumexp(lw, 1), torch.zeros(4, dtype=D), rtol=0, atol=1e-14)
    means = torch.cat([g.attr("mean") for g in groups], 1)
    torch.testing.assert_close(means, flat.component_means, rtol=0, atol=0)
    y = torch.linspace(-3, 3, 7, dtype=D)[:, None].expand(7, 4)
    torch.testing.assert_close(nested.log_prob(y), flat.log_prob(y), rtol=1e-13, atol=1e-13)
    leaf_lp = torch.cat([g.log_weights + (g.dist.log_prob(y[..., None]) if g.stacked else g.dist.log_prob(y)[..., None])
                         for g in groups], -1)
    torch.testing.assert_close(torch.logsumexp(leaf_lp, -1), flat.log_prob(y), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(nested.mean, flat.mean, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(nested.cdf(y), flat.cdf(y), rtol=1e-13, atol=1e-13)


def test_a_flat_mixture_is_one_group_and_deep_nesting_adds_the_path_weights():
    mix = _normal_mix()
    (group,) = flatten_leaves(mix)
    assert group.stacked and group.dist is mix.components and group.log_weights is mix.log_weights
    deep = MixtureDistribution(torch.zeros(4, 1, dtype=D), [MixtureDistribution(torch.zeros(4, 1, dtype=D), [mix])])
    (g2,) = flatten_leaves(deep)
    torch.testing.assert_close(g2.log_weights, mix.log_weights, rtol=0, atol=0)


# ----------------------------------------------------------------- marginals
def test_marginal_of_a_vector_gaussian_mixture_is_the_mixture_of_component_marginals():
    mix = _mvn_mix(seed=4)
    y = torch.linspace(-3, 3, 5, dtype=D)[:, None].expand(5, 3)
    for j in range(3):
        m = marginal(mix, j)
        assert m.event_shape == () and isinstance(m.components, Normal)
        comp = Normal(mix.components.loc[..., j], mix.components.covariance_matrix[..., j, j].sqrt())
        expected = torch.logsumexp(mix.log_weights + comp.log_prob(y[..., None]), -1)
        torch.testing.assert_close(m.log_prob(y), expected, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(m.mean, mix.mean[:, j], rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(m.variance, mix.covariance_matrix[:, j, j], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(marginal(mix, -1).mean, marginal(mix, 2).mean, rtol=0, atol=0)
    with pytest.raises(ValueError, match="target must be an integer index into the 3 target columns, got 3"):
        marginal(mix, 3)
    scalar = _normal_mix()
    assert marginal(scalar, 0) is scalar


def test_marginal_of_nested_and_student_t_components():
    n = 2
    ind_t = Independent(StudentT(torch.full((n, 2), 3.0, dtype=D), torch.tensor([[1.0, -1.0]], dtype=D).expand(n, 2),
                                 torch.tensor([[1.0, 2.0]], dtype=D).expand(n, 2)), 1)
    ind_n = Independent(Normal(torch.zeros(n, 2, dtype=D), torch.tensor([[0.5, 3.0]], dtype=D).expand(n, 2)), 1)
    inner = MixtureDistribution(_lw(n, 2, 0), [ind_t, ind_n])
    mix = MixtureDistribution(_lw(n, 2, 1), [inner, ind_n])
    m = marginal(mix, 1)
    assert isinstance(m.components[0], MixtureDistribution)
    assert isinstance(m.components[0].components[0], StudentT)  # the wrapper, with a CDF
    y = torch.tensor([0.3, -2.0], dtype=D)
    t1 = torch.distributions.StudentT(*torch.tensor([3.0, -1.0, 2.0], dtype=D))
    n1 = Normal(*torch.tensor([0.0, 3.0], dtype=D))
    leaf_lw = torch.cat([g.log_weights for g in flatten_leaves(mix)], 1)
    expected = torch.logsumexp(leaf_lw + torch.stack([t1.log_prob(y), n1.log_prob(y), n1.log_prob(y)], -1), -1)
    torch.testing.assert_close(m.log_prob(y), expected, rtol=1e-12, atol=1e-12)
    m.cdf(y)  # every leaf has a CDF
    with pytest.raises(TypeError, match="Gaussian and Student-t components, not for Independent"):
        marginal(MixtureDistribution(torch.zeros(1, 1), [Independent(Categorical(torch.ones(1, 2, 3)), 1)]), 0)


# --------------------------------------------------------------- wrappers
def test_poisson_wrapper_has_a_cdf_and_takes_integer_counts():
    rate = torch.tensor([0.5, 3.0, 10.0], dtype=D)
    p = Poisson(rate)
    k = torch.tensor([0, 2, 12])
    torch.testing.assert_close(p.log_prob(k), torch.distributions.Poisson(rate).log_prob(k.to(D)), rtol=0, atol=0)
    for kk in (-1.0, 0.0, 2.5, 7.0):
        expected = stats.poisson.cdf(math.floor(kk), rate.numpy())
        np.testing.assert_allclose(p.cdf(torch.full((3,), kk, dtype=D)), expected, rtol=1e-12, atol=1e-15)
    mix = MixtureDistribution(torch.zeros(3, 1, dtype=D), Poisson(rate[:, None]))
    q = mix.quantiles([0.1, 0.5, 0.9]).numpy()
    np.testing.assert_array_equal(q, stats.poisson.ppf([0.1, 0.5, 0.9], rate.numpy()[:, None]))


def test_student_t_wrapper_cdf_matches_scipy_and_the_mixture_quantiles_invert_it():
    df = torch.tensor([1.0, 2.5, 30.0], dtype=D)
    t = StudentT(df, torch.tensor([0.0, 1.0, -2.0], dtype=D), torch.tensor([1.0, 0.5, 2.0], dtype=D))
    y = torch.tensor([0.7, -0.3, 1.0], dtype=D)
    loc, scale = [0.0, 1.0, -2.0], [1.0, 0.5, 2.0]
    np.testing.assert_allclose(t.cdf(y), stats.t.cdf(y.numpy(), df.numpy(), loc=loc, scale=scale), rtol=1e-12)
    mix = MixtureDistribution(torch.zeros(3, 1, dtype=D), StudentT(df[:, None], t.loc[:, None], t.scale[:, None]))
    q = mix.icdf(0.95)
    np.testing.assert_allclose(q, stats.t.ppf(0.95, df.numpy(), loc=loc, scale=scale), rtol=1e-9)
