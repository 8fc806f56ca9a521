"""The ``mmdsynth`` command line (also ``python -m mmdsynth``).

Every command turns bad input into one line on stderr and exit code 2;
tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmdsynth import __version__
from mmdsynth.mmd import MMDFormatError

EXIT_BAD_INPUT = 2


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def _cmd_info(args: argparse.Namespace) -> int:
    from mmdsynth.info import format_summary, model_summary
    from mmdsynth.mmd.loader import load_model

    model = load_model(args.model)
    summary = model_summary(model)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
    else:
        print(format_summary(summary, str(args.model)))
    return 0


def _cmd_example(args: argparse.Namespace) -> int:
    from mmdsynth.mmd.example import write_example

    path = write_example(args.outdir)
    print(path)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from mmdsynth.bench import bench_parse, format_parse_rows

    if args.what == "parse":
        if not args.files:
            raise UserError("bench parse needs at least one model file")
        for f in args.files:
            if not Path(f).is_file():
                raise UserError(f"{f}: no such file")
        print(format_parse_rows(bench_parse([Path(f) for f in args.files], repeat=args.repeat)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="mmdsynth",
        description="Turn MikuMikuDance (PMX/PMD) models into Talking Head Anime training data.",
    )
    parser.add_argument("--version", action="version", version=f"mmdsynth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", help="summarise a PMX/PMD model (counts, bones, morphs, textures, warnings)")
    p.add_argument("model", type=Path, help="a .pmx or .pmd file")
    p.add_argument("--json", action="store_true", help="print a JSON document instead of text")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("example", help="write the bundled example character (PMX + textures) to OUTDIR")
    p.add_argument("outdir", type=Path)
    p.set_defaults(func=_cmd_example)

    p = sub.add_parser("bench", help="speed figures (parse: load_model against pymeshio)")
    p.add_argument("what", choices=["parse"], help="which benchmark")
    p.add_argument("files", nargs="*", help="model files")
    p.add_argument("--repeat", type=int, default=7, help="timed runs per file (median reported)")
    p.set_defaults(func=_cmd_bench)
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
        name = exc.filename if exc.filename is not None else ""
        print(f"mmdsynth {args.command}: error: {name}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"mmdsynth {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
