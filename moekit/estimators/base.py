"""The estimator base shared by every conditional-mixture estimator (MoE, HME, MDN): one fit template.

:class:`ConditionalMixtureEstimator` checks the parameters (declared in
:mod:`moekit._validation`), validates X, y and the weights, builds the model
and trains it, and sets the fitted attributes from the training function's
:class:`~moekit.training.FitResult`.  An estimator provides only its hooks:
``_fit_targets`` (its kind of y), ``build_model`` (its model), ``_train`` (its
trainer) and ``_set_model_attributes`` (what it reports about the fitted
model); for model files, ``model_structure`` and ``rebuild_model`` (see
:func:`storable`).
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import warnings

import numpy as np
import torch
from scipy.special import xlogy
from sklearn.base import BaseEstimator, clone, is_classifier
from sklearn.metrics import r2_score
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from .._validation import (
    as_tensor,
    check_offset,
    check_params,
    check_sample_weight,
    check_trials,
    first_rows,
    row_values,
    torch_dtype,
)
from ..inference import branches, central_interval, find_modes, hdr
from ..io import register_estimator
from ..io import save as save_model
from ..training.passes import is_source
from .._encoding import encode_frame, fit_frame_encoding, is_dataframe, needs_encoding
from .formula import FormulaDesign
from .warm import WarmStartMixin

__all__ = [
    "ConditionalMixtureEstimator",
    "ConditionalMixtureMixin",
    "check_X",
    "check_y",
    "guard_public_methods",
    "numeric_target",
    "requires_fit",
    "storable",
    "weighted_variance",
]

# Public methods that work on an unfitted estimator: fitting, the parameters, and the model builders
# (``fit`` calls ``build_model``, loading a model file calls ``rebuild_model``).
UNFITTED_METHODS = frozenset({"fit", "partial_fit", "get_params", "set_params", "build_model", "rebuild_model",
                              "count_parameters", "get_metadata_routing"})


def weighted_variance(y: np.ndarray, w: np.ndarray) -> float:
    """The weighted variance of y (averaged over its columns), so that integer weights equal repeated rows."""
    wn = w / w.sum()
    y2 = y.reshape(len(y), -1)
    centred = y2 - wn @ y2
    return float(np.mean(wn @ (centred * centred)))


def storable(cls):
    """Class decorator: register an estimator class with :mod:`moekit.io` so that its fitted instances can be saved.

    The class provides ``model_structure()`` (JSON values) and ``rebuild_model(structure)`` (an
    unfitted model of that structure); ``_removed_parameters`` lists parameters that old model files
    may still set (ignored on loading, with a warning).
    """
    register_estimator(cls, cls.rebuild_model, cls.model_structure, removed_parameters=cls._removed_parameters)
    return cls


def requires_fit(fn):
    """Wrap a method so that it raises scikit-learn's ``NotFittedError`` (naming the method) before ``fit``."""
    name = fn.__name__

    @functools.wraps(fn)
    def method(self, *args, **kwargs):
        check_is_fitted(self, "model_",
                        msg=f"This %(name)s instance is not fitted yet: call 'fit' with appropriate arguments "
                            f"before '{name}'.")
        return fn(self, *args, **kwargs)

    method._requires_fit = True
    return method


def guard_public_methods(cls):
    """Class decorator: every public method of ``cls`` but :data:`UNFITTED_METHODS` gets :func:`requires_fit`.

    The methods defined in ``cls`` and those it inherits from moekit's classes (mixins included) are
    covered; scikit-learn's own are not (they call moekit's).  Methods made conditional with
    scikit-learn's ``available_if`` stay conditional.  Applied to every subclass of
    :class:`ConditionalMixtureMixin` when it is defined, so a new method needs no decorator of its own.
    """
    for name in dir(cls):
        if name.startswith("_") or name in UNFITTED_METHODS:
            continue
        value = inspect.getattr_static(cls, name)
        fn, check = value, None
        if callable(getattr(value, "check", None)) and inspect.isfunction(getattr(value, "fn", None)):
            fn, check = value.fn, value.check  # an available_if descriptor
        if not inspect.isfunction(fn) or getattr(fn, "_requires_fit", False):
            continue
        if name not in vars(cls) and not fn.__module__.startswith("moekit."):
            continue
        guarded = requires_fit(fn)
        setattr(cls, name, guarded if check is None else available_if(check)(guarded))
    return cls


def numeric_target(y, name: str = "y") -> None:
    """ValueError naming ``y`` when it holds text: a regressor needs numbers (labels go to a classifier)."""
    dtype = getattr(y, "dtype", None)
    arr = y.to_numpy(dtype=object) if hasattr(y, "to_numpy") else np.asarray(y)
    if arr.dtype.kind in "US" or (arr.dtype.kind == "O" and any(isinstance(v, (str, bytes)) for v in arr.ravel())):
        ex = next(v for v in arr.ravel() if isinstance(v, (str, bytes, np.str_, np.bytes_)))
        raise ValueError(
            f"{name} holds text (dtype {dtype if dtype is not None else arr.dtype}, e.g. {str(ex)[:40]!r}); a regressor "
            f"needs numbers: convert {name} to numbers (e.g. {name}.astype(float)) if they are numbers written as "
            "text, or use a classifier (MoEClassifier, HMEClassifier) to predict class labels"
        )


def _shape(a) -> tuple | None:
    """The shape of an array-like (None where it has none, e.g. a ragged list)."""
    shape = getattr(a, "shape", None)
    if shape is None:
        try:
            shape = np.asarray(a).shape  # (not np.shape: array-likes may refuse numpy's array functions)
        except ValueError:
            return None
    return tuple(int(d) for d in shape)


def check_X(X) -> None:
    """ValueError naming X for what scikit-learn's checks report without naming it: None, not 2-D, no rows, text, complex."""
    if X is None:
        raise ValueError("X is None; pass an array of shape (n_samples, n_features)")
    shape = _shape(X)
    if shape is None:
        raise ValueError("X is ragged (its rows have different lengths); pass a rectangular array (n_samples, n_features)")
    if len(shape) != 2:
        fix = ("Reshape your data: X.reshape(-1, 1) for a single feature, X.reshape(1, -1) for a single row"
               if len(shape) == 1 else "pass a 2-D array (n_samples, n_features)")
        raise ValueError(f"X must be 2-D (n_samples, n_features), got a {len(shape)}-D array of shape {shape}; {fix}")
    if shape[0] == 0:
        raise ValueError(f"X has no rows (shape {shape}); pass at least one row")
    if is_dataframe(X) or hasattr(X, "tocsr"):
        return  # DataFrames are encoded; sparse matrices are numbers
    arr = np.asarray(X)
    if arr.dtype.kind in "US" or (arr.dtype.kind == "O" and any(isinstance(v, (str, bytes)) for v in arr.ravel())):
        ex = next(v for v in arr.ravel() if isinstance(v, (str, bytes)))
        raise ValueError(
            f"X holds text (dtype {arr.dtype}, e.g. {str(ex)[:40]!r}); pass numbers, or a pandas DataFrame with "
            "named columns, whose text columns are then one-hot encoded"
        )
    if arr.dtype.kind == "c":
        raise ValueError("X holds complex numbers (Complex data not supported); pass real numbers (e.g. the real and "
                         "imaginary parts as two columns)")


def check_y(y, X, ndims: tuple) -> None:
    """ValueError naming y: a number of dimensions not in ``ndims``, a number of rows other than X's, ragged rows."""
    x_shape = _shape(X)
    n_rows = x_shape[0] if x_shape else None
    if y is None:
        return  # scikit-learn's message: "... requires y to be passed, but the target y is None"
    shape = _shape(y)
    if shape is None:
        raise ValueError("y is ragged (its rows have different lengths); pass a rectangular array")
    if len(shape) not in ndims:
        want = " or ".join({1: "1-D (n,)", 2: "2-D (n, d_y)"}[d] for d in ndims)
        raise ValueError(f"y must be {want}, got a {len(shape)}-D array of shape {shape}")
    if n_rows is not None and shape[0] != n_rows:
        raise ValueError(f"y has {shape[0]} rows but X has {n_rows} (inconsistent numbers of samples); pass one "
                         "target per row of X")


@guard_public_methods
class ConditionalMixtureMixin:
    """Prediction API shared by every conditional-mixture estimator (MoE, HME, MDN).

    A subclass provides ``model_`` (fitted, with ``forward(x)`` returning a
    :class:`~moekit.distributions.MixtureDistribution` and ``log_prob(x, y)``
    and ``n_parameters()``), ``dtype``, ``device``, ``_y_ndim`` (for regressors)
    and ``_y_tensor(y, n)``.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        guard_public_methods(cls)

    #: The per-row keywords ``fit`` takes besides X, y and the weights (``offset``, ``trials``, ``lower``, ``upper``).
    _accepts_extras: frozenset = frozenset()

    # ---------------------------------------------------------- prediction
    def _model_x(self, X, offset=None, trials=None) -> torch.Tensor:
        """The model's x for X: X's columns (``_x``), then the per-row extras the model was fitted with (``extras_``)."""
        x = self._x(X)
        cols = self._extra_columns(x.shape[0], offset, trials)
        if cols is None:
            return x
        return torch.cat([x, torch.as_tensor(cols, dtype=x.dtype, device=x.device)], dim=1)

    def _extra_columns(self, n: int, offset=None, trials=None) -> np.ndarray | None:
        """The extras' columns (n, e) in the order of ``extras_``; None for a model without extras.

        An extra the model was fitted with (``extras_required_``) must be given again; trials
        default to one where the model was fitted without them (a binomial expert on 0/1 y).
        """
        layout = tuple(getattr(self, "extras_", ()))
        required = tuple(getattr(self, "extras_required_", ()))
        cls = type(self).__name__
        for name, v in (("offset", offset), ("trials", trials)):
            if v is not None and name not in layout:
                why = (f"this {cls} was fitted without {name}" if name in self._accepts_extras
                       else f"{cls} takes no {name}")
                raise ValueError(f"{name} is given, but {why}: its predictions do not depend on it; leave {name}=None "
                                 f"(or refit with {name}=...)")
        if not layout:
            return None
        out = []
        for name in layout:
            v = row_values({"offset": offset, "trials": trials}[name], name, n)
            if v is None:
                if name in required:
                    how = ("np.zeros(n) for no offset, np.log(exposure) for an exposure" if name == "offset"
                           else "np.ones(n) for the probability of one trial")
                    raise ValueError(f"this model was fitted with {name}=..., so its predictions depend on each row's "
                                     f"{name}: pass {name}= here too ({how})")
                v = np.zeros(n) if name == "offset" else np.ones(n)
            if np.isnan(v).any():
                raise ValueError(f"{name} holds NaN in rows {first_rows(np.isnan(v))}; a prediction needs every input "
                                 "of its row: drop or impute those rows")
            (check_offset if name == "offset" else check_trials)(v, name)
            out.append(v)
        return np.column_stack(out)

    def _origin_x(self) -> torch.Tensor:
        """One row of the model's x at the origin (trials one): (1, n_features_in_ + len(extras_))."""
        p = next((q for q in self.model_.parameters() if q.is_floating_point()), None)
        dtype = torch.float64 if p is None else p.dtype
        device = torch.device("cpu") if p is None else p.device
        layout = tuple(getattr(self, "extras_", ()))
        x = torch.zeros(1, int(self.n_features_in_) + len(layout), dtype=dtype, device=device)
        for i, name in enumerate(layout):
            if name == "trials":
                x[0, int(self.n_features_in_) + i] = 1.0
        return x

    def _predict_source(self, what: str, source, **kwargs):
        """``what`` over a source of batches (see :mod:`moekit.estimators.streaming`); refused by default."""
        raise TypeError(f"{type(self).__name__}.{what} takes arrays, not a source of batches; read the source whole "
                        "(source.read_all()) and pass its x (and y)")

    def _score_source(self, source, y, sample_weight, **extras) -> float:
        """``score`` over a source of batches; refused by default."""
        return self._predict_source("score", source)

    def _x(self, X) -> torch.Tensor:
        """X's columns as the model's tensor (encoded, checked): (n, n_features_in_)."""
        check_is_fitted(self, "model_")
        design = getattr(self, "formula_design_", None)
        if design is not None:  # a model written as formulas: its inputs are the formulas' columns of the data
            X = _design_frame(FormulaDesign.from_dict(design), X)
        encoding = getattr(self, "feature_encoding_", None)
        names = getattr(self, "feature_names_in_", None)
        encoded_given = is_dataframe(X) and names is not None and [str(c) for c in X.columns] == list(names)
        if encoding is not None and not encoded_given:
            X = check_array(encode_frame(X, encoding), dtype=np.float64, input_name="X")
        else:
            if needs_encoding(X):
                text = [str(c) for c, t in zip(X.columns, X.dtypes) if t.kind == "O" or t.name in ("category", "string", "str")]
                raise ValueError(
                    f"X has text or category columns {text}, but this model was fitted on numbers only; pass the "
                    "columns it was fitted on, or refit it on a DataFrame with those columns (they are then one-hot encoded)"
                )
            check_X(X)
            try:
                X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
            except ValueError as e:
                raise _with_nan_rows(e, X) from None
        # as_tensor names a column that overflows or vanishes in the model's dtype (float32) instead of a silent 0
        return as_tensor(np.array(X, dtype=np.float64), "X", torch_dtype(self.dtype), self.device)

    def predict_distribution(self, X, *, offset=None, trials=None):
        """The predictive mixture p(y | x) for every row.

        ``offset``, ``trials``: each row's offset and number of trials, for a model fitted with
        them (see ``fit``); the other prediction methods take them too.

        Returns
        -------
        MixtureDistribution
            Batch shape (n,); gives ``mean``, ``variance``/``covariance_matrix``,
            ``sample``, ``log_prob``, and for scalar y ``cdf`` and ``quantiles``.
        """
        x = self._model_x(X, offset, trials)
        with torch.no_grad():
            return self.model_(x)

    def _y_tensor(self, y, n: int) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def _target_tensor(self, y, n: int, lower=None, upper=None) -> torch.Tensor:
        """y as the model scores it; ``lower``/``upper``: censoring limits (estimators with censored experts)."""
        for name, v in (("lower", lower), ("upper", upper)):
            if v is not None:
                raise ValueError(f"{name} is given, but this {type(self).__name__} has no censored experts; leave "
                                 f"{name}=None (censoring limits are for MoERegressor(expert='linear') fitted with them)")
        return self._y_tensor(y, n)

    def score_samples(self, X, y=None, *, offset=None, trials=None, lower=None, upper=None) -> np.ndarray:
        """Per-row log-density ``log p(y | x)``: (n,).

        ``offset``, ``trials``, ``lower``, ``upper``: as for ``fit`` (censored rows score the
        probability of their censoring interval); ``bic``, ``aic``, ``icl`` and
        ``responsibilities`` take them too.  ``X`` may be a source of batches (``y`` None: the
        source's targets and extras are used), read batch by batch (see ``iter_predict``).
        """
        if is_source(X):
            return self._predict_source("score_samples", X, y=y, offset=offset, trials=trials, lower=lower, upper=upper)
        _require_y(y, "score_samples")
        x = self._model_x(X, offset, trials)
        yt = self._target_tensor(y, x.shape[0], lower, upper)
        with torch.no_grad():
            return self.model_.log_prob(x, yt).cpu().numpy()

    def _n_parameters(self) -> int:
        check_is_fitted(self, "model_")
        return self.model_.n_parameters()

    def bic(self, X, y, **extras) -> float:
        """Bayesian information criterion ``-2 log L + p log n`` (lower is better).

        ``extras``: ``offset``, ``trials``, ``lower``, ``upper`` as for ``score_samples``.
        """
        ll = self.score_samples(X, y, **extras)
        return float(-2 * ll.sum() + self._n_parameters() * math.log(len(ll)))

    def aic(self, X, y, **extras) -> float:
        """Akaike information criterion ``-2 log L + 2 p`` (lower is better).

        ``extras``: ``offset``, ``trials``, ``lower``, ``upper`` as for ``score_samples``.
        """
        ll = self.score_samples(X, y, **extras)
        return float(-2 * ll.sum() + 2 * self._n_parameters())

    def icl(self, X, y, **extras) -> float:
        """Integrated completed likelihood on BIC's scale: ``BIC + 2 sum_i entropy(r_i)`` (lower is better).

        ``r_i`` are the rows' posterior probabilities of the experts (``responsibilities``; the
        leaves of a hierarchy, the components of an MDN): ICL adds to BIC the cost of experts that
        overlap, so it prefers well-separated ones (Biernacki, Celeux & Govaert 2000; flexmix's
        ``ICL``).  With one expert it equals BIC.
        """
        r = self.responsibilities(X, y, **extras)
        return self.bic(X, y, **extras) - 2.0 * float(xlogy(r, r).sum())

    def sample_y(self, X, n_samples: int = 1, random_state=None, *, offset=None, trials=None) -> np.ndarray:
        """Draw y ~ p(y | x) for every row.

        Returns
        -------
        ndarray
            (n, n_samples) for scalar y, (n, d_y, n_samples) for vector y
            (the layout of scikit-learn's ``GaussianProcessRegressor.sample_y``).
            Global random state is left untouched.
        """
        if not (isinstance(n_samples, numbers.Integral) and n_samples >= 1):
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        dist = self.predict_distribution(X, offset=offset, trials=trials)
        seed = int(np.random.default_rng(random_state).integers(0, 2**31 - 1))
        devices = [] if str(self.device) == "cpu" else [torch.device(self.device)]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            s = dist.sample((int(n_samples),))  # (S, n, *event)
        s = s.cpu().numpy()
        return np.moveaxis(s, 0, -1)

    def save(self, path) -> None:
        """Save the fitted estimator to ``path`` without pickle (safetensors + JSON).

        Load it back with :func:`moekit.load`; see :mod:`moekit.io`.
        """
        save_model(self, path)

    def target_shape(self) -> tuple:
        """The event shape of p(y | x): ``()`` for a scalar y or class labels, ``(d_y,)`` for a vector y."""
        check_is_fitted(self, "model_")
        with torch.no_grad():
            dist = self.model_(self._origin_x())
        return tuple(int(s) for s in dist.event_shape)

    @available_if(lambda self: not is_classifier(self))
    def predict_quantiles(self, X, q, *, offset=None, trials=None) -> np.ndarray:
        """Quantiles of p(y | x) for scalar y: (n, len(q)).

        ``q``: a level or a sequence of levels strictly between 0 and 1.  ``X`` may be a source of
        batches, read batch by batch (see ``iter_predict``).
        """
        if is_source(X):
            return self._predict_source("predict_quantiles", X, q=q, offset=offset, trials=trials)
        if self._y_ndim != 1:
            raise ValueError("predict_quantiles needs a scalar (1-D) y; this model was fitted on a 2-D y")
        qs = np.atleast_1d(np.asarray(q, dtype=float))
        if qs.ndim != 1 or np.any((qs <= 0) | (qs >= 1)) or not np.all(np.isfinite(qs)):
            raise ValueError(f"q must hold levels strictly between 0 and 1, got {q!r}")
        return self.predict_distribution(X, offset=offset, trials=trials).quantiles(qs).cpu().numpy()

    # ------------------------------------------ branches of inverse problems
    @available_if(lambda self: not is_classifier(self))
    def predict_modes(self, X, max_modes=None, min_weight=0.01, *, offset=None, trials=None, **kwargs):
        """Modes of p(y | x) for every row: every branch of a multi-valued answer.

        Found by a hill-climb of the predictive density from every component
        mean (mean-shift metric, Newton steps near the top), merged where they
        coincide, sorted by probability mass; see
        :func:`moekit.inference.find_modes` for the options ``tol``,
        ``max_iter``, ``merge_tol`` and ``method``.

        Parameters
        ----------
        X : array-like (n, d_x)
        max_modes : int, optional
            At most this many modes per row (exactly this many columns).
        min_weight : float, default=0.01
            Modes with less probability mass are dropped (the heaviest stays).

        Returns
        -------
        Modes
            Unpacks as ``(modes, weights)`` of NumPy arrays; also
            ``covariances``, ``log_density`` and ``n_modes``.

        Shapes
        ------
        modes (n, M) for scalar y, (n, M, d_y) for vector y; weights (n, M);
        NaN where a row has fewer than M modes.  ``modes[:, 0]`` is the top mode.

        Examples
        --------
        >>> import numpy as np
        >>> from moekit import MoERegressor
        >>> rng = np.random.default_rng(0)
        >>> x = rng.uniform(-1, 1, 400)
        >>> y = np.where(rng.random(400) < 0.6, 2 + x, -2 - x) + 0.05 * rng.normal(size=400)
        >>> est = MoERegressor(n_experts=2, gate="constant", n_init=3, random_state=0).fit(x[:, None], y)
        >>> modes, weights = est.predict_modes([[0.0]])
        >>> modes.round(1), weights.round(1)  # both branches; the mean (0.4) is neither
        (array([[ 2., -2.]]), array([[0.6, 0.4]]))
        """
        dist = self.predict_distribution(X, offset=offset, trials=trials)
        return find_modes(dist, max_modes=max_modes, min_weight=min_weight, **kwargs).numpy()

    @available_if(lambda self: not is_classifier(self))
    def predict_branches(self, X, *, offset=None, trials=None):
        """Component means with their mixing weights, heaviest first (the cheap view of the branches).

        Returns
        -------
        means : ndarray (n, K) for scalar y, (n, K, d_y) for vector y
        weights : ndarray (n, K)
        """
        means, w = branches(self.predict_distribution(X, offset=offset, trials=trials))
        return means.cpu().numpy(), w.cpu().numpy()

    @available_if(lambda self: not is_classifier(self))
    def predict_interval(self, X, level=0.9, kind="hdr", *, offset=None, trials=None):
        """Prediction intervals of scalar y with probability ``level``.

        Parameters
        ----------
        X : array-like (n, d_x)
        level : float, default=0.9
        kind : {"hdr", "central"}, default="hdr"
            "hdr": the highest-density region, a union of intervals where
            p(y | x) is multimodal (the shortest set with that probability);
            "central": the equal-tailed interval between the ``(1 - level)/2``
            and ``(1 + level)/2`` quantiles.

        Returns
        -------
        ndarray (n, J, 2)
            ``[lower, upper]`` of each interval, sorted, NaN padding (J = 1 for
            "central"); use :func:`moekit.inference.in_intervals` and
            :func:`moekit.inference.interval_coverage` with it.
        """
        if self._y_ndim != 1:
            raise ValueError("predict_interval needs a scalar (1-D) y; this model was fitted on a 2-D y")
        if kind not in ("hdr", "central"):
            raise ValueError(f"kind must be 'hdr' or 'central', got {kind!r}")
        dist = self.predict_distribution(X, offset=offset, trials=trials)
        iv = hdr(dist, level)[0] if kind == "hdr" else central_interval(dist, level)
        return iv.cpu().numpy()


class ConditionalMixtureEstimator(WarmStartMixin, ConditionalMixtureMixin, BaseEstimator):
    """The fit template of every conditional-mixture estimator.

    ``fit`` runs: the parameter checks (:func:`moekit._validation.check_params`
    with the class's ``_parameter_specs``, then ``_check_param_combinations``);
    X, y and ``sample_weight`` validated (``n_features_in_``, feature names);
    ``_fit_targets`` (the estimator's kind of y); the model built on the CPU
    with a generator seeded from ``random_state`` (the same start on every
    device) and moved to ``device``; ``_train``; the fitted attributes set
    from the :class:`~moekit.training.FitResult`.
    """

    _parameter_specs: dict = {}
    _removed_parameters: tuple = ()

    # ------------------------------------------------------------ hooks
    def _check_param_combinations(self) -> None:
        """Rules that tie parameters together (each one alone is checked by its spec)."""

    def _fit_targets(self, y: np.ndarray, w: np.ndarray):  # pragma: no cover - every estimator overrides it
        """Check y and set what the estimator keeps about it; returns ``(y tensor, y_info for build_model)``."""
        raise NotImplementedError

    def build_model(self, n_features: int, y_info, dtype: torch.dtype, generator: torch.Generator):  # pragma: no cover
        """A new, unfitted model for ``n_features`` inputs (``y_info``: from ``_fit_targets``)."""
        raise NotImplementedError

    def _train(self, model, x, y, w, seed: int, rng: np.random.Generator, generator: torch.Generator):  # pragma: no cover
        """Train ``model`` on the tensors; returns a :class:`~moekit.training.FitResult`.

        ``seed`` was drawn from ``rng`` (restarts draw theirs from it too); ``generator`` built the model.
        """
        raise NotImplementedError

    def _set_model_attributes(self, result) -> None:
        """Fitted attributes of the estimator's own (number of experts, leaves, ...)."""

    def _fitted(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> None:
        """What the estimator computes from the training data once the model is fitted (standard errors)."""

    # ----------------------------------------------------------- template
    def _check_params(self) -> None:
        check_params(self.get_params(deep=False), self._parameter_specs)
        self._check_param_combinations()

    def _start(self, X, y, sample_weight, offset=None, trials=None, lower=None, upper=None):
        """What ``fit`` trains: the checks, X and y validated (and encoded), the unfitted model built and seeded.

        The per-row extras (``offset``, ``trials``, ``lower``, ``upper``) are checked against what the
        estimator takes (``_accepts_extras``); rows with missing values are refused or dropped
        (``missing``); ``_set_extras`` turns the extras into trailing columns of the model's x.
        """
        self._check_params()
        extras = {"offset": offset, "trials": trials, "lower": lower, "upper": upper}
        given = {k for k, v in extras.items() if v is not None}
        for name in sorted(given - self._accepts_extras):
            raise ValueError(f"{type(self).__name__} takes no {name}=...: offsets, trials and censoring limits are "
                             "options of MoERegressor (see its fit); leave {name}=None".replace("{name}", name))
        X, y = self._formula_inputs(X, y)
        check_X(X)
        encoding = fit_frame_encoding(X) if needs_encoding(X) else None
        if encoding is not None:
            X = encode_frame(X, encoding)
        missing = getattr(self, "missing", "error")
        y_shape = _shape(y) if y is not None else None
        relax = missing == "drop" or self._nan_y_allowed(len(y_shape) if y_shape else 1, given)
        finite = {} if not relax else {"ensure_all_finite": False}
        try:
            if is_classifier(self):
                check_y(y, X, (1, 2))
                X, y = validate_data(self, X, y, dtype=np.float64, **finite)
                if type_of_target(y) == "continuous":
                    raise ValueError(
                        f"y holds continuous numbers (e.g. {float(y[0]):.6g}), not class labels; a classifier needs labels: "
                        "use a regressor (MoERegressor, HMERegressor, MDNRegressor) for numbers, or bin y into classes"
                    )
                check_classification_targets(y)
            else:
                check_y(y, X, (1, 2))
                numeric_target(y)
                if relax:  # y's own check (scikit-learn's) refuses NaN: X and y are checked one by one
                    X, y = validate_data(self, X, y, validate_separately=(
                        {"dtype": np.float64, "ensure_all_finite": False},
                        {"dtype": np.float64, "ensure_all_finite": False, "ensure_2d": False}))
                else:
                    X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        except ValueError as e:
            raise _with_nan_rows(e, X, missing_option=hasattr(self, "missing")) from None
        if relax:  # NaN is handled below; infinities are never data
            for name, a in (("X", X), ("y", y)):
                if a.dtype.kind == "f" and np.isinf(a).any():
                    raise ValueError(f"Input {name} contains infinity or a value too large for dtype('float64') "
                                     f"(rows {first_rows(np.isinf(a.reshape(len(a), -1)).any(1))})")
        if encoding is not None:  # the model's inputs are the encoded columns; feature_encoding_ maps X to them
            self.feature_encoding_ = encoding
            self.feature_names_in_ = np.asarray(encoding["encoded_features"], dtype=object)
        elif hasattr(self, "feature_encoding_"):
            del self.feature_encoding_
        n = X.shape[0]
        ex = {k: row_values(v, k, n) for k, v in extras.items()}
        w = check_sample_weight(sample_weight, n, torch.float64).numpy()
        keep = self._complete_rows(X, y, ex, missing)
        if keep is not None:
            X, y, w = X[keep], y[keep], w[keep]
            ex = {k: (None if v is None else v[keep]) for k, v in ex.items()}
            if not w.sum() > 0:
                raise ValueError("sample_weight sums to zero on the rows left after dropping those with missing values; "
                                 "at least one complete row needs a positive weight")
        self._fit_extras = ex
        cols = self._set_extras(ex, y, w)
        yt, y_info = self._fit_targets(y, w)
        dtype = torch_dtype(self.dtype)
        x = as_tensor(np.array(X, dtype=np.float64), "X", dtype, self.device)  # a float32 column that vanishes is named
        if cols is not None:
            x = torch.cat([x, torch.as_tensor(cols, dtype=dtype, device=self.device)], dim=1)
        wt = torch.as_tensor(w, dtype=dtype, device=self.device)
        model, seed, rng, gen = self._seeded_model(X.shape[1], y_info)
        return model, x, yt, wt, seed, rng, gen

    def _seeded_model(self, n_features: int, y_info):
        """The unfitted model and its seeds: ``(model, seed, rng, generator)``, drawn from ``random_state``."""
        rng = np.random.default_rng(self.random_state)
        seed = int(rng.integers(0, 2**31 - 1))
        gen = torch.Generator().manual_seed(seed)
        with torch.device("cpu"):  # built and seeded on the CPU (the same start on every device), then moved
            model = self.build_model(n_features, y_info, torch_dtype(self.dtype), gen)
        return model.to(self.device), seed, rng, gen

    # ------------------------------------------------------ missing values
    def _nan_y_allowed(self, y_ndim: int, given: set) -> bool:
        """Whether y may hold NaN entries that the model reads (missing coordinates, interval-censored rows)."""
        return False

    def _missing_targets(self, y: np.ndarray, extras: dict) -> np.ndarray:
        """Rows whose target is missing (n,): by default any NaN in the row."""
        if y.dtype.kind != "f":
            return np.zeros(len(y), dtype=bool)
        return np.isnan(y.reshape(len(y), -1)).any(1)

    def _missing_parts(self, X: np.ndarray, y: np.ndarray, extras: dict):
        """``(parts, rows)``: the rows with a missing input, extra or target, by what is missing (``[(name, mask)]``),
        and together (n,)."""
        nan_x = np.isnan(X) if X.dtype.kind == "f" else np.zeros(X.shape, dtype=bool)
        parts = [("X", nan_x.any(1))]
        for name in ("offset", "trials"):
            if extras.get(name) is not None:
                parts.append((name, np.isnan(extras[name])))
        parts.append(("y", self._missing_targets(y, extras)))
        rows = np.zeros(X.shape[0], dtype=bool)
        for _, m in parts:
            rows |= m
        return parts, rows

    def _complete_rows(self, X, y, extras: dict, missing: str) -> np.ndarray | None:
        """The rows to keep (None: all): rows with missing inputs raise (missing='error') or are dropped with a warning."""
        parts, rows = self._missing_parts(X, y, extras)
        if hasattr(self, "missing"):
            self.n_rows_dropped_ = 0
        if not rows.any():
            return None
        if missing != "drop":
            name, m = next((nm, m) for nm, m in parts if m.any())
            where = f"rows {first_rows(m)}"
            if name == "X":  # only X can hold NaN here: its dtype is floating
                cols = np.flatnonzero(np.isnan(X).any(0))
                names = getattr(self, "feature_names_in_", None)
                shown = [str(names[j]) if names is not None else int(j) for j in cols[:5]]
                where += f", columns {shown}" + (" ..." if len(cols) > 5 else "")
            option = ", or pass missing='drop' to drop those rows" if hasattr(self, "missing") else ""
            raise ValueError(f"Input {name} contains NaN in {where} ({int(m.sum())} row(s) with missing values); "
                             f"impute them (e.g. sklearn.impute.SimpleImputer){option}")
        k = int(rows.sum())
        if k == len(rows):
            raise ValueError(f"missing='drop' would drop every row: all {k} rows have missing values (NaN in X, the "
                             "extras or y); impute them instead")
        self.n_rows_dropped_ = k
        warnings.warn(f"missing='drop': dropped {k} of {len(rows)} rows with missing values (rows {first_rows(rows)}); "
                      "n_rows_dropped_ records the number", UserWarning, stacklevel=4)
        return ~rows

    def _set_extras(self, extras: dict, y, w) -> np.ndarray | None:
        """The per-row extras as trailing columns of the model's x (n, e), or None; records ``extras_``."""
        for attr in ("extras_", "extras_required_"):
            if hasattr(self, attr):
                delattr(self, attr)
        return None

    def _formula_inputs(self, X, y):
        """With ``formula``: X and y from the DataFrame by the formulas (``formula_design_`` records them)."""
        formula = getattr(self, "formula", None)
        if formula is None:
            if getattr(self, "gate_formula", None) is not None:
                raise ValueError("gate_formula needs formula (the experts' formula, whose left side names the target); "
                                 "set formula='y ~ x' too, or give the gate's columns with gate_features")
            if hasattr(self, "formula_design_"):
                del self.formula_design_
            return X, y
        if y is not None:
            raise ValueError(f"y is given, but formula={formula!r} takes the target from its left side: call "
                             "fit(data) with the DataFrame alone")
        for name in ("gate_features", "expert_features"):
            if getattr(self, name, None) is not None:
                raise ValueError(f"{name} and formula both choose columns; write the gate's terms as gate_formula "
                                 "and the experts' as formula, and leave gate_features and expert_features None")
        design = FormulaDesign(formula, getattr(self, "gate_formula", None))
        Xd, y = design.fit(X)
        self.formula_design_ = design.to_dict()
        return _named_frame(Xd, design.names), y

    def count_parameters(self, X, y, sample_weight=None, **extras) -> int:
        """Free parameters of the model that ``fit(X, y, sample_weight)`` would start from, without fitting it.

        The estimator itself is not changed (a copy is set up).  Fitting may prune experts, so a
        fitted model can have fewer.  Used by :func:`moekit.selection.select_n_experts` to skip
        candidates with at least as many parameters as rows.

        Raises
        ------
        NotImplementedError
            The size is known only after fitting (an expert given as a scikit-learn estimator).
        """
        model = clone(self)._start(X, y, sample_weight, **extras)[0]
        return int(model.n_parameters())

    def fit(self, X, y=None, sample_weight=None, *, offset=None, trials=None, lower=None, upper=None,
            memory_budget=None, process_group=None, checkpoint=None, resume=False):
        """Fit the model.

        Parameters
        ----------
        X : array-like (n, d_x), or a source of batches
            Numbers; or a pandas DataFrame, whose text and ``category`` columns are one-hot encoded
            as the command line encodes them (reference = the first level: the first in sorted order,
            a category's first declared one), the encoded columns named ``column[T.level]``.  The
            encoding is kept in ``feature_encoding_`` (``feature_names_in_`` are then the encoded
            names, the model's inputs) and applied to every X given later; a level not seen here,
            or a column with a different value in every row (an identifier), is a ValueError.
            With ``formula`` (mixtures of experts): the DataFrame holding the formulas' columns.
            Or a source of batches (:mod:`moekit.data`: ``ParquetSource``, ``CSVSource``,
            ``ArrayBatches``), which carries y, the row weights and the extras: then ``y``,
            ``sample_weight`` and the extras are None, and a source larger than ``memory_budget``
            is fitted by streaming EM (see :mod:`moekit.estimators.streaming`).
        y : array-like (n,) or (n, d_y); class labels (n,) for classifiers
            None with ``formula``, whose left side names the target, and with a source.
        sample_weight : array-like (n,), optional
            Non-negative weights; integer weights are equivalent to repeated
            rows, rows with weight 0 to dropped ones.
        offset : array-like (n,), optional
            A known term added to every expert's linear predictor (coefficient one), such as
            ``np.log(exposure)`` for Poisson rates; never seen by the gate.  Estimators whose
            experts have no linear predictor refuse it.  A model fitted with an offset needs one
            at prediction too (a ValueError otherwise: pass ``np.zeros(n)`` for none).
        trials : array-like (n,), optional
            Binomial experts: each row's number of trials (positive integers; y then counts the
            successes).  Without it every row is one trial, and predictions take trials=1
            unless given; a model fitted with trials needs them at prediction too.
        lower, upper : array-like (n,), optional
            Censoring limits for ``expert="linear"`` (censored Gaussian experts, scalar y):
            ``y == lower``: left-censored; ``y == upper``: right-censored; y NaN with finite
            limits: interval-censored; ``-inf``/``inf``: no limit.
        memory_budget : int, optional
            With a source: the most bytes of model-level data read whole and fitted as arrays
            (default :data:`moekit.estimators.streaming.MEMORY_BUDGET`); a larger source, or one
            of unknown size, is streamed.  A source held in memory is always read whole.
        process_group : torch.distributed process group, optional
            With a source: distributed EM (:func:`~moekit.fit_em`'s ``process_group``): every
            process of the group calls ``fit`` with the whole source, reads its own shard in the EM
            passes, and ends with the same parameters as one process.  Gradient training
            (``fit_method="gradient"``, ``MDNRegressor``) reads the whole source on every process
            (it must fit ``memory_budget``) and trains with DistributedDataParallel, each process
            taking its share of every global minibatch: every process ends with the same parameters,
            those of one process on the same global minibatches.
        checkpoint : str or path, optional
            With a source (mixtures of experts, one start of EM): write the model and the EM state
            to this file after every iteration, atomically (:func:`~moekit.fit_em`'s ``checkpoint``).
        resume : bool
            With ``checkpoint``: continue the fit that wrote it (the same source and parameters); it
            ends at the parameters of an uninterrupted fit.

        Returns
        -------
        self
        """
        run = {k: v for k, v in (("process_group", process_group), ("checkpoint", checkpoint)) if v is not None}
        if resume:
            run["resume"] = True
        if is_source(X):
            return self._fit_source(X, y, sample_weight, memory_budget=memory_budget, offset=offset, trials=trials,
                                    lower=lower, upper=upper, **run)
        if run:
            raise ValueError(f"{next(iter(run))} is given, but X is not a source of batches; distributed and "
                             "checkpointed fits run over a source: wrap the arrays as moekit.data.ArrayBatches(x, y, "
                             "weight) or read files with moekit.data.ParquetSource")
        if memory_budget is not None:
            raise ValueError("memory_budget is given, but X is not a source of batches; it says how much of a source "
                             "(e.g. moekit.data.ParquetSource) to read whole: leave it None for arrays")
        return self._fit_arrays(X, y, sample_weight, offset=offset, trials=trials, lower=lower, upper=upper)

    def _fit_arrays(self, X, y, sample_weight, **extras):
        """``fit`` on arrays (or a DataFrame): :meth:`_start`, :meth:`_train`, the fitted attributes."""
        self.__dict__["_warm_previous"] = self._warm_signature()  # read by _warm_init (warm_start=True)
        try:
            try:
                model, x, yt, wt, seed, rng, gen = self._start(X, y, sample_weight, **extras)
            finally:
                self.__dict__.pop("_fit_extras", None)
            result = self._train(model, x, yt, wt, seed, rng, gen)
        finally:
            self.__dict__.pop("_warm_previous", None)
        self._set_result(result)
        self._fitted(x, yt, wt)
        return self

    def _fit_source(self, source, y, sample_weight, memory_budget=None, **extras):
        """``fit`` on a source of batches: refused by estimators without streaming (overridden where they stream)."""
        raise TypeError(f"{type(self).__name__} fits arrays, not a source of batches; read the source whole "
                        "(source.read_all()) and pass its x and y")

    def _set_result(self, result) -> None:
        """The fitted attributes from a :class:`~moekit.training.FitResult`."""
        self.model_ = result.model
        self.fit_result_ = result
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        self.log_likelihood_ = result.log_likelihood
        self.mean_log_likelihood_ = result.mean_log_likelihood
        self.mean_log_likelihood_history_ = np.asarray(result.history)
        self.log_likelihood_history_ = self.mean_log_likelihood_history_ * result.train_weight
        self._set_model_attributes(result)

    # ------------------------------------------------------- model files
    def model_structure(self) -> dict:  # pragma: no cover - every storable estimator overrides it
        """What :meth:`rebuild_model` needs beyond the parameters and fitted attributes (JSON values)."""
        raise NotImplementedError

    def rebuild_model(self, structure: dict):  # pragma: no cover - every storable estimator overrides it
        """An unfitted model of the stored ``structure`` (its tensors are then loaded); changes no parameter."""
        raise NotImplementedError


@guard_public_methods
class RegressorTargets:
    """Real-valued y, scalar (n,) or vector (n, d_y): checked at fit and when scoring."""

    def score(self, X, y=None, sample_weight=None, *, offset=None, trials=None) -> float:
        """R² of the conditional mean E[y | x], scikit-learn's regressor score.

        ``offset``, ``trials``: as for ``predict`` (for a model fitted with them).

        It judges the mean only, not the conditional distribution: it cannot choose the number of
        experts (on tonedata ``GridSearchCV`` over ``n_experts`` with it picks K = 1).  Choose K by
        held-out log-likelihood with ``scoring=moekit.selection.log_likelihood_scorer``, or by
        ``bic`` / ``aic`` / ``icl`` (``moekit.selection.select_n_experts``).

        ``X`` may be a source of batches (``y`` and ``sample_weight`` None: the source's targets
        and row weights are used).
        """
        if is_source(X):
            return self._score_source(X, y, sample_weight, offset=offset, trials=trials)
        _require_y(y, "score")
        check_y(y, X, (1, 2))
        numeric_target(y)
        if offset is None and trials is None:
            return super().score(X, y, sample_weight=sample_weight)
        return float(r2_score(y, self.predict(X, offset=offset, trials=trials), sample_weight=sample_weight))

    def _fit_targets(self, y, w):
        self._y_ndim = y.ndim
        yt = torch.as_tensor(np.array(y, dtype=np.float64), dtype=torch_dtype(self.dtype), device=self.device)
        return yt, (y.shape[1] if y.ndim == 2 else None)

    def _y_tensor(self, y, n):
        numeric_target(y)
        y = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y, dtype=np.float64)
        if y.ndim != self._y_ndim or y.shape[0] != n:
            raise ValueError(f"y must have shape {(n,) if self._y_ndim == 1 else (n, '...')} like the training y, got {y.shape}")
        if not np.isfinite(y).all():
            raise ValueError("y contains NaN or infinite values; drop or impute them first")
        return torch.as_tensor(y.copy(), dtype=torch_dtype(self.dtype), device=self.device)


@guard_public_methods
class ClassifierTargets:
    """Class labels (n,): encoded as 0..C-1 in the order of ``classes_``."""

    def score(self, X, y=None, sample_weight=None) -> float:
        """Accuracy of ``predict``, scikit-learn's classifier score.

        To choose the number of experts use the held-out log-likelihood
        (``scoring=moekit.selection.log_likelihood_scorer``) or ``bic`` / ``aic`` / ``icl``.
        ``X`` may be a source of batches (``y`` and ``sample_weight`` None: the source's labels
        and row weights are used).
        """
        if is_source(X):
            return self._score_source(X, y, sample_weight)
        _require_y(y, "score")
        check_y(y, X, (1,))
        return super().score(X, y, sample_weight=sample_weight)

    def _fit_targets(self, y, w):
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        present = np.unique(y_enc[w > 0])
        if len(present) < 2:
            raise ValueError(
                f"y has only 1 class ({self.classes_[present[0]]!r}) among rows with positive weight; "
                "a classifier needs at least 2 classes"
            )
        return torch.as_tensor(y_enc, dtype=torch.long, device=self.device), len(self.classes_)

    def _y_tensor(self, y, n):
        y = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"y must be 1-D with {n} labels, got shape {y.shape}")
        idx = np.searchsorted(self.classes_, y)
        idx = np.clip(idx, 0, len(self.classes_) - 1)
        unknown = self.classes_[idx] != y
        if unknown.any():
            raise ValueError(f"y holds labels not seen in fit: {sorted(set(y[unknown].tolist()))[:5]}; known: {list(self.classes_)}")
        return torch.as_tensor(idx, dtype=torch.long, device=self.device)


def _require_y(y, method: str) -> None:
    """ValueError when ``y`` is None for arrays (only a source of batches carries its own y)."""
    if y is None:
        raise ValueError(f"{method} needs y (the targets of X's rows): call {method}(X, y), or pass a source of "
                         "batches, which carries y")


def _with_nan_rows(err: ValueError, X, missing_option: bool = False) -> ValueError:
    """scikit-learn's "Input X contains NaN" with the first rows and columns holding NaN, and the fix."""
    if not str(err).startswith("Input X contains NaN"):
        return err
    try:
        arr = np.asarray(X.to_numpy(dtype=np.float64) if hasattr(X, "to_numpy") else X, dtype=np.float64)
    except (TypeError, ValueError):
        return err
    if arr.ndim != 2:
        return err
    nan = np.isnan(arr)
    cols = np.flatnonzero(nan.any(0))
    names = [str(c) for c in X.columns] if is_dataframe(X) else None
    shown = [names[j] if names else int(j) for j in cols[:5]]
    option = ", or fit with missing='drop' to drop those rows" if missing_option else ""
    return ValueError(f"Input X contains NaN in rows {first_rows(nan.any(1))}, columns {shown}"
                      f"{' ...' if len(cols) > 5 else ''}; a prediction or fit needs every input: impute them "
                      f"(e.g. sklearn.impute.SimpleImputer) or drop those rows{option}")


def _named_frame(X: np.ndarray, names: list):
    """X as a DataFrame with the formulas' column names (so that ``feature_names_in_`` records them)."""
    import pandas as pd  # slow to import; here only for models written as formulas (which need pandas anyway)

    return pd.DataFrame(X, columns=list(names))


def _design_frame(design: FormulaDesign, X):
    """New data through a fitted formula design; an array with the design's columns passes as it is."""
    if not is_dataframe(X):
        arr = np.asarray(X)
        if arr.ndim == 2 and arr.shape[1] == len(design.names):
            return X
        raise TypeError(f"X must be a pandas DataFrame with the columns of formula {design.formula!r}"
                        + (f" and gate_formula {design.gate_formula!r}" if design.gate_formula else "")
                        + f", got {type(X).__name__}")
    if [str(c) for c in X.columns] == design.names:
        return X
    return _named_frame(design.transform(X), design.names)
