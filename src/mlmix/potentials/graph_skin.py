"""A message-passing model's cluster graph, reused between steps within a skin.

A masked evaluation of a message-passing model (method.md §3) needs the atoms within
one receptive field R of the mask M and the edges shorter than the model's cutoff r_c
among them. Carving that cluster and searching its edges costs about as much as a
fifth of the model itself on a CPU. As with a Verlet list, both are built once with a
margin, the skin s: the cluster holds every atom within R + s of M and the candidate
edges every pair within r_c + s. While no atom has moved more than s/2 since (and
the mask, the cell and the species are the same), every atom within R of M and every
pair within r_c is among them, so each call only

- moves the cluster's atoms by their displacements (minimum image),
- keeps the candidate edges now shorter than r_c,
- keeps, of those, the edges into atoms whose features can still reach M: the mask
  and every atom within ``hops = n_layers - 1`` edges of it (the messages of layer l
  matter only into atoms at most n_layers - l edges from M), and
- keeps the atoms those edges touch, plus M.

The result is exactly the graph a fresh carve would give, up to the order of edges
(and without atoms no kept edge touches, which carry nothing to M). Units: Å.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms

from ..carving import carve_cluster, within
from .lammps_frame import minimum_image


@dataclass(frozen=True)
class SkinGraph:
    """A cluster and its candidate edges, built for one mask at one configuration.

    Attributes:
        mask: ``(n,)`` bool, the mask it was carved for.
        numbers: ``(n,)`` atomic numbers of the structure.
        cell: ``(3, 3)`` Å; pbc ``(3,)`` bool.
        reference: ``(n, 3)`` Å, the structure's positions at the build.
        cluster: the carved cluster (its positions in its own frame, Å).
        index: ``(n_c,)`` the cluster's atoms in the structure.
        inside: ``(n_c,)`` bool, the cluster's atoms of the mask.
        senders, receivers: ``(n_e,)`` candidate edges (cluster indices), a message
            from ``senders[e]`` into ``receivers[e]``, both directions listed.
        shifts: ``(n_e, 3)`` Å, periodic shift: the edge vector is
            ``x[receivers] - x[senders] + shifts``.
        skin: Å.
        model_data: whatever the model's neighbour list returned with the edges (its
            own graph of the cluster).
    """

    mask: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    reference: np.ndarray
    cluster: Atoms
    index: np.ndarray
    inside: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    shifts: np.ndarray
    skin: float
    model_data: object = None

    def displacement(self, atoms: Atoms, mask: np.ndarray) -> np.ndarray | None:
        """``(n, 3)`` Å displacements since the build when the graph still holds for
        ``atoms`` and ``mask`` (no atom moved s/2 or more, nothing else changed), else
        None."""
        if (len(atoms) != len(self.mask) or not np.array_equal(mask, self.mask)
                or not np.array_equal(atoms.numbers, self.numbers)
                or not np.array_equal(atoms.cell.array, self.cell)
                or not np.array_equal(atoms.pbc, self.pbc)):
            return None
        d = atoms.positions - self.reference
        if self.pbc.any():
            d = minimum_image(d, self.cell, np.linalg.inv(self.cell), self.pbc)
        if np.einsum("ij,ij->i", d, d).max(initial=0.0) >= (0.5 * self.skin) ** 2:
            return None
        return d


def build_skin_graph(atoms: Atoms, mask: np.ndarray, field: float, cutoff: float,
                     skin: float, vacuum: float, edges) -> SkinGraph:
    """Carve the atoms within ``field + skin`` Å of ``mask`` and list their pairs within
    ``cutoff + skin``.

    Args:
        atoms: the structure; mask: ``(n,)`` bool.
        field: Å, the receptive field R; cutoff: Å, one edge's range r_c.
        skin: Å, >= 0. vacuum: Å, padding of a non-periodic cluster's box.
        edges: ``edges(cluster, radius) -> (senders, receivers, shifts, model_data)``,
            the model's own neighbour list (so its conventions hold).
    """
    keep = within(atoms.positions, atoms.cell.array, atoms.pbc, mask, field + skin)
    cluster, index, _ = carve_cluster(atoms, keep, cutoff + skin, vacuum)
    senders, receivers, shifts, model_data = edges(cluster, cutoff + skin)
    return SkinGraph(mask=mask.copy(), numbers=atoms.numbers.copy(),
                     cell=atoms.cell.array.copy(), pbc=np.array(atoms.pbc, dtype=bool),
                     reference=atoms.positions.copy(), cluster=cluster, index=index,
                     inside=mask[index], senders=np.asarray(senders),
                     receivers=np.asarray(receivers), shifts=np.asarray(shifts),
                     skin=float(skin), model_data=model_data)


def active_graph(positions: np.ndarray, graph: SkinGraph, cutoff: float, hops: int):
    """The part of ``graph`` a masked evaluation needs at cluster ``positions``.

    Args:
        positions: ``(n_c, 3)`` Å, the cluster's atoms now.
        cutoff: Å, r_c; hops: ``n_layers - 1``.

    Returns:
        ``(nodes, edges, senders, receivers)``: ``(m,)`` cluster indices of the atoms
        kept (ascending, the mask's among them), ``(k,)`` indices of the candidate
        edges kept, and their ends renumbered into ``nodes``.
    """
    s, r = graph.senders, graph.receivers
    vectors = positions[r] - positions[s] + graph.shifts
    short = np.flatnonzero(np.einsum("ij,ij->i", vectors, vectors) < cutoff * cutoff)
    s_short, r_short = s[short], r[short]
    needed = graph.inside.copy()  # atoms whose features reach the mask
    for _ in range(hops):
        grown = needed.copy()
        grown[s_short[needed[r_short]]] = True
        if np.array_equal(grown, needed):
            break
        needed = grown
    kept = needed[r_short]
    edges = short[kept]
    used = graph.inside.copy()
    used[s_short[kept]] = True
    used[r_short[kept]] = True
    nodes = np.flatnonzero(used)
    renumber = np.cumsum(used) - 1
    return nodes, edges, renumber[s[edges]], renumber[r[edges]]
