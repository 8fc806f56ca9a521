"""The training configuration (``mmdsynth train CONFIG.toml``), key by key.

Relative paths are relative to the TOML file's folder. Unknown keys are
errors (a typo must not silently train something else). Example:
``examples/train-morpher-tiny.toml``.

Top level
---------
``network``  ``"morpher"`` | ``"rotator"`` | ``"combiner"`` (required). THA1
             section 6: the face morpher learns rest -> morphed from the pose's
             ``left_eye, right_eye, mouth``; the two-algorithm face rotator
             learns morphed -> posed from ``head_x, head_y, neck_z``; the
             combiner learns the same from the outputs of a trained rotator
             (``train.rotator``), which stays frozen.
``out``      run folder (required): ``checkpoints/step-NNNNNNN.pt``, ``last.pt``,
             ``log.csv``, ``grids/step-NNNNNNN.png``, ``config.json``, TensorBoard events.
``seed``     0; initialises the weights and orders the data (same seed, same run).
``device``   ``"auto"`` (CUDA when available) | ``"cpu"`` | ``"cuda"`` | ``"cuda:N"``.
             Under torchrun every process uses ``cuda:LOCAL_RANK`` (or the CPU with gloo).

``[data]``
----------
``dir``            the dataset folder, the render spec's ``output`` (required).
``train``          train split name (``"train"``).
``val``            validation split name (``"val"``; ``""``: no validation).
``batch_size``     examples per step **per process** (8; THA1 used 25 for the morpher and rotator, 20 for the combiner).
``workers``        DataLoader processes per training process (default: one per core; 0: read in the main process).
``train_examples`` use only the first N train examples (0: all).
``val_examples``   validate on the first N val examples (0: all).

``[model]``
-----------
``preset``  ``"tha1"`` (the paper's sizes) | ``"tiny"`` (tests, CPU smoke runs).
``channels``, ``bottleneck_size``, ``blocks``: override the preset
(:class:`mmdsynth.train.models.ModelConfig`).

``[train]``
-----------
``steps`` or ``epochs`` (exactly one): length of the run; an epoch is
``len(train split) // (batch_size * processes)`` steps.
``lr`` 1e-4, ``betas`` [0.5, 0.999], ``weight_decay`` 0: Adam (THA1 after Pumarola et al.).
``scheduler`` ``"constant"`` | ``"cosine"`` (to ``lr * lr_min_ratio`` at the last step) |
``"step"`` (x ``gamma`` every ``step_size`` steps); ``warmup_steps`` 0 (linear warm-up).
``lr_min_ratio`` 0.0, ``step_size`` 0 (required by "step"), ``gamma`` 0.1.
``grad_clip``  0 (off) or the max global gradient norm.
``amp``        true: mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); ignored on the CPU.
``l1_weight``  1.0: weight of the L1 loss (mean |output - target| in [-1, 1] units;
               the rotator sums it over its two outputs).
``perceptual_weights`` ``""``: a local VGG16 state dict (torchvision layout,
               e.g. ``vgg16-397923af.pth``) enables the perceptual term; nothing is downloaded.
``perceptual_weight`` 1.0: its weight (:class:`mmdsynth.train.metrics.Perceptual`).
``rotator``    combiner only (required there): a trained rotator checkpoint.

``[log]``
---------
``log_every`` 10: train loss rows in ``log.csv`` (mean over the window and the processes).
``val_every`` 500: validation (metrics rows, a PNG grid) every N steps and at the end (0: only at the end).
``checkpoint_every`` 500: checkpoint every N steps and at the end (0: only at the end).
``keep_checkpoints`` 3: step checkpoints kept (the newest; 0 keeps all; ``last.pt`` always).
``grid_examples`` 8: val examples in the PNG grid (0: no grid).
``tensorboard`` true: also write TensorBoard events when the ``tensorboard`` package is installed.
``progress`` true: a tqdm bar with the loss and examples/s.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "TrainConfig", "DataConfig", "TrainSettings", "LogConfig", "load_config", "parse_config"]


class ConfigError(ValueError):
    """A bad training configuration (one-line message naming the key)."""


@dataclass
class DataConfig:
    dir: str = ""
    train: str = "train"
    val: str = "val"
    batch_size: int = 8
    workers: int | None = None
    train_examples: int = 0
    val_examples: int = 0


@dataclass
class TrainSettings:
    steps: int = 0
    epochs: int = 0
    lr: float = 1e-4
    betas: list = field(default_factory=lambda: [0.5, 0.999])
    weight_decay: float = 0.0
    scheduler: str = "constant"
    warmup_steps: int = 0
    lr_min_ratio: float = 0.0
    step_size: int = 0
    gamma: float = 0.1
    grad_clip: float = 0.0
    amp: bool = True
    l1_weight: float = 1.0
    perceptual_weights: str = ""
    perceptual_weight: float = 1.0
    rotator: str = ""


@dataclass
class LogConfig:
    log_every: int = 10
    val_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    grid_examples: int = 8
    tensorboard: bool = True
    progress: bool = True


@dataclass
class TrainConfig:
    """A parsed, checked configuration (module docstring); paths are absolute."""

    network: str
    out: str
    data: DataConfig
    model: dict[str, Any]
    train: TrainSettings
    log: LogConfig
    seed: int = 0
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what checkpoints store); :func:`parse_config` reads it back."""
        d = asdict(self)
        d["data"] = {k: v for k, v in d["data"].items() if v is not None}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


NETWORKS = ("morpher", "rotator", "combiner")
SCHEDULERS = ("constant", "cosine", "step")


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    bad = sorted(set(table) - allowed)
    if bad:
        raise ConfigError(f"unknown key{'s' if len(bad) > 1 else ''} {', '.join(bad)} in {where} "
                          f"(known: {', '.join(sorted(allowed))})")


def _typed(value: Any, kind: type, key: str) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value


def _fill(cls, table: dict, where: str):
    obj = cls()
    names = {f.name: f for f in fields(cls)}
    _check_keys(table, set(names), f"[{where}]")
    hints = {f.name: type(getattr(obj, f.name)) for f in fields(cls)}
    hints.update({"workers": int})
    for key, value in table.items():
        kind = hints[key]
        if key == "betas":
            if (not isinstance(value, list) or len(value) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise ConfigError(f"{where}.betas must be two numbers, got {value!r}")
            value = [float(v) for v in value]
        else:
            value = _typed(value, kind, f"{where}.{key}")
        setattr(obj, key, value)
    return obj


def _path(value: str, base: Path) -> str:
    return str((base / os.path.expanduser(value)).resolve()) if value else ""


def parse_config(raw: dict[str, Any], base: str | os.PathLike = ".") -> TrainConfig:
    """Check a config dict (parsed TOML, or :meth:`TrainConfig.to_dict`) and
    resolve its paths against ``base``. Raises :class:`ConfigError`."""
    from mmdsynth.train.models import model_config

    base = Path(base)
    raw = dict(raw)
    _check_keys(raw, {"network", "out", "seed", "device", "data", "model", "train", "log"}, "the config")
    network = raw.get("network")
    if network not in NETWORKS:
        raise ConfigError(f"network must be one of {', '.join(NETWORKS)}, got {network!r}")
    out = _typed(raw.get("out", ""), str, "out")
    if not out:
        raise ConfigError("out (the run folder) is required")
    for section in ("data", "model", "train", "log"):
        if not isinstance(raw.get(section, {}), dict):
            raise ConfigError(f"[{section}] must be a table")
    data = _fill(DataConfig, raw.get("data", {}), "data")
    train = _fill(TrainSettings, raw.get("train", {}), "train")
    log = _fill(LogConfig, raw.get("log", {}), "log")
    seed = _typed(raw.get("seed", 0), int, "seed")
    device = _typed(raw.get("device", "auto"), str, "device")
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")

    if not data.dir:
        raise ConfigError("data.dir (the dataset folder) is required")
    data.dir = _path(data.dir, base)
    if not data.train:
        raise ConfigError("data.train must name a split")
    if data.batch_size < 1:
        raise ConfigError(f"data.batch_size must be >= 1, got {data.batch_size}")
    if data.workers is not None and data.workers < 0:
        raise ConfigError(f"data.workers must be >= 0, got {data.workers}")
    for key in ("train_examples", "val_examples"):
        if getattr(data, key) < 0:
            raise ConfigError(f"data.{key} must be >= 0")

    model = dict(raw.get("model", {}))
    preset = model.pop("preset", "tha1")
    try:
        mcfg = model_config(preset, **model)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"[model]: {exc}") from None
    model_dict = {"preset": preset, **model}
    del mcfg

    if (train.steps > 0) == (train.epochs > 0):
        raise ConfigError("give exactly one of train.steps and train.epochs (a positive integer)")
    if train.steps < 0 or train.epochs < 0:
        raise ConfigError("train.steps and train.epochs must be positive")
    if train.lr <= 0:
        raise ConfigError(f"train.lr must be > 0, got {train.lr}")
    if not all(0 <= b < 1 for b in train.betas):
        raise ConfigError(f"train.betas must be in [0, 1), got {train.betas}")
    if train.scheduler not in SCHEDULERS:
        raise ConfigError(f"train.scheduler must be one of {', '.join(SCHEDULERS)}, got {train.scheduler!r}")
    if train.scheduler == "step" and train.step_size < 1:
        raise ConfigError("train.step_size (>= 1) is required by scheduler = \"step\"")
    for key in ("warmup_steps", "step_size"):
        if getattr(train, key) < 0:
            raise ConfigError(f"train.{key} must be >= 0")
    for key in ("weight_decay", "grad_clip", "l1_weight", "perceptual_weight", "lr_min_ratio"):
        if getattr(train, key) < 0:
            raise ConfigError(f"train.{key} must be >= 0")
    train.perceptual_weights = _path(train.perceptual_weights, base)
    train.rotator = _path(train.rotator, base)
    if network == "combiner" and not train.rotator:
        raise ConfigError("train.rotator (a trained rotator checkpoint) is required to train the combiner")
    if network != "combiner" and train.rotator:
        raise ConfigError("train.rotator applies to network = \"combiner\" only")
    if train.l1_weight == 0 and not (train.perceptual_weights and train.perceptual_weight > 0):
        raise ConfigError("the loss is zero: set train.l1_weight > 0 or a perceptual term")

    for key in ("log_every", "val_every", "checkpoint_every", "keep_checkpoints", "grid_examples"):
        if getattr(log, key) < 0:
            raise ConfigError(f"log.{key} must be >= 0")
    if log.log_every == 0:
        log.log_every = 1
    return TrainConfig(network=network, out=_path(out, base), data=data, model=model_dict, train=train, log=log,
                       seed=seed, device=device)


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read and check a TOML config. Raises :class:`ConfigError` (missing file, bad TOML, bad key)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    try:
        return parse_config(raw, base=path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
