"""Weighted energies: E_w = sum_i w_i E_i and its exact gradient, for energy mixing.

Energy mixing (``MixedCalculator(mixing="energy")``) needs from each potential the
weighted sum of its per-atom energies and the *exact* gradient of that sum with respect
to every position and to the cell:

    E_w = sum_i w_i E_i,   F_k = -dE_w/dx_k,   W = dE_w/d(eps)

(eps the symmetric strain, so the stress is W / V, ASE's sign). Backends reach it in one
of two ways (``Potential.weighting``):

``"exact"``
    The backend weights each atom's energy itself, for any weights: autograd of
    ``sum_i w_i E_i`` (MACE, SevenNet, CHGNet) on the atoms with w > 0 plus one
    receptive field (:func:`weighted_on_cluster`); descriptor rows (mlmix's UF3); one
    atom type per weight (SNAP); one python-ace call with a separate set of centres
    and force sinks per weight (ACE, :mod:`.ace`).

``"levels"``
    The backend can compute the energy of the terms *owned by* a set S of centre atoms,
    sum_{i in S} E_i, with its exact gradient on every atom (a per-centre evaluation:
    LAMMPS styles through mlmix's list-truncation plugin). The atoms are
    grouped by their weight value, one disjoint set S_l per distinct value q_l, and

        E_w = sum_l q_l sum_{i in S_l} E_i,     F = sum_l q_l F_l,     W = sum_l q_l W_l.

    When fewer atoms have w < 1 than w > 0 (the cheap potential's weights 1 - p),
    the sum is taken as the whole energy (one call with every atom a centre) minus
    sum_i (1 - w_i) E_i over the few atoms with w < 1. The cost is one evaluation of
    the smaller of the two sets plus a per-call overhead per level, so the number of
    distinct weights should be small: the mixing quantises
    p to multiples of 1/n_levels (:func:`quantise`), and the energy is then the exact
    energy of those quantised weights, not an approximation of it.

What E_i is depends on the backend and is its own bookkeeping: for ACE, SNAP and MACE
the energy of atom i's environment; for SW and Tersoff in LAMMPS, the terms LAMMPS
assigns to atom i when it is a list centre (every three-body term to its vertex atom,
each pair term to one of its two atoms, chosen by atom ids, which never change). Any
such fixed, local split is a valid energy: with all weights 1 it is the total energy,
and the per-atom parts depend only on atoms within one cutoff of i.

Units: eV, Å, eV/Å; W in eV. Shapes: N atoms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from ..carving import carve_cluster, within
from ..errors import ConfigurationError

WeightedLevel = tuple[float, np.ndarray, np.ndarray, int]
"""(energy eV, forces (N, 3) eV/Å, strain derivative (3, 3) eV, atoms computed) of the
terms owned by one set of centres."""


@dataclass(frozen=True)
class WeightedEvaluation:
    """Result of one weighted evaluation.

    Attributes:
        energy: eV, sum_i w_i E_i.
        forces: ``(N, 3)`` eV/Å, -dE_w/dx_k on every atom (exact).
        strain_derivative: ``(3, 3)`` eV, dE_w/d(eps) at fixed fractional
            coordinates' image structure; the stress is this over the volume. NaN for
            a structure that is not periodic in all three directions.
        n_evaluated: atoms whose energy (environment) the backend computed.
        n_levels: separate centre sets evaluated (``"levels"`` backends), 1 for
            backends that weight exactly.
    """

    energy: float
    forces: np.ndarray
    strain_derivative: np.ndarray
    n_evaluated: int
    n_levels: int = 1


def zero_evaluation(n: int) -> WeightedEvaluation:
    """All weights zero: no energy, no force, no work."""
    return WeightedEvaluation(0.0, np.zeros((n, 3)), np.zeros((3, 3)), 0, 0)


def check_weights(weights, n: int, what: str = "weights") -> np.ndarray:
    """``weights`` as a float ``(n,)`` array in [0, 1], or a ConfigurationError."""
    w = np.asarray(weights, dtype=float)
    if w.shape != (n,):
        raise ConfigurationError(f"{what} must have shape ({n},), one per atom, got {w.shape}")
    if not np.isfinite(w).all() or w.min(initial=0.0) < 0 or w.max(initial=0.0) > 1:
        bad = int(np.flatnonzero(~(np.isfinite(w) & (w >= 0) & (w <= 1)))[0])
        raise ConfigurationError(f"{what} must lie in [0, 1]; atom {bad} has {w[bad]!r}")
    return w


def quantise(p: np.ndarray, n_levels: int) -> np.ndarray:
    """Weights rounded to the nearest multiple of ``1 / n_levels`` (0 and 1 stay exact),
    so ``1 - quantise(p)`` lies on the same grid and the two weights of an atom sum to
    exactly 1."""
    return np.rint(np.asarray(p, dtype=float) * n_levels) / n_levels


def weight_levels(w: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """The distinct non-zero weights and their atoms: ``[(q_l, mask_l)]``, disjoint
    masks, in increasing q."""
    # unique over the non-zero weights only: a few hundred atoms, not the whole cell
    nonzero = np.flatnonzero(w)
    values, inverse = np.unique(w[nonzero], return_inverse=True)
    levels = []
    for k, q in enumerate(values):
        mask = np.zeros(len(w), dtype=bool)
        mask[nonzero[inverse == k]] = True
        levels.append((float(q), mask))
    return levels


def sum_levels(w: np.ndarray, level: Callable[[np.ndarray], WeightedLevel],
               part: Callable[[np.ndarray], WeightedEvaluation] | None = None
               ) -> WeightedEvaluation:
    """E_w, F and W of a ``"levels"`` backend from one call of ``level(mask)`` per
    distinct weight, or the whole minus the complement's levels where that computes
    fewer centres (module docstring). ``part(v)`` evaluates the levels of a few
    weighted atoms another way (default: :func:`direct_levels` with ``level``)."""
    def whole() -> WeightedEvaluation:
        e, f, s, computed = level(np.ones(len(w), dtype=bool))
        return WeightedEvaluation(e, f, s, computed)

    return whole_minus_complement(w, whole, part or (lambda v: direct_levels(v, level)))


def whole_minus_complement(w: np.ndarray, whole: Callable[[], WeightedEvaluation],
                           part: Callable[[np.ndarray], WeightedEvaluation]
                           ) -> WeightedEvaluation:
    """sum_i w_i E_i as ``part(w)``, or as ``whole() - part(1 - w)`` (the total energy
    minus the few atoms with w < 1) where fewer atoms have w < 1 than w > 0: the cheap
    potential's weights 1 - p are 1 almost everywhere."""
    if np.count_nonzero(w < 1) >= np.count_nonzero(w > 0):
        return part(w)
    total, rest = whole(), part(1.0 - w)
    return WeightedEvaluation(total.energy - rest.energy, total.forces - rest.forces,
                              total.strain_derivative - rest.strain_derivative,
                              total.n_evaluated + rest.n_evaluated,
                              total.n_levels + rest.n_levels)


def direct_levels(w: np.ndarray, level: Callable[[np.ndarray], WeightedLevel]
                  ) -> WeightedEvaluation:
    """E_w, F and W as one ``level(mask)`` call per distinct non-zero weight."""
    n = len(w)
    energy, forces, strain, evaluated, levels = 0.0, np.zeros((n, 3)), np.zeros((3, 3)), 0, 0
    for q, mask in weight_levels(w):
        e, f, s, computed = level(mask)
        energy += q * e
        forces += q * f
        strain += q * s
        evaluated += computed
        levels += 1
    return WeightedEvaluation(energy, forces, strain, evaluated, levels)


def stress_from_strain_derivative(strain_derivative: np.ndarray, volume: float) -> np.ndarray:
    """``(6,)`` eV/Å^3, ASE's Voigt stress (xx, yy, zz, yz, xz, xy) from dE/d(eps)."""
    s = 0.5 * (strain_derivative + strain_derivative.T) / volume
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


def voigt_to_matrix(v: np.ndarray) -> np.ndarray:
    """``(3, 3)`` symmetric matrix of a Voigt 6-vector (xx, yy, zz, yz, xz, xy)."""
    return np.array([[v[0], v[5], v[4]], [v[5], v[1], v[3]], [v[4], v[3], v[2]]])


GraphGradient = Callable[[Atoms, np.ndarray, bool], tuple[float, np.ndarray, np.ndarray | None]]
"""``(structure, (n,) weights, periodic) -> (E_w eV, forces (n, 3) eV/Å, dE_w/d(eps)
(3, 3) eV or None when not periodic)``: one autograd pass of a model over a structure."""


def weighted_on_cluster(atoms: Atoms, weights: np.ndarray, receptive_field: float,
                        cutoff: float, gradient: GraphGradient) -> WeightedEvaluation:
    """E_w with exact forces from a model whose E_i reads atoms within
    ``receptive_field`` Å of i: ``gradient`` runs on the atoms with w > 0 plus every atom
    within one receptive field of them (the whole structure when that is all of it),
    carved as a finite cluster where it fits (:func:`mlmix.carving.carve_cluster`).

    Exact: every E_i with w_i > 0 sees its whole neighbourhood, and atoms beyond carry
    no weight and move no E_i. A finite cluster's E depends only on relative
    positions, so its strain derivative is sum_k x_k (x) dE/dx_k = -X^T F.
    """
    n = len(atoms)
    mask = weights > 0
    keep = mask if mask.all() else within(atoms.positions, atoms.cell.array, atoms.pbc,
                                           mask, receptive_field)
    if keep.all():
        cluster, index, periodic = atoms, np.arange(n), bool(np.any(atoms.pbc))
    else:
        cluster, index, periodic = carve_cluster(atoms, keep, cutoff, cutoff + 1.0)
    energy, f, strain = gradient(cluster, weights[index], periodic)
    if strain is None:
        strain = -cluster.positions.T @ f
    forces = np.zeros((n, 3))
    forces[index] = f
    return WeightedEvaluation(energy, forces, strain, len(cluster))
