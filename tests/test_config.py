"""Config checking: every mistake is named, in one message, before any work."""

from __future__ import annotations

import pytest

from mlmix import ConfigurationError
from mlmix.config import Problems, load_toml
from mlmix.potentials.factory import make_potential
from mlmix.potentials.lammps import LammpsPotential


def test_load_toml_errors(tmp_path):
    with pytest.raises(ConfigurationError, match="config file 'nope.toml' not found"):
        load_toml("nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("a = [1,\n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_toml(bad)


def test_problems_are_collected_and_reported_together():
    problems = Problems("fit.toml")
    table = {"alpha": -1, "steps": 2.5, "method": "magic", "colour": "red"}
    problems.number(table, "fit", "alpha", minimum=0)
    problems.number(table, "fit", "steps", integer=True)
    problems.choice(table, "fit", "method", {"lambda", "exact"})
    problems.unknown_keys(table, "fit", {"alpha", "steps", "method"})
    problems.number(table, "fit", "reg")  # missing, no default
    with pytest.raises(ConfigurationError) as info:
        problems.raise_if_any()
    message = str(info.value)
    assert message.startswith("fit.toml has 5 problem(s):")
    for text in ("fit.alpha: must be >= 0, got -1", "fit.steps: must be an integer, got 2.5",
                 "fit.method: must be one of ['exact', 'lambda'], got 'magic'",
                 "fit.colour: unknown key", "fit.reg: missing"):
        assert text in message


def test_make_potential_from_descriptions():
    pot = make_potential({"backend": "lammps", "style": "tersoff", "file": "Si.tersoff",
                          "species": ["Si"]})
    assert isinstance(pot, LammpsPotential) and pot.species == {"Si"}
    with pytest.raises(ConfigurationError) as info:
        make_potential({"backend": "lammps", "style": "snapp", "species": "Si", "colour": 1},
                       where="expensive")
    message = str(info.value)
    assert "expensive.style: must be one of" in message
    assert "expensive.colour: unknown key" in message
    assert "expensive.file: missing" in message
    assert "expensive.species: must be a list of element symbols" in message
    with pytest.raises(ConfigurationError, match=r"'Si\.tersof' not found.*close matches: Si\.tersoff"):
        make_potential({"backend": "lammps", "style": "tersoff", "file": "Si.tersof"})
