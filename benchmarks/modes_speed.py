"""Speed of vectorised mode finding (moekit.inference.find_modes).

For every (n rows, K components, d dimensions) the script draws a batch of
random Gaussian mixtures with a seeded ``torch.Generator`` (means ~ N(0, s^2),
covariances ``A A' + 0.2 I`` with ``A`` ~ N(0, 0.5^2), weights softmax of N(0, 1);
case "overlap": s = 2, overlapping components, so that many climbs start
between modes, the hard case; case "separated": s = 10, most components
stand alone, as in a fitted model whose branches are distinct), then times ``find_modes`` with both
methods ("newton": trust-region Newton in the mean-shift metric, the default;
"fixed_point": plain mean-shift steps).  Every configuration is timed
``--repeats`` times; the table shows the fastest (the machine may be shared)
and the median, plus the mean number of modes found and the largest
gradient of log p at a returned mode (a correctness check: every mode is a
stationary point).  On a shared machine the wall time depends on the other
jobs; the CPU time of this process (all threads) is shown too: with one
thread it is what the wall time would be on an idle core.

Usage::

    python benchmarks/modes_speed.py                   # the default grid
    python benchmarks/modes_speed.py --quick           # small sizes only
    python benchmarks/modes_speed.py --threads 2 --sizes 100000 --k 5 --d 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch.distributions import MultivariateNormal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _machine import describe  # noqa: E402  (benchmarks/ is the script's folder)
from moekit import MixtureDistribution
from moekit.inference import find_modes


def random_mixture(n: int, k: int, d: int, seed: int, spread: float = 2.0) -> MixtureDistribution:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, k, d, generator=g, dtype=torch.float64) * spread
    a = torch.randn(n, k, d, d, generator=g, dtype=torch.float64) * 0.5
    cov = a @ a.transpose(-1, -2) + 0.2 * torch.eye(d, dtype=torch.float64)
    lw = torch.log_softmax(torch.randn(n, k, generator=g, dtype=torch.float64), -1)
    return MixtureDistribution(lw, MultivariateNormal(mu, covariance_matrix=cov))


def max_grad(mix: MixtureDistribution, modes: torch.Tensor, rows: int = 2000) -> float:
    """Largest |d log p / dy| (in units of the component scale) at the modes of the first rows."""
    m = modes[:rows]
    ok = ~torch.isnan(m[..., 0])
    x = torch.where(ok[..., None], m, torch.zeros_like(m)).permute(1, 0, 2).clone().requires_grad_(True)
    sub = MixtureDistribution(mix.log_weights[:rows], MultivariateNormal(mix.components.loc[:rows],
                                                                          scale_tril=mix.components.scale_tril[:rows]))
    (g,) = torch.autograd.grad(sub.log_prob(x).sum(), x)
    return float(g.permute(1, 0, 2)[ok].abs().max())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--k", type=int, nargs="+", default=[5, 20])
    p.add_argument("--d", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--methods", nargs="+", default=["newton", "fixed_point"])
    p.add_argument("--cases", nargs="+", default=["overlap", "separated"], choices=["overlap", "separated"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.sizes, a.k, a.d, a.repeats = [10_000], [5], [2], 1
    if a.threads:
        torch.set_num_threads(a.threads)
        from threadpoolctl import threadpool_limits

        threadpool_limits(a.threads)  # NumPy's BLAS too
    print(f"# find_modes speed\n\n{describe(load_average=True)}; torch threads {torch.get_num_threads()}\n")
    print("command: python benchmarks/modes_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "\n")
    print("| case | n | K | d | method | wall s (best) | wall s (median) | CPU s (best) | rows/s (best wall) | "
          "mean modes/row | max grad at modes |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for case, n, k, d in [(c, n, k, d) for c in a.cases for n in a.sizes for k in a.k for d in a.d]:
        mix = random_mixture(n, k, d, seed=n + 10 * k + d, spread=2.0 if case == "overlap" else 10.0)
        for method in a.methods:
            wall, cpu = [], []
            res = None
            for _ in range(a.repeats):
                t, c = time.perf_counter(), time.process_time()
                res = find_modes(mix, min_weight=0.0, method=method)
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            best = min(wall)
            print(f"| {case} | {n:,} | {k} | {d} | {method} | {best:.2f} | {statistics.median(wall):.2f} | "
                  f"{min(cpu):.2f} | {n / best:,.0f} | {res.n_modes.double().mean():.2f} | "
                  f"{max_grad(mix, res.modes):.1e} |", flush=True)


if __name__ == "__main__":
    main()
