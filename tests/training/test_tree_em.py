"""EM on trees: depth 1 equals a flat mixture, EM never decreases, the recursion is path-posterior EM, recovery."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from moekit import (
    ConstantGate,
    HMERegressor,
    LinearGaussianExpert,
    MixtureOfExperts,
    MLPGate,
    MoERegressor,
    SoftmaxGate,
    StudentTExpert,
    fit_em,
    fit_gradient,
)
from moekit._mstep import fit_in_memory
from moekit.training.tree import fit_tree_em, init_tree
from moekit.tree import build_tree, path_posteriors, tree_leaves, tree_nodes
from tests.tree_data import two_d, unbalanced, zigzag

D = torch.float64


def _nondecreasing(h, rel=1e-10):
    h = np.asarray(h)
    return np.all(np.diff(h) >= -rel * (1 + np.abs(h[:-1])))



# ---------------------------------------------------------- depth 1 == flat
def test_depth_one_tree_equals_flat_moe_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 1, generator=g, dtype=D) * 2 - 1
    y = torch.where(x[:, 0] < 0.2, 2 * x[:, 0] + 1, -x[:, 0]) + 0.1 * torch.randn(300, generator=g, dtype=D)
    flat = MixtureOfExperts(SoftmaxGate(1, 3), LinearGaussianExpert(1, n_experts=3))
    tree = build_tree(1, depth=1, branching=3)
    r1 = fit_em(flat, x, y, n_init=2, init="kmeans", random_state=5, max_iter=50)
    r2 = fit_tree_em(tree, x, y, n_init=2, init="kmeans", random_state=5, max_iter=50)
    assert r1.history == r2.history and r1.init_mean_log_likelihoods == r2.init_mean_log_likelihoods
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
    x, y = two_d(300, seed=depth)
    tree = build_tree(2, depth=depth, branching=2, prune_threshold=None)  # pure EM: nothing pruned
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_tree_em(tree, x, y, init="random", random_state=0, max_iter=25, prune_threshold=0)
    assert _nondecreasing(res.history), np.diff(res.history).min()
    assert res.history[-1] > res.history[0]


@pytest.mark.parametrize("case", ["unbalanced", "mixed_families", "mlp_gates", "vector_y", "weighted"])
def test_em_never_decreases_on_unbalanced_and_mixed_trees(case):
    x, y = two_d({"mlp_gates": 150, "mixed_families": 200}.get(case, 300), seed=3)
    w = None
    if case == "unbalanced":
        tree = unbalanced(2)
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
        # the gate's M-step inside EM: max_m_steps Newton steps (fit_weighted, the initial fit, takes more)
        fit_in_memory(nd.node.gate, nd.node.gate_input(x), torch.stack(cols, 1), max_steps=nd.node.gate.max_m_steps)
    for i, lf in enumerate(leaves):
        if lf.member is None:
            lf.module.fit_weighted(x, y, h[:, i])
    for nd in tree_nodes(tree):  # stacked groups: one call with their columns
        if nd.node.is_stacked:
            first = [i for i, lf in enumerate(leaves) if lf.parent is nd.node]
            nd.node.experts.fit_weighted(x, y, h[:, first])


@pytest.mark.parametrize("make", [lambda: build_tree(2, depth=3, branching=2), lambda: unbalanced(2)])
def test_recursive_em_step_equals_explicit_path_posterior_em(make):
    """The nested E-step/M-step is exactly HME EM with path posteriors (Jordan & Jacobs 1994)."""
    x, y = two_d(300, seed=7)
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
    x, y = two_d(400, seed=2)
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
        assert res.mean_log_likelihood >= float(truth.log_prob(x, y).mean()) - 1e-6  # at least as likely as the truth
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
    x, y = zigzag(500, seed=2)
    em_tree = build_tree(1, depth=2, branching=2)
    r_em = fit_tree_em(em_tree, x, y, init="kmeans_x", random_state=0, max_iter=300)
    lb = build_tree(1, depth=2, branching=2)
    init_tree(lb, x, y, init="kmeans_x", random_state=0)
    start = float(lb.log_prob(x, y).mean())
    r_lb = fit_gradient(lb, x, y, optimizer="lbfgs", early_stopping=False, max_epochs=60, tol=1e-10)
    assert r_lb.mean_log_likelihood > start + 0.3
    assert r_lb.mean_log_likelihood > r_em.mean_log_likelihood - 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = HMERegressor(depth=2, fit_method="gradient", init="kmeans_x", learning_rate=0.02, max_iter=100,
                           random_state=0).fit(x.numpy(), y.numpy())
    assert est.fit_result_.method == "gradient" and np.isfinite(est.log_likelihood_)
    assert est.mean_log_likelihood_ > r_em.mean_log_likelihood - 0.3


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
    x, y = two_d(800, seed=seed)
    tree = _random_tree(rng, 2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_tree_em(tree, x, y, init=["kmeans", "kmeans_x", "random"][seed % 3], random_state=seed,
                          max_iter=100, prune_threshold=0)
    assert _nondecreasing(res.history), np.diff(res.history).min()


def test_fit_em_restarts_seed_the_nested_splits():
    # the top-level start is fixed (a user array), so only the nested splits can differ
    x, y = two_d(300, seed=5)
    r0 = np.zeros((300, 2))
    r0[np.arange(300), (x[:, 0] > 0).long().numpy()] = 1.0

    def leaf_coefs(seed):
        tree = build_tree(2, depth=2, branching=2)
        fit_em(tree, x, y, init=r0, max_iter=0, random_state=seed)
        return torch.cat([node.experts.coef.detach().flatten() for node in tree.experts])

    assert torch.equal(leaf_coefs(0), leaf_coefs(0))
    assert not torch.allclose(leaf_coefs(0), leaf_coefs(1))
