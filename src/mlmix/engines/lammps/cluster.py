"""The LAMMPS engine's region plan: which atoms the expensive potential sees, in which pieces.

On a set build rank 0 turns the regions into a *cluster*: the expensive set plus every
atom within the expensive potential's halo (cutoff + skin) of it, so that a masked
evaluation of the cluster is exact on the expensive set. The cluster is split into
*components* that lie far enough apart to be evaluated separately (each carved out
non-periodically when it fits in the cell), and the components of a rank-local backend
are dealt out to the ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from ...carving import within
from ...errors import ConfigurationError
from ...neighbours import complete_cell, neighbour_pairs, perpendicular_widths
from ...regions import Regions

# Components of the cluster that lie closer than this many (cutoff + skin) are merged,
# so that the halos of two components never share an atom.
COMPONENT_LINK = 2.0

MinImage = Callable[[np.ndarray], np.ndarray]
"""Minimum-image displacements ``(n, 3)`` -> ``(n, 3)`` Å in the engine's frame."""


@dataclass
class Plan:
    """The cluster of one set build, known to every rank.

    Attributes:
        index: ``(n,)`` int64, 0-based atom indices (tag - 1) of the cluster, sorted.
        weighted: ``(n_w,)`` int64, positions in ``index`` of the p > 0 atoms.
        p: ``(n_w,)`` their weights.
    """

    index: np.ndarray
    weighted: np.ndarray
    p: np.ndarray


@dataclass
class Component:
    """One piece of the cluster handed to the expensive potential (rank 0 side).

    Attributes:
        rows: ``(m,)`` positions in the plan's ``index``.
        mask: ``(m,)`` bool, the expensive set within the component.
        centre: ``(3,)`` Å, unwrapping centre (None: kept in the periodic cell).
        owner: rank that evaluates it (rank-local backends).
    """

    rows: np.ndarray
    mask: np.ndarray
    centre: np.ndarray | None
    owner: int = 0


def cluster_of(atoms: Atoms, regions: Regions, halo: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(n,)`` of the cluster (the expensive set and its ``halo``, Å) and the
    expensive mask ``(n,)`` within it."""
    if not np.isfinite(halo):  # pragma: no cover - potentials always have a cutoff
        raise ConfigurationError("the expensive potential has no finite cutoff")
    expensive = regions.expensive
    if expensive.all():
        members = expensive.copy()
    else:
        members = within(atoms.positions, atoms.cell.array, atoms.pbc, expensive, halo)
    index = np.flatnonzero(members)
    return index, expensive[index]


def split_components(atoms: Atoms, index: np.ndarray, mask: np.ndarray, halo: float,
                     link: float, min_image: MinImage, ranks: int) -> list[Component]:
    """Components of the cluster ``index`` (expensive atoms closer than ``link`` Å
    joined), each carved out non-periodically when it fits, dealt to ``ranks``.

    ``link`` must be at least 2 x ``halo`` (then a halo atom's expensive neighbours
    all belong to one component).
    """
    cell, pbc = atoms.cell.array, np.asarray(atoms.pbc)
    x = atoms.positions[index]
    if len(index) == 0:
        return []
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    core = np.flatnonzero(mask)
    i, j = neighbour_pairs(x[core], cell, pbc, link, "ij")
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(len(core), len(core)))
    n_comp, core_label = connected_components(graph, directed=False)
    # A halo atom lies within `halo` of some expensive atom, and expensive atoms of
    # two components lie more than 2 x halo apart: all its expensive neighbours
    # belong to one component, which it joins.
    label = np.full(len(index), -1)
    label[core] = core_label
    hi, hj = neighbour_pairs(x, cell, pbc, halo, "ij")
    near = ~mask[hi] & mask[hj]
    label[hi[near]] = label[hj[near]]
    widths = perpendicular_widths(complete_cell(cell, pbc))
    comps = []
    for c in range(n_comp):
        rows = np.flatnonzero(label == c)
        centre = x[rows[mask[rows]][0]]
        d = min_image(x[rows] - centre)
        span = d.max(axis=0) - d.min(axis=0)
        fits = not pbc.any() or bool(np.all((span + 2 * halo < widths)[pbc]))
        comps.append(Component(rows, mask[rows], centre if fits else None))
    if not all(c.centre is not None for c in comps) and len(comps) > 1:
        # one periodic piece: keep the cell, evaluate everything together
        comps = [Component(np.arange(len(index)), mask, None)]
    # rank-local backends: deal components to ranks, largest first
    load = np.zeros(ranks)
    for comp in sorted(comps, key=lambda c: -len(c.rows)):
        comp.owner = int(np.argmin(load))
        load[comp.owner] += len(comp.rows)
    return comps


def component_atoms(atoms: Atoms, index: np.ndarray, comp: Component, x: np.ndarray,
                    min_image: MinImage) -> Atoms:
    """The structure of one component at cluster positions ``x`` ``(n, 3)`` Å.

    ``atoms`` is the whole structure (rank 0's copy), ``index`` the plan's cluster.
    """
    numbers = atoms.numbers[index[comp.rows]]
    y = x[comp.rows]
    if comp.centre is None:
        return Atoms(numbers=numbers, positions=y, cell=atoms.cell.array, pbc=atoms.pbc)
    y = comp.centre + min_image(y - comp.centre)
    # No cell: LAMMPS shrink-wraps the component, so a fixed cell keeps the
    # expensive backend's instance alive between steps.
    return Atoms(numbers=numbers, positions=y, pbc=False)


def merge_components(payload: list[tuple[Component, Atoms]]
                     ) -> tuple[Atoms, np.ndarray, np.ndarray]:
    """All components as one structure for a collective LAMMPS evaluation, with their
    cluster rows and expensive mask."""
    comps = [c for c, _ in payload]
    parts = [a for _, a in payload]
    if len(parts) == 1:
        return parts[0], comps[0].rows, comps[0].mask
    # split_components guarantees: several components are all non-periodic and lie
    # more than two halos apart, so placing each at its own unwrapped image is exact.
    numbers = np.concatenate([a.numbers for a in parts])
    positions = np.concatenate([a.positions for a in parts])
    rows = np.concatenate([c.rows for c in comps])
    mask = np.concatenate([c.mask for c in comps])
    return Atoms(numbers=numbers, positions=positions, pbc=False), rows, mask
