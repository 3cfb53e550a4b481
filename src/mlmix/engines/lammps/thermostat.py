"""The LAMMPS engine's region-weighted Langevin force, with rank-independent noise.

Drag and noise on atom i are scaled by a weight w_i (``1 - p_i`` by default), the
stochastic equation of :class:`mlmix.engines.langevin.RegionLangevin`, discretised as
LAMMPS's ``fix langevin`` does (force form, BBK-like): a drag ``-w_i gamma m_i v_i`` on
the half-step velocity and a Gaussian force of variance ``w_i^2 2 gamma m_i k_B T / dt``,
applied in both half kicks of velocity Verlet. The random numbers are a counter-based
hash of (seed, step, atom tag), so a run does not depend on the number of ranks.
"""

from __future__ import annotations

import numpy as np

WEIGHTS = ("cheap", "expensive", "all")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def counter_normals(seed: int, step: int, tags: np.ndarray) -> np.ndarray:
    """``(len(tags), 3)`` standard normal numbers that depend only on (seed, step, tag).

    A counter-based generator: the same atom gets the same numbers at the same step
    whichever rank owns it, so thermostatted runs do not depend on the rank count.
    """
    tags = np.asarray(tags, dtype=np.uint64)
    key = _splitmix64(np.array([seed], np.uint64) ^ _splitmix64(np.array([step], np.uint64)))
    base = _splitmix64(tags * np.uint64(4) ^ key[0])
    bits = _splitmix64(base[:, None] + np.arange(1, 5, dtype=np.uint64)[None, :])
    u = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # (0, 1)
    r = np.sqrt(-2.0 * np.log(u[:, [0, 2]]))
    z = np.concatenate([r * np.cos(2 * np.pi * u[:, [1, 3]]),
                        r * np.sin(2 * np.pi * u[:, [1, 3]])], axis=1)
    return z[:, :3]


def thermostat_weights(p: np.ndarray, kind: str) -> np.ndarray:
    """w_i from the weights p_i ``(n,)``: ``"cheap"`` 1 - p, ``"expensive"`` p, ``"all"`` 1."""
    if kind == "cheap":
        return 1.0 - p
    if kind == "expensive":
        return p
    return np.ones_like(p)


def langevin_force(v: np.ndarray, mass: np.ndarray, w: np.ndarray, *, friction_per_ps: float,
                   dt_ps: float, kt_eV: float, mvv2e: float, seed: int, step: int,
                   tags: np.ndarray) -> np.ndarray:
    """Weighted drag plus noise ``(n, 3)`` eV/Å in LAMMPS metal units.

    Args:
        v: ``(n, 3)`` Å/ps velocities (LAMMPS's half-step ones).
        mass: ``(n,)`` amu.
        w: ``(n,)`` thermostat weights.
        friction_per_ps: gamma, 1/ps; dt_ps: the time step, ps; kt_eV: k_B T, eV.
        mvv2e: LAMMPS's amu Å^2/ps^2 -> eV factor.
        seed, step, tags: the counter of :func:`counter_normals`.
    """
    m = mass[:, None]
    drag = -friction_per_ps * m * v * mvv2e
    sigma = np.sqrt(2.0 * friction_per_ps * m * kt_eV * mvv2e / dt_ps)
    noise = sigma * counter_normals(seed, step, tags)
    return w[:, None] * (drag + noise)
