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
so finite differences of them resolve forces to about 1e-3 eV/Å, not better. For
labelling a fit, where elastic constants are curvatures of energies at strains of
1e-3, that noise is too large (6e-5 eV on a 54-atom W cell, about 6 % of C44):
``dtype="float64"`` builds the same model (same weights) in float64
(:func:`load_float64_model`) and evaluates it through mlmix's own pass over the model,
so positions, cell and every intermediate are float64.

Units: eV, Å, eV/Å; strain derivative in eV.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from ase import Atoms
from ase.stress import full_3x3_to_voigt_6_stress

from ..errors import CalculationError
from .ase_cluster import AseClusterPotential
from .base import bare_copy
from .devices import check_dtype


@contextmanager
def _default_dtype(dtype):
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def load_float64_model(model: str):
    """SevenNet checkpoint ``model`` (a pretrained name or a path) built in float64.

    sevenn builds its e3nn modules in the default dtype, and e3nn's generated code keeps
    the dtype it was generated in (``model.double()`` of a float32 model fails inside
    it), so the model is built anew under a float64 default and given the checkpoint's
    weights, cast to float64. sevenn's patch for old checkpoints compares the stored
    Wigner 3j coefficients with fresh ones; after it, each keeps its sign but takes the
    fresh float64 values. The one-hot embedding is float32 by construction: a hook
    casts its output.
    """
    import torch
    from sevenn.model_build import build_E3_equivariant_model
    from sevenn.nn.node_embedding import OnehotEmbedding
    from sevenn.scripts.backward_compatibility import patch_state_dict_if_old
    from sevenn.util import load_checkpoint

    checkpoint = load_checkpoint(model)
    config = dict(checkpoint.config, _flash_lammps=False)
    with _default_dtype(torch.float64):
        net = build_E3_equivariant_model(config)
        state = {k: v.double() if v.is_floating_point() else v
                 for k, v in checkpoint.model_state_dict.items()}
        state = patch_state_dict_if_old(state, checkpoint.config, net)
        fresh = net.state_dict()
        for key in [k for k in state if "_w3j" in k]:
            state[key] = torch.sign((state[key] * fresh[key]).sum()) * fresh[key]
        net.load_state_dict(state, strict=True)
    net.double()  # parameters sevenn creates as float32 explicitly

    def cast(module, _inputs, data):
        for key in {module.key_output, module.key_additional_output} - {None}:
            data[key] = data[key].to(torch.float64)
        return data

    for module in net.modules():
        if isinstance(module, OnehotEmbedding):
            module.register_forward_hook(cast)
    net.set_is_batch_data(False)
    return net.eval(), checkpoint.config


class SevenNetPotential(AseClusterPotential):
    """A SevenNet calculator (``sevenn.calculator.SevenNetCalculator``) as a potential.

    Build it with :meth:`AseClusterPotential.sevennet` (a pretrained name or a
    checkpoint). Masked evaluations carve clusters (see the base class); weighted
    evaluations (energy mixing) are exact autograd.

    ``dtype`` is ``"float32"`` (the model as trained, evaluated by SevenNet's
    calculator) or ``"float64"`` (:func:`load_float64_model`; every evaluation then
    goes through :meth:`model_pass`).
    """

    weighting = "exact"

    def __init__(self, calculator, *args, dtype: str = "float32", **kwargs):
        super().__init__(calculator, *args, **kwargs)
        check_dtype(dtype)
        self.dtype = dtype

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", dtype={self.dtype!r})"

    def _run(self, atoms: Atoms) -> tuple[np.ndarray, np.ndarray | None]:
        if self.dtype == "float32":
            return super()._run(atoms)
        node, forces, _ = self.model_pass(atoms, np.ones(len(atoms)), strain=False)
        return forces, node

    def _stress(self, atoms: Atoms) -> np.ndarray:
        if self.dtype == "float32":
            return super()._stress(atoms)
        atoms = bare_copy(atoms)
        _, _, d_eps = self.model_pass(atoms, np.ones(len(atoms)), strain=True)
        return full_3x3_to_voigt_6_stress(d_eps / atoms.get_volume())

    def weighted_gradient(self, atoms: Atoms, weights: np.ndarray, strain: bool
                          ) -> tuple[float, np.ndarray, np.ndarray | None]:
        """One pass of the model over ``atoms``: ``(sum_i w_i E_i eV, -d/dx (n, 3) eV/Å,
        d/d(eps) (3, 3) eV, with ``strain``, else None)``."""
        node, forces, d_eps = self.model_pass(atoms, weights, strain)
        return float(np.asarray(weights, dtype=float) @ node), forces, d_eps

    def model_pass(self, atoms: Atoms, weights: np.ndarray, strain: bool
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The model up to its per-atom energies, in its own dtype, and autograd of
        sum_i w_i E_i: ``(E_i (n,) eV, -d/dx (n, 3) eV/Å, d/d(eps) (3, 3) eV with
        ``strain``, else None)``, eps a homogeneous strain of positions and cell."""
        import torch
        from sevenn import _keys as key
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        model = self.calculator.model
        dtype = getattr(torch, self.dtype)
        fields = {}
        for name, value in unlabeled_atoms_to_graph(atoms, self.cutoff,
                                                    with_shift=True).items():
            if isinstance(value, np.ndarray):  # sevenn's own conversion is float32
                value = torch.from_numpy(np.ascontiguousarray(value))
                value = value.to(dtype if value.is_floating_point()
                                 or name == key.CELL_SHIFT else torch.int64)
            fields[name] = value
        data = AtomGraphData(**fields)
        if self.calculator.modal:
            data[key.DATA_MODALITY] = self.calculator.modal
        data.to(self.calculator.device)
        try:
            data = model._preprocess(data)
            positions = data[key.POS].detach().to(dtype).requires_grad_(True)
            cell = data[key.CELL].view(3, 3).to(dtype)
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
            grads = torch.autograd.grad((w * node).sum(), inputs)
        except (RuntimeError, KeyError) as exc:
            raise CalculationError(f"{self.name} failed on {len(atoms)} atoms: {exc}") from exc
        numpy = [g.detach().cpu().double().numpy() for g in grads]
        return (node.detach().cpu().double().numpy(), -numpy[0],
                numpy[1] if strain else None)
