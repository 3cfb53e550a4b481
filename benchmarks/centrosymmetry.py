"""The centrosymmetry classifier (issue 13, item 5): mlmix's vectorised matching form
beside LAMMPS ``compute centro/atom`` and OVITO (when installed), on the same cells.

Cells: bcc W, 8,192 atoms (16^3 cubic cells), n = 8, r_cut 3.6 Å; fcc Cu, 8,788 atoms
(13^3), n = 12, r_cut 3.0 Å; each perfect and thermalised (Gaussian displacements,
sigma 0.05 Å, seed 0) with a vacancy at atom 0.

Measured, in one run: the first call in the process (it includes the one-time start of
the neighbour search library) and the median of ``--repeats`` later calls, wall and CPU;
LAMMPS's compute alone (``run 0`` with the compute, minus ``run 0`` without it); OVITO's
``CentroSymmetryModifier`` in its matching mode (the same definition as mlmix's) if the
``ovito`` module imports. Agreement: max |P_mlmix - P_brute| against a plain per-atom
loop over every pairing (recursive) on 300 atoms, and against OVITO's matching mode on
every atom with n neighbours within r_cut (OVITO takes the n nearest at any distance);
LAMMPS sums the n/2 smallest pair terms (a different definition), so its difference is
shown, not required to vanish.

Run: ``python benchmarks/centrosymmetry.py``; writes ``benchmarks/centrosymmetry.json``.
About a minute.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk

from mlmix._lammps_runtime import new_lammps
from mlmix.potentials.lammps import lammps_frame
from mlmix.seeds import centrosymmetry, neighbour_vectors

HERE = Path(__file__).resolve().parent

CASES = {
    "bcc_W_8192": {"element": "W", "crystal": "bcc", "a": 3.165, "repeat": 16,
                   "n": 8, "r_cut": 3.6},
    "fcc_Cu_8788": {"element": "Cu", "crystal": "fcc", "a": 3.615, "repeat": 13,
                    "n": 12, "r_cut": 3.0},
}


def cell(case: dict, thermal: bool) -> Atoms:
    atoms = bulk(case["element"], case["crystal"], a=case["a"], cubic=True)
    atoms = atoms.repeat(case["repeat"])
    if thermal:
        rng = np.random.default_rng(0)
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        del atoms[0]
    return atoms


def timed(fn, repeats: int) -> dict:
    """First call and median of later calls, wall and CPU seconds."""
    out = {}
    walls, cpus = [], []
    for k in range(repeats + 1):
        w, c = time.perf_counter(), time.process_time()
        value = fn()
        w, c = time.perf_counter() - w, time.process_time() - c
        if k == 0:
            out["first_call_seconds"] = w
        else:
            walls.append(w)
            cpus.append(c)
    out["seconds"] = statistics.median(walls)
    out["cpu_seconds"] = statistics.median(cpus)
    return out | {"value": value}


def brute_force(atoms: Atoms, n: int, r_cut: float, rows: np.ndarray) -> np.ndarray:
    """P_i by trying every pairing of the n nearest neighbours, one atom at a time."""
    vec = neighbour_vectors(atoms, n, r_cut)

    def pairings(items):
        if not items:
            yield []
            return
        first, rest = items[0], items[1:]
        for k, other in enumerate(rest):
            for tail in pairings(rest[:k] + rest[k + 1:]):
                yield [(first, other), *tail]

    out = np.empty(len(rows))
    for m, i in enumerate(rows):
        v = vec[i]
        out[m] = min(sum(float(np.dot(v[a] + v[b], v[a] + v[b])) for a, b in p)
                     for p in pairings(list(range(n))))
    return out


class LammpsCentro:
    """``compute centro/atom n`` on a LAMMPS copy of the cell (no pair style forces)."""

    def __init__(self, atoms: Atoms, n: int, r_cut: float):
        fr = lammps_frame(atoms.cell.array, atoms.pbc, atoms.positions)
        self.lmp = new_lammps()
        b, o = fr.box, fr.origin
        hi = o + np.diag(b)
        for cmd in ["units metal", "atom_style atomic", "atom_modify map yes",
                    "boundary p p p",
                    "region box block " + " ".join(f"{o[k]} {hi[k]}" for k in range(3)),
                    "create_box 1 box", "mass 1 1.0",
                    f"pair_style zero {r_cut}", "pair_coeff * *",
                    "neighbor 0.0 bin"]:
            self.lmp.command(cmd)
        x = fr.to_lammps(atoms.positions)
        self.lmp.create_atoms(len(atoms), np.arange(1, len(atoms) + 1),
                              np.ones(len(atoms), dtype=np.int64), x.ravel())
        self.lmp.command("run 0 post no")
        self.n = n

    def run0(self, with_compute: bool) -> np.ndarray | None:
        if with_compute:
            self.lmp.command(f"compute cs all centro/atom {self.n}")
            self.lmp.command("run 0 post no")
            nlocal = int(self.lmp.extract_setting("nlocal"))
            tag = np.asarray(self.lmp.numpy.extract_atom("id")[:nlocal])
            values = np.array(self.lmp.numpy.extract_compute("cs", 1, 1)[:nlocal])
            self.lmp.command("uncompute cs")
            out = np.empty(len(tag))
            out[tag - 1] = values
            return out
        self.lmp.command("run 0 post no")
        return None

    def close(self) -> None:
        self.lmp.close()


def ovito_centro(atoms: Atoms, n: int):
    """OVITO's matching-mode centrosymmetry as a function, or None without ovito."""
    try:
        from ovito.io.ase import ase_to_ovito
        from ovito.modifiers import CentroSymmetryModifier
        from ovito.pipeline import Pipeline, StaticSource
    except ImportError:
        return None
    pipeline = Pipeline(source=StaticSource(data=ase_to_ovito(atoms)))
    pipeline.modifiers.append(CentroSymmetryModifier(
        num_neighbors=n, mode=CentroSymmetryModifier.Mode.Matching))

    def compute() -> np.ndarray:
        pipeline.source.data = ase_to_ovito(atoms)  # force a re-evaluation
        return np.array(pipeline.compute().particles["Centrosymmetry"])

    return compute


def measure(repeats: int) -> dict:
    rows = {}
    for name, case in CASES.items():
        for thermal in (False, True):
            atoms = cell(case, thermal)
            n, r_cut = case["n"], case["r_cut"]
            q = centrosymmetry(n, r_cut)
            mine = timed(lambda q=q, atoms=atoms: q(atoms), repeats)
            p = mine.pop("value")
            sample = np.random.default_rng(1).choice(len(atoms), 300, replace=False)
            brute = brute_force(atoms, n, r_cut, sample)
            lmp = LammpsCentro(atoms, n, r_cut)
            base = timed(lambda lmp=lmp: lmp.run0(False), repeats)
            with_c = timed(lambda lmp=lmp: lmp.run0(True), repeats)
            p_lammps = with_c.pop("value")
            lmp.close()
            row = {
                "atoms": len(atoms), "n_neighbours": n, "r_cut_A": r_cut,
                "thermalised_with_vacancy": thermal,
                "mlmix": mine,
                "lammps_centro_atom": {
                    "seconds": with_c["seconds"] - base["seconds"],
                    "cpu_seconds": with_c["cpu_seconds"] - base["cpu_seconds"],
                    "run0_with_compute_seconds": with_c["seconds"]},
                "max_abs_vs_brute_force_A2": float(np.abs(p[sample] - brute).max()),
                "max_abs_vs_lammps_A2": float(np.abs(p - p_lammps).max()),
                "max_P_A2": float(p.max()),
            }
            compute = ovito_centro(atoms, n)
            if compute is not None:
                ov = timed(compute, repeats)
                p_ovito = ov.pop("value")
                row["ovito_matching"] = ov
                # OVITO takes the n nearest at any distance; mlmix pads a missing one
                # (fewer than n within r_cut) with a zero vector: compare full shells.
                full = np.any(neighbour_vectors(atoms, n, r_cut)[:, -1] != 0.0, axis=1)
                row["max_abs_vs_ovito_A2"] = float(np.abs(p - p_ovito)[full].max())
                row["atoms_with_fewer_than_n_within_r_cut"] = int((~full).sum())
                row["ratio_mlmix_to_ovito"] = mine["seconds"] / ov["seconds"]
            row["ratio_mlmix_to_lammps"] = mine["seconds"] / row["lammps_centro_atom"]["seconds"]
            key = f"{name}_{'thermal' if thermal else 'perfect'}"
            rows[key] = row
            print(f"{key}: mlmix {mine['seconds'] * 1e3:.1f} ms (first call "
                  f"{mine['first_call_seconds'] * 1e3:.0f} ms), LAMMPS "
                  f"{row['lammps_centro_atom']['seconds'] * 1e3:.1f} ms"
                  + (f", OVITO {row['ovito_matching']['seconds'] * 1e3:.1f} ms"
                     if "ovito_matching" in row else "")
                  + f"; max |mlmix - brute| {row['max_abs_vs_brute_force_A2']:.1e} Å^2",
                  flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(HERE / "centrosymmetry.json"))
    args = ap.parse_args()
    result = {"command": "python benchmarks/centrosymmetry.py", "machine": platform.node(),
              "python": platform.python_version(), "repeats": args.repeats,
              "rows": measure(args.repeats)}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
