"""Potentials from TOML tables: the ``ase`` backend (any ASE calculator by its factory)
and the shortcuts, in the main environment (MACE's own tests are in test_mace.py)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from numpy.testing import assert_allclose

from conftest import EMT_CUTOFF
from mlmix import ConfigurationError
from mlmix.errors import MissingDependencyError
from mlmix.neighbours import dilate
from mlmix.potentials.ase_cluster import AseClusterPotential
from mlmix.potentials.factory import make_potential

EMT_TABLE = {"backend": "ase", "calculator": "ase.calculators.emt:EMT",
             "buffer": 2 * EMT_CUTOFF + 0.1, "cutoff": EMT_CUTOFF,
             "receptive_field": EMT_CUTOFF, "species": ["Cu"]}


def test_any_ase_calculator_by_its_factory_gives_whole_system_forces_on_the_mask():
    pot = make_potential(EMT_TABLE)
    assert isinstance(pot, AseClusterPotential) and type(pot.calculator) is EMT
    assert pot.name == "ase:ase.calculators.emt:EMT" and pot.species == {"Cu"}
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(7)
    atoms.rattle(0.05, seed=3)
    ref = atoms.copy()
    ref.calc = EMT()
    seed = np.zeros(len(atoms), bool)
    seed[0] = True
    mask = dilate(atoms.positions, atoms.cell.array, atoms.pbc, seed, 3.0)
    ev = pot.evaluate(atoms, mask)
    assert ev.exact and mask.sum() < ev.n_evaluated < len(atoms)
    assert_allclose(ev.forces[mask], ref.get_forces()[mask], rtol=0, atol=1e-10)


def test_factory_keyword_arguments_reach_the_calculator():
    table = {**EMT_TABLE, "calculator": "ase.calculators.lj:LennardJones",
             "kwargs": {"sigma": 2.3, "epsilon": 0.4, "rc": 6.0}, "cutoff": 6.0,
             "receptive_field": 6.0}
    pot = make_potential(table)
    assert pot.calculator.parameters["sigma"] == 2.3
    assert pot.calculator.parameters["rc"] == 6.0


def test_mace_without_mace_torch_names_the_extra():
    try:
        import mace  # noqa: F401
        pytest.skip("mace-torch is installed here")
    except ImportError:
        pass
    with pytest.raises(MissingDependencyError, match=r"pip install 'mlmix\[mace\]'"):
        make_potential({"backend": "mace", "model": "Si_snap_mace"})


def test_every_mistake_of_a_table_in_one_message():
    with pytest.raises(ConfigurationError) as err:
        make_potential({"backend": "ase", "calculator": "emt", "kwargs": [1], "buffer": -1,
                        "cutoff": "5", "colour": "red"}, "potentials.expensive")
    text = str(err.value)
    for key in ("potentials.expensive.calculator", "potentials.expensive.kwargs",
                "potentials.expensive.buffer", "potentials.expensive.cutoff",
                "potentials.expensive.colour"):
        assert key in text, text


def test_backend_names_offered_when_unknown():
    with pytest.raises(ConfigurationError, match="sevennet") as err:
        make_potential({"backend": "sevenn", "buffer": 5.0})
    assert "mace" in str(err.value) and "'ase'" in str(err.value)
