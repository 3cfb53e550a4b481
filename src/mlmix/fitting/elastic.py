"""Elastic constants and lattice parameters, from stresses or from energies.

(Slightly over the house limit of ~500 lines: the stress route, the energy route and
the strained-set fits share the strain convention, the result types and the input
checks defined here; splitting them would scatter one definition of C over modules.)

Every potential gives energies, so elastic constants can always come from
energy curvatures. For a cell relaxed to zero stress, with Voigt strain e (engineering
shears, see :func:`mlmix.fitting.data.voigt_to_tensor`) applied as
``cell @ (I + eps)``,

    E(e) / V0 = E0 / V0 + 1/2 e^T C e + O(e^3),

so ``C_ij = (1/V0) d^2 E / de_i de_j`` (the difference between the symmetric
deformation used here and the Lagrangian strain only enters multiplied by the
residual stress, which is zero at the relaxed cell). Units: energies eV, volumes Å^3,
C in GPa (1 eV/Å^3 = 160.2177 GPa).

* :func:`elastic_constants`: the full 6x6 matrix, internal coordinates relaxed at
  every strain for non-Bravais lattices (diamond's C44 needs it): from 12 stresses
  where the potential has them (:func:`elastic_constants_from_stress`), else from 145
  energies, central differences with one Richardson step
  (:func:`elastic_constants_from_energy`).
* :func:`elastic_from_strained_set`: cubic C11, C12, C44 from a labelled hard set
  (energy vs strain per strain type, like the shared ML-MIX files).
* :func:`lattice_parameter_from_strained_set`: the lattice parameter at which the
  hydrostatic energy-strain curve has zero slope.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms, units

from ..errors import ConfigurationError
from ..potentials.base import Potential
from .data import (
    _is_cubic_cell,
    _StrainEnergy,
    cubic_lattice_parameter,
    is_bravais,
    tensor_to_voigt,
    voigt_to_tensor,
)

# Strain steps of the finite differences: below, round-off; above, anharmonicity.
DELTA_RANGE = (1e-5, 0.02)

__all__ = [
    "EV_PER_A3_IN_GPA",
    "CubicConstants",
    "ElasticResult",
    "elastic_constants",
    "elastic_constants_from_energy",
    "elastic_constants_from_stress",
    "elastic_from_strained_set",
    "lattice_parameter_from_strained_set",
]

EV_PER_A3_IN_GPA = 1.0 / units.GPa
"""1 eV/Å^3 in GPa (about 160.2177)."""


@dataclass(frozen=True)
class CubicConstants:
    """Cubic elastic constants, GPa.

    Attributes:
        C11, C12, C44: GPa.
        bulk_modulus: ``(C11 + 2 C12) / 3``, GPa.
        shear_modulus_prime: ``C' = (C11 - C12) / 2``, GPa.
        zener_anisotropy: ``2 C44 / (C11 - C12)`` (1 for an isotropic solid).
    """

    C11: float
    C12: float
    C44: float

    @property
    def bulk_modulus(self) -> float:
        return (self.C11 + 2 * self.C12) / 3

    @property
    def shear_modulus_prime(self) -> float:
        return (self.C11 - self.C12) / 2

    @property
    def zener_anisotropy(self) -> float:
        return 2 * self.C44 / (self.C11 - self.C12)

    def as_dict(self) -> dict[str, float]:
        """``{"C11", "C12", "C44", "bulk_modulus"}`` in GPa (for reports)."""
        return {"C11": self.C11, "C12": self.C12, "C44": self.C44,
                "bulk_modulus": self.bulk_modulus}


@dataclass(frozen=True)
class ElasticResult:
    """Elastic constants of a bulk cell.

    Attributes:
        C: ``(6, 6)`` Voigt stiffness matrix, GPa (order xx, yy, zz, yz, xz, xy;
            engineering shear strains).
        volume: Å^3, volume of the reference cell.
        lattice_parameter: Å, conventional cubic lattice parameter of the reference
            cell (None for a non-cubic cell).
        method: how C was obtained.
        n_evaluations: energy or stress evaluations used (0 for a given data set).
        details: method-specific diagnostics (for strained sets, per strain type: the
            unit Voigt vector, curvature v^T C v measured and predicted by the cubic
            fit, GPa, and the slope dE/ds / V0 at s = 0 (a residual stress), GPa).
    """

    C: np.ndarray
    volume: float
    lattice_parameter: float | None
    method: str
    n_evaluations: int = 0
    details: dict = field(default_factory=dict)

    def cubic_deviation(self) -> float:
        """Largest deviation (GPa) of C from the cubic form with C11, C12, C44 set
        to the means of their equivalent entries."""
        return float(np.max(np.abs(self.C - _cubic_matrix(*self._cubic_means()))))

    def _cubic_means(self) -> tuple[float, float, float]:
        C = self.C
        c11 = float(np.mean(np.diag(C)[:3]))
        c12 = float(np.mean([C[0, 1], C[0, 2], C[1, 2], C[1, 0], C[2, 0], C[2, 1]]))
        c44 = float(np.mean(np.diag(C)[3:]))
        return c11, c12, c44

    def cubic(self, rtol: float = 0.01) -> CubicConstants:
        """C11, C12, C44 (GPa), after checking that C has the cubic form.

        Args:
            rtol: tolerance on every entry's deviation from the cubic form, relative to
                the largest entry of C.

        Raises:
            ConfigurationError: C is not cubic to that tolerance.
        """
        dev = self.cubic_deviation()
        scale = float(np.max(np.abs(self.C)))
        if dev > rtol * scale:
            raise ConfigurationError(
                f"cubic constants asked of a non-cubic cell: C deviates from the cubic "
                f"form by up to {dev:.3g} GPa (> {rtol:g} x {scale:.3g} GPa); use the full "
                "matrix ElasticResult.C, or a cubic cell aligned with the cube axes"
            )
        return CubicConstants(*self._cubic_means())



def _cubic_matrix(c11: float, c12: float, c44: float) -> np.ndarray:
    C = np.zeros((6, 6))
    C[:3, :3] = c12
    C[np.arange(3), np.arange(3)] = c11
    C[np.arange(3, 6), np.arange(3, 6)] = c44
    return C


def _lattice_parameter_or_none(atoms: Atoms) -> float | None:
    try:
        return cubic_lattice_parameter(atoms)
    except ConfigurationError:
        return None


# ----------------------------------------------------------------------------------
# from a potential
# ----------------------------------------------------------------------------------


def _check_elastic_inputs(atoms_relaxed: Atoms, potential: Potential, delta: float,
                          relax_internal: bool | None) -> bool:
    """Shared checks of both routes; returns whether to relax internal coordinates."""
    if not np.all(atoms_relaxed.pbc):
        raise ConfigurationError("elastic constants need a fully periodic cell (pbc = True)")
    if not DELTA_RANGE[0] <= delta <= DELTA_RANGE[1]:
        raise ConfigurationError(
            f"delta={delta} is outside [{DELTA_RANGE[0]:g}, {DELTA_RANGE[1]:g}]: smaller "
            "steps drown in round-off, larger ones in anharmonicity"
        )
    potential.check_atoms(atoms_relaxed)
    return not is_bravais(atoms_relaxed) if relax_internal is None else bool(relax_internal)


def elastic_constants(
    atoms_relaxed: Atoms,
    potential: Potential,
    delta: float = 1e-3,
    relax_internal: bool | None = None,
    *,
    fmax: float = 1e-6,
    method: str = "auto",
) -> ElasticResult:
    """The 6x6 elastic matrix (GPa), from stresses where the potential has them.

    ``method = "stress"`` (:func:`elastic_constants_from_stress`, 12 stress
    evaluations), ``"energy"`` (:func:`elastic_constants_from_energy`, 145 energies) or
    ``"auto"``: stress when ``potential.has_stress``, else energy. Arguments as those.
    """
    if method not in ("auto", "stress", "energy"):
        raise ConfigurationError(f"method must be 'auto', 'stress' or 'energy', got {method!r}")
    if method == "stress" or (method == "auto" and potential.has_stress):
        return elastic_constants_from_stress(atoms_relaxed, potential, delta, relax_internal,
                                             fmax=fmax)
    return elastic_constants_from_energy(atoms_relaxed, potential, delta, relax_internal,
                                         fmax=fmax)


def elastic_constants_from_stress(
    atoms_relaxed: Atoms,
    potential: Potential,
    delta: float = 1e-3,
    relax_internal: bool | None = None,
    *,
    fmax: float = 1e-6,
) -> ElasticResult:
    """The 6x6 elastic matrix (GPa) from central differences of the stress.

    ``C[:, j] = [sigma(+delta e_j) - sigma(-delta e_j)] / (2 delta)`` in Voigt strains
    (engineering shears), with internal relaxation at every strain where asked: 12
    stress evaluations (and relaxations). The error is O(delta^2) times the third-order
    constants (~1e-5 relative at delta = 1e-3); the matrix is symmetrised and its
    asymmetry before that reported in ``details``.

    Args:
        atoms_relaxed: a periodic cell at zero stress; Å.
        potential: an mlmix Potential with ``has_stress``.
        delta: strain step (dimensionless).
        relax_internal: relax positions at every strain (None = auto: for non-Bravais
            lattices such as diamond).
        fmax: eV/Å, internal relaxation tolerance.
    """
    relax = _check_elastic_inputs(atoms_relaxed, potential, delta, relax_internal)
    if not potential.has_stress:
        potential.stress(atoms_relaxed)  # raises, naming the potential
    f = _StrainEnergy(atoms_relaxed, potential, relax, fmax)
    eye = np.eye(6)
    columns = []
    for j in range(6):
        plus = potential.stress(f.structure(voigt_to_tensor(delta * eye[j])))
        minus = potential.stress(f.structure(voigt_to_tensor(-delta * eye[j])))
        columns.append((plus - minus) / (2 * delta))
    raw = np.array(columns).T * EV_PER_A3_IN_GPA
    C = 0.5 * (raw + raw.T)
    return ElasticResult(
        C=C,
        volume=atoms_relaxed.get_volume(),
        lattice_parameter=_lattice_parameter_or_none(atoms_relaxed),
        method=f"stress finite differences (delta={delta:g}; internal relaxation "
               f"{'on' if relax else 'off'})",
        n_evaluations=12,
        details={"relax_internal": relax, "delta": delta,
                 "max_asymmetry_GPa": float(np.abs(raw - raw.T).max())},
    )


def elastic_constants_from_energy(
    atoms_relaxed: Atoms,
    potential: Potential,
    delta: float = 1e-3,
    relax_internal: bool | None = None,
    *,
    fmax: float = 1e-6,
) -> ElasticResult:
    """The 6x6 elastic matrix (GPa) from energy curvatures.

    Central differences in the Voigt strains, ``D(h) = [E(h e_i) - 2 E0 + E(-h e_i)]
    / h^2`` for C_ii and ``M(h) = [E(h,h) - E(h,-h) - E(-h,h) + E(-h,-h)] / (4 h^2)``
    for C_ij, each with one Richardson step ``(4 X(delta) - X(2 delta)) / 3`` (error
    O(delta^4)); 145 energy evaluations. The matrix is symmetric by construction.

    Args:
        atoms_relaxed: a periodic cell at zero stress (from
            :func:`mlmix.fitting.data.relax_bulk`); Å.
        potential: any mlmix Potential.
        delta: strain step (dimensionless); 1e-3 keeps anharmonic terms at ~1e-6
            relative after extrapolation and the energy differences far above round-off.
        relax_internal: relax positions at every strain (None = auto: for non-Bravais
            lattices such as diamond, see :func:`mlmix.fitting.data.is_bravais`).
        fmax: eV/Å, internal relaxation tolerance.

    Returns:
        ElasticResult (``C`` in GPa; ``lattice_parameter`` for cubic cells).
    """
    relax_internal = _check_elastic_inputs(atoms_relaxed, potential, delta, relax_internal)
    f = _StrainEnergy(atoms_relaxed, potential, bool(relax_internal), fmax)
    V0 = atoms_relaxed.get_volume()
    eye = np.eye(6)

    def E(e: np.ndarray) -> float:
        return f(voigt_to_tensor(e))

    E0 = E(np.zeros(6))
    H = {}
    for h in (delta, 2 * delta):
        M = np.zeros((6, 6))
        for i in range(6):
            M[i, i] = (E(h * eye[i]) - 2 * E0 + E(-h * eye[i])) / h**2
            for j in range(i):
                M[i, j] = M[j, i] = (
                    E(h * (eye[i] + eye[j])) - E(h * (eye[i] - eye[j]))
                    - E(-h * (eye[i] - eye[j])) + E(-h * (eye[i] + eye[j]))
                ) / (4 * h**2)
        H[h] = M
    curv = (4 * H[delta] - H[2 * delta]) / 3
    C = curv / V0 * EV_PER_A3_IN_GPA
    return ElasticResult(
        C=C,
        volume=V0,
        lattice_parameter=_lattice_parameter_or_none(atoms_relaxed),
        method=f"energy finite differences (delta={delta:g}, Richardson; internal "
               f"relaxation {'on' if relax_internal else 'off'})",
        n_evaluations=f.n,
        details={"relax_internal": bool(relax_internal), "delta": delta,
                 "energy": E0},
    )


# ----------------------------------------------------------------------------------
# from a labelled strained set
# ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Curve:
    name: str
    unit: np.ndarray  # (3, 3) strain per unit strain value
    s: np.ndarray  # (k,)
    energy: np.ndarray  # (k,) eV


def _check_reference(reference: Atoms) -> None:
    if not isinstance(reference, Atoms):
        raise ConfigurationError(f"reference must be an ase.Atoms, got {type(reference).__name__}")
    if not np.all(reference.pbc):
        raise ConfigurationError("the reference cell must be fully periodic")


def _curves(frames: Sequence[Atoms], reference: Atoms) -> list[_Curve]:
    """Group frames by ``info['strain_type']``; recover each type's unit strain tensor
    from the cells (``frame.cell = reference.cell @ (I + s U)``)."""
    _check_reference(reference)
    if len(frames) == 0:
        raise ConfigurationError("the strained set is empty")
    groups: dict[str, list[tuple[float, np.ndarray, float]]] = {}
    ref_cell = reference.cell.array
    for k, a in enumerate(frames):
        if "strain_type" not in a.info or "strain_value" not in a.info:
            raise ConfigurationError(
                f"frame {k} has no info['strain_type'] / info['strain_value']; label "
                "strained frames as mlmix.fitting.data.strained_set does"
            )
        if len(a) != len(reference):
            raise ConfigurationError(
                f"frame {k} has {len(a)} atoms but the reference has {len(reference)}; "
                "give the unstrained cell the set was made from"
            )
        if a.calc is None or "energy" not in a.calc.results:
            raise ConfigurationError(f"frame {k} ({a.info['strain_type']}) has no energy label")
        eps = np.linalg.solve(ref_cell, a.cell.array) - np.eye(3)
        groups.setdefault(str(a.info["strain_type"]), []).append(
            (float(a.info["strain_value"]), eps, float(a.calc.results["energy"]))
        )
    curves = []
    for name, rows in groups.items():
        s = np.array([r[0] for r in rows])
        eps = np.array([r[1] for r in rows])
        energy = np.array([r[2] for r in rows])
        nz = np.abs(s) > 0
        if nz.sum() < 2 or np.unique(s).size < 3:
            raise ConfigurationError(
                f"strain type {name!r} has {np.unique(s).size} distinct strain values; "
                "a curvature needs at least 3"
            )
        units_ = eps[nz] / s[nz, None, None]
        U = units_[np.argmax(np.abs(s[nz]))]
        dev = np.abs(units_ - U).max()
        if dev > 1e-4 * np.abs(U).max() or np.abs(eps[~nz]).max(initial=0.0) > 1e-9:
            raise ConfigurationError(
                f"the frames of strain type {name!r} do not share one strain direction "
                f"(cells deviate from reference @ (I + s U) by {dev:.3g}); check the "
                "reference cell and the strain_value labels"
            )
        if np.abs(U - U.T).max() > 1e-6 * np.abs(U).max():
            raise ConfigurationError(
                f"strain type {name!r} is not a symmetric strain of the reference cell "
                "(it contains a rotation); give the reference the set was made from"
            )
        order = np.argsort(s)
        curves.append(_Curve(name, 0.5 * (U + U.T), s[order], energy[order]))
    return curves


def _poly(s: np.ndarray, e: np.ndarray, degree: int) -> np.ndarray:
    """Polynomial coefficients (ascending powers of s) by least squares in s / max|s|."""
    scale = np.abs(s).max()
    coef = np.polynomial.polynomial.polyfit(s / scale, e, degree)
    return coef / scale ** np.arange(degree + 1)


def _degree(n_values: int, degree: int | None) -> int:
    if degree is not None:
        if not 2 <= degree <= n_values - 1:
            raise ConfigurationError(f"degree={degree} needs 2 <= degree <= {n_values - 1} (points - 1)")
        return degree
    # Quartic when there are points enough: removes the cubic (third-order constants)
    # and quartic terms from the curvature at |s| ~ 0.005.
    return min(4, n_values - 1)


def elastic_from_strained_set(
    frames: Sequence[Atoms], reference: Atoms, *, degree: int | None = None, rtol: float = 0.05
) -> ElasticResult:
    """Cubic C11, C12, C44 (GPa) from a labelled strained set.

    For each strain type the unit strain tensor U is recovered from the cells, the
    energies are fitted by a polynomial in the strain value s (quartic when there are
    at least 5 values) and the curvature ``k = E''(0) / V0`` equals ``v^T C v`` (v the
    Voigt vector of U). For a cubic crystal ``v^T C v = C11 (v1^2+v2^2+v3^2) +
    2 C12 (v1 v2 + v1 v3 + v2 v3) + C44 (v4^2+v5^2+v6^2)``: hydrostatic gives
    (C11 + 2 C12)/3, uniaxial [100] C11, the shears C44, uniaxial [111]
    (C11 + 2 C12 + 4 C44)/3. The three constants are the least-squares solution over
    all strain types; ``details`` lists, per type, the measured and predicted
    curvatures, so the redundant types ([111], the other shears) are the consistency
    check.

    Args:
        frames: labelled strained cells with ``info['strain_type']`` and
            ``info['strain_value']`` (the shared ML-MIX files, or
            :func:`mlmix.fitting.data.strained_set`).
        reference: the unstrained cell (cubic, aligned with the cube axes).
        degree: polynomial degree (default min(4, points - 1)).
        rtol: the largest relative misfit of a type's curvature allowed before a
            ConfigurationError (the data are then not those of a cubic crystal).
    """
    curves = _curves(frames, reference)
    if not _is_cubic_cell(reference.cell.array, rtol=1e-6):
        raise ConfigurationError(
            "cubic constants asked of a non-cubic cell: the reference cell has lengths "
            f"{reference.cell.lengths().tolist()} and angles {reference.cell.angles().tolist()}"
        )
    V0 = reference.get_volume()
    rows: list[list[float]] = []
    k: list[float] = []
    slope: list[float] = []
    per: dict[str, dict[str, Any]] = {}
    for c in curves:
        coef = _poly(c.s, c.energy, _degree(np.unique(c.s).size, degree))
        v = tensor_to_voigt(c.unit)
        rows.append([v[0] ** 2 + v[1] ** 2 + v[2] ** 2,
                     2 * (v[0] * v[1] + v[0] * v[2] + v[1] * v[2]),
                     v[3] ** 2 + v[4] ** 2 + v[5] ** 2])
        k.append(2 * coef[2] / V0 * EV_PER_A3_IN_GPA)
        slope.append(coef[1] / V0 * EV_PER_A3_IN_GPA)
        per[c.name] = {"voigt": v}
    design, curvature = np.array(rows), np.array(k)
    if np.linalg.matrix_rank(design, tol=1e-8) < 3:
        raise ConfigurationError(
            f"strain types {[c.name for c in curves]} do not determine C11, C12 and C44; "
            "include a hydrostatic or uniaxial [111] strain, uniaxial [100] and a shear"
        )
    sol, *_ = np.linalg.lstsq(design, curvature, rcond=None)
    pred = design @ sol
    for c, kk, pp, sl in zip(curves, curvature, pred, slope):
        per[c.name].update(curvature=float(kk), predicted=float(pp), slope=float(sl))
    misfit = np.abs(curvature - pred) / np.abs(pred)
    worst = int(np.argmax(misfit))
    if misfit[worst] > rtol:
        raise ConfigurationError(
            f"the strained set is not that of a cubic crystal: the curvature of "
            f"{curves[worst].name!r} is {curvature[worst]:.4g} GPa but C11, C12, C44 fitted to "
            f"all types predict {pred[worst]:.4g} GPa ({misfit[worst]:.1%} off, rtol="
            f"{rtol:g}); check the labels or raise rtol"
        )
    return ElasticResult(
        C=_cubic_matrix(*sol),
        volume=V0,
        lattice_parameter=_lattice_parameter_or_none(reference),
        method="strained set: energy-strain curvatures, cubic least squares",
        details={"types": per, "max_misfit": float(misfit[worst])},
    )


def lattice_parameter_from_strained_set(
    frames: Sequence[Atoms], reference: Atoms, *, strain_type: str | None = None, degree: int = 3
) -> float:
    """Lattice parameter (Å) implied by the hydrostatic energy-strain data.

    The hydrostatic frames are ``reference.cell @ (1 + c s) I``; a polynomial (cubic by
    default) ``E(s)`` is fitted and its stationary point s* nearest 0 gives
    ``a = a_ref (1 + c s*)`` with a_ref the reference's conventional cubic lattice
    parameter. A reference relaxed with the labelling potential gives s* ~ 0.

    Args:
        strain_type: name of the hydrostatic type; default: the type whose unit strain
            is a multiple of the identity.
        degree: 2 (parabola) or 3 (cubic).

    Raises:
        ConfigurationError: no hydrostatic type, or no minimum within the data range.
    """
    curves = _curves(frames, reference)
    if strain_type is None:
        hyd = [c for c in curves if np.allclose(c.unit, c.unit[0, 0] * np.eye(3), atol=1e-9 * np.abs(c.unit).max())]
        if not hyd:
            raise ConfigurationError(
                f"no hydrostatic strain type among {[c.name for c in curves]}; pass "
                "strain_type= or include hydrostatic frames"
            )
        curve = hyd[0]
    else:
        match = [c for c in curves if c.name == strain_type]
        if not match:
            raise ConfigurationError(f"no frames of strain type {strain_type!r}; have {[c.name for c in curves]}")
        curve = match[0]
        if not np.allclose(curve.unit, curve.unit[0, 0] * np.eye(3), atol=1e-9 * np.abs(curve.unit).max()):
            raise ConfigurationError(f"strain type {strain_type!r} is not hydrostatic (U = {curve.unit.tolist()})")
    if degree not in (2, 3):
        raise ConfigurationError(f"degree must be 2 or 3, got {degree}")
    a_ref = cubic_lattice_parameter(reference)
    coef = _poly(curve.s, curve.energy, min(degree, np.unique(curve.s).size - 1))
    d = np.polynomial.polynomial.polyder(coef)
    roots = np.polynomial.polynomial.polyroots(d)
    roots = roots[np.abs(roots.imag) < 1e-12].real
    # A minimum: positive second derivative.
    roots = roots[np.polynomial.polynomial.polyval(roots, np.polynomial.polynomial.polyder(d)) > 0]
    span = np.abs(curve.s).max()
    roots = roots[np.abs(roots) <= 2 * span]
    if roots.size == 0:
        raise ConfigurationError(
            f"the hydrostatic energies ({curve.name!r}) have no minimum within twice the "
            f"strain range (+-{2 * span:g}); the reference is far from the labelling "
            "potential's lattice parameter - relax it first (relax_bulk)"
        )
    s_star = float(roots[np.argmin(np.abs(roots))])
    return a_ref * (1.0 + curve.unit[0, 0] * s_star)
