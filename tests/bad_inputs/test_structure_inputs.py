"""The bad-input catalogue of model structure (issue 15): per-row extras, families, constraints, missing values.

One row per bad call: offsets of the wrong length or not finite; trials that are not positive integers
or below the successes; y outside a family's support; censoring limits that do not bracket y;
``shared_features`` naming an absent or gate-only column; a point-mass value never seen in y; lists of
families that do not fit ``n_experts``; missing values; extras given where a model does not take them
or missing where it needs them.  Every message names the argument and the fix, and the caller's
arrays are left as they were (the last test).
"""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from moekit import HMEClassifier, HMERegressor, LinearGaussianExpert, MoEClassifier, MoERegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

N = 60
RNG = np.random.default_rng(0)
X = RNG.normal(size=(N, 2))
Y = X[:, 0] + 0.3 * RNG.normal(size=N)
COUNTS = RNG.poisson(2.0, N).astype(float)
COUNTS[:3] = 0.0
TRIALS = np.full(N, 10.0)
OFF = np.zeros(N)
DF = pd.DataFrame({"a": X[:, 0], "b": X[:, 1]})


@pytest.fixture(scope="module")
def m():
    """Fitted models the prediction cases call."""
    return SimpleNamespace(
        offset=MoERegressor(n_experts=1, expert="poisson", random_state=0).fit(X, COUNTS, offset=OFF),
        plain=MoERegressor(n_experts=1, expert="poisson", random_state=0).fit(X, COUNTS),
        trials=MoERegressor(n_experts=1, expert="binomial", random_state=0).fit(X, COUNTS, trials=TRIALS),
        linear=MoERegressor(n_experts=1, random_state=0).fit(X, Y),
        hme=HMERegressor(depth=1, random_state=0, max_iter=5).fit(X, Y),
        hme_offset=HMERegressor(depth=1, expert="poisson", random_state=0, max_iter=5).fit(X, COUNTS, offset=OFF),
    )


def _fit(est, X=X, y=Y, **kw):
    return lambda m: est.fit(X, y, **kw)


def _poisson(**kw):
    return MoERegressor(n_experts=2, expert="poisson", **kw)


V, T = ValueError, TypeError
NAN_ROW = np.where(np.arange(N) == 4, np.nan, 0.0)

CASES = [
    # ------------------------------------------------------------------ offsets
    ("offset wrong length", _fit(_poisson(), y=COUNTS, offset=np.zeros(5)), V,
     r"offset has shape \(5,\) but X has 60 rows; pass one offset value per row of X"),
    ("offset 2-D", _fit(_poisson(), y=COUNTS, offset=np.zeros((N, 2))), V, r"offset has shape \(60, 2\)"),
    ("offset infinite", _fit(_poisson(), y=COUNTS, offset=np.r_[np.inf, np.zeros(N - 1)]), V,
     r"offset holds infinite values in rows \[0\].*np\.log\(exposure\)"),
    ("offset text", _fit(_poisson(), y=COUNTS, offset=np.array(["a"] * N)), T, r"offset must hold numbers"),
    ("offset NaN", _fit(_poisson(), y=COUNTS, offset=NAN_ROW), V,
     r"Input offset contains NaN in rows \[4\].*missing='drop'"),
    ("offset with Student-t experts", _fit(MoERegressor(expert="student_t"), offset=OFF), V,
     r"offset is given, but expert='student_t' has no linear predictor"),
    ("offset with linear experts and vector y", _fit(MoERegressor(), y=np.c_[Y, Y], offset=OFF), V,
     r"offset with linear experts needs a scalar \(1-D\) y"),
    ("offset for a classifier", _fit(MoEClassifier(), y=(Y > 0).astype(int), offset=OFF), V,
     r"MoEClassifier takes no offset=.*MoERegressor"),
    ("offset for a hierarchy of Student-t leaves", _fit(HMERegressor(depth=1, expert="student_t"), offset=OFF), V,
     r"offset is given, but expert='student_t' has no linear predictor"),
    ("offset for a hierarchical classifier", _fit(HMEClassifier(depth=1), y=(Y > 0).astype(int), offset=OFF), V,
     r"HMEClassifier takes no offset=.*MoERegressor"),
    ("offset with an expert instance", _fit(MoERegressor(n_experts=1, expert=LinearGaussianExpert(2)), offset=OFF),
     V, r"offset need experts named by family \(expert='linear', 'poisson', \.\.\.\)"),
    ("predict without the fitted offset", lambda m: m.offset.predict(X), V,
     r"fitted with offset=.*pass offset= here too \(np\.zeros\(n\) for no offset"),
    ("score_samples without the fitted offset", lambda m: m.offset.score_samples(X, COUNTS), V, r"pass offset= here too"),
    ("predict with an offset the model lacks", lambda m: m.plain.predict(X, offset=OFF), V,
     r"offset is given, but this MoERegressor was fitted without offset"),
    ("predict offset wrong length", lambda m: m.offset.predict(X, offset=OFF[:3]), V, r"offset has shape \(3,\)"),
    ("predict offset NaN", lambda m: m.offset.predict(X, offset=NAN_ROW), V,
     r"offset holds NaN in rows \[4\]; a prediction needs every input"),
    ("hierarchy predict with offset", lambda m: m.hme.predict(X, offset=OFF), V,
     r"offset is given, but this HMERegressor was fitted without offset"),
    ("hierarchy predict without the fitted offset", lambda m: m.hme_offset.predict(X), V,
     r"fitted with offset=.*pass offset= here too"),
    # ------------------------------------------------------------------ trials
    ("trials not integers", _fit(MoERegressor(expert="binomial"), y=COUNTS, trials=np.full(N, 2.5)), V,
     r"trials must hold positive integers .*got 2\.5"),
    ("trials zero", _fit(MoERegressor(expert="binomial"), y=COUNTS * 0, trials=np.zeros(N)), V,
     r"trials must hold positive integers"),
    ("trials below successes", _fit(MoERegressor(expert="binomial"), y=COUNTS, trials=np.ones(N)), V,
     r"expert='binomial': y is [2-9]\S* with trials 1 in rows .*an integer from 0 to the row's trials"),
    ("binomial y above one without trials", _fit(MoERegressor(expert="binomial"), y=COUNTS), V,
     r"expert='binomial'.*pass trials=\.\.\. for counts out of more than one trial"),
    ("trials for Poisson experts", _fit(_poisson(), y=COUNTS, trials=TRIALS), V,
     r"trials is given, but expert='poisson'.*use expert='binomial'"),
    ("predict without the fitted trials", lambda m: m.trials.predict(X), V,
     r"fitted with trials=.*np\.ones\(n\) for the probability of one trial"),
    ("predict trials for a Poisson model", lambda m: m.plain.predict(X, trials=TRIALS), V,
     r"trials is given, but this MoERegressor was fitted without trials"),
    ("predict trials not integers", lambda m: m.trials.predict(X, trials=np.full(N, 0.5)), V,
     r"trials must hold positive integers"),
    # ------------------------------------------------------------------ y per family
    ("Poisson y negative", _fit(_poisson(), y=-COUNTS - 1), V, r"expert='poisson': y is -\d.*non-negative integer counts"),
    ("negative binomial y fractional", _fit(MoERegressor(expert="negative_binomial"), y=COUNTS + 0.5), V,
     r"expert='negative_binomial': y is .*non-negative integer counts"),
    ("Gamma y not positive", _fit(MoERegressor(expert="gamma"), y=COUNTS), V,
     r"expert='gamma': y is 0 in rows \[0, 1, 2.*must be positive.*'point_mass' expert for zeros"),
    ("Poisson vector y", _fit(_poisson(), y=np.c_[COUNTS, COUNTS]), V, r"expert='poisson' needs a 1-D y"),
    ("point-mass value never in y", _fit(MoERegressor(expert=["point_mass", "poisson"], point_mass_value=-1.0),
                                         y=COUNTS), V,
     r"point_mass_value=-1 never occurs in y .*set point_mass_value to the value y piles up on"),
    ("point-mass value only on zero-weight rows",
     _fit(MoERegressor(expert=["point_mass", "poisson"]), y=COUNTS, sample_weight=(COUNTS > 0).astype(float)), V,
     r"point_mass_value=0 never occurs in y \(among rows with positive weight\)"),
    # ------------------------------------------------------------------ censoring
    ("lower above y", _fit(MoERegressor(), lower=Y + 1), V,
     r"the censoring limits do not bracket y in rows \[0, 1, .*fix y, lower or upper"),
    ("upper below y", _fit(MoERegressor(), upper=Y - 1), V, r"the censoring limits do not bracket y"),
    ("lower not below upper", _fit(MoERegressor(), lower=Y, upper=Y), V,
     r"lower must be below upper in every row, but lower >= upper in rows \[0, 1"),
    ("lower NaN", _fit(MoERegressor(), lower=NAN_ROW), V, r"lower holds NaN in rows \[4\]; use -np\.inf"),
    ("censoring for Poisson experts", _fit(_poisson(), y=COUNTS, lower=np.zeros(N)), V,
     r"lower/upper \(censoring limits\) need expert='linear'"),
    ("censoring with vector y", _fit(MoERegressor(), y=np.c_[Y, Y], lower=np.full(N, -9.0)), V,
     r"lower/upper \(censoring limits\) need a scalar \(1-D\) y"),
    ("NaN y without two limits", _fit(MoERegressor(), y=np.where(np.arange(N) == 2, np.nan, Y), lower=np.full(N, -9.0)),
     V, r"Input y contains NaN in rows \[2\]"),
    ("score_samples with limits on an uncensored model", lambda m: m.linear.score_samples(X, Y, lower=Y - 1), V,
     r"lower is given, but this MoERegressor has no censored experts"),
    ("censoring for a classifier", _fit(MoEClassifier(), y=(Y > 0).astype(int), upper=Y), V,
     r"MoEClassifier takes no upper="),
    # ------------------------------------------------------------------ shared features and families
    ("shared feature absent", _fit(MoERegressor(shared_features=["z"]), X=DF), V,
     r"shared_features: column 'z' is not in X's columns \['a', 'b'\]"),
    ("shared feature index out of range", _fit(MoERegressor(shared_features=[5])), V,
     r"shared_features: column index 5 is out of range for X with 2 columns"),
    ("shared feature gate-only", _fit(MoERegressor(gate_features=["b"], expert_features=["a"], shared_features=["b"]),
                                      X=DF), V,
     r"shared_features: column 'b' is a gate-only feature \(in gate_features, not in expert_features\)"),
    ("shared feature not an expert input", _fit(MoERegressor(expert_features=[0], shared_features=[1])), V,
     r"shared_features: column 1 is not in expert_features.*add it to expert_features"),
    ("shared feature twice", _fit(MoERegressor(shared_features=[0, 0])), V, r"shared_features names a column twice"),
    ("shared features empty", _fit(MoERegressor(shared_features=[])), V, r"shared_features must select at least one"),
    ("shared with Student-t experts", _fit(MoERegressor(expert="student_t", shared_features=[0])), V,
     r"shared_features is not available with expert='student_t'"),
    ("shared with mixed families", _fit(MoERegressor(expert=["point_mass", "poisson"], shared_features=[0]), y=COUNTS),
     V, r"shared_features ties coefficients across experts of one family, but expert=\['point_mass', 'poisson'\]"),
    ("expert list too short", _fit(MoERegressor(n_experts=3, expert=["linear", "poisson"])), V,
     r"expert lists 2 families but n_experts=3"),
    ("expert list unknown name", _fit(MoERegressor(expert=["linear", "banana"])), V,
     r"expert\[1\] must be one of 'linear', 'poisson'.*got 'banana'"),
    ("expert list empty", _fit(MoERegressor(expert=[])), V, r"expert must be a family name or a list .*empty list"),
    ("covariance unknown", _fit(MoERegressor(covariance="tied_full")), V,
     r"covariance must be one of 'full', 'diag', 'spherical', 'tied', 'tied_diag' or 'tied_spherical'"),
    ("point_mass_value not a number", _fit(MoERegressor(point_mass_value="0")), V, r"point_mass_value must be a number"),
    ("hierarchy censoring for Poisson leaves", _fit(HMERegressor(depth=1, expert="poisson"), y=COUNTS,
                                                    lower=np.zeros(N)), V,
     r"lower/upper \(censoring limits\) need expert='linear'"),
    ("hierarchy expert list", _fit(HMERegressor(expert=["linear", "poisson"])), V,
     r"a list of families \(one per expert\) is an option of MoERegressor and MoEClassifier"),
    # ------------------------------------------------------------------ missing values
    ("missing unknown", _fit(MoERegressor(missing="impute")), V, r"missing must be one of 'error' or 'drop'"),
    ("X NaN names rows and columns", _fit(MoERegressor(), X=np.c_[X[:, 0], NAN_ROW + X[:, 1]]), V,
     r"Input X contains NaN in rows \[4\], columns \[1\].*missing='drop'"),
    ("X NaN in a named column", _fit(MoERegressor(), X=DF.assign(b=NAN_ROW)), V,
     r"Input X contains NaN in rows \[4\], columns \['b'\]"),
    ("missing drop of every row", _fit(MoERegressor(missing="drop"), X=X * np.nan), V,
     r"missing='drop' would drop every row: all 60 rows have missing values"),
    ("missing drop leaves no weight", _fit(MoERegressor(missing="drop"), X=np.c_[X[:, 0], NAN_ROW + X[:, 1]],
                                           sample_weight=(np.arange(N) == 4).astype(float)), V,
     r"sample_weight sums to zero on the rows left after dropping"),
    ("scalar y NaN", _fit(MoERegressor(), y=np.where(np.arange(N) == 7, np.nan, Y)), V, r"Input y contains NaN"),
    ("vector y row all NaN", _fit(MoERegressor(), y=np.c_[Y, Y] * np.where(np.arange(N) == 7, np.nan, 1.0)[:, None]), V,
     r"Input y contains NaN in rows \[7\].*missing='drop'"),
    ("vector y NaN for Student-t experts", _fit(MoERegressor(expert="student_t"),
                                                y=np.c_[Y, np.where(np.arange(N) == 7, np.nan, Y)]), V,
     r"Input y contains NaN"),
    ("vector y infinite with NaN", _fit(MoERegressor(), y=np.c_[np.where(np.arange(N) == 1, np.inf, Y),
                                                           np.where(np.arange(N) == 7, np.nan, Y)]), V,
     r"Input y contains infinity .*rows \[1\]"),
    ("hierarchy vector y with missing coordinates under Student-t leaves",
     _fit(HMERegressor(depth=1, expert="student_t"), y=np.c_[Y, NAN_ROW + Y]), V, r"Input y contains NaN"),
    ("predict with missing inputs", lambda m: m.linear.predict(np.c_[X[:, 0], NAN_ROW]), V,
     r"Input X contains NaN in rows \[4\], columns \[1\]; a prediction or fit needs every input"),
]


@pytest.mark.parametrize(("call", "exc", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_structure_call(m, call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(m)


def test_structure_catalogue_size():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)


def test_bad_calls_leave_the_callers_arrays_unchanged():
    X0, y0, off0, tr0 = X.copy(), COUNTS.copy(), OFF.copy(), TRIALS.copy()
    low = np.full(N, 5.0)
    low0 = low.copy()
    for call in (lambda: _poisson().fit(X, COUNTS, offset=np.r_[np.inf, OFF[1:]]),
                 lambda: MoERegressor(expert="binomial").fit(X, COUNTS, trials=np.ones(N)),
                 lambda: MoERegressor().fit(X, COUNTS, lower=low),
                 lambda: MoERegressor(shared_features=[7]).fit(X, COUNTS, offset=OFF)):
        with pytest.raises(ValueError):
            call()
    for a, b in ((X, X0), (COUNTS, y0), (OFF, off0), (TRIALS, tr0), (low, low0)):
        np.testing.assert_array_equal(a, b)
