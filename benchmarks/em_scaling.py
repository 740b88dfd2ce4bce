"""EM scaling benchmark: moekit's EM against a straightforward vectorised NumPy EM.

Model: a softmax gate on x over K linear-Gaussian experts with scalar y,
``MixtureOfExperts(SoftmaxGate(D, K), LinearGaussianExpert(D, n_experts=K))``.

For every (N, D, K) the script

1. draws data from a known K-expert softmax-gated model with a seeded
   ``numpy.random.Generator`` (``_numpy_em.make_data``);
2. builds ONE start (k-means on standardised [x, y], softened labels, one
   M-step; ``_numpy_em.initial_params``) and loads exactly those parameters
   into both implementations;
3. runs the same number of EM iterations in both (float64, default torch
   threads, NumPy's own BLAS);
4. reports the mean (and median) seconds per iteration, one iteration being
   an E-step and an M-step (gate: up to ``max_m_steps=5`` Newton steps with
   the exact Hessian and step-halving, ``SoftmaxGate``'s default; experts:
   weighted least squares and variance).  Data generation, the start, input
   checks and the final E-step are not timed;
5. reports the final mean per-sample log-likelihood of both and their
   difference, which checks that both ran the same algorithm.

Drivers (``--driver``):

* ``interleaved`` (default): the public ``MixtureOfExperts.em_step`` and one
  NumPy step alternate, iteration by iteration, so both see the same machine
  load (the benchmark machine may be shared with other jobs);
* ``fit_em``: ``moekit.fit_em(model, x, y, init=None, max_iter=iters, tol=0)``
  timed between its first and last ``callback``, and the NumPy loop, one
  after the other (alternating which goes first over the repeats).

Usage::

    python benchmarks/em_scaling.py                 # full grid (N up to 1e6, 5 iterations at 1e6)
    python benchmarks/em_scaling.py --quick         # N <= 1e4
    python benchmarks/em_scaling.py --sizes 1000 100000 --d 10 --k 8 --iters 10
    python benchmarks/em_scaling.py --driver fit_em --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import fmt_n, machine_info  # noqa: E402  (benchmarks/ is the script's folder)
import _numpy_em as npem  # noqa: E402

from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate, fit_em  # noqa: E402

DEFAULT_SIZES = [1_000, 10_000, 100_000, 1_000_000]
QUICK_SIZES = [1_000, 10_000]


# ------------------------------------------------------------------ moekit
def make_moekit(d: int, k: int, W: np.ndarray, B: np.ndarray, s: np.ndarray) -> MixtureOfExperts:
    """The moekit model with exactly the parameters (W, B, s)."""
    moe = MixtureOfExperts(SoftmaxGate(d, k, max_m_steps=5), LinearGaussianExpert(d, n_experts=k))
    with torch.no_grad():
        moe.gate.coef.copy_(torch.from_numpy(W))
        moe.experts.coef.copy_(torch.from_numpy(B)[:, :, None])
        moe.experts.log_scale.copy_(torch.from_numpy(np.log(s))[:, None])
    return moe


def run_moekit(x, y, start, iters: int):
    """Driver ``fit_em``: moekit alone, ``fit_em(init=None, max_iter=iters, tol=0)``.

    Timed between the first and the last ``callback`` (each interval is one
    M-step and the following E-step).
    """
    d, k = x.shape[1], start[0].shape[0]
    moe = make_moekit(d, k, *start)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    stamps: list[float] = []

    def cb(it, ll, m):
        stamps.append(time.perf_counter())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: tol=0 never converges
        res = fit_em(moe, xt, yt, init=None, max_iter=iters, tol=0.0, callback=cb)
    if res.pruned:
        raise RuntimeError(f"moekit pruned experts {res.pruned}; the two runs would differ")
    return {"times": list(np.diff(stamps)), "ll": res.history[-1]}


def run_numpy(x, y, start, iters: int):
    """Driver ``fit_em``: the NumPy baseline alone, the same loop."""
    em = npem.NumpyEM(x, y, *start)
    n = len(y)
    X1, yy = em.X1, em.y
    R, _ = npem.e_step(X1, yy, em.W, em.B, em.s)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        em.W, acc = npem.gate_m_step(X1, R, em.W)
        em.B, em.s = npem.expert_m_step(X1, yy, R)
        R, ll = npem.e_step(X1, yy, em.W, em.B, em.s)
        times.append(time.perf_counter() - t0)
        em.newton_steps.append(acc)
    return {"times": times, "ll": ll / n, "newton": float(np.mean(em.newton_steps))}


def run_interleaved(x, y, start, iters: int):
    """Driver ``interleaved`` (default): one moekit ``em_step``, then one NumPy step, and so on.

    Both sides see the same machine load, iteration by iteration (the
    machine may be shared).  Each timed step is one E-step and one M-step;
    the final log-likelihood is one more (untimed) E-step on each side.
    """
    d, k = x.shape[1], start[0].shape[0]
    moe = make_moekit(d, k, *start)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    em = npem.NumpyEM(x, y, *start)
    tm, tn = [], []
    for i in range(iters):
        first_numpy = i % 2 == 1  # alternate which goes first
        if first_numpy:
            t0 = time.perf_counter()
            em.step()
            tn.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        moe.em_step(xt, yt)
        tm.append(time.perf_counter() - t0)
        if not first_numpy:
            t0 = time.perf_counter()
            em.step()
            tn.append(time.perf_counter() - t0)
    ll_m = float(moe.log_prob(xt, yt).sum())
    return (
        {"times": tm, "ll": ll_m / len(y)},
        {"times": tn, "ll": em.loglik(), "newton": float(np.mean(em.newton_steps))},
    )


# ----------------------------------------------------------------- helpers
def warm_up() -> None:
    x, y, _ = npem.make_data(2000, 2, 3, seed=123)
    start = npem.initial_params(x, y, 3, seed=0)
    run_moekit(x, y, start, 2)
    run_numpy(x, y, start, 2)
    run_interleaved(x, y, start, 2)


def slope(ns, ts) -> float:
    """Least-squares slope of log t on log N (1 = linear)."""
    if len(ns) < 2:
        return float("nan")
    return float(np.polyfit(np.log(ns), np.log(ts), 1)[0])


# -------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N in {1e3, 1e4} only")
    ap.add_argument("--sizes", type=int, nargs="+", help="values of N (default 1e3 1e4 1e5 1e6)")
    ap.add_argument("--d", type=int, nargs="+", default=[1, 10], help="values of D (default 1 10)")
    ap.add_argument("--k", type=int, nargs="+", default=[2, 4, 8], help="values of K (default 2 4 8)")
    ap.add_argument("--iters", type=int, default=20, help="EM iterations, the same for both (default 20)")
    ap.add_argument(
        "--iters-large", type=int, default=5,
        help="EM iterations for N >= 1e6, the same for both (default 5; 0: use --iters)",
    )
    ap.add_argument(
        "--repeats", type=int, default=3,
        help="runs per cell for N < 1e6; their iteration times are pooled (default 3)",
    )
    ap.add_argument("--repeats-large", type=int, default=1, help="runs per cell for N >= 1e6 (default 1)")
    ap.add_argument(
        "--driver", choices=("interleaved", "fit_em"), default="interleaved",
        help="interleaved: alternate one moekit em_step and one NumPy step (default; robust to a shared "
        "machine); fit_em: moekit.fit_em(init=None, tol=0) and the NumPy loop one after the other",
    )
    ap.add_argument(
        "--threads", type=int, default=None,
        help="set torch.set_num_threads and NumPy's BLAS threads (threadpoolctl) to this; "
        "default: leave both at their defaults",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the raw results (every iteration time) to this JSON file")
    args = ap.parse_args(argv)

    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if args.quick:
        sizes = [n for n in sizes if n <= 10_000]
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    info = machine_info()
    print(f"# moekit EM scaling  ({' '.join([os.path.basename(sys.executable)] + sys.argv)})")
    print(
        f"# {info['date']}  CPU: {info['cpu']}  cores: {info['cores']}  torch {info['torch']} "
        f"(threads {info['torch_threads']})  numpy {info['numpy']} (BLAS: {info['numpy_blas']})  "
        f"python {info['python']}"
    )
    print(f"# moekit: {info['source']}")
    print(f"# driver: {args.driver}; load average at start: {tuple(round(v, 2) for v in os.getloadavg())}")
    print(
        "# float64; gate: SoftmaxGate(max_m_steps=5) Newton steps with step-halving in both; "
        "time = seconds per EM iteration (one E-step + one M-step)",
        flush=True,
    )
    warm_up()

    rows = []
    t_all = time.perf_counter()
    for d in args.d:
        for k in args.k:
            for n in sizes:
                x, y, _ = npem.make_data(n, d, k, seed=args.seed + 1000 * d + 10 * k)
                start = npem.initial_params(x, y, k, seed=args.seed)
                large = n >= 1_000_000
                iters = args.iters_large if (large and args.iters_large) else args.iters
                reps = args.repeats_large if large else args.repeats
                load0 = os.getloadavg()[0]
                mk, nm = [], []
                for r in range(reps):
                    if args.driver == "interleaved":
                        a, b = run_interleaved(x, y, start, iters)
                    elif r % 2 == 0:
                        b = run_numpy(x, y, start, iters)
                        a = run_moekit(x, y, start, iters)
                    else:
                        a = run_moekit(x, y, start, iters)
                        b = run_numpy(x, y, start, iters)
                    mk.append(a)
                    nm.append(b)
                tm = np.concatenate([r["times"] for r in mk])
                tn = np.concatenate([r["times"] for r in nm])
                row = {
                    "N": n, "D": d, "K": k, "iters": iters, "repeats": reps,
                    "moekit_s": float(tm.mean()), "numpy_s": float(tn.mean()),
                    "moekit_med": float(np.median(tm)), "numpy_med": float(np.median(tn)),
                    "ratio": float(tm.mean() / tn.mean()), "ratio_med": float(np.median(tm) / np.median(tn)),
                    "ll_moekit": mk[0]["ll"], "ll_numpy": nm[0]["ll"],
                    "diff": abs(mk[0]["ll"] - nm[0]["ll"]),
                    "newton": nm[0]["newton"],
                    "load": round((load0 + os.getloadavg()[0]) / 2, 1),
                    "moekit_times": tm.tolist(), "numpy_times": tn.tolist(),
                }
                rows.append(row)
                flag = "" if row["diff"] < 1e-8 else "  <-- CHECK: the runs differ"
                print(
                    f"  done N={fmt_n(n):>4} D={d:>2} K={k}: moekit {row['moekit_s']:.4g} s/it, "
                    f"numpy {row['numpy_s']:.4g} s/it, ratio {row['ratio']:.2f} (median {row['ratio_med']:.2f}), "
                    f"|dll| {row['diff']:.1e}, Newton steps/M-step {row['newton']:.2f}, load {row['load']}{flag}",
                    flush=True,
                )

    # -------------------------------------------------------------- table
    print()
    print(
        "| N | D | K | iters | moekit s/iter | numpy s/iter | moekit/numpy (mean) | moekit/numpy (median) "
        "| mean loglik moekit | mean loglik numpy | abs diff | load |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (r["D"], r["K"], r["N"])):
        print(
            f"| {fmt_n(r['N'])} | {r['D']} | {r['K']} | {r['iters']} | {r['moekit_s']:.3e} | {r['numpy_s']:.3e} | "
            f"{r['ratio']:.2f} | {r['ratio_med']:.2f} | {r['ll_moekit']:.10f} | {r['ll_numpy']:.10f} | "
            f"{r['diff']:.1e} | {r['load']} |"
        )
    print()
    print("s/iter: mean over all timed iterations (iters x repeats); moekit/numpy < 1 means moekit is faster;")
    print("load: 1-minute load average while the cell ran (the machine has %s cores)." % info["cores"])
    worst = max(rows, key=lambda r: r["ratio"])
    n_slower = sum(r["ratio"] > 1 for r in rows)
    n_slower_med = sum(r["ratio_med"] > 1 for r in rows)
    print(
        f"moekit slower than NumPy in {n_slower} of {len(rows)} cells by the mean ({n_slower_med} by the median); "
        f"worst mean ratio {worst['ratio']:.2f} at N={fmt_n(worst['N'])} D={worst['D']} K={worst['K']}. "
        f"Largest |mean loglik diff| {max(r['diff'] for r in rows):.1e}."
    )

    # ---------------------------------------------------------- linearity
    print()
    print("Linearity: microseconds per row per EM iteration (median iteration time / N), and the log-log")
    print("slope of the median time on N over N >= 1e4 (1.00 = linear; N = 1e3 is dominated by per-call overhead).")
    print()
    ns_all = sorted({r["N"] for r in rows})
    head = " | ".join(f"N={fmt_n(n)}" for n in ns_all)
    print(f"| D | K | impl | {head} | slope (N>=1e4) |")
    print("|---:|---:|---|" + "---:|" * len(ns_all) + "---:|")
    for d in args.d:
        for k in args.k:
            for impl, key in (("moekit", "moekit_med"), ("numpy", "numpy_med")):
                cells = {r["N"]: r[key] for r in rows if r["D"] == d and r["K"] == k}
                vals = " | ".join(f"{cells[n] / n * 1e6:.3f}" if n in cells else "" for n in ns_all)
                big = [n for n in ns_all if n >= 10_000 and n in cells]
                sl = slope(big, [cells[n] for n in big])
                print(f"| {d} | {k} | {impl} | {vals} | {'n/a' if math.isnan(sl) else f'{sl:.2f}'} |")
    print()
    print(
        f"# total wall time {time.perf_counter() - t_all:.0f} s; load average at end: "
        f"{tuple(round(v, 2) for v in os.getloadavg())}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "argv": sys.argv, "driver": args.driver, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
