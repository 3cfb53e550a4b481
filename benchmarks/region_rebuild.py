"""Time and memory to rebuild regions for ~10^6 atoms with 10 seeds.

Target (issue 2): under 1 s and under 1 GiB. Run: ``python benchmarks/region_rebuild.py``;
writes ``benchmarks/region_rebuild.json``. Memory is the peak of Python allocations
during one rebuild (tracemalloc; numpy and scipy report through it), on top of the
positions array itself.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np
from ase.build import bulk

from mlmix.regions import RegionSpec, region_arrays


def run(repeats: int = 5) -> dict:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((63, 63, 63))
    atoms.rattle(0.05, seed=1)
    positions = atoms.positions.copy()
    cell = atoms.cell.array
    rng = np.random.default_rng(0)
    results = {}
    for layout in ("scattered", "clustered"):
        seeds = np.zeros(len(atoms), bool)
        if layout == "scattered":
            seeds[rng.choice(len(atoms), 10, replace=False)] = True
        else:  # ten seeds around one point, like the neighbours of a defect
            d = np.linalg.norm(positions - positions[len(atoms) // 2], axis=1)
            seeds[np.argsort(d)[:10]] = True
        spec = RegionSpec(r_core=6.0, r_blend=4.0, r_buff=7.4)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            regions = region_arrays(positions, cell, True, seeds, spec)
            times.append(time.perf_counter() - t)
        tracemalloc.start()
        region_arrays(positions, cell, True, seeds, spec)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        results[layout] = {
            "seconds_median": statistics.median(times),
            "seconds_all": times,
            "peak_memory_MiB": peak / 2**20,
            "counts": regions.counts(),
        }
    return {
        "n_atoms": len(atoms),
        "n_seeds": 10,
        "radii_A": {"r_core": 6.0, "r_blend": 4.0, "r_buff": 7.4},
        "machine": platform.platform(),
        "targets": {"seconds": 1.0, "memory_MiB": 1024},
        "results": results,
    }


if __name__ == "__main__":
    out = run()
    path = Path(__file__).with_suffix(".json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
