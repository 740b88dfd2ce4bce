"""``partial_fit``: online EM for the mixture-of-experts estimators (data seen once, batch by batch).

The first call fits its batch as ``fit`` would (the same checks, model and
start) and keeps the running averages of the statistics at the fitted
parameters; every later call is one stepwise online EM update
(:class:`~moekit.training.online.OnlineEM`, Cappé & Moulines 2009) on its
batch.  The online state is plain values (numbers and tensors), kept in the
private ``_online_state`` with a copy of the parameters it belongs to, so it
survives pickling and model files; ``fit`` (or any other change of
``model_``) starts it afresh: a ``partial_fit`` after ``fit`` continues from
the fitted model with new running averages.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from sklearn.base import is_classifier
from torch.nn.utils import parameters_to_vector

from .._validation import check_family_y, check_sample_weight, incomplete_targets, row_values
from ..training.online import OnlineEM, check_online_model
from ..training.passes import is_source
from .base import check_X, check_y, numeric_target

__all__ = ["OnlineClassifierMixin", "OnlineRegressorMixin"]


def _params(model) -> torch.Tensor:
    """Every parameter of ``model``, flat, on the CPU: what the online state belongs to."""
    ps = list(model.parameters())
    if not ps:
        return torch.zeros(0, dtype=torch.float64, device="cpu")
    return parameters_to_vector([p.detach() for p in ps]).to("cpu").clone()


def _same_params(saved, model) -> bool:
    now = _params(model)
    return isinstance(saved, torch.Tensor) and saved.shape == now.shape and saved.dtype == now.dtype and bool(
        torch.equal(saved, now)
    )


def _targets_context(y: torch.Tensor):
    """:func:`~moekit._validation.incomplete_targets` where y holds censored rows or missing coordinates."""
    return incomplete_targets() if bool(y.is_floating_point() and not torch.isfinite(y).all()) else nullcontext()


class _OnlineEM:
    """The ``partial_fit`` machinery shared by the regressors and the classifiers."""

    #: Decay exponent of the step sizes ``(t + 2) ** -alpha`` of online EM (Cappé & Moulines 2009).
    _online_alpha = 0.6
    #: Cap of a Newton (gate, GLM expert) step: the RMS change of its linear predictors over the batch (see OnlineEM).
    _online_max_step = 1.0

    # ------------------------------------------------------------- checks
    def _check_online_options(self) -> None:
        """The estimator's parameters, and refusals of the options online EM does not follow."""
        self._check_params()
        cls = type(self).__name__
        if getattr(self, "formula", None) is not None:
            raise ValueError(f"partial_fit takes X and y, not formula={self.formula!r}: pass the model's columns as X "
                             f"(gate_features / expert_features choose them), or fit(data) on all the data")
        if getattr(self, "missing", "error") == "drop":
            raise ValueError("partial_fit needs complete rows, but missing='drop' (an option of fit); drop the rows "
                             "with missing values from each batch yourself and leave missing='error'")
        if getattr(self, "grow", False):
            raise ValueError(f"{cls}(grow=True) chooses the tree on all the data by held-out likelihood; partial_fit "
                             "keeps one tree: give depth and branching with grow=False, or fit on all the data")

    def _refuse_rescaling(self, model, x: torch.Tensor) -> torch.Tensor:
        """x as it is: a batch that ``fit`` would rescale internally (a power of two) is refused here."""
        xs, e = self._rescaled(model, x)
        if e:
            raise ValueError(f"X's magnitude needs an internal rescaling by 2**{-e}, which fit does but partial_fit "
                             "cannot (the batches would need one common factor): rescale X yourself (e.g. divide "
                             "it by a fixed power of ten) before every call")
        return xs

    def _check_labels(self, y, classes) -> None:  # overridden by the classifiers
        pass

    def _check_batch_targets(self, y, n: int, extras: dict) -> None:  # overridden by the regressors
        pass

    # -------------------------------------------------------------- batches
    def _online_batch(self, X, y, sample_weight, extras: dict):
        """A later batch as the model's tensors, checked against the fitted estimator (features, labels, extras)."""
        check_X(X)
        if y is None:
            raise ValueError("y is None; partial_fit needs each batch's targets: partial_fit(X, y)")
        check_y(y, X, (1,) if is_classifier(self) else (1, 2))
        x = self._model_x(X, extras.get("offset"), extras.get("trials"))  # n_features_in_ / feature names checked
        n = x.shape[0]
        if is_classifier(self):
            labels = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
            self._check_labels(labels, self.classes_)
            yt = self._target_tensor(labels, n)
        else:
            numeric_target(y)
            yt = self._target_tensor(y, n, extras.get("lower"), extras.get("upper"))
            self._check_batch_targets(y, n, extras)
        w = check_sample_weight(sample_weight, n, x.dtype, x.device)
        return self._refuse_rescaling(self.model_, x), yt, w

    # --------------------------------------------------------------- driver
    def _partial_fit(self, X, y, sample_weight, classes, extras: dict):
        if is_source(X):
            raise TypeError(f"partial_fit takes one batch as arrays, not a source of batches; call partial_fit on "
                            f"each batch's arrays, or fit the source with {type(self).__name__}.fit(source)")
        self._check_online_options()
        classes = self._online_classes(classes)
        state = self.__dict__.get("_online_state")
        fitted = hasattr(self, "model_")
        if state is not None and not (fitted and _same_params(state.get("params"), self.model_)):
            state = None  # fit (or another change of model_) since the last partial_fit: the averages are stale
        if not fitted:
            return self._online_first(X, y, sample_weight, classes, extras)
        x, yt, w = self._online_batch(X, y, sample_weight, extras)
        online = OnlineEM(self.model_, self._online_alpha, max_step=self._online_max_step)  # TypeError: no statistics
        with _targets_context(yt):
            if state is None:  # after fit: the fitted model stays, this batch starts the running averages
                mean_ll = online.initialise(x, yt, w)
                batches, rows = 0, 0
            else:
                online.load_state_dict(state["em"])
                mean_ll = online.step(x, yt, w)
                batches, rows = int(self.n_batches_seen_), int(self.n_rows_seen_)
        self._online_record(online, mean_ll, float(w.sum()), batches + 1, rows + x.shape[0])
        return self

    def _online_first(self, X, y, sample_weight, classes, extras: dict):
        """The first call: ``fit``'s checks, model and training on the batch, then the running averages."""
        if is_classifier(self):
            if classes is None:
                raise ValueError("classes must be given on the first call of partial_fit: every label the batches "
                                 "will hold (e.g. classes=np.unique(y_all)), as for scikit-learn's SGDClassifier; "
                                 "later calls may leave it None")
            self._partial_fit_classes = classes
        try:
            model, x, yt, wt, seed, rng, gen = self._start(X, y, sample_weight, **extras)
        finally:
            self.__dict__.pop("_fit_extras", None)
            self.__dict__.pop("_partial_fit_classes", None)
        check_online_model(model)  # before any training: a model without statistics cannot go on online
        x = self._refuse_rescaling(model, x)
        result = self._train(model, x, yt, wt, seed, rng, gen)
        self.model_ = result.model  # fit's attributes
        self.fit_result_ = result
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        self.mean_log_likelihood_history_ = np.asarray(result.history)
        self.log_likelihood_history_ = self.mean_log_likelihood_history_ * result.train_weight
        self._set_model_attributes(result)
        self.__dict__.pop("inference_", None)  # standard errors of one batch would describe that batch only
        online = OnlineEM(self.model_, self._online_alpha, max_step=self._online_max_step)
        with _targets_context(yt):
            mean_ll = online.initialise(x, yt, wt)
        self._online_record(online, mean_ll, float(wt.sum()), 1, x.shape[0])
        return self

    def _online_record(self, online: OnlineEM, mean_ll: float, weight: float, batches: int, rows: int) -> None:
        self._online_state = {"em": online.state_dict(), "params": _params(self.model_)}
        self.mean_log_likelihood_ = mean_ll
        self.log_likelihood_ = mean_ll * weight
        self.n_batches_seen_ = batches
        self.n_rows_seen_ = rows

    def _online_classes(self, classes):
        return None


_PARTIAL_FIT_DOC = """
        Online EM (stepwise EM, Cappé & Moulines 2009) for data seen once,
        batch by batch.  The first call (on an unfitted estimator) fits its
        batch as ``fit`` does (the same checks, model, start and iterations)
        and starts running averages of every gate's and expert's statistics
        per unit weight at the fitted parameters.  Each later call is one
        update: an E-step on the batch, ``s <- (1 - g_t) s + g_t s_batch``
        with ``g_t = (t + 2) ** -0.6`` (t = 0 for the first update), then the
        M-step from the averages: exact components (linear-Gaussian least
        squares, constant gate, Student-t's and censored experts' ECM
        statistics) are refitted from them; the softmax gate and GLM experts
        take one guarded stochastic Newton step from running averages of
        their gradient and curvature (:mod:`moekit.training.online`).  Later
        batches must have the first batch's features (number, names;
        DataFrame category levels are those of the first batch).  After
        ``fit``, ``partial_fit`` continues from the fitted model with new
        running averages; ``fit`` starts afresh.  Online EM never prunes
        experts.

        Gates and experts without statistics (``gate="mlp"``,
        ``expert="mlp"``, scikit-learn experts) cannot be updated online: a
        ``TypeError``.  ``formula``, ``missing="drop"`` and (hierarchies)
        ``grow=True`` are refused, as is X that ``fit`` would rescale
        internally.

        Fitted attributes are those of ``fit`` (``n_iter_``, ``converged_``,
        ``fit_result_`` and the histories describe the first call's fit),
        with ``log_likelihood_`` / ``mean_log_likelihood_`` those of the
        latest batch at the parameters *before* its update (a running
        measure of fit on unseen data), ``n_batches_seen_`` and
        ``n_rows_seen_`` counting the batches and rows since the running
        averages started.
"""


class OnlineRegressorMixin(_OnlineEM):
    """``partial_fit`` of the regressors (:class:`~moekit.MoERegressor`, :class:`~moekit.HMERegressor`)."""

    def partial_fit(self, X, y, sample_weight=None, *, offset=None, trials=None, lower=None, upper=None):
        """Update the model with one batch of rows by online EM.
        {doc}
        Parameters
        ----------
        X : array-like (b, d_x)
            One batch; numbers or a DataFrame, as for ``fit``.
        y : array-like (b,) or (b, d_y)
        sample_weight : array-like (b,), optional
        offset, trials, lower, upper : array-like (b,), optional
            As for ``fit``; a model started with ``offset`` or ``trials``
            needs them in every batch.

        Returns
        -------
        self

        Shapes
        ------
        X (b, d_x); y (b,) or (b, d_y); sample_weight, offset, trials, lower, upper (b,).

        Examples
        --------
        >>> import numpy as np
        >>> from moekit import MoERegressor
        >>> rng = np.random.default_rng(0)
        >>> X = rng.uniform(-1, 1, size=(6000, 1))
        >>> y = np.where(X[:, 0] < 0, 1 + 2 * X[:, 0], -1 - X[:, 0]) + 0.1 * rng.normal(size=6000)
        >>> est = MoERegressor(n_experts=2, random_state=0)
        >>> for i in range(0, 6000, 1000):
        ...     est = est.partial_fit(X[i : i + 1000], y[i : i + 1000])
        >>> est.n_batches_seen_, est.predict(np.array([[-0.5], [0.5]])).round(1)
        (6, array([ 0. , -1.5]))
        """
        return self._partial_fit(X, y, sample_weight, None,
                                 {"offset": offset, "trials": trials, "lower": lower, "upper": upper})

    partial_fit.__doc__ = partial_fit.__doc__.replace("{doc}", _PARTIAL_FIT_DOC)

    def _check_batch_targets(self, y, n: int, extras: dict) -> None:
        """``fit``'s family checks of y (counts, positive values, successes out of trials) on a later batch."""
        fams = self._named_families()
        if not fams:
            return
        yy = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y, dtype=np.float64)
        exempt = None
        if "point_mass" in fams:
            value = float(self.point_mass_value)
            exempt = (yy == value) if yy.ndim == 1 else (yy == value).all(1)
        trials = row_values(extras.get("trials"), "trials", n)
        for fam in dict.fromkeys(fams):
            check_family_y(fam, yy, trials=trials, exempt=exempt)


class OnlineClassifierMixin(_OnlineEM):
    """``partial_fit`` of the classifiers (:class:`~moekit.MoEClassifier`, :class:`~moekit.HMEClassifier`)."""

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """Update the model with one batch of labelled rows by online EM.
        {doc}
        Parameters
        ----------
        X : array-like (b, d_x)
        y : array-like (b,)
            Labels, each among ``classes``.
        classes : array-like, optional
            Every label of the stream: required on the first call (the
            first batch need not hold them all; ``classes_`` is their sorted
            set), and then optional (when given, it must be the same).
        sample_weight : array-like (b,), optional

        Returns
        -------
        self

        Shapes
        ------
        X (b, d_x); y (b,); sample_weight (b,).

        Examples
        --------
        >>> import numpy as np
        >>> from moekit import MoEClassifier
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(3000, 2))
        >>> y = np.where(X[:, 0] > 0, "a", np.where(X[:, 1] > 0, "b", "c"))
        >>> clf = MoEClassifier(n_experts=2, random_state=0, tol=1e-5)
        >>> for i in range(0, 3000, 1000):
        ...     clf = clf.partial_fit(X[i : i + 1000], y[i : i + 1000], classes=["a", "b", "c"])
        >>> clf.classes_.tolist(), clf.predict(np.array([[2.0, 0.0], [-2.0, 2.0], [-2.0, -2.0]])).tolist()
        (['a', 'b', 'c'], ['a', 'b', 'c'])
        """
        return self._partial_fit(X, y, sample_weight, classes, {})

    partial_fit.__doc__ = partial_fit.__doc__.replace("{doc}", _PARTIAL_FIT_DOC)

    def _online_classes(self, classes):
        """``classes`` as a sorted array of at least two labels, the same as ``classes_`` once there are some."""
        if classes is None:
            return None
        arr = np.unique(np.asarray(classes))
        if arr.ndim != 1 or len(arr) < 2:
            raise ValueError(f"classes must list at least 2 labels (every label of the stream), got {classes!r}")
        known = getattr(self, "classes_", None)
        if hasattr(self, "model_") and known is not None and not (
            len(known) == len(arr) and bool(np.all(np.asarray(known) == arr))
        ):
            raise ValueError(f"classes={arr.tolist()} differs from this estimator's classes_ {np.asarray(known).tolist()} "
                             "(set by the first partial_fit call or by fit); leave classes=None after the first call, "
                             "or call fit to start again")
        return arr

    def _check_labels(self, y, classes) -> None:
        y = np.asarray(y)
        unknown = ~np.isin(y, classes)
        if unknown.any():
            bad = sorted({str(v) for v in y[unknown].tolist()})
            raise ValueError(f"y holds labels not in classes: {bad[:5]}{' ...' if len(bad) > 5 else ''}; the classes "
                             f"are {np.asarray(classes).tolist()} (given on the first call of partial_fit, or seen by "
                             "fit): every label of every batch must be among them")

    def _fit_targets(self, y, w):
        """As the classifiers' own, but against the ``classes`` of the first ``partial_fit`` call when there are some."""
        classes = self.__dict__.get("_partial_fit_classes")
        if classes is None:
            return super()._fit_targets(y, w)
        self._check_labels(y, classes)
        self.classes_ = classes
        return torch.as_tensor(np.searchsorted(classes, y), dtype=torch.long, device=self.device), len(classes)
