"""Hierarchical mixtures of experts (HME): building, inspecting and growing trees of gates.

A hierarchical mixture of experts (Jordan & Jacobs 1994) is a tree whose
internal nodes are gates and whose leaves are experts.  In moekit it is
nothing but nesting: a :class:`~moekit.MixtureOfExperts` is itself an expert,
so a node is a ``MixtureOfExperts`` whose experts are either leaves (any
expert family, or a stacked group of leaves of one family) or other nodes.
The density of y given x is

    p(y | x) = sum_leaves  prod_{edges e on the path} g_e(x)  p_leaf(y | x),

and everything that works for a flat mixture (``log_prob``, predictive
moments, sampling, quantiles, :func:`~moekit.fit_em`,
:func:`~moekit.fit_gradient`) works for a tree of any depth, balanced or not.

EM for trees.  The E-step at a node gives each child the posterior of its
branch given x and y, times the node's own weight; a child node runs its own
E-step on those weights, so every leaf is fitted on the product of branch
posteriors along its path (its *path posterior*) and every gate on its
children's posteriors weighted by the node's path posterior; each gate's
M-step is a weighted multinomial-logistic fit (Newton / IRLS with
step-halving).  Every M-step never lowers its own part of the expected
complete-data log-likelihood, so the log-likelihood never decreases.

This module adds what a flat mixture lacks:

* :func:`build_tree` -- a tree from a depth and a branching factor, or a
  per-level branching list, with any leaf family and gate type;
* :func:`path_probabilities`, :func:`path_posteriors`,
  :func:`node_gate_probabilities`, :func:`leaf_mixture` -- the routing of
  new x through the tree, per leaf and per node;
* :func:`render_tree` -- a readable text picture of the tree (node, gate,
  leaf family, share of the data routed there);
* :func:`split_leaf` and :func:`grow_tree` -- growing a tree by splitting the
  leaf whose split raises the held-out log-likelihood the most, until no
  split helps (in the spirit of Waterhouse & Robinson's constructive HME).

Shapes
------
x (n, d_x); y (n,) or (n, d_y); path quantities (n, L) for a tree of L leaves,
leaves in depth-first order (the order of :func:`tree_leaves`).
"""

from __future__ import annotations

import copy
import math
import numbers
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.distributions import Distribution

from ._validation import as_tensor, check_fit_inputs, model_device, model_dtype
from .distributions import MixtureDistribution, _cov
from .experts.base import Expert
from .gates import ConstantGate, Gate, MLPGate, SoftmaxGate
from .mixture import MixtureOfExperts

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


# ===================================================================== build
_LEAF_NAMES = ("linear", "poisson", "student_t", "logistic", "softmax")


def _as_branching(depth, branching) -> list[int]:
    if isinstance(branching, numbers.Integral) and not isinstance(branching, bool):
        if depth is None:
            raise ValueError(
                f"depth is required when branching is a single int (got branching={branching!r}); "
                "pass depth=..., or a per-level list such as branching=(4, 2)"
            )
        if not (isinstance(depth, numbers.Integral) and not isinstance(depth, bool) and depth >= 1):
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        levels = [int(branching)] * int(depth)
    else:
        try:
            levels = list(branching)
        except TypeError:
            raise TypeError(
                f"branching must be an int or a sequence of ints (one per level), got {type(branching).__name__}"
            ) from None
        if not levels:
            raise ValueError("branching must not be an empty sequence; give at least one level, e.g. (2,)")
        if depth is not None and depth != len(levels):
            raise ValueError(
                f"depth={depth!r} disagrees with the per-level branching {tuple(levels)} ({len(levels)} levels); "
                "pass only one of them"
            )
    for b in levels:
        if not (isinstance(b, numbers.Integral) and not isinstance(b, bool) and b >= 1):
            raise ValueError(f"every branching factor must be a positive int, got {tuple(levels)!r}")
    return [int(b) for b in levels]


def _leaf_factory(leaf, n_features, n_outputs, n_classes, covariance, var_floor, alpha, dtype) -> Callable:
    """A function ``k -> stacked module with n_experts=k, or a list of k single experts``."""
    if isinstance(leaf, str):
        if leaf not in _LEAF_NAMES:
            raise ValueError(f"leaf must be one of {_LEAF_NAMES}, an expert instance or a callable, got {leaf!r}")
        if leaf == "linear":
            from .experts.gaussian import LinearGaussianExpert

            return lambda k: LinearGaussianExpert(
                n_features, n_outputs, covariance, n_experts=k, var_floor=var_floor, alpha=alpha, dtype=dtype
            )
        if leaf == "student_t":
            from .experts.student_t import StudentTExpert

            return lambda k: StudentTExpert(n_features, n_outputs, n_experts=k, var_floor=var_floor, dtype=dtype)
        if leaf == "poisson":
            from .experts.poisson import PoissonExpert

            return lambda k: PoissonExpert(n_features, n_experts=k, l2=alpha, dtype=dtype)
        if leaf == "logistic":
            from .experts.logistic import LogisticExpert

            return lambda k: LogisticExpert(n_features, n_experts=k, l2=alpha, dtype=dtype)
        from .experts.logistic import SoftmaxExpert

        if not (isinstance(n_classes, int) and n_classes >= 2):
            raise ValueError(f"leaf='softmax' needs n_classes >= 2, got n_classes={n_classes!r}")
        return lambda k: SoftmaxExpert(n_features, n_classes, n_experts=k, l2=alpha, dtype=dtype)
    if isinstance(leaf, nn.Module):
        if getattr(leaf, "stacked", False):
            raise ValueError(
                f"leaf must be a single expert (n_experts=None), got a stack of {leaf.n_experts}; "
                "the builder makes the stacks itself"
            )
        return lambda k: _copies(leaf, k)
    if callable(leaf):
        return leaf
    raise TypeError(f"leaf must be a family name, an expert instance or a callable k -> experts, got {type(leaf).__name__}")


def _copies(module: nn.Module, k: int):
    """k copies of a single expert: one stacked module when the family stacks, else a list."""
    copies = [copy.deepcopy(module) for _ in range(k)]
    if isinstance(module, Expert):
        try:
            return type(module).stack(copies)
        except (TypeError, ValueError):  # e.g. SklearnExpert cannot be stacked
            pass
    return copies


def _gate_factory(gate, dtype, generator) -> Callable:
    """A function ``(n_features, k) -> Gate`` with k outputs."""
    if isinstance(gate, str):
        if gate == "softmax":
            return lambda d, k: SoftmaxGate(d, k, dtype=dtype)
        if gate == "constant":
            return lambda d, k: ConstantGate(k, dtype=dtype)
        if gate == "mlp":
            return lambda d, k: MLPGate(d, k, dtype=dtype, generator=generator)
        raise ValueError(f"gate must be 'softmax', 'constant', 'mlp', a Gate instance or a callable, got {gate!r}")
    if isinstance(gate, Gate):

        def from_instance(d, k):
            if gate.n_experts != k:
                raise ValueError(
                    f"the gate instance has {gate.n_experts} outputs but a node of this tree has {k} children; "
                    "use a branching equal to the gate's n_experts, or pass a callable (n_features, k) -> Gate"
                )
            return copy.deepcopy(gate)

        return from_instance
    if callable(gate):
        return gate
    raise TypeError(f"gate must be a name, a Gate instance or a callable (n_features, k) -> Gate, got {type(gate).__name__}")


def _check_children(experts, k: int, what: str):
    if isinstance(experts, (list, tuple)):
        if len(experts) != k:
            raise ValueError(f"{what} returned {len(experts)} experts for a node of {k} children")
        return list(experts)
    if not isinstance(experts, nn.Module):
        raise TypeError(f"{what} must return an expert module or a list of them, got {type(experts).__name__}")
    if getattr(experts, "stacked", False):
        if experts.n_experts != k:
            raise ValueError(f"{what} returned a stack of {experts.n_experts} experts for a node of {k} children")
        return experts
    if k == 1:
        return [experts]
    raise ValueError(f"{what} returned one single expert for a node of {k} children; return a stack or a list")


def build_tree(
    n_features: int,
    depth: int | None = None,
    branching: int | Sequence[int] = 2,
    *,
    leaf="linear",
    gate="softmax",
    n_outputs: int | None = None,
    n_classes: int | None = None,
    covariance: str = "full",
    var_floor: float = 1e-6,
    alpha: float = 0.0,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
    gate_features: Sequence[int] | None = None,
    expert_features: Sequence[int] | None = None,
    prune_threshold: float | None = 1e-4,
) -> MixtureOfExperts:
    """A balanced hierarchical mixture of experts.

    Parameters
    ----------
    n_features : int
        Number of columns d_x of x.
    depth : int, optional
        Number of gate levels (1 is a flat mixture).  Required when
        ``branching`` is an int; implied by a per-level list.
    branching : int or sequence of int
        Children per node: one number for every level (``depth=3,
        branching=2`` gives 8 leaves) or one per level from the root
        (``branching=(4, 2)``: a 4-way root gate over four 2-way gates, 8
        leaves).  A level of branching 1 gets a ``ConstantGate(1)`` (no
        parameters).
    leaf : {"linear", "student_t", "poisson", "logistic", "softmax"}, expert instance or callable
        Leaf family: a name (with ``n_outputs`` / ``n_classes`` /
        ``covariance`` / ``var_floor`` / ``alpha``), a single expert to copy
        (same starting parameters everywhere; the initialisation breaks the
        symmetry), or a callable ``k -> experts`` returning a stacked module
        with ``n_experts=k`` or a list of k single experts (any families,
        including ``MixtureOfExperts``).
    gate : {"softmax", "constant", "mlp"}, Gate instance or callable
        Gate of every node with more than one child: a name, an instance to
        copy (its ``n_experts`` must equal every branching factor), or a
        callable ``(n_features, k) -> Gate``.
    n_outputs : int, optional
        d_y for vector-valued linear-Gaussian / Student-t leaves.
    n_classes : int, optional
        Classes for ``leaf="softmax"``.
    covariance, var_floor, alpha
        Passed to named leaf families (see
        :class:`~moekit.LinearGaussianExpert`).
    dtype : torch.dtype
    generator : torch.Generator, optional
        Initial weights of neural gates.
    gate_features, expert_features : sequence of int, optional
        Columns of x seen by every gate and by every leaf.
    prune_threshold : float or None
        Inner nodes remove, with a warning, a child whose share of the data
        falls below this fraction during EM (see
        :class:`~moekit.MixtureOfExperts`); ``None`` never prunes.

    Returns
    -------
    MixtureOfExperts
        The root.  Nodes above the last level hold a list of child nodes;
        nodes of the last level hold one stacked module of leaves (the fast
        path).

    Shapes
    ------
    The tree maps x (n, d_x) to a distribution over y with batch shape (n,).

    Examples
    --------
    >>> import torch
    >>> from moekit.hierarchy import build_tree, n_leaves, render_tree
    >>> tree = build_tree(n_features=1, depth=2, branching=2)
    >>> n_leaves(tree), tree.n_parameters()
    (4, 18)
    >>> print(render_tree(tree))
    HME: depth 2, 4 leaves, 3 gates, 18 parameters
    root  SoftmaxGate(d=1, K=2)
    |-- 0  SoftmaxGate(d=1, K=2)
    |   |-- 0.0  leaf 0  LinearGaussianExpert
    |   `-- 0.1  leaf 1  LinearGaussianExpert
    `-- 1  SoftmaxGate(d=1, K=2)
        |-- 1.0  leaf 2  LinearGaussianExpert
        `-- 1.1  leaf 3  LinearGaussianExpert
    >>> build_tree(n_features=3, branching=(4, 2)).n_experts
    4
    """
    if not (isinstance(n_features, numbers.Integral) and not isinstance(n_features, bool) and n_features >= 0):
        raise ValueError(f"n_features must be a non-negative int, got {n_features!r}")
    levels = _as_branching(depth, branching)
    gcols = None if gate_features is None else [int(i) for i in gate_features]
    ecols = None if expert_features is None else [int(i) for i in expert_features]
    for name, cols in (("gate_features", gcols), ("expert_features", ecols)):
        if cols is not None and (not cols or any(not -n_features <= c < n_features for c in cols)):
            raise ValueError(f"{name} must hold column indices in [0, {n_features}), got {cols!r}")
    dg = n_features if gcols is None else len(gcols)
    de = n_features if ecols is None else len(ecols)
    make_leaves = _leaf_factory(leaf, de, n_outputs, n_classes, covariance, var_floor, float(alpha), dtype)
    make_gate = _gate_factory(gate, dtype, generator)

    def node(level: int) -> MixtureOfExperts:
        b = levels[level]
        g = ConstantGate(1, dtype=dtype) if b == 1 else make_gate(dg, b)
        if not isinstance(g, nn.Module) or getattr(g, "n_experts", None) != b:
            raise ValueError(f"the gate factory must return a Gate with n_experts={b}, got {g!r}")
        if level == len(levels) - 1:
            children = _check_children(make_leaves(b), b, "the leaf factory")
            return MixtureOfExperts(
                g, children, gate_features=gcols, expert_features=ecols, prune_threshold=prune_threshold
            )
        children = [node(level + 1) for _ in range(b)]
        return MixtureOfExperts(g, children, gate_features=gcols, prune_threshold=prune_threshold)

    return node(0)


# ================================================================ structure
@dataclass(frozen=True)
class NodeInfo:
    """One inner node of a tree.

    Attributes
    ----------
    path : tuple of int
        Child indices from the root (``()`` is the root).
    node : MixtureOfExperts
    depth : int
        ``len(path)`` (0 for the root).

    Parameters
    ----------
    path : tuple of int
    node : MixtureOfExperts
        As in Attributes (instances are made by :func:`tree_nodes`).

    Shapes
    ------
    No arrays: ``path`` has one entry per gate above the node, and the
    node's gate gives (n, K_node) probabilities (see
    :func:`node_gate_probabilities`).

    Examples
    --------
    >>> from moekit.hierarchy import build_tree, tree_nodes
    >>> info = tree_nodes(build_tree(1, branching=(3, 2)))[2]
    >>> info.path, info.depth, info.node.n_experts
    ((1,), 1, 2)
    """

    path: tuple
    node: MixtureOfExperts

    @property
    def depth(self) -> int:
        return len(self.path)


@dataclass(frozen=True)
class LeafInfo:
    """One leaf of a tree.

    Attributes
    ----------
    path : tuple of int
        Child indices from the root.
    parent : MixtureOfExperts
        The node whose gate chooses this leaf.
    index : int
        Position among the parent's children.
    module : torch.nn.Module
        The expert module; for a stacked group, the whole stack.
    member : int or None
        Position within a stacked module, ``None`` for a single expert.
    family : str
        Class name of ``module``.
    depth : int
        ``len(path)``: the number of gates above the leaf.

    Parameters
    ----------
    path, parent, index, module, member
        As in Attributes (instances are made by :func:`tree_leaves`).

    Shapes
    ------
    No arrays: the leaf's position in :func:`tree_leaves` is its column in
    every (n, L) routing result.

    Examples
    --------
    >>> from moekit.hierarchy import build_tree, tree_leaves
    >>> leaf = tree_leaves(build_tree(1, branching=(3, 2)))[3]
    >>> leaf.path, leaf.index, leaf.member, leaf.family, leaf.depth
    ((1, 1), 1, 1, 'LinearGaussianExpert', 2)
    """

    path: tuple
    parent: MixtureOfExperts
    index: int
    module: nn.Module
    member: int | None

    @property
    def family(self) -> str:
        return type(self.module).__name__

    @property
    def depth(self) -> int:
        return len(self.path)


def _check_tree(tree) -> None:
    if not isinstance(tree, MixtureOfExperts):
        raise TypeError(f"tree must be a MixtureOfExperts (the root of a hierarchy), got {type(tree).__name__}")


def _walk(node: MixtureOfExperts, path: tuple = ()):
    yield NodeInfo(path, node)
    if node.is_stacked:
        for k in range(node.n_experts):
            yield LeafInfo(path + (k,), node, k, node.experts, k)
        return
    for k, e in enumerate(node.experts):
        if isinstance(e, MixtureOfExperts):
            yield from _walk(e, path + (k,))
        else:
            yield LeafInfo(path + (k,), node, k, e, None)


def tree_leaves(tree: MixtureOfExperts) -> list[LeafInfo]:
    """The leaves of a tree in depth-first order (the column order of every (n, L) result).

    Parameters
    ----------
    tree : MixtureOfExperts
        The root.

    Returns
    -------
    list of LeafInfo
        L entries, one per leaf (a stacked group counts as its members).

    Shapes
    ------
    No arrays; entry j describes column j of the (n, L) results of
    :func:`path_probabilities`, :func:`path_posteriors` and
    :func:`leaf_mixture`.

    Examples
    --------
    >>> from moekit.hierarchy import build_tree, tree_leaves
    >>> [leaf.path for leaf in tree_leaves(build_tree(1, branching=(3, 2)))]
    [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    """
    _check_tree(tree)
    return [i for i in _walk(tree) if isinstance(i, LeafInfo)]


def tree_nodes(tree: MixtureOfExperts) -> list[NodeInfo]:
    """The inner nodes (gates) of a tree in depth-first order, the root first.

    Parameters
    ----------
    tree : MixtureOfExperts
        The root.

    Returns
    -------
    list of NodeInfo

    Shapes
    ------
    No arrays; the nodes are the keys (their paths) of
    :func:`node_gate_probabilities`.

    Examples
    --------
    >>> from moekit.hierarchy import build_tree, tree_nodes
    >>> [node.path for node in tree_nodes(build_tree(1, branching=(3, 2)))]
    [(), (0,), (1,), (2,)]
    """
    _check_tree(tree)
    return [i for i in _walk(tree) if isinstance(i, NodeInfo)]


def n_leaves(tree: MixtureOfExperts) -> int:
    """Number of leaves L.

    Parameters
    ----------
    tree : MixtureOfExperts
        The root.

    Returns
    -------
    int

    Shapes
    ------
    No arrays; L is the width of every (n, L) routing result.

    Examples
    --------
    >>> from moekit.hierarchy import build_tree, n_leaves
    >>> n_leaves(build_tree(1, branching=(3, 2)))
    6
    """
    return len(tree_leaves(tree))


def tree_depth(tree: MixtureOfExperts) -> int:
    """Number of gates on the longest root-to-leaf path (1 for a flat mixture).

    Parameters
    ----------
    tree : MixtureOfExperts
        The root.

    Returns
    -------
    int

    Shapes
    ------
    No arrays.

    Examples
    --------
    >>> from moekit.hierarchy import build_tree, tree_depth
    >>> tree_depth(build_tree(1, depth=1, branching=3)), tree_depth(build_tree(1, branching=(3, 2)))
    (1, 2)
    """
    return max(leaf.depth for leaf in tree_leaves(tree))


# ================================================================== routing
def _path_log_prior(node: MixtureOfExperts, x: torch.Tensor) -> torch.Tensor:
    lg = node.log_gate(x)
    if node.is_stacked:
        return lg
    xe = node._xe(x)
    cols = []
    for k, e in enumerate(node.experts):
        if isinstance(e, MixtureOfExperts):
            cols.append(lg[:, k : k + 1] + _path_log_prior(e, xe))
        else:
            cols.append(lg[:, k : k + 1])
    return torch.cat(cols, dim=1)


def _leaf_log_probs(node: MixtureOfExperts, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    xe = node._xe(x)
    if node.is_stacked:
        return node.experts.log_prob(xe, y)
    cols = []
    for e in node.experts:
        if isinstance(e, MixtureOfExperts):
            cols.append(_leaf_log_probs(e, xe, y))
        else:
            cols.append(e.log_prob(xe, y)[:, None])
    return torch.cat(cols, dim=1)


def _as_x(tree, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = as_tensor(x, "x", model_dtype(tree), device=model_device(tree), ndims=(2,))
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (n, d_x), got shape {tuple(x.shape)}")
    return x


def path_log_probabilities(tree: MixtureOfExperts, x) -> torch.Tensor:
    """Log prior path probabilities ``log prod_{edges} g_e(x)`` of every leaf.

    The probability that x is routed to each leaf before y is seen; each
    row's ``logsumexp`` is 0.

    Parameters
    ----------
    tree : MixtureOfExperts
        The root.
    x : Tensor or array (n, d_x)

    Returns
    -------
    Tensor (n, L)
        Columns in the order of :func:`tree_leaves`.

    Shapes
    ------
    x (n, d_x) -> (n, L).

    Examples
    --------
    >>> import torch
    >>> from moekit.hierarchy import build_tree, path_log_probabilities
    >>> tree = build_tree(1, branching=(3, 2))  # gates start uniform
    >>> lp = path_log_probabilities(tree, torch.zeros(4, 1, dtype=torch.float64))
    >>> lp.shape, [round(v, 4) for v in lp.exp()[0].tolist()]
    (torch.Size([4, 6]), [0.1667, 0.1667, 0.1667, 0.1667, 0.1667, 0.1667])
    """
    _check_tree(tree)
    return _path_log_prior(tree, _as_x(tree, x))


def path_probabilities(tree: MixtureOfExperts, x) -> torch.Tensor:
    """Prior path probabilities of every leaf for new x: (n, L), rows summing to one.

    Parameters
    ----------
    tree : MixtureOfExperts
        The root.
    x : Tensor or array (n, d_x)

    Returns
    -------
    Tensor (n, L)
        ``exp`` of :func:`path_log_probabilities`.

    Shapes
    ------
    x (n, d_x) -> (n, L).

    Examples
    --------
    >>> import torch
    >>> from moekit.hierarchy import build_tree, path_probabilities
    >>> tree = build_tree(1, depth=3, branching=2)
    >>> p = path_probabilities(tree, torch.linspace(-1, 1, 5, dtype=torch.float64)[:, None])
    >>> p.shape, bool(torch.allclose(p.sum(1), torch.ones(5, dtype=torch.float64)))
    (torch.Size([5, 8]), True)
    """
    return path_log_probabilities(tree, x).exp()


def path_log_posteriors(tree: MixtureOfExperts, x, y) -> torch.Tensor:
    """Log path posteriors: log P(leaf | x, y), the product of branch posteriors along the path.

    Computed as ``log prior path probability + log p_leaf(y | x) - log p(y | x)``
    (the product of the branch posteriors telescopes to this).

    Parameters
    ----------
    tree : MixtureOfExperts
        The root.
    x : Tensor or array (n, d_x)
    y : Tensor or array (n,) or (n, d_y)

    Returns
    -------
    Tensor (n, L)
        Each row's ``logsumexp`` is 0.

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y) -> (n, L).

    Examples
    --------
    >>> import torch
    >>> from moekit.hierarchy import build_tree, path_log_posteriors
    >>> tree = build_tree(1, branching=(3, 2))
    >>> x = torch.linspace(-1, 1, 5, dtype=torch.float64)[:, None]
    >>> lq = path_log_posteriors(tree, x, 2 * x[:, 0])
    >>> lq.shape, bool(torch.allclose(lq.logsumexp(1), torch.zeros(5, dtype=torch.float64)))
    (torch.Size([5, 6]), True)
    """
    _check_tree(tree)
    x = _as_x(tree, x)
    y = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y), dtype=x.dtype, device=x.device)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}; they must have the same length")
    j = _path_log_prior(tree, x) + _leaf_log_probs(tree, x, y)
    return j - torch.logsumexp(j, dim=1, keepdim=True)


def path_posteriors(tree: MixtureOfExperts, x, y) -> torch.Tensor:
    """Path posteriors P(leaf | x, y): (n, L), rows summing to one (the weights EM gives the leaves).

    Parameters
    ----------
    tree : MixtureOfExperts
        The root.
    x : Tensor or array (n, d_x)
    y : Tensor or array (n,) or (n, d_y)

    Returns
    -------
    Tensor (n, L)
        ``exp`` of :func:`path_log_posteriors`.

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y) -> (n, L).

    Examples
    --------
    >>> import torch
    >>> from moekit.hierarchy import build_tree, path_posteriors
    >>> tree = build_tree(1, depth=2, branching=2)
    >>> x = torch.linspace(-1, 1, 5, dtype=torch.float64)[:, None]
    >>> q = path_posteriors(tree, x, x[:, 0])
    >>> q.shape, bool(torch.allclose(q.sum(1), torch.ones(5, dtype=torch.float64)))
    (torch.Size([5, 4]), True)
    """
    return path_log_posteriors(tree, x, y).exp()


def node_gate_probabilities(tree: MixtureOfExperts, x) -> dict:
    """Gate probabilities of every inner node: ``{path: (n, K_node)}``.

    Each entry is the node's own gate (the probability of each child given
    that x reached the node); multiply along a path for the path probability.

    Parameters
    ----------
    tree : MixtureOfExperts
        The root.
    x : Tensor or array (n, d_x)

    Returns
    -------
    dict
        ``{path: Tensor (n, K_node)}`` for every inner node, keyed by its
        path from the root (``()`` is the root), in the order of
        :func:`tree_nodes`.

    Shapes
    ------
    x (n, d_x) -> each value (n, K_node), K_node the node's number of
    children; rows sum to one.

    Examples
    --------
    >>> import torch
    >>> from moekit.hierarchy import build_tree, node_gate_probabilities
    >>> g = node_gate_probabilities(build_tree(1, branching=(3, 2)), torch.zeros(4, 1, dtype=torch.float64))
    >>> {path: tuple(p.shape) for path, p in g.items()}
    {(): (4, 3), (0,): (4, 2), (1,): (4, 2), (2,): (4, 2)}
    """
    _check_tree(tree)
    x = _as_x(tree, x)
    out = {}

    def visit(node, xx, path):
        out[path] = node.log_gate(xx).exp()
        if not node.is_stacked:
            xe = node._xe(xx)
            for k, e in enumerate(node.experts):
                if isinstance(e, MixtureOfExperts):
                    visit(e, xe, path + (k,))

    visit(tree, x, ())
    return out


class _StackMember(Distribution):
    """Member k of a distribution with batch shape (n, K), as a distribution with batch shape (n,)."""

    arg_constraints: dict = {}

    def __init__(self, dist: Distribution, k: int):
        self.dist, self.k = dist, k
        super().__init__(batch_shape=dist.batch_shape[:1], event_shape=dist.event_shape, validate_args=False)

    def _pick(self, t: torch.Tensor, n_sample_dims: int = 0) -> torch.Tensor:
        return t.select(n_sample_dims + 1, self.k)

    @property
    def support(self):
        return self.dist.support

    @property
    def mean(self):
        return self._pick(self.dist.mean)

    @property
    def variance(self):
        return self._pick(self.dist.variance)

    @property
    def covariance_matrix(self):
        return self._pick(_cov(self.dist))

    @property
    def probs(self):
        return self._pick(self.dist.probs)

    def log_prob(self, value):
        v = value.unsqueeze(value.dim() - len(self.event_shape))
        return self.dist.log_prob(v).select(-1, self.k)

    def cdf(self, value):
        return self.dist.cdf(value.unsqueeze(-1)).select(-1, self.k)

    def sample(self, sample_shape=()):
        sample_shape = torch.Size(sample_shape)
        return self._pick(self.dist.sample(sample_shape), len(sample_shape))


_PARAMS = {
    "Normal": ("loc", "scale"),
    "MultivariateNormal": ("loc", "scale_tril"),
    "StudentT": ("df", "loc", "scale"),
    "Poisson": ("rate",),
    "Bernoulli": ("logits",),
    "Categorical": ("logits",),
}


def _family_params(d: Distribution):
    """(key, params) of a distribution of a known family; params have the batch axes first."""
    if isinstance(d, torch.distributions.Independent):
        inner = _family_params(d.base_dist)
        if inner is None:
            return None
        return ("Independent", type(d.base_dist), d.reinterpreted_batch_ndims), inner[1]
    for klass in type(d).__mro__:
        names = _PARAMS.get(klass.__name__)
        if names is not None and klass.__module__.startswith("torch.distributions"):
            return (type(d),), {nm: getattr(d, nm) for nm in names}
    return None


def _concat_leaves(parts):
    """One distribution with batch (n, L) from per-group distributions, or None when not possible.

    ``parts``: list of (dist, stacked) with batch (n, K_g) if stacked else (n,).
    """
    fams = [_family_params(d) for d, _ in parts]
    if any(f is None for f in fams) or len({f[0] for f in fams}) != 1:
        return None
    key = fams[0][0]
    names = list(fams[0][1])
    try:
        cat = {}
        for nm in names:
            ts = []
            for (d, stacked), (_, prm) in zip(parts, fams):
                base = d.base_dist if isinstance(d, torch.distributions.Independent) else d
                t = prm[nm].expand(base.batch_shape + prm[nm].shape[len(base.batch_shape):])
                ts.append(t if stacked else t.unsqueeze(1))
            cat[nm] = torch.cat(ts, dim=1)
        if key[0] == "Independent":
            return torch.distributions.Independent(key[1](**cat, validate_args=False), key[2], validate_args=False)
        return key[0](**cat, validate_args=False)
    except (TypeError, ValueError, RuntimeError):
        return None


def leaf_mixture(tree: MixtureOfExperts, x) -> MixtureDistribution:
    """p(y | x) as a flat mixture over the leaves, weighted by the path probabilities.

    The same distribution as ``tree(x)`` (which nests one mixture per node),
    but with one component per leaf: ``weights`` and ``component_means``
    are (n, L), in the order of :func:`tree_leaves`.  When every leaf is of
    one family (Normal, multivariate normal, Student-t, Poisson, Bernoulli,
    categorical), the components are one distribution with batch shape
    (n, L), the fast path of :class:`~moekit.MixtureDistribution`.

    Parameters
    ----------
    tree : MixtureOfExperts
        The root.
    x : Tensor or array (n, d_x)

    Returns
    -------
    MixtureDistribution
        Batch shape (n,), L components.

    Shapes
    ------
    x (n, d_x) -> MixtureDistribution with batch shape (n,) and L
    components: ``log_weights`` (n, L); event shape () for scalar y, (d_y,)
    for vector y; on the fast path the components have batch shape (n, L).

    Examples
    --------
    >>> import torch
    >>> from moekit.hierarchy import build_tree, leaf_mixture
    >>> mix = leaf_mixture(build_tree(1, branching=(3, 2)), torch.zeros(4, 1, dtype=torch.float64))
    >>> tuple(mix.batch_shape), tuple(mix.log_weights.shape), tuple(mix.components.batch_shape)
    ((4,), (4, 6), (4, 6))
    """
    _check_tree(tree)
    x = _as_x(tree, x)
    parts: list = []

    def visit(node, xx):
        xe = node._xe(xx)
        if node.is_stacked:
            parts.append((node.experts(xe), True))
            return
        for e in node.experts:
            if isinstance(e, MixtureOfExperts):
                visit(e, xe)
            else:
                parts.append((e(xe), False))

    visit(tree, x)
    lw = _path_log_prior(tree, x)
    stacked = _concat_leaves(parts)
    if stacked is not None:
        return MixtureDistribution(lw, stacked)
    comps: list = []
    for d, is_stack in parts:
        if is_stack:
            comps.extend(_StackMember(d, k) for k in range(d.batch_shape[1]))
        else:
            comps.append(d)
    return MixtureDistribution(lw, comps)


# ================================================================ rendering
def _describe_gate(g) -> str:
    name = type(g).__name__
    d = getattr(g, "n_features", None)
    return f"{name}(d={d}, K={g.n_experts})" if d is not None else f"{name}(K={g.n_experts})"


def render_tree(tree: MixtureOfExperts, x=None, y=None, sample_weight=None, decimals: int = 3) -> str:
    """A readable text picture of a tree.

    One line per node (path from the root, gate type, inputs and outputs)
    and per leaf (path, leaf number, family).  With ``x``, each line also
    shows the share of the data routed there (the weighted mean of the
    prior path probabilities); with ``x`` and ``y``, the share of the
    posterior weight (the path posteriors, the weights EM fits the leaves
    on).

    Parameters
    ----------
    tree : MixtureOfExperts
    x : array (n, d_x), optional
    y : array (n,) or (n, d_y), optional
    sample_weight : array (n,), optional
    decimals : int
        Decimals of the shares.

    Returns
    -------
    str

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y); sample_weight (n,).  The shares are
    column sums of the (n, L) path probabilities (or posteriors) over the
    leaves under each line.

    Examples
    --------
    >>> import torch
    >>> from moekit.hierarchy import build_tree, render_tree
    >>> tree = build_tree(1, branching=(2, 1))
    >>> print(render_tree(tree, torch.zeros(3, 1, dtype=torch.float64), decimals=2))
    HME: depth 2, 2 leaves, 1 gates, 8 parameters  (share of the data routed per line)
    root  SoftmaxGate(d=1, K=2)                1.00
    |-- 0  ConstantGate(K=1)                   0.50
    |   `-- 0.0  leaf 0  LinearGaussianExpert  0.50
    `-- 1  ConstantGate(K=1)                   0.50
        `-- 1.0  leaf 1  LinearGaussianExpert  0.50
    """
    _check_tree(tree)
    items = list(_walk(tree))
    leaves = [i for i in items if isinstance(i, LeafInfo)]
    nodes = [i for i in items if isinstance(i, NodeInfo)]
    share = None
    if x is not None:
        with torch.no_grad():
            xt = _as_x(tree, x)
            p = path_posteriors(tree, xt, y) if y is not None else path_probabilities(tree, xt)
            w = torch.ones(xt.shape[0], dtype=p.dtype, device=p.device) if sample_weight is None else torch.as_tensor(
                np.asarray(sample_weight, dtype=float), dtype=p.dtype, device=p.device
            )
            leaf_share = (w[:, None] * p).sum(0) / w.sum()
        share = {leaf.path: float(s) for leaf, s in zip(leaves, leaf_share)}
    n_gates = sum(1 for nd in nodes if nd.node.n_experts > 1)
    head = f"HME: depth {max(lf.depth for lf in leaves)}, {len(leaves)} leaves, {n_gates} gates, {tree.n_parameters()} parameters"
    if share is not None:
        head += "  (share of the posterior weight per line)" if y is not None else "  (share of the data routed per line)"
    rows: list[tuple[str, str]] = []
    leaf_no = {lf.path: i for i, lf in enumerate(leaves)}

    def subtree_share(path):
        return sum(v for p, v in share.items() if p[: len(path)] == path)

    def cols_note(node):
        notes = []
        if node.gate_features is not None:
            notes.append(f"gate columns {node.gate_features}")
        if node.expert_features is not None:
            notes.append(f"children see columns {node.expert_features}")
        return ("  [" + "; ".join(notes) + "]") if notes else ""

    def visit(node, path, prefix, last, is_root):
        name = "root" if is_root else ".".join(map(str, path))
        conn = "" if is_root else (prefix + ("`-- " if last else "|-- "))
        rows.append((f"{conn}{name}  {_describe_gate(node.gate)}{cols_note(node)}", path))
        child_prefix = "" if is_root else prefix + ("    " if last else "|   ")
        k_all = node.n_experts
        for k in range(k_all):
            cpath = path + (k,)
            is_last = k == k_all - 1
            child = None if node.is_stacked else node.experts[k]
            if isinstance(child, MixtureOfExperts):
                visit(child, cpath, child_prefix, is_last, False)
            else:
                fam = type(node.experts).__name__ if node.is_stacked else type(child).__name__
                c2 = child_prefix + ("`-- " if is_last else "|-- ")
                rows.append((f"{c2}{'.'.join(map(str, cpath))}  leaf {leaf_no[cpath]}  {fam}", cpath))

    visit(tree, (), "", True, True)
    if share is None:
        return "\n".join([head] + [r for r, _ in rows])
    width = max(len(r) for r, _ in rows) + 2
    lines = [head]
    for r, path in rows:
        lines.append(f"{r.ljust(width)}{subtree_share(path):.{decimals}f}")
    return "\n".join(lines)


# ============================================================ initialising
_INITS = ("kmeans", "kmeans_x", "random")


def _check_init(init):
    if init is None or not isinstance(init, str):
        return
    if init not in _INITS:
        raise ValueError(f"init must be one of {_INITS}, an (n, K) array of top-level responsibilities, or None, got {init!r}")


def init_tree(tree: MixtureOfExperts, x, y, sample_weight=None, *, init="kmeans", random_state=None) -> MixtureOfExperts:
    """Initialise every gate and leaf of a tree from a recursive split of the rows, in place.

    The root's rows are split among its children; each child node splits the
    rows it received among its own children, and so on down to the leaves;
    every gate is then fitted to its split (Newton / IRLS) and every leaf to
    its rows (its own initial M-step).

    Parameters
    ----------
    tree : MixtureOfExperts
    x, y, sample_weight
        Data as for :func:`~moekit.fit_em`.
    init : {"kmeans", "kmeans_x", "random"} or array (n, K)
        ``"kmeans"``: weighted k-means (k-means++ seeding) on the
        standardised joint ``[x, y]`` of each node's rows, the usual start
        for mixtures of regressions and for multi-valued (inverse) problems,
        and at the root exactly the start of :func:`~moekit.fit_em`;
        ``"kmeans_x"``: k-means on the gate's inputs only, a partition of
        input space that a softmax gate represents exactly (often the better
        start for approximating a single-valued function); ``"random"``:
        every row to a random child at every node.  An array gives the
        root's split (nested nodes then use ``"kmeans"``).
    random_state : int or None
        The root split uses it as :func:`~moekit.fit_em` uses the seed of a
        start; nested splits use seeds spawned from it.

    Returns
    -------
    MixtureOfExperts
        ``tree``.

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y); sample_weight (n,); an init array (n, K)
    with K the root's number of children.

    Examples
    --------
    >>> import torch
    >>> from moekit.hierarchy import build_tree, init_tree, path_probabilities
    >>> x = torch.linspace(-1, 1, 40, dtype=torch.float64)[:, None]
    >>> y = torch.where(x[:, 0] < 0, -1.0, 1.0).to(torch.float64)
    >>> tree = build_tree(1, depth=2, branching=2)
    >>> init_tree(tree, x, y, random_state=0) is tree
    True
    >>> path_probabilities(tree, x).shape
    torch.Size([40, 4])
    """
    from .training.init import initial_responsibilities

    _check_tree(tree)
    _check_init(init)
    if init is None:
        raise ValueError("init must be 'kmeans', 'kmeans_x', 'random' or an (n, K) array; None means no initialisation")
    x, y, w = check_fit_inputs(x, y, sample_weight, dtype=model_dtype(tree), device=model_device(tree))
    seed = int(np.random.default_rng(random_state).integers(0, 2**31 - 1)) if random_state is None or not isinstance(
        random_state, numbers.Integral
    ) else int(random_state)
    k = tree.n_experts
    if isinstance(init, str):
        if init == "kmeans_x":
            r = initial_responsibilities(tree._xg(x), x.new_zeros(x.shape[0], 0), k, "kmeans", seed, w)
        else:
            r = initial_responsibilities(x, y, k, init, seed, w)
        split = init
    else:
        r = initial_responsibilities(x, y, k, init, seed, w)
        split = "kmeans"
    nested_seed = int(np.random.default_rng([seed, 1]).integers(0, 2**31 - 1))
    tree.init_from_responsibilities(x, y, w[:, None] * r, random_state=nested_seed, split=split)
    return tree


def fit_tree_em(
    tree: MixtureOfExperts,
    x,
    y,
    sample_weight=None,
    *,
    init="kmeans",
    n_init: int = 1,
    random_state=None,
    max_iter: int = 200,
    tol: float = 1e-6,
    prune_threshold: float = 1e-4,
    verbose: int = 0,
    callback: Callable | None = None,
):
    """Fit a tree by EM from ``n_init`` tree-aware starts and keep the best, in place.

    :func:`~moekit.fit_em` fits a tree as it is (the EM recursion is in
    :class:`~moekit.MixtureOfExperts`), splitting the rows of nested nodes
    by k-means; here every start initialises the whole tree with
    :func:`init_tree` (seeded splits at every node, of the kind ``init``
    names, including "kmeans_x"), and :func:`~moekit.fit_em` runs the
    starts.  For a depth-1 tree and
    ``init`` in {"kmeans", "random"} the starts are exactly those of
    ``fit_em(..., init=init, n_init=n_init, random_state=random_state)``, so
    the results are identical.

    Parameters
    ----------
    tree : MixtureOfExperts
    x, y, sample_weight
        As for :func:`~moekit.fit_em`.
    init : {"kmeans", "kmeans_x", "random"}, array (n, K) or None
        See :func:`init_tree`; ``None`` keeps the current parameters (one start).
    n_init : int
        Starts; the one with the highest final log-likelihood is kept.
    random_state : int or None
    max_iter, tol, prune_threshold, verbose, callback
        As for :func:`~moekit.fit_em` (the top level is pruned by
        ``prune_threshold``; inner nodes by their own ``prune_threshold``).

    Returns
    -------
    FitResult
        As :func:`~moekit.fit_em`'s, over all starts.

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y); sample_weight (n,).

    Examples
    --------
    >>> import torch
    >>> from moekit.hierarchy import build_tree, fit_tree_em
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(200, 1, generator=g, dtype=torch.float64) * 2 - 1
    >>> y = (x[:, 0] - x[:, 0].round()).abs() + 0.02 * torch.randn(200, generator=g, dtype=torch.float64)
    >>> tree = build_tree(1, depth=2, branching=2)
    >>> res = fit_tree_em(tree, x, y, init="kmeans_x", n_init=2, random_state=0, max_iter=30)
    >>> len(res.init_log_likelihoods), res.log_likelihood == max(res.init_log_likelihoods)
    (2, True)
    """
    from .training.em import fit_em

    _check_tree(tree)
    _check_init(init)
    if not (isinstance(n_init, numbers.Integral) and not isinstance(n_init, bool) and n_init >= 1):
        raise ValueError(f"n_init must be a positive int, got {n_init!r}")

    def start(m, x, y, w, seed):
        init_tree(m, x, y, w, init=init, random_state=seed)

    return fit_em(
        tree, x, y, sample_weight, init=None if init is None else start, n_init=1 if init is None else int(n_init),
        random_state=random_state, max_iter=max_iter, tol=tol, prune_threshold=prune_threshold, verbose=verbose,
        callback=callback,
    )


# ================================================================== growing
def _node_input(tree: MixtureOfExperts, path: tuple, x: torch.Tensor):
    """The node at ``path`` and the x its gate is applied to (before its own gate_features)."""
    node, xx = tree, x
    for k in path:
        child = node.experts[k] if not node.is_stacked else None
        if not isinstance(child, MixtureOfExperts):
            raise ValueError(f"no inner node at path {list(path)}")
        xx = node._xe(xx)
        node = child
    return node, xx


def _single_leaf(parent: MixtureOfExperts, k: int) -> nn.Module:
    if parent.is_stacked:
        return parent.experts.select(k)
    return copy.deepcopy(parent.experts[k])


def _unstack(parent: MixtureOfExperts) -> None:
    if parent.is_stacked:
        parent.experts = nn.ModuleList(parent.experts.unstack())
        parent.is_stacked = False


def split_leaf(
    tree: MixtureOfExperts,
    path: Sequence[int],
    x,
    y,
    sample_weight=None,
    *,
    branching: int = 2,
    gate="softmax",
    random_state=None,
) -> MixtureOfExperts:
    """Replace a leaf by a new node of ``branching`` leaves of its family, in place.

    The new leaves start as copies of the old one; the new node is then
    initialised on the rows the old leaf was responsible for (its path
    posteriors times ``sample_weight``): a seeded weighted k-means split of
    those rows, the new gate fitted to the split, each new leaf to its part.
    The rest of the tree is unchanged, so before any further fitting the new
    node takes exactly the old leaf's share of every x.

    Parameters
    ----------
    tree : MixtureOfExperts
        The root; modified in place.
    path : sequence of int
        The leaf's path (see :func:`tree_leaves`).
    x, y, sample_weight
        The data (Tensors or arrays) the split is initialised on.
    branching : int
        Children of the new node (>= 2).
    gate : {"softmax", "constant", "mlp"}, Gate or callable
        As in :func:`build_tree`.  The new gate sees the root's
        ``gate_features``; the new leaves see the old leaf's columns.
    random_state : int, Generator or None
        Seeds the k-means split.

    Returns
    -------
    MixtureOfExperts
        The new node (when the old leaf was the only child of its node, that
        node itself is given the new gate and leaves).

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y); sample_weight (n,).  The tree's L
    leaves become L - 1 + ``branching``.

    Examples
    --------
    >>> import torch
    >>> from moekit.hierarchy import build_tree, split_leaf, tree_leaves
    >>> x = torch.linspace(-1, 1, 40, dtype=torch.float64)[:, None]
    >>> y = x[:, 0].abs()
    >>> tree = build_tree(1, depth=2, branching=2)
    >>> new = split_leaf(tree, (0, 1), x, y, random_state=0)
    >>> new.n_experts, [leaf.path for leaf in tree_leaves(tree)]
    (2, [(0, 0), (0, 1, 0), (0, 1, 1), (1, 0), (1, 1)])
    """
    _check_tree(tree)
    if not (isinstance(branching, numbers.Integral) and not isinstance(branching, bool) and branching >= 2):
        raise ValueError(f"branching must be an int >= 2 to split a leaf, got {branching!r}")
    dev = model_device(tree)
    x, y, w = check_fit_inputs(x, y, sample_weight, dtype=model_dtype(tree), device=dev)
    path = tuple(int(k) for k in path)
    leaves = tree_leaves(tree)
    idx = [i for i, lf in enumerate(leaves) if lf.path == path]
    if not idx:
        raise ValueError(f"path {list(path)} is not a leaf of this tree; leaves: {[list(lf.path) for lf in leaves]}")
    info = leaves[idx[0]]
    parent, k = info.parent, info.index
    parent_path = path[:-1]
    # every ancestor above the parent must pass all columns down (the builder's trees do)
    node = tree
    for kk in parent_path:
        if node.expert_features is not None:
            raise ValueError(
                f"cannot split leaf {list(path)}: its ancestor at path {list(parent_path[: parent_path.index(kk)])} "
                "passes only some columns to its children (expert_features); split_leaf needs inner nodes "
                "that pass every column down, as build_tree makes them"
            )
        node = node.experts[kk]
    _, x_parent = _node_input(tree, parent_path, x)
    with torch.no_grad():
        w_leaf = w * path_posteriors(tree, x, y)[:, idx[0]]
    dtype = model_dtype(tree)
    gcols = tree.gate_features
    dg = x_parent.shape[1] if gcols is None else len(gcols)
    with torch.device("cpu"):  # built on the CPU, then moved to the tree's device
        new_gate = _gate_factory(gate, dtype, None)(dg, int(branching)).to(dev)
    leaf = _single_leaf(parent, k)
    new_leaves = _check_children(_copies(leaf, int(branching)), int(branching), "splitting")
    seed = int(np.random.default_rng(random_state).integers(0, 2**31 - 1))
    if parent.n_experts == 1:
        # the leaf is its node's only child: give that node the new gate and leaves
        parent.gate = new_gate
        parent.gate_features = None if gcols is None else list(gcols)
        if isinstance(new_leaves, list):
            parent.experts = nn.ModuleList(new_leaves)
            parent.is_stacked = False
        else:
            parent.experts = new_leaves
            parent.is_stacked = True
        new = parent
    else:
        ecols = parent.expert_features
        if ecols is not None:
            # the parent hands its leaves only some columns, but the new gate needs the gate columns:
            # the parent now passes every column, and each other leaf selects its columns through a
            # parameter-free pass-through node (ConstantGate(1)).
            _unstack(parent)
            parent.expert_features = None
            for j, e in enumerate(parent.experts):
                if j != k:
                    with torch.device("cpu"):
                        passthrough = ConstantGate(1, dtype=dtype).to(dev)
                    parent.experts[j] = MixtureOfExperts(
                        passthrough, [e], expert_features=list(ecols), prune_threshold=parent.prune_threshold,
                    )
        _unstack(parent)
        new = MixtureOfExperts(
            new_gate, new_leaves, gate_features=None if gcols is None else list(gcols),
            expert_features=None if ecols is None else list(ecols), prune_threshold=parent.prune_threshold,
        )
        parent.experts[k] = new
    new.init_from_responsibilities(x_parent, y, w_leaf, random_state=seed)
    return new


@dataclass
class GrowResult:
    """What :func:`grow_tree` returns.

    Attributes
    ----------
    model : MixtureOfExperts
        The grown tree (the object passed in, modified in place).
    history : list of dict
        One entry per accepted tree: ``n_leaves``, ``split`` (the path of the
        leaf split to get there, ``None`` for the start),
        ``gain`` (held-out mean log-likelihood gained by the split, as scored),
        ``train_log_likelihood`` and ``validation_log_likelihood`` (mean per
        row, after EM on the training rows).
    candidates : list of list of (path, gain)
        Every split tried in every round, with its held-out gain.
    stopped : str
        Why growth stopped: ``"no split helps"``, ``"max_leaves"`` or
        ``"max_depth"`` (no leaf may be split further).
    fit_result : FitResult
        The last EM fit (on all rows when ``refit`` is true).
    seconds : float
    n_leaves : int
        Leaves of the grown tree.

    Parameters
    ----------
    model, history, candidates, stopped, fit_result, seconds
        As in Attributes (built by :func:`grow_tree`).

    Shapes
    ------
    No array attributes; ``model`` maps x (n, d_x) to a distribution with
    batch shape (n,) (see :func:`grow_tree`).

    Examples
    --------
    >>> from moekit.hierarchy import GrowResult, build_tree
    >>> GrowResult(build_tree(1, depth=1, branching=3), stopped="max_leaves").n_leaves
    3
    """

    model: MixtureOfExperts
    history: list = field(default_factory=list)
    candidates: list = field(default_factory=list)
    stopped: str = ""
    fit_result: object = None
    seconds: float = 0.0

    @property
    def n_leaves(self) -> int:
        return n_leaves(self.model)


def _mean_ll(model, x, y, w) -> float:
    with torch.no_grad():
        return float((w * model.log_prob(x, y)).sum() / w.sum())


def grow_tree(
    tree: MixtureOfExperts,
    x,
    y,
    sample_weight=None,
    *,
    branching: int = 2,
    gate="softmax",
    max_leaves: int = 16,
    max_depth: int | None = None,
    validation_fraction: float = 0.2,
    min_gain: float = 1e-3,
    split_iter: int = 20,
    max_iter: int = 200,
    tol: float = 1e-6,
    init="kmeans",
    refit: bool = True,
    random_state=None,
    verbose: int = 0,
) -> GrowResult:
    """Grow a tree by splitting, one at a time, the leaf whose split most raises held-out likelihood.

    A constructive HME in the spirit of Waterhouse & Robinson (1996), so that
    the depth need not be guessed:

    1. the rows are split (seeded) into a training part and a held-out part
       (``validation_fraction``); the start tree is fitted by EM on the
       training part;
    2. every leaf is tried: it is replaced by a node of ``branching`` leaves
       (:func:`split_leaf`), and the new node alone is fitted by
       ``split_iter`` EM steps on the old leaf's path posteriors, the rest of
       the tree held fixed; its gain is the rise of the held-out mean
       log-likelihood;
    3. a split *helps* when its gain exceeds both ``min_gain`` and two
       standard errors of the paired per-row differences of held-out
       log-likelihood (so that noise does not grow the tree).  The split with
       the largest gain minus two standard errors is kept, the whole tree is
       refitted by EM (warm start), and kept only if the refitted tree still
       has a higher held-out log-likelihood than before the split.
       Otherwise, or at ``max_leaves``, growth stops;
    4. with ``refit``, the final tree is refitted by EM on all rows (warm start).

    Parameters
    ----------
    tree : MixtureOfExperts
        The start, e.g. ``build_tree(d, depth=1, branching=1)`` (a single
        leaf) or any tree built by :func:`build_tree`; modified in place.
    x, y, sample_weight
        Training data, as for :func:`~moekit.fit_em`.
    branching : int
        Children of every new node (>= 2).
    gate : {"softmax", "constant", "mlp"}, Gate or callable
        Gate of every new node.
    max_leaves : int
        Upper bound on the number of leaves.
    max_depth : int or None
        Leaves at this depth (gates above them) are not split further.
    validation_fraction : float
        Share of the rows held out to score splits (in (0, 1)).
    min_gain : float
        Smallest rise of the held-out mean log-likelihood (nats per row) for
        which a split counts as helping.
    split_iter : int
        EM steps of a candidate's new node before it is scored.
    max_iter, tol
        EM settings of the whole-tree fits.
    init : {"kmeans", "kmeans_x", "random"}, array or None
        Initialisation of the start tree (see :func:`init_tree`; ``None``:
        keep its parameters).
    refit : bool
        Refit the grown tree on all rows at the end.
    random_state : int or None
        Seeds the held-out split, the initialisation and the splits.
    verbose : int
        Print one line per round when positive.

    Returns
    -------
    GrowResult

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y); sample_weight (n,).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from moekit.hierarchy import build_tree, grow_tree
    >>> rng = np.random.default_rng(0)
    >>> x = rng.uniform(-1, 1, (500, 1))
    >>> y = np.abs(x[:, 0]) + 0.05 * rng.normal(size=500)   # two linear pieces
    >>> res = grow_tree(build_tree(1, depth=1, branching=1), x, y, random_state=0)
    >>> res.n_leaves, res.stopped
    (2, 'no split helps')
    """
    from .training.em import fit_em

    t0 = time.perf_counter()
    _check_tree(tree)
    x, y, w = check_fit_inputs(x, y, sample_weight, dtype=model_dtype(tree), device=model_device(tree))
    if not (isinstance(branching, numbers.Integral) and not isinstance(branching, bool) and branching >= 2):
        raise ValueError(f"branching must be an int >= 2, got {branching!r}")
    if not (isinstance(max_leaves, numbers.Integral) and not isinstance(max_leaves, bool) and max_leaves >= 1):
        raise ValueError(f"max_leaves must be a positive int, got {max_leaves!r}")
    if max_depth is not None and not (isinstance(max_depth, numbers.Integral) and max_depth >= 1):
        raise ValueError(f"max_depth must be None or a positive int, got {max_depth!r}")
    if not (isinstance(validation_fraction, numbers.Real) and 0 < validation_fraction < 1):
        raise ValueError(f"validation_fraction must be in (0, 1) to score splits on held-out rows, got {validation_fraction!r}")
    if not (isinstance(min_gain, numbers.Real) and min_gain >= 0):
        raise ValueError(f"min_gain must be a non-negative number, got {min_gain!r}")
    if not (isinstance(split_iter, numbers.Integral) and split_iter >= 0):
        raise ValueError(f"split_iter must be a non-negative int, got {split_iter!r}")
    rng = np.random.default_rng(random_state)
    n = x.shape[0]
    perm = torch.as_tensor(rng.permutation(n), device=x.device)
    n_val = int(round(validation_fraction * n))
    va, tr = perm[:n_val], perm[n_val:]
    if n_val < 1 or float(w[va].sum()) <= 0 or float(w[tr].sum()) <= 0:
        raise ValueError(
            f"validation_fraction={validation_fraction} of {n} rows leaves no held-out or no training rows with "
            "positive weight; use more data or another validation_fraction"
        )
    xt, yt, wt = x[tr], y[tr], w[tr]
    xv, yv, wv = x[va], y[va], w[va]
    n_rows = int((wt > 0).sum())

    def say(msg):
        if verbose:
            print(msg)

    def fit(model, init_, seed):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=_convergence_warning())
            return fit_tree_em(model, xt, yt, wt, init=init_, random_state=seed, max_iter=max_iter, tol=tol)

    res = fit(tree, init, int(rng.integers(0, 2**31 - 1)))
    result = GrowResult(model=tree)
    val = _mean_ll(tree, xv, yv, wv)
    result.history.append(
        dict(n_leaves=n_leaves(tree), split=None, gain=None, train_log_likelihood=res.log_likelihood,
             validation_log_likelihood=val)
    )
    say(f"start: {n_leaves(tree)} leaves, train {res.log_likelihood:.5f}, held-out {val:.5f}")
    stopped = "max_leaves"
    while n_leaves(tree) + branching - 1 <= max_leaves:
        tried = []
        best = None
        with torch.no_grad():
            ll_v = tree.log_prob(xv, yv)
            post = path_posteriors(tree, xt, yt)
        for i, leaf in enumerate(tree_leaves(tree)):
            seed = int(rng.integers(0, 2**31 - 1))
            in_place = leaf.parent.n_experts == 1
            if max_depth is not None and not in_place and leaf.depth + 1 > max_depth:
                continue
            cand = copy.deepcopy(tree)
            new = split_leaf(cand, leaf.path, xt, yt, wt, branching=branching, gate=gate, random_state=seed)
            # fit the new node alone on the old leaf's path posteriors, the rest of the tree fixed
            npath = leaf.path[:-1] if new is _parent_of(cand, leaf.path) else leaf.path
            _, x_node = _node_input(cand, npath, xt)
            w_node = wt * post[:, i]
            with torch.no_grad():
                for _ in range(split_iter):
                    new.fit_weighted(x_node, yt, w_node)
                diff = cand.log_prob(xv, yv) - ll_v
            if cand.n_parameters() > n_rows:
                continue  # larger than the training rows support
            gain, se = _paired_gain(diff, wv)
            tried.append((leaf.path, gain))
            if math.isfinite(gain) and (best is None or gain - 2 * se > best[1] - 2 * best[2]):
                best = (leaf.path, gain, se, cand)
        result.candidates.append(tried)
        if not tried:
            stopped = "max_depth"
            say("stop: every leaf is at max_depth or its split would have more parameters than training rows")
            break
        if best is None or best[1] <= min_gain or best[1] <= 2 * best[2]:
            stopped = "no split helps"
            if best is not None:
                say(f"stop: best held-out gain {best[1]:.5f} (standard error {best[2]:.5f}) is not above "
                    f"min_gain={min_gain} and two standard errors")
            break
        path, gain, se, cand = best
        backup = copy.deepcopy(tree)
        tree.__dict__.update(cand.__dict__)
        res_new = fit(tree, None, 0)
        val_new = _mean_ll(tree, xv, yv, wv)
        if val_new <= val:
            # the split helped as scored, but not once the whole tree was refitted: keep the smaller tree
            tree.__dict__.update(backup.__dict__)
            stopped = "no split helps"
            say(f"stop: after refitting, split {list(path)} lowers the held-out log-likelihood ({val_new:.5f} <= {val:.5f})")
            break
        res, val = res_new, val_new
        result.history.append(
            dict(n_leaves=n_leaves(tree), split=path, gain=gain, train_log_likelihood=res.log_likelihood,
                 validation_log_likelihood=val)
        )
        say(f"split {list(path)} (gain {gain:.5f} +- {se:.5f}): {n_leaves(tree)} leaves, "
            f"train {res.log_likelihood:.5f}, held-out {val:.5f}")
    result.stopped = stopped
    if refit:
        res = fit_em(tree, x, y, w, init=None, max_iter=max_iter, tol=tol)
    result.fit_result = res
    result.seconds = time.perf_counter() - t0
    return result


def _paired_gain(diff: torch.Tensor, w: torch.Tensor) -> tuple[float, float]:
    """Weighted mean of per-row log-likelihood differences and its standard error."""
    tot = float(w.sum())
    mean = float((w * diff).sum()) / tot
    var = float((w * (diff - mean) ** 2).sum()) / tot
    n_eff = tot**2 / float((w**2).sum())
    return mean, math.sqrt(var / max(n_eff, 1.0))


def _convergence_warning():
    from sklearn.exceptions import ConvergenceWarning

    return ConvergenceWarning


def _parent_of(tree, path):
    node = tree
    for k in path[:-1]:
        node = node.experts[k]
    return node


def _leaf_index(tree, path) -> int:
    for i, lf in enumerate(tree_leaves(tree)):
        if lf.path == path:
            return i
    raise ValueError(f"path {list(path)} is not a leaf")
