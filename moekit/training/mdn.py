"""Training a mixture density network: minibatch AdamW on the weighted negative log-likelihood.

:func:`fit_mdn` trains a :class:`~moekit.mdn.MixtureDensityNetwork` in place,
with a validation split and early stopping
(:class:`~moekit.training.stopping.EarlyStopping`), learning-rate decay on
plateaus, an exponential moving average of the weights, gradient clipping,
noise regularisation, and monitoring (and optional re-seeding) of dead
components.  It trains from arrays or from a source of batches
(:mod:`moekit.data`), and on several processes with torch.distributed
(DistributedDataParallel, with a distributed sampler dealing each rank its
share of every global minibatch; helpers in
:mod:`moekit.training.distributed`).
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
from .distributed import (
    all_reduce_sum,
    broadcast_module,
    broadcast_object,
    data_parallel,
    rank_minibatches,
    row_range,
    same_on_all_ranks,
    tensor_digest,
    world,
)
from .gradient import rows_or_source, validation_parts
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




def _not_worse(lp: torch.Tensor, ref: torch.Tensor, w: torch.Tensor, reduce: Callable | None = None) -> bool:
    """Whether per-row log-likelihoods ``lp`` are within one paired standard error of ``ref`` (or better).

    ``reduce``: sums over the ranks (each holding some of the rows), so every rank gets the same answer.
    """
    red = (lambda t: t) if reduce is None else reduce  # noqa: E731
    d = (lp - ref).double()
    w = w.double()
    sw = red(w.sum())
    m = red((w * d).sum()) / sw
    var = red((w * (d - m) ** 2).sum()) / sw
    n_eff = sw**2 / red((w**2).sum())
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


def _checked_rows(model: MixtureDensityNetwork, x, y, sample_weight, has_extras: bool = False):
    """x, y and weights as the network's tensors, checked, with the rows of weight 0 dropped.

    Shapes
    ------
    x (n, d_x) [any shape with a custom trunk]; y (n,) or (n, d_y); sample_weight (n,).
    """
    if has_extras:
        raise ValueError("fit_mdn reads batches of x, y and row weights only; this source's batches carry "
                         "offset/trials/lower/upper columns, which a mixture density network does not take")
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
    return x, y, w


def _check_same_rows(group, x, y, w) -> None:
    """Raise on every rank unless every rank of ``group`` holds the same rows (a digest of their bytes)."""
    if not same_on_all_ranks(tensor_digest(x, y, w), group):
        raise ValueError("with process_group every rank passes the same, whole data set (the distributed sampler "
                         "gives each rank its share of every minibatch), but the ranks' x, y or weights differ; "
                         "pass the full data on every rank, not a shard")


def _shuffled_minibatches(model, x, z, w, gen, batch_size: int, input_noise: float, target_noise: float):
    """One epoch over rows held in memory: shuffled (one gather), noise added, then slices of ``batch_size``.

    Yields ``(x, z, weight or None, None)``: the weight is None when every
    row weighs 1 (the loss is then the plain mean).
    """
    device = x.device
    n = x.shape[0]
    unit = bool((w == 1).all())
    if batch_size >= n:  # full batch: the order does not matter
        xs, zs, ws = x, z, w
    else:  # one gather per epoch; the minibatches are slices
        order = torch.randperm(n, generator=gen, device=gen.device).to(device)
        xs, zs, ws = x[order], z[order], w[order]
    xs, zs = _add_noise(model, xs, zs, gen, input_noise, target_noise)
    for i in range(0, n, batch_size):
        yield xs[i : i + batch_size], zs[i : i + batch_size], (None if unit else ws[i : i + batch_size]), None


def _add_noise(model, xs, zs, gen, input_noise: float, target_noise: float, positions=None, n_all: int = 0):
    """Noise regularisation, in standardised units.

    With ``positions``: noise is drawn for all ``n_all`` positions of the
    epoch's global order (as one process draws it) and the rows at
    ``positions`` (this rank's) take theirs.
    """
    device = xs.device

    def draw(t):
        shape = t.shape if positions is None else (n_all,) + tuple(t.shape[1:])
        eps = torch.randn(shape, generator=gen, dtype=t.dtype, device=gen.device).to(device)
        return eps if positions is None else eps[positions]

    if input_noise > 0:
        eps = draw(xs)
        xs = xs + float(input_noise) * (eps * model.x_scale if model.standardizes_x else eps)
    if target_noise > 0:
        zs = zs + float(target_noise) * draw(zs)
    return xs, zs


class _MemoryTrain:
    """The training rows held in memory, dealt as minibatches each epoch.

    One process: shuffled minibatches of ``batch_size`` (:func:`_shuffled_minibatches`).
    With a process group: this rank's share of each global minibatch of ``batch_size``
    rows (:func:`rank_minibatches`), through a DistributedDataParallel wrapper whose
    backward pass averages the ranks' gradients.  Each rank's loss is its rows' weighted
    log-likelihood over the global minibatch's weight (times the number of ranks, which
    the average takes off), so the gradient is that of the global minibatch's weighted
    mean, as one process would take it.
    """

    def __init__(self, model, x, z, w, gen, batch_size, input_noise, target_noise, group, sampler_seed: int):
        self.model, self.x, self.z, self.w, self.gen = model, x, z, w, gen
        self.batch_size, self.input_noise, self.target_noise = batch_size, input_noise, target_noise
        self.group, self.sampler_seed = group, sampler_seed
        if group is None:
            self.forward = model.standardized_joint_log_prob
        else:
            self.forward = data_parallel(model, group, "standardized_joint_log_prob")

    def minibatches(self, epoch: int):
        if self.group is None:
            yield from _shuffled_minibatches(self.model, self.x, self.z, self.w, self.gen, self.batch_size,
                                             self.input_noise, self.target_noise)
            return
        rank, size = world(self.group)
        n = self.x.shape[0]
        rows, positions, b = rank_minibatches(n, self.batch_size, rank, size, self.sampler_seed, epoch)
        device = self.x.device
        rows_d, real = rows.to(device), (positions < n).to(device)
        xs, zs = self.x[rows_d], self.z[rows_d]
        ws = torch.where(real, self.w[rows_d], torch.zeros((), dtype=self.w.dtype, device=device))  # padding: weight 0
        xs, zs = _add_noise(self.model, xs, zs, self.gen, self.input_noise, self.target_noise,
                            positions=positions.to(device) % n, n_all=n)  # padding: any noise
        starts = range(0, rows.numel(), b)
        global_w = all_reduce_sum(torch.stack([ws[i : i + b].sum() for i in starts]), self.group)
        denom = (global_w / size).clamp_min(torch.finfo(ws.dtype).tiny)
        for j, i in enumerate(starts):
            yield xs[i : i + b], zs[i : i + b], ws[i : i + b], denom[j]


class _StreamTrain:
    """The training rows read from a source each epoch: each batch's rows shuffled, in minibatches of ``batch_size``."""

    def __init__(self, model, source, gen, batch_size, input_noise, target_noise):
        self.model, self.source, self.gen = model, source, gen
        self.batch_size, self.input_noise, self.target_noise = batch_size, input_noise, target_noise
        self.forward = model.standardized_joint_log_prob

    def minibatches(self, epoch: int):
        for batch in self.source:
            x, y, w = _checked_rows(self.model, batch.x, batch.y, batch.weight, has_extras=batch.has_extras)
            if x.shape[0]:
                yield from _shuffled_minibatches(self.model, x, self.model.standardize_y(y), w, self.gen,
                                                 self.batch_size, self.input_noise, self.target_noise)


class _Rows:
    """Rows the network is evaluated on: tensors held in memory, or a source read batch by batch.

    With a process group, each rank evaluates a contiguous share of the rows
    in memory (or its shard of a source) and the sums are all-reduced: every
    rank gets the same numbers.
    """

    def __init__(self, model, x=None, y=None, z=None, w=None, source=None, group=None):
        self.model, self.group, self.source = model, group, source
        self._weight = None
        if source is None:
            if group is not None:
                lo, hi = row_range(x.shape[0], group)
                x, y, z, w = x[lo:hi], y[lo:hi], z[lo:hi], w[lo:hi]
            self.x, self.y, self.z, self.w = x, y, z, w
        elif group is not None:
            self.source = source.shard(*world(group))

    def _pieces(self):
        """``(x, y, z, w)`` in pieces of at most ``_CHUNK`` rows (in memory) or by batch (a source)."""
        if self.source is None:
            for i in range(0, self.x.shape[0], _CHUNK):
                yield (self.x[i : i + _CHUNK], self.y[i : i + _CHUNK], self.z[i : i + _CHUNK], self.w[i : i + _CHUNK])
            return
        for batch in self.source:
            x, y, w = _checked_rows(self.model, batch.x, batch.y, batch.weight, has_extras=batch.has_extras)
            if x.shape[0]:
                yield x, y, self.model.standardize_y(y), w

    @property
    def weight(self) -> float:
        """The rows' total weight (over every rank)."""
        if self._weight is None:
            if self.source is None:
                self._weight = float(all_reduce_sum(self.w.sum(), self.group))
            else:
                self._weight = float(all_reduce_sum(sum(float(p[3].sum()) for p in self._pieces()), self.group))
        return self._weight

    @torch.no_grad()
    def sums(self, net) -> tuple[float, float]:
        """``sum(w * log p)`` in standardised units, and ``sum(w)``, over the rows (every rank)."""
        tot, ws = 0.0, 0.0
        for x, _, z, w in self._pieces():
            lp = torch.logsumexp(net.standardized_joint_log_prob(x, z), dim=-1)
            tot += float((w * lp).sum())
            ws += float(w.sum())
        if self.source is None:
            ws = float(self.w.sum())
        if self.group is not None:
            tot, ws = all_reduce_sum(torch.tensor([tot, ws], dtype=torch.float64), self.group).tolist()
        self._weight = ws
        return tot, ws

    def mean(self, net, jac: float) -> float:
        """The weighted mean log-likelihood in the user's units (NaN without rows)."""
        tot, ws = self.sums(net)
        return tot / ws - jac if ws > 0 else float("nan")

    @torch.no_grad()
    def lp(self, net) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows' log-likelihoods (standardised units) and their weights."""
        lps, ws = [], []
        for x, _, z, w in self._pieces():
            lps.append(torch.logsumexp(net.standardized_joint_log_prob(x, z), dim=-1))
            ws.append(w)
        if not lps:
            return torch.zeros(0, dtype=self.model.dtype, device=self.model.device), torch.zeros(
                0, dtype=self.model.dtype, device=self.model.device)
        return torch.cat(lps), (self.w if self.source is None else torch.cat(ws))

    @torch.no_grad()
    def usage(self, net) -> np.ndarray:
        """The share of the rows' weight each component explains (K,)."""
        if self.source is None and self.group is None:
            return net.component_usage(self.x, self.y, self.w).cpu().numpy()
        tot = torch.zeros(net.n_components, dtype=torch.float64, device=net.device)
        ws = 0.0
        for x, y, _, w in self._pieces():
            if x.shape[0]:
                tot += net.component_usage(x, y, w) * w.double().sum()
                ws += float(w.double().sum())
        tot = all_reduce_sum(torch.cat([tot, torch.tensor([ws], dtype=torch.float64, device=tot.device)]), self.group)
        return (tot[:-1] / tot[-1]).cpu().numpy()


def _validation_rows(model, validation, group) -> _Rows:
    """The rows of a ``validation`` argument: a source, or ``(x, y)`` / ``(x, y, sample_weight)`` arrays."""
    source, x, y, w = validation_parts(validation)
    if source is not None:
        return _Rows(model, source=source, group=group)
    x, y, w = _checked_rows(model, x, y, w)
    if x.shape[0] == 0:
        raise ValueError("validation has no rows of positive weight; pass some validation rows or leave it None")
    return _Rows(model, x, y, model.standardize_y(y), w, group=group)


def fit_mdn(
    model: MixtureDensityNetwork,
    x,
    y=None,
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
    validation=None,
    process_group=None,
    init_sample_rows: int = 1_000_000,
) -> MDNFitResult:
    """Train a mixture density network by minibatch Adam on the (weighted) negative log-likelihood, in place.

    Parameters
    ----------
    model : MixtureDensityNetwork
    x, y, sample_weight
        x (n, d_x) [or any shape with a custom trunk]; y (n,) for a scalar
        network, (n, d_y) otherwise; non-negative weights (n,).  Rows with
        weight 0 are dropped first.  Arrays are copied, never modified.
        Or x is a *source* of batches (:mod:`moekit.data`; y and
        sample_weight None): a source held in memory
        (``source.in_memory``, e.g. :class:`~moekit.data.ArrayBatches`) is
        gathered and trained exactly as its arrays would be (same result);
        any other source is read again every epoch, each of its batches
        shuffled and cut into minibatches of ``batch_size`` rows (a batch
        smaller than that is one minibatch), so memory holds one batch at a
        time.  With a streamed source there is no random validation split
        (pass ``validation``), the standardisation and ``init`` are computed
        on ``source.sample(init_sample_rows, seed)`` (every row when they
        fit), and re-seeding (``reseed_dead``) uses that sample's rows.
    max_epochs : int, default=1000
    batch_size : int, default=64
        Rows per minibatch; with a process group, rows per *global*
        minibatch, of which each rank takes ``ceil(batch_size / world_size)``.
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
        return ``True`` to stop (on any rank: every rank stops).
    validation : source or tuple, optional
        Validation rows for early stopping instead of the random split
        (``validation_fraction`` is then not used): a source of batches
        (held in memory, or read again each epoch) or ``(x_val, y_val)`` /
        ``(x_val, y_val, sample_weight_val)``.  Needs ``early_stopping``.
        Without it a streamed source has no validation rows: the learning
        rate schedule and early stopping then watch the training
        log-likelihood (as for data of fewer than 20 rows).
    process_group : torch.distributed ProcessGroup, optional
        Train with torch.distributed (``torch.distributed.group.WORLD`` for
        the default group; ``None``, the default, is one process even when
        torch.distributed is initialised).  Every rank passes the same, whole
        data set in memory (arrays or an in-memory source; this is checked);
        the network is wrapped in
        :class:`~torch.nn.parallel.DistributedDataParallel`, which copies
        rank 0's parameters to every rank; each epoch a
        :class:`~torch.utils.data.distributed.DistributedSampler` (seeded
        alike on every rank, ``set_epoch`` each epoch) deals each rank its
        share of every global minibatch of ``batch_size`` rows.  The loss of
        a global minibatch is its weighted mean, exactly as one process
        would take it on the same rows (the rows repeated to pad the
        sampler's order weigh 0), so training equals one process's training
        on the sampler's global order to rounding: a group of one process
        (``torch.distributed.new_group([0])``) reproduces an N-rank run
        (``None`` shuffles its own way).  The seed is rank 0's;
        losses, validation scores and usage are summed over the ranks, so
        every rank reports the same history and takes the same decisions
        (early stopping, learning rate, re-seeding).  Validation rows are
        split among the ranks.  A rank that fails or hangs ends the others'
        collectives after the ``timeout=`` given to
        ``torch.distributed.init_process_group``.  A streamed source is not
        supported with a process group.
    init_sample_rows : int, default=1_000_000
        With a streamed source: the rows of the sample that ``init`` and the
        standardisation are computed on.

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
    x (n, d_x); y (n,) or (n, d_y); sample_weight (n,); each batch of a
    source: x (b, d_x), y (b,) or (b, d_y), weight (b,).

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

    From a source of batches (here in memory: the same fit as the arrays):

    >>> from moekit.data import ArrayBatches
    >>> source = ArrayBatches(torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32),
    ...                       batch_size=100)
    >>> mdn2 = MixtureDensityNetwork(1, n_components=3, hidden_layer_sizes=(16,))
    >>> fit_mdn(mdn2, source, max_epochs=20, random_state=0).history == res.history
    True
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
    check_int(init_sample_rows, "init_sample_rows", 1)
    if validation is not None and not early_stopping:
        raise ValueError("validation rows serve early stopping, but early_stopping=False; pass early_stopping=True "
                         "or leave validation None")
    group = process_group
    rank, n_ranks = world(group)
    reduce = (lambda t: t) if group is None else (lambda t: all_reduce_sum(t, group))  # noqa: E731
    device = model.device
    x, y, sample_weight, source = rows_or_source(x, y, sample_weight, group)

    rng = np.random.default_rng(random_state)
    if source is None:
        x, y, w = _checked_rows(model, x, y, sample_weight)
        n = x.shape[0]
        if group is not None:
            _check_same_rows(group, x, y, w)
            rng = np.random.default_rng(broadcast_object(int(rng.integers(0, 2**63 - 1)), 0, group))
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
        n_val = int(round(validation_fraction * n)) if (early_stopping and n >= 20 and validation is None) else 0
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
        train = _MemoryTrain(model, xt, zt, wt, gen, batch_size, input_noise, target_noise, group,
                             sampler_seed=int(rng.integers(0, 2**31 - 1)) if group is not None else 0)
        train_rows = _Rows(model, xt, yt, zt, wt, group=group)
        val_rows = _Rows(model, xv, yv, model.standardize_y(yv), wv, group=group) if n_val else None
        reseed_x, reseed_y = xt, yt
    else:
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
        start = source.sample(init_sample_rows, int(rng.integers(0, 2**31 - 1)))
        reseed_x, reseed_y, ws = _checked_rows(model, start.x, start.y, start.weight, has_extras=start.has_extras)
        if reseed_x.shape[0] == 0:
            raise ValueError("the source has no rows of positive weight (none in its start sample of up to "
                             "init_sample_rows rows): nothing to train on (an empty file, folder or shard?)")
        if init is not None:
            model.reset_parameters(gen)
            model.fit_standardization(reseed_x, reseed_y, ws)
            if init == "gmm":
                model.init_from_targets(reseed_y, ws, random_state=int(rng.integers(0, 2**31 - 1)),
                                        output_scale=output_init_scale)
        train = _StreamTrain(model, source, gen, batch_size, input_noise, target_noise)
        train_rows = _Rows(model, source=source)
        val_rows = None
    if validation is not None:
        val_rows = _validation_rows(model, validation, group)
    n_val = val_rows is not None
    jac = float(model.log_jacobian())

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

    history = [train_rows.mean(model, jac)]
    wt_sum = train_rows.weight
    val_history = [val_rows.mean(model, jac)] if n_val else None
    if not math.isfinite(history[0]):
        raise DivergenceError(f"the initial training log-likelihood is {history[0]}; check the data scale")
    start = val_history[0] if n_val else history[0]
    stopper = EarlyStopping(patience, min_delta=_MIN_DELTA, best=start)
    if n_val:
        stopper.snapshot(model, 0)
    best_lp = val_rows.lp(model)[0] if n_val else None
    scheduler = _lr_schedule(opt, lr_decay_patience, float(lr_decay), start)
    wv_sum = val_rows.weight if n_val else 1.0
    usage_hist: list[np.ndarray] = []
    reseeded: list[tuple[int, int]] = []
    n_reseeds = np.zeros(model.n_components, dtype=int)
    converged = False
    epoch = 0
    bar = tqdm(total=max_epochs, desc="MDN", unit="epoch", leave=False) if (verbose and rank == 0) else None
    k = model.n_components
    epoch_time = 0.0
    for epoch in range(1, max_epochs + 1):
        te = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        usage = torch.zeros(k, dtype=torch.float64, device=device)
        for xb, zb, wb, denom in train.minibatches(epoch):
            joint = train.forward(xb, zb)
            lp = torch.logsumexp(joint, dim=-1)
            if wb is None:  # unit weights
                loss = -lp.mean()
            else:
                loss = -(wb * lp).sum() / (wb.sum() if denom is None else denom)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                clip_grad_norm_(params, float(max_grad_norm))
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            with torch.no_grad():
                r = torch.exp(joint.detach() - lp.detach()[:, None])  # responsibilities (softmax)
                if wb is None:
                    loss_sum += lp.detach().sum().double()
                    usage += r.sum(0).double()
                else:
                    loss_sum += (wb * lp.detach()).sum().double()
                    usage += (wb[:, None] * r).sum(0).double()
        if group is not None:  # every rank's share of the epoch's rows
            both = all_reduce_sum(torch.cat([loss_sum[None], usage]), group)
            loss_sum, usage = both[0], both[1:]
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
            lp_v, wv = val_rows.lp(evalnet)
            v = float(reduce((wv * lp_v).sum())) / wv_sum - jac
            val_history.append(v)
            if not math.isfinite(v):
                raise DivergenceError(f"the validation log-likelihood became {v} at epoch {epoch}")
        epoch_time += time.perf_counter() - te
        monitored = v if n_val else ll
        if stopper.step(monitored, epoch):
            if n_val:
                stopper.snapshot(evalnet, epoch)
                best_lp = lp_v
        elif n_val and keep == "recent" and _not_worse(lp_v, best_lp, wv, None if group is None else reduce):
            stopper.snapshot(evalnet, epoch)
        if scheduler is not None:
            scheduler.step(monitored)
        if reseed_dead and epoch >= 5 and epoch <= max_epochs - patience:
            dead = [c for c in range(k) if usage_np[c] < dead_threshold and n_reseeds[c] < max_reseeds]
            if dead and len(dead) < k:
                model.reseed_components(dead, reseed_x, reseed_y, optimizer=opt)
                broadcast_module(model, 0, group)  # every rank re-seeded alike; rank 0's copy settles ties
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
        stop = callback is not None and bool(callback(epoch, ll, v, evalnet))
        if group is not None:  # a callback that stops one rank stops them all
            stop = all_reduce_sum(float(stop), group) > 0
        if stop:
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
        history.append(train_rows.mean(model, jac))
    elif ema is not None:
        model.load_state_dict(evalnet.state_dict())
        history.append(train_rows.mean(model, jac))
    elif not early_stopping:
        best_epoch = epoch
    if not early_stopping:
        converged = True
    model.eval()
    final_usage = train_rows.usage(model)
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
    if source is None and validation is None:  # every row, train and validation split together
        mean = _Rows(model, x, y, model.standardize_y(y), w, group=group).mean(model, jac)
        total_weight = float(w.sum())
    else:
        tot, total_weight = train_rows.sums(model)
        if n_val:
            tot_v, w_v = val_rows.sums(model)
            tot, total_weight = tot + tot_v, total_weight + w_v
        mean = tot / total_weight - jac
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
