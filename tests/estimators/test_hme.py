"""The HME estimators (HMERegressor, HMEClassifier): prediction API, tree views, growing, scikit-learn checks.

The trees themselves are tested in tests/tree/, their training in tests/training/.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from moekit import HMEClassifier, HMERegressor, LinearGaussianExpert, fit_em
from moekit.training.tree import fit_tree_em, init_tree
from moekit.tree import build_tree, n_leaves, path_posteriors, path_probabilities
from tests.tree_data import zigzag

D = torch.float64


# ------------------------------------------------------------ estimators
def test_hme_estimator_prediction_api_and_tree_views():
    x, y = zigzag(600, seed=3)
    X, Y = x.numpy(), y.numpy()
    est = HMERegressor(depth=3, branching=2, init="kmeans_x", random_state=0).fit(X, Y)
    assert est.n_leaves_ == 8 and est.depth_ == 3 and est.n_experts_ == 8
    g = est.predict_gate(X)
    r = est.responsibilities(X, Y)
    assert g.shape == r.shape == (600, 8) and np.allclose(g.sum(1), 1) and np.allclose(r.sum(1), 1)
    nodes = est.predict_node_gates(X[:5])
    assert len(nodes) == 7 and nodes[()].shape == (5, 2)
    dist = est.predict_distribution(X[:5])
    assert dist.weights.shape == (5, 8)
    q = est.predict_quantiles(X[:5], [0.1, 0.5, 0.9])
    assert q.shape == (5, 3) and np.all(np.diff(q, axis=1) > 0)
    assert est.sample_y(X[:4], 3, random_state=0).shape == (4, 3)
    modes, weights = est.predict_modes(X[:4], max_modes=2)
    assert modes.shape == weights.shape == (4, 2)
    # a zigzag of 8 linear pieces: the tree fits it far better than one line
    assert 1 - np.mean((est.predict(X) - Y) ** 2) / np.var(Y) > 0.9
    txt = est.render_tree(X, Y)
    assert txt.startswith("HME: depth 3, 8 leaves, 7 gates")
    assert est.mean_log_likelihood_ == pytest.approx(est.score_samples(X, Y).mean(), abs=1e-9)
    assert est.log_likelihood_ == pytest.approx(est.score_samples(X, Y).sum(), rel=1e-12)
    assert est.bic(X, Y) == pytest.approx(-2 * est.score_samples(X, Y).sum() + est.model_.n_parameters() * np.log(600))


def test_hme_classifier_fits_xor():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 2))
    y = np.where(X[:, 0] * X[:, 1] > 0, "same", "different")
    clf = HMEClassifier(depth=2, branching=2, n_init=2, random_state=0).fit(X, y)
    assert clf.score(X, y) > 0.95 and clf.predict_proba(X).shape == (400, 2)
    assert clf.responsibilities(X, y).shape == (400, 4)
    y3 = np.digitize(X[:, 0], [-0.5, 0.5])
    clf3 = HMEClassifier(depth=2, branching=2, random_state=0).fit(X, y3)
    assert clf3.predict_proba(X).shape == (400, 3) and clf3.score(X, y3) > 0.9


def test_hme_estimator_grow_option():
    rng = np.random.default_rng(1)
    X = rng.uniform(-3, 3, size=(1500, 1))
    y = np.abs(X[:, 0]) + 0.1 * rng.normal(size=1500)
    est = HMERegressor(grow=True, depth=None, random_state=0).fit(X, y)
    assert est.n_leaves_ == 2 and est.grow_result_.stopped == "no split helps"
    assert 1 - np.mean((est.predict(X) - y) ** 2) / np.var(y) > 0.9
    shallow = HMERegressor(grow=True, depth=1, branching=3, random_state=0).fit(X, y)
    assert shallow.n_leaves_ == 3 and shallow.depth_ == 1  # depth caps the growth


def test_tree_larger_than_data_raises_and_vanishing_leaves_are_pruned():
    x, y = zigzag(40, seed=0)
    with pytest.raises(ValueError, match=r"the tree is larger than the data supports: 16 leaves \(4 level\(s\) of gates\)"):
        HMERegressor(depth=4, branching=2).fit(x.numpy(), y.numpy())
    HMERegressor(depth=4, branching=2, alpha=1.0, max_iter=20).fit(x.numpy(), y.numpy())  # penalised: allowed
    # a leaf that receives (almost) no data inside the tree is pruned with a warning, never NaN
    x, y = zigzag(300, seed=1)
    tree = build_tree(1, depth=2, branching=2)
    init_tree(tree, x, y, init="kmeans_x", random_state=0)
    with torch.no_grad():
        tree.experts[1].gate.coef.copy_(torch.tensor([[-60.0, 0.0], [0.0, 0.0]], dtype=D))  # leaf (1, 0) starved
    with pytest.warns(RuntimeWarning, match=r"hierarchy node \[1\]: pruned child\(ren\) \[0\]"):
        res = fit_em(tree, x, y, init=None, max_iter=20)
    assert n_leaves(tree) == 3 and all(math.isfinite(h) for h in res.history)


def test_restarts_are_reproducible_and_differ():
    x, y = zigzag(300, seed=4)
    a, b, c = (build_tree(1, depth=3, branching=2) for _ in range(3))
    init_tree(a, x, y, init="kmeans", random_state=3)
    init_tree(b, x, y, init="kmeans", random_state=3)
    init_tree(c, x, y, init="kmeans", random_state=4)
    sa, sb, sc = (torch.cat([p.detach().flatten() for p in t.parameters()]) for t in (a, b, c))
    assert torch.equal(sa, sb) and not torch.equal(sa, sc)
    # integer weights equal repeated rows, down the whole tree
    w = torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(0)).to(D)
    d, e = build_tree(1, depth=3, branching=2), build_tree(1, depth=3, branching=2)
    init_tree(d, x, y, w, init="kmeans", random_state=1)
    rep = w.long()
    init_tree(e, x.repeat_interleave(rep, 0), y.repeat_interleave(rep), init="kmeans", random_state=1)
    for p, q in zip(d.parameters(), e.parameters()):
        torch.testing.assert_close(p, q)


def test_bad_input_messages_and_no_mutation():
    x, y = zigzag(100)
    X, Y = x.numpy().copy(), y.numpy().copy()
    X0, Y0 = X.copy(), Y.copy()
    with pytest.raises(ValueError, match=r"depth=3 disagrees with the per-level branching \(4, 2\)"):
        HMERegressor(depth=3, branching=(4, 2)).fit(X, Y)
    with pytest.raises(ValueError, match="with grow=True, branching must be an int >= 2"):
        HMERegressor(grow=True, branching=(2, 2)).fit(X, Y)
    with pytest.raises(ValueError, match="grow=True fits every candidate tree by EM"):
        HMERegressor(grow=True, fit_method="gradient").fit(X, Y)
    with pytest.raises(ValueError, match="init must be one of 'kmeans', 'kmeans_x', 'random'"):
        HMERegressor(init="spectral").fit(X, Y)
    with pytest.raises(ValueError, match="expert must be one of"):
        HMERegressor(expert="banana").fit(X, Y)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        HMERegressor().fit(bad, Y)
    est = HMERegressor(depth=2, random_state=0).fit(X, Y)
    with pytest.raises(ValueError, match="X has 2 features, but HMERegressor is expecting 1"):
        est.predict(np.ones((3, 2)))
    with pytest.raises(ValueError, match="y must have shape"):
        est.responsibilities(X, Y[:10])
    with pytest.raises(TypeError, match="tree must be a MixtureOfExperts"):
        path_probabilities(LinearGaussianExpert(1), x)
    with pytest.raises(ValueError, match="x has 100 rows but y has 99"):
        path_posteriors(est.model_, x, y[:99])
    with pytest.raises(ValueError, match="init must be one of"):
        fit_tree_em(build_tree(1, depth=2, branching=2), x, y, init="spectral")
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(Y, Y0)


# ------------------------------------------------------ scikit-learn checks
# The default tree (depth 2, branching 2: 4 leaves and 3 gates) has more free
# parameters than the rows of most of scikit-learn's tiny check data sets
# (10-56 rows, up to 30 features); moekit refuses that with a ValueError by design
# ("the tree is larger than the data supports").  Those properties are checked on
# data the tree can fit by the penalised instances (alpha > 0), which must pass them.
_TOO_SMALL = "the check's data has fewer rows than the tree has parameters; moekit raises ValueError by design"
_COND = "score_samples needs y (a conditional density); invariance tested in test_score_samples_row_invariance"
_REGRESSOR_TOO_SMALL = [
    "check_dict_unchanged", "check_dont_overwrite_parameters", "check_dtype_object", "check_estimators_dtypes",
    "check_estimators_fit_returns_self", "check_estimators_nan_inf", "check_estimators_overwrite_params",
    "check_estimators_pickle", "check_f_contiguous_array_estimator", "check_fit2d_predict1d",
    "check_fit_score_takes_y", "check_n_features_in_after_fitting", "check_pipeline_consistency",
    "check_readonly_memmap_input", "check_regressor_multioutput", "check_regressors_int",
    "check_regressors_no_decision_function", "check_sample_weight_equivalence_on_dense_data",
    "check_sample_weights_list", "check_sample_weights_not_an_array", "check_sample_weights_not_overwritten",
    "check_sample_weights_pandas_series", "check_sample_weights_shape", "check_supervised_y_2d",
]
_CLASSIFIER_TOO_SMALL = [
    "check_classifier_data_not_an_array", "check_classifiers_classes", "check_dict_unchanged",
    "check_dont_overwrite_parameters", "check_dtype_object", "check_estimators_dtypes",
    "check_estimators_fit_returns_self", "check_estimators_nan_inf", "check_estimators_overwrite_params",
    "check_f_contiguous_array_estimator", "check_fit2d_predict1d", "check_fit_score_takes_y",
    "check_n_features_in_after_fitting", "check_readonly_memmap_input", "check_sample_weight_equivalence_on_dense_data",
    "check_sample_weights_list", "check_sample_weights_not_an_array", "check_sample_weights_not_overwritten",
    "check_sample_weights_pandas_series", "check_sample_weights_shape", "check_supervised_y_2d",
]


def _expected_failures(est):
    out = {"check_methods_sample_order_invariance": _COND, "check_methods_subset_invariance": _COND}
    if est.alpha == 0:
        small = _CLASSIFIER_TOO_SMALL if isinstance(est, HMEClassifier) else _REGRESSOR_TOO_SMALL
        out.update({c: _TOO_SMALL for c in small})
    return out


@parametrize_with_checks(
    [
        HMERegressor(),
        # penalised: well posed on tiny data, so every small-data check must pass (sklearn compares fits
        # with integer weights and with repeated rows to 1e-7: the starts, the variance floor and EM agree)
        HMERegressor(alpha=1e-2),
        HMEClassifier(),
        HMEClassifier(alpha=1e-2, max_iter=60),  # weighted and repeated-row fits take the same EM path
    ],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


def test_score_samples_row_invariance():
    x, y = zigzag(300, seed=6)
    X, Y = x.numpy(), y.numpy()
    est = HMERegressor(random_state=0).fit(X, Y)
    full = est.score_samples(X, Y)
    perm = np.random.default_rng(0).permutation(len(X))
    np.testing.assert_allclose(est.score_samples(X[perm], Y[perm]), full[perm], rtol=1e-12)
    np.testing.assert_allclose(est.score_samples(X[:17], Y[:17]), full[:17], rtol=1e-12)
