"""Tracking a 3-D stick figure through its ambiguous frames (moekit.inference.tracking).

Data (``moekit.datasets.make_kinematic_tracking``, one moving arm: shoulder
swing, abduction and elbow bend; orthographic camera along the depth axis):

* the per-frame model ``p(depths | image)`` is trained on 4,000 frames of
  *random* poses within the joint limits (it never sees the test motions, and
  a mirrored swing is as likely as the true one wherever both are allowed);
* the motion model (Q of a random walk on the depths, order 1, or on their
  velocity, order 2) is estimated from 10 separate smooth training sequences;
* the test set is ``--sequences`` smooth sequences of 200 frames, different
  seeds.  About half of the frames are ambiguous (the mirrored explanation is
  within the joint limits).

Per-frame models: a mixture of experts with linear experts (K from {10, 20,
40} by the log-likelihood of a 20 % validation split of the training frames,
then refitted on all of them; EM, 2 k-means starts) and, where
``moekit.mdn`` is available, a mixture density network (8 components).

Estimates compared, for every frame: the **top mode** (heaviest mode of that
frame alone), the **Viterbi path** over the per-frame modes (``track_modes``,
orders 1 and 2; the motion covariance is inflated by the scatter of the
modes around the truth, estimated on the training frames, as observation
noise), the **filtered mean** (heaviest hypothesis of the Gaussian-sum
filter ``filter_mixture``, orders 1 and 2, which only sees the past), and as a
lower bound the **best of the modes** (the mode closest to the truth, an
oracle).  The pose error is the mean over the moving joints of the 3-D
position error (the image coordinates are observed, so it is the depth
error), averaged over frames; also on the ambiguous frames only.

Usage::

    python benchmarks/tracking.py                 # 3 seeds, 10 test sequences each
    python benchmarks/tracking.py --seeds 0 --no-mdn
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _machine import describe  # noqa: E402  (benchmarks/ is the script's folder)
from moekit import MoERegressor
from moekit.datasets import make_kinematic_tracking
from moekit.inference import estimate_transition_cov, filter_mixture, viterbi


def mode_noise(est, X, y, max_modes):
    """Covariance of (nearest mode - truth) on training frames: the modes' observation noise."""
    r = est.predict_modes(X, max_modes=max_modes)
    dist = np.linalg.norm(r.modes - y[:, None, :], axis=-1)
    j = np.nanargmin(np.where(np.isnan(dist), np.inf, dist), axis=1)
    e = r.modes[np.arange(len(y)), j] - y
    return e.T @ e / len(e)


def run(seed, n_seq, use_mdn, log, max_modes=8):
    train = make_kinematic_tracking(20, 200, motion="random", random_state=seed)
    X, y = train.X.reshape(-1, train.X.shape[-1]), train.y.reshape(-1, train.y.shape[-1])
    smooth = make_kinematic_tracking(10, 200, random_state=10_000 + seed)
    q = {1: estimate_transition_cov(smooth.y, order=1), 2: estimate_transition_cov(smooth.y, order=2)}
    test = make_kinematic_tracking(n_seq, 200, random_state=20_000 + seed)
    amb = test.n_branches > 1
    models = []
    t = time.perf_counter()

    def make(k):
        return MoERegressor(n_experts=k, n_init=2, max_iter=300, init="kmeans", random_state=seed)

    # K by the log-likelihood of a 20 % validation split of the training frames, then refit on all
    perm = np.random.default_rng(seed).permutation(len(X))
    tr, va = perm[: int(0.8 * len(X))], perm[int(0.8 * len(X)) :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        val = {k: float(make(k).fit(X[tr], y[tr]).score_samples(X[va], y[va]).mean()) for k in (10, 20, 40)}
        k_best = max(val, key=val.get)
        moe = make(k_best).fit(X, y)
    models.append(("MoE, linear experts", moe, time.perf_counter() - t))
    log(f"  seed {seed}: MoE fitted (K={k_best}, validation log-likelihood {val})")
    if use_mdn:
        try:
            from moekit.mdn import MDNRegressor
        except ImportError:
            MDNRegressor = None
        if MDNRegressor is not None:
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mdn = MDNRegressor(n_components=8, random_state=seed).fit(X, y)
            models.append(("MDN, 8 components", mdn, time.perf_counter() - t))
            log(f"  seed {seed}: MDN fitted")
    out = {}
    for name, est, fit_s in models:
        r_noise = mode_noise(est, X[:2000], y[:2000], max_modes)
        errs = {}
        t = time.perf_counter()
        for s in range(n_seq):
            xs, ys = test.X[s], test.y[s]
            res = est.predict_modes(xs, max_modes=max_modes)
            dist = est.predict_distribution(xs)

            def err(path, ys=ys):
                return np.abs(path - ys).mean(1)  # mean over joints of the depth (= 3-D position) error

            errs.setdefault("top mode, frame by frame", []).append(err(res.modes[:, 0]))
            for order, c in ((1, 2.0), (2, 6.0)):
                qq = q[order] + c * r_noise  # steps / accelerations of noisy modes
                unary = np.log(res.weights)
                path, _, _ = viterbi(res.modes, unary, qq, order=order)
                errs.setdefault(f"Viterbi over modes, order {order}", []).append(err(path))
            for order in (1, 2):
                f = filter_mixture(dist, q[order], order=order, max_hypotheses=10)
                errs.setdefault(f"Gaussian-sum filter, order {order}", []).append(err(f.mean_path))
            dd = np.abs(res.modes - ys[:, None, :]).mean(-1)
            errs.setdefault("best of the modes (oracle)", []).append(np.nanmin(np.where(np.isnan(dd), np.inf, dd), 1))
        track_s = time.perf_counter() - t
        a = amb.reshape(-1)
        out[name] = {
            "fit_s": fit_s, "track_s": track_s, "k": int(getattr(est, "n_experts_", 0) or 0),
            "errors": {k: (float(np.concatenate(v).mean()), float(np.concatenate(v)[a].mean()),
                           float(np.concatenate(v)[~a].mean())) for k, v in errs.items()},
        }
        log(f"  seed {seed}: {name} tracked")
    return {"seed": seed, "ambiguous_share": float(amb.mean()), "models": out}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sequences", type=int, default=10)
    p.add_argument("--no-mdn", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
        from threadpoolctl import threadpool_limits

        threadpool_limits(a.threads)  # NumPy / scikit-learn BLAS: oversubscription is ruinous on a shared machine
    log = lambda s: print(s, file=sys.stderr, flush=True)
    print(f"# Tracking benchmark\n\n{describe()}; torch threads {torch.get_num_threads()}\n")
    print("command: python benchmarks/tracking.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "\n")
    results = [run(s, a.sequences, not a.no_mdn, log) for s in a.seeds]
    print(f"Ambiguous frames: {np.mean([r['ambiguous_share'] for r in results]):.1%} of "
          f"{len(a.seeds)} x {a.sequences} x 200 test frames.\n")
    print("Mean per-frame pose error (mean over joints of the 3-D position error), mean ± sd over seeds:\n")
    print("| per-frame model | estimate | all frames | ambiguous frames | unambiguous frames | top mode / this |")
    print("|---|---|---:|---:|---:|---:|")
    for name in results[0]["models"]:
        keys = list(results[0]["models"][name]["errors"])
        top = np.array([r["models"][name]["errors"]["top mode, frame by frame"][0] for r in results])
        for k in keys:
            v = np.array([r["models"][name]["errors"][k] for r in results])  # (seeds, 3)
            cells = [f"{v[:, j].mean():.4f} ± {v[:, j].std():.4f}" for j in range(3)]
            print(f"| {name} | {k} | " + " | ".join(cells) + f" | {np.mean(top / v[:, 0]):.2f} |")
    ks = [r["models"]["MoE, linear experts"]["k"] for r in results]
    print(f"\nMoE: K chosen per seed {ks}.")
    for name in results[0]["models"]:
        print(f"\n{name}: fit {np.mean([r['models'][name]['fit_s'] for r in results]):.0f} s, modes + tracking of "
              f"{a.sequences} x 200 frames {np.mean([r['models'][name]['track_s'] for r in results]):.1f} s (mean over seeds)")


if __name__ == "__main__":
    main()
