"""The structure of a hierarchical mixture of experts: building a tree and walking it.

A hierarchical mixture of experts (Jordan & Jacobs 1994) is a tree whose
internal nodes are gates and whose leaves are experts.  In moekit it is
nothing but nesting: a :class:`~moekit.MixtureOfExperts` is itself an expert,
so a node is a ``MixtureOfExperts`` whose experts are either leaves (any
expert family, or a stacked group of leaves of one family) or other nodes.

:func:`build_tree` makes a balanced tree from a depth and a branching factor
(or a per-level branching list), with any leaf family and gate type;
:func:`tree_leaves`, :func:`tree_nodes`, :func:`n_leaves` and
:func:`tree_depth` describe a tree of any shape.  The leaves are numbered in
depth-first order, the column order of every (n, L) routing result
(:mod:`moekit.tree.routing`).

The helpers without an underscore that are not in ``__all__``
(:func:`check_tree`, :func:`as_branching`, :func:`gate_factory`,
:func:`leaf_copies`, :func:`check_children`) are shared with the tree
trainers (:mod:`moekit.training.tree`, :mod:`moekit.training.grow`) and the
HME estimators.
"""

from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..experts.base import Expert
from ..experts.gaussian import LinearGaussianExpert
from ..experts.logistic import LogisticExpert, SoftmaxExpert
from ..experts.poisson import PoissonExpert
from ..experts.student_t import StudentTExpert
from ..gates import ConstantGate, Gate, MLPGate, SoftmaxGate
from ..mixture import MixtureOfExperts

__all__ = [
    "LeafInfo",
    "NodeInfo",
    "build_tree",
    "n_leaves",
    "tree_depth",
    "tree_leaves",
    "tree_nodes",
]


_LEAF_NAMES = ("linear", "poisson", "student_t", "logistic", "softmax")


#: The deepest balanced tree built from an int depth (2**64 leaves at 2 children per node).
MAX_DEPTH = 64


def as_branching(depth, branching) -> list[int]:
    """The children per level, from a depth and an int branching or from a per-level sequence; checked."""
    if isinstance(branching, numbers.Integral) and not isinstance(branching, bool):
        if depth is None:
            raise ValueError(
                f"depth is required when branching is a single int (got branching={branching!r}); "
                "pass depth=..., or a per-level list such as branching=(4, 2)"
            )
        if not (isinstance(depth, numbers.Integral) and not isinstance(depth, bool) and depth >= 1):
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        if depth > MAX_DEPTH:
            raise ValueError(
                f"depth must be at most {MAX_DEPTH}, got {depth!r}: a deeper tree of 2 or more children per "
                "node has more leaves than any data set has rows; use a smaller depth, or grow=True"
            )
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
            return lambda k: LinearGaussianExpert(
                n_features, n_outputs, covariance, n_experts=k, var_floor=var_floor, alpha=alpha, dtype=dtype
            )
        if leaf == "student_t":
            return lambda k: StudentTExpert(n_features, n_outputs, n_experts=k, var_floor=var_floor, dtype=dtype)
        if leaf == "poisson":
            return lambda k: PoissonExpert(n_features, n_experts=k, l2=alpha, dtype=dtype)
        if leaf == "logistic":
            return lambda k: LogisticExpert(n_features, n_experts=k, l2=alpha, dtype=dtype)
        if not (isinstance(n_classes, int) and n_classes >= 2):
            raise ValueError(f"leaf='softmax' needs n_classes >= 2, got n_classes={n_classes!r}")
        return lambda k: SoftmaxExpert(n_features, n_classes, n_experts=k, l2=alpha, dtype=dtype)
    if isinstance(leaf, nn.Module):
        if getattr(leaf, "stacked", False):
            raise ValueError(
                f"leaf must be a single expert (n_experts=None), got a stack of {leaf.n_experts}; "
                "the builder makes the stacks itself"
            )
        return lambda k: leaf_copies(leaf, k)
    if callable(leaf):
        return leaf
    raise TypeError(f"leaf must be a family name, an expert instance or a callable k -> experts, got {type(leaf).__name__}")


def leaf_copies(module: nn.Module, k: int):
    """k copies of a single expert: one stacked module when the family stacks, else a list."""
    copies = [copy.deepcopy(module) for _ in range(k)]
    if isinstance(module, Expert):
        try:
            return type(module).stack(copies)
        except (TypeError, ValueError):  # e.g. SklearnExpert cannot be stacked
            pass
    return copies


def gate_factory(gate, dtype, generator) -> Callable:
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


def check_children(experts, k: int, what: str):
    """The k children a factory (``what``) returned: a stack of k, or a list of k modules."""
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
        Columns of x seen by every gate and by every leaf (None: all of
        them).  ``expert_features=[]`` gives intercept-only leaves (no
        inputs).  Columns that only the leaves read, such as an offset, are
        in ``expert_features`` and left out of ``gate_features``: inner
        nodes pass every column down, so no gate at any depth sees them.
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
    >>> from moekit.tree import build_tree, n_leaves, render_tree
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
    levels = as_branching(depth, branching)
    gcols = None if gate_features is None else [int(i) for i in gate_features]
    ecols = None if expert_features is None else [int(i) for i in expert_features]
    for name, cols in (("gate_features", gcols), ("expert_features", ecols)):
        if cols is not None and ((not cols and name == "gate_features")
                                 or any(not -n_features <= c < n_features for c in cols)):
            raise ValueError(f"{name} must hold column indices in [0, {n_features}), got {cols!r}")
    dg = n_features if gcols is None else len(gcols)
    de = n_features if ecols is None else len(ecols)
    make_leaves = _leaf_factory(leaf, de, n_outputs, n_classes, covariance, var_floor, float(alpha), dtype)
    make_gate = gate_factory(gate, dtype, generator)

    def node(level: int) -> MixtureOfExperts:
        b = levels[level]
        g = ConstantGate(1, dtype=dtype) if b == 1 else make_gate(dg, b)
        if not isinstance(g, nn.Module) or getattr(g, "n_experts", None) != b:
            raise ValueError(f"the gate factory must return a Gate with n_experts={b}, got {g!r}")
        if level == len(levels) - 1:
            children = check_children(make_leaves(b), b, "the leaf factory")
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
    :func:`~moekit.tree.node_gate_probabilities`).

    Examples
    --------
    >>> from moekit.tree import build_tree, tree_nodes
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
    >>> from moekit.tree import build_tree, tree_leaves
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


def check_tree(tree) -> None:
    """Raise ``TypeError`` unless ``tree`` is a :class:`~moekit.MixtureOfExperts` (the root of a tree)."""
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
    :func:`~moekit.tree.path_probabilities`, :func:`~moekit.tree.path_posteriors` and
    :func:`~moekit.tree.leaf_mixture`.

    Examples
    --------
    >>> from moekit.tree import build_tree, tree_leaves
    >>> [leaf.path for leaf in tree_leaves(build_tree(1, branching=(3, 2)))]
    [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    """
    check_tree(tree)
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
    :func:`~moekit.tree.node_gate_probabilities`.

    Examples
    --------
    >>> from moekit.tree import build_tree, tree_nodes
    >>> [node.path for node in tree_nodes(build_tree(1, branching=(3, 2)))]
    [(), (0,), (1,), (2,)]
    """
    check_tree(tree)
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
    >>> from moekit.tree import build_tree, n_leaves
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

    Examples
    --------
    >>> from moekit.tree import build_tree, tree_depth
    >>> tree_depth(build_tree(1, depth=1, branching=3)), tree_depth(build_tree(1, branching=(3, 2)))
    (1, 2)
    """
    return max(leaf.depth for leaf in tree_leaves(tree))
