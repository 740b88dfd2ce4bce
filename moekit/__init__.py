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
from .hierarchy import build_tree, fit_tree_em, grow_tree, render_tree
from .estimators import HMEClassifier, HMERegressor
from .mdn import DeadComponentWarning, MDNRegressor, MixtureDensityNetwork, fit_mdn
from .mixture import MixtureOfExperts
from .stats import SuffStats
from .training import FitResult, fit_em
from .training.gradient import fit_gradient

__version__ = "0.1.0"


def load(path, device=None):
    """Load an estimator saved with ``estimator.save(path)`` (never unpickles; see :mod:`moekit.io`).

    Parameters
    ----------
    path : str or os.PathLike
        A moekit model file.
    device : str or torch.device, optional
        Where to put the model (default: the device it was saved from when
        that exists here, else the CPU).

    Returns
    -------
    estimator
        The fitted estimator (see :func:`moekit.io.load`).

    Shapes
    ------
    No array arguments; the model's tensors keep their saved shapes.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import moekit
    >>> X = np.linspace(-1, 1, 20)[:, None]
    >>> est = moekit.MoERegressor(n_experts=1).fit(X, 2 * X[:, 0] + 1)
    >>> path = os.path.join(tempfile.mkdtemp(), "line.moekit")
    >>> est.save(path)
    >>> type(moekit.load(path)).__name__
    'MoERegressor'
    """
    from .io import load as _load

    return _load(path, device=device)


__all__ = [
    "ConstantGate",
    "DeadComponentWarning",
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
    "build_tree",
    "fit_em",
    "fit_gradient",
    "fit_tree_em",
    "grow_tree",
    "fit_mdn",
    "load",
    "render_tree",
]
