"""EM for trees: tree-aware starts (:func:`init_tree`) and :func:`fit_tree_em`, the best of several starts.

The EM recursion itself is in :class:`~moekit.MixtureOfExperts`: the E-step
at a node gives each child the posterior of its branch given x and y, times
the node's own weight, so every leaf is fitted on its path posterior and every
gate on its children's posteriors weighted by the node's path posterior; each
gate's M-step is a weighted multinomial-logistic fit (Newton / IRLS with
step-halving), and the log-likelihood never decreases.  This module adds the
starts that initialise every node of a tree, and runs them through
:func:`~moekit.fit_em`.
"""

from __future__ import annotations

import numbers
from typing import Callable

import numpy as np

from ..mixture import MixtureOfExperts
from ..tree.build import check_tree
from .em import fit_em
from .init import initial_responsibilities, nested_seed
from .inputs import check_model_inputs

__all__ = ["fit_tree_em", "init_tree"]


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
        Data as for :func:`~moekit.fit_em`: y may hold NaN coordinates where
        the leaves marginalise them, and censored ``[y, lower, upper]`` rows
        inside :func:`~moekit._validation.incomplete_targets` (the starts
        impute them, for the split only).
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
    >>> from moekit.training.tree import init_tree
    >>> from moekit.tree import build_tree, path_probabilities
    >>> x = torch.linspace(-1, 1, 40, dtype=torch.float64)[:, None]
    >>> y = torch.where(x[:, 0] < 0, -1.0, 1.0).to(torch.float64)
    >>> tree = build_tree(1, depth=2, branching=2)
    >>> init_tree(tree, x, y, random_state=0) is tree
    True
    >>> path_probabilities(tree, x).shape
    torch.Size([40, 4])
    """
    check_tree(tree)
    _check_init(init)
    if init is None:
        raise ValueError("init must be 'kmeans', 'kmeans_x', 'random' or an (n, K) array; None means no initialisation")
    x, y, w = check_model_inputs(tree, x, y, sample_weight)  # NaN / censored y where the leaves read them
    seed = int(np.random.default_rng(random_state).integers(0, 2**31 - 1)) if random_state is None or not isinstance(
        random_state, numbers.Integral
    ) else int(random_state)
    k = tree.n_experts
    if isinstance(init, str):
        if init == "kmeans_x":
            r = initial_responsibilities(tree.gate_input(x), x.new_zeros(x.shape[0], 0), k, "kmeans", seed, w)
        else:
            r = initial_responsibilities(x, y, k, init, seed, w)
        split = init
    else:
        r = initial_responsibilities(x, y, k, init, seed, w)
        split = "kmeans"
    tree.init_from_responsibilities(x, y, w[:, None] * r, random_state=nested_seed(seed), split=split)
    return tree


def fit_tree_em(
    tree: MixtureOfExperts,
    x,
    y=None,
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
    process_group=None,
    init_sample_rows: int = 1_000_000,
    checkpoint=None,
    resume: bool = False,
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
        As for :func:`~moekit.fit_em`: arrays, or x a source of model-level
        batches (:mod:`moekit.data`) with y and sample_weight None; each start
        then initialises the tree on the source's start sample (every row
        when they fit, see ``init_sample_rows``) and EM streams over it.
    init : {"kmeans", "kmeans_x", "random"}, array (n, K) or None
        See :func:`init_tree`; ``None`` keeps the current parameters (one start).
    n_init : int
        Starts; the one with the highest final log-likelihood is kept.
    random_state : int or None
    max_iter, tol, prune_threshold, verbose, callback
        As for :func:`~moekit.fit_em` (the top level is pruned by
        ``prune_threshold``; inner nodes by their own ``prune_threshold``).
    process_group, init_sample_rows
        As for :func:`~moekit.fit_em` (a distributed fit over a source that
        every rank shards for itself; the rows the starts are made on).
    checkpoint, resume
        As for :func:`~moekit.fit_em`: the tree and the EM state after every
        iteration, and resuming a killed fit (one start, ``n_init=1``; the
        tree's pruning is replayed).

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
    >>> from moekit.training.tree import fit_tree_em
    >>> from moekit.tree import build_tree
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(200, 1, generator=g, dtype=torch.float64) * 2 - 1
    >>> y = (x[:, 0] - x[:, 0].round()).abs() + 0.02 * torch.randn(200, generator=g, dtype=torch.float64)
    >>> tree = build_tree(1, depth=2, branching=2)
    >>> res = fit_tree_em(tree, x, y, init="kmeans_x", n_init=2, random_state=0, max_iter=30)
    >>> len(res.init_mean_log_likelihoods), res.mean_log_likelihood == max(res.init_mean_log_likelihoods)
    (2, True)
    """
    check_tree(tree)
    _check_init(init)
    if not (isinstance(n_init, numbers.Integral) and not isinstance(n_init, bool) and n_init >= 1):
        raise ValueError(f"n_init must be a positive int, got {n_init!r}")

    def start(m, x, y, w, seed):
        init_tree(m, x, y, w, init=init, random_state=seed)

    return fit_em(
        tree, x, y, sample_weight, init=None if init is None else start, n_init=1 if init is None else int(n_init),
        random_state=random_state, max_iter=max_iter, tol=tol, prune_threshold=prune_threshold, verbose=verbose,
        callback=callback, process_group=process_group, init_sample_rows=init_sample_rows, checkpoint=checkpoint,
        resume=resume,
    )
