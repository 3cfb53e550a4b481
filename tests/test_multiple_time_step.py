"""Multiple time stepping (mlmix.mts): the expensive correction as the slow force.

Checked against a textbook impulse r-RESPA loop written out here, between the two
engines, for the evaluation counts it promises, and for its input errors."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.md.verlet import VelocityVerlet
from numpy.testing import assert_allclose

from mlmix import ConfigurationError
from mlmix.engines.lammps import LammpsEngine
from mlmix.mixing import MixedCalculator
from mlmix.mts import schedule_problem
from mlmix.regions import RegionSpec, RegionTracker
from mlmix.seeds import IndexSeeds, SpeciesSeeds
from test_lammps_engine import ASE_MVV2E, LAMMPS_MVV2E, cu_pair, cu_vacancy, w_with_he

SEEDS = [0, 1, 2]


def mixed(k: int, nevery: int, **kwargs) -> MixedCalculator:
    expensive, cheap = cu_pair()
    spec = RegionSpec(r_core=3.0, r_blend=4.0, r_buff=expensive.cutoff)
    return MixedCalculator(expensive, cheap, RegionTracker(spec, IndexSeeds(SEEDS), nevery=nevery),
                           correction_every=k, **kwargs)


def textbook_respa(atoms, k: int, dt: float, outer_steps: int):
    """Impulse r-RESPA as published: half kicks of (k dt / 2) C around k velocity
    Verlet steps with the cheap force, C = mixed - cheap from a k = 1 calculator."""
    calc = mixed(1, 0)
    cheap = calc.cheap
    m = atoms.get_masses()[:, None]
    x, v = atoms.positions.copy(), atoms.get_velocities()

    def correction():
        atoms.calc = calc
        return atoms.get_forces() - cheap.evaluate(atoms, None).forces

    for _ in range(outer_steps):
        atoms.positions = x
        v = v + 0.5 * k * dt * correction() / m
        fc = cheap.evaluate(atoms, None).forces
        for _ in range(k):
            v = v + 0.5 * dt * fc / m
            x = x + dt * v
            atoms.positions = x
            fc = cheap.evaluate(atoms, None).forces
            v = v + 0.5 * dt * fc / m
        v = v + 0.5 * k * dt * correction() / m
    return x, v


@pytest.mark.parametrize("k", [2, 3])
def test_velocity_verlet_with_impulse_forces_is_textbook_respa(k):
    dt, outer = 2.0 * units.fs, 12 // k
    atoms = cu_vacancy()
    atoms.calc = mixed(k, 0)
    VelocityVerlet(atoms, dt).run(outer * k)
    x, v = textbook_respa(cu_vacancy(), k, dt, outer)
    assert np.abs(x - cu_vacancy().positions).max() > 0.1  # the atoms really moved
    assert_allclose(atoms.positions, x, rtol=0, atol=1e-12)
    assert_allclose(atoms.get_velocities(), v, rtol=0, atol=1e-12)


def test_the_expensive_potential_runs_on_outer_steps_only():
    k = 3
    atoms = cu_vacancy()
    calc = atoms.calc = mixed(k, 6)
    VelocityVerlet(atoms, 2.0 * units.fs).run(12)
    history = list(calc.history)
    assert [h.step for h in history] == list(range(13))
    assert [h.n_expensive > 0 for h in history] == [h.step % k == 0 for h in history]
    assert [h.corrected for h in history] == [h.step % k == 0 for h in history]
    assert all(h.n_cheap == len(atoms) for h in history)  # the fast force acts everywhere
    assert [h.step for h in history if h.rebuilt] == [0, 6, 12]
    # the next call (step 13) is an inner step: the cheap forces alone, no energy
    atoms.positions[5] += 1e-3
    assert_allclose(atoms.get_forces(), calc.cheap.evaluate(atoms, None).forces, atol=1e-12)
    assert np.isnan(atoms.get_potential_energy())
    assert not calc.history[-1].corrected


def test_outer_forces_are_cheap_plus_k_times_the_correction():
    atoms = cu_vacancy()
    reference = mixed(1, 0)
    f_mixed = reference.get_forces(atoms)
    f_cheap = reference.cheap.evaluate(atoms, None).forces
    got = mixed(4, 0).get_forces(atoms)
    assert_allclose(got, f_cheap + 4 * (f_mixed - f_cheap), rtol=0, atol=1e-12)
    assert np.abs(f_mixed - f_cheap).max() > 1e-3  # the correction is not zero here


def test_an_all_core_cell_conserves_energy_as_velocity_verlet_does():
    """Every atom a seed: the mixed force is the expensive force, which has an energy;
    the split into cheap + correction must conserve it about as well as k = 1."""
    start = cu_vacancy(repeat=4)
    expensive, cheap = cu_pair()
    spread = {}
    for k in (1, 2):
        spec = RegionSpec(r_core=3.0, r_buff=expensive.cutoff)
        atoms = start.copy()
        atoms.calc = MixedCalculator(
            expensive, cheap, RegionTracker(spec, IndexSeeds(range(len(atoms))), nevery=0),
            correction_every=k)
        energies = []
        dyn = VelocityVerlet(atoms, 2.0 * units.fs)
        def record(energies=energies, atoms=atoms):
            energies.append(expensive.evaluate(atoms, None).energies.sum()
                            + atoms.get_kinetic_energy())

        dyn.attach(record, interval=2)
        dyn.run(100)
        assert all(h.n_cheap == (len(atoms) if k > 1 else 0) for h in atoms.calc.history)
        spread[k] = np.ptp(energies)
    assert spread[1] < 0.05  # eV, 255 atoms: plain velocity Verlet
    assert spread[2] < 3 * spread[1]


def test_lammps_engine_matches_the_ase_engine():
    """k = 2, 100 NVE steps, rebuilds every 4: LAMMPS engine vs ASE velocity Verlet."""
    k = 2
    expensive, cheap = cu_pair()
    spec = RegionSpec(r_core=3.0, r_blend=4.0, r_buff=expensive.cutoff)
    start = cu_vacancy()
    ref = start.copy()
    velocities = ref.get_velocities()
    ref.set_masses(ref.get_masses() * LAMMPS_MVV2E / ASE_MVV2E)  # LAMMPS's unit constant
    ref.set_velocities(velocities)
    ref.calc = MixedCalculator(expensive, cheap, RegionTracker(spec, IndexSeeds(SEEDS), nevery=4),
                               correction_every=k)
    VelocityVerlet(ref, 2.0 * units.fs).run(100)
    frames = []
    with LammpsEngine(start, expensive, cheap, spec, IndexSeeds(SEEDS), nevery=4,
                      timestep=2.0, correction_every=k) as engine:
        engine.run(100, callback=lambda a, e: frames.append(a), every=100)
        history = list(engine.history)
    assert np.abs(ref.positions - start.positions).max() > 0.2
    assert_allclose(frames[-1].positions, ref.positions, rtol=0, atol=1e-10)
    assert_allclose(frames[-1].get_velocities(), ref.get_velocities(), rtol=0, atol=1e-10)
    assert [h.n_expensive > 0 for h in history] == [h.step % k == 0 for h in history]
    assert [h.step for h in history if h.rebuilt] == list(range(0, 101, 4))


@pytest.mark.parametrize("kwargs, message", [
    ({"correction_every": 0}, "correction_every must be an integer >= 1"),
    ({"correction_every": 2.0}, "correction_every must be an integer >= 1"),
    ({"correction_every": 3, "nevery": 10}, "nevery = 10 is not a multiple of "
     "correction_every = 3: regions can change only at steps that evaluate the expensive "
     "correction; use 9"),
    ({"correction_every": 2, "mask_cheap": True}, "drop mask_cheap"),
])
def test_bad_settings_are_refused(kwargs, message):
    nevery = kwargs.pop("nevery", 6)
    k = kwargs.pop("correction_every")
    with pytest.raises(ConfigurationError) as info:
        mixed(k, nevery, **kwargs)
    assert message in str(info.value)


def test_species_the_cheap_potential_lacks_are_refused():
    atoms, expensive, cheap, spec = w_with_he(3)
    atoms.calc = MixedCalculator(expensive, cheap,
                                 RegionTracker(spec, SpeciesSeeds(["He"]), nevery=2),
                                 correction_every=2)
    with pytest.raises(ConfigurationError, match=r"does not describe \['He'\]: use "
                       "correction_every = 1"):
        atoms.get_forces()
    with pytest.raises(ConfigurationError, match=r"does not describe \['He'\]: use "
                       "correction_every = 1"):
        LammpsEngine(atoms, expensive, cheap, spec, SpeciesSeeds(["He"]), nevery=2,
                     correction_every=2)


def test_schedule_problem():
    assert schedule_problem(1, 7) is None
    assert schedule_problem(3, 0) is None  # built once
    assert schedule_problem(3, 12) is None
    assert schedule_problem(4, 2).endswith("use 4")
