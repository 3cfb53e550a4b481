"""MACE (mace-torch) as a potential: per-atom energies, masked forces by autograd.

MACE writes the energy as a sum of per-atom (node) energies E_i, each depending on
the atoms within its receptive field R = ``r_max * num_interactions`` (Å) of atom i.
The masked evaluation of the interface, forces ``-d(sum_{i in M} E_i)/dx_j``, is
therefore computed exactly on a cluster: the mask M plus every atom within R of it
(minimum image), one graph over that cluster, autograd of the sum of the node
energies of M. Messages are computed only into atoms at most ``num_interactions - 1``
edges from M (the outer halo only sends), which drops about half the edges and
changes nothing in the energies of M. Atoms outside the cluster get zero force: the
sum does not depend on them. The cluster and its edges are reused between calls
within a skin (:mod:`mlmix.potentials.graph_skin`), exactly. So:

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

from ..errors import CalculationError, ConfigurationError, missing_dependency
from .base import Evaluation, Potential, bare_copy
from .devices import check_device, check_dtype
from .files import resolve_potential_file
from .graph_skin import SkinGraph, active_graph, build_skin_graph
from .weighted import WeightedEvaluation, weighted_on_cluster

# Models trained and shipped by mlmix (each with the script that made it).
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "data" / "mace"
DEFAULT_SKIN = 1.0  # Å
# the fields of a MACE graph with one row per edge (the others per node or per graph)
_EDGE_FIELDS = ("shifts", "unit_shifts")


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
        skin: Å, >= 0: a masked evaluation's cluster and edges are kept while the
            mask is the same and no atom has moved ``skin / 2`` or more (0: carved
            anew at every call). Exact at any skin.
        name: label used in messages.

    Attributes:
        cutoff: Å, the model's ``r_max`` (range of one message).
        receptive_field: Å, ``r_max * num_interactions``.
        species: the elements of the model's atomic-number table.
        last_edges: directed edges of the last graph evaluated (the cost, with
            ``Evaluation.n_evaluated`` = atoms in the graph).
        graph_builds: clusters carved so far by masked evaluations.
    """

    def __init__(self, model, *, device: str = "cpu", dtype: str = "float64",
                 skin: float = DEFAULT_SKIN, name: str | None = None):
        torch, self._data, self._geometric, utils = _import_mace()
        check_dtype(dtype)
        if not (np.isfinite(skin) and skin >= 0):
            raise ConfigurationError(f"skin must be >= 0 Å, got {skin!r}")
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
        self.skin = float(skin)
        self.last_edges = 0
        self.graph_builds = 0
        self._skin_graph: SkinGraph | None = None

    def __repr__(self) -> str:
        return (f"MacePotential({self.name}, cutoff={self.cutoff:g}, "
                f"receptive_field={self.receptive_field:g}, device={self.device!r})")

    def _graph(self, atoms: Atoms, cutoff: float | None = None) -> dict:
        """MACE's own graph of ``atoms`` (its neighbour list at ``cutoff``, default
        ``r_max``), on the device."""
        from mace.tools import torch_tools

        with torch_tools.default_dtype(self.dtype):
            config = self._data.config_from_atoms(bare_copy(atoms))
            graph = self._data.AtomicData.from_config(
                config, z_table=self._z_table, cutoff=cutoff or self.cutoff,
                heads=self._heads)
        data = self._geometric.Batch.from_data_list([graph]).to_dict()
        return {k: v.to(self.device) if hasattr(v, "to") else v for k, v in data.items()}

    def node_energies_and_forces(self, atoms: Atoms, weights: np.ndarray | None = None):
        """Per-atom energies of ``atoms`` and ``-d(sum_i w_i E_i)/dx`` by autograd.

        Args:
            atoms: the structure (periodic or a finite cluster).
            weights: ``(n,)`` weights w_i; None = all ones (the total energy).

        Returns:
            ``(energies (n,) eV, forces (n, 3) eV/Å)``.
        """
        e, f, _ = self._pass(self._graph(atoms), weights, strain=False)
        return e, f

    def _pass(self, data: dict, weights: np.ndarray | None, strain: bool):
        """The model on graph ``data``: node energies, ``-d(sum_i w_i E_i)/dx`` and
        (``strain``) its derivative with respect to a homogeneous strain of positions
        and cell, ``(3, 3)`` eV."""
        torch = self._torch
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
            n = int(data["positions"].shape[0])
            raise CalculationError(f"{self.name} failed on {n} atoms: {exc}") from exc
        numpy = [g.detach().cpu().double().numpy() for g in grads]
        return (node.detach().cpu().double().numpy(), -numpy[0],
                numpy[1] if strain else None)

    weighting = "exact"

    def _weighted(self, atoms: Atoms, weights: np.ndarray) -> WeightedEvaluation:
        """Autograd of sum_i w_i E_i over the atoms with w > 0 plus one receptive field."""
        def gradient(cluster: Atoms, w: np.ndarray, periodic: bool):
            node, f, strain = self._pass(self._graph(cluster), w, strain=periodic)
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
        graph = self._skin_graph
        moved = None if graph is None else graph.displacement(atoms, mask)
        if graph is None or moved is None:
            graph = build_skin_graph(atoms, mask, self.receptive_field, self.cutoff,
                                     self.skin, self.cutoff + 1.0, self._edges)
            self._skin_graph, self.graph_builds = graph, self.graph_builds + 1
        positions = graph.cluster.positions
        if moved is not None:  # a kept graph: its atoms where they are now
            positions = positions + moved[graph.index]
        nodes, edges, senders, receivers = active_graph(positions, graph, self.cutoff,
                                                        self.n_interactions - 1)
        inside = graph.inside[nodes]
        e, f, _ = self._pass(self._subgraph(graph, positions, nodes, edges, senders,
                                            receivers), inside.astype(float), strain=False)
        forces = np.zeros((n, 3))
        forces[graph.index[nodes]] = f
        energies = np.full(n, np.nan)
        energies[graph.index[nodes[inside]]] = e[inside]
        return Evaluation(forces, energies, n_evaluated=len(nodes), exact=True)

    def _edges(self, cluster: Atoms, radius: float):
        """MACE's neighbour list of ``cluster`` within ``radius``: ``(senders,
        receivers, shifts Å)`` as numpy, and MACE's whole graph (kept on the
        :class:`SkinGraph`, its per-node and per-edge fields cut per call)."""
        data = self._graph(cluster, cutoff=radius)
        senders, receivers = data["edge_index"].cpu().numpy()
        return senders, receivers, data["shifts"].cpu().numpy(), data

    def _subgraph(self, graph: SkinGraph, positions: np.ndarray, nodes: np.ndarray,
                  edges: np.ndarray, senders: np.ndarray, receivers: np.ndarray) -> dict:
        """MACE's graph of the cluster cut to ``nodes`` and ``edges`` (renumbered ends
        ``senders``, ``receivers``), at cluster ``positions`` (Å)."""
        torch = self._torch
        full: dict = graph.model_data  # type: ignore[assignment]  # what _edges kept
        n_c = len(graph.index)
        node_index = torch.as_tensor(nodes, device=self.device)
        edge_index = torch.as_tensor(edges, device=self.device)
        data = {}
        for key, value in full.items():
            if key in _EDGE_FIELDS:
                data[key] = value[edge_index]
            elif hasattr(value, "shape") and value.ndim and value.shape[0] == n_c \
                    and key not in ("edge_index", "ptr"):
                data[key] = value[node_index]
            else:
                data[key] = value
        data["edge_index"] = torch.as_tensor(np.stack([senders, receivers]),
                                             device=self.device)
        data["ptr"] = torch.as_tensor([0, len(nodes)], device=self.device)
        data["positions"] = torch.as_tensor(positions[nodes], dtype=self.dtype,
                                            device=self.device)
        return data
