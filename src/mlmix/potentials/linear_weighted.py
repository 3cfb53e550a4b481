"""Exact weights for mlmix's own linear models, from their descriptor derivatives.

A model linear in its coefficients c (``mlmix.fitting``) gives E_i = row_i @ c, so the
weighted energy of energy mixing and its gradient are rows too:

    E_w = (sum_i w_i row_i) @ c,   F = F_rows(w) @ c,   dE_w/d(eps) = W_rows(w) @ c,

with E_i the model's terms centred on atom i, so that E_i reads only atoms within one
cutoff of i (:meth:`mlmix.fitting.uf3.Uf3Model.weighted_rows`; the same split LAMMPS
computes for the plugin's truncated centres). Unlike the ``"levels"``
route of the LAMMPS backend, the weights need not be quantised: any p in [0, 1].

:class:`LinearWeighted` wraps the backend potential of such a model: masked
evaluations, stress and everything else go to the backend (LAMMPS ``pair uf3``, fast);
weighted evaluations use the model's rows on the weighted atoms plus one cutoff, or,
where most weights are 1 (the cheap potential), the backend's whole energy minus the
rows of the few atoms with w < 1.

Units: eV, Å, eV/Å; strain derivative in eV.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from ase import Atoms

from .base import Evaluation, Potential
from .weighted import WeightedEvaluation, weighted_on_cluster, whole_minus_complement


class WeightedRows(Protocol):
    """A linear model that gives the rows of a weighted energy (``mlmix.fitting``)."""

    cutoff: float

    def weighted_rows(self, atoms: Atoms, weights: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(energy (nc,), forces (3N, nc), strain derivative (3, 3, nc))``."""
        ...


class WeightedWrapper(Potential):
    """``potential`` as it is, except for its weighted energies (``_weighted``, which
    subclasses give); everything else goes to ``potential``."""

    weighting = "exact"

    def __init__(self, potential: Potential):
        self.potential = potential
        self.name = f"{potential.name} (exact weights)"
        self.cutoff = potential.cutoff
        self.receptive_field = potential.receptive_field
        self.species = potential.species
        self.has_stress = potential.has_stress
        self.masked_exact = potential.masked_exact

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.potential!r})"

    def _evaluate(self, atoms: Atoms, mask: np.ndarray) -> Evaluation:
        return self.potential.evaluate(atoms, mask)

    def _stress(self, atoms: Atoms) -> np.ndarray:
        return self.potential.stress(atoms)

    def _whole(self, atoms: Atoms) -> WeightedEvaluation:
        """The total energy with its gradient (every weight 1), by the backend."""
        return self.potential.evaluate_weighted(atoms, np.ones(len(atoms)))

    def close(self) -> None:
        self.potential.close()


class LinearWeighted(WeightedWrapper):
    """``potential`` (the backend of a linear model) with exact weighted energies.

    Args:
        potential: evaluates the model (e.g. ``LammpsPotential.uf3`` of its file).
        model: the model's rows (:class:`WeightedRows`).
        coefficients: ``(nc,)``, so that ``rows @ coefficients`` are the backend's own
            energies (as ``Uf3Model.from_file`` returns them).
    """

    def __init__(self, potential: Potential, model: WeightedRows, coefficients: np.ndarray):
        super().__init__(potential)
        self.model = model
        self.coefficients = np.asarray(coefficients, dtype=float)

    @classmethod
    def uf3(cls, file: str | os.PathLike, species: Sequence[str] | None = None,
            **kwargs) -> LinearWeighted:
        """A ``.uf3`` file (``pair_style uf3``) with exact weights from mlmix's UF3
        featuriser; ``kwargs`` go to :meth:`LammpsPotential.uf3`."""
        from ..fitting.uf3 import Uf3Model  # fitting builds on potentials, not back
        from .lammps import LammpsPotential

        potential = LammpsPotential.uf3(file, species, **kwargs)
        model, coefficients = Uf3Model.from_file(file, sorted(potential.species or ()),
                                                 one_body=False)
        return cls(potential, model, coefficients)

    def rows_gradient(self, atoms: Atoms, weights: np.ndarray, strain: bool = True
                      ) -> tuple[float, np.ndarray, np.ndarray]:
        """``(E_w eV, forces (n, 3) eV/Å, dE_w/d(eps) (3, 3) eV)`` from the rows of all
        of ``atoms``."""
        c = self.coefficients
        e, f, s = self.model.weighted_rows(atoms, weights)
        return float(e @ c), (f @ c).reshape(-1, 3), s @ c

    def _weighted(self, atoms: Atoms, weights: np.ndarray) -> WeightedEvaluation:
        def part(w: np.ndarray) -> WeightedEvaluation:
            return weighted_on_cluster(atoms, w, self.receptive_field, self.cutoff,
                                       self.rows_gradient)

        def whole() -> WeightedEvaluation:
            if self.potential.weighting_problem() is None:
                return self._whole(atoms)
            return part(np.ones(len(atoms)))

        return whole_minus_complement(weights, whole, part)
