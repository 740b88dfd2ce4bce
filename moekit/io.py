"""Safe model files: ``estimator.save(path)`` and ``moekit.load(path)``.

A moekit model file is a `safetensors <https://huggingface.co/docs/safetensors>`_
file: every tensor (the fitted model's ``state_dict`` and any numeric array
the estimator keeps) is stored as raw little-endian numbers, and everything
else (the estimator's class and parameters, its fitted attributes, the
model's structure, a format version, a checksum, optional user metadata)
is JSON in the file's ``__metadata__`` header.

Loading **never unpickles or executes anything from the file**: the JSON is
decoded with :func:`json.loads` into plain values, the tensors are read by the
safetensors parser, the estimator class is looked up in the table of
registered classes (never imported by a name taken from the file), the model is
rebuilt from the estimator's parameters and the stored structure, and the
tensors are copied into it with ``load_state_dict(strict=True)``.  The
rebuilt model is checked against the stored module tree (classes and
tensor shapes and dtypes), and a SHA-256 checksum over the configuration and
every tensor detects corruption, so a damaged file raises
:class:`ModelFileError` instead of giving silently different predictions.

Predictions of a loaded estimator are bit-identical to those of the saved one
(same dtype, same device, same numbers).

What cannot be stored: estimators whose experts or gate were given as
*instances* (for example a scikit-learn regressor as expert, or a custom
``torch.nn.Module``), because rebuilding them would need pickle.  Saving
such an estimator raises :class:`ModelFileError` naming the parameter.

This module is the file format only: it imports no estimator.  Estimator
classes register themselves (:func:`register_estimator`, called by the
``storable`` decorator of :mod:`moekit.estimators.base` when their module is
imported); :func:`moekit.load` imports moekit's estimators first, and
:func:`load` raises :class:`ModelFileError` naming a class that is not
registered.

Files written by moekit before 0.2.0 stored ``log_likelihood_`` as the mean
per unit weight; loading one moves that value to ``mean_log_likelihood_``
(and ``fit_result_.mean_log_likelihood``), sets the totals to NaN (those files
do not store the training weight) and says so in a warning.  Parameters an
estimator no longer has (the classifiers' ``covariance`` and ``var_floor``)
are ignored with a warning naming them.

Adding an estimator class
-------------------------
Register it with :func:`register_estimator`, giving a function
``build(est, structure) -> torch.nn.Module`` that rebuilds an *unfitted*
model of the right shape from the estimator (whose parameters and fitted
attributes are already restored) and an optional
``describe(est) -> dict`` that records whatever extra structure ``build``
needs (JSON values).

Examples
--------
>>> import os, tempfile
>>> import numpy as np
>>> import moekit
>>> from moekit import MoERegressor
>>> from moekit.datasets import load_tonedata
>>> d = load_tonedata()
>>> est = MoERegressor(n_experts=2, random_state=0).fit(d.data, d.target)
>>> path = os.path.join(tempfile.mkdtemp(), "tone.moekit")
>>> est.save(path)
>>> again = moekit.load(path)
>>> bool(np.array_equal(again.predict(d.data), est.predict(d.data)))
True
>>> read_info(path)["estimator"]
'MoERegressor'
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
import re
import struct
import tempfile
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from safetensors.torch import save as st_save
from sklearn.base import BaseEstimator
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from . import __version__
from ._validation import device_problem
from .training.grow import GrowResult
from .training.result import FitResult

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ModelFileError",
    "save",
    "load",
    "read_info",
    "register_estimator",
    "model_tree",
]

FORMAT = "moekit-model"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file cannot be written or read (not a moekit file, damaged, too new, not storable).

    A subclass of ``ValueError``; raised by :func:`save`, :func:`load` and
    :func:`read_info`.

    Parameters
    ----------
    message : str
        What is wrong, naming the file or the parameter that cannot be stored.

    Attributes
    ----------
    args : tuple
        ``(message,)``.

    Examples
    --------
    >>> import os, tempfile
    >>> import moekit
    >>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
    >>> with open(path, "w") as f:
    ...     _ = f.write("not a model")
    >>> try:
    ...     moekit.load(path)
    ... except ModelFileError as e:
    ...     print("not a moekit model file" in str(e), isinstance(e, ValueError))
    True True
    """


# ------------------------------------------------------------------ registry
@dataclass(frozen=True)
class _Entry:
    cls: type
    build: Callable
    describe: Callable | None
    removed_parameters: tuple


_REGISTRY: dict[str, _Entry] = {}


def register_estimator(cls: type, build: Callable, describe: Callable | None = None, name: str | None = None,
                       removed_parameters: tuple = ()) -> None:
    """Make an estimator class storable.

    moekit's own estimators register themselves when their module is
    imported (:func:`moekit.load` imports them); io itself imports none.

    Parameters
    ----------
    cls : type
        The estimator class (its ``get_params`` must hold JSON-able values).
    build : callable
        ``build(est, structure) -> torch.nn.Module``: an unfitted model with the
        same module tree and tensor shapes as ``est.model_`` had when saved.
        ``est`` already carries its parameters and fitted attributes.
    describe : callable, optional
        ``describe(est) -> dict`` of JSON values stored as ``structure``.
    name : str, optional
        Name written in the file (default ``cls.__name__``).
    removed_parameters : tuple of str, optional
        Parameters the class no longer has that files written by earlier
        versions may set: ignored on loading, with a warning naming them.

    Shapes
    ------
    No arrays; the module returned by ``build`` must have the same tensor
    shapes as the saved ``est.model_`` (e.g. K experts of d_x inputs), since
    the stored tensors are copied into it with ``load_state_dict(strict=True)``.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import moekit
    >>> from moekit import LinearGaussianExpert, MixtureOfExperts, MoERegressor, SoftmaxGate
    >>> class LineRegressor(MoERegressor):
    ...     pass
    >>> def build(est, structure):  # an unfitted model of the fitted one's shape
    ...     d = est.n_features_in_
    ...     return MixtureOfExperts(SoftmaxGate(d, 1), LinearGaussianExpert(d, n_experts=1))
    >>> register_estimator(LineRegressor, build)
    >>> X = np.linspace(-1, 1, 20)[:, None]
    >>> est = LineRegressor(n_experts=1).fit(X, 2 * X[:, 0] + 1)
    >>> path = os.path.join(tempfile.mkdtemp(), "line.moekit")
    >>> est.save(path)
    >>> type(moekit.load(path)).__name__
    'LineRegressor'
    """
    _REGISTRY[name or cls.__name__] = _Entry(cls, build, describe, tuple(removed_parameters))


# ------------------------------------------------------ encoding of values
class _Encoder:
    """JSON-encodes plain values; numeric arrays and tensors go to the tensor table."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.tensors: dict[str, torch.Tensor] = {}

    def _tensor(self, t: torch.Tensor) -> str:
        name = f"{self.prefix}{len(self.tensors)}"
        self.tensors[name] = t.detach().to("cpu").contiguous().clone()
        return name

    def encode(self, v, where: str):
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else {"__float__": repr(v)}
        if isinstance(v, np.generic):
            if isinstance(v, (np.bool_, np.integer, np.floating)):
                return {"__npscalar__": v.dtype.str, "value": self.encode(v.item(), where)}
            if isinstance(v, np.str_):
                return str(v)
        if isinstance(v, tuple):
            return {"__tuple__": [self.encode(x, f"{where}[{i}]") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [self.encode(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, dict):
            for k in v:
                if not isinstance(k, str):
                    raise ModelFileError(f"cannot store {where}: dictionary keys must be strings, got {k!r}")
            return {"__dict__": {k: self.encode(x, f"{where}[{k!r}]") for k, x in v.items()}}
        if isinstance(v, torch.Tensor):
            return {"__tensor__": self._tensor(v)}
        if isinstance(v, np.ndarray):
            if v.dtype.kind in "biuf" and v.dtype.itemsize <= 8:
                try:
                    t = torch.from_numpy(np.ascontiguousarray(v).copy())
                except TypeError:
                    raise ModelFileError(f"cannot store {where}: arrays of dtype {v.dtype} are not supported") from None
                return {"__array__": self._tensor(t)}
            if v.dtype.kind in "UO":
                flat = v.reshape(-1).tolist()
                for x in flat:
                    if not (x is None or isinstance(x, (str, bool, int, float))):
                        raise ModelFileError(
                            f"cannot store {where}: an object array may hold only strings and numbers, "
                            f"got a {type(x).__name__}"
                        )
                return {"__strarray__": flat, "shape": list(v.shape), "kind": v.dtype.kind}
            raise ModelFileError(f"cannot store {where}: arrays of dtype {v.dtype} are not supported")
        name = type(v).__name__
        if dataclasses.is_dataclass(v) and _result_classes().get(name) is type(v):
            fields = {f.name: getattr(v, f.name) for f in dataclasses.fields(v) if f.name != "model"}
            return {"__result__": name, "fields": self.encode(fields, where)}
        if isinstance(v, torch.dtype):
            return {"__dtype__": str(v).replace("torch.", "")}
        raise ModelFileError(
            f"cannot store {where} (a {type(v).__module__}.{type(v).__name__}) without pickle; "
            "only numbers, strings, lists, tuples, dicts, numpy arrays and tensors can be stored"
        )


_NP_DTYPES = {"<f8", "<f4", "<f2", "<i8", "<i4", "<i2", "|i1", "|u1", "|b1", "<u2", "<u4", "<u8"}
_TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "int64": torch.int64}
_MAX_NDIM = 32  # numpy's own limit is 64; no moekit array has more than a handful of axes
# The keys each tagged value may have (a tagged value with any other key is not one moekit wrote).
_TAG_KEYS = {
    "__float__": {"__float__"},
    "__npscalar__": {"__npscalar__", "value"},
    "__tuple__": {"__tuple__"},
    "__dict__": {"__dict__"},
    "__tensor__": {"__tensor__"},
    "__array__": {"__array__"},
    "__strarray__": {"__strarray__", "shape", "kind"},
    "__result__": {"__result__", "fields"},
    "__dtype__": {"__dtype__"},
}


def _tag(v: dict, where: str) -> str:
    """The tag of an encoded value: the one key of ``_TAG_KEYS`` it has, and no key another tag does not allow."""
    tags = [k for k in v if k in _TAG_KEYS]
    if len(tags) != 1:
        raise ModelFileError(f"damaged model file: unexpected value at {where}")
    extra = sorted(set(v) - _TAG_KEYS[tags[0]])
    if extra:
        raise ModelFileError(f"damaged model file: unexpected key(s) {extra[:3]} in the {tags[0]} value at {where}")
    return tags[0]


def _shape(v, where: str, problem: str = "damaged model file") -> tuple:
    """A stored array shape: a list of at most _MAX_NDIM non-negative integers."""
    if not (isinstance(v, list) and len(v) <= _MAX_NDIM
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in v)):
        raise ModelFileError(
            f"{problem}: bad array shape {_short(v)} at {where} "
            f"(expected a list of at most {_MAX_NDIM} non-negative integers)"
        )
    return tuple(v)


def _short(v, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def _decode(v, tensors: dict, where: str):
    if v is None or isinstance(v, (bool, str, int, float)):
        return v
    if isinstance(v, list):
        return [_decode(x, tensors, f"{where}[{i}]") for i, x in enumerate(v)]
    if not isinstance(v, dict) or len(v) == 0:
        raise ModelFileError(f"damaged model file: unexpected value at {where}")
    tag = _tag(v, where)
    if tag == "__float__":
        s = v["__float__"]
        if s not in ("nan", "inf", "-inf"):
            raise ModelFileError(f"damaged model file: bad float at {where}")
        return float(s)
    if tag == "__npscalar__":
        code, x = v["__npscalar__"], v.get("value")
        if not isinstance(code, str) or code not in _NP_DTYPES:
            raise ModelFileError(f"damaged model file: unsupported scalar type at {where}")
        if isinstance(x, dict):
            x = _decode(x, tensors, where)
        if not isinstance(x, (bool, int, float)):
            raise ModelFileError(f"damaged model file: the {code} scalar at {where} holds {_short(x)}, not a number")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy warns (and wraps) on some out-of-range conversions
            try:
                out = np.dtype(code).type(x)
            except (OverflowError, ValueError, TypeError, RuntimeWarning, DeprecationWarning):
                raise ModelFileError(f"damaged model file: {_short(x)} at {where} does not fit a {code} scalar") from None
        if np.dtype(code).kind in "iub" and out != x:
            raise ModelFileError(f"damaged model file: {_short(x)} at {where} does not fit a {code} scalar")
        return out
    if tag == "__tuple__":
        return tuple(_decode(x, tensors, f"{where}[{i}]") for i, x in enumerate(_expect(v["__tuple__"], list, where)))
    if tag == "__dict__":
        d = _expect(v["__dict__"], dict, where)
        return {str(k): _decode(x, tensors, f"{where}[{k!r}]") for k, x in d.items()}
    if tag in ("__tensor__", "__array__"):
        key = v[tag]
        if not isinstance(key, str) or key not in tensors:
            raise ModelFileError(f"damaged model file: tensor {_short(key)} referenced at {where} is missing")
        t = tensors[key]
        if t is None:  # read_info: the values are not read
            return None
        if tag == "__tensor__":
            return t.clone()
        if t.dtype not in _NUMPY_SAFE:
            raise ModelFileError(f"damaged model file: the array at {where} is {t.dtype}, which numpy cannot hold")
        return t.numpy().copy()
    if tag == "__strarray__":
        flat = _expect(v["__strarray__"], list, where)
        shape = _shape(v.get("shape"), where)
        kind = v.get("kind")
        if kind not in ("U", "O"):
            raise ModelFileError(f"damaged model file: bad string array kind {_short(kind)} at {where} (expected 'U' or 'O')")
        if math.prod(shape) != len(flat):
            raise ModelFileError(
                f"damaged model file: the string array at {where} has {len(flat)} entries but its shape "
                f"{list(shape)} needs {math.prod(shape)}"
            )
        for x in flat:
            if not (x is None or isinstance(x, (str, bool, int, float))):
                raise ModelFileError(f"damaged model file: bad string array at {where}")
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        if kind == "U":
            arr = arr.astype(str)
        return arr.reshape(shape)
    if tag == "__result__":
        cls = _result_classes().get(v["__result__"]) if isinstance(v["__result__"], str) else None
        if cls is None:
            raise ModelFileError(f"damaged model file: unknown result type {_short(v['__result__'])} at {where}")
        fields = _decode(v.get("fields"), tensors, where)
        if not isinstance(fields, dict):
            raise ModelFileError(f"damaged model file: the {cls.__name__} at {where} has no fields")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(model=None, **{k: x for k, x in fields.items() if k in known and k != "model"})
        except TypeError as e:
            raise ModelFileError(f"damaged model file: bad {cls.__name__} at {where} ({e})") from None
    if not isinstance(v["__dtype__"], str) or v["__dtype__"] not in _TORCH_DTYPES:
        raise ModelFileError(f"damaged model file: unknown dtype {_short(v['__dtype__'])} at {where}")
    return _TORCH_DTYPES[v["__dtype__"]]


def _decode_file(path, v, tensors: dict, where: str):
    """:func:`_decode` for a value of the file ``path``: its errors name the file."""
    try:
        return _decode(v, tensors, where)
    except ModelFileError as e:
        raise ModelFileError(str(e).replace("damaged model file:", f"damaged model file '{path}':", 1)) from None


def _expect(v, typ, where):
    if not isinstance(v, typ):
        raise ModelFileError(f"damaged model file: expected a {typ.__name__} at {where}")
    return v


# -------------------------------------------------------------- structure
_SIMPLE = (bool, int, float, str, type(None))


def _simple(v) -> bool:
    if isinstance(v, _SIMPLE):
        return not (isinstance(v, float) and not math.isfinite(v))
    if isinstance(v, (list, tuple)):
        return all(_simple(x) for x in v)
    return False


def _module_class(m: nn.Module) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


def model_tree(model: nn.Module) -> list[dict]:
    """The module tree of a model as JSON values: path, class and plain attributes of every module.

    Plain attributes (numbers, strings, booleans and lists of them, e.g. a
    variance floor) are part of a model's behaviour without being tensors;
    they are stored so that a loaded model computes exactly what the saved one did.

    Parameters
    ----------
    model : torch.nn.Module
        E.g. a fitted estimator's ``model_``.

    Returns
    -------
    list of dict
        One entry per module in ``model.named_modules()`` order (the model
        itself first, path ``""``): ``path`` (dotted name), ``class``
        (module and qualified class name) and ``attrs`` (dict of plain
        attributes).

    Shapes
    ------
    No arrays in or out: tensors (parameters and buffers) are left out,
    and tuples among the attributes become lists.

    Examples
    --------
    >>> from moekit import MixtureOfExperts, SoftmaxGate, LinearGaussianExpert
    >>> tree = model_tree(MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_experts=2)))
    >>> [(n["path"], n["class"].rsplit(".", 1)[1]) for n in tree]
    [('', 'MixtureOfExperts'), ('gate', 'SoftmaxGate'), ('experts', 'LinearGaussianExpert')]
    """
    out = []
    for path, m in model.named_modules():
        attrs = {}
        for k, v in vars(m).items():
            if k.startswith("_") or k in m._parameters or k in m._buffers or k in m._modules:
                continue
            if _simple(v):
                attrs[k] = list(v) if isinstance(v, tuple) else v
        out.append({"path": path, "class": _module_class(m), "attrs": attrs})
    return out


def _check_storable_model(model: nn.Module, what: str) -> None:
    for path, m in model.named_modules():
        mod = type(m).__module__
        name = f"'{path}'" if path else "the model"
        if type(m).__name__ == "SklearnExpert":
            raise ModelFileError(
                f"cannot save {what}: {name} is a scikit-learn expert, which can only be stored with pickle. "
                "Use a named expert (expert='linear', 'mlp', ...) to save the model, or persist it with joblib "
                "(only ever load such files from sources you trust)"
            )
        if not (mod.startswith("moekit.") or mod.startswith("torch.nn.")):
            raise ModelFileError(
                f"cannot save {what}: {name} is a {type(m).__name__} from '{mod}', which moekit cannot rebuild "
                "without pickle; use moekit's built-in experts and gates, or save model_.state_dict() yourself"
            )
        for k, v in vars(m).items():
            if isinstance(v, torch.Tensor) and not k.startswith("_"):
                raise ModelFileError(
                    f"cannot save {what}: {name} holds the tensor attribute '{k}' that is neither a "
                    "parameter nor a buffer, so it is not part of its state_dict"
                )


def _check_params(params: dict, what: str) -> dict:
    out = {}
    for k, v in params.items():
        if isinstance(v, (nn.Module, BaseEstimator)) or (hasattr(v, "fit") and hasattr(v, "predict")):
            raise ModelFileError(
                f"cannot save {what}: parameter {k}= is an instance ({type(v).__name__}), which can only be "
                f"stored with pickle. Use a named {k} (e.g. {k}='linear') to save the model"
            )
        if k == "random_state" and v is not None and not isinstance(v, (int, np.integer)):
            warnings.warn(
                f"random_state (a {type(v).__name__}) is not stored in the model file; the loaded estimator "
                "has random_state=None (it only matters when the estimator is fitted again)",
                UserWarning,
                stacklevel=4,
            )
            v = None
        out[k] = v
    return out


# ------------------------------------------------------------- checksum
def _checksum(config: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    h.update(config.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(b"\0" + name.encode("utf-8") + b"\0" + str(t.dtype).encode() + repr(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ------------------------------------------------------------------ save
def save(estimator, path, metadata: dict | None = None) -> None:
    """Write a fitted estimator to ``path`` (safetensors + JSON, never pickle).

    Parameters
    ----------
    estimator : fitted moekit estimator
        ``MoERegressor``, ``MoEClassifier`` (and HME / MDN estimators where
        present) whose experts and gate were given by name.
    path : str or os.PathLike
        Written atomically (a temporary file in the same folder, then renamed).
    metadata : dict, optional
        Extra JSON-able information to keep with the model (the command line
        stores its column encoding and a training-data summary here under
        ``"cli"``, a key whose content is checked when saving and loading);
        read it back with :func:`read_info`.

    Raises
    ------
    ModelFileError
        The estimator is not fitted, or holds something that cannot be
        stored without pickle (an expert or gate instance, a scikit-learn expert).

    Shapes
    ------
    No array arguments; every tensor of the model's ``state_dict`` and every
    numeric fitted array is stored with its shape and dtype (listed by
    :func:`read_info` under ``state_dict``).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from moekit import MoERegressor
    >>> X = np.linspace(-1, 1, 20)[:, None]
    >>> est = MoERegressor(n_experts=1).fit(X, 2 * X[:, 0] + 1)
    >>> path = os.path.join(tempfile.mkdtemp(), "line.moekit")
    >>> save(est, path, metadata={"note": "a straight line"})
    >>> read_info(path)["metadata"]
    {'note': 'a straight line'}
    """
    name = type(estimator).__name__
    entry = _REGISTRY.get(name)
    if entry is None or entry.cls is not type(estimator):
        known = ", ".join(sorted(_REGISTRY))
        raise ModelFileError(f"cannot save a {name}: moekit model files hold one of {known}")
    model = getattr(estimator, "model_", None)
    if not isinstance(model, nn.Module):
        raise ModelFileError(f"cannot save this {name}: it is not fitted yet; call fit(X, y) first")
    what = f"this {name}"
    params = _check_params(estimator.get_params(deep=False), what)
    _check_storable_model(model, what)

    enc = _Encoder("value.")
    enc_params = {k: enc.encode(v, f"parameter {k}") for k, v in params.items()}
    fitted = {}
    for k, v in vars(estimator).items():
        if k in params or k == "model_" or k.startswith("__"):
            continue
        fitted[k] = enc.encode(v, f"attribute {k}")
    _check_cli_metadata(f"cannot save {what}", metadata)
    structure = entry.describe(estimator) if entry.describe is not None else {}
    enc_structure = enc.encode(structure, "structure")
    enc_metadata = enc.encode(metadata if metadata is not None else {}, "metadata")
    tensors = dict(enc.tensors)
    for k, t in model.state_dict().items():
        tensors[f"model.{k}"] = t.detach().to("cpu").contiguous().clone()
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "moekit_version": __version__,
        "torch_version": torch.__version__,
        "estimator": name,
        "params": enc_params,
        "fitted": fitted,
        "structure": enc_structure,
        "tree": model_tree(model),
        "state_dict": {k[len("model."):]: [str(t.dtype).replace("torch.", ""), list(t.shape)]
                       for k, t in tensors.items() if k.startswith("model.")},
        "metadata": enc_metadata,
    }
    cfg = json.dumps(config, sort_keys=True, allow_nan=False)
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": cfg, "checksum": _checksum(cfg, tensors)}
    blob = st_save(tensors, metadata=header)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".moekit-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as an ordinary new file (mkstemp makes it private)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------ load
# Bounds on what a file may declare, checked before anything it declares is read, allocated or built.
_MAX_HEADER = 16 * 1024 * 1024  # a moekit header is kilobytes (a wide table's column names: a few hundred)
_MAX_DEPTH = 256  # JSON nesting; a tree of the deepest HME moekit builds (64 levels) nests about 200
_HEADER_KEYS = {"format", "format_version", "config", "checksum"}
_CONFIG_KEYS = {"format", "format_version", "moekit_version", "torch_version", "estimator", "params", "fitted",
                "structure", "tree", "state_dict", "metadata"}
# safetensors dtype codes -> (little-endian numpy dtype of the stored bytes, torch dtype)
_ST_DTYPES = {
    "F64": ("<f8", torch.float64), "F32": ("<f4", torch.float32), "F16": ("<f2", torch.float16),
    "BF16": ("<u2", torch.bfloat16), "I64": ("<i8", torch.int64), "I32": ("<i4", torch.int32),
    "I16": ("<i2", torch.int16), "I8": ("|i1", torch.int8), "U8": ("|u1", torch.uint8), "BOOL": ("|u1", torch.bool),
    "U16": ("<u2", torch.uint16), "U32": ("<u4", torch.uint32), "U64": ("<u8", torch.uint64),
}
_NUMPY_SAFE = {t for code, (_, t) in _ST_DTYPES.items() if code != "BF16"}
_TORCH_NAMES = {str(t).replace("torch.", ""): t for _, t in _ST_DTYPES.values()}
# building a model may allocate this many bytes beyond a small multiple of what the file stores
_BUILD_SLACK = 64 * 1024 * 1024
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')


@dataclass(frozen=True)
class _Stored:
    """One tensor of the file, as its header declares it (nothing read yet)."""

    dtype: str  # safetensors code, e.g. "F64"
    shape: tuple
    begin: int  # offset of its bytes after the header
    nbytes: int


@dataclass(frozen=True)
class _Header:
    path: str
    size: int  # of the file, in bytes
    data_start: int  # offset of the first tensor byte
    meta: dict  # the "__metadata__" of the safetensors header
    index: dict  # tensor name -> _Stored


def _json(raw, what: str, path: str):
    """Decode bounded JSON: at most _MAX_DEPTH deep, no duplicate keys, no NaN/Infinity literals (moekit writes none)."""
    text = raw
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ModelFileError(f"'{path}' is not a moekit model file ({what} is not UTF-8 text: byte {e.start})") from None
    body = _STRING.sub(b"", text.encode("utf-8") if isinstance(raw, str) else raw)
    codes = np.frombuffer(body, dtype=np.uint8)
    steps = np.zeros(len(codes), dtype=np.int32)
    steps[(codes == ord("{")) | (codes == ord("["))] = 1
    steps[(codes == ord("}")) | (codes == ord("]"))] = -1
    depth = int(np.cumsum(steps).max()) if len(steps) else 0
    if depth > _MAX_DEPTH:
        raise ModelFileError(
            f"damaged model file '{path}': {what} nests {depth} levels deep; moekit writes at most {_MAX_DEPTH}"
        )

    def pairs(items):
        out = {}
        for k, v in items:
            if k in out:
                raise ModelFileError(f"damaged model file '{path}': {what} sets the key {_short(k)} twice")
            out[k] = v
        return out

    def constant(name):
        raise ModelFileError(f"damaged model file '{path}': {what} holds {name}, which is not JSON (moekit never writes it)")

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, ModelFileError):
            raise
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ModelFileError(f"'{path}' is not a moekit model file ({what} is not valid JSON: {reason})") from None


def _read_header(path) -> _Header:
    """The safetensors header of ``path`` and its moekit metadata; the tensor bytes are not read.

    The 8-byte length prefix is checked against the file's size and ``_MAX_HEADER`` before the
    header is read, and every tensor the header declares must lie inside the file, end to end.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file '{path}' does not exist; check the path")
    if os.path.isdir(path):
        raise ModelFileError(f"'{path}' is a folder, not a moekit model file")
    not_ours = f"'{path}' is not a moekit model file"
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ModelFileError(f"{not_ours} ({len(prefix)} bytes: empty or truncated)")
        (n,) = struct.unpack("<Q", prefix)
        first = f.read(1)
        if n < 2 or first != b"{":
            raise ModelFileError(f"{not_ours} (it does not start with a safetensors header; moekit files never hold pickle)")
        if n > _MAX_HEADER:
            raise ModelFileError(
                f"{not_ours} (its 8-byte prefix declares a {n}-byte header; moekit headers are under {_MAX_HEADER} bytes)"
            )
        if 8 + n > size:
            raise ModelFileError(f"'{path}' is truncated: its header needs {8 + n} bytes but the file has {size}")
        raw = first + f.read(n - 1)
    if len(raw) < n:
        raise ModelFileError(f"'{path}' is truncated: its header needs {8 + n} bytes but the file has {8 + len(raw)}")
    header = _json(raw, "its header", path)
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{not_ours} (a safetensors file without moekit's header; was it written by another tool?)")
    version = meta.get("format_version")
    try:
        version = int(version) if isinstance(version, str) and len(version) < 10 else int("x")
    except (TypeError, ValueError):
        raise ModelFileError(f"damaged model file '{path}': bad format version {_short(version)}") from None
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"'{path}' uses model-file format version {version}, newer than this moekit {__version__} reads "
            f"(up to {FORMAT_VERSION}); upgrade moekit to load it"
        )
    if version < 1:
        raise ModelFileError(f"damaged model file '{path}': bad format version {version}")
    extra = sorted(set(meta) - _HEADER_KEYS)
    if extra:
        raise ModelFileError(f"damaged model file '{path}': unexpected header field(s) {extra[:3]}")
    if not all(isinstance(v, str) for v in meta.values()):
        raise ModelFileError(f"damaged model file '{path}': its header fields must be strings")
    index = _tensor_index(path, header, size - 8 - n)
    return _Header(path, size, 8 + n, meta, index)


def _tensor_index(path, header: dict, data_size: int) -> dict:
    """Check the tensors a safetensors header declares: known dtypes, shapes, byte counts, tiling the data exactly."""
    index = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        where = f"damaged model file '{path}': tensor {_short(name)}"
        if not (isinstance(spec, dict) and set(spec) == {"dtype", "shape", "data_offsets"}):
            raise ModelFileError(f"{where} is not described by dtype, shape and data_offsets")
        code = spec["dtype"]
        if not isinstance(code, str) or code not in _ST_DTYPES:
            raise ModelFileError(f"{where} has dtype {_short(code)}; moekit files hold {', '.join(_ST_DTYPES)}")
        shape = _shape(spec["shape"], f"tensor {_short(name)}", f"damaged model file '{path}'")
        offs = spec["data_offsets"]
        if not (isinstance(offs, list) and len(offs) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offs) and offs[0] <= offs[1]):
            raise ModelFileError(f"{where} has bad data offsets {_short(offs)} (expected [begin, end], 0 <= begin <= end)")
        if offs[1] > data_size:
            raise ModelFileError(
                f"'{path}' is truncated or damaged: tensor {_short(name)} has data offsets {offs} beyond the file's "
                f"{data_size} data bytes"
            )
        need = math.prod(shape) * np.dtype(_ST_DTYPES[code][0]).itemsize
        if offs[1] - offs[0] != need:
            raise ModelFileError(
                f"{where} declares shape {list(shape)} of {code} ({need} bytes) but stores {offs[1] - offs[0]} bytes"
            )
        index[name] = _Stored(code, shape, offs[0], need)
    end = 0
    for t in sorted(index.values(), key=lambda t: (t.begin, t.nbytes)):
        if t.begin != end:
            raise ModelFileError(f"damaged model file '{path}': its tensors overlap or leave gaps in its data")
        end = t.begin + t.nbytes
    if end != data_size:
        raise ModelFileError(
            f"'{path}' is truncated or damaged: its tensors need {end} data bytes but the file holds {data_size}"
        )
    return index


def _read_tensors(header: _Header) -> dict:
    """The tensors' values (read one by one; together they are the rest of the file, no more)."""
    out = {}
    with open(header.path, "rb") as f:
        for name, t in header.index.items():
            f.seek(header.data_start + t.begin)
            buf = f.read(t.nbytes)
            if len(buf) != t.nbytes:
                raise ModelFileError(f"'{header.path}' is truncated: tensor {_short(name)} is cut short")
            np_code = _ST_DTYPES[t.dtype][0]
            arr = np.frombuffer(buf, dtype=np_code).astype(np.dtype(np_code).newbyteorder("="), copy=True)
            if t.dtype == "BOOL":
                if arr.size and arr.max() > 1:
                    raise ModelFileError(f"damaged model file '{header.path}': bool tensor {_short(name)} holds bytes other than 0 and 1")
                out[name] = torch.from_numpy(arr.astype(bool)).reshape(t.shape)
            elif t.dtype == "BF16":
                out[name] = torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16).reshape(t.shape)
            else:
                out[name] = torch.from_numpy(arr).reshape(t.shape)
    return out


def _parse_config(header: _Header) -> dict:
    """The moekit configuration in the header: bounded JSON, known keys, the declared state_dict as stored."""
    path, meta = header.path, header.meta
    raw = meta.get("config")
    if not isinstance(raw, str):
        raise ModelFileError(f"damaged model file '{path}': no configuration in its header")
    cfg = _json(raw, "its configuration", path)
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ModelFileError(f"damaged model file '{path}': its configuration is not a moekit configuration")
    for key, typ in (("estimator", str), ("params", dict), ("fitted", dict), ("tree", list), ("state_dict", dict)):
        if not isinstance(cfg.get(key), typ):
            raise ModelFileError(f"damaged model file '{path}': '{key}' is missing from its configuration")
    extra = sorted(set(cfg) - _CONFIG_KEYS)
    if extra:
        raise ModelFileError(f"damaged model file '{path}': unexpected configuration field(s) {extra[:3]}")
    for key in ("structure", "metadata"):
        if key in cfg and not (isinstance(cfg[key], dict) and set(cfg[key]) == {"__dict__"}):
            raise ModelFileError(f"damaged model file '{path}': its '{key}' is not a dictionary")
    model_tensors = {k[len("model."):]: t for k, t in header.index.items() if k.startswith("model.")}
    declared = cfg["state_dict"]
    if set(declared) != set(model_tensors):
        diff = sorted(set(declared) ^ set(model_tensors))[:4]
        raise ModelFileError(f"damaged model file '{path}': its configuration and its stored tensors differ in {diff}")
    for k, t in model_tensors.items():
        d = declared[k]
        torch_name = str(_ST_DTYPES[t.dtype][1]).replace("torch.", "")
        if not (isinstance(d, list) and len(d) == 2 and d[0] == torch_name and d[1] == list(t.shape)):
            raise ModelFileError(
                f"damaged model file '{path}': tensor '{k}' is declared {_short(d)} but stored as "
                f"{[torch_name, list(t.shape)]}"
            )
    return cfg


def read_info(path) -> dict:
    """What a model file holds, without building the model: its JSON configuration.

    Returns the decoded configuration (``estimator``, ``params``, ``tree``,
    ``state_dict`` shapes, ``metadata``, versions) plus ``file_size``.
    Numeric arrays are not decoded (their entries read ``None``); see
    :func:`load` for the estimator itself.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`save`.

    Returns
    -------
    dict
        Keys include ``estimator``, ``params``, ``fitted``, ``structure``,
        ``tree`` (see :func:`model_tree`), ``state_dict``, ``metadata``,
        ``format``, ``format_version``, ``moekit_version``,
        ``torch_version``, ``file_size`` and ``checksum``.

    Raises
    ------
    ModelFileError
        As :func:`load` for a file that is not a moekit model file, or whose
        header is malformed (the tensors' values and the checksum are not
        read; :func:`load` checks those).

    Shapes
    ------
    No arrays are returned: ``state_dict`` maps every stored tensor's name
    to ``[dtype, shape]``, e.g. for a linear-Gaussian mixture of K experts
    on d_x inputs and scalar y ``gate.coef`` (K, d_x + 1) and
    ``experts.coef`` (K, d_x + 1, 1).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from moekit import MoERegressor
    >>> X = np.linspace(-1, 1, 20)[:, None]
    >>> path = os.path.join(tempfile.mkdtemp(), "line.moekit")
    >>> MoERegressor(n_experts=1).fit(X, 2 * X[:, 0] + 1).save(path)
    >>> info = read_info(path)
    >>> info["estimator"], info["state_dict"]["gate.coef"]
    ('MoERegressor', ['float64', [1, 2]])
    """
    header = _read_header(path)
    cfg = _parse_config(header)
    unread = {name: None for name in header.index}  # references are checked, values not read
    for key in ("params", "fitted"):
        for k, v in cfg[key].items():
            _decode_file(header.path, v, unread, f"{key} {k}")
    structure = _decode_file(header.path, cfg.get("structure", {"__dict__": {}}), unread, "structure")
    metadata = _decode_file(header.path, cfg.get("metadata", {"__dict__": {}}), unread, "metadata")
    _check_cli_metadata(f"damaged model file '{header.path}'", metadata)
    del structure
    cfg["file_size"] = header.size
    cfg["checksum"] = header.meta.get("checksum")
    cfg["params"] = {k: _decode_lenient(v) for k, v in cfg["params"].items()}
    cfg["metadata"] = _decode_lenient(cfg.get("metadata", {}))
    cfg["structure"] = _decode_lenient(cfg.get("structure", {}))
    cfg["fitted"] = {k: _decode_lenient(v) for k, v in cfg["fitted"].items()}
    return cfg


def _decode_lenient(v):
    """Decode JSON values for display (after :func:`_decode` has checked them); tensors become None."""
    if isinstance(v, list):
        return [_decode_lenient(x) for x in v]
    if isinstance(v, dict):
        if "__tuple__" in v:
            return tuple(_decode_lenient(x) for x in v["__tuple__"])
        if "__dict__" in v:
            return {k: _decode_lenient(x) for k, x in v["__dict__"].items()}
        if "__float__" in v:
            return float(v["__float__"]) if v["__float__"] in ("nan", "inf", "-inf") else None
        if "__npscalar__" in v:
            return _decode_lenient(v.get("value"))
        if "__strarray__" in v:
            return list(v["__strarray__"])
        if "__result__" in v:
            return _decode_lenient(v.get("fields"))  # a dict of its fields
        if "__dtype__" in v:
            return v["__dtype__"]
        return None
    return v


def load(path, device=None):
    """Load an estimator written by :func:`save` (or ``estimator.save``).

    Every part of the file is checked before it is used: the 8-byte length
    prefix and the header's size before the header is read; the header's
    JSON (bounded nesting, no duplicate keys), the tensors it declares (known
    dtypes, shapes whose bytes are in the file) and the configuration's
    declared tensors before any tensor is read; the checksum; the fitted
    attributes' names and values; the memory the described model needs
    while it is rebuilt (no more than its stored tensors justify); the
    rebuilt model against the stored module tree; the stored numbers
    (finite); the command line's metadata (types, allowed values, agreement
    with the model); and finally one prediction at the origin. Any failure is
    a :class:`ModelFileError` naming what is wrong.

    Parameters
    ----------
    path : str or os.PathLike
    device : str or torch.device, optional
        Where to put the model.  Default: the device it was saved from when
        that exists here; otherwise the CPU, with a warning.

    Returns
    -------
    estimator
        A fitted estimator whose predictions are bit-identical to the saved
        one's (on the same device).  The command line's metadata, if any, is
        in ``read_info(path)["metadata"]``.

    Raises
    ------
    FileNotFoundError
        No such file.
    ModelFileError
        Not a moekit model file, truncated or corrupted, written by a newer
        moekit, or describing a model this moekit cannot rebuild.

    Shapes
    ------
    No array arguments; the loaded model's tensors have the shapes and
    dtypes they were saved with (checked against the stored module tree).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from moekit import MoERegressor
    >>> X = np.linspace(-1, 1, 20)[:, None]
    >>> est = MoERegressor(n_experts=1).fit(X, 2 * X[:, 0] + 1)
    >>> path = os.path.join(tempfile.mkdtemp(), "line.moekit")
    >>> est.save(path)
    >>> again = load(path)
    >>> bool(np.array_equal(again.predict(X), est.predict(X)))
    True
    """
    header = _read_header(path)
    path = header.path
    cfg = _parse_config(header)
    tensors = _read_tensors(header)
    if _checksum(header.meta["config"], tensors) != header.meta.get("checksum"):
        raise ModelFileError(f"'{path}' is damaged: its checksum does not match its contents (re-save or re-download it)")

    name = cfg["estimator"]
    entry = _REGISTRY.get(name)
    if entry is None:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ModelFileError(
            f"'{path}' holds a {_short(name)} model, which this moekit cannot rebuild: no estimator class of that "
            f"name is registered (registered: {known}). moekit.load registers moekit's own estimators; a class of "
            "your own needs moekit.io.register_estimator"
        )
    params = {k: _decode_file(path, v, tensors, f"parameter {k}") for k, v in cfg["params"].items()}
    est = entry.cls()
    valid = est.get_params(deep=False)
    removed = sorted(set(params) & set(entry.removed_parameters) - set(valid))
    if removed:
        warnings.warn(
            f"'{path}' sets {', '.join(f'{k}={_short(params[k])}' for k in removed)}, which {name} no longer has "
            f"(accepted before moekit 0.2.0 and never used); ignored",
            UserWarning,
            stacklevel=2,
        )
        params = {k: v for k, v in params.items() if k not in removed}
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ModelFileError(
            f"'{path}' sets parameters {[k if len(k) <= 40 else k[:37] + '...' for k in unknown[:4]]} that {name} does not have "
            "(written by another moekit version?)"
        )
    if device is not None:
        params["device"] = str(device)
    elif "device" in params:
        params["device"] = _available_device(params["device"], path)
    try:
        est.set_params(**params)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"damaged model file '{path}': {e}") from None
    legacy = _before_total_log_likelihood(cfg)
    if legacy:
        _rename_result_fields(cfg["fitted"])
    for k, v in cfg["fitted"].items():
        _check_fitted_name(path, est, k, valid)
        setattr(est, k, _decode_file(path, v, tensors, f"attribute {k}"))
    _check_fitted_values(path, est)
    if legacy:
        _totals_unknown(est, path, cfg.get("moekit_version"))
    structure = _decode_file(path, cfg.get("structure", {"__dict__": {}}), tensors, "structure")
    metadata = _decode_file(path, cfg.get("metadata", {"__dict__": {}}), tensors, "metadata")

    stored_bytes = sum(t.nbytes for t in header.index.values())
    try:
        with torch.device("cpu"), _AllocationBudget(path, name, 8 * stored_bytes + _BUILD_SLACK,
                                                    10_000 + 1000 * len(header.index)):
            model = entry.build(est, structure)  # on the CPU, where the stored tensors are read, then moved
    except ModelFileError:
        raise
    except Exception as e:  # the stored parameters do not describe a buildable model
        raise ModelFileError(f"damaged model file '{path}': cannot rebuild the {name} it describes ({e})") from None
    if not isinstance(model, nn.Module):
        raise ModelFileError(f"damaged model file '{path}': the {name} it describes rebuilds as no torch model")
    _check_tree(path, model, cfg["tree"])
    _restore_attrs(model, cfg["tree"])
    state = {k[len("model."):]: t for k, t in tensors.items() if k.startswith("model.")}
    own = model.state_dict()
    if set(own) != set(state):
        raise ModelFileError(
            f"damaged model file '{path}': its tensors {sorted(set(state) ^ set(own))[:4]} do not match "
            f"the {name} it describes"
        )
    for k, t in state.items():
        if own[k].shape != t.shape or own[k].dtype != t.dtype:
            raise ModelFileError(
                f"damaged model file '{path}': tensor '{k}' is {t.dtype} {tuple(t.shape)}, "
                f"the model needs {own[k].dtype} {tuple(own[k].shape)}"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelFileError(
                f"damaged model file '{path}': tensor '{k}' holds NaN or infinite values; a fitted model's are finite"
            )
    model.load_state_dict(state, strict=True)
    dev = getattr(est, "device", "cpu")
    model = model.to(dev)
    est.model_ = model
    for v in vars(est).values():
        _attach_model(v, model)
    n_outputs = _check_prediction(path, est, name)
    _check_cli_metadata(f"damaged model file '{path}'", metadata, est, n_outputs)
    return est


# ------------------------------------------------- checks of what a file declares
class _AllocationBudget(TorchDispatchMode):
    """Refuse to allocate more than ``budget`` bytes while a model is rebuilt from a file's parameters.

    A model rebuilt from a genuine file has exactly the tensors the file stores, so its construction
    needs a small multiple of their size. Tensor factories (``empty``, ``zeros``, ``arange``,
    ``tril_indices``, ...) are checked *before* they allocate, every operation's output is counted
    after, so parameters altered to describe a huge model (``n_experts=30000000`` in a 4 KB file)
    stop with a :class:`ModelFileError` instead of exhausting memory. The number of operations is
    bounded too (a few per stored tensor are needed), so that a structure describing millions of
    tiny modules stops early instead of running for minutes.
    """

    _SIZE_ARGS = ("arange", "eye", "tril_indices", "triu_indices", "randperm", "linspace", "logspace")

    def __init__(self, path: str, name: str, budget: int, max_ops: int):
        super().__init__()
        self.path, self.name, self.budget, self.used = path, name, budget, 0
        self.ops, self.max_ops = 0, max_ops

    def _refuse(self, nbytes: int):
        raise ModelFileError(
            f"damaged model file '{self.path}': the {self.name} its parameters describe needs more than "
            f"{nbytes} bytes while its stored tensors justify at most {self.budget}; a parameter, fitted "
            "attribute or structure entry (such as n_experts or n_features_in_) was altered"
        )

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        if self.ops > self.max_ops:
            raise ModelFileError(
                f"damaged model file '{self.path}': rebuilding the {self.name} its parameters describe takes more than "
                f"{self.max_ops} tensor operations, far more than its stored tensors need; a structure entry "
                "(such as the tree) was altered"
            )
        values = list(args) + list(kwargs.values())
        factory = not any(isinstance(a, torch.Tensor) for a in values)
        for a in values:
            if isinstance(a, (list, tuple)) and a and all(isinstance(i, int) for i in a) \
                    and math.prod(abs(i) for i in a) * 8 > self.budget:
                self._refuse(math.prod(abs(i) for i in a) * 8)
        if factory and func.__name__.split(".")[0] in self._SIZE_ARGS:
            ints = [abs(a) for a in values if isinstance(a, int) and not isinstance(a, bool) and a != 0]
            if ints and math.prod(ints) * 8 > self.budget:
                self._refuse(math.prod(ints) * 8)
        out = func(*args, **kwargs)
        for t in out if isinstance(out, (list, tuple)) else (out,):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.used += t.numel() * t.element_size()
        if self.used > self.budget:
            self._refuse(self.used)
        return out


def _check_fitted_name(path, est, k, params: dict) -> None:
    """A fitted attribute may not be a dunder, a parameter, the model, a method or a property of the class."""
    bad = None
    if not (isinstance(k, str) and k.isidentifier()) or k.startswith("__"):
        bad = "is not an attribute name moekit writes"
    elif k in params or k == "model_":
        bad = "is a parameter or the model, not a fitted attribute"
    else:
        attr = inspect.getattr_static(type(est), k, None)
        if callable(attr) or isinstance(attr, (property, staticmethod, classmethod)) or hasattr(attr, "__get__"):
            bad = f"would replace the {type(est).__name__} method or property of that name"
    if bad:
        raise ModelFileError(f"damaged model file '{path}': its fitted attribute {_short(k, 40)} {bad}")


def _check_fitted_values(path, est) -> None:
    """The fitted attributes scikit-learn defines: n_features_in_, feature_names_in_, classes_."""
    n = getattr(est, "n_features_in_", None)
    if not (isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)) and n >= 1):
        raise ModelFileError(f"damaged model file '{path}': n_features_in_ is {_short(n)}, expected a positive integer")
    names = getattr(est, "feature_names_in_", None)
    if names is not None:
        if not (isinstance(names, np.ndarray) and names.ndim == 1 and len(names) == n
                and all(isinstance(x, str) for x in names.tolist())):
            raise ModelFileError(
                f"damaged model file '{path}': feature_names_in_ must be {n} column names (n_features_in_), "
                f"got {_short(names)}"
            )
        if len(set(names.tolist())) != len(names):
            raise ModelFileError(f"damaged model file '{path}': feature_names_in_ names a column twice")
    if hasattr(est, "feature_encoding_"):
        _check_feature_encoding(path, est.feature_encoding_, names)
    if hasattr(est, "classes_"):
        c = est.classes_
        if not (isinstance(c, np.ndarray) and c.ndim == 1 and len(c) >= 2 and c.dtype.kind in "biufUO"):
            raise ModelFileError(f"damaged model file '{path}': classes_ must be a list of two or more labels, got {_short(c)}")
        if c.dtype.kind == "O" and not all(isinstance(x, (str, int, float, bool)) for x in c.tolist()):
            raise ModelFileError(f"damaged model file '{path}': classes_ holds values that are not labels")
        if len(set(c.tolist())) != len(c):
            raise ModelFileError(f"damaged model file '{path}': classes_ lists a class twice")


def _check_feature_encoding(path, enc, names) -> None:
    """``feature_encoding_`` (an estimator fitted on a DataFrame with text columns): how X maps to the model's inputs."""
    def bad(field, expected, got):
        raise ModelFileError(f"damaged model file '{path}': {field} is {_short(got)}, expected {expected}")

    if not (isinstance(enc, dict) and set(enc) == {"features", "encoded_features"}):
        bad("feature_encoding_", "a dictionary of features and encoded_features", enc)
    _, encoded = _check_encoding(bad, enc, "feature_encoding_.")
    if names is None or encoded != names.tolist():
        bad("feature_encoding_.encoded_features", "the names in feature_names_in_", encoded)


def _check_prediction(path, est, name) -> int:
    """Predict at the origin: the loaded model must run and give finite numbers. Returns the number of outputs."""
    x = np.zeros((1, int(est.n_features_in_)))
    names = getattr(est, "feature_names_in_", None)
    if names is not None:  # the model's own input columns (already encoded, if it encodes a DataFrame's)
        import pandas as pd  # heavy: imported only for a model fitted on a DataFrame

        x = pd.DataFrame(x, columns=names.tolist())
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # e.g. "X does not have valid feature names"
            out = np.asarray(est.predict(x))
            proba = np.asarray(est.predict_proba(x)) if hasattr(est, "classes_") else None
    except ModelFileError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever stops a prediction, the file is what is wrong
        raise ModelFileError(
            f"damaged model file '{path}': the {name} it describes cannot predict "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
        ) from None
    if proba is not None:
        if proba.shape != (1, len(est.classes_)) or not np.isfinite(proba).all():
            raise ModelFileError(
                f"damaged model file '{path}': its model gives {proba.shape[-1] if proba.ndim else 0} class "
                f"probabilities but classes_ lists {len(est.classes_)} classes"
            )
        return 1
    if out.dtype.kind not in "biuf" or out.shape[:1] != (1,) or out.ndim > 2 or not np.isfinite(out).all():
        raise ModelFileError(
            f"damaged model file '{path}': the {name} it describes predicts {_short(out)} at the origin, "
            "not finite numbers"
        )
    return 1 if out.ndim == 1 else int(out.shape[1])


# ------------------------------------------------- metadata written by the command line
_TASKS = ("regression", "classification")
_KINDS = ("numeric", "categorical")


def _check_cli_metadata(problem: str, metadata, est=None, n_outputs: int | None = None) -> None:
    """The ``cli`` entry ``moekit fit`` writes: types, allowed values and agreement with the model.

    It holds ``features`` (a list of ``{"name", "kind": "numeric" | "categorical", "levels"}``),
    ``encoded_features`` (the model's input columns: one per numeric feature, one per
    categorical level after the first), ``targets`` (column names: one class column for
    classification, one per output for regression), ``task`` (``"regression"`` or
    ``"classification"``) and optionally ``training_data``, ``selection``, ``command`` and
    ``fit_seconds``. With ``est`` (after loading), the encoded features must be the model's
    ``n_features_in_`` inputs, the task its kind and the targets its outputs. ``problem`` begins
    the message of the :class:`ModelFileError` raised (e.g. "damaged model file 'm.moekit'").
    """
    if not isinstance(metadata, dict) or "cli" not in metadata:
        return
    cli = metadata["cli"]

    def bad(field, expected, got):
        raise ModelFileError(f"{problem}: metadata field cli.{field} is {_short(got)}, expected {expected}")

    if not isinstance(cli, dict):
        bad("", "a dictionary", cli)
    for key in ("features", "encoded_features", "targets", "task"):
        if key not in cli:
            raise ModelFileError(f"{problem}: metadata field cli.{key} is missing")
    task = cli["task"]
    if task not in _TASKS:
        bad("task", " or ".join(repr(t) for t in _TASKS), task)
    feats, encoded = _check_encoding(bad, cli, "")
    targets = _names(bad, "targets", cli["targets"])
    both = sorted(set(targets) & {f["name"] for f in feats})
    if both:
        bad("targets", "columns other than the input columns", targets)
    if task == "classification" and len(targets) != 1:
        bad("targets", "one class column for classification", targets)
    _check_cli_extras(bad, cli)
    if est is None:
        return
    if len(encoded) != int(est.n_features_in_):
        bad("encoded_features", f"the model's {est.n_features_in_} input columns", cli["encoded_features"])
    if (task == "classification") != hasattr(est, "classes_"):
        bad("task", repr("classification" if hasattr(est, "classes_") else "regression") + f" for a {type(est).__name__}", task)
    if task == "regression" and n_outputs is not None and len(targets) != n_outputs:
        bad("targets", f"{n_outputs} column name(s), one per output of the model", targets)


def _names(bad, field, v):
    if not (isinstance(v, list) and v and all(isinstance(s, str) and s for s in v)):
        bad(field, "a list of column names", v)
    if len(set(v)) != len(v):
        bad(field, "a list of distinct column names", v)
    return v


def _check_encoding(bad, enc: dict, prefix: str) -> tuple[list, list]:
    """An input encoding (``features`` and ``encoded_features``) as the estimators and the command line write it.

    ``features`` lists ``{"name", "kind": "numeric" | "categorical", "levels"}`` records;
    ``encoded_features`` names one column per numeric feature and per categorical level after
    the first. ``bad(field, expected, got)`` raises the error; ``prefix`` begins the field names.
    """
    feats = enc.get("features")
    if not (isinstance(feats, list) and feats):
        bad(f"{prefix}features", "a list of input columns", feats)
    n_encoded = 0
    for i, f in enumerate(feats):
        where = f"{prefix}features[{i}]"
        if not isinstance(f, dict):
            bad(where, "a dictionary with name and kind", f)
        if not (isinstance(f.get("name"), str) and f["name"]):
            bad(f"{where}.name", "a column name", f.get("name"))
        if f.get("kind") not in _KINDS:
            bad(f"{where}.kind", " or ".join(repr(k) for k in _KINDS), f.get("kind"))
        if f["kind"] == "numeric":
            n_encoded += 1
            continue
        levels = f.get("levels")
        if not (isinstance(levels, list) and levels and all(isinstance(lv, str) for lv in levels)
                and len(set(levels)) == len(levels)):
            bad(f"{where}.levels", "a list of distinct text levels", levels)
        n_encoded += len(levels) - 1
    _names(bad, f"{prefix}features", [f["name"] for f in feats])
    encoded = _names(bad, f"{prefix}encoded_features", enc.get("encoded_features"))
    if len(encoded) != n_encoded:
        bad(f"{prefix}encoded_features", f"{n_encoded} column names (one per numeric feature and per categorical "
            f"level after the first in {prefix}features)", encoded)
    return feats, encoded


def _check_cli_extras(bad, cli: dict) -> None:
    """The descriptive entries of the command line's metadata (shown by 'moekit info')."""
    number = (int, float)
    if "command" in cli and not isinstance(cli["command"], str):
        bad("command", "a string", cli["command"])
    fs = cli.get("fit_seconds", 0.0)
    if not (isinstance(fs, number) and not isinstance(fs, bool)):
        bad("fit_seconds", "a number", fs)
    sel = cli.get("selection")
    if sel is not None:
        if not (isinstance(sel, dict) and isinstance(sel.get("criterion"), str)
                and isinstance(sel.get("chosen"), int) and not isinstance(sel.get("chosen"), bool)):
            bad("selection", "a dictionary with criterion and chosen", sel)
        scores = sel.get("scores")
        if not (isinstance(scores, dict) and all(k.lstrip("-").isdigit() and isinstance(v, number) and not isinstance(v, bool)
                                                  for k, v in scores.items())):
            bad("selection.scores", "numbers by K", scores)
    td = cli.get("training_data")
    if td is None:
        return
    if not isinstance(td, dict):
        bad("training_data", "a dictionary", td)
    if "file" in td and not isinstance(td["file"], str):
        bad("training_data.file", "a file name", td["file"])
    if "rows" in td and not (isinstance(td["rows"], int) and not isinstance(td["rows"], bool) and td["rows"] >= 0):
        bad("training_data.rows", "a number of rows", td["rows"])
    cols = td.get("columns", {})
    if not isinstance(cols, dict):
        bad("training_data.columns", "a dictionary of column summaries", cols)
    for c, s in cols.items():
        where = f"training_data.columns[{_short(c, 30)}]"
        if not (isinstance(s, dict) and isinstance(s.get("kind"), str)):
            bad(where, "a summary with a kind", s)
        if "counts" in s:
            cnt = s["counts"]
            if not (isinstance(cnt, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in cnt.values())):
                bad(f"{where}.counts", "counts by level", cnt)
        else:
            for k in ("min", "max", "mean", "std"):
                if not (isinstance(s.get(k), number) and not isinstance(s.get(k), bool)):
                    bad(f"{where}.{k}", "a number", s.get(k))


# ------------------------------------------------- files of older moekit versions
def _version_tuple(version) -> tuple:
    try:
        return tuple(int(p) for p in str(version).split("+")[0].split(".")[:3])
    except ValueError:
        return ()


def _before_total_log_likelihood(cfg: dict) -> bool:
    """Whether the file was written before 0.2.0, when ``log_likelihood_`` was the mean per unit weight."""
    v = _version_tuple(cfg.get("moekit_version"))
    return v < (0, 2, 0)


def _rename_result_fields(value, depth: int = 0) -> None:
    """In the raw configuration of a pre-0.2.0 file: the results' means move to their explicit names.

    ``log_likelihood`` becomes ``mean_log_likelihood`` (the total is unknown: NaN) and
    ``init_log_likelihoods`` becomes ``init_mean_log_likelihoods``; results nested in results
    (``GrowResult.fit_result``) too.
    """
    if depth > 8:
        return
    if isinstance(value, list):
        for v in value:
            _rename_result_fields(v, depth + 1)
        return
    if not isinstance(value, dict):
        return
    if "__result__" in value and isinstance(value.get("fields"), dict):
        fields = value["fields"].get("__dict__")
        if isinstance(fields, dict):
            if "log_likelihood" in fields and "mean_log_likelihood" not in fields:
                fields["mean_log_likelihood"] = fields["log_likelihood"]
                fields["log_likelihood"] = {"__float__": "nan"}
            if "init_log_likelihoods" in fields:
                fields["init_mean_log_likelihoods"] = fields.pop("init_log_likelihoods")
    for v in value.values():
        _rename_result_fields(v, depth + 1)


def _totals_unknown(est, path, version) -> None:
    """A pre-0.2.0 estimator's fitted log-likelihoods: the stored means under their new names, the totals NaN."""
    if not hasattr(est, "log_likelihood_"):
        return
    est.mean_log_likelihood_ = est.log_likelihood_
    est.log_likelihood_ = math.nan
    hist = getattr(est, "log_likelihood_history_", None)
    if isinstance(hist, np.ndarray):
        est.mean_log_likelihood_history_ = hist
        est.log_likelihood_history_ = np.full_like(hist, np.nan, dtype=float)
    warnings.warn(
        f"'{path}' was written by moekit {version}, whose log_likelihood_ was the mean per unit weight: it is "
        f"now mean_log_likelihood_ ({est.mean_log_likelihood_:.6g}). log_likelihood_, now the total weighted "
        "log-likelihood, is NaN because such files do not store the training weight; "
        "score_samples(X, y) @ sample_weight on the training data gives it",
        UserWarning,
        stacklevel=3,
    )


def _result_classes() -> dict:
    """Result records that may be stored: FitResult and its subclasses, GrowResult (never imported by a file's say)."""
    out, todo = {"GrowResult": GrowResult}, [FitResult]
    while todo:
        c = todo.pop()
        out[c.__name__] = c
        todo.extend(c.__subclasses__())
    return out


def _attach_model(v, model, depth: int = 0) -> None:
    """Results refer to the model they fitted: point the loaded ones at the loaded model."""
    if depth > 3:
        return
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        if getattr(v, "model", False) is None:
            v.model = model
        for f in dataclasses.fields(v):
            _attach_model(getattr(v, f.name), model, depth + 1)


def _available_device(dev, path) -> str:
    dev = str(dev)
    try:
        torch.device(dev)
    except (RuntimeError, TypeError):
        raise ModelFileError(f"damaged model file '{path}': bad device {dev!r}") from None
    if device_problem(dev) is not None:
        warnings.warn(
            f"'{path}' was saved from device {dev!r}, which this machine does not have; loading it on the CPU "
            "(pass device= to choose)",
            UserWarning,
            stacklevel=3,
        )
        return "cpu"
    return dev


def _check_tree(path, model: nn.Module, tree: list) -> None:
    mine = [(p, _module_class(m)) for p, m in model.named_modules()]
    theirs = []
    for node in tree:
        if not (isinstance(node, dict) and isinstance(node.get("path"), str) and isinstance(node.get("class"), str)):
            raise ModelFileError(f"damaged model file '{path}': bad module tree")
        theirs.append((node["path"], node["class"]))
    if mine != theirs:
        diff = next(((a, b) for a, b in zip(mine, theirs) if a != b), (mine[len(theirs):len(theirs) + 1], theirs[len(mine):len(mine) + 1]))
        raise ModelFileError(
            f"damaged model file '{path}': the model rebuilt from its parameters differs from the stored one "
            f"(rebuilt {diff[0]}, stored {diff[1]})"
        )


def _restore_attrs(model: nn.Module, tree: list) -> None:
    mods = dict(model.named_modules())
    for node in tree:
        m = mods[node["path"]]
        attrs = node.get("attrs", {})
        if not isinstance(attrs, dict):
            continue
        for k, v in attrs.items():
            if not isinstance(k, str) or k.startswith("_") or k not in vars(m):
                continue
            if k in m._parameters or k in m._buffers or k in m._modules or not _simple(v):
                continue
            cur = vars(m)[k]
            if isinstance(cur, tuple) and isinstance(v, list):
                v = tuple(v)
            if type(cur) is not type(v) and not (cur is None or v is None):
                continue
            object.__setattr__(m, k, v)
