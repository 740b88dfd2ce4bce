"""Routing through a tree: where each x goes (path probabilities) and where each (x, y) came from (path posteriors).

For a tree of L leaves, the path probability of a leaf is the product of the
gate probabilities along its path, ``prod_{edges e} g_e(x)``, and

    p(y | x) = sum_leaves  prod_{edges e on the path} g_e(x)  p_leaf(y | x).

The path posterior P(leaf | x, y) is the product of the branch posteriors
along the path: the weight EM fits each leaf on.  Everything is computed in
log space; the (n, L) results have their columns in the depth-first leaf
order of :func:`~moekit.tree.tree_leaves`.  :func:`leaf_mixture` gives
p(y | x) as one flat mixture over the L leaves.

Shapes
------
x (n, d_x); y (n,) or (n, d_y); path quantities (n, L).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.distributions import Distribution

from .._validation import as_tensor, model_device, model_dtype
from ..distributions import MixtureDistribution, covariance, flatten_leaves
from ..mixture import MixtureOfExperts
from .build import check_tree

__all__ = [
    "leaf_mixture",
    "node_gate_probabilities",
    "path_log_posteriors",
    "path_log_probabilities",
    "path_posteriors",
    "path_probabilities",
]


def _path_log_prior(node: MixtureOfExperts, x: torch.Tensor) -> torch.Tensor:
    lg = node.log_gate(x)
    if node.is_stacked or not any(isinstance(e, MixtureOfExperts) for e in node.experts):
        return lg  # leaves only: their inputs (expert_features, e.g. an offset column) are not needed
    xe = node.expert_input(x)
    cols = []
    for k, e in enumerate(node.experts):
        if isinstance(e, MixtureOfExperts):
            cols.append(lg[:, k : k + 1] + _path_log_prior(e, xe))
        else:
            cols.append(lg[:, k : k + 1])
    return torch.cat(cols, dim=1)


def _leaf_log_probs(node: MixtureOfExperts, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    xe = node.expert_input(x)
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
        Columns in the order of :func:`~moekit.tree.tree_leaves`.

    Shapes
    ------
    x (n, d_x) -> (n, L).

    Examples
    --------
    >>> import torch
    >>> from moekit.tree import build_tree, path_log_probabilities
    >>> tree = build_tree(1, branching=(3, 2))  # gates start uniform
    >>> lp = path_log_probabilities(tree, torch.zeros(4, 1, dtype=torch.float64))
    >>> lp.shape, [round(v, 4) for v in lp.exp()[0].tolist()]
    (torch.Size([4, 6]), [0.1667, 0.1667, 0.1667, 0.1667, 0.1667, 0.1667])
    """
    check_tree(tree)
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
    >>> from moekit.tree import build_tree, path_probabilities
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
    >>> from moekit.tree import build_tree, path_log_posteriors
    >>> tree = build_tree(1, branching=(3, 2))
    >>> x = torch.linspace(-1, 1, 5, dtype=torch.float64)[:, None]
    >>> lq = path_log_posteriors(tree, x, 2 * x[:, 0])
    >>> lq.shape, bool(torch.allclose(lq.logsumexp(1), torch.zeros(5, dtype=torch.float64)))
    (torch.Size([5, 6]), True)
    """
    check_tree(tree)
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
    >>> from moekit.tree import build_tree, path_posteriors
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
        :func:`~moekit.tree.tree_nodes`.

    Shapes
    ------
    x (n, d_x) -> each value (n, K_node), K_node the node's number of
    children; rows sum to one.

    Examples
    --------
    >>> import torch
    >>> from moekit.tree import build_tree, node_gate_probabilities
    >>> g = node_gate_probabilities(build_tree(1, branching=(3, 2)), torch.zeros(4, 1, dtype=torch.float64))
    >>> {path: tuple(p.shape) for path, p in g.items()}
    {(): (4, 3), (0,): (4, 2), (1,): (4, 2), (2,): (4, 2)}
    """
    check_tree(tree)
    x = _as_x(tree, x)
    out = {}

    def visit(node, xx, path):
        out[path] = node.log_gate(xx).exp()
        if not node.is_stacked and any(isinstance(e, MixtureOfExperts) for e in node.experts):
            xe = node.expert_input(xx)
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
        return self._pick(covariance(self.dist))

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
    are (n, L), in the order of :func:`~moekit.tree.tree_leaves`.  When every leaf is of
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
    >>> from moekit.tree import build_tree, leaf_mixture
    >>> mix = leaf_mixture(build_tree(1, branching=(3, 2)), torch.zeros(4, 1, dtype=torch.float64))
    >>> tuple(mix.batch_shape), tuple(mix.log_weights.shape), tuple(mix.components.batch_shape)
    ((4,), (4, 6), (4, 6))
    """
    check_tree(tree)
    groups = flatten_leaves(tree(_as_x(tree, x)))
    lw = torch.cat([g.log_weights for g in groups], dim=1)
    parts = [(g.dist, g.stacked) for g in groups]
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
