"""moekit evaluate and moekit report: a fitted model judged on a data file, as numbers or as an HTML page."""

from __future__ import annotations

import json
import math
import os

from ..report import compute_metrics, make_report, metrics_text
from .common import (
    check_device,
    extra_arrays,
    collect_warnings,
    load_model,
    model_inputs,
    model_targets,
    progress,
    refuse_overwriting_inputs,
    say,
    schema_of,
    set_threads,
    target_names,
    with_extras,
)
from .errors import DataError, UsageError, one_line
from .tables import check_out_folder, read_table

__all__ = ["cmd_evaluate", "cmd_report"]


def _eval_data(args):
    """The model, its column schema, the table, X and y encoded as in training, and the per-row extras (offsets,
    trials, censoring limits) that the model was fitted with."""
    dev = check_device(args.device)
    est, info = load_model(args.model, dev)
    schema = schema_of(est, info, args)
    tab = read_table(args.data)
    set_threads(args, tab.n)
    X = model_inputs(est, tab, schema)
    y = model_targets(est, tab, schema)
    extras = extra_arrays(tab, schema)  # offsets, trials and censoring limits of these rows
    if extras and args.command == "report":
        raise UsageError(f"moekit report draws the model over grids of inputs, where the per-row --"
                         f"{next(iter(extras))} column has no values; use 'moekit evaluate' (and 'moekit summary') "
                         "for this model")
    return est, schema, tab, X, y, extras


def cmd_evaluate(args) -> int:
    """moekit evaluate: goodness of fit on a data file, as a table or JSON."""
    est, schema, tab, X, y, extras = _eval_data(args)
    try:
        with collect_warnings(args):
            m = compute_metrics(with_extras(est, extras), X, y, level=args.level)
    except (ValueError, TypeError) as e:
        raise DataError(f"evaluation failed: {one_line(e)}") from None
    if args.json:
        print(json.dumps(_json_ready(m), indent=2, allow_nan=False))
        return 0
    print(f"{type(est).__name__} on {tab.path} ({tab.n} rows)")
    print(metrics_text(m, None if schema["task"] == "classification" else target_names(schema)))
    return 0


def _json_ready(v):
    """Metrics as strict JSON: a NaN or infinite number (a metric undefined on these rows) becomes null."""
    if isinstance(v, dict):
        return {k: _json_ready(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_ready(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def cmd_report(args) -> int:
    """moekit report: one self-contained HTML page about the model on a data file."""
    if not args.output.lower().endswith((".html", ".htm")):
        raise UsageError(f"the report is an HTML page; give -o a name ending in .html, got '{args.output}'")
    check_out_folder(args.output, "report")
    refuse_overwriting_inputs(args.output, {"MODEL": args.model, "DATA": args.data})
    est, schema, tab, X, y, _ = _eval_data(args)
    bar = progress(1, "drawing the report", args)
    try:
        with collect_warnings(args):
            make_report(est, X, y, args.output, title=args.title or f"moekit report: {os.path.basename(args.model)}",
                        feature_names=schema["encoded_features"], target_names=None if schema["task"] == "classification"
                        else target_names(schema), level=args.level,
                        notes=f"Model file {os.path.basename(args.model)}, evaluated on {os.path.basename(tab.path)}.")
    except (ValueError, TypeError) as e:
        raise DataError(f"the report failed: {one_line(e)}") from None
    except OSError as e:
        raise DataError(f"cannot write the report '{args.output}': {one_line(e)}") from None
    bar.update(1)
    bar.close()
    say(args, f"wrote {args.output}")
    return 0
