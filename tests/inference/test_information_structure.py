"""Standard errors of the model structure of issue 15: offsets, shared coefficients, tied variances,
intercept-only experts, the new families (binomial, Gamma, negative binomial, point mass, censored Gaussian).

Parameters common to all experts are reported once, in block "shared" with no component; offsets and trials are
known columns of x, not parameters. The K = 1 reductions equal statsmodels' standard errors."""

import numpy as np
import pytest
import statsmodels.api as sm
import torch

from moekit import (
    ConstantGate,
    LinearGaussianExpert,
    MixtureOfExperts,
    PoissonExpert,
    SoftmaxGate,
    fit_em,
)
from moekit import experts as E
from moekit._validation import incomplete_targets
from moekit.inference.information import observed_information

F64 = torch.float64


def _family(name):
    cls = getattr(E, name, None)
    if cls is None:
        pytest.skip(f"{name} has not landed")
    return cls


def _layout(info):
    return [(p.block, p.component, p.term) for p in info.parameters]


def _data(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, dtype=F64, generator=g)
    right = torch.rand(n, dtype=F64, generator=g) < torch.sigmoid(2.0 * x[:, 0])
    return g, x, right


def _finite(info):
    assert torch.isfinite(info.information).all()
    assert torch.isfinite(info.std_error).all() and (info.std_error > 0).all(), info.std_error
    assert info.warnings == []


def test_poisson_shared_coefficient_with_offset_equals_statsmodels_for_one_expert():
    g, x, _ = _data(500)
    off = torch.rand(500, dtype=F64, generator=g).log()  # log exposure
    y = torch.poisson((0.5 + 0.3 * x[:, 0] - 0.2 * x[:, 1] + off).exp(), generator=g)
    xx = torch.cat([x, off[:, None]], 1)  # the offset travels as x's last column
    m = MixtureOfExperts(ConstantGate(1), PoissonExpert(2, n_experts=1, offset=True, shared=[0]))
    fit_em(m, xx, y, random_state=0, tol=1e-13, max_iter=500)
    info = observed_information(m, xx, y)
    assert _layout(info) == [("expert", 0, 0), ("expert", 0, 2), ("shared", None, 1)]
    ref = sm.GLM(y.numpy(), sm.add_constant(x.numpy()), family=sm.families.Poisson(), offset=off.numpy()).fit(tol=1e-13)
    order = [0, 2, 1]  # intercept, x1 (own), x0 (shared)
    np.testing.assert_allclose(info.estimate.numpy(), ref.params[order], rtol=1e-6)
    np.testing.assert_allclose(info.std_error.numpy(), ref.bse[order], rtol=1e-6)


def test_gaussian_shared_coefficient_equals_ols_for_one_expert():
    g, x, _ = _data(400)
    y = 1.0 + 2.0 * x[:, 0] - x[:, 1] + 0.5 * torch.randn(400, dtype=F64, generator=g)
    try:
        e = LinearGaussianExpert(2, n_experts=1, shared=[1])
    except TypeError:
        pytest.skip("LinearGaussianExpert(shared=) has not landed")
    m = MixtureOfExperts(ConstantGate(1), e)
    fit_em(m, x, y, random_state=0, tol=1e-13)
    info = observed_information(m, x, y)
    assert _layout(info) == [("expert", 0, 0), ("expert", 0, 1), ("shared", None, 2), ("expert", 0, "sigma")]
    ols = sm.OLS(y.numpy(), sm.add_constant(x.numpy())).fit()
    cov = ols.cov_params(scale=ols.ssr / 400)  # the maximum-likelihood variance
    np.testing.assert_allclose(info.std_error[:3].numpy(), np.sqrt(np.diag(cov))[[0, 1, 2]], rtol=1e-6)


def test_shared_poisson_slope_of_two_experts_is_one_row():
    g, x, right = _data()
    off = 0.3 * torch.randn(600, dtype=F64, generator=g)
    eta = torch.where(right, 1.5 + 0.8 * x[:, 1], -0.5 - 0.6 * x[:, 1]) + 0.4 * x[:, 0] + off
    y = torch.poisson(eta.exp(), generator=g)
    xx = torch.cat([x, off[:, None]], 1)
    m = MixtureOfExperts(SoftmaxGate(2, 2), PoissonExpert(2, n_experts=2, offset=True, shared=[0]),
                         gate_features=[0, 1])
    fit_em(m, xx, y, random_state=0)
    info = observed_information(m, xx, y)
    _finite(info)
    assert _layout(info) == [("gate", 1, 0), ("gate", 1, 1), ("gate", 1, 2), ("expert", 0, 0), ("expert", 0, 2),
                             ("expert", 1, 0), ("expert", 1, 2), ("shared", None, 1)]
    assert abs(float(info.estimate[-1]) - 0.4) < 0.15
    assert torch.equal(m.experts.coef[0, 1], m.experts.coef[1, 1])  # the model itself ties them


def test_intercept_only_experts_under_a_covariate_gate():
    g, x, right = _data()
    y = torch.where(right, 2.0, -1.0) + 0.5 * torch.randn(600, dtype=F64, generator=g)
    m = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(0, n_experts=2), expert_features=[])
    fit_em(m, x, y, random_state=0)
    info = observed_information(m, x, y)
    _finite(info)
    assert _layout(info)[3:] == [("expert", 0, 0), ("expert", 1, 0), ("expert", 0, "sigma"), ("expert", 1, "sigma")]
    assert all(p.input_columns == () for p in info.parameters if p.block == "expert")


@pytest.mark.parametrize("covariance, d, terms", [
    ("tied", None, ["sigma"]),
    ("tied", 2, ["cov[0,0]", "cov[1,0]", "cov[1,1]"]),
    ("tied_diag", 2, ["sigma", "sigma"]),
    ("tied_spherical", 2, ["sigma"]),
])
def test_tied_noise_is_reported_once(covariance, d, terms):
    g, x, right = _data()
    mean = torch.where(right, 2 * x[:, 0], -x[:, 0] + 1)
    y = mean + 0.3 * torch.randn(600, dtype=F64, generator=g)
    if d is not None:
        y = torch.stack([y, -y + 0.3 * torch.randn(600, dtype=F64, generator=g)], 1)
    try:
        e = LinearGaussianExpert(1, d, covariance=covariance, n_experts=2)
    except ValueError:
        pytest.skip(f"covariance={covariance!r} has not landed")
    m = MixtureOfExperts(SoftmaxGate(1, 2), e, gate_features=[0], expert_features=[0])
    fit_em(m, x, y, random_state=0)
    info = observed_information(m, x, y)
    _finite(info)
    shared = [p for p in info.parameters if p.block == "shared"]
    assert [p.term for p in shared] == terms and all(p.component is None for p in shared)
    assert not any(p.block == "expert" and p.term in ("sigma", "cov[0,0]") for p in info.parameters)


def test_binomial_with_trials():
    cls = _family("BinomialExpert")
    g, x, right = _data()
    trials = torch.randint(1, 20, (600,), generator=g).to(F64)
    p = torch.sigmoid(torch.where(right, 1.0 + x[:, 1], -1.0 - x[:, 1]))
    y = torch.binomial(trials, p, generator=g)
    xx = torch.cat([x, trials[:, None]], 1)  # the trials travel as x's last column
    m = MixtureOfExperts(SoftmaxGate(1, 2), cls(1, n_experts=2), gate_features=[0], expert_features=[1, 2])
    fit_em(m, xx, y, random_state=0)
    info = observed_information(m, xx, y)
    _finite(info)
    assert _layout(info)[2:] == [("expert", 0, 0), ("expert", 0, 1), ("expert", 1, 0), ("expert", 1, 1)]


@pytest.mark.parametrize("name, term", [("GammaExpert", "shape"), ("NegativeBinomialExpert", "alpha")])
def test_dispersion_families_report_their_positive_parameter(name, term):
    cls = _family(name)
    g, x, right = _data()
    mu = torch.where(right, 1.5 + 0.5 * x[:, 1], 0.2 - 0.5 * x[:, 1]).exp()
    if name == "GammaExpert":
        y = torch.distributions.Gamma(4.0, 4.0 / mu).sample()
    else:
        y = torch.poisson(torch.distributions.Gamma(2.0, 2.0 / mu).sample())
    m = MixtureOfExperts(SoftmaxGate(1, 2), cls(1, n_experts=2), gate_features=[0], expert_features=[1])
    fit_em(m, x, y, random_state=0)
    info = observed_information(m, x, y)
    _finite(info)
    terms = [p.term for p in info.parameters if p.block == "expert"]
    assert terms.count(term) == 2, terms


def test_point_mass_expert_has_no_rows_but_its_gate_row_stays():
    cls = _family("PointMassExpert")
    g, x, right = _data()
    y = torch.where(right, torch.poisson(torch.exp(1.0 + 0.5 * x[:, 1]), generator=g), torch.zeros(600, dtype=F64))
    m = MixtureOfExperts(SoftmaxGate(2, 2), [cls(0.0), PoissonExpert(2)])
    fit_em(m, x, y, random_state=0)
    info = observed_information(m, x, y)
    _finite(info)
    assert _layout(info) == [("gate", 1, 0), ("gate", 1, 1), ("gate", 1, 2), ("expert", 1, 0), ("expert", 1, 1),
                             ("expert", 1, 2)]


def test_censored_gaussian_reports_beta_and_sigma():
    cls = _family("CensoredGaussianExpert")
    g, x, right = _data()
    latent = torch.where(right, 1.0 + x[:, 1], -0.5 - x[:, 1]) + 0.5 * torch.randn(600, dtype=F64, generator=g)
    lower = torch.zeros(600, dtype=F64)
    upper = torch.full((600,), float("inf"), dtype=F64)
    y = torch.stack([latent.clamp_min(0.0), lower, upper], 1)  # left-censored at 0
    m = MixtureOfExperts(SoftmaxGate(1, 2), cls(1, n_experts=2), gate_features=[0], expert_features=[1])
    with incomplete_targets():  # infinite limits in y are allowed here
        fit_em(m, x, y, random_state=0)
        info = observed_information(m, x, y)
    _finite(info)
    assert _layout(info)[2:] == [("expert", 0, 0), ("expert", 0, 1), ("expert", 1, 0), ("expert", 1, 1),
                                 ("expert", 0, "sigma"), ("expert", 1, "sigma")]
    assert abs(float(info.estimate[-1]) - 0.5) < 0.1 and abs(float(info.estimate[-2]) - 0.5) < 0.1


# ------------------------------------------------------------------ the estimators' tables
def _zip_data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    right = rng.uniform(size=n) < 1 / (1 + np.exp(-2 * X[:, 0]))
    return rng, X, right


def test_summary_table_rows_for_shared_coefficients_with_an_offset():
    pd = pytest.importorskip("pandas")
    from moekit import MoERegressor

    rng, X, right = _zip_data()
    off = np.log(rng.uniform(0.5, 2.0, 600))
    y = rng.poisson(np.exp(np.where(right, 1.5 + 0.8 * X[:, 1], -0.5 - 0.6 * X[:, 1]) + 0.4 * X[:, 0] + off))
    Xf = pd.DataFrame(X, columns=["dose", "age"])
    est = MoERegressor(expert="poisson", shared_features=["dose"], random_state=0).fit(Xf, y, offset=off)
    s = est.summary()
    t = s.table
    assert t.block.tolist() == ["gate"] * 3 + ["expert"] * 4 + ["shared"]
    assert t.term.tolist() == ["(Intercept)", "dose", "age"] + ["(Intercept)", "age"] * 2 + ["dose"]
    assert t.component.tolist() == [1, 1, 1, 0, 0, 1, 1, ""]  # a shared row belongs to no one expert
    assert s.n_parameters == 8 and abs(t.estimate.iloc[-1] - 0.4) < 0.1
    assert "Shared by all experts:" in str(s) and "offset" not in set(t.term)
    coef = est.expert_coef_  # the shared value is each expert's coefficient
    assert list(coef.columns) == ["(Intercept)", "age", "dose"] and coef["dose"].nunique() == 1


def test_summary_table_rows_for_tied_noise_and_a_point_mass(tmp_path):
    pd = pytest.importorskip("pandas")
    from moekit import MoERegressor, load

    rng, X, right = _zip_data()
    y = np.where(right, 2 * X[:, 1], -X[:, 1] + 1) + 0.3 * rng.normal(size=600)
    est = MoERegressor(covariance="tied", random_state=0).fit(X, y)
    t = est.summary().table
    assert t[t.block == "shared"].term.tolist() == ["sigma"] and "sigma" not in set(t[t.block == "expert"].term)
    assert np.isfinite(t.std_error).all()
    path = str(tmp_path / "m.moekit")  # the shared rows (no component) survive the model file
    est.save(path)
    pd.testing.assert_frame_equal(load(path).summary().table, t)
    counts = np.where(right, rng.poisson(np.exp(1 + 0.5 * X[:, 1])), 0)
    s = MoERegressor(expert=["point_mass", "poisson"], random_state=0).fit(X, counts).summary()
    assert set(s.table[s.table.block == "expert"].component) == {1}  # the point mass has no parameters
    assert len(s.table[s.table.block == "gate"]) == 3 and "0: point_mass, 1: poisson" in s.title


@pytest.mark.parametrize("expert, term", [("gamma", "shape"), ("negative_binomial", "alpha")])
def test_summary_names_the_dispersion(expert, term):
    from moekit import MoERegressor

    rng, X, right = _zip_data()
    mu = np.exp(np.where(right, 1.5 + 0.5 * X[:, 1], 0.2 - 0.5 * X[:, 1]))
    y = rng.gamma(4.0, mu / 4.0) if expert == "gamma" else rng.poisson(rng.gamma(2.0, mu / 2.0))
    t = MoERegressor(expert=expert, random_state=0).fit(X, y).summary().table
    rows = t[t.term == term]
    assert len(rows) == 2 and rows.z.isna().all() and (rows.std_error > 0).all()  # positive: no test against 0


def test_missing_target_coordinates_are_marginalised_in_the_hessian():
    g, x, right = _data()
    mean = torch.where(right[:, None], torch.stack([x[:, 0], torch.ones(600, dtype=F64)], 1),
                       torch.stack([-x[:, 0], -torch.ones(600, dtype=F64)], 1))
    y = mean + 0.3 * torch.randn(600, 2, dtype=F64, generator=g)
    holes = torch.rand(600, 2, dtype=F64, generator=g) < 0.25
    holes[holes.all(1), 0] = False
    y_missing = torch.where(holes, torch.full_like(y, float("nan")), y)
    m = MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, 2, n_experts=2), gate_features=[0],
                         expert_features=[0])
    with incomplete_targets():
        fit_em(m, x, y_missing, random_state=0)
        info = observed_information(m, x, y_missing)
    _finite(info)
    assert len(info.parameters) == 2 + 2 * (2 * 2 + 3)  # gate; per expert 2 x 2 coefficients and 3 covariance entries
