"""The `mlmix` command's face: help for users, one version, defaults shown, where the
outputs went, progress of relaxations."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

import mlmix
from mlmix.cli import build_parser
from mlmix.cli import main as cli_main
from test_run import SW, TERSOFF, si_config, write_config

ROOT = Path(__file__).resolve().parents[1]
DOCSTRING_MARKUP = re.compile(r"``|:class:|:func:|:mod:|:meth:")


def _help(*argv: str, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        cli_main([*argv, "--help"])
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_version_has_one_source(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--version"])
    assert capsys.readouterr().out.strip() == f"mlmix {mlmix.__version__}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert (ROOT / "src" / "mlmix" / "_version.py").read_text().count(mlmix.__version__) == 1


def test_help_is_written_for_users(capsys):
    text = _help(capsys=capsys)
    assert not DOCSTRING_MARKUP.search(text), text
    assert "eV, Å, fs, K" in text and "configuration reference" in text
    for command in build_parser()._subparsers._group_actions[0].choices:
        page = _help(command, capsys=capsys)
        assert not DOCSTRING_MARKUP.search(page), (command, page)


def test_subcommand_help_shows_defaults_and_points_to_the_reference(capsys):
    demo = _help("demo", capsys=capsys)
    assert "--steps STEPS mixed MD steps to time (default: 10)" in demo
    assert "(default: None)" not in demo and "(default: False)" not in demo
    for command in ("run", "fit", "buffer"):
        assert "configuration reference" in _help(command, capsys=capsys)


def _relax_config(tmp_path: Path, progress: bool) -> Path:
    cfg = si_config(kind="relax", fmax=0.05)
    for key in ("ensemble", "temperature_K", "steps", "seed"):
        del cfg["task"][key]
    cfg["regions"]["nevery"] = 0
    cfg["potentials"] = {"expensive": dict(TERSOFF), "cheap": dict(SW)}
    cfg["output"]["progress"] = progress
    return write_config(tmp_path, cfg)


def test_run_says_where_its_outputs_are_and_relaxation_shows_progress(tmp_path, capsys):
    path = _relax_config(tmp_path, progress=True)
    assert cli_main(["run", str(path)]) == 0
    captured = capsys.readouterr()
    last = captured.out.strip().splitlines()[-1]
    assert last.endswith(f"outputs in {tmp_path / 'run-run'}"), last
    assert (tmp_path / "run-run" / "summary.json").is_file()
    assert re.search(r"\d+ ?iteration", captured.err) and "fmax" in captured.err


def test_relaxation_is_quiet_without_progress(tmp_path, capsys):
    path = _relax_config(tmp_path, progress=False)
    assert cli_main(["run", str(path)]) == 0
    assert "iteration" not in capsys.readouterr().err
