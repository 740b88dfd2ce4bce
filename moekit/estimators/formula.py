"""Formulas for the experts and the gate, as R users write them: ``"yn ~ x + I(x**2)"`` and ``"~ x"``.

A :class:`FormulaDesign` turns a pandas DataFrame into the model's inputs with formulaic (factors,
interactions, transformations such as ``log(x)`` or ``I(x**2)``): the columns of the expert formula's
right-hand side, then those of the gate formula not already among them, without formulaic's
``Intercept`` (every moekit gate and expert has its own). Which columns the experts and the gate see
are recorded as index lists (the estimators' ``expert_features`` and ``gate_features``), and the
column names are formulaic's (``x``, ``I(x ** 2)``, ``c[T.b]``, ``x:c[T.b]``), the same treatment-coding
names as the one-hot encoding of DataFrames and the command line.

The design is plain JSON (the formulas and the categories of each factor), so model files keep it:
predicting on new data materialises the same formulas with each factor's categories fixed to those
seen in fitting. Transforms whose result depends on the data they are given (``center``, ``scale``,
spline bases: formulaic's stateful transforms) would silently change meaning on new data, so they
are refused with the fix (compute the column beforehand).

formulaic evaluates a term such as ``I(x**2)`` as Python. A model file keeps its formulas, and loading
one must never run code, so every term is checked against a small grammar before anything is
evaluated (:func:`check_safe_formula`): columns, numbers, arithmetic, comparisons and the functions
in :data:`SAFE_FUNCTIONS`.
"""

from __future__ import annotations

import ast
import re

import numpy as np

from .._validation import PARAMETERS
from .._encoding import is_dataframe

__all__ = ["SAFE_FUNCTIONS", "FormulaDesign", "check_safe_formula"]


def _formulaic():
    # slow to import (0.9 s with pandas) and needed only by models written as formulas
    import formulaic  # noqa: PLC0415

    return formulaic


#: Functions a formula may call (bare or as ``np.<name>``): formulas are data, not code, so that a model file's
#: formula can never run anything but arithmetic on its columns.
SAFE_FUNCTIONS = frozenset({"I", "C", "log", "log2", "log10", "log1p", "exp", "expm1", "sqrt", "abs", "sin", "cos",
                            "tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "floor", "ceil"})
_MODULES = frozenset({"np", "numpy"})
#: formulaic's transforms whose result depends on the data they are given: refused (their meaning would change on
#: new data).
_STATEFUL = frozenset({"center", "scale", "standardize", "poly", "bs", "cs", "cc", "cr", "ns", "hashed", "lag",
                       "splines"})
_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Call, ast.Name, ast.Attribute,
          ast.Constant, ast.keyword, ast.Load, ast.Tuple, ast.List, ast.operator, ast.unaryop, ast.boolop, ast.cmpop)


def check_safe_formula(formula: str, name: str) -> None:
    """Refuse a formula whose terms would run anything but arithmetic and :data:`SAFE_FUNCTIONS` on columns.

    formulaic evaluates Python expressions in terms (``I(...)``, ``log(x)``); a model file keeps its formulas and
    evaluates them on new data, so the terms are held to a small grammar, checked before any evaluation: column
    names, numbers and strings, arithmetic and comparisons, and calls of the listed functions (bare or ``np.``).
    """
    parsed = _formulaic().Formula(formula)
    for expr in _python_terms(parsed):
        try:
            tree = ast.parse(expr, mode="eval")
        except SyntaxError:
            raise ValueError(f"{name} {formula!r}: the term {expr!r} is not an expression moekit can read") from None
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _STATEFUL:
                raise ValueError(f"{name} {formula!r} uses a transform that learns from the data ({expr}); its "
                                 "meaning would change on new data: compute that column beforehand and name it")
            why = _unsafe(node)
            if why:
                raise ValueError(
                    f"{name} {formula!r}: the term {expr!r} {why}; formula terms may use columns, numbers, "
                    f"arithmetic and the functions {', '.join(sorted(SAFE_FUNCTIONS))} (compute anything else as a "
                    "column of the data beforehand)"
                )


def _python_terms(parsed):
    """The factors of a (structured) formula that formulaic would evaluate as Python."""
    if hasattr(parsed, "lhs") and hasattr(parsed, "rhs"):
        yield from _python_terms(parsed.lhs)
        yield from _python_terms(parsed.rhs)
        return
    for term in parsed:
        for factor in term.factors:
            if str(getattr(factor.eval_method, "value", factor.eval_method)) == "python":
                yield str(factor.expr)


def _unsafe(node) -> str:
    if not isinstance(node, _NODES):
        return f"uses {type(node).__name__.lower()} syntax"
    if isinstance(node, ast.Name) and node.id.startswith("_"):
        return f"names {node.id!r}"
    if isinstance(node, ast.Attribute):
        if not (isinstance(node.value, ast.Name) and node.value.id in _MODULES and node.attr in SAFE_FUNCTIONS):
            return "reads an attribute"
    if isinstance(node, ast.Call):
        f = node.func
        ok = (isinstance(f, ast.Name) and f.id in SAFE_FUNCTIONS) or (
            isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in _MODULES
            and f.attr in SAFE_FUNCTIONS)
        if not ok:
            return f"calls {ast.unparse(f)!r}"
    if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, str, bool)):
        return f"holds the constant {node.value!r}"
    return ""


class FormulaDesign:
    """The inputs (and target) of a mixture of experts written as formulas over a DataFrame.

    Parameters
    ----------
    formula : str
        The experts' formula, ``"target ~ terms"`` (a vector target: ``"y1 + y2 ~ x"``).
    gate_formula : str, optional
        The gate's one-sided formula, ``"~ terms"``; default: the experts' terms.

    Shapes
    ------
    ``fit(data)`` returns X (n, p) with p the union of both formulas' columns (no intercept) and y
    (n,) or (n, d_y); ``transform(data)`` returns X (n, p).

    Examples
    --------
    >>> import pandas as pd
    >>> data = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "g": ["a", "b", "a", "b"], "y": [1.0, 0.0, 2.0, 1.0]})
    >>> d = FormulaDesign("y ~ x + I(x**2)", "~ x + g")
    >>> X, y = d.fit(data)
    >>> d.names, d.expert_features, d.gate_features
    (['x', 'I(x ** 2)', 'g[T.b]'], [0, 1], [0, 2])
    """

    def __init__(self, formula: str, gate_formula: str | None = None):
        if not isinstance(formula, str):  # the estimators' parameter may be None; a design needs one
            raise ValueError(f"formula must be a formula string such as 'y ~ x', got {formula!r}")
        PARAMETERS["formula"].check(formula, "formula")  # the estimators' own spec: two-sided
        PARAMETERS["gate_formula"].check(gate_formula, "gate_formula")  # one-sided, or None
        self.formula, self.gate_formula = formula, gate_formula
        for text, name in ((self.formula, "formula"), (self.gate_formula, "gate_formula")):
            if text is not None:
                try:
                    check_safe_formula(text, name)
                except ValueError:
                    raise
                except Exception as err:  # noqa: BLE001 - formulaic's parser refusing the text
                    raise ValueError(f"{name} {text!r} could not be parsed: {err}") from None
        self.names: list[str] = []
        self.expert_features: list[int] = []
        self.gate_features: list[int] = []
        self.targets: list[str] = []
        self.levels: dict = {}

    # ------------------------------------------------------------ fitting
    def fit(self, data):
        """Materialise both formulas on ``data``; returns ``(X, y)`` and records the design."""
        _check_frame(data)
        mm = self._materialise(self.formula, data, what="formula")
        y = mm.lhs.to_numpy(dtype=np.float64)
        self.targets = [str(c) for c in mm.lhs.columns]
        expert = self._rhs(mm.rhs)
        self.levels = self._factor_levels(mm.rhs.model_spec)
        if self.gate_formula is None:
            gate = expert
        else:
            gm = self._materialise(self.gate_formula, data, what="gate_formula")
            gate = self._rhs(gm)
            self.levels.update(self._factor_levels(gm.model_spec))
        names = list(expert.columns)
        names += [c for c in gate.columns if c not in names]
        self.names = [str(c) for c in names]
        self.expert_features = [names.index(c) for c in expert.columns]
        self.gate_features = [names.index(c) for c in gate.columns]
        X = np.column_stack([_column(expert, gate, c) for c in names]) if names else np.zeros((len(data), 0))
        if not names:
            raise ValueError(f"formula {self.formula!r} and gate_formula {self.gate_formula!r} leave no input "
                             "column (moekit's experts and gate have their own intercepts); add a term such as '~ x'")
        return X, (y[:, 0] if y.shape[1] == 1 else y)

    def transform(self, data) -> np.ndarray:
        """The inputs of new data, by the recorded design (factors with their fitted categories)."""
        _check_frame(data)
        data = self._with_levels(data)
        rhs = self.formula.split("~", 1)[1]
        expert = self._rhs(self._materialise("~" + rhs, data, what="formula"))
        gate = expert if self.gate_formula is None else \
            self._rhs(self._materialise(self.gate_formula, data, what="gate_formula"))
        missing = [c for c in self.names if c not in expert.columns and c not in gate.columns]
        if missing:
            raise ValueError(f"the data give no column {missing[0]!r} of the fitted design ({', '.join(self.names)})")
        return np.column_stack([_column(expert, gate, c) for c in self.names])

    # ------------------------------------------------------------ helpers
    def _materialise(self, formula: str, data, *, what: str):
        f = _formulaic()
        try:
            mm = f.model_matrix(formula, data, na_action="raise", output="pandas")
        except f.errors.FactorEvaluationError as err:
            name = _missing_name(str(err))
            cols = ", ".join(str(c) for c in data.columns)
            if name is not None:
                raise ValueError(f"{what} {formula!r} names {name!r}, which is not a column of the data "
                                 f"(columns: {cols})") from None
            raise ValueError(f"{what} {formula!r} could not be evaluated on the data: {err}") from None
        except (f.errors.FormulaicError, SyntaxError, ValueError) as err:
            raise ValueError(f"{what} {formula!r} could not be used: {err}") from None
        spec = mm.rhs.model_spec if hasattr(mm, "rhs") else mm.model_spec
        stateful = sorted(k for k, v in (spec.transform_state or {}).items() if v)
        if stateful:
            raise ValueError(f"{what} {formula!r} uses a transform that learns from the data ({stateful[0]}); its "
                             "meaning would change on new data: compute that column beforehand and name it")
        return mm

    @staticmethod
    def _rhs(matrix):
        cols = [c for c in matrix.columns if c != "Intercept"]
        return matrix[cols].astype(np.float64)

    @staticmethod
    def _factor_levels(spec) -> dict:
        out = {}
        for factor, (kind, state) in (spec.encoder_state or {}).items():
            if getattr(kind, "value", kind) == "categorical":
                out[str(factor)] = [_plain(v) for v in state.get("categories", [])]
        return out

    def _with_levels(self, data):
        """A copy of ``data`` whose factor columns are categoricals with the fitted categories (an unseen level is
        an error naming the column and the level)."""
        import pandas as pd  # optional heavy dependency: formulas need pandas DataFrames

        if not self.levels:
            return data
        data = data.copy()
        for col, levels in self.levels.items():
            if col not in data.columns:
                continue  # a factor written as an expression (C(x)): formulaic reports what is missing
            vals = data[col]
            unseen = sorted({_plain(v) for v in vals.dropna().tolist()} - set(levels), key=str)
            if unseen:
                raise ValueError(f"column {col!r} holds the level {unseen[0]!r}, which the model never saw in "
                                 f"fitting (known: {', '.join(map(str, levels[:10]))})")
            data[col] = pd.Categorical(vals.map(_plain), categories=levels)
        return data

    # ------------------------------------------------------------ storage
    def to_dict(self) -> dict:
        """Plain JSON: the formulas, the column names and feature lists, the targets and each factor's levels."""
        return {"formula": self.formula, "gate_formula": self.gate_formula, "names": list(self.names),
                "expert_features": list(self.expert_features), "gate_features": list(self.gate_features),
                "targets": list(self.targets), "levels": {k: list(v) for k, v in self.levels.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "FormulaDesign":
        """The design :meth:`to_dict` wrote."""
        out = cls(d["formula"], d.get("gate_formula"))
        out.names = [str(v) for v in d["names"]]
        out.expert_features = [int(v) for v in d["expert_features"]]
        out.gate_features = [int(v) for v in d["gate_features"]]
        out.targets = [str(v) for v in d.get("targets", [])]
        out.levels = {str(k): list(v) for k, v in d.get("levels", {}).items()}
        return out


def _check_frame(data) -> None:
    if not is_dataframe(data):
        raise TypeError(f"a model written as a formula takes a pandas DataFrame holding the named columns, got "
                        f"{type(data).__name__}")


def _column(expert, gate, name):
    return (expert[name] if name in expert.columns else gate[name]).to_numpy(dtype=np.float64)


def _plain(v):
    """A level as JSON keeps it: numbers as numbers, everything else as text."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    return str(v)


def _missing_name(message: str):
    """The name formulaic says is missing, from ``... `name` is not present in the dataset ...``."""
    m = re.search(r"`([^`]+)` is not present", message)
    return None if m is None else m.group(1)
