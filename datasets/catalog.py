"""The library catalog: one SQLite file (``LIB/catalog.sqlite``) per library.

A *library* is a folder holding ``catalog.sqlite`` and ``models/``; every model
file (and the textures it references) lives under
``models/<source group>/<model folder>/`` and is referred to by its path
relative to the library, so a library can be moved or copied as a whole.

Schema (version 1; ``PRAGMA user_version`` holds the version)
=============================================================

``models`` -- one row per model file, keyed by the SHA-256 of its bytes::

    id            TEXT PRIMARY KEY   sha256 hex of the model file (64 chars)
    path          TEXT UNIQUE        relative to the library, '/' separators
    format        TEXT               'pmx' | 'pmd' | '' (not recognised)
    name, name_en TEXT               model names from the file ('' if unreadable)
    source_group  TEXT               first folder under LIB/models (the split unit)
    status        TEXT               see STATUSES ('ok', 'error', ...)
    reason        TEXT               why the status (the loader's one-line message
                                     for 'error'); '' for 'ok'
    vertices, faces, morphs INTEGER  counts; NULL when the model did not load
    file_size     INTEGER            bytes
    source_path   TEXT               absolute path it was added from (provenance only)
    notes         TEXT               loader warnings and missing textures, one a line
    split         TEXT               'train' | 'val' | 'test' | NULL (not assigned)
    added_at, updated_at TEXT        ISO 8601 UTC timestamps

  indexes: ``models_group (source_group, path)`` (the listing order),
  ``models_status (status)``, ``models_split (split)``; ``path`` is UNIQUE.

``annotations`` -- one row per (model, key) that has been annotated::

    model_id   TEXT  -> models(id) ON DELETE CASCADE
    key        TEXT  'head_top', 'head_bottom' or an expression slot
    value            (no type affinity) REAL for head keys (MMD Y units),
                     TEXT (morph name) for slots; NULL = "explicitly none"
    origin     TEXT  'auto' (a suggestion) or 'human'
    updated_at TEXT  ISO 8601 UTC with microseconds
    PRIMARY KEY (model_id, key), WITHOUT ROWID

  index ``annotations_key_origin (key, origin)`` (to-do lists of the tools).
  *Not annotated* = no row. *Annotated as "this model has no such morph"* =
  a row whose value is NULL (origin ``human`` when a person said so).

``meta`` -- ``key TEXT PRIMARY KEY, value TEXT``: ``created_at``, ``created_by``.

Status, split and annotation keys are validated in Python (:data:`STATUSES`,
:data:`SPLITS`, :data:`ANNOTATION_KEYS`), not by SQL CHECK constraints, so
later issues can add values (the THA3 slots, ...) without rebuilding tables.
``split`` exists from version 1 (a nullable column costs nothing); duplicate
groups are left to the curation issue's migration (their shape -- exact or
near groups, scores, review decisions -- belongs there).

Version 2 (curation: ``mmdsynth scan``, ``dedup``, ``split``)
=============================================================

Appended by :data:`MIGRATIONS` ``[1]``; no version-1 table changes.

``scan_sources`` -- one row per archive or loose model file ``mmdsynth scan``
has handled (what makes a rerun skip it)::

    path          TEXT PRIMARY KEY   absolute path of the archive / model file
    kind          TEXT               'archive' | 'model'
    size, mtime_ns INTEGER           of the file when it was scanned
    sha256        TEXT               of the file's bytes (a byte-identical archive
                                     found under another name is not extracted again)
    source_group  TEXT               the group its models went to
    target        TEXT               library-relative folder it was extracted /
                                     copied to ('' when nothing was kept)
    state         TEXT               'extracted' (models not all recorded yet),
                                     'done', 'refused' (unsafe or over a limit),
                                     'error' (unreadable)
    message       TEXT               why (one line; several joined by ' | ')
    models, bytes INTEGER            model files found, bytes extracted
    scanned_at    TEXT               ISO 8601 UTC

``model_files`` -- every model file scan found in the library, keyed by its
library-relative ``path``, with ``model_id`` = sha256 of its bytes: a byte copy
of a catalog model has a row here but no ``models`` row of its own (the ids
are the sha256), which is how ``dedup`` reports exact byte copies.

``model_features`` -- per model (``ON DELETE CASCADE``): ``geometry_hash``
(positions and faces, quantised; see :mod:`.dedup`), ``stats`` (JSON),
``version`` (of that part); ``head_hash``/``body_hash`` (64-bit perceptual
hashes of front renders, 16 hex digits), ``color`` (JSON histogram),
``image_version`` (NULL until rendered), ``note``, ``updated_at``.

``duplicate_pairs`` -- the last ``dedup`` run's candidate pairs
(``model_a < model_b``, ``kind`` 'geometry' | 'near', ``distance`` in [0, 1],
``linked`` 1 when within the run's threshold, ``detail`` JSON with the
distance components). Replaced on every run.

``duplicate_decisions`` -- per model: ``decision`` 'keep' | 'duplicate',
``duplicate_of`` (the kept model), ``origin`` 'auto' | 'human', ``updated_at``;
``distinct_pairs`` -- (``model_a < model_b``, ``origin``, ``updated_at``): "these
two are not duplicates". Decisions follow the annotation rules below (``auto``
never replaces ``human``) and are never touched by a dedup re-run, which only
replaces ``duplicate_pairs`` (and its own ``auto`` decisions). A ``duplicate``
decision sets the model's status to ``duplicate`` (so the render job, which
takes status ``ok`` only, skips it); clearing it or deciding ``keep`` puts a
``duplicate`` model back to ``ok``.

Durability and concurrency
==========================

The database runs in WAL mode with ``synchronous=FULL``, foreign keys on and
a busy timeout. Every change runs in a short ``BEGIN IMMEDIATE`` transaction
(:meth:`Catalog.transaction`), so an annotation tool can commit each accepted
change at once: a SIGKILLed process loses at most its uncommitted
transaction, never a committed one, and never corrupts the file (WAL already
guarantees that with NORMAL). FULL additionally fsyncs the WAL at each commit,
so a committed human annotation also survives a power loss or OS crash --
NORMAL could drop the last commits there. The cost is one fsync per commit
(about a millisecond on an SSD), negligible next to a click or a model load.
Readers never block the writer and see a consistent snapshot. WAL needs a
local file system (not NFS/SMB shares).

Migrations
==========

:data:`MIGRATIONS` ``[i]`` upgrades a catalog from version ``i`` to ``i + 1``
(version 0 is an empty file). Opening an older catalog applies the missing
steps and sets ``user_version`` in one transaction (all or nothing); opening
a newer one raises :class:`CatalogError`. A later issue adds a step by
appending to :data:`MIGRATIONS`: a tuple of SQL statements or a callable
taking the connection (no ``executescript``: it commits).

Timestamps and precedence
=========================

Values are written with :meth:`Catalog.set_annotations`: ``auto`` never
replaces ``human``; ``human`` always replaces ``auto``. Between values of the
same origin, a live change (no ``updated_at`` given) always wins and is
stamped at least 1 microsecond after the value it replaces (so clock skew
cannot make it look older); a change carrying its own ``updated_at`` (an
import) wins only when strictly newer. Export/import (:meth:`export_document`,
:meth:`merge_document`) use the same rule, by model id.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import astuple, dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

from mmdsynth.mmd.atomic import atomic_path
from mmdsynth.mmd.schema import EXPRESSION_SLOTS, MorphAssignment

from .text import one_line

__all__ = [
    "ANNOTATION_KEYS",
    "CATALOG_FILENAME",
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "HEAD_KEYS",
    "MIGRATIONS",
    "MODELS_DIRNAME",
    "ORIGINS",
    "SCHEMA_VERSION",
    "SPLITS",
    "STATUSES",
    "AnnotationValue",
    "Catalog",
    "CatalogError",
    "ImportReport",
    "ModelRecord",
    "DUPLICATE_DECISIONS",
    "DuplicateDecision",
    "DuplicatePair",
    "ModelFeatures",
    "ScanSource",
    "check_value",
    "normalize_timestamp",
    "now_timestamp",
]

CATALOG_FILENAME = "catalog.sqlite"
MODELS_DIRNAME = "models"

HEAD_KEYS = ("head_top", "head_bottom")
ANNOTATION_KEYS = HEAD_KEYS + tuple(EXPRESSION_SLOTS)
ORIGINS = ("auto", "human")
STATUSES = ("ok", "unusable", "duplicate", "error", "not_character")
SPLITS = ("train", "val", "test")

EXPORT_FORMAT = "mmdsynth-annotations"
EXPORT_VERSION = 1

APPLICATION_ID = 0x4D4D4453  # "MMDS" in the SQLite header: marks the file as ours
BUSY_TIMEOUT_S = 30.0


class CatalogError(Exception):
    """A library or catalog that cannot be used as asked (not a library,
    a newer schema, a damaged file, a malformed export document). The
    message is one line naming the path."""


class AnnotationValue(NamedTuple):
    """One stored annotation: ``value`` (float for head keys, morph name for
    slots, None for "explicitly none"), ``origin`` ('auto' | 'human') and
    ``updated_at`` (ISO 8601 UTC string)."""

    value: float | str | None
    origin: str
    updated_at: str


@dataclass(frozen=True)
class ModelRecord:
    """One row of the ``models`` table (see the module docstring).

    ``path`` is relative to the library (POSIX separators); use
    :meth:`Catalog.model_path` for the file. ``group`` is the ``source_group``
    column. Counts are None for models that did not load.
    """

    id: str
    path: str
    format: str
    name: str
    group: str
    status: str = "ok"
    reason: str = ""
    vertices: int | None = None
    faces: int | None = None
    morphs: int | None = None
    file_size: int = 0
    name_en: str = ""
    source_path: str = ""
    notes: str = ""
    split: str | None = None
    added_at: str = ""
    updated_at: str = ""


@dataclass
class ImportReport:
    """What :meth:`Catalog.merge_document` did.

    * ``models_in_document``: models the document holds annotations for.
    * ``models_changed``: library models that got at least one new value.
    * ``values_changed``: values written.
    * ``unchanged``: incoming values the library already has (same value and origin).
    * ``kept``: incoming values not applied because the library's different
      value wins (a human value against an incoming auto one, or a newer value).
    * ``missing``: ids of document models not in this library (skipped).
    """

    models_in_document: int = 0
    models_changed: int = 0
    values_changed: int = 0
    unchanged: int = 0
    kept: int = 0
    missing: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ScanSource:
    """One ``scan_sources`` row (schema v2): an archive or loose model file that
    ``mmdsynth scan`` handled. See the module docstring for the fields."""

    path: str
    kind: str
    size: int = 0
    mtime_ns: int = 0
    sha256: str = ""
    group: str = ""
    target: str = ""
    state: str = "done"
    message: str = ""
    models: int = 0
    bytes: int = 0
    scanned_at: str = ""


@dataclass(frozen=True)
class ModelFeatures:
    """One ``model_features`` row (schema v2): what :mod:`.dedup` compares.

    ``geometry_hash``: hex digest of the quantised mesh (None: no faces);
    ``stats``: dict of simple geometry numbers; ``version``: of those two.
    ``head_hash``/``body_hash``: 64-bit perceptual hashes (16 hex digits) of
    front renders, None when not rendered; ``color``: list of floats (colour
    histogram of the body render) or None; ``image_version``: None until the
    renders were hashed."""

    model_id: str
    geometry_hash: str | None = None
    stats: dict = field(default_factory=dict)
    version: int = 0
    head_hash: str | None = None
    body_hash: str | None = None
    color: list | None = None
    image_version: int | None = None
    note: str = ""
    updated_at: str = ""


@dataclass(frozen=True)
class DuplicatePair:
    """A candidate pair of the last dedup run (``model_a < model_b``).

    ``kind``: ``'geometry'`` (same quantised mesh) or ``'near'`` (perceptual and
    statistics distance); ``distance`` in [0, 1] (0 for geometry pairs);
    ``linked``: within the run's threshold, i.e. an edge of a duplicate group;
    ``detail``: the distance components (dict)."""

    model_a: str
    model_b: str
    kind: str
    distance: float
    linked: bool = True
    detail: dict = field(default_factory=dict)


class DuplicateDecision(NamedTuple):
    """A stored duplicate decision of one model: ``decision`` ``'keep'`` or
    ``'duplicate'`` (of ``duplicate_of``), ``origin`` ``'auto'``/``'human'``,
    ``updated_at`` ISO 8601 UTC."""

    decision: str
    duplicate_of: str | None
    origin: str
    updated_at: str


DUPLICATE_DECISIONS = ("keep", "duplicate")
SCAN_STATES = ("extracted", "done", "refused", "error")
SCAN_KINDS = ("archive", "model")


# ---------------------------------------------------------------------------
# Schema and migrations
# ---------------------------------------------------------------------------

_V1 = (
    """CREATE TABLE models (
        id            TEXT PRIMARY KEY NOT NULL CHECK (length(id) = 64),
        path          TEXT NOT NULL UNIQUE,
        format        TEXT NOT NULL DEFAULT '',
        name          TEXT NOT NULL DEFAULT '',
        name_en       TEXT NOT NULL DEFAULT '',
        source_group  TEXT NOT NULL,
        status        TEXT NOT NULL DEFAULT 'ok',
        reason        TEXT NOT NULL DEFAULT '',
        vertices      INTEGER,
        faces         INTEGER,
        morphs        INTEGER,
        file_size     INTEGER NOT NULL DEFAULT 0,
        source_path   TEXT NOT NULL DEFAULT '',
        notes         TEXT NOT NULL DEFAULT '',
        split         TEXT,
        added_at      TEXT NOT NULL,
        updated_at    TEXT NOT NULL
    )""",
    "CREATE INDEX models_group ON models (source_group, path)",
    "CREATE INDEX models_status ON models (status)",
    "CREATE INDEX models_split ON models (split)",
    """CREATE TABLE annotations (
        model_id    TEXT NOT NULL REFERENCES models (id) ON DELETE CASCADE,
        key         TEXT NOT NULL,
        value,
        origin      TEXT NOT NULL CHECK (origin IN ('auto', 'human')),
        updated_at  TEXT NOT NULL,
        PRIMARY KEY (model_id, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX annotations_key_origin ON annotations (key, origin)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID",
    f"PRAGMA application_id = {APPLICATION_ID}",
)

_V2 = (
    """CREATE TABLE scan_sources (
        path          TEXT PRIMARY KEY NOT NULL,
        kind          TEXT NOT NULL,
        size          INTEGER NOT NULL DEFAULT 0,
        mtime_ns      INTEGER NOT NULL DEFAULT 0,
        sha256        TEXT NOT NULL DEFAULT '',
        source_group  TEXT NOT NULL DEFAULT '',
        target        TEXT NOT NULL DEFAULT '',
        state         TEXT NOT NULL,
        message       TEXT NOT NULL DEFAULT '',
        models        INTEGER NOT NULL DEFAULT 0,
        bytes         INTEGER NOT NULL DEFAULT 0,
        scanned_at    TEXT NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX scan_sources_sha256 ON scan_sources (sha256)",
    """CREATE TABLE model_files (
        path          TEXT PRIMARY KEY NOT NULL,
        model_id      TEXT NOT NULL,
        source_path   TEXT NOT NULL DEFAULT '',
        scanned_at    TEXT NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX model_files_model ON model_files (model_id)",
    """CREATE TABLE model_features (
        model_id      TEXT PRIMARY KEY NOT NULL REFERENCES models (id) ON DELETE CASCADE,
        geometry_hash TEXT,
        stats         TEXT NOT NULL DEFAULT '{}',
        version       INTEGER NOT NULL DEFAULT 0,
        head_hash     TEXT,
        body_hash     TEXT,
        color         TEXT,
        image_version INTEGER,
        note          TEXT NOT NULL DEFAULT '',
        updated_at    TEXT NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX model_features_geometry ON model_features (geometry_hash)",
    """CREATE TABLE duplicate_pairs (
        model_a   TEXT NOT NULL REFERENCES models (id) ON DELETE CASCADE,
        model_b   TEXT NOT NULL REFERENCES models (id) ON DELETE CASCADE,
        kind      TEXT NOT NULL,
        distance  REAL NOT NULL,
        linked    INTEGER NOT NULL DEFAULT 1,
        detail    TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (model_a, model_b),
        CHECK (model_a < model_b)
    ) WITHOUT ROWID""",
    "CREATE INDEX duplicate_pairs_b ON duplicate_pairs (model_b)",
    """CREATE TABLE duplicate_decisions (
        model_id      TEXT PRIMARY KEY NOT NULL REFERENCES models (id) ON DELETE CASCADE,
        decision      TEXT NOT NULL CHECK (decision IN ('keep', 'duplicate')),
        duplicate_of  TEXT REFERENCES models (id) ON DELETE SET NULL,
        origin        TEXT NOT NULL CHECK (origin IN ('auto', 'human')),
        updated_at    TEXT NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE distinct_pairs (
        model_a     TEXT NOT NULL REFERENCES models (id) ON DELETE CASCADE,
        model_b     TEXT NOT NULL REFERENCES models (id) ON DELETE CASCADE,
        origin      TEXT NOT NULL CHECK (origin IN ('auto', 'human')),
        updated_at  TEXT NOT NULL,
        PRIMARY KEY (model_a, model_b),
        CHECK (model_a < model_b)
    ) WITHOUT ROWID""",
    "CREATE INDEX distinct_pairs_b ON distinct_pairs (model_b)",
)

Migration = Sequence[str] | Callable[[sqlite3.Connection], None]

#: ``MIGRATIONS[i]`` upgrades version ``i`` to ``i + 1``. Append, never edit.
MIGRATIONS: list[Migration] = [_V1, _V2]


def _schema_version() -> int:
    return len(MIGRATIONS)


SCHEMA_VERSION = _schema_version()


def now_timestamp() -> str:
    """The current time as stored: ISO 8601 UTC with microseconds and ``Z``
    (``2025-01-31T12:00:00.123456Z``); such strings sort chronologically."""
    return _format_ts(datetime.now(timezone.utc))


def _format_ts(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_ts(text: Any) -> datetime:
    """Parse an ISO 8601 timestamp (naive ones are taken as UTC); ValueError if not one."""
    if not isinstance(text, str):
        raise ValueError(f"timestamp {text!r} is not a string")
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def normalize_timestamp(value: str | datetime) -> str:
    """``value`` (ISO 8601 string or datetime) in the stored form; ValueError if unreadable."""
    dt = value if isinstance(value, datetime) else _parse_ts(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return _format_ts(dt)


def check_value(key: str, value: Any) -> float | str | None:
    """Validate one annotation value; returns it normalised (floats for head keys).

    Raises:
        ValueError: unknown key; a head value that is not a finite number; a
            slot value that is not a non-empty string. None is valid for every
            key ("explicitly none").
    """
    if key not in ANNOTATION_KEYS:
        raise ValueError(f"unknown annotation key {key!r} (known: {', '.join(ANNOTATION_KEYS)})")
    if value is None:
        return None
    if key in HEAD_KEYS:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{key}: {value!r} is not a number")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{key}: {value!r} is not finite")
        return value
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key}: {value!r} is not a morph name")
    return value


# ---------------------------------------------------------------------------
# The catalog
# ---------------------------------------------------------------------------

_MODEL_COLUMNS = (
    "id, path, format, name, source_group, status, reason, vertices, faces, morphs, "
    "file_size, name_en, source_path, notes, split, added_at, updated_at"
)


_SCAN_COLUMNS = "path, kind, size, mtime_ns, sha256, source_group, target, state, message, models, bytes, scanned_at"
_FEATURE_COLUMNS = ("model_id, geometry_hash, stats, version, head_hash, body_hash, color, image_version, note, updated_at")


def _features(row: Sequence[Any]) -> ModelFeatures:
    model_id, geometry_hash, stats, version, head, body, color, image_version, note, updated_at = row
    return ModelFeatures(model_id, geometry_hash, json.loads(stats or "{}"), version, head, body,
                         json.loads(color) if color else None, image_version, note, updated_at)



assert [f.name for f in fields(ModelRecord)] == [c.strip().replace("source_group", "group") for c in _MODEL_COLUMNS.split(",")]


def _record(row: Sequence[Any]) -> ModelRecord:
    return ModelRecord(*row)


class Catalog:
    """An open library catalog. Create with :meth:`open`; use as a context
    manager (``with Catalog.open(lib) as cat:``) or call :meth:`close`.

    Every write method runs in its own transaction, or joins the one opened
    with :meth:`transaction`. Unknown model ids raise ``KeyError`` (except
    :meth:`get`, which returns None). One Catalog is one SQLite connection:
    use it from the thread that opened it; open one per process or thread.
    """

    def __init__(self, library: Path, conn: sqlite3.Connection):
        self.library = library
        self._conn = conn
        self._depth = 0
        self._snapshots = 0

    # -- opening -----------------------------------------------------------

    @classmethod
    def open(cls, library: str | os.PathLike, create: bool = False, timeout: float = BUSY_TIMEOUT_S) -> Catalog:
        """Open the library folder ``library`` (or its ``catalog.sqlite``).

        Args:
            library: the library folder.
            create: make a new library when ``library`` does not exist or is an
                empty folder (creates ``catalog.sqlite`` and ``models/``). An
                existing non-empty folder without a catalog is never adopted.
            timeout: seconds to wait for another process's write lock.

        Returns:
            The open :class:`Catalog` (a context manager). An older schema is
            upgraded first (one transaction).

        Raises:
            CatalogError: not a library (no ``catalog.sqlite``; a file), a
                catalog of a newer mmdsynth, a file that is not an mmdsynth
                catalog, or a damaged/unopenable database.
        """
        lib = Path(library).expanduser()
        if lib.name == CATALOG_FILENAME and lib.is_file():
            lib = lib.parent
        lib = lib.absolute()
        db = lib / CATALOG_FILENAME
        if lib.exists() and not lib.is_dir():
            raise CatalogError(f"{lib}: not a library (it is a file, not a folder)")
        if not db.is_file():
            if not create:
                if not lib.exists():
                    raise CatalogError(f"{lib}: no such library (folder does not exist)")
                raise CatalogError(f"{lib}: not an mmdsynth library (no {CATALOG_FILENAME})")
            if lib.exists() and any(lib.iterdir()):
                raise CatalogError(
                    f"{lib}: not an mmdsynth library (no {CATALOG_FILENAME}) and not empty; "
                    "give a new or empty folder to create a library"
                )
            try:
                (lib / MODELS_DIRNAME).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CatalogError(f"{lib}: cannot create library: {exc.strerror or exc}") from None
        try:
            conn = sqlite3.connect(str(db), timeout=timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise CatalogError(f"{db}: cannot open catalog: {one_line(exc)}") from None
        catalog = cls(lib, conn)
        try:
            catalog._setup()
        except CatalogError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise CatalogError(f"{db}: cannot use catalog: {one_line(exc)}") from None
        return catalog

    def _setup(self) -> None:
        conn = self._conn
        db = self.library / CATALOG_FILENAME
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id not in (0, APPLICATION_ID):
            raise CatalogError(f"{db}: not an mmdsynth catalog (SQLite application id {app_id:#x})")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise CatalogError(
                f"{db}: catalog schema version {version} is newer than this mmdsynth supports "
                f"({SCHEMA_VERSION}); upgrade mmdsynth to open it"
            )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        if version < SCHEMA_VERSION:
            self._migrate()

    def _migrate(self) -> None:
        conn = self._conn
        db = self.library / CATALOG_FILENAME
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated
            if version > SCHEMA_VERSION:
                raise CatalogError(f"{db}: catalog schema version {version} is newer than this mmdsynth supports")
            first = version
            for step in MIGRATIONS[version:SCHEMA_VERSION]:
                if callable(step):
                    step(conn)
                else:
                    for statement in step:
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            now = now_timestamp()
            if first == 0:
                from mmdsynth import __version__

                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('created_at', ?)", (now,))
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('created_by', ?)", (f"mmdsynth {__version__}",))
            else:
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (f"migrated_{first}_to_{SCHEMA_VERSION}", now))
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise CatalogError(f"{db}: cannot upgrade catalog from schema version {version}: {one_line(exc)}") from None
            raise

    def close(self) -> None:
        """Close the connection (an open transaction is rolled back). Idempotent."""
        if self._conn is not None:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            self._conn.close()
            self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Catalog({str(self.library)!r})"

    @property
    def path(self) -> Path:
        """The ``catalog.sqlite`` file."""
        return self.library / CATALOG_FILENAME

    @property
    def models_dir(self) -> Path:
        """``LIB/models``, where model folders live."""
        return self.library / MODELS_DIRNAME

    @property
    def schema_version(self) -> int:
        """The catalog's schema version (``PRAGMA user_version``)."""
        return self._conn.execute("PRAGMA user_version").fetchone()[0]

    @property
    def connection(self) -> sqlite3.Connection:
        """The underlying connection (autocommit mode: open transactions with
        :meth:`transaction`), for queries this class does not offer."""
        return self._conn

    # -- transactions ------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Catalog]:
        """A write transaction: committed when the block ends, rolled back when
        it raises. Starts with ``BEGIN IMMEDIATE`` (takes the write lock at
        once, waiting up to the busy timeout for other writers). Nested blocks
        become savepoints: an inner block that raises undoes only its own
        changes. Keep transactions short: other writers wait for them."""
        conn = self._conn
        if self._snapshots and not self._depth:
            raise RuntimeError("cannot write inside Catalog.snapshot(); open the transaction first")
        if self._depth == 0:
            conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self
            except BaseException:
                self._depth = 0
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0
        else:
            name = f"sp{self._depth}"
            conn.execute(f"SAVEPOINT {name}")
            self._depth += 1
            try:
                yield self
            except BaseException:
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
                raise
            else:
                conn.execute(f"RELEASE {name}")
            finally:
                self._depth -= 1

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Catalog]:
        """A read transaction: every query in the block sees the same committed
        state, whatever other processes commit meanwhile (they are not
        blocked). Nests, and joins an open :meth:`transaction`. Writing inside
        a snapshot raises RuntimeError."""
        if self._depth or self._snapshots:
            self._snapshots += 1
            try:
                yield self
            finally:
                self._snapshots -= 1
            return
        self._conn.execute("BEGIN DEFERRED")
        self._snapshots = 1
        try:
            yield self
        finally:
            self._snapshots = 0
            if self._conn.in_transaction:
                self._conn.execute("COMMIT")

    # -- models ------------------------------------------------------------

    def models(self, status: str | None = None, group: str | None = None, split: str | None = None) -> list[ModelRecord]:
        """All models, ordered by source group then path, optionally filtered by
        ``status``, ``group`` (source group) and ``split``. Uses indexes; fine
        for 10,000+ models."""
        sql = f"SELECT {_MODEL_COLUMNS} FROM models"
        where, params = [], []
        for column, value in (("status", status), ("source_group", group), ("split", split)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY source_group, path"
        return [_record(r) for r in self._conn.execute(sql, params)]

    def count(self, status: str | None = None) -> int:
        """Number of models (with ``status`` when given)."""
        if status is None:
            return self._conn.execute("SELECT count(*) FROM models").fetchone()[0]
        return self._conn.execute("SELECT count(*) FROM models WHERE status = ?", (status,)).fetchone()[0]

    def get(self, model_id: str) -> ModelRecord | None:
        """The model with id ``model_id`` (full sha256 hex), or None."""
        row = self._conn.execute(f"SELECT {_MODEL_COLUMNS} FROM models WHERE id = ?", (model_id,)).fetchone()
        return _record(row) if row else None

    def __contains__(self, model_id: object) -> bool:
        return isinstance(model_id, str) and self._conn.execute(
            "SELECT 1 FROM models WHERE id = ?", (model_id,)).fetchone() is not None

    def _require(self, model_id: str) -> None:
        if model_id not in self:
            raise KeyError(f"no model {model_id!r} in {self.library}")

    def resolve_id(self, prefix: str) -> str:
        """The full id of the only model whose id starts with ``prefix``
        (case-insensitive hex). KeyError when none or several match."""
        p = prefix.strip().lower()
        if not p or any(c not in "0123456789abcdef" for c in p):
            raise KeyError(f"{prefix!r} is not a model id prefix")
        rows = self._conn.execute(
            "SELECT id FROM models WHERE id >= ? AND id < ? LIMIT 2", (p, p + "g")).fetchall()
        if not rows:
            raise KeyError(f"no model id starts with {p}")
        if len(rows) > 1:
            raise KeyError(f"several model ids start with {p}")
        return rows[0][0]

    def model_path(self, model_id: str) -> Path:
        """Absolute path of the model file. KeyError for an unknown id."""
        row = self._conn.execute("SELECT path FROM models WHERE id = ?", (model_id,)).fetchone()
        if row is None:
            raise KeyError(f"no model {model_id!r} in {self.library}")
        return self.library / Path(*row[0].split("/"))

    def insert_model(self, record: ModelRecord) -> bool:
        """Insert a model row (used by :func:`mmdsynth.datasets.library.add_models`).

        Empty ``added_at``/``updated_at`` are set to now. Returns False (and
        changes nothing) when a model with the same id exists.

        Raises:
            ValueError: unknown status or split, an id that is not 64 hex
                characters, an absolute path or one with backslashes.
            sqlite3.IntegrityError: ``path`` already used by another model.
        """
        if record.status not in STATUSES:
            raise ValueError(f"unknown status {record.status!r} (known: {', '.join(STATUSES)})")
        if record.split is not None and record.split not in SPLITS:
            raise ValueError(f"unknown split {record.split!r} (known: {', '.join(SPLITS)})")
        if len(record.id) != 64 or any(c not in "0123456789abcdef" for c in record.id):
            raise ValueError(f"model id {record.id!r} is not a lower-case sha256 hex digest")
        if "\\" in record.path or record.path.startswith("/") or ".." in record.path.split("/"):
            raise ValueError(f"model path {record.path!r} must be relative to the library, with '/' separators")
        now = now_timestamp()
        values = list(astuple(record))
        values[-2] = record.added_at or now
        values[-1] = record.updated_at or now
        with self.transaction():
            if record.id in self:
                return False
            placeholders = ", ".join("?" for _ in values)
            self._conn.execute(f"INSERT INTO models ({_MODEL_COLUMNS}) VALUES ({placeholders})", values)
        return True

    def models_under(self, folder: str) -> list[ModelRecord]:
        """Models whose library-relative path lies under ``folder`` (a relative
        POSIX path such as ``models/gene/gene``)."""
        prefix = folder.rstrip("/") + "/"
        return [_record(r) for r in self._conn.execute(
            f"SELECT {_MODEL_COLUMNS} FROM models WHERE substr(path, 1, ?) = ? ORDER BY path", (len(prefix), prefix))]

    def set_status(self, model_id: str, status: str, reason: str = "") -> None:
        """Set a model's status (one of :data:`STATUSES`) and the reason for it.

        Raises:
            ValueError: unknown status.
            KeyError: unknown model id.
        """
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r} (known: {', '.join(STATUSES)})")
        with self.transaction():
            cur = self._conn.execute(
                "UPDATE models SET status = ?, reason = ?, updated_at = ? WHERE id = ?",
                (status, one_line(reason), now_timestamp(), model_id))
            if cur.rowcount == 0:
                raise KeyError(f"no model {model_id!r} in {self.library}")

    def set_split(self, model_id: str, split: str | None) -> None:
        """Assign a model to ``'train'``, ``'val'``, ``'test'`` or None (unassigned).

        Raises ValueError (unknown split) or KeyError (unknown model id)."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
        with self.transaction():
            cur = self._conn.execute("UPDATE models SET split = ?, updated_at = ? WHERE id = ?",
                                     (split, now_timestamp(), model_id))
            if cur.rowcount == 0:
                raise KeyError(f"no model {model_id!r} in {self.library}")

    # -- annotations -------------------------------------------------------

    def annotations(self, model_id: str) -> dict[str, AnnotationValue]:
        """The annotated keys of a model: ``{key: AnnotationValue}``. Keys never
        annotated are absent; a key annotated as "none" maps to a value of
        None. KeyError for an unknown model id."""
        with self.snapshot():
            self._require(model_id)
            rows = self._conn.execute(
                "SELECT key, value, origin, updated_at FROM annotations WHERE model_id = ?", (model_id,)).fetchall()
        order = {k: i for i, k in enumerate(ANNOTATION_KEYS)}
        rows.sort(key=lambda r: (order.get(r[0], len(order)), r[0]))
        return {k: AnnotationValue(v, o, t) for k, v, o, t in rows}

    def set_annotation(self, model_id: str, key: str, value: float | str | None, origin: str,
                       updated_at: str | datetime | None = None) -> bool:
        """Set one annotation (see :meth:`set_annotations`); True when it changed."""
        return bool(self.set_annotations(model_id, {key: value}, origin, updated_at))

    def set_annotations(self, model_id: str, values: Mapping[str, float | str | None], origin: str,
                        updated_at: str | datetime | None = None) -> dict[str, AnnotationValue]:
        """Store annotation values of one model in one transaction.

        Args:
            model_id: the model.
            values: ``{key: value}``; keys from :data:`ANNOTATION_KEYS`; head
                keys take finite numbers (MMD Y units), slots take morph names;
                None means "explicitly none" (e.g. the model has no such morph).
            origin: ``'auto'`` (a suggestion) or ``'human'``.
            updated_at: the values' timestamp. None (a live change): now, and
                a value of the same origin is always replaced. Given (an
                import): a value of the same origin is replaced only when
                this timestamp is strictly newer.

        Rules: ``auto`` never replaces ``human``; ``human`` always replaces
        ``auto``; an identical value with the same origin is left alone.

        Returns:
            ``{key: AnnotationValue}`` for the keys that changed (new values).

        Raises:
            ValueError: unknown origin or key, or an invalid value (nothing is written).
            KeyError: unknown model id.
        """
        if origin not in ORIGINS:
            raise ValueError(f"unknown origin {origin!r} (known: {', '.join(ORIGINS)})")
        clean = {key: check_value(key, value) for key, value in values.items()}
        explicit = updated_at is not None
        stamp = normalize_timestamp(updated_at) if explicit else None
        changed: dict[str, AnnotationValue] = {}
        with self.transaction():
            self._require(model_id)
            current = {k: (v, o, t) for k, v, o, t in self._conn.execute(
                "SELECT key, value, origin, updated_at FROM annotations WHERE model_id = ?", (model_id,))}
            now = now_timestamp()
            for key, value in clean.items():
                old = current.get(key)
                when = stamp if explicit else now
                if old is not None:
                    old_value, old_origin, old_ts = old
                    if old_origin == "human" and origin == "auto":
                        continue
                    if old_origin == origin:
                        if _same(old_value, value):
                            continue
                        if explicit:
                            if not _parse_ts(when) > _parse_ts(old_ts):
                                continue
                        else:
                            when = _after(now, old_ts)
                    elif not explicit:
                        when = _after(now, old_ts)
                self._conn.execute(
                    "INSERT OR REPLACE INTO annotations (model_id, key, value, origin, updated_at) VALUES (?, ?, ?, ?, ?)",
                    (model_id, key, value, origin, when))
                changed[key] = AnnotationValue(value, origin, when)
        return changed

    def clear_annotations(self, model_id: str, keys: Sequence[str] | None = None) -> list[str]:
        """Forget annotations (back to "not annotated"), whatever their origin:
        ``keys`` or all. Returns the keys removed. KeyError for an unknown model."""
        with self.transaction():
            self._require(model_id)
            present = [r[0] for r in self._conn.execute("SELECT key FROM annotations WHERE model_id = ?", (model_id,))]
            gone = [k for k in present if keys is None or k in keys]
            self._conn.executemany("DELETE FROM annotations WHERE model_id = ? AND key = ?", [(model_id, k) for k in gone])
        return gone

    def assignment(self, model_id: str) -> MorphAssignment:
        """The model's :class:`MorphAssignment` from its slot annotations (auto
        or human); slots not annotated, or annotated as none, are None.
        KeyError for an unknown model id."""
        ann = self.annotations(model_id)
        return MorphAssignment(**{slot: (ann[slot].value if slot in ann else None) for slot in EXPRESSION_SLOTS})

    def head_bounds(self, model_id: str) -> tuple[float, float, str] | None:
        """``(top, bottom, origin)`` in MMD Y units, or None when either bound is
        not annotated or annotated as none. ``origin`` is ``'human'`` only when
        both bounds are human, else ``'auto'``. KeyError for an unknown model."""
        ann = self.annotations(model_id)
        top, bottom = ann.get("head_top"), ann.get("head_bottom")
        if top is None or bottom is None or top.value is None or bottom.value is None:
            return None
        origin = "human" if top.origin == bottom.origin == "human" else "auto"
        return float(top.value), float(bottom.value), origin

    def annotation_origins(self) -> dict[str, dict[str, tuple[str, bool]]]:
        """Every model's annotated keys: ``{model_id: {key: (origin, has_value)}}``
        (one query; for listings)."""
        out: dict[str, dict[str, tuple[str, bool]]] = {}
        for model_id, key, origin, has_value in self._conn.execute(
                "SELECT model_id, key, origin, value IS NOT NULL FROM annotations"):
            out.setdefault(model_id, {})[key] = (origin, bool(has_value))
        return out

    def listing(self, status: str | None = None) -> list[dict[str, Any]]:
        """One JSON-ready dict per model (the ``mmdsynth catalog --json`` rows),
        in :meth:`models` order, with exactly the keys
        ``id, name, path, group, format, status, reason, split, vertices,
        faces, morphs, head, slots``.

        ``head``: ``'human'`` (both bounds human), ``'auto'`` (both annotated,
        at least one auto), ``'none'`` (annotated as having no usable head), or
        ``'missing'``. ``slots``: ``{slot: 'human' | 'auto' | 'missing'}`` for
        the seven expression slots (a slot annotated as "no such morph" counts
        by its origin).
        """
        with self.snapshot():
            records = self.models(status=status)
            origins = self.annotation_origins()
        rows = []
        for r in records:
            ann = origins.get(r.id, {})
            rows.append({
                "id": r.id,
                "name": r.name,
                "path": r.path,
                "group": r.group,
                "format": r.format,
                "status": r.status,
                "reason": r.reason,
                "split": r.split,
                "vertices": r.vertices,
                "faces": r.faces,
                "morphs": r.morphs,
                "head": _head_state(ann),
                "slots": {slot: ann[slot][0] if slot in ann else "missing" for slot in EXPRESSION_SLOTS},
            })
        return rows

    # -- export / import ---------------------------------------------------

    def export_document(self, model_ids: Sequence[str] | None = None) -> dict[str, Any]:
        """The annotations of this library as a JSON-ready document::

            {"format": "mmdsynth-annotations", "version": 1, "exported_at": TS,
             "models": {ID: {"name": ..., "path": ..., "annotations":
                 {KEY: {"value": V, "origin": "auto"|"human", "updated_at": TS}}}}}

        Only models with at least one annotation are included (all, or those
        in ``model_ids``). ``name``/``path`` are for people; import matches by id.
        """
        wanted = set(model_ids) if model_ids is not None else None
        doc_models: dict[str, Any] = {}
        with self.snapshot():
            names = {r[0]: (r[1], r[2]) for r in self._conn.execute("SELECT id, name, path FROM models")}
            rows = self._conn.execute(
                "SELECT model_id, key, value, origin, updated_at FROM annotations ORDER BY model_id").fetchall()
        order = {k: i for i, k in enumerate(ANNOTATION_KEYS)}
        for model_id, key, value, origin, ts in rows:
            if wanted is not None and model_id not in wanted:
                continue
            entry = doc_models.setdefault(model_id, {"name": names[model_id][0], "path": names[model_id][1], "annotations": {}})
            entry["annotations"][key] = {"value": value, "origin": origin, "updated_at": ts}
        for entry in doc_models.values():
            entry["annotations"] = dict(sorted(entry["annotations"].items(), key=lambda kv: (order.get(kv[0], 99), kv[0])))
        return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "exported_at": now_timestamp(), "models": doc_models}

    def export_annotations(self, out: str | os.PathLike, model_ids: Sequence[str] | None = None) -> int:
        """Write :meth:`export_document` to ``out`` as UTF-8 JSON, atomically
        (temporary file + rename). Returns the number of models written.
        Raises OSError when the file cannot be written."""
        doc = self.export_document(model_ids)
        text = json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
        with atomic_path(out) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return len(doc["models"])

    def merge_document(self, doc: Any) -> ImportReport:
        """Merge an exported document into this library, by model id, in one
        transaction (all or nothing).

        Per value: ``human`` replaces ``auto``; ``auto`` never replaces
        ``human``; between the same origin the newer ``updated_at`` wins (ties
        keep the library's value); the incoming timestamp is kept. Models not
        in this library are listed in ``ImportReport.missing`` and skipped.

        Raises:
            CatalogError: not an export document, a newer format version, or
                an invalid entry (named in the message); nothing is written.
        """
        entries = _validate_document(doc)
        report = ImportReport(models_in_document=len(entries))
        with self.transaction():
            for model_id, values in entries.items():
                if model_id not in self:
                    report.missing.append(model_id)
                    continue
                changed_here = 0
                current = self.annotations(model_id)
                for key, (value, origin, ts) in values.items():
                    if self.set_annotations(model_id, {key: value}, origin, updated_at=ts):
                        changed_here += 1
                    elif key in current and current[key].origin == origin and _same(current[key].value, value):
                        report.unchanged += 1
                    else:
                        report.kept += 1
                if changed_here:
                    report.models_changed += 1
                    report.values_changed += changed_here
        return report

    def import_annotations(self, path: str | os.PathLike) -> ImportReport:
        """Read a JSON file written by :meth:`export_annotations` and
        :meth:`merge_document` it. Raises CatalogError for a file that is not
        valid JSON or not an export document, OSError when unreadable."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CatalogError(f"{path}: not a UTF-8 JSON file ({exc.reason})") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CatalogError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        try:
            return self.merge_document(doc)
        except CatalogError as exc:
            raise CatalogError(f"{path}: {exc}") from None


    # -- curation (schema v2): scan bookkeeping --------------------------------

    def scan_source(self, path: str | os.PathLike) -> ScanSource | None:
        """The ``scan_sources`` row of ``path`` (absolute source path), or None."""
        row = self._conn.execute(f"SELECT {_SCAN_COLUMNS} FROM scan_sources WHERE path = ?", (str(path),)).fetchone()
        return ScanSource(*row) if row else None

    def scan_source_by_sha256(self, sha256: str, kind: str = "archive") -> ScanSource | None:
        """A handled source (state ``extracted`` or ``done``) of ``kind`` whose bytes
        have this sha256, or None (the first by path)."""
        row = self._conn.execute(
            f"SELECT {_SCAN_COLUMNS} FROM scan_sources WHERE sha256 = ? AND kind = ? AND state IN ('extracted', 'done') "
            "ORDER BY path LIMIT 1", (sha256, kind)).fetchone()
        return ScanSource(*row) if row else None

    def scan_sources(self, state: str | None = None) -> list[ScanSource]:
        """All ``scan_sources`` rows (with ``state`` when given), by path."""
        sql = f"SELECT {_SCAN_COLUMNS} FROM scan_sources"
        rows = self._conn.execute(sql + (" WHERE state = ? ORDER BY path" if state else " ORDER BY path"),
                                  (state,) if state else ())
        return [ScanSource(*r) for r in rows]

    def record_scan_source(self, source: ScanSource) -> None:
        """Insert or replace the ``scan_sources`` row of ``source.path``
        (``scanned_at`` defaults to now; ``message`` is made one line).

        Raises ValueError for an unknown ``kind`` or ``state``."""
        if source.kind not in SCAN_KINDS:
            raise ValueError(f"unknown scan source kind {source.kind!r} (known: {', '.join(SCAN_KINDS)})")
        if source.state not in SCAN_STATES:
            raise ValueError(f"unknown scan state {source.state!r} (known: {', '.join(SCAN_STATES)})")
        values = list(astuple(source))
        values[8] = one_line(source.message)
        values[-1] = source.scanned_at or now_timestamp()
        with self.transaction():
            self._conn.execute(f"INSERT OR REPLACE INTO scan_sources ({_SCAN_COLUMNS}) VALUES ({', '.join('?' * len(values))})",
                               values)

    def record_model_file(self, path: str, model_id: str, source_path: str = "") -> None:
        """Remember that the library file ``path`` (relative, '/' separators)
        holds the model bytes with sha256 ``model_id`` (a catalog model or a byte
        copy of one). Replaces an earlier row of the same path."""
        if "\\" in path or path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"model file path {path!r} must be relative to the library, with '/' separators")
        with self.transaction():
            self._conn.execute("INSERT OR REPLACE INTO model_files (path, model_id, source_path, scanned_at) VALUES (?, ?, ?, ?)",
                               (path, model_id, source_path, now_timestamp()))

    def model_file_paths(self) -> set[str]:
        """Library-relative paths of every recorded model file."""
        return {r[0] for r in self._conn.execute("SELECT path FROM model_files")}

    def model_files(self, model_id: str | None = None) -> list[tuple[str, str, str]]:
        """``(path, model_id, source_path)`` of recorded model files (of one
        model id when given), by path."""
        if model_id is None:
            return list(self._conn.execute("SELECT path, model_id, source_path FROM model_files ORDER BY path"))
        return list(self._conn.execute("SELECT path, model_id, source_path FROM model_files WHERE model_id = ? ORDER BY path",
                                       (model_id,)))

    def byte_copies(self) -> dict[str, list[str]]:
        """Exact byte copies: ``{model_id: [library paths]}`` for every catalog
        model of which scan found more than one file (the catalog path first).
        A copy never gets a catalog row of its own (the id is the sha256)."""
        out: dict[str, list[str]] = {}
        rows = self._conn.execute(
            "SELECT f.model_id, f.path, m.path FROM model_files f JOIN models m ON m.id = f.model_id ORDER BY f.model_id, f.path")
        for model_id, path, main in rows:
            paths = out.setdefault(model_id, [main])
            if path not in paths:
                paths.append(path)
        return {k: v for k, v in out.items() if len(v) > 1}

    # -- curation (schema v2): features ----------------------------------------

    def features(self, model_ids: Sequence[str] | None = None) -> dict[str, ModelFeatures]:
        """``{model_id: ModelFeatures}`` of the models that have a features row
        (all, or those in ``model_ids``)."""
        rows = self._conn.execute(f"SELECT {_FEATURE_COLUMNS} FROM model_features")
        wanted = set(model_ids) if model_ids is not None else None
        out = {}
        for row in rows:
            if wanted is not None and row[0] not in wanted:
                continue
            out[row[0]] = _features(row)
        return out

    def set_geometry_features(self, model_id: str, geometry_hash: str | None, stats: Mapping[str, Any], version: int) -> None:
        """Store a model's geometry hash and statistics (keeps its image hashes).
        KeyError for an unknown model id."""
        with self.transaction():
            self._require(model_id)
            now = now_timestamp()
            self._conn.execute(
                "INSERT INTO model_features (model_id, geometry_hash, stats, version, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (model_id) DO UPDATE SET geometry_hash = excluded.geometry_hash, stats = excluded.stats, "
                "version = excluded.version, updated_at = excluded.updated_at",
                (model_id, geometry_hash, json.dumps(dict(stats), sort_keys=True), int(version), now))

    def set_image_features(self, model_id: str, head_hash: str | None, body_hash: str | None,
                           color: Sequence[float] | None, image_version: int, note: str = "") -> None:
        """Store a model's perceptual hashes (16 hex digits or None) and colour
        histogram (keeps its geometry part). KeyError for an unknown model id."""
        with self.transaction():
            self._require(model_id)
            self._conn.execute(
                "INSERT INTO model_features (model_id, head_hash, body_hash, color, image_version, note, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model_id) DO UPDATE SET head_hash = excluded.head_hash, "
                "body_hash = excluded.body_hash, color = excluded.color, image_version = excluded.image_version, "
                "note = excluded.note, updated_at = excluded.updated_at",
                (model_id, head_hash, body_hash, None if color is None else json.dumps([round(float(c), 6) for c in color]),
                 int(image_version), one_line(note), now_timestamp()))

    # -- curation (schema v2): duplicate pairs and decisions ----------------------

    def replace_duplicate_pairs(self, pairs: Iterable[DuplicatePair], run: Mapping[str, Any] | None = None) -> int:
        """Replace the stored candidate pairs with ``pairs`` (one transaction)
        and record ``run`` (the parameters of the dedup run, JSON) in ``meta``
        under ``dedup_run``. Decisions are not touched. Returns the count.

        Raises ValueError for a pair that is not ``model_a < model_b``."""
        rows = []
        for p in pairs:
            if not p.model_a < p.model_b:
                raise ValueError(f"duplicate pair ({p.model_a}, {p.model_b}) must have model_a < model_b")
            rows.append((p.model_a, p.model_b, p.kind, float(p.distance), int(bool(p.linked)),
                         json.dumps(p.detail, sort_keys=True)))
        with self.transaction():
            self._conn.execute("DELETE FROM duplicate_pairs")
            self._conn.executemany(
                "INSERT INTO duplicate_pairs (model_a, model_b, kind, distance, linked, detail) VALUES (?, ?, ?, ?, ?, ?)", rows)
            if run is not None:
                self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('dedup_run', ?)",
                                   (json.dumps(dict(run), sort_keys=True),))
        return len(rows)

    def duplicate_pairs(self, linked_only: bool = False) -> list[DuplicatePair]:
        """The stored candidate pairs of the last dedup run (sorted)."""
        sql = "SELECT model_a, model_b, kind, distance, linked, detail FROM duplicate_pairs"
        if linked_only:
            sql += " WHERE linked = 1"
        return [DuplicatePair(a, b, k, d, bool(lk), json.loads(det or "{}"))
                for a, b, k, d, lk, det in self._conn.execute(sql + " ORDER BY model_a, model_b")]

    def dedup_run(self) -> dict[str, Any] | None:
        """The parameters the last dedup run recorded, or None."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'dedup_run'").fetchone()
        return json.loads(row[0]) if row else None

    def duplicate_decisions(self) -> dict[str, DuplicateDecision]:
        """Every model's duplicate decision: ``{model_id: DuplicateDecision}``."""
        return {r[0]: DuplicateDecision(*r[1:]) for r in self._conn.execute(
            "SELECT model_id, decision, duplicate_of, origin, updated_at FROM duplicate_decisions")}

    def duplicate_decision(self, model_id: str) -> DuplicateDecision | None:
        """The model's duplicate decision, or None."""
        row = self._conn.execute("SELECT decision, duplicate_of, origin, updated_at FROM duplicate_decisions WHERE model_id = ?",
                                 (model_id,)).fetchone()
        return DuplicateDecision(*row) if row else None

    def set_duplicate_decision(self, model_id: str, decision: str, duplicate_of: str | None = None,
                               origin: str = "human", updated_at: str | datetime | None = None) -> bool:
        """Record that ``model_id`` is kept or is a duplicate of ``duplicate_of``.

        Precedence as for annotations: ``auto`` never replaces ``human``;
        ``human`` replaces ``auto``; same origin: a live change (no
        ``updated_at``) wins, an explicit timestamp only when strictly newer.

        Side effect (same transaction): ``'duplicate'`` sets the model's status
        to ``duplicate`` (reason ``duplicate of <id>``) when it is ``ok`` or
        ``duplicate``; ``'keep'`` puts a ``duplicate`` model back to ``ok``.
        Models with another status (error, not_character, unusable) keep it.

        Returns True when the decision changed.

        Raises:
            ValueError: unknown decision/origin; ``duplicate`` without
                ``duplicate_of`` or of itself; ``keep`` with ``duplicate_of``.
            KeyError: unknown model id (either one).
        """
        if decision not in DUPLICATE_DECISIONS:
            raise ValueError(f"unknown duplicate decision {decision!r} (known: {', '.join(DUPLICATE_DECISIONS)})")
        if origin not in ORIGINS:
            raise ValueError(f"unknown origin {origin!r} (known: {', '.join(ORIGINS)})")
        if decision == "duplicate" and (not duplicate_of or duplicate_of == model_id):
            raise ValueError("a 'duplicate' decision needs duplicate_of, another model's id")
        if decision == "keep" and duplicate_of is not None:
            raise ValueError("a 'keep' decision takes no duplicate_of")
        explicit = updated_at is not None
        stamp = normalize_timestamp(updated_at) if explicit else None
        with self.transaction():
            self._require(model_id)
            if duplicate_of is not None:
                self._require(duplicate_of)
            old = self.duplicate_decision(model_id)
            now = now_timestamp()
            when = stamp if explicit else now
            if old is not None:
                if old.origin == "human" and origin == "auto":
                    return False
                if old.origin == origin:
                    if old.decision == decision and old.duplicate_of == duplicate_of:
                        return False
                    if explicit and not _parse_ts(when) > _parse_ts(old.updated_at):
                        return False
                if not explicit:
                    when = _after(now, old.updated_at)
            self._conn.execute(
                "INSERT OR REPLACE INTO duplicate_decisions (model_id, decision, duplicate_of, origin, updated_at) "
                "VALUES (?, ?, ?, ?, ?)", (model_id, decision, duplicate_of, origin, when))
            self._apply_duplicate_status(model_id, decision, duplicate_of)
        return True

    def clear_duplicate_decision(self, model_id: str, origin: str | None = None) -> bool:
        """Forget the model's duplicate decision (only one of ``origin`` when
        given); a ``duplicate`` model goes back to ``ok``. Returns True when a
        decision was removed. KeyError for an unknown model id."""
        with self.transaction():
            self._require(model_id)
            old = self.duplicate_decision(model_id)
            if old is None or (origin is not None and old.origin != origin):
                return False
            self._conn.execute("DELETE FROM duplicate_decisions WHERE model_id = ?", (model_id,))
            self._apply_duplicate_status(model_id, None, None)
        return True

    def _apply_duplicate_status(self, model_id: str, decision: str | None, duplicate_of: str | None) -> None:
        status = self._conn.execute("SELECT status FROM models WHERE id = ?", (model_id,)).fetchone()[0]
        now = now_timestamp()
        if decision == "duplicate" and status in ("ok", "duplicate"):
            self._conn.execute("UPDATE models SET status = 'duplicate', reason = ?, updated_at = ? WHERE id = ?",
                               (f"duplicate of {duplicate_of}", now, model_id))
        elif decision != "duplicate" and status == "duplicate":
            self._conn.execute("UPDATE models SET status = 'ok', reason = '', updated_at = ? WHERE id = ?", (now, model_id))

    def distinct_pairs(self) -> dict[tuple[str, str], tuple[str, str]]:
        """"Not duplicates" decisions: ``{(a, b): (origin, updated_at)}`` with a < b."""
        return {(a, b): (o, t) for a, b, o, t in self._conn.execute(
            "SELECT model_a, model_b, origin, updated_at FROM distinct_pairs")}

    def set_distinct(self, model_a: str, model_b: str, origin: str = "human",
                     updated_at: str | datetime | None = None) -> bool:
        """Record that two models are not duplicates of each other (order does
        not matter); dedup never links them again. ``auto`` never replaces a
        ``human`` row. Returns True when a row was written.

        Raises ValueError (same model, unknown origin), KeyError (unknown id)."""
        if origin not in ORIGINS:
            raise ValueError(f"unknown origin {origin!r} (known: {', '.join(ORIGINS)})")
        if model_a == model_b:
            raise ValueError("a model cannot be distinct from itself")
        a, b = sorted((model_a, model_b))
        stamp = normalize_timestamp(updated_at) if updated_at is not None else now_timestamp()
        with self.transaction():
            self._require(a)
            self._require(b)
            row = self._conn.execute("SELECT origin FROM distinct_pairs WHERE model_a = ? AND model_b = ?", (a, b)).fetchone()
            if row is not None and (row[0] == "human" or row[0] == origin):
                return False
            self._conn.execute("INSERT OR REPLACE INTO distinct_pairs (model_a, model_b, origin, updated_at) VALUES (?, ?, ?, ?)",
                               (a, b, origin, stamp))
        return True

    def clear_distinct(self, model_a: str, model_b: str) -> bool:
        """Forget a "not duplicates" decision; True when one was removed."""
        a, b = sorted((model_a, model_b))
        with self.transaction():
            cur = self._conn.execute("DELETE FROM distinct_pairs WHERE model_a = ? AND model_b = ?", (a, b))
        return cur.rowcount > 0


def _validate_document(doc: Any) -> dict[str, dict[str, tuple[Any, str, str]]]:
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise CatalogError(f"not an mmdsynth annotation export (expected \"format\": \"{EXPORT_FORMAT}\")")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CatalogError(f"export format version {version!r} is not valid")
    if version > EXPORT_VERSION:
        raise CatalogError(f"export format version {version} is newer than this mmdsynth reads ({EXPORT_VERSION})")
    models = doc.get("models")
    if not isinstance(models, dict):
        raise CatalogError("\"models\" must be an object keyed by model id")
    out: dict[str, dict[str, tuple[Any, str, str]]] = {}
    for model_id, entry in models.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("annotations", {}), dict):
            raise CatalogError(f"model {model_id}: entry must be an object with an \"annotations\" object")
        values = {}
        for key, item in entry.get("annotations", {}).items():
            where = f"model {model_id}: {key}"
            if not isinstance(item, dict):
                raise CatalogError(f"{where}: must be an object with value, origin, updated_at")
            if item.get("origin") not in ORIGINS:
                raise CatalogError(f"{where}: origin {item.get('origin')!r} is not auto or human")
            try:
                value = check_value(key, item.get("value"))
                ts = normalize_timestamp(item.get("updated_at"))
            except (ValueError, TypeError) as exc:
                raise CatalogError(f"{where}: {exc}") from None
            values[key] = (value, item["origin"], ts)
        out[str(model_id)] = values
    return out


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _after(now: str, old: str) -> str:
    """``now``, or 1 microsecond after ``old`` when ``old`` is not earlier (clock skew)."""
    try:
        old_dt = _parse_ts(old)
    except ValueError:
        return now
    if _parse_ts(now) > old_dt:
        return now
    return _format_ts(old_dt + timedelta(microseconds=1))


def _head_state(ann: Mapping[str, tuple[str, bool]]) -> str:
    top, bottom = ann.get("head_top"), ann.get("head_bottom")
    if top is None or bottom is None:
        return "missing"
    if not (top[1] and bottom[1]):
        return "none" if (top[0] == bottom[0] == "human") else "missing"
    return "human" if top[0] == bottom[0] == "human" else "auto"
