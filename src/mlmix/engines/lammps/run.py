"""`mlmix run` MD on the LAMMPS engine (``[engine] kind = "lammps"``), over MPI ranks.

Start it as one process (``mlmix run CONFIG``) or on P ranks
(``mpirun -np P mlmix run CONFIG``; needs the ``mpi`` extra). Every rank reads the
config, builds the same structure and potentials and the same
:class:`~mlmix.engines.lammps.LammpsEngine` (LAMMPS integrates and computes the cheap
potential on every rank, mlmix adds the weighted expensive correction). Rank 0 alone
writes the run directory, from the engine's callback: a failure there (a full disk)
stops every rank at the end of that step with the same error.

The outputs are those of the ASE engine (:mod:`mlmix.engines.ase`): ``config.toml``,
``trajectory.extxyz``, ``thermo.log``, ``checkpoint.npz``, ``summary.json`` and the
figures, with two differences that follow from the engine:

* the engine computes no energies, so the log's drift column is NaN: run
  ``mlmix drift RUN_DIR`` to re-evaluate the saved NVE frames with the expensive
  potential;
* ``n_cheap`` is every atom (LAMMPS evaluates the cheap pair style everywhere).

NVT uses the engine's region-weighted Langevin forces (the same stochastic equation as
:class:`mlmix.engines.langevin.RegionLangevin`, a different discretisation), whose noise
is a hash of (seed, step, atom), so a resumed run continues the uninterrupted one, on
any number of ranks.
"""

from __future__ import annotations

import math
import time

import numpy as np
from ase import Atoms

from ...checkpoint import atoms_state, save_checkpoint
from ...errors import CalculationError
from ...mts import corrected_median
from ...outputs import (
    LOG_COLUMNS,
    TableLog,
    TrajectoryWriter,
    files_state,
    progress_bar,
    temperature_K,
)
from ...runconfig import build_hysteresis, build_seeds, build_spec
from ..session import (
    CHECKPOINT,
    OUTPUT_FILES,
    Setup,
    draw_figures,
    interrupted,
    md_start,
    start_outputs,
    write_summary,
)
from .comm import mpi_comm
from .engine import LammpsEngine

LAMMPS_THERMO_NOTE = """\
drift_eV_per_ps: nan, the LAMMPS engine computes no energies (mixed forces have
none). 'mlmix drift RUN_DIR' re-evaluates saved NVE frames with the expensive
potential. n_cheap: LAMMPS evaluates the cheap pair style on every atom."""


def _output_period(out: dict) -> int:
    """Steps between engine callbacks: every output interval is a multiple of it."""
    periods = [out[k] for k in ("trajectory_every", "log_every", "checkpoint_every")
               if out[k] > 0]
    return math.gcd(*periods) if periods else 0


class _RootOutputs:
    """The files of the run, written on rank 0 from the engine's callback."""

    def __init__(self, setup: Setup, start: int, wall0: float):
        self.setup, self.out = setup, setup.cfg.output
        self.dt_fs = setup.cfg.task["timestep_fs"]
        self.steps = setup.cfg.task["steps"]
        start_outputs(setup)
        self.traj = TrajectoryWriter(setup.file(OUTPUT_FILES["trajectory"]))
        self.log = TableLog(setup.file(OUTPUT_FILES["thermo"]), LOG_COLUMNS,
                            LAMMPS_THERMO_NOTE)
        self.checkpoint = setup.file(CHECKPOINT)
        setup.file(self.checkpoint.stem + ".prev.npz")
        self.bar = progress_bar(self.steps, start, self.out["progress"])
        self.first = setup.state is None
        self.wall0, self.t_start = wall0, time.perf_counter()
        self.last_step, self.t_last = start, time.perf_counter()
        self.per_step: list[float] = []
        self.atoms: Atoms | None = None

    def _due(self, step: int, key: str) -> bool:
        every = self.out[key]
        return step == self.steps or (every > 0 and step % every == 0)

    def __call__(self, atoms: Atoms, engine) -> None:
        step, now = engine.step, time.perf_counter()
        seconds = (now - self.t_last) / (step - self.last_step) if step > self.last_step \
            else float("nan")
        if step > self.last_step:
            self.per_step.append(seconds)
        fresh, self.first = self.first, False
        self.atoms = atoms
        if fresh or self._due(step, "trajectory_every"):
            self.traj.write(atoms, step, step * self.dt_fs, atoms.get_forces())
        if fresh or self._due(step, "log_every"):
            report = engine.history[-1]
            self.log.record({
                "step": step, "time_fs": step * self.dt_fs,
                "temperature_K": temperature_K(atoms), "n_core": report.counts["core"],
                "n_weighted": int((atoms.arrays["mlmix_p"] > 0).sum()),
                "n_expensive": report.n_expensive, "n_cheap": len(atoms),
                "seconds_per_step": seconds, "drift_eV_per_ps": float("nan")})
        if fresh or self._due(step, "checkpoint_every") or self.setup.stop.requested:
            save_checkpoint(self.checkpoint, {
                "step": step,
                "atoms": atoms_state(atoms),
                "tracker": engine.tracker.state(),
                "thermostat_force": atoms.arrays.get("mlmix_thermostat_force"),
                "files": files_state({"trajectory": self.traj, "thermo": self.log}),
                "wall_seconds": self.wall_seconds(),
            })
        self.bar.update(step - self.last_step)
        self.last_step, self.t_last = step, time.perf_counter()

    def wall_seconds(self) -> float:
        return self.wall0 + time.perf_counter() - self.t_start

    def close(self) -> None:
        self.bar.close()
        self.traj.close()
        self.log.close()


def run_md_lammps(setup: Setup) -> dict:
    """MD of a checked config on the LAMMPS engine (collective: every rank calls it).

    Returns the summary on rank 0 (also written to ``summary.json``), ``{}`` on the
    other ranks.
    """
    cfg, task, state = setup.cfg, setup.cfg.task, setup.state
    comm = mpi_comm()
    ranks = comm.size if comm is not None else 1
    is_root = comm is None or comm.rank == 0
    atoms, start, wall0 = md_start(setup)
    engine = LammpsEngine(
        atoms, setup.expensive, setup.cheap, build_spec(cfg, setup.expensive),
        build_seeds(cfg.seeds, setup.structure), nevery=cfg.regions["nevery"],
        hysteresis=build_hysteresis(cfg), skin=cfg.regions["skin"],
        ensemble=task["ensemble"], timestep=task["timestep_fs"],
        temperature=task["temperature_K"], friction=task.get("friction_per_fs", 0.01),
        thermostat_weights=task.get("thermostat_weights", "cheap"), seed=task["seed"],
        allow_approximate=cfg.mixing["allow_approximate"], start_step=start,
        tracker_state=state["tracker"] if state else None,
        thermostat_force=state.get("thermostat_force") if state else None, comm=comm,
        correction_every=task["correction_every"])
    outputs: list[_RootOutputs] = []  # made on rank 0 inside the engine's error handling

    def first(snapshot: Atoms, eng) -> None:
        outputs.append(_RootOutputs(setup, start, wall0))
        if state is None:
            outputs[0](snapshot, eng)

    try:
        engine.run(0, callback=first)  # first forces: input errors surface, nothing written
        if task["steps"] > start:
            with setup.stop:
                done = engine.run(task["steps"] - start, callback=lambda a, e: outputs[0](a, e),
                                  every=_output_period(cfg.output),
                                  should_stop=lambda: setup.stop.requested)
            if start + done < task["steps"]:  # every rank: stopped by a signal on rank 0
                raise interrupted(setup, start + done)
        if not is_root:
            return {}
        out = outputs[0]
        out.close()  # flushed and closed before the figures read the log
        final, regions = out.atoms, engine.tracker.regions if engine.tracker else None
        if final is None or regions is None:  # pragma: no cover - the first callback sets both
            raise CalculationError("the LAMMPS engine finished without a snapshot")
        made = draw_figures(setup, final, setup.run_dir / "thermo.log")
        history = list(engine.history)
        return write_summary(setup, {
            "task": "md", "engine": "lammps", "mpi_ranks": ranks,
            "ensemble": task["ensemble"], "n_atoms": len(final), "steps": task["steps"],
            "resumed_from_step": start if state else None,
            "timestep_fs": task["timestep_fs"],
            "final_temperature_K": temperature_K(final),
            "seconds_per_step_median": float(np.median(out.per_step)) if out.per_step
            else None,
            "wall_seconds": out.wall_seconds(),
            "correction_every": task["correction_every"],
            "expensive_evaluated_median": corrected_median(history),
            "cheap_evaluated_median": float(len(final)),
            "region_counts_final": regions.counts(),
            "drift_estimate_eV_per_ps": None,
            "drift_note": ("the LAMMPS engine computes no energies: run 'mlmix drift' for "
                           "the expensive re-evaluation") if task["ensemble"] == "nve"
                          else "not defined under a thermostat",
            "figures": made,
        })
    finally:
        if outputs:
            outputs[0].close()
        engine.close()
