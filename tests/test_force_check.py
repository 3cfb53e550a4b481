"""Seeds from a direct force check on a sparse random sample (mlmix.force_check)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from mlmix.errors import ConfigurationError
from mlmix.force_check import ForceCheckSeeds, force_disagreement, halo_mask
from mlmix.potentials.lammps import LammpsPotential
from mlmix.regions import RegionSpec, RegionTracker
from mlmix.seeds import IndexSeeds

# Si: Stillinger-Weber expensive, Tersoff cheap (both shipped, fast).
SI_A = 5.431


@pytest.fixture(scope="module")
def si_pair():
    sw = LammpsPotential.sw("Si.sw", ["Si"])
    tersoff = LammpsPotential.tersoff("Si.tersoff", ["Si"])
    yield sw, tersoff
    sw.close()
    tersoff.close()


def vacancy(seed: int = 0):
    at = bulk("Si", "diamond", a=SI_A, cubic=True).repeat(3)
    del at[0]
    at.positions += np.random.default_rng(seed).normal(0, 0.05, at.positions.shape)
    return at


def brute_force(atoms, expensive, cheap) -> np.ndarray:
    return np.linalg.norm(expensive.evaluate(atoms).forces - cheap.evaluate(atoms).forces,
                          axis=1)


def test_sampled_disagreement_is_the_whole_system_one(si_pair):
    sw, tersoff = si_pair
    at = vacancy()
    sample = np.array([3, 50, 100, 200])
    np.testing.assert_allclose(force_disagreement(at, sample, sw, tersoff),
                               brute_force(at, sw, tersoff)[sample], atol=1e-10)
    mask = halo_mask(at, sample, 3.0)
    d = at.get_distances(50, range(len(at)), mic=True)
    assert mask[d < 3.0].all() and mask[sample].all()


def test_a_full_check_flags_exactly_the_atoms_beyond_the_tolerance(si_pair):
    sw, tersoff = si_pair
    at = vacancy()
    error = brute_force(at, sw, tersoff)
    tol = float(np.percentile(error, 90))
    seeds = ForceCheckSeeds(IndexSeeds([7]), sw, tersoff, tolerance=tol, fraction=1.0, nfreq=5)
    seeds.check_schedule(5)
    ids = np.arange(len(at))
    mask = seeds.select(at, ids, 0, True)
    expected = error > tol
    expected[7] = True
    np.testing.assert_array_equal(mask, expected)
    (check,) = seeds.checks
    assert check["n_sampled"] == len(at) - 1 and check["n_rechecked"] == 0
    others = np.delete(error, 7)
    assert check["max_eV_per_A"] == pytest.approx(others.max())
    assert check["rms_eV_per_A"] == pytest.approx(np.sqrt(np.mean(others**2)))
    # between checks the flagged atoms stay seeds; no new check is made
    assert np.array_equal(seeds.select(at, ids, 3, True), mask) and len(seeds.checks) == 1


def test_a_sparse_check_samples_its_fraction_and_rechecks_the_flagged(si_pair):
    sw, tersoff = si_pair
    at = vacancy()
    seeds = ForceCheckSeeds(IndexSeeds([7]), sw, tersoff, tolerance=1e-3, fraction=0.1,
                            nfreq=5, seed=4)
    tracker = RegionTracker(RegionSpec(2.0, 0.0, sw.cutoff), seeds, nevery=5)
    tracker.update(at, 0)
    first = seeds.checks[0]
    assert first["n_sampled"] == round(0.1 * (len(at) - 1))
    assert first["n_flagged"] == first["n_sampled"]  # every atom is off by 1 meV/Å
    tracker.update(at, 5)
    second = seeds.checks[1]
    assert second["n_rechecked"] == first["n_flagged"]
    assert second["n_flagged"] == first["n_flagged"] + second["n_sampled"]
    state = seeds.state()
    again = ForceCheckSeeds(IndexSeeds([7]), sw, tersoff, tolerance=1e-3, fraction=0.1,
                            nfreq=5, seed=99)
    again.check_schedule(5)
    again.restore(state)
    ids = np.arange(len(at))
    np.testing.assert_array_equal(again.select(at, ids, 10, True),
                                  seeds.select(at, ids, 10, True))  # same random draw


@pytest.mark.parametrize("kwargs, match", [
    ({"tolerance": 0.0}, "tolerance must be a finite force > 0"),
    ({"tolerance": 0.1, "fraction": 1.5}, r"fraction must be in \(0, 1\]"),
    ({"tolerance": 0.1, "fraction": 0.0}, "fraction must be"),
    ({"tolerance": 0.1, "nfreq": 0}, "nfreq must be"),
])
def test_bad_settings_are_refused(si_pair, kwargs, match):
    sw, tersoff = si_pair
    with pytest.raises(ConfigurationError, match=match):
        ForceCheckSeeds(IndexSeeds([0]), sw, tersoff, **kwargs)


def test_a_check_between_rebuilds_is_refused(si_pair):
    sw, tersoff = si_pair
    seeds = ForceCheckSeeds(IndexSeeds([0]), sw, tersoff, tolerance=0.1, nfreq=7)
    with pytest.raises(ConfigurationError, match="multiple of the rebuild period"):
        RegionTracker(RegionSpec(2.0, 0.0, sw.cutoff), seeds, nevery=5)


def test_mlmix_run_logs_the_checks_and_refuses_bad_settings(tmp_path):
    """`[regions.force_check]` in `mlmix run`: the thermo log carries the running
    estimate, the summary every check; mistakes come in one message."""
    import mlmix.run as runner
    from test_run import si_config, write_config

    cfg = si_config(steps=20)
    cfg["regions"]["force_check"] = {"tolerance": 0.3, "fraction": 0.1, "nfreq": 10}
    summary = runner.run(write_config(tmp_path, cfg))
    checks = summary["force_checks"]
    assert [c["step"] for c in checks] == [0, 10, 20]
    # a tenth of the atoms neither the 4 defect seeds nor flagged before
    assert all(c["n_sampled"] == round(0.1 * (215 - 4 - c["n_rechecked"])) for c in checks)
    header = [ln for ln in (tmp_path / "run-run" / "thermo.log").read_text().splitlines()
              if ln.startswith("#")][-1].split()[1:]
    assert header[-3:] == ["checked_rms_eV_per_A", "checked_max_eV_per_A", "n_checked_seeds"]
    log = np.loadtxt(tmp_path / "run-run" / "thermo.log")
    last = log[log[:, 0] == 20][0]
    assert last[-2] == pytest.approx(checks[-1]["max_eV_per_A"], rel=1e-8)
    assert last[-1] == checks[-1]["n_flagged"]

    bad = si_config(kind="relax")
    for key in ("ensemble", "temperature_K", "steps", "seed"):
        del bad["task"][key]
    bad["regions"]["force_check"] = {"fraction": 2.0, "nfreq": 7, "colour": "red"}
    with pytest.raises(ConfigurationError) as err:
        runner.run(write_config(tmp_path, bad, "bad.toml"))
    msg = str(err.value)
    for text in ("regions.force_check.tolerance: missing", "regions.force_check.fraction",
                 "regions.force_check.colour", "needs task.kind = 'md'"):
        assert text in msg, text


def test_the_lammps_engine_refuses_a_force_check(tmp_path):
    import mlmix.run as runner
    from test_run import si_config, write_config

    cfg = si_config()
    cfg["engine"] = {"kind": "lammps"}
    cfg["regions"]["force_check"] = {"tolerance": 0.3}
    with pytest.raises(ConfigurationError, match="runs on the ASE engine only"):
        runner.run(write_config(tmp_path, cfg))
    assert not (tmp_path / "run-run").exists()
