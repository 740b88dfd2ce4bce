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
L leaves.  Offsets and binomial trials are trailing columns of the model's x
that only the leaves read (no gate at any depth sees them); censoring limits
make the leaves censored Gaussian; NaN coordinates of a vector y are
marginalised by linear leaves; ``expert_features=[]`` gives intercept-only
leaves.
"""

from __future__ import annotations

import numbers
from contextlib import nullcontext

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from .._validation import OneOf, Real, incomplete_targets, torch_dtype
from ..gates import ConstantGate
from ..mixture import MixtureOfExperts
from ..training.grow import grow_tree
from ..training.tree import fit_tree_em, init_tree
from ..tree.build import as_branching, build_tree, n_leaves, tree_depth
from ..tree.render import render_tree
from ..tree.routing import leaf_mixture, node_gate_probabilities, path_posteriors, path_probabilities
from .base import storable
from .moe import GATES, MoEClassifier, MoERegressor, expert_names

__all__ = ["HMERegressor", "HMEClassifier"]

_INIT = OneOf("kmeans", "kmeans_x", "random", other="an (n, K) array", instances=(object,))


class _HMEMixin:
    """Tree building, fitting and tree views shared by the HME estimators."""

    # ------------------------------------------------------------ checking
    def _check_param_combinations(self) -> None:
        if isinstance(self.expert, (list, tuple)):
            raise ValueError(f"expert={list(self.expert)!r}: a list of families (one per expert) is an option of "
                             f"MoERegressor and MoEClassifier; the leaves of {type(self).__name__} share one family: "
                             "give one name")
        if self.grow:
            if not (isinstance(self.branching, numbers.Integral) and self.branching >= 2):
                raise ValueError(f"with grow=True, branching must be an int >= 2 (children per split), got {self.branching!r}")
            if self.fit_method != "em":
                raise ValueError("grow=True fits every candidate tree by EM; use fit_method='em' (or grow=False)")
        else:
            as_branching(self.depth, self.branching)

    def _fit_targets(self, y, w):
        self._n_positive_rows = int((np.asarray(w) > 0).sum())  # for the size check before building
        return super()._fit_targets(y, w)

    def _check_leaves(self, levels, n_features: int) -> None:
        """Refuse, before anything is built, a tree with more leaves than the data can support.

        Every leaf needs a row of its own, and (unpenalised) every leaf has at least one free
        parameter and the gates at least one per leaf but one: ``2 L - 1`` parameters at least.
        The exact count is checked after building (``_check_size``); this bound only keeps a
        hopeless tree (depth 18 or 30) from being built at all.
        """
        n_eff = getattr(self, "_n_positive_rows", None)
        if n_eff is None:
            return
        leaves = int(np.prod(levels, dtype=object))
        at_least = leaves if self.alpha > 0 else 2 * leaves - 1
        if at_least > n_eff:
            raise ValueError(
                self._too_large_text(f"{leaves} leaves ({len(levels)} level(s) of gates)", n_features, f"at least {at_least}", n_eff)
            )

    # ------------------------------------------------------------ building
    def _factories(self, de: int, y_info, dtype, gen):
        def leaves(k):
            return self._build_experts(de, k, y_info, dtype, gen)

        def gate(d, k):
            return self._build_gate(d, k, dtype, gen)

        return leaves, gate

    def _n_extras(self) -> int:
        """Trailing columns of the model's x after X's own: the per-row extras (offset, trials)."""
        return len(getattr(self, "extras_", ()))

    def build_model(self, n_features, y_info, dtype, generator):
        """A new tree of ``depth`` levels and ``branching`` children (a single leaf when ``grow``).

        The model's x is X's ``n_features`` columns, then the extras (offset, trials): every gate,
        at any depth, sees ``gate_features`` (never the extras); inner nodes pass every column
        down, and the leaves see ``expert_features`` (possibly none: intercept-only leaves) and
        then the extras (the columns of :meth:`MoERegressor._layout`).
        """
        gcols, ecols, de, _ = self._layout(n_features)
        leaves, gate = self._factories(de, y_info, dtype, generator)
        if self.grow:
            depth, branching = 1, 1  # a single leaf: growth decides the rest
        elif isinstance(self.branching, numbers.Integral):
            depth, branching = self.depth, self.branching
        else:
            depth, branching = self.depth, tuple(self.branching)
        self._check_leaves(as_branching(depth, branching), n_features)
        pt = None if self.prune_threshold is None else float(self.prune_threshold)
        return build_tree(
            n_features + self._n_extras(), depth, branching, leaf=leaves, gate=gate, dtype=dtype, gate_features=gcols,
            expert_features=ecols, prune_threshold=pt,
        )

    # ------------------------------------------------------------- fitting
    def _too_large(self, model, n_eff, n_par, n_features):
        shape = f"{n_leaves(model)} leaves ({tree_depth(model)} level(s) of gates)"
        return self._too_large_text(shape, n_features, str(n_par), n_eff)

    def _too_large_text(self, shape: str, n_features: int, n_par: str, n_eff: int) -> str:
        ridge = "" if self.alpha > 0 else ", or a ridge penalty alpha > 0"
        return (
            f"the tree is larger than the data supports: {shape} on {n_features} feature(s) have {n_par} free "
            f"parameters, but got {n_eff} sample(s) with positive weight; use a smaller depth or branching, "
            "grow=True (the tree then grows only as far as held-out likelihood rises), fewer features "
            f"(gate_features / expert_features), more data{ridge}"
        )

    def _train(self, model, x, y, w, seed, rng, generator):
        x, e = self._rescaled(model, x)
        start = self._warm_init(model, e)  # warm_start=True: from the fitted model_ (init None)
        return self._unscaled(self._train_tree(model, x, y, w, seed, rng, generator, start), e)

    def _train_tree(self, model, x, y, w, seed, rng, generator, start=None):
        self._check_size(model, w, x.shape[1] - self._n_extras())
        # censored rows ([y, lower, upper] with infinite limits) and missing coordinates of y reach the leaves
        context = incomplete_targets() if bool(y.is_floating_point() and not torch.isfinite(y).all()) else nullcontext()
        with context:
            return self._train_tree_on(model, x, y, w, seed, rng, generator, start)

    def _train_tree_on(self, model, x, y, w, seed, rng, generator, start=None):
        """Grow or fit the tree; ``start``: ``(init, n_init)`` (default the estimator's; ``(None, 1)`` warm)."""
        init, n_init = (self.init, int(self.n_init)) if start is None else start
        self.grow_result_ = None
        if self.grow:
            _, gate = self._factories(0, None, torch_dtype(self.dtype), generator)
            g = grow_tree(
                model, x, y, w, branching=int(self.branching), gate=gate, max_leaves=int(self.max_leaves),
                max_depth=None if self.depth is None else int(self.depth),
                validation_fraction=float(self.validation_fraction), min_gain=float(self.min_gain),
                max_iter=int(self.max_iter), tol=float(self.tol), init=self.init, random_state=seed,
                verbose=int(self.verbose),
            )
            self.grow_result_ = g
            return g.fit_result
        if self.fit_method == "em":
            pt = 0.0 if self.prune_threshold is None else float(self.prune_threshold)
            return fit_tree_em(
                model, x, y, w, init=init, n_init=n_init, random_state=seed,
                max_iter=int(self.max_iter), tol=float(self.tol), prune_threshold=pt, verbose=int(self.verbose),
            )

        def first(m, s):
            init_tree(m, x, y, w, init=init, random_state=s)

        return self._gradient_restarts(model, x, y, w, rng, init=None, start=None if init is None else first)

    def _set_model_attributes(self, result) -> None:
        self.n_leaves_ = n_leaves(self.model_)
        self.n_experts_ = self.n_leaves_
        self.depth_ = tree_depth(self.model_)

    # ---------------------------------------------------------- model files
    def model_structure(self) -> dict:
        """As the flat estimator's, plus the shape of the (possibly pruned or grown) tree."""
        out = super().model_structure()
        out["tree"] = _tree_spec(self.model_)
        return out

    def rebuild_model(self, structure: dict) -> MixtureOfExperts:
        """Rebuild the stored tree node by node (it may have been pruned or grown), with the estimator's factories."""
        dtype = torch_dtype(self.dtype)
        gen = torch.Generator().manual_seed(0)  # initial values are overwritten by the stored tensors
        y_info = structure.get("y_info")

        n_extras = self._n_extras()

        def cols(v, d, what):
            if v is None:
                return None
            if not (isinstance(v, list) and (v or what == "expert_features")
                    and all(isinstance(i, int) and 0 <= i < d for i in v)):
                raise ValueError(f"bad {what} {v!r} in the tree")
            return v

        def build(spec, d_in, depth):
            if not isinstance(spec, dict) or depth > 64:
                raise ValueError("bad tree description")
            k = spec.get("k")
            if not (isinstance(k, int) and 1 <= k <= 4096):
                raise ValueError("bad number of children in the tree")
            gf = cols(spec.get("gate_features"), d_in, "gate_features")
            ef = cols(spec.get("expert_features"), d_in, "expert_features")
            dg = d_in if gf is None else len(gf)
            de = d_in if ef is None else len(ef)  # a child node's input width
            dl = de - n_extras  # a leaf's features: its inputs less the extras (the leaf reads them itself)
            if dl < 0:
                raise ValueError("bad expert_features in the tree: fewer columns than the extras")
            gate = ConstantGate(k, dtype=dtype) if spec.get("gate") == "ConstantGate" else self._build_gate(dg, k, dtype, gen)
            ch = spec.get("children")
            if ch == "stacked":
                experts = self._build_named_experts(dl, k, y_info, dtype, gen)
            elif isinstance(ch, list) and len(ch) == k:
                experts = [build(c, de, depth + 1) if isinstance(c, dict)
                           else self._build_named_experts(dl, None, y_info, dtype, gen) for c in ch]
            else:
                raise ValueError("bad children in the tree")
            pt = spec.get("prune_threshold")
            return MixtureOfExperts(gate, experts, gate_features=gf, expert_features=ef,
                                    prune_threshold=None if pt is None else float(pt))

        return build(structure.get("tree"), int(self.n_features_in_) + n_extras, 0)

    # --------------------------------------------------------- tree views
    def predict_distribution(self, X, *, offset=None, trials=None):
        """The predictive mixture p(y | x) over the L leaves, weighted by the path probabilities.

        ``offset``, ``trials``: each row's offset and number of trials, for a model fitted with
        them (the leaves read them; the gates never do).

        Returns
        -------
        MixtureDistribution
            Batch shape (n,), L components in the order of
            :func:`~moekit.tree.tree_leaves`.
        """
        x = self._model_x(X, offset, trials)
        with torch.no_grad():
            return leaf_mixture(self.model_, x)

    def _gate_x(self, X, offset=None, trials=None) -> torch.Tensor:
        """The model's x for the gates alone: the extras (checked where given) or placeholders the gates never read."""
        x = self._x(X)
        if offset is not None or trials is not None:
            self._extra_columns(x.shape[0], offset, trials)  # checked, as for a prediction
        n_extras = self._n_extras()
        if not n_extras:
            return x
        fill = self._origin_x()[:, x.shape[1]:].to(device=x.device, dtype=x.dtype)  # offset 0, one trial
        return torch.cat([x, fill.expand(x.shape[0], n_extras)], dim=1)

    def predict_gate(self, X, *, offset=None, trials=None) -> np.ndarray:
        """Path probabilities of the leaves (the product of gates along each path): (n, L), rows summing to one.

        The gates never see offsets or trials: they are not needed here (checked where given).
        """
        x = self._gate_x(X, offset, trials)
        with torch.no_grad():
            return path_probabilities(self.model_, x).cpu().numpy()

    def responsibilities(self, X, y, *, offset=None, trials=None, lower=None, upper=None) -> np.ndarray:
        """Path posteriors P(leaf | x, y): (n, L), rows summing to one.

        ``offset``, ``trials``, ``lower``, ``upper``: as for ``score_samples``.
        """
        x = self._model_x(X, offset, trials)
        yt = self._target_tensor(y, x.shape[0], lower, upper)
        with torch.no_grad():
            return path_posteriors(self.model_, x, yt).cpu().numpy()

    def predict_node_gates(self, X, *, offset=None, trials=None) -> dict:
        """Every inner node's own gate probabilities: ``{path: (n, K_node) array}``, the root at ``()``."""
        x = self._gate_x(X, offset, trials)
        with torch.no_grad():
            return {p: g.cpu().numpy() for p, g in node_gate_probabilities(self.model_, x).items()}

    def render_tree(self, X=None, y=None, sample_weight=None, *, offset=None, trials=None, lower=None,
                    upper=None) -> str:
        """A text picture of the fitted tree; with X (and y), the share of the data (posterior weight) per node and leaf.

        ``offset``, ``trials``, ``lower``, ``upper``: as for ``score_samples`` (with y; without y
        the shares are path probabilities, which need no extras).
        """
        check_is_fitted(self, "model_")
        if X is None:
            return render_tree(self.model_, None, None, sample_weight)
        if y is None:
            return render_tree(self.model_, self._gate_x(X, offset, trials), None, sample_weight)
        x = self._model_x(X, offset, trials)
        yt = self._target_tensor(y, x.shape[0], lower, upper)
        return render_tree(self.model_, x, yt, sample_weight)


def _tree_spec(node) -> dict:
    """The shape of a (possibly pruned or grown) tree of mixtures, as JSON values."""
    spec = {"k": int(node.n_experts), "gate": type(node.gate).__name__, "gate_features": node.gate_features,
            "expert_features": node.expert_features, "prune_threshold": getattr(node, "prune_threshold", None)}
    if node.is_stacked:
        spec["children"] = "stacked"
    else:
        spec["children"] = [_tree_spec(c) if isinstance(c, MixtureOfExperts) else "leaf" for c in node.experts]
    return spec


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
    expert, gate, fit_method, max_iter, tol, n_init, random_state, device, dtype, verbose,
    gate_features, expert_features, hidden_layer_sizes, learning_rate, batch_size, alpha,
    optimizer, formula, gate_formula, compute_se, missing, warm_start, and for the regressor covariance and var_floor
        As for the flat estimator (here per leaf and per gate; gate_formula
        is every gate's).  The regressor's leaves are "linear", "poisson",
        "binomial", "gamma", "negative_binomial", "student_t" or "mlp" (one
        family for every leaf; lists of families and shared features are
        options of the flat estimators only).  ``missing``: rows with a
        missing input (NaN in X) are an error naming them ("error") or are
        dropped with a warning ("drop", counted in ``n_rows_dropped_``).
        ``expert_features=[]`` gives intercept-only leaves under the tree of
        gates.  The regressor's ``fit`` takes ``offset``, ``trials``,
        ``lower`` and ``upper`` as :class:`~moekit.MoERegressor`'s does
        (trailing columns of the model's x that only the leaves read, and
        censored Gaussian leaves), and a vector y may hold NaN coordinates
        under linear leaves (marginalised exactly).  ``covariance="tied*"``
        ties the noise of the leaves under each gate (one stack), not across
        the whole tree.
"""


@storable
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
    extras_, extras_required_, censored_
        The per-row extras the leaves read (trailing columns of the model's
        x: ``("offset",)``, ``("trials",)``, ...), those that predictions
        need, and whether the leaves are censored Gaussian (Tobit) leaves,
        as for :class:`~moekit.MoERegressor`.
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
    >>> from moekit import HMERegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(-1, 1, size=(300, 1))
    >>> y = np.abs(X[:, 0] - np.round(X[:, 0])) + 0.02 * rng.normal(size=300)   # a zigzag: 4 lines
    >>> hme = HMERegressor(depth=2, branching=2, init="kmeans_x", random_state=0).fit(X, y)
    >>> hme.n_leaves_, hme.predict_gate(X[:2]).shape
    (4, (2, 4))
    >>> bool(np.allclose(hme.predict_gate(X).sum(1), 1))
    True

    Poisson leaves with a log-exposure offset (read by the leaves, never by the gates):

    >>> exposure = rng.uniform(0.5, 2.0, size=300)
    >>> counts = rng.poisson(np.exp(0.5 + X[:, 0]) * exposure)
    >>> pois = HMERegressor(depth=1, expert="poisson", random_state=0, tol=1e-5).fit(
    ...     X, counts, offset=np.log(exposure))
    >>> pois.extras_, pois.predict(X[:2], offset=np.log([1.0, 1.0])).shape
    (('offset',), (2,))
    """

    _accepts_extras = frozenset({"offset", "trials", "lower", "upper"})  # read by the leaves, never by the gates
    _parameter_specs = {"expert": expert_names("linear", "poisson", "binomial", "gamma", "negative_binomial", "student_t",
                                               "mlp"),
                        "gate": GATES, "init": _INIT,
                        "validation_fraction": Real(0.0, 1.0, low_open=True, high_open=True)}

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
        formula=None,
        gate_formula=None,
        compute_se="auto",
        missing="error",
        warm_start=False,
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
        self.formula = formula
        self.gate_formula = gate_formula
        self.compute_se = compute_se
        self.validation_fraction = validation_fraction
        self.min_gain = min_gain
        self.prune_threshold = prune_threshold
        self.missing = missing
        self.warm_start = warm_start


@storable
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
    >>> from moekit import HMEClassifier
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

    _parameter_specs = {"expert": expert_names("logistic", "mlp"), "gate": GATES, "init": _INIT,
                        "validation_fraction": Real(0.0, 1.0, low_open=True, high_open=True)}
    _removed_parameters = ("covariance", "var_floor")  # accepted until 0.2.0 and never used

    def __init__(
        self,
        depth=2,
        branching=2,
        grow=False,
        max_leaves=16,
        expert="logistic",
        gate="softmax",
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
        hidden_layer_sizes=(32,),
        learning_rate=None,
        batch_size=256,
        alpha=0.0,
        optimizer="adam",
        validation_fraction=0.2,
        min_gain=1e-3,
        prune_threshold=1e-4,
        formula=None,
        gate_formula=None,
        compute_se="auto",
        missing="error",
        warm_start=False,
    ):
        self.depth = depth
        self.branching = branching
        self.grow = grow
        self.max_leaves = max_leaves
        self.expert = expert
        self.gate = gate
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
        self.hidden_layer_sizes = hidden_layer_sizes
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.alpha = alpha
        self.optimizer = optimizer
        self.formula = formula
        self.gate_formula = gate_formula
        self.compute_se = compute_se
        self.validation_fraction = validation_fraction
        self.min_gain = min_gain
        self.prune_threshold = prune_threshold
        self.missing = missing
        self.warm_start = warm_start
