"""Texture files of MMD models: finding them as MMD does, and decoding them.

MMD runs on Windows, so the texture names stored in PMX/PMD files are
Windows paths relative to the model's folder: backslashes separate folders,
and the file system ignores case (``Tex\\Face.PNG`` finds ``tex/face.png``).
Models are also moved between systems that store Unicode names differently
(macOS writes decomposed NFD names, Windows composed NFC ones), and
archives are unpacked with full-width/half-width variants of the same
characters. :func:`resolve_texture_path` reproduces MMD's lookup on a
case-sensitive POSIX file system while tolerating those differences.

:func:`decode_texture` turns any image file MMD can load (BMP, PNG, TGA,
JPEG, DDS, GIF; ``.sph``/``.spa`` sphere maps are BMPs under another name)
into an (H,W,4) uint8 RGBA array, row 0 at the top, straight alpha. The file
type is recognised from its content, not its extension (MMD's loader, D3DX,
does the same, and mislabelled files are common).

:func:`load_texture` is what :meth:`mmdsynth.mmd.Model.texture_image` calls;
:func:`texture_report` lists referenced and missing textures without decoding.
"""

from __future__ import annotations

import io
import operator
import os
import re
import struct
import threading
import time
import unicodedata
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model

__all__ = [
    "TextureError",
    "decode_texture",
    "load_texture",
    "resolve_texture_path",
    "texture_report",
]


class TextureError(Exception):
    """A texture file that cannot be decoded; ``str(err)`` is one line."""


# --------------------------------------------------------------------------
# Path resolution
# --------------------------------------------------------------------------

# Longest name we try to resolve. Windows' classic MAX_PATH is 260 characters;
# anything far longer is garbage, and rejecting it early keeps the cost bounded.
_MAX_NAME_CHARS = 4096

# Directory listings, keyed on the directory's path string. An entry is
# (st_dev, st_ino, st_mtime_ns, listed_at_ns, _Listing). It is reused while the
# directory's identity and mtime are unchanged. A listing taken less than
# _MTIME_SLACK_NS after that mtime may miss a file created later within the same
# mtime tick (coarse-mtime file systems: 1-2 s), so a miss in it re-lists.
_LISTING_CACHE: OrderedDict[str, tuple[int, int, int, int, _Listing]] = OrderedDict()
_LISTING_CACHE_MAX = 2048
_MTIME_SLACK_NS = 2_000_000_000
_LISTING_LOCK = threading.Lock()

_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def _key_nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


def _key_case(s: str) -> str:
    # Case-insensitive and normalisation-insensitive (canonical equivalence).
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", s).casefold())


def _key_compat(s: str) -> str:
    # Compatibility equivalence as well (full-width/half-width, ligatures...):
    # an approximation of Unicode's NFKC_Casefold.
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", s).casefold())


def _key_trailing(s: str) -> str:
    # Windows silently drops trailing dots and spaces from path components.
    return _key_compat(s).rstrip(" .")


# Matching levels, strictest first; a component is looked up at each level in
# turn until some entry of the directory matches.
_KEY_FUNCS = (_key_nfc, _key_case, _key_compat, _key_trailing)


class _Listing:
    """The entries of one directory, indexed for tolerant look-up."""

    __slots__ = ("names", "indexes")

    def __init__(self, names: list[str]):
        self.names = frozenset(names)
        # One index per level of _KEY_FUNCS, built on first use.
        self.indexes: list[dict[str, list[str]] | None] = [None] * len(_KEY_FUNCS)

    def _index(self, level: int) -> dict[str, list[str]]:
        index = self.indexes[level]
        if index is None:
            key = _KEY_FUNCS[level]
            index = {}
            for name in sorted(self.names):
                index.setdefault(key(name), []).append(name)
            self.indexes[level] = index
        return index

    def candidates(self, component: str) -> list[str]:
        """Entries matching ``component``, best match first (exact, then the
        strictest level with a match); ties in sorted order."""
        if component in self.names:
            return [component]
        for level, key in enumerate(_KEY_FUNCS):
            found = self._index(level).get(key(component))
            if found:
                return found
        return []


def _listing(directory: str, refresh: bool = False) -> tuple[_Listing | None, bool]:
    """The (possibly cached) listing of ``directory`` and whether it can be
    trusted to be complete; (None, True) if it is not a readable directory.

    A cached listing is dropped when the directory's identity or mtime changed.
    One taken within ``_MTIME_SLACK_NS`` of the mtime is still returned (a hit
    in it is verified on disk anyway) but flagged untrusted, so that a miss
    re-lists the directory (``refresh=True``) before giving up."""
    try:
        st = os.stat(directory)
    except (OSError, ValueError):
        return None, True
    if not refresh:
        with _LISTING_LOCK:
            entry = _LISTING_CACHE.get(directory)
            if (
                entry is not None
                and entry[0] == st.st_dev
                and entry[1] == st.st_ino
                and entry[2] == st.st_mtime_ns
            ):
                _LISTING_CACHE.move_to_end(directory)
                return entry[4], entry[3] - entry[2] > _MTIME_SLACK_NS
    try:
        names = os.listdir(directory)
    except (OSError, ValueError):
        return None, True
    listing = _Listing(names)
    with _LISTING_LOCK:
        _LISTING_CACHE[directory] = (st.st_dev, st.st_ino, st.st_mtime_ns, time.time_ns(), listing)
        _LISTING_CACHE.move_to_end(directory)
        while len(_LISTING_CACHE) > _LISTING_CACHE_MAX:
            _LISTING_CACHE.popitem(last=False)
    return listing, True


def _is_file(path: str) -> bool:
    try:
        return os.path.isfile(path)
    except (OSError, ValueError):
        return False


def _match(base: str, parts: list[str]) -> str | None:
    """Find the file ``base/parts...`` with tolerant component matching.

    Tries the exact path first (one ``stat``), then matches each component
    against cached directory listings, backtracking over ambiguous matches
    (e.g. both ``Tex/`` and ``tex/`` exist and only one holds the file)."""
    if not parts:
        return None
    exact = os.path.join(base, *parts)
    if _is_file(exact):
        return exact
    return _match_tolerant(base, parts, 0)


def _match_tolerant(base: str, parts: list[str], depth: int) -> str | None:
    listing, trusted = _listing(base)
    found = _match_in(listing, base, parts, depth)
    if found is None and not trusted:
        found = _match_in(_listing(base, refresh=True)[0], base, parts, depth)
    return found


def _match_in(listing: _Listing | None, base: str, parts: list[str], depth: int) -> str | None:
    if listing is None:
        return None
    last = len(parts) == 1
    for name in listing.candidates(parts[0])[:8]:  # bound the backtracking
        path = os.path.join(base, name)
        if last:
            if _is_file(path):
                return path
        elif depth < 64:
            found = _match_tolerant(path, parts[1:], depth + 1)
            if found is not None:
                return found
    return None


def resolve_texture_path(model_dir: Path, name: str) -> Path | None:
    """Find the file a PMX/PMD texture name refers to, as MMD on Windows would.

    Args:
        model_dir: the folder holding the model file (names are relative to it).
        name: the texture name exactly as stored in the model file.

    Returns:
        The path of an existing regular file (``model_dir`` joined with the
        names found on disk, so it is absolute iff ``model_dir`` is), or None
        when nothing matches. Never raises, whatever ``name`` holds.

    Rules, in order:
      * The name is cut at its first NUL (Windows APIs read C strings) and
        stripped of surrounding whitespace; empty -> None.
      * ``\\`` and ``/`` both separate components; empty and ``.`` components
        are dropped and ``..`` is applied lexically, as Win32 path
        normalisation does.
      * Each component is matched exactly if that entry exists, else by Unicode
        canonical equivalence (NFC vs NFD), else case-insensitively, else by
        compatibility equivalence (NFKC: full-width vs half-width), else
        ignoring trailing dots and spaces (which Windows drops). Directory
        listings are cached per directory and invalidated by its mtime.
      * An absolute name (``C:\\...``, ``\\\\server\\...``, ``/...``) or one
        whose ``..`` climbs above ``model_dir`` is first tried as written
        (POSIX absolute paths and escaping relative ones only), then its
        trailing components are looked up inside ``model_dir``, longest suffix
        first, ending with the bare file name.
      * Last resort: the whole name as one file name with its backslashes kept
        (some unzip tools create such files from Windows archives).
    """
    try:
        return _resolve(Path(model_dir), name)
    except Exception:  # noqa: BLE001 - documented never to raise
        return None


def _resolve(model_dir: Path, name: str) -> Path | None:
    if not isinstance(name, str):
        return None
    name = name.split("\0", 1)[0].strip()
    if not name or len(name) > _MAX_NAME_CHARS:
        return None
    base = os.fspath(model_dir)

    raw = name.replace("\\", "/")
    has_drive = bool(_DRIVE_RE.match(raw))
    if has_drive:  # "C:\\x" or drive-relative "C:x": meaningless here
        raw = raw[2:]
    is_absolute = has_drive or raw.startswith("/")
    parts: list[str] = []
    ups = 0  # how far the name climbs above model_dir
    for part in raw.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            else:
                ups += 1
            continue
        parts.append(part)
    if not parts:
        return None

    if not is_absolute and ups == 0:
        found = _match(base, parts)
    else:
        found = None
        if not has_drive and raw.startswith("/") and not raw.startswith("//"):
            found = _match("/", parts)  # a POSIX absolute path
        elif not is_absolute:
            up = os.path.abspath(base)
            for _ in range(ups):
                up = os.path.dirname(up)
            found = _match(up, parts)
        if found is None:
            for start in range(len(parts)):
                found = _match(base, parts[start:])
                if found is not None:
                    break

    if found is None and "\\" in name:
        literal = os.path.join(base, name)
        if _is_file(literal):
            found = literal
    return Path(found) if found is not None else None


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------

_BI_RGB = 0
_BI_BITFIELDS = 3


def _decode_bmp32(data: bytes) -> np.ndarray | None:
    """Decode a 32 bits-per-pixel uncompressed BMP with its fourth byte as alpha.

    Pillow reads 32-bit ``BI_RGB`` BMPs as RGB (the fourth byte is "reserved"
    in the format), but MMD's loader uses it as alpha and many MMD textures
    rely on that. Returns None when the file is not such a BMP (Pillow then
    decodes it). An all-zero fourth byte means "no alpha": the result is opaque.

    Layout (Microsoft Learn, "BITMAPFILEHEADER structure" and
    "BITMAPINFOHEADER structure (wingdi.h)"), all little-endian:
      * BITMAPFILEHEADER, 14 bytes: bfType ``b"BM"`` u16, bfSize u32,
        bfReserved1 u16, bfReserved2 u16, bfOffBits u32 (offset of the pixels).
      * BITMAPINFOHEADER at byte 14: biSize u32 (40; 52/56/108/124 for the
        V2..V5 headers, which extend it), biWidth i32, biHeight i32 (> 0:
        bottom-up rows, < 0: top-down), biPlanes u16, biBitCount u16,
        biCompression u32 (0 BI_RGB, 3 BI_BITFIELDS), biSizeImage u32,
        biXPelsPerMeter i32, biYPelsPerMeter i32, biClrUsed u32,
        biClrImportant u32.
      * 32-bit pixels are stored B, G, R, A(reserved) per pixel; rows are
        ``4 * width`` bytes (already a multiple of 4).
    Also handled: BI_BITFIELDS whose masks are the plain B,G,R byte layout
    (R 0x00FF0000, G 0x0000FF00, B 0x000000FF) and whose alpha mask is absent
    or zero, the same pixels under another label.
    """
    if len(data) < 54 or data[:2] != b"BM":
        return None
    off_bits = struct.unpack_from("<I", data, 10)[0]
    (bi_size, width, height, _planes, bit_count, compression) = struct.unpack_from("<IiiHHI", data, 14)
    if bi_size not in (40, 52, 56, 108, 124) or bit_count != 32:
        return None
    clr_used = struct.unpack_from("<I", data, 46)[0]
    if compression == _BI_BITFIELDS:
        if bi_size == 40:
            if len(data) < 66:
                return None
            r, g, b = struct.unpack_from("<3I", data, 54)
            a = 0
            extra = 12
        else:
            r, g, b = struct.unpack_from("<3I", data, 54)
            a = struct.unpack_from("<I", data, 66)[0] if bi_size >= 56 else 0
            extra = 0
        if (r, g, b, a) != (0x00FF0000, 0x0000FF00, 0x000000FF, 0):
            return None
    elif compression == _BI_RGB:
        extra = 0
    else:
        return None
    if width <= 0 or height == 0:
        raise TextureError(f"BMP has invalid size {width}x{height}")
    rows = abs(height)
    if off_bits == 0:  # some writers leave it unset
        off_bits = 14 + bi_size + extra + 4 * min(clr_used, 1 << 16)
    stride = 4 * width
    end = off_bits + stride * rows
    if off_bits < 14 + bi_size or end > len(data):
        raise TextureError("BMP pixel data is truncated")
    bgra = np.frombuffer(data, np.uint8, count=stride * rows, offset=off_bits).reshape(rows, width, 4)
    if height > 0:
        bgra = bgra[::-1]
    rgba = np.empty((rows, width, 4), np.uint8)
    rgba[..., 0] = bgra[..., 2]
    rgba[..., 1] = bgra[..., 1]
    rgba[..., 2] = bgra[..., 0]
    alpha = bgra[..., 3]
    rgba[..., 3] = alpha if alpha.any() else 255
    return rgba


def _to_rgba(im: Image.Image) -> np.ndarray:
    """Convert any Pillow image mode to an (H,W,4) uint8 RGBA array."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        # Pillow clips these to 0..255 when converting; scale 16-bit range instead.
        raw = np.asarray(im)
        if mode == "F":  # floats: taken as 0..255 values
            gray = np.clip(np.nan_to_num(raw), 0, 255).astype(np.uint8)
        else:  # 16-bit range mapped onto 0..255
            gray = (np.clip(raw.astype(np.float64), 0, 65535) / 257.0 + 0.5).astype(np.uint8)
        alpha = np.full(gray.shape, 255, np.uint8)
        trns = im.info.get("transparency")
        if isinstance(trns, int):
            alpha[raw == trns] = 0
        return np.dstack([gray, gray, gray, alpha])
    if mode != "RGBA":
        im = im.convert("RGBA")  # applies palette/grey/RGB ``transparency`` too
    return np.asarray(im, dtype=np.uint8)


def decode_texture(path: Path) -> np.ndarray:
    """Decode an image file into straight-alpha RGBA pixels.

    Args:
        path: the image file. Its format is recognised from its content
            (BMP incl. ``.sph``/``.spa``, PNG, TGA, JPEG, DDS with DXT1/3/5 or
            BC4..7 or uncompressed data, GIF (first frame), and anything else
            Pillow reads).

    Returns:
        A C-contiguous (H,W,4) uint8 array, R,G,B,A, row 0 at the top of the
        image. Palette images keep their transparent entries; grey and
        grey+alpha images are expanded to RGB; 16-bit grey is scaled to 8 bits.
        32-bit uncompressed BMPs take their alpha from the fourth byte of each
        pixel, as MMD does (Pillow ignores it; see :func:`_decode_bmp32` for
        the BITMAPINFOHEADER layout), and are opaque when that byte is 0
        everywhere; likewise 32-bit TGAs whose header declares no alpha bits
        (image descriptor bits 0-3 = 0, Truevision TGA 2.0 spec) and whose
        alpha is all 0. EXIF orientation is ignored, as MMD ignores it.

    Raises:
        TextureError: the file cannot be read or is not a decodable image; the
            message is one line naming the file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except (OSError, ValueError) as exc:
        raise TextureError(f"{path.name}: cannot read: {_one_line(exc)}") from None
    try:
        rgba = _decode_bmp32(data)
        if rgba is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
                    rgba = _to_rgba(im)
                    if im.format == "TGA" and len(data) > 17 and data[16] == 32 and data[17] & 0x0F == 0:
                        if not rgba[..., 3].any():
                            rgba = rgba.copy()
                            rgba[..., 3] = 255
    except TextureError as exc:
        raise TextureError(f"{path.name}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on bad data
        raise TextureError(f"{path.name}: {_one_line(exc)}") from None
    if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.shape[0] == 0 or rgba.shape[1] == 0:
        raise TextureError(f"{path.name}: decoded to an unusable shape {rgba.shape}")
    return np.ascontiguousarray(rgba, dtype=np.uint8)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _quote(name: str) -> str:
    """A texture name for a one-line message: backslashes kept as in the file,
    control characters escaped, very long names shortened."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)
    if len(shown) > 200:
        shown = shown[:197] + "..."
    return f"'{shown}'"


# --------------------------------------------------------------------------
# Model-level helpers
# --------------------------------------------------------------------------


def load_texture(model: Model, index: int) -> np.ndarray | None:
    """Decoded pixels of ``model.textures[index]`` (used by ``Model.texture_image``).

    The name is resolved with :func:`resolve_texture_path` against the folder of
    ``model.path`` and decoded with :func:`decode_texture` on first use. Results,
    failures included, are cached in ``model._texture_cache`` (keyed on
    ``(index, name)``; textures resolving to the same file share one array).

    Returns:
        A read-only (H,W,4) uint8 RGBA array, row 0 at the top (copy it before
        modifying), or None when ``model.path`` is None, ``index`` is out of
        range, or the texture is missing or cannot be decoded. In the last two
        cases one line is appended to ``model.warnings`` (once per texture),
        e.g. ``texture 'tex\\a.bmp': not found``. Never raises.
    """
    try:
        index = operator.index(index)  # numpy integers too
        if model.path is None or not 0 <= index < len(model.textures):
            return None
        name = model.textures[index]
        cache = getattr(model, "_texture_cache", None)
        if not isinstance(cache, dict):
            cache = {}
            model._texture_cache = cache
        key = (index, name)
        if key in cache:
            return cache[key]
        result, warning = _load(model, name, cache)
        cache[key] = result
        if warning is not None and warning not in model.warnings:
            model.warnings.append(warning)
        return result
    except Exception:  # noqa: BLE001 - documented never to raise
        return None


def _load(model: Model, name: str, cache: dict) -> tuple[np.ndarray | None, str | None]:
    path = resolve_texture_path(Path(model.path).parent, name)
    if path is None:
        return None, f"texture {_quote(str(name))}: not found"
    file_key = ("file", os.path.abspath(path))
    if file_key in cache:
        return cache[file_key], None
    try:
        pixels = decode_texture(path)
    except TextureError as exc:
        return None, f"texture {_quote(str(name))}: cannot be decoded: {exc}"
    pixels.flags.writeable = False
    cache[file_key] = pixels
    return pixels, None


def texture_report(model: Model) -> dict:
    """Which textures a model references and which of them are missing.

    Only resolves paths (no decoding), so it is cheap enough for ``mmdsynth
    info --json`` over a whole library.

    Returns:
        ``{"referenced": [...], "missing": [...]}``: lists of texture names as
        written in the file, in file order, de-duplicated, empty names left out.
        ``missing`` holds those that do not resolve to an existing file (all of
        them when ``model.path`` is None).
    """
    referenced: list[str] = []
    seen: set[str] = set()
    for name in model.textures:
        if not isinstance(name, str) or not name.split("\0", 1)[0].strip() or name in seen:
            continue
        seen.add(name)
        referenced.append(name)
    if model.path is None:
        missing = list(referenced)
    else:
        model_dir = Path(model.path).parent
        missing = [n for n in referenced if resolve_texture_path(model_dir, n) is None]
    return {"referenced": referenced, "missing": missing}
