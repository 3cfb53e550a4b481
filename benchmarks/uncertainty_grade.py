"""What the uncertainty classifier costs (issue 16): grading every atom of a cell against
one force evaluation of the cheap and of the expensive potential, side by side.

Cell: bcc W, 8,192 atoms (16^3 cubic cells, a = 3.1805 Å), Gaussian displacements
(sigma 0.05 Å, seed 0), a vacancy at atom 0. Models: the W UF3 of
``studies/potentials/W_uf3`` with the uncertainty file ``mlmix fit`` wrote (grade: mlmix's
numpy featuriser, then the active-set product), and a linear SNAP (twojmax 6) whose
active sets are built here from 30 thermal 54-atom frames (grade: LAMMPS ``compute
sna/atom``). Expensive: W_2940_2017_2 (SNAP twojmax 8 + ZBL). Each timing: median of
``--repeats`` calls after one warm-up, wall and CPU seconds.

Run: ``python benchmarks/uncertainty_grade.py``; writes ``benchmarks/uncertainty_grade.json``.
About a minute.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from ase.build import bulk

from mlmix.fitting.snap import SnapModel
from mlmix.fitting.uncertainty import Uncertainty, build_uncertainty, file_beside
from mlmix.potentials.lammps import LammpsPotential

HERE = Path(__file__).resolve().parent
W_UF3 = HERE.parent / "studies" / "potentials" / "W_uf3" / "W_uf3.uf3"
A_W = 3.1805


def thermal(repeat: int, seed: int, vacancy: bool):
    at = bulk("W", "bcc", a=A_W, cubic=True).repeat(repeat)
    at.positions += np.random.default_rng(seed).normal(0.0, 0.05, at.positions.shape)
    if vacancy:
        del at[0]
    return at


def timed(fn, repeats: int) -> dict:
    fn()  # warm-up (LAMMPS instance, neighbour library)
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"seconds": statistics.median(wall), "cpu_seconds": statistics.median(cpu)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "uncertainty_grade.json")
    args = parser.parse_args(argv)
    atoms = thermal(16, 0, True)
    uf3 = Uncertainty.load(file_beside(W_UF3))
    snap_model = SnapModel(["W"], twojmax=6)
    snap = build_uncertainty(snap_model, [thermal(3, s, False) for s in range(30)],
                             [thermal(3, 100 + s, False) for s in range(6)],
                             model_spec={"family": "snap", "twojmax": 6})
    cheap = LammpsPotential.uf3(W_UF3, ["W"])
    expensive = LammpsPotential.from_include("W_2940_2017_2.snap", ["W"])
    try:
        rows = {
            "grade_uf3": timed(lambda: uf3.grade(atoms), args.repeats),
            "grade_snap_twojmax6": timed(lambda: snap.grade(atoms), args.repeats),
            "forces_cheap_uf3": timed(lambda: cheap.evaluate(atoms), args.repeats),
            "forces_expensive_snap_zbl": timed(lambda: expensive.evaluate(atoms), args.repeats),
        }
        flagged = {"uf3": int(np.sum(uf3.grade(atoms) >= uf3.threshold)),
                   "snap_twojmax6": int(np.sum(snap.grade(atoms) >= snap.threshold))}
    finally:
        cheap.close()
        expensive.close()
        uf3.close()
        snap.close()
    exp = rows["forces_expensive_snap_zbl"]["seconds"]
    result = {
        "command": "python benchmarks/uncertainty_grade.py",
        "machine": platform.node(), "python": platform.python_version(),
        "repeats": args.repeats, "atoms": len(atoms),
        "rows": rows,
        "ratios_to_one_expensive_evaluation": {k: v["seconds"] / exp for k, v in rows.items()},
        "atoms_at_or_above_threshold": flagged,
        "thresholds": {"uf3": uf3.threshold, "snap_twojmax6": snap.threshold},
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
