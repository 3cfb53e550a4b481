"""Checkpoints: the whole state of a run in one file, written atomically.

A checkpoint is a nested dict of numpy arrays and plain values (numbers, strings,
bools, None, lists, dicts): atoms (positions, momenta, identities), the region
tracker's state (weights, hysteresis history, stored seeds, classifier samples), the
random generator's state, the step, output file offsets. It is stored as one ``.npz``
file: the arrays as entries, everything else as a JSON tree in the entry ``"tree"``
that refers to the arrays by name. No pickle, so a checkpoint is readable anywhere.

Writes go to a temporary file in the same folder, are flushed to disk and renamed
over the old checkpoint, whose last version is kept beside it as
``<name>.prev.npz``: a run killed while writing, or a checkpoint damaged later, leaves
a good one to resume from (:func:`load_latest_checkpoint` falls back to it, with a
warning).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import ConfigurationError
from .rundir import give_default_mode, output_errors

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


def previous_path(path: str | Path) -> Path:
    """Where the checkpoint before ``path``'s current one is kept."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` (``.npz``) atomically; the checkpoint it replaces
    stays as :func:`previous_path`. A failed write (a full disk) raises
    :class:`~mlmix.errors.OutputError` and leaves both earlier files as they were."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    tree = _split(state, arrays)
    text = json.dumps({"format": FORMAT, "state": tree})
    with output_errors(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            give_default_mode(fd)
            with os.fdopen(fd, "wb") as fh:
                # numpy's stub types savez's **kwds as its allow_pickle flag, not arrays.
                np.savez(fh, tree=np.array(text), **arrays)  # type: ignore[arg-type]
                fh.flush()
                os.fsync(fh.fileno())
            if path.is_file():
                _keep_previous(path)
            os.replace(tmp, path)
            _sync_folder(path.parent)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _keep_previous(path: Path) -> None:
    # A hard link, renamed into place, so that `path` itself exists at every moment.
    prev = previous_path(path)
    link = prev.with_name(prev.name + ".tmp")
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
    except OSError:  # no hard links on this file system: a copy does the same
        import shutil

        shutil.copyfile(path, link)
    os.replace(link, prev)


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path) -> dict:
    """The state saved by :func:`save_checkpoint`.

    A missing, truncated or foreign file raises a one-line ConfigurationError that
    names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"no checkpoint at {str(path)!r}: nothing to resume")
    problem = None
    if path.stat().st_size == 0:
        problem = "it is empty"
    elif not zipfile.is_zipfile(path):
        problem = "it is not an npz archive (truncated, or not written by mlmix)"
    else:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files if k != "tree"}
                meta = json.loads(str(data["tree"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
                zlib.error) as exc:
            problem = f"it cannot be read ({type(exc).__name__}: {exc})".replace("\n", " ")
    if problem is None and (not isinstance(meta, dict) or meta.get("format") != FORMAT):
        found = meta.get("format") if isinstance(meta, dict) else None
        problem = f"it has checkpoint format {found!r}; this mlmix reads {FORMAT}"
    if problem is not None:
        raise ConfigurationError(f"checkpoint {path} is damaged: {problem}")
    return _join(meta["state"], arrays)


def load_latest_checkpoint(path: str | Path) -> tuple[dict, Path]:
    """The newest readable checkpoint: ``path``, or the previous one with a warning
    when ``path`` is missing or damaged.

    Returns the state and the file it came from. Raises ConfigurationError (one line
    per file tried, with what to do) when neither can be read.
    """
    path = Path(path)
    prev = previous_path(path)
    try:
        return load_checkpoint(path), path
    except ConfigurationError as exc:
        if not prev.is_file():
            raise ConfigurationError(
                f"{exc}; there is no earlier checkpoint ({prev.name}) to fall back to, so "
                "this run cannot resume: start it again with --overwrite") from None
        first = str(exc)
    try:
        state = load_checkpoint(prev)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"{first}; and the earlier {exc}: this run cannot resume, start it again "
            "with --overwrite") from None
    warnings.warn(f"{first}; resuming from the previous checkpoint {prev.name} "
                  f"(step {state.get('step')})", RuntimeWarning, stacklevel=2)
    return state, prev


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
