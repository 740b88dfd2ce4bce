"""One-hot encoding of text and categorical input columns, shared by the estimators and the command line.

A pandas DataFrame given to an estimator's ``fit`` and a CSV or Parquet table given to ``moekit fit``
are encoded by the same rules and get the same column names:

- a numeric (or boolean) column is used as it is;
- a text column is numeric when at least half of its present values parse as numbers (then every
  value must); otherwise it holds categories, whose levels are its distinct values, sorted;
- a pandas ``category`` column holds categories whose levels are its declared categories, in their
  declared order;
- a categorical column becomes one 0/1 column per level but the first (the reference level), named
  as formulaic's treatment coding names them: ``column[T.level]``.

The encoding is a list of feature records, ``{"name": column, "kind": "numeric"}`` or
``{"name": column, "kind": "categorical", "levels": [...]}`` (levels are strings), with the encoded
names in ``encoded_features``: plain JSON values, so that model files keep it.  Applying it to new
data gives the columns the model was fitted on; a level never seen in fitting is an error naming the
column and the level.

Two checks guard the inputs: a categorical column with a different value in every row (an identifier,
such as a country in a table of countries) and one with more than :data:`MAX_LEVELS` levels are
errors naming the column and the fix (leave it out of the inputs).

This module needs NumPy only; DataFrames are recognised by their attributes (pandas is not imported).  It
sits in the base layer so that the file sources of :mod:`moekit.data` encode a table by the same rules
as the estimators and the command line.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "MAX_LEVELS",
    "PYTHON_DROP_HINT",
    "categorical_feature",
    "categorical_feature_of_levels",
    "encode_frame",
    "encoded_name",
    "encoded_names",
    "fit_frame_encoding",
    "is_dataframe",
    "needs_encoding",
    "one_hot",
    "parse_float",
    "text_numeric_share",
]

MAX_LEVELS = 200
PYTHON_DROP_HINT = "leave it out of X (X.drop(columns=[{name!r}]))"


# ------------------------------------------------------------------ names
def encoded_name(column: str, level) -> str:
    """The name of the 0/1 column of ``level`` of ``column``: formulaic's treatment coding, ``column[T.level]``."""
    return f"{column}[T.{level}]"


def encoded_names(features: list) -> list[str]:
    """The names of the encoded columns, in order: numeric columns as they are, categories per non-reference level."""
    out = []
    for f in features:
        if f["kind"] == "numeric":
            out.append(f["name"])
        else:
            out.extend(encoded_name(f["name"], lv) for lv in f["levels"][1:])
    return out


# ------------------------------------------------------------ text values
def parse_float(s) -> float | None:
    """``float(s)``, or None where ``s`` is not a number."""
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def _missing(v) -> bool:
    """None, NaN, blank text, or pandas' NA and NaT."""
    if v is None:
        return True
    if isinstance(v, str):
        return v.strip() == ""
    if isinstance(v, (float, np.floating)):
        return bool(np.isnan(v))
    return type(v).__name__ in ("NAType", "NaTType")


def text_numeric_share(vals) -> float:
    """The share of the present (non-blank) values that parse as numbers."""
    present = [v for v in vals if not _missing(v)]
    if not present:
        return 0.0
    return sum(parse_float(v) is not None for v in present) / len(present)


# -------------------------------------------------------------- categories
def categorical_feature(column: str, values, declared=None, *, where: str = "",
                        drop_hint: str = PYTHON_DROP_HINT) -> dict:
    """The feature record of a categorical column, after the identifier and too-many-levels checks.

    Parameters
    ----------
    column : str
        The column's name.
    values : sequence of str
        Its values as text, no missing ones.
    declared : sequence, optional
        Declared levels (a pandas ``category``'s categories), kept in their order; by default the
        distinct values, sorted.
    where : str
        Where the column comes from, for messages (e.g. " of data.csv").
    drop_hint : str
        How to leave the column out, for messages; ``{name!r}`` is replaced by the column's name.

    Raises
    ------
    ValueError
        A different value in every row (an identifier), or more than :data:`MAX_LEVELS` levels.
    """
    values = [str(v) for v in values]
    return categorical_feature_of_levels(column, len(values), set(values), declared, where=where,
                                         drop_hint=drop_hint)


def categorical_feature_of_levels(column: str, n_values: int, observed, declared=None, *, where: str = "",
                                  drop_hint: str = PYTHON_DROP_HINT) -> dict:
    """:func:`categorical_feature` from a column's distinct values and their number of rows.

    For columns read in pieces (files streamed batch by batch), where the values are never held at once:
    ``n_values`` is the number of (present) values, ``observed`` the set of distinct ones as text.  The
    checks and the record are those of :func:`categorical_feature`.

    Examples
    --------
    >>> categorical_feature_of_levels("c", 5, {"b", "a"})
    {'name': 'c', 'kind': 'categorical', 'levels': ['a', 'b']}
    """
    observed = {str(v) for v in observed}
    hint = drop_hint.format(name=column)
    n = int(n_values)
    if n >= 2 and len(observed) == n:
        raise ValueError(
            f"input column '{column}'{where} has a different value in every row ({n} levels in {n} rows): it looks "
            f"like an identifier, and one-hot encoding it would give every row a parameter of its own; {hint}"
        )
    levels = [str(v) for v in declared] if declared is not None else sorted(observed)
    if len(levels) > MAX_LEVELS:
        raise ValueError(
            f"input column '{column}'{where} has {len(levels)} distinct text values, too many for categories "
            f"(at most {MAX_LEVELS}); is it an identifier? {hint}"
        )
    return {"name": column, "kind": "categorical", "levels": levels}


def one_hot(feature: dict, values, *, where: str = "", row_name=None) -> np.ndarray:
    """The 0/1 columns of a categorical feature: (n, levels - 1), the reference (first) level all zeros.

    ``values`` are the column's values as text; ``row_name(i)`` says where row ``i`` is, for messages.

    Raises
    ------
    ValueError
        A value that is not one of the feature's levels (naming the column and the value).
    """
    levels = feature["levels"]
    index = {lv: i for i, lv in enumerate(levels)}
    idx = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        j = index.get(str(v))
        if j is None:
            shown = ", ".join(levels[:10]) + (" ..." if len(levels) > 10 else "")
            at = f" in {row_name(i)}" if row_name is not None else f" in row {i + 1}"
            raise ValueError(
                f"input column '{feature['name']}'{where} holds the category {str(v)!r}{at}, which the model never "
                f"saw in training (known: {shown}); drop or recode those rows, or refit with that category"
            )
        idx[i] = j
    out = np.zeros((len(values), max(len(levels) - 1, 0)))
    rows = np.flatnonzero(idx > 0)
    out[rows, idx[rows] - 1] = 1.0
    return out


# -------------------------------------------------------------- DataFrames
def is_dataframe(X) -> bool:
    """Whether ``X`` is a pandas DataFrame (recognised by its attributes; pandas is not imported)."""
    return hasattr(X, "columns") and hasattr(X, "dtypes") and hasattr(X, "iloc") and getattr(X, "ndim", 0) == 2


def _is_category(dtype) -> bool:
    return getattr(dtype, "name", None) == "category" and hasattr(dtype, "categories")


def _is_text(dtype) -> bool:
    kind = getattr(dtype, "kind", None)
    return kind in ("O", "U", "S") or getattr(dtype, "name", None) in ("string", "str")


def needs_encoding(X) -> bool:
    """Whether ``X`` is a DataFrame with a text or ``category`` column (numbers only need no encoding)."""
    return is_dataframe(X) and any(_is_category(t) or _is_text(t) for t in X.dtypes)


def _text_values(name: str, col) -> list[str]:
    """A text or category column as strings; a missing value is an error naming the column and the row."""
    vals = col.to_numpy(dtype=object) if hasattr(col, "to_numpy") else np.asarray(col, dtype=object)
    out = []
    for i, v in enumerate(vals):
        if _missing(v):
            raise ValueError(f"X column '{name}' has a missing value in row {i + 1}; drop that row or fill it in")
        out.append(str(v))
    return out


def _numeric_values(name: str, col) -> np.ndarray:
    """A column as float64; a value that is not a number is an error naming the column and the value."""
    vals = col.to_numpy(dtype=object) if hasattr(col, "to_numpy") else np.asarray(col, dtype=object)
    out = np.empty(len(vals))
    for i, v in enumerate(vals):
        if _missing(v):
            out[i] = np.nan  # reported as NaN in X by the numeric checks that follow
            continue
        f = v if isinstance(v, numbers.Real) and not isinstance(v, str) else parse_float(v)
        if f is None:
            raise ValueError(
                f"X column '{name}' holds the non-numeric value {str(v)[:40]!r} in row {i + 1} among numbers; "
                "fix that value, or make the column a pandas 'category' if it holds categories"
            )
        out[i] = float(f)
    return out


def _column_kind(col) -> str:
    dtype = col.dtype
    if _is_category(dtype):
        return "categorical"
    if _is_text(dtype):
        vals = col.to_numpy(dtype=object)
        if all(isinstance(v, numbers.Real) and not isinstance(v, (str, bool)) for v in vals if not _missing(v)) \
                and any(not _missing(v) for v in vals):
            return "numeric"  # an object column of numbers
        return "numeric" if text_numeric_share(vals) >= 0.5 else "categorical"
    return "numeric"


def fit_frame_encoding(X) -> dict:
    """The encoding of a DataFrame's columns: ``{"features": [...], "encoded_features": [...]}``.

    Raises
    ------
    ValueError
        A categorical column that is an identifier or has too many levels, a missing value in a text
        column, a non-numeric value in a mostly numeric one, or no column left to learn from.
    """
    names = [str(c) for c in X.columns]
    if len(set(names)) != len(names):
        dup = sorted({c for c in names if names.count(c) > 1})
        raise ValueError(f"X has duplicate column names {dup}; rename them")
    feats = []
    for c, name in zip(X.columns, names):
        col = X[c]
        if _column_kind(col) == "numeric":
            feats.append({"name": name, "kind": "numeric"})
            continue
        declared = list(col.cat.categories) if _is_category(col.dtype) else None
        feats.append(categorical_feature(name, _text_values(name, col), declared))
    encoded = encoded_names(feats)
    if not encoded:
        raise ValueError("X: every column is a category with a single level; there is nothing to learn from")
    return {"features": feats, "encoded_features": encoded}


def encode_frame(X, encoding: dict) -> np.ndarray:
    """X as the model was fitted on it: (n, len(encoded_features)) float64, in the encoding's column order.

    ``X`` is a DataFrame holding exactly the encoding's columns, in any order, or a 2-D
    array-like whose columns are those columns in order.

    Raises
    ------
    ValueError
        Missing or unexpected columns, a level never seen in fitting, a missing or non-numeric value.
    """
    feats = encoding["features"]
    want = [f["name"] for f in feats]
    if is_dataframe(X):
        have = [str(c) for c in X.columns]
        missing = [c for c in want if c not in have]
        extra = [c for c in have if c not in want]
        if missing or extra:
            raise ValueError(
                f"X must have the columns the model was fitted on, {want}; "
                + (f"missing {missing}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"not seen in fit {extra}" if extra else "")
            )
        by_name = dict(zip(have, X.columns))
        cols = {c: X[by_name[c]] for c in want}
    else:
        arr = np.asarray(X, dtype=object)
        if arr.ndim != 2 or arr.shape[1] != len(want):
            raise ValueError(
                f"X must be a DataFrame with the columns {want}, or a 2-D array with those {len(want)} columns in "
                f"that order; got an array of shape {arr.shape}"
            )
        cols = {c: arr[:, j] for j, c in enumerate(want)}
    out = []
    for f in feats:
        if f["kind"] == "numeric":
            out.append(_numeric_values(f["name"], cols[f["name"]])[:, None])
        else:
            out.append(one_hot(f, _text_values(f["name"], cols[f["name"]]), where=" of X"))
    return np.hstack(out) if out else np.zeros((0, 0))
