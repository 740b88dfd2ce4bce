"""Formulas on the command line (``moekit fit --formula 'y ~ x + I(x**2)' --gate-formula '~ x'``): the columns a
formula names, the table as the DataFrame the formula is evaluated on, and the column schema of a model written
as formulas.

The design itself (which columns the experts and the gate see, each factor's levels) is the estimator's
:class:`~moekit.estimators.formula.FormulaDesign`, kept in the model file as ``formula_design_``; the schema
records it under ``"formula"``, so that ``predict``, ``evaluate``, ``report`` and ``info`` evaluate the same
formulas on new data.  The schema's ``features`` and ``encoded_features`` are the model's inputs, the design's
numeric columns (formulaic's names: ``x``, ``I(x ** 2)``, ``g[T.b]``), as a model file's checks expect of
every schema; ``formula_columns`` are the table columns the formulas use (numeric or categorical, with their
levels: for ``info`` and the training-data summary), and ``targets`` the formula's left side.
"""

from __future__ import annotations

import re

import numpy as np

from ..estimators.formula import FormulaDesign
from .errors import DataError, UsageError, one_line
from .tables import as_text, encode_targets, is_numeric_type, is_text_type, numeric_column, text_column, \
    text_numeric_share

__all__ = ["design_of", "formula_columns", "formula_frame", "formula_inputs", "formula_schema", "formula_targets"]


def _formulaic():
    import formulaic  # slow to import (about a second with pandas); only models written as formulas need it

    return formulaic


def _variables(part) -> list[str]:
    """The data columns a parsed formula side refers to (value variables: not functions such as ``log``)."""
    names = []
    for v in getattr(part, "required_variables", set()):
        roles = {getattr(r, "value", r) for r in getattr(v, "roles", {"value"})}
        if "value" in roles:
            names.append(str(v))
    return names


def formula_columns(formula: str, gate_formula: str | None = None, *, option: str = "--formula"):
    """The columns of the target (left side) and of the inputs (right sides) that the formulas name.

    Returns
    -------
    (list of str, list of str)
        Target columns, input columns (each sorted; a column on both sides is a target).

    Raises
    ------
    UsageError
        A formula that does not parse, or an expert formula without a left side.
    """
    f = _formulaic()
    try:
        parsed = f.Formula(formula)
    except Exception as e:  # formulaic raises many kinds of parse errors (FormulaSyntaxError, SyntaxError, ...)
        raise UsageError(f"{option} {formula!r} cannot be read as a formula: {_plain_text(e)}") from None
    if not hasattr(parsed, "lhs") or not _variables(parsed.lhs):
        raise UsageError(f"{option} {formula!r} names no target: write it as 'target ~ terms', e.g. 'y ~ x'")
    lhs = sorted(_variables(parsed.lhs))
    rhs = set(_variables(parsed.rhs))
    if gate_formula is not None:
        try:
            gate = f.Formula(gate_formula)
        except Exception as e:
            raise UsageError(f"--gate-formula {gate_formula!r} cannot be read as a formula: {_plain_text(e)}") \
                from None
        if hasattr(gate, "lhs"):
            raise UsageError(f"--gate-formula {gate_formula!r} has a left side; the gate's formula is one-sided "
                             "(the target comes from --formula), e.g. '~ x'")
        rhs |= set(_variables(gate))
    return lhs, sorted(rhs - set(lhs))


def _plain_text(e) -> str:
    """A formulaic message on one line without its terminal colours and markers (``\\x1b[1;31m``, ``⧛ ⧚``)."""
    return one_line(re.sub(r"\x1b\[[0-9;]*m|[⧛⧚]", "", str(e)))


def _is_categorical(tab, name: str) -> bool:
    col = tab.column(name)
    return not is_numeric_type(col.type) and is_text_type(col.type) and text_numeric_share(as_text(col)) < 0.5


def formula_frame(tab, columns, role: str = "input"):
    """The table as a pandas DataFrame for formulaic: ``columns`` (those the formulas name) as float64 numbers or
    text categories, every other column as pyarrow gives it (formulaic finds what it needs; a column named only
    inside a transform that formulaic does not list is still there).

    Every value of ``columns`` is checked as the other commands check theirs (a missing value or a non-numeric
    cell in a numeric column is a DataError naming the column and the row).
    """
    import pandas as pd  # formulas are evaluated on DataFrames

    tab.require(columns, role)
    data = {}
    for c in tab.names:
        if c not in columns:
            data[c] = tab.column(c).to_pandas()
        elif _is_categorical(tab, c):
            data[c] = text_column(tab, c, role)
        else:
            data[c] = numeric_column(tab, c, role)
    return pd.DataFrame({c: np.asarray(v) for c, v in data.items()}, index=np.arange(tab.n))


def design_of(schema: dict) -> FormulaDesign:
    """The formula design a schema records."""
    return FormulaDesign.from_dict(schema["formula"])


def formula_inputs(tab, schema: dict):
    """X of a model written as formulas: the design's columns of the table, a DataFrame with the design's names."""
    import pandas as pd  # the estimators recognise the design's columns by their names

    design = design_of(schema)
    frame = formula_frame(tab, [f["name"] for f in schema["formula_columns"]])
    try:
        X = design.transform(frame)
    except (ValueError, TypeError) as e:
        raise DataError(f"{tab.path}: {one_line(e)}") from None
    return pd.DataFrame(X, columns=list(design.names))


def formula_targets(tab, schema: dict, classes=None) -> np.ndarray:
    """y of a model written as formulas: the target columns, or the left side evaluated (e.g. ``log(y)``)."""
    if all(t in tab.names for t in schema["targets"]):
        return encode_targets(tab, schema, classes)
    lhs = schema["formula"]["formula"].split("~", 1)[0]
    lhs_columns = formula_columns(schema["formula"]["formula"])[0]
    frame = formula_frame(tab, lhs_columns, "target")
    try:
        y = _formulaic().model_matrix(lhs + "~ 1", frame, na_action="raise", output="pandas").lhs
    except Exception as e:  # formulaic's evaluation errors
        raise DataError(f"the formula's left side {lhs.strip()!r} cannot be evaluated on {tab.path}: {one_line(e)}") \
            from None
    y = y.to_numpy(dtype=np.float64)
    return y[:, 0] if y.shape[1] == 1 else y


def formula_schema(design: dict, task: str, tab=None) -> dict:
    """The column schema of a model written as formulas, from its design (``formula_design_``).

    With the training table, each input column's kind comes from the table (text columns are categorical, with
    their sorted levels); without it (a model saved from Python), from the design's factor levels.
    """
    _, inputs = formula_columns(design["formula"], design.get("gate_formula"))
    levels = design.get("levels", {})
    feats = []
    for c in inputs:
        if tab is not None and c in tab.names and _is_categorical(tab, c):
            feats.append({"name": c, "kind": "categorical",
                          "levels": sorted({str(v) for v in text_column(tab, c, "input")})})
        elif tab is None and c in levels:
            feats.append({"name": c, "kind": "categorical", "levels": [str(v) for v in levels[c]]})
        else:
            feats.append({"name": c, "kind": "numeric"})
    names = [str(n) for n in design["names"]]
    return {"features": [{"name": n, "kind": "numeric"} for n in names], "encoded_features": names,
            "targets": [str(t) for t in design.get("targets") or ["y"]], "task": task, "formula": dict(design),
            "formula_columns": feats}
