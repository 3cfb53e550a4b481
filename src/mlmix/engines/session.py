"""What both engines share: a run's set-up, its directory, its start and its outputs.

:mod:`mlmix.run` checks a config and builds a :class:`Setup`; an engine
(:mod:`mlmix.engines.ase`, :mod:`mlmix.engines.lammps`) runs its task from it. The
pieces here sit below both, so neither engine imports the other or the command:

* :class:`Setup`: the checked config, structure, potentials and run directory;
* :func:`md_start`: where an MD run starts (fresh momenta or the checkpoint);
* :func:`start_outputs` / :func:`start_dir`: a fresh run directory with the checked
  config, or the files of a resumed run cut back to its checkpoint;
* :func:`write_summary`, :func:`draw_figures`, :func:`interrupted`: how a run ends.

Output file names are fixed: :data:`OUTPUT_FILES` (continued by a resumed MD run) and
:data:`CHECKPOINT`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from ase import Atoms

from .. import __version__
from ..buffer import BufferScan
from ..checkpoint import atoms_from_state
from ..config import dump_toml
from ..errors import Interrupted, OutputError
from ..interruption import StopRequests
from ..mixing import MixedCalculator
from ..outputs import truncate_files
from ..potentials.base import Potential
from ..regions import RegionTracker
from ..runconfig import RunConfig, Structure, build_tracker
from ..rundir import RunDirectory, output_errors
from ..structures import thermalize

OUTPUT_FILES = {"trajectory": "trajectory.extxyz", "thermo": "thermo.log"}
"""The files an MD run appends to (cut back to the checkpoint on resume)."""
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
        return build_tracker(self.cfg, self.structure, self.expensive, self.cheap)

    def calculator(self, energy: Literal["nan", "weighted"] = "nan",
                   correction_every: int = 1, timestep: float | None = None) -> MixedCalculator:
        """The mixed calculator of [mixing]; ``energy`` (force mode) and ``timestep`` (fs,
        energy mode's momentum correction) as for :class:`MixedCalculator`."""
        kw = dict(self.cfg.mixing)
        mode = kw.pop("mode", "force")
        levels, correction = kw.pop("n_levels", None), kw.pop("energy_correction", True)
        if mode == "energy":
            kw.update(mixing="energy", n_levels=levels, energy_correction=correction,
                      timestep=timestep)
            energy = "nan"  # energy mixing has its own, real energy
        return MixedCalculator(self.expensive, self.cheap, self.tracker(), energy=energy,
                               min_distance=self.cfg.structure.get("min_distance"),
                               correction_every=correction_every, **kw)

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


def start_dir(setup: Setup) -> None:
    """A new run directory (or one mlmix made, emptied of its files) with the config."""
    if setup.outdir is None:  # pragma: no cover - run() always gives one
        raise OutputError(f"no run directory was opened for {setup.run_dir}")
    setup.outdir.open(overwrite=setup.overwrite)
    path = setup.file("config.toml")
    with output_errors(path):
        path.write_text(f"# checked by mlmix {__version__}: defaults filled in, paths "
                        "absolute\n" + dump_toml(setup.cfg.raw))


def write_summary(setup: Setup, summary: dict) -> dict:
    """Write ``summary.json`` whole (temp file, then rename) with the mlmix version and,
    for ``r_buff = "auto"``, the buffer scan; returns what was written."""
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


def draw_figures(setup: Setup, atoms: Atoms, log: Path | None) -> list[str]:
    """``regions.png`` of ``atoms`` and, given a thermo ``log``, ``thermo.png`` (when
    ``output.figures``); returns the names written."""
    if not setup.cfg.output["figures"]:
        return []
    from .. import figures

    draws = [("regions.png", lambda path: figures.plot_regions(atoms, path))]
    if log is not None:
        draws.append(("thermo.png", lambda path: figures.plot_log(log, path)))
    made = []
    for name, draw in draws:
        path = setup.file(name)
        with output_errors(path):
            draw(path)
        made.append(name)
    return made


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
    (checked to match it before any work: :func:`mlmix.run.check_run_dir`)."""
    if setup.state is None:
        start_dir(setup)
        return
    truncate_files(setup.run_dir, setup.state["files"], OUTPUT_FILES)


def interrupted(setup: Setup, step: int) -> Interrupted:
    """The error that ends a run stopped by a signal, after its checkpoint at ``step``."""
    return Interrupted(f"stopped by {setup.stop.name or 'a signal'} at step {step}; a "
                       f"checkpoint of that step is in {setup.run_dir / CHECKPOINT}. Resume with: "
                       f"{setup.resume_command}")
