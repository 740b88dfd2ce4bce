"""Does ``torch.compile`` speed up one EM E-step with its statistics? (issue 12: "try torch.compile where it helps")

For a softmax-gated mixture of K linear-Gaussian experts (the em_speed model; data from
``_numpy_em.make_data``), after 3 EM iterations from seed 0, times ``model.suff_stats(x, y)``
(the E-step, the log-likelihood and every component's statistics: one EM pass) eager and
compiled with ``torch.compile(model.suff_stats, dynamic=False)``, best of 10 calls after a warm-up,
1 thread; prints the compile time (first call) and checks that both give the same log-likelihood.

Usage::

    python benchmarks/em_compile.py                       # N = 1e3 and 1e5, D = 10, K = 2
    python benchmarks/em_compile.py --cells 1000,10,8 20000,10,8
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _numpy_em as npem
from _machine import machine_info

from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate, fit_em


def best_ms(f, repeats: int = 10) -> float:
    f()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=["1000,10,2", "100000,10,2"], help="N,D,K triples")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"# {machine_info()}")
    print("| N | D | K | eager ms | compiled ms | compiled / eager | compile s (first call) | log-lik eager | log-lik compiled |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cell in args.cells:
        n, d, k = (int(v) for v in cell.split(","))
        x, y = (torch.from_numpy(a) for a in npem.make_data(n, d, k, 1000 * d + 10 * k)[:2])
        model = MixtureOfExperts(SoftmaxGate(d, k), LinearGaussianExpert(d, n_experts=k)).double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_em(model, x, y, max_iter=3, random_state=0)
            eager = best_ms(lambda: model.suff_stats(x, y, None))
            t0 = time.perf_counter()
            compiled = torch.compile(model.suff_stats, dynamic=False)
            b = compiled(x, y, None)
            seconds = time.perf_counter() - t0
            comp = best_ms(lambda: compiled(x, y, None))
        a = model.suff_stats(x, y, None)
        print(f"| {n} | {d} | {k} | {eager:.3f} | {comp:.3f} | {comp / eager:.2f} | {seconds:.1f} | "
              f"{float(a['loglik']):.10g} | {float(b['loglik']):.10g} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
