"""Smoke runs of the case studies ``studies/he_diffusion.py`` and
``studies/screw_dislocation.py`` (``--quick``: the same code path at a small size)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def run_study(name: str, out: Path) -> dict:
    """Run ``studies/<name>.py --quick --out out`` in a fresh interpreter; its JSON."""
    proc = subprocess.run([sys.executable, str(STUDIES / f"{name}.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / f"{name}.png").stat().st_size > 10_000
    return json.loads((out / f"{name}.json").read_text())


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.mark.slow
def test_he_diffusion_quick(tmp_path):
    r = run_study("he_diffusion", tmp_path)
    setup = r["setup"]
    assert r["quick"] and r["mlmix_version"]
    assert setup["n_He"] == 1 and setup["n_W"] == 2 * setup["repeat"] ** 3
    assert setup["r_buff_A"] >= setup["expensive_cutoff_A"]
    assert len(setup["temperatures_K"]) >= 2
    for t in setup["temperatures_K"]:
        rt = r["temperatures"][str(t)]
        for name in ("mixed", "expensive"):
            run = rt[name]
            assert finite(run["D_m2_per_s"]) and run["D_m2_per_s"] > 0
            assert finite(run["D_err_m2_per_s"]) and run["D_err_m2_per_s"] >= 0
            assert len(run["D_blocks_A2_per_ps"]) == setup["n_blocks"]
            # the thermostat holds the temperature (short run: within 30 %)
            assert abs(run["mean_temperature_K"] - t) < 0.3 * t
            assert run["wall_seconds"] > 0
        # He is a seed: its core forces are the all-expensive ones (r_buff = cutoff)
        assert rt["force_check_last_step"]["max_error_core_eV_per_A"] < 1e-8
        assert rt["mixed"]["region_counts_last_step"]["core"] >= 5  # He + its W cage


@pytest.mark.slow
def test_screw_dislocation_quick(tmp_path):
    r = run_study("screw_dislocation", tmp_path)
    setup = r["setup"]
    assert r["quick"] and r["mlmix_version"]
    b = setup["lattice_parameter_A"] * math.sqrt(3) / 2
    assert math.isclose(setup["burgers_vector_A"][2], b, rel_tol=1e-9)
    assert setup["resolved_shear_stress_GPa"] > 0
    for name in ("mixed", "expensive"):
        run = r["runs"][name]
        assert len(run["time_ps"]) == len(run["core_x_A"]) >= 3
        assert all(finite(v) for v in run["core_x_A"] + run["core_y_A"])
        assert finite(run["glide_distance_A"])
        # the classifier finds the core (about 3 columns per Burgers vector) ...
        assert all(s["n_seeds"] >= setup["n_burgers"] for s in run["samples"])
        # ... near the line it started on (a quick run is too short to glide far)
        assert abs(run["core_x_A"][0]) < 2.0 and abs(run["core_y_A"][0]) < 2.0
        # and the expensive region holds the core
        assert run["top_csp_in_core_fraction_mean"] > 0.8
        assert run["margin_min_A"] is None or run["margin_min_A"] > 0
        assert run["ms_per_step"] > 0
