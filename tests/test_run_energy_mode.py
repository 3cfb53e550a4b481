"""`mlmix run` with [mixing] mode = "energy": NVE conservation, exact resume, NPT, cell
relaxation, NEB on one energy surface, and the settings it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

import mlmix.run as runner
from mlmix._lammps_runtime import potentials_dir
from mlmix.errors import ConfigurationError
from mlmix.potentials.lammps_plugin import plugin_status
from test_run import EXAMPLES, _kill_at, si_config, write_config

pytestmark = pytest.mark.skipif(not plugin_status().available,
                                reason="mlmix's LAMMPS plugin cannot be built here")


def energy_config(**task) -> dict:
    cfg = si_config(**task)
    cfg["regions"] = {"r_core": 5.0, "r_blend": 3.0, "nevery": 5}
    cfg["mixing"] = {"mode": "energy", "n_levels": 8}
    return cfg


def test_nve_energy_mode_conserves_its_energy_and_resumes_exactly(tmp_path, monkeypatch):
    cfg = energy_config(ensemble="nve", temperature_K=600.0, steps=40)
    cfg["regions"]["hysteresis"] = {"tau_in_fs": 10.0, "tau_out_fs": 20.0}  # smooth weights
    del cfg["task"]["seed"]
    path = write_config(tmp_path, cfg)
    whole = runner.run(path, output=tmp_path / "whole")
    assert whole["mixing_mode"] == "energy"
    em = whole["energy_mixing"]
    assert em["cheap_energy_shift_eV"]["Si"] == pytest.approx(0.31, abs=0.02)  # SW - Tersoff
    assert em["energy_not_absorbed_eV"] == 0.0
    assert abs(whole["drift_estimate_eV_per_ps"]) < 0.5  # force mixing: ~10 eV/ps here
    assert len(em["stress_eV_per_A3"]) == 6 and np.isfinite(em["pressure_GPa"])
    with monkeypatch.context() as m:
        _kill_at(m, 27)
        with pytest.raises(KeyboardInterrupt):
            runner.run(path, output=tmp_path / "killed")
    resumed = runner.run(path, output=tmp_path / "killed", resume=True)
    assert resumed["resumed_from_step"] == 20
    a = read(tmp_path / "whole" / "trajectory.extxyz", ":")
    b = read(tmp_path / "killed" / "trajectory.extxyz", ":")
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert np.abs(x.positions - y.positions).max() < 1e-9
        assert np.abs(x.get_momenta() - y.get_momenta()).max() < 1e-9
    assert resumed["energy_mixing"]["potential_energy_eV"] == pytest.approx(
        em["potential_energy_eV"], abs=1e-8)
    assert resumed["energy_mixing"]["energy_exchanged_at_rebuilds_eV"] == pytest.approx(
        em["energy_exchanged_at_rebuilds_eV"], abs=1e-9)
    header = (tmp_path / "whole" / "thermo.log").read_text().splitlines()
    names = next(line for line in header if line.startswith("# step")).split()[1:]
    log_a = np.loadtxt(tmp_path / "whole" / "thermo.log")
    log_b = np.loadtxt(tmp_path / "killed" / "thermo.log")
    total = log_a[:, names.index("total_energy_eV")]
    assert np.ptp(total) < 0.05  # E + K of 215 atoms at 600 K over 40 fs
    same = [k for k, name in enumerate(names) if name != "seconds_per_step"]
    assert np.allclose(log_a[:, same], log_b[:, same], rtol=1e-9, atol=1e-9, equal_nan=True)


def test_npt_and_cell_relaxation_run_in_energy_mode(tmp_path):
    cfg = energy_config(ensemble="npt", temperature_K=300.0, steps=20, pressure_GPa=2.0,
                        taup_fs=100.0)
    summary = runner.run(write_config(tmp_path, cfg, "npt.toml"), output=tmp_path / "npt")
    volume0 = 3**3 * 5.431**3
    assert summary["energy_mixing"]["volume_A3"] < volume0  # compressed towards 2 GPa
    cfg = energy_config(kind="relax", cell=True, fmax=0.005)
    for key in ("ensemble", "temperature_K", "steps", "seed"):
        del cfg["task"][key]
    cfg["regions"]["nevery"] = 0
    cfg["structure"]["a"] = 5.5  # stretched: the cell must shrink
    relaxed = runner.run(write_config(tmp_path, cfg, "relax.toml"), output=tmp_path / "rel")
    assert relaxed["converged"] and relaxed["cell_relaxed"]
    assert abs(relaxed["energy_mixing"]["pressure_GPa"]) < 0.05
    assert relaxed["energy_mixing"]["volume_A3"] < 3**3 * 5.5**3


def test_neb_in_energy_mode_reports_the_mixed_barrier(tmp_path):
    """Si vacancy hop, quadratic SNAP near it and the linear SNAP distilled from it
    (examples/fit-si) beyond: one weight field for all images, so the band is a path
    on one energy surface and its barrier is close to the expensive re-evaluation."""
    cfg = energy_config(kind="neb", hop=0, images=3, fmax=0.02)
    for key in ("ensemble", "temperature_K", "steps", "seed"):
        del cfg["task"][key]
    cfg["structure"]["repeat"] = 2
    cfg["potentials"] = {
        "expensive": {"backend": "lammps", "style": "snap", "species": ["Si"],
                      "file": "Si_Zuo_JPCA2020.quadratic.snap"},
        "cheap": {"backend": "lammps", "style": "snap", "species": ["Si"],
                  "file": str(EXAMPLES / "fit-si" / "Si_linear_snap.snapcoeff")}}
    cfg["regions"] = {"r_core": 5.0, "r_blend": 2.0, "nevery": 0}
    summary = runner.run(write_config(tmp_path, cfg, "neb.toml"), output=tmp_path / "neb")
    assert summary["converged"]
    saved = json.loads((tmp_path / "neb" / "summary.json").read_text())
    assert saved["mixed_image_energies_eV"][0] == 0.0
    assert 0.1 < saved["barrier_eV"] < 1.0
    assert saved["mixed_barrier_eV"] == pytest.approx(saved["barrier_eV"], abs=0.05)


def test_energy_mode_settings_that_do_not_fit_are_named_together(tmp_path):
    cfg = si_config(ensemble="npt", correction_every=2)
    cfg["regions"]["nevery"] = 4
    cfg["mixing"] = {"mask_cheap": True}
    with pytest.raises(ConfigurationError) as err:
        runner.run(write_config(tmp_path, cfg))
    text = str(err.value)
    assert "mixing.mode" in text and "needs a stress" in text
    assert "task.friction_per_fs" not in text
    cfg = energy_config(correction_every=2)
    cfg["regions"]["nevery"] = 4
    cfg["mixing"].update(mask_cheap=True, n_levels=-1, mode="energy")
    cfg["engine"] = {"kind": "lammps"}
    with pytest.raises(ConfigurationError) as err:
        runner.run(write_config(tmp_path, cfg))
    text = str(err.value)
    for key in ("mixing.mask_cheap", "task.correction_every", "mixing.n_levels",
                "ASE engine only"):
        assert key in text
    cfg = energy_config()
    cfg["potentials"]["cheap"] = {"backend": "lammps", "style": "include",
                                  "file": str(tmp_path / "pair.in"), "species": ["Si"]}
    edip = potentials_dir() / "Si.edip"
    (tmp_path / "pair.in").write_text(f"pair_style edip\npair_coeff * * {edip} Si\n")
    with pytest.raises(ConfigurationError, match="edip: not verified"):
        runner.run(write_config(tmp_path, cfg))
    assert not (tmp_path / "run-run").exists()


def test_exact_uf3_weights_from_the_run_config(tmp_path):
    """`weighting = "exact"` on the cheap UF3 runs energy mode through mlmix's UF3 rows,
    and on quantised weights it is the same run as the plugin's levels (two independent
    implementations); `n_levels = 0` (unquantised weights) is refused before any work
    while the SW expensive potential weights by levels."""
    import mlmix

    uf3 = str(Path(mlmix.__file__).parent / "data" / "demo" / "Si_demo_uf3.uf3")
    runs = {}
    for weighting in ("exact", "levels"):
        cfg = energy_config(ensemble="nve", temperature_K=600.0, steps=60)
        cfg["potentials"]["cheap"] = {"backend": "lammps", "style": "uf3", "file": uf3,
                                      "weighting": weighting}
        runs[weighting] = runner.run(write_config(tmp_path, cfg, f"{weighting}.toml"),
                                     output=tmp_path / weighting)
    exact, levels = runs["exact"]["energy_mixing"], runs["levels"]["energy_mixing"]
    assert exact["potential_energy_eV"] == pytest.approx(levels["potential_energy_eV"],
                                                         abs=1e-8)
    assert exact["energy_exchanged_at_rebuilds_eV"] > 0  # the weights did change
    assert abs(runs["exact"]["drift_estimate_eV_per_ps"]) < 0.5
    cfg["mixing"]["n_levels"] = 0
    with pytest.raises(ConfigurationError, match=r"n_levels = 0 .*expensive potential sw"):
        runner.run(write_config(tmp_path, cfg, "zero.toml"), output=tmp_path / "zero")
    assert not (tmp_path / "zero").exists()
