"""Rows held in memory as a source of batches (see :mod:`moekit.data.batch` for the protocol)."""

from __future__ import annotations

import copy
from typing import Iterator

import numpy as np
import torch

from .batch import Batch

__all__ = ["ArrayBatches", "sample_indices"]


def sample_indices(n_rows: int, max_rows: int, seed: int) -> np.ndarray | None:
    """The global row indices of a start sample: None (every row) when ``n_rows <= max_rows``, else
    ``max_rows`` indices drawn without replacement by ``seed``, sorted.

    The one rule every source uses, so a sample depends on the data and the seed only.

    Examples
    --------
    >>> sample_indices(10, 20, 0) is None
    True
    >>> idx = sample_indices(1000, 5, 0); len(idx), bool((np.diff(idx) > 0).all())
    (5, True)
    """
    if not (isinstance(max_rows, (int, np.integer)) and max_rows >= 1):
        raise ValueError(f"max_rows must be a positive int, got {max_rows!r}")
    if n_rows <= max_rows:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=int(max_rows), replace=False))


class ArrayBatches:
    """Rows held in memory, served as :class:`~moekit.data.Batch` values.

    Parameters
    ----------
    x : Tensor (n, d_x)
    y : Tensor (n,) or (n, d_y)
    weight : Tensor (n,), optional
        Non-negative row weights (default: ones).
    batch_size : int, optional
        Rows per batch (default: all rows in one batch).

    Shapes
    ------
    Each batch: x (b, d_x), y (b,) or (b, d_y), weight (b,).

    Examples
    --------
    >>> x = torch.zeros(5, 2); y = torch.zeros(5); w = torch.ones(5)
    >>> [len(b) for b in ArrayBatches(x, y, w, batch_size=2)]
    [2, 2, 1]
    >>> float(ArrayBatches(x, y, w).total_weight)
    5.0
    >>> [len(b) for b in ArrayBatches(x, y, w, batch_size=2).shard(1, 2)]  # rows 2, 3, 4
    [2, 1]
    """

    in_memory = True

    def __init__(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
                 batch_size: int | None = None):
        n = x.shape[0]
        if weight is None:
            weight = torch.ones(n, dtype=x.dtype, device=x.device)
        if y.shape[0] != n or weight.shape[0] != n:
            raise ValueError(
                f"x, y and weight must have the same number of rows, got {n}, {y.shape[0]} and {weight.shape[0]}"
            )
        if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be None or a positive int, got {batch_size!r}")
        self.x, self.y, self.weight = x, y, weight
        self.batch_size = batch_size

    @property
    def n_rows(self) -> int:
        """The number of rows."""
        return int(self.x.shape[0])

    @property
    def total_weight(self) -> float:
        """The sum of the row weights."""
        return float(self.weight.sum())

    def __iter__(self) -> Iterator[Batch]:
        n = self.x.shape[0]
        if self.batch_size is None or self.batch_size >= n:
            yield Batch(self.x, self.y, self.weight)
            return
        for i in range(0, n, self.batch_size):
            yield Batch(self.x[i : i + self.batch_size], self.y[i : i + self.batch_size],
                        self.weight[i : i + self.batch_size])

    def shard(self, rank: int, world_size: int) -> "ArrayBatches":
        """Rank ``rank``'s contiguous share of the rows (sizes differ by at most one), in the same batch size."""
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        bounds = np.linspace(0, self.n_rows, world_size + 1).round().astype(int)
        lo, hi = int(bounds[rank]), int(bounds[rank + 1])
        part = copy.copy(self)  # a subclass keeps its kind (e.g. in_memory)
        part.x, part.y, part.weight = self.x[lo:hi], self.y[lo:hi], self.weight[lo:hi]
        return part

    def sample(self, max_rows: int, seed: int) -> Batch:
        """Every row (one batch) when there are at most ``max_rows``, else a seeded sample by row index."""
        idx = sample_indices(self.n_rows, max_rows, seed)
        if idx is None:
            return Batch(self.x, self.y, self.weight)
        i = torch.as_tensor(idx, device=self.x.device)
        return Batch(self.x[i], self.y[i], self.weight[i])
