"""Potential backends behind one masked-evaluation interface (see :mod:`.base`)."""

from .base import Evaluation, Potential, PotentialCalculator

__all__ = ["Evaluation", "Potential", "PotentialCalculator"]
