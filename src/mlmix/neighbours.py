"""Neighbour search under periodic (also triclinic) and open boundaries.

Thin wrappers over vesin, the fastest neighbour-list library that installs here
(about 0.5 s for 10^5 atoms). All distances are Å. Cell rows are the lattice vectors
(ASE convention); a periodic image of atom j is ``x_j + S @ cell``.
"""

from __future__ import annotations

import numpy as np
import vesin


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
        empty = {"i": np.zeros(0, np.int64), "j": np.zeros(0, np.int64),
                 "S": np.zeros((0, 3), np.int32), "d": np.zeros(0), "D": np.zeros((0, 3))}
        return [empty[q] for q in quantities]
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
