"""The cheap model's own uncertainty: per-atom rows, maxvol active sets, grades, the
file ``mlmix fit`` writes, and the ``uncertainty`` seed classifier (Python and TOML)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.geometry import get_distances
from ase.io import read

from mlmix.errors import ConfigurationError
from mlmix.fitting.ace_linear import AceLinearModel
from mlmix.fitting.snap import SnapModel
from mlmix.fitting.uf3 import Uf3Model
from mlmix.fitting.uncertainty import (
    SUFFIX,
    TOLERANCE,
    Uncertainty,
    build_uncertainty,
    file_beside,
    maxvol,
)
from mlmix.mixing import MixedCalculator
from mlmix.potentials.lammps import LammpsPotential
from mlmix.regions import RegionSpec, RegionTracker
from mlmix.runconfig import build_seeds, build_structure, parse_run_config
from mlmix.seeds import uncertainty, uncertainty_seeds
from mlmix.structures import central_atom

A_W = 3.1805  # Å, bcc W lattice parameter of W_2940_2017_2
UF3 = {"family": "uf3", "r2": 4.8, "n2": 10, "r2_min": 2.0, "r3": 3.5, "n3": 4}


def thermal_frames(n: int, seed: int, sigma: float = 0.05, repeat: int = 3) -> list[Atoms]:
    """bcc W cells with Gaussian displacements (sigma Å) and small random strains."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        at = bulk("W", "bcc", a=A_W, cubic=True).repeat(repeat)
        strain = np.eye(3) + rng.uniform(-0.01, 0.01, (3, 3))
        at.set_cell(at.cell.array @ strain, scale_atoms=True)
        at.positions += rng.normal(0, sigma, at.positions.shape)
        frames.append(at)
    return frames


def uf3_model() -> Uf3Model:
    return Uf3Model(["W"], **{k: v for k, v in UF3.items() if k != "family"})


@pytest.fixture(scope="module")
def w_uf3(tmp_path_factory):
    """A UF3 featuriser's uncertainty over 30 thermal W frames (6 more held out), with
    the potential file (random small coefficients) it is tied to."""
    directory = tmp_path_factory.mktemp("w_uf3")
    model = uf3_model()
    (potential,) = model.write(np.random.default_rng(0).normal(0, 1e-3, model.n_coefficients),
                               directory, "W_test")
    unc = build_uncertainty(model, thermal_frames(30, 1), thermal_frames(6, 2),
                            model_spec=UF3, potential_files=[potential])
    unc.save(file_beside(potential))
    return unc, potential


def vacancy_cell(repeat: int = 4) -> tuple[Atoms, np.ndarray]:
    """A bcc W cell without atom 0, and each atom's distance (Å) to the vacant site."""
    at = bulk("W", "bcc", a=A_W, cubic=True).repeat(repeat)
    site = at.positions[0].copy()
    del at[0]
    d = get_distances(at.positions, site, cell=at.cell, pbc=True)[1][:, 0]
    return at, d


# ------------------------------------------------------------------------- maxvol


def test_maxvol_is_a_local_maximum_of_the_volume():
    rows = np.random.default_rng(3).normal(size=(14, 3))
    idx = maxvol(rows)
    best = abs(np.linalg.det(rows[idx]))
    # No single swap (checked by brute force, determinant by determinant) gains more
    # than the tolerance: the defining property of maxvol's result.
    for i, j in itertools.product(range(len(rows)), range(3)):
        trial = idx.copy()
        trial[j] = i
        assert abs(np.linalg.det(rows[trial])) <= TOLERANCE * best + 1e-12
    assert np.abs(rows @ np.linalg.inv(rows[idx])).max() <= TOLERANCE + 1e-12


def test_maxvol_refuses_too_few_or_dependent_rows():
    with pytest.raises(ConfigurationError, match="at least as many rows"):
        maxvol(np.ones((2, 3)))
    with pytest.raises(ConfigurationError, match="rank deficient"):
        maxvol(np.ones((5, 2)))


# ----------------------------------------------------------------- per-atom rows


@pytest.mark.parametrize("family", ["snap", "uf3"])
def test_per_atom_rows_are_the_lammps_per_atom_energies(family, tmp_path):
    model = SnapModel(["W"], twojmax=4) if family == "snap" else uf3_model()
    (at,) = thermal_frames(1, 5, sigma=0.1)
    c = np.random.default_rng(1).normal(0, 0.01, model.n_coefficients)
    rows = model.per_atom_rows(at)
    np.testing.assert_allclose(rows.sum(axis=0), model.design_matrix([at], False).energy[0],
                               atol=1e-10)
    with model.potential(c, tmp_path, "x") as pot:
        energies = pot.evaluate(at).energies
    one_body = model.reference_energy(c, at) / len(at) if family == "uf3" else 0.0
    np.testing.assert_allclose(rows @ c - one_body, energies, atol=1e-10)


def test_ace_per_atom_rows_are_the_python_ace_per_atom_energies(tmp_path):
    model = AceLinearModel(["W"], cutoff=5.0, nradmax_by_orders=(4, 2), lmax_by_orders=(0, 2))
    (at,) = thermal_frames(1, 6, sigma=0.1, repeat=2)
    c = np.random.default_rng(2).normal(0, 0.01, model.n_coefficients)
    rows = model.per_atom_rows(at)
    np.testing.assert_allclose(rows.sum(axis=0), model.design_matrix([at], False).energy[0],
                               atol=1e-10)
    with model.potential(c, tmp_path, "x") as pot:
        np.testing.assert_allclose(rows @ c, pot.evaluate(at).energies, atol=1e-8)


# ------------------------------------------------------------------------ grades


def test_training_environments_are_within_the_threshold(w_uf3):
    unc, _ = w_uf3
    grades = np.concatenate([unc.grade(a) for a in thermal_frames(30, 1)])
    assert grades.max() <= TOLERANCE <= unc.threshold
    assert unc.species["W"].n_training == 30 * 54
    assert unc.species["W"].training_max == pytest.approx(grades.max())
    held = np.concatenate([unc.grade(a) for a in thermal_frames(6, 2)])
    assert unc.heldout["n_atoms"] == held.size
    assert unc.threshold == pytest.approx(max(TOLERANCE, np.percentile(held, 99.9)))


def test_distorted_environments_exceed_the_threshold(w_uf3):
    unc, _ = w_uf3
    at, d = vacancy_cell()
    grades = unc.grade(at)
    near, far = d < 3.3, d > 4.9  # first two shells; beyond the cutoff
    assert near.sum() == 14
    assert grades[near].min() > 10 * unc.threshold
    assert grades[far].max() < unc.threshold  # the perfect lattice is interpolation
    squeezed = bulk("W", "bcc", a=0.85 * A_W, cubic=True).repeat(3)
    assert unc.grade(squeezed).min() > unc.threshold


def test_a_foreign_species_environment_exceeds_the_threshold():
    model = SnapModel(["W", "He"], twojmax=4)
    unc = build_uncertainty(model, thermal_frames(8, 1), thermal_frames(2, 2),
                            model_spec={"family": "snap", "twojmax": 4})
    assert set(unc.species) == {"W"}  # no training atom was He
    at = bulk("W", "bcc", a=A_W, cubic=True).repeat(4)
    at += Atoms("He", positions=[[A_W / 2, A_W / 4, 0.0]])  # a tetrahedral site
    grades = unc.grade(at)
    d = at.get_distances(len(at) - 1, range(len(at) - 1), mic=True)
    assert np.isinf(grades[-1])
    assert grades[:-1][d < 2.5].min() > 10 * unc.threshold
    assert grades[:-1][d > 5.0].max() < unc.threshold
    with pytest.raises(ConfigurationError, match="describes"):
        unc.grade(bulk("Si", "diamond", a=5.43))


def test_the_file_round_trips(w_uf3, tmp_path):
    unc, potential = w_uf3
    path = file_beside(potential)
    assert path.name == "W_test" + SUFFIX
    with np.load(path, allow_pickle=False) as data:  # no pickles: plain arrays
        assert {"meta", "scale_W", "inverse_W"} <= set(data.files)
    loaded = Uncertainty.load(path)
    at, _ = vacancy_cell(3)
    np.testing.assert_array_equal(loaded.grade(at), unc.grade(at))
    assert loaded.meta() == unc.meta()
    loaded.check_potential(potential, "here")  # the potential it was written for
    loaded.close()


# ------------------------------------------------------------------ bad input


def test_missing_or_foreign_files_are_refused(tmp_path, w_uf3):
    with pytest.raises(ConfigurationError, match=r"no uncertainty file .*mlmix fit"):
        Uncertainty.load(tmp_path / "nothing.uncertainty.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ConfigurationError, match="not an mlmix uncertainty file"):
        uncertainty(tmp_path / "other.npz")
    unc, potential = w_uf3
    edited = tmp_path / potential.name
    edited.write_text(potential.read_text().replace("0.0", "0.1", 1))
    with pytest.raises(ConfigurationError, match="different or edited"):
        unc.check_potential(edited, "regions.seeds.file")


@pytest.mark.parametrize("threshold", [0.0, -1.0, float("nan")])
def test_a_threshold_that_is_not_positive_is_refused(w_uf3, threshold):
    _, potential = w_uf3
    with pytest.raises(ConfigurationError, match="uncertainty threshold must be"):
        uncertainty_seeds(file_beside(potential), threshold)


# ------------------------------------------------------------- the classifier


def w_vacancy_config(cheap: dict, **seeds) -> dict:
    return {
        "structure": {"builder": "vacancy", "element": "W", "crystal": "bcc", "a": A_W,
                      "repeat": 4},
        "potentials": {"expensive": {"backend": "lammps", "style": "include",
                                     "file": "W_2940_2017_2.snap", "species": ["W"]},
                       "cheap": cheap},
        "regions": {"r_core": 2.0, "nevery": 0,
                    "seeds": {"kind": "classifier", "quantity": "uncertainty", **seeds}},
        "task": {"kind": "relax", "fmax": 0.05, "max_steps": 5},
    }


def test_toml_uncertainty_seeds_find_the_vacancy(w_uf3):
    unc, potential = w_uf3
    cheap = {"backend": "lammps", "style": "uf3", "file": str(potential), "species": ["W"]}
    cfg = parse_run_config(w_vacancy_config(cheap))
    assert cfg.seeds["threshold"] == pytest.approx(unc.threshold)  # the file's default
    assert cfg.seeds["file"] == str(file_beside(potential).resolve())
    structure = build_structure(cfg.structure)
    seeds = build_seeds(cfg.seeds, structure)
    seeds.check_schedule(cfg.regions["nevery"])  # as the region tracker does
    atoms = structure.atoms
    mask = seeds.select(atoms, np.arange(len(atoms)), 0, True)
    perfect = bulk("W", "bcc", a=A_W, cubic=True).repeat(4)
    site = perfect.positions[central_atom(perfect)]  # where the vacancy builder cuts
    d = get_distances(atoms.positions, site, cell=atoms.cell, pbc=True)[1][:, 0]
    np.testing.assert_array_equal(np.flatnonzero(mask), np.flatnonzero(d < 3.3))


def test_toml_mistakes_of_the_uncertainty_classifier_come_in_one_message(tmp_path, w_uf3):
    _, potential = w_uf3
    eam = {"backend": "lammps", "style": "eam_fs", "file": "Fe_mm.eam.fs", "species": ["W"]}
    with pytest.raises(ConfigurationError) as err:
        parse_run_config(w_vacancy_config(eam, threshold=-1.0, lb=2.0))
    msg = str(err.value)
    assert "3 problem(s)" in msg
    assert "regions.seeds.threshold" in msg and "regions.seeds.lb" in msg
    assert "fitted by `mlmix fit`" in msg and "eam_fs" in msg
    alone = tmp_path / potential.name  # a fitted-looking file without its uncertainty file
    alone.write_text(potential.read_text())
    cheap = {"backend": "lammps", "style": "uf3", "file": str(alone), "species": ["W"]}
    with pytest.raises(ConfigurationError, match=r"regions.seeds.file: no uncertainty file"):
        parse_run_config(w_vacancy_config(cheap))
    with pytest.raises(ConfigurationError, match="is not a parameter of quantity"):
        parse_run_config(w_vacancy_config(cheap, r_cut=3.0))


def test_mixed_forces_with_uncertainty_seeds_are_exact_on_the_core(w_uf3):
    """The seeds chosen by the grade drive a mixed calculation whose core forces equal
    the expensive ones (the buffer is the expensive cutoff)."""
    _, potential = w_uf3
    at, d = vacancy_cell()
    at.positions += np.random.default_rng(4).normal(0, 0.03, at.positions.shape)
    expensive = LammpsPotential.from_include("W_2940_2017_2.snap", ["W"])
    cheap = LammpsPotential.uf3(potential, ["W"])
    tracker = RegionTracker(RegionSpec(2.0, 0.0, expensive.cutoff),
                            uncertainty_seeds(file_beside(potential)), nevery=0)
    calc = MixedCalculator(expensive, cheap, tracker)
    at.calc = calc
    mixed = at.get_forces()
    regions = calc.current_regions()
    assert np.array_equal(np.flatnonzero(regions.seeds), np.flatnonzero(d < 3.3))
    reference = expensive.evaluate(at).forces
    core = regions.p == 1.0
    assert core.sum() >= 14
    assert np.abs(mixed[core] - reference[core]).max() < 1e-10
    expensive.close()
    cheap.close()


def test_the_lammps_engine_follows_the_same_uncertainty_seeds(w_uf3):
    """Both engines, 10 NVE steps with the grade re-queried at step 5: the same seeds
    (the vacancy's 14 neighbours) and the same trajectory."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from mlmix.engines.lammps import LammpsEngine
    from mlmix.structures import thermalize

    _, potential = w_uf3
    start, d = vacancy_cell()
    thermalize(start, 300.0, seed=2)
    expensive = LammpsPotential.from_include("W_2940_2017_2.snap", ["W"])
    cheap = LammpsPotential.uf3(potential, ["W"])
    spec = RegionSpec(2.0, 0.0, expensive.cutoff)
    source = file_beside(potential)
    ref = start.copy()
    velocities = ref.get_velocities()
    # ASE's eV/Å/amu -> Å/fs^2 conversion made LAMMPS's (metal units)
    ref.set_masses(ref.get_masses() * 1.0364269e-4 / (units._amu * 1e-20 / units._e * 1e24))
    ref.set_velocities(velocities)
    tracker = RegionTracker(spec, uncertainty_seeds(source, nfreq=5), nevery=5)
    ref.calc = MixedCalculator(expensive, cheap, tracker)
    VelocityVerlet(ref, 2.0 * units.fs).run(10)
    assert np.array_equal(np.flatnonzero(tracker.regions.seeds), np.flatnonzero(d < 3.3))
    frames = []
    with LammpsEngine(start, expensive, cheap, spec, uncertainty_seeds(source, nfreq=5),
                      nevery=5, timestep=2.0) as engine:
        engine.run(10, callback=lambda a, e: frames.append(a), every=10)
        seeds = engine.tracker.regions.seeds
    np.testing.assert_array_equal(seeds, tracker.regions.seeds)
    np.testing.assert_allclose(frames[-1].positions, ref.positions, rtol=0, atol=1e-10)
    expensive.close()
    cheap.close()


def test_mlmix_run_relaxes_a_vacancy_with_uncertainty_seeds(tmp_path):
    """`mlmix run` (ASE engine, relaxation) with the shipped W UF3 of the studies and its
    uncertainty file: the grade alone finds the vacancy, and the relaxation converges."""
    import mlmix.run as runner
    from mlmix.config import dump_toml

    root = Path(__file__).resolve().parents[1]
    cheap = {"backend": "lammps", "style": "uf3", "species": ["W"],
             "file": str(root / "studies" / "potentials" / "W_uf3" / "W_uf3.uf3")}
    cfg = w_vacancy_config(cheap)
    cfg["task"]["max_steps"] = 200
    cfg["output"] = {"figures": False, "progress": False}
    path = tmp_path / "run.toml"
    path.write_text(dump_toml(cfg))
    summary = runner.run(path)
    assert summary["converged"] and summary["fmax_eV_per_A"] <= 0.05
    relaxed = read(tmp_path / "run-run" / "relaxed.extxyz")
    perfect = bulk("W", "bcc", a=A_W, cubic=True).repeat(4)
    site = perfect.positions[central_atom(perfect)]
    d = get_distances(relaxed.positions, site, cell=relaxed.cell, pbc=True)[1][:, 0]
    weighted = relaxed.arrays["mlmix_p"] > 0
    assert set(np.flatnonzero(d < 3.3)) <= set(np.flatnonzero(weighted))
    assert d[weighted].max() < 3.3 + 2.0 + 0.5  # seeds, their r_core and the relaxation
