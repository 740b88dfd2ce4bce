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
from .hme import HMEClassifier, HMERegressor
from .mdn import MDNRegressor, MixtureDensityNetwork, fit_mdn
from .mixture import MixtureOfExperts
from .stats import SuffStats
from .training import FitResult, fit_em
from .training.gradient import fit_gradient

__version__ = "0.1.0"


def load(path, device=None):
    """Load an estimator saved with ``estimator.save(path)`` (never unpickles; see :mod:`moekit.io`)."""
    from .io import load as _load

    return _load(path, device=device)


__all__ = [
    "ConstantGate",
    "Expert",
    "FitResult",
    "Gate",
    "HMEClassifier",
    "HMERegressor",
    "MDNRegressor",
    "MixtureDensityNetwork",
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
    "fit_mdn",
    "load",
]
