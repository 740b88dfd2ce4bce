"""Initial responsibilities for EM (the partition itself lives in the base layer, :mod:`moekit._partition`)."""

import numpy as np

from .._partition import initial_responsibilities

__all__ = ["initial_responsibilities", "nested_seed"]


def nested_seed(seed: int) -> int:
    """The seed with which nested mixtures split their rows, drawn from a start's seed (one rule for every trainer).

    Examples
    --------
    >>> nested_seed(0) == nested_seed(0), nested_seed(0) != nested_seed(1)
    (True, True)
    """
    return int(np.random.default_rng([seed, 1]).integers(0, 2**31 - 1))
