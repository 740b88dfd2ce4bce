"""Record model-file fixtures: small fitted estimators saved with ``est.save`` by the code to be preserved.

Run it against that code, exported outside the repository::

    PYTHONPATH=/work/golden-src python tests/golden/record_model_files.py --expect-moekit-under /work/golden-src

Writes ``model_files/<name>.moekit`` and ``model_files/expected.json`` (for every
file: the estimator's class name, the query X, and ``predict`` — plus
``predict_proba`` for classifiers — of the saved estimator, with full float
precision).  ``test_old_model_files.py`` loads every file with ``moekit.load``
and compares.  Uses only top-level ``moekit`` names and ``moekit.datasets``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "model_files")
MAX_BYTES = 200 * 1024


def _models():
    """name -> (unfitted estimator, X, y, query X); everything seeded."""
    import numpy as np

    from moekit import HMEClassifier, HMERegressor, MDNRegressor, MoEClassifier, MoERegressor
    from moekit.datasets import load_npreg, load_tonedata, make_inverse_sine

    tone = load_tonedata()
    Xt, yt = tone.data, tone.target
    qt = np.linspace(Xt.min(), Xt.max(), 20)[:, None]

    rng = np.random.default_rng(0)
    X3 = rng.normal(size=(150, 2))
    y3 = np.argmax(np.column_stack([2 * X3[:, 0], X3[:, 1], -X3[:, 0] - X3[:, 1]]) + rng.gumbel(size=(150, 3)), 1)
    q2 = np.column_stack([np.linspace(-2, 2, 20), np.roll(np.linspace(-2, 2, 20), 7)])

    rng = np.random.default_rng(1)
    Xz = rng.uniform(-1, 1, size=(200, 1))
    yz = np.abs(Xz[:, 0] - np.round(Xz[:, 0])) + 0.03 * rng.normal(size=200)
    q1 = np.linspace(-1, 1, 20)[:, None]

    rng = np.random.default_rng(2)
    Xx = rng.normal(size=(200, 2))
    yx = (Xx[:, 0] * Xx[:, 1] > 0).astype(int)

    Xs, ys = make_inverse_sine(300, random_state=0)
    qs = np.linspace(Xs.min(), Xs.max(), 20)[:, None]

    npreg = load_npreg()
    Xp, yp = npreg.data, npreg.columns["yp"]
    qp = np.linspace(Xp.min(), Xp.max(), 20)[:, None]

    rng = np.random.default_rng(3)
    xo = rng.uniform(-1, 1, 150)
    yo = np.where(rng.random(150) < 0.5, 1 + 2 * xo, 3 - xo) + 0.2 * rng.standard_t(3, size=150)

    rng = np.random.default_rng(4)
    xv = rng.uniform(-1, 1, 150)
    zv = xv > 0
    yv = np.column_stack([np.where(zv, 1 + xv, -1 - 2 * xv), np.where(zv, 0.5 * xv, 2 - xv)]) + 0.1 * rng.normal(size=(150, 2))

    return {
        "moe_regressor": (MoERegressor(n_experts=2, random_state=0), Xt, yt, qt),
        "moe_regressor_poisson": (MoERegressor(n_experts=2, expert="poisson", random_state=0), Xp, yp, qp),
        "moe_regressor_student_t": (MoERegressor(n_experts=2, expert="student_t", max_iter=50, random_state=0),
                                    xo[:, None], yo, q1),
        "moe_regressor_vector_y": (MoERegressor(n_experts=2, random_state=0), xv[:, None], yv, q1),
        "moe_regressor_mlp_gate": (MoERegressor(n_experts=2, gate="mlp", hidden_layer_sizes=(8,), max_iter=20,
                                                random_state=0), Xt, yt, qt),
        "moe_classifier": (MoEClassifier(n_experts=2, max_iter=50, random_state=0), X3, y3, q2),
        "hme_regressor": (HMERegressor(depth=2, branching=2, init="kmeans_x", max_iter=60, random_state=0), Xz, yz, q1),
        "hme_classifier": (HMEClassifier(depth=2, branching=2, max_iter=40, random_state=0), Xx, yx, q2),
        "mdn_regressor": (MDNRegressor(n_components=3, hidden_layer_sizes=(8,), max_epochs=20, random_state=0),
                          Xs, ys, qs),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--expect-moekit-under", default=None, help="fail unless moekit is imported from this folder")
    ap.add_argument("--source", default="git archive 3f50516")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    import moekit

    torch.set_num_threads(1)
    print(f"moekit.__file__ = {moekit.__file__}")
    if args.expect_moekit_under is not None:
        want = os.path.realpath(args.expect_moekit_under) + os.sep
        if not os.path.realpath(moekit.__file__).startswith(want):
            print(f"error: moekit is not imported from {args.expect_moekit_under}", file=sys.stderr)
            return 1
    os.makedirs(OUT_DIR, exist_ok=True)
    expected = {"meta": {"source": args.source, "moekit_file": moekit.__file__, "torch": torch.__version__}, "files": {}}
    for name, (est, X, y, Xq) in _models().items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X, y)
        path = os.path.join(OUT_DIR, name + ".moekit")
        est.save(path)
        entry = {
            "file": name + ".moekit",
            "class": type(est).__name__,
            "float32": str(getattr(est, "dtype", "float64")) in ("float32", "float"),
            "X": np.asarray(Xq, dtype=float).tolist(),
            "predict": est.predict(Xq).tolist(),
        }
        if hasattr(est, "predict_proba"):
            entry["predict_proba"] = est.predict_proba(Xq).tolist()
        # the file must give the same numbers back with the code that wrote it
        again = moekit.load(path)
        assert type(again).__name__ == entry["class"]
        assert np.array_equal(again.predict(Xq), est.predict(Xq)), name
        if "predict_proba" in entry:
            assert np.array_equal(again.predict_proba(Xq), est.predict_proba(Xq)), name
        size = os.path.getsize(path)
        print(f"{name:28s} {entry['class']:14s} {size / 1024:7.1f} KiB")
        if size > MAX_BYTES:
            print(f"error: {path} is larger than {MAX_BYTES} bytes; make the model smaller", file=sys.stderr)
            return 1
        expected["files"][name] = entry
    with open(os.path.join(OUT_DIR, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, allow_nan=True)
        f.write("\n")
    print(f"wrote {OUT_DIR}/expected.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
