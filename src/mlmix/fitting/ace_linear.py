"""Linear ACE as a :class:`~mlmix.fitting.model.LinearModel`, through python-ace.

python-ace (pyace 0.4.0rc1) evaluates a B-basis with ``ACEBEvaluator``; its
``ACECalculator.compute(ae, compute_projections=True, compute_b_grad=True)`` returns
per atom the value of every basis function (``projections``, a list of per-species
arrays) and the force of every function (``forces_bfuncs``, ``(N, n_functions, 3)``,
already with the force sign: ``forces = forces_bfuncs @ c``). With a linear embedding
(``FinnisSinclair`` with parameters [1, 1], one density) the energy of an atom is
``sum_f c_f B_f``, so these are the design-matrix rows. The radial basis is kept
fixed (its default, orthogonal coefficients); only the function coefficients are
linear parameters.

Coefficient layout: ``[E0_s for s in species]`` (if ``one_body``, eV per atom) then
the function coefficients in pyace's global order (species by species, rank 1 first;
``ACEBBasisSet.basis_coeffs``). The written ``.yace`` holds both: the function
coefficients and the per-element ``E0`` that pyace adds to every atom's energy, so
the loaded :class:`~mlmix.potentials.ace.AcePotential` reproduces ``energy @ c``
and ``forces @ c`` exactly.

Hazard found while building this: pyace's calculator keeps a raw pointer to its
evaluator, and the evaluator to its basis. Temporaries (``ACECalculator(
ACEBEvaluator(basis))``) crash with a segmentation fault at the next ``compute``;
this module keeps every object referenced.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from ..errors import ConfigurationError, missing_dependency
from .model import DesignMatrix, LinearModel, check_frames, check_species

__all__ = ["AceLinearModel"]


def _pyace():
    try:
        import pyace
    except ImportError as exc:  # pragma: no cover - python-ace is a core dependency
        raise missing_dependency("pyace", "ace") from exc
    return pyace


class AceLinearModel(LinearModel):
    """Linear ACE (B-basis with linear embedding), design matrix from python-ace.

    Args:
        species: element symbols. pyace orders elements itself; ``self.species`` is
            that order (the order of the written file and of the one-body columns).
        cutoff: Å, radial cutoff of every bond (default 5.0).
        nradmax_by_orders: radial functions per body order (default (8, 4, 3): up
            to 4-body).
        lmax_by_orders: angular limits per body order (default (0, 3, 2)).
        radbase: radial basis name (default "SBessel").
        radparameters: parameters of the radial basis (default [5.25]).
        dcut: Å, width of the cutoff function (default 0.01).
        one_body: prepend one reference-energy column per species (default True).
        potential_config: a complete pyace ``potential_config`` dict instead of the
            arguments above (its embedding must be linear).

    Attributes:
        n_functions: number of ACE basis functions (all species).
    """

    name = "ace"

    def __init__(
        self,
        species: Sequence[str],
        cutoff: float = 5.0,
        nradmax_by_orders: Sequence[int] = (8, 4, 3),
        lmax_by_orders: Sequence[int] = (0, 3, 2),
        radbase: str = "SBessel",
        radparameters: Sequence[float] = (5.25,),
        dcut: float = 0.01,
        one_body: bool = True,
        potential_config: Mapping | None = None,
    ) -> None:
        pyace = _pyace()
        species = check_species(species)
        if not cutoff > 0:
            raise ConfigurationError(f"cutoff must be > 0 Å, got {cutoff}")
        if len(nradmax_by_orders) != len(lmax_by_orders):
            raise ConfigurationError(
                f"nradmax_by_orders {list(nradmax_by_orders)} and lmax_by_orders "
                f"{list(lmax_by_orders)} need the same length (one entry per body order)"
            )
        config: dict[str, Any] = dict(potential_config) if potential_config is not None else {
            "deltaSplineBins": 0.001,
            "elements": list(species),
            "embeddings": {"ALL": {"npot": "FinnisSinclair", "fs_parameters": [1, 1], "ndensity": 1}},
            "bonds": {"ALL": {"radbase": radbase, "radparameters": list(radparameters),
                              "rcut": float(cutoff), "dcut": float(dcut),
                              "NameOfCutoffFunction": "cos"}},
            "functions": {"ALL": {"nradmax_by_orders": list(nradmax_by_orders),
                                  "lmax_by_orders": list(lmax_by_orders)}},
        }
        for key, emb in config.get("embeddings", {}).items():
            if emb.get("npot") != "FinnisSinclair" or list(emb.get("fs_parameters", [])) != [1, 1] \
                    or emb.get("ndensity") != 1:
                raise ConfigurationError(
                    f"embedding {key!r} is not linear ({emb}); a linear ACE needs "
                    "npot FinnisSinclair, fs_parameters [1, 1], ndensity 1"
                )
        try:
            self._bconf = pyace.create_multispecies_basis_config(config)
        except Exception as exc:  # pyace raises bare ValueErrors/RuntimeErrors
            raise ConfigurationError(f"python-ace rejected the basis configuration: {exc}") from None
        self._basis = pyace.ACEBBasisSet(self._bconf)
        self.species = tuple(self._basis.elements_name)
        if set(self.species) != set(species):
            raise ConfigurationError(f"the basis describes {list(self.species)}, not {list(species)}")
        self.cutoff = float(self._basis.cutoffmax)
        self.one_body = bool(one_body)
        # Function index shift of each species: rank-1 functions, then the others.
        shifts, n = [], 0
        for r1, rest in zip(self._basis.basis_rank1, self._basis.basis):
            shifts.append(n)
            n += len(r1) + len(rest)
        self._shifts = shifts
        self.n_functions = n
        self._evaluator = pyace.ACEBEvaluator(self._basis)
        self._calculator = pyace.ACECalculator(self._evaluator)

    @property
    def n_coefficients(self) -> int:
        return self.n_functions + (len(self.species) if self.one_body else 0)

    def __repr__(self) -> str:
        return (f"AceLinearModel(species={list(self.species)}, cutoff={self.cutoff:.4g} Å, "
                f"n_functions={self.n_functions}, one_body={self.one_body})")

    def design_matrix(self, frames: Sequence[Atoms], forces: bool = True) -> DesignMatrix:
        """Rows for ``frames``: energy ``(n_frames, n_coefficients)`` (eV per unit
        coefficient), forces ``(3 * sum(n_atoms), n_coefficients)`` (eV/Å) or None."""
        from pyace.atomicenvironment import aseatoms_to_atomicenvironment

        frames = check_frames(frames, self.species, "AceLinearModel")
        n0 = len(self.species) if self.one_body else 0
        energy = np.zeros((len(frames), self.n_coefficients))
        f_rows = []
        for f, at in enumerate(frames):
            ae = aseatoms_to_atomicenvironment(at, cutoff=self.cutoff,
                                               elements_mapper_dict=self._basis.elements_to_index_map)
            self._calculator.compute(ae, compute_projections=True, compute_b_grad=forces)
            types = np.asarray(ae.species_type)[: len(at)]
            for s, proj in zip(types, self._calculator.projections):
                start = n0 + self._shifts[s]
                energy[f, start : start + len(proj)] += proj
            if self.one_body:
                energy[f, :n0] = np.bincount(types, minlength=n0)
            if forces:
                fb = np.asarray(self._calculator.forces_bfuncs)[: len(at)]  # (N, n_functions, 3)
                rows = np.zeros((3 * len(at), self.n_coefficients))
                rows[:, n0:] = fb.transpose(0, 2, 1).reshape(3 * len(at), self.n_functions)
                f_rows.append(rows)
        return DesignMatrix(energy=energy, forces=np.vstack(f_rows) if forces else None,
                            n_atoms=np.array([len(a) for a in frames]))

    def per_atom_rows(self, atoms: Atoms) -> np.ndarray:
        """``(N, n_coefficients)`` per-atom energy rows: each atom's basis-function
        values (python-ace projections) in its species' columns, and 1 in its one-body
        column."""
        from pyace.atomicenvironment import aseatoms_to_atomicenvironment

        (atoms,) = check_frames([atoms], self.species, "AceLinearModel")
        n0 = len(self.species) if self.one_body else 0
        ae = aseatoms_to_atomicenvironment(atoms, cutoff=self.cutoff,
                                           elements_mapper_dict=self._basis.elements_to_index_map)
        self._calculator.compute(ae, compute_projections=True, compute_b_grad=False)
        types = np.asarray(ae.species_type)[: len(atoms)]
        rows = np.zeros((len(atoms), self.n_coefficients))
        for a, (s, proj) in enumerate(zip(types, self._calculator.projections)):
            start = n0 + self._shifts[s]
            rows[a, start : start + len(proj)] = proj
            if self.one_body:
                rows[a, s] = 1.0
        return rows

    def write(self, coefficients: np.ndarray, directory: Path, stem: str) -> list[Path]:
        """Write ``<stem>.yace`` (C-tilde basis, readable by AcePotential); returns ``[path]``."""
        pyace = _pyace()
        c = self._check_coefficients(coefficients)
        n0 = len(self.species) if self.one_body else 0
        basis = pyace.ACEBBasisSet(self._bconf)  # a fresh basis: no evaluator points at it
        basis.basis_coeffs = c[n0:]
        ctilde = basis.to_ACECTildeBasisSet()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{stem}.yace"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        os.close(fd)
        try:
            ctilde.save_yaml(tmp)
            text = Path(tmp).read_text()
            e0 = c[:n0] if self.one_body else np.zeros(len(self.species))
            # pyace writes "E0: [..]" (one entry per element, file order); set ours.
            new, count = re.subn(r"^E0: \[.*\]$", "E0: [" + ", ".join(repr(float(v)) for v in e0) + "]",
                                 text, count=1, flags=re.MULTILINE)
            if count != 1:  # pragma: no cover - pyace changed its YAML layout
                raise ConfigurationError("python-ace wrote a .yace without an 'E0:' line")
            Path(tmp).write_text(new)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return [path]

    def potential(self, coefficients: np.ndarray, directory: Path, stem: str):
        """Write the ``.yace`` and load it as :class:`~mlmix.potentials.ace.AcePotential`."""
        from ..potentials.ace import AcePotential

        (path,) = self.write(coefficients, directory, stem)
        return AcePotential(path)
