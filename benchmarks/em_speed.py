"""EM speed (issue 12): moekit's time to convergence against an independent NumPy EM, the default fit, a roofline.

Model: a softmax gate on x over K linear-Gaussian experts with scalar y.
Data: ``_numpy_em.make_data(n, d, k, seed + 1000 d + 10 k)`` (the seeds of
``em_scaling.py``).  Grid: N in {1e3, 1e4, 1e5, 1e6}, D in {1, 10}, K in
{2, 8}, 1 and 2 threads (``torch.set_num_threads`` and NumPy's BLAS through
``threadpoolctl.threadpool_limits``; both sides get the same count).

Every timed fit, on both sides, starts after ``--settle`` seconds idle (default 0.2): OpenBLAS's
worker threads spin for about 0.1 s after a call, and a two-thread fit that starts while the other
side's workers still spin shares a core with them (moekit took 68 ms instead of 32.5 right after a
NumPy fit at N = 1e4, D = 10, K = 2).  ``--settle 0`` times the runs back to back.

Sections (``--section``):

* ``one-start``: ONE random-partition start R (``_plain_em.random_partition(n,
  k, seed)``) handed to both sides.  moekit:
  ``MoERegressor(n_experts=K, init=R, n_init=1, tol=1e-6, max_iter=1000,
  random_state=0, compute_se=False).fit(x, y)``, the wall clock of ``.fit``
  (EM's time to convergence: the standard errors that ``fit`` adds by default
  for small problems, ``compute_se="auto"``, are work the NumPy EM does not do;
  the ``default`` section keeps them, and the column "se s" times them here); the baseline:
  ``_plain_em.fit(x, y, R)`` (a plain vectorised NumPy EM written independently
  of moekit: at most 2 exact Newton steps for the gate per iteration, same tol
  and max_iter).  Median seconds over the repeats (alternating which side runs
  first), iterations, final mean log-likelihoods and their difference, the
  ratio moekit/numpy against the target (<= 0.5 at N >= 1e4, <= 1 below).  A
  cell counts when the final mean log-likelihoods agree within 1e-5, neither
  side hit max_iter and moekit pruned no expert; other cells are shown and
  marked.
* ``default``: ``MoERegressor(n_experts=K, random_state=seed)`` with every
  other parameter at its default, timed end to end on the same grid; and on
  tonedata (K = 2, softmax and constant gate) over 10 seeds: seconds per fit
  and how many fits reach the highest known maxima 145.650 (gated) and 145.417
  (constant), read from ``est.log_likelihood_`` (the total log-likelihood;
  reached = within 1e-3 of the target or above).
* ``roofline``: the measured float64 GEMM rate (``torch.matmul`` of two
  2048 x 2048 matrices, best of 5, per thread count) and, for every one-start
  cell, moekit's achieved GFLOP/s of one EM iteration,
  ``flops_per_iteration(n, d, k) / (fit seconds / iterations)``, and its
  fraction of the GEMM rate.  (The fit's seconds include the start and input
  checks, so this slightly understates the rate at small N.)  Without the
  one-start section in the same run, moekit's one-start fits are run alone.
* ``all`` (default): the three.

Usage::

    python benchmarks/em_speed.py                                  # everything (long: N up to 1e6)
    python benchmarks/em_speed.py --quick                          # N <= 1e4
    python benchmarks/em_speed.py --section one-start --threads 1 --json em_speed.json
    python benchmarks/em_speed.py --section default --sizes 10000 --d 10 --k 8
    python benchmarks/em_speed.py --sizes 1000 --d 1 --k 2 --threads 1 --repeats 1   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import warnings

import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _numpy_em as npem
import _plain_em as plain
from _machine import fmt_n, machine_info

from moekit import MoERegressor
from moekit.datasets import load_tonedata

DEFAULT_SIZES = [1_000, 10_000, 100_000, 1_000_000]
TOL, MAX_ITER = 1e-6, 1000
SAME_MAX = 1e-5  # final mean log-likelihoods closer than this: the same maximum
TONE_TARGETS = {"softmax": 145.650, "constant": 145.417}  # highest known total log-likelihoods
TONE_REACH = 1e-3
SE_MAX_ROWS = 100_000  # the one-start section times the standard errors up to this N
# Idle seconds before every timed fit, on both sides.  After a BLAS call, OpenBLAS's worker threads spin
# for about 0.1 s before they sleep; a multi-threaded fit that starts inside that window shares a core
# with them (measured at N = 1e4, D = 10, K = 2, 2 threads: moekit 68 ms right after a NumPy fit, 62 ms
# after 0.02 s idle, 57 ms after 0.05 s, 32.5 ms after 0.1 s or more; see RESULTS.md, Update 4).
SETTLE_S = 0.2


# ------------------------------------------------------------------ counts
def flops_per_iteration(n: int, d: int, k: int, by_term: bool = False):
    """Analytic floating-point operations of one EM iteration of the default algorithm.

    moekit's default since issue 12: one Newton step of the gate per EM
    iteration, its statistics from the E-step's gate output; p = d + 1 inputs
    with the intercept, m = (K-1) p free gate parameters.  A multiply-add counts 2; exp/log and other O(nK) element-wise
    work is not counted.

    ========================  ==========================  =============================================
    term                      flops                       what
    ========================  ==========================  =============================================
    e_gate_logits             2 n K p                     E-step: X W^T
    e_expert_means            2 n K p                     E-step: X B^T
    gate_gradient             2 n (K-1) p                 (R - G)^T X over the free rows
    gate_information          n (K-1) K p (p + 1) / 2     its (K-1) K / 2 distinct p x p blocks: one GEMM
                                                          of the rows' pair weights s (delta g_j - g_j
                                                          g_l) with their packed outer products
    gate_cholesky             m^3 / 3                     factor the information
    expert_grams              n K p (p + 1)               X^T diag(r_k) X from the rows' packed outer
                                                          products (one GEMM r^T q)
    expert_xty                2 n K p                     X^T diag(r_k) y
    expert_variance           2 n K p                     residuals for the variance
    ========================  ==========================  =============================================

    Update this function (only) when the default algorithm changes.

    Returns
    -------
    float, or dict of the terms with ``by_term=True``.
    """
    p = d + 1
    m = (k - 1) * p
    terms = {
        "e_gate_logits": 2 * n * k * p,
        "e_expert_means": 2 * n * k * p,
        "gate_gradient": 2 * n * (k - 1) * p,
        "gate_information": n * (k - 1) * k * p * (p + 1) / 2,
        "gate_cholesky": m**3 / 3,
        "expert_grams": n * k * p * (p + 1),
        "expert_xty": 2 * n * k * p,
        "expert_variance": 2 * n * k * p,
    }
    terms = {key: float(v) for key, v in terms.items()}
    return terms if by_term else sum(terms.values())


def gemm_rate(size: int = 2048, repeats: int = 5) -> float:
    """Measured float64 GEMM rate, GFLOP/s: best of ``repeats`` ``torch.matmul`` of two size x size matrices."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, dtype=torch.float64, generator=gen)
    b = torch.randn(size, size, dtype=torch.float64, generator=gen)
    torch.matmul(a, b)  # warm up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best / 1e9


# ------------------------------------------------------------------ runners
@contextlib.contextmanager
def n_threads(t: int):
    """torch's intra-op threads and every BLAS/OpenMP pool threadpoolctl finds limited to t."""
    old = torch.get_num_threads()
    with threadpool_limits(limits=t):
        torch.set_num_threads(t)
        try:
            yield
        finally:
            torch.set_num_threads(old)


def _warning_lines(caught) -> list[str]:
    return sorted({f"{w.category.__name__}: {str(w.message)[:100]}" for w in caught})


def settle() -> None:
    """Idle :data:`SETTLE_S` seconds, so that no BLAS worker thread of the previous run still spins."""
    if SETTLE_S > 0:
        time.sleep(SETTLE_S)


def _timed_fit(est, x, y) -> dict:
    """The wall clock of ``est.fit(x, y)``, its iterations, convergence, log-likelihoods and warnings."""
    settle()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        est.fit(x, y)
        seconds = time.perf_counter() - t0
    return {
        "seconds": seconds, "n_iter": int(est.n_iter_), "converged": bool(est.converged_),
        "ll": float(est.mean_log_likelihood_), "total_ll": float(est.log_likelihood_),
        "n_experts": int(est.n_experts_), "warnings": _warning_lines(caught),
    }


def run_moekit_one_start(x, y, R) -> dict:
    """moekit from the given start R: the wall clock of ``.fit``."""
    return _timed_fit(MoERegressor(n_experts=R.shape[1], init=R, n_init=1, tol=TOL, max_iter=MAX_ITER, random_state=0,
                                   compute_se=False), x, y)


def time_standard_errors(x, y, R) -> float:
    """Seconds of the standard errors that ``fit`` computes by default (``compute_se=True``) after the one-start fit:
    the difference of two fits from R, with and without them (the EM runs are identical)."""
    kw = dict(n_experts=R.shape[1], init=R, n_init=1, tol=TOL, max_iter=MAX_ITER, random_state=0)
    with_se = _timed_fit(MoERegressor(**kw, compute_se=True), x, y)["seconds"]
    without = _timed_fit(MoERegressor(**kw, compute_se=False), x, y)["seconds"]
    return max(0.0, with_se - without)


def run_plain(x, y, R) -> dict:
    """The independent NumPy EM from the same R."""
    settle()
    t0 = time.perf_counter()
    res = plain.fit(x, y, R, tol=TOL, max_iter=MAX_ITER)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds, "n_iter": res.n_iter, "converged": res.converged, "ll": res.mean_log_likelihood,
        "newton_steps": res.newton_steps,
    }


def run_default(x, y, k: int, seed: int, gate: str = "softmax") -> dict:
    """``MoERegressor(n_experts=k, gate=gate, random_state=seed)``, everything else default, timed end to end."""
    return _timed_fit(MoERegressor(n_experts=k, gate=gate, random_state=seed), x, y)


def warm_up(threads) -> None:
    """One small fit of each kind per thread count (imports, first torch and BLAS calls)."""
    x, y, _ = npem.make_data(2000, 2, 3, seed=123)
    R = plain.random_partition(2000, 3, seed=0)
    for t in threads:
        with n_threads(t):
            run_moekit_one_start(x, y, R)
            run_plain(x, y, R)
            run_default(x, y, 3, 0)


def load() -> float:
    return os.getloadavg()[0]


# ----------------------------------------------------------------- sections
def one_start_cell(x, y, R, n: int, d: int, k: int, t: int, reps: int, moekit_only: bool = False) -> dict:
    """Section (a) for one cell: ``reps`` runs of each side, alternating which goes first."""
    load0 = load()
    mk, nm = [], []
    for r in range(reps):
        if moekit_only:
            mk.append(run_moekit_one_start(x, y, R))
        elif r % 2 == 0:
            mk.append(run_moekit_one_start(x, y, R))
            nm.append(run_plain(x, y, R))
        else:
            nm.append(run_plain(x, y, R))
            mk.append(run_moekit_one_start(x, y, R))
    a = mk[0]
    row = {
        "N": n, "D": d, "K": k, "threads": t, "repeats": reps,
        "moekit_s": float(np.median([m["seconds"] for m in mk])), "moekit_times": [m["seconds"] for m in mk],
        "moekit_iter": a["n_iter"], "moekit_converged": a["converged"], "ll_moekit": a["ll"],
        "moekit_experts": a["n_experts"], "moekit_warnings": a["warnings"],
        "moekit_deterministic": len({(m["n_iter"], m["ll"]) for m in mk}) == 1,
    }
    if not moekit_only:
        b = nm[0]
        row.update({
            "numpy_s": float(np.median([m["seconds"] for m in nm])), "numpy_times": [m["seconds"] for m in nm],
            "numpy_iter": b["n_iter"], "numpy_converged": b["converged"], "ll_numpy": b["ll"],
            "numpy_newton_steps": b["newton_steps"], "diff": a["ll"] - b["ll"],
        })
        row["ratio"] = row["moekit_s"] / row["numpy_s"]
        row["target"] = 0.5 if n >= 10_000 else 1.0
        row["meets"] = row["ratio"] <= row["target"]
        hit = (a["n_iter"] >= MAX_ITER and not a["converged"]) or (b["n_iter"] >= MAX_ITER and not b["converged"])
        if a["n_experts"] < k:
            row["status"] = "not counted: moekit pruned experts"
        elif hit:
            row["status"] = "not counted: hit max_iter"
        elif abs(row["diff"]) > SAME_MAX:
            row["status"] = "not counted: different maxima"
        else:
            row["status"] = "counted"
        # the standard errors fit adds by default (compute_se="auto") where they are cheap enough: shown, not counted
        row["se_s"] = time_standard_errors(x, y, R) if n <= SE_MAX_ROWS else math.nan
    row["load"] = round((load0 + load()) / 2, 2)
    return row


def default_cell(x, y, n: int, d: int, k: int, t: int, reps: int, seed: int) -> dict:
    """Section (b) on the grid: the default fit, ``reps`` times (median seconds)."""
    load0 = load()
    runs = [run_default(x, y, k, seed) for _ in range(reps)]
    a = runs[0]
    return {
        "N": n, "D": d, "K": k, "threads": t, "repeats": reps,
        "seconds": float(np.median([r["seconds"] for r in runs])), "times": [r["seconds"] for r in runs],
        "n_iter": a["n_iter"], "converged": a["converged"], "ll": a["ll"], "n_experts": a["n_experts"],
        "warnings": a["warnings"], "load": round((load0 + load()) / 2, 2),
    }


def tonedata_rows(threads, n_seeds: int) -> list[dict]:
    """Section (b) on tonedata: K = 2, softmax and constant gate, seeds 0..n_seeds-1."""
    data = load_tonedata()
    x, y = np.asarray(data.data, dtype=float), np.asarray(data.target, dtype=float)
    rows = []
    for t in threads:
        with n_threads(t):
            for gate, target in TONE_TARGETS.items():
                load0 = load()
                runs = [run_default(x, y, 2, s, gate=gate) for s in range(n_seeds)]
                lls = [r["total_ll"] for r in runs]
                rows.append({
                    "gate": gate, "threads": t, "seeds": n_seeds, "target": target,
                    "seconds_median": float(np.median([r["seconds"] for r in runs])),
                    "seconds_total": float(sum(r["seconds"] for r in runs)),
                    "reached": int(sum(v >= target - TONE_REACH for v in lls)),
                    "total_ll": lls, "n_iter": [r["n_iter"] for r in runs],
                    "load": round((load0 + load()) / 2, 2),
                })
                print(
                    f"  done tonedata gate={gate} threads={t}: {rows[-1]['seconds_median']:.3g} s/fit, "
                    f"{rows[-1]['reached']}/{n_seeds} reach {target}",
                    flush=True,
                )
    return rows


# -------------------------------------------------------------------- print
def print_one_start(rows) -> None:
    print("\n## (a) One start: time to convergence from the same random partition\n")
    print(
        "| N | D | K | thr | moekit s | numpy s | moekit/numpy | target | iters moekit | iters numpy "
        "| mean loglik moekit | mean loglik numpy | diff | status | se s | load |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        mark = "" if r["meets"] else " (missed)"
        print(
            f"| {fmt_n(r['N'])} | {r['D']} | {r['K']} | {r['threads']} | {r['moekit_s']:.4g} | {r['numpy_s']:.4g} | "
            f"{r['ratio']:.2f}{mark} | {r['target']:g} | {r['moekit_iter']} | {r['numpy_iter']} | "
            f"{r['ll_moekit']:.8f} | {r['ll_numpy']:.8f} | {r['diff']:.1e} | {r['status']} | {r.get('se_s', math.nan):.3g} | "
            f"{r['load']} |"
        )
    counted = [r for r in rows if r["status"] == "counted"]
    print()
    print(
        "seconds: median over the repeats of the wall clock of MoERegressor.fit / _plain_em.fit; "
        f"counted: final mean log-likelihoods within {SAME_MAX:g}, neither hit max_iter={MAX_ITER}, no pruning. "
        "se s: the seconds that compute_se=True adds after the same fit (observed information and sandwich, "
        f"timed up to N = {fmt_n(SE_MAX_ROWS)}; not in 'moekit s')."
    )
    if counted:
        worst = max(counted, key=lambda r: r["ratio"])
        print(
            f"Summary: {sum(r['meets'] for r in counted)} of {len(counted)} counted cells meet the target "
            f"({len(rows) - len(counted)} not counted); worst counted ratio {worst['ratio']:.2f} at "
            f"N={fmt_n(worst['N'])} D={worst['D']} K={worst['K']} threads={worst['threads']} "
            f"(target {worst['target']:g})."
        )
    else:
        print(f"Summary: no counted cells ({len(rows)} shown).")
    for r in rows:
        for w in r["moekit_warnings"]:
            print(f"  moekit warning at N={fmt_n(r['N'])} D={r['D']} K={r['K']} threads={r['threads']}: {w}")


def print_default(rows, tone, one_start) -> None:
    print("\n## (b) Default fit: MoERegressor(n_experts=K, random_state=seed), everything else default\n")
    if rows:
        ref = {(r["N"], r["D"], r["K"], r["threads"]): r.get("ll_numpy") for r in one_start}
        print("| N | D | K | thr | seconds | iters | converged | mean loglik | minus one-start numpy | load |")
        print("|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
        for r in rows:
            base = ref.get((r["N"], r["D"], r["K"], r["threads"]))
            delta = "" if base is None else f"{r['ll'] - base:.1e}"
            print(
                f"| {fmt_n(r['N'])} | {r['D']} | {r['K']} | {r['threads']} | {r['seconds']:.4g} | {r['n_iter']} | "
                f"{r['converged']} | {r['ll']:.8f} | {delta} | {r['load']} |"
            )
        for r in rows:
            for w in r["warnings"]:
                print(f"  warning at N={fmt_n(r['N'])} D={r['D']} K={r['K']} threads={r['threads']}: {w}")
    if tone:
        print(f"\ntonedata (150 rows, K = 2): reached = total log-likelihood >= target - {TONE_REACH:g}\n")
        print("| gate | thr | s/fit (median) | s (all fits) | reached | target | best | worst | load |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in tone:
            print(
                f"| {r['gate']} | {r['threads']} | {r['seconds_median']:.4g} | {r['seconds_total']:.3g} | "
                f"{r['reached']}/{r['seeds']} | {r['target']:.3f} | {max(r['total_ll']):.4f} | "
                f"{min(r['total_ll']):.4f} | {r['load']} |"
            )


def print_roofline(rows, gemm) -> None:
    print("\n## (c) Roofline: moekit's achieved float64 rate per EM iteration against the GEMM rate\n")
    for t, g in sorted(gemm.items()):
        print(f"measured GEMM (torch.matmul 2048 x 2048 float64, best of 5), {t} thread(s): {g:.1f} GFLOP/s")
    print()
    print("| N | D | K | thr | iters | s/iter | GFLOP/iter | GFLOP/s | of GEMM |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {fmt_n(r['N'])} | {r['D']} | {r['K']} | {r['threads']} | {r['iters']} | {r['s_per_iter']:.3e} | "
            f"{r['gflop_per_iter']:.4g} | {r['gflops']:.3g} | {100 * r['fraction']:.3g} % |"
        )
    print("\nflops_per_iteration: the analytic count of the default algorithm (one Newton step per iteration);")
    print("s/iter: the one-start fit's wall clock over its iterations.")


# --------------------------------------------------------------------- main
def main(argv=None) -> int:
    global SETTLE_S
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--section", choices=("one-start", "default", "roofline", "all"), default="all")
    ap.add_argument("--quick", action="store_true", help="N <= 1e4 only")
    ap.add_argument("--sizes", type=int, nargs="+", help="values of N (default 1e3 1e4 1e5 1e6)")
    ap.add_argument("--d", type=int, nargs="+", default=[1, 10], help="values of D (default 1 10)")
    ap.add_argument("--k", type=int, nargs="+", default=[2, 8], help="values of K (default 2 8)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts, both sides (default 1 2)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per cell for N < 1e6; the median is shown (default 3)")
    ap.add_argument("--repeats-large", type=int, default=1, help="runs per cell for N >= 1e6 (default 1)")
    ap.add_argument("--tone-seeds", type=int, default=10, help="seeds of the tonedata fits (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="base seed of the data, the start and the default fits")
    ap.add_argument("--json", help="also write the raw results to this JSON file")
    ap.add_argument("--settle", type=float, default=SETTLE_S,
                    help=f"idle seconds before every timed fit, both sides (default {SETTLE_S}: spinning BLAS threads "
                         "of the previous run have gone to sleep; 0 times them back to back)")
    args = ap.parse_args(argv)
    SETTLE_S = max(0.0, args.settle)

    sizes = args.sizes or DEFAULT_SIZES
    if args.quick:
        sizes = [n for n in sizes if n <= 10_000]
    sec = args.section
    do_a, do_b, do_c = sec in ("one-start", "all"), sec in ("default", "all"), sec in ("roofline", "all")

    info = machine_info()
    print(f"# moekit EM speed  ({' '.join([os.path.basename(sys.executable)] + sys.argv)})")
    print(
        f"# {info['date']}  CPU: {info['cpu']}  cores: {info['cores']}  torch {info['torch']}  "
        f"numpy {info['numpy']} (BLAS: {info['numpy_blas']})  python {info['python']}"
    )
    print(f"# moekit: {info['source']}")
    print(f"# load average at start: {tuple(round(v, 2) for v in os.getloadavg())}; threads {args.threads}")
    print(f"# float64; tol {TOL:g} on the mean log-likelihood, max_iter {MAX_ITER}; {SETTLE_S:g} s idle before "
          "every timed fit", flush=True)
    warm_up(args.threads)

    t_all = time.perf_counter()
    rows_a, rows_b, rows_c, gemm = [], [], [], {}
    for d in args.d:
        for k in args.k:
            for n in sizes:
                data_seed = args.seed + 1000 * d + 10 * k
                x, y, _ = npem.make_data(n, d, k, seed=data_seed)
                R = plain.random_partition(n, k, seed=args.seed)
                reps = args.repeats_large if n >= 1_000_000 else args.repeats
                for t in args.threads:
                    with n_threads(t):
                        if do_a or do_c:
                            r = one_start_cell(x, y, R, n, d, k, t, reps, moekit_only=not do_a)
                            r["data_seed"] = data_seed
                            rows_a.append(r)
                            msg = f"moekit {r['moekit_s']:.4g} s ({r['moekit_iter']} it)"
                            if do_a:
                                msg += (
                                    f", numpy {r['numpy_s']:.4g} s ({r['numpy_iter']} it), ratio {r['ratio']:.2f}, "
                                    f"diff {r['diff']:.1e}, {r['status']}"
                                )
                            print(f"  done one-start N={fmt_n(n)} D={d} K={k} thr={t}: {msg}, load {r['load']}", flush=True)
                        if do_b:
                            r = default_cell(x, y, n, d, k, t, reps, args.seed)
                            rows_b.append(r)
                            print(
                                f"  done default N={fmt_n(n)} D={d} K={k} thr={t}: {r['seconds']:.4g} s, "
                                f"{r['n_iter']} it, mean loglik {r['ll']:.8f}, load {r['load']}",
                                flush=True,
                            )
    tone = tonedata_rows(args.threads, args.tone_seeds) if do_b else []
    if do_c:
        for t in args.threads:
            with n_threads(t):
                gemm[t] = gemm_rate()
        for r in rows_a:
            if r["moekit_iter"] == 0:
                continue
            spi = r["moekit_s"] / r["moekit_iter"]
            f = flops_per_iteration(r["N"], r["D"], r["K"])
            rows_c.append({
                "N": r["N"], "D": r["D"], "K": r["K"], "threads": r["threads"], "iters": r["moekit_iter"],
                "s_per_iter": spi, "gflop_per_iter": f / 1e9, "gflops": f / spi / 1e9,
                "fraction": f / spi / 1e9 / gemm[r["threads"]],
            })

    key = lambda r: (r["threads"], r["D"], r["K"], r["N"])
    if do_a:
        print_one_start(sorted(rows_a, key=key))
    if do_b:
        print_default(sorted(rows_b, key=key), tone, rows_a if do_a else [])
    if do_c:
        print_roofline(sorted(rows_c, key=key), gemm)
    print(
        f"\n# total wall time {time.perf_counter() - t_all:.0f} s; load average at end: "
        f"{tuple(round(v, 2) for v in os.getloadavg())}"
    )
    if args.json:
        out = {
            "machine": info, "argv": sys.argv, "args": vars(args),
            "one_start": rows_a if do_a else [], "default": rows_b, "tonedata": tone,
            "roofline": {"gemm_gflops": {str(t): g for t, g in gemm.items()}, "rows": rows_c},
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
