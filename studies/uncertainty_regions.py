"""Case study: regions that find themselves, from the cheap model's own uncertainty.

No user seed: the seeds are the atoms whose extrapolation grade against the cheap
model's training environments (:mod:`mlmix.fitting.uncertainty`, the file ``mlmix fit``
writes beside the potential) reaches its default threshold. Four defects, each compared
with the structural classifier a user would otherwise tune for it (coordination for Si,
centrosymmetry for bcc W):

- a vacancy in diamond Si (expensive: quadratic SNAP of Zuo et al.; cheap: the demo's
  distilled UF3);
- a <111> self-interstitial dumbbell in W, a free W(100) surface (a slab), and a
  1/2<111> screw dislocation core (a cylinder whose fixed outer shell is excluded from
  both classifiers), all with expensive W_2940_2017_2 (SNAP + ZBL) and cheap the
  distilled W UF3 of ``studies/potentials/W_uf3``.

Each structure is relaxed with the expensive potential (the defect's true structure)
and given a small random displacement (0.02 Å, a cold thermal snapshot). Reported per case: the atoms each
classifier picks, the fraction of the structural picks the uncertainty classifier also
picks, the atoms it adds (and how far from the defect they sit), and the force error of
one mixed evaluation against all-expensive for the structural seeds, the uncertainty
seeds at the same count (the highest grades: equal expensive-set size), the uncertainty
seeds at the threshold, and the cheap potential alone. With the exact buffer the core
forces are exact in every mixed case (checked), so the error that differs is that of
the atoms left to the cheap potential: it says whether the seeds cover the atoms the
cheap model gets wrong.

Run: ``python studies/uncertainty_regions.py [--quick] [--out DIR]`` (writes
``uncertainty_regions.json`` and ``uncertainty_regions.png``; default ``studies/results/``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from _common import ROOT, expensive_properties, header, parse_args, save, save_figure
from ase import Atoms
from ase.build import bulk
from ase.constraints import FixAtoms
from ase.geometry import get_distances
from ase.optimize import FIRE

from mlmix import MixedCalculator, RegionSpec, RegionTracker
from mlmix.demo import demo_potential_dir
from mlmix.fitting.uncertainty import Uncertainty, file_beside
from mlmix.potentials import LammpsPotential
from mlmix.seeds import IndexSeeds, centrosymmetry, coordination, masked
from mlmix.structures import bcc_screw_dislocation, central_atom, fixed_mask

W_CHEAP = ROOT / "studies" / "potentials" / "W_uf3" / "W_uf3.uf3"
SI_CHEAP = demo_potential_dir() / "Si_demo_uf3.uf3"
A_SI = 5.4644            # Å, the Zuo SNAP's relaxed lattice parameter (demo fit report)
R_CORE = 2.0            # Å, around each seed; no blend shell: the seeds decide alone
RATTLE = 0.02           # Å
FULL = {"si": 5, "sia": 8, "slab": (8, 8, 10), "screw_radius": 30.0}
QUICK = {"si": 3, "sia": 5, "slab": (5, 5, 6), "screw_radius": 13.0}
# Structural classifiers and their bounds: what a user would pick for each lattice.
SI_COORDINATION = {"r_cut": 2.9, "ub": 3.0}      # Si: fewer than 4 bonds within 2.9 Å
W_CSP = {"n_neighbours": 8, "r_cut": 3.6, "lb": 1.0}  # Å^2; perfect bcc 0, thermal ~0.01


def relaxed(atoms: Atoms, potential: LammpsPotential, steps: int = 300) -> Atoms:
    """``atoms`` relaxed with ``potential`` (FIRE, fmax 0.02 eV/Å), then rattled."""
    atoms = atoms.copy()
    atoms.calc = potential.as_calculator()
    FIRE(atoms, logfile=None).run(fmax=0.02, steps=steps)
    atoms.calc = None
    moved = np.random.default_rng(7).normal(0.0, RATTLE, atoms.positions.shape)
    fixed = fixed_mask(atoms)
    moved[fixed] = 0.0
    atoms.positions += moved
    return atoms


# ------------------------------------------------------------------------ structures


def si_vacancy(n: int) -> tuple[Atoms, np.ndarray]:
    """Diamond Si, n^3 conventional cells minus the central atom; distance (Å) to the site."""
    at = bulk("Si", "diamond", a=A_SI, cubic=True).repeat(n)
    c = central_atom(at)
    site = at.positions[c].copy()
    del at[c]
    return at, site


def w_dumbbell(n: int, a: float) -> tuple[Atoms, np.ndarray]:
    """bcc W, n^3 cells, the central atom replaced by a <111> dumbbell (2.2 Å long)."""
    at = bulk("W", "bcc", a=a, cubic=True).repeat(n)
    c = central_atom(at)
    site = at.positions[c].copy()
    del at[c]
    half = 1.1 * np.ones(3) / np.sqrt(3.0)
    at += Atoms("W2", positions=[site - half, site + half])
    return at, site


def w_slab(reps: tuple[int, int, int], a: float) -> Atoms:
    """A W(100) slab, periodic in x and y, 10 Å of vacuum on each side in z."""
    at = bulk("W", "bcc", a=a, cubic=True).repeat(reps)
    at.center(vacuum=10.0, axis=2)
    at.pbc = (True, True, False)
    return at


def w_screw(radius: float, el: dict) -> Atoms:
    at, fixed = bcc_screw_dislocation("W", el["a"], el["C11"], el["C12"], el["C44"], radius,
                                      n_burgers=3, fix_width=5.0)
    at.set_constraint(FixAtoms(mask=fixed))
    return at


def defect_distance(case: str, atoms: Atoms, where) -> np.ndarray:
    """``(N,)`` Å from the defect: its site, the surfaces or the dislocation line."""
    if case == "W(100) surface":
        z = atoms.positions[:, 2]
        return np.minimum(z - z.min(), z.max() - z)
    if case == "W screw dislocation":
        core = atoms.info["core_position"]
        return np.hypot(*(atoms.positions[:, :2] - core[:2]).T)
    return get_distances(atoms.positions, where, cell=atoms.cell, pbc=atoms.pbc)[1][:, 0]


# ------------------------------------------------------------------------ one case


def mixed_error(atoms: Atoms, seeds: np.ndarray, expensive, cheap, reference: np.ndarray,
                distance: np.ndarray) -> dict:
    """One mixed force evaluation with these seed indices, against all-expensive."""
    tracker = RegionTracker(RegionSpec(R_CORE, 0.0, expensive.cutoff), IndexSeeds(seeds), nevery=0)
    calc = MixedCalculator(expensive, cheap, tracker)
    at = atoms.copy()
    at.calc = calc
    forces = at.get_forces()
    regions = calc.current_regions()
    err = np.linalg.norm(forces - reference, axis=1)
    inner = ~fixed_mask(atoms)
    core = (regions.p == 1.0) & inner
    return {"n_seeds": int(len(seeds)), "n_weighted": int(np.sum(regions.p > 0)),
            "n_expensive_evaluated": int(regions.expensive.sum()),
            "max_force_error_eV_per_A": float(err[inner].max()),
            "worst_atom_distance_A": float(distance[inner][np.argmax(err[inner])]),
            "rms_force_error_eV_per_A": float(np.sqrt(np.mean(err[inner] ** 2))),
            "core_max_force_error_eV_per_A": float(err[core].max())}


def run_case(case: str, atoms: Atoms, where, expensive, cheap, structural,
             bounds: dict, unc: Uncertainty) -> dict:
    t0 = time.perf_counter()
    atoms = relaxed(atoms, expensive)  # the true structure of the defect
    t_relax = time.perf_counter() - t0
    fixed = fixed_mask(atoms)
    d = defect_distance(case, atoms, where)

    t0 = time.perf_counter()
    q = masked(structural, fixed)(atoms)
    t_structural = time.perf_counter() - t0
    t0 = time.perf_counter()
    grade = masked(unc, fixed)(atoms)
    t_grade = time.perf_counter() - t0

    s = (q >= bounds.get("lb", -np.inf)) & (q <= bounds.get("ub", np.inf))
    u = grade >= unc.threshold
    k = int(s.sum())
    top_k = np.argsort(-grade, kind="stable")[:k]

    t0 = time.perf_counter()
    reference = expensive.evaluate(atoms).forces
    t_expensive = time.perf_counter() - t0
    t0 = time.perf_counter()
    cheap_forces = cheap.evaluate(atoms).forces
    t_cheap = time.perf_counter() - t0
    inner = ~fixed
    cheap_err = np.linalg.norm(cheap_forces - reference, axis=1)[inner]

    t0 = time.perf_counter()
    errors = {"structural": mixed_error(atoms, np.flatnonzero(s), expensive, cheap, reference, d),
              "uncertainty_equal_size": mixed_error(atoms, top_k, expensive, cheap, reference, d),
              "uncertainty_threshold": mixed_error(atoms, np.flatnonzero(u), expensive, cheap,
                                                   reference, d),
              "cheap_only": {"max_force_error_eV_per_A": float(cheap_err.max()),
                             "worst_atom_distance_A": float(d[inner][np.argmax(cheap_err)]),
                             "worst_atom_grade": float(grade[inner][np.argmax(cheap_err)]),
                             "rms_force_error_eV_per_A": float(np.sqrt(np.mean(cheap_err ** 2)))}}
    t_mixed = time.perf_counter() - t0
    # Equal expensive-set size, at several sizes: the k highest grades against the k
    # most defective by the structural quantity (ties in stable index order).
    by_structure = np.argsort(q if "ub" in bounds else -q, kind="stable")
    curve = []
    for n in sorted({max(1, k // 2), k, 2 * k, 4 * k, int(u.sum())} - {0}):
        n = min(n, int(inner.sum()))
        curve.append({"n_seeds": n, **{
            name: mixed_error(atoms, order[:n], expensive, cheap, reference, d)[
                "max_force_error_eV_per_A"]
            for name, order in (("structural", by_structure),
                                ("uncertainty", np.argsort(-grade, kind="stable")))}})
    extra = u & ~s
    return {
        "n_atoms": len(atoms), "n_fixed": int(fixed.sum()),
        "threshold": unc.threshold,
        "structural_bounds": bounds,
        "n_structural": k, "n_uncertainty": int(u.sum()),
        "fraction_of_structural_also_uncertain": float((s & u).sum() / k) if k else None,
        "n_extra": int(extra.sum()),
        "extra_distance_A": {"max": float(d[extra].max()) if extra.any() else None,
                             "median": float(np.median(d[extra])) if extra.any() else None},
        "structural_max_distance_A": float(d[s].max()) if k else None,
        "uncertainty_max_distance_A": float(d[u].max()) if u.any() else None,
        "grade_far_max": float(grade[(d > 8.0) & inner].max()) if np.any((d > 8.0) & inner)
        else None,
        "mixed": errors,
        "max_force_error_vs_seeds": curve,
        "seconds": {"relax_expensive": t_relax, "structural_classifier": t_structural,
                    "uncertainty_grade": t_grade, "all_expensive_forces": t_expensive,
                    "all_cheap_forces": t_cheap, "three_mixed_evaluations": t_mixed},
        "_plot": {"distance": d[inner].tolist(), "grade": grade[inner].tolist()},
    }


# ------------------------------------------------------------------------ figure


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = result["cases"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ax = axes[0]
    for (name, c), marker, colour in zip(cases.items(), "osD^", colours):
        ax.scatter(c["_plot"]["distance"], np.maximum(c["_plot"]["grade"], 1e-2), s=6,
                   marker=marker, label=name, alpha=0.6, color=colour)
        ax.axhline(c["threshold"], lw=0.8, ls="--", color=colour)
    ax.set_yscale("log")
    ax.set_xlabel("distance from the defect (Å)")
    ax.set_ylabel("extrapolation grade of the cheap model")
    ax.set_title("(a) grade vs distance (dashed: default threshold)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    kinds = [("cheap_only", "cheap only"), ("structural", "structural seeds"),
             ("uncertainty_equal_size", "uncertainty, same count"),
             ("uncertainty_threshold", "uncertainty, threshold")]
    x = np.arange(len(cases))
    for j, (key, label) in enumerate(kinds):
        ax.bar(x + (j - 1.5) * 0.2, [c["mixed"][key]["max_force_error_eV_per_A"]
                                     for c in cases.values()], 0.2, label=label)
    ax.set_xticks(x, [n.replace(" ", "\n", 1) for n in cases], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("max |F - F_expensive| over free atoms (eV/Å)")
    ax.set_title("(b) one mixed evaluation vs all-expensive", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[2]
    for (name, c), colour in zip(cases.items(), colours):
        n = [p["n_seeds"] for p in c["max_force_error_vs_seeds"]]
        ax.plot(n, [p["uncertainty"] for p in c["max_force_error_vs_seeds"]], "o-",
                color=colour, label=f"{name}: uncertainty")
        ax.plot(n, [p["structural"] for p in c["max_force_error_vs_seeds"]], "s--",
                color=colour, label=f"{name}: structural", alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("seed atoms (the k highest-ranked)")
    ax.set_ylabel("max force error (eV/Å)")
    ax.set_title("(c) equal expensive-set size, several sizes", fontsize=9)
    ax.legend(fontsize=6)
    save_figure(fig, path)


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, seed=False)
    setup = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    w_el = expensive_properties("fit-w")
    el = {"a": w_el["lattice_parameter_A"], **{k: w_el["cubic"][k] for k in ("C11", "C12", "C44")}}
    w_unc = Uncertainty.load(file_beside(W_CHEAP))
    si_unc = Uncertainty.load(file_beside(SI_CHEAP))
    si_exp = LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic", ["Si"])
    si_cheap = LammpsPotential.uf3(SI_CHEAP, ["Si"])
    w_exp = LammpsPotential.from_include("W_2940_2017_2.snap", ["W"])
    w_cheap = LammpsPotential.uf3(W_CHEAP, ["W"])
    csp = centrosymmetry(W_CSP["n_neighbours"], W_CSP["r_cut"])
    try:
        si_at, si_site = si_vacancy(setup["si"])
        sia, sia_site = w_dumbbell(setup["sia"], el["a"])
        cases = {
            "Si vacancy": run_case("Si vacancy", si_at, si_site, si_exp, si_cheap,
                                   coordination(SI_COORDINATION["r_cut"]),
                                   {"ub": SI_COORDINATION["ub"]}, si_unc),
            "W <111> dumbbell": run_case("W <111> dumbbell", sia, sia_site, w_exp, w_cheap, csp,
                                         {"lb": W_CSP["lb"]}, w_unc),
            "W(100) surface": run_case("W(100) surface", w_slab(setup["slab"], el["a"]), None,
                                       w_exp, w_cheap, csp, {"lb": W_CSP["lb"]}, w_unc),
            "W screw dislocation": run_case("W screw dislocation",
                                            w_screw(setup["screw_radius"], el), None,
                                            w_exp, w_cheap, csp, {"lb": W_CSP["lb"]}, w_unc),
        }
    finally:
        for pot in (si_exp, si_cheap, w_exp, w_cheap):
            pot.close()
        w_unc.close()
        si_unc.close()
    result = {
        **header("uncertainty_regions", args.quick),
        "setup": {**setup, "r_core_A": R_CORE, "r_blend_A": 0.0, "r_buff": "expensive cutoff",
                  "rattle_A": RATTLE, "si_coordination": SI_COORDINATION, "w_csp": W_CSP,
                  "cheap": {"Si": str(SI_CHEAP.name), "W": str(W_CHEAP.relative_to(ROOT))},
                  "thresholds": {"Si": si_unc.threshold, "W": w_unc.threshold}},
        "cases": cases,
        "seconds_total": time.perf_counter() - t_start,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "uncertainty_regions"
    figure(result, args.out / f"{name}.png")
    for c in result["cases"].values():
        c.pop("_plot")
    save(result, args.out, name)
    return result


if __name__ == "__main__":
    out = main()
    for case, c in out["cases"].items():
        m = c["mixed"]
        print(f"{case}: structural {c['n_structural']}, uncertainty {c['n_uncertainty']} "
              f"(recall {c['fraction_of_structural_also_uncertain']}, extra {c['n_extra']}); "
              f"max error cheap {m['cheap_only']['max_force_error_eV_per_A']:.3f}, "
              f"structural {m['structural']['max_force_error_eV_per_A']:.3f}, "
              f"uncertainty same count {m['uncertainty_equal_size']['max_force_error_eV_per_A']:.3f}, "
              f"threshold {m['uncertainty_threshold']['max_force_error_eV_per_A']:.3f} eV/Å")
    print(f"{out['seconds_total']:.0f} s")
