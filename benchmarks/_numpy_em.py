"""A straightforward vectorised NumPy EM for a softmax-gated mixture of linear-Gaussian experts.

This is the baseline of ``benchmarks/em_scaling.py``.  It runs the SAME
algorithm as ``moekit.fit_em`` on ``MixtureOfExperts(SoftmaxGate(D, K),
LinearGaussianExpert(D, n_experts=K))`` with scalar y:

* E-step in log space: ``j = log_softmax(X1 W^T) + log N(y | X1 B, s^2)``,
  responsibilities ``exp(j - logsumexp(j))``, log-likelihood ``sum(logsumexp(j))``.
* Expert M-step: per-expert weighted least squares from the sufficient
  statistics ``sum r``, ``X1^T R X1``, ``X1^T R y``, ``y^T R y``; the variance
  is the weighted residual variance, floored at ``var_floor``.
* Gate M-step: up to ``max_m_steps`` (moekit's default: 5) Newton steps on the
  weighted multinomial-logit objective ``sum_ik r_ik log g_k(x_i)`` with the
  exact Hessian, the last expert's row as the reference, and moekit's
  step-halving rule (accept a step when ``f_new >= f_old - 1e-12 (1 + |f_old|)``,
  otherwise halve, at most 30 times; stop early when the gain is
  ``<= 1e-10 (1 + |f_old|)``).

Everything is float64 and uses NumPy's BLAS (matmul); there are no Python
loops over rows.  Where it is free to, the baseline does what a competent
NumPy user would do: the objective at a trial point reuses nothing it does not
need, and the gradient / Hessian are only formed when another Newton step is
actually going to be taken.

Parameters are plain arrays:

* ``W`` (K, p) gate coefficients (p = D + 1, column 0 the intercept);
* ``B`` (K, p) expert regression coefficients;
* ``s`` (K,) expert noise standard deviations.
"""

from __future__ import annotations

import math
import time

import numpy as np

__all__ = [
    "make_data",
    "initial_params",
    "e_step",
    "m_step",
    "fit_em",
    "gate_m_step",
    "NumpyEM",
]

LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------- helpers
def add_intercept(x: np.ndarray) -> np.ndarray:
    return np.hstack([np.ones((x.shape[0], 1)), x])


def log_softmax(a: np.ndarray) -> np.ndarray:
    m = a.max(axis=1, keepdims=True)
    a = a - m
    return a - np.log(np.exp(a).sum(axis=1, keepdims=True))


def weighted_grams(X1: np.ndarray, R: np.ndarray) -> np.ndarray:
    """``X1^T diag(R[:, k]) X1`` for every k: (K, p, p).

    One GEMM ``(R (x) X1)^T X1`` of shape (K p, n) @ (n, p); for p <= 2 the K
    small products are faster, so that is what is used there.
    """
    n, p = X1.shape
    k = R.shape[1]
    if p <= 2:
        return np.stack([X1.T @ (X1 * R[:, j, None]) for j in range(k)])
    rx = (R[:, :, None] * X1[:, None, :]).reshape(n, k * p)
    return (rx.T @ X1).reshape(k, p, p)


# -------------------------------------------------------------------- data
def make_data(n: int, d: int, k: int, seed: int = 0):
    """Synthetic data from a known K-expert softmax-gated linear-Gaussian model.

    x ~ N(0, I_d); z | x ~ Categorical(softmax(W [1, x])); y | x, z ~ N(B_z [1, x], s_z^2).

    Returns ``x`` (n, d), ``y`` (n,), and the true ``(W, B, s)``.
    """
    rng = np.random.default_rng(seed)
    p = d + 1
    W = np.zeros((k, p))
    W[:, 0] = rng.normal(0.0, 0.5, size=k)
    W[:, 1:] = rng.normal(0.0, 2.0 / math.sqrt(d), size=(k, d))
    W -= W[-1]
    B = np.empty((k, p))
    B[:, 0] = rng.normal(0.0, 2.0, size=k)
    B[:, 1:] = rng.normal(0.0, 1.0, size=(k, d))
    s = rng.uniform(0.2, 0.5, size=k)
    x = rng.standard_normal((n, d))
    X1 = add_intercept(x)
    g = np.exp(log_softmax(X1 @ W.T))
    u = rng.random(n)
    z = (u[:, None] > np.cumsum(g, axis=1)).sum(1).clip(0, k - 1)
    mu = np.einsum("np,np->n", X1, B[z])
    y = mu + s[z] * rng.standard_normal(n)
    return x, y, (W, B, s)


def initial_params(x: np.ndarray, y: np.ndarray, k: int, seed: int = 0, n_kmeans: int = 20000):
    """A common start: k-means on standardised [x, y], softened labels, one M-step.

    k-means (scikit-learn, k-means++ seeding) is fitted on at most ``n_kmeans``
    rows and then labels every row.  Responsibilities are ``0.8 * onehot + 0.2 / K``
    (softened so that the gate's first Newton fit is not on separable labels),
    then one M-step of this module (gate from W = 0) gives ``(W, B, s)``.
    """
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    z = np.hstack([x, y[:, None]])
    z = (z - z.mean(0)) / z.std(0)
    sub = z if len(z) <= n_kmeans else z[rng.choice(len(z), n_kmeans, replace=False)]
    km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(sub)
    labels = km.predict(z)
    r = np.full((len(y), k), 0.2 / k)
    r[np.arange(len(y)), labels] += 0.8
    X1 = add_intercept(x)
    W0 = np.zeros((k, X1.shape[1]))
    return m_step(X1, y, r, W0)


# ------------------------------------------------------------------ E-step
def e_step(X1: np.ndarray, y: np.ndarray, W: np.ndarray, B: np.ndarray, s: np.ndarray):
    """Responsibilities (n, K) and the total log-likelihood."""
    logg = log_softmax(X1 @ W.T)
    mu = X1 @ B.T  # (n, K)
    logp = -0.5 * ((y[:, None] - mu) / s) ** 2 - np.log(s) - 0.5 * LOG_2PI
    j = logg + logp
    m = j.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(j - m).sum(axis=1, keepdims=True))
    r = np.exp(j - lse)
    return r, float(lse.sum())


# ------------------------------------------------------------------ M-step
def expert_m_step(X1, y, R, var_floor: float = 1e-6):
    """Weighted least squares and residual variance per expert: B (K, p), s (K,)."""
    sw = R.sum(0)  # (K,)
    xwx = weighted_grams(X1, R)  # (K, p, p)
    ry = R * y[:, None]
    xwy = (X1.T @ ry).T  # (K, p)
    ywy = y @ ry  # (K,)
    beta = np.linalg.solve(xwx, xwy[:, :, None])[:, :, 0]
    var = (ywy - (xwy * beta).sum(1)) / sw
    return beta, np.sqrt(np.maximum(var, var_floor))


def _gate_objective(X1, T, W):
    logg = log_softmax(X1 @ W.T)
    return float((T * logg).sum()), logg


def _gate_grad_info(X1, T, tsum, logg):
    """Gradient (K-1, p) and information (= -Hessian) ((K-1) p, (K-1) p), reference row K-1."""
    n, p = X1.shape
    km = T.shape[1] - 1
    g = np.exp(logg[:, :km])
    sg = tsum[:, None] * g
    grad = (T[:, :km] - sg).T @ X1
    z = (sg[:, :, None] * X1[:, None, :]).reshape(n, km * p)
    gx = (g[:, :, None] * X1[:, None, :]).reshape(n, km * p)
    info = -(z.T @ gx)
    blocks = (z.T @ X1).reshape(km, p, p)  # X1^T diag(s g_k) X1
    for j in range(km):
        info[j * p : (j + 1) * p, j * p : (j + 1) * p] += blocks[j]
    return grad, info


def gate_m_step(X1, T, W, max_steps: int = 5, tol: float = 1e-10, max_halvings: int = 30):
    """Newton-Raphson with step-halving on ``sum T log softmax(X1 W^T)``; returns (W, accepted)."""
    k, p = W.shape
    if k == 1:
        return W, 0
    tsum = T.sum(1)
    f_old, logg = _gate_objective(X1, T, W)
    accepted = 0
    for _ in range(max_steps):
        grad, info = _gate_grad_info(X1, T, tsum, logg)
        new = W - W[k - 1]  # reference row at zero (softmax-invariant)
        new[: k - 1] += np.linalg.solve(info, grad.reshape(-1)).reshape(k - 1, p)
        delta = new - W
        if not np.isfinite(delta).all():
            break
        t = 1.0
        ok = False
        for _h in range(max_halvings):
            cand = W + t * delta if t != 1.0 else new
            f_new, logg_new = _gate_objective(X1, T, cand)
            if f_new == f_new and f_new >= f_old - 1e-12 * (1.0 + abs(f_old)):
                ok = True
                break
            t *= 0.5
        if not ok:
            break
        W, logg = cand, logg_new
        accepted += 1
        converged = f_new - f_old <= tol * (1.0 + abs(f_old))
        f_old = f_new
        if converged:
            break
    return W, accepted


def m_step(X1, y, R, W, max_m_steps: int = 5, var_floor: float = 1e-6):
    """Gate (Newton) and expert (least squares) M-steps: returns (W, B, s)."""
    W, _ = gate_m_step(X1, R, W, max_steps=max_m_steps)
    B, s = expert_m_step(X1, y, R, var_floor)
    return W, B, s


# --------------------------------------------------------------------- EM
class NumpyEM:
    """EM state for the interleaved driver: ``step()`` is one E-step followed by one M-step.

    The same order as ``moekit.MixtureOfExperts.em_step``; ``loglik()`` is the
    mean log-likelihood at the current parameters (an extra E-step).
    """

    def __init__(self, x, y, W, B, s, max_m_steps: int = 5, var_floor: float = 1e-6):
        self.X1 = add_intercept(x)
        self.y = y
        self.W, self.B, self.s = W.copy(), B.copy(), s.copy()
        self.max_m_steps = max_m_steps
        self.var_floor = var_floor
        self.newton_steps: list[int] = []

    def step(self) -> float:
        R, ll = e_step(self.X1, self.y, self.W, self.B, self.s)
        self.W, acc = gate_m_step(self.X1, R, self.W, max_steps=self.max_m_steps)
        self.B, self.s = expert_m_step(self.X1, self.y, R, self.var_floor)
        self.newton_steps.append(acc)
        return ll

    def loglik(self) -> float:
        return e_step(self.X1, self.y, self.W, self.B, self.s)[1] / len(self.y)


def fit_em(x, y, W, B, s, n_iter: int, max_m_steps: int = 5, var_floor: float = 1e-6):
    """``n_iter`` EM iterations from (W, B, s), the same loop as ``moekit.fit_em(tol=0)``.

    E-step, then ``n_iter`` times (M-step, E-step).  Returns the parameters,
    the history of mean log-likelihoods (length n_iter + 1), the seconds per
    iteration (each iteration = one M-step + the following E-step; the
    initial E-step and the array set-up are excluded) and the mean number of
    accepted gate Newton steps per M-step.
    """
    n = len(y)
    X1 = add_intercept(x)
    W, B, s = W.copy(), B.copy(), s.copy()
    R, ll = e_step(X1, y, W, B, s)
    history = [ll / n]
    newton = 0
    t0 = time.perf_counter()
    for _ in range(n_iter):
        W, acc = gate_m_step(X1, R, W, max_steps=max_m_steps)
        B, s = expert_m_step(X1, y, R, var_floor)
        R, ll = e_step(X1, y, W, B, s)
        history.append(ll / n)
        newton += acc
    sec = (time.perf_counter() - t0) / max(n_iter, 1)
    return (W, B, s), history, sec, newton / max(n_iter, 1)
