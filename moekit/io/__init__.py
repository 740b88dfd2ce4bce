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

Loading reads within bounds and checks what a file declares before using it
(:mod:`moekit.io._container`: the length prefix, header size and nesting,
the tensors' dtypes, shapes and byte ranges; :mod:`moekit.io._checks`: the
memory and work of rebuilding the model, the fitted attributes, one
prediction, the command line's metadata); every failure is a
:class:`ModelFileError` naming the file and what is wrong.

This package is the file format only: it imports no estimator.  Estimator
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
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from safetensors.torch import save as st_save
from sklearn.base import BaseEstimator
from torch import nn

from .. import __version__
from .._validation import device_problem
from ..training.grow import GrowResult
from ..training.result import FitResult
from ._checks import (
    AllocationBudget,
    check_cli_metadata,
    check_fitted_name,
    check_fitted_values,
    check_prediction,
)
from ._container import (
    FORMAT,
    FORMAT_VERSION,
    NUMPY_SAFE,
    ST_DTYPES,
    Header,
    check_shape,
    load_json,
    read_header,
    read_tensors,
)
from ._errors import ModelFileError, short
from ._legacy import before_total_log_likelihood, rename_result_fields, totals_unknown

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

# building a model may allocate this many bytes beyond a small multiple of what the file stores
_BUILD_SLACK = 64 * 1024 * 1024
_CONFIG_KEYS = {"format", "format_version", "moekit_version", "torch_version", "estimator", "params", "fitted",
                "structure", "tree", "state_dict", "metadata"}




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
            raise ModelFileError(f"damaged model file: the {code} scalar at {where} holds {short(x)}, not a number")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy warns (and wraps) on some out-of-range conversions
            try:
                out = np.dtype(code).type(x)
            except (OverflowError, ValueError, TypeError, RuntimeWarning, DeprecationWarning):
                raise ModelFileError(f"damaged model file: {short(x)} at {where} does not fit a {code} scalar") from None
        if np.dtype(code).kind in "iub" and out != x:
            raise ModelFileError(f"damaged model file: {short(x)} at {where} does not fit a {code} scalar")
        return out
    if tag == "__tuple__":
        return tuple(_decode(x, tensors, f"{where}[{i}]") for i, x in enumerate(_expect(v["__tuple__"], list, where)))
    if tag == "__dict__":
        d = _expect(v["__dict__"], dict, where)
        return {str(k): _decode(x, tensors, f"{where}[{k!r}]") for k, x in d.items()}
    if tag in ("__tensor__", "__array__"):
        key = v[tag]
        if not isinstance(key, str) or key not in tensors:
            raise ModelFileError(f"damaged model file: tensor {short(key)} referenced at {where} is missing")
        t = tensors[key]
        if t is None:  # read_info: the values are not read
            return None
        if tag == "__tensor__":
            return t.clone()
        if t.dtype not in NUMPY_SAFE:
            raise ModelFileError(f"damaged model file: the array at {where} is {t.dtype}, which numpy cannot hold")
        return t.numpy().copy()
    if tag == "__strarray__":
        flat = _expect(v["__strarray__"], list, where)
        shape = check_shape(v.get("shape"), where)
        kind = v.get("kind")
        if kind not in ("U", "O"):
            raise ModelFileError(f"damaged model file: bad string array kind {short(kind)} at {where} (expected 'U' or 'O')")
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
            raise ModelFileError(f"damaged model file: unknown result type {short(v['__result__'])} at {where}")
        fields = _decode(v.get("fields"), tensors, where)
        if not isinstance(fields, dict):
            raise ModelFileError(f"damaged model file: the {cls.__name__} at {where} has no fields")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(model=None, **{k: x for k, x in fields.items() if k in known and k != "model"})
        except TypeError as e:
            raise ModelFileError(f"damaged model file: bad {cls.__name__} at {where} ({e})") from None
    if not isinstance(v["__dtype__"], str) or v["__dtype__"] not in _TORCH_DTYPES:
        raise ModelFileError(f"damaged model file: unknown dtype {short(v['__dtype__'])} at {where}")
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
    for k, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelFileError(
                f"cannot save {what}: its model's tensor '{k}' holds NaN or infinite values (the fit diverged), "
                "and loading refuses such files; fit it again (e.g. with other starting values or a smaller "
                "learning rate)"
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
    check_cli_metadata(f"cannot save {what}", metadata)
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



def _parse_config(header: Header) -> dict:
    """The moekit configuration in the header: bounded JSON, known keys, the declared state_dict as stored."""
    path, meta = header.path, header.meta
    raw = meta.get("config")
    if not isinstance(raw, str):
        raise ModelFileError(f"damaged model file '{path}': no configuration in its header")
    cfg = load_json(raw, "its configuration", path)
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
        torch_name = str(ST_DTYPES[t.dtype][1]).replace("torch.", "")
        if not (isinstance(d, list) and len(d) == 2 and d[0] == torch_name and d[1] == list(t.shape)):
            raise ModelFileError(
                f"damaged model file '{path}': tensor '{k}' is declared {short(d)} but stored as "
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
    header = read_header(path)
    cfg = _parse_config(header)
    unread = {name: None for name in header.index}  # references are checked, values not read
    for key in ("params", "fitted"):
        for k, v in cfg[key].items():
            _decode_file(header.path, v, unread, f"{key} {k}")
    structure = _decode_file(header.path, cfg.get("structure", {"__dict__": {}}), unread, "structure")
    metadata = _decode_file(header.path, cfg.get("metadata", {"__dict__": {}}), unread, "metadata")
    check_cli_metadata(f"damaged model file '{header.path}'", metadata)
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
    header = read_header(path)
    path = header.path
    cfg = _parse_config(header)
    tensors = read_tensors(header)
    if _checksum(header.meta["config"], tensors) != header.meta.get("checksum"):
        raise ModelFileError(f"'{path}' is damaged: its checksum does not match its contents (re-save or re-download it)")

    name = cfg["estimator"]
    entry = _REGISTRY.get(name)
    if entry is None:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ModelFileError(
            f"'{path}' holds a {short(name)} model, which this moekit cannot rebuild: no estimator class of that "
            f"name is registered (registered: {known}). moekit.load registers moekit's own estimators; a class of "
            "your own needs moekit.io.register_estimator"
        )
    params = {k: _decode_file(path, v, tensors, f"parameter {k}") for k, v in cfg["params"].items()}
    est = entry.cls()
    valid = est.get_params(deep=False)
    removed = sorted(set(params) & set(entry.removed_parameters) - set(valid))
    if removed:
        warnings.warn(
            f"'{path}' sets {', '.join(f'{k}={short(params[k])}' for k in removed)}, which {name} no longer has "
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
    legacy = before_total_log_likelihood(cfg)
    if legacy:
        rename_result_fields(cfg["fitted"])
    for k, v in cfg["fitted"].items():
        check_fitted_name(path, est, k, valid)
        setattr(est, k, _decode_file(path, v, tensors, f"attribute {k}"))
    check_fitted_values(path, est)
    if legacy:
        totals_unknown(est, path, cfg.get("moekit_version"))
    structure = _decode_file(path, cfg.get("structure", {"__dict__": {}}), tensors, "structure")
    metadata = _decode_file(path, cfg.get("metadata", {"__dict__": {}}), tensors, "metadata")

    stored_bytes = sum(t.nbytes for t in header.index.values())
    try:
        with torch.device("cpu"), AllocationBudget(path, name, 8 * stored_bytes + _BUILD_SLACK,
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
    n_outputs = check_prediction(path, est, name)
    check_cli_metadata(f"damaged model file '{path}'", metadata, est, n_outputs)
    return est




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
