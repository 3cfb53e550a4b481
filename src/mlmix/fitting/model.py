"""The interface of a cheap model that is linear in its coefficients.

A model maps a labelled frame (ASE Atoms) to design-matrix rows: the total energy of
the frame is ``energy_row @ c`` and the force components are ``force_rows @ c``, so
fitting is linear least squares. Units: eV, eV/Å, Å.
"""

from __future__ import annotations

import abc
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from ..errors import ConfigurationError
from ..potentials.base import Potential
from ..rundir import give_default_mode


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

    def _check_coefficients(self, coefficients: np.ndarray, detail: str = "") -> np.ndarray:
        """``coefficients`` as a flat float array of the right length, all finite."""
        c = np.asarray(coefficients, dtype=float).ravel()
        if c.shape != (self.n_coefficients,):
            raise ConfigurationError(
                f"{type(self).__name__} expects {self.n_coefficients} coefficients"
                f"{detail}, got {c.size}"
            )
        if not np.isfinite(c).all():
            raise ConfigurationError("coefficients contain NaN or infinite values")
        return c

    def species_index(self, atoms: Atoms) -> np.ndarray:
        """``(N,)`` 0-based index into :attr:`species` of every atom (the LAMMPS type
        minus 1); atoms of other species get -1 (:func:`check_frames` refuses them)."""
        lut = np.full(max(atomic_numbers.values()) + 1, -1, dtype=np.int64)
        lut[[atomic_numbers[s] for s in self.species]] = np.arange(len(self.species))
        return lut[atoms.numbers]

    @abc.abstractmethod
    def design_matrix(self, frames: Sequence[Atoms], forces: bool = True) -> DesignMatrix:
        """Rows for ``frames`` (positions, cell, species are read; labels ignored)."""

    @abc.abstractmethod
    def per_atom_rows(self, atoms: Atoms) -> np.ndarray:
        """``(N, n_coefficients)`` per-atom energy rows of one structure: row i @ c is
        the energy of atom i (eV), and the rows sum to its design-matrix energy row.
        These are the atoms' descriptors, which :mod:`mlmix.fitting.uncertainty`
        grades against the training environments."""

    @abc.abstractmethod
    def write(self, coefficients: np.ndarray, directory: Path, stem: str) -> list[Path]:
        """Write the potential in the format LAMMPS reads; return the files written.

        Writes to temporary names and renames at the end, so a failure leaves no
        half-written file.
        """

    @abc.abstractmethod
    def potential(self, coefficients: np.ndarray, directory: Path, stem: str) -> Potential:
        """Write the files and load them as an mlmix potential (a LammpsPotential)."""


# ------------------------------------------------------------- shared by the models


def check_species(species: Sequence[str]) -> tuple[str, ...]:
    """Validate a species list: known element symbols, no duplicates, not empty."""
    species = tuple(species) if not isinstance(species, str) else (species,)
    if not species:
        raise ConfigurationError("species must name at least one element, got []")
    unknown = [s for s in species if s not in atomic_numbers or s == "X"]
    if unknown:
        raise ConfigurationError(f"unknown element symbols {unknown} in species {list(species)}")
    if len(set(species)) != len(species):
        raise ConfigurationError(f"species {list(species)} contains duplicates")
    return species


def check_frames(frames: Sequence[Atoms], species: Sequence[str], model: str) -> list[Atoms]:
    """Reject an empty frame list, empty frames and elements the model does not describe."""
    frames = list(frames)
    if not frames:
        raise ConfigurationError(f"{model}: the frame list is empty; pass at least one ase.Atoms")
    allowed = set(species)
    for k, at in enumerate(frames):
        if not isinstance(at, Atoms):
            raise ConfigurationError(f"{model}: frame {k} is a {type(at).__name__}, not ase.Atoms")
        if len(at) == 0:
            raise ConfigurationError(f"{model}: frame {k} has no atoms")
        extra = sorted(set(at.get_chemical_symbols()) - allowed)
        if extra:
            raise ConfigurationError(
                f"{model}: frame {k} contains {extra}, but the model describes only "
                f"{list(species)}; add them to species or drop the frame"
            )
        if not np.isfinite(at.positions).all() or not np.isfinite(at.cell.array).all():
            raise ConfigurationError(f"{model}: frame {k} has NaN or infinite positions or cell")
    return frames


def write_texts_atomically(texts: Mapping[Path, str]) -> list[Path]:
    """Write several text files so that either all appear complete or none changes.

    Each file is written to a temporary name in its target folder and renamed only
    after every file was written (``os.replace`` is atomic on one file system).
    """
    tmps: list[tuple[str, Path]] = []
    try:
        for path, text in texts.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            give_default_mode(fd)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            tmps.append((tmp, path))
        for tmp, path in tmps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in tmps:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return [path for _, path in tmps]
