"""Hierarchical mixtures of experts (HME): the structure, routing and rendering of trees of gates.

A hierarchical mixture of experts (Jordan & Jacobs 1994) is a tree whose
internal nodes are gates and whose leaves are experts.  In moekit it is
nothing but nesting: a :class:`~moekit.MixtureOfExperts` is itself an expert,
so everything that works for a flat mixture (``log_prob``, predictive
moments, sampling, quantiles, :func:`~moekit.fit_em`,
:func:`~moekit.fit_gradient`) works for a tree of any depth, balanced or not.
This package adds what a flat mixture lacks:

* :mod:`moekit.tree.build` -- :func:`build_tree` (a tree from a depth and a
  branching factor, or a per-level branching list, with any leaf family and
  gate type) and the views of its structure (:func:`tree_leaves`,
  :func:`tree_nodes`, :func:`n_leaves`, :func:`tree_depth`);
* :mod:`moekit.tree.routing` -- :func:`path_probabilities`,
  :func:`path_posteriors`, :func:`node_gate_probabilities`,
  :func:`leaf_mixture`: the routing of x (and y) through the tree;
* :mod:`moekit.tree.render` -- :func:`render_tree`, a text picture.

Fitting and growing trees are training: :func:`~moekit.training.tree.fit_tree_em`,
:func:`~moekit.training.tree.init_tree` and
:func:`~moekit.training.grow.grow_tree` / :func:`~moekit.training.grow.split_leaf`.
"""

from .build import LeafInfo, NodeInfo, build_tree, n_leaves, tree_depth, tree_leaves, tree_nodes
from .render import render_tree
from .routing import (
    leaf_mixture,
    node_gate_probabilities,
    path_log_posteriors,
    path_log_probabilities,
    path_posteriors,
    path_probabilities,
)

__all__ = [
    "LeafInfo",
    "NodeInfo",
    "build_tree",
    "leaf_mixture",
    "n_leaves",
    "node_gate_probabilities",
    "path_log_posteriors",
    "path_log_probabilities",
    "path_posteriors",
    "path_probabilities",
    "render_tree",
    "tree_depth",
    "tree_leaves",
    "tree_nodes",
]
