"""What a run writes while it runs: trajectory, thermo log, progress bar.

* :class:`TrajectoryWriter`: extended-XYZ frames with positions, momenta, the mixed
  forces and, per atom, ``mlmix_p`` (weight of the expensive forces),
  ``mlmix_expensive`` / ``mlmix_cheap`` (evaluated by each potential) and ``mlmix_id``
  (identity). OVITO reads these columns and colours by them.
* :class:`TableLog`: the thermo log, a whitespace table (``numpy.loadtxt`` reads it) of step, time,
  temperature, region counts, wall time per step and an energy-drift estimate.
* :func:`progress_bar`: tqdm on standard error with an ETA.

Both files are appended to and flushed after every record. A checkpoint records
each file's size and the CRC-32 of its bytes (:func:`files_state`); a resumed
run first checks that the files still match (:func:`files_problems`: not deleted, not
shortened, not rewritten), then cuts them back to the checkpoint (:func:`truncate`)
and continues them seamlessly. A write that fails (a full disk) raises
:class:`~mlmix.errors.OutputError` naming the file.
"""

from __future__ import annotations

import io
import os
import sys
import zlib
from pathlib import Path

import numpy as np
from ase import Atoms, units

from .identity import ID_ARRAY
from .rundir import output_errors

LOG_COLUMNS = ("step", "time_fs", "temperature_K", "n_core", "n_weighted", "n_expensive",
               "n_cheap", "seconds_per_step", "drift_eV_per_ps")
FRAME_ARRAYS = ("momenta", "mlmix_p", "mlmix_expensive", "mlmix_cheap", ID_ARRAY)


def file_crc32(path: Path, size: int) -> int:
    """CRC-32 of the first ``size`` bytes of ``path`` (read in 16 MiB blocks)."""
    crc, left = 0, size
    with open(path, "rb") as fh:
        while left > 0:
            block = fh.read(min(left, 1 << 24))
            if not block:
                break
            crc = zlib.crc32(block, crc)
            left -= len(block)
    return crc


def files_state(files: dict) -> dict:
    """What a checkpoint records of open output files (``{key: _AppendFile}``): per
    key the file name, its size in bytes and the CRC-32 of all of it, so that any
    later change to what the checkpoint covers is noticed."""
    return {key: {"name": f.path.name, "size": f.tell(), "crc32": f.crc32}
            for key, f in files.items()}


def _entry(value) -> dict:
    # checkpoints of mlmix 0.1 stored a bare size
    return value if isinstance(value, dict) else {"size": int(value)}


def files_problems(run_dir: Path, state: dict, names: dict[str, str]) -> list[str]:
    """What no longer matches between the output files in ``run_dir`` and a
    checkpoint's :func:`files_state` (``names``: key -> file name). Empty if the run
    can continue them."""
    problems = []
    for key, value in state.items():
        entry = _entry(value)
        path = run_dir / entry.get("name", names.get(key, key))
        size = int(entry["size"])
        if not path.is_file():
            problems.append(f"{path} is missing (the checkpoint expects {size} bytes of it)")
        elif path.stat().st_size < size:
            problems.append(f"{path} is shorter ({path.stat().st_size} bytes) than the "
                            f"checkpoint recorded ({size} bytes): it was cut after the "
                            "checkpoint")
        elif "crc32" in entry and file_crc32(path, size) != entry["crc32"]:
            problems.append(f"{path} was changed before byte {size}, which the checkpoint "
                            "recorded: it is no longer the file this run wrote")
    return problems


def truncate(path: Path, size: int) -> None:
    """Cut ``path`` back to ``size`` bytes (what a checkpoint recorded)."""
    if Path(path).stat().st_size < size:
        raise OSError(f"{path} is shorter than its checkpoint says ({size} bytes); "
                      "it was changed after the checkpoint")
    with output_errors(path):
        os.truncate(path, size)


def truncate_files(run_dir: Path, state: dict, names: dict[str, str]) -> None:
    """Cut every file of a checkpoint's :func:`files_state` back to its size."""
    for key, value in state.items():
        entry = _entry(value)
        truncate(run_dir / entry.get("name", names.get(key, key)), int(entry["size"]))


class _AppendFile:
    # Keeps the CRC-32 of everything in the file as it grows, for files_state.
    def __init__(self, path: Path):
        self.path = Path(path)
        with output_errors(self.path):
            size = self.path.stat().st_size if self.path.is_file() else 0
            self.crc32 = file_crc32(self.path, size) if size else 0
            self._fh = open(self.path, "a", encoding="utf-8")

    def _append(self, text: str) -> None:
        with output_errors(self.path):
            self._fh.write(text)
            self._fh.flush()
        self.crc32 = zlib.crc32(text.encode("utf-8"), self.crc32)

    def tell(self) -> int:
        with output_errors(self.path):
            self._fh.flush()
        return os.path.getsize(self.path)

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError:
            pass  # a failed flush was already reported by the write that failed

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
        self._append(buffer.getvalue())


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
            lines = [f"# {line}\n" for line in (header or "").splitlines()]
            self._append("".join(lines) + "# " + " ".join(columns) + "\n")

    def record(self, row: dict) -> None:
        """Append a row given as ``{column: value}`` for every column."""
        values = []
        for name in self.columns:
            v = row[name]
            values.append(f"{v:d}" if isinstance(v, (int, np.integer)) else f"{v:.9g}")
        self._append(" ".join(values) + "\n")


THERMO_NOTE = """\
drift_eV_per_ps: least-squares slope, over the run so far, of the kinetic energy plus
the weighted energy sum_i p_i E_i^exp + (1 - p_i) E_i^cheap. An estimate: the mixed
forces have no energy; nan under a thermostat (it exchanges energy by design).
'mlmix drift RUN_DIR' re-evaluates saved frames with the expensive potential."""


ENERGY_LOG_COLUMNS = ("potential_energy_eV", "total_energy_eV", "exchanged_eV")
"""Thermo-log columns of energy mixing: E, E + K, and the energy the region rebuilds
exchanged so far (taken from the kinetic energy by the correction, when it is on)."""
ENERGY_THERMO_NOTE = """\
drift_eV_per_ps: least-squares slope, over the run so far, of the kinetic energy plus the
mixed energy sum_i w_i E_i^exp + (1 - w_i) E_i^cheap, the conserved energy of energy
mixing (mixing.mode = 'energy'); nan under a thermostat or barostat.
potential_energy_eV, total_energy_eV: E and E + K; exchanged_eV: the energy region
rebuilds exchanged so far, E(new weights) - E(old weights) summed."""


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
