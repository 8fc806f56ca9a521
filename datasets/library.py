"""Adding models to a library (``mmdsynth add``): copy, load, record, suggest.

Layout: each model file is COPIED, with the texture files it references, into
``LIB/models/<group>/<folder>/`` so the library is self-contained and movable:

* ``<group>`` (the catalog's source group, the unit of train/val/test splits)
  is the name of the folder the model file is in, or the ``group`` argument;
* ``<folder>`` is the name of the folder the model file is in. Models from the
  same source folder share one library folder (a PMX and a PMD of one
  character, variants sharing textures) as long as no file would differ;
  otherwise, and for models of another source folder with the same name, the
  first free ``<folder>-2``, ``<folder>-3``, ... is used. Nothing is ever
  overwritten.
* Textures are resolved as MMD would (:func:`mmdsynth.mmd.textures.resolve_texture_path`)
  and copied to the same path relative to the model folder, using the names
  found on disk, so the copy resolves exactly like the original. A texture
  outside the model's folder (``..\\shared\\tex.png``, absolute names) is
  copied into the model folder under its file name, where the resolver's
  suffix lookup finds it. Textures that do not resolve are noted.

Every file is written to a temporary name and renamed into place; the catalog
row is inserted after the files, in one transaction with its suggested
annotations, so a crash leaves either nothing in the catalog (and files a
re-run reuses) or a complete entry.
"""

from __future__ import annotations

import filecmp
import hashlib
import itertools
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mmdsynth.mmd import MMDFormatError
from mmdsynth.mmd.atomic import atomic_path, atomic_write_bytes
from mmdsynth.mmd.loader import parse_model
from mmdsynth.mmd.model import Model
from mmdsynth.mmd.textures import resolve_texture_path, texture_report

from .catalog import MODELS_DIRNAME, Catalog, ModelRecord, check_value
from .text import is_terminal, one_line

__all__ = ["MODEL_SUFFIXES", "AddEntry", "AddReport", "SuggestFn", "add_models", "find_model_files", "safe_name"]

MODEL_SUFFIXES = (".pmx", ".pmd")

#: ``suggest(model) -> {key: value}``: head_top/head_bottom (floats, MMD Y
#: units) and expression slots (morph names or None). May return any subset.
SuggestFn = Callable[[Model], Mapping[str, Any]]

_BAD_CHARS = set('<>:"/\\|?*\x7f')
_SKIP_DIRS = {"__MACOSX"}


@dataclass
class AddEntry:
    """What happened to one model file.

    * ``outcome``: ``'added'``, ``'present'`` (same sha256 already in the
      library: nothing changed) or ``'error'``.
    * ``model_id``/``path``: the catalog id and library-relative path; for an
      error, set when the file was recorded (status ``error``), None when it
      could not even be read or copied.
    * ``message``: the one-line error ('' otherwise).
    * ``warnings``: missing textures, failed suggestions, ...
    """

    source: Path
    outcome: str
    model_id: str | None = None
    path: str | None = None
    message: str = ""
    warnings: list[str] = field(default_factory=list)


@dataclass
class AddReport:
    """The entries of one :func:`add_models` call, in processing order."""

    entries: list[AddEntry] = field(default_factory=list)

    @property
    def added(self) -> list[AddEntry]:
        return [e for e in self.entries if e.outcome == "added"]

    @property
    def present(self) -> list[AddEntry]:
        return [e for e in self.entries if e.outcome == "present"]

    @property
    def errors(self) -> list[AddEntry]:
        return [e for e in self.entries if e.outcome == "error"]

    def summary(self) -> str:
        """``"added 2, already present 1, errors 1"``."""
        return f"added {len(self.added)}, already present {len(self.present)}, errors {len(self.errors)}"


def safe_name(name: str, fallback: str = "model") -> str:
    """``name`` usable as one folder/file name on any OS: path separators,
    ``<>:"|?*`` and control characters become ``_``, trailing dots and
    spaces are dropped; ``fallback`` when nothing (or ``.``/``..``) is left."""
    out = "".join("_" if (c in _BAD_CHARS or ord(c) < 32) else c for c in name).strip().rstrip(" .")
    return fallback if out in ("", ".", "..") else out


def find_model_files(paths: Iterable[str | os.PathLike], exclude: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Expand files and folders into model files.

    A file is taken as given (the loader recognises the format by its magic
    bytes, whatever the suffix). A folder is walked recursively (symlinked
    folders are not followed) for ``*.pmx``/``*.pmd`` (any case), sorted,
    skipping hidden folders, ``__MACOSX`` and AppleDouble ``._*`` files.
    Anything inside a folder of ``exclude`` (e.g. the target library, whose
    files are there already) is skipped, given files included. Duplicates
    are dropped, order kept.

    Raises:
        FileNotFoundError: a path that does not exist (before anything is done).
    """
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(2, "no such file or folder", str(p))
    skip = [Path(os.path.abspath(e)) for e in exclude]
    out: list[Path] = []
    seen: set[str] = set()

    def excluded(p: str | Path) -> bool:
        p = Path(os.path.abspath(p))
        return any(p == s or p.is_relative_to(s) for s in skip)

    def take(p: Path) -> None:
        key = os.path.abspath(p)
        if key not in seen and not excluded(key):
            seen.add(key)
            out.append(Path(key))

    for p in paths:
        if not p.is_dir():
            take(p)
            continue
        for root, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS
                             and not excluded(os.path.join(root, d)))
            if excluded(root):
                dirs[:] = []
                continue
            for f in sorted(files):
                if f.lower().endswith(MODEL_SUFFIXES) and not f.startswith("._"):
                    take(Path(root) / f)
    return out


def add_models(catalog: Catalog, paths: Iterable[str | os.PathLike], group: str | None = None,
               suggest: SuggestFn | None = None, progress: bool = True) -> AddReport:
    """Copy models (and their textures) into the library and record them.

    Args:
        catalog: the open library.
        paths: model files and/or folders (see :func:`find_model_files`).
        group: the source group for every model; default: the name of the
            folder each model file is in.
        suggest: called with each loaded model; its ``{key: value}`` result is
            stored as ``auto`` annotations (invalid keys/values are dropped
            with a warning; an exception records no suggestion). None: none.
        progress: show a tqdm bar (only when there are several files and
            stderr is a terminal).

    Returns:
        An :class:`AddReport`. A file already in the library (same sha256) is
        ``present`` and nothing about it changes. A file that does not load is
        copied and recorded with status ``error`` and the loader's one-line
        message as reason; one that cannot be read is reported only. Processing
        always goes on to the next file.

    Raises:
        FileNotFoundError: a path does not exist (nothing is added).
        ValueError: ``group`` is not a single folder name.
    """
    if group is not None and ("/" in group or "\\" in group or group.strip() in ("", ".", "..")):
        raise ValueError(f"group {group!r} must be a single folder name")
    files = find_model_files(paths, exclude=[catalog.library])
    report = AddReport()
    show = progress and len(files) > 1 and is_terminal(sys.stderr)
    with tqdm(files, desc="adding", unit="model", disable=not show, dynamic_ncols=True) as bar:
        for src in bar:
            if show:
                bar.set_postfix_str(src.name[:40], refresh=False)
            report.entries.append(_add_one(catalog, src, group, suggest))
    return report


def _format_of(data: bytes) -> str:
    if data[:4] == b"PMX ":
        return "pmx"
    if data[:3] == b"Pmd":
        return "pmd"
    return ""


def _add_one(catalog: Catalog, src: Path, group: str | None, suggest: SuggestFn | None) -> AddEntry:
    try:
        data = src.read_bytes()
    except OSError as exc:
        return AddEntry(src, "error", message=f"{src}: cannot read: {exc.strerror or exc}")
    model_id = hashlib.sha256(data).hexdigest()
    existing = catalog.get(model_id)
    if existing is not None:
        return AddEntry(src, "present", model_id, existing.path)

    warnings: list[str] = []
    model: Model | None = None
    reason = ""
    try:
        model = parse_model(data, src.name)
    except MMDFormatError as exc:
        reason = one_line(exc)
    except Exception as exc:  # noqa: BLE001 - parse_model documents MMDFormatError only; be safe in a batch
        reason = one_line(f"{src.name}: unreadable ({type(exc).__name__}: {exc})")

    src_dir = src.parent
    to_copy: dict[str, Path] = {}  # path relative to the model folder -> source file
    names: dict[str, str] = {}  # texture name as written -> relative path
    if model is not None:
        model.path = src
        for name in texture_report(model)["referenced"]:
            found = resolve_texture_path(src_dir, name)
            if found is None:
                warnings.append(f"texture {name!r}: not found")
                continue
            found = Path(os.path.abspath(found))
            try:
                rel = found.relative_to(src_dir).as_posix()
            except ValueError:
                rel = found.name  # outside the model folder: beside the model
            if rel in to_copy and to_copy[rel] != found:
                warnings.append(f"texture {name!r}: another texture is already copied as {rel}; not copied")
                continue
            to_copy[rel] = found
            names[name] = rel
    file_name = safe_name(src.name)
    to_copy.pop(file_name, None)

    group_name = safe_name(group) if group is not None else safe_name(src_dir.name, "ungrouped")
    try:
        rel_folder, folder = _choose_folder(catalog, group_name, safe_name(src_dir.name), src, file_name, data, to_copy)
        write_model_files(folder, file_name, data, to_copy, warnings)
    except OSError as exc:
        name = exc.filename if getattr(exc, "filename", None) else src
        return AddEntry(src, "error", message=f"{src}: cannot copy into the library: {name}: {exc.strerror or exc}")

    if model is not None:
        for name, rel in names.items():
            if rel not in to_copy:
                continue
            again = resolve_texture_path(folder, name)
            if again is None or os.path.abspath(again) != os.path.abspath(folder / Path(*rel.split("/"))):
                warnings.append(f"texture {name!r}: copied as {rel} but resolves {'elsewhere' if again else 'to nothing'} in the library")

    notes = list(model.warnings) + warnings if model is not None else []
    entry_warnings = list(warnings)
    annotations: dict[str, Any] = {}
    if model is not None and suggest is not None:
        model.path = folder / file_name
        try:
            suggested = dict(suggest(model))
        except Exception as exc:  # noqa: BLE001 - a failing suggestion must not stop the batch
            entry_warnings.append(f"suggestions failed: {one_line(exc)}")
            suggested = {}
        for key, value in suggested.items():
            try:
                annotations[key] = check_value(key, value)
            except ValueError as exc:
                entry_warnings.append(f"suggestion dropped: {exc}")

    path = f"{rel_folder}/{file_name}"
    record = ModelRecord(
        id=model_id,
        path=path,
        format=_format_of(data),
        name=model.name if model is not None else "",
        group=group_name,
        status="ok" if model is not None else "error",
        reason=reason,
        vertices=model.vertex_count if model is not None else None,
        faces=model.face_count if model is not None else None,
        morphs=len(model.morphs) if model is not None else None,
        file_size=len(data),
        name_en=model.name_en if model is not None else "",
        source_path=str(src),
        notes="\n".join(one_line(n) for n in notes),
    )
    with catalog.transaction():
        if not catalog.insert_model(record):  # another process added it meanwhile
            return AddEntry(src, "present", model_id, catalog.get(model_id).path)
        if annotations:
            catalog.set_annotations(model_id, annotations, "auto")
    if model is None:
        return AddEntry(src, "error", model_id, path, message=reason, warnings=entry_warnings)
    return AddEntry(src, "added", model_id, path, warnings=entry_warnings)


def write_model_files(folder: Path, file_name: str, data: bytes, to_copy: dict[str, Path], warnings: list[str]) -> None:
    """Write the model bytes as ``folder/file_name`` and copy its textures
    (``to_copy``: relative path -> source file) beside it, each atomically;
    files already there are kept. A texture that cannot be copied adds a
    warning and is dropped from ``to_copy``. Raises OSError when the model
    itself cannot be written."""
    target = folder / file_name
    if not target.exists():
        atomic_write_bytes(target, data)
    for rel, source in list(to_copy.items()):
        dest = folder / Path(*rel.split("/"))
        if dest.exists():
            continue
        try:
            with atomic_path(dest) as tmp:
                shutil.copyfile(source, tmp)
        except OSError as exc:
            warnings.append(f"texture {rel}: cannot copy: {exc.strerror or exc}")
            del to_copy[rel]


def _choose_folder(catalog: Catalog, group: str, base: str, src: Path, file_name: str, data: bytes,
                   textures: Mapping[str, Path]) -> tuple[str, Path]:
    """The first of ``models/<group>/<base>``, ``<base>-2``, ... where every file
    to write is absent or identical and no model of another source folder lives."""
    group_dir = catalog.library / MODELS_DIRNAME / group
    if group_dir.exists() and not group_dir.is_dir():
        raise NotADirectoryError(20, "not a folder", str(group_dir))
    src_dir = os.path.abspath(src.parent)
    for n in itertools.count(1):
        name = base if n == 1 else f"{base}-{n}"
        rel = f"{MODELS_DIRNAME}/{group}/{name}"
        folder = group_dir / name
        if n > 100000:
            raise FileExistsError(17, "no free model folder", str(folder))
        if folder.exists() and not folder.is_dir():
            continue
        if any(os.path.dirname(os.path.abspath(r.source_path)) != src_dir for r in catalog.models_under(rel)):
            continue
        if not _fits(folder, file_name, data, textures):
            continue
        return rel, folder
    raise AssertionError("unreachable")


def _fits(folder: Path, file_name: str, data: bytes, textures: Mapping[str, Path]) -> bool:
    if not folder.exists():
        return True
    target = folder / file_name
    if target.exists():
        if not target.is_file() or target.stat().st_size != len(data) or target.read_bytes() != data:
            return False
    for rel, source in textures.items():
        dest = folder / Path(*rel.split("/"))
        for parent in dest.relative_to(folder).parents:
            p = folder / parent
            if p != folder and p.exists() and not p.is_dir():
                return False
        if dest.exists():
            try:
                if not dest.is_file() or not filecmp.cmp(dest, source, shallow=False):
                    return False
            except OSError:
                return False
    return True
