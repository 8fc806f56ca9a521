"""Torch data over the HDF5 shards: a Dataset, a resumable sampler and the loader.

Value conventions (the whole of :mod:`mmdsynth.train` uses them)
-----------------------------------------------------------------
* On disk and through the DataLoader, images stay **uint8 RGBA, straight
  alpha, (B, H, W, 4)** (exactly the shard layout), so a batch of 256x256
  images costs 256 KiB per image to move between processes instead of 1 MiB
  of float32, and the float conversion runs once per batch on the training
  device (:func:`to_float`).
* Networks see **float32 (B, 4, H, W) in [-1, 1]**: ``x = u8 / 127.5 - 1``,
  all four channels, straight (not premultiplied) alpha, as THA1's own code
  feeds its networks. A background pixel (0, 0, 0, 0) becomes (-1, -1, -1, -1).
  :func:`to_uint8` is the inverse (clamped, rounded).
* Pose vectors are float32 (B, P) as stored (DESIGN.md, schema ``tha1``:
  ``left_eye, right_eye, mouth`` in [0, 1], ``head_x, head_y, neck_z`` in
  [-1, 1]). A network takes the slice of the pose that drives it
  (:data:`TASK_POSE`): THA1 section 6 trains the face morpher on
  (rest -> morphed) with the expression part and the face rotator on
  (morphed -> posed) with the rotation part.

Speed
-----
:class:`ShardDataset` reads whole batches (``dataset[[i0, i1, ...]]``) with
h5py's low-level API straight into preallocated uint8 tensors, decodes only the image
kinds asked for (the morpher needs ``rest`` + ``morphed``; ``rest`` is decoded
once per model and cached), and opens files lazily in each process (fork-safe:
a child notices the new pid and opens its own handles). :func:`make_loader`
drives it with a batch sampler (``batch_size=None``: no per-example collation),
persistent workers and prefetching; workers decode into a pool of shared
uint8 batch tensors allocated once (see :func:`make_loader`).
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mmdsynth.datasets.shards import INDEX_NAME, ShardError, load_index, open_shard, open_split

__all__ = [
    "IMAGE_KINDS",
    "TASK_POSE",
    "ShardDataset",
    "StepBatchSampler",
    "make_loader",
    "BatchLoader",
    "default_workers",
    "to_float",
    "to_uint8",
    "pose_indices",
]

IMAGE_KINDS = ("rest", "morphed", "posed")

#: Pose parameters that drive each network, by name (THA1 section 6).
TASK_POSE: dict[str, tuple[str, ...]] = {
    "morpher": ("left_eye", "right_eye", "mouth"),
    "rotator": ("head_x", "head_y", "neck_z"),
    "combiner": ("head_x", "head_y", "neck_z"),
}


def default_workers() -> int:
    """DataLoader worker processes by default: one per CPU core this process may use (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, n)


def pose_indices(parameter_names: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Positions of ``wanted`` parameter names in ``parameter_names``.

    Raises ValueError naming the missing ones and the schema's names."""
    names = list(parameter_names)
    missing = [w for w in wanted if w not in names]
    if missing:
        raise ValueError(f"the dataset's pose has no {', '.join(missing)} (its parameters: {', '.join(names) or 'none'})")
    return [names.index(w) for w in wanted]


def to_float(images: torch.Tensor, device: torch.device | str | None = None, non_blocking: bool = True) -> torch.Tensor:
    """uint8 (B, H, W, 4) (or (H, W, 4)) RGBA -> float32 (B, 4, H, W) (or (4, H, W)) in [-1, 1].

    ``x / 127.5 - 1``; moved to ``device`` first (uint8, 4x fewer bytes), the
    result is contiguous. Raises TypeError for a non-uint8 tensor."""
    if images.dtype != torch.uint8:
        raise TypeError(f"to_float expects a uint8 image tensor, got {images.dtype}")
    if device is not None:
        images = images.to(device, non_blocking=non_blocking)
    perm = (0, 3, 1, 2) if images.dim() == 4 else (2, 0, 1)
    return (images.permute(*perm).float().div_(127.5).sub_(1.0)).contiguous()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float (B, 4, H, W) or (4, H, W) in [-1, 1] -> uint8 (B, H, W, 4) or (H, W, 4) on the CPU.

    Clamped to [-1, 1], then ``round((x + 1) * 127.5)``; the inverse of :func:`to_float`."""
    x = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    perm = (0, 2, 3, 1) if x.dim() == 4 else (1, 2, 0)
    return x.permute(*perm).contiguous().cpu()


# ============================================================================= reading


class _Reader:
    """One shard file opened in this process: small datasets in memory,
    low-level readers for the image datasets (reusable dataspaces)."""

    def __init__(self, path: Path, kinds: Sequence[str]):
        try:
            # as the shard reader opens them: finished shards never change, no HDF5 file lock
            # (and the same flags, since HDF5 refuses one file opened twice with different ones)
            self.file = h5py.File(path, "r", rdcc_nbytes=0, rdcc_nslots=1, locking=False)
        except FileNotFoundError:
            raise ShardError(f"{path}: no such shard file") from None
        except OSError as exc:
            raise ShardError(f"{path}: not a readable HDF5 file ({' '.join(str(exc).split())})") from None
        try:
            self.model = self.file["model"][()]
            self.pose = self.file["pose"][()].astype(np.float32, copy=False)
            self.read = {}
            for kind in set(kinds) | {"rest"}:
                ds = self.file[kind]
                self.read[kind] = (ds.id, ds.id.get_space(), tuple(ds.shape[1:]))
            self.length = len(self.model)
        except (KeyError, ValueError, OSError) as exc:
            self.file.close()
            raise ShardError(f"{path}: malformed shard ({' '.join(str(exc).split())})") from None
        h, w, c = self.read["rest"][2]
        self._mspace = h5py.h5s.create_simple((1, h, w, c))
        self._count = (1, h, w, c)

    def read_into(self, kind: str, row: int, out: np.ndarray) -> None:
        """Decode image ``row`` of dataset ``kind`` into ``out`` ((1, H, W, 4) uint8, C-contiguous)."""
        dsid, fspace, _ = self.read[kind]
        fspace.select_hyperslab((row, 0, 0, 0), self._count)
        dsid.read(self._mspace, fspace, out)

    def close(self) -> None:
        try:
            self.file.close()
        except Exception:  # noqa: BLE001 - closing twice or at interpreter exit
            pass


class ShardDataset(Dataset):
    """Examples of one split of a dataset as torch tensors.

    Args:
        root: the dataset folder (the render spec's ``output``: ``root/SPLIT/shard-*.h5``).
        split: the split's name (``train``, ``val``, ``test``...).
        images: the image kinds to decode, a subset of ``("rest", "morphed", "posed")``
            (default all three). Only these are read.
        limit: use only the first ``limit`` examples (None: all).
        rest_cache: decoded ``rest`` images kept per process (LRU, one per (shard, model)).

    ``dataset[i]`` (an int) is one example: each image kind as float32
    (4, H, W) in [-1, 1], ``pose`` (P,) float32, ``index`` (int).
    ``dataset[[i0, i1, ...]]`` (a list of ints: what :func:`make_loader` asks
    for) is a batch in the transport layout: each image kind as uint8
    (B, H, W, 4) (in shared memory inside a DataLoader worker), ``pose``
    (B, P) float32, ``index`` (B,) int64; convert images with :func:`to_float`.

    :attr:`parameter_names` are the pose names, :attr:`image_size` (H, W),
    :attr:`examples` the underlying :func:`~mmdsynth.datasets.shards.open_split`
    sequence (its dicts carry model ids, lights and so on).

    Raises:
        ShardError (a ValueError): no such split, no shards, a malformed shard.
        ValueError: an unknown image kind.
        IndexError: an example index out of range.
    """

    def __init__(self, root: str | os.PathLike, split: str, images: Sequence[str] = IMAGE_KINDS,
                 limit: int | None = None, rest_cache: int = 256):
        images = tuple(images)
        bad = [k for k in images if k not in IMAGE_KINDS]
        if bad or not images:
            raise ValueError(f"images must be a non-empty subset of {IMAGE_KINDS}, got {images}")
        self.root = Path(root)
        self.split = split
        self.images = images
        self.examples = open_split(self.root, split)
        self.files = self.examples.files
        counts = self._counts(self.files)
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64).tolist()
        total = self._starts[-1]
        self.length = total if limit is None else max(0, min(int(limit), total))
        attrs = self.examples.attrs
        self.parameter_names: list[str] = list(attrs.get("parameter_names", []))
        ranges = attrs.get("parameter_ranges")
        self.parameter_ranges: list[tuple[float, float]] = [tuple(map(float, r)) for r in ranges] if ranges is not None else []
        size = attrs.get("image_size", (256, 256))
        self.image_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.attrs = attrs
        self.examples.close()
        self._rest_cache_size = max(0, int(rest_cache))
        self._reset()

    def _counts(self, files: list[Path]) -> list[int]:
        split_dir = self.root / self.split
        if (split_dir / INDEX_NAME).is_file():
            by_name = {e["file"]: int(e["examples"]) for e in load_index(split_dir)["shards"]}
            if all(f.name in by_name for f in files):
                return [by_name[f.name] for f in files]
        counts = []
        for f in files:
            with open_shard(f) as ex:
                counts.append(len(ex))
        return counts

    # -- per-process state (fork- and pickle-safe)
    def _reset(self) -> None:
        self._pid = os.getpid()
        self._open: dict[int, _Reader] = {}
        self._rest: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_open", "_rest", "_pid", "examples"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.examples = open_split(self.root, self.split)
        self._reset()

    def _reader(self, s: int) -> _Reader:
        if self._pid != os.getpid():  # forked: the parent's handles are not ours
            self._reset()
        r = self._open.get(s)
        if r is None:
            r = _Reader(self.files[s], self.images)
            expected = self._starts[s + 1] - self._starts[s]
            if r.length != expected:
                r.close()
                raise ShardError(f"{self.files[s]}: holds {r.length} examples, the index says {expected}")
            self._open[s] = r
        return r

    def close(self) -> None:
        """Close this process's files (they reopen on the next read)."""
        if self._pid == os.getpid():
            for r in self._open.values():
                r.close()
        self._reset()

    # -- metadata
    def __len__(self) -> int:
        return self.length

    def locate(self, i: int) -> tuple[int, int]:
        """(shard number, row in that shard) of example ``i`` (0 <= i < len)."""
        if not 0 <= i < self.length:
            raise IndexError(f"example index {i} out of range for {self.length} examples")
        s = bisect.bisect_right(self._starts, i) - 1
        return s, i - self._starts[s]

    # -- reading
    def _rest_into(self, s: int, reader: _Reader, row: int, out: np.ndarray) -> None:
        m = int(reader.model[row])
        key = (s, m)
        cached = self._rest.get(key)
        if cached is None:
            reader.read_into("rest", m, out)
            if self._rest_cache_size:
                self._rest[key] = out[0].copy()
                if len(self._rest) > self._rest_cache_size:
                    self._rest.popitem(last=False)
        else:
            self._rest.move_to_end(key)
            out[0] = cached

    def read_batch(self, indices: Sequence[int], out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The transport-layout batch of ``indices`` (see the class docstring).

        ``out``: optional preallocated uint8 (B, H, W, 4) contiguous tensors, one
        per image kind, to decode into (they are returned in the dict)."""
        idx = [int(i) for i in indices]
        n = len(idx)
        h, w = self.image_size
        out = dict(out) if out is not None else {}
        arrays = {}
        for kind in self.images:
            t = out.get(kind)
            if t is None:
                t = torch.empty((n, h, w, 4), dtype=torch.uint8)
                out[kind] = t
            elif t.shape != (n, h, w, 4) or t.dtype != torch.uint8 or not t.is_contiguous():
                raise ValueError(f"out[{kind!r}] must be a contiguous uint8 {(n, h, w, 4)} tensor")
            arrays[kind] = t.numpy()
        pose = None
        for j, i in enumerate(idx):
            if i < 0:
                i += self.length
            s, row = self.locate(i)
            reader = self._reader(s)
            if pose is None:
                pose = np.empty((n, reader.pose.shape[1]), np.float32)
            pose[j] = reader.pose[row]
            for kind in self.images:
                dst = arrays[kind][j:j + 1]
                if kind == "rest":
                    self._rest_into(s, reader, row, dst)
                else:
                    reader.read_into(kind, row, dst)
        out["pose"] = torch.from_numpy(pose if pose is not None else np.zeros((0, len(self.parameter_names)), np.float32))
        out["index"] = torch.tensor(idx, dtype=torch.int64)
        return out

    def __getitem__(self, i):
        if isinstance(i, (list, tuple, np.ndarray, torch.Tensor)):
            return self.read_batch(list(i) if not isinstance(i, torch.Tensor) else i.tolist())
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int or a list of ints, got {type(i).__name__}")
        batch = self.read_batch([int(i)])
        item = {k: to_float(batch[k][0]) for k in self.images}
        item["pose"] = batch["pose"][0]
        item["index"] = int(batch["index"][0])
        return item


# ============================================================================= sampling


class StepBatchSampler:
    """Batches of example indices for training steps ``start_step, start_step + 1, ...``.

    Epoch ``e`` visits the examples in the order of
    :class:`torch.utils.data.DistributedSampler` with ``seed`` and ``set_epoch(e)``
    (a permutation of ``range(n)`` drawn from ``seed + e``, padded to a multiple
    of ``world_size``, this ``rank``'s every ``world_size``-th entry), cut into
    ``batches_per_epoch = len(sampler) // batch_size`` batches of ``batch_size``
    (the remainder is dropped). Step ``s`` is batch ``s % batches_per_epoch``
    of epoch ``s // batches_per_epoch``: the order is a function of
    (seed, step, rank, world_size) only, so a resumed run sees exactly the
    batches an uninterrupted one would. ``total_steps`` ends the iteration
    (None: endless).

    Raises ValueError when one rank's share is smaller than a batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_step: int = 0, total_steps: int | None = None, shuffle: bool = True):
        self.sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                          drop_last=False)
        self.batch_size = int(batch_size)
        self.batches_per_epoch = len(self.sampler) // self.batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(f"{n} examples over {world_size} process(es) give {len(self.sampler)} per process, "
                             f"fewer than one batch of {batch_size}")
        self.start_step = int(start_step)
        self.total_steps = total_steps

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while self.total_steps is None or step < self.total_steps:
            epoch, k = divmod(step, self.batches_per_epoch)
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)
            while k < self.batches_per_epoch and (self.total_steps is None or step < self.total_steps):
                yield order[k * self.batch_size:(k + 1) * self.batch_size]
                k += 1
                step += 1

    def __len__(self) -> int:
        if self.total_steps is None:
            raise TypeError("an endless StepBatchSampler has no length")
        return max(0, self.total_steps - self.start_step)


def _chunks(indices: Sequence[int], batch_size: int) -> list[list[int]]:
    return [list(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size)]


class _SlotBatches:
    """Pairs each batch of indices with a slot of the batch pool (``k % slots`` for the k-th batch)."""

    def __init__(self, batches, slots: int):
        self.batches = batches
        self.slots = slots

    def __iter__(self):
        for k, indices in enumerate(self.batches):
            yield k % self.slots, list(indices)

    def __len__(self):
        return len(self.batches)


class _PooledDataset(Dataset):
    """What the DataLoader workers run: decode batch ``(slot, indices)`` into
    slot ``slot`` of a pool of uint8 tensors in shared memory that the main
    process allocated before the workers started (inherited by fork, or passed
    once as shared handles by spawn). Returns only the small tensors and the
    slot number: no image bytes travel through the worker queues, and after the
    first pass over the pool no page is faulted in again on either side."""

    def __init__(self, dataset: ShardDataset, slots: int, batch_size: int):
        self.dataset = dataset
        h, w = dataset.image_size
        self.pool = {k: torch.empty((slots, batch_size, h, w, 4), dtype=torch.uint8).share_memory_()
                     for k in dataset.images}

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        slot, indices = item
        out = {k: v[slot, :len(indices)] for k, v in self.pool.items()}
        batch = self.dataset.read_batch(indices, out=out)
        return {"slot": slot, "pose": batch["pose"], "index": batch["index"]}


class BatchLoader:
    """Iterates transport-layout batches (see :class:`ShardDataset`) read by DataLoader workers.

    Made by :func:`make_loader`. With ``copy=False`` the image tensors of a
    batch are views of a shared pool slot that workers refill: they are valid
    until the next batch is requested (convert them first, e.g. with
    :func:`to_float`, as the trainer does). With ``copy=True`` (default) they
    are private copies. With ``pin_memory`` every tensor of a batch is a
    private copy in page-locked memory (torch's caching host allocator, which
    keeps a block until the copies that read it are done), so
    ``to(device, non_blocking=True)`` overlaps with the GPU's work.
    """

    def __init__(self, loader: DataLoader, pooled: _PooledDataset | None, copy: bool, pin_memory: bool = False):
        self.loader = loader
        self.pooled = pooled
        self.copy = copy
        self.pin_memory = pin_memory

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.loader:
            if self.pooled is not None:
                n = len(batch["index"])
                slot = int(batch.pop("slot"))
                for kind, pool in self.pooled.pool.items():
                    view = pool[slot, :n]
                    batch[kind] = view.pin_memory() if self.pin_memory else view.clone() if self.copy else view
            if self.pin_memory:
                batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) and not v.is_pinned() else v
                         for k, v in batch.items()}
            yield batch

    def __len__(self) -> int:
        return len(self.loader)


def make_loader(dataset: ShardDataset, batches, batch_size: int, workers: int | None = None,
                prefetch_factor: int = 2, persistent: bool = True, copy: bool = True,
                pin_memory: bool = False) -> BatchLoader:
    """An iterable of transport-layout batches (see :class:`ShardDataset`).

    Args:
        dataset: the :class:`ShardDataset`.
        batches: an iterable of index lists of at most ``batch_size`` indices,
            e.g. a :class:`StepBatchSampler`, or a list of lists (:func:`eval_batches`).
        batch_size: the largest batch in ``batches`` (sizes the shared pool).
        workers: worker processes (None: :func:`default_workers`; 0: read in this process).
        prefetch_factor: batches each worker reads ahead.
        persistent: keep the workers (their open files and rest-image caches) between iterations.
        copy, pin_memory: see :class:`BatchLoader` (the trainer pins when it
            trains on CUDA; pinning needs a CUDA build of torch).

    With workers, a whole batch is read by one worker (``batch_size=None``
    DataLoader over batches of indices: no per-example collation) straight into
    a slot of a pool of ``workers * prefetch_factor + 2`` shared uint8 batch
    tensors allocated here (DataLoader keeps at most ``workers *
    prefetch_factor`` batches in flight, so a slot is never refilled while the
    batch in it is still in use). Workers are forked where the platform allows
    it (the dataset holds no open files before it is read; every child opens
    its own). Host-to-GPU copies move uint8 (4x fewer bytes than float32) and
    the float conversion runs on the GPU.
    """
    workers = default_workers() if workers is None else max(0, int(workers))
    if workers == 0:
        loader = DataLoader(dataset, batch_size=None, sampler=batches, num_workers=0)
        return BatchLoader(loader, None, copy, pin_memory)
    slots = workers * prefetch_factor + 2
    pooled = _PooledDataset(dataset, slots, batch_size)
    kw: dict[str, Any] = {"prefetch_factor": prefetch_factor, "persistent_workers": persistent}
    import multiprocessing as mp

    if "fork" in mp.get_all_start_methods():
        kw["multiprocessing_context"] = "fork"
    loader = DataLoader(pooled, batch_size=None, sampler=_SlotBatches(batches, slots), num_workers=workers, **kw)
    return BatchLoader(loader, pooled, copy, pin_memory)


def eval_batches(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """Index batches for evaluation: examples ``rank, rank + world_size, ...`` of ``range(n)``
    (every example exactly once over all ranks), in order, batches of at most ``batch_size``."""
    return _chunks(list(range(rank, n, world_size)), batch_size)


__all__.append("eval_batches")
