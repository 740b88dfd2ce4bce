"""Hierarchical mixtures of experts: EM on trees, path posteriors, inspection, growing, estimators."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from moekit import (
    ConstantGate,
    LinearGaussianExpert,
    MixtureOfExperts,
    MLPGate,
    MoERegressor,
    PoissonExpert,
    SoftmaxGate,
    StudentTExpert,
    fit_em,
    fit_gradient,
)
from moekit.hierarchy import (
    build_tree,
    fit_tree_em,
    grow_tree,
    init_tree,
    leaf_mixture,
    n_leaves,
    node_gate_probabilities,
    path_log_posteriors,
    path_posteriors,
    path_probabilities,
    render_tree,
    split_leaf,
    tree_depth,
    tree_leaves,
    tree_nodes,
)
from moekit import HMEClassifier, HMERegressor

D = torch.float64


def _nondecreasing(h, rel=1e-10):
    h = np.asarray(h)
    return np.all(np.diff(h) >= -rel * (1 + np.abs(h[:-1])))


def _zigzag(n=600, seed=0, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g, dtype=D) * 4 - 2
    y = (x[:, 0] - x[:, 0].round()).abs() + noise * torch.randn(n, generator=g, dtype=D)
    return x, y


def _two_d(n=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=D) * 2 - 1
    y = torch.sin(3 * x[:, 0]) * x[:, 1] + 0.1 * torch.randn(n, generator=g, dtype=D)
    return x, y


def _unbalanced(d=1):  # noqa: D401
    """root -> [node(2 leaves), leaf, node(node(2 leaves), leaf)]: 6 leaves at depths 1, 2 and 3."""
    deep = MixtureOfExperts(SoftmaxGate(d, 2), [
        MixtureOfExperts(SoftmaxGate(d, 2), LinearGaussianExpert(d, n_experts=2), prune_threshold=1e-4),
        LinearGaussianExpert(d),
    ], prune_threshold=1e-4)
    return MixtureOfExperts(SoftmaxGate(d, 3), [
        MixtureOfExperts(SoftmaxGate(d, 2), LinearGaussianExpert(d, n_experts=2), prune_threshold=1e-4),
        LinearGaussianExpert(d),
        deep,
    ])


# ------------------------------------------------------------------ building
def test_build_tree_shapes_and_per_level_branching():
    t = build_tree(3, depth=3, branching=2)
    assert n_leaves(t) == 8 and tree_depth(t) == 3 and len(tree_nodes(t)) == 7
    t = build_tree(3, branching=(4, 2))
    assert n_leaves(t) == 8 and t.n_experts == 4 and all(c.n_experts == 2 for c in t.experts)
    # bottom nodes hold one stacked module (fast path), upper nodes lists of nodes
    assert all(c.is_stacked for c in t.experts) and not t.is_stacked
    paths = [lf.path for lf in tree_leaves(t)]
    assert paths == [(i, j) for i in range(4) for j in range(2)]
    # parameters: 8 leaves of 5 (4 coefficients + 1 scale); root 3 x 4, four 2-way gates 1 x 4
    assert t.n_parameters() == 8 * 5 + 3 * 4 + 4 * 4
    # any leaf family and gate type
    t = build_tree(2, depth=2, branching=3, leaf="poisson", gate="constant")
    assert isinstance(t.experts[0].experts, PoissonExpert) and isinstance(t.gate, ConstantGate)
    t = build_tree(2, depth=2, branching=2, leaf=StudentTExpert(2), gate=lambda d, k: MLPGate(d, k, (4,)))
    assert isinstance(t.experts[1].experts, StudentTExpert) and t.experts[1].experts.n_experts == 2
    t = build_tree(2, depth=2, branching=2, leaf=lambda k: [LinearGaussianExpert(2) for _ in range(k)])
    assert n_leaves(t) == 4 and not t.experts[0].is_stacked
    t = build_tree(1, depth=2, branching=(3, 1))
    assert n_leaves(t) == 3 and isinstance(t.experts[0].gate, ConstantGate)


def test_build_tree_bad_arguments():
    with pytest.raises(ValueError, match="depth is required when branching is a single int"):
        build_tree(2, branching=2)
    with pytest.raises(ValueError, match=r"depth=3 disagrees with the per-level branching \(4, 2\)"):
        build_tree(2, depth=3, branching=(4, 2))
    with pytest.raises(ValueError, match="every branching factor must be a positive int"):
        build_tree(2, depth=2, branching=0)
    with pytest.raises(ValueError, match="depth must be a positive int"):
        build_tree(2, depth=0, branching=2)
    with pytest.raises(ValueError, match="leaf must be one of"):
        build_tree(2, depth=1, branching=2, leaf="banana")
    with pytest.raises(ValueError, match="the gate instance has 3 outputs but a node of this tree has 2 children"):
        build_tree(2, depth=1, branching=2, gate=SoftmaxGate(2, 3))
    with pytest.raises(ValueError, match="leaf must be a single expert"):
        build_tree(2, depth=1, branching=2, leaf=LinearGaussianExpert(2, n_experts=2))
    with pytest.raises(ValueError, match=r"gate_features must hold column indices in \[0, 2\)"):
        build_tree(2, depth=1, branching=2, gate_features=[5])


# ---------------------------------------------------------- depth 1 == flat
def test_depth_one_tree_equals_flat_moe_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 1, generator=g, dtype=D) * 2 - 1
    y = torch.where(x[:, 0] < 0.2, 2 * x[:, 0] + 1, -x[:, 0]) + 0.1 * torch.randn(300, generator=g, dtype=D)
    flat = MixtureOfExperts(SoftmaxGate(1, 3), LinearGaussianExpert(1, n_experts=3))
    tree = build_tree(1, depth=1, branching=3)
    r1 = fit_em(flat, x, y, n_init=2, init="kmeans", random_state=5, max_iter=50)
    r2 = fit_tree_em(tree, x, y, n_init=2, init="kmeans", random_state=5, max_iter=50)
    assert r1.history == r2.history and r1.init_log_likelihoods == r2.init_log_likelihoods
    for (k1, a), (k2, b) in zip(flat.state_dict().items(), tree.state_dict().items()):
        assert k1 == k2 and torch.equal(a, b)
    # and through the estimators, for both starts
    X, Y = x.numpy(), y.numpy()
    for init in ("random", "kmeans"):
        a = MoERegressor(n_experts=2, init=init, n_init=2, random_state=1).fit(X, Y)
        b = HMERegressor(depth=1, branching=2, init=init, n_init=2, random_state=1).fit(X, Y)
        assert a.log_likelihood_ == b.log_likelihood_
        for (k1, p), (k2, q) in zip(a.model_.state_dict().items(), b.model_.state_dict().items()):
            assert k1 == k2 and torch.equal(p, q)
        np.testing.assert_array_equal(a.predict(X), b.predict(X))
        np.testing.assert_array_equal(a.predict_gate(X), b.predict_gate(X))


# ------------------------------------------------------------- EM on trees
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_em_never_decreases_on_trees_of_depth_1_to_4(depth):
    x, y = _two_d(300, seed=depth)
    tree = build_tree(2, depth=depth, branching=2, prune_threshold=None)  # pure EM: nothing pruned
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_tree_em(tree, x, y, init="random", random_state=0, max_iter=25, prune_threshold=0)
    assert _nondecreasing(res.history), np.diff(res.history).min()
    assert res.history[-1] > res.history[0]


@pytest.mark.parametrize("case", ["unbalanced", "mixed_families", "mlp_gates", "vector_y", "weighted"])
def test_em_never_decreases_on_unbalanced_and_mixed_trees(case):
    x, y = _two_d({"mlp_gates": 150, "mixed_families": 200}.get(case, 300), seed=3)
    w = None
    if case == "unbalanced":
        tree = _unbalanced(2)
    elif case == "mixed_families":
        tree = MixtureOfExperts(SoftmaxGate(2, 2), [
            MixtureOfExperts(ConstantGate(2), [StudentTExpert(2), LinearGaussianExpert(2)]),
            MixtureOfExperts(SoftmaxGate(2, 3), StudentTExpert(2, n_experts=3)),
        ])
    elif case == "mlp_gates":
        tree = build_tree(2, depth=2, branching=2, prune_threshold=None,
                          gate=lambda d, k: MLPGate(d, k, (4,), m_step_iter=5, generator=torch.Generator().manual_seed(k)))
    elif case == "vector_y":
        y = torch.stack([y, x[:, 0] * y], 1)
        tree = build_tree(2, depth=3, branching=2, n_outputs=2, covariance="diag", prune_threshold=None)
    else:
        w = torch.rand(len(x), generator=torch.Generator().manual_seed(0), dtype=D) * 3
        tree = build_tree(2, branching=(3, 2), prune_threshold=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_tree_em(tree, x, y, w, init="kmeans", random_state=1, prune_threshold=0,
                          max_iter={"mlp_gates": 8, "mixed_families": 12}.get(case, 30))
    assert _nondecreasing(res.history), np.diff(res.history).min()


def _manual_hme_em_step(tree, x, y):
    """One EM step written out from path posteriors: an independent implementation.

    Leaf l is fitted on the path posterior h_l; the gate of node v is fitted on
    targets T_vc = sum of h over the leaves below child c (the posterior of
    reaching c), which is v's path posterior times its branch posterior.
    """
    with torch.no_grad():
        h = path_posteriors(tree, x, y)
    leaves = tree_leaves(tree)
    for nd in tree_nodes(tree):
        cols = []
        for k in range(nd.node.n_experts):
            under = [i for i, lf in enumerate(leaves) if lf.path[: len(nd.path) + 1] == nd.path + (k,)]
            cols.append(h[:, under].sum(1))
        nd.node.gate.fit_weighted(nd.node._xg(x), torch.stack(cols, 1))
    for i, lf in enumerate(leaves):
        if lf.member is None:
            lf.module.fit_weighted(x, y, h[:, i])
    for nd in tree_nodes(tree):  # stacked groups: one call with their columns
        if nd.node.is_stacked:
            first = [i for i, lf in enumerate(leaves) if lf.parent is nd.node]
            nd.node.experts.fit_weighted(x, y, h[:, first])


@pytest.mark.parametrize("make", [lambda: build_tree(2, depth=3, branching=2), lambda: _unbalanced(2)])
def test_recursive_em_step_equals_explicit_path_posterior_em(make):
    """The nested E-step/M-step is exactly HME EM with path posteriors (Jordan & Jacobs 1994)."""
    x, y = _two_d(300, seed=7)
    a = make()
    init_tree(a, x, y, init="kmeans", random_state=0)
    for _ in range(3):
        a.em_step(x, y)
    b = make()
    b.load_state_dict(a.state_dict())
    a.em_step(x, y)
    _manual_hme_em_step(b, x, y)
    for (k, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(p, q, rtol=1e-7, atol=1e-9, msg=k)


def test_nested_statistics_are_additive_and_streaming_step_matches():
    x, y = _two_d(400, seed=2)
    tree = build_tree(2, depth=2, branching=2, gate="constant")
    init_tree(tree, x, y, init="kmeans", random_state=0)
    s = tree.suff_stats(x, y)
    s2 = tree.suff_stats(x[:170], y[:170]) + tree.suff_stats(x[170:], y[170:])
    for a, b in zip(s.tensors(), s2.tensors()):
        torch.testing.assert_close(a, b)
    other = build_tree(2, depth=2, branching=2, gate="constant")
    other.load_state_dict(tree.state_dict())
    tree.m_step(s2)  # constant gates and Gaussian leaves: exact M-steps from statistics
    other.em_step(x, y)
    for (k, p), (_, q) in zip(tree.state_dict().items(), other.state_dict().items()):
        torch.testing.assert_close(p, q, msg=k)


# ------------------------------------------------------- routing quantities
def test_path_probabilities_posteriors_and_leaf_mixture():
    x, y = _two_d(200, seed=1)
    tree = _unbalanced(2)
    init_tree(tree, x, y, init="kmeans", random_state=0)
    with torch.no_grad():
        p = path_probabilities(tree, x)
        assert p.shape == (200, 6)
        torch.testing.assert_close(p.sum(1), torch.ones(200, dtype=D))
        # path probability = product of node gates along the path
        gates = node_gate_probabilities(tree, x)
        assert set(gates) == {(), (0,), (2,), (2, 0)}
        for i, lf in enumerate(tree_leaves(tree)):
            prod = torch.ones(200, dtype=D)
            for depth in range(len(lf.path)):
                prod = prod * gates[lf.path[:depth]][:, lf.path[depth]]
            torch.testing.assert_close(p[:, i], prod)
        lp = path_log_posteriors(tree, x, y)
        torch.testing.assert_close(torch.logsumexp(lp, 1), torch.zeros(200, dtype=D))
        # posterior of a node's children = branch posteriors times the node's path posterior
        r_root = tree.log_responsibilities(x, y).exp()
        h = lp.exp()
        torch.testing.assert_close(h[:, 0] + h[:, 1], r_root[:, 0])
        torch.testing.assert_close(h[:, 2], r_root[:, 1])
        torch.testing.assert_close(h[:, 3:].sum(1), r_root[:, 2])
        # the flat mixture over leaves is the same law as the nested one
        nested, flat = tree(x[:20]), leaf_mixture(tree, x[:20])
        assert flat.weights.shape == (20, 6) and flat.component_means.shape == (20, 6)
        torch.testing.assert_close(flat.log_prob(y[:20]), tree.log_prob(x[:20], y[:20]))
        torch.testing.assert_close(flat.mean, nested.mean)
        torch.testing.assert_close(flat.variance, nested.variance)
        torch.testing.assert_close(flat.cdf(y[:20]), nested.cdf(y[:20]))
        torch.testing.assert_close(flat.quantiles([0.2, 0.7]), nested.quantiles([0.2, 0.7]))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        s = flat.sample((20000,))
    assert s.shape == (20000, 20)
    torch.testing.assert_close(s.mean(0), flat.mean, atol=0.05, rtol=0)
    # leaves of different families: one component per leaf, stacked groups split member by member
    mixed = MixtureOfExperts(SoftmaxGate(2, 2), [
        MixtureOfExperts(SoftmaxGate(2, 2), StudentTExpert(2, n_experts=2)), LinearGaussianExpert(2)])
    init_tree(mixed, x, y, random_state=0)
    with torch.no_grad():
        flat, nested = leaf_mixture(mixed, x[:20]), mixed(x[:20])
        assert isinstance(flat.components, list) and len(flat.components) == 3
        torch.testing.assert_close(flat.log_prob(y[:20]), mixed.log_prob(x[:20], y[:20]))
        torch.testing.assert_close(flat.variance, nested.variance)
        torch.testing.assert_close(flat.cdf(y[:20]), nested.cdf(y[:20]))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        s = flat.sample((20000,))
    torch.testing.assert_close(s.mean(0), flat.mean, atol=0.05, rtol=0)


def test_render_tree_shows_nodes_gates_families_and_shares():
    x, y = _two_d(300, seed=4)
    tree = _unbalanced(2)
    init_tree(tree, x, y, random_state=0)
    txt = render_tree(tree)
    lines = txt.splitlines()
    assert lines[0] == "HME: depth 3, 6 leaves, 4 gates, 39 parameters"
    assert lines[1].startswith("root  SoftmaxGate(d=2, K=3)")
    assert sum("leaf" in ln for ln in lines[1:]) == 6 and sum("Gate" in ln for ln in lines[1:]) == 4
    assert any("2.0.1  leaf 4  LinearGaussianExpert" in ln for ln in lines)
    routed = render_tree(tree, x)
    post = render_tree(tree, x, y)
    assert "share of the data routed" in routed and "share of the posterior weight" in post
    for txt, want in ((routed, path_probabilities(tree, x)), (post, path_posteriors(tree, x, y))):
        shares = [float(ln.split()[-1]) for ln in txt.splitlines()[1:]]
        assert shares[0] == 1.0
        leaf_shares = [float(ln.split()[-1]) for ln in txt.splitlines()[1:] if " leaf " in ln]
        np.testing.assert_allclose(leaf_shares, want.detach().mean(0).numpy(), atol=6e-4)


# ------------------------------------------------------ parameter recovery
def _true_depth2_hme():
    """A known depth-2 binary HME on x in [-3, 3]: root splits at 0, sub-gates at -1.5 and 1.5."""
    tree = build_tree(1, depth=2, branching=2)
    with torch.no_grad():
        tree.gate.coef.copy_(torch.tensor([[0.0, -8.0], [0.0, 0.0]], dtype=D))       # child 0 for x < 0
        tree.experts[0].gate.coef.copy_(torch.tensor([[-12.0, -8.0], [0.0, 0.0]], dtype=D))  # x < -1.5
        tree.experts[1].gate.coef.copy_(torch.tensor([[12.0, -8.0], [0.0, 0.0]], dtype=D))   # x < 1.5
        coefs = torch.tensor([[2.0, 1.0], [-1.0, -2.0], [0.5, 1.5], [4.0, -1.0]], dtype=D)  # (intercept, slope)
        for i, node in enumerate(tree.experts):
            node.experts.coef.copy_(coefs[2 * i : 2 * i + 2, :, None])
            node.experts.log_scale.fill_(math.log(0.1))
    return tree, coefs


def test_recovers_parameters_of_a_known_depth_2_hme():
    truth, coefs = _true_depth2_hme()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4000, 1, generator=g, dtype=D) * 6 - 3
    with torch.random.fork_rng():
        torch.manual_seed(1)
        y = truth(x).sample()
    tree = build_tree(1, depth=2, branching=2)
    res = fit_tree_em(tree, x, y, init="kmeans", n_init=3, random_state=0, tol=1e-9, max_iter=500)
    with torch.no_grad():
        assert res.log_likelihood >= float(truth.log_prob(x, y).mean()) - 1e-6  # at least as likely as the truth
    fitted = torch.cat([node.experts.coef[:, :, 0] for node in tree.experts]).detach()
    # up to relabelling of the leaves: the best of the 24 matchings
    err = min((fitted[list(p)] - coefs).abs().max().item() for p in itertools.permutations(range(4)))
    assert err < 0.05, err  # tolerance: 0.05 on every intercept and slope (sigma = 0.1, ~1000 rows per leaf; seen: 0.012)
    scales = torch.cat([node.experts.log_scale.exp()[:, 0] for node in tree.experts]).detach()
    np.testing.assert_allclose(scales.numpy(), 0.1, rtol=0.1)
    # the gates put their boundaries where the true ones are (within 0.05)
    b = sorted([-float(n.gate.coef[0, 0] - n.gate.coef[1, 0]) / float(n.gate.coef[0, 1] - n.gate.coef[1, 1])
                for n in [tree, *tree.experts]])
    np.testing.assert_allclose(b, [-1.5, 0.0, 1.5], atol=0.05)


# -------------------------------------------------------- gradient training
def test_gradient_training_on_the_same_tree_model():
    x, y = _zigzag(500, seed=2)
    em_tree = build_tree(1, depth=2, branching=2)
    r_em = fit_tree_em(em_tree, x, y, init="kmeans_x", random_state=0, max_iter=300)
    lb = build_tree(1, depth=2, branching=2)
    init_tree(lb, x, y, init="kmeans_x", random_state=0)
    start = float(lb.log_prob(x, y).mean())
    r_lb = fit_gradient(lb, x, y, optimizer="lbfgs", early_stopping=False, max_epochs=60, tol=1e-10)
    assert r_lb.log_likelihood > start + 0.3
    assert r_lb.log_likelihood > r_em.log_likelihood - 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = HMERegressor(depth=2, fit_method="gradient", init="kmeans_x", learning_rate=0.02, max_iter=100,
                           random_state=0).fit(x.numpy(), y.numpy())
    assert est.fit_result_.method == "gradient" and np.isfinite(est.log_likelihood_)
    assert est.log_likelihood_ > r_em.log_likelihood - 0.3


# ------------------------------------------------------------------ growing
def test_grow_tree_splits_while_held_out_likelihood_rises_then_stops():
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, size=(2000, 1))
    y = np.where(x[:, 0] < -1, -2 * x[:, 0] - 3, np.where(x[:, 0] < 1, x[:, 0], 3 - 2 * x[:, 0] + 2))
    y = y + 0.1 * rng.normal(size=2000)
    res = grow_tree(build_tree(1, depth=1, branching=1), x, y, random_state=0, max_leaves=8)
    assert res.stopped == "no split helps" and 3 <= res.n_leaves <= 4
    val = [h["validation_log_likelihood"] for h in res.history]
    assert all(b > a for a, b in zip(val, val[1:]))  # every accepted split raised held-out likelihood
    assert [h["n_leaves"] for h in res.history] == list(range(1, res.n_leaves + 1))
    # one straight line: no split helps
    y_lin = 2 * x[:, 0] + 0.1 * rng.normal(size=2000)
    res = grow_tree(build_tree(1, depth=1, branching=1), x, y_lin, random_state=0)
    assert res.n_leaves == 1 and res.stopped == "no split helps"
    # limits
    res = grow_tree(build_tree(1, depth=1, branching=1), x, y, random_state=0, max_leaves=2)
    assert res.n_leaves == 2 and res.stopped == "max_leaves"
    with pytest.raises(ValueError, match="validation_fraction must be in"):
        grow_tree(build_tree(1, depth=1, branching=1), x, y, validation_fraction=0)


def test_split_leaf_hands_the_old_share_to_the_new_node():
    x, y = _two_d(300, seed=5)
    tree = build_tree(2, depth=2, branching=2, expert_features=[1], gate_features=[0])
    init_tree(tree, x, y, random_state=0)
    with torch.no_grad():
        before = path_probabilities(tree, x)
    split_leaf(tree, (1, 0), x, y, branching=3, random_state=0)
    assert n_leaves(tree) == 6
    with torch.no_grad():
        after = path_probabilities(tree, x)
    torch.testing.assert_close(after[:, 2:5].sum(1), before[:, 2])  # the old leaf's share, split three ways
    torch.testing.assert_close(after[:, [0, 1, 5]], before[:, [0, 1, 3]])
    # columns: the new gate sees the gate column, the new and old leaves only the expert column
    new = tree.experts[1].experts[0]
    assert new.gate.n_features == 1 and new.gate_features == [0] and new.expert_features == [1]
    assert np.isfinite(float(tree.log_prob(x, y).sum()))
    with pytest.raises(ValueError, match="is not a leaf of this tree"):
        split_leaf(tree, (0,), x, y)


# ------------------------------------------------------------ estimators
def test_hme_estimator_prediction_api_and_tree_views():
    x, y = _zigzag(600, seed=3)
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
    assert est.log_likelihood_ == pytest.approx(est.score_samples(X, Y).mean(), abs=1e-9)
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
    x, y = _zigzag(40, seed=0)
    with pytest.raises(ValueError, match=r"the tree is larger than the data supports: 16 leaves \(4 level\(s\) of gates\)"):
        HMERegressor(depth=4, branching=2).fit(x.numpy(), y.numpy())
    HMERegressor(depth=4, branching=2, alpha=1.0, max_iter=20).fit(x.numpy(), y.numpy())  # penalised: allowed
    # a leaf that receives (almost) no data inside the tree is pruned with a warning, never NaN
    x, y = _zigzag(300, seed=1)
    tree = build_tree(1, depth=2, branching=2)
    init_tree(tree, x, y, init="kmeans_x", random_state=0)
    with torch.no_grad():
        tree.experts[1].gate.coef.copy_(torch.tensor([[-60.0, 0.0], [0.0, 0.0]], dtype=D))  # leaf (1, 0) starved
    with pytest.warns(RuntimeWarning, match=r"hierarchy node \[1\]: pruned child\(ren\) \[0\]"):
        res = fit_em(tree, x, y, init=None, max_iter=20)
    assert n_leaves(tree) == 3 and all(math.isfinite(h) for h in res.history)


def test_restarts_are_reproducible_and_differ():
    x, y = _zigzag(300, seed=4)
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
    x, y = _zigzag(100)
    X, Y = x.numpy().copy(), y.numpy().copy()
    X0, Y0 = X.copy(), Y.copy()
    with pytest.raises(ValueError, match=r"depth=3 disagrees with the per-level branching \(4, 2\)"):
        HMERegressor(depth=3, branching=(4, 2)).fit(X, Y)
    with pytest.raises(ValueError, match="with grow=True, branching must be an int >= 2"):
        HMERegressor(grow=True, branching=(2, 2)).fit(X, Y)
    with pytest.raises(ValueError, match="grow=True fits every candidate tree by EM"):
        HMERegressor(grow=True, fit_method="gradient").fit(X, Y)
    with pytest.raises(ValueError, match="init must be 'kmeans', 'kmeans_x', 'random'"):
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
    x, y = _zigzag(300, seed=6)
    X, Y = x.numpy(), y.numpy()
    est = HMERegressor(random_state=0).fit(X, Y)
    full = est.score_samples(X, Y)
    perm = np.random.default_rng(0).permutation(len(X))
    np.testing.assert_allclose(est.score_samples(X[perm], Y[perm]), full[perm], rtol=1e-12)
    np.testing.assert_allclose(est.score_samples(X[:17], Y[:17]), full[:17], rtol=1e-12)


# ------------------------------------------------------------ slow (CI: -m slow)
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_slow_recovery_of_a_depth_2_hme_at_n_20000(seed):
    truth, coefs = _true_depth2_hme()
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(20000, 1, generator=g, dtype=D) * 6 - 3
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        y = truth(x).sample()
    tree = build_tree(1, depth=2, branching=2)
    fit_tree_em(tree, x, y, init="kmeans", n_init=3, random_state=seed, tol=1e-10, max_iter=1000)
    fitted = torch.cat([node.experts.coef[:, :, 0] for node in tree.experts]).detach()
    err = min((fitted[list(p)] - coefs).abs().max().item() for p in itertools.permutations(range(4)))
    assert err < 0.03, err  # 5x the rows of the fast test (seen: 0.006 for one seed)


def _random_tree(rng, d, depth):
    """A random unbalanced tree: every child is a leaf, a stacked group or a subtree."""
    k = int(rng.integers(2, 4))
    if depth == 0 or rng.random() < 0.3:
        return MixtureOfExperts(SoftmaxGate(d, k), LinearGaussianExpert(d, n_experts=k))
    children = [_random_tree(rng, d, depth - 1) if rng.random() < 0.6 else LinearGaussianExpert(d) for _ in range(k)]
    return MixtureOfExperts(SoftmaxGate(d, k), children)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(12))
def test_slow_em_never_decreases_on_random_unbalanced_trees(seed):
    rng = np.random.default_rng(seed)
    x, y = _two_d(800, seed=seed)
    tree = _random_tree(rng, 2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_tree_em(tree, x, y, init=["kmeans", "kmeans_x", "random"][seed % 3], random_state=seed,
                          max_iter=100, prune_threshold=0)
    assert _nondecreasing(res.history), np.diff(res.history).min()


def test_fit_em_restarts_seed_the_nested_splits():
    # the top-level start is fixed (a user array), so only the nested splits can differ
    x, y = _two_d(300, seed=5)
    r0 = np.zeros((300, 2))
    r0[np.arange(300), (x[:, 0] > 0).long().numpy()] = 1.0

    def leaf_coefs(seed):
        tree = build_tree(2, depth=2, branching=2)
        fit_em(tree, x, y, init=r0, max_iter=0, random_state=seed)
        return torch.cat([node.experts.coef.detach().flatten() for node in tree.experts])

    assert torch.equal(leaf_coefs(0), leaf_coefs(0))
    assert not torch.allclose(leaf_coefs(0), leaf_coefs(1))
