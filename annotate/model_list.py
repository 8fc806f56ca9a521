"""The model list of the annotation tools: catalog rows, filters, progress.

:func:`load_rows` reads every model of a library with its review state for
one tool in a single query (10,000 rows in a few tens of milliseconds);
:class:`ModelListModel` shows them in a Qt item view. The view only asks for
the rows it draws, so a list of 10,000+ models opens as fast as one of ten.

Review state of a model for a tool (its keys: head bounds, or the seven slots):

* ``human``: every key annotated by a person (``reviewed``);
* ``auto``: every key annotated, some only by the suggestions;
* ``missing``: some key not annotated at all.

Filters (:data:`FILTERS`): ``needs review`` (status ok, state auto or
missing), ``reviewed`` (status ok, state human), ``unusable`` (status
unusable) and ``all`` (every row, errors and duplicates included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PyQt5 import QtCore, QtGui

from mmdsynth.datasets.catalog import Catalog

__all__ = ["FILTERS", "FilteredListModel", "ModelListModel", "Progress", "Row", "load_rows", "progress_of",
           "row_matches"]

FILTERS = ("needs review", "reviewed", "unusable", "all")


@dataclass
class Row:
    """One model in the list: catalog fields plus the tool's review state."""

    id: str
    name: str
    path: str
    group: str
    status: str
    reason: str
    state: str  # 'human' | 'auto' | 'missing'

    @property
    def title(self) -> str:
        """The model's name, or its file name when it has none."""
        return self.name or self.path.rsplit("/", 1)[-1]


def load_rows(catalog: Catalog, keys: Sequence[str]) -> list[Row]:
    """Every model of ``catalog`` in listing order (source group, path) with its
    review state for ``keys``; one query."""
    marks = ", ".join("?" for _ in keys)
    sql = (
        "SELECT m.id, m.name, m.path, m.source_group, m.status, m.reason, "
        f"(SELECT count(*) FROM annotations a WHERE a.model_id = m.id AND a.key IN ({marks})), "
        f"(SELECT count(*) FROM annotations a WHERE a.model_id = m.id AND a.key IN ({marks}) AND a.origin = 'human') "
        "FROM models m ORDER BY m.source_group, m.path"
    )
    n = len(keys)
    rows = []
    with catalog.snapshot():
        for mid, name, path, group, status, reason, annotated, human in catalog.connection.execute(sql, (*keys, *keys)):
            state = "human" if human == n else ("auto" if annotated == n else "missing")
            rows.append(Row(mid, name, path, group, status, reason, state))
    return rows


def row_matches(row: Row, name: str) -> bool:
    """Whether ``row`` belongs in the list filtered by ``name`` (one of :data:`FILTERS`)."""
    if name == "all":
        return True
    if name == "unusable":
        return row.status == "unusable"
    if row.status != "ok":
        return False
    return (row.state == "human") == (name == "reviewed")


@dataclass
class Progress:
    """Counts over a library for one tool: ``reviewed`` (status ok, human),
    ``unusable``, ``to_review`` (status ok, not human), ``other`` (errors,
    duplicates, not characters). ``done`` = reviewed + unusable; ``total`` =
    done + to_review (the models this tool has to decide on)."""

    reviewed: int = 0
    unusable: int = 0
    to_review: int = 0
    other: int = 0

    @property
    def done(self) -> int:
        """reviewed + unusable."""
        return self.reviewed + self.unusable

    @property
    def total(self) -> int:
        """done + to_review."""
        return self.done + self.to_review


def progress_of(rows: Sequence[Row]) -> Progress:
    """:class:`Progress` counts of ``rows``."""
    p = Progress()
    for r in rows:
        if r.status == "unusable":
            p.unusable += 1
        elif r.status != "ok":
            p.other += 1
        elif r.state == "human":
            p.reviewed += 1
        else:
            p.to_review += 1
    return p


_STATE_GLYPH = {"human": ("✓", "#2e7d32", "reviewed by a person"),
                "auto": ("●", "#d08000", "suggested values, not reviewed yet"),
                "missing": ("○", "#808080", "not annotated yet")}
_STATUS_GLYPH = {"unusable": ("✗", "#c62828", "marked unusable"),
                 "error": ("!", "#c62828", "failed to load"),
                 "duplicate": ("=", "#808080", "duplicate"),
                 "not_character": ("–", "#808080", "not a character")}


class FilteredListModel(QtCore.QAbstractTableModel):
    """A Qt table model over ``rows`` showing those of one filter, in order.

    The shown rows are a list of indices into ``rows`` computed when the
    filter changes (:meth:`refilter`); ``index_of`` maps a key (a model id)
    to its row index, for :meth:`position_of`. Subclasses set :attr:`COLUMNS`
    and :attr:`FILTERS`, implement :meth:`shown` and ``data``.
    """

    COLUMNS: tuple[str, ...] = ()
    FILTERS: tuple[str, ...] = ()

    def __init__(self, rows: list, filter_name: str, parent=None):
        super().__init__(parent)
        self.filter_name = filter_name
        self.rows = rows
        self.index_of: dict[str, int] = {}

    def shown(self, row) -> bool:
        """Whether ``row`` is in the list under the current filter."""
        raise NotImplementedError

    def set_filter(self, name: str) -> None:
        """Show the rows matching ``name`` (one of :attr:`FILTERS`)."""
        if name not in self.FILTERS:
            raise ValueError(f"unknown filter {name!r} (known: {', '.join(self.FILTERS)})")
        self.beginResetModel()
        self.filter_name = name
        self.refilter()
        self.endResetModel()

    def refilter(self) -> None:
        """Recompute the shown rows (inside a model reset)."""
        self._visible = [i for i, r in enumerate(self.rows) if self.shown(r)]
        self._pos = {ri: k for k, ri in enumerate(self._visible)}

    def row_at(self, k: int):
        """The row shown at list position ``k``."""
        return self.rows[self._visible[k]]

    def position_of(self, key: str) -> int | None:
        """The list position of the row of ``key`` under the current filter, or None."""
        i = self.index_of.get(key)
        return None if i is None else self._pos.get(i)

    # -- Qt model API ------------------------------------------------------------

    def rowCount(self, parent=QtCore.QModelIndex()) -> int:  # noqa: N802 - Qt API
        return 0 if parent.isValid() else len(self._visible)

    def columnCount(self, parent=QtCore.QModelIndex()) -> int:  # noqa: N802 - Qt API
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(self, section, orientation, role=QtCore.Qt.DisplayRole):  # noqa: N802 - Qt API
        if orientation == QtCore.Qt.Horizontal and role == QtCore.Qt.DisplayRole:
            return self.COLUMNS[section]
        return None


class ModelListModel(FilteredListModel):
    """A Qt table model over :class:`Row` objects with one active filter.

    Columns: state glyph (tooltip: what it means), name, source group. The filtered list is a list of
    indices into ``rows`` computed when the filter changes; a row whose state
    changes stays where it is until the filter is chosen again (so "next"
    after an accept is the next row of the list the person is working down).
    """

    COLUMNS = ("", "model", "source")
    FILTERS = FILTERS

    def __init__(self, rows: list[Row], filter_name: str = "needs review", parent=None):
        super().__init__(rows, filter_name, parent)
        self.index_of = {r.id: i for i, r in enumerate(rows)}
        self.refilter()

    def shown(self, row: Row) -> bool:
        return row_matches(row, self.filter_name)

    def row_of(self, model_id: str) -> Row | None:
        """The row of ``model_id`` (whatever the filter), or None."""
        i = self.index_of.get(model_id)
        return None if i is None else self.rows[i]

    def update_row(self, model_id: str, status: str, reason: str, state: str) -> None:
        """Record a model's new status/state (after a decision or an undo)."""
        i = self.index_of.get(model_id)
        if i is None:
            return
        r = self.rows[i]
        r.status, r.reason, r.state = status, reason, state
        k = self._pos.get(i)
        if k is not None:
            self.dataChanged.emit(self.index(k, 0), self.index(k, len(self.COLUMNS) - 1))

    def data(self, index, role=QtCore.Qt.DisplayRole):
        if not index.isValid():
            return None
        r = self.rows[self._visible[index.row()]]
        col = index.column()
        glyph = _STATUS_GLYPH.get(r.status) or _STATE_GLYPH[r.state]
        if role == QtCore.Qt.DisplayRole:
            if col == 0:
                return glyph[0]
            if col == 1:
                return r.title
            return r.group
        if role == QtCore.Qt.ForegroundRole and col == 0:
            return QtGui.QBrush(QtGui.QColor(glyph[1]))
        if role == QtCore.Qt.ToolTipRole:
            lines = [r.title, r.path, f"id {r.id[:16]}…", glyph[2]]
            if r.reason:
                lines.append(f"reason: {r.reason}")
            return "\n".join(lines)
        if role == QtCore.Qt.TextAlignmentRole and col == 0:
            return QtCore.Qt.AlignCenter
        return None
