"""Multiple time stepping: the expensive correction as the slow force (impulse r-RESPA).

The mixed force splits into the cheap force and a correction,

    F_i = p_i F_i^exp + (1 - p_i) F_i^cheap = F_i^cheap + C_i,   C_i = p_i (F_i^exp - F_i^cheap),

and C changes slowly where the cheap potential was distilled to match the expensive
one. The impulse multiple-time-step integrator (Tuckerman, Berne & Martyna,
J. Chem. Phys. 97, 1990 (1992); LAMMPS ``run_style respa``) integrates F^cheap with
velocity Verlet at the time step dt and applies C as an impulse every k steps:

    v += (k dt / 2) C(x) / m          # start of an outer step of length k dt
    k velocity Verlet steps with F^cheap
    v += (k dt / 2) C(x') / m         # end of it, C at the new positions

The end kick of one outer step and the start kick of the next act at the same
positions, so the scheme is plain velocity Verlet with the force

    F(step n) = F^cheap(x_n) + k C(x_n)   if n is a multiple of k,
    F(step n) = F^cheap(x_n)              otherwise,

which is what both engines hand their integrator (:func:`impulse_forces`): the ASE
engine's :class:`~mlmix.mixing.MixedCalculator` and the LAMMPS engine's ``fix external``.
k = 1 is ordinary force mixing, bit for bit. Steps that are not multiples of k evaluate
the cheap potential only, so the expensive share of the cost falls by k.

Step numbers are MD steps counted from the start of the run (a resumed run continues
the count), so the outer steps are the same whether or not a run was interrupted.
Regions can change only at outer steps: the rebuild period must be a multiple of k.

When it is safe (measured in ``benchmarks/multiple_time_step.py``; README "Multiple
time stepping"): the impulse k C must be small against the cheap force's own
variation over k dt. Keep k dt well below half the shortest vibrational period of the
core (resonance of impulse integrators), and check the core-force error and the NVE
drift of the expensive energy (``mlmix drift``) for the k you use.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigurationError


def check_correction_every(value, key: str = "correction_every") -> int:
    """``value`` as the outer-step length k (an integer >= 1), or a ConfigurationError
    naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigurationError(
            f"{key} must be an integer >= 1 (the expensive correction is evaluated every "
            f"k MD steps; 1 = every step, ordinary force mixing), got {value!r}")
    return int(value)


def schedule_problem(k: int, nevery: int, k_key: str = "correction_every") -> str | None:
    """Why a region rebuild period ``nevery`` (steps, 0 = once) does not fit outer steps
    of ``k`` steps (the message starts with the value of ``nevery``; ``k_key`` names
    k), or None when it does."""
    if k > 1 and nevery % k:
        return (f"{nevery} is not a multiple of {k_key} = {k}: regions can change only "
                "at steps that evaluate the expensive correction; use "
                f"{max(k, nevery - nevery % k)}")
    return None


def undescribed_problem(k: int, cheap_name: str, symbols) -> str | None:
    """Why outer steps of ``k`` steps cannot run when the cheap potential ``cheap_name``
    lacks the species ``symbols`` (the fast force must act on every atom), or None."""
    if k > 1 and len(symbols):
        return (f"correction_every = {k} integrates the cheap force on every atom, but "
                f"{cheap_name} does not describe {sorted(symbols)}: use correction_every = 1")
    return None


def is_outer_step(step: int, k: int) -> bool:
    """True when MD step ``step`` evaluates the expensive correction."""
    return step % k == 0


def impulse_forces(cheap: np.ndarray, mixed: np.ndarray, k: int) -> np.ndarray:
    """The force of an outer step: ``cheap + k (mixed - cheap)`` (eV/Å, shape (N, 3)),
    i.e. the cheap force plus k times the correction. k = 1 returns ``mixed``."""
    if k == 1:
        return mixed
    return cheap + k * (mixed - cheap)


def corrected_median(reports) -> float | None:
    """Median of ``n_expensive`` over the step reports (``StepReport`` or
    ``EngineStep``) of steps that evaluated the correction; None if there are none."""
    counts = [r.n_expensive for r in reports if r.corrected]
    return float(np.median(counts)) if counts else None
