"""The one interface every potential backend implements.

A backend answers a single question: given a structure and a set of atoms M (the
*mask*), return the per-atom energies E_i of the atoms in M and the forces

    F_k = -d(sum_{i in M} E_i) / d x_k

on the *interior* of M: the atoms k whose every atom within the receptive field (the
cutoff, for a local potential) is in M. For such an atom this is exactly the force of
the whole system, which is what force mixing needs (method.md §3): with r_buff >= the
receptive field, every atom with p > 0 is interior to the expensive set. (The guarantee
is the whole-system force. Engines that book a many-body term in shares on several
atoms, as LAMMPS does for SW and Tersoff, make E_i depend on atoms up to two cutoffs
away; there the identity with the masked energy sum holds only two cutoffs inside M,
while the interior force is still exact.) Off the interior a backend may return partial
terms (LAMMPS) or NaN (ACE, which skips them to save time); callers must not read them.
With ``mask=None`` every atom is interior and all forces are the full forces.
Backends that cannot restrict the per-atom energies (a generic ASE calculator) carve a
cluster instead and say so through ``exact``.

Units: Å, eV, eV/Å. Shapes: N atoms; positions and forces are ``(N, 3)``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_numbers, chemical_symbols

from ..errors import CalculationError, ConfigurationError
from .weighted import (
    WeightedEvaluation,
    WeightedLevel,
    check_weights,
    sum_levels,
    zero_evaluation,
)


def bare_copy(atoms: Atoms) -> Atoms:
    """The structure alone (numbers, positions, cell, pbc): no calculator, constraints
    or per-atom arrays, for handing to a backend's own code."""
    return Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell,
                 pbc=atoms.pbc)


@dataclass(frozen=True)
class Evaluation:
    """Result of one masked evaluation.

    Attributes:
        forces: ``(N, 3)`` eV/Å, ``-d(sum_{i in mask} E_i)/dx_k``, guaranteed on the
            interior of the mask (see the module docstring); undefined (partial
            terms or NaN) elsewhere.
        energies: ``(N,)`` eV, per-atom energy E_i for i in the mask, NaN elsewhere
            (for potentials with shared three-body terms, such as Tersoff, and for
            pair terms booked under one atom, as LAMMPS does with truncated centres,
            exact on the interior of the mask).
        n_evaluated: number of atoms whose per-atom energy (or environment) the backend
            actually computed; at least the mask size, more when a cluster or a shell
            of partial environments had to be evaluated too. This is the cost measure.
        exact: True when the interior forces are exact, False when a finite cluster
            or buffer makes them approximate.
    """

    forces: np.ndarray
    energies: np.ndarray
    n_evaluated: int
    exact: bool = True


class Potential(abc.ABC):
    """Base class of mlmix potential backends.

    Subclasses set ``cutoff`` (Å, the range of one per-atom energy),
    ``receptive_field`` (Å, the range over which a force depends on positions;
    equal to the cutoff for a local potential, ``n_layers * cutoff`` for a
    message-passing network) and ``species`` (the chemical symbols described, or
    None for any), and implement :meth:`_evaluate`.
    """

    name: str = "potential"
    cutoff: float
    receptive_field: float
    species: frozenset[str] | None = None
    #: True when the masked forces meet the contract on the interior of M (the
    #: receptive field deep); False for a carved cluster of a message-passing model,
    #: whose forces are approximate at any affordable buffer.
    masked_exact: bool = True
    #: False when the backend cannot give per-atom energies (Evaluation.energies NaN).
    has_energies: bool = True
    #: True when :meth:`stress` gives the stress of a periodic cell.
    has_stress: bool = False
    #: How :meth:`evaluate_weighted` weights per-atom energies (energy mixing):
    #: ``"exact"``, ``"levels"`` (one per-centre evaluation per distinct weight, see
    #: :mod:`mlmix.potentials.weighted`) or None (it cannot).
    weighting: str | None = None

    @property
    def is_local(self) -> bool:
        """True when forces depend only on atoms within one cutoff."""
        return self.receptive_field <= self.cutoff

    @property
    def halo(self) -> float:
        """Å, how far beyond the mask the atoms a masked evaluation reads may lie (an
        engine that hands this potential a carved cluster must keep them)."""
        return self.receptive_field

    def check_atoms(self, atoms: Atoms) -> None:
        """Raise :class:`ConfigurationError` if ``atoms`` cannot be evaluated."""
        check_finite_positions(atoms)
        if self.species is not None:
            check_species(self.name, atoms.numbers, self.species)

    def evaluate(self, atoms: Atoms, mask: np.ndarray | None = None, *,
                 energies: bool = True) -> Evaluation:
        """Masked evaluation (see module docstring).

        Args:
            atoms: the structure; not modified.
            mask: ``(N,)`` bool, atoms whose per-atom energies are wanted; None = all.
            energies: False when the caller reads only the forces (and
                ``n_evaluated``): a backend that can skip tallying per-atom energies
                then does, and returns them as NaN (LAMMPS skips its per-atom tally:
                for Tersoff at 64k atoms -3 to +8 % of a call, within this machine's
                noise). The forces are the same either way.
        """
        if not isinstance(energies, (bool, np.bool_)):
            raise ConfigurationError(
                f"{self.name}: evaluate(energies=...) must be True or False, got "
                f"{energies!r}")
        self.check_atoms(atoms)
        n = len(atoms)
        if mask is None:
            mask = np.ones(n, dtype=bool)
        else:
            mask = np.asarray(mask)
            if mask.shape != (n,) or mask.dtype != bool:
                raise ConfigurationError(
                    f"mask must be a boolean array of shape ({n},), got "
                    f"{mask.dtype} {mask.shape}"
                )
        if not mask.any():  # an empty energy sum: zero forces, no work
            return Evaluation(np.zeros((n, 3)), np.full(n, np.nan), n_evaluated=0)
        return self._evaluate(atoms, mask) if energies else self._evaluate_forces(atoms, mask)

    @abc.abstractmethod
    def _evaluate(self, atoms: Atoms, mask: np.ndarray) -> Evaluation:
        """Backend-specific masked evaluation; inputs checked, mask not empty."""

    def _evaluate_forces(self, atoms: Atoms, mask: np.ndarray) -> Evaluation:
        """As :meth:`_evaluate` for a caller that reads no per-atom energies; a backend
        that can skip them overrides this (energies may then be NaN)."""
        return self._evaluate(atoms, mask)

    def weighting_problem(self) -> str | None:
        """Why :meth:`evaluate_weighted` (energy mixing) is unavailable, or None."""
        if self.weighting is None:
            return (f"{self.name} ({type(self).__name__}) cannot weight its per-atom "
                    "energies, so it cannot take part in energy mixing; use force "
                    "mixing, or a backend that can (LAMMPS snap, mliap, sw, tersoff or uf3 "
                    "with mlmix's plugin, ace, mace, sevennet, chgnet)")
        return None

    def evaluate_weighted(self, atoms: Atoms, weights: np.ndarray) -> WeightedEvaluation:
        """The weighted energy sum_i w_i E_i with its exact forces and strain derivative
        (see :mod:`mlmix.potentials.weighted`).

        Args:
            atoms: the structure; not modified.
            weights: ``(N,)`` in [0, 1]. ``"levels"`` backends cost one evaluation per
                distinct non-zero value: quantise them (:func:`~mlmix.potentials.
                weighted.quantise`).

        Raises:
            ConfigurationError: the backend cannot weight (``weighting_problem``), bad
                weights, or atoms it cannot evaluate.
        """
        problem = self.weighting_problem()
        if problem is not None:
            raise ConfigurationError(problem)
        self.check_atoms(atoms)
        w = check_weights(weights, len(atoms))
        if not (w > 0).any():
            return zero_evaluation(len(atoms))
        if self.weighting == "levels":
            return self._sum_levels(atoms, w)
        return self._weighted(atoms, w)

    def _sum_levels(self, atoms: Atoms, w: np.ndarray) -> WeightedEvaluation:
        """``"levels"``: one :meth:`_level` call per distinct weight (or the whole
        minus the complement's levels, :func:`~mlmix.potentials.weighted.sum_levels`)."""
        return sum_levels(w, lambda mask: self._level(atoms, mask))

    def _level(self, atoms: Atoms, mask: np.ndarray) -> WeightedLevel:
        """``"levels"`` hook: energy of the terms owned by the centres ``mask``, its
        exact gradient on every atom, its strain derivative and the atoms computed."""
        raise NotImplementedError

    def _weighted(self, atoms: Atoms, weights: np.ndarray) -> WeightedEvaluation:
        """``"exact"`` hook of :meth:`evaluate_weighted` (inputs checked, some w > 0)."""
        raise NotImplementedError

    def stress(self, atoms: Atoms) -> np.ndarray:
        """Stress of the whole periodic cell, ASE's convention: ``(1/V) dE/d(eps)``.

        Args:
            atoms: a fully periodic structure; not modified.

        Returns:
            ``(6,)`` eV/Å^3, Voigt order (xx, yy, zz, yz, xz, xy).

        Raises:
            ConfigurationError: the backend has no stress (``has_stress`` is False), or
                the cell is not periodic in all three directions.
        """
        if not self.has_stress:
            raise ConfigurationError(
                f"{self.name} gives no stress ({type(self).__name__} has none); quantities "
                "that need it (elastic constants) come from energies instead")
        if not np.all(atoms.pbc):
            raise ConfigurationError(
                f"stress needs a cell periodic in all three directions, got pbc = "
                f"{atoms.pbc.tolist()}")
        self.check_atoms(atoms)
        value = np.asarray(self._stress(atoms), dtype=float)
        if value.shape != (6,) or not np.isfinite(value).all():
            raise CalculationError(f"{self.name} returned a stress of shape {value.shape} "
                                   f"with values {value.tolist()}")
        return value

    def _stress(self, atoms: Atoms) -> np.ndarray:
        """Backend hook of :meth:`stress` (inputs checked); only if ``has_stress``."""
        raise NotImplementedError

    def as_calculator(self) -> PotentialCalculator:
        """This potential on all atoms as an ASE calculator."""
        return PotentialCalculator(self)

    def close(self) -> None:  # noqa: B027 - an optional hook, a no-op by default
        """Release engine resources (a LAMMPS instance, a model). Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def exact_r_buff(potential: Potential) -> float | None:
    """Å, the smallest ``r_buff`` at which the forces on weighted atoms are the
    whole-system forces of ``potential`` (its receptive field), or None when no buffer
    makes them exact (a carved cluster of a message-passing model)."""
    return float(potential.receptive_field) if potential.masked_exact else None


def default_r_buff(potential: Potential) -> float:
    """Å, the ``r_buff`` used when none is given: the exact one, else the cutoff."""
    need = exact_r_buff(potential)
    return float(potential.cutoff) if need is None else need


def buffer_problem(potential: Potential, r_buff: float, key: str = "r_buff",
                   approximate: str = "pass allow_approximate=True") -> str | None:
    """Why forces on weighted atoms would be approximate with ``r_buff`` (Å), and what
    to do (set ``key``, or ``approximate`` and measure), or None when they are exact."""
    need = exact_r_buff(potential)
    measure = "and measure the force error against an all-expensive run"
    if need is None:
        return (f"{potential.name} has a receptive field of {potential.receptive_field} Å "
                f"beyond its cutoff {potential.cutoff} Å (a message-passing model on carved "
                f"clusters): its forces on weighted atoms are approximate at any affordable "
                f"buffer; {approximate} {measure}")
    if r_buff < need:
        what = "cutoff" if potential.is_local else "receptive field"
        return (f"{key} = {r_buff} Å is below the {what} {need} Å of {potential.name}: "
                f"forces on weighted atoms would be approximate; set {key} >= {need}, or "
                f"{approximate} {measure}")
    return None


def nonfinite_rows(x: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``x`` (``(N, k)``) that hold a NaN or inf.

    One pass over ``x`` when every entry is finite (the usual case): a NaN or inf
    anywhere makes the sum non-finite. 25x faster than the row test at 64k x 3.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # (inf - inf, or an overflow)
        total = x.sum()
    if np.isfinite(total):
        return np.zeros(0, dtype=int)
    return np.flatnonzero(~np.isfinite(x).all(axis=1))


def species_mask(numbers: np.ndarray, species) -> np.ndarray:
    """``(N,)`` bool: which of the atomic ``numbers`` (N,) belong to ``species`` (symbols).

    A table lookup: ``np.isin`` sorts, 1.0 against 0.15 ms at 64k atoms, and this runs
    at every MD step."""
    table = np.zeros(len(chemical_symbols), dtype=bool)
    table[[atomic_numbers[s] for s in species]] = True
    return table[numbers]


def check_species(name: str, numbers: np.ndarray, species) -> None:
    """Raise :class:`ConfigurationError` naming the species of ``numbers`` (N,) that
    the potential ``name`` does not describe (``species``: its symbols)."""
    outside = ~species_mask(numbers, species)
    if outside.any():
        unknown = sorted(chemical_symbols[z] for z in np.unique(numbers[outside]))
        raise ConfigurationError(
            f"{name} describes {sorted(species)} but the structure contains {unknown}; "
            "use a potential for these species or keep them in the expensive core"
        )


def check_finite_positions(atoms: Atoms) -> None:
    """Raise :class:`ConfigurationError` if any position or cell entry is NaN or inf."""
    pos = atoms.positions
    bad = nonfinite_rows(pos)
    if bad.size:
        raise ConfigurationError(
            f"{bad.size} atoms have NaN or infinite positions (first: index "
            f"{bad[0]}, {pos[bad[0]].tolist()}); check the structure or the last MD step"
        )
    if not np.isfinite(atoms.cell.array).all():
        raise ConfigurationError("the cell contains NaN or infinite entries")


class PotentialCalculator(Calculator):
    """ASE calculator for one potential on all atoms (energy, forces, energies).

    The reference against which mixed runs are compared, and a convenient way to use
    any mlmix backend on its own.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces"]

    def __init__(self, potential: Potential, **kwargs):
        super().__init__(**kwargs)
        self.potential = potential

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.atoms is None:  # pragma: no cover - ASE sets it from atoms above
            raise ConfigurationError("PotentialCalculator.calculate needs atoms")
        result = self.potential.evaluate(self.atoms)
        energy = float(result.energies.sum())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": result.energies,
            "forces": result.forces,
        }
