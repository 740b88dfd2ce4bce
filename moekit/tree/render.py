"""A readable text picture of a tree: one line per gate and per leaf, with the share of the data routed there."""

from __future__ import annotations

import numpy as np
import torch

from ..mixture import MixtureOfExperts
from .build import tree_leaves, tree_nodes
from .routing import path_posteriors, path_probabilities

__all__ = ["render_tree"]


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
    >>> from moekit.tree import build_tree, render_tree
    >>> tree = build_tree(1, branching=(2, 1))
    >>> print(render_tree(tree, torch.zeros(3, 1, dtype=torch.float64), decimals=2))
    HME: depth 2, 2 leaves, 1 gates, 8 parameters  (share of the data routed per line)
    root  SoftmaxGate(d=1, K=2)                1.00
    |-- 0  ConstantGate(K=1)                   0.50
    |   `-- 0.0  leaf 0  LinearGaussianExpert  0.50
    `-- 1  ConstantGate(K=1)                   0.50
        `-- 1.0  leaf 1  LinearGaussianExpert  0.50
    """
    leaves = tree_leaves(tree)
    nodes = tree_nodes(tree)
    share = None
    if x is not None:
        with torch.no_grad():
            p = path_posteriors(tree, x, y) if y is not None else path_probabilities(tree, x)
            w = torch.ones(p.shape[0], dtype=p.dtype, device=p.device) if sample_weight is None else torch.as_tensor(
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
