"""``mmdsynth annotate heads LIB``: the head top / head bottom (chin tip) tool.

The screen
----------
* Centre: an orthographic render of the rest pose around the head, from the
  FRONT (the character's left on the image right) and from the SIDE (the
  character's left side; the face points to the image left), under two
  horizontal lines spanning both: the **head top** (orange) and the **chin**
  = head bottom (cyan). They start at the catalog's values (human or auto)
  or, when the catalog has none, at the suggestion
  (:func:`~mmdsynth.annotate.suggest.suggest_head_bounds`); where the values
  differ from the suggestion, thin dashed lines show the suggestion. Behind, a
  dimmed full-body render helps when the head is far from the suggestion.
* Right: the ``tha1`` crop with the current values, as the dataset will see
  it (256x256, head top on row 64, chin on row 192; the two rows are marked),
  updated live while a line moves; the values, where they come from, and the
  suggestion's confidence and notes.

Keys (also in the F1 overlay): Enter accept and next, N / P next / previous,
U unusable, Ctrl+Z undo, T / B select the top / chin line (Tab toggles),
Up / Down move it by half a tha1 pixel (Shift: 4 pixels), S put both lines at
the suggestion, R back to the stored values, + / - zoom, F fit. Mouse: drag a
line (the cursor changes over it), drag elsewhere to pan, wheel to zoom.
"""

from __future__ import annotations

import html
import math

from PyQt5 import QtCore, QtGui, QtWidgets

from mmdsynth.render.framing import Framing

from .app import Action, AnnotatorWindow, checkerboard
from .model_list import Row
from .render_worker import ModelInfo, ViewSpec

__all__ = ["HeadView", "HeadsWindow", "PreviewWidget", "detail_specs", "body_spec"]

TOP, BOTTOM = "head_top", "head_bottom"
COLORS = {TOP: QtGui.QColor("#ff8f00"), BOTTOM: QtGui.QColor("#00b8d4")}
LABELS = {TOP: "head top", BOTTOM: "chin (head bottom)"}
DETAIL_PX = 360  # width of the front and side renders (1.5 head heights; 480 pixels tall)
BODY_MAX_PX = 1100  # longest side of the full-body render
FINE = 1 / 256  # Up/Down step, in head heights (half a tha1 pixel)
COARSE = 1 / 32  # Shift+Up/Down step (4 tha1 pixels)


def detail_specs(top: float, bottom: float, center_x: float, width: int = DETAIL_PX) -> tuple[ViewSpec, ViewSpec]:
    """Front and side views of the region around a head: 2 head heights tall
    and 1.5 wide, the head top 0.55 heights below the upper edge."""
    h = top - bottom
    upper = top + 0.55 * h
    lower = bottom - 0.45 * h
    front = ViewSpec.region("front", center_x - 0.75 * h, center_x + 0.75 * h, upper, lower, width)
    side = ViewSpec("side", front.width, front.height, front.scale, front.center_x, front.top_y)
    return front, side


def body_spec(info: ModelInfo, max_px: int = BODY_MAX_PX) -> ViewSpec | None:
    """A front view of the whole model (rest pose), or None when it has no extent."""
    (x0, y0, _), (x1, y1, _) = info.bounds_min, info.bounds_max
    cx = info.center_x
    half = max(abs(x0 - cx), abs(x1 - cx)) * 1.04
    pad = 0.02 * (y1 - y0)
    w, h = 2 * half, (y1 - y0) + 2 * pad
    if not (w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h)):
        return None
    scale = max_px / max(w, h)
    return ViewSpec.region("body", cx - half, cx + half, y1 + pad, y0 - pad, max(8, int(round(w * scale))))


def tha1_spec(top: float, bottom: float, center_x: float) -> ViewSpec:
    """The tha1 crop of these head bounds (what the dataset sees)."""
    return ViewSpec.from_framing("tha1", Framing.from_head("tha1", top, bottom, center_x))


class HeadView(QtWidgets.QGraphicsView):
    """Front and side renders with the two draggable lines.

    Scene coordinates are MMD units with Y flipped (scene y = -MMD Y), so the
    line positions are the head bounds themselves. Signals:
    ``line_dragged(key, value)`` while a line is dragged (value in MMD Y),
    ``drag_finished()``, ``line_selected(key)``.
    """

    line_dragged = QtCore.pyqtSignal(str, float)
    drag_finished = QtCore.pyqtSignal()
    line_selected = QtCore.pyqtSignal(str)

    GRAB_PX = 8

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setScene(QtWidgets.QGraphicsScene(self))
        self.setRenderHints(QtGui.QPainter.Antialiasing | QtGui.QPainter.SmoothPixmapTransform)
        self.setBackgroundBrush(QtGui.QColor("#9e9e9e"))
        self.setTransformationAnchor(QtWidgets.QGraphicsView.AnchorUnderMouse)
        self.setResizeAnchor(QtWidgets.QGraphicsView.AnchorViewCenter)
        self.setMouseTracking(True)
        self.setFocusPolicy(QtCore.Qt.StrongFocus)
        self.setMinimumSize(420, 360)
        s = self.scene()
        self.body_item = s.addPixmap(QtGui.QPixmap())
        self.body_item.setOpacity(0.45)
        self.body_item.setZValue(0)
        self.side_bg = s.addRect(QtCore.QRectF(), QtGui.QPen(QtCore.Qt.NoPen), QtGui.QBrush(QtGui.QColor("#c4c4c4")))
        self.side_bg.setZValue(0.5)
        self.front_bg = s.addRect(QtCore.QRectF(), QtGui.QPen(QtCore.Qt.NoPen), QtGui.QBrush(QtGui.QColor("#c4c4c4")))
        self.front_bg.setZValue(0.5)
        self.front_item = s.addPixmap(QtGui.QPixmap())
        self.front_item.setZValue(1)
        self.side_item = s.addPixmap(QtGui.QPixmap())
        self.side_item.setZValue(1)
        for item in (self.body_item, self.front_item, self.side_item):
            item.setTransformationMode(QtCore.Qt.SmoothTransformation)
        self.titles = [self._text("", "#263238", "#ffffffd0", 11, bold=True) for _ in range(2)]
        self.loading = self._text("loading…", "#263238", "#ffffffd0", 14)
        self.lines: dict[str, QtWidgets.QGraphicsLineItem] = {}
        self.labels: dict[str, QtWidgets.QGraphicsTextItem] = {}
        self.sugg_lines: dict[str, QtWidgets.QGraphicsLineItem] = {}
        self.sugg_labels: dict[str, QtWidgets.QGraphicsTextItem] = {}
        for key in (TOP, BOTTOM):
            sl = s.addLine(QtCore.QLineF())
            pen = QtGui.QPen(COLORS[key], 1.5, QtCore.Qt.DashLine)
            pen.setCosmetic(True)
            sl.setPen(pen)
            sl.setZValue(2)
            self.sugg_lines[key] = sl
            self.sugg_labels[key] = self._text("suggestion", COLORS[key].darker(140).name(), "#ffffffb0", 10)
            line = s.addLine(QtCore.QLineF())
            line.setZValue(3)
            self.lines[key] = line
            self.labels[key] = self._text("", "#ffffff", COLORS[key].name(), 11, bold=True)
            self.labels[key].setZValue(4)
        self.values = {TOP: 1.0, BOTTOM: 0.0}
        self.suggestion: dict[str, float] | None = None
        self.selected = TOP
        self.x_span = (0.0, 1.0)
        self.fit_rect = QtCore.QRectF()
        self._drag: str | None = None
        self._pan: QtCore.QPoint | None = None
        self.front_spec: ViewSpec | None = None

    def _text(self, text, color, background, size, bold=False) -> QtWidgets.QGraphicsTextItem:
        item = self.scene().addText("")
        item.setFlag(QtWidgets.QGraphicsItem.ItemIgnoresTransformations, True)
        item.setZValue(5)
        item.setData(0, (color, background, size, bold))
        self._set_text(item, text)
        return item

    @staticmethod
    def _set_text(item: QtWidgets.QGraphicsTextItem, text: str) -> None:
        color, background, size, bold = item.data(0)
        weight = "bold" if bold else "normal"
        lines = "<br>".join(f"&nbsp;{html.escape(line)}&nbsp;" for line in text.split("\n"))
        item.setHtml(f"<div style='background:{background}; color:{color}; font-size:{size}px; "
                     f"font-weight:{weight}'>{lines}</div>")
        item.setVisible(bool(text))

    # -- layout ------------------------------------------------------------------------

    def set_layout(self, front: ViewSpec, body: ViewSpec | None) -> None:
        """Place the front and side regions (from the front spec) and the body view."""
        self.front_spec = front
        w, h = front.width / front.scale, front.height / front.scale
        left = front.center_x - w / 2
        gap = 0.06 * w
        self.side_offset = w + gap
        top = -front.top_y
        self.front_bg.setRect(QtCore.QRectF(left, top, w, h))
        self.side_bg.setRect(QtCore.QRectF(left + self.side_offset, top, w, h))
        self.x_span = (left - 0.02 * w, left + self.side_offset + w + 0.02 * w)
        self.fit_rect = QtCore.QRectF(left - 0.05 * w, top - 0.12 * h, self.side_offset + w + 0.1 * w, 1.17 * h)
        # two short lines each: they must fit over a view shown only ~300 pixels wide
        self._set_text(self.titles[0], "FRONT\ncharacter's left = image right")
        self.titles[0].setPos(left, top)
        self._set_text(self.titles[1], "SIDE: the character's left side\nface → image left")
        self.titles[1].setPos(left + self.side_offset, top)
        for t in self.titles:  # just above the view, whatever the zoom
            t.setTransform(QtGui.QTransform.fromTranslate(0, -t.boundingRect().height() - 2))
        self.loading.setPos(left + 0.4 * w, top + 0.45 * h)
        # the pixmaps are placed when their renders arrive (an old one stays where it was meanwhile)
        rect = QtCore.QRectF(self.fit_rect)
        if body is not None:
            rect = rect.united(QtCore.QRectF(body.center_x - body.width / body.scale / 2, -body.top_y,
                                             body.width / body.scale, body.height / body.scale))
        m = max(rect.width(), rect.height())
        self.scene().setSceneRect(rect.adjusted(-m, -m, m, m))
        self._update_lines()

    def _place_pixmap(self, item: QtWidgets.QGraphicsPixmapItem, spec: ViewSpec, dx: float) -> None:
        item.setScale(1.0 / spec.scale)
        item.setPos(spec.center_x - spec.width / spec.scale / 2 + dx, -spec.top_y)

    def clear_images(self) -> None:
        """Forget the pictures (a new model is coming)."""
        for item in (self.body_item, self.front_item, self.side_item):
            item.setPixmap(QtGui.QPixmap())
        self.loading.setVisible(True)

    def set_image(self, spec: ViewSpec, image: QtGui.QImage) -> None:
        """Show a render: ``spec.kind`` is ``front``, ``side`` or ``body``."""
        pixmap = QtGui.QPixmap.fromImage(image)
        if spec.kind == "body":
            self.body_item.setPixmap(pixmap)
            self._place_pixmap(self.body_item, spec, 0.0)
        elif spec.kind == "front":
            self.front_item.setPixmap(pixmap)
            self._place_pixmap(self.front_item, spec, 0.0)
            self.loading.setVisible(False)
        elif spec.kind == "side":
            self.side_item.setPixmap(pixmap)
            self._place_pixmap(self.side_item, spec, self.side_offset)

    def show_message(self, text: str) -> None:
        """A line of text over the view (e.g. a load error); empty hides it."""
        self._set_text(self.loading, text)

    # -- lines ---------------------------------------------------------------------------

    def set_values(self, top: float, bottom: float) -> None:
        """Put the lines at ``top`` and ``bottom`` (MMD Y)."""
        self.values = {TOP: float(top), BOTTOM: float(bottom)}
        self._update_lines()

    def set_suggestion(self, values: dict[str, float] | None) -> None:
        """Dashed reference lines at the suggestion (hidden where it equals the value)."""
        self.suggestion = values
        self._update_lines()

    def select(self, key: str) -> None:
        """Make ``key``'s line the one the arrow keys move."""
        self.selected = key
        self._update_lines()

    def _update_lines(self) -> None:
        x0, x1 = self.x_span
        h = max(self.values[TOP] - self.values[BOTTOM], 1e-9)
        for key, line in self.lines.items():
            y = -self.values[key]
            line.setLine(QtCore.QLineF(x0, y, x1, y))
            selected = key == self.selected
            pen = QtGui.QPen(COLORS[key], 3.0 if selected else 1.6)
            pen.setCosmetic(True)
            line.setPen(pen)
            label = self.labels[key]
            mark = "▶ " if selected else ""
            self._set_text(label, f"{mark}{LABELS[key]}  {self.values[key]:.3f}")
            label.setPos(x0, y)
            label.setTransform(QtGui.QTransform.fromTranslate(-4, -22 if key == TOP else 2))
            sl = self.sugg_lines[key]
            if self.suggestion is not None and abs(self.suggestion[key] - self.values[key]) > 1e-4 * h:
                sy = -self.suggestion[key]
                sl.setLine(QtCore.QLineF(x0, sy, x1, sy))
                sl.setVisible(True)
                mid = (x0 + x1) / 2  # in the gap between the front and side views
                self.sugg_labels[key].setPos(mid, sy)
                self.sugg_labels[key].setTransform(QtGui.QTransform.fromTranslate(-38, -9))
                self.sugg_labels[key].setVisible(True)
            else:
                sl.setVisible(False)
                self.sugg_labels[key].setVisible(False)

    def line_at(self, pos: QtCore.QPoint) -> str | None:
        """The line within :attr:`GRAB_PX` pixels of viewport point ``pos``, if any."""
        best, best_d = None, self.GRAB_PX + 1.0
        x0 = self.mapFromScene(QtCore.QPointF(self.x_span[0], 0)).x()
        x1 = self.mapFromScene(QtCore.QPointF(self.x_span[1], 0)).x()
        if not x0 - self.GRAB_PX <= pos.x() <= x1 + self.GRAB_PX:
            return None
        for key in (self.selected, TOP if self.selected == BOTTOM else BOTTOM):
            ly = self.mapFromScene(QtCore.QPointF(0, -self.values[key])).y()
            d = abs(pos.y() - ly)
            if d < best_d:
                best, best_d = key, d
        return best

    def viewport_y(self, value: float) -> int:
        """The viewport row of MMD Y ``value`` (for tests and tools)."""
        return self.mapFromScene(QtCore.QPointF(self.x_span[0], -value)).y()

    # -- zoom and pan ------------------------------------------------------------------

    def fit(self) -> None:
        """Show the front and side regions whole."""
        if not self.fit_rect.isNull():
            self.fitInView(self.fit_rect, QtCore.Qt.KeepAspectRatio)
            self.fit_scale = self.transform().m11()
            self._update_body()

    def zoom(self, factor: float) -> None:
        """Zoom by ``factor`` around the view centre."""
        self.setTransformationAnchor(QtWidgets.QGraphicsView.AnchorViewCenter)
        self.scale(factor, factor)
        self.setTransformationAnchor(QtWidgets.QGraphicsView.AnchorUnderMouse)
        self._update_body()

    def show_body(self, always: bool) -> None:
        """Show the dimmed whole-model render always (no suggestion to start
        from), or only once zoomed out beyond the fit (the default)."""
        self.body_always = always
        self._update_body()

    def _update_body(self) -> None:
        zoomed_out = self.transform().m11() < 0.8 * getattr(self, "fit_scale", 0.0)
        self.body_item.setVisible(getattr(self, "body_always", False) or zoomed_out)

    def wheelEvent(self, event):  # noqa: N802 - Qt API
        steps = event.angleDelta().y() / 120.0
        if steps:
            f = 1.15 ** steps
            self.scale(f, f)
            self._update_body()

    def mousePressEvent(self, event):  # noqa: N802 - Qt API
        if event.button() == QtCore.Qt.LeftButton:
            key = self.line_at(event.pos())
            if key is not None:
                self._drag = key
                self.select(key)
                self.line_selected.emit(key)
                self.viewport().setCursor(QtCore.Qt.SizeVerCursor)
                return
            self._pan = event.pos()
            self.viewport().setCursor(QtCore.Qt.ClosedHandCursor)
            return
        if event.button() == QtCore.Qt.MiddleButton:
            self._pan = event.pos()
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event):  # noqa: N802 - Qt API
        if self._drag is not None:
            value = -self.mapToScene(event.pos()).y()
            self.line_dragged.emit(self._drag, float(value))
            return
        if self._pan is not None:
            d = event.pos() - self._pan
            self._pan = event.pos()
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() - d.x())
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() - d.y())
            return
        cursor = QtCore.Qt.SizeVerCursor if self.line_at(event.pos()) else QtCore.Qt.OpenHandCursor
        self.viewport().setCursor(cursor)
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event):  # noqa: N802 - Qt API
        if self._drag is not None:
            self._drag = None
            self.drag_finished.emit()
        self._pan = None
        self.viewport().setCursor(QtCore.Qt.OpenHandCursor)
        super().mouseReleaseEvent(event)

    def keyPressEvent(self, event):  # noqa: N802 - Qt API
        event.ignore()  # arrows are the window's actions, not scrolling


class PreviewWidget(QtWidgets.QWidget):
    """The tha1 crop (256x256) over a checkerboard, shown at ``zoom``, with the
    target rows 64 (head top) and 192 (chin) and the centre column marked."""

    def __init__(self, zoom: float = 1.5, parent=None):
        super().__init__(parent)
        self.zoom = zoom
        self.image: QtGui.QImage | None = None
        self.setFixedSize(int(256 * zoom), int(256 * zoom))
        self._checks = checkerboard(8)

    def set_image(self, image: QtGui.QImage | None) -> None:
        """Show ``image`` (256x256), or nothing."""
        self.image = image
        self.update()

    def paintEvent(self, event):  # noqa: N802 - Qt API
        p = QtGui.QPainter(self)
        p.fillRect(self.rect(), self._checks)
        p.setRenderHint(QtGui.QPainter.SmoothPixmapTransform)
        if self.image is not None:
            p.drawImage(self.rect(), self.image)
        z = self.zoom
        fm = p.fontMetrics()
        for row, key in ((64, TOP), (192, BOTTOM)):
            pen = QtGui.QPen(COLORS[key], 1, QtCore.Qt.DashLine)
            p.setPen(pen)
            p.drawLine(0, int(row * z), self.width(), int(row * z))
            text = f"row {row}: {'head top' if key == TOP else 'chin'}"
            w = fm.horizontalAdvance(text) + 8
            box = QtCore.QRect(self.width() - w - 2, int(row * z) - (fm.height() + 3 if key == TOP else -2), w,
                               fm.height() + 1)
            p.fillRect(box, QtGui.QColor(255, 255, 255, 200))
            p.setPen(COLORS[key].darker(130))
            p.drawText(box, QtCore.Qt.AlignCenter, text)
        pen = QtGui.QPen(QtGui.QColor(80, 80, 80, 120), 1, QtCore.Qt.DotLine)
        p.setPen(pen)
        p.drawLine(int(128 * z), 0, int(128 * z), self.height())
        p.setPen(QtGui.QColor("#555"))
        p.drawRect(self.rect().adjusted(0, 0, -1, -1))
        p.end()


class HeadsWindow(AnnotatorWindow):
    """``mmdsynth annotate heads``: see the module docstring.

    Attributes for tests and the benchmark: ``values`` (``{head_top,
    head_bottom}`` on screen or None), ``origin`` (where they came from:
    ``human``, ``auto``, ``suggestion``, ``guess``), ``view``
    (:class:`HeadView`), ``preview`` (:class:`PreviewWidget`).
    """

    TOOL = "heads"
    HINT = ("<b>Enter</b> accept &amp; next · <b>N</b>/<b>P</b> next/previous · drag a line, or "
            "<b>T</b>/<b>B</b> pick head top / chin and <b>↑↓</b> move it (<b>Shift</b> ×8) · "
            "<b>S</b> suggestion · <b>R</b> reset · wheel/<b>+</b>/<b>−</b> zoom, drag to pan, <b>F</b> fit · "
            "<b>U</b> unusable · <b>Ctrl+Z</b> undo · <b>F1</b> all keys")
    MOUSE = (("drag a line", "move it (the cursor changes over a line)"),
             ("drag elsewhere", "pan the view"), ("wheel", "zoom at the cursor"))
    HELP_NOTES = ("Head top = the top of the skull with the hair lying on it — not an ahoge, ears or accessories "
                  "sticking up. Chin = the lowest point of the chin (head bottom). The tha1 crop on the right is "
                  "what the dataset will contain: the head between rows 64 and 192. "
                  "Every accepted model is saved at once; closing or killing the tool loses at most the model on "
                  "screen.")

    def build_central(self) -> QtWidgets.QWidget:
        self.values: dict[str, float] | None = None
        self.origin: str | None = None
        self.stored: dict = {}
        self.front_spec = self.side_spec = self.body = None
        self.shown: set[str] = set()
        self._preview_seq: dict[ViewSpec, int] = {}
        self._preview_shown = -1
        self._seq = 0

        self.view = HeadView()
        self.view.line_dragged.connect(self._on_drag)
        self.view.drag_finished.connect(self._maybe_reframe)
        self.view.line_selected.connect(lambda key: self._update_panel())
        self.preview = PreviewWidget(1.25)
        self.preview_title = QtWidgets.QLabel(
            "<b>tha1 crop — what the dataset sees</b><br><span style='color:#555'>256×256 shown 1.25×; "
            "head top → row 64, chin → row 192; front view: character's left = image right</span>")
        self.preview_title.setWordWrap(True)
        self.panel = QtWidgets.QLabel()
        self.panel.setTextFormat(QtCore.Qt.RichText)
        self.panel.setWordWrap(True)
        self.panel.setAlignment(QtCore.Qt.AlignTop | QtCore.Qt.AlignLeft)
        self.panel.setStyleSheet("QLabel { font-size: 13px; }")
        right = QtWidgets.QWidget()
        rl = QtWidgets.QVBoxLayout(right)
        rl.setContentsMargins(6, 0, 0, 0)
        rl.addWidget(self.preview_title)
        rl.addWidget(self.preview)
        buttons = QtWidgets.QHBoxLayout()
        for text, tip, fn in (("Suggestion (S)", "put both lines at the suggestion", self.use_suggestion),
                              ("Reset (R)", "back to the stored values", self.reset),
                              ("Fit (F)", "show the front and side views whole", lambda: self.view.fit())):
            b = QtWidgets.QPushButton(text)
            b.setToolTip(tip)
            b.setFocusPolicy(QtCore.Qt.NoFocus)
            b.clicked.connect(fn)
            buttons.addWidget(b)
        rl.addLayout(buttons)
        rl.addWidget(self.panel, 1)
        scroll = QtWidgets.QScrollArea()  # only scrolls on small screens
        scroll.setWidget(right)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QtWidgets.QFrame.NoFrame)
        scroll.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarAlwaysOff)
        scroll.setFocusPolicy(QtCore.Qt.NoFocus)
        scroll.setFixedWidth(self.preview.width() + 30)
        w = QtWidgets.QWidget()
        lay = QtWidgets.QHBoxLayout(w)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.view, 1)
        lay.addWidget(scroll)
        w.setFocusProxy(self.view)
        return w

    def tool_actions(self) -> list[Action]:
        return [
            Action(["T"], "select the head-top line", lambda: self.select(TOP), "lines"),
            Action(["B"], "select the chin line (head bottom)", lambda: self.select(BOTTOM), "lines"),
            Action(["Tab"], "switch between the two lines", self.toggle_selected, "lines"),
            Action(["Up"], "move the selected line up (half a tha1 pixel)", lambda: self.nudge(+FINE), "lines"),
            Action(["Down"], "move the selected line down", lambda: self.nudge(-FINE), "lines"),
            Action(["Shift+Up"], "move it up 8× as far", lambda: self.nudge(+COARSE), "lines"),
            Action(["Shift+Down"], "move it down 8× as far", lambda: self.nudge(-COARSE), "lines"),
            Action(["S"], "put both lines at the suggestion", self.use_suggestion, "lines"),
            Action(["R"], "reset to the stored values (drop edits)", self.reset, "lines"),
            Action(["+", "="], "zoom in", lambda: self.view.zoom(1.25), "view"),
            Action(["-"], "zoom out", lambda: self.view.zoom(0.8), "view"),
            Action(["F"], "fit the front and side views", self.view.fit, "view"),
        ]

    # -- model -----------------------------------------------------------------------------

    def show_model(self, row: Row, info: ModelInfo | None) -> None:
        self.stored = self.catalog.annotations(row.id)
        top, bottom = self.stored.get(TOP), self.stored.get(BOTTOM)
        if top is not None and bottom is not None and top.value is not None and bottom.value is not None \
                and top.value > bottom.value:
            self.values = {TOP: float(top.value), BOTTOM: float(bottom.value)}
            self.origin = "human" if top.origin == bottom.origin == "human" else "auto"
        else:
            self.values, self.origin = None, None
        self.shown = set()
        self._preview_shown = -1
        self.front_spec = self.side_spec = self.body = None
        self.view.clear_images()
        self.view.show_message("loading the model…")
        self.preview.set_image(None)
        self.view.select(TOP)
        if info is not None:
            self._with_info(info)
        self._update_panel()

    def on_info(self, info: ModelInfo) -> None:
        self._with_info(info)
        self._update_panel()

    def on_failed(self, message: str) -> None:
        self.view.show_message(message)
        self.message(f"{message} — press U to mark it unusable, or N to skip", warn=True)

    def _initial_values(self, info: ModelInfo) -> tuple[dict[str, float], str]:
        if self.values is not None:
            return self.values, self.origin
        if info.head is not None:
            return {TOP: float(info.head.top), BOTTOM: float(info.head.bottom)}, "suggestion"
        (_, y0, _), (_, y1, _) = info.bounds_min, info.bounds_max
        height = (y1 - y0) if y1 > y0 else 1.0
        return {TOP: y1, BOTTOM: y1 - 0.15 * height}, "guess"

    def _with_info(self, info: ModelInfo) -> None:
        self.values, self.origin = self._initial_values(info)
        if self.origin == "guess":
            self.message(f"No suggestion ({info.head_error or 'no head found'}): drag the lines to the head.",
                         warn=True)
        self.view.set_suggestion({TOP: info.head.top, BOTTOM: info.head.bottom} if info.head else None)
        self.view.set_values(self.values[TOP], self.values[BOTTOM])
        self.body = body_spec(info)
        self.view.show_body(self.origin == "guess")
        self._frame(fit=True)
        self._request_preview(initial=True)

    def prefetch_specs(self, row: Row, info: ModelInfo) -> list[ViewSpec]:
        stored = self.catalog.annotations(row.id)
        top, bottom = stored.get(TOP), stored.get(BOTTOM)
        if top is not None and bottom is not None and top.value is not None and bottom.value is not None \
                and top.value > bottom.value:
            t, b = float(top.value), float(bottom.value)
        elif info.head is not None:
            t, b = float(info.head.top), float(info.head.bottom)
        else:
            return []
        front, side = detail_specs(t, b, info.center_x)
        specs = [front, side, tha1_spec(t, b, info.center_x)]
        body = body_spec(info)
        if body is not None:
            specs.append(body)
        return specs

    def _frame(self, fit: bool) -> None:
        """(Re)make the front/side regions around the current values and request them."""
        info = self.info
        self.front_spec, self.side_spec = detail_specs(self.values[TOP], self.values[BOTTOM], info.center_x)
        self.view.set_layout(self.front_spec, self.body)
        if fit:  # a new model: nothing of it is on screen yet
            self.view.fit()
            self.shown.discard("front")
            self.shown.discard("side")
        specs = [s for s in (self.front_spec, self.side_spec, self.body) if s is not None]
        missing = []
        for spec in specs:
            image = self.worker.cached_image(self.current.id, spec)
            if image is not None:
                self.on_image(spec, image)
            else:
                missing.append(spec)
        self.worker.request(self.current.id, self.catalog.library / self.current.path, missing, "now")

    def _maybe_reframe(self) -> None:
        if self.values is None or self.front_spec is None:
            return
        f = self.front_spec
        upper, lower = f.top_y, f.top_y - f.height / f.scale
        h = self.values[TOP] - self.values[BOTTOM]
        old_h = (upper - lower) / 2.0  # the region is 2 head heights tall
        if self.values[TOP] > upper - 0.05 * h or self.values[BOTTOM] < lower + 0.05 * h or not 0.6 < h / old_h < 1.6:
            self._frame(fit=False)

    # -- images ------------------------------------------------------------------------------

    def on_image(self, spec: ViewSpec, image: QtGui.QImage) -> None:
        if spec.kind == "tha1":
            seq = self._preview_seq.get(spec, -1)
            if spec == self._current_preview_spec() or seq > self._preview_shown:
                self._preview_shown = max(seq, self._preview_shown)
                self.preview.set_image(image)
                if spec == self._current_preview_spec():
                    self.shown.add("tha1")
        elif spec in (self.front_spec, self.side_spec, self.body):
            self.view.set_image(spec, image)
            self.shown.add(spec.kind)
        if {"front", "side", "tha1"} <= self.shown:
            self.emit_ready()

    def _current_preview_spec(self) -> ViewSpec | None:
        if self.values is None or self.info is None:
            return None
        try:
            return tha1_spec(self.values[TOP], self.values[BOTTOM], self.info.center_x)
        except ValueError:
            return None

    def _request_preview(self, initial: bool = False) -> None:
        spec = self._current_preview_spec()
        if spec is None or self.current is None:
            return
        self._seq += 1
        self._preview_seq[spec] = self._seq
        if len(self._preview_seq) > 500:
            self._preview_seq = {spec: self._seq}
        image = self.worker.cached_image(self.current.id, spec)
        if image is not None:
            self.on_image(spec, image)
            return
        path = self.catalog.library / self.current.path
        if initial:
            self.worker.request(self.current.id, path, [spec], "now", replace=False)
        else:
            self.worker.request_latest(self.current.id, path, spec)

    # -- editing ---------------------------------------------------------------------------------

    def select(self, key: str) -> None:
        """Select the line the arrow keys move."""
        self.view.select(key)
        self._update_panel()

    def toggle_selected(self) -> None:
        """Tab: select the other line."""
        self.select(BOTTOM if self.view.selected == TOP else TOP)

    def set_value(self, key: str, value: float) -> None:
        """Move line ``key`` to ``value`` (MMD Y), keeping the top above the chin."""
        if self.values is None:
            return
        h = self.values[TOP] - self.values[BOTTOM]
        gap = max(0.05 * h, 1e-4)
        if key == TOP:
            value = max(value, self.values[BOTTOM] + gap)
        else:
            value = min(value, self.values[TOP] - gap)
        if value == self.values[key]:
            return
        self.values[key] = float(value)
        self.view.set_values(self.values[TOP], self.values[BOTTOM])
        self.set_dirty(True)
        self._request_preview()
        self._update_panel()

    def nudge(self, fraction: float) -> None:
        """Move the selected line by ``fraction`` of the head height (up if > 0)."""
        if self.values is None:
            return
        h = self.values[TOP] - self.values[BOTTOM]
        key = self.view.selected
        self.set_value(key, self.values[key] + fraction * h)
        self._maybe_reframe()

    def _on_drag(self, key: str, value: float) -> None:
        self.set_value(key, value)

    def use_suggestion(self) -> None:
        """S: both lines at the suggestion."""
        if self.info is None or self.info.head is None:
            self.message("This model has no suggestion.", warn=True)
            return
        self.values = {TOP: float(self.info.head.top), BOTTOM: float(self.info.head.bottom)}
        self.view.set_values(self.values[TOP], self.values[BOTTOM])
        self.set_dirty(self.origin != "suggestion")
        self._request_preview()
        self._maybe_reframe()
        self._update_panel()

    def reset(self) -> None:
        """R: back to the stored values (or the suggestion when none are stored)."""
        if self.current is not None:
            self.go_to(self.position() if self.position() is not None else 0)

    def current_values(self) -> dict | None:
        if self.values is None:
            self.message("Still loading this model: wait for the picture before accepting.", warn=True)
            return None
        if "front" not in self.shown:
            self.message("Still rendering: wait for the picture before accepting.", warn=True)
            return None
        return {TOP: self.values[TOP], BOTTOM: self.values[BOTTOM]}

    # -- panel -----------------------------------------------------------------------------------------

    def _update_panel(self) -> None:
        if self.values is None:
            self.panel.setText("<i>loading…</i>")
            return
        v = self.values
        sel = self.view.selected
        rows = []
        for key, keyname in ((TOP, "T"), (BOTTOM, "B")):
            arrow = "▶" if key == sel else "&nbsp;"
            rows.append(f"<tr><td>{arrow}</td><td style='color:{COLORS[key].name()}'><b>{LABELS[key]}</b></td>"
                        f"<td align='right'><b>{v[key]:.3f}</b></td><td style='color:#777'>&nbsp;key {keyname}</td></tr>")
        rows.append(f"<tr><td></td><td>height</td><td align='right'>{v[TOP] - v[BOTTOM]:.3f}</td><td></td></tr>")
        origin = {"human": "stored, reviewed by a person", "auto": "stored suggestion (not reviewed)",
                  "suggestion": "suggestion (nothing stored yet)", "guess": "a guess (no suggestion: drag the lines)"}
        src = origin.get(self.origin or "", "")
        if self.dirty:
            src += " — <span style='color:#c62828'><b>edited, Enter saves</b></span>"
        parts = [f"<table cellspacing='2'>{''.join(rows)}</table>", f"<p>Values: {src}</p>"]
        info = self.info
        if info is not None and info.head is not None:
            conf = info.head.confidence
            color = "#2e7d32" if conf >= 0.8 else ("#d08000" if conf >= 0.6 else "#c62828")
            notes = "".join(f"<li>{html.escape(n)}</li>" for n in info.head.notes)
            parts.append(f"<p>Suggestion: top {info.head.top:.3f}, chin {info.head.bottom:.3f}, "
                         f"confidence <b style='color:{color}'>{conf:.0%}</b></p>"
                         f"<ul style='margin-left:-20px; color:#555'>{notes}</ul>")
        elif info is not None:
            parts.append(f"<p style='color:#c62828'>No suggestion: {html.escape(info.head_error or '')}</p>")
        self.panel.setText("".join(parts))
