"""Early stopping: the best validation score so far, the epochs since it improved, and a copy of its state.

Shared by :func:`~moekit.fit_gradient` and :func:`~moekit.fit_mdn`.  The
training loop asks :meth:`EarlyStopping.step` after each epoch whether its
score is a new best, decides itself which state to keep
(:meth:`EarlyStopping.snapshot`; ``fit_mdn`` keeps an averaged network, and
with ``keep="recent"`` also later networks that are not worse), and stops
when :attr:`EarlyStopping.should_stop` says so.
"""

from __future__ import annotations

import copy
import math

from torch import nn

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """Track the best score (higher is better), the epochs without improvement, and a kept state.

    Parameters
    ----------
    patience : int
        :attr:`should_stop` becomes true after this many epochs in a row
        without a new best.
    min_delta : float, default=0.0
        A score is a new best only when it exceeds the best by more than this.
    best : float, default=-inf
        The score to beat at the start (usually the score before training).

    Attributes
    ----------
    best : float
        The best score so far.
    best_epoch : int
        The epoch of the best score (0: the starting score).
    wait : int
        Epochs since the last new best.
    state : dict or None
        The ``state_dict`` copied by the last :meth:`snapshot`.
    state_epoch : int
        The epoch passed to the last :meth:`snapshot`.

    Examples
    --------
    >>> stop = EarlyStopping(patience=2, min_delta=0.1, best=0.0)
    >>> [stop.step(s, epoch) for epoch, s in enumerate([1.0, 1.05, 0.5], start=1)]
    [True, False, False]
    >>> stop.best, stop.best_epoch, stop.wait, stop.should_stop
    (1.0, 1, 2, True)
    """

    def __init__(self, patience: int, min_delta: float = 0.0, best: float = -math.inf):
        self.patience = patience
        self.min_delta = min_delta
        self.best = best
        self.best_epoch = 0
        self.wait = 0
        self.state: dict | None = None
        self.state_epoch = 0

    def step(self, score: float, epoch: int) -> bool:
        """Record an epoch's score; True when it beats the best by more than ``min_delta`` (then the new best).

        A NaN score never counts as better.
        """
        if score > self.best + self.min_delta:
            self.best, self.best_epoch, self.wait = score, epoch, 0
            return True
        self.wait += 1
        return False

    @property
    def should_stop(self) -> bool:
        """Whether ``patience`` epochs in a row passed without a new best."""
        return self.wait >= self.patience

    def restart_patience(self) -> None:
        """Count the epochs without improvement from zero again (the best score is kept)."""
        self.wait = 0

    def snapshot(self, module: nn.Module, epoch: int) -> None:
        """Keep a deep copy of ``module.state_dict()`` as the state to restore."""
        self.state = copy.deepcopy(module.state_dict())
        self.state_epoch = epoch

    def restore(self, module: nn.Module) -> None:
        """Load the kept state into ``module``."""
        if self.state is None:
            raise RuntimeError("no state was kept: call snapshot() before restore()")
        module.load_state_dict(self.state)
