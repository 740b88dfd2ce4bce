"""Data tables for the command line: CSV and Parquet files read and written with pyarrow, and the column
schema that turns a table into X and y (numeric columns as they are, text columns one-hot encoded by
:mod:`moekit._encoding`, the encoder the estimators use for DataFrames: the same rules and the
same column names, ``column[T.level]``)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from .._encoding import categorical_feature, encoded_names, one_hot, parse_float, text_numeric_share
from .errors import DataError, UsageError, one_line

__all__ = [
    "ChunkTable",
    "FolderTable",
    "Table",
    "TableWriter",
    "arrow_table",
    "as_text",
    "build_schema",
    "check_out_folder",
    "data_files",
    "encode_features",
    "encode_targets",
    "estimated_bytes",
    "is_numeric_type",
    "is_text_type",
    "limit_column",
    "numeric_column",
    "out_kind",
    "read_table",
    "summarize",
    "text_column",
    "text_numeric_share",
    "write_table",
]

_CSV = {".csv": ",", ".tsv": "\t"}
_PARQUET = {".parquet", ".pq"}


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
        """The pyarrow column ``name``."""
        return self.t.column(name)

    def require(self, names, what: str) -> None:
        """DataError naming the first of ``names`` that is not a column."""
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


def data_files(path: str) -> tuple[list[str], str]:
    """The data files of DATA and their kind (``"csv"`` or ``"parquet"``): the file itself, or every CSV
    (``.csv``, ``.tsv``) or Parquet (``.parquet``, ``.pq``) file below a folder (names starting with ``.`` or
    ``_`` left out), sorted by path.  DataError for a path that does not exist, a folder without data files, or
    a folder that mixes CSV and Parquet files."""
    if not os.path.exists(path):
        raise DataError(f"data file '{path}' does not exist; check the path")
    if not os.path.isdir(path):
        return [path], _kind_of(path)
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        files += [os.path.join(root, f) for f in names
                  if os.path.splitext(f)[1].lower() in (*_CSV, *_PARQUET) and not f.startswith((".", "_"))]
    files.sort()
    if not files:
        raise DataError(f"folder '{path}' holds no data files (.csv, .tsv, .parquet or .pq); put the parts of the data "
                        "set there, or give a file")
    kinds = {f: ("parquet" if os.path.splitext(f)[1].lower() in _PARQUET else "csv") for f in files}
    if len(set(kinds.values())) > 1:
        csv = next(f for f in files if kinds[f] == "csv")
        par = next(f for f in files if kinds[f] == "parquet")
        raise DataError(f"folder '{path}' mixes CSV and Parquet files ({csv}, {par}); the parts of a data set are "
                        "in one format: convert or move one kind")
    return files, kinds[files[0]]


def estimated_bytes(files: list[str], kind: str) -> int:
    """The memory that reading the files whole takes, roughly: rows x columns x 8 bytes for Parquet (from the
    files' metadata, reading no data), the files' size for CSV."""
    if kind == "csv":
        return int(sum(os.path.getsize(f) for f in files))
    total = 0
    for f in files:
        try:
            md = pq.read_metadata(f)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"cannot read '{f}' as Parquet: {one_line(e)[:300]}") from None
        total += md.num_rows * md.num_columns * 8
    return int(total)


def _read_file(path: str, kind: str):
    """One CSV or Parquet file as a pyarrow table (DataError naming the file for anything a user can fix)."""
    if os.path.getsize(path) == 0:
        raise DataError(f"data file '{path}' is empty; it needs a header row and at least one data row")
    try:
        if kind == "csv":
            delim = _CSV.get(os.path.splitext(path)[1].lower(), ",")
            table = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter=delim))
        else:
            table = pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowException, OSError, UnicodeDecodeError) as e:
        msg = one_line(e)
        if "Empty CSV file" in msg:
            raise DataError(f"data file '{path}' is empty; it needs a header row and at least one data row") from None
        what = "CSV" if kind == "csv" else "Parquet"
        raise DataError(f"cannot read '{path}' as {what}: {msg[:300]}") from None
    if table.num_columns == 0:
        raise DataError(f"data file '{path}' has no columns")
    dup = sorted({c for c in table.column_names if table.column_names.count(c) > 1})
    if dup:
        raise DataError(f"data file '{path}' has duplicate column names {dup}; rename them")
    return table


def read_table(path: str) -> Table:
    """Read a CSV or Parquet file, or a folder of them (one table; DataError for anything a user can fix)."""
    if os.path.isdir(path):
        return _read_folder(path)
    if not os.path.exists(path):
        raise DataError(f"data file '{path}' does not exist; check the path")
    table = _read_file(path, _kind_of(path))
    if table.num_rows == 0:
        raise DataError(f"data file '{path}' has a header but no data rows")
    return Table(table, path, _kind_of(path))


class FolderTable(Table):
    """The files of a folder as one table; rows are named by their file (``row 3 of data/part-1.parquet``)."""

    def __init__(self, table, path: str, kind: str, files: list[str], rows: list[int]):
        super().__init__(table, path, kind)
        self.files = files
        self.starts = np.cumsum([0, *rows])

    def where(self, i: int) -> str:
        f = int(np.searchsorted(self.starts, i, side="right")) - 1
        local = i - int(self.starts[f])
        line = f" (line {local + 2})" if self.kind == "csv" else ""
        return f"row {local + 1}{line} of {self.files[f]}"


class ChunkTable(Table):
    """Some consecutive rows of one file (a batch of a streamed file), named by their row in the file."""

    def __init__(self, table, path: str, kind: str, first_row: int):
        super().__init__(table, path, kind)
        self.first_row = int(first_row)

    def where(self, i: int) -> str:
        return super().where(self.first_row + i)


def _type_class(t) -> str:
    if pa.types.is_null(t):
        return "null"
    if is_numeric_type(t):
        return "numeric"
    if is_text_type(t):
        return "text"
    return str(t)


def _read_folder(path: str) -> Table:
    """Every data file of a folder as one table: the same columns in each file (in any order) and the same kind of
    type (numbers or text) in each column, else a DataError naming the file."""
    files, kind = data_files(path)
    tables = [_read_file(f, kind) for f in files]
    first, names = files[0], tables[0].column_names
    for f, t in zip(files[1:], tables[1:]):
        missing = [c for c in names if c not in t.column_names]
        extra = [c for c in t.column_names if c not in names]
        if missing or extra:
            what = "; ".join(x for x in (f"it lacks column(s) {missing}" if missing else "",
                                          f"it has column(s) {extra} that {first} has not" if extra else "") if x)
            raise DataError(f"{f} has other columns than {first}: {what}; every file of a data set needs the same "
                            "columns")
    tables = [t.select(names) for t in tables]
    fields = []
    for j, c in enumerate(names):
        seen = None  # (class, type, file) of the first file where the column is not all empty
        for f, t in zip(files, tables):
            typ = t.schema.field(j).type
            k = _type_class(typ)
            if k not in ("null", "numeric", "text"):
                raise DataError(f"column '{c}' of {f} has type {typ}, which moekit cannot use; convert it to numbers "
                                "or text")
            if k == "null":
                continue
            if seen is None:
                seen = (k, typ, f)
            elif k != seen[0]:
                raise DataError(f"column '{c}' of {f} has type {typ}, but {seen[1]} in {seen[2]}: every file of a data "
                                f"set needs the same columns and types; rewrite {f} with {seen[0]} values in '{c}'")
        types = {t.schema.field(j).type for t in tables} - {pa.null()}
        if seen is None:
            typ = pa.null()
        elif len(types) == 1:
            typ = types.pop()
        else:  # e.g. int64 in one file, double in another: numbers as float64, text as strings
            typ = pa.float64() if seen[0] == "numeric" else pa.string()
        fields.append(pa.field(c, typ))
    schema = pa.schema(fields)
    try:
        table = pa.concat_tables([t.cast(schema) if t.schema != schema else t for t in tables])
    except (pa.ArrowException, ValueError) as e:
        raise DataError(f"the files of '{path}' do not make one table: {one_line(e)[:300]}") from None
    if table.num_rows == 0:
        raise DataError(f"the {len(files)} data file(s) of '{path}' have a header but no data rows")
    return FolderTable(table, path, kind, files, [t.num_rows for t in tables])


def is_numeric_type(t) -> bool:
    """Whether a pyarrow type holds numbers (integers, floats, booleans, decimals)."""
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)


def is_text_type(t) -> bool:
    """Whether a pyarrow type holds text (strings, dictionaries, or nothing but nulls)."""
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t) or pa.types.is_null(t)


def as_text(col) -> np.ndarray:
    """A column as an object array of Python strings (None where missing)."""
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, pa.string())
    if not is_text_type(col.type):
        col = pc.cast(col, pa.string())
    out = np.empty(len(col), dtype=object)
    out[:] = col.to_pylist()
    return out


def numeric_column(tab: Table, name: str, role: str, missing_ok: bool = False) -> np.ndarray:
    """One column as float64, with clear errors for missing and non-numeric values (``missing_ok``: a missing value
    is NaN, for inputs of ``--missing drop`` and the coordinates of several targets)."""
    col = tab.column(name)
    if is_numeric_type(col.type):
        vals = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(float)
    elif is_text_type(col.type):
        text = as_text(col)
        vals = np.empty(len(text))
        for i, v in enumerate(text):
            if v is None or str(v).strip() == "":
                vals[i] = np.nan
                continue
            f = parse_float(v)
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
    if len(bad) and not missing_ok:
        raise DataError(
            f"{role} column '{name}' of {tab.path} has {len(bad)} missing value(s) (first in {tab.where(int(bad[0]))}); "
            "remove those rows or fill them in"
        )
    bad = np.flatnonzero(np.isinf(vals))
    if len(bad):
        raise DataError(f"{role} column '{name}' of {tab.path} holds an infinite value in {tab.where(int(bad[0]))}")
    return vals


def limit_column(tab: Table, name: str, side: str) -> np.ndarray:
    """A column of censoring limits (``side`` "lower" or "upper") as float64: an empty cell is no limit (-inf for a
    lower limit, +inf for an upper one), and so is an infinite value of the right sign."""
    col = tab.column(name)
    if is_text_type(col.type):  # 'inf' and '-inf' written as text
        vals = np.array([np.nan if v is None or str(v).strip() == "" else parse_float(v) for v in as_text(col)],
                        dtype=object)
        bad = [i for i, v in enumerate(vals) if v is None]
        if bad:
            raise DataError(f"--{side} column '{name}' of {tab.path} holds the non-numeric value "
                            f"{str(as_text(col)[bad[0]])[:40]!r} in {tab.where(bad[0])}; a censoring limit is a number, "
                            "or an empty cell for no limit")
        vals = vals.astype(float)
    else:
        vals = numeric_column(tab, name, f"--{side}", missing_ok=True) if is_numeric_type(col.type) else \
            numeric_column(tab, name, f"--{side}")
    none = -np.inf if side == "lower" else np.inf
    wrong = np.flatnonzero(vals == -none)
    if len(wrong):
        raise DataError(f"--{side} column '{name}' of {tab.path} holds {vals[wrong[0]]} in {tab.where(int(wrong[0]))}; "
                        f"a {side} limit of {vals[wrong[0]]} censors nothing sensible: leave the cell empty for no limit")
    return np.where(np.isnan(vals), none, vals)


def text_column(tab: Table, name: str, role: str) -> np.ndarray:
    """One column as strings, with a clear error for a missing value."""
    vals = as_text(tab.column(name))
    for i, v in enumerate(vals):
        if v is None or str(v).strip() == "":
            raise DataError(f"{role} column '{name}' of {tab.path} has a missing value in {tab.where(i)}; "
                            "remove that row or fill it in")
    return np.asarray([str(v) for v in vals], dtype=object)


_DROP_HINT = "leave it out: list the input columns with --features"


def build_schema(tab: Table, targets, features, categorical, task: str, exclude=(), missing_ok: bool = False) -> dict:
    """How to turn a table into X and y: the columns, their kinds and categorical levels.

    ``exclude``: columns that are neither inputs nor targets (offsets, trials, censoring limits), left out of the
    default inputs; ``missing_ok``: numeric inputs may have missing values (``--missing drop``)."""
    tab.require(targets, "target")
    if len(set(targets)) != len(targets):
        raise UsageError(f"--target lists a column twice: {targets}")
    if features is None:
        features = [c for c in tab.names if c not in targets and c not in exclude]
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
        if not is_cat and is_text_type(col.type):
            text = as_text(col)
            if text_numeric_share(text) >= 0.5:
                numeric_column(tab, c, "input", missing_ok)  # raises on the first non-numeric value
            else:
                is_cat = True
        if is_cat:
            vals = _present(as_text(col)) if missing_ok else text_column(tab, c, "input")
            try:
                feats.append(categorical_feature(c, vals.tolist(), where=f" of {tab.path}", drop_hint=_DROP_HINT))
            except ValueError as e:
                raise DataError(str(e)) from None
        else:
            numeric_column(tab, c, "input", missing_ok)
            feats.append({"name": c, "kind": "numeric"})
    encoded = encoded_names(feats)
    if not encoded:
        raise DataError("every input column is a category with a single value: there is nothing to learn from; "
                        "choose other --features")
    return {"features": feats, "encoded_features": encoded, "targets": list(targets), "task": task}


def encode_features(tab: Table, schema: dict, missing_ok: bool = False) -> np.ndarray:
    """X as the model saw it in training: numeric columns as they are, categories one-hot (reference = first level).

    Model files written before the encoder was shared name the encoded columns ``column=level``; the
    columns themselves come from the stored levels, so such files give the same X.
    """
    tab.require([f["name"] for f in schema["features"]], "input")
    cols = []
    for f in schema["features"]:
        if f["kind"] == "numeric":
            cols.append(numeric_column(tab, f["name"], "input", missing_ok)[:, None])
            continue
        if missing_ok:  # a missing category: NaN in each of its columns (the row is dropped)
            vals = as_text(tab.column(f["name"]))
            gap = np.array([v is None or str(v).strip() == "" for v in vals], dtype=bool)
            vals = np.where(gap, f["levels"][0], vals)
        else:
            vals, gap = text_column(tab, f["name"], "input"), None
        try:
            code = one_hot(f, vals.tolist(), where=f" of {tab.path}", row_name=tab.where)
        except ValueError as e:
            raise DataError(str(e)) from None
        if gap is not None and gap.any():
            code[gap] = np.nan
        cols.append(code)
    return np.hstack(cols)


def encode_targets(tab: Table, schema: dict, classes=None) -> np.ndarray:
    """y as the model saw it: class labels (typed like ``classes`` when given) or numbers, one column per target.

    Several numeric targets may have missing coordinates (NaN: the model marginalises them), and so may one
    censored target (``schema["extras"]`` holds censoring limits: NaN between finite limits is interval-censored)."""
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
        if is_numeric_type(col.type) and classes is None:
            vals = numeric_column(tab, name, "target")
            return vals.astype(np.int64) if np.all(vals == np.round(vals)) else vals
        return text_column(tab, name, "target").astype(str)
    ys = []
    for t in targets:
        col = tab.column(t)
        if is_text_type(col.type) and text_numeric_share(as_text(col)) < 0.5:
            ex = next((v for v in as_text(col) if v is not None), None)
            raise DataError(f"target column '{t}' of {tab.path} holds text (e.g. {str(ex)[:40]!r}); regression needs "
                            "numbers: fix the column, or pass --task classification to predict it as a class label")
        holes = len(targets) > 1 or bool({"lower", "upper"} & set(schema.get("extras") or {}))
        ys.append(numeric_column(tab, t, "target", holes))
    return ys[0] if len(ys) == 1 else np.column_stack(ys)


def summarize(tab: Table, schema: dict) -> dict:
    """The training data in brief, for the model file: rows, and per column its range or its category counts."""
    cols = {}
    for f in schema["features"]:
        if f["kind"] == "numeric":
            cols[f["name"]] = dict(kind="numeric", **_numeric_brief(numeric_column(tab, f["name"], "input", True)))
        else:
            v = _present(as_text(tab.column(f["name"])))
            lv, cnt = np.unique(v.astype(str), return_counts=True)
            cols[f["name"]] = {"kind": "categorical", "counts": {str(a): int(b) for a, b in zip(lv, cnt)}}
    for t in schema["targets"]:
        if schema["task"] == "classification":
            v = text_column(tab, t, "target")
            lv, cnt = np.unique(v, return_counts=True)
            cols[t] = {"kind": "target (classes)", "counts": {str(a): int(b) for a, b in zip(lv, cnt)}}
        else:
            cols[t] = dict(kind="target", **_numeric_brief(numeric_column(tab, t, "target", True)))
    return {"file": os.path.basename(tab.path), "rows": int(tab.n), "columns": cols}


def _present(text: np.ndarray) -> np.ndarray:
    """The values of a text column that are there (not None, not blank)."""
    return np.asarray([v for v in text if v is not None and str(v).strip() != ""], dtype=object)


def _numeric_brief(v: np.ndarray) -> dict:
    """Range, mean and sd of the values present (and how many are missing, if any)."""
    ok = v[~np.isnan(v)]
    out = {"min": None, "max": None, "mean": None, "std": None} if not len(ok) else \
        {"min": float(ok.min()), "max": float(ok.max()), "mean": float(ok.mean()), "std": float(ok.std())}
    if len(ok) < len(v):
        out["missing"] = int(len(v) - len(ok))
    return out


def arrow_table(columns: dict):
    """Named 1-D arrays as a pyarrow table: numbers as they are (NaN an empty cell), anything else as text."""
    arrays = []
    for v in columns.values():
        v = np.asarray(v)
        if v.dtype.kind == "f":
            arrays.append(pa.array(v, mask=np.isnan(v)))
        elif v.dtype.kind in "biu":
            arrays.append(pa.array(v))
        else:
            arrays.append(pa.array([None if x is None else str(x) for x in v], type=pa.string()))
    return pa.Table.from_arrays(arrays, names=list(columns))


def write_table(columns: dict, path: str) -> None:
    """Write named 1-D arrays as CSV (or to stdout with '-') or Parquet; NaN becomes an empty cell."""
    with TableWriter(path) as w:
        w.write(columns)


class TableWriter:
    """Tables written piece by piece to one CSV (or stdout, ``'-'``) or Parquet file.

    A file is written to a temporary file in the same folder and renamed to ``path`` when the writer closes
    without an error (use it as a context manager): a failure leaves no output file (and an existing file of
    that name as it was).  Every piece has the first piece's columns; a piece whose column is entirely empty
    takes the first piece's type.
    """

    def __init__(self, path: str):
        self.path = path
        self.kind = "csv" if path == "-" else out_kind(path)
        self.schema = None
        self.rows = 0
        self._writer = None
        self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def write(self, columns: dict) -> None:
        """Append the rows of named 1-D arrays."""
        table = arrow_table(columns)
        if self.schema is None:
            self.schema = table.schema
        else:
            table = self._conform(table)
        self.rows += table.num_rows
        try:
            self._write(table)
        except OSError as e:
            raise DataError(f"cannot write '{self.path}': {one_line(e)}") from None

    def _conform(self, table):
        if table.column_names != self.schema.names:
            raise DataError(f"internal: a piece of '{self.path}' has the columns {table.column_names}, the first had "
                            f"{self.schema.names}")
        if table.schema == self.schema:
            return table
        try:
            return table.cast(self.schema)
        except (pa.ArrowException, ValueError) as e:
            raise DataError(f"cannot write '{self.path}': a piece's columns have other types than the first's "
                            f"({one_line(e)[:200]})") from None

    def _write(self, table) -> None:
        if self.path == "-":
            buf = pa.BufferOutputStream()
            pcsv.write_csv(table, buf, write_options=pcsv.WriteOptions(include_header=self._writer is None))
            self._writer = True
            sys.stdout.write(buf.getvalue().to_pybytes().decode("utf-8"))
            sys.stdout.flush()
            return
        if self._writer is None:
            folder = os.path.dirname(os.path.abspath(self.path))
            fd, self._tmp = tempfile.mkstemp(prefix=".moekit-", suffix=".tmp", dir=folder)
            os.close(fd)
            if self.kind == "parquet":
                self._writer = pq.ParquetWriter(self._tmp, self.schema)
            else:
                opts = pcsv.WriteOptions(delimiter=_CSV.get(os.path.splitext(self.path)[1].lower(), ","))
                self._writer = pcsv.CSVWriter(self._tmp, self.schema, write_options=opts)
        self._writer.write_table(table)

    def close(self) -> None:
        """Finish the file and rename it to ``path``."""
        if self.path == "-":
            return
        if self._writer is None:  # nothing written: an empty table with no columns is no output
            return
        try:
            self._writer.close()
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self._tmp, 0o666 & ~umask)  # as an ordinary new file (mkstemp makes it private)
            os.replace(self._tmp, self.path)
        except OSError as e:
            self.abort()
            raise DataError(f"cannot write '{self.path}': {one_line(e)}") from None
        self._tmp = None

    def abort(self) -> None:
        """Drop what was written: no output file."""
        if self._writer not in (None, True):
            with contextlib.suppress(Exception):
                self._writer.close()
        if self._tmp is not None and os.path.exists(self._tmp):
            os.unlink(self._tmp)
        self._tmp = None


def out_kind(path: str) -> str:
    """'csv' or 'parquet' from an output name's extension (UsageError for any other)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in _CSV:
        return "csv"
    if ext in _PARQUET:
        return "parquet"
    raise UsageError(f"cannot tell the format of the output '{path}' from its extension; use .csv, .tsv or .parquet")


def check_out_folder(path: str, what: str) -> None:
    """DataError when the folder that would hold ``path`` does not exist."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise DataError(f"cannot write the {what} '{path}': the folder '{folder}' does not exist")


