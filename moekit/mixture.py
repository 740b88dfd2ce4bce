"""The mixture of experts: a gate over K experts, itself an expert."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .distributions import MixtureDistribution
from .stats import SuffStats

__all__ = ["MixtureOfExperts"]


class MixtureOfExperts(nn.Module):
    """``p(y | x) = sum_k g_k(x) p_k(y | x)``.

    Parameters
    ----------
    gate : Gate
        Returns (n, K) log mixing weights.
    experts : list of experts, or one stacked expert module
        Either K single experts (any families, mixed freely, including other
        ``MixtureOfExperts`` for a hierarchy) or one stacked same-family
        module with ``n_experts == K`` (the fast path).
    gate_features, expert_features : sequence of int, optional
        Columns of x seen by the gate and by the experts (as flexmix's
        concomitant formula).  ``None``: all columns.
    prune_threshold : float, optional
        Only used when this mixture is a node *inside* a hierarchy fitted by
        EM: a child whose share of the whole data set (the sum of its path
        posteriors over the sum of the sample weights) falls below this
        fraction is removed with a warning before the node's M-step (its
        M-step would be ill-posed).  ``None`` (default) never prunes nested
        children; the top level is pruned by :func:`~moekit.fit_em`'s own
        ``prune_threshold``.  :func:`~moekit.hierarchy.build_tree` sets 1e-4.

    Shapes
    ------
    x : (n, d_x); y : (n,) or (n, d_y).
    ``log_gate(x)`` (n, K); ``expert_log_prob(x, y)`` (n, K); ``log_prob(x, y)`` (n,);
    ``forward(x)`` a :class:`~moekit.distributions.MixtureDistribution` with batch shape (n,).

    Notes
    -----
    A mixture of experts satisfies the expert contract (``forward`` returns a
    distribution with batch shape (n,), ``fit_weighted`` is a weighted M-step
    that never lowers the weighted log-likelihood), so it can be an expert of
    another mixture: that is a hierarchical mixture of experts.

    Examples
    --------
    >>> import torch
    >>> from moekit import MixtureOfExperts, SoftmaxGate, LinearGaussianExpert
    >>> moe = MixtureOfExperts(SoftmaxGate(1, 2), LinearGaussianExpert(1, n_experts=2))
    >>> x = torch.zeros(4, 1, dtype=torch.float64)
    >>> moe(x).mean.shape, moe.log_prob(x, torch.zeros(4, dtype=torch.float64)).shape
    (torch.Size([4]), torch.Size([4]))
    """

    stacked = False  # a mixture is one expert (batch shape (n,)), never a stack

    def __init__(
        self,
        gate: nn.Module,
        experts,
        gate_features: Sequence[int] | None = None,
        expert_features: Sequence[int] | None = None,
        prune_threshold: float | None = None,
    ):
        super().__init__()
        if prune_threshold is not None and not (0 <= float(prune_threshold) < 1):
            raise ValueError(f"prune_threshold must be None or in [0, 1), got {prune_threshold!r}")
        self.prune_threshold = None if prune_threshold is None else float(prune_threshold)
        self.gate = gate
        if isinstance(experts, (list, tuple, nn.ModuleList)):
            if len(experts) == 0:
                raise ValueError("experts must not be empty")
            for e in experts:
                if getattr(e, "stacked", False):
                    raise ValueError("a list of experts must hold single experts; pass a stacked module on its own")
            self.experts = nn.ModuleList(experts)
            self.is_stacked = False
            k = len(experts)
        else:
            if not getattr(experts, "stacked", False):
                raise ValueError(
                    "experts must be a list of experts or one stacked expert (n_experts=K); "
                    f"got a single {type(experts).__name__}: wrap it in a list"
                )
            self.experts = experts
            self.is_stacked = True
            k = experts.n_experts
        if gate.n_experts != k:
            raise ValueError(f"the gate has {gate.n_experts} outputs but there are {k} experts")
        self.gate_features = None if gate_features is None else [int(i) for i in gate_features]
        self.expert_features = None if expert_features is None else [int(i) for i in expert_features]

    # ------------------------------------------------------------ structure
    @property
    def n_experts(self) -> int:
        """K, the number of experts under this gate."""
        return self.gate.n_experts

    @property
    def y_kind(self) -> str:
        return self.experts.y_kind if self.is_stacked else self.experts[0].y_kind

    @property
    def has_suff_stats(self) -> bool:
        ex = [self.experts] if self.is_stacked else list(self.experts)
        return bool(getattr(self.gate, "has_suff_stats", False)) and all(getattr(e, "has_suff_stats", False) for e in ex)

    def _xg(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.gate_features is None else x[:, self.gate_features]

    def _xe(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.expert_features is None else x[:, self.expert_features]

    def n_parameters(self) -> int:
        """Free parameters (gate and experts), for BIC / AIC."""
        if self.is_stacked:
            ex = self.experts.n_parameters() * self.n_experts
        else:
            ex = sum(e.n_parameters() for e in self.experts)
        return self.gate.n_parameters() + ex

    # ----------------------------------------------------------- likelihood
    def log_gate(self, x: torch.Tensor) -> torch.Tensor:
        """Log mixing weights (n, K)."""
        return self.gate(self._xg(x))

    def expert_log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p_k(y | x) for every expert: (n, K)."""
        xe = self._xe(x)
        if self.is_stacked:
            return self.experts.log_prob(xe, y)
        return torch.stack([e.log_prob(xe, y) for e in self.experts], dim=1)

    def joint_log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log g_k(x) + log p_k(y | x): (n, K)."""
        return self.log_gate(x) + self.expert_log_prob(x, y)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | x): (n,)."""
        return torch.logsumexp(self.joint_log_prob(x, y), dim=1)

    def log_responsibilities(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log P(expert k | x, y): (n, K); each row's logsumexp is 0."""
        j = self.joint_log_prob(x, y)
        return j - torch.logsumexp(j, dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> MixtureDistribution:
        lw = self.log_gate(x)
        xe = self._xe(x)
        comps = self.experts(xe) if self.is_stacked else [e(xe) for e in self.experts]
        return MixtureDistribution(lw, comps)

    # ----------------------------------------------------------------- EM
    @torch.no_grad()
    def e_step(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None):
        """Responsibilities and the weighted log-likelihood at the current parameters.

        Returns
        -------
        targets : (n, K) tensor, ``weight * responsibility``
        loglik : float, ``sum(weight * log p(y | x))``
        """
        j = self.joint_log_prob(x, y)
        lse = torch.logsumexp(j, dim=1, keepdim=True)
        r = (j - lse).exp()
        if weight is None:
            return r, float(lse.sum())
        return weight[:, None] * r, float((weight * lse[:, 0]).sum())

    def m_step_targets(self, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor) -> None:
        """M-step for the gate and every expert given ``targets`` (n, K) = weight * responsibility.

        An expert that is itself a mixture (a node of a hierarchy) receives
        its column of ``targets`` as row weights and runs its own E-step and
        M-step on them: its experts are thereby fitted on the *path
        posteriors* (products of branch posteriors from the root), which is
        EM for hierarchical mixtures of experts (Jordan & Jacobs 1994).
        """
        self._m_step_targets(x, y, targets, float(targets.sum()), (), None)

    def _joint_tree(self, x: torch.Tensor, y: torch.Tensor):
        """``joint_log_prob`` plus, for every child that is a mixture, its own joint: a record of the subtree.

        Returns ``(joint (n, K), records)`` where ``records[k]`` is child k's
        ``(joint, records)`` (``None`` for a leaf, and ``records`` is ``None``
        for stacked experts).  The numbers are those of ``joint_log_prob``.
        """
        lg = self.log_gate(x)
        xe = self._xe(x)
        if self.is_stacked:
            return lg + self.experts.log_prob(xe, y), None
        cols, recs = [], []
        for e in self.experts:
            if isinstance(e, MixtureOfExperts):
                j, r = e._joint_tree(xe, y)
                cols.append(torch.logsumexp(j, dim=1))
                recs.append((j, r))
            else:
                cols.append(e.log_prob(xe, y))
                recs.append(None)
        return lg + torch.stack(cols, dim=1), recs

    def _m_step_targets(self, x, y, targets, total: float, path: tuple, records) -> None:
        self.gate.fit_weighted(self._xg(x), targets)
        xe = self._xe(x)
        if self.is_stacked:
            self.experts.fit_weighted(xe, y, targets)
        else:
            for k, e in enumerate(self.experts):
                if isinstance(e, MixtureOfExperts):
                    # the child's subtree is untouched so far: its joint from this node's E-step is current
                    rec = None if records is None else records[k]
                    e._em_step_nested(xe, y, targets[:, k], total, path + (k,), rec)
                else:
                    e.fit_weighted(xe, y, targets[:, k])

    def _em_step_nested(self, x, y, weight, total: float, path: tuple, record=None) -> None:
        """EM step of a node inside a hierarchy; prunes vanishing children first (see ``prune_threshold``).

        ``record`` is this node's ``_joint_tree(x, y)`` at the current
        parameters when the caller has it (computed in the parent's E-step).
        """
        with torch.no_grad():
            joint, records = self._joint_tree(x, y) if record is None else record
            targets = weight[:, None] * (joint - torch.logsumexp(joint, dim=1, keepdim=True)).exp()
        thr = self.prune_threshold
        if thr and self.n_experts > 1 and total > 0:
            share = targets.sum(0) / total
            dead = (share < thr).nonzero().flatten().tolist()
            if dead and len(dead) < self.n_experts:
                keep = [k for k in range(self.n_experts) if k not in dead]
                warnings.warn(
                    f"hierarchy node {list(path)}: pruned child(ren) {dead}: their share of the data fell below "
                    f"prune_threshold={thr:g}; {len(keep)} child(ren) remain. The tree is larger than the data "
                    "supports here: use a smaller depth or branching, or grow the tree (hierarchy.grow_tree).",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.prune(keep)
                with torch.no_grad():
                    joint, records = self._joint_tree(x, y)
                    targets = weight[:, None] * (joint - torch.logsumexp(joint, dim=1, keepdim=True)).exp()
        self._m_step_targets(x, y, targets, total, path, records)

    def em_step(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> float:
        """One EM iteration; returns the weighted log-likelihood *before* the step."""
        targets, ll = self.e_step(x, y, weight)
        self.m_step_targets(x, y, targets)
        return ll

    def fit_weighted(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None):
        """As an expert of a larger mixture: one (generalised) EM step on the weighted data.

        Never lowers ``sum(weight * log p(y | x))``: the E-step at the current
        parameters followed by M-steps that never lower their own objectives.
        """
        if weight is None:
            weight = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        self._em_step_nested(x, y, weight, float(weight.sum()), ())
        return self

    def init_from_responsibilities(
        self, x: torch.Tensor, y: torch.Tensor, resp: torch.Tensor, random_state=None, split: str = "kmeans"
    ):
        """Initialise gate and experts from responsibilities.

        Parameters
        ----------
        x, y : Tensors
        resp : Tensor (n, K) or (n,)
            (n, K): weight times responsibility of each of this mixture's
            experts (e.g. k-means labels).  (n,): this mixture is a node of a
            hierarchy and ``resp`` is its weight (the path posterior of the
            node); its experts then start from a split of the rows it is
            given (see ``split``), recursively down the tree.
        random_state : int, numpy Generator or None
            Seeds the splits of nested nodes; each node gets its own seed
            spawned from it, so restarts with different seeds explore
            different trees and equal seeds give equal trees.  ``None`` uses a
            fixed seed (deterministic, as :func:`~moekit.fit_em` needs: its
            restarts then differ through the top-level split).
        split : {"kmeans", "kmeans_x", "random"}
            How a nested node splits its rows among its children:
            weighted k-means (k-means++ seeding) on the standardised joint
            ``[x, y]`` of its rows; weighted k-means on the gate's inputs only
            (a partition of input space, which a softmax gate represents
            exactly: k-means cells are the regions of a linear softmax); or
            every row to a random child.
        """
        if split not in ("kmeans", "kmeans_x", "random"):
            raise ValueError(f"split must be 'kmeans', 'kmeans_x' or 'random', got {split!r}")
        rng = np.random.default_rng(0 if random_state is None else random_state)
        if resp.dim() == 1:
            from .training.init import initial_responsibilities

            seed = int(rng.integers(0, 2**31 - 1))
            sub = None
            if float(resp.sum()) > 0:
                xs, ys = (self._xg(x), x.new_zeros(x.shape[0], 0)) if split == "kmeans_x" else (x, y)
                try:
                    kind = "random" if split == "random" else "kmeans"
                    sub = initial_responsibilities(xs, ys, self.n_experts, kind, seed, resp)
                except ValueError:  # fewer distinct weighted rows than experts
                    sub = None
            if sub is None:
                sub = torch.full((x.shape[0], self.n_experts), 1.0 / self.n_experts, dtype=x.dtype, device=x.device)
            resp = resp[:, None] * sub
        self.gate.fit_weighted(self._xg(x), resp)
        xe = self._xe(x)
        if self.is_stacked:
            self.experts.init_from_responsibilities(xe, y, resp)
        else:
            for k, e in enumerate(self.experts):
                if isinstance(e, MixtureOfExperts):
                    e.init_from_responsibilities(
                        xe, y, resp[:, k], random_state=int(rng.integers(0, 2**31 - 1)), split=split
                    )
                else:
                    e.init_from_responsibilities(xe, y, resp[:, k])
        return self

    # ----------------------------------------------- statistics (streaming)
    @torch.no_grad()
    def suff_stats(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> SuffStats:
        """Additive statistics of one E-step: the gate's and every expert's, nested.

        Expert k receives ``weight * responsibility_k``; for a nested mixture the
        same recursion yields the path posteriors of a hierarchy.  Also holds the
        weighted log-likelihood ``loglik`` at the current parameters.
        """
        if not self.has_suff_stats:
            raise TypeError("this mixture has a gate or expert without sufficient statistics (e.g. a neural network)")
        targets, ll = self.e_step(x, y, weight)
        xe = self._xe(x)
        if self.is_stacked:
            ex = self.experts.suff_stats(xe, y, targets)
            es = SuffStats(stacked=ex)
        else:
            es = SuffStats({str(k): e.suff_stats(xe, y, targets[:, k]) for k, e in enumerate(self.experts)})
        return SuffStats(
            loglik=torch.as_tensor(ll, dtype=targets.dtype, device=targets.device),
            gate=self.gate.suff_stats(self._xg(x), targets),
            experts=es,
        )

    @torch.no_grad()
    def m_step(self, stats: SuffStats) -> None:
        """Update every component from summed statistics (one step for Newton components)."""
        self.gate.m_step(stats["gate"])
        if self.is_stacked:
            self.experts.m_step(stats["experts"]["stacked"])
        else:
            for k, e in enumerate(self.experts):
                e.m_step(stats["experts"][str(k)])

    # --------------------------------------------------------------- pruning
    def prune(self, keep: Sequence[int]) -> None:
        """Keep only the experts ``keep`` (in place); the gate is renormalised."""
        keep = [int(k) for k in keep]
        if not keep:
            raise ValueError("cannot prune every expert")
        self.gate = self.gate.select(keep)
        if self.is_stacked:
            self.experts = self.experts.select(keep)
        else:
            self.experts = nn.ModuleList([self.experts[k] for k in keep])
