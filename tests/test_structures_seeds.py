"""Centrosymmetry classifier and the bcc screw-dislocation builder."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from ase.build import bulk

from mlmix.errors import ConfigurationError
from mlmix.seeds import centrosymmetry, min_matching
from mlmix.structures import bcc_screw_dislocation, cubic_supercell, remove_atom

A_W = 3.18  # Å
W_CONSTANTS = (517.7, 194.5, 144.3)  # GPa, C11 C12 C44 of W_2940_2017_2


def brute_force_csp(atoms, index: int, n: int) -> float:
    """Centrosymmetry of one atom: n nearest by minimum-image distance, every pairing."""
    d = atoms.get_distances(index, range(len(atoms)), mic=True, vector=True)
    r = np.linalg.norm(d, axis=1)
    r[index] = np.inf
    vec = d[np.argsort(r)[:n]]

    def best(rest):
        if not rest:
            return 0.0
        first, others = rest[0], rest[1:]
        return min(np.sum((vec[first] + vec[k]) ** 2) + best([m for m in others if m != k])
                   for k in others)

    return best(list(range(n)))


def all_pairings(items: tuple[int, ...]):
    """Every way to split ``items`` (even length) into unordered pairs."""
    if not items:
        yield ()
        return
    first, rest = items[0], items[1:]
    for k, partner in enumerate(rest):
        for tail in all_pairings(rest[:k] + rest[k + 1:]):
            yield ((first, partner), *tail)


def test_all_pairings_are_every_pairing_once():
    """The enumeration against the set of pairings reached by every permutation."""
    n = 6
    reached = {tuple(sorted(tuple(sorted(perm[k:k + 2])) for k in range(0, n, 2)))
               for perm in itertools.permutations(range(n))}
    listed = list(all_pairings(tuple(range(n))))
    assert len(listed) == len(reached) == 15 and set(listed) == reached


@pytest.mark.parametrize("n", [2, 4, 6, 8, 10, 12])
def test_min_matching_is_the_minimum_over_every_pairing(n):
    """Against brute force over every pairing, random costs (12: fcc's neighbours)."""
    rng = np.random.default_rng(n)
    cost = rng.uniform(0.0, 1.0, (4, n, n))
    cost = cost + cost.transpose(0, 2, 1)
    pairings = np.array(list(all_pairings(tuple(range(n)))))  # (n_pairings, n / 2, 2)
    assert len(pairings) == int(np.prod(np.arange(n - 1, 0, -2)))
    brute = np.array([c[pairings[..., 0], pairings[..., 1]].sum(axis=1).min() for c in cost])
    np.testing.assert_allclose(min_matching(cost), brute, rtol=1e-14, atol=0)


def test_centrosymmetry_zero_in_perfect_and_affinely_strained_crystals():
    w = cubic_supercell("W", "bcc", A_W, 3)
    np.testing.assert_allclose(centrosymmetry(8, 3.6)(w), 0.0, atol=1e-20)
    strained = w.copy()
    strain = np.array([[1.01, 0.02, 0.0], [0.0, 0.99, 0.015], [0.0, 0.0, 1.0]])
    strained.set_cell(w.cell.array @ strain, scale_atoms=True)
    np.testing.assert_allclose(centrosymmetry(8, 3.6)(strained), 0.0, atol=1e-20)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    np.testing.assert_allclose(centrosymmetry(12, 3.0)(cu), 0.0, atol=1e-20)


def test_centrosymmetry_at_a_vacancy_is_the_unpaired_bond():
    w = cubic_supercell("W", "bcc", A_W, 4)
    atoms, neighbours = remove_atom(w, 0, 3.0)
    csp = centrosymmetry(8, 3.6)(atoms)
    # each first neighbour lost the partner of the bond pointing away from the vacancy
    np.testing.assert_allclose(csp[neighbours], 3 * A_W**2 / 4, rtol=1e-12)
    np.testing.assert_allclose(np.delete(csp, neighbours), 0.0, atol=1e-20)


def test_centrosymmetry_large_at_a_surface_zero_inside():
    w = cubic_supercell("W", "bcc", A_W, 4)
    w.pbc = (True, True, False)
    csp = centrosymmetry(8, 3.6)(w)
    z = w.positions[:, 2]
    surface = (z < 0.1) | (z > z.max() - 0.1)
    assert csp[surface].min() > 10.0  # Å^2: half the neighbours are missing
    np.testing.assert_allclose(csp[(z > 2.0) & (z < z.max() - 2.0)], 0.0, atol=1e-20)


def test_centrosymmetry_matches_brute_force_on_a_disordered_crystal():
    rng = np.random.default_rng(3)
    w = cubic_supercell("W", "bcc", A_W, 3)
    w.positions += rng.normal(0.0, 0.12, w.positions.shape)
    csp = centrosymmetry(8, 3.6)(w)
    for i in rng.choice(len(w), 8, replace=False):
        np.testing.assert_allclose(csp[i], brute_force_csp(w, i, 8), rtol=1e-10)
    assert csp.max() > 0.1  # the check is not between zeros


@pytest.mark.parametrize("kwargs, match", [
    ({"n_neighbours": 7}, "even integer"),
    ({"n_neighbours": 14}, "even integer"),
    ({"n_neighbours": 8.0}, "even integer"),
    ({"r_cut": 0.0}, "r_cut"),
    ({"r_cut": float("nan")}, "r_cut"),
])
def test_centrosymmetry_rejects_bad_input(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        centrosymmetry(**kwargs)


def screw(radius=14.0, n_burgers=2, fix_width=5.0):
    return bcc_screw_dislocation("W", A_W, *W_CONSTANTS, radius, n_burgers, fix_width)


def test_screw_dislocation_geometry_and_burgers_vector():
    from matscipy.dislocation import BCCScrew111Dislocation

    atoms, fixed = screw(n_burgers=3)
    b = A_W * np.sqrt(3) / 2
    np.testing.assert_allclose(atoms.info["burgers_vector"], [0, 0, b], rtol=1e-12)
    np.testing.assert_allclose(atoms.cell.lengths()[2], 3 * b, rtol=1e-12)
    assert tuple(atoms.pbc) == (False, False, True)
    core = atoms.info["core_position"]
    r = np.hypot(*(atoms.positions[:, :2] - core[:2]).T)
    np.testing.assert_array_equal(fixed, r >= 14.0 - 5.0 - 1e-6)
    assert r.max() < 14.0 + 1e-6
    # Burgers circuit on the displacement field: around a loop of atoms enclosing the
    # line, the z displacement gains exactly b (the bulk reference has the same order)
    ref, _ = BCCScrew111Dislocation(A_W, *W_CONSTANTS, symbol="W").build_cylinder(
        14.0, fix_width=5.0, method="adsl", verbose=False)
    n = len(ref)
    u = atoms.positions[:n, 2] - ref.positions[:, 2]
    ring = (r[:n] > 5.0) & (r[:n] < 9.0)
    theta = np.arctan2(*(atoms.positions[:n, :2] - core[:2]).T[::-1])
    order = np.flatnonzero(ring)[np.argsort(theta[ring])]
    steps = np.diff(np.append(u[order], u[order[0]]))
    # each step between angular neighbours is small; the one across the cut of the
    # field is small only up to a lattice translation b along z
    steps = (steps + b / 2) % b - b / 2
    assert np.abs(steps).max() < 0.3 * b
    np.testing.assert_allclose(steps.sum(), b, rtol=1e-9)  # right-handed about +z


def test_screw_dislocation_core_is_where_centrosymmetry_is_large():
    atoms, fixed = screw(n_burgers=2)
    csp = centrosymmetry(8, 3.6)(atoms)
    csp[fixed] = 0.0  # the outer surface
    core = atoms.info["core_position"]
    top = np.argsort(-csp)[:6]  # three columns around the line, two atoms each
    r = np.hypot(*(atoms.positions[top, :2] - core[:2]).T)
    assert r.max() < 2.0
    np.testing.assert_allclose(atoms.positions[top, :2].mean(axis=0), core[:2], atol=0.1)
    assert np.delete(csp, top).max() < 0.3 * csp[top].min()


@pytest.mark.parametrize("kwargs, match", [
    ({"radius": 5.0, "fix_width": 6.0}, "fix_width < radius"),
    ({"n_burgers": 0}, "n_burgers"),
])
def test_screw_dislocation_rejects_bad_input(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        screw(**kwargs)


def test_screw_dislocation_rejects_unstable_elastic_constants():
    with pytest.raises(ConfigurationError, match="C11 > |C12|"):
        bcc_screw_dislocation("W", A_W, 100.0, 150.0, 50.0, 14.0)
