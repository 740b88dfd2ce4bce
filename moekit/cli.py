"""The ``moekit`` command (also ``python -m moekit``).

Subcommands::

    moekit demo [robot-arm|inverse-sine|tone|tracking] [-o FOLDER]
    moekit fit DATA --target COL [COL ...] [--features COL ...] [--model moe|hme|mdn]
               [--experts K | --select-k 1..8] [--expert linear|poisson|student_t|mlp|logistic]
               [--depth D] [--branching B] -o MODEL
    moekit predict MODEL DATA -o OUT [--what mean|modes|quantiles|interval|samples|gate]
    moekit evaluate MODEL DATA [--json]
    moekit report MODEL DATA -o report.html
    moekit info MODEL [--json]

DATA is a CSV (``.csv``, ``.tsv``) or Parquet (``.parquet``, ``.pq``) file with a
header row, read with pyarrow.  Text columns used as inputs are categorical:
they are one-hot encoded (the first level, in sorted order, is the reference)
and the levels are recorded in the model file, so that ``predict`` encodes
new data the same way.

Exit codes: 0 success; 2 a usage error (the command line itself is wrong:
an unknown option, a bad value, options that do not fit the model); 1 a data
error (a file is missing, empty, not what it should be, or its contents do
not fit: a missing column, a non-numeric value in a numeric column, a model
file that is not a moekit file); 3 an internal error (a bug: please report
it; ``MOEKIT_DEBUG=1`` shows the traceback).  Every error is one line on
stderr that says what is wrong and how to fix it.

Long work shows a progress bar on a terminal (never in a pipe or a file);
``--quiet`` silences everything but errors and requested output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import sys
import time
import warnings

import numpy as np

__all__ = ["main"]

_MODEL_EXT_HINT = "model files are written by 'moekit fit' (any extension; '.moekit' is customary)"


# ================================================================ errors
class CLIError(Exception):
    """An error reported as one line with an exit code."""

    code = 1


class UsageError(CLIError):
    code = 2


class DataError(CLIError):
    code = 1


def _one_line(msg) -> str:
    return " ".join(str(msg).split())


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2, no usage dump
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ============================================================ data tables
_CSV = {".csv": ",", ".tsv": "\t"}
_PARQUET = {".parquet", ".pq"}


def _pa():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.compute  # noqa: F401
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise UsageError("reading and writing data files needs pyarrow: pip install pyarrow") from None
    return pyarrow


class Table:
    """A data file's columns (pyarrow), with its path and kind for messages."""

    def __init__(self, table, path: str, kind: str):
        self.t = table
        self.path = path
        self.kind = kind
        self.names = list(table.column_names)
        self.n = table.num_rows

    def where(self, i: int) -> str:
        """Human row reference (1-based data row; the line number for text files)."""
        return f"row {i + 1} (line {i + 2})" if self.kind == "csv" else f"row {i + 1}"

    def column(self, name: str):
        return self.t.column(name)

    def require(self, names, what: str) -> None:
        for c in names:
            if c not in self.names:
                shown = ", ".join(self.names[:20]) + (" ..." if len(self.names) > 20 else "")
                raise DataError(f"{what} column '{c}' is not in {self.path}; its columns are: {shown}")


def _kind_of(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext in _CSV:
        return "csv"
    if ext in _PARQUET:
        return "parquet"
    with open(path, "rb") as f:
        head = f.read(4)
    return "parquet" if head == b"PAR1" else "csv"


def read_table(path: str) -> Table:
    """Read a CSV or Parquet file (DataError for anything a user can fix)."""
    pa = _pa()
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if not os.path.exists(path):
        raise DataError(f"data file '{path}' does not exist; check the path")
    if os.path.isdir(path):
        raise DataError(f"'{path}' is a folder; give a CSV or Parquet file")
    if os.path.getsize(path) == 0:
        raise DataError(f"data file '{path}' is empty; it needs a header row and at least one data row")
    kind = _kind_of(path)
    try:
        if kind == "csv":
            delim = _CSV.get(os.path.splitext(path)[1].lower(), ",")
            table = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter=delim))
        else:
            table = pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowException, OSError, UnicodeDecodeError) as e:
        msg = _one_line(e)
        if "Empty CSV file" in msg:
            raise DataError(f"data file '{path}' is empty; it needs a header row and at least one data row") from None
        what = "CSV" if kind == "csv" else "Parquet"
        raise DataError(f"cannot read '{path}' as {what}: {msg[:300]}") from None
    if table.num_columns == 0:
        raise DataError(f"data file '{path}' has no columns")
    if table.num_rows == 0:
        raise DataError(f"data file '{path}' has a header but no data rows")
    dup = sorted({c for c in table.column_names if table.column_names.count(c) > 1})
    if dup:
        raise DataError(f"data file '{path}' has duplicate column names {dup}; rename them")
    return Table(table, path, kind)


def _is_numeric_type(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)


def _is_text_type(t) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t) or pa.types.is_null(t)


def _as_text(col) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, pa.string())
    if not _is_text_type(col.type):
        col = pc.cast(col, pa.string())
    out = np.empty(len(col), dtype=object)
    out[:] = col.to_pylist()
    return out


def _parse_float(s) -> float | None:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def _text_numeric_share(vals: np.ndarray) -> float:
    present = [v for v in vals if v is not None and str(v).strip() != ""]
    if not present:
        return 0.0
    return sum(_parse_float(v) is not None for v in present) / len(present)


def numeric_column(tab: Table, name: str, role: str) -> np.ndarray:
    """One column as float64, with clear errors for missing and non-numeric values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = tab.column(name)
    if _is_numeric_type(col.type):
        vals = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(float)
    elif _is_text_type(col.type):
        text = _as_text(col)
        vals = np.empty(len(text))
        for i, v in enumerate(text):
            if v is None or str(v).strip() == "":
                vals[i] = np.nan
                continue
            f = _parse_float(v)
            if f is None:
                hint = f" (or pass --categorical {name} if it holds categories)" if role == "input" else ""
                raise DataError(
                    f"{role} column '{name}' of {tab.path} holds the non-numeric value {str(v)[:40]!r} in "
                    f"{tab.where(i)}; a numeric column needs a number in every row: fix that value{hint}"
                )
            vals[i] = f
    else:
        raise DataError(f"{role} column '{name}' of {tab.path} has type {col.type}, which moekit cannot use; "
                        "convert it to numbers or text")
    bad = np.flatnonzero(np.isnan(vals))
    if len(bad):
        raise DataError(
            f"{role} column '{name}' of {tab.path} has {len(bad)} missing value(s) (first in {tab.where(int(bad[0]))}); "
            "remove those rows or fill them in"
        )
    bad = np.flatnonzero(~np.isfinite(vals))
    if len(bad):
        raise DataError(f"{role} column '{name}' of {tab.path} holds an infinite value in {tab.where(int(bad[0]))}")
    return vals


def text_column(tab: Table, name: str, role: str) -> np.ndarray:
    vals = _as_text(tab.column(name))
    for i, v in enumerate(vals):
        if v is None or str(v).strip() == "":
            raise DataError(f"{role} column '{name}' of {tab.path} has a missing value in {tab.where(i)}; "
                            "remove that row or fill it in")
    return np.asarray([str(v) for v in vals], dtype=object)


_MAX_LEVELS = 200


def build_schema(tab: Table, targets, features, categorical, task: str) -> dict:
    """How to turn a table into X and y: the columns, their kinds and categorical levels."""
    tab.require(targets, "target")
    if len(set(targets)) != len(targets):
        raise UsageError(f"--target lists a column twice: {targets}")
    if features is None:
        features = [c for c in tab.names if c not in targets]
        if not features:
            raise DataError(f"{tab.path} has no column left for inputs once the target column(s) {targets} are taken")
    else:
        tab.require(features, "input")
        both = sorted(set(features) & set(targets))
        if both:
            raise UsageError(f"column(s) {both} are both --target and --features; a column is one or the other")
    categorical = list(categorical or [])
    for c in categorical:
        if c not in features:
            raise UsageError(f"--categorical names '{c}', which is not an input column ({', '.join(features)})")
    feats = []
    for c in features:
        col = tab.column(c)
        is_cat = c in categorical
        if not is_cat and _is_text_type(col.type):
            text = _as_text(col)
            if _text_numeric_share(text) >= 0.5:
                numeric_column(tab, c, "input")  # raises on the first non-numeric value
            else:
                is_cat = True
        if is_cat:
            vals = text_column(tab, c, "input")
            levels = sorted(set(vals.tolist()))
            if len(levels) > _MAX_LEVELS:
                raise DataError(f"input column '{c}' of {tab.path} has {len(levels)} distinct text values, too many "
                                f"for categories (at most {_MAX_LEVELS}); is it an identifier? leave it out with --features")
            feats.append({"name": c, "kind": "categorical", "levels": levels})
        else:
            numeric_column(tab, c, "input")
            feats.append({"name": c, "kind": "numeric"})
    encoded = []
    for f in feats:
        if f["kind"] == "numeric":
            encoded.append(f["name"])
        else:
            encoded.extend(f"{f['name']}={lv}" for lv in f["levels"][1:])
    if not encoded:
        raise DataError("every input column is a category with a single value: there is nothing to learn from; "
                        "choose other --features")
    return {"features": feats, "encoded_features": encoded, "targets": list(targets), "task": task}


def encode_features(tab: Table, schema: dict) -> np.ndarray:
    """X as the model saw it in training: numeric columns as they are, categories one-hot (reference = first level)."""
    tab.require([f["name"] for f in schema["features"]], "input")
    cols = []
    for f in schema["features"]:
        if f["kind"] == "numeric":
            cols.append(numeric_column(tab, f["name"], "input")[:, None])
            continue
        vals = text_column(tab, f["name"], "input")
        levels = f["levels"]
        index = {lv: i for i, lv in enumerate(levels)}
        unknown = [(i, v) for i, v in enumerate(vals) if v not in index]
        if unknown:
            i, v = unknown[0]
            shown = ", ".join(levels[:10]) + (" ..." if len(levels) > 10 else "")
            raise DataError(f"input column '{f['name']}' of {tab.path} holds the category {v!r} in {tab.where(i)}, "
                            f"which the model never saw in training (known: {shown})")
        idx = np.array([index[v] for v in vals])
        onehot = np.zeros((tab.n, max(len(levels) - 1, 0)))
        rows = np.flatnonzero(idx > 0)
        onehot[rows, idx[rows] - 1] = 1.0
        cols.append(onehot)
    return np.hstack(cols)


def encode_targets(tab: Table, schema: dict, classes=None) -> np.ndarray:
    targets = schema["targets"]
    tab.require(targets, "target")
    if schema["task"] == "classification":
        name = targets[0]
        col = tab.column(name)
        if classes is not None and np.asarray(classes).dtype.kind in "biuf":
            vals = numeric_column(tab, name, "target")
            if np.asarray(classes).dtype.kind in "biu":
                if not np.all(vals == np.round(vals)):
                    raise DataError(f"target column '{name}' of {tab.path} holds non-integer labels; the model's "
                                    f"classes are {list(classes)}")
                vals = vals.astype(np.asarray(classes).dtype)
            return vals
        if _is_numeric_type(col.type) and classes is None:
            vals = numeric_column(tab, name, "target")
            return vals.astype(np.int64) if np.all(vals == np.round(vals)) else vals
        return text_column(tab, name, "target").astype(str)
    ys = []
    for t in targets:
        col = tab.column(t)
        if _is_text_type(col.type) and _text_numeric_share(_as_text(col)) < 0.5:
            ex = next((v for v in _as_text(col) if v is not None), None)
            raise DataError(f"target column '{t}' of {tab.path} holds text (e.g. {str(ex)[:40]!r}); regression needs "
                            "numbers: fix the column, or pass --task classification to predict it as a class label")
        ys.append(numeric_column(tab, t, "target"))
    return ys[0] if len(ys) == 1 else np.column_stack(ys)


def _summary(tab: Table, schema: dict) -> dict:
    cols = {}
    for f in schema["features"]:
        if f["kind"] == "numeric":
            v = numeric_column(tab, f["name"], "input")
            cols[f["name"]] = {"kind": "numeric", "min": float(v.min()), "max": float(v.max()),
                               "mean": float(v.mean()), "std": float(v.std())}
        else:
            v = text_column(tab, f["name"], "input")
            lv, cnt = np.unique(v, return_counts=True)
            cols[f["name"]] = {"kind": "categorical", "counts": {str(a): int(b) for a, b in zip(lv, cnt)}}
    for t in schema["targets"]:
        if schema["task"] == "classification":
            v = text_column(tab, t, "target")
            lv, cnt = np.unique(v, return_counts=True)
            cols[t] = {"kind": "target (classes)", "counts": {str(a): int(b) for a, b in zip(lv, cnt)}}
        else:
            v = numeric_column(tab, t, "target")
            cols[t] = {"kind": "target", "min": float(v.min()), "max": float(v.max()),
                       "mean": float(v.mean()), "std": float(v.std())}
    return {"file": os.path.basename(tab.path), "rows": int(tab.n), "columns": cols}


def write_table(columns: dict, path: str) -> None:
    """Write named 1-D arrays as CSV (or to stdout with '-') or Parquet; NaN becomes an empty cell."""
    pa = _pa()
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    arrays = []
    for v in columns.values():
        v = np.asarray(v)
        if v.dtype.kind == "f":
            arrays.append(pa.array(v, mask=np.isnan(v)))
        elif v.dtype.kind in "biu":
            arrays.append(pa.array(v))
        else:
            arrays.append(pa.array([None if x is None else str(x) for x in v], type=pa.string()))
    table = pa.Table.from_arrays(arrays, names=list(columns))
    if path == "-":
        buf = pa.BufferOutputStream()
        pcsv.write_csv(table, buf)
        sys.stdout.write(buf.getvalue().to_pybytes().decode("utf-8"))
        sys.stdout.flush()
        return
    try:
        if _out_kind(path) == "parquet":
            pq.write_table(table, path)
        else:
            opts = pcsv.WriteOptions(delimiter=_CSV.get(os.path.splitext(path)[1].lower(), ","))
            pcsv.write_csv(table, path, write_options=opts)
    except OSError as e:
        raise DataError(f"cannot write '{path}': {_one_line(e)}") from None


def _out_kind(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext in _CSV:
        return "csv"
    if ext in _PARQUET:
        return "parquet"
    raise UsageError(f"cannot tell the format of the output '{path}' from its extension; use .csv, .tsv or .parquet")


def _check_out_folder(path: str, what: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise DataError(f"cannot write the {what} '{path}': the folder '{folder}' does not exist")


# ============================================================== helpers
def _progress(total: int, desc: str, args):
    """A tqdm bar on a terminal; silent in pipes, files and with --quiet."""
    quiet = getattr(args, "quiet", False) or not sys.stderr.isatty()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return _NoBar()
    return tqdm(total=total, desc=desc, disable=quiet, file=sys.stderr, leave=False, dynamic_ncols=True)


class _NoBar:  # pragma: no cover - used only without tqdm
    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _say(args, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr)


_SMALL_ROWS = 50_000


def _set_threads(args, n_rows: int) -> None:
    """Small problems run fastest single-threaded (and do not stall on a busy machine)."""
    import torch

    n = getattr(args, "threads", None)
    if n is None and n_rows < _SMALL_ROWS:
        n = 1
    if n is not None:
        torch.set_num_threads(int(n))


def _check_device(dev):
    if dev is None:
        return None
    import torch

    try:
        d = torch.device(dev)
    except (RuntimeError, TypeError):
        raise UsageError(f"--device {dev!r} is not a device name; use cpu, cuda or cuda:N") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {dev}: this machine has no CUDA GPU that torch can use; use --device cpu")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise UsageError(f"--device {dev}: there are only {torch.cuda.device_count()} CUDA device(s)")
    elif d.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError(f"--device {dev}: MPS is not available here; use --device cpu")
    elif d.type != "cpu":
        raise UsageError(f"--device {dev!r}: moekit runs on cpu, cuda or mps")
    return str(d)


def _parse_k(spec: str) -> list[int]:
    s = spec.strip()
    try:
        if ".." in s:
            a, b = s.split("..", 1)
            ks = list(range(int(a), int(b) + 1))
        elif "-" in s[1:]:
            a, b = s.split("-", 1)
            ks = list(range(int(a), int(b) + 1))
        else:
            ks = sorted({int(p) for p in s.split(",") if p.strip()})
    except ValueError:
        raise UsageError(f"--select-k {spec!r}: give a range such as 1..8 or a list such as 2,3,5") from None
    if not ks or min(ks) < 1 or max(ks) > 64:
        raise UsageError(f"--select-k {spec!r}: the numbers of experts must lie between 1 and 64")
    return ks


@contextlib.contextmanager
def _collect_warnings(args):
    """Show library warnings as one line each (after the work), or not at all with --quiet."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen = set()
    for w in caught:
        msg = _one_line(w.message)
        if msg in seen or issubclass(w.category, DeprecationWarning):
            continue
        seen.add(msg)
        _say(args, f"moekit: warning: {msg}")


def _load_model(path: str, device=None):
    from .io import ModelFileError, load, read_info

    if not os.path.exists(path):
        raise DataError(f"model file '{path}' does not exist; {_MODEL_EXT_HINT}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est = load(path, device=device)
        info = read_info(path)
    except ModelFileError as e:
        raise DataError(_one_line(e)) from None
    for w in caught:
        print(f"moekit: warning: {_one_line(w.message)}", file=sys.stderr)
    return est, info


def _schema_of(est, info, args) -> dict:
    """The column schema stored by 'moekit fit', or one made from the options for models saved from Python."""
    meta = info.get("metadata") or {}
    cli = meta.get("cli") if isinstance(meta, dict) else None
    if isinstance(cli, dict) and "features" in cli:
        return cli
    task = "classification" if hasattr(est, "classes_") else "regression"
    feats = getattr(args, "features", None)
    if feats is None:
        names = getattr(est, "feature_names_in_", None)
        if names is None:
            raise UsageError("this model was saved from Python without column names; pass --features COL ... "
                             f"(its {est.n_features_in_} input columns, in order)")
        feats = [str(n) for n in names]
    if len(feats) != int(est.n_features_in_):
        raise UsageError(f"--features names {len(feats)} column(s) but the model takes {est.n_features_in_} inputs")
    targets = getattr(args, "target", None) or ["y"]
    return {"features": [{"name": f, "kind": "numeric"} for f in feats], "encoded_features": list(feats),
            "targets": list(targets), "task": task}


def _predict_frame(est, X):
    """X as the estimator wants it (a DataFrame when it was fitted with column names)."""
    names = getattr(est, "feature_names_in_", None)
    if names is None:
        return X
    import pandas as pd

    return pd.DataFrame(X, columns=list(names))


# ================================================================ fit
_EXPERTS = ("linear", "poisson", "student_t", "mlp", "logistic")


def _estimator_for(args, task: str, k: int):
    kind = args.model
    expert = args.expert
    common = {"random_state": args.seed, "device": args.device or "cpu"}
    if kind == "moe":
        from .estimators import MoEClassifier, MoERegressor

        kw = dict(common, n_experts=k, n_init=args.n_init, max_iter=args.max_iter)
        if task == "classification":
            return MoEClassifier(expert=expert or "logistic", **kw)
        return MoERegressor(expert=expert or "linear", **kw)
    if kind == "hme":
        try:
            from .estimators import HMEClassifier, HMERegressor
        except ImportError:
            raise UsageError("--model hme needs moekit.hme, which this installation of moekit does not have") from None
        kw = dict(common, depth=args.depth, branching=k, n_init=args.n_init, max_iter=args.max_iter)
        if task == "classification":
            return HMEClassifier(expert=expert or "logistic", **kw)
        return HMERegressor(expert=expert or "linear", **kw)
    try:
        from .mdn import MDNRegressor
    except ImportError:
        raise UsageError("--model mdn needs moekit.mdn's MDNRegressor, which this installation of moekit does not have") from None
    kw = dict(common, n_components=k, max_epochs=args.max_iter, target_noise=args.target_noise)
    return MDNRegressor(**kw)


def _check_fit_options(args, task: str, n_targets: int) -> None:
    e = args.expert
    if args.model == "mdn":
        if task == "classification":
            raise UsageError("--model mdn is for regression; to classify use --model moe or hme with --expert logistic")
        if e not in (None, "linear"):
            raise UsageError(f"--expert {e} does not apply to --model mdn (its components are Gaussian)")
    if task == "classification":
        if n_targets != 1:
            raise UsageError("classification takes exactly one --target column (the class labels)")
        if e not in (None, "logistic", "mlp"):
            raise UsageError(f"--expert {e} is for regression; classification uses --expert logistic or mlp")
    else:
        if e == "logistic":
            raise UsageError("--expert logistic is for class labels; pass --task classification (or a text target)")
        if e == "poisson" and n_targets != 1:
            raise UsageError("--expert poisson models one count target; give one --target column")
    if args.model != "hme" and (args.depth is not None or args.branching is not None):
        raise UsageError("--depth and --branching apply to --model hme only")
    if args.model != "mdn" and args.target_noise:
        raise UsageError("--target-noise applies to --model mdn only")


def _fit_one(args, task, X, y, k):
    est = _estimator_for(args, task, k)
    try:
        est.fit(X, y)
    except (ValueError, TypeError, FloatingPointError, RuntimeError) as e:
        raise DataError(f"fitting a model with {k} expert(s) failed: {_one_line(e)}") from None
    return est


def cmd_fit(args) -> int:
    args.device = _check_device(args.device)
    if args.model == "hme":
        args.depth = 2 if args.depth is None else args.depth
        if args.depth < 1:
            raise UsageError(f"--depth must be at least 1, got {args.depth}")
    if args.experts is not None and args.select_k is not None:
        raise UsageError("give --experts K or --select-k RANGE, not both")
    if args.model == "hme" and args.branching is not None and (args.experts is not None or args.select_k is not None):
        raise UsageError("for --model hme, --branching, --experts and --select-k all set the branching; give one")
    ks = _parse_k(args.select_k) if args.select_k is not None else None
    out = args.output
    _check_out_folder(out, "model file")
    tab = read_table(args.data)
    _set_threads(args, tab.n)
    tab.require(args.target, "target")
    task = args.task
    if task == "auto":
        task = "regression"
        if args.expert == "logistic":
            task = "classification"
        elif len(args.target) == 1:
            col = tab.column(args.target[0])
            if _is_text_type(col.type) and _text_numeric_share(_as_text(col)) < 0.5:
                task = "classification"
    _check_fit_options(args, task, len(args.target))
    schema = build_schema(tab, args.target, args.features, args.categorical, task)
    X = encode_features(tab, schema)
    y = encode_targets(tab, schema)
    if task == "classification" and len(np.unique(y)) < 2:
        raise DataError(f"target column '{args.target[0]}' of {tab.path} has a single class; a classifier needs two or more")
    k_default = args.branching if args.model == "hme" and args.branching is not None else (args.experts or 2)
    candidates = ks or [k_default]
    selection = None
    t0 = time.perf_counter()
    with _collect_warnings(args):
        if ks is None:
            bar = _progress(1, "fitting", args)
            est = _fit_one(args, task, X, y, candidates[0])
            bar.update(1)
            bar.close()
        else:
            est, selection = _select_k(args, task, X, y, ks)
    seconds = time.perf_counter() - t0
    meta = {"cli": dict(schema, training_data=_summary(tab, schema), selection=selection,
                        command="moekit " + " ".join(shlex.quote(a) for a in getattr(args, "argv", ["fit"])),
                        fit_seconds=round(seconds, 3))}
    from .io import ModelFileError, save

    try:
        save(est, out, metadata=meta)
    except ModelFileError as e:
        raise DataError(_one_line(e)) from None
    except OSError as e:
        raise DataError(f"cannot write the model file '{out}': {_one_line(e)}") from None
    if selection is not None and not args.quiet:
        crit = selection["criterion"]
        what = {"hme": "branching", "mdn": "number of components"}.get(args.model, "number of experts")
        print(f"{crit} by {what}:")
        for k, v in selection["scores"].items():
            mark = "  <- chosen" if int(k) == selection["chosen"] else ""
            print(f"  K={k:>2}  {v:.6g}{mark}")
    if not args.quiet:
        ll = est.score_samples(_predict_frame(est, X), y)
        print(f"fitted {type(est).__name__} ({_size_text(est)}) on {tab.n} rows, {X.shape[1]} input column(s) -> "
              f"{'classes of ' if task == 'classification' else ''}{', '.join(schema['targets'])}: "
              f"log-likelihood {ll.sum():.6g}, {seconds:.1f} s; saved to {out}")
    return 0


def _size_text(est) -> str:
    if hasattr(est, "n_leaves_"):
        return f"{est.n_leaves_} leaves, depth {est.depth_}"
    if hasattr(est, "n_components"):
        return f"{est.n_components} components"
    return f"{est.n_experts_} experts"


def _select_k(args, task, X, y, ks):
    """BIC on the whole data (MoE, HME) or held-out log-likelihood (MDN); refit the best on all rows."""
    scores = {}
    models = {}
    bar = _progress(len(ks), "choosing K", args)
    if args.model == "mdn":
        rng = np.random.default_rng(args.seed)
        perm = rng.permutation(len(X))
        n_val = max(1, int(round(0.2 * len(X))))
        val, tr = perm[:n_val], perm[n_val:]
        for k in ks:
            bar.set_postfix_str(f"K={k}")
            est = _fit_one(args, task, X[tr], y[tr], k)
            scores[str(k)] = float(np.mean(est.score_samples(X[val], y[val])))
            bar.update(1)
        bar.close()
        best = max(ks, key=lambda k: scores[str(k)])
        est = _fit_one(args, task, X, y, best)
        crit = "held-out mean log-likelihood (higher is better)"
    else:
        for k in ks:
            bar.set_postfix_str(f"K={k}")
            est = _fit_one(args, task, X, y, k)
            scores[str(k)] = float(est.bic(_predict_frame(est, X), y))
            models[k] = est
            bar.update(1)
        bar.close()
        best = min(ks, key=lambda k: scores[str(k)])
        est = models[best]
        crit = "BIC (lower is better)"
    return est, {"criterion": crit, "scores": scores, "chosen": int(best)}


# ============================================================ predict
_WHATS = ("mean", "modes", "quantiles", "interval", "samples", "gate")


def _target_names(schema, est, dist=None) -> list[str]:
    t = list(schema["targets"])
    if dist is not None and len(dist.event_shape) == 1 and len(t) != dist.event_shape[0]:
        t = [f"y{j}" for j in range(dist.event_shape[0])]
    return t


def cmd_predict(args) -> int:
    import torch

    dev = _check_device(args.device)
    if args.output != "-":
        _out_kind(args.output)
        _check_out_folder(args.output, "output")
    est, info = _load_model(args.model, dev)
    schema = _schema_of(est, info, args)
    clf = schema["task"] == "classification"
    if clf and args.what in ("modes", "quantiles", "interval"):
        raise UsageError(f"--what {args.what} is for regression models; this model classifies "
                         "(use --what mean for labels and probabilities, samples or gate)")
    tab = read_table(args.data)
    _set_threads(args, tab.n)
    if args.keep:
        tab.require(args.keep, "--keep")
    X = _predict_frame(est, encode_features(tab, schema))
    cols: dict = {}
    for c in args.keep or []:
        col = tab.column(c)
        cols[c] = numeric_column(tab, c, "kept") if _is_numeric_type(col.type) else _as_text(col)
    try:
        with torch.no_grad(), _collect_warnings(args):
            _predict_columns(args, est, schema, X, cols)
    except (ValueError, TypeError) as e:
        raise DataError(f"prediction failed: {_one_line(e)}") from None
    write_table(cols, args.output)
    if args.output != "-":
        _say(args, f"wrote {tab.n} rows x {len(cols)} columns ({args.what}) to {args.output}")
    return 0


def _predict_columns(args, est, schema, X, cols) -> None:
    from .plotting import _leaves, marginal

    dist = est.predict_distribution(X)
    clf = schema["task"] == "classification"
    tnames = _target_names(schema, est, dist)
    what = args.what
    if what == "mean":
        if clf:
            p = est.predict_proba(X)
            cols[f"{tnames[0]}_predicted"] = est.predict(X)
            for j, c in enumerate(est.classes_):
                cols[f"p_{c}"] = p[:, j]
            return
        m = dist.mean.cpu().numpy().reshape(len(X), -1)
        for j, t in enumerate(tnames):
            cols[f"{t}_mean"] = m[:, j]
        return
    if what == "gate":
        lw, leaves = _leaves(dist)
        nested = lw.shape[1] != dist.log_weights.shape[1] or hasattr(est, "n_leaves_")
        w = lw.exp().cpu().numpy()
        for k in range(w.shape[1]):
            cols[f"leaf{k}" if nested else f"gate{k}"] = w[:, k]
        return
    if what == "samples":
        s = est.sample_y(X, n_samples=args.n_samples, random_state=args.seed)
        if clf:
            s = est.classes_[s.astype(int)]
        s = s.reshape(len(X), -1, args.n_samples) if s.ndim == 3 else s[:, None, :]
        for j, t in enumerate(tnames):
            for i in range(args.n_samples):
                cols[f"{t}_sample{i + 1}"] = s[:, j, i]
        return
    if what == "quantiles" or what == "interval":
        qs = list(args.quantiles) if what == "quantiles" else [(1 - args.level) / 2, (1 + args.level) / 2]
        for q in qs:
            if not 0 < q < 1:
                raise UsageError(f"quantile levels must lie strictly between 0 and 1, got {q}")
        for j, t in enumerate(tnames):
            try:
                mj = marginal(dist, j)
            except TypeError as e:
                raise UsageError(f"--what {what}: {_one_line(e)}") from None
            q = mj.quantiles(qs).cpu().numpy()
            if what == "interval":
                cols[f"{t}_lower"], cols[f"{t}_upper"] = q[:, 0], q[:, 1]
            else:
                for i, lv in enumerate(qs):
                    cols[f"{t}_q{lv:g}"] = q[:, i]
        return
    # modes
    try:
        from .inference import find_modes
    except ImportError:
        raise UsageError("--what modes needs moekit.inference, which this installation does not have") from None
    try:
        m = find_modes(dist, max_modes=args.max_modes, min_weight=args.min_weight).numpy()
    except TypeError as e:
        raise UsageError(f"--what modes: {_one_line(e)}") from None
    modes = m.modes if m.modes.ndim == 3 else m.modes[:, :, None]
    cols["n_modes"] = np.asarray(m.n_modes).astype(np.int64)
    for i in range(modes.shape[1]):
        for j, t in enumerate(tnames):
            cols[f"{t}_mode{i + 1}"] = modes[:, i, j]
        cols[f"mode{i + 1}_weight"] = m.weights[:, i]


# =========================================================== evaluate
def _eval_data(args):
    dev = _check_device(args.device)
    est, info = _load_model(args.model, dev)
    schema = _schema_of(est, info, args)
    tab = read_table(args.data)
    _set_threads(args, tab.n)
    X = _predict_frame(est, encode_features(tab, schema))
    y = encode_targets(tab, schema, getattr(est, "classes_", None))
    return est, info, schema, tab, X, y


def cmd_evaluate(args) -> int:
    from .report import _LABELS, _fmt, compute_metrics

    if not 0 < args.level < 1:
        raise UsageError(f"--level must lie strictly between 0 and 1, got {args.level}")
    est, info, schema, tab, X, y = _eval_data(args)
    try:
        with _collect_warnings(args):
            m = compute_metrics(est, X, y, level=args.level)
    except (ValueError, TypeError) as e:
        raise DataError(f"evaluation failed: {_one_line(e)}") from None
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    width = max(len(_LABELS.get(k, k)) for k in m)
    print(f"{type(est).__name__} on {tab.path} ({tab.n} rows)")
    for k, v in m.items():
        print(f"  {_LABELS.get(k, k).ljust(width)}  {_fmt(v)}")
    return 0


def cmd_report(args) -> int:
    from .report import make_report

    if not args.output.lower().endswith((".html", ".htm")):
        raise UsageError(f"the report is an HTML page; give -o a name ending in .html, got '{args.output}'")
    _check_out_folder(args.output, "report")
    est, info, schema, tab, X, y = _eval_data(args)
    bar = _progress(1, "drawing the report", args)
    try:
        with _collect_warnings(args):
            make_report(est, X, y, args.output, title=args.title or f"moekit report: {os.path.basename(args.model)}",
                        feature_names=schema["encoded_features"], target_names=None if schema["task"] == "classification"
                        else _target_names(schema, est), level=args.level,
                        notes=f"Model file {os.path.basename(args.model)}, evaluated on {os.path.basename(tab.path)}.")
    except (ValueError, TypeError) as e:
        raise DataError(f"the report failed: {_one_line(e)}") from None
    except OSError as e:
        raise DataError(f"cannot write the report '{args.output}': {_one_line(e)}") from None
    bar.update(1)
    bar.close()
    _say(args, f"wrote {args.output}")
    return 0


# =============================================================== info
def cmd_info(args) -> int:
    from .report import describe_model

    est, info = _load_model(args.model, _check_device(args.device))
    meta = info.get("metadata") or {}
    cli = meta.get("cli") if isinstance(meta, dict) else None
    fn = cli.get("encoded_features") if cli else None
    tn = cli.get("targets") if cli and cli.get("task") != "classification" else None
    n_tensors = len(info["state_dict"])
    n_numbers = int(sum(int(np.prod(s)) for _, s in info["state_dict"].values()))
    if args.json:
        out = {
            "file": args.model, "file_size": info["file_size"], "format_version": info["format_version"],
            "moekit_version": info["moekit_version"], "torch_version": info["torch_version"],
            "estimator": info["estimator"], "params": info["params"], "description": describe_model(est, fn, tn),
            "tensors": n_tensors, "numbers": n_numbers, "tree": [{k: v for k, v in n.items() if k != "attrs"}
                                                                  for n in info["tree"]],
            "training": cli,
        }
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"{args.model}: moekit model file, format version {info['format_version']}, {info['file_size']} bytes")
    print(f"  written by moekit {info['moekit_version']} with torch {info['torch_version']}")
    print(f"  {n_tensors} tensors, {n_numbers} numbers; checksum sha256 {str(info.get('checksum'))[:16]}...")
    print(describe_model(est, fn, tn))
    params = ", ".join(f"{k}={v!r}" for k, v in sorted(info["params"].items()))
    print(f"  parameters: {params}")
    if cli:
        td = cli.get("training_data", {})
        print(f"  trained on {td.get('file', '?')}: {td.get('rows', '?')} rows")
        for name, s in td.get("columns", {}).items():
            if "counts" in s:
                cnt = ", ".join(f"{a}: {b}" for a, b in list(s["counts"].items())[:8])
                print(f"    {name} ({s['kind']}): {cnt}")
            else:
                print(f"    {name} ({s['kind']}): min {s['min']:.4g}, max {s['max']:.4g}, mean {s['mean']:.4g}, "
                      f"std {s['std']:.4g}")
        cats = [f for f in cli["features"] if f["kind"] == "categorical"]
        for f in cats:
            print(f"  one-hot encoded: {f['name']} -> levels {f['levels']} (reference: {f['levels'][0]})")
        sel = cli.get("selection")
        if sel:
            print(f"  K chosen by {sel['criterion']}: {sel['chosen']} (scores {sel['scores']})")
        if cli.get("command"):
            print(f"  command: {cli['command']}")
    return 0


# =============================================================== demo
def cmd_demo(args) -> int:
    args.device = _check_device(args.device) or "cpu"
    out = args.output or os.path.join("moekit-output", f"demo-{args.name}")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the output folder '{out}': {_one_line(e)}") from None
    _set_threads(args, 0)
    run = {"robot-arm": _demo_robot_arm, "inverse-sine": _demo_inverse_sine, "tone": _demo_tone,
           "tracking": _demo_tracking}[args.name]
    t0 = time.perf_counter()
    with _collect_warnings(args):
        files = run(out, args)
    if not args.quiet:
        print(f"\nwrote to {out}/ in {time.perf_counter() - t0:.1f} s:")
        for f in files:
            print(f"  {f}")
    return 0


def _fig(w, h, nrows=1, ncols=1, **kw):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def _save_fig(fig, out, name, files) -> bytes:
    from .report import figure_to_png

    png = figure_to_png(fig, dpi=110)
    with open(os.path.join(out, name), "wb") as f:
        f.write(png)
    files.append(name)
    return png


def _mixture_for_demo(args, n_components_mdn, mdn_kw):
    """The demos' mixture density network, and its label."""
    from .mdn import MDNRegressor

    return MDNRegressor(n_components=n_components_mdn, random_state=args.seed, device=args.device, reseed_dead=True,
                        **mdn_kw), "MDN"


def _branches_of(dist, min_weight):
    """Modes (branches) of each row's p(y | x): (modes (n, M, d) or (n, M), weights (n, M)), NaN padded."""
    from .inference import find_modes

    m = find_modes(dist, min_weight=min_weight).numpy()
    return m.modes, m.weights


def _demo_robot_arm(out, args) -> list:
    """Inverse kinematics of a two-link arm: one averaged answer against every branch."""
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from .datasets import make_robot_arm
    from .plotting import plot_robot_arm
    from .report import make_report

    files: list = []
    bar = _progress(5, "robot-arm demo", args)
    rng = np.random.default_rng(args.seed)
    s_train, s_test, s_mlp = (int(v) for v in rng.integers(0, 2**31 - 1, size=3))
    X, Y, forward = make_robot_arm(1500, random_state=s_train)
    Xt, Yt, _ = make_robot_arm(500, random_state=s_test)
    bar.set_postfix_str("MLP")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the MLP's own convergence chatter
        mlp = make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(32, 32), max_iter=400,
                                                           random_state=s_mlp)).fit(X, Y)
    bar.update(1)
    bar.set_postfix_str("mixture")
    mix, kind = _mixture_for_demo(args, 4, dict(hidden_layer_sizes=(32, 32), max_epochs=200, batch_size=256,
                                                   learning_rate=1e-2))
    mix.fit(X, Y)
    bar.update(1)
    bar.set_postfix_str("branches")
    import torch

    with torch.no_grad():
        dist = mix.predict_distribution(Xt)
    modes, weights = _branches_of(dist, min_weight=0.1)
    ok = np.isfinite(weights)
    mlp_err = np.linalg.norm(forward(mlp.predict(Xt)) - Xt, axis=1)
    mean_err = np.linalg.norm(forward(mix.predict(Xt)) - Xt, axis=1)
    top_err = np.linalg.norm(forward(modes[:, 0]) - Xt, axis=1)
    branch_err = np.concatenate([np.linalg.norm(forward(modes[ok[:, i], i]) - Xt[ok[:, i]], axis=1)
                                 for i in range(modes.shape[1])])
    n_br = ok.sum(1)
    bar.update(1)
    if not args.quiet:
        print(f"robot arm inverse kinematics: predict the joint angles that put the hand at (x1, x2)\n"
              f"{len(X)} training and {len(Xt)} test positions; error = distance of the hand from the target "
              f"(arm length 1.0)\n")
        print(f"  {'MLP regressor (one averaged answer)':<44} {mlp_err.mean():.4f}")
        print(f"  {kind + ' conditional mean (same averaging)':<44} {mean_err.mean():.4f}")
        print(f"  {kind + ' top branch':<44} {top_err.mean():.4f}")
        print(f"  {kind + ' every branch (mean over branches)':<44} {branch_err.mean():.4f}   "
              f"({n_br.mean():.2f} branches per position; {np.mean(n_br >= 2):.0%} of positions have two)")
        print(f"\n  the MLP's averaged angles miss the target {mlp_err.mean() / max(branch_err.mean(), 1e-12):.0f} "
              "times farther than each branch the mixture finds")
    bar.set_postfix_str("plots")
    # three test positions where both branches carry real weight
    # three test positions, far apart, where both branches carry weight and the MLP misses most
    two = np.flatnonzero((n_br >= 2) & (np.nan_to_num(weights[:, 1]) > 0.3))
    pick: list = []
    for i in list(two[np.argsort(-mlp_err[two])]) + list(range(len(Xt))):
        if len(pick) == 3:
            break
        if all(np.linalg.norm(Xt[i] - Xt[j]) > 0.2 for j in pick):
            pick.append(int(i))
    pick = np.asarray(pick)
    fig, axes = _fig(11, 3.9, 1, 3)
    mlp_pred = mlp.predict(Xt[pick])
    colors = ["#1f77b4", "#2ca02c", "#9467bd"]
    for c, i in enumerate(pick):
        ax = axes[0, c]
        plot_robot_arm(mlp_pred[c], ax=ax, color="#d62728", alpha=0.9, linewidth=2,
                       label=f"MLP average (misses by {mlp_err[i]:.3f})")
        ax.lines[-1].set_linestyle("--")
        for b in range(int(n_br[i])):
            plot_robot_arm(modes[i, b], ax=ax, color=colors[b % 3], linewidth=2.5, target=Xt[i] if b == 0 else None,
                           label=f"{kind} branch {b + 1}, p = {weights[i, b]:.2f}")
        ax.set_xlim(-0.35, 1.05)
        ax.set_ylim(-0.15, 1.15)
        ax.legend(loc="lower left", fontsize=7.5, framealpha=0.85)
        ax.set_title(f"target ({Xt[i, 0]:.2f}, {Xt[i, 1]:.2f})", fontsize=10)
    fig.suptitle("Inverse kinematics: the MLP averages elbow-up and elbow-down; the mixture keeps both", fontsize=11)
    arm_png = _save_fig(fig, out, "robot_arm.png", files)
    fig, axes = _fig(6.5, 4.2)
    ax = axes[0, 0]
    ax.hist([mlp_err, branch_err], bins=np.logspace(-4, 0, 40), label=["MLP (averaged)", f"{kind}, every branch"],
            color=["#d62728", "#1f77b4"], alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("distance of the hand from the target")
    ax.set_ylabel("test positions")
    ax.legend()
    err_png = _save_fig(fig, out, "forward_error.png", files)
    bar.update(1)
    bar.set_postfix_str("report")
    path = os.path.join(out, "model.moekit")
    try:
        mix.save(path)
        files.append("model.moekit")
    except ValueError as e:  # a model that cannot be stored without pickle: say so, carry on
        _say(args, f"moekit: warning: the model was not saved: {_one_line(e)}")
    make_report(mix, Xt, Yt, os.path.join(out, "report.html"), title="moekit demo: robot-arm inverse kinematics",
                feature_names=["x1", "x2"], target_names=["theta1", "theta2"],
                notes=f"Two-link arm (L1 = 0.8, L2 = 0.2); {len(X)} training positions, report on {len(Xt)} test "
                      f"positions. Mean forward error: MLP {mlp_err.mean():.4f}; {kind} top branch "
                      f"{top_err.mean():.4f}; every branch {branch_err.mean():.4f}.",
                extra_figures=[("Arm configurations", "Red dashed: the MLP's averaged angles. Solid: the branches "
                                "(modes of p(angles | position)) with their probabilities. Cross: the target.", arm_png),
                               ("Forward error", "Distance of the hand from the target for every test position.",
                                err_png)])
    files.append("report.html")
    bar.update(1)
    bar.close()
    return files


def _demo_inverse_sine(out, args) -> list:
    """Bishop's inverse sine: where x has three inverse branches, the mean falls between them."""
    import torch
    from sklearn.neural_network import MLPRegressor

    from .datasets import make_inverse_sine
    from .plotting import plot_conditional_density
    from .report import make_report

    files: list = []
    bar = _progress(4, "inverse-sine demo", args)
    rng = np.random.default_rng(args.seed)
    s_train, s_test, s_mlp = (int(v) for v in rng.integers(0, 2**31 - 1, size=3))
    X, y = make_inverse_sine(1000, random_state=s_train)
    Xt, yt = make_inverse_sine(1000, random_state=s_test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPRegressor(hidden_layer_sizes=(20,), solver="lbfgs", max_iter=2000, random_state=s_mlp).fit(X, y)
    bar.update(1)
    mix, kind = _mixture_for_demo(args, 3, dict(hidden_layer_sizes=(20,), max_epochs=300, batch_size=128,
                                                  learning_rate=1e-2))
    mix.fit(X, y)
    bar.update(1)
    with torch.no_grad():
        dist = mix.predict_distribution(Xt)
    modes, weights = _branches_of(dist, min_weight=0.05)
    n_br = np.isfinite(weights).sum(1)
    mlp_rmse = float(np.sqrt(np.mean((mlp.predict(Xt) - yt) ** 2)))
    top_rmse = float(np.sqrt(np.mean((modes[:, 0] - yt) ** 2)))
    near = np.nanmin(np.abs(modes - yt[:, None]), axis=1)
    region = (Xt[:, 0] > 0.407) & (Xt[:, 0] < 0.593)  # where the noise-free inverse has three branches
    if not args.quiet:
        print("inverse sine (Bishop 1994): predict t from x = t + 0.3 sin(2 pi t) + noise; for 0.41 < x < 0.59 "
              f"there are three branches\n{len(X)} training and {len(Xt)} test rows ({region.mean():.0%} of them "
              "in the three-branch region)\n")
        print(f"  {'RMSE':<44} {'all rows':>9} {'3 branches':>11}")
        for name, a in (("MLP regressor (its averaged answer)", mlp.predict(Xt)),
                        (f"{kind}: top mode", modes[:, 0]), (f"{kind}: nearest mode (every branch)", None)):
            err = near if a is None else np.abs(a - yt)
            print(f"  {name:<44} {float(np.sqrt(np.mean(err**2))):9.4f} {float(np.sqrt(np.mean(err[region]**2))):11.4f}")
        print(f"\n  {kind}: mean log-likelihood per test row {float(mix.score_samples(Xt, yt).mean()):.4f}; "
              f"{np.mean(n_br[region] >= 2):.0%} of the three-branch rows get two or more modes")
    fig, axes = _fig(7, 4.6)
    ax = axes[0, 0]
    plot_conditional_density(mix, Xt, yt, ax=ax, feature_names=["x"], target_names=["t"])
    grid = np.linspace(Xt.min(), Xt.max(), 200)[:, None]
    ax.plot(grid[:, 0], mlp.predict(grid), color="#ff4d4d", lw=2, label="MLP (mean)")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"p(t | x) of the {kind}, its modes (white) and the MLP's averaged answer (red)", fontsize=10)
    dens_png = _save_fig(fig, out, "inverse_sine.png", files)
    bar.update(1)
    try:
        mix.save(os.path.join(out, "model.moekit"))
        files.append("model.moekit")
    except ValueError as e:
        _say(args, f"moekit: warning: the model was not saved: {_one_line(e)}")
    make_report(mix, Xt, yt, os.path.join(out, "report.html"), title="moekit demo: inverse sine",
                feature_names=["x"], target_names=["t"],
                notes=f"MLP RMSE {mlp_rmse:.4f}; {kind} top-mode RMSE {top_rmse:.4f}.",
                extra_figures=[("Modes against the averaged answer", "", dens_png)])
    files.append("report.html")
    bar.update(1)
    bar.close()
    return files


def _demo_tone(out, args) -> list:
    """Cohen's tone perception data: two groups of musicians, two regression lines."""
    import torch

    from .datasets import load_tonedata
    from .estimators import MoERegressor
    from .plotting import plot_conditional_density, plot_experts, plot_gate
    from .report import make_report

    files: list = []
    d = load_tonedata()
    X, y = d.data, d.target
    bar = _progress(4, "tone demo", args)
    fits = {}
    for k in (1, 2, 3):
        bar.set_postfix_str(f"K={k}")
        fits[k] = MoERegressor(n_experts=k, n_init=5, random_state=args.seed, device=args.device).fit(X, y)
        bar.update(1)
    bics = {k: e.bic(X, y) for k, e in fits.items()}
    best = min(bics, key=bics.get)
    est = fits[2]
    if not args.quiet:
        print("tone perception (Cohen 1980): 150 judgements of the tuned ratio against the stretch ratio\n")
        for k in (1, 2, 3):
            mark = "  <- lowest BIC" if k == best else ""
            print(f"  K={k}: log-likelihood {fits[k].score_samples(X, y).sum():9.3f}   BIC {bics[k]:9.3f}{mark}")
        ex = est.model_.experts
        coef = ex.coef.detach().cpu().numpy()[:, :, 0]
        sd = ex.scale_tril().detach().cpu().numpy()[:, 0, 0]
        print("\n  the two experts (tuned = a + b * stretch + noise):")
        for k in range(est.n_experts_):
            print(f"    expert {k}: a = {coef[k, 0]:7.4f}, b = {coef[k, 1]:7.4f}, noise sd = {sd[k]:.4f}")
        with torch.no_grad():
            g = est.predict_gate([[1.5], [3.0]])
        print(f"  gate at stretch 1.5: {np.round(g[0], 3).tolist()}; at 3.0: {np.round(g[1], 3).tolist()}")
    fig, axes = _fig(12, 3.8, 1, 3)
    plot_experts(est, X, y, ax=axes[0, 0], feature_names=["stretch ratio"], target_names=["tuned ratio"])
    plot_gate(est, X, ax=axes[0, 1], feature_names=["stretch ratio"])
    plot_conditional_density(est, X, y, ax=axes[0, 2], feature_names=["stretch ratio"], target_names=["tuned ratio"])
    png = _save_fig(fig, out, "tone.png", files)
    bar.update(1)
    est.save(os.path.join(out, "model.moekit"))
    files.append("model.moekit")
    make_report(est, X, y, os.path.join(out, "report.html"), title="moekit demo: tone perception",
                feature_names=["stretchratio"], target_names=["tuned"],
                notes="Two-expert mixture of linear regressions with a softmax gate (the classic fit: "
                      "log-likelihood 142.85).", extra_figures=[("Overview", "", png)])
    files.append("report.html")
    bar.close()
    return files


def _demo_tracking(out, args) -> list:
    """3-D depth of a moving limb from its 2-D image: per-frame branches, resolved through time."""
    try:
        from .tracking import estimate_transition_cov, track_modes
    except ImportError:
        raise UsageError("the tracking demo needs moekit.tracking, which this installation of moekit does not have; "
                         "try 'moekit demo robot-arm'") from None
    import torch
    from sklearn.neural_network import MLPRegressor

    from .datasets import make_kinematic_tracking
    from .report import make_report

    files: list = []
    bar = _progress(5, "tracking demo", args)
    rng = np.random.default_rng(args.seed)
    s_train, s_motion, s_test, s_mlp = (int(v) for v in rng.integers(0, 2**31 - 1, size=4))
    train = make_kinematic_tracking(n_sequences=20, n_frames=200, motion="random", random_state=s_train)
    motion = make_kinematic_tracking(n_sequences=5, n_frames=200, motion="smooth", random_state=s_motion)
    test = make_kinematic_tracking(n_sequences=1, n_frames=300, motion="smooth", random_state=s_test)
    X = train.X.reshape(-1, train.X.shape[-1])
    Y = train.y.reshape(-1, train.y.shape[-1])
    Xt, Yt, B = test.X[0], test.y[0], test.branches[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPRegressor(hidden_layer_sizes=(32, 32), max_iter=300, random_state=s_mlp).fit(X, Y)
    bar.update(1)
    mix, kind = _mixture_for_demo(args, 4, dict(hidden_layer_sizes=(32, 32), max_epochs=150, batch_size=256,
                                                  learning_rate=1e-2))
    mix.fit(X, Y)
    bar.update(1)
    q = estimate_transition_cov(motion.y, order=1)
    with torch.no_grad():
        dist = mix.predict_distribution(Xt)
    top = _branches_of(dist, min_weight=0.1)[0][:, 0]
    tracked = track_modes(dist, q, min_weight=0.1).path
    bar.update(1)

    def rmse(a):
        return float(np.sqrt(np.mean((a - Yt) ** 2)))

    def nearest(a):  # distance to the closest explanation of each image (any branch)
        d = np.sqrt(np.mean((B - a[:, None, :]) ** 2, axis=-1))  # NaN for a frame's missing branches
        return float(np.sqrt(np.mean(np.nanmin(d, axis=1) ** 2)))

    def jumps(a):
        return int(np.sum(np.abs(np.diff(a, axis=0)).max(1) > 0.1))

    rows = [("MLP regressor (averaged)", mlp.predict(Xt)), (f"{kind}, conditional mean", mix.predict(Xt)),
            (f"{kind}, top mode of every frame", top), (f"{kind} modes tracked through time (Viterbi)", tracked)]
    if not args.quiet:
        print("tracking: the depths of a moving arm's elbow and wrist from their 2-D image positions; the image "
              "cannot tell a segment\nfrom its mirror image through the image plane, so many frames have two or "
              f"more explanations ({np.mean(test.n_branches[0] > 1):.0%} of this sequence)\n"
              f"{len(X)} training frames (random poses), a test sequence of {len(Xt)} frames (smooth motion)\n")
        print(f"  {'':<46} {'RMSE':>7} {'to nearest':>11} {'jumps':>6}")
        print(f"  {'':<46} {'(truth)':>7} {'explanation':>11} {'':>6}")
        for name, a in rows:
            print(f"  {name:<46} {rmse(a):7.4f} {nearest(a):11.4f} {jumps(a):6d}")
        print(f"  {'truth':<46} {0.0:7.4f} {0.0:11.4f} {jumps(Yt):6d}")
        print("\n  'to nearest explanation': distance to the closest depth vector that projects to the same image;"
              "\n  'jumps': frames where the answer moves by more than 0.1 at once")
    fig, axes = _fig(11, 5.2, 2, 1, sharex=True)
    t = np.arange(len(Xt))
    for j, name in enumerate(["elbow depth", "wrist depth"]):
        ax = axes[j, 0]
        for b in range(B.shape[1]):
            ax.plot(t, B[:, b, j], ".", color="0.8", ms=3, label="every explanation" if b == 0 else None)
        ax.plot(t, Yt[:, j], color="black", lw=1.5, label="truth")
        ax.plot(t, mlp.predict(Xt)[:, j], "--", color="#d62728", lw=1.2, label="MLP (averaged)")
        ax.plot(t, top[:, j], ".", color="#ff7f0e", ms=4, label=f"{kind} top mode per frame")
        ax.plot(t, tracked[:, j], color="#1f77b4", lw=1.5, alpha=0.85, label="tracked (Viterbi over the modes)")
        ax.set_ylabel(name)
    axes[0, 0].legend(loc="upper right", fontsize=7.5, ncols=3)
    axes[1, 0].set_xlabel("frame")
    png = _save_fig(fig, out, "tracking.png", files)
    bar.update(1)
    try:
        mix.save(os.path.join(out, "model.moekit"))
        files.append("model.moekit")
    except ValueError as e:
        _say(args, f"moekit: warning: the model was not saved: {_one_line(e)}")
    make_report(mix, Xt, Yt, os.path.join(out, "report.html"), title="moekit demo: tracking through ambiguous frames",
                feature_names=["elbow x", "elbow y", "wrist x", "wrist y"], target_names=["elbow z", "wrist z"],
                notes=f"Per-frame {kind} on {len(X)} random poses; test sequence of {len(Xt)} frames. RMSE against "
                      f"the truth: MLP {rmse(rows[0][1]):.4f}, top mode per frame {rmse(top):.4f}, tracked "
                      f"{rmse(tracked):.4f}.",
                extra_figures=[("Depths through time", "Grey: every explanation of each image; black: the truth.",
                                png)])
    files.append("report.html")
    bar.update(1)
    bar.close()
    return files


# ============================================================= parser
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors and requested output")
    common.add_argument("--seed", type=int, default=0, help="random seed for fitting, splitting and sampling (default 0)")
    common.add_argument("--device", default=None, help="cpu (default), cuda or cuda:N")
    common.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="CPU threads for torch (default: 1 for tables under 50000 rows, where more threads "
                             "cost more than they save; torch's default above)")

    p = _Parser(prog="moekit", description="Fit, inspect and use mixtures of experts on tables of data.",
                epilog="Exit codes: 0 ok, 1 data error, 2 usage error, 3 internal error. "
                       "Run 'moekit demo' for a first look.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"moekit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("demo", parents=[common], help="run a demo on built-in data (default: robot-arm)",
                       description="Generate or load built-in data, fit the right models, print the key numbers "
                                   "and write plots and an HTML report to an output folder.")
    d.add_argument("name", nargs="?", default="robot-arm", choices=["robot-arm", "inverse-sine", "tone", "tracking"])
    d.add_argument("-o", "--output", default=None, help="output folder (default moekit-output/demo-NAME)")
    d.set_defaults(func=cmd_demo)

    f = sub.add_parser("fit", parents=[common], help="fit a model to a CSV or Parquet file",
                       description="Fit a conditional mixture p(y | x) to a table and save it to a model file.")
    f.add_argument("data", help="CSV (.csv, .tsv) or Parquet (.parquet, .pq) file with a header row")
    f.add_argument("--target", "-t", nargs="+", required=True, metavar="COL", help="target column(s) y")
    f.add_argument("--features", nargs="+", metavar="COL", help="input columns x (default: every other column)")
    f.add_argument("--categorical", nargs="+", metavar="COL",
                   help="numeric input columns to treat as categories (text columns always are)")
    f.add_argument("--model", choices=["moe", "hme", "mdn"], default="moe",
                   help="mixture of experts (default), hierarchical mixture of experts, mixture density network")
    f.add_argument("--experts", "-k", type=_positive_int, default=None, metavar="K",
                   help="number of experts (MDN: components; HME: branching of every gate); default 2")
    f.add_argument("--select-k", default=None, metavar="RANGE",
                   help="choose K in a range such as 1..8 by BIC (MDN: held-out log-likelihood)")
    f.add_argument("--expert", choices=list(_EXPERTS), default=None,
                   help="expert family (default: linear for regression, logistic for classification)")
    f.add_argument("--task", choices=["auto", "regression", "classification"], default="auto",
                   help="auto: classification for a text target or --expert logistic")
    f.add_argument("--depth", type=int, default=None, help="HME: depth of the tree (default 2)")
    f.add_argument("--branching", type=_positive_int, default=None, help="HME: experts under every gate")
    f.add_argument("--target-noise", type=_nonnegative_float, default=0.0, metavar="S",
                   help="MDN: noise regularisation, the sd of Gaussian noise added to the standardised targets "
                        "every epoch; about 0.1-0.2 curbs overfitting on a few hundred rows (default 0)")
    f.add_argument("--n-init", type=_positive_int, default=3, help="random starts; the best is kept (default 3)")
    f.add_argument("--max-iter", type=_positive_int, default=200, help="EM iterations or epochs (default 200)")
    f.add_argument("-o", "--output", required=True, metavar="MODEL", help="model file to write")
    f.set_defaults(func=cmd_fit)

    pr = sub.add_parser("predict", parents=[common], help="predict for every row of a data file",
                        description="Write one output row per input row: means, modes, quantiles, intervals, "
                                    "samples or gate probabilities. Rows with fewer modes than columns get empty cells.")
    pr.add_argument("model", help="model file written by 'moekit fit'")
    pr.add_argument("data", help="CSV or Parquet file with the model's input columns")
    pr.add_argument("-o", "--output", required=True, metavar="OUT", help="output .csv, .tsv or .parquet ('-': CSV on stdout)")
    pr.add_argument("--what", choices=list(_WHATS), default="mean",
                    help="what to predict (default mean; gate: the mixing weights, per leaf for a hierarchy)")
    pr.add_argument("--quantiles", type=float, nargs="+", default=[0.05, 0.5, 0.95], metavar="Q",
                    help="levels for --what quantiles (default 0.05 0.5 0.95)")
    pr.add_argument("--level", type=float, default=0.9, help="central interval level for --what interval (default 0.9)")
    pr.add_argument("--n-samples", type=_positive_int, default=10, help="draws per row for --what samples (default 10)")
    pr.add_argument("--max-modes", type=_positive_int, default=3, help="mode columns for --what modes (default 3)")
    pr.add_argument("--min-weight", type=float, default=0.01, help="drop modes lighter than this (default 0.01)")
    pr.add_argument("--keep", nargs="+", metavar="COL", help="copy these input columns (e.g. an id) to the output")
    pr.add_argument("--features", nargs="+", metavar="COL", help="input columns, for models saved from Python")
    pr.set_defaults(func=cmd_predict)

    ev = sub.add_parser("evaluate", parents=[common], help="goodness of fit on a data file",
                        description="Log-likelihood, NLL, RMSE of the mean and of the top mode, interval coverage.")
    ev.add_argument("model")
    ev.add_argument("data")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.add_argument("--level", type=float, default=0.9, help="level of the intervals whose coverage is shown (default 0.9)")
    ev.add_argument("--features", nargs="+", metavar="COL", help="input columns, for models saved from Python")
    ev.add_argument("--target", nargs="+", metavar="COL", help="target columns, for models saved from Python")
    ev.set_defaults(func=cmd_evaluate)

    rp = sub.add_parser("report", parents=[common], help="one self-contained HTML page about a model",
                        description="Data, fitted experts and gate regions, conditional density with modes, "
                                    "convergence curve and metrics, as one HTML file with embedded images.")
    rp.add_argument("model")
    rp.add_argument("data")
    rp.add_argument("-o", "--output", required=True, metavar="HTML")
    rp.add_argument("--title", default=None)
    rp.add_argument("--level", type=float, default=0.9)
    rp.add_argument("--features", nargs="+", metavar="COL", help="input columns, for models saved from Python")
    rp.add_argument("--target", nargs="+", metavar="COL", help="target columns, for models saved from Python")
    rp.set_defaults(func=cmd_report)

    inf = sub.add_parser("info", parents=[common], help="what a model file holds",
                         description="Model type, tree, sizes, training data summary and versions.")
    inf.add_argument("model")
    inf.add_argument("--json", action="store_true")
    inf.set_defaults(func=cmd_info)
    return p


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _nonnegative_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {s!r}") from None
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {s}")
    return v


# =============================================================== main
def main(argv=None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.argv = argv
        if getattr(args, "func", None) is None:
            raise UsageError("no command given; try 'moekit demo', or 'moekit --help' for the list of commands")
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"moekit: error: {_one_line(e)}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("moekit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        with contextlib.suppress(Exception):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the pipe reader left; say nothing more
        return 1
    except Exception as e:  # a bug, not a user mistake
        if os.environ.get("MOEKIT_DEBUG"):
            raise
        print(f"moekit: internal error: {type(e).__name__}: {_one_line(e)[:500]} (this is a bug; please report it. "
              "Set MOEKIT_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
