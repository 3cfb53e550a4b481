"""Any ASE calculator as an expensive potential, evaluated on a carved cluster.

A generic ASE calculator cannot restrict its per-atom energies to a mask, so for a
mask M this backend cuts out M plus every atom within ``buffer`` Å of it
(minimum image), runs the calculator on that cluster and keeps the forces on M
(method.md §3, "carved cluster").

Exactness: the force on atom i depends on every atom within twice the receptive
field R of i (the energies E_j with j within R of i, each depending on its own
R-neighbourhood). So forces on M equal the whole-system forces when
``buffer >= 2 * receptive_field``; with ``buffer >= receptive_field`` the error comes
only from the surface's effect on energies near M; with less, atoms of M lose part of
their own neighbourhood and a :class:`ReceptiveFieldWarning` is issued. For
message-passing networks (``receptive_field = n_layers * cutoff``, 20-25 Å) an exact
buffer is unaffordable; the error of a smaller one must be measured.

What is returned for a proper subset M (``exact`` is True when
``buffer >= 2 * receptive_field``, else False):

- forces on atoms of M from the cluster; forces on all other atoms are ZERO. The
  interface promises ``-d(sum_{i in M} E_i)/dx_j``; a cluster gives
  ``-d(E_cluster)/dx_j`` instead, which for j outside M is not that quantity, so
  nothing is claimed there. Force mixing only reads forces on atoms with weight > 0,
  which are inside M.
- per-atom energies of M if the calculator offers ``energies``, NaN otherwise.
- ``n_evaluated`` = number of atoms in the cluster (the cost).

When M is every atom, the calculator runs on the whole periodic system and the result
is exact.

Cluster geometry: the cluster is returned non-periodic (``pbc=False``) in an
orthorhombic box padded by ``vacuum`` Å whenever it fits in the cell without touching
its own periodic images within the cutoff (see :func:`mlmix.carving.carve_cluster`);
in small cells, or when the carved atoms wrap around the cell, the kept atoms stay in
the original periodic cell, which is still exactly the original geometry minus the
removed atoms. Units: Å, eV, eV/Å.
"""

from __future__ import annotations

import warnings

import numpy as np
from ase import Atoms
from ase.calculators.calculator import all_changes
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress

from ..arguments import species_list
from ..carving import carve_cluster, within
from ..errors import (
    CalculationError,
    ConfigurationError,
    missing_dependency,
)
from .base import Evaluation, Potential, bare_copy
from .devices import check_device, check_dtype
from .weighted import WeightedEvaluation, weighted_on_cluster


class ReceptiveFieldWarning(UserWarning):
    """The cluster buffer is smaller than the model's receptive field."""


def model_ranges(calculator) -> tuple[float, float] | None:
    """``(cutoff, receptive_field)`` in Å read from a known ML calculator, else None.

    SevenNet: ``calculator.cutoff`` and the number of convolution layers in its
    config (or, for a model instance, the count of ``*_convolution`` modules).
    CHGNet: the atom-graph cutoff of ``model.graph_converter`` and ``model.n_conv``
    atom-convolution layers. The receptive field is ``n_layers * cutoff``.
    """
    module = type(calculator).__module__ or ""
    if module.startswith("sevenn"):
        cutoff = float(calculator.cutoff)
        config = getattr(calculator, "sevennet_config", None) or {}
        n_layers = config.get("num_convolution_layer")
        if n_layers is None:
            n_layers = sum(1 for name, _ in calculator.model.named_children()
                           if name.endswith("_convolution"))
        return cutoff, int(n_layers) * cutoff
    if module.startswith("chgnet"):
        model = calculator.model
        cutoff = float(model.graph_converter.atom_graph_cutoff)
        return cutoff, int(model.n_conv) * cutoff
    return None


def _model_species(calculator) -> frozenset[str] | None:
    type_map = getattr(calculator, "type_map", None)  # SevenNet: {Z: index}
    if type(calculator).__module__.startswith("sevenn") and type_map:
        return frozenset(chemical_symbols[int(z)] for z in type_map)
    return None


class AseClusterPotential(Potential):
    """An ASE calculator evaluated on clusters carved around the mask.

    Args:
        calculator: any ASE calculator giving ``forces`` (and optionally
            ``energies``, per-atom energies in eV).
        buffer: Å, how far beyond the mask atoms are kept (>= 0); None = one
            receptive field.
        cutoff: Å, range of one per-atom energy (the graph cutoff of a network);
            read from SevenNet/CHGNet models when None.
        receptive_field: Å, range over which a force depends on positions
            (``n_layers * cutoff`` for message passing); read from the model, or
            equal to ``cutoff`` for a local calculator when only ``cutoff`` is given.
        species: chemical symbols described (one string is one symbol: ``"Si"``),
            or None (read from SevenNet models).
        vacuum: Å, padding of a non-periodic cluster's box; default ``cutoff + 1``,
            so calculators that treat every box as periodic (CHGNet) see no images.
        name: label used in messages.

    Warns:
        ReceptiveFieldWarning: at the first carved cluster when
        ``buffer < receptive_field`` (whole-system evaluations are exact at any buffer).
    """

    def __init__(
        self,
        calculator,
        buffer: float | None,
        cutoff: float | None = None,
        receptive_field: float | None = None,
        species=None,
        vacuum: float | None = None,
        name: str | None = None,
    ):
        self.calculator = calculator
        self.name = name or f"ase:{type(calculator).__name__}"
        if cutoff is None:
            ranges = model_ranges(calculator)
            if ranges is None:
                raise ConfigurationError(
                    f"cannot read the cutoff of {type(calculator).__name__}; pass "
                    "cutoff= (Å) and, for a message-passing model, receptive_field= (Å)"
                )
            cutoff, model_rf = ranges
            receptive_field = model_rf if receptive_field is None else receptive_field
        if receptive_field is None:
            receptive_field = cutoff
        if not (np.isfinite(cutoff) and cutoff > 0):
            raise ConfigurationError(f"cutoff must be a positive number of Å, got {cutoff}")
        if receptive_field < cutoff:
            raise ConfigurationError(
                f"receptive_field ({receptive_field} Å) must be at least the cutoff "
                f"({cutoff} Å)"
            )
        if buffer is None:
            buffer = receptive_field
        if not (np.isfinite(buffer) and buffer >= 0):
            raise ConfigurationError(f"buffer must be >= 0 Å, got {buffer}")
        self.cutoff = float(cutoff)
        self.receptive_field = float(receptive_field)
        self.buffer = float(buffer)
        self.vacuum = self.cutoff + 1.0 if vacuum is None else float(vacuum)
        if species is None:
            self.species = _model_species(calculator)
        else:
            self.species = frozenset(species_list(species, "AseClusterPotential species"))
        props = getattr(calculator, "implemented_properties", ())
        self.has_energies = "energies" in props
        self.has_stress = "stress" in props
        # A local calculator's cluster forces are exact on the interior; a
        # message-passing model's are not at any affordable buffer (module docstring).
        self.masked_exact = self.is_local
        self._warned = False

    @property
    def halo(self) -> float:
        return self.buffer

    def __repr__(self) -> str:
        return (f"AseClusterPotential({self.name}, buffer={self.buffer:g}, "
                f"cutoff={self.cutoff:g}, receptive_field={self.receptive_field:g})")

    @classmethod
    def sevennet(cls, model: str = "7net-0", *, buffer: float | None = None,
                 device: str = "cpu", dtype: str = "float32", **kwargs
                 ) -> AseClusterPotential:
        """A SevenNet model (pretrained name or checkpoint path): carved clusters for
        masked evaluations, exact autograd weighting for energy mixing
        (:class:`~mlmix.potentials.sevennet.SevenNetPotential`).

        ``dtype``: ``"float32"`` (the model as trained) or ``"float64"`` (the same
        weights in float64, for energies smooth enough to label elastic constants;
        about twice the time and memory). Needs the ``sevenn`` extra. SevenNet's
        warning that no tensor-product accelerator is enabled is silenced: none
        exists for CPU runs.
        """
        from .sevennet import SevenNetPotential, load_float64_model
        try:
            from sevenn.calculator import SevenNetCalculator
        except ImportError as exc:
            raise missing_dependency("sevenn", "sevenn") from exc
        check_dtype(dtype)
        check_device(device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No tensor product accelerator")
            if dtype == "float64":
                net, config = load_float64_model(model)
                calculator = SevenNetCalculator(net, file_type="model_instance",
                                                device=device, sevennet_config=config)
            else:
                calculator = SevenNetCalculator(model, device=device)
        kwargs.setdefault("name", f"sevennet:{model}" + ("" if dtype == "float32"
                                                          else f":{dtype}"))
        return SevenNetPotential(calculator, buffer=buffer, dtype=dtype, **kwargs)

    @classmethod
    def chgnet(cls, model: str | None = None, *, buffer: float | None = None,
               device: str = "cpu", **kwargs) -> AseClusterPotential:
        """A CHGNet model (default: the shipped pretrained one, or a version name such
        as ``"0.3.0"``), with per-atom (site) energies: carved clusters for masked
        evaluations, exact autograd weighting for energy mixing
        (:class:`~mlmix.potentials.chgnet.ChgnetPotential`).

        Needs the ``chgnet`` extra.
        """
        from .chgnet import ChgnetPotential  # it subclasses this class

        try:
            from chgnet.model import CHGNet, CHGNetCalculator
        except ImportError as exc:
            raise missing_dependency("chgnet", "chgnet") from exc
        check_device(device)
        loaded = CHGNet.load(model_name=model or "0.3.0", verbose=False)
        calculator = CHGNetCalculator(loaded, use_device=device, return_site_energies=True)
        kwargs.setdefault("name", f"chgnet:{model or '0.3.0'}")
        return ChgnetPotential(calculator, buffer=buffer, **kwargs)

    def _run(self, atoms: Atoms) -> tuple[np.ndarray, np.ndarray | None]:
        props = ["energy", "forces"] + (["energies"] if self.has_energies else [])
        calc = self.calculator
        calc.reset()  # drop results of an earlier, different structure
        try:
            calc.calculate(atoms, props, all_changes)
        except Exception as exc:
            raise CalculationError(f"{self.name} failed on {len(atoms)} atoms: {exc}") from exc
        forces = np.asarray(calc.results["forces"], dtype=float)
        energies = calc.results.get("energies")
        return forces, None if energies is None else np.asarray(energies, dtype=float)

    def _stress(self, atoms: Atoms) -> np.ndarray:
        """The calculator's stress of the whole periodic system."""
        calc = self.calculator
        calc.reset()
        try:
            calc.calculate(bare_copy(atoms), ["stress"], all_changes)
        except Exception as exc:
            raise CalculationError(f"{self.name} failed on the stress of {len(atoms)} atoms: "
                                   f"{exc}") from exc
        stress = np.asarray(calc.results["stress"], dtype=float)
        return full_3x3_to_voigt_6_stress(stress) if stress.shape == (3, 3) else stress

    def weighted_gradient(self, atoms: Atoms, weights: np.ndarray, strain: bool
                          ) -> tuple[float, np.ndarray, np.ndarray | None]:
        """Models that expose per-atom energies to autograd (``weighting = "exact"``):
        one pass over ``atoms``, ``(sum_i w_i E_i eV, -d/dx (n, 3) eV/Å, d/d(eps) (3, 3)
        eV with ``strain``, else None)``. A plain ASE calculator gives no such thing."""
        raise NotImplementedError

    def _weighted(self, atoms: Atoms, weights: np.ndarray) -> WeightedEvaluation:
        def gradient(cluster: Atoms, w: np.ndarray, periodic: bool):
            return self.weighted_gradient(cluster, w, strain=periodic)

        return weighted_on_cluster(atoms, weights, self.receptive_field, self.cutoff,
                                   gradient)

    def carve(self, atoms: Atoms, mask: np.ndarray):
        """The cluster for ``mask``: ``(cluster Atoms, (n_c,) indices into atoms, periodic)``."""
        keep = within(atoms.positions, atoms.cell.array, atoms.pbc, mask, self.buffer)
        return carve_cluster(atoms, keep, self.cutoff, self.vacuum)

    def _evaluate(self, atoms: Atoms, mask: np.ndarray) -> Evaluation:
        n = len(atoms)
        forces = np.zeros((n, 3))
        energies = np.full(n, np.nan)
        if mask.all():
            f, e = self._run(bare_copy(atoms))
            if e is not None:
                energies[:] = e
            return Evaluation(f, energies, n_evaluated=n, exact=True)
        if self.buffer < self.receptive_field and not self._warned:
            # at the first cluster, not at construction: whole-system uses (labelling a
            # fit) are exact at any buffer
            self._warned = True
            warnings.warn(
                f"{self.name}: buffer {self.buffer:g} Å is smaller than the receptive "
                f"field {self.receptive_field:g} Å; forces on mask atoms near the "
                "cluster surface will be approximate (exact needs a buffer of twice "
                "the receptive field); measure the error (mlmix buffer)",
                ReceptiveFieldWarning,
                stacklevel=3,
            )
        cluster, index, _ = self.carve(atoms, mask)
        f, e = self._run(cluster)
        inside = mask[index]
        forces[index[inside]] = f[inside]
        if e is not None:
            energies[index[inside]] = e[inside]
        exact = self.buffer >= 2 * self.receptive_field
        return Evaluation(forces, energies, n_evaluated=len(cluster), exact=exact)
