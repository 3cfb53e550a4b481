"""Mixed MD with LAMMPS as the engine, over MPI ranks (method.md §1-4).

LAMMPS integrates, builds neighbour lists and evaluates the cheap potential natively on
every rank (domain decomposition); mlmix adds the weighted expensive correction

    F_i = F_i^cheap + p_i (F_i^exp - F_i^cheap)

every step through ``fix external`` (pf/callback). Run a script that builds a
:class:`LammpsEngine` with ``mpirun -np P python script.py`` (or one process).

One step, inside the callback (LAMMPS has just computed and reverse-communicated the
cheap pair forces, so the local ``f`` array holds F^cheap of the owned atoms):

1. Region rebuild (the first call and every ``nevery`` steps, or when some atom moved
   more than ``skin / 2`` since the evaluation sets were built, checked per rank
   against a per-atom reference position that migrates with the atom): every rank
   sends ``(tag, x)`` of its atoms to rank 0, which keeps the whole structure as an ASE
   ``Atoms`` (atom ``i`` is LAMMPS tag ``i + 1``; weights follow tags, hence atom
   identity) and updates a :class:`~mlmix.regions.RegionTracker` on it. Rank 0 then
   makes the *cluster*: the expensive set plus every atom within the expensive
   cutoff + skin of it, split into components that lie more than twice that apart.
   The cluster's tags, and the weights of its p > 0 atoms, are broadcast.
2. Every step: the ranks send ``(x, F^cheap)`` of their cluster atoms to rank 0;
   the expensive potential evaluates the cluster with the expensive set as its mask
   (an exact masked evaluation: every mask atom has its full neighbourhood in the
   cluster); rank 0 broadcasts ``p (F^exp - F^cheap)`` for the p > 0 atoms and each
   rank writes it into ``fix external``'s array for the atoms it owns. With
   ``correction_every = k > 1`` (multiple time stepping, :mod:`mlmix.mts`) this happens
   on steps that are multiples of k only, with the correction times k; the steps
   between apply no correction and evaluate nothing but the cheap potential.

Who evaluates the expensive potential: a :class:`LammpsPotential` creates its LAMMPS
instances on all ranks (MPI_COMM_WORLD), so every rank calls it with the same cluster
and LAMMPS decomposes the cluster's box over the ranks: the expensive work is
parallel even for one seed cluster (each component is carved out non-periodically,
so the decomposed box is the cluster's, not the whole cell). Any other backend (ACE,
ASE calculators) is serial: its components are dealt out to the ranks, largest
first, each rank evaluating its share.

Thermostat (``ensemble="nvt"``): drag and noise forces added through the same
``fix external``, weighted per atom by w_i (``1 - p_i`` by default), with the
discretisation of LAMMPS's ``fix langevin`` (force-form, BBK-like: drag
``-w_i gamma m_i v_i`` on the half-step velocity and a Gaussian random force of
variance ``w_i^2 2 gamma m_i k_B T / dt``, applied in both half kicks of velocity
Verlet). It is the same stochastic equation as :class:`mlmix.engines.langevin.RegionLangevin` (both
scale drag and noise by w_i, as the plugin's ``fix langevin/mlml``), discretised
differently (RegionLangevin uses ASE's Vanden-Eijnden-Ciccotti propagator): the two
agree in distribution to O(dt), not step by step. LAMMPS's own ``fix langevin`` has
no per-atom scaling, hence the external force. The random numbers are a counter-based
hash of (seed, step, atom tag), so a run does not depend on the number of ranks.

The parts, each in its own module of :mod:`mlmix.engines.lammps`: ``instance`` (the
LAMMPS set-up), ``comm`` (gathers and shared errors), ``cluster`` (the region plan),
``expensive`` (the evaluation of the components), ``thermostat`` (the weighted
Langevin force), ``checks`` (input checks); this module holds the step that joins them.

(The module is longer than the house limit of ~500 lines because of its documentation:
this description and the class's argument list are ~150 of them.)

Errors: inputs are checked on every rank before LAMMPS starts (all ranks hold the
same input and raise the same :class:`ConfigurationError`). A failure in work that
only rank 0 does (regions, the expensive evaluation, the user callback) is
broadcast, the run stops at the end of that step (``fix halt``) and every rank raises
the same error; :func:`exit_on_error` prints it once, from rank 0, and exits every
rank with status 1. Units: Å, eV, eV/Å, fs, K; positions in the structure's frame
(LAMMPS works in its rotated, lower-triangular frame internally).
"""


from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

from ...errors import CalculationError, ConfigurationError, MlmixError
from ...identity import ID_ARRAY
from ...mixing import undescribed_outside_core
from ...mts import check_correction_every, is_outer_step, schedule_problem, undescribed_problem
from ...potentials.base import Potential, species_mask
from ...potentials.files import ScratchDir
from ...potentials.lammps import LammpsPotential, lammps_frame, uf3_covering_potential
from ...regions import Hysteresis, Regions, RegionSpec, RegionTracker
from ...seeds import ClassifierSeeds, Seeds
from .checks import check_count, check_inputs, check_positive, held_atoms, lammps_cheap
from .classifier import LammpsClassifier
from .cluster import (
    COMPONENT_LINK,
    Component,
    Plan,
    cluster_of,
    component_atoms,
    split_components,
)
from .comm import as_mlmix_error, engine_comm, gather_by_tag, root_call
from .expensive import evaluate_components
from .instance import (
    CLASSIFIER,
    FIX_EXT,
    FTH,
    HALT_VAR,
    REF,
    lammps_command,
    start_instance,
    type_masses,
    type_order,
)
from .thermostat import WEIGHTS, langevin_force, thermostat_weights

__all__ = ["EngineStep", "LammpsClassifier", "LammpsEngine"]

HISTORY_LENGTH = 1000
"""Number of recent :class:`EngineStep` reports kept on rank 0."""

Ensemble = Literal["nve", "nvt"]
ThermostatWeights = Literal["cheap", "expensive", "all"]


@dataclass(frozen=True)
class EngineStep:
    """What one step of the mixed engine did (rank 0).

    Attributes:
        step: LAMMPS time step number.
        rebuilt: the regions were rebuilt (seeds re-selected, weights recomputed).
        sets_rebuilt: the evaluation sets and the cluster were rebuilt (regions
            rebuilt, or an atom moved more than skin / 2).
        counts: region set sizes (:meth:`Regions.counts`).
        n_cluster: atoms handed to the expensive potential (expensive set + halo).
        n_expensive: atoms the expensive potential reported evaluating (its
            ``n_evaluated``, summed over components).
        seconds: wall time in the callback on rank 0: ``regions``, ``expensive``,
            ``exchange`` (gathers and broadcasts), ``callback`` (all of it).
        corrected: False on the cheap-only steps of multiple time stepping
            (``correction_every > 1``), True otherwise.
    """

    step: int
    rebuilt: bool
    sets_rebuilt: bool
    counts: dict
    n_cluster: int
    n_expensive: int
    seconds: dict
    corrected: bool = True


class LammpsEngine:
    """Mixed MD with LAMMPS integrating and computing the cheap potential (see module).

    Create it on every rank with the same arguments; all methods are collective
    (every rank must call them), results and reports live on rank 0.

    Args:
        atoms: start structure (positions Å, velocities from its momenta, masses).
            Not modified. Atom ``i`` becomes LAMMPS tag ``i + 1``. Atoms an ASE
            ``FixAtoms`` constraint holds stay in place (zero velocity, ``fix
            setforce`` after the correction and the thermostat); other constraint
            types are refused.
        expensive: any mlmix potential; a :class:`LammpsPotential` is evaluated on
            all ranks together, others rank by rank per cluster component.
        cheap: a :class:`LammpsPotential` (its ``lammps_commands()`` define the
            pair style of the engine). Species it lacks get a ``zero`` pair style
            and must stay in the core (p = 1).
        spec: region radii; ``r_buff`` must be at least the expensive cutoff
            unless ``allow_approximate``.
        seeds: :class:`IndexSeeds`, :class:`SpeciesSeeds`, a :class:`ClassifierSeeds`
            (its quantity is computed on rank 0 from the gathered structure) or a
            :class:`LammpsClassifier` (a LAMMPS compute, computed in parallel).
        nevery: region rebuild period in steps (0 = once).
        hysteresis: optional time hysteresis of the weights.
        skin: Å, margin of the evaluation sets and of the cluster halo.
        ensemble: ``"nve"`` or ``"nvt"`` (region-weighted Langevin, see module).
        timestep: fs.
        temperature: K, target of ``"nvt"``.
        friction: 1/fs, gamma of ``"nvt"`` where the weight is 1.
        thermostat_weights: w_i of ``"nvt"``: ``"cheap"`` (1 - p), ``"expensive"``
            (p) or ``"all"`` (1).
        seed: integer seed of the thermostat's random numbers.
        allow_approximate: accept ``r_buff`` below the expensive cutoff or a
            message-passing expensive model (measure the error then).
        start_step: LAMMPS step number of ``atoms`` (to continue a run).
        tracker_state: :meth:`RegionTracker.state` of the run being continued (from
            ``engine.tracker.state()`` on rank 0, saved with a :meth:`snapshot`);
            pass the same dict on every rank. Weights, hysteresis and classifier
            history then continue where they were.
        thermostat_force: ``(N, 3)`` eV/Å, NVT only: the thermostat force of step
            ``start_step`` of the run being continued (a :meth:`snapshot`'s
            ``mlmix_thermostat_force`` array). Its drag was computed from the
            half-step velocities, which a snapshot does not hold; with it the
            continued run repeats the uninterrupted one bit for bit.
        comm: an mpi4py communicator spanning the LAMMPS ranks (default: world).
        correction_every: k >= 1: the expensive correction p (F^exp - F^cheap) is
            evaluated on steps that are multiples of k only and applied there k times
            over, the impulse multiple-time-step integrator of :mod:`mlmix.mts`
            (1 = every step). Needs ``nevery`` a multiple of k and a cheap potential
            that describes every species.

    Attributes:
        history: deque of :class:`EngineStep` (rank 0; empty elsewhere).
        tracker: the :class:`RegionTracker` (rank 0; None elsewhere).
        step: current LAMMPS time step.
    """

    def __init__(
        self,
        atoms: Atoms,
        expensive: Potential,
        cheap: Potential,
        spec: RegionSpec,
        seeds: Seeds | LammpsClassifier,
        *,
        nevery: int = 10,
        hysteresis: Hysteresis | None = None,
        skin: float = 0.5,
        ensemble: Ensemble = "nve",
        timestep: float = 1.0,
        temperature: float = 0.0,
        friction: float = 0.01,
        thermostat_weights: ThermostatWeights = "cheap",
        seed: int = 0,
        allow_approximate: bool = False,
        start_step: int = 0,
        tracker_state: dict | None = None,
        thermostat_force: np.ndarray | None = None,
        comm=None,
        correction_every: int = 1,
    ) -> None:
        self.comm = engine_comm(comm)
        self.is_root = self.comm.rank == 0
        self.history: deque[EngineStep] = deque(maxlen=HISTORY_LENGTH)
        self._lmp: Any = None
        self._error: MlmixError | None = None
        # -- every input check first, identically on every rank ------------------------
        cheap = lammps_cheap(cheap)
        check_inputs(atoms, expensive, cheap, spec, seeds, nevery, ensemble, allow_approximate)
        self.correction_every = check_correction_every(correction_every)
        schedule = schedule_problem(self.correction_every, int(nevery))
        described = set(cheap.species or ())  # a LammpsPotential always names its species
        problems = [schedule and f"nevery = {schedule}", undescribed_problem(
            self.correction_every, cheap.name, set(atoms.get_chemical_symbols()) - described)]
        if any(problems):
            raise ConfigurationError("; ".join(filter(None, problems)))
        self.expensive, self.cheap, self.spec = expensive, cheap, spec
        self.allow_approximate = bool(allow_approximate)
        self.nevery = int(nevery)
        self.skin = check_positive("skin", skin, "Å", allow_zero=True)
        self.timestep = check_positive("timestep", timestep, "fs")
        self.ensemble = ensemble
        if ensemble == "nvt":
            self.temperature = check_positive("temperature", temperature, "K")
            self.friction = check_positive("friction", friction, "1/fs")
            if thermostat_weights not in WEIGHTS:
                raise ConfigurationError(
                    "thermostat_weights must be 'cheap', 'expensive' or 'all', got "
                    f"{thermostat_weights!r}")
        self.thermostat_weights = thermostat_weights
        self.seed = check_count("seed", seed)
        self.collective = isinstance(expensive, LammpsPotential)
        self.n_atoms = len(atoms)
        self._symbols = atoms.get_chemical_symbols()
        self._numbers = atoms.numbers.copy()
        # pair uf3 cannot leave a species out with NULL: the instance gets a copy of the
        # file in which the species it lacks interact with nothing
        self._scratch = ScratchDir("mlmix-engine-")
        native = cheap
        absent = sorted(set(self._symbols) - described)
        if absent and cheap.pair_style.split()[0] == "uf3":
            native = uf3_covering_potential(cheap, absent, self._scratch.path())
        self._type_species = type_order(atoms, native)
        self._undescribed = ~species_mask(atoms.numbers, described)
        masses = type_masses(atoms, self._type_species)

        # -- seeds and the tracker (rank 0) -------------------------------------------
        self._classifier = seeds if isinstance(seeds, LammpsClassifier) else None
        self._q: np.ndarray | None = None
        tracker_seeds: Seeds
        if isinstance(seeds, LammpsClassifier):
            tracker_seeds = ClassifierSeeds(self._classifier_quantity, lb=seeds.lb,
                                            ub=seeds.ub, nfreq=seeds.nfreq,
                                            window=seeds.window, initial=seeds.initial)
        else:
            tracker_seeds = seeds
        # every rank builds one: the seeds' own checks (schedule) run everywhere
        tracker = RegionTracker(spec, tracker_seeds, nevery=self.nevery,
                                hysteresis=hysteresis, skin=self.skin)
        self.tracker = tracker if self.is_root else None

        # -- the LAMMPS instance ------------------------------------------------------
        self.frame = lammps_frame(atoms.cell.array, atoms.pbc, atoms.positions)
        self._cell_ase = atoms.cell.array.copy()
        self._pbc_ase = atoms.pbc.copy()
        if thermostat_force is not None:
            thermostat_force = np.asarray(thermostat_force, dtype=float)
            if ensemble != "nvt" or thermostat_force.shape != (len(atoms), 3) \
                    or not np.isfinite(thermostat_force).all():
                raise ConfigurationError(
                    f"thermostat_force must be a finite ({len(atoms)}, 3) array of an NVT "
                    f"run, got shape {thermostat_force.shape} for ensemble {ensemble!r}")
        self._fixed = held_atoms(atoms)
        self._lmp = start_instance(atoms, self.frame, native, self._type_species, masses,
                                   self._fixed, self.timestep, self._classifier,
                                   ensemble == "nvt", thermostat_force, self.comm)
        self._lmp.set_fix_external_callback(FIX_EXT, self._callback)
        self._mvv2e = float(self._lmp.extract_global("mvv2e"))
        self._boltz = float(self._lmp.extract_global("boltz"))
        self._type_mass = np.array([0.0, *masses])
        self._replay_thermostat = thermostat_force is not None
        self._root_atoms: Atoms | None = None  # the whole structure, rank 0 only
        if self.is_root:
            # not wrapped: positions stay continuous with the input's
            x = atoms.positions @ self.frame.rotation
            ra = Atoms(numbers=atoms.numbers, positions=x, cell=self.frame.box,
                       pbc=self.frame.pbc)
            ra.arrays[ID_ARRAY] = np.arange(1, self.n_atoms + 1)
            self._root_atoms = ra
        self._plan = Plan(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
        self._planned = False
        self._components: list[Component] = []
        self._lut = np.full(self.n_atoms + 1, -1, dtype=np.int32)  # tag -> cluster row
        self._wlut = np.zeros(0, dtype=np.int64)  # cluster row -> weighted row
        self._last_build: int | None = None
        self._started = False
        self.step = check_count("start_step", start_step)
        if self.step:
            self._command(f"reset_timestep {self.step}")
        if tracker_state is not None:
            if self.is_root:
                self._root_tracker().restore(tracker_state)
            self._last_build = tracker_state["last_build"]

    # ------------------------------------------------------------------ rank 0 state

    def _root(self) -> Atoms:
        if self._root_atoms is None:  # pragma: no cover - a rank-0 method on another rank
            raise CalculationError("the whole structure is kept on rank 0 only")
        return self._root_atoms

    def _root_tracker(self) -> RegionTracker:
        if self.tracker is None:  # pragma: no cover - a rank-0 method on another rank
            raise CalculationError("the region tracker is kept on rank 0 only")
        return self.tracker

    # ------------------------------------------------------------------ LAMMPS

    def _command(self, cmd: str, what: str = "setting up the LAMMPS engine",
                 error: type[Exception] = CalculationError) -> None:
        lammps_command(self._lmp, cmd, what, error)

    def _classifier_quantity(self, atoms: Atoms) -> np.ndarray:
        if self._q is None or len(self._q) != len(atoms):  # pragma: no cover - guard
            raise CalculationError("the LAMMPS classifier was not sampled at this step")
        return self._q

    # ------------------------------------------------------------------ the step

    def _is_rebuild(self, step: int) -> bool:
        if self._last_build is None:
            return True
        return self.nevery > 0 and step % self.nevery == 0 and step != self._last_build

    def _moved_too_far(self, x: np.ndarray, xref: np.ndarray) -> bool:
        local = float(self.frame.min_image_sq(x - xref).max(initial=0.0)) if len(x) else 0.0
        worst = max(self.comm.allgather(local)) if self.comm.size > 1 else local
        return worst >= (0.5 * self.skin) ** 2

    def _callback(self, caller, ntimestep, nlocal, tag, x, fext) -> None:
        try:
            self._step(int(ntimestep), int(nlocal), tag, x, fext)
        except Exception as exc:  # noqa: BLE001 - an exception must not vanish in C
            # Every rank reaches here together (errors are broadcast): stop the run at
            # the end of this step and raise after it.
            self._error = as_mlmix_error(exc)
            fext[:nlocal] = 0.0
            self._lmp.set_internal_variable(HALT_VAR, 1.0)

    def _step(self, step: int, nlocal: int, tag, x, fext) -> None:
        if self._error is not None:
            fext[:nlocal] = 0.0
            return
        t0 = time.perf_counter()
        tag = np.asarray(tag[:nlocal], dtype=np.int64)
        x = np.asarray(x[:nlocal])
        f = np.asarray(self._lmp.numpy.extract_atom("f")[:nlocal])
        xref = self._lmp.numpy.extract_atom(REF)
        if xref is None:  # a rank without atoms
            xref = np.zeros((0, 3))
        rebuilt = self._is_rebuild(step)
        # (no plan yet: a run continued from a tracker state builds its cluster first)
        # Between the outer steps of multiple time stepping only the cheap force acts
        # (mlmix.mts); rebuild steps are outer steps by construction.
        corrected = is_outer_step(step, self.correction_every)
        sets = not self._planned or (corrected and (
            rebuilt or self._moved_too_far(x, xref[:nlocal])))
        t_regions = t_exchange = 0.0
        if sets:
            ts = time.perf_counter()
            q = None
            if self._classifier is not None and rebuilt:
                q = np.asarray(self._lmp.numpy.extract_compute(CLASSIFIER, 1, 1)[:nlocal])
            cols = (x.copy(),) if q is None else (x.copy(), q.copy())
            gathered = gather_by_tag(self.comm, self.n_atoms, tag, *cols)
            plan = root_call(self.comm, self._build_plan, gathered, step)
            self._set_plan(plan)
            xref[:nlocal] = x
            if rebuilt:
                self._last_build = step
            t_regions = time.perf_counter() - ts
        # -- the expensive correction -------------------------------------------------
        ts = time.perf_counter()
        rows = self._lut[tag]
        mine = np.flatnonzero(rows >= 0)
        w = self._wlut[rows[mine]] if len(self._wlut) else np.zeros(0, np.int64)
        hit = w >= 0
        fext[:nlocal] = 0.0
        n_eval, t_exp = 0, 0.0
        if corrected:
            parts = self.comm.gather((rows[mine], x[mine].copy(), f[mine].copy()), root=0)
            t_exchange += time.perf_counter() - ts
            corr, n_eval, t_exp = self._correction(parts)
            ts = time.perf_counter()
            fext[mine[hit]] = self.correction_every * corr[w[hit]]
        t_exchange += time.perf_counter() - ts
        if self.ensemble == "nvt":
            self._thermostat(step, tag, mine, w, hit, fext, nlocal)
        self.step = step
        if self.is_root:
            regions = self._root_tracker().regions
            self.history.append(EngineStep(
                step=step, rebuilt=rebuilt, sets_rebuilt=sets,
                counts=regions.counts() if regions is not None else {},
                n_cluster=len(self._plan.index), n_expensive=n_eval, corrected=corrected,
                seconds={"regions": t_regions, "expensive": t_exp, "exchange": t_exchange,
                         "callback": time.perf_counter() - t0}))

    def _thermostat(self, step: int, tag: np.ndarray, mine: np.ndarray, w_rows: np.ndarray,
                    hit: np.ndarray, fext: np.ndarray, nlocal: int) -> None:
        """Add region-weighted Langevin drag and noise (see module) to ``fext``."""
        stored = self._lmp.numpy.extract_atom(FTH)
        stored = np.zeros((0, 3)) if stored is None else stored[:nlocal]  # rank without atoms
        if self._replay_thermostat:  # the first call of a continued run: step start_step
            self._replay_thermostat = False
            fext[:nlocal] += stored
            return
        p = np.zeros(nlocal)
        p[mine[hit]] = self._plan.p[w_rows[hit]]
        v = np.asarray(self._lmp.numpy.extract_atom("v")[:nlocal])
        types = np.asarray(self._lmp.numpy.extract_atom("type")[:nlocal])
        stored[:] = langevin_force(
            v, self._type_mass[types], thermostat_weights(p, self.thermostat_weights),
            friction_per_ps=self.friction * 1000.0, dt_ps=self.timestep / 1000.0,
            kt_eV=self._boltz * self.temperature, mvv2e=self._mvv2e, seed=self.seed,
            step=step, tags=tag)
        fext[:nlocal] += stored

    def _set_plan(self, plan: tuple) -> None:
        index, weighted, p = plan
        self._plan = Plan(index, weighted, p)
        self._planned = True
        self._lut[:] = -1
        self._lut[index + 1] = np.arange(len(index), dtype=np.int32)
        self._wlut = np.full(len(index), -1, dtype=np.int64)
        self._wlut[weighted] = np.arange(len(weighted))

    # ------------------------------------------------------------------ rank 0 work

    def _build_plan(self, gathered, step: int):
        """Rank 0: regions, cluster and components for the current structure."""
        ra = self._root()
        xw = gathered[0]
        # Continuous (unwrapped) positions: the tracker measures displacements by
        # plain differences, so atoms must not jump by a cell vector when LAMMPS wraps.
        ra.positions = ra.positions + self.frame.min_image(xw - ra.positions)
        if self._classifier is not None and len(gathered) > 1:
            self._q = gathered[1]
        regions = self._root_tracker().update(ra, step)
        self._check_core(regions)
        return self._make_cluster(regions)

    def _check_core(self, regions: Regions) -> None:
        outside = np.flatnonzero(self._undescribed & (regions.p < 1))
        if outside.size:
            symbols = sorted({self._symbols[i] for i in outside})
            raise ConfigurationError(undescribed_outside_core(
                outside.size, int(outside[0]), symbols, self.cheap.name))

    def _make_cluster(self, regions: Regions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rank 0: the plan's (index, weighted, p); the components in ``_components``."""
        ra = self._root()
        halo = self.expensive.halo + self.skin
        index, mask = cluster_of(ra, regions, halo)
        weighted = np.flatnonzero(regions.p[index] > 0)
        # Expensive atoms within one receptive field of each other must share a graph
        # (a carved-cluster backend's halo, its buffer, can be far shorter).
        link = max(COMPONENT_LINK * halo, self.expensive.receptive_field + self.skin)
        self._components = split_components(ra, index, mask, halo, link,
                                            self.frame.min_image, self.comm.size)
        return index, weighted, regions.p[index][weighted]

    def _correction(self, parts: list) -> tuple[np.ndarray, int, float]:
        """``p (F_exp - F_cheap)`` of the weighted atoms on every rank, ``(n_w, 3)``."""
        t0 = time.perf_counter()
        n = len(self._plan.index)
        payload, fc, err = None, None, None
        if self.is_root:
            try:
                xc = np.empty((n, 3))
                fc = np.empty((n, 3))
                for rows, xs, fs in parts:
                    xc[rows] = xs
                    fc[rows] = fs
                ra = self._root()
                idx = self._plan.index
                ra.positions[idx] += self.frame.min_image(xc - ra.positions[idx])
                xc = ra.positions[idx]
                payload = [(c, component_atoms(ra, idx, c, xc, self.frame.min_image))
                           for c in self._components]
            except Exception as exc:  # noqa: BLE001 - shared below, never a hang
                err = as_mlmix_error(exc)
        fe, n_eval = evaluate_components(self.comm, self.expensive, payload, n, err,
                                         collective=self.collective,
                                         allow_approximate=self.allow_approximate)
        t1 = time.perf_counter()
        corr = None
        if self.is_root and fe is not None and fc is not None:
            w = self._plan.weighted
            corr = self._plan.p[:, None] * (fe[w] - fc[w])
        corr = self.comm.bcast(corr, root=0)
        return corr, n_eval, t1 - t0

    # ------------------------------------------------------------------ public API

    def run(self, steps: int, callback: Callable[[Atoms, LammpsEngine], None] | None = None,
            every: int = 0, should_stop: Callable[[], bool] | None = None,
            stop_every: int = 10) -> int:
        """Advance ``steps`` MD steps (collective).

        Args:
            steps: number of steps (>= 0; 0 computes the forces of the current state).
            callback: called on rank 0 as ``callback(atoms, engine)`` with a
                :meth:`snapshot` every ``every`` steps (and after the last step), e.g.
                to write a trajectory frame or a log line; ``engine.history`` holds the
                per-step reports.
            every: callback period in steps (0: only after the last step).
            should_stop: asked on rank 0 at least every ``stop_every`` steps (e.g. "has
                Ctrl-C been pressed?"); when it answers True every rank stops there,
                after one more callback.

        Returns:
            The number of steps done (``steps`` unless ``should_stop`` stopped it).

        Raises:
            ConfigurationError, CalculationError: on every rank, after the step in
            which rank 0 (or the input) failed.
        """
        steps = check_count("steps", steps)
        every = check_count("every", every)
        done = 0
        chunk = every if (callback is not None and every > 0) else steps
        if should_stop is not None:
            chunk = min(chunk, stop_every) if chunk else stop_every
        while True:
            n = min(chunk, steps - done) if steps else 0
            if callback is not None and every:  # stop at every callback step
                n = min(n, every - done % every)
            pre = "yes" if not self._started else "no"
            self._command(f"run {n} pre {pre} post no", "running MD")
            self._started = True
            if self._error is not None:
                err, self._error = self._error, None
                raise err
            done += n
            stop = False
            if should_stop is not None and done < steps:
                stop = bool(self.comm.bcast(bool(should_stop()) if self.is_root else None,
                                            root=0))
            if callback is not None and (done == steps or stop
                                         or (every and done % every == 0)):
                snap = self.snapshot()
                root_call(self.comm, callback, snap, self)
            if done >= steps or stop:
                return done

    def snapshot(self) -> Atoms | None:
        """The current state as ASE ``Atoms`` on rank 0 (None elsewhere); collective.

        Positions (Å, continuous: not wrapped back into the cell), momenta, the mixed
        forces (eV/Å, through a SinglePointCalculator; no energy, force mixing has
        none), and the per-atom arrays ``mlmix_id``, ``mlmix_p``, ``mlmix_expensive``,
        ``mlmix_cheap`` (and, NVT, ``mlmix_thermostat_force``, eV/Å, included in the
        forces), in the frame of the input structure.
        """
        nlocal = int(self._lmp.extract_setting("nlocal"))
        tag = np.asarray(self._lmp.numpy.extract_atom("id")[:nlocal], dtype=np.int64)
        x = np.array(self._lmp.numpy.extract_atom("x")[:nlocal])
        v = np.array(self._lmp.numpy.extract_atom("v")[:nlocal])
        f = np.array(self._lmp.numpy.extract_atom("f")[:nlocal])
        columns = [x, v, f]
        if self.ensemble == "nvt":
            fth = self._lmp.numpy.extract_atom(FTH)
            columns.append(np.array(fth[:nlocal]) if fth is not None else np.zeros((0, 3)))
        got = gather_by_tag(self.comm, self.n_atoms, tag, *columns)
        if got is None:  # not rank 0
            return None
        xw, v, f = got[:3]
        ra = self._root()
        ra.positions = ra.positions + self.frame.min_image(xw - ra.positions)
        rot = self.frame.rotation
        atoms = Atoms(numbers=self._numbers, positions=ra.positions @ rot.T,
                      cell=self._cell_ase, pbc=self._pbc_ase)
        masses = self._type_mass[[self._type_species.index(s) + 1 for s in self._symbols]]
        atoms.set_masses(masses)
        atoms.set_velocities((v @ rot.T) / (1000.0 * units.fs))
        atoms.arrays[ID_ARRAY] = np.arange(1, self.n_atoms + 1)
        regions = self._root_tracker().regions
        if regions is not None:
            atoms.arrays.update(regions.per_atom_arrays())
        if self.ensemble == "nvt":
            atoms.arrays["mlmix_thermostat_force"] = got[3] @ rot.T
        atoms.calc = SinglePointCalculator(atoms, forces=f @ rot.T)
        return atoms

    def close(self) -> None:
        """Close the LAMMPS instance (collective). Idempotent."""
        if self._lmp is not None:
            try:
                self._lmp.close()
            finally:
                self._lmp = None
                self._scratch.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
