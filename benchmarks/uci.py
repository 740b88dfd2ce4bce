"""UCI regression benchmark of the mixture density network (Boston housing, concrete strength).

The standard protocol of Hernandez-Lobato & Adams (2015), Gal & Ghahramani (2016) and
Lakshminarayanan et al. (2017): 20 random 90/10 splits, regenerated exactly as
``benchmarks/data/README.md`` says (``np.random.seed(1)``, then for each split
``perm = np.random.choice(range(n), n, replace=False)``, train = ``perm[:round(0.9 n)]``,
test = the rest).  Inputs and targets are standardised on the training split
(inside :class:`~moekit.mdn.MDNRegressor`); test NLL (per point) and RMSE of the
predictive mean are in the original units.

Five settings can be reported:

* ``defaults``: ``MDNRegressor(random_state=split)`` as users get it;
* ``tuned``: for every split, hyper-parameters are chosen from a small grid by an
  *inner* validation split of that split's training rows only (80 % fit, 20 %
  validation, seeded by the split index); the chosen setting is refitted on the
  whole training split and evaluated once on the test split.  Test rows are never
  used to choose anything.
* ``cv``: the same idea with less noise: a smaller grid (``CV_GRID``), each setting
  scored by repeated K-fold cross-validation on the training rows only (``--cv-folds``
  folds, ``--cv-repeats`` repeats, seeded by the split index); the setting with the
  best mean held-out NLL is refitted on the whole training split (still one MDN).
* ``noise``: ``MDNRegressor(random_state=split, **NOISE)``, noise regularisation
  (Rothfuss et al. 2019: Gaussian noise on the standardised targets, drawn afresh every
  epoch) at a level fixed beforehand on concrete's inner validation (see ``NOISE``);
* ``noise-cv``: the noise level chosen per split from ``NOISE_GRID`` by K-fold
  cross-validation on that split's training rows, then refitted on all of them.

Published numbers (test NLL and RMSE, mean +- standard error over the 20 splits) are
from Lakshminarayanan et al. (2017), Table 1 (PBP, MC dropout, deep ensembles of 5
networks).

Usage::

    python benchmarks/uci.py                        # both data sets, 20 splits, both settings
    python benchmarks/uci.py --mode defaults --splits 5 --datasets boston
    python benchmarks/uci.py --jobs 2               # parallel splits (processes)
    python benchmarks/uci.py --mode cv --datasets boston --cv-folds 3
    python benchmarks/uci.py --mode defaults noise noise-cv --cv-folds 5
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from _machine import describe  # noqa: E402  (benchmarks/ is the script's folder)

PUBLISHED = {  # (NLL mean, NLL s.e., RMSE mean, RMSE s.e.)
    "boston": {"PBP": (2.57, 0.09, 3.01, 0.18), "MC dropout": (2.46, 0.25, 2.97, 0.85),
               "Deep ensembles": (2.41, 0.25, 3.28, 1.00)},
    "concrete": {"PBP": (3.16, 0.02, 5.67, 0.09), "MC dropout": (3.04, 0.09, 5.23, 0.53),
                 "Deep ensembles": (3.06, 0.18, 6.03, 0.58)},
}

GRID = {
    "n_components": [1, 2, 3, 5],
    "weight_decay": [0.0, 1e-2],
    "hidden_layer_sizes": [(50,), (64, 64)],
}

CV_GRID = {
    "n_components": [1, 3, 5],
    "weight_decay": [0.0, 1e-2],
}

# Noise regularisation (Rothfuss et al. 2019): Gaussian noise on the standardised targets.
# NOISE is the fixed setting of ``--mode noise``; its level was chosen on *concrete's* inner
# validation only (each split's training rows split 80/20, three draws; see RESULTS_mdn.md),
# before any test split was scored with it, so Boston's row is free of any choice made on
# Boston.  ``--mode noise-cv`` instead chooses the level per split from NOISE_GRID by K-fold
# cross-validation on that split's training rows only.
NOISE = {"target_noise": 0.15}
NOISE_GRID = {"target_noise": [0.0, 0.05, 0.1, 0.15, 0.2]}


def load(name: str):
    path = os.path.join(HERE, "data", f"{name}.csv")
    data = np.genfromtxt(path, delimiter=",", skip_header=1)
    return data[:, :-1], data[:, -1]


def splits(n: int, n_splits: int = 20):
    """The usual UCI splits (legacy NumPy RNG, seed 1, sequence continued across splits)."""
    state = np.random.get_state()
    np.random.seed(1)
    out = []
    for _ in range(n_splits):
        perm = np.random.choice(range(n), n, replace=False)
        n_train = int(round(0.9 * n))
        out.append((perm[:n_train], perm[n_train:]))
    np.random.set_state(state)
    return out


def _fit_eval(params, X, y, Xv, yv):
    import torch

    from moekit.mdn import MDNRegressor

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MDNRegressor(**params).fit(X, y)
    nll = -float(np.mean(est.score_samples(Xv, yv)))
    rmse = float(np.sqrt(np.mean((est.predict(Xv) - yv) ** 2)))
    return nll, rmse, est.n_iter_, est.n_components


def run_split(task):
    name, i, mode = task[:3]
    folds, repeats = task[3] if len(task) > 3 else (3, 1)
    X, y = load(name)
    tr, te = splits(len(y))[i]
    Xtr, ytr, Xte, yte = X[tr], y[tr], X[te], y[te]
    t0 = time.perf_counter()
    chosen = {}
    if mode == "tuned":
        rng = np.random.default_rng(1000 + i)
        perm = rng.permutation(len(ytr))
        n_fit = int(round(0.8 * len(ytr)))
        fi, vi = perm[:n_fit], perm[n_fit:]
        best = None
        for values in itertools.product(*GRID.values()):
            cand = dict(zip(GRID.keys(), values))
            nll, _, _, _ = _fit_eval({**cand, "random_state": i}, Xtr[fi], ytr[fi], Xtr[vi], ytr[vi])
            if best is None or nll < best[0]:
                best = (nll, cand)
        chosen = best[1]
    elif mode == "noise":
        chosen = dict(NOISE)
    elif mode in ("cv", "noise-cv"):
        grid = CV_GRID if mode == "cv" else NOISE_GRID
        rng = np.random.default_rng((2000 if mode == "cv" else 3000) + i)
        parts = [np.array_split(rng.permutation(len(ytr)), folds) for _ in range(repeats)]
        best = None
        for values in itertools.product(*grid.values()):
            cand = dict(zip(grid.keys(), values))
            scores = []
            for part in parts:
                for f in range(folds):
                    vi = part[f]
                    fi = np.concatenate([part[g] for g in range(folds) if g != f])
                    nll, _, _, _ = _fit_eval({**cand, "random_state": i}, Xtr[fi], ytr[fi], Xtr[vi], ytr[vi])
                    scores.append(nll * len(vi))
            score = sum(scores) / (repeats * len(ytr))
            if best is None or score < best[0]:
                best = (score, cand)
        chosen = best[1]
    nll, rmse, epochs, _ = _fit_eval({**chosen, "random_state": i}, Xtr, ytr, Xte, yte)
    return {"dataset": name, "split": i, "mode": mode, "nll": nll, "rmse": rmse, "epochs": epochs,
            "chosen": {k: (list(v) if isinstance(v, tuple) else v) for k, v in chosen.items()},
            "seconds": time.perf_counter() - t0}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["boston", "concrete"], choices=["boston", "concrete"])
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--mode", nargs="+", choices=["defaults", "tuned", "both", "cv", "noise", "noise-cv"],
                    default=["both"],
                    help="defaults (quickest), tuned (one inner split), both (the two), cv (repeated K-fold "
                         "over CV_GRID), noise (fixed noise regularisation NOISE), noise-cv (its level "
                         "chosen per split by K-fold CV); several may be given")
    ap.add_argument("--cv-folds", type=int, default=3)
    ap.add_argument("--cv-repeats", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", help="write per-split results to this file")
    args = ap.parse_args(argv)
    modes = [m for mode in args.mode for m in (["defaults", "tuned"] if mode == "both" else [mode])]
    tasks = [(d, i, m, (args.cv_folds, args.cv_repeats)) for d in args.datasets for m in modes
             for i in range(args.splits)]
    print(f"# {describe()}")
    print(f"# command: python {' '.join(sys.argv)}")
    t0 = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as ex:
            results = list(ex.map(run_split, tasks))
    else:
        results = [run_split(t) for t in tasks]
    print(f"# total {time.perf_counter() - t0:.0f} s\n")
    print("| data set | method | test NLL | test RMSE |")
    print("| --- | --- | --- | --- |")
    for d in args.datasets:
        for name, (nll, nse, rmse, rse) in PUBLISHED[d].items():
            print(f"| {d} | {name} (published) | {nll:.2f} +- {nse:.2f} | {rmse:.2f} +- {rse:.2f} |")
        for m in modes:
            rs = [r for r in results if r["dataset"] == d and r["mode"] == m]
            nll = np.array([r["nll"] for r in rs])
            rmse = np.array([r["rmse"] for r in rs])
            se = lambda a: a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else float("nan")  # noqa: E731
            print(f"| {d} | moekit MDN, {m} ({len(rs)} splits) | {nll.mean():.2f} +- {se(nll):.2f} | "
                  f"{rmse.mean():.2f} +- {se(rmse):.2f} |")
    print()
    for d in args.datasets:
        for m in modes:
            rs = [r for r in results if r["dataset"] == d and r["mode"] == m]
            print(f"{d} {m}: per-split NLL " + " ".join(f"{r['nll']:.2f}" for r in rs))
            if m in ("tuned", "cv", "noise-cv"):
                for r in rs:
                    print(f"  split {r['split']:2d}: chosen {r['chosen']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
