"""How the LAMMPS engine's ranks talk: the communicator, shared errors, gathers by tag.

Every rank runs the same engine; work that only rank 0 does (regions, the expensive
evaluation, callbacks) must never leave the others waiting. The rule here: whatever
rank 0 computes is broadcast *with* the error it raised (or None), and every rank
raises that error at the same point, so an MPI run stops cleanly instead of hanging.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import numpy as np

from ...errors import CalculationError, MlmixError


def mpi_comm() -> Any:
    """The world communicator (mpi4py), or None when mpi4py is not installed.

    Without mpi4py only one process can run (``mpirun -np 1`` or plain ``python``).
    """
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD


class SerialComm:
    """The few mpi4py calls the engine uses, for a single process without mpi4py."""

    rank = 0
    size = 1

    def gather(self, obj: Any, root: int = 0) -> list:
        return [obj]

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allreduce(self, obj: Any, op: Any = None) -> Any:
        return obj

    def allgather(self, obj: Any) -> list:
        return [obj]

    def Barrier(self) -> None:  # noqa: N802 - mpi4py's name
        pass


def engine_comm(comm: Any = None) -> Any:
    """``comm``, else the MPI world, else a :class:`SerialComm`."""
    return comm or mpi_comm() or SerialComm()


@contextmanager
def exit_on_error(comm: Any = None, stream: TextIO | None = None) -> Iterator[None]:
    """Turn an :class:`~mlmix.errors.MlmixError` into one message from rank 0 and
    exit status 1 on every rank (no hang, no duplicate messages).

    Use it around the body of an MPI script::

        with exit_on_error():
            engine = LammpsEngine(...)
            engine.run(1000)
    """
    comm = engine_comm(comm)
    try:
        yield
    except MlmixError as exc:
        if comm.rank == 0:
            print(f"mlmix: error: {exc}", file=stream or sys.stderr, flush=True)
        sys.exit(1)


def as_mlmix_error(exc: Exception) -> MlmixError:
    """An mlmix error as it is; anything else wrapped, so it can be shared and raised."""
    if isinstance(exc, MlmixError):
        return exc
    return CalculationError(f"{type(exc).__name__}: {exc}")


def root_call(comm: Any, fn: Callable, *args: Any) -> Any:
    """Run ``fn`` on rank 0 and share its result and any error with all ranks."""
    result, err = None, None
    if comm.rank == 0:
        try:
            result = fn(*args)
        except Exception as exc:  # noqa: BLE001 - a backend bug must not hang ranks
            err = as_mlmix_error(exc)
    result, err = comm.bcast((result, err), root=0)
    if err is not None:
        raise err
    return result


def raise_shared(comm: Any, err: MlmixError | None) -> None:
    """Raise rank 0's ``err`` (broadcast) on every rank, if there is one."""
    err = comm.bcast(err, root=0)
    if err is not None:
        raise err


def gather_by_tag(comm: Any, n_atoms: int, tag: np.ndarray,
                  *columns: np.ndarray) -> list[np.ndarray] | None:
    """Rank 0: the per-local-atom ``columns`` of every rank as ``(n_atoms, ...)`` arrays
    ordered by LAMMPS tag (atom ``tag - 1``); None on the other ranks.

    Args:
        tag: ``(nlocal,)`` int64 tags of this rank's atoms.
        columns: arrays with ``nlocal`` rows.
    """
    parts = comm.gather((tag, *columns), root=0)
    if comm.rank != 0:
        return None
    out = []
    for c, col in enumerate(columns):
        full = np.empty((n_atoms,) + col.shape[1:], dtype=col.dtype)
        for part in parts:
            full[part[0] - 1] = part[c + 1]
        out.append(full)
    return out
