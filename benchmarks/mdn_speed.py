"""Epoch time and final test NLL: moekit's MDN against scikit-mdn and mixture-density-nets.

Both peers are on PyPI; install them for this benchmark only (they are never
dependencies of moekit).  scikit-mdn 0.0.3 declares ``numpy<2``, which would
downgrade NumPy, so it is installed without its dependencies (it runs unchanged
on NumPy 2)::

    pip install --no-deps scikit-mdn==0.0.3 mixture-density-nets==0.1.1

Data: Bishop's inverse sine (``moekit.datasets.make_inverse_sine``), training sets of
``--n-train`` rows (seeds 0.. ``--seeds``-1) and one test set of 100,000 rows.  The
test NLL of every model is computed the same way, in float64 with ``logsumexp`` from
the model's (pi, mu, sigma), so no model is penalised by its own evaluation code.

Two comparisons, each on the same data, architecture, optimiser settings and epochs:

1. **scikit-mdn** (``skmdn.MixtureDensityEstimator``): its network is fixed (one
   hidden layer of ``hidden_dim`` softplus units; heads for pi, mu, sigma) and its
   ``fit`` takes one full-batch Adam step per epoch (lr 0.01, 1,000 epochs by
   default).  moekit runs the same: ``hidden_layer_sizes=(H,)``,
   ``activation="softplus"``, ``batch_size=n``, ``learning_rate=0.01``, the same
   number of epochs, no early stopping (``fit_mdn(..., early_stopping=False,
   lr_decay_patience=None)``); moekit keeps its own initialisation (standardisation,
   targets' Gaussian mixture) and averaging, which are what it is.
2. **mixture-density-nets** (``mixture_density_nets.MDN``): only an output head; the
   trunk (two tanh layers of 64) and the minibatch training loop (Adam, shuffled
   minibatches of ``--batch-size``, lr 3e-3, ``--epochs`` epochs) are written here as
   a user would, with the package's own ``MDDistribution.nll`` loss.  moekit runs
   ``fit_mdn`` with the same trunk, batch size, learning rate and epochs, no early
   stopping.

Epoch time = training wall time / epochs (moekit: the loop's own timer, without its
one-off initialisation, which is reported separately in "fit seconds").

Usage::

    python benchmarks/mdn_speed.py
    python benchmarks/mdn_speed.py --n-train 10000 --seeds 3 --epochs 30
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _machine import describe  # noqa: E402  (benchmarks/ is the script's folder)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from moekit.datasets import make_inverse_sine  # noqa: E402
from moekit.mdn import MixtureDensityNetwork, fit_mdn  # noqa: E402


def nll_from_params(log_pi, mu, sigma, y) -> float:
    """Mean NLL from (n, K) log-weights, means and standard deviations, in float64."""
    log_pi, mu, sigma = (torch.as_tensor(a, dtype=torch.float64) for a in (log_pi, mu, sigma))
    y = torch.as_tensor(y, dtype=torch.float64)[:, None]
    lp = -0.5 * ((y - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
    return -float(torch.logsumexp(log_pi + lp, dim=1).mean())


def moekit_nll(model, X, y) -> float:
    with torch.no_grad():
        d = model(torch.as_tensor(X, dtype=model.dtype))
        return nll_from_params(d.log_weights, d.component_means, d.component_variances.sqrt(), y)


# ---------------------------------------------------------------- scikit-mdn comparison
def run_skmdn(X, y, Xte, yte, hidden, k, epochs, seed):
    from skmdn import MixtureDensityEstimator

    with torch.random.fork_rng():
        torch.manual_seed(seed)  # scikit-mdn draws its weights from the global generator
        est = MixtureDensityEstimator(hidden_dim=hidden, n_gaussians=k, epochs=epochs, lr=0.01)
        t0 = time.perf_counter()
        est.fit(X.astype(np.float32), y[:, None].astype(np.float32))
        secs = time.perf_counter() - t0
    with torch.no_grad():
        pi, mu, sigma = est.model_(torch.as_tensor(Xte, dtype=torch.float32))
    nll = nll_from_params(torch.log(pi.double()), mu[..., 0], sigma[..., 0], yte)
    return secs / epochs, secs, nll


def run_moekit_fullbatch(X, y, Xte, yte, hidden, k, epochs, seed):
    g = torch.Generator().manual_seed(seed)
    net = MixtureDensityNetwork(1, None, k, (hidden,), activation="softplus", generator=g)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit_mdn(net, X, y, max_epochs=epochs, batch_size=len(y), learning_rate=0.01, early_stopping=False,
                      lr_decay_patience=None, random_state=seed)
    secs = time.perf_counter() - t0
    return res.epoch_seconds, secs, moekit_nll(net, Xte, yte)


# ------------------------------------------------------- mixture-density-nets comparison
def run_mdnets(X, y, Xte, yte, k, epochs, batch_size, lr, seed):
    from mixture_density_nets import MDN, MDDistribution

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(1, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                                  MDN(64, 1, k))
        x = torch.as_tensor(X, dtype=torch.float32)
        yy = torch.as_tensor(y, dtype=torch.float32)[:, None]
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        nan_batches = 0
        t0 = time.perf_counter()
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=gen)
            for i in range(0, len(y), batch_size):
                b = order[i : i + batch_size]
                mu, sigma, logits = net(x[b])
                loss = MDDistribution(mu, sigma, logits).nll(yy[b]).mean()
                if not torch.isfinite(loss):
                    nan_batches += 1
                opt.zero_grad()
                loss.backward()
                opt.step()
        secs = time.perf_counter() - t0
    with torch.no_grad():
        mu, sigma, logits = net(torch.as_tensor(Xte, dtype=torch.float32))
    nll = nll_from_params(F.log_softmax(logits[..., 0].double(), -1), mu[..., 0], sigma[..., 0], yte)
    return secs / epochs, secs, nll, nan_batches


def run_moekit_minibatch(X, y, Xte, yte, k, epochs, batch_size, lr, seed):
    g = torch.Generator().manual_seed(seed)
    net = MixtureDensityNetwork(1, None, k, (64, 64), activation="tanh", generator=g)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit_mdn(net, X, y, max_epochs=epochs, batch_size=batch_size, learning_rate=lr, early_stopping=False,
                      lr_decay_patience=None, random_state=seed)
    secs = time.perf_counter() - t0
    return res.epoch_seconds, secs, moekit_nll(net, Xte, yte)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--components", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=10, help="scikit-mdn's hidden_dim (its default is 10)")
    ap.add_argument("--full-epochs", type=int, default=1000, help="epochs of the full-batch comparison")
    ap.add_argument("--epochs", type=int, default=30, help="epochs of the minibatch comparison")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# {describe()}")
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"# torch threads: {torch.get_num_threads()}; inverse sine, n_train={args.n_train}, test 100,000 rows, "
          f"K={args.components}, seeds 0..{args.seeds - 1} (interleaved runs)\n")
    Xte, yte = make_inverse_sine(100_000, random_state=10**6)
    rows: dict[str, list] = {}
    for seed in range(args.seeds):
        X, y = make_inverse_sine(args.n_train, random_state=seed)
        k, h = args.components, args.hidden
        for name, fn in [
            (f"scikit-mdn 0.0.3 (full batch, {h} softplus, lr 0.01, {args.full_epochs} epochs)",
             lambda: run_skmdn(X, y, Xte, yte, h, k, args.full_epochs, seed)),
            ("moekit, same settings as scikit-mdn",
             lambda: run_moekit_fullbatch(X, y, Xte, yte, h, k, args.full_epochs, seed)),
            (f"mixture-density-nets 0.1.1 head + 64-64 tanh trunk (batch {args.batch_size}, lr {args.lr}, "
             f"{args.epochs} epochs)",
             lambda: run_mdnets(X, y, Xte, yte, k, args.epochs, args.batch_size, args.lr, seed)),
            ("moekit, same settings as mixture-density-nets",
             lambda: run_moekit_minibatch(X, y, Xte, yte, k, args.epochs, args.batch_size, args.lr, seed)),
        ]:
            try:
                rows.setdefault(name, []).append(fn())
            except ImportError as e:
                rows.setdefault(name, []).append(("not installed", str(e)))
    print("| implementation | epoch time (ms) | fit seconds | test NLL (mean over seeds) | per seed | non-finite losses |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rs in rows.items():
        if rs and rs[0][0] == "not installed":
            print(f"| {name} | not installed: {rs[0][1]} | | | | |")
            continue
        ep = np.mean([r[0] for r in rs]) * 1e3
        fit = np.mean([r[1] for r in rs])
        nll = [r[2] for r in rs]
        bad = sum(r[3] for r in rs) if len(rs[0]) > 3 else "-"
        print(f"| {name} | {ep:.2f} | {fit:.2f} | {np.mean(nll):.4f} | {' '.join(f'{v:.4f}' for v in nll)} | {bad} |")


if __name__ == "__main__":
    main()
