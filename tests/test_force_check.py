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
