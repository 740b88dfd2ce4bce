"""Record the golden values of every case in ``cases.py`` into ``golden_values.json``.

Run it against the code to be preserved, exported outside the repository::

    mkdir -p /work/golden-src && git archive 3f50516 | tar -x -C /work/golden-src
    PYTHONPATH=/work/golden-src python tests/golden/record.py --expect-moekit-under /work/golden-src

It prints ``moekit.__file__`` (and, with ``--expect-moekit-under``, refuses to
record from any other copy), runs every case single-threaded, and writes the
values with full float precision (``repr``; nothing is rounded).  Timings and
the warnings each case raised go to the ``meta`` block, which the test does
not compare.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name: str):
    modname = "moekit_golden_" + name
    if modname not in sys.modules:
        spec = importlib.util.spec_from_file_location(modname, os.path.join(HERE, name + ".py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        spec.loader.exec_module(mod)
    return sys.modules[modname]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default=os.path.join(HERE, "golden_values.json"))
    ap.add_argument("--expect-moekit-under", default=None, help="fail unless moekit is imported from this folder")
    ap.add_argument("--source", default="git archive 3f50516", help="what code is being recorded (stored in meta)")
    ap.add_argument("--only", nargs="*", default=None, help="record only these cases (others kept from --output)")
    args = ap.parse_args(argv)

    import numpy as np
    import scipy
    import sklearn
    import torch

    import moekit

    torch.set_num_threads(1)
    print(f"moekit.__file__ = {moekit.__file__}")
    if args.expect_moekit_under is not None:
        want = os.path.realpath(args.expect_moekit_under) + os.sep
        if not os.path.realpath(moekit.__file__).startswith(want):
            print(f"error: moekit is not imported from {args.expect_moekit_under}", file=sys.stderr)
            return 1
    cases = _load("cases")

    names = list(cases.CASES) if not args.only else args.only
    old = {}
    if args.only and os.path.exists(args.output):
        with open(args.output) as f:
            old = json.load(f)
    values = dict(old.get("cases", {}))
    seconds = dict(old.get("meta", {}).get("seconds", {}))
    caught = dict(old.get("meta", {}).get("warnings", {}))
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        values[name], w = cases.run_case(name, return_warnings=True)
        seconds[name] = round(time.perf_counter() - t0, 3)
        caught[name] = sorted({f"{c}: {m.splitlines()[0][:160]}" for c, m in w})
        print(f"{name:32s} {seconds[name]:7.2f} s  {values[name]['tolerance']:8s}"
              f"{'  slow' if cases.CASES[name].slow else ''}  warnings: {len(w)}", flush=True)
    print(f"total {time.perf_counter() - t_all:.1f} s for {len(names)} case(s)")
    out = {
        "meta": {
            "description": "golden values of moekit (see tests/golden/cases.py); meta is not compared",
            "source": args.source,
            "moekit_file": moekit.__file__,
            "versions": {
                "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                "scipy": scipy.__version__, "sklearn": sklearn.__version__,
            },
            "torch_threads": torch.get_num_threads(),
            "tolerances": cases.TOLERANCES,
            "seconds": {k: seconds[k] for k in cases.CASES if k in seconds},
            "warnings": {k: caught[k] for k in cases.CASES if k in caught},
        },
        "cases": {k: values[k] for k in cases.CASES if k in values},
    }
    if "updated" in old.get("meta", {}):  # --only: the record of intended changes stays (add the new reason by hand)
        out["meta"]["updated"] = old["meta"]["updated"]
        out["meta"]["source"] = old["meta"].get("source", args.source)
    with open(args.output, "w") as f:
        json.dump(out, f, indent=1, allow_nan=True)
        f.write("\n")
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 1024:.0f} KiB, {len(out['cases'])} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
