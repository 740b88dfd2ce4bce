"""Milliseconds per EM iteration (one M-step and the next E-step pass) of the default gated linear-Gaussian mixture.

The one-start section of ``em_speed.py`` times whole fits, whose iteration counts and fixed
costs blur small per-iteration changes on a noisy machine.  This script isolates the
iteration: it fits ``MoERegressor(n_experts=K, init=R, max_iter=5)`` from a random partition R
on ``_numpy_em.make_data(n, d, k, 1000 d + 10 k)``, then times the model's
``m_step`` followed by ``e_step_pass`` in a loop (the parameters put back after each), inside
``design_cache`` as ``fit_em`` runs them.  It prints the minimum and the median over 7 blocks of
repetitions, wall and CPU time.  To compare two commits, run it at each, alternating.

Usage::

    python benchmarks/em_iteration.py                       # the default cells, 1 thread
    python benchmarks/em_iteration.py --cells 20000,10,8 --threads 2
"""

from __future__ import annotations

import argparse
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
from _machine import describe, source_state

from moekit import MoERegressor
from moekit._linalg import design_cache
from moekit.training.passes import e_step_pass

CELLS = ["1000,1,2", "10000,1,2", "100000,1,2", "1000,10,8", "20000,10,8", "100000,10,8", "100000,10,2"]


def per_iteration(n: int, d: int, k: int, blocks: int = 7) -> tuple[float, float, float]:
    """(min wall, median wall, min CPU) seconds of one M-step plus E-step pass."""
    x, y = npem.make_data(n, d, k, 1000 * d + 10 * k)[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter=5 does not converge
        est = MoERegressor(n_experts=k, init=plain.random_partition(n, k, 0), n_init=1, max_iter=5, random_state=0,
                           compute_se=False).fit(x, y)
    m = est.model_
    xt = torch.as_tensor(x, dtype=torch.float64).reshape(n, -1)
    source = [(xt, torch.as_tensor(y, dtype=torch.float64), torch.ones(n, dtype=torch.float64))]
    with design_cache():
        stats, _ = e_step_pass(m, source)

        def iteration():
            before = {key: v.detach().clone() for key, v in m.state_dict().items()}
            m.m_step(stats, None)
            e_step_pass(m, source)
            with torch.no_grad():
                for key, v in m.state_dict().items():
                    v.copy_(before[key])

        for _ in range(3):
            iteration()
        reps = max(3, int(2e5 / n))
        wall, cpu = [], []
        for _ in range(blocks):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(reps):
                iteration()
            wall.append((time.perf_counter() - t0) / reps)
            cpu.append((time.process_time() - c0) / reps)
    return min(wall), float(np.median(wall)), min(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=CELLS, help="N,D,K triples (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# moekit ms per EM iteration  (python benchmarks/em_iteration.py {' '.join(sys.argv[1:])})")
    print(f"# {describe(load_average=True)}")
    print(f"# moekit: {source_state()}; threads {args.threads}")
    print("\n| N | D | K | min ms | median ms | min CPU ms |\n|---:|---:|---:|---:|---:|---:|")
    with threadpool_limits(args.threads):
        for cell in args.cells:
            n, d, k = (int(v) for v in cell.split(","))
            lo, med, cpu = per_iteration(n, d, k)
            print(f"| {n:g} | {d} | {k} | {lo * 1e3:.3f} | {med * 1e3:.3f} | {cpu * 1e3:.3f} |", flush=True)
    print(f"\n# {describe(load_average=True)}")


if __name__ == "__main__":
    main()
