"""Gates: modules that map x to LOG mixing weights over K experts.

Every gate's ``forward(x)`` returns an (n, K) tensor whose ``logsumexp`` over
the expert axis is 0.  The gate's M-step is a weighted multinomial-logistic
fit of the experts' responsibilities ("soft targets"):

    maximise  sum_i sum_k T_ik log g_k(x_i),   T_ik = w_i r_ik.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._linalg import (AffineInputs, add_intercept, affine, chunk_rows, log_softmax_rows, packed_design, solve_spd,
                      symmetric_products_cheaper, transposed_design, weighted_grams)
from ._mstep import fit_in_memory, gradient_maximize
from .experts.newton import (multinomial_finish, multinomial_gram_columns, multinomial_newton_stats, multinomial_row_terms,
                             multinomial_row_terms_t)
from .stats import SuffStats

__all__ = ["Gate", "SoftmaxGate", "ConstantGate", "MLPGate"]

_HESSIANS = ("full", "block", "bound")
#: Fewest Newton steps of a softmax gate's ``fit_weighted`` (the initial fit to a partition).
_FIT_STEPS = 5


class Gate(AffineInputs, nn.Module):
    """Base class of gates.

    Subclasses implement ``forward`` and either ``suff_stats`` and
    ``m_step`` (an exact or Newton M-step) or their own ``fit_weighted``.

    Parameters
    ----------
    n_experts : int
        K, the number of experts the gate weighs (>= 1).

    Shapes
    ------
    forward(x): (n, d_x) -> (n, K) log mixing weights; ``fit_weighted``
    and ``objective`` take x (n, d_x) and targets (n, K).

    Examples
    --------
    >>> import torch
    >>> from moekit import ConstantGate, Gate, SoftmaxGate
    >>> issubclass(SoftmaxGate, Gate), issubclass(ConstantGate, Gate)
    (True, True)
    >>> g = SoftmaxGate(n_features=2, n_experts=3)
    >>> x = torch.zeros(4, 2, dtype=torch.float64)
    >>> g(x).shape  # zero coefficients: uniform weights
    torch.Size([4, 3])
    >>> round(float(g.objective(x, torch.ones(4, 3, dtype=torch.float64)).detach()), 4)  # 12 log(1/3)
    -13.1833
    """

    m_step_exact = True
    max_m_steps = 1
    has_suff_stats = True
    #: Whether ``suff_stats`` accepts ``log_gate=`` (the E-step's output of this gate, to save recomputing it).
    reuses_log_gate = False

    def __init__(self, n_experts: int):
        super().__init__()
        if not (isinstance(n_experts, int) and n_experts >= 1):
            raise ValueError(f"n_experts must be a positive int, got {n_experts!r}")
        self.n_experts = n_experts

    def fit_weighted(self, x: torch.Tensor, targets: torch.Tensor):
        """Weighted M-step: never lowers ``sum(targets * log g(x))``.

        Shapes
        ------
        x : (n, d_x); targets : (n, K) non-negative (weight times responsibility).
        """
        fit_in_memory(self, x, targets)
        return self

    def objective(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``sum(targets * log g(x))`` (a scalar tensor)."""
        c = chunk_rows(self.n_experts * 4)
        if x.shape[0] <= c:
            return (targets * self(x)).sum()
        return sum((targets[i : i + c] * self(x[i : i + c])).sum() for i in range(0, x.shape[0], c))

    def n_parameters(self) -> int:
        """Number of free parameters."""
        return sum(p.numel() for p in self.parameters())

    def select(self, index: Sequence[int]) -> "Gate":  # pragma: no cover - abstract
        raise NotImplementedError


class ConstantGate(Gate):
    """Input-independent mixing weights (an ordinary mixture of regressions).

    Parameters
    ----------
    n_experts : int
        K.
    dtype : torch.dtype

    Shapes
    ------
    logits : (K,); forward: (n, d_x) -> (n, K), the same row for every x
    (x only sets n, any d_x); ``fit_weighted`` takes x (n, d_x) and targets
    (n, K).

    Examples
    --------
    >>> import torch
    >>> g = ConstantGate(3)
    >>> g(torch.zeros(2, 5, dtype=torch.float64)).exp()
    tensor([[0.3333, 0.3333, 0.3333],
            [0.3333, 0.3333, 0.3333]], dtype=torch.float64, grad_fn=<ExpBackward0>)
    """

    def __init__(self, n_experts: int, dtype: torch.dtype = torch.float64):
        super().__init__(n_experts)
        self.logits = nn.Parameter(torch.zeros(n_experts, dtype=dtype))

    def input_slopes(self) -> torch.Tensor:
        """None of its parameters multiplies x: an empty view."""
        return self.logits.data[:0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.logits, dim=0).expand(x.shape[0], -1)

    def suff_stats(self, x: torch.Tensor, targets: torch.Tensor) -> SuffStats:
        return SuffStats(t=targets.sum(0))

    @torch.no_grad()
    def m_step(self, stats: SuffStats) -> None:
        t = stats["t"].to(self.logits.dtype)
        tiny = torch.finfo(t.dtype).tiny
        self.logits.data.copy_((t.clamp_min(tiny) / t.sum().clamp_min(tiny)).log())

    def n_parameters(self) -> int:
        return self.n_experts - 1

    def select(self, index):
        new = copy.deepcopy(self)
        idx = torch.as_tensor(list(index), dtype=torch.long, device=self.logits.device)
        new.n_experts = len(idx)
        new.logits = nn.Parameter(self.logits.detach()[idx].clone())
        return new


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` with contiguous rows: the transpose of (n, K) targets is copied once (reductions and products over
    its strided rows take 3-5 times as long as the copy and a contiguous pass), a view with contiguous rows
    is kept as it is."""
    return t if t.stride(-1) == 1 else t.contiguous()


class SoftmaxGate(Gate):
    """The classic gate: ``g(x) = softmax(W [1, x])``, fitted by Newton-Raphson (IRLS).

    Inside EM the M-step takes ``max_m_steps`` Newton steps (default one: an
    ECM step, which is the fastest way to the maximum of the likelihood, the
    gate's own optimum being a moving target) on the weighted multinomial
    log-likelihood, with step-halving, so it never lowers the objective.
    ``fit_weighted`` (the initialisation) takes up to ``max(max_m_steps, 5)``.
    The last expert's row is the reference (kept at zero by the M-step; the
    softmax does not change).

    Parameters
    ----------
    n_features : int
        Number of gate inputs d_x.
    n_experts : int
        K.
    l2 : float
        Optional ridge penalty on the non-intercept coefficients
        (``0.5 * l2 * ||W[:, 1:]||^2`` is subtracted from the objective).
    max_m_steps : int
        Newton steps per EM M-step.
    dtype : torch.dtype
    hessian : {"full", "block", "bound"}
        The curvature of a Newton step.  "full": the exact information,
        ``(K-1) p`` square (``p = d_x + 1``), the fewest EM iterations.
        "block": its K-1 diagonal (p, p) blocks, a fraction 1/(K-1) of the
        cost per step and usually more iterations.  "bound": Böhning's
        (1992) fixed curvature ``0.5 (I - 1 1^T / K) (x) X^T diag(w) X``, which
        bounds the information, so each step increases the objective without
        a line search; it needs only one (p, p) Gram matrix, but sharp gates
        make the bound loose and EM slow.  See ``benchmarks/em_speed.py``.

    Shapes
    ------
    coef : (K, d_x + 1); forward: (n, d_x) -> (n, K); ``fit_weighted`` takes
    x (n, d_x) and targets (n, K).

    Examples
    --------
    >>> import torch
    >>> x = torch.linspace(-1, 1, 20, dtype=torch.float64)[:, None]
    >>> targets = torch.stack([x[:, 0] < 0, x[:, 0] >= 0], 1).to(torch.float64)  # expert 0 left, 1 right
    >>> g = SoftmaxGate(n_features=1, n_experts=2).fit_weighted(x, targets)
    >>> g.coef.shape, g(torch.tensor([[-0.9], [0.9]], dtype=torch.float64)).argmax(1).tolist()
    (torch.Size([2, 2]), [0, 1])
    """

    m_step_exact = False
    reuses_log_gate = True

    def __init__(
        self,
        n_features: int,
        n_experts: int,
        l2: float = 0.0,
        max_m_steps: int = 1,
        dtype: torch.dtype = torch.float64,
        hessian: str = "full",
    ):
        super().__init__(n_experts)
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2!r}")
        if hessian not in _HESSIANS:
            raise ValueError(f"hessian must be one of {_HESSIANS}, got {hessian!r}")
        self.n_features = n_features
        self.l2 = float(l2)
        if not (isinstance(max_m_steps, int) and max_m_steps >= 1):
            raise ValueError(f"max_m_steps must be a positive int, got {max_m_steps!r}")
        self.max_m_steps = max_m_steps
        self.hessian = hessian
        self.coef = nn.Parameter(torch.zeros(n_experts, n_features + 1, dtype=dtype))

    def extra_repr(self) -> str:
        return f"n_features={self.n_features}, n_experts={self.n_experts}, l2={self.l2}"

    def input_slopes(self) -> torch.Tensor:
        """The coefficients of x: ``coef[:, 1:]`` (column 0 holds the intercepts)."""
        return self.coef.data[:, 1:]

    def fit_weighted(self, x: torch.Tensor, targets: torch.Tensor):
        """Weighted M-step of up to ``max(max_m_steps, 5)`` Newton steps: never lowers ``sum(targets * log g(x))``.

        Shapes
        ------
        x : (n, d_x); targets : (n, K) non-negative (weight times responsibility).
        """
        fit_in_memory(self, x, targets, max_steps=max(self.max_m_steps, _FIT_STEPS))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return log_softmax_rows(affine(x, self.coef))

    def objective(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``sum(targets * log g(x))`` (a scalar tensor), over the transposed design ``[1, x]^T`` (kept across EM
        iterations by :func:`~moekit._linalg.design_cache`): the trial points of the Newton steps' step-halving."""
        coef = self.coef
        if x.dtype != coef.dtype or x.shape[0] == 0 or x.requires_grad:
            return super().objective(x, targets)
        xt = transposed_design(x)
        c = chunk_rows(2 * self.n_experts)
        return sum((torch.log_softmax(coef @ xt[:, i : i + c], dim=0) * targets[i : i + c].T).sum()
                   for i in range(0, x.shape[0], c))

    def n_parameters(self) -> int:
        return (self.n_experts - 1) * (self.n_features + 1)

    def suff_stats(self, x: torch.Tensor, targets: torch.Tensor, log_gate: torch.Tensor | None = None) -> SuffStats:
        """Objective, gradient and information matrix at the current coefficients.

        ``log_gate``, this gate's output on ``x`` at the current coefficients
        when the caller has it (the E-step), is used instead of recomputing it.

        Shapes
        ------
        x (n, d_x); targets (n, K); log_gate (n, K).
        Returns ``objective`` (), ``grad`` (K-1, p) and ``info``: ((K-1) p, (K-1) p)
        for ``hessian="full"``, (K-1, p, p) for "block", (p, p) for "bound".
        """
        k, p = self.n_experts, self.n_features + 1
        mg = self.design_columns(p)
        if mg is not None and x.dtype == self.coef.dtype and x.shape[0] > 0:
            return self._stats_transposed(x, targets, log_gate, mg)
        c = chunk_rows(k * (k + 1) // 2 + 2 * k)  # per row: the pair weights of the information, g and s g
        return sum(
            self._stats_chunk(x[i : i + c], targets[i : i + c], None if log_gate is None else log_gate[i : i + c])
            for i in range(0, max(x.shape[0], 1), c)
        )

    def _stats_transposed(self, x, targets, log_gate, mg: int) -> SuffStats:
        """:meth:`suff_stats` over the transposed design ``[1, x]^T`` (kept across EM iterations by
        :func:`~moekit._linalg.design_cache`), experts by rows, in row chunks: the gate's initial fit and
        its Newton steps' statistics, as the mixture's E-step over that design forms them."""
        k, p, n = self.n_experts, self.n_features + 1, x.shape[0]
        coef = self.coef.detach()
        xt = transposed_design(x)
        packed = None if symmetric_products_cheaper(mg, p) else packed_design(x)
        c = chunk_rows(2 * k + mg)  # per row: logits (or log-weights), targets and the Newton rows
        total = None
        for i in range(0, n, c):
            xc = xt[:, i : i + c]
            lg = self.log_gate_t(coef @ xc) if log_gate is None else _rows(log_gate[i : i + c].T.to(coef.dtype))
            partial, lin, w = self.design_terms_t(lg, _rows(targets[i : i + c].T.to(coef.dtype)), p)
            grams = weighted_grams(None, w.T, xt=xc, q=None if packed is None else packed[:, i : i + c])
            part = (partial, lin @ xc.T, grams)
            total = part if total is None else tuple(a + b for a, b in zip(total, part))
        return self.design_finish(*total)

    def _stats_chunk(self, x, targets, logg) -> SuffStats:
        coef = self.coef.detach()
        xd = add_intercept(x.to(coef.dtype))
        if logg is None:
            logg = log_softmax_rows(xd @ coef.T)
        objective, grad, info = multinomial_newton_stats(
            xd, logg[:, None, :], targets.to(coef.dtype)[:, None, :], self.hessian
        )
        return SuffStats(objective=objective, grad=grad.reshape(self.n_experts - 1, self.n_features + 1), info=info[0])

    # ------------------------------------------------- statistics on a shared design
    def design_columns(self, p: int) -> int | None:
        """How many weighted Gram blocks of the design ``[1, x]`` (``p`` columns) :meth:`design_terms` asks for.

        None where this gate computes its information otherwise (as a symmetric product: few inputs,
        many experts), so that it does not share a design.
        """
        if p != self.n_features + 1:
            return None
        return multinomial_gram_columns(1, self.n_experts, self.hessian, p)

    def design_terms(self, xd: torch.Tensor, targets: torch.Tensor, log_gate: torch.Tensor, out: torch.Tensor | None = None):
        """The per-row terms of :meth:`suff_stats` on a design ``xd = [1, x]`` that the caller shares.

        Returns ``(partial, lin, w)``: the statistics that need no product with the design
        (``objective``), the rows ``lin`` whose product ``lin^T xd`` the caller forms, and the weights
        ``w`` of the Gram blocks ``X^T diag(w_j) X`` it forms; :meth:`design_finish` completes the
        statistics from the sums of the three over row chunks.  None when :meth:`design_columns` is.
        ``out`` (n, design_columns(p)), e.g. columns of the caller's work array, receives ``w``.

        Shapes
        ------
        xd (n, p); targets (n, K); log_gate (n, K) this gate's output at the current coefficients.
        Returns partial, lin (n, K), w (n, design_columns(p)).
        """
        dtype = self.coef.dtype
        objective, resid, w = multinomial_row_terms(
            log_gate.to(dtype)[:, None, :], targets.to(dtype)[:, None, :], self.hessian, xd.shape[1], out=out
        )
        if w is None:
            return None
        return SuffStats(objective=objective), resid, w

    def design_finish(self, partial: SuffStats, lin_x: torch.Tensor, grams: torch.Tensor) -> SuffStats:
        """:meth:`suff_stats` from the summed ``partial``, ``lin^T xd`` (K, p) and Gram blocks of :meth:`design_terms`."""
        grad, info = multinomial_finish(lin_x, grams, 1, self.n_experts, self.hessian)
        return SuffStats(objective=partial["objective"], grad=grad.reshape(self.n_experts - 1, self.n_features + 1),
                         info=info[0])

    # ---------------------------------------- one pass over a transposed design (experts by rows)
    def design_coef(self, p: int) -> torch.Tensor | None:
        """The rows whose products with ``[1, x]`` (``p`` columns) are this gate's logits: (K, p); None when
        ``p`` is not this gate's."""
        if p != self.n_features + 1:
            return None
        return self.coef.detach()

    def log_gate_t(self, logits: torch.Tensor) -> torch.Tensor:
        """Log mixing weights from the logits ``design_coef(p) @ [1, x]^T``, experts by rows.

        Shapes
        ------
        logits (K, n) -> (K, n).
        """
        return torch.log_softmax(logits, dim=0)

    def design_terms_t(self, log_gate: torch.Tensor, targets: torch.Tensor, p: int):
        """:meth:`design_terms` with experts by rows: ``(partial, lin (K, n), w (m, n))``, or None where the
        information is one symmetric product (:meth:`design_columns` is None).

        Shapes
        ------
        log_gate (K, n) this gate's output at the current coefficients; targets (K, n).
        """
        objective, resid, w = multinomial_row_terms_t(log_gate, targets, self.hessian, p)
        if w is None:
            return None
        return SuffStats(objective=objective), resid, w

    def penalty(self) -> torch.Tensor:
        """The ridge penalty ``0.5 * l2 * ||W[:, 1:]||^2`` at the current coefficients."""
        return 0.5 * self.l2 * (self.coef.detach()[:, 1:] ** 2).sum()

    @torch.no_grad()
    def m_step(self, stats: SuffStats) -> None:
        """One Newton step from the statistics (the driver adds step-halving)."""
        k, p = self.n_experts, self.n_features + 1
        if k == 1:
            return
        coef = self.coef.data
        coef -= coef[k - 1].clone()  # reference row at zero (softmax-invariant)
        grad = stats["grad"]  # (K-1, p)
        info = self._information(stats["info"])
        block = self.hessian == "block"
        if self.l2 > 0:
            pen = torch.zeros(k - 1, p, dtype=coef.dtype, device=coef.device)
            pen[:, 1:] = self.l2
            grad = grad - pen * coef[: k - 1]
            info = info + (torch.diag_embed(pen) if block else torch.diag(pen.reshape(-1)))
        if block:  # K-1 separate (p, p) systems: the diagonal penalty couples no blocks
            step = solve_spd(info, grad[:, :, None])[:, :, 0]
        else:
            step = solve_spd(info, grad.reshape(-1, 1)).reshape(k - 1, p)
        coef[: k - 1] += step

    def _information(self, info: torch.Tensor) -> torch.Tensor:
        """The curvature of a Newton step from the ``info`` statistic of ``hessian``.

        "full": the ((K-1) p, (K-1) p) information as it is; "block": its
        (K-1, p, p) diagonal blocks as they are; "bound": Böhning's
        ``0.5 (I - 1 1^T / K) (x) G``, ((K-1) p, (K-1) p), from ``G = X^T diag(s) X``.
        """
        if self.hessian != "bound":
            return info
        k = self.n_experts
        eye = torch.eye(k - 1, dtype=info.dtype, device=info.device)
        return torch.kron(0.5 * (eye - 1.0 / k), info)

    def select(self, index):
        new = copy.deepcopy(self)
        idx = torch.as_tensor(list(index), dtype=torch.long, device=self.coef.device)
        new.n_experts = len(idx)
        new.coef = nn.Parameter(self.coef.detach()[idx].clone())
        return new


class MLPGate(Gate):
    """A gate computed by a small multilayer perceptron, fitted by gradient steps.

    Inside EM its M-step takes ``m_step_iter`` Adam steps on the weighted
    cross-entropy and keeps them only if they improve it (generalised EM).

    Parameters
    ----------
    n_features : int
    n_experts : int
    hidden_layer_sizes : sequence of int
    activation : {"tanh", "relu", "gelu"}
    m_step_iter : int
    learning_rate : float
    dtype : torch.dtype
    generator : torch.Generator, optional
        Source of randomness for the initial weights.

    Shapes
    ------
    forward: (n, d_x) -> (n, K); ``fit_weighted`` takes x (n, d_x) and
    targets (n, K).

    Examples
    --------
    >>> import torch
    >>> g = MLPGate(3, 4, hidden_layer_sizes=(8,), generator=torch.Generator().manual_seed(0))
    >>> log_g = g(torch.zeros(5, 3, dtype=torch.float64))
    >>> log_g.shape, bool(torch.allclose(log_g.logsumexp(1), torch.zeros(5, dtype=torch.float64)))
    (torch.Size([5, 4]), True)
    >>> g.n_parameters()  # (3 * 8 + 8) + (8 * 4 + 4)
    68
    """

    has_suff_stats = False
    m_step_exact = False

    def __init__(
        self,
        n_features: int,
        n_experts: int,
        hidden_layer_sizes: Sequence[int] = (32,),
        activation: str = "tanh",
        m_step_iter: int = 20,
        learning_rate: float = 1e-2,
        dtype: torch.dtype = torch.float64,
        generator: torch.Generator | None = None,
    ):
        super().__init__(n_experts)
        self.n_features = n_features
        self.m_step_iter = int(m_step_iter)
        self.learning_rate = float(learning_rate)
        self.net = make_mlp(n_features, n_experts, hidden_layer_sizes, activation, dtype, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.net(x), dim=1)

    def fit_weighted(self, x: torch.Tensor, targets: torch.Tensor):
        total = targets.sum().clamp_min(torch.finfo(targets.dtype).tiny)
        gradient_maximize(
            self, lambda: (targets * self(x)).sum() / total, n_steps=self.m_step_iter, lr=self.learning_rate
        )
        return self

    def select(self, index):
        new = copy.deepcopy(self)
        last = new.net[-1]
        idx = torch.as_tensor(list(index), dtype=torch.long, device=last.weight.device)
        last.weight = nn.Parameter(last.weight.detach()[idx].clone())
        last.bias = nn.Parameter(last.bias.detach()[idx].clone())
        last.out_features = len(idx)
        new.n_experts = len(idx)
        if hasattr(new, "_gem_optimizer"):
            del new._gem_optimizer
        return new


_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "elu": nn.ELU, "silu": nn.SiLU}


def make_mlp(
    n_in: int,
    n_out: int,
    hidden_layer_sizes: Sequence[int],
    activation: str = "tanh",
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """A plain MLP ``n_in -> hidden... -> n_out`` with seeded initial weights."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    sizes = [n_in, *[int(h) for h in hidden_layer_sizes], n_out]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1], dtype=dtype)
        bound = 1.0 / max(sizes[i], 1) ** 0.5
        with torch.no_grad():
            lin.weight.copy_((torch.rand(lin.weight.shape, generator=generator, dtype=dtype) * 2 - 1) * bound)
            lin.bias.copy_((torch.rand(lin.bias.shape, generator=generator, dtype=dtype) * 2 - 1) * bound)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)
