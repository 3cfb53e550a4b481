"""mlmix: spatial mixing of an expensive and a cheap interatomic potential.

The data flow, one module each: structure -> :mod:`~mlmix.seeds` ->
:mod:`~mlmix.regions` (weights p_i, evaluation sets) -> :mod:`~mlmix.potentials`
(masked evaluations) -> :mod:`~mlmix.mixing` (mixed forces, the ASE calculator).
"""

from ._version import __version__
from .engines.langevin import RegionLangevin
from .errors import (
    CalculationError,
    ConfigurationError,
    MlmixError,
    PropertyNotDefinedError,
)
from .mixing import MixedCalculator, mix_forces
from .regions import Hysteresis, Regions, RegionSpec, RegionTracker
from .seeds import ClassifierSeeds, IndexSeeds, SpeciesSeeds, coordination

__all__ = [
    "CalculationError",
    "ClassifierSeeds",
    "ConfigurationError",
    "Hysteresis",
    "IndexSeeds",
    "MixedCalculator",
    "MlmixError",
    "PropertyNotDefinedError",
    "RegionLangevin",
    "RegionSpec",
    "RegionTracker",
    "Regions",
    "SpeciesSeeds",
    "coordination",
    "mix_forces",
    "__version__",
]
