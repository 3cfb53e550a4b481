"""Seeds from a LAMMPS per-atom compute, for the LAMMPS engine (computed in parallel)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LammpsClassifier:
    """Seeds from a LAMMPS per-atom compute, time-averaged (method.md §2).

    The engine defines ``compute mlmix_q all <compute> <args>`` and samples it on
    region-rebuild steps; seeds are atoms whose mean over the last ``window`` samples
    lies in ``[lb, ub]``, re-chosen every ``nfreq`` steps (see
    :class:`~mlmix.seeds.ClassifierSeeds`, which does the bookkeeping).

    Attributes:
        compute: a per-atom LAMMPS compute style, e.g. ``"coord/atom"``,
            ``"cna/atom"``, ``"centro/atom"``.
        args: its arguments, e.g. ``"cutoff 2.9"``, ``"3.3"``, ``"bcc"``.
        lb, ub: inclusive bounds on the time-averaged quantity.
        nfreq: steps between seed choices (a multiple of the rebuild period).
        window: samples averaged (>= 1).
        initial: seed indices used before the first choice; None = all expensive.
    """

    compute: str
    args: str = ""
    lb: float = -np.inf
    ub: float = np.inf
    nfreq: int = 1
    window: int = 1
    initial: Sequence[int] | None = None
