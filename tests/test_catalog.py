"""The library catalog (SQLite), ``add_models`` and the ``add``/``catalog`` commands."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from modelkit import quad_model

from mmdsynth.datasets import catalog as catalog_mod
from mmdsynth.datasets.catalog import (
    ANNOTATION_KEYS,
    SCHEMA_VERSION,
    Catalog,
    CatalogError,
    ModelRecord,
)
from mmdsynth.datasets.library import add_models, find_model_files
from mmdsynth.mmd.example import write_example
from mmdsynth.mmd.loader import load_model
from mmdsynth.mmd.pmx_write import save_pmx
from mmdsynth.mmd.schema import EXPRESSION_SLOTS, MorphAssignment
from mmdsynth.mmd.textures import texture_report

LISTING_KEYS = {"id", "name", "path", "group", "format", "status", "reason", "split",
                "vertices", "faces", "morphs", "head", "slots"}


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fake_suggest(model) -> dict:
    """A deterministic stand-in for the annotate.suggest adapter."""
    names = {m.name for m in model.morphs}
    top = float(model.positions[:, 1].max())
    return {
        "head_top": top,
        "head_bottom": top - 3.0,
        "wink_both": "まばたき" if "まばたき" in names else None,
        "mouth": "あ" if "あ" in names else None,
    }


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` except the catalog's own files -> sha256."""
    return {p.relative_to(root).as_posix(): sha(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith("catalog.sqlite")}


def dump(lib: Path) -> str:
    conn = sqlite3.connect(lib / "catalog.sqlite")
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def fake_id(i: int) -> str:
    return hashlib.sha256(f"model {i}".encode()).hexdigest()


def record(i: int, **kw) -> ModelRecord:
    fields = dict(id=fake_id(i), path=f"models/g{i % 50}/m{i}/m{i}.pmx", format="pmx", name=f"model {i}",
                  group=f"g{i % 50}", vertices=100 + i, faces=50 + i, morphs=i % 20, file_size=1000 + i)
    fields.update(kw)
    return ModelRecord(**fields)


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory) -> Path:
    """The example character in a folder named ``example``."""
    path = write_example(tmp_path_factory.mktemp("src") / "example")
    return path.parent


@pytest.fixture(scope="module")
def populated(tmp_path_factory, example_dir, gene_pmx, gene_pmd):
    """A library holding the example character and Gene (PMX and PMD)."""
    lib = tmp_path_factory.mktemp("libs") / "lib"
    with Catalog.open(lib, create=True) as cat:
        report = add_models(cat, [example_dir, gene_pmx, gene_pmd], suggest=fake_suggest, progress=False)
    return lib, report


@pytest.fixture
def cli_main():
    from mmdsynth import cli

    return cli.main


# ---------------------------------------------------------------------------
# add_models
# ---------------------------------------------------------------------------


def test_add_records_and_copies_models(populated, example_dir, gene_pmx, gene_pmd):
    lib, report = populated
    assert report.summary() == "added 3, already present 0, errors 0"
    assert [e.outcome for e in report.entries] == ["added"] * 3
    with Catalog.open(lib) as cat:
        rows = cat.models()
        assert [r.path for r in rows] == [
            "models/example/example/example.pmx",
            "models/gene/gene/Gene_light.pmd",
            "models/gene/gene/Gene_light.pmx",
        ]
        by_path = {r.path: r for r in rows}
        ex, pmd, pmx = (by_path[p] for p in (r.path for r in rows))
        assert ex.id == sha(example_dir / "example.pmx")
        assert pmx.id == sha(gene_pmx) and pmd.id == sha(gene_pmd) and pmx.id != pmd.id
        assert [r.group for r in rows] == ["example", "gene", "gene"]
        assert all(r.status == "ok" and r.reason == "" for r in rows)
        assert (pmx.format, pmx.vertices, pmx.faces, pmx.morphs) == ("pmx", 28646, 47106, 184)
        assert (pmd.format, pmd.vertices, pmd.morphs) == ("pmd", 28646, 177)
        assert pmx.name == "ジェネ / Gene" and ex.morphs == 7
        assert pmx.file_size == gene_pmx.stat().st_size
        assert pmx.source_path == str(gene_pmx.absolute())
        for r in rows:
            path = cat.model_path(r.id)
            assert path.is_absolute() and path == lib.absolute() / r.path
            assert sha(path) == r.id
            # the copy resolves every texture inside the library
            copy = load_model(path)
            assert texture_report(copy)["missing"] == []
            for i in range(len(copy.textures)):
                assert copy.texture_path(i).is_relative_to(path.parent)
    # only the referenced textures were copied (Gene's folder has two more)
    gene_textures = {p.name for p in (lib / "models/gene/gene/light").iterdir()}
    assert len(gene_textures) == 10 and "eye_msk.png" not in gene_textures
    for name in gene_textures:
        assert sha(lib / "models/gene/gene/light" / name) == sha(gene_pmx.parent / "light" / name)
    assert sorted(p.name for p in (lib / "models/example/example/tex").iterdir()) == sorted(
        p.name for p in (example_dir / "tex").iterdir())
    assert not [p for p in lib.rglob("*.tmp")]


def test_add_stores_suggestions_as_auto(populated, gene_pmx):
    lib, _ = populated
    with Catalog.open(lib) as cat:
        ann = cat.annotations(sha(gene_pmx))
        assert set(ann) == {"head_top", "head_bottom", "wink_both", "mouth"}
        assert all(v.origin == "auto" for v in ann.values())
        assert ann["mouth"].value == "あ" and ann["wink_both"].value == "まばたき"
        top, bottom, origin = cat.head_bounds(sha(gene_pmx))
        assert top - bottom == pytest.approx(3.0) and origin == "auto"
        assert cat.assignment(sha(gene_pmx)) == MorphAssignment(wink_both="まばたき", mouth="あ")


def test_readd_changes_nothing(populated, example_dir, gene_pmx, gene_pmd):
    lib, _ = populated
    before_db, before_files = dump(lib), tree(lib)
    with Catalog.open(lib) as cat:
        report = add_models(cat, [gene_pmd, example_dir, gene_pmx, lib / "models"], suggest=fake_suggest, progress=False)
    assert report.summary() == "added 0, already present 3, errors 0"
    assert {e.path for e in report.present} == {"models/example/example/example.pmx",
                                                 "models/gene/gene/Gene_light.pmd", "models/gene/gene/Gene_light.pmx"}
    assert dump(lib) == before_db
    assert tree(lib) == before_files


def test_same_folder_name_never_overwrites(tmp_path, gene_pmx):
    a = tmp_path / "dl1" / "char"
    b = tmp_path / "dl2" / "char"
    write_example(a)
    b.mkdir(parents=True)
    (b / "example.pmx").write_bytes(gene_pmx.read_bytes())  # another file, same name and folder name
    lib = tmp_path / "lib"
    with Catalog.open(lib, create=True) as cat:
        first = add_models(cat, [a / "example.pmx"], progress=False)
        second = add_models(cat, [b / "example.pmx"], progress=False)
        assert first.entries[0].path == "models/char/char/example.pmx"
        assert second.entries[0].path == "models/char/char-2/example.pmx"
        assert sha(lib / first.entries[0].path) == sha(a / "example.pmx")
        assert sha(lib / second.entries[0].path) == sha(gene_pmx)
        # the same source folder, edited file: a third folder, the others untouched
        model = load_model(a / "example.pmx")
        model.name = "edited"
        save_pmx(model, a / "example.pmx")
        third = add_models(cat, [a / "example.pmx"], progress=False)
        assert third.entries[0].path == "models/char/char-3/example.pmx"
        assert cat.count() == 3
        assert sha(lib / first.entries[0].path) == first.entries[0].model_id


def test_group_option_and_outside_textures(tmp_path):
    src = tmp_path / "download" / "body"
    src.mkdir(parents=True)
    (tmp_path / "download" / "shared").mkdir()
    (tmp_path / "download" / "shared" / "skin.png").write_bytes(b"\x89PNG fake skin")
    model = quad_model()
    model.textures = ["..\\shared\\skin.png", "missing.bmp"]
    save_pmx(model, src / "quad.pmx")
    lib = tmp_path / "lib"
    with Catalog.open(lib, create=True) as cat:
        report = add_models(cat, [src], group="touhou", progress=False)
        (entry,) = report.added
        assert entry.path == "models/touhou/body/quad.pmx"
        assert any("missing.bmp" in w and "not found" in w for w in entry.warnings)
        row = cat.get(entry.model_id)
        assert row.group == "touhou" and "missing.bmp" in row.notes
        copy = load_model(cat.model_path(entry.model_id))
    assert (lib / "models/touhou/body/skin.png").read_bytes() == b"\x89PNG fake skin"
    assert texture_report(copy)["missing"] == ["missing.bmp"]
    with Catalog.open(lib) as cat, pytest.raises(ValueError, match="single folder name"):
        add_models(cat, [src], group="a/b", progress=False)


def test_broken_model_is_recorded_and_others_added(tmp_path, gene_pmx, example_dir):
    bad = tmp_path / "broken" / "Gene_light.pmx"
    bad.parent.mkdir()
    data = gene_pmx.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    lib = tmp_path / "lib"
    with Catalog.open(lib, create=True) as cat:
        report = add_models(cat, [bad, example_dir], suggest=fake_suggest, progress=False)
        assert report.summary() == "added 1, already present 0, errors 1"
        (err,) = report.errors
        assert err.model_id == sha(bad) and "\n" not in err.message
        assert err.message.startswith("Gene_light.pmx: byte ")
        row = cat.get(sha(bad))
        assert (row.status, row.reason, row.format) == ("error", err.message, "pmx")
        assert row.vertices is None and row.faces is None and row.morphs is None
        assert cat.annotations(row.id) == {}
        assert cat.model_path(row.id).read_bytes() == bad.read_bytes()
        assert cat.count(status="ok") == 1
        # unreadable bytes of any kind: still an error entry, never an exception
        junk = tmp_path / "junk" / "x.pmd"
        junk.parent.mkdir()
        junk.write_bytes(b"Pmd" + b"\xff" * 7)
        again = add_models(cat, [junk, bad], progress=False)
        assert [e.outcome for e in again.entries] == ["error", "present"]


def test_failing_or_bad_suggestions_record_nothing(tmp_path, example_dir):
    def boom(model):
        raise RuntimeError("no head")

    def half_bad(model):
        return {"head_top": float("nan"), "mouth": "あ", "nonsense": 1}

    lib = tmp_path / "lib"
    with Catalog.open(lib, create=True) as cat:
        (entry,) = add_models(cat, [example_dir], suggest=boom, progress=False).entries
        assert entry.outcome == "added" and any("no head" in w for w in entry.warnings)
        assert cat.annotations(entry.model_id) == {}
    lib2 = tmp_path / "lib2"
    with Catalog.open(lib2, create=True) as cat:
        (entry,) = add_models(cat, [example_dir], suggest=half_bad, progress=False).entries
        assert set(cat.annotations(entry.model_id)) == {"mouth"}
        assert len([w for w in entry.warnings if w.startswith("suggestion dropped")]) == 2


def test_find_model_files_skips_junk(tmp_path):
    (tmp_path / "a" / "__MACOSX").mkdir(parents=True)
    (tmp_path / "a" / ".hidden").mkdir()
    for p in ["a/x.PMX", "a/y.pmd", "a/._x.pmx", "a/__MACOSX/z.pmx", "a/.hidden/h.pmx", "a/readme.txt"]:
        (tmp_path / p).write_bytes(b"")
    found = find_model_files([tmp_path / "a", tmp_path / "a" / "y.pmd"])
    assert [p.name for p in found] == ["x.PMX", "y.pmd"]
    with pytest.raises(FileNotFoundError):
        find_model_files([tmp_path / "nope"])


# ---------------------------------------------------------------------------
# Annotations
# ---------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path):
    """An empty-ish library with three synthetic model rows."""
    cat = Catalog.open(tmp_path / "lib", create=True)
    for i in range(3):
        assert cat.insert_model(record(i))
    yield cat
    cat.close()


def test_auto_never_overwrites_human(small):
    m = fake_id(0)
    assert small.set_annotations(m, {"head_top": 10.0, "head_bottom": 8, "mouth": "あ"}, "auto").keys() == {
        "head_top", "head_bottom", "mouth"}
    assert small.annotations(m)["head_bottom"].value == 8.0
    assert small.set_annotations(m, {"mouth": "あ"}, "auto") == {}  # same value: no change
    changed = small.set_annotations(m, {"head_top": 11.0}, "human")  # human over auto
    assert set(changed) == {"head_top"} and changed["head_top"].origin == "human"
    assert small.set_annotations(m, {"head_top": 12.0, "mouth": "ア"}, "auto") == {"mouth": small.annotations(m)["mouth"]}
    ann = small.annotations(m)
    assert ann["head_top"].value == 11.0 and ann["head_top"].origin == "human"
    assert ann["mouth"] == (("ア", "auto", ann["mouth"].updated_at))
    assert small.head_bounds(m) == (11.0, 8.0, "auto")  # one bound still auto
    small.set_annotation(m, "head_bottom", 8.0, "human")  # confirming an auto value
    assert small.head_bounds(m) == (11.0, 8.0, "human")
    # newer human over older human
    assert small.set_annotation(m, "head_top", 11.5, "human")
    assert small.annotations(m)["head_top"].value == 11.5


def test_explicit_none_differs_from_not_annotated(small):
    m = fake_id(1)
    small.set_annotations(m, {"wink_left": None, "head_top": None, "head_bottom": None}, "human")
    ann = small.annotations(m)
    assert ann["wink_left"].value is None and ann["wink_left"].origin == "human"
    assert "wink_right" not in ann
    row = next(r for r in small.listing() if r["id"] == m)
    assert row["slots"]["wink_left"] == "human" and row["slots"]["wink_right"] == "missing"
    assert row["head"] == "none"
    assert small.head_bounds(m) is None
    assert small.assignment(m) == MorphAssignment()
    # a suggestion cannot fill a slot a person said is empty
    assert small.set_annotation(m, "wink_left", "ウィンク", "auto") is False
    assert small.clear_annotations(m, ["wink_left"]) == ["wink_left"]
    assert "wink_left" not in small.annotations(m)


def test_timestamps_decide_between_equal_origins(small):
    m = fake_id(2)
    small.set_annotation(m, "mouth", "あ", "human", updated_at="2024-01-02T00:00:00Z")
    assert not small.set_annotation(m, "mouth", "い", "human", updated_at="2024-01-01T00:00:00Z")  # older
    assert not small.set_annotation(m, "mouth", "い", "human", updated_at="2024-01-02T00:00:00+00:00")  # tie
    assert small.set_annotation(m, "mouth", "う", "human", updated_at="2024-01-03T09:00:00+09:00")  # = 00:00Z, newer
    assert small.annotations(m)["mouth"] == ("う", "human", "2024-01-03T00:00:00.000000Z")
    # a live change wins even over a value stamped in the future (clock skew) and sorts after it
    small.set_annotation(m, "mouth", "え", "human", updated_at="2999-01-01T00:00:00Z")
    assert small.set_annotation(m, "mouth", "お", "human")
    assert small.annotations(m)["mouth"].updated_at == "2999-01-01T00:00:00.000001Z"


def test_bad_input_is_refused(small):
    m = fake_id(0)
    for values, origin in [({"head_top": "high"}, "human"), ({"head_top": True}, "human"),
                           ({"head_top": float("inf")}, "human"), ({"mouth": ""}, "human"),
                           ({"mouth": 3}, "human"), ({"ears": "x"}, "human"), ({"mouth": "あ"}, "robot")]:
        with pytest.raises(ValueError):
            small.set_annotations(m, values, origin)
    assert small.annotations(m) == {}
    with pytest.raises(KeyError):
        small.set_annotations("0" * 64, {"mouth": "あ"}, "human")
    with pytest.raises(KeyError):
        small.model_path("0" * 64)
    assert small.get("0" * 64) is None
    with pytest.raises(ValueError):
        small.set_status(m, "lost")
    with pytest.raises(ValueError):
        small.insert_model(record(9, path="C:\\x.pmx"))
    with pytest.raises(sqlite3.IntegrityError):
        small.insert_model(record(9, path=record(0).path))
    assert small.insert_model(record(0)) is False


def test_status_split_and_lookup(small):
    m = fake_id(0)
    small.set_status(m, "unusable", "no face\nat all")
    small.set_split(m, "val")
    row = small.get(m)
    assert (row.status, row.reason, row.split) == ("unusable", "no face at all", "val")
    assert [r.id for r in small.models(status="unusable")] == [m]
    assert [r.id for r in small.models(split="val")] == [m]
    assert small.count() == 3 and small.count("ok") == 2
    assert small.resolve_id(m[:10].upper()) == m
    with pytest.raises(KeyError):
        small.resolve_id("zz")
    with pytest.raises(ValueError):
        small.set_split(m, "holdout")


def test_nested_transactions(small):
    m = fake_id(0)
    with small.transaction():
        small.set_annotation(m, "mouth", "あ", "human")
        with pytest.raises(RuntimeError):
            with small.transaction():
                small.set_annotation(m, "wink_left", "ウィンク", "human")
                raise RuntimeError
    assert set(small.annotations(m)) == {"mouth"}
    with pytest.raises(RuntimeError):
        with small.transaction():
            small.set_status(m, "unusable")
            raise RuntimeError
    assert small.get(m).status == "ok"


# ---------------------------------------------------------------------------
# Export / import
# ---------------------------------------------------------------------------


def test_export_import_between_libraries(tmp_path):
    a = Catalog.open(tmp_path / "a", create=True)
    b = Catalog.open(tmp_path / "b", create=True)
    m1, m2, m3, m4 = (fake_id(i) for i in range(4))
    for i in (0, 1, 2):
        a.insert_model(record(i))
    for i in (0, 1, 3):
        b.insert_model(record(i))
    t1, t2, t3 = "2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"
    a.set_annotations(m1, {"head_top": 10.0, "head_bottom": 7.0}, "human", updated_at=t2)
    a.set_annotations(m1, {"wink_left": "ウィンク"}, "auto", updated_at=t2)
    a.set_annotations(m2, {"mouth": None}, "human", updated_at=t1)
    a.set_annotations(m2, {"wink_right": "ウィンク右"}, "human", updated_at=t3)
    a.set_annotations(m3, {"mouth": "あ"}, "human", updated_at=t1)
    b.set_annotations(m1, {"head_top": 9.0, "head_bottom": 6.0}, "auto", updated_at=t3)  # auto: loses to human
    b.set_annotations(m1, {"wink_left": "ウィンク２"}, "human", updated_at=t1)  # human: auto never beats it
    b.set_annotations(m2, {"mouth": "あ"}, "human", updated_at=t2)  # newer human: kept
    b.set_annotations(m2, {"wink_right": "wink_r"}, "human", updated_at=t2)  # older human: replaced
    b.set_annotations(m4, {"mouth": "あ"}, "auto", updated_at=t1)

    out = tmp_path / "ann.json"
    assert a.export_annotations(out) == 3
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["format"] == "mmdsynth-annotations" and doc["version"] == 1
    assert doc["models"][m2]["annotations"]["mouth"] == {"value": None, "origin": "human",
                                                         "updated_at": "2024-01-01T00:00:00.000000Z"}
    assert not list(tmp_path.glob(".ann.json*"))

    report = b.import_annotations(out)
    assert report.missing == [m3] and report.models_in_document == 3
    assert (report.values_changed, report.models_changed, report.kept) == (3, 2, 2)
    ann1, ann2 = b.annotations(m1), b.annotations(m2)
    assert b.head_bounds(m1) == (10.0, 7.0, "human")
    assert ann1["head_top"].updated_at == "2024-02-01T00:00:00.000000Z"  # the exported timestamp is kept
    assert ann1["wink_left"] == ("ウィンク２", "human", "2024-01-01T00:00:00.000000Z")
    assert ann2["mouth"].value == "あ"
    assert ann2["wink_right"] == ("ウィンク右", "human", "2024-03-01T00:00:00.000000Z")
    assert b.annotations(m4)["mouth"].value == "あ"
    assert fake_id(2) not in b
    before = dump(tmp_path / "b")
    again = b.import_annotations(out)
    assert again.values_changed == 0 and again.unchanged == 3 and dump(tmp_path / "b") == before
    # the other direction: a's human values survive b's export
    b.export_annotations(tmp_path / "back.json")
    a.import_annotations(tmp_path / "back.json")
    assert a.annotations(m1)["wink_left"] == ("ウィンク２", "human", "2024-01-01T00:00:00.000000Z")
    assert a.head_bounds(m1) == (10.0, 7.0, "human")
    a.close()
    b.close()


def test_import_refuses_bad_documents(small, tmp_path):
    good = small.export_document()
    cases = {
        "not json": "{",
        "other format": json.dumps({"format": "x", "version": 1, "models": {}}),
        "newer": json.dumps({**good, "version": 99}),
        "bad origin": json.dumps({**good, "models": {fake_id(0): {"annotations": {
            "mouth": {"value": "あ", "origin": "god", "updated_at": "2024-01-01T00:00:00Z"}}}}}),
        "bad value": json.dumps({**good, "models": {fake_id(0): {"annotations": {
            "head_top": {"value": "x", "origin": "human", "updated_at": "2024-01-01T00:00:00Z"}}}}}),
        "bad time": json.dumps({**good, "models": {fake_id(0): {"annotations": {
            "mouth": {"value": "あ", "origin": "human", "updated_at": "yesterday"}}}}}),
    }
    for label, text in cases.items():
        path = tmp_path / f"{label}.json"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(CatalogError) as info:
            small.import_annotations(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value), label
    assert small.annotations(fake_id(0)) == {}


# ---------------------------------------------------------------------------
# Opening, schema, migrations
# ---------------------------------------------------------------------------


def test_open_refuses_what_is_not_a_library(tmp_path):
    with pytest.raises(CatalogError, match="no such library"):
        Catalog.open(tmp_path / "nope")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.txt").write_text("x")
    with pytest.raises(CatalogError, match="not an mmdsynth library"):
        Catalog.open(tmp_path / "folder")
    with pytest.raises(CatalogError, match="not empty"):
        Catalog.open(tmp_path / "folder", create=True)
    with pytest.raises(CatalogError, match="is a file"):
        Catalog.open(tmp_path / "folder" / "x.txt", create=True)
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "catalog.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CatalogError, match="catalog"):
        Catalog.open(tmp_path / "garbage")
    (tmp_path / "alien").mkdir()
    conn = sqlite3.connect(tmp_path / "alien" / "catalog.sqlite")
    conn.execute("PRAGMA application_id = 42")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(CatalogError, match="not an mmdsynth catalog"):
        Catalog.open(tmp_path / "alien")
    (tmp_path / "empty").mkdir()
    with Catalog.open(tmp_path / "empty", create=True) as cat:  # an empty folder is adopted
        assert (tmp_path / "empty" / "models").is_dir() and cat.count() == 0
    with Catalog.open(tmp_path / "empty" / "catalog.sqlite") as cat:  # the file itself is accepted
        assert cat.library == (tmp_path / "empty").absolute()


def test_pragmas_wal_full_foreign_keys(small):
    conn = small.connection
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert small.schema_version == SCHEMA_VERSION
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"models_group", "models_status", "models_split", "annotations_key_origin"} <= indexes
    plan = " ".join(r[-1] for r in conn.execute("EXPLAIN QUERY PLAN SELECT id FROM models WHERE status = 'ok'"))
    assert "models_status" in plan


def test_upgrade_from_v0(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "catalog.sqlite").write_bytes(b"")  # version 0: an empty database
    with Catalog.open(lib) as cat:
        assert cat.schema_version == SCHEMA_VERSION
        assert cat.insert_model(record(0))
        meta = dict(cat.connection.execute("SELECT key, value FROM meta"))
        assert meta["created_by"].startswith("mmdsynth")


def _hand_made_v1(lib: Path) -> None:
    """A version-1 catalog written with plain sqlite3 (no Catalog code)."""
    lib.mkdir()
    conn = sqlite3.connect(lib / "catalog.sqlite")
    conn.executescript(textwrap.dedent("""
        CREATE TABLE models (id TEXT PRIMARY KEY NOT NULL CHECK (length(id) = 64), path TEXT NOT NULL UNIQUE,
            format TEXT NOT NULL DEFAULT '', name TEXT NOT NULL DEFAULT '', name_en TEXT NOT NULL DEFAULT '',
            source_group TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'ok', reason TEXT NOT NULL DEFAULT '',
            vertices INTEGER, faces INTEGER, morphs INTEGER, file_size INTEGER NOT NULL DEFAULT 0,
            source_path TEXT NOT NULL DEFAULT '', notes TEXT NOT NULL DEFAULT '', split TEXT,
            added_at TEXT NOT NULL, updated_at TEXT NOT NULL);
        CREATE INDEX models_group ON models (source_group, path);
        CREATE INDEX models_status ON models (status);
        CREATE INDEX models_split ON models (split);
        CREATE TABLE annotations (model_id TEXT NOT NULL REFERENCES models (id) ON DELETE CASCADE,
            key TEXT NOT NULL, value, origin TEXT NOT NULL CHECK (origin IN ('auto', 'human')),
            updated_at TEXT NOT NULL, PRIMARY KEY (model_id, key)) WITHOUT ROWID;
        CREATE INDEX annotations_key_origin ON annotations (key, origin);
        CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID;
        PRAGMA application_id = 1296909395;
        PRAGMA user_version = 1;
    """))
    conn.execute("INSERT INTO models (id, path, source_group, added_at, updated_at, name) VALUES (?, ?, 'g', 't', 't', 'old')",
                 (fake_id(0), "models/g/m/m.pmx"))
    conn.execute("INSERT INTO annotations VALUES (?, 'mouth', 'あ', 'human', '2024-01-01T00:00:00.000000Z')", (fake_id(0),))
    conn.commit()
    conn.close()


def test_hand_made_v1_opens_and_upgrades(tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    _hand_made_v1(lib)
    with Catalog.open(lib) as cat:  # the current version upgrades it, keeping every row
        assert cat.schema_version == SCHEMA_VERSION and cat.get(fake_id(0)).name == "old"
        assert cat.assignment(fake_id(0)).mouth == "あ"
        assert f"migrated_1_to_{SCHEMA_VERSION}" in dict(cat.connection.execute("SELECT key, value FROM meta"))

    # A later issue appends a step: opening the catalog upgrades it in one transaction.
    step = ("ALTER TABLE models ADD COLUMN duplicate_of TEXT REFERENCES models (id)",
            "CREATE INDEX models_duplicate_of ON models (duplicate_of)")
    monkeypatch.setattr(catalog_mod, "MIGRATIONS", [*catalog_mod.MIGRATIONS, step])
    monkeypatch.setattr(catalog_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with Catalog.open(lib) as cat:
        assert cat.schema_version == SCHEMA_VERSION + 1
        columns = {r[1] for r in cat.connection.execute("PRAGMA table_info(models)")}
        assert "duplicate_of" in columns
        assert cat.get(fake_id(0)).name == "old" and cat.annotations(fake_id(0))["mouth"].value == "あ"
        assert f"migrated_{SCHEMA_VERSION}_to_{SCHEMA_VERSION + 1}" in dict(cat.connection.execute("SELECT key, value FROM meta"))


def test_failed_migration_rolls_back(tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    _hand_made_v1(lib)
    step = ("ALTER TABLE models ADD COLUMN duplicate_of TEXT", "CREATE INDEX broken ON no_such_table (x)")
    monkeypatch.setattr(catalog_mod, "MIGRATIONS", [*catalog_mod.MIGRATIONS, step])
    monkeypatch.setattr(catalog_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(CatalogError, match="cannot upgrade catalog from schema version 1"):
        Catalog.open(lib)
    conn = sqlite3.connect(lib / "catalog.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "duplicate_of" not in {r[1] for r in conn.execute("PRAGMA table_info(models)")}
    # all or nothing: the steps before the broken one are rolled back too
    assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'scan_sources'").fetchone()
    conn.close()


def test_newer_catalog_is_refused(tmp_path, cli_main, capsys):
    lib = tmp_path / "lib"
    Catalog.open(lib, create=True).close()
    conn = sqlite3.connect(lib / "catalog.sqlite")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(CatalogError, match="newer than this mmdsynth supports"):
        Catalog.open(lib)
    assert cli_main(["catalog", str(lib)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "newer" in err


# ---------------------------------------------------------------------------
# Concurrency and crashes
# ---------------------------------------------------------------------------


def test_reader_sees_committed_state_while_writer_works(small):
    m = fake_id(0)
    reader = Catalog.open(small.library, timeout=0.5)
    try:
        with small.transaction():
            small.set_annotation(m, "mouth", "あ", "human")
            t0 = time.perf_counter()
            assert reader.annotations(m) == {}  # not blocked, not dirty
            assert [r["slots"]["mouth"] for r in reader.listing()][0] == "missing"
            assert time.perf_counter() - t0 < 0.4
        assert reader.annotations(m)["mouth"].value == "あ"
        # a long read (snapshot) does not block a writer either
        with reader.snapshot():
            reader.models()
            small.set_annotation(m, "mouth", "い", "human")
            assert reader.annotations(m)["mouth"].value == "あ"  # its snapshot
            with pytest.raises(RuntimeError):
                reader.set_status(m, "unusable")
        assert reader.annotations(m)["mouth"].value == "い"
    finally:
        reader.close()


def test_committed_changes_survive_sigkill(small):
    m = fake_id(0)
    script = textwrap.dedent(f"""
        import sys, time
        from mmdsynth.datasets.catalog import Catalog
        cat = Catalog.open({str(small.library)!r})
        cat.set_annotation({m!r}, "mouth", "あ", "human")      # committed
        cat.connection.execute("BEGIN IMMEDIATE")
        cat.connection.execute("UPDATE models SET status = 'unusable'")  # never committed
        print("ready", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    with Catalog.open(small.library) as cat:
        assert cat.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert cat.annotations(m)["mouth"] == ("あ", "human", cat.annotations(m)["mouth"].updated_at)
        assert cat.count("ok") == 3
        cat.set_annotation(m, "wink_left", "ウィンク", "human")  # the lock is gone


def test_listing_ten_thousand_models(tmp_path):
    with Catalog.open(tmp_path / "lib", create=True) as cat:
        t0 = time.perf_counter()
        with cat.transaction():
            for i in range(10_000):
                cat.insert_model(record(i))
                if i % 3 == 0:
                    cat.set_annotations(fake_id(i), {"head_top": 20.0, "head_bottom": 17.0, "mouth": "あ"}, "auto")
        t1 = time.perf_counter()
        rows = cat.listing()
        t2 = time.perf_counter()
        ok = cat.models(status="ok")
        t3 = time.perf_counter()
    print(f"\n10,000 models: insert {t1 - t0:.2f}s, listing {t2 - t1:.3f}s, models(status) {t3 - t2:.3f}s")
    assert len(rows) == len(ok) == 10_000
    assert sum(r["head"] == "auto" for r in rows) == 3334
    assert [r["group"] for r in rows] == sorted(r["group"] for r in rows)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def test_cli_add_catalog_export_import(tmp_path, cli_main, capsys, example_dir, gene_pmx, gene_pmd):
    pytest.importorskip("mmdsynth.annotate.suggest")
    lib = tmp_path / "lib"
    assert cli_main(["add", str(lib), str(example_dir), str(gene_pmx), str(gene_pmd)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("added 3, already present 0, errors 0")

    assert cli_main(["catalog", str(lib), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and all(set(r) == LISTING_KEYS for r in rows)
    gene = next(r for r in rows if r["id"] == sha(gene_pmx))
    assert (gene["group"], gene["status"], gene["format"], gene["vertices"]) == ("gene", "ok", "pmx", 28646)
    assert gene["path"] == "models/gene/gene/Gene_light.pmx"
    assert gene["head"] == "auto" and set(gene["slots"]) == set(EXPRESSION_SLOTS)
    assert set(gene["slots"].values()) == {"auto"}  # the suggestions filled every slot
    with Catalog.open(lib) as cat:
        ann = cat.annotations(sha(gene_pmx))
        assert set(ann) == set(ANNOTATION_KEYS)
        top, bottom, _ = cat.head_bounds(sha(gene_pmx))
        assert top > bottom
        assert cat.assignment(sha(gene_pmx)).wink_both == "まばたき"
        cat.set_annotation(sha(gene_pmx), "mouth", None, "human")

    assert cli_main(["catalog", str(lib)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split() == ["ID", "STATUS", "GROUP", "HEAD", "SLOTS", "h/a/-", "NAME"]
    assert any(line.startswith(sha(gene_pmx)[:12]) and "1/6/0" in line for line in text)
    assert text[-1] == "3 models: ok 3"

    assert cli_main(["add", str(lib), str(gene_pmx)]) == 0
    assert capsys.readouterr().out.startswith("added 0, already present 1, errors 0")

    out_json = tmp_path / "ann.json"
    assert cli_main(["catalog", "export", str(lib), str(out_json)]) == 0
    assert "3 models" in capsys.readouterr().out
    lib2 = tmp_path / "lib2"
    assert cli_main(["add", str(lib2), str(gene_pmx), "--no-suggest"]) == 0
    capsys.readouterr()
    assert cli_main(["catalog", "import", str(lib2), str(out_json)]) == 0
    captured = capsys.readouterr()
    assert "9 values changed in 1 model" in captured.out and "2 models not in the library" in captured.out
    assert captured.err.count("not in this library") == 2
    with Catalog.open(lib2) as cat:
        mouth = cat.annotations(sha(gene_pmx))["mouth"]
        assert (mouth.value, mouth.origin) == (None, "human")  # "no such morph", carried over


def test_cli_bad_input_is_one_line(tmp_path, cli_main, capsys, gene_pmx):
    cases = [
        ["catalog", str(tmp_path / "nope")],
        ["catalog", str(gene_pmx)],
        ["catalog", "export", str(tmp_path / "nope"), str(tmp_path / "o.json")],
        ["catalog", "import", str(tmp_path / "nope"), str(tmp_path / "missing.json")],
        ["catalog", "a", "b"],
        ["add", str(tmp_path / "lib"), str(tmp_path / "no_model.pmx")],
        ["add", str(gene_pmx.parent), str(gene_pmx)],  # an existing non-library folder
        ["add", str(tmp_path / "lib"), str(gene_pmx), "--group", "a/b"],
    ]
    for argv in cases:
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error:" in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "lib").exists()


def test_cli_add_reports_broken_models(tmp_path, cli_main, capsys, gene_pmx, example_dir):
    bad = tmp_path / "broken" / "bad.pmx"
    bad.parent.mkdir()
    bad.write_bytes(gene_pmx.read_bytes()[:5000])
    assert cli_main(["add", str(tmp_path / "lib"), str(bad), str(example_dir), "--no-suggest"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("added 1, already present 0, errors 1")
    assert "mmdsynth add: error: bad.pmx: byte" in captured.err
    assert cli_main(["catalog", str(tmp_path / "lib")]) == 0
    out = capsys.readouterr().out
    assert "error" in out and "bad.pmx" in out and out.splitlines()[-1] == "2 models: error 1, ok 1"


def test_datasets_imports_no_annotate_qt_or_torch():
    code = ("import sys, mmdsynth.datasets.catalog, mmdsynth.datasets.library; "
            "bad = [m for m in sys.modules if m.startswith(('mmdsynth.annotate', 'PyQt5', 'torch'))]; "
            "print(bad)")
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"


def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for name in ("a", "b"):
        model = quad_model()
        model.name = name
        save_pmx(model, tmp_path / "src" / name / f"{name}.pmx")
    for progress, lib, shown in ((True, "lib1", True), (False, "lib2", False)):
        err = Terminal()
        monkeypatch.setattr(sys, "stderr", err)
        with Catalog.open(tmp_path / lib, create=True) as cat:
            assert len(add_models(cat, [tmp_path / "src"], progress=progress).added) == 2
        monkeypatch.undo()
        assert ("adding: 100%" in err.getvalue()) is shown
