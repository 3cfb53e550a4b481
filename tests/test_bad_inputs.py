"""A battery of bad inputs through `mlmix run`, the entry point users use.

Every case must be refused with exit status 2 and a message that names the config key
(or the file) at fault, before anything is written: the folder holding the config
must afterwards hold exactly what it held before.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from mlmix.cli import main as cli_main
from test_run import si_config, write_config


def _set(cfg: dict, dotted: str, value) -> None:
    *path, key = dotted.split(".")
    table = cfg
    for name in path:
        table = table.setdefault(name, {})
    if value is _DELETE:
        table.pop(key, None)
    else:
        table[key] = value


_DELETE = object()
NAN, INF = float("nan"), float("inf")
CLASSIFIER = {"kind": "classifier", "quantity": "coordination", "r_cut": 2.6, "ub": 3}
W_HE = {"builder": "interstitial", "element": "W", "crystal": "bcc", "a": 3.1805,
        "repeat": 3, "species": "He"}
W_SNAP = {"backend": "lammps", "style": "include", "file": "W_2940_2017_2_He_JW2013.snap",
          "species": ["W", "He"]}
W_EAM = {"backend": "lammps", "style": "eam_alloy", "file": "W_zhou.eam.alloy",
         "species": ["W"]}

ASE_EMT = {"backend": "ase", "calculator": "ase.calculators.emt:EMT", "buffer": 6.0,
           "cutoff": 5.88, "receptive_field": 5.88}

# (id, {dotted key: value}, text the message must contain)
CASES = [
    ("crystal typo", {"structure.crystal": "diamnd"}, "structure.crystal"),
    ("a nan", {"structure.a": NAN}, "structure.a: must be a finite number"),
    ("a inf", {"structure.a": INF}, "structure.a: must be a finite number"),
    ("a negative", {"structure.a": -1.0}, "structure.a"),
    ("a tiny: overlapping atoms", {"structure.a": 0.5}, "Å apart"),
    ("repeat zero", {"structure.repeat": 0}, "structure.repeat"),
    ("unknown element", {"structure.element": "Xx"}, "structure.element"),
    ("unknown builder", {"structure.builder": "random"}, "structure.builder"),
    ("vacancy index out of range", {"structure.index": 10**6}, "structure.index"),
    ("min_distance negative", {"structure.min_distance": -1.0}, "structure.min_distance"),
    ("min_distance above the bond", {"structure.min_distance": 3.0},
     "structure.min_distance"),
    ("expensive file missing", {"potentials.expensive.file": "Si.ssw"}, "potentials.expensive.file"),
    ("cheap style unknown", {"potentials.cheap.style": "tersof"}, "potentials.cheap.style"),
    ("expensive table missing", {"potentials.expensive": _DELETE}, "potentials.expensive"),
    ("expensive species wrong", {"potentials.expensive.species": ["Ge"]},
     "potentials.expensive.species"),
    ("species not symbols", {"potentials.cheap.species": [14]}, "potentials.cheap.species"),
    ("truncation typo", {"potentials.expensive.truncation": "yes"},
     "potentials.expensive.truncation: must be one of ['auto', 'off', 'require']"),
    ("r_core nan", {"regions.r_core": NAN}, "regions.r_core: must be a finite number"),
    ("r_core string", {"regions.r_core": "5"}, "regions.r_core: must be a number"),
    ("r_blend negative", {"regions.r_blend": -1.0}, "regions.r_blend"),
    ("skin inf", {"regions.skin": INF}, "regions.skin"),
    ("r_buff below the cutoff", {"regions.r_buff": 1.0}, "regions.r_buff"),
    ("nevery negative", {"regions.nevery": -1}, "regions.nevery"),
    ("correction_every zero", {"task.correction_every": 0},
     "task.correction_every: must be >= 1"),
    ("correction_every not a multiple of nevery", {"task.correction_every": 3},
     "regions.nevery: 5 is not a multiple of task.correction_every = 3: regions can change "
     "only at steps that evaluate the expensive correction; use 3"),
    ("correction_every with mask_cheap", {"task.correction_every": 5, "mixing.mask_cheap": True},
     "mixing.mask_cheap: must be false with task.correction_every = 5"),
    ("blend unknown", {"regions.blend": "gaussian"}, "regions.blend"),
    ("negative seed index", {"regions.seeds": {"kind": "indices", "indices": [-1]}},
     "regions.seeds.indices"),
    ("seed index out of range", {"regions.seeds": {"kind": "indices", "indices": [10**5]}},
     "regions.seeds.indices"),
    ("seed species absent", {"regions.seeds": {"kind": "species", "species": "He"}},
     "regions.seeds.species"),
    ("classifier lb > ub", {"regions.seeds": {**CLASSIFIER, "lb": 5, "ub": 3}},
     "regions.seeds.lb"),
    ("classifier nfreq off the schedule", {"regions.seeds": {**CLASSIFIER, "nfreq": 7}},
     "regions.seeds.nfreq"),
    ("classifier quantity unknown", {"regions.seeds": {**CLASSIFIER, "quantity": "cna"}},
     "regions.seeds.quantity"),
    ("classifier ub inf", {"regions.seeds": {**CLASSIFIER, "ub": INF}}, "regions.seeds.ub"),
    ("timestep nan", {"task.timestep_fs": NAN}, "task.timestep_fs"),
    ("timestep too long", {"task.timestep_fs": 20.0}, "task.timestep_fs"),
    ("temperature inf", {"task.temperature_K": INF}, "task.temperature_K"),
    ("steps zero", {"task.steps": 0}, "task.steps"),
    ("steps float", {"task.steps": 10.5}, "task.steps"),
    ("ensemble npt", {"task.ensemble": "npt"}, "task.ensemble"),
    ("task kind unknown", {"task.kind": "minimise"}, "task.kind"),
    ("nvt at 0 K", {"task.temperature_K": 0.0}, "task.temperature_K"),
    ("friction negative", {"task.friction_per_fs": -1.0}, "task.friction_per_fs"),
    ("seed negative", {"task.seed": -3}, "task.seed"),
    ("trajectory_every negative", {"output.trajectory_every": -5}, "output.trajectory_every"),
    ("progress unknown", {"output.progress": "sometimes"}, "output.progress"),
    ("directory empty", {"output.directory": ""}, "output.directory"),
    ("engine unknown", {"engine.kind": "gromacs"}, "engine.kind"),
    ("unknown section", {"thermostat.kind": "nose"}, "top level.thermostat"),
    ("unknown key", {"regions.colour": "blue"}, "regions.colour"),
    ("mixing flag not a bool", {"mixing.allow_approximate": "yes"}, "mixing.allow_approximate"),
    ("hysteresis for a relaxation",
     {"task": {"kind": "relax"}, "regions.nevery": 0, "regions.hysteresis": {"tau_in_fs": 5.0}},
     "regions.hysteresis"),
    ("neb hop out of range", {"task": {"kind": "neb", "hop": 99}, "regions.nevery": 0},
     "task.hop"),
    ("lammps engine for a relaxation", {"task": {"kind": "relax"}, "regions.nevery": 0,
                                        "engine.kind": "lammps"}, "engine.kind"),
    ("ase calculator not module:factory",
     {"potentials.expensive": {"backend": "ase", "calculator": "ase.calculators.emt.EMT",
                               "buffer": 6.0}},
     "potentials.expensive.calculator: must name a factory as 'package.module:function'"),
    ("ase calculator module missing",
     {"potentials.expensive": {**ASE_EMT, "calculator": "no_such_package.calc:make"}},
     "potentials.expensive.calculator: cannot import 'no_such_package.calc'"),
    ("ase calculator not callable",
     {"potentials.expensive": {**ASE_EMT, "calculator": "ase.units:fs"}},
     "potentials.expensive.calculator: 'ase.units:fs' is a float, not a function or class"),
    ("ase calculator factory fails",
     {"potentials.expensive": {**ASE_EMT, "calculator": "ase.build:bulk"}},
     "potentials.expensive.calculator: ase.build:bulk(**potentials.expensive.kwargs) failed: "
     "TypeError"),
    ("ase calculator factory returns no calculator",
     {"potentials.expensive": {**ASE_EMT, "calculator": "ase.build:bulk",
                               "kwargs": {"name": "Si"}}},
     "potentials.expensive.calculator: ase.build:bulk returned an object of type Atoms, not an ASE calculator"),
    ("ase calculator without ranges", {"potentials.expensive": {
        "backend": "ase", "calculator": "ase.calculators.emt:EMT", "buffer": 6.0}},
     "set potentials.expensive.cutoff and potentials.expensive.receptive_field"),
    ("ase calculator without per-atom energies for NEB",
     {"task": {"kind": "neb", "hop": 0}, "regions.nevery": 0,
      "potentials.expensive": {**ASE_EMT, "calculator": "conftest:emt_without_energies"}},
     "potentials.expensive: ase:conftest:emt_without_energies gives no per-atom energies"),
    ("mace device typo", {"potentials.expensive": {"backend": "mace", "model": "Si_snap_mace",
                                                   "device": "gpu"}},
     "potentials.expensive.device: must be 'cpu' or 'cuda'"),
    ("cheap lacks He, He not a seed",
     {"structure": W_HE, "potentials": {"expensive": W_SNAP, "cheap": W_EAM},
      "regions.seeds": CLASSIFIER, "task.temperature_K": 300.0},
     "potentials.cheap.species"),
]


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("changes,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_is_refused_before_anything_is_written(tmp_path, capsys, changes, expected):
    cfg = si_config()
    cfg["structure"]["repeat"] = 2
    for key, value in changes.items():
        _set(cfg, key, value if value is _DELETE else copy.deepcopy(value))
    path = write_config(tmp_path, cfg)
    before = _snapshot(tmp_path)
    assert cli_main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlmix: error:")
    assert expected in err, err
    assert "Traceback" not in err
    assert _snapshot(tmp_path) == before  # nothing written, nothing removed


def test_the_battery_is_large_and_distinct():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)
    assert len({repr(c[1]) for c in CASES}) == len(CASES)


def test_all_mistakes_of_one_config_in_one_message(tmp_path, capsys):
    cfg = si_config()
    for key, value in {"structure.a": INF, "regions.r_core": NAN, "task.timestep_fs": NAN,
                       "task.temperature_K": INF, "regions.skin": -1.0,
                       "regions.seeds": {**CLASSIFIER, "lb": 4, "ub": 2},
                       "output.log_every": "often"}.items():
        _set(cfg, key, value)
    path = write_config(tmp_path, cfg)
    assert cli_main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "7 problem(s)" in err
    for key in ("structure.a", "regions.r_core", "task.timestep_fs", "task.temperature_K",
                "regions.skin", "regions.seeds.lb", "output.log_every"):
        assert key in err


def test_structure_and_config_mistakes_are_reported_together(tmp_path, capsys):
    """A check that needs the built structure (a seed index) and a plain key mistake
    come in the same message, before any potential is loaded."""
    cfg = si_config()
    cfg["regions"]["seeds"] = {"kind": "indices", "indices": [0, 5000]}
    cfg["task"]["ensemble"] = "nvee"
    path = write_config(tmp_path, cfg)
    # the ensemble mistake stops the structure checks only if the structure is wrong
    assert cli_main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "task.ensemble" in err and "regions.seeds.indices" in err and "2 problem(s)" in err


def test_checks_after_loading_report_every_finding(tmp_path, capsys):
    cfg = si_config()
    cfg["regions"]["r_buff"] = 1.0  # both need the loaded potentials' cutoffs
    cfg["mixing"] = {"mask_cheap": True}
    path = write_config(tmp_path, cfg)
    before = _snapshot(tmp_path)
    assert cli_main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err and "regions.r_buff" in err and "mixing.mask_cheap" in err
    assert _snapshot(tmp_path) == before


def test_classifier_defaults_fit_the_md_schedule(tmp_path):
    """A minimal classifier table (no nfreq) is valid with the MD default nevery = 10."""
    from mlmix.runconfig import parse_run_config

    cfg = si_config()
    del cfg["regions"]["nevery"]
    cfg["regions"]["seeds"] = dict(CLASSIFIER)
    checked = parse_run_config(cfg)
    assert checked.regions["nevery"] == 10 and checked.seeds["nfreq"] == 10


@pytest.mark.parametrize("text,expected", [
    ("2\nLattice=\"5.43 0 0 0 5.43 0 0 0 5.43\" Properties=species:S:1:pos:R:3\n"
     "Si 0 0 0\nSi 0 0 0.1\n", "0.1 Å apart"),
    ("2\nProperties=species:S:1:pos:R:3\nSi 0 0 0\nSi 0 0 2.35\n", "structure.pbc = false"),
    ("0\nLattice=\"5.43 0 0 0 5.43 0 0 0 5.43\" Properties=species:S:1:pos:R:3\n",
     "no atoms"),
], ids=["coincident-ish atoms", "no lattice", "empty"])
def test_bad_structure_files_are_named(tmp_path, capsys, text, expected):
    (tmp_path / "cell.extxyz").write_text(text)
    cfg = si_config()
    cfg["structure"] = {"builder": "file", "path": "cell.extxyz"}
    cfg["regions"]["seeds"] = {"kind": "indices", "indices": [0]}
    path = write_config(tmp_path, cfg)
    before = _snapshot(tmp_path)
    assert cli_main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert _snapshot(tmp_path) == before


def test_a_cluster_file_runs_when_said_so(tmp_path):
    """The same cell-less file is accepted with pbc = false, as a cluster."""
    from mlmix.runconfig import parse_run_config

    (tmp_path / "pair.extxyz").write_text(
        "2\nProperties=species:S:1:pos:R:3\nSi 0 0 0\nSi 0 0 2.35\n")
    cfg = si_config()
    cfg["structure"] = {"builder": "file", "path": "pair.extxyz", "pbc": False}
    cfg["regions"]["seeds"] = {"kind": "indices", "indices": [0]}
    checked = parse_run_config(cfg, base=tmp_path)
    assert not checked.built.atoms.pbc.any()


def test_a_species_string_is_one_species(tmp_path):
    from mlmix.runconfig import parse_run_config

    cfg = si_config()
    cfg["potentials"]["expensive"]["species"] = "Si"
    cfg["potentials"]["cheap"]["species"] = "Si"
    checked = parse_run_config(cfg)
    assert checked.expensive["species"] == ["Si"] and checked.cheap["species"] == ["Si"]
    cfg["potentials"]["cheap"]["species"] = "S i"
    with pytest.raises(Exception, match="potentials.cheap.species"):
        parse_run_config(cfg)
