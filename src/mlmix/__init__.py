"""mlmix: spatial mixing of an expensive and a cheap interatomic potential."""

from .errors import (
    CalculationError,
    ConfigurationError,
    MlmixError,
    PropertyNotDefinedError,
)

__all__ = [
    "CalculationError",
    "ConfigurationError",
    "MlmixError",
    "PropertyNotDefinedError",
]
__version__ = "0.1.0"
