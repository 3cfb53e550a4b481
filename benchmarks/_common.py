"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import time

from mlmix._lammps_runtime import new_lammps
from mlmix.potentials.lammps import LammpsPotential


def native_lammps_seconds_per_step(potential: LammpsPotential, lattice: str, a: float,
                                   repeat: int, steps: int) -> float:
    """Seconds per step of plain LAMMPS NVE ``run N`` on the same vacancy cell."""
    lmp = new_lammps()
    try:
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
            lmp.command(cmd)
        t = time.perf_counter()
        lmp.command(f"run {steps} pre no post no")
        return (time.perf_counter() - t) / steps
    finally:
        lmp.close()
