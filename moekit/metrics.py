"""Deprecated location: the metrics live in :mod:`moekit.inference.metrics` (import them from moekit.inference)."""

import warnings

from .inference.metrics import (
    best_of_m_error,
    crps,
    forward_consistency_error,
    interval_coverage,
    mode_recall,
    negative_log_likelihood,
)

warnings.warn(
    "moekit.metrics is deprecated; import the metrics from moekit.inference",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "best_of_m_error",
    "crps",
    "forward_consistency_error",
    "interval_coverage",
    "mode_recall",
    "negative_log_likelihood",
]
