"""Checks of what a model file declares against the model it describes, made while it is loaded.

- :class:`AllocationBudget`: rebuilding the model from the file's parameters may allocate no more than
  a small multiple of the tensors the file stores, in a bounded number of tensor operations;
- the fitted attributes: their names (no dunder, parameter, method or property) and the values
  scikit-learn defines (``n_features_in_``, ``feature_names_in_``, ``classes_``, ``feature_encoding_``);
- one prediction at the origin: the loaded model runs and gives finite numbers;
- the command line's metadata (``cli``): types, allowed values and agreement with the model.

Every failure is a :class:`ModelFileError` naming the file and the field.
"""

from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from ._errors import ModelFileError, short

__all__ = ["AllocationBudget", "check_cli_metadata", "check_feature_encoding", "check_fitted_name",
           "check_fitted_values", "check_prediction"]


class AllocationBudget(TorchFunctionMode):
    """Refuse to allocate more than ``budget`` bytes while a model is rebuilt from a file's parameters.

    A model rebuilt from a genuine file has exactly the tensors the file stores, so its construction
    needs a small multiple of their size. Every torch call is seen (a function mode: cheap to enter,
    unlike a dispatch mode, which loads torch's compiler): the sizes it is asked for (``torch.empty(n,
    m)``, ``torch.zeros((n, m))``, ``torch.arange(n)``, ``torch.tril_indices(n, n)``, ...) are checked
    *before* it allocates, and its output is counted after, so parameters altered to describe a huge model (``n_experts=30000000`` in a 4 KB file)
    stop with a :class:`ModelFileError` instead of exhausting memory. The number of operations is
    bounded too (a few per stored tensor are needed), so that a structure describing millions of
    tiny modules stops early instead of running for minutes.
    """

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

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        if self.ops > self.max_ops:
            raise ModelFileError(
                f"damaged model file '{self.path}': rebuilding the {self.name} its parameters describe takes more than "
                f"{self.max_ops} tensor operations, far more than its stored tensors need; a structure entry "
                "(such as the tree) was altered"
            )
        values = list(args) + list(kwargs.values())
        sizes = [a for a in values if isinstance(a, (list, tuple)) and a
                 and all(isinstance(i, int) and not isinstance(i, bool) for i in a)]
        for a in sizes:
            if math.prod(abs(i) for i in a) * 8 > self.budget:
                self._refuse(math.prod(abs(i) for i in a) * 8)
        if not sizes and not any(isinstance(a, torch.Tensor) for a in values):  # a factory given its sizes one by one
            ints = [abs(a) for a in args if isinstance(a, int) and not isinstance(a, bool) and a != 0]
            if ints and math.prod(ints) * 8 > self.budget:
                self._refuse(math.prod(ints) * 8)
        out = func(*args, **kwargs)
        for t in out if isinstance(out, (list, tuple)) else (out,):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.used += t.numel() * t.element_size()
        if self.used > self.budget:
            self._refuse(self.used)
        return out


def check_fitted_name(path, est, k, params: dict) -> None:
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
        raise ModelFileError(f"damaged model file '{path}': its fitted attribute {short(k, 40)} {bad}")


def check_fitted_values(path, est) -> None:
    """The fitted attributes scikit-learn defines: n_features_in_, feature_names_in_, classes_."""
    n = getattr(est, "n_features_in_", None)
    if not (isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)) and n >= 1):
        raise ModelFileError(f"damaged model file '{path}': n_features_in_ is {short(n)}, expected a positive integer")
    names = getattr(est, "feature_names_in_", None)
    if names is not None:
        if not (isinstance(names, np.ndarray) and names.ndim == 1 and len(names) == n
                and all(isinstance(x, str) for x in names.tolist())):
            raise ModelFileError(
                f"damaged model file '{path}': feature_names_in_ must be {n} column names (n_features_in_), "
                f"got {short(names)}"
            )
        if len(set(names.tolist())) != len(names):
            raise ModelFileError(f"damaged model file '{path}': feature_names_in_ names a column twice")
    if hasattr(est, "feature_encoding_"):
        check_feature_encoding(path, est.feature_encoding_, names)
    check_extras(path, est)
    if hasattr(est, "classes_"):
        c = est.classes_
        if not (isinstance(c, np.ndarray) and c.ndim == 1 and len(c) >= 2 and c.dtype.kind in "biufUO"):
            raise ModelFileError(f"damaged model file '{path}': classes_ must be a list of two or more labels, got {short(c)}")
        if c.dtype.kind == "O" and not all(isinstance(x, (str, int, float, bool)) for x in c.tolist()):
            raise ModelFileError(f"damaged model file '{path}': classes_ holds values that are not labels")
        if len(set(c.tolist())) != len(c):
            raise ModelFileError(f"damaged model file '{path}': classes_ lists a class twice")


def check_extras(path, est) -> None:
    """``extras_`` (the per-row columns after X's: offset, then trials), ``extras_required_`` and ``censored_``."""
    extras = getattr(est, "extras_", ())
    if not (isinstance(extras, (tuple, list)) and list(extras) in ([], ["offset"], ["trials"], ["offset", "trials"])):
        raise ModelFileError(f"damaged model file '{path}': extras_ is {short(extras)}, expected a tuple of 'offset' "
                             "and/or 'trials' in that order")
    required = getattr(est, "extras_required_", ())
    if not (isinstance(required, (tuple, list)) and set(required) <= set(extras) and len(set(required)) == len(required)):
        raise ModelFileError(f"damaged model file '{path}': extras_required_ is {short(required)}, expected some of "
                             f"extras_ {short(extras)}")
    if not isinstance(getattr(est, "censored_", False), (bool, np.bool_)):
        raise ModelFileError(f"damaged model file '{path}': censored_ is {short(est.censored_)}, expected True or False")


def check_feature_encoding(path, enc, names) -> None:
    """``feature_encoding_`` (an estimator fitted on a DataFrame with text columns): how X maps to the model's inputs."""
    def bad(field, expected, got):
        raise ModelFileError(f"damaged model file '{path}': {field} is {short(got)}, expected {expected}")

    if not (isinstance(enc, dict) and set(enc) == {"features", "encoded_features"}):
        bad("feature_encoding_", "a dictionary of features and encoded_features", enc)
    _, encoded = _check_encoding(bad, enc, "feature_encoding_.")
    if names is None or encoded != names.tolist():
        bad("feature_encoding_.encoded_features", "the names in feature_names_in_", encoded)


def check_prediction(path, est, name) -> int:
    """Predict at the origin: the loaded model must run and give finite numbers. Returns the number of outputs."""
    x = np.zeros((1, int(est.n_features_in_)))
    names = getattr(est, "feature_names_in_", None)
    if names is not None:  # the model's own input columns (already encoded, if it encodes a DataFrame's)
        import pandas as pd  # heavy: imported only for a model fitted on a DataFrame

        x = pd.DataFrame(x, columns=names.tolist())
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # e.g. "X does not have valid feature names"
            # a model fitted with an offset or trials predicts from them: offset 0, one trial at the origin
            extras = {k: (np.zeros(1) if k == "offset" else np.ones(1)) for k in getattr(est, "extras_required_", ())}
            out = np.asarray(est.predict(x, **extras))
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
            f"damaged model file '{path}': the {name} it describes predicts {short(out)} at the origin, "
            "not finite numbers"
        )
    return 1 if out.ndim == 1 else int(out.shape[1])


# ------------------------------------------------- metadata written by the command line
_TASKS = ("regression", "classification")
_KINDS = ("numeric", "categorical")


def check_cli_metadata(problem: str, metadata, est=None, n_outputs: int | None = None) -> None:
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
        raise ModelFileError(f"{problem}: metadata field cli.{field} is {short(got)}, expected {expected}")

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
        where = f"training_data.columns[{short(c, 30)}]"
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
