"""`mlmix run` with ``[engine] kind = "lammps"``: same trajectory as the ASE engine, exact
resume, the same result on 1 and 2 MPI ranks, and what the engine refuses."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from ase.io import read

import mlmix.run as runner
from mlmix.drift import run_drift
from mlmix.engines.lammps.run import _RootOutputs
from mlmix.errors import CalculationError, ConfigurationError
from mlmix.runconfig import build_structure, parse_run_config
from test_lammps_engine import mpirun
from test_run import si_config, w_screw_config, write_config


def lammps_config(**task) -> dict:
    cfg = si_config(**task)
    cfg["engine"] = {"kind": "lammps"}
    return cfg


def frames(run_dir):
    return read(run_dir / "trajectory.extxyz", ":")


def test_lammps_engine_follows_the_ase_engine(tmp_path):
    """NVE from the same start: the two engines integrate the same mixed forces."""
    cfg = si_config(ensemble="nve", temperature_K=600.0)
    runner.run(write_config(tmp_path, cfg, "ase.toml"))
    cfg["engine"] = {"kind": "lammps"}
    summary = runner.run(write_config(tmp_path, cfg, "lmp.toml"))
    assert summary["engine"] == "lammps" and summary["mpi_ranks"] == 1
    assert summary["drift_estimate_eV_per_ps"] is None  # no energies: not invented
    a, b = frames(tmp_path / "ase-run"), frames(tmp_path / "lmp-run")
    assert [f.info["step"] for f in a] == [f.info["step"] for f in b]
    assert np.abs(a[-1].positions - a[0].positions).max() > 0.05
    for x, y in zip(a, b):
        # LAMMPS's 8-digit mvv2e and extxyz's 1e-8 Å precision bound the agreement
        assert np.abs(x.positions - y.positions).max() < 1e-6
        assert np.abs(x.get_forces() - y.get_forces()).max() < 1e-5
        assert np.abs(x.arrays["mlmix_p"] - y.arrays["mlmix_p"]).max() < 1e-6
    log = np.loadtxt(tmp_path / "lmp-run" / "thermo.log")
    assert log.shape[0] == 9 and np.all(np.isnan(log[:, -1]))  # drift column
    assert np.all(log[:, 6] == len(b[0]))  # n_cheap: every atom
    # the drift comes from the expensive re-evaluation of the saved frames instead
    ase_drift = run_drift(tmp_path / "ase-run")["slope_eV_per_ps"]
    lmp_drift = run_drift(tmp_path / "lmp-run")["slope_eV_per_ps"]
    assert np.isfinite(lmp_drift) and lmp_drift == pytest.approx(ase_drift, rel=1e-4)


@pytest.mark.parametrize("ensemble, k", [("nve", 1), ("nvt", 1), ("nve", 3)])
def test_crashed_run_resumes_the_uninterrupted_trajectory(tmp_path, monkeypatch, ensemble, k):
    """Crashed at step 25, resumed from step 20 (with k = 3, between outer steps)."""
    cfg = lammps_config(ensemble=ensemble, temperature_K=900.0, correction_every=k)
    if k > 1:
        cfg["regions"]["nevery"] = 6
    cfg["regions"]["hysteresis"] = {"tau_in_fs": 10.0, "tau_out_fs": 20.0}
    path = write_config(tmp_path, cfg)
    runner.run(path, output=tmp_path / "whole")
    original = _RootOutputs.__call__

    def crash_at_25(self, atoms, engine):
        original(self, atoms, engine)
        if engine.step == 25:
            raise RuntimeError("node lost")

    with monkeypatch.context() as m:
        m.setattr(_RootOutputs, "__call__", crash_at_25)
        with pytest.raises(CalculationError, match="node lost"):
            runner.run(path, output=tmp_path / "crashed")
    assert frames(tmp_path / "crashed")[-1].info["step"] == 25  # beyond the checkpoint
    summary = runner.run(path, output=tmp_path / "crashed", resume=True)
    assert summary["resumed_from_step"] == 20
    whole, resumed = frames(tmp_path / "whole"), frames(tmp_path / "crashed")
    assert [f.info["step"] for f in resumed] == [f.info["step"] for f in whole]
    for a, b in zip(whole, resumed):
        assert np.abs(a.positions - b.positions).max() < 1e-9
        assert np.abs(a.get_momenta() - b.get_momenta()).max() < 1e-9
        assert np.array_equal(a.arrays["mlmix_p"], b.arrays["mlmix_p"])


def test_one_and_two_ranks_write_the_same_run(tmp_path):
    cfg = lammps_config(steps=30)
    cfg["structure"]["repeat"] = 4  # 511 atoms: wide enough for 2 domains
    path = write_config(tmp_path, cfg)
    command = [mpirun(), "-np", "2", sys.executable, "-m", "mlmix", "run", str(path),
               "--output", str(tmp_path / "two")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("mpi_ranks = 2") == 1  # printed by rank 0 only
    runner.run(path, output=tmp_path / "one")
    one, two = frames(tmp_path / "one"), frames(tmp_path / "two")
    assert len(one) == len(two) == 7
    for a, b in zip(one, two):
        assert np.abs(a.positions - b.positions).max() < 1e-7
        assert np.array_equal(a.arrays["mlmix_p"], b.arrays["mlmix_p"])
    # a config error is reported once, by rank 0, and every rank exits with status 2
    cfg["task"]["ensemble"] = "npt"
    bad = write_config(tmp_path, cfg, "bad.toml")
    done = subprocess.run([mpirun(), "-np", "2", sys.executable, "-m", "mlmix", "run",
                           str(bad)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and done.stderr.count("task.ensemble") == 1


def test_settings_the_engine_cannot_run_are_named():
    cfg = lammps_config(kind="relax")
    for key in ("ensemble", "temperature_K", "steps", "seed"):
        del cfg["task"][key]
    cfg["regions"]["nevery"] = 0
    cfg["potentials"]["cheap"] = {"backend": "ace", "file": "x.yace"}
    cfg["mixing"] = {"mask_cheap": True}
    with pytest.raises(ConfigurationError) as err:
        parse_run_config(cfg)
    message = str(err.value)
    assert "the LAMMPS engine runs MD" in message
    assert "potentials.cheap.backend must be 'lammps'" in message
    assert "mixing.mask_cheap" in message


def test_lammps_compute_seeds_match_the_python_classifier(tmp_path):
    """coord/atom in LAMMPS and mlmix's coordination pick the same seeds (the vacancy's
    under-coordinated neighbours), so both engines run the same trajectory."""
    averaged = {"ub": 3.5, "nfreq": 10, "window": 2}
    cfg = si_config(ensemble="nve", temperature_K=600.0)
    cfg["regions"]["seeds"] = {"kind": "classifier", "quantity": "coordination",
                               "r_cut": 2.7, **averaged}
    runner.run(write_config(tmp_path, cfg, "ase.toml"))
    cfg["engine"] = {"kind": "lammps"}
    cfg["regions"]["seeds"] = {"kind": "lammps_compute", "compute": "coord/atom",
                               "args": "cutoff 2.7", **averaged}
    runner.run(write_config(tmp_path, cfg, "lmp.toml"))
    a, b = frames(tmp_path / "ase-run"), frames(tmp_path / "lmp-run")
    p = a[-1].arrays["mlmix_p"]
    assert 0 < (p == 1).sum() < len(p)
    for x, y in zip(a, b):
        assert np.abs(x.arrays["mlmix_p"] - y.arrays["mlmix_p"]).max() < 1e-6
        assert np.abs(x.positions - y.positions).max() < 1e-6
    # ... and with the ASE engine a LAMMPS compute is refused, by name
    cfg["engine"] = {"kind": "ase"}
    with pytest.raises(ConfigurationError, match="'lammps_compute' needs engine.kind"):
        parse_run_config(cfg)


def test_fixed_shell_of_a_dislocation_is_held_as_in_the_ase_engine(tmp_path):
    """FixAtoms (the dislocation's outer shell) becomes fix setforce in LAMMPS: the shell
    does not move and the two engines run the same trajectory."""
    cfg = w_screw_config()
    cfg["task"].update(ensemble="nve", steps=20)
    cfg["regions"]["seeds"] = {"kind": "defect"}  # the atoms nearest the line
    runner.run(write_config(tmp_path, cfg, "ase.toml"))
    cfg["engine"] = {"kind": "lammps"}
    runner.run(write_config(tmp_path, cfg, "lmp.toml"))
    a, b = frames(tmp_path / "ase-run"), frames(tmp_path / "lmp-run")
    fixed = build_structure(parse_run_config(cfg).structure).atoms.constraints[0].index
    assert np.abs(b[-1].positions[fixed] - b[0].positions[fixed]).max() == 0.0
    assert np.abs(b[-1].positions - b[0].positions).max() > 1e-2
    for x, y in zip(a, b):
        assert np.abs(x.positions - y.positions).max() < 1e-6
