"""Issue 15's model structure through the hierarchies (HMERegressor, HMEClassifier).

Offsets and binomial trials (trailing columns of the model's x that no gate at any depth sees),
censored Gaussian leaves (``lower``/``upper``), NaN coordinates of a vector y under linear leaves,
and intercept-only leaves (``expert_features=[]``).  For each: fit, predictions and scores with the
extras, a model-file round trip with identical predictions, a monotone EM history, and where it is
an exact reduction, a depth-1 tree equal to MoERegressor with the same start.
"""

import numpy as np
import pytest
import torch

import moekit
from moekit import CensoredGaussianExpert, HMEClassifier, HMERegressor, MoEClassifier, MoERegressor
from moekit._validation import incomplete_targets
from moekit.training.grow import grow_tree
from moekit.training.tree import fit_tree_em, init_tree
from moekit.tree import build_tree, tree_leaves, tree_nodes

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

N = 600
RNG = np.random.default_rng(15)
X = RNG.uniform(-1, 1, size=(N, 2))
EXPOSURE = RNG.uniform(0.5, 3.0, N)
OFFSET = np.log(EXPOSURE)
COUNTS = RNG.poisson(np.exp(np.where(X[:, 0] > 0, 1.0 + 0.5 * X[:, 1], 0.2 - 0.5 * X[:, 1])) * EXPOSURE).astype(float)
TRIALS = RNG.integers(1, 12, N).astype(float)
SUCCESSES = RNG.binomial(TRIALS.astype(int), 1 / (1 + np.exp(-np.where(X[:, 0] > 0, 2 * X[:, 1], -1.0)))).astype(float)
LATENT = np.where(X[:, 0] > 0, 1.0 + 2.0 * X[:, 1], -1.0 - X[:, 1]) + 0.3 * RNG.normal(size=N)
LOWER = np.full(N, -0.5)
CENSORED = np.maximum(LATENT, LOWER)  # about a third left-censored at -0.5


def _monotone(est):
    h = est.log_likelihood_history_
    assert len(h) >= 2 and np.all(np.diff(h) >= -1e-8 * np.abs(h[:-1]).max())


def _round_trip(est, tmp_path, name):
    path = tmp_path / name
    est.save(path)
    return moekit.load(path)


def _gates_never_see(est, first_extra):
    """No gate at any depth reads a column at or after ``first_extra`` (the extras)."""
    for info in tree_nodes(est.model_):
        gf = info.node.gate_features
        assert gf is not None and max(gf) < first_extra


# ------------------------------------------------------------------ offsets
def test_hme_poisson_offset(tmp_path):
    est = HMERegressor(depth=2, expert="poisson", init="kmeans_x", random_state=0, max_iter=60).fit(X, COUNTS,
                                                                                                   offset=OFFSET)
    assert est.extras_ == ("offset",) and est.n_leaves_ == 4
    _gates_never_see(est, 2)
    for leaf in tree_leaves(est.model_):
        assert leaf.parent.expert_features == [0, 1, 2]  # features, then the offset
    _monotone(est)
    mean = est.predict(X, offset=OFFSET)
    # the offset is log exposure: the predicted mean scales with the exposure, the gates do not move
    np.testing.assert_allclose(est.predict(X, offset=OFFSET + np.log(2.0)), 2.0 * mean, rtol=1e-10)
    np.testing.assert_array_equal(est.predict_gate(X), est.predict_gate(X, offset=OFFSET + 1.0))
    ll = est.score_samples(X, COUNTS, offset=OFFSET)
    assert ll.sum() == pytest.approx(est.log_likelihood_, rel=1e-10)
    assert est.responsibilities(X, COUNTS, offset=OFFSET).shape == (N, 4)
    assert est.predict_quantiles(X[:5], [0.5], offset=OFFSET[:5]).shape == (5, 1)
    with pytest.raises(ValueError, match=r"fitted with offset=.*pass offset= here too"):
        est.predict(X)
    back = _round_trip(est, tmp_path, "offset")
    np.testing.assert_array_equal(back.predict(X, offset=OFFSET), mean)
    np.testing.assert_array_equal(back.score_samples(X, COUNTS, offset=OFFSET), ll)


def test_hme_depth_one_with_offset_is_moe():
    kw = dict(expert="poisson", init="kmeans", random_state=3, max_iter=40)
    a = MoERegressor(n_experts=2, **kw).fit(X, COUNTS, offset=OFFSET)
    b = HMERegressor(depth=1, branching=2, **kw).fit(X, COUNTS, offset=OFFSET)
    assert b.log_likelihood_ == pytest.approx(a.log_likelihood_, rel=1e-10)
    np.testing.assert_allclose(b.predict(X, offset=OFFSET), a.predict(X, offset=OFFSET), rtol=1e-8)
    np.testing.assert_allclose(b.log_likelihood_history_, a.log_likelihood_history_, rtol=1e-10)


def test_hme_linear_leaves_with_offset_and_expert_features():
    y = LATENT + 3.0 * OFFSET
    est = HMERegressor(depth=2, expert_features=[1], gate_features=[0], init="kmeans_x", random_state=0,
                       max_iter=40).fit(X, y, offset=OFFSET)
    _gates_never_see(est, 2)
    for leaf in tree_leaves(est.model_):
        assert leaf.parent.expert_features == [1, 2]
    shifted = est.predict(X, offset=OFFSET + 1.0) - est.predict(X, offset=OFFSET)
    np.testing.assert_allclose(shifted, 1.0, rtol=1e-10)  # the offset enters with coefficient one


def test_hme_grown_with_offset(tmp_path):
    est = HMERegressor(grow=True, depth=None, expert="poisson", max_leaves=4, random_state=0).fit(X, COUNTS,
                                                                                                 offset=OFFSET)
    assert est.n_leaves_ >= 2
    _gates_never_see(est, 2)
    back = _round_trip(est, tmp_path, "grown")
    np.testing.assert_array_equal(back.predict(X, offset=OFFSET), est.predict(X, offset=OFFSET))


# ------------------------------------------------------------------ trials
def test_hme_binomial_trials(tmp_path):
    est = HMERegressor(depth=2, expert="binomial", init="kmeans_x", random_state=0, max_iter=60).fit(
        X, SUCCESSES, trials=TRIALS)
    assert est.extras_ == ("trials",)
    _gates_never_see(est, 2)
    _monotone(est)
    mean = est.predict(X, trials=TRIALS)
    assert np.all((mean >= 0) & (mean <= TRIALS))
    np.testing.assert_allclose(est.predict(X, trials=2 * TRIALS), 2 * mean, rtol=1e-10)
    ll = est.score_samples(X, SUCCESSES, trials=TRIALS)
    assert ll.sum() == pytest.approx(est.log_likelihood_, rel=1e-10)
    back = _round_trip(est, tmp_path, "trials")
    np.testing.assert_array_equal(back.predict(X, trials=TRIALS), mean)
    np.testing.assert_array_equal(back.score_samples(X, SUCCESSES, trials=TRIALS), ll)
    # without trials: one trial per row (0/1 y), and predictions default to one trial
    ones = HMERegressor(depth=1, expert="binomial", random_state=0, max_iter=30).fit(X, (SUCCESSES > 3).astype(float))
    p = ones.predict(X)
    assert np.all((p > 0) & (p < 1))
    np.testing.assert_array_equal(ones.predict(X, trials=np.ones(N)), p)


def test_hme_depth_one_with_trials_is_moe():
    kw = dict(expert="binomial", init="kmeans", random_state=1, max_iter=30)
    a = MoERegressor(n_experts=2, **kw).fit(X, SUCCESSES, trials=TRIALS)
    b = HMERegressor(depth=1, branching=2, **kw).fit(X, SUCCESSES, trials=TRIALS)
    assert b.log_likelihood_ == pytest.approx(a.log_likelihood_, rel=1e-10)
    np.testing.assert_allclose(b.predict(X, trials=TRIALS), a.predict(X, trials=TRIALS), rtol=1e-8)


# ------------------------------------------------------------------ censoring limits
def test_hme_censored_leaves(tmp_path):
    assert 0.2 < np.mean(CENSORED == LOWER) < 0.6
    est = HMERegressor(depth=2, init="kmeans_x", random_state=0, max_iter=60).fit(X, CENSORED, lower=LOWER)
    assert est.censored_ and {leaf.family for leaf in tree_leaves(est.model_)} == {"CensoredGaussianExpert"}
    _monotone(est)
    ll = est.score_samples(X, CENSORED, lower=LOWER)
    assert np.isfinite(ll).all() and ll.sum() == pytest.approx(est.log_likelihood_, rel=1e-10)
    # a left-censored row scores the probability of y <= lower under the latent mixture
    row = int(np.flatnonzero(CENSORED == LOWER)[0])
    cdf = est.predict_distribution(X[row : row + 1]).cdf(torch.tensor([LOWER[row]], dtype=torch.float64))
    assert ll[row] == pytest.approx(float(torch.log(cdf)[0]), rel=1e-8)
    # two Tobit pieces under the gates: far above one Tobit line
    one = MoERegressor(n_experts=1, random_state=0).fit(X, CENSORED, lower=LOWER)
    assert est.mean_log_likelihood_ > one.mean_log_likelihood_ + 0.3
    r = est.responsibilities(X, CENSORED, lower=LOWER)
    assert r.shape == (N, 4) and np.allclose(r.sum(1), 1)
    back = _round_trip(est, tmp_path, "censored")
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    np.testing.assert_array_equal(back.score_samples(X, CENSORED, lower=LOWER), ll)


def test_hme_interval_and_right_censoring():
    upper = np.full(N, 1.5)
    y = np.clip(LATENT, LOWER, upper)
    lo, hi = LOWER.copy(), upper.copy()
    inner = (y > -0.2) & (y < 0.2)  # interval-censored rows: y unknown in [-0.2, 0.2]
    y[inner], lo[inner], hi[inner] = np.nan, -0.2, 0.2
    est = HMERegressor(depth=2, init="kmeans_x", random_state=0, max_iter=40).fit(X, y, lower=lo, upper=hi)
    _monotone(est)
    ll = est.score_samples(X, y, lower=lo, upper=hi)
    assert np.isfinite(ll).all() and np.all(ll[inner] < 0)  # probabilities of intervals
    assert ll.sum() == pytest.approx(est.log_likelihood_, rel=1e-10)


def test_hme_depth_one_censored_is_moe():
    kw = dict(init="kmeans", random_state=2, max_iter=30)
    a = MoERegressor(n_experts=2, **kw).fit(X, CENSORED, lower=LOWER)
    b = HMERegressor(depth=1, branching=2, **kw).fit(X, CENSORED, lower=LOWER)
    assert b.log_likelihood_ == pytest.approx(a.log_likelihood_, rel=1e-10)
    np.testing.assert_allclose(b.predict(X), a.predict(X), rtol=1e-8, atol=1e-10)


def test_hme_grown_censored(tmp_path):
    est = HMERegressor(grow=True, depth=None, max_leaves=4, random_state=0).fit(X, CENSORED, lower=LOWER)
    assert est.n_leaves_ >= 2
    back = _round_trip(est, tmp_path, "grown_censored")
    np.testing.assert_array_equal(back.predict(X), est.predict(X))


# ------------------------------------------------------------------ missing coordinates of a vector y
def _vector_y(missing: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.c_[LATENT, 0.5 * LATENT - X[:, 1] + 0.3 * rng.normal(size=N)]
    holes = rng.random(y.shape) < missing
    holes[holes.all(1), 0] = False  # every row keeps a coordinate
    out = y.copy()
    out[holes] = np.nan
    return y, out


def test_hme_vector_y_with_missing_coordinates(tmp_path):
    _, y = _vector_y(0.3)
    est = HMERegressor(depth=2, init="kmeans_x", random_state=0, max_iter=60).fit(X, y)
    _monotone(est)
    ll = est.score_samples(X, y)
    assert np.isfinite(ll).all() and ll.sum() == pytest.approx(est.log_likelihood_, rel=1e-10)
    # a row with its second coordinate missing scores the marginal of the first
    row = int(np.flatnonzero(np.isnan(y[:, 1]))[0])
    mix = est.predict_distribution(X[row : row + 1])
    w = np.asarray(mix.weights)[0]
    mu = np.asarray(mix.component_means)[0]
    cov = np.asarray(mix.components.covariance_matrix)[0]
    dens = np.sum(w * np.exp(-0.5 * (y[row, 0] - mu[:, 0]) ** 2 / cov[:, 0, 0]) / np.sqrt(2 * np.pi * cov[:, 0, 0]))
    assert ll[row] == pytest.approx(np.log(dens), rel=1e-9)
    assert est.responsibilities(X, y).shape == (N, 4)
    back = _round_trip(est, tmp_path, "missing")
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    np.testing.assert_array_equal(back.score_samples(X, y), ll)


def test_hme_missing_coordinates_depth_one_is_moe_and_nothing_missing_is_plain():
    full, y = _vector_y(0.25, seed=1)
    kw = dict(init="kmeans", random_state=0, max_iter=30)
    a = MoERegressor(n_experts=2, **kw).fit(X, y)
    b = HMERegressor(depth=1, branching=2, **kw).fit(X, y)
    assert b.log_likelihood_ == pytest.approx(a.log_likelihood_, rel=1e-10)
    np.testing.assert_allclose(b.predict(X), a.predict(X), rtol=1e-8, atol=1e-10)
    c = HMERegressor(depth=2, init="kmeans_x", random_state=0, max_iter=20).fit(X, full)
    assert np.isfinite(c.log_likelihood_)


def test_hme_grown_with_missing_coordinates():
    _, y = _vector_y(0.2, seed=2)
    est = HMERegressor(grow=True, depth=None, max_leaves=3, random_state=0).fit(X, y)
    assert est.n_leaves_ >= 1 and np.isfinite(est.score_samples(X, y)).all()


# ------------------------------------------------------------------ intercept-only leaves
def test_hme_intercept_only_leaves(tmp_path):
    y = np.where(X[:, 0] > 0.3, 2.0, np.where(X[:, 0] < -0.3, -2.0, 0.0)) + 0.2 * RNG.normal(size=N)
    est = HMERegressor(depth=2, expert_features=[], init="kmeans_x", random_state=0, max_iter=80).fit(X, y)
    for leaf in tree_leaves(est.model_):
        assert leaf.parent.expert_features == [] and leaf.module.n_features == 0
    _monotone(est)
    ll = est.score_samples(X, y)
    assert ll.sum() == pytest.approx(est.log_likelihood_, rel=1e-10)
    assert 1 - np.mean((est.predict(X) - y) ** 2) / np.var(y) > 0.8  # the gates carry the dependence on X
    back = _round_trip(est, tmp_path, "intercept")
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    np.testing.assert_array_equal(back.score_samples(X, y), ll)
    grown = HMERegressor(grow=True, depth=None, expert_features=[], max_leaves=4, random_state=0).fit(X, y)
    assert grown.n_leaves_ >= 2
    np.testing.assert_array_equal(_round_trip(grown, tmp_path, "intercept_grown").predict(X), grown.predict(X))


def test_hme_intercept_only_depth_one_is_moe():
    kw = dict(expert_features=[], init="kmeans", random_state=0, max_iter=40)
    a = MoERegressor(n_experts=2, **kw).fit(X, LATENT)
    b = HMERegressor(depth=1, branching=2, **kw).fit(X, LATENT)
    assert b.log_likelihood_ == pytest.approx(a.log_likelihood_, rel=1e-10)
    np.testing.assert_allclose(b.predict(X), a.predict(X), rtol=1e-8, atol=1e-10)


def test_hme_intercept_only_with_offset():
    est = HMERegressor(depth=1, expert="poisson", expert_features=[], random_state=0, max_iter=40).fit(
        X, COUNTS, offset=OFFSET)
    assert tree_leaves(est.model_)[0].parent.expert_features == [2]  # the offset alone
    np.testing.assert_allclose(est.predict(X, offset=OFFSET + np.log(3.0)), 3.0 * est.predict(X, offset=OFFSET),
                               rtol=1e-10)


def test_hme_classifier_intercept_only_leaves(tmp_path):
    labels = np.where(X[:, 0] * X[:, 1] > 0, "same", "different")
    clf = HMEClassifier(depth=2, expert_features=[], random_state=0, max_iter=80).fit(X, labels)
    assert all(leaf.parent.expert_features == [] for leaf in tree_leaves(clf.model_))
    _monotone(clf)
    assert clf.score(X, labels) > 0.9  # XOR by the gates alone
    back = _round_trip(clf, tmp_path, "classifier")
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))
    a = MoEClassifier(n_experts=2, expert_features=[], init="kmeans", random_state=0, max_iter=40).fit(X, labels)
    b = HMEClassifier(depth=1, branching=2, expert_features=[], init="kmeans", random_state=0, max_iter=40).fit(X, labels)
    assert b.log_likelihood_ == pytest.approx(a.log_likelihood_, rel=1e-10)


# ------------------------------------------------------------------ the tree trainers on incomplete targets
def test_tree_trainers_take_missing_coordinates_and_censored_rows_as_fit_em_does():
    _, y = _vector_y(0.3, seed=4)
    x = torch.as_tensor(X)
    yt = torch.as_tensor(y)
    tree = build_tree(2, depth=2, branching=2, n_outputs=2)
    res = fit_tree_em(tree, x, yt, init="kmeans_x", random_state=0, max_iter=15)  # NaN coordinates: marginalised
    assert np.all(np.diff(res.history) >= -1e-12) and np.isfinite(res.log_likelihood)
    grown = grow_tree(build_tree(2, depth=1, branching=1, n_outputs=2), x, yt, max_leaves=3, random_state=0, max_iter=15)
    assert np.isfinite(grown.fit_result.log_likelihood)
    # censored rows [y, lower, upper]: inside incomplete_targets (as the estimators call them), an error outside
    y3 = torch.as_tensor(np.c_[CENSORED, LOWER, np.full(N, np.inf)])
    cens = build_tree(2, depth=2, branching=2, leaf=lambda k: CensoredGaussianExpert(2, n_experts=k))
    with pytest.raises(ValueError, match=r"infinit"):
        init_tree(cens, x, y3, random_state=0)
    with incomplete_targets():
        res = fit_tree_em(cens, x, y3, init="kmeans_x", random_state=0, max_iter=15)
    assert np.all(np.diff(res.history) >= -1e-12) and np.isfinite(res.log_likelihood)
    # a family that cannot marginalise NaN coordinates is named
    with pytest.raises(ValueError, match=r"StudentTExpert"):
        init_tree(build_tree(2, depth=1, branching=2, leaf="student_t", n_outputs=2), x, yt, random_state=0)


@pytest.mark.parametrize("cls", [HMERegressor, HMEClassifier])
def test_missing_inputs_are_named_or_dropped(cls):
    """missing='error' names the rows and columns with NaN inputs; missing='drop' fits on the others, as the flat
    estimators do, and equals the fit on the complete rows."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 2))
    y = X[:, 0] + 0.3 * rng.normal(size=300)
    if cls is HMEClassifier:
        y = (y > 0).astype(int)
    holes = X.copy()
    holes[[3, 7], 1] = np.nan
    with pytest.raises(ValueError, match=r"rows \[3, 7\], columns \[1\].*missing='drop'"):
        cls(depth=1, random_state=0).fit(holes, y)
    with pytest.warns(UserWarning, match="dropped 2 of 300"):
        dropped = cls(depth=1, missing="drop", random_state=0, compute_se=False).fit(holes, y)
    keep = ~np.isnan(holes).any(axis=1)
    complete = cls(depth=1, random_state=0, compute_se=False).fit(X[keep], y[keep])
    assert dropped.n_rows_dropped_ == 2
    np.testing.assert_allclose(dropped.log_likelihood_, complete.log_likelihood_, rtol=1e-10)
