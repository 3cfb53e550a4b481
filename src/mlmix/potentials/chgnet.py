"""CHGNet models: carved clusters for force mixing, autograd weighting for energy mixing.

Like :mod:`mlmix.potentials.sevennet`: masked evaluations carve clusters through
CHGNet's ASE calculator; for energy mixing mlmix builds CHGNet's batched crystal graph
itself, runs the model to its per-site energies (plus the composition model's constant
per-site shifts, so they sum to CHGNet's total) and differentiates sum_i w_i E_i by
autograd with respect to the atom positions and CHGNet's own strain of the lattice, on
the weighted atoms plus one receptive field (``n_conv * atom_graph_cutoff``). Models
read out from a pooled crystal feature (``mlp_first = False``) have no per-site energies
and cannot weight.

CHGNet computes in float32 (finite differences resolve its forces to ~1e-3 eV/Å).
Units: eV, Å, eV/Å; strain derivative in eV.
"""

from __future__ import annotations

import warnings

import numpy as np
from ase import Atoms

from ..errors import CalculationError
from .ase_cluster import AseClusterPotential


class ChgnetPotential(AseClusterPotential):
    """A CHGNet calculator (``chgnet.model.CHGNetCalculator``) as a potential.

    Build it with :meth:`AseClusterPotential.chgnet`. Masked evaluations carve clusters
    (see the base class); weighted evaluations (energy mixing) are exact autograd.
    """

    weighting = "exact"

    def weighting_problem(self) -> str | None:
        if not self.calculator.model.mlp_first:
            return (f"{self.name} reads its energy out of a pooled crystal feature "
                    "(mlp_first = False), so it has no per-site energies to weight; use "
                    "force mixing or a model with per-site energies")
        return None

    def weighted_gradient(self, atoms: Atoms, weights: np.ndarray, strain: bool
                          ) -> tuple[float, np.ndarray, np.ndarray | None]:
        """One pass of the model over ``atoms``: ``(sum_i w_i E_i eV, -d/dx (n, 3) eV/Å,
        d/d(eps) (3, 3) eV, with ``strain``, else None)``."""
        import torch
        from chgnet.model.model import BatchedGraph
        from pymatgen.io.ase import AseAtomsAdaptor

        model = self.calculator.model
        try:
            graph = model.graph_converter(AseAtomsAdaptor.get_structure(atoms)).to(
                self.calculator.device)
            with warnings.catch_warnings():
                # CHGNet's own torch.tensor(list of volumes) with the strain attached
                warnings.filterwarnings("ignore", message="Converting a tensor with "
                                        "requires_grad=True to a scalar")
                batched = BatchedGraph.from_graphs(
                    [graph], bond_basis_expansion=model.bond_basis_expansion,
                    angle_basis_expansion=model.angle_basis_expansion,
                    compute_stress=strain)
            site = model._compute(batched, return_site_energies=True)["site_energies"][0]
            if model.composition_model is not None:
                site = site + model.composition_model.get_site_energies([graph])[0]
            w = torch.as_tensor(weights, dtype=site.dtype, device=site.device)
            total = (w * site).sum()
            # positions = fractional coordinates @ lattice (1 + strain): the gradient at
            # fixed lattice, and through both
            inputs = [batched.atom_positions[0]] + ([batched.strains[0]] if strain else [])
            grads = torch.autograd.grad(total, inputs)
        except (RuntimeError, ValueError) as exc:
            raise CalculationError(f"{self.name} failed on {len(atoms)} atoms: {exc}") from exc
        numpy = [g.detach().cpu().double().numpy() for g in grads]
        return float(total.detach()), -numpy[0], numpy[1] if strain else None
