"""Passes over a source of batches: the E-step's summed statistics, and the M-step's further passes.

Every EM iteration is one pass of :meth:`~moekit.MixtureOfExperts.suff_stats`
over the batches of a source, summed (and all-reduced across ranks).  A Newton
/ IRLS / ECM step whose full step the next E-step rejects (``fit_em`` keeps a
step that does not lower the log-likelihood) is retaken with more passes: its
statistics at the next point, or its objective at a step-halving trial point,
over the weighted data of the same E-step.  For a source held in memory those weighted
data are kept from the E-step (:class:`moekit._mstep.Passes`); for a source
read from files they are made again, batch by batch, by a frozen copy of the
model at the E-step's parameters (:class:`SourcePasses`), so the numbers are
the same and peak memory stays bounded by the batch size.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Iterator

import torch

from .._mstep import Passes, uses_trial_objective
from .._validation import model_device, model_dtype
from ..data import Batch
from ..stats import SuffStats
from .inputs import check_model_inputs

__all__ = ["CheckedSource", "SourcePasses", "e_step_pass", "is_source", "iteration_m_step", "verifiable",
           "verified_m_step"]


def is_source(obj) -> bool:
    """Whether ``obj`` follows the source protocol of :mod:`moekit.data.batch` (iterable of batches, shard, sample)."""
    return (not isinstance(obj, torch.Tensor) and hasattr(obj, "__iter__") and callable(getattr(obj, "shard", None))
            and callable(getattr(obj, "sample", None)))


def _reduced(reduce: Callable | None, value):
    return value if reduce is None else reduce(value)


def e_step_pass(model, source, reduce: Callable | None = None):
    """One E-step over every batch of ``source``: the summed statistics and the passes for the M-step.

    Parameters
    ----------
    model : MixtureOfExperts
    source : source of model-level batches (see :mod:`moekit.data.batch`)
        Or a list of ``(x, y, weight)`` triples (held in memory).
    reduce : callable, optional
        Applied to every sum over this process's batches (an all-reduce
        across ranks: ``lambda s: s.all_reduce(group)``); statistics and
        scalar objective tensors are passed to it.

    Returns
    -------
    stats : SuffStats
        ``model.suff_stats`` summed over the batches (and reduced).
    passes : Passes or SourcePasses
        The M-step's further passes: the weighted data kept, for a source in
        memory; the source read again at the frozen E-step parameters,
        otherwise.

    Shapes
    ------
    Each batch: x (b, d_x), y (b,) or (b, d_y), weight (b,).
    """
    keep = bool(getattr(source, "in_memory", isinstance(source, (list, tuple))))  # a list of batches is in memory
    data: list[dict] = []
    stats = 0
    for batch in source:
        if not isinstance(batch, Batch):  # an (x, y, weight) triple
            batch = Batch(*batch)
        d: dict | None = {} if keep else None
        stats = stats + model.suff_stats(batch.x, batch.y, batch.weight, data=d)
        if keep:
            data.append(d)
    if isinstance(stats, int):
        raise ValueError("the source yielded no batches: there are no rows to fit (an empty file, folder or shard)")
    stats = _reduced(reduce, stats)
    if keep:
        return stats, Passes(data, reduce=reduce)
    return stats, SourcePasses(model, source, reduce=reduce)


def verifiable(m) -> bool:
    """Whether the M-step may be verified by the next E-step's likelihood (:func:`verified_m_step`): every
    component has statistics and takes one step per M-step."""
    if not getattr(m, "has_suff_stats", False):
        return False
    return all(getattr(c, "m_step_exact", True) or getattr(c, "max_m_steps", 1) == 1 for _, c in m.components())


def verified_m_step(m, batches, reduce: Callable | None, total: float, stats, passes, mean_ll: float):
    """The M-step checked by the likelihood it reaches instead of trial passes over the data.

    Every component takes its step from the E-step's statistics alone (exact components their
    exact update, Newton / ECM components one full step).  The next E-step, which EM needs anyway,
    then gives the new log-likelihood: if it did not fall, the step is kept and that E-step returned
    (so a Newton step costs no pass of its own over the data); if it fell (or is not finite), the
    parameters are put back and the M-step checked by trial objectives is taken instead (step-halving
    on each component's own objective), whose E-step the caller makes.  Both keep the
    log-likelihood from decreasing; they take the same step whenever the full step raises each
    component's objective.

    ``batches``, ``reduce``: as for :func:`e_step_pass`; ``total``: the data's total weight; ``stats``, ``passes``
    and ``mean_ll``: the E-step at the current parameters (``mean_ll`` per unit weight).

    Returns the new point's ``(stats, passes)``, or None when the checked M-step was taken.
    """
    before = {k: v.detach().clone() for k, v in m.state_dict().items()}
    m.m_step(stats, None)
    try:
        new = e_step_pass(m, batches, reduce)
        ll = float(new[0]["loglik"]) / total
    except (RuntimeError, ValueError, ArithmeticError):  # e.g. a failed factorisation at a wild step
        ll = float("nan")
    if math.isfinite(ll) and ll >= mean_ll - 1e-13 * (1.0 + abs(mean_ll)):
        return new
    with torch.no_grad():
        for k, v in m.state_dict().items():
            v.copy_(before[k])
    m.m_step(stats, passes)
    return None


def iteration_m_step(m, batches, reduce: Callable | None, total: float, stats, passes, verified: bool):
    """The M-step of one EM iteration from its E-step ``(stats, passes)``, as :func:`~moekit.fit_em` and the start
    race take it.

    Nested experts whose share vanished are pruned first (each pruning makes a new E-step), then the
    M-step is :func:`verified_m_step` against the log-likelihood after pruning where ``verified``
    (:func:`verifiable`), else the one checked by trial objectives.  ``batches``, ``reduce``,
    ``total``: as for :func:`verified_m_step`.

    Returns the new point's ``(stats, passes)`` where the verified step kept its E-step, else None.
    """
    while m.prune_vanishing(stats, float(stats["weight"].sum())):
        stats, passes = e_step_pass(m, batches, reduce)
    if verified:
        return verified_m_step(m, batches, reduce, total, stats, passes, float(stats["loglik"]) / total)
    m.m_step(stats, passes)
    return None


class SourcePasses:
    """The M-step's passes over a source not kept in memory (see :class:`moekit._mstep.Passes`).

    A frozen copy of the model at the E-step's parameters hands every batch's
    weighted data (:meth:`~moekit.MixtureOfExperts.weighted_data`) to the
    live component being maximised, whose statistics or objective are summed
    over the batches (and reduced across ranks): each call is one more pass
    over the source.

    Parameters
    ----------
    model : MixtureOfExperts
        The live model, at the E-step's parameters (copied now).
    source : source of model-level batches
    reduce : callable, optional
        As for :func:`e_step_pass`.
    """

    def __init__(self, model, source, reduce: Callable | None = None):
        self.frozen = copy.deepcopy(model)
        self.live = dict(model.components())
        self.source = source
        self.reduce = reduce

    def _weighted(self, path: tuple) -> Iterator[tuple]:
        for batch in self.source:
            yield self.frozen.weighted_data(batch.x, batch.y, batch.weight)[path][1]

    def stats_fn(self, path: tuple) -> Callable[[], SuffStats]:
        """Statistics of the live component at ``path``, at its current parameters, summed over a pass."""
        comp = self.live[path]
        return lambda: _reduced(self.reduce, sum(comp.suff_stats(*args) for args in self._weighted(path)))

    def objective_fn(self, path: tuple) -> Callable[[], torch.Tensor] | None:
        """Its objective alone, summed over a pass, where step-halving can use it (else None)."""
        comp = self.live[path]
        if not uses_trial_objective(comp):
            return None
        return lambda: _reduced(self.reduce, sum(comp.objective(*args) for args in self._weighted(path)))

    def fit_weighted(self, path: tuple) -> None:
        """Components without statistics need their weighted data in memory: refused for a streamed source."""
        comp = self.live[path]
        raise TypeError(
            f"{type(comp).__name__} has no sufficient statistics, so it can be fitted only on data held "
            "in memory (one batch), not streamed"
        )


class CheckedSource:
    """A source whose batches are checked (and cast to the model's dtype and device) as they are read.

    Each batch is held to the checks of :func:`~moekit.training.inputs.check_model_inputs`
    (shapes, finite inputs, supported magnitudes, targets the experts can read), with weights
    finite and non-negative, and its width must match the model's; a column of a vector y with
    missing (NaN) entries must be observed in some batch (checked at the end of each pass).
    The batches are checked during the first complete pass; later passes only cast them (the
    checks cost about a seventh of a streamed iteration, ``benchmarks/RESULTS_scale.md``), so the
    data must not change between passes.  Per-row extras must already be folded into x and y
    (model-level batches).

    Parameters
    ----------
    source : source of batches
    model : MixtureOfExperts
        Gives the dtype and device.
    whole : bool
        Whether this is the whole data set (not one rank's shard, which may
        hold no rows): then a source without rows is refused.
    parent : CheckedSource, optional
        The whole data set this shard was cut from.  A shard that yields no
        batch (a rank given no file) yields one batch of no rows with the
        data's columns instead, so that its rank still contributes (zero) sums
        to every all-reduce of the fit.
    """

    def __init__(self, source, model, whole: bool = True, parent: "CheckedSource | None" = None):
        self.source = source
        self.dtype, self.device = model_dtype(model), model_device(model)
        self.model = model
        self.whole = whole
        self.parent = parent
        self.in_memory = bool(getattr(source, "in_memory", False))
        self._width: int | None = None
        self._empty: Batch | None = None  # no rows, the data's columns (from the start sample)
        self._checked = False  # a complete pass has been checked

    @property
    def n_rows(self):
        return getattr(self.source, "n_rows", None)

    def check(self, batch: Batch) -> Batch:
        """One batch checked and cast."""
        if batch.has_extras:
            raise ValueError(
                "fit_em reads model-level batches: offsets and trials as trailing columns of x, censoring limits "
                "as columns of y; fit with an estimator (e.g. MoERegressor().fit(source)), which folds the "
                "source's offset/trials/lower/upper columns in, or build x and y that way"
            )
        w = batch.weight
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("a batch of the source has negative or non-finite row weights; weights must be finite "
                             "and >= 0")
        x, y, _ = check_model_inputs(self.model, batch.x, batch.y, None, every_column_seen=False)
        if self._width is None:
            self._width = x.shape[1]
        elif x.shape[1] != self._width:
            raise ValueError(f"a batch of the source has {x.shape[1]} columns of x, an earlier one had {self._width}; "
                             "every batch must have the same columns")
        return Batch(x, y, w.to(dtype=self.dtype, device=self.device))

    def cast(self, batch: Batch) -> Batch:
        """A batch of a source already checked: cast as :meth:`check` casts (integer labels kept), nothing checked."""
        def to(t):
            keep = not (t.is_floating_point() or t.dtype == torch.bool)
            return t.to(device=self.device, dtype=None if keep else self.dtype)
        return Batch(to(batch.x), to(batch.y), batch.weight.to(dtype=self.dtype, device=self.device))

    def __iter__(self) -> Iterator[Batch]:
        if self._checked:
            any_batch = False
            for batch in self.source:
                any_batch = True
                yield self.cast(batch)
            if not any_batch and self.parent is not None:
                yield self.parent.empty_batch()
            return
        seen = None  # the columns of a vector y observed (not NaN) on a row of positive weight, so far
        any_batch = False
        for batch in self.source:
            b = self.check(batch)
            any_batch = True
            if b.y.dim() == 2 and b.y.is_floating_point():
                s = (~torch.isnan(b.y) & (b.weight > 0)[:, None]).any(0)
                seen = s if seen is None else seen | s
            yield b
        if not any_batch and self.parent is not None:
            yield self.parent.empty_batch()
        if self.whole and seen is not None and not bool(seen.all()):
            j = int(torch.nonzero(~seen)[0])
            raise ValueError(
                f"y column {j} is missing (NaN) on every row with positive weight: its distribution cannot be "
                "estimated; drop that column of y"
            )
        self._checked = True

    def sample(self, max_rows: int, seed: int) -> Batch:
        """The source's start sample, checked."""
        b = self.check(self.source.sample(max_rows, seed))
        if self._empty is None:
            self._empty = b.rows(slice(0, 0))
        return b

    def empty_batch(self) -> Batch:
        """A batch of no rows with the data's columns (those of the start sample, or of one sampled row)."""
        if self._empty is None:
            self.sample(1, 0)
        return self._empty

    def shard(self, rank: int, world_size: int) -> "CheckedSource":
        return CheckedSource(self.source.shard(rank, world_size), self.model, whole=False, parent=self)

    @property
    def total_weight(self) -> float:
        """The sum of the row weights (the source's own, or one pass over it).

        The whole data set must hold a row: an empty source is a ``ValueError``.
        """
        t, n = getattr(self.source, "total_weight", None), getattr(self.source, "n_rows", None)
        if t is None:
            t, n = 0.0, 0
            for b in self.source:
                t, n = t + float(b.weight.sum()), n + len(b)
        if self.whole and n is not None and int(n) == 0:
            raise ValueError("the source has no rows: there is nothing to fit (an empty array, file, folder or "
                             "filter); give fit_em a source with at least one row")
        if not math.isfinite(float(t)):
            raise ValueError(f"the row weights of the source sum to {float(t)}: a batch of the source has negative or "
                             "non-finite row weights; weights must be finite and >= 0")
        return float(t)
