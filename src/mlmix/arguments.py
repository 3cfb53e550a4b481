"""Checks of Python arguments, with messages in the caller's terms.

:func:`number_argument` checks one numeric argument (type, finiteness, bound) and
:func:`species_list` a list of chemical symbols (one string is one symbol); both name
the argument in the :class:`~mlmix.errors.ConfigurationError`, so that
``RegionSpec("5")`` says what is wrong rather than failing deep inside numpy.
"""

from __future__ import annotations

import math
import numbers

from ase.data import atomic_numbers

from .errors import ConfigurationError


def number_argument(name: str, value, unit: str = "", *, minimum: float | None = None,
                    strict: bool = False, finite: bool = True, integer: bool = False,
                    what: str = "number", note: str = "") -> float | int:
    """Check one numeric Python argument and return it as a ``float`` (``int`` with
    ``integer=True``).

    Args:
        name: the argument as the caller writes it, e.g. ``"RegionSpec r_core"``.
        value: what was passed. Real numbers (Python or numpy) only: a str, None, a
            bool or a complex number is refused, never converted.
        unit: unit named in the message (``"Å"``, ``"fs"``), or ``""``.
        minimum: lower bound, inclusive unless ``strict``; None for none.
        strict: the bound is exclusive (``> minimum``).
        finite: refuse NaN and ±inf; with ``finite=False`` only NaN is refused.
        integer: require an integer (a Python or numpy int; 10.0 is refused).
        what: the noun of the message (``"distance"``, ``"time"``).
        note: appended to the message, e.g. what a value means (``"0 = once"``).

    Raises:
        ConfigurationError: naming ``name``, the value and what is allowed.
    """
    unit_text = f" {unit}" if unit else ""
    if integer:
        wanted, example = "an integer", "an int such as 10"
    else:
        wanted = f"a finite {what}" if finite else f"a {what}"
        example = "a float such as 5.0"
    if minimum is not None:
        wanted += f" {'>' if strict else '>='} {minimum:g}{unit_text}"
    elif unit:
        wanted += f" in{unit_text}"
    if note:
        wanted += f" ({note})"
    # bool is an int to Python, but True as a radius or a period is always a mistake.
    is_bool = isinstance(value, bool) or type(value).__name__ == "bool_"
    if is_bool or not isinstance(value, numbers.Integral if integer else numbers.Real):
        raise ConfigurationError(
            f"{name} must be {wanted}, got {value!r} (a {type(value).__name__}); "
            f"pass {example}")
    # With integer=True the check above has already refused anything but an Integral.
    number: float | int
    if integer and isinstance(value, numbers.Integral):
        number = int(value)
    else:
        number = float(value)
    out_of_range = minimum is not None and (number <= minimum if strict else number < minimum)
    if math.isnan(number) or (finite and math.isinf(number)) or out_of_range:
        raise ConfigurationError(f"{name} must be {wanted}, got {value!r}")
    return number


def species_list(symbols, what: str) -> list[str]:
    """Chemical symbols as a list, one string being one symbol (``"Si"`` is
    ``["Si"]``, not ``["S", "i"]``).

    Args:
        symbols: a symbol or a sequence of symbols.
        what: the argument as the caller writes it, for the message.

    Raises:
        ConfigurationError: an empty list, a non-string entry or an unknown symbol.
    """
    if isinstance(symbols, str):
        symbols = [symbols]
    try:
        symbols = list(symbols)
    except TypeError:
        raise ConfigurationError(
            f"{what} must be chemical symbols such as ['W', 'He'], got {symbols!r}"
        ) from None
    if not symbols:
        raise ConfigurationError(f"{what} needs at least one chemical symbol, e.g. ['He']")
    unknown = [s for s in symbols if not isinstance(s, str) or s not in atomic_numbers]
    if unknown:
        raise ConfigurationError(
            f"unknown element symbols {unknown} in {what}; write symbols such as 'He' "
            "(capital first letter)")
    return symbols
