"""The result of a training function."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass
class FitResult:
    """What ``fit_em`` and ``fit_gradient`` return.

    Attributes
    ----------
    model : torch.nn.Module
        The fitted model (the same object that was passed in, fitted in place).
    log_likelihood : float
        Final weighted mean per-sample log-likelihood on the training data.
    history : list of float
        Mean per-sample log-likelihood after every iteration (EM) or epoch
        (gradient), starting from the initial parameters, of the best start.
    n_iter : int
        EM iterations (M-steps) or epochs run for the best start.
    converged : bool
        Whether the stopping rule (``tol`` or early stopping) was met.
    method : str
        ``"em"`` or ``"gradient"``.
    init_log_likelihoods : list of float
        Final mean log-likelihood of every start (``n_init`` of them).
    best_init : int
        Index of the start that was kept.
    pruned : list of int
        Original indices of experts removed because their weight vanished.
    validation_history : list of float or None
        Mean per-sample validation log-likelihood per epoch (gradient training).
    seconds : float
        Wall-clock time of the whole fit.

    Parameters
    ----------
    model, log_likelihood, history, n_iter, converged, method
        The attributes above, in that order (only ``model`` and
        ``log_likelihood`` are required).
    init_log_likelihoods, best_init, pruned, validation_history, seconds
        The remaining attributes, in that order.

    Shapes
    ------
    No arrays: ``history`` has ``n_iter + 1`` entries for EM (the first at
    the initial parameters); ``init_log_likelihoods`` has ``n_init``;
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
    """

    model: nn.Module
    log_likelihood: float
    history: list = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    method: str = "em"
    init_log_likelihoods: list = field(default_factory=list)
    best_init: int = 0
    pruned: list = field(default_factory=list)
    validation_history: list | None = None
    seconds: float = 0.0
