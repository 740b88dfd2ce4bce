"""Sources of batches for the trainers: every EM pass is a sum of statistics over the batches of a source.

In memory the whole data set is one batch by default, so a pass is one call;
out of core a source would read its batches from files, and on many machines
each rank would read its own shard.  The EM algorithm is the same.
"""

from __future__ import annotations

from typing import Iterator

import torch

__all__ = ["ArrayBatches"]


class ArrayBatches:
    """Rows held in memory, served as batches of ``(x, y, weight)``.

    Parameters
    ----------
    x : Tensor (n, d_x)
    y : Tensor (n,) or (n, d_y)
    weight : Tensor (n,)
        Non-negative row weights.
    batch_size : int, optional
        Rows per batch (default: all rows in one batch).

    Shapes
    ------
    Each batch: x (b, d_x), y (b,) or (b, d_y), weight (b,).

    Examples
    --------
    >>> x = torch.zeros(5, 2); y = torch.zeros(5); w = torch.ones(5)
    >>> [b[0].shape[0] for b in ArrayBatches(x, y, w, batch_size=2)]
    [2, 2, 1]
    >>> float(ArrayBatches(x, y, w).total_weight)
    5.0
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, batch_size: int | None = None):
        n = x.shape[0]
        if y.shape[0] != n or weight.shape[0] != n:
            raise ValueError(
                f"x, y and weight must have the same number of rows, got {n}, {y.shape[0]} and {weight.shape[0]}"
            )
        if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be None or a positive int, got {batch_size!r}")
        self.x, self.y, self.weight = x, y, weight
        self.batch_size = batch_size

    @property
    def total_weight(self) -> float:
        """The sum of the row weights."""
        return float(self.weight.sum())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        n = self.x.shape[0]
        if self.batch_size is None or self.batch_size >= n:
            yield self.x, self.y, self.weight
            return
        for i in range(0, n, self.batch_size):
            yield self.x[i : i + self.batch_size], self.y[i : i + self.batch_size], self.weight[i : i + self.batch_size]
