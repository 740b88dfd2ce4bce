"""Linear algebra shared by gates and experts: intercepts, weighted Gram blocks, SPD solves, chunking.

One chunking rule bounds the memory of every per-row temporary: statistics
are additive, so a long batch is processed in chunks of rows and the chunk
statistics are summed.
"""

from __future__ import annotations

import torch

__all__ = ["add_intercept", "chunk_rows", "weighted_grams", "solve_spd"]

#: Elements of one per-row work array in a chunk (about 2 MB of float64).
CHUNK_ELEMENTS = 1 << 18
#: Fewest and most rows of a chunk.
CHUNK_MIN_ROWS = 256
CHUNK_MAX_ROWS = 1 << 16


def chunk_rows(per_row: int) -> int:
    """Rows per chunk when each row needs a work array of ``per_row`` elements.

    Examples
    --------
    >>> chunk_rows(4), chunk_rows(10**9)
    (65536, 256)
    """
    return int(max(CHUNK_MIN_ROWS, min(CHUNK_MAX_ROWS, CHUNK_ELEMENTS // max(1, int(per_row)))))


def add_intercept(x: torch.Tensor) -> torch.Tensor:
    """``[1, x]``.

    Shapes
    ------
    x : (n, d) -> (n, d + 1).
    """
    return torch.cat([torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device), x], dim=1)


def weighted_grams(xd: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-expert weighted Gram matrices ``X^T diag(w_k) X``, one GEMM per chunk of rows.

    Shapes
    ------
    xd : (n, p); w : (n, K) -> (K, p, p).
    """
    n, p = xd.shape
    k = w.shape[1]
    out = xd.new_zeros(k * p, p)
    rows = chunk_rows(k * p)
    for i in range(0, n, rows):
        xs = xd[i : i + rows]
        out.addmm_((w[i : i + rows, :, None] * xs[:, None, :]).reshape(-1, k * p).T, xs)
    return out.reshape(k, p, p)


def solve_spd(a: torch.Tensor, b: torch.Tensor, rel_jitter: float = 1e-10) -> torch.Tensor:
    """Solve ``a x = b`` for a batch of symmetric PSD ``a``, adding jitter only where singular.

    Each matrix of the batch that is not numerically positive definite gets
    ``jitter * mean(diag)`` added to its diagonal, growing 100-fold until its
    Cholesky factorisation succeeds; the others are solved exactly.

    Shapes
    ------
    a : (..., p, p); b : (..., p, m) -> (..., p, m).

    Examples
    --------
    >>> a = torch.tensor([[2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    >>> [round(v, 12) for v in solve_spd(a, torch.ones(2, 1, dtype=torch.float64))[:, 0].tolist()]
    [0.5, 0.25]
    """
    p = a.shape[-1]
    eye = torch.eye(p, dtype=a.dtype, device=a.device)
    scale = a.diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp_min(torch.finfo(a.dtype).tiny)
    jitter = torch.zeros(a.shape[:-2], dtype=a.dtype, device=a.device)
    l, info = torch.linalg.cholesky_ex(a)
    step = rel_jitter
    for _ in range(12):
        bad = info != 0
        if not bool(bad.any()):
            return torch.cholesky_solve(b, l)
        jitter = torch.where(bad, step * scale, jitter)
        l, info = torch.linalg.cholesky_ex(a + jitter[..., None, None] * eye)
        step *= 100.0
    return torch.linalg.lstsq(a, b).solution
