"""Restarts: train from several starts and keep the best, for every trainer."""

from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np
from torch import nn

__all__ = ["best_of", "final_log_likelihood"]


def final_log_likelihood(result) -> float:
    """The score :func:`best_of` ranks starts by, by default: ``result.log_likelihood``."""
    return float(result.log_likelihood)


def best_of(
    model: nn.Module,
    n_init: int,
    random_state,
    run_one: Callable[[nn.Module, int], Any],
    score: Callable[[Any], float] = final_log_likelihood,
) -> tuple[int, Any, list[float]]:
    """Run ``run_one`` from ``n_init`` starts and leave the best start's model in ``model``.

    Start i trains a model with a seed of its own: the seeds are
    ``np.random.default_rng(random_state).integers(0, 2**31 - 1, size=n_init)``,
    so a NumPy ``Generator`` passed as ``random_state`` is drawn from as it
    is.  The first start trains ``model`` itself; every other start trains a
    deep copy of ``model`` as it was before the first start.  The start with
    the highest ``score`` wins (the earliest on ties; a NaN score never wins
    over an earlier start), and its model's attributes are copied into
    ``model``, so the caller's object holds the winner.

    Parameters
    ----------
    model : torch.nn.Module
        The model to train; left holding the best start.
    n_init : int
        Number of starts (at least 1).
    random_state : int, numpy.random.Generator or None
        Source of the starts' seeds.
    run_one : callable
        ``run_one(model, seed) -> result`` trains ``model`` in place from the
        start given by ``seed``.
    score : callable, default=final_log_likelihood
        ``score(result) -> float``, higher is better.

    Returns
    -------
    best_index : int
        Which start won (0-based).
    result : object
        What ``run_one`` returned for that start.
    finals : list of float
        Every start's score, in order.

    Examples
    --------
    >>> import torch
    >>> from types import SimpleNamespace
    >>> net = torch.nn.Linear(1, 1)
    >>> def run_one(m, seed):  # "training": the bias becomes seed % 7; the score is best near 3
    ...     torch.nn.init.constant_(m.bias, seed % 7)
    ...     return SimpleNamespace(log_likelihood=-abs(m.bias.item() - 3.0))
    >>> i, res, finals = best_of(net, 3, 0, run_one)
    >>> finals[i] == max(finals) == res.log_likelihood == -abs(net.bias.item() - 3.0)
    True
    """
    if not (isinstance(n_init, (int, np.integer)) and not isinstance(n_init, bool) and n_init >= 1):
        raise ValueError(f"n_init must be a positive int, got {n_init!r}")
    seeds = np.random.default_rng(random_state).integers(0, 2**31 - 1, size=int(n_init))
    template = copy.deepcopy(model) if n_init > 1 else None
    best = None
    finals: list[float] = []
    for i, seed in enumerate(seeds):
        m = model if i == 0 else copy.deepcopy(template)
        result = run_one(m, int(seed))
        final = score(result)
        finals.append(final)
        if best is None or final > best[1]:
            best = (i, final, result, m)
    i_best, _, result, m = best
    if m is not model:
        model.__dict__.update(m.__dict__)
    return i_best, result, finals
