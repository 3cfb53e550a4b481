"""Force mixing against all-expensive and all-cheap runs with real potential files."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.md.verlet import VelocityVerlet
from ase.optimize import FIRE
from numpy.testing import assert_allclose

from conftest import EMT_CUTOFF
from mlmix import ConfigurationError, PropertyNotDefinedError
from mlmix.mixing import MixedCalculator, changed_properties, mix_forces
from mlmix.potentials.ace import AcePotential
from mlmix.potentials.lammps import LammpsPotential
from mlmix.regions import RegionSpec, RegionTracker
from mlmix.seeds import IndexSeeds, SpeciesSeeds


def test_mix_forces_weights():
    rng = np.random.default_rng(0)
    fe, fc = rng.normal(size=(2, 5, 3))
    p = np.array([1.0, 0.0, 0.25, 0.5, 1.0])
    got = mix_forces(p, fe, fc)
    assert_allclose(got[0], fe[0])
    assert_allclose(got[1], fc[1])
    assert_allclose(got[2], 0.25 * fe[2] + 0.75 * fc[2])
    assert_allclose(mix_forces(p, fe, fc, subtract_mean=True).sum(axis=0), 0, atol=1e-12)
    # rows a masked backend leaves undefined are never read
    fe[1] = np.nan
    fc[0] = fc[4] = np.nan
    assert np.isfinite(mix_forces(p, fe, fc)).all()


@pytest.fixture(scope="module")
def si_pair():
    expensive = LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic", species=["Si"])
    cheap = LammpsPotential.tersoff("Si.tersoff", species=["Si"])
    yield expensive, cheap
    expensive.close()
    cheap.close()


def si_vacancy(repeat=5, rattle=0.05):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(repeat)
    del atoms[0]
    atoms.rattle(rattle, seed=7)
    return atoms


def check_exactness(atoms, expensive, cheap, spec, seeds, **kwargs):
    """Mixed forces equal the reference on p = 1, p = 0 (outside buffers) and blend."""
    calc = MixedCalculator(expensive, cheap, RegionTracker(spec, seeds, nevery=0), **kwargs)
    atoms.calc = calc
    forces = atoms.get_forces()
    r = calc.regions
    f_exp = expensive.evaluate(atoms).forces
    f_cheap = cheap.evaluate(atoms).forces
    full, none = r.p == 1, r.p == 0
    blend = ~full & ~none
    far = none & ~r.expensive
    assert full.sum() > 5 and blend.sum() > 5 and far.sum() > 5
    assert_allclose(forces[full], f_exp[full], rtol=0, atol=1e-8)
    assert_allclose(forces[far], f_cheap[far], rtol=0, atol=1e-8)
    mixed = r.p[:, None] * f_exp + (1 - r.p[:, None]) * f_cheap
    assert_allclose(forces[blend], mixed[blend], rtol=0, atol=1e-8)
    # the two potentials really differ, so the checks above can tell them apart
    assert np.abs(f_exp[full] - f_cheap[full]).max() > 0.05
    return calc


@pytest.mark.parametrize("blend", ["linear", "cubic"])
def test_exact_lammps_snap_with_tersoff(si_pair, blend):
    expensive, cheap = si_pair
    atoms = si_vacancy()
    spec = RegionSpec(r_core=3.0, r_blend=3.0, r_buff=expensive.cutoff, blend=blend)
    calc = check_exactness(atoms, expensive, cheap, spec, IndexSeeds([0, 1]))
    report = calc.history[-1]
    # the expensive backend evaluated well under all atoms
    assert report.counts["expensive"] <= report.n_expensive < len(atoms) // 2


def test_exact_ace_with_eam():
    expensive = AcePotential("Cu-PBE-core-rep.ace")
    cheap = LammpsPotential.eam("Cu_u3.eam", species=["Cu"])
    atoms = bulk("Cu", "fcc", a=3.62, cubic=True).repeat(7)
    del atoms[0]
    atoms.rattle(0.05, seed=3)
    spec = RegionSpec(r_core=2.6, r_blend=2.6, r_buff=expensive.cutoff)
    calc = check_exactness(atoms, expensive, cheap, spec, IndexSeeds([0]))
    report = calc.history[-1]
    # masked ACE computes energies for the expensive set and nothing else
    assert report.n_expensive == report.counts["expensive"] < len(atoms)
    cheap.close()


def test_masked_cheap_is_exact_too(si_pair):
    expensive, cheap = si_pair
    atoms = si_vacancy()
    # a core wide enough to hold a deep core that the cheap potential may skip
    spec = RegionSpec(r_core=10.0, r_blend=3.0, r_buff=expensive.cutoff)
    calc = check_exactness(atoms, expensive, cheap, spec, IndexSeeds([0]), mask_cheap=True)
    report = calc.history[-1]
    assert report.counts["cheap"] <= report.n_cheap < len(atoms)


def test_buffer_below_cutoff_refused_unless_accepted(si_pair):
    expensive, cheap = si_pair
    tracker = RegionTracker(RegionSpec(3.0, 2.0, r_buff=2.0), IndexSeeds([0]))
    with pytest.raises(ConfigurationError, match=r"r_buff = 2.0 Å is below the cutoff .* allow_approximate"):
        MixedCalculator(expensive, cheap, tracker)
    MixedCalculator(expensive, cheap, tracker, allow_approximate=True)


def test_energy_is_nan_and_stress_is_refused(si_pair):
    expensive, cheap = si_pair
    atoms = si_vacancy(repeat=3)
    atoms.calc = MixedCalculator(
        expensive, cheap, RegionTracker(RegionSpec(3.0, 0.0, expensive.cutoff), IndexSeeds([0]))
    )
    assert np.isnan(atoms.get_potential_energy())
    with pytest.raises(PropertyNotDefinedError, match="defines no stress"):
        atoms.get_stress()
    # the per-atom arrays ride on the atoms and survive a copy
    assert {"mlmix_p", "mlmix_expensive", "mlmix_cheap", "mlmix_id"} <= set(atoms.copy().arrays)


def test_force_only_relaxation_and_md_run(si_pair):
    expensive, cheap = si_pair
    atoms = si_vacancy(repeat=3, rattle=0.1)
    spec = RegionSpec(3.0, 2.0, expensive.cutoff)
    atoms.calc = MixedCalculator(expensive, cheap, RegionTracker(spec, IndexSeeds([0]), nevery=0))
    fmax0 = np.linalg.norm(atoms.get_forces(), axis=1).max()
    opt = FIRE(atoms, logfile=None)
    assert opt.run(fmax=0.05, steps=300)
    assert np.linalg.norm(atoms.get_forces(), axis=1).max() < 0.05 < fmax0

    md_atoms = si_vacancy(repeat=3)
    calc = MixedCalculator(expensive, cheap, RegionTracker(spec, IndexSeeds([0]), nevery=2),
                           subtract_mean_force=True)
    md_atoms.calc = calc
    VelocityVerlet(md_atoms, timestep=1.0).run(5)
    assert [h.rebuilt for h in calc.history] == [True, False, True, False, True, False]
    assert_allclose(md_atoms.get_forces().sum(axis=0), 0, atol=1e-10)


@pytest.fixture(scope="module")
def w_he_pair():
    expensive = LammpsPotential.snap("W_2940_2017_2_He_JW2013.snap", species=["W", "He"])
    cheap = LammpsPotential.eam_alloy("W_zhou.eam.alloy", species=["W"])
    yield expensive, cheap
    expensive.close()
    cheap.close()


def w_with_he():
    atoms = bulk("W", "bcc", a=3.165, cubic=True).repeat(6)
    atoms[0].symbol = "He"
    atoms.rattle(0.03, seed=2)
    return atoms


def test_species_the_cheap_potential_lacks_must_be_core(w_he_pair):
    expensive, cheap = w_he_pair
    atoms = w_with_he()
    far = int(np.argmax(atoms.get_distances(0, range(len(atoms)), mic=True)))
    atoms.calc = MixedCalculator(
        expensive, cheap, RegionTracker(RegionSpec(3.0, 0.0, expensive.cutoff), IndexSeeds([far]))
    )
    with pytest.raises(ConfigurationError,
                       match=r"atoms of \['He'\] .* lie outside the core") as info:
        atoms.get_forces()
    # the fix in both worlds, in one message
    assert "SpeciesSeeds(['He']) in Python" in str(info.value)
    assert '[regions.seeds] kind = "species", species = ["He"]' in str(info.value)


def test_helium_in_core_is_exact(w_he_pair):
    expensive, cheap = w_he_pair
    atoms = w_with_he()
    spec = RegionSpec(r_core=3.0, r_blend=2.0, r_buff=expensive.cutoff)
    calc = MixedCalculator(expensive, cheap, RegionTracker(spec, SpeciesSeeds("He"), nevery=0))
    atoms.calc = calc
    forces = atoms.get_forces()
    r = calc.regions
    f_exp = expensive.evaluate(atoms).forces
    assert_allclose(forces[r.p == 1], f_exp[r.p == 1], rtol=0, atol=1e-8)
    # far from the He the cheap potential (which never saw the He) rules
    w_only = atoms[1:]
    f_cheap = cheap.evaluate(w_only).forces
    far = np.flatnonzero(~r.expensive)
    assert_allclose(forces[far], f_cheap[far - 1], rtol=0, atol=1e-8)


def test_nan_positions_refused_before_work(si_pair):
    expensive, cheap = si_pair
    atoms = si_vacancy(repeat=2)
    atoms.positions[3, 1] = np.nan
    calc = MixedCalculator(expensive, cheap, RegionTracker(RegionSpec(3.0, 0, expensive.cutoff),
                                                           IndexSeeds([0])))
    atoms.calc = calc
    with pytest.raises(ConfigurationError, match="NaN or infinite positions .* index 3"):
        atoms.get_forces()
    assert len(calc.history) == 0 and calc.regions is None


def test_weighted_energy_is_the_weighted_per_atom_sum(si_pair):
    expensive, cheap = si_pair
    atoms = si_vacancy()
    spec = RegionSpec(r_core=3.0, r_blend=3.0, r_buff=expensive.cutoff)
    calc = MixedCalculator(expensive, cheap, RegionTracker(spec, IndexSeeds([0])),
                           energy="weighted")
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    p = calc.regions.p
    e_exp = expensive.evaluate(atoms).energies
    e_cheap = cheap.evaluate(atoms).energies
    assert energy == pytest.approx(np.sum(p * e_exp + (1 - p) * e_cheap), abs=1e-8)
    with pytest.raises(ConfigurationError, match="energy must be 'nan' or 'weighted'"):
        MixedCalculator(expensive, cheap, RegionTracker(spec, IndexSeeds([0])), energy="zero")


def test_neb_runs_with_regions_built_once():
    """Vacancy migration in Cu: a mixed NEB (one EAM near the hop, another elsewhere,
    regions built once) gives the all-expensive barrier when its images are
    re-evaluated with the expensive potential."""
    from ase.mep import NEB

    expensive = LammpsPotential.eam("Cu_u3.eam", ["Cu"])
    cheap = LammpsPotential.eam_alloy("Cu_mishin1.eam.alloy", ["Cu"])
    initial = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(4)
    site = initial.positions[0].copy()
    hopper = int(np.argsort(initial.get_distances(0, range(len(initial)), mic=True))[1])
    del initial[0]
    hopper -= 1
    final = initial.copy()
    final.positions[hopper] = site
    spec = RegionSpec(r_core=4.0, r_blend=3.0, r_buff=expensive.cutoff)

    def mixed():
        tracker = RegionTracker(spec, IndexSeeds([hopper]), nevery=0)
        return MixedCalculator(expensive, cheap, tracker, energy="weighted")

    def band(make_calc):
        images = [initial.copy() for _ in range(4)] + [final.copy()]
        for image in images:
            image.calc = make_calc()
        for end in (images[0], images[-1]):
            FIRE(end, logfile=None).run(fmax=0.01, steps=500)
        neb = NEB(images, climb=True, method="improvedtangent")
        neb.interpolate(mic=True)
        assert FIRE(neb, logfile=None).run(fmax=0.01, steps=1000)
        return images, [expensive.evaluate(im).energies.sum() for im in images]

    _, e_ref = band(expensive.as_calculator)
    images, e_mix = band(mixed)
    counts = images[2].calc.regions.counts()
    assert counts["blend"] > 0 and counts["cheap"] == len(initial)
    assert counts["expensive"] < len(initial)
    barrier_ref = max(e_ref) - e_ref[0]
    barrier_mix = max(e_mix) - e_mix[0]
    assert 0.5 < barrier_ref < 1.0  # EAM Cu vacancy migration, about 0.7 eV
    assert barrier_mix == pytest.approx(barrier_ref, abs=0.002)
    expensive.close()
    cheap.close()


def test_species_the_expensive_potential_lacks_refused_before_work(si_pair):
    expensive, cheap = si_pair
    atoms = si_vacancy(repeat=2)
    atoms[5].symbol = "Ge"
    calc = MixedCalculator(expensive, cheap, RegionTracker(RegionSpec(3.0, 0, expensive.cutoff),
                                                           IndexSeeds([0])))
    atoms.calc = calc
    with pytest.raises(ConfigurationError, match=r"describes \['Si'\] but the structure contains \['Ge'\]"):
        atoms.get_forces()
    assert len(calc.history) == 0 and calc.regions is None


def test_exact_with_an_ase_calculator_on_carved_clusters():
    """Any ASE calculator as the expensive side: EMT on clusters carved with a buffer of
    two cutoffs around the expensive set gives the all-EMT forces where p > 0."""
    from ase.calculators.emt import EMT

    from mlmix.potentials import AseClusterPotential

    cutoff = EMT_CUTOFF
    expensive = AseClusterPotential(EMT(), buffer=2 * cutoff, cutoff=cutoff)
    cheap = LammpsPotential.eam("Cu_u3.eam", ["Cu"])
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((10, 5, 5))
    atoms.rattle(0.05, seed=1)
    spec = RegionSpec(r_core=2.6, r_blend=2.6, r_buff=cutoff)
    calc = MixedCalculator(expensive, cheap, RegionTracker(spec, IndexSeeds([0]), nevery=0))
    atoms.calc = calc
    forces = atoms.get_forces()
    reference = atoms.copy()
    reference.calc = EMT()
    f_ref = reference.get_forces()
    weighted = calc.regions.p > 0
    p = calc.regions.p[weighted, None]
    f_cheap = cheap.evaluate(atoms).forces[weighted]
    assert_allclose(forces[weighted], p * f_ref[weighted] + (1 - p) * f_cheap, rtol=0, atol=1e-8)
    assert calc.history[-1].n_expensive < len(atoms)
    cheap.close()


def test_forces_stay_exact_between_rebuilds_of_a_hot_system():
    """Regions rebuilt once (nevery large) while hot atoms drift: the evaluation sets
    are recomputed when atoms moved skin/2, so forces on weighted atoms stay exact."""
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    expensive = LammpsPotential.sw("Si.sw", ["Si"])
    cheap = LammpsPotential.tersoff("Si.tersoff", ["Si"])
    atoms = si_vacancy()
    thermalize_momenta(atoms, 3000.0, rng=np.random.default_rng(5))
    Stationary(atoms)
    spec = RegionSpec(r_core=4.0, r_blend=3.0, r_buff=expensive.cutoff)
    tracker = RegionTracker(spec, IndexSeeds([0, 1]), nevery=1000, skin=0.3)
    calc = MixedCalculator(expensive, cheap, tracker)
    atoms.calc = calc
    VelocityVerlet(atoms, timestep=2.0).run(60)
    assert tracker.last_build == 0 and tracker.n_set_builds > 1
    forces = atoms.get_forces()
    p = calc.regions.p
    f_exp = expensive.evaluate(atoms).forces
    f_cheap = cheap.evaluate(atoms).forces
    weighted = p > 0
    mixed = p[:, None] * f_exp + (1 - p[:, None]) * f_cheap
    assert_allclose(forces[weighted], mixed[weighted], rtol=0, atol=1e-8)
    expensive.close()
    cheap.close()


def test_message_passing_expensive_needs_allow_approximate():
    from ase.calculators.emt import EMT

    from mlmix.potentials import AseClusterPotential

    mp_like = AseClusterPotential(EMT(), buffer=2 * 3 * EMT_CUTOFF, cutoff=EMT_CUTOFF,
                                  receptive_field=3 * EMT_CUTOFF)
    cheap = LammpsPotential.eam("Cu_u3.eam", ["Cu"])
    tracker = RegionTracker(RegionSpec(2.6, 0.0, EMT_CUTOFF), IndexSeeds([0]))
    with pytest.raises(ConfigurationError, match="receptive field .* allow_approximate=True"):
        MixedCalculator(mp_like, cheap, tracker)
    narrow = AseClusterPotential(EMT(), buffer=EMT_CUTOFF, cutoff=EMT_CUTOFF)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(6)
    atoms.calc = MixedCalculator(narrow, cheap, tracker)
    with pytest.raises(ConfigurationError, match="evaluated the expensive set approximately"):
        atoms.get_forces()
    cheap.close()


def test_changed_properties_agrees_with_ase_compare_atoms():
    """The fast exact-first state check reports what ASE's compare_atoms reports."""
    from ase.calculators.calculator import compare_atoms

    base = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    edits = {
        "nothing": lambda a: None,
        "positions": lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-9),
        "below tol": lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-17),
        "numbers": lambda a: a.numbers.__setitem__(3, 29 if a.numbers[3] != 29 else 28),
        "cell": lambda a: a.set_cell(a.cell * 1.001, scale_atoms=False),
        "pbc": lambda a: a.set_pbc((True, False, True)),
        "charges": lambda a: a.set_initial_charges(np.ones(len(a))),
        "magmoms": lambda a: a.set_initial_magnetic_moments(np.ones(len(a))),
    }
    for name, edit in edits.items():
        new = base.copy()
        edit(new)
        assert sorted(changed_properties(base, new)) == sorted(compare_atoms(base, new)), name
    assert sorted(changed_properties(None, base)) == sorted(compare_atoms(None, base))
    assert changed_properties(base, base.copy(), excluded={"positions"}) == []


def test_current_regions_exist_only_after_a_force_call(sw_tersoff_pair):
    from mlmix import CalculationError, IndexSeeds, RegionSpec, RegionTracker

    expensive, cheap = sw_tersoff_pair
    atoms = bulk("Si", "diamond", a=5.431, cubic=True).repeat(2)
    calc = MixedCalculator(expensive, cheap, RegionTracker(
        RegionSpec(r_core=2.5, r_buff=expensive.cutoff), IndexSeeds([0]), nevery=0))
    with pytest.raises(CalculationError, match="has not evaluated forces yet"):
        calc.current_regions()
    atoms.calc = calc
    atoms.get_forces()
    assert calc.current_regions() is calc.regions and calc.regions.p[0] == 1.0
