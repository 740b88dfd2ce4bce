"""Growing a tree: split the leaf whose split most raises the held-out likelihood, until no split helps.

A constructive HME in the spirit of Waterhouse & Robinson (1996), so that the
depth of a tree need not be guessed: :func:`split_leaf` replaces one leaf by a
new node of leaves initialised on the old leaf's rows, and :func:`grow_tree`
scores every such split on held-out rows and keeps the best while it helps.
"""

from __future__ import annotations

import copy
import math
import numbers
import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from .._validation import model_device, model_dtype
from ..gates import ConstantGate
from ..mixture import MixtureOfExperts
from ..tree.build import check_children, check_tree, gate_factory, leaf_copies, n_leaves, tree_leaves
from ..tree.routing import path_posteriors
from .em import fit_em
from .init import initial_responsibilities
from .inputs import check_model_inputs
from .tree import fit_tree_em

__all__ = ["GrowResult", "grow_tree", "split_leaf"]


def _node_input(tree: MixtureOfExperts, path: tuple, x: torch.Tensor):
    """The node at ``path`` and the x its gate is applied to (before its own gate_features)."""
    node, xx = tree, x
    for k in path:
        child = node.experts[k] if not node.is_stacked else None
        if not isinstance(child, MixtureOfExperts):
            raise ValueError(f"no inner node at path {list(path)}")
        xx = node.expert_input(xx)
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
    those rows (on the joint [x, y], less the columns the leaves read as
    known terms such as an offset or the trials), the new gate fitted to
    the split, each new leaf to its part.
    The rest of the tree is unchanged, so before any further fitting the new
    node takes exactly the old leaf's share of every x.

    Parameters
    ----------
    tree : MixtureOfExperts
        The root; modified in place.
    path : sequence of int
        The leaf's path (see :func:`~moekit.tree.tree_leaves`).
    x, y, sample_weight
        The data (Tensors or arrays) the split is initialised on.
    branching : int
        Children of the new node (>= 2).
    gate : {"softmax", "constant", "mlp"}, Gate or callable
        As in :func:`~moekit.tree.build_tree`.  The new gate sees the root's
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
    >>> from moekit.training.grow import split_leaf
    >>> from moekit.tree import build_tree, tree_leaves
    >>> x = torch.linspace(-1, 1, 40, dtype=torch.float64)[:, None]
    >>> y = x[:, 0].abs()
    >>> tree = build_tree(1, depth=2, branching=2)
    >>> new = split_leaf(tree, (0, 1), x, y, random_state=0)
    >>> new.n_experts, [leaf.path for leaf in tree_leaves(tree)]
    (2, [(0, 0), (0, 1, 0), (0, 1, 1), (1, 0), (1, 1)])
    """
    check_tree(tree)
    if not (isinstance(branching, numbers.Integral) and not isinstance(branching, bool) and branching >= 2):
        raise ValueError(f"branching must be an int >= 2 to split a leaf, got {branching!r}")
    dev = model_device(tree)
    x, y, w = check_model_inputs(tree, x, y, sample_weight)
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
        new_gate = gate_factory(gate, dtype, None)(dg, int(branching)).to(dev)
    leaf = _single_leaf(parent, k)
    new_leaves = check_children(leaf_copies(leaf, int(branching)), int(branching), "splitting")
    n_extra = len(getattr(leaf, "extras", ()))  # trailing leaf columns read as known terms (offset, trials)
    extra_cols = [] if not n_extra or parent.expert_features is None else list(parent.expert_features[-n_extra:])
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
    if extra_cols:
        new.init_from_responsibilities(x_parent, y, w_leaf[:, None] * _split_without(x_parent, y, w_leaf, extra_cols,
                                                                                      int(branching), seed),
                                       random_state=seed)
    else:
        new.init_from_responsibilities(x_parent, y, w_leaf, random_state=seed)
    return new


def _split_without(x, y, w, extra_cols, k, seed):
    """The k-means split of a node's rows on the joint [x, y] less the leaves' extras (offsets, trials: known terms, not inputs).

    The seed and the fallback of :meth:`~moekit.MixtureOfExperts.init_from_responsibilities`'s own split.

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y); w (n,) -> (n, k), rows summing to one.
    """
    sub_seed = int(np.random.default_rng(seed).integers(0, 2**31 - 1))
    drop = set(extra_cols)
    keep = [j for j in range(x.shape[1]) if j not in drop]
    try:
        return initial_responsibilities(x[:, keep], y, k, "kmeans", sub_seed, w)
    except ValueError:  # fewer distinct weighted rows than children
        return torch.full((x.shape[0], k), 1.0 / k, dtype=x.dtype, device=x.device)


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
        ``train_log_likelihood`` and ``validation_log_likelihood``: despite
        their names, both are means per unit weight (of the training and of
        the held-out rows, after EM on the training rows), not totals.
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
    >>> from moekit.training.grow import GrowResult
    >>> from moekit.tree import build_tree
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
        leaf) or any tree built by :func:`~moekit.tree.build_tree`; modified in place.
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
        Initialisation of the start tree (see :func:`~moekit.training.tree.init_tree`; ``None``:
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
    >>> from moekit.training.grow import grow_tree
    >>> from moekit.tree import build_tree
    >>> rng = np.random.default_rng(0)
    >>> x = rng.uniform(-1, 1, (500, 1))
    >>> y = np.abs(x[:, 0]) + 0.05 * rng.normal(size=500)   # two linear pieces
    >>> res = grow_tree(build_tree(1, depth=1, branching=1), x, y, random_state=0)
    >>> res.n_leaves, res.stopped
    (2, 'no split helps')
    """
    t0 = time.perf_counter()
    check_tree(tree)
    x, y, w = check_model_inputs(tree, x, y, sample_weight)  # NaN / censored y where the leaves read them
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
            warnings.simplefilter("ignore", category=ConvergenceWarning)
            return fit_tree_em(model, xt, yt, wt, init=init_, random_state=seed, max_iter=max_iter, tol=tol)

    res = fit(tree, init, int(rng.integers(0, 2**31 - 1)))
    result = GrowResult(model=tree)
    val = _mean_ll(tree, xv, yv, wv)
    result.history.append(
        dict(n_leaves=n_leaves(tree), split=None, gain=None, train_log_likelihood=res.mean_log_likelihood,
             validation_log_likelihood=val)
    )
    say(f"start: {n_leaves(tree)} leaves, train {res.mean_log_likelihood:.5f}, held-out {val:.5f}")
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
            dict(n_leaves=n_leaves(tree), split=path, gain=gain, train_log_likelihood=res.mean_log_likelihood,
                 validation_log_likelihood=val)
        )
        say(f"split {list(path)} (gain {gain:.5f} +- {se:.5f}): {n_leaves(tree)} leaves, "
            f"train {res.mean_log_likelihood:.5f}, held-out {val:.5f}")
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


def _parent_of(tree, path):
    node = tree
    for k in path[:-1]:
        node = node.experts[k]
    return node
