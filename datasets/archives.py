"""Safe extraction of downloaded archives (.zip, .7z, .rar) for ``mmdsynth scan``.

Downloaded MMD models come as archives made by many tools on many systems, and
some archives are broken or hostile. :func:`extract_archive` extracts one
archive into a folder that the caller made for it, and guarantees:

Nothing is written outside the target folder
    Every member name is decoded (see "Names" below), split on both ``/`` and
    ``\\`` (Windows tools write backslashes), and refused -- that member only,
    with a message -- when it is absolute (``/x``, ``\\x``, ``\\\\server\\share``),
    carries a drive letter (``C:x``), contains a ``..`` component or a NUL.
    Each remaining component is made a portable file name
    (:func:`mmdsynth.datasets.library.safe_name`: ``<>:"|?*`` and control
    characters become ``_``) and NFC-normalised. Folders are created one
    component at a time and must be real folders (never a link); files are
    created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (mode 0644), so an existing
    file or link is never written through or overwritten, and the resolved
    parent folder is checked to lie inside the target before each file.

No links, no special files
    Symbolic links, hard links, junctions and other redirects (zip Unix modes,
    7z attributes, RAR5 redirects), devices and FIFOs are skipped with a message;
    only regular files and folders are extracted. Encrypted members are skipped.

Limits (:class:`ArchiveLimits`, per archive, nested archives included)
    total bytes written, number of members, and the compression ratio
    (bytes out / archive size, checked once the output passes
    ``ratio_floor`` bytes, so small archives of flat textures are fine). The
    sizes the archive *declares* are checked before anything is written, and
    the bytes actually written are counted while streaming (declared sizes can
    lie): a zip bomb is refused with :class:`ArchiveRefused` and a message
    such as ``refused: 2.0 GiB from a 2.1 MiB archive (ratio 975 > 100): a zip bomb?``.
    Memory stays bounded: members are streamed in 1 MiB chunks.

Nested archives
    An archive found inside (``.zip``, ``.7z``, ``.rar``) is extracted one level
    deep into a folder named after it, beside it, within the same budget; the
    nested file is then removed. Archives nested deeper are left as files (with
    a message).

Names (zip)
    Zip names without the UTF-8 flag (bit 11) are bytes in the creator's code
    page -- for MMD models almost always Shift-JIS (cp932). Python's zipfile
    decodes them as cp437 (mojibake); here the raw bytes are recovered and
    decoded, per archive, as UTF-8 when every such name is valid UTF-8, else as
    cp932 when every one is valid cp932, else GBK, else name by name (the
    last resort: cp932 with replacement characters). An Info-ZIP Unicode Path
    extra field (0x7075) whose CRC matches wins over all of that. 7z names are UTF-16 already; RAR names are decoded by
    rarfile.

Formats are recognised by their magic bytes, not by the file suffix. RAR
archives whose members are compressed need an external tool (unrar, unar,
7z or bsdtar, found by rarfile); without one the archive is refused with a
clear message (stored members are read directly).

Errors: :class:`ArchiveError` (one line, naming the archive) for an archive
that cannot be read (truncated, damaged, unsupported); its subclass
:class:`ArchiveRefused` for one refused for safety (a limit). On either, the
files written so far are removed (the target folder is left empty) so a caller
never keeps half an archive.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import unicodedata
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from .text import human_bytes, one_line

__all__ = [
    "ARCHIVE_SUFFIXES",
    "ArchiveError",
    "ArchiveLimits",
    "ArchiveRefused",
    "ExtractResult",
    "archive_format",
    "decode_zip_names",
    "extract_archive",
    "is_archive_name",
    "member_parts",
]

ARCHIVE_SUFFIXES = (".zip", ".7z", ".rar")
CHUNK = 1 << 20

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_7Z_MAGIC = b"7z\xbc\xaf\x27\x1c"
_RAR_MAGIC = (b"Rar!\x1a\x07\x00", b"Rar!\x1a\x07\x01\x00")
_JUNK_DIRS = {"__MACOSX"}
_DRIVE = re.compile(r"^[A-Za-z]:")
_PART_RAR = re.compile(r"\.part0*(\d+)\.rar$", re.IGNORECASE)


class ArchiveError(Exception):
    """An archive that cannot be extracted (unreadable, truncated, damaged,
    unsupported). One-line message naming the archive."""


class ArchiveRefused(ArchiveError):
    """An archive refused for safety: over a size, count or ratio limit (a
    zip bomb), or nested too deep to stay within the limits."""


@dataclass(frozen=True)
class ArchiveLimits:
    """Per-archive limits (nested archives count toward their outer archive's).

    * ``max_bytes``: bytes written in all (default 4 GiB; a model with its
      textures is rarely over 500 MB).
    * ``max_members``: members (files and folders) in all (default 20,000).
    * ``max_ratio``: bytes written / archive file size (default 100), checked
      once more than ``ratio_floor`` bytes (default 64 MiB) are written; a
      deflate stream reaches about 1000 on zeros, real model archives (PMX,
      PNG/JPG/BMP textures) rarely 10.
    * ``max_depth``: nesting levels extracted (default 1: an archive in the
      archive is extracted, one in that is not).
    """

    max_bytes: int = 4 << 30
    max_members: int = 20_000
    max_ratio: float = 100.0
    ratio_floor: int = 64 << 20
    max_depth: int = 1

    def __post_init__(self):
        if self.max_bytes < 1 or self.max_members < 1 or not self.max_ratio > 0 or self.ratio_floor < 0 or self.max_depth < 0:
            raise ValueError(f"invalid archive limits {self}")


@dataclass
class ExtractResult:
    """What :func:`extract_archive` wrote.

    * ``files``: paths of the files written, relative to the target folder,
      '/' separators, in extraction order (nested archives' contents included,
      the nested archive files themselves not, once extracted).
    * ``bytes``: bytes written. ``members``: members seen (all levels).
    * ``messages``: one line per member skipped or nested archive left as is.
    * ``format``: ``'zip'``, ``'7z'`` or ``'rar'``; ``encoding``: how zip names
      without the UTF-8 flag were decoded ('' when none needed it).
    * ``nested``: nested archives extracted.
    """

    files: list[str] = field(default_factory=list)
    bytes: int = 0
    members: int = 0
    messages: list[str] = field(default_factory=list)
    format: str = ""
    encoding: str = ""
    nested: int = 0


def is_archive_name(name: str) -> bool:
    """True for ``.zip``/``.7z``/``.rar`` names (any case), except the second and
    later volumes of a multi-volume RAR (``x.part2.rar``: read through part 1)."""
    low = name.lower()
    if not low.endswith(ARCHIVE_SUFFIXES):
        return False
    m = _PART_RAR.search(low)
    return not (m and int(m.group(1)) > 1)


def archive_format(path: str | os.PathLike) -> str | None:
    """``'zip'``, ``'7z'`` or ``'rar'`` from the file's magic bytes; None when
    it is none of them. OSError when the file cannot be read."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_7Z_MAGIC):
        return "7z"
    if any(head.startswith(m) for m in _RAR_MAGIC):
        return "rar"
    return None


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------


def member_parts(name: str) -> tuple[tuple[str, ...] | None, str]:
    """Split an archive member name into safe path components.

    Returns ``(parts, problem)``: ``parts`` (possibly empty for the archive
    root) and ``''``, or None and a one-line reason when the name must not be
    extracted (absolute, drive letter, UNC, ``..``, NUL). Both ``/`` and ``\\``
    separate components; empty and ``.`` components are dropped; each component
    is NFC-normalised and made portable with
    :func:`~mmdsynth.datasets.library.safe_name`.
    """
    from .library import safe_name

    if "\x00" in name:
        return None, "name contains a NUL character"
    unified = name.replace("\\", "/")
    if unified.startswith("/"):
        return None, "absolute path"
    if _DRIVE.match(unified):
        return None, "drive letter"
    raw = [p for p in unified.split("/") if p not in ("", ".")]
    if any(p.strip() == ".." for p in raw):
        return None, "'..' in the path"
    parts = []
    for p in raw:
        p = unicodedata.normalize("NFC", p)
        cleaned = safe_name(p, fallback="_")
        parts.append(cleaned)
    return tuple(parts), ""


def _unicode_path_extra(extra: bytes, raw_name: bytes) -> str | None:
    """The Info-ZIP Unicode Path (0x7075) of a zip entry when its CRC matches."""
    i = 0
    while i + 4 <= len(extra):
        tag = int.from_bytes(extra[i:i + 2], "little")
        size = int.from_bytes(extra[i + 2:i + 4], "little")
        data = extra[i + 4:i + 4 + size]
        if tag == 0x7075 and len(data) >= 5 and data[0] == 1:
            if int.from_bytes(data[1:5], "little") == zlib.crc32(raw_name):
                try:
                    return data[5:].decode("utf-8")
                except UnicodeDecodeError:
                    return None
        i += 4 + size
    return None


def decode_zip_names(infos: list) -> tuple[list[str], str]:
    """Decode the names of zip entries (``zipfile.ZipInfo``) as their creator meant.

    Flagged entries (bit 11) are UTF-8 already, and a matching Info-ZIP Unicode
    Path extra field wins. For the other non-ASCII names the raw bytes are
    recovered from zipfile's cp437 decoding and decoded with one encoding for
    the whole archive: UTF-8 if every such name is valid UTF-8, else cp932
    (Shift-JIS) if every one is valid cp932, else GBK if every one is. When
    none fits all (a mixed archive), each name is tried in that order, and the
    last resort is cp932 with replacement characters. Returns (names, the
    encoding chosen: '' when no name needed one, 'mixed' for the last case).
    """
    raws: list[bytes | None] = []
    upaths: list[str | None] = []
    for info in infos:
        raw = None
        if not info.flag_bits & 0x800:
            try:
                raw = info.orig_filename.encode("cp437")
            except UnicodeEncodeError:  # pragma: no cover - zipfile decoded it another way
                raw = None
        raws.append(raw)
        upaths.append(_unicode_path_extra(info.extra or b"", raw) if raw is not None else None)
    candidates = [r for r, u in zip(raws, upaths) if r is not None and u is None and not r.isascii()]
    encoding = ""
    if candidates:
        encoding = "mixed"
        for enc in ("utf-8", "cp932", "gbk"):
            try:
                for r in candidates:
                    r.decode(enc)
            except UnicodeDecodeError:
                continue
            encoding = enc
            break
    names = []
    for info, raw, upath in zip(infos, raws, upaths):
        if raw is None:
            names.append(info.orig_filename)
        elif upath is not None:
            names.append(upath)
        elif raw.isascii():
            names.append(raw.decode("ascii"))
        elif encoding != "mixed":
            names.append(raw.decode(encoding))
        else:
            names.append(_decode_any(raw))
    return names, encoding


def _decode_any(raw: bytes) -> str:
    for enc in ("utf-8", "cp932", "gbk"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    return raw.decode("cp932", errors="replace")


# ---------------------------------------------------------------------------
# The writer: all file system writes go through here
# ---------------------------------------------------------------------------


class _Writer:
    """Creates folders and files under ``root`` only, counting against the limits."""

    def __init__(self, root: Path, limits: ArchiveLimits, archive_size: int, label: str):
        self.root = Path(os.path.realpath(root))
        self.limits = limits
        self.archive_size = max(int(archive_size), 1)
        self.label = label
        self.result = ExtractResult()
        self.written: list[Path] = []

    # -- limits --------------------------------------------------------------

    def count_member(self) -> None:
        self.result.members += 1
        if self.result.members > self.limits.max_members:
            raise ArchiveRefused(f"{self.label}: refused: more than {self.limits.max_members:,} members")

    def admit(self, display: str, name: str) -> tuple[str, ...] | None:
        """Count one member and check its name: its safe path parts, or None
        (with a message for an unsafe name) when it must be skipped; junk
        such as ``__MACOSX`` and ``._*`` files is skipped silently."""
        self.count_member()
        parts, problem = member_parts(name)
        if parts is None:
            self.result.messages.append(f"{display}: unsafe name ({problem}); skipped")
            return None
        if parts and (parts[0] in _JUNK_DIRS or parts[-1].startswith("._")):
            return None
        return parts

    def check_declared(self, total: int, count: int) -> None:
        """Refuse before writing when the declared sizes break a limit."""
        lim = self.limits
        if count + self.result.members > lim.max_members:
            raise ArchiveRefused(f"{self.label}: refused: {count:,} members (limit {lim.max_members:,})")
        total_out = total + self.result.bytes
        if total_out > lim.max_bytes:
            raise ArchiveRefused(f"{self.label}: refused: declares {human_bytes(total)} uncompressed "
                                 f"(limit {human_bytes(lim.max_bytes)}): a zip bomb?")
        ratio = total_out / self.archive_size
        if total_out > lim.ratio_floor and ratio > lim.max_ratio:
            raise ArchiveRefused(f"{self.label}: refused: declares {human_bytes(total_out)} from a {human_bytes(self.archive_size)} "
                                 f"archive (ratio {ratio:.0f} > {lim.max_ratio:g}): a zip bomb?")

    def _add_bytes(self, n: int) -> None:
        r = self.result
        r.bytes += n
        lim = self.limits
        if r.bytes > lim.max_bytes:
            raise ArchiveRefused(f"{self.label}: refused: more than {human_bytes(lim.max_bytes)} uncompressed: a zip bomb?")
        if r.bytes > lim.ratio_floor and r.bytes / self.archive_size > lim.max_ratio:
            raise ArchiveRefused(f"{self.label}: refused: {human_bytes(r.bytes)} from a {human_bytes(self.archive_size)} archive "
                                 f"(ratio {r.bytes / self.archive_size:.0f} > {lim.max_ratio:g}): a zip bomb?")

    # -- paths ---------------------------------------------------------------

    def _inside(self, path: Path) -> bool:
        real = os.path.realpath(path)
        return real == str(self.root) or real.startswith(str(self.root) + os.sep)

    def make_dirs(self, base: Path, parts: tuple[str, ...]) -> Path | None:
        """Create ``base/parts...`` one real folder at a time; None on a conflict."""
        cur = base
        for p in parts:
            cur = cur / p
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                try:
                    os.mkdir(cur, 0o755)
                except FileExistsError:
                    return None
                continue
            if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
                return None
        if not self._inside(cur):  # pragma: no cover - impossible after the checks above
            return None
        return cur

    def open_file(self, base: Path, parts: tuple[str, ...], display: str) -> tuple[BinaryIO | None, Path | None]:
        """A new file ``base/parts`` opened for writing, or (None, None) with a message."""
        if not parts:
            self.result.messages.append(f"{display}: empty name; skipped")
            return None, None
        folder = self.make_dirs(base, parts[:-1])
        if folder is None:
            self.result.messages.append(f"{display}: a file of the same name is in the way; skipped")
            return None, None
        target = folder / parts[-1]
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) \
            | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(target, flags, 0o644)
        except FileExistsError:
            self.result.messages.append(f"{display}: duplicate name in the archive; later copy skipped")
            return None, None
        except OSError as exc:
            if exc.errno in (errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL):
                self.result.messages.append(f"{display}: cannot be a file name here ({exc.strerror}); skipped")
                return None, None
            raise
        self.written.append(target)
        return os.fdopen(fd, "wb"), target

    def copy_stream(self, src: BinaryIO, dst: BinaryIO, declared: int | None) -> int:
        """Copy in chunks, counting bytes; refuses a member longer than declared."""
        n = 0
        while True:
            chunk = src.read(CHUNK)
            if not chunk:
                break
            n += len(chunk)
            if declared is not None and n > declared:
                raise ArchiveRefused(f"{self.label}: refused: a member is longer than its header says")
            self._add_bytes(len(chunk))
            dst.write(chunk)
        return n

    def write_member(self, base: Path, parts: tuple[str, ...], display: str, opener: Callable[[], BinaryIO],
                     declared: int | None) -> None:
        fh, target = self.open_file(base, parts, display)
        if fh is None:
            return
        with fh:
            with opener() as src:
                self.copy_stream(src, fh, declared)
        self.result.files.append(target.relative_to(self.root).as_posix())


# ---------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------


def _zip_members(path: Path, label: str, writer: _Writer, base: Path) -> None:
    import zipfile

    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{label}: not a readable zip archive (truncated or damaged: {one_line(exc, 300)})") from None
    except (OSError, ValueError, UnicodeDecodeError, EOFError) as exc:
        raise ArchiveError(f"{label}: cannot read zip archive: {one_line(exc, 300)}") from None
    with zf:
        infos = zf.infolist()
        names, encoding = decode_zip_names(infos)
        writer.result.encoding = encoding
        writer.check_declared(sum(i.file_size for i in infos), len(infos))
        for info, name in zip(infos, names):
            display = f"{label}:{name}"
            parts = writer.admit(display, name)
            if parts is None:
                continue
            mode = info.external_attr >> 16
            is_dir = name.endswith(("/", "\\"))
            if info.create_system == 3 and mode:
                kind = stat.S_IFMT(mode)
                if kind == stat.S_IFLNK:
                    writer.result.messages.append(f"{display}: symbolic link; skipped (links are never extracted)")
                    continue
                if kind == stat.S_IFDIR:
                    is_dir = True
                elif kind not in (0, stat.S_IFREG):
                    writer.result.messages.append(f"{display}: not a regular file; skipped")
                    continue
            if is_dir:
                if writer.make_dirs(base, parts) is None:
                    writer.result.messages.append(f"{display}: a file of the same name is in the way; skipped")
                continue
            if info.flag_bits & 0x1:
                writer.result.messages.append(f"{display}: encrypted; skipped")
                continue
            try:
                writer.write_member(base, parts, display, lambda info=info: zf.open(info), info.file_size)
            except NotImplementedError as exc:
                writer.result.messages.append(f"{display}: {one_line(exc, 300)}; skipped")
            except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
                raise ArchiveError(f"{label}: damaged or truncated zip archive ({name}: {one_line(exc, 300)})") from None


def _7z_members(path: Path, label: str, writer: _Writer, base: Path) -> None:
    import py7zr
    from py7zr.helpers import get_sanitized_output_path
    from py7zr.io import Py7zIO, WriterFactory

    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise ArchiveError(f"{label}: cannot read: {exc.strerror or exc}") from None
    with fh:
        try:
            sz = py7zr.SevenZipFile(fh, mode="r", max_extract_size=writer.limits.max_bytes)
        except py7zr.PasswordRequired:
            raise ArchiveError(f"{label}: encrypted 7z archive (password needed); skipped") from None
        except (py7zr.Bad7zFile, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, MemoryError,
                NotImplementedError, py7zr.exceptions.UnsupportedCompressionMethodError) as exc:
            raise ArchiveError(f"{label}: not a readable 7z archive (truncated or damaged: {one_line(exc, 300) or type(exc).__name__})") from None
        with sz:
            if sz.needs_password():
                raise ArchiveError(f"{label}: encrypted 7z archive (password needed); skipped")
            files = list(sz.files)
            writer.check_declared(sum(int(f.uncompressed or 0) for f in files if not f.is_directory), len(files))
            wanted: dict[str, tuple[tuple[str, ...], str, int]] = {}
            names: set[str] = set()
            for f in files:
                name = f.filename
                display = f"{label}:{name}"
                parts = writer.admit(display, name)
                if parts is None:
                    continue
                if f.is_symlink or getattr(f, "is_junction", False):
                    writer.result.messages.append(f"{display}: link; skipped (links are never extracted)")
                    continue
                if getattr(f, "is_socket", False):
                    writer.result.messages.append(f"{display}: not a regular file; skipped")
                    continue
                if f.is_directory:
                    if writer.make_dirs(base, parts) is None:
                        writer.result.messages.append(f"{display}: a file of the same name is in the way; skipped")
                    continue
                if name in names:
                    writer.result.messages.append(f"{display}: duplicate name in the archive; later copy skipped")
                    continue
                try:
                    key = get_sanitized_output_path(name, None).as_posix()
                except Exception:  # noqa: BLE001 - py7zr's own check is stricter in places
                    writer.result.messages.append(f"{display}: unsafe name; skipped")
                    continue
                names.add(name)
                wanted[key] = (parts, display, int(f.uncompressed or 0))
            if not wanted:
                return

            outer = writer

            class _Sink(Py7zIO):
                def __init__(self, fname: str):
                    self.fh = None
                    self.n = 0
                    self.entry = wanted.get(fname)
                    if self.entry is not None and fname not in opened:
                        opened.add(fname)
                        self.fh, self.target = outer.open_file(base, self.entry[0], self.entry[1])

                def write(self, s):
                    self.n += len(s)
                    outer._add_bytes(len(s))
                    if self.fh is not None:
                        self.fh.write(s)
                    return len(s)

                def read(self, size=None):
                    return b""

                def seek(self, offset, whence=0):
                    return 0

                def flush(self):
                    pass

                def size(self):
                    return self.n

                def close(self):
                    if self.fh is not None:
                        self.fh.close()
                        self.fh = None
                        outer.result.files.append(self.target.relative_to(outer.root).as_posix())

            class _Factory(WriterFactory):
                def create(self, filename: str) -> Py7zIO:
                    sink = _Sink(filename)
                    sinks.append(sink)
                    return sink

            opened: set[str] = set()
            sinks: list[_Sink] = []
            try:
                sz.extract(targets=sorted(names), factory=_Factory())
            except ArchiveRefused:
                raise
            except py7zr.exceptions.CrcError as exc:
                raise ArchiveError(f"{label}: damaged 7z archive (CRC error: {one_line(exc, 300)})") from None
            except (py7zr.Bad7zFile, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, MemoryError, RuntimeError,
                    NotImplementedError, py7zr.exceptions.UnsupportedCompressionMethodError, py7zr.exceptions.ArchiveError) as exc:
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES):
                    raise
                if "exceeds limit" in str(exc):
                    raise ArchiveRefused(f"{label}: refused: more than {human_bytes(writer.limits.max_bytes)} uncompressed: a zip bomb?") from None
                raise ArchiveError(f"{label}: damaged or truncated 7z archive ({one_line(exc, 300) or type(exc).__name__})") from None
            finally:
                for s in sinks:  # py7zr versions without the close() hook
                    s.close()
            for key, (parts, display, _) in wanted.items():
                if key not in opened:
                    writer.result.messages.append(f"{display}: not extracted (no data in the archive)")


def _rar_members(path: Path, label: str, writer: _Writer, base: Path) -> None:
    import rarfile

    rarfile.USE_EXTRACT_HACK = False  # the hack writes temporary archives to the system temp folder
    try:
        rf = rarfile.RarFile(str(path))
    except rarfile.NeedFirstVolume:
        raise ArchiveError(f"{label}: a later volume of a multi-volume RAR; open the first volume") from None
    except (rarfile.Error, OSError, EOFError, ValueError, IndexError) as exc:
        raise ArchiveError(f"{label}: not a readable RAR archive (truncated or damaged: {one_line(exc, 300) or type(exc).__name__})") from None
    with rf:
        infos = rf.infolist()
        if not infos:  # rarfile stops quietly at a damaged header; a real RAR download is never empty
            raise ArchiveError(f"{label}: not a readable RAR archive (no members: truncated or damaged)")
        if rf.needs_password():
            raise ArchiveError(f"{label}: encrypted RAR archive (password needed); skipped")
        writer.check_declared(sum(int(i.file_size or 0) for i in infos if not i.is_dir()), len(infos))
        compressed = [i for i in infos if not i.is_dir() and i.compress_type != rarfile.RAR_M0]
        if compressed:
            try:
                rarfile.tool_setup()
            except rarfile.RarCannotExec:
                raise ArchiveError(f"{label}: cannot extract RAR archives: no unrar tool found "
                                   "(install unrar, unar, 7-Zip's 7z or bsdtar; stored-only RARs work without one)") from None
        for info in infos:
            name = info.filename
            display = f"{label}:{name}"
            parts = writer.admit(display, name)
            if parts is None:
                continue
            if info.is_symlink() or info.file_redir:
                writer.result.messages.append(f"{display}: link or redirect; skipped (links are never extracted)")
                continue
            if info.is_dir():
                if writer.make_dirs(base, parts) is None:
                    writer.result.messages.append(f"{display}: a file of the same name is in the way; skipped")
                continue
            if info.mode is not None and stat.S_IFMT(info.mode) not in (0, stat.S_IFREG) and info.host_os == rarfile.RAR_OS_UNIX:
                writer.result.messages.append(f"{display}: not a regular file; skipped")
                continue
            if info.needs_password():
                writer.result.messages.append(f"{display}: encrypted; skipped")
                continue
            try:
                writer.write_member(base, parts, display, lambda info=info: rf.open(info), int(info.file_size or 0))
            except rarfile.RarCannotExec:
                raise ArchiveError(f"{label}: cannot extract RAR archives: no unrar tool found "
                                   "(install unrar, unar, 7-Zip's 7z or bsdtar)") from None
            except (rarfile.Error, EOFError, zlib.error) as exc:
                raise ArchiveError(f"{label}: damaged or truncated RAR archive ({name}: {one_line(exc, 300) or type(exc).__name__})") from None


_HANDLERS = {"zip": _zip_members, "7z": _7z_members, "rar": _rar_members}


# ---------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike, limits: ArchiveLimits | None = None,
                    label: str | None = None) -> ExtractResult:
    """Extract ``archive`` (zip, 7z or rar, by magic bytes) into the folder ``dest``.

    Args:
        archive: the archive file.
        dest: an existing, empty folder made by the caller; nothing is ever
            written outside it (see the module docstring for how).
        limits: :class:`ArchiveLimits` (defaults when None); they cover the
            archive and the archives nested in it.
        label: how messages name the archive (default: its file name).

    Returns:
        :class:`ExtractResult` (files written, bytes, skipped members' messages).

    Raises:
        ArchiveRefused: over a limit (a zip bomb, too many members).
        ArchiveError: not an archive, truncated, damaged, unsupported,
            encrypted, or a RAR that needs a missing unrar tool.
        OSError: the target file system fails (disk full, permissions).
        On every exception, what was written under ``dest`` is removed.
    """
    archive = Path(archive)
    dest = Path(dest)
    limits = limits or ArchiveLimits()
    label = label or archive.name
    if not dest.is_dir() or dest.is_symlink():
        raise ValueError(f"{dest}: the target must be an existing folder (not a link)")
    try:
        size = archive.stat().st_size
        fmt = archive_format(archive)
    except OSError as exc:
        raise ArchiveError(f"{label}: cannot read: {exc.strerror or exc}") from None
    if fmt is None:
        raise ArchiveError(f"{label}: not a zip, 7z or RAR archive (unrecognised first bytes)")
    writer = _Writer(dest, limits, size, label)
    writer.result.format = fmt
    try:
        _HANDLERS[fmt](archive, label, writer, writer.root)
        _nested(writer, limits, depth=1)
    except BaseException:
        _empty(dest)
        raise
    return writer.result


def _nested(writer: _Writer, limits: ArchiveLimits, depth: int) -> None:
    """Extract archives found among the written files, ``depth`` levels deep at most."""
    root = writer.root
    queue = [f for f in list(writer.result.files) if is_archive_name(f)]
    for rel in queue:
        path = root / rel
        if depth > limits.max_depth:
            writer.result.messages.append(f"{writer.label}:{rel}: archive nested more than {limits.max_depth} level(s) deep; left as is")
            continue
        try:
            fmt = archive_format(path)
        except OSError:  # pragma: no cover
            fmt = None
        if fmt is None:
            continue
        stem = path.name[: -len(path.suffix)] or "_"
        folder = path.parent / stem
        n = 1
        while os.path.lexists(folder):
            n += 1
            folder = path.parent / f"{stem}-{n}"
        os.mkdir(folder, 0o755)
        before_files = len(writer.result.files)
        label = f"{writer.label}:{rel}"
        saved_label = writer.label
        writer.label = label
        try:
            _HANDLERS[fmt](path, label, writer, Path(folder))
        except ArchiveRefused:
            raise
        except ArchiveError as exc:
            # keep the nested archive as a file; drop what it half wrote
            for f in writer.result.files[before_files:]:
                with _suppress():
                    (root / f).unlink()
            del writer.result.files[before_files:]
            shutil.rmtree(folder, ignore_errors=True)
            writer.result.messages.append(f"{exc}; left as is")
            continue
        finally:
            writer.label = saved_label
        new = writer.result.files[before_files:]
        path.unlink()
        writer.result.files.remove(rel)
        writer.result.nested += 1
        deeper = [f for f in new if is_archive_name(f)]
        for f in deeper:
            writer.result.messages.append(f"{writer.label}:{f}: archive nested more than {limits.max_depth} level(s) deep; left as is")


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def _empty(dest: Path) -> None:
    """Remove everything under ``dest`` (never following links), keep ``dest``."""
    try:
        entries = list(os.scandir(dest))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            pass
