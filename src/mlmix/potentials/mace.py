"""MACE (mace-torch) as a potential: per-atom energies, masked forces by autograd.

MACE writes the energy as a sum of per-atom (node) energies E_i, each depending on
the atoms within its receptive field R = ``r_max * num_interactions`` (Å) of atom i.
The masked evaluation of the interface, forces ``-d(sum_{i in M} E_i)/dx_j``, is
therefore computed exactly on a cluster: the mask M plus every atom within R of it
(minimum image), one graph over that cluster, autograd of the sum of the node
energies of M. Messages are computed only into atoms within ``(num_interactions - 1)
* r_max`` of M (the outer halo only sends), which drops about half the edges and
changes nothing in the energies of M. Atoms outside the cluster get zero force: the
sum does not depend on them. So:

- the contract holds to round-off at any size of M (``Evaluation.exact`` is True);
- in force mixing the forces on weighted atoms equal the whole-system MACE forces
  when ``r_buff >= R`` (the evaluation set then holds every atom whose energy
  depends on a weighted atom); with a smaller ``r_buff`` the error must be measured.

Units: Å, eV, eV/Å. Needs the ``mace`` extra (mace-torch, which pins e3nn 0.4.4; it
cannot share an environment with SevenNet, which needs e3nn >= 0.5).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress

from ..carving import carve_cluster, within
from ..errors import CalculationError, ConfigurationError, missing_dependency
from .base import Evaluation, Potential, bare_copy
from .devices import check_device
from .files import resolve_potential_file
from .weighted import WeightedEvaluation, weighted_on_cluster

# Models trained and shipped by mlmix (each with the script that made it).
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "data" / "mace"
DTYPES = ("float64", "float32")


def _import_mace():
    # mace must be imported before e3nn (it patches e3nn's code generation). Its import
    # makes e3nn warn about a torch.load of e3nn's own constants: nothing a user can act on.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            import mace  # noqa: F401
            import torch
            from mace import data as mace_data
            from mace.tools import torch_geometric, utils
    except ImportError as exc:
        raise missing_dependency("mace-torch", "mace") from exc
    return torch, mace_data, torch_geometric, utils


def resolve_model_file(model: str | os.PathLike) -> Path:
    """A MACE model file: a path, or the bare name of a model mlmix ships (``.model``
    may be left out, e.g. ``"Si_snap_mace"``)."""
    name = str(model)
    if not name.endswith(".model") and len(Path(name).parts) == 1 \
            and (SHIPPED_DIR / f"{name}.model").is_file():
        name += ".model"
    return resolve_potential_file(name, extra_dirs=[SHIPPED_DIR])


def shipped_models() -> list[str]:
    """Names of the MACE models shipped with mlmix."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.model"))


class MacePotential(Potential):
    """A MACE model, masked by a cluster of the mask plus one receptive field.

    Args:
        model: a path to a MACE model file (``torch.save`` of the model, as
            ``mace_run_train`` writes it), the name of a shipped model (see
            :func:`shipped_models`), or a loaded MACE ``torch.nn.Module``.
        device: ``"cpu"`` (default) or ``"cuda"``/``"cuda:k"``; refused before any
            work when torch sees no GPU.
        dtype: ``"float64"`` (default; forces reproducible to round-off) or
            ``"float32"``.
        name: label used in messages.

    Attributes:
        cutoff: Å, the model's ``r_max`` (range of one message).
        receptive_field: Å, ``r_max * num_interactions``.
        species: the elements of the model's atomic-number table.
        last_edges: directed edges of the last graph evaluated (the cost, with
            ``Evaluation.n_evaluated`` = atoms in the graph).
    """

    def __init__(self, model, *, device: str = "cpu", dtype: str = "float64",
                 name: str | None = None):
        torch, self._data, self._geometric, utils = _import_mace()
        if dtype not in DTYPES:
            raise ConfigurationError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        check_device(device)
        self.path: Path | None = None  # the model file, when loaded from one
        if isinstance(model, torch.nn.Module):
            loaded, label = model, type(model).__name__
        else:
            path = resolve_model_file(model)
            with warnings.catch_warnings():
                # torch warns that weights_only=False runs pickled code: a MACE model
                # file is a pickled module, and the user chose the file
                warnings.simplefilter("ignore", UserWarning)
                try:
                    loaded = torch.load(path, map_location=device, weights_only=False)
                except Exception as exc:
                    raise ConfigurationError(
                        f"{path} is not a MACE model torch can load ({type(exc).__name__}: "
                        f"{exc}); pass the .model file mace_run_train wrote") from None
            label, self.path = path.stem, path
        for attr in ("r_max", "num_interactions", "atomic_numbers"):
            if not hasattr(loaded, attr):
                raise ConfigurationError(
                    f"{label} is not a MACE model (it has no {attr!r}); MacePotential "
                    "takes MACE models only, other ASE calculators go through "
                    "backend = 'ase'")
        self._torch = torch
        self.dtype = getattr(torch, dtype)
        self.device = device
        self.model = loaded.to(device=device, dtype=self.dtype).eval()
        for p in self.model.parameters():  # only positions need gradients
            p.requires_grad_(False)
        self.name = name or f"mace:{label}"
        self.cutoff = float(self.model.r_max)
        self.n_interactions = int(self.model.num_interactions)
        self.receptive_field = self.cutoff * self.n_interactions
        numbers = [int(z) for z in self.model.atomic_numbers]
        self.species = frozenset(chemical_symbols[z] for z in numbers)
        self._z_table = utils.AtomicNumberTable(numbers)
        self._heads = list(getattr(self.model, "heads", None) or ["Default"])
        self.last_edges = 0

    def __repr__(self) -> str:
        return (f"MacePotential({self.name}, cutoff={self.cutoff:g}, "
                f"receptive_field={self.receptive_field:g}, device={self.device!r})")

    def _graph(self, atoms: Atoms, receivers: np.ndarray | None = None) -> dict:
        """MACE's own graph of ``atoms`` (its neighbour list at ``r_max``), on the device;
        with ``receivers`` ((n,) bool), only the edges that end on one of them."""
        from mace.tools import torch_tools

        with torch_tools.default_dtype(self.dtype):
            config = self._data.config_from_atoms(bare_copy(atoms))
            graph = self._data.AtomicData.from_config(
                config, z_table=self._z_table, cutoff=self.cutoff, heads=self._heads)
        data = self._geometric.Batch.from_data_list([graph]).to_dict()
        if receivers is not None:
            keep = self._torch.as_tensor(receivers)[data["edge_index"][1]]
            data["edge_index"] = data["edge_index"][:, keep]
            for key in ("shifts", "unit_shifts"):
                data[key] = data[key][keep]
        return {k: v.to(self.device) if hasattr(v, "to") else v for k, v in data.items()}

    def node_energies_and_forces(self, atoms: Atoms, weights: np.ndarray | None = None,
                                 receivers: np.ndarray | None = None):
        """Per-atom energies of ``atoms`` and ``-d(sum_i w_i E_i)/dx`` by autograd.

        Args:
            atoms: the structure (periodic or a finite cluster).
            weights: ``(n,)`` weights w_i; None = all ones (the total energy).
            receivers: ``(n,)`` bool, the atoms whose messages are computed; None = all.
                Energies of the others are wrong; exact for atoms with w_i != 0 when
                every atom within ``(num_interactions - 1) * r_max`` of them is a
                receiver (see :meth:`_evaluate`).

        Returns:
            ``(energies (n,) eV, forces (n, 3) eV/Å)``.
        """
        e, f, _ = self._weighted_graph(atoms, weights, receivers, strain=False)
        return e, f

    def _weighted_graph(self, atoms: Atoms, weights: np.ndarray | None,
                        receivers: np.ndarray | None, strain: bool):
        """Node energies, ``-d(sum_i w_i E_i)/dx`` and (``strain``) its derivative with
        respect to a homogeneous strain of positions and cell, ``(3, 3)`` eV."""
        torch = self._torch
        data = self._graph(atoms, receivers)
        self.last_edges = int(data["edge_index"].shape[1])
        try:
            positions = data["positions"].requires_grad_(True)
            inputs = [positions]
            if strain:
                # x' = x (1 + eps), and every periodic shift with the cell
                eps = torch.zeros((3, 3), dtype=positions.dtype, device=positions.device,
                                  requires_grad=True)
                data["positions"] = positions + positions @ eps
                data["shifts"] = data["shifts"] + data["shifts"] @ eps
                inputs.append(eps)
            out = self.model(data, compute_force=False, training=False)
            node = out["node_energy"]
            w = None if weights is None else torch.as_tensor(weights, dtype=node.dtype,
                                                             device=node.device)
            total = node.sum() if w is None else (w * node).sum()
            grads = torch.autograd.grad(total, inputs)
        except RuntimeError as exc:
            raise CalculationError(f"{self.name} failed on {len(atoms)} atoms: {exc}") from exc
        numpy = [g.detach().cpu().double().numpy() for g in grads]
        return (node.detach().cpu().double().numpy(), -numpy[0],
                numpy[1] if strain else None)

    weighting = "exact"

    def _weighted(self, atoms: Atoms, weights: np.ndarray) -> WeightedEvaluation:
        """Autograd of sum_i w_i E_i over the atoms with w > 0 plus one receptive field."""
        def gradient(cluster: Atoms, w: np.ndarray, periodic: bool):
            node, f, strain = self._weighted_graph(cluster, w, None, strain=periodic)
            return float(w @ node), f, strain

        return weighted_on_cluster(atoms, weights, self.receptive_field, self.cutoff,
                                   gradient)

    has_stress = True  # MACE differentiates the energy with respect to the cell

    def _stress(self, atoms: Atoms) -> np.ndarray:
        """MACE's own stress of the whole periodic cell (its sign is ASE's)."""
        data = self._graph(atoms)
        try:
            out = self.model(data, compute_force=False, compute_stress=True, training=False)
        except RuntimeError as exc:
            raise CalculationError(f"{self.name} failed on the stress of {len(atoms)} atoms: "
                                   f"{exc}") from exc
        return full_3x3_to_voigt_6_stress(out["stress"].detach().cpu().double().numpy()[0])

    def _evaluate(self, atoms: Atoms, mask: np.ndarray) -> Evaluation:
        n = len(atoms)
        if mask.all():
            e, f = self.node_energies_and_forces(atoms)
            return Evaluation(f, e, n_evaluated=n, exact=True)
        keep = within(atoms.positions, atoms.cell.array, atoms.pbc, mask, self.receptive_field)
        cluster, index, _ = carve_cluster(atoms, keep, self.cutoff, self.cutoff + 1.0)
        inside = mask[index]
        # Messages into an atom matter only while its features can still reach M: layer
        # l's receivers within (L - l) r_max of M. One edge set serves every layer, so
        # keep the edges into atoms within (L - 1) r_max of M; the outer halo is then
        # a sender only (about half the cluster's edges dropped for L = 2, exactly).
        # (searched in the cluster, which keeps every distance up to R: O(cluster), not O(N))
        receivers = within(cluster.positions, cluster.cell.array, cluster.pbc, inside,
                           (self.n_interactions - 1) * self.cutoff + 1e-6
                           ) if self.n_interactions > 1 else inside
        e, f = self.node_energies_and_forces(cluster, inside.astype(float), receivers)
        forces = np.zeros((n, 3))
        forces[index] = f
        energies = np.full(n, np.nan)
        energies[index[inside]] = e[inside]
        return Evaluation(forces, energies, n_evaluated=len(cluster), exact=True)
