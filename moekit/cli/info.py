"""moekit info: what a model file holds (model, tree, sizes, training data, versions)."""

from __future__ import annotations

import json

import numpy as np

from ..report import describe_model
from .common import check_device, load_model, schema_of
from .errors import UsageError

__all__ = ["cmd_info"]

_SCHEMA_KEYS = ("features", "encoded_features", "targets", "formula_columns", "formula")


def cmd_info(args) -> int:
    """moekit info: describe a model file (as text or JSON)."""
    est, info = load_model(args.model, check_device(args.device))
    meta = info.get("metadata") or {}
    cli = meta.get("cli") if isinstance(meta, dict) else None
    try:  # a model saved from Python: the schema of its formulas or of its encoded DataFrame, where it has one
        schema = schema_of(est, info, None)
    except UsageError:  # saved without column names
        schema = None
    fn = schema.get("encoded_features") if schema else None
    tn = schema.get("targets") if schema and schema.get("task") != "classification" and (cli or "formula" in schema) \
        else None
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
            "columns": None if schema is None else {k: schema[k] for k in _SCHEMA_KEYS if k in schema},
        }
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"{args.model}: moekit model file, format version {info['format_version']}, {info['file_size']} bytes")
    print(f"  written by moekit {info['moekit_version']} with torch {info['torch_version']}")
    print(f"  {n_tensors} tensors, {n_numbers} numbers; checksum sha256 {str(info.get('checksum'))[:16]}...")
    print(describe_model(est, fn, tn))
    params = ", ".join(f"{k}={v!r}" for k, v in sorted(info["params"].items()))
    print(f"  parameters: {params}")
    if schema and "formula" in schema:
        f = schema["formula"]
        print(f"  formula: {f['formula']}" + (f"; gate formula: {f['gate_formula']}" if f.get("gate_formula") else ""))
    if schema and (not cli or "formula" in schema):
        for f in schema.get("formula_columns", schema["features"]):
            if f["kind"] == "categorical":
                print(f"  one-hot encoded: {f['name']} -> levels {f['levels']} (reference: {f['levels'][0]})")
    if cli:
        td = cli.get("training_data", {})
        print(f"  trained on {td.get('file', '?')}: {td.get('rows', '?')} rows")
        for name, s in td.get("columns", {}).items():
            if "counts" in s:
                cnt = ", ".join(f"{a}: {b}" for a, b in list(s["counts"].items())[:8])
                print(f"    {name} ({s['kind']}): {cnt}")
            elif s.get("min") is None:
                print(f"    {name} ({s['kind']}): every value missing")
            else:
                gaps = f", {s['missing']} missing" if s.get("missing") else ""
                print(f"    {name} ({s['kind']}): min {s['min']:.4g}, max {s['max']:.4g}, mean {s['mean']:.4g}, "
                      f"std {s['std']:.4g}{gaps}")
        if "formula" not in cli:
            for f in cli["features"]:
                if f["kind"] == "categorical":
                    print(f"  one-hot encoded: {f['name']} -> levels {f['levels']} (reference: {f['levels'][0]})")
        sel = cli.get("selection")
        if sel:
            skipped = sel.get("skipped") or {}
            also = f"; skipped K={', K='.join(skipped)}: as many parameters as rows or more" if skipped else ""
            print(f"  K chosen by {sel['criterion']}: {sel['chosen']} (scores {sel['scores']}{also})")
        for kw, col in (cli.get("extras") or {}).items():
            print(f"  --{kw} column: {col} (read from the data, not an input)")
        if cli.get("command"):
            print(f"  command: {cli['command']}")
    return 0
