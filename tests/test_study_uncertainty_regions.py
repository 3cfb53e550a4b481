"""Smoke run of ``studies/uncertainty_regions.py --quick``: the uncertainty classifier
finds four defects without a user seed, and its seeds cover the cheap model's errors."""

from __future__ import annotations

import math

from test_studies_b import run_study


def test_uncertainty_regions_quick(tmp_path):
    r = run_study("uncertainty_regions", tmp_path)
    assert r["quick"] and set(r["cases"]) == {"Si vacancy", "W <111> dumbbell",
                                              "W(100) surface", "W screw dislocation"}
    for name, c in r["cases"].items():
        assert c["n_structural"] > 0, name
        # every atom the structural classifier picks, the uncertainty classifier picks ...
        assert c["fraction_of_structural_also_uncertain"] == 1.0, name
        # ... and nothing far from the defect (but the W interstitial is a crowdion,
        # whose displacements run along its <111> row through the periodic cell)
        if name != "W <111> dumbbell":
            assert c["grade_far_max"] is None or c["grade_far_max"] < c["threshold"], name
        m = c["mixed"]
        for kind in ("structural", "uncertainty_equal_size", "uncertainty_threshold"):
            assert m[kind]["core_max_force_error_eV_per_A"] < 1e-8, (name, kind)  # exact core
        assert m["uncertainty_threshold"]["max_force_error_eV_per_A"] <= \
            m["structural"]["max_force_error_eV_per_A"] + 1e-9, name
        assert all(math.isfinite(v) and v > 0 for v in c["seconds"].values()), name
    # the surface's second layer (full 8 neighbours, so centrosymmetric) is where the
    # cheap model errs: only the uncertainty classifier takes it
    s = r["cases"]["W(100) surface"]
    assert s["n_extra"] >= s["n_structural"]
    assert s["mixed"]["uncertainty_threshold"]["max_force_error_eV_per_A"] < \
        0.5 * s["mixed"]["structural"]["max_force_error_eV_per_A"]
