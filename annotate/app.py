"""Window parts shared by the annotation tools (``mmdsynth annotate heads|eyes|dups``).

:class:`ToolWindow` is the frame every tool is built in:

* a list (left; virtualised, with filters) and a progress line (status bar:
  done / total, decisions per minute this session), messages in the status
  bar (red for warnings);
* a toolbar with buttons for every action (the mouse works too) and the
  list filter;
* the keys of every action, in a help overlay (F1 or ?) built from the same
  :class:`Action` table the shortcuts are made from, and a one-line key hint
  under the tool's widget;
* a :class:`~mmdsynth.annotate.render_worker.RenderWorker` (renders off the UI
  thread).

:class:`AnnotatorWindow` fills it for the per-model tools (heads, eyes):

* the list holds models (filters: needs review / reviewed / unusable / all);
* Enter accepts the values on screen (``human``, committed at once in one
  transaction, see :mod:`mmdsynth.annotate.session`) and goes to the next
  model; U marks the model unusable with the toolbar's reason (also in the
  toolbar); Ctrl+Z undoes the last decision of the session; N / P move
  without saving;
* the next model is prefetched while the person works.

A per-model tool builds the central widget and implements :meth:`show_model`,
:meth:`current_values`, :meth:`on_info`, :meth:`on_image`,
:meth:`prefetch_specs` and :meth:`tool_actions`. The duplicate review
(:mod:`mmdsynth.annotate.dups`) builds on :class:`ToolWindow` with a list of
duplicate groups instead.

Conventions on screen: "left" is always the CHARACTER's left, which appears on
the IMAGE RIGHT in a front view; every place that shows a side says so.
"""

from __future__ import annotations

import html
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PyQt5 import QtCore, QtGui, QtWidgets

from mmdsynth.datasets.catalog import Catalog

from .model_list import FILTERS, ModelListModel, Row, load_rows, progress_of
from .render_worker import ModelInfo, RenderWorker, ViewSpec
from .session import TOOL_KEYS, AnnotationSession, UndoConflict

__all__ = ["Action", "AnnotatorWindow", "HelpOverlay", "ToolWindow", "UNUSABLE_REASONS", "checkerboard",
           "ensure_application", "platform_problem", "run_tool", "session_summary"]

#: Reasons offered by the toolbar for the unusable key (editable there).
UNUSABLE_REASONS = (
    "broken or missing geometry",
    "face hidden (mask, helmet, hair over the eyes)",
    "not a humanoid character",
    "missing or broken textures",
    "head too unusual to frame",
    "no usable eye morphs",
)


@dataclass
class Action:
    """One action of a tool: its keys (first = the one shown), what it does,
    the help group it is listed under, and whether it has a toolbar button.
    ``label`` replaces the keys in the help overlay (e.g. "1 … 9" for nine
    actions listed once); ``in_help=False`` leaves an action out of it;
    ``shortcut=False`` only lists it in the help (a key a widget handles
    itself, e.g. the arrows of the eyes tool's grid: no window shortcut is made)."""

    keys: Sequence[str]
    text: str
    callback: Callable[[], None]
    group: str = "model"
    button: str | None = None
    label: str | None = None
    in_help: bool = True
    shortcut: bool = True


def ensure_application() -> QtWidgets.QApplication:
    """The process's QApplication (made when there is none)."""
    app = QtWidgets.QApplication.instance()
    if app is None:
        app = QtWidgets.QApplication(sys.argv[:1] or ["mmdsynth"])
        app.setApplicationName("mmdsynth annotate")
    return app


def platform_problem() -> str | None:
    """Why Qt's X11 platform plugin would fail to start, or None.

    A PyQt5 wheel brings Qt but not every X11 library its ``xcb`` plugin
    needs; without them Qt aborts the process with a long message. Loading
    the plugin's library first turns that into one line naming what is
    missing. Only checked on Linux with ``DISPLAY`` set and the ``xcb``
    platform (the default there)."""
    import ctypes
    import os
    from pathlib import Path

    if not sys.platform.startswith("linux") or not os.environ.get("DISPLAY"):
        return None
    if os.environ.get("QT_QPA_PLATFORM", "xcb").split(":")[0] != "xcb":
        return None
    plugin = Path(QtCore.QLibraryInfo.location(QtCore.QLibraryInfo.PluginsPath)) / "platforms" / "libqxcb.so"
    if not plugin.is_file():
        return None
    try:
        ctypes.CDLL(str(plugin))
    except OSError as exc:
        return (f"Qt's X11 platform plugin cannot be loaded ({' '.join(str(exc).split())}); install the X11 "
                "libraries it needs, e.g. on Debian/Ubuntu: apt-get install libxcb-icccm4 libxcb-keysyms1 "
                "libxcb-xinerama0 libxcb-image0 libxcb-render-util0 libxkbcommon-x11-0")
    return None


def checkerboard(size: int = 16, light: str = "#d8d8d8", dark: str = "#b8b8b8") -> QtGui.QBrush:
    """A brush of grey checks, the background behind transparent renders."""
    pm = QtGui.QPixmap(2 * size, 2 * size)
    pm.fill(QtGui.QColor(light))
    p = QtGui.QPainter(pm)
    p.fillRect(0, 0, size, size, QtGui.QColor(dark))
    p.fillRect(size, size, size, size, QtGui.QColor(dark))
    p.end()
    return QtGui.QBrush(pm)


class HelpOverlay(QtWidgets.QWidget):
    """A dark panel over the whole window listing every key (and what the
    mouse does); any key or click closes it."""

    def __init__(self, parent: QtWidgets.QWidget, title: str, actions: Sequence[Action], notes: str = "",
                 mouse: Sequence[tuple[str, str]] = ()):
        super().__init__(parent)
        self.setAttribute(QtCore.Qt.WA_StyledBackground, True)
        self.setStyleSheet("HelpOverlay { background: rgba(18, 20, 26, 238); }")
        self.setFocusPolicy(QtCore.Qt.StrongFocus)
        groups: dict[str, list[tuple[str, str]]] = {}
        for a in actions:
            if not a.in_help:
                continue
            labels = [a.label] if a.label else list(dict.fromkeys(_key_label(k) for k in a.keys))
            groups.setdefault(a.group, []).append((" / ".join(labels), a.text))
        if "help" in groups:  # the tool's own groups first, then how to get this help, then the mouse
            groups["help"] = groups.pop("help")
        if mouse:
            groups["mouse"] = list(mouse)
        blocks = []
        for group, items in groups.items():
            rows = [f"<tr><td colspan='2' style='padding:10px 0 3px 0; color:#9fd3ff; font-size:15px'>"
                    f"<b>{html.escape(group)}</b></td></tr>"]
            rows += [f"<tr><td style='padding:2px 16px 2px 0; color:#ffd479; font-family:monospace; "
                     f"white-space:nowrap'>{html.escape(k)}</td><td style='padding:2px 0; color:#f0f0f0'>"
                     f"{html.escape(text)}</td></tr>" for k, text in items]
            blocks.append((len(rows), "".join(rows)))
        total = sum(n for n, _ in blocks)
        left, count = [], 0
        for n, rows in blocks:  # split the groups over two columns of about equal height
            if count < total / 2 or not left:
                left.append(rows)
                count += n
            else:
                break
        right = [rows for _, rows in blocks[len(left):]]
        body = (f"<table width='100%'><tr><td valign='top' width='50%' style='padding-right:40px'>"
                f"<table>{''.join(left)}</table></td><td valign='top'><table>{''.join(right)}</table></td></tr></table>")
        label = QtWidgets.QLabel(
            f"<h2 style='color:white'>{html.escape(title)} — keys</h2>{body}"
            f"<p style='color:#e0e0e0; margin-top:14px'>{notes}</p>"
            "<p style='color:#a0a0a0'>Press any key or click to close this help.</p>")
        label.setTextFormat(QtCore.Qt.RichText)
        label.setWordWrap(True)
        label.setAlignment(QtCore.Qt.AlignTop | QtCore.Qt.AlignLeft)
        label.setStyleSheet("QLabel { color: white; background: transparent; font-size: 13px; }")
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(60, 30, 60, 30)
        lay.addWidget(label)
        self.hide()

    def toggle(self) -> None:
        """Show (over the whole parent) or hide."""
        if self.isVisible():
            self.hide()
            return
        self.setGeometry(self.parentWidget().rect())
        self.raise_()
        self.show()
        self.setFocus()

    def keyPressEvent(self, event):  # noqa: N802 - Qt API
        self.hide()

    def mousePressEvent(self, event):  # noqa: N802 - Qt API
        self.hide()


#: keys typed with Shift on common layouts ("+" is Shift+= on a US keyboard, "?" Shift+/): their
#: shortcuts also match the key event with the Shift modifier, which Qt does not do by itself
_SHIFTED = frozenset('~!@#$%^&*()_+{}|:"<>?')


def _key_label(key: str) -> str:
    return {"Return": "Enter", "Ctrl+Z": "Ctrl+Z", "Up": "↑", "Down": "↓", "Shift+Up": "Shift+↑",
            "Shift+Down": "Shift+↓", "Left": "←", "Right": "→"}.get(key, key)


class ToolWindow(QtWidgets.QMainWindow):
    """The frame every annotation tool is built in (see the module docstring):
    the list dock (left) with a legend, a toolbar (action buttons, then the
    list filter), a header line, a red banner, the tool's own widget, a key
    hint, the status bar (messages and a permanent progress line), the F1 help
    overlay built from the action table, and a :class:`RenderWorker`.

    It does not know what the list holds: :class:`AnnotatorWindow` lists
    models, :class:`~mmdsynth.annotate.dups.DupsWindow` duplicate groups. A
    subclass's ``__init__`` calls ``super().__init__(...)`` (which checks the
    filter and starts the worker), prepares its state, then
    :meth:`build_frame` with its list model (a
    :class:`~mmdsynth.annotate.model_list.FilteredListModel` whose
    ``position_of`` takes a model id) and :meth:`show_first`. It implements
    :meth:`build_central`, :meth:`tool_actions`, :meth:`current_key`,
    :meth:`go_to`, :meth:`show_empty`, :meth:`list_clicked`,
    :meth:`update_progress`, :meth:`_update_header` and the worker slots
    :meth:`_on_info`, :meth:`_on_image`, :meth:`_on_failed`.

    Args:
        catalog: the open library catalog (used from the UI thread; the
            caller closes it after the window is closed).
        filter_name: the list filter to start with (one of :attr:`FILTERS`).
        prefetch: prepare what comes next in the background (the benchmark
            turns it off to measure cold starts).

    Signal: ``decided(id, action)`` after a decision is committed (the id and
    the actions are the subclass's).
    """

    TOOL = "heads"
    HINT = ""
    HELP_NOTES = ""
    MOUSE: Sequence[tuple[str, str]] = ()
    WANT_MORPHS = False
    MAX_MODELS = 3  # models the render worker keeps loaded
    LIST_TITLE = "Models"
    LIST_ITEM = "model"  # what a list row is, for the help overlay
    COLUMN3_FITS = ""  # a text the list's third column is made wide enough for (default: 90 pixels)
    LEGEND = ("<span style='color:#2e7d32'>✓</span>&nbsp;reviewed &nbsp; <span style='color:#d08000'>●</span>"
              "&nbsp;suggested<br><span style='color:#808080'>○</span>&nbsp;not&nbsp;annotated &nbsp; "
              "<span style='color:#c62828'>✗</span>&nbsp;unusable<br><span style='color:#808080'>in “all” also: "
              "=&nbsp;duplicate &nbsp; <span style='color:#c62828'>!</span>&nbsp;load&nbsp;error &nbsp; "
              "\u2060–\u2060&nbsp;not&nbsp;a&nbsp;character</span>")  # word joiners: no line break at the dash
    FILTERS: Sequence[str] = FILTERS
    FILTER_TIP = "which models the list shows: needs review = suggested or missing values"

    decided = QtCore.pyqtSignal(str, str)

    def __init__(self, catalog: Catalog, filter_name: str, prefetch: bool = True, parent=None):
        if filter_name not in self.FILTERS:
            raise ValueError(f"unknown filter {filter_name!r} (known: {', '.join(self.FILTERS)})")
        super().__init__(parent)
        self.catalog = catalog
        self.prefetch_enabled = prefetch
        self.current = None
        self.setWindowTitle(f"mmdsynth annotate {self.TOOL} — {catalog.library}")
        self.resize(1500, 900)
        self.worker = RenderWorker(morphs=self.WANT_MORPHS, max_models=self.MAX_MODELS)
        self.worker.info_ready.connect(self._on_info)
        self.worker.image_ready.connect(self._on_image)
        self.worker.failed.connect(self._on_failed)
        self.worker.start()

    def build_frame(self, list_model: QtCore.QAbstractItemModel) -> None:
        """Build the window around ``list_model`` (a table model with a
        ``filter_name`` attribute; columns: state glyph, title, a short third
        column) and start the progress line. Called once, by the subclass."""
        self.list_model = list_model
        self._build_frame()
        self.actions_table = self.frame_actions() + self.tool_actions()
        self._install_actions(self.actions_table)
        self._add_filter_choice()
        self.add_toolbar_choices()
        mouse = list(self.MOUSE) + [(f"click a {self.LIST_ITEM}", "in the list on the left: show it"),
                                    ("toolbar buttons", "the same actions as the keys")]
        self.help = HelpOverlay(self, f"mmdsynth annotate {self.TOOL}", self.actions_table, self.HELP_NOTES, mouse)
        self._rate_timer = QtCore.QTimer(self)
        self._rate_timer.timeout.connect(self.update_progress)
        self._rate_timer.start(5000)
        self.update_progress()

    # -- frame ----------------------------------------------------------------

    def _build_frame(self) -> None:
        tb = QtWidgets.QToolBar("actions", self)
        tb.setMovable(False)
        tb.setToolButtonStyle(QtCore.Qt.ToolButtonTextOnly)
        self.addToolBar(QtCore.Qt.TopToolBarArea, tb)
        self.toolbar = tb
        self.list_view = QtWidgets.QTreeView()
        self.list_view.setModel(self.list_model)
        self.list_view.setRootIsDecorated(False)
        self.list_view.setUniformRowHeights(True)
        self.list_view.setAlternatingRowColors(True)
        self.list_view.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectRows)
        self.list_view.setSelectionMode(QtWidgets.QAbstractItemView.SingleSelection)
        self.list_view.setFocusPolicy(QtCore.Qt.NoFocus)  # keys always go to the tool
        header = self.list_view.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QtWidgets.QHeaderView.Fixed)
        header.setSectionResizeMode(1, QtWidgets.QHeaderView.Stretch)
        header.resizeSection(0, 26)
        fits = self.list_view.fontMetrics().horizontalAdvance(self.COLUMN3_FITS) + 14 if self.COLUMN3_FITS else 0
        header.resizeSection(2, max(90, fits))
        self.list_view.clicked.connect(lambda index: self.list_clicked(index.row()))
        legend = QtWidgets.QLabel(self.LEGEND)
        legend.setStyleSheet("QLabel { padding: 3px; }")
        legend.setWordWrap(True)
        side = QtWidgets.QWidget()
        sl = QtWidgets.QVBoxLayout(side)
        sl.setContentsMargins(0, 0, 0, 0)
        sl.setSpacing(2)
        sl.addWidget(self.list_view, 1)
        sl.addWidget(legend)
        dock = QtWidgets.QDockWidget(self.LIST_TITLE, self)
        dock.setFeatures(QtWidgets.QDockWidget.NoDockWidgetFeatures)
        dock.setWidget(side)
        dock.setMinimumWidth(200)
        self.addDockWidget(QtCore.Qt.LeftDockWidgetArea, dock)
        self.dock = dock
        self._sized = False

        self.header_label = QtWidgets.QLabel()
        self.header_label.setTextFormat(QtCore.Qt.RichText)
        self.header_label.setWordWrap(True)
        self.header_label.setMinimumWidth(200)
        self.header_label.setStyleSheet("QLabel { padding: 4px 6px; font-size: 14px; }")
        self.banner = QtWidgets.QLabel()
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet("QLabel { background: #c62828; color: white; padding: 4px 8px; font-weight: bold; }")
        self.banner.hide()
        self.hint_label = QtWidgets.QLabel(self.HINT)
        self.hint_label.setTextFormat(QtCore.Qt.RichText)
        self.hint_label.setWordWrap(True)
        self.hint_label.setStyleSheet("QLabel { background: #263238; color: #eceff1; padding: 5px 8px; }")
        central = QtWidgets.QWidget()
        cl = QtWidgets.QVBoxLayout(central)
        cl.setContentsMargins(4, 2, 4, 2)
        cl.setSpacing(3)
        cl.addWidget(self.header_label)
        cl.addWidget(self.banner)
        self.tool_widget = self.build_central()
        cl.addWidget(self.tool_widget, 1)
        self.empty_label = QtWidgets.QLabel()
        self.empty_label.setTextFormat(QtCore.Qt.RichText)
        self.empty_label.setWordWrap(True)
        self.empty_label.setAlignment(QtCore.Qt.AlignCenter)
        self.empty_label.setStyleSheet("QLabel { color: #37474f; font-size: 15px; padding: 30px; }")
        self.empty_label.hide()
        cl.addWidget(self.empty_label, 1)
        cl.addWidget(self.hint_label)
        self.setCentralWidget(central)

        self.progress_label = QtWidgets.QLabel()
        self.statusBar().addPermanentWidget(self.progress_label)

    def set_empty(self, text: str | None) -> None:
        """Show ``text`` (rich text) in the tool's place, the list being empty;
        None shows the tool again. The header and the key hint keep their size."""
        self.tool_widget.setVisible(text is None)
        self.empty_label.setVisible(text is not None)
        self.empty_label.setText(text or "")

    def _add_filter_choice(self) -> None:
        """The list filter, after the action buttons."""
        self.toolbar.addSeparator()
        self.toolbar.addWidget(QtWidgets.QLabel(" Show: "))
        self.filter_combo = QtWidgets.QComboBox()
        self.filter_combo.addItems(self.FILTERS)
        self.filter_combo.setCurrentText(self.list_model.filter_name)
        self.filter_combo.setFocusPolicy(QtCore.Qt.ClickFocus)
        self.filter_combo.currentTextChanged.connect(self.set_filter)
        self.filter_combo.setToolTip(self.FILTER_TIP)
        self.toolbar.addWidget(self.filter_combo)

    def _show_filter(self, name: str) -> None:
        """Put the filter box on ``name`` without triggering :meth:`set_filter`."""
        if self.filter_combo.currentText() != name:
            self.filter_combo.blockSignals(True)
            self.filter_combo.setCurrentText(name)
            self.filter_combo.blockSignals(False)

    def help_action(self) -> Action:
        """F1 / ?: the help overlay (every tool's last common action)."""
        return Action(["F1", "?"], "show or hide this help", self.toggle_help, "help", "Keys (F1)")

    def frame_actions(self) -> list[Action]:
        """The actions listed before the tool's own (default: the help key)."""
        return [self.help_action()]

    def _install_actions(self, actions: Sequence[Action]) -> None:
        self.qactions: dict[str, QtWidgets.QAction] = {}
        buttons = []
        for a in actions:
            if not a.shortcut:
                continue
            qa = QtWidgets.QAction(a.button or a.text, self)
            seqs = []
            for k in a.keys:
                seqs.append(QtGui.QKeySequence(k))
                if len(k) == 1 and k in _SHIFTED:  # typed with Shift on most layouts: match that too
                    seqs.append(QtGui.QKeySequence(f"Shift+{k}"))
            qa.setShortcuts(seqs)
            qa.setShortcutContext(QtCore.Qt.WindowShortcut)
            qa.setToolTip(f"{a.text} [{' / '.join(_key_label(k) for k in a.keys)}]")
            qa.triggered.connect(self._guarded(a.callback, a.callback == self.toggle_help))
            self.addAction(qa)
            self.qactions[a.keys[0]] = qa
            if a.button:
                buttons.append(qa)
        for qa in buttons:
            self.toolbar.addAction(qa)

    def _guarded(self, fn: Callable[[], None], is_help: bool) -> Callable:
        def run(*_):
            if not is_help and self.help.isVisible():  # a key while the help is shown only closes it
                self.help.hide()
                return
            fn()
        return run

    # -- navigation ----------------------------------------------------------------

    def show_first(self, start_model: str | None) -> str | None:
        """Show the row of ``start_model`` (a model id or unique prefix; when it
        is not in the list's filter, in "all"), else the first row. Returns the
        model's full id (None without one)."""
        start, mid = 0, None
        if start_model:
            mid = self.catalog.resolve_id(start_model)
            pos = self.list_model.position_of(mid)
            if pos is None and self.list_model.filter_name != "all":  # not in this filter: show everything
                self.filter_combo.setCurrentText("all")
                pos = self.list_model.position_of(mid)
            if pos is None:
                self.message(f"Model {mid[:12]} is in no {self.LIST_ITEM} of the list.", warn=True)
            start = pos or 0
        if self.list_model.rowCount():
            self.go_to(start)
        else:
            self.show_empty()
        return mid

    def position(self) -> int | None:
        """The current row's position in the list (None: not in it)."""
        return self.list_model.position_of(self.current_key()) if self.current is not None else None

    def set_filter(self, name: str) -> None:
        """Show the rows of list ``name`` (keeps the current row when it is in it;
        the filter box calls it)."""
        keep = self.current_key() if self.current is not None else None
        self.list_model.set_filter(name)
        self._show_filter(name)
        pos = self.list_model.position_of(keep) if keep else None
        if pos is not None:
            self._select(pos)
            self._update_header()
        elif self.list_model.rowCount():
            self.go_to(0)
        else:
            self.show_empty()
        self._focus_main()

    def next_item(self) -> None:
        """Go to the next row of the list."""
        pos = self.position()
        if pos is None:
            self.go_to(0)
        elif pos + 1 < self.list_model.rowCount():
            self.go_to(pos + 1)
        else:
            self.message(f"This is the last {self.LIST_ITEM} of the list.")

    def previous_item(self) -> None:
        """Go to the previous row of the list."""
        pos = self.position()
        if pos is not None and pos > 0:
            self.go_to(pos - 1)
        else:
            self.message(f"This is the first {self.LIST_ITEM} of the list.")

    def _select(self, k: int) -> None:
        """Highlight list row ``k`` and scroll to it."""
        index = self.list_model.index(k, 0)
        self.list_view.selectionModel().setCurrentIndex(
            index, QtCore.QItemSelectionModel.ClearAndSelect | QtCore.QItemSelectionModel.Rows)
        self.list_view.scrollTo(index)

    def _focus_main(self) -> None:
        self.tool_widget.setFocus()

    def showEvent(self, event):  # noqa: N802 - Qt API
        super().showEvent(event)
        if not self._sized:  # the list gets what it needs, the tool the rest
            self._sized = True
            self.resizeDocks([self.dock], [max(220, min(300, self.width() // 5))], QtCore.Qt.Horizontal)

    def resizeEvent(self, event):  # noqa: N802 - Qt API
        super().resizeEvent(event)
        if self.help.isVisible():
            self.help.setGeometry(self.rect())

    def closeEvent(self, event):  # noqa: N802 - Qt API
        self.worker.stop()
        super().closeEvent(event)

    # -- status ----------------------------------------------------------------------

    def message(self, text: str, warn: bool = False) -> None:
        """Show ``text`` in the status bar (red when ``warn``)."""
        bar = self.statusBar()
        bar.setStyleSheet("QStatusBar { color: #c62828; font-weight: bold; }" if warn else "")
        bar.showMessage(text, 15000)

    def toggle_help(self) -> None:
        """F1 / ?: show or hide the key overlay."""
        self.help.toggle()
        if not self.help.isVisible():
            self._focus_main()

    # -- hooks for the tools -----------------------------------------------------

    def build_central(self) -> QtWidgets.QWidget:
        """The tool's main widget (called once, while the frame is built)."""
        raise NotImplementedError

    def tool_actions(self) -> list[Action]:
        """The tool's own actions (added after :meth:`frame_actions`)."""
        return []

    def add_toolbar_choices(self) -> None:
        """Add widgets to the toolbar after the filter (default: none)."""

    def current_key(self) -> str:
        """A model id of the current row (the list model's key)."""
        raise NotImplementedError

    def go_to(self, k: int) -> None:
        """Show the row at list position ``k``."""
        raise NotImplementedError

    def show_empty(self) -> None:
        """Nothing to show (the filtered list is empty)."""
        raise NotImplementedError

    def _update_header(self) -> None:
        """Refresh the header line of the current row."""

    def list_clicked(self, k: int) -> None:
        """Row ``k`` of the list was clicked."""
        raise NotImplementedError

    def update_progress(self) -> None:
        """Refresh the progress line (status bar; also every 5 seconds)."""
        raise NotImplementedError

    def _on_info(self, model_id: str, info: ModelInfo) -> None:
        """The worker loaded a model."""

    def _on_image(self, model_id: str, spec: ViewSpec, image: QtGui.QImage) -> None:
        """The worker rendered a view."""

    def _on_failed(self, model_id: str, message: str) -> None:
        """The worker could not load or render a model."""


class AnnotatorWindow(ToolWindow):
    """The frame of a per-model annotation tool (heads, eyes; see the module docstring).

    Args:
        catalog: the open library catalog (used from the UI thread; the
            caller closes it after the window is closed).
        filter_name: the list filter to start with (one of ``FILTERS``).
        start_model: a model id (or unique prefix) to show first; default:
            the first row of the filtered list.
        prefetch: render the next model in the background (the benchmark
            turns it off to measure cold starts).

    Signals: ``model_ready(model_id)`` when the current model's main views
    are on screen (the subclass says when); ``decided(model_id, action)``
    after a decision is committed (``"accept"``, ``"unusable"``, ``"undo"``).
    """

    model_ready = QtCore.pyqtSignal(str)

    def __init__(self, catalog: Catalog, filter_name: str = "needs review", start_model: str | None = None,
                 prefetch: bool = True, parent=None):
        super().__init__(catalog, filter_name, prefetch, parent)
        self.keys = TOOL_KEYS[self.TOOL]
        self.session = AnnotationSession(catalog, self.keys)
        self.current: Row | None = None
        self.info: ModelInfo | None = None
        self.dirty = False
        self.shown_at = 0.0
        self._ready_sent = False
        self.build_frame(ModelListModel(load_rows(catalog, self.keys), filter_name, self))
        self.show_first(start_model)

    # -- frame ----------------------------------------------------------------

    def add_toolbar_choices(self) -> None:
        """The reason used by the unusable key."""
        self.toolbar.addSeparator()
        self.toolbar.addWidget(QtWidgets.QLabel(" Reason for U: "))
        self.reason_combo = QtWidgets.QComboBox()
        self.reason_combo.setEditable(True)
        self.reason_combo.addItems(UNUSABLE_REASONS)
        self.reason_combo.setMinimumContentsLength(18)
        self.reason_combo.setSizeAdjustPolicy(QtWidgets.QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.reason_combo.setFocusPolicy(QtCore.Qt.ClickFocus)
        self.reason_combo.setToolTip("the reason stored when you press U; pick one or type your own")
        self.reason_combo.lineEdit().returnPressed.connect(self._focus_main)
        self.reason_combo.lineEdit().installEventFilter(self)
        self.reason_combo.activated.connect(lambda *_: self._focus_main())
        self.toolbar.addWidget(self.reason_combo)

    def frame_actions(self) -> list[Action]:
        return [
            Action(["Return", "Enter"], "accept the values on screen (saved at once) and go to the next model",
                   self.accept_current, "decide", "Accept ⏎"),
            Action(["U"], "mark this model unusable with the toolbar's reason, and go to the next",
                   self.mark_unusable, "decide", "Unusable (U)"),
            Action(["Ctrl+Z"], "undo the last decision of this session (again for earlier ones)",
                   self.undo, "decide", "Undo (Ctrl+Z)"),
            Action(["N"], "next model (edits not accepted are dropped)", self.next_model, "move", "Next (N)"),
            Action(["P"], "previous model", self.previous_model, "move", "Prev (P)"),
            self.help_action(),
        ]

    def list_clicked(self, k: int) -> None:
        if self.current is not None and self.position() == k:
            return  # the model on screen: keep its edits
        self._leave_message()
        self.go_to(k)

    def eventFilter(self, obj, event):  # noqa: N802 - Qt API
        """While the reason is being typed, Enter / Escape end the typing (they
        are not the window's accept key then; letters were never shortcuts there)."""
        if event.type() == QtCore.QEvent.ShortcutOverride and event.key() in (
                QtCore.Qt.Key_Return, QtCore.Qt.Key_Enter, QtCore.Qt.Key_Escape):
            event.accept()
            if event.key() == QtCore.Qt.Key_Escape:
                self._focus_main()
            return True
        return super().eventFilter(obj, event)

    # -- hooks for the tools (besides build_central and tool_actions) ------------

    def show_model(self, row: Row, info: ModelInfo | None) -> None:
        """Show ``row`` with its stored values (``info`` when already made)."""
        raise NotImplementedError

    def current_values(self) -> dict | None:
        """The values to store on accept, or None when not ready (the tool
        shows why in the status bar)."""
        raise NotImplementedError

    def on_info(self, info: ModelInfo) -> None:
        """The current model's info arrived."""

    def on_image(self, spec: ViewSpec, image: QtGui.QImage) -> None:
        """An image of the current model arrived."""

    def on_failed(self, message: str) -> None:
        """The current model could not be loaded or rendered."""

    def prefetch_specs(self, row: Row, info: ModelInfo) -> list[ViewSpec]:
        """The renders to make in advance for a model that comes next."""
        return []

    def show_empty(self) -> None:
        """Nothing to show (the filtered list is empty): says what the other lists hold."""
        self.current = None
        name = self.list_model.filter_name
        self.header_label.setText(f"<i>No models in “{html.escape(name)}”.</i>")
        self.banner.hide()
        p = progress_of(self.list_model.rows)
        counts = {"needs review": p.to_review, "reviewed": p.reviewed, "unusable": p.unusable,
                  "all": len(self.list_model.rows)}
        if not self.list_model.rows:
            text = ("This library has no models yet: add some with <b>mmdsynth add LIB FOLDER</b> "
                    "(or <b>mmdsynth scan</b>).")
        else:
            others = [f"“{k}”: {n:,}" for k, n in counts.items() if k != name and n]
            done = " Every model is done. " if name == "needs review" and p.total else " "
            text = (f"No models in “{html.escape(name)}”.{done}Choose another list in the toolbar "
                    f"(<b>Show:</b>) — {html.escape(', '.join(others))}." if others else
                    f"No models in “{html.escape(name)}”.")
        self.set_empty(text)

    # -- navigation ----------------------------------------------------------------

    def current_key(self) -> str:
        return self.current.id

    def go_to(self, k: int) -> None:
        """Show the model at list position ``k``."""
        if not 0 <= k < self.list_model.rowCount():
            return
        self._select(k)
        row = self.list_model.row_at(k)
        self.current = row
        self.set_empty(None)
        self.dirty = False
        self._ready_sent = False
        self.shown_at = time.perf_counter()
        self.info = self.worker.cached_info(row.id)
        self._update_header()
        error = self.worker.error_of(row.id)
        self.show_model(row, self.info)
        if error:
            self.on_failed(error)
        elif self.info is None:
            self.worker.request(row.id, self.catalog.library / row.path, (), "now")
        self._prefetch()

    def next_model(self) -> None:
        """Go to the next model of the list (unaccepted edits are dropped)."""
        self._leave_message()
        self.next_item()

    def previous_model(self) -> None:
        """Go to the previous model of the list."""
        self._leave_message()
        self.previous_item()

    def _leave_message(self) -> None:
        if self.dirty and self.current:
            self.message(f"Not saved: your edits to {self.current.title} (Enter accepts; N/P skip).", warn=True)

    def _prefetch(self) -> None:
        if not self.prefetch_enabled or self.current is None:
            return
        pos = self.position()
        if pos is None or pos + 1 >= self.list_model.rowCount():
            self.worker.clear_lane("prefetch")
            return
        nxt = self.list_model.row_at(pos + 1)
        info = self.worker.cached_info(nxt.id)
        specs = self.prefetch_specs(nxt, info) if info is not None else []
        self.worker.request(nxt.id, self.catalog.library / nxt.path, specs, "prefetch", replace=True)

    # -- decisions -------------------------------------------------------------------

    def accept_current(self) -> None:
        """Enter: store the values on screen as human annotations, go to the next model."""
        if self.current is None:
            return
        values = self.current_values()
        if values is None:
            return
        row = self.current
        try:
            change = self.session.accept(row.id, values)
        except Exception as exc:  # noqa: BLE001 - a locked or broken catalog: say so, keep the values on screen
            self.message(f"NOT SAVED: {exc}", warn=True)
            return
        self._after_change(row.id)
        self.message(f"Saved {row.title}: " + ", ".join(
            f"{k}={_fmt(v.value) if v else '—'}" for k, v in change.after.items()))
        self.decided.emit(row.id, "accept")
        self.dirty = False
        self._advance()

    def mark_unusable(self) -> None:
        """U: mark the current model unusable with the toolbar's reason; next model."""
        if self.current is None:
            return
        row = self.current
        reason = self.reason_combo.currentText().strip() or "marked unusable"
        try:
            self.session.mark_unusable(row.id, reason)
        except Exception as exc:  # noqa: BLE001
            self.message(f"NOT SAVED: {exc}", warn=True)
            return
        self._after_change(row.id)
        self.message(f"Marked {row.title} unusable: {reason}  (Ctrl+Z undoes)")
        self.decided.emit(row.id, "unusable")
        self.dirty = False
        self._advance()

    def undo(self) -> None:
        """Ctrl+Z: undo the last decision of this session and show that model again."""
        try:
            change = self.session.undo()
        except UndoConflict as exc:
            self.message(str(exc), warn=True)
            return
        if change is None:
            self.message("Nothing to undo in this session.")
            return
        self._after_change(change.model_id)
        pos = self.list_model.position_of(change.model_id)
        if pos is None:
            self.set_filter("all")
            pos = self.list_model.position_of(change.model_id)
        if pos is not None:
            self.go_to(pos)
        row = self.list_model.row_of(change.model_id)
        self.message(f"Undone: {change.action} of {row.title if row else change.model_id[:12]}")
        self.decided.emit(change.model_id, "undo")

    def _advance(self) -> None:
        pos = self.position()
        if pos is not None and pos + 1 < self.list_model.rowCount():
            self.go_to(pos + 1)
        else:
            self.message("Saved. That was the last model of this list.")
            if self.current is not None:
                self.go_to(pos if pos is not None else 0)

    def _after_change(self, model_id: str) -> None:
        (row,) = [r for r in load_rows_for(self.catalog, self.keys, model_id)]
        self.list_model.update_row(model_id, row.status, row.reason, row.state)
        if self.current is not None and self.current.id == model_id:
            self._update_header()
        self.update_progress()

    # -- status ----------------------------------------------------------------------

    def update_progress(self) -> None:
        """Refresh the progress line (status bar)."""
        p = progress_of(self.list_model.rows)
        self.progress_label.setText(
            f"<b>done {p.done:,} / {p.total:,}</b> ({p.reviewed:,} reviewed, {p.unusable:,} unusable; "
            f"{p.to_review:,} to review) · {session_summary(self.session, 'models')}")

    def _update_header(self) -> None:
        row = self.current
        if row is None:
            return
        pos = self.position()
        where = f"{pos + 1:,} of {self.list_model.rowCount():,} in “{self.list_model.filter_name}”" if pos is not None else ""
        state = {"human": "<span style='color:#2e7d32'>✓ reviewed</span>",
                 "auto": "<span style='color:#d08000'>● suggested values, not reviewed</span>",
                 "missing": "<span style='color:#808080'>○ not annotated</span>"}[row.state]
        edited = " · <span style='color:#c62828'>edited, not saved (Enter saves)</span>" if self.dirty else ""
        self.header_label.setText(
            f"<b>{html.escape(row.title)}</b> &nbsp; <span style='color:#666'>{html.escape(row.path)}</span>"
            f" &nbsp; {where} &nbsp; {state}{edited}")
        if row.status == "ok":
            self.banner.hide()
        else:
            extra = " — Enter (accept) makes it usable again with the values on screen" if row.status == "unusable" else ""
            self.banner.setText(f"{row.status.upper()}: {row.reason}{extra}")
            self.banner.show()

    def set_dirty(self, dirty: bool = True) -> None:
        """Mark the values on screen as edited (shown in the header)."""
        if dirty != self.dirty:
            self.dirty = dirty
            self._update_header()

    def emit_ready(self) -> None:
        """The tool calls this when the current model's main views are shown."""
        if not self._ready_sent and self.current is not None:
            self._ready_sent = True
            self.model_ready.emit(self.current.id)

    # -- worker signals ------------------------------------------------------------

    def _on_info(self, model_id: str, info: ModelInfo) -> None:
        if self.current is not None and model_id == self.current.id:
            self.info = info
            self.on_info(info)
        else:
            # a prefetched model: queue its renders too
            pos = self.position()
            if self.prefetch_enabled and pos is not None and pos + 1 < self.list_model.rowCount():
                nxt = self.list_model.row_at(pos + 1)
                if nxt.id == model_id:
                    self.worker.request(model_id, self.catalog.library / nxt.path,
                                        self.prefetch_specs(nxt, info), "prefetch", replace=False)

    def _on_image(self, model_id: str, spec: ViewSpec, image: QtGui.QImage) -> None:
        if self.current is not None and model_id == self.current.id:
            self.on_image(spec, image)

    def _on_failed(self, model_id: str, message: str) -> None:
        if self.current is not None and model_id == self.current.id:
            self.on_failed(message)


def load_rows_for(catalog: Catalog, keys: Sequence[str], model_id: str) -> list[Row]:
    """The :class:`Row` of one model (a list of one), fresh from the catalog."""
    marks = ", ".join("?" for _ in keys)
    sql = (
        "SELECT m.id, m.name, m.path, m.source_group, m.status, m.reason, "
        f"(SELECT count(*) FROM annotations a WHERE a.model_id = m.id AND a.key IN ({marks})), "
        f"(SELECT count(*) FROM annotations a WHERE a.model_id = m.id AND a.key IN ({marks}) AND a.origin = 'human') "
        "FROM models m WHERE m.id = ?"
    )
    out = []
    for mid, name, path, group, status, reason, annotated, human in catalog.connection.execute(
            sql, (*keys, *keys, model_id)):
        state = "human" if human == len(keys) else ("auto" if annotated == len(keys) else "missing")
        out.append(Row(mid, name, path, group, status, reason, state))
    return out


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def session_summary(session, unit: str) -> str:
    """The session part of a progress line: decisions, time, rate per minute.
    ``session`` has ``decisions``, ``started`` (``time.monotonic()``) and
    ``per_minute()`` (:class:`~mmdsynth.annotate.session.AnnotationSession`,
    :class:`~mmdsynth.annotate.session.DedupSession`)."""
    elapsed = time.monotonic() - session.started
    return (f"this session: {session.decisions} in {_duration(elapsed)}, "
            f"<b>{session.per_minute():.1f} {unit}/min</b>")


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def run_tool(window_class, library, filter_name: str = "needs review", start_model: str | None = None) -> int:
    """Open ``library``, show a ``window_class`` window and run the Qt event
    loop until it is closed. Returns the exit status (0)."""
    import signal

    app = ensure_application()
    catalog = Catalog.open(library)
    try:
        window = window_class(catalog, filter_name=filter_name, start_model=start_model)
        window.show()
        window.raise_()
        window.activateWindow()
        # Ctrl+C in the terminal closes the window (every accepted model is already saved);
        # the timer lets Python run its signal handler while Qt's event loop waits.
        signal.signal(signal.SIGINT, lambda *_: window.close())
        tick = QtCore.QTimer()
        tick.timeout.connect(lambda: None)
        tick.start(250)
        app.exec_()
        window.worker.stop()
    finally:
        catalog.close()
    return 0

