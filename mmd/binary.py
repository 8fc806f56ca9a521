"""Bounds-checked little-endian reading and writing shared by the PMX and PMD codecs.

Every read names its field, so a failure becomes an :class:`MMDFormatError`
with the file, byte offset and field. Counts are checked against the bytes
left *before* anything is allocated, which bounds memory by the file size.
"""

from __future__ import annotations

import struct

import numpy as np

from .errors import MMDFormatError

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_F32 = struct.Struct("<f")
_VEC = {n: struct.Struct(f"<{n}f") for n in (2, 3, 4)}

# numpy dtypes of PMX sized indices: vertex indices are unsigned for sizes 1
# and 2; every other index is signed with -1 meaning "none" (PMX 2.0 spec).
UNSIGNED_INDEX = {1: np.dtype("u1"), 2: np.dtype("<u2"), 4: np.dtype("<i4")}
SIGNED_INDEX = {1: np.dtype("i1"), 2: np.dtype("<i2"), 4: np.dtype("<i4")}


class BinaryReader:
    """Sequential reader over ``data`` (bytes) with a cursor ``pos``.

    All ``read_*`` methods raise :class:`MMDFormatError` on truncation.
    """

    def __init__(self, data: bytes, path: str | None = None):
        self.data = data
        self.view = memoryview(data)
        self.pos = 0
        self.path = path

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def fail(self, field: str, reason: str, offset: int | None = -1) -> MMDFormatError:
        """An error at ``offset`` (default: the cursor) to ``raise``."""
        return MMDFormatError(self.path, self.pos if offset == -1 else offset, field, reason)

    def need(self, size: int, field: str) -> None:
        if size > len(self.data) - self.pos:
            raise self.fail(field, f"file ends: need {size} bytes, {self.remaining} left")

    def _unpack(self, st: struct.Struct, field: str):
        pos = self.pos
        if pos + st.size > len(self.data):
            raise self.fail(field, f"file ends: need {st.size} bytes, {self.remaining} left")
        self.pos = pos + st.size
        return st.unpack_from(self.data, pos)

    def u8(self, field: str) -> int:
        return self._unpack(_U8, field)[0]

    def u16(self, field: str) -> int:
        return self._unpack(_U16, field)[0]

    def i32(self, field: str) -> int:
        return self._unpack(_I32, field)[0]

    def u32(self, field: str) -> int:
        return self._unpack(_U32, field)[0]

    def f32(self, field: str) -> float:
        return self._unpack(_F32, field)[0]

    def vec(self, n: int, field: str) -> tuple[float, ...]:
        return self._unpack(_VEC[n], field)

    def struct(self, st: struct.Struct, field: str) -> tuple:
        """Unpack a precompiled ``struct.Struct`` at the cursor."""
        return self._unpack(st, field)

    def raw(self, size: int, field: str) -> bytes:
        self.need(size, field)
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out

    def count(self, field: str, item_size: int, signed: bool = False) -> int:
        """Read a 4-byte element count and check that ``count * item_size``
        (the smallest possible size of the elements) fits in what is left."""
        start = self.pos
        n = self.i32(field) if signed else self.u32(field)
        if n < 0:
            raise self.fail(field, f"negative count {n}", start)
        if n * item_size > self.remaining:
            raise self.fail(
                field,
                f"count {n} needs at least {n * item_size} bytes, {self.remaining} left",
                start,
            )
        return n

    def array(self, dtype: np.dtype, count: int, field: str) -> np.ndarray:
        """``count`` records of ``dtype`` as a read-only view (no copy)."""
        dtype = np.dtype(dtype)
        size = dtype.itemsize * count
        self.need(size, field)
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += size
        return out

    def index(self, size: int, field: str, unsigned: bool = False) -> int:
        """A PMX sized index (1, 2 or 4 bytes)."""
        dt = (UNSIGNED_INDEX if unsigned else SIGNED_INDEX)[size]
        pos = self.pos
        self.need(size, field)
        self.pos += size
        return int.from_bytes(self.data[pos : pos + size], "little", signed=dt.kind == "i")


def fixed_text(raw: bytes, encoding: str = "cp932") -> str:
    """A fixed-size PMD string: cut at the first NUL, then decoded (undecodable
    bytes become U+FFFD; real files often carry garbage after the NUL)."""
    end = raw.find(b"\0")
    if end >= 0:
        raw = raw[:end]
    return raw.decode(encoding, errors="replace")


class BinaryWriter:
    """Little-endian byte builder for the PMX writer."""

    def __init__(self):
        self.parts: list[bytes] = []

    def add(self, data: bytes) -> None:
        self.parts.append(bytes(data))

    def pack(self, fmt: str, *values) -> None:
        self.parts.append(struct.pack("<" + fmt, *values))

    def array(self, arr: np.ndarray, dtype) -> None:
        self.parts.append(np.ascontiguousarray(arr, dtype=dtype).tobytes())

    def getvalue(self) -> bytes:
        return b"".join(self.parts)
