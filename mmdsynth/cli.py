"""The ``mmdsynth`` command line (also ``python -m mmdsynth``).

Each command module registers its subcommands; this module parses and
dispatches. Bad input becomes one line on stderr and exit code 2; tracebacks
are for bugs only.
"""

from __future__ import annotations

import argparse
import sys

from mmdsynth import __version__, annotate_cmd, bench, catalog_cmd, curate_cmd, model_cmd, render_cmd, train_cmd, view_cmd
from mmdsynth.errors import EXIT_BAD_INPUT, UserError
from mmdsynth.mmd import MMDFormatError

__all__ = ["UserError", "build_parser", "main"]

COMMAND_MODULES = (model_cmd, catalog_cmd, curate_cmd, render_cmd, view_cmd, train_cmd, annotate_cmd, bench)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit code 2),
    like every other bad input, with a pointer to ``--help`` instead of the
    usage block. Subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = OneLineParser(
        prog="mmdsynth",
        description="Turn MikuMikuDance (PMX/PMD) models into Talking Head Anime training data.",
    )
    parser.add_argument("--version", action="version", version=f"mmdsynth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (MMDFormatError, UserError) as exc:
        print(f"mmdsynth {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        name = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"mmdsynth {args.command}: error: {name}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"mmdsynth {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
