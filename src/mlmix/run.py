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
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from ase import Atoms, units

from . import __version__
from ._lammps_runtime import mpi_world_rank
from .buffer import BufferScan, scan_buffers
from .checkpoint import (
    atoms_from_state,
    atoms_state,
    load_latest_checkpoint,
    save_checkpoint,
)
from .config import Problems, dump_toml, load_toml
from .errors import CalculationError, ConfigurationError, Interrupted, OutputError
from .interruption import StopRequests
from .mixing import MixedCalculator
from .mts import corrected_median
from .outputs import (
    LOG_COLUMNS,
    THERMO_NOTE,
    DriftEstimate,
    TableLog,
    TrajectoryWriter,
    files_problems,
    files_state,
    progress_bar,
    temperature_K,
    truncate_files,
)
from .potentials.base import Potential, buffer_problem, default_r_buff, exact_r_buff
from .potentials.factory import make_potential
from .regions import RegionTracker
from .runconfig import (
    RunConfig,
    Structure,
    build_seeds,
    build_spec,
    build_structure,
    build_tracker,
    check_undescribed,
    parse_run_config,
)
from .rundir import RunDirectory, output_error, output_errors
from .structures import thermalize

RELAX_COLUMNS = ("iteration", "fmax_eV_per_A", "n_core", "n_weighted", "n_expensive",
                 "n_cheap", "seconds_per_iteration")
RESUMABLE_KEYS = ("steps",)  # task keys a resumed run may change
OUTPUT_FILES = {"trajectory": "trajectory.extxyz", "thermo": "thermo.log"}
CHECKPOINT = "checkpoint.npz"


@dataclass
class Setup:
    """Everything a task needs, built from a checked config.

    ``state`` is the checkpoint a resumed MD run continues from (None for a new
    run); ``outdir`` the run directory, locked by this process.
    """

    cfg: RunConfig
    structure: Structure
    expensive: Potential
    cheap: Potential
    run_dir: Path
    outdir: RunDirectory | None = None
    state: dict | None = None
    overwrite: bool = False
    resume_command: str = "mlmix run CONFIG --resume"
    stop: StopRequests = field(default_factory=StopRequests)
    buffer: BufferScan | None = None  # the scan behind r_buff = "auto"

    def tracker(self) -> RegionTracker:
        return build_tracker(self.cfg, self.structure, self.expensive)

    def calculator(self, energy: str = "nan", correction_every: int = 1) -> MixedCalculator:
        return MixedCalculator(self.expensive, self.cheap, self.tracker(), energy=energy,
                               min_distance=self.cfg.structure.get("min_distance"),
                               correction_every=correction_every, **self.cfg.mixing)

    def file(self, name: str) -> Path:
        """Path of output ``name`` in the run directory (recorded as mlmix's)."""
        if self.outdir is None:
            return self.run_dir / name
        return self.outdir.file(name)

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


def check_run_dir(cfg: RunConfig, outdir: RunDirectory, resume: bool, overwrite: bool
                  ) -> dict | None:
    """Every reason not to start (or resume) in ``outdir``, in one ConfigurationError;
    nothing is written. Returns the checkpoint a resume continues from (None for a new
    run); on success the directory is locked by this process if it exists."""
    if resume and overwrite:
        raise ConfigurationError("--resume and --overwrite exclude each other: resume "
                                 "continues a run, overwrite starts it again")
    problems = outdir.check(resume=resume, overwrite=overwrite)
    if not resume or problems:
        if problems:
            raise ConfigurationError(_listing(outdir.path, problems))
        return None
    run_dir = outdir.path
    if cfg.task["kind"] != "md":
        problems.append(
            f"--resume is for MD runs: a {cfg.task['kind']} keeps no checkpoint (it is "
            "short); start it again with --overwrite")
        raise ConfigurationError(_listing(run_dir, problems))
    saved = run_dir / "config.toml"
    if not saved.is_file():
        problems.append(f"{saved} is missing: it records what the run was started with")
    else:
        old = load_toml(saved)
        if _comparable(old) != _comparable(cfg.raw):
            changed = sorted(k for k in cfg.raw if _comparable(old).get(k)
                             != _comparable(cfg.raw).get(k))
            problems.append(
                f"the config differs from the one {run_dir} was started with (in "
                f"{', '.join(f'[{c}]' for c in changed)}); only task.steps may change on "
                "--resume. Start a new run (another output.directory) instead")
    state = None
    try:
        state, _ = load_latest_checkpoint(run_dir / CHECKPOINT)
    except ConfigurationError as exc:
        problems.append(str(exc))
    if state is not None:
        changed = files_problems(run_dir, state["files"], OUTPUT_FILES)
        if changed:  # the files cannot be continued: say how to start again
            problems += changed + ["this run cannot continue its files: start it again "
                                   "with --overwrite, or move the run directory away"]
        step, steps = int(state["step"]), cfg.task["steps"]
        if steps < step:
            problems.append(
                f"task.steps = {steps} is below the step of the checkpoint ({step}): the "
                f"files already hold {step} steps. Raise task.steps to extend the run, or "
                "start a new run")
    if problems:
        raise ConfigurationError(_listing(run_dir, problems))
    return state


def _listing(run_dir: Path, problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"run directory {run_dir} has {len(problems)} problem(s):\n" + "\n".join(
        f"  - {m}" for m in problems)


def finished_summary(cfg: RunConfig, run_dir: Path, state: dict | None) -> dict | None:
    """The summary of a resumed run that has nothing left to do (else None)."""
    if state is None or int(state["step"]) < cfg.task["steps"]:
        return None
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None  # killed after its last checkpoint: finish the outputs
    return summary if summary.get("steps") == cfg.task["steps"] else None


def check_loaded(cfg: RunConfig, structure: Structure, expensive: Potential,
                 cheap: Potential) -> None:
    """The checks that need loaded potentials, all findings in one ConfigurationError
    (before any output is written)."""
    p = Problems(f"{cfg.source} (checked with its potentials loaded)")
    approx = cfg.mixing["allow_approximate"]
    r_buff = cfg.regions.get("r_buff")
    if r_buff == "auto":  # measured and chosen after these checks (choose_buffer)
        r_buff, approx = None, True
    problem = None if approx else buffer_problem(
        expensive, r_buff if r_buff is not None else default_r_buff(expensive),
        "regions.r_buff", "set mixing.allow_approximate = true")
    if problem is not None:
        p.add("mixing.allow_approximate" if exact_r_buff(expensive) is None
              else "regions.r_buff", problem)
    if not approx and cfg.mixing["mask_cheap"] and cheap.is_local \
            and (r_buff if r_buff is not None else default_r_buff(expensive)) < cheap.cutoff:
        p.add("mixing.mask_cheap", f"needs regions.r_buff >= the cheap cutoff "
              f"({cheap.cutoff} Å)")
    atoms = structure.atoms
    lacking = [] if cheap.species is None else sorted(
        set(atoms.get_chemical_symbols()) - set(cheap.species))
    if lacking:
        check_undescribed(p, structure, cfg.seeds, lacking)
    described = ~np.isin(atoms.get_chemical_symbols(), lacking) if lacking else None
    for role, pot, view in (("expensive", expensive, atoms),
                            ("cheap", cheap, atoms if described is None else atoms[described])):
        try:
            pot.check_atoms(view)
        except ConfigurationError as exc:
            p.add(f"potentials.{role}", str(exc))
        if cfg.task["kind"] == "neb" and not pot.has_energies:
            p.add(f"potentials.{role}", f"{pot.name} gives no per-atom energies, which NEB "
                  "needs to rank its images; use a calculator that implements 'energies'")
    p.raise_if_any()


def prepare(cfg: RunConfig, run_dir: Path) -> Setup:
    """Build the structure and both potentials and check them together (no files
    written)."""
    structure = cfg.built if cfg.built is not None else build_structure(cfg.structure)
    expensive = make_potential(cfg.expensive, "potentials.expensive")
    try:
        cheap = make_potential(cfg.cheap, "potentials.cheap")
    except BaseException:
        getattr(expensive, "close", lambda: None)()
        raise
    setup = Setup(cfg, structure, expensive, cheap, run_dir)
    try:
        check_loaded(cfg, structure, expensive, cheap)
        if cfg.regions.get("r_buff") == "auto":
            choose_buffer(setup)
    except BaseException:
        setup.close()
        raise
    return setup


def choose_buffer(setup: Setup) -> None:
    """``r_buff = "auto"``: measure the force error against the buffer on the initial
    structure (:func:`mlmix.buffer.scan_buffers`) and run with the smallest buffer that
    meets ``regions.force_tolerance``; ``setup.cfg`` gets that number, ``setup.buffer``
    the scan (recorded in ``summary.json``)."""
    cfg = setup.cfg
    spec = build_spec(cfg, setup.expensive)
    scan = scan_buffers(setup.structure.atoms, setup.expensive, spec,
                        build_seeds(cfg.seeds, setup.structure),
                        tolerance=cfg.regions["force_tolerance"])
    chosen = scan.recommended
    if chosen is None:
        raise ConfigurationError(
            f"regions.r_buff = 'auto': no buffer up to {scan.points[-1].r_buff:g} Å keeps "
            f"the force error on weighted atoms within regions.force_tolerance = "
            f"{scan.tolerance:g} eV/Å (it is {scan.points[-1].error:.3g} eV/Å there); "
            "loosen the tolerance or set r_buff (see `mlmix buffer CONFIG`)")
    exact = scan.exact_r_buff is not None and chosen >= scan.exact_r_buff
    setup.cfg = replace(cfg, regions={**cfg.regions, "r_buff": chosen},
                        mixing={**cfg.mixing,
                                "allow_approximate": cfg.mixing["allow_approximate"] or not exact})
    setup.buffer = scan
    if mpi_world_rank() == 0:
        print(f"mlmix: r_buff = auto: {chosen:g} Å, measured force error on weighted atoms "
              f"{scan.error_at(chosen):.3g} eV/Å (tolerance {scan.tolerance:g}; "
              f"{'exact' if exact else 'approximate'})", file=sys.stderr, flush=True)


def _resume_command(config, output) -> str:
    """The command line that resumes this run."""
    output_option = [] if output is None else ["--output", str(output)]
    return " ".join(["mlmix", "run", str(config), *output_option, "--resume"])


def run(config: str | Path | RunConfig, *, resume: bool = False, overwrite: bool = False,
        output: str | Path | None = None, progress: bool | str | None = None) -> dict:
    """Run a config file; returns the summary (also written to ``summary.json``).

    Args:
        config: a TOML path or a checked :class:`RunConfig`.
        resume: continue an MD run from the checkpoint in its directory (a run that
            already reached ``task.steps`` is left as it is and its summary returned).
        overwrite: start again in a run directory mlmix made, removing only the files
            it wrote there (a folder mlmix did not make is refused).
        output: run directory (default: ``output.directory`` relative to the config).
        progress: overrides ``output.progress``.

    Raises:
        ConfigurationError: before anything is written, for a bad config, structure,
            potential or run directory (every finding in one message).
        OutputError: an output could not be written (the last checkpoint is intact).
        Interrupted: SIGINT/SIGTERM stopped an MD run after a checkpoint.
    """
    if isinstance(config, RunConfig):
        cfg, base = config, Path(".")
    else:
        cfg, base = load_run_config(config), Path(config).parent
    run_dir = Path(output) if output is not None else base / cfg.output["directory"]
    if progress is not None:
        cfg.output["progress"] = progress
    root = mpi_world_rank() == 0
    with RunDirectory(run_dir, lock=root) as outdir:
        state = check_run_dir(cfg, outdir, resume, overwrite)
        done = finished_summary(cfg, run_dir, state)
        if done is not None:
            if not root:
                return {}
            print(f"mlmix: {run_dir} already finished its {cfg.task['steps']} steps; nothing "
                  "to do (raise task.steps to extend it)", file=sys.stderr)
            return done
        setup = prepare(cfg, run_dir)
        setup.outdir, setup.state, setup.overwrite = outdir, state, overwrite
        setup.resume_command = _resume_command(config if not isinstance(config, RunConfig)
                                               else "CONFIG", output)
        try:
            if cfg.engine["kind"] == "lammps":
                from .run_lammps import run_md_lammps as task
            else:
                task = {"md": run_md, "relax": run_relax, "neb": run_neb}[cfg.task["kind"]]
            return task(setup)
        except OSError as exc:  # a write failed (full disk, folder gone read-only)
            error = exc if isinstance(exc, OutputError) else output_error(run_dir, exc)
            raise OutputError(f"{error}. {_after_write_error(setup)}") from None
        finally:
            setup.close()


def _after_write_error(setup: Setup) -> str:
    if setup.cfg.task["kind"] == "md" and (setup.run_dir / CHECKPOINT).is_file():
        return (f"The last checkpoint ({setup.run_dir / CHECKPOINT}) is intact: free space "
                f"(or make the folder writable), then resume with: {setup.resume_command}")
    return "Free space (or make the folder writable) and start the run again with --overwrite"


def _start_dir(setup: Setup) -> None:
    """A new run directory (or one mlmix made, emptied of its files) with the config."""
    setup.outdir.open(overwrite=setup.overwrite)
    path = setup.file("config.toml")
    with output_errors(path):
        path.write_text(f"# checked by mlmix {__version__}: defaults filled in, paths "
                        "absolute\n" + dump_toml(setup.cfg.raw))


def _counts(calc: MixedCalculator) -> dict:
    report = calc.history[-1]
    return {"n_core": report.counts["core"], "n_weighted": int((calc.regions.p > 0).sum()),
            "n_expensive": int(report.n_expensive), "n_cheap": int(report.n_cheap)}


def _write_summary(setup: Setup, summary: dict) -> dict:
    summary = {"mlmix_version": __version__, **summary}
    if setup.buffer is not None:
        chosen = setup.cfg.regions["r_buff"]
        summary["buffer"] = {"r_buff_A": chosen, "source": "auto",
                             "measured_error_eV_per_A": setup.buffer.error_at(chosen),
                             "tolerance_eV_per_A": setup.buffer.tolerance,
                             "exact_r_buff_A": setup.buffer.exact_r_buff,
                             "scan": setup.buffer.to_dict()}
    path = setup.file("summary.json")
    tmp = path.with_name(path.name + ".tmp")
    with output_errors(path):
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(path)
    return summary


def _figures(setup: Setup, atoms: Atoms, log: Path | None) -> list[str]:
    if not setup.cfg.output["figures"]:
        return []
    from . import figures

    made = []
    for name, draw in (("regions.png", lambda path: figures.plot_regions(atoms, path)),
                       ("thermo.png", lambda path: figures.plot_log(log, path))):
        if name == "thermo.png" and log is None:
            continue
        path = setup.file(name)
        with output_errors(path):
            draw(path)
        made.append(name)
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
        "files": files_state({"trajectory": traj, "thermo": log}),
        "wall_seconds": wall,
    }


def md_start(setup: Setup) -> tuple[Atoms, int, float]:
    """Where an MD run starts (either engine): the built structure with Maxwell-Boltzmann
    momenta at task.temperature_K (from the first of two streams of task.seed), or the
    checkpoint's structure; with its step and the wall seconds already spent."""
    task, state = setup.cfg.task, setup.state
    if state is not None:
        atoms = atoms_from_state(state["atoms"], setup.structure.atoms.constraints)
        return atoms, int(state["step"]), float(state["wall_seconds"])
    atoms = setup.structure.atoms.copy()
    if task["temperature_K"] > 0:
        stream = np.random.SeedSequence(task["seed"]).spawn(2)[0]
        thermalize(atoms, task["temperature_K"], np.random.default_rng(stream))
    return atoms, 0, 0.0


def start_outputs(setup: Setup) -> None:
    """A fresh run directory, or the outputs of a resumed run cut back to its checkpoint
    (checked to match it before any work: :func:`check_run_dir`)."""
    if setup.state is None:
        _start_dir(setup)
        return
    truncate_files(setup.run_dir, setup.state["files"], OUTPUT_FILES)


def interrupted(setup: Setup, step: int) -> Interrupted:
    """The error that ends a run stopped by a signal, after its checkpoint at ``step``."""
    return Interrupted(f"stopped by {setup.stop.name or 'a signal'} at step {step}; a "
                       f"checkpoint of that step is in {setup.run_dir / CHECKPOINT}. Resume with: "
                       f"{setup.resume_command}")


def run_md(setup: Setup) -> dict:
    """MD (NVE, or NVT with the region-weighted Langevin thermostat)."""
    task, out, run_dir, state = setup.cfg.task, setup.cfg.output, setup.run_dir, setup.state
    rng = np.random.default_rng(np.random.SeedSequence(task["seed"]).spawn(2)[1])
    calc = setup.calculator(energy="weighted", correction_every=task["correction_every"])
    atoms, start, wall0 = md_start(setup)
    if state is not None:
        calc.tracker.restore(state["tracker"])
        rng.bit_generator.state = state["rng"]
        calc.step = start
    atoms.calc = calc
    atoms.get_forces()  # first evaluation: input errors surface before any file is written
    dyn = _integrator(atoms, task, rng)
    dt_fs = task["timestep_fs"]
    start_outputs(setup)
    drift = DriftEstimate(state["drift"] if state else None)
    nve = task["ensemble"] == "nve"
    traj = TrajectoryWriter(setup.file(OUTPUT_FILES["trajectory"]))
    log = TableLog(setup.file(OUTPUT_FILES["thermo"]), LOG_COLUMNS, THERMO_NOTE)
    checkpoint = setup.file(CHECKPOINT)
    setup.file(checkpoint.stem + ".prev.npz")
    steps, every = task["steps"], out  # output intervals
    step_times: list[float] = []
    t_row, last_row = time.perf_counter(), start
    t_start = time.perf_counter()

    def record(step: int) -> None:
        nonlocal t_row, last_row
        now = time.perf_counter()
        energy = atoms.get_potential_energy()  # NaN between multiple-time-step outer steps
        if nve and np.isfinite(energy):
            drift.add(step * dt_fs, energy + atoms.get_kinetic_energy())
        per_step = (now - t_row) / (step - last_row) if step > last_row else float("nan")
        log.record({"step": step, "time_fs": step * dt_fs, "temperature_K": temperature_K(atoms),
                    **_counts(calc), "seconds_per_step": per_step,
                    "drift_eV_per_ps": drift.slope_eV_per_ps() if nve else float("nan")})
        t_row, last_row = time.perf_counter(), step

    def save(step: int) -> None:
        save_checkpoint(checkpoint, _md_state(step, atoms, calc, rng, drift, traj, log,
                                              wall0 + time.perf_counter() - t_start))

    def due(step: int, key: str) -> bool:
        return every[key] > 0 and step % every[key] == 0

    if state is None:
        traj.write(atoms, 0, 0.0, calc.results["forces"])
        record(0)
        save(0)
    bar = progress_bar(steps, start, out["progress"])
    try:
        with setup.stop:
            for step in range(start + 1, steps + 1):
                t0 = time.perf_counter()
                dyn.step()
                step_times.append(time.perf_counter() - t0)
                if due(step, "trajectory_every") or step == steps:
                    traj.write(atoms, step, step * dt_fs, calc.results["forces"])
                if due(step, "log_every") or step == steps:
                    record(step)
                if due(step, "checkpoint_every") or step == steps or setup.stop.requested:
                    save(step)
                bar.update(1)
                if setup.stop.requested and step < steps:
                    raise interrupted(setup, step)
    finally:
        bar.close()
        traj.close()
        log.close()
    made = _figures(setup, atoms, run_dir / "thermo.log")
    reports = list(calc.history)
    return _write_summary(setup, {
        "task": "md", "ensemble": task["ensemble"], "n_atoms": len(atoms),
        "steps": steps, "resumed_from_step": start if state else None,
        "timestep_fs": dt_fs, "final_temperature_K": temperature_K(atoms),
        "seconds_per_step_median": float(np.median(step_times)) if step_times else None,
        "wall_seconds": wall0 + time.perf_counter() - t_start,
        "correction_every": task["correction_every"],
        "expensive_evaluated_median": corrected_median(reports),
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


def _stopped_optimizer(setup: Setup, what: str, iteration: int) -> Interrupted:
    return Interrupted(f"stopped by {setup.stop.name} at {what} iteration {iteration}; a "
                       f"{what} keeps no checkpoint: start it again with "
                       f"{setup.resume_command.replace('--resume', '--overwrite')}")


def run_relax(setup: Setup) -> dict:
    """Relaxation of the positions on the mixed forces with a force criterion.

    Force mixing has no energy, so the criterion is the largest force only; the
    optimisers used (FIRE, BFGS, LBFGS without line search) need no energy.
    """
    task, out, run_dir = setup.cfg.task, setup.cfg.output, setup.run_dir
    atoms = setup.structure.atoms.copy()
    calc = setup.calculator()
    atoms.calc = calc
    atoms.get_forces()
    _start_dir(setup)
    opt = _optimizer(task["optimizer"], atoms)
    traj = TrajectoryWriter(setup.file("trajectory.extxyz"))
    log = TableLog(setup.file("relax.log"), RELAX_COLUMNS)
    t_last = time.perf_counter()
    t_start = t_last
    converged = False
    iteration = 0
    with traj, log, setup.stop:
        for iteration, _ in enumerate(opt.irun(fmax=task["fmax"], steps=task["max_steps"])):
            if setup.stop.requested:
                raise _stopped_optimizer(setup, "relaxation", iteration)
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

    relaxed = setup.file("relaxed.extxyz")
    with output_errors(relaxed):
        write(relaxed, atoms, format="extxyz")
    energy = None
    if task["expensive_energy"]:
        energy = float(setup.expensive.evaluate(atoms).energies.sum())
    made = _figures(setup, atoms, None)
    summary = _write_summary(setup, {
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
    if "hop" in task:  # in range: checked with the structure (runconfig)
        seeds = setup.structure.defect_seeds
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


def run_neb(setup: Setup) -> dict:
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
    _start_dir(setup)
    t0 = time.perf_counter()

    def optimise(opt) -> bool:
        converged = False
        with setup.stop:
            for iteration, converged in enumerate(opt.irun(fmax=task["fmax"],
                                                           steps=task["max_steps"])):
                if setup.stop.requested:
                    raise _stopped_optimizer(setup, "NEB", iteration)
        return bool(converged)

    for end in (images[0], images[-1]):
        if not optimise(FIRE(end, logfile=None)):
            raise CalculationError("an NEB end point did not relax within task.max_steps")
    neb = NEB(images, climb=task["climb"], method=task["method"])
    neb.interpolate(mic=True)
    neb_log = setup.file("neb.log")
    with output_errors(neb_log):
        opt = FIRE(neb, logfile=str(neb_log))
        converged = optimise(opt)
    energies = np.array([setup.expensive.evaluate(im).energies.sum() for im in images])
    relative = energies - energies[0]
    with TrajectoryWriter(setup.file("trajectory.extxyz")) as traj:
        for k, image in enumerate(images):
            traj.write(image, k, 0.0, image.get_forces())
    made = _figures(setup, images[len(images) // 2], None)
    if setup.cfg.output["figures"]:
        from .figures import plot_neb

        path = setup.file("neb.png")
        with output_errors(path):
            plot_neb(relative, path)
        made.append("neb.png")
    summary = _write_summary(setup, {
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
                   help="start again in a run directory mlmix made (only the files mlmix "
                   "wrote there are removed; a folder it did not make is refused)")
    p.add_argument("--output", help="run directory (default: output.directory of the config)")
    p.add_argument("--progress", action="store_true", help="always show the progress bar")
    p.set_defaults(func=main)
