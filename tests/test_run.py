"""`mlmix run`: config checking, MD outputs, exact resume, relaxation, NEB."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

import mlmix.engines.ase as ase_engine
import mlmix.run as runner
from mlmix.cli import main as cli_main
from mlmix.config import dump_toml
from mlmix.errors import ConfigurationError
from mlmix.potentials.lammps import LammpsPotential
from mlmix.runconfig import build_structure, parse_run_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

SW = {"backend": "lammps", "style": "sw", "file": "Si.sw", "species": ["Si"]}
TERSOFF = {"backend": "lammps", "style": "tersoff", "file": "Si.tersoff", "species": ["Si"]}


def si_config(**task) -> dict:
    """A small Si vacancy run: SW expensive, Tersoff cheap (fast, both shipped)."""
    return {
        "structure": {"builder": "vacancy", "element": "Si", "crystal": "diamond",
                      "a": 5.431, "repeat": 3},
        "potentials": {"expensive": dict(SW), "cheap": dict(TERSOFF)},
        "regions": {"r_core": 3.0, "r_blend": 3.0, "nevery": 5},
        "task": {"kind": "md", "ensemble": "nvt", "temperature_K": 900.0, "steps": 40,
                 "seed": 3, **task},
        "output": {"trajectory_every": 5, "log_every": 5, "checkpoint_every": 10,
                   "figures": False, "progress": False},
    }


def write_config(tmp_path: Path, cfg: dict, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(dump_toml(cfg))
    return path


# --------------------------------------------------------------------------- checks


def test_every_mistake_in_one_message(tmp_path):
    cfg = si_config()
    cfg["structure"]["crystal"] = "hcp-ish"
    cfg["structure"]["repeat"] = 0
    cfg["potentials"]["cheap"]["file"] = "Si.tersofff"
    cfg["regions"]["r_core"] = -1.0
    cfg["regions"]["colour"] = "blue"
    cfg["task"]["timestep_fs"] = 50.0
    cfg["task"]["temperature_K"] = 0.0
    cfg["output"]["log_every"] = "often"
    path = write_config(tmp_path, cfg)
    with pytest.raises(ConfigurationError) as err:
        runner.run(path)
    message = str(err.value)
    assert "8 problem(s)" in message
    for place in ("structure.crystal", "structure.repeat", "potentials.cheap.file",
                  "regions.r_core", "regions.colour", "task.timestep_fs",
                  "task.temperature_K", "output.log_every"):
        assert place in message
    assert "Si.tersoff" in message  # the close match is suggested
    assert not (tmp_path / "run-run").exists()  # nothing written


def test_settings_that_do_not_fit_together_are_named(tmp_path):
    cfg = si_config(kind="relax")
    del cfg["task"]["ensemble"], cfg["task"]["temperature_K"], cfg["task"]["steps"]
    del cfg["task"]["seed"]
    cfg["regions"]["hysteresis"] = {"tau_in_fs": 10.0}
    cfg["regions"]["seeds"] = {"kind": "classifier", "quantity": "coordination",
                               "r_cut": 2.6, "ub": 3, "nfreq": 7}
    with pytest.raises(ConfigurationError) as err:
        parse_run_config(cfg)
    message = str(err.value)
    for text in ("regions.nevery", "regions.hysteresis", "regions.seeds.nfreq"):
        assert text in message


def test_example_configs_are_valid():
    configs = sorted(EXAMPLES.glob("run-*.toml"))
    assert configs, "examples/run-*.toml are missing"
    for path in configs:
        cfg = runner.load_run_config(path)
        assert cfg.task["kind"] in ("md", "relax", "neb")


def test_cli_reports_a_bad_config_and_writes_nothing(tmp_path, capsys):
    cfg = si_config()
    cfg["task"]["ensemble"] = "npt"
    path = write_config(tmp_path, cfg)
    assert cli_main(["run", str(path)]) == 2
    assert "task.ensemble" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [path]


# --------------------------------------------------------------------------- MD


def test_md_outputs_carry_regions_and_exact_core_forces(tmp_path):
    cfg = si_config(ensemble="nve", temperature_K=600.0)
    del cfg["task"]["seed"]
    path = write_config(tmp_path, cfg)
    summary = runner.run(path)
    run_dir = tmp_path / "run-run"
    frames = read(run_dir / "trajectory.extxyz", ":")
    assert [f.info["step"] for f in frames] == list(range(0, 41, 5))
    last = frames[-1]
    p = last.arrays["mlmix_p"]
    assert set(np.unique(last.arrays["mlmix_expensive"])) == {False, True}
    assert 0 < (p == 1).sum() < (p > 0).sum() < len(last)  # core, blend, cheap all present
    # The stored forces are the mixed forces: exact (all-expensive) where p = 1.
    sw = LammpsPotential.sw("Si.sw", ["Si"])
    reference = sw.evaluate(last).forces
    sw.close()
    f = last.get_forces()
    # extended XYZ keeps positions to 1e-8 Å, which moves forces by ~1e-7 eV/Å
    assert np.abs(f[p == 1] - reference[p == 1]).max() < 1e-5
    assert np.abs(f[p < 1] - reference[p < 1]).max() > 1e-3  # the cheap side is different
    log = np.loadtxt(run_dir / "thermo.log")
    header = [line for line in (run_dir / "thermo.log").read_text().splitlines()
              if line.startswith("#")][-1].split()[1:]
    assert header[:3] == ["step", "time_fs", "temperature_K"]
    assert log.shape == (9, len(header))
    column = dict(zip(header, log.T))
    assert np.all(column["n_expensive"] > column["n_weighted"])  # the buffer is evaluated
    assert np.all(column["n_weighted"] >= column["n_core"])
    assert np.isfinite(column["drift_eV_per_ps"][-1])
    assert summary["drift_estimate_eV_per_ps"] == pytest.approx(column["drift_eV_per_ps"][-1],
                                                                rel=1e-6)
    saved = tomllib.loads((run_dir / "config.toml").read_text())
    assert Path(saved["potentials"]["expensive"]["file"]).name == "Si.sw"
    assert saved["regions"]["r_blend"] == 3.0 and saved["output"]["directory"] == "run-run"


def _kill_at(monkeypatch, n_step: int) -> None:
    """Make the integrator die (like a killed process) during its ``n_step``-th step."""
    original = ase_engine._integrator

    def dying(atoms, task, rng):
        dyn = original(atoms, task, rng)
        step, calls = dyn.step, []

        def step_or_die(*args, **kwargs):
            calls.append(1)
            if len(calls) == n_step:
                atoms.positions += 0.05  # half-done work that must not leak into a resume
                raise KeyboardInterrupt
            return step(*args, **kwargs)

        dyn.step = step_or_die
        return dyn

    monkeypatch.setattr(ase_engine, "_integrator", dying)


@pytest.mark.parametrize("seeds, k", [("defect", 1), ("classifier", 1), ("defect", 3),
                                     ("force_check", 1)])
def test_killed_run_resumes_the_uninterrupted_trajectory(tmp_path, monkeypatch, seeds, k):
    """Killed at step 27, resumed from the checkpoint of step 20; with multiple time
    stepping (k = 3, regions every 6 steps) step 20 lies between outer steps."""
    cfg = si_config(correction_every=k)
    if k > 1:
        cfg["regions"]["nevery"] = 6
    cfg["regions"]["hysteresis"] = {"tau_in_fs": 10.0, "tau_out_fs": 20.0}
    if seeds == "classifier":  # under-coordinated atoms: the vacancy's neighbours
        cfg["regions"]["seeds"] = {"kind": "classifier", "quantity": "coordination",
                                   "r_cut": 2.7, "ub": 3.5, "nfreq": 10, "window": 2}
    if seeds == "force_check":  # a random sample: the resume must draw the same atoms
        cfg["regions"]["force_check"] = {"tolerance": 0.3, "fraction": 0.1, "nfreq": 10}
    path = write_config(tmp_path, cfg)
    runner.run(path, output=tmp_path / "whole")
    with monkeypatch.context() as m:
        _kill_at(m, 27)  # after the checkpoint at step 20 and frames up to 25
        with pytest.raises(KeyboardInterrupt):
            runner.run(path, output=tmp_path / "killed")
    assert read(tmp_path / "killed" / "trajectory.extxyz", -1).info["step"] == 25
    summary = runner.run(path, output=tmp_path / "killed", resume=True)
    assert summary["resumed_from_step"] == 20
    whole = read(tmp_path / "whole" / "trajectory.extxyz", ":")
    resumed = read(tmp_path / "killed" / "trajectory.extxyz", ":")
    assert [f.info["step"] for f in resumed] == [f.info["step"] for f in whole]
    for a, b in zip(whole, resumed):
        assert np.abs(a.positions - b.positions).max() < 1e-9
        assert np.abs(a.get_momenta() - b.get_momenta()).max() < 1e-9
        assert np.array_equal(a.arrays["mlmix_p"], b.arrays["mlmix_p"])
    p_values = np.concatenate([f.arrays["mlmix_p"] for f in whole])
    assert ((p_values > 0) & (p_values < 1)).any()  # hysteresis had something to carry
    log_a = np.loadtxt(tmp_path / "whole" / "thermo.log")
    log_b = np.loadtxt(tmp_path / "killed" / "thermo.log")
    assert log_a.shape == log_b.shape
    assert np.allclose(log_a[:, :7], log_b[:, :7], rtol=1e-9)


def test_resume_extends_a_finished_run_and_refuses_a_changed_one(tmp_path):
    cfg = si_config(steps=20)
    path = write_config(tmp_path, cfg)
    runner.run(path)
    with pytest.raises(ConfigurationError, match="not empty"):
        runner.run(path)
    cfg["task"]["steps"] = 30
    write_config(tmp_path, cfg)
    summary = runner.run(path, resume=True)
    assert summary["steps"] == 30
    assert read(tmp_path / "run-run" / "trajectory.extxyz", -1).info["step"] == 30
    cfg["regions"]["r_core"] = 4.0
    write_config(tmp_path, cfg)
    with pytest.raises(ConfigurationError, match=r"\[regions\]"):
        runner.run(path, resume=True)
    with pytest.raises(ConfigurationError, match="nothing to resume"):
        runner.run(path, resume=True, output=tmp_path / "elsewhere")


# --------------------------------------------------------------------------- relax, NEB


def test_relaxation_meets_the_force_criterion(tmp_path):
    cfg = si_config(kind="relax", fmax=0.01, expensive_energy=True)
    for key in ("ensemble", "temperature_K", "steps", "seed"):
        del cfg["task"][key]
    cfg["regions"]["nevery"] = 0
    # Tersoff near the vacancy (SW barely relaxes an ideal vacancy), SW elsewhere
    cfg["potentials"] = {"expensive": dict(TERSOFF), "cheap": dict(SW)}
    summary = runner.run(write_config(tmp_path, cfg))
    assert summary["converged"] and summary["fmax_eV_per_A"] <= 0.01
    relaxed = read(tmp_path / "run-run" / "relaxed.extxyz")
    tersoff = LammpsPotential.tersoff("Si.tersoff", ["Si"])
    energy = tersoff.evaluate(relaxed).energies.sum()
    tersoff.close()
    assert summary["expensive_energy_eV"] == pytest.approx(energy, abs=1e-8)
    log = np.loadtxt(tmp_path / "run-run" / "relax.log")
    assert log[-1, 1] <= 0.01 and log[0, 1] > 0.1  # the vacancy relaxes from > 0.1 eV/Å


def test_neb_barrier_matches_all_expensive(tmp_path):
    """Cu vacancy hop, one EAM near the hop and another elsewhere: the barrier (the
    expensive potential on the relaxed images) is that of the all-expensive band."""
    u3 = {"backend": "lammps", "style": "eam", "file": "Cu_u3.eam", "species": ["Cu"]}
    mishin = {"backend": "lammps", "style": "eam_alloy", "file": "Cu_mishin1.eam.alloy",
              "species": ["Cu"]}

    def neb(cheap: dict, name: str) -> dict:
        cfg = {
            "structure": {"builder": "vacancy", "element": "Cu", "crystal": "fcc",
                          "a": 3.615, "repeat": 4},
            "potentials": {"expensive": u3, "cheap": cheap},
            "regions": {"r_core": 4.0, "r_blend": 3.0, "nevery": 0},
            "task": {"kind": "neb", "hop": 0, "images": 3, "fmax": 0.01},
            "output": {"directory": name, "figures": False},
        }
        return runner.run(write_config(tmp_path, cfg, f"{name}.toml"))

    mixed = neb(mishin, "mixed")
    reference = neb(u3, "reference")
    assert mixed["converged"] and reference["converged"]
    assert 0.5 < reference["barrier_eV"] < 1.0  # EAM Cu vacancy migration, about 0.7 eV
    assert mixed["barrier_eV"] == pytest.approx(reference["barrier_eV"], abs=0.002)
    assert mixed["region_counts_middle_image"]["expensive"] < mixed["n_atoms"]
    summary = json.loads((tmp_path / "mixed" / "summary.json").read_text())
    assert len(summary["image_energies_eV"]) == 5
    assert summary["image_energies_eV"][0] == 0.0


# --------------------------------------------------------------------------- dislocation


def w_screw_config() -> dict:
    """A thin W screw dislocation: W SNAP expensive, Zhou EAM cheap, centrosymmetry seeds."""
    return {
        "structure": {"builder": "dislocation", "element": "W", "a": 3.1805, "C11": 517.7,
                      "C12": 194.5, "C44": 144.3, "radius": 12.0, "n_burgers": 2,
                      "fix_width": 5.0},
        "potentials": {"expensive": {"backend": "lammps", "style": "include",
                                     "file": "W_2940_2017_2.snap", "species": ["W"]},
                       "cheap": {"backend": "lammps", "style": "eam_alloy",
                                 "file": "W_zhou.eam.alloy", "species": ["W"]}},
        "regions": {"r_core": 3.0, "r_blend": 2.0, "nevery": 5,
                    "seeds": {"kind": "classifier", "quantity": "centrosymmetry",
                              "lb": 4.0, "nfreq": 10, "window": 2}},
        "task": {"kind": "md", "ensemble": "nvt", "timestep_fs": 2.0, "steps": 30,
                 "temperature_K": 600.0, "seed": 4},
        "output": {"trajectory_every": 5, "log_every": 5, "checkpoint_every": 10,
                   "figures": False, "progress": False},
    }


def test_dislocation_and_classifier_settings_are_checked():
    cfg = w_screw_config()
    cfg["structure"]["fix_width"] = 13.0
    cfg["structure"]["n_burgers"] = 0
    cfg["regions"]["seeds"]["n_neighbours"] = 7
    with pytest.raises(ConfigurationError) as err:
        parse_run_config(cfg)
    message = str(err.value)
    for text in ("structure.fix_width", "structure.n_burgers", "regions.seeds.n_neighbours"):
        assert text in message
    cfg = w_screw_config()
    cfg["regions"]["seeds"].update(quantity="coordination", n_neighbours=8)
    with pytest.raises(ConfigurationError, match="n_neighbours.*not a parameter"):
        parse_run_config(cfg)


def test_dislocation_md_keeps_its_shell_fixed_and_seeds_at_the_core(tmp_path, monkeypatch):
    path = write_config(tmp_path, w_screw_config())
    runner.run(path, output=tmp_path / "whole")
    frames = read(tmp_path / "whole" / "trajectory.extxyz", ":")
    first, last = frames[0], frames[-1]
    built = runner.load_run_config(path)
    structure = build_structure(built.structure)
    fixed = structure.atoms.constraints[0].index
    assert len(fixed) > 0
    # The shell does not move; the interior does.
    assert np.abs(last.positions[fixed] - first.positions[fixed]).max() < 1e-8
    assert np.abs(last.positions - first.positions).max() > 1e-2
    # The surface of the cylinder is not centrosymmetric, yet it never seeds: the core
    # region sits on the line, away from the fixed shell.
    core = structure.atoms.info["core_position"]
    radial = np.hypot(*(last.positions[:, :2] - core[:2]).T)
    p = last.arrays["mlmix_p"]
    interior = built.structure["radius"] - built.structure["fix_width"]
    assert (p == 1).any() and radial[p == 1].max() < interior
    assert np.all(p[fixed] == 0)
    # A killed run resumes with the shell still fixed and the same trajectory.
    with monkeypatch.context() as m:
        _kill_at(m, 17)
        with pytest.raises(KeyboardInterrupt):
            runner.run(path, output=tmp_path / "killed")
    runner.run(path, output=tmp_path / "killed", resume=True)
    resumed = read(tmp_path / "killed" / "trajectory.extxyz", ":")
    assert len(resumed) == len(frames)
    for a, b in zip(frames, resumed):
        assert np.abs(a.positions - b.positions).max() < 1e-9
