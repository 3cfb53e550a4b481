"""Region Langevin thermostat: Langevin dynamics weighted per atom (method.md §4).

Force mixing conserves no energy, so long runs need a thermostat; one that acts on
the expensive region would disturb exactly the dynamics the expensive potential is
there for. :class:`RegionLangevin` is ASE's Langevin integrator with the drag *and*
the random force on atom i multiplied by a per-atom weight w_i, as the plugin's
``fix langevin/mlml`` does: by default w_i = 1 - p_i, so the cheap region is
thermostatted and atoms with p_i = 1 follow plain velocity Verlet.

The scheme
----------
The stochastic equation of motion of atom i (mass m_i, force F_i, target temperature
T, friction gamma) is

    dx_i = v_i dt
    dv_i = F_i / m_i dt - w_i gamma v_i dt + w_i sqrt(2 gamma k_B T / m_i) dW_i

integrated with the propagator of ASE's :class:`ase.md.langevin.Langevin`
(Vanden-Eijnden & Ciccotti, Chem. Phys. Lett. 429, 310 (2006), Eq. 23) with the
per-atom friction gamma_i = w_i gamma and noise amplitude sigma_i = w_i sigma:

    c1 = dt/2 - dt^2 gamma_i/8          c2 = dt gamma_i/2 - dt^2 gamma_i^2/8
    c3 = sqrt(dt) sigma_i/2 - dt^1.5 gamma_i sigma_i/8
    c5 = dt^1.5 sigma_i / (2 sqrt(3))   c4 = gamma_i c5 / 2
    r_v = c3 xi - c4 eta,   r_x = c5 eta        (xi, eta ~ N(0, 1), (N, 3))
    v  <- v + c1 F(x)/m - c2 v + r_v
    x' =  x + dt v + r_x ;  v <- (x' - x - r_x)/dt   (constraints, e.g. FixCom)
    v  <- v + c1 F(x')/m - c2 v + r_v

* w = 1 everywhere is ASE's Langevin (``fixcm=False``) operation for operation: with
  the same generator the trajectories agree bit for bit.
* w_i = 0 gives c1 = dt/2 and c2 = c3 = c4 = c5 = 0: velocity Verlet for that atom.
  Random numbers are drawn for every atom whatever its weight, so the random stream
  does not depend on the regions.
* The weights used for the step x -> x' are those of the force call at x (the call
  at the end of the previous step); the weights of the call at x' serve the next
  step. A step never mixes two sets of coefficients.

What the weighting means physically
-----------------------------------
Scaling the noise by w_i (not sqrt(w_i)) is what the plugin does. For w_i in {0, 1}
it is exact: atoms with w_i = 1 are coupled to a bath at T with friction gamma,
atoms with w_i = 0 are not coupled at all. An atom in the blend shell
(0 < w_i < 1) sees friction w_i gamma and noise of variance w_i^2 2 gamma k_B T/m_i,
i.e. on its own the thermostat would pull it towards w_i T; its neighbours keep it
near T in practice. Temperatures measured in the blend shell are therefore not a
check of the thermostat.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
from ase import Atoms, units
from ase.md.md import MolecularDynamics

from ..errors import ConfigurationError

WeightsSpec = Literal["cheap", "expensive", "all"] | None | Callable[[Atoms], np.ndarray]
"""What :class:`RegionLangevin` accepts as ``weights``."""

_NAMED = ("cheap", "expensive", "all")


def region_p(atoms: Atoms) -> np.ndarray:
    """The per-atom weights p_i of the expensive potential of the last force call.

    Read from ``atoms.calc.regions.p`` (a :class:`~mlmix.mixing.MixedCalculator`),
    else from ``atoms.arrays["mlmix_p"]``.

    Returns:
        ``(N,)`` array, 0..1.

    Raises:
        ConfigurationError: neither source exists.
    """
    regions = getattr(atoms.calc, "regions", None)
    p = getattr(regions, "p", None)
    if p is None:
        p = atoms.arrays.get("mlmix_p")
    if p is None:
        raise ConfigurationError(
            "RegionLangevin needs the region weights p_i, but atoms.calc "
            f"({type(atoms.calc).__name__}) has no regions and atoms.arrays has no "
            "'mlmix_p'; attach a mlmix.MixedCalculator, or pass weights='all' for an "
            "ordinary Langevin thermostat"
        )
    return np.asarray(p, dtype=float)


class RegionLangevin(MolecularDynamics):
    """Langevin (N, V, T) dynamics whose drag and noise on atom i are scaled by w_i.

    See the module docstring for the scheme, the equations and what the weights mean.

    Args:
        atoms: the atoms; for ``weights="cheap"``/``"expensive"`` their calculator is
            a :class:`~mlmix.mixing.MixedCalculator` (or the atoms carry an
            ``mlmix_p`` array).
        timestep: in ASE time units, as for every ASE integrator: ``1.0 * units.fs``
            is 1 fs (``ase.units.fs`` = 0.0982...).
        temperature_K: target temperature, K, >= 0.
        friction: gamma, in inverse ASE time units, >= 0, applied in full where
            w_i = 1: pass ``0.01 / units.fs`` for 0.01 fs^-1 (a 100 fs relaxation
            time, 10 ps^-1).
        weights: the thermostat weight w_i of each atom, re-read after every force
            call:

            * ``"cheap"`` (default): w = 1 - p, the cheap region only (the plugin's
              ``fix langevin/mlml``);
            * ``"expensive"``: w = p;
            * ``"all"`` or ``None``: w = 1, ASE's Langevin (no regions needed);
            * a callable ``weights(atoms) -> (N,)`` array of w in [0, 1], called
              after each force call (``atoms.arrays["mlmix_p"]`` is up to date then).
        rng: a ``numpy.random.Generator``, or an integer seed for one; ``None`` seeds
            from the operating system (not reproducible).
        **kwargs: passed on to :class:`ase.md.md.MolecularDynamics` (``trajectory``,
            ``logfile``, ``loginterval``, ...).

    To keep the centre of mass fixed, attach :class:`ase.constraints.FixCom` to the
    atoms (there is no ``fixcm`` argument; ASE deprecated it in its own Langevin).

    Attributes of the last step, as ASE's Langevin keeps them.

    Attributes:
        w: ``(N,)`` thermostat weights.
        c1, c2, c3, c4, c5: ``(N, 1)`` coefficients of the scheme.
        rnd_pos: ``(N, 3)`` Å, random displacement r_x.
        rnd_vel: ``(N, 3)`` Å per ASE time unit, random velocity increment r_v
            (applied in each half step).

    Raises:
        ConfigurationError: a non-finite or non-positive timestep, a negative or
            non-finite temperature or friction, an unknown ``weights``, an ``rng``
            that is not a Generator or integer, or (here or at a step) no region
            weights for ``"cheap"``/``"expensive"``, or a callable returning weights
            of the wrong shape or outside [0, 1].
    """

    def __init__(
        self,
        atoms: Atoms,
        timestep: float,
        *,
        temperature_K: float,
        friction: float,
        weights: WeightsSpec = "cheap",
        rng: np.random.Generator | int | None = None,
        **kwargs,
    ):
        _check_number("timestep", timestep, "ASE time units (e.g. 1 * ase.units.fs)",
                      positive=True)
        _check_number("temperature_K", temperature_K, "K")
        _check_number("friction", friction, "1/ASE time (e.g. 0.01 / ase.units.fs)")
        if weights is None:
            weights = "all"
        if not (callable(weights) or (isinstance(weights, str) and weights in _NAMED)):
            raise ConfigurationError(
                f"weights must be 'cheap', 'expensive', 'all', None or a callable "
                f"atoms -> (N,) array, got {weights!r}"
            )
        needs_p = weights in ("cheap", "expensive")
        if needs_p and not hasattr(atoms.calc, "regions") and "mlmix_p" not in atoms.arrays:
            region_p(atoms)  # raises with the explanation
        if rng is None or isinstance(rng, (int, np.integer)):
            rng = np.random.default_rng(rng)
        elif not isinstance(rng, np.random.Generator):
            raise ConfigurationError(
                f"rng must be a numpy.random.Generator or an integer seed, got "
                f"{type(rng).__name__}; use numpy.random.default_rng(seed)"
            )
        self.rng = rng
        self.weights = weights
        self.temp = units.kB * float(temperature_K)  # eV
        self.fr = float(friction)
        self.w: np.ndarray | None = None
        MolecularDynamics.__init__(self, atoms, timestep, **kwargs)

    # -- ASE's integrator interface -------------------------------------------------

    def todict(self) -> dict:
        d = MolecularDynamics.todict(self)
        d.update({
            "temperature_K": self.temp / units.kB,
            "friction": self.fr,
            "weights": self.weights if isinstance(self.weights, str) else "callable",
        })
        return d

    def set_temperature(self, temperature_K: float) -> None:
        """Change the target temperature (K) from the next step on."""
        _check_number("temperature_K", temperature_K, "K")
        self.temp = units.kB * float(temperature_K)

    def set_friction(self, friction: float) -> None:
        """Change the friction (1/ASE time) from the next step on."""
        _check_number("friction", friction, "1/ASE time (e.g. 0.01 / ase.units.fs)")
        self.fr = float(friction)

    def set_timestep(self, timestep: float) -> None:
        """Change the timestep (ASE time units) from the next step on."""
        _check_number("timestep", timestep, "ASE time units (e.g. 1 * ase.units.fs)",
                      positive=True)
        self.dt = timestep

    # -- the scheme -------------------------------------------------------------------

    def current_weights(self) -> np.ndarray:
        """``(N,)`` thermostat weights w from the last force call (see ``weights``)."""
        n = len(self.atoms)
        if self.weights == "all":
            return np.ones(n)
        if self.weights == "cheap":
            w = 1.0 - region_p(self.atoms)
        elif self.weights == "expensive":
            w = region_p(self.atoms)
        else:
            w = np.asarray(self.weights(self.atoms), dtype=float)
        if w.shape != (n,):
            raise ConfigurationError(
                f"thermostat weights must have shape ({n},), one per atom, got "
                f"{w.shape}; the regions (or the weights callable) do not match the atoms"
            )
        if not (np.isfinite(w).all() and (w >= 0).all() and (w <= 1).all()):
            raise ConfigurationError(
                f"thermostat weights must lie in [0, 1], got values from {np.nanmin(w)} "
                f"to {np.nanmax(w)}"
            )
        return w

    def updatevars(self, w: np.ndarray) -> None:
        """Coefficients c1..c5, ``(N, 1)``, for weights ``w`` ``(N,)``."""
        dt = self.dt
        fr = w[:, None] * self.fr
        sigma = w[:, None] * np.sqrt(2 * self.temp * self.fr / self.masses)
        self.c1 = dt / 2.0 - dt * dt * fr / 8.0
        self.c2 = dt * fr / 2 - dt * dt * fr * fr / 8.0
        self.c3 = np.sqrt(dt) * sigma / 2.0 - dt**1.5 * fr * sigma / 8.0
        self.c5 = dt**1.5 * sigma / (2 * np.sqrt(3))
        self.c4 = fr / 2.0 * self.c5

    def step(self, forces: np.ndarray | None = None) -> np.ndarray:
        atoms = self.atoms
        natoms = len(atoms)
        if forces is None:
            forces = atoms.get_forces(md=True)
        w = self.current_weights()
        self.w = w
        self.updatevars(w)

        self.v = atoms.get_velocities()
        xi = self.rng.standard_normal(size=(natoms, 3))
        eta = self.rng.standard_normal(size=(natoms, 3))
        for constraint in atoms.constraints:
            if hasattr(constraint, "redistribute_forces_md"):
                constraint.redistribute_forces_md(atoms, xi, rand=True)
                constraint.redistribute_forces_md(atoms, eta, rand=True)
        self.comm.broadcast(xi, 0)
        self.comm.broadcast(eta, 0)
        self.rnd_pos = self.c5 * eta
        self.rnd_vel = self.c3 * xi - self.c4 * eta

        self.v += self.c1 * forces / self.masses - self.c2 * self.v + self.rnd_vel
        x = atoms.get_positions()
        atoms.set_positions(x + self.dt * self.v + self.rnd_pos)
        # velocities consistent with the constrained move (RATTLE, FixCom)
        self.v = (atoms.get_positions() - x - self.rnd_pos) / self.dt
        forces = atoms.get_forces(md=True)
        self.v += self.c1 * forces / self.masses - self.c2 * self.v + self.rnd_vel
        atoms.set_momenta(self.v * self.masses)
        return forces


def _check_number(name: str, value, unit: str, positive: bool = False) -> None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a number in {unit}, got {value!r}") from None
    bad = not np.isfinite(x) or (x <= 0 if positive else x < 0)
    if bad:
        bound = "> 0" if positive else ">= 0"
        raise ConfigurationError(f"{name} must be finite and {bound} (in {unit}), got {value!r}")
