"""Choosing K (issue 14): BIC on simulated data with a known K, and the log-likelihood scorer on tonedata."""

import warnings

import numpy as np
import pytest
from scipy.special import log_softmax
from sklearn.model_selection import GridSearchCV, KFold

from moekit import MoERegressor
from moekit.datasets import load_tonedata
from moekit.selection import log_likelihood_scorer, select_n_experts


def test_grid_search_with_the_log_likelihood_scorer_does_not_pick_one_expert_on_tonedata():
    d = load_tonedata()
    grid = GridSearchCV(MoERegressor(random_state=0), {"n_experts": [1, 2, 3]}, scoring=log_likelihood_scorer,
                        cv=KFold(5, shuffle=True, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grid.fit(d.data, d.target)
    assert grid.best_params_["n_experts"] != 1
    # R² of the conditional mean (score's default) cannot tell the branches apart and prefers fewer experts
    scores = dict(zip([1, 2, 3], grid.cv_results_["mean_test_score"]))
    assert scores[1] < scores[2]


def _three_experts(n, rng):
    """Three well-separated linear experts under a softmax gate on x."""
    x = rng.uniform(-3, 3, size=(n, 1))
    logits = np.c_[np.zeros(n), 2.0 * x[:, 0] - 2.0, -2.0 * x[:, 0] - 2.0]
    prob = np.exp(log_softmax(logits, axis=1))
    comp = (rng.uniform(size=(n, 1)) > prob.cumsum(axis=1)).sum(axis=1)
    coef = np.array([[0.0, 1.0], [4.0, -1.0], [-4.0, 2.0]])
    y = coef[comp, 0] + coef[comp, 1] * x[:, 0] + 0.5 * rng.normal(size=n)
    return x, y


@pytest.mark.slow
def test_bic_picks_the_true_number_of_experts():
    rng = np.random.default_rng(14)
    picks = []
    for _ in range(50):
        X, y = _three_experts(1000, rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = select_n_experts(lambda k: MoERegressor(n_experts=k, random_state=0), X, y, [1, 2, 3, 4, 5])
        picks.append(res.n_experts)
    print("BIC picks:", np.bincount(picks, minlength=6)[1:])
    assert np.mean(np.array(picks) == 3) >= 0.9, picks
