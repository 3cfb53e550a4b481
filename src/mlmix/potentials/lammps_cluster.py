"""The weighted energy of a LAMMPS potential on a carved cluster that follows the atoms.

Energy mixing evaluates a LAMMPS potential once per distinct weight, each call with its
list centres cut to one set S_l (:mod:`mlmix.potentials.weighted`), or once for all
weights as type copies (SW, Tersoff: :mod:`mlmix.potentials.lammps_copies`). Either way
every call pays LAMMPS's work over the whole instance (clearing forces, ghost exchange,
neighbour checks, per-atom tallies): at 4k atoms that is most of a level's cost, and it
grows with N while the weighted set does not. So the weighted atoms S are evaluated in
a second instance that holds only S plus every atom within ``cutoff + margin`` of them,
carved as a finite cluster where it fits (:func:`mlmix.carving.carve_cluster`).

Exact, not approximate: the terms owned by a centre in S read only atoms within one
cutoff of it, and the cluster keeps every atom that can come that close until some
atom has moved ``margin / 2`` since the cluster was built (the Verlet-skin argument:
two atoms closing a gap of ``margin`` must together move that far). The cluster is
rebuilt then, or when S leaves the set it was built for, or the cell, species or atom
count change. For SW and Tersoff the terms a centre owns depend on atom ids, but the
mean over an id order and its reverse (which the potential takes) does not, so the
cluster's own ids give the same energy.

Positions follow the atoms by minimum-image displacements, so atoms that an integrator
wraps back into the cell stay where the cluster needs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from ..carving import carve_cluster, within
from ..neighbours import complete_cell
from .base import Evaluation
from .lammps_frame import minimum_image, squared_minimum_image
from .weighted import WeightedEvaluation

#: Use a cluster only when it holds at most this fraction of the atoms.
MAX_FRACTION = 0.5


@dataclass
class _Cluster:
    atoms: Atoms  # the cluster (positions kept current)
    index: np.ndarray  # (n_c,) indices into the full structure
    periodic: bool  # kept in the original cell (did not fit as a finite cluster)
    built_for: np.ndarray  # (N,) bool, the weighted set it was carved around
    reference: np.ndarray  # (N, 3) full positions when it was built
    last: np.ndarray  # (n_c, 3) positions of its atoms in the full structure at the last call
    key: tuple  # cell, pbc and species of the full structure
    frame: np.ndarray  # (3, 3) the full cell, completed along open directions
    inverse: np.ndarray  # its inverse
    pbc: np.ndarray  # (3,) bool

    def min_image(self, d: np.ndarray) -> np.ndarray:
        """``(n, 3)`` displacements in the full structure, by the minimum image."""
        return minimum_image(d, self.frame, self.inverse, self.pbc)

    def spread(self, values: np.ndarray, n: int, fill: float) -> np.ndarray:
        """Per-atom ``values`` of the cluster (rows ``(n_c, ...)``) as rows of the full
        structure of ``n`` atoms, ``fill`` off the cluster."""
        out = np.full((n, *values.shape[1:]), fill)
        out[self.index] = values
        return out


class FollowingCluster:
    """The cluster of a set of atoms S (S plus every atom within ``cutoff + margin``),
    carved once and then moved with the atoms while it stays exact (module docstring).

    Args:
        cutoff: Å, range of the terms a centre owns.
        margin: Å, how far beyond the cutoff the cluster reaches.
    """

    def __init__(self, cutoff: float, margin: float):
        self.cutoff = float(cutoff)
        self.margin = float(margin)
        self.cluster: _Cluster | None = None
        self.n_builds = 0
        self._declined: tuple | None = None  # (key, members) whose cluster was too big

    def current(self, atoms: Atoms, members: np.ndarray) -> _Cluster | None:
        """The cluster of ``members`` (``(N,)`` bool) at the positions of ``atoms``, or
        None when it would hold more than :data:`MAX_FRACTION` of the atoms."""
        count = np.count_nonzero(members)
        if not 0 < count <= MAX_FRACTION * len(atoms):  # never small: no search
            return None
        cell, pbc = atoms.cell.array, np.asarray(atoms.pbc, dtype=bool)
        key = (cell.tobytes(), pbc.tobytes(), atoms.numbers.tobytes())
        c = self.cluster
        if c is not None and c.key == key and not (members & ~c.built_for).any():
            moved = squared_minimum_image(atoms.positions - c.reference, c.frame, c.inverse,
                                          c.pbc)
            if moved.max(initial=0.0) <= (0.5 * self.margin) ** 2:
                now = atoms.positions[c.index]
                if c.periodic:
                    c.atoms.positions = now
                else:
                    c.atoms.positions = c.atoms.positions + c.min_image(now - c.last)
                c.last = now
                return c
        d = self._declined
        if d is not None and d[0] == key and np.array_equal(d[1], members):
            return None  # (tried again only for another set: a search per call costs)
        keep = within(atoms.positions, cell, atoms.pbc, members, self.cutoff + self.margin)
        if keep.sum() > MAX_FRACTION * len(atoms):
            self.cluster, self._declined = None, (key, members.copy())
            return None
        sub, index, periodic = carve_cluster(atoms, keep, self.cutoff, self.cutoff + 1.0)
        frame = complete_cell(cell, pbc)
        self.cluster = _Cluster(sub, index, periodic, members.copy(), atoms.positions.copy(),
                                atoms.positions[index], key, frame, np.linalg.inv(frame), pbc)
        self.n_builds += 1
        return self.cluster


class ClusterLevels:
    """The weighted energy of one potential, on a cluster instance when that is smaller.

    Args:
        evaluate: ``evaluate(cluster_atoms, w)``, sum_i w_i E_i on the cluster by a
            second potential of the same kind (its own LAMMPS instance): its levels
            through the plugin, or its type copies.
        cutoff: Å, range of the terms a centre owns.
        margin: Å, how far beyond the cutoff the cluster reaches.
        close: closes that second potential.
    """

    def __init__(self, evaluate: Callable[[Atoms, np.ndarray], WeightedEvaluation],
                 cutoff: float, margin: float, close: Callable[[], None] = lambda: None):
        self.evaluate = evaluate
        self.close = close
        self.following = FollowingCluster(cutoff, margin)

    @property
    def n_builds(self) -> int:
        """Clusters carved so far."""
        return self.following.n_builds

    @property
    def cluster(self) -> _Cluster | None:
        """The cluster of the last call (None: it ran on the whole structure)."""
        return self.following.cluster

    def weighted(self, atoms: Atoms, w: np.ndarray,
                 fallback: Callable[[np.ndarray], WeightedEvaluation]) -> WeightedEvaluation:
        """sum_i w_i E_i on the cluster of the atoms with w > 0, or ``fallback(w)``
        (the full structure) when that cluster is not small."""
        cluster = self.following.current(atoms, w > 0)
        if cluster is None:
            return fallback(w)
        part = self.evaluate(cluster.atoms, w[cluster.index])
        return WeightedEvaluation(part.energy, cluster.spread(part.forces, len(atoms), 0.0),
                                  part.strain_derivative, part.n_evaluated, part.n_levels)


def masked_on_cluster(cluster: _Cluster, n: int, part: Evaluation) -> Evaluation:
    """A masked evaluation ``part`` of ``cluster.atoms`` as one of the full structure
    of ``n`` atoms: zero forces and NaN energies off the cluster. Exact wherever the
    cluster's is, for a potential whose terms belong to list centres (the cluster
    holds every atom within the cutoff of a centre in the mask)."""
    return Evaluation(cluster.spread(part.forces, n, 0.0),
                      cluster.spread(part.energies, n, np.nan), part.n_evaluated, part.exact)
