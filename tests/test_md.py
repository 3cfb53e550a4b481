"""RegionLangevin against ASE's Langevin and velocity Verlet, with real Si potentials."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.md.langevin import Langevin
from ase.md.verlet import VelocityVerlet
from numpy.testing import assert_allclose, assert_array_equal

from mlmix import (
    ConfigurationError,
    IndexSeeds,
    MixedCalculator,
    RegionSpec,
    RegionTracker,
)
from mlmix.engines.langevin import RegionLangevin
from mlmix.structures import thermalize

DT = 1.0 * units.fs
FRICTION = 0.02 / units.fs


def si_cell(pair, r_core=3.0, r_blend=3.0, temperature_K=600.0, seed=0):
    """64-atom diamond Si, thermalized, with a MixedCalculator seeded at atom 0.

    The default radii give 5 atoms with p = 1, a blend shell (0 < p < 1) and a
    cheap rest (p = 0); ``r_core=20`` puts every atom in the core (pure SW).
    """
    expensive, cheap = pair
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    atoms.rattle(0.02, seed=seed)
    thermalize(atoms, temperature_K, seed)
    spec = RegionSpec(r_core=r_core, r_blend=r_blend, r_buff=expensive.cutoff)
    atoms.calc = MixedCalculator(expensive, cheap, RegionTracker(spec, IndexSeeds([0])))
    return atoms


@pytest.mark.parametrize("weights, r_core", [("all", 3.0), (None, 3.0), ("expensive", 20.0)])
def test_unit_weights_are_ase_langevin_bit_for_bit(sw_tersoff_pair, weights, r_core):
    a, b = si_cell(sw_tersoff_pair, r_core=r_core), si_cell(sw_tersoff_pair, r_core=r_core)
    RegionLangevin(a, DT, temperature_K=600, friction=FRICTION, weights=weights,
                   rng=np.random.default_rng(5)).run(25)
    Langevin(b, DT, temperature_K=600, friction=FRICTION, fixcm=False,
             rng=np.random.default_rng(5)).run(25)
    assert_array_equal(a.positions, b.positions)
    assert_array_equal(a.get_momenta(), b.get_momenta())


def test_weights_all_equilibrates_to_target_temperature(sw_tersoff_pair):
    # every atom in the core: pure SW, conservative forces, so Langevin samples the
    # canonical ensemble and <T_kin> = T (3N degrees of freedom, no constraint)
    atoms = si_cell(sw_tersoff_pair, r_core=20.0, temperature_K=200.0)
    target = 600.0
    dyn = RegionLangevin(atoms, 2.0 * units.fs, temperature_K=target,
                         friction=FRICTION, weights="all", rng=11)
    temps = []
    dyn.attach(lambda: temps.append(atoms.get_temperature()), interval=1)
    dyn.run(1600)
    t = np.array(temps[401:])  # step 0, then 800 fs of equilibration (16 / friction)
    blocks = t.reshape(12, -1).mean(axis=1)  # 200 fs blocks, longer than correlations
    mean, err = blocks.mean(), blocks.std(ddof=1) / np.sqrt(len(blocks))
    assert temps[0] < 350  # it really had to heat up
    assert err < 25  # the statistics can resolve a wrong thermostat
    assert abs(mean - target) < 4 * err, (mean, err)


def test_core_atoms_with_p1_follow_velocity_verlet(sw_tersoff_pair):
    # every atom has p = 1: weights="cheap" must be plain velocity Verlet
    a, b = si_cell(sw_tersoff_pair, r_core=20.0), si_cell(sw_tersoff_pair, r_core=20.0)
    dyn = RegionLangevin(a, DT, temperature_K=600, friction=0.1 / units.fs,
                         weights="cheap", rng=3)
    dyn.run(40)
    assert_array_equal(dyn.w, 0.0)
    VelocityVerlet(b, DT).run(40)
    assert_allclose(a.positions, b.positions, rtol=0, atol=1e-10)
    assert_allclose(a.get_momenta(), b.get_momenta(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("weights", ["cheap", "expensive"])
def test_thermostat_increment_vanishes_where_weight_is_zero(sw_tersoff_pair, weights):
    atoms = si_cell(sw_tersoff_pair)
    calc = atoms.calc
    atoms.get_forces()
    p0 = calc.regions.p.copy()
    core, blend, rest = p0 == 1, (p0 > 0) & (p0 < 1), p0 == 0
    assert core.sum() >= 5 and blend.sum() >= 5 and rest.sum() >= 5
    dyn = RegionLangevin(atoms, DT, temperature_K=600, friction=FRICTION,
                         weights=weights, rng=1)
    seen = []

    def check():
        if dyn.w is None:  # the observer call before the first step
            return
        off = dyn.w == 0
        seen.append(off.sum())
        assert_array_equal(dyn.c2[off], 0.0)
        assert_array_equal(dyn.rnd_vel[off], 0.0)
        assert_array_equal(dyn.rnd_pos[off], 0.0)
        assert_array_equal(dyn.c1[off], DT / 2)
        assert (np.abs(dyn.rnd_vel[~off]) > 0).all() and (dyn.c2[~off] > 0).all()

    dyn.attach(check, interval=1)
    dyn.run(1)
    # the first step used the weights of the force call at the start
    assert_array_equal(dyn.w, 1 - p0 if weights == "cheap" else p0)
    dyn.run(9)
    assert len(seen) == 10 and min(seen) > 0
    # blend atoms get a partial thermostat, with drag and noise both scaled by w
    w = dyn.w[:, None]
    assert ((w > 0) & (w < 1)).sum() >= 5
    assert_allclose(dyn.c2, DT * w * FRICTION / 2 - (DT * w * FRICTION) ** 2 / 8, rtol=1e-14)
    sigma = np.sqrt(2 * 600 * units.kB * FRICTION / dyn.masses)
    assert_allclose(dyn.c5, DT**1.5 * w * sigma / (2 * np.sqrt(3)), rtol=1e-14)


def test_callable_and_array_fallback_match_cheap(sw_tersoff_pair):
    a, b = si_cell(sw_tersoff_pair), si_cell(sw_tersoff_pair)
    RegionLangevin(a, DT, temperature_K=600, friction=FRICTION, weights="cheap", rng=7).run(15)
    RegionLangevin(b, DT, temperature_K=600, friction=FRICTION, rng=7,
                   weights=lambda atoms: 1 - atoms.arrays["mlmix_p"]).run(15)
    assert_array_equal(a.positions, b.positions)

    # a plain calculator: p comes from the atoms' mlmix_p array
    expensive, _ = sw_tersoff_pair
    c = si_cell(sw_tersoff_pair)
    c.calc = expensive.as_calculator()
    p = np.zeros(len(c))
    p[:10] = 1.0
    c.arrays["mlmix_p"] = p
    dyn = RegionLangevin(c, DT, temperature_K=600, friction=FRICTION, rng=7)
    dyn.run(2)
    assert_array_equal(dyn.w, 1 - p)
    assert_array_equal(dyn.rnd_pos[:10], 0.0)


def test_same_seed_same_trajectory(sw_tersoff_pair):
    runs = []
    for seed in (42, 42, 43):
        atoms = si_cell(sw_tersoff_pair)
        RegionLangevin(atoms, DT, temperature_K=600, friction=FRICTION, rng=seed).run(20)
        runs.append(atoms.positions.copy())
    assert_array_equal(runs[0], runs[1])
    assert np.abs(runs[0] - runs[2]).max() > 1e-4


@pytest.mark.parametrize("kwargs, message", [
    ({"friction": -0.01}, r"friction must be finite and >= 0 \(in 1/ASE time.*got -0.01"),
    ({"temperature_K": -5.0}, r"temperature_K must be finite and >= 0 \(in K\), got -5.0"),
    ({"temperature_K": float("nan")}, r"temperature_K must be finite.*got nan"),
    ({"timestep": 0.0}, r"timestep must be finite and > 0 \(in ASE time units"),
    ({"weights": "core"}, r"weights must be 'cheap', 'expensive', 'all', None or a callable"),
    ({"rng": np.random.RandomState(0)}, r"rng must be a numpy.random.Generator .*RandomState"),
])
def test_bad_arguments(sw_tersoff_pair, kwargs, message):
    atoms = si_cell(sw_tersoff_pair)
    args = {"timestep": DT, "temperature_K": 600.0, "friction": FRICTION} | kwargs
    with pytest.raises(ConfigurationError, match=message):
        RegionLangevin(atoms, **args)


@pytest.mark.parametrize("weights", ["cheap", "expensive"])
def test_missing_region_weights(sw_tersoff_pair, weights):
    atoms = si_cell(sw_tersoff_pair)
    atoms.calc = sw_tersoff_pair[0].as_calculator()  # not a MixedCalculator, no mlmix_p
    with pytest.raises(ConfigurationError,
                       match=r"needs the region weights p_i, but atoms.calc \(PotentialCalculator\) "
                             r"has no regions and atoms.arrays has no 'mlmix_p'"):
        RegionLangevin(atoms, DT, temperature_K=600, friction=FRICTION, weights=weights)
    # an ordinary Langevin needs no regions
    RegionLangevin(atoms, DT, temperature_K=600, friction=FRICTION, weights="all", rng=2).run(2)


def test_bad_callable_weights(sw_tersoff_pair):
    atoms = si_cell(sw_tersoff_pair)
    dyn = RegionLangevin(atoms, DT, temperature_K=600, friction=FRICTION, rng=2,
                         weights=lambda a: np.ones(3))
    with pytest.raises(ConfigurationError, match=r"shape \(64,\), one per atom, got \(3,\)"):
        dyn.run(1)
    dyn = RegionLangevin(atoms, DT, temperature_K=600, friction=FRICTION, rng=2,
                         weights=lambda a: np.full(len(a), 1.5))
    with pytest.raises(ConfigurationError, match=r"must lie in \[0, 1\], got values from 1.5"):
        dyn.run(1)
