"""Energy mixing: one energy E = sum_i w_i E_i^exp + (1 - w_i) E_i^cheap and its gradient.

The weights w are the region weights p quantised to multiples of ``1 / n_levels``
(:func:`~mlmix.potentials.weighted.quantise`) and held fixed between region rebuilds.
Forces and stress are the exact gradient of E at fixed w, so between rebuilds the
dynamics are conservative, and E is a real potential energy (an NVE run conserves
E + K to the integrator's accuracy; NPT and cell relaxation work).

What it costs in accuracy: the force on atom k,

    F_k = -sum_i w_i dE_i^exp/dx_k - sum_i (1 - w_i) dE_i^cheap/dx_k,

equals the expensive force only when every atom i within the reach of k (the larger
receptive field of the two potentials) has w_i = 1, i.e. on core atoms deeper than
that reach inside the core (:func:`exact_core`). Force mixing gives the expensive force
on every atom with p = 1; energy mixing trades that for an energy.

At a rebuild w changes and E jumps by ``exchanged`` = E(w_new) - E(w_old) at the same
positions. :func:`correct_momenta` takes that energy out of (or puts it into) the
kinetic energy of the atoms whose weight changed, scaling their momenta about their own
centre-of-mass velocity, so the total momentum is unchanged (the local correction of
LAMMPS's APIP package, made momentum-conserving).

Units: eV, Å, eV/Å, ASE momenta (amu Å / ASE time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from .carving import within
from .potentials.base import Potential
from .potentials.weighted import WeightedEvaluation, zero_evaluation

DEFAULT_LEVELS = 16
"""Weights are multiples of 1/16 by default: at most 15 blend levels per potential."""


@dataclass(frozen=True)
class EnergyMix:
    """The mixed energy, its gradient and what each side cost.

    Attributes:
        energy: eV.
        forces: ``(N, 3)`` eV/Å, -dE/dx.
        strain_derivative: ``(3, 3)`` eV, dE/d(eps) (the stress times the volume).
        expensive, cheap: the two weighted evaluations.
        seconds: wall time of each, ``{"expensive": s, "cheap": s}``.
    """

    energy: float
    forces: np.ndarray
    strain_derivative: np.ndarray
    expensive: WeightedEvaluation
    cheap: WeightedEvaluation
    seconds: dict


def mixed_energy(expensive: Potential, cheap: Potential, atoms: Atoms, w: np.ndarray,
                 cheap_blind: np.ndarray | None = None,
                 shift: np.ndarray | None = None) -> EnergyMix:
    """E, F and dE/d(eps) of energy mixing with expensive weights ``w`` ``(N,)``.

    Args:
        cheap_blind: ``(N,)`` bool, atoms the cheap potential does not describe (they
            must have w = 1); they are removed from the structure the cheap potential
            sees.
        shift: ``(N,)`` eV added to each atom's cheap energy (:func:`energy_shift`);
            a constant, so no force.
    """
    n = len(atoms)
    t0 = time.perf_counter()
    exp = expensive.evaluate_weighted(atoms, w) if (w > 0).any() else zero_evaluation(n)
    t1 = time.perf_counter()
    keep = np.ones(n, bool) if cheap_blind is None else ~cheap_blind
    cheap_w = 1.0 - w[keep]
    if not (cheap_w > 0).any():
        ch = zero_evaluation(n)
    elif keep.all():
        ch = cheap.evaluate_weighted(atoms, cheap_w)
    else:
        part = cheap.evaluate_weighted(atoms[keep], cheap_w)
        forces = np.zeros((n, 3))
        forces[keep] = part.forces
        ch = WeightedEvaluation(part.energy, forces, part.strain_derivative,
                                part.n_evaluated, part.n_levels)
    offset = 0.0 if shift is None else float((1.0 - w) @ shift)
    return EnergyMix(exp.energy + ch.energy + offset, exp.forces + ch.forces,
                     exp.strain_derivative + ch.strain_derivative, exp, ch,
                     {"expensive": t1 - t0, "cheap": time.perf_counter() - t1})


def energy_shift(expensive: Potential, cheap: Potential, atoms: Atoms, sample: np.ndarray,
                 reach: float, cheap_blind: np.ndarray | None = None) -> dict[str, float]:
    """eV per species: the mean of E_i^exp - E_i^cheap over the atoms ``sample``
    ``(N,)`` bool of each species (both evaluated on ``sample`` plus ``reach`` Å, so
    the sample's per-atom energies are complete).

    Two potentials fitted to different data (or SW and Tersoff) differ in cohesive
    energy by a constant per atom (0.29 eV for Si); every atom whose weight changes at a
    rebuild would exchange that much with the kinetic energy (~0.04 eV per atom at
    300 K), far more than any correction can absorb. Shifting the cheap energies by
    this constant aligns the two where it matters and changes no force. Species with no
    atom in the sample, and those the cheap potential does not describe
    (``cheap_blind``), get no shift.
    """
    n = len(atoms)
    blind = np.zeros(n, bool) if cheap_blind is None else cheap_blind
    sample = sample & ~blind
    if not sample.any():
        return {}
    mask = within(atoms.positions, atoms.cell.array, atoms.pbc, sample, reach)
    exp = expensive.evaluate(atoms, mask).energies
    keep = ~blind
    ch = np.full(n, np.nan)
    ch[keep] = cheap.evaluate(atoms[keep] if not keep.all() else atoms, mask[keep]).energies
    symbols = np.array(atoms.get_chemical_symbols())
    out = {}
    for s in sorted(set(symbols[sample].tolist())):
        pick = sample & (symbols == s)
        out[s] = float(np.mean(exp[pick] - ch[pick]))
    return out


def shift_per_atom(atoms: Atoms, shift: dict[str, float]) -> np.ndarray:
    """``(N,)`` eV, each atom's cheap-energy shift (0 for species not in ``shift``)."""
    return np.array([shift.get(s, 0.0) for s in atoms.get_chemical_symbols()])


def exact_core(atoms: Atoms, w: np.ndarray, reach: float) -> np.ndarray:
    """``(N,)`` bool: atoms whose energy-mixed force is the expensive force, those with
    no atom of w < 1 within ``reach`` (Å, the larger receptive field of the two
    potentials) and w = 1 themselves."""
    if not (w < 1).any():
        return np.ones(len(atoms), bool)
    return ~within(atoms.positions, atoms.cell.array, atoms.pbc, w < 1, reach)


def correct_momenta(momenta: np.ndarray, masses: np.ndarray, group: np.ndarray,
                    exchanged: float, kicks: np.ndarray | None = None,
                    reference_kicks: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Take ``exchanged`` eV out of the kinetic energy of the atoms ``group``.

    The momenta of the group are scaled about its centre-of-mass velocity v:
    p_i' = m_i v + s (p_i - m_i v), which keeps its total momentum. With ``kicks``
    (the momentum each atom still receives before its kinetic energy counts, e.g. the
    second half kick dt/2 F of velocity Verlet), s is chosen so that the kinetic energy
    *after* the kicks is the reference one less ``exchanged``. The reference is the
    kinetic energy after ``reference_kicks`` (default: ``kicks``): velocity Verlet
    would have given the old forces' half kick had the weights not changed, so with
    those the total E + K is what it would have been.

    Args:
        momenta: ``(N, 3)``.
        masses: ``(N,)`` amu.
        group: ``(N,)`` bool; every atom whose kick differs between ``kicks`` and
            ``reference_kicks`` should be in it.
        exchanged: eV; positive when the potential energy rose.
        kicks, reference_kicks: ``(N, 3)`` or None.

    Returns:
        ``(new momenta (N, 3), eV not absorbed)``: 0 unless the group's kinetic energy
        relative to its centre of mass was too small to give up ``exchanged``, in which
        case it is brought as low as possible and the rest is returned.
    """
    out = np.array(momenta, dtype=float, copy=True)
    idx = np.flatnonzero(group)
    if idx.size == 0 or (exchanged == 0 and reference_kicks is None):
        return out, float(exchanged)
    m = masses[idx, None]
    p = out[idx]
    a = np.zeros_like(p) if kicks is None else kicks[idx]
    v = p.sum(axis=0) / m.sum()
    u = p - m * v
    base = m * v + a
    # K(s) = sum |base + s u|^2 / 2m = A + B s + C s^2
    c = float(np.sum(u * u / m)) / 2
    b = float(np.sum(base * u / m))
    a0 = float(np.sum(base * base / m)) / 2
    ref = p + (a if reference_kicks is None else reference_kicks[idx])
    target = float(np.sum(ref * ref / m)) / 2 - exchanged
    if c <= 0:
        return out, float(exchanged)
    disc = b * b - 4 * c * (a0 - target)
    if disc < 0:  # not enough kinetic energy: take what there is
        s = -b / (2 * c)
        left = (a0 + b * s + c * s * s) - target
    else:
        s = (-b + np.sqrt(disc)) / (2 * c)
        left = 0.0
    out[idx] = m * v + s * u
    return out, float(left)
