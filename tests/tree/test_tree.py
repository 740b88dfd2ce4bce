"""Trees of gates: building, structure views, routing (path probabilities and posteriors), rendering."""

import numpy as np
import pytest
import torch

from moekit import (
    ConstantGate,
    LinearGaussianExpert,
    MixtureOfExperts,
    MLPGate,
    PoissonExpert,
    SoftmaxGate,
    StudentTExpert,
)
from moekit.training.tree import init_tree
from moekit.tree import (
    build_tree,
    leaf_mixture,
    n_leaves,
    node_gate_probabilities,
    path_log_posteriors,
    path_posteriors,
    path_probabilities,
    render_tree,
    tree_depth,
    tree_leaves,
    tree_nodes,
)
from tests.tree_data import two_d, unbalanced

D = torch.float64


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


# ------------------------------------------------------- routing quantities
def test_path_probabilities_posteriors_and_leaf_mixture():
    x, y = two_d(200, seed=1)
    tree = unbalanced(2)
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
    x, y = two_d(300, seed=4)
    tree = unbalanced(2)
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


# ------------------------------------------------------- deprecated location
def test_moekit_hierarchy_still_exports_every_name_with_a_deprecation_warning():
    import importlib
    import sys

    import moekit.training.grow as grow
    import moekit.training.tree as training_tree
    import moekit.tree as tree

    sys.modules.pop("moekit.hierarchy", None)
    with pytest.warns(DeprecationWarning, match="moekit.hierarchy is deprecated"):
        hierarchy = importlib.import_module("moekit.hierarchy")
    new = {**{n: getattr(tree, n) for n in tree.__all__}, **{n: getattr(training_tree, n) for n in training_tree.__all__},
           **{n: getattr(grow, n) for n in grow.__all__}}
    assert set(hierarchy.__all__) == set(new)
    for name in hierarchy.__all__:
        assert getattr(hierarchy, name) is new[name], name
