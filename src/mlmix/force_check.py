"""Seeds from a direct check of the cheap forces on a sparse random sample.

The extrapolation grade (:func:`mlmix.seeds.uncertainty`) sees where the cheap model is
outside its training data, not where it is merely wrong. The direct check measures the
error itself: every ``nfreq`` steps both potentials are evaluated on a few random atoms
the seed source leaves cheap (each potential masked to the sample and its receptive
field, so the sampled forces are the whole-system ones: a cost of a few dozen atoms per
sampled atom), and an atom whose ``|F_exp - F_cheap|`` exceeds a tolerance becomes a
seed. The sampled disagreement is also a running, unbiased estimate of the force error
the cheap region carries, which :attr:`ForceCheckSeeds.checks` records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from ase import Atoms

from .arguments import number_argument
from .errors import ConfigurationError
from .neighbours import neighbour_pairs
from .seeds import Seeds

if TYPE_CHECKING:
    from .potentials.base import Potential

__all__ = ["ForceCheckSeeds", "halo_mask"]


def halo_mask(atoms: Atoms, centres: np.ndarray, radius: float) -> np.ndarray:
    """``(N,)`` bool: the atoms ``centres`` (indices) and every atom within ``radius`` Å
    of one of them (minimum image)."""
    mask = np.zeros(len(atoms), bool)
    mask[centres] = True
    if radius > 0 and len(centres):
        i, j = neighbour_pairs(atoms.positions, atoms.cell.array, atoms.pbc, radius, "ij")
        mask[j[mask[i]]] = True
    return mask


def force_disagreement(atoms: Atoms, sample: np.ndarray, expensive: Potential,
                       cheap: Potential) -> np.ndarray:
    """``(len(sample),)`` ``|F_exp - F_cheap|`` (eV/Å) on the atoms ``sample``, each
    potential masked to the sample and its receptive field."""
    out = np.zeros(len(sample))
    if not len(sample):
        return out
    forces = []
    for pot in (expensive, cheap):
        ev = pot.evaluate(atoms, halo_mask(atoms, sample, pot.halo))
        if not ev.exact:
            raise ConfigurationError(
                f"{pot.name} gave inexact forces on the checked atoms (a carved cluster "
                "below its exact buffer); the force check needs exact forces")
        forces.append(ev.forces[sample])
    return np.linalg.norm(forces[0] - forces[1], axis=1)


@dataclass
class ForceCheckSeeds(Seeds):
    """The seeds of ``inner`` plus the atoms a direct force check finds wrong.

    On check steps (multiples of ``nfreq`` that are region-rebuild steps) a random
    ``fraction`` of the atoms ``inner`` does not seed is sampled, together with the atoms
    flagged at the previous check; the sampled atoms whose cheap force is off the
    expensive one by more than ``tolerance`` are seeds until a later check finds them
    within it. Between checks the flagged atoms follow their identities.

    Attributes:
        inner: the seed source checked (any :class:`~mlmix.seeds.Seeds`).
        expensive, cheap: the two potentials of the run.
        tolerance: eV/Å, ``|F_exp - F_cheap|`` above which an atom becomes a seed.
        fraction: of the candidate atoms sampled at each check, in (0, 1] (at least
            one atom is sampled).
        nfreq: steps between checks, a multiple of the rebuild period.
        seed: of the random sample.
        checks: one dict per check: ``step``, ``n_sampled`` (random atoms),
            ``n_rechecked`` (flagged before), ``rms_eV_per_A`` and ``max_eV_per_A``
            of the random sample's disagreement (the running estimate of the cheap
            region's force error), ``n_flagged`` (seeds the check added).
    """

    inner: Seeds
    expensive: Potential
    cheap: Potential
    tolerance: float
    fraction: float = 0.01
    nfreq: int = 10
    seed: int = 0
    checks: list[dict] = field(default_factory=list, init=False, repr=False)
    _flagged_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64),
                                     init=False, repr=False)
    _rng: Any = field(default=None, init=False, repr=False)
    _nevery: int = field(default=1, init=False, repr=False)
    _STATE: ClassVar[tuple[str, ...]] = ("_flagged_ids", "checks")
    LOG_COLUMNS: ClassVar[tuple[str, ...]] = ("checked_rms_eV_per_A", "checked_max_eV_per_A",
                                              "n_checked_seeds")
    LOG_NOTE: ClassVar[str] = """
checked_*: |F_exp - F_cheap| over the random atoms of the last force check
([regions.force_check]): a running estimate of the cheap region's force error;
n_checked_seeds: the atoms that check made seeds."""

    def __post_init__(self) -> None:
        if not isinstance(self.inner, Seeds):
            raise ConfigurationError(f"ForceCheckSeeds inner must be a seed source such as "
                                     f"IndexSeeds([0]), got {self.inner!r}")
        self.tolerance = number_argument("ForceCheckSeeds tolerance", self.tolerance, "eV/Å",
                                         minimum=0, strict=True, what="force")
        self.fraction = number_argument("ForceCheckSeeds fraction", self.fraction, minimum=0,
                                        strict=True)
        if self.fraction > 1:
            raise ConfigurationError(f"ForceCheckSeeds fraction must be in (0, 1] (a share "
                                     f"of the cheap atoms), got {self.fraction}")
        self.nfreq = int(number_argument("ForceCheckSeeds nfreq", self.nfreq, minimum=1,
                                         integer=True))
        self._rng = np.random.default_rng(self.seed)

    def state(self) -> dict:
        return {**super().state(), "inner": self.inner.state(),
                "rng": self._rng.bit_generator.state}

    def restore(self, state: dict) -> None:
        super().restore(state)
        self.inner.restore(state["inner"])
        self._rng.bit_generator.state = state["rng"]

    def reset(self) -> None:
        self.inner.reset()
        self._flagged_ids = np.zeros(0, np.int64)

    def check_schedule(self, nevery: int) -> None:
        self.inner.check_schedule(nevery)
        if nevery > 0 and self.nfreq % nevery:
            raise ConfigurationError(
                f"ForceCheckSeeds nfreq ({self.nfreq}) must be a multiple of the rebuild "
                f"period nevery ({nevery}), or checks fall between rebuilds")
        self._nevery = nevery

    def log_row(self) -> dict:
        """The :attr:`LOG_COLUMNS` of the last check (NaN and 0 before the first)."""
        c = self.checks[-1] if self.checks else {}
        nan = float("nan")
        return {"checked_rms_eV_per_A": nan if c.get("rms_eV_per_A") is None else c["rms_eV_per_A"],
                "checked_max_eV_per_A": nan if c.get("max_eV_per_A") is None else c["max_eV_per_A"],
                "n_checked_seeds": int(c.get("n_flagged", 0))}

    def _is_check(self, step: int) -> bool:
        return step == 0 if self._nevery == 0 else step % self.nfreq == 0

    def select(self, atoms, ids, step, sample):
        seeds = self.inner.select(atoms, ids, step, sample)
        flagged = np.isin(ids, self._flagged_ids)
        if sample and self._is_check(step):
            flagged = self._check(atoms, ids, step, seeds, flagged)
        return seeds | flagged

    def _check(self, atoms: Atoms, ids: np.ndarray, step: int, seeds: np.ndarray,
               flagged: np.ndarray) -> np.ndarray:
        candidates = np.flatnonzero(~seeds & ~flagged)
        n = min(len(candidates), max(1, round(self.fraction * len(candidates))))
        drawn = np.sort(self._rng.choice(candidates, size=n, replace=False)) if n else \
            np.zeros(0, np.int64)
        rechecked = np.flatnonzero(flagged & ~seeds)
        sample = np.concatenate([drawn, rechecked]).astype(np.int64)
        error = force_disagreement(atoms, sample, self.expensive, self.cheap)
        bad = sample[error > self.tolerance]
        self._flagged_ids = ids[bad]
        random_error = error[: len(drawn)]
        self.checks.append({
            "step": int(step), "n_sampled": int(len(drawn)), "n_rechecked": int(len(rechecked)),
            "rms_eV_per_A": float(np.sqrt(np.mean(random_error**2))) if len(drawn) else None,
            "max_eV_per_A": float(random_error.max()) if len(drawn) else None,
            "n_flagged": int(len(bad)),
        })
        out = np.zeros(len(atoms), bool)
        out[bad] = True
        return out
