"""Force mixing: F_i = p_i F_i^exp + (1 - p_i) F_i^cheap (method.md §1), and energy mixing.

:func:`mix_forces` is the maths. :class:`MixedCalculator` is the ASE face: it updates
the regions, runs the expensive potential on its evaluation set and the cheap one on
the rest, and mixes, so ASE's MD integrators, optimisers and NEB can drive it. With
``mixing="energy"`` it mixes per-atom energies instead (:mod:`mlmix.energy_mixing`):
then energy and stress are defined and are what the calculator returns.

What the calculator returns for quantities the method does not define
------------------------------------------------------------------------
Mixed forces are not the gradient of any energy, so there is no total energy and no
stress. ``get_forces`` is the product. ``get_potential_energy`` returns NaN — not a
number, on purpose — so that ASE optimisers and MD loggers, which print an energy,
keep running (FIRE, BFGS, LBFGS and MD use the forces only) while nobody is handed a
number that means nothing; converge relaxations on forces (``fmax``) alone.
``get_stress`` raises :class:`~mlmix.errors.PropertyNotDefinedError`, an ASE
``PropertyNotImplementedError``, which ASE code that probes for a stress expects: NPT
and cell relaxation are not possible with force mixing. For an energy, evaluate the
expensive potential on the final structure.

Tools that must *rank* configurations by energy (ASE's NEB picks tangents and the
climbing image by comparing image energies) can opt in to ``energy="weighted"``:
the weighted sum of per-atom energies ``sum_i p_i E_i^exp + (1 - p_i) E_i^cheap``.
It is well defined and close to either potential's energy where they agree, but its
gradient is not the mixed force, so it is never the default and never a barrier: for
barriers, re-evaluate the images with the expensive potential.
"""

from __future__ import annotations

import json
import time
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols

from .arguments import number_argument
from .carving import within
from .contacts import ContactWatch
from .energy_mixing import (
    DEFAULT_LEVELS,
    correct_momenta,
    energy_shift,
    exact_core,
    mixed_energy,
    shift_per_atom,
)
from .errors import (
    CalculationError,
    ConfigurationError,
    PropertyNotDefinedError,
)
from .identity import ID_ARRAY
from .mts import (
    check_correction_every,
    impulse_forces,
    is_outer_step,
    schedule_problem,
    undescribed_problem,
)
from .potentials.base import Evaluation, Potential, buffer_problem, nonfinite_rows, species_mask
from .potentials.weighted import WeightedEvaluation, quantise, stress_from_strain_derivative
from .regions import Regions, RegionTracker

HISTORY_LENGTH = 1000
"""Number of recent :class:`StepReport` s a :class:`MixedCalculator` keeps."""


def mix_forces(
    p: np.ndarray,
    f_expensive: np.ndarray,
    f_cheap: np.ndarray,
    subtract_mean: bool = False,
) -> np.ndarray:
    """Per-atom mix of two force fields.

    Args:
        p: ``(N,)`` weights of the expensive forces, 0..1.
        f_expensive: ``(N, 3)`` eV/Å, read only where p > 0 (masked backends leave
            other rows undefined, possibly NaN).
        f_cheap: ``(N, 3)`` eV/Å, read only where p < 1.
        subtract_mean: remove the mean force so the net force is zero (mixed forces
            do not obey Newton's third law across the seam, so the centre of mass
            drifts otherwise).

    Returns:
        ``(N, 3)`` eV/Å.
    """
    forces = np.array(f_cheap, dtype=float, copy=True)
    w = np.flatnonzero(p > 0)
    pw = p[w, None]
    forces[w] = pw * f_expensive[w] + (1.0 - pw) * np.where(pw < 1.0, f_cheap[w], 0.0)
    if subtract_mean:
        forces -= forces.mean(axis=0)
    return forces


@dataclass(frozen=True)
class StepReport:
    """What one force call cost and did.

    Attributes:
        step: step number given to the regions.
        rebuilt: True if the regions were rebuilt on this call.
        counts: region set sizes (see :meth:`Regions.counts`).
        n_expensive, n_cheap: atoms each potential really evaluated.
        seconds: wall time of ``regions``, ``expensive``, ``cheap`` and ``total``.
        corrected: False on the cheap-only steps of multiple time stepping
            (``correction_every > 1``), True otherwise.
        energy_exchanged: eV, energy mixing only: E(new weights) - E(old weights) at
            the positions of a rebuild that changed the weights (0 otherwise).
        energy_unabsorbed: eV, the part of ``energy_exchanged`` the momentum
            correction could not take from the atoms whose weights changed (all of it
            when the correction is off or the atoms have no momenta).
    """

    step: int
    rebuilt: bool
    counts: dict
    n_expensive: int
    n_cheap: int
    seconds: dict
    corrected: bool = True
    energy_exchanged: float = 0.0
    energy_unabsorbed: float = 0.0


def changed_properties(old: Atoms | None, new: Atoms, tol: float = 1e-15,
                       excluded: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """ASE's ``compare_atoms`` (the properties of ``all_changes`` that differ by more
    than ``tol``), with an exact comparison first: ASE's ``np.allclose`` on every
    array cost 6 ms per MD step at 32k atoms, more than the mixing itself."""
    if old is None:
        return list(all_changes)

    def same(a, b) -> bool:
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return False
        if np.array_equal(a, b):
            return True
        return a.dtype != bool and bool(np.abs(a - b).max() <= tol)

    changes = []
    for p in all_changes:
        if p in excluded:
            continue
        if p in ("cell", "pbc"):  # attributes, not arrays
            if not same(getattr(old, p), getattr(new, p)):
                changes.append(p)
        elif (p in old.arrays) != (p in new.arrays) or (
                p in old.arrays and not same(old.arrays[p], new.arrays[p])):
            changes.append(p)
    return changes


class MixedCalculator(Calculator):
    """An ASE calculator that mixes an expensive and a cheap potential per atom.

    Args:
        expensive: accurate potential, evaluated on the expensive set only.
        cheap: fast potential for the rest.
        regions: region tracker (radii, seeds, rebuild policy, hysteresis).
        subtract_mean_force: remove the mean of the mixed forces.
        mask_cheap: evaluate the cheap potential only on its evaluation set (all but
            the deep core); by default it runs on every atom, which is faster unless
            the deep core is a large part of the system.
        allow_approximate: accept approximate forces on weighted atoms: ``r_buff``
            below a potential's cutoff, a message-passing expensive potential (its
            receptive field exceeds its cutoff), or a backend that reports an
            inexact evaluation (a cluster buffer below twice the receptive field).
            Refused by default; measure the error when you accept it.
        store_arrays: write ``mlmix_p``, ``mlmix_expensive`` and ``mlmix_cheap`` onto
            ``atoms.arrays`` after every call, so trajectories carry them.
        energy: what ``get_potential_energy`` returns: ``"nan"`` (default; force
            mixing has no energy) or ``"weighted"`` (see the module docstring).
        min_distance: Å. Atoms closer than this (minimum image) are overlapping and
            the structure is refused with a :class:`~mlmix.errors.ConfigurationError`
            naming the closest pair. None (default): per species pair, half the sum
            of the covalent radii (:mod:`mlmix.contacts`; 1.11 Å for Si-Si); 0
            disables the check. Checked at the first call and at every region
            rebuild, before either potential runs.
        correction_every: k >= 1. With k > 1 the calculator serves the impulse
            multiple-time-step integrator of :mod:`mlmix.mts` and is for MD only:
            calls whose step is a multiple of k return ``F^cheap + k p (F^exp -
            F^cheap)`` and the others the cheap forces alone (no expensive
            evaluation, regions unchanged, energy NaN), so ASE's velocity Verlet (or
            :class:`~mlmix.engines.langevin.RegionLangevin`) driving it integrates the mixed force
            with the correction as the slow force. Needs the cheap potential on every
            atom (no ``mask_cheap``, no species it lacks) and a rebuild period that
            is a multiple of k. Never use it with an optimiser or NEB.
        mixing: ``"force"`` (default) mixes forces; ``"energy"`` mixes per-atom
            energies with weights w = p quantised to multiples of ``1 / n_levels``
            and fixed between rebuilds (:mod:`mlmix.energy_mixing`): energy, forces
            and stress are then one exact gradient, so NVE conserves E + K between
            rebuilds and NPT and cell relaxation work. Both potentials must weight
            their per-atom energies (``Potential.weighting``); ``energy``,
            ``correction_every``, ``mask_cheap`` and ``subtract_mean_force`` keep
            their defaults, and ``r_buff`` is not needed for exactness (each
            potential evaluates only its weighted atoms, exactly). Forces equal the
            expensive ones only on core atoms deeper than the larger receptive
            field (counted as ``"exact_core"`` in each report).
        n_levels: energy mixing: weights are multiples of 1/n_levels (default 16);
            a LAMMPS potential costs one call per distinct weight. 0: the
            weights are p itself, unquantised, for potentials that weight exactly
            (``weighting == "exact"``: ACE, MACE, SevenNet, CHGNet,
            ``LinearWeighted``, ``SnapWeighted``).
        energy_correction: energy mixing: at a rebuild that changes the weights,
            scale the momenta of the atoms whose weight changed and of the atoms
            within the larger receptive field of them so that E + K is conserved
            (:func:`~mlmix.energy_mixing.correct_momenta`); with ``timestep`` (fs)
            set, the target is the total energy velocity Verlet would have had after
            its second half kick with the old weights. Default True; the energy exchanged and any
            part not absorbed are in each :class:`StepReport`.
        timestep: fs, the MD time step, for ``energy_correction`` (optional).
        energy_shift: energy mixing: eV per species added to each cheap per-atom
            energy (no force): ``"auto"`` (default) aligns the two potentials on the
            first structure's core (:func:`~mlmix.energy_mixing.energy_shift`; the
            values are in ``energy_shift_used``), a mapping gives them, ``{}`` none.
            Without it, potentials whose cohesive energies differ (SW and Tersoff Si:
            0.29 eV/atom) exchange that much per atom at every weight change.

    Each call counts as one step for the region rebuild schedule (ASE's MD calls the
    forces once per step). The atoms receive a per-atom ``mlmix_id`` array that makes
    weights follow atoms through reordering, deletion and insertion.

    One calculator on several structures: atoms whose identities the tracker has
    never followed (a fresh copy built again, without ``mlmix_id``, or with ids of
    another run) are a new structure. The regions start afresh on them and the step
    count restarts at 0, so the forces are exactly those of a new calculator (see
    :class:`~mlmix.regions.RegionTracker`); ``IndexSeeds`` indices then index the
    new structure. A seed source that finds no seed where the user gave some raises
    rather than let every atom go cheap. Atoms added to a known structure (id 0) are
    placed by a rebuild; ``atoms.copy()`` keeps the ids and so continues the run.

    Raises (from a force call):
        ConfigurationError: bad input, before any potential runs: overlapping atoms
            (``min_distance``), NaN positions, species a potential lacks, seeds that
            do not fit the structure.
        CalculationError: the mixed forces are not finite (the message names how
            many atoms and the first); no NaN force is ever returned.
    """

    implemented_properties = ["forces", "energy"]

    def __init__(
        self,
        expensive: Potential,
        cheap: Potential,
        regions: RegionTracker,
        *,
        subtract_mean_force: bool = False,
        mask_cheap: bool = False,
        allow_approximate: bool = False,
        store_arrays: bool = True,
        energy: Literal["nan", "weighted"] = "nan",
        min_distance: float | None = None,
        correction_every: int = 1,
        mixing: Literal["force", "energy"] = "force",
        n_levels: int = DEFAULT_LEVELS,
        energy_correction: bool = True,
        timestep: float | None = None,
        energy_shift: str | dict[str, float] = "auto",
        **kwargs,
    ):
        if energy not in ("nan", "weighted"):
            raise ConfigurationError(f"energy must be 'nan' or 'weighted', got {energy!r}")
        if mixing not in ("force", "energy"):
            raise ConfigurationError(
                f"MixedCalculator mixing must be 'force' or 'energy', got {mixing!r}")
        k = check_correction_every(correction_every, "MixedCalculator correction_every")
        for name, value in (("expensive", expensive), ("cheap", cheap)):
            if not isinstance(value, Potential):
                raise ConfigurationError(
                    f"MixedCalculator {name} must be an mlmix Potential (e.g. "
                    f"LammpsPotential.sw('Si.sw', ['Si'])), got {value!r}; wrap an ASE "
                    "calculator in mlmix.potentials.AseClusterPotential")
        if not isinstance(regions, RegionTracker):
            raise ConfigurationError(
                f"MixedCalculator regions must be a RegionTracker(spec, seeds), got "
                f"{regions!r}")
        problem = schedule_problem(k, regions.nevery)
        problems = [problem and f"RegionTracker nevery = {problem}"]
        if k > 1 and mask_cheap:
            problems.append("mask_cheap=True leaves the core without a cheap force, but "
                            f"correction_every = {k} integrates the cheap force on every "
                            "atom at every step: drop mask_cheap")
        if mixing == "energy":
            problems += energy_mode_problems(expensive, cheap, energy=energy, k=k,
                                             mask_cheap=mask_cheap,
                                             subtract_mean_force=subtract_mean_force,
                                             n_levels=n_levels, timestep=timestep,
                                             shift=energy_shift)
        found = [q for q in problems if q is not None and q]
        if found:
            raise ConfigurationError("MixedCalculator: " + "; ".join(found))
        if min_distance is not None:
            min_distance = number_argument("MixedCalculator min_distance", min_distance,
                                           "Å", minimum=0, what="distance",
                                           note="None = per species pair, 0 = no check")
        super().__init__(**kwargs)
        self.energy = energy
        self.expensive = expensive
        self.cheap = cheap
        self.tracker = regions
        self.subtract_mean_force = subtract_mean_force
        self.mask_cheap = mask_cheap
        self.store_arrays = store_arrays
        # checked at every rebuild, with a neighbour search only when needed
        self._contacts = ContactWatch(min_distance, key="MixedCalculator min_distance")
        self.step = 0
        self.correction_every = k
        self.allow_approximate = allow_approximate
        # The last reports only: a long run must not grow memory step by step.
        self.history: deque[StepReport] = deque(maxlen=HISTORY_LENGTH)
        self.mixing = mixing
        self.n_levels = int(n_levels)
        self.energy_correction = bool(energy_correction)
        self.timestep = None if timestep is None else float(timestep)
        self.energy_shift = energy_shift
        #: energy mixing: the shift in use (eV per species), set at the first call
        self.energy_shift_used: dict[str, float] | None = (
            None if isinstance(energy_shift, str) else dict(energy_shift))
        #: energy mixing: the weights in force and the ids they belong to
        self._weights: tuple[np.ndarray, np.ndarray] | None = None
        self._per_rebuild: tuple[np.ndarray, int] | None = None  # (shift, exact core size)
        #: energy mixing: sums over the run of StepReport.energy_exchanged / _unabsorbed
        self.energy_exchanged_total = 0.0
        self.energy_exchanged_abs_total = 0.0
        self.energy_unabsorbed_total = 0.0
        if mixing == "energy":
            self.implemented_properties = ["energy", "free_energy", "forces", "stress"]
            reach = max(expensive.receptive_field, cheap.receptive_field)
            if regions.spec.r_core <= reach:
                warnings.warn(
                    f"energy mixing: forces equal the expensive forces only on core atoms "
                    f"deeper than {reach:g} Å (the larger receptive field) inside the core, "
                    f"and r_core = {regions.spec.r_core:g} Å leaves none that deep around a "
                    f"single seed; widen r_core beyond {reach:g} Å where core forces must "
                    "be the expensive ones", ShallowCoreWarning, stacklevel=2)
        elif not allow_approximate:
            self._check_buffer(expensive)
            if mask_cheap:
                self._check_buffer(cheap)

    def energy_state(self) -> dict:
        """Energy mixing's state for a checkpoint: the cheap-energy shift, the weights in
        force (with the ids they belong to) and the run's exchanged-energy totals, so
        a resumed run has the same energy (empty in force mode)."""
        if self.mixing != "energy":
            return {}
        ids, w = self._weights if self._weights is not None else (None, None)
        return {"shift": self.energy_shift_used, "ids": ids, "weights": w,
                "exchanged": self.energy_exchanged_total,
                "exchanged_abs": self.energy_exchanged_abs_total,
                "unabsorbed": self.energy_unabsorbed_total}

    def restore_energy_state(self, state: dict) -> None:
        """Continue from an :meth:`energy_state`."""
        if self.mixing != "energy" or not state:
            return
        self.energy_shift_used = state["shift"]
        self._weights = None if state["ids"] is None else (state["ids"], state["weights"])
        self.energy_exchanged_total = float(state["exchanged"])
        self.energy_exchanged_abs_total = float(state["exchanged_abs"])
        self.energy_unabsorbed_total = float(state["unabsorbed"])

    def _check_buffer(self, potential: Potential) -> None:
        problem = buffer_problem(potential, self.tracker.spec.r_buff)
        if problem is not None:
            raise ConfigurationError(problem)

    @property
    def regions(self) -> Regions | None:
        """The regions used for the last force call."""
        return self.tracker.regions

    @property
    def min_distance(self) -> float | None:
        """Å, the contact threshold (None: per species pair; 0: no check)."""
        return self._contacts.min_distance

    @property
    def _energies(self) -> bool:
        """Whether force mixing reads per-atom energies (the weighted energy); without
        them the potentials may skip tallying them."""
        return self.energy == "weighted"

    def current_regions(self) -> Regions:
        """:attr:`regions`, which exist once forces were computed (CalculationError
        before the first force call)."""
        if self.tracker.regions is None:
            raise CalculationError("the mixed calculator has not evaluated forces yet")
        return self.tracker.regions

    def get_property(self, name, atoms=None, allow_calculation=True):
        # ASE's get_stress and every tool that asks for "stress" come through here; the
        # error says why there is none (it is still ASE's PropertyNotImplementedError).
        if self.mixing == "energy" and name in ("stress", "stresses"):
            structure = atoms if atoms is not None else self.atoms
            if name == "stresses" or structure is not None and not np.all(structure.pbc):
                raise PropertyNotDefinedError(
                    f"energy mixing gives no {name} here: the stress of the whole cell "
                    "needs a cell periodic in all three directions, and per-atom "
                    "stresses are not defined")
        elif name in ("stress", "stresses"):
            raise PropertyNotDefinedError(
                f"force mixing defines no {name} (the mixed forces have no energy "
                "function), so NPT and cell relaxation are not possible; relax or run at "
                "fixed cell"
            )
        return super().get_property(name, atoms, allow_calculation)

    def check_state(self, atoms, tol=1e-15):
        # ASE compares positions, numbers and cell only: a fresh copy identical to the
        # last structure would be served the old results without ever being seen
        # (no ids, no region arrays). Identity counts as a change too.
        changes = changed_properties(self.atoms, atoms, tol, set(self.ignored_changes))
        if not changes and self.tracker.is_new_structure(atoms):
            changes.append(ID_ARRAY)
        return changes

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = atoms if atoms is not None else self.atoms
        if self.tracker.is_new_structure(atoms):
            self.step = 0  # the tracker starts afresh on it, its schedule with it
        if self.tracker.regions is not None and not is_outer_step(self.step,
                                                                  self.correction_every):
            self._cheap_step(atoms)  # (the cheap potential checks the atoms it evaluates)
            return
        # Input errors surface before any work: positions, then species the expensive
        # potential must describe (every atom may become expensive), then contacts.
        self.expensive.check_atoms(atoms)
        t0 = time.perf_counter()
        if self.tracker.rebuilds(atoms, self.step):
            self._check_contacts(atoms)
        regions = self.tracker.update(atoms, self.step)
        rebuilt = self.tracker.last_build == self.step
        undescribed = self._undescribed_by_cheap(atoms, regions)
        problem = undescribed_problem(self.correction_every, self.cheap.name,
                                      {chemical_symbols[z] for z in atoms.numbers[undescribed]})
        if problem:
            raise ConfigurationError(problem)
        t1 = time.perf_counter()
        if self.mixing == "energy":
            self._energy_step(atoms, regions, undescribed, rebuilt, t0, t1)
            return

        n = len(atoms)
        exp = Evaluation(np.zeros((n, 3)), np.full(n, np.nan), 0)
        if regions.expensive.any():
            exp = self.expensive.evaluate(atoms, regions.expensive, energies=self._energies)
            if not exp.exact and not self.allow_approximate:
                raise ConfigurationError(
                    f"{self.expensive.name} evaluated the expensive set approximately "
                    "(a carved cluster narrower than twice its receptive field); widen its "
                    "buffer or pass allow_approximate=True"
                )
        t2 = time.perf_counter()

        cheap = Evaluation(np.zeros((n, 3)), np.full(n, np.nan), 0)
        # multiple time stepping needs the cheap force on every atom, even an all-core cell
        if regions.cheap.any() or self.correction_every > 1:
            cheap = self._cheap_evaluation(atoms, regions, undescribed)
        t3 = time.perf_counter()

        p = regions.p
        forces = mix_forces(p, exp.forces, cheap.forces)
        self._check_finite(forces, p, exp, cheap)
        forces = impulse_forces(cheap.forces, forces, self.correction_every)
        if self.subtract_mean_force:
            forces -= forces.mean(axis=0)
        energy = np.nan
        if self.energy == "weighted":
            energy = float(np.sum(p[p > 0] * exp.energies[p > 0])
                           + np.sum((1 - p[p < 1]) * cheap.energies[p < 1]))
        self.results = {"forces": forces, "energy": energy}
        if self.store_arrays:
            atoms.arrays.update(regions.per_atom_arrays())
        self.history.append(
            StepReport(
                step=self.step,
                rebuilt=rebuilt,
                counts=regions.counts(),
                n_expensive=exp.n_evaluated,
                n_cheap=cheap.n_evaluated,
                seconds={
                    "regions": t1 - t0,
                    "expensive": t2 - t1,
                    "cheap": t3 - t2,
                    "total": time.perf_counter() - t0,
                },
            )
        )
        self.step += 1

    def _energy_step(self, atoms: Atoms, regions: Regions, undescribed: np.ndarray,
                     rebuilt: bool, t0: float, t1: float) -> None:
        """One call in energy mixing (see :mod:`mlmix.energy_mixing`)."""
        w = quantise(regions.p, self.n_levels) if self.n_levels else regions.p
        reach = max(self.expensive.receptive_field, self.cheap.receptive_field)
        if self.energy_shift_used is None or (rebuilt and self.step == 0
                                              and self.energy_shift == "auto"):
            self.energy_shift_used = energy_shift(self.expensive, self.cheap, atoms, w == 1,
                                                  reach, undescribed)
        if rebuilt or self._per_rebuild is None:
            # fixed between rebuilds, and a neighbour search each: not per step
            self._per_rebuild = (shift_per_atom(atoms, self.energy_shift_used),
                                 int(exact_core(atoms, w, reach).sum()))
        shift, n_exact = self._per_rebuild
        mix = mixed_energy(self.expensive, self.cheap, atoms, w, undescribed, shift)
        self._check_finite(mix.forces, w, mix.expensive, mix.cheap)
        exchanged = unabsorbed = 0.0
        if rebuilt and self._weights is not None:
            exchanged, unabsorbed = self._rebuild_exchange(atoms, w, mix, undescribed,
                                                           shift)
        if rebuilt or self._weights is None:
            self._weights = (atoms.arrays[ID_ARRAY].copy(), w)
        self.energy_exchanged_total += exchanged
        self.energy_unabsorbed_total += unabsorbed
        self.results = {"energy": mix.energy, "free_energy": mix.energy,
                        "forces": mix.forces}
        if np.all(atoms.pbc):
            self.results["stress"] = stress_from_strain_derivative(
                mix.strain_derivative, atoms.get_volume())
        if self.store_arrays:
            atoms.arrays.update(regions.per_atom_arrays())
        counts = regions.counts()
        counts["exact_core"] = n_exact
        t3 = time.perf_counter()
        self.history.append(StepReport(
            step=self.step, rebuilt=rebuilt, counts=counts,
            n_expensive=mix.expensive.n_evaluated, n_cheap=mix.cheap.n_evaluated,
            seconds={"regions": t1 - t0, **mix.seconds, "total": t3 - t0},
            energy_exchanged=exchanged, energy_unabsorbed=unabsorbed))
        self.step += 1

    def _rebuild_exchange(self, atoms: Atoms, w: np.ndarray, mix, undescribed: np.ndarray,
                          shift: np.ndarray) -> tuple[float, float]:
        """(energy exchanged, energy not absorbed) at a rebuild; momenta corrected."""
        old_ids, old_w = self._weights  # type: ignore[misc]
        ids = atoms.arrays[ID_ARRAY]
        if not np.array_equal(old_ids, ids):
            # atoms were added, removed or reordered: carry the old weights by identity
            lookup = dict(zip(old_ids.tolist(), old_w.tolist()))
            old_w = np.array([lookup.get(i, w[k]) for k, i in enumerate(ids.tolist())])
        changed = old_w != w
        if not changed.any():
            return 0.0, 0.0
        before = mixed_energy(self.expensive, self.cheap, atoms, old_w, undescribed, shift)
        exchanged = mix.energy - before.energy
        self.energy_exchanged_abs_total += abs(exchanged)
        if not self.energy_correction or not atoms.has("momenta"):
            return exchanged, exchanged
        kicks = reference = None
        if self.timestep is not None:
            half = 0.5 * self.timestep * units.fs
            kicks, reference = half * mix.forces, half * before.forces
        # the changed atoms and every atom whose force they change (one changed atom
        # alone has no kinetic energy relative to its own centre of mass to give)
        reach = max(self.expensive.receptive_field, self.cheap.receptive_field)
        group = within(atoms.positions, atoms.cell.array, atoms.pbc, changed, reach)
        momenta, left = correct_momenta(atoms.get_momenta(), atoms.get_masses(), group,
                                        exchanged, kicks, reference)
        atoms.set_momenta(momenta, apply_constraint=False)
        return exchanged, left

    def _cheap_step(self, atoms: Atoms) -> None:
        """A step between outer steps of multiple time stepping: the cheap forces of
        every atom, nothing else (see :mod:`mlmix.mts`)."""
        t0 = time.perf_counter()
        cheap = self.cheap.evaluate(atoms, None, energies=False)
        forces = cheap.forces
        self._check_finite(forces, np.zeros(len(atoms)), cheap, cheap)
        if self.subtract_mean_force:
            forces = forces - forces.mean(axis=0)
        self.results = {"forces": forces, "energy": np.nan}
        seconds = time.perf_counter() - t0
        self.history.append(StepReport(
            step=self.step, rebuilt=False, counts=self.current_regions().counts(),
            n_expensive=0, n_cheap=cheap.n_evaluated, corrected=False,
            seconds={"regions": 0.0, "expensive": 0.0, "cheap": seconds, "total": seconds}))
        self.step += 1

    def _check_contacts(self, atoms: Atoms) -> None:
        problem = self._contacts.problem(atoms)
        if problem:
            raise ConfigurationError(f"{problem} (0 turns the check off)")

    def _check_finite(self, forces: np.ndarray, p: np.ndarray,
                      exp: Evaluation | WeightedEvaluation,
                      cheap: Evaluation | WeightedEvaluation) -> None:
        bad = nonfinite_rows(forces)
        if not bad.size:
            return
        i = int(bad[0])
        sources = [pot.name for pot, ev, used in ((self.expensive, exp, p[i] > 0),
                                                  (self.cheap, cheap, p[i] < 1))
                   if used and not np.isfinite(ev.forces[i]).all()]
        raise CalculationError(
            f"the mixed forces of {bad.size} atoms are not finite (first: index {i}, "
            f"p = {p[i]:g}, from {' and '.join(sources) or 'the mixing'}); atoms may "
            "overlap or have left the potentials' range: check the structure (and "
            "min_distance) or the last MD step, or shorten the time step"
        )

    def _undescribed_by_cheap(self, atoms: Atoms, regions: Regions) -> np.ndarray:
        """Atoms of species the cheap potential lacks; they must have p = 1."""
        if self.cheap.species is None:
            return np.zeros(len(atoms), bool)
        undescribed = ~species_mask(atoms.numbers, self.cheap.species)
        outside = np.flatnonzero(undescribed & (regions.p < 1))
        if outside.size:
            symbols = sorted({chemical_symbols[z] for z in atoms.numbers[outside]})
            raise ConfigurationError(
                undescribed_outside_core(outside.size, int(outside[0]), symbols,
                                         self.cheap.name))
        return undescribed

    def _cheap_evaluation(self, atoms, regions, undescribed) -> Evaluation:
        # Core atoms of species the cheap potential lacks are invisible to it: they are
        # removed before the call and get no cheap force (they have p = 1).
        keep = ~undescribed
        view = atoms if keep.all() else atoms[keep]
        mask = regions.cheap[keep] if self.mask_cheap else None
        result = self.cheap.evaluate(view, mask, energies=self._energies)
        if keep.all():
            return result
        forces = np.zeros((len(atoms), 3))
        energies = np.full(len(atoms), np.nan)
        forces[keep] = result.forces
        energies[keep] = result.energies
        return Evaluation(forces, energies, result.n_evaluated, result.exact)


class ShallowCoreWarning(UserWarning):
    """Energy mixing with a core too thin for any atom to get the expensive force."""


def energy_mode_problems(expensive: Potential, cheap: Potential, *, energy: str, k: int,
                         mask_cheap: bool, subtract_mean_force: bool, n_levels,
                         timestep, shift) -> list[str]:
    """Every reason ``mixing="energy"`` cannot run with these arguments (empty: it can)."""
    found = []
    for role, pot in (("expensive", expensive), ("cheap", cheap)):
        problem = pot.weighting_problem()
        if problem is not None:
            found.append(f"mixing='energy' needs weighted energies of the {role} "
                         f"potential: {problem}")
    fixed = (("energy", energy != "nan", "energy mixing returns its own energy"),
             ("correction_every", k != 1, "multiple time stepping mixes forces"),
             ("mask_cheap", mask_cheap, "the cheap potential already evaluates only "
              "its weighted atoms"),
             ("subtract_mean_force", subtract_mean_force, "the forces are a gradient and "
              "sum to zero already; subtracting a mean would break energy conservation"))
    found += [f"{key} must keep its default with mixing='energy' ({why})"
              for key, bad, why in fixed if bad]
    if isinstance(n_levels, bool) or not isinstance(n_levels, (int, np.integer)) or n_levels < 0:
        found.append(f"n_levels must be an integer >= 1 (weights are multiples of "
                     f"1/n_levels) or 0 (unquantised weights), got {n_levels!r}")
    elif n_levels == 0:
        found += [f"n_levels = 0 (unquantised weights) needs potentials that weight "
                  f"exactly, but the {role} potential {pot.name} weights by levels (one "
                  f"evaluation per distinct weight, so every blend atom would cost one); "
                  f"use n_levels >= 1" for role, pot in (("expensive", expensive),
                                                          ("cheap", cheap))
                  if pot.weighting == "levels"]
    if timestep is not None and not (isinstance(timestep, (int, float)) and timestep > 0):
        found.append(f"timestep must be a time step > 0 in fs, got {timestep!r}")
    if shift != "auto" and not (isinstance(shift, dict) and all(
            isinstance(k, str) and isinstance(v, (int, float)) and np.isfinite(v)
            for k, v in shift.items())):
        found.append(f"energy_shift must be 'auto' or a mapping of element symbol to eV, "
                     f"got {shift!r}")
    return found


def undescribed_outside_core(n: int, first: int, symbols: list[str], cheap_name: str) -> str:
    """The message for ``n`` atoms of ``symbols`` (first: index ``first``) with p < 1
    that the cheap potential ``cheap_name`` does not describe, with the fix in Python
    and in a run config."""
    return (
        f"{n} atoms of {symbols} (e.g. index {first}) lie outside the core, but the cheap "
        f"potential {cheap_name} does not describe {symbols}; make them seeds so they "
        f"stay expensive: SpeciesSeeds({symbols!r}) in Python, or in a run config "
        f"[regions.seeds] kind = \"species\", species = {json.dumps(symbols)}"
    )
