"""SQUAREM against plain EM (issue 12): wall time to the same optimum, ``fit_em(accelerate="squarem")``.

Both sides are :func:`moekit.fit_em` on the same model from the same start,
tol 1e-6 on the mean log-likelihood, max_iter 1000; only ``accelerate``
differs.  Median seconds over ``--repeats`` runs (alternating which side goes
first), M-steps (``n_iter``: for SQUAREM three per cycle, rejected
extrapolations included), final mean log-likelihoods, and whether both reach
the same maximum (|difference| <= 1e-5).

Cases:

1. the quick cells of ``em_speed.py``'s grid: N in {1e3, 1e4}, D in {1, 10},
   K in {2, 8}; data ``_numpy_em.make_data(n, d, k, 1000 d + 10 k)``, start
   ``_plain_em.random_partition(n, k, 0)`` handed to both as ``init=R``; a
   softmax gate over K linear-Gaussian experts (what ``MoERegressor`` fits);
2. tonedata, K = 2, softmax gate, ``init="random"``, seeds 0..9;
3. NPreg (y = ``yn``), K = 2, experts on x and x^2, gate on x,
   ``init="random"``, seeds 0..9.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/em_accel.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _numpy_em as npem
import _plain_em as plain
from _machine import describe

from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate, fit_em
from moekit.datasets import load_npreg, load_tonedata

TOL, MAX_ITER, SAME_MAX = 1e-6, 1000, 1e-5


def model(d_gate: int, d_exp: int, k: int, gate_features=None, expert_features=None):
    return MixtureOfExperts(SoftmaxGate(d_gate, k), LinearGaussianExpert(d_exp, n_experts=k),
                            gate_features=gate_features, expert_features=expert_features)


def timed(make, x, y, init, seed, accelerate) -> dict:
    m = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        r = fit_em(m, x, y, init=init, random_state=seed, tol=TOL, max_iter=MAX_ITER, accelerate=accelerate)
        s = time.perf_counter() - t0
    h = np.asarray(r.history)
    return {"s": s, "it": r.n_iter, "ll": r.mean_log_likelihood, "conv": r.converged,
            "mono": bool(len(h) < 2 or np.diff(h).min() >= -1e-12), "K": m.n_experts}


def compare(label, make, x, y, init, seed, reps) -> dict:
    runs = {None: [], "squarem": []}
    for i in range(reps):
        order = [None, "squarem"] if i % 2 == 0 else ["squarem", None]
        for a in order:
            runs[a].append(timed(make, x, y, init, seed, a))
    p, q = runs[None], runs["squarem"]
    row = {
        "case": label,
        "plain_s": float(np.median([r["s"] for r in p])), "sq_s": float(np.median([r["s"] for r in q])),
        "plain_it": p[0]["it"], "sq_it": q[0]["it"], "plain_ll": p[0]["ll"], "sq_ll": q[0]["ll"],
        "ok": all(r["conv"] and r["mono"] for r in p + q) and p[0]["K"] == q[0]["K"],
    }
    row["same"] = abs(row["plain_ll"] - row["sq_ll"]) <= SAME_MAX
    row["ratio"] = row["sq_s"] / row["plain_s"]
    print(f"| {label} | {row['plain_s']:.4f} | {row['sq_s']:.4f} | {row['ratio']:.2f} | {row['plain_it']} | "
          f"{row['sq_it']} | {row['plain_ll']:.6f} | {row['sq_ll']:.6f} | {'yes' if row['same'] else 'NO'} | "
          f"{'' if row['ok'] else 'not converged / pruned'} |", flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="N = 1e3 only, 3 seeds")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(describe(load_average=True))
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch threads 1\n")
    print("| case | plain s | SQUAREM s | ratio | plain M-steps | SQUAREM M-steps | plain mean ll | SQUAREM mean ll "
          "| same max | note |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    xw, yw, _ = npem.make_data(500, 2, 2, seed=1)  # warm up (first calls into torch are slow)
    for a in (None, "squarem"):
        timed(lambda: model(2, 2, 2), torch.as_tensor(xw), torch.as_tensor(yw), "random", 0, a)
    rows = []
    sizes = [1_000] if args.quick else [1_000, 10_000]
    for n in sizes:
        for d in (1, 10):
            for k in (2, 8):
                x, y, _ = npem.make_data(n, d, k, seed=1000 * d + 10 * k)
                R = torch.as_tensor(plain.random_partition(n, k, 0))
                x, y = torch.as_tensor(x), torch.as_tensor(y)
                rows.append(compare(f"grid N={n} D={d} K={k}", lambda d=d, k=k: model(d, d, k), x, y, R, 0,
                                    args.repeats))
    seeds = range(3) if args.quick else range(10)
    t = load_tonedata()
    x, y = torch.as_tensor(np.asarray(t.data, float)).reshape(-1, 1), torch.as_tensor(np.asarray(t.target, float))
    for s in seeds:
        rows.append(compare(f"tonedata K=2 seed {s}", lambda: model(1, 1, 2), x, y, "random", s, args.repeats))
    npr = load_npreg()
    xn = torch.as_tensor(np.asarray(npr.data, float)).reshape(-1, 1)
    x2, yn = torch.cat([xn, xn**2], 1), torch.as_tensor(np.asarray(npr.target, float))
    for s in seeds:
        rows.append(compare(f"NPreg K=2 seed {s}", lambda: model(1, 2, 2, [0], [0, 1]), x2, yn, "random", s,
                            args.repeats))
    wins = sum(r["ratio"] < 1 for r in rows)
    tot_p, tot_q = sum(r["plain_s"] for r in rows), sum(r["sq_s"] for r in rows)
    print(f"\nSQUAREM faster in {wins}/{len(rows)} cases; same maximum in {sum(r['same'] for r in rows)}/{len(rows)}; "
          f"total {tot_p:.3f} s plain, {tot_q:.3f} s SQUAREM; load average now {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
