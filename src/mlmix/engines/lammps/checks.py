"""The LAMMPS engine's input checks, run identically on every rank before LAMMPS starts.

All ranks hold the same input, so they raise the same
:class:`~mlmix.errors.ConfigurationError` and no rank is left waiting.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms

from ...errors import ConfigurationError
from ...potentials.base import Potential, buffer_problem
from ...potentials.lammps import LammpsPotential
from ...regions import RegionSpec
from ...seeds import IndexSeeds, Seeds, SpeciesSeeds
from ...structures import fixed_mask
from .classifier import LammpsClassifier


def check_positive(name: str, value, unit: str, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (or >= 0), else a ConfigurationError naming it."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a number in {unit}, got {value!r}") from None
    if not np.isfinite(x) or x < 0 or (x == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be finite and {bound} {unit}, got {value!r}")
    return x


def check_count(name: str, value: Any, what: str = "") -> int:
    """``value`` as an int >= 0, else a ConfigurationError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigurationError(f"{name} must be an integer >= 0{what}, got {value!r}")
    return int(value)


def lammps_cheap(cheap: Potential) -> LammpsPotential:
    """``cheap`` if it is a LAMMPS pair style (the engine runs it natively), else a
    ConfigurationError."""
    if not isinstance(cheap, LammpsPotential):
        raise ConfigurationError(
            f"the cheap potential of the LAMMPS engine must be a LammpsPotential (a "
            f"LAMMPS pair style), got {type(cheap).__name__}; use the ASE engine for "
            "other backends")
    return cheap


def held_atoms(atoms: Atoms) -> np.ndarray:
    """``(N,)`` bool: the atoms an ASE ``FixAtoms`` holds; other constraints are refused."""
    from ase.constraints import FixAtoms

    for c in atoms.constraints:
        if not isinstance(c, FixAtoms):
            raise ConfigurationError(
                f"the LAMMPS engine holds atoms with FixAtoms only; remove the "
                f"{type(c).__name__} constraint or use the ASE engine")
    return fixed_mask(atoms)


def check_inputs(atoms: Atoms, expensive: Potential, cheap: LammpsPotential, spec: RegionSpec,
                 seeds: Seeds | LammpsClassifier, nevery: int, ensemble: str,
                 allow_approximate: bool) -> None:
    """The engine's checks of its main arguments, each failure a ConfigurationError
    that says what to change (run identically on every rank, before LAMMPS starts)."""
    if not isinstance(atoms, Atoms) or len(atoms) == 0:
        raise ConfigurationError("atoms must be a non-empty ase.Atoms")
    if cheap.partial:
        raise ConfigurationError(f"{cheap.name} does not cover every type pair")
    if not isinstance(expensive, Potential):
        raise ConfigurationError(
            f"expensive must be an mlmix Potential, got {type(expensive).__name__}")
    if not isinstance(spec, RegionSpec):
        raise ConfigurationError(f"spec must be a RegionSpec, got {type(spec).__name__}")
    if not isinstance(seeds, (Seeds, LammpsClassifier)):
        raise ConfigurationError(
            "seeds must be IndexSeeds, SpeciesSeeds, ClassifierSeeds or a "
            f"LammpsClassifier, got {type(seeds).__name__}")
    if isinstance(nevery, bool) or not isinstance(nevery, (int, np.integer)) or nevery < 0:
        raise ConfigurationError(
            f"nevery must be an integer >= 0 (0 = regions built once), got {nevery!r}")
    if ensemble not in ("nve", "nvt"):
        raise ConfigurationError(
            f"ensemble must be 'nve' or 'nvt', got {ensemble!r} (force mixing has no "
            "stress, so no NPT)")
    expensive.check_atoms(atoms)  # species it describes, finite positions
    problem = None if allow_approximate else buffer_problem(expensive, spec.r_buff)
    if problem is not None:
        raise ConfigurationError(problem)
    present = set(atoms.get_chemical_symbols())
    if isinstance(seeds, SpeciesSeeds) and not present & set(seeds.symbols):
        raise ConfigurationError(
                f"no atom of the seed species {seeds.symbols} is in the structure (it "
                f"holds {sorted(present)}); pick a species that is present")
    if isinstance(seeds, IndexSeeds):
        bad = [i for i in np.asarray(seeds.indices).tolist() if not -len(atoms) <= i < len(atoms)]
        if bad:
            raise ConfigurationError(
                f"seed indices {bad[:5]} are out of range for {len(atoms)} atoms")
    undescribed = sorted(present - set(cheap.species or ()))
    if undescribed:
        covered = isinstance(seeds, SpeciesSeeds) and set(undescribed) <= set(seeds.symbols)
        if not covered and not isinstance(seeds, IndexSeeds):
            raise ConfigurationError(
                f"the cheap potential {cheap.name} does not describe {undescribed}, "
                f"so those atoms must always be in the core: use "
                f"SpeciesSeeds({undescribed!r}) (or seed indices covering them)")
        if any(s.startswith("hybrid") for s in cheap.pair_style.split()[:1]):
            raise ConfigurationError(
                f"{undescribed} are not described by the hybrid cheap style "
                f"{cheap.pair_style!r}; add a pair style for them to the cheap potential")


