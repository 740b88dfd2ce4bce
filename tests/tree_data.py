"""Data and tree shapes shared by the tree, tree-training and HME tests (written once, imported as tests.tree_data)."""

from __future__ import annotations

import torch

from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate

D = torch.float64


def zigzag(n=600, seed=0, noise=0.05):
    """|x - round(x)| on [-2, 2]: a piecewise-linear curve that a tree of linear experts fits."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g, dtype=D) * 4 - 2
    y = (x[:, 0] - x[:, 0].round()).abs() + noise * torch.randn(n, generator=g, dtype=D)
    return x, y


def two_d(n=500, seed=0):
    """A smooth surface of two inputs with noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=D) * 2 - 1
    y = torch.sin(3 * x[:, 0]) * x[:, 1] + 0.1 * torch.randn(n, generator=g, dtype=D)
    return x, y


def unbalanced(d=1):
    """root -> [node(2 leaves), leaf, node(node(2 leaves), leaf)]: 6 leaves at depths 1, 2 and 3."""
    deep = MixtureOfExperts(SoftmaxGate(d, 2), [
        MixtureOfExperts(SoftmaxGate(d, 2), LinearGaussianExpert(d, n_experts=2), prune_threshold=1e-4),
        LinearGaussianExpert(d),
    ], prune_threshold=1e-4)
    return MixtureOfExperts(SoftmaxGate(d, 3), [
        MixtureOfExperts(SoftmaxGate(d, 2), LinearGaussianExpert(d, n_experts=2), prune_threshold=1e-4),
        LinearGaussianExpert(d),
        deep,
    ])
