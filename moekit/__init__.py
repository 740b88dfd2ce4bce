"""moekit: mixtures of experts, hierarchical mixtures and mixture density networks."""

from .distributions import MixtureDistribution
from .experts import Expert, LinearGaussianExpert
from .gates import ConstantGate, Gate, MLPGate, SoftmaxGate
from .mixture import MixtureOfExperts
from .stats import SuffStats
from .training import FitResult, fit_em

__version__ = "0.1.0"

__all__ = [
    "ConstantGate",
    "Expert",
    "FitResult",
    "Gate",
    "LinearGaussianExpert",
    "MLPGate",
    "MixtureDistribution",
    "MixtureOfExperts",
    "SoftmaxGate",
    "SuffStats",
    "fit_em",
]
