"""Deprecated location: tracking lives in :mod:`moekit.inference.tracking` (import it from moekit.inference)."""

import warnings

from .inference.tracking import (
    FilterResult,
    TrackResult,
    estimate_transition_cov,
    filter_mixture,
    track_modes,
    viterbi,
)

warnings.warn(
    "moekit.tracking is deprecated; import filter_mixture, track_modes and the rest from moekit.inference",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["FilterResult", "TrackResult", "estimate_transition_cov", "filter_mixture", "track_modes", "viterbi"]
