"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import time

from mlmix._lammps_runtime import new_lammps
from mlmix.potentials.lammps import LammpsPotential


class NativeRun:
    """Plain LAMMPS NVE on a vacancy cell, kept alive so that it can be timed in blocks
    between other measurements (``run N pre no post no`` continues it)."""

    def __init__(self, potential: LammpsPotential, lattice: str, a: float, repeat: int):
        self.lmp = new_lammps()
        for cmd in [
            "units metal", "atom_style atomic",
            f"lattice {lattice} {a}",
            f"region box block 0 {repeat} 0 {repeat} 0 {repeat}",
            "create_box 1 box", "create_atoms 1 box",
            "group vacancy id 1", "delete_atoms group vacancy",
            *potential.lammps_commands(),
            "velocity all create 300 1 mom yes", "fix nve all nve", "timestep 0.001",
            "thermo 0", "run 1",
        ]:
            self.lmp.command(cmd)
        self.n_atoms = int(self.lmp.get_natoms())

    def seconds_per_step(self, steps: int) -> float:
        t = time.perf_counter()
        self.lmp.command(f"run {steps} pre no post no")
        return (time.perf_counter() - t) / steps

    def close(self) -> None:
        self.lmp.close()


def native_lammps_seconds_per_step(potential: LammpsPotential, lattice: str, a: float,
                                   repeat: int, steps: int) -> float:
    """Seconds per step of plain LAMMPS NVE ``run N`` on the same vacancy cell."""
    run = NativeRun(potential, lattice, a, repeat)
    try:
        return run.seconds_per_step(steps)
    finally:
        run.close()
