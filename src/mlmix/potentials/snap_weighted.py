"""Exact weights for SNAP in one LAMMPS call: one atom type per weight.

SNAP's energy is a sum of per-centre energies E_i = E(beta_{e(i)}, B_i), linear in the
coefficients beta of the centre's element e(i) (quadratic SNAP too: every term carries
one coefficient). Without ``chemflag``, a neighbour enters B_i only through its
element's radius and neighbour weight. So an element copied under another name, with
the same radius and weight and its coefficients scaled by q, leaves every bispectrum
as it was and scales the energy of each centre of that copy, and that centre's force
contributions, by q. Giving the atoms of each distinct weight w their own copy (scaled
by w), one force computation with the centres cut to w > 0 is the exact gradient of
sum_i w_i E_i, any weights, no levels: measured against the levels route to 1e-13 eV.

The copies are named by element symbols the structure does not use (LAMMPS and mlmix
map atoms to types by element); the structure handed to LAMMPS carries those symbols,
and the original element stays as it is for atoms with w = 0 (neighbours, never
centres). A coefficient file with one block per copy is written into a private
temporary directory whenever the set of distinct weights changes (at region rebuilds).
About a hundred copies fit in one instance (:attr:`SnapWeighted.max_weights`); more
distinct weights are split into batches, one call each with the centres cut to that
batch's atoms, and summed: still exact, at one call per hundred weights.
Refused, before any work: ``chemflag`` (neighbour elements enter the bispectrum) and
``switchinnerflag`` (per-element inner cutoffs in the parameter file) SNAP.

Units: eV, Å, eV/Å; strain derivative in eV.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from ..errors import ConfigurationError
from .files import ScratchDir
from .lammps import LammpsPotential, snap_files
from .lammps_copies import weight_types
from .lammps_files import _data_lines, snap_blocks
from .linear_weighted import WeightedWrapper
from .weighted import WeightedEvaluation, whole_minus_complement

#: SNAP parameters that make a neighbour's element (not just its radius and weight)
#: matter, or that are listed per element.
UNSUPPORTED_PARAMETERS = ("chemflag", "switchinnerflag")


def snap_parameter_problem(path: Path) -> str | None:
    """Why a ``.snapparam`` file cannot weight by element copies, or None."""
    for line in _data_lines(path):
        key, *value = line.split()
        if key in UNSUPPORTED_PARAMETERS and value and float(value[0]) != 0:
            return (f"{path.name} sets {key} {value[0]}: neighbour elements (or "
                    "per-element parameters) enter SNAP, so copies of an element would "
                    "change it; use weighting = 'levels'")
    return None


class SnapWeighted(WeightedWrapper):
    """A SNAP potential with exact weighted energies (module docstring).

    Build it with :meth:`snap`; masked evaluations, stress and whole energies go to the
    plain :class:`~mlmix.potentials.lammps.LammpsPotential`.
    """

    def __init__(self, potential: LammpsPotential, coeff: Path, param: Path):
        super().__init__(potential)
        self._lammps = potential
        self.coeff_file, self.param_file = Path(coeff), Path(param)
        problem = snap_parameter_problem(self.param_file)
        if problem is not None:
            raise ConfigurationError(f"{potential.name}: exact weights: {problem}")
        self._ncoeff, self._blocks = snap_blocks(self.coeff_file)
        self._elements = tuple(potential.type_species)
        taken = set(self._elements)
        # spare symbols for the copies, lightest first (masses never matter: no
        # integration runs in these instances)
        self._spare = [s for s in chemical_symbols[1:] if s not in taken]
        self._scratch = ScratchDir("mlmix-snap-weights-")
        # copies ((element index, weight) of each) -> the instance over them; one per
        # batch of distinct weights
        self._twins: dict[tuple, LammpsPotential] = {}

    @classmethod
    def snap(cls, coeff: str | os.PathLike, species: Sequence[str] | None = None, *,
             param: str | os.PathLike | None = None, **kw) -> SnapWeighted:
        """As :meth:`LammpsPotential.snap` (a stem or ``.snapcoeff``, not an include
        file), with exact weights."""
        if str(coeff).endswith(".snap"):
            raise ConfigurationError(
                f"exact weights need a .snapcoeff/.snapparam pair, not the include file "
                f"{coeff}; use weighting = 'levels'")
        c_path, p_path = snap_files(coeff, param)
        return cls(LammpsPotential.snap(c_path, species, param=p_path, **kw), c_path, p_path)

    @property
    def max_weights(self) -> int:
        """The most distinct (element, weight) pairs one evaluation can hold."""
        return len(self._spare)

    def _twin_for(self, copies: tuple, batches: int) -> LammpsPotential:
        """The LAMMPS potential over the original elements plus one scaled copy per
        (element index, weight) in ``copies``; written only when new. Instances of
        batches no longer in use are closed (``batches``: how many are in use)."""
        twin = self._twins.get(copies)
        if twin is not None:
            return twin
        if len(self._twins) >= batches:  # the weights changed: the old batches are stale
            for old in self._twins.values():
                old.close()
            self._twins = {}
        names = list(self._elements) + self._spare[: len(copies)]
        out = [f"{len(names)} {self._ncoeff}"]
        for name in self._elements:
            header, coefficients = self._blocks[name]
            out += [header, *coefficients]
        for (element, weight), name in zip(copies, names[len(self._elements):]):
            header, coefficients = self._blocks[self._elements[element]]
            out.append(" ".join([name, *header.split()[1:]]))
            out += [repr(weight * float(c.split()[0])) for c in coefficients]
        stem = self._scratch.path() / f"weights{len(self._twins)}"
        stem.with_suffix(".snapcoeff").write_text("\n".join(out) + "\n")
        shutil.copyfile(self.param_file, stem.with_suffix(".snapparam"))
        potential = self._lammps
        twin = LammpsPotential.snap(stem, names, skin=potential.skin, margin=potential.margin,
                                    truncation=potential.truncation,
                                    name=f"{potential.name}:weights")
        self._twins[copies] = twin
        return twin

    def _by_copies(self, atoms: Atoms, w: np.ndarray) -> WeightedEvaluation:
        """sum_i w_i E_i: centres w > 0, each the copy of its weight; one call per batch
        of at most :attr:`max_weights` distinct weights."""
        centres = w > 0
        element = self._lammps.type_index[atoms.numbers]
        pairs, which = weight_types(element[centres], w[centres])
        index = np.flatnonzero(centres)
        size = self.max_weights
        batches = -(-len(pairs) // size)
        symbols = np.array(self._elements + tuple(self._spare[:size]))
        energy, forces, strain, computed = 0.0, np.zeros((len(atoms), 3)), np.zeros((3, 3)), 0
        for b in range(batches):
            copies = tuple(pairs[b * size : (b + 1) * size])
            twin = self._twin_for(copies, batches)
            here = (which >= b * size) & (which < (b + 1) * size)
            kinds = element.copy()
            kinds[index[here]] = len(self._elements) + which[here] - b * size
            mask = np.zeros(len(atoms), bool)
            mask[index[here]] = True
            stand_in = Atoms(symbols=symbols[kinds].tolist(), positions=atoms.positions,
                             cell=atoms.cell, pbc=atoms.pbc)
            e, f, s, c = twin._level(stand_in, mask)
            energy, forces, strain, computed = energy + e, forces + f, strain + s, computed + c
        return WeightedEvaluation(energy, forces, strain, computed, batches)

    def _weighted(self, atoms: Atoms, weights: np.ndarray) -> WeightedEvaluation:
        return whole_minus_complement(weights, lambda: self._whole(atoms),
                                      lambda v: self._by_copies(atoms, v))

    def close(self) -> None:
        super().close()
        for twin in self._twins.values():
            twin.close()
        self._twins = {}
        self._scratch.close()
