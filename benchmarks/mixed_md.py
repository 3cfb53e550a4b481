"""Mixed MD against all-expensive and all-cheap, side by side in one run (issue 2).

Two cases, each at about 8k, 32k and 64k atoms, a vacancy whose neighbours are the
seeds, r_core = 6 Å, r_blend = 0 and 4 Å, r_buff = the expensive cutoff:

- ``cu_ace``: fcc Cu, expensive = ACE Cu-PBE-core-rep.ace through python-ace (masked),
  cheap = Cu_u3.eam (LAMMPS);
- ``si_snap``: diamond Si, expensive = Si_Zuo_JPCA2020 quadratic SNAP, cheap =
  Si.tersoff (both LAMMPS).

Per case and size it times, in the same process: (a) all-expensive by the fastest route
a user has (native LAMMPS ``run N`` for SNAP; python-ace over all atoms, through
mlmix's all-atom path, which is faster than pyace's own ASE calculator, for ACE);
(b) mlmix mixed MD (ASE velocity Verlet, regions rebuilt every 10 steps, the rebuild
included in the average); (c) all-cheap by native LAMMPS ``run N``. From the per-atom
times of (a) and (c) it computes the cost-model bound
``S_ideal = N t_exp / (N1 t_exp + N2 t_cheap)`` (N1 = atoms in the expensive
evaluation set, N2 = atoms in the cheap set) and the fraction of it reached.

Run: ``python benchmarks/mixed_md.py [--sizes 8k 32k 64k] [--cases cu_ace si_snap]``;
writes ``benchmarks/mixed_md.json``. Takes about 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from _common import native_lammps_seconds_per_step
from ase import Atoms, units
from ase.md.verlet import VelocityVerlet

from mlmix.mixing import MixedCalculator
from mlmix.potentials.ace import AcePotential
from mlmix.potentials.lammps import LammpsPotential
from mlmix.regions import RegionSpec, RegionTracker
from mlmix.seeds import IndexSeeds
from mlmix.structures import thermalize, vacancy_supercell

CASES = {
    "cu_ace": {
        "crystal": ("Cu", "fcc", 3.62),
        "repeats": {"8k": 13, "32k": 20, "64k": 25},
        "lattice": "fcc",
        "expensive": lambda: AcePotential("Cu-PBE-core-rep.ace"),
        "cheap": lambda: LammpsPotential.eam("Cu_u3.eam", ["Cu"]),
        "bond": 2.6,
    },
    "si_snap": {
        "crystal": ("Si", "diamond", 5.43),
        "repeats": {"8k": 10, "32k": 16, "64k": 20},
        "lattice": "diamond",
        "expensive": lambda: LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic", ["Si"]),
        "cheap": lambda: LammpsPotential.tersoff("Si.tersoff", ["Si"]),
        "bond": 2.4,
    },
}


def all_atom_seconds_per_step(potential, atoms: Atoms, repeats: int) -> float:
    """Median seconds of one all-atom force call (one MD step's worth of work)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        potential.evaluate(atoms)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def case_structure(case: dict, size: str) -> tuple[Atoms, list[int], int]:
    """The vacancy cell of a case at ``size`` (300 K velocities), its seeds, its repeat."""
    symbol, crystal, a = case["crystal"]
    repeat = case["repeats"][size]
    atoms, seeds = vacancy_supercell(symbol, crystal, a, repeat, case["bond"])
    thermalize(atoms, 300.0, seed=1)
    return atoms, seeds, repeat


def all_expensive_seconds_per_step(expensive, case: dict, atoms: Atoms,
                                   repeat: int) -> tuple[float, str]:
    """Seconds per step of the fastest all-expensive route a user has, and its name."""
    if isinstance(expensive, LammpsPotential):
        lattice, a = case["lattice"], case["crystal"][2]
        return (native_lammps_seconds_per_step(expensive, lattice, a, repeat, 2),
                "native LAMMPS run N")
    return (all_atom_seconds_per_step(expensive, atoms, repeats=2),
            "python-ace, all atoms (mlmix all-atom path)")


class MdBlocks:
    """MD timed in blocks of steps that continue one trajectory. Subclasses set
    ``history`` (the per-step reports) and ``advance(steps)``."""

    history: Any
    steps, wall, cpu = 0, 0.0, 0.0

    def advance(self, steps: int) -> None:
        raise NotImplementedError

    def block(self, steps: int) -> float:
        """Run ``steps`` steps; their wall seconds per step."""
        t, c = time.perf_counter(), time.process_time()
        self.advance(steps)
        wall = time.perf_counter() - t
        self.steps, self.wall, self.cpu = (self.steps + steps, self.wall + wall,
                                           self.cpu + time.process_time() - c)
        return wall / steps

    def block_sets(self, steps: int) -> tuple[float, float]:
        """Mean sizes of the expensive and cheap sets over the last ``steps`` steps."""
        reports = list(self.history)[-steps:]
        return (statistics.mean(r.counts["expensive"] for r in reports),
                statistics.mean(r.counts["cheap"] for r in reports))


class AseBlocks(MdBlocks):
    """Mixed velocity-Verlet MD (ASE engine) in blocks; ``r_buff`` (Å) defaults to the
    expensive cutoff."""

    def __init__(self, atoms: Atoms, expensive, cheap, seeds, r_blend: float,
                 nevery: int = 10, correction_every: int = 1, r_buff: float | None = None,
                 r_core: float = 6.0, allow_approximate: bool = False):
        r_buff = expensive.cutoff if r_buff is None else r_buff
        spec = RegionSpec(r_core=r_core, r_blend=r_blend, r_buff=r_buff)
        self.calc = MixedCalculator(expensive, cheap,
                                    RegionTracker(spec, IndexSeeds(seeds), nevery=nevery),
                                    correction_every=correction_every,
                                    allow_approximate=allow_approximate)
        self.correction_every = correction_every
        self.atoms = atoms.copy()
        self.atoms.calc = self.calc
        self.atoms.get_forces()  # first build and instance set-up are not MD steps
        self.md = VelocityVerlet(self.atoms, timestep=1.0 * units.fs)
        self.history = self.calc.history

    def advance(self, steps: int) -> None:
        self.md.run(steps)

    def summary(self) -> dict:
        """Per-step means over every block (region rebuilds included)."""
        reports = list(self.calc.history)[-self.steps:]
        k = self.correction_every
        return {
            "seconds_per_step": self.wall / self.steps,
            "cpu_seconds_per_step": self.cpu / self.steps,
            "counts": reports[-1].counts,
            "n_expensive_evaluated": max(r.n_expensive for r in reports[-k:]),
            "breakdown_seconds": {
                key: statistics.mean(r.seconds[key] for r in reports)
                for key in ("regions", "expensive", "cheap", "total")
            },
        }


def mixed_md(atoms: Atoms, expensive, cheap, seeds, r_blend: float, steps: int,
             nevery: int = 10, correction_every: int = 1, r_buff: float | None = None,
             r_core: float = 6.0, allow_approximate: bool = False) -> dict:
    """Time mixed velocity-Verlet MD; per-step mean includes the region rebuilds.
    ``r_buff`` (Å) defaults to the expensive cutoff."""
    run = AseBlocks(atoms, expensive, cheap, seeds, r_blend, nevery, correction_every,
                    r_buff, r_core, allow_approximate)
    run.block(steps)
    return run.summary()


def run_case(name: str, sizes: list[str], mixed_steps: int) -> list[dict]:
    case = CASES[name]
    symbol, crystal, a = case["crystal"]
    expensive, cheap = case["expensive"](), case["cheap"]()
    rows = []
    for size in sizes:
        atoms, seeds, repeat = case_structure(case, size)
        n = len(atoms)
        t_all_exp, route = all_expensive_seconds_per_step(expensive, case, atoms, repeat)
        t_all_cheap = native_lammps_seconds_per_step(cheap, case["lattice"], a, repeat, 20)
        t_exp, t_cheap = t_all_exp / n, t_all_cheap / n
        for r_blend in (0.0, 4.0):
            mixed = mixed_md(atoms, expensive, cheap, seeds, r_blend, mixed_steps)
            n1, n2 = mixed["counts"]["expensive"], mixed["counts"]["cheap"]
            ideal = n * t_exp / (n1 * t_exp + n2 * t_cheap)
            speedup = t_all_exp / mixed["seconds_per_step"]
            row = {
                "case": name, "size": size, "n_atoms": n, "r_blend_A": r_blend,
                "r_buff_A": expensive.cutoff, "expensive_route": route,
                "seconds_per_step": {
                    "all_expensive": t_all_exp, "mixed": mixed["seconds_per_step"],
                    "all_cheap": t_all_cheap,
                },
                "us_per_atom_step": {"expensive": t_exp * 1e6, "cheap": t_cheap * 1e6},
                "N1_expensive_set": n1, "N2_cheap_set": n2,
                "n_expensive_evaluated": mixed["n_expensive_evaluated"],
                "speedup": speedup, "ideal_speedup": ideal,
                "fraction_of_ideal": speedup / ideal,
                "mixed_breakdown_seconds": mixed["breakdown_seconds"],
            }
            rows.append(row)
            print(f"{name:8s} {size:>4s} N={n:6d} r_blend={r_blend:3.1f}  "
                  f"exp {t_all_exp:7.3f}s  mixed {mixed['seconds_per_step']:6.3f}s  "
                  f"cheap {t_all_cheap:6.4f}s  speed-up {speedup:5.1f}x  "
                  f"ideal {ideal:5.1f}x  ({100 * speedup / ideal:4.0f}%)", flush=True)
    expensive.close()
    cheap.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--sizes", nargs="+", default=["8k", "32k", "64k"])
    parser.add_argument("--steps", type=int, default=10, help="mixed MD steps per run")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    rows = [row for name in args.cases for row in run_case(name, args.sizes, args.steps)]
    result = {
        "machine": platform.platform(),
        "cores_used": 1,
        "targets": {
            "cu_ace_fraction_of_ideal": ">= 0.8 at every size",
            "speedup_at_32k": ">= 11 in both cases",
        },
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
