"""`mlmix run CONFIG.toml`: a mixed simulation described in one file.

The flow: check the whole config (:mod:`mlmix.runconfig`) -> build the structure, the
two potentials, the region tracker and the mixed calculator -> evaluate the first
forces (every remaining input error surfaces here, before a file is written) -> run
the task (MD, relaxation, NEB) writing its outputs into the run directory:

    RUN_DIR/config.toml        the checked config, with defaults and absolute paths
    RUN_DIR/trajectory.extxyz  frames with p, evaluation flags, ids, momenta, forces
    RUN_DIR/thermo.log         MD: step, time, T, region counts, wall time, drift
    RUN_DIR/relax.log          relaxation: iteration, max force, counts, wall time
    RUN_DIR/checkpoint.npz     MD: the whole state, every checkpoint_every steps
    RUN_DIR/summary.json       what happened, in numbers
    RUN_DIR/regions.png, thermo.png, neb.png   figures

An MD run killed at any point resumes with ``mlmix run CONFIG --resume`` from its last
checkpoint and continues the trajectory the uninterrupted run would have produced
(the output files are cut back to the checkpoint first). Raising ``task.steps`` and
resuming extends a finished run.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units

from . import __version__
from .checkpoint import atoms_from_state, atoms_state, load_checkpoint, save_checkpoint
from .config import dump_toml, load_toml
from .errors import CalculationError, ConfigurationError
from .mixing import MixedCalculator
from .outputs import (
    LOG_COLUMNS,
    THERMO_NOTE,
    DriftEstimate,
    TableLog,
    TrajectoryWriter,
    progress_bar,
    temperature_K,
    truncate,
)
from .potentials.base import Potential
from .potentials.factory import make_potential
from .regions import RegionTracker
from .runconfig import (
    RunConfig,
    Structure,
    build_structure,
    build_tracker,
    parse_run_config,
)
from .structures import thermalize

RELAX_COLUMNS = ("iteration", "fmax_eV_per_A", "n_core", "n_weighted", "n_expensive",
                 "n_cheap", "seconds_per_iteration")
RESUMABLE_KEYS = ("steps",)  # task keys a resumed run may change


@dataclass
class Setup:
    """Everything a task needs, built from a checked config."""

    cfg: RunConfig
    structure: Structure
    expensive: Potential
    cheap: Potential
    run_dir: Path

    def tracker(self) -> RegionTracker:
        return build_tracker(self.cfg, self.structure, self.expensive.cutoff)

    def calculator(self, energy: str = "nan") -> MixedCalculator:
        return MixedCalculator(self.expensive, self.cheap, self.tracker(), energy=energy,
                               **self.cfg.mixing)

    def close(self) -> None:
        for potential in (self.expensive, self.cheap):
            close = getattr(potential, "close", None)
            if close is not None:
                close()


def load_run_config(path: str | Path) -> RunConfig:
    """Read and check a run config file (every mistake in one message)."""
    path = Path(path)
    return parse_run_config(load_toml(path), base=path.parent.resolve(), source=path.name)


def _comparable(raw: dict) -> dict:
    task = {k: v for k, v in raw["task"].items() if k not in RESUMABLE_KEYS}
    out = {k: v for k, v in raw["output"].items() if k != "progress"}
    return {**raw, "task": task, "output": out}


def _prepare_dir(cfg: RunConfig, run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber or to resume a different run; nothing is written here."""
    if resume:
        if cfg.task["kind"] != "md":
            raise ConfigurationError(f"--resume is for MD runs; a {cfg.task['kind']} run "
                                     "starts again from its config")
        saved = run_dir / "config.toml"
        if not (run_dir / "checkpoint.npz").is_file() or not saved.is_file():
            raise ConfigurationError(f"nothing to resume in {run_dir}: no checkpoint.npz "
                                     "and config.toml there; run without --resume")
        old = load_toml(saved)
        if _comparable(old) != _comparable(cfg.raw):
            changed = sorted(k for k in cfg.raw if _comparable(old).get(k)
                             != _comparable(cfg.raw).get(k))
            raise ConfigurationError(
                f"the config differs from the one {run_dir} was started with (in "
                f"{', '.join(f'[{c}]' for c in changed)}); only task.steps may change on "
                "--resume. Start a new run (another output.directory) instead")
    elif run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise ConfigurationError(
            f"output directory {run_dir} exists and is not empty; pass --resume to continue "
            "its run, --overwrite to replace it, or set output.directory")


def prepare(cfg: RunConfig, run_dir: Path) -> Setup:
    """Build the structure and both potentials (no files written)."""
    structure = build_structure(cfg.structure)
    expensive = make_potential(cfg.expensive, "potentials.expensive")
    try:
        cheap = make_potential(cfg.cheap, "potentials.cheap")
    except BaseException:
        getattr(expensive, "close", lambda: None)()
        raise
    return Setup(cfg, structure, expensive, cheap, run_dir)


def run(config: str | Path | RunConfig, *, resume: bool = False, overwrite: bool = False,
        output: str | Path | None = None, progress: bool | str | None = None) -> dict:
    """Run a config file; returns the summary (also written to ``summary.json``).

    Args:
        config: a TOML path or a checked :class:`RunConfig`.
        resume: continue an MD run from the checkpoint in its directory.
        overwrite: replace an existing, non-empty run directory.
        output: run directory (default: ``output.directory`` relative to the config).
        progress: overrides ``output.progress``.
    """
    if isinstance(config, RunConfig):
        cfg, base = config, Path(".")
    else:
        cfg, base = load_run_config(config), Path(config).parent
    run_dir = Path(output) if output is not None else base / cfg.output["directory"]
    if progress is not None:
        cfg.output["progress"] = progress
    _prepare_dir(cfg, run_dir, resume, overwrite)
    setup = prepare(cfg, run_dir)
    try:
        if cfg.engine["kind"] == "lammps":
            from .run_lammps import run_md_lammps as task
        else:
            task = {"md": run_md, "relax": run_relax, "neb": run_neb}[cfg.task["kind"]]
        summary = task(setup, resume=resume, overwrite=overwrite)
    finally:
        setup.close()
    return summary


def _start_dir(setup: Setup, overwrite: bool) -> None:
    run_dir = setup.run_dir
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(
        f"# checked by mlmix {__version__}: defaults filled in, paths absolute\n"
        + dump_toml(setup.cfg.raw))


def _counts(calc: MixedCalculator) -> dict:
    report = calc.history[-1]
    return {"n_core": report.counts["core"], "n_weighted": int((calc.regions.p > 0).sum()),
            "n_expensive": int(report.n_expensive), "n_cheap": int(report.n_cheap)}


def _write_summary(run_dir: Path, summary: dict) -> dict:
    summary = {"mlmix_version": __version__, **summary}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _figures(setup: Setup, atoms: Atoms, log: Path | None) -> list[str]:
    if not setup.cfg.output["figures"]:
        return []
    from . import figures

    made = []
    figures.plot_regions(atoms, setup.run_dir / "regions.png")
    made.append("regions.png")
    if log is not None:
        figures.plot_log(log, setup.run_dir / "thermo.png")
        made.append("thermo.png")
    return made


# --------------------------------------------------------------------------- MD


def _integrator(atoms: Atoms, task: dict, rng: np.random.Generator):
    dt = task["timestep_fs"] * units.fs
    if task["ensemble"] == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    from .md import RegionLangevin

    return RegionLangevin(atoms, dt, temperature_K=task["temperature_K"],
                          friction=task["friction_per_fs"] / units.fs,
                          weights=task["thermostat_weights"], rng=rng)


def _md_state(step: int, atoms: Atoms, calc: MixedCalculator, rng, drift: DriftEstimate,
              traj: TrajectoryWriter, log: TableLog, wall: float) -> dict:
    return {
        "step": step,
        "atoms": atoms_state(atoms),
        "tracker": calc.tracker.state(),
        "calculator_step": calc.step,
        "rng": rng.bit_generator.state,
        "drift": drift.state,
        "files": {"trajectory": traj.tell(), "thermo": log.tell()},
        "wall_seconds": wall,
    }


def md_start(setup: Setup, state: dict | None) -> tuple[Atoms, int, float]:
    """Where an MD run starts (either engine): the built structure with Maxwell-Boltzmann
    momenta at task.temperature_K (from the first of two streams of task.seed), or the
    checkpoint's structure; with its step and the wall seconds already spent."""
    task = setup.cfg.task
    if state is not None:
        atoms = atoms_from_state(state["atoms"], setup.structure.atoms.constraints)
        return atoms, int(state["step"]), float(state["wall_seconds"])
    atoms = setup.structure.atoms.copy()
    if task["temperature_K"] > 0:
        stream = np.random.SeedSequence(task["seed"]).spawn(2)[0]
        thermalize(atoms, task["temperature_K"], np.random.default_rng(stream))
    return atoms, 0, 0.0


def start_outputs(setup: Setup, state: dict | None, overwrite: bool) -> None:
    """A fresh run directory, or the outputs of a resumed run cut back to its checkpoint."""
    if state is None:
        _start_dir(setup, overwrite)
        return
    truncate(setup.run_dir / "trajectory.extxyz", state["files"]["trajectory"])
    truncate(setup.run_dir / "thermo.log", state["files"]["thermo"])


def run_md(setup: Setup, *, resume: bool = False, overwrite: bool = False) -> dict:
    """MD (NVE, or NVT with the region-weighted Langevin thermostat)."""
    task, out, run_dir = setup.cfg.task, setup.cfg.output, setup.run_dir
    rng = np.random.default_rng(np.random.SeedSequence(task["seed"]).spawn(2)[1])
    calc = setup.calculator(energy="weighted")
    state = load_checkpoint(run_dir / "checkpoint.npz") if resume else None
    atoms, start, wall0 = md_start(setup, state)
    if state is not None:
        calc.tracker.restore(state["tracker"])
        rng.bit_generator.state = state["rng"]
        calc.step = start
    atoms.calc = calc
    atoms.get_forces()  # first evaluation: input errors surface before any file is written
    dyn = _integrator(atoms, task, rng)
    dt_fs = task["timestep_fs"]
    start_outputs(setup, state, overwrite)
    drift = DriftEstimate(state["drift"] if state else None)
    nve = task["ensemble"] == "nve"
    traj = TrajectoryWriter(run_dir / "trajectory.extxyz")
    log = TableLog(run_dir / "thermo.log", LOG_COLUMNS, THERMO_NOTE)
    steps, every = task["steps"], out  # output intervals
    step_times: list[float] = []
    t_row, last_row = time.perf_counter(), start
    t_start = time.perf_counter()

    def record(step: int) -> None:
        nonlocal t_row, last_row
        now = time.perf_counter()
        if nve:
            drift.add(step * dt_fs, atoms.get_potential_energy() + atoms.get_kinetic_energy())
        per_step = (now - t_row) / (step - last_row) if step > last_row else float("nan")
        log.record({"step": step, "time_fs": step * dt_fs, "temperature_K": temperature_K(atoms),
                    **_counts(calc), "seconds_per_step": per_step,
                    "drift_eV_per_ps": drift.slope_eV_per_ps() if nve else float("nan")})
        t_row, last_row = time.perf_counter(), step

    def due(step: int, key: str) -> bool:
        return every[key] > 0 and step % every[key] == 0

    if state is None:
        traj.write(atoms, 0, 0.0, calc.results["forces"])
        record(0)
        save_checkpoint(run_dir / "checkpoint.npz",
                        _md_state(0, atoms, calc, rng, drift, traj, log, 0.0))
    bar = progress_bar(steps, start, out["progress"])
    try:
        for step in range(start + 1, steps + 1):
            t0 = time.perf_counter()
            dyn.step()
            step_times.append(time.perf_counter() - t0)
            if due(step, "trajectory_every") or step == steps:
                traj.write(atoms, step, step * dt_fs, calc.results["forces"])
            if due(step, "log_every") or step == steps:
                record(step)
            if due(step, "checkpoint_every") or step == steps:
                save_checkpoint(run_dir / "checkpoint.npz", _md_state(
                    step, atoms, calc, rng, drift, traj, log,
                    wall0 + time.perf_counter() - t_start))
            bar.update(1)
    finally:
        bar.close()
        traj.close()
        log.close()
    made = _figures(setup, atoms, run_dir / "thermo.log")
    reports = list(calc.history)
    return _write_summary(run_dir, {
        "task": "md", "ensemble": task["ensemble"], "n_atoms": len(atoms),
        "steps": steps, "resumed_from_step": start if state else None,
        "timestep_fs": dt_fs, "final_temperature_K": temperature_K(atoms),
        "seconds_per_step_median": float(np.median(step_times)) if step_times else None,
        "wall_seconds": wall0 + time.perf_counter() - t_start,
        "expensive_evaluated_median": float(np.median([r.n_expensive for r in reports])),
        "cheap_evaluated_median": float(np.median([r.n_cheap for r in reports])),
        "region_counts_final": calc.regions.counts(),
        "drift_estimate_eV_per_ps": drift.slope_eV_per_ps() if nve else None,
        "drift_note": ("estimate from the weighted energy; run 'mlmix drift' for the "
                       "expensive re-evaluation") if nve else
                      "not defined under a thermostat",
        "figures": made,
    })


# --------------------------------------------------------------------------- relax


def _optimizer(name: str, atoms):
    from ase import optimize

    return getattr(optimize, name)(atoms, logfile=None)


def _fmax(forces: np.ndarray) -> float:
    return float(np.sqrt((forces**2).sum(axis=1).max()))


def run_relax(setup: Setup, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Relaxation of the positions on the mixed forces with a force criterion.

    Force mixing has no energy, so the criterion is the largest force only; the
    optimisers used (FIRE, BFGS, LBFGS without line search) need no energy.
    """
    task, out, run_dir = setup.cfg.task, setup.cfg.output, setup.run_dir
    atoms = setup.structure.atoms.copy()
    calc = setup.calculator()
    atoms.calc = calc
    atoms.get_forces()
    _start_dir(setup, overwrite)
    opt = _optimizer(task["optimizer"], atoms)
    traj = TrajectoryWriter(run_dir / "trajectory.extxyz")
    log = TableLog(run_dir / "relax.log", RELAX_COLUMNS)
    t_last = time.perf_counter()
    t_start = t_last
    converged = False
    iteration = 0
    with traj, log:
        for iteration, _ in enumerate(opt.irun(fmax=task["fmax"], steps=task["max_steps"])):
            forces = calc.results["forces"]
            now = time.perf_counter()
            log.record({"iteration": iteration, "fmax_eV_per_A": _fmax(forces), **_counts(calc),
                        "seconds_per_iteration": now - t_last if iteration else float("nan")})
            t_last = now
            if iteration % max(out["trajectory_every"], 1) == 0:
                traj.write(atoms, iteration, 0.0, forces)
        converged = _fmax(calc.results["forces"]) <= task["fmax"]
        traj.write(atoms, iteration, 0.0, calc.results["forces"])
    from ase.io import write

    write(run_dir / "relaxed.extxyz", atoms, format="extxyz")
    energy = None
    if task["expensive_energy"]:
        energy = float(setup.expensive.evaluate(atoms).energies.sum())
    made = _figures(setup, atoms, None)
    summary = _write_summary(run_dir, {
        "task": "relax", "n_atoms": len(atoms), "converged": converged,
        "iterations": iteration, "fmax_eV_per_A": _fmax(calc.results["forces"]),
        "fmax_target_eV_per_A": task["fmax"], "wall_seconds": time.perf_counter() - t_start,
        "expensive_energy_eV": energy,
        "energy_note": "the mixed forces have no energy; expensive_energy_eV is the expensive "
                       "potential on the whole relaxed structure" if energy is not None else
                       "the mixed forces have no energy (set task.expensive_energy = true for "
                       "the expensive potential's energy of the relaxed structure)",
        "region_counts": calc.regions.counts(), "figures": made,
    })
    if not converged:
        raise CalculationError(
            f"relaxation not converged: max force {summary['fmax_eV_per_A']:.3g} eV/Å after "
            f"{iteration} iterations (target {task['fmax']}); raise task.max_steps. Outputs "
            f"so far are in {run_dir}")
    return summary


# --------------------------------------------------------------------------- NEB


def _final_structure(setup: Setup, initial: Atoms) -> Atoms:
    task = setup.cfg.task
    if "hop" in task:
        seeds = setup.structure.defect_seeds
        if task["hop"] >= len(seeds):
            raise ConfigurationError(
                f"task.hop = {task['hop']}: the vacancy has only {len(seeds)} neighbours "
                f"(0..{len(seeds) - 1})")
        final = initial.copy()
        final.positions[seeds[task["hop"]]] = setup.structure.vacancy_site
        return final
    from ase.io import read

    path = Path(task["final"])
    if not path.is_absolute():
        path = Path(setup.cfg.structure.get("path", ".")).parent / path
    final = read(path)
    if len(final) != len(initial) or (final.numbers != initial.numbers).any():
        raise ConfigurationError(
            f"task.final ({path}) must hold the same atoms in the same order as the initial "
            f"structure ({len(initial)} atoms)")
    return final


def run_neb(setup: Setup, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Nudged elastic band on mixed forces; barrier from the expensive potential.

    Each image has its own regions, built once on its first geometry. The optimiser
    ranks images with the weighted energy (a ranking quantity only); the reported
    energies are the expensive potential's, evaluated once on every relaxed image
    over the whole system (method.md §4).
    """
    from ase.mep import NEB
    from ase.optimize import FIRE

    task, run_dir = setup.cfg.task, setup.run_dir
    initial = setup.structure.atoms.copy()
    final = _final_structure(setup, initial)
    images = [initial] + [initial.copy() for _ in range(task["images"])] + [final]
    for image in images:
        image.calc = setup.calculator(energy="weighted")
    images[0].get_forces()
    _start_dir(setup, overwrite)
    t0 = time.perf_counter()
    for end in (images[0], images[-1]):
        if not FIRE(end, logfile=None).run(fmax=task["fmax"], steps=task["max_steps"]):
            raise CalculationError("an NEB end point did not relax within task.max_steps")
    neb = NEB(images, climb=task["climb"], method=task["method"])
    neb.interpolate(mic=True)
    opt = FIRE(neb, logfile=str(run_dir / "neb.log"))
    converged = bool(opt.run(fmax=task["fmax"], steps=task["max_steps"]))
    energies = np.array([setup.expensive.evaluate(im).energies.sum() for im in images])
    relative = energies - energies[0]
    with TrajectoryWriter(run_dir / "trajectory.extxyz") as traj:
        for k, image in enumerate(images):
            traj.write(image, k, 0.0, image.get_forces())
    made = _figures(setup, images[len(images) // 2], None)
    if setup.cfg.output["figures"]:
        from .figures import plot_neb

        plot_neb(relative, run_dir / "neb.png")
        made.append("neb.png")
    summary = _write_summary(run_dir, {
        "task": "neb", "n_atoms": len(initial), "images": len(images), "converged": converged,
        "iterations": opt.nsteps, "wall_seconds": time.perf_counter() - t0,
        "barrier_eV": float(relative.max()), "reaction_energy_eV": float(relative[-1]),
        "image_energies_eV": relative.tolist(),
        "energy_note": "expensive potential on the whole system of each relaxed image",
        "region_counts_middle_image": images[len(images) // 2].calc.regions.counts(),
        "figures": made,
    })
    if not converged:
        raise CalculationError(f"NEB not converged within {task['max_steps']} iterations "
                               f"(fmax {task['fmax']}); outputs so far are in {run_dir}")
    return summary


# --------------------------------------------------------------------------- CLI


def main(args) -> int:
    summary = run(args.config, resume=args.resume, overwrite=args.overwrite,
                  output=args.output, progress=True if args.progress else None)
    keys = [k for k in ("task", "engine", "mpi_ranks", "n_atoms", "steps",
                        "seconds_per_step_median", "converged", "barrier_eV",
                        "drift_estimate_eV_per_ps") if k in summary]
    if summary:  # {} on MPI ranks other than 0
        print("; ".join(f"{k} = {summary[k]}" for k in keys))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("run", help="run a mixed simulation described in a TOML file")
    p.add_argument("config", help="the run config (see examples/run-*.toml)")
    p.add_argument("--resume", action="store_true",
                   help="continue an MD run from the checkpoint in its directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run directory")
    p.add_argument("--output", help="run directory (default: output.directory of the config)")
    p.add_argument("--progress", action="store_true", help="always show the progress bar")
    p.set_defaults(func=main)
