"""``mmdsynth train`` and ``mmdsynth infer`` (and the ``mmdsynth bench train`` hook).

    mmdsynth train CONFIG.toml [--resume [CKPT]]
    mmdsynth train --eval CKPT [--split test] [--data DIR] [--batch-size N] [--workers N] [--limit N] [--json]
    mmdsynth infer MORPHER.pt IMAGE.png --out OUT.png [--pose "left_eye=1,mouth=0.5,head_y=0.8"]
                   [--combiner COMBINER.pt] [--rotator ROTATOR.pt]
    torchrun --nproc_per_node N -m mmdsynth.train CONFIG.toml [--resume]   # several processes / machines

The configuration is documented key by key in ``train/config.py``
(``examples/train-morpher-tiny.toml`` is a commented example). This module
imports torch only inside the commands, so the CLI works without it; a
missing torch is a one-line error. Bad input raises
:class:`~mmdsynth.errors.UserError` (one line on stderr, exit code 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmdsynth.errors import UserError

__all__ = ["register", "add_train_arguments", "run_train", "run_infer", "bench_train"]

TORCH_HINT = ("needs torch: install torch==2.13.0 (CPU) or a CUDA build first, then pip install 'mmdsynth[train]'")


def _need_torch(what: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError(f"{what} {TORCH_HINT}") from None


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``train`` arguments (shared with ``python -m mmdsynth.train``)."""
    p.add_argument("config", nargs="?", type=Path, metavar="CONFIG.toml",
                   help="the training configuration (keys: see train/config.py)")
    p.add_argument("--resume", nargs="?", const="last", default=None, metavar="CKPT",
                   help="continue a run: from CKPT, or (no value) from the run folder's last.pt when it exists "
                        "(starting afresh when it does not); without CONFIG the checkpoint's own config is used")
    p.add_argument("--eval", type=Path, default=None, metavar="CKPT",
                   help="print the metrics of checkpoint CKPT on --split instead of training")
    p.add_argument("--split", default="test", help="--eval: the split (default test)")
    p.add_argument("--data", type=Path, default=None, help="--eval: dataset folder (default: the one it was trained on)")
    p.add_argument("--batch-size", type=int, default=8, help="--eval: batch size (default 8)")
    p.add_argument("--workers", type=int, default=None, help="--eval: DataLoader workers (default: one per core)")
    p.add_argument("--limit", type=int, default=None, help="--eval: only the first N examples")
    p.add_argument("--device", default="auto", help="--eval: auto (default), cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="--eval: print the metrics as JSON")
    p.set_defaults(func=run_train)
    return p


def register(subparsers) -> None:
    """Add the ``train`` and ``infer`` subcommands to an argparse subparsers object."""
    p = subparsers.add_parser(
        "train", help="train a THA1 network (face morpher, two-algorithm face rotator, combiner) on the shards",
        description="Train a THA1 network on rendered shards (one process, or several under torchrun), or print "
                    "a checkpoint's metrics on a split with --eval.")
    add_train_arguments(p)
    q = subparsers.add_parser(
        "infer", help="apply a trained face morpher (and rotator + combiner) to a 256x256 RGBA image",
        description="Pose a character image with trained networks: the morpher changes eyes and mouth; with "
                    "--combiner the rotator and the combiner turn the head. The image must follow THA1's input "
                    "rules: 256x256, an alpha channel, a transparent background, the head in the centre box.")
    q.add_argument("checkpoint", type=Path, metavar="MORPHER.pt", help="a face morpher checkpoint")
    q.add_argument("image", type=Path, metavar="IMAGE.png", help="the input image (RGBA, 256x256)")
    q.add_argument("--pose", default="", help='pose values, e.g. "left_eye=1,mouth=0.5,head_y=0.8" (others 0)')
    q.add_argument("--combiner", type=Path, default=None, help="a combiner checkpoint (carries its rotator)")
    q.add_argument("--rotator", type=Path, default=None, help="a rotator checkpoint replacing the combiner's own")
    q.add_argument("--out", type=Path, required=True, help="the PNG to write (RGBA; written atomically)")
    q.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    q.set_defaults(func=run_infer)


def _user_errors():
    """The exception types that are the user's input, not a bug."""
    from mmdsynth.datasets.shards import ShardError
    from mmdsynth.train.checkpoint import CheckpointError
    from mmdsynth.train.config import ConfigError
    from mmdsynth.train.infer import InputImageError

    return (ConfigError, CheckpointError, ShardError, InputImageError)


def run_train(args: argparse.Namespace) -> int:
    """``mmdsynth train``: train, resume or evaluate (see the module docstring)."""
    _need_torch("mmdsynth train")
    errors = _user_errors()
    try:
        if args.eval is not None:
            return _evaluate(args)
        return _train(args)
    except errors as exc:
        raise UserError(str(exc)) from None


def _evaluate(args: argparse.Namespace) -> int:
    from mmdsynth.train.metrics import METRICS
    from mmdsynth.train.trainer import evaluate_checkpoint

    if args.config is not None or args.resume is not None:
        raise UserError("--eval takes a checkpoint only (no CONFIG, no --resume)")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    result = evaluate_checkpoint(args.eval, args.split, args.data, args.batch_size, args.workers, args.limit,
                                 args.device)
    if args.json:
        print(json.dumps({"checkpoint": str(args.eval), "split": args.split, "metrics": result}, indent=2))
        return 0
    print(f"{args.eval} on split {args.split}")
    print(f"{'output':10s} {'examples':>8s} {'loss':>9s} " + " ".join(f"{m:>9s}" for m in METRICS))
    for name, m in result.items():
        print(f"{name:10s} {m['examples']:8d} {m['loss']:9.5f} " + " ".join(f"{m[k]:9.5f}" for k in METRICS))
    return 0


def _train(args: argparse.Namespace) -> int:
    from mmdsynth.train.checkpoint import load_checkpoint
    from mmdsynth.train.config import load_config, parse_config
    from mmdsynth.train.trainer import Trainer

    resume = None
    if args.config is None:
        if args.resume in (None, "last"):
            raise UserError("give a CONFIG.toml (or --resume CKPT to continue a run with its own config)")
        ckpt = load_checkpoint(args.resume)
        cfg = parse_config(ckpt["config"])
        resume = Path(args.resume)
        del ckpt
    else:
        cfg = load_config(args.config)
        last = Path(cfg.out) / "last.pt"
        if args.resume == "last":
            resume = last if last.is_file() else None
            if resume is None:
                print(f"mmdsynth train: no {last} yet; starting afresh", file=sys.stderr)
        elif args.resume is not None:
            resume = Path(args.resume)
        elif last.is_file():
            raise UserError(f"{cfg.out} already holds a run ({last.name}); continue it with --resume, "
                            "or choose another out")
    trainer = Trainer(cfg, resume=resume, log=lambda line: print(line, file=sys.stderr, flush=True))
    try:
        trainer.fit()
    finally:
        trainer.close()
    return 0


def run_infer(args: argparse.Namespace) -> int:
    """``mmdsynth infer``: prints the output PNG's path."""
    _need_torch("mmdsynth infer")
    errors = _user_errors()
    try:
        return _infer(args)
    except errors as exc:
        raise UserError(str(exc)) from None


def _infer(args: argparse.Namespace) -> int:
    import os

    from PIL import Image

    from mmdsynth.train.infer import Poser, load_input_image, parse_pose

    if args.out.exists() and args.out.is_dir():
        raise UserError(f"--out {args.out} is a folder; give a .png file name")
    try:
        poser = Poser(args.checkpoint, args.combiner, args.rotator, device=args.device)
    except RuntimeError as exc:  # e.g. an unavailable CUDA device
        raise UserError(f"cannot load the networks on {args.device}: {' '.join(str(exc).split())[:200]}") from None
    image = load_input_image(args.image, poser.size)
    try:
        pose = parse_pose(args.pose, poser.names, poser.ranges)
        result = poser(image, pose)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(result, "RGBA").save(tmp, format="PNG")
        os.replace(tmp, args.out)
    finally:
        tmp.unlink(missing_ok=True)
    print(args.out)
    return 0


def bench_train(args: argparse.Namespace) -> int:
    """``mmdsynth bench train [DATASET_DIR] [--workers N] [--examples N]``.

    Data loading rate (default workers unless ``--workers``) on DATASET_DIR's
    ``train`` split, or on a freshly rendered ``--examples``-example dataset of
    the example character; then the training step time of the THA1-size face
    morpher on the CPU (batch 4) and on CUDA when available (batch 25)."""
    _need_torch("mmdsynth bench train")
    from mmdsynth.datasets.shards import ShardError
    from mmdsynth.train.bench import format_bench, run_bench

    files = list(getattr(args, "files", []) or [])
    if len(files) > 1:
        raise UserError("bench train takes at most one dataset folder")
    data = Path(files[0]) if files else None
    if data is not None and not data.is_dir():
        raise UserError(f"{data}: no such dataset folder")
    examples = getattr(args, "examples", 400) or 400
    try:
        result = run_bench(data, examples=examples, workers=getattr(args, "workers", None))
    except ShardError as exc:
        raise UserError(str(exc)) from None
    print(format_bench(result))
    return 0
