"""Checkpoints: what they hold, written atomically, read back safely.

A checkpoint is a ``torch.save`` dict (loadable with ``weights_only=True``):

=================== ==========================================================
key                 value
=================== ==========================================================
``format``          ``"mmdsynth-train-checkpoint"``; ``version``: 1
``network``         ``"morpher"`` | ``"rotator"`` | ``"combiner"``
``model_config``    :class:`~mmdsynth.train.models.ModelConfig` as a dict
``model``           the network's state dict (never DDP-wrapped)
``optimizer``       Adam state dict; ``scheduler``: LambdaLR state dict;
                    ``scaler``: GradScaler state dict or None
``step``            optimisation steps done; ``examples``: examples seen (all processes)
``rng``             ``torch`` (CPU generator state), ``cuda`` (list, may be empty),
                    ``numpy`` (legacy global state as a dict), ``python`` (``random.getstate()``),
                    all of the process that saved (rank 0)
``config``          :meth:`TrainConfig.to_dict` of the run
``pose_names``      the pose parameters the network takes (e.g. left_eye, right_eye, mouth)
``parameter_names`` / ``parameter_ranges``: the dataset's whole pose schema
``image_size``      [H, W] of the training images
``world_size``      processes that trained it
``metrics``         the last validation metrics ({output: {metric: value}}) or {}
``rotator``         combiner only: the frozen rotator it was trained on
                    (``{"network", "model_config", "model", "pose_names"}``)
``versions``        mmdsynth and torch versions
=================== ==========================================================

Writes go to a temporary file in the target folder, are fsynced and renamed
into place (:func:`save_atomic`), so a crash never leaves a truncated
checkpoint under a final name.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["FORMAT", "CheckpointError", "save_atomic", "load_checkpoint", "rng_state", "set_rng_state", "link_atomic"]

FORMAT = "mmdsynth-train-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A missing, unreadable or foreign checkpoint file (one-line message)."""


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through a temporary file + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def link_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` the same file as ``src`` (hard link, else a copy), atomically replacing ``dst``."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            import shutil

            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint (``weights_only=True``: no code runs). Raises
    :class:`CheckpointError` for a missing, unreadable or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input
        raise CheckpointError(f"{path}: not a readable mmdsynth checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mmdsynth training checkpoint")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')!r}, this mmdsynth reads {VERSION}")
    return ckpt


def rng_state() -> dict[str, Any]:
    """This process's RNG states, in types ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
