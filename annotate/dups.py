"""``mmdsynth annotate dups LIB``: review the duplicate groups found by ``mmdsynth dedup``.

The screen
----------
* Left: the duplicate groups (:func:`~mmdsynth.datasets.dedup.duplicate_groups`),
  those to review first; each row shows its state (○ to review, ✓ resolved
  by a person, grey ✓ decided automatically: same geometry), the
  representative's name, its size and kind (``geometry``: the same mesh;
  ``near``: similar renders and statistics). Filters: needs review / reviewed
  (every member decided) / all. The progress line counts resolved groups.
* Centre: the members of the current group side by side, one card each
  (scrolling sideways when there are many): a front render of the rest pose
  (full body) and the head crop (tha1 framing from the catalog's head bounds,
  else from the suggestion), the name, path, the stored decision, then source
  group, format, vertex / face / morph counts, byte copies and the distance to
  the representative (with its components); every card is as tall as the
  tallest, so the buttons line up. The representative (★, the kept
  member, else the one dedup proposes to keep: status ok, PMX before PMD,
  more morphs, more vertices) has a gold card; the selected card a blue
  frame.

Keys (also in the F1 overlay): ← / → or 1-9 select a card; K or Enter keep the
selected member and mark the others duplicates of it, then go to the next
group to review; S split the selected member off (it is not a duplicate of
the others); D mark only the selected member a duplicate of the
representative; C clear the group's decisions; N / P next / previous group;
Ctrl+Z undo. Mouse: click a card to select it, its buttons keep it or split
it off, right-click copies its path or id.

What is stored
--------------
Every decision is committed at once, as a person's (origin ``human``), in one
transaction (:class:`~mmdsynth.annotate.session.DedupSession` over the decision
API of :mod:`mmdsynth.datasets.dedup`): ``keep`` / ``duplicate of`` rows and
"not duplicates" pairs in the catalog. They survive a rerun of ``mmdsynth
dedup`` (which recomputes candidate pairs only) and win over its automatic
decisions. A duplicate gets status ``duplicate``, so render specs leave it
out. Killing the tool loses nothing that was decided.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from PyQt5 import QtCore, QtGui, QtWidgets

from mmdsynth.datasets.catalog import Catalog
from mmdsynth.datasets.dedup import WEIGHTS, DuplicateGroup, GroupMember, duplicate_groups

from .app import Action, ToolWindow, checkerboard, session_summary
from .model_list import FilteredListModel
from .heads import body_spec, tha1_spec
from .render_worker import ModelInfo, ViewSpec
from .session import DedupSession, UndoConflict

__all__ = ["GROUP_FILTERS", "DupsWindow", "GroupListModel", "GroupRow", "MemberCard", "RenderBox", "card_ids",
           "group_state", "member_specs"]

#: List filters of the duplicate review.
GROUP_FILTERS = ("needs review", "reviewed", "all")

CARD_W = 376  # card width, pixels (three cards fit beside the list in the default window)
BODY_BOX = (140, 300)  # full-body render box (width, height)
HEAD_BOX = (214, 214)  # head crop box (the 256x256 tha1 crop, shown a little smaller)

_STATE_GLYPH = {"review": ("○", "#d08000", "to review: not every member has a decision"),
                "human": ("✓", "#2e7d32", "resolved by a person"),
                "auto": ("✓", "#9e9e9e", "decided automatically (same geometry)")}


def group_state(group: DuplicateGroup) -> str:
    """``"review"`` (some member undecided), ``"human"`` (resolved, some
    decision by a person) or ``"auto"`` (resolved by dedup alone)."""
    if not group.resolved:
        return "review"
    return "human" if any(m.decision is not None and m.decision.origin == "human" for m in group.members) else "auto"


@dataclass
class GroupRow:
    """One group in the list: the group, its state, and ``sticky`` (stays in
    the filtered list after its state changed, until the filter is chosen again)."""

    group: DuplicateGroup
    state: str
    sticky: bool = False

    @property
    def title(self) -> str:
        """The representative's name (its file name when it has none)."""
        rep = self.group.members[0]
        return rep.name or rep.path.rsplit("/", 1)[-1]


class GroupListModel(FilteredListModel):
    """A Qt table model over the duplicate groups with one active filter
    (:data:`GROUP_FILTERS`). Columns: state glyph, representative's name,
    size and kind. :meth:`position_of` takes a model id: the position of the
    group holding it.

    After a decision the groups are recomputed (:meth:`reload`): each keeps
    its place in the list (a group split in two or merged back sits where the
    old one was), and a group that was listed stays listed until the filter is
    chosen again, so "next" is the next row of the list the person works down.
    """

    COLUMNS = ("", "group", "size")
    FILTERS = GROUP_FILTERS

    def __init__(self, groups: Sequence[DuplicateGroup], filter_name: str = "needs review", parent=None):
        super().__init__([], filter_name, parent)
        self._set_rows([GroupRow(g, group_state(g)) for g in groups])

    def shown(self, row: GroupRow) -> bool:
        if row.sticky or self.filter_name == "all":
            return True
        return (row.state == "review") == (self.filter_name == "needs review")

    def _set_rows(self, rows: list[GroupRow]) -> None:
        self.rows = rows
        self.index_of = {m: i for i, r in enumerate(rows) for m in r.group.ids}
        self.refilter()

    def set_filter(self, name: str) -> None:
        for r in self.rows:
            r.sticky = False
        super().set_filter(name)

    def reload(self, groups: Sequence[DuplicateGroup]) -> None:
        """Replace the groups by freshly computed ones (see the class docstring)."""
        old, visible = self.rows, set(self._visible)
        placed = []
        for n, g in enumerate(groups):
            hits = sorted({self.index_of[m] for m in g.ids if m in self.index_of})
            anchor = hits[0] if hits else len(old) + n  # groups new to the list go last
            placed.append((anchor, n, GroupRow(g, group_state(g), any(h in visible for h in hits))))
        placed.sort(key=lambda t: (t[0], t[1]))
        self.beginResetModel()
        self._set_rows([row for _, _, row in placed])
        self.endResetModel()

    def data(self, index, role=QtCore.Qt.DisplayRole):
        if not index.isValid():
            return None
        r = self.row_at(index.row())
        col = index.column()
        glyph = _STATE_GLYPH[r.state]
        if role == QtCore.Qt.DisplayRole:
            return (glyph[0], r.title, f"{len(r.group.members)} · {r.group.kind}")[col]
        if role == QtCore.Qt.ForegroundRole and col == 0:
            return QtGui.QBrush(QtGui.QColor(glyph[1]))
        if role == QtCore.Qt.ToolTipRole:
            lines = [f"{r.group.kind} group of {len(r.group.members)} — {glyph[2]}"]
            lines += [f"{'★' if k == 0 else '·'} {m.name or '(no name)'} — {m.path}" for k, m in enumerate(r.group.members)]
            return "\n".join(lines)
        if role == QtCore.Qt.TextAlignmentRole and col == 0:
            return QtCore.Qt.AlignCenter
        return None


def member_specs(info: ModelInfo, head: tuple[float, float] | None) -> tuple[ViewSpec | None, ViewSpec | None]:
    """The (full body, head crop) views of a member card: the rest pose from
    the front, the body fitted in :data:`BODY_BOX`, the head as the tha1 crop
    of ``head`` = (top, bottom) bounds (None: no head crop)."""
    body = body_spec(info, BODY_BOX[1])
    if body is not None and body.width > BODY_BOX[0]:  # a wide model: fit the width instead
        body = body_spec(info, max(8, int(BODY_BOX[1] * BODY_BOX[0] / body.width)))
    crop = None
    if head is not None:
        try:
            crop = tha1_spec(head[0], head[1], info.center_x)
        except ValueError:  # bounds the framing refuses (top not above the chin)
            crop = None
    return body, crop


class RenderBox(QtWidgets.QWidget):
    """A fixed-size box showing one render over the checkerboard, scaled to
    fit, with a small caption; a line of text while there is no image."""

    def __init__(self, size: tuple[int, int], caption: str, parent=None):
        super().__init__(parent)
        self.setFixedSize(*size)
        self.caption = caption
        self.image: QtGui.QImage | None = None
        self.text = "loading…"
        self._checks = checkerboard(8)

    def set_image(self, image: QtGui.QImage | None, text: str = "") -> None:
        """Show ``image`` (or ``text`` when None)."""
        self.image, self.text = image, text
        self.update()

    def paintEvent(self, event):  # noqa: N802 - Qt API
        p = QtGui.QPainter(self)
        p.fillRect(self.rect(), self._checks)
        if self.image is not None and not self.image.isNull():
            p.setRenderHint(QtGui.QPainter.SmoothPixmapTransform)
            size = self.image.size().scaled(self.size(), QtCore.Qt.KeepAspectRatio)
            target = QtCore.QRect(QtCore.QPoint(0, 0), size)
            target.moveCenter(self.rect().center())
            p.drawImage(target, self.image)
        elif self.text:
            p.setPen(QtGui.QColor("#37474f"))
            p.drawText(self.rect().adjusted(6, 6, -6, -6), QtCore.Qt.AlignCenter | QtCore.Qt.TextWordWrap, self.text)
        if self.caption:
            fm = p.fontMetrics()
            box = QtCore.QRect(0, self.height() - fm.height() - 2, fm.horizontalAdvance(self.caption) + 8, fm.height() + 2)
            p.fillRect(box, QtGui.QColor(255, 255, 255, 200))
            p.setPen(QtGui.QColor("#37474f"))
            p.drawText(box, QtCore.Qt.AlignCenter, self.caption)
        p.setPen(QtGui.QColor("#90a4ae"))
        p.drawRect(self.rect().adjusted(0, 0, -1, -1))
        p.end()


def _origin(decision) -> str:
    who = "by a person" if decision.origin == "human" else "automatically"
    return f"{who}, {decision.updated_at[:10]}"


class MemberCard(QtWidgets.QFrame):
    """One member of the group on screen: renders, facts, decision, buttons.

    Signals (with the card's index): ``clicked`` (select it),
    ``keep_clicked``, ``split_clicked``."""

    clicked = QtCore.pyqtSignal(int)
    keep_clicked = QtCore.pyqtSignal(int)
    split_clicked = QtCore.pyqtSignal(int)

    def __init__(self, index: int, parent=None):
        super().__init__(parent)
        self.index = index
        self.member: GroupMember | None = None
        self.body_spec: ViewSpec | None = None
        self.head_spec: ViewSpec | None = None
        self.failed = False
        self.setObjectName("card")
        self.setFixedWidth(CARD_W)
        self.setCursor(QtCore.Qt.PointingHandCursor)
        self.title = QtWidgets.QLabel()
        self.title.setTextFormat(QtCore.Qt.RichText)
        self.title.setWordWrap(True)
        self.body_box = RenderBox(BODY_BOX, "front · rest pose")
        self.head_box = RenderBox(HEAD_BOX, "head (tha1 crop)")
        self.head_note = QtWidgets.QLabel()
        self.head_note.setWordWrap(True)
        self.head_note.setStyleSheet("QLabel { color: #607d8b; font-size: 11px; }")
        self.name_label = QtWidgets.QLabel()
        self.name_label.setTextFormat(QtCore.Qt.RichText)
        self.name_label.setWordWrap(True)
        self.facts = QtWidgets.QLabel()
        self.facts.setTextFormat(QtCore.Qt.RichText)
        self.facts.setWordWrap(True)
        self.facts.setAlignment(QtCore.Qt.AlignTop | QtCore.Qt.AlignLeft)
        self.decision_label = QtWidgets.QLabel()
        self.decision_label.setTextFormat(QtCore.Qt.RichText)
        self.decision_label.setWordWrap(True)
        self.keep_button = QtWidgets.QPushButton("Keep this (K)")
        self.split_button = QtWidgets.QPushButton("Not a duplicate (S)")
        self.keep_button.setToolTip("keep this model; the others become duplicates of it")
        self.split_button.setToolTip("this model is not a duplicate of the others: split it off the group")
        for b, signal in ((self.keep_button, self.keep_clicked), (self.split_button, self.split_clicked)):
            b.setFocusPolicy(QtCore.Qt.NoFocus)
            b.clicked.connect(lambda _=False, s=signal: s.emit(self.index))

        images = QtWidgets.QGridLayout()
        images.setSpacing(6)
        images.addWidget(self.body_box, 0, 0, 2, 1)
        images.addWidget(self.head_box, 0, 1)
        images.addWidget(self.head_note, 1, 1, QtCore.Qt.AlignTop)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.keep_button)
        buttons.addWidget(self.split_button)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(8, 6, 8, 8)
        lay.setSpacing(5)
        lay.addWidget(self.title)
        lay.addLayout(images)
        lay.addWidget(self.name_label)
        lay.addWidget(self.decision_label)  # before the facts: still on screen when a small window cuts the card
        lay.addWidget(self.facts)
        lay.addStretch(1)
        lay.addLayout(buttons)
        self.set_look(False, False)

    def set_member(self, member: GroupMember, group: DuplicateGroup, byte_copies: Sequence[str]) -> None:
        """Fill in the texts of ``member`` of ``group``."""
        self.member = member
        rep = group.members[0]
        is_rep = member.model_id == rep.model_id
        kept = member.decision is not None and member.decision.decision == "keep"
        role = ("<span style='color:#b28704'><b>★ representative</b></span> "
                f"<small style='color:#777'>({'kept' if kept else 'proposed keeper'})</small>") if is_rep else ""
        self.title.setText(f"<span style='background:#37474f; color:white; font-weight:bold'>&nbsp;{self.index + 1}&nbsp;"
                           f"</span>&nbsp; {role}")
        name = member.name or "(no name)"
        self.name_label.setText(f"<span style='font-size:15px'><b>{html.escape(name)}</b></span><br>"
                                f"<span style='color:#555'>{_breakable(member.path)}</span>")

        def count(v):
            return "?" if v is None else f"{v:,}"

        rendered = "rendered" if member.status == "ok" else "<b>not rendered</b>"
        lines = [f"source group <b>{html.escape(member.group)}</b> · {member.format.upper()} · "
                 f"status {html.escape(member.status)} ({rendered})",
                 f"{count(member.vertices)} vertices · {count(member.faces)} faces · {count(member.morphs)} morphs"]
        if is_rep:
            lines.append("distance to ★: — (this is ★)")
        else:
            lines.append(f"distance to ★: {_distance_text(group, rep.model_id, member)}")
        others = [p for p in byte_copies if p != member.path]
        if others:
            lines.append(f"byte copies elsewhere: {len(others)} (" + ", ".join(_breakable(p) for p in others[:2])
                         + (", …" if len(others) > 2 else "") + ")")
        self.facts.setText("<br>".join(lines))
        self.setToolTip(f"{name}\n{member.path}\nid {member.model_id}")
        d = member.decision
        if d is None:
            text = "<span style='color:#757575'>no decision yet</span>"
        elif d.decision == "keep":
            text = f"<span style='color:#2e7d32'><b>✓ KEEP</b></span> <span style='color:#777'>({_origin(d)})</span>"
        else:
            of = next((k for k, m in enumerate(group.members) if m.model_id == d.duplicate_of), None)
            target = (f"#{of + 1} {html.escape(group.members[of].name or '')}" if of is not None
                      else html.escape((d.duplicate_of or "")[:12]))
            text = (f"<span style='color:#c62828'><b>= DUPLICATE</b></span> of {target} "
                    f"<span style='color:#777'>({_origin(d)})</span>")
        self.decision_label.setText(f"decision: {text}")

    def set_look(self, selected: bool, representative: bool) -> None:
        """Frame and background: a blue frame when selected, gold for the representative."""
        width, color = (3, "#1565c0") if selected else ((2, "#c9a227") if representative else (1, "#b0bec5"))
        background = "#fff8e1" if representative else ("#e3f2fd" if selected else "#ffffff")
        self.setStyleSheet(f"QFrame#card {{ border: {width}px solid {color}; border-radius: 6px; "
                           f"background: {background}; }}")
        pad = 3 - width  # the contents stay in place whatever the frame's width (the cards' rows line up)
        self.layout().setContentsMargins(8 + pad, 6 + pad, 8 + pad, 8 + pad)

    def show_error(self, message: str) -> None:
        """The model could not be loaded or rendered."""
        self.failed = True
        for box in (self.body_box, self.head_box):
            if box.image is None:
                box.set_image(None, message)

    def ready(self) -> bool:
        """Whether every render the card asked for is shown (or failed)."""
        if self.failed:
            return True
        if self.body_spec is None or self.body_box.image is None:
            return False
        return self.head_spec is None or self.head_box.image is not None

    def mousePressEvent(self, event):  # noqa: N802 - Qt API
        if event.button() == QtCore.Qt.LeftButton:
            self.clicked.emit(self.index)
        super().mousePressEvent(event)

    def contextMenuEvent(self, event):  # noqa: N802 - Qt API
        if self.member is None:
            return
        self.clicked.emit(self.index)
        menu = QtWidgets.QMenu(self)
        clip = QtWidgets.QApplication.clipboard()
        menu.addAction("Copy path", lambda: clip.setText(self.member.path))
        menu.addAction("Copy model id", lambda: clip.setText(self.member.model_id))
        menu.exec_(event.globalPos())


def _breakable(path: str) -> str:
    """``path`` escaped for rich text, breakable after each slash (long paths wrap)."""
    return html.escape(path).replace("/", "/\u200b")


def _distance_text(group: DuplicateGroup, rep: str, member: GroupMember) -> str:
    pair = next((p for p in group.pairs if {p.model_a, p.model_b} == {rep, member.model_id}), None)
    if pair is None or member.distance is None:
        return "not computed (linked by a decision)"
    if pair.kind == "geometry":
        return "<b>0</b> (same geometry)"
    parts = " · ".join(f"{'colour' if k == 'color' else k} {pair.detail[k]:.3f}" for k in WEIGHTS if k in pair.detail)
    linked = "" if pair.linked else ", linked through another member"
    return f"<b>{member.distance:.3f}</b> ({parts}{linked})"


class _CardScroll(QtWidgets.QScrollArea):
    """The card row; the mouse wheel scrolls it sideways when it does not scroll down."""

    def wheelEvent(self, event):  # noqa: N802 - Qt API
        if self.verticalScrollBar().maximum() == 0 and not event.angleDelta().x():
            bar = self.horizontalScrollBar()
            bar.setValue(bar.value() - event.angleDelta().y())
            return
        super().wheelEvent(event)

    def keyPressEvent(self, event):  # noqa: N802 - Qt API
        event.ignore()  # arrows select cards (window actions), they do not scroll


class DupsWindow(ToolWindow):
    """``mmdsynth annotate dups``: see the module docstring.

    Args:
        catalog: the open library catalog (after ``mmdsynth dedup``).
        filter_name: the list to start with (one of :data:`GROUP_FILTERS`).
        start_model: a model id (or unique prefix): start at its group.
        prefetch: render the next group in the background.

    Signals: ``group_ready(key)`` when every card of the current group shows
    its renders (or why it has none); ``decided(model_id, action)`` after a
    decision is committed (the selected member; ``"keep"``, ``"split"``,
    ``"duplicate"``, ``"clear"``, ``"undo"``).

    Attributes for tests: ``current`` (:class:`GroupRow` or None),
    ``selected`` (index of the selected card), ``cards``
    (:class:`MemberCard` list), ``session`` (:class:`DedupSession`).
    """

    TOOL = "dups"
    LIST_TITLE = "Duplicate groups"
    LIST_ITEM = "group"
    COLUMN3_FITS = "99 · geometry"
    LEGEND = ("<span style='color:#d08000'>○</span>&nbsp;to&nbsp;review &nbsp; "
              "<span style='color:#2e7d32'>✓</span>&nbsp;resolved<br><span style='color:#9e9e9e'>✓</span>"
              "&nbsp;decided&nbsp;automatically (same&nbsp;geometry)")
    FILTERS = GROUP_FILTERS
    FILTER_TIP = "which groups the list shows: needs review = some member has no decision yet"
    HINT = ("<b>←→</b> or <b>1</b>–<b>9</b> select a model · <b>K</b>/<b>Enter</b> keep it, the others are "
            "duplicates (next group) · <b>S</b> split it off (not a duplicate) · <b>D</b> it is a duplicate of ★ · "
            "<b>C</b> clear · <b>N</b>/<b>P</b> next/previous group · <b>Ctrl+Z</b> undo · <b>F1</b> all keys")
    MOUSE = (("click a card", "select it"), ("card buttons", "keep it / split it off"),
             ("right-click a card", "copy its path or model id"), ("wheel over the cards", "scroll sideways"))
    HELP_NOTES = ("★ marks the representative: the member kept, else the one dedup proposes to keep (status ok, "
                  "PMX before PMD, more morphs, more vertices). A duplicate gets status 'duplicate' and is never "
                  "rendered; 'not duplicates' (S) is remembered, so dedup never groups the two again. Every "
                  "decision is saved at once as a person's and survives reruns of mmdsynth dedup; closing or "
                  "killing the tool loses nothing.")

    group_ready = QtCore.pyqtSignal(str)

    def __init__(self, catalog: Catalog, filter_name: str = "needs review", start_model: str | None = None,
                 prefetch: bool = True, parent=None):
        super().__init__(catalog, filter_name, prefetch, parent)
        self.session = DedupSession(catalog)
        self.current: GroupRow | None = None
        self.selected = 0
        self.cards: list[MemberCard] = []
        self._ready_sent = False
        self._prefetch_ids: set[str] = set()
        self.byte_copies = catalog.byte_copies()
        self.build_frame(GroupListModel(duplicate_groups(catalog), filter_name, self))
        mid = self.show_first(start_model)
        if mid is not None and mid in card_ids(self):  # --model: its card is the selected one
            self.select_member(card_ids(self).index(mid))

    # -- frame -----------------------------------------------------------------------

    def build_central(self) -> QtWidgets.QWidget:
        self.card_row = QtWidgets.QWidget()
        outer = QtWidgets.QVBoxLayout(self.card_row)
        outer.setContentsMargins(4, 4, 4, 4)
        strip = QtWidgets.QWidget()  # cards side by side, all as tall as the tallest (buttons in one row)
        self.card_layout = QtWidgets.QHBoxLayout(strip)
        self.card_layout.setContentsMargins(0, 0, 0, 0)
        self.card_layout.setSpacing(10)
        self.card_layout.addStretch(1)
        outer.addWidget(strip)
        outer.addStretch(1)
        self.scroll = _CardScroll()
        self.scroll.setWidget(self.card_row)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFocusPolicy(QtCore.Qt.NoFocus)
        self.scroll.setStyleSheet("QScrollArea { background: #eceff1; } #cards { background: #eceff1; }")
        self.card_row.setObjectName("cards")
        w = QtWidgets.QWidget()
        w.setFocusPolicy(QtCore.Qt.StrongFocus)  # the keys go to the window's actions
        lay = QtWidgets.QVBoxLayout(w)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.scroll)
        return w

    def frame_actions(self) -> list[Action]:
        return [
            Action(["K", "Return", "Enter"], "keep the selected model, mark the others duplicates of it (saved "
                   "at once) and go to the next group to review", self.keep_selected, "decide", "Keep (K)"),
            Action(["S"], "split: the selected model is not a duplicate of the others (remembered by dedup)",
                   self.split_selected, "decide", "Split off (S)"),
            Action(["D"], "mark only the selected model a duplicate of the representative ★",
                   self.mark_selected_duplicate, "decide", "Duplicate of ★ (D)"),
            Action(["C"], "clear the decisions of this group (duplicates become ok again)", self.clear_group,
                   "decide", "Clear (C)"),
            Action(["Ctrl+Z"], "undo the last decision of this session (again for earlier ones)", self.undo,
                   "decide", "Undo (Ctrl+Z)"),
            Action(["N"], "next group", self.next_item, "move", "Next (N)"),
            Action(["P"], "previous group", self.previous_item, "move", "Prev (P)"),
            self.help_action(),
        ]

    def tool_actions(self) -> list[Action]:
        acts = [Action(["Left"], "select the model on the left", lambda: self.select_member(self.selected - 1),
                       "select"),
                Action(["Right"], "select the model on the right", lambda: self.select_member(self.selected + 1),
                       "select")]
        for k in range(9):
            acts.append(Action([str(k + 1)], "select model 1 … 9 (the number on its card)",
                               lambda k=k: self.select_member(k), "select", label="1 … 9", in_help=k == 0))
        return acts

    def list_clicked(self, k: int) -> None:
        if self.current is None or self.position() != k:
            self.go_to(k)

    # -- the list --------------------------------------------------------------------

    def current_key(self) -> str:
        return self.current.group.ids[0]

    def go_to(self, k: int, select: str | None = None) -> None:
        """Show the group at list position ``k`` (with model ``select``'s card
        selected; default: the representative)."""
        if not 0 <= k < self.list_model.rowCount():
            return
        self._select(k)
        self.current = row = self.list_model.row_at(k)
        ids = row.group.ids
        self.selected = ids.index(select) if select in ids else 0
        self.set_empty(None)
        self._ready_sent = False
        self._show_cards(row.group)
        self._update_header()
        self._prefetch()

    def show_empty(self) -> None:
        """Nothing to show (the filtered list is empty): says why, and what the other lists hold."""
        self.current = None
        self._clear_cards()
        name = self.list_model.filter_name
        rows = self.list_model.rows
        if self.catalog.dedup_run() is None:
            self.header_label.setText("<i>No duplicate groups: dedup has not run on this library.</i>")
            self.set_empty("Find the duplicates first: <b>mmdsynth dedup "
                           f"{html.escape(str(self.catalog.library))}</b>, then open this tool again.")
            return
        self.header_label.setText(f"<i>No groups in “{html.escape(name)}”.</i>")
        if not rows:
            self.set_empty("mmdsynth dedup found no duplicates in this library: nothing to review.")
            return
        review = sum(r.state == "review" for r in rows)
        auto = sum(r.state == "auto" for r in rows)
        human = sum(r.state == "human" for r in rows)
        if name == "needs review":
            parts = [f"{human:,} group{'s' if human != 1 else ''} resolved by a person"] if human else []
            if auto:
                parts.append(f"{auto:,} group{'s' if auto != 1 else ''} decided automatically (same geometry: "
                             "the extra copies are already marked duplicates)")
            text = (f"Nothing to review: every duplicate group is decided — {', '.join(parts)}. "
                    "Choose <b>Show: all</b> in the toolbar to look at them or change a decision.")
        else:
            text = (f"No groups in “{html.escape(name)}”: {review:,} to review, {human + auto:,} decided. "
                    "Choose another list in the toolbar (<b>Show:</b>).")
        self.set_empty(text)

    def _next_to_review(self, start: int) -> int | None:
        """The first listed group to review at or after ``start`` (wrapping), or None."""
        n = self.list_model.rowCount()
        for i in range(n):
            k = (start + i) % n
            if self.list_model.row_at(k).state == "review":
                return k
        return None

    # -- cards -----------------------------------------------------------------------

    def _clear_cards(self) -> None:
        for card in self.cards:
            self.card_layout.removeWidget(card)
            card.hide()  # gone from the screen now; deleted when the event loop gets to it
            card.deleteLater()
        self.cards = []

    def _show_cards(self, group: DuplicateGroup) -> None:
        self._clear_cards()
        first = True
        for k, m in enumerate(group.members):
            card = MemberCard(k)
            card.set_member(m, group, self.byte_copies.get(m.model_id, []))
            card.clicked.connect(self.select_member)
            card.keep_clicked.connect(lambda i: (self.select_member(i), self.keep_selected()))
            card.split_clicked.connect(lambda i: (self.select_member(i), self.split_selected()))
            self.card_layout.insertWidget(k, card)
            self.cards.append(card)
            error = self.worker.error_of(m.model_id)
            info = self.worker.cached_info(m.model_id)
            if error:
                card.show_error(error)
            elif info is not None:
                self._request_card(card, info, "now", replace=first)
                first = False
            else:
                self.worker.request(m.model_id, self.catalog.library / m.path, (), "now", replace=first)
                first = False
        self._update_looks()
        self._check_ready()

    def _head_of(self, model_id: str, info: ModelInfo) -> tuple[tuple[float, float] | None, str]:
        """Head bounds for the crop and where they come from."""
        stored = self.catalog.head_bounds(model_id)
        if stored is not None and stored[0] > stored[1]:
            return (stored[0], stored[1]), ("reviewed head bounds" if stored[2] == "human" else "suggested head bounds")
        if info.head is not None:
            return (float(info.head.top), float(info.head.bottom)), "head bounds suggested now (none stored)"
        return None, f"no head crop: {info.head_error or 'no head bounds'}"

    def _request_card(self, card: MemberCard, info: ModelInfo, lane: str, replace: bool = False,
                      front: bool = False) -> None:
        """Set the card's views and show them (cached) or ask the worker for them."""
        mid = card.member.model_id
        head, note = self._head_of(mid, info)
        card.body_spec, card.head_spec = member_specs(info, head)
        card.head_note.setText(note if card.head_spec is not None or head is None else f"{note}: not framable")
        if card.head_spec is None:
            card.head_box.set_image(None, "no head crop")
        missing = []
        for spec, box in ((card.body_spec, card.body_box), (card.head_spec, card.head_box)):
            if spec is None:
                continue
            image = self.worker.cached_image(mid, spec)
            if image is not None:
                box.set_image(image)
            else:
                missing.append(spec)
        if missing or replace:
            self.worker.request(mid, self.catalog.library / card.member.path, missing, lane, replace=replace,
                                front=front)

    def _card_of(self, model_id: str) -> MemberCard | None:
        return next((c for c in self.cards if c.member is not None and c.member.model_id == model_id), None)

    def select_member(self, k: int) -> None:
        """Select card ``k`` (0-based; out of range: stays)."""
        if not self.cards:
            return
        if not 0 <= k < len(self.cards):
            self.message(f"This group has {len(self.cards)} models." if k >= len(self.cards) else
                         "This is the first model of the group.")
            return
        self.selected = k
        self._update_looks()
        self.scroll.ensureWidgetVisible(self.cards[k], 20, 0)

    def _update_looks(self) -> None:
        for card in self.cards:
            card.set_look(card.index == self.selected, card.index == 0)

    def _check_ready(self) -> None:
        if not self._ready_sent and self.current is not None and self.cards and all(c.ready() for c in self.cards):
            self._ready_sent = True
            self.group_ready.emit(self.current.group.key)

    # -- worker signals ------------------------------------------------------------------

    def _on_info(self, model_id: str, info: ModelInfo) -> None:
        card = self._card_of(model_id)
        if card is not None:
            # render it now, while the worker still has the model loaded
            self._request_card(card, info, "now", front=True)
        elif model_id in self._prefetch_ids:
            self._prefetch_member(model_id, info, front=True)

    def _on_image(self, model_id: str, spec: ViewSpec, image: QtGui.QImage) -> None:
        card = self._card_of(model_id)
        if card is None:
            return
        if spec == card.body_spec:
            card.body_box.set_image(image)
        elif spec == card.head_spec:
            card.head_box.set_image(image)
        self._check_ready()

    def _on_failed(self, model_id: str, message: str) -> None:
        card = self._card_of(model_id)
        if card is not None:
            card.show_error(message)
            self.message(f"{card.member.name or card.member.path}: {message}", warn=True)
            self._check_ready()

    def _prefetch(self) -> None:
        """Queue the next group's models and renders (prefetch lane)."""
        self._prefetch_ids = set()
        if not self.prefetch_enabled:
            return
        pos = self.position()
        if pos is None or pos + 1 >= self.list_model.rowCount():
            self.worker.clear_lane("prefetch")
            return
        group = self.list_model.row_at(pos + 1).group
        self._prefetch_ids = set(group.ids)
        self.worker.clear_lane("prefetch")
        for m in group.members:
            info = self.worker.cached_info(m.model_id)
            if info is not None:
                self._prefetch_member(m.model_id, info)
            else:
                self.worker.request(m.model_id, self.catalog.library / m.path, (), "prefetch", replace=False)

    def _prefetch_member(self, model_id: str, info: ModelInfo, front: bool = False) -> None:
        head, _ = self._head_of(model_id, info)
        specs = [s for s in member_specs(info, head) if s is not None]
        self.worker.request(model_id, info.path, specs, "prefetch", replace=False, front=front)

    # -- decisions ------------------------------------------------------------------------

    def _selected_member(self) -> GroupMember | None:
        if self.current is None or not self.cards:
            return None
        return self.current.group.members[self.selected]

    def _decide(self, action: str, write, describe) -> bool:
        """Commit ``write()`` (a :class:`DedupSession` call), recompute the
        groups and report; False (and a red message) when it failed."""
        member = self._selected_member()
        if member is None:
            return False
        try:
            decision = write()
        except Exception as exc:  # noqa: BLE001 - a locked or broken catalog: say so, change nothing on screen
            self.message(f"NOT SAVED: {' '.join(str(exc).split())}", warn=True)
            return False
        self._reload()
        if decision.changes:
            self.message(f"{describe}  (saved; Ctrl+Z undoes)")
        else:
            self.message(f"{describe}  (already so: nothing changed)")
        self.decided.emit(member.model_id, action)
        self.update_progress()
        return True

    def keep_selected(self) -> None:
        """K / Enter: keep the selected model, the others are duplicates of it;
        then the next group to review."""
        member = self._selected_member()
        if member is None:
            return
        group = self.current.group
        pos = self.position()
        n = len(group.members) - 1
        if not self._decide("keep", lambda: self.session.keep(member.model_id, group.ids),
                            f"Kept {_title(member)}; {n} other{'s' if n != 1 else ''} marked duplicate of it."):
            return
        here = self.list_model.position_of(member.model_id)
        nxt = self._next_to_review((here if here is not None else pos or 0) + 1)
        if nxt is not None:
            self.go_to(nxt)
        else:
            self._show_again(member.model_id)
            self.message(f"Kept {_title(member)}. No group of this list is left to review.")

    def split_selected(self) -> None:
        """S: the selected model is not a duplicate of the others ("not
        duplicates" pairs); stays on what is left of the group while it needs
        review, else goes to the next group to review."""
        member = self._selected_member()
        if member is None:
            return
        group = self.current.group
        if len(group.members) < 2:
            return
        others = [m for m in group.ids if m != member.model_id]
        pos = self.position() or 0
        if not self._decide("split", lambda: self.session.split(member.model_id, group.ids),
                            f"Split off {_title(member)}: not a duplicate of the other {len(others)}."):
            return
        here = next((p for p in (self.list_model.position_of(m) for m in others) if p is not None), None)
        if here is not None and self.list_model.row_at(here).state == "review":
            self.go_to(here)
            return
        nxt = self._next_to_review(here + 1 if here is not None else pos)
        if nxt is not None:
            self.go_to(nxt)
        elif here is not None:
            self.go_to(here)
        elif self.list_model.rowCount():
            self.go_to(min(pos, self.list_model.rowCount() - 1))
        else:
            self.show_empty()

    def mark_selected_duplicate(self) -> None:
        """D: only the selected model is a duplicate of the representative ★;
        the next undecided card is selected."""
        member = self._selected_member()
        if member is None:
            return
        group = self.current.group
        rep = group.members[0]
        if member.model_id == rep.model_id:
            self.message("★ cannot be a duplicate of itself: select another model (← →), or K to keep one.",
                         warn=True)
            return
        if not self._decide("duplicate", lambda: self.session.mark_duplicate(member.model_id, rep.model_id, group.ids),
                            f"Marked {_title(member)} a duplicate of {_title(rep)}."):
            return
        self._show_again(member.model_id)
        undecided = [k for k, m in enumerate(self.current.group.members) if m.decision is None] if self.current else []
        later = [k for k in undecided if k > self.selected] or undecided
        if later:
            self.select_member(later[0])

    def clear_group(self) -> None:
        """C: forget every decision about this group's models."""
        member = self._selected_member()
        if member is None:
            return
        group = self.current.group
        if self._decide("clear", lambda: self.session.clear(group.ids),
                        f"Cleared the decisions of the {len(group.members)} models of this group."):
            self._show_again(member.model_id, group.ids)

    def undo(self) -> None:
        """Ctrl+Z: undo the last decision of this session and show its group."""
        try:
            decision = self.session.undo()
        except UndoConflict as exc:
            self.message(str(exc), warn=True)
            return
        except Exception as exc:  # noqa: BLE001 - a locked catalog
            self.message(f"NOT UNDONE: {' '.join(str(exc).split())}", warn=True)
            return
        if decision is None:
            self.message("Nothing to undo in this session.")
            return
        self._reload()
        if not self._show_again(decision.subject, decision.members):
            self.set_filter("all")
            self._show_again(decision.subject, decision.members)
        self.message(f"Undone: {decision.action} of {decision.subject[:12]}")
        self.decided.emit(decision.subject, "undo")
        self.update_progress()

    def _reload(self) -> None:
        """Recompute the groups from the catalog (after a decision or an undo)."""
        self.list_model.reload(duplicate_groups(self.catalog))

    def _show_again(self, model_id: str, members: Sequence[str] = ()) -> bool:
        """Show the group now holding ``model_id`` (else one of ``members``),
        with that model selected. False when none is listed."""
        for m in (model_id, *members):
            pos = self.list_model.position_of(m)
            if pos is not None:
                self.go_to(pos, select=model_id if m == model_id else m)
                return True
        return False

    # -- status ---------------------------------------------------------------------------

    def update_progress(self) -> None:
        """The progress line: resolved groups / all groups, this session's rate."""
        rows = self.list_model.rows
        human = sum(r.state == "human" for r in rows)
        auto = sum(r.state == "auto" for r in rows)
        dups = sum(1 for r in rows for m in r.group.members if m.decision is not None and m.decision.decision == "duplicate")
        self.progress_label.setText(
            f"<b>resolved {human + auto:,} / {len(rows):,} groups</b> ({human:,} by a person, {auto:,} auto) · "
            f"{dups:,} duplicate{'s' if dups != 1 else ''} · {session_summary(self.session, 'decisions')}")

    def _update_header(self) -> None:
        row = self.current
        if row is None:
            return
        g = row.group
        pos = self.position()
        where = f"group {pos + 1:,} of {self.list_model.rowCount():,} in “{self.list_model.filter_name}”" \
            if pos is not None else ""
        kind = ("same geometry (exact copies, possibly another format)" if g.kind == "geometry"
                else "near duplicates (similar renders and statistics)")
        state = {"review": "<span style='color:#d08000'>○ to review</span>",
                 "human": "<span style='color:#2e7d32'>✓ resolved</span>",
                 "auto": "<span style='color:#757575'>✓ decided automatically</span>"}[row.state]
        sources = ", ".join(html.escape(s) for s in g.source_groups)
        self.header_label.setText(
            f"<b>{html.escape(row.title)}</b> and {len(g.members) - 1} more &nbsp; {where} &nbsp; {state}<br>"
            f"<span style='color:#555'>{kind} · {len(g.members)} models from source groups: {sources}</span>")


def _title(member: GroupMember) -> str:
    return member.name or member.path.rsplit("/", 1)[-1]


def card_ids(window: DupsWindow) -> list[str]:
    """The model ids of the cards on screen, in order."""
    return [c.member.model_id for c in window.cards if c.member is not None]
