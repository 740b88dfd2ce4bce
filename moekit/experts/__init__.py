"""Expert families.  Each returns a torch distribution over y from ``forward(x)``."""

from .base import Expert
from .gaussian import LinearGaussianExpert

__all__ = ["Expert", "LinearGaussianExpert"]
