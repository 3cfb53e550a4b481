"""MacePotential with the MACE mlmix ships (Si, distilled from the quadratic SNAP).

mace-torch cannot share an environment with sevenn (e3nn 0.4.4 against >= 0.5), so
these tests run in the second environment that tests/make_mace_env.sh makes;
tests/test_mace_env.py runs this file there. In the main environment it is skipped.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase.build import bulk
from numpy.testing import assert_allclose

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # e3nn's torch.load warning at import
    pytest.importorskip("mace", reason="mace-torch is not installed here: "
                        "tests/test_mace_env.py runs this file in .venv-mace")

from mlmix import ConfigurationError, IndexSeeds, MixedCalculator, RegionSpec, RegionTracker
from mlmix.neighbours import dilate
from mlmix.potentials.factory import make_potential
from mlmix.potentials.lammps import LammpsPotential
from mlmix.potentials.mace import MacePotential, shipped_models

MODEL = "Si_snap_mace"


@pytest.fixture(scope="module")
def mace():
    return MacePotential(MODEL)


def _si(repeat, seed=1, amp=0.05, vacancy=True):
    atoms = bulk("Si", "diamond", 5.43, cubic=True) * (repeat, repeat, repeat)
    if vacancy:
        del atoms[0]
    atoms.rattle(amp, seed=seed)
    return atoms


def test_the_model_is_shipped_and_describes_si(mace):
    assert MODEL in shipped_models()
    assert mace.species == {"Si"}
    assert mace.cutoff > 0 and mace.receptive_field == mace.cutoff * mace.n_interactions
    assert not mace.is_local


def test_per_atom_energies_sum_to_the_total_of_maces_own_calculator(mace):
    from mace.calculators import MACECalculator

    atoms = _si(2)
    ev = mace.evaluate(atoms)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        theirs = MACECalculator(model_paths=str(mace.path), device="cpu",
                                default_dtype="float64")
    ref = atoms.copy()
    ref.calc = theirs
    assert_allclose(ev.energies.sum(), ref.get_potential_energy(), rtol=0, atol=1e-8)
    assert_allclose(ev.forces, ref.get_forces(), rtol=0, atol=1e-8)
    # and against SNAP, which it was trained on: a few tens of meV/Å
    with LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic", ["Si"]) as snap:
        err = np.abs(ev.forces - snap.evaluate(atoms).forces).max()
    assert 1e-3 < err < 0.5


def test_forces_are_minus_the_gradient_of_the_masked_energy_sum(mace):
    """F_k = -d(sum_{i in M} E_i)/dx_k by central differences, for atoms of M, halo
    atoms outside M, and an atom beyond the halo (zero)."""
    atoms = _si(3, vacancy=False)
    mask = np.zeros(len(atoms), bool)
    mask[:6] = True
    ev = mace.evaluate(atoms, mask)
    d = atoms.get_distances(0, range(len(atoms)), mic=True)
    halo = int(np.flatnonzero(~mask & (d < 4.0))[0])
    h = 1e-4
    for j in (0, 3, halo):
        for k in range(3):
            e = []
            for s in (h, -h):
                moved = atoms.copy()
                moved.positions[j, k] += s
                e.append(np.nansum(mace.evaluate(moved, mask).energies))
            assert_allclose(ev.forces[j, k], -(e[0] - e[1]) / (2 * h), rtol=0, atol=2e-6)
    assert np.abs(ev.forces[halo]).max() > 1e-3


def test_receptive_field_is_where_a_per_atom_energy_stops_changing(mace):
    """In the whole periodic system, E_0 changes when an atom 1.5-2.5 Å inside
    r_max * num_interactions of atom 0 moves (two messages), and not at all when one
    just beyond it moves."""
    atoms = _si(5, vacancy=False, amp=0.02)
    d = atoms.get_distances(0, range(len(atoms)), mic=True)
    rf = mace.receptive_field
    inside = int(np.flatnonzero((d > rf - 2.5) & (d < rf - 1.5))[0])
    beyond = int(np.argmin(np.where(d > rf + 0.3, d, np.inf)))
    e0 = mace.evaluate(atoms).energies[0]
    for j, changes in ((inside, True), (beyond, False)):
        moved = atoms.copy()
        moved.positions[j] += [0.05, -0.03, 0.02]
        delta = abs(mace.evaluate(moved).energies[0] - e0)
        assert (delta > 1e-9) if changes else (delta < 1e-12), (j, d[j], delta)


def test_masked_evaluation_equals_the_whole_system_on_the_interior(mace):
    atoms = _si(5)
    full = mace.evaluate(atoms)
    seed = np.zeros(len(atoms), bool)
    seed[7] = True
    interior = dilate(atoms.positions, atoms.cell.array, atoms.pbc, seed, 2.5)
    mask = dilate(atoms.positions, atoms.cell.array, atoms.pbc, interior, mace.receptive_field)
    ev = mace.evaluate(atoms, mask)
    assert ev.exact and mask.sum() < ev.n_evaluated < len(atoms)
    assert mace.last_edges > 0
    assert_allclose(ev.energies[mask], full.energies[mask], rtol=0, atol=1e-10)
    assert_allclose(ev.forces[interior], full.forces[interior], rtol=0, atol=1e-10)
    assert np.isnan(ev.energies[~mask]).all()


def test_the_cluster_graph_is_reused_within_the_skin_and_stays_exact(mace):
    """A skin of 1 Å against carving anew at every call (skin 0), along small moves
    (graph kept), an atom wrapped by a lattice vector (kept), a move past skin/2, a
    changed mask and a changed cell (each rebuilt): forces and energies agree to
    round-off, and the reused graph evaluates the same atoms and edges."""
    fresh = MacePotential(MODEL, skin=0.0)
    reused = MacePotential(MODEL, skin=1.0)
    atoms = _si(5)
    mask = np.zeros(len(atoms), bool)
    mask[:10] = True
    rng = np.random.default_rng(5)
    builds = []

    def check(a, m):
        ev_f, ev_r = fresh.evaluate(a, m), reused.evaluate(a, m)
        assert np.abs(ev_r.forces).max() > 0.1
        assert_allclose(ev_r.forces, ev_f.forces, rtol=0, atol=1e-10)
        assert_allclose(ev_r.energies[m], ev_f.energies[m], rtol=0, atol=1e-10)
        assert ev_r.n_evaluated == ev_f.n_evaluated and reused.last_edges == fresh.last_edges
        builds.append(reused.graph_builds)

    check(atoms, mask)
    for _ in range(3):
        atoms.positions += rng.normal(0.0, 0.02, atoms.positions.shape)
        check(atoms, mask)
    atoms.positions[40] += atoms.cell[0]  # the same structure
    check(atoms, mask)
    assert builds == [1] * 5
    atoms.positions[200] += [0.6, 0.0, 0.0]  # past skin/2
    check(atoms, mask)
    mask[10] = True
    check(atoms, mask)
    atoms.set_cell(atoms.cell.array * 1.001, scale_atoms=True)
    check(atoms, mask)
    assert builds[5:] == [2, 3, 4]
    assert fresh.graph_builds == len(builds)
    with pytest.raises(ConfigurationError, match="skin"):
        MacePotential(MODEL, skin=-1.0)


def _mixed(mace, atoms, r_buff, **kw):
    cheap = LammpsPotential.tersoff("Si.tersoff", ["Si"])
    spec = RegionSpec(r_core=2.5, r_blend=0.0, r_buff=r_buff)
    calc = MixedCalculator(mace, cheap, RegionTracker(spec, IndexSeeds([7])), **kw)
    a = atoms.copy()
    a.calc = calc
    forces = a.get_forces()
    return forces, calc.regions.p, calc.history[-1]


def test_mixed_forces_are_exact_at_r_buff_of_one_receptive_field_and_the_error_falls_below(
        mace):
    atoms = _si(5)
    full = mace.evaluate(atoms).forces
    forces, p, report = _mixed(mace, atoms, mace.receptive_field)
    core = p == 1
    assert core.sum() >= 4 and report.counts["expensive"] < len(atoms)
    assert_allclose(forces[core], full[core], rtol=0, atol=1e-8)
    with pytest.raises(ConfigurationError, match=r"r_buff = 2.0 Å is below the receptive "
                       r"field .* allow_approximate"):
        _mixed(mace, atoms, 2.0)
    errors = [np.abs(_mixed(mace, atoms, r, allow_approximate=True)[0][core]
                     - full[core]).max() for r in (1.0, 3.0, 6.0)]
    assert errors[0] > errors[1] > errors[2] > 1e-8, errors


def test_from_a_toml_table_and_bad_input():
    pot = make_potential({"backend": "mace", "model": MODEL, "dtype": "float64"})
    assert isinstance(pot, MacePotential) and pot.device == "cpu" and pot.skin == 1.0
    assert make_potential({"backend": "mace", "model": MODEL, "skin": 0.5}).skin == 0.5
    with pytest.raises(ConfigurationError) as err:
        make_potential({"backend": "mace", "dtype": "float16", "devise": "cpu",
                        "skin": -0.1}, "expensive")
    text = str(err.value)
    assert "expensive.model" in text and "float16" in text and "devise" in text
    assert "expensive.skin" in text
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigurationError, match="torch sees no CUDA GPU.*device = 'cpu'"):
            make_potential({"backend": "mace", "model": MODEL, "device": "cuda"})


def test_not_a_mace_model_is_refused(tmp_path):
    import torch

    junk = tmp_path / "junk.model"
    junk.write_text("not a model")
    with pytest.raises(ConfigurationError, match="not a MACE model torch can load"):
        MacePotential(junk)
    with pytest.raises(ConfigurationError, match="is not a MACE model .* backend = 'ase'"):
        MacePotential(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigurationError, match="not found"):
        MacePotential("no_such_model")


def test_lammps_engine_with_mace_expensive_is_exact_on_weighted_atoms(mace):
    """The LAMMPS engine hands MACE a cluster carved one receptive field (plus skin)
    beyond the expensive set (here, in a 27 Å cell, that is every atom): forces on
    p = 1 atoms are the whole-system MACE forces."""
    from mlmix.engines.lammps import LammpsEngine

    atoms = _si(5)
    cheap = LammpsPotential.tersoff("Si.tersoff", ["Si"])
    spec = RegionSpec(r_core=2.5, r_blend=0.0, r_buff=mace.receptive_field)
    frames = []
    with LammpsEngine(atoms, mace, cheap, spec, IndexSeeds([7]), nevery=0) as engine:
        engine.run(0, callback=lambda a, e: frames.append(a))
        report = engine.history[-1]
    got = frames[-1]
    full = got.arrays["mlmix_p"] == 1
    assert full.sum() >= 4 and report.counts["expensive"] < report.n_cluster <= len(atoms)
    assert_allclose(got.get_forces()[full], mace.evaluate(atoms).forces[full], rtol=0, atol=1e-8)


def test_stress_is_the_strain_derivative_of_the_energy(mace):
    from mlmix.fitting.data import apply_strain, total_energy, voigt_to_tensor

    atoms = apply_strain(_si(1, vacancy=False),
                         voigt_to_tensor([0.01, -0.005, 0.003, 0.004, -0.002, 0.006]))
    stress = mace.stress(atoms)
    fd = np.zeros(6)
    for k in range(6):
        e = np.zeros(6)
        e[k] = 1e-5
        up = total_energy(mace, apply_strain(atoms, voigt_to_tensor(e)))
        down = total_energy(mace, apply_strain(atoms, voigt_to_tensor(-e)))
        fd[k] = (up - down) / 2e-5 / atoms.get_volume()
    assert np.abs(stress).max() > 1e-3
    assert_allclose(stress, fd, rtol=0, atol=1e-6)


def _fd_energy_gradient(energy, atoms, k, h):
    out = []
    for d in range(3):
        e = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[k, d] += sign * h
            e.append(energy(moved))
        out.append(-(e[0] - e[1]) / (2 * h))
    return np.array(out)


def test_weighted_energy_forces_and_stress_by_autograd(mace):
    """Energy mixing's route: -d(sum_i w_i E_i)/dx and dE_w/d(eps) with exact weights,
    on the whole periodic cell and on a carved finite cluster."""
    from mlmix.potentials.weighted import stress_from_strain_derivative

    atoms = _si(2)
    n = len(atoms)
    w = np.random.default_rng(0).uniform(0, 1, n)
    ev = mace.evaluate_weighted(atoms, w)
    assert ev.n_levels == 1 and ev.n_evaluated == n
    energy = lambda a: mace.evaluate_weighted(a, w).energy  # noqa: E731
    for k in (0, 9):
        assert_allclose(_fd_energy_gradient(energy, atoms, k, 1e-4), ev.forces[k], atol=1e-7)
    v = atoms.get_volume()
    ones = mace.evaluate_weighted(atoms, np.ones(n))
    assert_allclose(stress_from_strain_derivative(ones.strain_derivative, v),
                    mace.stress(atoms), atol=1e-10)
    strained = []
    for sign in (1, -1):
        eps = np.eye(3)
        eps[0, 1] = eps[1, 0] = sign * 0.5e-4
        a = atoms.copy()
        a.set_cell(atoms.cell.array @ eps, scale_atoms=True)
        strained.append(energy(a))
    xy = (strained[0] - strained[1]) / 2e-4 / v  # each of eps_xy, eps_yx by 0.5e-4
    assert xy == pytest.approx(stress_from_strain_derivative(ev.strain_derivative, v)[5], abs=1e-8)

    # weights on a few atoms of a cell wider than two receptive fields: a finite cluster
    big = _si(5, vacancy=False, seed=3)
    w = np.zeros(len(big))
    w[:4] = [1.0, 0.5, 0.25, 1.0]
    part = mace.evaluate_weighted(big, w)
    assert part.n_evaluated < len(big)
    whole_e, whole_f, whole_s = mace._pass(mace._graph(big), w, strain=True)
    assert part.energy == pytest.approx(float(w @ whole_e), abs=1e-9)
    assert_allclose(part.forces, whole_f, atol=1e-9)
    assert_allclose(part.strain_derivative, whole_s, atol=1e-8)


def test_energy_mixing_with_mace_expensive_conserves_nve(mace):
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    atoms = _si(3, amp=0.0)
    from mlmix.mixing import ShallowCoreWarning

    cheap = LammpsPotential.snap("Si_Zuo_JPCA2020", ["Si"])
    with pytest.warns(ShallowCoreWarning, match="deeper than 10"):
        calc = MixedCalculator(mace, cheap,
                               RegionTracker(RegionSpec(5.5, 0.0, 0.0), IndexSeeds([0])),
                               mixing="energy")
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0),
                                 force_temp=True)
    atoms.calc = calc
    energies = [atoms.get_potential_energy() + atoms.get_kinetic_energy()]
    md = VelocityVerlet(atoms, 1.0 * units.fs)
    for _ in range(6):
        md.run(5)
        energies.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
    assert np.ptp(energies) < 0.02  # 215 atoms, 300 K, 30 fs
    assert np.isfinite(atoms.get_stress()).all()
