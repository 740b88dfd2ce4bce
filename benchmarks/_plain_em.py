"""A plain vectorised NumPy EM for a softmax-gated mixture of K linear-Gaussian experts (scalar y).

The independent baseline of ``benchmarks/em_speed.py``: written from the
model, not from moekit's code or ``benchmarks/_numpy_em.py`` (only the data
generator ``_numpy_em.make_data`` is shared).  It is what a competent NumPy
user would write in a couple of hundred lines:

Model: ``p(y | x) = sum_k g_k(x) N(y | b_k . [1, x], v_k)`` with
``g(x) = softmax(W [1, x])``, W (K, p), p = D + 1, last row of W fixed at 0.

* **Start**: given responsibilities R (n, K), e.g. a hard random partition
  (:func:`random_partition`); rows are normalised to sum to one.  The first
  M-step starts the gate from W = 0.
* **M-step, experts**: weighted least squares per expert (``np.linalg.solve``
  on ``X^T diag(r_k) X``, all K Gram matrices from one GEMM ``(R (x) X)^T X``),
  variance = the weighted mean squared residual, floored at ``1e-6 var(y)``.
* **M-step, gate**: at most 2 exact Newton steps on the weighted multinomial
  log-likelihood ``f(V) = sum_ik r_ik log g_ik`` over the free rows V = W[:K-1].
  Gradient ``(R - G)[:, :K-1]^T X``; information
  ``blockdiag_k(X^T diag(g_k) X) - Z^T Z`` with ``Z = g[:, :K-1] (x) X``
  (n, (K-1)p): one GEMM ``Z^T X`` gives the diagonal blocks, one symmetric
  product ``Z^T Z`` the rest.  Solved by Cholesky; the step is halved while
  the objective decreases (at most 30 halvings).  Newton stops early when the
  gain is below ``1e-10 (1 + |f|)``.
* **E-step** in log space (log-sum-exp).  The gate's log-probabilities at the
  accepted Newton point and the expert means from the expert M-step are reused,
  so an E-step costs no extra pass over X.
* **Stop** when the mean log-likelihood changes by less than ``tol`` (1e-6)
  or after ``max_iter`` (1000) iterations.  ``history[0]`` is the mean
  log-likelihood after the first M-step (from R); each iteration is one M-step
  and one E-step.

Everything is float64.  Row chunks bound the (n, (K-1)p) and (n, Kp)
temporaries (N = 1e6, K = 8, D = 10 would be 640 MB each).

Run ``python benchmarks/_plain_em.py`` for a quick self-test.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.linalg

__all__ = ["PlainEMResult", "fit", "random_partition"]

LOG_2PI = math.log(2.0 * math.pi)
CHUNK_DOUBLES = 4_000_000  # at most this many doubles (32 MB) in one row-chunk temporary


@dataclasses.dataclass
class PlainEMResult:
    """Final parameters and the course of one EM run.

    W (K, p) gate coefficients (last row 0); B (K, p) expert coefficients
    (column 0 the intercept); var (K,) noise variances; history: mean
    log-likelihood after the start and after every iteration.
    """

    W: np.ndarray
    B: np.ndarray
    var: np.ndarray
    history: list
    n_iter: int
    converged: bool
    newton_steps: int

    @property
    def mean_log_likelihood(self) -> float:
        return self.history[-1]


def random_partition(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Hard random start: every row to a uniformly random expert, as one-hot responsibilities (n, K)."""
    labels = np.random.default_rng(seed).integers(0, k, size=n)
    r = np.zeros((n, k))
    r[np.arange(n), labels] = 1.0
    return r


def _chunks(n: int, width: int):
    step = max(256, CHUNK_DOUBLES // max(width, 1))
    for a in range(0, n, step):
        yield slice(a, min(n, a + step))


def _log_softmax_free(X: np.ndarray, V: np.ndarray) -> np.ndarray:
    """log g (n, K) for free rows V (K-1, p); the last logit is 0."""
    n, k = X.shape[0], V.shape[0] + 1
    a = np.zeros((n, k))
    np.matmul(X, V.T, out=a[:, : k - 1])
    m = a.max(axis=1, keepdims=True)
    a -= m
    a -= np.log(np.exp(a).sum(axis=1, keepdims=True))
    return a


def _gate_gradient_information(X: np.ndarray, R: np.ndarray, logg: np.ndarray):
    """Gradient (K-1, p) and information ((K-1)p, (K-1)p) of f at the point where log g = logg."""
    n, p = X.shape
    k1 = R.shape[1] - 1
    m = k1 * p
    g1 = np.exp(logg[:, :k1])
    grad = (R[:, :k1] - g1).T @ X
    zz = np.zeros((m, m))
    diag = np.zeros((m, p))
    for c in _chunks(n, m):
        z = (g1[c, :, None] * X[c, None, :]).reshape(-1, m)  # g1 (x) x
        zz += z.T @ z  # symmetric (syrk)
        diag += z.T @ X[c]  # row block j: X^T diag(g_j) X
    info = -zz
    for j in range(k1):
        info[j * p : (j + 1) * p, j * p : (j + 1) * p] += diag[j * p : (j + 1) * p]
    return grad, info


def _solve_psd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(a, lower=True, check_finite=False), b)
    except np.linalg.LinAlgError:  # singular information (separated gate): least-norm step
        return np.linalg.lstsq(a, b, rcond=None)[0]


def gate_m_step(X, R, V, logg, max_newton: int = 2, max_halvings: int = 30):
    """At most ``max_newton`` Newton steps on f(V) = sum r log g, with step-halving.

    ``logg`` is log g at V.  Returns the new V, log g at the new V (for the
    E-step) and the number of accepted steps.
    """
    f = float(np.sum(R * logg))
    accepted = 0
    for _ in range(max_newton):
        grad, info = _gate_gradient_information(X, R, logg)
        delta = _solve_psd(info, grad.ravel()).reshape(V.shape)
        t, new = 1.0, None
        for _ in range(max_halvings + 1):
            v_try = V + t * delta
            logg_try = _log_softmax_free(X, v_try)
            f_try = float(np.sum(R * logg_try))
            if f_try >= f - 1e-12 * abs(f):  # not lower (up to rounding)
                new = (v_try, logg_try, f_try)
                break
            t *= 0.5
        if new is None:
            break
        gain = new[2] - f
        V, logg, f = new
        accepted += 1
        if gain <= 1e-10 * (1.0 + abs(f)):
            break
    return V, logg, accepted


def expert_m_step(X, y, R, var_floor_abs: float):
    """Weighted least squares per expert and the weighted residual variance.

    Returns B (K, p), var (K,) and the squared residuals (n, K) for the E-step.
    """
    n, p = X.shape
    k = R.shape[1]
    nk = R.sum(axis=0)
    gram = np.zeros((k * p, p))
    for c in _chunks(n, k * p):
        gram += (R[c, :, None] * X[c, None, :]).reshape(-1, k * p).T @ X[c]
    gram = gram.reshape(k, p, p)
    xty = (R * y[:, None]).T @ X  # (K, p)
    try:
        B = np.linalg.solve(gram, xty[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:  # an expert with (almost) no rows
        B = np.stack([np.linalg.lstsq(gram[j], xty[j], rcond=None)[0] for j in range(k)])
    sq = y[:, None] - X @ B.T
    sq *= sq
    var = np.maximum((R * sq).sum(axis=0) / np.maximum(nk, 1e-300), var_floor_abs)
    return B, var, sq


def e_step(logg, sq, var):
    """Responsibilities (n, K) and the mean log-likelihood from log g, squared residuals and variances."""
    j = logg - 0.5 * sq / var - 0.5 * (np.log(var) + LOG_2PI)
    m = j.max(axis=1, keepdims=True)
    j -= m
    e = np.exp(j)
    s = e.sum(axis=1, keepdims=True)
    e /= s
    lse = np.log(s[:, 0]) + m[:, 0]
    return e, float(lse.mean())


def fit(x, y, R, tol: float = 1e-6, max_iter: int = 1000, max_newton: int = 2, var_floor: float = 1e-6):
    """EM from the responsibilities R.

    Parameters
    ----------
    x : ndarray (n, D)
    y : ndarray (n,)
    R : ndarray (n, K)
        Initial responsibilities (non-negative; rows are normalised).
    tol : float
        Stop when the mean log-likelihood changes by less than this.
    max_iter : int
        At most this many iterations (M-step + E-step) after the start.
    max_newton : int
        Newton steps of the gate per M-step, at most.
    var_floor : float
        Variance floor relative to var(y).

    Returns
    -------
    PlainEMResult
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    n = x.shape[0]
    X = np.empty((n, x.shape[1] + 1))
    X[:, 0] = 1.0
    X[:, 1:] = x.reshape(n, -1)
    R = np.asarray(R, dtype=np.float64)
    R = R / R.sum(axis=1, keepdims=True)
    k, p = R.shape[1], X.shape[1]
    floor = var_floor * float(y.var())
    V = np.zeros((k - 1, p))
    logg = np.full((n, k), -math.log(k))
    history: list[float] = []
    newton = 0
    converged = False
    n_iter = 0
    while True:
        V, logg, acc = gate_m_step(X, R, V, logg, max_newton)
        newton += acc
        B, var, sq = expert_m_step(X, y, R, floor)
        R, ll = e_step(logg, sq, var)
        history.append(ll)
        if len(history) > 1:
            n_iter += 1
            if abs(history[-1] - history[-2]) < tol:
                converged = True
                break
        if n_iter >= max_iter:
            break
    W = np.vstack([V, np.zeros((1, p))])
    return PlainEMResult(W=W, B=B, var=var, history=history, n_iter=n_iter, converged=converged, newton_steps=newton)


if __name__ == "__main__":
    import os
    import sys
    import time

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _numpy_em import make_data

    for n, d, k in [(2000, 1, 2), (5000, 3, 4), (20000, 10, 8)]:
        x, y, _ = make_data(n, d, k, seed=1000 * d + 10 * k)
        t0 = time.perf_counter()
        res = fit(x, y, random_partition(n, k, seed=0))
        dt = time.perf_counter() - t0
        h = np.asarray(res.history)
        drops = float(np.min(np.diff(h))) if len(h) > 1 else 0.0
        assert drops >= -1e-10, f"the log-likelihood fell by {-drops:.3g}"
        print(
            f"N={n} D={d} K={k}: {dt:.3f} s, {res.n_iter} iterations, converged {res.converged}, "
            f"mean loglik {res.mean_log_likelihood:.8f}, Newton steps {res.newton_steps}, "
            f"largest fall {min(drops, 0.0):.1e}"
        )
