"""Arrow columns read by the encoder's rules (:mod:`moekit._encoding`): numbers, category codes, and the
first pass that finds a text column's kind and levels.

The rules are those of :func:`moekit._encoding.fit_frame_encoding`, applied to columns that arrive in
pieces (Arrow record batches of a Parquet or CSV file) instead of a whole DataFrame:

- a numeric (or boolean) Arrow column is used as it is;
- a text column is numeric when at least half of its present (non-blank) values parse as numbers
  (:func:`moekit._encoding.parse_float`), then every present value must; otherwise it holds
  categories, whose levels are its distinct values, sorted;
- a dictionary column (a pandas ``category`` written by pyarrow) holds categories whose levels are its
  dictionary's values in their declared order (the union over the pieces, in order of appearance);
- in a CSV file every column arrives as text: one whose present values are all ``true``/``false``
  literals is boolean (numeric 0/1), as pandas and pyarrow read it.

The per-piece helpers here are vectorised with ``pyarrow.compute``; Python runs once per *distinct*
value only where a value is not a plain number.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .._encoding import parse_float

__all__ = [
    "BOOL_FALSE",
    "BOOL_TRUE",
    "MAX_TRACKED",
    "ColumnScan",
    "category_codes",
    "numeric_values",
    "type_class",
]

BOOL_TRUE = ("true", "True", "TRUE")
BOOL_FALSE = ("false", "False", "FALSE")
# distinct values a first pass keeps per column; beyond it a column cannot be categorical (MAX_LEVELS is far less)
MAX_TRACKED = 100_000


def type_class(t: pa.DataType) -> str:
    """'numeric', 'text', 'dictionary', 'null' or 'other' (a type moekit cannot use).

    Examples
    --------
    >>> type_class(pa.int32()), type_class(pa.large_string()), type_class(pa.timestamp("s"))
    ('numeric', 'text', 'other')
    """
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t):
        return "numeric"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    if pa.types.is_dictionary(t):
        return "dictionary"
    if pa.types.is_null(t):
        return "null"
    return "other"


def _as_string(arr) -> pa.Array:
    """Any usable column as an Arrow string array (nulls kept)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.string())
    return arr if pa.types.is_string(arr.type) else pc.cast(arr, pa.string())


def _present(s: pa.Array) -> pa.Array:
    """Boolean mask of the values that are there: not null, not blank (the encoder's ``_missing``)."""
    return pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(s), ""), False)


def _number(v: str, bools: bool) -> float | None:
    """A present text value as a number (booleans as 0/1 when ``bools``), or None."""
    if bools and v in BOOL_TRUE:
        return 1.0
    if bools and v in BOOL_FALSE:
        return 0.0
    return parse_float(v)


def numeric_values(arr, bools: bool = False) -> tuple[np.ndarray, tuple[int, str] | None]:
    """A column as float64, missing values NaN; and the first value that is not a number, if any.

    Parameters
    ----------
    arr : pyarrow Array
        A numeric, text, dictionary or null column.
    bools : bool
        Read ``true``/``false`` literals as 1/0 (CSV columns of booleans).

    Returns
    -------
    values : ndarray (n,)
        float64; NaN where a value is missing (null or blank) or not a number.
    bad : (int, str) or None
        The position and text of the first present value that is not a number.

    Examples
    --------
    >>> numeric_values(pa.array(["1.5", None, " 2", "x"]))
    (array([1.5, nan, 2. , nan]), (3, 'x'))
    >>> numeric_values(pa.array([True, False]))[0]
    array([1., 0.])
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type) and type_class(arr.type.value_type) == "numeric":
        arr = arr.dictionary_decode()
    if type_class(arr.type) == "numeric":
        return np.asarray(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64), None
    if pa.types.is_null(arr.type):
        return np.full(len(arr), np.nan), None
    s = _as_string(arr)
    if not bools:
        try:  # the common case: plain numbers (and nulls), converted by Arrow
            return np.asarray(pc.cast(s, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64), None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    uniq = pc.unique(s)
    mapped = np.full(len(uniq), np.nan)
    bad_value = None
    for j, v in enumerate(uniq.to_pylist()):
        if v is None or v.strip() == "":
            continue
        f = _number(v, bools)
        if f is None:
            bad_value = v if bad_value is None else bad_value
            continue
        mapped[j] = f
    pos = pc.index_in(s, value_set=uniq).to_numpy(zero_copy_only=False)
    out = mapped[pos.astype(np.int64)]
    bad = None
    if bad_value is not None:  # the first row holding any non-number
        nonnum = np.isnan(mapped) & np.array([v is not None and v.strip() != "" for v in uniq.to_pylist()])
        rows = np.flatnonzero(nonnum[pos.astype(np.int64)])
        i = int(rows[0])
        bad = (i, s[i].as_py())
    return out, bad


def category_codes(arr, levels: list[str]) -> tuple[np.ndarray, tuple[int, str] | None]:
    """A column's values as indices into ``levels``: -1 where missing; and the first unknown value, if any.

    Examples
    --------
    >>> category_codes(pa.array(["b", None, "a", "c"]), ["a", "b"])
    (array([ 1, -1,  0, -1]), (3, 'c'))
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    value_set = pa.array(levels, type=pa.string())
    if pa.types.is_dictionary(arr.type):  # map the dictionary once, then index it
        d = _as_string(arr.dictionary)
        dcode = pc.fill_null(pc.index_in(d, value_set=value_set), -1).to_numpy(zero_copy_only=False).astype(np.int64)
        dpresent = _present(d).to_numpy(zero_copy_only=False)
        dcode = np.where(dpresent, dcode, -1)
        unknown_d = dpresent & (dcode < 0)
        idx = pc.fill_null(arr.indices, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        codes = np.where(valid, dcode[idx] if len(d) else -1, -1)
        unknown = valid & (unknown_d[idx] if len(d) else False)
        s = None
    else:
        s = _as_string(arr)
        present = _present(s).to_numpy(zero_copy_only=False)
        codes = pc.fill_null(pc.index_in(s, value_set=value_set), -1).to_numpy(zero_copy_only=False).astype(np.int64)
        codes = np.where(present, codes, -1)
        unknown = present & (codes < 0)
    codes = np.asarray(codes, dtype=np.int64).reshape(n)
    rows = np.flatnonzero(unknown)
    if not len(rows):
        return codes, None
    i = int(rows[0])
    value = arr[i].as_py() if s is None else s[i].as_py()
    return codes, (i, str(value))


class ColumnScan:
    """What a first pass learns of one column: its present values, how many are numbers or boolean
    literals, its distinct values (up to :data:`MAX_TRACKED`) and, for dictionary columns, the dictionary's
    values in order of appearance.

    Examples
    --------
    >>> s = ColumnScan(); s.add(pa.array(["b", "a", None, "1"])); s.add(pa.array(["b"]))
    >>> s.n_rows, s.n_present, s.n_number, sorted(s.observed)
    (5, 4, 1, ['1', 'a', 'b'])
    >>> s.kind(bools=False)
    'categorical'
    """

    def __init__(self):
        self.n_rows = 0
        self.n_present = 0
        self.n_number = 0
        self.n_bool = 0
        self.observed: dict[str, None] = {}
        self.dictionary: dict[str, None] = {}
        self.overflow = False
        self.is_dictionary = False

    def add(self, arr) -> None:
        """Take one piece of the column into account."""
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        self.n_rows += len(arr)
        if pa.types.is_dictionary(arr.type):
            self.is_dictionary = True
            for v in _as_string(arr.dictionary).to_pylist():
                if v is not None and v.strip() != "":
                    self.dictionary.setdefault(v, None)
        s = _as_string(arr)
        p = s.filter(_present(s))
        m = len(p)
        if not m:
            return
        self.n_present += m
        try:  # plain numbers: counted without a look at each value
            pc.cast(p, pa.float64())
            numbers = m
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            numbers = None
        self.n_bool += int(pc.sum(pc.is_in(p, value_set=pa.array(BOOL_TRUE + BOOL_FALSE))).as_py() or 0)
        if numbers is None:
            vc = pc.value_counts(p)
            numbers = sum(int(c) for v, c in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())
                          if parse_float(v) is not None)
        self.n_number += numbers
        if not self.overflow:
            for v in pc.unique(p).to_pylist():
                self.observed.setdefault(v, None)
            if len(self.observed) > MAX_TRACKED:
                self.overflow = True
                self.observed = {}

    def merge(self, other: "ColumnScan") -> "ColumnScan":
        """The scan of both pieces (``self`` first), as a new value."""
        out = ColumnScan()
        out.n_rows = self.n_rows + other.n_rows
        out.n_present = self.n_present + other.n_present
        out.n_number = self.n_number + other.n_number
        out.n_bool = self.n_bool + other.n_bool
        out.is_dictionary = self.is_dictionary or other.is_dictionary
        out.dictionary = {**self.dictionary, **other.dictionary}
        out.overflow = self.overflow or other.overflow
        if not out.overflow:
            out.observed = {**self.observed, **other.observed}
            if len(out.observed) > MAX_TRACKED:
                out.overflow, out.observed = True, {}
        return out

    def kind(self, bools: bool) -> str | None:
        """'bool' (all present values are true/false literals, when ``bools``), 'numeric' (at least half parse
        as numbers), 'categorical', or None when no value is present."""
        if not self.n_present:
            return None
        if self.is_dictionary:
            return "categorical"
        if bools and self.n_bool == self.n_present:
            return "bool"
        return "numeric" if self.n_number >= 0.5 * self.n_present else "categorical"
