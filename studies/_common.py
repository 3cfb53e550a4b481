"""What every case-study script shares: its command line and where its results go."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import mlmix

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "studies" / "results"


def parse_args(doc: str, argv=None, seed: bool = True, extra=None) -> argparse.Namespace:
    """``--quick`` (smoke-sized, < 40 s), ``--out DIR``, if ``seed``, ``--seed N``, and what
    ``extra(parser)`` adds."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-sized run (< 40 s)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    if seed:
        parser.add_argument("--seed", type=int, default=1)
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def header(study: str, quick: bool) -> dict:
    """The first keys of every result: which study, which mlmix, full or quick."""
    return {"study": study, "mlmix_version": mlmix.__version__, "quick": quick}


def save(result: dict, out: Path, name: str) -> Path:
    """Write ``result`` as ``out/name.json``; returns the path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_name(f".{path.name}.tmp")  # replaced whole: never a half-written file
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)
    return path


def expensive_properties(fit: str) -> dict:
    """The expensive potential's relaxed bulk properties from ``examples/<fit>/report.json``
    (``lattice_parameter_A``, ``cubic`` elastic constants in GPa), as ``mlmix fit``
    computed them when it distilled the cheap potential."""
    report = ROOT / "examples" / fit / "report.json"
    return json.loads(report.read_text())["models"]["expensive"]


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as a 120-dpi PNG and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    plt.close(fig)
