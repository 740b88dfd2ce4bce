"""moekit: mixtures of experts, hierarchical mixtures and mixture density networks."""

from .distributions import MixtureDistribution
from .estimators import MoEClassifier, MoERegressor
from .experts import (
    Expert,
    LinearGaussianExpert,
    LogisticExpert,
    MLPExpert,
    PoissonExpert,
    SklearnExpert,
    SoftmaxExpert,
    StudentTExpert,
)
from .gates import ConstantGate, Gate, MLPGate, SoftmaxGate
from .mixture import MixtureOfExperts
from .stats import SuffStats
from .training import FitResult, fit_em
from .training.gradient import fit_gradient

__version__ = "0.1.0"


def load(path):
    """Load an estimator saved with ``estimator.save(path)`` (never unpickles; see :mod:`moekit.io`)."""
    from .io import load as _load

    return _load(path)


__all__ = [
    "ConstantGate",
    "Expert",
    "FitResult",
    "Gate",
    "LinearGaussianExpert",
    "LogisticExpert",
    "MLPExpert",
    "PoissonExpert",
    "SklearnExpert",
    "SoftmaxExpert",
    "StudentTExpert",
    "MLPGate",
    "MixtureDistribution",
    "MixtureOfExperts",
    "MoEClassifier",
    "MoERegressor",
    "SoftmaxGate",
    "SuffStats",
    "fit_em",
    "fit_gradient",
    "load",
]
