"""Model structure at the estimator level (issue 15): per-row extras, lists of families, constraints, missing values.

Offsets and trials are trailing columns of the model's x that the gate never sees; ``expert=`` takes a
list of families; ``shared_features``, ``covariance="tied*"``, ``expert_features=[]``,
``point_mass_value`` and ``missing`` are parameters.  Every option round-trips through model files.
"""

import os
import warnings

import numpy as np
import pytest
import statsmodels.api as sm
import torch
from scipy import optimize, stats

import moekit
import moekit.experts
from moekit import HMERegressor, MoEClassifier, MoERegressor
from moekit.datasets import load_faithful, load_npreg

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

HAS_CENSORED = hasattr(moekit.experts, "CensoredGaussianExpert")


def _counts(n=600, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    exposure = rng.uniform(0.5, 3.0, n)
    y = rng.poisson(exposure * np.exp(0.3 + 0.5 * X[:, 0] - 0.2 * X[:, 1])).astype(float)
    return X, y, np.log(exposure)


def _zip(n=1500, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 1))
    p0 = 1 / (1 + np.exp(-(-0.5 + 1.0 * X[:, 0])))
    y = np.where(rng.random(n) < p0, 0.0, rng.poisson(np.exp(1.0 + 0.3 * X[:, 0])).astype(float))
    return X, y


def _lines(n=600, seed=2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    k = rng.random(n) < 0.5
    y = np.where(k, 1 + 0.5 * X[:, 1], -1 - 0.5 * X[:, 1]) + 2.0 * X[:, 0] + 0.3 * rng.normal(size=n)
    return X, y


# ------------------------------------------------------------------ must-show values
def test_npreg_two_poisson_experts_reach_flexmix():
    d = load_npreg()
    x = np.asarray(d.columns["x"], dtype=float)[:, None]
    yp = np.asarray(d.columns["yp"], dtype=float)
    est = MoERegressor(n_experts=2, expert="poisson", gate="constant", random_state=0, max_iter=500, tol=1e-10,
                       compute_se=False).fit(x, yp)
    assert est.log_likelihood_ == pytest.approx(-440.6403, abs=5e-4)  # flexmix's own example
    coef = est.model_.experts.coef.detach().numpy()
    coef = coef[np.argsort(coef[:, 1])]
    np.testing.assert_allclose(coef, [[1.8643, -0.1619], [1.2473, 0.0647]], atol=2e-3)


def test_faithful_intercept_only_experts_constant_and_covariate_gate():
    f = load_faithful()
    X, y = f.data, f.target
    const = MoERegressor(n_experts=2, gate="constant", expert_features=[], random_state=0, max_iter=500,
                         tol=1e-10, compute_se=False).fit(X, y)
    assert const.log_likelihood_ == pytest.approx(-1034.002, abs=1e-3)
    assert const.model_.expert_features == []
    pred = const.predict(X)
    np.testing.assert_allclose(pred, pred[0])  # no covariate anywhere: one predictive distribution
    gated = MoERegressor(n_experts=2, expert_features=[], random_state=0, max_iter=500, tol=1e-10,
                         compute_se=False).fit(X, y)  # a covariate gate on eruptions over intercept-only experts
    assert gated.log_likelihood_ >= -1034.002
    assert gated.predict_gate(X).std(0).max() > 0.1  # the weights depend on eruptions


def test_k1_poisson_with_offset_equals_statsmodels():
    X, y, off = _counts()
    est = MoERegressor(n_experts=1, expert="poisson", random_state=0, tol=1e-12, max_iter=300).fit(X, y, offset=off)
    ref = sm.GLM(y, sm.add_constant(X), family=sm.families.Poisson(), offset=off).fit(tol=1e-12)
    np.testing.assert_allclose(est.model_.experts.coef.detach().numpy()[0], ref.params, atol=1e-6)
    assert est.log_likelihood_ == pytest.approx(ref.llf, abs=1e-6)
    np.testing.assert_allclose(est.predict(X, offset=off), ref.predict(sm.add_constant(X), offset=off), rtol=1e-6)
    np.testing.assert_allclose(est.score_samples(X, y, offset=off), stats.poisson.logpmf(y, ref.mu), atol=1e-6)


def test_k1_binomial_with_trials_equals_statsmodels():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(800, 2))
    trials = rng.integers(1, 20, 800).astype(float)
    y = rng.binomial(trials.astype(int), 1 / (1 + np.exp(-(0.2 - 0.7 * X[:, 0] + 0.3 * X[:, 1])))).astype(float)
    est = MoERegressor(n_experts=1, expert="binomial", random_state=0, tol=1e-12, max_iter=300).fit(X, y, trials=trials)
    ref = sm.GLM(np.c_[y, trials - y], sm.add_constant(X), family=sm.families.Binomial()).fit(tol=1e-12)
    np.testing.assert_allclose(est.model_.experts.coef.detach().numpy()[0], ref.params, atol=1e-6)
    p = ref.predict(sm.add_constant(X))
    assert est.log_likelihood_ == pytest.approx(stats.binom.logpmf(y, trials, p).sum(), abs=1e-6)
    np.testing.assert_allclose(est.predict(X, trials=trials), trials * p, rtol=1e-6)  # the mean number of successes
    np.testing.assert_allclose(est.predict(X, trials=np.ones(800)), p, rtol=1e-6)


@pytest.mark.skipif(not hasattr(moekit.experts, "GammaExpert"), reason="GammaExpert has not landed")
def test_k1_gamma_with_offset_equals_statsmodels():
    rng = np.random.default_rng(12)
    X = rng.normal(size=(600, 1))
    off = 0.3 * rng.normal(size=600)
    y = rng.gamma(3.0, np.exp(0.5 + 0.4 * X[:, 0] + off) / 3.0)
    est = MoERegressor(n_experts=1, expert="gamma", random_state=0, tol=1e-13, max_iter=500).fit(X, y, offset=off)
    ref = sm.GLM(y, sm.add_constant(X), family=sm.families.Gamma(sm.families.links.Log()), offset=off).fit(tol=1e-13)
    np.testing.assert_allclose(est.model_.experts.coef.detach().numpy()[0], ref.params, atol=1e-6)
    np.testing.assert_allclose(est.predict(X, offset=off), ref.predict(sm.add_constant(X), offset=off), rtol=1e-6)


@pytest.mark.skipif(not hasattr(moekit.experts, "NegativeBinomialExpert"), reason="NegativeBinomialExpert has not landed")
def test_k1_negative_binomial_equals_statsmodels_nb2():
    rng = np.random.default_rng(13)
    X = rng.normal(size=(800, 1))
    mu = np.exp(1.0 + 0.5 * X[:, 0])
    y = rng.negative_binomial(2.0, 2.0 / (2.0 + mu)).astype(float)  # NB2 with alpha = 0.5
    est = MoERegressor(n_experts=1, expert="negative_binomial", random_state=0, tol=1e-13, max_iter=1000).fit(X, y)
    ref = sm.NegativeBinomial(y, sm.add_constant(X), loglike_method="nb2").fit(method="bfgs", gtol=1e-10, maxiter=500,
                                                                              disp=False)
    np.testing.assert_allclose(est.model_.experts.coef.detach().numpy()[0], ref.params[:2], atol=1e-5)
    assert float(est.model_.experts.alpha[0]) == pytest.approx(ref.params[2], abs=1e-5)
    assert est.log_likelihood_ == pytest.approx(ref.llf, abs=1e-6)


def test_zero_inflated_poisson_with_a_covariate_gate_fits_and_predicts():
    X, y = _zip()
    est = MoERegressor(n_experts=2, expert=["point_mass", "poisson"], random_state=0, compute_se=False).fit(X, y)
    g = est.predict_gate(X)
    rate = np.exp(est.model_.experts[1].coef.detach().numpy()[0] @ np.c_[np.ones(len(X)), X].T)
    np.testing.assert_allclose(est.predict(X), g[:, 1] * rate, rtol=1e-10)
    direct = np.where(y == 0, np.log(g[:, 0] + g[:, 1] * np.exp(-rate)), np.log(g[:, 1]) + stats.poisson.logpmf(y, rate))
    np.testing.assert_allclose(est.score_samples(X, y), direct, rtol=1e-10, atol=1e-12)
    r = est.responsibilities(X, y)
    assert np.all(r[y > 0, 0] == 0)  # a non-zero count cannot come from the point mass
    coef = est.model_.experts[1].coef.detach().numpy()[0]
    np.testing.assert_allclose(coef, [1.0, 0.3], atol=0.15)
    assert est.sample_y(X[:5], 3, random_state=0).shape == (5, 3)
    assert np.isfinite(est.bic(X, y))


# ------------------------------------------------------------------ extras as columns of x
def test_offset_is_an_expert_column_the_gate_never_sees():
    X, y, off = _counts()
    est = MoERegressor(n_experts=2, expert="poisson", random_state=0, compute_se=False).fit(X, y, offset=off)
    assert est.extras_ == ("offset",) and est.extras_required_ == ("offset",)
    assert est.model_.gate_features == [0, 1] and est.model_.expert_features == [0, 1, 2]
    assert est.n_features_in_ == 2
    # shifting every offset by log 2 doubles every expert's mean and leaves the gate alone
    np.testing.assert_allclose(est.predict(X, offset=off + np.log(2)), 2 * est.predict(X, offset=off), rtol=1e-10)
    np.testing.assert_array_equal(est.predict_gate(X), est.predict_gate(X, offset=off + 5))
    with pytest.raises(ValueError, match=r"fitted with offset=.*pass offset= here too"):
        est.predict(X)
    with pytest.raises(ValueError, match=r"offset has shape \(3,\) but X has 600 rows"):
        est.predict(X, offset=off[:3])
    plain = MoERegressor(n_experts=1, expert="poisson", random_state=0).fit(X, y)
    with pytest.raises(ValueError, match=r"offset is given, but this MoERegressor was fitted without offset"):
        plain.predict(X, offset=off)
    for method in ("score_samples", "bic", "aic", "icl", "responsibilities", "score"):
        getattr(est, method)(X, y, offset=off)
    Xl, yl = _lines(200)
    lin = MoERegressor(n_experts=2, random_state=0, compute_se=False).fit(Xl, yl, offset=Xl[:, 1])
    shifted = MoERegressor(n_experts=2, random_state=0, compute_se=False).fit(Xl, yl - Xl[:, 1])
    assert lin.log_likelihood_ == pytest.approx(shifted.log_likelihood_, rel=1e-6)  # y - offset, as in a GLM
    for method in ("predict_distribution", "predict_quantiles", "predict_interval", "sample_y", "predict_modes",
                   "predict_branches", "predict"):
        args = (Xl[:4], [0.5]) if method == "predict_quantiles" else (Xl[:4],)
        getattr(lin, method)(*args, offset=Xl[:4, 1])
        with pytest.raises(ValueError, match="pass offset= here too"):
            getattr(lin, method)(*args)
    np.testing.assert_allclose(lin.predict(Xl, offset=Xl[:, 1] + 1.0), lin.predict(Xl, offset=Xl[:, 1]) + 1.0)


def test_trials_default_to_one_without_trials_at_fit():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 1))
    y = (rng.random(400) < 1 / (1 + np.exp(-X[:, 0]))).astype(float)
    est = MoERegressor(n_experts=1, expert="binomial", random_state=0).fit(X, y)
    assert est.extras_ == ("trials",) and est.extras_required_ == ()
    p = est.predict(X)
    np.testing.assert_allclose(est.predict(X, trials=np.full(400, 3.0)), 3 * p, rtol=1e-12)


def test_rescaling_stays_exact_and_leaves_the_extras_alone():
    X, y, off = _counts(400)
    est = MoERegressor(n_experts=1, expert="poisson", random_state=0, tol=1e-12, max_iter=300,
                       compute_se=False).fit(X, y, offset=off)
    big = MoERegressor(n_experts=1, expert="poisson", random_state=0, tol=1e-12, max_iter=300,
                       compute_se=False).fit(X * 2.0**600, y, offset=off)  # beyond the supported range: rescaled
    np.testing.assert_allclose(big.predict(X * 2.0**600, offset=off), est.predict(X, offset=off), rtol=1e-8)


def test_callers_arrays_are_never_modified():
    X, y, off = _counts(200)
    X[3, 1] = np.nan
    trials = np.full(200, 50.0)
    saved = [a.copy() for a in (X, y, off, trials)]
    with pytest.warns(UserWarning, match="dropped 1 of 200 rows"):
        est = MoERegressor(n_experts=1, expert="binomial", missing="drop", random_state=0).fit(X, y, offset=off,
                                                                                            trials=trials)
    est.predict(X[~np.isnan(X).any(1)], offset=off[:199], trials=trials[:199])
    for a, b in zip((X, y, off, trials), saved):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ constraints
def test_shared_features_are_common_to_every_expert():
    X, y = _lines()
    est = MoERegressor(n_experts=2, shared_features=[0], random_state=0, n_init=2, compute_se=False).fit(X, y)
    assert est.model_.expert_features == [1, 0]  # own features first, then the shared ones
    coef = est.model_.experts.coef.detach().numpy().reshape(2, -1)
    assert coef[0, -1] == coef[1, -1]
    assert coef[0, -1] == pytest.approx(2.0, abs=0.05)
    counts = np.random.default_rng(0).poisson(np.exp(0.5 + 0.3 * X[:, 0])).astype(float)
    only = MoERegressor(n_experts=2, expert="poisson", expert_features=[], shared_features=[0], random_state=0,
                        compute_se=False).fit(X, counts)  # every expert: its intercept plus the shared slope
    c = only.model_.experts.coef.detach().numpy()
    assert c.shape == (2, 2) and c[0, 1] == c[1, 1]


def test_tied_covariance_shares_the_noise_variance():
    X, y = _lines()
    est = MoERegressor(n_experts=2, covariance="tied", random_state=0, compute_se=False).fit(X, y)
    with torch.no_grad():
        var = est.model_.experts(torch.as_tensor(X)).variance.numpy()
    np.testing.assert_allclose(var[:, 0], var[:, 1], rtol=1e-12)
    free = MoERegressor(n_experts=2, random_state=0, compute_se=False).fit(X, y)
    assert est.model_.n_parameters() == free.model_.n_parameters() - 1


# ------------------------------------------------------------------ missing values
def test_missing_drop_equals_the_fit_on_complete_rows():
    X, y = _lines(300)
    Xn = X.copy()
    Xn[[5, 17, 40], [0, 1, 0]] = np.nan
    keep = ~np.isnan(Xn).any(1)
    with pytest.warns(UserWarning, match=r"dropped 3 of 300 rows with missing values \(rows \[5, 17, 40\]\)"):
        dropped = MoERegressor(n_experts=2, missing="drop", random_state=0, compute_se=False).fit(Xn, y)
    complete = MoERegressor(n_experts=2, random_state=0, compute_se=False).fit(X[keep], y[keep])
    assert dropped.n_rows_dropped_ == 3
    assert dropped.log_likelihood_ == pytest.approx(complete.log_likelihood_, rel=1e-12)
    np.testing.assert_allclose(dropped.predict(X), complete.predict(X), rtol=1e-12)
    with pytest.raises(ValueError, match=r"Input X contains NaN in rows \[5, 17, 40\], columns \[0, 1\].*missing='drop'"):
        MoERegressor(n_experts=2).fit(Xn, y)
    with pytest.raises(ValueError, match=r"Input X contains NaN in rows \[5, 17, 40\]"):
        complete.predict(Xn)


def test_vector_y_with_missing_coordinates():
    rng = np.random.default_rng(6)
    X, y = _lines(400)
    Y = np.c_[y, 0.5 * y + 0.2 * rng.normal(size=400)]
    full = MoERegressor(n_experts=2, random_state=0, compute_se=False).fit(X, Y)
    Yn = Y.copy()
    Yn[rng.random(400) < 0.3, 1] = np.nan
    saved = Yn.copy()
    est = MoERegressor(n_experts=2, random_state=0, compute_se=False).fit(X, Yn)
    np.testing.assert_array_equal(Yn, saved)
    assert np.isfinite(est.log_likelihood_)
    assert np.isfinite(est.score_samples(X, Yn)).all()
    np.testing.assert_allclose(est.predict(X[:50]), full.predict(X[:50]), atol=0.1)


# ------------------------------------------------------------------ censoring
@pytest.mark.skipif(not HAS_CENSORED, reason="CensoredGaussianExpert has not landed")
def test_k1_censored_gaussian_equals_a_direct_tobit_fit():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(500, 1))
    latent = 0.5 + 1.0 * X[:, 0] + 0.8 * rng.normal(size=500)
    y = np.maximum(latent, 0.0)
    lower = np.zeros(500)
    est = MoERegressor(n_experts=1, random_state=0, tol=1e-12, max_iter=2000, compute_se=False).fit(X, y, lower=lower)

    def nll(t):
        mu, s = t[0] + t[1] * X[:, 0], np.exp(t[2])
        return -np.where(y <= 0, stats.norm.logcdf(-mu / s), stats.norm.logpdf(y, mu, s)).sum()

    ref = optimize.minimize(nll, [0.0, 0.0, 0.0], method="BFGS", options={"gtol": 1e-10})
    assert est.log_likelihood_ == pytest.approx(-ref.fun, abs=1e-5)
    np.testing.assert_allclose(est.score_samples(X, y, lower=lower).sum(), -ref.fun, atol=1e-5)
    np.testing.assert_allclose(est.predict(X[:5]), ref.x[0] + ref.x[1] * X[:5, 0], atol=1e-3)  # the latent mean


# ------------------------------------------------------------------ other estimators
def test_hierarchies_take_new_families_and_extras():
    """Trees take the new families, offsets and intercept-only leaves (tests/estimators/test_hme_structure.py has
    the details); an offset the tree was not fitted with is refused."""
    rng = np.random.default_rng(8)
    X = rng.normal(size=(300, 1))
    y = rng.gamma(2.0, np.exp(0.3 * X[:, 0]) / 2.0)
    hme = HMERegressor(depth=1, expert="gamma", random_state=0, max_iter=30, compute_se=False).fit(X, y)
    assert np.isfinite(hme.predict(X)).all()
    with_offset = HMERegressor(depth=1, expert="gamma", random_state=0, max_iter=30, compute_se=False)
    assert np.isfinite(with_offset.fit(X, y, offset=np.zeros(300)).predict(X, offset=np.zeros(300))).all()
    flat_leaves = HMERegressor(depth=1, expert_features=[], random_state=0, max_iter=30, compute_se=False).fit(X, y)
    assert np.isfinite(flat_leaves.predict(X)).all()
    with pytest.raises(ValueError, match=r"offset is given, but this HMERegressor was fitted without offset"):
        hme.predict(X, offset=np.zeros(300))


def test_classifier_lists_and_missing_drop():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(300, 2))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    clf = MoEClassifier(n_experts=2, expert=["logistic", "logistic"], random_state=0, compute_se=False).fit(X, y)
    assert clf.predict_proba(X).shape == (300, 2)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.warns(UserWarning, match="dropped 1 of 300"):
        clf = MoEClassifier(n_experts=2, missing="drop", random_state=0, compute_se=False).fit(Xn, y)
    assert clf.n_rows_dropped_ == 1
    with pytest.raises(ValueError, match=r"MoEClassifier takes no offset="):
        MoEClassifier().fit(X, y, offset=np.zeros(300))


# ------------------------------------------------------------------ model files
def _file_cases():
    X, y, off = _counts(300)
    Xz, yz = _zip(300)
    Xl, yl = _lines(300)
    rng = np.random.default_rng(10)
    trials = rng.integers(1, 10, 300).astype(float)
    yb = rng.binomial(trials.astype(int), 0.4).astype(float)
    cases = {
        "poisson offset": (MoERegressor(n_experts=2, expert="poisson"), X, y, {"offset": off}),
        "zero-inflated poisson": (MoERegressor(n_experts=2, expert=["point_mass", "poisson"]), Xz, yz, {}),
        "binomial trials": (MoERegressor(n_experts=2, expert="binomial"), X, yb, {"trials": trials}),
        "shared": (MoERegressor(n_experts=2, shared_features=[1], expert_features=[]), Xl, yl, {}),
        "tied": (MoERegressor(n_experts=2, covariance="tied"), Xl, yl, {}),
        "intercept-only": (MoERegressor(n_experts=2, expert_features=[]), Xl, yl, {}),
        "linear offset": (MoERegressor(n_experts=2), Xl, yl, {"offset": Xl[:, 1]}),
        "dropped rows": (MoERegressor(n_experts=2, missing="drop"), np.r_[Xl, [[np.nan, 0.0]]], np.r_[yl, 0.0], {}),
    }
    if hasattr(moekit.experts, "GammaExpert"):
        cases["gamma offset"] = (MoERegressor(n_experts=2, expert="gamma"), Xl, np.exp(yl / 3), {"offset": Xl[:, 0] / 4})
    if hasattr(moekit.experts, "NegativeBinomialExpert"):
        cases["negative binomial"] = (MoERegressor(n_experts=2, expert="negative_binomial"), X, y, {})
    if HAS_CENSORED:
        cases["censored"] = (MoERegressor(n_experts=2), Xl, np.maximum(yl, 0), {"lower": np.zeros(300)})
    return cases


FILE_CASES = _file_cases()


@pytest.mark.parametrize("name", list(FILE_CASES))
def test_every_option_round_trips_through_model_files(name, tmp_path):
    est, X, y, extras = FILE_CASES[name]
    est.set_params(random_state=0, max_iter=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        est.fit(X, y, **extras)
    path = os.path.join(tmp_path, "m.moekit")
    est.save(path)
    again = moekit.load(path)
    rows = ~np.isnan(X).any(1)
    X, y = X[rows], y[rows]
    pred = {k: v[rows] for k, v in extras.items() if k in ("offset", "trials")}
    scored = {k: v[rows] for k, v in extras.items()}
    np.testing.assert_array_equal(again.predict(X, **pred), est.predict(X, **pred))
    np.testing.assert_array_equal(again.score_samples(X, y, **scored), est.score_samples(X, y, **scored))
    assert again.get_params() == est.get_params()
    if est.extras_required_:  # a loaded offset (trials) model still asks for its offset (trials)
        with pytest.raises(ValueError, match="pass .* here too"):
            again.predict(X)


def test_a_list_of_families_whose_experts_were_pruned_round_trips(tmp_path):
    X, y = _zip(300)
    est = MoERegressor(n_experts=3, expert=["poisson", "point_mass", "poisson"], random_state=0,
                       compute_se=False).fit(X, y)
    est.model_.prune([0, 2])  # as EM prunes a vanishing expert: the survivors are two single Poisson experts
    assert est.model_structure()["experts"] == ["poisson", "poisson"]
    path = os.path.join(tmp_path, "pruned.moekit")
    est.save(path)
    again = moekit.load(path)
    np.testing.assert_array_equal(again.predict(X), est.predict(X))


@pytest.mark.skipif(not HAS_CENSORED, reason="CensoredGaussianExpert has not landed")
def test_interval_censored_rows_score_the_probability_of_their_interval():
    rng = np.random.default_rng(14)
    X = rng.normal(size=(300, 1))
    y = 1.0 + X[:, 0] + 0.5 * rng.normal(size=300)
    lower, upper = np.full(300, -np.inf), np.full(300, np.inf)
    hidden = np.arange(300) % 5 == 0  # every fifth row is only known to lie in a unit interval around it
    lower[hidden], upper[hidden] = np.floor(y[hidden]), np.floor(y[hidden]) + 1
    yy = np.where(hidden, np.nan, y)
    saved = yy.copy()
    est = MoERegressor(n_experts=1, random_state=0, compute_se=False).fit(X, yy, lower=lower, upper=upper)
    np.testing.assert_array_equal(yy, saved)
    assert est.censored_ and np.isfinite(est.log_likelihood_)
    mu, sd = est.predict(X), np.sqrt(est.predict_distribution(X).variance.numpy())
    ll = est.score_samples(X, yy, lower=lower, upper=upper)
    direct = np.log(stats.norm.cdf(upper, mu, sd) - stats.norm.cdf(lower, mu, sd))
    np.testing.assert_allclose(ll[hidden], direct[hidden], rtol=1e-8)
    np.testing.assert_allclose(ll[~hidden], stats.norm.logpdf(y, mu, sd)[~hidden], rtol=1e-8)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_classifier_shared_features_are_one_coefficient_for_all_experts(n_classes, tmp_path):
    """MoEClassifier(shared_features=[...]): logistic/softmax experts share the named slope (per free class), EM is
    monotone, the joint Newton fixed point is the tied optimum (a tied move lowers nothing), model files keep it."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 2))
    half = rng.uniform(size=800) < 1 / (1 + np.exp(-2 * X[:, 0]))  # a soft gate on x0
    score = np.where(half, 1.0 + 1.5 * X[:, 0], -1.0 - 1.5 * X[:, 0]) + 1.0 * X[:, 1]
    if n_classes == 2:
        y = (score + rng.logistic(size=800) > 0).astype(int)
    else:
        y = np.digitize(score + rng.logistic(size=800), [-1.0, 1.0])
    clf = MoEClassifier(n_experts=2, shared_features=[1], random_state=0, max_iter=3000, tol=1e-12).fit(X, y)
    assert clf.converged_
    coef = clf.model_.experts.coef.detach()
    assert torch.equal(coef[0, ..., 2], coef[1, ..., 2])  # x1's slope: one value for both experts
    assert np.all(np.diff(clf.log_likelihood_history_) >= -1e-9)
    table = clf.summary().table
    shared = table[table.block == "shared"]
    assert len(shared) == n_classes - 1 and set(shared.term) == {"x1"} and np.isfinite(shared.std_error).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short fit: only its parameter count matters
        free = MoEClassifier(n_experts=2, random_state=0, max_iter=5, compute_se=False).fit(X, y)
    assert clf.model_.n_parameters() == free.model_.n_parameters() - (n_classes - 1)
    path = str(tmp_path / "shared.moekit")
    clf.save(path)
    np.testing.assert_array_equal(moekit.load(path).predict_proba(X), clf.predict_proba(X))
    with pytest.raises(ValueError, match="shared_features"):
        MoEClassifier(expert="mlp", shared_features=[1], max_iter=2).fit(X, y)
