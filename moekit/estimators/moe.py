"""scikit-learn front: :class:`MoERegressor` and :class:`MoEClassifier`.

A thin layer over the PyTorch models and the training functions: estimators
store their arguments untouched in ``__init__``; ``fit`` validates the data,
builds a :class:`~moekit.MixtureOfExperts`, and calls :func:`~moekit.fit_em`
or :func:`~moekit.fit_gradient`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
from contextlib import nullcontext

import numpy as np
import torch
from sklearn.base import ClassifierMixin, RegressorMixin, clone, is_classifier, is_regressor

from .._linalg import ldexp
from .._validation import (
    OneOf,
    check_not_constant,
    check_representable,
    check_scale,
    incomplete_targets,
    model_dtype,
    torch_dtype,
    variance_floor,
)
from ..experts import (
    LogisticExpert,
    MLPExpert,
    SklearnExpert,
    SoftmaxExpert,
)
from ..gates import ConstantGate, Gate, MLPGate, SoftmaxGate
from ..mixture import MixtureOfExperts
from ..training.em import fit_em
from ..training.passes import is_source
from ..training.gradient import fit_gradient
from ..training.restarts import best_of
from .base import (
    ClassifierTargets,
    ConditionalMixtureEstimator,
    RegressorTargets,
    storable,
)
from .families import (
    COUNT_FAMILIES,
    FAMILY_CLASSES,
    REGRESSOR_FAMILIES,
    RegressionFamilies,
    check_family_targets,
    expert_lists,
    family_of,
    observed_variance,
    point_mass_never_seen,
)
from .online import OnlineClassifierMixin, OnlineRegressorMixin
from .streaming import StreamingMixin
from .summary import SummaryMixin

__all__ = ["MoERegressor", "MoEClassifier"]

GATES = OneOf("softmax", "mlp", "constant", other="a moekit Gate instance", instances=(Gate,))


def expert_names(*names) -> OneOf:
    """The ``expert`` parameter: one of these family names, or an instance (checked when the model is built)."""
    return OneOf(*names, other="an expert instance", instances=(object,))


class _MoEBase(StreamingMixin, SummaryMixin, ConditionalMixtureEstimator):
    """Model building, training and gate views shared by the MoE estimators (and the HME ones)."""

    # ------------------------------------------------------------ building
    def _feature_index(self, spec, name: str, n_features: int):
        """Resolve ``gate_features`` / ``expert_features`` (checked by their spec) against X's columns."""
        if spec is None:
            design = getattr(self, "formula_design_", None)  # a model written as formulas chose its columns
            return None if design is None else [int(i) for i in design[name]]
        items = [spec] if isinstance(spec, (str, numbers.Integral)) else list(spec)
        if not items:
            return []
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
            else:
                if not -n_features <= it < n_features:
                    raise ValueError(f"{name}: column index {it} is out of range for X with {n_features} columns")
                out.append(int(it) % n_features)
        return out

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

    def _family_names(self, k: int | None, names=None) -> list | None:
        """The family of each of the k experts (one name for k=None), or None for an expert instance."""
        if names is not None:
            return list(names)
        if isinstance(self.expert, str):
            return [self.expert] * (1 if k is None else int(k))
        if isinstance(self.expert, (list, tuple)):
            return list(self.expert)
        return None

    def _build_experts(self, d: int, k, y_info, dtype, gen, shared=(), names=None, as_list=False):
        """K experts (one unstacked expert for ``k=None``): by family name(s), or copies of the given instance.

        One family for all K: one stacked module; a list of different families: K single experts
        (``as_list``: single experts whatever the families, as a model file's list of survivors).
        """
        fams = self._family_names(k, names)
        if fams is not None:
            if k is None:
                return self._family_expert(fams[0], d, None, y_info, dtype, gen, shared)
            if len(set(fams)) == 1 and not as_list:
                return self._family_expert(fams[0], d, len(fams), y_info, dtype, gen, shared)
            if shared:
                raise ValueError(f"shared_features ties coefficients across experts of one family, but expert={fams!r} "
                                 "mixes families; use one family, or leave shared_features=None")
            return [self._family_expert(f, d, None, y_info, dtype, gen) for f in fams]
        inst = self.expert
        if isinstance(inst, torch.nn.Module):
            if getattr(inst, "stacked", False):
                if inst.n_experts != k:
                    raise ValueError(f"the stacked expert has n_experts={inst.n_experts} but n_experts={k}")
                return copy.deepcopy(inst).to(dtype)
            return [copy.deepcopy(inst).to(dtype) for _ in range(k)]
        if hasattr(inst, "fit") and hasattr(inst, "predict") and is_regressor(inst) and not is_classifier(self):
            return [SklearnExpert(clone(inst), d, var_floor=self.var_floor) for _ in range(k)]
        raise TypeError(
            "expert must be a name, a moekit expert module or (for regressors) a scikit-learn regressor "
            f"instance, got {type(inst).__name__}"
        )

    def _build_named_experts(self, d, k, y_info, dtype, gen):
        """Experts of the one family ``expert`` names (the leaves of a hierarchy)."""
        return self._family_expert(self.expert, d, k, y_info, dtype, gen)

    def _family_expert(self, name, d, k, y_info, dtype, gen, shared=()):  # pragma: no cover - every estimator overrides it
        """One family's expert module: k stacked experts (one single expert for k=None) on d features."""
        raise NotImplementedError

    def _layout(self, d: int):
        """Columns of the model's x for the gate and the experts: ``(gate_cols, expert_cols, n_expert_features, shared)``.

        The model's x is X's d columns, then the extras (``extras_``: offset, trials).  The gate
        sees ``gate_features`` (never the extras); the experts see ``expert_features`` (all of X's
        columns by default) less ``shared_features``, then the shared features (whose
        coefficients are common to all experts, positions ``shared`` among the expert's
        features), then the extras.  Without extras and shared features the selections are
        those of the parameters (None: all columns), as they always were.
        """
        gcols = self._feature_index(self.gate_features, "gate_features", d)
        own = self._feature_index(self.expert_features, "expert_features", d)
        spec = getattr(self, "shared_features", None)
        shared = [] if spec is None else self._feature_index(spec, "shared_features", d)
        extras = tuple(getattr(self, "extras_", ()))
        if not extras and not shared:
            return gcols, own, (d if own is None else len(own)), []
        if len(set(shared)) != len(shared):
            raise ValueError(f"shared_features names a column twice: {spec!r}")
        if shared and own:  # an explicit, non-empty list of expert inputs: shared features must be among them
            out = [c for c in shared if c not in own]
            if out:
                names = getattr(self, "feature_names_in_", None)
                col = names[out[0]] if names is not None else out[0]
                gate_only = gcols is not None and out[0] in gcols
                raise ValueError(
                    f"shared_features: column {col!r} is {'a gate-only feature (in gate_features, not in expert_features)' if gate_only else 'not in expert_features'}; "
                    "shared coefficients belong to expert inputs: add it to expert_features, or leave it out of shared_features"
                )
        base = list(range(d)) if own is None else list(own)
        feats = [c for c in base if c not in shared] + list(shared)
        n_shared = len(shared)
        shared_pos = list(range(len(feats) - n_shared, len(feats)))
        ecols = feats + [d + i for i in range(len(extras))]
        if gcols is None and extras:
            gcols = list(range(d))
        return gcols, ecols, len(feats), shared_pos

    def _build_flat(self, d: int, k: int, y_info, dtype, gen, names=None, as_list=False) -> MixtureOfExperts:
        gcols, ecols, de, shared = self._layout(d)
        dg = d if gcols is None else len(gcols)
        gate = self._build_gate(dg, k, dtype, gen)
        experts = self._build_experts(de, k, y_info, dtype, gen, shared=shared, names=names, as_list=as_list)
        return MixtureOfExperts(gate, experts, gate_features=gcols, expert_features=ecols)

    def build_model(self, n_features, y_info, dtype, generator) -> MixtureOfExperts:
        """A new :class:`~moekit.MixtureOfExperts` of ``n_experts`` experts on ``n_features`` inputs."""
        return self._build_flat(n_features, int(self.n_experts), y_info, dtype, generator)

    def _check_param_combinations(self) -> None:
        fams = self.expert if isinstance(self.expert, (list, tuple)) else None
        if fams is not None and len(fams) != int(self.n_experts):
            raise ValueError(f"expert lists {len(fams)} families but n_experts={self.n_experts}; give one family per "
                             "expert (or one name for all)")

    # ------------------------------------------------------------- fitting
    def _check_size(self, model, w, n_features: int) -> None:
        """Refuse a model with more free parameters than rows of positive weight (unless ridge-penalised).

        ``w``: the row weights, or the number of rows of positive weight (a streamed source's).
        """
        n_eff = int(w) if isinstance(w, numbers.Integral) else int((w > 0).sum())
        try:
            n_par = model.n_parameters()
        except (NotImplementedError, ValueError, AttributeError):
            n_par = 0  # e.g. an unfitted scikit-learn expert: its size is known only after fitting
        if n_eff < n_par and self.alpha == 0:
            raise ValueError(self._too_large(model, n_eff, n_par, n_features))

    def _too_large(self, model, n_eff: int, n_par: int, n_features: int) -> str:
        return (
            f"got {n_eff} sample(s) with positive weight, but a model with n_experts={self.n_experts} "
            f"on {n_features} feature(s) has {n_par} free parameters; use fewer experts, fewer features "
            "(gate_features / expert_features), more data, or a ridge penalty alpha > 0"
        )

    def _rescaled(self, model, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """X in the supported range: as given (power 0), or divided by the power of two ``2**e`` that brings it there.

        Data outside :func:`~moekit._validation.supported_magnitudes` is rescaled (exactly: a power
        of two) when the model can fold the rescaling back into its parameters afterwards (linear
        gates and experts, no ridge penalty, whose size would change with the units of X) and when
        one power brings every column into the range; otherwise the range error stands.
        """
        n_extra = len(getattr(self, "extras_", ()))
        if n_extra:  # the extras (offset, trials) are never rescaled: only X's own columns are
            xs, e = self._rescaled_features(model, x[:, : x.shape[1] - n_extra])
            return torch.cat([xs, x[:, x.shape[1] - n_extra :]], dim=1), e
        return self._rescaled_features(model, x)

    def _rescaled_features(self, model, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """:meth:`_rescaled` on X's own columns."""
        try:
            check_scale(x, "X", columns=getattr(self, "feature_names_in_", None))  # named as the user knows it
            return x, 0
        except ValueError as err:
            refused = err
        if not bool(torch.isfinite(x).all()):  # beyond the model's dtype: the values are lost
            raise refused
        why = None
        if not getattr(model, "absorbs_input_scale", False):
            why = "its gate or experts use X other than linearly (e.g. 'mlp' or a scikit-learn expert)"
        elif self.alpha != 0:
            why = "alpha > 0 (the ridge penalty's size depends on X's units)"
        e = math.frexp(float(x.abs().max()))[1]
        xs = ldexp(x, -e)
        if why is None:
            try:
                check_scale(xs, "X")
                return xs, e
            except ValueError:
                why = "its columns differ in magnitude by more than the range itself"
        raise ValueError(f"{refused}. (X is rescaled internally only where that is exact and undoable; here {why}.)") from None

    def _unscaled(self, result, e: int):
        """The fitted model answering in X's own units: the rescaling by ``2**-e`` folded into its slopes."""
        if e:
            model = result.model
            model.absorb_input_scale_(e)
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                raise ValueError(
                    f"X was multiplied internally by 2**{-e} to bring it into the supported range, but the fitted "
                    "coefficients in X's units (slopes of about y's scale over X's) lie beyond the range of "
                    f"{str(model_dtype(model)).replace('torch.', '')}; rescale X (or y) yourself and keep the model "
                    "in those units"
                )
        return result

    def _train(self, model, x, y, w, seed, rng, generator):
        x, e = self._rescaled(model, x)
        init, n_init = self._warm_init(model, e)  # warm_start=True: from the fitted model_ (init None)
        self._check_size(model, w, x.shape[1] - len(getattr(self, "extras_", ())))
        # censored rows ([y, lower, upper] with infinite limits) and missing coordinates of y reach the experts
        context = incomplete_targets() if bool(y.is_floating_point() and not torch.isfinite(y).all()) else nullcontext()
        with context:
            if self.fit_method == "em":
                result = fit_em(
                    model, x, y, w, max_iter=int(self.max_iter), tol=float(self.tol), n_init=n_init,
                    init=init, random_state=seed, verbose=int(self.verbose),
                )
            else:
                result = self._gradient_restarts(model, x, y, w, rng, init=init)
        return self._unscaled(result, e)

    def _gradient_restarts(self, model, x, y, w, rng, init, start=None):
        """``n_init`` gradient fits through :func:`~moekit.training.restarts.best_of`, the best mean kept.

        ``start(model, seed)`` initialises each start first (then ``init`` is None).
        """
        starts = []

        def run_one(m, s):
            if start is not None:
                start(m, s)
            r = fit_gradient(
                m, x, y, w, optimizer=self.optimizer, learning_rate=self.learning_rate, max_epochs=int(self.max_iter),
                batch_size=int(self.batch_size), tol=float(self.tol), init=init,
                early_stopping=self.optimizer == "adam", random_state=s, verbose=int(self.verbose),
                process_group=self.__dict__.get("_process_group"),  # fit(source, process_group=...): DDP
            )
            starts.append(r.init_mean_log_likelihoods[0])
            return r

        i, res, _ = best_of(model, int(self.n_init), rng, run_one, score=lambda r: r.mean_log_likelihood)
        return dataclasses.replace(res, model=model, init_mean_log_likelihoods=starts, best_init=i)

    def _set_model_attributes(self, result) -> None:
        self.n_experts_ = self.model_.n_experts

    # ---------------------------------------------------------- model files
    def model_structure(self) -> dict:
        """The fitted model's number of experts (after pruning), kind of y, and the families of a list of experts."""
        if is_classifier(self):
            y_info = int(len(self.classes_))
        else:
            ev = self.target_shape()
            y_info = None if not ev else int(ev[0])
        out = {"n_experts": int(self.model_.n_experts), "y_info": y_info}
        if isinstance(self.expert, (list, tuple)) and not self.model_.is_stacked:
            out["experts"] = [family_of(e) for e in self.model_.experts]  # the families that survived pruning
        return out

    def rebuild_model(self, structure: dict) -> MixtureOfExperts:
        """An unfitted model of the stored number of experts (the fitted one may have been pruned)."""
        gen = torch.Generator().manual_seed(0)  # initial values are overwritten by the stored tensors
        dtype = torch_dtype(self.dtype)
        names = structure.get("experts")
        as_list = names is not None
        if names is not None:
            allowed = set(FAMILY_CLASSES) - {"censored"}
            if not (isinstance(names, list) and len(names) == int(structure["n_experts"]) and set(names) <= allowed):
                raise ValueError(f"the stored expert families {names!r} are not {structure['n_experts']} family names")
        if names is None and isinstance(self.expert, (list, tuple)) and len(set(self.expert)) == 1:
            names = [self.expert[0]] * int(structure["n_experts"])
        return self._build_flat(int(self.n_features_in_), int(structure["n_experts"]), structure["y_info"], dtype, gen,
                                names=names, as_list=as_list)

    def _x(self, X) -> torch.Tensor:
        x = super()._x(X)
        check_representable(x, "X")  # finite X beyond a float32 model's range: an error, not NaN predictions
        return x

    # ---------------------------------------------------------- gate views
    def predict_gate(self, X, *, offset=None, trials=None) -> np.ndarray:
        """Mixing weights g(x): (n, K), rows summing to one.

        The gate never sees offsets or trials: they are not needed here (checked where given).
        """
        x = self._x(X)
        if offset is not None or trials is not None:
            self._extra_columns(x.shape[0], offset, trials)
        with torch.no_grad():
            return self.model_.log_gate(x).exp().cpu().numpy()

    def responsibilities(self, X, y, *, offset=None, trials=None, lower=None, upper=None) -> np.ndarray:
        """Posterior probability of each expert given x and y: (n, K).

        ``offset``, ``trials``, ``lower``, ``upper``: as for ``score_samples``.
        """
        x = self._model_x(X, offset, trials)
        yt = self._target_tensor(y, x.shape[0], lower, upper)
        with torch.no_grad():
            return self.model_.log_responsibilities(x, yt).exp().cpu().numpy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


@storable
class MoERegressor(OnlineRegressorMixin, RegressionFamilies, RegressorTargets, RegressorMixin, _MoEBase):
    """Mixture-of-experts regression (scikit-learn estimator).

    ``p(y | x) = sum_k g_k(x) p_k(y | x)`` with a softmax (or constant, or
    neural) gate and K experts, fitted by EM (default) or by gradient.

    Parameters
    ----------
    n_experts : int, default=2
        K.
    expert : str, list of str or instance, default="linear"
        Expert family: "linear", "poisson", "binomial" (successes out of
        ``trials``, logit link), "gamma" (log link), "negative_binomial"
        (NB2, log link), "point_mass" (y equal to ``point_mass_value``),
        "student_t" or "mlp"; or a list of K of them, one per expert (e.g.
        ``["point_mass", "poisson"]``: a zero-inflated Poisson whose
        inflation depends on x through the gate).  An instance may be a
        moekit expert module (single: copied K times; stacked with
        ``n_experts=K``: used as is) or any scikit-learn regressor
        supporting ``sample_weight`` (refitted by weighted least squares in
        every M-step).  ``expert="linear"`` fitted with ``lower``/``upper``
        gives censored Gaussian (Tobit) experts.
    gate : {"softmax", "mlp", "constant"} or Gate, default="softmax"
    covariance : {"full", "diag", "spherical", "tied", "tied_diag", "tied_spherical"}, default="full"
        Noise covariance of linear-Gaussian experts for vector y; the
        "tied" forms are one covariance (full, diagonal, spherical) for all
        experts (flexmix's ``varFix``); for a scalar y any "tied" form is
        one noise variance for all experts.
    fit_method : {"em", "gradient"}, default="em"
    max_iter : int, default=200
        EM iterations or gradient epochs.
    tol : float, default=1e-6
        Convergence threshold on the mean per-sample log-likelihood.
    n_init : int, default=1
        Starts; the best final log-likelihood is kept.
    init : {"auto", "random", "kmeans"} or array (n, K), default="auto"
        "auto": EM races three starts and keeps the best (a subset start, one
        expert on a few random rows grown against a broad one, which finds
        tight components such as tonedata's 145.650 maximum; a random
        partition; k-means), see :func:`moekit.training.starts.small_em`.
        Experts other than linear-Gaussian and Student-t, and gradient
        training, take one random partition.  "random": every row to a random
        expert (flexmix's default start: one short start, which may stop at
        a lower maximum, e.g. tonedata's classic 142.848); "kmeans": k-means
        on the standardised joint [X, y].  With EM, on more than 20,000 rows
        the start (the race included) is made on a seeded sample of 20,000
        rows and EM continues from it on every row (:func:`~moekit.fit_em`'s
        ``init_sample_rows``).
    random_state : int, numpy Generator or RandomState, or None
    device : str, default="cpu"
        "cpu", "cuda", "cuda:N" or "mps" (one that this machine has).
    dtype : {"float64", "float32"}, default="float64"
    verbose : int, default=0
    gate_features, expert_features : list of int or str, optional
        Columns used by the gate and by the experts (names need a DataFrame).
    var_floor : float, default=1e-6
        Lower bound on noise variances, relative to the variance of y (the
        absolute floor is ``var_floor * var(y)``, and at least the smallest
        normal number of the dtype), so that no expert can collapse onto a
        few points.  A constant y (on the rows with positive weight) is
        refused with a ``ValueError``: its likelihood would only reflect this
        floor.
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
    formula : str, optional
        The experts' formula over a pandas DataFrame, as in R (formulaic):
        ``"yn ~ x + I(x**2)"``, with factors (``C(g)`` or text columns),
        interactions (``x:g``) and transformations (``np.log(x)``).  Its left
        side names the target: then ``fit(data)`` takes the DataFrame alone,
        predictions take DataFrames, and coefficients are named as formulaic
        names them (``summary()``).  Intercepts are the model's own.
    gate_formula : str, optional
        The gate's one-sided formula (``"~ x"``; default: the experts' terms);
        needs ``formula``.
    compute_se : {"auto", True, False}, default="auto"
        Compute the observed information and the sandwich at the end of
        ``fit`` (kept in ``inference_`` and in model files), so that
        ``summary()`` needs no data.  It costs about two gradient passes over
        the data per free parameter (on 10,000 rows with 10 inputs and 8
        experts, 173 parameters, about half a fit more), so "auto" computes
        it where rows times parameters are at most 5e6 (statistical models
        of tables) and skips it above; then ``summary(X=..., y=...)``
        computes it from the data.
    shared_features : list of int or str, optional
        Expert inputs whose coefficient is common to all experts (flexmix's
        ``FLXMRglmfix(fixed=)``), for "linear" and the GLM families; they are
        taken out of each expert's own coefficients.  With
        ``expert_features=[]`` every expert is its intercept plus the shared
        slopes.  A column that is not an expert input (gate-only) or not in
        X is a ValueError.
    point_mass_value : float, default=0.0
        The value of "point_mass" experts; it must occur in y.
    missing : {"error", "drop"}, default="error"
        Rows with NaN in X (or in ``offset``/``trials``, or a missing target)
        raise a ValueError naming the first rows and columns ("error"), or
        are dropped with a warning ("drop"; ``n_rows_dropped_`` counts
        them).  NaN coordinates of a vector y are not missing rows for
        linear experts: they are marginalised exactly.  Predictions need
        every input of a row.
    warm_start : bool, default=False
        When True, ``fit`` on a fitted estimator starts from its ``model_``
        (no initialisation, one start) and continues EM (or gradient
        training) on the data given, arrays or a source: new data, or more
        iterations.  The data must have the same columns, classes and
        extras, and the parameters must build a model of the same structure
        (``n_experts``, ``expert``, ``gate``, features); otherwise a
        ValueError says what changed.  A fit whose experts were pruned
        continues with ``n_experts`` set to the surviving number.

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
    _var_floor_abs : float
        The absolute variance floor, ``var_floor`` times the weighted
        variance of y.
    n_features_in_ : int
    feature_names_in_ : ndarray, for DataFrames (and formulas)
    inference_ : dict
        With ``compute_se``: estimates, their covariances (observed
        information and sandwich) and notes, read by ``summary()``.
    formula_design_ : dict
        With ``formula``: the formulas, columns and factor levels.
    gate_coef_, expert_coef_ : pandas.DataFrame
        The gate's coefficients (against component 0) and the experts'
        coefficients and noise scales, named (see ``summary()``).
    extras_ : tuple of str
        The per-row columns the model's x holds after X's: "offset" (fitted
        with one), then "trials" (binomial experts; ones where ``fit`` had
        no trials).  The gate never sees them.
    extras_required_ : tuple of str
        Those given to ``fit``: predictions and scores need them again (a
        ValueError otherwise); trials not given default to one.
    censored_ : bool
        Fitted with ``lower``/``upper`` (censored Gaussian experts).
    n_rows_dropped_ : int
        Rows dropped for missing values (``missing="drop"``).

    Shapes
    ------
    X (n, d_x); y (n,) or (n, d_y); ``offset``, ``trials``, ``lower``,
    ``upper`` (n,); ``predict`` returns (n,) or (n, d_y);
    ``predict_gate`` and ``responsibilities`` (n, K); ``predict_quantiles``
    (n, len(q)); ``score_samples`` (n,).

    Notes
    -----
    Scales: EM forms squares of the data, so it works on columns whose
    magnitude (largest ``|value|``) lies between about 1.2e-150 and 3.3e150
    for float64 (8.9e-16 and 4.5e15 for float32), or that are all zeros
    (:func:`moekit._validation.supported_magnitudes`).  X outside that range
    is divided internally by a power of two (exact) and the fitted slopes
    multiplied back, so that predictions, likelihoods and coefficients stay
    in X's units, wherever X's columns fit the range together and the gate
    and experts are linear without a ridge penalty (``alpha=0``).  Otherwise,
    and for y outside the range, ``fit`` raises a ``ValueError`` that names
    the column, the range and the reason, instead of crashing inside the
    linear algebra or silently ignoring the column.

    Examples
    --------
    >>> from moekit import MoERegressor
    >>> from moekit.datasets import load_tonedata
    >>> d = load_tonedata()
    >>> est = MoERegressor(n_experts=2, random_state=0).fit(d.data, d.target)
    >>> est.predict_gate(d.data[:2]).shape
    (2, 2)
    >>> round(float(est.score_samples(d.data, d.target).sum()), 2)
    145.65

    A Poisson rate per unit exposure (an offset the gate never sees), and a zero-inflated Poisson:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(500, 1))
    >>> exposure = rng.uniform(1, 3, 500)
    >>> y = rng.poisson(exposure * np.exp(0.5 + 0.3 * X[:, 0])).astype(float)
    >>> est = MoERegressor(n_experts=1, expert="poisson").fit(X, y, offset=np.log(exposure))
    >>> est.predict(X[:2], offset=np.log(exposure[:2])).shape
    (2,)
    >>> zip_y = np.where(rng.random(500) < 0.3, 0.0, y)
    >>> zip_est = MoERegressor(n_experts=2, expert=["point_mass", "poisson"], random_state=0).fit(X, zip_y)
    >>> zip_est.predict_gate(X[:1]).shape
    (1, 2)
    """

    _parameter_specs = {"expert": expert_lists(*REGRESSOR_FAMILIES), "gate": GATES,
                        "init": OneOf("auto", "random", "kmeans", other="an (n, K) array", instances=(object,))}
    _accepts_extras = frozenset({"offset", "trials", "lower", "upper"})

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
        init="auto",
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
        formula=None,
        gate_formula=None,
        compute_se="auto",
        shared_features=None,
        point_mass_value=0.0,
        missing="error",
        warm_start=False,
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
        self.formula = formula
        self.gate_formula = gate_formula
        self.compute_se = compute_se
        self.shared_features = shared_features
        self.point_mass_value = point_mass_value
        self.missing = missing
        self.warm_start = warm_start

    def _fit_targets(self, y, w):
        fams = self._named_families()
        extras = getattr(self, "_fit_extras", {}) or {}
        seen = check_family_targets(fams, y, w, extras.get("trials"), getattr(self, "point_mass_value", None))
        if "point_mass" in fams and not seen:
            raise point_mass_never_seen(float(self.point_mass_value))
        dtype = torch_dtype(self.dtype)
        yf = np.array(y, dtype=np.float64)  # a copy: y may be read-only
        yf[~np.isfinite(yf)] = 0.0  # missing coordinates and interval-censored rows: scale of the observed values
        check_scale(torch.as_tensor(yf, device="cpu"), "y", dtype=dtype)
        if not fams or not set(fams) & set(COUNT_FAMILIES):
            # counts may all be equal (a rate); a continuous density of a constant may not
            check_not_constant(y, w, "y")
        # relative to the *weighted* variance of y, so that integer weights and repeated rows give
        # the same floor (and the same fit); never below the dtype's absolute floor
        var_y = observed_variance(y, w)
        self._var_floor_abs = variance_floor(self.var_floor, var_y if var_y > 0 else 1.0, dtype)
        yt, y_info = super()._fit_targets(y, w)
        if getattr(self, "censored_", False):
            y3 = np.column_stack([y, extras["lower"], extras["upper"]])
            yt = torch.as_tensor(y3, dtype=torch_dtype(self.dtype), device=self.device)
        return yt, y_info

    def predict(self, X, *, offset=None, trials=None) -> np.ndarray:
        """Conditional mean E[y | x]: (n,) or (n, d_y).

        ``X`` may be a source of batches (its offsets and trials are used), read batch by batch;
        ``iter_predict`` yields the batches' results one at a time.

        Raises
        ------
        ValueError
            Where the mean does not exist (a Student-t expert with df <= 1):
            use ``predict_quantiles(X, 0.5)`` (the median) instead.
        """
        if is_source(X):
            return self._predict_source("predict", X, offset=offset, trials=trials)
        mean = self.predict_distribution(X, offset=offset, trials=trials).mean.cpu().numpy()
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


@storable
class MoEClassifier(OnlineClassifierMixin, ClassifierTargets, ClassifierMixin, _MoEBase):
    """Mixture-of-experts classification (scikit-learn estimator).

    Experts are logistic (two classes) or softmax (more classes) regressions,
    or neural networks with a categorical head; the gate is as in
    :class:`MoERegressor`.  Parameters are those of :class:`MoERegressor`
    but ``covariance``, ``var_floor`` and ``point_mass_value`` (which class
    labels do not have), with ``expert`` in {"logistic", "mlp"}, a list of
    them (one per expert) or an expert module instance (``formula``,
    ``gate_formula``, ``compute_se``, ``missing``, ``warm_start`` and ``shared_features``
    included: with logistic experts, one coefficient per shared feature and
    free class, common to all experts, fitted by a joint Newton step);
    ``fit`` takes no offsets, trials or censoring limits.

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

    _parameter_specs = {"expert": expert_lists("logistic", "mlp"), "gate": GATES,
                        "init": OneOf("auto", "random", "kmeans", other="an (n, K) array", instances=(object,))}
    _removed_parameters = ("covariance", "var_floor")  # accepted until 0.2.0 and never used

    def __init__(
        self,
        n_experts=2,
        expert="logistic",
        gate="softmax",
        fit_method="em",
        max_iter=200,
        tol=1e-6,
        n_init=1,
        init="auto",
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
        formula=None,
        gate_formula=None,
        compute_se="auto",
        missing="error",
        shared_features=None,
        warm_start=False,
    ):
        self.n_experts = n_experts
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
        self.missing = missing
        self.shared_features = shared_features
        self.warm_start = warm_start

    def _family_expert(self, name, d, k, n_classes, dtype, gen, shared=()):
        if shared and name != "logistic":
            raise ValueError(f"shared_features ties coefficients of logistic experts; expert={name!r} has none to "
                             "share: use expert='logistic', or leave shared_features=None")
        if name == "logistic":
            if n_classes == 2:
                return LogisticExpert(d, n_experts=k, l2=float(self.alpha), dtype=dtype, shared=list(shared))
            return SoftmaxExpert(d, n_classes, n_experts=k, l2=float(self.alpha), dtype=dtype, shared=list(shared))
        lr = 1e-2 if self.learning_rate is None else self.learning_rate
        return MLPExpert(
            d, None, head="categorical", n_classes=n_classes, hidden_layer_sizes=self.hidden_layer_sizes,
            n_experts=k, learning_rate=lr, dtype=dtype, generator=gen,
        )

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities: (n, n_classes).  ``X`` may be a source of batches, read batch by batch."""
        if is_source(X):
            return self._predict_source("predict_proba", X)
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
