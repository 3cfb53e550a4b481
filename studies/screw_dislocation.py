"""Case study: a 1/2<111> screw dislocation gliding in bcc W, mixed against all-expensive.

A thin cylinder, periodic along the line, built with matscipy (anisotropic elastic field
for the elastic constants of the expensive potential), is sheared homogeneously
(u_z += gamma y) with its outer shell held fixed, which puts a resolved shear stress on
the (-110)[111] glide system and drives the core along x = [11-2]. The core is found by
a classifier: centrosymmetry (:func:`mlmix.seeds.centrosymmetry`) averaged over a window
of samples, re-queried every ``nfreq`` steps, with time hysteresis of the weights.
Expensive: W_2940_2017_2 (SNAP twojmax 8 + ZBL); cheap: the constrained linear SNAP
(twojmax 6) of ``examples/fit-w``. The all-expensive run uses the same thermostat
weights (w = 1 - p from an identical region tracker that evaluates no potential) and
the same classifier to locate the core, so the two runs differ by their forces only.

Run: ``python studies/screw_dislocation.py [--quick] [--out DIR]`` (writes
``screw_dislocation.json`` and ``screw_dislocation.png``; default ``studies/results/``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from _common import ROOT, expensive_properties, header, parse_args, save, save_figure
from ase import Atoms, units
from ase.constraints import FixAtoms

from mlmix import (
    ClassifierSeeds,
    Hysteresis,
    MixedCalculator,
    RegionLangevin,
    RegionSpec,
    RegionTracker,
)
from mlmix.potentials import LammpsPotential
from mlmix.seeds import centrosymmetry, masked
from mlmix.structures import bcc_screw_dislocation, near_dislocation_line, thermalize

EXPENSIVE_FILE = "W_2940_2017_2.snap"
CHEAP_FILE = ROOT / "examples" / "fit-w" / "W_linear_snap.snapcoeff"

FULL = {"radius": 20.0, "n_burgers": 4, "steps": 1200, "sample_every": 20}
QUICK = {"radius": 12.0, "n_burgers": 3, "steps": 100, "sample_every": 20}
FIX_WIDTH = 5.0         # Å, >= the expensive cutoff (4.8 Å): interior atoms see bulk
SHEAR_STRAIN = 0.03     # gamma_yz, engineering shear of the whole cylinder
TEMPERATURE_K = 600.0
TIMESTEP_FS = 2.0       # W is heavy (no He here)
FRICTION_PER_FS = 0.01
CSP = {"n_neighbours": 8, "r_cut": 3.6}  # bcc: 8 nearest, searched beyond the 2nd shell
# Classifier: a perfect (affinely sheared) crystal has P = 0, thermal noise at 600 K
# gives ~0.2-0.6 Å^2, the three core columns ~8 Å^2.
CLASSIFIER = {"lb": 4.0, "nfreq": 40, "window": 4}
REGIONS = {"r_core": 3.0, "r_blend": 3.0, "nevery": 10}  # Å, Å, steps
HYSTERESIS = {"tau_in": 0.0, "tau_out": 100.0}       # fs: in at once, out slowly


def elastic_data() -> dict:
    """a (Å) and C11, C12, C44 (GPa) of W_2940_2017_2, from the fit report.

    They were computed by :mod:`mlmix.fitting.elastic` on the relaxed expensive cell
    when ``examples/fit-w`` was made (``mlmix fit examples/fit-w.toml``).
    """
    model = expensive_properties("fit-w")
    return {"a": model["lattice_parameter_A"], **{k: model["cubic"][k] for k in ("C11", "C12", "C44")}}


def glide_shear_modulus(C11: float, C12: float, C44: float) -> float:
    """Shear modulus (GPa) of a cubic crystal for the {110}<111> system: (C11 - C12 + C44)/3."""
    return (C11 - C12 + C44) / 3.0


def sheared_cylinder(setup: dict, el: dict) -> tuple[Atoms, np.ndarray]:
    """The dislocation cylinder with u_z += gamma (y - y_core) on every atom, outer shell fixed."""
    atoms, fixed = bcc_screw_dislocation("W", el["a"], el["C11"], el["C12"], el["C44"],
                                         setup["radius"], setup["n_burgers"], FIX_WIDTH)
    core = atoms.info["core_position"]
    atoms.positions[:, 2] += SHEAR_STRAIN * (atoms.positions[:, 1] - core[1])
    atoms.set_constraint(FixAtoms(mask=fixed))
    return atoms, fixed


def make_tracker(atoms: Atoms, fixed: np.ndarray, r_buff: float) -> RegionTracker:
    seeds = ClassifierSeeds(masked(centrosymmetry(**CSP), fixed), lb=CLASSIFIER["lb"],
                            nfreq=CLASSIFIER["nfreq"], window=CLASSIFIER["window"],
                            initial=near_dislocation_line(atoms))
    return RegionTracker(RegionSpec(REGIONS["r_core"], REGIONS["r_blend"], r_buff=r_buff),
                         seeds, nevery=REGIONS["nevery"],
                         hysteresis=Hysteresis(timestep=TIMESTEP_FS, **HYSTERESIS))


class TrackedWeights:
    """Thermostat weights w = 1 - p from a region tracker that evaluates no potential."""

    def __init__(self, tracker: RegionTracker):
        self.tracker = tracker
        self.step = 0

    def __call__(self, atoms: Atoms) -> np.ndarray:
        p = self.tracker.update(atoms, self.step).p
        self.step += 1
        return 1.0 - p


def core_sample(atoms: Atoms, regions, fixed: np.ndarray, quantity, origin: np.ndarray,
                k_top: int) -> dict:
    """Where the core is and whether the expensive region holds it.

    Core position: centroid (x, y; Å, from the initial core) of the classifier's seeds;
    also the centroid of the ``k_top`` largest instantaneous values (noisier, no lag).
    Check: of the ``k_top`` interior atoms with the largest instantaneous
    centrosymmetry (the core columns, 3 per Burgers vector), the fraction with p = 1;
    and the distance (Å) in the xy plane from the seed centroid to the nearest atom
    with p < 1.
    """
    xy = atoms.positions[:, :2] - origin[:2]
    centre = xy[regions.seeds].mean(axis=0) if regions.seeds.any() else np.full(2, np.nan)
    q = quantity(atoms)
    top = np.argsort(-q)[:k_top]
    outside = regions.p < 1
    margin = float(np.min(np.hypot(*(xy[outside] - centre).T))) if outside.any() else None
    return {"x": float(centre[0]), "y": float(centre[1]),
            "top_csp_x": float(xy[top, 0].mean()), "top_csp_y": float(xy[top, 1].mean()),
            "n_seeds": int(regions.seeds.sum()),
            "top_csp_in_core_fraction": float(np.mean(regions.p[top] == 1.0)),
            "margin_A": margin, "n_expensive": int(regions.expensive.sum())}


def glide_summary(t: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict:
    """Distance (Å), direction (degrees from x = [11-2]) and speed of the core's glide.

    Distance and direction from the ends of the track, each averaged over 10 % of the
    samples (thermal jitter). Velocity: least-squares slope of x(t) over the whole run
    (Å/ps; m/s = 100 Å/ps). The fixed shell holds the elastic field of the starting
    position, so the back stress grows as the core leaves: the velocity is an average
    over a slowing glide, not a steady-state value. ``t90``: first time the core is
    90 % of the way to its final position.
    """
    n_avg = max(1, len(x) // 10)
    dx, dy = x[-n_avg:].mean() - x[:n_avg].mean(), y[-n_avg:].mean() - y[:n_avg].mean()
    distance = float(np.hypot(dx, dy))
    along = (x * dx + y * dy) / max(distance, 1e-12)  # progress along the travel direction
    reached = np.flatnonzero(along >= 0.9 * distance)
    t90 = float(t[reached[0]] - t[0]) if reached.size else float("nan")
    slope = float(np.polyfit(t, x, 1)[0]) if len(t) >= 2 else float("nan")
    return {"glide_distance_A": distance, "glide_direction_deg": float(np.degrees(np.arctan2(dy, dx))),
            "displacement_xy_A": [float(dx), float(dy)], "t90_ps": t90,
            "velocity_A_per_ps": slope, "velocity_m_per_s": slope * 100.0}


def run(name: str, setup: dict, el: dict, expensive, cheap, seed: int) -> tuple[dict, Atoms]:
    atoms, fixed = sheared_cylinder(setup, el)
    origin = atoms.info["core_position"].copy()
    tracker = make_tracker(atoms, fixed, expensive.cutoff)
    if name == "mixed":
        atoms.calc = MixedCalculator(expensive, cheap, tracker)
        weights = "cheap"

        def regions():
            return atoms.calc.regions
    else:
        atoms.calc = expensive.as_calculator()
        weights = TrackedWeights(tracker)

        def regions():
            return tracker.regions
    thermalize(atoms, TEMPERATURE_K, seed)
    md = RegionLangevin(atoms, TIMESTEP_FS * units.fs, temperature_K=TEMPERATURE_K,
                        friction=FRICTION_PER_FS / units.fs, weights=weights, rng=seed)
    quantity = masked(centrosymmetry(**CSP), fixed)
    samples, times, temps = [], [], []

    def sample():
        if regions() is None:  # before the first force call
            return
        samples.append(core_sample(atoms, regions(), fixed, quantity, origin,
                                   3 * setup["n_burgers"]))
        times.append(md.nsteps * TIMESTEP_FS * 1e-3)
        temps.append(atoms.get_temperature())

    md.attach(sample, interval=setup["sample_every"])
    t0 = time.perf_counter()
    md.run(setup["steps"])
    seconds = time.perf_counter() - t0
    t = np.array(times)
    x = np.array([s["x"] for s in samples])
    y = np.array([s["y"] for s in samples])
    out = {"time_ps": t.tolist(), "core_x_A": x.tolist(), "core_y_A": y.tolist(),
           "samples": samples, **glide_summary(t, x, y),
        "top_csp_in_core_fraction_mean": float(np.mean([s["top_csp_in_core_fraction"] for s in samples])),
        "margin_min_A": min((s["margin_A"] for s in samples if s["margin_A"] is not None),
                            default=None),  # None: every atom had p = 1
        "n_expensive_mean": float(np.mean([s["n_expensive"] for s in samples])),
        "mean_temperature_K": float(np.mean(temps)),
        "wall_seconds": seconds, "ms_per_step": 1e3 * seconds / setup["steps"],
    }
    return out, atoms


def figure(result: dict, snapshot: Atoms, fixed: np.ndarray, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    for name, color, label in (("expensive", "k", "all-expensive (W SNAP 2J=8)"),
                               ("mixed", "tab:red", "mixed (cheap: linear SNAP 2J=6)")):
        r = result["runs"][name]
        ax1.plot(r["time_ps"], r["core_x_A"], "-o", ms=3, color=color, label=f"{label}: x")
        ax1.plot(r["time_ps"], r["core_y_A"], ":", color=color, label=f"{label}: y")
    ax1.set_xlabel("time (ps)")
    ax1.set_ylabel("core position from start (Å)")
    ax1.set_title(f"screw core, {result['setup']['temperature_K']:.0f} K, "
                  f"τ ≈ {result['setup']['resolved_shear_stress_GPa']:.1f} GPa")
    ax1.legend(fontsize=7)
    xy = snapshot.positions[:, :2] - result["setup"]["initial_core_position_A"][:2]
    p = snapshot.arrays["mlmix_p"]
    ax2.scatter(*xy[fixed].T, s=8, c="0.8", label="fixed shell")
    sc = ax2.scatter(*xy[~fixed].T, s=10, c=p[~fixed], cmap="viridis", vmin=0, vmax=1)
    seeds = snapshot.calc.regions.seeds
    ax2.scatter(*xy[seeds].T, s=30, facecolors="none", edgecolors="r", label="seeds (CSP)")
    fig.colorbar(sc, ax=ax2, label="expensive weight p")
    ax2.set_aspect("equal")
    ax2.set_xlabel("x = [11-2] (Å)")
    ax2.set_ylabel("y = [-110] (Å)")
    ax2.set_title("mixed run, last step, projected along [111]")
    ax2.legend(fontsize=7, loc="upper right")
    save_figure(fig, path)


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv)
    setup = dict(QUICK if args.quick else FULL)
    t_start = time.perf_counter()
    el = elastic_data()
    expensive = LammpsPotential.from_include(EXPENSIVE_FILE, ["W"])
    cheap = LammpsPotential.snap(CHEAP_FILE, ["W"])
    atoms, fixed = sheared_cylinder(setup, el)
    mu = glide_shear_modulus(el["C11"], el["C12"], el["C44"])
    result = {
        **header("1/2<111> screw dislocation gliding in bcc W", args.quick),
        "setup": {
            **setup, "fix_width_A": FIX_WIDTH, "n_atoms": len(atoms),
            "n_fixed": int(fixed.sum()),
            "lattice_parameter_A": el["a"],
            "elastic_constants_GPa": {k: el[k] for k in ("C11", "C12", "C44")},
            "elastic_source": "examples/fit-w/report.json (mlmix.fitting.elastic on "
                              "W_2940_2017_2)",
            "builder": "mlmix.structures.bcc_screw_dislocation (matscipy "
                       "BCCScrew111Dislocation, method adsl, self-consistent)",
            "burgers_vector_A": atoms.info["burgers_vector"].tolist(),
            "initial_core_position_A": atoms.info["core_position"].tolist(),
            "glide_distance_between_valleys_A": atoms.info["glide_distance"],
            "shear_strain_yz": SHEAR_STRAIN,
            "glide_shear_modulus_GPa": mu,
            "resolved_shear_stress_GPa": SHEAR_STRAIN * mu,
            "stress_note": "nominal: gamma times (C11-C12+C44)/3 at 0 K; the fixed shell "
                           "holds the strain",
            "temperature_K": TEMPERATURE_K, "timestep_fs": TIMESTEP_FS,
            "friction_per_fs": FRICTION_PER_FS,
            "expensive": EXPENSIVE_FILE, "expensive_cutoff_A": expensive.cutoff,
            "cheap": str(CHEAP_FILE.relative_to(ROOT)), "cheap_cutoff_A": cheap.cutoff,
            "classifier": {"quantity": "centrosymmetry, fixed shell excluded", **CSP,
                           **CLASSIFIER, "ub": "inf",
                           "initial": "atoms within 2.5 Å of the line"},
            "regions": {**REGIONS, "r_buff_A": expensive.cutoff, "skin_A": 0.5},
            "hysteresis_fs": HYSTERESIS,
            "thermostat": "RegionLangevin, w = 1 - p in both runs (all-expensive: p from "
                          "an identical weights-only region tracker)",
            "rng_seed": args.seed,
        },
        "runs": {},
    }
    snapshot = None
    for name in ("mixed", "expensive"):
        out, final = run(name, setup, el, expensive, cheap, args.seed)
        result["runs"][name] = out
        if name == "mixed":
            snapshot = final
    m, e = result["runs"]["mixed"], result["runs"]["expensive"]
    result["speedup_per_step"] = e["ms_per_step"] / m["ms_per_step"]
    result["wall_seconds_total"] = time.perf_counter() - t_start
    save(result, args.out, "screw_dislocation")
    figure(result, snapshot, fixed, args.out / "screw_dislocation.png")
    for name in ("mixed", "expensive"):
        r = result["runs"][name]
        print(f"{name:10s} glide {r['glide_distance_A']:6.2f} Å dir {r['glide_direction_deg']:4.0f} deg"
              f"  v {r['velocity_m_per_s']:.0f} m/s"
              f"  top-CSP atoms in core {r['top_csp_in_core_fraction_mean']:.2f}"
              f"  margin >= {r['margin_min_A']} Å  {r['ms_per_step']:.0f} ms/step")
    print(f"done in {result['wall_seconds_total']:.0f} s: {args.out / 'screw_dislocation.json'}")
    return result


if __name__ == "__main__":
    main()
