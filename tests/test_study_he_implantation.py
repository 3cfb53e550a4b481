"""The He-implantation case study (``studies/he_implantation.py``): its counting,
statistics, integrator and resumable record, then the ``--quick`` run end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.data import atomic_masses, atomic_numbers

STUDIES = Path(__file__).resolve().parents[1] / "studies"
sys.path.insert(0, str(STUDIES))
import he_implantation as study  # noqa: E402

M_HE = atomic_masses[atomic_numbers["He"]]
A_W = 3.18046  # Å


def test_reflection_is_counted_once_the_he_leaves_moving_away():
    """A hand-made trajectory: in, bounce at the surface, out. Only the last state
    (above the release height, moving up) counts as reflected; a He that is high but
    still coming in, or moving up below the release height, does not."""
    z_top = 10.0
    release = study.RELEASE
    zs = [z_top + 5.0, z_top + 2.0, z_top + 0.5, z_top + 2.0, z_top + release + 0.1]
    vz = [-1.0, -1.0, +0.5, +0.5, +0.5]
    flags = [study.reflected(z, v, z_top) for z, v in zip(zs, vz, strict=True)]
    assert flags == [False, False, False, False, True]
    assert not study.reflected(z_top + release + 3.0, -0.1, z_top)


def test_reflection_coefficient_binomial_and_wilson():
    r = study.reflection_coefficient(30, 120)
    assert r["R"] == pytest.approx(0.25)
    assert r["stderr"] == pytest.approx(math.sqrt(0.25 * 0.75 / 120))
    lo, hi = r["wilson_68"]
    assert lo < 0.25 < hi
    # brute force: the Wilson interval is where |p - R| = z sqrt(p(1-p)/n), z = 1
    grid = np.linspace(0, 1, 200001)
    inside = grid[np.abs(grid - 0.25) <= np.sqrt(grid * (1 - grid) / 120)]
    assert lo == pytest.approx(inside.min(), abs=1e-4)
    assert hi == pytest.approx(inside.max(), abs=1e-4)
    # no zero-width interval at R = 0 or 1
    zero = study.reflection_coefficient(0, 10)
    assert zero["R"] == 0 and zero["wilson_68"][0] == pytest.approx(0) and zero["wilson_68"][1] > 0.05
    # the interval holds R exactly at R = 0 and 1 for every n (rounding put an end
    # 1e-17 past R at n = 18, which made the figure's error bars negative)
    for n in range(1, 300):
        for k in (0, n):
            ends = study.reflection_coefficient(k, n)["wilson_68"]
            assert 0.0 <= ends[0] <= k / n <= ends[1] <= 1.0
    with pytest.raises(ValueError, match="n > 0"):
        study.reflection_coefficient(0, 0)


def test_summary_counts_outcomes_per_energy():
    def impact(outcome, deepest, final, energy=40.0):
        return {"model": "mixed", "energy_eV": energy, "index": 0, "outcome": outcome,
                "deepest_A": deepest, "final_depth_A": final, "steps": 10, "wall_s": 1.0,
                "cpu_s": 1.0, "mean_weighted_atoms": 11.0, "path_fs_A": []}
    impacts = [impact("reflected", -1.0, 4.0), impact("reflected", -0.5, 4.0),
               impact("retained", -2.0, 0.3),    # still above the top layer: may yet leave
               impact("retained", -6.0, -5.0),
               impact("transmitted", -40.0, -40.0),  # deeper than the 31.5 Å slab
               impact("reflected", -0.2, 4.0, energy=10.0)]
    row = study.summarize(impacts, {"slab_thickness_A": 31.5})["reflection"]["mixed"]
    assert row["40.0"]["n"] == 5 and row["40.0"]["n_reflected"] == 2
    assert row["40.0"]["R"] == pytest.approx(0.4)
    assert row["40.0"]["n_through_slab"] == 1
    assert row["40.0"]["n_retained_above_top_layer"] == 1
    assert row["10.0"] == {**study.reflection_coefficient(1, 1), "n_through_slab": 0,
                           "n_retained_above_top_layer": 0, "mean_deepest_A": -0.2}


def test_paired_outcome_compares_at_the_all_expensive_stop():
    mixed = {"outcome": "reflected", "t_end_fs": 36.27}
    # all-expensive reflected a step earlier (its adaptive steps differ): the same outcome
    assert study.paired_outcome(mixed, {"outcome": "reflected", "t_end_fs": 36.26}) == "reflected"
    # all-expensive stopped at its shorter t_max: the mixed one as it stood then
    late = {"outcome": "reflected", "t_end_fs": 170.0}
    assert study.paired_outcome(late, {"outcome": "retained", "t_end_fs": 150.0}) == "retained"
    assert study.paired_outcome(mixed, {"outcome": "retained", "t_end_fs": 150.0}) == "reflected"
    through = {"outcome": "transmitted", "t_end_fs": 120.0}
    assert study.paired_outcome(through, {"outcome": "retained", "t_end_fs": 150.0}) == "transmitted"
    # a real difference stays one
    kept = {"outcome": "retained", "t_end_fs": 200.0}
    assert study.paired_outcome(kept, {"outcome": "reflected", "t_end_fs": 36.0}) == "retained"


def test_adaptive_dt_follows_the_displacement_and_energy_rules():
    v = np.zeros((3, 3))
    f = np.zeros((3, 3))
    assert study.adaptive_dt(v, f) == pytest.approx(study.DT_MAX_FS * units.fs)
    v[1, 2] = 0.5 / units.fs  # 0.5 Å/fs: 0.05 Å in 0.1 fs
    assert study.adaptive_dt(v, f, dx_max=0.05) == pytest.approx(0.1 * units.fs)
    f[1, 2] = -20.0  # eV/Å against the motion: 10 eV/fs of work
    assert study.adaptive_dt(v, f, dx_max=0.05, de_max=0.5) == pytest.approx(0.05 * units.fs)


def test_launch_places_one_he_at_the_energy_above_a_thermal_slab():
    slab = study.w110_slab(A_W, 4, 3, 2)
    assert len(slab) == 4 * 4 * 3 * 2
    assert slab.positions[:, 2].min() == pytest.approx(0.0)
    layers = np.unique(slab.positions[:, 2].round(6))
    assert np.allclose(np.diff(layers), A_W / math.sqrt(2))  # (110) interplanar spacing
    rng = np.random.default_rng(0)
    atoms = study.launch(slab, 60.0, rng)
    assert atoms.get_chemical_symbols()[-1] == "He" and len(atoms) == len(slab) + 1
    he = atoms.positions[-1]
    assert he[2] == pytest.approx(study.top_layer(slab) + study.START_HEIGHT)
    frac = np.linalg.solve(atoms.cell.array.T, he)
    assert 0 <= frac[0] < 1 and 0 <= frac[1] < 1
    v = atoms.get_velocities()
    assert 0.5 * M_HE * np.sum(v[-1] ** 2) == pytest.approx(60.0)
    assert v[-1, 2] < 0 and v[-1, 0] == v[-1, 1] == 0
    m = atoms.get_masses()[:-1]
    assert np.allclose(m @ v[:-1], 0.0, atol=1e-12)  # the slab does not drift
    # the same seed gives the same impact (mixed and all-expensive runs are paired)
    again = study.launch(slab, 60.0, np.random.default_rng(0))
    assert np.array_equal(again.positions, atoms.positions)
    assert np.array_equal(again.get_velocities(), v)


def test_bath_is_the_bottom_layers_only():
    slab = study.w110_slab(A_W, 4, 3, 3)
    bath = study.bath_mask(slab, depth=2.5)
    z = slab.positions[:, 2]
    assert bath.sum() == 2 * 4 * 3 * 2  # two (110) layers of 2 x 4 x 3 atoms
    assert z[bath].max() < 2.5 <= z[~bath].min()


def test_torn_last_line_is_dropped_and_a_torn_middle_line_refused(tmp_path):
    log = tmp_path / "impacts.jsonl"
    study.append_impact(log, {"model": "mixed", "index": 0})
    study.append_impact(log, {"model": "mixed", "index": 1})
    with log.open("a") as fh:
        fh.write('{"model": "mixed", "ind')  # killed mid-write
    assert [d["index"] for d in study.read_impacts(log)] == [0, 1]
    assert log.read_text().count("\n") == 2 and log.read_text().endswith("}\n")
    log.write_text('{"a": 1}\n{"b": \n{"c": 3}\n')
    with pytest.raises(json.JSONDecodeError):
        study.read_impacts(log)


def test_head_on_collision_backscatters_with_the_binary_collision_energy():
    """100 eV He straight down onto a surface atom of a 0 K W(110) slab, all-expensive,
    no bath: it comes back up (reflected) with energy between the free head-on binary
    collision value ((M - m)/(M + m))^2 E and E (the struck atom is bound, so it takes
    less than a free one would), and the adaptive step conserves the total energy."""
    from mlmix.potentials import LammpsPotential

    expensive = LammpsPotential.from_include(study.EXPENSIVE_FILE, ["W", "He"])
    slab = study.w110_slab(A_W, 4, 3, 2)
    atoms = study.launch(slab, 100.0, np.random.default_rng(1), temperature_K=0.0)
    top = np.argmax(slab.positions[:, 2])
    atoms.positions[-1, :2] = slab.positions[top, :2]
    calc = expensive.as_calculator()
    atoms.calc = calc
    e0 = atoms.get_potential_energy() + atoms.get_kinetic_energy()
    out = study.run_impact(atoms, calc, 60.0, np.random.default_rng(2),
                           np.zeros(len(atoms), bool))
    e1 = atoms.get_potential_energy() + atoms.get_kinetic_energy()
    assert out["outcome"] == "reflected"
    w = atomic_masses[atomic_numbers["W"]]
    k_free = ((w - M_HE) / (w + M_HE)) ** 2
    assert k_free * 100.0 < out["final_he_energy_eV"] < 100.0
    assert abs(e1 - e0) < 0.5  # eV, of 100 eV brought in


def test_lateral_sites_are_uniform_independent_and_apart():
    """Each He of a 2 x 2 batch is uniform over the surface on its own, the sites are
    independent modulo the surface period, and no two come closer than the bound."""
    box, period = np.array([63.6, 67.5]), np.array([3.18, 4.5])
    rng = np.random.default_rng(5)
    sites = np.array([study.lateral_sites(box, period, (2, 2), rng) for _ in range(4000)])
    assert sites.shape == (4000, 4, 2) and (sites >= 0).all() and (sites < box).all()
    frac = sites / box
    for k in range(4):  # uniform: each quarter of the surface gets a quarter of the He
        quarter = (frac[:, k, 0] < 0.5) * 2 + (frac[:, k, 1] < 0.5)
        assert np.allclose(np.bincount(quarter, minlength=4) / 4000, 0.25, atol=0.03)
    cell = (sites % period) / period  # site within the surface period, in [0, 1)
    c = np.corrcoef(cell[:, :, 0].T)
    assert np.abs(c[~np.eye(4, dtype=bool)]).max() < 0.06
    d = sites[:, :, None, :] - sites[:, None, :, :]
    d -= box * np.round(d / box)  # minimum image
    r = np.linalg.norm(d, axis=-1)[:, ~np.eye(4, dtype=bool)]
    bound = study.min_site_separation(box, period, (2, 2))
    assert bound == pytest.approx(63.6 / 2 - 3.18) and r.min() >= bound - 1e-9
    with pytest.raises(ValueError, match="period_xy"):
        study.launch(study.w110_slab(A_W, 4, 3, 2), 20.0, rng, grid=(2, 1))


def test_batched_impacts_match_their_single_runs_and_leave_the_slab():
    """Two 100 eV He onto surface atoms 12.7 Å apart on a 0 K slab, mixed as in the
    study: each bounces back, is taken out of the slab once it has left (the regions
    follow), and follows the same depth path as the same He shot alone (they do not see
    each other)."""
    from mlmix import MixedCalculator, RegionSpec, RegionTracker, SpeciesSeeds
    from mlmix.potentials import LammpsPotential

    expensive = LammpsPotential.from_include(study.EXPENSIVE_FILE, ["W", "He"])
    cheap = LammpsPotential.uf3(study.CHEAP_FILE, ["W"])
    spec = RegionSpec(r_core=study.REGIONS["r_core"], r_blend=study.REGIONS["r_blend"],
                      r_buff=expensive.cutoff)

    def mixed():
        return MixedCalculator(expensive, cheap, RegionTracker(spec, SpeciesSeeds("He"), nevery=1),
                               min_distance=study.MIN_DISTANCE)

    slab = study.w110_slab(A_W, 8, 3, 1)
    tops = np.flatnonzero(slab.positions[:, 2] > slab.positions[:, 2].max() - 0.1)
    first = tops[np.argmin(slab.positions[tops, 0])]
    second = tops[np.argmin(np.abs(slab.positions[tops, 0] - slab.positions[first, 0] - 4 * A_W)
                            + np.abs(slab.positions[tops, 1] - slab.positions[first, 1]))]
    period = (A_W, A_W * math.sqrt(2))
    pair = study.launch(slab, 100.0, np.random.default_rng(1), temperature_K=0.0, grid=(2, 1),
                        period_xy=period)
    assert list(pair.arrays["he_slot"][-2:]) == [0, 1] and len(pair) == len(slab) + 2
    pair.positions[-2, :2] = slab.positions[first, :2]
    pair.positions[-1, :2] = slab.positions[second, :2] + [0.4, 0.0]  # (leaves later)
    alone = study.launch(slab, 100.0, np.random.default_rng(1), temperature_K=0.0)
    alone.positions[-1, :2] = slab.positions[first, :2]
    runs, cost = study.run_impacts(pair, mixed(), 40.0,
                                   np.random.default_rng(2), np.zeros(len(pair), bool))
    single = study.run_impact(alone, mixed(), 40.0,
                              np.random.default_rng(2), np.zeros(len(alone), bool))
    assert [r["outcome"] for r in runs] == ["reflected", "reflected"]
    assert single["outcome"] == "reflected"
    assert len(pair) == len(slab) + 1  # the first to leave was taken out, the last kept
    assert cost["steps"] == max(r["steps"] for r in runs) and cost["mean_weighted_atoms"] > 2
    # the batch's step is the smaller of both He's, so the paths are compared in time
    a, b = np.array(runs[0]["path_fs_A"]), np.array(single["path_fs_A"])
    grid = a[(a[:, 0] > b[0, 0]) & (a[:, 0] < b[-1, 0]), 0]
    gap = np.abs(np.interp(grid, a[:, 0], a[:, 1]) - np.interp(grid, b[:, 0], b[:, 1]))
    # (3 mÅ measured: samples 10 steps apart, interpolated, on steps that differ)
    assert len(grid) > 10 and gap.max() < 0.01  # Å
    assert runs[0]["t_end_fs"] == pytest.approx(single["t_end_fs"], abs=0.1)
    assert runs[1]["t_end_fs"] > runs[0]["t_end_fs"] + 1.0  # the second left later
    assert runs[0]["final_he_energy_eV"] == pytest.approx(single["final_he_energy_eV"], abs=0.01)


def test_batches_group_consecutive_unpaired_mixed_impacts_and_drop_torn_ones(tmp_path):
    plan = [("mixed", e, k, 200.0) for k in range(0, 7) for e in (10.0, 20.0)]
    plan += [("expensive", 20.0, 0, 150.0)]
    runs = study.batches(plan, paired={(20.0, 0)}, per_slab=2)
    assert [(m, e, i) for m, e, i, _ in runs] == [
        ("mixed", 10.0, [0, 1]), ("mixed", 20.0, [0]), ("mixed", 20.0, [1, 2]),
        ("mixed", 10.0, [2, 3]), ("mixed", 20.0, [3, 4]), ("mixed", 10.0, [4, 5]),
        ("mixed", 20.0, [5, 6]), ("mixed", 10.0, [6]), ("expensive", 20.0, [0])]
    assert study.impact_seed(7, 20.0, 3) == [7, 200, 3]
    assert study.impact_seed(7, 20.0, 3, 4) == [7, 200, 3, 4]
    # a batch whose lines were not all written (a killed run) is dropped and runs again
    log = tmp_path / "impacts.jsonl"
    whole = [{"model": "mixed", "energy_eV": 10.0, "index": i,
              "batch": {"first_index": 0, "size": 2}} for i in (0, 1)]
    torn = [{"model": "mixed", "energy_eV": 10.0, "index": 2,
             "batch": {"first_index": 2, "size": 2}}]
    study.append_impact(log, whole + torn)
    study.append_impact(log, {"model": "mixed", "energy_eV": 20.0, "index": 0})
    assert [(d["energy_eV"], d["index"]) for d in study.read_impacts(log)] == [
        (10.0, 0), (10.0, 1), (20.0, 0)]
    assert log.read_text().count("\n") == 3


@pytest.mark.slow
def test_he_implantation_quick_runs_and_resumes(tmp_path):
    cmd = [sys.executable, str(STUDIES / "he_implantation.py"), "--quick", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "he_implantation_quick.json").read_text())
    assert (tmp_path / "he_implantation_quick.png").stat().st_size > 10_000
    setup = r["setup"]
    assert r["quick"] and r["complete"]
    assert setup["r_core"] > study.HE_W_CUTOFF and setup["r_buff_A"] >= setup["expensive_cutoff_A"]
    mixed = r["summary"]["reflection"]["mixed"]
    assert sorted(float(e) for e in mixed) == sorted(setup["energies_eV"])
    for row in mixed.values():
        assert row["n"] == setup["impacts"] and 0 <= row["R"] <= 1
    # the He follows the core: exact forces on it and its core at contact
    fc = r["force_check_at_contact"]
    assert fc["he_height_A"] < 1.0 and fc["n_core"] >= 2
    assert fc["max_error_core_eV_per_A"] < 1e-8 < fc["max_force_on_he_eV_per_A"]
    paired = r["summary"]["paired"]
    assert paired["n"] == len(setup["paired_energies_eV"]) * setup["paired_impacts"]
    cost = r["summary"]["cost"]
    assert cost["mixed"]["mean_weighted_atoms"] >= 1 and cost["speedup_per_step"] > 0
    # 60 eV ran as one batch of two He (one per tile), 20 eV one at a time (paired, last)
    log = [json.loads(x) for x in (tmp_path / "he_implantation_quick_impacts_mixed.jsonl")
           .read_text().splitlines()]
    batched = [d for d in log if "batch" in d]
    assert [(d["energy_eV"], d["index"]) for d in batched] == [(60.0, 0), (60.0, 1)]
    assert batched[0]["batch"]["size"] == 2 and batched[0]["batch"]["min_separation_A"] > 9
    assert cost["mixed_batched"]["2"]["impacts"] == 2 and cost["mixed_batched"]["2"]["batches"] == 1
    assert cost["mixed"]["impacts"] == 2
    # a second run finds every impact done and adds none
    lines = {p.name: p.read_text() for p in tmp_path.glob("*.jsonl")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name: p.read_text() for p in tmp_path.glob("*.jsonl")} == lines


def test_negative_budget_refused_before_any_work(tmp_path):
    with pytest.raises(SystemExit, match="--budget-hours must be >= 0"):
        study.main(["--budget-hours", "-1", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("part", ["2/2", "1", "a/b", "0/0"])
def test_bad_part_refused_before_any_work(tmp_path, part):
    with pytest.raises(SystemExit, match=r"--part must be I/N with 0 <= I < N"):
        study.main(["--part", part, "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())
    assert study.parse_part("1/3") == (1, 3)
