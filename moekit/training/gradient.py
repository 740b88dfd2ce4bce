"""Gradient training on the negative log-likelihood."""

from __future__ import annotations

import math
import time
import warnings
from typing import Callable

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from .._validation import DivergenceError, check_fit_inputs, check_int, model_device, model_dtype
from .init import initial_responsibilities
from .result import FitResult
from .stopping import EarlyStopping

__all__ = ["fit_gradient"]


def fit_gradient(
    model,
    x,
    y,
    sample_weight=None,
    *,
    optimizer: str = "adam",
    learning_rate: float | None = None,
    max_epochs: int = 200,
    batch_size: int = 256,
    validation_fraction: float = 0.1,
    early_stopping: bool = True,
    patience: int = 10,
    tol: float = 1e-6,
    init=None,
    random_state: int | None = None,
    max_grad_norm: float | None = 10.0,
    weight_decay: float = 0.0,
    verbose: int = 0,
    callback: Callable | None = None,
) -> FitResult:
    """Fit any differentiable conditional model by minimising the weighted NLL, in place.

    Parameters
    ----------
    model : torch.nn.Module
        Anything with ``log_prob(x, y) -> (n,)`` (a ``MixtureOfExperts``, an
        expert, a hierarchy).
    x, y, sample_weight
        As in :func:`~moekit.fit_em`.
    optimizer : {"adam", "lbfgs"}
        Minibatch Adam, or full-batch L-BFGS with a strong-Wolfe line search
        (one "epoch" = one L-BFGS call of up to 20 iterations).
    learning_rate : float, optional
        Default 1e-2 for Adam, 1.0 for L-BFGS.
    max_epochs : int
    batch_size : int
        Adam minibatch size.
    validation_fraction : float
        Share of rows held out for early stopping (0 disables the split).
    early_stopping : bool
        Stop when the validation log-likelihood has not improved by more than
        ``tol`` for ``patience`` epochs, and restore the best parameters.
    patience : int
    tol : float
        Without a validation split: stop when the training mean
        log-likelihood changes by less than ``tol`` between epochs.
    init : {None, "auto", "kmeans", "random"} or array (n, K)
        ``None`` starts from the model's current parameters; otherwise the
        model is initialised from responsibilities as in ``fit_em``.
        ``"auto"`` is one random partition here (``fit_em``'s start race
        races EM runs, which gradient training does not have).
    random_state : int, optional
        Seeds the split, the shuffling and the initialisation.
    max_grad_norm : float or None
        Gradient-norm clipping.
    weight_decay : float
        Adam's L2 penalty.
    verbose : int
        Print every ``verbose`` epochs.
    callback : callable, optional
        ``callback(epoch, train_mean_loglik, model)``.

    Returns
    -------
    FitResult
        ``history`` holds the training-split mean log-likelihood after each
        epoch (index 0: at the start; with early stopping, the last entry is
        at the restored best parameters), ``validation_history`` the
        validation one, ``mean_log_likelihood`` the final mean over all rows
        and ``log_likelihood`` their total.

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y); sample_weight (n,); an init array
    (n, K); ``model.log_prob(x, y)`` must return (n,).

    Examples
    --------
    >>> import torch
    >>> from moekit import LinearGaussianExpert, fit_gradient
    >>> x = torch.linspace(-1, 1, 20, dtype=torch.float64)[:, None]
    >>> y = 2 * x[:, 0] + 1 + 0.1 * torch.cos(7 * x[:, 0])
    >>> expert = LinearGaussianExpert(n_features=1)
    >>> res = fit_gradient(expert, x, y, optimizer="lbfgs", validation_fraction=0.0)
    >>> res.method, res.converged, [round(v, 2) for v in expert.coef.detach().flatten().tolist()]
    ('gradient', True, [1.01, 2.0])
    """
    t0 = time.perf_counter()
    x, y, w = check_fit_inputs(x, y, sample_weight, dtype=model_dtype(model), device=model_device(model))
    if optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    check_int(max_epochs, "max_epochs", 0)
    check_int(batch_size, "batch_size", 1)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TypeError(
            f"{type(model).__name__} has no trainable torch parameters (e.g. a scikit-learn expert); "
            "use fit_em instead"
        )
    n = x.shape[0]
    rng = np.random.default_rng(random_state)
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**31 - 1)))
    if init is not None:
        kind = "random" if isinstance(init, str) and init == "auto" else init
        r = initial_responsibilities(x, y, model.n_experts, kind, int(rng.integers(0, 2**31 - 1)), w)
        model.init_from_responsibilities(x, y, w[:, None] * r)
    n_val = int(round(validation_fraction * n)) if early_stopping else 0
    if n_val >= n:
        n_val = 0
    perm = torch.as_tensor(rng.permutation(n), device=x.device)
    tr, va = perm[n_val:], perm[:n_val]
    xt, yt, wt = x[tr], y[tr], w[tr]
    xv, yv, wv = x[va], y[va], w[va]
    wt_sum = float(wt.sum()) if float(wt.sum()) > 0 else 1.0

    def mean_ll(xx, yy, ww) -> float:
        with torch.no_grad():
            s = float(ww.sum())
            return float((ww * model.log_prob(xx, yy)).sum()) / s if s > 0 else float("nan")

    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=1e-2 if learning_rate is None else learning_rate, weight_decay=weight_decay)
    else:
        opt = torch.optim.LBFGS(
            params, lr=1.0 if learning_rate is None else learning_rate, max_iter=20, line_search_fn="strong_wolfe"
        )
    history = [mean_ll(xt, yt, wt)]
    val_history = [mean_ll(xv, yv, wv)] if n_val else None
    stopper = None
    if n_val:
        stopper = EarlyStopping(patience, min_delta=tol, best=val_history[0])
        stopper.snapshot(model, 0)
    converged = False
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        if optimizer == "adam":
            order = torch.randperm(xt.shape[0], generator=gen, device=gen.device).to(x.device)
            for i in range(0, xt.shape[0], batch_size):
                b = order[i : i + batch_size]
                wb = wt[b]
                opt.zero_grad(set_to_none=True)
                loss = -(wb * model.log_prob(xt[b], yt[b])).sum() / wb.sum().clamp_min(1e-300)
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                opt.step()
        else:

            def closure():
                opt.zero_grad(set_to_none=True)
                loss = -(wt * model.log_prob(xt, yt)).sum() / wt_sum
                loss.backward()
                return loss

            opt.step(closure)
        ll = mean_ll(xt, yt, wt)
        if not math.isfinite(ll):
            raise DivergenceError(
                f"the training log-likelihood became {ll} at epoch {epoch}; lower learning_rate "
                "or standardise the data"
            )
        history.append(ll)
        if callback is not None:
            callback(epoch, ll, model)
        if verbose and epoch % verbose == 0:
            msg = f"epoch {epoch:4d}  train mean log-likelihood {ll:.6f}"
            if n_val:
                msg += f"  validation {mean_ll(xv, yv, wv):.6f}"
            print(msg)
        if n_val:
            v = mean_ll(xv, yv, wv)
            val_history.append(v)
            if stopper.step(v, epoch):
                stopper.snapshot(model, epoch)
            elif stopper.should_stop:
                converged = True
                break
        elif abs(history[-1] - history[-2]) < tol:
            converged = True
            break
    if n_val:
        stopper.restore(model)
        history.append(mean_ll(xt, yt, wt))
    if not converged and max_epochs > 0:
        warnings.warn(
            f"gradient training did not converge in max_epochs={max_epochs} epochs; "
            "increase max_epochs or the learning rate",
            ConvergenceWarning,
            stacklevel=2,
        )
    mean = mean_ll(x, y, w)
    total_weight = float(w.sum())
    return FitResult(
        model=model,
        log_likelihood=mean * total_weight,
        history=history,
        n_iter=epoch,
        converged=converged,
        method="gradient",
        init_mean_log_likelihoods=[history[-1]],
        validation_history=val_history,
        seconds=time.perf_counter() - t0,
        mean_log_likelihood=mean,
        total_weight=total_weight,
        train_weight=float(wt.sum()),
    )
