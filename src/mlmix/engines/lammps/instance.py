"""The LAMMPS engine's instance: box, atoms, the cheap pair style and the engine's fixes.

The engine's LAMMPS instance integrates (``fix nve``), builds neighbour lists and
computes the cheap potential natively; mlmix's forces enter through ``fix external``
(:data:`FIX_EXT`). Per-atom data that must migrate with atoms between ranks lives in
``fix property/atom`` arrays: the reference positions of the skin check (:data:`REF`)
and the last thermostat force (:data:`FTH`). ``fix halt`` on :data:`HALT_VAR` stops a
run at the end of a step in which mlmix failed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms, units
from ase.data import atomic_numbers

from ..._lammps_runtime import new_lammps
from ...errors import CalculationError, ConfigurationError
from ...neighbours import perpendicular_widths
from ...potentials.lammps import LammpsPotential, format_number
from ...potentials.lammps_frame import region_command

FIX_EXT = "mlmix_ext"
REF = "d2_mlmix_xref"
FTH = "d2_mlmix_fth"  # the thermostat force of the last step, migrating with its atom
HALT_VAR = "mlmix_halt"
CLASSIFIER = "mlmix_q"


def lammps_command(lmp: Any, cmd: str, what: str = "setting up the LAMMPS engine",
                   error: type[Exception] = CalculationError) -> None:
    """Run one LAMMPS command; a LAMMPS failure becomes ``error`` naming ``what`` and
    the command."""
    try:
        lmp.command(cmd)
    except Exception as exc:  # noqa: BLE001 - LAMMPS raises bare Exceptions
        text = str(exc).strip().splitlines()
        raise error(f"LAMMPS failed while {what} ({cmd!r}): "
                    f"{text[0] if text else exc!r}") from None


def type_order(atoms: Atoms, cheap: LammpsPotential) -> tuple[str, ...]:
    """LAMMPS type k + 1 is species k: the cheap potential's species, then the
    structure's species it lacks."""
    extra = [s for s in dict.fromkeys(atoms.get_chemical_symbols())
             if s not in cheap.type_species]
    return tuple(cheap.type_species) + tuple(extra)


def type_masses(atoms: Atoms, type_species: tuple[str, ...]) -> list[float]:
    """The mass (amu) of each LAMMPS type; refuses a species whose atoms differ."""
    masses = atoms.get_masses()
    out = []
    for s in type_species:
        m = masses[atoms.numbers == atomic_numbers[s]]
        if m.size == 0:
            out.append(1.0)  # a species of the cheap potential not in the structure
            continue
        if np.ptp(m) > 1e-12 * m[0]:
            raise ConfigurationError(
                f"atoms of {s} have different masses ({m.min()} to {m.max()} amu); "
                "LAMMPS masses are per species: give all atoms of one species one mass")
        out.append(float(m[0]))
    return out


def pair_commands(cheap: LammpsPotential, type_species: tuple[str, ...]) -> list[str]:
    """The commands that define the cheap potential in the engine's type order."""
    cmds = list(cheap.pre_commands)
    if len(type_species) == len(cheap.type_species):
        cmds.append(f"pair_style {cheap.pair_style}")
        cmds += list(cheap.pair_coeff)
    else:
        # Species the cheap potential lacks (He in W) interact through nothing on
        # the cheap side: a zero pair style covers their type pairs. They have p = 1,
        # so their cheap force is never used; W atoms near them are in the core too.
        sub = cheap.pair_style.split()[0]
        cmds.append(f"pair_style hybrid/overlay {cheap.pair_style} zero 1.0")
        for c in cheap._coeffs:  # re-rendered in the engine's type order
            cmds += c.render(cheap.type_species, type_species, sub)
        cmds.append("pair_coeff * * zero")
    cmds.append(f"neighbor {format_number(cheap.skin)} bin")
    cmds.append("neigh_modify every 1 delay 0 check yes")
    return cmds


def box_commands(frame: Any, n_types: int) -> list[str]:
    """Units, boundary, region and ``create_box`` for the engine's frame."""
    region = region_command(frame)
    return ["units metal", "atom_style atomic", "atom_modify map yes",
            "boundary " + " ".join("p" if p else "s" for p in frame.pbc), region,
            f"create_box {n_types} mlmix_box"]


def create_atoms(lmp: Any, atoms: Atoms, frame: Any, types: np.ndarray,
                 fixed: np.ndarray) -> None:
    """Atom i as tag i + 1 with its type, position and velocity (held atoms at rest)."""
    n = len(atoms)
    x = frame.to_lammps(atoms.positions)
    # ASE velocities are Å per ASE time unit; LAMMPS metal wants Å/ps.
    v = (atoms.get_velocities() @ frame.rotation) * (1000.0 * units.fs)
    v[fixed] = 0.0
    chunk = 100_000  # bounded temporary ctypes arrays
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        made = lmp.create_atoms(e - s, np.arange(s + 1, e + 1), types[s:e],
                                x[s:e].ravel(), v[s:e].ravel())
        if made is None or made < 0:
            raise CalculationError("LAMMPS refused to create the atoms")
    if lmp.get_natoms() != n:
        raise CalculationError(
            f"LAMMPS kept {lmp.get_natoms()} of {n} atoms (atoms outside the box?)")


def engine_fix_commands(timestep_fs: float, classifier: Any) -> list[str]:
    """Time step, integrator, the external force, the halt switch and the classifier."""
    cmds = [f"timestep {format_number(timestep_fs / 1000.0)}", "thermo 0",
            "thermo_style custom step",
            f"fix mlmix_ref all property/atom {REF} 3 ghost no",
            "fix mlmix_nve all nve",
            f"fix {FIX_EXT} all external pf/callback 1 1",
            f"variable {HALT_VAR} internal 0",
            f"fix mlmix_halt all halt 1 v_{HALT_VAR} > 0.5 error soft message no"]
    if classifier is not None:
        cmds.append(f"compute {CLASSIFIER} all {classifier.compute} {classifier.args}".rstrip())
    return cmds


def local_tags(lmp: Any) -> np.ndarray:
    """``(nlocal,)`` int64 tags of the atoms this rank owns."""
    nlocal = int(lmp.extract_setting("nlocal"))
    return np.asarray(lmp.numpy.extract_atom("id")[:nlocal], dtype=np.int64)


def hold_fixed(lmp: Any, fixed: np.ndarray) -> None:
    """``fix setforce 0`` on the atoms ``fixed`` ``(N,)`` marks (defined after the
    external force, so it zeroes correction and thermostat too)."""
    lammps_command(lmp, "fix mlmix_fixflag all property/atom i_mlmix_fixed ghost no")
    tag = local_tags(lmp)
    if len(tag):
        lmp.numpy.extract_atom("i_mlmix_fixed")[:len(tag)] = fixed[tag - 1]
    for c in ("variable mlmix_vfixed atom i_mlmix_fixed",
              "group mlmix_fixed variable mlmix_vfixed",
              "fix mlmix_hold mlmix_fixed setforce 0.0 0.0 0.0"):
        lammps_command(lmp, c)


def store_thermostat_force(lmp: Any, force: np.ndarray | None, rotation: np.ndarray) -> None:
    """The per-atom thermostat-force array, filled with ``force`` ``(N, 3)`` eV/Å (in
    the input frame) of a continued run."""
    lammps_command(lmp, f"fix mlmix_fth all property/atom {FTH} 3 ghost no")
    if force is None:
        return
    tag = local_tags(lmp)
    if len(tag):
        lmp.numpy.extract_atom(FTH)[:len(tag)] = (force @ rotation)[tag - 1]


def check_decomposition(lmp: Any, comm: Any, frame: Any, cheap: LammpsPotential) -> None:
    """Refuse a rank count that cuts the box into slabs thinner than the cheap
    potential's interaction range (cutoff + skin): each rank would then hold more
    ghost atoms than atoms, and the run would be slower than on fewer ranks."""
    if comm.size == 1:
        return
    if frame.triclinic:
        lo = np.array(lmp.extract_global("sublo_lambda"))
        hi = np.array(lmp.extract_global("subhi_lambda"))
    else:
        box_lo = np.array(lmp.extract_global("boxlo"))
        box_len = np.array(lmp.extract_global("boxhi")) - box_lo
        lo = (np.array(lmp.extract_global("sublo")) - box_lo) / box_len
        hi = (np.array(lmp.extract_global("subhi")) - box_lo) / box_len
    widths = perpendicular_widths(frame.box)
    split = (hi - lo) < 1.0 - 1e-9  # axes the rank grid cuts
    local = float(np.min(np.where(split, (hi - lo) * widths, np.inf)))
    smallest = min(comm.allgather(local))
    reach = cheap.cutoff + cheap.skin
    if smallest < reach:
        fit = np.maximum(1, np.floor(widths / reach)).astype(int)
        fit = np.where(np.array(frame.pbc), fit, 1)
        most = int(np.prod(fit))
        raise ConfigurationError(
            f"{comm.size} MPI ranks cut this {widths.round(2).tolist()} Å box into "
            f"sub-domains {smallest:.2f} Å thin, less than the cheap potential's "
            f"interaction range {reach:.2f} Å (cutoff + skin): every rank would hold "
            f"more ghost atoms than atoms. Use at most {most} rank{'s' * (most > 1)} "
            "for this cell, or a larger cell")


def start_instance(atoms: Atoms, frame: Any, cheap: LammpsPotential,
                   type_species: tuple[str, ...], masses: list[float], fixed: np.ndarray,
                   timestep_fs: float, classifier: Any, nvt: bool,
                   thermostat_force: np.ndarray | None, comm: Any) -> Any:
    """A LAMMPS instance holding ``atoms`` with the cheap potential and the engine's
    fixes, ready for ``set_fix_external_callback`` (the caller closes it on error)."""
    lmp = new_lammps()
    try:
        for c in box_commands(frame, len(type_species)):
            lammps_command(lmp, c)
        check_decomposition(lmp, comm, frame, cheap)
        for c in pair_commands(cheap, type_species):
            lammps_command(lmp, c, "defining the cheap potential", ConfigurationError)
        for k, m in enumerate(masses):
            lammps_command(lmp, f"mass {k + 1} {format_number(m)}")
        lut = {s: k + 1 for k, s in enumerate(type_species)}
        types = np.array([lut[s] for s in atoms.get_chemical_symbols()], dtype=np.int64)
        create_atoms(lmp, atoms, frame, types, fixed)
        for c in engine_fix_commands(timestep_fs, classifier):
            err = ConfigurationError if c.startswith("compute") else CalculationError
            lammps_command(lmp, c, "setting up the LAMMPS engine", err)
        if fixed.any():
            hold_fixed(lmp, fixed)
        if nvt:
            store_thermostat_force(lmp, thermostat_force, frame.rotation)
    except BaseException:
        lmp.close()
        raise
    return lmp
