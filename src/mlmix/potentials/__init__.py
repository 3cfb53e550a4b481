"""Potential backends behind one masked-evaluation interface (see :mod:`.base`)."""

from .base import Evaluation, Potential

__all__ = ["Evaluation", "Potential"]
