"""The training loop: ``mmdsynth train CONFIG.toml`` (one process or many under torchrun).

One step: read a batch (uint8, :mod:`mmdsynth.train.data`), convert it on the
device to [-1, 1], run the network of the config's task (:class:`Task`),
L1 loss (plus the optional VGG16 perceptual term), backward, optional gradient
clipping, Adam step, scheduler step. Every ``log_every`` steps a ``train`` row
goes to ``OUT/log.csv``; every ``val_every`` steps (and at the end) the val
split is evaluated (L1, RMSE, PSNR, SSIM: :mod:`mmdsynth.train.metrics`) into
``val`` rows, and a PNG grid (input | output(s) | target over a checkerboard)
is written to ``OUT/grids/``; every ``checkpoint_every`` steps (and at the end)
a checkpoint (:mod:`mmdsynth.train.checkpoint`) goes to
``OUT/checkpoints/step-NNNNNNN.pt`` and ``OUT/last.pt``.

Resuming (``--resume``) restores the model, the optimiser, the scheduler, the
loss scaler, the step and the RNG states; the data order is a function of
(seed, step) (:class:`~mmdsynth.train.data.StepBatchSampler`), so on the CPU
with a fixed seed a resumed run logs exactly the losses of an uninterrupted one.

Several processes: launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the
environment), each process joins the default process group (NCCL on CUDA,
gloo on the CPU), wraps the network in DistributedDataParallel, reads its own
share of every epoch (DistributedSampler order), and validation is split over
the processes and summed. Rank 0 alone writes logs, grids, checkpoints and the
progress bar. ``batch_size`` is per process.

``log.csv`` columns: ``time`` (UTC ISO 8601), ``step``, ``epoch``, ``examples``
(seen so far, all processes), ``split`` (``train`` or the val split's name),
``output`` (``""`` for train rows; the network output evaluated: ``output``
for the morpher and combiner, ``direct`` and ``flow`` for the rotator),
``loss``, ``l1``, ``rmse``, ``psnr``, ``ssim``, ``lr``, ``examples_per_s``.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mmdsynth import __version__
from mmdsynth.train.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    link_atomic,
    load_checkpoint,
    rng_state,
    save_atomic,
    set_rng_state,
)
from mmdsynth.train.config import ConfigError, TrainConfig, parse_config
from mmdsynth.train.data import (
    TASK_POSE,
    ShardDataset,
    StepBatchSampler,
    eval_batches,
    make_loader,
    pose_indices,
    to_float,
    to_uint8,
)
from mmdsynth.train.metrics import METRICS, Perceptual, image_metrics
from mmdsynth.train.models import ModelConfig, build_network, model_config

__all__ = ["Task", "Trainer", "LRFactor", "evaluate", "evaluate_checkpoint", "network_from_checkpoint",
           "write_grid", "LOG_COLUMNS", "Dist"]

LOG_COLUMNS = ["time", "step", "epoch", "examples", "split", "output", "loss", *METRICS, "lr", "examples_per_s"]


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ============================================================================= distributed


class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.owns_group = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def init(self, device: torch.device) -> None:
        if self.enabled and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            self.owns_group = True

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            # every process reaches this point before any tears the group down
            # (gloo aborts a process whose peer vanished mid-connection)
            with contextlib.suppress(Exception):
                dist.barrier()
            dist.destroy_process_group()
            self.owns_group = False


def _device(name: str, d: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available in this torch build or machine")
        if d.enabled:
            return torch.device("cuda", d.local_rank)
        return torch.device(name)
    return torch.device("cpu")


# ============================================================================= tasks


def network_from_checkpoint(ckpt: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """The network a checkpoint holds, weights loaded, in eval mode."""
    net = build_network(ckpt["network"], ModelConfig(**ckpt["model_config"]))
    net.load_state_dict(ckpt["model"])
    return net.to(device).eval()


class Task:
    """What one network learns (THA1 section 6): input and target image kinds,
    the pose part, the forward pass and the loss.

    * morpher: ``rest`` -> ``morphed`` with (left_eye, right_eye, mouth); outputs ``{"output"}``.
    * rotator: ``morphed`` -> ``posed`` with (head_x, head_y, neck_z); outputs
      ``{"direct", "flow"}``; the loss is the sum over both (THA1 trains both outputs).
    * combiner: ``morphed`` -> ``posed``: a frozen rotator (``rotator``, eval mode,
      no gradients) makes the two images the combiner blends; outputs ``{"output"}``.

    ``loss = l1_weight * L1 + perceptual_weight * Perceptual`` per output (L1:
    mean absolute difference in [-1, 1] units), summed over the outputs.
    """

    def __init__(self, network: str, parameter_names: list[str], rotator: nn.Module | None = None,
                 l1_weight: float = 1.0, perceptual: Perceptual | None = None, perceptual_weight: float = 1.0):
        self.network = network
        self.source, self.target = ("rest", "morphed") if network == "morpher" else ("morphed", "posed")
        self.pose_names = list(TASK_POSE[network])
        self.pose_index = pose_indices(parameter_names, self.pose_names)
        self.rotator = rotator
        if network == "combiner" and rotator is None:
            raise ValueError("the combiner task needs a trained rotator")
        self.l1_weight = l1_weight
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight

    @property
    def images(self) -> tuple[str, str]:
        return (self.source, self.target)

    def select_pose(self, pose: torch.Tensor) -> torch.Tensor:
        return pose[:, self.pose_index]

    def forward(self, model: nn.Module, src: torch.Tensor, pose: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named output images (B, 4, H, W) in [-1, 1] from input ``src`` and the task's pose part."""
        if self.network == "morpher":
            return {"output": model(src, pose)["image"]}
        if self.network == "rotator":
            out = model(src, pose)
            return {"direct": out["direct"], "flow": out["flow_image"]}
        with torch.no_grad():
            r = self.rotator(src, pose)
        return {"output": model(r["direct"].detach(), r["flow_image"].detach(), pose)["image"]}

    def loss(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        total = None
        for out in outputs.values():
            term = self.l1_weight * F.l1_loss(out.float(), target) if self.l1_weight else 0.0
            if self.perceptual is not None and self.perceptual_weight:
                term = term + self.perceptual_weight * self.perceptual(out.float(), target)
            total = term if total is None else total + term
        return total


class LRFactor:
    """The learning-rate multiplier at a step (LambdaLR): linear warm-up over
    ``warmup`` steps, then constant, cosine to ``min_ratio`` at ``total``, or
    x ``gamma`` every ``step_size`` steps."""

    def __init__(self, kind: str, total: int, warmup: int = 0, min_ratio: float = 0.0, step_size: int = 0,
                 gamma: float = 0.1):
        self.kind, self.total, self.warmup = kind, int(total), int(warmup)
        self.min_ratio, self.step_size, self.gamma = float(min_ratio), int(step_size), float(gamma)

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "cosine":
            span = max(1, self.total - self.warmup)
            t = min(1.0, (step - self.warmup) / span)
            return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        if self.kind == "step":
            return self.gamma ** ((step - self.warmup) // self.step_size)
        return 1.0


# ============================================================================= evaluation and grids


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, loader, device: torch.device, d: Dist | None = None,
             amp_dtype: torch.dtype | None = None) -> dict[str, dict[str, float]]:
    """Mean per-image metrics and the loss over ``loader`` (summed over processes).

    Returns ``{output name: {"examples", "loss", "l1", "rmse", "psnr", "ssim"}}``
    (``loss``: the task's loss per batch, averaged over examples)."""
    d = d or Dist()
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    try:
        for batch in loader:
            src = to_float(batch[task.source], device)
            tgt = to_float(batch[task.target], device)
            pose = task.select_pose(batch["pose"].to(device))
            with _autocast(device, amp_dtype):
                outs = task.forward(model, src, pose)
            n = src.shape[0]
            for name, out in outs.items():
                m = image_metrics(out.float(), tgt)
                loss = task.loss({name: out}, tgt).detach().float() * n
                row = torch.stack([torch.tensor(float(n), device=device), loss.reshape(()),
                                   *[m[k].sum().to(device) for k in METRICS]]).double()
                sums[name] = sums[name] + row if name in sums else row
    finally:
        model.train(was_training)
    if d.enabled:
        # every process reduces the same outputs, even one with an empty share
        for name in _output_names(task):
            t = sums.get(name, torch.zeros(2 + len(METRICS), dtype=torch.float64, device=device))
            sums[name] = d.sum(t)
    result = {}
    for name, row in sums.items():
        n = float(row[0])
        values = {"examples": int(n)}
        values["loss"] = float(row[1]) / n if n else float("nan")
        for k, v in zip(METRICS, row[2:].tolist()):
            values[k] = v / n if n else float("nan")
        result[name] = values
    return result


def _output_names(task: Task) -> list[str]:
    return ["direct", "flow"] if task.network == "rotator" else ["output"]


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def _checkerboard(h: int, w: int, cell: int = 16) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    on = ((yy // cell + xx // cell) % 2).astype(bool)
    board = np.where(on[..., None], 204, 153).astype(np.float32)
    return np.repeat(board, 3, axis=2)


def _over(rgba: np.ndarray, board: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:4].astype(np.float32) / 255
    return (rgba[..., :3].astype(np.float32) * a + board * (1 - a)).round().astype(np.uint8)


def write_grid(columns: dict[str, torch.Tensor], path: str | os.PathLike, title: str = "") -> Path:
    """A PNG grid: one row per example, one column per named image batch
    ((B, 4, H, W) in [-1, 1] or uint8 (B, H, W, 4)), composited over a
    checkerboard, column names (and ``title``) on top. Written atomically."""
    from PIL import Image, ImageDraw

    arrays = []
    for t in columns.values():
        arrays.append((t if t.dtype == torch.uint8 else to_uint8(t)).numpy())
    b, h, w, _ = arrays[0].shape
    head = 18 + (16 if title else 0)
    sheet = np.full((head + b * h, len(arrays) * w, 3), 255, np.uint8)
    board = _checkerboard(h, w)
    for c, arr in enumerate(arrays):
        for r in range(b):
            sheet[head + r * h: head + (r + 1) * h, c * w:(c + 1) * w] = _over(arr[r], board)
    img = Image.fromarray(sheet)
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((4, 2), title, fill=(0, 0, 0))
    for c, name in enumerate(columns):
        draw.text((c * w + 4, head - 15), name, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


# ============================================================================= trainer


class _CSVLog:
    def __init__(self, path: Path):
        self.path = path
        new = not path.exists() or path.stat().st_size == 0
        self.fh = open(path, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.fh, LOG_COLUMNS)
        if new:
            self.writer.writeheader()
            self.fh.flush()

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow({k: row.get(k, "") for k in LOG_COLUMNS})
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def _truncate_log(path: Path, step: int) -> None:
    """Drop the rows after ``step`` (logged by a run that died after its last
    checkpoint): a resumed run logs those steps again. Rewritten atomically."""
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    keep = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= step]
    if len(keep) == len(rows):
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, LOG_COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in LOG_COLUMNS} for r in keep)
    os.replace(tmp, path)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard not installed (ImportError) or broken
        return None
    return SummaryWriter(str(out / "tensorboard"))


class Trainer:
    """Train one network per a :class:`~mmdsynth.train.config.TrainConfig`.

    Args:
        cfg: the configuration.
        resume: a checkpoint to continue from (None: start afresh). Its
            network, model sizes, data folder, batch size, seed and train
            examples must match ``cfg``; the length of the run, logging and
            validation settings may change.
        log: where one-line messages go (rank 0 only).

    :meth:`fit` runs to the configured step count and returns the per-step
    training losses of this process as ``[(step, loss), ...]`` (step counted
    from 1). Raises :class:`ConfigError` for bad input (missing data, a
    mismatched resume checkpoint, too few examples for one batch).
    """

    def __init__(self, cfg: TrainConfig, resume: str | os.PathLike | None = None,
                 log: Callable[[str], None] = print):
        self.cfg = cfg
        self.d = Dist()
        self.device = _device(cfg.device, self.d)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.d.init(self.device)
        self.log = log if self.d.main else (lambda line: None)
        self.out = Path(cfg.out)
        self.history: list[tuple[int, float]] = []
        try:
            self._setup(resume)
        except BaseException:
            self.close()
            raise

    # -- setup
    def _setup(self, resume) -> None:
        cfg = self.cfg
        from mmdsynth.datasets.shards import ShardError

        resume_ckpt = load_checkpoint(resume) if resume else None
        if resume_ckpt is not None:
            self._check_resume(resume_ckpt, resume)
        try:
            self.train_set = ShardDataset(cfg.data.dir, cfg.data.train, images=self._images(),
                                          limit=cfg.data.train_examples or None)
            self.val_set = (ShardDataset(cfg.data.dir, cfg.data.val, images=self._images(),
                                         limit=cfg.data.val_examples or None) if cfg.data.val else None)
        except ShardError as exc:
            raise ConfigError(str(exc)) from None
        names = self.train_set.parameter_names
        rotator = None
        self.rotator_ckpt = None
        if cfg.network == "combiner":
            self.rotator_ckpt = load_checkpoint(cfg.train.rotator)
            if self.rotator_ckpt["network"] != "rotator":
                raise ConfigError(f"{cfg.train.rotator}: a {self.rotator_ckpt['network']} checkpoint, not a rotator")
            rotator = network_from_checkpoint(self.rotator_ckpt, self.device)
            for p in rotator.parameters():
                p.requires_grad_(False)
        perceptual = None
        if cfg.train.perceptual_weights and cfg.train.perceptual_weight > 0:
            try:
                perceptual = Perceptual.from_file(cfg.train.perceptual_weights).to(self.device)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        try:
            self.task = Task(cfg.network, names, rotator, cfg.train.l1_weight, perceptual, cfg.train.perceptual_weight)
        except ValueError as exc:
            raise ConfigError(f"{cfg.data.dir}: {exc}") from None

        model_kw = {k: v for k, v in cfg.model.items() if k != "preset"}
        self.model_cfg = model_config(cfg.model.get("preset", "tha1"), **model_kw)
        h, w = self.train_set.image_size
        if (h, w) != (self.model_cfg.image_size, self.model_cfg.image_size):
            raise ConfigError(f"the data's images are {h}x{w}, the model takes "
                              f"{self.model_cfg.image_size}x{self.model_cfg.image_size} (set [model] image_size)")
        if rotator is not None and rotator.cfg.image_size != self.model_cfg.image_size:
            raise ConfigError("the rotator and the combiner take different image sizes")

        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % (2 ** 32))
        self.model = build_network(cfg.network, self.model_cfg).to(self.device)
        self.ddp = self.model
        if self.d.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        t = cfg.train
        self.opt = torch.optim.Adam(self.model.parameters(), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)

        b = cfg.data.batch_size
        probe = StepBatchSampler(len(self.train_set), b, cfg.seed, self.d.rank, self.d.world) if len(self.train_set) else None
        if probe is None:
            raise ConfigError(f"{cfg.data.dir}/{cfg.data.train}: no examples")
        self.batches_per_epoch = probe.batches_per_epoch
        self.total_steps = t.steps if t.steps else t.epochs * self.batches_per_epoch
        factor = LRFactor(t.scheduler, self.total_steps, t.warmup_steps, t.lr_min_ratio, t.step_size, t.gamma)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, factor)
        self.amp_dtype = None
        self.scaler = None
        if t.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if self.amp_dtype == torch.float16:
                self.scaler = torch.amp.GradScaler("cuda")
        self.step = 0
        self.examples = 0
        self.metrics: dict[str, dict[str, float]] = {}
        if resume_ckpt is not None:
            self.model.load_state_dict(resume_ckpt["model"])
            self.opt.load_state_dict(resume_ckpt["optimizer"])
            self.sched.load_state_dict(resume_ckpt["scheduler"])
            self.sched.lr_lambdas[0] = factor  # this config's schedule (e.g. more steps), not the stored one
            if self.scaler is not None and resume_ckpt.get("scaler"):
                self.scaler.load_state_dict(resume_ckpt["scaler"])
            self.step = int(resume_ckpt["step"])
            self.examples = int(resume_ckpt["examples"])
            self.metrics = resume_ckpt.get("metrics", {})
            set_rng_state(resume_ckpt["rng"])
            self.log(f"resumed from {resume} at step {self.step}")

    def _images(self) -> tuple[str, str]:
        return ("rest", "morphed") if self.cfg.network == "morpher" else ("morphed", "posed")

    def _check_resume(self, ckpt: dict[str, Any], path) -> None:
        old = parse_config(ckpt["config"])
        new = self.cfg
        pairs = {
            "network": (old.network, new.network),
            "model": (old.model, new.model),
            "data.dir": (old.data.dir, new.data.dir),
            "data.train": (old.data.train, new.data.train),
            "data.batch_size": (old.data.batch_size, new.data.batch_size),
            "data.train_examples": (old.data.train_examples, new.data.train_examples),
            "seed": (old.seed, new.seed),
            "train.scheduler": (old.train.scheduler, new.train.scheduler),
        }
        diff = [f"{k} ({a!r} there, {b!r} here)" for k, (a, b) in pairs.items() if a != b]
        if ckpt.get("world_size", 1) != self.d.world:
            diff.append(f"processes ({ckpt.get('world_size', 1)} there, {self.d.world} here)")
        if diff:
            raise ConfigError(f"{path}: cannot resume, the run differs in {'; '.join(diff)}")

    # -- checkpoints
    def checkpoint(self) -> dict[str, Any]:
        ds = self.train_set
        ckpt = {
            "format": FORMAT, "version": VERSION, "network": self.cfg.network,
            "model_config": self.model_cfg.as_dict(), "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step, "examples": self.examples, "rng": rng_state(), "config": self.cfg.to_dict(),
            "pose_names": self.task.pose_names, "parameter_names": ds.parameter_names,
            "parameter_ranges": [list(r) for r in ds.parameter_ranges], "image_size": list(ds.image_size),
            "world_size": self.d.world, "metrics": self.metrics,
            "versions": {"mmdsynth": str(__version__), "torch": str(torch.__version__)},
        }
        if self.rotator_ckpt is not None:
            r = self.rotator_ckpt
            ckpt["rotator"] = {"network": "rotator", "model_config": r["model_config"], "model": r["model"],
                               "pose_names": r["pose_names"]}
        return ckpt

    def save(self) -> Path | None:
        """Write ``checkpoints/step-NNNNNNN.pt`` and ``last.pt`` (rank 0); prune old step checkpoints."""
        path = None
        if self.d.main:
            path = save_atomic(self.checkpoint(), self.out / "checkpoints" / f"step-{self.step:07d}.pt")
            link_atomic(path, self.out / "last.pt")
            keep = self.cfg.log.keep_checkpoints
            if keep:
                old = sorted((self.out / "checkpoints").glob("step-*.pt"))[:-keep]
                for p in old:
                    p.unlink(missing_ok=True)
        self.d.barrier()
        return path

    # -- validation
    def _val_loader(self):
        n = len(self.val_set)
        b = self.cfg.data.batch_size
        return make_loader(self.val_set, eval_batches(n, b, self.d.rank, self.d.world), b,
                           workers=self._workers(), persistent=False, copy=False, pin_memory=self.device.type == "cuda")

    def _workers(self) -> int | None:
        return self.cfg.data.workers

    def validate(self) -> dict[str, dict[str, float]]:
        """Metrics on the val split (logged, TensorBoard, grid); {} without a val split."""
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        metrics = evaluate(self.model, self.task, self._val_loader(), self.device, self.d,
                           self.amp_dtype)
        self.metrics = metrics
        if self.d.main:
            for name, m in metrics.items():
                self._row(split=self.cfg.data.val, output=name, **{k: m[k] for k in ("loss", *METRICS)})
                if self.tb is not None:
                    for k in ("loss", *METRICS):
                        self.tb.add_scalar(f"{self.cfg.data.val}/{name}/{k}", m[k], self.step)
            summary = "  ".join(f"{name}: L1 {m['l1']:.4f} PSNR {m['psnr']:.2f} SSIM {m['ssim']:.4f}"
                                for name, m in metrics.items())
            self.log(f"step {self.step} {self.cfg.data.val} ({next(iter(metrics.values()))['examples']} examples): {summary}")
            self._grid()
        return metrics

    @torch.no_grad()
    def _grid(self) -> None:
        k = min(self.cfg.log.grid_examples, len(self.val_set))
        if k <= 0:
            return
        batch = self.val_set[list(range(k))]
        src = to_float(batch[self.task.source], self.device)
        tgt = to_float(batch[self.task.target], self.device)
        pose = self.task.select_pose(batch["pose"].to(self.device))
        self.model.eval()
        try:
            with _autocast(self.device, self.amp_dtype):
                outs = self.task.forward(self.model, src, pose)
        finally:
            self.model.train()
        cols = {f"input ({self.task.source})": src, **{n: o.float() for n, o in outs.items()},
                f"target ({self.task.target})": tgt}
        path = write_grid(cols, self.out / "grids" / f"step-{self.step:07d}.png",
                          title=f"{self.cfg.network} step {self.step}")
        if self.tb is not None:
            from PIL import Image

            self.tb.add_image(f"{self.cfg.data.val}/grid", np.asarray(Image.open(path).convert("RGB")), self.step,
                              dataformats="HWC")

    # -- logging
    def _row(self, **row) -> None:
        row.setdefault("time", _utc_now())
        row.setdefault("step", self.step)
        row.setdefault("epoch", self.step // self.batches_per_epoch)
        row.setdefault("examples", self.examples)
        row.setdefault("lr", self.opt.param_groups[0]["lr"])
        self.csv.write(row)

    # -- the loop
    def fit(self, until: int | None = None) -> list[tuple[int, float]]:
        """Train to the configured step count, or stop after step ``until`` (with
        a checkpoint there, as if the job had been interrupted). Returns
        :attr:`history` (this process's ``(step, loss)`` of every step run here)."""
        cfg = self.cfg
        stop = self.total_steps if until is None else min(int(until), self.total_steps)
        self.csv = None
        self.tb = None
        if self.d.main:
            self.out.mkdir(parents=True, exist_ok=True)
            import json

            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n",
                                                  encoding="utf-8")
            if self.step > 0:
                _truncate_log(self.out / "log.csv", self.step)
            self.csv = _CSVLog(self.out / "log.csv")
            self.tb = _tensorboard(self.out) if cfg.log.tensorboard else None
        b = cfg.data.batch_size
        world_batch = b * self.d.world
        try:
            if self.step >= self.total_steps:
                self.log(f"nothing to do: step {self.step} of {self.total_steps}")
                return self.history
            sampler = StepBatchSampler(len(self.train_set), b, cfg.seed, self.d.rank, self.d.world,
                                       start_step=self.step, total_steps=self.total_steps)
            loader = make_loader(self.train_set, sampler, b, workers=self._workers(), copy=False,
                                 pin_memory=self.device.type == "cuda")
            self.log(f"training {cfg.network} ({sum(p.numel() for p in self.model.parameters()):,} parameters) "
                     f"on {len(self.train_set)} examples, {self.d.world} process(es) x batch {b}, "
                     f"device {self.device}, steps {self.step + 1}..{self.total_steps}; run folder {self.out}")
            bar = None
            if self.d.main and cfg.log.progress:
                from tqdm import tqdm

                bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                           desc=cfg.network)
            window_loss, window_n, paused = 0.0, 0, 0.0  # paused: validation and checkpoint seconds
            t_window = time.perf_counter()
            self.ddp.train()
            for batch in loader:
                src = to_float(batch[self.task.source], self.device)
                tgt = to_float(batch[self.task.target], self.device)
                pose = self.task.select_pose(batch["pose"].to(self.device))
                with _autocast(self.device, self.amp_dtype):
                    outs = self.task.forward(self.ddp, src, pose)
                loss = self.task.loss(outs, tgt)
                self.opt.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    self.scaler.unscale_(self.opt)
                else:
                    loss.backward()
                if cfg.train.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
                if self.scaler is not None:
                    self.scaler.step(self.opt)
                    self.scaler.update()
                else:
                    self.opt.step()
                lr = self.opt.param_groups[0]["lr"]
                self.sched.step()
                self.step += 1
                self.examples += world_batch
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"step {self.step}: the loss is {value}")
                self.history.append((self.step, value))
                window_loss += value
                window_n += 1
                if self.step % cfg.log.log_every == 0 or self.step == self.total_steps:
                    t = torch.tensor([window_loss, float(window_n)], dtype=torch.float64, device=self.device)
                    self.d.sum(t)
                    dt = time.perf_counter() - t_window - paused
                    rate = window_n * world_batch / dt if dt > 0 else 0.0
                    mean = float(t[0] / t[1])
                    if self.d.main:
                        self._row(split="train", loss=mean, lr=lr, examples_per_s=rate)
                        if self.tb is not None:
                            self.tb.add_scalar("train/loss", mean, self.step)
                            self.tb.add_scalar("train/lr", lr, self.step)
                            self.tb.add_scalar("train/examples_per_s", rate, self.step)
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean:.4f}", ex_s=f"{rate:.1f}")
                    window_loss, window_n, t_window, paused = 0.0, 0, time.perf_counter(), 0.0
                if bar is not None:
                    bar.update(1)
                last = self.step == self.total_steps
                if self.step == stop and not last:
                    self.save()
                    break
                t_pause = time.perf_counter()
                if cfg.data.val and (last or (cfg.log.val_every and self.step % cfg.log.val_every == 0)):
                    self.validate()
                if last or (cfg.log.checkpoint_every and self.step % cfg.log.checkpoint_every == 0):
                    self.save()
                paused += time.perf_counter() - t_pause
            if bar is not None:
                bar.close()
            self._check_in_sync()
            self.log(f"done: step {self.step}; checkpoint {self.out / 'last.pt'}")
            return self.history
        finally:
            if self.csv is not None:
                self.csv.close()
            if self.tb is not None:
                self.tb.close()

    def _check_in_sync(self) -> None:
        """Under DDP, check that every process ends with the same weights (RuntimeError if not)."""
        if not self.d.enabled:
            return
        with torch.no_grad():
            s = torch.stack([p.double().sum() for p in self.model.parameters()]).sum().reshape(1)
            lo, hi = s.clone(), s.clone()
            dist.all_reduce(lo, op=dist.ReduceOp.MIN)
            dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if float(hi - lo) > 1e-6 * max(1.0, abs(float(s))):
            raise RuntimeError("processes ended with different weights")

    def close(self) -> None:
        self.d.close()


# ============================================================================= checkpoint evaluation


def evaluate_checkpoint(path: str | os.PathLike, split: str = "test", data_dir: str | os.PathLike | None = None,
                        batch_size: int = 8, workers: int | None = None, limit: int | None = None,
                        device: str = "auto") -> dict[str, dict[str, float]]:
    """Metrics of a checkpoint's network on a split (``mmdsynth train --eval``).

    The dataset folder is ``data_dir`` or the one the checkpoint was trained
    on; a combiner uses the rotator stored in its checkpoint. Returns
    :func:`evaluate`'s dict. Raises :class:`CheckpointError` or
    :class:`ConfigError` (missing split, ...)."""
    from mmdsynth.datasets.shards import ShardError

    dev = _device(device, _NoDist())
    ckpt = load_checkpoint(path, map_location=dev)
    cfg = parse_config(ckpt["config"])
    data_dir = Path(data_dir) if data_dir is not None else Path(cfg.data.dir)
    network = ckpt["network"]
    images = ("rest", "morphed") if network == "morpher" else ("morphed", "posed")
    try:
        ds = ShardDataset(data_dir, split, images=images, limit=limit)
    except ShardError as exc:
        raise ConfigError(str(exc)) from None
    if len(ds) == 0:
        raise ConfigError(f"{data_dir}/{split}: no examples")
    rotator = None
    if network == "combiner":
        if "rotator" not in ckpt:
            raise CheckpointError(f"{path}: a combiner checkpoint without its rotator")
        rotator = network_from_checkpoint(ckpt["rotator"], dev)
    model = network_from_checkpoint(ckpt, dev)
    try:
        task = Task(network, ds.parameter_names, rotator, cfg.train.l1_weight)
    except ValueError as exc:
        raise ConfigError(f"{data_dir}: {exc}") from None
    loader = make_loader(ds, eval_batches(len(ds), batch_size), batch_size, workers=workers, persistent=False,
                         copy=False, pin_memory=dev.type == "cuda")
    return evaluate(model, task, loader, dev, _NoDist())


class _NoDist(Dist):
    def __init__(self):
        self.world, self.rank, self.local_rank, self.enabled, self.owns_group = 1, 0, 0, False, False
