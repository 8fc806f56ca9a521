"""``mmdsynth view``: a contact sheet (PNG) of a dataset split or of one shard.

    mmdsynth view DIR_OR_SHARD --out sheet.png [--split train] [--n 16] [--start K] [--tile PX]

``DIR_OR_SHARD`` is a dataset folder (the spec's ``output``; ``--split``
picks the split, default ``train`` or the only one there), a split folder
(``OUTPUT/SPLIT``) or one ``shard-NNNNN.h5`` file. The sheet shows ``--n``
examples spread evenly over all of them (first and last included), or ``--n``
consecutive ones from ``--start``. Bad input (no such path, not a shard, no
such split) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "run_view", "ViewError"]

MAX_ROWS = 500


class ViewError(Exception):
    """Bad input for ``mmdsynth view`` (one-line message)."""


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``view`` subcommand to an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "view",
        help="contact sheet (PNG) of a split or shard: rest | morphed | posed with the pose values",
        description="Write a contact sheet of dataset examples: one row per example with the rest, morphed and "
                    "posed images over a checkerboard, and the pose values, model and lights beside them.",
    )
    p.add_argument("path", metavar="DIR_OR_SHARD", type=Path,
                   help="a dataset folder, a split folder (with index.json) or one shard .h5 file")
    p.add_argument("--out", required=True, type=Path, help="the PNG to write (written atomically)")
    p.add_argument("--split", default=None,
                   help="which split of a dataset folder (default: train, or the only split there)")
    p.add_argument("--n", type=int, default=16, help=f"number of examples (rows), 1..{MAX_ROWS}; default 16")
    p.add_argument("--start", type=int, default=None,
                   help="show consecutive examples from this index (default: spread evenly over all)")
    p.add_argument("--tile", type=int, default=None, help="tile size in pixels (default: the image size, at most 256)")
    p.set_defaults(func=run_view)
    return p


def run_view(args: argparse.Namespace) -> int:
    """Run ``mmdsynth view``: prints the PNG's path. Bad input raises
    :class:`~mmdsynth.errors.UserError` (one line, exit 2 via the CLI)."""
    from mmdsynth.datasets.shards import ShardError
    from mmdsynth.errors import UserError

    try:
        out = _view(args)
    except (ViewError, ShardError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(out)
    return 0


def _open(path: Path, split: str | None):
    """(examples, split name, source label) for a dataset folder, split folder or shard file."""
    from mmdsynth.datasets.shards import INDEX_NAME, list_splits, open_shard, open_split

    if not path.exists():
        raise ViewError(f"{path}: no such file or folder")
    if path.is_file():
        if split is not None:
            raise ViewError("--split applies to a dataset folder, not to a shard file")
        examples = open_shard(path)
        return examples, str(examples.attrs.get("split", "?")), path.name
    if (path / INDEX_NAME).is_file() or any(path.glob("shard-*.h5")):
        if split is not None and split != path.name:
            raise ViewError(f"{path} is the split folder of {path.name!r}; --split {split} does not apply")
        examples = open_split(path.parent, path.name)
        return examples, path.name, _shards_label(examples)
    splits = list_splits(path)
    if not splits:
        raise ViewError(f"{path}: no dataset here (no split folders with shards, no index.json, not a shard file)")
    if split is None:
        if "train" in splits:
            split = "train"
        elif len(splits) == 1:
            split = splits[0]
        else:
            raise ViewError(f"{path}: choose a split with --split ({', '.join(splits)})")
    elif split not in splits:
        raise ViewError(f"{path}: no split {split!r} (splits there: {', '.join(splits)})")
    examples = open_split(path, split)
    return examples, split, _shards_label(examples)


def _shards_label(examples) -> str:
    files = examples.files
    return files[0].name if len(files) == 1 else f"{len(files)} shards"


def _pick(total: int, n: int, start: int | None) -> list[int]:
    if start is None:
        import numpy as np

        return sorted({int(round(v)) for v in np.linspace(0, total - 1, min(n, total))})
    if not 0 <= start < total:
        raise ViewError(f"--start {start} is outside the {total} examples (0..{total - 1})")
    return list(range(start, min(start + n, total)))


def _view(args: argparse.Namespace) -> Path:
    from mmdsynth import __version__
    from mmdsynth.datasets.contact_sheet import contact_sheet, save_sheet

    if not 1 <= args.n <= MAX_ROWS:
        raise ViewError(f"--n must be 1..{MAX_ROWS}, got {args.n}")
    if args.tile is not None and not 96 <= args.tile <= 1024:
        raise ViewError(f"--tile must be 96..1024 pixels, got {args.tile}")
    if args.out.exists() and args.out.is_dir():
        raise ViewError(f"--out {args.out} is a folder; give a .png file name")
    examples, split, source = _open(args.path, args.split)
    with examples:
        total = len(examples)
        if total == 0:
            raise ViewError(f"{args.path}: the split has no examples")
        rows = [examples[i] for i in _pick(total, args.n, args.start)]
        attrs = examples.attrs
        names = list(attrs.get("parameter_names", []))
        ranges = attrs.get("parameter_ranges")
        ranges = [tuple(r) for r in ranges] if ranges is not None else None
    schema = attrs.get("schema", "?")
    spread = "evenly spread" if args.start is None else f"from #{rows[0]['index']}"
    title = f"split {split}  ·  {source}  ·  schema {schema}  ·  {len(rows)} of {total} examples ({spread})"
    h, w = rows[0]["posed"].shape[:2]
    sub = [f"preset {attrs.get('preset', '?')} {w}x{h}"]
    if "max_angle_deg" in attrs:
        sub.append(f"max angle {float(attrs['max_angle_deg']):g}°")
    if "seed" in attrs:
        sub.append(f"seed {int(attrs['seed'])}")
    sub.append(f"renderer {attrs.get('renderer', '?')}")
    sub.append(f"written by mmdsynth {attrs.get('package_version', '?')} (viewer {__version__})")
    sub.append(str(args.path))
    sheet = contact_sheet(rows, names, ranges, title=title, subtitle="  ·  ".join(sub), tile=args.tile)
    return save_sheet(sheet, args.out)
