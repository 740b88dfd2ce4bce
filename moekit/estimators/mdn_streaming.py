"""``MDNRegressor.fit(source)`` on a source larger than memory: minibatches streamed from the source.

:class:`~moekit.estimators.MDNRegressor` takes the sources of :mod:`moekit.data` through
:class:`~moekit.estimators.streaming.StreamingMixin`: a source that fits ``memory_budget`` is read
whole and fitted as arrays (the same fit as ``fit(X, y, sample_weight)``); a larger one is fitted
here, by :func:`fit_streamed`:

1. One pass over the source checks every batch as ``fit(X, y)`` checks arrays (missing values
   refused or dropped by ``missing``, infinities, the weights, y's scale, a constant target) and
   sums, column by column, the weighted mean and sum of squares of x and y (Chan et al.'s
   pairwise update, over the rows of positive weight, the values rounded to the network's dtype
   first as ``fit`` rounds them) and each column's largest ``|value|``: the network's
   standardisation, set exactly as :meth:`~moekit.mdn.MixtureDensityNetwork.fit_standardization`
   sets it on the arrays (a constant column gets scale 1).
2. The validation split of early stopping (``validation_fraction``) is a split by row *content*:
   a row is held out when a seeded hash of its values (x, y) falls below the fraction, so that the
   split does not depend on how the source cuts its batches and the start sample can be split
   alike.  The held-out rows are collected in the same pass while they fit ``memory_budget``
   (else they are read again at every validation).
3. The network's start (:meth:`~moekit.mdn.MixtureDensityNetwork.init_from_targets`, a Gaussian
   mixture fitted to y) is computed on a seeded sample of the training rows, then
   :func:`~moekit.training.mdn.fit_mdn` trains on the source of training rows, read again every
   epoch, each batch shuffled and cut into minibatches (``init=None``: the start above).

Peak memory is bounded by the source's batch, the start sample and the held-out rows kept in
memory, not by the number of rows.  The shuffling is within each of the source's batches, so a
source sorted by x or y should be read in large batches (``batch_rows``) or shuffled once on disk.
"""

from __future__ import annotations

import numpy as np
import torch

from .._validation import as_tensor, check_scale, model_device, model_dtype, torch_dtype
from ..data import Batch
from ..training.mdn import fit_mdn
from .streaming import ModelSource, ModelPlan, FirstPass, source_names

__all__ = ["fit_streamed", "row_uniforms"]

#: Rows of the sample that the network's start (a Gaussian mixture fitted to y) and re-seeding use.
START_ROWS = 20_000

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(h: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 values (wrapping arithmetic)."""
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    return h ^ (h >> np.uint64(31))


def row_uniforms(x, y, seed: int) -> np.ndarray:
    """A number in [0, 1) for every row, a seeded hash of the row's values: the same row gives the same number.

    The split of a streamed fit into training and validation rows: it does not depend on the row's
    position, so batches cut anywhere, and a sample of rows, split alike.

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y); returns (n,).

    Examples
    --------
    >>> import numpy as np
    >>> x, y = np.arange(6.0).reshape(3, 2), np.zeros(3)
    >>> u = row_uniforms(x, y, 0)
    >>> bool(((0 <= u) & (u < 1)).all()), bool((row_uniforms(x[1:], y[1:], 0) == u[1:]).all())
    (True, True)
    """
    def values(t):
        a = t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float64)
        return a.reshape(a.shape[0], -1)

    cols = np.ascontiguousarray(np.concatenate([values(x), values(y)], axis=1) + 0.0)  # -0.0 as 0.0
    bits = cols.view(np.uint64)
    h = np.full(bits.shape[0], _mix(np.array([seed], dtype=np.uint64) + _GOLDEN)[0], dtype=np.uint64)
    for j in range(bits.shape[1]):
        h = _mix(h ^ bits[:, j]) + _GOLDEN
    return (_mix(h) >> np.uint64(11)).astype(np.float64) * 2.0**-53


class _Split:
    """The training (or the validation) rows of a model-level source: :func:`row_uniforms` below the fraction are
    the validation rows.  Follows the source protocol (re-iterable, ``shard``, ``sample``)."""

    in_memory = False
    n_rows = None

    def __init__(self, source, seed: int, fraction: float, validation: bool):
        self.source, self.seed, self.fraction, self.validation = source, int(seed), float(fraction), bool(validation)

    def _part(self, b: Batch) -> Batch:
        held = row_uniforms(b.x, b.y, self.seed) < self.fraction
        keep = held if self.validation else ~held
        return b if keep.all() else b.rows(torch.as_tensor(keep, device=b.x.device))

    def __iter__(self):
        for b in self.source:
            part = self._part(b)
            if len(part):
                yield part

    def shard(self, rank: int, world_size: int) -> "_Split":
        return _Split(self.source.shard(rank, world_size), self.seed, self.fraction, self.validation)

    def sample(self, max_rows: int, seed: int) -> Batch:
        return self._part(self.source.sample(max_rows, seed))


def _merge(moments, w: np.ndarray, t: np.ndarray):
    """Chan et al.'s update of each column's ``[weight, mean, sum of squares]`` (3, d) with the rows ``t`` (n, d)."""
    wb = float(w.sum())
    mb = (w @ t) / wb
    m2b = w @ (t - mb) ** 2
    if moments is None:
        return np.stack([np.full_like(mb, wb), mb, m2b])
    wa, ma, m2a = moments
    tot = wa + wb
    delta = mb - ma
    return np.stack([tot, ma + delta * wb / tot, m2a + m2b + delta * delta * wa * wb / tot])


def _loc_scale(moments, top: np.ndarray, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The standardisation of :meth:`MixtureDensityNetwork.fit_standardization` from a column's sums."""
    wt, m, m2 = moments
    s = np.sqrt(m2 / wt)
    fi = torch.finfo(dtype)
    rounding = 16 * np.finfo(np.float64).eps * top
    s = np.where((s > rounding) & (s >= fi.tiny / fi.eps), s, 1.0)
    return torch.as_tensor(m), torch.as_tensor(s)


class _MDNScan(FirstPass):
    """The first pass of a streamed MDN fit: the checks of ``fit(X, y)``, the sums of the standardisation, and the
    validation split (its rows kept in memory while they fit ``budget`` bytes)."""

    def __init__(self, est, names, levels, dtype: torch.dtype, split_seed: int, fraction: float, budget):
        super().__init__(est, names, levels)
        self.dtype, self.split_seed, self.fraction, self.budget = dtype, int(split_seed), float(fraction), budget
        self.x_moments = self.y_moments = self.x_top = self.y_top = None
        self.n_val = self.n_train = 0  # rows of positive weight on each side of the split
        self.held: list | None = [] if fraction > 0 else None  # the validation rows, while they fit the budget
        self.held_bytes = 0

    def _families(self) -> list:
        return []  # Gaussian components: no family checks

    def _rounded(self, a: np.ndarray) -> torch.Tensor:
        """Values as the network holds them (its dtype), as float64."""
        return torch.as_tensor(a).to(self.dtype).double()

    def _rows_kept(self, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:
        xt, yt, wt = self._rounded(x), self._rounded(y), self._rounded(w)
        pos = (wt > 0).numpy()
        if not pos.any():
            return
        xp, yp, wp = xt.numpy()[pos], yt.numpy().reshape(len(pos), -1)[pos], wt.numpy()[pos]
        self.x_moments = _merge(self.x_moments, wp, xp)
        self.y_moments = _merge(self.y_moments, wp, yp)
        top_x, top_y = np.abs(xp).max(0), np.abs(yp).max(0)
        self.x_top = top_x if self.x_top is None else np.maximum(self.x_top, top_x)
        self.y_top = top_y if self.y_top is None else np.maximum(self.y_top, top_y)
        if self.fraction <= 0:
            return
        held = row_uniforms(xt, yt, self.split_seed) < self.fraction
        n_val = int((held & pos).sum())
        self.n_val += n_val
        self.n_train += int(pos.sum()) - n_val
        if self.held is not None and held.any():
            rows = torch.as_tensor(held)
            self.held_bytes += int(held.sum()) * (xt.shape[1] + yt.reshape(len(held), -1).shape[1] + 1) * 8
            if self.budget is not None and self.held_bytes > self.budget:
                self.held = None  # too many to keep: read again at each validation
            else:
                self.held.append((xt[rows].to(self.dtype), yt[rows].to(self.dtype), wt[rows].to(self.dtype)))

    def _finish_regression(self) -> None:
        top = torch.as_tensor(self.y_absmax, dtype=torch.float64)  # each column's largest |y| (1 column for 1-D y)
        check_scale(top[None, :] if self.y_ndim == 2 else top, "y", power=1, dtype=self.dtype)
        if self.y_min is not None:
            self._check_constant_y()
        self.est._y_ndim = self.y_ndim
        self.y_info = self.d_y
        self.lut = None

    def set_standardization(self, model) -> None:
        """The network's standardisation buffers from the sums (as ``fit_standardization`` on every row)."""
        with torch.no_grad():
            if model.standardizes_x:
                m, s = _loc_scale(self.x_moments, self.x_top, self.dtype)
                model.x_loc.copy_(m.to(model.x_loc))
                model.x_scale.copy_(s.to(model.x_scale))
            m, s = _loc_scale(self.y_moments, self.y_top, self.dtype)
            model.y_loc.copy_(m.to(model.y_loc))
            model.y_scale.copy_(s.to(model.y_scale))

    def validation_rows(self):
        """The held-out rows in memory ``(x, y, w)``, or None when they did not fit the budget."""
        if self.held is None or not self.held:
            return None
        return tuple(torch.cat([h[i] for h in self.held]) for i in range(3))


def fit_streamed(est, source, budget):
    """Fit ``est`` (an unfitted or fitted :class:`~moekit.estimators.MDNRegressor`) on ``source`` by streamed minibatches.

    The steps are those of the module's description; ``budget`` (bytes) bounds the validation rows
    kept in memory.  Returns ``est``.

    Shapes
    ------
    The source's batches: x (b, d_x), y (b,) or (b, d_y), weight (b,).
    """
    names = source_names(source)
    levels = getattr(source, "target_levels", None)
    dtype = torch_dtype(est.dtype)
    fraction = float(est.validation_fraction) if est.early_stopping else 0.0
    split_seed = int(np.random.default_rng(est.random_state).integers(0, 2**31 - 1))
    scan = _MDNScan(est, names, levels, dtype, split_seed, fraction, budget)
    scan.run(source)
    scan.finish()
    d = scan.d
    # X's scale: as for arrays (a float32 column beyond its range is named by as_tensor)
    check_scale(as_tensor(scan.x_absmax[None, :], "X", dtype, "cpu"), "X", power=1, columns=names)
    est.n_features_in_ = d
    if names is not None:
        est.feature_names_in_ = np.asarray(names, dtype=object)
    elif hasattr(est, "feature_names_in_"):
        del est.feature_names_in_
    model, seed, _, _ = est._seeded_model(d, scan.y_info)
    rng = np.random.default_rng(seed)
    model.reset_parameters(torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1))))
    scan.set_standardization(model)
    plan = ModelPlan(est=est, extras=(), censored=False, lut=None, classes=None, drop=scan.n_dropped > 0,
                 dtype=model_dtype(model), device=model_device(model))
    data = ModelSource(source, plan, n_rows=scan.n_kept, total_weight=scan.total)
    # fit_mdn splits arrays of fewer than 20 rows no more; a side without rows of positive weight: no split
    split = fraction > 0 and scan.n_pos >= 20 and scan.n_val > 0 and scan.n_train > 0
    train = _Split(data, split_seed, fraction, validation=False) if split else data
    validation = None
    if split:
        validation = scan.validation_rows()
        if validation is None:
            validation = _Split(data, split_seed, fraction, validation=True)
    start = train.sample(START_ROWS, int(rng.integers(0, 2**31 - 1)))
    pos = start.weight > 0
    model.init_from_targets(start.y[pos], start.weight[pos], random_state=int(rng.integers(0, 2**31 - 1)))
    result = fit_mdn(
        model, train, init=None, validation=validation, max_epochs=int(est.max_epochs),
        batch_size=int(est.batch_size), learning_rate=float(est.learning_rate),
        weight_decay=float(est.weight_decay), input_noise=float(est.input_noise),
        target_noise=float(est.target_noise), early_stopping=bool(est.early_stopping), patience=int(est.patience),
        keep=est.keep, reseed_dead=bool(est.reseed_dead), random_state=int(rng.integers(0, 2**31 - 1)),
        verbose=int(est.verbose), init_sample_rows=START_ROWS,
    )
    est._set_result(result)
    est._set_source_encoding(source)
    return est
