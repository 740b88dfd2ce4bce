"""Synthetic inverse problems whose inverse is multi-valued."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["make_inverse_sine", "make_robot_arm", "robot_arm_forward"]


def make_inverse_sine(n_samples: int = 1000, noise: float = 0.1, random_state=None):
    """Bishop's inverse sine problem (Bishop 1994; PRML fig. 5.19).

    The forward problem draws ``t ~ U(0, 1)`` and sets
    ``x = t + 0.3 sin(2 pi t) + U(-noise, noise)``; the inverse problem predicts
    ``t`` from ``x``.  The noise-free forward map folds at ``t ~ 0.339`` and
    ``t ~ 0.661``, where ``x ~ 0.593`` and ``x ~ 0.407``: for x between the
    two fold values (0.407 < x < 0.593) the inverse has **three** branches,
    outside it one.

    Parameters
    ----------
    n_samples : int
    noise : float
        Half-width of the uniform noise added to x.
    random_state : int, Generator or None

    Returns
    -------
    X : ndarray (n, 1)
        Inputs of the inverse problem (the forward outputs).
    y : ndarray (n,)
        Targets of the inverse problem (t).

    Examples
    --------
    >>> X, y = make_inverse_sine(5, random_state=0)
    >>> X.shape, y.shape
    ((5, 1), (5,))
    """
    if not (isinstance(n_samples, (int, np.integer)) and n_samples >= 1):
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    rng = np.random.default_rng(random_state)
    t = rng.uniform(0, 1, n_samples)
    x = t + 0.3 * np.sin(2 * math.pi * t) + rng.uniform(-noise, noise, n_samples)
    return x[:, None], t


def robot_arm_forward(angles, l1: float = 0.8, l2: float = 0.2) -> np.ndarray:
    """End-effector position of Bishop's two-link planar arm.

    ``x1 = L1 cos(t1) - L2 cos(t1 + t2)``, ``x2 = L1 sin(t1) - L2 sin(t1 + t2)``.

    Shapes
    ------
    angles : (n, 2) -> (n, 2).
    """
    a = np.asarray(angles, dtype=float)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"angles must have shape (n, 2), got {a.shape}")
    t1, t2 = a[:, 0], a[:, 1]
    return np.column_stack([l1 * np.cos(t1) - l2 * np.cos(t1 + t2), l1 * np.sin(t1) - l2 * np.sin(t1 + t2)])


def make_robot_arm(n_samples: int = 1000, random_state=None, l1: float = 0.8, l2: float = 0.2):
    """Inverse kinematics of a two-link planar arm (Bishop 1994 set-up).

    Joint angles ``t1 ~ U(0.3, 1.2)``, ``t2 ~ U(pi/2, 3 pi/2)``; the inverse
    problem predicts the angles from the end-effector position.  Almost every
    reachable position has **two** solutions (elbow up / elbow down, mirror
    images in t2 about pi); near the workspace boundary the two merge.

    Returns
    -------
    X : ndarray (n, 2)
        End-effector positions (inputs of the inverse problem).
    y : ndarray (n, 2)
        Joint angles (targets).
    forward : callable
        ``forward(angles (m, 2)) -> positions (m, 2)``, for forward-consistency errors.

    Examples
    --------
    >>> X, y, forward = make_robot_arm(10, random_state=0)
    >>> bool(np.allclose(forward(y), X))
    True
    """
    if not (isinstance(n_samples, (int, np.integer)) and n_samples >= 1):
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    rng = np.random.default_rng(random_state)
    angles = np.column_stack([rng.uniform(0.3, 1.2, n_samples), rng.uniform(math.pi / 2, 3 * math.pi / 2, n_samples)])

    def forward(a):
        return robot_arm_forward(a, l1, l2)

    return forward(angles), angles, forward
