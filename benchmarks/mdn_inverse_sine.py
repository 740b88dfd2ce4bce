"""Bishop's inverse sine: test NLL of the mixture density network with default settings.

Data: ``moekit.datasets.make_inverse_sine`` (t ~ U(0, 1), x = t + 0.3 sin(2 pi t) +
U(-0.1, 0.1); predict t from x).  For K in 3, 5, 10 and seeds 0-4: 1,000 training
points drawn with ``random_state=seed``, ``MDNRegressor(n_components=K,
random_state=seed)`` with every other setting at its default, and the mean test NLL
(nats per point) on one large test set (100,000 points, ``random_state=10**6``).

The Bayes floor is the NLL of the true conditional density, which is uniform on
{t in [0, 1] : |x - t - 0.3 sin 2 pi t| < 0.1}: ``E[log |that set|]``, computed here
on the test set with a fine grid over t.  A Gaussian standing in for a uniform box
costs 0.5 log(2 pi e / 12) = 0.176 nats, so about -1.10 is the best a 3-Gaussian
mixture can do; more components can approximate the boxes better.

Usage::

    python benchmarks/mdn_inverse_sine.py
    python benchmarks/mdn_inverse_sine.py --components 3 --seeds 5 --n-test 100000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _machine import describe  # noqa: E402  (benchmarks/ is the script's folder)

import torch  # noqa: E402

from moekit.datasets import make_inverse_sine  # noqa: E402
from moekit.mdn import DeadComponentWarning, MDNRegressor  # noqa: E402


def bayes_floor(x: np.ndarray, noise: float = 0.1, grid: int = 20001) -> float:
    """Mean of log |{t : |x - f(t)| < noise}| over the rows of x (the NLL of the true density)."""
    t = np.linspace(0, 1, grid)
    f = t + 0.3 * np.sin(2 * np.pi * t)
    out = np.empty(len(x))
    for i in range(0, len(x), 2000):
        inside = np.abs(x[i : i + 2000, None] - f[None, :]) < noise
        out[i : i + 2000] = inside.mean(1)  # length of the set (t ranges over [0, 1])
    return float(np.mean(np.log(out)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--components", type=int, nargs="+", default=[3, 5, 10])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", choices=["best", "recent"], default=None,
                    help="MDNRegressor's keep (default: the estimator's default)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# {describe()}")
    print(f"# command: python {' '.join(sys.argv)}")
    Xte, yte = make_inverse_sine(args.n_test, random_state=10**6)
    floor = bayes_floor(Xte[:, 0])
    print(f"# Bayes floor on this test set: {floor:.4f} nats/point\n")
    print("| K | mean test NLL (5 seeds) | sd | per seed | epochs (mean) | seconds per fit | dead-component warnings |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for k in args.components:
        nlls, epochs, secs, dead = [], [], [], 0
        for seed in range(args.seeds):
            X, y = make_inverse_sine(args.n_train, random_state=seed)
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DeadComponentWarning)
                extra = {} if args.keep is None else {"keep": args.keep}
                est = MDNRegressor(n_components=k, random_state=seed, **extra).fit(X, y)
            secs.append(time.perf_counter() - t0)
            dead += sum(issubclass(w.category, DeadComponentWarning) for w in caught)
            nlls.append(-float(np.mean(est.score_samples(Xte, yte))))
            epochs.append(est.n_iter_)
        per = " ".join(f"{v:.4f}" for v in nlls)
        print(f"| {k} | {np.mean(nlls):.4f} | {np.std(nlls, ddof=1):.4f} | {per} | {np.mean(epochs):.0f} | "
              f"{np.mean(secs):.1f} | {dead} |")
    print(f"\nBayes floor {floor:.4f}; goal for K=3: mean <= -1.09.  keep={args.keep or 'default'}")


if __name__ == "__main__":
    main()
