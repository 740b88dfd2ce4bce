"""Training functions: loops live here, not inside models."""

from .em import fit_em
from .init import initial_responsibilities
from .result import FitResult

__all__ = ["fit_em", "initial_responsibilities", "FitResult"]
