"""Synthetic inverse problems whose inverse is multi-valued."""

from __future__ import annotations

import math

import numpy as np

from ._bunch import Bunch

__all__ = [
    "inverse_sine_branches",
    "make_inverse_sine",
    "make_kinematic_tracking",
    "make_nlink_arm",
    "make_robot_arm",
    "nlink_arm_forward",
    "nlink_arm_inverse",
    "robot_arm_forward",
    "robot_arm_inverse",
]


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

    Shapes
    ------
    X (n, 1); y (n,), n = ``n_samples``.

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

    Parameters
    ----------
    angles : array (n, 2)
        Joint angles (t1, t2) per row.
    l1, l2 : float, default=0.8, 0.2
        Link lengths.

    Returns
    -------
    ndarray (n, 2)
        End-effector positions (x1, x2).

    Shapes
    ------
    angles : (n, 2) -> (n, 2).

    Examples
    --------
    >>> robot_arm_forward(np.array([[0.0, 0.0]]))  # second link folded back along x
    array([[0.6, 0. ]])
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

    Parameters
    ----------
    n_samples : int, default=1000
    random_state : int, Generator or None
    l1, l2 : float, default=0.8, 0.2
        Link lengths.

    Returns
    -------
    X : ndarray (n, 2)
        End-effector positions (inputs of the inverse problem).
    y : ndarray (n, 2)
        Joint angles (targets).
    forward : callable
        ``forward(angles (m, 2)) -> positions (m, 2)``, for forward-consistency errors.

    Shapes
    ------
    X (n, 2); y (n, 2), n = ``n_samples``; forward: (m, 2) -> (m, 2).

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


# ------------------------------------------------------------ true branches
def _check_rows(X, name: str, d: int) -> np.ndarray:
    a = np.asarray(X, dtype=float)
    if a.ndim == 1 and d == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[1] != d:
        raise ValueError(f"{name} must have shape (n, {d}), got {a.shape}")
    return a


def inverse_sine_branches(X) -> np.ndarray:
    """Noise-free branches of Bishop's inverse sine: every t in [0, 1] with t + 0.3 sin(2 pi t) = x.

    Parameters
    ----------
    X : array (n,) or (n, 1)

    Returns
    -------
    ndarray (n, 3)
        The solutions in increasing order, NaN padded: three for
        0.4075 < x < 0.5925 (the fold values), one elsewhere in [0, 1], none
        outside [0, 1].

    Shapes
    ------
    X (n,) or (n, 1) -> (n, 3).

    Examples
    --------
    >>> np.round(inverse_sine_branches([0.5, 0.1]), 4)
    array([[0.2096, 0.5   , 0.7904],
           [0.0348,    nan,    nan]])
    """
    x = _check_rows(X, "X", 1)[:, 0]
    f = lambda t: t + 0.3 * np.sin(2 * math.pi * t)
    grid = np.linspace(0.0, 1.0, 2001)
    pos = (f(grid)[None, :] - x[:, None]) >= 0  # (n, G)
    cross = pos[:, :-1] != pos[:, 1:]  # a root in (grid[g], grid[g + 1]]
    rows, seg = np.nonzero(cross)
    lo, hi = grid[seg].copy(), grid[seg + 1].copy()
    lo_pos = pos[rows, seg]
    for _ in range(60):  # vectorised bisection, keeping the sign of f - x at lo
        mid = 0.5 * (lo + hi)
        same = (f(mid) - x[rows] >= 0) == lo_pos
        lo = np.where(same, mid, lo)
        hi = np.where(same, hi, mid)
    roots = 0.5 * (lo + hi)
    # roots at the ends of [0, 1] (x = 0 or x = 1, up to rounding) need no sign change
    near0 = np.zeros(len(x), dtype=bool)
    near1 = np.zeros(len(x), dtype=bool)
    near0[rows[roots < 1e-9]] = True
    near1[rows[roots > 1 - 1e-9]] = True
    at0 = np.flatnonzero((np.abs(f(0.0) - x) < 1e-12) & ~near0)
    at1 = np.flatnonzero((np.abs(f(1.0) - x) < 1e-12) & ~near1)
    rows = np.concatenate([at0, rows, at1])
    roots = np.concatenate([np.zeros(len(at0)), roots, np.ones(len(at1))])
    order = np.lexsort((roots, rows))
    rows, roots = rows[order], roots[order]
    out = np.full((len(x), 3), np.nan)
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
    keep = rank < 3
    out[rows[keep], rank[keep]] = roots[keep]
    return out


def robot_arm_inverse(X, l1: float = 0.8, l2: float = 0.2, theta1_range=(0.3, 1.2),
                      theta2_range=(math.pi / 2, 3 * math.pi / 2)) -> np.ndarray:
    """Every joint configuration of Bishop's arm inside the sampling domain that reaches X.

    The two solutions of the planar two-link arm are mirror images (elbow on
    either side of the line from the shoulder to the hand):
    ``t2 = pi +- arccos((r^2 - l1^2 - l2^2) / (2 l1 l2))`` with ``r = |x|``, and
    ``t1 = atan2(x) - arg(l1 - l2 exp(i t2))``.  A solution counts only when
    both angles lie in the sampling ranges of :func:`make_robot_arm`, so a
    row has two branches inside the workspace, one near its side edges (the
    mirror solution leaves the t1 range) and none outside it.

    Parameters
    ----------
    X : array (n, 2)
        End-effector positions.
    l1, l2 : float, default=0.8, 0.2
        Link lengths.
    theta1_range, theta2_range : (float, float)
        The sampling domain of (t1, t2), by default that of :func:`make_robot_arm`.

    Returns
    -------
    ndarray (n, 2, 2)
        ``[:, b, :]`` is branch b's (t1, t2), the branch with t2 < pi first;
        NaN where a branch is outside the domain.

    Shapes
    ------
    X (n, 2) -> (n, B, 2) with B = 2 branches (NaN padding); the
    (n, B, d_y) layout of the metrics in :mod:`moekit.inference.metrics`.

    Examples
    --------
    >>> X, y, fwd = make_robot_arm(500, random_state=0)
    >>> sols = robot_arm_inverse(X)
    >>> ok = ~np.isnan(sols[..., 0])
    >>> bool(np.allclose(fwd(sols[ok]), np.repeat(X, ok.sum(1), axis=0)))
    True
    >>> (ok.sum(1) >= 1).all(), np.bincount(ok.sum(1))  # one or two branches per row
    (np.True_, array([  0, 131, 369]))
    """
    x = _check_rows(X, "X", 2)
    r2 = (x**2).sum(1)
    c = (l1**2 + l2**2 - r2) / (2 * l1 * l2)  # cos t2
    ok = np.abs(c) <= 1
    base = np.arccos(np.clip(c, -1, 1))  # in [0, pi]
    out = np.full((len(x), 2, 2), np.nan)
    phi = np.arctan2(x[:, 1], x[:, 0])
    for b, t2 in enumerate([base, 2 * math.pi - base]):
        # forward: x = e^{i t1} (l1 - l2 e^{i t2})
        w = l1 - l2 * np.exp(1j * t2)
        t1 = phi - np.angle(w)
        # bring t1 to the branch nearest the domain's centre
        mid1 = 0.5 * (theta1_range[0] + theta1_range[1])
        t1 = t1 + 2 * math.pi * np.round((mid1 - t1) / (2 * math.pi))
        inside = (
            ok & (t1 >= theta1_range[0]) & (t1 <= theta1_range[1]) & (t2 >= theta2_range[0]) & (t2 <= theta2_range[1])
        )
        out[inside, b, 0] = t1[inside]
        out[inside, b, 1] = t2[inside]
    return out


# ----------------------------------------------------- n-link coiling arm
def nlink_arm_forward(y, n_links: int = 3, link_length: float | None = None) -> np.ndarray:
    """Hand position of the planar constant-curvature n-link arm of :func:`make_nlink_arm`.

    ``y = (cos t0, sin t0, kappa)``: base direction t0 and the common joint
    angle kappa (every joint bends by kappa).  The hand is at
    ``L * sum_{j < n} exp(i (t0 + j kappa))``.

    Parameters
    ----------
    y : array (m, 3)
        Configurations ``(cos t0, sin t0, kappa)``.
    n_links : int, default=3
    link_length : float, optional
        Default 1 / n_links.

    Returns
    -------
    ndarray (m, 2)
        Hand positions.

    Shapes
    ------
    y (m, 3) -> (m, 2).

    Examples
    --------
    >>> nlink_arm_forward(np.array([[1.0, 0.0, 0.0]]))  # straight along x, total length 1
    array([[1., 0.]])
    """
    a = np.asarray(y, dtype=float)
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"y must have shape (m, 3) = (cos t0, sin t0, kappa), got {a.shape}")
    ln = 1.0 / n_links if link_length is None else float(link_length)
    t0 = np.arctan2(a[:, 1], a[:, 0])
    j = np.arange(n_links)
    ang = t0[:, None] + j[None, :] * a[:, 2:3]
    return ln * np.column_stack([np.cos(ang).sum(1), np.sin(ang).sum(1)])


def nlink_arm_inverse(X, n_links: int = 3, link_length: float | None = None, kappa_max: float = math.pi) -> np.ndarray:
    """Every configuration ``(cos t0, sin t0, kappa)``, |kappa| < kappa_max, reaching X.

    The reach ``r(kappa) = L |sin(n kappa / 2) / sin(kappa / 2)|`` depends on
    kappa only; every root of ``r(kappa) = |x|`` gives one branch, with the
    base angle that turns the arm onto x.

    Parameters
    ----------
    X : array (n, 2)
        Hand positions.
    n_links : int, default=3
    link_length : float, optional
        Default 1 / n_links.
    kappa_max : float, default=pi
        Largest |kappa| searched.

    Returns
    -------
    ndarray (n, B, 3)
        Branches sorted by kappa, NaN padding; ``B = 2 (n_links - 1)`` columns
        (the most roots that ``r(kappa) = |x|`` has on (-pi, pi)).

    Shapes
    ------
    X (n, 2) -> (n, B, 3), B = 2 (n_links - 1) (4 for the default 3 links).

    Examples
    --------
    >>> X, y, fwd = make_nlink_arm(50, random_state=0)
    >>> br = nlink_arm_inverse(X)
    >>> ok = ~np.isnan(br[..., 0])
    >>> bool(np.allclose(fwd(br[ok]), np.repeat(X, ok.sum(1), axis=0)))
    True
    """
    x = _check_rows(X, "X", 2)
    ln = 1.0 / n_links if link_length is None else float(link_length)
    r = np.sqrt((x**2).sum(1))
    phi = np.arctan2(x[:, 1], x[:, 0])
    grid = np.linspace(-kappa_max, kappa_max, 4001)[1:-1]

    def reach(k):
        k = np.asarray(k, dtype=float)
        s = np.sin(0.5 * k)
        safe = np.abs(s) > 1e-12
        return ln * np.abs(np.where(safe, np.sin(0.5 * n_links * k) / np.where(safe, s, 1.0), n_links))

    rg = reach(grid)
    B = 2 * (n_links - 1)
    out = np.full((len(x), B, 3), np.nan)
    for i in range(len(x)):
        g = rg - r[i]
        idx = np.flatnonzero(np.sign(g[:-1]) * np.sign(g[1:]) <= 0)
        roots = []
        for k in idx:
            lo, hi = grid[k], grid[k + 1]
            glo = g[k]
            if glo == 0:
                roots.append(lo)
                continue
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                gm = reach(mid) - r[i]
                if np.sign(gm) == np.sign(glo):
                    lo, glo = mid, gm
                else:
                    hi = mid
            roots.append(0.5 * (lo + hi))
        roots = sorted(set(np.round(roots, 12)))[:B]
        for b, kap in enumerate(roots):
            j = np.arange(n_links)
            w = np.exp(1j * j * kap).sum()  # hand direction relative to the base link
            t0 = phi[i] - np.angle(w)
            out[i, b] = (math.cos(t0), math.sin(t0), kap)
    return out


def make_nlink_arm(n_samples: int = 1000, n_links: int = 3, link_length: float | None = None,
                   kappa_max: float = math.pi, noise: float = 0.0, random_state=None):
    """Inverse kinematics of a planar n-link *coiling* arm: more than two branches.

    An n-link arm whose joints all bend by the same angle kappa (the
    constant-curvature model of snake and continuum robots) with a freely
    turning base t0: ``t0 ~ U(-pi, pi)``, ``kappa ~ U(-kappa_max, kappa_max)``.
    The hand is at ``L sum_j exp(i (t0 + j kappa))``; its distance from the base,
    ``r(kappa) = L |sin(n kappa/2) / sin(kappa/2)|``, first falls to 0 as the arm
    coils up (kappa = 2 pi / n) and then rises again, so a hand position is
    reached by several coil shapes, each bending left or right.

    The target is ``y = (cos t0, sin t0, kappa)`` (the base angle as a point on
    the circle, so that no branch wraps around at +-pi).  **Number of
    branches** = number of roots of ``r(kappa) = |x|`` in (-kappa_max, kappa_max)
    (see :func:`nlink_arm_inverse`): for the default n = 3, L = 1/3, kappa_max
    = pi, **four** where |x| < 1/3 (two coil shapes, each bent either way) and
    two where 1/3 < |x| < 1; in general up to 2 (n - 1).

    Parameters
    ----------
    n_samples : int
    n_links : int, default=3
    link_length : float, optional
        Default 1 / n_links (a total length of 1).
    kappa_max : float, default=pi
    noise : float, default=0.0
        Standard deviation of Gaussian noise added to the hand positions.
    random_state : int, Generator or None

    Returns
    -------
    X : ndarray (n, 2)
        Hand positions.
    y : ndarray (n, 3)
        ``(cos t0, sin t0, kappa)``.
    forward : callable
        ``forward(y (m, 3)) -> (m, 2)``.

    Shapes
    ------
    X (n, 2); y (n, 3), n = ``n_samples``; forward: (m, 3) -> (m, 2).

    Examples
    --------
    >>> X, y, forward = make_nlink_arm(20, random_state=0)
    >>> bool(np.allclose(forward(y), X)), X.shape, y.shape
    (True, (20, 2), (20, 3))
    """
    if not (isinstance(n_samples, (int, np.integer)) and n_samples >= 1):
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if not (isinstance(n_links, (int, np.integer)) and n_links >= 2):
        raise ValueError(f"n_links must be an int >= 2, got {n_links!r}")
    if not (0 < kappa_max <= math.pi):
        raise ValueError(f"kappa_max must lie in (0, pi], got {kappa_max!r}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    rng = np.random.default_rng(random_state)
    t0 = rng.uniform(-math.pi, math.pi, n_samples)
    kap = rng.uniform(-kappa_max, kappa_max, n_samples)
    y = np.column_stack([np.cos(t0), np.sin(t0), kap])

    def forward(a):
        return nlink_arm_forward(a, n_links, link_length)

    X = forward(y)
    if noise > 0:
        X = X + rng.normal(0.0, noise, X.shape)
    return X, y, forward


# --------------------------------------------------- kinematic tracking
_LIMBS = (
    # name, root joint (x, y, z), side sign, upper length, lower length,
    # swing limits (back, forward), abduction limits, bend limits (lower minus upper swing)
    ("right_arm", (0.20, 1.45, 0.0), +1, 0.30, 0.27, (-0.7, 1.5), (0.0, 0.8), (0.0, 1.6)),
    ("left_arm", (-0.20, 1.45, 0.0), -1, 0.30, 0.27, (-0.7, 1.5), (0.0, 0.8), (0.0, 1.6)),
    ("right_leg", (0.10, 0.90, 0.0), +1, 0.45, 0.45, (-0.5, 1.2), (0.0, 0.3), (-1.6, 0.0)),
    ("left_leg", (-0.10, 0.90, 0.0), -1, 0.45, 0.45, (-0.5, 1.2), (0.0, 0.3), (-1.6, 0.0)),
)


def _limb_joints(root, side, l1, l2, a1, b, a2):
    """Elbow/knee and wrist/ankle positions (..., 2, 3) of one limb from its angles.

    Segment direction for swing a (about the lateral axis: positive = towards
    the camera) and abduction b (in the image plane, outwards):
    ``(side sin b cos a, -cos b cos a, sin a)``; the lower segment shares the
    abduction of the upper one (a hinge).
    """
    r = np.asarray(root, dtype=float)

    def direction(a):
        return np.stack([side * np.sin(b) * np.cos(a), -np.cos(b) * np.cos(a), np.sin(a)], -1)

    elbow = r + l1 * direction(a1)
    wrist = elbow + l2 * direction(a2)
    return np.stack([elbow, wrist], -2)


def _smooth_paths(rng, n_seq, n_frames, n_paths, lo, hi, cycles=(0.5, 2.5), per=100.0):
    """Smooth random curves in [lo, hi]: lo + (hi - lo) (1 + tanh(u)) / 2, u a sum of 3 sinusoids."""
    t = np.arange(n_frames, dtype=float)
    f = rng.uniform(cycles[0], cycles[1], (n_seq, n_paths, 3)) / per
    ph = rng.uniform(0, 2 * math.pi, (n_seq, n_paths, 3))
    amp = rng.normal(0.0, 1.0, (n_seq, n_paths, 3))
    off = rng.normal(0.0, 0.5, (n_seq, n_paths, 1))
    u = (amp[..., None] * np.sin(2 * math.pi * f[..., None] * t + ph[..., None])).sum(2) + off  # (S, P, T)
    lo = np.asarray(lo)[None, :, None]
    hi = np.asarray(hi)[None, :, None]
    return np.moveaxis(lo + (hi - lo) * 0.5 * (1 + np.tanh(u)), 1, 2)  # (S, T, P)


def make_kinematic_tracking(n_sequences: int = 10, n_frames: int = 200, n_limbs: int = 1, motion: str = "smooth",
                            obs_noise: float = 0.0, random_state=None):
    """A jointed 3-D stick figure moving through time, seen in an orthographic 2-D projection.

    The figure has a fixed torso and ``n_limbs`` moving limbs (right arm,
    left arm, right leg, left leg, in that order), each an upper and a lower
    segment: a swing angle ``a1`` about the lateral axis (positive = towards
    the camera), an abduction ``b`` in the image plane and a hinge bend
    (``a2 - a1``, the elbow folding forwards, the knee backwards), all within
    joint limits.  The camera looks along the depth axis z and keeps (x, y)
    of every joint: the depth of every segment is lost, and reflecting a
    segment through the image plane (``a -> -a``, its depth sign flipped)
    gives the same image.

    **Branches of the inverse.**  For every limb the four sign patterns of
    (upper, lower) segment depths are explanations of the image; those within
    the joint limits are the branches (one to four per limb), and a frame's
    branches are all combinations over the limbs (up to ``4 ** n_limbs``).
    A frame is unambiguous when the limbs are swung far forward (the mirrored
    swing would exceed the backward limit) and ambiguous near the image
    plane; ``branches`` lists every explanation of every frame.

    Parameters
    ----------
    n_sequences : int, default=10
    n_frames : int, default=200
    n_limbs : int in 1..4, default=1
    motion : {"smooth", "random"}, default="smooth"
        "smooth": every angle follows a smooth random curve (sums of slow
        sinusoids squashed into the limits); "random": every frame's angles
        are drawn independently and uniformly within the limits (training
        data for a per-frame model that has never seen the test motions).
    obs_noise : float, default=0.0
        Standard deviation of Gaussian noise added to the 2-D observations.
    random_state : int, Generator or None

    Returns
    -------
    Bunch with
        ``X`` (S, T, 2 J): observed (x, y) of the J = 2 n_limbs moving joints;
        ``y`` (S, T, J): their depths z (the unknowns of the inverse problem);
        ``poses`` (S, T, J, 3): the true 3-D joint positions;
        ``angles`` (S, T, n_limbs, 3): (a1, b, a2) per limb;
        ``branches`` (S, T, B, J): the depth vectors of every explanation
        (the truth among them), NaN padding; ``n_branches`` (S, T);
        ``forward``: ``poses (..., J, 3) -> (..., 2 J)``, the projection;
        ``to_poses``: ``(X (..., 2 J), depths (..., J)) -> poses (..., J, 3)``;
        ``joint_names``, ``limb_names``, ``torso`` (fixed 3-D points to draw).

    Shapes
    ------
    S = ``n_sequences``, T = ``n_frames``, J = 2 ``n_limbs`` moving joints,
    B = 4 ** ``n_limbs`` branch columns.  X (S, T, 2 J); y (S, T, J); poses
    (S, T, J, 3); angles (S, T, n_limbs, 3); branches (S, T, B, J);
    n_branches (S, T); limb_roots (n_limbs, 3); torso (7, 3); forward:
    (..., J, 3) -> (..., 2 J); to_poses: (..., 2 J), (..., J) -> (..., J, 3).

    Examples
    --------
    >>> d = make_kinematic_tracking(n_sequences=2, n_frames=50, random_state=0)
    >>> d.X.shape, d.y.shape, d.poses.shape, d.branches.shape
    ((2, 50, 4), (2, 50, 2), (2, 50, 2, 3), (2, 50, 4, 2))
    >>> bool(np.allclose(d.forward(d.poses), d.X))
    True
    >>> bool(np.nanmin(np.abs(d.branches - d.y[:, :, None, :]).max(-1), axis=2).max() < 1e-12)
    True
    """
    if not (isinstance(n_sequences, (int, np.integer)) and n_sequences >= 1):
        raise ValueError(f"n_sequences must be a positive int, got {n_sequences!r}")
    if not (isinstance(n_frames, (int, np.integer)) and n_frames >= 1):
        raise ValueError(f"n_frames must be a positive int, got {n_frames!r}")
    if not (isinstance(n_limbs, (int, np.integer)) and 1 <= n_limbs <= 4):
        raise ValueError(f"n_limbs must be an int from 1 to 4, got {n_limbs!r}")
    if motion not in ("smooth", "random"):
        raise ValueError(f"motion must be 'smooth' or 'random', got {motion!r}")
    if not obs_noise >= 0:
        raise ValueError(f"obs_noise must be >= 0, got {obs_noise!r}")
    rng = np.random.default_rng(random_state)
    limbs = _LIMBS[:n_limbs]
    S, T = int(n_sequences), int(n_frames)
    lo = [v for lb in limbs for v in (lb[5][0], lb[6][0], lb[7][0])]
    hi = [v for lb in limbs for v in (lb[5][1], lb[6][1], lb[7][1])]
    if motion == "smooth":
        raw = _smooth_paths(rng, S, T, 3 * n_limbs, lo, hi)
    else:
        raw = rng.uniform(np.asarray(lo), np.asarray(hi), (S, T, 3 * n_limbs))
    raw = raw.reshape(S, T, n_limbs, 3)
    angles = np.empty_like(raw)
    angles[..., 0] = raw[..., 0]
    angles[..., 1] = raw[..., 1]
    angles[..., 2] = raw[..., 0] + raw[..., 2]  # absolute lower swing = upper swing + bend
    joints = []
    for i, (_, root, side, l1, l2, *_lims) in enumerate(limbs):
        joints.append(_limb_joints(root, side, l1, l2, angles[..., i, 0], angles[..., i, 1], angles[..., i, 2]))
    poses = np.concatenate(joints, axis=-2)  # (S, T, J, 3)
    J = poses.shape[-2]

    def forward(p):
        p = np.asarray(p, dtype=float)
        if p.shape[-2:] != (J, 3):
            raise ValueError(f"poses must have shape (..., {J}, 3), got {p.shape}")
        return p[..., :2].reshape(p.shape[:-2] + (2 * J,))

    def to_poses(obs, depths):
        obs = np.asarray(obs, dtype=float)
        depths = np.asarray(depths, dtype=float)
        xy = obs.reshape(obs.shape[:-1] + (J, 2))
        return np.concatenate([xy, depths[..., None]], -1)

    X = forward(poses)
    if obs_noise > 0:
        X = X + rng.normal(0.0, obs_noise, X.shape)
    y = poses[..., 2].copy()
    # branches: per limb the valid sign patterns, then all combinations over limbs
    per_limb = []
    for i, (_, root, side, l1, l2, swing, _abd, bend) in enumerate(limbs):
        a1, a2 = angles[..., i, 0], angles[..., i, 2]
        opts = []
        for s1 in (1, -1):
            for s2 in (1, -1):
                b1, b2 = s1 * a1, s2 * a2
                ok = (b1 >= swing[0]) & (b1 <= swing[1]) & (b2 - b1 >= bend[0]) & (b2 - b1 <= bend[1])
                ze = root[2] + l1 * np.sin(b1)
                zw = ze + l2 * np.sin(b2)
                z = np.stack([ze, zw], -1)
                opts.append(np.where(ok[..., None], z, np.nan))
        per_limb.append(np.stack(opts, -2))  # (S, T, 4, 2)
    combos = per_limb[0]
    for extra in per_limb[1:]:
        a = combos[..., :, None, :]
        b = extra[..., None, :, :]
        combos = np.concatenate([np.broadcast_to(a, a.shape[:-3] + (a.shape[-3], b.shape[-2], a.shape[-1])),
                                 np.broadcast_to(b, b.shape[:-3] + (a.shape[-3], b.shape[-2], b.shape[-1]))], -1)
        combos = combos.reshape(combos.shape[:-3] + (-1, combos.shape[-1]))
    valid = ~np.isnan(combos).any(-1)
    # drop duplicates (a segment in the image plane has one explanation, not two)
    B = combos.shape[-2]
    for j in range(1, B):
        same = (np.abs(combos[..., :j, :] - combos[..., j : j + 1, :]).max(-1) < 1e-12) & valid[..., :j]
        valid[..., j] &= ~same.any(-1)
    order = np.argsort(~valid, axis=-1, kind="stable")
    combos = np.take_along_axis(combos, order[..., None], axis=-2)
    valid = np.take_along_axis(valid, order, axis=-1)
    combos = np.where(valid[..., None], combos, np.nan)
    n_br = valid.sum(-1)
    bmax = 4**n_limbs
    torso = np.array([[0.0, 0.9, 0.0], [0.0, 1.5, 0.0], [0.2, 1.45, 0.0], [-0.2, 1.45, 0.0],
                      [0.1, 0.9, 0.0], [-0.1, 0.9, 0.0], [0.0, 1.7, 0.0]])
    names = [f"{lb[0]}_{j}" for lb in limbs for j in ("mid", "end")]
    return Bunch(
        X=X, y=y, poses=poses, angles=angles, branches=combos[..., :bmax, :], n_branches=n_br,
        forward=forward, to_poses=to_poses, joint_names=names, limb_names=[lb[0] for lb in limbs],
        limb_roots=np.array([lb[1] for lb in limbs]), torso=torso,
        DESCR="Kinematic tracking: a 3-D stick figure in orthographic projection (moekit.datasets).",
    )
