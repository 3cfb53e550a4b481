"""The shipped demo potential and ``mlmix demo``.

The cheap potential of the demo is one mlmix fitted itself (``mlmix fit``) to the
quadratic SNAP of Zuo et al.; these tests check that it ships, loads, reproduces the
expensive lattice parameter and elastic constants, that the demo's mixed forces are
exact in the core, and (slow) that the committed config reproduces the shipped files.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from mlmix import demo
from mlmix.config import load_toml
from mlmix.errors import ConfigurationError
from mlmix.fitting import elastic, pipeline
from mlmix.fitting.data import relax_bulk
from mlmix.fitting.uncertainty import SUFFIX as UNCERTAINTY
from mlmix.fitting.uncertainty import Uncertainty
from mlmix.potentials.lammps import LammpsPotential


def _shipped_potential_files() -> list[Path]:
    cfg = demo.demo_config()
    stem = cfg["output"]["stem"]
    return sorted(p for p in demo.demo_potential_dir().iterdir()
                  if p.name.startswith(stem + ".") and not p.name.endswith(UNCERTAINTY))


# ------------------------------------------------------------------ shipped files


def test_shipped_files_exist_and_load():
    folder = demo.demo_potential_dir()
    assert (folder / demo.DEMO_CONFIG).is_file()
    assert (folder / demo.DEMO_REPORT).is_file()
    files = _shipped_potential_files()
    assert files, f"no potential file of the config's stem in {folder}"

    # The shipped config is a valid fit config, and it says how to re-run it.
    text = (folder / demo.DEMO_CONFIG).read_text()
    assert "mlmix fit" in text
    cfg = pipeline.parse_config(load_toml(folder / demo.DEMO_CONFIG), folder)
    assert cfg.element == "Si"

    # The report is that fit's report: same model, and it lists the shipped files.
    report = demo.demo_fit_report()
    assert report["config"]["model"] == cfg.model
    assert {p.name for p in files} <= set(report["files"])

    pot = demo.demo_cheap_potential()
    try:
        assert isinstance(pot, LammpsPotential)
        atoms = bulk("Si", "diamond", a=5.46, cubic=True).repeat(2)
        atoms.rattle(0.05, seed=1)
        ev = pot.evaluate(atoms)
        assert ev.forces.shape == (len(atoms), 3)
        assert np.all(np.isfinite(ev.forces)) and np.all(np.isfinite(ev.energies))
        assert np.abs(ev.forces).max() > 1e-3  # a rattled crystal feels forces
    finally:
        pot.close()


def test_missing_demo_folder_is_a_configuration_error(monkeypatch, tmp_path):
    monkeypatch.setattr(demo.resources, "files", lambda package: tmp_path)
    with pytest.raises(ConfigurationError, match="reinstall mlmix"):
        demo.demo_potential_dir()


@pytest.mark.parametrize("kwargs, match", [
    ({"repeat": 2}, "repeat must be an integer >= 3"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"expensive_steps": 1.5}, "expensive_steps must be an integer >= 1"),
    ({"temperature": -1.0}, "temperature must be >= 0 K"),
])
def test_run_demo_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        demo.run_demo(**kwargs)


# ------------------------------------------------------- physics of the shipped fit


@pytest.fixture(scope="module")
def bulk_properties():
    """Relaxed lattice parameter (Å) and cubic C (GPa) of both potentials, one 8-atom
    diamond cell each (relaxed from the same start)."""
    start = bulk("Si", "diamond", a=5.43, cubic=True)
    out = {}
    for name, make in (("expensive", demo.demo_expensive_potential),
                       ("cheap", demo.demo_cheap_potential)):
        pot = make()
        try:
            relaxed, info = relax_bulk(start, pot)
            c = elastic.elastic_constants(relaxed, pot).cubic()
        finally:
            pot.close()
        out[name] = (info.lattice_parameter, c)
    return out


def test_shipped_potential_matches_expensive_lattice_parameter(bulk_properties):
    a_exp, _ = bulk_properties["expensive"]
    a_cheap, _ = bulk_properties["cheap"]
    assert abs(a_cheap - a_exp) < 1e-3, (a_cheap, a_exp)


def test_shipped_potential_matches_expensive_elastic_constants(bulk_properties):
    _, c_exp = bulk_properties["expensive"]
    _, c_cheap = bulk_properties["cheap"]
    for key in ("C11", "C12", "C44"):
        expected, got = getattr(c_exp, key), getattr(c_cheap, key)
        assert abs(got - expected) <= 0.03 * abs(expected), (key, got, expected)


# ------------------------------------------------------------------------- the demo


def test_run_demo_small_cell_is_exact_in_the_core():
    result = demo.run_demo(repeat=5, steps=3, expensive_steps=1)
    assert result.n_atoms == 8 * 5**3 - 1
    assert result.n_core > 0
    assert result.core_force_error_max < 1e-8
    # The expensive potential really skipped part of the system.
    assert result.n_core < result.n_expensive_region <= result.n_expensive_evaluated
    assert result.n_expensive_evaluated < result.n_atoms
    # ... and the cheap one was really used: blended forces differ from all-expensive.
    assert result.blend_force_error_rms is not None and 1e-4 < result.blend_force_error_rms < 1.0
    assert result.seconds_per_step_mixed > 0 and result.seconds_per_step_expensive > 0
    text = demo.format_result(result)
    assert result.cheap in text and demo.DEMO_CONFIG in text


# ------------------------------------------------------ the committed config re-runs

_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _tokens(path: Path) -> tuple[list[str], np.ndarray]:
    """Words and numbers of a potential file, comment lines (``#``) dropped."""
    words, numbers = [], []
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        for tok in line.split():
            (numbers if _NUMBER.match(tok) else words).append(float(tok) if _NUMBER.match(tok) else tok)
    return words, np.array(numbers)


@pytest.mark.slow
def test_committed_config_reproduces_shipped_potential(tmp_path):
    folder = demo.demo_potential_dir()
    cfg = pipeline.parse_config(load_toml(folder / demo.DEMO_CONFIG), tmp_path)
    t0 = time.perf_counter()
    pipeline.run(cfg, progress=None)
    seconds = time.perf_counter() - t0
    for shipped in _shipped_potential_files():
        words, numbers = _tokens(shipped)
        words_new, numbers_new = _tokens(cfg.output / shipped.name)
        assert words_new == words
        # Labels and the constrained solve repeat to round-off; the lambda search
        # amplifies it a little, so compare relative to the largest coefficient.
        np.testing.assert_allclose(numbers_new, numbers, rtol=1e-6,
                                   atol=1e-7 * np.abs(numbers).max())
    assert seconds < 600  # a re-run is cheap (about a minute on 2 quiet cores)
    # and so does the uncertainty file shipped beside it (same active sets)
    stem = cfg.stem + UNCERTAINTY
    shipped, again = (Uncertainty.load(d / stem) for d in (folder, cfg.output))
    assert again.threshold == pytest.approx(shipped.threshold, rel=1e-6)
    np.testing.assert_allclose(again.species["Si"].inverse, shipped.species["Si"].inverse,
                               rtol=1e-6, atol=1e-9 * np.abs(shipped.species["Si"].inverse).max())
