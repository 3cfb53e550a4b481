"""Where the ASE engine's mixed step goes beyond the cost-model bound (issue 11).

Si vacancy, quadratic SNAP expensive on the plugin's truncated centres, Tersoff cheap,
r_core = 6 Å, r_blend 0, r_buff = the SNAP cutoff, ASE velocity Verlet, regions rebuilt
every 10 steps (as ``centre_truncation.py``). Per block of 10 steps, beside its own
references (10 native all-cheap steps at the size, one native all-expensive step on the
8k cell), it splits the wall time of a mixed step into

- the LAMMPS ``run`` commands of the expensive (cluster) and cheap instances,
- the position scatter and force gather of each,
- mlmix's Python inside ``MixedCalculator.calculate`` (the rest of its own timer),
- everything outside ``calculate``: ASE's Verlet step and calculator protocol,

and reports the median over the blocks. Timing wraps the methods of
:class:`~mlmix.potentials.lammps.LammpsPotential` (no profiler overhead).

Run: ``python benchmarks/ase_engine_overhead.py [--sizes 8k 32k 64k] [--blocks 6]``;
writes ``benchmarks/ase_engine_overhead.json``. About 2 minutes per size on one core.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

from _common import NativeRun
from centre_truncation import AseEngineBlocks, expensive_for, expensive_reference
from mixed_md import CASES, case_structure

from mlmix.potentials.lammps import LammpsPotential

STEPS = 10  # per block: one region rebuild each


@contextlib.contextmanager
def lammps_timers(totals: dict):
    """Add the seconds of every LAMMPS command, scatter and gather to
    ``totals[(what, role)]`` (role "cheap" for Tersoff, else "expensive")."""
    originals = {name: getattr(LammpsPotential, name)
                 for name in ("_command", "_scatter", "_gather")}

    def timed(what, method):
        def wrapper(self, *args, **kwargs):
            t = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                role = "cheap" if "tersoff" in self.pair_style else "expensive"
                key = (what, role)
                totals[key] = totals.get(key, 0.0) + time.perf_counter() - t
        return wrapper

    for name, method in originals.items():
        setattr(LammpsPotential, name, timed(name.strip("_"), method))
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(LammpsPotential, name, method)


def measure(size: str, blocks: int) -> dict:
    case = CASES["si_snap"]
    atoms, seeds, repeat = case_structure(case, size)
    n = len(atoms)
    expensive, cheap = expensive_for("si_snap", "auto"), case["cheap"]()
    native = NativeRun(case["cheap"](), case["lattice"], case["crystal"][2], repeat)
    probe = expensive_for("si_snap", "auto")
    exp_block, close_exp = expensive_reference("si_snap", case, probe)
    totals: dict = {}
    rows = []
    with lammps_timers(totals):
        run = AseEngineBlocks(atoms, expensive, cheap, seeds, 0.0)
        for _ in range(blocks):
            t_cheap, t_exp = native.seconds_per_step(STEPS) / n, exp_block()
            totals.clear()
            wall = run.block(STEPS)
            reports = list(run.calc.history)[-STEPS:]
            n1, n2 = run.block_sets(STEPS)
            in_calc = statistics.mean(r.seconds["total"] for r in reports)
            lammps = {f"{what}_{role}": s / STEPS for (what, role), s in totals.items()}
            rows.append({"wall": wall, "bound": n1 * t_exp + n2 * t_cheap,
                         "native_cheap_step": t_cheap * n, "expensive_share_of_bound": n1 * t_exp,
                         **lammps, "mlmix_python_in_calculate": in_calc - sum(lammps.values()),
                         "ase_outside_calculate": wall - in_calc})
    for closer in (native.close, close_exp, probe.close, expensive.close, cheap.close):
        closer()
    median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    python = median["mlmix_python_in_calculate"] + median["ase_outside_calculate"]
    transfers = sum(v for k, v in median.items() if k.startswith(("scatter", "gather")))
    return {"size": size, "n_atoms": n, "blocks": blocks, "steps_per_block": STEPS,
            "median_ms_per_step": {k: round(1e3 * v, 2) for k, v in median.items()},
            "fraction_of_bound": statistics.median(r["bound"] / r["wall"] for r in rows),
            "python_and_transfers_share_of_step": (python + transfers) / median["wall"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["8k", "32k", "64k"])
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        row = measure(size, args.blocks)
        ms = row["median_ms_per_step"]
        print(f"{size:>4s}: {ms['wall']:.1f} ms/step, bound {ms['bound']:.1f}, "
              f"{100 * row['fraction_of_bound']:.0f} % of it; Python + transfers "
              f"{100 * row['python_and_transfers_share_of_step']:.1f} % of the step", flush=True)
        rows.append(row)
    Path(args.out).write_text(json.dumps({
        "machine": platform.platform(), "cores_used": 1, "measured": time.strftime("%Y-%m-%d"),
        "case": "si_snap, r_blend 0, expensive on truncated centres (plugin), ASE engine",
        "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
