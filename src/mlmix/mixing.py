"""Force mixing: F_i = p_i F_i^exp + (1 - p_i) F_i^cheap (method.md §1).

:func:`mix_forces` is the maths. :class:`MixedCalculator` is the ASE face: it updates
the regions, runs the expensive potential on its evaluation set and the cheap one on
the rest, and mixes, so ASE's MD integrators, optimisers and NEB can drive it.

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
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_numbers, chemical_symbols

from .arguments import number_argument
from .contacts import contact_problem
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
from .potentials.base import Evaluation, Potential, buffer_problem
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
    """

    step: int
    rebuilt: bool
    counts: dict
    n_expensive: int
    n_cheap: int
    seconds: dict
    corrected: bool = True


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
        **kwargs,
    ):
        if energy not in ("nan", "weighted"):
            raise ConfigurationError(f"energy must be 'nan' or 'weighted', got {energy!r}")
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
        self.min_distance = min_distance
        self.step = 0
        self.correction_every = k
        self.allow_approximate = allow_approximate
        # The last reports only: a long run must not grow memory step by step.
        self.history: deque[StepReport] = deque(maxlen=HISTORY_LENGTH)
        if not allow_approximate:
            self._check_buffer(expensive)
            if mask_cheap:
                self._check_buffer(cheap)

    def _check_buffer(self, potential: Potential) -> None:
        problem = buffer_problem(potential, self.tracker.spec.r_buff)
        if problem is not None:
            raise ConfigurationError(problem)

    @property
    def regions(self) -> Regions | None:
        """The regions used for the last force call."""
        return self.tracker.regions

    def current_regions(self) -> Regions:
        """:attr:`regions`, which exist once forces were computed (CalculationError
        before the first force call)."""
        if self.tracker.regions is None:
            raise CalculationError("the mixed calculator has not evaluated forces yet")
        return self.tracker.regions

    def get_property(self, name, atoms=None, allow_calculation=True):
        # ASE's get_stress and every tool that asks for "stress" come through here; the
        # error says why there is none (it is still ASE's PropertyNotImplementedError).
        if name in ("stress", "stresses"):
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

        n = len(atoms)
        exp = Evaluation(np.zeros((n, 3)), np.full(n, np.nan), 0)
        if regions.expensive.any():
            exp = self.expensive.evaluate(atoms, regions.expensive)
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

    def _cheap_step(self, atoms: Atoms) -> None:
        """A step between outer steps of multiple time stepping: the cheap forces of
        every atom, nothing else (see :mod:`mlmix.mts`)."""
        t0 = time.perf_counter()
        cheap = self.cheap.evaluate(atoms, None)
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
        if self.min_distance == 0:
            return
        problem = contact_problem(atoms, self.min_distance, key="MixedCalculator min_distance")
        if problem:
            raise ConfigurationError(f"{problem} (0 turns the check off)")

    def _check_finite(self, forces: np.ndarray, p: np.ndarray, exp: Evaluation,
                      cheap: Evaluation) -> None:
        bad = np.flatnonzero(~np.isfinite(forces).all(axis=1))
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
        described = [atomic_numbers[s] for s in self.cheap.species]
        undescribed = ~np.isin(atoms.numbers, described)
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
        result = self.cheap.evaluate(view, mask)
        if keep.all():
            return result
        forces = np.zeros((len(atoms), 3))
        energies = np.full(len(atoms), np.nan)
        forces[keep] = result.forces
        energies[keep] = result.energies
        return Evaluation(forces, energies, result.n_evaluated, result.exact)


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
