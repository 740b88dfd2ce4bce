"""scikit-learn estimators: one base, one fit template, one module per family.

Importing this package registers every estimator class with :mod:`moekit.io`, so ``load`` here
(:func:`moekit.load`) reads any moekit model file.  :mod:`~moekit._encoding` one-hot encodes
the text and ``category`` columns of DataFrames, for the estimators and the command line alike.
"""

from ..io import load
from .base import ConditionalMixtureEstimator, ConditionalMixtureMixin
from .hme import HMEClassifier, HMERegressor
from .mdn import MDNRegressor
from .moe import MoEClassifier, MoERegressor

__all__ = [
    "ConditionalMixtureEstimator",
    "ConditionalMixtureMixin",
    "HMEClassifier",
    "HMERegressor",
    "MDNRegressor",
    "MoEClassifier",
    "MoERegressor",
    "load",
]
