"""How far an atom's environment lies outside what a linear cheap model was fitted on.

The grade is the D-optimality extrapolation grade of linear MTP and ACE active learning
(Podryabinkin & Shapeev, Comput. Mater. Sci. 140, 171 (2017); Lysogorskiy et al., npj
Comput. Mater. 9, 225 (2023)), applied to the per-atom energy rows of a
:class:`~mlmix.fitting.model.LinearModel` (the atom's descriptors: row i @ c is the
energy of atom i). For each species s:

1. The pool is the per-atom rows ``X_s`` ``(M_s, p)`` of every training atom of species
   s, each column divided by its root mean square over the pool (the grade does not
   depend on this scaling; it keeps the numbers well conditioned), plus ``p`` "prior"
   rows ``delta * e_k`` (``delta`` = :data:`PRIOR`). The prior rows stand for the
   directions the training data never explored (a column that is zero in every training
   atom, such as a W-He pair column of a W-only fit): a component ``z_k`` along such a
   direction costs ``|z_k| / delta``.
2. The active set ``A_s`` is the ``p`` pool rows of (locally) maximal volume ``|det|``,
   found by the maxvol algorithm (:func:`maxvol`; Goreinov et al. 2010).
3. The grade of an atom with scaled row ``x`` is ``gamma = max_j |(x A_s^-1)_j|``: the
   largest coefficient needed to write x as a combination of the active environments.
   Every pool row, so every training environment, has ``gamma <= TOLERANCE`` (1.01):
   ``gamma <= 1`` is interpolation, ``gamma >> 1`` extrapolation. It is invariant
   to any invertible linear map of the descriptors.

Default threshold: the 99.9th percentile of the grades of the fit's held-out (test)
frames, never below :data:`TOLERANCE`, so that no training environment is graded above
it and environments like the held-out ones rarely are.

File ``<stem>.uncertainty.npz`` (written by ``mlmix fit`` beside ``<stem>.uf3``,
``<stem>.snapcoeff`` or ``<stem>.yace``; ``numpy.load`` reads it, no pickles):

- ``meta``: a JSON string: ``format`` (``"mlmix-uncertainty/1"``), ``model`` (the
  fit's ``[model]`` table with ``species``, enough to rebuild the featuriser),
  ``potential_files`` (name -> sha256 of each potential file it belongs to),
  ``species``, ``threshold``, ``tolerance``, ``prior``, ``heldout`` (count and
  percentiles of the held-out grades) and, per species, ``n_training`` and
  ``training_max``;
- per species s: ``scale_<s>`` ``(p,)`` column scales and ``inverse_<s>`` ``(p, p)``
  the inverse of the active set, in scaled columns.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
from ase import Atoms

from ..errors import ConfigurationError
from .model import LinearModel

__all__ = ["FORMAT", "PRIOR", "SUFFIX", "TOLERANCE", "SpeciesGrade", "Uncertainty",
           "build_uncertainty", "extrapolation_grade", "file_beside", "maxvol",
           "uncertainty_summary"]

FORMAT = "mlmix-uncertainty/1"
SUFFIX = ".uncertainty.npz"
TOLERANCE = 1.01
"""maxvol stops when no pool row needs a coefficient above this (the usual 1.01)."""
PRIOR = 1e-6
"""Size of the prior rows, in units of a column's training root mean square."""


# ----------------------------------------------------------------------- pure functions


def maxvol(rows: np.ndarray, tol: float = TOLERANCE, max_iter: int | None = None) -> np.ndarray:
    """Indices of ``p`` rows of ``rows`` ``(M, p)`` spanning a (locally) maximal volume.

    Starts from the pivots of a column-pivoted QR of ``rows.T`` and swaps one row at a
    time while some row needs a coefficient above ``tol`` (rank-one updates of
    ``rows @ inv(A)``, O(M p) per swap); each swap multiplies ``|det A|`` by more than
    ``tol``, so it ends.

    Raises:
        ConfigurationError: if ``rows`` has fewer rows than columns or is rank
            deficient (no active set exists).
    """
    m, p = rows.shape
    if m < p:
        raise ConfigurationError(f"maxvol needs at least as many rows as columns, got {m} x {p}")
    piv = scipy.linalg.qr(rows.T, mode="r", pivoting=True)[1]
    idx = np.array(piv[:p])
    try:
        b = np.linalg.solve(rows[idx].T, rows.T).T  # rows @ inv(A)
    except np.linalg.LinAlgError:
        raise ConfigurationError("the descriptor rows are rank deficient: no active set "
                                 "spans them") from None
    for _ in range(max_iter if max_iter is not None else 100 * p):
        i, j = np.unravel_index(np.argmax(np.abs(b)), b.shape)
        if abs(b[i, j]) <= tol:
            break
        col = b[:, j].copy()
        row = b[i].copy()
        row[j] -= 1.0
        b -= np.outer(col, row / b[i, j])
        idx[j] = i
    return idx


def extrapolation_grade(scaled_rows: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """``(N,)`` grades ``max_j |(x A^-1)_j|`` of ``scaled_rows`` ``(N, p)`` against an
    active set with inverse ``inverse`` ``(p, p)``."""
    if len(scaled_rows) == 0:
        return np.zeros(0)
    return np.abs(scaled_rows @ inverse).max(axis=1)


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def file_beside(potential_file: str | os.PathLike) -> Path:
    """Where ``mlmix fit`` puts the uncertainty file of a potential file:
    ``W_uf3.uf3`` -> ``W_uf3.uncertainty.npz`` in the same folder."""
    p = Path(potential_file)
    return p.with_name(p.stem + SUFFIX)


# ----------------------------------------------------------------------- the model


@dataclass(frozen=True)
class SpeciesGrade:
    """The active set of one species.

    Attributes:
        scale: ``(p,)`` column scales (root mean square over the training atoms; 1 for
            columns that are zero in all of them).
        inverse: ``(p, p)`` inverse of the active set, in scaled columns.
        n_training: training atoms of this species.
        training_max: largest grade of a training atom (<= the maxvol tolerance).
    """

    scale: np.ndarray
    inverse: np.ndarray
    n_training: int
    training_max: float

    def grade(self, rows: np.ndarray) -> np.ndarray:
        """``(N,)`` grades of per-atom rows ``(N, p)`` of atoms of this species."""
        return extrapolation_grade(rows / self.scale, self.inverse)


def species_grade(rows: np.ndarray, tol: float = TOLERANCE) -> SpeciesGrade:
    """The active set of the per-atom training rows ``(M, p)`` of one species."""
    rms = np.sqrt(np.mean(rows**2, axis=0)) if len(rows) else np.zeros(rows.shape[1])
    scale = np.where(rms > 0, rms, 1.0)
    scaled = rows / scale
    p = rows.shape[1]
    pool = np.vstack([scaled, PRIOR * np.eye(p)])
    inverse = np.linalg.inv(pool[maxvol(pool, tol)])
    grades = extrapolation_grade(scaled, inverse)
    return SpeciesGrade(scale, inverse, len(rows), float(grades.max()) if len(rows) else 0.0)


@dataclass
class Uncertainty:
    """Per-atom extrapolation grades of one fitted linear cheap model.

    Build it with :func:`build_uncertainty` (``mlmix fit`` does), store it with
    :meth:`save`, read it with :meth:`load`; :meth:`grade` grades a structure.

    Attributes:
        model_spec: the fit's ``[model]`` table, with ``species``.
        species: per element symbol, its :class:`SpeciesGrade`.
        threshold: default seed threshold on the grade (dimensionless).
        heldout: count and percentiles of the held-out grades (empty without any).
        potential_files: potential file name -> sha256 of its bytes.
    """

    model_spec: dict
    species: dict[str, SpeciesGrade]
    threshold: float
    heldout: dict = field(default_factory=dict)
    potential_files: dict[str, str] = field(default_factory=dict)
    _model: LinearModel | None = field(default=None, init=False, repr=False)

    @property
    def model(self) -> LinearModel:
        """The featuriser, rebuilt from :attr:`model_spec` on first use."""
        if self._model is None:
            from .pipeline import make_model

            self._model = make_model(self.model_spec, list(self.model_spec["species"]))
        return self._model

    def close(self) -> None:
        """Release the featuriser (a LAMMPS instance for SNAP); idempotent."""
        if self._model is not None:
            getattr(self._model, "close", lambda: None)()
            self._model = None

    def grade_rows(self, rows: np.ndarray, symbols: Sequence[str]) -> np.ndarray:
        """``(N,)`` grades of per-atom rows ``(N, p)`` of atoms with ``symbols``."""
        names = np.asarray(symbols)
        out = np.full(len(rows), np.inf)  # a species no training atom had
        for s, g in self.species.items():
            sel = names == s
            out[sel] = g.grade(rows[sel])
        return out

    def __call__(self, atoms: Atoms) -> np.ndarray:
        """The :meth:`grade` (so that this is a seed quantity, :mod:`mlmix.seeds`)."""
        return self.grade(atoms)

    def grade(self, atoms: Atoms) -> np.ndarray:
        """``(N,)`` extrapolation grade of every atom of ``atoms`` (dimensionless; at
        most 1.01 for the training environments, inf for a species the model
        describes but no training atom had)."""
        symbols = atoms.get_chemical_symbols()
        described = self.model_spec["species"]
        missing = sorted(set(symbols) - set(described))
        if missing:
            raise ConfigurationError(
                f"the cheap model describes {sorted(described)}; the structure also "
                f"holds {missing}, so it cannot be graded (nor run with this cheap model)")
        return self.grade_rows(self.model.per_atom_rows(atoms), symbols)

    # -- file --------------------------------------------------------------------------

    def meta(self) -> dict:
        """The JSON part of the file (see the module docstring)."""
        return {"format": FORMAT, "model": self.model_spec,
                "potential_files": self.potential_files, "species": list(self.species),
                "threshold": self.threshold, "tolerance": TOLERANCE, "prior": PRIOR,
                "heldout": self.heldout,
                "per_species": {s: {"n_training": g.n_training, "training_max": g.training_max}
                                for s, g in self.species.items()}}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ``.npz`` (to a temporary name, then renamed); returns its path."""
        path = Path(path)
        arrays: dict[str, Any] = {"meta": np.array(json.dumps(self.meta()))}
        for s, g in self.species.items():
            arrays[f"scale_{s}"] = g.scale
            arrays[f"inverse_{s}"] = g.inverse
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Uncertainty:
        """Read a file :meth:`save` wrote.

        Raises:
            ConfigurationError: for a missing file or one that is not an mlmix
                uncertainty file (names the file and what to do).
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigurationError(
                f"no uncertainty file {path}: `mlmix fit` writes <stem>{SUFFIX} beside the "
                "potential it fits; fit the cheap potential with `mlmix fit`, or name the "
                "file it wrote")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("format") != FORMAT:
                    raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
                species = {
                    s: SpeciesGrade(np.array(data[f"scale_{s}"]), np.array(data[f"inverse_{s}"]),
                                    int(meta["per_species"][s]["n_training"]),
                                    float(meta["per_species"][s]["training_max"]))
                    for s in meta["species"]}
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise ConfigurationError(f"{path} is not an mlmix uncertainty file ({exc}); "
                                     "re-run `mlmix fit` to write it again") from None
        return cls(meta["model"], species, float(meta["threshold"]), meta.get("heldout", {}),
                   meta.get("potential_files", {}))

    def check_potential(self, potential_file: str | os.PathLike, where: str) -> None:
        """Refuse a potential file other than the one this model was fitted with."""
        p = Path(potential_file)
        if self.potential_files.get(p.name) != file_digest(p):
            raise ConfigurationError(
                f"{where}: the uncertainty file was written for "
                f"{sorted(self.potential_files) or 'another potential'}, not for this {p} "
                "(a different or edited file); use the uncertainty file `mlmix fit` wrote "
                "with this potential, or fit it again")


def build_uncertainty(model: LinearModel, training: Sequence[Atoms], heldout: Sequence[Atoms] = (),
                      *, model_spec: Mapping, potential_files: Sequence[str | os.PathLike] = (),
                      percentile: float = 99.9) -> Uncertainty:
    """The active sets of ``model`` over the atoms of ``training`` frames, and the
    default threshold from the grades of ``heldout`` frames (see the module docstring).

    Args:
        model: the fitted model's featuriser.
        training: frames the model was fitted on.
        heldout: frames it was not fitted on (the fit's test set), for the threshold.
        model_spec: the ``[model]`` table that rebuilds ``model``; its species are
            ``model.species``.
        potential_files: files of the fitted potential (their digests are stored).
        percentile: of the held-out grades, for the threshold.
    """
    symbols = [np.asarray(a.get_chemical_symbols()) for a in training]
    rows = [model.per_atom_rows(a) for a in training]
    all_rows, all_symbols = np.vstack(rows), np.concatenate(symbols)
    species = {s: species_grade(all_rows[all_symbols == s]) for s in model.species
               if np.any(all_symbols == s)}
    unc = Uncertainty(dict(model_spec, species=list(model.species)), species, TOLERANCE,
                      potential_files={Path(f).name: file_digest(f) for f in potential_files})
    if heldout:
        graded = np.concatenate([unc.grade_rows(model.per_atom_rows(a), a.get_chemical_symbols())
                                 for a in heldout])
        q = {f"p{k:g}": float(np.percentile(graded, k)) for k in (50, 99, 99.9)}
        unc.heldout = {"n_atoms": int(graded.size), **q, "max": float(graded.max())}
        unc.threshold = max(TOLERANCE, float(np.percentile(graded, percentile)))
    unc._model = model
    return unc


def uncertainty_summary(unc: Uncertainty) -> str:
    """One line for the fit log: the default threshold and where it came from."""
    h = unc.heldout
    if not h:
        return (f"uncertainty: no held-out frames, so the threshold is the interpolation "
                f"bound {unc.threshold:.3g}")
    line = (f"uncertainty: threshold {unc.threshold:.3g} (99.9th percentile of "
            f"{h['n_atoms']} held-out atoms; median {h['p50']:.3g}, max {h['max']:.3g})")
    if h["max"] > 10 * TOLERANCE:
        # A held-out atom far outside the training environments: the training set does
        # not cover its own distribution, and the threshold estimate is noisy.
        line += ("; some held-out environments lie far outside the training ones: more "
                 "frames (soft.n_frames) would cover them")
    return line
