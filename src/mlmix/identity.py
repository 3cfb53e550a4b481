"""Atom identity: per-atom values that follow atoms, not array slots.

ASE keeps every per-atom array through slicing, deletion, sorting and ``extend``, so an
integer array ``mlmix_id`` on ``Atoms.arrays`` marks each atom for the whole run. New
atoms (added without an id, which ASE fills with 0) get fresh ids.

Identity is also what tells one structure from another: atoms of which a
:class:`~mlmix.regions.RegionTracker` knows no id (a structure built again, which has
no ``mlmix_id``) are a new structure and start afresh, while ``atoms.copy()`` keeps
the ids and so continues the same run.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from .errors import ConfigurationError

ID_ARRAY = "mlmix_id"
"""Name of the per-atom integer array that carries atom identity (0 = not yet named)."""


def ensure_ids(atoms: Atoms, next_id: int) -> tuple[np.ndarray, int]:
    """Give every atom a unique positive ``mlmix_id`` (kept by ASE through slicing,
    deletion and reordering); atoms without one (id 0, e.g. just added) get fresh ids.

    Returns the ids and the next unused id.
    """
    n = len(atoms)
    ids = atoms.arrays.get(ID_ARRAY)
    if ids is None:
        ids = np.zeros(n, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64).copy()
    next_id = max(next_id, int(ids.max(initial=0)) + 1)
    fresh = ids <= 0
    ids[fresh] = np.arange(next_id, next_id + fresh.sum())
    next_id += int(fresh.sum())
    if np.unique(ids).size != n:
        raise ConfigurationError(
            f"the per-atom array '{ID_ARRAY}' has repeated ids; it marks atom identity, "
            "so copy atoms with atoms.copy() and give new atoms id 0"
        )
    atoms.arrays[ID_ARRAY] = ids
    return ids, next_id


def values_by_id(
    old_ids: np.ndarray, old_values: np.ndarray, new_ids: np.ndarray, fill
) -> tuple[np.ndarray, np.ndarray]:
    """Carry per-atom values from one atom list to another by identity.

    Returns the values aligned with ``new_ids`` (``fill`` for unknown ids) and a bool
    mask of the ids that were known.
    """
    order = np.argsort(old_ids, kind="stable")
    sorted_ids = old_ids[order]
    pos = np.searchsorted(sorted_ids, new_ids)
    pos = np.minimum(pos, max(len(sorted_ids) - 1, 0))
    known = (sorted_ids[pos] == new_ids) if len(sorted_ids) else np.zeros(len(new_ids), bool)
    shape = (len(new_ids),) + old_values.shape[1:]
    out = np.full(shape, fill, dtype=old_values.dtype)
    out[known] = old_values[order[pos[known]]]
    return out, known
