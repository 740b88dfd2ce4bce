"""Additive sufficient statistics.

Every model component that has a closed-form (or bounded) weighted M-step
summarises the data it needs in a :class:`SuffStats` value.  Statistics are
*values*, never hidden buffers: ``a + b`` is the statistic of the union of the
two batches that produced ``a`` and ``b``.  Out-of-core EM is then a sum over
batches, and distributed EM is one all-reduce followed by the same M-step on
every rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Iterator

import torch
import torch.distributed as dist

__all__ = ["SuffStats"]


class SuffStats(Mapping):
    """An immutable, additive mapping ``name -> tensor`` (values may nest).

    Parameters
    ----------
    data : mapping, optional
        Names to tensors, or to nested :class:`SuffStats`.
    **kwargs
        More entries.

    Notes
    -----
    ``sum(list_of_stats)`` works because ``0 + stats`` is ``stats``.

    Shapes
    ------
    Any: each entry keeps the shape its component gives it (e.g. a
    linear-Gaussian stack's ``sw`` (K,), ``xwx`` (K, p, p)); ``a + b``
    needs the same keys and adds entry by entry, so the shapes must match
    (or broadcast), and the sum has the same shapes.

    Examples
    --------
    >>> import torch
    >>> a = SuffStats(n=torch.tensor(2.0), s=torch.tensor([1.0, 2.0]))
    >>> b = SuffStats(n=torch.tensor(1.0), s=torch.tensor([3.0, 0.0]))
    >>> (a + b)["s"]
    tensor([4., 2.])
    >>> sum([a, b])["n"]
    tensor(3.)
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping | None = None, **kwargs):
        d = dict(data or {})
        d.update(kwargs)
        self._data = d

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{k}={tuple(v.shape) if isinstance(v, torch.Tensor) else v!r}"
            for k, v in self._data.items()
        )
        return f"SuffStats({inner})"

    def __add__(self, other):
        if isinstance(other, (int, float)) and other == 0:
            return self
        if not isinstance(other, SuffStats):
            return NotImplemented
        if set(self._data) != set(other._data):
            raise ValueError(
                "cannot add SuffStats with different keys: "
                f"{sorted(self._data)} vs {sorted(other._data)}; both must come from "
                "the same model component"
            )
        return SuffStats({k: self._data[k] + other._data[k] for k in self._data})

    __radd__ = __add__

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "SuffStats":
        """Apply ``fn`` to every tensor (recursively) and return a new value."""
        return SuffStats(
            {k: (v.map(fn) if isinstance(v, SuffStats) else fn(v)) for k, v in self._data.items()}
        )

    def scale(self, c: float) -> "SuffStats":
        """Return the statistics multiplied by the scalar ``c``."""
        return self.map(lambda t: t * c)

    def to(self, *args, **kwargs) -> "SuffStats":
        """Move every tensor, as :meth:`torch.Tensor.to`."""
        return self.map(lambda t: t.to(*args, **kwargs))

    def tensors(self) -> list[torch.Tensor]:
        """All tensors in a fixed (depth-first, insertion) order."""
        out: list[torch.Tensor] = []
        for v in self._data.values():
            if isinstance(v, SuffStats):
                out.extend(v.tensors())
            else:
                out.append(v)
        return out

    def with_tensors(self, tensors: list[torch.Tensor]) -> "SuffStats":
        """Rebuild the same structure from ``tensors`` (the order of :meth:`tensors`)."""
        it = iter(tensors)

        def rebuild(s: SuffStats) -> SuffStats:
            return SuffStats(
                {k: (rebuild(v) if isinstance(v, SuffStats) else next(it)) for k, v in s._data.items()}
            )

        return rebuild(self)

    def all_reduce(self, group=None) -> "SuffStats":
        """Sum the statistics over all ranks of ``torch.distributed`` (one flat all-reduce)."""
        ts = self.tensors()
        flat = torch.cat([t.reshape(-1) for t in ts])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        out, i = [], 0
        for t in ts:
            out.append(flat[i : i + t.numel()].reshape(t.shape))
            i += t.numel()
        return self.with_tensors(out)
