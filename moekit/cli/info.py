"""moekit info: what a model file holds (model, tree, sizes, training data, versions)."""

from __future__ import annotations

import json

import numpy as np

from ..report import describe_model
from .common import check_device, load_model

__all__ = ["cmd_info"]


def cmd_info(args) -> int:
    """moekit info: describe a model file (as text or JSON)."""
    est, info = load_model(args.model, check_device(args.device))
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
