"""Initial responsibilities for EM (the partition itself lives in the base layer, :mod:`moekit._partition`)."""

from .._partition import initial_responsibilities

__all__ = ["initial_responsibilities"]
