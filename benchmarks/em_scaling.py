"""EM scaling benchmark: moekit.fit_em against a straightforward vectorised NumPy EM.

Model: a softmax gate on x over K linear-Gaussian experts with scalar y,
``MixtureOfExperts(SoftmaxGate(D, K), LinearGaussianExpert(D, n_experts=K))``.

For every (N, D, K) the script

1. draws data from a known K-expert softmax-gated model with a seeded
   ``numpy.random.Generator`` (``_numpy_em.make_data``);
2. builds ONE start (k-means on standardised [x, y], softened labels, one
   M-step; ``_numpy_em.initial_params``) and loads exactly those parameters
   into both implementations;
3. runs the same number of EM iterations in both, moekit through
   ``fit_em(model, x, y, init=None, max_iter=iters, tol=0)`` (float64, default
   torch threads) and the NumPy baseline ``_numpy_em.fit_em``;
4. reports the mean seconds per iteration, one iteration being an M-step
   (gate: up to ``max_m_steps=5`` Newton steps with the exact Hessian and
   step-halving, as ``SoftmaxGate``'s default; experts: weighted least squares
   and variance) plus the following E-step.  The set-up, the input checks and
   the initial E-step are excluded on both sides (moekit is timed between its
   first and last ``callback``);
5. reports the final mean per-sample log-likelihood of both and their
   difference, which checks that both ran the same algorithm.

Each (N, D, K) is run ``--repeats`` times, alternating which implementation
goes first; the table shows the fastest repeat of each (the machine may be
shared).  Usage::

    python benchmarks/em_scaling.py                 # full grid
    python benchmarks/em_scaling.py --quick         # N <= 1e4
    python benchmarks/em_scaling.py --sizes 1000 100000 --d 10 --k 8 --iters 10
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _numpy_em as npem  # noqa: E402

from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate, fit_em  # noqa: E402

DEFAULT_SIZES = [1_000, 10_000, 100_000, 1_000_000]
QUICK_SIZES = [1_000, 10_000]


# ------------------------------------------------------------------ moekit
def make_moekit(d: int, k: int, W: np.ndarray, B: np.ndarray, s: np.ndarray) -> MixtureOfExperts:
    """The moekit model with exactly the parameters (W, B, s)."""
    moe = MixtureOfExperts(SoftmaxGate(d, k), LinearGaussianExpert(d, n_experts=k))
    with torch.no_grad():
        moe.gate.coef.copy_(torch.from_numpy(W))
        moe.experts.coef.copy_(torch.from_numpy(B)[:, :, None])
        moe.experts.log_scale.copy_(torch.from_numpy(np.log(s))[:, None])
    return moe


def run_moekit(x, y, start, iters: int):
    d, k = x.shape[1], start[0].shape[0]
    moe = make_moekit(d, k, *start)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    stamps: list[float] = []

    def cb(it, ll, m):
        stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: tol=0 never converges
        res = fit_em(moe, xt, yt, init=None, max_iter=iters, tol=0.0, callback=cb)
    total = time.perf_counter() - t0
    sec = (stamps[-1] - stamps[0]) / max(iters, 1)
    return {"sec": sec, "total": total, "ll": res.history[-1], "pruned": list(res.pruned), "n_iter": res.n_iter}


def run_numpy(x, y, start, iters: int):
    t0 = time.perf_counter()
    _, hist, sec, newton = npem.fit_em(x, y, *start, n_iter=iters)
    total = time.perf_counter() - t0
    return {"sec": sec, "total": total, "ll": hist[-1], "newton": newton}


# ----------------------------------------------------------------- helpers
def source_state() -> str:
    """git HEAD of the repository and a digest of moekit's sources as they are on disk."""
    import hashlib
    import subprocess

    import moekit

    root = os.path.dirname(os.path.dirname(os.path.abspath(moekit.__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip() or "?"
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "moekit"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head, dirty = "?", ""
    h = hashlib.sha1()
    pkg = os.path.dirname(os.path.abspath(moekit.__file__))
    for dirpath, _, files in sorted(os.walk(pkg)):
        for f in sorted(files):
            if f.endswith(".py"):
                with open(os.path.join(dirpath, f), "rb") as fh:
                    h.update(f.encode() + fh.read())
    return f"git {head}{' + uncommitted changes' if dirty else ''}, moekit sources sha1 {h.hexdigest()[:12]}"


def machine_info() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "source": source_state(),
    }


def warm_up() -> None:
    x, y, _ = npem.make_data(500, 2, 3, seed=123)
    start = npem.initial_params(x, y, 3, seed=0)
    run_moekit(x, y, start, 2)
    run_numpy(x, y, start, 2)


def slope(ns, ts) -> float:
    """Least-squares slope of log t on log N (1 = linear)."""
    if len(ns) < 2:
        return float("nan")
    return float(np.polyfit(np.log(ns), np.log(ts), 1)[0])


def fmt_n(n: int) -> str:
    e = int(round(math.log10(n)))
    return f"1e{e}" if 10**e == n else str(n)


# -------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N in {1e3, 1e4} only")
    ap.add_argument("--sizes", type=int, nargs="+", help="values of N (default 1e3 1e4 1e5 1e6)")
    ap.add_argument("--d", type=int, nargs="+", default=[1, 10], help="values of D (default 1 10)")
    ap.add_argument("--k", type=int, nargs="+", default=[2, 4, 8], help="values of K (default 2 4 8)")
    ap.add_argument("--iters", type=int, default=20, help="EM iterations, the same for both (default 20)")
    ap.add_argument(
        "--iters-large", type=int, default=None,
        help="EM iterations for N >= 1e6 (default: --iters), the same for both",
    )
    ap.add_argument("--repeats", type=int, default=3, help="repeats per cell; the fastest is reported (default 3)")
    ap.add_argument(
        "--repeats-large", type=int, default=1,
        help="repeats for N >= 1e6 (default 1)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the raw results to this JSON file")
    args = ap.parse_args(argv)

    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if args.quick:
        sizes = [n for n in sizes if n <= 10_000]
    info = machine_info()
    print(f"# moekit EM scaling  ({' '.join(sys.argv)})")
    print(
        f"# {info['date']}  CPU: {info['cpu']}  cores: {info['cores']}  torch {info['torch']} "
        f"(threads {info['torch_threads']})  numpy {info['numpy']}  python {info['python']}"
    )
    print(f"# moekit: {info['source']}")
    print(f"# load average at start: {os.getloadavg()}")
    print("# float64; gate: SoftmaxGate default max_m_steps=5 in both; times: mean s per EM iteration "
          "(M-step + E-step), best of repeats", flush=True)
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
                mk, nm = [], []
                for r in range(reps):
                    if r % 2 == 0:
                        nm.append(run_numpy(x, y, start, iters))
                        mk.append(run_moekit(x, y, start, iters))
                    else:
                        mk.append(run_moekit(x, y, start, iters))
                        nm.append(run_numpy(x, y, start, iters))
                m_best = min(mk, key=lambda r: r["sec"])
                n_best = min(nm, key=lambda r: r["sec"])
                row = {
                    "N": n, "D": d, "K": k, "iters": iters, "repeats": reps,
                    "moekit_s": m_best["sec"], "numpy_s": n_best["sec"],
                    "moekit_all": [r["sec"] for r in mk], "numpy_all": [r["sec"] for r in nm],
                    "ratio": m_best["sec"] / n_best["sec"],
                    "ll_moekit": m_best["ll"], "ll_numpy": n_best["ll"],
                    "diff": abs(m_best["ll"] - n_best["ll"]),
                    "newton": n_best["newton"], "pruned": m_best["pruned"],
                }
                rows.append(row)
                flag = "" if row["diff"] < 1e-6 and not row["pruned"] else "  <-- CHECK"
                print(
                    f"  done N={fmt_n(n):>4} D={d:>2} K={k}: moekit {row['moekit_s']:.4g} s/it, "
                    f"numpy {row['numpy_s']:.4g} s/it, ratio {row['ratio']:.2f}, |dll| {row['diff']:.1e}, "
                    f"Newton steps/it {row['newton']:.2f}{flag}",
                    flush=True,
                )

    # -------------------------------------------------------------- table
    print()
    print("| N | D | K | iters | moekit s/iter | numpy s/iter | moekit/numpy time | loglik moekit | loglik numpy | abs diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (r["D"], r["K"], r["N"])):
        print(
            f"| {fmt_n(r['N'])} | {r['D']} | {r['K']} | {r['iters']} | {r['moekit_s']:.3e} | {r['numpy_s']:.3e} | "
            f"{r['ratio']:.2f} | {r['ll_moekit']:.10f} | {r['ll_numpy']:.10f} | {r['diff']:.1e} |"
        )
    print()
    print("moekit/numpy time < 1 means moekit is faster.")
    worst = max(rows, key=lambda r: r["ratio"])
    n_slower = sum(r["ratio"] > 1 for r in rows)
    print(
        f"moekit slower than NumPy in {n_slower} of {len(rows)} cells; worst ratio {worst['ratio']:.2f} at "
        f"N={fmt_n(worst['N'])} D={worst['D']} K={worst['K']}. Largest |loglik diff| {max(r['diff'] for r in rows):.1e}."
    )

    # ---------------------------------------------------------- linearity
    print()
    print("Linearity: microseconds per row per EM iteration (t / N), and the log-log slope of t on N")
    print("over N >= 1e4 (1.00 = linear; N = 1e3 is dominated by per-call overhead).")
    print()
    ns_all = sorted({r["N"] for r in rows})
    head = " | ".join(f"N={fmt_n(n)}" for n in ns_all)
    print(f"| D | K | impl | {head} | slope (N>=1e4) |")
    print("|---:|---:|---|" + "---:|" * len(ns_all) + "---:|")
    for d in args.d:
        for k in args.k:
            for impl, key in (("moekit", "moekit_s"), ("numpy", "numpy_s")):
                cells = {r["N"]: r[key] for r in rows if r["D"] == d and r["K"] == k}
                vals = " | ".join(f"{cells[n] / n * 1e6:.3f}" if n in cells else "" for n in ns_all)
                big = [n for n in ns_all if n >= 10_000 and n in cells]
                sl = slope(big, [cells[n] for n in big])
                print(f"| {d} | {k} | {impl} | {vals} | {sl:.2f} |")
    print()
    print(f"# total wall time {time.perf_counter() - t_all:.0f} s; load average at end: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "argv": sys.argv, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
