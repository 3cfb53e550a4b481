"""Acceptance of the distillation pipeline (issue 3): hard constraints on real data,
end to end against a real expensive potential, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read

from conftest import shared_data
from mlmix import (
    ConfigurationError,
    IndexSeeds,
    MixedCalculator,
    RegionSpec,
    RegionTracker,
)
from mlmix.fitting import data, elastic, pipeline
from mlmix.fitting.snap import SnapModel
from mlmix.potentials.factory import make_potential
from mlmix.rundir import LOCK, MARKER
from mlmix.structures import vacancy_supercell

# Stand-ins that label the soft set next to the paper's expensive-ACE hard sets: the
# constraint must hold whatever the soft data say.
SOFT_LABELLERS = {
    "Si": {"backend": "lammps", "style": "snap", "file": "Si_Zuo_JPCA2020.quadratic", "species": ["Si"]},
    "Fe": {"backend": "lammps", "style": "eam_fs", "file": "Fe_mm.eam.fs", "species": ["Fe"]},
    "W": {"backend": "lammps", "style": "include", "file": "W_2940_2017_2.snap", "species": ["W"]},
}


@pytest.mark.parametrize("element", ["Si", "Fe", "W"])
def test_constrained_fit_to_the_papers_strained_bulk_data(element, tmp_path):
    hard = read(shared_data(f"{element}_strained_bulk_expensive.xyz"), ":")
    reference = read(shared_data(f"{element}_bulk_expensive.xyz"))
    a_data = elastic.lattice_parameter_from_strained_set(hard, reference)
    labeller = make_potential(SOFT_LABELLERS[element])
    soft = []
    for seed in range(3):
        frame = reference.copy()
        frame.rattle(0.05, seed=seed)
        soft.append(data.label_frame(frame, labeller))
    model = SnapModel([element], twojmax=6)
    alpha = 2e-6  # eV/atom, over the 102 rows
    unconstrained, fit, (a_h, y_h) = pipeline.fit_models(model, reference, hard, soft, alpha=alpha)
    assert fit.hard_residual_norm <= alpha * (1 + 1e-6)
    assert np.linalg.norm(a_h @ unconstrained - y_h) > 10 * alpha  # the constraint mattered

    # the written, reloaded potential reproduces the energy-strain data to alpha ...
    cheap = model.potential(fit.coefficients, tmp_path, f"{element}_fit")
    e0 = pipeline.report.total_energy(cheap, reference) / len(reference)
    got = np.array([pipeline.report.total_energy(cheap, f) / len(f) - e0 for f in hard])
    assert np.linalg.norm(got - y_h) <= alpha * 1.01
    # ... and its lattice parameter is the one the data imply
    _, info = data.relax_bulk(reference, cheap)
    assert info.lattice_parameter == pytest.approx(a_data, abs=1e-4)
    labeller.close()
    cheap.close()


SI_CONFIG = {
    "expensive": SOFT_LABELLERS["Si"],
    "structure": {"element": "Si", "crystal": "diamond", "a": 5.46, "repeat": 2},
    "hard": {"n_strains": 5},
    "soft": {"temperature_K": 500.0, "n_frames": 6, "interval": 20, "seed": 1},
    "model": {"family": "snap", "twojmax": 6},
    "fit": {"alpha": 2e-6},
    "output": {"directory": "out", "stem": "si"},
}


W_CONFIG = {
    **SI_CONFIG,
    "expensive": SOFT_LABELLERS["W"],
    "structure": {"element": "W", "crystal": "bcc", "a": 3.18, "repeat": 2},
    "soft": {"temperature_K": 1200.0, "n_frames": 6, "interval": 20, "seed": 1},
    "report": {"vacancy": True},
    "output": {"directory": "out", "stem": "w"},
}


@pytest.fixture(scope="module")
def si_fit(tmp_path_factory):
    base = tmp_path_factory.mktemp("fit-si")
    cfg = pipeline.parse_config(SI_CONFIG, base)
    return cfg, pipeline.run(cfg, progress=None)


@pytest.fixture(scope="module")
def w_fit(tmp_path_factory):
    base = tmp_path_factory.mktemp("fit-w")
    cfg = pipeline.parse_config(W_CONFIG, base)
    return cfg, pipeline.run(cfg, progress=None)


@pytest.mark.parametrize("which", ["si_fit", "w_fit"])
def test_end_to_end_against_a_real_expensive_snap(which, request):
    cfg, result = request.getfixturevalue(which)
    stem = cfg.stem
    exp, con, unc = (result["models"][k] for k in ("expensive", "constrained", "unconstrained"))
    assert con["lattice_parameter_A"] == pytest.approx(exp["lattice_parameter_A"], abs=1e-4)
    for key in ("C11", "C12", "C44"):
        assert con["cubic"][key] == pytest.approx(exp["cubic"][key], rel=0.02), key
    # the unconstrained fit to the same soft data visibly misses
    misses = [abs(unc["cubic"][k] / exp["cubic"][k] - 1) for k in ("C11", "C12", "C44")]
    assert abs(unc["lattice_parameter_A"] - exp["lattice_parameter_A"]) > 1e-2 or max(misses) > 0.05
    for name in ("report.json", "report.png", f"{stem}.snapcoeff", f"{stem}.snapparam",
                 f"{stem}_unconstrained.snapcoeff"):
        assert (cfg.output / name).is_file(), name


def test_vacancy_formation_energy_reported_when_asked(w_fit):
    _, result = w_fit
    models = result["models"]
    assert 2.5 < models["expensive"]["vacancy_formation_eV"] < 4.0  # SNAP W, 16-atom cell
    for m in models.values():  # a number only where the relaxation converged
        e = m["vacancy_formation_eV"]
        assert (e is not None and np.isfinite(e)) or "did not reach fmax" in m["vacancy_note"]


def test_fitted_files_drive_a_mixed_vacancy_relaxation(si_fit):
    from ase.optimize import FIRE

    from mlmix.potentials import LammpsPotential

    cfg, _ = si_fit
    cheap = LammpsPotential.snap(cfg.output / "si.snapcoeff", ["Si"], param=cfg.output / "si.snapparam")
    expensive = make_potential(SI_CONFIG["expensive"])
    atoms, seeds = vacancy_supercell("Si", "diamond", 5.4644, 3, bond=2.6)
    atoms.rattle(0.05, seed=3)
    tracker = RegionTracker(RegionSpec(4.0, 2.0, expensive.cutoff), IndexSeeds(seeds), nevery=0)
    atoms.calc = MixedCalculator(expensive, cheap, tracker)
    assert FIRE(atoms, logfile=None).run(fmax=0.02, steps=500)
    assert 0 < atoms.calc.regions.counts()["expensive"] < len(atoms)
    expensive.close()
    cheap.close()


def test_resume_uses_the_label_cache(si_fit, tmp_path):
    cfg, _ = si_fit
    cache = data.LabelCache(cfg.output / "cache")
    expensive = make_potential(SI_CONFIG["expensive"])
    reference, hard, soft = pipeline.generate_data(cfg, expensive, cache)
    assert cache.n_computed == 0 and cache.n_cached == 1 + len(hard) + len(soft)
    expensive.close()


def test_config_mistakes_named_together(tmp_path):
    bad = {
        "expensive": {"backend": "lammps", "style": "snapp", "file": "Si_Zuo_JPCA2020.quadratic"},
        "structure": {"element": "Si", "crystal": "diamant", "a": -5.0},
        "hard": {"strain_types": ["hydrostatic", "twist"]},
        "soft": {"test_fraction": 1.5},
        "model": {"family": "mace"},
        "fit": {"alpha": -1},
        "output": {},
    }
    with pytest.raises(ConfigurationError) as info:
        pipeline.parse_config(bad, tmp_path)
    message = str(info.value)
    for text in ("expensive.style", "structure.crystal", "structure.a", "unknown strain type 'twist'",
                 "soft.test_fraction", "model.family", "fit.alpha", "output.directory"):
        assert text in message, text
    assert "8 problem(s)" in message
    typo = {**SI_CONFIG, "model": {"family": "snap", "twojmx": 6}, "soft": {"timestep_fs": 50.0}}
    with pytest.raises(ConfigurationError) as info:
        pipeline.parse_config(typo, tmp_path)
    assert "model.twojmx: unknown key" in str(info.value)
    assert "soft.timestep_fs: must be at most" in str(info.value)
    for delta in (0.5, 0.0):
        with pytest.raises(ConfigurationError, match="report.elastic_delta: must"):
            pipeline.parse_config({**SI_CONFIG, "report": {"elastic_delta": delta}}, tmp_path)
    assert pipeline.parse_config({**SI_CONFIG, "report": {"elastic_delta": 5e-3}},
                                 tmp_path).elastic_delta == 5e-3


def test_unreachable_alpha_leaves_no_output(tmp_path):
    cfg_dict = {**SI_CONFIG, "hard": {"n_strains": 3}, "soft": {"n_frames": 2, "interval": 5},
                "model": {"family": "snap", "twojmax": 2}, "fit": {"alpha": 1e-14},
                "report": {"elastic": False}}
    cfg = pipeline.parse_config(cfg_dict, tmp_path)
    with pytest.raises(ConfigurationError, match="alpha"):
        pipeline.run(cfg, progress=None)
    leftovers = sorted(p.name for p in cfg.output.iterdir() if p.name not in (MARKER, LOCK))
    assert leftovers == ["cache"]  # labels are kept for a retry; nothing half-written


def test_the_fit_writes_the_uncertainty_of_its_potential(si_fit):
    """mlmix fit stores the active sets beside the potential: the training crystal is
    interpolation, a vacancy's neighbours are not, and the file names its potential."""
    from mlmix.fitting.uncertainty import TOLERANCE, Uncertainty

    cfg, result = si_fit
    unc = Uncertainty.load(cfg.output / f"{cfg.stem}.uncertainty.npz")
    assert result["uncertainty"]["threshold"] == unc.threshold >= TOLERANCE
    assert unc.heldout["n_atoms"] == 64 * result["fit"]["n_test_frames"]
    unc.check_potential(cfg.output / f"{cfg.stem}.snapcoeff", "test")
    with pytest.raises(ConfigurationError, match="different or edited"):
        unc.check_potential(cfg.output / f"{cfg.stem}_unconstrained.snapcoeff", "test")
    atoms, neighbours = vacancy_supercell("Si", "diamond", 5.46, 2, 2.8)
    grades = unc.grade(atoms)
    assert grades[neighbours].min() > unc.threshold
    a = result["models"]["expensive"]["lattice_parameter_A"]  # the relaxed training cell
    perfect = bulk("Si", "diamond", a=a, cubic=True).repeat(2)
    assert unc.grade(perfect).max() <= TOLERANCE * (1 + 1e-6)
    unc.close()
