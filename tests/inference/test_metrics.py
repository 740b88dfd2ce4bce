"""Metrics for conditional densities and inverse problems (moekit.inference.metrics), by property."""

import importlib
import math
import sys

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import Normal

from moekit import MixtureDistribution
from moekit.datasets import make_robot_arm, robot_arm_inverse
from moekit.distributions import StudentT
from moekit.inference import (
    best_of_m_error,
    crps,
    forward_consistency_error,
    interval_coverage,
    mode_recall,
    negative_log_likelihood,
)

D = torch.float64


def test_negative_log_likelihood_matches_scipy():
    loc, sc = np.array([0.0, 1.0, -2.0]), np.array([1.0, 0.5, 3.0])
    y = np.array([0.3, 1.0, 4.0])
    dist = Normal(torch.tensor(loc, dtype=D), torch.tensor(sc, dtype=D))
    expect = -stats.norm(loc, sc).logpdf(y)
    assert negative_log_likelihood(dist, y) == pytest.approx(expect.mean(), rel=1e-12)
    np.testing.assert_allclose(negative_log_likelihood(dist, y, reduction="none"), expect, rtol=1e-12)
    with pytest.raises(ValueError, match="reduction"):
        negative_log_likelihood(dist, y, reduction="sum")


def test_best_of_m_error():
    modes = np.array([[[0.0, 0.0], [3.0, 4.0]], [[1.0, 1.0], [np.nan, np.nan]]])
    truth = np.array([[3.0, 4.0], [1.0, 2.0]])
    np.testing.assert_allclose(best_of_m_error(modes, truth, reduction="none"), [0.0, 1.0])
    assert best_of_m_error(modes, truth) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="y_true"):
        best_of_m_error(modes, truth[:1])


def test_mode_recall_is_one_to_one():
    truth = np.array([[0.0, 1.0]])
    # one mode halfway between two close branches matches only one of them
    assert mode_recall(np.array([[0.5]]), truth, tol=0.6) == 0.5
    # two modes near the same branch still recover only that one
    assert mode_recall(np.array([[0.0, 0.01]]), truth, tol=0.1) == 0.5
    # the optimal matching is found where the greedy one would fail
    modes = np.array([[0.45, 1.4]])
    assert mode_recall(modes, np.array([[0.0, 0.9]]), tol=0.5) == 1.0
    # rows with different numbers of branches; the mean is over all true branches
    truth = np.array([[0.0, 1.0, np.nan], [5.0, np.nan, np.nan]])
    modes = np.array([[0.0, np.nan], [5.0, 1.0]])
    assert mode_recall(modes, truth, tol=0.1) == pytest.approx(2 / 3)
    np.testing.assert_allclose(mode_recall(modes, truth, tol=0.1, reduction="none"), [0.5, 1.0])
    with pytest.raises(ValueError, match="tol"):
        mode_recall(modes, truth, tol=0)


def test_forward_consistency_is_zero_for_exact_inverses_and_large_for_the_mean():
    X, y, fwd = make_robot_arm(300, random_state=0)
    sols = robot_arm_inverse(X)
    # the true configuration first: zero error; every valid branch: zero too
    assert forward_consistency_error(fwd, y[:, None, :], X) < 1e-12
    assert forward_consistency_error(fwd, sols, X, which="all") < 1e-12
    # averaging the two branches gives a configuration that misses the hand
    two = ~np.isnan(sols[..., 0]).any(1)
    avg = np.nanmean(sols[two], axis=1)
    assert forward_consistency_error(fwd, avg[:, None, :], X[two]) > 0.01
    per_row = forward_consistency_error(fwd, avg[:, None, :], X[two], reduction="none")
    assert per_row.shape == (two.sum(),)
    rms = forward_consistency_error(fwd, avg[:, None, :], X[two])
    assert rms == pytest.approx(np.sqrt(np.mean(per_row**2)))
    w = np.where(np.isnan(sols[..., 0]), np.nan, 0.5)
    assert forward_consistency_error(fwd, sols, X, which="weighted", weights=w) < 1e-12
    with pytest.raises(ValueError, match="weights"):
        forward_consistency_error(fwd, sols, X, which="weighted")


def test_interval_coverage():
    iv = np.array([[[0.0, 1.0], [2.0, 3.0]], [[0.0, 1.0], [np.nan, np.nan]]])
    assert interval_coverage(np.array([2.5, 2.5]), iv) == 0.5
    assert interval_coverage(np.array([0.5, 0.5]), iv[:, 0]) == 1.0
    with pytest.raises(ValueError, match="1-D"):
        interval_coverage(np.zeros((2, 1)), iv)


def _mix(mu, sd, w):
    return MixtureDistribution(torch.tensor(w, dtype=D).log(), Normal(torch.tensor(mu, dtype=D), torch.tensor(sd, dtype=D)))


def test_crps_of_a_gaussian_matches_the_closed_form():
    mu, sd, y = 0.5, 2.0, np.array([0.5, 3.0, -4.0])
    z = (y - mu) / sd
    expect = sd * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi))
    m = _mix([[mu]] * 3, [[sd]] * 3, [[1.0]] * 3)
    np.testing.assert_allclose(crps(m, y, reduction="none"), expect, rtol=1e-10)


def test_crps_closed_form_equals_the_integral_and_the_sample_estimate():
    mu = [[-2.0, 1.0, 4.0], [0.0, 0.1, 0.2]]
    sd = [[0.5, 1.0, 2.0], [1.0, 1.0, 3.0]]
    w = [[0.2, 0.5, 0.3], [0.3, 0.3, 0.4]]
    y = np.array([0.7, -1.5])
    m = _mix(mu, sd, w)
    closed = crps(m, y, reduction="none")
    # numerical integral: the same mixture seen as a list of components (no closed form used)
    listed = MixtureDistribution(m.log_weights, [Normal(m.components.loc[:, k], m.components.scale[:, k]) for k in range(3)])
    np.testing.assert_allclose(crps(listed, y, reduction="none"), closed, rtol=1e-5)
    # E|Y - y| - E|Y - Y'| / 2 by simulation
    with torch.random.fork_rng():
        torch.manual_seed(0)
        s1 = m.sample((200_000,)).numpy()
        s2 = m.sample((200_000,)).numpy()
    mc = np.abs(s1 - y).mean(0) - 0.5 * np.abs(s1 - s2).mean(0)
    np.testing.assert_allclose(closed, mc, rtol=0.02)


def test_crps_for_student_t_and_proper_scoring():
    m = MixtureDistribution(torch.zeros(1, 1, dtype=D), StudentT(torch.full((1, 1), 4.0, dtype=D),
                                                                 torch.zeros(1, 1, dtype=D), torch.ones(1, 1, dtype=D)))
    v = crps(m, [0.0])
    assert 0 < v < crps(m, [3.0])
    # a forecast centred on the truth scores better than a shifted one
    assert crps(_mix([[0.0]], [[1.0]], [[1.0]]), [0.0]) < crps(_mix([[1.0]], [[1.0]], [[1.0]]), [0.0])
    with pytest.raises(ValueError, match="scalar"):
        crps(m, np.zeros((1, 2)))


def test_the_old_import_path_works_with_a_deprecation_warning():
    sys.modules.pop("moekit.metrics", None)
    with pytest.warns(DeprecationWarning, match="moekit.inference"):
        old = importlib.import_module("moekit.metrics")
    assert old.crps is crps and old.mode_recall is mode_recall
