"""The duplicate review (``mmdsynth annotate dups``): pytest-qt on the offscreen platform.

A library is scanned once from a downloads folder holding Gene as PMX and PMD,
a zip with a byte copy of the PMX, and Gene 15% larger re-saved as PMX (a near
duplicate); the real ``find_duplicates`` groups the three models (the PMX/PMD
pair is decided automatically, the larger copy is left to review). Every test
works on its own copy; the window is driven with keys and clicks and the
catalog rows (decisions, origins, timestamps, statuses) are checked.
"""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before Qt is imported: no display, no Xvfb needed

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PyQt5.QtWidgets")
pytest.importorskip("pytestqt")

from PyQt5 import QtCore, QtGui, QtWidgets  # noqa: E402

from qtkit import key, show_window  # noqa: E402

from mmdsynth.annotate.dups import DupsWindow, GroupListModel, card_ids  # noqa: E402
from mmdsynth.annotate.session import DedupSession, UndoConflict  # noqa: E402
from mmdsynth.cli import main as cli_main  # noqa: E402
from mmdsynth.datasets.catalog import Catalog  # noqa: E402
from mmdsynth.datasets.dedup import duplicate_groups, find_duplicates  # noqa: E402

Qt = QtCore.Qt


# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template_lib(tmp_path_factory, gene_pmx, gene_pmd) -> Path:
    """Gene PMX + PMD (source group gene), a zip with a byte copy of the PMX and
    a folder with Gene 1.15x re-saved as PMX (source group mirror); scanned and deduplicated."""
    from mmdsynth.annotate.suggest import suggest_head_bounds
    from mmdsynth.catalog_cmd import suggest_annotations
    from mmdsynth.datasets.scan import scan_downloads
    from mmdsynth.mmd.loader import load_model
    from mmdsynth.mmd.pmx_write import save_pmx

    base = tmp_path_factory.mktemp("dups")
    dl = base / "downloads"
    textures = gene_pmx.parent / "light"
    (dl / "gene" / "Gene").mkdir(parents=True)
    for f in (gene_pmx, gene_pmd):
        shutil.copy(f, dl / "gene" / "Gene")
    shutil.copytree(textures, dl / "gene" / "Gene" / "light")
    (dl / "mirror").mkdir()
    with zipfile.ZipFile(dl / "mirror" / "Gene-copy.zip", "w") as zf:  # the same bytes once more
        zf.write(gene_pmx, "Gene/Gene_light.pmx")
        for t in sorted(textures.iterdir()):
            zf.write(t, f"Gene/light/{t.name}")
    big = dl / "mirror" / "Gene-big"
    shutil.copytree(textures, big / "light")
    model = load_model(gene_pmx)  # saved differently: 15% larger, another name
    model.positions = (model.positions * 1.15).astype(np.float32)
    for b in model.bones:
        b.position = tuple(float(v) * 1.15 for v in b.position)
    model.name = "Gene (big)"
    save_pmx(model, big / "Gene_big.pmx")
    lib = base / "lib"
    with Catalog.open(lib, create=True) as cat:
        scan_downloads(cat, dl, workers=1, progress=False, suggest=suggest_annotations)
        find_duplicates(cat, workers=0, head_fn=suggest_head_bounds)
    return lib


def ids(cat: Catalog) -> tuple[str, str, str]:
    """(Gene PMX, Gene PMD, Gene big) model ids."""
    by_path = {Path(r.path).name: r.id for r in cat.models()}
    return by_path["Gene_light.pmx"], by_path["Gene_light.pmd"], by_path["Gene_big.pmx"]


def state(cat: Catalog, model_ids) -> dict:
    """Decision, status and reason of each model, and the "not duplicates" pairs."""
    return {"decisions": {m: cat.duplicate_decision(m) for m in model_ids},
            "status": {m: (cat.get(m).status, cat.get(m).reason) for m in model_ids},
            "distinct": cat.distinct_pairs()}


def open_window(qtbot, cat, **kw) -> DupsWindow:
    """Show the window and wait until every card of the first group shows its renders."""
    return show_window(qtbot, DupsWindow(cat, **kw), "group_ready")


# ---------------------------------------------------------------------------
# The window
# ---------------------------------------------------------------------------


def test_group_cards_renders_and_help(qtbot, cat):
    pmx, pmd, big = ids(cat)
    w = open_window(qtbot, cat)
    # the list: one group to review, three models, near (the big copy is not the same geometry)
    assert w.list_model.rowCount() == 1
    index = w.list_model.index(0, 2)
    assert w.list_model.data(index) == "3 · near" and w.list_model.data(w.list_model.index(0, 0)) == "○"
    assert w.list_model.data(w.list_model.index(0, 1)) == "ジェネ / Gene"
    assert "resolved 0 / 1 groups" in w.progress_label.text()
    assert "3 models from source groups: gene, mirror" in w.header_label.text()
    # the size column is wide enough for its longest text
    header = w.list_view.header()
    assert header.sectionSize(2) >= w.list_view.fontMetrics().horizontalAdvance("2 · geometry") + 8
    # the cards: the PMX (more morphs than the PMD, status ok) is the representative, selected first
    assert card_ids(w) == [pmx, pmd, big] and w.selected == 0
    texts = [c.title.text() + c.name_label.text() + c.facts.text() + c.decision_label.text() for c in w.cards]
    assert "representative" in texts[0] and "representative" not in texts[1]
    assert "ジェネ / Gene" in texts[0] and "Gene (big)" in texts[2]
    assert "Gene_light.pmd" in texts[1] and "mirror" in texts[2] and "PMD" in texts[1]
    assert "28,646 vertices · 47,106 faces · 184 morphs" in texts[0]
    assert "177 morphs" in texts[1]
    assert "byte copies elsewhere: 1" in texts[0] and "Gene-copy" in texts[0]
    assert "KEEP" in texts[0] and "automatically" in texts[0]
    assert "DUPLICATE" in texts[1] and "#1" in texts[1] and "(same geometry)" in texts[1]
    assert "no decision yet" in texts[2] and "head 0.0" in texts[2]
    # the renders: full body and head crop on every card, with the character on them
    for card in w.cards:
        for box in (card.body_box, card.head_box):
            assert box.image is not None and not box.image.isNull()
            alpha = np.frombuffer(box.image.constBits().asstring(box.image.sizeInBytes()), np.uint8)[3::4]
            assert (alpha == 255).mean() > 0.05  # covered pixels
            assert (alpha == 0).mean() > 0.2  # and the transparent background
        assert card.head_box.image.size() == QtCore.QSize(256, 256)  # the tha1 crop
        assert card.body_box.image.height() <= 330 and card.body_box.image.width() <= 140
    # the cards are equally tall, so their buttons line up; the decision comes before the facts
    assert len({c.height() for c in w.cards}) == 1
    assert len({c.keep_button.mapTo(w, QtCore.QPoint(0, 0)).y() for c in w.cards}) == 1
    assert all(c.decision_label.y() < c.facts.y() for c in w.cards)
    # on screen: the box over the checkerboard has pixels of neither check colour (the character)
    shot = w.cards[2].head_box.grab().toImage()
    checks = {QtGui.QColor("#d8d8d8").rgb(), QtGui.QColor("#b8b8b8").rgb()}
    colours = {shot.pixel(x, y) for x in range(0, shot.width(), 4) for y in range(0, shot.height(), 4)}
    assert len(colours - checks) > 50
    # the help overlay lists the keys; a key while it is shown only closes it
    key(qtbot, w, Qt.Key_F1)
    assert w.help.isVisible()
    text = w.help.findChild(QtWidgets.QLabel).text()
    for words in ("keep the selected model", "split", "representative", "Ctrl+Z", "1 … 9", "click a card"):
        assert words in text
    assert text.index("select the model on the left") < text.index("show or hide this help") < text.index("click a card")
    before = state(cat, [pmx, pmd, big])
    key(qtbot, w, Qt.Key_K)
    assert not w.help.isVisible() and state(cat, [pmx, pmd, big]) == before
    # other lists
    w.set_filter("reviewed")
    assert w.list_model.rowCount() == 0 and "No groups" in w.header_label.text()
    assert not w.tool_widget.isVisible() and w.empty_label.isVisible() and "1 to review" in w.empty_label.text()
    assert w.hint_label.height() < 100
    w.set_filter("all")
    assert w.list_model.rowCount() == 1 and w.current is not None
    assert w.tool_widget.isVisible() and not w.empty_label.isVisible()
    w.close()


def test_only_automatic_groups_say_where_they_are(qtbot, cat):
    """A library whose only group dedup decided itself (same geometry): the
    first list is empty and says so, and where to look."""
    pmx, pmd, big = ids(cat)
    DedupSession(cat).split(big, [pmx, pmd, big])  # what is left: the PMX/PMD pair, decided automatically
    w = DupsWindow(cat)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    assert w.current is None and w.list_model.rowCount() == 0 and w.empty_label.isVisible()
    text = w.empty_label.text()
    assert "Nothing to review" in text and "1 group decided automatically" in text and "Show: all" in text
    w.set_filter("all")
    assert w.current is not None and card_ids(w) == [pmx, pmd]
    w.close()


def test_keep_undo_and_rerun(qtbot, cat):
    pmx, pmd, big = ids(cat)
    before = state(cat, [pmx, pmd, big])
    w = open_window(qtbot, cat)
    # 3 selects the third card; K keeps it and marks the other two duplicates of it
    key(qtbot, w, Qt.Key_3)
    assert w.selected == 2 and card_ids(w)[2] == big
    with qtbot.waitSignal(w.decided, timeout=5000) as sig:
        key(qtbot, w, Qt.Key_K)
    assert sig.args == [big, "keep"]
    assert cat.duplicate_decision(big)[:3] == ("keep", None, "human")
    for m in (pmx, pmd):
        d = cat.duplicate_decision(m)
        assert (d.decision, d.duplicate_of, d.origin) == ("duplicate", big, "human")
        assert cat.get(m).status == "duplicate" and cat.get(m).reason == f"duplicate of {big}"
    assert cat.get(big).status == "ok"
    # no other group to review: the tool stays on this one, now resolved, with big as the representative
    assert w.current is not None and card_ids(w)[0] == big
    assert w.list_model.row_at(0).state == "human" and "resolved 1 / 1 groups" in w.progress_label.text()
    assert "KEEP" in w.cards[0].decision_label.text() and "by a person" in w.cards[0].decision_label.text()
    # the render job takes the kept model only
    from mmdsynth.datasets.job import catalog_records

    assert {r.model_id for r in catalog_records(cat)} == {big}
    # Ctrl+Z: the automatic decisions come back exactly (origins, timestamps, statuses)
    with qtbot.waitSignal(w.decided, timeout=5000):
        key(qtbot, w, Qt.Key_Z, Qt.ControlModifier)
    assert state(cat, [pmx, pmd, big]) == before
    assert w.list_model.row_at(0).state == "review" and card_ids(w)[0] == pmx
    assert w.session.undo_stack == [] and "Nothing to undo" not in w.statusBar().currentMessage()
    key(qtbot, w, Qt.Key_Z, Qt.ControlModifier)
    assert "Nothing to undo" in w.statusBar().currentMessage()
    # Enter is K too; the decision survives a rerun of dedup
    w.select_member(2)
    key(qtbot, w, Qt.Key_Return)
    after = state(cat, [pmx, pmd, big])
    assert after["decisions"][big].origin == "human"
    w.close()
    report = find_duplicates(cat, compute=False)
    assert state(cat, [pmx, pmd, big]) == after
    (group,) = report.groups
    assert group.representative == big and group.resolved


def test_split_rerun_and_undo(qtbot, cat):
    pmx, pmd, big = ids(cat)
    before = state(cat, [pmx, pmd, big])
    w = open_window(qtbot, cat)
    key(qtbot, w, Qt.Key_Right)
    key(qtbot, w, Qt.Key_Right)
    key(qtbot, w, Qt.Key_Right)  # past the last card: stays
    assert w.selected == 2
    with qtbot.waitSignal(w.decided, timeout=5000):
        key(qtbot, w, Qt.Key_S)
    # big is not a duplicate of either Gene: stored as two "not duplicates" pairs, by a person
    distinct = cat.distinct_pairs()
    assert set(distinct) == {tuple(sorted((big, pmx))), tuple(sorted((big, pmd)))}
    assert all(origin == "human" for origin, _ in distinct.values())
    assert cat.duplicate_decision(big) is None and cat.get(big).status == "ok"
    # what is left is the PMX/PMD pair (decided automatically): shown, still listed until the filter changes
    qtbot.waitUntil(lambda: w.cards and all(c.ready() for c in w.cards), timeout=30000)
    assert card_ids(w) == [pmx, pmd] and w.list_model.rowCount() == 1
    assert w.list_model.row_at(0).state == "auto"
    assert [g.ids for g in duplicate_groups(cat)] == [[pmx, pmd]]
    # a rerun of dedup does not group them again
    find_duplicates(cat, compute=False)
    assert [g.ids for g in duplicate_groups(cat)] == [[pmx, pmd]] and cat.distinct_pairs() == distinct
    # Ctrl+Z: the group of three is back, decisions as before
    key(qtbot, w, Qt.Key_Z, Qt.ControlModifier)
    assert state(cat, [pmx, pmd, big])["distinct"] == {}
    assert state(cat, [pmx, pmd, big]) == before
    assert card_ids(w) == [pmx, pmd, big] and w.selected == 2
    w.close()


def test_duplicate_clear_mouse_and_start_model(qtbot, cat):
    pmx, pmd, big = ids(cat)
    w = open_window(qtbot, cat, filter_name="reviewed", start_model=big[:10])
    # big's group is not in "reviewed": the tool shows every group, with big's card selected
    assert w.list_model.filter_name == "all" and w.filter_combo.currentText() == "all"
    assert card_ids(w)[w.selected] == big
    # D on the representative is refused; on big it marks big a duplicate of the PMX
    w.select_member(0)
    key(qtbot, w, Qt.Key_D)
    assert "cannot be a duplicate of itself" in w.statusBar().currentMessage()
    assert cat.duplicate_decision(big) is None
    qtbot.mouseClick(w.cards[2], Qt.LeftButton, pos=QtCore.QPoint(20, 200))  # a click selects a card
    assert w.selected == 2
    key(qtbot, w, Qt.Key_D)
    d = cat.duplicate_decision(big)
    assert (d.decision, d.duplicate_of, d.origin) == ("duplicate", pmx, "human") and cat.get(big).status == "duplicate"
    assert w.list_model.row_at(0).state == "human"  # every member decided now
    # C clears every decision of the group: all three are ok again and to review
    key(qtbot, w, Qt.Key_C)
    assert all(cat.duplicate_decision(m) is None and cat.get(m).status == "ok" for m in (pmx, pmd, big))
    assert w.list_model.row_at(0).state == "review"
    # the card's keep button: the PMD is kept, the others are duplicates of it
    pmd_card = w.cards[card_ids(w).index(pmd)]
    qtbot.mouseClick(pmd_card.keep_button, Qt.LeftButton)
    assert cat.duplicate_decision(pmd)[:3] == ("keep", None, "human")
    assert {cat.duplicate_decision(m).duplicate_of for m in (pmx, big)} == {pmd}
    assert w.session.decisions == 3 and len(w.session.undo_stack) == 3
    w.close()


def test_dedup_session_undo_conflict(cat):
    pmx, pmd, big = ids(cat)
    s = DedupSession(cat)
    decision = s.keep(big, [pmx, pmd, big])
    assert decision.action == "keep" and decision.changes and s.decisions == 1
    assert s.keep(big, [pmx, pmd, big]).changes == ()  # already so: nothing new on the stack
    assert len(s.undo_stack) == 1
    with Catalog.open(cat.library) as other:  # another process changes one of the decisions since
        other.set_duplicate_decision(pmd, "keep", origin="human")
    with pytest.raises(UndoConflict):
        s.undo()
    assert cat.duplicate_decision(pmd).decision == "keep" and len(s.undo_stack) == 1


def test_group_list_keeps_places_after_reload(cat, qapp):
    pmx, pmd, big = ids(cat)
    model = GroupListModel(duplicate_groups(cat), "needs review")
    assert model.rowCount() == 1 and model.position_of(big) == 0
    keep = DedupSession(cat).keep(pmx, [pmx, pmd, big])
    assert keep.changes
    model.reload(duplicate_groups(cat))
    assert model.rowCount() == 1 and model.row_at(0).state == "human"  # listed until the filter changes
    model.set_filter("needs review")
    assert model.rowCount() == 0 and model.position_of(big) is None
    with pytest.raises(ValueError):
        model.set_filter("unusable")


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


def test_annotate_dups_command_line(lib, monkeypatch, capsys):
    from mmdsynth import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["annotate", "dups", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--show {needs-review,reviewed,all}" in out and "group holding this model" in out
    args = cli.build_parser().parse_args(["annotate", "dups", str(lib), "--show", "reviewed", "--model", "abc"])
    assert (args.annotate_tool, args.show, args.model) == ("dups", "reviewed", "abc")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["annotate", "dups", str(lib), "--show", "unusable"])
    capsys.readouterr()
    # no display: one line naming the way out, exit 2, no window
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    assert cli_main(["annotate", "dups", str(lib)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no display" in err and "xvfb-run -a mmdsynth annotate dups" in err
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert cli_main(["annotate", "dups", str(lib), "--model", "ffff"]) == 2
    assert "--model ffff" in capsys.readouterr().err
