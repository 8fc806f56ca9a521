"""``python -m mmdsynth.train CONFIG.toml [--resume [CKPT]]``: the ``mmdsynth train``
command as a module, for ``torchrun --nproc_per_node N -m mmdsynth.train ...``."""

import argparse
import sys

from mmdsynth.errors import EXIT_BAD_INPUT, UserError
from mmdsynth.train_cmd import add_train_arguments


def main(argv=None) -> int:
    parser = add_train_arguments(argparse.ArgumentParser(prog="python -m mmdsynth.train"))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"mmdsynth train: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
