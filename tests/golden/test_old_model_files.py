"""Model files written by commit 3f50516 (``record_model_files.py``) still load and predict the same.

Every ``model_files/*.moekit`` is loaded with the public ``moekit.load`` and its
predictions on the stored query X are compared with those of the estimator
that saved it: 1e-10 (relative above 1 in magnitude) for float64 models,
1e-6 for float32 ones (the MDN); class labels exactly.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import moekit

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_DIR = os.path.join(HERE, "model_files")

with open(os.path.join(MODEL_DIR, "expected.json")) as _f:
    EXPECTED = json.load(_f)["files"]


def _close(actual, expected, tol, what):
    a = np.asarray(actual)
    g = np.asarray(expected)
    assert a.shape == g.shape, f"{what}: shape {a.shape} != expected {g.shape}"
    if g.dtype.kind in "iub" or g.dtype.kind in "US":
        assert np.array_equal(a, g), f"{what}: {a.tolist()} != expected {g.tolist()}"
        return
    a = a.astype(float)
    g = g.astype(float)
    ok = (np.abs(a - g) <= tol * np.maximum(1.0, np.abs(g))) | (np.isnan(a) & np.isnan(g))
    assert ok.all(), (
        f"{what}: {int((~ok).sum())} value(s) differ beyond {tol:g}; max |diff| {np.nanmax(np.abs(a - g)):.3g}"
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_old_model_file(name):
    entry = EXPECTED[name]
    est = moekit.load(os.path.join(MODEL_DIR, entry["file"]))
    assert type(est).__name__ == entry["class"]
    tol = 1e-6 if entry["float32"] else 1e-10
    X = np.asarray(entry["X"], dtype=float)
    _close(est.predict(X), entry["predict"], tol, f"{name}.predict")
    if "predict_proba" in entry:
        _close(est.predict_proba(X), entry["predict_proba"], tol, f"{name}.predict_proba")
