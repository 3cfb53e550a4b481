"""Neighbour search under periodic (also triclinic) and open boundaries.

Thin wrappers over vesin, the fastest neighbour-list library that installs here
(about 0.5 s for 10^5 atoms). All distances are Å. Cell rows are the lattice vectors
(ASE convention); a periodic image of atom j is ``x_j + S @ cell``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ase.cell import Cell
from scipy.spatial import cKDTree

from .errors import ConfigurationError


def _box(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    # vesin ignores the box along open directions but rejects a singular box when
    # some direction is periodic; ASE gives zero vectors for open, cell-less axes.
    cell = np.asarray(cell, dtype=float)
    return cell if np.any(pbc) else np.zeros((3, 3))


def neighbour_pairs(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc,
    cutoff: float,
    quantities: str = "ijd",
) -> list[np.ndarray]:
    """All ordered pairs (i, j, image) with ``|x_j + S·cell - x_i| < cutoff``.

    Args:
        positions: ``(n, 3)`` Å.
        cell: ``(3, 3)`` Å, rows are lattice vectors.
        pbc: bool or three bools.
        cutoff: Å.
        quantities: any of ``i j S d D`` as in vesin; ``i``, ``j`` are returned as
            int64, ``S`` as ``(n_pairs, 3)`` int, ``d`` Å, ``D`` ``(n_pairs, 3)`` Å.

    Returns:
        The requested arrays. A pair appears once per periodic image within the
        cutoff, in both orders (a full list); self-images (i == j, S != 0) appear
        when the cell is small.
    """
    positions = np.ascontiguousarray(positions, dtype=float)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if len(positions) == 0:
        empty: dict[str, np.ndarray] = {"i": np.zeros(0, np.int64), "j": np.zeros(0, np.int64),
                 "S": np.zeros((0, 3), np.int32), "d": np.zeros(0), "D": np.zeros((0, 3))}
        return [empty[q] for q in quantities]
    # vesin imports torch when torch is installed (1-2 s): import at first use.
    import vesin

    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    out = nl.compute(positions, _box(cell, pbc), [bool(p) for p in pbc], quantities)
    return [a.astype(np.int64) if q in "ij" else a for q, a in zip(quantities, out)]


def dilate(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc,
    members: np.ndarray,
    radius: float,
    candidates: np.ndarray | None = None,
) -> np.ndarray:
    """Atoms within ``radius`` of any member (members included), as a bool mask.

    Args:
        positions: ``(N, 3)`` Å.
        members: ``(N,)`` bool.
        radius: Å; distances are minimum-image and strict (``d < radius``).
        candidates: optional ``(N,)`` bool, a superset of the answer; only these atoms
            enter the neighbour search, which keeps it cheap for large systems.
    """
    out = members.copy()
    if radius <= 0 or not members.any():
        return out
    idx = np.flatnonzero(candidates if candidates is not None else np.ones(len(out), bool))
    i, j = neighbour_pairs(positions[idx], cell, pbc, radius, "ij")
    hit = members[idx][i]
    out[idx[j[hit]]] = True
    return out


def perpendicular_widths(cell: np.ndarray) -> np.ndarray:
    """Distances between opposite faces of the cell, ``(3,)`` Å.

    Width k is ``V / |a_l x a_m|``, the extent of the cell along the normal of the
    face spanned by the other two lattice vectors. A displacement with fractional
    component ``ds_k`` has a Cartesian length of at least ``|ds_k| * width_k``.
    """
    cell = np.asarray(cell, dtype=float)
    volume = abs(np.linalg.det(cell))
    cross = np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]])
    return volume / np.linalg.norm(cross, axis=1)


def complete_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """A non-singular ``(3, 3)`` frame for fractional coordinates (Å).

    Open directions may carry a zero (or any) cell vector in ASE; missing vectors are
    completed with orthogonal ones. A periodic direction with a zero vector, or a
    singular cell, is a ConfigurationError.
    """
    full = Cell(np.asarray(cell, dtype=float)).complete().array
    if abs(np.linalg.det(full)) < 1e-12:
        raise ConfigurationError(
            f"the cell {np.asarray(cell).tolist()} is singular; give three independent "
            "lattice vectors (rows, Å) for a periodic structure"
        )
    for k in np.flatnonzero(pbc):
        if not np.linalg.norm(np.asarray(cell, dtype=float)[k]) > 0:
            raise ConfigurationError(
                f"direction {k} is periodic but its cell vector is zero; set the cell "
                "or make that direction non-periodic"
            )
    return full


def pair_finder(
    positions: np.ndarray, cell: np.ndarray, pbc, targets: np.ndarray
) -> Callable[[np.ndarray, float], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Prepare repeated "which targets lie near these sources" queries.

    Builds one k-d tree over the target atoms (wrapped into the cell); each query then
    costs O(sources * neighbours), independent of N. This is what region building
    needs: few sources (seeds, core), one candidate set of targets.

    Args:
        positions: ``(N, 3)`` Å.
        cell: ``(3, 3)`` Å, rows are lattice vectors.
        pbc: bool or three bools.
        targets: ``(m,)`` int indices of the atoms that may be found.

    Returns:
        ``find(sources, radius) -> (i, j, d)``: for ``sources`` (int indices), every
        pair with ``i`` a source, ``j`` a target and ``d < radius`` Å the distance of
        some periodic image (each image within range is listed once, so a pair may
        repeat in a small cell; the minimum over repeats is the minimum-image
        distance).
    """
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    targets = np.asarray(targets, dtype=np.int64)
    frame = complete_cell(cell, pbc) if pbc.any() else np.eye(3)
    inverse = np.linalg.inv(frame)

    def wrap(x: np.ndarray) -> np.ndarray:
        if not pbc.any():
            return x
        frac = x @ inverse
        frac[:, pbc] %= 1.0
        return frac @ frame

    tree = cKDTree(wrap(positions[targets]))
    widths = perpendicular_widths(frame)

    def find(sources: np.ndarray, radius: float):
        sources = np.asarray(sources, dtype=np.int64)
        if radius <= 0 or sources.size == 0 or targets.size == 0:
            empty = np.zeros(0, np.int64)
            return empty, empty, np.zeros(0)
        reach = np.where(pbc, np.ceil(radius / widths), 0).astype(int)
        shifts = np.stack(
            np.meshgrid(*[np.arange(-m, m + 1) for m in reach], indexing="ij"), -1
        ).reshape(-1, 3)
        images = (wrap(positions[sources])[:, None, :] + (shifts @ frame)[None]).reshape(-1, 3)
        hits = cKDTree(images).sparse_distance_matrix(tree, radius, output_type="ndarray")
        keep = hits["v"] < radius
        hits = hits[keep]
        return sources[hits["i"] // len(shifts)], targets[hits["j"]], hits["v"]

    return find
