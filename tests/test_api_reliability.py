"""The Python API on the paths users take by accident: one calculator on a second
structure, ASE tools that ask for a stress, arguments of the wrong type, overlapping
atoms and forces that are not finite. Real potentials throughout (SW and Tersoff Si,
SNAP W-He with EAM W)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from ase.calculators.calculator import PropertyNotImplementedError
from ase.data import atomic_numbers
from ase.io import Trajectory
from ase.md.verlet import VelocityVerlet
from numpy.testing import assert_allclose, assert_array_equal

from mlmix import (
    ClassifierSeeds,
    Hysteresis,
    IndexSeeds,
    MixedCalculator,
    MlmixError,
    PropertyNotDefinedError,
    RegionSpec,
    RegionTracker,
    SpeciesSeeds,
    coordination,
)
from mlmix.contacts import ContactWatch, contact_problem
from mlmix.errors import CalculationError, ConfigurationError
from mlmix.potentials.base import check_species, nonfinite_rows, species_mask
from mlmix.structures import thermalize, vacancy_supercell
from test_mixing import w_he_pair, w_with_he  # noqa: F401 (a fixture)


def si_structure():
    """The same builder twice gives two fresh copies: no ``mlmix_id`` on either."""
    return vacancy_supercell("Si", "diamond", a=5.43, repeat=3, bond=2.6)


def mixed(pair, seeds, nevery=1, **kwargs):
    expensive, cheap = pair
    spec = RegionSpec(r_core=3.0, r_blend=2.0, r_buff=expensive.cutoff)
    return MixedCalculator(expensive, cheap, RegionTracker(spec, seeds, nevery=nevery), **kwargs)


def forces_of_a_new_calculator(pair, atoms, seeds, nevery=1):
    fresh = atoms.copy()  # the ids it may carry are unknown to the new tracker anyway
    fresh.calc = mixed(pair, seeds, nevery)
    return fresh.get_forces(), fresh.calc.regions


def assert_exact_where_expensive(pair, atoms, forces, regions):
    """Forces on p = 1 atoms are the all-expensive forces: the region is really there."""
    full = regions.p == 1
    assert full.sum() >= 4
    assert_allclose(forces[full], pair[0].evaluate(atoms).forces[full], rtol=0, atol=1e-8)


# ------------------------------------------------------------------ a second structure


def test_a_fresh_copy_gets_the_forces_a_new_calculator_gives(sw_tersoff_pair):
    a, neighbours = si_structure()
    thermalize(a, 600.0, seed=1)
    calc = mixed(sw_tersoff_pair, IndexSeeds(neighbours))
    a.calc = calc
    VelocityVerlet(a, timestep=1.0).run(5)  # A moved: B differs from it
    b, _ = si_structure()
    b.calc = calc
    forces = b.get_forces()
    reference, ref_regions = forces_of_a_new_calculator(sw_tersoff_pair, b, IndexSeeds(neighbours))
    assert_array_equal(calc.regions.seeds, ref_regions.seeds)
    assert np.flatnonzero(calc.regions.seeds).tolist() == sorted(neighbours.tolist())
    assert_allclose(forces, reference, rtol=0, atol=1e-12)
    assert_exact_where_expensive(sw_tersoff_pair, b, forces, calc.regions)
    # the schedule restarted with the structure; ids never collide with A's
    assert calc.history[-1].step == 0 and calc.history[-1].rebuilt
    assert not set(b.arrays["mlmix_id"]) & set(a.arrays["mlmix_id"])


def test_back_and_forth_between_two_structures(sw_tersoff_pair):
    a, neighbours = si_structure()
    a.rattle(0.05, seed=3)
    b, _ = si_structure()
    b.rattle(0.05, seed=4)
    calc = mixed(sw_tersoff_pair, IndexSeeds(neighbours))
    for atoms in (a, b, a, b):
        atoms.calc = calc
        forces = atoms.get_forces()
        reference, _ = forces_of_a_new_calculator(sw_tersoff_pair, atoms, IndexSeeds(neighbours))
        assert_allclose(forces, reference, rtol=0, atol=1e-12)
        assert calc.regions.p.max() == 1.0


def test_an_identical_fresh_copy_is_seen_not_served_from_the_cache(sw_tersoff_pair):
    """ASE compares positions only: without the identity check B would be handed A's
    results and never get its ids or region arrays."""
    a, neighbours = si_structure()
    calc = mixed(sw_tersoff_pair, IndexSeeds(neighbours))
    a.calc = calc
    f_a = a.get_forces()
    b, _ = si_structure()
    b.calc = calc
    assert_allclose(b.get_forces(), f_a, rtol=0, atol=1e-12)
    assert len(calc.history) == 2
    assert {"mlmix_id", "mlmix_p"} <= set(b.arrays)
    assert_array_equal(b.arrays["mlmix_p"], calc.regions.p)


def test_a_classifier_starts_from_scratch_on_a_new_structure(sw_tersoff_pair):
    """Coordination < 4 marks the vacancy's neighbours; ``initial`` seeds the first
    steps. On B the classifier forgets A's samples and choice and begins again."""
    a, neighbours = si_structure()
    far = int(np.argmax(a.get_distances(neighbours[0], range(len(a)), mic=True)))

    def seeds():
        return ClassifierSeeds(coordination(2.6), lb=0, ub=3, nfreq=2, window=1, initial=[far])

    calc = mixed(sw_tersoff_pair, seeds())
    a.calc = calc
    VelocityVerlet(a, timestep=1.0).run(3)  # past the query at step 2
    assert np.flatnonzero(calc.regions.seeds).tolist() == sorted(neighbours.tolist())
    b, _ = si_structure()
    b.rattle(0.02, seed=5)
    b.calc = calc
    forces = b.get_forces()
    assert np.flatnonzero(calc.regions.seeds).tolist() == [far]  # `initial`, on B
    reference, _ = forces_of_a_new_calculator(sw_tersoff_pair, b, seeds())
    assert_allclose(forces, reference, rtol=0, atol=1e-12)
    assert_exact_where_expensive(sw_tersoff_pair, b, forces, calc.regions)


def test_atoms_added_to_a_known_structure_keep_their_seeds(sw_tersoff_pair):
    """An atom put back into the vacancy, first in the list (id 0): the seeds stay the
    same atoms, now one index further on; nothing is re-seeded."""
    from ase import Atoms

    a, neighbours = si_structure()
    calc = mixed(sw_tersoff_pair, IndexSeeds(neighbours), nevery=10)
    a.calc = calc
    a.get_forces()
    filled = Atoms("Si", positions=[[0.0, 0.0, 0.0]], cell=a.cell, pbc=a.pbc) + a
    assert filled.arrays["mlmix_id"][0] == 0
    filled.calc = calc
    forces = filled.get_forces()
    assert np.flatnonzero(calc.regions.seeds).tolist() == sorted((neighbours + 1).tolist())
    assert calc.history[-1].step == 1 and calc.history[-1].rebuilt
    assert_exact_where_expensive(sw_tersoff_pair, filled, forces, calc.regions)


def test_deleting_every_seed_atom_is_refused(sw_tersoff_pair):
    a, neighbours = si_structure()
    calc = mixed(sw_tersoff_pair, IndexSeeds(neighbours))
    a.calc = calc
    a.get_forces()
    del a[neighbours]
    with pytest.raises(ConfigurationError, match=r"none of the 4 atoms seeded by IndexSeeds "
                                                 r"indices is in the structure any more"):
        a.get_forces()


def test_re_seeding_that_finds_no_seed_is_refused(w_he_pair):  # noqa: F811
    expensive, cheap = w_he_pair
    spec = RegionSpec(r_core=3.0, r_blend=0.0, r_buff=expensive.cutoff)
    calc = MixedCalculator(expensive, cheap, RegionTracker(spec, SpeciesSeeds("He")))
    with_he = w_with_he()
    with_he.calc = calc
    assert np.isfinite(with_he.get_forces()).all()
    pure_w = w_with_he()
    pure_w[0].symbol = "W"
    pure_w.calc = calc
    with pytest.raises(ConfigurationError,
                       match=r"no atom of the seed species \['He'\] is in the structure"):
        pure_w.get_forces()


# ------------------------------------------------------------------ stress


def test_stress_is_ase_property_not_implemented(sw_tersoff_pair, tmp_path):
    a, neighbours = si_structure()
    a.calc = mixed(sw_tersoff_pair, IndexSeeds(neighbours))
    for ask in (a.get_stress, lambda: a.calc.get_property("stress", a)):
        try:
            ask()
        except PropertyNotImplementedError as exc:  # what generic ASE code catches
            assert isinstance(exc, PropertyNotDefinedError) and isinstance(exc, MlmixError)
            assert "force mixing defines no stress" in str(exc)
        else:
            pytest.fail("a stress was returned")
    # ASE's own tools that probe for a stress carry on: a trajectory keeps the forces
    a.get_forces()
    with Trajectory(tmp_path / "a.traj", "w") as traj:
        traj.write(a)
    with Trajectory(tmp_path / "a.traj") as traj:
        assert_allclose(traj[0].get_forces(), a.get_forces(), rtol=0, atol=1e-12)


# ------------------------------------------------------------------ arguments


def _q(atoms):
    return np.zeros(len(atoms))


BAD_ARGUMENTS = [
    (lambda: RegionSpec("5"), "RegionSpec r_core", "'5'"),
    (lambda: RegionSpec(None), "RegionSpec r_core", "None"),
    (lambda: RegionSpec(True), "RegionSpec r_core", "True"),
    (lambda: RegionSpec(np.inf), "RegionSpec r_core", "inf"),
    (lambda: RegionSpec(3.0, r_blend="2"), "RegionSpec r_blend", "'2'"),
    (lambda: RegionSpec(3.0, r_buff=np.nan), "RegionSpec r_buff", "nan"),
    (lambda: RegionSpec(3.0, blend=1), "RegionSpec blend", "1"),
    (lambda: Hysteresis("10", 10.0, 1.0), "Hysteresis tau_in", "'10'"),
    (lambda: Hysteresis(10.0, None, 1.0), "Hysteresis tau_out", "None"),
    (lambda: Hysteresis(10.0, 10.0, 0.0), "Hysteresis timestep", "0.0"),
    (lambda: Hysteresis(10.0, 10.0, np.inf), "Hysteresis timestep", "inf"),
    (lambda: RegionTracker(RegionSpec(3.0), IndexSeeds([0]), nevery="10"),
     "RegionTracker nevery", "'10'"),
    (lambda: RegionTracker(RegionSpec(3.0), IndexSeeds([0]), nevery=True),
     "RegionTracker nevery", "True"),
    (lambda: RegionTracker(RegionSpec(3.0), IndexSeeds([0]), nevery=2.0),
     "RegionTracker nevery", "2.0"),
    (lambda: RegionTracker(RegionSpec(3.0), IndexSeeds([0]), skin="0.5"),
     "RegionTracker skin", "'0.5'"),
    (lambda: RegionTracker(RegionSpec(3.0), IndexSeeds([0]), skin=np.inf),
     "RegionTracker skin", "inf"),
    (lambda: RegionTracker(3.0, IndexSeeds([0])), "RegionTracker spec", "3.0"),
    (lambda: RegionTracker(RegionSpec(3.0), [0]), "RegionTracker seeds", "[0]"),
    (lambda: ClassifierSeeds(_q, lb="0"), "ClassifierSeeds lb", "'0'"),
    (lambda: ClassifierSeeds(_q, lb=np.nan), "ClassifierSeeds lb", "nan"),
    (lambda: ClassifierSeeds(_q, ub=None), "ClassifierSeeds ub", "None"),
    (lambda: ClassifierSeeds(_q, ub=False), "ClassifierSeeds ub", "False"),
    (lambda: ClassifierSeeds(_q, nfreq="2"), "ClassifierSeeds nfreq", "'2'"),
    (lambda: ClassifierSeeds(_q, nfreq=2.0), "ClassifierSeeds nfreq", "2.0"),
    (lambda: ClassifierSeeds(_q, window=True), "ClassifierSeeds window", "True"),
    (lambda: ClassifierSeeds(_q, window=0), "ClassifierSeeds window", "0"),
    (lambda: ClassifierSeeds(_q, initial=[3, -2]), "ClassifierSeeds initial", "[-2]"),
    (lambda: ClassifierSeeds("coordination"), "ClassifierSeeds quantity", "'coordination'"),
    (lambda: IndexSeeds([-1]), "IndexSeeds indices", "[-1]"),
    (lambda: IndexSeeds("5"), "IndexSeeds indices", "'5'"),
    (lambda: IndexSeeds([0.5]), "IndexSeeds indices", "[0.5]"),
    (lambda: SpeciesSeeds(["He", 2]), "SpeciesSeeds symbols", "[2]"),
    (lambda: SpeciesSeeds("he"), "SpeciesSeeds symbols", "['he']"),
]


@pytest.mark.parametrize("build, argument, shown", BAD_ARGUMENTS,
                         ids=[f"{a}={s}" for _, a, s in BAD_ARGUMENTS])
def test_a_bad_argument_is_named_with_its_value(build, argument, shown):
    with pytest.raises(ConfigurationError) as info:
        build()
    message = str(info.value)
    assert argument in message and shown in message, message


def test_numbers_of_any_numeric_type_are_accepted():
    spec = RegionSpec(np.float32(3.0), np.int64(2), 4)
    assert (spec.r_core, spec.r_blend, spec.r_buff) == (3.0, 2.0, 4.0)
    tracker = RegionTracker(spec, IndexSeeds(np.array([0, 1])), nevery=np.int64(5), skin=0)
    assert tracker.nevery == 5 and type(tracker.nevery) is int
    seeds = ClassifierSeeds(_q, lb=0, ub=np.float64(3), nfreq=np.int32(10), window=2)
    assert (seeds.lb, seeds.ub, seeds.nfreq) == (0.0, 3.0, 10)


def test_a_species_string_is_one_symbol():
    from ase.calculators.emt import EMT

    from mlmix.potentials import AseClusterPotential

    assert SpeciesSeeds("He").symbols == ["He"]
    cluster = AseClusterPotential(EMT(), buffer=6.0, cutoff=3.0, species="Cu")
    assert cluster.species == frozenset({"Cu"})
    with pytest.raises(ConfigurationError, match=r"unknown element symbols \['Xx'\] in "
                                                 r"AseClusterPotential species"):
        AseClusterPotential(EMT(), buffer=6.0, cutoff=3.0, species=["Cu", "Xx"])


def test_negative_seed_index_is_refused_not_counted_from_the_end():
    with pytest.raises(ConfigurationError, match=re.escape(
            "IndexSeeds indices has negative indices [-1]; atom indices count from 0")):
        IndexSeeds([4, -1])


@pytest.mark.parametrize("value, shown", [("1.0", "'1.0'"), (-1.0, "-1.0"), (np.nan, "nan")])
def test_min_distance_argument(sw_tersoff_pair, value, shown):
    with pytest.raises(ConfigurationError, match=rf"MixedCalculator min_distance must be .*"
                                                 rf"got {re.escape(shown)}"):
        mixed(sw_tersoff_pair, IndexSeeds([0]), min_distance=value)


# ------------------------------------------------------------------ overlapping atoms


def test_coincident_atoms_are_refused_before_any_work(sw_tersoff_pair):
    a, neighbours = si_structure()
    a.positions[40] = a.positions[41]
    calc = mixed(sw_tersoff_pair, IndexSeeds(neighbours))
    a.calc = calc
    with pytest.raises(ConfigurationError, match=r"atoms 40 and 41 \(Si-Si\) are 0 Å apart, "
                                                 r"closer than .*MixedCalculator min_distance"):
        a.get_forces()
    assert calc.regions is None and not calc.history


def test_min_distance_sets_the_threshold(sw_tersoff_pair):
    a, neighbours = si_structure()
    bond = float(np.min(a.get_distances(1, range(2, len(a)), mic=True)))
    calc = mixed(sw_tersoff_pair, IndexSeeds(neighbours), min_distance=bond + 0.1)
    a.calc = calc
    with pytest.raises(ConfigurationError, match=rf"closer than the minimum distance "
                                                 rf"{bond + 0.1:.3g} Å"):
        a.get_forces()
    a.calc = mixed(sw_tersoff_pair, IndexSeeds(neighbours), min_distance=bond - 0.1)
    assert np.isfinite(a.get_forces()).all()


def test_atoms_that_collide_are_caught_at_the_next_rebuild(sw_tersoff_pair):
    a, neighbours = si_structure()
    calc = mixed(sw_tersoff_pair, IndexSeeds(neighbours), nevery=2)
    a.calc = calc
    a.get_forces()  # step 0
    a.positions[30] += 1e-3
    a.get_forces()  # step 1
    a.positions[30] = a.positions[31] + [0.2, 0.0, 0.0]  # step 2 rebuilds
    with pytest.raises(ConfigurationError, match=r"atoms 30 and 31 \(Si-Si\) are 0.2 Å apart"):
        a.get_forces()


def test_the_contact_watch_agrees_with_a_full_search_at_every_call():
    """Two atoms walked towards each other through a hot crystal: at each call the
    watch gives exactly the full search's answer, searching only when the recorded
    nearest-neighbour distances minus the displacements could reach the threshold."""
    a, _ = si_structure()
    rng = np.random.default_rng(3)
    watch = ContactWatch()
    target = a.positions[31] + [0.3, 0.0, 0.0]
    for step in range(60):
        a.positions += rng.normal(0.0, 0.01, a.positions.shape)
        a.positions[30] += (target - a.positions[30]) * 0.05
        assert watch.problem(a) == contact_problem(a), step
    assert contact_problem(a) is not None  # the pair ends too close
    assert 2 <= watch.n_searches < 40  # most calls needed no search
    quiet = ContactWatch()
    for _ in range(20):  # thermal motion alone: one search
        a.positions[:30] += rng.normal(0.0, 0.005, (30, 3))
        quiet.problem(a[:30])
    assert quiet.n_searches == 1


def test_the_contact_watch_searches_again_after_a_cell_change():
    a, _ = si_structure()
    watch = ContactWatch(min_distance=1.5)
    assert watch.problem(a) is None and watch.n_searches == 1
    a.set_cell(a.cell.array * 0.6, scale_atoms=True)  # bonds 2.35 -> 1.41 Å
    assert "closer than the minimum distance 1.5 Å" in watch.problem(a)
    assert watch.n_searches == 2
    assert ContactWatch(min_distance=0).problem(a) is None


def test_forces_that_are_not_finite_raise_instead_of_being_returned(sw_tersoff_pair):
    """With the contact check off (min_distance=0), coincident atoms make both
    potentials return NaN; the calculator names the atoms instead of returning them."""
    a, neighbours = si_structure()
    a.positions[40] = a.positions[41]
    calc = mixed(sw_tersoff_pair, IndexSeeds(neighbours), min_distance=0)
    a.calc = calc
    with pytest.raises(CalculationError, match=r"the mixed forces of \d+ atoms are not finite "
                                               r"\(first: index 40, p = 0, from "):
        a.get_forces()
    assert not calc.history and calc.step == 0
    # between rebuilds (no contact check) the same protection holds
    b, _ = si_structure()
    b.calc = calc = mixed(sw_tersoff_pair, IndexSeeds(neighbours), nevery=100,
                          subtract_mean_force=True)
    b.get_forces()
    b.positions[40] = b.positions[41]
    with pytest.raises(CalculationError, match=r"first: index 40\b"):
        b.get_forces()



def test_species_mask_agrees_with_isin_and_the_error_names_every_missing_species():
    rng = np.random.default_rng(3)
    numbers = rng.choice([1, 2, 14, 26, 74, 118], size=5000)
    for species in (["Si"], ["W", "He"], ["H", "Og", "Fe"], []):
        expected = np.isin(numbers, [atomic_numbers[s] for s in species])
        assert_array_equal(species_mask(numbers, species), expected)
    check_species("pot", numbers, ["H", "He", "Si", "Fe", "W", "Og"])  # all described
    with pytest.raises(ConfigurationError,
                       match=r"pot describes \['Fe', 'Si'\] but the structure contains "
                             r"\['H', 'He', 'Og', 'W'\]; use a potential"):
        check_species("pot", numbers, ["Si", "Fe"])


def test_nonfinite_rows_agrees_with_the_row_test_where_the_sum_overflows():
    """The one-pass test finds exactly the rows a per-row test finds: NaN, +-inf (also
    +inf and -inf together, whose sum is NaN), and none among finite values so large
    that their sum overflows to inf."""
    rng = np.random.default_rng(0)
    for bad in ([], [3], [0, 7], [9]):
        for value in (np.nan, np.inf, -np.inf):
            x = rng.normal(size=(10, 3))
            x[bad, 1] = value
            assert_array_equal(nonfinite_rows(x), bad)
    x = np.zeros((10, 3))
    x[2, 0], x[5, 2] = np.inf, -np.inf
    assert_array_equal(nonfinite_rows(x), [2, 5])
    huge = np.full((4, 3), 1e308)  # (their sum overflows)
    assert nonfinite_rows(huge).size == 0


# --------------------------------------------------------------------------- LAMMPS species


def test_lammps_potentials_take_one_species_as_a_string():
    """``species="Si"`` is ["Si"], never ['S', 'i'], in every LAMMPS constructor."""
    from mlmix.potentials.lammps import LammpsPotential

    for make in (lambda: LammpsPotential.sw("Si.sw", "Si"),
                 lambda: LammpsPotential.tersoff("Si.tersoff", "Si"),
                 lambda: LammpsPotential.eam("Cu_u3.eam", "Cu")):
        pot = make()
        assert len(pot.type_species) == 1 and pot.type_species[0] in ("Si", "Cu")
        pot.close()
    with pytest.raises(ConfigurationError, match=r"unknown element symbols \['Sx'\]"):
        LammpsPotential.sw("Si.sw", "Sx")


def test_an_include_file_with_more_types_than_species_is_named():
    from mlmix.potentials.lammps import LammpsPotential

    with pytest.raises(ConfigurationError, match=r"pair_coeff lines for LAMMPS type\(s\) "
                       r"\[2\], but species \['W'\] names only 1"):
        LammpsPotential.snap("W_2940_2017_2_He_JW2013.snap", species=["W"])


def test_a_run_config_min_distance_reaches_the_calculator(tmp_path):
    """structure.min_distance lowers the threshold for the whole run, not only for the
    config's first check: a strongly compressed cell, refused by default, runs when
    allowed (the calculator's check uses the same threshold)."""
    import mlmix.run as runner
    from test_run import si_config, write_config

    cfg = si_config(steps=2)
    cfg["structure"].update(a=2.4, repeat=2)  # nearest neighbours 1.04 Å, below 1.11 Å
    cfg["regions"]["seeds"] = {"kind": "indices", "indices": [0]}
    cfg["structure"]["builder"] = "bulk"
    with pytest.raises(ConfigurationError, match="structure.min_distance"):
        runner.run(write_config(tmp_path, cfg))
    cfg["structure"]["min_distance"] = 0.9
    summary = runner.run(write_config(tmp_path, cfg, "allowed.toml"))
    assert summary["steps"] == 2
