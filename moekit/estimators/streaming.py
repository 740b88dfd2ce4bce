"""Estimators on sources of batches: ``fit(source)``, predictions that stream, and what ties them to arrays.

A *source* (:mod:`moekit.data`: :class:`~moekit.data.ArrayBatches`,
:class:`~moekit.data.ParquetSource`, :class:`~moekit.data.CSVSource`, or any object that follows
the protocol of :mod:`moekit.data.batch`) yields raw batches: ``x`` holds the encoded features
(``source.feature_names``), ``y`` the targets (for a text target, indices of
``source.target_levels``), ``weight`` the row weights, and the per-row extras (``offset``,
``trials``, ``lower``, ``upper``) their own fields.  :class:`StreamingMixin` gives the
mixture-of-experts estimators:

``est.fit(source)``
    One pass over the source checks every batch as ``fit(X, y)`` checks arrays (rows with missing
    values refused or dropped by ``missing``; the extras by ``_set_extras``; y by the experts'
    families) and sums what the fit needs of the whole data: the rows and their weight, the
    largest ``|x|`` and ``|y|`` of every column (the scale checks and the power-of-two rescaling
    of X are decided on these, as for arrays), the weighted variance of y (the variance floor)
    and the classes.  Then

    - a source held in memory (``in_memory``), or whose model-level data take at most
      ``memory_budget`` bytes (:data:`MEMORY_BUDGET` by default), is read whole and fitted as
      arrays: that fit *is* ``fit(X, y, sample_weight, offset=..., ...)`` on its rows;
    - a larger one (or one of unknown size) is fitted by streaming EM:
      :func:`~moekit.fit_em` (:func:`~moekit.training.tree.fit_tree_em` for a hierarchy) over a
      source of model-level batches (:class:`ModelSource`: the extras folded into x and y, the
      labels made indices of ``classes_``, X rescaled where needed, exactly as for arrays), whose
      start is computed on the source's start sample (every row when they fit).  Only EM
      streams: gradient training, neural and scikit-learn parts, and ``grow=True`` need the rows
      in memory (a ValueError says so).

    The streamed and the in-memory fit give the same parameters up to the order of the sums
    (1e-10 in the tests).  Standard errors (``compute_se``) are summed over the batches: the
    observed information and the sandwich's middle term are sums over rows.

``predict(source)``, ``predict_proba``, ``score_samples``, ``predict_quantiles``, ``score``
    Read the source batch by batch (its targets, weights and extras are used) and return the
    concatenated result; :meth:`StreamingMixin.iter_predict` yields the batches' results one at a
    time, so that the command line writes them out without holding them all.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import numbers
import warnings
from contextlib import nullcontext
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from sklearn.base import is_classifier
from sklearn.metrics import accuracy_score, r2_score

from .._linalg import ldexp
from .._validation import (
    as_tensor,
    check_sample_weight,
    check_scale,
    first_rows,
    incomplete_targets,
    model_device,
    model_dtype,
    torch_dtype,
    variance_floor,
)
from ..data import Batch
from ..training import distributed
from ..training.em import fit_em
from ..training.tree import fit_tree_em
from .families import COUNT_FAMILIES, check_family_targets, point_mass_never_seen

__all__ = ["MEMORY_BUDGET", "FirstPass", "ModelPlan", "ModelSource", "StreamingMixin", "source_names"]

#: Bytes of model-level data (rows x columns x 8) up to which ``fit(source)`` reads a source whole
#: and fits it as arrays; a larger source is streamed.  ``fit(source, memory_budget=...)`` overrides it.
MEMORY_BUDGET = 1 << 30

EXTRAS = ("offset", "trials", "lower", "upper")
#: Methods that :meth:`StreamingMixin.iter_predict` runs batch by batch.
PREDICTIONS = ("predict", "predict_proba", "predict_log_proba", "predict_quantiles", "predict_interval",
               "predict_gate", "predict_branches", "score_samples", "responsibilities", "sample_y")


def _array(t, dtype=np.float64):
    """A batch field as a NumPy array (float64 unless ``dtype`` is None: then its own dtype); None stays None."""
    if t is None:
        return None
    a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return a if dtype is None else a.astype(dtype, copy=False)


def _concat(batches: list) -> Batch:
    """Batches as one (the fields of the first decide which extras there are)."""
    first = batches[0]
    return Batch(**{f.name: (None if getattr(first, f.name) is None else torch.cat([getattr(b, f.name) for b in batches]))
                    for f in dataclasses.fields(Batch)})


def source_names(source) -> list | None:
    names = getattr(source, "feature_names", None)
    return None if names is None else [str(c) for c in names]


class _Rows:
    """Rows of a source already in the model's dtype and device: what ``_x`` returns for them, unchanged."""

    def __init__(self, x: torch.Tensor):
        self.x = x


# ------------------------------------------------------------------ the model-level source
@dataclasses.dataclass
class ModelPlan:
    """How a raw batch becomes a model-level one; fixed by the first pass."""

    est: object
    extras: tuple  # the estimator's extras_ (trailing columns of x)
    censored: bool
    lut: torch.Tensor | None  # class index of each code of a text target
    classes: torch.Tensor | None  # sorted numeric labels (their index is the class)
    drop: bool  # rows with missing values are dropped
    dtype: torch.dtype
    device: torch.device


class ModelSource:
    """A raw source seen through a fitted plan: model-level batches for :func:`~moekit.fit_em`.

    Each raw batch loses its rows with missing values (``missing="drop"``), gets its offsets and
    trials as trailing columns of x (``extras_``), its censoring limits as columns of y
    (``[y, lower, upper]``), its labels as indices of ``classes_``, X divided by ``2**exponent``
    (X's own columns only), all in the model's dtype and on its device: the tensors that
    ``fit(X, y)`` trains on, batch by batch.  It follows the source protocol
    (:mod:`moekit.data.batch`): ``shard`` and ``sample`` map the raw source's.

    Shapes
    ------
    Each batch: x (b, d_x + len(extras_)); y (b,), (b, d_y), (b, 3) censored, or (b,) class indices;
    weight (b,).
    """

    in_memory = False

    def __init__(self, raw, plan: ModelPlan, n_rows=None, total_weight=None, exponent: int = 0, shards: dict | None = None):
        self.raw, self.plan, self.exponent = raw, plan, int(exponent)
        self.n_rows, self.total_weight = n_rows, total_weight
        self.shards = shards or {}  # (rank, world_size) -> (rows, total weight) of a shard, when a first pass knows them

    def scaled(self, exponent: int) -> "ModelSource":
        """The same source with X divided by ``2**exponent``."""
        return ModelSource(self.raw, self.plan, self.n_rows, self.total_weight, exponent, self.shards)

    def __iter__(self) -> Iterator[Batch]:
        for b in self.raw:
            m = self.model_batch(b)
            if len(m):
                yield m

    def shard(self, rank: int, world_size: int) -> "ModelSource":
        n, total = self.shards.get((rank, world_size), (None, None))
        return ModelSource(self.raw.shard(rank, world_size), self.plan, n, total, self.exponent)

    def sample(self, max_rows: int, seed: int) -> Batch:
        return self.model_batch(self.raw.sample(max_rows, seed))

    def model_batch(self, b: Batch) -> Batch:
        """One raw batch as the model's."""
        p = self.plan
        f64 = torch.float64
        x, w, y = b.x.to(f64), b.weight.to(f64), b.y
        ex = {k: (None if getattr(b, k) is None else getattr(b, k).to(f64)) for k in EXTRAS}
        if p.drop:
            miss = p.est._missing_parts(_array(x), _array(y, None), {k: _array(v) for k, v in ex.items()})[1]
            if miss.any():
                keep = torch.as_tensor(~miss, device=x.device)
                x, w, y = x[keep], w[keep], y[keep]
                ex = {k: (None if v is None else v[keep]) for k, v in ex.items()}
        n = x.shape[0]
        if p.lut is not None:
            y = p.lut.to(y.device)[y.long()]
        elif p.classes is not None:
            y = torch.searchsorted(p.classes.to(y.device), y.to(f64).contiguous())
        else:
            y = y.to(f64)
            if p.censored:
                lo = ex["lower"] if ex["lower"] is not None else torch.full((n,), -torch.inf, dtype=f64, device=y.device)
                hi = ex["upper"] if ex["upper"] is not None else torch.full((n,), torch.inf, dtype=f64, device=y.device)
                y = torch.stack([y, lo.to(y.device), hi.to(y.device)], dim=1)
        x = x.to(dtype=p.dtype, device=p.device)
        if self.exponent:
            x = ldexp(x, -self.exponent)  # exact: a power of two (the extras are never rescaled)
        if p.extras:
            cols = [ex[k] if ex[k] is not None else torch.ones(n, dtype=f64, device=b.x.device) for k in p.extras]
            x = torch.cat([x, torch.stack(cols, dim=1).to(dtype=p.dtype, device=p.device)], dim=1)
        y = y.to(device=p.device, dtype=p.dtype if y.is_floating_point() else None)
        return Batch(x, y, w.to(dtype=p.dtype, device=p.device))


# ------------------------------------------------------------------ the first pass
class FirstPass:
    """One pass over a raw source: every batch checked as ``fit(X, y)`` checks arrays, and the whole data's sums."""

    def __init__(self, est, names, levels):
        self.est, self.names, self.levels = est, names, levels
        self.classifier = is_classifier(est)
        self.d = None
        self.given = None
        self.n_raw = self.n_kept = self.n_dropped = self.n_pos = 0
        self.total = self.w_max = 0.0
        self.x_absmax = None
        self.labels = self.labels_pos = None  # classifiers: the codes or labels present
        self.y_ndim = self.d_y = None
        self.y_absmax = self.y_min = self.y_max = self.y_pos_absmax = self.y_first = None
        self.moments = None  # regressors: per column [weight, mean, M2, count] of the finite, positively weighted entries
        self.all_finite = True
        self.incomplete = False  # y holds NaN or infinite entries the experts read (censored, missing coordinates)
        self.point_mass_seen = False

    def run(self, source) -> "FirstPass":
        for i, b in enumerate(source):
            n = len(b)
            try:
                self.batch(b)
            except ValueError as err:
                raise ValueError(f"{err} (in batch {i} of the source, its rows {self.n_raw} to {self.n_raw + n - 1}; "
                                 "row numbers above count from 0 within that batch)") from None
            self.n_raw += n
        return self

    # ------------------------------------------------------------ one batch
    def batch(self, b: Batch) -> None:
        est = self.est
        x, y, w = _array(b.x), _array(b.y, None), _array(b.weight)
        ex = {k: _array(getattr(b, k)) for k in EXTRAS}
        if x.ndim != 2:
            raise ValueError(f"a batch's x must be 2-D (rows, features), got shape {x.shape}")
        if self.d is None:
            self.d = x.shape[1]
            if self.names is not None and len(self.names) != self.d:
                raise ValueError(f"the source names {len(self.names)} features (feature_names) but its batches have "
                                 f"{self.d} columns of x")
        elif x.shape[1] != self.d:
            raise ValueError(f"a batch has {x.shape[1]} columns of x, an earlier one had {self.d}; every batch must "
                             "have the same columns")
        n = x.shape[0]
        if y.shape[0] != n or w.shape[0] != n:
            raise ValueError(f"a batch has {n} rows of x but {y.shape[0]} of y and {w.shape[0]} weights")
        given = frozenset(k for k, v in ex.items() if v is not None)
        if self.given is None:
            _check_source_extras(est, given)
            self.given = given
        elif given != self.given:
            raise ValueError(f"a batch has the extras {sorted(given)}, an earlier one had {sorted(self.given)}; every "
                             "batch must have the same columns")
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"the row weights hold negative or non-finite values in rows "
                             f"{first_rows(~np.isfinite(w) | (w < 0))}; weights must be finite and >= 0")
        if np.isinf(x).any():
            raise ValueError(f"Input X contains infinity in rows {first_rows(np.isinf(x).any(1))}; infinities are never "
                             "data: drop those rows or fix their values")
        y = self._labels(y) if self.classifier else self._numbers(y)
        parts, miss = est._missing_parts(x, y, ex)
        if miss.any():
            if getattr(est, "missing", "error") != "drop":
                name, m = next((nm, m) for nm, m in parts if m.any())
                where = f"rows {first_rows(m)}"
                if name == "X":
                    cols = np.flatnonzero(np.isnan(x).any(0))
                    shown = [self.names[j] if self.names is not None else int(j) for j in cols[:5]]
                    where += f", columns {shown}" + (" ..." if len(cols) > 5 else "")
                option = ", or pass missing='drop' to drop those rows" if hasattr(est, "missing") else ""
                raise ValueError(f"Input {name} contains NaN in {where} ({int(m.sum())} row(s) with missing values); "
                                 f"impute them (e.g. sklearn.impute.SimpleImputer){option}")
            keep = ~miss
            self.n_dropped += int(miss.sum())
            x, y, w = x[keep], y[keep], w[keep]
            ex = {k: (None if v is None else v[keep]) for k, v in ex.items()}
            n = x.shape[0]
        if n == 0:
            return
        est._set_extras(ex, y, w)  # the extras' checks (and extras_, extras_required_, censored_)
        pos = w > 0
        if self.classifier:
            u, up = np.unique(y), np.unique(y[pos])
            self.labels = u if self.labels is None else np.union1d(self.labels, u)
            self.labels_pos = up if self.labels_pos is None else np.union1d(self.labels_pos, up)
        else:
            self._regression_batch(y, w, ex)
        amax = np.abs(x).max(0)
        self.x_absmax = amax if self.x_absmax is None else np.maximum(self.x_absmax, amax)
        self._rows_kept(x, y, w)
        self.n_kept += n
        self.n_pos += int(pos.sum())
        self.total += float(w.sum())
        self.w_max = max(self.w_max, float(w.max()))

    def _rows_kept(self, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:
        """Hook: a batch's rows once checked (rows with missing values dropped), for scans that sum more."""

    def _families(self) -> list:
        """The experts' families whose checks y must pass."""
        return self.est._named_families()

    def _labels(self, y: np.ndarray) -> np.ndarray:
        if y.ndim != 1:
            raise ValueError(f"a classifier's y must be 1-D class labels, got a batch of shape {y.shape}")
        if self.levels is not None:
            if y.dtype.kind not in "iu":
                raise ValueError(f"the source names class labels (target_levels) but its y holds {y.dtype} values, "
                                 "not their indices")
            bad = (y < 0) | (y >= len(self.levels))
            if bad.any():
                raise ValueError(f"y holds label indices outside 0..{len(self.levels) - 1} (the source's "
                                 f"{len(self.levels)} target_levels) in rows {first_rows(bad)}")
            return y
        if y.dtype.kind == "f":
            fin = np.isfinite(y)
            if (fin & (y != np.round(y))).any():
                i = int(np.flatnonzero(fin & (y != np.round(y)))[0])
                raise ValueError(
                    f"y holds continuous numbers (e.g. {float(y[i]):.6g}), not class labels; a classifier needs labels: "
                    "use a regressor (MoERegressor, HMERegressor, MDNRegressor) for numbers, or bin y into classes"
                )
            if np.isinf(y).any():
                raise ValueError(f"Input y contains infinity in rows {first_rows(np.isinf(y))}")
        elif y.dtype.kind not in "iub":
            raise ValueError(f"y must hold class labels as numbers (or the source's target_levels), got {y.dtype}")
        return y

    def _numbers(self, y: np.ndarray) -> np.ndarray:
        if self.levels is not None:
            raise ValueError(
                f"the source's target holds text (class labels {list(self.levels)[:5]}); a regressor needs numbers: "
                "use a classifier (MoEClassifier, HMEClassifier) to predict class labels, or a numeric target column"
            )
        if y.dtype.kind not in "fiub":
            raise ValueError(f"y must hold numbers, got {y.dtype}")
        y = y.astype(np.float64, copy=False)
        if y.ndim not in (1, 2):
            raise ValueError(f"y must be 1-D (n,) or 2-D (n, d_y), got a batch of shape {y.shape}")
        if self.y_ndim is None:
            self.y_ndim, self.d_y = y.ndim, (y.shape[1] if y.ndim == 2 else None)
        elif y.ndim != self.y_ndim or (y.ndim == 2 and y.shape[1] != self.d_y):
            raise ValueError(f"a batch's y has shape {y.shape}, unlike the first batch's; every batch must have the same "
                             "target columns")
        if np.isinf(y).any():
            raise ValueError(f"Input y contains infinity in rows {first_rows(np.isinf(y.reshape(len(y), -1)).any(1))}")
        return y

    def _regression_batch(self, y: np.ndarray, w: np.ndarray, ex: dict) -> None:
        """The checks of ``MoERegressor._fit_targets`` on one batch, and its sums."""
        est = self.est
        fams = self._families()
        self.point_mass_seen |= check_family_targets(fams, y, w, ex.get("trials"), getattr(est, "point_mass_value", None))
        y2 = y.reshape(len(y), -1)
        fin = np.isfinite(y2)
        self.incomplete |= bool(getattr(est, "censored_", False)) or not bool(fin.all())
        self.all_finite &= bool(fin.all())
        filled = np.where(fin, y2, 0.0)
        amax = np.abs(filled).max(0)
        self.y_absmax = amax if self.y_absmax is None else np.maximum(self.y_absmax, amax)
        pos = w > 0
        if pos.any():  # the constant-target check: NaN propagates, as in check_not_constant
            yp = y2[pos]
            lo, hi, top = yp.min(0), yp.max(0), np.abs(yp).max(0)
            if self.y_min is None:
                self.y_min, self.y_max, self.y_pos_absmax, self.y_first = lo, hi, top, yp[0]
            else:
                self.y_min, self.y_max = np.minimum(self.y_min, lo), np.maximum(self.y_max, hi)
                self.y_pos_absmax = np.maximum(self.y_pos_absmax, top)
        if self.moments is None:
            self.moments = np.zeros((y2.shape[1], 4))
        for j in range(y2.shape[1]):  # Chan et al.'s update of the weighted mean and sum of squares
            ok = fin[:, j] & pos
            if not ok.any():
                continue
            wj, vj = w[ok], y2[ok, j]
            wb = float(wj.sum())
            mb = float(wj @ vj) / wb
            m2b = float(wj @ (vj - mb) ** 2)
            wa, ma, m2a, ca = self.moments[j]
            tot = wa + wb
            delta = mb - ma
            self.moments[j] = [tot, ma + delta * wb / tot, m2a + m2b + delta * delta * wa * wb / tot, ca + ok.sum()]

    # ------------------------------------------------------------ the whole data
    def finish(self) -> None:
        """The checks on the whole data, and the estimator's attributes of its targets."""
        est = self.est
        if self.d is None:
            raise ValueError("the source has no rows: it yielded no batches (an empty file, folder or shard)")
        if self.n_kept == 0:
            if self.n_dropped:
                raise ValueError(f"missing='drop' would drop every row: all {self.n_dropped} rows have missing values "
                                 "(NaN in X, the extras or y); impute them instead")
            raise ValueError("the source has no rows: there is nothing to fit (an empty file, folder or shard)")
        if hasattr(est, "missing"):
            est.n_rows_dropped_ = self.n_dropped
        if self.n_dropped:
            warnings.warn(f"missing='drop': dropped {self.n_dropped} of {self.n_raw} rows with missing values; "
                          "n_rows_dropped_ records the number", UserWarning, stacklevel=4)
        if not self.total > 0:
            raise ValueError("the source's row weights sum to zero (on the rows kept); at least one row needs a "
                             "positive weight")
        check_sample_weight(np.array([self.w_max]), 1, torch.float64)  # the weights' range
        if self.classifier:
            self._finish_classes()
        else:
            self._finish_regression()

    def _finish_classes(self) -> None:
        est = self.est
        if self.levels is not None:
            names = np.asarray(list(self.levels))
            codes = self.labels.astype(np.int64)
            order = np.argsort(names[codes], kind="stable")  # classes_ sorted, as np.unique sorts labels
            est.classes_ = names[codes[order]]
            lut = np.full(len(names), -1, dtype=np.int64)
            lut[codes[order]] = np.arange(len(codes))
            self.lut = torch.as_tensor(lut, device="cpu")
            present = names[self.labels_pos.astype(np.int64)]
        else:
            est.classes_ = self.labels
            self.lut = None
            present = self.labels_pos
        if len(present) < 2:
            raise ValueError(f"y has only {len(present)} class ({present[0]!r}) among rows with positive weight; "
                             "a classifier needs at least 2 classes" if len(present) else
                             "y has no class among rows with positive weight; a classifier needs at least 2 classes")
        self.y_info = len(est.classes_)

    def _finish_regression(self) -> None:
        est = self.est
        fams = est._named_families()
        dtype = torch_dtype(est.dtype)
        if "point_mass" in fams and not self.point_mass_seen:
            raise point_mass_never_seen(float(est.point_mass_value))
        top = torch.as_tensor(self.y_absmax, dtype=torch.float64, device="cpu")  # each column's largest |y| (1 column for 1-D y)
        check_scale(top[None, :] if self.y_ndim == 2 else top, "y", dtype=dtype)
        if (not fams or not set(fams) & set(COUNT_FAMILIES)) and self.y_min is not None:
            self._check_constant_y()
        var = self.moments[:, 2] / np.where(self.moments[:, 0] > 0, self.moments[:, 0], 1.0)
        if self.all_finite:
            var_y = float(np.mean(var))
        else:
            ok = self.moments[:, 3] > 1
            var_y = float(np.mean(var[ok])) if ok.any() else 0.0
        est._var_floor_abs = variance_floor(est.var_floor, var_y if var_y > 0 else 1.0, dtype)
        est._y_ndim = self.y_ndim
        self.y_info = self.d_y
        self.lut = None

    def _check_constant_y(self) -> None:
        """The constant-target check of ``check_not_constant`` on the whole data's sums."""
        spread = self.y_max - self.y_min
        const = spread <= 16 * np.finfo(np.float64).eps * self.y_pos_absmax
        if const.any():
            j = int(np.flatnonzero(const)[0])
            col = f" column {j}" if self.y_ndim == 2 else ""
            how = "" if spread[j] == 0 else " up to rounding"
            raise ValueError(
                f"y{col} is constant (the {self.n_pos} sample(s) with positive weight all have y{col} = "
                f"{float(self.y_first[j]):.6g}{how}); a density fitted to a constant target has no finite maximum "
                f"likelihood, so its fit, log-likelihood and BIC would only reflect the variance floor; drop the "
                f"constant target{col} or predict it directly"
            )


_SUMMED = ("n_raw", "n_kept", "n_dropped", "n_pos", "total")
_MAXED = ("x_absmax", "y_absmax", "y_max", "y_pos_absmax")


def _combine_scans(scan: FirstPass, group, error: str | None) -> None:
    """Every rank's first pass over its shard combined into ``scan`` on every rank (a distributed fit).

    A rank's error becomes the same one-line error on every rank (none waits for a rank that failed).
    """
    fields = ("d", "given", "y_ndim", "d_y", "w_max", "x_absmax", "labels", "labels_pos", "y_absmax", "y_min",
              "y_max", "y_pos_absmax", "y_first", "moments", "all_finite", "incomplete", "point_mass_seen") + _SUMMED
    mine = {"error": error, **{f: getattr(scan, f) for f in fields}}
    states = [None] * distributed.world(group)[1]
    dist.all_gather_object(states, mine, group=group)
    errors = [(r, st["error"]) for r, st in enumerate(states) if st["error"] is not None]
    if errors:
        r, msg = errors[0]
        raise ValueError(f"{msg} (found by rank {r} in its shard)")
    had_rows = scan.n_kept > 0
    seen = [st for st in states if st["d"] is not None]
    if not seen:
        return
    for f in ("d", "given", "y_ndim", "d_y"):
        values = {repr(st[f]) for st in seen if st[f] is not None}
        if len(values) > 1:
            raise ValueError(f"the ranks' shards disagree on {f} ({sorted(values)}): every file must have the same "
                             "columns")
        setattr(scan, f, next((st[f] for st in seen if st[f] is not None), None))
    for f in _SUMMED:
        setattr(scan, f, type(getattr(scan, f))(sum(st[f] for st in states)))
    scan.w_max = max(st["w_max"] for st in states)
    for f in _MAXED:
        parts = [st[f] for st in states if st[f] is not None]
        setattr(scan, f, np.maximum.reduce(parts) if parts else None)
    lows = [st["y_min"] for st in states if st["y_min"] is not None]
    scan.y_min = np.minimum.reduce(lows) if lows else None
    scan.y_first = next((st["y_first"] for st in states if st["y_first"] is not None), None)
    for f in ("labels", "labels_pos"):
        parts = [st[f] for st in states if st[f] is not None]
        setattr(scan, f, np.unique(np.concatenate(parts)) if parts else None)
    scan.all_finite = all(st["all_finite"] for st in states)
    scan.incomplete = any(st["incomplete"] for st in states)
    scan.point_mass_seen = any(st["point_mass_seen"] for st in states)
    moments = None
    for st in states:  # Chan et al.'s merge of each column's weighted mean and sum of squares
        m = st["moments"]
        if m is None:
            continue
        if moments is None:
            moments = m.copy()
            continue
        for j in range(m.shape[0]):
            wa, ma, m2a, ca = moments[j]
            wb, mb, m2b, cb = m[j]
            tot = wa + wb
            if tot > 0:
                delta = mb - ma
                moments[j] = [tot, ma + delta * wb / tot, m2a + m2b + delta * delta * wa * wb / tot, ca + cb]
    scan.moments = moments
    if not had_rows and scan.n_kept > 0:  # this rank saw no rows: the extras' attributes as the others set them
        y_shape = (0,) if scan.y_ndim in (None, 1) else (0, scan.d_y)
        scan.est._set_extras({k: (np.zeros(0) if k in scan.given else None) for k in EXTRAS}, np.zeros(y_shape),
                             np.zeros(0))


def _check_source_extras(est, given) -> None:
    """The source's extras must be ones the estimator takes."""
    for name in sorted(set(given) - set(est._accepts_extras)):
        raise ValueError(f"the source has a {name} column, but {type(est).__name__} takes no {name}: offsets, trials "
                         "and censoring limits are options of MoERegressor (see its fit); make the source without it")


# ------------------------------------------------------------------ the estimators' side
class StreamingMixin:
    """``fit``, the predictions and ``score`` on a source of batches (see :mod:`moekit.estimators.streaming`)."""

    # ------------------------------------------------------------ fitting
    def _fit_source(self, source, y, sample_weight, memory_budget=None, process_group=None, checkpoint=None,
                    resume=False, **extras):
        given = [k for k, v in (("y", y), ("sample_weight", sample_weight), *extras.items()) if v is not None]
        if given:
            raise ValueError(f"{given[0]} is given, but X is a source of batches, which carries the targets, the row "
                             "weights and the per-row extras (offset, trials, lower, upper) itself: call fit(source) "
                             "alone, naming those columns when making the source (e.g. ParquetSource(path, "
                             "target=..., weight=...))")
        self._check_params()
        if getattr(self, "formula", None) is not None:
            raise ValueError("formula= reads a pandas DataFrame, but X is a source of batches, whose columns are chosen "
                             "already: name the features and the target when making the source (features=[...], "
                             "target=...) and leave formula None")
        self._formula_inputs(None, None)  # clears an earlier formula fit's design (refuses gate_formula alone)
        if memory_budget is not None and not (isinstance(memory_budget, numbers.Real) and memory_budget >= 0):
            raise ValueError(f"memory_budget must be a number of bytes >= 0, got {memory_budget!r}")
        budget = MEMORY_BUDGET if memory_budget is None else memory_budget
        run = {k: v for k, v in (("process_group", process_group), ("checkpoint", checkpoint)) if v is not None}
        if resume:
            run["resume"] = True
        if self._gradient_trained():  # minibatch training (DistributedDataParallel with a process group)
            return self._fit_source_by_gradient(source, budget, **run)
        if run:  # distributed (each process reads its shard) and checkpointed fits are EM over the source
            return self._fit_streamed(source, **run)
        if _fits_in_memory(source, budget):
            return self._fit_whole_source(source)
        return self._fit_streamed(source)

    def _gradient_trained(self) -> bool:
        """Whether ``fit`` trains by minibatch gradients (``fit_method="gradient"``; an MDN always)."""
        return getattr(self, "fit_method", "em") == "gradient"

    def _fit_source_by_gradient(self, source, budget, process_group=None, checkpoint=None, resume=False):
        """``fit(source)`` for gradient training: read whole (and, with a process group, trained by every rank on
        the whole data with DistributedDataParallel, as the trainers require), or streamed (:meth:`_stream_by_gradient`)."""
        em = hasattr(self, "fit_method")  # mixtures of experts may use EM instead
        if checkpoint is not None or resume:
            raise ValueError(f"checkpoint= and resume= follow the iterations of EM; {type(self).__name__} trained by "
                             "minibatch gradients cannot be checkpointed: leave checkpoint None"
                             + (" (or use fit_method='em')" if em else ""))
        fits = _fits_in_memory(source, budget)
        if process_group is None:
            return self._fit_whole_source(source) if fits else self._stream_by_gradient(source, budget)
        if not fits:
            other = ("use fit_method='em' (distributed EM reads each process's shard)" if em else
                     "fit without process_group (one process, streamed minibatches)")
            raise ValueError(f"with process_group, {type(self).__name__} trains with DistributedDataParallel on the "
                             f"whole data held in memory by every process, but the source exceeds memory_budget "
                             f"({int(budget)} bytes) or does not say its size: give a larger memory_budget, or {other}")
        self.__dict__["_process_group"] = process_group  # read by _train: the trainers' process_group
        try:
            return self._fit_whole_source(source)
        finally:
            self.__dict__.pop("_process_group", None)

    def _stream_by_gradient(self, source, budget):
        """Gradient training on a source larger than ``budget``: refused (only EM streams) unless overridden."""
        return self._fit_streamed(source)

    def _fit_whole_source(self, source):
        """A source that fits memory: read whole and fitted as arrays (``fit(X, y, sample_weight, ...)``)."""
        try:  # file sources read themselves whole; a wrapper may offer read_all for sources without it
            b = source.read_all() if callable(getattr(source, "read_all", None)) else None
        except AttributeError:
            b = None
        if b is None:
            parts = list(source)
            b = _concat(parts) if parts else None
        if b is None or len(b) == 0:
            raise ValueError("the source has no rows: there is nothing to fit (an empty file, folder or shard)")
        _check_source_extras(self, {k for k in EXTRAS if getattr(b, k) is not None})
        names = source_names(source)
        X = _array(b.x)
        if names is not None:
            if X.ndim != 2 or len(names) != X.shape[1]:
                raise ValueError(f"the source names {len(names)} features (feature_names) but its x has shape {X.shape}")
            import pandas as pd  # slow to import: only for a source read whole whose features have names

            X = pd.DataFrame(X, columns=list(names))  # named columns: feature_names_in_, gate_features by name
        y = _array(b.y, None)
        levels = getattr(source, "target_levels", None)
        if levels is not None:
            if not is_classifier(self):
                raise ValueError(f"the source's target holds text (class labels {list(levels)[:5]}); a regressor needs "
                                 "numbers: use a classifier (MoEClassifier, HMEClassifier) to predict class labels, or "
                                 "a numeric target column")
            y = np.asarray(list(levels))[y.astype(np.int64)]
        self._fit_arrays(X, y, _array(b.weight), **{k: _array(getattr(b, k)) for k in EXTRAS})
        self._set_source_encoding(source)
        return self

    def _fit_streamed(self, source, **run):
        """Streaming EM over the source (the first pass checks it and sums what the fit needs)."""
        if self.fit_method != "em":
            raise ValueError(f"fit_method={self.fit_method!r} cannot stream a source: a source larger than "
                             "memory_budget is fitted by EM only (each pass sums statistics over its batches); use "
                             "fit_method='em', or a larger memory_budget to read the source whole")
        if getattr(self, "grow", False):
            raise ValueError("grow=True fits candidate trees on rows held in memory and cannot stream a source larger "
                             "than memory_budget; use grow=False (a fixed depth and branching), or a larger "
                             "memory_budget to read the source whole")
        names = source_names(source)
        levels = getattr(source, "target_levels", None)
        group = run.get("process_group")
        rank, world = distributed.world(group)
        self.__dict__["_warm_previous"] = self._warm_signature()  # read by _warm_init (warm_start=True)
        try:
            try:  # each rank checks and sums its own shard; the sums are combined on every rank
                scan = FirstPass(self, names, levels)
                error = None
                try:
                    scan.run(source.shard(rank, world) if world > 1 else source)
                except ValueError as err:
                    error = str(err)
                local = (scan.n_kept, scan.total)
                if world > 1:
                    _combine_scans(scan, group, error)
                elif error is not None:
                    raise ValueError(error)
                scan.finish()
            finally:
                self.__dict__.pop("_fit_extras", None)
            d = scan.d
            self.n_features_in_ = d
            if names is not None:
                self.feature_names_in_ = np.asarray(names, dtype=object)
            elif hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
            if hasattr(self, "_check_leaves"):  # a hierarchy's size check before building
                self._n_positive_rows = scan.n_pos
            model, seed, _, _ = self._seeded_model(d, scan.y_info)
            if not getattr(model, "has_suff_stats", False):
                raise ValueError(f"{type(self).__name__} with these experts or gate (neural networks or scikit-learn "
                                 "models) has no sufficient statistics, so it cannot stream a source larger than "
                                 "memory_budget; use linear, GLM or Student-t experts and a softmax or constant gate, "
                                 "or a larger memory_budget to read the source whole")
            plan = ModelPlan(est=self, extras=tuple(getattr(self, "extras_", ())),
                         censored=bool(getattr(self, "censored_", False)), lut=scan.lut,
                         classes=None if (scan.lut is not None or not is_classifier(self)) else
                         torch.as_tensor(np.asarray(self.classes_, dtype=np.float64), device="cpu"),
                         drop=scan.n_dropped > 0, dtype=model_dtype(model), device=model_device(model))
            data = ModelSource(source, plan, n_rows=scan.n_kept, total_weight=scan.total,
                               shards={(rank, world): local} if world > 1 else None)
            result = self._train_source(model, data, seed, scan, **run)
        finally:
            self.__dict__.pop("_warm_previous", None)
        self._set_result(result)
        if world > 1:  # the information summed over every rank's shard
            self._fitted(scan.n_kept, None, None, source=data.shard(rank, world),
                         reduce=lambda t: distributed.all_reduce_sum(t, group))
        else:
            self._fitted(scan.n_kept, None, None, source=data)
        self._set_source_encoding(source)
        return self

    def _train_source(self, model, data: ModelSource, seed: int, scan: FirstPass, **run):
        """``_train`` on a model-level source: the same rescaling, warm start, size check and trainer."""
        top = as_tensor(scan.x_absmax[None, :], "X", model_dtype(model), "cpu")
        _, e = self._rescaled_features(model, top)  # decided on each column's largest |value|, as for arrays
        init, n_init = self._warm_init(model, e)
        self._check_size(model, scan.n_pos, scan.d)
        context = incomplete_targets() if scan.incomplete else nullcontext()
        with context:
            if hasattr(self, "_train_tree_on"):
                self.grow_result_ = None
                pt = 0.0 if self.prune_threshold is None else float(self.prune_threshold)
                result = fit_tree_em(model, data.scaled(e), init=init, n_init=n_init, random_state=seed, **run,
                                     max_iter=int(self.max_iter), tol=float(self.tol), prune_threshold=pt,
                                     verbose=int(self.verbose))
            else:
                result = fit_em(model, data.scaled(e), max_iter=int(self.max_iter), tol=float(self.tol),
                                n_init=n_init, init=init, random_state=seed, verbose=int(self.verbose), **run)
        return self._unscaled(result, e)

    def _set_source_encoding(self, source) -> None:
        """``feature_encoding_`` from a source whose features hold categories (so DataFrames encode alike later)."""
        enc = getattr(source, "encoding", None)
        if isinstance(enc, dict) and any(f.get("kind") == "categorical" for f in enc.get("features", ())):
            self.feature_encoding_ = copy.deepcopy(enc)
        elif hasattr(self, "feature_encoding_"):
            del self.feature_encoding_

    # ------------------------------------------------------------ predicting
    def _x(self, X) -> torch.Tensor:
        if isinstance(X, _Rows):
            return X.x
        return super()._x(X)

    def iter_predict(self, source, what: str = "predict", **kwargs):
        """Run a prediction method over a source batch by batch, yielding each batch's result.

        Peak memory is bounded by the batch size: the command line writes each result out (e.g. to
        Parquet) before the next batch is read.  ``predict(source)`` and the other methods that
        take a source concatenate what this yields.

        Parameters
        ----------
        source : source of batches
            Its x holds the features the model was fitted on (``source.feature_names`` must equal
            ``feature_names_in_`` where both are known); its offsets and trials (and, for
            methods that take y, its targets and censoring limits) are passed on.
        what : str, default="predict"
            One of "predict", "predict_proba", "predict_log_proba", "predict_quantiles",
            "predict_interval", "predict_gate", "predict_branches", "score_samples",
            "responsibilities", "sample_y" (those the estimator has).
        **kwargs
            Further arguments of that method (e.g. ``q`` for "predict_quantiles").

        Yields
        ------
        ndarray
            The method's result on one batch's rows, in the source's order.

        Shapes
        ------
        Each result as the method's, with one row per row of the batch.

        Examples
        --------
        >>> import numpy as np, torch
        >>> from moekit import MoERegressor
        >>> from moekit.data import ArrayBatches
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(300, 1))
        >>> y = np.where(X[:, 0] > 0, 2 * X[:, 0], -X[:, 0]) + 0.1 * rng.normal(size=300)
        >>> src = ArrayBatches(torch.as_tensor(X), torch.as_tensor(y), batch_size=100)
        >>> est = MoERegressor(n_experts=2, random_state=0).fit(src)
        >>> [p.shape for p in est.iter_predict(src, "predict_quantiles", q=[0.1, 0.9])]
        [(100, 2), (100, 2), (100, 2)]
        >>> bool(np.allclose(est.predict(src), est.predict(X)))
        True
        """
        if not (isinstance(what, str) and what in PREDICTIONS and hasattr(self, what)):
            have = [m for m in PREDICTIONS if hasattr(self, m)]
            raise ValueError(f"what must name a prediction method of {type(self).__name__}, one of {have}; got {what!r}")
        per_row = sorted(set(kwargs) & {"X", "y", "offset", "trials", "lower", "upper"})
        if per_row:
            raise ValueError(f"{per_row[0]} is given, but the source carries the inputs, targets and per-row extras "
                             f"itself: call iter_predict(source, {what!r}) without it")
        method = getattr(self, what)
        takes = inspect.signature(method).parameters
        for rows, args, kw, _ in self._source_rows(source, "y" in takes, takes):
            yield method(rows, *args, **kw, **kwargs)

    def _source_rows(self, source, with_y: bool, takes) -> Iterator[tuple]:
        """``(rows, (y,) or (), extras, weight)`` per batch of the source, checked against the fitted model."""
        if getattr(self, "formula_design_", None) is not None:
            raise ValueError("this model was fitted with formula=...: its inputs are the formulas' columns of a "
                             "DataFrame, which a source of batches does not hold; predict on the DataFrame")
        names, mine = source_names(source), getattr(self, "feature_names_in_", None)
        d = int(self.n_features_in_)
        if names is not None and mine is not None and names != [str(c) for c in mine]:
            raise ValueError(f"the source's features {names} are not those the model was fitted on, {list(mine)}; make "
                             "the source with the same features (and, for text columns, categories= holding the "
                             "levels of feature_encoding_, so that they encode alike)")
        levels = getattr(source, "target_levels", None)
        p = next((q for q in self.model_.parameters() if q.is_floating_point()), None)
        dtype = torch_dtype(self.dtype) if p is None else p.dtype
        device = self.device if p is None else p.device
        start = 0
        for i, b in enumerate(source):
            n = len(b)
            where = f"batch {i} of the source (its rows {start} to {start + n - 1})"
            x = _array(b.x)
            if x.ndim != 2 or x.shape[1] != d:
                raise ValueError(f"{where} has x of shape {x.shape}; the model was fitted on {d} features")
            bad = ~np.isfinite(x)
            if bad.any():
                raise ValueError(f"Input X contains NaN or infinity in rows {first_rows(bad.any(1))} of {where}; a "
                                 "prediction needs every input of its row: drop or impute those rows")
            kw = {}
            for name in ("offset", "trials") + (("lower", "upper") if with_y else ()):
                v = getattr(b, name)
                if v is None:
                    continue
                if name not in takes:
                    if name in ("lower", "upper"):
                        continue
                    raise ValueError(f"the source has a {name} column, but {type(self).__name__} takes no {name}; make "
                                     "the source without it")
                kw[name] = _array(v)
            args = ()
            if with_y:
                y = _array(b.y, None)
                if levels is not None:
                    y = np.asarray(list(levels))[y.astype(np.int64)]
                args = (y,)
            yield _Rows(as_tensor(x, "X", dtype, device)), args, kw, _array(b.weight)
            start += n

    def _predict_source(self, what: str, source, **kwargs):
        per_row = [k for k in ("y", "offset", "trials", "lower", "upper") if kwargs.get(k) is not None]
        if per_row:
            raise ValueError(f"{per_row[0]} is given, but X is a source of batches, which carries the targets and the "
                             f"per-row extras itself: call {what}(source) alone")
        rest = {k: v for k, v in kwargs.items() if k not in ("y", "offset", "trials", "lower", "upper")}
        parts = list(self.iter_predict(source, what, **rest))
        if not parts:
            raise ValueError("the source yielded no batches: there are no rows to predict")
        return np.concatenate(parts, axis=0)

    def _score_source(self, source, y, sample_weight, **extras) -> float:
        given = [k for k, v in (("y", y), ("sample_weight", sample_weight), *extras.items()) if v is not None]
        if given:
            raise ValueError(f"{given[0]} is given, but X is a source of batches, which carries the targets, the row "
                             "weights and the per-row extras itself: call score(source) alone")
        takes = inspect.signature(self.predict).parameters
        preds, ys, ws = [], [], []
        for rows, (yb,), kw, wb in self._source_rows(source, True, takes):
            preds.append(self.predict(rows, **{k: v for k, v in kw.items() if k in ("offset", "trials")}))
            ys.append(yb)
            ws.append(wb)
        if not preds:
            raise ValueError("the source yielded no batches: there are no rows to score")
        yy, pp, ww = np.concatenate(ys), np.concatenate(preds), np.concatenate(ws)
        if is_classifier(self):
            return float(accuracy_score(yy, pp, sample_weight=ww))
        return float(r2_score(yy, pp, sample_weight=ww))


def _fits_in_memory(source, budget) -> bool:
    """Whether to read ``source`` whole: held in memory, or its model-level data within ``budget`` bytes."""
    if getattr(source, "in_memory", False):
        return True
    n = getattr(source, "n_rows", None)
    if n is None:
        return False
    nbytes = getattr(source, "nbytes_estimate", None)
    if nbytes is None:
        b = next(iter(source), None)
        if b is None:
            return True  # nothing to hold: the fit says the source is empty
        width = sum(int(np.prod(t.shape[1:], dtype=np.int64)) for t in (b.x, b.y, b.weight)) + \
            sum(1 for k in EXTRAS if getattr(b, k) is not None)
        nbytes = int(n) * width * 8
    return int(nbytes) <= budget
