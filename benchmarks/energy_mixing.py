"""Energy mixing against force mixing: NVE drift, stress, core-force error and cost
(issue 15; method in ``mlmix.energy_mixing``).

Si vacancy, 4,095 atoms (8^3 diamond cells, one site empty), SW expensive, Tersoff
cheap, seeds = the vacancy's four neighbours, r_core 6 Å, r_blend 3 Å, r_buff 4 Å (above
the SW cutoff, for force mixing), dt = 1 fs, velocities drawn at 300 K.

- ``nve``: 10 ps of NVE (``--quick``: 1 ps), E + K sampled every 20 steps, for
  all-expensive SW; force mixing (its E is the expensive energy of the whole cell,
  re-evaluated at each sample: mixed forces have no energy of their own); energy mixing
  with regions fixed; energy mixing with regions rebuilt every 10 steps, with and
  without the momentum correction. Drift = least-squares slope of E + K (eV/ps) with
  its standard error; ``std`` = standard deviation of E + K about the line.
- ``stress``: energy mixing's ``get_stress()`` against central differences of its
  energy under the six strains (h = 1e-5), on a thermal snapshot.
- ``core_error``: max and RMS |F_mixed - F_SW| over the core (p = 1) and over the
  exact core (deeper than the reach) for r_core = 4..10 Å, both modes, r_blend 0.
- ``cost``: seconds per MD step (medians of ``--repeats`` runs of 20 steps, wall and
  CPU) of force and energy mixing, SW/Tersoff at r_blend 0 and 3 Å, quadratic SNAP
  with the linear SNAP distilled from it (examples/fit-si) at r_blend 0, and quadratic
  SNAP with mlmix's demo UF3 at r_blend 3 Å, the UF3 weighted by the plugin's levels
  and by its own descriptor rows (``LinearWeighted``, the exact-weight route; here on
  the same 16 levels, so both compute the same energy); and both exact
  (``SnapWeighted``, one atom type per weight, and ``LinearWeighted``) with unquantised
  weights (``n_levels = 0``).

Run: ``python benchmarks/energy_mixing.py [--quick] [--only cost]``; writes
``benchmarks/energy_mixing.json`` (``--only cost`` re-measures the cost and keeps the
other sections). About 15 minutes on one core.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from mlmix import IndexSeeds, MixedCalculator, RegionSpec, RegionTracker
from mlmix.energy_mixing import exact_core
from mlmix.potentials.base import PotentialCalculator
from mlmix.potentials.lammps import LammpsPotential
from mlmix.potentials.linear_weighted import LinearWeighted
from mlmix.potentials.snap_weighted import SnapWeighted
from mlmix.structures import vacancy_supercell
from mlmix.testing import finite_difference_stress

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REPEAT, TEMPERATURE, DT_FS = 8, 300.0, 1.0
R_CORE, R_BLEND, R_BUFF = 6.0, 3.0, 4.0
SAMPLE_EVERY = 20


def sw():
    return LammpsPotential.sw("Si.sw", ["Si"])


def tersoff():
    return LammpsPotential.tersoff("Si.tersoff", ["Si"])


def structure():
    atoms, seeds = vacancy_supercell("Si", "diamond", 5.431, REPEAT, 3.0)
    return atoms, seeds


def thermal(atoms):
    atoms = atoms.copy()
    thermalize_momenta(atoms, temperature_K=TEMPERATURE, exact_temperature=True,
                       rng=np.random.default_rng(7))
    Stationary(atoms)
    return atoms


def mixed(seeds, mode, *, nevery=0, r_core=R_CORE, r_blend=R_BLEND, r_buff=R_BUFF,
          expensive=sw, cheap=tersoff, **kw):
    tracker = RegionTracker(RegionSpec(r_core, r_blend, r_buff), IndexSeeds(seeds),
                            nevery=nevery)
    return MixedCalculator(expensive(), cheap(), tracker, mixing=mode, timestep=DT_FS
                           if mode == "energy" else None, **kw)


def fit_line(t_ps, e):
    a = np.vstack([t_ps, np.ones_like(t_ps)]).T
    coef, *_ = np.linalg.lstsq(a, e, rcond=None)
    resid = e - a @ coef
    dof = max(len(e) - 2, 1)
    stderr = float(np.sqrt(resid @ resid / dof / np.sum((t_ps - t_ps.mean()) ** 2)))
    return float(coef[0]), stderr, float(resid.std())


def nve_run(name, atoms, calc, steps, energy_of):
    atoms = atoms.copy()
    atoms.calc = calc
    md = VelocityVerlet(atoms, DT_FS * units.fs)
    t, e = [0.0], [energy_of(atoms) + atoms.get_kinetic_energy()]
    wall, cpu = time.perf_counter(), time.process_time()
    for k in range(steps // SAMPLE_EVERY):
        md.run(SAMPLE_EVERY)
        t.append((k + 1) * SAMPLE_EVERY * DT_FS / 1000)
        e.append(energy_of(atoms) + atoms.get_kinetic_energy())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    slope, stderr, std = fit_line(np.array(t), np.array(e))
    out = {"drift_eV_per_ps": slope, "drift_stderr_eV_per_ps": stderr, "std_eV": std,
           "range_eV": float(np.ptp(e)), "wall_seconds": wall, "cpu_seconds": cpu,
           "seconds_per_step": wall / steps}
    if isinstance(calc, MixedCalculator) and calc.mixing == "energy":
        out.update(energy_exchanged_eV=calc.energy_exchanged_total,
                   energy_exchanged_both_ways_eV=calc.energy_exchanged_abs_total,
                   energy_not_absorbed_eV=calc.energy_unabsorbed_total)
    print(f"  {name}: drift {slope:+.4f} ± {stderr:.4f} eV/ps, std {std * 1e3:.2f} meV, "
          f"{wall / steps * 1e3:.1f} ms/step", flush=True)
    return out, atoms


def nve(steps):
    atoms, seeds = structure()
    start = thermal(atoms)
    reference = sw()
    results, snapshot = {}, None
    results["all_expensive"], snapshot = nve_run(
        "all-expensive", start, PotentialCalculator(sw()), steps,
        lambda a: a.get_potential_energy())
    results["force_fixed_regions"], _ = nve_run(
        "force mixing", start, mixed(seeds, "force"), steps,
        lambda a: float(reference.evaluate(a).energies.sum()))
    results["energy_fixed_regions"], _ = nve_run(
        "energy mixing, fixed regions", start, mixed(seeds, "energy"), steps,
        lambda a: a.get_potential_energy())
    results["energy_rebuilt_corrected"], _ = nve_run(
        "energy mixing, rebuilt every 10, corrected", start, mixed(seeds, "energy", nevery=10),
        steps, lambda a: a.get_potential_energy())
    results["energy_rebuilt_uncorrected"], _ = nve_run(
        "energy mixing, rebuilt every 10, no correction", start,
        mixed(seeds, "energy", nevery=10, energy_correction=False), steps,
        lambda a: a.get_potential_energy())
    drift = {k: abs(v["drift_eV_per_ps"]) for k, v in results.items()}
    results["ratios"] = {
        "force_over_energy_fixed": drift["force_fixed_regions"] / drift["energy_fixed_regions"],
        "energy_fixed_over_all_expensive": drift["energy_fixed_regions"] / drift["all_expensive"],
        "energy_rebuilt_corrected_over_all_expensive":
            drift["energy_rebuilt_corrected"] / drift["all_expensive"],
        "force_over_energy_rebuilt_corrected":
            drift["force_fixed_regions"] / drift["energy_rebuilt_corrected"],
    }
    return results, snapshot, seeds


def stress_check(snapshot, seeds, h=1e-5):
    atoms = snapshot.copy()
    calc = mixed(seeds, "energy")
    atoms.calc = calc
    stress = atoms.get_stress()

    def energy(strained):
        strained.calc = calc
        return strained.get_potential_energy()

    fd = finite_difference_stress(energy, atoms, h).tolist()
    diff = float(np.abs(np.array(fd) - stress).max())
    print(f"  stress: max |FD - get_stress| = {diff:.2e} eV/Å^3", flush=True)
    return {"stress_eV_per_A3": stress.tolist(), "finite_difference_eV_per_A3": fd,
            "max_abs_difference_eV_per_A3": diff, "strain_step": h}


def core_error(snapshot, seeds):
    reference = sw().evaluate(snapshot).forces
    rows = []
    for r_core in (4.0, 6.0, 8.0, 10.0):
        row = {"r_core_A": r_core}
        for mode in ("force", "energy"):
            atoms = snapshot.copy()
            calc = mixed(seeds, mode, r_core=r_core, r_blend=0.0)
            atoms.calc = calc
            err = np.linalg.norm(atoms.get_forces() - reference, axis=1)
            p = calc.regions.p
            core = p == 1
            deep = exact_core(atoms, p, max(calc.expensive.cutoff, calc.cheap.cutoff))
            row[mode] = {"core_atoms": int(core.sum()),
                         "max_core_eV_per_A": float(err[core].max()),
                         "rms_core_eV_per_A": float(np.sqrt(np.mean(err[core] ** 2))),
                         "exact_core_atoms": int(deep.sum()),
                         "max_exact_core_eV_per_A": float(err[deep].max()) if deep.any()
                         else None}
        rows.append(row)
        print(f"  r_core {r_core}: max core error force {row['force']['max_core_eV_per_A']:.2e}"
              f", energy {row['energy']['max_core_eV_per_A']:.3f} eV/Å "
              f"(exact core {row['energy']['exact_core_atoms']})", flush=True)
    return rows


def per_step(atoms, calc, steps, repeats):
    wall, cpu = [], []
    for _ in range(repeats):
        a = atoms.copy()
        a.calc = calc
        md = VelocityVerlet(a, DT_FS * units.fs)
        md.run(2)
        t, c = time.perf_counter(), time.process_time()
        md.run(steps)
        wall.append((time.perf_counter() - t) / steps)
        cpu.append((time.process_time() - c) / steps)
    return statistics.median(wall), statistics.median(cpu)


def cost(repeats, steps=20):
    atoms, seeds = structure()
    start = thermal(atoms)
    snap_file = "Si_Zuo_JPCA2020.quadratic.snap"
    linear = str(ROOT / "examples" / "fit-si" / "Si_linear_snap")
    demo_uf3 = ROOT / "src" / "mlmix" / "data" / "demo" / "Si_demo_uf3.uf3"
    qsnap = dict(r_blend=3.0, r_buff=4.9,
                 expensive=lambda: LammpsPotential.snap(snap_file, ["Si"]))
    cases = [
        ("sw_tersoff_blend0", dict(r_blend=0.0)),
        ("sw_tersoff_blend3", dict(r_blend=3.0)),
        ("qsnap_linear_snap_blend0", dict(
            r_blend=0.0, r_buff=4.9,
            expensive=lambda: LammpsPotential.snap(snap_file, ["Si"]),
            cheap=lambda: LammpsPotential.snap(linear, ["Si"]))),
        ("qsnap_uf3_blend3_levels", dict(qsnap, cheap=lambda: LammpsPotential.uf3(
            demo_uf3, ["Si"]))),
        ("qsnap_uf3_blend3_exact_route", dict(qsnap, cheap=lambda: LinearWeighted.uf3(
            demo_uf3, ["Si"]))),
        ("qsnap_uf3_blend3_exact_both_unquantised", dict(
            qsnap, expensive=lambda: SnapWeighted.snap(snap_file.removesuffix(".snap"), ["Si"]),
            cheap=lambda: LinearWeighted.uf3(demo_uf3, ["Si"]), n_levels=0)),
    ]
    out = {}
    for name, kw in cases:
        row = {}
        for mode in ("force", "energy"):
            calc = mixed(seeds, mode, **kw)
            wall, cpu = per_step(start, calc, steps, repeats)
            report = calc.history[-1]
            row[mode] = {"seconds_per_step": wall, "cpu_seconds_per_step": cpu,
                         "n_expensive": report.n_expensive, "n_cheap": report.n_cheap}
        row["energy_over_force"] = row["energy"]["seconds_per_step"] / \
            row["force"]["seconds_per_step"]
        row["energy_over_force_cpu"] = row["energy"]["cpu_seconds_per_step"] / \
            row["force"]["cpu_seconds_per_step"]
        out[name] = row
        print(f"  cost {name}: energy/force = {row['energy_over_force']:.2f} "
              f"(cpu {row['energy_over_force_cpu']:.2f})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 ps instead of 10 ps")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "energy_mixing.json")
    ap.add_argument("--only", choices=("all", "cost"), default="all")
    args = ap.parse_args()
    steps = 1000 if args.quick else 10000
    t0 = time.perf_counter()
    if args.only == "cost":
        result = json.loads(args.out.read_text())
        result["cost"] = cost(args.repeats)
        result["cost_wall_seconds"] = time.perf_counter() - t0
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"updated the cost in {args.out} ({result['cost_wall_seconds']:.0f} s)")
        return
    atoms, _ = structure()
    print(f"Si vacancy, {len(atoms)} atoms, SW expensive, Tersoff cheap, {steps} NVE steps",
          flush=True)
    results, snapshot, seeds = nve(steps)
    result = {
        "machine": platform.processor() or platform.machine(),
        "system": {"n_atoms": len(atoms), "expensive": "Si.sw (LAMMPS sw)",
                   "cheap": "Si.tersoff (LAMMPS tersoff)", "r_core_A": R_CORE,
                   "r_blend_A": R_BLEND, "r_buff_A": R_BUFF, "temperature_K": TEMPERATURE,
                   "timestep_fs": DT_FS, "nve_steps": steps, "n_levels": 16},
        "nve": results,
        "stress": stress_check(snapshot, seeds),
        "core_error": core_error(snapshot, seeds),
        "cost": cost(args.repeats),
    }
    result["wall_seconds"] = time.perf_counter() - t0
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
