"""The expert contract.

An expert is a :class:`torch.nn.Module` whose ``forward(x)`` returns a
:mod:`torch.distributions` object over y.  Every built-in family is written
once, *stacked* over an expert axis of length K: constructed with
``n_experts=None`` it is a single expert (batch shape ``(n,)``), with
``n_experts=K`` it is K experts of the same family evaluated in one batched
call (batch shape ``(n, K)``).  The two forms share the same code, and a test
proves that ``MixtureOfExperts(gate, stacked)`` and
``MixtureOfExperts(gate, stacked.unstack())`` give the same numbers.

Families with a closed-form or bounded weighted M-step implement
``suff_stats(x, y, weight)`` (additive :class:`~moekit.stats.SuffStats`) and
``m_step(stats)``; the others (neural networks, scikit-learn regressors)
override :meth:`Expert.fit_weighted` directly.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .._linalg import AffineInputs
from .._mstep import fit_in_memory


class Expert(AffineInputs, nn.Module):
    """Base class of all experts.

    Attributes
    ----------
    n_experts : int or None
        ``None`` for a single expert, K for a stacked group of K experts.
    y_kind : {"continuous", "count", "categorical", "binary"}
        What kind of target the family models.
    m_step_exact : bool
        Whether one ``m_step(suff_stats(...))`` maximises the weighted
        log-likelihood exactly.
    max_m_steps : int
        Newton / ECM iterations per M-step when it is not exact.
    has_suff_stats : bool
        Whether the family implements ``suff_stats``/``m_step``.

    Parameters
    ----------
    n_experts : int or None, default=None
        ``None`` for a single expert, K >= 1 for a stack of K experts.

    Shapes
    ------
    forward(x): x (n, d_x) -> a distribution with batch shape (n,) (single)
    or (n, K) (stacked), event shape () for scalar y or (d_y,); log_prob:
    x (n, d_x), y (n,) or (n, d_y) -> (n,) single, (n, K) stacked;
    fit_weighted: weight (n,) single or (n, K) stacked.  Stacked parameters
    and buffers have a leading expert axis of length K.

    Examples
    --------
    >>> import torch
    >>> from moekit import Expert, LinearGaussianExpert
    >>> stack = LinearGaussianExpert(n_features=1, n_experts=3)
    >>> isinstance(stack, Expert), stack.stacked
    (True, True)
    >>> x = torch.linspace(-1, 1, 5, dtype=torch.float64)[:, None]
    >>> stack.log_prob(x, x[:, 0]).shape, stack.unstack()[0].log_prob(x, x[:, 0]).shape
    (torch.Size([5, 3]), torch.Size([5]))
    >>> LinearGaussianExpert.stack(stack.unstack()).n_experts
    3
    """

    y_kind = "continuous"
    m_step_exact = True
    max_m_steps = 1
    has_suff_stats = True

    def __init__(self, n_experts: int | None = None):
        super().__init__()
        if n_experts is not None and (not isinstance(n_experts, int) or n_experts < 1):
            raise ValueError(f"n_experts must be None or a positive int, got {n_experts!r}")
        self.n_experts = n_experts

    # ------------------------------------------------------------------ shapes
    @property
    def stacked(self) -> bool:
        """True when this module holds K experts evaluated together."""
        return self.n_experts is not None

    @property
    def _k(self) -> int:
        return 1 if self.n_experts is None else self.n_experts

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        """Drop the expert axis (dim 1) for a single expert."""
        return t if self.stacked else t.squeeze(1)

    def _weight_nk(self, weight: torch.Tensor, n: int, ref: torch.Tensor) -> torch.Tensor:
        """Weights as (n, K) whatever form was given."""
        if weight is None:
            return torch.ones(n, self._k, dtype=ref.dtype, device=ref.device)
        weight = weight.to(dtype=ref.dtype)
        if weight.dim() == 1:
            if self.stacked and self._k != 1:
                raise ValueError(
                    f"weight for a stacked expert of {self._k} experts must have shape "
                    f"(n, {self._k}), got {tuple(weight.shape)}"
                )
            weight = weight[:, None]
        if weight.shape != (n, self._k):
            raise ValueError(f"weight must have shape ({n}, {self._k}), got {tuple(weight.shape)}")
        return weight

    # ------------------------------------------------------------- likelihood
    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Log-density of y under each expert.

        Shapes
        ------
        x : (n, d_x); y : (n,) or (n, d_y) -> (n,) single, (n, K) stacked.
        """
        dist = self(x)
        if self.stacked:
            yy = y.unsqueeze(1)  # broadcast over the expert axis
            return dist.log_prob(yy)
        return dist.log_prob(y)

    def n_parameters(self) -> int:
        """Number of free parameters per expert (for BIC / AIC)."""
        return sum(p.numel() for p in self.parameters()) // self._k

    def n_parameters_total(self) -> int:
        """Free parameters of the whole module, all K experts of a stack together (what BIC / AIC count).

        ``n_parameters() * K``, unless the family shares parameters across its
        stack (a tied covariance, shared coefficients) and counts them once.
        """
        return self.n_parameters() * self._k

    # ----------------------------------------------------------------- M-step
    def fit_weighted(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None):
        """Weighted M-step on in-memory data: never lowers ``sum(weight * log p)``.

        Shapes
        ------
        x : (n, d_x); y : (n,) or (n, d_y); weight : (n,) single or (n, K) stacked.
        """
        fit_in_memory(self, x, y, weight)
        return self

    def init_from_responsibilities(self, x, y, weight):
        """Initial fit from (possibly hard) responsibilities; default: the M-step."""
        return self.fit_weighted(x, y, weight)

    # --------------------------------------------------------------- stacking
    def _stacked_param_names(self) -> list[str]:
        """Names of parameters and buffers with a leading expert axis."""
        return [n for n, _ in self.named_parameters()] + [n for n, _ in self.named_buffers()]

    def select(self, index) -> "Expert":
        """A new expert module holding the experts ``index`` (list of ints) of this stack.

        With a single int on a stacked module, returns a single (unstacked) expert.
        """
        single = isinstance(index, int)
        idx = [index] if single else list(index)
        if not self.stacked:
            if idx != [0]:
                raise IndexError(f"a single expert has only index 0, got {index!r}")
            return copy.deepcopy(self)
        new = copy.deepcopy(self)
        new.n_experts = None if single else len(idx)
        ii = torch.as_tensor(idx, dtype=torch.long, device="cpu")
        for name in self._stacked_param_names():
            mod, attr = _resolve(new, name)
            t = getattr(mod, attr)
            sub = t.detach()[ii.to(t.device)].clone()
            if isinstance(t, nn.Parameter):
                setattr(mod, attr, nn.Parameter(sub, requires_grad=t.requires_grad))
            else:
                mod._buffers[attr] = sub
        if hasattr(new, "_gem_optimizer"):
            del new._gem_optimizer
        return new

    def unstack(self) -> list["Expert"]:
        """The K experts of a stack as a list of single experts (same numbers)."""
        if not self.stacked:
            return [copy.deepcopy(self)]
        return [self.select(k) for k in range(self._k)]

    @classmethod
    def stack(cls, experts: list["Expert"]) -> "Expert":
        """Stack same-family single experts into one batched module."""
        if not experts:
            raise ValueError("experts must be a non-empty list")
        first = experts[0]
        for e in experts:
            if type(e) is not type(first):
                raise TypeError(f"can only stack experts of one family, got {type(first).__name__} and {type(e).__name__}")
        new = copy.deepcopy(first)
        if hasattr(new, "_gem_optimizer"):
            del new._gem_optimizer
        k = sum(e._k for e in experts)
        new.n_experts = k
        for name in first._stacked_param_names():
            parts = []
            for e in experts:
                mod, attr = _resolve(e, name)
                t = getattr(mod, attr).detach()
                parts.append(t)
            cat = torch.cat(parts, dim=0).clone()
            mod, attr = _resolve(new, name)
            t = getattr(mod, attr)
            if isinstance(t, nn.Parameter):
                setattr(mod, attr, nn.Parameter(cat, requires_grad=t.requires_grad))
            else:
                mod._buffers[attr] = cat
        return new


def _resolve(module: nn.Module, dotted: str):
    parts = dotted.split(".")
    for p in parts[:-1]:
        module = getattr(module, p)
    return module, parts[-1]

