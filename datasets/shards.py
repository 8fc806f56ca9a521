"""HDF5 shards (format v1): writing them safely, indexing them, and reading them fast.

A split of a dataset is a folder ``OUTPUT/SPLIT/`` holding shard files
``shard-00000.h5``, ``shard-00001.h5``... (at most ``shard_size`` examples each,
self-contained) and ``index.json``.

Shard file, format v1
---------------------
``N`` examples, ``M`` models, ``P`` pose parameters, images ``H x W``:

============== ============ ======= ==============================================
dataset        shape        dtype   meaning
============== ============ ======= ==============================================
``rest``       (M, H, W, 4) uint8   each model once: rest pose, no morphs
``morphed``    (N, H, W, 4) uint8   expression only (eyes, mouth)
``posed``      (N, H, W, 4) uint8   expression plus head/neck rotation
``model``      (N,)         int32   row of ``rest`` / ``models`` of each example
``pose``       (N, P)       float32 the pose applied (in range, tied eyes equal)
``light``      (N, 2)       float32 ambient, directional magnitude (white lights)
``rest_light`` (M, 2)       float32 the lights ``rest`` was drawn with
``models``     (M, 3)       string  UTF-8 columns: model id, name, library path
============== ============ ======= ==============================================

Images are RGBA with straight alpha, row 0 at the top, (0, 0, 0, 0) where the
character is not (DESIGN.md "Images"). Image datasets are chunked one image
per chunk ``(1, H, W, 4)`` and compressed by one HDF5 filter: LZ4 (the render
spec's default), Zstandard, gzip or LZF (:mod:`.codecs`; to open LZ4 or
Zstandard shards with plain h5py, ``import hdf5plugin`` first). The small
datasets are contiguous. Model ids are stored as text; the attribute
``model_id_type`` (``"int"`` or ``"str"``) says how to read them back
(:class:`ShardedExamples` does).

File attributes: ``format`` (``"mmdsynth-shard"``), ``format_version`` (1),
``schema``, ``parameter_names`` (P strings), ``parameter_ranges`` ((P, 2)
float32 low/high), ``max_angle_deg``, ``preset``, ``framing`` (JSON: the
preset's size, head rows and centre column, projection), ``image_size``
([H, W]), ``renderer`` (GL_RENDERER), ``seed``, ``split``, ``shard_index``,
``package_version`` (``mmdsynth.__version__``), ``spec`` (the render spec as
JSON), ``plan_fingerprint``, ``examples`` (N), ``num_models`` (M),
``compression`` (the codec: ``lz4``, ``zstd-N``, ``gzip-N`` or ``lzf``),
``model_id_type``, ``models_columns`` and ``created``
(UTC, ISO 8601).

Writing (:class:`ShardWriter`) goes to a temporary file in the same folder
(``.shard-00000.h5.XXXX.tmp``) that is renamed into place when the writer
closes with every example written; an exception (or an incomplete shard)
removes it. A file under a final shard name is therefore always complete.

``index.json``
--------------
Written atomically (temporary file + rename) under an advisory lock
(:func:`update_index`), so several processes on a machine, or nodes sharing a
file system that supports ``flock``, can record their shards::

    {"format": "mmdsynth-split-index", "version": 1, "split": "train",
     "planned": {"shards": 10, "examples": 10000, "models": 120},
     "examples": 3000,                        # sum over the shards listed
     "shards": [{"file": "shard-00000.h5", "index": 0, "examples": 1000,
                 "models": 120, "bytes": 123456789, "sha256": "...",
                 "plan": "<plan fingerprint>", "renderer": "...",
                 "package_version": "0.1.0", "written": "2025-...Z"}, ...],
     "skipped": [{"model_id": 17, "name": "...", "path": "...",
                  "reason": "no mouth-open morph (あ)"}, ...],
     "failed":  [{"model_id": ..., "name": ..., "path": ..., "reason": ...}]}

Reading
-------
:func:`open_split` / :func:`open_shard` return a :class:`ShardedExamples`, a
sequence of example dicts. HDF5 files are opened lazily, per process: after a
``fork`` (torch DataLoader workers) the child notices the new pid and opens
its own handles. No torch import here.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as _dt
import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mmdsynth import __version__

from .codecs import Codec, codec_of_dataset, get_codec

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "INDEX_NAME",
    "ShardError",
    "ShardMeta",
    "ShardInfo",
    "ShardWriter",
    "ShardedExamples",
    "open_split",
    "open_shard",
    "load_index",
    "update_index",
    "write_index",
    "index_path",
    "file_sha256",
    "verify_shard",
    "shard_is_complete",
    "adopt_shard",
    "list_splits",
    "measure_read_rate",
]

FORMAT = "mmdsynth-shard"
FORMAT_VERSION = 1
INDEX_FORMAT = "mmdsynth-split-index"
INDEX_VERSION = 1
INDEX_NAME = "index.json"
IMAGE_DATASETS = ("rest", "morphed", "posed")
MODELS_COLUMNS = ("id", "name", "path")

_STR = h5py.string_dtype("utf-8")


class ShardError(ValueError):
    """A shard or index file is missing, malformed or inconsistent (one-line message)."""


# ============================================================================= metadata


@dataclass(frozen=True)
class ShardMeta:
    """What a shard's attributes record (see the module docstring).

    * ``parameter_names``: the schema's P names; ``parameter_ranges``: P
      (low, high) pairs. ``max_angle_deg``: degrees per unit of a rotation value.
    * ``image_size``: (height, width) in pixels. ``framing``: JSON-ready dict.
    * ``renderer``: the GL_RENDERER string of the context that drew the images.
    * ``spec_json``: :meth:`RenderSpec.to_json` ("" when written without a spec).
    """

    schema: str
    parameter_names: tuple[str, ...]
    parameter_ranges: tuple[tuple[float, float], ...]
    max_angle_deg: float
    preset: str
    framing: Mapping[str, Any]
    image_size: tuple[int, int]
    renderer: str
    seed: int
    split: str
    shard_index: int
    spec_json: str = ""
    plan_fingerprint: str = ""
    package_version: str = __version__

    def __post_init__(self):
        if len(self.parameter_names) != len(self.parameter_ranges):
            raise ValueError(f"{len(self.parameter_names)} parameter names but {len(self.parameter_ranges)} ranges")
        h, w = self.image_size
        if h < 1 or w < 1:
            raise ValueError(f"bad image size {self.image_size}")

    @classmethod
    def for_shard(cls, spec, shard, renderer: str) -> ShardMeta:
        """The metadata of a planned shard.

        Args:
            spec: the :class:`~mmdsynth.datasets.spec.RenderSpec`.
            shard: its :class:`~mmdsynth.datasets.plan.ShardPlan`.
            renderer: GL_RENDERER (:func:`mmdsynth.render.renderer_string`).
        """
        return cls.for_spec(spec, shard.split, shard.index, renderer, plan_fingerprint=shard.fingerprint)

    @classmethod
    def for_spec(cls, spec, split: str, shard_index: int, renderer: str, plan_fingerprint: str = "") -> ShardMeta:
        """Metadata from a spec (preset framing from :mod:`mmdsynth.render.framing`)."""
        from mmdsynth.render.framing import get_preset

        schema = spec.pose_schema
        preset = get_preset(spec.preset)
        framing = {
            "projection": "orthographic",
            "width": preset.width,
            "height": preset.height,
            "head_top_row": preset.head_top_row,
            "head_bottom_row": preset.head_bottom_row,
            "center_column": preset.center_column,
        }
        return cls(
            schema=schema.name,
            parameter_names=tuple(schema.names),
            parameter_ranges=tuple((float(lo), float(hi)) for lo, hi in schema.ranges()),
            max_angle_deg=float(spec.max_angle),
            preset=preset.name,
            framing=framing,
            image_size=(preset.height, preset.width),
            renderer=renderer,
            seed=spec.seed,
            split=split,
            shard_index=shard_index,
            spec_json=spec.to_json(),
            plan_fingerprint=plan_fingerprint,
        )


@dataclass(frozen=True)
class ShardInfo:
    """A finished shard: its path, counts, size in bytes, sha256 (hex) and plan fingerprint."""

    path: Path
    index: int
    examples: int
    models: int
    bytes: int
    sha256: str
    plan: str = ""
    renderer: str = ""
    package_version: str = __version__
    written: str = ""

    def to_record(self) -> dict[str, Any]:
        """The shard's ``index.json`` entry."""
        return {
            "file": self.path.name,
            "index": self.index,
            "examples": self.examples,
            "models": self.models,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "plan": self.plan,
            "renderer": self.renderer,
            "package_version": self.package_version,
            "written": self.written,
        }


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ============================================================================= writing


@dataclass(frozen=True)
class EncodedImage:
    """One image already compressed as a shard chunk (see :func:`encode_images`):
    ``data`` the chunk bytes, ``filter_mask`` HDF5's per-chunk filter mask,
    ``shape`` (H, W, 4), ``compression`` the codec's name (:attr:`.codecs.Codec.name`)."""

    data: bytes
    filter_mask: int
    shape: tuple[int, int, int]
    compression: str


# What reading a damaged image chunk raises: h5py's filter failure (OSError) or
# our decoders' ValueError (a bad chunk, a wrong decoded size).
_CHUNK_ERRORS = (OSError, ValueError)


def encode_images(images: np.ndarray, compression: str = "lz4", compression_level: int | None = None) -> list[EncodedImage]:
    """Compress (K,H,W,4) uint8 images into shard chunks, in memory, exactly as
    a :class:`ShardWriter` with the same codec stores them (:mod:`.codecs`),
    so render workers do the compression in parallel and the writer only
    copies bytes (``write_direct_chunk``). ``compression_level`` None: the
    codec's default. Raises ValueError for a bad array or codec."""
    codec = get_codec(compression, compression_level)
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 4:
        raise ValueError(f"images must be (K, H, W, 4) uint8, got {images.shape} {images.dtype}")
    shape = tuple(int(v) for v in images.shape[1:])
    return [EncodedImage(data, mask, shape, codec.name) for data, mask in codec.encode(images)]


def _put(ds: h5py.Dataset, row: int, image) -> None:
    """Store one image (an array, or an :class:`EncodedImage` chunk) at ``row``."""
    if isinstance(image, EncodedImage):
        ds.id.write_direct_chunk((row, 0, 0, 0), image.data, image.filter_mask)
    else:
        ds[row] = image


class ShardWriter:
    """Write one shard file, atomically.

    Usage::

        with ShardWriter(path, meta, num_examples=N) as w:
            m = w.add_model(model_id, name, library_path, rest_image, light=(ambient, directional))
            w.add_example(m, pose, morphed, posed, ambient, directional)   # N times
        info = w.info          # ShardInfo (sha256, size...) once closed

    Images are (H, W, 4) uint8 RGBA (H, W from ``meta.image_size``), or
    :class:`EncodedImage` chunks made by :func:`encode_images` with this
    writer's codec (copied as they are, without recompressing); poses
    (P,) finite numbers within the meta's parameter ranges; light magnitudes
    finite and >= 0. Examples may come in any order when ``position`` is given
    (the example's row, e.g. ``ExamplePlan.position``); without it they fill
    the rows in order.

    Everything goes to a temporary file beside ``path``. :meth:`close` checks
    that all ``num_examples`` rows were written and every example's model has
    a rest image, writes the small datasets and attributes, fsyncs and renames
    the file onto ``path`` (replacing an older file), then returns the
    :class:`ShardInfo`. Leaving the ``with`` block by an exception, or
    :meth:`abort`, removes the temporary file; nothing appears under ``path``.

    Raises:
        ValueError: bad arguments (shape, dtype, range, unknown model row,
            a row written twice); ShardError from :meth:`close` when the
            shard is incomplete (the temporary file is removed).
        OSError: the file system (folder not writable, disk full).
    """

    def __init__(self, path: str | os.PathLike, meta: ShardMeta, num_examples: int, compression: str = "lz4",
                 compression_level: int | None = None):
        codec = get_codec(compression, compression_level)  # ValueError for a bad codec or level
        if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
            raise ValueError(f"num_examples must be an integer >= 1, got {num_examples!r}")
        self.path = Path(path)
        self.meta = meta
        self.num_examples = int(num_examples)
        self.compression = compression
        self.compression_level = codec.level
        self.codec: Codec = codec
        self.info: ShardInfo | None = None
        self._h, self._w = (int(v) for v in meta.image_size)
        self._ranges = np.asarray(meta.parameter_ranges, np.float64).reshape(-1, 2)
        self._p = len(meta.parameter_names)

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._file: h5py.File | None = None
        try:
            self._file = h5py.File(self._tmp, "w")
            img = (self._h, self._w, 4)
            kw = dict(dtype=np.uint8, chunks=(1,) + img, **codec.h5_options())
            self._morphed = self._file.create_dataset("morphed", shape=(self.num_examples,) + img, **kw)
            self._posed = self._file.create_dataset("posed", shape=(self.num_examples,) + img, **kw)
            self._rest = self._file.create_dataset("rest", shape=(0,) + img, maxshape=(None,) + img, **kw)
        except BaseException:
            self._remove_tmp()
            raise
        self._models: list[tuple[str, str, str]] = []
        self._model_ids: list[int | str] = []
        self._rest_light: list[np.ndarray] = []
        self._model = np.full(self.num_examples, -1, np.int32)
        self._pose = np.zeros((self.num_examples, self._p), np.float32)
        self._light = np.zeros((self.num_examples, 2), np.float32)
        self._written = np.zeros(self.num_examples, bool)
        self._next = 0

    # -- context manager
    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self):  # a writer dropped without close/abort leaves no temporary file
        try:
            if self._file is not None or self._tmp.exists():
                if self.info is None:
                    self.abort()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    @property
    def closed(self) -> bool:
        return self._file is None

    @property
    def num_models(self) -> int:
        return len(self._models)

    def _check_open(self) -> None:
        if self._file is None:
            raise ValueError(f"{self.path}: shard writer is closed")

    def _check_image(self, image, what: str):
        if isinstance(image, EncodedImage):
            if image.shape != (self._h, self._w, 4) or image.compression != self.codec.name:
                raise ValueError(f"{what} was encoded as {image.shape} {image.compression}, "
                                 f"this shard stores ({self._h}, {self._w}, 4) {self.codec.name}")
            return image
        a = np.asarray(image)
        if a.dtype != np.uint8 or a.shape != (self._h, self._w, 4):
            raise ValueError(f"{what} must be a ({self._h}, {self._w}, 4) uint8 RGBA image, got {a.shape} {a.dtype}")
        # One encoder for every chunk of a shard: arrays are encoded like the workers' chunks.
        return encode_images(a[None], self.compression, self.compression_level)[0]

    # -- writing
    def add_model(self, model_id: int | str, name: str, path: str, rest: np.ndarray, *, light: tuple[float, float]) -> int:
        """Store a model's rest image, its (id, name, library path) and the
        (ambient, directional) magnitudes the rest image was drawn with;
        returns its row (the ``model`` value of its examples)."""
        self._check_open()
        rest_light = np.asarray(light, np.float64).reshape(-1)
        if rest_light.shape != (2,) or not (np.all(np.isfinite(rest_light)) and np.all(rest_light >= 0)):
            raise ValueError(f"light must be (ambient, directional), finite and >= 0, got {light!r}")
        if isinstance(model_id, bool) or not isinstance(model_id, (int, np.integer, str)):
            raise ValueError(f"model id must be an int or a str, got {model_id!r}")
        model_id = int(model_id) if isinstance(model_id, np.integer) else model_id
        if model_id in self._model_ids:
            raise ValueError(f"model {model_id!r} added twice")
        rest = self._check_image(rest, f"rest image of model {model_id!r}")
        m = len(self._models)
        self._rest.resize(m + 1, axis=0)
        _put(self._rest, m, rest)
        self._models.append((str(model_id), str(name), str(path)))
        self._model_ids.append(model_id)
        self._rest_light.append(rest_light)
        return m

    def add_example(self, model: int, pose, morphed: np.ndarray, posed: np.ndarray, ambient: float, directional: float,
                    position: int | None = None) -> int:
        """Write one example; returns its row.

        Args:
            model: the row :meth:`add_model` returned for its model.
            pose: (P,) the pose applied. morphed, posed: (H, W, 4) uint8.
            ambient, directional: light magnitudes.
            position: the row to write (default: the next row in order).
        """
        self._check_open()
        if position is None:
            while self._next < self.num_examples and self._written[self._next]:
                self._next += 1
            position = self._next
        if isinstance(position, bool) or not isinstance(position, (int, np.integer)) or not 0 <= position < self.num_examples:
            raise ValueError(f"example position {position!r} is outside [0, {self.num_examples})")
        if self._written[position]:
            raise ValueError(f"example {position} written twice")
        if isinstance(model, bool) or not isinstance(model, (int, np.integer)) or not 0 <= model < len(self._models):
            raise ValueError(f"model row {model!r} has not been added (add_model first; {len(self._models)} models)")
        p = np.asarray(pose, np.float64)
        if p.shape != (self._p,) or not np.all(np.isfinite(p)):
            raise ValueError(f"pose must be {self._p} finite numbers, got shape {p.shape}")
        bad = np.nonzero((p < self._ranges[:, 0] - 1e-6) | (p > self._ranges[:, 1] + 1e-6))[0]
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"pose {self.meta.parameter_names[i]}={p[i]:g} is outside [{self._ranges[i, 0]:g}, {self._ranges[i, 1]:g}]")
        light = np.array([ambient, directional], np.float64)
        if not (np.all(np.isfinite(light)) and np.all(light >= 0)):
            raise ValueError(f"light magnitudes must be finite and >= 0, got ambient={ambient!r}, directional={directional!r}")
        morphed = self._check_image(morphed, "morphed image")
        posed = self._check_image(posed, "posed image")
        _put(self._morphed, position, morphed)
        _put(self._posed, position, posed)
        self._model[position] = model
        self._pose[position] = p
        self._light[position] = light
        self._written[position] = True
        return int(position)

    def add_planned(self, example, morphed: np.ndarray, posed: np.ndarray) -> int:
        """:meth:`add_example` for an :class:`~mmdsynth.datasets.plan.ExamplePlan`
        (its ``model``, ``pose``, ``ambient``, ``directional`` and ``position``)."""
        return self.add_example(example.model, example.pose, morphed, posed, example.ambient, example.directional,
                                position=example.position)

    def close(self) -> ShardInfo:
        """Finish the file and rename it into place; returns (and keeps in
        :attr:`info`) the :class:`ShardInfo`. Raises ShardError, removing the
        temporary file, when rows are missing."""
        if self.info is not None:
            return self.info
        self._check_open()
        try:
            missing = np.nonzero(~self._written)[0]
            if len(missing):
                raise ShardError(f"{self.path}: {len(missing)} of {self.num_examples} examples were not written (first: {int(missing[0])})")
            f = self._file
            f.create_dataset("model", data=self._model)
            f.create_dataset("pose", data=self._pose)
            f.create_dataset("light", data=self._light)
            f.create_dataset("rest_light", data=np.array(self._rest_light, np.float32).reshape(-1, 2))
            f.create_dataset("models", data=np.array(self._models, dtype=object).reshape(-1, 3), dtype=_STR)
            int_ids = all(isinstance(i, int) for i in self._model_ids)
            meta = self.meta
            attrs = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "schema": meta.schema,
                "parameter_names": np.array(meta.parameter_names, dtype=object),
                "parameter_ranges": np.asarray(meta.parameter_ranges, np.float32).reshape(-1, 2),
                "max_angle_deg": float(meta.max_angle_deg),
                "preset": meta.preset,
                "framing": json.dumps(dict(meta.framing), sort_keys=True),
                "image_size": np.array([self._h, self._w], np.int32),
                "renderer": meta.renderer,
                "seed": np.int64(meta.seed),
                "split": meta.split,
                "shard_index": np.int64(meta.shard_index),
                "package_version": meta.package_version,
                "spec": meta.spec_json,
                "plan_fingerprint": meta.plan_fingerprint,
                "examples": np.int64(self.num_examples),
                "num_models": np.int64(len(self._models)),
                "compression": self.codec.name,
                "model_id_type": "int" if int_ids else "str",
                "models_columns": np.array(MODELS_COLUMNS, dtype=object),
                "created": _utc_now(),
            }
            for key, value in attrs.items():
                if isinstance(value, np.ndarray) and value.dtype == object:
                    f.attrs.create(key, value, dtype=_STR)
                else:
                    f.attrs[key] = value
            f.close()
            self._file = None
            with open(self._tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            mode = self.path.stat().st_mode & 0o777 if self.path.exists() else 0o644
            os.chmod(self._tmp, mode)
            digest = file_sha256(self._tmp)
            size = self._tmp.stat().st_size
            os.replace(self._tmp, self.path)
            _fsync_dir(self.path.parent)
        except BaseException:
            self.abort()
            raise
        self.info = ShardInfo(path=self.path, index=int(meta.shard_index), examples=self.num_examples,
                              models=len(self._models), bytes=size, sha256=digest, plan=meta.plan_fingerprint,
                              renderer=meta.renderer, package_version=meta.package_version, written=_utc_now())
        return self.info

    def abort(self) -> None:
        """Drop everything written so far: close and remove the temporary file."""
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        self._remove_tmp()

    def _remove_tmp(self) -> None:
        with contextlib.suppress(OSError):
            self._tmp.unlink()


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ============================================================================= checksums, index.json


def file_sha256(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """sha256 (hex) of a file's bytes. Raises OSError."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def verify_shard(path: str | os.PathLike, expected_sha256: str | None) -> bool:
    """True when ``path`` exists and its sha256 equals ``expected_sha256``
    (a missing, truncated, partial or altered file gives False; so does
    ``expected_sha256`` None or empty). Never raises for a bad file."""
    if not expected_sha256:
        return False
    try:
        return file_sha256(path) == expected_sha256.lower()
    except OSError:
        return False


def index_path(split_dir: str | os.PathLike) -> Path:
    """``split_dir/index.json``."""
    return Path(split_dir) / INDEX_NAME


def _empty_index(split: str | None) -> dict[str, Any]:
    return {"format": INDEX_FORMAT, "version": INDEX_VERSION, "split": split, "planned": None, "examples": 0,
            "shards": [], "skipped": [], "failed": []}


def load_index(split_dir: str | os.PathLike) -> dict[str, Any]:
    """The split's ``index.json`` as a dict (an empty index, ``shards: []``,
    when the file does not exist yet).

    Raises ShardError when the file is not a valid index (not JSON, another
    format or version, malformed entries).
    """
    path = index_path(split_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _empty_index(Path(split_dir).name)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ShardError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise ShardError(f"{path}: not an mmdsynth split index")
    if doc.get("version") != INDEX_VERSION:
        raise ShardError(f"{path}: index version {doc.get('version')!r}; this mmdsynth reads {INDEX_VERSION}")
    shards = doc.get("shards")
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and isinstance(s.get("file"), str) and isinstance(s.get("examples"), int)
            and isinstance(s.get("index"), int) for s in shards):
        raise ShardError(f"{path}: malformed 'shards' list")
    base = _empty_index(doc.get("split"))
    base.update(doc)
    return base


def write_index(split_dir: str | os.PathLike, index: Mapping[str, Any]) -> Path:
    """Write ``index`` to ``split_dir/index.json`` atomically (shards sorted
    by index, ``examples`` recomputed). Returns the path. Raises OSError."""
    from mmdsynth.mmd.atomic import atomic_write_bytes

    doc = dict(index)
    doc["shards"] = sorted(doc.get("shards", []), key=lambda s: (s["index"], s["file"]))
    doc["examples"] = int(sum(s["examples"] for s in doc["shards"]))
    order = ["format", "version", "split", "planned", "examples", "shards", "skipped", "failed"]
    doc = {**{k: doc[k] for k in order if k in doc}, **{k: v for k, v in doc.items() if k not in order}}
    path = index_path(split_dir)
    atomic_write_bytes(path, (json.dumps(doc, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))
    return path


@contextlib.contextmanager
def _index_lock(split_dir: Path) -> Iterator[None]:
    """An exclusive advisory lock (``flock`` on ``.index.json.lock``); no-op where unavailable."""
    split_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(split_dir / f".{INDEX_NAME}.lock", "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        except OSError:  # file systems without locks: go on unlocked
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def update_index(split_dir: str | os.PathLike, *, shard: ShardInfo | Mapping[str, Any] | None = None,
                 remove: Iterable[str] = (), skipped: Iterable[Mapping[str, Any]] | None = None,
                 failed: Iterable[Mapping[str, Any]] = (), planned: Mapping[str, Any] | None = None,
                 split: str | None = None) -> dict[str, Any]:
    """Read-modify-write ``split_dir/index.json`` under a lock, atomically.

    Args:
        shard: a finished shard (:class:`ShardInfo` or its record); replaces
            any entry with the same file name.
        remove: shard file names to drop from the index.
        skipped: the plan's skipped models (replaces the list; records with
            ``model_id``, ``name``, ``path``, ``reason``).
        failed: models that failed while rendering (merged by ``model_id``).
        planned: the plan's totals (``SplitPlan.planned_record()``).
        split: the split name to record.

    Returns the index as written. Raises ShardError (unreadable index) or OSError.
    """
    split_dir = Path(split_dir)
    with _index_lock(split_dir):
        index = load_index(split_dir)
        if split is not None:
            index["split"] = split
        if planned is not None:
            index["planned"] = dict(planned)
        drop = set(remove)
        if shard is not None:
            record = shard.to_record() if isinstance(shard, ShardInfo) else dict(shard)
            drop.add(record["file"])
        index["shards"] = [s for s in index["shards"] if s["file"] not in drop]
        if shard is not None:
            index["shards"].append(record)
        if skipped is not None:
            index["skipped"] = [dict(s) for s in skipped]
        failed = [dict(f) for f in failed]
        if failed:
            new_ids = {json.dumps(f.get("model_id")) for f in failed}
            index["failed"] = [f for f in index.get("failed", []) if json.dumps(f.get("model_id")) not in new_ids] + failed
        write_index(split_dir, index)
        return load_index(split_dir)


def adopt_shard(path: str | os.PathLike, fingerprint: str, examples: int, split: str, shard_index: int) -> ShardInfo | None:
    """Check a shard file that ``index.json`` does not list (copied in from
    another node's output folder, say) against its plan, and describe it.

    The file must be a readable shard of this format whose ``plan_fingerprint``,
    ``split``, ``shard_index`` and example count are the planned ones, and
    every image in it must decode. Returns its :class:`ShardInfo` (sha256 of
    the file as it is, for :func:`update_index`), or None when it does not
    qualify (it is then rendered again). Never raises for a bad file.
    """
    path = Path(path)
    try:
        with h5py.File(path, "r", locking=False) as f:
            a = f.attrs
            if (a.get("format") != FORMAT or int(a.get("format_version", -1)) != FORMAT_VERSION
                    or a.get("plan_fingerprint") != fingerprint or a.get("split") != split
                    or int(a.get("shard_index", -1)) != shard_index or int(a.get("examples", -1)) != examples):
                return None
            renderer, version, created = str(a.get("renderer", "")), str(a.get("package_version", "")), str(a.get("created", ""))
            models = int(a.get("num_models", -1))
        with open_shard(path) as shard:
            if len(shard) != examples:
                return None
            for i in range(len(shard)):
                shard[i]  # every image decodes
        return ShardInfo(path=path, index=shard_index, examples=examples, models=models,
                         bytes=path.stat().st_size, sha256=file_sha256(path), plan=fingerprint, renderer=renderer,
                         package_version=version, written=created)
    except (OSError, ValueError, KeyError, TypeError):  # ShardError is a ValueError
        return None


def shard_is_complete(path: str | os.PathLike, fingerprint: str | None = None, index: Mapping[str, Any] | None = None) -> bool:
    """Whether a rerun may keep the shard at ``path``: ``index.json`` beside it
    lists the file, the entry's plan fingerprint equals ``fingerprint`` (when
    given) and the file's sha256 matches the entry. Pass ``index`` (from
    :func:`load_index`) to avoid rereading it. A missing index, a missing or
    corrupt file, or a changed plan give False."""
    path = Path(path)
    if index is None:
        try:
            index = load_index(path.parent)
        except ShardError:
            return False
    entry = next((s for s in index.get("shards", []) if s.get("file") == path.name), None)
    if entry is None:
        return False
    if fingerprint is not None and entry.get("plan") != fingerprint:
        return False
    return verify_shard(path, entry.get("sha256"))


def list_splits(out_dir: str | os.PathLike) -> list[str]:
    """Names of the split folders under a dataset folder (those with an
    ``index.json`` or shard files), sorted."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.is_dir() and ((p / INDEX_NAME).is_file() or any(p.glob("shard-*.h5"))))


# ============================================================================= reading


class _OpenShard:
    """One shard opened for reading: the HDF5 handles plus its small arrays in memory."""

    def __init__(self, path: Path, rdcc_nbytes: int):
        try:
            # Finished shards never change, so no HDF5 file lock is needed (locks
            # fail on some network file systems).
            self.file = h5py.File(path, "r", rdcc_nbytes=rdcc_nbytes, rdcc_nslots=1, locking=False)
        except FileNotFoundError:
            raise ShardError(f"{path}: no such shard file") from None
        except OSError as exc:
            raise ShardError(f"{path}: not a readable HDF5 file ({' '.join(str(exc).split())})") from None
        f = self.file
        try:
            if f.attrs.get("format") != FORMAT:
                raise ShardError(f"{path}: not an mmdsynth shard (no format attribute {FORMAT!r})")
            version = int(f.attrs.get("format_version", -1))
            if version != FORMAT_VERSION:
                raise ShardError(f"{path}: shard format version {version}; this mmdsynth reads {FORMAT_VERSION}")
            for name in IMAGE_DATASETS + ("model", "pose", "light", "rest_light", "models"):
                if name not in f:
                    raise ShardError(f"{path}: dataset {name!r} is missing")
            self.rest, self.morphed, self.posed = (_ImageReader(f[k]) for k in IMAGE_DATASETS)
            self.model = f["model"][()]
            self.pose = f["pose"][()]
            self.light = f["light"][()]
            self.rest_light = f["rest_light"][()]
            models = f["models"].asstr()[()] if len(f["models"]) else np.zeros((0, 3), object)
            as_int = f.attrs.get("model_id_type") == "int"
            self.model_ids = [int(m[0]) if as_int else str(m[0]) for m in models]
            self.model_names = [str(m[1]) for m in models]
            self.model_paths = [str(m[2]) for m in models]
            n = len(f["morphed"])
            m = len(f["rest"])
            if not (len(f["posed"]) == len(self.model) == len(self.pose) == len(self.light) == n):
                raise ShardError(f"{path}: datasets disagree on the number of examples")
            if len(self.model_ids) != m or len(self.rest_light) != m:
                raise ShardError(f"{path}: 'rest', 'rest_light' and 'models' disagree on the number of models")
            if n and (self.model.min() < 0 or self.model.max() >= m):
                raise ShardError(f"{path}: 'model' indexes outside 'rest'/'models'")
            self.length = n
        except ShardError:
            f.close()
            raise
        except (KeyError, ValueError, OSError) as exc:
            f.close()
            raise ShardError(f"{path}: malformed shard ({' '.join(str(exc).split())})") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.file.close()


class _ImageReader:
    """Reads image ``i`` of an (N, H, W, C) dataset. Chunks of one image
    compressed by a codec we decode (:func:`.codecs.codec_of_dataset`: lz4,
    zstd, gzip) are read raw (:meth:`chunk`) and decoded here (:meth:`decode`),
    without HDF5's filter pipeline; other layouts go through h5py's low-level
    API with reusable dataspaces (about 3x less Python overhead than
    ``dataset[i]``)."""

    def __init__(self, ds: h5py.Dataset):
        self.id = ds.id
        self.shape = tuple(ds.shape[1:])
        self.dtype = ds.dtype
        self.count = (1,) + self.shape
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.fspace = ds.id.get_space()
        self.mspace = h5py.h5s.create_simple(self.count)
        self.zeros = (0,) * len(self.shape)
        codec = codec_of_dataset(ds) if ds.chunks == self.count else None
        self.codec = codec if codec is not None and codec.family != "lzf" else None

    def __call__(self, i: int) -> np.ndarray:
        out = np.empty(self.count, self.dtype)
        self.fspace.select_hyperslab((i,) + self.zeros, self.count)
        self.id.read(self.mspace, self.fspace, out)
        return out[0]

    def chunk(self, i: int) -> bytes | None:
        """The compressed chunk of image ``i`` when we decode it ourselves
        (else None: read it with ``self(i)``)."""
        if self.codec is None:
            return None
        mask, data = self.id.read_direct_chunk((i,) + self.zeros)
        return data if mask == 0 else None

    def decode(self, data: bytes) -> np.ndarray:
        """A chunk from :meth:`chunk` as a (writable) image array."""
        image = np.frombuffer(self.codec.decode(data, self.nbytes), self.dtype).reshape(self.shape)
        return image if image.flags.writeable else image.copy()  # fresh and writable, as h5py gives


def _read_pair(a: _ImageReader, b: _ImageReader, row: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``row`` of two datasets (raw chunks decoded here when possible)."""
    ca, cb = a.chunk(row), b.chunk(row)
    return (a(row) if ca is None else a.decode(ca)), (b(row) if cb is None else b.decode(cb))


class ShardedExamples(Sequence):
    """A read-only sequence of examples stored in one or more shard files.

    ``examples[i]`` (negative ``i`` counts from the end) is a dict:

    * ``rest``, ``morphed``, ``posed``: (H, W, 4) uint8 RGBA (fresh arrays).
    * ``pose``: (P,) float32 (names: :attr:`parameter_names`).
    * ``light``: (2,) float32, ambient and directional magnitude.
    * ``rest_light``: (2,) float32, the lights of ``rest``.
    * ``model_id`` (int or str, as the catalog has it), ``model_name``,
      ``model_path`` (the model file in the library; str).
    * ``index``: the example's position in this sequence; ``shard``: the
      shard's file name; ``position``: its row in that shard.

    ``examples[a:b:c]`` is another :class:`ShardedExamples` over those rows
    (no data read). Files are opened on first use in each process and kept
    open; a forked child (torch DataLoader worker) opens its own handles, and
    pickling (spawned workers) drops them. Decoded rest images are cached per
    (shard, model) (``rest_cache`` entries, LRU).

    Raises IndexError for an index out of range, ShardError when a file is
    missing or not a valid shard, or an example's image data is damaged.
    """

    def __init__(self, files: Sequence[str | os.PathLike], counts: Sequence[int] | None = None, rest_cache: int = 64,
                 rdcc_nbytes: int = 0, _rows: range | None = None):
        self._files = [Path(f) for f in files]
        if counts is None:
            counts = []
            for f in self._files:
                shard = _OpenShard(f, rdcc_nbytes)
                counts.append(shard.length)
                shard.close()
        if len(counts) != len(self._files):
            raise ValueError("one count per file")
        self._counts = [int(c) for c in counts]
        self._starts = np.concatenate([[0], np.cumsum(self._counts)]).astype(np.int64).tolist()
        self._total = self._starts[-1]
        self._rows = _rows if _rows is not None else range(self._total)
        self._rest_cache_size = max(0, int(rest_cache))
        self._rdcc_nbytes = int(rdcc_nbytes)
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._open: dict[int, _OpenShard] = {}
        self._rest_cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    # -- process safety
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_open", "_rest_cache", "_pid"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def _shard(self, s: int) -> _OpenShard:
        if self._pid != os.getpid():
            # Forked: the parent's handles belong to the parent; drop our copies
            # (h5py closes them in this process only) and open fresh ones.
            self._open.clear()
            self._reset()
        shard = self._open.get(s)
        if shard is None:
            shard = _OpenShard(self._files[s], self._rdcc_nbytes)
            if shard.length != self._counts[s]:
                shard.close()
                raise ShardError(f"{self._files[s]}: holds {shard.length} examples, the index says {self._counts[s]}")
            self._open[s] = shard
        return shard

    def close(self) -> None:
        """Close this process's open files (they reopen on the next access)."""
        if self._pid == os.getpid():
            for shard in self._open.values():
                shard.close()
        self._reset()

    def __enter__(self) -> ShardedExamples:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- sequence
    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ShardedExamples(self._files, self._counts, self._rest_cache_size, self._rdcc_nbytes, _rows=self._rows[i])
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"example index must be an int or a slice, got {type(i).__name__}")
        n = len(self._rows)
        if not -n <= i < n:
            raise IndexError(f"example index {i} out of range for {n} examples")
        return self._example(self._rows[int(i)], int(i) % n)

    def locate(self, i: int) -> tuple[Path, int]:
        """(shard file, row in it) of example ``i``."""
        n = len(self._rows)
        if not -n <= i < n:
            raise IndexError(f"example index {i} out of range for {n} examples")
        g = self._rows[int(i)]
        s = bisect.bisect_right(self._starts, g) - 1
        return self._files[s], g - self._starts[s]

    def _example(self, g: int, index: int) -> dict[str, Any]:
        s = bisect.bisect_right(self._starts, g) - 1
        row = g - self._starts[s]
        shard = self._shard(s)
        m = int(shard.model[row])
        try:
            morphed, posed = _read_pair(shard.morphed, shard.posed, row)
            rest = self._rest(s, shard, m)
        except _CHUNK_ERRORS as exc:
            raise ShardError(f"{self._files[s]}: row {row}: image data is damaged "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None
        return {
            "rest": rest,
            "morphed": morphed,
            "posed": posed,
            "pose": shard.pose[row].copy(),
            "light": shard.light[row].copy(),
            "model_id": shard.model_ids[m],
            "model_name": shard.model_names[m],
            "model_path": shard.model_paths[m],
            "rest_light": shard.rest_light[m].copy(),
            "index": index,
            "shard": self._files[s].name,
            "position": row,
        }

    def _rest(self, s: int, shard: _OpenShard, m: int) -> np.ndarray:
        key = (s, m)
        cached = self._rest_cache.get(key)
        if cached is None:
            cached = shard.rest(m)
            if self._rest_cache_size:
                self._rest_cache[key] = cached
                if len(self._rest_cache) > self._rest_cache_size:
                    self._rest_cache.popitem(last=False)
        else:
            self._rest_cache.move_to_end(key)
        return cached.copy()

    # -- metadata
    @property
    def files(self) -> list[Path]:
        return list(self._files)

    @property
    def attrs(self) -> dict[str, Any]:
        """Attributes of the first shard (strings as str, arrays as numpy);
        {} when there are no shards."""
        if not self._files:
            return {}
        shard = self._shard(0)
        out = {}
        for key, value in shard.file.attrs.items():
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            elif isinstance(value, np.ndarray) and value.dtype.kind == "O":
                value = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value]
            out[key] = value
        return out

    @property
    def parameter_names(self) -> list[str]:
        """The pose parameter names (from the first shard)."""
        return list(self.attrs.get("parameter_names", []))

    def __repr__(self) -> str:
        return f"<ShardedExamples {len(self)} examples in {len(self._files)} shard(s)>"


def open_shard(path: str | os.PathLike, **kw) -> ShardedExamples:
    """The examples of one shard file. Raises ShardError (missing or invalid file)."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{path}: no such shard file")
    return ShardedExamples([path], **kw)


def open_split(out_dir: str | os.PathLike, split: str, **kw) -> ShardedExamples:
    """The examples of ``out_dir/split``, in shard order.

    With an ``index.json`` the shards it lists are used (its counts, so no
    file is opened until an example is read); without one, every
    ``shard-*.h5`` in the folder (each opened once to count its examples).
    Keyword arguments go to :class:`ShardedExamples` (``rest_cache``,
    ``rdcc_nbytes``: HDF5 chunk cache bytes per file, 0 by default, since a
    random read uses each image chunk once).

    Raises ShardError: no such split folder, no shards, a listed shard missing,
    an invalid index.
    """
    split_dir = Path(out_dir) / split
    if not split_dir.is_dir():
        known = list_splits(out_dir)
        hint = f" (splits there: {', '.join(known)})" if known else ""
        raise ShardError(f"{split_dir}: no such split folder{hint}")
    if index_path(split_dir).is_file():
        index = load_index(split_dir)
        entries = sorted(index["shards"], key=lambda e: e["index"])
        files = [split_dir / e["file"] for e in entries]
        for f in files:
            if not f.is_file():
                raise ShardError(f"{f}: listed in {INDEX_NAME} but missing")
        counts = [e["examples"] for e in entries]
    else:
        files = sorted(split_dir.glob("shard-*.h5"))
        counts = None
    if not files:
        raise ShardError(f"{split_dir}: no shards")
    return ShardedExamples(files, counts, **kw)


def measure_read_rate(examples: ShardedExamples, n: int = 2000, seed: int = 0, warmup: int = 50) -> dict[str, float]:
    """Random-access read speed of ``examples`` in this process.

    Reads ``warmup`` examples (opening files), then ``n`` uniformly random
    ones. Returns ``{"examples": n, "per_second": wall-clock rate,
    "per_cpu_second": rate per CPU-second of this process, "ms_per_example":
    wall milliseconds}``. Raises ValueError for an empty sequence.
    """
    import time

    if len(examples) == 0:
        raise ValueError("no examples to read")
    idx = np.random.default_rng(seed).integers(0, len(examples), n + warmup)
    for i in idx[:warmup]:
        examples[int(i)]
    wall, cpu = time.perf_counter(), time.process_time()
    for i in idx[warmup:]:
        examples[int(i)]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"examples": n, "per_second": n / wall, "per_cpu_second": n / max(cpu, 1e-9), "ms_per_example": wall / n * 1e3}
