"""The annotation tools (``mmdsynth annotate heads|eyes``): pytest-qt on the offscreen platform.

A library with the example character and Gene is built once; every test works
on its own copy. The tools are driven with keys and mouse drags as a person
would, and the catalog rows (values, origin, timestamps, status) are checked.
"""

from __future__ import annotations

import html
import os
import re

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before Qt is imported: no display, no Xvfb needed

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("PyQt5.QtWidgets")
pytest.importorskip("pytestqt")

from PyQt5 import QtCore, QtGui, QtWidgets  # noqa: E402

from qtkit import key, show_window  # noqa: E402

from mmdsynth.annotate.eyes import EyesWindow, candidate_tiles, caption_lines, face_spec  # noqa: E402
from mmdsynth.annotate.heads import BOTTOM, COARSE, FINE, TOP, HeadsWindow, tha1_spec  # noqa: E402
from mmdsynth.annotate.model_list import ModelListModel, load_rows, progress_of  # noqa: E402
from mmdsynth.annotate.render_worker import RenderWorker, ViewSpec  # noqa: E402
from mmdsynth.annotate.session import AnnotationSession, UndoConflict  # noqa: E402
from mmdsynth.cli import main as cli_main  # noqa: E402
from mmdsynth.datasets.catalog import HEAD_KEYS, Catalog, ModelRecord  # noqa: E402
from mmdsynth.mmd.example import write_example  # noqa: E402
from mmdsynth.mmd.schema import EXPRESSION_SLOTS  # noqa: E402

Qt = QtCore.Qt
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template_lib(tmp_path_factory, gene_pmx) -> Path:
    """A library with the example character and Gene, with the suggestions (auto)."""
    base = tmp_path_factory.mktemp("annotate")
    write_example(base / "example")
    lib = base / "lib"
    assert cli_main(["add", str(lib), str(base / "example")]) == 0
    assert cli_main(["add", str(lib), str(gene_pmx)]) == 0
    return lib


def model_id(cat: Catalog, name_part: str) -> str:
    (rec,) = [r for r in cat.models() if name_part in r.name]
    return rec.id


def open_window(qtbot, cls, cat, **kw):
    """Show a tool window and wait until its first model is on screen."""
    return show_window(qtbot, cls(cat, **kw), "model_ready")


def drag(qtbot, widget, start: QtCore.QPoint, end: QtCore.QPoint, steps: int = 4):
    """Press at ``start``, move in ``steps`` to ``end`` with the button held, release.
    (QTest's mouseMove sends no move event on the offscreen platform, so the
    moves are sent as events.)"""
    qtbot.mousePress(widget, Qt.LeftButton, pos=start)
    for i in range(1, steps + 1):
        p = start + (end - start) * (i / steps)
        event = QtGui.QMouseEvent(QtCore.QEvent.MouseMove, QtCore.QPointF(p), Qt.NoButton, Qt.LeftButton,
                                  Qt.NoModifier)
        QtWidgets.QApplication.sendEvent(widget, event)
    qtbot.mouseRelease(widget, Qt.LeftButton, pos=end)


def wheel(widget, pos: QtCore.QPoint, notches: int) -> None:
    """Turn the mouse wheel by ``notches`` (120 eighths of a degree each; > 0: away from the user) at ``pos``."""
    event = QtGui.QWheelEvent(QtCore.QPointF(pos), QtCore.QPointF(widget.mapToGlobal(pos)), QtCore.QPoint(0, 0),
                              QtCore.QPoint(0, 120 * notches), Qt.NoButton, Qt.NoModifier, Qt.NoScrollPhase, False)
    QtWidgets.QApplication.sendEvent(widget, event)


def plain(rich: str) -> str:
    """The text of a rich-text label, without its markup (one line per line break)."""
    doc = QtGui.QTextDocument()
    doc.setHtml(rich)
    return doc.toPlainText().replace("\xa0", " ")


def help_rows(window) -> dict[str, str]:
    """The help overlay's key table: what an action does -> its key column, as shown."""
    text = window.help.findChild(QtWidgets.QLabel).text()
    rows = re.findall(r"<td style='[^']*monospace[^']*'>(.*?)</td><td[^>]*>(.*?)</td>", text)
    return {html.unescape(what): html.unescape(keys) for keys, what in rows}


def progress(window) -> str:
    """The status bar's progress line as plain text."""
    return plain(window.progress_label.text())


# ---------------------------------------------------------------------------
# The session (catalog writes, undo) without Qt windows
# ---------------------------------------------------------------------------


def test_session_accept_undo_and_conflict(cat):
    gene = model_id(cat, "Gene")
    before = cat.annotations(gene)
    assert before[TOP].origin == "auto"
    s = AnnotationSession(cat, HEAD_KEYS)
    change = s.accept(gene, {TOP: 19.9, BOTTOM: 16.7})
    after = cat.annotations(gene)
    assert (after[TOP].value, after[TOP].origin) == (19.9, "human")
    assert after[TOP].updated_at > before[TOP].updated_at
    assert change.before[TOP] == before[TOP] and s.decisions == 1
    with pytest.raises(ValueError, match="not reviewed by this tool"):
        s.accept(gene, {"mouth": "あ"})
    # undo puts back the exact rows (value, origin, timestamp)
    assert s.undo() is change
    assert cat.annotations(gene)[TOP] == before[TOP] and cat.annotations(gene)[BOTTOM] == before[BOTTOM]
    assert s.undo() is None and s.decisions == 0
    # an undo refuses to overwrite what another process wrote since
    s.accept(gene, {TOP: 19.5, BOTTOM: 16.6})
    with Catalog.open(cat.library) as other:
        other.set_annotations(gene, {TOP: 19.4}, "human")
    with pytest.raises(UndoConflict):
        s.undo()
    assert cat.annotations(gene)[TOP].value == 19.4


def test_session_unusable_and_accept_makes_usable(cat):
    ex = model_id(cat, "サンプル")
    s = AnnotationSession(cat, EXPRESSION_SLOTS)
    s.mark_unusable(ex, "face hidden")
    assert (cat.get(ex).status, cat.get(ex).reason) == ("unusable", "face hidden")
    s.accept(ex, {slot: None for slot in EXPRESSION_SLOTS})
    assert cat.get(ex).status == "ok"
    s.undo()
    assert cat.get(ex).status == "unusable"
    s.undo()
    assert (cat.get(ex).status, cat.get(ex).reason) == ("ok", "")
    assert all(cat.annotations(ex)[slot].origin == "auto" for slot in EXPRESSION_SLOTS)


def test_model_list_filters_and_progress(cat, qapp):
    gene, ex = model_id(cat, "Gene"), model_id(cat, "サンプル")
    cat.set_annotations(gene, {TOP: 19.8, BOTTOM: 16.6}, "human")
    cat.set_status(ex, "unusable", "test")
    cat.insert_model(ModelRecord(id="e" * 64, path="models/x/x.pmx", format="pmx", name="broken", group="x",
                                 status="error", reason="bad file"))
    rows = load_rows(cat, HEAD_KEYS)
    assert {r.id: r.state for r in rows}[gene] == "human"
    model = ModelListModel(rows, "needs review")
    assert model.rowCount() == 0
    for name, expected in (("reviewed", {gene}), ("unusable", {ex}), ("all", {gene, ex, "e" * 64})):
        model.set_filter(name)
        assert {model.row_at(k).id for k in range(model.rowCount())} == expected
    p = progress_of(rows)
    assert (p.reviewed, p.unusable, p.to_review, p.other, p.done, p.total) == (1, 1, 0, 1, 2, 2)


# ---------------------------------------------------------------------------
# The render worker
# ---------------------------------------------------------------------------


def test_render_worker_thread_views_and_context_handoff(qtbot, cat):
    from mmdsynth.mmd.loader import load_model
    from mmdsynth.render import Framing, ModelRenderer

    ex = model_id(cat, "サンプル")
    path = cat.model_path(ex)
    # the UI thread may have used the GL context before: the worker borrows it and gives it back
    model = load_model(path)
    framing = Framing.from_head("tha1", 20.35, 15.6, 0.0)
    with ModelRenderer(model) as r:
        before = r.render_pose(None, framing)
    worker = RenderWorker(morphs=True)
    worker.start()
    try:
        front = tha1_spec(20.35, 15.6, 0.0)
        side = ViewSpec("side", front.width, front.height, front.scale, front.center_x, front.top_y)
        got = {}
        worker.image_ready.connect(lambda mid, spec, image: got.__setitem__(spec, image))
        with qtbot.waitSignal(worker.info_ready, timeout=30000) as info_sig:
            worker.request(ex, path, [front, side])
        info = info_sig.args[1]
        assert info.head is not None and info.morphs.assignment.wink_left == "ウィンク"
        qtbot.waitUntil(lambda: len(got) == 2, timeout=30000)
        assert got[front].width() == 256 and worker.cached_image(ex, front) is not None
        assert got[front] != got[side]
        assert worker.request(ex, path, [front, side]) == 0  # all cached
        with qtbot.waitSignal(worker.failed, timeout=30000) as failed:
            worker.request("f" * 64, path.parent / "missing.pmx", [front])
        assert "cannot load" in failed.args[1]
    finally:
        worker.stop()
    with ModelRenderer(model) as r:  # the context works in this thread again
        assert (r.render_pose(None, framing) == before).all()


# ---------------------------------------------------------------------------
# annotate heads
# ---------------------------------------------------------------------------


def test_heads_keys_drag_accept_and_undo(qtbot, cat):
    gene = model_id(cat, "Gene")
    stored = cat.annotations(gene)
    w = open_window(qtbot, HeadsWindow, cat, filter_name="all", start_model=gene[:10])
    assert w.current.id == gene and w.origin == "auto"
    top0, bottom0 = stored[TOP].value, stored[BOTTOM].value
    assert w.values == {TOP: top0, BOTTOM: bottom0}
    assert w.view.front_item.pixmap().width() > 0 and w.view.side_item.pixmap().width() > 0
    assert w.preview.image is not None and w.preview.image.width() == 256
    h = top0 - bottom0

    # the progress line before any decision: nothing reviewed yet, no rate
    assert re.fullmatch(r"done 0 / 2 \(0 reviewed, 0 unusable; 2 to review\) · "
                        r"this session: 0 in 0:\d\d, 0\.0 models/min", progress(w)), progress(w)

    # keys: T selects the top line; Up moves it by exactly FINE (half a tha1 pixel: the head spans
    # 128 rows) of the current head height, Shift+Up by exactly COARSE (4 tha1 pixels, 8x as far)
    assert (FINE * 128, COARSE * 128, COARSE / FINE) == (0.5, 4.0, 8.0)
    key(qtbot, w, Qt.Key_T)
    assert w.view.selected == TOP
    for k, mod, step in ((Qt.Key_Up, Qt.NoModifier, FINE), (Qt.Key_Up, Qt.NoModifier, FINE),
                         (Qt.Key_Up, Qt.ShiftModifier, COARSE), (Qt.Key_Down, Qt.ShiftModifier, -COARSE),
                         (Qt.Key_Down, Qt.NoModifier, -FINE), (Qt.Key_Up, Qt.ShiftModifier, COARSE)):
        top, height = w.values[TOP], w.values[TOP] - w.values[BOTTOM]
        key(qtbot, w, k, mod)
        assert w.values[TOP] - top == pytest.approx(step * height, rel=1e-9, abs=1e-12), (k, mod)
        assert w.values[BOTTOM] == bottom0
    assert w.dirty
    # Tab switches to the chin line; Down moves it down by exactly the fine step, Shift+Down the coarse one
    key(qtbot, w, Qt.Key_Tab)
    assert w.view.selected == BOTTOM
    top_now = w.values[TOP]
    for mod, step in ((Qt.NoModifier, FINE), (Qt.ShiftModifier, COARSE)):
        bottom, height = w.values[BOTTOM], w.values[TOP] - w.values[BOTTOM]
        key(qtbot, w, Qt.Key_Down, mod)
        assert bottom - w.values[BOTTOM] == pytest.approx(step * height, rel=1e-9, abs=1e-12), mod
        assert w.values[TOP] == top_now
    assert w.values[BOTTOM] < bottom0

    # drag the chin line 30 pixels down with the mouse
    vp = w.view.viewport()
    y = w.view.viewport_y(w.values[BOTTOM])
    x = vp.width() // 3
    before_drag = w.values[BOTTOM]
    drag(qtbot, vp, QtCore.QPoint(x, y + 2), QtCore.QPoint(x, y + 32))
    assert w.values[BOTTOM] < before_drag - 0.01 * h
    # dragging elsewhere pans the view (the scene follows the mouse: both scroll bars move by the
    # drag, in pixels) and leaves the lines and the zoom alone
    values = dict(w.values)
    view, hbar, vbar = w.view, w.view.horizontalScrollBar(), w.view.verticalScrollBar()
    assert hbar.minimum() < hbar.value() - 40 and vbar.minimum() < vbar.value() - 30  # room to scroll
    h0, v0, m0 = hbar.value(), vbar.value(), view.transform()
    center0 = view.mapToScene(vp.rect().center())
    drag(qtbot, vp, QtCore.QPoint(x, 5), QtCore.QPoint(x + 40, 35))
    assert (hbar.value(), vbar.value()) == (h0 - 40, v0 - 30)
    assert view.transform() == m0 and w.values == values
    center1 = view.mapToScene(vp.rect().center())
    assert center1.x() - center0.x() == pytest.approx(-40 / m0.m11(), rel=0.02)
    assert center1.y() - center0.y() == pytest.approx(-30 / m0.m22(), rel=0.02)
    # the wheel (no modifier needed) zooms by 1.15 a notch, both axes; back the other way; the lines stay.
    # Zoomed out beyond 0.8x the fit, the dimmed whole-body render shows behind.
    assert view.transform().m11() == pytest.approx(view.fit_scale)
    assert not view.body_item.isVisible()
    z = view.transform().m11()
    at = QtCore.QPoint(vp.width() // 2, vp.height() // 2)
    wheel(vp, at, 1)
    assert (view.transform().m11(), view.transform().m22()) == (pytest.approx(z * 1.15), pytest.approx(z * 1.15))
    wheel(vp, at, -2)
    assert view.transform().m11() == pytest.approx(z / 1.15)
    assert not view.body_item.isVisible()  # 0.87x the fit
    wheel(vp, at, -1)
    assert view.transform().m11() == pytest.approx(z / 1.15 ** 2) and view.body_item.isVisible()  # 0.76x
    wheel(vp, at, 2)
    assert view.transform().m11() == pytest.approx(z) and not view.body_item.isVisible()
    assert w.values == values
    # the live preview follows the values
    qtbot.waitUntil(lambda: "tha1" in w.shown and w._preview_shown >= 0, timeout=30000)
    expected = tha1_spec(w.values[TOP], w.values[BOTTOM], w.info.center_x)
    qtbot.waitUntil(lambda: w._preview_seq.get(expected) == w._preview_shown, timeout=30000)

    # Enter: saved at once as human, with a fresh timestamp; the tool moves on
    on_screen = dict(w.values)
    w.session.started = time.monotonic() - 120  # the session began two minutes ago: 1 model -> 0.5 a minute
    with qtbot.waitSignal(w.decided, timeout=5000):
        key(qtbot, w, Qt.Key_Return)
    saved = cat.annotations(gene)
    assert {k: saved[k].value for k in (TOP, BOTTOM)} == on_screen
    assert saved[TOP].origin == saved[BOTTOM].origin == "human"
    assert saved[TOP].updated_at > stored[TOP].updated_at
    # Gene is the last model of the list: the tool stays on it, now showing the stored human values
    assert w.current.id == gene and w.origin == "human" and not w.dirty
    assert "last model" in w.statusBar().currentMessage()
    assert w.list_model.row_of(gene).state == "human"
    # the progress line: one more reviewed, one fewer to review; this session 1 model in 2 minutes
    assert re.fullmatch(r"done 1 / 2 \(1 reviewed, 0 unusable; 1 to review\) · "
                        r"this session: 1 in 2:0\d, 0\.5 models/min", progress(w)), progress(w)

    # Ctrl+Z: the auto values come back exactly, and the tool shows Gene again
    key(qtbot, w, Qt.Key_Z, Qt.ControlModifier)
    assert cat.annotations(gene)[TOP] == stored[TOP] and cat.annotations(gene)[BOTTOM] == stored[BOTTOM]
    assert w.current.id == gene and w.values == {TOP: top0, BOTTOM: bottom0}
    assert w.list_model.row_of(gene).state == "auto"
    assert re.fullmatch(r"done 0 / 2 \(0 reviewed, 0 unusable; 2 to review\) · "
                        r"this session: 0 in 2:0\d, 0\.0 models/min", progress(w)), progress(w)
    w.close()


def test_heads_unusable_key_help_overlay_and_navigation(qtbot, cat):
    gene, ex = model_id(cat, "Gene"), model_id(cat, "サンプル")
    w = open_window(qtbot, HeadsWindow, cat)  # needs review: example (group 'example') then Gene
    assert w.current.id == ex
    # the help overlay: F1 shows it; a key while it is shown only closes it (nothing is saved)
    key(qtbot, w, Qt.Key_F1)
    assert w.help.isVisible()
    # every action's row shows its keys, as the person types them
    rows = help_rows(w)
    expected = {
        "accept the values on screen (saved at once) and go to the next model": "Enter",
        "mark this model unusable with the toolbar's reason, and go to the next": "U",
        "undo the last decision of this session (again for earlier ones)": "Ctrl+Z",
        "next model (edits not accepted are dropped)": "N",
        "previous model": "P",
        "show or hide this help": "F1 / ?",
        "select the head-top line": "T",
        "select the chin line (head bottom)": "B",
        "switch between the two lines": "Tab",
        "move the selected line up (half a tha1 pixel)": "↑",
        "move the selected line down": "↓",
        "move it up 8× as far": "Shift+↑",
        "move it down 8× as far": "Shift+↓",
        "put both lines at the suggestion": "S",
        "reset to the stored values (drop edits)": "R",
        "zoom in": "+ / =",
        "zoom out": "-",
        "fit the front and side views": "F",
        "move it (the cursor changes over a line)": "drag a line",
        "pan the view": "drag elsewhere",
        "zoom at the cursor": "wheel",
        "in the list on the left: show it": "click a model",
        "the same actions as the keys": "toolbar buttons",
    }
    assert rows == expected
    qtbot.keyClick(w.help, Qt.Key_Return)
    assert not w.help.isVisible() and cat.annotations(ex)[TOP].origin == "auto"
    key(qtbot, w, Qt.Key_Question, Qt.ShiftModifier)
    assert w.help.isVisible()
    key(qtbot, w, Qt.Key_Escape)
    assert not w.help.isVisible()
    # N / P move without saving
    key(qtbot, w, Qt.Key_N)
    assert w.current.id == gene
    key(qtbot, w, Qt.Key_P)
    assert w.current.id == ex
    # typing a reason: letters and Enter go to the reason field, not to the tool
    edit = w.reason_combo.lineEdit()
    edit.setFocus()
    edit.clear()
    qtbot.keyClicks(edit, "face hidden by a mask")
    qtbot.keyClick(edit, Qt.Key_Return)
    assert w.current.id == ex and cat.get(ex).status == "ok" and not w.session.undo_stack
    assert not edit.hasFocus()
    # U: unusable with the toolbar's reason, one key
    with qtbot.waitSignal(w.decided, timeout=5000):
        key(qtbot, w, Qt.Key_U)
    rec = cat.get(ex)
    assert (rec.status, rec.reason) == ("unusable", "face hidden by a mask")
    assert w.current.id == gene
    assert w.list_model.row_of(ex).status == "unusable"
    assert re.fullmatch(r"done 1 / 2 \(0 reviewed, 1 unusable; 1 to review\) · "
                        r"this session: 1 in \d+:\d\d, \d+\.\d models/min", progress(w)), progress(w)
    # undo restores the status
    key(qtbot, w, Qt.Key_Z, Qt.ControlModifier)
    assert (cat.get(ex).status, cat.get(ex).reason) == ("ok", "")
    assert w.current.id == ex
    assert re.fullmatch(r"done 0 / 2 \(0 reviewed, 0 unusable; 2 to review\) · "
                        r"this session: 0 in \d+:\d\d, 0\.0 models/min", progress(w)), progress(w)
    w.close()


def test_heads_screen_texts_shifted_keys_and_empty_list(qtbot, cat):
    gene = model_id(cat, "Gene")
    w = open_window(qtbot, HeadsWindow, cat)
    # every view names the character's sides
    front, side = (t.toPlainText() for t in w.view.titles)
    assert "character's left = image right" in front
    assert "left side" in side and "face → image left" in side
    assert "character's left = image right" in w.preview_title.text()
    # the help lists the tool's own keys before the help key, and the mouse last
    text = w.help.findChild(QtWidgets.QLabel).text()
    assert text.index("select the head-top line") < text.index("show or hide this help") < text.index("drag a line")
    # "+" is typed with Shift on most keyboards: Shift and "+" zooms in like "+" alone
    z = w.view.transform().m11()
    key(qtbot, w, Qt.Key_Plus, Qt.ShiftModifier)
    assert w.view.transform().m11() > z * 1.2
    key(qtbot, w, Qt.Key_Minus)
    assert w.view.transform().m11() == pytest.approx(z)
    # an empty list: the tool's place says what the other lists hold; header and key hint stay small
    w.filter_combo.setCurrentText("reviewed")
    assert w.current is None and w.list_model.rowCount() == 0
    assert not w.tool_widget.isVisible() and w.empty_label.isVisible()
    assert "No models in “reviewed”" in w.empty_label.text() and "“needs review”: 2" in w.empty_label.text()
    assert w.hint_label.height() < 100 and w.header_label.height() < 100
    w.filter_combo.setCurrentText("all")
    assert w.tool_widget.isVisible() and not w.empty_label.isVisible() and w.current is not None
    assert w.list_model.headerData(2, Qt.Horizontal) == "source"
    assert w.list_model.position_of(gene) is not None
    w.close()


# ---------------------------------------------------------------------------
# annotate eyes
# ---------------------------------------------------------------------------


def test_eyes_digits_clear_accept_and_undo(qtbot, cat):
    gene = model_id(cat, "Gene")
    stored = cat.annotations(gene)
    w = open_window(qtbot, EyesWindow, cat, filter_name="all", start_model=gene)
    assert w.current.id == gene
    assert w.assigned == {slot: stored[slot].value for slot in EXPRESSION_SLOTS}
    names = [t.name for t in w.tiles.tiles]
    assert names[0] == "neutral face"
    # the candidates: the eye panel and name matches
    for name in ("まばたき", "ウィンク", "ウィンク右", "ウィンク２", "ｳｨﾝｸ２右", "笑い", "まば左", "eyeBlinkLeft", "あ"):
        assert name in names
    # each pre-filled slot (stored suggestion, not reviewed) names its source and the suggestion's
    # confidence for this model (worked out here again, independently of the tool's worker)
    from mmdsynth.annotate.suggest import suggest_morphs
    from mmdsynth.mmd.loader import load_model

    sugg = suggest_morphs(load_model(cat.model_path(gene)))
    assert w.info.morphs.confidence == sugg.confidence
    assert {slot: sugg.assignment.get(slot) for slot in EXPRESSION_SLOTS} == w.assigned
    for slot in EXPRESSION_SLOTS:
        conf = sugg.confidence[slot]
        assert 0.5 < conf <= 1.0 and w.sources[slot] == "auto"
        line = plain(w.slot_rows[slot].text.text()).splitlines()[-1]
        assert line == f"suggested, {conf:.0%} sure", (slot, line)
    # the neutral face and the faces in the slots are on screen
    assert -1 in w.tiles.pixmaps
    assert w.info.morph_index("ウィンク２") in w.tiles.pixmaps
    # select まば左 (a plain blink of the character's left eye) and press 1: wink left
    assert w.select_morph("まば左")
    key(qtbot, w, Qt.Key_1)
    assert w.assigned["wink_left"] == "まば左" and w.sources["wink_left"] == "edited"
    # an edited slot shows no confidence, but what the suggestion was
    line = plain(w.slot_rows["wink_left"].text.text()).splitlines()[-1]
    assert line == f"edited (suggested: {sugg.assignment.get('wink_left')})"
    # the neutral face + 4: the smile-wink-left slot is emptied
    assert w.select_morph(-1)
    key(qtbot, w, Qt.Key_4)
    assert w.assigned["smile_wink_left"] is None
    # 0 takes the selected morph out of its slots
    assert w.select_morph("笑い")
    key(qtbot, w, Qt.Key_0)
    assert w.assigned["smile_wink_both"] is None
    # arrows move the selection in the grid
    assert w.select_morph(-1)
    key(qtbot, w, Qt.Key_Right)
    assert w.selected_tile().index >= 0
    # a morph shutting the other eye: the slot says what it does and which eye the slot is for
    assert w.select_morph("eyeBlinkLeft")
    key(qtbot, w, Qt.Key_2)
    assert w.assigned["wink_right"] == "eyeBlinkLeft"
    slot_text = w.slot_rows["wink_right"].text.text()
    assert "it shuts the LEFT eye (image right)" in slot_text and "this slot is for the RIGHT eye (image left)" in slot_text
    assert w.select_morph(-1)
    key(qtbot, w, Qt.Key_2)
    assert w.assigned["wink_right"] is None
    # the help lists the grid's arrows and the neutral face + digit rule (the arrows are no window shortcut)
    text = w.help.findChild(QtWidgets.QLabel).text()
    assert "↑ ↓ ← →" in text and "select a face" in text and "neutral face + 1 … 7" in text
    assert "Up" not in w.qactions and "1" in w.qactions
    # 7: the mouth slot
    assert w.select_morph("ああ")
    key(qtbot, w, Qt.Key_7)
    assert w.assigned["mouth"] == "ああ"
    expected = dict(w.assigned)
    with qtbot.waitSignal(w.decided, timeout=5000):
        key(qtbot, w, Qt.Key_Return)
    saved = cat.annotations(gene)
    assert {slot: saved[slot].value for slot in EXPRESSION_SLOTS} == expected
    assert all(saved[slot].origin == "human" for slot in EXPRESSION_SLOTS)
    assert cat.assignment(gene).smile_wink_left is None  # stored as "explicitly none"
    assert saved["smile_wink_left"].value is None and saved["smile_wink_left"].origin == "human"
    # reviewed slots show no confidence
    assert all("sure" not in plain(row.text.text()) for row in w.slot_rows.values())
    assert plain(w.slot_rows["wink_both"].text.text()).splitlines()[-1] == "✓ reviewed"  # as suggested
    mouth_line = plain(w.slot_rows["mouth"].text.text()).splitlines()[-1]
    assert mouth_line == f"✓ reviewed (suggested: {sugg.assignment.get('mouth')})"  # ああ, not the suggested あ
    key(qtbot, w, Qt.Key_Z, Qt.ControlModifier)
    assert {slot: cat.annotations(gene)[slot] for slot in EXPRESSION_SLOTS} == {s: stored[s] for s in EXPRESSION_SLOTS}
    assert w.current.id == gene and w.assigned["wink_left"] == stored["wink_left"].value
    w.close()


def test_eyes_candidates_and_face_framing_on_the_example(cat, qtbot):
    ex = model_id(cat, "サンプル")
    worker = RenderWorker(morphs=True)
    worker.start()
    try:
        with qtbot.waitSignal(worker.info_ready, timeout=30000) as sig:
            worker.request(ex, cat.model_path(ex))
    finally:
        worker.stop()
    info = sig.args[1]
    tiles = candidate_tiles(info, info.morphs.assignment.as_dict())
    assert [t.name for t in tiles][0] == "neutral face"
    assert sorted(t.name for t in tiles[1:]) == sorted(info.morph_names)  # 7 morphs, all candidates
    assert {t.name: t.caption for t in tiles}["ウィンク"] == "shuts LEFT eye · img right"
    # a caption is drawn on two lines: what the morph does, then the image side (never cut off)
    assert caption_lines("shuts LEFT eye · img right") == ["shuts LEFT eye", "(img right)"]
    assert caption_lines("opens the mouth") == ["opens the mouth"]
    assert caption_lines(tiles[0].caption)[0] == "no morph"
    spec = face_spec(20.35, 15.6, 0.0)
    assert spec.to_image(0.0, 15.6)[1] > 0.9 * spec.height  # the chin near the bottom edge


# ---------------------------------------------------------------------------
# Killed mid-session: every accepted model is kept, the catalog is consistent
# ---------------------------------------------------------------------------

_CHILD = textwrap.dedent(r"""
    import os, sys
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from PyQt5 import QtCore
    from mmdsynth.annotate.app import ensure_application
    from mmdsynth.annotate.heads import HeadsWindow, FINE
    from mmdsynth.datasets.catalog import Catalog

    app = ensure_application()
    cat = Catalog.open(sys.argv[1])
    w = HeadsWindow(cat, filter_name="all")
    w.show()
    real_accept = w.session.accept

    def accept(model_id, values, **kw):
        print("committing", model_id, repr(values["head_top"]), flush=True)
        change = real_accept(model_id, values, **kw)
        print("accepted", model_id, repr(values["head_top"]), flush=True)
        return change

    w.session.accept = accept

    def step():
        if w.current is not None and "front" in w.shown:
            w.nudge(FINE)
            pos = w.position()
            w.accept_current()
            if w.position() == pos:  # the last model: start the list again
                w.go_to(0)

    timer = QtCore.QTimer()
    timer.timeout.connect(step)
    timer.start(1)
    app.exec_()
""")


def test_killed_tool_keeps_every_accepted_model(lib, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(_CHILD, encoding="utf-8")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(script), str(lib)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    events: list[tuple[str, str, float]] = []
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            what, mid, value = line.split()
            events.append((what, mid, float(value)))
            if sum(e[0] == "accepted" for e in events) >= 12:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    accepted = [e for e in events if e[0] == "accepted"]
    assert len(accepted) >= 12, f"the child accepted only {len(accepted)} models before the deadline"
    db = lib / "catalog.sqlite"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Catalog.open(lib) as cat:
        for mid in {e[1] for e in accepted}:
            ann = cat.annotations(mid)
            assert ann[TOP].origin == ann[BOTTOM].origin == "human"
            last_accepted = [e[2] for e in accepted if e[1] == mid][-1]
            last_tried = [e[2] for e in events if e[1] == mid][-1]
            # the newest committed value: the last one reported, or the one whose commit the kill interrupted
            assert ann[TOP].value in (last_accepted, last_tried)


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


def test_annotate_command_line(lib, monkeypatch, capsys):
    from mmdsynth import annotate_cmd, cli

    if annotate_cmd not in cli.COMMAND_MODULES:  # until cli.py lists it
        monkeypatch.setattr(cli, "COMMAND_MODULES", cli.COMMAND_MODULES + (annotate_cmd,))
    args = cli.build_parser().parse_args(["annotate", "eyes", str(lib), "--show", "reviewed", "--model", "abc"])
    assert (args.annotate_tool, args.show, args.model) == ("eyes", "reviewed", "abc")
    # no display: one line naming the way out, exit 2, no window
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["annotate", "heads", str(lib)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no display" in err and "xvfb-run" in err
    # not a library; an unknown model
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert cli.main(["annotate", "heads", str(lib.parent / "nope")]) == 2
    assert "no such library" in capsys.readouterr().err
    assert cli.main(["annotate", "eyes", str(lib), "--model", "ffff"]) == 2
    assert "--model ffff" in capsys.readouterr().err
    # annotate_cmd itself does not import Qt
    proc = subprocess.run([sys.executable, "-c", "import sys, mmdsynth.annotate_cmd; "
                           "print(any(m.startswith('PyQt5') for m in sys.modules))"], capture_output=True, text=True)
    assert proc.stdout.strip() == "False"
