"""Mixed MD against the cost-model bound, before and after centre truncation (issue 11).

Side by side in one process, per case, size and r_blend (0 and 4 Å; r_core = 6 Å,
r_buff = the expensive cutoff, seeds = the vacancy's first neighbours, regions rebuilt
every 10 steps and the rebuilds included in the averages):

- all-expensive: the fastest route a user has (native LAMMPS ``run N`` for SNAP,
  python-ace on all atoms through mlmix's all-atom path for ACE);
- all-cheap: native LAMMPS ``run N``;
- the bound ``N t_exp / (N1 t_exp + N2 t_cheap)`` from per-atom times
  (N1 = atoms in the expensive evaluation set, N2 = atoms in the cheap set);
  the fraction of it reached is ``(N1 t_exp + N2 t_cheap) / t_mixed`` per block of
  ``--steps`` mixed steps, each block timed right after its own references (10 steps
  of all-cheap at the size, one all-expensive step on the 8k cell for t_exp), and the
  median over ``--blocks`` blocks reported: this machine's speed drifts by 10-25 %
  within a minute, and references measured minutes away spread fractions from 0.7
  to 1.2;
- the ASE engine (:class:`~mlmix.mixing.MixedCalculator`, ASE velocity Verlet) and the
  LAMMPS engine (:class:`~mlmix.engines.lammps.LammpsEngine`, one rank), each with the
  expensive LAMMPS potential on the neighbour-shell route (``truncation="off"``, the
  route before the plugin) and on the plugin's truncated centres (``"auto"``);
- the centres the expensive potential computed per step on each route.

Cases: ``si_snap`` (Si_Zuo_JPCA2020 quadratic SNAP / Si.tersoff) and ``cu_ace``
(Cu-PBE-core-rep.ace through python-ace / Cu_u3.eam; ACE is not a LAMMPS style here, so
its two routes coincide and only the cheap side changed).

Run: ``python benchmarks/centre_truncation.py [--sizes 8k 32k 64k] [--cases ...]``;
writes ``benchmarks/centre_truncation.json``. About 15 minutes per case on one core.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from _common import NativeRun
from mixed_md import (
    CASES,
    AseBlocks,
    MdBlocks,
    all_atom_seconds_per_step,
    all_expensive_seconds_per_step,
    case_structure,
)

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


class EngineBlocks(MdBlocks):
    """LAMMPS-engine MD (NVE, one rank) that can be timed in blocks of steps, as
    :class:`mixed_md.AseBlocks`; ``r_buff`` (Å) defaults to the expensive cutoff."""

    def __init__(self, atoms, expensive, cheap, seeds, r_blend: float, nevery: int = 10,
                 correction_every: int = 1, r_buff: float | None = None,
                 r_core: float = 6.0, allow_approximate: bool = False):
        r_buff = expensive.cutoff if r_buff is None else r_buff
        spec = RegionSpec(r_core=r_core, r_blend=r_blend, r_buff=r_buff)
        self.engine = LammpsEngine(atoms, expensive, cheap, spec, IndexSeeds(seeds),
                                   nevery=nevery, correction_every=correction_every,
                                   allow_approximate=allow_approximate)
        self.engine.run(2)  # first build and instance set-up are not MD steps
        self.history = self.engine.history

    def advance(self, steps: int) -> None:
        self.engine.run(steps)

    def summary(self) -> dict:
        reports = list(self.engine.history)[-self.steps:]
        return {
            "seconds_per_step": self.wall / self.steps,
            "cpu_seconds_per_step": self.cpu / self.steps,
            "counts": reports[-1].counts,
            "centres_per_step": statistics.mean(r.n_expensive for r in reports if r.corrected),
            "cluster_atoms": reports[-1].n_cluster,
            "breakdown_seconds": {k: statistics.mean(r.seconds[k] for r in reports)
                                  for k in reports[-1].seconds},
        }

    def close(self) -> None:
        self.engine.close()


class AseEngineBlocks(AseBlocks):
    """:class:`mixed_md.AseBlocks` reporting ``centres_per_step`` as the engine does: the
    mean over the corrected steps of every block (runs before 2026-12-08 recorded the
    last step's count)."""

    def summary(self) -> dict:
        out = super().summary()
        out.pop("n_expensive_evaluated")
        reports = list(self.calc.history)[-self.steps:]
        out["centres_per_step"] = statistics.mean(r.n_expensive for r in reports if r.corrected)
        return out

    def close(self) -> None:
        pass


def engine_md(atoms, expensive, cheap, seeds, r_blend: float, steps: int, nevery: int = 10,
              correction_every: int = 1, r_buff: float | None = None,
              r_core: float = 6.0, allow_approximate: bool = False) -> dict:
    """Seconds per step of the LAMMPS engine (NVE, one rank), rebuilds included."""
    run = EngineBlocks(atoms, expensive, cheap, seeds, r_blend, nevery, correction_every,
                       r_buff, r_core, allow_approximate)
    try:
        run.block(steps)
        return run.summary()
    finally:
        run.close()


def ase_md(atoms, expensive, cheap, seeds, r_blend: float, steps: int, nevery: int = 10,
           correction_every: int = 1, **spec) -> dict:
    """:func:`mixed_md` with the centres computed; ``spec``: r_buff, r_core, allow_approximate."""
    run = AseEngineBlocks(atoms, expensive, cheap, seeds, r_blend, nevery, correction_every,
                          **spec)
    run.block(steps)
    return run.summary()


def expensive_reference(name: str, case: dict, expensive):
    """``block() -> seconds per atom-step`` of the all-expensive route on the 8k cell
    (its per-atom cost; the full-size run takes 16 s per step at 64k atoms), and a close."""
    small, _, repeat = case_structure(case, "8k")
    if isinstance(expensive, LammpsPotential):
        run = NativeRun(expensive, case["lattice"], case["crystal"][2], repeat)
        return (lambda: run.seconds_per_step(1) / run.n_atoms), run.close
    return (lambda: all_atom_seconds_per_step(expensive, small, repeats=1) / len(small),
            lambda: None)


def run_case(name: str, sizes: list[str], steps: int, blocks: int) -> list[dict]:
    """Rows of one case. The all-expensive time at the size is measured once (a long
    run, for the speed-up). Each engine/route runs ``blocks`` blocks of ``steps``
    steps, each block right after a block of the all-cheap run at the size and one
    all-expensive step on the 8k cell, and its fraction of the bound is taken from
    those two neighbours: this machine's speed drifts by 10-25 % within a minute, so
    references measured minutes apart made fractions spread from 0.7 to 1.2."""
    case = CASES[name]
    cheap = case["cheap"]()
    rows = []
    for size in sizes:
        atoms, seeds, repeat = case_structure(case, size)
        n = len(atoms)
        probe = expensive_for(name, "auto")
        t_all_exp, exp_route = all_expensive_seconds_per_step(probe, case, atoms, repeat)
        exp_block, close_exp = expensive_reference(name, case, probe)
        cheap_run = NativeRun(cheap, case["lattice"], case["crystal"][2], repeat)
        for r_blend in (0.0, 4.0):
            row = {"case": name, "size": size, "n_atoms": n, "r_blend_A": r_blend,
                   "all_expensive_route": exp_route, "blocks": blocks,
                   "steps_per_block": steps,
                   "seconds_per_step": {"all_expensive": t_all_exp},
                   "us_per_atom_step": {"expensive_at_size": t_all_exp / n * 1e6},
                   "engines": {}}
            exp_times, cheap_times = [], []
            for engine, runner in (("ase", AseEngineBlocks), ("lammps", EngineBlocks)):
                for route in ROUTES:
                    expensive = expensive_for(name, route)
                    run = runner(atoms, expensive, cheap, seeds, r_blend)
                    timed = []  # (t_exp, t_cheap, t_mixed, N1, N2) of each block
                    try:
                        for _ in range(blocks):
                            t_cheap = cheap_run.seconds_per_step(10) / n
                            t_exp = exp_block()
                            t_mixed = run.block(steps)
                            timed.append((t_exp, t_cheap, t_mixed, *run.block_sets(steps)))
                        res = run.summary()
                    finally:
                        run.close()
                    label = getattr(expensive, "route", None) or "masked backend"
                    expensive.close()
                    n1 = statistics.mean(t[3] for t in timed)  # mean sets of the blocks
                    n2 = statistics.mean(t[4] for t in timed)
                    # (the sets change along the trajectory: each block its own N1, N2)
                    per_block = [(b1 * te + b2 * tc) / tm for te, tc, tm, b1, b2 in timed]
                    t_exp = statistics.median(t[0] for t in timed)
                    t_cheap = statistics.median(t[1] for t in timed)
                    exp_times += [t[0] for t in timed]
                    cheap_times += [t[1] for t in timed]
                    bound = n * t_exp / (n1 * t_exp + n2 * t_cheap)
                    speedup = t_all_exp / res["seconds_per_step"]
                    fraction = statistics.median(per_block)
                    res.update(route=label, N1_expensive_set=n1, N2_cheap_set=n2,
                               bound=bound, speedup=speedup,
                               fraction_of_bound=fraction, fraction_of_bound_blocks=per_block)
                    row["engines"][f"{engine}/{route}"] = res
                    print(f"{name:8s} {size:>4s} N={n:6d} r_blend={r_blend:3.1f} "
                          f"{engine:6s} {label:14s} {res['seconds_per_step']:7.3f} s/step "
                          f"centres {res['centres_per_step']:7.0f} (N1 {n1:5.0f})  "
                          f"{speedup:5.1f}x, bound {bound:5.1f}x, {100 * fraction:4.0f} % of "
                          f"it (blocks {min(per_block):.2f}-{max(per_block):.2f})", flush=True)
            row["seconds_per_step"]["all_cheap"] = statistics.median(cheap_times) * n
            row["us_per_atom_step"].update(expensive=statistics.median(exp_times) * 1e6,
                                           cheap=statistics.median(cheap_times) * 1e6)
            rows.append(row)
        cheap_run.close()
        close_exp()
        probe.close()
    cheap.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["si_snap", "cu_ace"], choices=list(CASES))
    parser.add_argument("--sizes", nargs="+", default=["8k", "32k", "64k"])
    parser.add_argument("--steps", type=int, default=10,
                        help="mixed MD steps per block (one region rebuild each)")
    parser.add_argument("--blocks", type=int, default=6,
                        help="blocks per engine/route, each beside its references")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    status = plugin_status()
    rows = [row for name in args.cases for row in run_case(name, args.sizes, args.steps, args.blocks)]
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
