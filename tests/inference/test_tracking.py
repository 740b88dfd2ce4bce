"""Tracking through time (moekit.inference.tracking): Viterbi over modes and Gaussian-sum filtering, by property."""

import importlib
import sys

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from moekit import MixtureDistribution
from moekit.inference import (
    estimate_transition_cov,
    filter_mixture,
    track_modes,
    viterbi,
)

D = torch.float64


def _ambiguous_sequence(T=60, seed=0):
    """A smooth 1-D path; every frame also has a mirrored candidate; the mirror is heavier on 'ambiguous' frames."""
    rng = np.random.default_rng(seed)
    t = np.arange(T)
    truth = 2.0 + np.sin(t / 8.0)  # stays away from 0, so truth and mirror never meet
    heavy_mirror = np.zeros(T, dtype=bool)
    heavy_mirror[10:14] = heavy_mirror[30:33] = heavy_mirror[45] = True
    w_true = np.where(heavy_mirror, 0.4, 0.8) + 0.02 * rng.random(T)
    return truth, heavy_mirror, w_true


def test_viterbi_picks_the_smooth_path_through_ambiguous_frames():
    truth, heavy_mirror, w_true = _ambiguous_sequence()
    cand = np.stack([truth, -truth], 1)  # (T, 2)
    unary = np.log(np.stack([w_true, 1 - w_true], 1))
    path, idx, score = viterbi(cand, unary, transition_cov=0.01)
    np.testing.assert_allclose(path, truth)
    assert (idx == 0).all()
    # frame by frame, the heaviest candidate is wrong exactly on the ambiguous frames
    per_frame = np.argmax(unary, 1)
    assert (per_frame[heavy_mirror] == 1).all() and (per_frame[~heavy_mirror] == 0).all()
    # the score is the log-probability of the path
    steps = np.diff(truth)
    expect = unary[:, 0].sum() + (-0.5 * steps**2 / 0.01 - 0.5 * np.log(2 * np.pi * 0.01)).sum()
    assert score == pytest.approx(expect, rel=1e-12)


def test_viterbi_padding_vector_candidates_and_order_two():
    T = 40
    t = np.arange(T, dtype=float)
    # two straight lines crossing at t = 20: a first-order model cannot tell whether they cross or bounce;
    # a constant-velocity model follows the straight line through the crossing
    a = np.stack([t * 0.1 - 2.0, np.zeros(T)], 1)
    b = np.stack([2.0 - t * 0.1, np.zeros(T)], 1)
    cand = np.stack([a, b, np.full((T, 2), np.nan)], 1)  # (T, 3, 2) with a padding column
    unary = np.log(np.stack([np.full(T, 0.5), np.full(T, 0.5), np.full(T, np.nan)], 1))
    unary[:3] = np.log([0.9, 0.1, np.nan])  # the start says: line a
    path, idx, _ = viterbi(cand, unary, transition_cov=np.eye(2) * 1e-4, order=2)
    np.testing.assert_allclose(path, a)
    assert set(idx.tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="no valid candidate"):
        viterbi(cand[:, 2:], unary[:, 2:], 1.0)
    with pytest.raises(ValueError, match="order"):
        viterbi(cand, unary, 1.0, order=3)
    with pytest.raises(ValueError, match="positive definite"):
        viterbi(cand, unary, -np.eye(2))


def _frames(truth, w_true, sd=0.05):
    T = len(truth)
    mu = torch.tensor(np.stack([truth, -truth], 1), dtype=D)
    w = torch.tensor(np.stack([w_true, 1 - w_true], 1), dtype=D)
    return MixtureDistribution(w.log(), Normal(mu, sd * torch.ones(T, 2, dtype=D)))


def test_track_modes_and_filter_resolve_ambiguous_frames():
    truth, heavy_mirror, w_true = _ambiguous_sequence()
    frames = _frames(truth, w_true)
    res = track_modes(frames, transition_cov=0.01)
    path, _ = res  # unpacks as (path, index)
    np.testing.assert_allclose(path, truth, atol=1e-6)
    top = res.modes[:, 0]
    assert np.abs(top - truth)[heavy_mirror].min() > 1.0  # per-frame top mode is wrong there
    filt = filter_mixture(frames, transition_cov=0.01, max_hypotheses=4)
    assert np.abs(filt.mean_path - truth).max() < 0.05  # the past resolves them too
    assert filt.means.shape == (60, 4) and filt.weights.shape == (60, 4)
    np.testing.assert_allclose(filt.weights.sum(1), 1.0, atol=1e-12)
    dist = filt.distribution
    assert dist.batch_shape == (60,) and dist.event_shape == ()
    np.testing.assert_allclose(dist.mean.numpy(), (filt.weights * np.nan_to_num(filt.means)).sum(1), atol=1e-10)


def test_filter_with_one_component_is_the_kalman_filter():
    rng = np.random.default_rng(0)
    T, q, r = 50, 0.04, 0.25
    obs = np.cumsum(rng.normal(0, np.sqrt(q), T)) + rng.normal(0, np.sqrt(r), T)
    frames = MixtureDistribution(torch.zeros(T, 1, dtype=D), Normal(torch.tensor(obs[:, None], dtype=D),
                                                                   np.sqrt(r) * torch.ones(T, 1, dtype=D)))
    res = filter_mixture(frames, transition_cov=q, reset_prob=0.0)
    m, P = obs[0], r
    for t in range(1, T):
        P = P + q
        k = P / (P + r)
        m, P = m + k * (obs[t] - m), (1 - k) * P
        assert res.mean_path[t] == pytest.approx(m, rel=1e-10)
        assert res.covariances[t, 0] == pytest.approx(P, rel=1e-10)


def test_filter_vector_pose_order_two_and_estimator_input():
    from moekit import MoERegressor

    rng = np.random.default_rng(0)
    T = 30
    t = np.arange(T)
    pose = np.stack([np.sin(t / 5), np.cos(t / 5)], 1)
    comps = MultivariateNormal(torch.tensor(np.stack([pose, -pose], 1), dtype=D),
                               covariance_matrix=0.01 * torch.eye(2, dtype=D).expand(T, 2, 2, 2))
    frames = MixtureDistribution(torch.full((T, 2), 0.5, dtype=D).log(), comps)
    frames.log_weights[0] = torch.tensor([0.9, 0.1], dtype=D).log()  # the first frame decides
    q = estimate_transition_cov(pose, order=2)
    res = filter_mixture(frames, transition_cov=q, order=2)
    assert res.means.shape == (T, 10, 2)
    assert np.abs(res.mean_path - pose)[5:].max() < 0.15  # the right branch (the other is 2 away)
    # an estimator and X work as the frames
    X = rng.normal(size=(100, 1))
    est = MoERegressor(n_experts=1).fit(X, np.column_stack([X[:, 0], 2 * X[:, 0]]))
    out = track_modes(est, transition_cov=np.eye(2), X=X[:10])
    assert out.path.shape == (10, 2)
    with pytest.raises(ValueError, match="X"):
        track_modes(est, transition_cov=1.0)
    with pytest.raises(TypeError, match="MixtureDistribution"):
        filter_mixture(np.zeros(3), transition_cov=1.0)


def test_estimate_transition_cov():
    rng = np.random.default_rng(1)
    steps = rng.multivariate_normal([0, 0], [[0.04, 0.01], [0.01, 0.09]], size=(20, 500))
    seqs = np.cumsum(steps, axis=1)
    q = estimate_transition_cov(seqs)
    np.testing.assert_allclose(q, [[0.04, 0.01], [0.01, 0.09]], atol=0.005)
    q2 = estimate_transition_cov([s for s in seqs], order=2)
    np.testing.assert_allclose(q2, 2 * q, rtol=0.1)  # second differences of a random walk: twice the variance
    with pytest.raises(ValueError, match="too short"):
        estimate_transition_cov(np.zeros((1, 2)))


def test_the_old_import_path_works_with_a_deprecation_warning():
    sys.modules.pop("moekit.tracking", None)
    with pytest.warns(DeprecationWarning, match="moekit.inference"):
        old = importlib.import_module("moekit.tracking")
    assert old.filter_mixture is filter_mixture and old.track_modes is track_modes
