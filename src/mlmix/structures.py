"""Starting structures for demos, benchmarks and tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from .neighbours import neighbour_pairs


# Interstitial sites in fractions of the conventional cubic cell.
INTERSTITIAL_SITES = {
    "bcc": {"octahedral": (0.5, 0.5, 0.0), "tetrahedral": (0.5, 0.25, 0.0)},
    "fcc": {"octahedral": (0.5, 0.0, 0.0), "tetrahedral": (0.25, 0.25, 0.25)},
    "diamond": {"tetrahedral": (0.5, 0.5, 0.5), "hexagonal": (0.625, 0.625, 0.625)},
}
CRYSTALS = ("sc", "fcc", "bcc", "diamond")


def cubic_supercell(symbol: str, crystal: str, a: float,
                    repeat: int | Sequence[int]) -> Atoms:
    """``repeat`` conventional cubic cells (an int, or one per axis) of a crystal.

    Args:
        symbol: element, e.g. ``"W"``.
        crystal: ``"sc"``, ``"fcc"``, ``"bcc"`` or ``"diamond"``.
        a: lattice parameter, Å.
    """
    reps = (repeat,) * 3 if isinstance(repeat, (int, np.integer)) else tuple(repeat)
    return bulk(symbol, crystal, a=a, cubic=True).repeat(reps)


def central_atom(atoms: Atoms) -> int:
    """Index of the atom nearest the centre of the cell (ties: the lowest index)."""
    centre = atoms.cell.array.sum(axis=0) / 2
    return int(np.argmin(np.linalg.norm(atoms.positions - centre, axis=1)))


def remove_atom(atoms: Atoms, index: int, bond: float) -> tuple[Atoms, np.ndarray]:
    """A copy of ``atoms`` without atom ``index``, and the vacancy's neighbours.

    Args:
        bond: Å, a distance between the first and second neighbour shells.

    Returns:
        The new atoms and the indices (in them) of the atoms that were within
        ``bond`` of the removed one, the natural seeds of the expensive region.
    """
    i, j = neighbour_pairs(atoms.positions, atoms.cell.array, atoms.pbc, bond, "ij")
    neighbours = np.unique(j[i == index])
    neighbours = neighbours - (neighbours > index)
    out = atoms.copy()
    del out[index]
    return out, neighbours


def add_interstitial(atoms: Atoms, symbol: str, position: Sequence[float]) -> tuple[Atoms, int]:
    """A copy of ``atoms`` with an extra ``symbol`` atom at ``position`` (Å).

    Returns:
        The new atoms and the index of the added atom (the last one).
    """
    out = atoms.copy()
    out.append(symbol)
    out.positions[-1] = position
    if "momenta" in atoms.arrays:
        out.arrays["momenta"][-1] = 0.0
    return out, len(out) - 1


def interstitial_position(atoms: Atoms, crystal: str, a: float, site: str) -> np.ndarray:
    """Cartesian position (Å) of an interstitial ``site`` near the cell centre.

    ``atoms`` is a cubic supercell built by :func:`cubic_supercell`; the site is taken
    in the conventional cell that holds the centre (see :data:`INTERSTITIAL_SITES`).
    """
    fraction = np.asarray(INTERSTITIAL_SITES[crystal][site])
    centre = atoms.cell.array.sum(axis=0) / 2
    corner = np.floor(centre / a) * a
    return corner + fraction * a


def vacancy_supercell(
    symbol: str, crystal: str, a: float, repeat: int, bond: float
) -> tuple[Atoms, np.ndarray]:
    """A cubic supercell of ``repeat``^3 conventional cells with atom 0 removed.

    Args:
        symbol, crystal: as in ``ase.build.bulk`` (e.g. ``"Si", "diamond"``).
        a: lattice parameter, Å.
        repeat: conventional cells per side.
        bond: Å, a distance between the first and second neighbour shells.

    Returns:
        The atoms and the indices (in the returned atoms) of the vacancy's first
        neighbours, the natural seeds of the expensive region.
    """
    return remove_atom(cubic_supercell(symbol, crystal, a, repeat), 0, bond)


def thermalize(atoms: Atoms, temperature_K: float,
               seed: int | np.random.Generator = 0) -> None:
    """Maxwell-Boltzmann momenta at ``temperature_K`` (K), zero total momentum.

    ``seed`` is an integer or a numpy Generator (to share one random stream).
    """
    thermalize_momenta(atoms, temperature_K, rng=np.random.default_rng(seed))
    Stationary(atoms)
