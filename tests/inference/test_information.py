"""Standard errors from the observed information (issue 14).

The reference for every model is written here, apart from the library: the log-likelihood in
NumPy, in the identifiable parametrisation the library reports (gate rows against component 0,
sigma through its logarithm), and its Hessian by central finite differences.
"""

import numpy as np
import pytest
import torch
from scipy.special import gammaln, log_softmax, logsumexp

from moekit import (
    HMERegressor,
    LinearGaussianExpert,
    LogisticExpert,
    MixtureOfExperts,
    MLPGate,
    PoissonExpert,
    SoftmaxGate,
    fit_em,
)
from moekit.datasets import load_npreg
from moekit.inference.information import NoLikelihoodHessianError, observed_information


def _key(p):
    return (p.block, p.node, p.component, p.output, p.term)


def _numpy_loglik(theta, keys, x, y, family):
    """Log-likelihood of a (tree of) softmax-gated mixture(s), from the parameter vector alone."""
    xa = np.c_[np.ones(len(x)), x]
    gates, experts = {}, {}
    for v, (block, node, comp, _out, term) in zip(theta, keys):
        if block == "gate":
            gates.setdefault(node, {}).setdefault(comp, {})[term] = v
        else:
            experts.setdefault(node, {})[term] = v

    def gate_coef(node):
        rows = gates[node]
        k = max(rows) + 1
        p = xa.shape[1]
        out = np.zeros((k, p))
        for c, terms in rows.items():
            for j, v in terms.items():
                out[c, j] = v
        return out

    def leaf(node):
        e = experts[node]
        eta = xa @ np.array([e[j] for j in range(xa.shape[1])])
        if family == "gaussian":
            s = np.exp(e["sigma"])  # theta holds log sigma
            return -0.5 * np.log(2 * np.pi) - np.log(s) - 0.5 * ((y - eta) / s) ** 2
        if family == "logistic":
            return y * -np.logaddexp(0, -eta) + (1 - y) * -np.logaddexp(0, eta)
        return y * eta - np.exp(eta) - gammaln(y + 1)

    def node_lp(node):
        lg = log_softmax(xa @ gate_coef(node).T, axis=1)
        cols = [node_lp(node + (c,)) if node + (c,) in gates else leaf(node + (c,)) for c in range(lg.shape[1])]
        return logsumexp(lg + np.stack(cols, axis=1), axis=1)

    return float(node_lp(()).sum())


def _fd_std_errors(info, x, y, family):
    keys = [_key(p) for p in info.parameters]
    theta = info.estimate.numpy().copy()
    is_sigma = np.array([k[4] == "sigma" for k in keys])
    theta[is_sigma] = np.log(theta[is_sigma])
    f = lambda t: _numpy_loglik(t, keys, x, y, family)  # noqa: E731
    p = len(theta)
    h = 1e-4 * np.maximum(1.0, np.abs(theta))
    hess = np.zeros((p, p))
    for i in range(p):
        for j in range(i, p):
            ei, ej = np.eye(p)[i] * h[i], np.eye(p)[j] * h[j]
            v = (f(theta + ei + ej) - f(theta + ei - ej) - f(theta - ei + ej) + f(theta - ei - ej)) / (4 * h[i] * h[j])
            hess[i, j] = hess[j, i] = v
    se = np.sqrt(np.diag(np.linalg.inv(-hess)))
    se[is_sigma] *= np.exp(theta[is_sigma])  # delta method: d sigma = sigma d log sigma
    return se


def _soft_components(x, k, rng):
    """Components drawn from a soft softmax gate on x (overlapping: the gate is identifiable)."""
    logits = np.c_[np.zeros(len(x)), 1.5 * x[:, 0] - 0.5, -1.5 * x[:, 0] - 0.5][:, :k]
    prob = np.exp(log_softmax(logits, axis=1))
    return (rng.uniform(size=(len(x), 1)) > prob.cumsum(axis=1)).sum(axis=1)


def _gaussian_data(k, n=600, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(n, 1))
    comp = _soft_components(x, k, rng)
    slopes = np.array([2.0, -1.0, 0.5])[:k]
    y = slopes[comp] * x[:, 0] + comp + 0.3 * rng.normal(size=n)
    return x, y


def _fit(model, x, y):
    fit_em(model, torch.as_tensor(x), torch.as_tensor(y, dtype=torch.float64), random_state=0, tol=1e-10,
           max_iter=3000)
    return model


@pytest.mark.parametrize("k", [2, 3])
def test_gaussian_mixture_standard_errors_equal_finite_differences(k):
    x, y = _gaussian_data(k)
    m = _fit(MixtureOfExperts(SoftmaxGate(1, k), LinearGaussianExpert(1, n_experts=k)), x, y)
    info = observed_information(m, torch.as_tensor(x), torch.as_tensor(y))
    assert len(info.parameters) == m.n_parameters()
    np.testing.assert_allclose(info.std_error.numpy(), _fd_std_errors(info, x, y, "gaussian"), rtol=0.01)


def test_logistic_expert_mixture_standard_errors_equal_finite_differences():
    rng = np.random.default_rng(1)
    x = rng.uniform(-3, 3, size=(800, 1))
    eta = np.where(_soft_components(x, 2, rng) == 1, 2.0 * x[:, 0] - 1, -1.5 * x[:, 0] + 0.5)
    y = (rng.uniform(size=800) < 1 / (1 + np.exp(-eta))).astype(float)
    m = _fit(MixtureOfExperts(SoftmaxGate(1, 2), LogisticExpert(1, n_experts=2)), x, y)
    info = observed_information(m, torch.as_tensor(x), torch.as_tensor(y))
    np.testing.assert_allclose(info.std_error.numpy(), _fd_std_errors(info, x, y, "logistic"), rtol=0.01)


def test_poisson_expert_mixture_standard_errors_equal_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=(600, 1))
    rate = np.where(_soft_components(x, 2, rng) == 1, np.exp(1.5 + 0.8 * x[:, 0]), np.exp(0.2 - 0.5 * x[:, 0]))
    y = rng.poisson(rate).astype(float)
    m = _fit(MixtureOfExperts(SoftmaxGate(1, 2), PoissonExpert(1, n_experts=2)), x, y)
    info = observed_information(m, torch.as_tensor(x), torch.as_tensor(y))
    np.testing.assert_allclose(info.std_error.numpy(), _fd_std_errors(info, x, y, "poisson"), rtol=0.01)


def test_depth_two_tree_standard_errors_equal_finite_differences():
    rng = np.random.default_rng(3)
    x = rng.uniform(-2, 2, size=(800, 1))
    top = _soft_components(x, 2, rng)  # a soft split near x = 0.3, then one near -1 (left) or +1 (right)
    leaf = 2 * top + np.where(top == 0, _soft_components(x + 1, 2, rng), _soft_components(x - 1, 2, rng))
    y = np.choose(leaf, [2 * x[:, 0], -x[:, 0], 3 * x[:, 0] + 1, 1 - x[:, 0]]) + 0.3 * rng.normal(size=800)
    est = HMERegressor(depth=2, branching=2, random_state=0, tol=1e-10, max_iter=3000).fit(x, y)
    info = observed_information(est.model_, torch.as_tensor(x), torch.as_tensor(y))
    assert {p.node for p in info.parameters if p.block == "gate"} == {(), (0,), (1,)}
    np.testing.assert_allclose(info.std_error.numpy(), _fd_std_errors(info, x, y, "gaussian"), rtol=0.01)


# flexmix 2.3.18, NPreg, yn ~ x + I(x^2), FLXPmultinom(~ x), summary(refit(m)): observed-information standard
# errors (the table in the project's reference-data notes; flexmix's Comp.1 is the quadratic expert and the gate's
# reference). Keys: (block, term index: 0 intercept, 1 x, 2 x^2) for the quadratic / linear expert and the gate.
FLEXMIX_NPREG_SE = {
    ("quadratic", 0): 1.336800, ("quadratic", 1): 0.595206, ("quadratic", 2): 0.055559,
    ("linear", 0): 1.014381, ("linear", 1): 0.511736, ("linear", 2): 0.049870,
    ("gate", 0): 0.293520, ("gate", 1): 0.053308,
}


def test_npreg_standard_errors_agree_with_flexmix():
    d = load_npreg()
    x, y = d.columns["x"], d.columns["yn"]
    X = torch.as_tensor(np.c_[x, x ** 2])
    m = MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(2, n_experts=2), gate_features=[0])
    fit_em(m, X, torch.as_tensor(y), random_state=0, tol=1e-10, max_iter=5000)
    info = observed_information(m, X, torch.as_tensor(y))
    assert info.log_likelihood == pytest.approx(-642.064, abs=1e-3)
    quad = int(np.argmin(m.experts.coef.detach()[:, 2, 0].numpy()))  # the expert with the negative x^2 term
    if quad != 0:  # flexmix's reference is the quadratic expert: refit with the components in its order
        m.gate.coef.data = m.gate.coef.data.flip(0)
        m.experts.coef.data = m.experts.coef.data.flip(0)
        m.experts.log_scale.data = m.experts.log_scale.data.flip(0)
        info = observed_information(m, X, torch.as_tensor(y))
    got = {}
    for p, s in zip(info.parameters, info.std_error.numpy()):
        if p.term == "sigma":
            continue
        name = "gate" if p.block == "gate" else ("quadratic" if p.component == 0 else "linear")
        got[(name, p.term)] = s
    for key, ref in FLEXMIX_NPREG_SE.items():
        assert got[key] == pytest.approx(ref, rel=0.05), key


def test_sandwich_with_one_expert_equals_statsmodels_hc0():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 2))
    y = 1 + x @ np.array([2.0, -1.0]) + rng.normal(size=300) * (0.5 + np.abs(x[:, 0]))
    m = _fit(MixtureOfExperts(SoftmaxGate(2, 1), LinearGaussianExpert(2, n_experts=1)), x, y)
    info = observed_information(m, torch.as_tensor(x), torch.as_tensor(y), method="sandwich")
    ols = sm.OLS(y, sm.add_constant(x)).fit(cov_type="HC0")
    coef_se = [s for p, s in zip(info.parameters, info.std_error.numpy()) if p.term != "sigma"]
    np.testing.assert_allclose(info.estimate.numpy()[:3], ols.params, rtol=1e-8)
    np.testing.assert_allclose(coef_se, ols.bse, rtol=1e-6)


def test_weights_equal_repeated_rows():
    x, y = _gaussian_data(2, n=200, seed=5)
    w = np.random.default_rng(5).integers(1, 4, size=200)
    m = _fit(MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_experts=2)), x, y)
    xr, yr = np.repeat(x, w, axis=0), np.repeat(y, w)
    for method in ("hessian", "sandwich"):
        a = observed_information(m, torch.as_tensor(x), torch.as_tensor(y), torch.as_tensor(w, dtype=torch.float64),
                                 method=method)
        b = observed_information(m, torch.as_tensor(xr), torch.as_tensor(yr), method=method)
        np.testing.assert_allclose(a.std_error.numpy(), b.std_error.numpy(), rtol=1e-9)
        assert a.n_samples == b.n_samples == w.sum()


def test_model_is_not_modified_and_neural_gate_is_refused():
    x, y = _gaussian_data(2, n=200)
    m = _fit(MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_experts=2)), x, y)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    observed_information(m, torch.as_tensor(x), torch.as_tensor(y), method="sandwich")
    for n, p in m.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
    nn_gate = MixtureOfExperts(MLPGate(1, 2, hidden_layer_sizes=(4,)), LinearGaussianExpert(1, n_experts=2))
    with pytest.raises(NoLikelihoodHessianError, match="bootstrap"):
        observed_information(nn_gate, torch.as_tensor(x), torch.as_tensor(y))
    with pytest.raises(ValueError, match="method"):
        observed_information(m, torch.as_tensor(x), torch.as_tensor(y), method="jackknife")


def test_singular_information_is_reported_with_the_parameter():
    x, y = _gaussian_data(2, n=200)
    x2 = np.c_[x, x]  # two identical inputs: the information is singular along their difference
    m = _fit(MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, n_experts=2)), x2, y)
    info = observed_information(m, torch.as_tensor(x2), torch.as_tensor(y))
    assert info.warnings and ("singular" in info.warnings[0] or "ill-conditioned" in info.warnings[0])
    assert "term" in info.warnings[0]
    se = info.std_error.numpy()
    slopes = np.array([p.term in (1, 2) for p in info.parameters])
    assert np.all(np.isnan(se[slopes]))  # the data do not tell the two copies of x apart: no standard error
    sigma = np.array([p.term == "sigma" for p in info.parameters])
    assert np.all(np.isfinite(se[sigma]) & (se[sigma] > 0))
