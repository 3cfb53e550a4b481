"""Multiple time stepping (``correction_every = k``): what k = 2, 3, 4 cost in accuracy
and buy in speed (issue 11, item 3; method in ``mlmix.mts``).

Si vacancy, quadratic SNAP (Zuo et al.) expensive, r_core 6 Å, r_buff = the SNAP
cutoff, seeds = the vacancy's first neighbours, regions rebuilt every 12 steps, NVE,
dt = 1 fs. Two cheap potentials: the UF3 that mlmix distilled from this SNAP (the demo's,
the case multiple time stepping is for) and Tersoff (not fitted to it).

Accuracy (ASE engine, started at 600 K):

- ``impulse_error`` (999 atoms): along the k = 1 trajectory, the correction
  C = p (F^exp - F^cheap) on the core atoms is recorded every step; for each k, the RMS
  and max over core atoms and outer steps of ``C(n) - mean(C(n), ..., C(n+k-1))``, i.e.
  how far the impulse k C(n) is from the correction the k steps it stands for would
  have applied, beside the RMS of C itself and of the expensive force on the core.
- ``conservation`` (215 atoms, every atom a seed, so p = 1 everywhere and the mixed
  force is the SNAP force: a conserved energy exists and any drift is the integrator's):
  NVE of E^SNAP + kinetic energy (frames every 24 steps, an outer step of every k)
  for k = 1 (plain velocity Verlet on SNAP, the floor)
  to 8: drift (least-squares slope, eV/ps), standard deviation and range (meV). Force
  mixing itself conserves no energy, so on a mixed cell only this split isolates what
  multiple time stepping costs.

Speed (32,767 atoms, qSNAP on truncated centres, cheap = the UF3, r_blend 0 and 4 Å):
seconds per step of both engines for k = 1..4 (medians of ``--repeats`` runs of 24
steps, wall and CPU), the expensive share per step, and ratios to k = 1.

Run: ``python benchmarks/multiple_time_step.py``; writes
``benchmarks/multiple_time_step.json``. About 20 minutes on one core.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from _common import native_lammps_seconds_per_step
from ase import units
from ase.md.verlet import VelocityVerlet
from centre_truncation import ase_md, engine_md
from mixed_md import CASES

from mlmix.demo import demo_cheap_potential
from mlmix.mixing import MixedCalculator
from mlmix.potentials.lammps import LammpsPotential
from mlmix.regions import RegionSpec, RegionTracker
from mlmix.seeds import IndexSeeds
from mlmix.structures import thermalize, vacancy_supercell

KS = (1, 2, 3, 4)
CONSERVATION_KS = (1, 2, 3, 4, 6, 8)
NEVERY = 12  # a multiple of every k
SI = CASES["si_snap"]


def snap() -> LammpsPotential:
    return LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic", ["Si"])


def cheap_potential(name: str) -> LammpsPotential:
    if name == "uf3_distilled":
        return demo_cheap_potential()
    return LammpsPotential.tersoff("Si.tersoff", ["Si"])


def start_structure(repeat: int, temperature: float):
    symbol, crystal, a = SI["crystal"]
    atoms, seeds = vacancy_supercell(symbol, crystal, a, repeat, SI["bond"])
    thermalize(atoms, temperature, seed=1)
    return atoms, seeds


def energy_trend(times_fs: np.ndarray, energies: np.ndarray) -> dict:
    slope = np.polyfit(times_fs / 1000.0, energies, 1)[0]
    return {"drift_eV_per_ps": float(slope), "std_meV": float(1000 * energies.std()),
            "max_minus_min_meV": float(1000 * np.ptp(energies))}


def mixed_nve(atoms, seeds, expensive, cheap, k: int, steps: int, every: int,
              record_correction: bool, nevery: int = NEVERY) -> dict:
    """Mixed NVE with correction_every = k; frames every ``every`` steps, and (k = 1)
    the correction on the core atoms at every step."""
    spec = RegionSpec(r_core=6.0, r_blend=0.0, r_buff=expensive.cutoff)
    calc = MixedCalculator(expensive, cheap, RegionTracker(spec, IndexSeeds(seeds), nevery=nevery),
                           correction_every=k)
    atoms = atoms.copy()
    atoms.calc = calc
    frames, corrections, core_forces = [], [], []
    t0 = time.perf_counter()

    def observe():
        step = calc.step - 1
        if step % every == 0:
            frames.append((step, atoms.positions.copy(), atoms.get_kinetic_energy()))
        if record_correction:
            core = calc.regions.p == 1
            f_cheap = cheap.evaluate(atoms, None).forces
            correction = atoms.get_forces() - f_cheap  # = F^exp - F^cheap where p = 1
            corrections.append((core, correction))
            core_forces.append((correction + f_cheap)[core])

    atoms.get_forces()
    observe()
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dyn.attach(observe, interval=1)
    dyn.run(steps)
    return {"frames": frames, "corrections": corrections, "core_forces": core_forces,
            "wall_seconds": time.perf_counter() - t0}


def impulse_errors(corrections, core_forces, ks) -> dict:
    """RMS / max of C(n) - mean(C(n..n+k-1)) on core atoms (see module docstring)."""
    core = corrections[0][0]
    for c, _ in corrections:
        core = core & c  # atoms in the core at every step
    c = np.stack([corr[core] for _, corr in corrections])  # (steps, n_core, 3)
    out = {"n_core_atoms": int(core.sum()),
           "rms_correction_eV_per_A": float(np.sqrt((c ** 2).sum(-1).mean())),
           "rms_expensive_core_force_eV_per_A": float(np.sqrt(np.mean(
               [(f ** 2).sum(-1).mean() for f in core_forces])))}
    for k in ks:
        n_outer = (len(c) - 1) // k
        err = np.stack([c[n * k] - c[n * k:(n + 1) * k].mean(axis=0) for n in range(n_outer)])
        norm = np.sqrt((err ** 2).sum(-1))
        out[f"k={k}"] = {"rms_eV_per_A": float(np.sqrt((norm ** 2).mean())),
                         "max_eV_per_A": float(norm.max())}
    return out


def expensive_energies(frames, atoms, reference) -> tuple[np.ndarray, np.ndarray]:
    frame = atoms.copy()
    t, e = [], []
    for step, x, kinetic in frames:
        frame.positions = x
        e.append(float(reference.evaluate(frame, None).energies.sum()) + kinetic)
        t.append(step * 1.0)
    return np.array(t), np.array(e)


def accuracy(steps: int, every: int) -> dict:
    atoms, seeds = start_structure(5, 600.0)
    small, _ = start_structure(3, 600.0)
    reference = snap()
    out = {"steps": steps, "timestep_fs": 1.0, "start_K": 600.0, "frames_every": every}
    for name in ("uf3_distilled", "tersoff"):
        cheap = cheap_potential(name)
        run = mixed_nve(atoms, seeds, snap(), cheap, 1, steps, every, record_correction=True)
        res = {"impulse_error": {"n_atoms": len(atoms), **impulse_errors(
            run["corrections"], run["core_forces"], KS)}}
        print(name, "impulse error", res["impulse_error"], flush=True)
        cons = {"n_atoms": len(small)}
        for k in CONSERVATION_KS:
            run = mixed_nve(small, np.arange(len(small)), snap(), cheap, k, steps, every,
                            record_correction=False, nevery=0)
            t, e = expensive_energies(run["frames"], small, reference)
            cons[f"k={k}"] = {**energy_trend(t, e), "wall_seconds": run["wall_seconds"]}
            print(name, "conservation", k, cons[f"k={k}"], flush=True)
        res["conservation"] = cons
        out[name] = res
        cheap.close()
    reference.close()
    return out


def speed(repeat: int, steps: int, repeats: int) -> dict:
    atoms, seeds = start_structure(repeat, 300.0)
    n = len(atoms)
    expensive = snap()
    t_all_exp = native_lammps_seconds_per_step(expensive, SI["lattice"], SI["crystal"][2],
                                               repeat, 2)
    cheap = cheap_potential("uf3_distilled")
    t_all_cheap = native_lammps_seconds_per_step(cheap, SI["lattice"], SI["crystal"][2],
                                                 repeat, 10)
    out = {"n_atoms": n, "steps_per_run": steps, "repeats": repeats,
           "seconds_per_step": {"all_expensive_native": t_all_exp,
                                "all_cheap_native": t_all_cheap},
           "rows": []}
    for r_blend in (0.0, 4.0):
        for engine, fn, share in (("ase", ase_md, "expensive"), ("lammps", engine_md, "expensive")):
            base = None
            for k in KS:
                runs = [fn(atoms, expensive, cheap, seeds, r_blend, steps, NEVERY, k)
                        for _ in range(repeats)]
                wall = statistics.median(r["seconds_per_step"] for r in runs)
                cpu = statistics.median(r["cpu_seconds_per_step"] for r in runs)
                exp_share = statistics.median(r["breakdown_seconds"][share] for r in runs)
                base = base or (wall, exp_share)
                row = {"engine": engine, "r_blend_A": r_blend, "k": k,
                       "seconds_per_step": wall, "cpu_seconds_per_step": cpu,
                       "expensive_seconds_per_step": exp_share,
                       "centres_per_outer_step": runs[0]["centres_per_step"],
                       "speedup_over_k1": base[0] / wall,
                       "expensive_share_reduction_over_k1": base[1] / exp_share,
                       "speedup_over_all_expensive": t_all_exp / wall}
                out["rows"].append(row)
                print(f"{engine:6s} r_blend={r_blend} k={k}: {wall:.3f} s/step (cpu {cpu:.3f}), "
                      f"expensive {exp_share:.3f} s/step, x{row['speedup_over_k1']:.2f} "
                      f"over k=1, expensive share /{row['expensive_share_reduction_over_k1']:.2f}, "
                      f"{row['speedup_over_all_expensive']:.1f}x all-expensive", flush=True)
    expensive.close()
    cheap.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="NVE steps of the accuracy runs")
    parser.add_argument("--speed-repeat", type=int, default=16, help="cells per side (16: 32k)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", choices=["accuracy", "speed"], default=None)
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    result = {"machine": platform.platform(), "cores_used": 1, "nevery": NEVERY,
              "target": "k = 2: a further >= 1.6x on the expensive share at a stated accuracy"}
    if args.skip != "accuracy":
        result["accuracy"] = accuracy(args.steps, 24)  # frames at outer steps of every k
    if args.skip != "speed":
        result["speed"] = speed(args.speed_repeat, 24, args.repeats)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
