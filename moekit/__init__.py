"""moekit: mixtures of experts, hierarchical mixtures and mixture density networks.

The public names below are loaded on first use (PEP 562): ``import moekit`` is instant and imports
neither torch nor NumPy, so the ``moekit`` command answers ``--help`` at once; ``moekit.MoERegressor``
imports its module the first time it is read.
"""

import importlib

__version__ = "0.2.0"

# public name -> the module of moekit that defines it
_PUBLIC = {
    "MixtureDistribution": "distributions",
    "ConstantGate": "gates",
    "Gate": "gates",
    "MLPGate": "gates",
    "SoftmaxGate": "gates",
    "BinomialExpert": "experts",
    "CensoredGaussianExpert": "experts",
    "Expert": "experts",
    "GammaExpert": "experts",
    "LinearGaussianExpert": "experts",
    "LogisticExpert": "experts",
    "MLPExpert": "experts",
    "NegativeBinomialExpert": "experts",
    "PointMassExpert": "experts",
    "PoissonExpert": "experts",
    "SklearnExpert": "experts",
    "SoftmaxExpert": "experts",
    "StudentTExpert": "experts",
    "MixtureOfExperts": "mixture",
    "SuffStats": "stats",
    "build_tree": "tree",
    "render_tree": "tree",
    "FitResult": "training",
    "fit_em": "training",
    "fit_gradient": "training.gradient",
    "fit_tree_em": "training.tree",
    "grow_tree": "training.grow",
    "DeadComponentWarning": "training.mdn",
    "MixtureDensityNetwork": "mdn",
    "fit_mdn": "training.mdn",
    "HMEClassifier": "estimators",
    "HMERegressor": "estimators",
    "MoEClassifier": "estimators",
    "MoERegressor": "estimators",
    "MDNRegressor": "estimators",
    "load": "estimators",  # io.load, with every estimator class registered (io imports none of them)
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    try:
        module = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'moekit' has no attribute {name!r}") from None
    # PEP 562 lazy public name: its module (and torch) loads on first use, not on 'import moekit'
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later reads skip __getattr__
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
