"""All weight levels of SW or Tersoff in one LAMMPS call: one atom type per weight.

Energy mixing needs sum_i w_i E_i, with E_i the terms owned by atom i: every three-body
term (SW) or bond-order attractive term (Tersoff, one per ordered pair i -> j) goes to
its vertex atom i, and half of every pair term to each of its two atoms (what the
plugin's levels route computes with two id orders, :data:`~mlmix.potentials.
lammps_plugin.PAIR_OWNER_BY_IDS`). So

    E_w = sum_{pairs ij} (w_i + w_j) / 2 phi2_ij + sum_i w_i phi3_i,

and both factors can be put into the parameters: give the atoms of each distinct
(element, weight) their own LAMMPS type, a copy of the element, and write a parameter
file with every type triplet (t1, t2, t3), copied from the elements' entry, with

* SW: ``A`` (the pair prefactor, read from entry (t1, t2, t2)) scaled by
  (q1 + q2) / 2, and ``lambda`` (the three-body prefactor of vertex t1) scaled by q1;
* Tersoff: ``A`` (repulsive pair) scaled by (q1 + q2) / 2, and ``B`` (the attractive
  term of the ordered pair t1 -> t2, whose bond order depends on the neighbours only
  through cutoffs and angles, unchanged) scaled by q1.

Every other parameter is the element's, so distances, cutoffs and bond orders are as
they were. With every atom a list centre, one force computation gives E_w, its exact
forces and its virial, for any weights, without the plugin; which atom computes a pair
term no longer matters, since both ends scale it alike. Atoms with w = 0 are a copy
with q = 0, so a term among them is zero. On a cluster carved around the weighted atoms
(:class:`~mlmix.potentials.lammps_cluster.ClusterLevels`) the atoms at its boundary
have w = 0 and incomplete neighbourhoods, but every term they would get wrong is
scaled by zero.

The number of entries grows as the cube of the number of types, so copies are made
for at most :data:`MAX_TYPES` distinct (element, weight) pairs: quantised weights
(``n_levels`` <= 16 by default: 17 types, 4,913 entries for one element).

Units: eV, Å, eV/Å; strain derivative in eV.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from ..errors import CalculationError, ConfigurationError
from .files import ScratchDir
from .lammps_files import _data_lines
from .weighted import WeightedEvaluation

if TYPE_CHECKING:
    from .lammps import LammpsPotential

MAX_TYPES = 40
"""Most distinct (element, weight) pairs one evaluation holds (64,000 file entries)."""


@dataclass(frozen=True)
class CopyScaling:
    """Where the prefactors of one style sit among an entry's numbers (0-based, after
    the three element names)."""

    n_parameters: int
    pair: int  # scaled by (q1 + q2) / 2
    vertex: int  # scaled by q1


STYLES = {
    # epsilon sigma a lambda gamma costheta0 A B p q tol
    "sw": CopyScaling(11, pair=6, vertex=3),
    # m gamma lambda3 c d costheta0 n beta lambda2 B R D lambda1 A
    "tersoff": CopyScaling(14, pair=13, vertex=9),
}


def weight_types(element: np.ndarray, w: np.ndarray) -> tuple[list[tuple[int, float]], np.ndarray]:
    """The distinct (element index, weight) pairs of some atoms, in increasing order,
    and the index of each atom's pair ``(n,)``. ``element``, ``w``: ``(n,)``."""
    values, by_value = np.unique(w, return_inverse=True)  # integer codes: fast
    codes, which = np.unique(element * len(values) + by_value.ravel(), return_inverse=True)
    pairs = [(int(c) // len(values), float(values[int(c) % len(values)])) for c in codes]
    return pairs, np.asarray(which).ravel()


def read_entries(path: Path, style: str) -> dict[tuple[str, str, str], list[float]]:
    """The entries of an SW or Tersoff file: element triplet -> its numbers.

    Raises:
        ConfigurationError: the numbers do not come in entries of the style's size.
    """
    scaling = STYLES[style]
    words = " ".join(_data_lines(path)).split()
    size = 3 + scaling.n_parameters
    if len(words) % size:
        raise ConfigurationError(
            f"{path.name}: {len(words)} words is not a whole number of {style} entries "
            f"(3 elements + {scaling.n_parameters} numbers each)")
    entries = {}
    for k in range(0, len(words), size):
        e1, e2, e3, *numbers = words[k : k + size]
        try:
            entries[(e1, e2, e3)] = [float(v) for v in numbers]
        except ValueError:
            raise ConfigurationError(f"{path.name}: entry {e1} {e2} {e3} has a value that "
                                     f"is not a number: {numbers}") from None
    return entries


def copies_file(style: str, entries: dict[tuple[str, str, str], list[float]],
                types: list[tuple[str, float]], names: list[str]) -> str:
    """The parameter file of the type copies: ``types[k] = (element, q)`` is named
    ``names[k]``; one entry per ordered triplet of types (module docstring)."""
    scaling = STYLES[style]
    lines = [f"# mlmix: {len(types)} weighted copies of {sorted({e for e, _ in types})}"]
    for (e1, q1), n1 in zip(types, names):
        for (e2, q2), n2 in zip(types, names):
            for (e3, _), n3 in zip(types, names):
                numbers = list(entries[(e1, e2, e3)])
                numbers[scaling.pair] *= 0.5 * (q1 + q2)
                numbers[scaling.vertex] *= q1
                lines.append(" ".join([n1, n2, n3, *map(repr, numbers)]))
    return "\n".join(lines) + "\n"


class TypedCopies:
    """SW or Tersoff weighted energies by type copies, on whatever structure it is handed.

    Args:
        potential: a plain ``LammpsPotential.sw``/``.tersoff`` (style and file read
            from it); its skin and margin are kept.
    """

    def __init__(self, potential: LammpsPotential):
        style, path = copies_source(potential)
        self.style, self.path = style, path
        self.base = potential
        self.entries = read_entries(path, style)
        elements = tuple(potential.type_species)
        missing = [t for t in ((a, b, c) for a in elements for b in elements for c in elements)
                   if t not in self.entries]
        if missing:
            raise ConfigurationError(f"{path.name} has no entry for {missing[0]}: every "
                                     "triplet of the species is needed")
        self._elements = elements
        self._spare = [s for s in chemical_symbols[1:] if s not in elements]
        self._scratch = ScratchDir("mlmix-type-copies-")
        self._types: tuple | None = None
        self._twin: LammpsPotential | None = None

    def _twin_for(self, types: tuple) -> LammpsPotential:
        """The potential over the copies ``types``, rewritten only when they change."""
        if types == self._types and self._twin is not None:
            return self._twin
        from .lammps import LammpsPotential

        if self._twin is not None:
            self._twin.close()
        names = self._spare[: len(types)]
        file = self._scratch.path() / f"copies{len(types)}.{self.style}"
        file.write_text(copies_file(self.style, self.entries, list(types), names))
        base = self.base
        build = LammpsPotential.sw if self.style == "sw" else LammpsPotential.tersoff
        self._twin = build(file, names, skin=base.skin, margin=base.margin,
                           truncation="off", name=f"{base.name}:copies")
        self._types = types
        return self._twin

    def evaluate(self, atoms: Atoms, w: np.ndarray) -> WeightedEvaluation:
        """sum_i w_i E_i on ``atoms`` in one call, every atom a centre."""
        pairs, which = weight_types(self.base.type_index[atoms.numbers], w)
        if len(pairs) > MAX_TYPES:
            raise CalculationError(
                f"{self.base.name}: {len(pairs)} distinct (element, weight) pairs, more "
                f"than the {MAX_TYPES} type copies one evaluation holds; quantise the "
                f"weights more coarsely (n_levels <= {MAX_TYPES - 1})")
        types = tuple((self._elements[e], q) for e, q in pairs)
        twin = self._twin_for(types)
        numbers = np.array([atomic_numbers[s] for s in self._spare[: len(types)]])
        stand_in = Atoms(numbers=numbers[which], positions=atoms.positions,
                         cell=atoms.cell, pbc=atoms.pbc)
        energy, forces, strain, _ = twin._owned(stand_in, np.ones(len(atoms), bool))
        return WeightedEvaluation(energy, forces, strain, len(atoms), 1)  # all centres

    def close(self) -> None:
        if self._twin is not None:
            self._twin.close()
            self._twin = None
        self._scratch.close()


def copies_source(potential: LammpsPotential) -> tuple[str, Path]:
    """``(style, file)`` of a plain SW or Tersoff potential (one ``pair_coeff * *``
    line with an element map, no extra style arguments).

    Raises:
        ConfigurationError: anything else (hybrids, tersoff/mod, style options).
    """
    style = potential.pair_style
    coeffs = potential._coeffs
    if style not in STYLES or len(coeffs) != 1 or not coeffs[0].element_map \
            or coeffs[0].types != ("*", "*") or potential.pre_commands:
        raise ConfigurationError(
            f"{potential.name}: type copies need a plain pair_style sw or tersoff with "
            f"one 'pair_coeff * * FILE elements' line, not {style!r}")
    return style, Path(coeffs[0].args[0])
