"""A batch of rows, and the protocol every source of batches follows.

A **source** is a re-iterable object whose ``__iter__`` yields :class:`Batch`
values in a deterministic order (the same rows in the same order on every
pass), and which offers:

``n_rows`` (int or None)
    The number of rows, when known without a pass (None otherwise).
``in_memory`` (bool)
    Whether its batches are tensors already held in memory (then a trainer
    may keep them between passes instead of reading them again).
``shard(rank, world_size)``
    The source of this rank's rows only (by files / row groups for files,
    by contiguous row ranges for arrays), read without touching the other
    ranks' rows.  The shards of all ranks together hold every row once.
``sample(max_rows, seed)``
    One :class:`Batch` in memory: every row when there are at most
    ``max_rows``, else a seeded sample of ``max_rows`` rows chosen by their
    global row index, so that the sample (and hence the start of a fit)
    depends on the data and the seed only, never on the batching or on the
    ranks.

Trainers (:func:`moekit.fit_em`) read **model-level** batches: ``x`` holds
the model's inputs (per-row extras such as offsets and trials already folded
into x's trailing columns, censoring limits into y's columns, as the
estimators do); a source of raw columns (files) may carry the extras in the
batch's own fields, which an estimator folds in before training.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

__all__ = ["Batch"]


@dataclass(frozen=True)
class Batch:
    """Rows of a data set: inputs, targets, row weights and optional per-row extras.

    Attributes
    ----------
    x : Tensor (b, d_x)
    y : Tensor (b,) or (b, d_y); integer labels (b,) for classifiers
    weight : Tensor (b,)
        Non-negative row weights.
    offset, trials, lower, upper : Tensor (b,) or None
        Per-row extras read from a file's columns (see
        ``MoERegressor.fit``); None when the source has none.  Trainers
        take model-level batches, with these folded into x and y.

    Shapes
    ------
    x (b, d_x); y (b,) or (b, d_y); weight (b,); each extra (b,).

    Examples
    --------
    >>> b = Batch(torch.zeros(3, 2), torch.zeros(3), torch.ones(3))
    >>> b.x.shape, b.offset is None, len(b)
    (torch.Size([3, 2]), True, 3)
    >>> len(b.rows(slice(0, 2)))
    2
    """

    x: torch.Tensor
    y: torch.Tensor
    weight: torch.Tensor
    offset: torch.Tensor | None = None
    trials: torch.Tensor | None = None
    lower: torch.Tensor | None = None
    upper: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def has_extras(self) -> bool:
        """Whether any per-row extra is present."""
        return any(v is not None for v in (self.offset, self.trials, self.lower, self.upper))

    def rows(self, index) -> "Batch":
        """The rows ``index`` (a slice, an index tensor or a boolean mask) of every field."""
        return Batch(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index])
                         for f in fields(self)})

    def to(self, dtype: torch.dtype | None = None, device=None) -> "Batch":
        """Floating-point fields cast to ``dtype`` and every field moved to ``device`` (labels keep their dtype)."""
        def move(t):
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None)
        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})
