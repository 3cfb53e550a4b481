"""What a run writes while it runs: trajectory, thermo log, progress bar.

* :class:`TrajectoryWriter`: extended-XYZ frames with positions, momenta, the mixed
  forces and, per atom, ``mlmix_p`` (weight of the expensive forces),
  ``mlmix_expensive`` / ``mlmix_cheap`` (evaluated by each potential) and ``mlmix_id``
  (identity). OVITO reads these columns and colours by them.
* :class:`TableLog`: the thermo log, a whitespace table (``numpy.loadtxt`` reads it) of step, time,
  temperature, region counts, wall time per step and an energy-drift estimate.
* :func:`progress_bar`: tqdm on standard error with an ETA.

Both files are appended to and flushed after every record, and :meth:`tell` gives
their sizes, so a checkpoint can record them and a resumed run can cut the files back
to the checkpoint (:func:`truncate`) and continue them seamlessly.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
from ase import Atoms, units

from .identity import ID_ARRAY

LOG_COLUMNS = ("step", "time_fs", "temperature_K", "n_core", "n_weighted", "n_expensive",
               "n_cheap", "seconds_per_step", "drift_eV_per_ps")
FRAME_ARRAYS = ("momenta", "mlmix_p", "mlmix_expensive", "mlmix_cheap", ID_ARRAY)


def truncate(path: Path, size: int) -> None:
    """Cut ``path`` back to ``size`` bytes (what a checkpoint recorded)."""
    if Path(path).stat().st_size < size:
        raise OSError(f"{path} is shorter than its checkpoint says ({size} bytes); "
                      "it was changed after the checkpoint")
    os.truncate(path, size)


class _AppendFile:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fh = open(self.path, "a")

    def tell(self) -> int:
        self._fh.flush()
        return os.path.getsize(self.path)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TrajectoryWriter(_AppendFile):
    """Extended-XYZ frames of a run (see the module docstring for the columns)."""

    def write(self, atoms: Atoms, step: int, time_fs: float,
              forces: np.ndarray | None = None) -> None:
        """Append one frame.

        Args:
            atoms: the structure; its ``mlmix_*`` arrays (set by the mixed calculator)
                and momenta are written if present.
            step: MD step or optimiser iteration.
            time_fs: simulated time, fs (0 for optimisers).
            forces: ``(N, 3)`` eV/Å, the forces to store (e.g. the mixed forces).
        """
        from ase.io import write

        frame = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        for name in FRAME_ARRAYS:
            if name in atoms.arrays:
                frame.arrays[name] = atoms.arrays[name].copy()
        if forces is not None:
            frame.arrays["forces"] = np.asarray(forces, float).copy()
        frame.info.update(step=int(step), time_fs=float(time_fs))
        buffer = io.StringIO()
        # parallel=False: under mpirun only rank 0 writes; ASE would otherwise broadcast
        write(buffer, frame, format="extxyz", parallel=False)
        self._fh.write(buffer.getvalue())
        self._fh.flush()


class DriftEstimate:
    """Running least-squares slope of an energy against time (eV/ps).

    Keeps five sums, not the series, so a long run costs no memory and a checkpoint
    carries it in a few numbers. Times and energies are taken relative to the first
    sample, which keeps the sums well conditioned.
    """

    def __init__(self, state: dict | None = None):
        self.state = dict(state) if state else {"n": 0, "t0": 0.0, "e0": 0.0, "st": 0.0,
                                                "se": 0.0, "stt": 0.0, "ste": 0.0}

    def add(self, time_fs: float, energy_eV: float) -> None:
        s = self.state
        if not np.isfinite(energy_eV):
            return
        if s["n"] == 0:
            s["t0"], s["e0"] = time_fs, energy_eV
        t, e = time_fs - s["t0"], energy_eV - s["e0"]
        s["n"] += 1
        s["st"] += t
        s["se"] += e
        s["stt"] += t * t
        s["ste"] += t * e

    def slope_eV_per_ps(self) -> float:
        """The slope so far, eV/ps (NaN with fewer than 3 samples)."""
        s = self.state
        if s["n"] < 3:
            return float("nan")
        var = s["n"] * s["stt"] - s["st"] ** 2
        if var <= 0:
            return float("nan")
        return (s["n"] * s["ste"] - s["st"] * s["se"]) / var * 1000.0


class TableLog(_AppendFile):
    """A whitespace table, one row per :meth:`record`, header ``# col1 col2 ...``.

    Comment lines (``#``) may come first; the last one before the data names the
    columns, so ``numpy.loadtxt`` (and :func:`mlmix.figures.plot_log`) read it.
    """

    def __init__(self, path: Path, columns: tuple[str, ...] = LOG_COLUMNS,
                 header: str | None = None):
        new = not Path(path).exists() or Path(path).stat().st_size == 0
        super().__init__(path)
        self.columns = columns
        if new:
            if header:
                self._fh.write("".join(f"# {line}\n" for line in header.splitlines()))
            self._fh.write("# " + " ".join(columns) + "\n")
            self._fh.flush()

    def record(self, row: dict) -> None:
        """Append a row given as ``{column: value}`` for every column."""
        values = []
        for name in self.columns:
            v = row[name]
            values.append(f"{v:d}" if isinstance(v, (int, np.integer)) else f"{v:.9g}")
        self._fh.write(" ".join(values) + "\n")
        self._fh.flush()


THERMO_NOTE = """\
drift_eV_per_ps: least-squares slope, over the run so far, of the kinetic energy plus
the weighted energy sum_i p_i E_i^exp + (1 - p_i) E_i^cheap. An estimate: the mixed
forces have no energy; nan under a thermostat (it exchanges energy by design).
'mlmix drift RUN_DIR' re-evaluates saved frames with the expensive potential."""


def temperature_K(atoms: Atoms) -> float:
    """Kinetic temperature, K, with 3N degrees of freedom (no constraint correction)."""
    return float(2 * atoms.get_kinetic_energy() / (3 * len(atoms) * units.kB))


def progress_bar(total: int, initial: int, enabled: bool | str, unit: str = "step"):
    """A tqdm bar with ETA on standard error; ``"auto"`` shows it on a terminal only."""
    from tqdm import tqdm

    if enabled == "auto":
        enabled = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not enabled, unit=unit,
                file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
