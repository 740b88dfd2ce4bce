"""Linear algebra shared by gates and experts: intercepts, weighted Gram blocks, SPD solves, chunking.

One chunking rule bounds the memory of every per-row temporary: statistics
are additive, so a long batch is processed in chunks of rows and the chunk
statistics are summed.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import torch
from torch.utils.weak import WeakTensorKeyDictionary
from scipy.linalg import blas
from threadpoolctl import ThreadpoolController

__all__ = ["AffineInputs", "add_intercept", "affine", "chunk_rows", "design_cache", "gram", "ldexp", "log_softmax_rows",
           "logsumexp_rows", "packed_design", "row_sums", "solve_spd", "transposed_design", "weighted_grams"]

#: Fewest multiply-adds (rows times columns squared) for which ``gram`` calls BLAS's symmetric rank-k update.
SYRK_MIN_WORK = 1 << 20

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


def ldexp(t: torch.Tensor, exponent: int) -> torch.Tensor:
    """``t * 2**exponent``, exact wherever the result is a normal number (a new tensor).

    Applied in two halves, so that the factor itself never overflows or underflows (``exponent``
    may span the whole range of the dtype, e.g. 2000 to bring float64 subnormals up to 1e300).

    Examples
    --------
    >>> ldexp(torch.tensor([3.0], dtype=torch.float64), -1074 + 2).tolist() == [3.0 * 2.0**-1072]
    True
    """
    half = int(exponent) // 2
    return t * (2.0**half) * (2.0 ** (int(exponent) - half))


class AffineInputs:
    """Mixin of gates and experts: fold a power-of-two rescaling of x into the parameters, exactly.

    A module whose only use of x is affine (``[1, x] @ coef``) returns its slopes (a view of the
    parameter data) from :meth:`input_slopes`; a model trained on ``x * 2**-e`` then answers for
    the user's x once :meth:`absorb_input_scale_` has multiplied those slopes by ``2**-e`` (exact
    in floating point).  Modules that use x otherwise (neural networks, scikit-learn models) keep
    the default ``None``, and data outside the supported range is then refused instead.
    """

    def input_slopes(self) -> torch.Tensor | None:
        """The parameters that multiply x (a view, changed in place), or None where x is used otherwise."""
        return None

    @property
    def absorbs_input_scale(self) -> bool:
        """Whether :meth:`absorb_input_scale_` can fold a rescaling of x into the parameters."""
        return self.input_slopes() is not None

    @torch.no_grad()
    def absorb_input_scale_(self, exponent: int) -> None:
        """Answer for x as the module answered for ``x * 2**-exponent``: the slopes times ``2**-exponent``."""
        slopes = self.input_slopes()
        if slopes is None:
            raise NotImplementedError(f"{type(self).__name__} cannot fold a rescaling of x into its parameters")
        slopes.copy_(ldexp(slopes, -exponent))


#: Elements below which torch runs an element-wise CPU kernel on one thread (``at::internal::GRAIN_SIZE``):
#: :func:`weighted_grams` keeps each product of its packed outer products under it, because
#: parallelising such small products costs more than it saves (4x slower with 2 threads, measured).
GRAIN = 32768

#: Widest row for which :func:`logsumexp_rows` and :func:`row_sums` use their own CPU path.
NARROW_ROWS = 64


def _narrow_cpu(a: torch.Tensor) -> bool:
    """Whether ``a`` (n, K) takes the narrow-row path: a CPU float tensor with few columns, outside autograd."""
    return (a.device.type == "cpu" and a.dim() == 2 and a.shape[1] <= NARROW_ROWS and a.dtype.is_floating_point
            and not (a.requires_grad and torch.is_grad_enabled()))


def row_sums(a: torch.Tensor) -> torch.Tensor:
    """``a.sum(1, keepdim=True)`` for an (n, K) matrix: a matrix-vector product where K is small.

    torch's CPU reduction over a short inner dimension is several times slower than the product
    with a column of ones (measured with torch 2.13, float64: 0.9 ms against 0.05 ms for
    65,536 x 2); elsewhere (GPUs, autograd, wide rows) it is ``a.sum``.

    Shapes
    ------
    a : (n, K) -> (n, 1).

    Examples
    --------
    >>> row_sums(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)).tolist()
    [[3.0], [7.0]]
    """
    if not _narrow_cpu(a):
        return a.sum(1, keepdim=True)
    return a @ a.new_ones(a.shape[1], 1)


def logsumexp_rows(a: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp(a, 1, keepdim=True)`` for an (n, K) matrix, faster on the CPU for small K.

    The row maximum is subtracted (clamped to the finite range, so rows of infinities give +-inf,
    not NaN), the exponentials are formed in place and summed by :func:`row_sums`: about 2.4x
    faster than torch's kernel at 65,536 x 2 and 1.1x at 65,536 x 8 (torch 2.13, float64, one
    thread).  Under autograd, on GPUs and for wide rows it is ``torch.logsumexp``.

    Shapes
    ------
    a : (n, K) -> (n, 1).

    Examples
    --------
    >>> inf = float("inf")
    >>> a = torch.tensor([[0.0, 0.0], [-inf, -inf], [1000.0, -inf]], dtype=torch.float64)
    >>> [round(v, 6) for v in logsumexp_rows(a)[:, 0].tolist()]
    [0.693147, -inf, 1000.0]
    """
    if not _narrow_cpu(a):
        return torch.logsumexp(a, 1, keepdim=True)
    m = _row_max(a)
    return row_sums(torch.sub(a, m).exp_()).log_().add_(m)


def _row_max(a: torch.Tensor) -> torch.Tensor:
    """Each row's maximum (n, 1), clamped to the finite range: rows of infinities then give +-inf, never NaN."""
    big = torch.finfo(a.dtype).max
    return a.amax(1, keepdim=True).clamp_(-big, big)


def log_softmax_rows(a: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the rows of ``a`` (n, K), computed as :func:`logsumexp_rows` is.

    Outside autograd this is 1.5-4x faster on the CPU than ``torch.log_softmax`` for small K (torch
    2.13, float64).  Elsewhere it is torch's kernel for K <= 2 and ``a - torch.logsumexp(a)`` above,
    which is twice as fast on the CPU.

    Shapes
    ------
    a : (n, K) -> (n, K).

    Examples
    --------
    >>> log_softmax_rows(torch.zeros(1, 4, dtype=torch.float64)).exp().tolist()
    [[0.25, 0.25, 0.25, 0.25]]
    """
    if _narrow_cpu(a):  # (a - m) - log(sum(exp(a - m))): exact for logits of any magnitude
        z = a - _row_max(a)
        return z.sub_(row_sums(z.exp()).log_())
    if a.shape[1] <= 2:
        return torch.log_softmax(a, dim=1)
    return a - torch.logsumexp(a, dim=1, keepdim=True)


def add_intercept(x: torch.Tensor) -> torch.Tensor:
    """``[1, x]``.

    Shapes
    ------
    x : (n, d) -> (n, d + 1).
    """
    return torch.cat([torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device), x], dim=1)


_DESIGNS: contextvars.ContextVar = contextvars.ContextVar("moekit_designs", default=None)

#: Most elements that :func:`design_cache` keeps in one fit, transposed designs and packed outer products
#: together (128 MB of float64): 100,000 rows of 10 inputs (11 + 66 per row) fit; beyond, the batches that
#: do not fit have theirs built in every pass (the packed products chunk by chunk).
DESIGN_CACHE_ELEMENTS = 1 << 24


@contextlib.contextmanager
def design_cache():
    """Within this context :func:`transposed_design` and :func:`packed_design` keep their results while the data live.

    EM reads the same batches in every iteration (:func:`moekit.fit_em` holds the context for its
    iterations), so their designs and the rows' packed outer products, up to
    :data:`DESIGN_CACHE_ELEMENTS` in all, are built once per fit instead of once per pass.  A batch
    is known by the tensor it views (weakly: freed data take their entries with them), its offset,
    shape and strides (a source that slices its rows anew in every pass still hits), and its
    version counter (data changed in place get new entries).  Outside the context nothing is kept.
    """
    token = _DESIGNS.set({"by_base": WeakTensorKeyDictionary(), "elements": 0})
    try:
        yield
    finally:
        _DESIGNS.reset(token)


def _cached(x: torch.Tensor) -> tuple[dict, dict] | None:
    """``(cache, entry)`` for batch ``x`` (a fresh entry if it changed), or None outside :func:`design_cache`."""
    cache = _DESIGNS.get()
    if cache is None or x.requires_grad:
        return None
    base = x if x._base is None else x._base
    entries = cache["by_base"].get(base)
    if entries is None:
        entries = cache["by_base"][base] = {}
    key = (x.storage_offset(), tuple(x.shape), tuple(x.stride()), x.dtype)
    entry = entries.get(key)
    if entry is None or entry["version"] != x._version:
        if entry is not None:  # changed in place: its old arrays are dropped
            cache["elements"] -= sum(entry[name].numel() for name in ("xt", "q") if name in entry)
        entry = entries[key] = {"version": x._version}
    return cache, entry


def _keep(found: tuple[dict, dict] | None, name: str, value: torch.Tensor) -> None:
    """Keep ``value`` in the batch's cache entry if the fit's total stays within :data:`DESIGN_CACHE_ELEMENTS`."""
    if found is not None and found[0]["elements"] + value.numel() <= DESIGN_CACHE_ELEMENTS:
        found[1][name] = value
        found[0]["elements"] += value.numel()


def transposed_design(x: torch.Tensor) -> torch.Tensor:
    """``[1, x]^T``, contiguous: the design with one row per column, kept by :func:`design_cache` when active.

    Shapes
    ------
    x : (n, d) -> (d + 1, n).

    Examples
    --------
    >>> transposed_design(torch.tensor([[2.0], [3.0]])).tolist()
    [[1.0, 1.0], [2.0, 3.0]]
    """
    found = _cached(x)
    if found is not None and "xt" in found[1]:
        return found[1]["xt"]
    xt = x.new_empty(x.shape[1] + 1, x.shape[0])
    xt[0] = 1.0
    xt[1:] = x.T
    _keep(found, "xt", xt)
    return xt


def packed_design(x: torch.Tensor) -> torch.Tensor | None:
    """The packed outer products of the rows of ``[1, x]`` (the upper triangles, row by row), kept for the fit.

    Only within :func:`design_cache` and while the fit's total stays within
    :data:`DESIGN_CACHE_ELEMENTS`; None otherwise (:func:`weighted_grams` then forms them chunk by
    chunk).  They depend on x alone, so EM's weighted Gram matrices cost one GEMM per pass instead
    of forming them again.

    Shapes
    ------
    x : (n, d) -> (p (p + 1) / 2, n) with p = d + 1.
    """
    found = _cached(x)
    if found is None:
        return None
    if "q" not in found[1]:
        p = x.shape[1] + 1
        if found[0]["elements"] + p * (p + 1) // 2 * x.shape[0] > DESIGN_CACHE_ELEMENTS:
            return None
        xt = transposed_design(x)
        _keep(found, "q", _pack_rows(xt, xt.new_empty(p * (p + 1) // 2, xt.shape[1])))
    return found[1].get("q")


def _pack_rows(xs: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The upper triangles of the rows' outer products into ``out``: (p, m) columns -> (p (p + 1) / 2, m)."""
    p, o = xs.shape[0], 0
    for j in range(p):  # row j of the upper triangle: x_j * x_{j:}
        torch.mul(xs[j : j + 1], xs[j:], out=out[o : o + p - j])
        o += p - j
    return out


def affine(x: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``[1, x] @ coef.T`` without forming ``[1, x]``: one ``addmm`` (intercepts in ``coef[:, 0]``).

    Shapes
    ------
    x : (n, d); coef : (m, d + 1) -> (n, m).

    Examples
    --------
    >>> affine(torch.tensor([[2.0]]), torch.tensor([[1.0, 3.0]])).tolist()
    [[7.0]]
    """
    return torch.addmm(coef[:, 0], x, coef[:, 1:].T)


def symmetric_products_cheaper(k: int, p: int) -> bool:
    """Whether :func:`weighted_grams` forms ``k`` Gram matrices of a ``p``-column design as one symmetric
    product each (``4 k <= p + 1``, the measured crossover) rather than from the rows' packed outer products."""
    return 4 * k <= p + 1


def weighted_grams(xd: torch.Tensor, w: torch.Tensor, xt: torch.Tensor | None = None,
                   q: torch.Tensor | None = None) -> torch.Tensor:
    """Per-expert weighted Gram matrices ``X^T diag(w_k) X``, from the rows' packed outer products.

    With few experts (``4 K <= p + 1``) and non-negative weights this is one :func:`gram` of
    ``sqrt(w_k) x`` per expert (a symmetric rank-k update: ``K n p^2`` flops).  Otherwise
    each chunk of rows forms the upper triangles of ``x_i x_i^T`` once,
    ``q`` (rows, p (p + 1) / 2), and one GEMM ``w^T q`` weighs them for all K
    experts: ``n K p (p + 1)`` flops, half those of the GEMM
    ``(w (x) x)^T x``, and no (rows, K p) temporary.

    The rule ``4 K <= p + 1`` is the crossover measured per 65,536 rows (torch 2.13, one thread):
    at p = 11, three symmetric products take 5.1 ms against 7.6 for the packed path, four are
    about even; at p = 21 the crossover is near five; at p = 2 the packed path always wins.

    ``xt``, the contiguous transpose of ``xd`` when the caller holds it (:func:`transposed_design`),
    spares the packed path its transposed copy of every chunk; ``xd`` may then be None.  ``q``, the
    rows' packed outer products when the caller holds them (:func:`packed_design`), makes the packed
    path one GEMM.

    Shapes
    ------
    xd : (n, p); w : (n, K); xt : (p, n); q : (p (p + 1) / 2, n) -> (K, p, p).

    Examples
    --------
    >>> xd = torch.tensor([[1.0, 2.0], [1.0, -1.0]], dtype=torch.float64)
    >>> weighted_grams(xd, torch.tensor([[1.0], [2.0]], dtype=torch.float64))[0].tolist()
    [[3.0, 0.0], [0.0, 6.0]]
    """
    p, n = xt.shape if xd is None else xd.shape[::-1]
    k = w.shape[1]
    if k == 0:
        return w.new_zeros(0, p, p)
    if symmetric_products_cheaper(k, p) and n and bool((w >= 0).all()):  # one symmetric product per expert
        rw = w.sqrt()
        if xt is not None:  # scale the transposed design's rows: column-major products, which gram takes as they are
            rt = rw.T.contiguous()
            return torch.stack([gram((xt * rt[j]).T) for j in range(k)])
        return torch.stack([gram(xd * rw[:, j : j + 1]) for j in range(k)])
    t = p * (p + 1) // 2
    if q is not None:
        packed = q @ w
    else:
        packed = w.new_zeros(t, k)  # transposed: q @ w below is a plain (non-transposed) GEMM, 15-20 % faster
        rows = max(1, min(chunk_rows(t), n, GRAIN // p))
        # one work array for every chunk (a fresh one each time costs page faults), held transposed: (t, rows), so
        # that each product writes whole rows (2x faster than column blocks of a (rows, t) array)
        buffer = w.new_empty(t, rows)
        for i in range(0, n, rows):
            xs = xd[i : i + rows].T.contiguous() if xt is None else xt[:, i : i + rows]  # (p, m)
            packed.addmm_(_pack_rows(xs, buffer[:, : xs.shape[1]]), w[i : i + rows])
    return packed.T[:, _symmetric_placement(p, str(w.device))].reshape(k, p, p)


@functools.lru_cache(maxsize=16)
def _symmetric_placement(p: int, device: str) -> torch.Tensor:
    """For every entry (i, j) of a p x p symmetric matrix, its index in the packed upper triangle
    (row by row, as :func:`weighted_grams` packs it): shape (p * p,)."""
    rows, cols = torch.triu_indices(p, p)
    index = torch.empty(p, p, dtype=torch.long)
    index[rows, cols] = torch.arange(rows.numel())
    index[cols, rows] = torch.arange(rows.numel())
    return index.reshape(-1).to(device)


@functools.cache
def _blas_threads() -> ThreadpoolController:
    """The BLAS libraries loaded in this process (found once), to hold SciPy's to torch's thread count."""
    return ThreadpoolController()


def _blas_thread_limit(n: int):
    """A context holding the BLAS libraries at ``n`` threads: a null context when every one has ``n`` already.

    Reading each library's thread count is about 1 microsecond; threadpoolctl's ``limit``, which
    queries and restores every library, about 14 (40 with several libraries loaded), paid on every
    :func:`gram` call otherwise.
    """
    controller = _blas_threads()
    if all(lib.num_threads == n for lib in controller.lib_controllers if lib.user_api == "blas"):
        return contextlib.nullcontext()
    return controller.limit(limits=n, user_api="blas")


def gram(a: torch.Tensor) -> torch.Tensor:
    """``a^T a``, computed as a symmetric rank-k update where that halves the work.

    On the CPU, for float32 / float64 and enough rows, BLAS's ``syrk`` (through
    SciPy, on the tensor's memory, with as many threads as torch uses) forms
    one triangle, about half the multiply-adds of the GEMM ``a.T @ a``;
    elsewhere (GPUs, small matrices) it is that GEMM.

    Shapes
    ------
    a : (n, m) -> (m, m).

    Examples
    --------
    >>> a = torch.arange(6.0, dtype=torch.float64).reshape(3, 2)
    >>> gram(a).tolist()
    [[20.0, 26.0], [26.0, 35.0]]
    """
    n, m = a.shape
    syrk = {torch.float64: blas.dsyrk, torch.float32: blas.ssyrk}.get(a.dtype)
    if syrk is None or a.device.type != "cpu" or a.requires_grad or n * m * m < SYRK_MIN_WORK:
        return a.T @ a
    with _blas_thread_limit(torch.get_num_threads()):
        if m > 1 and a.T.is_contiguous():  # column-major a (the rows of a transposed design): a itself to BLAS
            upper = torch.from_numpy(syrk(1.0, a.numpy(), trans=1))
        else:  # row-major a: a.numpy().T is column-major a^T
            upper = torch.from_numpy(syrk(1.0, a.contiguous().numpy().T, trans=0))
    return upper.triu() + upper.triu(1).T


def solve_spd(a: torch.Tensor, b: torch.Tensor, rel_jitter: float = 1e-10) -> torch.Tensor:
    """Solve ``a x = b`` for a batch of symmetric PSD ``a``, adding jitter only where singular.

    Each matrix of the batch that is not numerically positive definite gets
    ``jitter * mean(diag)`` added to its diagonal, growing 100-fold until its
    Cholesky factorisation succeeds; the others are solved exactly.  Matrices
    that never factor go to least squares, unless they hold NaN or infinity:
    then a ``ValueError`` (LAPACK would print to stdout and torch assert).

    Shapes
    ------
    a : (..., p, p); b : (..., p, m) -> (..., p, m).

    Examples
    --------
    >>> a = torch.tensor([[2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    >>> [round(v, 12) for v in solve_spd(a, torch.ones(2, 1, dtype=torch.float64))[:, 0].tolist()]
    [0.5, 0.25]
    """
    l, info = torch.linalg.cholesky_ex(a)
    if not bool(info.any()):  # the usual case: positive definite, solved at once
        return torch.cholesky_solve(b, l)
    p = a.shape[-1]
    eye = torch.eye(p, dtype=a.dtype, device=a.device)
    scale = a.diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp_min(torch.finfo(a.dtype).tiny)
    jitter = torch.zeros(a.shape[:-2], dtype=a.dtype, device=a.device)
    step = rel_jitter
    for _ in range(12):
        bad = info != 0
        if not bool(bad.any()):
            return torch.cholesky_solve(b, l)
        jitter = torch.where(bad, step * scale, jitter)
        l, info = torch.linalg.cholesky_ex(a + jitter[..., None, None] * eye)
        step *= 100.0
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        # LAPACK would print its complaint to stdout and torch would fail an internal assert: say what happened
        raise ValueError(
            "the weighted least-squares statistics are not finite (the data's squares overflowed the dtype, "
            "or a weight or response was not finite); check that x and y lie in the range of "
            "moekit._validation.supported_magnitudes for the model's dtype"
        )
    return torch.linalg.lstsq(a, b).solution


def solve_shared(a: torch.Tensor, b: torch.Tensor, shared) -> torch.Tensor:
    """Solve K symmetric systems ``a_k x_k = b_k`` jointly, with the coordinates ``shared`` tied across k.

    The joint problem maximises ``sum_k (b_k^T x_k - 0.5 x_k^T a_k x_k)`` over
    ``x_k = [o_k, s]``: each system keeps its own coordinates ``o_k``, and the
    coordinates listed in ``shared`` hold one value ``s`` common to all K.  It
    is the M-step (weighted least squares, ``a = X^T W_k X / sigma_k^2``) or
    the Newton step (``a`` the information, ``b`` the gradient) of K experts
    whose coefficients of some inputs are shared, as flexmix's
    ``FLXMRglmfix(fixed = ...)``.  The joint matrix, of size
    ``K (p - p_s) + p_s``, is assembled and solved by :func:`solve_spd`.
    With no shared coordinates it equals ``solve_spd(a, b)``.

    Shapes
    ------
    a : (K, p, p); b : (K, p, m); shared : sequence of p_s distinct indices
    into p -> (K, p, m), with ``x[:, shared]`` equal across the K systems.

    Examples
    --------
    >>> a = torch.eye(2, dtype=torch.float64).repeat(2, 1, 1)
    >>> b = torch.tensor([[[1.0], [1.0]], [[3.0], [3.0]]], dtype=torch.float64)
    >>> solve_shared(a, b, [1])[:, :, 0].round(decimals=12).tolist()  # the shared coordinate: the mean of 1 and 3
    [[1.0, 2.0], [3.0, 2.0]]
    """
    k, p, m = b.shape
    sh = sorted({int(i) % p for i in shared}) if len(shared) else []
    if not sh:
        return solve_spd(a, b)
    own = [i for i in range(p) if i not in sh]
    po, ps = len(own), len(sh)
    io = torch.as_tensor(own, dtype=torch.long, device=a.device)
    is_ = torch.as_tensor(sh, dtype=torch.long, device=a.device)
    a_oo = a[:, io][:, :, io]  # (K, po, po)
    a_os = a[:, io][:, :, is_]  # (K, po, ps)
    a_ss = a[:, is_][:, :, is_].sum(0)  # (ps, ps)
    size = k * po + ps
    big = a.new_zeros(size, size)
    rhs = b.new_zeros(size, m)
    for j in range(k):
        blk = slice(j * po, (j + 1) * po)
        big[blk, blk] = a_oo[j]
        big[blk, k * po :] = a_os[j]
        big[k * po :, blk] = a_os[j].T
        rhs[blk] = b[j, io]
    big[k * po :, k * po :] = a_ss
    rhs[k * po :] = b[:, is_].sum(0)
    sol = solve_spd(0.5 * (big + big.T), rhs)
    out = b.new_empty(k, p, m)
    out[:, io] = sol[: k * po].reshape(k, po, m)
    out[:, is_] = sol[k * po :].expand(k, ps, m)
    return out
