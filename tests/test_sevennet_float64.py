"""SevenNet in float64: the same model, smooth enough to label elastic constants.

SevenNet-0 computes in float32: its energy moves in steps of about 1e-6 of its size, so
the curvature of E(strain) over strains of 1e-3 (an elastic constant) is noisy at the
per-cent level. ``dtype = "float64"`` builds the same weights in float64; it must give
the float32 model's forces and energies to float32 precision, forces and stress that
are the gradient of its energy to float64 precision, and an E(strain) smooth where
float32's is not.
"""

import warnings

import numpy as np
import pytest
from ase.build import bulk
from numpy.testing import assert_allclose

from mlmix import ConfigurationError
from mlmix.potentials import AseClusterPotential
from mlmix.potentials.factory import make_potential
from mlmix.testing import finite_difference_gradient, finite_difference_stress

pytest.importorskip("sevenn")


def _load(dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sevenn's own chatter at load
        return AseClusterPotential.sevennet("7net-0", dtype=dtype)


@pytest.fixture(scope="module")
def pair():
    return _load("float32"), _load("float64")


def _w_he(seed=1):
    atoms = bulk("W", "bcc", 3.19, cubic=True) * (2, 2, 2)
    atoms[0].symbol = "He"
    atoms.rattle(0.05, seed=seed)
    return atoms


def test_float64_is_the_same_model(pair):
    p32, p64 = pair
    assert p64.dtype == "float64" and p32.dtype == "float32"
    assert (p64.cutoff, p64.receptive_field, p64.species) == \
        (p32.cutoff, p32.receptive_field, p32.species)
    atoms = _w_he()
    e32, e64 = p32.evaluate(atoms), p64.evaluate(atoms)
    assert np.abs(e64.forces).max() > 0.5
    assert_allclose(e64.forces, e32.forces, atol=3e-5)
    assert_allclose(e64.energies, e32.energies, atol=3e-5)
    assert_allclose(p64.stress(atoms), p32.stress(atoms), atol=1e-6)


def test_float64_forces_and_stress_are_the_gradient_of_its_energy(pair):
    _, p64 = pair
    atoms = _w_he(seed=2)

    def energy(a):
        return float(np.sum(p64.evaluate(a).energies))

    k = [0, 3]  # the He and a W atom
    forces = p64.evaluate(atoms).forces
    assert_allclose(finite_difference_gradient(energy, atoms, k, delta=1e-4), forces[k],
                    atol=1e-6)
    stress = p64.stress(atoms)
    assert np.abs(stress).max() > 1e-3
    assert_allclose(finite_difference_stress(energy, atoms, delta=1e-5), stress, atol=1e-8)


def test_float64_energy_of_a_shear_is_smooth_where_float32_is_not(pair):
    """E(eps) of a 54-atom W cell under yz shear up to 2e-3: a parabola leaves residuals
    of 1e-8 eV in float64 (the quartic term), against float32 steps of ~1e-5 eV."""
    strains = np.linspace(0.0, 2e-3, 5)

    def residual(pot):
        energies = []
        for eps in strains:
            atoms = bulk("W", "bcc", 3.19, cubic=True) * (3, 3, 3)
            shear = np.eye(3)
            shear[1, 2] = shear[2, 1] = eps / 2
            atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
            energies.append(np.sum(pot.evaluate(atoms).energies))
        fit = np.polyfit(strains, energies, 2)
        return np.abs(np.polyval(fit, strains) - energies).max()

    p32, p64 = pair
    assert residual(p64) < 1e-7
    assert residual(p32) > 1e-6


def test_sevennet_dtype_from_toml_and_bad_dtype_named():
    pot = make_potential({"backend": "sevennet", "model": "7net-0", "dtype": "float64"})
    assert pot.dtype == "float64" and "float64" in pot.name
    with pytest.raises(ConfigurationError, match=r"potentials\.expensive\.dtype") as err:
        make_potential({"backend": "sevennet", "dtype": "double", "buffer": -1},
                       "potentials.expensive")
    assert "potentials.expensive.buffer" in str(err.value)  # every mistake at once


def test_bad_dtype_from_python_refused_before_the_model_loads():
    with pytest.raises(ConfigurationError, match=r"dtype must be one of \('float64', "
                                                 r"'float32'\), got 'double'"):
        AseClusterPotential.sevennet("7net-0", dtype="double")
