"""Buffer control: the force error on weighted atoms against r_buff (mlmix.buffer),
`mlmix buffer CONFIG`, and `r_buff = "auto"` in a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.geometry import find_mic

from mlmix import ConfigurationError, IndexSeeds, RegionSpec, RegionTracker
from mlmix.buffer import default_buffers, scan_buffers
from mlmix.cli import main as cli_main
from mlmix.potentials.ase_cluster import AseClusterPotential, ReceptiveFieldWarning
from mlmix.potentials.lammps import LammpsPotential
from mlmix.run import run
from mlmix.structures import vacancy_supercell
from test_run import si_config, write_config


@pytest.fixture(scope="module")
def case():
    atoms, seeds = vacancy_supercell("Si", "diamond", 5.431, 3, 2.6)
    atoms.rattle(0.03, seed=2)
    return atoms, seeds


def test_error_falls_to_round_off_at_the_cutoff_of_a_local_potential(case):
    atoms, seeds = case
    with LammpsPotential.sw("Si.sw", ["Si"]) as sw:
        buffers = default_buffers(sw)
        assert buffers[0] == 0.0 and buffers[-1] == pytest.approx(sw.cutoff)
        scan = scan_buffers(atoms, sw, RegionSpec(2.5, 1.0), IndexSeeds(seeds), buffers,
                            tolerance=0.05)
    errors = [p.error for p in scan.points]
    assert errors[0] > 0.05  # no buffer: the weighted atoms miss their neighbours' terms
    assert errors[-1] < 1e-8 and scan.exact_r_buff == pytest.approx(errors and sw.cutoff)
    assert all(p.core_error <= p.error + 1e-12 or p.core_error > 0 for p in scan.points)
    # the cost grows with the buffer; the recommendation is the smallest that holds on
    assert [p.n_expensive for p in scan.points] == sorted(p.n_expensive for p in scan.points)
    rec = scan.recommended
    assert rec is not None and scan.error_at(rec) <= 0.05
    assert all(p.error <= 0.05 for p in scan.points if p.r_buff >= rec)
    smaller = [p for p in scan.points if p.r_buff < rec]
    assert smaller and smaller[-1].error > 0.05
    assert "recommended r_buff" in scan.table()
    # a tolerance no scanned buffer below the exact one meets
    with LammpsPotential.sw("Si.sw", ["Si"]) as sw:
        tight = scan_buffers(atoms, sw, RegionSpec(2.5, 1.0), IndexSeeds(seeds), [0.0, 1.0],
                             tolerance=1e-6)
    assert tight.recommended is None and "none of these" in tight.table()


def test_points_whose_evaluation_set_wraps_around_the_cell_are_marked(case):
    """In the 16 Å cell the 5 Å evaluation set wraps around it (checked here by
    unwrapping each set directly); SW is exact from its cutoff on, so the point still
    counts for larger cells."""
    atoms, seeds = case
    with LammpsPotential.sw("Si.sw", ["Si"]) as sw:
        scan = scan_buffers(atoms, sw, RegionSpec(2.5, 1.0), IndexSeeds(seeds),
                            [0.0, 2.0, 3.77118, 5.0], tolerance=1e-6)
        cutoff = sw.cutoff
    wraps = []
    for point in scan.points:
        tracker = RegionTracker(RegionSpec(2.5, 1.0, point.r_buff), IndexSeeds(seeds),
                                nevery=0, skin=0.0)
        pos = atoms.positions[tracker.update(atoms, 0).expensive]
        d, _ = find_mic(pos - pos[0], atoms.cell, atoms.pbc)
        wraps.append(bool(np.any(d.max(axis=0) - d.min(axis=0) + cutoff
                                 >= atoms.cell.lengths())))
    assert [p.wraps for p in scan.points] == wraps == [False, False, False, True]
    assert scan.recommended == scan.recommended_beyond_this_cell == 3.77118
    assert scan.to_dict()["points"][-1]["wraps"] is True
    assert "for larger cells: 3.77118 Å" in scan.table()


@pytest.mark.parametrize(("repeat", "beyond"), [(4, None), (6, 6.0)])
def test_a_wrapping_approximate_point_is_not_recommended_for_larger_cells(repeat, beyond):
    """EMT on carved clusters (never exact, receptive field 10 Å): in the 14 Å cell the
    clusters from 4 Å on wrap around it and keep the cell, so only the scanned cell may
    use them; in the 22 Å cell the same 6 Å buffer does not wrap and holds beyond it."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=1)
    pot = AseClusterPotential(EMT(), buffer=0.0, cutoff=5.0, receptive_field=10.0)
    with pytest.warns(ReceptiveFieldWarning):
        scan = scan_buffers(atoms, pot, RegionSpec(2.6, 1.0), IndexSeeds([0]),
                            [3.0, 4.0, 5.0, 6.0, 8.0], tolerance=0.01)
    assert scan.exact_r_buff is None and scan.recommended == 6.0
    assert scan.points[-1].wraps and not scan.points[0].wraps
    assert scan.points[3].wraps is (repeat == 4)
    assert scan.recommended_beyond_this_cell == beyond
    if beyond is None:
        assert "for larger cells: none of these (scan in a larger cell)" in scan.table()


def test_bad_arguments_are_refused(case):
    atoms, seeds = case
    with LammpsPotential.sw("Si.sw", ["Si"]) as sw:
        with pytest.raises(ConfigurationError, match="tolerance must be > 0"):
            scan_buffers(atoms, sw, RegionSpec(2.5), IndexSeeds(seeds), tolerance=0.0)
        with pytest.raises(ConfigurationError, match="buffers must be a non-empty list"):
            scan_buffers(atoms, sw, RegionSpec(2.5), IndexSeeds(seeds), [-1.0])


def test_mlmix_buffer_prints_the_table_and_writes_json(tmp_path, capsys):
    cfg = si_config()
    cfg["regions"]["force_tolerance"] = 0.1
    path = write_config(tmp_path, cfg)
    out = tmp_path / "scan.json"
    assert cli_main(["buffer", str(path), "--buffers", "0", "2", "3.77118", "--json",
                     str(out)]) == 0
    printed = capsys.readouterr().out
    assert "recommended r_buff for error <= 0.1 eV/Å" in printed
    scan = json.loads(out.read_text())
    assert [p["r_buff"] for p in scan["points"]] == [0.0, 2.0, 3.77118]
    assert scan["points"][-1]["error"] < 1e-8 and scan["tolerance_eV_per_A"] == 0.1
    # it does not overwrite a file
    assert cli_main(["buffer", str(path), "--json", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_auto_r_buff_runs_with_the_recommended_buffer_and_reports_its_error(tmp_path):
    cfg = si_config(steps=10)
    cfg["regions"]["r_buff"] = "auto"
    # the perfect-lattice vacancy of si_config: forces, and their errors, are small
    cfg["regions"]["force_tolerance"] = 1e-5
    cfg["output"]["directory"] = str(tmp_path / "run")
    summary = run(write_config(tmp_path, cfg))
    chosen = summary["buffer"]
    points = chosen["scan"]["points"]
    assert chosen["source"] == "auto" and chosen["tolerance_eV_per_A"] == 1e-5
    assert chosen["r_buff_A"] == chosen["scan"]["recommended_r_buff_A"] == 3.0
    assert chosen["measured_error_eV_per_A"] <= 1e-5
    assert any(p["r_buff"] < chosen["r_buff_A"] and p["error"] > 1e-5 for p in points)
    assert (tmp_path / "run" / "summary.json").is_file()


@pytest.mark.parametrize("regions, message", [
    ({"r_buff": "autoo"}, "regions.r_buff: must be a number"),
    ({"r_buff": "auto", "force_tolerance": 0.0}, "regions.force_tolerance: must be > 0"),
])
def test_bad_auto_settings_are_refused(tmp_path, capsys, regions, message):
    cfg = si_config()
    cfg["regions"].update(regions)
    assert cli_main(["run", str(write_config(tmp_path, cfg))]) == 2
    assert message in capsys.readouterr().err
