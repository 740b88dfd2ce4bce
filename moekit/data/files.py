"""Parquet and CSV files (one file, a folder of them, or a list) as sources of batches, read with
``pyarrow.dataset`` in a deterministic order and encoded by the estimators' rules.

A file source never holds the whole table: it reads the columns it needs, one Arrow record batch
at a time (Parquet: within one row group at a time), and hands out :class:`~moekit.data.Batch`
values of at most ``batch_rows`` rows.  The
columns are encoded as :func:`moekit._encoding.fit_frame_encoding` encodes a DataFrame (the same
kinds, levels and names ``column[T.level]``); what that needs to know of the whole table (a text
column's kind and levels, a text target's classes, and for CSV the number of rows) is found in one
first pass over those columns only, when the source is built, or declared with ``categories=``.
The protocol (``n_rows``, ``in_memory``, ``shard``, ``sample``) is in :mod:`moekit.data.batch`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.dataset as ds
import pyarrow.fs as pfs
import torch

from .._encoding import categorical_feature_of_levels, encoded_names
from .arrays import sample_indices
from .batch import Batch
from .columns import MAX_TRACKED, ColumnScan, category_codes, numeric_values, type_class

__all__ = ["CSVSource", "ParquetSource"]

EXTRAS = ("offset", "trials", "lower", "upper")
_DROP_HINT = "leave it out of features= (or declare its levels with categories=)"
_FS = pfs.LocalFileSystem()
# Parquet column chunks read through a 1 MB buffer, not pre-buffered whole (Arrow still decodes a row group at once)
_SCAN = {"fragment_scan_options": ds.ParquetFragmentScanOptions(pre_buffer=False, use_buffered_stream=True,
                                                                buffer_size=1 << 20)}


@dataclass(frozen=True)
class _Unit:
    """The smallest piece a source reads and shards: a row group of a Parquet file, or a whole CSV file."""

    file: int  # index into the source's list of all files
    group: int | None  # row group id (Parquet), None for a whole file
    rows: int
    file_start: int  # its first row's number within the file (0-based)
    start: int  # its first row's global index over all files


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def _rows(units) -> int:
    return int(sum(u.rows for u in units))


class _FileSource:
    """The file sources' common machinery; see :class:`ParquetSource` and :class:`CSVSource`."""

    _kind = ""  # "parquet" or "csv"
    _suffixes: tuple = ()
    in_memory = False

    def __init__(self, path, *, features=None, target, weight=None, offset=None, trials=None, lower=None,
                 upper=None, batch_rows: int = 65536, categories=None, dtype=torch.float64, device="cpu",
                 on_bad_rows: str = "error"):
        if on_bad_rows not in ("error", "skip"):
            raise ValueError(f"on_bad_rows must be 'error' or 'skip', got {on_bad_rows!r}")
        if not (isinstance(batch_rows, (int, np.integer)) and not isinstance(batch_rows, bool) and batch_rows >= 1):
            raise ValueError(f"batch_rows must be a positive int, got {batch_rows!r}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch dtype (torch.float64 or torch.float32), got {dtype!r}")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device must name a torch device ('cpu', 'cuda', 'cuda:1'), got {device!r}: "
                             f"{_one_line(e)}") from None
        self.path = path
        self.batch_rows = int(batch_rows)
        self.dtype = dtype
        self.on_bad_rows = on_bad_rows
        self.target_names = self._names("target", target, allow_empty=False)
        self._extras = {}
        for role, name in zip(("weight",) + EXTRAS, (weight, offset, trials, lower, upper)):
            if name is not None:
                if not isinstance(name, str):
                    raise ValueError(f"{role} must be a column name (str) or None, got {name!r}")
                self._extras[role] = name
        self._declared = self._check_categories(categories)

        self._all_files = self._discover(path)
        schemas, groups = self._inspect_all()
        self._check_same_columns(schemas)
        names = list(schemas[0].names)
        taken = set(self.target_names) | set(self._extras.values())
        if features is None:
            index_cols = self._pandas_index_columns(schemas[0])
            features = [c for c in names if c not in taken and c not in index_cols]
            if not features:
                raise ValueError(f"{path} has no column left for features once the target {self.target_names} and "
                                 f"the extras {sorted(self._extras.values())} are taken; name the features")
            explicit_empty = False
        else:
            features = self._names("features", features, allow_empty=True)
            explicit_empty = not features
        self._feature_columns = features
        self._require(names, features, "feature")
        self._require(names, self.target_names, "target")
        for role, name in self._extras.items():
            self._require(names, [name], role)
        both = sorted(set(features) & taken)
        if both:
            raise ValueError(f"column(s) {both} are both features and the target or an extra; a column is one or the "
                             "other: leave them out of features=")
        roles = [*self.target_names, *self._extras.values()]
        dup = sorted({c for c in roles if roles.count(c) > 1})
        if dup:
            raise ValueError(f"column(s) {dup} are named for more than one role (target, weight, offset, trials, "
                             "lower, upper); give each its own column")
        for c in self._declared:
            if c not in features and c not in self.target_names:
                raise ValueError(f"categories= names column '{c}', which is neither a feature nor the target; "
                                 f"features are {features}")
        self._columns = list(dict.fromkeys([*features, *self.target_names, *self._extras.values()]))
        classes = self._column_classes(schemas)
        self._bools: set = set()
        scans, file_rows = self._first_pass(classes, groups)
        self._all_units = self._make_units(groups, file_rows)
        self._units = self._all_units
        self.files = list(self._all_files)
        self._build_encoding(scans, explicit_empty)
        self.n_skipped_rows = 0
        self.skipped_rows_last_pass = 0
        if self.n_rows == 0:
            raise ValueError(f"no rows in {path}: its {len(self._all_files)} file(s) hold no data rows")

    # ------------------------------------------------------------------ public attributes
    @property
    def n_rows(self) -> int:
        """The number of rows of this source (of this shard), as stored: rows skipped as bad still count."""
        return _rows(self._units)

    @property
    def total_weight(self) -> float | None:
        """The sum of the row weights when known without a pass (no weight column and no rows skipped as bad:
        the number of rows), else None (a trainer then sums the weights in a pass)."""
        if "weight" in self._extras or self.on_bad_rows != "error":
            return None
        return float(self.n_rows)

    @property
    def feature_names(self) -> list[str]:
        """The encoded columns of x, in order: numeric columns as they are, ``column[T.level]`` per category."""
        return list(self.encoding["encoded_features"])

    @property
    def nbytes_estimate(self) -> int:
        """Bytes of the model-level data held in memory at once: rows x (x, y, weight and extra columns) x itemsize."""
        width = len(self.encoding["encoded_features"]) + len(self.target_names) + 1 + \
            len([r for r in self._extras if r != "weight"])
        return int(self.n_rows * width * torch.empty((), dtype=self.dtype, device="cpu").element_size())

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, files={len(self.files)}, n_rows={self.n_rows}, "
                f"features={len(self.feature_names)}, target={self.target_names}, batch_rows={self.batch_rows})")

    # ------------------------------------------------------------------ the protocol
    def __iter__(self) -> Iterator[Batch]:
        self.n_skipped_rows = 0
        size, parts, held = self.batch_rows, [], 0
        for chunk in self._chunks(self._units, counted=True):
            parts.append(chunk)
            held += len(chunk["x"])
            if held >= size:
                whole = _concat(parts)
                k = held // size
                for i in range(k):
                    yield self._batch(whole, slice(i * size, (i + 1) * size))
                parts = [_take(whole, slice(k * size, held))] if held > k * size else []
                held -= k * size
        if held:
            yield self._batch(_concat(parts), slice(0, held))
        self.skipped_rows_last_pass = self.n_skipped_rows

    def shard(self, rank: int, world_size: int):
        """This rank's rows only: a contiguous block of row groups (CSV: of files), balanced by row counts.

        The shard shares the full source's encoding (levels found once, so every rank encodes alike) and
        reads none of the other ranks' row groups.  With fewer row groups than ranks (a single small file)
        some shards are empty: they have ``n_rows == 0`` and yield no batch.  A shard's :meth:`sample`
        is the whole source's sample (the same on every rank).
        """
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        units = self._units
        total = _rows(units)
        mine, before = [], 0
        for u in units:  # each unit goes to the rank its middle row falls in: contiguous, balanced by rows
            r = min(world_size - 1, int((before + u.rows / 2) * world_size // total)) if total else 0
            if r == rank:
                mine.append(u)
            before += u.rows
        out = copy.copy(self)
        out._units = mine
        out.files = [self._all_files[i] for i in dict.fromkeys(u.file for u in mine)]
        out.n_skipped_rows = out.skipped_rows_last_pass = 0
        return out

    def sample(self, max_rows: int, seed: int) -> Batch:
        """Every row when the whole source has at most ``max_rows``, else the rows
        :func:`~moekit.data.sample_indices` picks by global row index (over all files, in order).

        Only the row groups (CSV: files) holding picked rows are read.  The indices count the rows as
        stored; with ``on_bad_rows="skip"`` bad rows among the picked ones are then dropped (so the
        sample may be smaller than ``max_rows``).  A shard's sample is the whole source's.
        """
        units = self._all_units
        idx = sample_indices(_rows(units), max_rows, seed)
        chunks = []
        for u in units:
            pick = None
            if idx is not None:
                lo, hi = np.searchsorted(idx, [u.start, u.start + u.rows])
                if lo == hi:
                    continue
                pick = idx[lo:hi] - u.start
            chunks.extend(self._chunks([u], counted=False, pick=pick))
        return self._whole(chunks)

    def read_all(self) -> Batch:
        """Every row of this source (of this shard) as one in-memory :class:`~moekit.data.Batch`."""
        self.n_skipped_rows = 0
        out = self._whole(list(self._chunks(self._units, counted=True)))
        self.skipped_rows_last_pass = self.n_skipped_rows
        return out

    # ------------------------------------------------------------------ reading
    def _open(self, file: int, columns: list[str]):
        raise NotImplementedError

    def _read(self, fragment, unit: _Unit, columns: list[str]) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def _inspect(self, file: str) -> tuple[pa.Schema, list[int] | None]:
        raise NotImplementedError

    def _record_batches(self, units, columns) -> Iterator[tuple[_Unit, int, pa.RecordBatch]]:
        """``(unit, offset of the batch within the unit, record batch)`` in order; read errors name the file."""
        opened = (None, None)  # the file-level fragment of the last file, reused by its row groups
        for u in units:
            off = 0
            try:
                if opened[0] != u.file:
                    opened = (u.file, self._open(u.file, columns))
                for rb in self._read(opened[1], u, columns):
                    yield u, off, rb
                    off += rb.num_rows
            except (pa.ArrowException, OSError) as e:
                raise ValueError(f"cannot read {self._all_files[u.file]} as {self._kind.upper()}: "
                                 f"{_one_line(e)}") from None

    def _chunks(self, units, counted: bool, pick: np.ndarray | None = None) -> Iterator[dict]:
        """Encoded NumPy chunks of the units' rows (``pick``: only these rows of the single unit given)."""
        for u, off, rb in self._record_batches(units, self._columns):
            n = rb.num_rows
            if pick is not None:
                sel = pick[(pick >= off) & (pick < off + n)] - off
                if not len(sel):
                    continue
                rb = rb.take(pa.array(sel))
                rows = u.file_start + off + sel
            else:
                rows = u.file_start + off + np.arange(n)
            chunk, skipped = self._encode(rb, u.file, rows)
            if counted:
                self.n_skipped_rows += skipped
            if len(chunk["x"]):
                yield chunk

    # ------------------------------------------------------------------ encoding a record batch
    def _where(self, file: int, row: int) -> str:
        line = f" (line {row + 2})" if self._kind == "csv" else ""
        return f"row {row + 1}{line} of {self._all_files[file]}"

    def _numbers(self, arr, name: str, role: str, file: int, rows: np.ndarray, errors: list) -> np.ndarray:
        """A column as float64; a non-number among numbers is an error (appended to ``errors``: position, text)."""
        vals, bad = numeric_values(arr, bools=name in self._bools)
        if bad is not None:
            hint = " or declare its levels with categories= if it holds categories" if role == "feature" else ""
            errors.append((bad[0], f"{role} column '{name}' holds the non-numeric value {bad[1][:40]!r} in "
                                   f"{self._where(file, int(rows[bad[0]]))} among numbers; fix that value{hint}"))
        return vals

    def _codes(self, arr, name: str, levels: list, role: str, file: int, rows: np.ndarray, errors: list) -> np.ndarray:
        """A categorical column as level indices (-1 missing); a level not among ``levels`` is an error."""
        codes, unknown = category_codes(arr, levels)
        if unknown is not None:
            shown = ", ".join(levels[:10]) + (" ..." if len(levels) > 10 else "")
            errors.append((unknown[0], f"{role} column '{name}' holds the level {unknown[1]!r} in "
                                       f"{self._where(file, int(rows[unknown[0]]))}, which is not among its levels "
                                       f"({shown}); add it to categories={{{name!r}: [...]}}, or drop those rows"))
        return codes

    def _encode(self, rb: pa.RecordBatch, file: int, rows: np.ndarray) -> tuple[dict, int]:
        """One record batch as NumPy arrays (x float64, y, weight, extras); bad rows raised or dropped.

        Errors that no ``on_bad_rows`` skips (a non-number among numbers, an unknown level, a negative
        weight) and, under "error", bad rows are reported for the first row that has one.
        """
        n = rb.num_rows
        checks = []  # (role, column, mask of bad rows, values or None)
        errors: list = []  # (position in the batch, message)
        xs = []
        for f in self.encoding["features"]:
            name = f["name"]
            if f["kind"] == "numeric":
                v = self._numbers(rb.column(name), name, "feature", file, rows, errors)
                checks.append(("feature", name, ~np.isfinite(v), v))
                xs.append(v[:, None])
                continue
            codes = self._codes(rb.column(name), name, f["levels"], "feature", file, rows, errors)
            checks.append(("feature", name, codes < 0, None))
            hot = np.zeros((n, max(len(f["levels"]) - 1, 0)))  # the encoder's one_hot: reference level all zeros
            r = np.flatnonzero(codes > 0)
            hot[r, codes[r] - 1] = 1.0
            xs.append(hot)
        x = np.hstack(xs) if xs else np.zeros((n, 0))
        if self.target_levels is not None:
            name = self.target_names[0]
            y = self._codes(rb.column(name), name, self.target_levels, "target", file, rows, errors)
            checks.append(("target", name, y < 0, None))
        else:
            ys = []
            for name in self.target_names:
                v = self._numbers(rb.column(name), name, "target", file, rows, errors)
                checks.append(("target", name, np.isinf(v), v))  # NaN (a missing target) passes
                ys.append(v)
            y = ys[0] if len(ys) == 1 else np.column_stack(ys)
        out = {"x": x, "y": y}
        for role, name in self._extras.items():
            v = self._numbers(rb.column(name), name, role, file, rows, errors)
            if role in ("lower", "upper"):  # an empty cell is no limit
                v = np.where(np.isnan(v), -np.inf if role == "lower" else np.inf, v)
            else:
                checks.append((role, name, ~np.isfinite(v), v))
            out[role] = v
        if "weight" not in out:
            out["weight"] = np.ones(n)
        bad = np.zeros(n, dtype=bool)
        for _, _, mask, _ in checks:
            bad |= mask
        neg = np.flatnonzero((out["weight"] < 0) & ~bad)
        if len(neg):
            i = int(neg[0])
            errors.append((i, f"weight column '{self._extras['weight']}' holds the negative weight {out['weight'][i]} "
                              f"in {self._where(file, int(rows[i]))}; row weights must be >= 0"))
        first_bad = int(np.flatnonzero(bad)[0]) if bad.any() and self.on_bad_rows == "error" else None
        if errors and (first_bad is None or min(errors)[0] <= first_bad):
            raise ValueError(min(errors)[1])
        if first_bad is not None:
            i = first_bad
            role, name, _, vals = next(c for c in checks if c[2][i])
            what = "a missing value" if vals is None or np.isnan(vals[i]) else f"the value {vals[i]}"
            raise ValueError(f"{role} column '{name}' has {what} in {self._where(file, int(rows[i]))}; fix or drop "
                             "that row, or pass on_bad_rows='skip' to skip such rows")
        skipped = int(bad.sum())
        if skipped:
            out = _take(out, ~bad)
        return out, skipped

    def _batch(self, chunk: dict, index) -> Batch:
        def t(a, labels=False):
            if a is None:
                return None
            a = np.ascontiguousarray(a[index])
            a = torch.from_numpy(a if a.flags.writeable else a.copy())  # Arrow's zero-copy arrays are read-only
            return a.to(device=self.device) if labels else a.to(device=self.device, dtype=self.dtype)
        return Batch(x=t(chunk["x"]), y=t(chunk["y"], labels=self.target_levels is not None),
                     weight=t(chunk["weight"]), **{r: t(chunk.get(r)) for r in EXTRAS})

    def _whole(self, chunks: list[dict]) -> Batch:
        if not chunks:
            d_y = len(self.target_names)
            empty = {"x": np.zeros((0, len(self.feature_names))),
                     "y": np.zeros(0, dtype=np.int64) if self.target_levels is not None else
                     np.zeros((0,) if d_y == 1 else (0, d_y)),
                     "weight": np.zeros(0), **{r: np.zeros(0) for r in self._extras if r != "weight"}}
            return self._batch(empty, slice(None))
        whole = _concat(chunks)
        return self._batch(whole, slice(None))

    # ------------------------------------------------------------------ building the source
    @staticmethod
    def _names(role: str, value, allow_empty: bool) -> list[str]:
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, (list, tuple)) or not all(isinstance(c, str) for c in names) or \
                (not names and not allow_empty):
            raise ValueError(f"{role} must be a column name (str) or a {'' if allow_empty else 'non-empty '}list of "
                             f"column names, got {value!r}")
        dup = sorted({c for c in names if names.count(c) > 1})
        if dup:
            raise ValueError(f"{role} names column(s) {dup} more than once; name each once")
        return list(names)

    @staticmethod
    def _check_categories(categories) -> dict:
        if categories is None:
            return {}
        if not isinstance(categories, dict):
            raise ValueError(f"categories must be a dict {{column: [levels, ...]}} or None, got {type(categories).__name__}")
        out = {}
        for c, levels in categories.items():
            if isinstance(levels, str) or not hasattr(levels, "__iter__"):
                raise ValueError(f"categories[{c!r}] must be a list of levels, got {levels!r}")
            levels = [str(v) for v in levels]
            if not levels or len(set(levels)) != len(levels):
                raise ValueError(f"categories[{c!r}] must list at least one level, each once, got {levels}")
            out[str(c)] = levels
        return out

    def _discover(self, path) -> list[str]:
        """The data files of ``path`` (a file, a folder searched recursively, or a list), sorted by path."""
        given = list(path) if isinstance(path, (list, tuple)) else [path]
        files = []
        for p in given:
            if not isinstance(p, (str, os.PathLike)):
                raise ValueError(f"path must be a file, a folder or a list of files, got {p!r}")
            p = os.fspath(p)
            if not os.path.exists(p):
                raise ValueError(f"data path '{p}' does not exist; check the path")
            if os.path.isdir(p):
                for root, dirs, names in os.walk(p):
                    dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
                    files += [os.path.join(root, f) for f in names
                              if f.lower().endswith(self._suffixes) and not f.startswith((".", "_"))]
            else:
                files.append(p)
        files = sorted(dict.fromkeys(files))
        if not files:
            pattern = " or ".join(f"*{s}" for s in self._suffixes)
            raise ValueError(f"no rows in {path}: it holds no {pattern} files")
        return files

    def _inspect_all(self):
        schemas, groups = [], []
        for f in self._all_files:
            try:
                schema, g = self._inspect(f)
            except (pa.ArrowException, OSError) as e:
                msg = _one_line(e)
                if "Empty CSV file" in msg:
                    raise ValueError(f"data file {f} is empty; it needs a header row") from None
                raise ValueError(f"cannot read {f} as {self._kind.upper()}: {msg}") from None
            schemas.append(schema)
            groups.append(g)
        return schemas, groups

    def _check_same_columns(self, schemas) -> None:
        first = schemas[0].names
        dup = sorted({c for c in first if first.count(c) > 1})
        if dup:
            raise ValueError(f"{self._all_files[0]} has duplicate column names {dup}; rename them")
        for f, s in zip(self._all_files[1:], schemas[1:]):
            missing = [c for c in first if c not in s.names]
            extra = [c for c in s.names if c not in first]
            if missing or extra:
                what = "; ".join(x for x in (f"it lacks column(s) {missing}" if missing else "",
                                              f"it has column(s) {extra} that {self._all_files[0]} has not"
                                              if extra else "") if x)
                raise ValueError(f"{f} has other columns than {self._all_files[0]}: {what}; every file of a data set "
                                 "needs the same columns")

    def _require(self, names: list[str], wanted: list[str], role: str) -> None:
        for c in wanted:
            if c not in names:
                shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
                raise ValueError(f"{role} column '{c}' is not in {self.path}; its columns are: {shown}")

    @staticmethod
    def _pandas_index_columns(schema: pa.Schema) -> set:
        meta = schema.pandas_metadata if schema.metadata and b"pandas" in schema.metadata else None
        return {c for c in (meta or {}).get("index_columns", []) if isinstance(c, str)}

    def _column_classes(self, schemas) -> dict:
        """Each model column's type class over the files (Parquet: checked alike in every file)."""
        classes = {}
        for c in self._columns:
            got, where = None, None
            for f, s in zip(self._all_files, schemas):
                t = s.field(c).type
                k = type_class(t)
                if k == "other":
                    raise ValueError(f"column '{c}' of {f} has type {t}, which moekit cannot use; convert it to numbers "
                                     "or text")
                if k == "null":
                    continue
                if got is None:
                    got, where = (k, t), f
                elif k != got[0]:
                    raise ValueError(f"column '{c}' of {f} has type {t}, but {got[1]} in {where}: every file of a data "
                                     f"set needs the same columns and types; rewrite {f} with type {got[1]}")
            classes[c] = got[0] if got else "null"
        return classes

    def _to_scan(self, classes: dict) -> list[str]:
        """The columns whose kind or levels need the first pass."""
        return [c for c in [*self._feature_columns, *self.target_names]
                if c not in self._declared and classes[c] in ("text", "dictionary")]

    def _first_pass(self, classes: dict, groups) -> tuple[dict, list]:
        """Scan the columns that need it (reading those columns only); rows per file where no metadata tells."""
        cols = list(dict.fromkeys(self._to_scan(classes)))
        file_rows = [None if g is None else int(sum(g)) for g in groups]
        count = [i for i, r in enumerate(file_rows) if r is None]
        if count and not cols:
            cols = [self._columns[0]]  # one column read to count the rows
        scans = {c: ColumnScan() for c in cols}
        if not cols:
            return scans, file_rows
        units = [_Unit(i, None, 0, 0, 0) for i in range(len(self._all_files))]
        for i in count:
            file_rows[i] = 0
        for u, _, rb in self._record_batches(units, cols):
            if u.file in count:
                file_rows[u.file] += rb.num_rows
            for c in cols:
                scans[c].add(rb.column(c))
        return scans, file_rows

    def _make_units(self, groups, file_rows) -> list[_Unit]:
        units, start = [], 0
        for i, (g, n) in enumerate(zip(groups, file_rows)):
            pieces = [(None, n)] if g is None else list(enumerate(g))
            at = 0
            for gid, rows in pieces:
                if rows:
                    units.append(_Unit(i, gid, int(rows), at, start))
                at += rows
                start += rows
        return units

    def _build_encoding(self, scans: dict, explicit_empty: bool) -> None:
        bools = self._kind == "csv"
        where = f" of {self.path}"
        feats = []
        for c in self._feature_columns:
            if c in self._declared:
                feats.append(categorical_feature_of_levels(c, 0, (), self._declared[c], where=where,
                                                           drop_hint=_DROP_HINT))
                continue
            s = scans.get(c)
            kind = s.kind(bools) if s is not None else "numeric"
            if kind == "bool":
                self._bools.add(c)
            if kind != "categorical":
                feats.append({"name": c, "kind": "numeric"})
                continue
            if s.overflow:
                raise ValueError(f"input column '{c}'{where} has more than {MAX_TRACKED} distinct text values, too many "
                                 f"for categories; is it an identifier? {_DROP_HINT}")
            declared = list(s.dictionary) if s.is_dictionary else None
            feats.append(categorical_feature_of_levels(c, s.n_present, s.observed, declared, where=where,
                                                       drop_hint=_DROP_HINT))
        encoded = encoded_names(feats)
        if not encoded and not explicit_empty:
            raise ValueError(f"{self.path}: every feature column is a category with a single level; there is nothing "
                             "to learn from: choose other features")
        self.encoding = {"features": feats, "encoded_features": encoded}
        self.target_levels = None
        for c in self.target_names:
            if c in self._declared:
                kind = "declared"
            else:
                s = scans.get(c)
                kind = s.kind(bools) if s is not None else "numeric"
            if kind == "bool":
                self._bools.add(c)
            if kind not in ("declared", "categorical"):
                continue
            if len(self.target_names) > 1:
                raise ValueError(f"target column '{c}'{where} holds text (class labels); a target of several columns "
                                 "needs numbers in each: give one text column as the target for classification")
            if kind == "declared":
                self.target_levels = list(self._declared[c])
            elif scans[c].overflow:
                raise ValueError(f"target column '{c}'{where} has more than {MAX_TRACKED} distinct text values, too "
                                 "many for class labels; is it an identifier?")
            else:
                self.target_levels = sorted(scans[c].observed)


def _concat(parts: list[dict]) -> dict:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _take(chunk: dict, index) -> dict:
    return {k: v[index] for k, v in chunk.items()}


class ParquetSource(_FileSource):
    """Parquet files (one, a folder of ``*.parquet`` files searched recursively, or a list) as a source of
    batches, read with ``pyarrow.dataset`` one record batch at a time.

    Parameters
    ----------
    path : str, path or list of them
        A file, a folder (every ``*.parquet`` file below it, names starting with ``.`` or ``_`` left
        out) or a list of files.  Files are read in the order of their sorted paths, each file's row
        groups in file order.
    features : list of str, optional
        The input columns.  Default: every column that is not the target, the weight or an extra (nor a
        pandas index column).
    target : str or list of str
        The target column (y of shape (n,)) or columns (y of shape (n, d_y)).  A text target holds class
        labels: y is then int64 codes of its sorted levels (:attr:`target_levels`).
    weight, offset, trials, lower, upper : str, optional
        Columns of row weights (default: ones), offsets, trials, and censoring limits (an empty cell is no
        limit: -inf / +inf); numbers.
    batch_rows : int
        At most this many rows per batch (every batch has exactly this many but the last).  Memory is
        bounded by it and by the largest row group (Arrow decodes a row group's columns at once), never
        by the table.
    categories : dict, optional
        ``{column: [levels, ...]}``: declared levels of categorical features (in this order; the first is
        the reference) or of a text target, instead of finding them in the first pass.
    dtype : torch.dtype
        Floating dtype of x, y (numeric targets), the weights and the extras.
    device : str or torch.device
    on_bad_rows : {"error", "skip"}
        A row with a missing or non-finite feature, weight, offset or trials value (or an infinite target)
        is an error naming the file and the row, or is skipped and counted (:attr:`n_skipped_rows`).  A
        missing target (NaN) is passed through.

    Attributes
    ----------
    feature_names : list of str
        The encoded columns of x (numeric columns as they are, ``column[T.level]`` per non-reference level).
    target_names : list of str
    target_levels : list of str or None
        The classes of a text target (y holds their indices), None for a numeric one.
    encoding : dict
        ``{"features": [...], "encoded_features": [...]}``, the records of
        :func:`moekit._encoding.fit_frame_encoding` (JSON values).
    n_rows : int
        Rows as stored (from the Parquet metadata, without reading data).
    files : list of str
        The files this source (this shard) reads.
    n_skipped_rows, skipped_rows_last_pass : int
        Rows skipped as bad so far in the current pass (reset when a pass starts) and in the last full pass.
    nbytes_estimate : int
        rows x model columns x itemsize: what holding every row in memory would take.

    Shapes
    ------
    Each batch: x (b, d_x) with d_x = len(feature_names); y (b,) or (b, d_y) (int64 (b,) for class
    labels); weight (b,); offset, trials, lower, upper (b,) or None; b <= batch_rows.

    Raises
    ------
    ValueError
        A path that does not exist, no files or no rows ("no rows in <path>"); files with other columns or
        types than the first (naming the file and the column); a named column that is missing; a
        categorical column that looks like an identifier or has too many levels.  While reading: a
        missing or non-finite value (naming the column, the file and the row; or skipped), a negative
        weight, a level not among a column's levels (naming file, column and level).

    Examples
    --------
    >>> import os, tempfile
    >>> import pyarrow as pa, pyarrow.parquet as pq
    >>> folder = tempfile.mkdtemp()
    >>> table = pa.table({"x": [0.5, 1.5, 2.5, 3.5], "city": ["b", "a", "b", "c"], "y": [1.0, 2.0, 3.0, 4.0]})
    >>> pq.write_table(table, os.path.join(folder, "part-0.parquet"), row_group_size=2)
    >>> src = ParquetSource(folder, target="y", batch_rows=3)
    >>> src.feature_names, src.n_rows
    (['x', 'city[T.b]', 'city[T.c]'], 4)
    >>> [len(b) for b in src]
    [3, 1]
    >>> next(iter(src)).x.tolist()
    [[0.5, 1.0, 0.0], [1.5, 0.0, 0.0], [2.5, 1.0, 0.0]]
    >>> [s.n_rows for s in (src.shard(0, 2), src.shard(1, 2))]
    [2, 2]
    >>> src.sample(2, seed=0).y.shape
    torch.Size([2])
    """

    _kind = "parquet"
    _suffixes = (".parquet",)

    def _inspect(self, file: str):
        frag = ds.ParquetFileFormat().make_fragment(file, filesystem=_FS)
        frag.ensure_complete_metadata()
        return frag.physical_schema, [rg.num_rows for rg in frag.row_groups]

    def _open(self, file: int, columns: list[str]):
        frag = ds.ParquetFileFormat().make_fragment(self._all_files[file], filesystem=_FS)
        frag.ensure_complete_metadata()
        return frag

    def _read(self, fragment, unit: _Unit, columns: list[str]) -> Iterator[pa.RecordBatch]:
        if unit.group is not None:
            fragment = fragment.subset(row_group_ids=[unit.group])
        yield from fragment.to_batches(columns=columns, batch_size=self.batch_rows, **_SCAN)


class CSVSource(_FileSource):
    """CSV files (one, a folder of ``*.csv`` files searched recursively, or a list) as a source of batches,
    read with ``pyarrow.dataset`` one block at a time.

    Takes the arguments of :class:`ParquetSource`, with these differences: a CSV file has no types, so
    every column is read as text and given its kind by the encoder's rule over all files (numeric when at
    least half of its present values are numbers; ``true``/``false`` columns are boolean, 0/1; otherwise
    categories); ``n_rows`` is counted in the first pass, which reads the features and the target once
    when the source is built; rows are named in messages with their line (the header is line 1); a
    shard is a contiguous block of whole files.

    Shapes
    ------
    As :class:`ParquetSource`: x (b, d_x), y (b,) or (b, d_y), weight (b,), extras (b,).

    Examples
    --------
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "a.csv"), "w") as f:
    ...     _ = f.write("x,flag,label\\n0.5,true,cat\\n1.5,false,dog\\n2.5,true,cat\\n")
    >>> src = CSVSource(folder, target="label", batch_rows=2)
    >>> src.feature_names, src.target_levels, src.n_rows
    (['x', 'flag'], ['cat', 'dog'], 3)
    >>> b = src.read_all(); b.x.tolist(), b.y.tolist()
    ([[0.5, 1.0], [1.5, 0.0], [2.5, 1.0]], [0, 1, 0])
    """

    _kind = "csv"
    _suffixes = (".csv",)

    def _format(self, columns: list[str]) -> ds.CsvFileFormat:
        return ds.CsvFileFormat(convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in columns}))

    def _inspect(self, file: str):
        return ds.CsvFileFormat().make_fragment(file, filesystem=_FS).physical_schema, None

    def _column_classes(self, schemas) -> dict:
        return {c: "text" for c in self._columns}  # every CSV column is text; its kind comes from the first pass

    def _open(self, file: int, columns: list[str]):
        return self._format(columns).make_fragment(self._all_files[file], filesystem=_FS)

    def _read(self, fragment, unit: _Unit, columns: list[str]) -> Iterator[pa.RecordBatch]:
        yield from fragment.to_batches(columns=columns, batch_size=self.batch_rows)
