"""The softmax gate's M-step inside EM: curvature ("full", "block", "bound") and Newton steps per iteration.

Time to convergence of ``fit_em`` (tol 1e-6 on the mean log-likelihood, max_iter 1000) from one
seeded random partition, for every candidate ``SoftmaxGate(hessian=..., max_m_steps=...)`` on the
same data (``_numpy_em.make_data``), 1 thread. A comparison of times is meaningful only where the
candidates reach the same maximum (the table shows each final mean log-likelihood).

Usage::

    python benchmarks/gate_curvature.py
    python benchmarks/gate_curvature.py --cells 20000,10,8 2000,10,8 --seeds 0 1 2 --candidates full:1 full:2 bound:3
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
import _numpy_em as npem  # noqa: E402  (benchmarks/ is the script's folder)
from _machine import cpu_model  # noqa: E402

from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate, fit_em  # noqa: E402

CELLS = ["20000,10,8", "20000,1,2", "20000,10,2", "10000,1,8", "2000,10,8"]
CANDIDATES = ["full:1", "full:2", "block:1", "block:2", "bound:1", "bound:3"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", nargs="+", default=CELLS, help="N,D,K triples (default: five cells)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--candidates", nargs="+", default=CANDIDATES, help="hessian:max_m_steps")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print(f"# gate curvature; {cpu_model()}; torch {torch.__version__}; 1 thread; load {os.getloadavg()}")
    print("| N | D | K | seed | " + " | ".join(args.candidates) + " |")
    print("|---:|---:|---:|---:|" + "---|" * len(args.candidates))
    for cell in args.cells:
        n, d, k = (int(v) for v in cell.split(","))
        for seed in args.seeds:
            x, y = npem.make_data(n, d, k, seed)[:2]
            xt, yt = torch.as_tensor(x), torch.as_tensor(y)
            start = np.eye(k)[np.random.default_rng(seed + 10).integers(0, k, n)]
            out = []
            for spec in args.candidates:
                hessian, steps = spec.split(":")
                gate = SoftmaxGate(d, k, max_m_steps=int(steps), hessian=hessian)
                moe = MixtureOfExperts(gate, LinearGaussianExpert(d, n_experts=k))
                t = time.perf_counter()
                res = fit_em(moe, xt, yt, init=start, max_iter=1000, tol=1e-6)
                out.append(f"{time.perf_counter() - t:.3f} s, {res.n_iter} it, {res.history[-1]:.6f}")
            print(f"| {n} | {d} | {k} | {seed} | " + " | ".join(out) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
