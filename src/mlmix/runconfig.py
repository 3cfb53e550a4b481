"""The `mlmix run` configuration: one TOML file, checked whole before anything runs.

(Over the house limit of ~500 lines: one checker per section, then the builders of the
checked config; the keys themselves are declared in :mod:`mlmix.schema`.)

Sections (lengths Å, times fs, temperatures K, forces eV/Å)::

    [structure]            builder = "bulk" | "vacancy" | "interstitial" |
                           "substitution" | "dislocation" | "file"
    [potentials.expensive] a potential table (mlmix.potentials.factory)
    [potentials.cheap]     the same for the cheap potential
    [regions]              r_core, r_blend, r_buff (default: the expensive receptive field;
                           "auto": the smallest that meets force_tolerance, measured by
                           mlmix.buffer), force_tolerance (eV/Å), blend, nevery, skin
    [regions.seeds]        kind = "defect" | "indices" | "species" | "classifier" |
                           "lammps_compute" (a LAMMPS per-atom compute, LAMMPS engine)
    [regions.hysteresis]   tau_in_fs, tau_out_fs
    [regions.force_check]  tolerance (eV/Å), fraction, nfreq, seed (MD, ASE engine)
    [mixing]               mode, n_levels, energy_correction, subtract_mean_force,
                           mask_cheap, allow_approximate
    [task]                 kind = "md" | "relax" | "neb" and its settings
    [output]               directory, trajectory_every, log_every, checkpoint_every,
                           progress, figures
    [engine]               kind = "ase" (default) | "lammps" (MD only: LAMMPS integrates
                           and computes the cheap potential, over MPI ranks when started
                           with ``mpirun -np P mlmix run CONFIG``)

``examples/run-*.toml`` show each task. :func:`parse_run_config` records every mistake
(unknown keys, wrong types, out-of-range values, missing files, settings that do not fit
together) and raises them in one :class:`~mlmix.errors.ConfigurationError`.
:func:`build_structure`, :func:`build_seeds` and :func:`build_tracker` turn a checked
config into the library's objects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms
from ase.data import atomic_numbers

from . import structures
from .buffer import DEFAULT_TOLERANCE
from .config import Problems
from .contacts import contact_problem
from .errors import ConfigurationError
from .mts import schedule_problem
from .potentials.base import Potential, default_r_buff
from .potentials.factory import check_potential_spec
from .potentials.files import resolve_potential_file
from .regions import Hysteresis, RegionSpec, RegionTracker
from .schema import RUN, choices, default, known_keys
from .seeds import (
    ClassifierSeeds,
    IndexSeeds,
    Quantity,
    SpeciesSeeds,
    centrosymmetry,
    coordination,
    masked,
    uncertainty,
)

BUILDERS = choices(RUN, "structure", "builder")
DEFECT_BUILDERS = {"vacancy", "interstitial", "substitution", "dislocation"}
TASKS = choices(RUN, "task", "kind")
ENSEMBLES = choices(RUN, "task", "ensemble")
OPTIMIZERS = choices(RUN, "task", "optimizer")
NEB_METHODS = choices(RUN, "task", "method")
THERMOSTAT_WEIGHTS = choices(RUN, "task", "thermostat_weights")
# classifier quantities and their parameters (with defaults; None = required)
QUANTITIES: dict[str, dict[str, float | None]] = {"coordination": {"r_cut": None},
              "centrosymmetry": {"r_cut": 3.6, "n_neighbours": 8},
              "uncertainty": {"file": None, "threshold": None}}
QUANTITY_KEYS = {key for params in QUANTITIES.values() for key in params}
# cheap potentials mlmix fit writes (an uncertainty file beside them)
FITTED = {("lammps", "snap"), ("lammps", "uf3"), ("ace", None)}
MAX_TIMESTEP_FS = 10.0
ENGINES = choices(RUN, "engine", "kind")

# Nearest and second-neighbour distances in units of the lattice parameter.
SHELLS = {"sc": (1.0, 2**0.5), "fcc": (0.5**0.5, 1.0), "bcc": (3**0.5 / 2, 1.0),
          "diamond": (3**0.5 / 4, 0.5**0.5)}

DEFAULT_NEVERY = {"md": 10, "relax": 0, "neb": 0}


@dataclass
class RunConfig:
    """A checked run configuration; tables with their defaults filled in.

    ``raw`` is the normalised file (potential paths made absolute), which a run
    directory keeps as its ``config.toml``.
    """

    structure: dict
    expensive: dict
    cheap: dict
    regions: dict
    seeds: dict
    hysteresis: dict | None
    mixing: dict
    task: dict
    output: dict
    engine: dict
    raw: dict
    built: Structure | None = None
    source: str = "run config"


# --------------------------------------------------------------------------- checks


def _int_list(p: Problems, table: Mapping, where: str, key: str, length: int | None = None,
              minimum: int | None = None):
    value = table.get(key)
    ok = isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not isinstance(value, list) or not ok or (length is not None and len(value) != length) \
            or not value:
        shape = f"{length} integers" if length else "a non-empty list of integers"
        p.add(f"{where}.{key}", f"must be {shape}, got {value!r}")
        return None
    if minimum is not None and min(value) < minimum:
        bad = [v for v in value if v < minimum]
        what = "atom indices count from 0 (negative indices are not accepted)" \
            if minimum == 0 else f"every entry must be >= {minimum}"
        p.add(f"{where}.{key}", f"{what}, got {bad}")
        return None
    return value


def _species_list(p: Problems, table: dict, where: str, key: str, what: str) -> list | None:
    """``table[key]`` as a list of element symbols (a single symbol is a list of one)."""
    value = table.get(key)
    if isinstance(value, str):
        table[key] = value = [value]
    if not (isinstance(value, list) and value
            and all(isinstance(v, str) and v in atomic_numbers for v in value)):
        p.add(f"{where}.{key}", f"must list {what}, e.g. ['W', 'He'], got {value!r}")
        return None
    return value


def _element(p: Problems, table: Mapping, where: str, key: str, required=True):
    value = table.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or value not in atomic_numbers:
        p.add(f"{where}.{key}", f"must be an element symbol such as 'W', got {value!r}")
        return None
    return value


def _absolute_files(spec: Mapping, base: Path, where: str, p: Problems) -> dict:
    """Potential file names made absolute when they are relative to the config."""
    spec = dict(spec)
    name = spec.get("file")
    if not isinstance(name, str):
        return spec
    local = base / name
    stem_files = [local.with_name(local.name + ext) for ext in (".snapcoeff", ".snapparam")]
    if local.is_file() or (spec.get("style") == "snap" and all(f.is_file() for f in stem_files)):
        spec["file"] = str(local.resolve())
        return spec
    try:
        if spec.get("style") == "snap" and not name.endswith((".snap", ".snapcoeff")):
            resolve_potential_file(name + ".snapcoeff")
        else:
            resolve_potential_file(name)
    except ConfigurationError as exc:
        p.add(f"{where}.file", f"{exc} (nor relative to the config, in {base})")
    return spec


def _structure(p: Problems, raw: Mapping, base: Path) -> dict:
    s = p.section(raw, "structure")
    if not s:
        return s
    builder = p.choice(s, "structure", "builder", BUILDERS)
    if builder in BUILDERS:  # with an unknown builder its keys cannot be judged
        p.unknown_keys(s, "structure", known_keys(RUN, "structure", builder))
    if builder in (BUILDERS - {"file", "dislocation"}):
        _element(p, s, "structure", "element")
        crystal = p.choice(s, "structure", "crystal", set(SHELLS))
        a = p.number(s, "structure", "a", minimum=0, strict=True)
        repeat = s.get("repeat")
        if isinstance(repeat, int) and not isinstance(repeat, bool):
            if repeat < 1:
                p.add("structure.repeat", f"must be >= 1, got {repeat}")
        elif _int_list(p, s, "structure", "repeat", 3) is not None and isinstance(repeat, list) \
                and min(repeat) < 1:
            p.add("structure.repeat", f"every entry must be >= 1, got {repeat}")
        if crystal and a:
            s.setdefault("bond", a * sum(SHELLS[crystal]) / 2)
    if builder == "vacancy" and "bond" in s:  # absent only when crystal or a is wrong
        p.number(s, "structure", "bond", minimum=0, strict=True)
    if builder in ("vacancy", "substitution") and "index" in s:
        p.number(s, "structure", "index", minimum=0, integer=True)
    if builder == "interstitial":
        s.setdefault("species", s.get("element"))
        _element(p, s, "structure", "species")
        crystal = s.get("crystal")
        if "position" in s:
            pos = s["position"]
            if not (isinstance(pos, list) and len(pos) == 3
                    and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                            and math.isfinite(x) for x in pos)):
                p.add("structure.position", f"must be [x, y, z] in Å (finite numbers), "
                      f"got {pos!r}")
        elif crystal in structures.INTERSTITIAL_SITES:
            sites = structures.INTERSTITIAL_SITES[crystal]
            s.setdefault("site", next(iter(sites)))
            p.choice(s, "structure", "site", set(sites))
        elif crystal:
            p.add("structure.position", f"required for crystal {crystal!r} (no named sites)")
    if builder == "substitution":
        _element(p, s, "structure", "species")
    if builder == "dislocation":
        _element(p, s, "structure", "element")
        for key in ("a", "C11", "C12", "C44", "radius"):
            p.number(s, "structure", key, minimum=0, strict=True)
        s.setdefault("n_burgers", 4)
        p.number(s, "structure", "n_burgers", minimum=1, integer=True)
        s.setdefault("fix_width", 6.0)
        fix = p.number(s, "structure", "fix_width", minimum=0, strict=True)
        radius = s.get("radius")
        if isinstance(fix, (int, float)) and isinstance(radius, (int, float)) and fix >= radius:
            p.add("structure.fix_width", f"({fix} Å) must be smaller than the radius "
                  f"({radius} Å): the fixed shell is the outer part of the cylinder")
    if builder == "file":
        path = s.get("path")
        if not isinstance(path, str):
            p.add("structure.path", f"must be a file name, got {path!r}")
        elif not (base / path).is_file():
            p.add("structure.path", f"file {path!r} not found (relative to {base})")
        else:
            s["path"] = str((base / path).resolve())
        if "species" in s:
            _species_list(p, s, "structure", "species", "the element of each LAMMPS atom type")
        if "pbc" in s:
            pbc = s["pbc"]
            if not (isinstance(pbc, bool) or (isinstance(pbc, list) and len(pbc) == 3
                                              and all(isinstance(v, bool) for v in pbc))):
                p.add("structure.pbc", f"must be true, false or three of them, got {pbc!r}")
    if "min_distance" in s:
        p.number(s, "structure", "min_distance", minimum=0)
    return s


def _seeds(p: Problems, regions: Mapping, builder: str | None) -> dict:
    where = "regions.seeds"
    seeds = p.section(regions, "seeds", required=builder not in DEFECT_BUILDERS)
    if not seeds and builder in DEFECT_BUILDERS:
        seeds = {"kind": "defect"}
    if not seeds:
        return seeds
    kind = p.choice(seeds, where, "kind", choices(RUN, where, "kind"))
    p.unknown_keys(seeds, where, known_keys(RUN, where, kind) if kind else {"kind"})
    if kind == "defect" and builder not in DEFECT_BUILDERS:
        p.add(f"{where}.kind", f"'defect' needs a structure builder in "
              f"{sorted(DEFECT_BUILDERS)} (it has {builder!r}); give indices, species "
              "or a classifier")
    if kind == "indices":
        _int_list(p, seeds, where, "indices", minimum=0)
    if kind == "species":
        _species_list(p, seeds, where, "species", "element symbols")
    if kind == "lammps_compute":
        compute = seeds.get("compute")
        if not (isinstance(compute, str) and compute.endswith("/atom")):
            p.add(f"{where}.compute", "must name a per-atom LAMMPS compute style such as "
                  f"'coord/atom', 'cna/atom' or 'centro/atom', got {compute!r}")
        seeds.setdefault("args", "")
        if not isinstance(seeds["args"], str):
            p.add(f"{where}.args", f"must be the compute's arguments as one string, e.g. "
                  f"'cutoff 2.9' or 'bcc', got {seeds['args']!r}")
    quantity = p.choice(seeds, where, "quantity", set(QUANTITIES)) if kind == "classifier" \
        else None
    if kind in ("classifier", "lammps_compute"):
        _averaged_seeds(p, seeds, where, regions.get("nevery"),
                        bounds=quantity != "uncertainty")
    if kind == "classifier":
        params = QUANTITIES.get(quantity, {}) if quantity is not None else {}
        for key in sorted((QUANTITY_KEYS - set(params)) & set(seeds)) if quantity else ():
            p.add(f"{where}.{key}", f"is not a parameter of quantity {quantity!r}")
        for key, default in params.items():
            if default is not None:
                seeds.setdefault(key, default)
        if "r_cut" in params:
            p.number(seeds, where, "r_cut", minimum=0, strict=True)
        if "n_neighbours" in params:
            n = p.number(seeds, where, "n_neighbours", minimum=2, integer=True)
            if isinstance(n, int) and (n % 2 or n > 12):
                p.add(f"{where}.n_neighbours", f"must be even and at most 12 (8 for bcc, "
                      f"12 for fcc), got {n}")
    return seeds


def _averaged_seeds(p: Problems, seeds: dict, where: str, nevery, bounds: bool = True) -> None:
    """Bounds and schedule of a time-averaged classifier (mlmix.seeds.ClassifierSeeds).

    ``nfreq`` defaults to the rebuild period ``regions.nevery`` (a query at every
    rebuild), so a minimal classifier table fits any schedule. Without ``bounds`` (the
    uncertainty classifier, whose bound is its threshold) lb and ub are refused.
    """
    if not bounds:
        for key in ("lb", "ub"):
            if key in seeds:
                p.add(f"{where}.{key}", "the uncertainty classifier takes a threshold "
                      "(seeds: grade >= threshold), not lb/ub; write threshold = ...")
    else:
        values = [p.number(seeds, where, key) if key in seeds else None for key in ("lb", "ub")]
        if not ("lb" in seeds or "ub" in seeds):
            p.add(where, "a classifier needs lb and/or ub (seeds: lb <= q <= ub)")
        lb, ub = values
        if lb is not None and ub is not None and lb > ub:
            p.add(f"{where}.lb", f"({lb}) must not exceed {where}.ub ({ub}): "
                  "no atom could be a seed")
    _period(p, seeds, where, nevery)
    seeds.setdefault("window", 1)
    p.number(seeds, where, "window", minimum=1, integer=True)
    if "initial" in seeds:
        _int_list(p, seeds, where, "initial", minimum=0)


def _period(p: Problems, table: dict, where: str, nevery) -> None:
    """``nfreq``, steps between queries: default the rebuild period ``regions.nevery``
    (so a minimal table fits any schedule), and a multiple of it."""
    good_nevery = isinstance(nevery, int) and not isinstance(nevery, bool) and nevery > 0
    table.setdefault("nfreq", nevery if good_nevery else 1)
    nfreq = p.number(table, where, "nfreq", minimum=1, integer=True)
    if good_nevery and isinstance(nfreq, int) and nfreq % nevery:
        p.add(f"{where}.nfreq", f"({nfreq}) must be a multiple of regions.nevery ({nevery})")


def cheap_model_file(spec: Mapping) -> Path | None:
    """The potential file of a cheap potential ``mlmix fit`` can have written (the
    ``.snapcoeff`` of a SNAP, the ``.uf3``, the ``.yace``), or None for other kinds."""
    kind = (spec.get("backend"), spec.get("style") if spec.get("backend") == "lammps" else None)
    name = spec.get("file")
    if kind not in FITTED or not isinstance(name, str):
        return None
    if kind == ("lammps", "snap") and not name.endswith((".snap", ".snapcoeff")):
        name += ".snapcoeff"
    return Path(name)


def _uncertainty_seeds(p: Problems, seeds: dict, cheap: Mapping | None, base: Path) -> None:
    """The uncertainty classifier's file (loaded, matched to the cheap potential) and
    threshold: checked here, before any work."""
    from .fitting.uncertainty import Uncertainty, file_beside

    where = "regions.seeds"
    if "threshold" in seeds:
        p.number(seeds, where, "threshold", minimum=0, strict=True)
    if not cheap:
        return
    potential = cheap_model_file(cheap)
    if potential is None:
        what = cheap.get("style") or cheap.get("backend")
        p.add(f"{where}.quantity", f"'uncertainty' grades a cheap potential fitted by "
              f"`mlmix fit` (a SNAP, UF3 or linear ACE with the uncertainty file it writes), "
              f"but potentials.cheap is {what!r}; fit a cheap model with `mlmix fit`, or "
              "use quantity = 'coordination' or 'centrosymmetry'")
        return
    if "file" in seeds and not isinstance(seeds["file"], str):
        p.add(f"{where}.file", f"must be a path, got {seeds['file']!r}")
        return
    path = base / seeds["file"] if "file" in seeds else file_beside(potential)
    try:
        unc = Uncertainty.load(path)
        if potential.is_file():
            unc.check_potential(potential, f"{where}.file")
    except ConfigurationError as exc:
        p.add(f"{where}.file", str(exc))
        return
    seeds["file"] = str(path.resolve())
    seeds.setdefault("threshold", unc.threshold)


def _regions(p: Problems, raw: Mapping, task_kind: str | None) -> tuple[dict, dict | None]:
    r = p.section(raw, "regions")
    p.unknown_keys(r, "regions", known_keys(RUN, "regions"))
    p.number(r, "regions", "r_core", minimum=0)
    r.setdefault("r_blend", default(RUN, "regions", "r_blend"))
    p.number(r, "regions", "r_blend", minimum=0)
    if r.get("r_buff") != "auto" and "r_buff" in r:
        p.number(r, "regions", "r_buff", minimum=0)
    if "force_tolerance" in r or r.get("r_buff") == "auto":
        # eV/Å: what r_buff = "auto" (and `mlmix buffer`) accept on weighted atoms
        r.setdefault("force_tolerance", DEFAULT_TOLERANCE)
        p.number(r, "regions", "force_tolerance", minimum=0, strict=True)
    r.setdefault("blend", default(RUN, "regions", "blend"))
    p.choice(r, "regions", "blend", choices(RUN, "regions", "blend"))
    r.setdefault("nevery", DEFAULT_NEVERY.get(task_kind, 10) if task_kind else 10)
    nevery = p.number(r, "regions", "nevery", minimum=0, integer=True)
    r.setdefault("skin", default(RUN, "regions", "skin"))
    p.number(r, "regions", "skin", minimum=0)
    hyst = None
    if "hysteresis" in r:
        hyst = p.section(r, "hysteresis")
        p.unknown_keys(hyst, "regions.hysteresis", known_keys(RUN, "regions.hysteresis"))
        for key in ("tau_in_fs", "tau_out_fs"):  # 0 fs (the default): no delay that way
            hyst.setdefault(key, default(RUN, "regions.hysteresis", key))
            p.number(hyst, "regions.hysteresis", key, minimum=0)
        if nevery == 0:
            p.add("regions.hysteresis", "needs regions that are rebuilt: set nevery > 0")
        if task_kind != "md":
            p.add("regions.hysteresis", "is for MD (it is measured in time)")
    if "force_check" in r:
        _force_check(p, r, nevery, task_kind)
    return r, hyst


def _force_check(p: Problems, r: dict, nevery, task_kind: str | None) -> None:
    """``[regions.force_check]`` (:class:`mlmix.force_check.ForceCheckSeeds`)."""
    where = "regions.force_check"
    fc = r["force_check"] = p.section(r, "force_check")
    p.unknown_keys(fc, where, known_keys(RUN, where))
    if "tolerance" not in fc:
        p.add(f"{where}.tolerance", "missing: the force error (eV/Å) above which a "
              "checked atom becomes a seed, e.g. 0.1")
    else:
        p.number(fc, where, "tolerance", minimum=0, strict=True)
    fc.setdefault("fraction", default(RUN, where, "fraction"))
    fraction = p.number(fc, where, "fraction", minimum=0, strict=True)
    if isinstance(fraction, (int, float)) and fraction > 1:
        p.add(f"{where}.fraction", f"must be in (0, 1] (a share of the cheap atoms), got "
              f"{fraction}")
    _period(p, fc, where, nevery)
    fc.setdefault("seed", default(RUN, where, "seed"))
    p.number(fc, where, "seed", minimum=0, integer=True)
    if task_kind not in (None, "md") or nevery == 0:
        p.add(where, "checks moving regions during MD: it needs task.kind = 'md' and "
              "regions.nevery > 0")


def _multiple_time_step(p: Problems, task: dict, regions: dict, mixing: dict) -> None:
    """task.correction_every against the rebuild period and mask_cheap (mlmix.mts)."""
    k = task.get("correction_every", 1)
    if not isinstance(k, int) or isinstance(k, bool) or k <= 1:
        return
    nevery = regions.get("nevery")
    if isinstance(nevery, int) and not isinstance(nevery, bool):
        problem = schedule_problem(k, nevery, "task.correction_every")
        if problem:
            p.add("regions.nevery", problem)
    if mixing.get("mask_cheap") is True:
        p.add("mixing.mask_cheap", f"must be false with task.correction_every = {k} (the "
              "cheap force acts on every atom at every step)")


NPT_KEYS = ("taut_fs", "taup_fs", "compressibility_per_GPa", "pressure_GPa")


def _barostat(p: Problems, t: dict, ensemble, dt, temp) -> None:
    """The NPT keys of an MD task (Berendsen; defaults from the time step)."""
    if ensemble != "npt":
        for key in NPT_KEYS:
            if key in t:
                p.add(f"task.{key}", "only for ensemble = 'npt'")
        return
    if temp == 0:
        p.add("task.temperature_K", "NPT needs a target temperature > 0 K")
    step = dt if isinstance(dt, (int, float)) and dt > 0 else 1.0
    t.setdefault("taut_fs", 100 * step)
    t.setdefault("taup_fs", 1000 * step)
    t.setdefault("compressibility_per_GPa", 0.01)
    t.setdefault("pressure_GPa", 0.0)
    for key in ("taut_fs", "taup_fs", "compressibility_per_GPa"):
        p.number(t, "task", key, minimum=0, strict=True)
    p.number(t, "task", "pressure_GPa")


def _mixing(p: Problems, raw: Mapping, task: Mapping) -> dict:
    """[mixing]: the mode, its options and the flags, checked against the task."""
    mixing = p.section(raw, "mixing", required=False)
    p.unknown_keys(mixing, "mixing", known_keys(RUN, "mixing"))
    mode = p.choice(mixing, "mixing", "mode", choices(RUN, "mixing", "mode"),
                    mixing.setdefault("mode", default(RUN, "mixing", "mode")))
    mixing.setdefault("n_levels", default(RUN, "mixing", "n_levels"))
    p.number(mixing, "mixing", "n_levels", minimum=0, integer=True)
    for key in sorted(known_keys(RUN, "mixing") - {"mode", "n_levels"}):
        mixing[key] = p.flag(mixing, "mixing", key, default(RUN, "mixing", key))
    stress = ("task.ensemble = 'npt'" if task.get("ensemble") == "npt" else
              "task.cell = true" if task.get("kind") == "relax" and task.get("cell") else None)
    if stress and mode == "force":
        p.add("mixing.mode", f"{stress} needs a stress, which force mixing does not "
              "define (the mixed forces have no energy): set mode = 'energy'")
    if mode == "energy":
        for key in ("subtract_mean_force", "mask_cheap"):
            if mixing.get(key):
                p.add(f"mixing.{key}", "must be false with mode = 'energy' (the forces are "
                      "one gradient, and each potential evaluates only its weighted atoms)")
        k = task.get("correction_every", 1)
        if isinstance(k, int) and k > 1:
            p.add("task.correction_every", "must be 1 with mixing.mode = 'energy' (multiple "
                  "time stepping mixes forces)")
    return mixing


def _task(p: Problems, raw: Mapping, builder: str | None) -> dict:
    t = p.section(raw, "task")
    kind = p.choice(t, "task", "kind", TASKS)
    if kind == "md":
        p.unknown_keys(t, "task", known_keys(RUN, "task", kind))
        ensemble = p.choice(t, "task", "ensemble", ENSEMBLES, default(RUN, "task", "ensemble"))
        t.setdefault("timestep_fs", default(RUN, "task", "timestep_fs"))
        dt = p.number(t, "task", "timestep_fs", minimum=0, strict=True)
        if dt is not None and dt > MAX_TIMESTEP_FS:
            p.add("task.timestep_fs", f"{dt} fs is too long for atomistic MD "
                  f"(at most {MAX_TIMESTEP_FS} fs; 1-2 fs is usual)")
        p.number(t, "task", "steps", minimum=1, integer=True)
        t.setdefault("temperature_K", default(RUN, "task", "temperature_K"))
        temp = p.number(t, "task", "temperature_K", minimum=0)
        if ensemble == "nvt":
            if temp == 0:
                p.add("task.temperature_K", "NVT needs a target temperature > 0 K")
            t.setdefault("friction_per_fs", default(RUN, "task", "friction_per_fs"))
            p.number(t, "task", "friction_per_fs", minimum=0, strict=True)
            t.setdefault("thermostat_weights", default(RUN, "task", "thermostat_weights"))
            p.choice(t, "task", "thermostat_weights", THERMOSTAT_WEIGHTS)
        else:
            for key in ("friction_per_fs", "thermostat_weights"):
                if key in t:
                    p.add(f"task.{key}", "only for ensemble = 'nvt'")
        _barostat(p, t, ensemble, dt, temp)
        t.setdefault("seed", default(RUN, "task", "seed"))
        p.number(t, "task", "seed", minimum=0, integer=True)
        t.setdefault("correction_every", default(RUN, "task", "correction_every"))
        p.number(t, "task", "correction_every", minimum=1, integer=True)
    elif kind == "relax":
        p.unknown_keys(t, "task", known_keys(RUN, "task", kind))
        t.setdefault("fmax", default(RUN, "task", "fmax"))
        p.number(t, "task", "fmax", minimum=0, strict=True)
        t.setdefault("max_steps", 1000)
        p.number(t, "task", "max_steps", minimum=1, integer=True)
        p.choice(t, "task", "optimizer", OPTIMIZERS, t.setdefault("optimizer", default(RUN, "task", "optimizer")))
        t["expensive_energy"] = p.flag(t, "task", "expensive_energy", default(RUN, "task", "expensive_energy"))
        t["cell"] = p.flag(t, "task", "cell", default(RUN, "task", "cell"))
        if "pressure_GPa" in t and not t["cell"]:
            p.add("task.pressure_GPa", "only with task.cell = true (a cell relaxation)")
        if t["cell"]:
            t.setdefault("pressure_GPa", 0.0)
            p.number(t, "task", "pressure_GPa")
    elif kind == "neb":
        p.unknown_keys(t, "task", known_keys(RUN, "task", kind))
        t.setdefault("images", default(RUN, "task", "images"))
        p.number(t, "task", "images", minimum=1, integer=True)
        t.setdefault("fmax", default(RUN, "task", "fmax"))
        p.number(t, "task", "fmax", minimum=0, strict=True)
        t.setdefault("max_steps", 2000)
        p.number(t, "task", "max_steps", minimum=1, integer=True)
        t["climb"] = p.flag(t, "task", "climb", default(RUN, "task", "climb"))
        p.choice(t, "task", "method", NEB_METHODS, t.setdefault("method", default(RUN, "task", "method")))
        if ("hop" in t) == ("final" in t):
            p.add("task", "an NEB needs exactly one of hop (for a vacancy: the index of the "
                  "seed neighbour that jumps, 0 = the first) or final (a structure file)")
        if "hop" in t:
            p.number(t, "task", "hop", minimum=0, integer=True)
            if builder != "vacancy":
                p.add("task.hop", f"needs structure.builder = 'vacancy', not {builder!r}")
        if "final" in t and not isinstance(t["final"], str):
            p.add("task.final", f"must be a structure file name, got {t['final']!r}")
    return t


def _output(p: Problems, raw: Mapping, source_stem: str) -> dict:
    o = p.section(raw, "output", required=False)
    p.unknown_keys(o, "output", known_keys(RUN, "output"))
    o.setdefault("directory", f"{source_stem}-run")
    if not isinstance(o["directory"], str) or not o["directory"]:
        p.add("output.directory", f"must be a folder name, got {o['directory']!r}")
    for key in ("trajectory_every", "log_every", "checkpoint_every"):
        o.setdefault(key, default(RUN, "output", key))
        p.number(o, "output", key, minimum=0, integer=True)
    o.setdefault("progress", default(RUN, "output", "progress"))
    if o["progress"] not in (True, False, "auto"):
        p.add("output.progress", f"must be true, false or 'auto', got {o['progress']!r}")
    o["figures"] = p.flag(o, "output", "figures", default(RUN, "output", "figures"))
    return o


def _engine(p: Problems, raw: Mapping, cfg: Mapping) -> dict:
    """``[engine]``; the LAMMPS engine runs MD with a LAMMPS cheap pair style only."""
    e = p.section(raw, "engine", required=False)
    p.unknown_keys(e, "engine", known_keys(RUN, "engine"))
    kind = p.choice(e, "engine", "kind", ENGINES, e.setdefault("kind", default(RUN, "engine", "kind")))
    if kind == "lammps" and "force_check" in cfg["regions"]:
        p.add("regions.force_check", "runs on the ASE engine only (the LAMMPS engine's "
              "expensive potential is shared by its ranks); use engine.kind = 'ase'")
    if kind != "lammps":
        if cfg["seeds"].get("kind") == "lammps_compute":
            p.add("regions.seeds.kind", "'lammps_compute' needs engine.kind = 'lammps'; with "
                  "the ASE engine use kind = 'classifier'")
        return e
    task, cheap, mixing = cfg["task"].get("kind"), cfg["cheap"], cfg["mixing"]
    if task not in (None, "md"):
        p.add("engine.kind", f"the LAMMPS engine runs MD; a {task} runs with kind = 'ase'")
    if cheap and cheap.get("backend") != "lammps":
        p.add("engine.kind", "the LAMMPS engine computes the cheap potential as a LAMMPS "
              f"pair style: potentials.cheap.backend must be 'lammps', not "
              f"{cheap.get('backend')!r}")
    for key in ("subtract_mean_force", "mask_cheap"):
        if mixing.get(key):
            p.add(f"mixing.{key}", "is not available with the LAMMPS engine (it always "
                  "evaluates the cheap potential on every atom); use kind = 'ase'")
    if mixing.get("mode") == "energy":
        p.add("mixing.mode", "'energy' runs on the ASE engine only (the LAMMPS engine mixes "
              "forces inside LAMMPS); use engine.kind = 'ase'")
    return e


def parse_run_config(raw: Mapping, base: Path = Path("."), source: str = "run config",
                     ) -> RunConfig:
    """Check a whole run config; raise every mistake in one ConfigurationError.

    Args:
        raw: the parsed TOML.
        base: folder relative paths in the file are relative to (the config's folder).
        source: name used in messages (the file name).
    """
    p = Problems(source)
    p.unknown_keys(raw, "top level", known_keys(RUN, ""))
    structure = _structure(p, raw, base)
    structure_ok = p.count("structure") == 0
    builder = structure.get("builder")
    pots = p.section(raw, "potentials")
    p.unknown_keys(pots, "potentials", known_keys(RUN, "potentials"))
    specs = {}
    for role in ("expensive", "cheap"):
        spec = pots.get(role)
        where = f"potentials.{role}"
        if spec is None:
            p.add(where, "missing table")
            continue
        if isinstance(spec, Mapping) and isinstance(spec.get("species"), str):
            spec = {**spec, "species": [spec["species"]]}  # "Si" is ["Si"], not ['S', 'i']
        check_potential_spec(spec, where, p)
        specs[role] = _absolute_files(spec, base, where, p) if isinstance(spec, Mapping) else {}
    task = _task(p, raw, builder)
    regions, hyst = _regions(p, raw, task.get("kind"))
    seeds = _seeds(p, regions, builder)
    if seeds.get("quantity") == "uncertainty":
        _uncertainty_seeds(p, seeds, specs.get("cheap"), base)
    if task.get("kind") in ("relax", "neb") and regions.get("nevery"):
        p.add("regions.nevery", f"must be 0 for {task['kind']} (regions built once: an "
              "optimiser must not chase moving regions)")
    mixing = _mixing(p, raw, task)
    _multiple_time_step(p, task, regions, mixing)
    output = _output(p, raw, Path(source).stem)
    engine = _engine(p, raw, {"task": task, "cheap": specs.get("cheap", {}), "seeds": seeds,
                              "mixing": mixing, "regions": regions})
    built = None
    if structure_ok and structure:
        try:
            built = build_structure(structure)
        except ConfigurationError as exc:  # its message starts with the key at fault
            p.messages.append(str(exc))
        else:
            _check_structure(p, built, structure, seeds, specs, task)
    p.raise_if_any()
    normalised = {
        "structure": structure, "potentials": specs,
        "regions": {**{k: v for k, v in regions.items() if k not in ("seeds", "hysteresis")},
                    "seeds": seeds, **({"hysteresis": hyst} if hyst else {})},
        "mixing": mixing, "task": task, "output": output, "engine": engine,
    }
    return RunConfig(structure, specs["expensive"], specs["cheap"], regions, seeds, hyst,
                     mixing, task, output, engine, normalised, built, source)


def _check_structure(p: Problems, built: Structure, s: Mapping, seeds: Mapping, specs: Mapping,
                     task: Mapping) -> None:
    """What can be said of the built structure before any potential is loaded."""
    atoms = built.atoms
    n = len(atoms)
    if n == 0:
        p.add("structure", "the structure has no atoms" + (
            f" ({s['path']} holds none)" if s.get("builder") == "file" else ""))
        return
    contact = contact_problem(atoms, s.get("min_distance"), "structure.min_distance")
    if contact:
        p.add("structure", contact)
    if (task.get("ensemble") == "npt" or task.get("cell")) and not atoms.pbc.all():
        p.add("task.ensemble" if task.get("ensemble") == "npt" else "task.cell",
              f"needs a structure periodic in all three directions (its pbc is "
              f"{atoms.pbc.tolist()}): the stress of a cell")
    present = set(atoms.get_chemical_symbols())
    kind = seeds.get("kind")
    for key in ("indices", "initial"):
        indices = seeds.get(key) if key in seeds else None
        if isinstance(indices, list) and indices and max(indices) >= n:
            bad = [i for i in indices if i >= n]
            p.add(f"regions.seeds.{key}", f"{bad[:5]} out of range: the structure has {n} "
                  f"atoms (indices 0..{n - 1})")
    if kind == "defect" and built.defect_seeds is not None and not len(built.defect_seeds):
        p.add("regions.seeds.kind", "'defect': the builder found no atom next to the defect "
              "(check structure.bond); give indices instead")
    if kind == "species" and isinstance(seeds.get("species"), list):
        missing = sorted(set(seeds["species"]) - present)
        if missing:
            p.add("regions.seeds.species", f"{missing} not in the structure (it holds "
                  f"{sorted(present)}); list a species that is present")
    for role, spec in specs.items():
        species = spec.get("species")
        if isinstance(species, list) and spec.get("backend") == "lammps" \
                and all(isinstance(v, str) and v in atomic_numbers for v in species):
            lacking = sorted(present - set(species))
            if lacking and role == "expensive":
                p.add(f"potentials.{role}.species", f"{species} does not cover {lacking} in "
                      "the structure: every atom may become expensive, so the expensive "
                      "potential must describe every species")
            elif lacking:
                check_undescribed(p, built, seeds, lacking)
    if task.get("kind") == "neb" and "hop" in task and built.defect_seeds is not None \
            and isinstance(task["hop"], int) and task["hop"] >= len(built.defect_seeds):
        p.add("task.hop", f"{task['hop']} is out of range: the vacancy has "
              f"{len(built.defect_seeds)} neighbours (0..{len(built.defect_seeds) - 1})")


def check_undescribed(p: Problems, built: Structure, seeds: Mapping, lacking: list) -> None:
    """Atoms of species the cheap potential lacks must be seeds for the whole run."""
    atoms, kind = built.atoms, seeds.get("kind")
    need = np.flatnonzero(np.isin(atoms.get_chemical_symbols(), lacking))
    if kind == "species" and set(lacking) <= set(seeds.get("species") or []):
        return
    if kind in ("defect", "indices"):
        chosen = built.defect_seeds if kind == "defect" else seeds.get("indices")
        if chosen is not None and set(need.tolist()) <= set(np.asarray(chosen).tolist()):
            return
    p.add("potentials.cheap.species", f"{lacking} (e.g. atom {need[0]}) are not described by "
          f"the cheap potential, so they must stay expensive all run: add them as seeds "
          f"([regions.seeds] kind = 'species', species = {lacking})")


# --------------------------------------------------------------------------- builders


@dataclass
class Structure:
    """A built structure and what the builder knows about it.

    Attributes:
        atoms: the structure.
        defect_seeds: ``(k,)`` indices of the atoms next to or at the defect (None
            for defect-free builders).
        vacancy_site: Å, ``(3,)`` where the removed atom was (vacancy builder only).
    """

    atoms: Atoms
    defect_seeds: np.ndarray | None = None
    vacancy_site: np.ndarray | None = None


def build_structure(s: Mapping) -> Structure:
    """The structure a checked ``[structure]`` table describes."""
    builder = s["builder"]
    if builder == "file":
        return Structure(_read_structure(s))
    if builder == "dislocation":
        atoms, fixed = structures.bcc_screw_dislocation(
            s["element"], s["a"], s["C11"], s["C12"], s["C44"], s["radius"],
            n_burgers=s["n_burgers"], fix_width=s["fix_width"])
        atoms.set_constraint(FixAtoms(mask=fixed))
        return Structure(atoms, structures.near_dislocation_line(atoms))
    atoms = structures.cubic_supercell(s["element"], s["crystal"], s["a"], s["repeat"])
    index = s.get("index", structures.central_atom(atoms))
    if index >= len(atoms):
        raise ConfigurationError(
            f"structure.index: {index} is out of range: the cell has {len(atoms)} atoms "
            f"(0..{len(atoms) - 1})")
    if builder == "vacancy":
        site = atoms.positions[index].copy()
        atoms, neighbours = structures.remove_atom(atoms, index, s["bond"])
        return Structure(atoms, neighbours, site)
    if builder == "interstitial":
        position = s.get("position") or structures.interstitial_position(
            atoms, s["crystal"], s["a"], s["site"])
        atoms, added = structures.add_interstitial(atoms, s["species"], list(position))
        return Structure(atoms, np.array([added]))
    if builder == "substitution":
        atoms[index].symbol = s["species"]
        return Structure(atoms, np.array([index]))
    return Structure(atoms)


def _read_structure(s: Mapping) -> Atoms:
    from ase.io import read

    kwargs: dict[str, Any] = {}
    fmt = s.get("format")
    if fmt is None and s["path"].endswith((".lmpdata", ".data")):
        fmt = "lammps-data"
    if fmt == "lammps-data":
        kwargs = {"atom_style": "atomic", "units": "metal"}
        if "species" in s:
            kwargs["Z_of_type"] = {i + 1: atomic_numbers[e] for i, e in enumerate(s["species"])}
    try:
        atoms = read(s["path"], format=fmt, index=-1, **kwargs)
        if not isinstance(atoms, Atoms):
            raise ValueError("no structure in the file")
    except Exception as exc:  # ASE raises many kinds for unreadable files
        raise ConfigurationError(f"structure.path: cannot read {s['path']}: {exc}") from None
    if fmt == "lammps-data" and "species" not in s:
        raise ConfigurationError(
            "structure.species: a LAMMPS data file has atom types, not elements; list the "
            "element of each type, e.g. species = ['W', 'He']")
    has_cell = abs(atoms.cell.volume) > 0 or atoms.cell.array.any()
    if "pbc" in s:
        pbc = np.broadcast_to(np.asarray(s["pbc"], bool), (3,))
        if pbc.any() and not has_cell:
            raise ConfigurationError(
                f"structure.pbc: {s['path']} gives no cell (no Lattice), so it cannot be "
                "periodic; add a Lattice to the file or set pbc = false")
        atoms.pbc = pbc
    elif not atoms.pbc.any():
        raise ConfigurationError(
            f"structure.path: {s['path']} has no periodic cell (an extended-XYZ file "
            "without Lattice, or pbc = 'F F F'), so it would run as an isolated cluster in "
            "vacuum; set structure.pbc = false if that is meant, or add the Lattice")
    return atoms


def build_seeds(seeds: Mapping, structure: Structure):
    """The seed source a checked ``[regions.seeds]`` table describes: a
    :class:`~mlmix.seeds.Seeds`, or for ``lammps_compute`` a
    :class:`~mlmix.engines.lammps.LammpsClassifier` (LAMMPS engine only)."""
    kind = seeds["kind"]
    if kind == "defect":
        if structure.defect_seeds is None:  # pragma: no cover - checked with the config
            raise ConfigurationError("regions.seeds.kind = 'defect' needs a defect builder")
        return IndexSeeds(structure.defect_seeds)
    if kind == "indices":
        return IndexSeeds(seeds["indices"])
    if kind == "species":
        return SpeciesSeeds(seeds["species"])
    if kind == "lammps_compute":
        from .engines.lammps.classifier import LammpsClassifier

        return LammpsClassifier(seeds["compute"], seeds["args"], seeds.get("lb", -np.inf),
                                seeds.get("ub", np.inf), seeds["nfreq"], seeds["window"],
                                seeds.get("initial", structure.defect_seeds))
    quantity: Quantity
    if seeds["quantity"] == "coordination":
        quantity = coordination(seeds["r_cut"])
    elif seeds["quantity"] == "centrosymmetry":
        quantity = centrosymmetry(seeds["n_neighbours"], seeds["r_cut"])
    else:
        quantity = uncertainty(seeds["file"])
    fixed = structures.fixed_mask(structure.atoms)
    if fixed.any():  # a fixed shell's free surface is not a defect
        quantity = masked(quantity, fixed)
    initial = seeds.get("initial", structure.defect_seeds)
    lb = seeds["threshold"] if seeds["quantity"] == "uncertainty" else seeds.get("lb", -np.inf)
    return ClassifierSeeds(quantity, lb, seeds.get("ub", np.inf),
                           nfreq=seeds["nfreq"], window=seeds["window"], initial=initial)


def build_spec(cfg: RunConfig, expensive: Potential) -> RegionSpec:
    """The region radii of a checked config; r_buff defaults, as does an ``"auto"`` not
    chosen yet (:func:`mlmix.run.choose_buffer`), to the exact buffer of the expensive
    potential (:func:`~mlmix.potentials.base.default_r_buff`)."""
    r = cfg.regions
    r_buff = r.get("r_buff", "auto")
    return RegionSpec(r["r_core"], r["r_blend"],
                      default_r_buff(expensive) if r_buff == "auto" else r_buff, r["blend"])


def build_hysteresis(cfg: RunConfig) -> Hysteresis | None:
    """The weights' time hysteresis of a checked config (None without one)."""
    if not cfg.hysteresis:
        return None
    return Hysteresis(cfg.hysteresis.get("tau_in_fs", 0.0),
                      cfg.hysteresis.get("tau_out_fs", 0.0), cfg.task["timestep_fs"])


def build_tracker(cfg: RunConfig, structure: Structure, expensive: Potential,
                  cheap: Potential | None = None) -> RegionTracker:
    """The region tracker of a checked config (the ASE engine); ``cheap`` is needed
    for a ``[regions.force_check]``."""
    r = cfg.regions
    seeds = build_seeds(cfg.seeds, structure)
    if "force_check" in r:
        from .force_check import ForceCheckSeeds

        if cheap is None:  # pragma: no cover - the engines pass it
            raise ConfigurationError("regions.force_check needs the cheap potential")
        fc = r["force_check"]
        seeds = ForceCheckSeeds(seeds, expensive, cheap, fc["tolerance"], fc["fraction"],
                                fc["nfreq"], fc["seed"])
    return RegionTracker(build_spec(cfg, expensive), seeds,
                         nevery=r["nevery"], hysteresis=build_hysteresis(cfg), skin=r["skin"])
