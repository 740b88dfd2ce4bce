"""The result of a training function."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

from torch import nn


@dataclass
class FitResult:
    """What ``fit_em``, ``fit_gradient`` and ``fit_tree_em`` return.

    Log-likelihoods are ``sum_i w_i log p(y_i | x_i)`` (weights ``w_i``, all
    ones without ``sample_weight``). One meaning per name: ``log_likelihood``
    is the total, as R and the command line report it; every name with
    ``mean`` in it, and ``history``, holds the mean per unit weight (the total
    divided by the weight summed over).

    Attributes
    ----------
    model : torch.nn.Module
        The fitted model (the same object that was passed in, fitted in place).
    log_likelihood : float
        Final total weighted log-likelihood on all the rows fitted
        (``mean_log_likelihood * total_weight``).
    history : list of float
        Mean log-likelihood per unit weight on the training rows after every
        iteration (EM) or epoch (gradient), starting from the initial
        parameters, of the best start.  ``tol`` applies to it.  With a
        validation split the training rows are the rest (weight
        ``train_weight``); the total per step is ``history[i] * train_weight``.
    n_iter : int
        EM iterations (M-steps) or epochs run for the best start.
    converged : bool
        Whether the stopping rule (``tol`` or early stopping) was met.
    method : str
        ``"em"`` or ``"gradient"``.
    init_mean_log_likelihoods : list of float
        Final mean training log-likelihood of every start (``n_init`` of them).
    best_init : int
        Index of the start that was kept.
    pruned : list of int
        Original indices of experts removed because their weight vanished.
    validation_history : list of float or None
        Mean log-likelihood per unit weight of the validation rows per epoch
        (gradient training with a validation split).
    seconds : float
        Wall-clock time of the whole fit.
    mean_log_likelihood : float
        Final log-likelihood per unit weight on all the rows fitted.
    total_weight : float
        Sum of the weights of all the rows fitted (their number without
        ``sample_weight``).
    train_weight : float
        Sum of the weights of the training rows ``history`` is averaged over
        (``total_weight`` less the validation split's).

    Parameters
    ----------
    model, log_likelihood, history, n_iter, converged, method
        The attributes above, in that order (only ``model`` and
        ``log_likelihood`` are required).
    init_mean_log_likelihoods, best_init, pruned, validation_history, seconds
        The next attributes, in that order.
    mean_log_likelihood, total_weight, train_weight
        The last ones (NaN when not given).

    Shapes
    ------
    ``history`` has ``n_iter + 1`` entries for EM (the first at the initial
    parameters); ``init_mean_log_likelihoods`` has ``n_init``;
    ``validation_history`` one per epoch.

    Examples
    --------
    >>> import torch
    >>> from moekit import ConstantGate, LinearGaussianExpert, MixtureOfExperts, fit_em
    >>> x = torch.linspace(-1, 1, 20, dtype=torch.float64)[:, None]
    >>> model = MixtureOfExperts(ConstantGate(1), LinearGaussianExpert(1, n_experts=1))
    >>> res = fit_em(model, x, 2 * x[:, 0] + 1, random_state=0)
    >>> res.method, res.converged, res.model is model, len(res.history) == res.n_iter + 1
    ('em', True, True, True)
    >>> res.total_weight, res.log_likelihood == res.mean_log_likelihood * 20 == res.history[-1] * 20
    (20.0, True)
    """

    model: nn.Module
    log_likelihood: float
    history: list = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    method: str = "em"
    init_mean_log_likelihoods: list = field(default_factory=list)
    best_init: int = 0
    pruned: list = field(default_factory=list)
    validation_history: list | None = None
    seconds: float = 0.0
    mean_log_likelihood: float = math.nan
    total_weight: float = math.nan
    train_weight: float = math.nan

    @property
    def init_log_likelihoods(self) -> list:
        """Deprecated name of :attr:`init_mean_log_likelihoods` (means, not totals)."""
        warnings.warn(
            "FitResult.init_log_likelihoods is deprecated: it holds means per unit weight; "
            "use init_mean_log_likelihoods",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.init_mean_log_likelihoods
