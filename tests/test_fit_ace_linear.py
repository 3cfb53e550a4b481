"""AceLinearModel: python-ace design matrix against the written .yace through AcePotential."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from conftest import energies_and_forces
from mlmix.errors import ConfigurationError
from mlmix.fitting.ace_linear import AceLinearModel
from mlmix.potentials.lammps import LammpsPotential


def rattled(rng, repeat=2, alloy=False):
    at = bulk("W", "bcc", a=3.165, cubic=True).repeat(repeat)
    at.set_cell(at.cell.array @ (np.eye(3) + rng.normal(0.0, 0.01, (3, 3))), scale_atoms=True)
    at.positions += rng.normal(0.0, 0.1, at.positions.shape)
    if alloy:
        symbols = np.array(at.get_chemical_symbols(), dtype="<U2")
        symbols[rng.random(len(at)) < 0.4] = "Mo"
        at.set_chemical_symbols(symbols.tolist())
    return at



def test_fit_write_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rattled(rng) for _ in range(4)]
    e_ref, f_ref = energies_and_forces(LammpsPotential.snap("W_2940_2017_2", ["W"]), frames)
    model = AceLinearModel(["W"], cutoff=4.7, nradmax_by_orders=(6, 3), lmax_by_orders=(0, 2))
    dm = model.design_matrix(frames)
    np.testing.assert_array_equal(dm.energy[:, 0], dm.n_atoms)
    np.testing.assert_array_equal(dm.forces[:, 0], 0.0)
    a = np.vstack([dm.energy / dm.n_atoms[:, None], dm.forces])
    y = np.concatenate([e_ref / dm.n_atoms, f_ref])
    c = np.linalg.lstsq(a, y, rcond=None)[0]
    assert c[0] != 0.0
    e, f = energies_and_forces(model.potential(c, tmp_path, "w_lin"), frames)
    np.testing.assert_allclose(e, dm.energy @ c, rtol=0, atol=1e-8)  # E0 in the .yace
    np.testing.assert_allclose(f, dm.forces @ c, rtol=0, atol=1e-8)


def test_two_species_and_finite_differences(tmp_path):
    rng = np.random.default_rng(1)
    model = AceLinearModel(["W", "Mo"], cutoff=4.5, nradmax_by_orders=(4, 2), lmax_by_orders=(0, 1))
    c = rng.normal(0.0, 0.1, model.n_coefficients)
    at = rattled(rng, alloy=True)
    dm = model.design_matrix([at])
    e, f = energies_and_forces(model.potential(c, tmp_path, "wmo"), [at])
    np.testing.assert_allclose(e, dm.energy @ c, rtol=0, atol=1e-8)
    np.testing.assert_allclose(f, dm.forces @ c, rtol=0, atol=1e-8)
    h = 1e-5
    for k in range(3):
        plus, minus = at.copy(), at.copy()
        plus.positions[3, k] += h
        minus.positions[3, k] -= h
        ep = model.design_matrix([plus, minus], forces=False).energy @ c
        assert (dm.forces @ c)[9 + k] == pytest.approx(-(ep[0] - ep[1]) / (2 * h), abs=1e-6)


def test_bad_input():
    model = AceLinearModel(["W"], cutoff=4.0, nradmax_by_orders=(3,), lmax_by_orders=(0,))
    with pytest.raises(ConfigurationError, match="frame list is empty"):
        model.design_matrix([])
    with pytest.raises(ConfigurationError, match=r"frame 0 contains \['Mo'\]"):
        model.design_matrix([bulk("Mo", "bcc", a=3.15)])
    with pytest.raises(ConfigurationError, match="unknown element"):
        AceLinearModel(["Zz"])
