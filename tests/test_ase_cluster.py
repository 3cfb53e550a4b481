"""AseClusterPotential: carved clusters around the mask, with EMT as exact reference."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from conftest import EMT_CUTOFF
from mlmix.carving import carve_cluster, within
from mlmix.errors import ConfigurationError, MissingDependencyError
from mlmix.potentials.ase_cluster import AseClusterPotential, ReceptiveFieldWarning

# ASE's EMT for Cu: energies reach rc_list = 5.88 Å (computed below for safety).


def _emt_cutoff():
    atoms = bulk("Cu", "fcc", a=3.61)
    calc = EMT()
    atoms.calc = calc
    atoms.get_potential_energy()
    return float(calc.rc_list)


def _cell(repeat, vacancy=False, seed=0):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    if vacancy:
        del atoms[1]
    atoms.rattle(0.05, seed=seed)
    return atoms


def _reference(atoms):
    atoms = atoms.copy()
    atoms.calc = EMT()
    return atoms.get_forces(), atoms.get_potential_energies()


def test_emt_cutoff_constant():
    assert _emt_cutoff() == pytest.approx(EMT_CUTOFF, abs=1e-3)


@pytest.mark.parametrize(
    ("repeat", "vacancy", "periodic"),
    [(9, False, False), (6, True, True)],  # 32.5 Å cell: finite cluster; 21.7 Å: wraps
)
def test_forces_on_mask_exact_with_buffer_of_two_cutoffs(repeat, vacancy, periodic):
    atoms = _cell(repeat, vacancy)
    forces, energies = _reference(atoms)
    pot = AseClusterPotential(EMT(), buffer=2 * EMT_CUTOFF + 0.1, cutoff=EMT_CUTOFF)
    mask = np.zeros(len(atoms), dtype=bool)
    mask[[0, 2]] = True
    cluster, index, is_periodic = pot.carve(atoms, mask)
    assert is_periodic == periodic
    assert len(cluster) < len(atoms)

    ev = pot.evaluate(atoms, mask)

    np.testing.assert_allclose(ev.forces[mask], forces[mask], rtol=0, atol=1e-8)
    np.testing.assert_allclose(ev.energies[mask], energies[mask], rtol=0, atol=1e-8)
    assert not ev.forces[~mask].any()  # nothing is claimed outside the mask
    assert np.isnan(ev.energies[~mask]).all()
    assert ev.n_evaluated == len(cluster)
    assert ev.exact == (pot.buffer >= 2 * pot.receptive_field)


def test_too_small_buffer_is_visibly_wrong():
    atoms = _cell(6, vacancy=True)
    forces, _ = _reference(atoms)
    pot = AseClusterPotential(EMT(), buffer=EMT_CUTOFF, cutoff=EMT_CUTOFF)
    mask = np.zeros(len(atoms), dtype=bool)
    mask[0] = True
    ev = pot.evaluate(atoms, mask)
    assert np.abs(ev.forces[mask] - forces[mask]).max() > 1e-4


def test_whole_system_is_exact():
    atoms = _cell(3, vacancy=True)
    forces, energies = _reference(atoms)
    pot = AseClusterPotential(EMT(), buffer=0.0, cutoff=EMT_CUTOFF)  # no cluster: no warning
    ev = pot.evaluate(atoms)
    np.testing.assert_allclose(ev.forces, forces, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ev.energies, energies, rtol=0, atol=1e-10)
    assert ev.exact and ev.n_evaluated == len(atoms)


def test_carve_cluster_keeps_geometry():
    atoms = _cell(9)
    keep = within(atoms.positions, atoms.cell.array, atoms.pbc, np.arange(len(atoms)) == 5, 8.0)
    cluster, index, periodic = carve_cluster(atoms, keep, EMT_CUTOFF, vacuum=7.0)
    assert not periodic and not cluster.pbc.any()
    np.testing.assert_array_equal(index, np.flatnonzero(keep))
    # every pair distance in the cluster equals the minimum-image distance in atoms
    d_cluster = cluster.get_all_distances()
    d_atoms = atoms[index].get_all_distances(mic=True)  # (the cluster's atoms only: fast)
    np.testing.assert_allclose(d_cluster, d_atoms, atol=1e-9)
    assert cluster.positions.min() >= 7.0 - 1e-9


def test_warns_at_the_first_cluster_when_buffer_below_receptive_field():
    atoms = _cell(4)
    mask = np.zeros(len(atoms), bool)
    mask[0] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # construction and whole-system use: exact, silent
        pot = AseClusterPotential(EMT(), buffer=4.0, cutoff=5.0, receptive_field=10.0)
        pot.evaluate(atoms)
        AseClusterPotential(EMT(), buffer=10.0, cutoff=5.0, receptive_field=10.0).evaluate(
            atoms, mask)
    with pytest.warns(ReceptiveFieldWarning, match=r"buffer 4 Å is smaller than the receptive field 10 Å"):
        pot.evaluate(atoms, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per potential
        pot.evaluate(atoms, mask)


def test_configuration_errors():
    with pytest.raises(ConfigurationError, match="cannot read the cutoff of EMT; pass cutoff="):
        AseClusterPotential(EMT(), buffer=10.0)
    with pytest.raises(ConfigurationError, match=r"buffer must be >= 0 Å, got -1"):
        AseClusterPotential(EMT(), buffer=-1.0, cutoff=5.0)
    with pytest.raises(ConfigurationError, match=r"receptive_field \(3.0 Å\) must be at least"):
        AseClusterPotential(EMT(), buffer=10.0, cutoff=5.0, receptive_field=3.0)


@pytest.mark.parametrize(("factory", "modules", "extra"), [
    ("sevennet", ["sevenn", "sevenn.calculator"], "sevenn"),
    ("chgnet", ["chgnet", "chgnet.model"], "chgnet"),
])
def test_missing_extra(monkeypatch, factory, modules, extra):
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` fail
    with pytest.raises(MissingDependencyError, match=rf"pip install 'mlmix\[{extra}\]'"):
        getattr(AseClusterPotential, factory)(buffer=10.0)


def test_sevennet_whole_cell_and_receptive_field():
    pytest.importorskip("sevenn")
    from sevenn.calculator import SevenNetCalculator

    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)  # 64 atoms
    atoms.rattle(0.03, seed=1)
    pot = AseClusterPotential.sevennet("7net-0", buffer=25.0)
    assert pot.cutoff == 5.0
    assert pot.receptive_field == pot.calculator.sevennet_config["num_convolution_layer"] * 5.0
    assert pot.receptive_field == 25.0
    assert "Si" in pot.species

    ev = pot.evaluate(atoms)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No tensor product accelerator")
        plain = SevenNetCalculator("7net-0", device="cpu")
    ref = atoms.copy()
    ref.calc = plain
    np.testing.assert_allclose(ev.forces, ref.get_forces(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ev.energies, ref.get_potential_energies(), rtol=0, atol=1e-5)
    assert ev.exact and ev.n_evaluated == 64


# torch warns inside CHGNet's own code (a grad-tracking tensor made a scalar); not ours.
@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_chgnet_receptive_field():
    pytest.importorskip("chgnet")
    pot = AseClusterPotential.chgnet(buffer=24.0)
    model = pot.calculator.model
    assert pot.cutoff == model.graph_converter.atom_graph_cutoff == 6.0
    assert pot.receptive_field == model.n_conv * 6.0 == 24.0
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    ev = pot.evaluate(atoms)
    assert ev.forces.shape == (8, 3) and np.isfinite(ev.energies).all()
