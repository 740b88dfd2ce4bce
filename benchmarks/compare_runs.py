"""Compare moekit's EM time per iteration between two ``em_scaling.py --json`` runs (before / after a change).

Each cell's time is the median over its repeats of the repeat's mean seconds per
iteration; the table gives both and their ratio (after / before), with the load
average each run reported.

Usage::

    python benchmarks/em_scaling.py --threads 1 --repeats 3 --repeats-large 3 --json before.json   # old code
    python benchmarks/em_scaling.py --threads 1 --repeats 3 --repeats-large 3 --json after.json    # new code
    python benchmarks/compare_runs.py before.json after.json
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def cell_times(run: dict) -> dict:
    """(N, D, K) -> (median over repeats of the mean s/iter, load) for moekit."""
    out = {}
    for r in run["rows"]:
        t = np.asarray(r["moekit_times"]).reshape(r["repeats"], r["iters"])
        out[(r["N"], r["D"], r["K"])] = (float(np.median(t.mean(axis=1))), r["load"], r["ll_moekit"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--limit", type=float, default=1.10, help="flag cells slower than this ratio (default 1.10)")
    args = ap.parse_args(argv)
    with open(args.before) as f:
        a = json.load(f)
    with open(args.after) as f:
        b = json.load(f)
    ta, tb = cell_times(a), cell_times(b)
    print(f"# before: {' '.join(a['argv'])}  ({a['machine'].get('source', '')})")
    print(f"# after:  {' '.join(b['argv'])}  ({b['machine'].get('source', '')})")
    print("| N | D | K | before s/iter | after s/iter | after/before | load before | load after | |loglik diff| |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    worst, flagged = 0.0, 0
    for key in sorted(set(ta) & set(tb), key=lambda k: (k[1], k[2], k[0])):
        (s0, l0, ll0), (s1, l1, ll1) = ta[key], tb[key]
        ratio = s1 / s0
        worst = max(worst, ratio)
        flag = " **slower**" if ratio > args.limit else ""
        flagged += ratio > args.limit
        n, d, k = key
        print(f"| {n:,} | {d} | {k} | {s0:.3e} | {s1:.3e} | {ratio:.3f}{flag} | {l0} | {l1} | {abs(ll1 - ll0):.1e} |")
    print(f"\nworst ratio {worst:.3f}; {flagged} cell(s) above {args.limit:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
