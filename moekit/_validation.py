"""Input checks with errors that name the argument, what was expected, what arrived and the fix.

The caller's arrays are never modified: every function returns new tensors.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers

import numpy as np
import torch


def _describe(a) -> str:
    shape = getattr(a, "shape", None)
    dt = getattr(a, "dtype", None)
    return f"{type(a).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else "") + (
        f" and dtype {dt}" if dt is not None else ""
    )


def as_tensor(a, name: str, dtype: torch.dtype | None, device=None, ndims=(1, 2), integer_ok: bool = False,
              finite: bool = True) -> torch.Tensor:
    """Copy ``a`` (array-like, DataFrame, tensor) into a new tensor and check it.

    ``finite=False`` lets NaN and infinities through (incomplete or censored targets).

    Raises
    ------
    TypeError
        non-numeric data.
    ValueError
        wrong number of dimensions, no rows, NaN or infinity.
    """
    if a is None:
        raise ValueError(f"{name} is None; pass an array of shape (n_samples, ...)")
    if isinstance(a, torch.Tensor):
        t = a.detach().clone()
    else:
        if hasattr(a, "to_numpy"):
            a = a.to_numpy()
        arr = np.asarray(a)
        if arr.dtype == object or arr.dtype.kind in "USVMmc":
            kind = "complex" if arr.dtype.kind == "c" else "non-numeric"
            raise TypeError(
                f"{name} must be numeric, got {kind} data ({_describe(arr)}); "
                "encode categorical columns (e.g. one-hot) and convert to floats first"
            )
        t = torch.tensor(arr, device="cpu")  # NumPy data lands on the CPU first, whatever the default device
    if t.is_complex():
        raise TypeError(f"{name} must be real-valued, got complex data; pass the real part or split real and imaginary parts")
    if t.dtype == torch.bool:
        t = t.to(torch.float64 if dtype is None else dtype)
    keep_int = integer_ok and not t.is_floating_point()
    if not keep_int and dtype is not None and dtype != t.dtype:
        t = _convert(t, dtype, name)
    if device is not None:
        t = t.to(device)
    if t.dim() not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name} must be {want}, got a {t.dim()}-D array of shape {tuple(t.shape)}; reshape it")
    if t.shape[0] == 0:
        raise ValueError(f"{name} has no rows (shape {tuple(t.shape)}); pass at least one sample")
    if finite and t.is_floating_point() and not all_finite(t):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{name} contains {bad} NaN or infinite value(s); drop or impute them first "
            "(e.g. sklearn.impute.SimpleImputer)"
        )
    return t


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of a floating tensor is finite: its smallest and largest value are (NaN propagates).

    One pass without temporaries (``torch.isfinite(t).all()`` makes three): 10x faster on the CPU.
    """
    if t.numel() == 0:
        return True
    low, high = torch.aminmax(t)
    return math.isfinite(float(low)) and math.isfinite(float(high))


def _convert(t: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    """``t`` in ``dtype``; a clear error where finite data overflows it or a whole nonzero column underflows to 0."""
    src = t
    t = t.to(dtype)
    if not (src.is_floating_point() and t.is_floating_point() and src.numel()):
        return t
    if all_finite(src) and not all_finite(t):
        check_scale(t, name, power=1)  # finite data beyond the range of the model's dtype: say so, not "NaN or inf"
    if torch.finfo(dtype).tiny > torch.finfo(src.dtype).tiny:  # a narrower dtype: a column may vanish
        s2, t2 = src.reshape(src.shape[0], -1), t.reshape(t.shape[0], -1)
        gone = (s2 != 0).any(0) & (t2 == 0).all(0)
        if bool(gone.any()):
            j = int(torch.nonzero(gone)[0])
            col = f" column {j}" if src.dim() == 2 else ""
            check_scale(s2[:, j], f"{name}{col}", power=1, dtype=dtype)
    return t


def model_dtype(model) -> torch.dtype:
    """The floating dtype of a module's parameters (float64 for a module without any)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float64


def model_device(model) -> torch.device:
    """Where a module's parameters live (the CPU for a module without any); array data is put there."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def check_sample_weight(sample_weight, n: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Validate weights: 1-D, length n, finite, non-negative, positive sum. Returns a new tensor."""
    if sample_weight is None:
        return torch.ones(n, dtype=dtype, device="cpu" if device is None else device)
    if np.isscalar(sample_weight):
        sample_weight = np.full(n, float(sample_weight))
    w = as_tensor(sample_weight, "sample_weight", dtype, device, ndims=(1,))
    if w.shape[0] != n:
        raise ValueError(f"sample_weight has {w.shape[0]} entries but X has {n} rows; pass one weight per row")
    if (w < 0).any():
        raise ValueError("sample_weight must be non-negative; got negative entries; use 0 to drop a row")
    if not w.sum() > 0:
        raise ValueError("sample_weight sums to zero; at least one row needs a positive weight")
    top = float(w.max())
    if not WEIGHT_RANGE[0] <= top <= WEIGHT_RANGE[1]:
        raise ValueError(
            f"sample_weight's largest value is {top:.3g}, outside {WEIGHT_RANGE[0]:g} to {WEIGHT_RANGE[1]:g}: sums of "
            "weights times squared data would overflow or vanish; only the weights' ratios matter, so divide them "
            "by their mean (sample_weight / sample_weight.mean())"
        )
    return w


#: The largest sample weight must lie in this range (only ratios of weights matter; beyond it weighted sums of
#: squares leave the float range).
WEIGHT_RANGE = (1e-100, 1e100)


class DivergenceError(FloatingPointError, ValueError):
    """A fit's log-likelihood stopped being finite (the data's scale, a too small variance floor).

    A ``FloatingPointError`` (as before) and a ``ValueError`` (what bad data raises everywhere else).
    """


_INCOMPLETE_Y: contextvars.ContextVar[bool] = contextvars.ContextVar("moekit_incomplete_y", default=False)


@contextlib.contextmanager
def incomplete_targets():
    """Within this block :func:`check_fit_inputs` accepts NaN and infinite entries of y.

    For models whose experts read them: NaN coordinates of a vector y (missing at random) and the
    ``[y, lower, upper]`` rows of censored experts (``±inf``: no limit; y NaN: interval-censored).
    The estimators check such y themselves before they train.

    Examples
    --------
    >>> import torch
    >>> y = torch.tensor([[1.0, float("nan")], [2.0, 3.0]], dtype=torch.float64)
    >>> with incomplete_targets():
    ...     _, yy, _ = check_fit_inputs(torch.zeros(2, 1, dtype=torch.float64), y, None, torch.float64)
    >>> bool(yy.isnan().any())
    True
    """
    token = _INCOMPLETE_Y.set(True)
    try:
        yield
    finally:
        _INCOMPLETE_Y.reset(token)


def check_fit_inputs(x, y, sample_weight, dtype: torch.dtype, device=None):
    """Tensors for a training function: x (n, d), y (n,) or (n, d_y), weights (n,).

    x and a real-valued y are held to :func:`check_scale` (the magnitudes whose squares the model's
    dtype represents), so that no Gram matrix or variance of a trainer overflows or underflows.
    Inside :func:`incomplete_targets` y may hold NaN and infinities (checked on its finite values).
    """
    x = as_tensor(x, "x", dtype, device, ndims=(2,))
    if _INCOMPLETE_Y.get():
        y = as_tensor(y, "y", dtype, device, ndims=(1, 2), integer_ok=True, finite=False)
    else:
        y = as_tensor(y, "y", dtype, device, ndims=(1, 2), integer_ok=True)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}; they must have the same length")
    check_scale(x, "x")
    check_scale(torch.where(torch.isfinite(y), y, torch.zeros_like(y)) if y.is_floating_point() else y, "y")
    w = check_sample_weight(sample_weight, x.shape[0], x.dtype, x.device)
    return x, y, w


# ------------------------------------------------------------ scales, floors, constant targets
#: Bits of headroom kept between the supported magnitudes and the limits of the dtype (sums of many
#: squares above, variance floors below).
SCALE_MARGIN_BITS = 12


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def supported_magnitudes(dtype: torch.dtype, power: int = 2) -> tuple[float, float]:
    """The smallest and largest column magnitude (largest ``|value|``) a model of ``dtype`` supports.

    A trainer that forms ``power``-th powers of the data (2: Gram matrices and variances) needs them
    finite and normal: the range is the ``power``-th root of the dtype's normal range, less
    :data:`SCALE_MARGIN_BITS` bits at either end.  Powers of two, so that data rescaled by one stays
    exact.

    Examples
    --------
    >>> lo, hi = supported_magnitudes(torch.float64)
    >>> f"{lo:.2g} {hi:.2g}"
    '1.2e-150 3.3e+150'
    >>> lo, hi = supported_magnitudes(torch.float32, power=1)
    >>> f"{lo:.2g} {hi:.2g}"
    '9.6e-35 8.3e+34'
    """
    fi = torch.finfo(dtype)
    max_exp = math.frexp(fi.max)[1]  # 1024 for float64, 128 for float32
    min_exp = math.frexp(fi.tiny)[1]  # -1021 for float64, -125 for float32
    hi = math.ldexp(1.0, max_exp // power - SCALE_MARGIN_BITS)
    lo = math.ldexp(1.0, -((-min_exp) // power) + SCALE_MARGIN_BITS)
    return lo, hi


def check_scale(t: torch.Tensor, name: str, power: int = 2, dtype: torch.dtype | None = None, columns=None) -> None:
    """Raise a clear ``ValueError`` unless every column of ``t`` has a magnitude the model supports.

    The one scale rule of every trainer and estimator: a column's magnitude (its largest ``|value|``)
    must lie in :func:`supported_magnitudes` of the model's dtype (``t``'s own unless ``dtype`` is
    given), or the column must be all zeros.  Outside it, squares overflow (a crash inside the
    linear algebra) or underflow (the column is silently ignored).  A tensor that holds infinities
    after conversion to the model's dtype (finite float64 data beyond float32's range) gets the same
    error.  Integer tensors (class labels, counts) are not checked.

    ``columns``: the columns' names (a DataFrame's), used in the message when there is one per column.

    Raises
    ------
    ValueError
        Naming ``name`` (and the column), the magnitude found, the supported range and the fix.
    """
    if not t.is_floating_point() or t.numel() == 0:
        return
    dtype = t.dtype if dtype is None else dtype
    lo, hi = supported_magnitudes(dtype, power)
    what = "squares" if power == 2 else "values"  # finite and normal: neither overflowing nor underflowing
    t2 = t.detach().reshape(t.shape[0], -1)
    rng = f"column magnitudes (largest |value|) from {lo:.3g} to {hi:.3g} or all zeros, so that their {what} stay finite and normal"
    check_representable(t2, name, supported=f"; a {_dtype_name(dtype)} model supports {rng}")
    low, high = torch.aminmax(t2, dim=0)  # one pass, no |t| temporary
    m = torch.maximum(low.abs(), high.abs()).double().cpu()
    bad = (m > hi) | ((m < lo) & (m > 0))
    if bool(bad.any()):
        j = int(torch.nonzero(bad)[0])
        col = f" column {j}" if t.dim() == 2 else ""
        if col and columns is not None and len(columns) == t.shape[1]:
            col += f" ({columns[j]!r})"
        mj = float(m[j])
        factor = f"1e{-round(math.log10(mj)):+d}"  # as text: 10**323 itself would overflow
        raise ValueError(
            f"{name}{col} has magnitude {mj:.3g}, outside the range a {_dtype_name(dtype)} model supports: {rng} "
            f"in {_dtype_name(dtype)}; rescale it (e.g. multiply {name}{col} by {factor}) and convert the "
            "results back"
        )


def check_representable(t: torch.Tensor, name: str, supported: str = "") -> None:
    """Raise a clear ``ValueError`` where ``t`` (finite data converted to the model's dtype) holds infinities.

    Finite float64 data beyond float32's range becomes infinite in a float32 model, and its
    predictions NaN: say so (``supported``: the range, where known) instead of returning them.
    """
    if t.is_floating_point() and not all_finite(t):
        raise ValueError(
            f"{name} has values beyond the range of {_dtype_name(t.dtype)} (magnitudes above "
            f"{torch.finfo(t.dtype).max:.3g} become infinite in the model's dtype){supported}; rescale {name} "
            "(e.g. divide it by a power of ten) or use dtype='float64'"
        )


def check_not_constant(y: np.ndarray, w: np.ndarray, name: str = "y") -> None:
    """Raise a clear ``ValueError`` if a column of a real-valued target is constant on the rows with positive weight.

    Constant up to rounding: its range is at most 16 units in the last place of its magnitude.  A
    continuous density fitted to a constant has an unbounded likelihood (the variance goes to its
    floor), so the fit, its log-likelihood and any selection by BIC would only reflect the floor.
    """
    y2 = np.asarray(y, dtype=np.float64).reshape(len(y), -1)[np.asarray(w) > 0]
    if y2.shape[0] == 0:
        return
    spread = y2.max(0) - y2.min(0)
    size = np.abs(y2).max(0)
    const = spread <= 16 * np.finfo(np.float64).eps * size
    if const.any():
        j = int(np.flatnonzero(const)[0])
        col = f" column {j}" if np.ndim(y) == 2 else ""
        v = float(y2[0, j])
        how = "" if spread[j] == 0 else " up to rounding"
        n = y2.shape[0]
        raise ValueError(
            f"{name}{col} is constant (the {n} sample(s) with positive weight all have {name}{col} = {v:.6g}{how}); a density "
            "fitted to a constant target has no finite maximum likelihood, so its fit, log-likelihood and BIC would "
            f"only reflect the variance floor; drop the constant target{col} or predict it directly"
        )


def variance_floor(relative: float, variance: float, dtype: torch.dtype) -> float:
    """An absolute variance floor: ``relative * variance``, never below the smallest normal number of ``dtype``.

    The absolute minimum (about 2.2e-308 for float64, 1.2e-38 for float32) keeps the floor, its
    square root and its logarithm finite and positive for any data scale (below it the product would
    underflow to zero); for data in :func:`supported_magnitudes` and the default relative floor the
    product is above it and is returned unchanged.
    """
    return max(float(relative) * float(variance), torch.finfo(dtype).tiny)


def check_int(value, name: str, minimum: int, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer (not a bool) >= ``minimum`` (or None, if allowed)."""
    Int(minimum, none_ok=allow_none).check(value, name)


def check_real(value, name: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number (not a bool) in [low, high] ((low, high] if ``low_open``)."""
    Real(low, high, low_open=low_open).check(value, name)


# ------------------------------------------------------------ per-row extras and family targets
def first_rows(mask: np.ndarray, limit: int = 5) -> str:
    """The first row numbers where ``mask`` holds, as text (``[3, 7, 9]`` or ``[3, 7, 9, ...] (12 rows)``)."""
    rows = np.flatnonzero(mask)
    head = ", ".join(str(int(i)) for i in rows[:limit])
    return f"[{head}]" if len(rows) <= limit else f"[{head}, ...] ({len(rows)} rows)"


def row_values(a, name: str, n: int) -> np.ndarray | None:
    """A per-row keyword (``offset``, ``trials``, ``lower``, ``upper``) as a new float64 array (n,).

    None stays None; a number is repeated for every row; a Series, list or array of n numbers (or an
    (n, 1) column) is copied.  NaN is kept (the caller decides what it means).

    Raises
    ------
    TypeError
        Text or other non-numbers.
    ValueError
        Not one value per row.

    Examples
    --------
    >>> row_values(2, "trials", 3)
    array([2., 2., 2.])
    """
    if a is None:
        return None
    if hasattr(a, "to_numpy"):
        a = a.to_numpy()
    arr = np.asarray(a)
    if arr.dtype == object or arr.dtype.kind in "USVMmc":
        raise TypeError(f"{name} must hold numbers (one per row of X), got {_describe(arr)}")
    arr = np.array(arr, dtype=np.float64)  # a copy: the caller's array is never modified
    if arr.ndim == 0:
        return np.full(n, float(arr))
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} has shape {arr.shape} but X has {n} rows; pass one {name} value per row of X "
                         f"(an array of shape ({n},))")
    return arr


def check_offset(offset: np.ndarray, name: str = "offset") -> None:
    """ValueError naming ``offset`` where it is not finite (NaN rows are the caller's: missing values)."""
    bad = np.isinf(offset)
    if bad.any():
        raise ValueError(f"{name} holds infinite values in rows {first_rows(bad)}; an offset is a finite number added "
                         "to the linear predictor (e.g. np.log(exposure) with every exposure > 0): drop those rows or "
                         "fix their exposure")


def check_trials(trials: np.ndarray, name: str = "trials") -> None:
    """ValueError naming ``trials`` unless every entry is a positive integer."""
    bad = ~np.isfinite(trials) | (trials < 1) | (trials != np.round(trials))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must hold positive integers (the number of trials of each row), got {trials[i]:g} in "
                         f"rows {first_rows(bad)}; pass the counts of trials (n >= 1) for a binomial expert")


def check_family_y(family: str, y: np.ndarray, trials: np.ndarray | None = None, exempt: np.ndarray | None = None) -> None:
    """ValueError naming y where it is outside the support of ``family`` (rows where ``exempt`` holds are not checked).

    poisson, negative_binomial: non-negative integers; binomial: integers from 0 to the row's
    trials (1 without trials); gamma: positive numbers.  ``exempt``: the rows a point-mass expert
    explains (y equal to its value).
    """
    yy = np.asarray(y, dtype=np.float64)
    keep = np.ones(yy.shape[0], dtype=bool) if exempt is None else ~np.asarray(exempt, dtype=bool)
    if family in ("poisson", "negative_binomial"):
        bad = keep & ((yy < 0) | (yy != np.round(yy)))
        fix = "y must hold non-negative integer counts (0, 1, 2, ...)"
    elif family == "binomial":
        n = np.ones_like(yy) if trials is None else trials
        bad = keep & ((yy < 0) | (yy != np.round(yy)) | (yy > n))
        fix = ("y must hold the number of successes, an integer from 0 to the row's trials"
               + (" (pass trials=... for counts out of more than one trial)" if trials is None else ""))
    elif family == "gamma":
        bad = keep & ~(yy > 0)
        fix = "y must be positive (> 0); a Gamma expert has no mass at 0 or below (add a 'point_mass' expert for zeros)"
    else:
        return
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        extra = f" with trials {trials[i]:g}" if family == "binomial" and trials is not None else ""
        raise ValueError(f"expert={family!r}: y is {yy[i]:g}{extra} in rows {first_rows(bad)}; {fix}")


def check_censoring(y: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> None:
    """ValueError naming lower / upper where they do not bracket y (lower <= y <= upper, lower < upper).

    y NaN is an interval-censored row: its limits must both be finite.
    """
    for name, lim in (("lower", lower), ("upper", upper)):
        if np.isnan(lim).any():
            raise ValueError(f"{name} holds NaN in rows {first_rows(np.isnan(lim))}; use -np.inf (lower) or np.inf "
                             f"(upper) for a row without that limit")
    bad = ~(lower < upper)
    if bad.any():
        raise ValueError(f"lower must be below upper in every row, but lower >= upper in rows {first_rows(bad)}; "
                         "give an observed row the limits (-inf, inf) or the censoring limits that bracket it")
    obs = ~np.isnan(y)
    bad = obs & ((y < lower) | (y > upper))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"the censoring limits do not bracket y in rows {first_rows(bad)} (row {i}: y = {y[i]:g}, "
                         f"lower = {lower[i]:g}, upper = {upper[i]:g}); a left-censored row has y equal to its lower "
                         "limit, a right-censored row y equal to its upper limit: fix y, lower or upper")
    gap = ~obs & ~(np.isfinite(lower) & np.isfinite(upper))
    if gap.any():
        raise ValueError(f"y is NaN in rows {first_rows(gap)} without two finite limits; a NaN y is interval-censored "
                         "between finite lower and upper: give both limits, or drop those rows")


# ------------------------------------------------------------ dtypes and devices
DTYPES = {"float64": torch.float64, "float32": torch.float32, "double": torch.float64, "float": torch.float32}


def torch_dtype(dtype) -> torch.dtype:
    """The one dtype rule: ``"float64"``/``"float32"`` (or ``"double"``/``"float"``, the torch or NumPy types).

    Raises
    ------
    ValueError
        Any other dtype.
    """
    if dtype in (torch.float64, torch.float32):
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    if not isinstance(dtype, (str, torch.dtype)):
        try:
            if dtype in (np.float64, np.float32):
                return torch.float64 if dtype == np.float64 else torch.float32
        except TypeError:
            pass
    raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")


def device_problem(device, name: str = "device") -> str | None:
    """The one device rule: why ``device`` cannot be used on this machine, or None when it can.

    Accepted: ``"cpu"``, ``"cuda"``/``"cuda:N"`` where torch sees that GPU, ``"mps"`` where available.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        return f"{name} must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}"
    if dev.type == "cpu":
        return None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return f"{name}={device!r} but no CUDA device is available here; use {name}='cpu'"
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            return f"{name}={device!r} but this machine has {n} CUDA device(s) (cuda:0 to cuda:{n - 1})"
        return None
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        return None if mps is not None and mps.is_available() else f"{name}={device!r} but MPS is not available here; use {name}='cpu'"
    return f"{name}={device!r}: moekit runs on 'cpu', 'cuda', 'cuda:N' or 'mps'"


def check_device(device, name: str = "device") -> torch.device:
    """The device, or ``ValueError`` (the message of :func:`device_problem`) for one this machine lacks."""
    problem = device_problem(device, name)
    if problem is not None:
        raise ValueError(problem)
    return torch.device(device)


# ------------------------------------------------------------ estimator parameters
def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


class Spec:
    """The type and range of one parameter: ``spec.check(value, name)`` raises a clear error or returns."""

    none_ok = False

    def check(self, value, name: str) -> None:
        if value is None and self.none_ok:
            return
        self._check(value, name)

    def _check(self, value, name: str) -> None:  # pragma: no cover - every spec overrides it
        raise NotImplementedError

    def _or_none(self) -> str:
        return " or None" if self.none_ok else ""


class Int(Spec):
    """An integer (never a bool, unless ``bool_ok``) of at least ``min``."""

    def __init__(self, min: int = 0, none_ok: bool = False, bool_ok: bool = False):
        self.min, self.none_ok, self.bool_ok = min, none_ok, bool_ok

    def _check(self, value, name):
        ok = _is_int(value) or (self.bool_ok and isinstance(value, (bool, np.bool_)))
        if not (ok and value >= self.min):
            raise ValueError(f"{name} must be an integer >= {self.min}{self._or_none()}, got {value!r}")


class Real(Spec):
    """A finite real number (not a bool) in [low, high]; ``low_open``/``high_open`` exclude the ends."""

    def __init__(self, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
                 high_open: bool = False, none_ok: bool = False):
        self.low, self.high, self.low_open, self.high_open, self.none_ok = low, high, low_open, high_open, none_ok

    def _check(self, value, name):
        ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(float(value))
        if ok:
            v = float(value)
            ok = (v > self.low if self.low_open else v >= self.low) and (v < self.high if self.high_open else v <= self.high)
        if not ok:
            lo = "(" if self.low_open or self.low == -math.inf else "["
            hi = ")" if self.high_open or self.high == math.inf else "]"
            raise ValueError(f"{name} must be a number in {lo}{self.low}, {self.high}{hi}{self._or_none()}, got {value!r}")


class Bool(Spec):
    """True or False (NumPy booleans too)."""

    def _check(self, value, name):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {value!r}")


class OneOf(Spec):
    """One of the named ``choices``, or a non-string value described by ``other``.

    ``instances``: the types such a value must have (a ``TypeError`` otherwise); ``object`` accepts
    any value (then checked where it is used, e.g. an expert instance or an (n, K) array).
    """

    def __init__(self, *choices, other: str = "", instances: tuple = (), none_ok: bool = False):
        self.choices, self.other, self.instances, self.none_ok = choices, other, tuple(instances), none_ok

    def _text(self) -> str:
        names = [repr(c) for c in self.choices]
        listed = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
        if self.other:
            listed = ", ".join(names) + " or " + self.other
        return f"one of {listed}{self._or_none()}" if len(names) > 1 or self.other else f"{listed}{self._or_none()}"

    def _check(self, value, name):
        if isinstance(value, str) or not self.instances:
            if not (isinstance(value, str) and value in self.choices) and not _listed(value, self.choices):
                raise ValueError(f"{name} must be {self._text()}, got {value!r}")
        elif not isinstance(value, self.instances):
            raise TypeError(f"{name} must be {self._text()}, got a {type(value).__name__}")


class Families(OneOf):
    """An expert family: one of the ``choices``, a non-empty list of them (one per expert), or an instance."""

    def _check(self, value, name):
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"{name} must be a family name or a list of one family name per expert, got an empty list")
            for i, v in enumerate(value):
                if not (isinstance(v, str) and v in self.choices):
                    listed = ", ".join(repr(c) for c in self.choices)
                    raise ValueError(f"{name}[{i}] must be one of {listed}, got {v!r}")
            return
        super()._check(value, name)


def _listed(value, choices) -> bool:
    try:
        return not isinstance(value, str) and value in choices
    except (TypeError, ValueError):  # an array compared with strings
        return False


class Sizes(Spec):
    """Hidden layer sizes: a positive int or a sequence of them."""

    def _check(self, value, name):
        sizes = (value,) if isinstance(value, numbers.Integral) else value
        try:
            sizes = tuple(sizes)
        except TypeError:
            raise TypeError(f"{name} must be a tuple of positive ints, got {value!r}") from None
        if not all(_is_int(h) and h >= 1 for h in sizes):
            raise ValueError(f"{name} must hold positive integers, got {value!r}")


class Columns(Spec):
    """Columns of X: None (all), one index or name, or a non-empty sequence of them (resolved at fit time).

    ``empty_ok``: an empty sequence is allowed too (``expert_features=[]``: experts without inputs).
    """

    none_ok = True

    def __init__(self, empty_ok: bool = False):
        self.empty_ok = empty_ok

    def _check(self, value, name):
        items = [value] if isinstance(value, (str, numbers.Integral)) else value
        try:
            items = list(items)
        except TypeError:
            raise TypeError(f"{name} must be None, a column index or name, or a list of them, got {value!r}") from None
        if not items and not self.empty_ok:
            raise ValueError(f"{name} must select at least one column, got an empty list")
        for it in items:
            if not (isinstance(it, str) or _is_int(it)):
                raise TypeError(f"{name} must hold column indices or names, got {it!r}")


class Branching(Spec):
    """Children per node: an int >= 1, or a non-empty sequence of them (one per level)."""

    def _check(self, value, name):
        if _is_int(value):
            ok = value >= 1
        else:
            try:
                levels = list(value)
            except TypeError:
                raise TypeError(f"{name} must be an int or a sequence of ints (one per level), got {value!r}") from None
            ok = bool(levels) and all(_is_int(b) and b >= 1 for b in levels)
        if not ok:
            raise ValueError(f"{name} must be an int >= 1 or a non-empty sequence of them, got {value!r}")


class Seed(Spec):
    """A source of randomness: None, a non-negative int, or a NumPy Generator, RandomState or SeedSequence."""

    none_ok = True

    def _check(self, value, name):
        kinds = (np.random.Generator, np.random.RandomState, np.random.SeedSequence, np.random.BitGenerator)
        if not ((_is_int(value) and value >= 0) or isinstance(value, kinds)):
            raise ValueError(f"{name} must be None, a non-negative int or a NumPy Generator or RandomState, got {value!r}")


class FormulaText(Spec):
    """None, or a formula string: two-sided (``"y ~ x"``) or one-sided (``"~ x"``)."""

    def __init__(self, two_sided: bool):
        self.two_sided = two_sided

    def _check(self, value, name):
        if value is None:
            return
        example = "'y ~ x + I(x**2)'" if self.two_sided else "'~ x'"
        if not isinstance(value, str) or "~" not in value:
            raise ValueError(f"{name} must be None or a formula string such as {example}, got {value!r}")
        has_lhs = bool(value.split("~", 1)[0].strip())
        if has_lhs != self.two_sided:
            want = "name the target on the left of '~'" if self.two_sided else "have nothing left of '~' " \
                "(the target comes from formula)"
            raise ValueError(f"{name} must {want}, e.g. {example}; got {value!r}")


class Device(Spec):
    """A device this machine has (see :func:`device_problem`)."""

    def _check(self, value, name):
        check_device(value, name)


class Dtype(Spec):
    """A floating dtype (see :func:`torch_dtype`)."""

    def _check(self, value, name):
        torch_dtype(value)


# Every estimator parameter of one meaning across the estimators, declared once. An estimator adds
# only what needs its own layer's knowledge (its expert names, gate classes, activations) and the
# few whose range is its own (``init``, ``validation_fraction``): see each estimator's
# ``_parameter_specs``.
PARAMETERS: dict[str, Spec] = {
    # sizes of the model
    "n_experts": Int(1),
    "n_components": Int(1),
    "depth": Int(1, none_ok=True),
    "branching": Branching(),
    "max_leaves": Int(1),
    "hidden_layer_sizes": Sizes(),
    "covariance": OneOf("full", "diag", "spherical", "tied", "tied_diag", "tied_spherical"),
    "gate_features": Columns(),
    "expert_features": Columns(empty_ok=True),
    "shared_features": Columns(),
    "point_mass_value": Real(),
    "missing": OneOf("error", "drop"),
    "formula": FormulaText(two_sided=True),
    "gate_formula": FormulaText(two_sided=False),
    # training
    "fit_method": OneOf("em", "gradient"),
    "optimizer": OneOf("adam", "lbfgs"),
    "grow": Bool(),
    "warm_start": Bool(),
    "max_iter": Int(1),
    "max_epochs": Int(1),
    "n_init": Int(1),
    "batch_size": Int(1),
    "patience": Int(1),
    "tol": Real(0.0),
    "min_gain": Real(0.0),
    "learning_rate": Real(0.0, low_open=True, none_ok=True),
    "weight_decay": Real(0.0),
    "input_noise": Real(0.0),
    "target_noise": Real(0.0),
    "early_stopping": Bool(),
    "keep": OneOf("best", "recent"),
    "reseed_dead": Bool(),
    # regularisation and floors
    "alpha": Real(0.0),
    "var_floor": Real(0.0, low_open=True),
    "scale_floor": Real(0.0, low_open=True),
    "prune_threshold": Real(0.0, 1.0, high_open=True, none_ok=True),
    # where and how
    "random_state": Seed(),
    "device": Device(),
    "dtype": Dtype(),
    "verbose": Int(0, bool_ok=True),
    # what fit computes beyond the model
    "compute_se": OneOf("auto", True, False),
}


def check_params(params: dict, specs: dict | None = None) -> None:
    """Check every parameter by its spec: the estimator's own ``specs`` first, else :data:`PARAMETERS`.

    Raises
    ------
    ValueError, TypeError
        The first parameter (in the order given) that breaks its spec, named in the message.
    KeyError
        A parameter without a spec (a programming error of the estimator, never of its user).
    """
    own = specs or {}
    for name, value in params.items():
        spec = own.get(name, PARAMETERS.get(name))
        if spec is None:
            raise KeyError(f"no spec declares the parameter {name!r}; add it to moekit._validation.PARAMETERS")
        spec.check(value, name)
