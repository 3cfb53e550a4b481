"""Shared fixtures and helpers for the mlmix tests."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

EMT_CUTOFF = 5.8768  # Å, range of ASE's EMT for Cu (its cutoff including the smooth tail)
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_data(name: str) -> Path:
    """Path of a file in ../shared/data/ml-mix, or skip the test if it is absent."""
    path = SHARED / "data" / "ml-mix" / name
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


def brute_force_distances(positions, cell, pbc, radius_hint: float) -> np.ndarray:
    """(N, N) minimum-image distances by trying every periodic image that can matter."""
    pbc = np.broadcast_to(np.asarray(pbc, bool), (3,))
    cell = np.asarray(cell, float)
    volume = abs(np.linalg.det(cell)) if pbc.any() else 1.0
    ranges = []
    for k in range(3):
        if not pbc[k]:
            ranges.append([0])
            continue
        width = volume / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3]))
        m = int(np.ceil(radius_hint / width)) + 1
        ranges.append(range(-m, m + 1))
    diff = positions[None, :, :] - positions[:, None, :]
    best = np.full(diff.shape[:2], np.inf)
    for shift in itertools.product(*ranges):
        d = np.linalg.norm(diff + np.asarray(shift) @ cell, axis=-1)
        best = np.minimum(best, d)
    return best


def si_vacancy(repeat=3, rattle=0.05, seed=1):
    """A rattled Si vacancy supercell (a = 5.431 Å) and the vacancy's neighbours."""
    from mlmix.structures import vacancy_supercell

    atoms, seeds = vacancy_supercell("Si", "diamond", 5.431, repeat, 3.0)
    atoms.rattle(rattle, seed=seed)
    return atoms, seeds


def random_triclinic(rng, n: int, pbc=True):
    """A random, well-conditioned triclinic cell of volume ~12 Å^3 per atom with n atoms."""
    from ase import Atoms

    cell = np.diag(rng.uniform(0.8, 1.2, 3)) + rng.uniform(-0.35, 0.35, (3, 3))
    cell *= (12.0 * n / abs(np.linalg.det(cell))) ** (1 / 3)
    frac = rng.random((n, 3))
    return Atoms("Cu" * n, scaled_positions=frac, cell=cell, pbc=pbc)


def energies_and_forces(pot, frames):
    """Total energies (eV, sum of per-atom energies) and stacked forces (eV/Å) of
    ``pot`` on every atom of each frame: the reference a design matrix must match."""
    energies, forces = [], []
    for at in frames:
        ev = pot.evaluate(at)
        energies.append(ev.energies.sum())
        forces.append(ev.forces.ravel())
    return np.array(energies), np.concatenate(forces)


@pytest.fixture(scope="module")
def sw_tersoff_pair():
    """Si: Stillinger-Weber as the expensive potential, Tersoff as the cheap one (both
    shipped with LAMMPS, both fast); closed after the module."""
    from mlmix.potentials.lammps import LammpsPotential

    expensive = LammpsPotential.sw("Si.sw", ["Si"])
    cheap = LammpsPotential.tersoff("Si.tersoff", ["Si"])
    yield expensive, cheap
    expensive.close()
    cheap.close()


def emt_without_energies():
    """ASE's EMT, minus per-atom energies: a calculator that cannot give them (for the
    ``backend = "ase"`` factory tests, as ``conftest:emt_without_energies``)."""
    from ase.calculators.emt import EMT

    class _EMTNoEnergies(EMT):
        implemented_properties = ["energy", "free_energy", "forces"]

    return _EMTNoEnergies()


def nve_totals(atoms, calc, temperature_K, blocks, every=1, seed=1, dt_fs=1.0):
    """``(blocks,)`` E + K (eV) of velocity-Verlet NVE with ``calc``, from Maxwell-
    Boltzmann velocities at ``temperature_K``, after each block of ``every`` steps.
    ``atoms`` is moved."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K,
                                 rng=np.random.default_rng(seed))
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, dt_fs * units.fs)
    totals = []
    for _ in range(blocks):
        dyn.run(every)
        totals.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
    return np.array(totals)
