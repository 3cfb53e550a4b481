"""The ``mlmix`` command: one entry point, one module per subcommand."""

from __future__ import annotations

import argparse
import sys

from . import buffer, demo, drift, run
from ._lammps_runtime import mpi_world_rank
from .errors import Interrupted, MlmixError
from .fitting import pipeline as fit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlmix", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    fit.add_parser(sub)
    run.add_parser(sub)
    drift.add_parser(sub)
    buffer.add_parser(sub)
    return parser


INTERRUPTED = 130  # the shell's status for a command stopped by SIGINT (128 + 2)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Exit status: 0 done, 2 refused or failed (one message),
    130 stopped by SIGINT/SIGTERM (after a checkpoint, with the command that resumes)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Interrupted as exc:
        _say(f"mlmix: {exc}")
        return INTERRUPTED
    except MlmixError as exc:
        _say(f"mlmix: error: {exc}")
        return 2
    except KeyboardInterrupt:  # outside an MD loop: during set-up, or a fit (its cache stays)
        _say("mlmix: interrupted (Ctrl-C)")
        return INTERRUPTED


def _say(line: str) -> None:
    if mpi_world_rank() == 0:  # under mpirun every rank has the same error: say it once
        print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
