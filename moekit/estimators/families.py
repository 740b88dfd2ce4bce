"""Expert families of the regression estimators: names, lists of them, and the per-row extras they read.

``expert=`` names a family or lists one per expert; :class:`RegressionFamilies` (a mixin of
:class:`~moekit.estimators.MoERegressor`) builds each family's expert module, checks y against the
families' supports, and turns the per-row keywords of ``fit`` (``offset``, ``trials``, ``lower``,
``upper``) into trailing columns of the model's x (offsets, trials) or of its y (censoring limits).
"""

from __future__ import annotations

import numpy as np
import torch

from .._validation import (
    Families,
    check_censoring,
    check_family_y,
    check_offset,
    check_trials,
    row_values,
    torch_dtype,
)
from ..experts import (
    BinomialExpert,
    CensoredGaussianExpert,
    GammaExpert,
    LinearGaussianExpert,
    LogisticExpert,
    MLPExpert,
    NegativeBinomialExpert,
    PointMassExpert,
    PoissonExpert,
    SoftmaxExpert,
    StudentTExpert,
)
from .base import numeric_target, weighted_variance

__all__ = [
    "COUNT_FAMILIES",
    "FAMILY_CLASSES",
    "GLM_FAMILIES",
    "OFFSET_FAMILIES",
    "REGRESSOR_FAMILIES",
    "RegressionFamilies",
    "expert_lists",
    "family_of",
    "observed_variance",
]

#: The family names of regression experts (``expert=`` a name or a list of them).
REGRESSOR_FAMILIES = ("linear", "poisson", "binomial", "gamma", "negative_binomial", "point_mass", "student_t", "mlp")


def expert_lists(*names) -> Families:
    """The ``expert`` parameter of the flat estimators: a family name, a list of K names, or an instance."""
    return Families(*names, other="a list of them (one per expert) or an expert instance", instances=(object,))


#: Family name -> expert class ("censored": the linear family fitted with censoring limits).
FAMILY_CLASSES = {
    "linear": LinearGaussianExpert, "poisson": PoissonExpert, "binomial": BinomialExpert, "gamma": GammaExpert,
    "negative_binomial": NegativeBinomialExpert, "point_mass": PointMassExpert, "student_t": StudentTExpert,
    "mlp": MLPExpert, "logistic": LogisticExpert, "censored": CensoredGaussianExpert,
}
#: GLM families: a linear predictor with a log or logit link, counts or positive y, offsets and shared coefficients.
GLM_FAMILIES = ("poisson", "binomial", "gamma", "negative_binomial")
#: Families whose linear predictor takes an offset (a point mass ignores x, offsets included).
OFFSET_FAMILIES = ("linear", *GLM_FAMILIES, "point_mass")
#: Families that model counts (no continuous density: a constant y is a valid rate).
COUNT_FAMILIES = ("poisson", "binomial", "negative_binomial", "point_mass")



def point_mass_never_seen(value: float) -> ValueError:
    """The error of a point-mass expert whose value never occurs in y (among rows with positive weight)."""
    return ValueError(f"point_mass_value={value:g} never occurs in y (among rows with positive weight); a "
                      "point-mass expert explains the rows where y equals that value: set point_mass_value "
                      "to the value y piles up on (e.g. 0 for zero-inflated counts), or drop the point-mass expert")


def check_family_targets(fams, y: np.ndarray, w: np.ndarray, trials, point_mass_value) -> bool:
    """The experts' families' checks of y: GLM families need a 1-D y, and every family its support
    (:func:`~moekit._validation.check_family_y`; rows at ``point_mass_value`` are exempt when a point-mass
    expert explains them).  For all rows at once (``fit(X, y)``) or batch by batch (a streamed first pass).

    Returns whether ``point_mass_value`` occurs on a row of positive weight (False without a point-mass
    expert, whose value is then not read and may be None); a fit whose data never show it raises
    :func:`point_mass_never_seen`.

    Shapes
    ------
    y (n,) or (n, d_y); w (n,); trials (n,) or None.
    """
    if fams and set(fams) & set(GLM_FAMILIES) and y.ndim != 1:
        fam = next(f for f in fams if f in GLM_FAMILIES)
        raise ValueError(f"expert={fam!r} needs a 1-D y (one count or positive value per row), got y of shape {y.shape}")
    exempt, seen = None, False
    if "point_mass" in fams:
        value = float(point_mass_value)
        exempt = (y == value) if y.ndim == 1 else (y == value).all(1)
        seen = bool((exempt & (w > 0)).any())
    for fam in dict.fromkeys(fams):
        check_family_y(fam, y, trials=trials, exempt=exempt)
    return seen

_CLASS_FAMILIES = {**{c: f for f, c in FAMILY_CLASSES.items() if f != "censored"}, SoftmaxExpert: "logistic",
                   CensoredGaussianExpert: "linear"}


def family_of(module) -> str | None:
    """The family name of a built expert module (None for an instance of another class)."""
    return _CLASS_FAMILIES.get(type(module))


class RegressionFamilies:
    """Families, extras and targets of :class:`~moekit.estimators.MoERegressor` (and its hierarchy)."""

    # ------------------------------------------------- families and extras
    def _named_families(self) -> list:
        """The experts' family names (one per expert; empty for an expert instance)."""
        if isinstance(self.expert, str):
            return [self.expert]
        return list(self.expert) if isinstance(self.expert, (list, tuple)) else []

    def _censoring(self, given: set) -> bool:
        return bool({"lower", "upper"} & set(given))

    def _nan_y_allowed(self, y_ndim: int, given: set) -> bool:
        fams = self._named_families()
        if self._censoring(given):
            return True  # NaN y: interval-censored rows
        return y_ndim == 2 and bool(fams) and set(fams) == {"linear"}

    def _missing_targets(self, y, extras):
        if y.dtype.kind != "f":
            return np.zeros(len(y), dtype=bool)
        given = {k for k, v in extras.items() if v is not None}
        if self._censoring(given) and y.ndim == 1:
            lo = extras.get("lower")
            hi = extras.get("upper")
            both = np.ones(len(y), dtype=bool)
            for lim in (lo, hi):
                if lim is not None:
                    both &= np.isfinite(lim)
                else:
                    both &= False
            return np.isnan(y) & ~both  # NaN between two finite limits is an interval-censored row
        if y.ndim == 2 and self._nan_y_allowed(2, given):
            return np.isnan(y).all(1)  # missing coordinates are marginalised; a row missing every one is missing
        return super()._missing_targets(y, extras)

    def _set_extras(self, extras, y, w):
        super()._set_extras(extras, y, w)
        given = {k for k, v in extras.items() if v is not None}
        fams = self._named_families()
        self.censored_ = self._censoring(given)
        if given and not fams:
            raise ValueError(f"{', '.join(sorted(given))} need experts named by family (expert='linear', 'poisson', ...); "
                             "an expert instance does not read them")
        if "offset" in given:
            bad = [f for f in fams if f not in OFFSET_FAMILIES]
            if bad:
                raise ValueError(f"offset is given, but expert={bad[0]!r} has no linear predictor to add it to; offsets "
                                 f"work with {', '.join(repr(f) for f in OFFSET_FAMILIES[:-1])} experts")
            if y.ndim == 2 and "linear" in fams:
                raise ValueError("offset with linear experts needs a scalar (1-D) y; subtract the offset from each "
                                 "column of y yourself")
            check_offset(extras["offset"])
        if "trials" in given:
            if "binomial" not in fams or set(fams) - {"binomial", "point_mass"}:
                raise ValueError(f"trials is given, but expert={self.expert!r}; trials are the numbers of trials of "
                                 "binomial experts: use expert='binomial' (or leave trials=None)")
            check_trials(extras["trials"])
        if self.censored_:
            if set(fams) != {"linear"}:
                raise ValueError(f"lower/upper (censoring limits) need expert='linear' (censored Gaussian experts), got "
                                 f"expert={self.expert!r}; leave lower and upper None for other families")
            if y.ndim != 1:
                raise ValueError("lower/upper (censoring limits) need a scalar (1-D) y; censored experts model one "
                                 "response")
            n = len(y)
            lower = np.full(n, -np.inf) if extras.get("lower") is None else extras["lower"]
            upper = np.full(n, np.inf) if extras.get("upper") is None else extras["upper"]
            check_censoring(y, lower, upper)
            self._fit_extras = {**extras, "lower": lower, "upper": upper}
        layout = (["offset"] if "offset" in given else []) + (["trials"] if "binomial" in fams else [])
        self.extras_ = tuple(layout)
        self.extras_required_ = tuple(k for k in layout if k in given)
        cols = []
        for name in layout:
            v = extras.get(name)
            cols.append(np.ones(len(y)) if v is None else v)
        return np.column_stack(cols) if cols else None

    def _target_tensor(self, y, n, lower=None, upper=None):
        if getattr(self, "censored_", False):
            numeric_target(y)
            yy = np.array(y.to_numpy() if hasattr(y, "to_numpy") else y, dtype=np.float64)
            if yy.ndim != 1 or yy.shape[0] != n:
                raise ValueError(f"y must have shape ({n},) like the training y, got {yy.shape}")
            lo = row_values(lower, "lower", n)
            hi = row_values(upper, "upper", n)
            lo = np.full(n, -np.inf) if lo is None else lo
            hi = np.full(n, np.inf) if hi is None else hi
            if np.isinf(yy).any():
                raise ValueError("y contains infinite values; a censored row has y equal to its (finite) limit")
            check_censoring(yy, lo, hi)
            return torch.as_tensor(np.column_stack([yy, lo, hi]), dtype=torch_dtype(self.dtype), device=self.device)
        if self._y_ndim == 2 and set(self._named_families()) == {"linear"} and lower is None and upper is None:
            yy = np.array(y.to_numpy() if hasattr(y, "to_numpy") else y, dtype=np.float64)
            if yy.ndim == 2 and yy.shape[0] == n and np.isnan(yy).any() and not np.isinf(yy).any():
                return torch.as_tensor(yy, dtype=torch_dtype(self.dtype), device=self.device)  # missing coordinates
        return super()._target_tensor(y, n, lower, upper)

    def _family_expert(self, name, d, k, y_info, dtype, gen, shared=()):
        floor = self._var_floor_abs
        opt = f"expert={name!r}"
        kw = {}
        if "offset" in getattr(self, "extras_", ()) and name != "point_mass":
            kw["offset"] = True
        if shared:
            kw["shared"] = list(shared)
            if name not in ("linear", *GLM_FAMILIES) or getattr(self, "censored_", False):
                raise ValueError(f"shared_features is not available with {opt}{' and censoring' if name == 'linear' else ''}; "
                                 f"shared coefficients work with 'linear' and GLM experts ({', '.join(GLM_FAMILIES)})")
        if name in GLM_FAMILIES and y_info is not None:
            raise ValueError(f"{opt} needs a 1-D y (one count or positive value per row)")
        if name == "linear":
            if getattr(self, "censored_", False):
                return CensoredGaussianExpert(d, n_experts=k, var_floor=floor, dtype=dtype, **kw)
            return LinearGaussianExpert(d, y_info, self.covariance, n_experts=k, var_floor=floor,
                                        alpha=float(self.alpha), dtype=dtype, **kw)
        if name in GLM_FAMILIES:
            return FAMILY_CLASSES[name](d, n_experts=k, l2=float(self.alpha), dtype=dtype, **kw)
        if name == "point_mass":
            return PointMassExpert(value=float(self.point_mass_value), n_experts=k, dtype=dtype)
        if name == "student_t":
            return StudentTExpert(d, y_info, n_experts=k, var_floor=floor, dtype=dtype)
        lr = 1e-2 if self.learning_rate is None else self.learning_rate
        return MLPExpert(
            d, y_info, head="gaussian", hidden_layer_sizes=self.hidden_layer_sizes, n_experts=k,
            learning_rate=lr, var_floor=floor, dtype=dtype, generator=gen,
        )


def observed_variance(y: np.ndarray, w: np.ndarray) -> float:
    """The weighted variance of y over its observed (finite) entries, averaged over its columns."""
    y2 = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if np.isfinite(y2).all():
        return weighted_variance(y, w)
    out = []
    for j in range(y2.shape[1]):
        ok = np.isfinite(y2[:, j]) & (w > 0)
        if ok.sum() > 1:
            out.append(weighted_variance(y2[ok, j], w[ok]))
    return float(np.mean(out)) if out else 0.0
