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
Verlet). It is the same stochastic equation as :class:`mlmix.md.RegionLangevin` (both
scale drag and noise by w_i, as the plugin's ``fix langevin/mlml``), discretised
differently (RegionLangevin uses ASE's Vanden-Eijnden-Ciccotti propagator): the two
agree in distribution to O(dt), not step by step. LAMMPS's own ``fix langevin`` has
no per-atom scaling, hence the external force. The random numbers are a counter-based
hash of (seed, step, atom tag), so a run does not depend on the number of ranks.

Errors: inputs are checked on every rank before LAMMPS starts (all ranks hold the
same input and raise the same :class:`ConfigurationError`). A failure in work that
only rank 0 does (regions, the expensive evaluation, the user callback) is
broadcast, the run stops at the end of that step (``fix halt``) and every rank raises
the same error; :func:`exit_on_error` prints it once, from rank 0, and exits every
rank with status 1. Units: Å, eV, eV/Å, fs, K; positions in the structure's frame
(LAMMPS works in its rotated, lower-triangular frame internally).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_numbers

from ._lammps_runtime import new_lammps
from .carving import within
from .errors import CalculationError, ConfigurationError, MlmixError
from .identity import ID_ARRAY
from .mixing import undescribed_outside_core
from .mts import check_correction_every, is_outer_step, schedule_problem, undescribed_problem
from .neighbours import complete_cell, neighbour_pairs, perpendicular_widths
from .potentials.base import Potential, buffer_problem
from .potentials.lammps import LammpsPotential, format_number, lammps_frame
from .regions import Hysteresis, Regions, RegionSpec, RegionTracker
from .seeds import ClassifierSeeds, IndexSeeds, Seeds, SpeciesSeeds
from .structures import fixed_mask

__all__ = ["EngineStep", "LammpsClassifier", "LammpsEngine", "counter_normals", "exit_on_error",
           "mpi_comm"]

HISTORY_LENGTH = 1000
"""Number of recent :class:`EngineStep` reports kept on rank 0."""

Ensemble = Literal["nve", "nvt"]
ThermostatWeights = Literal["cheap", "expensive", "all"]

_FIX_EXT = "mlmix_ext"
_REF = "d2_mlmix_xref"
_FTH = "d2_mlmix_fth"  # the thermostat force of the last step, migrating with its atom
_HALT_VAR = "mlmix_halt"
_CLASSIFIER = "mlmix_q"
# Components of the cluster that lie closer than this many (cutoff + skin) are merged,
# so that the halos of two components never share an atom.
_COMPONENT_LINK = 2.0


def mpi_comm():
    """The world communicator (mpi4py), or None when mpi4py is not installed.

    Without mpi4py only one process can run (``mpirun -np 1`` or plain ``python``).
    """
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD


class _SerialComm:
    """The few mpi4py calls the engine uses, for a single process without mpi4py."""

    rank = 0
    size = 1

    def gather(self, obj, root=0):
        return [obj]

    def bcast(self, obj, root=0):
        return obj

    def allreduce(self, obj, op=None):
        return obj

    def allgather(self, obj):
        return [obj]

    def Barrier(self):
        pass


@contextmanager
def exit_on_error(comm=None, stream=None):
    """Turn an :class:`~mlmix.errors.MlmixError` into one message from rank 0 and
    exit status 1 on every rank (no hang, no duplicate messages).

    Use it around the body of an MPI script::

        with exit_on_error():
            engine = LammpsEngine(...)
            engine.run(1000)
    """
    comm = comm or mpi_comm() or _SerialComm()
    try:
        yield
    except MlmixError as exc:
        if comm.rank == 0:
            print(f"mlmix: error: {exc}", file=stream or sys.stderr, flush=True)
        sys.exit(1)


@dataclass(frozen=True)
class LammpsClassifier:
    """Seeds from a LAMMPS per-atom compute, time-averaged (method.md §2).

    The engine defines ``compute mlmix_q all <compute> <args>`` and samples it on
    region-rebuild steps; seeds are atoms whose mean over the last ``window`` samples
    lies in ``[lb, ub]``, re-chosen every ``nfreq`` steps (see
    :class:`~mlmix.seeds.ClassifierSeeds`, which does the bookkeeping).

    Attributes:
        compute: a per-atom LAMMPS compute style, e.g. ``"coord/atom"``,
            ``"cna/atom"``, ``"centro/atom"``.
        args: its arguments, e.g. ``"cutoff 2.9"``, ``"3.3"``, ``"bcc"``.
        lb, ub: inclusive bounds on the time-averaged quantity.
        nfreq: steps between seed choices (a multiple of the rebuild period).
        window: samples averaged (>= 1).
        initial: seed indices used before the first choice; None = all expensive.
    """

    compute: str
    args: str = ""
    lb: float = -np.inf
    ub: float = np.inf
    nfreq: int = 1
    window: int = 1
    initial: Sequence[int] | None = None


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


@dataclass
class _Plan:
    """The cluster of one set build, known to every rank.

    Attributes:
        index: ``(n,)`` int64, 0-based atom indices (tag - 1) of the cluster, sorted.
        weighted: ``(n_w,)`` int64, positions in ``index`` of the p > 0 atoms.
        p: ``(n_w,)`` their weights.
    """

    index: np.ndarray
    weighted: np.ndarray
    p: np.ndarray


@dataclass
class _Component:
    """One piece of the cluster handed to the expensive potential (rank 0 side).

    Attributes:
        rows: ``(m,)`` positions in the plan's ``index``.
        mask: ``(m,)`` bool, the expensive set within the component.
        centre: ``(3,)`` Å, unwrapping centre (None: kept in the periodic cell).
        owner: rank that evaluates it (rank-local backends).
    """

    rows: np.ndarray
    mask: np.ndarray
    centre: np.ndarray | None
    owner: int = 0


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def counter_normals(seed: int, step: int, tags: np.ndarray) -> np.ndarray:
    """``(len(tags), 3)`` standard normal numbers that depend only on (seed, step, tag).

    A counter-based generator: the same atom gets the same numbers at the same step
    whichever rank owns it, so thermostatted runs do not depend on the rank count.
    """
    tags = np.asarray(tags, dtype=np.uint64)
    key = _splitmix64(np.array([seed], np.uint64) ^ _splitmix64(np.array([step], np.uint64)))
    base = _splitmix64(tags * np.uint64(4) ^ key[0])
    bits = _splitmix64(base[:, None] + np.arange(1, 5, dtype=np.uint64)[None, :])
    u = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # (0, 1)
    r = np.sqrt(-2.0 * np.log(u[:, [0, 2]]))
    z = np.concatenate([r * np.cos(2 * np.pi * u[:, [1, 3]]),
                        r * np.sin(2 * np.pi * u[:, [1, 3]])], axis=1)
    return z[:, :3]


def _as_mlmix_error(exc: Exception) -> MlmixError:
    """An mlmix error as it is; anything else wrapped, so it can be shared and raised."""
    if isinstance(exc, MlmixError):
        return exc
    return CalculationError(f"{type(exc).__name__}: {exc}")


def _check_positive(name: str, value, unit: str, allow_zero: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a number in {unit}, got {value!r}") from None
    if not np.isfinite(x) or x < 0 or (x == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be finite and {bound} {unit}, got {value!r}")
    return x


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
        cheap: LammpsPotential,
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
        self.comm = comm or mpi_comm() or _SerialComm()
        self.is_root = self.comm.rank == 0
        self.history: deque[EngineStep] = deque(maxlen=HISTORY_LENGTH)
        self._lmp = None
        self._error: MlmixError | None = None
        # -- every input check first, identically on every rank ------------------------
        self._check_inputs(atoms, expensive, cheap, spec, seeds, nevery, ensemble,
                           allow_approximate)
        self.correction_every = check_correction_every(correction_every)
        schedule = schedule_problem(self.correction_every, int(nevery))
        problems = [schedule and f"nevery = {schedule}", undescribed_problem(
            self.correction_every, cheap.name,
            set(atoms.get_chemical_symbols()) - set(cheap.species))]
        if any(problems):
            raise ConfigurationError("; ".join(filter(None, problems)))
        self.expensive, self.cheap, self.spec = expensive, cheap, spec
        self.allow_approximate = bool(allow_approximate)
        self.nevery = int(nevery)
        self.skin = _check_positive("skin", skin, "Å", allow_zero=True)
        self.timestep = _check_positive("timestep", timestep, "fs")
        self.ensemble = ensemble
        if ensemble == "nvt":
            self.temperature = _check_positive("temperature", temperature, "K")
            self.friction = _check_positive("friction", friction, "1/fs")
            if thermostat_weights not in ("cheap", "expensive", "all"):
                raise ConfigurationError(
                    "thermostat_weights must be 'cheap', 'expensive' or 'all', got "
                    f"{thermostat_weights!r}")
        self.thermostat_weights = thermostat_weights
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigurationError(f"seed must be an integer >= 0, got {seed!r}")
        self.seed = int(seed)
        self.collective = isinstance(expensive, LammpsPotential)
        self.n_atoms = len(atoms)
        self._symbols = atoms.get_chemical_symbols()
        self._numbers = atoms.numbers.copy()
        self._type_species = self._type_order(atoms, cheap)
        self._undescribed = ~np.isin(atoms.numbers, [atomic_numbers[s] for s in cheap.species])
        masses = self._type_masses(atoms)

        # -- seeds and the tracker (rank 0) -------------------------------------------
        self._classifier = seeds if isinstance(seeds, LammpsClassifier) else None
        self._q: np.ndarray | None = None
        if self._classifier is not None:
            c = self._classifier
            seeds = ClassifierSeeds(self._classifier_quantity, lb=c.lb, ub=c.ub,
                                    nfreq=c.nfreq, window=c.window, initial=c.initial)
        self.tracker = RegionTracker(spec, seeds, nevery=self.nevery, hysteresis=hysteresis,
                                     skin=self.skin) if self.is_root else None
        if not self.is_root:  # the seeds' own checks (schedule) on every rank
            RegionTracker(spec, seeds, nevery=self.nevery, hysteresis=hysteresis, skin=self.skin)

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
        self._fixed = self._fixed_mask(atoms)
        self._start_lammps(atoms, masses, thermostat_force)
        self._replay_thermostat = thermostat_force is not None
        self._root_atoms = None
        if self.is_root:
            # not wrapped: positions stay continuous with the input's
            x = atoms.positions @ self.frame.rotation
            ra = Atoms(numbers=atoms.numbers, positions=x, cell=self.frame.box,
                       pbc=self.frame.pbc)
            ra.arrays[ID_ARRAY] = np.arange(1, self.n_atoms + 1)
            self._root_atoms = ra
        self._plan: _Plan | None = None
        self._components: list[_Component] = []
        self._lut = np.full(self.n_atoms + 1, -1, dtype=np.int32)  # tag -> cluster row
        self._wlut = np.zeros(0, dtype=np.int64)  # cluster row -> weighted row
        self._last_build: int | None = None
        self._started = False
        if isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)) \
                or start_step < 0:
            raise ConfigurationError(f"start_step must be an integer >= 0, got {start_step!r}")
        self.step = int(start_step)
        if self.step:
            self._command(f"reset_timestep {self.step}")
        if tracker_state is not None:
            if self.is_root:
                self.tracker.restore(tracker_state)
            self._last_build = tracker_state["last_build"]

    # ------------------------------------------------------------------ input checks

    @staticmethod
    def _type_order(atoms: Atoms, cheap: LammpsPotential) -> tuple[str, ...]:
        extra = [s for s in dict.fromkeys(atoms.get_chemical_symbols())
                 if s not in cheap.type_species]
        return tuple(cheap.type_species) + tuple(extra)

    @staticmethod
    def _fixed_mask(atoms: Atoms) -> np.ndarray:
        from ase.constraints import FixAtoms

        for c in atoms.constraints:
            if not isinstance(c, FixAtoms):
                raise ConfigurationError(
                    f"the LAMMPS engine holds atoms with FixAtoms only; remove the "
                    f"{type(c).__name__} constraint or use the ASE engine")
        return fixed_mask(atoms)

    def _type_masses(self, atoms: Atoms) -> list[float]:
        masses = atoms.get_masses()
        out = []
        for s in self._type_species:
            m = masses[self._numbers == atomic_numbers[s]]
            if m.size == 0:
                out.append(1.0)  # a species of the cheap potential not in the structure
                continue
            if np.ptp(m) > 1e-12 * m[0]:
                raise ConfigurationError(
                    f"atoms of {s} have different masses ({m.min()} to {m.max()} amu); "
                    "LAMMPS masses are per species: give all atoms of one species one mass")
            out.append(float(m[0]))
        return out

    def _check_inputs(self, atoms, expensive, cheap, spec, seeds, nevery, ensemble,
                      allow_approximate) -> None:
        if not isinstance(atoms, Atoms) or len(atoms) == 0:
            raise ConfigurationError("atoms must be a non-empty ase.Atoms")
        if not isinstance(cheap, LammpsPotential):
            raise ConfigurationError(
                f"the cheap potential of the LAMMPS engine must be a LammpsPotential (a "
                f"LAMMPS pair style), got {type(cheap).__name__}; use the ASE engine for "
                "other backends")
        if cheap.partial:
            raise ConfigurationError(f"{cheap.name} does not cover every type pair")
        if not isinstance(expensive, Potential):
            raise ConfigurationError(
                f"expensive must be an mlmix Potential, got {type(expensive).__name__}")
        if not isinstance(spec, RegionSpec):
            raise ConfigurationError(f"spec must be a RegionSpec, got {type(spec).__name__}")
        if not isinstance(seeds, (Seeds, LammpsClassifier)):
            raise ConfigurationError(
                "seeds must be IndexSeeds, SpeciesSeeds, ClassifierSeeds or a "
                f"LammpsClassifier, got {type(seeds).__name__}")
        if isinstance(nevery, bool) or not isinstance(nevery, (int, np.integer)) or nevery < 0:
            raise ConfigurationError(
                f"nevery must be an integer >= 0 (0 = regions built once), got {nevery!r}")
        if ensemble not in ("nve", "nvt"):
            raise ConfigurationError(
                f"ensemble must be 'nve' or 'nvt', got {ensemble!r} (force mixing has no "
                "stress, so no NPT)")
        expensive.check_atoms(atoms)  # species it describes, finite positions
        problem = None if allow_approximate else buffer_problem(expensive, spec.r_buff)
        if problem is not None:
            raise ConfigurationError(problem)
        present = set(atoms.get_chemical_symbols())
        if isinstance(seeds, SpeciesSeeds) and not present & set(seeds.symbols):
            raise ConfigurationError(
                    f"no atom of the seed species {seeds.symbols} is in the structure (it "
                    f"holds {sorted(present)}); pick a species that is present")
        if isinstance(seeds, IndexSeeds):
            bad = [i for i in seeds.indices.tolist() if not -len(atoms) <= i < len(atoms)]
            if bad:
                raise ConfigurationError(
                    f"seed indices {bad[:5]} are out of range for {len(atoms)} atoms")
        undescribed = sorted(present - set(cheap.species))
        if undescribed:
            covered = isinstance(seeds, SpeciesSeeds) and set(undescribed) <= set(seeds.symbols)
            if not covered and not isinstance(seeds, IndexSeeds):
                raise ConfigurationError(
                    f"the cheap potential {cheap.name} does not describe {undescribed}, "
                    f"so those atoms must always be in the core: use "
                    f"SpeciesSeeds({undescribed!r}) (or seed indices covering them)")
            if cheap.pair_style.split()[0] == "uf3":
                # LAMMPS: "UF3: Interaction 1-1-2 was mapped to 1-1-0, but potential
                # interaction for 1-1-0 was not found" for pair_coeff ... W NULL
                raise ConfigurationError(
                    f"the cheap UF3 {cheap.name} does not describe {undescribed}, and "
                    "LAMMPS's pair uf3 cannot leave a species out (NULL in pair_coeff); "
                    "run this system on the ASE engine, or use a cheap potential that "
                    "covers every species")
            if any(s.startswith("hybrid") for s in cheap.pair_style.split()[:1]):
                raise ConfigurationError(
                    f"{undescribed} are not described by the hybrid cheap style "
                    f"{cheap.pair_style!r}; add a pair style for them to the cheap potential")

    # ------------------------------------------------------------------ LAMMPS setup

    def _command(self, cmd: str, what: str = "setting up the LAMMPS engine",
                 error=CalculationError) -> None:
        try:
            self._lmp.command(cmd)
        except Exception as exc:  # noqa: BLE001 - LAMMPS raises bare Exceptions
            text = str(exc).strip().splitlines()
            raise error(f"LAMMPS failed while {what} ({cmd!r}): "
                        f"{text[0] if text else exc!r}") from None

    def _pair_commands(self) -> list[str]:
        cheap = self.cheap
        cmds = list(cheap.pre_commands)
        if len(self._type_species) == len(cheap.type_species):
            cmds.append(f"pair_style {cheap.pair_style}")
            cmds += list(cheap.pair_coeff)
        else:
            # Species the cheap potential lacks (He in W) interact through nothing on
            # the cheap side: a zero pair style covers their type pairs. They have p = 1,
            # so their cheap force is never used; W atoms near them are in the core too.
            sub = cheap.pair_style.split()[0]
            cmds.append(f"pair_style hybrid/overlay {cheap.pair_style} zero 1.0")
            for c in cheap._coeffs:  # re-rendered in the engine's type order
                cmds += c.render(cheap.type_species, self._type_species, sub)
            cmds.append("pair_coeff * * zero")
        cmds.append(f"neighbor {format_number(cheap.skin)} bin")
        cmds.append("neigh_modify every 1 delay 0 check yes")
        return cmds

    def _start_lammps(self, atoms: Atoms, masses: list[float],
                      thermostat_force: np.ndarray | None) -> None:
        fr = self.frame
        self._lmp = new_lammps()
        b, o = fr.box, fr.origin
        hi = o + np.diag(b)
        bounds = " ".join(f"{format_number(o[k])} {format_number(hi[k])}" for k in range(3))
        if fr.triclinic:
            region = (f"region mlmix_box prism {bounds} {format_number(b[1, 0])} "
                      f"{format_number(b[2, 0])} {format_number(b[2, 1])} units box")
        else:
            region = f"region mlmix_box block {bounds} units box"
        for c in ["units metal", "atom_style atomic", "atom_modify map yes",
                  "boundary " + " ".join("p" if p else "s" for p in fr.pbc), region,
                  f"create_box {len(self._type_species)} mlmix_box"]:
            self._command(c)
        self._check_decomposition()
        for c in self._pair_commands():
            self._command(c, "defining the cheap potential", ConfigurationError)
        for k, m in enumerate(masses):
            self._command(f"mass {k + 1} {format_number(m)}")
        lut = {s: k + 1 for k, s in enumerate(self._type_species)}
        types = np.array([lut[s] for s in self._symbols], dtype=np.int64)
        x = fr.to_lammps(atoms.positions)
        # ASE velocities are Å per ASE time unit; LAMMPS metal wants Å/ps.
        v = (atoms.get_velocities() @ fr.rotation) * (1000.0 * units.fs)
        v[self._fixed] = 0.0
        chunk = 100_000  # bounded temporary ctypes arrays
        for s in range(0, self.n_atoms, chunk):
            e = min(s + chunk, self.n_atoms)
            made = self._lmp.create_atoms(e - s, np.arange(s + 1, e + 1), types[s:e],
                                          x[s:e].ravel(), v[s:e].ravel())
            if made is None or made < 0:
                raise CalculationError("LAMMPS refused to create the atoms")
        if self._lmp.get_natoms() != self.n_atoms:
            raise CalculationError(
                f"LAMMPS kept {self._lmp.get_natoms()} of {self.n_atoms} atoms (atoms "
                "outside the box?)")
        ts = format_number(self.timestep / 1000.0)
        cmds = [f"timestep {ts}", "thermo 0", "thermo_style custom step",
                f"fix mlmix_ref all property/atom {_REF} 3 ghost no",
                "fix mlmix_nve all nve",
                f"fix {_FIX_EXT} all external pf/callback 1 1",
                f"variable {_HALT_VAR} internal 0",
                f"fix mlmix_halt all halt 1 v_{_HALT_VAR} > 0.5 error soft message no"]
        if self._classifier is not None:
            c = self._classifier
            cmds.append(f"compute {_CLASSIFIER} all {c.compute} {c.args}".rstrip())
        for c in cmds:
            err = ConfigurationError if c.startswith("compute") else CalculationError
            self._command(c, "setting up the LAMMPS engine", err)
        if self._fixed.any():
            # defined after fix external, so it zeroes correction and thermostat too
            self._command("fix mlmix_fixflag all property/atom i_mlmix_fixed ghost no")
            nlocal = int(self._lmp.extract_setting("nlocal"))
            tag = np.asarray(self._lmp.numpy.extract_atom("id")[:nlocal], dtype=np.int64)
            if nlocal:
                self._lmp.numpy.extract_atom("i_mlmix_fixed")[:nlocal] = self._fixed[tag - 1]
            for c in ("variable mlmix_vfixed atom i_mlmix_fixed",
                      "group mlmix_fixed variable mlmix_vfixed",
                      "fix mlmix_hold mlmix_fixed setforce 0.0 0.0 0.0"):
                self._command(c)
        if self.ensemble == "nvt":
            self._command(f"fix mlmix_fth all property/atom {_FTH} 3 ghost no")
            if thermostat_force is not None:
                nlocal = int(self._lmp.extract_setting("nlocal"))
                tag = np.asarray(self._lmp.numpy.extract_atom("id")[:nlocal], dtype=np.int64)
                fth = self._lmp.numpy.extract_atom(_FTH)
                if nlocal:
                    fth[:nlocal] = (thermostat_force @ self.frame.rotation)[tag - 1]
        self._lmp.set_fix_external_callback(_FIX_EXT, self._callback)
        self._mvv2e = float(self._lmp.extract_global("mvv2e"))
        self._boltz = float(self._lmp.extract_global("boltz"))
        self._type_mass = np.array([0.0, *masses])

    def _check_decomposition(self) -> None:
        """Refuse a rank count that cuts the box into slabs thinner than the cheap
        potential's interaction range (cutoff + skin): each rank would then hold more
        ghost atoms than atoms, and the run would be slower than on fewer ranks."""
        if self.comm.size == 1:
            return
        if self.frame.triclinic:
            lo = np.array(self._lmp.extract_global("sublo_lambda"))
            hi = np.array(self._lmp.extract_global("subhi_lambda"))
        else:
            box_lo = np.array(self._lmp.extract_global("boxlo"))
            box_len = np.array(self._lmp.extract_global("boxhi")) - box_lo
            lo = (np.array(self._lmp.extract_global("sublo")) - box_lo) / box_len
            hi = (np.array(self._lmp.extract_global("subhi")) - box_lo) / box_len
        widths = perpendicular_widths(self.frame.box)
        split = (hi - lo) < 1.0 - 1e-9  # axes the rank grid cuts
        local = float(np.min(np.where(split, (hi - lo) * widths, np.inf)))
        smallest = min(self.comm.allgather(local))
        reach = self.cheap.cutoff + self.cheap.skin
        if smallest < reach:
            fit = np.maximum(1, np.floor(widths / reach)).astype(int)
            fit = np.where(np.array(self.frame.pbc), fit, 1)
            most = int(np.prod(fit))
            raise ConfigurationError(
                f"{self.comm.size} MPI ranks cut this {widths.round(2).tolist()} Å box into "
                f"sub-domains {smallest:.2f} Å thin, less than the cheap potential's "
                f"interaction range {reach:.2f} Å (cutoff + skin): every rank would hold "
                f"more ghost atoms than atoms. Use at most {most} rank{'s' * (most > 1)} "
                "for this cell, or a larger cell")

    # ------------------------------------------------------------------ classifier

    def _classifier_quantity(self, atoms: Atoms) -> np.ndarray:
        if self._q is None or len(self._q) != len(atoms):  # pragma: no cover - guard
            raise CalculationError("the LAMMPS classifier was not sampled at this step")
        return self._q

    # ------------------------------------------------------------------ exchanges

    def _gather_by_tag(self, tag: np.ndarray, *columns: np.ndarray):
        """Rank 0: ``(N, k)`` arrays of the given per-local-atom columns, by tag."""
        parts = self.comm.gather((tag, *columns), root=0)
        if not self.is_root:
            return None
        out = []
        for c, col in enumerate(columns):
            shape = (self.n_atoms,) + col.shape[1:]
            full = np.empty(shape, dtype=col.dtype)
            for part in parts:
                full[part[0] - 1] = part[c + 1]
            out.append(full)
        return out

    def _root_call(self, fn: Callable, *args):
        """Run ``fn`` on rank 0 and share its result and any MlmixError with all ranks."""
        result, err = None, None
        if self.is_root:
            try:
                result = fn(*args)
            except Exception as exc:  # noqa: BLE001 - a backend bug must not hang ranks
                err = _as_mlmix_error(exc)
        result, err = self.comm.bcast((result, err), root=0)
        if err is not None:
            raise err
        return result

    # ------------------------------------------------------------------ the step

    def _is_rebuild(self, step: int) -> bool:
        if self._last_build is None:
            return True
        return self.nevery > 0 and step % self.nevery == 0 and step != self._last_build

    def _moved_too_far(self, x: np.ndarray, xref: np.ndarray) -> bool:
        d = self.frame.min_image(x - xref) if len(x) else np.zeros((0, 3))
        local = float(np.einsum("ij,ij->i", d, d).max(initial=0.0))
        worst = max(self.comm.allgather(local)) if self.comm.size > 1 else local
        return worst >= (0.5 * self.skin) ** 2

    def _callback(self, caller, ntimestep, nlocal, tag, x, fext) -> None:
        try:
            self._step(int(ntimestep), int(nlocal), tag, x, fext)
        except Exception as exc:  # noqa: BLE001 - an exception must not vanish in C
            # Every rank reaches here together (errors are broadcast): stop the run at
            # the end of this step and raise after it.
            self._error = _as_mlmix_error(exc)
            fext[:nlocal] = 0.0
            self._lmp.set_internal_variable(_HALT_VAR, 1.0)

    def _step(self, step: int, nlocal: int, tag, x, fext) -> None:
        if self._error is not None:
            fext[:nlocal] = 0.0
            return
        t0 = time.perf_counter()
        tag = np.asarray(tag[:nlocal], dtype=np.int64)
        x = np.asarray(x[:nlocal])
        f = np.asarray(self._lmp.numpy.extract_atom("f")[:nlocal])
        xref = self._lmp.numpy.extract_atom(_REF)
        if xref is None:  # a rank without atoms
            xref = np.zeros((0, 3))
        rebuilt = self._is_rebuild(step)
        # (no plan yet: a run continued from a tracker state builds its cluster first)
        # Between the outer steps of multiple time stepping only the cheap force acts
        # (mlmix.mts); rebuild steps are outer steps by construction.
        corrected = is_outer_step(step, self.correction_every)
        sets = self._plan is None or (corrected and (
            rebuilt or self._moved_too_far(x, xref[:nlocal])))
        t_regions = t_exchange = 0.0
        if sets:
            ts = time.perf_counter()
            q = None
            if self._classifier is not None and rebuilt:
                q = np.asarray(self._lmp.numpy.extract_compute(_CLASSIFIER, 1, 1)[:nlocal])
            cols = (x.copy(),) if q is None else (x.copy(), q.copy())
            gathered = self._gather_by_tag(tag, *cols)
            plan = self._root_call(self._build_plan, gathered, step)
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
            r = self.tracker.regions
            self.history.append(EngineStep(
                step=step, rebuilt=rebuilt, sets_rebuilt=sets, counts=r.counts(),
                n_cluster=len(self._plan.index), n_expensive=n_eval, corrected=corrected,
                seconds={"regions": t_regions, "expensive": t_exp, "exchange": t_exchange,
                         "callback": time.perf_counter() - t0}))

    def _thermostat(self, step, tag, mine, w_rows, hit, fext, nlocal) -> None:
        """Add region-weighted Langevin drag and noise (see module) to ``fext``."""
        p = np.zeros(nlocal)
        p[mine[hit]] = self._plan.p[w_rows[hit]]
        if self.thermostat_weights == "cheap":
            w = 1.0 - p
        elif self.thermostat_weights == "expensive":
            w = p
        else:
            w = np.ones(nlocal)
        stored = self._lmp.numpy.extract_atom(_FTH)
        stored = np.zeros((0, 3)) if stored is None else stored[:nlocal]  # rank without atoms
        if self._replay_thermostat:  # the first call of a continued run: step start_step
            self._replay_thermostat = False
            fext[:nlocal] += stored
            return
        v = np.asarray(self._lmp.numpy.extract_atom("v")[:nlocal])
        types = np.asarray(self._lmp.numpy.extract_atom("type")[:nlocal])
        m = self._type_mass[types][:, None]
        gamma = self.friction * 1000.0  # 1/ps
        dt = self.timestep / 1000.0  # ps
        kt = self._boltz * self.temperature  # eV
        drag = -gamma * m * v * self._mvv2e  # eV/Å
        sigma = np.sqrt(2.0 * gamma * m * kt * self._mvv2e / dt)  # eV/Å
        noise = sigma * counter_normals(self.seed, step, tag)
        stored[:] = w[:, None] * (drag + noise)
        fext[:nlocal] += stored

    def _set_plan(self, plan: tuple) -> None:
        index, weighted, p = plan
        self._plan = _Plan(index, weighted, p)
        self._lut[:] = -1
        self._lut[index + 1] = np.arange(len(index), dtype=np.int32)
        self._wlut = np.full(len(index), -1, dtype=np.int64)
        self._wlut[weighted] = np.arange(len(weighted))

    # ------------------------------------------------------------------ rank 0 work

    def _build_plan(self, gathered, step: int):
        """Rank 0: regions, cluster and components for the current structure."""
        ra = self._root_atoms
        xw = gathered[0]
        # Continuous (unwrapped) positions: the tracker measures displacements by
        # plain differences, so atoms must not jump by a cell vector when LAMMPS wraps.
        ra.positions = ra.positions + self.frame.min_image(xw - ra.positions)
        if self._classifier is not None and len(gathered) > 1:
            self._q = gathered[1]
        regions = self.tracker.update(ra, step)
        self._check_core(regions)
        return self._make_cluster(regions)

    def _check_core(self, regions: Regions) -> None:
        outside = np.flatnonzero(self._undescribed & (regions.p < 1))
        if outside.size:
            symbols = sorted({self._symbols[i] for i in outside})
            raise ConfigurationError(undescribed_outside_core(
                outside.size, int(outside[0]), symbols, self.cheap.name))

    def _make_cluster(self, regions: Regions):
        ra = self._root_atoms
        cell, pbc = ra.cell.array, ra.pbc
        halo = self.expensive.halo + self.skin
        if not np.isfinite(halo):  # pragma: no cover - potentials always have a cutoff
            raise ConfigurationError(f"{self.expensive.name} has no finite cutoff")
        expensive = regions.expensive
        if expensive.all():
            members = expensive.copy()
        else:
            members = within(ra.positions, cell, pbc, expensive, halo)
        index = np.flatnonzero(members)
        mask = expensive[index]
        weighted = np.flatnonzero(regions.p[index] > 0)
        self._components = self._split(index, mask, halo)
        return index, weighted, regions.p[index][weighted]

    def _split(self, index: np.ndarray, mask: np.ndarray, halo: float) -> list[_Component]:
        """Components of the cluster (expensive atoms closer than 2 x halo or one
        receptive field joined), each carved out non-periodically when it fits."""
        ra = self._root_atoms
        cell, pbc = ra.cell.array, np.asarray(ra.pbc)
        x = ra.positions[index]
        if len(index) == 0:
            return []
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        core = np.flatnonzero(mask)
        # Expensive atoms within one receptive field of each other must share a graph
        # (a carved-cluster backend's halo, its buffer, can be far shorter).
        link = max(_COMPONENT_LINK * halo, self.expensive.receptive_field + self.skin)
        i, j = neighbour_pairs(x[core], cell, pbc, link, "ij")
        graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(len(core), len(core)))
        n_comp, core_label = connected_components(graph, directed=False)
        label_core = core_label
        # A halo atom lies within `halo` of some expensive atom, and expensive atoms of
        # two components lie more than 2 x halo apart: all its expensive neighbours
        # belong to one component, which it joins.
        label = np.full(len(index), -1)
        label[core] = label_core
        hi, hj = neighbour_pairs(x, cell, pbc, halo, "ij")
        near = ~mask[hi] & mask[hj]
        label[hi[near]] = label[hj[near]]
        widths = perpendicular_widths(complete_cell(cell, pbc))
        comps = []
        for c in range(n_comp):
            rows = np.flatnonzero(label == c)
            centre = x[rows[mask[rows]][0]]
            d = self.frame.min_image(x[rows] - centre)
            span = d.max(axis=0) - d.min(axis=0)
            fits = not pbc.any() or bool(np.all((span + 2 * halo < widths)[pbc]))
            comps.append(_Component(rows, mask[rows], centre if fits else None))
        if not all(c.centre is not None for c in comps) and len(comps) > 1:
            # one periodic piece: keep the cell, evaluate everything together
            rows = np.arange(len(index))
            comps = [_Component(rows, mask, None)]
        # rank-local backends: deal components to ranks, largest first
        load = np.zeros(self.comm.size)
        for c in sorted(comps, key=lambda c: -len(c.rows)):
            c.owner = int(np.argmin(load))
            load[c.owner] += len(c.rows)
        return comps

    def _component_atoms(self, comp: _Component, x: np.ndarray) -> Atoms:
        """The structure of one component at cluster positions ``x`` ``(n, 3)``."""
        ra = self._root_atoms
        index = self._plan.index[comp.rows]
        y = x[comp.rows]
        if comp.centre is None:
            return Atoms(numbers=ra.numbers[index], positions=y, cell=ra.cell.array,
                         pbc=ra.pbc)
        y = comp.centre + self.frame.min_image(y - comp.centre)
        # No cell: LAMMPS shrink-wraps the component, so a fixed cell keeps the
        # expensive backend's instance alive between steps.
        return Atoms(numbers=ra.numbers[index], positions=y, pbc=False)

    def _correction(self, parts):
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
                ra = self._root_atoms
                idx = self._plan.index
                ra.positions[idx] += self.frame.min_image(xc - ra.positions[idx])
                xc = ra.positions[idx]
                payload = [(c, self._component_atoms(c, xc)) for c in self._components]
            except Exception as exc:  # noqa: BLE001 - shared below, never a hang
                err = _as_mlmix_error(exc)
        fe, n_eval = self._evaluate(payload, n, err)
        t1 = time.perf_counter()
        corr = None
        if self.is_root:
            w = self._plan.weighted
            corr = self._plan.p[:, None] * (fe[w] - fc[w])
        corr = self.comm.bcast(corr, root=0)
        return corr, n_eval, t1 - t0

    def _evaluate(self, payload, n: int, err):
        """Expensive forces ``(n, 3)`` on rank 0 (valid on the weighted rows).

        Raises on every rank when any rank failed.
        """
        if n == 0:  # no expensive atoms (a classifier that found nothing)
            err = self.comm.bcast(err, root=0)
            if err is not None:
                raise err
            return np.zeros((0, 3)), 0
        if self.collective:
            # One LAMMPS evaluation of all components together, on every rank; LAMMPS
            # errors in it are raised on all ranks alike.
            job = None
            if self.is_root and err is None:
                try:
                    job = self._merge(payload)
                except Exception as exc:  # noqa: BLE001
                    err = _as_mlmix_error(exc)
            job, err = self.comm.bcast((job, err), root=0)
            if err is not None:
                raise err
            atoms, rows, mask = job
            ev = self.expensive.evaluate(atoms, mask)
            if not ev.exact and not self.allow_approximate:
                raise ConfigurationError(
                    f"{self.expensive.name} evaluated the expensive set approximately")
            if not self.is_root:
                return None, 0
            fe = np.zeros((n, 3))
            fe[rows] = ev.forces
            return fe, ev.n_evaluated
        jobs, err = self.comm.bcast((payload, err), root=0)
        if err is not None:
            raise err
        mine, err = [], None
        try:
            for comp, atoms in jobs:
                if comp.owner == self.comm.rank:
                    mine.append((comp.rows, self._evaluate_one(atoms, comp.mask)))
        except Exception as exc:  # noqa: BLE001 - shared below, never a hang
            err = _as_mlmix_error(exc)
        results = self.comm.gather((mine, err), root=0)
        errors = [e for _, e in results] if self.is_root else None
        first = next((e for e in errors if e is not None), None) if self.is_root else None
        first = self.comm.bcast(first, root=0)
        if first is not None:
            raise first
        if not self.is_root:
            return None, 0
        fe = np.zeros((n, 3))
        n_eval = 0
        for part, _ in results:
            for rows, (forces, k) in part:
                fe[rows] = forces
                n_eval += k
        return fe, n_eval

    def _evaluate_one(self, atoms: Atoms, mask: np.ndarray):
        ev = self.expensive.evaluate(atoms, mask)
        if not ev.exact and not self.allow_approximate:
            raise ConfigurationError(
                f"{self.expensive.name} evaluated the expensive set approximately; widen "
                "its buffer, use a masked backend, or pass allow_approximate=True")
        return ev.forces, ev.n_evaluated

    def _merge(self, payload):
        """All components as one structure for a collective LAMMPS evaluation."""
        comps = [c for c, _ in payload]
        parts = [a for _, a in payload]
        if len(parts) == 1:
            return parts[0], comps[0].rows, comps[0].mask
        # _split guarantees: several components are all non-periodic and lie more than
        # two halos apart, so placing each at its own unwrapped image is exact.
        numbers = np.concatenate([a.numbers for a in parts])
        positions = np.concatenate([a.positions for a in parts])
        rows = np.concatenate([c.rows for c in comps])
        mask = np.concatenate([c.mask for c in comps])
        return Atoms(numbers=numbers, positions=positions, pbc=False), rows, mask

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
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ConfigurationError(f"steps must be an integer >= 0, got {steps!r}")
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 0:
            raise ConfigurationError(f"every must be an integer >= 0, got {every!r}")
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
                self._root_call(callback, snap, self)
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
            fth = self._lmp.numpy.extract_atom(_FTH)
            columns.append(np.array(fth[:nlocal]) if fth is not None else np.zeros((0, 3)))
        got = self._gather_by_tag(tag, *columns)
        if not self.is_root:
            return None
        xw, v, f = got[:3]
        ra = self._root_atoms
        ra.positions = ra.positions + self.frame.min_image(xw - ra.positions)
        rot = self.frame.rotation
        atoms = Atoms(numbers=self._numbers, positions=ra.positions @ rot.T,
                      cell=self._cell_ase, pbc=self._pbc_ase)
        masses = self._type_mass[[self._type_species.index(s) + 1 for s in self._symbols]]
        atoms.set_masses(masses)
        atoms.set_velocities((v @ rot.T) / (1000.0 * units.fs))
        atoms.arrays[ID_ARRAY] = np.arange(1, self.n_atoms + 1)
        if self.tracker.regions is not None:
            atoms.arrays.update(self.tracker.regions.per_atom_arrays())
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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
