"""The bad-input catalogue for numerics: scales, constant or tiny targets, float32 overflow, sizes.

Issue 16, adversary items 1, 4, 5, 6, 7 and 11 (HME classifier with X x 1e300). Every case is a row:
what is called, then either the exception type and a pattern its message must match, or ``FINITE``
with a check of the result.  For every case nothing may be written to stdout (LAPACK's complaints used
to be) and no NaN may come back.
"""

from __future__ import annotations

import re
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from moekit import HMEClassifier, HMERegressor, MDNRegressor, MoERegressor
from moekit._linalg import solve_spd
from moekit.experts import LinearGaussianExpert
from moekit.gates import SoftmaxGate
from moekit.mixture import MixtureOfExperts
from moekit.training.em import fit_em
from moekit.training.mdn import fit_mdn

FINITE = None  # the case must return finite numbers (its check says which)

_rng = np.random.default_rng(0)
X = _rng.normal(size=(200, 2))
Y = X[:, 0] + 0.1 * _rng.normal(size=200)
C = (Y > 0).astype(int)

RANGE64 = r"from 1\.22e-150 to 3\.27e\+150"
RANGE32 = r"from 8\.88e-16 to 4\.5e\+15"


def _quiet(f):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f()


def _mdn(**kw):
    return MDNRegressor(**{"n_components": 2, "hidden_layer_sizes": (8,), "max_epochs": 5, "random_state": 0, **kw})


_MDN32 = None


def _mdn32():
    """One float32 MDN fitted on ordinary data, shared by the prediction cases."""
    global _MDN32
    if _MDN32 is None:
        _MDN32 = _quiet(lambda: _mdn().fit(X, Y))
    return _MDN32


_MOE32 = None


def _moe32():
    """One float32 mixture of experts fitted on ordinary data, shared by the prediction cases."""
    global _MOE32
    if _MOE32 is None:
        _MOE32 = _quiet(lambda: _moe(dtype="float32").fit(X, Y))
    return _MOE32


def _moe(**kw):
    return MoERegressor(**{"n_experts": 2, "random_state": 0, "max_iter": 30, **kw})


_REFERENCE = None


def _close_to_reference(pred):
    """The predictions of the same fit on X itself (the rescaling is exact: equal up to rounding)."""
    global _REFERENCE
    if _REFERENCE is None:
        _REFERENCE = _quiet(lambda: _moe().fit(X, Y).predict(X))
    return np.allclose(pred, _REFERENCE, rtol=1e-6, atol=1e-6)


def _tree_build_is_fast(f):
    t = time.perf_counter()
    try:
        f()
    finally:
        assert time.perf_counter() - t < 5.0, "the size was checked only after building the tree"


def _fit_em_direct(scale):
    model = MixtureOfExperts(SoftmaxGate(2, 2), LinearGaussianExpert(2, None, n_experts=2))
    return fit_em(model, X * scale, Y, max_iter=5, random_state=0)


def _fit_mdn_direct(scale):
    model = _mdn().build_model(2, None, torch.float32, torch.Generator().manual_seed(0))
    return fit_mdn(model, X * scale, Y, max_epochs=2, random_state=0)


def _mdn_tiny_x():
    """y = 3 x with x of magnitude 1e-12: x is an input, not a constant (item 6)."""
    xs = X[:, :1] * 1e-12
    est = _quiet(lambda: _mdn(max_epochs=200, early_stopping=False, dtype="float64").fit(xs, 3 * X[:, 0]))
    pred = est.predict(xs)
    return np.corrcoef(pred, 3 * X[:, 0])[0, 1]


# id, call, exception type (or FINITE), message pattern (or a check of the result)
CASES = [
    # item 1: X of any magnitude float64 holds: rescaled internally by a power of two (exact), the fit in X's units
    ("moe-huge-X-1e154", lambda: _quiet(lambda: _moe().fit(X * 1e154, Y).predict(X * 1e154)), FINITE, _close_to_reference),
    ("moe-huge-X-1e300", lambda: _quiet(lambda: _moe().fit(X * 1e300, Y).predict(X * 1e300)), FINITE, _close_to_reference),
    ("moe-tiny-X-1e-200", lambda: _quiet(lambda: _moe().fit(X * 1e-200, Y).predict(X * 1e-200)), FINITE, _close_to_reference),
    ("moe-tiny-X-1e-300", lambda: _quiet(lambda: _moe().fit(X * 1e-300, Y).predict(X * 1e-300)), FINITE, _close_to_reference),
    ("moe-gradient-huge-X", lambda: _quiet(lambda: _moe(fit_method="gradient", max_iter=5).fit(X * 1e200, Y).predict(X * 1e200)), FINITE, None),
    ("hme-huge-X", lambda: _quiet(lambda: HMERegressor(depth=1, random_state=0).fit(X * 1e300, Y).predict(X * 1e300)), FINITE,
     lambda p: np.allclose(p, _quiet(lambda: HMERegressor(depth=1, random_state=0).fit(X, Y).predict(X)), rtol=1e-6, atol=1e-6)),
    ("moe-float32-X-1e20", lambda: _quiet(lambda: _moe(dtype="float32").fit(X * 1e20, Y).predict(X * 1e20)), FINITE, None),
    # ... unless the rescaling cannot be undone exactly: a clear error stating the range and why
    ("moe-huge-X-ridge", lambda: _moe(alpha=0.1).fit(X * 1e200, Y), ValueError,
     rf"^X column 0 has magnitude 3\.11e\+200, outside .*{RANGE64}.*rescale it.*here alpha > 0"),
    ("moe-huge-X-mlp", lambda: _moe(expert="mlp").fit(X * 1e200, Y), ValueError, r"^X column 0 .*here its gate or experts use X other than linearly"),
    ("moe-X-columns-apart", lambda: _moe().fit(np.column_stack([X[:, 0], X[:, 1] * 1e-200]), Y), ValueError,
     r"^X column 1 has magnitude .*differ in magnitude by more than the range"),
    ("moe-dataframe-names-the-column", lambda: _moe().fit(pd.DataFrame({"a": X[:, 0], "b": X[:, 1] * 1e200}), Y), ValueError,
     r"^X column 1 \('b'\) has magnitude \d\.\d+e\+200"),
    ("moe-slopes-beyond-float64", lambda: _moe().fit(X * 1e-160, Y * 1e150), ValueError, r"^X was multiplied internally .*slopes of about y's scale over X's"),
    ("moe-subnormal-X", lambda: _moe().fit(X * 1e-320, Y), ValueError, r"^X was multiplied internally by 2\*\*-?\d+ to bring it into the supported range, but the fitted coefficients"),
    # y: its squares are the variances the model reports, in y's units: the range is a clear error
    ("moe-tiny-y-1e-160", lambda: _moe().fit(X, Y * 1e-160), ValueError, rf"^y has magnitude .*{RANGE64}"),
    ("moe-huge-y-1e200", lambda: _moe().fit(X, Y * 1e200), ValueError, rf"^y has magnitude .*{RANGE64}"),
    ("fit_em-direct-huge-x", lambda: _fit_em_direct(1e200), ValueError, rf"^x column 0 has magnitude .*{RANGE64}"),
    ("fit_mdn-direct-tiny-x-float32", lambda: _fit_mdn_direct(1e-200), ValueError, r"^x column 0 has magnitude 3\.11e-200, outside the range a float32 model"),
    ("fit_mdn-direct-huge-x-float32", lambda: _fit_mdn_direct(1e300), ValueError, r"^x has values beyond the range of float32"),
    ("solve_spd-infinite", lambda: solve_spd(torch.full((2, 2), float("inf"), dtype=torch.float64),
                                             torch.ones(2, 1, dtype=torch.float64)), ValueError, r"not finite"),
    # the magnitudes supported, tiny and huge: finite fits, predictions in the user's units
    ("moe-X-1e-140", lambda: _quiet(lambda: _moe().fit(X * 1e-140, Y).predict(X * 1e-140)), FINITE, None),
    ("moe-X-1e140", lambda: _quiet(lambda: _moe().fit(X * 1e140, Y).predict(X * 1e140)), FINITE, None),
    ("moe-y-1e-140", lambda: _quiet(lambda: _moe().fit(X, Y * 1e-140).predict(X) * 1e140), FINITE,
     lambda p: np.corrcoef(p, Y)[0, 1] > 0.99),
    ("moe-tiny-var_floor", lambda: _quiet(lambda: _moe(var_floor=1e-300).fit(X, Y * 1e-140).score_samples(X, Y * 1e-140)), FINITE, None),
    # float32 models: their own range, and finite float64 data beyond float32 named as such
    ("moe-float32-y-1e20", lambda: _moe(dtype="float32").fit(X, Y * 1e20), ValueError, rf"^y has magnitude .*float32 model supports.*{RANGE32}"),
    ("moe-float32-X-1e300", lambda: _moe(dtype="float32").fit(X * 1e300, Y), ValueError, r"^X has values beyond the range of float32"),
    ("moe-float32-y-1e300", lambda: _moe(dtype="float32").fit(X, Y * 1e300), ValueError, r"^y has magnitude .*float32"),
    # item 4: an MDN (float32) and finite float64 inputs beyond float32's range: an error, not NaN
    ("mdn-predict-X-1e300", lambda: _mdn32().predict(X * 1e300), ValueError, r"^X has values beyond the range of float32 .*dtype='float64'"),
    ("mdn-predict_gate-X-1e300", lambda: _mdn32().predict_gate(X * 1e300), ValueError, r"^X has values beyond .*float32"),
    ("mdn-network-infinite-x", lambda: _mdn32().model_(torch.full((2, 2), float("inf"))), ValueError,
     r"^X has values beyond the range of the network's dtype float32 .*would be NaN"),
    ("moe-float32-predict-X-1e300", lambda: _moe32().predict(X * 1e300), ValueError, r"^X has values beyond the range of float32"),
    ("moe-float32-predict_gate-X-1e300", lambda: _moe32().predict_gate(X * 1e300), ValueError, r"^X has values beyond the range of float32"),
    ("mdn-score_samples-X-1e300", lambda: _mdn32().score_samples(X * 1e300, Y), ValueError, r"^X has values beyond .*float32"),
    ("mdn-predict_quantiles-X-1e300", lambda: _mdn32().predict_quantiles(X * 1e300, 0.5), ValueError, r"^X has values beyond"),
    ("mdn-fit-X-1e300", lambda: _mdn().fit(X * 1e300, Y), ValueError, r"^X has values beyond the range of float32.*dtype='float64'"),
    ("mdn-fit-y-1e300", lambda: _mdn().fit(X, Y * 1e300), ValueError, r"^y has magnitude .*float32 model supports"),
    ("mdn-float64-X-1e300", lambda: _quiet(lambda: _mdn(dtype="float64").fit(X * 1e300, Y).predict(X * 1e300)), FINITE, None),
    ("mdn-float32-X-1e30", lambda: _quiet(lambda: _mdn().fit(X * 1e30, Y).predict(X * 1e30)), FINITE, None),
    # item 5: a constant target is refused (its likelihood would only reflect the floor)
    ("moe-constant-y-3", lambda: _moe().fit(X, np.full(200, 3.0)), ValueError, r"^y is constant \(the 200 sample\(s\) with positive weight all have y = 3\)"),
    ("moe-constant-y-0", lambda: _moe().fit(X, np.zeros(200)), ValueError, r"^y is constant .*y = 0\)"),
    ("moe-constant-y-1e6", lambda: _moe().fit(X, np.full(200, 1e6)), ValueError, r"^y is constant"),
    ("moe-constant-y-rounding", lambda: _moe().fit(X, np.where(np.arange(200) % 2, 0.3, 0.1 + 0.2)), ValueError, r"^y is constant .*up to rounding"),
    ("moe-constant-y-column", lambda: _moe().fit(X, np.column_stack([Y, np.full(200, 2.0)])), ValueError, r"^y column 1 is constant"),
    ("moe-constant-y-weighted", lambda: _moe().fit(X, np.where(np.arange(200) < 5, Y, 1.0),
                                                   sample_weight=(np.arange(200) >= 5).astype(float)), ValueError, r"^y is constant"),
    ("hme-constant-y", lambda: HMERegressor(depth=1).fit(X, np.full(200, 3.0)), ValueError, r"^y is constant"),
    ("mdn-constant-y", lambda: _mdn().fit(X, np.full(200, 3.0)), ValueError, r"^y is constant"),
    ("poisson-constant-counts", lambda: _quiet(lambda: _moe(expert="poisson").fit(X, np.full(200, 3.0)).predict(X)), FINITE,
     lambda p: np.allclose(p, 3.0, rtol=1e-3)),
    # item 6: a tiny but varying input column is an input, at any scale
    ("mdn-tiny-x-1e-12", _mdn_tiny_x, FINITE, lambda r: r > 0.95),
    # item 11: the HME classifier with X x 1e300 names the scale, not k-means
    ("hme-classifier-X-1e300", lambda: _quiet(lambda: HMEClassifier(random_state=0).fit(X * 1e300, C).score(X * 1e300, C)), FINITE,
     lambda acc: acc > 0.9),
    # item 7: a tree too large for the data is refused before it is built
    ("hme-depth-18", lambda: _tree_build_is_fast(lambda: HMERegressor(depth=18).fit(X, Y)), ValueError,
     r"^the tree is larger than the data supports: 262144 leaves .* at least 524287 free parameters, but got 200"),
    ("hme-depth-30", lambda: _tree_build_is_fast(lambda: HMERegressor(depth=30).fit(X, Y)), ValueError, r"^the tree is larger than the data supports: 1073741824 leaves"),
    ("hme-depth-18-ridge", lambda: _tree_build_is_fast(lambda: HMERegressor(depth=18, alpha=1.0).fit(X, Y)), ValueError, r"^the tree is larger .*262144 leaves"),
    ("hme-classifier-depth-30", lambda: _tree_build_is_fast(lambda: HMEClassifier(depth=30).fit(X, C)), ValueError, r"^the tree is larger"),
    ("hme-depth-10**9", lambda: _tree_build_is_fast(lambda: HMERegressor(depth=10**9).fit(X, Y)), ValueError, r"^depth must be at most 64"),
]


@pytest.mark.parametrize("call, error, expect", [pytest.param(c, e, m, id=i) for i, c, e, m in CASES])
def test_numerics_case(call, error, expect, capfd):
    if error is FINITE:
        out = call()
        assert np.all(np.isfinite(out)), "a NaN or infinity came back"
        if expect is not None:
            assert expect(out)
    else:
        with pytest.raises(error) as info:
            call()
        assert re.search(expect, str(info.value)), str(info.value)
    assert capfd.readouterr().out == "", "a numerical library wrote to stdout"


def test_catalogue_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))
