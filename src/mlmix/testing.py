"""Checks that any potential backend can be put through: a test helper for users and us.

(Over the house limit of ~500 lines: the checks share their argument handling and
messages, and users import them from one place, as torch-sim's conformance checker.)

Every backend implements :meth:`mlmix.potentials.Potential.evaluate`, whose contract
(see :mod:`mlmix.potentials.base`) is easy to state and easy to get subtly wrong:
per-atom energies on the mask, NaN elsewhere; forces ``-d(sum_{i in M} E_i)/dx_k``
that equal the whole-system forces on the *interior* of the mask M (the atoms whose
every neighbour within ``potential.cutoff`` is in M); inputs left untouched; no state
leaking from one call into the next. This module checks those promises on a given
structure:

* :func:`finite_difference_forces` / :func:`check_forces`: forces against central
  finite differences of the masked energy sum;
* :func:`check_conformance`: the whole list of interface checks, returning the
  measured numbers;
* :func:`interior`: the interior of a mask, the only atoms whose forces are defined.

Failed checks raise :class:`AssertionError` (these are test helpers; pytest shows the
message); unusable arguments raise :class:`mlmix.errors.ConfigurationError`.

Units: positions and distances Å, energies eV, forces eV/Å. Shapes: N atoms,
positions and forces ``(N, 3)``, energies and masks ``(N,)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from .carving import within
from .errors import ConfigurationError
from .potentials.base import Evaluation, Potential

__all__ = [
    "CONFORMANCE_CHECKS",
    "check_conformance",
    "check_forces",
    "finite_difference_forces",
    "finite_difference_gradient",
    "finite_difference_stress",
    "interior",
]

#: Names of the checks run by :func:`check_conformance`, in the order they run.
CONFORMANCE_CHECKS = (
    "attributes",
    "inputs_unchanged",
    "shapes_and_dtypes",
    "energies_nan_outside_mask",
    "n_evaluated",
    "interior_forces_finite",
    "interior_matches_all_atoms",
    "mask_change",
    "repeatable",
)

_DEFAULT_N_INDICES = 3


# ----------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------


def _as_mask(atoms: Atoms, mask) -> np.ndarray | None:
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.shape != (len(atoms),) or arr.dtype != bool:
        raise ConfigurationError(
            f"mask must be a boolean array of shape ({len(atoms)},), got "
            f"{arr.dtype} {arr.shape}"
        )
    return arr.copy()


def _cutoff(potential: Potential) -> float:
    # Any: a user's backend may set cutoff to anything; None and strings are refused below.
    value: Any = getattr(potential, "cutoff", None)
    try:
        cutoff = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"{potential!r} has no numeric cutoff ({value!r}); a backend must set "
            "cutoff (Å)"
        ) from None
    if not (np.isfinite(cutoff) and cutoff > 0):
        raise ConfigurationError(f"{potential!r} has cutoff {cutoff} Å; it must be > 0")
    return cutoff


def _positive(name: str, value: float, allow_zero: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a number, got {value!r}") from None
    ok = value >= 0 if allow_zero else value > 0
    if not (np.isfinite(value) and ok):
        raise ConfigurationError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def _required_mask(atoms: Atoms, mask: Any, message: str) -> np.ndarray:
    """``mask`` checked by :func:`_as_mask`; None (every atom) refused with ``message``."""
    checked = _as_mask(atoms, mask)
    if checked is None:
        raise ConfigurationError(message)
    return checked


def interior(atoms: Atoms, mask: np.ndarray, cutoff: float) -> np.ndarray:
    """The interior of ``mask``: mask atoms with no non-mask atom within ``cutoff``.

    These are the atoms on which a backend's forces are defined for a masked
    evaluation (distances minimum-image, strict ``d < cutoff``).

    Args:
        atoms: the structure.
        mask: ``(N,)`` bool.
        cutoff: Å, normally ``potential.cutoff``.

    Returns:
        ``(N,)`` bool; all of ``mask`` when the mask is every atom.
    """
    mask = _required_mask(atoms, mask, "interior() needs a mask, got None")
    cutoff = _positive("cutoff", cutoff)
    outside = ~mask
    if not outside.any():
        return mask
    near_outside = within(atoms.positions, atoms.cell.array, atoms.pbc, outside, cutoff)
    return mask & ~near_outside


def _default_indices(potential: Potential, atoms: Atoms, mask: np.ndarray | None) -> np.ndarray:
    """A few atoms spread over the candidates: the interior of the mask, or all atoms."""
    if mask is None:
        candidates = np.arange(len(atoms))
    else:
        candidates = np.flatnonzero(interior(atoms, mask, _cutoff(potential)))
        if candidates.size == 0:
            raise ConfigurationError(
                f"the mask ({int(mask.sum())} of {len(atoms)} atoms) has no interior atom "
                f"(no mask atom whose neighbours within the cutoff {_cutoff(potential):g} Å "
                "are all in the mask), so no force is defined; grow the mask or pass "
                "indices="
            )
    pick = np.linspace(0, candidates.size - 1, min(_DEFAULT_N_INDICES, candidates.size))
    return candidates[np.unique(np.round(pick).astype(int))]


def _as_indices(atoms: Atoms, indices) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(indices))
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ConfigurationError(
            f"indices must be a non-empty sequence of atom indices (int), got {indices!r}"
        )
    n = len(atoms)
    bad = arr[(arr < -n) | (arr >= n)]
    if bad.size:
        raise ConfigurationError(f"indices {bad.tolist()} are out of range for {n} atoms")
    arr = np.where(arr < 0, arr + n, arr)
    if np.unique(arr).size != arr.size:
        raise ConfigurationError(f"indices contain duplicates: {arr.tolist()}")
    return arr


# ----------------------------------------------------------------------------------
# finite differences
# ----------------------------------------------------------------------------------


def finite_difference_forces(
    potential: Potential,
    atoms: Atoms,
    mask: np.ndarray | None = None,
    indices: Sequence[int] | np.ndarray | None = None,
    delta: float = 1e-4,
) -> np.ndarray:
    """Central finite differences of the masked energy sum.

    For each chosen atom k and direction a, ``-(E(x + delta e_ka) - E(x - delta e_ka))
    / (2 delta)`` with ``E = nansum(potential.evaluate(atoms, mask).energies)``, the
    sum of the per-atom energies of the mask (all atoms for ``mask=None``). Costs
    ``6 * len(indices)`` evaluations.

    Only the *interior* of a mask (see :func:`interior`) has well-defined forces, so
    by default a few interior atoms are chosen, spread over the interior; with
    ``mask=None`` a few atoms spread over the structure. Explicit ``indices`` are used
    as given.

    Args:
        potential: any backend.
        atoms: the structure; not modified (a copy is displaced).
        mask: ``(N,)`` bool, or None for all atoms.
        indices: atom indices k; default: up to 3 interior atoms.
        delta: Å, the displacement (> 0).

    Returns:
        ``(k, 3)`` eV/Å, in the order of ``indices``.

    Raises:
        ConfigurationError: bad mask, indices or delta, or a mask without interior.
    """
    mask = _as_mask(atoms, mask)
    delta = _positive("delta", delta)
    idx = _default_indices(potential, atoms, mask) if indices is None else _as_indices(atoms, indices)
    return finite_difference_gradient(
        lambda moved: float(np.nansum(potential.evaluate(moved, mask).energies)), atoms, idx,
        delta)


def finite_difference_gradient(energy: Callable[[Atoms], float], atoms: Atoms,
                               indices: Sequence[int] | np.ndarray, delta: float = 1e-4
                               ) -> np.ndarray:
    """``-dE/dx_k`` by central differences for any energy function of a structure.

    Args:
        energy: eV of a structure (e.g. ``lambda a: calc_energy(a)``); called with a
            displaced copy, 6 times per index.
        atoms: not modified.
        indices: atoms k.
        delta: Å.

    Returns:
        ``(len(indices), 3)`` eV/Å.
    """
    delta = _positive("delta", delta)
    idx = _as_indices(atoms, indices)
    moved = atoms.copy()
    moved.calc = None
    out = np.empty((idx.size, 3))
    for row, k in enumerate(idx):
        for a in range(3):
            x0 = moved.positions[k, a]
            e = []
            for sign in (1.0, -1.0):
                moved.positions[k, a] = x0 + sign * delta
                e.append(energy(moved))
            moved.positions[k, a] = x0
            out[row, a] = -(e[0] - e[1]) / (2.0 * delta)
    return out


def finite_difference_stress(energy: Callable[[Atoms], float], atoms: Atoms,
                             delta: float = 1e-5) -> np.ndarray:
    """ASE's stress, ``(1/V) dE/d(e)``, by central differences in the six Voigt strains
    (engineering shears; positions and cell strained together).

    Args:
        energy: eV of a structure; called with 12 strained copies.
        atoms: a periodic structure; not modified.
        delta: the strain step.

    Returns:
        ``(6,)`` eV/Å^3, Voigt order (xx, yy, zz, yz, xz, xy).
    """
    from .fitting.data import apply_strain, voigt_to_tensor

    delta = _positive("delta", delta)
    out = np.zeros(6)
    for k in range(6):
        e = np.zeros(6)
        e[k] = delta
        up = energy(apply_strain(atoms, voigt_to_tensor(e)))
        down = energy(apply_strain(atoms, voigt_to_tensor(-e)))
        out[k] = (up - down) / (2 * delta) / atoms.get_volume()
    return out


def check_forces(
    potential: Potential,
    atoms: Atoms,
    mask: np.ndarray | None = None,
    indices: Sequence[int] | None = None,
    delta: float = 1e-4,
    atol: float = 1e-4,
) -> dict:
    """Assert that ``evaluate(atoms, mask).forces`` match finite differences.

    Compares the forces on the chosen atoms with :func:`finite_difference_forces`
    (same ``mask``, ``indices`` and ``delta``; by default a few *interior* atoms of
    the mask, the only atoms whose forces the interface defines).

    Args:
        potential, atoms, mask, indices, delta: as :func:`finite_difference_forces`.
        atol: eV/Å, the largest allowed absolute difference per component. The
            finite-difference error is about ``delta**2`` times the third derivative
            of the energy plus the round-off of the energy sum divided by ``delta``.

    Returns:
        ``{"indices", "max_error" (eV/Å), "max_abs_force" (eV/Å), "delta", "atol"}``.

    Raises:
        AssertionError: a force differs by more than ``atol`` or is not finite; the
            message names the atom, the component and both values.
        ConfigurationError: bad arguments.
    """
    mask = _as_mask(atoms, mask)
    atol = _positive("atol", atol, allow_zero=True)
    delta = _positive("delta", delta)
    idx = _default_indices(potential, atoms, mask) if indices is None else _as_indices(atoms, indices)
    analytic = np.asarray(potential.evaluate(atoms, mask).forces, dtype=float)[idx]
    numeric = finite_difference_forces(potential, atoms, mask, idx, delta)
    where = "all atoms" if mask is None else f"mask of {int(mask.sum())} atoms"
    if not np.isfinite(analytic).all():
        row = int(np.flatnonzero(~np.isfinite(analytic).all(axis=1))[0])
        raise AssertionError(
            f"check_forces: {potential!r} ({where}) returned a non-finite force on atom "
            f"{idx[row]}: {analytic[row].tolist()} eV/Å"
        )
    err = np.abs(analytic - numeric)
    worst, comp = np.unravel_index(int(np.nanargmax(err)), err.shape)
    max_error = float(err[worst, comp])
    if not max_error <= atol:
        raise AssertionError(
            f"check_forces: {potential!r} ({where}): forces differ from central finite "
            f"differences of the masked energy sum (delta {delta:g} Å) by up to "
            f"{max_error:.3e} eV/Å > atol {atol:g} eV/Å, at atom {idx[worst]} component "
            f"{'xyz'[comp]}: evaluate gives {analytic[worst, comp]:.9g}, finite "
            f"differences {numeric[worst, comp]:.9g} eV/Å (atoms checked: {idx.tolist()})"
        )
    return {
        "indices": idx.tolist(),
        "max_error": max_error,
        "max_abs_force": float(np.abs(analytic).max()),
        "delta": delta,
        "atol": atol,
    }


# ----------------------------------------------------------------------------------
# conformance
# ----------------------------------------------------------------------------------


def _fail(check: str, potential: Potential, message: str) -> AssertionError:
    return AssertionError(f"check_conformance [{check}] failed for {potential!r}: {message}")


def _snapshot(atoms: Atoms) -> dict:
    return {
        "cell": atoms.cell.array.copy(),
        "pbc": np.array(atoms.pbc, dtype=bool),
        "arrays": {k: np.array(v, copy=True) for k, v in atoms.arrays.items()},
    }


def _changed(before: dict, atoms: Atoms) -> list[str]:
    """Names of the parts of ``atoms`` that differ from the snapshot (bitwise)."""
    changed = []
    if not np.array_equal(before["cell"], atoms.cell.array):
        changed.append("cell")
    if not np.array_equal(before["pbc"], np.array(atoms.pbc, dtype=bool)):
        changed.append("pbc")
    old, new = before["arrays"], atoms.arrays
    for key in sorted(set(old) | set(new)):
        if key not in old or key not in new:
            changed.append(f"arrays[{key!r}] ({'added' if key in new else 'removed'})")
        elif old[key].shape != new[key].shape or not np.array_equal(old[key], new[key]):
            changed.append("positions" if key == "positions" else
                           "numbers" if key == "numbers" else f"arrays[{key!r}]")
    return changed


class _Runner:
    """Calls ``evaluate`` and checks, on every call, the inputs and the result types."""

    def __init__(self, potential: Potential):
        self.potential = potential
        self.calls = 0

    def __call__(self, atoms: Atoms, mask: np.ndarray | None, what: str) -> Evaluation:
        pot = self.potential
        before = _snapshot(atoms)
        mask_before = None if mask is None else mask.copy()
        result = pot.evaluate(atoms, mask)
        self.calls += 1
        changed = _changed(before, atoms)
        if mask is not None and mask_before is not None \
                and not np.array_equal(mask, mask_before):
            changed.append("mask")
        if changed:
            raise _fail("inputs_unchanged", pot, f"evaluate ({what}) modified {', '.join(changed)}")
        self._check_types(result, len(atoms), what)
        return result

    def _check_types(self, result, n: int, what: str) -> None:
        pot = self.potential

        def bad(msg: str) -> AssertionError:
            return _fail("shapes_and_dtypes", pot, f"evaluate ({what}) {msg}")

        if not isinstance(result, Evaluation):
            raise bad(f"returned {type(result).__name__}, not an Evaluation")
        for name, shape in (("forces", (n, 3)), ("energies", (n,))):
            arr = getattr(result, name)
            if not isinstance(arr, np.ndarray):
                raise bad(f"returned {name} of type {type(arr).__name__}, not a numpy array")
            if arr.shape != shape:
                raise bad(f"returned {name} of shape {arr.shape}, expected {shape}")
            if not np.issubdtype(arr.dtype, np.floating):
                raise bad(f"returned {name} of dtype {arr.dtype}, expected a float dtype")
        if isinstance(result.n_evaluated, (bool, np.bool_)) or not isinstance(
            result.n_evaluated, (int, np.integer)
        ):
            raise bad(f"returned n_evaluated {result.n_evaluated!r} "
                      f"({type(result.n_evaluated).__name__}), expected an int")
        if not isinstance(result.exact, (bool, np.bool_)):
            raise bad(f"returned exact {result.exact!r}, expected a bool")


def _check_attributes(potential: Potential) -> dict:
    def bad(msg: str) -> AssertionError:
        return _fail("attributes", potential, msg)

    cutoff = getattr(potential, "cutoff", None)
    rf = getattr(potential, "receptive_field", None)
    species = getattr(potential, "species", None)
    if not isinstance(cutoff, (int, float, np.floating)) or not (np.isfinite(cutoff) and cutoff > 0):
        raise bad(f"cutoff must be a finite number > 0 Å, got {cutoff!r}")
    if not isinstance(rf, (int, float, np.floating)) or not (np.isfinite(rf) and rf >= cutoff):
        raise bad(f"receptive_field must be a finite number >= cutoff ({cutoff} Å), got {rf!r}")
    if species is not None:
        if isinstance(species, str) or not hasattr(species, "__iter__") or not all(
            isinstance(s, str) for s in species
        ):
            raise bad(f"species must be a collection of chemical symbols or None, got {species!r}")
        unknown = sorted(s for s in species if s not in atomic_numbers)
        if unknown:
            raise bad(f"species contains unknown chemical symbols {unknown}")
    return {"cutoff": float(cutoff), "receptive_field": float(rf),
            "species": None if species is None else sorted(species)}


def _check_energy_pattern(potential, result: Evaluation, mask: np.ndarray, what: str) -> None:
    e = result.energies
    bad_out = np.flatnonzero(~mask & ~np.isnan(e))
    if bad_out.size:
        raise _fail("energies_nan_outside_mask", potential,
                    f"evaluate ({what}) returned {bad_out.size} non-NaN energies outside the "
                    f"mask (first: atom {bad_out[0]}, {e[bad_out[0]]!r} eV)")
    bad_in = np.flatnonzero(mask & ~np.isfinite(e))
    if bad_in.size:
        raise _fail("energies_nan_outside_mask", potential,
                    f"evaluate ({what}) returned {bad_in.size} non-finite energies inside "
                    f"the mask (first: atom {bad_in[0]}, {e[bad_in[0]]!r} eV)")


def _check_n_evaluated(potential, result: Evaluation, mask: np.ndarray | None, n: int, what: str) -> None:
    k = int(result.n_evaluated)
    if mask is None:
        if k != n:
            raise _fail("n_evaluated", potential,
                        f"evaluate ({what}) gave n_evaluated {k} for mask=None, expected {n}")
    elif not int(mask.sum()) <= k <= n:
        raise _fail("n_evaluated", potential,
                    f"evaluate ({what}) gave n_evaluated {k}, expected between the mask size "
                    f"{int(mask.sum())} and N = {n}")


def _check_finite_forces(potential, result: Evaluation, where: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(where & ~np.isfinite(result.forces).all(axis=1))
    if bad.size:
        raise _fail("interior_forces_finite", potential,
                    f"evaluate ({what}) returned non-finite forces on {bad.size} interior "
                    f"atoms (first: atom {bad[0]}, {result.forces[bad[0]].tolist()} eV/Å)")


def _max_diff(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> tuple[float, int]:
    """Largest ``|a - b|`` over the rows ``where`` (NaN counts as infinite), and its row."""
    if not where.any():
        return 0.0, -1
    d = np.abs(np.asarray(a, float)[where] - np.asarray(b, float)[where])
    d = np.where(np.isnan(d), np.inf, d)
    d = d.reshape(d.shape[0], -1).max(axis=1)
    row = int(np.argmax(d))
    return float(d[row]), int(np.flatnonzero(where)[row])


def _compare_to_all_atoms(potential, check: str, result: Evaluation, full: Evaluation,
                          inner: np.ndarray, tol: float | None, what: str) -> tuple[float, float]:
    """Interior forces and energies of a masked result against the all-atom result."""
    f_err, f_at = _max_diff(result.forces, full.forces, inner)
    e_err, e_at = _max_diff(result.energies, full.energies, inner)
    if tol is not None:
        if not f_err <= tol:
            raise _fail(check, potential,
                        f"evaluate ({what}): interior forces differ from the all-atom forces "
                        f"by up to {f_err:.3e} eV/Å > {tol:g} eV/Å, at atom {f_at} "
                        f"(masked {result.forces[f_at].tolist()}, all-atom "
                        f"{full.forces[f_at].tolist()})")
        if not e_err <= tol:
            raise _fail(check, potential,
                        f"evaluate ({what}): interior per-atom energies differ from the "
                        f"all-atom ones by up to {e_err:.3e} eV > {tol:g} eV, at atom {e_at} "
                        f"(masked {result.energies[e_at]!r}, all-atom {full.energies[e_at]!r})")
    return f_err, e_err


def _changed_mask(atoms: Atoms, mask: np.ndarray, inner: np.ndarray, cutoff: float):
    """A second mask whose interior contains that of ``mask``, and how it was made.

    The mask grown by half, one or a quarter of a cutoff: the first growth that adds
    atoms without reaching all of them and enlarges the interior, else the first that
    adds atoms (a larger mask is the harder case for engines that keep the groups of
    the previous mask); failing both, shrunk to the interior plus its cutoff shell.
    """
    pos, cell, pbc = atoms.positions, atoms.cell.array, atoms.pbc
    fallback = None
    for fraction in (0.5, 1.0, 0.25):
        grown = within(pos, cell, pbc, mask, fraction * cutoff)
        if grown.all() or not (grown != mask).any():
            continue
        kind = f"grown by {fraction:g} cutoff"
        if interior(atoms, grown, cutoff).sum() > inner.sum():
            return grown, kind
        fallback = fallback or (grown, kind)
    return fallback or (within(pos, cell, pbc, inner, cutoff), "interior plus one cutoff")


def _moved(atoms: Atoms) -> Atoms:
    """The atoms displaced by a reproducible Gaussian of 0.05 Å per component."""
    moved = atoms.copy()
    moved.calc = None
    rng = np.random.default_rng(12345)
    moved.positions = moved.positions + rng.normal(0.0, 0.05, moved.positions.shape)
    return moved


def _check_moved(potential, run, atoms: Atoms, mask: np.ndarray, cutoff: float,
                 before: Evaluation, tol_of) -> float:
    """Evaluate the moved atoms (masked and all); they must be right and not stale.

    Returns the largest change of B's interior forces against ``before`` (eV/Å; 0 if
    the move left B's mask without interior atoms).
    """
    moved = _moved(atoms)
    inner = interior(moved, mask, cutoff)
    masked = run(moved, mask, "B: the atoms moved by ~0.05 Å")
    full = run(moved, None, "B: the atoms moved by ~0.05 Å, mask=None")
    _check_energy_pattern(potential, masked, mask, "B: moved atoms")
    _check_finite_forces(potential, masked, inner, "B: moved atoms")
    _compare_to_all_atoms(potential, "repeatable", masked, full, inner, tol_of(masked),
                          "B: moved atoms")
    # Interior forces of B (which may be empty after the move) and mask energies.
    f_change, _ = _max_diff(masked.forces, before.forces, inner)
    e_change, _ = _max_diff(masked.energies, before.energies, mask)
    if not max(f_change, e_change) > 0.0:
        raise _fail("repeatable", potential,
                    "evaluate returned the same interior forces and mask energies after "
                    "every atom moved by ~0.05 Å: a stale result (a cache keyed on "
                    "something other than the positions?)")
    return f_change


def check_conformance(
    potential: Potential,
    atoms: Atoms,
    mask: np.ndarray,
    *,
    atol: float = 1e-6,
    inexact_atol: float | None = None,
    repeat_atol: float = 1e-9,
) -> dict:
    """Run every interface check (:data:`CONFORMANCE_CHECKS`) of one backend.

    Checks, on ``atoms`` with ``mask`` and with ``mask=None``:

    * ``attributes``: ``cutoff`` > 0 Å and finite, ``receptive_field >= cutoff``,
      ``species`` None or chemical symbols;
    * ``inputs_unchanged``: no call modifies positions, numbers, cell, pbc, any
      other per-atom array, or the mask (bitwise);
    * ``shapes_and_dtypes``: an :class:`Evaluation` with forces ``(N, 3)`` float,
      energies ``(N,)`` float, ``n_evaluated`` int, ``exact`` bool;
    * ``energies_nan_outside_mask``: energies NaN outside the mask, finite inside
      (all finite for ``mask=None``);
    * ``n_evaluated``: ``mask.sum() <= n_evaluated <= N``; ``== N`` for ``mask=None``;
    * ``interior_forces_finite``: forces finite on the interior of the mask (all atoms
      for ``mask=None``);
    * ``interior_matches_all_atoms``: on the interior of the mask (:func:`interior`
      with ``potential.cutoff``), forces and per-atom energies equal those of
      ``mask=None`` within ``atol`` when the result says ``exact`` (within
      ``inexact_atol`` otherwise, if given; the error is measured either way);
    * ``mask_change``: after the masked call, a different mask (the mask plus every
      atom within half, one or a quarter of a cutoff of it, preferring a larger
      interior; if none is a proper superset, the interior plus its cutoff shell)
      gives interior forces and energies equal to the all-atom ones, as above;
    * ``repeatable``: a second structure B (the atoms moved by ~0.05 Å) gives
      interior forces and energies equal to its own all-atom ones (as above) and
      different from those of ``atoms`` (no stale result); after B and a third
      structure (the last atom removed), the masked and the all-atom evaluation of
      ``atoms`` give the same interior forces and energies again, within
      ``repeat_atol`` (caches and persistent engine instances must not leak state).

    Cost: eight evaluations, three of them on all atoms.

    Args:
        potential: the backend.
        atoms: a structure the potential can evaluate; a rattled cell is best (forces
            of a perfect lattice vanish by symmetry and hide errors).
        mask: ``(N,)`` bool, a proper subset of the atoms with a non-empty interior.
        atol: eV/Å and eV, tolerance of the interior-vs-all-atom comparison.
        inexact_atol: eV/Å and eV, the same for results with ``exact=False``; None
            (default) only measures them.
        repeat_atol: eV/Å and eV, tolerance of repeated evaluations of the same input.

    Returns:
        The checks passed and the measured numbers: ``checks`` (names),
        ``n_atoms``, ``n_mask``, ``n_interior``, ``exact``, ``n_evaluated_mask``,
        ``n_evaluated_all``, ``max_interior_force_error`` (eV/Å),
        ``max_interior_energy_error`` (eV), ``mask_change`` (how the second mask
        was made), ``mask_change_n_mask``, ``mask_change_n_interior``,
        ``max_mask_change_force_error`` (eV/Å), ``max_mask_change_energy_error``
        (eV), ``max_repeat_force_error`` (eV/Å), ``max_repeat_energy_error`` (eV),
        ``max_abs_force`` (eV/Å, all atoms), ``cutoff``, ``receptive_field``,
        ``species``, ``n_calls``.

    Raises:
        AssertionError: a check failed; the message starts with
            ``check_conformance [<check name>]``.
        ConfigurationError: bad arguments (mask shape or dtype, a mask of no or all
            atoms, a mask without interior, negative tolerances).
    """
    n = len(atoms)
    mask = _required_mask(atoms, mask,
                          "check_conformance needs a mask (a proper subset of the atoms)")
    if not mask.any() or mask.all():
        raise ConfigurationError(
            f"the mask selects {int(mask.sum())} of {n} atoms; pass a proper, non-empty "
            "subset so that masked evaluation is exercised"
        )
    atol = _positive("atol", atol, allow_zero=True)
    repeat_atol = _positive("repeat_atol", repeat_atol, allow_zero=True)
    if inexact_atol is not None:
        inexact_atol = _positive("inexact_atol", inexact_atol, allow_zero=True)

    report = _check_attributes(potential)
    checks = ["attributes"]
    cutoff = report["cutoff"]
    inner = interior(atoms, mask, cutoff)
    if not inner.any():
        raise ConfigurationError(
            f"the mask ({int(mask.sum())} of {n} atoms) has no interior atom for the "
            f"cutoff {cutoff:g} Å; grow it (e.g. a core plus every atom within the cutoff)"
        )
    run = _Runner(potential)
    everything = np.ones(n, dtype=bool)

    def tol(result: Evaluation) -> float | None:
        return atol if result.exact else inexact_atol

    # First call on a fresh structure: the masked one (no all-atom state to lean on).
    masked = run(atoms, mask, "masked")
    full = run(atoms, None, "mask=None")
    checks += ["inputs_unchanged", "shapes_and_dtypes"]

    _check_energy_pattern(potential, masked, mask, "masked")
    _check_energy_pattern(potential, full, everything, "mask=None")
    checks.append("energies_nan_outside_mask")

    _check_n_evaluated(potential, masked, mask, n, "masked")
    _check_n_evaluated(potential, full, None, n, "mask=None")
    checks.append("n_evaluated")

    _check_finite_forces(potential, masked, inner, "masked")
    _check_finite_forces(potential, full, everything, "mask=None")
    checks.append("interior_forces_finite")

    f_err, e_err = _compare_to_all_atoms(potential, "interior_matches_all_atoms", masked, full,
                                         inner, tol(masked), "masked")
    checks.append("interior_matches_all_atoms")

    mask2, mask2_kind = _changed_mask(atoms, mask, inner, cutoff)
    inner2 = interior(atoms, mask2, cutoff)
    changed = run(atoms, mask2, "changed mask")
    _check_energy_pattern(potential, changed, mask2, "changed mask")
    _check_n_evaluated(potential, changed, mask2, n, "changed mask")
    _check_finite_forces(potential, changed, inner2, "changed mask")
    f2_err, e2_err = _compare_to_all_atoms(potential, "mask_change", changed, full, inner2,
                                           tol(changed), "changed mask")
    checks.append("mask_change")

    moved_change = _check_moved(potential, run, atoms, mask, cutoff, masked, tol)
    if n > 1 and mask[:-1].any():
        smaller = atoms[:-1]
        smaller.calc = None
        run(smaller, mask[:-1].copy(), "C: the last atom removed")
    again = run(atoms, mask, "masked, repeated")
    full_again = run(atoms, None, "mask=None, repeated")
    rep_f, rep_e = 0.0, 0.0
    for first, second, f_where, e_where, what in (
        (masked, again, inner, mask, "masked"),
        (full, full_again, everything, everything, "mask=None"),
    ):
        df, at_f = _max_diff(first.forces, second.forces, f_where)
        de, at_e = _max_diff(first.energies, second.energies, e_where)
        if not df <= repeat_atol:
            raise _fail("repeatable", potential,
                        f"evaluate ({what}) of the same atoms gave forces differing by "
                        f"{df:.3e} eV/Å > {repeat_atol:g} at atom {at_f} after other "
                        f"structures were evaluated ({first.forces[at_f].tolist()} then "
                        f"{second.forces[at_f].tolist()})")
        if not de <= repeat_atol:
            raise _fail("repeatable", potential,
                        f"evaluate ({what}) of the same atoms gave energies differing by "
                        f"{de:.3e} eV > {repeat_atol:g} at atom {at_e} after other "
                        f"structures were evaluated ({first.energies[at_e]!r} then "
                        f"{second.energies[at_e]!r})")
        rep_f, rep_e = max(rep_f, df), max(rep_e, de)
    checks.append("repeatable")

    report.update(
        checks=checks,
        n_atoms=n,
        n_mask=int(mask.sum()),
        n_interior=int(inner.sum()),
        exact=bool(masked.exact),
        n_evaluated_mask=int(masked.n_evaluated),
        n_evaluated_all=int(full.n_evaluated),
        max_interior_force_error=f_err,
        max_interior_energy_error=e_err,
        mask_change=mask2_kind,
        mask_change_n_mask=int(mask2.sum()),
        mask_change_n_interior=int(inner2.sum()),
        max_mask_change_force_error=f2_err,
        max_mask_change_energy_error=e2_err,
        max_repeat_force_error=rep_f,
        max_repeat_energy_error=rep_e,
        moved_force_change=moved_change,
        max_abs_force=float(np.abs(full.forces).max()),
        n_calls=run.calls,
    )
    return report
