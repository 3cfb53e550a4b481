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
from dataclasses import replace
from pathlib import Path

import numpy as np

from ._lammps_runtime import mpi_world_rank
from .buffer import scan_buffers
from .checkpoint import load_latest_checkpoint
from .config import Problems, load_toml
from .engines.session import CHECKPOINT, OUTPUT_FILES, Setup
from .errors import ConfigurationError, OutputError
from .outputs import files_problems
from .potentials.base import Potential, buffer_problem, default_r_buff, exact_r_buff
from .potentials.factory import make_potential
from .runconfig import (
    RunConfig,
    Structure,
    build_seeds,
    build_spec,
    build_structure,
    check_undescribed,
    parse_run_config,
)
from .rundir import RunDirectory, output_error

RESUMABLE_KEYS = ("steps",)  # task keys a resumed run may change


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


def run_directory(cfg: RunConfig, base: Path, output: str | Path | None) -> Path:
    """Where a run writes: ``output``, else ``output.directory`` relative to ``base`` (the
    config's folder)."""
    return Path(output) if output is not None else base / cfg.output["directory"]


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
    run_dir = run_directory(cfg, base, output)
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
            return _task(cfg)(setup)
        except OSError as exc:  # a write failed (full disk, folder gone read-only)
            error = exc if isinstance(exc, OutputError) else output_error(run_dir, exc)
            raise OutputError(f"{error}. {_after_write_error(setup)}") from None
        finally:
            setup.close()


def _task(cfg: RunConfig):
    """The engine's function that runs ``cfg``'s task (imported on demand: the LAMMPS
    engine needs mpi4py only when it is used)."""
    if cfg.engine["kind"] == "lammps":
        from .engines.lammps.run import run_md_lammps

        return run_md_lammps
    from .engines import ase

    return {"md": ase.run_md, "relax": ase.run_relax, "neb": ase.run_neb}[cfg.task["kind"]]


def _after_write_error(setup: Setup) -> str:
    if setup.cfg.task["kind"] == "md" and (setup.run_dir / CHECKPOINT).is_file():
        return (f"The last checkpoint ({setup.run_dir / CHECKPOINT}) is intact: free space "
                f"(or make the folder writable), then resume with: {setup.resume_command}")
    return "Free space (or make the folder writable) and start the run again with --overwrite"


# --------------------------------------------------------------------------- CLI


def main(args) -> int:
    summary = run(args.config, resume=args.resume, overwrite=args.overwrite,
                  output=args.output, progress=True if args.progress else None)
    keys = [k for k in ("task", "engine", "mpi_ranks", "n_atoms", "steps",
                        "seconds_per_step_median", "converged", "barrier_eV",
                        "drift_estimate_eV_per_ps") if k in summary]
    if summary:  # {} on MPI ranks other than 0
        where = run_directory(load_run_config(args.config), Path(args.config).parent,
                              args.output)
        print("; ".join(f"{k} = {summary[k]}" for k in keys) + f"; outputs in {where}")
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
