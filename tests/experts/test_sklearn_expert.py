"""Tests of moekit.experts.sklearn.SklearnExpert."""

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsRegressor
from sklearn.tree import DecisionTreeRegressor
from sklearn.utils.validation import check_is_fitted

from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate, fit_em
from moekit.experts.sklearn import SklearnExpert

F64 = torch.float64


def _linear_data(n=80, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = 1.5 - 2.0 * x[:, 0] + 0.5 * x[:, -1] + 0.3 * torch.randn(n, generator=g, dtype=F64)
    w = torch.rand(n, generator=g, dtype=F64)
    w[:5] = 0.0  # rows with no weight
    return x, y, w


def _two_branch(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n, 1))
    y = np.where(x[:, 0] < 0.5, np.where(x[:, 0] < 0.25, 1.0, -1.0), 3.0 * x[:, 0]) + 0.05 * rng.normal(size=n)
    return x, y


def _monotone(history, tol=1e-9):
    return all(b >= a - tol for a, b in zip(history, history[1:]))


# ---------------------------------------------------------- equivalence
@pytest.mark.parametrize("d", [1, 3])
def test_linear_regression_equals_linear_gaussian_expert(d):
    x, y, w = _linear_data(d=d)
    sk = SklearnExpert(LinearRegression(), d).fit_weighted(x, y, w)
    lg = LinearGaussianExpert(d).fit_weighted(x, y, w)
    with torch.no_grad():
        ds, dl = sk(x), lg(x)
        torch.testing.assert_close(ds.mean, dl.mean, rtol=0, atol=1e-8)
        torch.testing.assert_close(ds.variance, dl.variance, rtol=0, atol=1e-8)
        torch.testing.assert_close(sk.log_prob(x, y), lg.log_prob(x, y), rtol=1e-7, atol=1e-8)
    # coefficients through the fitted estimator
    coef = lg.coef.detach()[0, :, 0].numpy()
    np.testing.assert_allclose(sk.estimator_.intercept_, coef[0], atol=1e-8)
    np.testing.assert_allclose(sk.estimator_.coef_, coef[1:], atol=1e-8)
    assert sk.n_parameters() == lg.n_parameters() == d + 2


def test_variance_is_weighted_mse_and_floored():
    x, y, w = _linear_data()
    e = SklearnExpert(DecisionTreeRegressor(max_depth=2, random_state=0), 2).fit_weighted(x, y, w)
    pred = e.estimator_.predict(x.numpy())
    mse = float(np.sum(w.numpy() * (y.numpy() - pred) ** 2) / w.numpy().sum())
    assert e.variance.shape == (1,) and e.log_scale.shape == (1,)
    assert math.isclose(float(e.variance[0]), mse, rel_tol=1e-12)
    # a perfect fit hits the floor
    e2 = SklearnExpert(LinearRegression(), 2, var_floor=1e-4).fit_weighted(x, 3 * x[:, 0] - x[:, 1])
    assert math.isclose(float(e2(x).stddev[0]), 1e-2, rel_tol=1e-12)


def test_forward_shapes_and_no_gradient():
    x, y, w = _linear_data()
    e = SklearnExpert(Ridge(alpha=1.0), 2).fit_weighted(x, y, w)
    d = e(x)
    assert d.batch_shape == (80,) and d.event_shape == ()
    assert not d.mean.requires_grad
    assert e.log_prob(x, y).shape == (80,)
    torch.testing.assert_close(e.log_prob(x, y[:, None]), e.log_prob(x, y))
    assert list(e.parameters()) == []
    assert not e.stacked and e.n_experts is None
    assert e.has_suff_stats is False and e.m_step_exact is True


# ------------------------------------------------------------------ EM
def test_fit_em_tree_and_linear_improves():
    x, y = _two_branch()
    experts = [SklearnExpert(DecisionTreeRegressor(max_depth=3, random_state=0), 1), SklearnExpert(LinearRegression(), 1)]
    moe = MixtureOfExperts(SoftmaxGate(1, 2), experts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_em(moe, x, y, max_iter=50, random_state=0)
    assert res.mean_log_likelihood > res.history[0] + 0.1
    assert _monotone(res.history), res.history
    # better than one linear-Gaussian expert on all the data
    lg = LinearGaussianExpert(1).fit_weighted(torch.as_tensor(x), torch.as_tensor(y))
    lin_ll = float(lg.log_prob(torch.as_tensor(x), torch.as_tensor(y)).detach().mean())
    assert res.mean_log_likelihood > lin_ll + 0.5
    m = moe(torch.as_tensor(x))
    assert m.mean.shape == (300,) and torch.isfinite(m.mean).all()


def test_mixed_families_in_one_list():
    x, y = _two_branch(seed=1)
    moe = MixtureOfExperts(SoftmaxGate(1, 2), [SklearnExpert(LinearRegression(), 1), LinearGaussianExpert(1)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_em(moe, x, y, max_iter=30, random_state=0)
    assert _monotone(res.history), res.history
    assert res.mean_log_likelihood > res.history[0]
    xt = torch.as_tensor(x)
    assert moe.expert_log_prob(xt, torch.as_tensor(y)).shape == (300, 2)
    assert moe.n_parameters() == 2 + 3 + 3


def test_fit_em_with_restarts_deep_copies():
    x, y = _two_branch(n=120, seed=2)
    moe = MixtureOfExperts(
        SoftmaxGate(1, 2), [SklearnExpert(DecisionTreeRegressor(max_depth=2, random_state=0), 1), SklearnExpert(LinearRegression(), 1)]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_em(moe, x, y, max_iter=10, n_init=2, random_state=0)
    assert len(res.init_mean_log_likelihoods) == 2
    with torch.no_grad():
        ll = float(moe.log_prob(torch.as_tensor(x), torch.as_tensor(y)).mean())
    assert math.isclose(ll, res.mean_log_likelihood, rel_tol=1e-9)


# ---------------------------------------------------------- monotonicity
class _MeanPlusOffset(RegressorMixin, BaseEstimator):
    """Predicts the weighted mean of y plus a fixed (possibly bad) offset."""

    def __init__(self, offset=0.0):
        self.offset = offset

    def fit(self, X, y, sample_weight=None):
        self.mean_ = float(np.average(y, weights=sample_weight)) + self.offset
        return self

    def predict(self, X):
        return np.full(len(X), self.mean_)


@pytest.mark.parametrize("monotone", [True, False])
def test_worse_refit_is_rejected_when_monotone(monotone):
    x, y, w = _linear_data()
    e = SklearnExpert(_MeanPlusOffset(0.0), 2, monotone=monotone).fit_weighted(x, y, w)
    before = float((w * e.log_prob(x, y)).sum())
    e.estimator = _MeanPlusOffset(5.0)  # the next refit is far worse
    e.fit_weighted(x, y, w)
    after = float((w * e.log_prob(x, y)).sum())
    if monotone:
        assert after >= before - 1e-9
        assert e.estimator_.offset == 0.0
    else:
        assert after < before
        assert e.estimator_.offset == 5.0


# ----------------------------------------------------------------- errors
def test_estimator_without_sample_weight_raises_type_error():
    with pytest.raises(TypeError, match="KNeighborsRegressor") as info:
        SklearnExpert(KNeighborsRegressor(), 1)
    assert "sample_weight" in str(info.value)
    with pytest.raises(TypeError, match="classifier"):
        SklearnExpert(LogisticRegression(), 1)
    with pytest.raises(TypeError, match="instance"):
        SklearnExpert(LinearRegression, 1)
    with pytest.raises(TypeError, match="fit"):
        SklearnExpert(object(), 1)


def test_not_fitted_and_vector_y_errors():
    e = SklearnExpert(LinearRegression(), 1)
    x = torch.zeros(4, 1, dtype=F64)
    with pytest.raises(NotFittedError, match="not fitted"):
        e(x)
    with pytest.raises(NotFittedError):
        e.n_parameters()
    with pytest.raises(ValueError, match="scalar y"):
        e.fit_weighted(x, torch.zeros(4, 2, dtype=F64))
    e.fit_weighted(torch.arange(4.0, dtype=F64)[:, None], torch.arange(4.0, dtype=F64)[:, None])  # (n, 1) is fine
    with pytest.raises(ValueError, match="scalar y"):
        e.log_prob(x, torch.zeros(4, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 1\)"):
        e(torch.zeros(4, 2, dtype=F64))
    with pytest.raises(ValueError, match="min_weight"):
        SklearnExpert(LinearRegression(), 1).fit_weighted(x, torch.zeros(4, dtype=F64), torch.zeros(4, dtype=F64))
    with pytest.raises(TypeError, match="stacked"):
        SklearnExpert.stack([e, copy.deepcopy(e)])


# ------------------------------------------------------------ side effects
def test_callers_arrays_and_estimator_unchanged():
    x, y = _two_branch(n=150, seed=3)
    w = np.random.default_rng(0).uniform(0.5, 2.0, size=150)
    x0, y0, w0 = x.copy(), y.copy(), w.copy()
    template = DecisionTreeRegressor(max_depth=3, random_state=0)
    experts = [SklearnExpert(template, 1), SklearnExpert(LinearRegression(), 1)]
    moe = MixtureOfExperts(SoftmaxGate(1, 2), experts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit_em(moe, x, y, sample_weight=w, max_iter=5, random_state=0)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(w, w0)
    with pytest.raises(NotFittedError):
        check_is_fitted(template)  # the template is cloned, never fitted
    # direct fit_weighted with tensors
    xt, yt, wt = torch.as_tensor(x), torch.as_tensor(y), torch.as_tensor(w)
    xc, yc, wc = xt.clone(), yt.clone(), wt.clone()
    SklearnExpert(LinearRegression(), 1).fit_weighted(xt, yt, wt)
    assert torch.equal(xt, xc) and torch.equal(yt, yc) and torch.equal(wt, wc)


def test_deepcopy_is_independent():
    x, y, w = _linear_data()
    e = SklearnExpert(LinearRegression(), 2).fit_weighted(x, y, w)
    c = copy.deepcopy(e)
    torch.testing.assert_close(c.log_prob(x, y), e.log_prob(x, y), rtol=0, atol=0)
    assert c.estimator_ is not e.estimator_
    c.fit_weighted(x, -y)
    assert not torch.allclose(c(x).mean, e(x).mean)
    assert e.unstack()[0].estimator_ is not e.estimator_
