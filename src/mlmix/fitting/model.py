"""The interface of a cheap model that is linear in its coefficients.

A model maps a labelled frame (ASE Atoms) to design-matrix rows: the total energy of
the frame is ``energy_row @ c`` and the force components are ``force_rows @ c``, so
fitting is linear least squares. Units: eV, eV/Å, Å.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from ..potentials.base import Potential


@dataclass(frozen=True)
class DesignMatrix:
    """Design-matrix rows of a list of frames.

    Attributes:
        energy: ``(n_frames, n_coefficients)``; row f @ c = total energy of frame f, eV.
        forces: ``(3 * sum(n_atoms), n_coefficients)`` or None; rows ordered frame by
            frame, atom by atom, x y z; row @ c = force component, eV/Å.
        n_atoms: ``(n_frames,)`` atoms per frame.
    """

    energy: np.ndarray
    forces: np.ndarray | None
    n_atoms: np.ndarray


class LinearModel(abc.ABC):
    """A cheap potential linear in its coefficients (SNAP, UF3, linear ACE).

    Attributes:
        name: short label, e.g. ``"snap"``.
        species: element symbols, in the order the written potential file uses.
        cutoff: Å, range of one per-atom energy.
        n_coefficients: length of the coefficient vector (per-species reference
            energies included).
    """

    name: str
    species: tuple[str, ...]
    cutoff: float

    @property
    @abc.abstractmethod
    def n_coefficients(self) -> int:
        """Number of coefficients."""

    @abc.abstractmethod
    def design_matrix(self, frames: Sequence[Atoms], forces: bool = True) -> DesignMatrix:
        """Rows for ``frames`` (positions, cell, species are read; labels ignored)."""

    @abc.abstractmethod
    def write(self, coefficients: np.ndarray, directory: Path, stem: str) -> list[Path]:
        """Write the potential in the format LAMMPS reads; return the files written.

        Writes to temporary names and renames at the end, so a failure leaves no
        half-written file.
        """

    @abc.abstractmethod
    def potential(self, coefficients: np.ndarray, directory: Path, stem: str) -> Potential:
        """Write the files and load them as an mlmix potential (a LammpsPotential)."""
