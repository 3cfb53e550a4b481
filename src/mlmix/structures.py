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


def near_dislocation_line(atoms: Atoms, radius: float = 2.5) -> np.ndarray:
    """Indices of the atoms within ``radius`` Å of the line of a
    :func:`bcc_screw_dislocation` (its ``core_position``, along z): the core columns,
    natural first seeds of the expensive region."""
    core = np.asarray(atoms.info["core_position"], dtype=float)
    return np.flatnonzero(np.hypot(*(atoms.positions[:, :2] - core[:2]).T) < radius)


def fixed_mask(atoms: Atoms) -> np.ndarray:
    """``(N,)`` bool: the atoms an ASE ``FixAtoms`` constraint holds."""
    from ase.constraints import FixAtoms

    mask = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            mask[c.index] = True
    return mask


def bcc_screw_dislocation(symbol: str, a: float, C11: float, C12: float, C44: float,
                          radius: float, n_burgers: int = 4,
                          fix_width: float = 6.0) -> tuple[Atoms, np.ndarray]:
    """A 1/2<111> screw dislocation in a bcc cylinder, periodic along the line (matscipy).

    The displacement field is the self-consistent anisotropic elastic solution of
    :class:`matscipy.dislocation.BCCScrew111Dislocation` (no relaxation with any
    potential). Axes: x = [11-2] (glide direction), y = [-110] (glide-plane normal),
    z = [111] (line and Burgers vector). The cell is periodic along z only
    (``pbc = (False, False, True)``), with vacuum around the cylinder.

    Args:
        symbol: element, e.g. ``"W"``.
        a: lattice parameter, Å.
        C11, C12, C44: cubic elastic constants, GPa (of the potential that will run
            the structure, so the elastic field matches it).
        radius: Å, cylinder radius around the core.
        n_burgers: the cell length along the line in Burgers vectors (>= 1).
        fix_width: Å, the outer shell ``radius - fix_width <= r`` meant to be held
            fixed (make it at least the potential's cutoff).

    Returns:
        The atoms and a ``(N,)`` bool mask of the fixed shell. ``atoms.info`` holds
        ``core_position`` (Å, (3,)), ``burgers_vector`` (Å, (3,), Cartesian),
        ``glide_distance`` (Å, between Peierls valleys along x) and ``radius``.
    """
    from .errors import ConfigurationError

    if not (np.isfinite(radius) and np.isfinite(fix_width) and 0 < fix_width < radius):
        raise ConfigurationError(
            f"need 0 < fix_width < radius (Å), got fix_width={fix_width}, radius={radius}")
    if not isinstance(n_burgers, (int, np.integer)) or n_burgers < 1:
        raise ConfigurationError(f"n_burgers must be an integer >= 1, got {n_burgers!r}")
    if not all(np.isfinite(c) and c > 0 for c in (a, C11, C44)) or not C11 > abs(C12):
        raise ConfigurationError(
            f"need a > 0 Å and elastic constants (GPa) with C11 > |C12|, C44 > 0 "
            f"(mechanically stable), got a={a}, C11={C11}, C12={C12}, C44={C44}")
    # matscipy is heavy: import at first use
    from matscipy.dislocation import BCCScrew111Dislocation

    disl = BCCScrew111Dislocation(a, C11, C12, C44, symbol=symbol)
    _, cyl, fixed = disl.build_cylinder(radius, fix_width=fix_width, method="adsl",
                                        return_fix_mask=True, verbose=False)
    core = np.asarray(cyl.info["core_positions"][0], dtype=float)
    burgers = np.asarray(cyl.info["burgers_vectors"][0], dtype=float)
    # matscipy gives b in the crystal frame; the cell's z axis is the line direction
    burgers = np.array([0.0, 0.0, np.linalg.norm(burgers)])
    atoms = cyl.repeat((1, 1, int(n_burgers)))
    fixed = np.tile(np.asarray(fixed, dtype=bool), int(n_burgers))
    atoms.set_constraint()
    atoms.pbc = (False, False, True)
    atoms.info.clear()
    atoms.info.update(core_position=core, burgers_vector=burgers,
                      glide_distance=float(disl.glide_distance), radius=float(radius))
    return atoms, fixed
