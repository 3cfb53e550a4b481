"""The ``mlmix`` command: one entry point, one module per subcommand."""

from __future__ import annotations

import argparse
import sys

from . import buffer, demo, drift, run
from ._lammps_runtime import mpi_world_rank
from ._version import __version__
from .errors import Interrupted, MlmixError
from .fitting import pipeline as fit

DESCRIPTION = """\
Molecular dynamics with an expensive machine-learned potential only where it matters
(a defect, a dislocation core, an impurity) and a cheap distilled potential elsewhere,
forces mixed atom by atom. Units: eV, Å, fs, K."""

EPILOG = """\
Start with 'mlmix demo'. Every config key, its default and units: the configuration
reference (docs/, built by 'bash docs/build.sh'; the same tables are in README.md).
Exit status: 0 done, 2 refused or failed (one message), 130 stopped by a signal."""

CONFIG_EPILOG = """\
The config file is checked whole before any work: every mistake in one message. Its
keys, defaults and units: the configuration reference (docs/, or README.md)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; each option's default appended where it has a real one
    (not None or False) that its help does not already state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        if not action.option_strings and action.nargs is None:
            return text  # a positional argument
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlmix", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"mlmix {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.add_parser(sub)
    fit.add_parser(sub)
    run.add_parser(sub)
    drift.add_parser(sub)
    buffer.add_parser(sub)
    for name, p in sub.choices.items():
        p.formatter_class = HelpFormatter
        if p.description is None:  # the one-line help, shown on the command's own page
            p.description = next(a.help for a in sub._choices_actions if a.dest == name)
        if name in ("run", "fit", "buffer") and p.epilog is None:
            p.epilog = CONFIG_EPILOG
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
