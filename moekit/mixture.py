"""The mixture of experts: a gate over K experts, itself an expert."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ._linalg import (chunk_rows, logsumexp_rows, packed_design, symmetric_products_cheaper, transposed_design,
                      weighted_grams)
from ._mstep import Passes, maximize
from ._mstep import has_stats as _has_stats
from ._partition import initial_responsibilities
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
        ``prune_threshold``.  :func:`~moekit.build_tree` sets 1e-4.

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

    @property
    def accepts_missing_y(self) -> bool:
        """Whether every expert marginalises NaN coordinates of y (linear-Gaussian experts with vector y)."""
        ex = [self.experts] if self.is_stacked else list(self.experts)
        return all(getattr(e, "accepts_missing_y", False) for e in ex)

    def gate_input(self, x: torch.Tensor) -> torch.Tensor:
        """The columns of x the gate sees (``gate_features``): (n, d_x) -> (n, d_g)."""
        return x if self.gate_features is None else x[:, self.gate_features]

    def expert_input(self, x: torch.Tensor) -> torch.Tensor:
        """The columns of x the experts see (``expert_features``): (n, d_x) -> (n, d_e)."""
        return x if self.expert_features is None else x[:, self.expert_features]

    def n_parameters(self) -> int:
        """Free parameters (gate and experts), for BIC / AIC."""
        if self.is_stacked:
            total = getattr(self.experts, "n_parameters_total", None)  # shared parameters counted once
            ex = total() if total is not None else self.experts.n_parameters() * self.n_experts
        else:
            ex = sum(e.n_parameters() for e in self.experts)
        return self.gate.n_parameters() + ex

    # ----------------------------------------------------------- likelihood
    def log_gate(self, x: torch.Tensor) -> torch.Tensor:
        """Log mixing weights (n, K)."""
        return self.gate(self.gate_input(x))

    def expert_log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p_k(y | x) for every expert: (n, K)."""
        xe = self.expert_input(x)
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

    # ------------------------------------------------- rescaled inputs
    def _parts(self) -> list:
        return [self.gate, self.experts] if self.is_stacked else [self.gate, *self.experts]

    @property
    def absorbs_input_scale(self) -> bool:
        """Whether every gate and expert (of every level) folds a power-of-two rescaling of x into its parameters."""
        return all(getattr(m, "absorbs_input_scale", False) for m in self._parts())

    @torch.no_grad()
    def absorb_input_scale_(self, exponent: int) -> None:
        """Answer for x as the model answered for ``x * 2**-exponent`` (see :class:`moekit._linalg.AffineInputs`)."""
        for m in self._parts():
            m.absorb_input_scale_(exponent)

    def forward(self, x: torch.Tensor) -> MixtureDistribution:
        lw = self.log_gate(x)
        xe = self.expert_input(x)
        comps = self.experts(xe) if self.is_stacked else [e(xe) for e in self.experts]
        return MixtureDistribution(lw, comps)

    # ----------------------------------------------------------------- EM
    def _joint_tree(self, x: torch.Tensor, y: torch.Tensor):
        """``joint_log_prob`` plus, for every child that is a mixture, its own joint: a record of the subtree.

        Returns ``(log_gate (n, K), joint (n, K), records)`` where
        ``records[k]`` is child k's ``(log_gate, joint, records)`` (``None``
        for a leaf, and ``records`` is ``None`` for stacked experts).  The
        numbers are those of ``log_gate`` and ``joint_log_prob``; the E-step
        reuses them instead of computing them twice.
        """
        lg = self.log_gate(x)
        xe = self.expert_input(x)
        if self.is_stacked:
            return lg, lg + self.experts.log_prob(xe, y), None
        cols, recs = [], []
        for e in self.experts:
            if isinstance(e, MixtureOfExperts):
                rec = e._joint_tree(xe, y)
                cols.append(torch.logsumexp(rec[1], dim=1))
                recs.append(rec)
            else:
                cols.append(e.log_prob(xe, y))
                recs.append(None)
        return lg, lg + torch.stack(cols, dim=1), recs

    def components(self, path: tuple = ()):
        """Every gate and expert of the (possibly nested) mixture, in M-step order.

        Yields ``(path, module)``: the gate at ``path + ("gate",)``, then each
        expert (``("experts", "stacked")`` for a stacked module, or
        ``("experts", "k")``), descending into experts that are mixtures.  The
        paths are the keys of :meth:`suff_stats`' nested statistics.
        """
        yield path + ("gate",), self.gate
        if self.is_stacked:
            yield path + ("experts", "stacked"), self.experts
            return
        for k, e in enumerate(self.experts):
            if isinstance(e, MixtureOfExperts):
                yield from e.components(path + ("experts", str(k)))
            else:
                yield path + ("experts", str(k)), e

    def fit_weighted(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None):
        """As an expert of a larger mixture: one (generalised) EM step on the weighted data.

        Never lowers ``sum(weight * log p(y | x))``: the E-step at the current
        parameters followed by M-steps that never lower their own objectives.
        Vanishing children of this node and of nested nodes are pruned first
        (see ``prune_threshold``).
        """
        if weight is None:
            weight = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        self.em_step(x, y, weight, prune_root=True)
        return self

    def em_step(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None, *, prune_root=False) -> float:
        """One EM iteration on data held in memory; returns the weighted log-likelihood *before* the step.

        The same path as :func:`~moekit.fit_em`: :meth:`suff_stats` (keeping
        each component's weighted data for its Newton steps), pruning of
        vanishing nested children, then :meth:`m_step`, whose Newton steps are
        checked by trial objectives over that data (``fit_em`` checks a full
        step by its next E-step instead, which a single call would not use).
        """
        data: dict = {}
        stats = self.suff_stats(x, y, weight, data=data)
        ll = float(stats["loglik"])
        total = float(stats["weight"].sum())
        while self.prune_vanishing(stats, total, include_root=prune_root):
            data = {}
            stats = self.suff_stats(x, y, weight, data=data)
        self.m_step(stats, Passes([data]))
        return ll

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
            seed = int(rng.integers(0, 2**31 - 1))
            sub = None
            if float(resp.sum()) > 0:
                xs, ys = (self.gate_input(x), x.new_zeros(x.shape[0], 0)) if split == "kmeans_x" else (x, y)
                try:
                    kind = "random" if split == "random" else "kmeans"
                    sub = initial_responsibilities(xs, ys, self.n_experts, kind, seed, resp)
                except ValueError:  # fewer distinct weighted rows than experts
                    sub = None
            if sub is None:
                sub = torch.full((x.shape[0], self.n_experts), 1.0 / self.n_experts, dtype=x.dtype, device=x.device)
            resp = resp[:, None] * sub
        self.gate.fit_weighted(self.gate_input(x), resp)
        xe = self.expert_input(x)
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
    def suff_stats(
        self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None, *, data: dict | None = None
    ) -> SuffStats:
        """Additive statistics of one E-step: the gate's and every expert's, nested.

        Expert k receives ``weight * responsibility_k``; for a nested mixture the
        same recursion yields the path posteriors of a hierarchy.  Also holds the
        weighted log-likelihood ``loglik`` and each expert's total weight
        ``weight`` (K,) at the current parameters.  A component without
        statistics (a neural network, a scikit-learn model) contributes an empty
        entry and is fitted on its weighted data (generalised EM).

        Parameters
        ----------
        x, y, weight
            One batch.
        data : dict, optional
            Filled with ``path -> (component, weighted data)`` for every
            component (paths of :meth:`components`), so that Newton steps and
            weighted fits can revisit the E-step's data without recomputing it.

        Shapes
        ------
        x (n, d_x); y (n,) or (n, d_y); weight (n,).
        """
        fused = self._transposed_design_stats(x, y, weight, data)
        if fused is not None:
            return fused
        return self._stats_from_joint(x, y, weight, *self._joint_tree(x, y), data, ())

    @torch.no_grad()
    def weighted_data(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> dict:
        """What one E-step hands each component, without computing any component's statistics.

        Returns the ``data`` dict that :meth:`suff_stats` fills (``path -> (component, weighted data)``):
        a streamed Newton step re-reads its batch's weighted data this way, at the E-step's parameters.

        Shapes
        ------
        x (n, d_x); y (n,) or (n, d_y); weight (n,).
        """
        data: dict = {}
        self._stats_from_joint(x, y, weight, *self._joint_tree(x, y), data, (), compute=False)
        return data

    def _stats_from_joint(self, x, y, weight, log_gate, joint, records, data, path, compute: bool = True) -> SuffStats:
        lse = logsumexp_rows(joint)
        r = torch.sub(joint, lse).exp_()
        if weight is None:
            targets, ll = r, lse.sum()
        else:
            targets, ll = weight[:, None] * r, (weight * lse[:, 0]).sum()
        xe = self.expert_input(x)
        shared = self._shared_design_stats(x, y, targets, log_gate) if compute and self.is_stacked else None
        if shared is not None:
            gate, stacked = shared
            if data is not None:  # what _component_stats records
                data[path + ("gate",)] = (self.gate, (self.gate_input(x), targets))
                data[path + ("experts", "stacked")] = (self.experts, (xe, y, targets))
            experts = SuffStats(stacked=stacked)
        elif self.is_stacked:
            gate = _component_stats(self.gate, path + ("gate",), data, self.gate_input(x), targets, log_gate=log_gate,
                                    compute=compute)
            experts = SuffStats(stacked=_component_stats(self.experts, path + ("experts", "stacked"), data, xe, y, targets,
                                                         compute=compute))
        else:
            gate = _component_stats(self.gate, path + ("gate",), data, self.gate_input(x), targets, log_gate=log_gate,
                                    compute=compute)
            parts = {}
            for k, e in enumerate(self.experts):
                where = path + ("experts", str(k))
                if isinstance(e, MixtureOfExperts):
                    parts[str(k)] = e._stats_from_joint(xe, y, targets[:, k], *records[k], data, where, compute=compute)
                else:
                    parts[str(k)] = _component_stats(e, where, data, xe, y, targets[:, k], compute=compute)
            experts = SuffStats(parts)
        return SuffStats(loglik=ll, weight=targets.sum(0), gate=gate, experts=experts)

    def _share_design(self, method: str) -> bool:
        """Whether the gate and the (stacked) experts see the same columns of x, both have statistics and both
        offer ``method`` of a protocol over their shared design (``design_terms``, ``design_terms_t``)."""
        gate, experts = self.gate, self.experts
        return (self.gate_features == self.expert_features and hasattr(gate, method) and hasattr(experts, method)
                and _has_stats(gate) and _has_stats(experts))

    def _transposed_design_stats(self, x, y, weight, data):
        """The whole E-step of a linear softmax gate over stacked linear experts with scalar y, experts by rows.

        Where the gate and the stacked experts see the same columns of x, and both are linear in the
        design ``[1, x]`` (``design_coef``: the gate's logits, the experts' means) with statistics
        stated as weighted Gram blocks of it (``design_terms_t``, ``design_finish``), the E-step and
        every statistic are one pass over the transposed design ``[1, x]^T`` (p, n), kept across EM
        iterations by :func:`~moekit._linalg.design_cache`: one product gives the logits and the
        means, every per-expert quantity (log-densities, responsibilities, Newton weights) is a
        contiguous row of length n, one product gives the rows' products with the design and
        :func:`~moekit._linalg.weighted_grams` every Gram matrix.  Without the narrow reductions over
        K and the copies of ``[1, x]`` of the rows-by-experts layout, an EM iteration is 1.4-1.7
        times faster at K = 2 (``benchmarks/RESULTS.md``, Update 3).  The statistics are those of
        :meth:`_stats_from_joint`, up to the order of the sums.

        None (the general path) where a component does not offer this (vector y, an offset,
        another kind of gate or expert), where they see different columns or dtypes, or where the
        gate's information is one symmetric product (few inputs, many experts).

        Shapes
        ------
        x (n, d_x); y (n,); weight (n,) or None.
        """
        gate, experts = self.gate, self.experts
        if not self.is_stacked or y.dim() != 1 or not self._share_design("design_terms_t"):
            return None
        xs = self.gate_input(x)
        p = xs.shape[1] + 1
        cg, ce, mg = gate.design_coef(p), experts.design_coef(p), gate.design_columns(p)
        if cg is None or ce is None or mg is None:
            return None
        if cg.dtype != xs.dtype or ce.dtype != xs.dtype or not y.is_floating_point():
            return None
        k, n = self.n_experts, xs.shape[0]
        if n == 0:
            return None
        yy = y.to(xs.dtype)
        xt = transposed_design(xs)  # (p, n)
        coef = torch.cat([cg, ce])  # the gate's logits, then the experts' means
        packed = None if symmetric_products_cheaper(mg + k, p) else packed_design(xs)
        targets = xs.new_empty(k, n)  # weight times responsibility, experts by rows
        c = chunk_rows(3 * k + mg)  # per row: logits and means, log-weights, Newton and least-squares rows
        total = None
        for i in range(0, n, c):
            xc = xt[:, i : i + c]
            lin = coef @ xc  # (2K, c)
            log_gate = gate.log_gate_t(lin[:k])
            joint = experts.log_prob_t(lin[k:], yy[i : i + c]).add_(log_gate)
            top = joint.amax(dim=0)
            t = torch.sub(joint, top, out=targets[:, i : i + c]).exp_()  # exp(joint - max): one exp pass for both
            total_t = t.sum(dim=0)
            t.div_(total_t)  # the responsibilities
            lse = total_t.log_().add_(top)  # log p(y | x): logsumexp of the joint
            if weight is None:
                ll = lse.sum()
            else:
                ll = (weight[i : i + c] * lse).sum()
                t.mul_(weight[i : i + c])
            g_partial, g_lin, g_w = gate.design_terms_t(log_gate, t, p)
            e_partial, e_lin, e_w = experts.design_terms_t(yy[i : i + c], t)
            lin_x = torch.cat([g_lin, e_lin]) @ xc.T  # (2K, p)
            grams = weighted_grams(None, torch.cat([g_w, e_w]).T, xt=xc, q=None if packed is None else packed[:, i : i + c])
            part = (ll, g_partial, e_partial, lin_x, grams)
            total = part if total is None else tuple(a + b for a, b in zip(total, part))
        ll, g_partial, e_partial, lin_x, grams = total
        if data is not None:  # what _component_stats records: the weighted data of each component's Newton steps
            data[("gate",)] = (gate, (xs, targets.T))
            data[("experts", "stacked")] = (experts, (self.expert_input(x), y, targets.T))
        return SuffStats(
            loglik=ll,
            weight=targets.sum(1),
            gate=gate.design_finish(g_partial, lin_x[:k], grams[:mg]),
            experts=SuffStats(stacked=experts.design_finish(e_partial, lin_x[k:], grams[mg:])),
        )

    def _shared_design_stats(self, x, y, targets, log_gate):
        """The gate's and the stacked experts' statistics in one pass over a design ``[1, x]`` they share, or None.

        Where the gate and the experts see the same columns of x and each states its statistics as
        weighted Gram blocks of that design plus rows to multiply by it (``design_columns``,
        ``design_terms``, ``design_finish``: the softmax gate and the linear-Gaussian experts), the
        design is built once (transposed, and kept across EM iterations by
        :func:`~moekit._linalg.design_cache`, with the rows' packed outer products where they fit
        its budget), and each row chunk's packed outer products serve both
        (:func:`~moekit._linalg.weighted_grams` on the weight columns of both).

        None, and each component computes its own, where they do not share columns or the
        protocol, where either would form its Gram matrices as one symmetric product each (few of
        them for many inputs: cheaper apart), or where a component declines (a gate whose
        information is one symmetric product; experts with missing y).

        Shapes
        ------
        x (n, d_x); y (n,) or (n, d_y); targets (n, K); log_gate (n, K).
        """
        gate, experts = self.gate, self.experts
        if not self._share_design("design_terms"):
            return None
        xs = self.gate_input(x)
        p = xs.shape[1] + 1
        mg, me = gate.design_columns(p), experts.design_columns(p)
        if mg is None or me is None or 4 * min(mg, me) <= p + 1:  # one would form its Grams as symmetric products
            return None
        if any(t.dtype != xs.dtype for t in (*gate.parameters(), *experts.parameters())):
            return None
        n = xs.shape[0]
        xt = transposed_design(xs)  # (p, n), kept across EM iterations by design_cache
        packed = packed_design(xs)  # the rows' packed outer products, kept too where they fit its budget
        c = chunk_rows(mg + me)  # the largest per-row work array: the weight columns of both
        total = None
        work = xs.new_empty(min(max(n, 1), c), mg + me)  # both components' weight columns, side by side
        for i in range(0, max(n, 1), c):
            xc = xt[:, i : i + c]
            w = work[: xc.shape[1]]
            tg = gate.design_terms(xc.T, targets[i : i + c], log_gate[i : i + c], out=w[:, :mg])
            te = experts.design_terms(xc.T, y[i : i + c], targets[i : i + c], out=w[:, mg:])
            if tg is None or te is None:
                return None
            grams = weighted_grams(None, w, xt=xc, q=None if packed is None else packed[:, i : i + c])
            part = (tg[0], te[0], _design_product(tg[1], xc), _design_product(te[1], xc), grams)
            total = part if total is None else tuple(a + b for a, b in zip(total, part))
        pg, pe, lin_g, lin_e, grams = total
        return gate.design_finish(pg, lin_g, grams[:mg]), experts.design_finish(pe, lin_e, grams[mg:])

    def m_step(self, stats: SuffStats, passes: "Passes | None" = None) -> None:
        """Update every component from summed statistics.

        With ``passes`` (summed passes over the E-step's weighted data), each
        Newton / ECM component iterates to its M-step's optimum with
        step-halving, and components without statistics take weighted gradient
        steps: this is the M-step of :func:`~moekit.fit_em`.  Without it, every
        component takes one step from ``stats`` alone (exact components are then
        fully updated).
        """
        for path, comp in self.components():
            s = stats
            for key in path:
                s = s[key]
            if _has_stats(comp):
                maximize(
                    comp,
                    None if passes is None else passes.stats_fn(path),
                    stats=s,
                    objective_fn=None if passes is None else passes.objective_fn(path),
                    max_steps=1 if passes is None else None,
                )
            elif passes is None:
                raise TypeError(
                    f"{type(comp).__name__} at {'/'.join(path)} has no statistics: its M-step needs the "
                    "weighted data; pass the passes of the E-step (fit_em does)"
                )
            else:
                passes.fit_weighted(path)

    def prune_vanishing(self, stats: SuffStats, total: float, *, include_root: bool = False, _path: tuple = ()) -> bool:
        """Remove nested children whose share of the data fell below their node's ``prune_threshold``.

        A node's share is its path-posterior weight over ``total``, read from
        ``stats`` (this mixture's :meth:`suff_stats`).  Nodes below a pruned
        node are not examined (their weights change): call again after
        recomputing the statistics, until it returns False.  The root itself is
        examined only with ``include_root`` (:func:`~moekit.fit_em` prunes the
        root with its own ``prune_threshold``).

        Returns
        -------
        bool
            Whether anything was pruned.
        """
        thr = self.prune_threshold
        if (include_root or _path) and thr and self.n_experts > 1 and total > 0:
            share = stats["weight"] / total
            dead = (share < thr).nonzero().flatten().tolist()
            if dead and len(dead) < self.n_experts:
                keep = [k for k in range(self.n_experts) if k not in dead]
                warnings.warn(
                    f"hierarchy node {list(_path)}: pruned child(ren) {dead}: their share of the data fell below "
                    f"prune_threshold={thr:g}; {len(keep)} child(ren) remain. The tree is larger than the data "
                    "supports here: use a smaller depth or branching, or grow the tree (moekit.grow_tree).",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.prune(keep)
                return True
        pruned = False
        if not self.is_stacked:
            for k, e in enumerate(self.experts):
                if isinstance(e, MixtureOfExperts):
                    pruned |= e.prune_vanishing(stats["experts"][str(k)], total, _path=_path + (k,))
        return pruned

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


def _design_product(lin: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """``lin^T xd`` from the transposed design ``xt`` (p, n): (n, a) -> (a, p), in the faster orientation.

    MKL (torch 2.13, one thread) is up to 5x slower on one orientation or the other depending on
    the shape: for a few columns ``lin^T xt^T`` (65,536 rows, a = 2, p = 11: 0.38 ms against
    0.85), for more ``(xt lin)^T`` (20,000 rows, a = 16: 0.5 ms against 3.2).
    """
    return lin.T @ xt.T if lin.shape[1] <= 4 else (xt @ lin).T


def _component_stats(comp, path: tuple, data: dict | None, *args, log_gate=None, compute: bool = True) -> SuffStats:
    """``comp``'s statistics on its weighted data ``args`` (recorded in ``data`` under ``path``).

    A gate that can reuse the E-step's log mixing weights ``log_gate`` (its
    ``reuses_log_gate``) is handed them instead of recomputing them.  With
    ``compute=False`` only the weighted data are recorded (empty statistics).
    """
    if data is not None:
        data[path] = (comp, args)
    if not compute or not _has_stats(comp):
        return SuffStats()
    if log_gate is not None and getattr(comp, "reuses_log_gate", False):
        return comp.suff_stats(*args, log_gate=log_gate)
    return comp.suff_stats(*args)
