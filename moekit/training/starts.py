"""Start strategies for EM: subset (consensus) starts and a race of EM runs from several starts.

Which local maximum EM reaches depends on its start.  Random partitions and
k-means find the broad structure of the data, but not a component that fits
a subset of the rows very tightly: on tonedata (Cohen 1980) 58 of 150 points
lie within 0.01 of the line ``tuned = stretchratio``, and the highest known
maximum (145.650 with a logistic gate, 145.417 with constant weights) puts one
expert on that line with a noise scale of 0.0045; no random partition or
k-means start finds it (they reach 142.848 and 141.198).

A *subset start* looks for such components the way RANSAC looks for lines
(Fischler & Bolles 1981): many candidate experts are each fitted to a few
random rows (as many as an expert has parameters), every candidate is then
refined against one broad background expert fitted to all the rows (a few EM
iterations of the two-component mixture "candidate or background", with the
background held fixed), and the candidate with the highest log-likelihood
gives one expert's starting responsibilities.  All candidates are one stacked
expert module, so the whole screen costs a few batched passes.

:func:`small_em` then runs EM from a small set of starts (by default the
subset start, a random partition and k-means on the joint [x, y]) in lock
step, in the spirit of Biernacki, Celeux & Govaert's "small EM" (2003), and
abandons a run as soon as an Aitken extrapolation of its log-likelihood (the
limit of a linearly converging sequence, its remainder doubled for safety)
cannot reach the value another run already has.  Each kind of start finds
maxima the others miss: the subset start tonedata's; k-means the two branches
of a two-link robot arm's inverse kinematics (10 of 10 seeds, against 3 of 10
for random partitions) and of Bishop's inverse sine; random partitions
NPreg's where k-means does not.  Comparing the starts after a fixed number
of short iterations is not safe: a start that is already partly fitted (a
subset start) can lead a random partition by thousands of log-likelihood
units after three iterations and still end lower.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .._partition import DistinctRows, distinct_rows
from ..experts import Expert
from ..mixture import MixtureOfExperts
from .init import initial_responsibilities, nested_seed
from .inputs import check_model_inputs
from .passes import e_step_pass, iteration_m_step, verifiable

__all__ = ["StartRace", "small_em", "start_kinds", "subset_consensus", "subset_responsibilities", "supports_subset_start"]

_KINDS = ("subset", "random", "kmeans")


@dataclass
class StartRace:
    """What :func:`small_em` did: the winning run and every start's fate.

    Attributes
    ----------
    history : list of float
        The winner's mean log-likelihood (per unit weight) before each of its
        EM iterations: ``history[0]`` at its start.  The model has taken
        ``n_iter = len(history)`` iterations, so the value after the last one
        is the first that a caller continuing EM computes (the full history is
        ``history`` followed by the caller's).  Empty when only one start was
        made: it is initialised and nothing else.
    n_iter : int
        EM iterations of the winner.
    converged : bool
        Whether the winner's mean log-likelihood changed by less than ``tol``.
    start : str
        The winner's kind of start ("subset", "random" or "kmeans").
    starts : list of dict
        One entry per start that could be made, in order: ``kind``,
        ``mean_log_likelihood`` (its last value), ``n_iter`` and ``status``
        ("converged"; "dropped": abandoned by the race; "max_iter";
        "failed": a non-finite log-likelihood; "single": the only start,
        initialised and not run).
    n_iter_total : int
        EM iterations over all starts (the cost of the race).
    seconds : float
        Wall time, subset screen included.
    """

    history: list = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    start: str = ""
    starts: list = field(default_factory=list)
    n_iter_total: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------- subsets
def _stack_base(model: MixtureOfExperts) -> Expert | None:
    """A stacked module of the model's expert family whose expert 0 the subset start copies (the model's own
    stack where it has one: not a copy), or None where a subset start does not apply."""
    experts = model.experts
    first = experts if isinstance(experts, Expert) else experts[0]
    if not getattr(first, "has_suff_stats", False):  # neural and scikit-learn experts are not stacked copies
        return None
    if isinstance(experts, Expert):
        base = experts if experts.stacked else type(experts).stack([experts])
    elif all(isinstance(e, Expert) for e in experts) and len({type(e) for e in experts}) == 1:
        base = type(experts[0]).stack([experts[0]])
    else:
        return None  # nested mixtures (trees) or mixed families
    if not getattr(base, "has_suff_stats", False) or getattr(base, "y_kind", None) != "continuous":
        return None
    return base


def _expert_stack(model: MixtureOfExperts, size: int) -> Expert | None:
    """``size`` copies of the model's expert family in one stacked module, or None where a subset start does not apply."""
    base = _stack_base(model)
    return None if base is None else base.select([0] * size)


def supports_subset_start(model) -> bool:
    """Whether :func:`subset_consensus` applies to ``model``.

    It does for a flat mixture of at least two experts of one family with a
    statistics M-step and a free noise scale (linear-Gaussian, Student-t):
    a subset start looks for a component whose noise is much smaller than
    the rest, which a Poisson or a classifier expert cannot express.  Trees
    (nested mixtures), neural and scikit-learn experts are not screened.

    Parameters
    ----------
    model : MixtureOfExperts

    Returns
    -------
    bool
    """
    return isinstance(model, MixtureOfExperts) and model.n_experts >= 2 and _stack_base(model) is not None


def _distinct_rows(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, rows: DistinctRows | None = None):
    """One representative index and the summed weight of every distinct positive-weight row of [x, y].

    Repeated rows and integer weights give the same distinct rows and counts,
    so they give the same candidates.  ``rows``: ``distinct_rows(x, y, w)`` if known.
    """
    rows = distinct_rows(x, y, w) if rows is None else rows
    return np.flatnonzero(rows.positive)[rows.first], rows.counts


def _weighted_draws(rng: np.random.Generator, counts: np.ndarray, n_draws: int, size: int) -> np.ndarray:
    """``n_draws`` samples of ``size`` distinct indices each, drawn with probability proportional to ``counts`` (Gumbel top-k)."""
    keys = np.log(counts)[None, :] + rng.gumbel(size=(n_draws, len(counts)))
    return np.argpartition(-keys, size - 1, axis=1)[:, :size]


@torch.no_grad()
def subset_consensus(
    model: MixtureOfExperts,
    x,
    y,
    sample_weight=None,
    *,
    n_candidates: int = 50,
    n_iter: int = 5,
    subset_size: int | None = None,
    max_rows: int = 2000,
    n_keep: int = 1,
    random_state=None,
    tiny: float = 1e-9,
) -> torch.Tensor | None:
    """Responsibilities of the best experts fitted to random small subsets and grown against a broad background.

    ``n_candidates`` copies of the model's expert family (one stacked module)
    are each fitted to ``subset_size`` rows drawn at random (weight
    ``tiny`` on the other rows); a background expert of the same family is
    fitted to every row.  Each candidate then takes ``n_iter`` EM iterations
    of the two-component mixture ``pi * candidate + (1 - pi) * background``
    (background fixed), so it gathers the rows it explains better than the
    background: its consensus set.  Candidates are ranked by that mixture's
    log-likelihood; a consensus set of at most ``subset_size + 1`` rows (a
    candidate that gathered nothing: an exact fit to its own rows at the
    variance floor) or of nearly every row is not used.  The best candidate
    is kept, then the next best whose consensus set overlaps every kept one
    by less than half, up to ``n_keep``.  Rows with a missing (NaN)
    coordinate of y are left out of the screen; the kept candidates'
    consensus covers every row (through their observed coordinates).

    Parameters
    ----------
    model : MixtureOfExperts
        Read only (its expert family, settings and column selections).
    x, y, sample_weight
        As for :func:`~moekit.fit_em`.
    n_candidates : int
        Subsets drawn.
    n_iter : int
        EM iterations of each candidate against the background.
    subset_size : int, optional
        Rows per subset; default: the expert's number of parameters (at
        least 2), the fewest that determine it.
    max_rows : int
        The screen runs on at most this many distinct rows, drawn with
        probability proportional to their weight; the consensus of the kept
        candidates is then computed on every row.
    n_keep : int
        At most this many distinct candidates are returned.
    random_state : int, numpy Generator or None
    tiny : float
        Weight of the rows outside a subset in its first fit.

    Returns
    -------
    Tensor (n, c) or None
        The posterior probability of each kept candidate against the
        background, for every row (c <= ``n_keep``); None where the model's
        experts do not support a subset start (see
        :func:`supports_subset_start`), there are too few distinct rows, or
        no candidate gathered a consensus set.

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y); sample_weight (n,); returns (n, c).

    Examples
    --------
    >>> import torch
    >>> from moekit import MixtureOfExperts, ConstantGate, LinearGaussianExpert
    >>> from moekit.datasets import load_tonedata
    >>> from moekit.training.starts import subset_consensus
    >>> d = load_tonedata()
    >>> x, y = torch.tensor(d.data), torch.tensor(d.target)
    >>> moe = MixtureOfExperts(ConstantGate(2), LinearGaussianExpert(1, n_experts=2, var_floor=1e-7))
    >>> r = subset_consensus(moe, x, y, random_state=0)
    >>> on_line = (y - x[:, 0]).abs() < 0.01  # the 58 rows on tuned = stretchratio
    >>> bool(r[on_line, 0].sum() > 50), bool(r[~on_line, 0].sum() < 10)
    (True, True)
    """
    x, y, w = check_model_inputs(model, x, y, sample_weight)
    return _consensus(model, x, y, w, np.random.default_rng(random_state), n_candidates, n_iter, subset_size, max_rows, n_keep, tiny)


@torch.no_grad()
def _consensus(model, x, y, w, rng, n_candidates=50, n_iter=5, subset_size=None, max_rows=2000, n_keep=1, tiny=1e-9,
               distinct=None):
    """:func:`subset_consensus` on validated tensors."""
    cand = _expert_stack(model, n_candidates)
    if cand is None:
        return None
    background = _expert_stack(model, 1)
    m = int(subset_size) if subset_size is not None else max(2, int(background.n_parameters()))
    rows, counts = _distinct_rows(x, y, w, distinct)
    if y.is_floating_point() and y.dim() == 2 and bool(torch.isnan(y).any()):  # missing targets: screen complete rows
        complete = ~torch.isnan(y[torch.as_tensor(rows, device=y.device)]).any(1).cpu().numpy()
        rows, counts = rows[complete], counts[complete]
    if len(rows) > max_rows:
        keep = np.sort(_weighted_draws(rng, counts, 1, max_rows)[0])
        rows, counts = rows[keep], counts[keep]
    if len(rows) < 2 * m + 2:
        return None
    xe = model.expert_input(x)
    rows_t = torch.as_tensor(rows, device=x.device)
    xs, ys = xe[rows_t], y[rows_t]
    ws = torch.as_tensor(counts, dtype=x.dtype, device=x.device)
    draws = _weighted_draws(rng, counts, n_candidates, m)  # (n_candidates, m) indices into rows
    start = torch.full((len(rows), n_candidates), tiny, dtype=x.dtype, device=x.device)
    start[torch.as_tensor(draws.T.reshape(-1), device=x.device), torch.arange(n_candidates, device=x.device).repeat(m)] = 1.0
    start = start * ws[:, None]
    total = ws.sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ill-posed candidate fits are expected; their candidates lose
        background.init_from_responsibilities(xs, ys, ws[:, None])
        log_bg = background.log_prob(xs, ys)[:, 0]
        cand.init_from_responsibilities(xs, ys, start)
        pi = (start.sum(0) / total).clamp(1e-12, 0.5)
        for it in range(n_iter + 1):
            a = pi.log() + cand.log_prob(xs, ys)
            b = torch.log1p(-pi) + log_bg[:, None]
            loglik = (ws[:, None] * torch.logaddexp(a, b)).sum(0)
            resp = ws[:, None] * torch.sigmoid(a - b)
            size = resp.sum(0)
            if it == n_iter:
                break
            cand.fit_weighted(xs, ys, resp)
            pi = (size / total).clamp(1e-12, 1.0 - 1e-12)
    usable = torch.isfinite(loglik) & (size > m + 1) & (size < total - m - 1)
    kept: list[int] = []
    for j in torch.argsort(torch.where(usable, loglik, torch.full_like(loglik, -math.inf)), descending=True).tolist():
        if len(kept) == n_keep or not bool(usable[j]):
            break
        if all(float(torch.minimum(resp[:, j], resp[:, c]).sum()) < 0.5 * float(torch.minimum(size[j], size[c])) for c in kept):
            kept.append(j)
    if not kept:
        return None
    best = cand.select(kept)
    a = pi[kept].log() + best.log_prob(xe, y)
    b = torch.log1p(-pi[kept]) + background.log_prob(xe, y)
    return torch.sigmoid(a - b)


def subset_responsibilities(model: MixtureOfExperts, x, y, sample_weight=None, *, random_state=None, **screen) -> torch.Tensor | None:
    """Starting responsibilities (n, K) for the whole model from :func:`subset_consensus`.

    Up to K - 1 distinct consensus sets go to the first experts; the next
    expert is the broad one and starts on every row (weight 1, so a row of a
    consensus set is shared between its expert and the broad one); with
    fewer than K - 1 consensus sets, the remaining experts split every row
    by a random partition instead.  Rows are then normalised.

    Parameters
    ----------
    model : MixtureOfExperts
    x, y, sample_weight
        As for :func:`~moekit.fit_em`.
    random_state : int, numpy Generator or None
    **screen
        Passed to :func:`subset_consensus` (``n_candidates``, ``n_iter``,
        ``subset_size``, ``max_rows``).

    Returns
    -------
    Tensor (n, K) or None
        Rows summing to one; None where :func:`subset_consensus` gives none.

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y); sample_weight (n,); returns (n, K).
    """
    x, y, w = check_model_inputs(model, x, y, sample_weight)
    return _subset_resp(model, x, y, w, np.random.default_rng(random_state), **screen)


def _subset_resp(model, x, y, w, rng, distinct=None, **screen):
    """:func:`subset_responsibilities` on validated tensors (``distinct``: their :func:`distinct_rows`, if known)."""
    k = model.n_experts
    r = _consensus(model, x, y, w, rng, n_keep=k - 1, distinct=distinct, **screen)
    if r is None:
        return None
    c = r.shape[1]
    resp = torch.zeros(x.shape[0], k, dtype=x.dtype, device=x.device)
    resp[:, :c] = r
    if k - c == 1:
        resp[:, c] = 1.0
    else:
        resp[:, c:] = initial_responsibilities(x, y, k - c, "random", int(rng.integers(0, 2**31 - 1)), w, distinct)
    return resp / resp.sum(1, keepdim=True)


# ------------------------------------------------------------------------ race
def start_kinds(model, starts="auto") -> tuple[str, ...]:
    """The kinds of start :func:`small_em` runs for ``model``.

    ``"auto"``: ``("subset", "random", "kmeans")`` where a subset start
    applies (:func:`supports_subset_start`), else ``("random",)``: one random
    partition, exactly the start of ``fit_em(init="random")`` for the same
    seed, so classifiers, Poisson experts, trees and neural experts fit as
    they always did.

    Parameters
    ----------
    model : MixtureOfExperts
    starts : "auto" or sequence of {"subset", "random", "kmeans"}

    Returns
    -------
    tuple of str
    """
    if isinstance(starts, str):
        if starts != "auto":
            raise ValueError(f"starts must be 'auto' or a sequence of {_KINDS}, got {starts!r}")
        return ("subset", "random", "kmeans") if supports_subset_start(model) else ("random",)
    kinds = tuple(starts)
    bad = [s for s in kinds if s not in _KINDS]
    if not kinds or bad:
        raise ValueError(f"starts must be 'auto' or a non-empty sequence of {_KINDS}, got {starts!r}")
    return kinds


def _start_seed(seed: int, kind: str, occurrence: int) -> int:
    """The first random and k-means start use the race's seed itself (as ``fit_em`` does); others derive their own."""
    if occurrence == 0 and kind != "subset":
        return seed
    return int(np.random.default_rng([seed, _KINDS.index(kind) + 2, occurrence]).integers(0, 2**31 - 1))


class _MemoryStep:
    """The default ``step`` of :func:`small_em`: one EM iteration of a run on data in memory, as
    :func:`~moekit.fit_em`'s loop takes it.

    The M-step is :func:`~moekit.training.passes.iteration_m_step`'s: nested experts whose share
    vanished are pruned, then the step is checked by the next E-step's likelihood, and that E-step is
    kept for the run's next iteration, so a Newton step costs no pass over the data of its own.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor):
        self.batches = [(x, y, w)]
        self.total = float(w.sum())
        self.next: dict[int, tuple] = {}  # id(model) -> its E-step at its current parameters

    def __call__(self, m: MixtureOfExperts) -> float:
        stats, passes = self.next.pop(id(m), None) or e_step_pass(m, self.batches)
        ll = float(stats["loglik"])
        new = iteration_m_step(m, self.batches, None, self.total, stats, passes, math.isfinite(ll) and verifiable(m))
        if new is not None:
            self.next[id(m)] = new
        return ll


def _aitken_limit(h: list[float], slack: float) -> float:
    """An optimistic limit of a linearly converging increasing sequence: h + slack * the Aitken remainder (inf if unknown)."""
    d1, d0 = h[-1] - h[-2], h[-2] - h[-3]
    if not (d0 > 0 and d1 >= 0) or d1 >= 0.95 * d0:
        return math.inf
    rate = d1 / d0
    return h[-1] + slack * d1 * rate / (1.0 - rate)


def small_em(
    model: MixtureOfExperts,
    x,
    y,
    sample_weight=None,
    *,
    starts="auto",
    random_state=None,
    max_iter: int = 200,
    tol: float = 1e-6,
    step: Callable[[MixtureOfExperts], float] | None = None,
    warmup: int = 3,
    slack: float = 2.0,
    **screen,
) -> StartRace:
    """Race EM runs from several kinds of start, in lock step, and leave the best run's model in ``model``.

    Every start is initialised (:meth:`~moekit.MixtureOfExperts.init_from_responsibilities`),
    then all runs take one EM iteration in turn.  A run stops when its mean
    log-likelihood changes by less than ``tol`` or after ``max_iter``
    iterations; after ``warmup`` iterations a run is abandoned when an
    optimistic extrapolation of its log-likelihood (the Aitken limit of a
    linearly converging sequence, its remainder multiplied by ``slack``)
    falls below the current value of another run that is still in the race.
    The run with the highest final log-likelihood wins.  With a single start
    (``starts=("random",)``, or "auto" for a model without a subset start)
    there is nothing to race: the start is initialised and left to the
    caller's EM loop.

    Parameters
    ----------
    model : MixtureOfExperts
        Left holding the winning run (the caller's object).
    x, y, sample_weight
        As for :func:`~moekit.fit_em`.
    starts : "auto" or sequence of {"subset", "random", "kmeans"}
        See :func:`start_kinds`.  "random" and "kmeans" are the partitions
        of :func:`~moekit.training.init.initial_responsibilities`; "subset"
        is :func:`subset_responsibilities` (skipped where it gives none).
    random_state : int, numpy Generator or None
        The race's seed.  The first "random" (and "kmeans") start uses the
        seed itself, so ``starts=("random",)`` is exactly the start of
        ``fit_em(init="random")`` with the same seed; nested mixtures split
        their rows with ``np.random.default_rng([seed, 1])``, as in
        :func:`~moekit.fit_em`.
    max_iter : int
        EM iterations per run.
    tol : float
        Convergence threshold on the mean log-likelihood (per unit weight).
    step : callable, optional
        ``step(model) -> float``: one EM iteration of ``model`` in place,
        returning the total weighted log-likelihood *before* it.  Default:
        the iteration of :func:`~moekit.fit_em`'s loop on the data in memory
        (the M-step verified by the next E-step, which the run's next
        iteration reuses); a streaming trainer passes its own.
    warmup : int
        Iterations before a run may be abandoned.
    slack : float
        Factor on the extrapolated remaining gain (larger: safer, slower).
    **screen
        Passed to :func:`subset_consensus` (``n_candidates``, ``n_iter``,
        ``subset_size``, ``max_rows``).

    Returns
    -------
    StartRace

    Warns
    -----
    The winning run's warnings (e.g. pruned nested experts) are re-issued;
    the other runs' are dropped.

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y); sample_weight (n,).

    Examples
    --------
    >>> import torch
    >>> from moekit import MixtureOfExperts, SoftmaxGate, LinearGaussianExpert
    >>> from moekit.datasets import load_tonedata
    >>> from moekit.training.starts import small_em
    >>> d = load_tonedata()
    >>> x, y = torch.tensor(d.data), torch.tensor(d.target)
    >>> moe = MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_experts=2, var_floor=1e-7))
    >>> race = small_em(moe, x, y, random_state=0)
    >>> race.start, round(race.history[-1] * 150, 2)  # the highest known maximum, 145.650
    ('subset', 145.65)
    """
    t0 = time.perf_counter()
    x, y, w = check_model_inputs(model, x, y, sample_weight)
    if not (isinstance(max_iter, int) and max_iter >= 0):
        raise ValueError(f"max_iter must be a non-negative int, got {max_iter!r}")
    kinds = start_kinds(model, starts)
    if isinstance(starts, str) and y.is_floating_point() and not bool(torch.isfinite(y).all()) \
            and not getattr(model, "accepts_missing_y", False):
        kinds = ("random",)  # censored rows ([y, lower, upper], infinite limits): k-means and subsets need finite y
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        seed = int(random_state)
    else:
        seed = int(np.random.default_rng(random_state).integers(0, 2**31 - 1))
    total = float(w.sum())
    if step is None:
        step = _MemoryStep(x, y, w)

    distinct = distinct_rows(x, y, w)  # once for every start
    made: list[tuple[str, int, torch.Tensor]] = []  # (kind, seed, responsibilities), from the untouched model
    seen: dict[str, int] = {}
    for kind in kinds:
        s = _start_seed(seed, kind, seen.get(kind, 0))
        seen[kind] = seen.get(kind, 0) + 1
        if kind == "subset":
            resp = _subset_resp(model, x, y, w, np.random.default_rng(s), distinct, **screen)
            if resp is not None:
                made.append((kind, s, resp))
        else:
            made.append((kind, s, initial_responsibilities(x, y, model.n_experts, kind, s, w, distinct)))
    if not made:  # only "subset" was asked for and none could be made: a random partition instead
        made.append(("random", seed, initial_responsibilities(x, y, model.n_experts, "random", seed, w, distinct)))
    models = [model] + [copy.deepcopy(model) for _ in made[1:]]
    runs: list[dict] = []
    for m, (kind, s, resp) in zip(models, made):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m.init_from_responsibilities(x, y, w[:, None] * resp, random_state=nested_seed(s))
        runs.append({"kind": kind, "model": m, "history": [], "status": "running", "warnings": list(caught)})
    if len(runs) == 1:  # nothing to race: the caller's EM loop runs the one start
        for wmsg in runs[0]["warnings"]:
            warnings.warn_explicit(wmsg.message, wmsg.category, wmsg.filename, wmsg.lineno)
        return StartRace(start=runs[0]["kind"], starts=[{"kind": runs[0]["kind"], "mean_log_likelihood": math.nan,
                                                         "n_iter": 0, "status": "single"}],
                         seconds=time.perf_counter() - t0)

    while any(r["status"] == "running" for r in runs):
        for r in runs:
            if r["status"] != "running":
                continue
            h = r["history"]
            if len(h) >= max_iter:
                r["status"] = "max_iter"
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                value = float(step(r["model"])) / total
            r["warnings"].extend(caught)
            h.append(value)
            if not math.isfinite(value):
                r["status"] = "failed"
            elif len(h) > 1 and abs(h[-1] - h[-2]) < tol:
                r["status"] = "converged"
        contenders = [r for r in runs if r["status"] in ("running", "converged", "max_iter")]
        for r in runs:
            h = r["history"]
            if r["status"] != "running" or len(h) <= max(warmup, 2):
                continue
            others = [o["history"][-1] for o in contenders if o is not r]
            if others and _aitken_limit(h, slack) < max(others):
                r["status"] = "dropped"

    finished = [r for r in runs if r["status"] in ("converged", "max_iter")]
    best = max(finished, key=lambda r: r["history"][-1] if r["history"] else -math.inf) if finished else runs[0]
    if best["model"] is not model:
        model.__dict__.update(best["model"].__dict__)
    for wmsg in best["warnings"]:
        warnings.warn_explicit(wmsg.message, wmsg.category, wmsg.filename, wmsg.lineno)
    report = [
        {"kind": r["kind"], "mean_log_likelihood": r["history"][-1] if r["history"] else math.nan,
         "n_iter": len(r["history"]), "status": r["status"]}
        for r in runs
    ]
    return StartRace(
        history=list(best["history"]),
        n_iter=len(best["history"]),
        converged=best["status"] == "converged",
        start=best["kind"],
        starts=report,
        n_iter_total=sum(len(r["history"]) for r in runs),
        seconds=time.perf_counter() - t0,
    )
