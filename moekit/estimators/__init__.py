"""scikit-learn estimators: one base, one fit template, one module per family."""

from .base import ConditionalMixtureMixin
from .hme import HMEClassifier, HMERegressor
from .mdn import MDNRegressor
from .moe import MoEClassifier, MoERegressor

__all__ = ["ConditionalMixtureMixin", "HMEClassifier", "HMERegressor", "MDNRegressor", "MoEClassifier", "MoERegressor"]
