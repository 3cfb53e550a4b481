"""Cost of masked LAMMPS evaluation routes (a script, not a test).

System: ~32k-atom diamond Si (16^3 conventional cells) with a vacancy, lightly
rattled; Si_Zuo_JPCA2020 quadratic SNAP; mask = atoms within 15 Å of the vacancy.
Routes, each timed as the median of several repeats of one steady-state call
(positions moved slightly between calls, mask unchanged):

  all         every atom evaluated (``LammpsPotential.evaluate(atoms)``)
  ideal       mask size x per-atom time of ``all`` (a lower bound, not run)
  masked      ``LammpsPotential.evaluate(atoms, mask)``: exclude out-out pairs and
              restrict list centres/neighbours to the active set (mask + cutoff + margin)
  exclude_only the first candidate: only ``neigh_modify exclude group out out``
  carved      mask + one cutoff shell cut out as an open-boundary cluster in a
              separate instance, every cluster atom evaluated
  compute_snap ``compute snap`` with group = mask (design-matrix rows dotted with the
              SNAP coefficients), re-created per call (the ID_press bug workaround)

Also measured: the mask-change (setup) cost of ``masked`` and the per-call overhead of
``evaluate`` for a cheap style (tersoff, same 32k cell) against native ``run N``.
Writes benchmarks/lammps_masking.json next to this file. Runs in about 3-4 minutes.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk

from mlmix.neighbours import dilate
from mlmix.potentials.files import resolve_potential_file
from mlmix.potentials.lammps import LammpsPotential, snapcoeff_elements

A_SI = 5.43
REPS = 3  # repeats for the slow routes
REPS_FAST = 11
MASK_RADIUS = 15.0
rng = np.random.default_rng(0)


def structure() -> tuple[Atoms, np.ndarray]:
    atoms = bulk("Si", "diamond", A_SI, cubic=True) * (16, 16, 16)
    centre = np.diag(atoms.cell.array) / 2
    vac = int(np.argmin(np.linalg.norm(atoms.positions - centre, axis=1)))
    site = atoms.positions[vac].copy()
    del atoms[vac]
    atoms.rattle(0.01, seed=1)
    return atoms, site


def jiggle(atoms: Atoms) -> Atoms:
    """A small random move, as between MD steps (well inside the neighbour skin)."""
    out = atoms.copy()
    out.positions += rng.normal(0.0, 0.002, out.positions.shape)
    return out


def timed(fn, reps: int, atoms: Atoms | None = None) -> tuple[float, list[float], object]:
    """Median wall time of ``fn(moved)`` over ``reps`` calls; the moved structures
    are made before the clock starts so only the evaluation is timed."""
    moved = [jiggle(atoms) if atoms is not None else None for _ in range(reps)]
    times, result = [], None
    for m in moved:
        t0 = time.perf_counter()
        result = fn(m)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def snap_coefficients(stem: str) -> tuple[np.ndarray, dict]:
    coeff = resolve_potential_file(stem + ".snapcoeff")
    lines = [ln.split("#")[0].strip() for ln in coeff.read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    beta = np.array([float(x) for x in lines[2:]])
    param = {}
    for ln in resolve_potential_file(stem + ".snapparam").read_text().splitlines():
        tok = ln.split("#")[0].split()
        if len(tok) == 2:
            param[tok[0]] = tok[1]
    radelem, wj = lines[1].split()[1:3]
    param["radelem"], param["wj"] = radelem, wj
    return beta, param


def compute_snap_route(pot: LammpsPotential, atoms: Atoms, mask: np.ndarray, stem: str):
    """Masked forces from ``compute snap`` with group = mask on a pair_style zero instance."""
    beta, p = snap_coefficients(stem)
    assert snapcoeff_elements(resolve_potential_file(stem + ".snapcoeff")) == ["Si"]
    zero = LammpsPotential(f"zero {float(p['rcutfac']) * 2 * float(p['radelem'])}", ["* *"], ["Si"],
                           name="zero")
    zero.evaluate(atoms, mask)  # builds the instance and the mlmix_in group
    lmp = zero._lmp
    cmd = (f"compute bsnap mlmix_in snap {p['rcutfac']} {p['rfac0']} {p['twojmax']} "
           f"{p['radelem']} {p['wj']} rmin0 {p['rmin0']} quadraticflag {p['quadraticflag']} "
           f"bzeroflag {p['bzeroflag']}")

    def once(moved: Atoms):
        zero.evaluate(moved, mask)  # scatter + cheap step
        lmp.command(cmd)
        lmp.command("run 0 post no")
        arr = lmp.numpy.extract_compute("bsnap", 0, 2)  # global array
        n = len(moved)
        f = arr[1 : 1 + 3 * n, : len(beta) - 1] @ beta[1:]
        lmp.command("uncompute bsnap")
        lmp.command("uncompute bsnap_press")
        return f.reshape(n, 3), arr.shape

    return once


def main() -> None:
    out: dict = {"machine": platform.processor() or platform.machine(), "cores_used": 1,
                 "python": platform.python_version()}
    atoms, site = structure()
    n = len(atoms)
    d = np.linalg.norm(atoms.positions - site, axis=1)  # vacancy at the box centre: no wrap
    mask = d < MASK_RADIUS
    stem = "Si_Zuo_JPCA2020.quadratic"
    pot = LammpsPotential.snap(stem)
    rc = pot.cutoff
    interior = d < MASK_RADIUS - rc  # atoms whose whole cutoff sphere is in the mask
    out["system"] = {"atoms": n, "potential": stem, "cutoff_A": rc, "mask_radius_A": MASK_RADIUS,
                     "mask_atoms": int(mask.sum()), "interior_atoms": int(interior.sum())}
    print(out["system"], flush=True)
    routes: dict = {}

    # (a) all atoms
    t0 = time.perf_counter()
    ref = pot.evaluate(atoms)
    routes["all_first_call_with_setup"] = {"median_s": time.perf_counter() - t0}
    med, ts, ev = timed(lambda m: pot.evaluate(m), REPS, atoms)
    routes["all"] = {"median_s": med, "times_s": ts, "n_evaluated": ev.n_evaluated}
    per_atom = med / n
    # (b) ideal
    routes["ideal"] = {"median_s": per_atom * mask.sum(), "n_evaluated": int(mask.sum()),
                       "note": "mask size x per-atom time of 'all'; not run"}
    print("all", routes["all"], flush=True)

    # masked route (this module): setup on mask change, then steady state
    t0 = time.perf_counter()
    ev = pot.evaluate(atoms, mask)
    setup = time.perf_counter() - t0
    err = float(np.abs(ev.forces[interior] - ref.forces[interior]).max())
    med, ts, evm = timed(lambda m: pot.evaluate(m, mask), REPS_FAST, atoms)
    routes["masked"] = {"median_s": med, "times_s": ts, "n_evaluated": evm.n_evaluated,
                        "mask_change_call_s": setup, "max_force_error_interior_eV_A": err,
                        "active_atoms": int(dilate(atoms.positions, atoms.cell.array, True, mask,
                                                   rc + pot.margin).sum())}
    print("masked", routes["masked"], flush=True)

    # exclusion only: the same instance with the include group widened to every atom
    lmp = pot._lmp
    lmp.command("group mlmix_active union all")
    pot._scatter("x", pot._frame.to_lammps(atoms.positions), 1, 3)  # back to the reference
    lmp.command("run 0 post no")
    pe = pot._gather("c_mlmix_pe", 1)
    f = pot._gather("f", 3)
    err = float(np.abs(f[interior] - ref.forces[interior]).max())

    def excl_step(moved):
        pot._scatter("x", pot._frame.to_lammps(moved.positions), 1, 3)
        lmp.command("run 1 pre no post no")
        return int(np.count_nonzero(pot._gather("c_mlmix_pe", 1)))

    med, ts, neval = timed(excl_step, REPS, atoms)
    routes["exclude_only"] = {"median_s": med, "times_s": ts, "n_evaluated": neval,
                              "n_nonzero_pe_at_setup": int(np.count_nonzero(pe)),
                              "max_force_error_interior_eV_A": err}
    print("exclude_only", routes["exclude_only"], flush=True)
    pot.close()

    # (c) carved cluster: mask + one cutoff shell, open boundaries, all evaluated
    carve = dilate(atoms.positions, atoms.cell.array, True, mask, rc)
    cluster = Atoms(atoms.symbols[carve], atoms.positions[carve], pbc=False)
    cpot = LammpsPotential.snap(stem)
    t0 = time.perf_counter()
    evc = cpot.evaluate(cluster)
    first = time.perf_counter() - t0
    idx = np.flatnonzero(carve)
    inner = interior[idx]
    err = float(np.abs(evc.forces[inner] - ref.forces[idx[inner]]).max())

    def carved_step(moved):
        return cpot.evaluate(Atoms(moved.symbols[carve], moved.positions[carve], pbc=False))

    med, ts, evc = timed(carved_step, REPS_FAST, atoms)
    routes["carved"] = {"median_s": med, "times_s": ts, "n_evaluated": evc.n_evaluated,
                        "cluster_atoms": int(carve.sum()), "new_cluster_call_s": first,
                        "max_force_error_interior_eV_A": err}
    print("carved", routes["carved"], flush=True)
    cpot.close()

    # (d) compute snap with group = mask
    once = compute_snap_route(pot, atoms, mask, stem)
    fs, shape = once(atoms)
    # the force rows dotted with beta: record which sign reproduces the pair forces
    err_plus = float(np.abs(fs[interior] - ref.forces[interior]).max())
    err_minus = float(np.abs(-fs[interior] - ref.forces[interior]).max())
    med, ts, _ = timed(once, 2, atoms)
    routes["compute_snap"] = {"median_s": med, "times_s": ts, "array_shape": list(shape),
                              "array_GB": shape[0] * shape[1] * 8 / 1e9,
                              "max_force_error_interior_eV_A": min(err_plus, err_minus),
                              "forces_are": "+rows@beta" if err_plus < err_minus else "-rows@beta"}
    print("compute_snap", routes["compute_snap"], flush=True)

    for k, r in routes.items():
        if "median_s" in r and k != "all":
            r["speedup_vs_all"] = routes["all"]["median_s"] / r["median_s"]
            r["cost_vs_ideal"] = r["median_s"] / routes["ideal"]["median_s"]
    out["snap_routes"] = routes

    # per-call overhead, cheap style: evaluate() (scatter + run 1 + gather) vs native run N
    ter = LammpsPotential.tersoff("Si.tersoff")
    ter.evaluate(atoms)
    med_call, ts_call, _ = timed(lambda m: ter.evaluate(m), 15, atoms)
    nsteps = 20
    t0 = time.perf_counter()
    ter._lmp.command(f"run {nsteps} pre no post no")
    native = (time.perf_counter() - t0) / nsteps

    parts: dict[str, list[float]] = {"scatter": [], "run1": [], "gather": []}

    def raw(moved):
        x = ter._frame.to_lammps(moved.positions)  # wrapped, as evaluate() scatters them
        t = [time.perf_counter()]
        ter._scatter("x", x, 1, 3)
        t.append(time.perf_counter())
        ter._lmp.command("run 1 pre no post no")
        t.append(time.perf_counter())
        f = ter._gather("f", 3)
        ter._gather("c_mlmix_pe", 1)
        t.append(time.perf_counter())
        for k, name in enumerate(parts):
            parts[name].append(t[k + 1] - t[k])
        return f

    timed(raw, 15, atoms)
    med_raw = {k: statistics.median(v) for k, v in parts.items()}
    t0 = time.perf_counter()
    ter._lmp.command("run 0 post no")
    run0 = time.perf_counter() - t0
    out["overhead_tersoff_32k"] = {
        "evaluate_call_median_s": med_call, "evaluate_call_times_s": ts_call,
        "scatter_run1_gather_median_s": sum(med_raw.values()),
        "breakdown_median_s": med_raw,
        "native_run_per_step_s": native, "run0_full_setup_s": run0,
        "note": "native run N has no per-atom energy tally; evaluate() adds the pe/atom "
                "tally, position wrapping and the checks of the inputs",
    }
    print("overhead", out["overhead_tersoff_32k"], flush=True)
    ter.close()
    path = Path(__file__).with_suffix(".json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
