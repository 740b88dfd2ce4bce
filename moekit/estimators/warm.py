"""``warm_start=True``: a second ``fit`` continues from the fitted model instead of starting afresh.

:class:`WarmStartMixin` is part of every estimator's fit template
(:class:`~moekit.estimators.base.ConditionalMixtureEstimator`): ``fit`` notes what the fitted
estimator was fitted on before it reads the new data (:meth:`WarmStartMixin._warm_signature`),
and the estimator's ``_train`` asks :meth:`WarmStartMixin._warm_init` for its trainer's ``init``
and ``n_init``: the estimator's own, or, with ``warm_start=True`` and a fitted ``model_``, the
fitted parameters copied into the new model and ``init=None`` (one start, no initialisation), as
scikit-learn's ``warm_start`` does.  The new data must have the same columns, classes, extras and
y dimensions, and the parameters must build a model of the same structure; otherwise a
``ValueError`` says what changed.
"""

from __future__ import annotations

import torch

__all__ = ["WarmStartMixin"]


class WarmStartMixin:
    """What ``warm_start=True`` continues from, and how a new model takes it over."""

    def _warm_signature(self) -> dict | None:
        """With ``warm_start=True`` and a fitted model: what a warm start continues from (else None)."""
        if not getattr(self, "warm_start", False) or not hasattr(self, "model_"):
            return None
        return {"model": self.model_, **self._warm_signature_of_data()}

    def _warm_init(self, model, exponent: int = 0):
        """``(init, n_init)`` for the trainer: the estimator's own, or ``(None, 1)`` after a warm start.

        With ``warm_start=True`` and a fitted ``model_``, the new ``model`` takes ``model_``'s
        parameters (in the internal units of X when X is rescaled by ``2**-exponent``), so that the
        fit continues from them.  The data must have the same columns (and classes, extras, y
        dimensions) and the parameters must build a model of the same structure.

        Raises
        ------
        ValueError
            A different structure or different data columns, naming what changed and the fix.
        """
        prev = self.__dict__.get("_warm_previous")
        if prev is None:
            return self.init, int(self.n_init)
        fix = "fit with warm_start=False for a fresh start"
        if getattr(self, "grow", False):
            raise ValueError(f"warm_start=True continues a fitted tree, but grow=True grows a new one; set grow=False "
                             f"(the fitted tree's depth and branching), or {fix}")
        if hasattr(self.expert, "fit") and not isinstance(self.expert, torch.nn.Module):
            raise ValueError(f"warm_start=True cannot continue scikit-learn experts (their fitted state is theirs, not "
                             f"the model's parameters); {fix}")
        now = self._warm_signature_of_data()
        for key, what in (("n_features_in_", "the number of features"), ("feature_names_in_", "the feature names"),
                          ("classes_", "the classes"), ("extras_", "the per-row extras (offset, trials)"),
                          ("y_ndim", "the dimensions of y")):
            if prev[key] != now[key]:
                raise ValueError(f"warm_start=True continues from the fitted model, but {what} changed: fitted with "
                                 f"{prev[key]!r}, now {now[key]!r}; give data with the same columns, or {fix}")
        old, new = prev["model"].state_dict(), model.state_dict()
        if list(old) != list(new) or any(tuple(old[k].shape) != tuple(new[k].shape) for k in new):
            pruned = int(prev["model"].n_experts) != int(model.n_experts)
            hint = (f" (the fitted model has {int(prev['model'].n_experts)} experts at the top, these parameters "
                    f"build {int(model.n_experts)}: set n_experts={int(prev['model'].n_experts)} to continue a "
                    "pruned fit)") if pruned else ""
            raise ValueError(f"warm_start=True continues from the fitted model_, but the parameters now build a model "
                             f"of another structure{hint}; keep n_experts, expert, gate and the features as they were "
                             f"fitted, or {fix}")
        model.load_state_dict(old)  # copies: the fitted model_ itself is left as it was
        if exponent:
            model.absorb_input_scale_(-exponent)  # into the internal units of the rescaled X
        return None, 1

    def _warm_signature_of_data(self) -> dict:
        """The data columns the current fit set (compared with :meth:`_warm_signature`'s)."""
        classes = getattr(self, "classes_", None)
        names = getattr(self, "feature_names_in_", None)
        return {"n_features_in_": int(self.n_features_in_),
                "feature_names_in_": None if names is None else [str(c) for c in names],
                "classes_": None if classes is None else list(classes.tolist()),
                "extras_": tuple(getattr(self, "extras_", ())), "y_ndim": getattr(self, "_y_ndim", None)}
