"""Figures of a mixed run: regions (projection + blend profile), thermo log, drift."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.geometry import get_distances
from ase.io import read
from numpy.testing import assert_allclose

from mlmix import (
    ConfigurationError,
    IndexSeeds,
    MixedCalculator,
    RegionSpec,
    RegionTracker,
)
from mlmix.figures import distance_to_core, plot_log, plot_regions, read_log
from mlmix.outputs import LOG_COLUMNS, THERMO_NOTE, TableLog, TrajectoryWriter
from mlmix.potentials.lammps import LammpsPotential

R_BLEND = 3.0


def assert_png(path):
    """A real PNG image of a sensible size."""
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 200
    assert image[..., :3].std() > 0.01  # something was drawn


@pytest.fixture(scope="module")
def mixed_atoms():
    """216-atom diamond Si after a mixed SW / Tersoff force call: mlmix_p with a
    core, a linear blend shell and a cheap rest; evaluation flags set."""
    expensive = LammpsPotential.sw("Si.sw", ["Si"])
    cheap = LammpsPotential.tersoff("Si.tersoff", ["Si"])
    atoms = bulk("Si", "diamond", a=5.431, cubic=True).repeat(3)
    atoms.rattle(0.05, seed=1)
    spec = RegionSpec(r_core=2.5, r_blend=R_BLEND, r_buff=expensive.cutoff)
    atoms.calc = MixedCalculator(expensive, cheap, RegionTracker(spec, IndexSeeds([0])),
                                 mask_cheap=True)
    atoms.get_forces()
    yield atoms
    expensive.close()
    cheap.close()


def test_regions_png_from_a_mixed_calculation(tmp_path, mixed_atoms):
    import matplotlib.pyplot as plt

    p = mixed_atoms.arrays["mlmix_p"]
    assert (p == 1).any() and ((p > 0) & (p < 1)).any() and (p == 0).any()
    open_before = plt.get_fignums()
    for axis in (None, "x", 1):
        path = tmp_path / f"regions-{axis}.png"
        plot_regions(mixed_atoms, path, axis=axis)
        assert_png(path)
    assert plt.get_fignums() == open_before  # no figure left open


def test_regions_png_from_a_saved_frame(tmp_path, mixed_atoms):
    with TrajectoryWriter(tmp_path / "t.extxyz") as traj:
        traj.write(mixed_atoms, 0, 0.0, mixed_atoms.get_forces())
    frame = read(tmp_path / "t.extxyz")
    assert frame.arrays["mlmix_expensive"].dtype == bool
    plot_regions(frame, tmp_path / "regions.png")
    assert_png(tmp_path / "regions.png")


def test_profile_distances_are_minimum_image_to_the_nearest_core_atom(mixed_atoms):
    p = mixed_atoms.arrays["mlmix_p"]
    core = p >= 1
    targets = np.flatnonzero(p > 0)
    d = distance_to_core(mixed_atoms, core, targets)
    _, brute = get_distances(mixed_atoms.positions[targets], mixed_atoms.positions[core],
                             cell=mixed_atoms.cell, pbc=mixed_atoms.pbc)
    assert_allclose(d, brute.min(axis=1), rtol=0, atol=1e-10)
    # the panel shows the blend law: p = 1 - d / r_blend on the blend shell
    blend = (p[targets] > 0) & (p[targets] < 1)
    assert_allclose(p[targets][blend], 1 - d[blend] / R_BLEND, atol=1e-12)


def test_profile_distance_in_an_open_cluster():
    from ase.cluster import Icosahedron

    atoms = Icosahedron("Cu", 3)
    core = np.zeros(len(atoms), bool)
    core[[0, 5]] = True
    targets = np.arange(len(atoms))
    _, brute = get_distances(atoms.positions, atoms.positions[core])
    assert_allclose(distance_to_core(atoms, core, targets), brute.min(axis=1), atol=1e-10)


def test_regions_without_weights_or_with_bad_weights(tmp_path, mixed_atoms):
    plain = bulk("Si", "diamond", a=5.431, cubic=True)
    with pytest.raises(ConfigurationError, match="no 'mlmix_p' array.*MixedCalculator"):
        plot_regions(plain, tmp_path / "x.png")
    plain.arrays["mlmix_p"] = np.full(len(plain), 1.5)
    with pytest.raises(ConfigurationError, match="finite weights in \\[0, 1\\]"):
        plot_regions(plain, tmp_path / "x.png")
    with pytest.raises(ConfigurationError, match="axis must be"):
        plot_regions(mixed_atoms, tmp_path / "x.png", axis="w")
    assert not (tmp_path / "x.png").exists()


def test_regions_without_core_atoms(tmp_path):
    atoms = bulk("Si", "diamond", a=5.431, cubic=True)
    atoms.arrays["mlmix_p"] = np.zeros(len(atoms))  # e.g. a classifier found nothing
    plot_regions(atoms, tmp_path / "r.png")
    assert_png(tmp_path / "r.png")


# ------------------------------------------------------------------------ logs


def write_log(path, rows, columns=LOG_COLUMNS):
    with TableLog(path, columns, THERMO_NOTE) as log:
        for row in rows:
            log.record(row)


def thermo_rows(n, drift=True):
    rng = np.random.default_rng(0)
    return [{"step": 10 * k, "time_fs": 10.0 * k, "temperature_K": 600 + rng.normal(0, 20),
             "n_core": 17, "n_weighted": 40 + k % 3, "n_expensive": 150 + k % 5,
             "n_cheap": 210, "seconds_per_step": float("nan") if k == 0 else 0.01,
             "drift_eV_per_ps": 0.1 * k if drift and k >= 3 else float("nan")}
            for k in range(n)]


def test_log_png_and_reader(tmp_path):
    import matplotlib.pyplot as plt

    path = tmp_path / "thermo.log"
    write_log(path, thermo_rows(30))
    header, data = read_log(path)
    assert header == list(LOG_COLUMNS) and data.shape == (30, len(LOG_COLUMNS))
    open_before = plt.get_fignums()
    plot_log(path, tmp_path / "thermo.png")
    assert_png(tmp_path / "thermo.png")
    assert plt.get_fignums() == open_before


def test_log_without_drift_and_with_one_row(tmp_path):
    write_log(tmp_path / "nvt.log", thermo_rows(5, drift=False))
    plot_log(tmp_path / "nvt.log", tmp_path / "nvt.png")
    assert_png(tmp_path / "nvt.png")
    write_log(tmp_path / "one.log", thermo_rows(1))
    plot_log(tmp_path / "one.log", tmp_path / "one.png")
    assert_png(tmp_path / "one.png")


def test_relaxation_log(tmp_path):
    columns = ("iteration", "fmax_eV_per_A", "n_core", "n_weighted", "n_expensive",
               "n_cheap", "seconds_per_iteration")
    rows = [{"iteration": k, "fmax_eV_per_A": 2.0 * 0.7 ** k, "n_core": 5, "n_weighted": 17,
             "n_expensive": 60, "n_cheap": 64, "seconds_per_iteration": 0.02}
            for k in range(12)]
    write_log(tmp_path / "relax.log", rows, columns)
    plot_log(tmp_path / "relax.log", tmp_path / "relax.png")
    assert_png(tmp_path / "relax.png")


def test_bad_logs(tmp_path):
    empty = tmp_path / "empty.log"
    write_log(empty, [])
    with pytest.raises(ConfigurationError, match="no data rows"):
        plot_log(empty, tmp_path / "x.png")
    with pytest.raises(ConfigurationError, match="not found"):
        plot_log(tmp_path / "missing.log", tmp_path / "x.png")
    (tmp_path / "bare.log").write_text("1 2 3\n")
    with pytest.raises(ConfigurationError, match="no header line"):
        plot_log(tmp_path / "bare.log", tmp_path / "x.png")
    (tmp_path / "short.log").write_text("# step time_fs temperature_K\n1 2\n")
    with pytest.raises(ConfigurationError, match="header names 3 columns but the rows have 2"):
        plot_log(tmp_path / "short.log", tmp_path / "x.png")
    (tmp_path / "text.log").write_text("# step temperature_K\n1 hot\n")
    with pytest.raises(ConfigurationError, match="not a numeric table"):
        plot_log(tmp_path / "text.log", tmp_path / "x.png")
    (tmp_path / "other.log").write_text("# a b\n1 2\n")
    with pytest.raises(ConfigurationError, match="none of the columns"):
        plot_log(tmp_path / "other.log", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
