"""Training a mixture density network: minibatch AdamW on the weighted negative log-likelihood.

:func:`fit_mdn` trains a :class:`~moekit.mdn.MixtureDensityNetwork` in place,
with a validation split and early stopping
(:class:`~moekit.training.stopping.EarlyStopping`), learning-rate decay on
plateaus, an exponential moving average of the weights, gradient clipping,
noise regularisation, and monitoring (and optional re-seeding) of dead
components.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.nn.utils import clip_grad_norm_
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .._validation import DivergenceError, as_tensor, check_int, check_real, check_sample_weight, check_scale, model_device
from ..mdn import MixtureDensityNetwork
from .result import FitResult
from .stopping import EarlyStopping

__all__ = ["DeadComponentWarning", "MDNFitResult", "fit_mdn"]

_CHUNK = 65536  # rows per forward pass when evaluating (no gradients)
_MIN_DELTA = 1e-6  # a monitored mean log-likelihood must rise by more than this to count as better


class DeadComponentWarning(UserWarning):
    """Some mixture components explain (almost) none of the training data."""


@dataclass
class MDNFitResult(FitResult):
    """What :func:`fit_mdn` returns: a :class:`~moekit.training.FitResult` plus component monitoring.

    Attributes
    ----------
    usage : ndarray (K,)
        Share of the training data each component explains at the end (the
        mean responsibility; sums to 1).
    usage_history : ndarray (n_epochs, K)
        The same, accumulated over each epoch's minibatches.
    dead_components : list of int
        Components whose final usage is below ``dead_threshold``.
    reseeded : list of (epoch, component) pairs
        Re-seeding events (``reseed_dead=True``).
    best_epoch : int
        Epoch whose parameters were kept (early stopping), else the last.
    epoch_seconds : float
        Mean wall-clock time of one training epoch (minibatch passes and the
        validation pass).
    """

    usage: np.ndarray | None = None
    usage_history: np.ndarray | None = None
    dead_components: list = field(default_factory=list)
    reseeded: list = field(default_factory=list)
    best_epoch: int = 0
    epoch_seconds: float = 0.0




def _not_worse(lp: torch.Tensor, ref: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether per-row log-likelihoods ``lp`` are within one paired standard error of ``ref`` (or better)."""
    d = (lp - ref).double()
    w = w.double()
    sw = w.sum()
    m = (w * d).sum() / sw
    var = (w * (d - m) ** 2).sum() / sw
    n_eff = sw**2 / (w**2).sum()
    return bool(m >= -torch.sqrt(var / n_eff))



def _adamw(groups, lr: float) -> torch.optim.Optimizer:
    """AdamW, fused where this torch build supports it for these tensors (CPU needs torch >= 2.4), else multi-tensor."""
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, foreach=True)


def _lr_schedule(opt: torch.optim.Optimizer, patience: int | None, factor: float, start: float):
    """Multiply the rate by ``factor`` at every ``patience``-th epoch in a row without a new best score.

    A score is a new best when it exceeds the best so far by more than
    ``_MIN_DELTA``, counting from ``start`` (the score before training), as
    early stopping counts.  Step it with each epoch's score (higher is
    better).  ``None`` (a constant rate) when ``patience`` is None or
    ``factor`` is 1.
    """
    if patience is None or factor >= 1.0:
        return None
    # ReduceLROnPlateau reduces once the bad epochs *exceed* its patience, and never below eps or min_lr
    schedule = ReduceLROnPlateau(opt, mode="max", factor=factor, patience=patience - 1, threshold=_MIN_DELTA,
                                 threshold_mode="abs", cooldown=0, min_lr=0.0, eps=0.0)
    schedule.best = start
    return schedule


def _moving_average(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``'s parameters that starts at its current values.

    ``update_parameters(model)`` then sets ``avg += (1 - decay) * (model - avg)``.
    The averaged copy (``.module``) needs no gradients.
    """
    # its step counter goes where the model is (by default it would land on torch's default device)
    ema = AveragedModel(model, device=model_device(model), multi_avg_fn=get_ema_multi_avg_fn(decay))
    ema.update_parameters(model)  # the first update copies (AveragedModel's rule); later ones average
    ema.module.requires_grad_(False)
    return ema


def fit_mdn(
    model: MixtureDensityNetwork,
    x,
    y,
    sample_weight=None,
    *,
    max_epochs: int = 1000,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    weight_decay: float = 0.0,
    validation_fraction: float = 0.1,
    early_stopping: bool = True,
    patience: int = 150,
    keep: str = "best",
    lr_decay_patience: int | None = 50,
    lr_decay: float = 0.5,
    max_grad_norm: float | None = 10.0,
    average: float | None = 0.99,
    input_noise: float = 0.0,
    target_noise: float = 0.0,
    init: str | None = "gmm",
    output_init_scale: float = 0.1,
    dead_threshold: float = 1e-3,
    reseed_dead: bool = False,
    max_reseeds: int = 3,
    random_state=None,
    verbose: int = 0,
    callback: Callable | None = None,
) -> MDNFitResult:
    """Train a mixture density network by minibatch Adam on the (weighted) negative log-likelihood, in place.

    Parameters
    ----------
    model : MixtureDensityNetwork
    x, y, sample_weight
        x (n, d_x) [or any shape with a custom trunk]; y (n,) for a scalar
        network, (n, d_y) otherwise; non-negative weights (n,).  Rows with
        weight 0 are dropped first.  Arrays are copied, never modified.
    max_epochs : int, default=1000
    batch_size : int, default=64
    learning_rate : float, default=3e-3
        Adam's initial step size.
    weight_decay : float, default=0.0
        Decoupled weight decay (AdamW) on the weight matrices (not on biases).
    validation_fraction : float, default=0.1
        Share of the rows held out (at random) for early stopping and for the
        learning-rate schedule; no split when 0, when ``early_stopping`` is
        False, or with fewer than 20 rows.
    early_stopping : bool, default=True
        Stop when the validation NLL has not improved (by more than 1e-6) for
        ``patience`` epochs, and restore the best parameters.
    patience : int, default=150
        Three times ``lr_decay_patience``, so that the learning rate is
        halved about twice after the last improvement before training stops.
    keep : {"best", "recent"}, default="best"
        Which network early stopping keeps.  "best": the one with the best
        validation NLL.  "recent": the most recent one whose validation
        log-likelihood is within one *paired* standard error of the best
        (per-row differences on the same validation rows).  A small validation
        set cannot tell such networks apart; the later one has trained longer,
        at a smaller learning rate, which helps when the network underfits
        (e.g. many components, smooth targets) and hurts when it overfits
        (small noisy data sets).
    lr_decay_patience : int or None, default=50
        Multiply the learning rate by ``lr_decay`` when the monitored NLL
        (validation, else training) has not improved (by more than 1e-6) for
        this many epochs (:class:`~torch.optim.lr_scheduler.ReduceLROnPlateau`;
        ``None``: constant rate).  It should be well below ``patience``
        (otherwise the rate never decays).  A short wait halves the rate on
        the noise of a small validation split: with the earlier default of
        15 epochs, the rate shrank towards zero within a few hundred epochs
        on Bishop's inverse sine (100 validation rows), training froze
        before the extra components were put to use, and 5 components did no
        better than 3 (see ``benchmarks/RESULTS_mdn.md``).
    lr_decay : float, default=0.5
    max_grad_norm : float or None, default=10.0
        Gradient-norm clipping (:func:`torch.nn.utils.clip_grad_norm_`).
    average : float or None, default=0.99
        Polyak-Ruppert averaging: the network that is validated, kept and
        returned is an exponential moving average of the iterates, updated
        after every minibatch step with this decay
        (:class:`torch.optim.swa_utils.AveragedModel` with
        :func:`~torch.optim.swa_utils.get_ema_multi_avg_fn`; ``None``: the
        last iterate).  It removes most of the minibatch noise from the final
        parameters and from the validation curve that early stopping reads.
    input_noise, target_noise : float, default=0.0
        Noise regularisation (Rothfuss et al. 2019, "Noise regularization for
        conditional density estimation"): every epoch, each training row's x
        and y are perturbed by fresh Gaussian noise with this standard
        deviation, in standardised units (a share of each column's standard
        deviation; raw units for inputs a custom trunk does not standardise).
        It smooths the learnt density in x and y, which curbs overfitting on
        small data sets, and is the likelihood of a slightly blurred density:
        leave it at 0 when the density has sharp edges.  Validation rows are
        never perturbed; the training history is that of the perturbed rows.
    init : {"gmm", "random", None}, default="gmm"
        "gmm": set the standardisation from the data, draw fresh weights and
        start from a Gaussian mixture fitted to the targets
        (:meth:`MixtureDensityNetwork.init_from_targets`); "random": the same
        without the mixture (unit-scale components at the origin); ``None``:
        continue from the model as it is (standardisation unchanged).
    output_init_scale : float, default=0.1
        Factor on the head's initial weights with ``init="gmm"``.
    dead_threshold : float, default=1e-3
        A component whose usage (share of the training data it explains) is
        below this is *dead*; a :class:`DeadComponentWarning` names the dead
        components at the end.
    reseed_dead : bool, default=False
        Re-seed dead components during training
        (:meth:`MixtureDensityNetwork.reseed_components`), at most
        ``max_reseeds`` times each, never in the last ``patience`` epochs.
    max_reseeds : int, default=3
    random_state : int, Generator or None
        Seeds the weights, the split, the shuffling and the mixture fitted to
        the targets.  The global random state is never touched.
    verbose : int, default=0
        Show a progress bar (tqdm) when positive.
    callback : callable, optional
        ``callback(epoch, train_mean_loglik, validation_mean_loglik, model)``;
        return ``True`` to stop.

    Returns
    -------
    MDNFitResult
        ``history``: mean training log-likelihood of each epoch (index 0 at
        the start; the epochs' entries are averaged over its minibatches as
        they are visited; over the training split, of weight ``train_weight``);
        ``validation_history`` (means); ``mean_log_likelihood``: final mean
        over all rows, ``log_likelihood`` their total; ``usage``,
        ``dead_components`` and more.

    Raises
    ------
    FloatingPointError
        If a loss ever became NaN or infinite (it should not: everything is
        in log space with scale floors; please report it).

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y); sample_weight (n,).

    Examples
    --------
    >>> import torch
    >>> from moekit.mdn import MixtureDensityNetwork
    >>> from moekit.training.mdn import fit_mdn
    >>> from moekit.datasets import make_inverse_sine
    >>> X, y = make_inverse_sine(300, random_state=0)
    >>> mdn = MixtureDensityNetwork(1, n_components=3, hidden_layer_sizes=(16,))
    >>> res = fit_mdn(mdn, X, y, max_epochs=20, random_state=0)
    >>> res.history[-1] > res.history[0], len(res.usage)
    (True, 3)
    """
    t0 = time.perf_counter()
    if not isinstance(model, MixtureDensityNetwork):
        raise TypeError(f"model must be a MixtureDensityNetwork, got {type(model).__name__}")
    check_int(max_epochs, "max_epochs", 0)
    check_int(batch_size, "batch_size", 1)
    check_int(patience, "patience", 1)
    check_int(lr_decay_patience, "lr_decay_patience", 1, allow_none=True)
    check_int(max_reseeds, "max_reseeds", 0)
    check_real(learning_rate, "learning_rate", 0.0, low_open=True)
    check_real(weight_decay, "weight_decay", 0.0)
    check_real(validation_fraction, "validation_fraction", 0.0, 0.9)
    check_real(lr_decay, "lr_decay", 0.0, 1.0, low_open=True)
    check_real(output_init_scale, "output_init_scale", 0.0)
    check_real(input_noise, "input_noise", 0.0)
    check_real(target_noise, "target_noise", 0.0)
    check_real(dead_threshold, "dead_threshold", 0.0, 1.0)
    if max_grad_norm is not None:
        check_real(max_grad_norm, "max_grad_norm", 0.0, low_open=True)
    if keep not in ("best", "recent"):
        raise ValueError(f"keep must be 'best' or 'recent', got {keep!r}")
    if init not in ("gmm", "random", None):
        raise ValueError(f"init must be 'gmm', 'random' or None, got {init!r}")
    dtype, device = model.dtype, model.device
    x_ndims = (2,) if model.n_features is not None or not model.custom_trunk else tuple(range(1, 8))
    x = as_tensor(x, "x", dtype, device, ndims=x_ndims)
    y = as_tensor(y, "y", dtype, device, ndims=(1, 2))
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}; they must have the same length")
    if model.n_features is not None and x.shape[1] != model.n_features:
        raise ValueError(f"x has {x.shape[1]} columns but the network was built with n_features={model.n_features}")
    model.check_y(y)
    check_scale(x, "x", power=1)  # standardised inside (in float64), so only the values themselves must fit the dtype
    check_scale(y, "y", power=1)
    w = check_sample_weight(sample_weight, x.shape[0], dtype, device)
    pos = w > 0
    if not bool(pos.all()):
        x, y, w = x[pos], y[pos], w[pos]
    n = x.shape[0]

    rng = np.random.default_rng(random_state)
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
    n_val = int(round(validation_fraction * n)) if (early_stopping and n >= 20) else 0
    perm = torch.as_tensor(rng.permutation(n), device=device)
    tr, va = perm[n_val:], perm[:n_val]
    xt, yt, wt = x[tr], y[tr], w[tr]
    xv, yv, wv = x[va], y[va], w[va]
    if init is not None:
        model.reset_parameters(gen)
        model.fit_standardization(x, y, w)
        if init == "gmm":
            model.init_from_targets(yt, wt, random_state=int(rng.integers(0, 2**31 - 1)), output_scale=output_init_scale)
    zt = model.standardize_y(yt)
    zv = model.standardize_y(yv) if n_val else None
    jac = float(model.log_jacobian())
    wt_sum = float(wt.sum())
    unit_weights = bool((wt == 1).all())

    def val_lp(net) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([torch.logsumexp(net.standardized_joint_log_prob(xv[i : i + _CHUNK], zv[i : i + _CHUNK]), dim=-1)
                              for i in range(0, xv.shape[0], _CHUNK)])

    def mean_ll(xx, zz, ww) -> float:
        if xx.shape[0] == 0:
            return float("nan")
        with torch.no_grad():
            tot = 0.0
            for i in range(0, xx.shape[0], _CHUNK):
                lp = torch.logsumexp(model.standardized_joint_log_prob(xx[i : i + _CHUNK], zz[i : i + _CHUNK]), dim=-1)
                tot += float((ww[i : i + _CHUNK] * lp).sum())
            return tot / float(ww.sum()) - jac

    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    if weight_decay > 0:
        decay = [p for _, p in named if p.dim() >= 2]
        no_decay = [p for _, p in named if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
    else:
        groups = [{"params": params, "weight_decay": 0.0}]
    opt = _adamw(groups, float(learning_rate))
    # Polyak-Ruppert averaging (an exponential moving average of the iterates): the averaged
    # network is the one validated, kept and returned; it smooths out the minibatch noise.
    ema = None if average is None else _moving_average(model, float(average))
    evalnet = model if ema is None else ema.module

    history = [mean_ll(xt, zt, wt)]
    val_history = [mean_ll(xv, zv, wv)] if n_val else None
    if not math.isfinite(history[0]):
        raise DivergenceError(f"the initial training log-likelihood is {history[0]}; check the data scale")
    start = val_history[0] if n_val else history[0]
    stopper = EarlyStopping(patience, min_delta=_MIN_DELTA, best=start)
    if n_val:
        stopper.snapshot(model, 0)
    best_lp = val_lp(model) if n_val else None
    scheduler = _lr_schedule(opt, lr_decay_patience, float(lr_decay), start)
    wv_sum = float(wv.sum()) if n_val else 1.0
    usage_hist: list[np.ndarray] = []
    reseeded: list[tuple[int, int]] = []
    n_reseeds = np.zeros(model.n_components, dtype=int)
    converged = False
    epoch = 0
    bar = tqdm(total=max_epochs, desc="MDN", unit="epoch", leave=False) if verbose else None
    k = model.n_components
    n_tr = xt.shape[0]
    epoch_time = 0.0
    for epoch in range(1, max_epochs + 1):
        te = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        usage = torch.zeros(k, dtype=torch.float64, device=device)
        if batch_size >= n_tr:  # full batch: the order does not matter
            xs, zs, ws = xt, zt, wt
        else:  # one gather per epoch; the minibatches are slices
            order = torch.randperm(n_tr, generator=gen, device=gen.device).to(device)
            xs, zs, ws = xt[order], zt[order], wt[order]
        if input_noise > 0:  # noise regularisation: fresh noise each epoch, in standardised units
            eps = torch.randn(xs.shape, generator=gen, dtype=xs.dtype, device=gen.device).to(device)
            xs = xs + float(input_noise) * (eps * model.x_scale if model.standardizes_x else eps)
        if target_noise > 0:
            zs = zs + float(target_noise) * torch.randn(zs.shape, generator=gen, dtype=zs.dtype, device=gen.device).to(device)
        for i in range(0, n_tr, batch_size):
            joint = model.standardized_joint_log_prob(xs[i : i + batch_size], zs[i : i + batch_size])
            lp = torch.logsumexp(joint, dim=-1)
            if unit_weights:
                loss = -lp.mean()
            else:
                wb = ws[i : i + batch_size]
                loss = -(wb * lp).sum() / wb.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                clip_grad_norm_(params, float(max_grad_norm))
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            with torch.no_grad():
                r = torch.exp(joint.detach() - lp.detach()[:, None])  # responsibilities (softmax)
                if unit_weights:
                    loss_sum += lp.detach().sum().double()
                    usage += r.sum(0).double()
                else:
                    loss_sum += (wb * lp.detach()).sum().double()
                    usage += (wb[:, None] * r).sum(0).double()
        model.eval()
        ll = float(loss_sum) / wt_sum - jac
        if not math.isfinite(ll):
            raise DivergenceError(
                f"the training loss became {-ll} at epoch {epoch}; this should not happen "
                "(log-space likelihood with scale floors): please report it with the data"
            )
        history.append(ll)
        usage_np = (usage / wt_sum).cpu().numpy()
        usage_hist.append(usage_np)
        v = None
        if n_val:
            lp_v = val_lp(evalnet)
            v = float((wv * lp_v).sum()) / wv_sum - jac
            val_history.append(v)
            if not math.isfinite(v):
                raise DivergenceError(f"the validation log-likelihood became {v} at epoch {epoch}")
        epoch_time += time.perf_counter() - te
        monitored = v if n_val else ll
        if stopper.step(monitored, epoch):
            if n_val:
                stopper.snapshot(evalnet, epoch)
                best_lp = lp_v
        elif n_val and keep == "recent" and _not_worse(lp_v, best_lp, wv):
            stopper.snapshot(evalnet, epoch)
        if scheduler is not None:
            scheduler.step(monitored)
        if reseed_dead and epoch >= 5 and epoch <= max_epochs - patience:
            dead = [c for c in range(k) if usage_np[c] < dead_threshold and n_reseeds[c] < max_reseeds]
            if dead and len(dead) < k:
                model.reseed_components(dead, xt, yt, optimizer=opt)
                if ema is not None:
                    evalnet.load_state_dict(model.state_dict())
                for c in dead:
                    n_reseeds[c] += 1
                    reseeded.append((epoch, c))
                if n_val:  # the re-seeded model must earn its place again
                    stopper.restart_patience()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(train_nll=f"{-ll:.4f}", **({"val_nll": f"{-v:.4f}"} if n_val else {}))
        if callback is not None and callback(epoch, ll, v, evalnet):
            break
        if early_stopping and stopper.should_stop:
            converged = True
            break
    if bar is not None:
        bar.close()
    best_epoch = stopper.best_epoch
    if n_val:
        stopper.restore(model)
        best_epoch = stopper.state_epoch
        history.append(mean_ll(xt, zt, wt))
    elif ema is not None:
        model.load_state_dict(evalnet.state_dict())
        history.append(mean_ll(xt, zt, wt))
    elif not early_stopping:
        best_epoch = epoch
    if not early_stopping:
        converged = True
    model.eval()
    final_usage = model.component_usage(xt, yt, wt).cpu().numpy()
    dead = [int(c) for c in np.flatnonzero(final_usage < dead_threshold)]
    if dead:
        shares = ", ".join(f"{c}: {final_usage[c]:.1e}" for c in dead)
        warnings.warn(
            f"{len(dead)} of {k} mixture components are dead (they explain less than "
            f"dead_threshold={dead_threshold:g} of the training data; component: share = {shares}); "
            "use fewer components, or reseed_dead=True to move them onto poorly explained data",
            DeadComponentWarning,
            stacklevel=2,
        )
    n_epochs = max(len(usage_hist), 1)
    mean = mean_ll(x, model.standardize_y(y), w)
    total_weight = float(w.sum())
    return MDNFitResult(
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
        train_weight=wt_sum,
        usage=final_usage,
        usage_history=np.array(usage_hist).reshape(-1, k),
        dead_components=dead,
        reseeded=reseeded,
        best_epoch=best_epoch,
        epoch_seconds=epoch_time / n_epochs,
    )
