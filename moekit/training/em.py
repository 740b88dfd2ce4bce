"""Expectation-maximisation for mixtures of experts."""

from __future__ import annotations

import math
import time
import warnings
from typing import Callable

from sklearn.exceptions import ConvergenceWarning

from .._mstep import Passes
from .._validation import DivergenceError
from ..data import ArrayBatches
from .init import initial_responsibilities, nested_seed
from .inputs import check_model_inputs
from .restarts import best_of
from .result import FitResult
from .starts import small_em

__all__ = ["fit_em", "e_step_pass"]


def fit_em(
    model,
    x,
    y,
    sample_weight=None,
    *,
    max_iter: int = 200,
    tol: float = 1e-6,
    n_init: int = 1,
    init="random",
    random_state: int | None = None,
    prune_threshold: float = 1e-4,
    verbose: int = 0,
    callback: Callable | None = None,
) -> FitResult:
    """Fit a :class:`~moekit.MixtureOfExperts` by EM, in place.

    One EM path for flat, nested (HME) and mixed models: every iteration is
    one pass of :meth:`~moekit.MixtureOfExperts.suff_stats` over the batches
    of the data (the E-step: log-likelihood, responsibilities and every
    component's additive statistics), summed, then
    :meth:`~moekit.MixtureOfExperts.m_step`.  Exact M-steps (least squares,
    constant gate) use the summed statistics once; Newton / IRLS / ECM steps
    revisit the E-step's weighted data for their next statistics and for the
    objective at step-halving trial points, so the weighted objective never
    falls; components without statistics (neural networks, scikit-learn
    models) take weighted steps kept only when they help (generalised EM).
    The log-likelihood therefore never decreases.

    Parameters
    ----------
    model : MixtureOfExperts
        Fitted in place (its initial parameters are overwritten by the
        initialisation).  With ``n_init > 1`` the best start is kept.
    x : Tensor (n, d_x)
    y : Tensor (n,) or (n, d_y); integer labels for classification experts.
    sample_weight : Tensor (n,), optional
        Non-negative row weights; integer weights are equivalent to repeated rows.
    max_iter : int
        EM iterations per start.
    tol : float
        Stop when the mean per-sample log-likelihood changes by less than ``tol``.
    n_init : int
        Starts; the one with the highest final log-likelihood is kept.
    init : {"auto", "kmeans", "random"}, array (n, K) or callable
        ``"auto"``: a race of EM runs from a subset start, a random
        partition and k-means, where the model's experts allow a subset
        start (flat mixtures of linear-Gaussian or Student-t experts), else
        one random partition (see :func:`~moekit.training.starts.small_em`);
        with ``n_init > 1`` each start is such a race.  Otherwise how the
        first responsibilities are made (see
        :func:`~moekit.training.init.initial_responsibilities`), or a
        callable ``init(model, x, y, weight, seed)`` that initialises the
        model in place for the start with that seed (as
        :func:`~moekit.hierarchy.fit_tree_em` does with
        :func:`~moekit.hierarchy.init_tree`).
        ``None`` keeps the model's current parameters (warm start).
    random_state : int, optional
        Seeds the starts (start i uses a seed drawn from it).
    prune_threshold : float
        An expert whose share of the total weight falls below this fraction is
        removed with a warning (its M-step would be ill-posed).
    verbose : int
        Print the log-likelihood every ``verbose`` iterations.
    callback : callable, optional
        ``callback(iteration, mean_loglik, model)`` after each E-step.

    Returns
    -------
    FitResult

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y); sample_weight (n,).

    Examples
    --------
    >>> import torch
    >>> from moekit import MixtureOfExperts, SoftmaxGate, LinearGaussianExpert, fit_em
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(400, 1, generator=g, dtype=torch.float64)
    >>> y = torch.where(x[:, 0] < 0.5, 2 * x[:, 0], -2 * x[:, 0]) + 0.01 * torch.randn(400, generator=g, dtype=torch.float64)
    >>> moe = MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_experts=2))
    >>> res = fit_em(moe, x, y, random_state=0)
    >>> res.converged, all(b >= a - 1e-9 for a, b in zip(res.history, res.history[1:]))
    (True, True)
    """
    t0 = time.perf_counter()
    x, y, w = check_model_inputs(model, x, y, sample_weight)
    if not (isinstance(max_iter, int) and max_iter >= 0):
        raise ValueError(f"max_iter must be a non-negative int, got {max_iter!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    source = ArrayBatches(x, y, w)
    total = source.total_weight

    def run_one(m, seed: int) -> dict:
        if isinstance(init, str) and init == "auto":
            race = small_em(m, x, y, w, random_state=seed, max_iter=max_iter, tol=tol)
            out = _em_loop(m, source, total, max_iter - race.n_iter, tol, prune_threshold, verbose, callback,
                           history=race.history)
            out["n_iter"] += race.n_iter
            return out
        if callable(init):
            init(m, x, y, w, seed)
        elif init is not None:
            r = initial_responsibilities(x, y, m.n_experts, init, seed, w)
            # nested mixtures split their rows with a seed of their own, drawn from this start's
            m.init_from_responsibilities(x, y, w[:, None] * r, random_state=nested_seed(seed))
        return _em_loop(m, source, total, max_iter, tol, prune_threshold, verbose, callback)

    i_best, run, finals = best_of(model, n_init, random_state, run_one, score=lambda r: r["history"][-1])
    if not run["converged"] and max_iter > 0:
        h = run["history"]
        delta = abs(h[-1] - h[-2]) if len(h) > 1 else float("nan")
        warnings.warn(
            f"EM did not converge in max_iter={max_iter} iterations (last change of the mean "
            f"log-likelihood {delta:.3g} > tol={tol:g}). Increase max_iter, loosen tol, or "
            "standardise the inputs.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return FitResult(
        model=model,
        log_likelihood=run["history"][-1] * total,
        history=run["history"],
        n_iter=run["n_iter"],
        converged=run["converged"],
        method="em",
        init_mean_log_likelihoods=finals,
        best_init=i_best,
        pruned=run["pruned"],
        seconds=time.perf_counter() - t0,
        mean_log_likelihood=run["history"][-1],
        total_weight=total,
        train_weight=total,
    )


def e_step_pass(model, source):
    """One E-step over every batch of ``source``: the summed statistics and the passes for the M-step.

    Returns
    -------
    stats : SuffStats
        ``model.suff_stats`` summed over the batches (an all-reduce across
        machines would go here).
    passes : Passes
        The weighted data each component received, for the Newton steps.
    """
    data: list[dict] = []
    stats = 0
    for xb, yb, wb in source:
        d: dict = {}
        stats = stats + model.suff_stats(xb, yb, wb, data=d)
        data.append(d)
    return stats, Passes(data)


def _em_loop(m, source, total, max_iter, tol, prune_threshold, verbose, callback, history=()) -> dict:
    """EM iterations from the model's current parameters; ``history`` holds the mean log-likelihoods of
    iterations already taken (a start race's), so that convergence is judged across the join."""
    history = list(history)
    pruned: list[int] = []
    alive = list(range(m.n_experts))
    converged = False
    n_iter = 0
    while True:
        stats, passes = e_step_pass(m, source)
        if m.n_experts > 1 and prune_threshold > 0:
            share = stats["weight"] / total
            dead = (share < prune_threshold).nonzero().flatten().tolist()
            if dead and len(dead) < m.n_experts:
                keep = [k for k in range(m.n_experts) if k not in dead]
                gone = [alive[k] for k in dead]
                warnings.warn(
                    f"pruned expert(s) {gone}: their share of the data fell below "
                    f"prune_threshold={prune_threshold:g}; {len(keep)} expert(s) remain. "
                    "Use fewer experts or another init if this happens often.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                pruned.extend(gone)
                alive = [alive[k] for k in keep]
                m.prune(keep)
                stats, passes = e_step_pass(m, source)
        mean_ll = float(stats["loglik"]) / total
        if not math.isfinite(mean_ll):
            raise DivergenceError(
                f"the log-likelihood became {mean_ll} at EM iteration {n_iter}; "
                "check the data scale or raise the variance floor (var_floor)"
            )
        history.append(mean_ll)
        if callback is not None:
            callback(n_iter, mean_ll, m)
        if verbose and n_iter % verbose == 0:
            print(f"EM iter {n_iter:4d}  mean log-likelihood {mean_ll:.8f}")
        if len(history) > 1 and abs(history[-1] - history[-2]) < tol:
            converged = True
            break
        if n_iter >= max_iter:
            break
        while m.prune_vanishing(stats, float(stats["weight"].sum())):
            stats, passes = e_step_pass(m, source)
        m.m_step(stats, passes)
        n_iter += 1
    return {"history": history, "n_iter": n_iter, "converged": converged, "pruned": pruned}
