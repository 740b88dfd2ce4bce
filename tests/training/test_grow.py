"""Growing trees: split_leaf keeps the old share, grow_tree splits while held-out likelihood rises."""

import numpy as np
import pytest
import torch

from moekit.training.grow import grow_tree, split_leaf
from moekit.training.tree import init_tree
from moekit.tree import build_tree, n_leaves, path_probabilities
from tests.tree_data import two_d

D = torch.float64


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
    x, y = two_d(300, seed=5)
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
