"""Experts whose family lives on part of the real line (Gamma: y > 0; negative binomial: counts).

Such an expert can sit beside a point mass in a mixture (a hurdle or
zero-inflated model): there a row outside its support belongs to another
expert.  So a row outside the support has log-density ``-inf`` (not an
error), a start gives it no weight, and the M-step refuses only a row it is
asked to fit with positive weight, since its weighted objective would be
``-inf``.  Non-finite y is always an error.
"""

from __future__ import annotations

import torch

from ..stats import SuffStats

__all__ = ["RestrictedSupport"]


class RestrictedSupport:
    """Mixin (before :class:`~moekit.experts.newton.NewtonExpert`) for a family with a restricted support of y.

    Subclasses define ``_in_support(y) -> bool tensor``, ``_support_text``
    (e.g. ``"positive"``) and ``_support_fix`` (what to do about it).
    ``_prepare_y`` of the subclass checks shape and finiteness only;
    :meth:`_y_and_support` replaces y outside the support by ``_safe_y``, a
    value inside it, so that the per-row terms stay finite where the weight
    is zero.

    Shapes
    ------
    y : (n,); weights (n,) or (n, K).
    """

    _safe_y = 1.0

    def _y_and_support(self, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepared y with the values outside the support replaced by a safe one, and the support mask (n,)."""
        yy = self._prepare_y(y, n)
        inside = self._in_support(yy)
        return torch.where(inside, yy, torch.full_like(yy, self._safe_y)), inside

    def _refuse_outside(self, y: torch.Tensor, inside: torch.Tensor, w: torch.Tensor) -> None:
        """ValueError naming y where a row outside the support has positive weight."""
        bad = ~inside & (w > 0).any(1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"y must be {self._support_text} for a {type(self).__name__} wherever it has weight; got "
                f"{int(bad.sum())} such row(s) with positive weight, the first y[{i}] = {float(y[i])!r}. "
                f"{self._support_fix}"
            )

    def suff_stats(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> SuffStats:
        """The statistics of the family (rows outside the support must have zero weight)."""
        n = x.shape[0]
        raw = self._prepare_y(y, n)
        yy, inside = self._y_and_support(raw, n)
        w = self._weight_nk(weight, n, yy)
        self._refuse_outside(raw, inside, w)
        return super().suff_stats(x, yy, weight)

    def init_from_responsibilities(self, x, y, weight):
        """Initial fit on the rows inside the support (the others get no weight: another expert explains them)."""
        n = x.shape[0]
        raw = self._prepare_y(y, n)
        yy, inside = self._y_and_support(raw, n)
        w = self._weight_nk(weight, n, yy) * inside[:, None].to(yy.dtype)
        if not bool((w.sum(0) > 0).any()):
            self._refuse_outside(raw, inside, torch.ones_like(w))
            raise ValueError(f"{type(self).__name__}: no row has positive weight to start from")
        return super().init_from_responsibilities(x, yy, w)
