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
    Int(minimum, none_ok=allow_none).check(value, name)


def check_real(value, name: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number (not a bool) in [low, high] ((low, high] if ``low_open``)."""
    Real(low, high, low_open=low_open).check(value, name)


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
    """Columns of X: None (all), one index or name, or a non-empty sequence of them (resolved at fit time)."""

    none_ok = True

    def _check(self, value, name):
        items = [value] if isinstance(value, (str, numbers.Integral)) else value
        try:
            items = list(items)
        except TypeError:
            raise TypeError(f"{name} must be None, a column index or name, or a list of them, got {value!r}") from None
        if not items:
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
    "covariance": OneOf("full", "diag", "spherical"),
    "gate_features": Columns(),
    "expert_features": Columns(),
    # training
    "fit_method": OneOf("em", "gradient"),
    "optimizer": OneOf("adam", "lbfgs"),
    "grow": Bool(),
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
