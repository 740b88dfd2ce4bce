"""moekit summary: a saved model's coefficients with standard errors, as R's ``summary()`` prints them.

The standard errors were computed when the model was fitted (``compute_se=True``, kept in the model file), so
the command needs no data.  The text is ``print(model.summary())``; ``--json`` prints its ``to_dict()``,
``--csv`` its table.
"""

from __future__ import annotations

import io
import json

import numpy as np

from .common import check_device, collect_warnings, load_model, schema_of
from .errors import DataError, UsageError, one_line

__all__ = ["cmd_summary"]


def cmd_summary(args) -> int:
    """moekit summary: print the coefficient table of a model file (text, JSON or CSV)."""
    est, info = load_model(args.model, check_device(args.device))
    if not hasattr(est, "summary"):
        raise DataError(f"'{args.model}' holds an estimator of type {type(est).__name__}, which has no coefficient "
                        "table: summary reports the coefficients of mixtures of experts (--model moe or hme); a "
                        "network's weights have no standard errors")
    _name_inputs(est, info)
    try:
        with collect_warnings(args):  # a singular information: one line on stderr (and a note under the table)
            s = est.summary(se=args.se, level=args.level)
    except TypeError as e:  # no likelihood Hessian: neural or scikit-learn parts
        raise DataError(f"{args.model}: {one_line(e)}; bootstrap standard errors need the training data, so they "
                        f"are computed in Python: moekit.load({args.model!r}).summary(se='bootstrap', X=X, y=y)") \
            from None
    except ValueError as e:  # fitted without standard errors (compute_se), or by an older moekit
        raise DataError(f"{args.model}: {one_line(e)} (in Python: moekit.load({args.model!r}).summary(X=X, y=y))") \
            from None
    if args.json:
        print(json.dumps(s.to_dict(), indent=2, default=_plain))
    elif args.csv:
        buf = io.StringIO()
        s.table.to_csv(buf, index=False, float_format="%.10g")
        print(buf.getvalue(), end="")
    else:
        print(s)
    return 0


def _name_inputs(est, info) -> None:
    """Give the coefficients the columns' names for a model fitted on unnamed columns by an older 'moekit fit'
    (its file records the names in its schema); a model without names keeps ``x0, x1, ...``."""
    if getattr(est, "feature_names_in_", None) is not None:
        return
    try:
        schema = schema_of(est, info, None)
    except UsageError:
        return
    names = schema["encoded_features"]
    if len(names) == int(est.n_features_in_):
        est.feature_names_in_ = np.asarray(names, dtype=object)


def _plain(v):
    """numpy scalars in the table as JSON numbers and text."""
    if isinstance(v, np.generic):
        return v.item()
    return str(v)
