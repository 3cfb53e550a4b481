"""The LAMMPS engine: LAMMPS integrates and computes the cheap potential, mlmix adds the
weighted expensive correction through ``fix external``, over MPI ranks.

* :class:`LammpsEngine` (:mod:`.engine`): the mixed MD itself, from Python or an MPI script;
* :func:`run_md_lammps` (:mod:`.run`): ``mlmix run`` with ``[engine] kind = "lammps"``;
* :class:`LammpsClassifier`: seeds from a LAMMPS per-atom compute;
* :func:`exit_on_error`, :func:`mpi_comm`: for MPI scripts.
"""

from .classifier import LammpsClassifier
from .comm import exit_on_error, mpi_comm
from .engine import EngineStep, LammpsEngine
from .thermostat import counter_normals

__all__ = ["EngineStep", "LammpsClassifier", "LammpsEngine", "counter_normals", "exit_on_error",
           "mpi_comm", "run_md_lammps"]


def __getattr__(name: str):
    # run_md_lammps pulls in the run-directory machinery; load it when asked for.
    if name == "run_md_lammps":
        from .run import run_md_lammps

        return run_md_lammps
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
