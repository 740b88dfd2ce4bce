"""Deprecated location: the HME estimators live in :mod:`moekit.estimators.hme`."""

import warnings

from .estimators.hme import HMEClassifier, HMERegressor

warnings.warn(
    "moekit.hme is deprecated; import HMERegressor and HMEClassifier from moekit (or moekit.estimators)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["HMEClassifier", "HMERegressor"]
