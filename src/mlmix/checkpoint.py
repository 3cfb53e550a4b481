"""Checkpoints: the whole state of a run in one file, written atomically.

A checkpoint is a nested dict of numpy arrays and plain values (numbers, strings,
bools, None, lists, dicts): atoms (positions, momenta, identities), the region
tracker's state (weights, hysteresis history, stored seeds, classifier samples), the
random generator's state, the step, output file offsets. It is stored as one ``.npz``
file: the arrays as entries, everything else as a JSON tree in the entry ``"tree"``
that refers to the arrays by name. No pickle, so a checkpoint is readable anywhere.

Writes go to a temporary file in the same folder and are renamed over the old
checkpoint, so a run killed while writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import ConfigurationError

FORMAT = "mlmix-checkpoint-1"


def _split(value, arrays: dict):
    if isinstance(value, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"__array__": key}
    if isinstance(value, dict):
        return {str(k): _split(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(v, arrays) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")


def _join(tree, arrays):
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            return arrays[tree["__array__"]]
        return {k: _join(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join(v, arrays) for v in tree]
    return tree


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` (``.npz``), replacing any old file atomically."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    tree = _split(state, arrays)
    text = json.dumps({"format": FORMAT, "state": tree})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, tree=np.array(text), **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict:
    """The state saved by :func:`save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"no checkpoint at {str(path)!r}: nothing to resume")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if k != "tree"}
            meta = json.loads(str(data["tree"]))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigurationError(f"{path} is not a readable mlmix checkpoint: {exc}") from None
    if meta.get("format") != FORMAT:
        raise ConfigurationError(
            f"{path} has checkpoint format {meta.get('format')!r}; this mlmix reads {FORMAT}"
        )
    return _join(meta["state"], arrays)


def atoms_state(atoms) -> dict:
    """What a checkpoint keeps of a structure: numbers, positions (Å), momenta, cell,
    pbc and the per-atom identities (``mlmix_id``)."""
    from .identity import ID_ARRAY

    return {"numbers": atoms.numbers, "positions": atoms.positions,
            "momenta": atoms.get_momenta(), "cell": atoms.cell.array, "pbc": atoms.pbc,
            "ids": atoms.arrays[ID_ARRAY]}


def atoms_from_state(state: dict, constraints=()):
    """The structure :func:`atoms_state` saved, with ``constraints`` (copied) applied."""
    from ase import Atoms

    from .identity import ID_ARRAY

    atoms = Atoms(state["numbers"], state["positions"], cell=state["cell"], pbc=state["pbc"],
                  momenta=state["momenta"])
    atoms.arrays[ID_ARRAY] = state["ids"]
    atoms.set_constraint([c.copy() for c in constraints])
    return atoms
