"""moekit.selection: choosing the number of experts by BIC, AIC, ICL or held-out log-likelihood; the log-likelihood scorer."""

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV

from moekit import MoERegressor
from moekit.datasets import load_tonedata
from moekit.selection import (
    CRITERIA,
    SelectionResult,
    bootstrap_lrt,
    log_likelihood_scorer,
    parse_n_experts,
    select_n_experts,
)


# ------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    "spec, ks",
    [("1..4", [1, 2, 3, 4]), (" 2..3 ", [2, 3]), ("1-3", [1, 2, 3]), ("5,2,3", [2, 3, 5]), ("3,3,1", [1, 3]),
     ("7", [7]), ("64", [64])],
)
def test_parse_n_experts(spec, ks):
    assert parse_n_experts(spec) == ks


@pytest.mark.parametrize(
    "spec, pattern",
    [("a..b", r"'a\.\.b': give a range such as 1\.\.8 or a list such as 2,3,5"),
     ("", r"between 1 and 64"), ("0..3", r"'0\.\.3': the numbers of experts must lie between 1 and 64"),
     ("3..1", r"between 1 and 64"), ("2,65", r"between 1 and 64"), ("1.5", r"give a range")],
)
def test_parse_n_experts_errors(spec, pattern):
    with pytest.raises(ValueError, match=pattern):
        parse_n_experts(spec)


# ------------------------------------------------- the loop, with stand-ins
class _Fake:
    """An estimator whose criteria and held-out log-likelihood are set per K."""

    bics = {}
    lls = {}

    def __init__(self, k):
        self.k = k

    def fit(self, X, y, sample_weight=None):
        self.n_fit_ = len(X)
        self.sample_weight_ = sample_weight
        return self

    def bic(self, X, y):
        return self.bics[self.k]

    def aic(self, X, y):
        return -self.bics[self.k]

    def score_samples(self, X, y):
        return np.full(len(X), self.lls[self.k])


@pytest.fixture()
def fake(monkeypatch):
    monkeypatch.setattr(_Fake, "bics", {1: 10.0, 2: 5.0, 3: 5.0, 4: 7.0})
    monkeypatch.setattr(_Fake, "lls", {1: -2.0, 2: -1.0, 3: -1.5, 4: -1.0})
    return _Fake


def test_bic_picks_the_lowest_and_the_first_on_ties(fake):
    seen = []
    X, y = np.zeros((20, 1)), np.zeros(20)
    res = select_n_experts(fake, X, y, [1, 2, 3, 4], callback=seen.append)
    assert isinstance(res, SelectionResult)
    assert res.criterion == "bic" and res.description == "BIC (lower is better)"
    assert res.scores == {1: 10.0, 2: 5.0, 3: 5.0, 4: 7.0}
    assert res.n_experts == 2 and res.estimator.k == 2 and res.estimator.n_fit_ == 20
    assert seen == [1, 2, 3, 4]
    res = select_n_experts(fake, X, y, [3, 2])  # the order of ks decides ties
    assert res.n_experts == 3 and list(res.scores) == [3, 2]


def test_aic_uses_the_estimators_aic(fake):
    res = select_n_experts(fake, np.zeros((5, 1)), np.zeros(5), [1, 2, 4], criterion="aic")
    assert res.scores == {1: -10.0, 2: -5.0, 4: -7.0} and res.n_experts == 1
    assert res.description == CRITERIA["aic"]


def test_heldout_scores_the_held_out_rows_and_refits_the_best_on_every_row(fake):
    seen = []
    X, y = np.arange(50.0)[:, None], np.zeros(50)
    res = select_n_experts(fake, X, y, [1, 2, 3, 4], criterion="heldout", random_state=0, callback=seen.append)
    assert res.scores == {1: -2.0, 2: -1.0, 3: -1.5, 4: -1.0}
    assert res.n_experts == 2 and res.estimator.k == 2 and res.estimator.n_fit_ == 50  # refitted on all rows
    assert seen == [1, 1, 2, 2, 3, 3, 4, 4]  # each K: its held-out fit, then its fit on every row (the table's)
    assert res.description == "held-out mean log-likelihood (higher is better)"


def test_heldout_split_passes_weights_and_keeps_data_frames(fake):
    pd = pytest.importorskip("pandas")
    fits = []

    class Recording(fake):
        def fit(self, X, y, sample_weight=None):
            fits.append((X, sample_weight))
            return super().fit(X, y, sample_weight)

    X = pd.DataFrame({"a": np.arange(10.0)})
    w = np.arange(1.0, 11.0)
    select_n_experts(Recording, X, np.zeros(10), [1], criterion="heldout", sample_weight=w,
                     validation_fraction=0.3, random_state=3)
    (Xtr, wtr), (Xall, wall) = fits
    perm = np.random.default_rng(3).permutation(10)
    assert isinstance(Xtr, pd.DataFrame) and list(Xtr["a"]) == list(perm[3:])
    assert np.array_equal(wtr, w[perm[3:]]) and Xall is X and wall is w


def test_argument_errors(fake):
    X, y = np.zeros((5, 1)), np.zeros(5)
    with pytest.raises(ValueError, match="criterion must be one of"):
        select_n_experts(fake, X, y, [1], criterion="hqic")
    for ks in ([], [0, 1], [1.5], [True]):
        with pytest.raises(ValueError, match="ks must be a non-empty sequence of integers >= 1"):
            select_n_experts(fake, X, y, ks)
    with pytest.raises(ValueError, match="lists a value twice"):
        select_n_experts(fake, X, y, [1, 2, 1])
    with pytest.raises(ValueError, match="does not take sample_weight"):
        select_n_experts(fake, X, y, [1], sample_weight=np.ones(5))
    with pytest.raises(ValueError, match="validation_fraction"):
        select_n_experts(fake, X, y, [1], criterion="heldout", validation_fraction=1.0)


# ------------------------------------------------------ real estimators
@pytest.fixture(scope="module")
def tone():
    d = load_tonedata()
    return d.data, d.target


def _make(k):
    return MoERegressor(n_experts=k, n_init=2, random_state=0)


def test_bic_on_tone_data_equals_the_estimators_own(tone):
    X, y = tone
    res = select_n_experts(_make, X, y, [1, 2, 3])
    for k in (1, 2, 3):
        assert res.scores[k] == _make(k).fit(X, y).bic(X, y)
    # with the default start K = 3 finds a third tight line (log-likelihood far above K = 2's 145.65), which BIC
    # prefers; the literature's two groups of musicians come from K = 2 fits stuck at the classic 142.85
    assert res.n_experts == min(res.scores, key=res.scores.get) == res.estimator.n_experts_
    assert res.scores[res.n_experts] == min(res.scores.values())


def test_heldout_on_tone_data_matches_a_split_by_hand(tone):
    X, y = tone
    res = select_n_experts(_make, X, y, [1, 2], criterion="heldout", random_state=5)
    perm = np.random.default_rng(5).permutation(len(X))
    val, tr = perm[:30], perm[30:]
    for k in (1, 2):
        assert res.scores[k] == float(np.mean(_make(k).fit(X[tr], y[tr]).score_samples(X[val], y[val])))
    np.testing.assert_array_equal(res.estimator.predict(X), _make(res.n_experts).fit(X, y).predict(X))


# ------------------------------------------------------------- ICL and the scorer
def _two_regimes(n=300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, 1))
    y = np.where(rng.random(n) < 0.5, 2 * X[:, 0], -2 * X[:, 0]) + 0.1 * rng.normal(size=n)
    return X, y


def test_icl_is_bic_plus_twice_the_entropy_of_the_responsibilities(tone):
    X, y = tone
    est = MoERegressor(n_experts=2, random_state=0).fit(X, y)
    r = est.responsibilities(X, y)
    entropy = -np.sum(r[r > 0] * np.log(r[r > 0]))
    assert est.icl(X, y) == pytest.approx(est.bic(X, y) + 2 * entropy, rel=1e-12)
    assert est.icl(X, y) > est.bic(X, y)
    one = MoERegressor(n_experts=1, random_state=0).fit(X, y)
    assert one.icl(X, y) == pytest.approx(one.bic(X, y), rel=1e-12)  # one expert: no entropy


def test_select_n_experts_by_icl():
    X, y = _two_regimes()
    res = select_n_experts(lambda k: MoERegressor(n_experts=k, random_state=0), X, y, [1, 2, 3], criterion="icl")
    assert res.criterion == "icl" and res.description == "ICL (lower is better)"
    assert res.scores[res.n_experts] == min(res.scores.values())
    assert res.scores[2] < res.scores[1]


def test_log_likelihood_scorer_chooses_k_where_r2_cannot():
    X, y = _two_regimes()
    est = MoERegressor(n_experts=2, random_state=0).fit(X, y)
    assert log_likelihood_scorer(est, X, y) == pytest.approx(est.score_samples(X, y).mean(), rel=1e-12)
    grid = GridSearchCV(MoERegressor(random_state=0), {"n_experts": [1, 2]}, scoring=log_likelihood_scorer, cv=3)
    assert grid.fit(X, y).best_params_ == {"n_experts": 2}
    # R² of the conditional mean: both branches average to about zero, so K does not matter to it
    r2 = GridSearchCV(MoERegressor(random_state=0), {"n_experts": [1, 2]}, cv=3).fit(X, y)
    assert max(r2.cv_results_["mean_test_score"]) < 0.1


def test_cross_validated_log_likelihood_holds_every_row_out_once():
    X, y = _two_regimes(n=240)
    calls = []
    res = select_n_experts(lambda k: MoERegressor(n_experts=k, random_state=0), X, y, [1, 2], criterion="cv",
                           n_folds=4, random_state=0, callback=calls.append)
    assert res.criterion == "cv" and res.description == CRITERIA["cv"]
    assert res.n_experts == 2 and res.scores[2] > res.scores[1]
    assert calls == [1] * 5 + [2] * 5  # four folds per K, then its fit on every row
    assert res.estimator.n_experts_ == 2
    # integer weights: the weighted mean over the held-out rows (no error, a finite score)
    w = np.ones(len(y))
    w[::3] = 2
    res_w = select_n_experts(lambda k: MoERegressor(n_experts=k, random_state=0), X, y, [2], criterion="cv",
                             sample_weight=w, n_folds=3, random_state=0)
    assert np.isfinite(res_w.scores[2])
    with pytest.raises(ValueError, match="n_folds must be an integer between 2"):
        select_n_experts(lambda k: MoERegressor(n_experts=k), X, y, [1], criterion="cv", n_folds=1)


# ------------------------------------------- candidates with as many parameters as rows
def _line(n, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, 1))
    return X, 2 * X[:, 0] + 0.3 * rng.normal(size=n)


@pytest.mark.parametrize("criterion", ["bic", "aic", "icl"])
def test_information_criteria_skip_k_with_as_many_parameters_as_rows(criterion):
    # 1 input: K experts have 3K + 2(K - 1) parameters: K=2 has 8, K=3 has 13, K=4 has 18
    X, y = _line(13)
    seen = []
    with pytest.warns(UserWarning, match=rf"{criterion.upper()} skipped K=3 \(13 parameters\), K=4 \(18 parameters\): "
                                         r"at least as many free parameters as the 13 rows"):
        res = select_n_experts(lambda k: MoERegressor(n_experts=k, random_state=0), X, y, [1, 2, 3, 4],
                               criterion=criterion, callback=seen.append)
    assert list(res.scores) == [1, 2] and res.skipped == {3: 13, 4: 18}
    assert seen == [1, 2]  # a K known to be too large is not fitted
    assert res.n_experts in (1, 2)


def test_every_k_skipped_is_an_error_naming_the_rows():
    X, y = _line(8)
    with pytest.raises(ValueError, match=r"ks: every candidate has at least as many free parameters as the data has "
                                         r"rows \(8\).*K=2 \(8 parameters\), K=3 \(13 parameters\).*criterion='heldout'"):
        select_n_experts(lambda k: MoERegressor(n_experts=k), X, y, [2, 3])


def test_no_skip_and_no_warning_when_every_k_is_small_enough(recwarn):
    X, y = _line(60)
    res = select_n_experts(lambda k: MoERegressor(n_experts=k, random_state=0, max_iter=30), X, y, [1, 2])
    assert res.skipped == {} and not [w for w in recwarn if "skipped" in str(w.message)]


def test_count_parameters_leaves_the_estimator_unfitted():
    X, y = _line(30)
    est = MoERegressor(n_experts=3)
    assert est.count_parameters(X, y) == 13
    assert not hasattr(est, "n_features_in_") and not hasattr(est, "model_")


def test_heldout_does_not_skip():
    X, y = _line(13)
    res = select_n_experts(lambda k: MoERegressor(n_experts=k, random_state=0, alpha=1.0, max_iter=20), X, y,
                           [1, 3], criterion="heldout", random_state=0)
    assert set(res.scores) == {1, 3} and res.skipped == {}


# ------------------------------------------------------------- the table and the bootstrap LRT
def test_selection_table_lists_every_criterion(tone):
    X, y = tone
    res = select_n_experts(lambda k: MoERegressor(n_experts=k, random_state=0, compute_se=False), X, y, [1, 2])
    t = res.table
    assert list(t.columns) == ["n_experts", "log_likelihood", "n_parameters", "bic", "aic", "icl",
                               "heldout_log_likelihood", "chosen", "note"]
    est = res.estimator
    row = t[t.n_experts == res.n_experts].iloc[0]
    assert row.bic == pytest.approx(est.bic(X, y)) and row.aic == pytest.approx(est.aic(X, y))
    assert row.icl == pytest.approx(est.icl(X, y)) and row.log_likelihood == pytest.approx(est.log_likelihood_)
    assert row.n_parameters == est.model_.n_parameters() and bool(row.chosen)
    assert t.heldout_log_likelihood.isna().all()
    cv = select_n_experts(lambda k: MoERegressor(n_experts=k, random_state=0, compute_se=False), X, y, [1, 2],
                          criterion="cv", n_folds=3, random_state=0)
    assert cv.table.heldout_log_likelihood.tolist() == [cv.scores[1], cv.scores[2]]
    assert cv.table.bic.notna().all()


def test_selection_table_notes_skipped_k():
    X, y = _two_regimes(n=12)
    with pytest.warns(UserWarning, match="skipped"):
        res = select_n_experts(lambda k: MoERegressor(n_experts=k, random_state=0, compute_se=False), X, y, [1, 4])
    t = res.table
    assert t[t.n_experts == 4].note.iloc[0].startswith("skipped: ") and np.isnan(t[t.n_experts == 4].bic.iloc[0])


def test_bootstrap_lrt_rejects_one_expert_for_two_regimes_and_not_two_for_three():
    X, y = _two_regimes(n=200, seed=1)

    def make(k):
        return MoERegressor(n_experts=k, random_state=0, compute_se=False)

    one = bootstrap_lrt(make, X, y, 1, n_boot=9, random_state=0)
    assert one.statistic > one.null_statistics.max() and one.p_value == pytest.approx(0.1)
    assert one.null.n_experts_ == 1 and one.alternative.n_experts_ == 2
    two = bootstrap_lrt(make, X, y, 2, n_boot=9, random_state=0)
    assert two.p_value > 0.1 and two.null_statistics.shape == (9,)
    with pytest.raises(ValueError, match="n_boot must be an integer >= 2"):
        bootstrap_lrt(make, X, y, 1, n_boot=1)
    with pytest.raises(ValueError, match="n_experts must be an integer"):
        bootstrap_lrt(make, X, y, 0)
