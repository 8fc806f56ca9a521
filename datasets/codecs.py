"""Image chunk codecs of the shard format: one (H, W, 4) uint8 image <-> one HDF5 chunk.

Shards store each image as one chunk of an HDF5 dataset compressed by an HDF5
filter, so any HDF5 reader with the filter can read them. For speed, render
workers make the chunk bytes themselves (the writer copies them with
``write_direct_chunk``) and readers decode raw chunks (``read_direct_chunk``)
with the same libraries, without HDF5's filter pipeline:

========= ======================= ============================================ ==============
name      HDF5 filter (id)        chunk bytes                                  encode/decode
========= ======================= ============================================ ==============
``lz4``   LZ4 (32004)             8-byte big-endian original size, 4-byte      ``lz4.block``
                                  big-endian block size, then per block a
                                  4-byte big-endian compressed size and the
                                  LZ4 block (stored as is when it would not
                                  shrink)
``zstd``  Zstandard (32015)       one Zstandard frame (content size and        ``zstandard``
                                  checksum set)
``gzip``  deflate (1, built in)   one zlib stream                              ``zlib_ng``
``lzf``   LZF (32000, h5py's)     LZF                                          HDF5 (no fast path)
========= ======================= ============================================ ==============

Damage: gzip (Adler-32) and zstd (XXH64) chunks carry a checksum, so any
damaged chunk fails to decode; lz4 and lzf chunks carry none, so only damage
that breaks their structure is noticed when reading. Every shard's sha256 in
``index.json`` is the integrity check (:func:`.shards.verify_shard`; the render
job checks it before it keeps a shard).

The LZ4 and Zstandard filters are registered with HDF5 by :mod:`hdf5plugin`
(imported here); other programs read such shards with ``import hdf5plugin``
before ``h5py.File``. Chunk layouts: the LZ4 filter's ``H5Zlz4.c`` (HDF Group
filter registry, id 32004) and the Zstandard filter's ``zstd_h5plugin.c``
(id 32015), as shipped in hdf5plugin; the tests check both against it.

Measured on THA1 renders of Gene (256x256 RGBA, mostly transparent) on the
2-core development machine, per image: lz4 60.5 KiB, encode 0.49 ms, decode
0.05 ms; zstd level 1 49.0 KiB, 0.68 ms, 0.14 ms; gzip level 1 (zlib-ng)
61.2 KiB, 0.93 ms, 0.52 ms. Reading is what a trainer waits for, so ``lz4``
is the render spec's default; ``zstd`` keeps a dataset about 20% smaller.
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass

import h5py
import hdf5plugin
import lz4.block
import numpy as np
import zstandard
from zlib_ng import zlib_ng

__all__ = ["CODECS", "Codec", "codec_of_dataset", "get_codec"]

#: Codec families and the compression levels they take ((low, high, default) or None).
CODECS: dict[str, tuple[int, int, int] | None] = {
    "lz4": None,
    "zstd": (1, 22, 1),
    "gzip": (0, 9, 4),
    "lzf": None,
}

_FILTER_IDS = {"lz4": 32004, "zstd": 32015, "gzip": h5py.h5z.FILTER_DEFLATE, "lzf": 32000}
_LZ4_HEADER = struct.Struct(">qi")
_LZ4_BLOCK = struct.Struct(">i")


@dataclass(frozen=True)
class Codec:
    """One way of compressing image chunks: a family (``lz4``, ``zstd``,
    ``gzip``, ``lzf``) and, for ``zstd`` and ``gzip``, a level.

    :attr:`name` is what shards record (``"lz4"``, ``"zstd-1"``, ``"gzip-4"``,
    ``"lzf"``). Build one with :func:`get_codec`.
    """

    family: str
    level: int | None = None

    @property
    def name(self) -> str:
        return self.family if self.level is None else f"{self.family}-{self.level}"

    def h5_options(self) -> dict:
        """Keyword arguments of ``h5py.Group.create_dataset`` for this filter."""
        if self.family == "lz4":
            return dict(hdf5plugin.LZ4())
        if self.family == "zstd":
            return dict(hdf5plugin.Zstd(clevel=self.level))
        if self.family == "gzip":
            return {"compression": "gzip", "compression_opts": self.level}
        return {"compression": "lzf"}

    def encode(self, images: np.ndarray) -> list[tuple[bytes, int]]:
        """Chunks of (K, H, W, C) uint8 images, one per image, exactly as
        HDF5's filter stores them: a list of (chunk bytes, filter mask)."""
        images = np.ascontiguousarray(images)
        if self.family == "lz4":
            return [(_lz4_chunk(image.data), 0) for image in images]
        if self.family == "zstd":
            # The frame checksum (XXH64) lets a reader notice a damaged chunk.
            comp = zstandard.ZstdCompressor(level=self.level, write_content_size=True, write_checksum=True)
            return [(comp.compress(image.data), 0) for image in images]
        if self.family == "gzip":
            return [(zlib_ng.compress(image.data, self.level), 0) for image in images]
        return _through_hdf5(images, self)

    def decode(self, data: bytes, nbytes: int) -> bytes | bytearray | None:
        """The ``nbytes`` raw bytes of one chunk (lz4: a bytearray, decoded in
        place without a copy), or None when this codec has
        no decoder here (``lzf``: read through HDF5). Raises ValueError for a
        damaged chunk (bad header, a decoder error, a wrong size)."""
        if self.family == "lzf":
            return None
        try:
            if self.family == "lz4":
                out = _lz4_raw(data)
            elif self.family == "zstd":
                out = _zstd_decompressor().decompress(data, max_output_size=nbytes)
            else:
                out = zlib_ng.decompress(data)
        except (lz4.block.LZ4BlockError, zstandard.ZstdError, zlib_ng.error, struct.error) as exc:
            raise ValueError(f"{self.name} chunk does not decode: {exc}") from None
        if len(out) != nbytes:
            raise ValueError(f"{self.name} chunk decodes to {len(out)} bytes, expected {nbytes}")
        return out


def get_codec(compression: str, level: int | None = None) -> Codec:
    """The codec ``compression`` (a family name of :data:`CODECS`) at ``level``
    (None: the family's default; families without levels take None only).
    Raises ValueError naming the problem."""
    if compression not in CODECS:
        raise ValueError(f"compression must be one of {', '.join(map(repr, CODECS))}, got {compression!r}")
    levels = CODECS[compression]
    if levels is None:
        if level is not None:
            raise ValueError(f"compression {compression!r} takes no level, got {level!r}")
        return Codec(compression)
    low, high, default = levels
    level = default if level is None else level
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not low <= level <= high:
        raise ValueError(f"{compression} level must be an integer {low}..{high}, got {level!r}")
    return Codec(compression, int(level))


def codec_of_dataset(ds: h5py.Dataset) -> Codec | None:
    """The codec of a dataset compressed by exactly one filter we know (for
    the fast raw-chunk path), with the level its filter records; else None."""
    plist = ds.id.get_create_plist()
    if plist.get_nfilters() != 1:
        return None
    code, _flags, values, _name = plist.get_filter(0)
    for family, filter_id in _FILTER_IDS.items():
        if code == filter_id:
            levels = CODECS[family]
            if levels is None:
                return Codec(family)
            level = int(values[0]) if len(values) and levels[0] <= int(values[0]) <= levels[1] else levels[2]
            return Codec(family, level)
    return None


_LOCAL = threading.local()


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    """This thread's Zstandard decompressor (one may not be shared between
    threads; making one per chunk costs about a fifth of decoding it)."""
    d = getattr(_LOCAL, "zstd", None)
    if d is None:
        d = _LOCAL.zstd = zstandard.ZstdDecompressor()
    return d


def _lz4_chunk(raw) -> bytes:
    """One-block chunk of HDF5's LZ4 filter (block size = the image size)."""
    raw = memoryview(raw).cast("B")
    n = len(raw)
    block = lz4.block.compress(raw, store_size=False)
    if len(block) >= n:  # incompressible: the filter stores the block as is
        block = bytes(raw)
    return _LZ4_HEADER.pack(n, n) + _LZ4_BLOCK.pack(len(block)) + block


def _lz4_raw(data: bytes) -> bytes | bytearray:
    """Decode a chunk of HDF5's LZ4 filter (any number of blocks). Raises
    ValueError (or the decoder's error) for a damaged chunk."""
    total, block_size = _LZ4_HEADER.unpack_from(data, 0)
    if total < 0 or block_size <= 0:
        raise ValueError(f"lz4 chunk header: size {total}, block size {block_size}")
    view = memoryview(data)
    pos = _LZ4_HEADER.size
    pieces = []
    left = total
    while left > 0:
        size = min(block_size, left)
        (stored,) = _LZ4_BLOCK.unpack_from(data, pos)
        pos += _LZ4_BLOCK.size
        if stored <= 0 or pos + stored > len(data):
            raise ValueError(f"lz4 chunk: block of {stored} bytes at byte {pos} runs past the chunk")
        piece = view[pos:pos + stored]
        if stored == size:  # stored as is
            pieces.append(bytes(piece))
        else:  # a bytearray: the single-block chunks we write decode without another copy
            pieces.append(lz4.block.decompress(piece, uncompressed_size=size, return_bytearray=True))
        pos += stored
        left -= size
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _through_hdf5(images: np.ndarray, codec: Codec) -> list[tuple[bytes, int]]:
    """Chunks made by HDF5's own filter, in an in-memory file (lzf)."""
    k = len(images)
    name = f"mmdsynth-encode-{os.getpid()}-{id(images)}.h5"
    out = []
    with h5py.File(name, "w", driver="core", backing_store=False) as f:
        ds = f.create_dataset("x", shape=images.shape, dtype=images.dtype, chunks=(1,) + images.shape[1:],
                              **codec.h5_options())
        for i in range(k):
            ds[i] = images[i]
        zeros = (0,) * (images.ndim - 1)
        for i in range(k):
            mask, data = ds.id.read_direct_chunk((i,) + zeros)
            out.append((bytes(data), int(mask)))
    return out
