"""Close contacts: atoms too close together for any interatomic potential to mean much.

Two atoms 0.1 Å apart (or on top of each other, as after a bad ``repeat`` or a typo in
a lattice parameter) give NaN, huge or silently garbage forces with every potential
mlmix drives. :func:`close_pairs` finds such pairs and :func:`contact_problem` says, in
one sentence, which pair is closest and how close, so a structure is refused before
any work.

The default minimum distance of a species pair is :data:`DEFAULT_FRACTION` of the sum
of the two covalent radii (ASE's table), i.e. half a typical bond: 1.11 Å for Si-Si,
1.62 Å for W-W, 0.95 Å for W-He. Real structures, even hot ones, stay well above it.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols, covalent_radii

from .neighbours import neighbour_pairs

DEFAULT_FRACTION = 0.5
"""Default minimum distance as a fraction of the sum of covalent radii."""


def default_min_distance(numbers_i: np.ndarray, numbers_j: np.ndarray) -> np.ndarray:
    """Å, the default minimum distance of atoms with atomic numbers ``numbers_i`` and
    ``numbers_j`` (arrays of one shape; the result has that shape)."""
    radii = covalent_radii[np.asarray(numbers_i)] + covalent_radii[np.asarray(numbers_j)]
    return DEFAULT_FRACTION * radii


def _search_radius(atoms: Atoms, reach: float) -> float:
    # vesin is ~3x slower at radii far below the atomic spacing than at ~2.5 Å, so a
    # condensed structure is searched at 2.5 Å and filtered; a very dense one (a wrong
    # lattice parameter) at the threshold itself, which keeps the pair list small.
    volume = abs(atoms.cell.volume) if atoms.pbc.all() else 0.0
    if volume > 0 and len(atoms) / volume < 0.2:  # atoms per Å^3; solids: 0.03-0.2
        return max(reach, 2.5)
    return reach


def close_pairs(atoms: Atoms, min_distance: float | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of atoms closer than the minimum distance (minimum image).

    Args:
        atoms: the structure.
        min_distance: Å, one threshold for every species pair; None uses
            :func:`default_min_distance` per pair.

    Returns:
        ``(i, j, d)``: indices (i < j, or i == j for an atom close to its own image)
        and distances (Å) of the offending pairs, closest first.
    """
    reach = _reach(atoms, min_distance) if len(atoms) else 0.0
    if reach <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return _close_and_nearest(atoms, min_distance, reach)[0]


def _reach(atoms: Atoms, min_distance: float | None) -> float:
    """Å, the largest minimum distance of any species pair in ``atoms``."""
    if min_distance is not None:
        return float(min_distance)
    return float(default_min_distance(atoms.numbers, atoms.numbers).max())


def _close_and_nearest(atoms: Atoms, min_distance: float | None, reach: float):
    """:func:`close_pairs`, and each atom's nearest-neighbour distance ``(N,)`` Å, capped
    at the search radius (which is at least ``reach``)."""
    numbers = atoms.numbers
    radius = _search_radius(atoms, reach)
    i, j, d = neighbour_pairs(atoms.positions, atoms.cell.array, atoms.pbc, radius, "ijd")
    nearest = np.full(len(atoms), radius)
    np.minimum.at(nearest, i, d)  # (a full list: each pair is listed from both atoms)
    keep = (d < reach) & (i <= j)  # within the search radius, each pair once
    i, j, d = i[keep], j[keep], d[keep]
    limit = reach if min_distance is not None else default_min_distance(numbers[i], numbers[j])
    bad = d < limit
    order = np.argsort(d[bad], kind="stable")
    return (i[bad][order], j[bad][order], d[bad][order]), nearest


class ContactWatch:
    """:func:`contact_problem` along a trajectory, with a full search only when some
    pair could have come too close since the last one.

    A full search records each atom's nearest-neighbour distance n_i. Later, with
    u_i the displacement of atom i since then, every distance is at least
    n_i - u_i - max(u), so while that stays at or above the largest minimum distance
    no pair can be too close and no search is needed: O(N) numpy instead of a
    neighbour search (measured at 64k atoms: 0.8 ms against 37-43 ms). Atoms
    wrapped back into the cell look displaced by a lattice vector and force a search,
    as does any change of the atom count, species, cell or periodicity.

    Args:
        min_distance: Å, as for :func:`contact_problem`.
        key: how the user sets the threshold, named in the message.
    """

    def __init__(self, min_distance: float | None = None, key: str = "min_distance"):
        self.min_distance = min_distance
        self.key = key
        self.n_searches = 0
        self._state: tuple | None = None  # (structure key, positions, nearest, reach)

    def problem(self, atoms: Atoms) -> str | None:
        """A message naming the closest pair if any atoms are too close, else None."""
        if self.min_distance == 0 or len(atoms) == 0:
            return None
        key = (atoms.numbers.tobytes(), atoms.cell.array.tobytes(), atoms.pbc.tobytes())
        if self._state is not None and self._state[0] == key:
            _, reference, nearest, reach = self._state
            d = atoms.positions - reference
            u = np.sqrt(np.einsum("ij,ij->i", d, d))
            if np.all(nearest - u - u.max() >= reach):
                return None
        reach = _reach(atoms, self.min_distance)
        pairs, nearest = _close_and_nearest(atoms, self.min_distance, reach)
        self.n_searches += 1
        self._state = (key, atoms.positions.copy(), nearest, reach)
        return _message(atoms, pairs, self.min_distance, self.key)


def contact_problem(atoms: Atoms, min_distance: float | None = None, key: str = "min_distance"
                    ) -> str | None:
    """A message naming the closest pair if any atoms are too close, else None.

    ``key`` is how the user sets the threshold (a config key or a Python argument),
    named in the message so that a deliberate close contact can be allowed.
    """
    return _message(atoms, close_pairs(atoms, min_distance), min_distance, key)


def _message(atoms: Atoms, pairs, min_distance: float | None, key: str) -> str | None:
    """The sentence of :func:`contact_problem` for the pairs ``(i, j, d)``, or None."""
    i, j, d = pairs
    if not i.size:
        return None
    a, b = int(i[0]), int(j[0])
    pair = f"{chemical_symbols[atoms.numbers[a]]}-{chemical_symbols[atoms.numbers[b]]}"
    if min_distance is None:
        limit = float(default_min_distance(atoms.numbers[a], atoms.numbers[b]))
        rule = f"{limit:.3g} Å, half the sum of their covalent radii"
    else:
        rule = f"{float(min_distance):.3g} Å"
    what = (f"atom {a} is {d[0]:.3g} Å from its own periodic image" if a == b else
            f"atoms {a} and {b} ({pair}) are {d[0]:.3g} Å apart")
    more = f" ({i.size} such pairs)" if i.size > 1 else ""
    return (f"{what}{more}, closer than the minimum distance {rule}: overlapping atoms "
            f"(check the lattice parameter, repeat or file); set {key} (Å) lower to "
            "allow it")
