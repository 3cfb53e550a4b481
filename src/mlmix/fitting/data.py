"""Training data for the constrained distillation (method.md §5), from any mlmix Potential.

(Over the house limit of ~500 lines: the five steps below share the strain conventions
and the cache; a split would scatter one pipeline stage over several modules.)

* :func:`relax_bulk`: lattice and internal relaxation from energies and forces only
  (the :class:`~mlmix.potentials.base.Potential` interface has no stress).
* :func:`strained_set`: the hard set, small homogeneous strains of the relaxed cell.
* :func:`md_frames`: the soft set, Langevin MD frames, optionally relabelled by the
  expensive potential.
* :class:`LabelCache`: labelling cached on disk, one file per frame, so an interrupted
  run resumes where it stopped.
* :func:`read_frames`: user-supplied labelled extended XYZ (defects, surfaces).

Strain conventions
------------------
A strain is a symmetric 3x3 tensor ``eps`` (dimensionless, *tensor* shear components)
applied as ``cell_new = cell @ (I + eps)`` and ``positions_new = positions @ (I + eps)``
(rows are vectors, so every vector r becomes ``(I + eps) r``). Each named strain type
is a unit tensor ``U`` and the frame with ``strain_value = s`` has ``eps = s U``:

=================  ==================================  ==========================
name               U                                   energy curvature (cubic)
=================  ==================================  ==========================
hydrostatic        I / 3  (volume strain s)            (C11 + 2 C12) / 3 = B
uniaxial_100       x x                                 C11
uniaxial_010/001   y y, z z                            C11
uniaxial_111       n n, n = [111]/sqrt(3)              (C11 + 2 C12 + 4 C44) / 3
shear_xy/xz/yz     (x y + y x) / 2  (engineering       C44
                   shear gamma_xy = s)
shear_110_001      (n m + m n) / 2, n=[110], m=[001]   C44
shear_110_1-12     (n m + m n) / 2, n=[110], m=[1-12]  (C11 - C12 + 4 C44) / 6
=================  ==================================  ==========================

with ``E(s) / V0 = E0 / V0 + 1/2 s^2 v^T C v`` (v the Voigt vector of U with
engineering shears, C in eV/Å^3; the curvature column is ``v^T C v``). These are the
conventions of the shared ML-MIX strained sets, whose type names ("Hydrostatic",
"Uniaxial [100]", "Shear $[100],[010]$", ...) are accepted as aliases.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator
from scipy.optimize import minimize_scalar
from scipy.spatial import cKDTree

from ..errors import CalculationError, ConfigurationError
from ..potentials.base import Potential
from ..structures import thermalize

__all__ = [
    "STRAIN_TYPES",
    "LabelCache",
    "LatticeInfo",
    "apply_strain",
    "cubic_lattice_parameter",
    "has_cubic_symmetry",
    "is_bravais",
    "label_frame",
    "md_frames",
    "potential_identity",
    "read_frames",
    "relax_bulk",
    "relax_internal",
    "strain_tensor",
    "strained_set",
    "voigt_to_tensor",
]

# ----------------------------------------------------------------------------------
# strains
# ----------------------------------------------------------------------------------


def _sym(n, m) -> np.ndarray:
    n = np.asarray(n, float) / np.linalg.norm(n)
    m = np.asarray(m, float) / np.linalg.norm(m)
    return 0.5 * (np.outer(n, m) + np.outer(m, n))


STRAIN_TYPES: dict[str, np.ndarray] = {
    "hydrostatic": np.eye(3) / 3.0,
    "uniaxial_100": _sym([1, 0, 0], [1, 0, 0]),
    "uniaxial_010": _sym([0, 1, 0], [0, 1, 0]),
    "uniaxial_001": _sym([0, 0, 1], [0, 0, 1]),
    "uniaxial_111": _sym([1, 1, 1], [1, 1, 1]),
    "shear_xy": _sym([1, 0, 0], [0, 1, 0]),
    "shear_xz": _sym([1, 0, 0], [0, 0, 1]),
    "shear_yz": _sym([0, 1, 0], [0, 0, 1]),
    "shear_110_001": _sym([1, 1, 0], [0, 0, 1]),
    "shear_110_1-12": _sym([1, 1, 0], [1, -1, 2]),
}
"""Unit strain tensors (tensor shear components) by name; see the module docstring."""

_ALIASES = {
    "Hydrostatic": "hydrostatic",
    "Uniaxial [100]": "uniaxial_100",
    "Uniaxial [111]": "uniaxial_111",
    "Shear $[100],[010]$": "shear_xy",
    "Shear $[110],[001]$": "shear_110_001",
    "Shear $[110],[1bar{1}2]$": "shear_110_1-12",
}


def strain_tensor(name: str, value: float = 1.0) -> np.ndarray:
    """``(3, 3)`` strain tensor ``value * U[name]`` (names and aliases: module docstring)."""
    key = _ALIASES.get(name, name)
    if key not in STRAIN_TYPES:
        raise ConfigurationError(
            f"unknown strain type {name!r}; use one of {sorted(STRAIN_TYPES)}"
        )
    return float(value) * STRAIN_TYPES[key]


def voigt_to_tensor(e: Sequence[float] | np.ndarray) -> np.ndarray:
    """Voigt strain ``(e_xx, e_yy, e_zz, gamma_yz, gamma_xz, gamma_xy)`` with
    *engineering* shears (gamma = 2 eps) -> symmetric ``(3, 3)`` tensor."""
    e = np.asarray(e, float)
    if e.shape != (6,):
        raise ConfigurationError(f"a Voigt strain has 6 components, got shape {e.shape}")
    return np.array([
        [e[0], e[5] / 2, e[4] / 2],
        [e[5] / 2, e[1], e[3] / 2],
        [e[4] / 2, e[3] / 2, e[2]],
    ])


def tensor_to_voigt(eps: np.ndarray) -> np.ndarray:
    """Inverse of :func:`voigt_to_tensor` (symmetric part of ``eps``)."""
    s = 0.5 * (np.asarray(eps, float) + np.asarray(eps, float).T)
    return np.array([s[0, 0], s[1, 1], s[2, 2], 2 * s[1, 2], 2 * s[0, 2], 2 * s[0, 1]])


def apply_strain(atoms: Atoms, eps: np.ndarray) -> Atoms:
    """A copy of ``atoms`` with cell and positions multiplied by ``(I + eps)``.

    The calculator is not copied (the new structure has no labels).
    """
    eps = np.asarray(eps, float)
    if eps.shape != (3, 3) or not np.isfinite(eps).all():
        raise ConfigurationError(f"strain must be a finite 3x3 tensor, got {eps!r}")
    F = np.eye(3) + eps
    out = atoms.copy()
    out.calc = None
    out.set_cell(atoms.cell.array @ F, scale_atoms=False)
    out.positions = atoms.positions @ F
    return out


# ----------------------------------------------------------------------------------
# symmetry helpers (fractional coordinates, periodic KD-tree)
# ----------------------------------------------------------------------------------


class _Lattice:
    """Fractional coordinates of a fully periodic cell with a periodic KD-tree, to test
    whether an affine map in fractional coordinates maps the structure onto itself."""

    def __init__(self, atoms: Atoms, tol: float):
        if not np.all(atoms.pbc):
            raise ConfigurationError("bulk symmetry checks need a fully periodic cell (pbc = True)")
        self.frac = np.mod(atoms.get_scaled_positions(wrap=True), 1.0)
        self.numbers = atoms.numbers
        # Tolerance in fractional units: the smallest one over the three axes.
        self.tol = tol / float(np.max(atoms.cell.lengths()))
        self.tree = cKDTree(self.frac, boxsize=1.0 + 1e-12)

    def maps(self, R: np.ndarray, t: np.ndarray) -> bool:
        g = np.mod(self.frac @ R.T + t, 1.0)
        g = np.where(g >= 1.0, 0.0, g)
        dist, idx = self.tree.query(g, distance_upper_bound=self.tol)
        if not np.all(np.isfinite(dist)):
            return False
        return bool(np.array_equal(self.numbers[idx], self.numbers))

    def maps_with_some_translation(self, R: np.ndarray) -> bool:
        """True if ``f -> R f + t`` is a symmetry for some t (t from atom 0's images)."""
        f0 = self.frac[0] @ R.T
        for j in np.flatnonzero(self.numbers == self.numbers[0]):
            if self.maps(R, self.frac[j] - f0):
                return True
        return False


def is_bravais(atoms: Atoms, tol: float = 1e-3) -> bool:
    """True when every atom is a lattice translation of atom 0 (one atom per primitive
    cell, e.g. bcc, fcc; False for diamond, hcp, alloys, defects).

    Such a lattice keeps every atom on an inversion centre under any homogeneous
    strain, so the forces stay zero and no internal relaxation is needed.

    Args:
        tol: Å, position tolerance.
    """
    lat = _Lattice(atoms, tol)
    if np.unique(atoms.numbers).size > 1:
        return False
    eye = np.eye(3)
    return all(lat.maps(eye, lat.frac[j] - lat.frac[0]) for j in range(1, len(atoms)))


def _is_cubic_cell(cell: np.ndarray, rtol: float = 1e-8) -> bool:
    L = np.linalg.norm(cell, axis=1)
    off = np.abs(cell - np.diag(np.diag(cell)))
    return bool(np.allclose(L, L[0], rtol=rtol) and off.max() <= rtol * L[0]
                and np.all(np.diag(cell) > 0))


def has_cubic_symmetry(atoms: Atoms, tol: float = 1e-3) -> bool:
    """True when the cell is cubic and the structure is invariant (up to a translation)
    under the 3-fold rotation about [111] and the 2-fold rotation about [001].

    These generate the tetrahedral group T, common to every cubic point group; a
    symmetric second-rank tensor (the stress) invariant under T is a multiple of the
    identity, so an isotropic scaling of the cell is the only relaxation needed.
    """
    if not np.all(atoms.pbc) or not _is_cubic_cell(atoms.cell.array):
        return False
    lat = _Lattice(atoms, tol)
    c3 = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], float)
    c2 = np.diag([-1.0, -1.0, 1.0])
    return lat.maps_with_some_translation(c3) and lat.maps_with_some_translation(c2)


def cubic_lattice_parameter(atoms: Atoms, tol: float = 1e-3) -> float:
    """Conventional cubic lattice parameter (Å) of a cubic supercell.

    The largest m such that a translation by L/m along each cube axis maps the
    structure onto itself gives a = L / m (bcc, fcc and diamond all have their
    conventional lattice parameter as the shortest such axis translation).

    Raises:
        ConfigurationError: the cell is not cubic.
    """
    cell = atoms.cell.array
    if not np.all(atoms.pbc) or not _is_cubic_cell(cell, rtol=1e-6):
        raise ConfigurationError(
            "a cubic lattice parameter needs a periodic cubic cell (orthogonal, equal "
            f"lengths); got cell lengths {atoms.cell.lengths().tolist()} and angles "
            f"{atoms.cell.angles().tolist()}"
        )
    L = float(np.mean(np.diag(cell)))
    lat = _Lattice(atoms, tol)
    eye = np.eye(3)
    for m in range(int(L // 1.0), 0, -1):  # no lattice parameter is below ~1 Å
        if all(lat.maps(eye, eye[k] / m) for k in range(3)):
            return L / m
    return L  # pragma: no cover - m = 1 always maps


# ----------------------------------------------------------------------------------
# evaluation helpers
# ----------------------------------------------------------------------------------


def total_energy(potential: Potential, atoms: Atoms) -> float:
    """Total energy (eV) of ``atoms`` with ``potential`` on all atoms; non-finite is an error."""
    ev = potential.evaluate(atoms)
    e = float(np.sum(ev.energies))
    if not math.isfinite(e):
        raise CalculationError(f"{potential.name} returned a non-finite energy ({e})")
    return e


def relax_internal(atoms: Atoms, potential: Potential, fmax: float = 1e-5, steps: int = 2000) -> Atoms:
    """Relax positions at fixed cell (ASE BFGS on the forces) until max |F| <= fmax.

    Args:
        fmax: eV/Å.
        steps: BFGS step limit.

    Returns:
        A relaxed copy (no calculator attached).

    Raises:
        CalculationError: not converged within ``steps``.
    """
    from ase.optimize import BFGS

    work = atoms.copy()
    work.calc = potential.as_calculator()
    if np.abs(work.get_forces()).max() > fmax:  # skip the optimiser when already relaxed
        opt = BFGS(work, logfile=None)
        if not opt.run(fmax=fmax, steps=steps):
            fmax_now = float(np.linalg.norm(work.get_forces(), axis=1).max())
            raise CalculationError(
                f"internal relaxation with {potential.name} did not reach fmax={fmax} "
                f"eV/Å in {steps} steps (now {fmax_now:.3g}); check the structure or "
                "raise fmax"
            )
    out = work.copy()
    out.calc = None
    return out


@dataclass(frozen=True)
class LatticeInfo:
    """Result of :func:`relax_bulk`.

    Attributes:
        lattice_parameter: Å, conventional cubic lattice parameter (None for non-cubic
            cells).
        cell: ``(3, 3)`` relaxed cell, Å.
        energy: eV, total energy of the relaxed cell.
        energy_per_atom: eV/atom.
        volume_per_atom: Å^3/atom.
        mode: ``"isotropic"`` (one scale factor) or ``"full"`` (6 strain components).
        internal_relaxation: whether internal coordinates were relaxed.
        n_evaluations: energy evaluations of the lattice search.
        max_force: eV/Å, largest force component on the relaxed structure.
    """

    lattice_parameter: float | None
    cell: np.ndarray
    energy: float
    energy_per_atom: float
    volume_per_atom: float
    mode: str
    internal_relaxation: bool
    n_evaluations: int
    max_force: float


class _StrainEnergy:
    """E(eps) of a reference structure under homogeneous strain, with optional internal
    relaxation that starts from the last relaxed fractional coordinates."""

    def __init__(self, atoms: Atoms, potential: Potential, relax: bool, fmax: float):
        self.ref = atoms.copy()
        self.ref.calc = None
        self.potential = potential
        self.relax = relax
        self.fmax = fmax
        self.frac = atoms.get_scaled_positions(wrap=False)
        self.n = 0

    def structure(self, eps: np.ndarray) -> Atoms:
        a = apply_strain(self.ref, eps)
        if self.relax:
            a.set_scaled_positions(self.frac)
            a = relax_internal(a, self.potential, fmax=self.fmax)
            self.frac = a.get_scaled_positions(wrap=False)
        return a

    def __call__(self, eps: np.ndarray) -> float:
        self.n += 1
        return total_energy(self.potential, self.structure(eps))


def relax_bulk(
    atoms: Atoms,
    potential: Potential,
    fmax: float = 1e-4,
    *,
    mode: str = "auto",
    relax_internal: bool | None = None,
    strain_tol: float = 1e-9,
    max_iterations: int = 20,
) -> tuple[Atoms, LatticeInfo]:
    """Relax a periodic bulk cell (lattice and internal coordinates) without stress.

    The potential interface gives energies and forces only, so the cell is relaxed by
    minimising the energy over strains:

    * ``mode="isotropic"`` (the default for cubic cells with cubic symmetry, whose
      stress is hydrostatic by symmetry): E over a single scale factor s,
      ``cell -> s cell``, bracketed and then Brent's method (scipy minimize_scalar)
      to ``strain_tol`` in s (the lattice parameter to ~1e-8 Å).
    * ``mode="full"`` (any other cell): Newton's method on the 6 Voigt strain
      components, gradient from central differences of energies (step 2e-4), Hessian
      from finite differences (step 1e-3) once, then re-used (it is the elastic
      stiffness times the volume and barely changes); stops when the step is below
      ``strain_tol``.

    With internal relaxation (default: for non-Bravais structures such as diamond, see
    :func:`is_bravais`), positions are relaxed at fixed cell (BFGS, ``fmax / 10``) at
    every trial strain, so the energy minimised is that of the relaxed structure.

    Args:
        atoms: periodic bulk cell (Å); not modified.
        potential: any mlmix Potential.
        fmax: eV/Å, force tolerance of the final structure.
        mode: ``"auto"``, ``"isotropic"`` or ``"full"``.
        relax_internal: None = auto (True for non-Bravais lattices).
        strain_tol: convergence tolerance on the strain (dimensionless).
        max_iterations: Newton iterations (full mode).

    Returns:
        The relaxed copy (no calculator) and a :class:`LatticeInfo`.
    """
    if not np.all(atoms.pbc):
        raise ConfigurationError("relax_bulk needs a fully periodic cell (pbc = True on all axes)")
    if len(atoms) == 0:
        raise ConfigurationError("relax_bulk got an empty structure")
    if mode not in ("auto", "isotropic", "full"):
        raise ConfigurationError(f"mode must be 'auto', 'isotropic' or 'full', got {mode!r}")
    if not fmax > 0:
        raise ConfigurationError(f"fmax must be > 0 eV/Å, got {fmax}")
    potential.check_atoms(atoms)
    if relax_internal is None:
        relax_internal = not is_bravais(atoms)
    if mode == "auto":
        mode = "isotropic" if has_cubic_symmetry(atoms) else "full"
    f = _StrainEnergy(atoms, potential, bool(relax_internal), fmax / 10)
    if mode == "isotropic":
        eps = _isotropic_minimum(f, strain_tol) * np.eye(3)
    else:
        eps = voigt_to_tensor(_newton_minimum(f, strain_tol, max_iterations))
    relaxed = f.structure(eps)
    if relax_internal:
        relaxed = relax_internal_fn(relaxed, potential, fmax=fmax / 10)
    ev = potential.evaluate(relaxed)
    energy = float(np.sum(ev.energies))
    max_force = float(np.abs(ev.forces).max())
    if max_force > fmax:
        raise CalculationError(
            f"relax_bulk: the relaxed structure still has forces up to {max_force:.3g} "
            f"eV/Å > fmax={fmax}; the structure is probably not a bulk crystal at a "
            "minimum (pass relax_internal=True)"
        )
    relaxed.wrap()
    try:
        a = cubic_lattice_parameter(relaxed)
    except ConfigurationError:
        a = None
    n = len(relaxed)
    info = LatticeInfo(
        lattice_parameter=a,
        cell=relaxed.cell.array.copy(),
        energy=energy,
        energy_per_atom=energy / n,
        volume_per_atom=relaxed.get_volume() / n,
        mode=mode,
        internal_relaxation=bool(relax_internal),
        n_evaluations=f.n,
        max_force=max_force,
    )
    return relaxed, info


relax_internal_fn = relax_internal  # relax_bulk's keyword shadows the function name


def _isotropic_minimum(f: _StrainEnergy, tol: float) -> float:
    """Isotropic strain x (cell -> (1 + x) cell) minimising f; bracket then Brent."""
    def g(x: float) -> float:
        return f(x * np.eye(3))

    step = 0.01
    xs = [-step, 0.0, step]
    es = [g(x) for x in xs]
    # Walk downhill until the middle point is lowest (a bracket), at most +-30 %.
    for _ in range(60):
        k = int(np.argmin(es))
        if k == 1:
            break
        if k == 0:
            x = xs[0] - step
            xs, es = [x, *xs[:2]], [g(x), *es[:2]]
        else:
            x = xs[2] + step
            xs, es = [*xs[1:], x], [*es[1:], g(x)]
        if abs(x) > 0.3:
            raise CalculationError(
                "relax_bulk: no energy minimum within +-30 % isotropic strain; check the "
                "structure and that the potential describes this phase"
            )
    res = minimize_scalar(g, bracket=tuple(xs), method="brent", tol=tol)
    return float(res.x)


def _newton_minimum(f: _StrainEnergy, tol: float, max_iterations: int) -> np.ndarray:
    """Voigt strain minimising f(voigt_to_tensor(e)) by Newton with FD derivatives."""
    def F(e):
        return f(voigt_to_tensor(e))

    eye = np.eye(6)
    e = np.zeros(6)
    hH = 1e-3
    E0 = F(e)
    Ep = np.array([F(e + hH * eye[i]) for i in range(6)])
    Em = np.array([F(e - hH * eye[i]) for i in range(6)])
    H = np.diag((Ep - 2 * E0 + Em) / hH**2)
    for i in range(6):
        for j in range(i + 1, 6):
            pp = F(e + hH * (eye[i] + eye[j]))
            pm = F(e + hH * (eye[i] - eye[j]))
            mp = F(e - hH * (eye[i] - eye[j]))
            mm = F(e - hH * (eye[i] + eye[j]))
            H[i, j] = H[j, i] = (pp - pm - mp + mm) / (4 * hH**2)
    w = np.linalg.eigvalsh(H)
    if w.min() <= 0:
        raise CalculationError(
            f"relax_bulk: the energy Hessian over strain is not positive definite "
            f"(eigenvalues {w.tolist()} eV); the cell is mechanically unstable with this "
            "potential"
        )
    hg = 2e-4
    grad = (Ep - Em) / (2 * hH)
    for _ in range(max_iterations):
        step = -np.linalg.solve(H, grad)
        e = e + step
        if np.abs(step).max() < tol:
            return e
        grad = np.array([(F(e + hg * eye[i]) - F(e - hg * eye[i])) / (2 * hg) for i in range(6)])
    raise CalculationError(
        f"relax_bulk: the cell strain did not converge in {max_iterations} Newton steps "
        f"(last step {np.abs(step).max():.3g}); raise max_iterations or strain_tol"
    )


# ----------------------------------------------------------------------------------
# labelled sets
# ----------------------------------------------------------------------------------


def label_frame(atoms: Atoms, potential: Potential) -> Atoms:
    """A copy of ``atoms`` with a SinglePointCalculator holding the potential's total
    energy (eV), forces (eV/Å, ``(N, 3)``) and per-atom energies (eV, ``(N,)``)."""
    ev = potential.evaluate(atoms)
    out = atoms.copy()
    energy = float(np.sum(ev.energies))
    if not (math.isfinite(energy) and np.isfinite(ev.forces).all()):
        raise CalculationError(f"{potential.name} returned non-finite energies or forces")
    out.calc = SinglePointCalculator(out, energy=energy, forces=np.array(ev.forces),
                                     energies=np.array(ev.energies))
    return out


MAX_STRAIN = 0.1
"""Largest strain value accepted for a hard set (the elastic regime)."""
MAX_TIMESTEP_FS = 10.0
"""Longest MD time step accepted, fs."""

DEFAULT_STRAIN_VALUES = tuple(float(v) for v in np.linspace(-0.005, 0.005, 17))
DEFAULT_STRAIN_TYPES = ("hydrostatic", "uniaxial_100", "uniaxial_111", "shear_xy", "shear_xz", "shear_yz")


def strained_set(
    relaxed: Atoms,
    potential: Potential,
    strain_types: Sequence[str] = DEFAULT_STRAIN_TYPES,
    values: Sequence[float] | np.ndarray = DEFAULT_STRAIN_VALUES,
    relax_internal: bool | None = None,
    fmax: float = 1e-5,
    cache: LabelCache | None = None,
) -> list[Atoms]:
    """The hard set: homogeneous strains of a relaxed bulk cell, labelled.

    Frame (type t, value s) has ``eps = s U[t]`` (module docstring), cell and positions
    multiplied by ``I + eps``, internal coordinates relaxed when ``relax_internal``
    (None = auto: for non-Bravais lattices, see :func:`is_bravais`), and carries
    ``info["strain_type"] = t``, ``info["strain_value"] = s`` and a
    SinglePointCalculator with energy (eV) and forces (eV/Å).

    Args:
        relaxed: the relaxed cell (from :func:`relax_bulk`).
        values: dimensionless strain values (default 17 in [-0.005, 0.005]).
        fmax: eV/Å, internal relaxation tolerance.
        cache: a :class:`LabelCache`; labels, and relaxed positions when internal
            coordinates are relaxed, are stored per frame, so an interrupted run
            resumes without relaxing or labelling again.

    Returns:
        ``len(strain_types) * len(values)`` frames, type-major.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all():
        raise ConfigurationError(f"values must be a non-empty 1-D list of finite strains, got {values!r}")
    if np.abs(values).max() > MAX_STRAIN:
        raise ConfigurationError(
            f"strain values up to {np.abs(values).max()} are not small; the hard set is "
            "meant for the elastic regime (|s| <~ 0.01)"
        )
    units_ = [strain_tensor(t) for t in strain_types]  # validates the names first
    potential.check_atoms(relaxed)
    if relax_internal is None:
        relax_internal = not is_bravais(relaxed)
    frames = []
    for name, U in zip(strain_types, units_):
        for s in values:
            a = apply_strain(relaxed, s * U)
            if relax_internal and cache is not None:
                a = cache.relaxed(a, potential, lambda x: relax_internal_fn(x, potential, fmax=fmax),
                                  tag=f"fixed cell, fmax {fmax}")
            elif relax_internal:
                a = label_frame(relax_internal_fn(a, potential, fmax=fmax), potential)
            else:
                a = cache.label([a], potential)[0] if cache is not None else label_frame(a, potential)
            a.info["strain_type"] = name
            a.info["strain_value"] = float(s)
            frames.append(a)
    return frames


def md_frames(
    atoms: Atoms,
    driver: Potential | Calculator,
    temperature_K: float,
    n_frames: int,
    interval: int,
    timestep_fs: float,
    seed: int,
    relabel: Potential | None = None,
    *,
    friction_per_fs: float = 0.01,
    equilibration_steps: int = 0,
    cache: LabelCache | None = None,
) -> list[Atoms]:
    """The soft set: frames of Langevin MD (ASE) driven by a (cheap) potential.

    Velocities start from a Maxwell-Boltzmann distribution at ``temperature_K`` (K)
    (zero total momentum) drawn with ``seed``; the Langevin noise uses the same seed,
    so a run is reproducible. After ``equilibration_steps`` steps, a frame is taken
    every ``interval`` steps (the initial structure is not a frame).

    Args:
        driver: the potential that moves the atoms (an mlmix Potential or an ASE
            calculator).
        temperature_K: K. timestep_fs: fs. friction_per_fs: Langevin friction, 1/fs.
        relabel: if given (the expensive potential), frames are labelled with its
            energy and forces; otherwise with the driver's.
        cache: relabel through this :class:`LabelCache` (the MD itself is cheap and
            deterministic, so a resumed run regenerates the same frames and only
            labels the missing ones).

    Returns:
        ``n_frames`` labelled copies with ``info["md_step"]``,
        ``info["temperature_K"]``.
    """
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin

    for name, v in (("n_frames", n_frames), ("interval", interval)):
        if int(v) != v or v < 1:
            raise ConfigurationError(f"{name} must be a positive integer, got {v}")
    if not (temperature_K > 0 and timestep_fs > 0 and friction_per_fs > 0):
        raise ConfigurationError(
            f"temperature_K, timestep_fs and friction_per_fs must be > 0, got "
            f"{temperature_K}, {timestep_fs}, {friction_per_fs}"
        )
    if timestep_fs > MAX_TIMESTEP_FS:
        raise ConfigurationError(f"timestep_fs={timestep_fs} fs is far too long for atomistic MD; use ~1-5 fs")
    work = atoms.copy()
    if isinstance(driver, Potential):
        driver.check_atoms(work)
        work.calc = driver.as_calculator()
    elif isinstance(driver, Calculator):
        work.calc = driver
    else:
        raise ConfigurationError(f"driver must be an mlmix Potential or an ASE calculator, got {type(driver).__name__}")
    rng = np.random.default_rng(seed)
    thermalize(work, temperature_K, rng)
    # The centre of mass is held by a constraint: ASE's fixcm=True Langevin does not
    # sample NVT exactly (and is deprecated since ASE 3.28).
    work.set_constraint(FixCom())
    dyn = Langevin(work, timestep=timestep_fs * units.fs, temperature_K=temperature_K,
                   friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
    if equilibration_steps:
        dyn.run(int(equilibration_steps))
    frames = []
    for k in range(int(n_frames)):
        dyn.run(int(interval))
        snap = work.copy()
        snap.calc = None
        snap.set_constraint()
        if relabel is not None:
            snap = cache.label([snap], relabel)[0] if cache is not None else label_frame(snap, relabel)
        else:
            snap.calc = SinglePointCalculator(snap, energy=work.get_potential_energy(),
                                              forces=work.get_forces())
        snap.info["md_step"] = int(equilibration_steps + (k + 1) * interval)
        snap.info["temperature_K"] = float(temperature_K)
        frames.append(snap)
    return frames


# ----------------------------------------------------------------------------------
# on-disk label cache
# ----------------------------------------------------------------------------------


def _file_digests(tokens: Iterable[str]) -> list[str]:
    out = []
    for t in tokens:
        p = Path(t)
        if p.is_absolute() and p.is_file():
            out.append(f"{p.name}:{hashlib.sha256(p.read_bytes()).hexdigest()}")
    return out


def potential_identity(potential: Potential) -> str:
    """A string that changes whenever the potential would give different labels.

    For LAMMPS potentials: the LAMMPS commands plus the SHA-256 of every file they
    name (so editing a coefficient file invalidates the cache); otherwise the class
    and ``name``. Pass ``identity=`` to :meth:`LabelCache.label` for anything finer.
    """
    kind = f"{type(potential).__module__}.{type(potential).__qualname__}"
    parts = [kind, str(getattr(potential, "name", ""))]
    commands = getattr(potential, "lammps_commands", None)
    if callable(commands):
        lines = list(commands())
        parts += lines
        parts += _file_digests(tok for ln in lines for tok in ln.split())
    return "\n".join(parts)


def _read_frame(path: Path) -> Atoms:
    """The one frame of an extended-XYZ cache file; ValueError when it holds none."""
    import ase.io

    with open(path) as fh:
        frame = ase.io.read(fh, index=-1, format="extxyz")
    if not isinstance(frame, Atoms):  # pragma: no cover - index=-1 reads one frame
        raise ValueError(f"{path} holds no single frame")
    return frame


class LabelCache:
    """Labels (energy, forces) of frames cached on disk, one extxyz file per frame.

    The key is the SHA-256 of (positions, atomic numbers, cell, pbc as float64/int64
    bytes, and the potential identity), so the same frame labelled by the same
    potential is computed once, across runs. Files are written to a temporary name in
    the same directory and renamed (atomic on POSIX): an interrupted run leaves only
    complete files and resumes where it stopped.

    Labels are returned as read back from the file (forces with the 1e-8 eV/Å
    precision of extxyz, the energy exact), so a resumed run gives bit-identical data
    to an uninterrupted one.

    Attributes:
        directory: the cache folder (created).
        n_computed, n_cached: frames labelled by the potential / read from disk by
            this object.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.n_computed = 0
        self.n_cached = 0

    @staticmethod
    def key(atoms: Atoms, identity: str) -> str:
        """Hex SHA-256 of the frame's geometry and the potential identity."""
        h = hashlib.sha256()
        for arr in (
            np.ascontiguousarray(atoms.positions, dtype=np.float64),
            np.ascontiguousarray(atoms.numbers, dtype=np.int64),
            np.ascontiguousarray(atoms.cell.array, dtype=np.float64),
            np.ascontiguousarray(atoms.pbc, dtype=np.int64),
        ):
            h.update(arr.tobytes())
            h.update(b"|")
        h.update(identity.encode())
        return h.hexdigest()

    def path(self, atoms: Atoms, identity: str) -> Path:
        return self.directory / f"{self.key(atoms, identity)[:40]}.extxyz"

    def label(self, frames: Sequence[Atoms], potential: Potential, identity: str | None = None) -> list[Atoms]:
        """Labelled copies of ``frames`` (info kept), from the cache where possible."""

        ident = potential_identity(potential) if identity is None else identity
        out = []
        for atoms in frames:
            path = self.path(atoms, ident)
            cached = self._read(path, atoms)
            if cached is None:
                self._store(path, label_frame(atoms, potential))
                self.n_computed += 1
                cached = self._read(path, atoms)
                if cached is None:  # pragma: no cover - the file system lost the file
                    raise CalculationError(f"could not read back the cache file {path}")
            else:
                self.n_cached += 1
            energy, forces = cached
            new = atoms.copy()
            new.calc = SinglePointCalculator(new, energy=energy, forces=forces)
            out.append(new)
        return out

    def relaxed(self, atoms: Atoms, potential: Potential, relax, tag: str) -> Atoms:
        """``relax(atoms)`` labelled by ``potential``, cached with its relaxed positions.

        The key is the *input* geometry plus the potential identity and ``tag`` (which
        should name the relaxation settings), so a resumed run skips the relaxation as
        well as the labelling.
        """

        path = self.path(atoms, potential_identity(potential) + "\nrelaxed:" + tag)
        if path.exists():
            try:
                stored = _read_frame(path)
                energy, forces = stored.get_potential_energy(), stored.get_forces()
            except (OSError, ValueError, KeyError, RuntimeError):
                stored = None  # unreadable: relax again
            if stored is not None and np.array_equal(stored.numbers, atoms.numbers):
                out = atoms.copy()
                out.positions = stored.positions
                out.calc = SinglePointCalculator(out, energy=energy, forces=forces)
                self.n_cached += 1
                return out
        result = label_frame(relax(atoms), potential)
        self._store(path, result)
        self.n_computed += 1
        return self.relaxed(atoms, potential, relax, tag)  # read back: bit-identical resumes

    def _store(self, path: Path, atoms: Atoms) -> None:
        """Write one labelled frame atomically (temporary name, then rename)."""
        import ase.io

        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp_", suffix=".extxyz")
        try:
            with os.fdopen(fd, "w") as fh:
                ase.io.write(fh, atoms, format="extxyz")
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @staticmethod
    def _read(path: Path, atoms: Atoms) -> tuple[float, np.ndarray] | None:

        if not path.exists():
            return None
        try:
            stored = _read_frame(path)
            energy = stored.get_potential_energy()
            forces = stored.get_forces()
        except Exception:  # noqa: BLE001 - any unreadable file (e.g. written by a crashed older version): redo
            return None
        if len(stored) != len(atoms) or not np.array_equal(stored.numbers, atoms.numbers):
            return None  # a hash collision or a foreign file: recompute
        return float(energy), np.array(forces)


# ----------------------------------------------------------------------------------
# user data
# ----------------------------------------------------------------------------------


def read_frames(path: str | os.PathLike, index: str = ":", *, energy_key: str | None = None,
                forces_key: str | None = None) -> list[Atoms]:
    """Read labelled frames (energies in eV, forces in eV/Å) from extended XYZ.

    Args:
        path: extended XYZ file.
        energy_key, forces_key: read the labels from ``atoms.info[energy_key]`` and
            ``atoms.arrays[forces_key]`` instead of the standard ``energy`` / ``forces``
            (e.g. ``"REF_energy"``).

    Returns:
        Frames with a SinglePointCalculator (energy, forces); ``info`` kept.

    Raises:
        ConfigurationError: missing file, or a frame without energy or forces (the
            message names the frame and the keys that are there).
    """
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"no such file: {path}")
    try:
        with open(path) as fh:
            frames = ase.io.read(fh, index=index, format="extxyz")
    except Exception as exc:  # noqa: BLE001 - ASE raises many types for bad files
        raise ConfigurationError(f"could not read {path} as extended XYZ: {exc}") from None
    if isinstance(frames, Atoms):
        frames = [frames]
    out = []
    for k, a in enumerate(frames):
        res = dict(a.calc.results) if a.calc is not None else {}
        energy = a.info.get(energy_key) if energy_key else res.get("energy")
        forces = a.arrays.get(forces_key) if forces_key else res.get("forces")
        missing = [n for n, v in (("energy", energy), ("forces", forces)) if v is None]
        if missing or energy is None:
            have = sorted(set(a.info) | set(res)) + sorted(set(a.arrays) - {"numbers", "positions"})
            raise ConfigurationError(
                f"frame {k} of {path} has no {' and no '.join(missing)} (found: {have}); "
                "write them as energy=... in the comment line and a forces:R:3 column, "
                "or pass energy_key=/forces_key= naming where they are"
            )
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=float(energy), forces=np.array(forces, float))
        out.append(b)
    return out
