"""The LAMMPS frame of an ASE cell: LAMMPS wants a lower-triangular box, so positions
are rotated into it and forces rotated back; box faces are put in the widest gaps
between atomic planes (see :func:`lammps_frame`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..errors import ConfigurationError


def _widest_gap_centre(s: np.ndarray) -> float:
    """Fractional coordinate (0..1) at the centre of the widest periodic gap between
    the values ``s`` (taken modulo 1)."""
    u = np.sort(np.mod(s, 1.0))
    gaps = np.diff(np.append(u, u[0] + 1.0))
    i = int(np.argmax(gaps))
    return float(np.mod(u[i] + 0.5 * gaps[i], 1.0))


def _times_matrix(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``x @ m`` for ``(N, 3)`` rows and a ``(3, 3)`` matrix, as three scaled-column
    sums: a BLAS call on so thin a product spends more on its threads than on work."""
    return x[:, 0:1] * m[0] + x[:, 1:2] * m[1] + x[:, 2:3] * m[2]


def _half_spacing_sq(inverse: np.ndarray, periodic: np.ndarray) -> float:
    """(Å^2) The square of half the smallest spacing of periodic lattice planes."""
    return float(0.5 / np.linalg.norm(inverse[:, periodic], axis=0).max()) ** 2


def minimum_image(d: np.ndarray, box: np.ndarray, inverse: np.ndarray,
                  periodic: np.ndarray) -> np.ndarray:
    """``(N, 3)`` displacements by the minimum image of the rows ``box`` ((3, 3), Å,
    ``inverse`` its inverse) along the ``periodic`` ((3,) bool) directions."""
    if not periodic.any():
        return d
    # A displacement shorter than half the smallest spacing of periodic lattice planes
    # is its own minimum image (every lattice vector is at least that spacing long):
    # the usual case (atoms moved by a step) costs one norm instead of two products.
    far = np.einsum("ij,ij->i", d, d) >= _half_spacing_sq(inverse, periodic)
    if not far.any():
        return d
    s = _times_matrix(d[far], inverse)
    s[:, periodic] -= np.round(s[:, periodic])
    out = d.copy()
    out[far] = _times_matrix(s, box)
    return out


def squared_minimum_image(d: np.ndarray, box: np.ndarray, inverse: np.ndarray,
                          periodic: np.ndarray) -> np.ndarray:
    """``(N,)`` squared lengths (Å^2) of the minimum images of the ``(N, 3)``
    displacements ``d`` (arguments as :func:`minimum_image`): one pass over ``d`` when
    every displacement is short (the skin checks of every step)."""
    sq = np.einsum("ij,ij->i", d, d)
    if not periodic.any():
        return sq
    far = sq >= _half_spacing_sq(inverse, periodic)
    if far.any():
        m = minimum_image(d[far], box, inverse, periodic)
        sq[far] = np.einsum("ij,ij->i", m, m)
    return sq


@dataclass(frozen=True)
class LammpsFrame:
    """An ASE cell expressed as a LAMMPS box.

    Attributes:
        rotation: ``(3, 3)``; LAMMPS positions are ``x_ase @ rotation`` and ASE forces
            ``f_lammps @ rotation.T`` (orthogonal; a reflection when the axes had to
            be permuted into a left-handed order).
        box: ``(3, 3)`` lower-triangular rows a, b, c of the LAMMPS box (Å).
        origin: ``(3,)`` box lower corner (Å): zero along periodic axes unless the
            faces were placed in gaps (:func:`lammps_frame`).
        pbc: the periodicity of the LAMMPS axes (periodic axes come first).
    """

    rotation: np.ndarray
    box: np.ndarray
    origin: np.ndarray
    pbc: tuple[bool, bool, bool]

    def to_lammps(self, positions: np.ndarray) -> np.ndarray:
        """``(N, 3)`` ASE positions -> LAMMPS positions, wrapped along periodic axes."""
        x = positions.copy() if self._identity else _times_matrix(positions, self.rotation)
        p = self._periodic
        if not p.any():
            return x
        if p.all() and not self.triclinic:
            return self._wrap_orthogonal(x)
        if self.triclinic:
            s = _times_matrix(x - self.origin, self._inverse_box)
        else:
            s = (x - self.origin) * self._inverse_diagonal
        for k in np.flatnonzero(p):  # column views: no fancy-index copies
            col = s[:, k]
            col -= np.floor(col)
            col[col >= 1.0] = 0.0  # floor round-off
        if self.triclinic:
            return self.origin + _times_matrix(s, self.box)
        return self.origin + s * np.diag(self.box)

    def _wrap_orthogonal(self, x: np.ndarray) -> np.ndarray:
        """:meth:`to_lammps`'s wrap of ``x`` (``(N, 3)``, overwritten) in a periodic
        orthogonal box: the same operations on the flat array against tiled
        per-axis constants, which numpy runs 5x faster than broadcasting a length-3
        axis (the whole call: 3.4 to 1.6 ms at 64k atoms)."""
        tiles = self._tiles.get(len(x))
        if tiles is None:
            n = len(x)
            tiles = (np.tile(self.origin, n), np.tile(self._inverse_diagonal, n),
                     np.tile(np.diag(self.box), n))
            self._tiles.clear()  # one atom count at a time: no growth
            self._tiles[n] = tiles
        lo, inverse, length = tiles
        s = x.reshape(-1)
        s -= lo
        s *= inverse
        s -= np.floor(s)
        s[s >= 1.0] = 0.0  # floor round-off
        s *= length
        s += lo
        return x

    @cached_property
    def _tiles(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return {}

    def to_ase(self, v: np.ndarray) -> np.ndarray:
        """``(N, 3)`` LAMMPS-frame vectors (forces, velocities) -> the ASE frame."""
        return v if self._identity else _times_matrix(v, self.rotation.T)

    def min_image(self, d: np.ndarray) -> np.ndarray:
        """Minimum-image version of ``(N, 3)`` LAMMPS-frame displacements."""
        return minimum_image(d, self.box, self._inverse_box, self._periodic)

    def min_image_sq(self, d: np.ndarray) -> np.ndarray:
        """``(N,)`` squared lengths (Å^2) of :meth:`min_image` of ``d``."""
        return squared_minimum_image(d, self.box, self._inverse_box, self._periodic)

    # Cached per frame: a frame lives for a whole instance and these were recomputed at
    # every force call (3 ms per call at 32k atoms, mostly BLAS thread start-up).
    @cached_property
    def _periodic(self) -> np.ndarray:
        return np.array(self.pbc)

    @cached_property
    def _identity(self) -> bool:
        return bool(np.array_equal(self.rotation, np.eye(3)))

    @cached_property
    def _inverse_box(self) -> np.ndarray:
        return np.linalg.inv(self.box)

    @cached_property
    def _inverse_diagonal(self) -> np.ndarray:
        return 1.0 / np.diag(self.box)

    @cached_property
    def triclinic(self) -> bool:
        return bool(np.any(self.box[np.tril_indices(3, -1)] != 0.0))


def _reduce_tilts(box: np.ndarray, pbc: Sequence[bool]) -> np.ndarray:
    """Shorten lower-triangular box rows by lattice vectors so |tilt| <= half the
    diagonal (LAMMPS rejects or slows down strongly skewed boxes). Same lattice."""
    b = box.copy()
    if pbc[0] and pbc[1]:
        b[1] -= np.round(b[1, 0] / b[0, 0]) * b[0]
    if pbc[2]:
        if pbc[1]:
            b[2] -= np.round(b[2, 1] / b[1, 1]) * b[1]
        if pbc[0]:
            b[2] -= np.round(b[2, 0] / b[0, 0]) * b[0]
    return b


def lammps_frame(cell: np.ndarray, pbc: Sequence[bool], positions: np.ndarray, pad: float = 2.0,
                 faces_in_gaps: bool = False) -> LammpsFrame:
    """Build the LAMMPS box for an ASE cell (rows = lattice vectors, Å).

    Periodic axes come first; each open axis gets a unit vector orthogonal to the
    periodic ones (an open axis' cell vector has no physical meaning) so that LAMMPS'
    shrink-wrapping sees zero tilt along it. The cell is rotated to lower-triangular
    form by a QR decomposition. Open axes span the atoms plus ``pad`` Å (LAMMPS then
    shrink-wraps them, ``boundary s``). With ``faces_in_gaps`` each periodic face is
    moved (along its lattice vector, which changes no physics) to the middle of the
    widest gap between the atoms' planes, so that vibrating atoms do not cross it.
    """
    cell = np.asarray(cell, dtype=float)
    pbc = [bool(p) for p in np.broadcast_to(pbc, (3,))]
    per = [cell[k] for k in range(3) if pbc[k]]
    vecs = list(per)
    # Orthonormal basis of the periodic span, completed with cartesian directions
    # (Gram-Schmidt); the completion vectors become the open axes.
    ortho: list[np.ndarray] = []
    for v in [*per, *np.eye(3)]:
        if len(ortho) == 3:
            break
        for u in ortho:
            v = v - (v @ u) * u
        norm = np.linalg.norm(v)
        if norm > 1e-6 * max(1.0, float(np.linalg.norm(cell))):
            ortho.append(v / norm)
            if len(ortho) > len(per):
                vecs.append(ortho[-1])
    if len(ortho) < len(per):
        raise ConfigurationError(f"the periodic cell vectors are degenerate: {cell.tolist()}")
    m = np.array(vecs)
    if abs(np.linalg.det(m)) < 1e-9:
        raise ConfigurationError(f"the periodic cell vectors are degenerate: {cell.tolist()}")
    q, r = np.linalg.qr(m.T)
    d = np.sign(np.diag(r))
    q = q * d  # make the diagonal of the triangular factor positive
    box = (d[:, None] * r).T
    box[np.triu_indices(3, 1)] = 0.0
    lpbc = tuple([True] * len(per) + [False] * (3 - len(per)))
    box = _reduce_tilts(box, lpbc)
    origin = np.zeros(3)
    if faces_in_gaps and len(positions) and per:
        s = (np.asarray(positions, dtype=float) @ q) @ np.linalg.inv(box)
        for k in range(len(per)):
            origin += _widest_gap_centre(s[:, k]) * box[k]
    if len(per) < 3:
        x = np.asarray(positions, dtype=float) @ q
        for k in range(len(per), 3):
            lo, hi = (x[:, k].min(), x[:, k].max()) if len(x) else (0.0, 0.0)
            origin[k] = lo - pad
            box[k] = 0.0
            box[k, k] = hi - lo + 2 * pad
    return LammpsFrame(q, box, origin, lpbc)  # type: ignore[arg-type]


def format_number(x: float) -> str:
    """A float as LAMMPS input text, exactly (shortest repr that round-trips)."""
    return repr(float(x))



# ----------------------------------------------------------------------------------
# the potential
# ----------------------------------------------------------------------------------


def region_command(frame: LammpsFrame) -> str:
    """The ``region mlmix_box`` command of the frame's box (a prism when triclinic)."""
    b, o = frame.box, frame.origin
    hi = o + np.diag(b)
    bounds = " ".join(f"{format_number(o[k])} {format_number(hi[k])}" for k in range(3))
    if frame.triclinic:
        return (f"region mlmix_box prism {bounds} {format_number(b[1, 0])} "
                f"{format_number(b[2, 0])} {format_number(b[2, 1])} units box")
    return f"region mlmix_box block {bounds} units box"

