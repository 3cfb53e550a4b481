"""AcePotential (pyace, masked) against pyace's own calculator, and the bin filter."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from ase.build import bulk

from mlmix.carving import candidates_near, perpendicular_widths, within
from mlmix.errors import ConfigurationError
from mlmix.neighbours import dilate
from mlmix.potentials.ace import AcePotential

pyace = pytest.importorskip("pyace")

ACE_FILE = "Cu-PBE-core-rep.ace"


@pytest.fixture(scope="module")
def ace():
    # the full contract (forces off the mask too), so those forces can be checked
    return AcePotential(ACE_FILE, forces_outside_mask=True)


@pytest.fixture(scope="module")
def reference(ace):
    return pyace.PyACECalculator(str(ace.path))


def _vacancy_cell():
    """255 atoms: 4x4x4 cubic fcc Cu (14.4 Å, under 2 cutoffs) minus atom 0, rattled."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(4)
    del atoms[0]
    atoms.rattle(0.05, seed=3)
    return atoms


def _triclinic_cell():
    """343 atoms: 7x7x7 primitive fcc Cu, sheared so no two cell angles are equal."""
    atoms = bulk("Cu", "fcc", a=3.61).repeat(7)
    strain = np.array([[1.01, 0.03, -0.02], [0.0, 0.99, 0.04], [0.0, 0.0, 1.02]])
    atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
    atoms.rattle(0.05, seed=4)
    return atoms


CELLS = {"vacancy": _vacancy_cell, "triclinic": _triclinic_cell}


def _reference(atoms, calc):
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_forces(), atoms.get_potential_energies()


def _core_and_mask(atoms, cutoff, n_core=4):
    core = np.zeros(len(atoms), dtype=bool)
    core[:n_core] = True
    mask = dilate(atoms.positions, atoms.cell.array, atoms.pbc, core, cutoff)
    return core, mask


def test_attributes_from_basis(ace):
    assert ace.species == frozenset({"Cu"})
    assert ace.cutoff == pytest.approx(7.4)
    assert ace.receptive_field == ace.cutoff
    assert ace.is_local
    assert ace.path.name == ACE_FILE


def test_loads_by_path(ace):
    assert AcePotential(ace.path).cutoff == ace.cutoff


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_all_atoms_equal_pyace(ace, reference, cell):
    atoms = CELLS[cell]()
    forces, energies = _reference(atoms, reference)
    ev = ace.evaluate(atoms)
    np.testing.assert_allclose(ev.forces, forces, rtol=0, atol=1e-8)
    np.testing.assert_allclose(ev.energies, energies, rtol=0, atol=1e-8)
    assert ev.n_evaluated == len(atoms)
    assert ev.exact


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_masked_forces_on_core_equal_all_atom_forces(ace, reference, cell):
    atoms = CELLS[cell]()
    forces, energies = _reference(atoms, reference)
    core, mask = _core_and_mask(atoms, ace.cutoff)
    assert core.sum() < mask.sum() < len(atoms)

    ev = ace.evaluate(atoms, mask)

    np.testing.assert_allclose(ev.forces[core], forces[core], rtol=0, atol=1e-8)
    np.testing.assert_allclose(ev.energies[mask], energies[mask], rtol=0, atol=1e-8)
    assert np.isnan(ev.energies[~mask]).all()
    # forces outside the mask come from force sinks: only the mask's energies computed
    assert ev.n_evaluated == mask.sum()
    assert ev.exact
    # Masked forces differ from the full ones just outside the core: the test can fail.
    assert np.abs(ev.forces[~core] - forces[~core]).max() > 1e-3


def test_forces_beyond_cutoff_of_mask_are_zero(ace):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(6)
    atoms.rattle(0.05, seed=5)
    mask = np.zeros(len(atoms), dtype=bool)
    mask[:2] = True
    ev = ace.evaluate(atoms, mask)
    near = within(atoms.positions, atoms.cell.array, atoms.pbc, mask, ace.cutoff)
    assert np.abs(ev.forces[~near]).max() == 0.0
    assert np.abs(ev.forces[near]).max() > 0.0


def test_masked_forces_are_gradient_of_masked_energy(ace):
    atoms = _vacancy_cell()
    mask = np.zeros(len(atoms), dtype=bool)
    mask[[5, 17, 40, 41]] = True
    ev = ace.evaluate(atoms, mask)
    h = 1e-4
    # atoms in the mask, a neighbour outside it, and (via vacancy cell < 2 rc) images
    for atom, axis in [(5, 0), (17, 2), (40, 1), (6, 1), (100, 0)]:
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[atom, axis] += sign * h
            energies.append(np.nansum(ace.evaluate(moved, mask).energies))
        fd = -(energies[0] - energies[1]) / (2 * h)
        assert ev.forces[atom, axis] == pytest.approx(fd, abs=2e-6)


def test_empty_mask(ace):
    atoms = _vacancy_cell()
    ev = ace.evaluate(atoms, np.zeros(len(atoms), dtype=bool))
    assert ev.n_evaluated == 0
    assert not ev.forces.any()
    assert np.isnan(ev.energies).all()


def test_input_not_modified(ace):
    atoms = _triclinic_cell()
    before = atoms.copy()
    ace.evaluate(atoms, np.arange(len(atoms)) < 10)
    assert atoms == before


def test_unknown_file_names_where_it_looked(tmp_path):
    with pytest.raises(ConfigurationError, match=r"'no-such\.ace' not found; looked at .*potentials"):
        AcePotential("no-such.ace")
    with pytest.raises(ConfigurationError, match=str(tmp_path)):
        AcePotential(tmp_path / "missing.yace")


def test_wrong_suffix(tmp_path):
    path = tmp_path / "pot.yaml"
    path.write_text("x")
    with pytest.raises(ConfigurationError, match=r"not an ACE file.*'\.yaml'"):
        AcePotential(path)


def test_species_mismatch(ace):
    atoms = _vacancy_cell()
    atoms[3].symbol = "Fe"
    with pytest.raises(ConfigurationError, match=r"\['Cu'\] but the structure contains \['Fe'\]"):
        ace.evaluate(atoms)


def test_nan_position(ace):
    atoms = _vacancy_cell()
    atoms.positions[7, 1] = np.nan
    with pytest.raises(ConfigurationError, match="NaN or infinite positions.*index 7"):
        ace.evaluate(atoms)


def test_bad_mask(ace):
    atoms = _vacancy_cell()
    with pytest.raises(ConfigurationError, match="mask must be a boolean array"):
        ace.evaluate(atoms, np.ones(3, dtype=bool))


# --- candidates_near: the O(N) bin filter ------------------------------------------


def _brute_force_within(positions, cell, pbc, members, radius):
    """O(N^2 * images) minimum-image distances; exact reference."""
    pbc = np.broadcast_to(pbc, (3,))
    widths = perpendicular_widths(cell) if pbc.any() else np.ones(3)
    reach = [int(np.ceil(radius / widths[k])) + 1 if pbc[k] else 0 for k in range(3)]
    shifts = np.array(list(itertools.product(*[range(-r, r + 1) for r in reach])))
    images = shifts @ (cell if pbc.any() else np.zeros((3, 3)))
    out = members.copy()
    for m in np.flatnonzero(members):
        d = positions[None, :, :] + images[:, None, :] - positions[m]
        out |= (np.linalg.norm(d, axis=2) < radius).any(axis=0)
    return out


def _random_triclinic(rng, scale):
    cell = np.diag(rng.uniform(0.8, 1.2, 3)) * scale
    cell += np.triu(rng.uniform(-0.4, 0.4, (3, 3)), 1) * scale
    return cell


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("scale", [4.0, 9.0, 30.0])
def test_candidates_near_is_superset_of_brute_force(seed, scale):
    rng = np.random.default_rng(seed)
    cell = _random_triclinic(rng, scale)
    n = 300
    pbc = [True, True, True] if seed < 4 else [True, False, True]
    frac = rng.uniform(-0.3, 1.3, (n, 3))  # positions outside the cell too
    positions = frac @ cell
    members = rng.random(n) < 0.02
    members[0] = True
    radius = 3.5  # exceeds half the cell for scale 4
    exact = _brute_force_within(positions, cell, pbc, members, radius)
    cand = candidates_near(positions, cell, pbc, members, radius)
    assert not (exact & ~cand).any()
    if scale == 30.0:
        assert cand.sum() < n  # it filters, in large cells
    np.testing.assert_array_equal(within(positions, cell, pbc, members, radius), exact)


def test_candidates_near_open_system_without_cell():
    rng = np.random.default_rng(11)
    positions = rng.uniform(0, 40, (400, 3))
    members = np.zeros(400, dtype=bool)
    members[[3, 200]] = True
    cell = np.zeros((3, 3))
    exact = _brute_force_within(positions, cell, False, members, 5.0)
    cand = candidates_near(positions, cell, False, members, 5.0)
    assert not (exact & ~cand).any()
    assert cand.sum() < 200
    np.testing.assert_array_equal(within(positions, cell, False, members, 5.0), exact)


def test_candidates_near_trivial_inputs():
    positions = np.zeros((4, 3))
    cell = np.eye(3) * 10
    none = np.zeros(4, dtype=bool)
    assert not candidates_near(positions, cell, True, none, 3.0).any()
    some = np.array([True, False, False, False])
    np.testing.assert_array_equal(candidates_near(positions, cell, True, some, 0.0), some)
    with pytest.raises(ConfigurationError, match=r"members must have shape \(4,\)"):
        candidates_near(positions, cell, True, some[:2], 1.0)
    with pytest.raises(ConfigurationError, match="direction 2 is periodic but its cell vector is zero"):
        candidates_near(positions, np.diag([10.0, 10.0, 0.0]), True, some, 1.0)


def test_default_mode_computes_mask_forces_only(ace, reference):
    atoms = _triclinic_cell()
    forces, energies = _reference(atoms, reference)
    core, mask = _core_and_mask(atoms, ace.cutoff)
    full = ace.evaluate(atoms, mask)
    lean = AcePotential(ACE_FILE).evaluate(atoms, mask)
    np.testing.assert_allclose(lean.forces[mask], full.forces[mask], rtol=0, atol=1e-10)
    np.testing.assert_allclose(lean.forces[core], forces[core], rtol=0, atol=1e-8)
    assert np.isnan(lean.forces[~mask]).all()
    np.testing.assert_allclose(lean.energies[mask], energies[mask], rtol=0, atol=1e-8)
    assert lean.n_evaluated == mask.sum()


def test_neighbour_lists_are_reused_within_the_skin():
    pot = AcePotential(ACE_FILE, skin=1.0)
    atoms = _vacancy_cell()
    core, mask = _core_and_mask(atoms, pot.cutoff)
    pot.evaluate(atoms, mask)
    rng = np.random.default_rng(4)
    for step, amplitude, rebuilds in [(1, 0.2, 1), (2, 0.2, 1), (3, 0.8, 2)]:
        moved = atoms.copy()
        moved.positions += rng.uniform(-amplitude, amplitude, (len(atoms), 3)) / np.sqrt(3)
        if amplitude > 0.5:
            moved.positions[5] += [0.6, 0, 0]  # certainly beyond skin / 2
        got = pot.evaluate(moved, mask)
        fresh = AcePotential(ACE_FILE).evaluate(moved, mask)
        assert pot.n_builds == rebuilds, step
        np.testing.assert_allclose(got.forces[core], fresh.forces[core], rtol=0, atol=1e-10)
        np.testing.assert_allclose(got.energies[mask], fresh.energies[mask], rtol=0, atol=1e-10)
        atoms = moved if amplitude > 0.5 else atoms
    pot.evaluate(atoms, core)  # a new mask always rebuilds
    assert pot.n_builds == 3
