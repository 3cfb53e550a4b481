"""Regions against an O(N^2) brute-force reference written straight from method.md §2."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from numpy.testing import assert_allclose, assert_array_equal

from conftest import brute_force_distances, random_triclinic
from mlmix import ConfigurationError
from mlmix.regions import (
    Hysteresis,
    RegionSpec,
    RegionTracker,
    blend_weight,
    region_arrays,
    relax_weights,
)
from mlmix.seeds import ClassifierSeeds, IndexSeeds, SpeciesSeeds, coordination


def reference_regions(dist, seeds, spec):
    """Literal transcription of method.md §2 steps 1, 2, 4, 5 on a distance matrix."""
    n = len(dist)
    core = seeds | (dist[seeds] < spec.r_core).any(axis=0)
    p = np.zeros(n)
    p[core] = 1.0
    for i in np.flatnonzero(~core):
        d = dist[i, core]
        d = d[d < spec.r_blend]
        if d.size and spec.r_blend > 0:
            x = d / spec.r_blend
            b = 1 - x if spec.blend == "linear" else 1 - (3 * x**2 - 2 * x**3)
            p[i] = b.max()
    a1 = p > 0
    expensive = a1 | (dist[a1] < spec.r_buff).any(axis=0)
    cheap = np.array(
        [p[i] < 1 or (p[(dist[i] < spec.r_buff)] < 1).any() for i in range(n)]
    )
    return p, core, expensive, cheap


def compare_with_reference(atoms, pbc, seeds, spec, radius_hint):
    """region_arrays against the brute-force reference; returns the reference sets."""
    dist = brute_force_distances(atoms.positions, atoms.cell.array, pbc, radius_hint)
    p, core, expensive, cheap = reference_regions(dist, seeds, spec)
    r = region_arrays(atoms.positions, atoms.cell.array, pbc, seeds, spec)
    assert_allclose(r.p, p, atol=1e-12)
    assert_array_equal(r.core, core)
    assert_array_equal(r.expensive, expensive)
    assert_array_equal(r.cheap, cheap)
    return core, expensive, cheap


@pytest.mark.parametrize("pbc", [True, (True, False, True), False])
@pytest.mark.parametrize("blend", ["linear", "cubic"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regions_match_brute_force(pbc, blend, seed):
    rng = np.random.default_rng(seed)
    atoms = random_triclinic(rng, 300, pbc=pbc)
    spec = RegionSpec(r_core=rng.uniform(2, 4), r_blend=rng.uniform(0, 4),
                      r_buff=rng.uniform(1, 4), blend=blend)
    seeds = np.zeros(len(atoms), bool)
    seeds[rng.choice(len(atoms), 3, replace=False)] = True
    core, expensive, cheap = compare_with_reference(atoms, pbc, seeds, spec, 12.0)
    # the sets are non-trivial, so the comparison means something
    assert 0 < core.sum() < expensive.sum() < len(atoms)
    assert (~cheap).sum() < core.sum()


def test_small_cell_radii_beyond_half_the_cell():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)  # 7.2 Å box
    atoms.rattle(0.05, seed=3)
    seeds = np.zeros(len(atoms), bool)
    seeds[0] = True
    spec = RegionSpec(r_core=3.0, r_blend=2.0, r_buff=2.0, blend="cubic")
    compare_with_reference(atoms, True, seeds, spec, 8.0)


def test_blend_shapes():
    x = np.array([0.0, 0.25, 0.5, 1.0, 1.5])
    assert_allclose(blend_weight(x, "linear"), [1, 0.75, 0.5, 0, 0])
    assert_allclose(blend_weight(x, "cubic"), [1, 1 - (3 / 16 - 2 / 64), 0.5, 0, 0])


def test_no_seeds_means_all_cheap():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    r = region_arrays(atoms.positions, atoms.cell.array, True,
                      np.zeros(len(atoms), bool), RegionSpec(3.0, 1.0, 2.0))
    assert not r.p.any() and not r.expensive.any() and r.cheap.all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"r_core": -1.0}, "r_core must be a finite distance >= 0"),
        ({"r_core": 1.0, "r_buff": np.nan}, "r_buff must be a finite distance"),
        ({"r_core": 1.0, "blend": "quartic"}, "blend must be 'linear' or 'cubic'"),
    ],
)
def test_region_spec_errors(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        RegionSpec(**kwargs)


# ------------------------------------------------------------------ hysteresis


def test_relax_weights_hand_computed():
    p_prev = np.array([0.0, 0.0, 1.0, 1.0, 0.5, 0.995, 0.012])
    target = np.array([1.0, 0.0, 0.0, 1.0, 0.7, 1.0, 0.0])
    got = relax_weights(p_prev, target, fraction_in=0.25, fraction_out=0.5)
    # rise by 1/4 of the gap, fall by 1/2; then 0.9950 + 0.00125 > 0.99 -> 1,
    # 0.012 - 0.006 = 0.006 < 0.01 -> 0
    assert_allclose(got, [0.25, 0.0, 0.5, 1.0, 0.55, 1.0, 0.0])


def test_hysteresis_ramps_in_and_out():
    """A moving seed: weights ramp in with tau_in and out with tau_out, per rebuild."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    far = int(np.argmax(np.linalg.norm(atoms.positions - atoms.positions[0], axis=1)))
    spec = RegionSpec(r_core=0.5)  # core = the seed alone
    dt, nevery = 1.0, 2
    tracker = RegionTracker(spec, IndexSeeds([0]), nevery=nevery,
                            hysteresis=Hysteresis(tau_in=8.0, tau_out=4.0, timestep=dt))
    assert tracker.update(atoms, 0).p[0] == 1.0  # first build: no hysteresis
    # move the seed "role" by swapping atoms 0 and far in the atom list: identity
    # follows the atom, so nothing may change
    order = np.arange(len(atoms))
    order[[0, far]] = [far, 0]
    swapped = atoms[order]
    r = tracker.update(swapped, 1)
    assert r.p[far] == 1.0 and r.p[0] == 0.0
    # now switch seeds: new source where atom `far` is the seed
    tracker.seeds = IndexSeeds([far])
    expected_in, expected_out = 0.0, 1.0
    for step in range(2, 16, 2):
        r = tracker.update(atoms, step)
        expected_in += (1 - expected_in) * min(dt * nevery / 8.0, 1)
        expected_out -= expected_out * min(dt * nevery / 4.0, 1)
        expected_in = 1.0 if expected_in > 0.99 else expected_in
        expected_out = 0.0 if expected_out < 0.01 else expected_out
        assert r.p[far] == pytest.approx(expected_in)
        assert r.p[0] == pytest.approx(expected_out)
    assert 0 < r.p[far] < 1 and r.p[0] == 0.0
    # a ramping-out atom with 0 < p < 1 is still expensive and still cheap
    assert r.expensive[far] and r.cheap[far]


def test_hysteresis_needs_rebuilds():
    with pytest.raises(ConfigurationError, match="hysteresis needs regions that are rebuilt"):
        RegionTracker(RegionSpec(1.0), IndexSeeds([0]), nevery=0,
                      hysteresis=Hysteresis(1.0, 1.0, 1.0))


# ------------------------------------------------------------------ rebuild schedule and identity


def test_rebuild_every_nevery_and_follow_between():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    tracker = RegionTracker(RegionSpec(r_core=2.6, r_buff=2.0), IndexSeeds([0]), nevery=3)
    first = tracker.update(atoms, 0)
    moved = atoms.copy()
    moved.positions[0] += [1.8, 0, 0]  # seed walks towards other neighbours
    same = tracker.update(moved, 1)
    assert_array_equal(same.core, first.core)  # not a rebuild step
    rebuilt = tracker.update(moved, 3)
    assert not np.array_equal(rebuilt.core, first.core)


def test_weights_follow_identity_through_deletion_and_insertion():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    tracker = RegionTracker(RegionSpec(r_core=2.6, r_blend=2.0, r_buff=2.0),
                            IndexSeeds([5]), nevery=10)
    r0 = tracker.update(atoms, 0)
    ids = atoms.arrays["mlmix_id"].copy()
    # delete two far atoms and reverse the order: same weights by identity, no rebuild
    keep = np.flatnonzero(~r0.expensive)[:2]
    smaller = atoms[[k for k in range(len(atoms)) if k not in keep]][::-1]
    r1 = tracker.update(smaller, 1)
    lookup = dict(zip(ids, r0.p))
    assert_allclose(r1.p, [lookup[i] for i in smaller.arrays["mlmix_id"]])
    # add an atom (id 0 from ASE's extend): it gets a fresh id and the regions rebuild
    bigger = smaller.copy()
    bigger += bulk("Cu", "fcc", a=3.6)[:1]
    r2 = tracker.update(bigger, 2)
    assert len(r2.p) == len(bigger)
    assert bigger.arrays["mlmix_id"][-1] > ids.max()
    assert len(set(bigger.arrays["mlmix_id"])) == len(bigger)


def test_a_new_structure_starts_afresh():
    """Atoms whose ids the tracker never followed: no weights, hysteresis or seeds
    carried over; the seed indices index the new atoms, as for a new tracker."""
    def tracker():
        return RegionTracker(RegionSpec(r_core=2.6, r_blend=2.0, r_buff=2.0), IndexSeeds([5]),
                             nevery=2, hysteresis=Hysteresis(8.0, 4.0, 1.0))

    a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    t = tracker()
    for step in range(4):
        t.update(a, step)
    b = a[::-1].copy()
    del b.arrays["mlmix_id"]  # the same crystal built again, atoms in another order
    b.rattle(0.02, seed=1)
    assert t.is_new_structure(b) and t.rebuilds(b, 5) and not t.is_new_structure(a[::-1])
    r = t.update(b, 5)
    ref = tracker().update(b.copy(), 5)
    assert np.flatnonzero(r.seeds).tolist() == [5]
    for name in ("p", "seeds", "core", "expensive", "cheap"):
        assert_array_equal(getattr(r, name), getattr(ref, name))
    assert not set(b.arrays["mlmix_id"]) & set(a.arrays["mlmix_id"])
    # ids that belong to another run are just as unknown
    c = a.copy()
    c.arrays["mlmix_id"] = np.arange(1000, 1000 + len(c))
    assert t.is_new_structure(c)
    assert_array_equal(t.update(c, 6).p, tracker().update(a.copy(), 0).p)


# ------------------------------------------------------------------ seeds


def test_species_seeds_and_errors():
    atoms = bulk("W", "bcc", a=3.16, cubic=True).repeat(3)
    atoms[7].symbol = "He"
    tracker = RegionTracker(RegionSpec(r_core=2.0), SpeciesSeeds("He"))
    r = tracker.update(atoms, 0)
    assert r.seeds.sum() == 1 and r.seeds[7]
    with pytest.raises(ConfigurationError, match=r"no atom of the seed species \['Ne'\]"):
        RegionTracker(RegionSpec(1.0), SpeciesSeeds("Ne")).update(atoms, 0)


def test_index_seed_out_of_range():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    with pytest.raises(ConfigurationError, match=r"seed indices \[4\] are out of range for 4"):
        RegionTracker(RegionSpec(1.0), IndexSeeds([0, 4])).update(atoms, 0)


def test_classifier_bounds_and_schedule_errors():
    q = coordination(3.0)
    with pytest.raises(ConfigurationError, match="lb <= ub"):
        ClassifierSeeds(q, lb=5, ub=1)
    with pytest.raises(ConfigurationError, match="nfreq must be an integer >= 1"):
        ClassifierSeeds(q, nfreq=0)
    with pytest.raises(ConfigurationError, match=r"nfreq \(5\) must be a multiple of .* \(2\)"):
        RegionTracker(RegionSpec(1.0), ClassifierSeeds(q, nfreq=5), nevery=2)


def _vacancy_cell():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    del atoms[0]
    return atoms


class CountingQuantity:
    """Coordination, recording the steps at which it was sampled."""

    def __init__(self):
        self.q = coordination(2.9)
        self.calls = 0

    def __call__(self, atoms):
        self.calls += 1
        return self.q(atoms)


def test_classifier_all_expensive_until_first_query():
    atoms = _vacancy_cell()
    quantity = CountingQuantity()
    seeds = ClassifierSeeds(quantity, lb=0, ub=11, nfreq=4, window=2)
    tracker = RegionTracker(RegionSpec(r_core=0.1, r_buff=1.0), seeds, nevery=2)
    for step in range(4):
        r = tracker.update(atoms, step)
        assert r.p.all() and r.expensive.all() and not r.cheap.any(), step
    # sampled at steps 2 and 4 only (window 2 x nevery 2 before the query at 4)
    assert quantity.calls == 1
    r = tracker.update(atoms, 4)
    assert quantity.calls == 2
    assert r.seeds.sum() == 12  # the 12 neighbours of the vacancy have 11 neighbours
    # r_buff (1 Å) is below the bond length, so every seed is deep core
    assert_array_equal(r.cheap, ~r.seeds)
    assert not r.p[~r.seeds].any()


def test_classifier_initial_seeds_then_query():
    atoms = _vacancy_cell()
    seeds = ClassifierSeeds(coordination(2.9), lb=0, ub=11, nfreq=3, initial=[20])
    tracker = RegionTracker(RegionSpec(r_core=0.1), seeds, nevery=1)
    for step in range(3):
        assert np.flatnonzero(tracker.update(atoms, step).seeds).tolist() == [20]
    assert tracker.update(atoms, 3).seeds.sum() == 12
    # between queries the stored seeds are followed even if the quantity would change
    assert tracker.update(atoms[::-1], 4).seeds.sum() == 12


def test_classifier_averages_its_window():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    values = iter([np.array([0.0, 0, 0, 0]), np.array([2.0, 0, 0, 2])])
    seeds = ClassifierSeeds(lambda a: next(values), lb=0.5, ub=1.5, nfreq=2, window=2)
    tracker = RegionTracker(RegionSpec(r_core=0.1), seeds, nevery=1)
    tracker.update(atoms, 0)
    tracker.update(atoms, 1)
    # mean of (0, 2) is 1 for atoms 0 and 3, inside [0.5, 1.5]
    assert np.flatnonzero(tracker.update(atoms, 2).seeds).tolist() == [0, 3]


def test_classifier_wrong_shape():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    seeds = ClassifierSeeds(lambda a: np.zeros(3), nfreq=1)
    tracker = RegionTracker(RegionSpec(r_core=0.1), seeds, nevery=0)
    with pytest.raises(ConfigurationError, match=r"returned shape \(3,\).*shape \(4,\)"):
        tracker.update(atoms, 0)
