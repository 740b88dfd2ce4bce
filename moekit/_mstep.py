"""Generic M-step drivers shared by gates and experts.

Two kinds of weighted M-step exist in moekit:

* statistic-based: a component summarises the weighted data in additive
  :class:`~moekit.stats.SuffStats` and updates itself from them.  When the
  update is the exact maximiser (Gaussian least squares, constant gate) one
  call suffices; otherwise (IRLS / Newton, ECM) :func:`maximize` iterates,
  halving the step whenever the weighted objective would decrease, so that
  every M-step is a generalised-EM step and the likelihood never decreases.
* gradient-based (neural gates and experts): :func:`gradient_maximize` takes a
  few optimiser steps and keeps them only if the objective improved.

``stats_fn`` is any callable returning the statistics at the component's
current parameters; in memory it is one pass over the data, out of core it is
a sum over batches, distributed it is a sum followed by an all-reduce.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from .stats import SuffStats


def _params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters()]


def has_stats(component) -> bool:
    """Whether ``component`` summarises its weighted data in statistics (else it is fitted on the data)."""
    return bool(getattr(component, "has_suff_stats", False))


def _objective(component, stats: SuffStats) -> torch.Tensor:
    """The M-step objective held in ``stats``, less the component's ridge penalty when it has one."""
    if getattr(component, "l2", 0) > 0:
        return stats["objective"] - component.penalty()
    return stats["objective"]


def uses_trial_objective(component) -> bool:
    """Whether step-halving may evaluate ``component.objective`` alone at trial points (no penalty to add)."""
    return hasattr(component, "objective") and not getattr(component, "l2", 0) > 0


@torch.no_grad()
def maximize(
    component,
    stats_fn: Callable[[], SuffStats] | None,
    *,
    stats: SuffStats | None = None,
    max_steps: int | None = None,
    tol: float = 1e-10,
    max_halvings: int = 30,
    objective_fn: Callable[[], torch.Tensor] | None = None,
) -> int:
    """Maximise a component's weighted objective from its sufficient statistics.

    Parameters
    ----------
    component : Gate or Expert
        Must implement ``m_step(stats)``; if ``component.m_step_exact`` is
        false, ``stats["objective"]`` must hold the weighted objective at the
        current parameters (a ridge penalty ``component.penalty()`` is
        subtracted when ``component.l2 > 0``).
    stats_fn : callable or None
        Returns the statistics at the component's current parameters (one
        pass over the data in memory, a sum over batches out of core).
        ``None``: only ``stats`` is known, so one step is taken unchecked.
    stats : SuffStats, optional
        The statistics at the current parameters when the caller has them
        already (the E-step's pass); else the first call of ``stats_fn``.
    max_steps : int, optional
        Newton / ECM iterations (default ``component.max_m_steps``).
    tol : float
        Stop when the objective improves by less than ``tol * (1 + |f|)``.
    max_halvings : int
        Step-halvings before giving up on a step (the parameters are then
        left unchanged, which still never lowers the objective).
    objective_fn : callable, optional
        Returns the weighted objective at the current parameters more cheaply
        than ``stats_fn`` (no gradient or Hessian); used at trial points of
        the step-halving search, the statistics being recomputed only at an
        accepted point that needs another step.

    Returns
    -------
    int
        Number of accepted steps.
    """
    if stats is None:
        stats = stats_fn()
    if getattr(component, "m_step_exact", True) or stats_fn is None:  # exact, or no pass to check a step with
        component.m_step(stats)
        return 1
    steps = component.max_m_steps if max_steps is None else max_steps
    params = _params(component)
    accepted = 0
    f_old = float(_objective(component, stats))
    for _ in range(steps):
        if stats is None:
            stats = stats_fn()
        old = parameters_to_vector(params).clone()
        component.m_step(stats)
        new = parameters_to_vector(params).clone()
        delta = new - old
        if not torch.isfinite(delta).all():
            vector_to_parameters(old, params)
            break
        t = 1.0
        ok = False
        new_stats = None
        for _h in range(max_halvings):
            if objective_fn is not None:
                f_new = float(objective_fn())
            else:
                new_stats = stats_fn()
                f_new = float(_objective(component, new_stats))
            if f_new == f_new and f_new >= f_old - 1e-12 * (1.0 + abs(f_old)):
                ok = True
                break
            t *= 0.5
            vector_to_parameters(old + t * delta, params)
        if not ok:
            vector_to_parameters(old, params)
            break
        accepted += 1
        stats = new_stats
        done = f_new - f_old <= tol * (1.0 + abs(f_old))
        f_old = f_new
        if done:
            break
    return accepted


def fit_in_memory(component, *data, max_steps: int | None = None) -> None:
    """The weighted M-step of ``component`` on data held in memory (``data`` as its ``suff_stats`` takes it)."""
    objective_fn = (lambda: component.objective(*data)) if uses_trial_objective(component) else None
    maximize(component, lambda: component.suff_stats(*data), objective_fn=objective_fn, max_steps=max_steps)


class Passes:
    """Summed passes over the weighted data of an E-step, for the M-steps that need more than one.

    ``data[b][path] = (component, args)`` is what the E-step of batch ``b``
    handed the component at ``path`` (see
    :meth:`moekit.MixtureOfExperts.suff_stats`).  A Newton component's next
    statistics, or its objective at a trial point, is the sum of its
    statistics over the batches: in memory the weighted data are kept, so
    that is one pass with no new E-step.

    Parameters
    ----------
    data : list of dict
        One dict per batch.
    reduce : callable, optional
        Applied to every sum over the batches (an all-reduce across the ranks
        of a distributed fit, each holding its own batches).
    """

    def __init__(self, data: list[dict], reduce: Callable | None = None):
        self.data = data
        self.reduce = reduce

    def _sum(self, values):
        total = sum(values)
        return total if self.reduce is None else self.reduce(total)

    def stats_fn(self, path: tuple) -> Callable[[], SuffStats]:
        """Statistics of the component at ``path`` at its current parameters, summed over batches."""
        return lambda: self._sum(comp.suff_stats(*args) for comp, args in (d[path] for d in self.data))

    def objective_fn(self, path: tuple) -> Callable[[], torch.Tensor] | None:
        """Its objective alone, where step-halving can use it (else None)."""
        comp = self.data[0][path][0]
        if not uses_trial_objective(comp):
            return None
        return lambda: self._sum(c.objective(*args) for c, args in (d[path] for d in self.data))

    def fit_weighted(self, path: tuple) -> None:
        """Generalised M-step of a component without statistics on its weighted data (one batch only)."""
        if len(self.data) != 1 or self.reduce is not None:
            comp = self.data[0][path][0]
            raise TypeError(
                f"{type(comp).__name__} has no sufficient statistics, so it can be fitted only on data held "
                "in memory (one batch), not streamed"
            )
        comp, args = self.data[0][path]
        comp.fit_weighted(*args)


def gradient_maximize(
    module: torch.nn.Module,
    objective_fn: Callable[[], torch.Tensor],
    *,
    n_steps: int = 20,
    lr: float = 1e-2,
) -> bool:
    """Generalised M-step by gradient ascent: a few Adam steps, kept only if they help.

    Parameters
    ----------
    module : torch.nn.Module
        Its trainable parameters are optimised.  An Adam state is kept on the
        module between calls (attribute ``_gem_optimizer``) so that moments
        carry over from one EM iteration to the next.
    objective_fn : callable
        Returns a scalar tensor to maximise (a weighted mean log-likelihood).
    n_steps : int
        Optimiser steps.
    lr : float
        Adam learning rate.

    Returns
    -------
    bool
        Whether the steps were kept (the objective did not decrease).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return False
    backup = [p.detach().clone() for p in params]
    with torch.no_grad():
        f0 = float(objective_fn())
    opt = getattr(module, "_gem_optimizer", None)
    stale = opt is None or opt.param_groups[0]["lr"] != lr or len(opt.param_groups[0]["params"]) != len(params)
    if not stale:
        stale = any(a is not b for a, b in zip(opt.param_groups[0]["params"], params))
    if stale:
        opt = torch.optim.Adam(params, lr=lr)
        object.__setattr__(module, "_gem_optimizer", opt)
    for _ in range(n_steps):
        opt.zero_grad(set_to_none=True)
        loss = -objective_fn()
        loss.backward()
        opt.step()
    with torch.no_grad():
        f1 = float(objective_fn())
    if not (f1 == f1 and f1 >= f0):
        with torch.no_grad():
            for p, b in zip(params, backup):
                p.copy_(b)
        return False
    return True
