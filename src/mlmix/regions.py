"""Regions: per-atom mixing weights p_i and the two evaluation sets (method.md §2).

Data flow::

    seeds (bool, N)  --core_and_weights-->  p* (N,)  --hysteresis-->  p (N,)
    p  --evaluation_sets-->  expensive (N, bool), cheap (N, bool)

The maths lives in small pure functions over numpy arrays (`blend_weight`,
`region_arrays`, `relax_weights`); :class:`RegionTracker` is the stateful edge that
decides *when* to rebuild, keeps hysteresis and classifier state, and makes weights
follow atom identity (the ``mlmix_id`` per-atom array) when atoms are reordered, added
or deleted; atoms it has no identity for are a new structure, on which it starts afresh.

Distances are minimum-image under the cell's periodic directions (triclinic cells
included); all lengths are Å and times fs. Comparisons are strict (``d < r``), as in
method.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np
from ase import Atoms

from .arguments import number_argument
from .carving import candidates_near
from .errors import CalculationError, ConfigurationError
from .identity import ID_ARRAY, ensure_ids, values_by_id
from .neighbours import pair_finder
from .seeds import Seeds

BlendShape = Literal["linear", "cubic"]

# Thresholds at which hysteresis snaps a ramping weight to 0 or 1 (method.md §2.3).
SNAP_LOW, SNAP_HIGH = 0.01, 0.99


@dataclass(frozen=True)
class RegionSpec:
    """Radii (Å) and blend shape of the regions.

    Attributes:
        r_core: atoms closer than this to a seed have p = 1.
        r_blend: width of the blend shell around the core, where p falls from 1 to 0
            with the distance to the nearest core atom.
        r_buff: width of the buffer around every atom with p > 0, evaluated by the
            expensive potential with weight 0; set it to the expensive cutoff for
            exact forces.
        blend: ``"linear"`` (b = 1 - x) or ``"cubic"`` (b = 1 - 3x^2 + 2x^3).
    """

    r_core: float
    r_blend: float = 0.0
    r_buff: float = 0.0
    blend: BlendShape = "linear"

    def __post_init__(self) -> None:
        for name in ("r_core", "r_blend", "r_buff"):
            value = number_argument(f"RegionSpec {name}", getattr(self, name), "Å",
                                    minimum=0, what="distance")
            object.__setattr__(self, name, value)
        if not isinstance(self.blend, str) or self.blend not in ("linear", "cubic"):
            raise ConfigurationError(
                f"RegionSpec blend must be 'linear' or 'cubic', got {self.blend!r}"
            )

    @property
    def reach(self) -> float:
        """Å from a seed to the farthest atom the regions can touch."""
        return self.r_core + self.r_blend + self.r_buff


@dataclass(frozen=True)
class Hysteresis:
    """Time hysteresis of the weights (method.md §2.3).

    Attributes:
        tau_in: fs, time constant for weights that rise.
        tau_out: fs, time constant for weights that fall.
        timestep: fs, the MD time step (one force evaluation).
    """

    tau_in: float
    tau_out: float
    timestep: float

    def __post_init__(self) -> None:
        for name in ("tau_in", "tau_out"):
            value = number_argument(f"Hysteresis {name}", getattr(self, name), "fs",
                                    minimum=0, what="time", note="0 = no delay")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "timestep", number_argument(
            "Hysteresis timestep", self.timestep, "fs", minimum=0, strict=True, what="time"))


@dataclass(frozen=True)
class Regions:
    """One snapshot of the regions, aligned with the atoms it was made for.

    Attributes:
        p: ``(N,)`` mixing weight of the expensive forces, 0..1.
        seeds: ``(N,)`` bool, the seed atoms.
        core: ``(N,)`` bool, seeds and atoms within r_core of one.
        expensive: ``(N,)`` bool, atoms the expensive potential must evaluate
            (p > 0 and their buffer).
        cheap: ``(N,)`` bool, atoms the cheap potential must evaluate (all but the deep
            core).
    """

    p: np.ndarray
    seeds: np.ndarray
    core: np.ndarray
    expensive: np.ndarray
    cheap: np.ndarray

    def per_atom_arrays(self) -> dict[str, np.ndarray]:
        """Arrays to store on ``Atoms.arrays`` (extended XYZ writes them; OVITO reads them)."""
        return {
            "mlmix_p": self.p.copy(),
            "mlmix_expensive": self.expensive.copy(),
            "mlmix_cheap": self.cheap.copy(),
        }

    def counts(self) -> dict[str, int]:
        """Sizes of the sets: core, blended (0 < p < 1), expensive, cheap."""
        return {
            "core": int(self.core.sum()),
            "blend": int(((self.p > 0) & (self.p < 1)).sum()),
            "expensive": int(self.expensive.sum()),
            "cheap": int(self.cheap.sum()),
        }


# --------------------------------------------------------------------------- maths


def blend_weight(x: np.ndarray, shape: BlendShape) -> np.ndarray:
    """Blend function b(x) for x = d / r_blend in [0, 1]: 1 at the core, 0 at r_blend."""
    x = np.clip(x, 0.0, 1.0)
    if shape == "linear":
        return 1.0 - x
    return 1.0 - x * x * (3.0 - 2.0 * x)


def relax_weights(
    p_prev: np.ndarray, p_target: np.ndarray, fraction_in: float, fraction_out: float
) -> np.ndarray:
    """One hysteresis update: move p towards p* by a fraction, then snap near 0 and 1.

    Args:
        p_prev, p_target: ``(N,)`` weights.
        fraction_in: ``min(dt * nevery / tau_in, 1)``, used where p* > p.
        fraction_out: the same with tau_out, used where p* < p.
    """
    delta = p_target - p_prev
    rising = delta > 0
    p = p_prev + delta * np.where(rising, fraction_in, fraction_out)
    p[(delta < 0) & (p < SNAP_LOW)] = 0.0
    p[rising & (p > SNAP_HIGH)] = 1.0
    return p


def _finder(positions, cell, pbc, active: np.ndarray, reach: float):
    # Every atom a region step can touch lies within `reach` of an active atom: an O(N)
    # bin filter picks those, and one k-d tree over them serves the small queries.
    cand = np.flatnonzero(candidates_near(positions, cell, pbc, active, reach))
    return pair_finder(positions, cell, pbc, cand)


def evaluation_sets(
    positions: np.ndarray, cell: np.ndarray, pbc, p: np.ndarray, r_buff: float, find=None
) -> tuple[np.ndarray, np.ndarray]:
    """The two evaluation sets for weights p (method.md §2, steps 4-5).

    Args:
        positions: ``(N, 3)`` Å. cell: ``(3, 3)`` Å. pbc: bool or three bools.
        p: ``(N,)`` weights.
        r_buff: Å, buffer width (the tracker adds its skin here).
        find: a :func:`~mlmix.neighbours.pair_finder` query covering the atoms within
            r_buff of the weighted atoms; built here when None.

    Returns:
        ``(expensive, cheap)``, ``(N,)`` bool each: atoms with p > 0 and their buffer;
        all atoms but the deep core (p = 1 with every atom within r_buff at p = 1).
    """
    weighted = p > 0
    if not weighted.any():
        return weighted.copy(), np.ones(len(p), bool)
    if find is None:
        find = _finder(positions, cell, pbc, weighted, r_buff)
    expensive = weighted.copy()
    expensive[find(np.flatnonzero(weighted), r_buff)[1]] = True
    full = p >= 1.0
    i, j, _ = find(np.flatnonzero(full), r_buff)
    near_partial = np.zeros(len(p), bool)
    near_partial[i[p[j] < 1.0]] = True
    return expensive, ~(full & ~near_partial)


def region_arrays(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc,
    seeds: np.ndarray,
    spec: RegionSpec,
    p_prev: np.ndarray | None = None,
    fractions: tuple[float, float] | None = None,
    skin: float = 0.0,
) -> Regions:
    """Build the regions from seeds (method.md §2, steps 1-5).

    Args:
        positions: ``(N, 3)`` Å.
        cell: ``(3, 3)`` Å, rows are lattice vectors.
        pbc: bool or three bools.
        seeds: ``(N,)`` bool.
        spec: radii and blend shape.
        p_prev: ``(N,)`` previous weights, for hysteresis; None for a first build.
        fractions: ``(fraction_in, fraction_out)`` for :func:`relax_weights`; None
            means no hysteresis (p = p*).
        skin: Å added to r_buff for the evaluation sets, so that they stay valid
            while atoms move less than skin / 2 (see :class:`RegionTracker`).

    Only atoms near the seeds or near previously weighted atoms enter the neighbour
    search (an O(N) bin filter first), so a rebuild costs O(N) with a small constant.
    """
    n = len(positions)
    p = np.zeros(n)
    core = seeds.copy()
    active = seeds if p_prev is None else seeds | (p_prev > 0)
    if not active.any():
        return Regions(p, seeds.copy(), core, np.zeros(n, bool), np.ones(n, bool))
    if seeds.all() and fractions is None:
        # Every atom expensive (e.g. a classifier before its first query).
        return Regions(np.ones(n), seeds.copy(), core, np.ones(n, bool), np.zeros(n, bool))

    r_sets = spec.r_buff + skin
    find = _finder(positions, cell, pbc, active, spec.r_core + spec.r_blend + r_sets)
    # 1. core
    core[find(np.flatnonzero(seeds), spec.r_core)[1]] = True
    p[core] = 1.0
    # 2. blend: max of b(d / r_blend) over core atoms within r_blend
    if spec.r_blend > 0:
        _, j, d = find(np.flatnonzero(core), spec.r_blend)
        outside = ~core[j]
        np.maximum.at(p, j[outside], blend_weight(d[outside] / spec.r_blend, spec.blend))
    # 3. hysteresis
    if p_prev is not None and fractions is not None:
        p = relax_weights(p_prev, p, *fractions)
    # 4-5. evaluation sets
    expensive, cheap = evaluation_sets(positions, cell, pbc, p, r_sets, find)
    return Regions(p, seeds.copy(), core, expensive, cheap)


# --------------------------------------------------------------------------- tracker


_T = TypeVar("_T")


def _followed(value: _T | None) -> _T:
    """What the tracker keeps from its last update (always there once it made one)."""
    if value is None:  # pragma: no cover - update() sets them all before they are read
        raise CalculationError("the region tracker has no earlier update to continue")
    return value


@dataclass
class RegionTracker:
    """Regions that follow a simulation: when to rebuild, hysteresis, identity.

    Call :meth:`update` once per step with the current atoms and step number. Regions
    are rebuilt at the first call and then every ``nevery`` steps (``nevery = 0``:
    built once and then only carried along, as for relaxations and NEB); between
    rebuilds the weights stay attached to the same atoms.

    Which atoms are "the same" is decided by identity, the per-atom ``mlmix_id``
    array (:mod:`mlmix.identity`), compared with the atoms of the last update:

    * the same ids, in any order or with some atoms deleted: the same structure;
      weights are carried by identity;
    * some ids known and some not (atoms added, which ASE gives id 0): the same
      structure with new atoms; they get fresh ids and the regions are rebuilt at
      once so that they have a weight;
    * no id known (atoms without an ``mlmix_id`` array, e.g. a second structure
      built by the same builder, or ids all from another run): a **new structure**.
      The tracker starts afresh (:meth:`reset`): no weights, hysteresis or
      evaluation sets are carried over, and the seed source re-seeds from its
      definition (indices into this structure, its species, a classifier from
      scratch), exactly as a new tracker would. Ids keep counting up, so the old and
      the new structure never share one. A seed source that finds no seed where the
      user gave some raises :class:`~mlmix.errors.ConfigurationError`; the
      expensive region is never lost silently.

    The evaluation sets must keep covering every atom within r_buff of a weighted atom
    as atoms move, or forces stop being exact between rebuilds. So they are built with
    ``r_buff + skin`` and recomputed from the current weights (at no change of the
    weights) whenever an atom has moved more than ``skin / 2`` since they were built,
    the Verlet-list rule.

    Attributes:
        spec: radii and blend shape.
        seeds: where the seeds come from (:mod:`mlmix.seeds`).
        nevery: rebuild period in steps (0 = once).
        hysteresis: optional time hysteresis (needs ``nevery > 0``).
        skin: Å, margin of the evaluation sets (see above); 0 recomputes them at
            every call.
        n_set_builds: how many times the evaluation sets were built (with the
            regions or alone), over the tracker's life.
    """

    spec: RegionSpec
    seeds: Seeds
    nevery: int = 1
    hysteresis: Hysteresis | None = None
    skin: float = 0.5
    _ids: np.ndarray | None = field(default=None, init=False, repr=False)
    _regions: Regions | None = field(default=None, init=False, repr=False)
    _next_id: int = field(default=1, init=False, repr=False)
    _last_build: int | None = field(default=None, init=False, repr=False)
    _x_sets: np.ndarray | None = field(default=None, init=False, repr=False)
    n_set_builds: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.spec, RegionSpec):
            raise ConfigurationError(
                f"RegionTracker spec must be a RegionSpec(r_core, r_blend, r_buff), got "
                f"{self.spec!r}")
        if not isinstance(self.seeds, Seeds):
            raise ConfigurationError(
                f"RegionTracker seeds must be a seed source (IndexSeeds, SpeciesSeeds, "
                f"ClassifierSeeds), got {self.seeds!r}")
        if self.hysteresis is not None and not isinstance(self.hysteresis, Hysteresis):
            raise ConfigurationError(
                f"RegionTracker hysteresis must be a Hysteresis(tau_in, tau_out, timestep) "
                f"or None, got {self.hysteresis!r}")
        self.skin = number_argument("RegionTracker skin", self.skin, "Å", minimum=0,
                                    what="distance")
        self.nevery = int(number_argument("RegionTracker nevery", self.nevery, minimum=0,
                                          integer=True, note="0 = build once"))
        if self.hysteresis is not None and self.nevery == 0:
            raise ConfigurationError(
                "hysteresis needs regions that are rebuilt: set nevery > 0 or drop it"
            )
        self.seeds.check_schedule(self.nevery)

    @property
    def regions(self) -> Regions | None:
        """The regions of the last :meth:`update` (None before the first)."""
        return self._regions

    @property
    def last_build(self) -> int | None:
        """Step of the last rebuild (None before the first)."""
        return self._last_build

    def state(self) -> dict:
        """Everything :meth:`update` carries between steps, for a checkpoint.

        Weights (hysteresis history), evaluation sets and the positions they were
        built at, identities, the last rebuild step and the seed source's history:
        a tracker restored from it continues exactly as the original would.
        """
        r = self._regions
        arrays = {} if r is None else {
            "p": r.p, "seeds": r.seeds, "core": r.core, "expensive": r.expensive,
            "cheap": r.cheap}
        return {"ids": self._ids, "regions": arrays, "next_id": self._next_id,
                "last_build": self._last_build, "x_sets": self._x_sets,
                "n_set_builds": self.n_set_builds, "seed_source": self.seeds.state()}

    def restore(self, state: dict) -> None:
        """Continue from a :meth:`state` of a tracker configured the same way."""
        r = state["regions"]
        self._regions = Regions(**r) if r else None
        self._ids = state["ids"]
        self._next_id = int(state["next_id"])
        self._last_build = state["last_build"]
        self._x_sets = state["x_sets"]
        self.n_set_builds = int(state["n_set_builds"])
        self.seeds.restore(state["seed_source"])

    def reset(self) -> None:
        """Forget the structure followed so far: the next :meth:`update` builds the
        regions as a new tracker would, and the seed source re-seeds from its
        definition (:meth:`~mlmix.seeds.Seeds.reset`). Ids keep counting up."""
        self._ids = self._regions = self._last_build = self._x_sets = None
        self.seeds.reset()

    def _known(self, atoms: Atoms) -> np.ndarray | None:
        """``(N,)`` bool, the atoms followed at the last update (by ``mlmix_id``);
        None when the atoms are exactly those, in the same order (the common case)."""
        raw = atoms.arrays.get(ID_ARRAY)
        if self._ids is None or raw is None:
            return np.zeros(len(atoms), bool)
        if np.array_equal(raw, self._ids):
            return None
        return np.isin(raw, self._ids)

    def _is_new(self, known: np.ndarray | None) -> bool:
        return self._ids is not None and known is not None and not known.any()

    def is_new_structure(self, atoms: Atoms) -> bool:
        """True when ``atoms`` share no identity with the atoms of the last update, so
        that :meth:`update` starts afresh on them (see the class docstring). False
        before the first update."""
        return self._is_new(self._known(atoms))

    def is_rebuild_step(self, step: int) -> bool:
        """True when :meth:`update` at ``step`` rebuilds the regions by the schedule
        (see :meth:`rebuilds` for the structure-driven rebuilds too)."""
        if self._regions is None:
            return True
        return self.nevery > 0 and step % self.nevery == 0 and step != self._last_build

    def rebuilds(self, atoms: Atoms, step: int) -> bool:
        """True when :meth:`update` of ``atoms`` at ``step`` will rebuild the regions:
        the first call, a new structure, atoms added, or a rebuild step."""
        known = self._known(atoms)
        return (known is not None and not known.all()) or self.is_rebuild_step(step)

    def update(self, atoms: Atoms, step: int) -> Regions:
        """Regions for ``atoms`` at ``step``: rebuilt if due (or the atoms are new,
        see the class docstring), else carried by identity.

        Writes the ``mlmix_id`` array onto ``atoms`` where ids are missing.
        """
        if step < 0:
            raise ConfigurationError(f"step must be >= 0, got {step}")
        known = self._known(atoms)
        if self._is_new(known):
            self.reset()
        if known is None:  # the same atoms as at the last update
            ids = _followed(self._ids)
        else:
            ids, self._next_id = ensure_ids(atoms, self._next_id)
        # Atoms without a weight (added since the last update, or all of a new
        # structure) are placed by a rebuild.
        if self.is_rebuild_step(step) or (known is not None and not known.all()):
            seeds = self.seeds.select(atoms, ids, step, sample=True)
            self._regions = self._build(atoms, ids, seeds)
            self._last_build = step
            self._x_sets = atoms.positions.copy()
            self.n_set_builds += 1
        else:
            if known is not None:  # reordered or some atoms deleted
                self._regions = self._carry(ids)
                self._x_sets = values_by_id(_followed(self._ids), _followed(self._x_sets), ids,
                                            np.nan)[0]
            if self._moved_too_far(atoms.positions):
                self._rebuild_sets(atoms)
        self._ids = ids
        return _followed(self._regions)

    def _moved_too_far(self, positions: np.ndarray) -> bool:
        d = positions - _followed(self._x_sets)
        return bool(np.einsum("ij,ij->i", d, d).max() >= (0.5 * self.skin) ** 2)

    def _rebuild_sets(self, atoms: Atoms) -> None:
        r = _followed(self._regions)
        expensive, cheap = evaluation_sets(atoms.positions, atoms.cell.array, atoms.pbc,
                                           r.p, self.spec.r_buff + self.skin)
        self._regions = Regions(r.p, r.seeds, r.core, expensive, cheap)
        self._x_sets = atoms.positions.copy()
        self.n_set_builds += 1

    def _build(self, atoms: Atoms, ids: np.ndarray, seeds: np.ndarray) -> Regions:
        p_prev = fractions = None
        if self._regions is not None and self.hysteresis is not None:
            h = self.hysteresis
            step_time = h.timestep * self.nevery
            fractions = (
                min(step_time / h.tau_in, 1.0) if h.tau_in > 0 else 1.0,
                min(step_time / h.tau_out, 1.0) if h.tau_out > 0 else 1.0,
            )
            p_prev, known = values_by_id(_followed(self._ids), self._regions.p, ids, 0.0)
            if not known.all():
                # Atoms new to the simulation have no history: give them their target
                # weight at once rather than ramping from an arbitrary value.
                target = region_arrays(
                    atoms.positions, atoms.cell.array, atoms.pbc, seeds, self.spec
                ).p
                p_prev[~known] = target[~known]
        return region_arrays(atoms.positions, atoms.cell.array, atoms.pbc, seeds, self.spec,
                             p_prev, fractions, self.skin)

    def _carry(self, ids: np.ndarray) -> Regions:
        old = _followed(self._regions)
        stacked = np.column_stack(
            [old.p, old.seeds, old.core, old.expensive, old.cheap]
        ).astype(float)
        values, _ = values_by_id(_followed(self._ids), stacked, ids, np.nan)
        p, s, c, e, ch = values.T
        return Regions(p, s > 0.5, c > 0.5, e > 0.5, ch > 0.5)
