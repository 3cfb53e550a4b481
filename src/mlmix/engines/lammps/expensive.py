"""The LAMMPS engine's expensive evaluation of the cluster's components.

A :class:`~mlmix.potentials.lammps.LammpsPotential` is *collective*: its LAMMPS
instances span every rank, so all ranks evaluate the merged components together and
LAMMPS decomposes the work. Any other backend (ACE, ASE calculators, torch models) is
*rank-local*: each rank evaluates the components dealt to it
(:func:`~mlmix.engines.lammps.cluster.split_components`) and rank 0 gathers the forces.
Either way an error anywhere is raised on every rank.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms

from ...errors import ConfigurationError, MlmixError
from ...potentials.base import Potential
from .cluster import Component, merge_components
from .comm import as_mlmix_error, raise_shared

Payload = list[tuple[Component, Atoms]]


def _checked(expensive: Potential, atoms: Atoms, mask: np.ndarray,
             allow_approximate: bool) -> tuple[np.ndarray, int]:
    """Forces ``(m, 3)`` eV/Å of a masked evaluation and the atoms it evaluated;
    an approximate evaluation is refused unless allowed."""
    ev = expensive.evaluate(atoms, mask, energies=False)
    if not ev.exact and not allow_approximate:
        raise ConfigurationError(
            f"{expensive.name} evaluated the expensive set approximately; widen "
            "its buffer, use a masked backend, or pass allow_approximate=True")
    return ev.forces, ev.n_evaluated


def evaluate_components(comm: Any, expensive: Potential, payload: Payload | None, n: int,
                        err: MlmixError | None, *, collective: bool,
                        allow_approximate: bool) -> tuple[np.ndarray | None, int]:
    """Expensive forces ``(n, 3)`` eV/Å of the cluster on rank 0 (valid on the weighted
    rows) and the number of atoms evaluated; ``(None, 0)`` on the other ranks.

    Args:
        payload: rank 0's components with their structures (None elsewhere).
        n: cluster size.
        err: an error rank 0 met while preparing ``payload`` (raised on every rank).

    Raises:
        MlmixError: on every rank when any rank failed.
    """
    if n == 0:  # no expensive atoms (a classifier that found nothing)
        raise_shared(comm, err)
        return np.zeros((0, 3)), 0
    root = comm.rank == 0
    if collective:
        # One LAMMPS evaluation of all components together, on every rank; LAMMPS
        # errors in it are raised on all ranks alike.
        job = None
        if root and err is None and payload is not None:
            try:
                job = merge_components(payload)
            except Exception as exc:  # noqa: BLE001
                err = as_mlmix_error(exc)
        job, err = comm.bcast((job, err), root=0)
        if err is not None:
            raise err
        atoms, rows, mask = job
        forces, n_eval = _checked(expensive, atoms, mask, allow_approximate)
        if not root:
            return None, 0
        fe = np.zeros((n, 3))
        fe[rows] = forces
        return fe, n_eval
    jobs, err = comm.bcast((payload, err), root=0)
    if err is not None:
        raise err
    mine: list = []
    try:
        for comp, atoms in jobs:
            if comp.owner == comm.rank:
                mine.append((comp.rows, _checked(expensive, atoms, comp.mask,
                                                 allow_approximate)))
    except Exception as exc:  # noqa: BLE001 - shared below, never a hang
        err = as_mlmix_error(exc)
    results = comm.gather((mine, err), root=0)
    first = next((e for _, e in results if e is not None), None) if root else None
    raise_shared(comm, first)
    if not root:
        return None, 0
    fe = np.zeros((n, 3))
    n_eval = 0
    for part, _ in results:
        for rows, (forces, k) in part:
            fe[rows] = forces
            n_eval += k
    return fe, n_eval
