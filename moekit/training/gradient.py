"""Gradient training on the negative log-likelihood: from arrays, a source of batches, or on several processes.

Sources follow :mod:`moekit.data`; distributed training wraps the model in
DistributedDataParallel and deals each rank its share of every global
minibatch with a distributed sampler (:mod:`moekit.training.distributed`).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Callable

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from .._validation import DivergenceError, check_fit_inputs, check_int, model_device, model_dtype
from .distributed import (
    all_reduce_sum,
    broadcast_object,
    data_parallel,
    rank_minibatches,
    row_range,
    same_on_all_ranks,
    tensor_digest,
    world,
)
from .init import initial_responsibilities
from .passes import is_source
from .result import FitResult
from .stopping import EarlyStopping

__all__ = ["fit_gradient"]


def rows_or_source(x, y, sample_weight, group=None):
    """What a gradient trainer was given: ``(x, y, sample_weight, None)`` for rows in memory (arrays, or an
    in-memory source's batches joined), ``(None, None, None, source)`` for a source read from files.

    Raises ValueError for a source given with y or weights, arrays without y, or a source read from
    files with a process group (distributed training holds the rows in memory on every rank).
    """
    if not is_source(x):
        if y is None:
            raise ValueError("y is required when x is an array (or pass a source of batches as x)")
        return x, y, sample_weight, None
    if y is not None or sample_weight is not None:
        raise ValueError("x is a source of batches, which carries y and the row weights: leave y and "
                         "sample_weight None")
    if getattr(x, "in_memory", False):
        return (*in_memory_rows(x), None)
    if group is not None:
        raise ValueError("process_group trains on rows held in memory, which every rank passes whole (arrays or "
                         "an in-memory source such as moekit.data.ArrayBatches); got a source read from files")
    return None, None, None, x


def in_memory_rows(source):
    """x, y and row weights of every batch of a source, concatenated (a source of one batch: its own tensors).

    For sources held in memory (``source.in_memory``), whose rows a trainer
    may shuffle as arrays.  The batches must be model-level (no
    offset/trials/lower/upper fields).

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y); weight (n,).

    Examples
    --------
    >>> from moekit.data import ArrayBatches
    >>> x, y, w = in_memory_rows(ArrayBatches(torch.zeros(5, 2), torch.zeros(5), batch_size=2))
    >>> tuple(x.shape), w.tolist()
    ((5, 2), [1.0, 1.0, 1.0, 1.0, 1.0])
    """
    batches = list(source)
    if not batches:
        raise ValueError("the source yielded no batches: there are no rows to fit (an empty file, folder or shard)")
    if any(b.has_extras for b in batches):
        raise ValueError("the trainers read model-level batches of x, y and row weights; this source's batches carry "
                         "offset/trials/lower/upper columns: fit with an estimator, which folds them into x and y")
    if len(batches) == 1:
        return batches[0].x, batches[0].y, batches[0].weight
    return (torch.cat([b.x for b in batches]), torch.cat([b.y for b in batches]),
            torch.cat([b.weight for b in batches]))


def _checked_batch(batch, dtype, device):
    """A source's batch as checked tensors of the model's dtype and device (see :func:`check_fit_inputs`)."""
    if batch.has_extras:
        raise ValueError("the trainers read model-level batches of x, y and row weights; this source's batches carry "
                         "offset/trials/lower/upper columns: fit with an estimator, which folds them into x and y")
    return check_fit_inputs(batch.x, batch.y, batch.weight, dtype=dtype, device=device)


def _shuffled(x, y, w, gen, batch_size: int):
    """Minibatches of rows in memory in a fresh random order: ``(x, y, w, normaliser)``."""
    order = torch.randperm(x.shape[0], generator=gen, device=gen.device).to(x.device)
    for i in range(0, x.shape[0], batch_size):
        b = order[i : i + batch_size]
        wb = w[b]
        yield x[b], y[b], wb, wb.sum().clamp_min(1e-300)


class _MemoryTrain:
    """The training rows held in memory.

    One process: shuffled minibatches; L-BFGS on every row.  With a process
    group: this rank's share of each global minibatch (:func:`rank_minibatches`,
    padding rows of weight 0) through a DistributedDataParallel wrapper, each
    rank's loss divided by the global minibatch's weight over the number of
    ranks, so that DDP's average of the gradients is the gradient of the
    global minibatch's weighted mean; L-BFGS takes a contiguous share of the
    rows per rank and every rank sees the global loss.
    """

    def __init__(self, model, x, y, w, gen, batch_size: int, group, sampler_seed: int):
        self.model, self.x, self.y, self.w, self.gen = model, x, y, w, gen
        self.batch_size, self.group, self.sampler_seed = batch_size, group, sampler_seed
        if group is None:
            self.forward = model.log_prob
        else:  # a model may have trainable parameters that log_prob leaves unused: a static graph allows it
            self.forward = data_parallel(model, group, "log_prob", static_graph=True)

    def minibatches(self, epoch: int):
        if self.group is None:
            yield from _shuffled(self.x, self.y, self.w, self.gen, self.batch_size)
            return
        rank, size = world(self.group)
        n = self.x.shape[0]
        rows, positions, b = rank_minibatches(n, self.batch_size, rank, size, self.sampler_seed, epoch)
        rows_d, real = rows.to(self.x.device), (positions < n).to(self.x.device)
        xs, ys = self.x[rows_d], self.y[rows_d]
        ws = torch.where(real, self.w[rows_d], torch.zeros((), dtype=self.w.dtype, device=self.w.device))
        starts = range(0, rows.numel(), b)
        global_w = all_reduce_sum(torch.stack([ws[i : i + b].sum() for i in starts]), self.group)
        denom = (global_w / size).clamp_min(1e-300)
        for j, i in enumerate(starts):
            yield xs[i : i + b], ys[i : i + b], ws[i : i + b], denom[j]

    def full_batch_closure(self, opt, total_weight: float):
        """L-BFGS's closure: the weighted mean negative log-likelihood of every row (and its gradient)."""
        x, y, w = self.x, self.y, self.w
        if self.group is None:

            def closure():
                opt.zero_grad(set_to_none=True)
                loss = -(w * self.model.log_prob(x, y)).sum() / total_weight
                loss.backward()
                return loss

            return closure
        size = world(self.group)[1]
        lo, hi = row_range(x.shape[0], self.group)

        def closure():
            opt.zero_grad(set_to_none=True)
            loss = -(w[lo:hi] * self.forward(x[lo:hi], y[lo:hi])).sum() / (total_weight / size)
            loss.backward()  # DDP averages the ranks' gradients: the gradient of the global mean
            return all_reduce_sum(loss.detach(), self.group) / size

        return closure


class _StreamTrain:
    """The training rows read from a source: each batch's rows shuffled, in minibatches; L-BFGS over a pass."""

    def __init__(self, model, source, gen, batch_size: int, dtype, device):
        self.model, self.source, self.gen, self.batch_size = model, source, gen, batch_size
        self.dtype, self.device = dtype, device
        self.forward = model.log_prob

    def _batches(self):
        for batch in self.source:
            x, y, w = _checked_batch(batch, self.dtype, self.device)
            if x.shape[0]:
                yield x, y, w

    def minibatches(self, epoch: int):
        for x, y, w in self._batches():
            yield from _shuffled(x, y, w, self.gen, self.batch_size)

    def full_batch_closure(self, opt, total_weight: float):
        """L-BFGS's closure: one pass over the source, the batches' gradients accumulated."""

        def closure():
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for x, y, w in self._batches():
                loss = -(w * self.model.log_prob(x, y)).sum() / total_weight
                loss.backward()
                total = total + loss.detach()
            return total

        return closure


class _Rows:
    """Rows the model is evaluated on: tensors in memory, or a source read batch by batch.

    With a process group each rank evaluates a contiguous share of the rows in
    memory (or its shard of a source) and the sums are all-reduced: every
    rank gets the same numbers.
    """

    def __init__(self, model, x=None, y=None, w=None, source=None, group=None):
        self.model, self.group, self.source = model, group, source
        self._weight = None
        if source is None:
            if group is not None:
                lo, hi = row_range(x.shape[0], group)
                x, y, w = x[lo:hi], y[lo:hi], w[lo:hi]
            self.x, self.y, self.w = x, y, w
        elif group is not None:
            self.source = source.shard(*world(group))

    @torch.no_grad()
    def sums(self) -> tuple[float, float]:
        """``sum(w * log p)`` and ``sum(w)`` over the rows (every rank)."""
        if self.source is None:
            ws = float(self.w.sum())
            tot = float((self.w * self.model.log_prob(self.x, self.y)).sum()) if self.x.shape[0] else 0.0
        else:
            tot, ws = 0.0, 0.0
            dtype, device = model_dtype(self.model), model_device(self.model)
            for batch in self.source:
                x, y, w = _checked_batch(batch, dtype, device)
                if x.shape[0]:
                    tot += float((w * self.model.log_prob(x, y)).sum())
                    ws += float(w.sum())
        if self.group is not None:
            tot, ws = all_reduce_sum(torch.tensor([tot, ws], dtype=torch.float64), self.group).tolist()
        self._weight = ws
        return tot, ws

    def mean(self) -> float:
        """The weighted mean log-likelihood (NaN when the weights sum to 0)."""
        tot, ws = self.sums()
        return tot / ws if ws > 0 else float("nan")

    @property
    def weight(self) -> float:
        """The rows' total weight (over every rank)."""
        if self._weight is None:
            self.sums()
        return self._weight


def validation_parts(validation) -> tuple:
    """A trainer's ``validation`` argument as ``(source, None, None, None)`` for a source read from files, or
    ``(None, x, y, sample_weight)`` for rows in memory (an in-memory source, or ``(x, y)`` / ``(x, y, w)``)."""
    if is_source(validation):
        if not getattr(validation, "in_memory", False):
            return validation, None, None, None
        return (None, *in_memory_rows(validation))
    if isinstance(validation, (tuple, list)) and len(validation) in (2, 3):
        return (None, *(tuple(validation) + (None,))[:3])
    raise TypeError("validation must be a source of batches or a tuple (x_val, y_val) or (x_val, y_val, "
                    f"sample_weight_val), got {type(validation).__name__}")


def _validation_rows(model, validation, group, dtype, device) -> _Rows:
    """The rows of a ``validation`` argument: a source, or ``(x, y)`` / ``(x, y, sample_weight)`` arrays."""
    source, x, y, w = validation_parts(validation)
    if source is not None:
        return _Rows(model, source=source, group=group)
    x, y, w = check_fit_inputs(x, y, w, dtype=dtype, device=device)
    if not float(w.sum()) > 0:
        raise ValueError("validation has no rows of positive weight; pass some validation rows or leave it None")
    return _Rows(model, x, y, w, group=group)


def fit_gradient(
    model,
    x,
    y=None,
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
    validation=None,
    process_group=None,
    init_sample_rows: int = 1_000_000,
) -> FitResult:
    """Fit any differentiable conditional model by minimising the weighted NLL, in place.

    Parameters
    ----------
    model : torch.nn.Module
        Anything with ``log_prob(x, y) -> (n,)`` (a ``MixtureOfExperts``, an
        expert, a hierarchy).
    x, y, sample_weight
        As in :func:`~moekit.fit_em`: arrays, or x a *source* of batches
        (:mod:`moekit.data`; y and sample_weight None).  A source held in
        memory (``source.in_memory``) is gathered and trained exactly as its
        arrays would be; any other source is read again every epoch (and
        for every evaluation), each of its batches shuffled and cut into
        minibatches of ``batch_size`` rows (L-BFGS: each closure call is one
        pass).  A streamed source has no random validation split (pass
        ``validation``) and ``init`` is computed on
        ``source.sample(init_sample_rows, seed)``.
    optimizer : {"adam", "lbfgs"}
        Minibatch Adam, or full-batch L-BFGS with a strong-Wolfe line search
        (one "epoch" = one L-BFGS call of up to 20 iterations).
    learning_rate : float, optional
        Default 1e-2 for Adam, 1.0 for L-BFGS.
    max_epochs : int
    batch_size : int
        Adam minibatch size; with a process group, the *global* minibatch,
        of which each rank takes ``ceil(batch_size / world_size)`` rows.
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
    validation : source or tuple, optional
        Validation rows for early stopping instead of the random split
        (``validation_fraction`` is then not used): a source of batches or
        ``(x_val, y_val)`` / ``(x_val, y_val, sample_weight_val)``.  Needs
        ``early_stopping``.  Without it a streamed source stops on ``tol``.
    process_group : torch.distributed ProcessGroup, optional
        Train with torch.distributed (``torch.distributed.group.WORLD`` for
        the default group; ``None``, the default, is one process even when
        torch.distributed is initialised).  Every rank passes the same, whole
        data set in memory (arrays or an in-memory source; checked); the
        model is wrapped in
        :class:`~torch.nn.parallel.DistributedDataParallel` around its
        ``log_prob`` (rank 0's parameters are copied to every rank).  Adam:
        a :class:`~torch.utils.data.distributed.DistributedSampler` (same
        seed, ``set_epoch`` each epoch) deals each rank its share of every
        global minibatch, whose loss is its weighted mean as one process
        would take it (padding rows weigh 0): a group of one process
        reproduces an N-rank run to rounding.  L-BFGS: each rank takes a
        contiguous share of the rows and every rank sees the global loss.
        Evaluations are split among the ranks and summed, so every rank
        reports the same history and stops at the same epoch.  A failed
        rank ends the others' collectives after the ``timeout=`` of
        ``torch.distributed.init_process_group``.  A streamed source is not
        supported with a process group.
    init_sample_rows : int, default=1_000_000
        With a streamed source: the rows of the sample ``init`` is computed on.

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
    (n, K); ``model.log_prob(x, y)`` must return (n,); each batch of a
    source: x (b, d_x), y (b,) or (b, d_y), weight (b,).

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

    From a source of batches (a stand-in for files: read again every epoch):

    >>> from moekit.data import ArrayBatches
    >>> class Streamed(ArrayBatches):
    ...     in_memory = False
    >>> expert2 = LinearGaussianExpert(n_features=1)
    >>> res2 = fit_gradient(expert2, Streamed(x, y, batch_size=5), optimizer="lbfgs")
    >>> [round(v, 2) for v in expert2.coef.detach().flatten().tolist()]
    [1.01, 2.0]
    """
    t0 = time.perf_counter()
    check_int(init_sample_rows, "init_sample_rows", 1)
    if validation is not None and not early_stopping:
        raise ValueError("validation rows serve early stopping, but early_stopping=False; pass early_stopping=True "
                         "or leave validation None")
    group = process_group
    rank, n_ranks = world(group)
    dtype, device = model_dtype(model), model_device(model)
    x, y, sample_weight, source = rows_or_source(x, y, sample_weight, group)
    if source is None:
        x, y, w = check_fit_inputs(x, y, sample_weight, dtype=dtype, device=device)
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
    rng = np.random.default_rng(random_state)
    if source is None:
        n = x.shape[0]
        if group is not None:
            if not same_on_all_ranks(tensor_digest(x, y, w), group):
                raise ValueError("with process_group every rank passes the same, whole data set (the distributed "
                                 "sampler gives each rank its share of every minibatch), but the ranks' x, y or "
                                 "weights differ; pass the full data on every rank, not a shard")
            rng = np.random.default_rng(broadcast_object(int(rng.integers(0, 2**63 - 1)), 0, group))
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**31 - 1)))
        if init is not None:
            kind = "random" if isinstance(init, str) and init == "auto" else init
            r = initial_responsibilities(x, y, model.n_experts, kind, int(rng.integers(0, 2**31 - 1)), w)
            model.init_from_responsibilities(x, y, w[:, None] * r)
        n_val = int(round(validation_fraction * n)) if (early_stopping and validation is None) else 0
        if n_val >= n:
            n_val = 0
        perm = torch.as_tensor(rng.permutation(n), device=x.device)
        tr, va = perm[n_val:], perm[:n_val]
        xt, yt, wt = x[tr], y[tr], w[tr]
        xv, yv, wv = x[va], y[va], w[va]
        train = _MemoryTrain(model, xt, yt, wt, gen, batch_size, group,
                             sampler_seed=int(rng.integers(0, 2**31 - 1)) if group is not None else 0)
        train_rows = _Rows(model, xt, yt, wt, group=group)
        val_rows = _Rows(model, xv, yv, wv, group=group) if n_val else None
    else:
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**31 - 1)))
        if init is not None:
            if not isinstance(init, str):
                raise ValueError("init as an array of responsibilities (n, K) needs the rows in memory; with a "
                                 "source pass init='kmeans', 'random' or 'auto'")
            kind = "random" if init == "auto" else init
            start = source.sample(init_sample_rows, int(rng.integers(0, 2**31 - 1)))
            xs, ys, ws = _checked_batch(start, dtype, device)
            r = initial_responsibilities(xs, ys, model.n_experts, kind, int(rng.integers(0, 2**31 - 1)), ws)
            model.init_from_responsibilities(xs, ys, ws[:, None] * r)
        train = _StreamTrain(model, source, gen, batch_size, dtype, device)
        train_rows = _Rows(model, source=source)
        val_rows = None
    if validation is not None:
        val_rows = _validation_rows(model, validation, group, dtype, device)
    n_val = val_rows is not None

    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=1e-2 if learning_rate is None else learning_rate, weight_decay=weight_decay)
    else:
        opt = torch.optim.LBFGS(
            params, lr=1.0 if learning_rate is None else learning_rate, max_iter=20, line_search_fn="strong_wolfe"
        )
    history = [train_rows.mean()]
    if source is not None and not train_rows.weight > 0:
        raise ValueError("the source has no rows of positive weight: nothing to train on (an empty file, folder "
                         "or shard?)")
    wt_sum = train_rows.weight if train_rows.weight > 0 else 1.0
    val_history = [val_rows.mean()] if n_val else None
    stopper = None
    if n_val:
        stopper = EarlyStopping(patience, min_delta=tol, best=val_history[0])
        stopper.snapshot(model, 0)
    converged = False
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        if optimizer == "adam":
            for xb, yb, wb, denom in train.minibatches(epoch):
                opt.zero_grad(set_to_none=True)
                loss = -(wb * train.forward(xb, yb)).sum() / denom
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                opt.step()
        else:
            opt.step(train.full_batch_closure(opt, wt_sum))
        ll = train_rows.mean()
        if not math.isfinite(ll):
            raise DivergenceError(
                f"the training log-likelihood became {ll} at epoch {epoch}; lower learning_rate "
                "or standardise the data"
            )
        history.append(ll)
        if callback is not None:
            callback(epoch, ll, model)
        v = val_rows.mean() if n_val else None
        if verbose and epoch % verbose == 0 and rank == 0:
            msg = f"epoch {epoch:4d}  train mean log-likelihood {ll:.6f}"
            if n_val:
                msg += f"  validation {v:.6f}"
            print(msg)
        if n_val:
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
        history.append(train_rows.mean())
    if not converged and max_epochs > 0:
        warnings.warn(
            f"gradient training did not converge in max_epochs={max_epochs} epochs; "
            "increase max_epochs or the learning rate",
            ConvergenceWarning,
            stacklevel=2,
        )
    if source is None and validation is None:  # every row, train and validation split together
        tot, total_weight = _Rows(model, x, y, w, group=group).sums()
    else:
        tot, total_weight = train_rows.sums()
        if n_val:
            tot_v, w_v = val_rows.sums()
            tot, total_weight = tot + tot_v, total_weight + w_v
    mean = tot / total_weight if total_weight > 0 else float("nan")
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
        train_weight=train_rows.weight,
    )
