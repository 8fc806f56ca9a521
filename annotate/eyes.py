"""``mmdsynth annotate eyes LIB``: the eye-wink and mouth morph tool.

The screen
----------
* Centre: a grid of face close-ups (rest pose, front view): the neutral face
  first, then the face with each candidate morph at weight 1 -- the morphs
  of the eye panel, the morphs whose names match a known eye or mouth name,
  and the best mouth-opening candidates of the suggestion. Morphs that shut
  an eye come first. Each tile shows the morph's name, what the suggestion's
  geometry analysis says it does ("shuts the LEFT eye (image right)", ...)
  and badges for the slots it fills.
* Right: the seven slots, pre-filled from the catalog (human or auto) or,
  when it has none, from the suggestion
  (:func:`~mmdsynth.annotate.suggest.suggest_morphs`), each with a picture
  of its morph, where the value comes from and the suggestion's confidence:
  1 wink left, 2 wink right, 3 wink both (blink), 4 smile wink left,
  5 smile wink right, 6 smile wink both, 7 mouth (あ). "Left" is the
  character's left: in these front views it is the eye on the IMAGE RIGHT.

Keys: arrows (or the mouse) select a tile; 1-6 put the selected morph in that
eye slot, 7 in the mouth slot (with the neutral face selected, the digit empties
the slot: "this model has no such morph"); 0 empties the slots of the selected
morph; Enter accepts all seven slots (empty ones are stored as "none") and
goes to the next model; N / P, U, Ctrl+Z, F1 as in every tool.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from PyQt5 import QtCore, QtGui, QtWidgets

from mmdsynth.mmd.model import MorphPanel
from mmdsynth.mmd.schema import EXPRESSION_SLOTS

from .app import Action, AnnotatorWindow, checkerboard
from .model_list import Row
from .render_worker import ModelInfo, ViewSpec

__all__ = ["EyesWindow", "SLOT_INFO", "Tile", "face_spec", "candidate_tiles"]

TILE_W, TILE_H = 200, 178  # face close-up size, pixels
CELL_W = TILE_W + 26  # a grid cell: the close-up centred, room for a caption such as "^ shuts RIGHT eye · img left"

#: slot -> (key, short label, what it is, colour)
SLOT_INFO = {
    "wink_left": ("1", "wink L", "LEFT eye · image right", "#1565c0"),
    "wink_right": ("2", "wink R", "RIGHT eye · image left", "#6a1b9a"),
    "wink_both": ("3", "blink", "both eyes", "#00838f"),
    "smile_wink_left": ("4", "smile L", "^ LEFT eye · image right", "#2e7d32"),
    "smile_wink_right": ("5", "smile R", "^ RIGHT eye · image left", "#9e7700"),
    "smile_wink_both": ("6", "smile both", "^ both eyes (笑い)", "#ad1457"),
    "mouth": ("7", "mouth", "open (あ)", "#d84315"),
}
#: slot -> the long description (help, tooltips)
SLOT_HELP = {
    "wink_left": "plain wink of the character's LEFT eye (the eye on the IMAGE RIGHT)",
    "wink_right": "plain wink of the character's RIGHT eye (the eye on the IMAGE LEFT)",
    "wink_both": "both eyes shut, plain (a blink, まばたき)",
    "smile_wink_left": "smiling ^ wink of the character's LEFT eye (IMAGE RIGHT)",
    "smile_wink_right": "smiling ^ wink of the character's RIGHT eye (IMAGE LEFT)",
    "smile_wink_both": "both eyes shut smiling ^ ^ (笑い)",
    "mouth": "the mouth open (あ)",
}
_SLOT_SIDE = {"wink_left": "left", "wink_right": "right", "wink_both": "both", "smile_wink_left": "left",
              "smile_wink_right": "right", "smile_wink_both": "both"}


@dataclass
class Tile:
    """One face in the grid: ``index`` = morph index (-1: the neutral face)."""

    index: int
    name: str
    caption: str
    group: int  # sort group: 0 neutral, 1 eye closers, 2 mouth, 3 other


def face_spec(top: float, bottom: float, center_x: float, morph: int | None = None) -> ViewSpec:
    """A front close-up of the face for head bounds (``top``, ``bottom``):
    0.8 head heights wide, from just below the chin to 0.68 heights above it
    (eyes and brows included), :data:`TILE_W` x :data:`TILE_H` pixels."""
    h = top - bottom
    morphs = ((int(morph), 1.0),) if morph is not None else ()
    w = 0.8 * h
    upper = bottom + 0.68 * h
    return ViewSpec.region("face", center_x - w / 2, center_x + w / 2, upper, upper - w * TILE_H / TILE_W,
                           TILE_W, morphs)


def describe(a) -> str:
    """A short description of a :class:`~mmdsynth.annotate.suggest.MorphAnalysis`
    for a tile (sides are the character's, with the image side)."""
    if a is None:
        return ""
    side = {"left": "LEFT eye · img right", "right": "RIGHT eye · img left", "both": "both eyes"}.get(a.side, "")
    if a.category == "close" and side:
        return f"shuts {side}"
    if a.category == "smile_close" and side:
        return f"^ shuts {side}"
    if a.category == "mouth_open":
        return "opens the mouth"
    return ""


def candidate_tiles(info: ModelInfo, assigned: dict[str, str | None]) -> list[Tile]:
    """The grid of a model: the neutral face, then every candidate morph --
    eye panel, eye/mouth name matches, the suggestion's eye-slot candidates,
    its five best mouth candidates and the morphs now in a slot -- eye closers
    first, then mouth morphs, then the rest (each in morph order)."""
    from .suggest import name_hint

    analysis = {a.index: a for a in info.morphs.analysis} if info.morphs is not None else {}
    ranked = info.morphs.ranked if info.morphs is not None else {}
    closers = {i for slot in EXPRESSION_SLOTS if slot != "mouth" for i in ranked.get(slot, [])}
    mouth = set(ranked.get("mouth", [])[:5])
    chosen: set[int] = set(closers) | mouth
    for i, (name, name_en, panel) in enumerate(zip(info.morph_names, info.morph_names_en, info.morph_panels)):
        if panel == MorphPanel.EYE:
            chosen.add(i)
            continue
        hint = name_hint(name, name_en)
        if hint is not None:
            chosen.add(i)
            if hint[0] == "mouth_a":
                mouth.add(i)
    for name in assigned.values():
        i = info.morph_index(name)
        if i is not None:
            chosen.add(i)
    tiles = [Tile(-1, "neutral face", "no morph · a digit empties that slot", 0)]
    for i in sorted(chosen):
        a = analysis.get(i)
        group = 1 if (i in closers or (a is not None and a.category in ("close", "smile_close"))) else (
            2 if (i in mouth or (a is not None and a.category == "mouth_open")) else 3)
        tiles.append(Tile(i, info.morph_names[i], describe(a), group))
    tiles.sort(key=lambda t: (t.group, t.index))
    return tiles


def caption_lines(caption: str) -> list[str]:
    """A tile caption on (at most) two lines: what the morph does, then the
    rest in parentheses ("shuts LEFT eye · img right" -> "shuts LEFT eye",
    "(img right)")."""
    first, sep, rest = caption.partition(" · ")
    return [first, f"({rest})"] if sep else [caption]


class TileModel(QtCore.QAbstractListModel):
    """The grid's tiles and their pictures."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.tiles: list[Tile] = []
        self.pixmaps: dict[int, QtGui.QPixmap] = {}

    def set_tiles(self, tiles: list[Tile]) -> None:
        """Show ``tiles`` (their pictures are forgotten)."""
        self.beginResetModel()
        self.tiles = tiles
        self.pixmaps = {}
        self.endResetModel()

    def set_pixmap(self, index: int, pixmap: QtGui.QPixmap) -> None:
        """The picture of the tile of morph ``index`` (-1: neutral)."""
        self.pixmaps[index] = pixmap
        for row, t in enumerate(self.tiles):
            if t.index == index:
                mi = self.index(row)
                self.dataChanged.emit(mi, mi)

    def refresh(self) -> None:
        """Repaint every tile (the slot badges changed)."""
        if self.tiles:
            self.dataChanged.emit(self.index(0), self.index(len(self.tiles) - 1))

    def row_of(self, index: int) -> int | None:
        """The grid row of the tile of morph ``index``, or None."""
        return next((r for r, t in enumerate(self.tiles) if t.index == index), None)

    def rowCount(self, parent=QtCore.QModelIndex()) -> int:  # noqa: N802 - Qt API
        return 0 if parent.isValid() else len(self.tiles)

    def data(self, index, role=QtCore.Qt.DisplayRole):
        if not index.isValid():
            return None
        t = self.tiles[index.row()]
        if role == QtCore.Qt.UserRole:
            return t
        if role == QtCore.Qt.DisplayRole:
            return t.name
        if role == QtCore.Qt.ToolTipRole:
            return f"{t.name} (morph {t.index})\n{t.caption}" if t.index >= 0 else t.caption
        return None


class TileDelegate(QtWidgets.QStyledItemDelegate):
    """Paints a tile: picture, slot badges, name and caption."""

    def __init__(self, window: EyesWindow):
        super().__init__(window)
        self.window = window
        self._checks = checkerboard(8, "#dcdcdc", "#c8c8c8")

    @staticmethod
    def fonts(base: QtGui.QFont) -> tuple[QtGui.QFont, QtGui.QFont]:
        """The fonts of a tile's morph name (bold) and caption (a little smaller)."""
        name, caption = QtGui.QFont(base), QtGui.QFont(base)
        name.setBold(True)
        caption.setPointSizeF(base.pointSizeF() * 0.9)
        return name, caption

    def sizeHint(self, option, index):  # noqa: N802 - Qt API
        name, caption = self.fonts(option.font)  # picture, name, two caption lines (what it does, image side)
        h = 2 + TILE_H + 3 + QtGui.QFontMetrics(name).height() + 1 + 2 * QtGui.QFontMetrics(caption).lineSpacing()
        return QtCore.QSize(CELL_W, h + 4 + 6)

    def paint(self, p: QtGui.QPainter, option, index):
        t: Tile = index.data(QtCore.Qt.UserRole)
        r = option.rect.adjusted(3, 3, -3, -3)
        selected = bool(option.state & QtWidgets.QStyle.State_Selected)
        p.save()
        p.fillRect(r, QtGui.QColor("#fff3c4" if selected else "#fafafa"))
        img_rect = QtCore.QRect(r.left() + (r.width() - TILE_W) // 2, r.top() + 2, TILE_W, TILE_H)
        p.fillRect(img_rect, self._checks)
        pm = self.window.tiles.pixmaps.get(t.index)
        if pm is not None:
            p.drawPixmap(img_rect, pm)
        else:
            p.setPen(QtGui.QColor("#777"))
            p.drawText(img_rect, QtCore.Qt.AlignCenter, "rendering…")
        # side reminder on the neutral face (on a light box: readable over dark hair too)
        if t.index < 0:
            f = p.font()
            f.setPointSizeF(f.pointSizeF() * 0.85)
            p.setFont(f)
            fm = p.fontMetrics()
            for text, align in (("char. RIGHT", QtCore.Qt.AlignLeft), ("char. LEFT", QtCore.Qt.AlignRight)):
                w, h = fm.horizontalAdvance(text) + 8, fm.height() + 2
                x = img_rect.left() + 2 if align == QtCore.Qt.AlignLeft else img_rect.right() - 1 - w
                box = QtCore.QRect(x, img_rect.bottom() - 1 - h, w, h)
                p.fillRect(box, QtGui.QColor(255, 255, 255, 215))
                p.setPen(QtGui.QColor("#263238"))
                p.drawText(box, QtCore.Qt.AlignCenter, text)
        # badges
        x = img_rect.left() + 3
        for slot in self.window.slots_of(t):
            key, label, _, color = SLOT_INFO[slot]
            text = f"{key} {label}"
            fm = p.fontMetrics()
            w = fm.horizontalAdvance(text) + 10
            badge = QtCore.QRect(x, img_rect.top() + 3, w, fm.height() + 4)
            p.setPen(QtCore.Qt.NoPen)
            p.setBrush(QtGui.QColor(color))
            p.drawRoundedRect(badge, 4, 4)
            p.setPen(QtGui.QColor("white"))
            p.drawText(badge, QtCore.Qt.AlignCenter, text)
            x += w + 3
        p.setPen(QtGui.QColor("#111"))
        name_font, caption_font = self.fonts(option.font)
        p.setFont(name_font)
        fm = p.fontMetrics()
        name_rect = QtCore.QRect(r.left() + 4, img_rect.bottom() + 3, r.width() - 8, fm.height())
        p.drawText(name_rect, QtCore.Qt.AlignLeft | QtCore.Qt.AlignVCenter,
                   fm.elidedText(t.name, QtCore.Qt.ElideRight, name_rect.width()))
        p.setFont(caption_font)
        p.setPen(QtGui.QColor("#333"))
        fm = p.fontMetrics()
        y = name_rect.bottom() + 1
        for line in caption_lines(t.caption):
            p.drawText(QtCore.QRect(r.left() + 4, y, r.width() - 8, fm.lineSpacing()),
                       QtCore.Qt.AlignLeft | QtCore.Qt.AlignVCenter,
                       fm.elidedText(line, QtCore.Qt.ElideRight, r.width() - 8))
            y += fm.lineSpacing()
        if selected:
            pen = QtGui.QPen(QtGui.QColor("#ff8f00"), 3)
            p.setPen(pen)
            p.setBrush(QtCore.Qt.NoBrush)
            p.drawRect(r.adjusted(1, 1, -1, -1))
        p.restore()


class SlotRow(QtWidgets.QFrame):
    """One slot on the right: key, name and side, picture of its morph, the
    morph's name, where the value comes from, a clear button."""

    clicked = QtCore.pyqtSignal(str)
    cleared = QtCore.pyqtSignal(str)

    THUMB_W = 88

    def __init__(self, slot: str, parent=None):
        super().__init__(parent)
        self.slot = slot
        key, label, what, color = SLOT_INFO[slot]
        self.setFrameShape(QtWidgets.QFrame.StyledPanel)
        self.setCursor(QtCore.Qt.PointingHandCursor)
        self.setToolTip(f"{SLOT_HELP[slot]}\nclick: put the selected face's morph here (same as key {key})")
        badge = QtWidgets.QLabel(key)
        badge.setAlignment(QtCore.Qt.AlignCenter)
        badge.setFixedSize(24, 24)
        badge.setStyleSheet(f"QLabel {{ background: {color}; color: white; font-weight: bold; border-radius: 4px; }}")
        self.thumb = QtWidgets.QLabel()
        self.thumb.setFixedSize(self.THUMB_W, int(round(self.THUMB_W * TILE_H / TILE_W)))
        self.thumb.setStyleSheet("QLabel { background: #d0d0d0; color: #666; }")
        self.thumb.setAlignment(QtCore.Qt.AlignCenter)
        self.text = QtWidgets.QLabel()
        self.text.setTextFormat(QtCore.Qt.RichText)
        self.text.setWordWrap(True)
        self.text.setAlignment(QtCore.Qt.AlignTop | QtCore.Qt.AlignLeft)
        self.title = (f"<b style='color:{color}'>{html.escape(label)}</b>&nbsp; "
                      f"<span style='color:#444; font-size:12px'>{html.escape(what)}</span>")
        clear = QtWidgets.QToolButton()
        clear.setText("×")
        clear.setToolTip("empty this slot (the model has no such morph)")
        clear.setFocusPolicy(QtCore.Qt.NoFocus)
        clear.clicked.connect(lambda: self.cleared.emit(self.slot))
        lay = QtWidgets.QHBoxLayout(self)
        lay.setContentsMargins(3, 2, 3, 2)
        lay.setSpacing(5)
        lay.addWidget(badge, 0, QtCore.Qt.AlignTop)
        lay.addWidget(self.thumb, 0, QtCore.Qt.AlignTop)
        lay.addWidget(self.text, 1)
        lay.addWidget(clear, 0, QtCore.Qt.AlignTop)

    def set_state(self, morph: str | None, source: str, warning: str = "") -> None:
        """Show the slot's morph name (None: empty) and its source line, or a
        warning in its place."""
        name = html.escape(morph) if morph else "<i style='color:#888'>empty (no such morph)</i>"
        line = (f"<span style='color:#c62828'>⚠ {html.escape(warning)}</span>" if warning
                else f"<span style='color:#666'>{source}</span>")
        self.text.setText(f"{self.title}<br><span style='font-size:15px'><b>{name}</b></span><br>{line}")

    def set_pixmap(self, pixmap: QtGui.QPixmap | None, empty_text: str = "") -> None:
        """Show the morph's face (None: ``empty_text``)."""
        if pixmap is None:
            self.thumb.setPixmap(QtGui.QPixmap())
            self.thumb.setText(empty_text)
        else:
            self.thumb.setPixmap(pixmap.scaled(self.thumb.size(), QtCore.Qt.KeepAspectRatio,
                                               QtCore.Qt.SmoothTransformation))

    def mousePressEvent(self, event):  # noqa: N802 - Qt API
        if event.button() == QtCore.Qt.LeftButton:
            self.clicked.emit(self.slot)


class EyesWindow(AnnotatorWindow):
    """``mmdsynth annotate eyes``: see the module docstring.

    Attributes for tests and the benchmark: ``assigned`` (``{slot: morph name
    or None}`` on screen), ``sources`` (``{slot: 'human' | 'auto' |
    'suggestion' | 'edited' | 'empty'}``), ``tiles`` (the grid's model),
    ``grid`` (the list view).
    """

    TOOL = "eyes"
    WANT_MORPHS = True
    HINT = ("<b>↑↓←→</b> pick a face · <b>1</b>–<b>6</b> put it in an eye slot, <b>7</b> mouth "
            "(neutral face + digit: slot empty) · <b>0</b> take it out of its slots · <b>Enter</b> accept &amp; next · "
            "<b>N</b>/<b>P</b> next/previous · <b>U</b> unusable · <b>Ctrl+Z</b> undo · <b>F1</b> all keys · "
            "LEFT = the character's left = the IMAGE RIGHT")
    MOUSE = (("click a face", "select it"), ("click a slot", "put the selected face's morph in it"),
             ("× on a slot", "empty it"), ("right-click a face", "menu: put it in a slot"))
    HELP_NOTES = ("Wink slots close ONE eye; 'left' is the character's left, which is the eye on the IMAGE RIGHT. "
                  "Smile winks close the eye in a smiling ^ shape (lower lid up); plain winks like a blink. "
                  "An empty slot means the model has no such morph — that is a valid answer. "
                  "Every accepted model is saved at once; closing or killing the tool loses at most the model on "
                  "screen.")

    def build_central(self) -> QtWidgets.QWidget:
        self.assigned: dict[str, str | None] = {s: None for s in EXPRESSION_SLOTS}
        self.sources: dict[str, str] = {s: "empty" for s in EXPRESSION_SLOTS}
        self.stored: dict = {}
        self.spec_of: dict[int, ViewSpec] = {}
        self.head: tuple[float, float] | None = None
        self.tiles = TileModel(self)
        self.grid = QtWidgets.QListView()
        self.grid.setModel(self.tiles)
        self.grid.setItemDelegate(TileDelegate(self))
        self.grid.setViewMode(QtWidgets.QListView.IconMode)
        self.grid.setResizeMode(QtWidgets.QListView.Adjust)
        self.grid.setMovement(QtWidgets.QListView.Static)
        self.grid.setUniformItemSizes(True)
        self.grid.setSpacing(2)
        self.grid.setSelectionMode(QtWidgets.QAbstractItemView.SingleSelection)
        self.grid.setStyleSheet("QListView { background: #eceff1; }")
        self.grid.selectionModel().currentChanged.connect(lambda *_: self._update_selection_label())
        self.grid.doubleClicked.connect(lambda _: None)
        self.grid.setContextMenuPolicy(QtCore.Qt.CustomContextMenu)
        self.grid.customContextMenuRequested.connect(self._context_menu)
        self.selection_label = QtWidgets.QLabel()
        self.selection_label.setTextFormat(QtCore.Qt.RichText)
        self.selection_label.setWordWrap(True)
        self.selection_label.setMinimumWidth(100)
        self.slot_rows: dict[str, SlotRow] = {}
        right = QtWidgets.QWidget()
        rl = QtWidgets.QVBoxLayout(right)
        rl.setContentsMargins(6, 0, 0, 0)
        rl.setSpacing(3)
        head = QtWidgets.QLabel("<b>Slots</b> <span style='color:#555'>— select a face, press its digit "
                                "(or click a slot)</span>")
        head.setWordWrap(True)
        rl.addWidget(head)
        for slot in EXPRESSION_SLOTS:
            row = SlotRow(slot)
            row.clicked.connect(self.assign_selected)
            row.cleared.connect(lambda s: self.assign(s, None))
            self.slot_rows[slot] = row
            rl.addWidget(row)
        reset = QtWidgets.QPushButton("Reset to stored values (R)")
        reset.setFocusPolicy(QtCore.Qt.NoFocus)
        reset.clicked.connect(self.reset)
        rl.addWidget(reset)
        self.notes_label = QtWidgets.QLabel()
        self.notes_label.setWordWrap(True)
        self.notes_label.setStyleSheet("QLabel { color: #555; }")
        rl.addWidget(self.notes_label)
        rl.addStretch(1)
        scroll = QtWidgets.QScrollArea()  # only scrolls on screens too small for the seven slots
        scroll.setWidget(right)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QtWidgets.QFrame.NoFrame)
        scroll.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarAlwaysOff)
        scroll.setFocusPolicy(QtCore.Qt.NoFocus)
        scroll.setFixedWidth(420)
        left = QtWidgets.QWidget()
        ll = QtWidgets.QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(self.selection_label)
        ll.addWidget(self.grid, 1)
        w = QtWidgets.QWidget()
        lay = QtWidgets.QHBoxLayout(w)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(left, 1)
        lay.addWidget(scroll)
        w.setFocusProxy(self.grid)
        return w

    def tool_actions(self) -> list[Action]:
        acts = [Action(["Up", "Down", "Left", "Right"], "select a face in the grid (or click it)", lambda: None,
                       "faces", label="↑ ↓ ← →", shortcut=False)]  # the grid's own keys: listed, no shortcut
        for slot in EXPRESSION_SLOTS:
            key, label, _, _ = SLOT_INFO[slot]
            acts.append(Action([key], f"selected face → {label}: {SLOT_HELP[slot]}",
                               lambda s=slot: self.assign_selected(s), "slots"))
        acts.append(Action(["1"], "empty that slot: the model has no such morph (stored as none)", lambda: None,
                           "slots", label="neutral face + 1 … 7", shortcut=False))
        acts.append(Action(["0"], "take the selected morph out of its slots", self.clear_selected, "slots"))
        acts.append(Action(["R"], "reset to the stored values (drop edits)", self.reset, "slots"))
        return acts

    # -- model ---------------------------------------------------------------------------

    def show_model(self, row: Row, info: ModelInfo | None) -> None:
        self.stored = self.catalog.annotations(row.id)
        for slot in EXPRESSION_SLOTS:
            ann = self.stored.get(slot)
            if ann is not None:
                self.assigned[slot] = ann.value
                self.sources[slot] = ann.origin
            else:
                self.assigned[slot] = None
                self.sources[slot] = "empty"
        top, bottom = self.stored.get("head_top"), self.stored.get("head_bottom")
        self.head = None
        if top is not None and bottom is not None and top.value is not None and bottom.value is not None \
                and top.value > bottom.value:
            self.head = (float(top.value), float(bottom.value))
        self.spec_of = {}
        self.tiles.set_tiles([])
        self.selection_label.setText("<i>loading the model…</i>")
        if info is not None:
            self._with_info(info)
        self._update_slots()

    def on_info(self, info: ModelInfo) -> None:
        self._with_info(info)
        self._update_slots()

    def on_failed(self, message: str) -> None:
        self.selection_label.setText(f"<span style='color:#c62828'><b>{html.escape(message)}</b></span>")
        self.message(f"{message} — press U to mark it unusable, or N to skip", warn=True)

    def _with_info(self, info: ModelInfo) -> None:
        sugg = info.morphs
        if sugg is not None:
            for slot in EXPRESSION_SLOTS:
                if slot not in self.stored:
                    self.assigned[slot] = sugg.assignment.get(slot)
                    self.sources[slot] = "suggestion" if self.assigned[slot] else "empty"
        elif info.morphs_error:
            self.notes_label.setText(f"No suggestion: {info.morphs_error}")
        head = self.head or ((info.head.top, info.head.bottom) if info.head is not None else None)
        if head is None:
            (_, y0, _), (_, y1, _) = info.bounds_min, info.bounds_max
            head = (y1, y1 - 0.15 * max(y1 - y0, 1e-3))
        self.head = head
        tiles = candidate_tiles(info, self.assigned)
        self.tiles.set_tiles(tiles)
        self.spec_of = {t.index: face_spec(head[0], head[1], info.center_x, t.index if t.index >= 0 else None)
                        for t in tiles}
        pending = []
        for t in tiles:
            spec = self.spec_of[t.index]
            image = self.worker.cached_image(self.current.id, spec)
            if image is not None:
                self.tiles.set_pixmap(t.index, QtGui.QPixmap.fromImage(image))
            else:
                pending.append(spec)
        # the neutral face and the faces now in slots first, then the rest of the grid
        first = [s for s in pending if s == self.spec_of[-1] or any(
            s == self.spec_of.get(info.morph_index(m)) for m in self.assigned.values() if m)]
        rest = [s for s in pending if s not in first]
        self.worker.request(self.current.id, self.catalog.library / self.current.path, first + rest, "now")
        self.grid.setCurrentIndex(self.tiles.index(0))
        notes = sugg.notes if sugg is not None else []
        self.notes_label.setText("<br>".join(html.escape(n) for n in notes[:6]))
        self._update_selection_label()
        self._check_ready()

    def prefetch_specs(self, row: Row, info: ModelInfo) -> list[ViewSpec]:
        stored = self.catalog.annotations(row.id)
        assigned = {s: (stored[s].value if s in stored else (info.morphs.assignment.get(s) if info.morphs else None))
                    for s in EXPRESSION_SLOTS}
        top, bottom = stored.get("head_top"), stored.get("head_bottom")
        if top is not None and bottom is not None and top.value is not None and bottom.value is not None \
                and top.value > bottom.value:
            head = (float(top.value), float(bottom.value))
        elif info.head is not None:
            head = (info.head.top, info.head.bottom)
        else:
            return []
        tiles = candidate_tiles(info, assigned)
        specs = {t.index: face_spec(head[0], head[1], info.center_x, t.index if t.index >= 0 else None) for t in tiles}
        first = [specs[-1]] + [specs[i] for i in (info.morph_index(m) for m in assigned.values() if m)
                               if i is not None and i in specs]
        return list(dict.fromkeys(first + list(specs.values())))

    def on_image(self, spec: ViewSpec, image: QtGui.QImage) -> None:
        for index, s in self.spec_of.items():
            if s == spec:
                self.tiles.set_pixmap(index, QtGui.QPixmap.fromImage(image))
                self._update_slot_pictures()
                self._check_ready()
                return

    def _needed(self) -> list[int]:
        need = [-1]
        if self.info is not None:
            for m in self.assigned.values():
                i = self.info.morph_index(m)
                if i is not None:
                    need.append(i)
        return need

    def _check_ready(self) -> None:
        if self.info is not None and self.spec_of and all(i in self.tiles.pixmaps for i in self._needed()):
            self.emit_ready()

    # -- slots ------------------------------------------------------------------------------

    def slots_of(self, tile: Tile) -> list[str]:
        """The slots the tile's morph fills."""
        if tile.index < 0:
            return []
        return [s for s in EXPRESSION_SLOTS if self.assigned[s] is not None and self.assigned[s] == tile.name]

    def selected_tile(self) -> Tile | None:
        """The tile selected in the grid, or None."""
        index = self.grid.currentIndex()
        return index.data(QtCore.Qt.UserRole) if index.isValid() else None

    def select_morph(self, name_or_index) -> bool:
        """Select the tile of a morph (name or index; -1 = neutral). False if not in the grid."""
        for row, t in enumerate(self.tiles.tiles):
            if t.index == name_or_index or (isinstance(name_or_index, str) and t.name == name_or_index):
                self.grid.setCurrentIndex(self.tiles.index(row))
                return True
        return False

    def assign_selected(self, slot: str) -> None:
        """Digit / slot click: put the selected morph in ``slot`` (neutral: empty it)."""
        tile = self.selected_tile()
        if tile is None:
            self.message("Select a face first (arrow keys or click).", warn=True)
            return
        self.assign(slot, tile.name if tile.index >= 0 else None)

    def assign(self, slot: str, morph: str | None) -> None:
        """Put ``morph`` (a name, or None for empty) in ``slot``."""
        if self.assigned[slot] == morph:
            return
        self.assigned[slot] = morph
        self.sources[slot] = "edited"
        self.set_dirty(True)
        self._update_slots()
        self.tiles.refresh()
        _, label, _, _ = SLOT_INFO[slot]
        self.message(f"{label}: {morph if morph else 'empty'}")

    def clear_selected(self) -> None:
        """0: take the selected morph out of every slot it fills."""
        tile = self.selected_tile()
        if tile is None:
            return
        slots = self.slots_of(tile)
        if not slots:
            self.message("The selected face is in no slot (select the neutral face and press a digit to empty a slot).")
        for s in slots:
            self.assign(s, None)

    def reset(self) -> None:
        """R: back to the stored values (or the suggestion)."""
        if self.current is not None:
            pos = self.position()
            self.go_to(pos if pos is not None else 0)

    def current_values(self) -> dict | None:
        if self.info is None and not all(s in self.stored for s in EXPRESSION_SLOTS):
            self.message("Still loading this model: wait for the faces before accepting.", warn=True)
            return None
        if -1 not in self.tiles.pixmaps:
            self.message("Still rendering: wait for the faces before accepting.", warn=True)
            return None
        return dict(self.assigned)

    def _warning(self, slot: str) -> str:
        name = self.assigned[slot]
        if name is None or self.info is None:
            return ""
        i = self.info.morph_index(name)
        if i is None:
            return "this model has no morph of that name"
        if self.info.morphs is None:
            return ""
        a = next((x for x in self.info.morphs.analysis if x.index == i), None)
        if a is None:
            return ""
        if slot == "mouth":
            return "" if a.category == "mouth_open" else "does not look like an open mouth"
        want = _SLOT_SIDE[slot]
        if a.category not in ("close", "smile_close"):
            return "does not seem to shut an eye"
        if a.side != want:
            does = {"left": "it shuts the LEFT eye (image right)", "right": "it shuts the RIGHT eye (image left)",
                    "both": "it shuts both eyes"}.get(a.side, "it shuts an eye")
            wants = {"left": "the LEFT eye (image right)", "right": "the RIGHT eye (image left)",
                     "both": "both eyes"}[want]
            return f"{does}; this slot is for {wants}"
        return ""

    def _update_slots(self) -> None:
        sugg = self.info.morphs if self.info is not None else None
        for slot, row in self.slot_rows.items():
            name = self.assigned[slot]
            src = self.sources[slot]
            conf = sugg.confidence.get(slot, 0.0) if sugg is not None else None
            matches = sugg is not None and sugg.assignment.get(slot) == name
            text = {"human": "<span style='color:#2e7d32'>✓ reviewed</span>", "auto": "suggested",
                    "suggestion": "suggested", "edited": "<b style='color:#c62828'>edited</b>",
                    "empty": "nothing stored"}.get(src, src)
            if matches and name is not None and conf is not None and src != "human":
                color = "#2e7d32" if conf >= 0.8 else ("#d08000" if conf >= 0.6 else "#c62828")
                text += f", <b style='color:{color}'>{conf:.0%}</b> sure"
            elif sugg is not None and not matches:
                text += f" (suggested: {html.escape(sugg.assignment.get(slot) or 'empty')})"
            row.set_state(name, text, self._warning(slot))
        self._update_slot_pictures()

    def _update_slot_pictures(self) -> None:
        for slot, row in self.slot_rows.items():
            name = self.assigned[slot]
            if name is None:
                row.set_pixmap(None, "empty")
                continue
            i = self.info.morph_index(name) if self.info is not None else None
            pm = self.tiles.pixmaps.get(i) if i is not None else None
            row.set_pixmap(pm, "rendering…" if i is not None else "?")

    def _update_selection_label(self) -> None:
        t = self.selected_tile()
        if t is None:
            self.selection_label.setText("")
            return
        if t.index < 0:
            self.selection_label.setText("Selected: <b>the neutral face</b> (no morph) — a digit now empties "
                                         "that slot")
            return
        slots = ", ".join(SLOT_INFO[s][1] for s in self.slots_of(t)) or "no slot"
        caption = f"; {html.escape(t.caption)}" if t.caption else ""
        self.selection_label.setText(f"Selected: <b>{html.escape(t.name)}</b> (morph {t.index}{caption}) — "
                                     f"in: <b>{slots}</b> · press 1–7 to put it in a slot")

    def _context_menu(self, pos: QtCore.QPoint) -> None:
        index = self.grid.indexAt(pos)
        if not index.isValid():
            return
        self.grid.setCurrentIndex(index)
        menu = QtWidgets.QMenu(self)
        for slot in EXPRESSION_SLOTS:
            key, label, _, _ = SLOT_INFO[slot]
            menu.addAction(f"{key}  {label} — {SLOT_HELP[slot]}", lambda s=slot: self.assign_selected(s))
        menu.addSeparator()
        menu.addAction("0  take out of its slots", self.clear_selected)
        menu.exec_(self.grid.viewport().mapToGlobal(pos))
