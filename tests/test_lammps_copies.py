"""SW and Tersoff weight levels in one LAMMPS call, as type copies
(mlmix.potentials.lammps_copies): the file they write, agreement with the plugin's
levels (two id orders), finite differences without the plugin, retyping in place."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from conftest import si_vacancy
from mlmix import CalculationError, ConfigurationError
from mlmix.potentials import LammpsPotential
from mlmix.potentials.lammps_copies import MAX_TYPES, STYLES, copies_file, read_entries
from mlmix.potentials.lammps_plugin import plugin_status
from mlmix.potentials.weighted import quantise, stress_from_strain_derivative, sum_levels
from mlmix.testing import finite_difference_gradient, finite_difference_stress

MAKE = {"sw": LammpsPotential.sw, "tersoff": LammpsPotential.tersoff}


def blend_weights(atoms, centre, n_levels=8, radius=9.0, width=4.0):
    """1 near ``centre``, falling to 0 at ``radius`` (Å) over ``width``, quantised."""
    d = atoms.get_distances(centre, range(len(atoms)), mic=True)
    return quantise(np.clip((radius - d) / width, 0.0, 1.0), n_levels)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_copies_scale_the_pair_and_vertex_prefactors(style):
    from pathlib import Path

    from mlmix._lammps_runtime import potentials_dir

    entries = read_entries(Path(potentials_dir()) / f"Si.{style}", style)
    (si,) = entries.values()
    text = copies_file(style, entries, [("Si", 0.25), ("Si", 1.0)], ["H", "He"])
    rows = {tuple(line.split()[:3]): [float(v) for v in line.split()[3:]]
            for line in text.splitlines() if not line.startswith("#")}
    assert len(rows) == 8  # every ordered triplet of the two types
    scaling = STYLES[style]
    for (a, b, _), numbers in rows.items():
        q1, q2 = {"H": 0.25, "He": 1.0}[a], {"H": 0.25, "He": 1.0}[b]
        assert numbers[scaling.pair] == pytest.approx(si[scaling.pair] * (q1 + q2) / 2)
        assert numbers[scaling.vertex] == pytest.approx(si[scaling.vertex] * q1)
        rest = [k for k in range(scaling.n_parameters) if k not in (scaling.pair, scaling.vertex)]
        assert [numbers[k] for k in rest] == [si[k] for k in rest]


@pytest.mark.skipif(not plugin_status().available,
                    reason="mlmix's LAMMPS plugin cannot be built here")
@pytest.mark.parametrize("style", sorted(STYLES))
def test_one_call_equals_the_plugins_levels_of_two_id_orders(style):
    """Two independent routes: the type copies (one call, every atom a centre) and the
    plugin's levels (one truncated call per weight and id order), on a cluster around
    the weighted atoms, the whole cell (most weights 1) and scattered weights."""
    atoms, seeds = si_vacancy(repeat=5, rattle=0.05)
    w = blend_weights(atoms, int(seeds[0]), radius=6.0, width=3.0)
    scattered = np.random.default_rng(0).integers(0, 5, len(atoms)) / 4
    copies, levels = MAKE[style](f"Si.{style}", ["Si"]), MAKE[style](f"Si.{style}", ["Si"])
    for weights in (w, 1.0 - w, scattered):
        got = copies.evaluate_weighted(atoms, weights)
        ref = sum_levels(weights, lambda mask: levels._level(atoms, mask))
        assert got.n_levels == 1 < ref.n_levels
        assert got.energy == pytest.approx(ref.energy, abs=1e-9)
        assert_allclose(got.forces, ref.forces, atol=1e-12)
        assert_allclose(got.strain_derivative, ref.strain_derivative, atol=1e-10)
    assert copies._cluster_levels.cluster is not None  # w ran on the carved cluster


@pytest.mark.parametrize("style", sorted(STYLES))
def test_gradient_without_the_plugin(style):
    """Type copies need no plugin: with truncation off, energy mixing still gets the
    weighted energy with its exact forces and stress (finite differences)."""
    pot = MAKE[style](f"Si.{style}", ["Si"], truncation="off")
    assert pot.weighting == "levels" and pot.weighting_problem() is None
    atoms, seeds = si_vacancy(repeat=3, rattle=0.05)
    w = blend_weights(atoms, int(seeds[0]), n_levels=4)
    assert 0 < np.count_nonzero((w > 0) & (w < 1))
    result = pot.evaluate_weighted(atoms, w)

    def energy(a):
        return pot.evaluate_weighted(a, w).energy

    k = [int(np.flatnonzero((w > 0) & (w < 1))[0]), int(seeds[0]), 100]
    assert_allclose(finite_difference_gradient(energy, atoms, k, 1e-5), result.forces[k],
                    atol=2e-8)
    assert_allclose(finite_difference_stress(energy, atoms, 1e-5),
                    stress_from_strain_derivative(result.strain_derivative,
                                                  atoms.get_volume()), atol=1e-8)
    assert np.abs(result.forces[k] - pot.evaluate(atoms).forces[k]).max() > 0.05


def test_new_weights_retype_the_instance_in_place():
    """Weights that move between atoms keep the copies' instance (types scattered);
    only a new set of distinct weights writes a new file and a new instance."""
    pot = LammpsPotential.tersoff("Si.tersoff", ["Si"], truncation="off")
    atoms, seeds = si_vacancy(repeat=3, rattle=0.05)
    w = blend_weights(atoms, int(seeds[0]), n_levels=4)
    pot.evaluate_weighted(atoms, w)
    twin = pot._copies[1]._twin  # the whole-cell copies (215 atoms: no cluster)
    instances = twin.n_instances
    moved = np.roll(w, 17)  # the same values on other atoms
    got = pot.evaluate_weighted(atoms, moved)
    assert pot._copies[1]._twin is twin and twin.n_instances == instances
    fresh = LammpsPotential.tersoff("Si.tersoff", ["Si"], truncation="off")
    assert got.energy == pytest.approx(fresh.evaluate_weighted(atoms, moved).energy, abs=1e-9)
    assert_allclose(got.forces, fresh.evaluate_weighted(atoms, moved).forces, atol=1e-12)
    pot.evaluate_weighted(atoms, quantise(w, 2))  # other values: other copies
    assert pot._copies[1]._twin is not twin
    pot.close()
    assert not pot._copies[1]._scratch.exists  # the generated files are gone


def test_too_many_distinct_weights_and_bad_files_are_refused(tmp_path):
    pot = LammpsPotential.sw("Si.sw", ["Si"], truncation="off")
    atoms, _ = si_vacancy(repeat=2)
    many = np.linspace(0.0, 1.0, len(atoms))  # every atom its own weight
    assert len(atoms) > MAX_TYPES
    with pytest.raises(CalculationError, match=r"distinct \(element, weight\) pairs.*"
                                               r"n_levels <= 39"):
        pot.evaluate_weighted(atoms, many)
    bad = tmp_path / "short.sw"
    bad.write_text("Si Si Si 2.17 2.09 1.8 21.0 1.2 -0.333 7.05 0.602 4.0 0.0\n")
    with pytest.raises(ConfigurationError, match=r"short.sw: 13 words is not a whole "
                                                 r"number of sw entries \(3 elements \+ 11"):
        read_entries(bad, "sw")


@pytest.mark.skipif(not plugin_status().available,
                    reason="mlmix's LAMMPS plugin cannot be built here")
def test_two_elements_copy_every_element_weight_pair():
    """SiC Tersoff: one type per (element, weight), every triplet of them in the file,
    the plugin's levels to round-off."""
    from ase.build import bulk

    atoms = bulk("SiC", "zincblende", a=4.36, cubic=True).repeat(4)
    atoms.rattle(0.05, seed=1)
    w = np.random.default_rng(0).integers(0, 5, len(atoms)) / 4
    copies = LammpsPotential.tersoff("SiC.tersoff", ["Si", "C"])
    levels = LammpsPotential.tersoff("SiC.tersoff", ["Si", "C"])
    got = copies.evaluate_weighted(atoms, w)
    ref = sum_levels(w, lambda mask: levels._level(atoms, mask))
    assert len(copies._copies[1]._types) == 2 * 5
    assert got.energy == pytest.approx(ref.energy, abs=1e-9)
    assert_allclose(got.forces, ref.forces, atol=1e-12)
    assert_allclose(got.strain_derivative, ref.strain_derivative, atol=1e-10)
