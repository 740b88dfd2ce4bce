"""scikit-learn front: :class:`MoERegressor` and :class:`MoEClassifier`.

A thin layer over the PyTorch models and the training functions: estimators
store their arguments untouched in ``__init__``; ``fit`` validates the data,
builds a :class:`~moekit.MixtureOfExperts`, and calls :func:`~moekit.fit_em`
or :func:`~moekit.fit_gradient`.
"""

from __future__ import annotations

import copy
import numbers

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    RegressorMixin,
    clone,
    is_regressor,
)
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

from .._validation import check_sample_weight
from ..gates import ConstantGate, Gate, MLPGate, SoftmaxGate
from ..mixture import MixtureOfExperts
from ..training.em import fit_em
from ..training.gradient import fit_gradient
from .base import ConditionalMixtureMixin, _check_device, _torch_dtype

__all__ = ["MoERegressor", "MoEClassifier"]



class _MoEBase(ConditionalMixtureMixin, BaseEstimator):
    """Shared parameters, model building and prediction helpers."""

    _expert_names: tuple = ()

    def __init__(
        self,
        n_experts=2,
        expert="linear",
        gate="softmax",
        covariance="full",
        fit_method="em",
        max_iter=200,
        tol=1e-6,
        n_init=1,
        init="random",
        random_state=None,
        device="cpu",
        dtype="float64",
        verbose=0,
        gate_features=None,
        expert_features=None,
        var_floor=1e-6,
        hidden_layer_sizes=(32,),
        learning_rate=None,
        batch_size=256,
        alpha=0.0,
        optimizer="adam",
    ):
        self.n_experts = n_experts
        self.expert = expert
        self.gate = gate
        self.covariance = covariance
        self.fit_method = fit_method
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.init = init
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.verbose = verbose
        self.gate_features = gate_features
        self.expert_features = expert_features
        self.var_floor = var_floor
        self.hidden_layer_sizes = hidden_layer_sizes
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.alpha = alpha
        self.optimizer = optimizer

    # ------------------------------------------------------------ checking
    def _check_params(self) -> None:
        if not (isinstance(self.n_experts, numbers.Integral) and not isinstance(self.n_experts, bool) and self.n_experts >= 1):
            raise ValueError(f"n_experts must be a positive integer, got {self.n_experts!r}")
        if self.fit_method not in ("em", "gradient"):
            raise ValueError(f"fit_method must be 'em' or 'gradient', got {self.fit_method!r}")
        if self.optimizer not in ("adam", "lbfgs"):
            raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {self.optimizer!r}")
        if not (isinstance(self.max_iter, numbers.Integral) and self.max_iter >= 1):
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not (isinstance(self.n_init, numbers.Integral) and self.n_init >= 1):
            raise ValueError(f"n_init must be a positive integer, got {self.n_init!r}")
        if not (isinstance(self.tol, numbers.Real) and self.tol >= 0):
            raise ValueError(f"tol must be a non-negative number, got {self.tol!r}")
        if not (isinstance(self.alpha, numbers.Real) and self.alpha >= 0):
            raise ValueError(f"alpha must be a non-negative number, got {self.alpha!r}")
        if not (isinstance(self.var_floor, numbers.Real) and self.var_floor > 0):
            raise ValueError(f"var_floor must be a positive number, got {self.var_floor!r}")
        if isinstance(self.gate, str) and self.gate not in ("softmax", "mlp", "constant"):
            raise ValueError(f"gate must be 'softmax', 'mlp', 'constant' or a Gate instance, got {self.gate!r}")
        if not isinstance(self.gate, (str, Gate)):
            raise TypeError(f"gate must be 'softmax', 'mlp', 'constant' or a moekit Gate instance, got {type(self.gate).__name__}")
        if isinstance(self.expert, str) and self.expert not in self._expert_names:
            raise ValueError(f"expert must be one of {self._expert_names} or an expert instance, got {self.expert!r}")
        if self.covariance not in ("full", "diag", "spherical"):
            raise ValueError(f"covariance must be 'full', 'diag' or 'spherical', got {self.covariance!r}")
        _torch_dtype(self.dtype)
        _check_device(self.device)

    def _feature_index(self, spec, name: str, n_features: int):
        if spec is None:
            return None
        items = [spec] if isinstance(spec, (str, numbers.Integral)) else list(spec)
        if not items:
            raise ValueError(f"{name} must select at least one column, got an empty list")
        names = getattr(self, "feature_names_in_", None)
        out = []
        for it in items:
            if isinstance(it, str):
                if names is None:
                    raise ValueError(
                        f"{name} holds the column name {it!r} but X has no column names; "
                        "pass a pandas DataFrame or use column indices"
                    )
                hits = np.flatnonzero(np.asarray(names) == it)
                if len(hits) == 0:
                    raise ValueError(f"{name}: column {it!r} is not in X's columns {list(names)}")
                out.append(int(hits[0]))
            elif isinstance(it, numbers.Integral) and not isinstance(it, bool):
                if not -n_features <= it < n_features:
                    raise ValueError(f"{name}: column index {it} is out of range for X with {n_features} columns")
                out.append(int(it) % n_features)
            else:
                raise TypeError(f"{name} must hold column indices or names, got {it!r}")
        return out

    def _generator(self, seed) -> torch.Generator:
        return torch.Generator().manual_seed(int(seed))

    def _build_gate(self, d: int, k: int, dtype, gen):
        if isinstance(self.gate, Gate):
            g = copy.deepcopy(self.gate)
            if g.n_experts != k:
                raise ValueError(f"the gate instance has {g.n_experts} outputs but n_experts={k}")
            return g.to(dtype)
        if self.gate == "softmax":
            return SoftmaxGate(d, k, l2=float(self.alpha), dtype=dtype)
        if self.gate == "constant":
            return ConstantGate(k, dtype=dtype)
        lr = 1e-2 if self.learning_rate is None else self.learning_rate
        return MLPGate(d, k, self.hidden_layer_sizes, learning_rate=lr, dtype=dtype, generator=gen)

    def _experts_from_instance(self, k: int, d: int, dtype):
        inst = self.expert
        if isinstance(inst, torch.nn.Module):
            if getattr(inst, "stacked", False):
                if inst.n_experts != k:
                    raise ValueError(f"the stacked expert has n_experts={inst.n_experts} but n_experts={k}")
                return copy.deepcopy(inst).to(dtype)
            return [copy.deepcopy(inst).to(dtype) for _ in range(k)]
        if hasattr(inst, "fit") and hasattr(inst, "predict") and is_regressor(inst):
            from ..experts.sklearn import SklearnExpert

            return [SklearnExpert(clone(inst), d, var_floor=self.var_floor) for _ in range(k)]
        raise TypeError(
            "expert must be a name, a moekit expert module or a scikit-learn regressor instance, "
            f"got {type(inst).__name__}"
        )

    def _build_model(self, d: int, y_info, dtype, gen) -> MixtureOfExperts:
        k = int(self.n_experts)
        gcols = self._feature_index(self.gate_features, "gate_features", d)
        ecols = self._feature_index(self.expert_features, "expert_features", d)
        dg = d if gcols is None else len(gcols)
        de = d if ecols is None else len(ecols)
        gate = self._build_gate(dg, k, dtype, gen)
        if isinstance(self.expert, str):
            experts = self._build_named_experts(de, k, y_info, dtype, gen)
        else:
            experts = self._experts_from_instance(k, de, dtype)
        return MixtureOfExperts(gate, experts, gate_features=gcols, expert_features=ecols)

    # ------------------------------------------------------------- fitting
    def _fit_model(self, x, y, w, d, y_info):
        dtype = _torch_dtype(self.dtype)
        rng = np.random.default_rng(self.random_state)
        seed = int(rng.integers(0, 2**31 - 1))
        gen = self._generator(seed)
        with torch.device("cpu"):  # built and seeded on the CPU (the same start on every device), then moved
            model = self._build_model(d, y_info, dtype, gen)
        model = model.to(self.device)
        n_eff = int((w > 0).sum())
        try:
            n_par = model.n_parameters()
        except (NotImplementedError, ValueError, AttributeError):
            n_par = 0  # e.g. an unfitted scikit-learn expert: its size is known only after fitting
        if n_eff < n_par and self.alpha == 0:
            raise ValueError(
                f"got {n_eff} sample(s) with positive weight, but a model with n_experts={self.n_experts} "
                f"on {d} feature(s) has {n_par} free parameters; use fewer experts, fewer features "
                "(gate_features / expert_features), more data, or a ridge penalty alpha > 0"
            )
        if self.fit_method == "em":
            res = fit_em(
                model, x, y, w, max_iter=int(self.max_iter), tol=float(self.tol), n_init=int(self.n_init),
                init=self.init, random_state=seed, verbose=int(self.verbose),
            )
        else:
            best = None
            seeds = rng.integers(0, 2**31 - 1, size=int(self.n_init))
            for s in seeds:
                m = copy.deepcopy(model)
                r = fit_gradient(
                    m, x, y, w, optimizer=self.optimizer, learning_rate=self.learning_rate, max_epochs=int(self.max_iter),
                    batch_size=int(self.batch_size), tol=float(self.tol), init=self.init,
                    early_stopping=self.optimizer == "adam",
                    random_state=int(s), verbose=int(self.verbose),
                )
                if best is None or r.mean_log_likelihood > best.mean_log_likelihood:
                    best = r
            res = best
        self.model_ = res.model
        self.fit_result_ = res
        self.n_iter_ = res.n_iter
        self.converged_ = res.converged
        self.log_likelihood_ = res.log_likelihood
        self.mean_log_likelihood_ = res.mean_log_likelihood
        self.mean_log_likelihood_history_ = np.asarray(res.history)
        self.log_likelihood_history_ = self.mean_log_likelihood_history_ * res.train_weight
        self.n_experts_ = self.model_.n_experts
        return self

    # ---------------------------------------------------------- gate views
    def predict_gate(self, X) -> np.ndarray:
        """Mixing weights g(x): (n, K), rows summing to one."""
        x = self._x(X)
        with torch.no_grad():
            return self.model_.log_gate(x).exp().cpu().numpy()

    def responsibilities(self, X, y) -> np.ndarray:
        """Posterior probability of each expert given x and y: (n, K)."""
        x = self._x(X)
        yt = self._y_tensor(y, x.shape[0])
        with torch.no_grad():
            return self.model_.log_responsibilities(x, yt).exp().cpu().numpy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


class MoERegressor(RegressorMixin, _MoEBase):
    """Mixture-of-experts regression (scikit-learn estimator).

    ``p(y | x) = sum_k g_k(x) p_k(y | x)`` with a softmax (or constant, or
    neural) gate and K experts, fitted by EM (default) or by gradient.

    Parameters
    ----------
    n_experts : int, default=2
        K.
    expert : {"linear", "poisson", "student_t", "mlp"} or instance, default="linear"
        Expert family; an instance may be a moekit expert module (single:
        copied K times; stacked with ``n_experts=K``: used as is) or any
        scikit-learn regressor supporting ``sample_weight`` (refitted by
        weighted least squares in every M-step).
    gate : {"softmax", "mlp", "constant"} or Gate, default="softmax"
    covariance : {"full", "diag", "spherical"}, default="full"
        Noise covariance of linear-Gaussian experts for vector y.
    fit_method : {"em", "gradient"}, default="em"
    max_iter : int, default=200
        EM iterations or gradient epochs.
    tol : float, default=1e-6
        Convergence threshold on the mean per-sample log-likelihood.
    n_init : int, default=1
        Starts; the best final log-likelihood is kept.
    init : {"random", "kmeans"} or array (n, K), default="random"
        "random": every row to a random expert (flexmix's default start, the
        most reliable for mixtures of regressions); "kmeans": k-means on the
        standardised joint [X, y].
    random_state : int, RandomState or None
    device : str, default="cpu"
    dtype : {"float64", "float32"}, default="float64"
    verbose : int, default=0
    gate_features, expert_features : list of int or str, optional
        Columns used by the gate and by the experts (names need a DataFrame).
    var_floor : float, default=1e-6
        Lower bound on noise variances, relative to the variance of y (the
        absolute floor is ``var_floor * var(y)``), so that no expert can
        collapse onto a few points.
    hidden_layer_sizes : tuple of int, default=(32,)
        For "mlp" gates and experts.
    learning_rate : float, optional
        For gradient training and neural M-steps.
    batch_size : int, default=256
        Minibatch size for ``fit_method="gradient"``.
    optimizer : {"adam", "lbfgs"}, default="adam"
        For ``fit_method="gradient"``: minibatch Adam with early stopping on a
        validation split, or full-batch L-BFGS.
    alpha : float, default=0.0
        Ridge (L2) penalty on the slopes of linear experts and of the softmax
        gate (and ``l2`` of GLM experts).  0 is maximum likelihood, which
        needs at least as many rows as free parameters; with ``alpha > 0`` the
        penalised problem is well posed on fewer rows.

    Attributes
    ----------
    model_ : MixtureOfExperts
    log_likelihood_ : float
        Total weighted training log-likelihood ``sum_i w_i log p(y_i | x_i)``
        (as R and the command line report it).
    mean_log_likelihood_ : float
        The same per unit weight (``log_likelihood_ / sum_i w_i``).
    log_likelihood_history_, mean_log_likelihood_history_ : ndarray
        Total and mean training log-likelihood after every iteration or epoch
        (the mean is ``fit_result_.history``, the one ``tol`` applies to).
    n_iter_, converged_, fit_result_
    n_experts_ : int
        Experts after pruning of vanishing ones.
    n_features_in_ : int
    feature_names_in_ : ndarray, for DataFrames

    Shapes
    ------
    X (n, d_x); y (n,) or (n, d_y); ``predict`` returns (n,) or (n, d_y);
    ``predict_gate`` and ``responsibilities`` (n, K); ``predict_quantiles``
    (n, len(q)); ``score_samples`` (n,).

    Examples
    --------
    >>> from moekit import MoERegressor
    >>> from moekit.datasets import load_tonedata
    >>> d = load_tonedata()
    >>> est = MoERegressor(n_experts=2, random_state=0).fit(d.data, d.target)
    >>> est.predict_gate(d.data[:2]).shape
    (2, 2)
    >>> round(float(est.score_samples(d.data, d.target).sum()), 2)
    142.85
    """

    _expert_names = ("linear", "poisson", "student_t", "mlp")

    def fit(self, X, y, sample_weight=None):
        """Fit by EM or gradient. ``sample_weight``: (n,) non-negative."""
        self._check_params()
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        w = check_sample_weight(sample_weight, X.shape[0], torch.float64).numpy()
        if self.expert == "poisson" and (np.any(y < 0) or np.any(y != np.round(y))):
            raise ValueError("y must hold non-negative integer counts for expert='poisson'")
        self._y_ndim = y.ndim
        dtype = _torch_dtype(self.dtype)
        x = torch.as_tensor(np.array(X, dtype=np.float64), dtype=dtype, device=self.device)
        yt = torch.as_tensor(np.array(y, dtype=np.float64), dtype=dtype, device=self.device)
        wt = torch.as_tensor(w, dtype=dtype, device=self.device)
        # weighted, so that integer weights and repeated rows give the same floor
        wn = w / w.sum()
        y2 = y.reshape(len(y), -1)
        centred = y2 - wn @ y2
        var_y = float(np.mean(wn @ (centred * centred)))
        self._var_floor_abs = float(self.var_floor) * (var_y if var_y > 0 else 1.0)
        return self._fit_model(x, yt, wt, X.shape[1], y.shape[1] if y.ndim == 2 else None)

    def _build_named_experts(self, d, k, d_y, dtype, gen):
        floor = getattr(self, "_var_floor_abs", self.var_floor)
        if self.expert == "linear":
            from ..experts.gaussian import LinearGaussianExpert

            return LinearGaussianExpert(
                d, d_y, self.covariance, n_experts=k, var_floor=floor, alpha=float(self.alpha), dtype=dtype
            )
        if self.expert == "poisson":
            from ..experts.poisson import PoissonExpert

            if d_y is not None:
                raise ValueError("expert='poisson' needs a 1-D y of counts")
            return PoissonExpert(d, n_experts=k, l2=float(self.alpha), dtype=dtype)
        if self.expert == "student_t":
            from ..experts.student_t import StudentTExpert

            return StudentTExpert(d, d_y, n_experts=k, var_floor=floor, dtype=dtype)
        from ..experts.mlp import MLPExpert

        lr = 1e-2 if self.learning_rate is None else self.learning_rate
        return MLPExpert(
            d, d_y, head="gaussian", hidden_layer_sizes=self.hidden_layer_sizes, n_experts=k,
            learning_rate=lr, var_floor=floor, dtype=dtype, generator=gen,
        )

    def _y_tensor(self, y, n):
        y = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y, dtype=np.float64)
        if y.ndim != self._y_ndim or y.shape[0] != n:
            raise ValueError(f"y must have shape {(n,) if self._y_ndim == 1 else (n, '...')} like the training y, got {y.shape}")
        if not np.isfinite(y).all():
            raise ValueError("y contains NaN or infinite values; drop or impute them first")
        return torch.as_tensor(y.copy(), dtype=_torch_dtype(self.dtype), device=self.device)

    def predict(self, X) -> np.ndarray:
        """Conditional mean E[y | x]: (n,) or (n, d_y).

        Raises
        ------
        ValueError
            Where the mean does not exist (a Student-t expert with df <= 1):
            use ``predict_quantiles(X, 0.5)`` (the median) instead.
        """
        mean = self.predict_distribution(X).mean.cpu().numpy()
        if not np.isfinite(mean).all():
            raise ValueError(
                "the conditional mean does not exist for some rows (a heavy-tailed expert, e.g. Student-t "
                "with df <= 1, has no mean); use predict_quantiles(X, 0.5) for the median, or bound df "
                "(StudentTExpert(df_bounds=(2, ...)))"
            )
        return mean

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


class MoEClassifier(ClassifierMixin, _MoEBase):
    """Mixture-of-experts classification (scikit-learn estimator).

    Experts are logistic (two classes) or softmax (more classes) regressions,
    or neural networks with a categorical head; the gate is as in
    :class:`MoERegressor`.  Parameters are those of :class:`MoERegressor`,
    with ``expert`` in {"logistic", "mlp"} or an expert instance.

    Shapes
    ------
    X (n, d_x); y (n,) labels; ``predict_proba`` (n, n_classes).

    Examples
    --------
    >>> import numpy as np
    >>> from moekit import MoEClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 2))
    >>> y = (X[:, 0] * X[:, 1] > 0).astype(int)
    >>> clf = MoEClassifier(n_experts=4, random_state=0, n_init=2).fit(X, y)
    >>> clf.predict_proba(X[:3]).shape
    (3, 2)
    """

    _expert_names = ("logistic", "mlp")

    def __init__(
        self,
        n_experts=2,
        expert="logistic",
        gate="softmax",
        covariance="full",
        fit_method="em",
        max_iter=200,
        tol=1e-6,
        n_init=1,
        init="random",
        random_state=None,
        device="cpu",
        dtype="float64",
        verbose=0,
        gate_features=None,
        expert_features=None,
        var_floor=1e-6,
        hidden_layer_sizes=(32,),
        learning_rate=None,
        batch_size=256,
        alpha=0.0,
        optimizer="adam",
    ):
        super().__init__(
            n_experts=n_experts, expert=expert, gate=gate, covariance=covariance, fit_method=fit_method,
            max_iter=max_iter, tol=tol, n_init=n_init, init=init, random_state=random_state, device=device,
            dtype=dtype, verbose=verbose, gate_features=gate_features, expert_features=expert_features,
            var_floor=var_floor, hidden_layer_sizes=hidden_layer_sizes, learning_rate=learning_rate,
            batch_size=batch_size, alpha=alpha, optimizer=optimizer,
        )

    def fit(self, X, y, sample_weight=None):
        """Fit by EM or gradient. ``y``: (n,) class labels."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        w = check_sample_weight(sample_weight, X.shape[0], torch.float64).numpy()
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        present = np.unique(y_enc[w > 0])
        if len(present) < 2:
            raise ValueError(
                f"y has only 1 class ({self.classes_[present[0]]!r}) among rows with positive weight; "
                "a classifier needs at least 2 classes"
            )
        dtype = _torch_dtype(self.dtype)
        x = torch.as_tensor(np.array(X, dtype=np.float64), dtype=dtype, device=self.device)
        yt = torch.as_tensor(y_enc, dtype=torch.long, device=self.device)
        wt = torch.as_tensor(w, dtype=dtype, device=self.device)
        return self._fit_model(x, yt, wt, X.shape[1], len(self.classes_))

    def _build_named_experts(self, d, k, n_classes, dtype, gen):
        if self.expert == "logistic":
            if n_classes == 2:
                from ..experts.logistic import LogisticExpert

                return LogisticExpert(d, n_experts=k, l2=float(self.alpha), dtype=dtype)
            from ..experts.logistic import SoftmaxExpert

            return SoftmaxExpert(d, n_classes, n_experts=k, l2=float(self.alpha), dtype=dtype)
        from ..experts.mlp import MLPExpert

        lr = 1e-2 if self.learning_rate is None else self.learning_rate
        return MLPExpert(
            d, None, head="categorical", n_classes=n_classes, hidden_layer_sizes=self.hidden_layer_sizes,
            n_experts=k, learning_rate=lr, dtype=dtype, generator=gen,
        )

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

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities: (n, n_classes)."""
        p = self.predict_distribution(X).probs.cpu().numpy()
        if p.ndim == 1:  # Bernoulli experts: probability of the second class
            p = np.column_stack([1 - p, p])
        # rounding can leave a probability a few ulps outside [0, 1]
        p = np.clip(p, 0.0, 1.0)
        return p / p.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X) -> np.ndarray:
        """Log class probabilities: (n, n_classes)."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X) -> np.ndarray:
        """Most probable class: (n,)."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]
