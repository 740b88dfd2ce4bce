"""Inverse-problem generators and their documented branches (moekit.datasets), by property."""

import math

import numpy as np
import pytest

from moekit.datasets import (
    inverse_sine_branches,
    make_inverse_sine,
    make_kinematic_tracking,
    make_nlink_arm,
    make_robot_arm,
    nlink_arm_forward,
    nlink_arm_inverse,
    robot_arm_inverse,
)


def test_inverse_sine_branches_solve_the_forward_map_and_count():
    x = np.linspace(-0.05, 1.05, 1101)
    br = inverse_sine_branches(x)
    ok = ~np.isnan(br)
    f = br + 0.3 * np.sin(2 * math.pi * br)
    np.testing.assert_allclose(f[ok], np.broadcast_to(x[:, None], br.shape)[ok], atol=1e-12)
    n = ok.sum(1)
    assert (n[(x > 0.408) & (x < 0.592)] == 3).all()
    assert (n[((x >= 0) & (x < 0.407)) | ((x > 0.593) & (x <= 1))] == 1).all()
    assert (n[(x < 0) | (x > 1)] == 0).all()
    assert (np.diff(br[n == 3], axis=1) > 0).all()  # sorted


def test_inverse_sine_data_lies_near_a_branch():
    X, t = make_inverse_sine(500, noise=0.0, random_state=0)
    br = inverse_sine_branches(X)
    assert np.nanmin(np.abs(br - t[:, None]), axis=1).max() < 1e-9


def test_robot_arm_inverse_contains_the_truth_and_reaches_x():
    X, y, fwd = make_robot_arm(2000, random_state=1)
    sols = robot_arm_inverse(X)
    ok = ~np.isnan(sols[..., 0])
    assert ok.any(1).all()
    np.testing.assert_allclose(fwd(sols[ok]), np.repeat(X, ok.sum(1), axis=0), atol=1e-12)
    assert np.nanmin(np.abs(sols - y[:, None, :]).max(-1), axis=1).max() < 1e-9
    # inside the sampling domain; the two branches are mirror images (t2 about pi)
    assert (sols[ok][:, 0] >= 0.3).all() and (sols[ok][:, 0] <= 1.2).all()
    two = ok.all(1)
    np.testing.assert_allclose(sols[two, 0, 1] + sols[two, 1, 1], 2 * math.pi, atol=1e-12)
    assert 0.5 < two.mean() < 0.95  # both branches for most, one near the side edges


def test_robot_arm_inverse_outside_the_workspace_is_empty():
    far = np.array([[2.0, 0.0], [0.0, 0.0]])
    assert np.isnan(robot_arm_inverse(far)).all()
    with pytest.raises(ValueError, match="shape"):
        robot_arm_inverse(np.zeros((3, 3)))


@pytest.mark.parametrize("n_links", [3, 4])
def test_nlink_arm_branches(n_links):
    X, y, fwd = make_nlink_arm(400, n_links=n_links, random_state=0)
    np.testing.assert_allclose(fwd(y), X, atol=1e-12)
    br = nlink_arm_inverse(X, n_links=n_links)
    assert br.shape == (400, 2 * (n_links - 1), 3)
    ok = ~np.isnan(br[..., 0])
    np.testing.assert_allclose(fwd(br[ok]), np.repeat(X, ok.sum(1), axis=0), atol=1e-9)
    assert np.nanmin(np.abs(br - y[:, None, :]).max(-1), axis=1).max() < 1e-8
    r = np.linalg.norm(X, axis=1)
    if n_links == 3:  # documented: four branches inside radius 1/3, two outside
        assert (ok.sum(1)[r < 1 / 3 - 1e-6] == 4).all()
        assert (ok.sum(1)[r > 1 / 3 + 1e-6] == 2).all()
    assert ok.sum(1).max() > 2


def test_nlink_arm_bad_input():
    with pytest.raises(ValueError, match="n_links"):
        make_nlink_arm(10, n_links=1)
    with pytest.raises(ValueError, match="kappa_max"):
        make_nlink_arm(10, kappa_max=4.0)
    with pytest.raises(ValueError, match="shape"):
        nlink_arm_forward(np.zeros((2, 2)))


@pytest.mark.parametrize("n_limbs", [1, 2])
def test_kinematic_tracking_branches_projection_and_limits(n_limbs):
    d = make_kinematic_tracking(n_sequences=3, n_frames=120, n_limbs=n_limbs, random_state=0)
    J = 2 * n_limbs
    assert d.X.shape == (3, 120, 2 * J) and d.y.shape == (3, 120, J) and d.poses.shape == (3, 120, J, 3)
    assert d.branches.shape == (3, 120, 4**n_limbs, J)
    np.testing.assert_allclose(d.forward(d.poses), d.X)
    np.testing.assert_allclose(d.to_poses(d.X, d.y), d.poses)
    # the truth is one of the branches; every branch keeps the segment lengths
    diff = np.abs(d.branches - d.y[:, :, None, :]).max(-1)
    assert np.nanmin(diff, axis=2).max() < 1e-12
    ok = ~np.isnan(d.branches[..., 0])
    assert (ok.sum(-1) == d.n_branches).all() and (d.n_branches >= 1).all()
    for b in range(d.branches.shape[2]):
        sel = ok[..., b]
        p = d.to_poses(d.X[sel], d.branches[..., b, :][sel])  # (m, J, 3)
        roots = np.repeat(d.limb_roots, 2, axis=0)
        prev = np.where((np.arange(J) % 2 == 0)[:, None], roots, np.roll(p, 1, axis=1))
        seg = np.linalg.norm(p - prev, axis=-1)
        lens = np.array([[0.30, 0.27], [0.30, 0.27], [0.45, 0.45], [0.45, 0.45]])[:n_limbs].reshape(-1)
        np.testing.assert_allclose(seg, np.broadcast_to(lens, seg.shape), atol=1e-12)
    # ambiguous and unambiguous frames both occur
    assert (d.n_branches == 1).any() and (d.n_branches > 1).any()


def test_kinematic_tracking_motion_is_smooth_and_seeded():
    a = make_kinematic_tracking(2, 300, random_state=5)
    b = make_kinematic_tracking(2, 300, random_state=5)
    np.testing.assert_array_equal(a.X, b.X)
    step = np.abs(np.diff(a.poses, axis=1)).max()
    r = make_kinematic_tracking(2, 300, motion="random", random_state=5)
    assert step < 0.1 < np.abs(np.diff(r.poses, axis=1)).max()
    noisy = make_kinematic_tracking(2, 300, obs_noise=0.01, random_state=5)
    assert 0.005 < np.std(noisy.X - a.X) < 0.02


@pytest.mark.parametrize(
    "kwargs, match",
    [({"n_limbs": 5}, "n_limbs"), ({"motion": "walk"}, "motion"), ({"obs_noise": -1.0}, "obs_noise"),
     ({"n_frames": 0}, "n_frames")],
)
def test_kinematic_tracking_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_kinematic_tracking(**kwargs)
