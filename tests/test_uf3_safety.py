"""UF3 below the first two-body knot (LAMMPS's ``pair_style uf3`` returns garbage there).

Files mlmix writes continue below their fitted range with a repulsive wall down to
0 Å; a LammpsPotential on a UF3 file whose first knot is above 0 refuses, before any
work, a structure with a closer pair. Everything is checked with the real pair style.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from conftest import shared_data
from mlmix import demo
from mlmix.errors import ConfigurationError
from mlmix.fitting import pipeline, uf3
from mlmix.fitting.uf3 import Uf3Model
from mlmix.potentials.lammps import LammpsPotential

BOX = 20.0  # Å, periodic box of an isolated pair (larger than every cutoff here)


def dimer(a: str, b: str, r: float) -> Atoms:
    return Atoms([a, b], positions=[[5.0, 5.0, 5.0], [5.0 + r, 5.0, 5.0]], cell=[BOX] * 3, pbc=True)


def pair_curve(pot, a: str, b: str, distances) -> tuple[np.ndarray, np.ndarray]:
    """Energy (eV) of an isolated a-b pair and the force on b along the bond (eV/Å;
    positive pushes the atoms apart)."""
    e, f = [], []
    for r in distances:
        ev = pot.evaluate(dimer(a, b, r))
        e.append(ev.energies.sum())
        f.append(ev.forces[1, 0])
    return np.array(e), np.array(f)


def assert_repulsive_below(pot, a: str, b: str, r_first: float) -> None:
    """Finite, monotonic energy and outward forces from 0.5 Å up to r_first, and no
    jump onto the fitted range at r_first."""
    r = np.linspace(0.5, r_first, 80, endpoint=False)
    e, f = pair_curve(pot, a, b, r)
    assert np.all(np.isfinite(e)) and np.all(np.isfinite(f))
    assert np.all(np.diff(e) < 0), "energy must rise as the pair is compressed"
    assert np.all(f > 0), "the force must push the atoms apart"
    # Energy and force belong together: trapezoid integral of the force.
    np.testing.assert_allclose(-np.diff(e), 0.5 * (f[1:] + f[:-1]) * np.diff(r), rtol=1e-3)
    # Onto the fitted range: the energy step over 0.01 Å is what the forces there say.
    (e_in, e_out), (f_in, f_out) = pair_curve(pot, a, b, [r_first - 0.01, r_first])
    assert 0 < e_in - e_out <= 0.01 * max(f_in, f_out) * (1 + 1e-6)


# --------------------------------------------------------------- files mlmix writes


def test_shipped_demo_potential_is_a_wall_below_its_fitted_range():
    """The reported case: 1.4e244 eV at 1.99 Å against 0.28 eV at 2.0 Å."""
    r_first = demo.demo_config()["model"]["r2_min"]
    pot = demo.demo_cheap_potential()
    try:
        assert_repulsive_below(pot, "Si", "Si", r_first)
        # The demo fit is repulsive at its first knot, so the force is continuous too.
        (e_in, e_out), (f_in, f_out) = pair_curve(pot, "Si", "Si", [r_first - 0.01, r_first])
        assert e_in - e_out == pytest.approx(0.005 * (f_in + f_out), rel=1e-3)
    finally:
        pot.close()


@pytest.mark.parametrize("repulsive_at_first_knot", [True, False])
def test_every_file_the_writer_produces_is_a_wall_below_r2_min(repulsive_at_first_knot, tmp_path):
    """Random two-species coefficients, the fit repulsive or attractive at r2_min: each
    pair type is a wall below r2_min, and the fitted range is the model's."""
    rng = np.random.default_rng(21 if repulsive_at_first_knot else 22)
    r2_min, n2 = 2.2, 8
    model = Uf3Model(["W", "Mo"], r2=4.5, n2=n2, r2_min=r2_min, r3=3.2, n3=2, r3_min=2.2,
                     one_body=False)
    c = rng.normal(0.0, 0.2, model.n_coefficients)
    for block in range(3):  # W-W, W-Mo, Mo-Mo: n2 free coefficients each, first in c
        first = block * n2
        c[first + 1] = c[first] + (-0.3 if repulsive_at_first_knot else 0.3)
    pot = model.potential(c, tmp_path, "wmo")
    try:
        for a, b in (("W", "W"), ("W", "Mo"), ("Mo", "Mo")):
            assert_repulsive_below(pot, a, b, r2_min)
            inside = np.linspace(r2_min, 4.49, 40)
            e, _ = pair_curve(pot, a, b, inside)
            expected = model.design_matrix([dimer(a, b, r) for r in inside], forces=False).energy @ c
            np.testing.assert_allclose(e, expected, rtol=0, atol=1e-9)
    finally:
        pot.close()


# ----------------------------------------------------------------- foreign files

# A two-body UF3 file as other writers make them: knots from 1.5 Å (the uf3 package's
# r_min), nothing below.
FOREIGN_2B = """#UF3 POT UNITS: metal DATE: test AUTHOR: test CITATION:
2B Si Si 0 3 nk
4.0 13
1.5 1.5 1.5 1.5 2.0 2.5 3.0 3.5 4.0 4.0 4.0 4.0 4.0
9
2.0 1.0 -0.2 -0.5 -0.2 -0.05 0.0 0.0 0.0
#
"""


@pytest.fixture
def foreign_si(tmp_path):
    path = tmp_path / "foreign.uf3"
    path.write_text(FOREIGN_2B)
    pot = LammpsPotential("uf3 2", [f"* * {path} Si"], ["Si"])
    yield pot
    pot.close()


def test_foreign_file_refuses_a_pair_below_its_first_knot(foreign_si):
    atoms = Atoms("Si3", positions=[[5, 5, 5], [8, 5, 5], [5, 6.2, 5]], cell=[BOX] * 3, pbc=True)
    with pytest.raises(ConfigurationError, match=(
            r"atoms 0 \(Si\) and 2 \(Si\) are 1\.2 Å apart, closer than the first "
            r"two-body knot 1\.5 Å of foreign\.uf3 for Si-Si.*defined down to 0 Å")):
        foreign_si.evaluate(atoms)
    # across the periodic boundary too
    atoms.positions[2] = [5.0 - 1.3 + BOX, 5.0, 5.0]
    with pytest.raises(ConfigurationError, match=r"atoms 0 \(Si\) and 2 \(Si\) are 1\.3 Å"):
        foreign_si.evaluate(atoms)
    # at the knot and above it evaluates, finite
    atoms.positions[2] = [5.0, 6.5, 5.0]
    ev = foreign_si.evaluate(atoms)
    assert np.all(np.isfinite(ev.forces)) and np.isfinite(ev.energies.sum())


def test_shared_w_he_file_names_the_mixed_pair():
    """W.uf3 (knots from 0.001 Å): a He on top of a W atom is refused with both species."""
    pot = LammpsPotential.uf3(shared_data("W.uf3"), ["W", "He"])
    try:
        atoms = bulk("W", "bcc", a=3.165, cubic=True).repeat(2)
        atoms += Atoms("He", positions=[atoms.positions[3] + [0.0005, 0.0, 0.0]])
        with pytest.raises(ConfigurationError,
                           match=r"atoms 3 \(W\) and 16 \(He\) are 0\.0005 Å apart.*knot "
                                 r"0\.001 Å of W\.uf3 for W-He"):
            pot.evaluate(atoms)
        atoms.positions[16] = atoms.positions[3] + [1.2, 0.0, 0.0]
        assert np.isfinite(pot.evaluate(atoms).energies.sum())
    finally:
        pot.close()


# ------------------------------------------------- mlmix fit with a bad comparison model

# The reported case: a Ta UF3 distilled from Ta06A SNAP (+ZBL) on 3 hot MD frames. Its
# unconstrained fit attracts at the first knot (2.4 Å) and has no minimum near the
# lattice parameter: the bulk relaxation compresses it until pairs reach that knot.
TA_CONFIG = {
    "expensive": {"backend": "lammps", "style": "include", "file": "Ta06A.snap", "species": ["Ta"]},
    "structure": {"element": "Ta", "crystal": "bcc", "a": 3.31, "repeat": 2},
    "hard": {"n_strains": 5},
    "soft": {"temperature_K": 2000.0, "n_frames": 4, "interval": 10, "seed": 3},
    "model": {"family": "uf3", "r2": 4.7, "n2": 8, "r2_min": 2.4, "r3": 3.5, "n3": 2, "r3_min": 2.4},
    "fit": {"alpha": 1e-5},
    "output": {"directory": "out", "stem": "ta"},
}


def _ta_fit(tmp_path, **model):
    cfg = {**TA_CONFIG, "model": {**TA_CONFIG["model"], **model}}
    return pipeline.parse_config(cfg, tmp_path)


def _written(folder) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


def test_reported_ta_fit_runs_and_its_comparison_model_stops_at_the_wall(tmp_path):
    cfg = _ta_fit(tmp_path)
    result = pipeline.run(cfg, progress=None)
    models = result["models"]
    assert {"ta.uf3", "ta_unconstrained.uf3", "report.json", "report.png"} <= _written(cfg.output)
    a_exp = models["expensive"]["lattice_parameter_A"]
    assert models["constrained"]["lattice_parameter_A"] == pytest.approx(a_exp, abs=1e-3)
    # The comparison model collapses (its fit has no minimum near a) ...
    a_unc = models["unconstrained"]["lattice_parameter_A"]
    assert a_unc < a_exp - 0.3
    # ... but only onto its wall: nearest neighbours (a sqrt(3)/2) not below r2_min.
    assert a_unc * np.sqrt(3) / 2 >= cfg.model["r2_min"] * (1 - 1e-6)


def test_failing_comparison_model_is_reported_and_the_product_written(tmp_path, monkeypatch):
    """The same fit with the files written as before walls (first knot 2.4 Å, nothing
    below, as the reported run had): the unconstrained relaxation reaches pairs below
    the knot, which the potential refuses; the constrained potential and the report are
    still written, and the report says what failed."""
    monkeypatch.setattr(uf3, "extend_to_zero", lambda knots, coefficients: (knots, coefficients))
    cfg = _ta_fit(tmp_path)
    result = pipeline.run(cfg, progress=None)
    failed = result["models"]["unconstrained"]["failed"]
    assert "ConfigurationError" in failed
    assert re.search(r"atoms \d+ \(Ta\) and \d+ \(Ta\) are [\d.]+ Å apart.*first two-body "
                     r"knot 2\.4 Å of ta_unconstrained\.uf3", failed)
    assert {"ta.uf3", "report.json", "report.png"} <= _written(cfg.output)
    on_disk = json.loads((cfg.output / "report.json").read_text())
    assert on_disk["models"]["unconstrained"] == {"failed": failed}
    assert on_disk["models"]["constrained"]["lattice_parameter_A"] == pytest.approx(
        on_disk["models"]["expensive"]["lattice_parameter_A"], abs=1e-3)


def test_failing_constrained_model_still_fails_the_run(tmp_path, monkeypatch):
    """First knots above pairs of the held-out frames, files without walls: now the
    product itself cannot be evaluated, and the run fails with nothing but its cache."""
    monkeypatch.setattr(uf3, "extend_to_zero", lambda knots, coefficients: (knots, coefficients))
    cfg = _ta_fit(tmp_path, r2_min=2.55, r3_min=2.55)
    with pytest.raises(ConfigurationError, match=r"uf3:ta\.uf3: atoms .* first two-body knot 2\.55"):
        pipeline.run(cfg, progress=None)
    assert _written(cfg.output) == {"cache"}
