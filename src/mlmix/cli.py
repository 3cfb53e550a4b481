"""The ``mlmix`` command: one entry point, one module per subcommand."""

from __future__ import annotations

import argparse
import sys

from . import demo, drift, run
from ._lammps_runtime import mpi_world_rank
from .errors import MlmixError
from .fitting import pipeline as fit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlmix", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    fit.add_parser(sub)
    run.add_parser(sub)
    drift.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MlmixError as exc:
        if mpi_world_rank() == 0:  # under mpirun every rank has the same error: say it once
            print(f"mlmix: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
