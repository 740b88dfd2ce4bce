"""Expert families.  Each returns a torch distribution over y from ``forward(x)``.

Every built-in family is written once, stacked over an expert axis:
``n_experts=None`` gives one expert, ``n_experts=K`` K experts evaluated in one
batched call (see :class:`~moekit.experts.base.Expert`).
"""

from .base import Expert
from .binomial import BinomialExpert
from .censored import CensoredGaussianExpert
from .gamma import GammaExpert
from .gaussian import LinearGaussianExpert
from .logistic import LogisticExpert, SoftmaxExpert
from .mlp import MLPExpert
from .negative_binomial import NegativeBinomialExpert
from .point_mass import PointMassExpert
from .poisson import PoissonExpert
from .sklearn import SklearnExpert
from .student_t import StudentTExpert

__all__ = [
    "BinomialExpert",
    "CensoredGaussianExpert",
    "Expert",
    "GammaExpert",
    "LinearGaussianExpert",
    "LogisticExpert",
    "MLPExpert",
    "NegativeBinomialExpert",
    "PointMassExpert",
    "PoissonExpert",
    "SklearnExpert",
    "SoftmaxExpert",
    "StudentTExpert",
]
