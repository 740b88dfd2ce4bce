"""Deprecated location: trees live in :mod:`moekit.tree`, their training in :mod:`moekit.training`.

* structure -- :mod:`moekit.tree.build` (``build_tree``, ``tree_leaves``, ...);
* routing -- :mod:`moekit.tree.routing` (``path_posteriors``, ``leaf_mixture``, ...);
* rendering -- :mod:`moekit.tree.render` (``render_tree``);
* fitting -- :mod:`moekit.training.tree` (``fit_tree_em``, ``init_tree``);
* growing -- :mod:`moekit.training.grow` (``grow_tree``, ``split_leaf``, ``GrowResult``).
"""

import warnings

from .training.grow import GrowResult, grow_tree, split_leaf
from .training.tree import fit_tree_em, init_tree
from .tree import (
    LeafInfo,
    NodeInfo,
    build_tree,
    leaf_mixture,
    n_leaves,
    node_gate_probabilities,
    path_log_posteriors,
    path_log_probabilities,
    path_posteriors,
    path_probabilities,
    render_tree,
    tree_depth,
    tree_leaves,
    tree_nodes,
)

warnings.warn(
    "moekit.hierarchy is deprecated; import build_tree, fit_tree_em, grow_tree and render_tree from moekit, "
    "the tree views from moekit.tree, and the trainers from moekit.training.tree / moekit.training.grow",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "LeafInfo",
    "NodeInfo",
    "GrowResult",
    "build_tree",
    "tree_leaves",
    "tree_nodes",
    "n_leaves",
    "tree_depth",
    "path_log_probabilities",
    "path_probabilities",
    "path_log_posteriors",
    "path_posteriors",
    "node_gate_probabilities",
    "leaf_mixture",
    "render_tree",
    "init_tree",
    "fit_tree_em",
    "split_leaf",
    "grow_tree",
]
