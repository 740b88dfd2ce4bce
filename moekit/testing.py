"""Conformance checks that every expert family and every gate must pass.

A new expert or gate is correct when :func:`check_expert` / :func:`check_gate`
pass on it: the contracts of ``docs``/DESIGN (experts return torch
distributions with batch shape (n,), gates return log-weights whose
``logsumexp`` is 0, statistics are additive values) and the properties EM
relies on (a weighted M-step never lowers its objective and, for families
with an exact or Newton M-step, reaches the optimum of the weighted
objective; integer weights equal repeated rows; log-densities have correct
gradients; nothing is created off the model's device).

Each check raises ``AssertionError`` naming the property that failed, so the
functions can be called from any test runner.

Examples
--------
>>> import torch
>>> from moekit import LinearGaussianExpert
>>> from moekit.testing import check_expert, regression_data
>>> x, y = regression_data(n=60, d=2, seed=0)
>>> check_expert(lambda: LinearGaussianExpert(2), x, y)
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch.autograd import gradcheck

from ._mstep import has_stats

__all__ = [
    "check_expert",
    "check_gate",
    "regression_data",
    "count_data",
    "class_data",
    "soft_targets",
]


# ------------------------------------------------------------------ data
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def regression_data(n: int = 80, d: int = 2, d_y: int | None = None, seed: int = 0, dtype=torch.float64):
    """Inputs and a noisy linear response: x (n, d), y (n,) or (n, d_y)."""
    g = _gen(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    cols = 1 if d_y is None else d_y
    beta = torch.randn(d, cols, generator=g, dtype=dtype)
    y = x @ beta + 0.3 * torch.randn(n, cols, generator=g, dtype=dtype)
    return x, (y[:, 0] if d_y is None else y)


def count_data(n: int = 80, d: int = 2, seed: int = 0, dtype=torch.float64):
    """Inputs and Poisson counts: x (n, d), y (n,) float counts."""
    g = _gen(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    rate = (0.5 + 0.4 * x[:, 0]).exp()
    return x, torch.poisson(rate, generator=g)


def class_data(n: int = 80, d: int = 2, n_classes: int = 2, seed: int = 0, dtype=torch.float64):
    """Inputs and integer class labels from a noisy linear score: x (n, d), y (n,) long."""
    g = _gen(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    score = x @ torch.randn(d, n_classes, generator=g, dtype=dtype) + torch.randn(n, n_classes, generator=g, dtype=dtype)
    return x, score.argmax(1)


def soft_targets(n: int, k: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Positive targets (n, K) for a gate: weight times responsibility, rows summing to a weight in [0.5, 1.5]."""
    g = _gen(seed)
    r = torch.rand(n, k, generator=g, dtype=dtype) + 0.05
    return r / r.sum(1, keepdim=True) * (0.5 + torch.rand(n, 1, generator=g, dtype=dtype))


def _row_weights(n: int, seed: int, dtype) -> torch.Tensor:
    return torch.rand(n, generator=_gen(seed), dtype=dtype) + 0.1


def _integer_weights(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 4, (n,), generator=_gen(seed))


# ------------------------------------------------------------- helpers
def _params(m: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def _close(a, b, rtol, atol, what: str) -> None:
    for i, (u, v) in enumerate(zip(a, b)):
        if not torch.allclose(u, v, rtol=rtol, atol=atol):
            raise AssertionError(f"{what}: tensor {i} differs by {float((u - v).abs().max()):.3g}")


def _stats_close(a, b, rtol: float, atol: float, what: str) -> None:
    if set(a) != set(b):
        raise AssertionError(f"{what}: keys {sorted(a)} != {sorted(b)}")
    _close(a.tensors(), b.tensors(), rtol, atol, what)


def _expert_objective(e, x, y, w) -> float:
    with torch.no_grad():
        lp = e.log_prob(x, y)
        obj = (w * lp).sum()
        if getattr(e, "l2", 0) > 0:
            obj = obj - e.penalty()
    return float(obj)


def _gate_objective(g, x, t) -> float:
    with torch.no_grad():
        obj = (t * g(x)).sum()
        if getattr(g, "l2", 0) > 0:
            obj = obj - g.penalty()
    return float(obj)


def _not_worse_nearby(
    module, objective: Callable[[], float], scale: float, seed: int, what: str, reference_row: bool = False
) -> None:
    """No small random move of the free parameters raises the objective (the M-step's point is a local maximum).

    With ``reference_row``, the last row of a (K, p) ``coef`` is the softmax
    reference, held at zero by the M-step: it is not moved.  A stack with
    ``shared`` coefficients moves them
    together (its ``shared_mask()``), as one coefficient, so that the move
    stays in the model.
    """
    base = objective()
    params = [p for p in module.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    g = _gen(seed)
    try:
        for _ in range(8):
            with torch.no_grad():
                for p, s in zip(params, saved):
                    step = scale * torch.randn(s.shape, generator=g, dtype=s.dtype).to(s.device)
                    if reference_row and p is getattr(module, "coef", None) and p.dim() == 2:
                        step[-1] = 0.0
                    tied = _shared_mask(module) if p is getattr(module, "coef", None) else None
                    if tied is not None:  # one move of each shared coefficient, the same in every expert
                        step[:, tied] = step[:1, tied]
                    p.copy_(s + step)
            moved = objective()
            if moved > base + 1e-9 * (1 + abs(base)):
                raise AssertionError(f"{what}: a random move of size {scale:g} raised the objective "
                                     f"from {base:.10g} to {moved:.10g}: the M-step did not reach the optimum")
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def _shared_mask(module):
    """Which entries of one expert's ``coef`` all experts of the stack share (``shared_mask()``), or None."""
    if not getattr(module, "stacked", False) or getattr(module, "n_experts", 1) < 2 or not getattr(module, "shared", ()):
        return None
    return module.shared_mask()


def _gradcheck(module, fn: Callable[[], torch.Tensor], what: str) -> None:
    """``torch.autograd.gradcheck`` of ``fn()`` with respect to the module's float64 parameters."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad and p.dtype == torch.float64]
    if not named:
        return
    names = [n for n, _ in named]
    inputs = tuple(p.detach().clone().requires_grad_(True) for _, p in named)
    if not gradcheck(lambda *v: _with_params(module, dict(zip(names, v)), fn), inputs, eps=1e-6, atol=1e-5, rtol=1e-4):
        raise AssertionError(f"{what}: gradcheck failed")  # pragma: no cover - gradcheck raises itself


def _with_params(module, mapping: dict, fn):
    """Evaluate ``fn()`` with the named parameters of ``module`` replaced by ``mapping``'s tensors."""
    originals = {}
    for name, value in mapping.items():
        owner = module
        *path, leaf = name.split(".")
        for part in path:
            owner = getattr(owner, part)
        originals[name] = (owner, leaf, owner._parameters[leaf])
        owner._parameters[leaf] = value
    try:
        return fn()
    finally:
        for owner, leaf, p in originals.values():
            owner._parameters[leaf] = p


def _check_m_step(module, fit, objective, exact: bool, seed: int, what: str, reference_row: bool = False) -> None:
    """``fit()`` never lowers ``objective()``; with ``exact``, its point (or, for Newton / ECM
    components, the fixed point of repeated fits) is a maximum."""
    before = objective()
    fit()
    after = objective()
    if after < before - 1e-9 * (1 + abs(before)):
        raise AssertionError(f"{what}fit_weighted lowered the weighted objective from {before:.10g} to {after:.10g}")
    if not exact:
        return
    if not getattr(module, "m_step_exact", True):
        for _ in range(30):
            prev = after
            fit()
            after = objective()
            if after - prev <= 1e-12 * (1 + abs(prev)):
                break
    _not_worse_nearby(module, objective, 1e-4, seed, f"{what}M-step optimum", reference_row=reference_row)


def _under_meta_default(fn):
    """Run ``fn`` with ``meta`` as PyTorch's default device: a tensor created without a device fails."""
    with torch.device("meta"):
        return fn()


# ---------------------------------------------------------------- experts
def check_expert(
    make: Callable[[], torch.nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    exact_m_step: bool | None = None,
    rtol: float = 1e-8,
    seed: int = 0,
) -> None:
    """Check the expert contract and the M-step properties of one expert family.

    Parameters
    ----------
    make : callable
        Returns a fresh expert (single or stacked) each call, always the same.
    x, y : Tensors
        Data it can be fitted on.
    exact_m_step : bool, optional
        Whether the M-step maximises the weighted objective (default: the
        family has statistics).  Exact families (``m_step_exact``) must reach
        the maximum in one ``fit_weighted``; Newton / ECM families at the fixed
        point of repeated calls.  Gradient-fitted families (neural networks)
        only never lower it.
    rtol : float
        Tolerance of the equalities (additivity, repeated rows).
    seed : int
        Seeds the weights and the random moves.

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y); a stacked expert of K gets weights (n, K).

    Raises
    ------
    AssertionError
        Naming the first property that fails.
    """
    n = x.shape[0]
    e = make()
    k = e.n_experts if getattr(e, "stacked", False) else None
    dtype = next((p.dtype for p in e.parameters() if p.is_floating_point()), x.dtype)
    x = x.to(dtype)
    if y.is_floating_point():
        y = y.to(dtype)

    def weights(s):
        w = _row_weights(n, s, dtype)
        return w if k is None else torch.stack([_row_weights(n, s + j + 1, dtype) for j in range(k)], 1)

    w = weights(seed)
    e.init_from_responsibilities(x, y, w)

    # 1. shapes: forward is a distribution with batch (n,) [or (n, K)], log_prob agrees with it
    dist = e(x)
    want = (n,) if k is None else (n, k)
    if tuple(dist.batch_shape) != want:
        raise AssertionError(f"forward(x).batch_shape is {tuple(dist.batch_shape)}, expected {want}")
    lp = e.log_prob(x, y)
    if tuple(lp.shape) != want:
        raise AssertionError(f"log_prob(x, y).shape is {tuple(lp.shape)}, expected {want}")
    if not torch.isfinite(lp).all():
        raise AssertionError("log_prob(x, y) is not finite")
    if k is None and y.dtype != torch.long:
        direct = dist.log_prob(y)
        if not torch.allclose(direct.to(lp.dtype), lp, rtol=1e-10, atol=1e-10):
            raise AssertionError("log_prob(x, y) differs from forward(x).log_prob(y)")

    # 2. statistics are additive values
    if has_stats(e):
        cut = n // 3
        whole = e.suff_stats(x, y, w)
        parts = e.suff_stats(x[:cut], y[:cut], w[:cut]) + e.suff_stats(x[cut:], y[cut:], w[cut:])
        _stats_close(whole, parts, rtol, 1e-10, "statistics are not additive (stats(a) + stats(b) != stats(a+b))")

    # 3. the weighted M-step never lowers its objective, and exact families reach its maximum
    exact = has_stats(e) if exact_m_step is None else exact_m_step
    _check_m_step(e, lambda: e.fit_weighted(x, y, w), lambda: _expert_objective(e, x, y, w), exact, seed, "")

    # 4. integer weights equal repeated rows
    if has_stats(e):
        reps = _integer_weights(n, seed + 7)
        idx = torch.repeat_interleave(torch.arange(n), reps)
        wi = reps.to(dtype) if k is None else reps.to(dtype)[:, None].expand(n, k).contiguous()
        a = make()
        a.init_from_responsibilities(x, y, w)
        b = copy.deepcopy(a)  # the same start: the property is about the M-step
        a.fit_weighted(x, y, wi)
        b.fit_weighted(x[idx], y[idx], torch.ones(len(idx), dtype=dtype) if k is None else torch.ones(len(idx), k, dtype=dtype))
        _close(_params(a), _params(b), 1e-6, 1e-8, "integer weights differ from repeated rows")

    # 5. gradients of the log-density are right (float64 families)
    if dtype == torch.float64:
        xs, ys = x[:12], y[:12]
        _gradcheck(e, lambda: e.log_prob(xs, ys), "gradcheck of log_prob")

    # 6. nothing is created off the model's device
    ref = copy.deepcopy(e)
    ref.fit_weighted(x, y, w)
    trapped = copy.deepcopy(e)
    _under_meta_default(lambda: trapped.fit_weighted(x, y, w))
    _close(_params(trapped), _params(ref), 0, 0, "fit_weighted under a foreign default device")
    out = _under_meta_default(lambda: trapped.log_prob(x, y))
    if not torch.equal(out, ref.log_prob(x, y)):
        raise AssertionError("log_prob under a foreign default device differs")


# ------------------------------------------------------------------- gates
def check_gate(
    make: Callable[[], torch.nn.Module],
    x: torch.Tensor,
    targets: torch.Tensor,
    *,
    exact_m_step: bool | None = None,
    rtol: float = 1e-8,
    seed: int = 0,
) -> None:
    """Check the gate contract and its M-step properties.

    Parameters
    ----------
    make : callable
        Returns a fresh gate each call.
    x : Tensor (n, d_x)
    targets : Tensor (n, K)
        Non-negative weight-times-responsibility targets.
    exact_m_step : bool, optional
        Whether ``fit_weighted`` reaches the maximum of ``sum(targets * log g)``
        (default: the gate has statistics).
    rtol : float
    seed : int

    Shapes
    ------
    x (n, d_x); targets (n, K); forward (n, K).

    Raises
    ------
    AssertionError
        Naming the first property that fails.
    """
    n = x.shape[0]
    g = make()
    k = g.n_experts
    dtype = next((p.dtype for p in g.parameters() if p.is_floating_point()), x.dtype)
    x, targets = x.to(dtype), targets.to(dtype)

    lw = g(x)
    if tuple(lw.shape) != (n, k):
        raise AssertionError(f"gate output shape is {tuple(lw.shape)}, expected {(n, k)}")
    lse = torch.logsumexp(lw, dim=1)
    if not torch.allclose(lse, torch.zeros_like(lse), atol=1e-6 if dtype == torch.float32 else 1e-12):
        raise AssertionError("the gate's log-weights do not sum to one (logsumexp != 0)")

    if has_stats(g):
        cut = n // 3
        _stats_close(g.suff_stats(x, targets), g.suff_stats(x[:cut], targets[:cut]) + g.suff_stats(x[cut:], targets[cut:]),
                     rtol, 1e-10, "gate statistics are not additive")

    exact = has_stats(g) if exact_m_step is None else exact_m_step
    _check_m_step(g, lambda: g.fit_weighted(x, targets), lambda: _gate_objective(g, x, targets), exact, seed, "gate ",
                  reference_row=True)

    if has_stats(g):
        reps = _integer_weights(n, seed + 7)
        idx = torch.repeat_interleave(torch.arange(n), reps)
        a = make()
        b = copy.deepcopy(a)
        a.fit_weighted(x, targets * reps.to(dtype)[:, None])
        b.fit_weighted(x[idx], targets[idx])
        _close(_params(a), _params(b), 1e-6, 1e-8, "gate: integer weights differ from repeated rows")

    if dtype == torch.float64:
        xs = x[:12]
        _gradcheck(g, lambda: g(xs), "gradcheck of the gate")

    ref = copy.deepcopy(g)
    ref.fit_weighted(x, targets)
    trapped = copy.deepcopy(g)
    _under_meta_default(lambda: trapped.fit_weighted(x, targets))
    _close(_params(trapped), _params(ref), 0, 0, "gate fit_weighted under a foreign default device")
