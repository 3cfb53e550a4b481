"""The LAMMPS engine on 1 and 2 MPI ranks: bcc W with one He atom (issue 5).

Expensive: W_2940_2017_2_He_JW2013 (W SNAP twojmax 8 + ZBL + W-He/He-He tables).
Cheap: W_zhou.eam.alloy (``--cheap eam``, default) or the distilled linear SNAP of
``examples/fit-w`` (``--cheap fitted-snap``; twojmax 6, so only ~2.4x cheaper).
He sits on a tetrahedral site and is the seed (``SpeciesSeeds("He")``); r_core = 4 Å,
r_blend = 4 Å, r_buff = the expensive cutoff, regions rebuilt every 10 steps, NVE,
1 fs, 300 K start.

Per size (8k = 16^3, 64k = 32^3, 250k = 50^3 bcc cells, plus He) and rank count, each
mode runs in its own ``mpirun -np P`` process (so the memory figures are its own):

- ``expensive``: all-expensive native LAMMPS ``run N`` (few steps at 250k atoms);
- ``cheap``: the cheap potential alone, native ``run N`` (the memory reference);
- ``mixed``: :class:`mlmix.engines.lammps.LammpsEngine`.

Recorded per run: median seconds per step over ``--repeats`` blocks of ``--steps``
steps (after one warm-up block), max RSS per rank and summed over ranks, RSS per atom
above the same process before the atoms were created (the interpreter, LAMMPS and
imported modules are not per-atom costs), and for ``mixed`` the mean seconds per step
inside the callback (regions, expensive, exchange) and the region counts. Derived:
speed-up = t_expensive / t_mixed, parallel efficiency t(1) / (2 t(2)), memory ratio
mixed / cheap per atom.

Run: ``python benchmarks/lammps_engine.py --sizes 8k 64k 250k --ranks 1 2``; writes
``benchmarks/lammps_engine.json`` (``--output`` to change). On a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPEATS = {"8k": 16, "64k": 32, "250k": 50}
HERE = Path(__file__).resolve().parent
A_W = 3.1803  # Å, lattice parameter of the W SNAP (examples/fit-w/report.json)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def structure(repeat: int):
    import numpy as np
    from ase.build import bulk

    atoms = bulk("W", "bcc", a=A_W, cubic=True).repeat(repeat)
    atoms.append("He")
    atoms.positions[-1] = [0.5 * A_W, 0.25 * A_W, 0.0]  # tetrahedral site
    rng = np.random.default_rng(0)
    v = rng.normal(size=atoms.positions.shape)
    v *= np.sqrt(300.0 * 8.617333e-5 / atoms.get_masses()[:, None])
    atoms.set_velocities(v - v.mean(axis=0))
    return atoms


def potentials(cheap_kind: str):
    from mlmix.potentials.lammps import LammpsPotential

    expensive = LammpsPotential.snap("W_2940_2017_2_He_JW2013.snap", species=("W", "He"))
    if cheap_kind == "eam":
        cheap = LammpsPotential.eam_alloy("W_zhou.eam.alloy", ["W"])
    else:
        root = HERE.parent / "examples" / "fit-w"
        cheap = LammpsPotential.snap(str(root / "W_linear_snap"), ["W"])
    return expensive, cheap


def native(potential, atoms, steps: int, repeats: int, comm) -> list[float]:
    """Seconds per step of a plain LAMMPS NVE run of ``potential`` on ``atoms``."""
    import numpy as np

    from mlmix._lammps_runtime import new_lammps
    from mlmix.potentials.lammps import format_number

    lmp = new_lammps()
    n = len(atoms)
    box = atoms.cell.lengths()
    species = list(potential.type_species)
    extra = [s for s in dict.fromkeys(atoms.get_chemical_symbols()) if s not in species]
    order = species + extra
    cmds = ["units metal", "atom_style atomic", "atom_modify map yes",
            (f"region b block 0 {format_number(box[0])} 0 {format_number(box[1])} 0 "
             f"{format_number(box[2])} units box"), f"create_box {len(order)} b"]
    for c in cmds:
        lmp.command(c)
    if extra:  # the cheap EAM has no He: a zero style for it, as the engine does
        for line in potential.pre_commands:
            lmp.command(line)
        sub = potential.pair_style.split()[0]
        lmp.command(f"pair_style hybrid/overlay {potential.pair_style} zero 1.0")
        for c in potential._coeffs:
            for line in c.render(potential.type_species, order, sub):
                lmp.command(line)
        lmp.command("pair_coeff * * zero")
    else:
        for line in potential.lammps_commands():
            if not line.startswith(("neighbor", "neigh_modify")):
                lmp.command(line)
    for k, s in enumerate(order):
        from ase.data import atomic_masses, atomic_numbers

        lmp.command(f"mass {k + 1} {atomic_masses[atomic_numbers[s]]}")
    lmp.command(f"neighbor {potential.skin} bin")
    lmp.command("neigh_modify every 1 delay 0 check yes")
    types = np.array([order.index(s) + 1 for s in atoms.get_chemical_symbols()])
    lmp.create_atoms(n, np.arange(1, n + 1), types, atoms.positions.ravel(),
                     (atoms.get_velocities() * 98.22694788464063).ravel())
    for c in ["fix 1 all nve", "timestep 0.001", "thermo 0", "run 0 post no"]:
        lmp.command(c)
    times = []
    for _ in range(repeats + 1):
        comm.Barrier()
        t = time.perf_counter()
        lmp.command(f"run {steps} pre no post no")
        comm.Barrier()
        times.append((time.perf_counter() - t) / steps)
    lmp.close()
    return times[1:]


def mixed(expensive, cheap, atoms, steps: int, repeats: int, comm) -> tuple[list, dict]:
    from mlmix.engines.lammps import LammpsEngine
    from mlmix.regions import RegionSpec
    from mlmix.seeds import SpeciesSeeds

    spec = RegionSpec(r_core=4.0, r_blend=4.0, r_buff=expensive.cutoff)
    engine = LammpsEngine(atoms, expensive, cheap, spec, SpeciesSeeds(["He"]), nevery=10)
    engine.run(steps)  # warm-up: imports, first rebuild, expensive instance
    times = []
    for _ in range(repeats):
        comm.Barrier()
        t = time.perf_counter()
        engine.run(steps)
        comm.Barrier()
        times.append((time.perf_counter() - t) / steps)
    info = {}
    if engine.is_root:
        hist = list(engine.history)[-steps * repeats:]
        info = {
            "counts": hist[-1].counts,
            "n_cluster": hist[-1].n_cluster,
            "n_expensive_evaluated": hist[-1].n_expensive,
            "callback_seconds_per_step": {
                k: statistics.mean(h.seconds[k] for h in hist)
                for k in ("regions", "expensive", "exchange", "callback")},
        }
    engine.close()
    return times, info


def worker(args) -> None:
    from mlmix.engines.lammps import mpi_comm

    comm = mpi_comm()
    # Per-process costs, paid before the per-atom memory is measured: the modules the
    # engine's region code imports at first use (vesin imports torch when installed).
    import scipy.sparse.csgraph
    import scipy.spatial  # noqa: F401
    import vesin  # noqa: F401

    base = current_rss_mib()
    atoms = structure(REPEATS[args.size])
    expensive, cheap = potentials(args.cheap)
    before = current_rss_mib()
    if args.mode == "mixed":
        times, info = mixed(expensive, cheap, atoms, args.steps, args.repeats, comm)
    else:
        pot = expensive if args.mode == "expensive" else cheap
        times, info = native(pot, atoms, args.steps, args.repeats, comm), {}
    peak = rss_mib()
    peaks = comm.gather(peak, root=0)
    befores = comm.gather(before, root=0)
    if comm.rank == 0:
        out = {"mode": args.mode, "size": args.size, "atoms": len(atoms), "ranks": comm.size,
               "steps": args.steps, "repeats": args.repeats,
               "seconds_per_step": statistics.median(times), "all_seconds_per_step": times,
               "max_rss_mib_per_rank": max(peaks), "max_rss_mib_total": sum(peaks),
               "rss_mib_at_start_total": sum(befores), "rss_base_mib": base,
               "rss_bytes_per_atom": (sum(peaks) - sum(befores)) * 2**20 / len(atoms),
               **info}
        print("RESULT " + json.dumps(out), flush=True)


def launch(mode: str, size: str, ranks: int, steps: int, repeats: int, cheap: str) -> dict:
    mpirun = Path(sys.executable).parent / "mpirun"
    cmd = [str(mpirun), "-np", str(ranks), sys.executable, __file__, "--worker", mode,
           "--size", size, "--steps", str(steps), "--repeats", str(repeats), "--cheap", cheap]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")


def derive(runs: list[dict], sizes: list[str], ranks_list: list[int]) -> list[dict]:
    """Ratios per size and rank count: speed-up, parallel efficiency, memory.

    Memory: ``memory_ratio_per_atom`` is mixed / cheap of the RSS growth per atom in
    one run (it includes the fixed cost of the expensive instance on the cluster, which
    does not grow with the system); ``memory_ratio_marginal`` is mixed / cheap of the
    RSS growth from the previous size to this one, per added atom: what each further
    atom costs.
    """
    summary = []
    for i, size in enumerate(sizes):
        for ranks in ranks_list:
            t = {r["mode"]: r for r in runs if r["size"] == size and r["ranks"] == ranks}
            row = {"size": size, "ranks": ranks, "atoms": t["mixed"]["atoms"],
                   "t_expensive": t["expensive"]["seconds_per_step"],
                   "t_cheap": t["cheap"]["seconds_per_step"],
                   "t_mixed": t["mixed"]["seconds_per_step"],
                   "speedup": t["expensive"]["seconds_per_step"] / t["mixed"]["seconds_per_step"],
                   "memory_ratio_per_atom": t["mixed"]["rss_bytes_per_atom"]
                   / t["cheap"]["rss_bytes_per_atom"],
                   "memory_ratio_total": t["mixed"]["max_rss_mib_total"]
                   / t["cheap"]["max_rss_mib_total"]}
            if i > 0:
                prev = {r["mode"]: r for r in runs
                        if r["size"] == sizes[i - 1] and r["ranks"] == ranks}
                growth = {m: t[m]["max_rss_mib_total"] - prev[m]["max_rss_mib_total"]
                          for m in ("mixed", "cheap")}
                row["memory_ratio_marginal"] = growth["mixed"] / growth["cheap"]
            one = [r for r in runs if r["size"] == size and r["ranks"] == 1
                   and r["mode"] == "mixed"]
            if ranks > 1 and one:
                row["parallel_efficiency"] = one[0]["seconds_per_step"] / (
                    ranks * row["t_mixed"])
            summary.append(row)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["8k", "64k", "250k"], choices=list(REPEATS))
    ap.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--cheap", default="eam", choices=["eam", "fitted-snap"])
    ap.add_argument("--steps", type=int, default=20, help="steps per timed block (mixed, cheap)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--output", default=str(HERE / "lammps_engine.json"))
    ap.add_argument("--worker", choices=["expensive", "cheap", "mixed"])
    ap.add_argument("--size", choices=list(REPEATS))
    ap.add_argument("--derive", action="store_true",
                    help="recompute the summary of an existing --output JSON and exit")
    args = ap.parse_args()
    if args.derive:
        record = json.loads(Path(args.output).read_text())
        sizes = list(dict.fromkeys(r["size"] for r in record["runs"]))
        ranks = sorted({r["ranks"] for r in record["runs"]})
        record["summary"] = derive(record["runs"], sizes, ranks)
        Path(args.output).write_text(json.dumps(record, indent=1) + "\n")
        return
    if args.worker:
        args.mode = args.worker
        worker(args)
        return
    runs = []
    for size in args.sizes:
        for ranks in args.ranks:
            for mode in ("cheap", "mixed", "expensive"):
                # all-expensive SNAP costs ~0.3 ms/atom-step: a few steps suffice
                steps = max(1, min(args.steps, int(2e5 // (REPEATS[size] ** 3 * 2)))) \
                    if mode == "expensive" else args.steps
                repeats = min(args.repeats, 2) if mode == "expensive" and size == "250k" \
                    else args.repeats
                r = launch(mode, size, ranks, steps, repeats, args.cheap)
                print(f"{size:>5} {ranks} ranks {mode:>9}: {r['seconds_per_step']:.4f} s/step, "
                      f"{r['rss_bytes_per_atom']:.0f} B/atom", flush=True)
                runs.append(r)
    summary = derive(runs, args.sizes, args.ranks)
    for row in summary:
        print(json.dumps(row), flush=True)
    record = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "python": platform.python_version()},
              "command": " ".join(["python", "benchmarks/lammps_engine.py", *sys.argv[1:]]),
              "cheap": args.cheap, "summary": summary, "runs": runs}
    Path(args.output).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
