"""SevenNet and CHGNet in energy mixing: exact autograd weighting of per-atom energies.

Both compute in float32, so finite differences resolve their forces to ~1e-3 eV/Å
(with a 0.01 Å step) and their stress to ~1e-5 eV/Å^3; the weighted gradient must agree
to that, while a wrong weighting (the unweighted force, or weights on the wrong atoms)
differs by the forces themselves (~1 eV/Å).
"""

import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from numpy.testing import assert_allclose

from conftest import nve_totals
from mlmix import ConfigurationError, IndexSeeds, MixedCalculator, RegionSpec, RegionTracker
from mlmix.mixing import ShallowCoreWarning
from mlmix.potentials import AseClusterPotential, LammpsPotential
from mlmix.potentials.weighted import stress_from_strain_derivative
from mlmix.testing import finite_difference_gradient, finite_difference_stress


@pytest.fixture(scope="module")
def sevennet():
    pytest.importorskip("sevenn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sevenn's own deprecation chatter at load
        return AseClusterPotential.sevennet("7net-0")


@pytest.fixture(scope="module")
def chgnet():
    pytest.importorskip("chgnet")
    return AseClusterPotential.chgnet()


@pytest.fixture(params=["sevennet", "chgnet"])
def model(request):
    return request.getfixturevalue(request.param)


def _si(rattle=0.05, seed=1):
    atoms = bulk("Si", "diamond", 5.43, cubic=True) * (2, 2, 2)
    atoms.rattle(rattle, seed=seed)
    return atoms


def test_weighted_forces_and_stress_are_the_gradient_of_the_weighted_energy(model):
    pot = model  # SevenNet-0 or CHGNet 0.3.0
    atoms = _si()
    n = len(atoms)
    w = np.random.default_rng(0).choice([0.0, 0.25, 0.5, 1.0], n)
    ev = pot.evaluate_weighted(atoms, w)
    assert pot.weighting == "exact" and pot.weighting_problem() is None
    assert ev.n_evaluated == n and ev.n_levels == 1

    def energy(a):
        return pot.evaluate_weighted(a, w).energy

    k = [0, 5, 33]
    # Central differences of float32 energies are only as good as the energy's rounding:
    # a few ulps of |E| (a float32 sum over the atoms) over the step 2 delta (|E| ~ 350 eV
    # here: 2e-3 eV/Å at delta = 0.02 Å; where the rounding falls depends on the CPU's
    # float32 kernels: 3.7e-3 at delta = 0.01 on one machine, under 3e-3 on another).
    delta = 2e-2
    resolution = 2 * np.finfo(np.float32).eps * abs(ev.energy) / (2 * delta)
    assert_allclose(finite_difference_gradient(energy, atoms, k, delta=delta), ev.forces[k],
                    atol=1e-3 + 2 * resolution)
    unweighted = pot.evaluate(atoms).forces
    assert np.abs(unweighted[k] - ev.forces[k]).max() > 0.1  # the check can tell them apart

    stress = stress_from_strain_derivative(ev.strain_derivative, atoms.get_volume())
    assert np.abs(stress).max() > 1e-3
    assert_allclose(finite_difference_stress(energy, atoms, delta=1e-3), stress, atol=5e-5)

    # all weights 1: SevenNet's own energy, forces and stress
    # all weights 1: the model's own energy, forces and stress
    ones = pot.evaluate_weighted(atoms, np.ones(n))
    assert ones.energy == pytest.approx(np.sum(pot.evaluate(atoms).energies), abs=1e-3)
    assert_allclose(ones.forces, unweighted, atol=1e-4)
    assert_allclose(stress_from_strain_derivative(ones.strain_derivative, atoms.get_volume()),
                    pot.stress(atoms), atol=1e-6)


def test_carved_cluster_equals_the_whole_system_beyond_one_receptive_field(model):
    """Two Si chunks 30 Å apart (farther than the 25 Å (SevenNet-0) or 24 Å (CHGNet)
    receptive field) in a periodic box: weights on one chunk carve only that chunk, and
    its weighted energy, forces and strain derivative equal the whole periodic
    system's."""
    pot = model
    assert pot.receptive_field < 30.0
    chunk = bulk("Si", "diamond", 5.43, cubic=True)
    chunk.rattle(0.05, seed=3)
    other = chunk.copy()
    other.positions += 30.0
    atoms = Atoms(chunk + other, cell=[60.0, 60.0, 60.0], pbc=True)
    w = np.zeros(len(atoms))
    w[:8] = np.linspace(0.2, 1.0, 8)
    ev = pot.evaluate_weighted(atoms, w)
    assert ev.n_evaluated == 8
    e, f, strain = pot.weighted_gradient(atoms, w, strain=True)
    assert ev.energy == pytest.approx(e, abs=1e-4)
    assert np.abs(f).max() > 0.1
    assert_allclose(ev.forces, f, atol=1e-4)
    assert_allclose(ev.strain_derivative, strain, atol=1e-3)


def _nve_totals(calc, steps=20):
    atoms = _si(rattle=0.0)
    del atoms[0]
    return nve_totals(atoms, calc, 600, steps, seed=4)


@pytest.mark.slow
def test_energy_mixing_with_sevennet_conserves_energy(sevennet):
    """NVE at 1 fs in energy mode, SevenNet-0 expensive and Tersoff cheap on a 63-atom
    cell: E + K is conserved as well as by all-SevenNet NVE (whose own 1 fs integration
    error is a few meV over these 20 steps). With a 25 Å receptive field no atom of a
    3 Å core has the pure SevenNet force, and mlmix says so."""
    from ase import units

    cheap = LammpsPotential.tersoff("Si.tersoff", ["Si"])
    spec = RegionSpec(r_core=3.0, r_blend=3.0, r_buff=0.0)
    tracker = RegionTracker(spec, IndexSeeds([0]), nevery=10**6)
    with pytest.warns(ShallowCoreWarning, match="deeper than 25 Å"):  # 5 layers x 5 Å
        calc = MixedCalculator(sevennet, cheap, tracker, mixing="energy",
                               timestep=1.0 * units.fs)
    mixed = _nve_totals(calc)
    p = calc.regions.p
    assert 0 < np.count_nonzero(p == 1) < len(p) and np.any((p > 0) & (p < 1))
    reference = _nve_totals(sevennet.as_calculator())
    assert np.ptp(mixed) < 3 * np.ptp(reference), (np.ptp(mixed), np.ptp(reference))


def test_a_chgnet_without_per_site_energies_is_refused_before_work(chgnet, monkeypatch):
    cheap = LammpsPotential.tersoff("Si.tersoff", ["Si"])
    tracker = RegionTracker(RegionSpec(r_core=3.0), IndexSeeds([0]))
    monkeypatch.setattr(chgnet.calculator.model, "mlp_first", False)
    with pytest.raises(ConfigurationError, match="no per-site energies to weight"):
        MixedCalculator(chgnet, cheap, tracker, mixing="energy")
