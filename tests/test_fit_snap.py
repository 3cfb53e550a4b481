"""SnapModel: design matrix from LAMMPS ``compute snap`` against ``pair_style snap``."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from conftest import energies_and_forces
from mlmix._lammps_runtime import potentials_dir
from mlmix.errors import ConfigurationError
from mlmix.fitting.model import DesignMatrix, LinearModel
from mlmix.fitting.snap import SnapModel, n_bispectrum
from mlmix.potentials.lammps import LammpsPotential


def rattled_w(rng, repeat=3, strain=0.01, rattle=0.08) -> Atoms:
    at = bulk("W", "bcc", a=3.165, cubic=True).repeat(repeat)
    at.set_cell(at.cell.array @ (np.eye(3) + rng.normal(0.0, strain, (3, 3))), scale_atoms=True)
    at.positions += rng.normal(0.0, rattle, at.positions.shape)
    return at



def w2940_coefficients() -> np.ndarray:
    path = potentials_dir() / "W_2940_2017_2.snapcoeff"
    lines = [ln.split("#")[0].split() for ln in path.read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    return np.array([float(ln[0]) for ln in lines[2:]])


def test_bispectrum_count():
    assert [n_bispectrum(t) for t in (0, 2, 4, 6, 8)] == [1, 5, 14, 30, 55]


def test_reproduces_w2940_snap():
    """Rows @ the published coefficients = pair_style snap, with instance reuse."""
    rng = np.random.default_rng(0)
    # Same size (change_box path), then a different size (new instance), then back.
    frames = [rattled_w(rng), rattled_w(rng), rattled_w(rng, repeat=2), rattled_w(rng)]
    c = w2940_coefficients()
    model = SnapModel(["W"], twojmax=8, rcutfac=4.73442, bzeroflag=0)
    assert isinstance(model, LinearModel)
    assert model.n_coefficients == c.size == 56
    dm = model.design_matrix(frames)
    assert isinstance(dm, DesignMatrix)
    np.testing.assert_array_equal(dm.n_atoms, [54, 54, 16, 54])
    assert dm.energy.shape == (4, 56) and dm.forces.shape == (3 * 178, 56)
    np.testing.assert_array_equal(dm.energy[:, 0], dm.n_atoms)  # beta0 column = atom count
    np.testing.assert_array_equal(dm.forces[:, 0], 0.0)
    e_ref, f_ref = energies_and_forces(LammpsPotential.snap("W_2940_2017_2", ["W"]), frames)
    np.testing.assert_allclose(dm.energy @ c, e_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(dm.forces @ c, f_ref, rtol=0, atol=1e-8)
    # energies only: identical energy rows, no force rows
    dm_e = model.design_matrix(frames[:2], forces=False)
    assert dm_e.forces is None
    np.testing.assert_allclose(dm_e.energy, dm.energy[:2], rtol=0, atol=1e-9)
    model.close()


def test_open_boundaries_cluster():
    rng = np.random.default_rng(3)
    at = rattled_w(rng, repeat=2)
    at.pbc = False
    c = w2940_coefficients()
    model = SnapModel(["W"], twojmax=8, rcutfac=4.73442, bzeroflag=0)
    dm = model.design_matrix([at])
    e_ref, f_ref = energies_and_forces(LammpsPotential.snap("W_2940_2017_2", ["W"]), [at])
    np.testing.assert_allclose(dm.energy @ c, e_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(dm.forces @ c, f_ref, rtol=0, atol=1e-8)


def test_fit_write_and_load_round_trip(tmp_path):
    """Coefficients fitted to W_2940 data, written and loaded, give energy @ c, forces @ c."""
    rng = np.random.default_rng(1)
    frames = [rattled_w(rng, repeat=2, rattle=0.1) for _ in range(6)]
    e_ref, f_ref = energies_and_forces(LammpsPotential.snap("W_2940_2017_2", ["W"]), frames)
    model = SnapModel(["W"], twojmax=4)  # bzeroflag 1, default rcutfac for W
    dm = model.design_matrix(frames)
    a = np.vstack([dm.energy / dm.n_atoms[:, None], dm.forces])
    y = np.concatenate([e_ref / dm.n_atoms, f_ref])
    c = np.linalg.lstsq(a, y, rcond=None)[0]
    assert np.sqrt(np.mean((dm.forces @ c - f_ref) ** 2)) < 0.3  # a real (if small) fit
    files = model.write(c, tmp_path, "w_fit")
    assert [f.name for f in files] == ["w_fit.snapcoeff", "w_fit.snapparam"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w_fit.snapcoeff", "w_fit.snapparam"]
    pot = model.potential(c, tmp_path, "w_fit")
    assert pot.cutoff == pytest.approx(model.cutoff)
    e, f = energies_and_forces(pot, frames)
    np.testing.assert_allclose(e, dm.energy @ c, rtol=0, atol=1e-8)
    np.testing.assert_allclose(f, dm.forces @ c, rtol=0, atol=1e-8)


def test_two_species_round_trip(tmp_path):
    """Species blocks, count columns and wj weights line up with pair_style snap."""
    rng = np.random.default_rng(2)
    frames = []
    for _ in range(2):
        at = rattled_w(rng, repeat=2)
        symbols = np.array(at.get_chemical_symbols(), dtype="<U2")
        symbols[rng.random(len(at)) < 0.4] = "Mo"
        at.set_chemical_symbols(symbols.tolist())
        frames.append(at)
    model = SnapModel(["Mo", "W"], twojmax=4)
    k = n_bispectrum(4)
    c = np.concatenate([[-10.9], rng.normal(0, 0.05, k), [-12.1], rng.normal(0, 0.05, k)])
    dm = model.design_matrix(frames)
    n_mo = [sum(s == "Mo" for s in at.get_chemical_symbols()) for at in frames]
    np.testing.assert_array_equal(dm.energy[:, 0], n_mo)
    np.testing.assert_array_equal(dm.energy[:, k + 1], dm.n_atoms - n_mo)
    e, f = energies_and_forces(model.potential(c, tmp_path, "mow"), frames)
    np.testing.assert_allclose(e, dm.energy @ c, rtol=0, atol=1e-8)
    np.testing.assert_allclose(f, dm.forces @ c, rtol=0, atol=1e-8)


def test_bad_input(tmp_path):
    model = SnapModel(["W"], twojmax=2)
    with pytest.raises(ConfigurationError, match="frame list is empty"):
        model.design_matrix([])
    with pytest.raises(ConfigurationError, match=r"frame 0 contains \['Mo'\].*describes only \['W'\]"):
        model.design_matrix([bulk("Mo", "bcc", a=3.15, cubic=True)])
    with pytest.raises(ConfigurationError, match=r"unknown element symbols \['Xx'\]"):
        SnapModel(["W", "Xx"])
    with pytest.raises(ConfigurationError, match="duplicates"):
        SnapModel(["W", "W"])
    with pytest.raises(ConfigurationError, match="twojmax must be an even integer"):
        SnapModel(["W"], twojmax=5)
    with pytest.raises(ConfigurationError, match="wj needs one value per species"):
        SnapModel(["W", "Mo"], wj=[1.0])
    with pytest.raises(ConfigurationError, match="expects 6 coefficients"):
        model.write(np.zeros(5), tmp_path, "bad")
    assert list(tmp_path.iterdir()) == []
