"""Model files written by moekit before 0.2.0: their mean log-likelihoods move to their explicit names.

moekit 0.1.0 stored ``log_likelihood_`` as the mean per unit weight; it is ``mean_log_likelihood_`` now,
and the totals, which those files cannot give (they do not store the training weight), are NaN.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = ["before_total_log_likelihood", "rename_result_fields", "totals_unknown"]


def _version_tuple(version) -> tuple:
    try:
        return tuple(int(p) for p in str(version).split("+")[0].split(".")[:3])
    except ValueError:
        return ()


def before_total_log_likelihood(cfg: dict) -> bool:
    """Whether the file was written before 0.2.0, when ``log_likelihood_`` was the mean per unit weight."""
    v = _version_tuple(cfg.get("moekit_version"))
    return v < (0, 2, 0)


def rename_result_fields(value, depth: int = 0) -> None:
    """In the raw configuration of a pre-0.2.0 file: the results' means move to their explicit names.

    ``log_likelihood`` becomes ``mean_log_likelihood`` (the total is unknown: NaN) and
    ``init_log_likelihoods`` becomes ``init_mean_log_likelihoods``; results nested in results
    (``GrowResult.fit_result``) too.
    """
    if depth > 8:
        return
    if isinstance(value, list):
        for v in value:
            rename_result_fields(v, depth + 1)
        return
    if not isinstance(value, dict):
        return
    if "__result__" in value and isinstance(value.get("fields"), dict):
        fields = value["fields"].get("__dict__")
        if isinstance(fields, dict):
            if "log_likelihood" in fields and "mean_log_likelihood" not in fields:
                fields["mean_log_likelihood"] = fields["log_likelihood"]
                fields["log_likelihood"] = {"__float__": "nan"}
            if "init_log_likelihoods" in fields:
                fields["init_mean_log_likelihoods"] = fields.pop("init_log_likelihoods")
    for v in value.values():
        rename_result_fields(v, depth + 1)


def totals_unknown(est, path, version) -> None:
    """A pre-0.2.0 estimator's fitted log-likelihoods: the stored means under their new names, the totals NaN."""
    if not hasattr(est, "log_likelihood_"):
        return
    est.mean_log_likelihood_ = est.log_likelihood_
    est.log_likelihood_ = math.nan
    hist = getattr(est, "log_likelihood_history_", None)
    if isinstance(hist, np.ndarray):
        est.mean_log_likelihood_history_ = hist
        est.log_likelihood_history_ = np.full_like(hist, np.nan, dtype=float)
    warnings.warn(
        f"'{path}' was written by moekit {version}, whose log_likelihood_ was the mean per unit weight: it is "
        f"now mean_log_likelihood_ ({est.mean_log_likelihood_:.6g}). log_likelihood_, now the total weighted "
        "log-likelihood, is NaN because such files do not store the training weight; "
        "score_samples(X, y) @ sample_weight on the training data gives it",
        UserWarning,
        stacklevel=3,
    )
