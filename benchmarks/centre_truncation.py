"""Mixed MD against the cost-model bound, before and after centre truncation (issue 11).

Side by side in one process, per case, size and r_blend (0 and 4 Å; r_core = 6 Å,
r_buff = the expensive cutoff, seeds = the vacancy's first neighbours, regions rebuilt
every 10 steps and the rebuilds included in the averages):

- all-expensive: the fastest route a user has (native LAMMPS ``run N`` for SNAP,
  python-ace on all atoms through mlmix's all-atom path for ACE);
- all-cheap: native LAMMPS ``run N``;
- the bound ``N t_exp / (N1 t_exp + N2 t_cheap)`` from those per-atom times
  (N1 = atoms in the expensive evaluation set, N2 = atoms in the cheap set);
- the ASE engine (:class:`~mlmix.mixing.MixedCalculator`, ASE velocity Verlet) and the
  LAMMPS engine (:class:`~mlmix.engines.lammps.LammpsEngine`, one rank), each with the
  expensive LAMMPS potential on the neighbour-shell route (``truncation="off"``, the
  route before the plugin) and on the plugin's truncated centres (``"auto"``);
- the centres the expensive potential computed per step on each route.

Cases: ``si_snap`` (Si_Zuo_JPCA2020 quadratic SNAP / Si.tersoff) and ``cu_ace``
(Cu-PBE-core-rep.ace through python-ace / Cu_u3.eam; ACE is not a LAMMPS style here, so
its two routes coincide and only the cheap side changed).

Run: ``python benchmarks/centre_truncation.py [--sizes 8k 32k 64k] [--cases ...]``;
writes ``benchmarks/centre_truncation.json``. About 30 minutes on one core.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from _common import native_lammps_seconds_per_step
from mixed_md import CASES, all_expensive_seconds_per_step, case_structure, mixed_md

from mlmix.engines.lammps import LammpsEngine
from mlmix.potentials.lammps import LammpsPotential
from mlmix.potentials.lammps_plugin import plugin_status
from mlmix.regions import RegionSpec
from mlmix.seeds import IndexSeeds

ROUTES = ("off", "auto")  # LammpsPotential(truncation=...) of the expensive potential


def expensive_for(case: str, truncation: str):
    if case == "si_snap":
        return LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic", ["Si"], truncation=truncation)
    return CASES[case]["expensive"]()


def engine_md(atoms, expensive, cheap, seeds, r_blend: float, steps: int, nevery: int = 10,
              correction_every: int = 1, r_buff: float | None = None,
              r_core: float = 6.0, allow_approximate: bool = False) -> dict:
    """Seconds per step of the LAMMPS engine (NVE, one rank), rebuilds included.
    ``r_buff`` (Å) defaults to the expensive cutoff."""
    r_buff = expensive.cutoff if r_buff is None else r_buff
    spec = RegionSpec(r_core=r_core, r_blend=r_blend, r_buff=r_buff)
    engine = LammpsEngine(atoms, expensive, cheap, spec, IndexSeeds(seeds), nevery=nevery,
                          correction_every=correction_every, allow_approximate=allow_approximate)
    try:
        engine.run(2)  # first build and instance set-up are not MD steps
        t, c = time.perf_counter(), time.process_time()
        engine.run(steps)
        wall, cpu = (time.perf_counter() - t) / steps, (time.process_time() - c) / steps
        reports = list(engine.history)[-steps:]
        return {
            "seconds_per_step": wall, "cpu_seconds_per_step": cpu,
            "counts": reports[-1].counts,
            "centres_per_step": statistics.mean(r.n_expensive for r in reports if r.corrected),
            "cluster_atoms": reports[-1].n_cluster,
            "breakdown_seconds": {k: statistics.mean(r.seconds[k] for r in reports)
                                  for k in reports[-1].seconds},
        }
    finally:
        engine.close()


def ase_md(atoms, expensive, cheap, seeds, r_blend: float, steps: int, nevery: int = 10,
           correction_every: int = 1, **spec) -> dict:
    """:func:`mixed_md` with the centres computed; ``spec``: r_buff, r_core, allow_approximate."""
    out = mixed_md(atoms, expensive, cheap, seeds, r_blend, steps, nevery, correction_every,
                   **spec)
    out["centres_per_step"] = out.pop("n_expensive_evaluated")
    return out


def run_case(name: str, sizes: list[str], steps: int) -> list[dict]:
    case = CASES[name]
    cheap = case["cheap"]()
    rows = []
    for size in sizes:
        atoms, seeds, repeat = case_structure(case, size)
        n = len(atoms)
        probe = expensive_for(name, "auto")
        t_all_exp, exp_route = all_expensive_seconds_per_step(probe, case, atoms, repeat)
        probe.close()
        t_all_cheap = native_lammps_seconds_per_step(cheap, case["lattice"], case["crystal"][2],
                                                     repeat, 20)
        t_exp, t_cheap = t_all_exp / n, t_all_cheap / n
        for r_blend in (0.0, 4.0):
            row = {"case": name, "size": size, "n_atoms": n, "r_blend_A": r_blend,
                   "all_expensive_route": exp_route,
                   "seconds_per_step": {"all_expensive": t_all_exp, "all_cheap": t_all_cheap},
                   "us_per_atom_step": {"expensive": t_exp * 1e6, "cheap": t_cheap * 1e6},
                   "engines": {}}
            for engine, fn in (("ase", ase_md), ("lammps", engine_md)):
                for route in ROUTES:
                    expensive = expensive_for(name, route)
                    res = fn(atoms, expensive, cheap, seeds, r_blend, steps)
                    label = getattr(expensive, "route", None) or "masked backend"
                    expensive.close()
                    n1, n2 = res["counts"]["expensive"], res["counts"]["cheap"]
                    bound = n * t_exp / (n1 * t_exp + n2 * t_cheap)
                    speedup = t_all_exp / res["seconds_per_step"]
                    res.update(route=label, N1_expensive_set=n1, N2_cheap_set=n2,
                               bound=bound, speedup=speedup, fraction_of_bound=speedup / bound)
                    row["engines"][f"{engine}/{route}"] = res
                    print(f"{name:8s} {size:>4s} N={n:6d} r_blend={r_blend:3.1f} "
                          f"{engine:6s} {label:14s} {res['seconds_per_step']:7.3f} s/step "
                          f"centres {res['centres_per_step']:7.0f} (N1 {n1:5d})  "
                          f"{speedup:5.1f}x of bound {bound:5.1f}x "
                          f"({100 * speedup / bound:4.0f} %)", flush=True)
            rows.append(row)
    cheap.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["si_snap", "cu_ace"], choices=list(CASES))
    parser.add_argument("--sizes", nargs="+", default=["8k", "32k", "64k"])
    parser.add_argument("--steps", type=int, default=20, help="mixed MD steps per run")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    status = plugin_status()
    rows = [row for name in args.cases for row in run_case(name, args.sizes, args.steps)]
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    # rows (case, size) not re-run are kept, with the note of when they were measured
    rerun = {(name, size) for name in args.cases for size in args.sizes}
    kept = [r for r in previous.get("rows", []) if (r["case"], r["size"]) not in rerun]
    rows = sorted(kept + rows, key=lambda r: (r["case"], r["n_atoms"], r["r_blend_A"]))
    measured = {}  # "case size" -> when (older files note a date per case)
    for r in kept:
        old = previous.get("measured_by_case", {})
        key = f"{r['case']} {r['size']}"
        measured[key] = old.get(key, old.get(r["case"], "unknown"))
    measured.update({f"{name} {size}": time.strftime("%Y-%m-%d")
                     for name, size in sorted(rerun)})
    result = {
        "machine": platform.platform(),
        "cores_used": 1,
        "plugin": str(status.library) if status.available else status.problem,
        "targets": {"si_snap": ">= 0.95 of the bound on both engines at every size",
                    "cu_ace": ">= 0.90 of the bound", "lammps_engine_64k": "within 1.1x of the bound"},
        "measured_by_case": measured,
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
