"""The Si distillation pipeline end to end, and what the cheap model saves (issue 3).

Runs ``examples/fit-si.toml`` (expensive: Si_Zuo_JPCA2020 quadratic SNAP; cheap: the
linear SNAP it distils) from an empty cache, timing the whole pipeline on this 2-core
machine (target: under 10 minutes), then times native LAMMPS ``run N`` on a 4,096-atom
diamond cell with the expensive potential and with the fitted constrained model, side
by side, for the cost per atom-step.

Run: ``python benchmarks/fit_pipeline.py``; writes ``benchmarks/fit_pipeline.json``.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

from _common import native_lammps_seconds_per_step

from mlmix.config import load_toml
from mlmix.fitting import pipeline
from mlmix.potentials import LammpsPotential
from mlmix.potentials.factory import make_potential

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fit-si.toml"


def main() -> None:
    raw = load_toml(EXAMPLE)
    with tempfile.TemporaryDirectory() as tmp:
        raw["output"]["directory"] = tmp + "/fit"
        cfg = pipeline.parse_config(raw, EXAMPLE.parent)
        t = time.perf_counter()
        report = pipeline.run(cfg, progress=None)
        wall = time.perf_counter() - t
        cheap = LammpsPotential.snap(cfg.output / f"{cfg.stem}.snapcoeff", ["Si"],
                                     param=cfg.output / f"{cfg.stem}.snapparam")
        expensive = make_potential(cfg.expensive)
        a = report["models"]["expensive"]["lattice_parameter_A"]
        t_exp = native_lammps_seconds_per_step(expensive, "diamond", a, 8, steps=3)
        t_cheap = native_lammps_seconds_per_step(cheap, "diamond", a, 8, steps=20)
    n_atoms = 8**3 * 8 - 1
    models = report["models"]
    result = {
        "machine": platform.platform(),
        "pipeline_wall_seconds": wall,
        "target_seconds": 600,
        "us_per_atom_step": {"expensive": 1e6 * t_exp / n_atoms, "cheap": 1e6 * t_cheap / n_atoms},
        "cost_ratio_expensive_over_cheap": t_exp / t_cheap,
        "lattice_parameter_A": {k: m["lattice_parameter_A"] for k, m in models.items()},
        "cubic_GPa": {k: m["cubic"] for k, m in models.items()},
        "fit": report["fit"],
    }
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
