"""scikit-learn front for hierarchical mixtures of experts: :class:`HMERegressor`, :class:`HMEClassifier`.

The same API as :class:`~moekit.MoERegressor` / :class:`~moekit.MoEClassifier`
(they are subclasses: fitting, prediction, quantiles, sampling, BIC/AIC,
pipelines and grid searches work the same), with a tree of gates instead of
one gate: ``depth`` and ``branching`` give its shape, or ``grow=True`` grows
it from a single leaf by held-out likelihood (:func:`~moekit.training.grow.grow_tree`).
Every gate and leaf is fitted by EM (path posteriors, IRLS at every gate) or
by gradient.  What is per expert in the flat estimators is per *leaf* here:
``predict_gate`` gives the path probabilities (n, L), ``responsibilities``
the path posteriors (n, L), and ``predict_distribution`` a mixture over the
L leaves.
"""

from __future__ import annotations

import copy
import numbers

import numpy as np
import torch

from ..gates import Gate
from ..training.gradient import fit_gradient
from ..training.grow import grow_tree
from ..training.tree import fit_tree_em, init_tree
from ..tree.build import as_branching, build_tree, n_leaves, tree_depth
from ..tree.render import render_tree
from ..tree.routing import leaf_mixture, node_gate_probabilities, path_posteriors, path_probabilities
from .base import _torch_dtype
from .moe import MoEClassifier, MoERegressor

__all__ = ["HMERegressor", "HMEClassifier"]


class _HMEMixin:
    """Tree building, fitting and tree views shared by the HME estimators."""

    # ------------------------------------------------------------ checking
    def _check_params(self) -> None:
        def is_int(v, low):
            return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low

        if self.grow:
            if not is_int(self.branching, 2):
                raise ValueError(f"with grow=True, branching must be an int >= 2 (children per split), got {self.branching!r}")
            if self.depth is not None and not is_int(self.depth, 1):
                raise ValueError(f"depth must be None or a positive int (the deepest a grown tree may get), got {self.depth!r}")
            if not is_int(self.max_leaves, 1):
                raise ValueError(f"max_leaves must be a positive integer, got {self.max_leaves!r}")
            if not (isinstance(self.validation_fraction, numbers.Real) and 0 < self.validation_fraction < 1):
                raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
            if not (isinstance(self.min_gain, numbers.Real) and self.min_gain >= 0):
                raise ValueError(f"min_gain must be a non-negative number, got {self.min_gain!r}")
        else:
            as_branching(self.depth, self.branching)
        if not isinstance(self.grow, (bool, np.bool_)):
            raise ValueError(f"grow must be True or False, got {self.grow!r}")
        if self.fit_method not in ("em", "gradient"):
            raise ValueError(f"fit_method must be 'em' or 'gradient', got {self.fit_method!r}")
        if self.grow and self.fit_method != "em":
            raise ValueError("grow=True fits every candidate tree by EM; use fit_method='em' (or grow=False)")
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
        if self.prune_threshold is not None and not (
            isinstance(self.prune_threshold, numbers.Real) and 0 <= self.prune_threshold < 1
        ):
            raise ValueError(f"prune_threshold must be None or in [0, 1), got {self.prune_threshold!r}")
        if isinstance(self.init, str) and self.init not in ("kmeans", "kmeans_x", "random"):
            raise ValueError(f"init must be 'kmeans', 'kmeans_x', 'random' or an (n, K) array, got {self.init!r}")
        if isinstance(self.gate, str) and self.gate not in ("softmax", "mlp", "constant"):
            raise ValueError(f"gate must be 'softmax', 'mlp', 'constant' or a Gate instance, got {self.gate!r}")
        if not isinstance(self.gate, (str, Gate)):
            raise TypeError(
                f"gate must be 'softmax', 'mlp', 'constant' or a moekit Gate instance, got {type(self.gate).__name__}"
            )
        if isinstance(self.expert, str) and self.expert not in self._expert_names:
            raise ValueError(f"expert must be one of {self._expert_names} or an expert instance, got {self.expert!r}")
        if self.covariance not in ("full", "diag", "spherical"):
            raise ValueError(f"covariance must be 'full', 'diag' or 'spherical', got {self.covariance!r}")
        _torch_dtype(self.dtype)

    # ------------------------------------------------------------ building
    def _factories(self, de: int, y_info, dtype, gen):
        def leaves(k):
            if isinstance(self.expert, str):
                return self._build_named_experts(de, k, y_info, dtype, gen)
            return self._experts_from_instance(k, de, dtype)

        def gate(d, k):
            return self._build_gate(d, k, dtype, gen)

        return leaves, gate

    def _build_model(self, d: int, y_info, dtype, gen):
        gcols = self._feature_index(self.gate_features, "gate_features", d)
        ecols = self._feature_index(self.expert_features, "expert_features", d)
        de = d if ecols is None else len(ecols)
        leaves, gate = self._factories(de, y_info, dtype, gen)
        if self.grow:
            depth, branching = 1, 1  # a single leaf: growth decides the rest
        elif isinstance(self.branching, numbers.Integral):
            depth, branching = self.depth, self.branching
        else:
            depth, branching = self.depth, tuple(self.branching)
        pt = None if self.prune_threshold is None else float(self.prune_threshold)
        return build_tree(
            d, depth, branching, leaf=leaves, gate=gate, dtype=dtype, gate_features=gcols, expert_features=ecols,
            prune_threshold=pt,
        )

    # ------------------------------------------------------------- fitting
    def _fit_model(self, x, y, w, d, y_info):
        dtype = _torch_dtype(self.dtype)
        if hasattr(self, "_var_floor_abs") and y.is_floating_point():
            # the variance floor is relative to the *weighted* variance of y, so that integer
            # weights and repeated rows give the same floor (and the same fit)
            yy = (y[:, None] if y.dim() == 1 else y).to(torch.float64)
            ww = w.to(torch.float64)[:, None]
            mean = (ww * yy).sum(0) / ww.sum()
            var_y = float(((ww * (yy - mean) ** 2).sum(0) / ww.sum()).mean())
            self._var_floor_abs = float(self.var_floor) * (var_y if var_y > 0 else 1.0)
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
            n_par = 0  # e.g. unfitted scikit-learn leaves: their size is known only after fitting
        if n_eff < n_par and self.alpha == 0:
            n_l = n_leaves(model)
            raise ValueError(
                f"the tree is larger than the data supports: {n_l} leaves ({tree_depth(model)} level(s) of gates) "
                f"on {d} feature(s) have {n_par} free parameters, but got {n_eff} sample(s) with positive weight; "
                "use a smaller depth or branching, grow=True (the tree then grows only as far as held-out "
                "likelihood rises), fewer features (gate_features / expert_features), more data, or a ridge "
                "penalty alpha > 0"
            )
        pt = 0.0 if self.prune_threshold is None else float(self.prune_threshold)
        self.grow_result_ = None
        if self.grow:
            _, gate = self._factories(0, y_info, dtype, gen)
            g = grow_tree(
                model, x, y, w, branching=int(self.branching), gate=gate, max_leaves=int(self.max_leaves),
                max_depth=None if self.depth is None else int(self.depth),
                validation_fraction=float(self.validation_fraction), min_gain=float(self.min_gain),
                max_iter=int(self.max_iter), tol=float(self.tol), init=self.init, random_state=seed,
                verbose=int(self.verbose),
            )
            self.grow_result_ = g
            res = g.fit_result
        elif self.fit_method == "em":
            res = fit_tree_em(
                model, x, y, w, init=self.init, n_init=int(self.n_init), random_state=seed,
                max_iter=int(self.max_iter), tol=float(self.tol), prune_threshold=pt, verbose=int(self.verbose),
            )
        else:
            best = None
            for s in rng.integers(0, 2**31 - 1, size=int(self.n_init)):
                m = copy.deepcopy(model)
                init_tree(m, x, y, w, init=self.init, random_state=int(s))
                r = fit_gradient(
                    m, x, y, w, optimizer=self.optimizer, learning_rate=self.learning_rate,
                    max_epochs=int(self.max_iter), batch_size=int(self.batch_size), tol=float(self.tol), init=None,
                    early_stopping=self.optimizer == "adam", random_state=int(s), verbose=int(self.verbose),
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
        self.n_leaves_ = n_leaves(self.model_)
        self.n_experts_ = self.n_leaves_
        self.depth_ = tree_depth(self.model_)
        return self

    # --------------------------------------------------------- tree views
    def predict_distribution(self, X):
        """The predictive mixture p(y | x) over the L leaves, weighted by the path probabilities.

        Returns
        -------
        MixtureDistribution
            Batch shape (n,), L components in the order of
            :func:`~moekit.tree.tree_leaves`.
        """
        x = self._x(X)
        with torch.no_grad():
            return leaf_mixture(self.model_, x)

    def predict_gate(self, X) -> np.ndarray:
        """Path probabilities of the leaves (the product of gates along each path): (n, L), rows summing to one."""
        x = self._x(X)
        with torch.no_grad():
            return path_probabilities(self.model_, x).cpu().numpy()

    def responsibilities(self, X, y) -> np.ndarray:
        """Path posteriors P(leaf | x, y): (n, L), rows summing to one."""
        x = self._x(X)
        yt = self._y_tensor(y, x.shape[0])
        with torch.no_grad():
            return path_posteriors(self.model_, x, yt).cpu().numpy()

    def predict_node_gates(self, X) -> dict:
        """Every inner node's own gate probabilities: ``{path: (n, K_node) array}``, the root at ``()``."""
        x = self._x(X)
        with torch.no_grad():
            return {p: g.cpu().numpy() for p, g in node_gate_probabilities(self.model_, x).items()}

    def render_tree(self, X=None, y=None, sample_weight=None) -> str:
        """A text picture of the fitted tree; with X (and y), the share of the data (posterior weight) per node and leaf."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "model_")
        x = None if X is None else self._x(X)
        yt = None if y is None else self._y_tensor(y, x.shape[0])
        return render_tree(self.model_, x, yt, sample_weight)


_PARAMS_DOC = """
    Parameters
    ----------
    depth : int or None, default=2
        Levels of gates (1 is a flat mixture).  With ``grow=True``, the
        deepest a grown tree may get (``None``: no limit).
    branching : int or sequence of int, default=2
        Children per node (``depth=3, branching=2``: 8 leaves), or one number
        per level from the root (``branching=(4, 2)``; then ``depth`` must be
        None or the number of levels).  With ``grow=True``, the children of
        every split.
    grow : bool, default=False
        Grow the tree from a single leaf, splitting at each step the leaf
        whose split most raises the held-out log-likelihood, until no split
        helps (see :func:`~moekit.training.grow.grow_tree`); then refit on all
        rows.
    max_leaves : int, default=16
        Upper bound on the leaves of a grown tree.
    validation_fraction : float, default=0.2
        Rows held out to score splits when growing.
    min_gain : float, default=1e-3
        Smallest rise of the held-out mean log-likelihood for a split to help.
    prune_threshold : float or None, default=1e-4
        Children of inner nodes whose share of the data falls below this
        during EM are removed with a warning (None: never).
    init : {"kmeans", "kmeans_x", "random"} or array
        Recursive start (see :func:`~moekit.training.tree.init_tree`):
        k-means on the joint [X, y] of each node's rows (the regressor's
        default: it separates branches that overlap in X, as in inverse
        problems), k-means on the gate inputs only, a partition of input
        space (the classifier's default: k-means on one-hot labels would
        split by class, which no gate of X can follow), or random.
    expert, gate, covariance, fit_method, max_iter, tol, n_init, random_state, device, dtype,
    verbose, gate_features, expert_features, var_floor, hidden_layer_sizes, learning_rate,
    batch_size, alpha, optimizer
        As for the flat estimator (here per leaf and per gate).
"""


class HMERegressor(_HMEMixin, MoERegressor):
    __doc__ = """Hierarchical mixture-of-experts regression (scikit-learn estimator).

    A tree of gates over linear-Gaussian (or Poisson, Student-t, neural, or
    any scikit-learn regressor) leaves, fitted by EM with IRLS at every gate
    (Jordan & Jacobs 1994) or by gradient.
    """ + _PARAMS_DOC + """
    Attributes
    ----------
    model_ : MixtureOfExperts
        The root of the fitted tree.
    n_leaves_, n_experts_ : int
        Leaves after pruning or growing.
    depth_ : int
        Gates on the longest root-to-leaf path.
    grow_result_ : GrowResult or None
        The growth history when ``grow=True``.
    log_likelihood_, mean_log_likelihood_, log_likelihood_history_, mean_log_likelihood_history_
        Total and mean (per unit weight) training log-likelihood, as for
        :class:`~moekit.MoERegressor`.
    n_iter_, converged_, fit_result_, n_features_in_

    Shapes
    ------
    X (n, d_x); y (n,) or (n, d_y); ``predict`` (n,) or (n, d_y);
    ``predict_gate`` and ``responsibilities`` (n, L); ``predict_quantiles``
    (n, len(q)); ``score_samples`` (n,).

    Examples
    --------
    >>> import numpy as np
    >>> from moekit.hme import HMERegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(-1, 1, size=(300, 1))
    >>> y = np.abs(X[:, 0] - np.round(X[:, 0])) + 0.02 * rng.normal(size=300)   # a zigzag: 4 lines
    >>> hme = HMERegressor(depth=2, branching=2, init="kmeans_x", random_state=0).fit(X, y)
    >>> hme.n_leaves_, hme.predict_gate(X[:2]).shape
    (4, (2, 4))
    >>> bool(np.allclose(hme.predict_gate(X).sum(1), 1))
    True
    """

    def __init__(
        self,
        depth=2,
        branching=2,
        grow=False,
        max_leaves=16,
        expert="linear",
        gate="softmax",
        covariance="full",
        fit_method="em",
        max_iter=200,
        tol=1e-6,
        n_init=1,
        init="kmeans",
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
        validation_fraction=0.2,
        min_gain=1e-3,
        prune_threshold=1e-4,
    ):
        self.depth = depth
        self.branching = branching
        self.grow = grow
        self.max_leaves = max_leaves
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
        self.validation_fraction = validation_fraction
        self.min_gain = min_gain
        self.prune_threshold = prune_threshold


class HMEClassifier(_HMEMixin, MoEClassifier):
    __doc__ = """Hierarchical mixture-of-experts classification (scikit-learn estimator).

    Leaves are logistic (two classes) or softmax (more classes) regressions,
    or neural networks with a categorical head; the tree is as in
    :class:`HMERegressor`.
    """ + _PARAMS_DOC + """
    Shapes
    ------
    X (n, d_x); y (n,) labels; ``predict_proba`` (n, n_classes);
    ``predict_gate`` and ``responsibilities`` (n, L).

    Examples
    --------
    >>> import numpy as np
    >>> from moekit.hme import HMEClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 2))
    >>> y = (X[:, 0] * X[:, 1] > 0).astype(int)      # XOR: two levels of linear splits
    >>> clf = HMEClassifier(depth=2, branching=2, random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:3]).shape, clf.score(X, y) > 0.9
    ((3, 2), True)
    """

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities: (n, n_classes), in [0, 1], rows summing to one.

        The mixture of Bernoulli leaves gives P(class 1) as a sum of weights
        that sum to one only up to rounding; ``1 - p`` could then be a tiny
        negative number (and its log NaN), so probabilities are clipped to
        [0, 1] and renormalised.
        """
        p = np.clip(super().predict_proba(X), 0.0, 1.0)
        return p / p.sum(axis=1, keepdims=True)

    def __init__(
        self,
        depth=2,
        branching=2,
        grow=False,
        max_leaves=16,
        expert="logistic",
        gate="softmax",
        covariance="full",
        fit_method="em",
        max_iter=200,
        tol=1e-6,
        n_init=1,
        init="kmeans_x",
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
        validation_fraction=0.2,
        min_gain=1e-3,
        prune_threshold=1e-4,
    ):
        self.depth = depth
        self.branching = branching
        self.grow = grow
        self.max_leaves = max_leaves
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
        self.validation_fraction = validation_fraction
        self.min_gain = min_gain
        self.prune_threshold = prune_threshold
