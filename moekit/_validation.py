"""Input checks with errors that name the argument, what was expected, what arrived and the fix.

The caller's arrays are never modified: every function returns new tensors.
"""

from __future__ import annotations

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


def as_tensor(a, name: str, dtype: torch.dtype | None, device=None, ndims=(1, 2), integer_ok: bool = False) -> torch.Tensor:
    """Copy ``a`` (array-like, DataFrame, tensor) into a new tensor and check it.

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
    if not keep_int and dtype is not None:
        t = t.to(dtype)
    if device is not None:
        t = t.to(device)
    if t.dim() not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name} must be {want}, got a {t.dim()}-D array of shape {tuple(t.shape)}; reshape it")
    if t.shape[0] == 0:
        raise ValueError(f"{name} has no rows (shape {tuple(t.shape)}); pass at least one sample")
    if t.is_floating_point() and not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{name} contains {bad} NaN or infinite value(s); drop or impute them first "
            "(e.g. sklearn.impute.SimpleImputer)"
        )
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
    return w


def check_fit_inputs(x, y, sample_weight, dtype: torch.dtype, device=None):
    """Tensors for a training function: x (n, d), y (n,) or (n, d_y), weights (n,)."""
    x = as_tensor(x, "x", dtype, device, ndims=(2,))
    y = as_tensor(y, "y", dtype, device, ndims=(1, 2), integer_ok=True)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}; they must have the same length")
    w = check_sample_weight(sample_weight, x.shape[0], x.dtype, x.device)
    return x, y, w


def check_int(value, name: str, minimum: int, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer (not a bool) >= ``minimum`` (or None, if allowed)."""
    if value is None and allow_none:
        return
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_real(value, name: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number (not a bool) in [low, high] ((low, high] if ``low_open``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and v <= high
    if not ok:
        lo = "(" if low_open else "["
        hi = "inf)" if high == math.inf else f"{high}]"
        raise ValueError(f"{name} must be a number in {lo}{low}, {hi}, got {value!r}")
