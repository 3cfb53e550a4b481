"""The ASE engine: `mlmix run` tasks with ASE integrators and optimisers on mixed forces.

Each task takes a :class:`~mlmix.engines.session.Setup` (built and checked by
:func:`mlmix.run.run`), attaches a :class:`~mlmix.mixing.MixedCalculator` and writes
the outputs listed in :mod:`mlmix.run`:

* :func:`run_md`: NVE (velocity Verlet), NVT (:class:`~mlmix.engines.langevin.RegionLangevin`)
  or, with energy mixing, NPT (ASE's Berendsen barostat), checkpointed and resumable;
* :func:`run_relax`: positions (and with energy mixing, optionally the cell) relaxed on
  the mixed forces, force criterion only;
* :func:`run_neb`: nudged elastic band on mixed forces, the barrier from the expensive
  potential.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from ase import Atoms, units

from ..checkpoint import atoms_state, save_checkpoint
from ..errors import CalculationError, ConfigurationError, Interrupted
from ..force_check import ForceCheckSeeds
from ..identity import ID_ARRAY
from ..mixing import MixedCalculator
from ..mts import corrected_median
from ..outputs import (
    ENERGY_LOG_COLUMNS,
    ENERGY_THERMO_NOTE,
    LOG_COLUMNS,
    THERMO_NOTE,
    DriftEstimate,
    TableLog,
    TrajectoryWriter,
    files_state,
    progress_bar,
    temperature_K,
)
from ..rundir import output_errors
from .session import (
    CHECKPOINT,
    OUTPUT_FILES,
    Setup,
    draw_figures,
    interrupted,
    md_start,
    start_dir,
    start_outputs,
    write_summary,
)

RELAX_COLUMNS = ("iteration", "fmax_eV_per_A", "n_core", "n_weighted", "n_expensive",
                 "n_cheap", "seconds_per_iteration")


def _counts(calc: MixedCalculator) -> dict:
    report = calc.history[-1]
    return {"n_core": report.counts["core"], "n_weighted": int((calc.current_regions().p > 0).sum()),
            "n_expensive": int(report.n_expensive), "n_cheap": int(report.n_cheap)}


# --------------------------------------------------------------------------- MD


def _integrator(atoms: Atoms, task: dict, rng: np.random.Generator):
    dt = task["timestep_fs"] * units.fs
    if task["ensemble"] == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    if task["ensemble"] == "npt":
        # Berendsen: no integrator state beyond the atoms and the cell, so a checkpoint
        # resumes it exactly; it relaxes towards the target, it does not sample NPT
        from ase.md.nptberendsen import NPTBerendsen

        return NPTBerendsen(atoms, dt, temperature_K=task["temperature_K"],
                            pressure_au=task["pressure_GPa"] * units.GPa,
                            taut=task["taut_fs"] * units.fs, taup=task["taup_fs"] * units.fs,
                            compressibility_au=task["compressibility_per_GPa"] / units.GPa)
    from .langevin import RegionLangevin

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
        "energy_mixing": calc.energy_state(),
        "files": files_state({"trajectory": traj, "thermo": log}),
        "wall_seconds": wall,
    }


def run_md(setup: Setup) -> dict:
    """MD (NVE, or NVT with the region-weighted Langevin thermostat)."""
    task, out, run_dir, state = setup.cfg.task, setup.cfg.output, setup.run_dir, setup.state
    rng = np.random.default_rng(np.random.SeedSequence(task["seed"]).spawn(2)[1])
    calc = setup.calculator(energy="weighted", correction_every=task["correction_every"],
                            timestep=task["timestep_fs"])
    atoms, start, wall0 = md_start(setup)
    if state is not None:
        calc.tracker.restore(state["tracker"])
        rng.bit_generator.state = state["rng"]
        calc.step = start
        calc.restore_energy_state(state["energy_mixing"])
    atoms.calc = calc
    atoms.get_forces()  # first evaluation: input errors surface before any file is written
    dyn = _integrator(atoms, task, rng)
    dt_fs = task["timestep_fs"]
    start_outputs(setup)
    drift = DriftEstimate(state["drift"] if state else None)
    nve = task["ensemble"] == "nve"
    traj = TrajectoryWriter(setup.file(OUTPUT_FILES["trajectory"]))
    checked = calc.tracker.seeds if isinstance(calc.tracker.seeds, ForceCheckSeeds) else None
    energy_mode = calc.mixing == "energy"
    columns = LOG_COLUMNS + (ForceCheckSeeds.LOG_COLUMNS if checked else ()) \
        + (ENERGY_LOG_COLUMNS if energy_mode else ())
    log = TableLog(setup.file(OUTPUT_FILES["thermo"]), columns,
                   (ENERGY_THERMO_NOTE if energy_mode else THERMO_NOTE)
                   + (ForceCheckSeeds.LOG_NOTE if checked else ""))
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
                    "drift_eV_per_ps": drift.slope_eV_per_ps() if nve else float("nan"),
                    **(checked.log_row() if checked else {}),
                    **({"potential_energy_eV": energy,
                        "total_energy_eV": energy + atoms.get_kinetic_energy(),
                        "exchanged_eV": calc.energy_exchanged_total} if energy_mode else {})})
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
    made = draw_figures(setup, atoms, run_dir / "thermo.log")
    reports = list(calc.history)
    return write_summary(setup, {
        "task": "md", "ensemble": task["ensemble"], "n_atoms": len(atoms),
        "steps": steps, "resumed_from_step": start if state else None,
        "timestep_fs": dt_fs, "final_temperature_K": temperature_K(atoms),
        "seconds_per_step_median": float(np.median(step_times)) if step_times else None,
        "wall_seconds": wall0 + time.perf_counter() - t_start,
        "correction_every": task["correction_every"],
        "expensive_evaluated_median": corrected_median(reports),
        "cheap_evaluated_median": float(np.median([r.n_cheap for r in reports])),
        "region_counts_final": calc.current_regions().counts(),
        "drift_estimate_eV_per_ps": drift.slope_eV_per_ps() if nve else None,
        **({"force_checks": checked.checks} if checked else {}),
        "drift_note": ("the drift of E + K, energy mixing's conserved energy" if energy_mode
                       else "estimate from the weighted energy; run 'mlmix drift' for the "
                       "expensive re-evaluation") if nve else
                      "not defined under a thermostat",
        **_energy_summary(calc, atoms),
        "figures": made,
    })


def _energy_summary(calc: MixedCalculator, atoms: Atoms) -> dict:
    """What a summary says of the mixing: the mode and, for energy mixing, its energy,
    stress, cell-energy shift and the energy the rebuilds exchanged."""
    if calc.mixing != "energy":
        return {"mixing_mode": "force"}
    report = calc.history[-1]
    periodic = bool(np.all(atoms.pbc))
    return {"mixing_mode": "energy", "energy_mixing": {
        "potential_energy_eV": float(atoms.get_potential_energy()),
        "stress_eV_per_A3": atoms.get_stress().tolist() if periodic else None,
        "pressure_GPa": float(-atoms.get_stress()[:3].mean() / units.GPa) if periodic else None,
        "volume_A3": float(atoms.get_volume()) if periodic else None,
        "cheap_energy_shift_eV": calc.energy_shift_used,
        "n_levels": calc.n_levels,
        "energy_exchanged_at_rebuilds_eV": calc.energy_exchanged_total,
        "energy_exchanged_both_ways_eV": calc.energy_exchanged_abs_total,
        "energy_not_absorbed_eV": calc.energy_unabsorbed_total,
        "exact_core_atoms_final": report.counts.get("exact_core"),
        "note": "forces equal the expensive forces only on the exact core: core atoms "
                "deeper than the larger receptive field inside the core"}}


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
    start_dir(setup)
    target = atoms
    if task["cell"]:  # energy mixing only (checked with the config)
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(atoms, scalar_pressure=task["pressure_GPa"] * units.GPa)
    opt = _optimizer(task["optimizer"], target)
    traj = TrajectoryWriter(setup.file("trajectory.extxyz"))
    log = TableLog(setup.file("relax.log"), RELAX_COLUMNS)
    t_last = time.perf_counter()
    t_start = t_last
    converged = False
    iteration = 0
    bar = progress_bar(task["max_steps"], 0, out["progress"], unit="iteration")
    with traj, log, setup.stop, bar:
        for iteration, _ in enumerate(opt.irun(fmax=task["fmax"], steps=task["max_steps"])):
            if setup.stop.requested:
                raise _stopped_optimizer(setup, "relaxation", iteration)
            forces = calc.results["forces"]
            now = time.perf_counter()
            fmax = _fmax(target.get_forces())  # with the cell: its generalised forces too
            log.record({"iteration": iteration, "fmax_eV_per_A": fmax, **_counts(calc),
                        "seconds_per_iteration": now - t_last if iteration else float("nan")})
            t_last = now
            if iteration % max(out["trajectory_every"], 1) == 0:
                traj.write(atoms, iteration, 0.0, forces)
            if iteration:
                bar.update(1)
            bar.set_postfix_str(f"fmax {fmax:.3g} eV/Å (target {task['fmax']:g})", refresh=False)
        converged = _fmax(target.get_forces()) <= task["fmax"]
        traj.write(atoms, iteration, 0.0, calc.results["forces"])
    from ase.io import write

    relaxed = setup.file("relaxed.extxyz")
    with output_errors(relaxed):
        write(relaxed, atoms, format="extxyz")
    energy = None
    if task["expensive_energy"]:
        energy = float(setup.expensive.evaluate(atoms).energies.sum())
    made = draw_figures(setup, atoms, None)
    summary = write_summary(setup, {
        "task": "relax", "n_atoms": len(atoms), "converged": converged,
        "iterations": iteration, "fmax_eV_per_A": _fmax(target.get_forces()),
        "cell_relaxed": bool(task["cell"]),
        "fmax_target_eV_per_A": task["fmax"], "wall_seconds": time.perf_counter() - t_start,
        "expensive_energy_eV": energy,
        "energy_note": ("energy mixing: energy_mixing.potential_energy_eV is the mixed "
                        "energy the relaxation minimised" if calc.mixing == "energy" else
                        "the mixed forces have no energy")
                       + ("; expensive_energy_eV is the expensive potential on the whole "
                          "relaxed structure" if energy is not None else
                          " (set task.expensive_energy = true for the expensive potential's "
                          "energy of the relaxed structure)"),
        "region_counts": calc.current_regions().counts(), "figures": made,
        **_energy_summary(calc, atoms),
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
        if seeds is None:  # pragma: no cover - runconfig refuses a hop without a defect
            raise ConfigurationError("task.hop needs a structure built with a defect")
        final = initial.copy()
        final.positions[seeds[task["hop"]]] = setup.structure.vacancy_site
        return final
    from ase.io import read

    path = Path(task["final"])
    if not path.is_absolute():
        path = Path(setup.cfg.structure.get("path", ".")).parent / path
    final = read(path, index=-1)
    if not isinstance(final, Atoms) or len(final) != len(initial) \
            or (final.numbers != initial.numbers).any():
        raise ConfigurationError(
            f"task.final ({path}) must hold the same atoms in the same order as the initial "
            f"structure ({len(initial)} atoms)")
    return final


def _mixed_barrier(images: list[Atoms]) -> dict:
    """The band's barrier on the mixed energy (energy mixing: one energy surface)."""
    mixed = np.array([image.get_potential_energy() for image in images])
    mixed -= mixed[0]
    return {"mixed_barrier_eV": float(mixed.max()), "mixed_reaction_energy_eV": float(mixed[-1]),
            "mixed_image_energies_eV": mixed.tolist(),
            "mixed_energy_note": "energy mixing: the mixed energy of each relaxed image (one "
                                 "weight field for all images); barrier_eV is the expensive "
                                 "re-evaluation of the same images"}


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
    energy_mode = setup.cfg.mixing.get("mode") == "energy"
    if energy_mode:
        # one calculator, one weight field carried by atom identity: every image is
        # then a point of the same energy surface, and the band's barrier is a barrier
        shared = setup.calculator()
        for image in images:
            image.calc = shared
        images[0].get_forces()
        for image in images[1:]:
            image.arrays[ID_ARRAY] = images[0].arrays[ID_ARRAY].copy()
    else:
        for image in images:
            image.calc = setup.calculator(energy="weighted")
        images[0].get_forces()
    start_dir(setup)
    t0 = time.perf_counter()

    def optimise(opt, what: str) -> bool:
        converged = False
        bar = progress_bar(task["max_steps"], 0, setup.cfg.output["progress"],
                           unit="iteration")
        bar.set_description(what, refresh=False)
        with setup.stop, bar:
            for iteration, state in enumerate(opt.irun(fmax=task["fmax"],
                                                       steps=task["max_steps"])):
                converged = state
                if setup.stop.requested:
                    raise _stopped_optimizer(setup, "NEB", iteration)
                if iteration:
                    bar.update(1)
        return bool(converged)

    for end, what in ((images[0], "NEB initial state"), (images[-1], "NEB final state")):
        if not optimise(FIRE(end, logfile=None), what):
            raise CalculationError("an NEB end point did not relax within task.max_steps")
    neb = NEB(images, climb=task["climb"], method=task["method"],
              allow_shared_calculator=energy_mode)
    neb.interpolate(mic=True)
    neb_log = setup.file("neb.log")
    with output_errors(neb_log):
        opt = FIRE(neb, logfile=str(neb_log))
        converged = optimise(opt, "NEB band")
    energies = np.array([setup.expensive.evaluate(im).energies.sum() for im in images])
    relative = energies - energies[0]
    with TrajectoryWriter(setup.file("trajectory.extxyz")) as traj:
        for k, image in enumerate(images):
            traj.write(image, k, 0.0, image.get_forces())
    made = draw_figures(setup, images[len(images) // 2], None)
    if setup.cfg.output["figures"]:
        from ..figures import plot_neb

        path = setup.file("neb.png")
        with output_errors(path):
            plot_neb(relative, path)
        made.append("neb.png")
    summary = write_summary(setup, {
        "task": "neb", "n_atoms": len(initial), "images": len(images), "converged": converged,
        "iterations": opt.nsteps, "wall_seconds": time.perf_counter() - t0,
        "barrier_eV": float(relative.max()), "reaction_energy_eV": float(relative[-1]),
        "image_energies_eV": relative.tolist(),
        "energy_note": "expensive potential on the whole system of each relaxed image",
        **(_mixed_barrier(images) if energy_mode else {}),
        "region_counts_middle_image": images[len(images) // 2].calc.regions.counts(),
        "figures": made,
    })
    if not converged:
        raise CalculationError(f"NEB not converged within {task['max_steps']} iterations "
                               f"(fmax {task['fmax']}); outputs so far are in {run_dir}")
    return summary
