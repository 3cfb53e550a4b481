"""The case studies studies/vacancy_neb.py and studies/bond_force.py.

Each study is run at its smoke size (``--quick``) into a temporary folder; the tests
check the physics of the JSON it writes (a symmetric hop has equal end energies, mixed
and all-expensive agree, a stretched bond pulls its atoms together), and the helpers
against brute-force references.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def load_study(name: str):
    """Import studies/<name>.py as a module (studies/ is not a package; its scripts
    import their shared studies/_common.py as a top-level module)."""
    if str(STUDIES) not in sys.path:
        sys.path.insert(0, str(STUDIES))
    spec = importlib.util.spec_from_file_location(f"study_{name}", STUDIES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def neb_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("vacancy_neb")
    result = load_study("vacancy_neb").main(["--quick", "--out", str(out)])
    return out, result


@pytest.fixture(scope="module")
def bond_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bond_force")
    result = load_study("bond_force").main(["--quick", "--out", str(out)])
    return out, result


@pytest.mark.slow
def test_vacancy_neb_quick_run_gives_matching_finite_barriers(neb_result):
    out, returned = neb_result
    result = json.loads((out / "vacancy_neb.json").read_text())
    assert result == json.loads(json.dumps(returned))
    assert (out / "vacancy_neb.png").stat().st_size > 0
    assert result["mlmix_version"] and result["quick"] is True
    assert {"repeat", "n_images", "fmax_eV_per_A", "r_core_A", "r_blend_A",
            "expensive", "cheap"} <= set(result["setup"])
    ref = result["bands"]["expensive"]
    fmax = result["setup"]["fmax_eV_per_A"]
    # Si vacancy migration with the quadratic SNAP: a few tenths of an eV.
    assert 0.1 < result["barrier_expensive_eV"] < 0.6
    for band in [ref, *result["bands"]["mixed"]]:
        energies = np.array(band["energies_eV"])
        assert np.isfinite(energies).all() and energies[0] == 0.0
        assert band["neb_converged"] and band["max_force_residual_eV_per_A"] <= fmax
        # The hop is symmetric: both relaxed endpoints are the same vacancy.
        assert abs(band["final_minus_initial_eV"]) < 2e-3
        assert band["barrier_eV"] == pytest.approx(energies.max())
        assert np.all(np.diff(band["path_A"]) > 0)
        assert band["neb_seconds"] > 0 and band["endpoint_seconds"] > 0
    for band, diff in zip(result["bands"]["mixed"], result["barrier_difference_meV"]):
        assert math.isfinite(diff)
        assert diff == pytest.approx(1e3 * abs(band["barrier_eV"] - ref["barrier_eV"]))
        # 63-atom smoke cell with the smallest region: agreement to ~10 meV (the full
        # study shows the 1 meV target reached as the core grows).
        assert diff < 15.0
        assert band["region_counts_middle_image"]["cheap"] > 0


@pytest.mark.slow
def test_bond_force_quick_run_mixed_close_to_all_expensive(bond_result):
    out, returned = bond_result
    result = json.loads((out / "bond_force.json").read_text())
    assert result == json.loads(json.dumps(returned))
    assert (out / "bond_force.png").stat().st_size > 0
    assert {"repeat", "r_core_A", "temperature_K", "timestep_fs", "seed", "r_blend_A",
            "production_steps", "expensive", "cheap"} <= set(result["setup"])
    ref = result["results"]["expensive"]
    mean = ref["mean_force_eV_per_A"]
    # A bond stretched by 25 % pulls its atoms together, with a few eV/Å.
    assert 1.0 < mean < 5.0 and math.isfinite(ref["stderr_eV_per_A"])
    assert result["bond_length_A"] == pytest.approx(1.25 * result["equilibrium_bond_length_A"])
    rows = result["results"]["linear_snap"]
    assert [r["r_core_A"] for r in rows] == list(result["setup"]["r_core_A"])
    for row in rows + result["results"]["tersoff"]:
        assert math.isfinite(row["mean_force_eV_per_A"]) and row["stderr_eV_per_A"] >= 0
        assert row["region_counts_last_step"]["core"] >= 2  # the held atoms
        assert row["mean_temperature_K"] > 0
    for row in rows:
        # distilled cheap potential: within 0.1 eV/Å (a few %) of all-expensive
        assert row["mean_force_eV_per_A"] == pytest.approx(mean, abs=0.1)


def test_bond_force_is_the_derivative_of_the_energy_along_the_bond():
    """(F_a - F_b).u / 2 equals dE/dd for a symmetric stretch (central differences
    of the expensive energy), including a bond that crosses the cell boundary."""
    from mlmix.potentials import LammpsPotential

    study = load_study("bond_force")
    expensive = LammpsPotential.snap(study.EXPENSIVE_FILE, ["Si"])
    atoms, ia, ib = study.stretched_bond(study.lattice_parameter(), 2, 0.2)
    for shift in (np.zeros(3), np.array([4.5, 4.5, 4.5])):  # the second wraps the bond
        at = atoms.copy()
        at.positions += shift
        at.wrap()
        ends = study.bond_ends(at, (ia, ib))
        u = (ends[1] - ends[0]) / np.linalg.norm(ends[1] - ends[0])
        f = study.bond_force(expensive.evaluate(at).forces[[ia, ib]], ends)
        h = 1e-4

        def energy(dd, at=at, u=u):
            moved = at.copy()
            moved.positions[ia] -= 0.5 * dd * u
            moved.positions[ib] += 0.5 * dd * u
            return expensive.evaluate(moved).energies.sum()

        assert f == pytest.approx((energy(h) - energy(-h)) / (2 * h), abs=1e-5)
        assert f > 0  # stretched: the bond pulls together
    expensive.close()


def test_block_mean_matches_the_definition():
    study = load_study("bond_force")
    x = np.random.default_rng(0).normal(size=103)
    mean, err, blocks = study.block_mean(x, 4)
    manual = np.array([x[k * 25:(k + 1) * 25].mean() for k in range(4)])
    np.testing.assert_allclose(blocks, manual)
    assert mean == pytest.approx(manual.mean())
    assert err == pytest.approx(manual.std(ddof=1) / 2.0)


def test_neb_path_coordinate_uses_the_minimum_image():
    from ase.build import bulk

    study = load_study("vacancy_neb")
    a = bulk("Si", "diamond", a=5.43, cubic=True)
    b = a.copy()
    b.positions[0] += [0.3, 0.0, 0.4]
    c = b.copy()
    c.positions[0] -= a.cell[0]  # the same configuration one period away
    np.testing.assert_allclose(study.path_coordinate([a, b, c]), [0.0, 0.5, 0.5], atol=1e-12)


def test_hop_endpoints_move_one_first_neighbour_into_the_vacancy():
    study = load_study("vacancy_neb")
    a = 5.43
    initial, final, hopper, seeds = study.hop_endpoints(a, 2)
    moved = np.flatnonzero(np.linalg.norm(final.positions - initial.positions, axis=1) > 0)
    assert moved.tolist() == [hopper]
    hop = study.path_coordinate([initial, final])[1]
    assert hop == pytest.approx(np.sqrt(3) * a / 4)
    # seeds: the hopper and the first neighbours of both vacancy sites (3 + 3 + 1)
    assert hopper in seeds and len(seeds) == 7
