"""Linear SNAP as a :class:`~mlmix.fitting.model.LinearModel`.

The design matrix comes from LAMMPS itself (``compute snap``), so the descriptors are
by construction those that ``pair_style snap`` evaluates with the written files.

Layout of the coefficient vector (the order of a ``.snapcoeff`` file)::

    c = [beta0(s1), beta_1(s1) .. beta_K(s1), beta0(s2), beta_1(s2) .. beta_K(s2), ...]

so ``n_coefficients = n_species * (K + 1)``. For a frame the energy is
``sum_i beta0(s_i) + sum_i beta(s_i) . B_i`` (``B_i`` the K bispectrum components of
atom i, minus those of an isolated atom when ``bzeroflag`` is 1): the energy row holds,
per species, the number of atoms of that species and the sum of their descriptors. The
force rows hold ``-sum_i dB_i/dx_k`` (``compute snap`` tallies them with this sign, so
``forces @ c`` are the forces, checked against ``pair_style snap`` in the tests) and
zeros in the constant columns.

How ``compute snap`` is driven (environment.md): one LAMMPS instance is kept for
consecutive frames with the same atom count, species sequence and periodicity; a new
cell is set with ``change_box``, positions are scattered in atom-ID order. The compute
is re-created for every frame because a second ``run`` with it defined fails in this
LAMMPS build ("Reuse of compute ID '<ID>_press'"). ``pair_style zero`` provides the
neighbour list; the reference column of the compute is therefore zero and dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers

from .._lammps_runtime import new_lammps, serial_comm
from ..errors import CalculationError, ConfigurationError
from ..potentials.lammps import (
    LammpsFrame,
    LammpsPotential,
    format_number,
    lammps_frame,
)
from .model import (
    DesignMatrix,
    LinearModel,
    check_frames,
    check_species,
    write_texts_atomically,
)

__all__ = ["SnapModel", "check_frames", "check_species", "n_bispectrum", "write_texts_atomically"]

# rcutfac of published linear SNAPs (with radelem 0.5, so the cutoff equals rcutfac):
# W from Wood & Thompson (W_2940_2017_2), the others from Zuo et al., JPCA 2020.
_RCUTFAC = {"W": 4.73442, "Mo": 4.6, "Cu": 4.1, "Ni": 4.1, "Si": 4.9, "Ge": 5.5, "Li": 5.1}
_RCUTFAC_DEFAULT = 4.7


# ----------------------------------------------------------------------------------
# helpers shared by the linear models
# ----------------------------------------------------------------------------------



# ----------------------------------------------------------------------------------
# SNAP
# ----------------------------------------------------------------------------------


def n_bispectrum(twojmax: int) -> int:
    """Number K of bispectrum components of linear SNAP (``chemflag 0``).

    Triples (j1, j2, j) of doubled angular momenta with j2 <= j1 <= j (LAMMPS keeps
    one of each symmetry-equivalent set), e.g. K = 30 for twojmax 6 and 55 for 8.
    """
    count = 0
    for j1 in range(twojmax + 1):
        for j2 in range(j1 + 1):
            for j in range(j1 - j2, min(twojmax, j1 + j2) + 1, 2):
                if j >= j1:
                    count += 1
    return count


class SnapModel(LinearModel):
    """Linear SNAP (bispectrum) model, evaluated by LAMMPS ``compute snap``.

    Args:
        species: element symbols in LAMMPS type order (the order of the written file).
        twojmax: band limit 2J (even, >= 0); K = :func:`n_bispectrum` (30 for 6, 55 for 8).
        rcutfac: cutoff scale; pair cutoff = rcutfac * (radelem_i + radelem_j), Å.
            Default: the published value for the element (W 4.73442, Mo 4.6, Cu/Ni 4.1,
            Si 4.9, Ge 5.5, Li 5.1), else 4.7 (with radelem 0.5 the cutoff in Å).
        radelem: per-species radius (dimensionless, default 0.5 each).
        wj: per-species neighbour weight (default 1.0, 0.9, 0.8, ... so that the
            descriptors tell neighbour species apart).
        rfac0, rmin0, switchflag: as in ``pair_style snap`` (defaults 0.99363, 0 Å, 1).
        bzeroflag: 1 subtracts the descriptors of an isolated atom, so beta0 is the
            energy of an isolated atom (the standard for linear SNAP); 0 as in
            W_2940_2017_2.

    Attributes:
        n_descriptors: K, bispectrum components per species.
        cutoff: Å, largest pair cutoff.
    """

    name = "snap"

    def __init__(
        self,
        species: Sequence[str],
        twojmax: int = 6,
        rcutfac: float | None = None,
        radelem: Sequence[float] | None = None,
        wj: Sequence[float] | None = None,
        rfac0: float = 0.99363,
        rmin0: float = 0.0,
        bzeroflag: int = 1,
        switchflag: int = 1,
    ) -> None:
        self.species = check_species(species)
        ns = len(self.species)
        if int(twojmax) != twojmax or twojmax < 0 or twojmax % 2:
            raise ConfigurationError(f"twojmax must be an even integer >= 0, got {twojmax}")
        self.twojmax = int(twojmax)
        if rcutfac is None:
            rcutfac = max(_RCUTFAC.get(s, _RCUTFAC_DEFAULT) for s in self.species)
        if not rcutfac > 0:
            raise ConfigurationError(f"rcutfac must be > 0, got {rcutfac}")
        self.rcutfac = float(rcutfac)
        self.radelem = self._per_species("radelem", radelem, [0.5] * ns)
        self.wj = self._per_species("wj", wj, [1.0 - 0.1 * k for k in range(ns)])
        if not (0 < rfac0 <= 1):
            raise ConfigurationError(f"rfac0 must be in (0, 1], got {rfac0}")
        if rmin0 < 0:
            raise ConfigurationError(f"rmin0 must be >= 0 Å, got {rmin0}")
        if bzeroflag not in (0, 1) or switchflag not in (0, 1):
            raise ConfigurationError(f"bzeroflag and switchflag must be 0 or 1, got {bzeroflag}, {switchflag}")
        self.rfac0, self.rmin0 = float(rfac0), float(rmin0)
        self.bzeroflag, self.switchflag = int(bzeroflag), int(switchflag)
        self.n_descriptors = n_bispectrum(self.twojmax)
        self.cutoff = 2.0 * self.rcutfac * max(self.radelem)
        self._engine: _SnapEngine | None = None

    def _per_species(self, what: str, values, default: list[float]) -> tuple[float, ...]:
        if values is None:
            return tuple(default)
        values = tuple(float(v) for v in np.atleast_1d(values))
        if len(values) != len(self.species):
            raise ConfigurationError(
                f"{what} needs one value per species {list(self.species)}, got {list(values)}"
            )
        if any(not v > 0 for v in values):
            raise ConfigurationError(f"{what} values must be > 0, got {list(values)}")
        return values

    @property
    def n_coefficients(self) -> int:
        return len(self.species) * (self.n_descriptors + 1)

    def __repr__(self) -> str:
        return (f"SnapModel(species={list(self.species)}, twojmax={self.twojmax}, "
                f"rcutfac={self.rcutfac}, cutoff={self.cutoff:.4g} Å, "
                f"n_coefficients={self.n_coefficients})")

    # -- LAMMPS commands ---------------------------------------------------------------

    def compute_args(self) -> str:
        """Arguments of ``compute ID all snap ...`` and ``sna/atom`` for this model."""
        rad = " ".join(format_number(r) for r in self.radelem)
        w = " ".join(format_number(v) for v in self.wj)
        return (f"{format_number(self.rcutfac)} {format_number(self.rfac0)} {self.twojmax} {rad} {w} "
                f"rmin0 {format_number(self.rmin0)} bzeroflag {self.bzeroflag} "
                f"switchflag {self.switchflag} quadraticflag 0")

    # -- design matrix ------------------------------------------------------------------

    def design_matrix(self, frames: Sequence[Atoms], forces: bool = True) -> DesignMatrix:
        """Rows for ``frames`` (see the module docstring for the layout).

        Args:
            frames: ASE structures (positions Å, cell rows Å); only geometry and
                species are read.
            forces: also return the ``(3 * sum(n_atoms), n_coefficients)`` force rows.

        Returns:
            :class:`DesignMatrix` with ``energy`` ``(n_frames, n_coefficients)`` (eV per
            unit coefficient) and ``forces`` (eV/Å per unit coefficient) or None.
        """
        frames = check_frames(frames, self.species, "SnapModel")
        ns, k = len(self.species), self.n_descriptors
        nc = self.n_coefficients
        n_atoms = np.array([len(a) for a in frames])
        energy = np.zeros((len(frames), nc))
        force_rows = np.zeros((3 * int(n_atoms.sum()), nc)) if forces else None
        # Columns of species s: s*(K+1) is the constant, the next K the descriptors.
        desc_cols = np.concatenate([s * (k + 1) + 1 + np.arange(k) for s in range(ns)])
        engine = self._engine or _SnapEngine(self)
        self._engine = engine
        row = 0
        try:
            for f, at in enumerate(frames):
                types = self.species_index(at)
                arr, frame = engine.compute(at, types)
                n = len(at)
                energy[f, desc_cols] = arr[0, : ns * k]
                energy[f, np.arange(ns) * (k + 1)] = np.bincount(types, minlength=ns)
                if force_rows is not None:
                    # LAMMPS rows: atom-ID (= ASE) order, x y z in the LAMMPS frame;
                    # rotate each atom's 3-vector back: f_ase = f_lammps @ R.T.
                    d = arr[1 : 1 + 3 * n, : ns * k].reshape(n, 3, ns * k)
                    d = np.einsum("nac,ba->nbc", d, frame.rotation)
                    force_rows[row : row + 3 * n, desc_cols] = d.reshape(3 * n, ns * k)
                    row += 3 * n
        except Exception:
            engine.close()
            self._engine = None
            raise
        return DesignMatrix(energy=energy, forces=force_rows, n_atoms=n_atoms)

    def per_atom_rows(self, atoms: Atoms) -> np.ndarray:
        """``(N, n_coefficients)``: row i @ c is the energy of atom i, eV (its species'
        constant column 1, its bispectrum in its species' block, zeros elsewhere)."""
        (atoms,) = check_frames([atoms], self.species, "SnapModel")
        k = self.n_descriptors
        types = self.species_index(atoms)
        self._engine = self._engine or _SnapEngine(self)
        try:
            b = self._engine.per_atom(atoms, types)
        except Exception:
            self.close()
            raise
        rows = np.zeros((len(atoms), self.n_coefficients))
        n = np.arange(len(atoms))
        rows[n, types * (k + 1)] = 1.0
        cols = types[:, None] * (k + 1) + 1 + np.arange(k)
        rows[n[:, None], cols] = b
        return rows

    def close(self) -> None:
        """Close the LAMMPS instance kept between calls (idempotent)."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    # -- files ---------------------------------------------------------------------------

    def snapcoeff_text(self, coefficients: np.ndarray) -> str:
        """Contents of the ``.snapcoeff`` file for ``coefficients``."""
        c = self._check_coefficients(
            coefficients, f" ({len(self.species)} species x (1 + {self.n_descriptors}))"
        ).reshape(len(self.species), -1)
        lines = ["# linear SNAP written by mlmix", "", f"{len(self.species)} {self.n_descriptors + 1}"]
        for s, r, w, beta in zip(self.species, self.radelem, self.wj, c):
            lines.append(f"{s} {format_number(r)} {format_number(w)}")
            lines += [f"{b:.17g}" for b in beta]
        return "\n".join(lines) + "\n"

    def snapparam_text(self) -> str:
        """Contents of the ``.snapparam`` file."""
        return "\n".join([
            "# linear SNAP parameters written by mlmix", "",
            f"rcutfac {format_number(self.rcutfac)}", f"twojmax {self.twojmax}",
            f"rfac0 {format_number(self.rfac0)}", f"rmin0 {format_number(self.rmin0)}",
            f"bzeroflag {self.bzeroflag}", f"switchflag {self.switchflag}",
            "quadraticflag 0", "",
        ])

    def write(self, coefficients: np.ndarray, directory: Path, stem: str) -> list[Path]:
        """Write ``<stem>.snapcoeff`` and ``<stem>.snapparam`` into ``directory``.

        Returns:
            ``[snapcoeff_path, snapparam_path]``.
        """
        directory = Path(directory)
        texts = {
            directory / f"{stem}.snapcoeff": self.snapcoeff_text(coefficients),
            directory / f"{stem}.snapparam": self.snapparam_text(),
        }
        return write_texts_atomically(texts)

    def potential(self, coefficients: np.ndarray, directory: Path, stem: str) -> LammpsPotential:
        """Write the files and load them as ``pair_style snap``."""
        coeff, param = self.write(coefficients, directory, stem)
        return LammpsPotential.snap(coeff, list(self.species), param=param)


class _SnapEngine:
    """One LAMMPS instance that evaluates ``compute snap`` frame after frame."""

    _ID = "mlmix_snap"

    def __init__(self, model: SnapModel) -> None:
        self.model = model
        self.lmp: Any = None  # a LAMMPS instance, made on first use
        self.key: tuple | None = None

    def close(self) -> None:
        if self.lmp is not None:
            try:
                self.lmp.close()
            finally:
                self.lmp = None
                self.key = None

    def _cmd(self, cmd: str) -> None:
        try:
            self.lmp.command(cmd)
        except Exception as exc:  # LAMMPS raises a bare Exception
            raise CalculationError(f"LAMMPS failed on {cmd!r} while computing SNAP descriptors: {exc}") from None

    def _create(self, at: Atoms, types: np.ndarray, frame: LammpsFrame, x: np.ndarray) -> None:
        self.close()
        self.lmp = new_lammps(comm=serial_comm())  # rank 0 alone may featurise
        m = self.model
        b, o = frame.box, frame.origin
        hi = o + np.diag(b)
        bounds = " ".join(f"{format_number(o[k])} {format_number(hi[k])}" for k in range(3))
        cmds = [
            "units metal", "atom_style atomic", "atom_modify map array sort 0 0",
            "boundary " + " ".join("p" if p else "s" for p in frame.pbc),
            # Always a triclinic box, so that change_box can set any later cell.
            f"region mlmix_box prism {bounds} {format_number(b[1, 0])} "
            f"{format_number(b[2, 0])} {format_number(b[2, 1])} units box",
            f"create_box {len(m.species)} mlmix_box",
            *[f"mass {k + 1} {format_number(atomic_masses[atomic_numbers[s]])}" for k, s in enumerate(m.species)],
            f"pair_style zero {format_number(m.cutoff)}", "pair_coeff * *",
            "neighbor 1.0 bin", "neigh_modify every 1 delay 0 check yes",
            "thermo_style custom step",
        ]
        for c in cmds:
            self._cmd(c)
        n = len(at)
        self.lmp.create_atoms(n, list(range(1, n + 1)), (types + 1).tolist(), x.ravel().tolist())
        if self.lmp.get_natoms() != n:
            raise CalculationError(f"LAMMPS kept {self.lmp.get_natoms()} of {n} atoms")

    def _load(self, at: Atoms, types: np.ndarray) -> LammpsFrame:
        """Put the frame into the LAMMPS instance; returns its LAMMPS box."""
        pbc = tuple(bool(p) for p in at.pbc)
        frame = lammps_frame(at.cell.array, pbc, at.positions)
        x = frame.to_lammps(at.positions)
        key = (len(at), types.tobytes(), pbc)
        if self.lmp is None or key != self.key or not all(pbc):
            # Open axes are shrink-wrapped around the atoms: a fresh box is simplest.
            self._create(at, types, frame, x)
            self.key = key
        else:
            b = frame.box
            self._cmd(
                f"change_box all x final 0 {format_number(b[0, 0])} y final 0 {format_number(b[1, 1])} "
                f"z final 0 {format_number(b[2, 2])} xy final {format_number(b[1, 0])} "
                f"xz final {format_number(b[2, 0])} "
                f"yz final {format_number(b[2, 1])} units box"
            )
            x = np.ascontiguousarray(x)
            self.lmp.scatter("x", 1, 3, np.ctypeslib.as_ctypes(x.ravel()))
        return frame

    def compute(self, at: Atoms, types: np.ndarray) -> tuple[np.ndarray, LammpsFrame]:
        """The ``compute snap`` array of one frame and the frame's LAMMPS box."""
        import lammps

        frame = self._load(at, types)
        self._cmd(f"compute {self._ID} all snap {self.model.compute_args()} bikflag 0")
        self._cmd("run 0 post no")
        arr = self.lmp.numpy.extract_compute(self._ID, lammps.LMP_STYLE_GLOBAL, lammps.LMP_TYPE_ARRAY)
        if arr is None:
            raise CalculationError("LAMMPS returned no compute snap array")
        arr = np.array(arr, copy=True)
        # Work around "Reuse of compute ID '<ID>_press'" on the next run.
        self._cmd(f"uncompute {self._ID}")
        self._cmd(f"uncompute {self._ID}_press")
        return arr, frame

    def per_atom(self, at: Atoms, types: np.ndarray) -> np.ndarray:
        """``(N, K)`` bispectrum components of every atom (``compute sna/atom``), in
        ASE order."""
        import lammps

        self._load(at, types)
        self._cmd(f"compute {self._ID}_atom all sna/atom {self.model.compute_args()}")
        self._cmd("run 0 post no")
        arr = self.lmp.numpy.extract_compute(f"{self._ID}_atom", lammps.LMP_STYLE_ATOM,
                                             lammps.LMP_TYPE_ARRAY)
        if arr is None:
            raise CalculationError("LAMMPS returned no compute sna/atom array")
        ids = np.asarray(self.lmp.numpy.extract_atom("id")[: len(at)], dtype=np.int64)
        out = np.empty((len(at), self.model.n_descriptors))
        out[ids - 1] = np.asarray(arr)[: len(at)].reshape(len(at), -1)
        self._cmd(f"uncompute {self._ID}_atom")
        return out
