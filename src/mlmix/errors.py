"""Exception hierarchy of mlmix.

Every error raised for bad user input is a :class:`ConfigurationError` and is raised
before any expensive work starts; a failure while computing is a
:class:`CalculationError`. Both derive from :class:`MlmixError`, so
``except mlmix.MlmixError`` catches everything mlmix raises on purpose.
"""

from __future__ import annotations

from ase.calculators.calculator import PropertyNotImplementedError


class MlmixError(Exception):
    """Base class of all errors raised deliberately by mlmix."""


class ConfigurationError(MlmixError, ValueError):
    """The input (structure, radii, potential, options) cannot be used as given.

    Messages name the offending value and say how to fix it.
    """


class CalculationError(MlmixError, RuntimeError):
    """A potential or engine failed while computing."""


class PropertyNotDefinedError(MlmixError, PropertyNotImplementedError):
    """A quantity was asked for that the method does not define.

    Force mixing has no total energy and no stress: the mixed forces are not the
    gradient of any function. mlmix raises this rather than return an invented number.
    It is an ASE :class:`~ase.calculators.calculator.PropertyNotImplementedError` (and
    so a ``NotImplementedError``), which generic ASE code already expects from a
    calculator that lacks a property.
    """


class MissingDependencyError(MlmixError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


def missing_dependency(module: str, extra: str) -> MissingDependencyError:
    """Build the error raised when an optional ``module`` cannot be imported."""
    return MissingDependencyError(
        f"{module} is not installed; install it with `pip install 'mlmix[{extra}]'`"
    )


class OutputError(MlmixError, OSError):
    """A run's output could not be written (a full disk, a read-only folder).

    The message names the file and the operating system's error; what was written
    before (the last checkpoint above all) is left intact.
    """


class Interrupted(MlmixError):
    """A run was stopped by SIGINT (Ctrl-C) or SIGTERM after writing a checkpoint."""
