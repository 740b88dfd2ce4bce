"""Online (stepwise) EM and ``partial_fit``: the running averages, the guarded Newton steps, the estimators."""

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch

from moekit import (
    ConstantGate,
    HMEClassifier,
    HMERegressor,
    LinearGaussianExpert,
    MixtureOfExperts,
    MLPExpert,
    MoEClassifier,
    MoERegressor,
    PoissonExpert,
    SoftmaxGate,
    fit_em,
    load,
)
from moekit.training.online import OnlineEM, check_online_model, step_size

D = torch.float64


def _params(m):
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


def _gated_lines(n, seed, k=3):
    """x (n, 2); y from K linear-Gaussian experts under a softmax gate of x."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    logits = np.column_stack([2 + 2 * X[:, 0] + 1.5 * X[:, 1], 1 + 2 * X[:, 1], np.zeros(n)])[:, :k]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    z = (rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1)
    coef = np.array([[1.0, 2.0, -1.0], [-1.0, -1.0, 2.0], [0.0, 0.5, 0.5]])[z]
    noise = np.array([0.3, 0.5, 0.2])[z]
    y = coef[:, 0] + (coef[:, 1:] * X).sum(1) + noise * rng.normal(size=n)
    return X, y


def _poisson_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=D)
    up = x[:, 0] + 0.3 * torch.randn(n, generator=g, dtype=D) > 0
    eta = torch.where(up, 1.0 + 0.5 * x[:, 0] - 0.3 * x[:, 1], 0.2 - 0.4 * x[:, 0] + 0.6 * x[:, 1])
    return x, torch.poisson(eta.exp(), generator=g)


# ------------------------------------------------------------------ Must show
def test_partial_fit_reaches_the_batch_optimum():
    """20 passes over 20,000 rows in batches of 1,000 reach the batch optimum's mean log-likelihood within 1e-3."""
    X, y = _gated_lines(20_000, seed=1)
    full = MoERegressor(n_experts=3, random_state=0, tol=1e-10, max_iter=2000).fit(X, y)
    optimum = full.score_samples(X, y).mean()
    est = MoERegressor(n_experts=3, random_state=0)
    rng = np.random.default_rng(0)
    gaps = []
    for _ in range(20):
        order = rng.permutation(len(X))
        for i in range(0, len(X), 1000):
            rows = order[i : i + 1000]
            assert est.partial_fit(X[rows], y[rows]) is est
        gaps.append(optimum - est.score_samples(X, y).mean())
    assert est.n_batches_seen_ == 400 and est.n_rows_seen_ == 400_000
    assert abs(gaps[-1]) < 1e-3, gaps
    assert gaps[-1] > -1e-6  # the batch fit is the maximum: online EM does not pass it
    assert gaps[-1] < gaps[0] or gaps[0] < 1e-4


# ------------------------------------------------------- running averages
def test_step_size_schedule():
    assert step_size(0) == pytest.approx(2**-0.6)
    assert step_size(10, alpha=1.0) == pytest.approx(1 / 12)
    with pytest.raises(ValueError, match=r"alpha must be a number in \(0.5, 1\]"):
        OnlineEM(MixtureOfExperts(ConstantGate(2), LinearGaussianExpert(1, n_experts=2)), alpha=0.5)
    with pytest.raises(ValueError, match="max_step must be a finite number > 0"):
        OnlineEM(MixtureOfExperts(ConstantGate(2), LinearGaussianExpert(1, n_experts=2)), max_step=0)


def _started(make, x, y, rows=500):
    m = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_em(m, x[:rows], y[:rows], random_state=0, max_iter=5)
    return m


@pytest.mark.parametrize("make", [
    lambda: MixtureOfExperts(ConstantGate(2), LinearGaussianExpert(2, n_experts=2)),
    lambda: MixtureOfExperts(SoftmaxGate(2, 2), PoissonExpert(2, n_experts=2)),
    lambda: MixtureOfExperts(SoftmaxGate(2, 2), [LinearGaussianExpert(2), MixtureOfExperts(SoftmaxGate(2, 2),
                                                                                   LinearGaussianExpert(2, n_experts=2))]),
], ids=["exact", "newton", "nested"])
def test_gamma_one_is_one_em_step_on_the_batch(make):
    """With gamma = 1 an update is the batch's own EM step: exact M-steps, one Newton step from the statistics."""
    x, y = _poisson_data(1500, seed=3)
    if not isinstance(make().experts, PoissonExpert):
        y = torch.log1p(y)
    m = _started(make, x, y)
    ref = copy.deepcopy(m)
    online = OnlineEM(m, max_step=1e6)  # the cap of a Newton step out of the way: the plain step
    online.initialise(x[:500], y[:500])
    b = slice(500, 1500)
    online.step(x[b], y[b], gamma=1.0)
    ref.m_step(ref.suff_stats(x[b], y[b]))  # no passes: one step from the statistics per component
    torch.testing.assert_close(_params(m), _params(ref), rtol=1e-10, atol=1e-10)


def test_running_average_of_statistics_per_unit_weight():
    """After initialise(b1) and step(b2): the M-step of (1 - g) s1 / W1 + g s2 / W2, with g = 2**-0.6 at t = 0."""
    x, y = _poisson_data(1500, seed=4)
    y = torch.log1p(y)
    m = _started(lambda: MixtureOfExperts(ConstantGate(2), LinearGaussianExpert(2, n_experts=2)), x, y)
    w1 = torch.rand(500, generator=torch.Generator().manual_seed(0), dtype=D) + 0.5
    s1 = m.suff_stats(x[:500], y[:500], w1)
    online = OnlineEM(m)
    online.initialise(x[:500], y[:500], w1)
    ref = copy.deepcopy(m)
    s2 = m.suff_stats(x[500:], y[500:])
    assert online.step_size() == pytest.approx(2**-0.6)
    online.step(x[500:], y[500:])
    assert online.n_updates == 1 and online.step_size() == pytest.approx(3**-0.6)
    g, wa, wb = 2**-0.6, float(w1.sum()), 1000.0
    mean_w = (1 - g) * wa + g * wb
    mixed = (s1.scale((1 - g) / wa) + s2.scale(g / wb)).scale(mean_w)
    ref.m_step(mixed)
    torch.testing.assert_close(_params(m), _params(ref), rtol=1e-10, atol=1e-10)
    assert online.mean_weight == pytest.approx(mean_w)


def test_integer_weights_equal_repeated_rows():
    x, y = _poisson_data(1200, seed=5)
    make = lambda: MixtureOfExperts(SoftmaxGate(2, 2), PoissonExpert(2, n_experts=2))  # noqa: E731
    a = _started(make, x, y)
    b = copy.deepcopy(a)
    w = torch.ones(700, dtype=D)
    w[:100] = 2.0
    ra, rb = OnlineEM(a), OnlineEM(b)
    ra.initialise(x[:500], y[:500])
    rb.initialise(x[:500], y[:500])
    ra.step(x[500:], y[500:], w)
    rows = torch.cat([torch.arange(500, 1200), torch.arange(500, 600)])
    rb.step(x[rows], y[rows])
    torch.testing.assert_close(_params(a), _params(b), rtol=1e-9, atol=1e-10)


def test_first_step_without_initialise_uses_the_batch():
    x, y = _poisson_data(1000, seed=6)
    y = torch.log1p(y)
    m = _started(lambda: MixtureOfExperts(ConstantGate(2), LinearGaussianExpert(2, n_experts=2)), x, y)
    ref = copy.deepcopy(m)
    online = OnlineEM(m)
    assert not online.initialised
    online.step(x, y)
    assert online.initialised and online.n_updates == 0
    ref.m_step(ref.suff_stats(x, y))
    torch.testing.assert_close(_params(m), _params(ref), rtol=1e-10, atol=1e-10)


def test_state_dict_resumes_exactly():
    x, y = _poisson_data(3000, seed=7)
    make = lambda: MixtureOfExperts(SoftmaxGate(2, 2), PoissonExpert(2, n_experts=2))  # noqa: E731
    a = _started(make, x, y)
    b = copy.deepcopy(a)
    ra = OnlineEM(a)
    ra.initialise(x[:500], y[:500])
    ra.step(x[500:1500], y[500:1500])
    state = ra.state_dict()
    b.load_state_dict(a.state_dict())
    rb = OnlineEM(b).load_state_dict(state)
    ra.step(x[1500:], y[1500:])
    rb.step(x[1500:], y[1500:])
    torch.testing.assert_close(_params(a), _params(b), rtol=0, atol=0)
    with pytest.raises(ValueError, match="taken from another model"):
        OnlineEM(MixtureOfExperts(ConstantGate(2), LinearGaussianExpert(2, n_experts=2))).load_state_dict(state)


def test_separable_gate_is_not_thrown_away():
    """A saturated gate has almost no curvature: the step is capped by the change of its logits, so it cannot flip."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(6000, 1))
    y = np.where(X[:, 0] < 0, 1 + 2 * X[:, 0], -1 - X[:, 0]) + 0.1 * rng.normal(size=6000)
    est = MoERegressor(n_experts=2, random_state=0)
    for i in range(0, 6000, 1000):
        est.partial_fit(X[i : i + 1000], y[i : i + 1000])
    np.testing.assert_allclose(est.predict(np.array([[-0.5], [0.5]])), [0.0, -1.5], atol=0.05)
    assert est.score_samples(X, y).mean() > 0.8


# ------------------------------------------------------------- estimators
def test_partial_fit_returns_self_and_predicts_after_one_call():
    X, y = _gated_lines(600, seed=2, k=2)
    est = MoERegressor(n_experts=2, random_state=0)
    assert est.partial_fit(X, y) is est
    assert est.predict(X[:5]).shape == (5,) and np.isfinite(est.score_samples(X, y)).all()
    assert est.n_features_in_ == 2 and est.n_experts_ == 2 and est.n_batches_seen_ == 1
    assert est.mean_log_likelihood_ == pytest.approx(est.score_samples(X, y).mean())


def test_first_call_fits_the_batch_as_fit_does():
    X, y = _gated_lines(800, seed=3, k=2)
    a = MoERegressor(n_experts=2, random_state=0).partial_fit(X, y)
    b = MoERegressor(n_experts=2, random_state=0).fit(X, y)
    torch.testing.assert_close(_params(a.model_), _params(b.model_), rtol=0, atol=0)


def test_partial_fit_keeps_user_arrays():
    X, y = _gated_lines(900, seed=4, k=2)
    w = np.linspace(0.5, 1.5, 900)
    copies = X.copy(), y.copy(), w.copy()
    est = MoERegressor(n_experts=2, random_state=0)
    est.partial_fit(X[:500], y[:500], sample_weight=w[:500])
    est.partial_fit(X[500:], y[500:], sample_weight=w[500:])
    for a, b in zip((X, y, w), copies):
        np.testing.assert_array_equal(a, b)


def test_feature_count_and_names_must_match():
    pd = pytest.importorskip("pandas")
    X, y = _gated_lines(600, seed=5, k=2)
    est = MoERegressor(n_experts=2, random_state=0).partial_fit(X, y)
    with pytest.raises(ValueError, match="X has 1 features, but MoERegressor is expecting 2 features"):
        est.partial_fit(X[:, :1], y)
    frame = MoERegressor(n_experts=2, random_state=0).partial_fit(pd.DataFrame(X, columns=["a", "b"]), y)
    with pytest.raises(ValueError, match="feature names should match"):
        frame.partial_fit(pd.DataFrame(X, columns=["a", "c"]), y)
    assert frame.partial_fit(pd.DataFrame(X, columns=["a", "b"]), y).n_batches_seen_ == 2


def test_models_without_statistics_are_refused():
    X, y = _gated_lines(300, seed=6, k=2)
    for est in (MoERegressor(n_experts=2, expert="mlp", random_state=0),
                MoERegressor(n_experts=2, gate="mlp", random_state=0)):
        with pytest.raises(TypeError, match="online EM needs sufficient statistics.*fit_method='gradient'"):
            est.partial_fit(X, y)
        assert not hasattr(est, "model_")  # refused before any training
    with pytest.raises(TypeError, match="MLPExpert at experts/stacked has none"):
        check_online_model(MixtureOfExperts(SoftmaxGate(1, 2), MLPExpert(1, n_experts=2)))
    with pytest.raises(TypeError, match="model must be a MixtureOfExperts"):
        OnlineEM(LinearGaussianExpert(1))


def test_options_online_em_does_not_follow_are_refused():
    pd = pytest.importorskip("pandas")
    X, y = _gated_lines(300, seed=7, k=2)
    with pytest.raises(ValueError, match="partial_fit takes X and y, not formula="):
        MoERegressor(formula="y ~ a").partial_fit(pd.DataFrame({"a": X[:, 0], "y": y}), None)
    with pytest.raises(ValueError, match="missing='drop'"):
        MoERegressor(missing="drop").partial_fit(X, y)
    with pytest.raises(ValueError, match=r"grow=True\) chooses the tree"):
        HMERegressor(grow=True).partial_fit(X, y)
    with pytest.raises(ValueError, match="sample_weight sums to zero"):
        MoERegressor().partial_fit(X, y, sample_weight=np.zeros(len(y)))


def test_classifier_classes_on_the_first_call():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 2))
    y = np.where(X[:, 0] > 0, "a", np.where(X[:, 1] > 0, "b", "c"))
    clf = MoEClassifier(n_experts=2, random_state=0, tol=1e-5)
    with pytest.raises(ValueError, match="classes must be given on the first call of partial_fit"):
        clf.partial_fit(X[:500], y[:500])
    first = y[:500] != "c"  # the first batch need not hold every class
    partial = MoEClassifier(n_experts=2, random_state=0, tol=1e-5)
    assert partial.partial_fit(X[:500][first], y[:500][first], classes=["c", "a", "b", "a"]) is partial
    assert partial.classes_.tolist() == ["a", "b", "c"]
    proba = partial.partial_fit(X[500:1000], y[500:1000]).predict_proba(X[:4])
    assert proba.shape == (4, 3) and np.allclose(proba.sum(1), 1)
    clf.partial_fit(X[:500], y[:500], classes=["c", "a", "b", "a"])
    assert clf.classes_.tolist() == ["a", "b", "c"]
    for i in range(500, 3000, 500):
        clf.partial_fit(X[i : i + 500], y[i : i + 500])
    assert clf.score(X, y) > 0.9
    with pytest.raises(ValueError, match=r"y holds labels not in classes: \['d'\]"):
        clf.partial_fit(X[:3], np.array(["a", "d", "b"]))
    with pytest.raises(ValueError, match="differs from this estimator's classes_"):
        clf.partial_fit(X[:3], y[:3], classes=["a", "b"])
    clf.partial_fit(X[:300], y[:300], classes=["b", "c", "a"])  # the same classes: accepted
    with pytest.raises(ValueError, match=r"y holds labels not in classes: \['z'\]"):
        MoEClassifier().partial_fit(X[:50], np.where(X[:50, 0] > 0, "a", "z"), classes=["a", "b"])


def test_fit_resets_the_online_state():
    X, y = _gated_lines(2000, seed=8, k=2)
    est = MoERegressor(n_experts=2, random_state=0)
    for i in range(0, 1500, 500):
        est.partial_fit(X[i : i + 500], y[i : i + 500])
    assert est.n_batches_seen_ == 3
    est.fit(X, y)
    fitted = _params(est.model_)
    est.partial_fit(X[1500:], y[1500:])  # continues from the fitted model: this batch starts the averages
    assert est.n_batches_seen_ == 1
    torch.testing.assert_close(_params(est.model_), fitted, rtol=0, atol=0)
    est.partial_fit(X[:500], y[:500])
    assert est.n_batches_seen_ == 2 and not torch.equal(_params(est.model_), fitted)


def test_online_state_survives_model_files_and_pickle(tmp_path):
    X, y = _gated_lines(2500, seed=9, k=2)
    est = MoERegressor(n_experts=2, random_state=0)
    for i in range(0, 1500, 500):
        est.partial_fit(X[i : i + 500], y[i : i + 500])
    est.save(tmp_path / "m.moekit")
    loaded = load(tmp_path / "m.moekit")
    pickled = pickle.loads(pickle.dumps(est))
    for other in (loaded, pickled):
        assert other.n_batches_seen_ == 3
    for e in (est, loaded, pickled):
        e.partial_fit(X[1500:], y[1500:])
    for other in (loaded, pickled):
        assert other.n_batches_seen_ == 4
        torch.testing.assert_close(_params(other.model_), _params(est.model_), rtol=0, atol=0)


def test_offset_and_trials_travel_with_every_batch():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(3000, 1))
    exposure = rng.uniform(1, 3, 3000)
    y = rng.poisson(exposure * np.exp(0.5 + 0.3 * X[:, 0])).astype(float)
    est = MoERegressor(n_experts=1, expert="poisson", random_state=0)
    for i in range(0, 3000, 1000):
        est.partial_fit(X[i : i + 1000], y[i : i + 1000], offset=np.log(exposure[i : i + 1000]))
    np.testing.assert_allclose(est.model_.experts.coef.detach().numpy().ravel(), [0.5, 0.3], atol=0.05)
    with pytest.raises(ValueError, match="fitted with offset"):
        est.partial_fit(X[:10], y[:10])
    trials = rng.integers(1, 6, 3000).astype(float)
    succ = rng.binomial(trials.astype(int), 1 / (1 + np.exp(-X[:, 0]))).astype(float)
    binom = MoERegressor(n_experts=1, expert="binomial", random_state=0)
    for i in range(0, 3000, 1000):
        binom.partial_fit(X[i : i + 1000], succ[i : i + 1000], trials=trials[i : i + 1000])
    np.testing.assert_allclose(binom.model_.experts.coef.detach().numpy().ravel(), [0.0, 1.0], atol=0.1)
    with pytest.raises(ValueError, match="expert='binomial': y is 7"):
        binom.partial_fit(X[:2], np.array([7.0, 0.0]), trials=np.array([5.0, 5.0]))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_hierarchies_update_every_gate():
    X, y = _gated_lines(4000, seed=10)
    est = HMERegressor(depth=2, branching=2, random_state=0)
    est.partial_fit(X[:1000], y[:1000])
    gates = [c.detach().clone() for n, c in est.model_.named_parameters() if n.endswith("gate.coef")]
    first = est.score_samples(X[1000:], y[1000:]).mean()
    for i in range(1000, 4000, 1000):
        est.partial_fit(X[i : i + 1000], y[i : i + 1000])
    after = [c for n, c in est.model_.named_parameters() if n.endswith("gate.coef")]
    assert len(gates) == 3 and all(not torch.equal(a, b) for a, b in zip(gates, after))
    assert est.n_leaves_ == 4 and est.score_samples(X[1000:], y[1000:]).mean() > first - 1e-3
    clf = HMEClassifier(depth=2, branching=2, random_state=0)
    clf.partial_fit(X[:1000], (y[:1000] > 0).astype(int), classes=[0, 1])
    clf.partial_fit(X[1000:2000], (y[1000:2000] > 0).astype(int))
    assert clf.predict_proba(X[:3]).shape == (3, 2)


def test_fitted_model_without_statistics_is_refused_by_partial_fit():
    X, y = _gated_lines(300, seed=11, k=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MoERegressor(n_experts=2, expert="mlp", hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(X, y)
    with pytest.raises(TypeError, match="MLPExpert at experts/stacked has none"):
        est.partial_fit(X, y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_partial_fit_on_cuda(dtype):
    X, y = _gated_lines(4000, seed=12, k=2)
    est = MoERegressor(n_experts=2, random_state=0, device="cuda", dtype=dtype)
    for i in range(0, 3000, 1000):
        est.partial_fit(X[i : i + 1000], y[i : i + 1000])
    assert next(est.model_.parameters()).is_cuda and np.isfinite(est.score_samples(X, y)).all()
    again = pickle.loads(pickle.dumps(est))
    est.partial_fit(X[3000:], y[3000:])
    again.partial_fit(X[3000:], y[3000:])
    torch.testing.assert_close(_params(again.model_), _params(est.model_))
