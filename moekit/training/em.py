"""Expectation-maximisation for mixtures of experts."""

from __future__ import annotations

import math
import time
import warnings
from typing import Callable

import torch
from sklearn.exceptions import ConvergenceWarning

from .._linalg import design_cache
from .._validation import DivergenceError
from ..data import ArrayBatches
from ..stats import SuffStats
from . import distributed
from .checkpoint import load_em_checkpoint, save_em_checkpoint
from .init import initial_responsibilities, nested_seed
from .inputs import check_model_inputs
from .passes import CheckedSource, e_step_pass, is_source, iteration_m_step, verifiable
from .restarts import best_of
from .result import FitResult
from .starts import small_em

__all__ = ["IN_MEMORY_BATCH_ROWS", "fit_em", "e_step_pass"]

#: Rows per batch of an in-memory EM pass over arrays (models whose every component has statistics;
#: the others are fitted on their weighted data in one batch).  Summing the statistics over batches
#: of this size keeps each E-step's (rows x experts) temporaries in cache: 1.2-1.6x faster per
#: iteration than one batch from 1e6 rows on (``benchmarks/RESULTS_scale.md``), the same numbers up
#: to the order of the sums.
IN_MEMORY_BATCH_ROWS = 65536


#: Rows of the sample on which ``fit_em`` makes its start (the start race included) when the data have more.
START_SAMPLE_ROWS = 20_000


def fit_em(
    model,
    x,
    y=None,
    sample_weight=None,
    *,
    max_iter: int = 200,
    tol: float = 1e-6,
    n_init: int = 1,
    init="random",
    random_state: int | None = None,
    prune_threshold: float = 1e-4,
    verbose: int = 0,
    callback: Callable | None = None,
    accelerate: str | None = None,
    process_group=None,
    init_sample_rows: int = START_SAMPLE_ROWS,
    checkpoint=None,
    resume: bool = False,
) -> FitResult:
    """Fit a :class:`~moekit.MixtureOfExperts` by EM, in place.

    One EM path for flat, nested (HME) and mixed models: every iteration is
    one pass of :meth:`~moekit.MixtureOfExperts.suff_stats` over the batches
    of the data (the E-step: log-likelihood, responsibilities and every
    component's additive statistics), summed, then
    :meth:`~moekit.MixtureOfExperts.m_step`.  Exact M-steps (least squares,
    constant gate) use the summed statistics once; Newton / IRLS / ECM steps
    (one per M-step) are taken from the statistics too, and the next E-step,
    which EM makes anyway, keeps them if the log-likelihood did not fall; if it
    fell, the parameters are put back and the M-step is taken again with
    step-halving on each component's objective over the E-step's weighted data
    (kept in memory, or re-read from a source), so a Newton step costs no pass
    of its own over the data.  Components without statistics (neural networks,
    scikit-learn models) take weighted steps kept only when they help
    (generalised EM).  The log-likelihood therefore never decreases.

    Parameters
    ----------
    model : MixtureOfExperts
        Fitted in place (its initial parameters are overwritten by the
        initialisation).  With ``n_init > 1`` the best start is kept.
    x : Tensor (n, d_x), or a source of batches
        The inputs; or a source (:mod:`moekit.data`: in-memory
        :class:`~moekit.data.ArrayBatches`, files read by
        :class:`~moekit.data.ParquetSource`, ...) of model-level batches,
        which carries y and the weights.  Each EM pass then sums the
        statistics batch by batch, so peak memory is bounded by the batch
        size; a Newton step's statistics and trial objectives re-read a
        source that is not in memory, at the E-step's parameters, so the
        fit equals the in-memory one.
    y : Tensor (n,) or (n, d_y); integer labels for classification experts.
        None when x is a source.
    sample_weight : Tensor (n,), optional
        Non-negative row weights; integer weights are equivalent to repeated rows.
    max_iter : int
        EM iterations per start.
    tol : float
        Stop when the mean per-sample log-likelihood changes by less than ``tol``.
    n_init : int
        Starts; the one with the highest final log-likelihood is kept.
    init : {"auto", "kmeans", "random"}, array (n, K) or callable
        ``"auto"``: a race of EM runs from a subset start, a random
        partition and k-means, where the model's experts allow a subset
        start (flat mixtures of linear-Gaussian or Student-t experts), else
        one random partition (see :func:`~moekit.training.starts.small_em`);
        with ``n_init > 1`` each start is such a race.  Otherwise how the
        first responsibilities are made (see
        :func:`~moekit.training.init.initial_responsibilities`), or a
        callable ``init(model, x, y, weight, seed)`` that initialises the
        model in place for the start with that seed (as
        :func:`~moekit.hierarchy.fit_tree_em` does with
        :func:`~moekit.hierarchy.init_tree`).
        ``None`` keeps the model's current parameters (warm start).
    random_state : int, optional
        Seeds the starts (start i uses a seed drawn from it).
    prune_threshold : float
        An expert whose share of the total weight falls below this fraction is
        removed with a warning (its M-step would be ill-posed).
    verbose : int
        Print the log-likelihood every ``verbose`` iterations.
    callback : callable, optional
        ``callback(iteration, mean_loglik, model)`` after each E-step.
    accelerate : {None, "squarem"}
        ``None`` (default): plain EM.  ``"squarem"``: SQUAREM (Varadhan &
        Roland 2008, step length SqS3 ``alpha = -||r|| / ||v||`` clamped to
        ``alpha <= -1``) over every parameter of the model (as stored:
        log scales, log-diagonal Cholesky factors, gate rows with the
        reference row at zero, so every extrapolated point is a valid model).
        Each cycle takes two EM steps theta0 -> theta1 -> theta2, jumps to
        ``theta0 - 2 alpha r + alpha^2 v`` (``r = theta1 - theta0``,
        ``v = theta2 - 2 theta1 + theta0``) and takes one EM step from there;
        that point is kept only if its log-likelihood is at least theta2's
        (and it is finite and prunes no expert), else the fit goes on from
        theta2: the log-likelihood still never decreases.  Convergence is
        judged, as in plain EM, on the change over one plain EM step.
        ``n_iter`` then counts M-steps (EM map evaluations, three per cycle,
        rejected ones included) and ``history`` holds the mean
        log-likelihood of every point the fit kept (the extrapolated point
        and rejected steps are not recorded).  Models with components
        without statistics (neural networks, scikit-learn experts) are
        fitted by plain EM, and acceleration stops for the rest of a start
        once an expert is pruned.  Measured in ``benchmarks/em_accel.py``
        (``benchmarks/RESULTS.md``).
    process_group : torch.distributed ProcessGroup, optional
        Distributed EM (e.g. ``torch.distributed.group.WORLD`` under
        torchrun).  x must then be a source of the whole data set: each
        rank reads only its ``source.shard(rank, world_size)``, every sum of
        statistics (and every Newton trial objective) is all-reduced, and
        every rank takes the same M-step, so all ranks end with the same
        parameters as one process would.  The start is computed alike on
        every rank and made identical by a broadcast from rank 0.
    init_sample_rows : int, default 20,000
        The start (``init``) is computed on ``source.sample(init_sample_rows,
        seed)``: every row when there are at most this many, else a seeded
        sample chosen by row index, so in memory, streamed and distributed
        fits start alike.  When the sample is the data, a start race's
        iterations count in the history; otherwise EM starts afresh from
        the sample's fit, which is already close to a maximum of the whole
        data's likelihood (at N = 1e5, D = 10, K = 2 the default fit then
        takes 3 full iterations after a race on 20,000 rows, 0.27 s against
        1.02 s for the race on every row, to the same maximum: see
        ``benchmarks/RESULTS.md``, Update 4).  An array ``init`` names every
        row's responsibilities, so its start is made on every row.
    checkpoint : str or path, optional
        Write the model and the EM state after every iteration (atomically:
        a temporary file, then a rename; only rank 0 writes).  One start of
        plain EM only (``n_init=1``, ``accelerate=None``).
    resume : bool
        Continue the fit whose checkpoint is at ``checkpoint`` (the model
        built as for that fit; its pruning is replayed): the result equals
        an uninterrupted fit.  A checkpoint of a finished fit returns its
        result at once.

    Returns
    -------
    FitResult

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y); sample_weight (n,).

    Examples
    --------
    >>> import torch
    >>> from moekit import MixtureOfExperts, SoftmaxGate, LinearGaussianExpert, fit_em
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(400, 1, generator=g, dtype=torch.float64)
    >>> y = torch.where(x[:, 0] < 0.5, 2 * x[:, 0], -2 * x[:, 0]) + 0.01 * torch.randn(400, generator=g, dtype=torch.float64)
    >>> moe = MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_experts=2))
    >>> res = fit_em(moe, x, y, random_state=0)
    >>> res.converged, all(b >= a - 1e-9 for a, b in zip(res.history, res.history[1:]))
    (True, True)
    """
    t0 = time.perf_counter()
    if not (isinstance(max_iter, int) and max_iter >= 0):
        raise ValueError(f"max_iter must be a non-negative int, got {max_iter!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if accelerate not in (None, "squarem"):
        raise ValueError(f"accelerate must be None or 'squarem', got {accelerate!r}")
    if not (isinstance(init_sample_rows, int) and init_sample_rows >= 1):
        raise ValueError(f"init_sample_rows must be a positive int, got {init_sample_rows!r}")
    if not (init is None or isinstance(init, str) or callable(init) or hasattr(init, "__len__")):
        raise ValueError(f"init must be 'auto', 'kmeans', 'random', an (n, K) array of responsibilities, a callable "
                         f"init(model, x, y, weight, seed) or None, got {init!r}")
    rank, world = distributed.world(process_group)
    if is_source(x):
        if y is not None or sample_weight is not None:
            raise ValueError("x is a source of batches, which carries y and the row weights: leave y and "
                             "sample_weight None")
        full = CheckedSource(x, model)
    else:
        if y is None:
            raise ValueError("y is required when x is an array (or pass a source of batches as x)")
        if process_group is not None:
            raise ValueError("process_group needs the whole data set as a source (e.g. moekit.data.ArrayBatches(x, y, w) "
                             "or a ParquetSource), which every rank shards for itself; got arrays")
        x, y, w = check_model_inputs(model, x, y, sample_weight)
        # rows in batches of IN_MEMORY_BATCH_ROWS: the per-row temporaries of an E-step stay in cache
        batch = IN_MEMORY_BATCH_ROWS if getattr(model, "has_suff_stats", False) else None
        full = ArrayBatches(x, y, w, batch_size=batch)
    batches = full.shard(rank, world) if world > 1 else full
    reduce = _all_reduce(process_group) if world > 1 else None
    total = float(batches.total_weight)
    if reduce is not None:
        total = distributed.all_reduce_sum(total, process_group)
    if not total > 0:
        raise ValueError(f"the row weights of the source sum to {total}; at least one row needs a positive weight")
    data = _Data(batches, reduce)
    verbose = verbose if rank == 0 else 0  # one rank reports
    loop = _squarem_loop if accelerate == "squarem" and getattr(model, "has_suff_stats", False) else _em_loop
    saver = None
    if checkpoint is not None or resume:
        if checkpoint is None:
            raise ValueError("resume=True needs checkpoint=PATH, the file the interrupted fit wrote")
        if n_init != 1 or loop is not _em_loop:
            raise ValueError(f"checkpoint= supports one start of plain EM (n_init=1, accelerate=None), got "
                             f"n_init={n_init!r}, accelerate={accelerate!r}; checkpoint each start as a fit of its own")
        fingerprint = {"total_weight": total, "max_iter": max_iter, "tol": float(tol)}
        saver = _saver(checkpoint, fingerprint) if rank == 0 else (lambda *a, **k: None)

    def run_one(m, seed: int) -> dict:
        """One start: initialised on the start sample (every row when they fit), then EM over the data."""
        if resume:
            state = load_em_checkpoint(checkpoint, m)
            _check_fingerprint(checkpoint, state, fingerprint)
            if state["done"]:
                return {k: state[k] for k in ("history", "n_iter", "converged", "pruned")}
            return _em_loop(m, data, total, max_iter, tol, prune_threshold, verbose, callback, history=state["history"],
                            n_iter=state["n_iter"], alive=state["alive"], pruned=state["pruned"], saver=saver)
        history: list = []
        n_start = 0
        if init is not None:
            rows = _start_rows(init, init_sample_rows)
            xs, ys, ws = _start_sample(full, rows, seed)
            whole = _whole(full, xs.shape[0], rows)  # the sample is the data: a race's history carries on
            if isinstance(init, str) and init == "auto":
                race = small_em(m, xs, ys, ws, random_state=seed, max_iter=max_iter, tol=tol)
                if whole:
                    history, n_start = list(race.history), race.n_iter
            elif callable(init):
                init(m, xs, ys, ws, seed)
            else:
                r = initial_responsibilities(xs, ys, m.n_experts, init, seed, ws)
                # nested mixtures split their rows with a seed of their own, drawn from this start's
                m.init_from_responsibilities(xs, ys, ws[:, None] * r, random_state=nested_seed(seed))
            if world > 1:
                distributed.broadcast_module(m, 0, process_group)
        if saver is not None:
            return _em_loop(m, data, total, max_iter, tol, prune_threshold, verbose, callback, history=history,
                            n_iter=n_start, saver=saver)
        out = loop(m, data, total, max_iter - n_start, tol, prune_threshold, verbose, callback, history=history)
        out["n_iter"] += n_start
        return out

    with design_cache():  # the batches' designs are built once for the whole fit, not once per pass
        i_best, run, finals = best_of(model, n_init, random_state, run_one, score=lambda r: r["history"][-1])
    if not run["converged"] and max_iter > 0 and rank == 0:
        h = run["history"]
        delta = abs(h[-1] - h[-2]) if len(h) > 1 else float("nan")
        warnings.warn(
            f"EM did not converge in max_iter={max_iter} iterations (last change of the mean "
            f"log-likelihood {delta:.3g} > tol={tol:g}). Increase max_iter, loosen tol, or "
            "standardise the inputs.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return FitResult(
        model=model,
        log_likelihood=run["history"][-1] * total,
        history=run["history"],
        n_iter=run["n_iter"],
        converged=run["converged"],
        method="em",
        init_mean_log_likelihoods=finals,
        best_init=i_best,
        pruned=run["pruned"],
        seconds=time.perf_counter() - t0,
        mean_log_likelihood=run["history"][-1],
        total_weight=total,
        train_weight=total,
    )


class _Data:
    """The batches a process reads in every pass, and how its sums are reduced across ranks."""

    def __init__(self, batches, reduce):
        self.batches, self.reduce = batches, reduce


def _all_reduce(group) -> Callable:
    """Sums across the ranks of ``group``: statistics in one flat all-reduce, scalar objectives in another."""
    def reduce(value):
        if isinstance(value, SuffStats):
            return value.all_reduce(group)
        return distributed.all_reduce_sum(torch.as_tensor(value), group)
    return reduce


def _whole(source, n_sample: int, max_rows: int) -> bool:
    """Whether a start sample of ``n_sample`` rows is the whole data set (which has at most ``max_rows`` rows)."""
    n = getattr(source, "n_rows", None)
    if n is not None:
        return int(n) <= max_rows
    return n_sample < max_rows or n_sample == sum(len(b) for b in source)


def _start_rows(init, init_sample_rows: int) -> int:
    """Rows of the start sample: ``init_sample_rows``, or every row for an array ``init`` (it names every row's
    responsibilities)."""
    return init_sample_rows if isinstance(init, str) or callable(init) else max(init_sample_rows, len(init))


def _start_sample(source, max_rows: int, seed: int):
    """x, y, weight of the start sample: every row when there are at most ``max_rows``, else a seeded sample."""
    b = source.sample(max_rows, seed)
    return b.x, b.y, b.weight


def _pruned_e_step(m, source, total, prune_threshold, alive: list, pruned: list, n_iter: int, stacklevel: int,
                   done=None):
    """The E-step at the current parameters, after pruning the root's experts whose share of the data fell below
    ``prune_threshold`` (with a warning; ``alive`` and ``pruned`` are updated in place, the original indices).
    ``done``: the E-step's ``(stats, passes)`` when the caller has it already.

    Returns ``(stats, passes, mean_ll)``; a non-finite log-likelihood is a :class:`DivergenceError`.
    """
    stats, passes = done if done is not None else e_step_pass(m, source.batches, source.reduce)
    if m.n_experts > 1 and prune_threshold > 0:
        share = stats["weight"] / total
        dead = (share < prune_threshold).nonzero().flatten().tolist()
        if dead and len(dead) < m.n_experts:
            keep = [k for k in range(m.n_experts) if k not in dead]
            gone = [alive[k] for k in dead]
            warnings.warn(
                f"pruned expert(s) {gone}: their share of the data fell below "
                f"prune_threshold={prune_threshold:g}; {len(keep)} expert(s) remain. "
                "Use fewer experts or another init if this happens often.",
                RuntimeWarning,
                stacklevel=stacklevel,
            )
            pruned.extend(gone)
            alive[:] = [alive[k] for k in keep]
            m.prune(keep)
            stats, passes = e_step_pass(m, source.batches, source.reduce)
    mean_ll = float(stats["loglik"]) / total
    if not math.isfinite(mean_ll):
        raise DivergenceError(
            f"the log-likelihood became {mean_ll} at EM iteration {n_iter}; "
            "check the data scale or raise the variance floor (var_floor)"
        )
    return stats, passes, mean_ll


def _em_loop(m, source, total, max_iter, tol, prune_threshold, verbose, callback, history=(), *, n_iter=0,
             alive=None, pruned=(), saver=None) -> dict:
    """EM iterations from the model's current parameters; ``history`` holds the mean log-likelihoods of
    iterations already taken (a start race's, or a checkpoint's: ``n_iter`` of them counted against
    ``max_iter``, ``alive``/``pruned`` the root's experts then), so that convergence is judged across the join.
    ``saver(m, state)`` writes a checkpoint after every M-step and at the end."""
    history = list(history)
    pruned = list(pruned)
    alive = list(range(m.n_experts)) if alive is None else list(alive)
    converged = False
    n_iter = int(n_iter)
    verified = verifiable(m)
    done = None
    while True:
        stats, passes, mean_ll = _pruned_e_step(m, source, total, prune_threshold, alive, pruned, n_iter, stacklevel=4,
                                                done=done)
        history.append(mean_ll)
        if callback is not None:
            callback(n_iter, mean_ll, m)
        if verbose and n_iter % verbose == 0:
            print(f"EM iter {n_iter:4d}  mean log-likelihood {mean_ll:.8f}")
        if len(history) > 1 and abs(history[-1] - history[-2]) < tol:
            converged = True
            break
        if n_iter >= max_iter:
            break
        done = iteration_m_step(m, source.batches, source.reduce, total, stats, passes, verified)
        n_iter += 1
        if saver is not None:
            saver(m, {"history": history, "n_iter": n_iter, "converged": False, "pruned": pruned, "alive": alive,
                      "done": False})
    out = {"history": history, "n_iter": n_iter, "converged": converged, "pruned": pruned}
    if saver is not None:
        saver(m, {**out, "alive": alive, "done": True})
    return out


def _saver(path, fingerprint: dict) -> Callable:
    """``saver(model, state)``: an atomic checkpoint of the model and the EM state (with the fit's fingerprint)."""
    def save(m, state: dict) -> None:
        save_em_checkpoint(path, m, {**state, "history": [float(h) for h in state["history"]],
                                     "pruned": [int(k) for k in state["pruned"]],
                                     "alive": [int(k) for k in state["alive"]], "fingerprint": fingerprint})
    return save


def _check_fingerprint(path, state: dict, fingerprint: dict) -> None:
    """A checkpoint resumes only the fit that wrote it: same data (total weight), max_iter and tol."""
    old = state.get("fingerprint", {})
    for key, value in fingerprint.items():
        if old.get(key) != value:
            raise ValueError(f"checkpoint {path!r} was written by a fit with {key}={old.get(key)!r}, this fit has "
                             f"{key}={value!r}: resume with the same data and settings, or start afresh without resume")


# ------------------------------------------------------------------ SQUAREM
def _snapshot(m) -> dict:
    """Every floating-point parameter of ``m`` by name, cloned."""
    return {n: p.detach().clone() for n, p in m.named_parameters() if p.is_floating_point()}


def _load(m, theta: dict) -> None:
    params = dict(m.named_parameters())
    with torch.no_grad():
        for n, t in theta.items():
            params[n].data.copy_(t)


def _would_prune(m, stats, total: float, root_threshold: float, root: bool = True) -> bool:
    """Whether :func:`_em_loop`'s root pruning or ``m.prune_vanishing`` would remove an expert at ``stats``."""
    thr = root_threshold if root else m.prune_threshold
    if thr and m.n_experts > 1 and total > 0 and bool(((stats["weight"] / total) < thr).any()):
        return True
    if not m.is_stacked:
        for k, e in enumerate(m.experts):
            if hasattr(e, "prune_vanishing") and _would_prune(e, stats["experts"][str(k)], total, 0.0, root=False):
                return True
    return False


def _squarem_loop(m, source, total, max_iter, tol, prune_threshold, verbose, callback, history=()) -> dict:
    """:func:`_em_loop` with SQUAREM cycles (see ``fit_em(accelerate="squarem")``).

    ``n_iter`` counts M-steps (three per cycle, rejected ones included);
    ``history`` the mean log-likelihoods of the points kept.
    """
    history = list(history)
    pruned: list[int] = []
    alive = list(range(m.n_experts))
    state = {"n_iter": 0, "accelerate": True}

    def e_step():
        """The E-step at the current parameters, with :func:`_em_loop`'s pruning (which ends the acceleration)."""
        before = len(pruned)
        out = _pruned_e_step(m, source, total, prune_threshold, alive, pruned, state["n_iter"], stacklevel=5)
        if len(pruned) > before:
            state["accelerate"] = False
        return out

    def record(mean_ll: float) -> None:
        history.append(mean_ll)
        if callback is not None:
            callback(state["n_iter"], mean_ll, m)
        if verbose and state["n_iter"] % verbose == 0:
            print(f"EM iter {state['n_iter']:4d}  mean log-likelihood {mean_ll:.8f}")

    def done() -> bool:
        return len(history) > 1 and abs(history[-1] - history[-2]) < tol

    def em_map(stats, passes):
        """One plain EM step from the current parameters (whose E-step is ``stats, passes``); records it."""
        while m.prune_vanishing(stats, float(stats["weight"].sum())):
            state["accelerate"] = False
            stats, passes = e_step_pass(m, source.batches, source.reduce)
        m.m_step(stats, passes)
        state["n_iter"] += 1
        stats, passes, mean_ll = e_step()
        record(mean_ll)
        return stats, passes

    stats, passes, mean_ll = e_step()
    record(mean_ll)
    converged = done()
    while not converged and state["n_iter"] < max_iter:
        if not state["accelerate"]:
            stats, passes = em_map(stats, passes)
            converged = done()
            continue
        theta0 = _snapshot(m)
        stats, passes = em_map(stats, passes)
        converged = done()
        if converged or state["n_iter"] >= max_iter or not state["accelerate"]:
            continue
        theta1 = _snapshot(m)
        stats, passes = em_map(stats, passes)
        converged = done()
        if converged or state["n_iter"] >= max_iter or not state["accelerate"]:
            continue
        ll2 = history[-1]
        theta2 = _snapshot(m)
        stats, passes = _squarem_jump(m, source, total, prune_threshold, theta0, theta1, theta2, ll2, stats, passes,
                                      state, record)
    return {"history": history, "n_iter": state["n_iter"], "converged": converged, "pruned": pruned}


def _squarem_jump(m, source, total, prune_threshold, theta0, theta1, theta2, ll2, stats2, passes2, state, record):
    """The extrapolation of one SQUAREM cycle and its stabilising EM step, kept only if it does not lower the
    log-likelihood below ``ll2`` (else the model is put back at ``theta2``).  Returns the E-step of the point kept."""
    r = {n: theta1[n] - theta0[n] for n in theta2}
    v = {n: theta2[n] - theta1[n] - r[n] for n in theta2}
    nr = math.sqrt(sum(float((t * t).sum()) for t in r.values()))
    nv = math.sqrt(sum(float((t * t).sum()) for t in v.values()))
    if not (nv > 0 and math.isfinite(nr) and math.isfinite(nv)):
        return stats2, passes2
    alpha = min(-nr / nv, -1.0)
    if alpha == -1.0:  # the extrapolated point is theta2 itself
        return stats2, passes2
    _load(m, {n: theta0[n] - 2.0 * alpha * r[n] + alpha * alpha * v[n] for n in theta2})
    ok, stepped = False, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s, p = e_step_pass(m, source.batches, source.reduce)
            if math.isfinite(float(s["loglik"])) and not _would_prune(m, s, total, prune_threshold):
                m.m_step(s, p)
                stepped = True
                s, p = e_step_pass(m, source.batches, source.reduce)
                ll3 = float(s["loglik"]) / total
                ok = math.isfinite(ll3) and ll3 >= ll2 and not _would_prune(m, s, total, prune_threshold)
    except (RuntimeError, ValueError, ArithmeticError, DivergenceError):  # e.g. a failed factorisation far out
        ok = False
    if stepped:
        state["n_iter"] += 1  # the stabilising M-step's work counts, kept or not
    if ok:
        record(ll3)
        return s, p
    _load(m, theta2)
    return stats2, passes2
