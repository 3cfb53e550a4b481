"""SevenNet models: carved clusters for force mixing, autograd weighting for energy mixing.

Force mixing evaluates SevenNet like any ASE calculator, on a cluster carved around
the mask (:class:`~mlmix.potentials.ase_cluster.AseClusterPotential`). Energy mixing
needs more than a cluster's forces: the exact gradient of sum_i w_i E_i. SevenNet
computes per-atom energies E_i (its ``atomic_energy`` output), so mlmix runs the model
itself up to those energies, differentiates the weighted sum by autograd with respect
to the positions and a homogeneous strain of positions and cell, and leaves SevenNet's
own force head (the gradient of the *unweighted* total) out of the graph. The structure
it runs on is the atoms with w > 0 plus one receptive field (``n_layers * cutoff``,
25 Å for SevenNet-0), so the weighted energy is exact, not a cluster approximation.

SevenNet computes in float32: its energies move in steps of about 1e-6 of their size,
so finite differences of them resolve forces to about 1e-3 eV/Å, not better.

Units: eV, Å, eV/Å; strain derivative in eV.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from ..errors import CalculationError
from .ase_cluster import AseClusterPotential


class SevenNetPotential(AseClusterPotential):
    """A SevenNet calculator (``sevenn.calculator.SevenNetCalculator``) as a potential.

    Build it with :meth:`AseClusterPotential.sevennet` (a pretrained name or a
    checkpoint). Masked evaluations carve clusters (see the base class); weighted
    evaluations (energy mixing) are exact autograd.
    """

    weighting = "exact"

    def weighted_gradient(self, atoms: Atoms, weights: np.ndarray, strain: bool
                          ) -> tuple[float, np.ndarray, np.ndarray | None]:
        """One pass of the model over ``atoms``: ``(sum_i w_i E_i eV, -d/dx (n, 3) eV/Å,
        d/d(eps) (3, 3) eV, with ``strain``, else None)``."""
        import torch
        from sevenn import _keys as key
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        model = self.calculator.model
        data = AtomGraphData.from_numpy_dict(
            unlabeled_atoms_to_graph(atoms, self.cutoff, with_shift=True))
        if self.calculator.modal:
            data[key.DATA_MODALITY] = self.calculator.modal
        data.to(self.calculator.device)
        try:
            data = model._preprocess(data)
            positions = data[key.POS].detach().to(torch.float32).requires_grad_(True)
            cell = data[key.CELL].view(3, 3).to(torch.float32)
            inputs = [positions]
            x = positions
            if strain:
                eps = torch.zeros((3, 3), dtype=x.dtype, device=x.device, requires_grad=True)
                x = x + x @ eps
                cell = cell + cell @ eps
                inputs.append(eps)
            # the model's own edge vectors are a leaf it differentiates; rebuild them
            # from the positions (and strain) so the gradient reaches those instead
            src, dst = data[key.EDGE_IDX]
            data[key.EDGE_VEC] = x[dst] - x[src] + data[key.CELL_SHIFT].to(x.dtype) @ cell
            for name, module in model._modules.items():
                if name != "force_output":  # the gradient of the unweighted total
                    data = module(data)
            node = data[key.ATOMIC_ENERGY].reshape(-1)
            w = torch.as_tensor(weights, dtype=node.dtype, device=node.device)
            total = (w * node).sum()
            grads = torch.autograd.grad(total, inputs)
        except (RuntimeError, KeyError) as exc:
            raise CalculationError(f"{self.name} failed on {len(atoms)} atoms: {exc}") from exc
        numpy = [g.detach().cpu().double().numpy() for g in grads]
        return float(total.detach()), -numpy[0], numpy[1] if strain else None
