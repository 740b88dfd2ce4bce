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
