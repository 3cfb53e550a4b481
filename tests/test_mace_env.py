"""Runs tests/test_mace.py in the MACE environment (.venv-mace, made by
tests/make_mace_env.sh): mace-torch pins e3nn 0.4.4 and sevenn needs e3nn >= 0.5, so
the two cannot share the environment that runs the rest of the suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def mace_python() -> Path | None:
    """The MACE environment's interpreter: $MLMIX_MACE_PYTHON, else .venv-mace."""
    given = os.environ.get("MLMIX_MACE_PYTHON")
    path = Path(given) if given else ROOT / ".venv-mace" / "bin" / "python"
    return path if path.exists() else None


def test_mace_tests_pass_in_the_mace_environment():
    try:
        import mace  # noqa: F401
        pytest.skip("mace-torch is installed here: tests/test_mace.py runs directly")
    except ImportError:
        pass
    python = mace_python()
    if python is None:
        pytest.skip("no MACE environment: run `bash tests/make_mace_env.sh` first (the "
                    "README's test command does)")
    done = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_mace.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    tail = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, tail
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1], tail
    sys.stdout.write(tail)
