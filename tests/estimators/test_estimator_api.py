"""The scikit-learn front: estimator checks, pipelines, prediction API, bad input."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from moekit import MoEClassifier, MoERegressor
from moekit.datasets import load_npreg, load_tonedata

# Checks whose data sets are smaller than the model: sklearn fits 10-27 rows with
# 3-30 features, and a 2-expert model then has more free parameters than rows.
# moekit refuses that with a ValueError by design ("fewer rows than parameters").
# The properties these checks test are tested below on data the model can fit.
_TOO_SMALL = "the check's data has fewer rows than the model has parameters; moekit raises ValueError by design"
# score_samples(X, y) is the conditional log-density; the invariance checks call
# score_samples(X) as for unconditional density estimators.  Tested below with y.
_COND = "score_samples needs y (a conditional density); invariance tested in test_score_samples_row_invariance"

_SMALL_DATA_CHECKS = {
    "check_n_features_in_after_fitting": _TOO_SMALL,
    "check_estimators_nan_inf": _TOO_SMALL,
    "check_sample_weight_equivalence_on_dense_data": _TOO_SMALL,
    "check_regressor_multioutput": _TOO_SMALL,
    "check_regressors_no_decision_function": _TOO_SMALL,
}
_CONDITIONAL_CHECKS = {
    "check_methods_sample_order_invariance": _COND,
    "check_methods_subset_invariance": _COND,
}


def _expected_failures(est):
    # with a ridge penalty (alpha > 0) the small-data checks must pass
    small = dict(_SMALL_DATA_CHECKS)
    if isinstance(est, MoEClassifier):
        small["check_dtype_object"] = _TOO_SMALL  # 56 rows, 10 features, 3 classes
    return {**_CONDITIONAL_CHECKS, **(small if est.alpha == 0 else {})}


@parametrize_with_checks(
    [MoERegressor(), MoERegressor(gate="constant"), MoERegressor(alpha=1e-2)],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_checks_regressor(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


def test_score_samples_row_invariance():
    d = load_npreg()
    X = np.column_stack([d.data, d.data**2])
    est = MoERegressor(random_state=0).fit(X, d.target)
    full = est.score_samples(X, d.target)
    perm = np.random.default_rng(0).permutation(len(X))
    np.testing.assert_allclose(est.score_samples(X[perm], d.target[perm]), full[perm], rtol=1e-12)
    np.testing.assert_allclose(est.score_samples(X[:17], d.target[:17]), full[:17], rtol=1e-12)


def _npreg():
    d = load_npreg()
    return np.column_stack([d.data, d.data**2]), d.target


def test_integer_weights_equal_repeated_rows():
    X, y = _npreg()
    rng = np.random.default_rng(1)
    w = rng.integers(0, 4, size=len(X))
    a = MoERegressor(random_state=3, tol=1e-10, max_iter=500).fit(X, y, sample_weight=w.astype(float))
    b = MoERegressor(random_state=3, tol=1e-10, max_iter=500).fit(np.repeat(X, w, axis=0), np.repeat(y, w))
    np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=1e-6)
    np.testing.assert_allclose(a.log_likelihood_, b.log_likelihood_, rtol=1e-9)
    assert a.fit_result_.total_weight == b.fit_result_.total_weight == w.sum()



def test_variance_floor_uses_the_weighted_variance_of_y():
    # y exactly on a line: the noise variance sits on the floor var_floor * var(y), and the
    # floor must be the same for integer weights as for the repeated rows they stand for
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(40, 1))
    y = 2.0 * X[:, 0] + 1.0
    w = np.where(X[:, 0] < -0.5, 6, 1)  # weights concentrated on one end change var(y)
    kw = dict(n_experts=1, var_floor=1e-3, random_state=0)
    a = MoERegressor(**kw).fit(X, y, sample_weight=w.astype(float))
    b = MoERegressor(**kw).fit(np.repeat(X, w, axis=0), np.repeat(y, w))
    np.testing.assert_allclose(a.score_samples(X, y), b.score_samples(X, y), rtol=1e-8)
    wn = w / w.sum()
    var_w = wn @ (y - wn @ y) ** 2
    noise_var = a.predict_distribution(X[:1]).variance.item()
    np.testing.assert_allclose(noise_var, 1e-3 * var_w, rtol=1e-6)

def test_zero_weights_equal_dropped_rows():
    X, y = _npreg()
    w = np.ones(len(X))
    w[::3] = 0
    a = MoERegressor(random_state=0, init="kmeans", tol=1e-10, max_iter=500).fit(X, y, sample_weight=w)
    b = MoERegressor(random_state=0, init="kmeans", tol=1e-10, max_iter=500).fit(X[w > 0], y[w > 0])
    np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=1e-6)


def test_pipeline_gridsearch_cross_val():
    X, y = _npreg()
    pipe = make_pipeline(StandardScaler(), MoERegressor(random_state=0))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and np.all(np.isfinite(scores))
    gs = GridSearchCV(MoERegressor(random_state=0), {"n_experts": [1, 2]}, cv=3).fit(X, y)
    assert gs.best_params_["n_experts"] == 2


def test_pandas_feature_names_and_feature_selection():
    d = load_npreg(as_frame=True)
    df = pd.DataFrame({"x": d.frame["x"], "x2": d.frame["x"] ** 2})
    est = MoERegressor(random_state=0, gate_features=["x"], n_init=3).fit(df, d.frame["yn"])
    assert list(est.feature_names_in_) == ["x", "x2"]
    assert est.model_.gate.n_features == 1 and est.model_.gate_features == [0]
    assert est.model_.experts.n_features == 2
    # the global maximum of flexmix's NPreg (gate on x alone, quadratic experts)
    assert est.score_samples(df, d.frame["yn"]).sum() == pytest.approx(-642.0639, abs=2e-3)
    with pytest.raises(ValueError, match="gate_features: column 'z' is not in X's columns"):
        MoERegressor(gate_features=["z"]).fit(df, d.frame["yn"])
    with pytest.raises(ValueError, match="no column names"):
        MoERegressor(gate_features=["x"]).fit(df.to_numpy(), d.frame["yn"])


def test_prediction_api_shapes_and_meaning():
    d = load_tonedata()
    X, y = d.data, d.target
    est = MoERegressor(random_state=0).fit(X, y)
    n = len(X)
    assert est.predict(X).shape == (n,)
    g = est.predict_gate(X)
    assert g.shape == (n, 2) and np.allclose(g.sum(1), 1)
    r = est.responsibilities(X, y)
    assert r.shape == (n, 2) and np.allclose(r.sum(1), 1)
    q = est.predict_quantiles(X, [0.1, 0.5, 0.9])
    assert q.shape == (n, 3) and np.all(np.diff(q, axis=1) > 0)
    dist = est.predict_distribution(X)
    np.testing.assert_allclose(dist.cdf(torch.as_tensor(q[:, 1])).numpy(), 0.5, atol=1e-8)
    s1 = est.sample_y(X, n_samples=4, random_state=7)
    s2 = est.sample_y(X, n_samples=4, random_state=7)
    assert s1.shape == (n, 4) and np.array_equal(s1, s2)
    state = torch.random.get_rng_state()
    est.sample_y(X, 2, random_state=1)
    assert torch.equal(state, torch.random.get_rng_state()), "sampling must not touch global RNG state"
    ll = est.score_samples(X, y)
    p = est.model_.n_parameters()
    assert est.bic(X, y) == pytest.approx(-2 * ll.sum() + p * np.log(n))
    assert est.aic(X, y) == pytest.approx(-2 * ll.sum() + 2 * p)
    # one meaning per name: log_likelihood_ is the total (as R and the command line), mean_* per unit weight
    assert est.log_likelihood_ == pytest.approx(ll.sum(), rel=1e-12)
    assert est.mean_log_likelihood_ == pytest.approx(ll.mean(), abs=1e-9)
    assert est.log_likelihood_history_[-1] == pytest.approx(est.log_likelihood_)
    assert est.mean_log_likelihood_history_[-1] == pytest.approx(est.mean_log_likelihood_)
    np.testing.assert_array_equal(est.mean_log_likelihood_history_, est.fit_result_.history)
    np.testing.assert_allclose(est.log_likelihood_history_, est.mean_log_likelihood_history_ * n, rtol=1e-15)
    assert est.fit_result_.total_weight == n and est.fit_result_.log_likelihood == est.log_likelihood_
    assert est.converged_ and est.n_iter_ > 0


def test_vector_y_regression():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(400, 1))
    z = (X[:, 0] > 0).astype(float)
    Y = np.column_stack([z * 2 * X[:, 0] + (1 - z) * -X[:, 0], X[:, 0] + 0.5 * z]) + 0.05 * rng.normal(size=(400, 2))
    for cov in ("full", "diag", "spherical"):
        est = MoERegressor(covariance=cov, random_state=0, n_init=3).fit(X, Y)
        assert est.predict(X).shape == (400, 2)
        assert est.sample_y(X[:5], 3, random_state=0).shape == (5, 2, 3)
        c = est.predict_distribution(X[:5]).covariance_matrix
        assert c.shape == (5, 2, 2)
        with pytest.raises(ValueError, match="scalar"):
            est.predict_quantiles(X[:5], 0.5)


def test_bad_input_messages_and_no_mutation():
    X, y = _npreg()
    X0, y0 = X.copy(), y.copy()
    est = MoERegressor(random_state=0)
    bad = X.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        est.fit(bad, y)
    bad_y = y.copy()
    bad_y[0] = np.inf
    with pytest.raises(ValueError, match="Input y contains infinity"):
        est.fit(X, bad_y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        est.fit(X, y[:-1])
    with pytest.raises(ValueError, match="sample_weight must be non-negative"):
        est.fit(X, y, sample_weight=-np.ones(len(y)))
    with pytest.raises(ValueError, match="sample_weight sums to zero"):
        est.fit(X, y, sample_weight=np.zeros(len(y)))
    with pytest.raises(ValueError, match="sample_weight has 5 entries but X has 200 rows"):
        est.fit(X, y, sample_weight=np.ones(5))
    with pytest.raises(ValueError, match="fewer experts"):
        MoERegressor(n_experts=8).fit(X[:20], y[:20])
    with pytest.raises(ValueError, match="n_experts must be an integer >= 1, got 0"):
        MoERegressor(n_experts=0).fit(X, y)
    with pytest.raises(ValueError, match="expert must be one of"):
        MoERegressor(expert="banana").fit(X, y)
    with pytest.raises(ValueError, match="could not convert|must be numeric|dtype"):
        MoERegressor().fit(np.array([["a", "b"]] * 30), y[:30])
    est.fit(X, y)
    with pytest.raises(ValueError, match="X has 3 features, but MoERegressor is expecting 2"):
        est.predict(np.ones((4, 3)))
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        est.predict_quantiles(X, [0.5, 1.5])
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)


def test_expert_and_gate_options():
    X, y = _npreg()
    for gate in ("softmax", "constant"):
        est = MoERegressor(gate=gate, random_state=0).fit(X, y)
        assert np.isfinite(est.log_likelihood_)
    est = MoERegressor(expert=LinearRegression(), random_state=0, max_iter=30).fit(X, y)
    assert np.isfinite(est.score_samples(X, y)).all()


def test_gradient_fit_method():
    X, y = _npreg()
    Xs = StandardScaler().fit_transform(X)
    em = MoERegressor(random_state=0, gate_features=[0], n_init=5).fit(Xs, y)
    lb = MoERegressor(fit_method="gradient", optimizer="lbfgs", random_state=0, gate_features=[0], n_init=5).fit(Xs, y)
    assert lb.fit_result_.method == "gradient"
    # full-batch L-BFGS from as many starts reaches the same (global) optimum as EM
    assert lb.mean_log_likelihood_ == pytest.approx(em.mean_log_likelihood_, abs=1e-4)
    # minibatch Adam with early stopping, on data large enough for a validation split
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(3000, 1))
    yy = np.where(x[:, 0] > 0, 3 * x[:, 0], -2 * x[:, 0] + 1) + 0.1 * rng.normal(size=3000)
    em2 = MoERegressor(random_state=0, n_init=3).fit(x, yy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ad = MoERegressor(fit_method="gradient", random_state=0, n_init=3, max_iter=300, learning_rate=0.05).fit(x, yy)
    assert np.isfinite(ad.fit_result_.validation_history).all()
    assert ad.mean_log_likelihood_ > em2.mean_log_likelihood_ - 0.05


def test_classifier_basic():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 2))
    y = np.where(X[:, 0] * X[:, 1] > 0, "a", "b")
    clf = MoEClassifier(n_experts=4, random_state=0, n_init=3).fit(X, y)
    assert set(clf.classes_) == {"a", "b"}
    p = clf.predict_proba(X)
    assert p.shape == (300, 2) and np.allclose(p.sum(1), 1)
    assert clf.score(X, y) > 0.85
    y3 = np.digitize(X[:, 0], [-0.5, 0.5])
    clf3 = MoEClassifier(n_experts=2, random_state=0).fit(X, y3)
    assert clf3.predict_proba(X).shape == (300, 3)
    assert clf3.score(X, y3) > 0.9
    with pytest.raises(ValueError, match="only 1 class"):
        MoEClassifier().fit(X, np.zeros(300))


@parametrize_with_checks(
    # the penalised instance runs EM to a tight tolerance: sklearn compares fits with
    # weights and with repeated rows to 1e-7, so both must reach the same optimum
    [MoEClassifier(), MoEClassifier(alpha=1e-2, tol=1e-10, max_iter=3000)],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_checks_classifier(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


def test_k1_estimators_reduce_to_glms():
    from sklearn.linear_model import LogisticRegression, PoissonRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    yb = (rng.uniform(size=400) < 1 / (1 + np.exp(-(X @ [1.0, -2.0, 0.5] + 0.3)))).astype(int)
    clf = MoEClassifier(n_experts=1, gate="constant", tol=1e-12, max_iter=100).fit(X, yb)
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(X, yb)
    np.testing.assert_allclose(clf.predict_proba(X), ref.predict_proba(X), atol=1e-6)
    yc = rng.poisson(np.exp(X @ [0.3, -0.2, 0.1] + 0.5))
    poi = MoERegressor(n_experts=1, expert="poisson", gate="constant", tol=1e-12, max_iter=100).fit(X, yc)
    ref = PoissonRegressor(alpha=0, tol=1e-12, max_iter=10_000).fit(X, yc)
    np.testing.assert_allclose(poi.predict(X), ref.predict(X), rtol=1e-6)
    yl = X @ [1.0, 2.0, 3.0] + rng.normal(size=400)
    lin = MoERegressor(n_experts=1, gate="constant").fit(X, yl)
    np.testing.assert_allclose(lin.predict(X), LinearRegression().fit(X, yl).predict(X), atol=1e-8)


def test_other_expert_families_through_the_estimator():
    rng = np.random.default_rng(1)
    X = rng.uniform(-1, 1, size=(500, 1))
    z = X[:, 0] > 0
    y = np.where(z, 2 * X[:, 0], -X[:, 0]) + 0.1 * rng.standard_t(3, size=500)
    t = MoERegressor(expert="student_t", random_state=0).fit(X, y)
    assert np.isfinite(t.score_samples(X, y)).all() and np.all(np.diff(t.mean_log_likelihood_history_) > -1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MoERegressor(expert="mlp", hidden_layer_sizes=(8,), random_state=0, max_iter=30).fit(X, y)
    assert np.isfinite(m.predict(X)).all()
    counts = rng.poisson(np.exp(np.where(z, 1 + X[:, 0], 0.2)))
    p = MoERegressor(expert="poisson", random_state=0).fit(X, counts)
    assert p.predict_quantiles(X[:3], [0.5]).shape == (3, 1)
    with pytest.raises(ValueError, match="non-negative integer counts"):
        MoERegressor(expert="poisson").fit(X, y)


def test_float32_and_device_checks():
    d = load_tonedata()
    est = MoERegressor(dtype="float32", random_state=0, n_init=5).fit(d.data, d.target)
    assert est.predict(d.data[:2]).dtype == np.float32
    assert est.score_samples(d.data, d.target).sum() == pytest.approx(145.650, abs=1e-2)
    with pytest.raises(ValueError, match="dtype must be 'float64' or 'float32'"):
        MoERegressor(dtype="int8").fit(d.data, d.target)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available here; use device='cpu'"):
            MoERegressor(device="cuda").fit(d.data, d.target)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    d = load_tonedata()
    cpu = MoERegressor(random_state=0, n_init=3).fit(d.data, d.target)
    gpu = MoERegressor(random_state=0, n_init=3, device="cuda").fit(d.data, d.target)
    np.testing.assert_allclose(gpu.predict(d.data), cpu.predict(d.data), rtol=1e-6)


def test_no_silent_nan_from_heavy_tailed_experts():
    d = load_tonedata()
    est = MoERegressor(expert="student_t", random_state=0).fit(d.data, d.target)
    q = est.predict_quantiles(d.data, [0.1, 0.5, 0.9])
    assert np.isfinite(q).all() and np.all(np.diff(q, axis=1) > 0)
    df = est.model_.experts.log_df.exp()
    if bool((df <= 1).any()):  # the mean of such an expert does not exist: a clear error, never NaN
        with pytest.raises(ValueError, match="conditional mean does not exist"):
            est.predict(d.data)
    else:
        assert np.isfinite(est.predict(d.data)).all()


# ------------------------------------------------------------ one rule per parameter
ALL_ESTIMATORS = ("MoERegressor", "MoEClassifier", "HMERegressor", "HMEClassifier", "MDNRegressor")


@pytest.mark.parametrize("name", ALL_ESTIMATORS)
def test_every_parameter_is_declared_once(name):
    import moekit
    from moekit._validation import PARAMETERS

    cls = getattr(moekit, name)
    for p in cls().get_params():
        assert p in cls._parameter_specs or p in PARAMETERS, f"{name}.{p} has no spec"


@pytest.mark.parametrize("name", ALL_ESTIMATORS)
@pytest.mark.parametrize("device,match", [
    ("bogus", "device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got 'bogus'"),
    ("cuda", "device='cuda' but no CUDA device is available here; use device='cpu'"),
])
def test_one_device_rule_for_every_estimator(name, device, match):
    import moekit

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    X, y = _npreg()
    with pytest.raises(ValueError, match=match):
        getattr(moekit, name)(device=device).fit(X, (y > y.mean()).astype(int) if "Classifier" in name else y)


@pytest.mark.parametrize("name", ALL_ESTIMATORS)
def test_one_dtype_rule_for_every_estimator(name):
    import moekit

    X, y = _npreg()
    with pytest.raises(ValueError, match="dtype must be 'float64' or 'float32', got 'int8'"):
        getattr(moekit, name)(dtype="int8").fit(X, (y > y.mean()).astype(int) if "Classifier" in name else y)


def test_classifiers_have_no_covariance_or_variance_floor():
    import moekit

    for name in ("MoEClassifier", "HMEClassifier"):
        params = getattr(moekit, name)().get_params()
        assert "covariance" not in params and "var_floor" not in params


# ------------------------------------------------ the default start strategy
@pytest.mark.parametrize("gate,best", [("softmax", 145.6503), ("constant", 145.4168)])
def test_default_fit_reaches_tonedatas_highest_known_maximum(gate, best):
    d = load_tonedata()
    totals = [MoERegressor(n_experts=2, gate=gate, random_state=s).fit(d.data, d.target).log_likelihood_
              for s in range(10)]
    assert max(totals) <= best + 1e-3
    assert sum(abs(t - best) < 1e-3 for t in totals) >= 9


def test_default_fit_reaches_npregs_maximum_and_random_init_is_one_short_start():
    d = load_npreg()
    X = np.column_stack([d.data, d.data**2])
    est = MoERegressor(n_experts=2, gate_features=[0], random_state=0).fit(X, d.target)
    assert est.log_likelihood_ == pytest.approx(-642.064, abs=1e-3)
    one = MoERegressor(n_experts=2, init="random", random_state=0).fit(load_tonedata().data, load_tonedata().target)
    assert one.log_likelihood_ == pytest.approx(142.848, abs=1e-3)  # the classic local maximum
