"""Where the expensive region starts: seed atoms (method.md §2).

A seed source answers, at each step, which atoms are seeds. Three kinds:

- :class:`IndexSeeds`: fixed atoms, given by index at the first step and then
  followed by identity;
- :class:`SpeciesSeeds`: every atom of some species (He in W);
- :class:`ClassifierSeeds`: atoms whose per-atom quantity (coordination, CNA,
  centrosymmetry, the cheap model's own :func:`uncertainty`, ...), averaged over a
  window of samples, lies in ``[lb, ub]``; re-queried every ``nfreq`` steps, the
  chosen atoms followed in between (:func:`uncertainty_seeds` builds the last one).

Seed sources see atom identities (``ids``, see :mod:`mlmix.regions`) so that they can
follow atoms through reordering, insertion and deletion.
"""

from __future__ import annotations

import abc
import functools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from .arguments import number_argument, species_list
from .errors import ConfigurationError
from .identity import values_by_id
from .neighbours import neighbour_pairs

Quantity = Callable[[Atoms], np.ndarray]
"""A per-atom quantity: ``q(atoms) -> (N,)`` float array."""


class Seeds(abc.ABC):
    """A source of seed atoms.

    Subclasses list the private attributes that carry their history between steps in
    ``_STATE``, so a checkpoint can continue the selection exactly.
    """

    _STATE: ClassVar[tuple[str, ...]] = ()

    def state(self) -> dict:
        """The selection history (numpy arrays and plain values) for a checkpoint."""
        return {name: getattr(self, name) for name in self._STATE}

    def restore(self, state: dict) -> None:
        """Continue from a :meth:`state` of a source configured the same way."""
        for name in self._STATE:
            setattr(self, name, state[name])

    def check_schedule(self, nevery: int) -> None:  # noqa: B027 - an optional hook
        """Raise :class:`ConfigurationError` if the source cannot work with ``nevery``."""

    def reset(self) -> None:  # noqa: B027 - an optional hook, a no-op by default
        """Forget the selection history, for a new structure: the next :meth:`select`
        starts from the source's definition, as a fresh source would. Sources that
        keep history between steps override it; the others have nothing to forget."""

    @abc.abstractmethod
    def select(self, atoms: Atoms, ids: np.ndarray, step: int, sample: bool) -> np.ndarray:
        """Seeds at ``step`` as an ``(N,)`` bool mask.

        Args:
            atoms: current structure.
            ids: ``(N,)`` atom identities.
            step: MD step (or optimiser iteration) number.
            sample: True on region-rebuild steps, when a classifier may sample.
        """


def _check_indices(indices: Sequence[int] | np.ndarray, n: int, what: str) -> None:
    indices = np.asarray(indices)
    bad = indices[indices >= n]
    if bad.size:
        raise ConfigurationError(
            f"{what}: seed indices {bad[:5].tolist()} are out of range for {n} atoms "
            f"(valid: 0..{n - 1}); give indices into this structure"
        )


def _as_indices(indices, what: str) -> np.ndarray:
    arr = np.asarray(indices)
    if isinstance(indices, str) or arr.ndim != 1 \
            or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise ConfigurationError(
            f"{what} must be a 1-D list of integer atom indices such as [0, 5], got "
            f"{indices!r}")
    negative = arr[arr < 0]
    if negative.size:
        # numpy would read -1 as the last atom: a silent seed nobody asked for.
        raise ConfigurationError(
            f"{what} has negative indices {negative[:5].tolist()}; atom indices count "
            "from 0 (the first atom) to N - 1: write the atom's index itself, e.g. "
            "len(atoms) - 1 for the last one")
    return arr.astype(np.int64)


def _followed(ids: np.ndarray, seed_ids: np.ndarray, what: str) -> np.ndarray:
    """The atoms whose ids are ``seed_ids``; refuses to lose them all silently."""
    mask = np.isin(ids, seed_ids)
    if not mask.any():
        raise ConfigurationError(
            f"none of the {seed_ids.size} atoms seeded by {what} is in the structure any "
            "more (they were deleted, or these atoms carry the ids of another structure), "
            "so no atom would be expensive; give seeds for this structure, or drop its "
            "'mlmix_id' array so that it counts as a new structure"
        )
    return mask


@dataclass
class IndexSeeds(Seeds):
    """Fixed seed atoms, given by index into the atoms of the first step.

    From then on the same atoms (by identity) are seeds, wherever they move in the
    atom list. On a new structure (:meth:`reset`, see
    :class:`~mlmix.regions.RegionTracker`) the indices are applied again, to it.

    Attributes:
        indices: 0-based atom indices (negative ones are refused, not counted from
            the end).

    Raises:
        ConfigurationError: at construction for an empty, non-integer or negative
            index list; at a step for an index beyond the structure, or when every
            seed atom has been deleted.
    """

    indices: Sequence[int] | np.ndarray
    _seed_ids: np.ndarray | None = field(default=None, init=False, repr=False)
    _STATE: ClassVar[tuple[str, ...]] = ("_seed_ids",)

    def __post_init__(self) -> None:
        self.indices = _as_indices(self.indices, "IndexSeeds indices")
        if self.indices.size == 0:
            raise ConfigurationError("IndexSeeds needs at least one seed index")

    def reset(self) -> None:
        self._seed_ids = None

    def select(self, atoms, ids, step, sample):
        if self._seed_ids is None:
            _check_indices(self.indices, len(atoms), "IndexSeeds indices")
            self._seed_ids = ids[self.indices]
        return _followed(ids, self._seed_ids, "IndexSeeds indices")


@dataclass
class SpeciesSeeds(Seeds):
    """Every atom of the given species is a seed (e.g. ``SpeciesSeeds(["He"])``).

    One symbol may be given as a string: ``SpeciesSeeds("He")`` is ``["He"]`` (never
    split into letters).

    Raises:
        ConfigurationError: at construction for an empty list or unknown symbols; at
            every step where no atom of the species is in the structure.
    """

    symbols: Sequence[str]

    def __post_init__(self) -> None:
        self.symbols = species_list(self.symbols, "SpeciesSeeds symbols")

    def select(self, atoms, ids, step, sample):
        mask = np.isin(atoms.numbers, [atomic_numbers[s] for s in self.symbols])
        if not mask.any():
            present = sorted(set(atoms.get_chemical_symbols()))
            raise ConfigurationError(
                f"no atom of the seed species {self.symbols} is in the structure "
                f"(it holds {present}); pick a species that is present"
            )
        return mask


@dataclass
class ClassifierSeeds(Seeds):
    """Seeds are atoms whose time-averaged quantity q lies in ``[lb, ub]``.

    Schedule: the quantity is sampled on region-rebuild steps; seeds are chosen at
    query steps ``nfreq, 2 nfreq, ...`` from the mean of the last ``window`` samples of
    each atom (only the ``window`` rebuild steps that end at a query are sampled).
    Between queries, the chosen atoms stay seeds. Before the first query the seeds are
    ``initial`` (indices into the first structure) or, if None, every atom: the whole
    system is expensive until the classifier has spoken. With ``nevery = 0`` (regions
    built once) the classifier is queried once, on the first structure. On a new
    structure (:meth:`reset`) all of this starts again: no samples are kept, and
    ``initial`` indexes the new structure.

    A query may find no seed (no defect left): then every atom is cheap. The
    ``initial`` seeds, by contrast, are the user's: if every one of them is deleted
    before the first query, :meth:`select` raises rather than run all cheap.

    Attributes:
        quantity: ``q(atoms) -> (N,)`` float array.
        lb, ub: inclusive bounds on q (-inf, +inf: no bound); NaN is refused.
        nfreq: steps between queries; a positive multiple of the rebuild period.
        window: number of samples averaged (>= 1).
        initial: optional 0-based seed indices used before the first query.
    """

    quantity: Quantity
    lb: float = -np.inf
    ub: float = np.inf
    nfreq: int = 1
    window: int = 1
    initial: Sequence[int] | np.ndarray | None = None
    _nevery: int = field(default=1, init=False, repr=False)
    _history: deque = field(default_factory=deque, init=False, repr=False)
    _seed_ids: np.ndarray | None = field(default=None, init=False, repr=False)
    _queried: bool = field(default=False, init=False, repr=False)

    def state(self) -> dict:
        return {"_seed_ids": self._seed_ids, "_history": [list(h) for h in self._history],
                "_queried": self._queried}

    def restore(self, state: dict) -> None:
        self._seed_ids = state["_seed_ids"]
        self._history = deque((tuple(h) for h in state["_history"]), maxlen=self.window)
        # Checkpoints written before the flag existed: never refuse their seeds.
        self._queried = bool(state.get("_queried", True))

    def reset(self) -> None:
        self._seed_ids = None
        self._history = deque(maxlen=self.window)
        self._queried = False

    def __post_init__(self) -> None:
        if not callable(self.quantity):
            raise ConfigurationError(
                f"ClassifierSeeds quantity must be a function atoms -> (N,) array such "
                f"as coordination(2.9), got {self.quantity!r}")
        self.lb = number_argument("ClassifierSeeds lb", self.lb, finite=False,
                                  note="-inf for no lower bound")
        self.ub = number_argument("ClassifierSeeds ub", self.ub, finite=False,
                                  note="inf for no upper bound")
        if self.lb > self.ub or self.lb == np.inf or self.ub == -np.inf:
            raise ConfigurationError(
                f"classifier bounds must satisfy lb <= ub with lb < inf and ub > -inf, "
                f"got lb={self.lb}, ub={self.ub}: no atom could be a seed; pass "
                "ClassifierSeeds(q, lb=..., ub=...) with lb <= ub"
            )
        for name in ("nfreq", "window"):
            setattr(self, name, number_argument(f"ClassifierSeeds {name}", getattr(self, name),
                                                minimum=1, integer=True))
        if self.initial is not None:
            self.initial = _as_indices(self.initial, "ClassifierSeeds initial")
        self._history = deque(maxlen=self.window)

    def check_schedule(self, nevery: int) -> None:
        if nevery > 0 and self.nfreq % nevery:
            raise ConfigurationError(
                f"nfreq ({self.nfreq}) must be a multiple of the rebuild period nevery "
                f"({nevery}), or the classifier is asked between rebuilds"
            )
        self._nevery = nevery

    def _is_query(self, step: int, first_call: bool) -> bool:
        if self._nevery == 0:
            return first_call
        return step > 0 and step % self.nfreq == 0

    def _wants_sample(self, step: int, first_call: bool) -> bool:
        if self._nevery == 0:
            return first_call
        next_query = step + (-step) % self.nfreq or self.nfreq
        return next_query - step < self.window * self._nevery

    def _evaluate(self, atoms: Atoms) -> np.ndarray:
        q = np.asarray(self.quantity(atoms), dtype=float)
        if q.shape != (len(atoms),):
            raise ConfigurationError(
                f"the classifier quantity returned shape {q.shape}; it must return one "
                f"value per atom, shape ({len(atoms)},)"
            )
        return q

    def select(self, atoms, ids, step, sample):
        first_call = self._seed_ids is None and not self._history
        if first_call and self.initial is not None and self._nevery > 0:
            _check_indices(self.initial, len(atoms), "ClassifierSeeds initial")
            self._seed_ids = ids[self.initial]
        if sample and self._wants_sample(step, first_call):
            self._history.append((ids.copy(), self._evaluate(atoms)))
        if self._is_query(step, first_call) and self._history:
            self._seed_ids = ids[self._mean(ids)]
            self._queried = True
            self._history.clear()
        if self._seed_ids is None:
            return np.ones(len(atoms), dtype=bool)
        if self._queried or not self._seed_ids.size:
            return np.isin(ids, self._seed_ids)
        return _followed(ids, self._seed_ids, "ClassifierSeeds initial")

    def _mean(self, ids: np.ndarray) -> np.ndarray:
        samples = [values_by_id(old_ids, q, ids, np.nan)[0] for old_ids, q in self._history]
        stacked = np.vstack(samples)
        counts = np.sum(~np.isnan(stacked), axis=0)
        mean = np.where(counts > 0, np.nansum(stacked, axis=0) / np.maximum(counts, 1), np.nan)
        return (mean >= self.lb) & (mean <= self.ub)


def coordination(r_cut: float) -> Quantity:
    """Per-atom coordination number: neighbours closer than ``r_cut`` Å.

    For a perfect bcc or fcc crystal pick ``r_cut`` between the first and second
    neighbour shells; atoms next to a vacancy or interstitial then stand out.
    """
    r_cut = number_argument("coordination r_cut", r_cut, "Å", minimum=0, strict=True,
                            what="distance")

    def q(atoms: Atoms) -> np.ndarray:
        i = neighbour_pairs(atoms.positions, atoms.cell.array, atoms.pbc, r_cut, "i")[0]
        return np.bincount(i, minlength=len(atoms)).astype(float)

    return q


def masked(quantity: Quantity, mask: np.ndarray, value: float = 0.0) -> Quantity:
    """``quantity`` with the atoms of ``mask`` ((N,) bool) set to ``value``.

    For atoms that must never seed, e.g. a fixed outer shell whose free surface a
    centrosymmetry or coordination classifier would otherwise take for a defect.
    """
    mask = np.asarray(mask, dtype=bool)

    def q(atoms: Atoms) -> np.ndarray:
        if len(atoms) != len(mask):
            raise ConfigurationError(f"the mask covers {len(mask)} atoms, the structure "
                                     f"has {len(atoms)}")
        out = np.array(quantity(atoms), dtype=float)
        out[mask] = value
        return out

    return q


@functools.cache
def _matching_steps(n: int) -> tuple[tuple[int, tuple[tuple[int, int, int], ...]], ...]:
    """The recursion of a minimum perfect matching of ``0..n-1`` (n even), bottom up.

    A matching of a set pairs its lowest element i with some j and matches the rest;
    only the sets reached that way from the full set are needed (34 for n = 8, 233 for
    n = 12, against 2^n subsets and (n - 1)!! matchings). Returns ``(set, ((i, j,
    rest), ...))`` per non-empty reachable set (bit masks), smaller sets first.
    """
    full = (1 << n) - 1
    seen, frontier = {full}, [full]
    while frontier:
        nxt = []
        for mask in frontier:
            rest = mask & (mask - 1)  # without its lowest element
            for j in range(n):
                sub = rest & ~(1 << j)
                if rest >> j & 1 and sub not in seen:
                    seen.add(sub)
                    nxt.append(sub)
        frontier = nxt
    steps = []
    for mask in sorted(seen - {0}, key=lambda m: (m.bit_count(), m)):
        i = (mask & -mask).bit_length() - 1
        rest = mask & ~(1 << i)
        steps.append((mask, tuple((i, j, rest & ~(1 << j)) for j in range(n) if rest >> j & 1)))
    return tuple(steps)


def min_matching(cost: np.ndarray) -> np.ndarray:
    """Minimum over perfect matchings of the summed pair costs, for many atoms at once.

    Args:
        cost: ``(N, n, n)`` symmetric pair costs, n even.

    Returns:
        ``(N,)``: min over pairings of ``0..n-1`` into n/2 pairs (a, b) of the sum of
        ``cost[:, a, b]`` (exact: a dynamic programme over the sets of still unpaired
        elements, no pairing is skipped).
    """
    n = cost.shape[1]
    best = {0: np.zeros(cost.shape[0])}
    for mask, options in _matching_steps(n):
        i, j, rest = options[0]
        value = cost[:, i, j] + best[rest]
        for i, j, rest in options[1:]:
            np.minimum(value, cost[:, i, j] + best[rest], out=value)
        best[mask] = value
    return best[(1 << n) - 1]


def neighbour_vectors(atoms: Atoms, n: int, r_cut: float) -> np.ndarray:
    """Vectors (Å) from each atom to its ``n`` nearest neighbours within ``r_cut``.

    Returns:
        ``(N, n, 3)``, nearest first; rows of atoms with fewer than ``n`` neighbours
        within ``r_cut`` (at a surface) are padded with zero vectors.
    """
    i, d, vec = neighbour_pairs(atoms.positions, atoms.cell.array, atoms.pbc, r_cut, "idD")
    out = np.zeros((len(atoms), n, 3))
    if len(i) == 0:
        return out
    # Each atom's pairs in a padded row, then sorted by distance within the rows: far
    # cheaper than one global lexsort; stable sorts keep ties in pair order, as it did.
    order = np.argsort(i, kind="stable")
    i, d = i[order], d[order]
    counts = np.bincount(i, minlength=len(atoms))
    slot = np.arange(len(i)) - (np.cumsum(counts) - counts)[i]
    dist = np.full((len(atoms), int(counts.max())), np.inf)
    dist[i, slot] = d
    pair = np.zeros(dist.shape, dtype=np.int64)
    pair[i, slot] = order
    nearest = np.argsort(dist, axis=1, kind="stable")[:, :n]
    rows = np.arange(len(atoms))[:, None]
    found = np.isfinite(dist[rows, nearest])
    out[:, :nearest.shape[1]][found] = vec[pair[rows, nearest][found]]
    return out


def centrosymmetry(n_neighbours: int = 8, r_cut: float = 3.6) -> Quantity:
    """Per-atom centrosymmetry parameter, Å^2 (Kelchner, Plimpton, Hamilton 1998).

    P_i = min over pairings of the ``n_neighbours`` nearest neighbours into opposite
    pairs (j, k) of sum ``|r_ij + r_ik|^2``; the minimum is taken over every pairing (the
    "matching" form, each neighbour used once), not LAMMPS's sum of the n/2 smallest
    pair terms. P is 0 for any affinely strained centrosymmetric crystal (bcc: n = 8,
    fcc: 12) and of order ``|r_nn|^2`` next to a vacancy or at a surface; a dislocation
    core sits in between. A missing neighbour (fewer than n within ``r_cut``) is a zero
    vector, so its would-be partner adds its own ``|r|^2``: surfaces are not centrosymmetric.

    Args:
        n_neighbours: even, 2..12 (8 for bcc, 12 for fcc).
        r_cut: Å, search radius; put it beyond the n-th neighbour shell (for bcc W,
            8 neighbours at 2.75 Å and 6 more at 3.18 Å, 3.6 Å leaves room for
            thermal motion) so that the n nearest are picked from enough candidates.

    Returns:
        ``q(atoms) -> (N,)`` array, Å^2.
    """
    if isinstance(n_neighbours, bool) or not isinstance(n_neighbours, (int, np.integer)) \
            or n_neighbours < 2 or n_neighbours > 12 or n_neighbours % 2:
        raise ConfigurationError(
            f"n_neighbours must be an even integer from 2 to 12 (8 for bcc, 12 for fcc), "
            f"got {n_neighbours!r}"
        )
    r_cut = number_argument("centrosymmetry r_cut", r_cut, "Å", minimum=0, strict=True,
                            what="distance")
    # atoms per chunk: keep the (chunk, n, n, 3) pair sums near 16 MB
    chunk = max(1, 2_000_000 // (3 * n_neighbours**2))

    def q(atoms: Atoms) -> np.ndarray:
        vec = neighbour_vectors(atoms, int(n_neighbours), r_cut)
        out = np.empty(len(atoms))
        for s in range(0, len(atoms), chunk):
            v = vec[s:s + chunk]
            sums = v[:, :, None, :] + v[:, None, :, :]           # (c, n, n, 3)
            cost = np.einsum("cabk,cabk->cab", sums, sums)       # |r_a + r_b|^2
            out[s:s + chunk] = min_matching(cost)
        return out

    return q


def uncertainty(source):
    """Per-atom extrapolation grade (dimensionless) of a cheap linear model fitted by
    ``mlmix fit``, against its training environments
    (:mod:`mlmix.fitting.uncertainty`): at most 1.01 for an environment like a training
    one, large where the cheap model extrapolates (a vacancy's neighbours, a surface, a
    species it never saw).

    Args:
        source: the ``<stem>.uncertainty.npz`` that ``mlmix fit`` wrote beside the
            potential, or an :class:`~mlmix.fitting.uncertainty.Uncertainty`.

    Returns:
        The :class:`~mlmix.fitting.uncertainty.Uncertainty`, a quantity
        ``q(atoms) -> (N,)``; ``q.threshold`` is the file's default threshold.
    """
    from .fitting.uncertainty import Uncertainty

    return source if isinstance(source, Uncertainty) else Uncertainty.load(source)


def uncertainty_seeds(source, threshold: float | None = None, *, nfreq: int = 1,
                      window: int = 1, initial: Sequence[int] | np.ndarray | None = None,
                      ) -> ClassifierSeeds:
    """Seeds where the cheap model is not trustworthy: atoms whose time-averaged
    :func:`uncertainty` grade is at least ``threshold``.

    Args:
        source: as for :func:`uncertainty`.
        threshold: on the grade, > 0 (default: the file's, the 99.9th percentile of
            the fit's held-out environments, at least 1.01).
        nfreq, window, initial: as for :class:`ClassifierSeeds`.

    Raises:
        ConfigurationError: for a missing or foreign file, or a threshold <= 0.
    """
    q = uncertainty(source)
    threshold = number_argument("uncertainty threshold",
                                q.threshold if threshold is None else threshold,
                                minimum=0, strict=True,
                                note="(a grade; training environments are at most 1.01)")
    return ClassifierSeeds(q, lb=threshold, nfreq=nfreq, window=window, initial=initial)
