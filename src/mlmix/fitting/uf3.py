"""UF3 (2 + 3 body cubic B-splines) as a :class:`~mlmix.fitting.model.LinearModel`.

(Over the house limit of ~500 lines: the featuriser, its writer and its reader must
agree on one block layout, so they stay together.)

The featuriser is our own, vectorised with numpy/scipy.sparse, and follows the
conventions of LAMMPS ``pair_style uf3 3`` (src/ML-UF3/pair_uf3.cpp), which the tests
check to round-off against LAMMPS itself:

* Cubic B-splines on clamped knot vectors (the first and last knot repeated four
  times); a spline with n knots has n - 4 coefficients. Written files use
  non-uniform ("nk") knot search, like the published files, and "0 3" trims: the last
  three coefficients of every spline direction are zero, so energies and their first
  two derivatives vanish at the cutoffs. Those trimmed coefficients are not part of
  the coefficient vector.
* Below the first two-body knot LAMMPS finds no knot interval and returns garbage
  (finite, e.g. 1e244 eV). So a written file always starts at 0 Å: a two-body spline
  whose first knot r2_min is above 0 gets a repulsive wall on [0, r2_min)
  (:func:`extend_to_zero`; energy rising as r falls, continuous at r2_min). The wall
  is not part of the linear model: the design matrix has no rows for pairs below
  r2_min, so fit with data above it only (as the hard and soft sets are).
* Two-body energy. LAMMPS loops over a FULL neighbour list and tallies V2(r_ij) for
  every ordered pair, so ``E2 = sum_i sum_{j != i} V2(r_ij)``: each unordered pair
  counts twice. The energy columns therefore hold ``sum over ordered pairs of
  B_a(r)`` (for a pair of different species, both orders).
* Three-body energy. For every centre i and every unordered pair {j, k} of its
  neighbours with r_ij < rc_ij, r_ik < rc_ik, and r_ij, r_ik, r_jk not below the
  first knot of their direction::

      E3 += sum_{a,b,c} C[a, b, c] B^ij_a(r_ij) B^ik_b(r_ik) B^jk_c(r_jk)

  once per triplet. File block "3B I J K" lists the knots of jk, ik, ij (in that
  order) and C with shape (n_ij, n_ik, n_jk), one line per (a, b). For J == K LAMMPS
  symmetrises C in (a, b) by copying the upper triangle (a < b), so only a <= b are
  free coefficients; for J != K the block I K J is the transpose and every (a, b, c)
  is free. The jk cutoff must be twice the ij cutoff, and ij and ik cutoffs equal.
* One-body energy. ``pair_style uf3 3`` has no one-body term (and ``uf3 1`` does not
  work here), and no spline can absorb a constant per atom. So, with
  ``one_body=True`` (default), the coefficient vector starts with one reference
  energy per species (eV/atom; energy columns = atom counts, force columns = 0), which
  lets fits to absolute energies work. The written ``.uf3`` file cannot hold them:
  the LAMMPS potential reproduces ``energy @ c`` minus ``sum_s n_s e_s`` (see
  :meth:`Uf3Model.reference_energy`) and exactly ``forces @ c``. Energy
  differences at fixed composition (the hard constraints) and forces are unaffected.
  With ``one_body=False`` there are no such columns (fit relative energies then).

Coefficient vector layout: ``[e_s for s in species]`` (if ``one_body``), then the
two-body blocks (I <= J in species order) with ``n2 = len(knots) - 7`` free
coefficients each, then the three-body blocks (centre I, then J <= K) with their free
coefficients in C order of (a, b, c) (a <= b only when J == K).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from ase import Atoms
from ase.data import atomic_numbers

from ..errors import ConfigurationError
from ..neighbours import neighbour_pairs
from ..potentials.files import resolve_potential_file
from ..potentials.lammps import LammpsPotential, format_number
from .model import (
    DesignMatrix,
    LinearModel,
    check_frames,
    check_species,
    write_texts_atomically,
)

__all__ = ["Uf3Model", "clamped_knots", "cubic_bspline_basis", "extend_to_zero"]

_TRIM = 3  # trailing coefficients fixed at zero in every spline direction ("0 3")


# ----------------------------------------------------------------------------------
# B-spline basis (pure functions)
# ----------------------------------------------------------------------------------


def clamped_knots(r_min: float, r_max: float, n_intervals: int) -> np.ndarray:
    """Uniform cubic knot vector on [r_min, r_max] with the ends repeated four times.

    Returns ``(n_intervals + 7,)`` knots (Å); the spline has ``n_intervals + 3``
    coefficients.
    """
    inner = np.linspace(r_min, r_max, n_intervals + 1)
    return np.concatenate([[r_min] * 3, inner, [r_max] * 3])


def cubic_bspline_basis(knots: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The four non-zero cubic B-splines and their derivatives at each point.

    Cox-de Boor recursion, vectorised over points (The NURBS Book, A2.2 and the
    derivative formula B'_{a,3} = 3 (B_{a,2}/(t_{a+3}-t_a) - B_{a+1,2}/(t_{a+4}-t_{a+1}))).

    Args:
        knots: ``(m,)`` non-decreasing, clamped (Å).
        x: ``(n,)`` points in ``[knots[3], knots[-4])`` (Å).

    Returns:
        ``first`` ``(n,)`` int, index of the first non-zero basis function (the
        functions are first .. first + 3); ``values`` ``(n, 4)``; ``derivatives``
        ``(n, 4)`` in 1/Å.
    """
    t = np.asarray(knots, dtype=float)
    x = np.asarray(x, dtype=float)
    span = np.clip(np.searchsorted(t, x, side="right") - 1, 3, len(t) - 5)
    left = np.stack([x - t[span + 1 - j] for j in range(4)], axis=1)  # left[:, j]
    right = np.stack([t[span + j] - x for j in range(4)], axis=1)  # right[:, j]
    n = np.zeros((len(x), 4))
    n[:, 0] = 1.0
    quad = None
    for j in range(1, 4):
        saved = np.zeros(len(x))
        for r in range(j):
            den = right[:, r + 1] + left[:, j - r]
            temp = np.divide(n[:, r], den, out=np.zeros(len(x)), where=den != 0)
            n[:, r] = saved + right[:, r + 1] * temp
            saved = left[:, j - r] * temp
        n[:, j] = saved
        if j == 2:
            quad = n[:, :3].copy()  # degree-2 functions span-2 .. span
    # derivative of cubic function a = span-3+r from the quadratics a and a+1
    q = np.zeros((len(x), 5))
    q[:, 1:4] = quad  # q[:, s] = B_{span-3+s, 2}; s = 0 and 4 are zero
    d = np.zeros((len(x), 4))
    for r in range(4):
        a = span - 3 + r
        d1 = t[a + 3] - t[a]
        d2 = t[a + 4] - t[a + 1]
        term1 = np.divide(q[:, r], d1, out=np.zeros(len(x)), where=d1 != 0)
        term2 = np.divide(q[:, r + 1], d2, out=np.zeros(len(x)), where=d2 != 0)
        d[:, r] = 3.0 * (term1 - term2)
    return span - 3, n, d


def _blossom(poly: Sequence[float], u: Sequence[float] | np.ndarray) -> float:
    """Polar form of the cubic ``sum_k poly[k] r^k`` at the three points ``u`` (Å).

    The B-spline coefficient of a basis function with knots t_j .. t_{j+4} of a spline
    that equals this cubic on an interval inside its support is the blossom at
    (t_{j+1}, t_{j+2}, t_{j+3}) (de Boor-Fix), which is how :func:`extend_to_zero`
    writes a given polynomial into the knot vector exactly.
    """
    a0, a1, a2, a3 = (list(poly) + [0.0] * 4)[:4]
    u1, u2, u3 = u
    return (a0 + a1 * (u1 + u2 + u3) / 3 + a2 * (u1 * u2 + u1 * u3 + u2 * u3) / 3
            + a3 * u1 * u2 * u3)


def extend_to_zero(knots: np.ndarray, coefficients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-body spline extended down to r = 0 by a repulsive wall; unchanged above knots[0].

    LAMMPS ``pair_style uf3`` (non-uniform knots) finds no knot interval for a pair
    shorter than the first knot and then reads memory outside its tables: finite
    garbage (1e-308 or 1e244 eV). Written files therefore start at 0 Å. Below the
    fitted range [p, r_c] (p = knots[0] > 0) the spline becomes

        g(r) = V(p) + s (p - r) + (S / p) (p - r)^2,   0 <= r < p,

    with s = max(-V'(p), 0) and S = max(s, max |V'| over the fitted range) (eV/Å): the
    energy rises monotonically as r falls and the force pushes the atoms apart, at
    least as hard as the fit's steepest slope. When the fit is repulsive at p
    (V'(p) < 0), p becomes a double knot and energy and force are continuous (C1).
    When it is not, no monotonic continuation can match its slope; p becomes a triple
    knot and only the energy is continuous (the force jumps at p): a fit that attracts
    at p has a cusp there, not a hole below it.

    Args:
        knots: ``(m,)`` clamped knot vector (Å), knots[0..3] equal.
        coefficients: ``(m - 4,)`` all coefficients (eV), trimmed ones included.

    Returns:
        ``(knots, coefficients)`` of the extended spline (``m + mu`` knots, mu = 2 or
        3, and mu more coefficients); the inputs themselves when knots[0] <= 0.
        On [p, r_c] it is the same piecewise cubic (the coefficients there are the
        input's, the one that straddles p follows from V(p) and V'(p)).
    """
    t = np.asarray(knots, dtype=float)
    c = np.asarray(coefficients, dtype=float)
    p = float(t[0])
    if p <= 0:
        return t, c
    # B-spline derivative coefficients 3 (c_{j+1} - c_j) / (t_{j+4} - t_{j+1}); the
    # first is V'(p) (clamped start) and together they bound |V'| on the range.
    span = t[4 : 4 + len(c) - 1] - t[1 : len(c)]
    slopes = np.divide(3.0 * np.diff(c), span, out=np.zeros(len(c) - 1), where=span > 0)
    s = max(-float(slopes[0]), 0.0)
    wall = max(s, float(np.abs(slopes).max()))
    mu = 2 if s > 0 else 3
    new_t = np.concatenate([[0.0] * 4, [p] * mu, t[4:]])
    # g(r) = V(p) + s (p - r) + (wall / p) (p - r)^2 as a polynomial in r
    poly = (c[0] + s * p + wall * p, -s - 2 * wall, wall / p)
    low = [_blossom(poly, new_t[j + 1 : j + 4]) for j in range(mu)]
    # The function that straddles p has blossom V(p) + (0 - p) V'(p) / 3 (double knot)
    # or V(p) (triple knot): from the fit itself, so [p, r_c] keeps its exact values.
    straddle = c[0] - p * slopes[0] / 3 if mu == 2 else c[0]
    return new_t, np.concatenate([low, [straddle], c[1:]])


# ----------------------------------------------------------------------------------
# blocks of the coefficient vector
# ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Block2:
    pair: tuple[int, int]  # species indices, I <= J
    knots: np.ndarray
    offset: int  # first column

    @property
    def n_free(self) -> int:
        return len(self.knots) - 4 - _TRIM

    @property
    def cutoff(self) -> float:
        return float(self.knots[-1])


@dataclass(frozen=True)
class _Block3:
    triple: tuple[int, int, int]  # centre I, neighbours J <= K (species indices)
    knots: tuple[np.ndarray, np.ndarray, np.ndarray]  # ij, ik, jk
    offset: int
    table: np.ndarray  # (n_ij, n_ik, n_jk) free index -> column, full (untrimmed) shape; -1 = trimmed

    @property
    def symmetric(self) -> bool:
        return self.triple[1] == self.triple[2]

    @property
    def n_free(self) -> int:
        return int((self.table >= 0).sum() if not self.symmetric else len(np.unique(self.table[self.table >= 0])))

    @property
    def cutoff(self) -> float:
        return float(self.knots[0][-1])


def _table3(shape: tuple[int, int, int], symmetric: bool, offset: int) -> np.ndarray:
    """Column of each coefficient C[a, b, c] (-1 for trimmed ones)."""
    na, nb, nc = (s - _TRIM for s in shape)
    table = np.full(shape, -1, dtype=np.int64)
    col = offset
    for a in range(na):
        for b in range(a if symmetric else 0, nb):
            table[a, b, :nc] = np.arange(col, col + nc)
            if symmetric:
                table[b, a, :nc] = table[a, b, :nc]
            col += nc
    return table



# ----------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------


class Uf3Model(LinearModel):
    """UF3 with two- and three-body cubic B-splines (see the module docstring).

    Args:
        species: element symbols (the order of the coefficient blocks).
        r2: two-body cutoff, Å (default 5.5).
        n2: number of two-body knot intervals on [r2_min, r2] (default 20); n2 free
            coefficients per species pair.
        r3: three-body cutoff of r_ij and r_ik, Å (default 3.75); r_jk runs to 2 r3.
        n3: knot intervals on [r3_min, r3] for r_ij, r_ik (default 6); r_jk gets
            2 n3 intervals on [r3_min, 2 r3]. Free coefficients per block:
            n3 * n3 * 2 n3, or n3 (n3 + 1) / 2 * 2 n3 when J == K.
        r2_min: first two-body knot, Å (default 0): the fitted range is [r2_min, r2].
            Set it near the shortest distance in the data (spline pieces without
            data are undetermined); written files continue below it with a repulsive
            wall down to 0 Å (module docstring), which the design matrix leaves out.
        r3_min: first three-body knot, Å (default 1.5); triplets with a distance
            below it get no three-body energy (as in LAMMPS).
        one_body: prepend one reference-energy column per species (default True).

    Attributes:
        cutoff: Å, max(r2, r3).
    """

    name = "uf3"

    def __init__(
        self,
        species: Sequence[str],
        r2: float = 5.5,
        n2: int = 20,
        r3: float = 3.75,
        n3: int = 6,
        r2_min: float = 0.0,
        r3_min: float = 1.5,
        one_body: bool = True,
        *,
        _knots2: dict | None = None,
        _knots3: dict | None = None,
    ) -> None:
        self.species = check_species(species)
        ns = len(self.species)
        if _knots2 is None:
            for what, v in (("n2", n2), ("n3", n3)):
                if int(v) != v or v < 1:
                    raise ConfigurationError(f"{what} must be an integer >= 1, got {v}")
            if not 0 <= r2_min < r2:
                raise ConfigurationError(f"need 0 <= r2_min < r2, got r2_min={r2_min}, r2={r2} Å")
            if not 0 <= r3_min < r3:
                raise ConfigurationError(f"need 0 <= r3_min < r3, got r3_min={r3_min}, r3={r3} Å")
            if r3 > r2:
                raise ConfigurationError(
                    f"r3 ({r3} Å) must not exceed r2 ({r2} Å): LAMMPS takes three-body "
                    "neighbours from the two-body list"
                )
            # round-trip through text so the knots are exactly what LAMMPS reads
            k2 = np.array([float(format_number(v)) for v in clamped_knots(r2_min, r2, int(n2))])
            k3 = np.array([float(format_number(v)) for v in clamped_knots(r3_min, r3, int(n3))])
            kjk = np.array([float(format_number(v)) for v in clamped_knots(r3_min, 2 * r3, 2 * int(n3))])
            _knots2 = {p: k2 for p in itertools.combinations_with_replacement(range(ns), 2)}
            _knots3 = {(i, *p): (k3, k3, kjk) for i in range(ns)
                       for p in itertools.combinations_with_replacement(range(ns), 2)}
        self.one_body = bool(one_body)
        offset = ns if self.one_body else 0
        self._blocks2: list[_Block2] = []
        for pair in itertools.combinations_with_replacement(range(ns), 2):
            b = _Block2(pair, np.asarray(_knots2[pair], float), offset)
            if b.n_free < 1:
                raise ConfigurationError(f"two-body knots of {self._names(pair)} leave no free coefficient")
            self._blocks2.append(b)
            offset += b.n_free
        if _knots3 is None:  # pragma: no cover - the file reader passes both
            raise ConfigurationError("_knots2 and _knots3 go together")
        self._blocks3: list[_Block3] = []
        for i in range(ns):
            for p in itertools.combinations_with_replacement(range(ns), 2):
                kij, kik, kjk = (np.asarray(k, float) for k in _knots3[(i, *p)])
                sym = p[0] == p[1]
                if kij[-1] != kik[-1] or 2 * kij[-1] != kjk[-1]:
                    raise ConfigurationError(
                        f"three-body block {self._names((i, *p))}: LAMMPS needs equal ij and ik "
                        f"cutoffs and a jk cutoff twice as large, got {kij[-1]}, {kik[-1]}, {kjk[-1]}"
                    )
                if sym and not np.array_equal(kij, kik):
                    raise ConfigurationError(
                        f"three-body block {self._names((i, *p))} needs the same ij and ik knots"
                    )
                table = _table3((len(kij) - 4, len(kik) - 4, len(kjk) - 4), sym, offset)
                b3 = _Block3((i, *p), (kij, kik, kjk), offset, table)
                self._blocks3.append(b3)
                offset += b3.n_free
        self._n = offset
        self.cutoff = max([b.cutoff for b in self._blocks2] + [b3.cutoff for b3 in self._blocks3])
        for b3 in self._blocks3:
            r2_pairs = [self._block2(b3.triple[0], s).cutoff for s in b3.triple[1:]]
            if b3.cutoff > min(r2_pairs):
                raise ConfigurationError(
                    f"three-body cutoff {b3.cutoff} Å of {self._names(b3.triple)} exceeds a "
                    f"two-body cutoff ({min(r2_pairs)} Å)"
                )

    # -- bookkeeping ------------------------------------------------------------------

    def _names(self, idx) -> str:
        return "-".join(self.species[k] for k in idx)

    def _block2(self, a: int, b: int) -> _Block2:
        pair = (min(a, b), max(a, b))
        return self._blocks2[[blk.pair for blk in self._blocks2].index(pair)]

    @property
    def n_coefficients(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return (f"Uf3Model(species={list(self.species)}, cutoff={self.cutoff:.4g} Å, "
                f"one_body={self.one_body}, n_coefficients={self._n})")

    def reference_energy(self, coefficients: np.ndarray, atoms: Atoms) -> float:
        """``sum_s n_s e_s`` (eV): the part of ``energy @ c`` the ``.uf3`` file lacks."""
        c = self._check_coefficients(coefficients)
        if not self.one_body:
            return 0.0
        counts = [int(np.sum(atoms.numbers == atomic_numbers[s])) for s in self.species]
        return float(np.dot(counts, c[: len(self.species)]))

    # -- design matrix ------------------------------------------------------------------

    def design_matrix(self, frames: Sequence[Atoms], forces: bool = True) -> DesignMatrix:
        """Rows for ``frames`` (layout: module docstring).

        Args:
            frames: ASE structures (positions Å, cell rows Å, any pbc); labels ignored.
            forces: also build the ``(3 * sum(n_atoms), n_coefficients)`` force rows.

        Returns:
            :class:`DesignMatrix` (energy rows in eV, force rows in eV/Å, per unit
            coefficient).
        """
        frames = check_frames(frames, self.species, "Uf3Model")
        energy = np.zeros((len(frames), self._n))
        f_rows = []
        for f, at in enumerate(frames):
            e, fr, _ = self._frame_rows(at, self.species_index(at), forces)
            energy[f] = e.sum(axis=0)
            if forces:
                f_rows.append(fr)
        n_atoms = np.array([len(a) for a in frames])
        return DesignMatrix(energy=energy, forces=np.vstack(f_rows) if forces else None, n_atoms=n_atoms)

    def per_atom_rows(self, atoms: Atoms) -> np.ndarray:
        """``(N, n_coefficients)`` per-atom energy rows, split as LAMMPS tallies
        per-atom energies: a two-body term of an ordered pair to its centre (half to
        each atom of the pair, from both orders), a three-body term a third to each of
        its atoms, the one-body column to the atom itself."""
        (atoms,) = check_frames([atoms], self.species, "Uf3Model")
        return self._frame_rows(atoms, self.species_index(atoms), False)[0]

    def weighted_rows(self, atoms: Atoms, weights: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows of the weighted energy E_w = sum_i w_i E_i and of its exact gradient,
        with E_i the terms centred on i (its ordered pairs and the triplets it is the
        vertex of), which read only atoms within the cutoff of i. This is the split
        LAMMPS computes for a truncated list of centres (the plugin's weight levels),
        not the per-atom tally of :meth:`per_atom_rows` (a third of each triplet to
        each of its atoms).

        Args:
            atoms: any structure of the model's species.
            weights: ``(N,)``.

        Returns:
            ``(energy (nc,), forces (3N, nc), strain derivative (3, 3, nc))``: ``@ c``
            gives E_w in eV, -dE_w/dx in eV/Å (atom by atom, x y z) and dE_w/d(eps) in
            eV (positions and cell strained together, x' = x (1 + eps)).
        """
        (atoms,) = check_frames([atoms], self.species, "Uf3Model")
        w = np.asarray(weights, dtype=float)
        centred, forces, strain = self._frame_rows(atoms, self.species_index(atoms), True, w)
        return w @ centred, forces, strain

    def _frame_rows(self, at: Atoms, types: np.ndarray, forces: bool,
                    weights: np.ndarray | None = None):
        """``(N, nc)`` per-atom energy rows, ``(3N, nc)`` force rows (or None) and
        ``(3, 3, nc)`` strain-derivative rows (with ``weights`` only, else None); with
        ``weights`` the energy rows are those of the terms centred on each atom and the
        force and strain rows those of sum_i w_i E_i (see :meth:`weighted_rows`)."""
        n, nc = len(at), self._n
        i, j, d, vec = neighbour_pairs(at.positions, at.cell.array, at.pbc, self.cutoff, "ijdD")
        e = np.zeros(n * nc)  # flat (atom, column)
        if self.one_body:
            e[np.arange(n) * nc + types] = 1.0
        # Force rows are assembled per Cartesian component as sparse (atoms x terms)
        # incidence matrices times sparse (terms x columns) derivative matrices.
        inc_rows: list = []
        inc_vals: list[list] = [[], [], []]
        grads: list = []
        bonds: list = []  # per term the vector its derivative is along (strain rows)
        n_terms = 0

        def add_term(atom_idx, bond, g, centre):
            """Terms of dE/dx along ``bond`` = x[atom_idx[1]] - x[atom_idx[0]] (+ image):
            +g (x) unit on atom_idx[1], -g (x) unit on atom_idx[0]; with ``weights``,
            each scaled by the weight of its term's centre atom."""
            nonlocal n_terms
            m = g.shape[0]
            unit = bond / np.linalg.norm(bond, axis=1)[:, None]
            cols = n_terms + np.arange(m)
            inc_rows.append((np.concatenate([atom_idx[0], atom_idx[1]]), np.concatenate([cols, cols])))
            for k in range(3):
                inc_vals[k].append(np.concatenate([-unit[:, k], unit[:, k]]))
            grads.append(g if weights is None else sp.diags(weights[centre]) @ g)
            bonds.append(bond)
            n_terms += m

        # ---- two-body: every ordered pair of the full list (energy to the centre i)
        ti, tj = types[i], types[j]
        for blk in self._blocks2:
            sel = (np.minimum(ti, tj) == blk.pair[0]) & (np.maximum(ti, tj) == blk.pair[1]) & (d < blk.cutoff)
            sel &= d >= blk.knots[0]
            if not sel.any():
                continue
            r = d[sel]
            first, val, der = cubic_bspline_basis(blk.knots, r)
            cols = first[:, None] + np.arange(4)
            keep = cols < blk.n_free  # trimmed coefficients are zero
            owner = np.broadcast_to(i[sel][:, None] * nc, cols.shape)[keep]
            e += np.bincount(owner + (blk.offset + cols)[keep], weights=val[keep], minlength=n * nc)
            if forces:
                rows = np.repeat(np.arange(len(r)), 4).reshape(-1, 4)
                g = sp.csr_matrix((der[keep], (rows[keep], (blk.offset + cols)[keep])), shape=(len(r), nc))
                add_term((i[sel], j[sel]), vec[sel], g, i[sel])

        # ---- three-body: ordered pairs of neighbours (p, q) of the same centre
        if self._blocks3:
            e3, terms = self._three_body(i, j, d, vec, types, forces,
                                         centred=weights is not None)
            e += e3.ravel()
            for atoms_, bond, g, centre in terms:
                add_term(atoms_, bond, g, centre)

        per_atom = e.reshape(n, nc)
        if not forces:
            return per_atom, None, None
        frows = np.zeros((n, 3, nc))
        strain = np.zeros((3, 3, nc))
        if n_terms:
            r_idx = np.concatenate([r for r, _ in inc_rows])
            c_idx = np.concatenate([c for _, c in inc_rows])
            g_all = sp.vstack(grads).tocsr()
            for k in range(3):
                inc = sp.csr_matrix((np.concatenate(inc_vals[k]), (r_idx, c_idx)), shape=(n, n_terms))
                # F = -dE/dx
                frows[:, k, :] = -(inc @ g_all).toarray()
            if weights is not None:
                # dE/d(eps_ab) = sum over terms of bond_a (dE/d|bond|) unit_b
                b = np.vstack(bonds)
                outer = b[:, :, None] * b[:, None, :] / np.linalg.norm(b, axis=1)[:, None, None]
                strain = (g_all.T @ outer.reshape(-1, 9)).T.reshape(3, 3, nc)
        return per_atom, frows.reshape(3 * n, nc), None if weights is None else strain

    def _three_body(self, i, j, d, vec, types, forces, centred: bool = False):
        """``(N, nc)`` per-atom energy rows (a third of each triplet to each of its
        atoms, or with ``centred`` all of it to its vertex) and derivative terms
        ``(atoms, bond, rows, vertex)`` of the three-body blocks."""
        nc, n = self._n, len(types)
        e = np.zeros(n * nc)
        terms: list = []
        short = d < max(b.cutoff for b in self._blocks3)
        pi = np.flatnonzero(short)
        if pi.size < 2:
            return e.reshape(n, nc), terms
        ci = i[pi]
        order = np.argsort(ci, kind="stable")
        pi, ci = pi[order], ci[order]
        # all ordered pairs (p, q), p != q, sharing a centre
        starts = np.searchsorted(ci, ci, side="left")
        counts = np.bincount(ci, minlength=int(ci.max()) + 1)[ci]
        reps = counts - 1
        p_loc = np.repeat(np.arange(len(pi)), reps)
        offs = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
        base = np.repeat(starts, reps)
        own = np.repeat(np.arange(len(pi)) - starts, reps)
        q_loc = base + offs + (offs >= own)  # skip q == p
        p, q = pi[p_loc], pi[q_loc]
        tj, tk = types[j[p]], types[j[q]]
        centre = i[p]
        # J <= K: one order for mixed pairs; both orders (weight 1/2) for equal species
        keep = tj <= tk
        p, q, tj, tk, centre = p[keep], q[keep], tj[keep], tk[keep], centre[keep]
        djk_vec = vec[q] - vec[p]
        rjk = np.linalg.norm(djk_vec, axis=1)
        ti = types[centre]
        for blk in self._blocks3:
            bi, bj, bk = blk.triple
            kij, kik, kjk = blk.knots
            sel = (ti == bi) & (tj == bj) & (tk == bk)
            sel &= (d[p] < kij[-1]) & (d[q] < kik[-1]) & (d[p] >= kij[0]) & (d[q] >= kik[0])
            sel &= (rjk >= kjk[0]) & (rjk < kjk[-1])
            if not sel.any():
                continue
            w = 0.5 if blk.symmetric else 1.0
            rij, rik, rj = d[p[sel]], d[q[sel]], rjk[sel]
            fa, va, da = cubic_bspline_basis(kij, rij)
            fb, vb, db = cubic_bspline_basis(kik, rik)
            fc, vc, dc = cubic_bspline_basis(kjk, rj)
            a = fa[:, None, None, None] + np.arange(4)[None, :, None, None]
            b = fb[:, None, None, None] + np.arange(4)[None, None, :, None]
            c = fc[:, None, None, None] + np.arange(4)[None, None, None, :]
            cols = blk.table[a, b, c]  # (m, 4, 4, 4); -1 where trimmed
            ok = cols >= 0
            prod = w * va[:, :, None, None] * vb[:, None, :, None] * vc[:, None, None, :]
            # LAMMPS (ev_tally3) gives a third of a triplet's energy to each of its atoms
            flat = cols[ok]
            per_triplet = ok.reshape(len(ok), -1).sum(axis=1)
            owners = (centre[sel],) if centred else (centre[sel], j[p[sel]], j[q[sel]])
            share = prod[ok] / len(owners)
            for atom in owners:
                owner = np.repeat(atom * nc, per_triplet)
                e += np.bincount(owner + flat, weights=share, minlength=n * nc)
            if not forces:
                continue
            m = len(rij)
            rows = np.broadcast_to(np.arange(m)[:, None, None, None], cols.shape)[ok]

            def g(x, ok=ok, rows=rows, cols=cols, m=m):
                return sp.csr_matrix((x[ok], (rows, cols[ok])), shape=(m, nc))

            g_ij = g(w * da[:, :, None, None] * vb[:, None, :, None] * vc[:, None, None, :])
            g_ik = g(w * va[:, :, None, None] * db[:, None, :, None] * vc[:, None, None, :])
            g_jk = g(w * va[:, :, None, None] * vb[:, None, :, None] * dc[:, None, None, :])
            ps, qs, cs = p[sel], q[sel], centre[sel]
            terms.append(((cs, j[ps]), vec[ps], g_ij, cs))
            terms.append(((cs, j[qs]), vec[qs], g_ik, cs))
            terms.append(((j[ps], j[qs]), djk_vec[sel], g_jk, cs))
        return e.reshape(n, nc), terms

    # -- coefficients <-> file --------------------------------------------------------

    def uf3_text(self, coefficients: np.ndarray) -> str:
        """Contents of the LAMMPS ``.uf3`` file (one-body energies are not written).

        Two-body splines whose first knot is above 0 are written extended down to 0 Å
        by the repulsive wall of :func:`extend_to_zero` (LAMMPS returns garbage for
        a pair below the first knot); above the first knot the file is the model.
        """
        c = self._check_coefficients(coefficients)
        head = "#UF3 POT UNITS: metal DATE: mlmix AUTHOR: mlmix CITATION:"
        out: list[str] = []
        for blk in self._blocks2:
            coef = np.zeros(len(blk.knots) - 4)
            coef[: blk.n_free] = c[blk.offset : blk.offset + blk.n_free]
            knots, coef = extend_to_zero(blk.knots, coef)
            out += [head, f"2B {self._names(blk.pair).replace('-', ' ')} 0 {_TRIM} nk",
                    f"{format_number(blk.cutoff)} {len(knots)}", " ".join(format_number(v) for v in knots),
                    str(len(coef)), " ".join(format_number(v) for v in coef), "#"]
        for blk3 in self._blocks3:
            kij, kik, kjk = blk3.knots
            full = np.where(blk3.table >= 0, c[np.maximum(blk3.table, 0)], 0.0)
            out += [head, f"3B {self._names(blk3.triple).replace('-', ' ')} 0 {_TRIM} nk",
                    f"{format_number(kjk[-1])} {format_number(kik[-1])} {format_number(kij[-1])} "
                    f"{len(kjk)} {len(kik)} {len(kij)}",
                    " ".join(format_number(v) for v in kjk), " ".join(format_number(v) for v in kik),
                    " ".join(format_number(v) for v in kij), " ".join(str(s) for s in full.shape)]
            out += [" ".join(format_number(v) for v in full[a, b])
                    for a in range(full.shape[0]) for b in range(full.shape[1])]
            out.append("#")
        return "\n".join(out) + "\n"

    def write(self, coefficients: np.ndarray, directory: Path, stem: str) -> list[Path]:
        """Write ``<stem>.uf3`` into ``directory`` (atomically); returns ``[path]``."""
        path = Path(directory) / f"{stem}.uf3"
        return write_texts_atomically({path: self.uf3_text(coefficients)})

    def potential(self, coefficients: np.ndarray, directory: Path, stem: str) -> LammpsPotential:
        """Write the file and load it as ``pair_style uf3 3``.

        Its energies are ``energy @ c - reference_energy(c, atoms)``; forces are
        ``forces @ c`` (for structures with no pair below r2_min, where the file adds
        its repulsive wall).
        """
        (path,) = self.write(coefficients, directory, stem)
        return LammpsPotential.uf3(path, list(self.species))

    @classmethod
    def from_file(cls, file: str | os.PathLike, species: Sequence[str],
                  one_body: bool = False) -> tuple[Uf3Model, np.ndarray]:
        """Model and coefficients of an existing ``.uf3`` file (blocks of ``species`` only).

        The file must use "0 3" trims with zero trailing coefficients (as the uf3
        package writes them). For J == K blocks the upper triangle (a < b) of C is
        taken, which is what LAMMPS uses. A file mlmix wrote with a wall below its
        fitted range loads with knots from 0 Å, the wall's coefficients included.

        Returns:
            ``(model, coefficients)``; one-body columns (if asked for) are zero.
        """
        path = resolve_potential_file(file)
        species = check_species(species)
        index = {s: k for k, s in enumerate(species)}
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        k2: dict = {}
        k3: dict = {}
        c2: dict = {}
        c3: dict = {}
        n = 0
        while n < len(lines):
            tok = lines[n].split()
            if not tok or tok[0] not in ("2B", "3B"):
                n += 1
                continue
            els = tok[1:3] if tok[0] == "2B" else tok[1:4]
            trims = tok[len(els) + 1: len(els) + 3]
            if trims != ["0", str(_TRIM)]:
                raise ConfigurationError(f"{path.name}: block {' '.join(tok)} has trims {trims}, expected 0 3")
            if tok[0] == "2B":
                knots = np.array(lines[n + 2].split(), float)
                coef = np.array(lines[n + 4].split(), float)
                n += 5
                if not all(e in index for e in els):
                    continue
                pair = tuple(index[e] for e in els)
                key = tuple(sorted(pair))
                k2[key], c2[key] = knots, coef
            else:
                kjk, kik, kij = (np.array(lines[n + 2 + m].split(), float) for m in range(3))
                shape = tuple(int(v) for v in lines[n + 5].split())
                rows = [lines[n + 6 + m].split() for m in range(shape[0] * shape[1])]
                n += 6 + shape[0] * shape[1]
                if not all(e in index for e in els):
                    continue
                coef = np.array(rows, float).reshape(shape)
                tri = tuple(index[e] for e in els)
                if tri[1] > tri[2]:  # store as I J K with J <= K: transpose ij <-> ik
                    tri = (tri[0], tri[2], tri[1])
                    kij, kik = kik, kij
                    coef = coef.transpose(1, 0, 2)
                k3[tri], c3[tri] = (kij, kik, kjk), coef
        model_missing = [cls._names_of(species, p) for p in
                         itertools.combinations_with_replacement(range(len(species)), 2) if p not in k2]
        if model_missing:
            raise ConfigurationError(f"{path.name} has no 2B block for {model_missing}")
        missing3 = [cls._names_of(species, (i, *p)) for i in range(len(species))
                    for p in itertools.combinations_with_replacement(range(len(species)), 2)
                    if (i, *p) not in k3]
        if missing3:
            raise ConfigurationError(f"{path.name} has no 3B block for {missing3}")
        model = cls(species, one_body=one_body, _knots2=k2, _knots3=k3)
        c = np.zeros(model.n_coefficients)
        for blk in model._blocks2:
            coef = c2[blk.pair]
            if np.any(coef[blk.n_free:] != 0):
                raise ConfigurationError(
                    f"{path.name}: trimmed 2B coefficients of {model._names(blk.pair)} are not zero")
            c[blk.offset: blk.offset + blk.n_free] = coef[: blk.n_free]
        for blk3 in model._blocks3:
            coef = c3[blk3.triple]
            if np.any(coef[blk3.table < 0] != 0):
                raise ConfigurationError(
                    f"{path.name}: trimmed 3B coefficients of {model._names(blk3.triple)} "
                    "are not zero")
            a, b, cc = np.nonzero(blk3.table >= 0)
            if blk3.symmetric:  # LAMMPS copies the upper triangle (a < b) onto the lower
                upper = a <= b
                a, b, cc = a[upper], b[upper], cc[upper]
            c[blk3.table[a, b, cc]] = coef[a, b, cc]
        return model, c

    @staticmethod
    def _names_of(species, idx) -> str:
        return "-".join(species[k] for k in idx)
