"""``mmdsynth scan``: turn a folder of downloads into a library, safely.

:func:`scan_downloads` walks a downloads folder, extracts every archive
(:mod:`.archives`) and loads every PMX/PMD model in an isolated worker process,
then records each model in the catalog with status ``ok``, ``error`` (the
loader's one-line message) or ``not_character`` (the reason, :mod:`.character`).

Layout
------
The *source group* of everything under ``DOWNLOADS/<first folder>/...`` is
that first folder's name (users sort downloads by franchise; splits keep a
group together). An archive or model file lying directly in DOWNLOADS is its
own group, named after it (without the suffix).

* An archive ``DOWNLOADS/<group>/.../<name>.zip`` is extracted into
  ``LIB/models/<group>/<name>/`` (``<name>-2``, ... when taken), whole: the
  model files, their textures and the rest (read-me files carry the terms of
  use). It is first extracted into a hidden ``.partial-*`` folder beside it and
  renamed into place when complete, so a crash never leaves half an archive
  where a model is expected (leftover partial folders are removed by the next
  scan). An archive holding no PMX/PMD file is not kept.
* A loose model file ``DOWNLOADS/<group>/.../<folder>/<model>.pmx`` is copied
  with the textures it references into ``LIB/models/<group>/<folder>/``, as
  ``mmdsynth add`` does (:mod:`.library`).

Safety and limits
-----------------
* Extraction: see :mod:`.archives` (no path escapes, no links, limits on bytes,
  members and compression ratio; a zip bomb is refused).
* Every extraction and every model load runs in a worker process
  (:class:`IsolatedPool`) with a wall-clock time limit per task
  (``ScanLimits.load_timeout_s``, ``extract_timeout_s``) and an address-space
  limit per process (``ScanLimits.memory_mib`` above the worker's baseline,
  ``RLIMIT_AS``): a file that hangs the loader is killed and recorded as an
  error ("timed out"), one that exhausts memory gets a ``MemoryError`` or is
  killed, and either way the scan goes on with a fresh worker.
* Workers write only inside LIB: their temporary folder is ``LIB/.tmp``; the
  extraction target is a folder under ``LIB/models``. Only regular files are
  read from DOWNLOADS (links and devices are skipped), and LIB must not be
  inside DOWNLOADS's archives' way: a LIB inside DOWNLOADS is skipped by the
  walk, a DOWNLOADS inside LIB is refused.
* One scan at a time per library (``LIB/.scan.lock``, an advisory lock).

Reruns
------
Each archive and loose model file handled is recorded in the catalog's
``scan_sources`` table (path, size, mtime, sha256, state). A rerun skips
sources whose path, size and modification time are unchanged, archives whose
bytes equal one already extracted, and models whose bytes (the catalog id) are
already in the library. Archives that were refused or could not be read are
tried again (an unrar tool may have been installed, the limits raised). An archive whose extraction finished but whose models
were not all recorded (a crash) is resumed, not extracted again.

Test hooks
----------
``load_fn`` (a picklable, module-level callable ``path -> Model``) replaces
:func:`mmdsynth.mmd.loader.load_model` in the workers; the tests use it to make
a load hang or allocate without bound, since the real loader never does.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .archives import ArchiveError, ArchiveLimits, ArchiveRefused, extract_archive, is_archive_name
from .catalog import MODELS_DIRNAME, Catalog, ModelRecord, ScanSource, check_value
from .library import MODEL_SUFFIXES, SuggestFn, safe_name, write_model_files
from .text import count, human_bytes, is_terminal, one_line
from .workers import IsolatedPool, TaskOutcome, default_workers

__all__ = [
    "ScanError",
    "ScanLimits",
    "ScanReport",
    "check_downloads",
    "inspect_model_file",
    "scan_downloads",
]

_SKIP_DIRS = {"__MACOSX"}
PARTIAL_PREFIX = ".partial-"
TMP_DIRNAME = ".tmp"
LOCK_NAME = ".scan.lock"


class ScanError(Exception):
    """A scan that cannot start: bad folders, another scan running. One line."""


@dataclass(frozen=True)
class ScanLimits:
    """Limits of one scan.

    * ``load_timeout_s``: wall-clock seconds to load and check one model
      (default 120; Gene loads in 0.05 s, the largest real models in a few).
    * ``extract_timeout_s``: seconds to extract one archive (default 900).
    * ``memory_mib``: address space a worker may add to its baseline
      (default 4096 MiB; None: no limit). Virtual, not resident, memory: a
      load that needs more gets MemoryError.
    * ``archive``: :class:`~mmdsynth.datasets.archives.ArchiveLimits`.
    """

    load_timeout_s: float = 120.0
    extract_timeout_s: float = 900.0
    memory_mib: int | None = 4096
    archive: ArchiveLimits = field(default_factory=ArchiveLimits)


# ---------------------------------------------------------------------------
# Worker-side tasks (module-level: picklable)
# ---------------------------------------------------------------------------


def inspect_model_file(path: str, file_name: str = "", suggest: SuggestFn | None = None,
                       load_fn: Callable | None = None, textures: bool = False) -> dict[str, Any]:
    """Load one model file and check it; what a scan worker does per model.

    Returns a dict: ``loaded`` (bool); ``reason`` (the loader's one-line
    message when not loaded); for loaded models ``format``, ``name``,
    ``name_en``, ``vertices``, ``faces``, ``morphs``, ``warnings``,
    ``is_character``, ``character_reason``, ``suggestions`` (characters only,
    when ``suggest`` is given; ``suggest_error`` when it raised),
    ``geometry_hash``, ``stats`` (:mod:`.dedup`), and with ``textures``
    ``texture_files``: ``[(name as written, resolved absolute path or None)]``.

    Only :class:`~mmdsynth.mmd.MMDFormatError` and OSError count as "did not
    load"; anything else propagates (the pool records it as an error).
    """
    from mmdsynth.mmd import MMDFormatError
    from mmdsynth.mmd.loader import load_model

    from .character import check_character
    from .dedup import GEOMETRY_VERSION, geometry_signature, model_stats

    loader = load_fn or load_model
    name = file_name or os.path.basename(path)
    try:
        model = loader(path)
    except MMDFormatError as exc:
        return {"loaded": False, "reason": one_line(exc)}
    except OSError as exc:
        return {"loaded": False, "reason": one_line(f"{name}: cannot read: {exc.strerror or exc}")}
    check = check_character(model, name)
    out: dict[str, Any] = {
        "loaded": True, "format": model.format, "name": model.name, "name_en": model.name_en,
        "vertices": model.vertex_count, "faces": model.face_count, "morphs": len(model.morphs),
        "warnings": [one_line(w) for w in model.warnings],
        "is_character": check.is_character, "character_reason": check.reason,
        "geometry_hash": geometry_signature(model), "stats": model_stats(model), "geometry_version": GEOMETRY_VERSION,
    }
    if suggest is not None and check.is_character:
        try:
            out["suggestions"] = dict(suggest(model))
        except Exception as exc:  # noqa: BLE001 - a failing suggestion must not fail the model
            out["suggest_error"] = one_line(exc)
    if textures:
        from mmdsynth.mmd.textures import resolve_texture_path, texture_report

        src_dir = Path(path).parent
        files = []
        for tex in texture_report(model)["referenced"]:
            found = resolve_texture_path(src_dir, tex)
            files.append((tex, None if found is None else os.path.abspath(found)))
        out["texture_files"] = files
    return out


def _extract_task(archive: str, dest: str, limits: ArchiveLimits, label: str) -> dict[str, Any]:
    """Worker side of one archive: never raises for a bad archive."""
    try:
        result = extract_archive(archive, dest, limits, label=label)
    except ArchiveRefused as exc:
        return {"state": "refused", "message": one_line(exc)}
    except ArchiveError as exc:
        return {"state": "error", "message": one_line(exc)}
    return {"state": "extracted", **asdict(result)}


# ---------------------------------------------------------------------------
# The scan
# ---------------------------------------------------------------------------


@dataclass
class ScanReport:
    """Counts and messages of one :func:`scan_downloads` run.

    Archives: ``archives`` seen, ``extracted``, ``refused`` (unsafe, over a
    limit), ``archive_errors`` (unreadable), ``skipped`` (sources already
    scanned, archives and loose files; ``skipped_archives`` of them archives,
    an archive whose bytes equal another's included). Models: ``models`` files looked at,
    ``ok``, ``errors``, ``not_characters``, ``present`` (bytes already in the
    library). ``bytes_extracted``. ``messages``: one line each (refusals,
    errors, skipped members). ``seconds``: wall time."""

    archives: int = 0
    extracted: int = 0
    refused: int = 0
    archive_errors: int = 0
    skipped: int = 0
    skipped_archives: int = 0
    models: int = 0
    ok: int = 0
    errors: int = 0
    not_characters: int = 0
    present: int = 0
    bytes_extracted: int = 0
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """The end-of-scan summary (two lines: archives, models), e.g.
        ``archives 7: 5 extracted, 1 refused, 1 unreadable, 0 already scanned; 18.5 MiB extracted``
        and ``models 8: 3 ok, 2 errors, 0 not characters, 3 already in the library (1.9 s)``
        (with ``; N loose model files already scanned`` before the time when a
        rerun skipped some)."""
        loose = self.skipped - self.skipped_archives
        return (f"archives {self.archives}: {self.extracted} extracted, {self.refused} refused, "
                f"{self.archive_errors} unreadable, {self.skipped_archives} already scanned; "
                f"{human_bytes(self.bytes_extracted)} extracted\n"
                f"models {self.models}: {self.ok} ok, {self.errors} errors, {self.not_characters} not characters, "
                f"{self.present} already in the library"
                + (f"; {count(loose, 'loose model file')} already scanned" if loose else "")
                + f" ({self.seconds:.1f} s)")


def _format_of(data: bytes) -> str:
    return "pmx" if data[:4] == b"PMX " else "pmd" if data[:3] == b"Pmd" else ""


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


@dataclass
class _Source:
    path: Path
    kind: str  # 'archive' | 'model'
    group: str
    size: int
    mtime_ns: int


def find_sources(downloads: Path, exclude: Iterable[Path] = ()) -> tuple[list[_Source], list[str]]:
    """Archives and loose model files under ``downloads`` (sorted), with their
    source groups, and messages for what was skipped (links to files or
    folders, special files, folders that cannot be read). Folders are not
    followed through links; hidden folders, ``__MACOSX`` and ``._*`` files
    are skipped silently, as is anything under ``exclude``."""
    skip = [os.path.realpath(e) for e in exclude]
    out: list[_Source] = []
    notes: list[str] = []
    root = downloads

    def unreadable(exc: OSError) -> None:
        notes.append(f"{exc.filename}: cannot read this folder: {exc.strerror or exc}; skipped")

    for base, dirs, files in os.walk(root, onerror=unreadable):
        real = os.path.realpath(base)
        if any(real == s or real.startswith(s + os.sep) for s in skip):
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS)
        for d in [d for d in dirs if os.path.islink(os.path.join(base, d))]:
            notes.append(f"{Path(base) / d}: a link to a folder; skipped (links are not followed: "
                         "give the folder it points to, or move it here)")
            dirs.remove(d)
        for f in sorted(files):
            low = f.lower()
            if f.startswith("._") or not (low.endswith(MODEL_SUFFIXES) or is_archive_name(f)):
                continue
            p = Path(base) / f
            try:
                st = os.lstat(p)
            except OSError as exc:
                notes.append(f"{p}: cannot read: {exc.strerror or exc}")
                continue
            if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
                notes.append(f"{p}: not a regular file (a link or device); skipped")
                continue
            rel = p.relative_to(root)
            if len(rel.parts) > 1:
                group = safe_name(rel.parts[0], "ungrouped")
            else:
                group = safe_name(f[: -len(Path(f).suffix)] or f, "ungrouped")
            kind = "model" if low.endswith(MODEL_SUFFIXES) else "archive"
            out.append(_Source(p, kind, group, st.st_size, st.st_mtime_ns))
    return out, notes


class _Scan:
    """State of one scan run (parent side)."""

    def __init__(self, catalog: Catalog, downloads: Path, workers: int, limits: ScanLimits,
                 suggest: SuggestFn | None, load_fn: Callable | None, progress: bool, log: Callable[[str], None]):
        self.catalog = catalog
        self.downloads = downloads
        self.limits = limits
        self.suggest = suggest
        self.load_fn = load_fn
        self.log = log
        self.report = ScanReport()
        self.lib = catalog.library
        self.tmp = self.lib / TMP_DIRNAME
        self.pool = IsolatedPool(workers, limits.memory_mib, tempdir=self.tmp)
        self.reserved: set[str] = set()  # library-relative folders promised to running extractions
        self.archive_pending: dict[str, int] = {}  # archive source path -> model tasks still running
        self.archive_rows: dict[str, ScanSource] = {}
        self.archive_found: dict[str, int] = {}  # archive source path -> model files found in its folder
        self.inflight: dict[str, str] = {}  # sha256 -> path of archives being extracted in this run
        self.known_files = catalog.model_file_paths()
        self.bar = None
        self.progress = progress

    # -- helpers -------------------------------------------------------------

    def _note(self, line: str) -> None:
        self.report.messages.append(line)

    def _free_folder(self, group: str, base: str) -> str:
        """A library-relative folder ``models/<group>/<base>[-n]`` that does not exist and is not reserved."""
        for n in itertools.count(1):
            name = base if n == 1 else f"{base}-{n}"
            rel = f"{MODELS_DIRNAME}/{group}/{name}"
            if rel in self.reserved or os.path.lexists(self.lib / MODELS_DIRNAME / group / name):
                continue
            if self.catalog.models_under(rel):
                continue
            self.reserved.add(rel)
            return rel
        raise AssertionError("unreachable")  # pragma: no cover

    def _bar_total(self, extra: int) -> None:
        if self.bar is not None:
            self.bar.total = (self.bar.total or 0) + extra
            self.bar.refresh()

    def _tick(self) -> None:
        if self.bar is not None:
            r = self.report
            self.bar.set_postfix_str(f"ok {r.ok}, err {r.errors + r.archive_errors + r.refused}, not char {r.not_characters}",
                                     refresh=False)
            self.bar.update(1)

    def _label(self, src: _Source) -> str:
        """How messages name a source: its path under DOWNLOADS (``group/name.zip``)."""
        return src.path.relative_to(self.downloads).as_posix()

    def _skip(self, src: _Source) -> None:
        self.report.skipped += 1
        if src.kind == "archive":
            self.report.skipped_archives += 1
        self._tick()

    # -- sources -------------------------------------------------------------

    def submit_source(self, src: _Source) -> None:
        key = str(src.path)
        row = self.catalog.scan_source(key)
        if src.kind == "archive":
            self.report.archives += 1
        # An archive that failed is tried again: the cause may have gone (an unrar
        # tool installed, limits raised, memory freed), and its message is shown again.
        retry = src.kind == "archive" and row is not None and row.state in ("error", "refused")
        if row is not None and row.size == src.size and row.mtime_ns == src.mtime_ns and not retry:
            if row.state == "extracted":
                self._resume_archive(src, row)
                return
            self._skip(src)
            return
        try:
            digest = _sha256_file(src.path)
        except OSError as exc:
            self._note(f"{src.path}: cannot read: {exc.strerror or exc}")
            if src.kind == "archive":
                self.report.archive_errors += 1
            else:
                self.report.errors += 1
            self._tick()
            return
        if src.kind == "archive":
            same = self.catalog.scan_source_by_sha256(digest, "archive")
            same_path = same.path if same is not None else self.inflight.get(digest)
            if same_path is not None:
                self.catalog.record_scan_source(ScanSource(key, "archive", src.size, src.mtime_ns, digest, src.group,
                                                           same.target if same else "", "done", f"same bytes as {same_path}",
                                                           same.models if same else 0, 0))
                self._skip(src)
                return
            self.inflight[digest] = key
            self._submit_archive(src, digest)
        else:
            self.report.models += 1
            if digest in self.catalog:
                self.report.present += 1
                self.catalog.record_scan_source(ScanSource(key, "model", src.size, src.mtime_ns, digest, src.group,
                                                           "", "done", f"same bytes as {self.catalog.get(digest).path}"))
                self._tick()
                return
            self.pool.submit(("model", key, src, digest),
                             inspect_model_file, (str(src.path), src.path.name, self.suggest, self.load_fn, True),
                             timeout=self.limits.load_timeout_s)

    def _submit_archive(self, src: _Source, digest: str) -> None:
        stem = src.path.name
        for suffix in (".zip", ".7z", ".rar"):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
        if stem.lower().endswith(".part1") or stem.lower().endswith(".part01"):
            stem = stem.rsplit(".", 1)[0]
        rel = self._free_folder(src.group, safe_name(stem, "archive"))
        group_dir = self.lib / MODELS_DIRNAME / src.group
        group_dir.mkdir(parents=True, exist_ok=True)
        partial = group_dir / f"{PARTIAL_PREFIX}{uuid.uuid4().hex[:12]}"
        partial.mkdir()
        self.pool.submit(("archive", str(src.path), src, digest, rel, str(partial)),
                         _extract_task, (str(src.path), str(partial), self.limits.archive, self._label(src)),
                         timeout=self.limits.extract_timeout_s)

    def _resume_archive(self, src: _Source, row: ScanSource) -> None:
        folder = self.lib / Path(*row.target.split("/")) if row.target else None
        if folder is None or not folder.is_dir():
            self.catalog.record_scan_source(ScanSource(row.path, "archive", src.size, src.mtime_ns, "", src.group, "",
                                                       "error", "extracted folder missing; delete it from the catalog or touch the archive to rescan"))
            self.report.archive_errors += 1
            self._tick()
            return
        self.archive_rows[row.path] = row
        self._tick()
        self._queue_archive_models(src, row, folder)

    def _queue_archive_models(self, src: _Source, row: ScanSource, folder: Path) -> None:
        from .library import find_model_files

        models = [p for p in find_model_files([folder]) if p.is_file() and not p.is_symlink()]
        self.archive_pending[row.path] = 0
        self.archive_found[row.path] = len(models)
        todo = [(p, p.relative_to(self.lib).as_posix()) for p in models]
        todo = [(p, rel) for p, rel in todo if rel not in self.known_files]  # recorded before a crash
        self._bar_total(len(todo))
        for p, rel in todo:
            self.report.models += 1
            try:
                data = p.read_bytes()
            except OSError as exc:
                self._note(f"{rel}: cannot read: {exc.strerror or exc}")
                self.report.errors += 1
                self._tick()
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest in self.catalog:
                self.catalog.record_model_file(rel, digest, f"{row.path}!{p.relative_to(folder).as_posix()}")
                self.known_files.add(rel)
                self.report.present += 1
                self._tick()
                continue
            self.archive_pending[row.path] += 1
            self.pool.submit(("archive-model", row.path, src, digest, rel, len(data), _format_of(data)),
                             inspect_model_file, (str(p), p.name, self.suggest, self.load_fn, False),
                             timeout=self.limits.load_timeout_s)
        self._maybe_finish_archive(row.path)

    def _maybe_finish_archive(self, key: str) -> None:
        if self.archive_pending.get(key) == 0:
            row = self.archive_rows.pop(key)
            del self.archive_pending[key]
            found = self.archive_found.pop(key, 0)
            self.catalog.record_scan_source(ScanSource(row.path, "archive", row.size, row.mtime_ns, row.sha256, row.group,
                                                       row.target, "done", row.message, found, row.bytes))

    # -- outcomes ------------------------------------------------------------

    def handle(self, outcome: TaskOutcome) -> None:
        kind = outcome.key[0]
        if kind == "archive":
            self._archive_done(outcome)
        elif kind == "archive-model":
            self._archive_model_done(outcome)
        else:
            self._loose_model_done(outcome)

    def _archive_done(self, outcome: TaskOutcome) -> None:
        _, key, src, digest, rel, partial = outcome.key
        partial = Path(partial)
        value = outcome.value if outcome.ok else {"state": "error", "message": f"{self._label(src)}: {outcome.error}"}
        if outcome.kind in ("timeout", "memory", "crashed"):
            value["state"] = "refused"
        state = value["state"]
        self._tick()
        if state != "extracted":
            shutil.rmtree(partial, ignore_errors=True)
            self.reserved.discard(rel)
            self._note(value["message"])
            if state == "refused":
                self.report.refused += 1
            else:
                self.report.archive_errors += 1
            self.catalog.record_scan_source(ScanSource(key, "archive", src.size, src.mtime_ns, digest, src.group, "",
                                                       state, value["message"]))
            return
        self.report.extracted += 1
        self.report.bytes_extracted += value["bytes"]
        messages = value["messages"]
        for m in messages[:50]:
            self._note(m)
        if len(messages) > 50:
            self._note(f"{self._label(src)}: ... and {len(messages) - 50} more skipped members")
        message = " | ".join(messages[:20]) + (f" | ... {len(messages) - 20} more" if len(messages) > 20 else "")
        has_models = any(f.lower().endswith(MODEL_SUFFIXES) for f in value["files"])
        if not has_models:
            shutil.rmtree(partial, ignore_errors=True)
            self.reserved.discard(rel)
            note = "no PMX/PMD model inside; nothing kept"
            self.catalog.record_scan_source(ScanSource(key, "archive", src.size, src.mtime_ns, digest, src.group, "",
                                                       "done", (message + " | " if message else "") + note, 0, value["bytes"]))
            self._note(f"{self._label(src)}: {note}")
            return
        folder = self.lib / Path(*rel.split("/"))
        os.rename(partial, folder)
        self.reserved.discard(rel)
        row = ScanSource(key, "archive", src.size, src.mtime_ns, digest, src.group, rel, "extracted", message, 0, value["bytes"])
        self.catalog.record_scan_source(row)
        self.archive_rows[key] = row
        self._queue_archive_models(src, row, folder)

    def _failed_load(self, outcome: TaskOutcome, name: str) -> dict[str, Any]:
        return {"loaded": False, "reason": one_line(f"{name}: {outcome.error}")}

    def _record(self, result: dict[str, Any], digest: str, rel_path: str, group: str, size: int, source_path: str,
                extra_notes: list[str], magic_format: str = "") -> str:
        """Insert the model row (+ suggestions, features, model file); returns the outcome word."""
        if not result["loaded"]:
            status, reason = "error", result["reason"]
        elif not result["is_character"]:
            status, reason = "not_character", result["character_reason"]
        else:
            status, reason = "ok", ""
        notes = list(result.get("warnings", [])) + extra_notes
        if result.get("suggest_error"):
            notes.append(f"suggestions failed: {result['suggest_error']}")
        annotations = {}
        for k, v in (result.get("suggestions") or {}).items():
            try:
                annotations[k] = check_value(k, v)
            except ValueError as exc:
                notes.append(f"suggestion dropped: {exc}")
        record = ModelRecord(
            id=digest, path=rel_path, format=result.get("format") or magic_format, name=result.get("name", ""),
            group=group, status=status, reason=reason, vertices=result.get("vertices"), faces=result.get("faces"),
            morphs=result.get("morphs"), file_size=size, name_en=result.get("name_en", ""), source_path=source_path,
            notes="\n".join(one_line(n) for n in notes),
        )
        cat = self.catalog
        with cat.transaction():
            if not cat.insert_model(record):
                cat.record_model_file(rel_path, digest, source_path)
                self.known_files.add(rel_path)
                return "present"
            if annotations:
                cat.set_annotations(digest, annotations, "auto")
            if result["loaded"]:
                cat.set_geometry_features(digest, result["geometry_hash"], result["stats"], result["geometry_version"])
            cat.record_model_file(rel_path, digest, source_path)
        self.known_files.add(rel_path)
        return status

    def _count(self, word: str, message: str) -> None:
        r = self.report
        if word == "ok":
            r.ok += 1
        elif word == "error":
            r.errors += 1
            self._note(message)
        elif word == "not_character":
            r.not_characters += 1
        elif word == "present":
            r.present += 1

    def _archive_model_done(self, outcome: TaskOutcome) -> None:
        _, key, src, digest, rel, size, fmt = outcome.key
        name = rel.rsplit("/", 1)[-1]
        result = outcome.value if outcome.ok else self._failed_load(outcome, name)
        inner = Path(rel).relative_to(self.archive_rows[key].target).as_posix()
        word = self._record(result, digest, rel, src.group, size, f"{key}!{inner}", [], fmt)
        self._count(word, result.get("reason", ""))
        self.archive_pending[key] -= 1
        self._tick()
        self._maybe_finish_archive(key)

    def _loose_model_done(self, outcome: TaskOutcome) -> None:
        _, key, src, digest = outcome.key
        result = outcome.value if outcome.ok else self._failed_load(outcome, src.path.name)
        try:
            self._copy_and_record(key, src, digest, result)
        finally:
            self._tick()

    def _copy_and_record(self, key: str, src: _Source, digest: str, result: dict[str, Any]) -> None:
        from .library import _choose_folder

        try:
            data = src.path.read_bytes()
        except OSError as exc:
            self._note(f"{src.path}: cannot read: {exc.strerror or exc}")
            self.report.errors += 1
            return
        if hashlib.sha256(data).hexdigest() != digest:
            self._note(f"{src.path}: changed while it was scanned; run scan again")
            self.report.errors += 1
            return
        warnings: list[str] = []
        to_copy: dict[str, Path] = {}
        src_dir = src.path.parent
        for tex, found in result.get("texture_files", []):
            if found is None:
                warnings.append(f"texture {tex!r}: not found")
                continue
            found_p = Path(found)
            if not _inside(found_p, self.downloads):
                warnings.append(f"texture {tex!r}: outside the downloads folder; not copied")
                continue
            try:
                trel = found_p.relative_to(src_dir).as_posix()
            except ValueError:
                trel = found_p.name
            if trel in to_copy and to_copy[trel] != found_p:
                warnings.append(f"texture {tex!r}: another texture is already copied as {trel}; not copied")
                continue
            to_copy[trel] = found_p
        file_name = safe_name(src.path.name)
        to_copy.pop(file_name, None)
        base = safe_name(src_dir.name if src_dir != self.downloads else src.path.stem, "model")
        try:
            rel_folder, folder = _choose_folder(self.catalog, src.group, base, src.path, file_name, data, to_copy)
            write_model_files(folder, file_name, data, to_copy, warnings)
        except OSError as exc:
            self._note(f"{src.path}: cannot copy into the library: {exc.strerror or exc}")
            self.report.errors += 1
            return
        rel = f"{rel_folder}/{file_name}"
        word = self._record(result, digest, rel, src.group, len(data), str(src.path), warnings, _format_of(data))
        self._count(word, result.get("reason", ""))
        self.catalog.record_scan_source(ScanSource(key, "model", src.size, src.mtime_ns, digest, src.group, rel_folder,
                                                   "done" if word != "error" else "error",
                                                   result.get("reason", "") if word == "error" else "", 1, len(data)))


def check_downloads(downloads: str | os.PathLike, library: str | os.PathLike) -> Path:
    """Check that ``downloads`` can be scanned into ``library`` (which need not
    exist yet, so a caller can check before it creates the library).

    Returns ``downloads`` as an absolute path. Raises :class:`ScanError` (one
    line) when it does not exist, is not a folder, or is the library or inside
    it."""
    downloads = Path(downloads).absolute()
    if not downloads.exists():
        raise ScanError(f"{downloads}: no such folder")
    if not downloads.is_dir():
        raise ScanError(f"{downloads}: not a folder (give the folder that holds the downloads)")
    if _inside(downloads, Path(library)):
        raise ScanError(f"{downloads}: the downloads folder is inside the library {Path(library).absolute()}; "
                        "give a folder outside it")
    return downloads


def scan_downloads(catalog: Catalog, downloads: str | os.PathLike, workers: int | None = None,
                   limits: ScanLimits | None = None, suggest: SuggestFn | None = None,
                   load_fn: Callable | None = None, progress: bool = True,
                   log: Callable[[str], None] | None = None) -> ScanReport:
    """Scan a downloads folder into the library of ``catalog`` (see the module docstring).

    Args:
        catalog: the open library (its folder must not be inside an archive's
            way: DOWNLOADS inside LIB is refused; LIB inside DOWNLOADS is skipped).
        downloads: the folder to walk.
        workers: worker processes (default: one per core; 0: in this process,
            without time or memory limits -- for debugging only).
        limits: :class:`ScanLimits` (defaults when None).
        suggest: picklable ``model -> {key: value}`` whose result is stored as
            ``auto`` annotations for characters (e.g.
            :func:`mmdsynth.catalog_cmd.suggest_annotations`); None: none.
        load_fn: picklable replacement of ``load_model`` in the workers (tests).
        progress: show a tqdm bar (on a terminal).
        log: where per-item lines go as they happen (default: nowhere; they are
            in ``ScanReport.messages`` anyway).

    Returns:
        A :class:`ScanReport`.

    Raises:
        ScanError: DOWNLOADS missing or not a folder, DOWNLOADS inside LIB,
            another scan running on LIB.
        OSError: the library's file system fails (disk full).
    """
    start = time.perf_counter()
    lib = catalog.library
    downloads = check_downloads(downloads, lib)
    limits = limits or ScanLimits()
    workers = default_workers() if workers is None else max(0, int(workers))
    log = log or (lambda line: None)
    (lib / MODELS_DIRNAME).mkdir(parents=True, exist_ok=True)
    with _scan_lock(lib):
        _clean_partials(lib)
        (lib / TMP_DIRNAME).mkdir(exist_ok=True)
        sources, notes = find_sources(downloads, exclude=[lib])
        scan = _Scan(catalog, downloads, workers, limits, suggest, load_fn, progress, log)
        for n in notes:
            scan._note(n)
        show = progress and is_terminal(sys.stderr)
        from tqdm import tqdm

        try:
            with tqdm(total=len(sources), desc="scan", unit="file", disable=not show, dynamic_ncols=True) as bar:
                scan.bar = bar if show else None
                window = 2 * max(workers, 1)
                for src in sources:
                    scan.submit_source(src)
                    for o in scan.pool.wait(0):
                        scan.handle(o)
                    while scan.pool.pending >= window:
                        for o in scan.pool.wait(None):
                            scan.handle(o)
                while scan.pool.pending:
                    for o in scan.pool.wait(None):
                        scan.handle(o)
        finally:
            scan.pool.close()
            _clean_partials(lib)
            with contextlib.suppress(OSError):
                shutil.rmtree(lib / TMP_DIRNAME)
    scan.report.seconds = time.perf_counter() - start
    for line in scan.report.messages:
        log(line)
    return scan.report


def _clean_partials(lib: Path) -> None:
    """Remove ``.partial-*`` folders under ``LIB/models/<group>/`` (never following links)."""
    models = lib / MODELS_DIRNAME
    if not models.is_dir():
        return
    for group in os.scandir(models):
        if not group.is_dir(follow_symlinks=False):
            continue
        for entry in os.scandir(group.path):
            if entry.name.startswith(PARTIAL_PREFIX) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)


@contextlib.contextmanager
def _scan_lock(lib: Path):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fh = open(lib / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ScanError(f"{lib}: another mmdsynth scan is running on this library") from None
        yield
    finally:
        fh.close()
