"""What several commands share: messages, progress bars, threads, the device, loading a model file and
its column schema.  Imported only by the command modules, so torch loads when a command runs."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from ..estimators import load  # io.load with moekit's estimator classes registered
from .._validation import device_problem
from ..io import ModelFileError, read_info
from .errors import DataError, UsageError, one_line
from .formulas import formula_inputs, formula_schema, formula_targets
from .tables import encode_features, encode_targets, limit_column, numeric_column

__all__ = [
    "check_device",
    "collect_warnings",
    "extra_arrays",
    "load_model",
    "model_inputs",
    "model_targets",
    "predict_frame",
    "progress",
    "refuse_overwriting_inputs",
    "say",
    "schema_of",
    "set_threads",
    "target_names",
    "with_extras",
]

#: The per-row columns that are neither inputs nor targets: fit's keywords of the same names.
EXTRAS = ("offset", "trials", "lower", "upper")
#: Those a prediction needs (the censoring limits are part of an observation: only evaluate reads them).
PREDICTION_EXTRAS = ("offset", "trials")

_MODEL_EXT_HINT = "model files are written by 'moekit fit' (any extension; '.moekit' is customary)"
_SMALL_ROWS = 50_000


def progress(total: int, desc: str, args):
    """A tqdm bar on a terminal; silent in pipes, files and with --quiet."""
    quiet = getattr(args, "quiet", False) or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=quiet, file=sys.stderr, leave=False, dynamic_ncols=True)


def say(args, msg: str) -> None:
    """A message on stderr, unless --quiet."""
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr)


def set_threads(args, n_rows: int) -> None:
    """Small problems run fastest single-threaded (and do not stall on a busy machine)."""
    n = getattr(args, "threads", None)
    if n is None and n_rows < _SMALL_ROWS:
        n = 1
    if n is not None:
        torch.set_num_threads(int(n))


def check_device(dev):
    """--device as a torch device name (None stays None); UsageError for a device this machine lacks (the one device rule)."""
    if dev is None:
        return None
    problem = device_problem(dev, "--device")
    if problem is not None:
        raise UsageError(problem)
    return str(torch.device(dev))


@contextlib.contextmanager
def collect_warnings(args):
    """Show library warnings as one line each (after the work), or not at all with --quiet."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen = set()
    for w in caught:
        msg = one_line(w.message)
        if msg in seen or issubclass(w.category, DeprecationWarning):
            continue
        seen.add(msg)
        say(args, f"moekit: warning: {msg}")


def refuse_overwriting_inputs(out: str, inputs: dict) -> None:
    """UsageError when the output ``out`` is one of the command's input files (by resolved path or, for an
    existing file, by identity, so that links and other spellings of the same file count).

    ``inputs`` maps each input's name on the command line (e.g. ``"DATA"``) to its path.
    """
    if out == "-":
        return
    real = os.path.realpath(out)
    for name, path in inputs.items():
        if path is None or path == "-":
            continue
        if os.path.isdir(path) and os.path.splitext(out)[1].lower() in (".csv", ".tsv", ".parquet", ".pq") and \
                real.startswith(os.path.join(os.path.realpath(path), "")):
            raise UsageError(f"-o {out} is inside the input {name} folder '{path}', whose data files are all read as "
                             "parts of the data set: write it elsewhere")
        same = os.path.realpath(path) == real
        if not same and os.path.exists(out) and os.path.exists(path):
            with contextlib.suppress(OSError):
                same = os.path.samefile(out, path)
        if same:
            raise UsageError(f"-o {out} is the input {name} file '{path}'; writing there would destroy it: "
                             "give -o another file name")


def load_model(path: str, device=None):
    """The estimator in a model file and the file's description (DataError for anything but a model file)."""
    if not os.path.exists(path):
        raise DataError(f"model file '{path}' does not exist; {_MODEL_EXT_HINT}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est = load(path, device=device)
        info = read_info(path)
    except ModelFileError as e:
        raise DataError(one_line(e)) from None
    for w in caught:
        print(f"moekit: warning: {one_line(w.message)}", file=sys.stderr)
    return est, info


def schema_of(est, info, args) -> dict:
    """The column schema of a model: the one stored by 'moekit fit', or one made for a model saved from Python.

    For a model saved from Python: a model written as formulas takes its schema from its design
    (``formula_design_``: the columns the formulas name, their left side the target); a model fitted on a
    DataFrame with text columns from its encoding (``feature_encoding_``: the columns and their levels, the
    same format as the command line's); any other from ``feature_names_in_`` or ``--features``.
    """
    meta = info.get("metadata") or {}
    cli = meta.get("cli") if isinstance(meta, dict) else None
    feats = getattr(args, "features", None)
    design = getattr(est, "formula_design_", None)
    if design is not None:
        given = [o for o, v in (("--features", feats), ("--target", getattr(args, "target", None))) if v]
        if given:
            raise UsageError(f"{given[0]} does not apply to this model: it was written as the formula "
                             f"{design['formula']!r}, which names its columns and its target; leave {given[0]} out")
    if isinstance(cli, dict) and "features" in cli:
        return cli
    task = "classification" if hasattr(est, "classes_") else "regression"
    if design is not None:
        return formula_schema(design, task)
    targets = list(getattr(args, "target", None) or ["y"])
    encoding = getattr(est, "feature_encoding_", None)
    if encoding is not None and feats is None:
        return {"features": [dict(f) for f in encoding["features"]],
                "encoded_features": [str(n) for n in encoding["encoded_features"]], "targets": targets, "task": task}
    if feats is None:
        names = getattr(est, "feature_names_in_", None)
        if names is None:
            raise UsageError("this model was saved from Python without column names; pass --features COL ... "
                             f"(its {est.n_features_in_} input columns, in order)")
        feats = [str(n) for n in names]
    if len(feats) != int(est.n_features_in_):
        raise UsageError(f"--features names {len(feats)} column(s) but the model takes {est.n_features_in_} inputs")
    return {"features": [{"name": f, "kind": "numeric"} for f in feats], "encoded_features": list(feats),
            "targets": targets, "task": task}


def model_inputs(est, tab, schema):
    """X of a table as the model takes it: its columns encoded as in training (a formula design evaluated, text
    columns one-hot), named as the model was fitted (a DataFrame where it has column names)."""
    if "formula" in schema:
        return predict_frame(est, formula_inputs(tab, schema))
    return predict_frame(est, encode_features(tab, schema))


def model_targets(est, tab, schema):
    """y of a table as the model saw it in training (a formula's left side evaluated)."""
    classes = getattr(est, "classes_", None)
    if "formula" in schema:
        return formula_targets(tab, schema, classes)
    return encode_targets(tab, schema, classes)


def predict_frame(est, X):
    """X as the estimator wants it (a DataFrame when it was fitted with column names)."""
    names = getattr(est, "feature_names_in_", None)
    if names is None:
        return X
    import pandas as pd  # optional heavy library, needed only for models fitted on a DataFrame

    return pd.DataFrame(np.asarray(X), columns=list(names))


def extra_arrays(tab, schema: dict, which=EXTRAS, fitting: bool = False) -> dict:
    """The per-row columns recorded in the schema (``--offset``, ``--trials``, ``--lower``, ``--upper`` of 'moekit
    fit') read from a table: ``{keyword: (n,) float64}``; DataError naming the column when the table lacks it."""
    out = {}
    for kw, col in (schema.get("extras") or {}).items():
        if kw not in which:
            continue
        if col not in tab.names:
            shown = ", ".join(tab.names[:20]) + (" ..." if len(tab.names) > 20 else "")
            if fitting:
                raise DataError(f"--{kw} names the column '{col}', which is not in {tab.path}; its columns are: {shown}")
            raise DataError(f"this model was fitted with --{kw} {col}: the data must hold the column '{col}' (the "
                            f"{kw} of each row), which is not in {tab.path}; its columns are: {shown}")
        out[kw] = limit_column(tab, col, kw) if kw in ("lower", "upper") else numeric_column(tab, col, f"--{kw}")
    return out


class _WithExtras:
    """An estimator whose methods get the per-row extras (offset, trials, censoring limits) that they take as
    keywords; everything else is the estimator's own."""

    def __init__(self, est, extras: dict):
        self._est = est
        self._extras = extras

    def __getattr__(self, name):
        attr = getattr(self._est, name)
        if name.startswith("_") or not inspect.ismethod(attr):  # a fitted model_ (a Module) is callable, not a method
            return attr
        try:
            params = inspect.signature(attr).parameters
        except (TypeError, ValueError):
            return attr
        takes_all = any(q.kind is inspect.Parameter.VAR_KEYWORD for q in params.values())  # e.g. bic(X, y, **extras)
        given = {k: v for k, v in self._extras.items() if takes_all or k in params}
        return functools.partial(attr, **given) if given else attr


def with_extras(est, extras: dict):
    """``est`` itself without extras; with them, a view whose ``predict``, ``score_samples``, ``sample_y`` ...
    pass them on (to the methods that take them)."""
    return _WithExtras(est, extras) if extras else est


def target_names(schema, dist=None) -> list[str]:
    """Names for the target columns of the output (y0, y1, ... when the model's y is wider than the schema)."""
    t = list(schema["targets"])
    if dist is not None and len(dist.event_shape) == 1 and len(t) != dist.event_shape[0]:
        t = [f"y{j}" for j in range(dist.event_shape[0])]
    return t
