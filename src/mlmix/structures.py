"""Starting structures for demos, benchmarks and tests."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from .neighbours import neighbour_pairs


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
    atoms = bulk(symbol, crystal, a=a, cubic=True).repeat(repeat)
    i, j = neighbour_pairs(atoms.positions, atoms.cell.array, True, bond, "ij")
    neighbours = np.unique(j[i == 0]) - 1  # indices after deleting atom 0
    del atoms[0]
    return atoms, neighbours


def thermalize(atoms: Atoms, temperature_K: float,
               seed: int | np.random.Generator = 0) -> None:
    """Maxwell-Boltzmann momenta at ``temperature_K`` (K), zero total momentum.

    ``seed`` is an integer or a numpy Generator (to share one random stream).
    """
    thermalize_momenta(atoms, temperature_K, rng=np.random.default_rng(seed))
    Stationary(atoms)
