"""Reading TOML configuration files and reporting every mistake at once.

A config is checked completely before anything runs; each problem is recorded with
its place in the file (``section.key``) and what is expected, and all of them are
raised together in one :class:`~mlmix.errors.ConfigurationError`.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigurationError


def load_toml(path: str | Path) -> dict:
    """Read a TOML file; a missing file or a syntax error is a ConfigurationError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"config file {str(path)!r} not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from None


class Problems:
    """Collects configuration mistakes; :meth:`raise_if_any` raises them all."""

    def __init__(self, source: str = "config"):
        self.source = source
        self.messages: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.messages.append(f"{where}: {message}")

    def count(self, prefix: str = "") -> int:
        """How many problems so far are about ``prefix`` (a section or key)."""
        return sum(m.startswith(prefix) for m in self.messages)

    def raise_if_any(self) -> None:
        if self.messages:
            listing = "\n".join(f"  - {m}" for m in self.messages)
            raise ConfigurationError(
                f"{self.source} has {len(self.messages)} problem(s):\n{listing}"
            )

    def section(self, cfg: Mapping, name: str, required: bool = True) -> dict:
        """``cfg[name]`` as a dict ({} and a problem if it is missing but required)."""
        value = cfg.get(name)
        if value is None:
            if required:
                self.add(name, "missing section")
            return {}
        if not isinstance(value, Mapping):
            self.add(name, f"must be a table, got {type(value).__name__}")
            return {}
        return dict(value)

    def number(self, table: Mapping, where: str, key: str, default=None, *,
               minimum: float | None = None, integer: bool = False, strict: bool = False):
        """A number from ``table[key]`` (``default`` when absent; required if None)."""
        value = table.get(key, default)
        place = f"{where}.{key}"
        if value is None:
            self.add(place, "missing")
            return None
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            self.add(place, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
            return None
        if not math.isfinite(value):
            self.add(place, f"must be a finite number, got {value!r}")
            return None
        if minimum is not None and (value <= minimum if strict else value < minimum):
            self.add(place, f"must be {'>' if strict else '>='} {minimum}, got {value!r}")
            return None
        return value

    def choice(self, table: Mapping, where: str, key: str, options, default=None) -> Any:
        value = table.get(key, default)
        if value not in options:
            self.add(f"{where}.{key}", f"must be one of {sorted(options)}, got {value!r}")
            return None
        return value

    def flag(self, table: Mapping, where: str, key: str, default: bool) -> bool:
        """``table[key]`` (or ``default``) if it is a bool; else a problem, and ``default``."""
        value = table.get(key, default)
        if not isinstance(value, bool):
            self.add(f"{where}.{key}", f"must be true or false, got {value!r}")
            return default
        return value

    def unknown_keys(self, table: Mapping, where: str, known) -> None:
        for key in table:
            if key not in known:
                self.add(f"{where}.{key}", f"unknown key (known: {', '.join(sorted(known))})")


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if value == value and abs(value) != float("inf") else (
            "nan" if value != value else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write a {type(value).__name__} to TOML")


def dump_toml(cfg: Mapping, _prefix: str = "") -> str:
    """A TOML text for nested dicts of strings, numbers, bools and lists.

    ``tomllib.loads(dump_toml(d)) == d`` for such dicts (tables nest as
    ``[a.b]`` headers).
    """
    lines = [f"{key} = {_toml_value(v)}" for key, v in cfg.items() if not isinstance(v, Mapping)]
    for key, v in cfg.items():
        if isinstance(v, Mapping):
            name = f"{_prefix}{key}"
            lines.append(f"\n[{name}]")
            lines.append(dump_toml(v, name + "."))
    return "\n".join(line for line in lines if line).strip("\n") + "\n"
