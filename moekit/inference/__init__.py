"""What to do with a predictive mixture: modes, intervals, metrics, tracking.

When p(y | x) has several branches (a robot hand reached elbow-up or
elbow-down, an image explained by several 3-D poses), its mean is none of
them.  This package returns the branches themselves and scores them:

* :mod:`~moekit.inference.modes` - :func:`find_modes` (the modes of every row's
  mixture, each with its mass and local covariance) and :func:`branches`
  (component means with their weights).
* :mod:`~moekit.inference.intervals` - :func:`hdr` (highest-density regions, a
  union of intervals when p(y | x) is multimodal), :func:`central_interval`,
  :func:`in_intervals` and :func:`interval_length`.
* :mod:`~moekit.inference.metrics` - negative log-likelihood, CRPS, interval
  coverage, and the metrics of inverse problems (best-of-M error, mode recall,
  forward consistency).
* :mod:`~moekit.inference.information` - :func:`observed_information`: standard
  errors of a fitted mixture of experts (observed information or sandwich).
* :mod:`~moekit.inference.tracking` - carrying the branches through time
  (:func:`filter_mixture`, :func:`track_modes`, :func:`viterbi`).

Everything takes a :class:`~moekit.MixtureDistribution` (as returned by an
estimator's ``predict_distribution``); nested mixtures (hierarchical MoEs) are
read through their leaves (:func:`moekit.distributions.flatten_leaves`).
"""

from .information import Information, NoLikelihoodHessianError, ParameterInfo, observed_information
from .intervals import central_interval, hdr, in_intervals, interval_length
from .metrics import (
    best_of_m_error,
    crps,
    forward_consistency_error,
    interval_coverage,
    mode_recall,
    negative_log_likelihood,
)
from .modes import Modes, branches, find_modes
from .tracking import FilterResult, TrackResult, estimate_transition_cov, filter_mixture, track_modes, viterbi

__all__ = [
    "FilterResult",
    "Information",
    "NoLikelihoodHessianError",
    "ParameterInfo",
    "observed_information",
    "Modes",
    "TrackResult",
    "best_of_m_error",
    "branches",
    "central_interval",
    "crps",
    "estimate_transition_cov",
    "filter_mixture",
    "find_modes",
    "forward_consistency_error",
    "hdr",
    "in_intervals",
    "interval_coverage",
    "interval_length",
    "mode_recall",
    "negative_log_likelihood",
    "track_modes",
    "viterbi",
]
