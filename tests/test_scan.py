"""mmdsynth scan: safe extraction (names, traversal, links, bombs, truncation,
nesting; zip, 7z, RAR), worker isolation (hang, memory, crash), character
check, catalog records, reruns. Every archive is built here, in tmp dirs."""

from __future__ import annotations

import io
import os
import shutil
import signal
import struct
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from mmdsynth.datasets.archives import (
    ArchiveError,
    ArchiveLimits,
    ArchiveRefused,
    decode_zip_names,
    extract_archive,
    member_parts,
)
from mmdsynth.datasets.catalog import Catalog
from mmdsynth.datasets.character import check_character
from mmdsynth.datasets.scan import ScanError, ScanLimits, scan_downloads
from mmdsynth.datasets.workers import IsolatedPool
from mmdsynth.mmd.example import build_example_model, write_example
from mmdsynth.mmd.loader import load_model

# ---------------------------------------------------------------------------
# Hand-made archives
# ---------------------------------------------------------------------------


def craft_zip(path: Path, entries: list[dict]) -> Path:
    """A zip written byte by byte, so names, flags, modes and sizes can be anything.

    Entry keys: ``name`` (bytes, raw), ``data`` (bytes), ``flags`` (general
    purpose bits; 0x800 = UTF-8), ``method`` (0 stored, 8 deflate), ``mode``
    (Unix st_mode: made by Unix), ``declared`` (uncompressed size to write),
    ``raw`` (already-deflated data with ``size``/``crc``), ``extra`` (bytes)."""
    out = bytearray()
    central = bytearray()
    for e in entries:
        name, data = e["name"], e.get("data", b"")
        method = e.get("method", 0)
        if "raw" in e:
            comp, crc, size = e["raw"], e["crc"], e["size"]
        else:
            crc, size = zlib.crc32(data), len(data)
            if method == 8:
                c = zlib.compressobj(9, zlib.DEFLATED, -15)
                comp = c.compress(data) + c.flush()
            else:
                comp = data
        size = e.get("declared", size)
        flags, extra = e.get("flags", 0), e.get("extra", b"")
        mode = e.get("mode")
        made_by = (3 << 8 | 20) if mode is not None else 20
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, 0x21, crc, len(comp), size, len(name), len(extra))
        out += name + extra + comp
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, made_by, 20, flags, method, 0, 0x21, crc, len(comp), size,
                               len(name), len(extra), 0, 0, 0, (mode or 0) << 16, offset)
        central += name + extra
    cd = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), cd, 0)
    path.write_bytes(bytes(out))
    return path


def zeros_deflated(n_mib: int) -> tuple[bytes, int, int]:
    """Raw deflate of n MiB of zeros: (data, crc, size) -- a zip bomb's payload."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    parts = [c.compress(chunk) for _ in range(n_mib)]
    crc = 0
    for _ in range(n_mib):
        crc = zlib.crc32(chunk, crc)
    return b"".join(parts) + c.flush(), crc, n_mib << 20


def _rar_header(htype: int, flags: int, body: bytes) -> bytes:
    core = struct.pack("<BHH", htype, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(core) & 0xFFFF) + core


def craft_rar(path: Path, entries: list[dict]) -> Path:
    """A RAR 4 archive of stored members (method 0x30; ``method`` 0x33 marks a
    compressed one), readable by rarfile without an unrar tool."""
    out = b"Rar!\x1a\x07\x00" + _rar_header(0x73, 0, b"\0" * 6)
    for e in entries:
        name, data = e["name"], e.get("data", b"")
        body = struct.pack("<IIBIIBBHI", len(data), len(data), e.get("host", 0), zlib.crc32(data), 0x21, 20,
                           e.get("method", 0x30), len(name), e.get("attr", 0x20)) + name
        out += _rar_header(0x74, 0x8000 | e.get("flags", 0), body) + data
    path.write_bytes(out + _rar_header(0x7B, 0x4000, b""))
    return path


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture
def dest(tmp_path) -> Path:
    d = tmp_path / "lib" / "target"
    d.mkdir(parents=True)
    return d


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------


def test_shift_jis_names_with_and_without_utf8_flag(tmp_path, dest):
    arc = craft_zip(tmp_path / "a.zip", [
        {"name": "初音ミク/テクスチャ/髪.png".encode("cp932"), "data": b"png"},   # no flag: Shift-JIS
        {"name": "初音ミク/ミク.pmx".encode("cp932"), "data": b"pmx"},
        {"name": "表示/ソ.txt".encode("cp932"), "data": b"x"},                    # 0x5C as a second byte
        {"name": "readme_ＵＴＦ.txt".encode("utf-8"), "data": b"r", "flags": 0x800},  # flagged UTF-8
    ])
    result = extract_archive(arc, dest)
    assert result.encoding == "cp932"
    assert {"初音ミク/テクスチャ/髪.png", "初音ミク/ミク.pmx", "表示/ソ.txt", "readme_ＵＴＦ.txt"} <= tree(dest)
    assert (dest / "初音ミク" / "ミク.pmx").read_bytes() == b"pmx"
    with zipfile.ZipFile(arc) as zf:  # what zipfile alone makes of them: cp437 mojibake
        assert "初音ミク/ミク.pmx" not in zf.namelist()


def test_utf8_names_without_flag_and_unicode_path_extra(tmp_path, dest):
    raw = "モデル/a.txt".encode("cp932")
    upath = b"\x01" + struct.pack("<I", zlib.crc32(raw)) + "正しい/a.txt".encode("utf-8")
    arc = craft_zip(tmp_path / "b.zip", [
        {"name": "ユーティーエフ/b.txt".encode("utf-8"), "data": b"b"},  # UTF-8 bytes, no flag (some tools)
        {"name": raw, "data": b"a", "extra": struct.pack("<HH", 0x7075, len(upath)) + upath},
    ])
    with zipfile.ZipFile(arc) as zf:
        names, encoding = decode_zip_names(zf.infolist())
    assert names == ["ユーティーエフ/b.txt", "正しい/a.txt"]
    extract_archive(arc, dest)
    assert {"ユーティーエフ/b.txt", "正しい/a.txt"} <= tree(dest)


@pytest.mark.parametrize("name, ok", [
    ("a/b.txt", True), ("a\\b.txt", True), ("./a//b.txt", True),
    ("../x", False), ("a/../../x", False), ("..\\..\\x", False), ("/etc/x", False), ("\\\\server\\share\\x", False),
    ("C:\\Windows\\x", False), ("c:x", False), ("a/\x00b", False),
])
def test_member_parts(name, ok):
    parts, problem = member_parts(name)
    assert (parts is not None) == ok, problem
    if ok:
        assert parts == ("a", "b.txt")


def test_odd_characters_are_made_portable():
    parts, _ = member_parts('what?/a:b*"c".png ')
    assert parts == ("what_", 'a_b__c_.png')


# ---------------------------------------------------------------------------
# Traversal, links, bombs, truncation, nesting
# ---------------------------------------------------------------------------


def test_traversal_absolute_and_link_entries_are_refused(tmp_path, dest):
    outside = tmp_path / "outside"
    outside.mkdir()
    before = tree(tmp_path)
    arc = craft_zip(tmp_path / "evil.zip", [
        {"name": b"../../outside/dotdot.txt", "data": b"evil"},
        {"name": b"ok/../../../outside/mid.txt", "data": b"evil"},
        {"name": str(outside / "abs.txt").encode(), "data": b"evil"},
        {"name": b"C:\\outside\\drive.txt", "data": b"evil"},
        {"name": b"..\\..\\outside\\back.txt", "data": b"evil"},
        {"name": b"link", "data": str(outside).encode(), "mode": 0o120777},     # a symlink entry
        {"name": b"link/through.txt", "data": b"evil"},                         # ... and a file through it
        {"name": b"fifo", "data": b"", "mode": 0o010644},
        {"name": b"good/model.txt", "data": b"fine"},
    ])
    result = extract_archive(arc, dest)
    assert tree(dest) == {"good", "good/model.txt", "link", "link/through.txt"}  # "link" is a plain folder here
    assert not (dest / "link").is_symlink()
    assert tree(tmp_path) - before == {"evil.zip"} | {f"lib/target/{p}" for p in tree(dest)}
    assert list(outside.iterdir()) == []
    text = "\n".join(result.messages)
    for needle in ("dotdot.txt: unsafe name ('..'", "abs.txt: unsafe name (absolute path)", "drive letter",
                   "link: symbolic link; skipped", "fifo: not a regular file"):
        assert needle in text


def test_zip_bomb_is_refused_and_nothing_is_kept(tmp_path, dest):
    raw, crc, size = zeros_deflated(160)  # 160 MiB of zeros in ~160 KiB: ratio ~1000
    arc = craft_zip(tmp_path / "bomb.zip", [{"name": b"a.pmx", "data": b"x"},
                                            {"name": b"zeros.bmp", "method": 8, "raw": raw, "crc": crc, "size": size}])
    with pytest.raises(ArchiveRefused, match=r"refused: declares 160\.0 MiB .*ratio .* > 100.*zip bomb"):
        extract_archive(arc, dest)
    assert list(dest.iterdir()) == []
    # the same payload behind a header that lies about its size: never written past the lie
    liar = craft_zip(tmp_path / "liar.zip", [{"name": b"zeros.bmp", "method": 8, "raw": raw, "crc": crc, "size": 1000}])
    with pytest.raises(ArchiveError):
        extract_archive(liar, dest)
    assert list(dest.iterdir()) == []
    # a small archive of flat data is fine (the ratio counts above 64 MiB only)
    small = craft_zip(tmp_path / "flat.zip", [{"name": b"flat.bmp", "data": bytes(1 << 20), "method": 8}])
    assert extract_archive(small, dest).bytes == 1 << 20


def test_size_and_count_limits(tmp_path, dest):
    arc = craft_zip(tmp_path / "many.zip", [{"name": f"f{i}.txt".encode(), "data": b"x" * 100} for i in range(50)])
    with pytest.raises(ArchiveRefused, match="50 members"):
        extract_archive(arc, dest, ArchiveLimits(max_members=10))
    with pytest.raises(ArchiveRefused, match="uncompressed"):
        extract_archive(arc, dest, ArchiveLimits(max_bytes=1000))
    assert list(dest.iterdir()) == []


def test_truncated_and_non_archives(tmp_path, dest):
    good = io.BytesIO()
    with zipfile.ZipFile(good, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model/a.pmx", os.urandom(50_000))
    data = good.getvalue()
    (tmp_path / "cut.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match="cut.zip: not a readable zip archive"):
        extract_archive(tmp_path / "cut.zip", dest)
    # central directory intact, member data damaged
    broken = bytearray(data)
    broken[100:400] = bytes(300)
    (tmp_path / "bad.zip").write_bytes(bytes(broken))
    with pytest.raises(ArchiveError, match="bad.zip"):
        extract_archive(tmp_path / "bad.zip", dest)
    (tmp_path / "fake.zip").write_bytes(b"not an archive at all")
    with pytest.raises(ArchiveError, match="not a zip, 7z or RAR archive"):
        extract_archive(tmp_path / "fake.zip", dest)
    assert list(dest.iterdir()) == []


def test_nested_archives_one_level(tmp_path, dest):
    inner2 = io.BytesIO()
    with zipfile.ZipFile(inner2, "w") as zf:
        zf.writestr("deep.txt", "deep")
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("model/m.pmx", "pmx")
        zf.writestr("../escape.txt", "evil")
        zf.writestr("deeper.zip", inner2.getvalue())
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.writestr("pack/inner.zip", inner.getvalue())
        zf.writestr("pack/readme.txt", "hi")
    result = extract_archive(outer, dest)
    assert result.nested == 1
    assert tree(dest) == {"pack", "pack/readme.txt", "pack/inner", "pack/inner/model", "pack/inner/model/m.pmx",
                          "pack/inner/deeper.zip"}
    assert any("deeper.zip: archive nested more than 1 level" in m for m in result.messages)
    assert any("escape.txt: unsafe name" in m for m in result.messages)
    assert not (tmp_path / "lib" / "escape.txt").exists()


def test_nested_bomb_refuses_the_outer_archive(tmp_path, dest):
    raw, crc, size = zeros_deflated(100)
    bomb = craft_zip(tmp_path / "inner.zip", [{"name": b"z.bin", "method": 8, "raw": raw, "crc": crc, "size": size}])
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.write(bomb, "inner.zip")
        zf.writestr("model.pmx", "x")
    with pytest.raises(ArchiveRefused, match="zip bomb"):
        extract_archive(outer, dest)
    assert list(dest.iterdir()) == []


def test_7z_traversal_links_and_names(tmp_path, dest, monkeypatch):
    py7zr = pytest.importorskip("py7zr")
    import py7zr.py7zr as p7

    monkeypatch.setattr(p7, "check_archive_path", lambda name: True)  # let the writer store hostile names
    with py7zr.SevenZipFile(tmp_path / "a.7z", "w") as z:
        z.writestr(b"evil", "../evil.txt")
        z.writestr(b"evil", str(tmp_path / "abs.txt"))
        z.writestr(b"pmx", "キャラ/モデル.pmx")
    src = tmp_path / "src"
    src.mkdir()
    (src / "real.txt").write_text("x")
    os.symlink("/etc/passwd", src / "link")
    with py7zr.SevenZipFile(tmp_path / "b.7z", "w", dereference=False) as z:
        z.write(src / "link", "link")
        z.write(src / "real.txt", "real.txt")
    monkeypatch.undo()
    result = extract_archive(tmp_path / "a.7z", dest)
    assert tree(dest) == {"キャラ", "キャラ/モデル.pmx"}
    assert len(result.messages) == 2 and not (tmp_path / "evil.txt").exists() and not (tmp_path / "abs.txt").exists()
    dest2 = tmp_path / "lib" / "t2"
    dest2.mkdir()
    result = extract_archive(tmp_path / "b.7z", dest2)
    assert tree(dest2) == {"real.txt"} and "link: link; skipped" in result.messages[0]
    (tmp_path / "cut.7z").write_bytes((tmp_path / "a.7z").read_bytes()[:40])
    with pytest.raises(ArchiveError, match="cut.7z"):
        extract_archive(tmp_path / "cut.7z", dest2)


def test_rar_stored_members_and_missing_tool(tmp_path, dest, monkeypatch):
    rarfile = pytest.importorskip("rarfile")
    arc = craft_rar(tmp_path / "a.rar", [
        {"name": b"model/m.pmx", "data": b"pmx"},
        {"name": b"../evil.txt", "data": b"evil"},
        {"name": b"link", "data": b"/etc/passwd", "host": 3, "attr": 0o120777},
        {"name": b"model/tex", "flags": 0xE0, "attr": 0x10},
    ])
    result = extract_archive(arc, dest)
    assert tree(dest) == {"model", "model/m.pmx", "model/tex"}
    assert len(result.messages) == 2 and not (tmp_path / "evil.txt").exists()

    def no_tool(*a, **k):
        raise rarfile.RarCannotExec("Cannot find working tool")

    monkeypatch.setattr(rarfile, "tool_setup", no_tool)
    packed = craft_rar(tmp_path / "packed.rar", [{"name": b"m.pmx", "data": b"xxxx", "method": 0x33}])
    dest2 = tmp_path / "lib" / "t2"
    dest2.mkdir()
    with pytest.raises(ArchiveError, match="packed.rar: cannot extract RAR archives: no unrar tool found"):
        extract_archive(packed, dest2)
    # rarfile reads a damaged header as "no members": unreadable, not "no model inside"
    (tmp_path / "junk.rar").write_bytes(b"Rar!\x1a\x07\x01\x00" + bytes(100))
    (tmp_path / "cut.rar").write_bytes(arc.read_bytes()[:40])
    for bad in ("junk.rar", "cut.rar"):
        with pytest.raises(ArchiveError, match=f"{bad}: not a readable RAR archive"):
            extract_archive(tmp_path / bad, dest2)


# ---------------------------------------------------------------------------
# Worker isolation
# ---------------------------------------------------------------------------


def hook_loader(path):
    """Test hook for the scan workers (picklable: module level)."""
    name = os.path.basename(path)
    if name.startswith("hang"):
        time.sleep(3600)
    if name.startswith("boom"):
        hog = bytearray(64 << 30)  # noqa: F841 - more than any memory limit
    if name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGKILL)
    return load_model(path)


def _sleep(seconds):
    time.sleep(seconds)
    return seconds


def test_isolated_pool_time_and_memory_limits():
    with IsolatedPool(2, memory_mib=256) as pool:
        pool.submit("hang", _sleep, (60,), timeout=1.0)
        pool.submit("quick", _sleep, (0.01,), timeout=30)
        pool.submit("hog", bytearray, (8 << 30,), timeout=30)
        outcomes = {}
        while pool.pending:
            for o in pool.wait(None):
                outcomes[o.key] = o
    assert outcomes["quick"].ok and outcomes["quick"].value == 0.01
    assert outcomes["hang"].kind == "timeout" and "timed out after 1 s" in outcomes["hang"].error
    assert outcomes["hog"].kind == "memory"
    assert outcomes["hang"].seconds < 10


def test_isolated_pool_accepts_a_huge_time_limit():
    """``--timeout 1e9`` (in effect none) used to overflow the OS wait."""
    with IsolatedPool(1) as pool:
        pool.submit("quick", _sleep, (0.01,), timeout=1e12)
        outcomes = []
        while pool.pending:
            outcomes += pool.wait(None)
    assert [(o.key, o.ok, o.value) for o in outcomes] == [("quick", True, 0.01)]


# ---------------------------------------------------------------------------
# The scan
# ---------------------------------------------------------------------------


def _zip_folder(folder: Path, out: Path, prefix: str, cp932: bool = False) -> Path:
    """Zip a folder; with ``cp932`` the names are stored Shift-JIS, without the UTF-8 flag."""
    entries = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            name = f"{prefix}/{p.relative_to(folder).as_posix()}"
            entries.append({"name": name.encode("cp932" if cp932 else "utf-8"), "data": p.read_bytes(), "method": 8,
                            "flags": 0 if cp932 else 0x800})
    return craft_zip(out, entries)


def _crafted_pmd(gene_pmd: Path, out: Path) -> Path:
    """Gene's PMD with a vertex count of 4 billion in its header."""
    data = bytearray(gene_pmd.read_bytes())
    data[283:287] = struct.pack("<I", 0xFFFFFFF0)
    out.write_bytes(bytes(data))
    return out


@pytest.fixture(scope="module")
def downloads(tmp_path_factory, gene_pmx, gene_pmd, babylon_models) -> Path:
    """A downloads folder as users have them: groups of archives and loose files."""
    root = tmp_path_factory.mktemp("scan")
    dl = root / "downloads"
    ex = write_example(root / "src" / "example")
    (dl / "オリジナル").mkdir(parents=True)
    _zip_folder(ex.parent, dl / "オリジナル" / "例のキャラ.zip", "例のキャラ", cp932=True)
    # a byte-identical archive under another name and group (scanned after オリジナル: sorted names),
    # and another archive holding a byte copy of the model
    (dl / "ミラー").mkdir()
    shutil.copy(dl / "オリジナル" / "例のキャラ.zip", dl / "ミラー" / "copy-of-example.zip")
    with zipfile.ZipFile(dl / "ミラー" / "repack.zip", "w") as zf:
        zf.write(ex, "repack/example.pmx")
        zf.writestr("repack/readme.txt", "re-packed")
    # loose Gene (PMX + PMD + textures) in a sub-folder of its group
    gene = dl / "gene" / "Gene"
    gene.mkdir(parents=True)
    for f in (gene_pmx, gene_pmd):
        shutil.copy(f, gene)
    shutil.copytree(gene_pmx.parent / "light", gene / "light")
    # props, not characters, in a nested zip
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        for p in babylon_models[:3]:
            zf.write(p, f"props/{p.name}")
    (dl / "props").mkdir()
    with zipfile.ZipFile(dl / "props" / "props-pack.zip", "w") as zf:
        zf.writestr("pack/props.zip", inner.getvalue())
        zf.writestr("pack/readme.txt", "MIT")
    # hostile and broken things
    (dl / "bad").mkdir()
    outside = root / "outside"
    outside.mkdir()
    craft_zip(dl / "bad" / "evil.zip", [{"name": b"../../../outside/evil.txt", "data": b"evil"},
                                        {"name": str(outside / "abs.txt").encode(), "data": b"evil"},
                                        {"name": b"m/m.pmx", "data": babylon_models[5].read_bytes()},
                                        {"name": b"m/link", "data": b"/etc", "mode": 0o120777}])
    raw, crc, size = zeros_deflated(100)
    craft_zip(dl / "bad" / "bomb.zip", [{"name": b"z.pmx", "method": 8, "raw": raw, "crc": crc, "size": size}])
    (dl / "bad" / "cut.zip").write_bytes((dl / "オリジナル" / "例のキャラ.zip").read_bytes()[:5000])
    _crafted_pmd(gene_pmd, dl / "bad" / "huge-header.pmd")
    (dl / "bad" / "notes.txt").write_text("not a model")
    os.symlink(gene_pmx, dl / "bad" / "linked.pmx")
    return dl


@pytest.fixture(scope="module")
def scanned(downloads, tmp_path_factory):
    lib = tmp_path_factory.mktemp("lib") / "library"
    before = tree(downloads.parent)
    with Catalog.open(lib, create=True) as cat:
        report = scan_downloads(cat, downloads, workers=2, progress=False)
    return lib, report, before


def test_scan_records_models_with_status_and_groups(scanned):
    lib, report, _ = scanned
    with Catalog.open(lib) as cat:
        rows = {r.path: r for r in cat.models()}
    ex = rows["models/オリジナル/例のキャラ/例のキャラ/example.pmx"]  # Shift-JIS names decoded
    assert ex.status == "ok" and ex.group == "オリジナル" and ex.source_path.endswith("例のキャラ.zip!例のキャラ/example.pmx")
    assert rows["models/gene/Gene/Gene_light.pmx"].status == "ok"
    assert rows["models/gene/Gene/Gene_light.pmd"].status == "ok"
    assert (lib / "models/gene/Gene/light/hair2.png").is_file()  # textures copied with the loose model
    props = [r for r in rows.values() if r.group == "props"]
    assert len(props) == 3 and all(r.status == "not_character" for r in props)
    assert all("no 首 bone, no 頭 bone" in r.reason for r in props)
    assert all(r.path.startswith("models/props/props-pack/pack/props/props/") for r in props)  # nested zip, one level
    huge = next(r for r in rows.values() if r.path.endswith("huge-header.pmd"))
    assert huge.status == "error" and "huge-header.pmd" in huge.reason and "byte" in huge.reason
    assert rows["models/bad/evil/m/m.pmx"].status == "not_character"
    assert report.ok == 3 and report.not_characters == 4 and report.errors == 1 and report.present == 1
    # repack.zip holds a byte copy of the example: one catalog entry, two files
    with Catalog.open(lib) as cat:
        copies = cat.byte_copies()
    assert copies == {ex.id: [ex.path, "models/ミラー/repack/repack/example.pmx"]}


def test_scan_refuses_bombs_reports_broken_and_writes_nothing_outside(scanned, downloads):
    lib, report, before = scanned
    assert report.refused == 1 and report.archive_errors == 1
    text = "\n".join(report.messages)
    assert "bomb.zip: refused" in text and "zip bomb" in text
    assert "cut.zip: not a readable zip archive" in text
    assert "evil.txt: unsafe name" in text and "m/link: symbolic link" in text
    assert "linked.pmx: not a regular file" in text
    assert tree(downloads.parent) == before  # nothing written outside LIB (outside/, downloads/ untouched)
    assert not any(p.name.startswith(".partial-") for p in (lib / "models").rglob("*"))
    assert not (lib / ".tmp").exists()
    with Catalog.open(lib) as cat:
        states = {Path(s.path).name: s for s in cat.scan_sources()}
    assert states["bomb.zip"].state == "refused" and states["cut.zip"].state == "error"
    assert states["copy-of-example.zip"].message.startswith("same bytes as")
    assert not (lib / "models" / "ミラー" / "copy-of-example").exists()


def test_rerun_skips_what_it_has(scanned, downloads):
    lib, first, _ = scanned
    with Catalog.open(lib) as cat:
        count = cat.count()
        report = scan_downloads(cat, downloads, workers=1, progress=False)
        assert cat.count() == count
    # the refused bomb and the unreadable cut.zip are tried again (their cause may have gone) and reported again
    assert report.models == 0 and report.extracted == 0 and report.refused == 1 and report.archive_errors == 1
    assert report.skipped_archives == first.archives - 2 and report.skipped == report.skipped_archives + 3  # + 3 loose
    summary = report.summary()
    assert f"archives {first.archives}: 0 extracted, 1 refused, 1 unreadable, {first.archives - 2} already scanned" in summary
    assert "models 0: 0 ok, 0 errors, 0 not characters, 0 already in the library; 3 loose model files already scanned" in summary


def test_failed_archive_is_tried_again_on_rerun(tmp_path):
    """A refusal is not a result to keep: after raising the limit (or installing
    unrar), a rerun extracts the archive."""
    dl = tmp_path / "dl" / "grp"
    dl.mkdir(parents=True)
    ex = write_example(tmp_path / "src")
    _zip_folder(ex.parent, dl / "ex.zip", "ex")
    lib = tmp_path / "lib"
    small = ScanLimits(archive=ArchiveLimits(max_bytes=1000))
    with Catalog.open(lib, create=True) as cat:
        first = scan_downloads(cat, tmp_path / "dl", workers=0, limits=small, progress=False)
        assert first.refused == 1 and cat.count() == 0
        again = scan_downloads(cat, tmp_path / "dl", workers=0, progress=False)
        assert again.extracted == 1 and again.ok == 1 and again.skipped == 0
        assert cat.scan_source(str(dl / "ex.zip")).state == "done"
        third = scan_downloads(cat, tmp_path / "dl", workers=0, progress=False)
        assert third.skipped_archives == 1 and third.extracted == 0  # what it has is skipped


def test_folder_links_and_unreadable_folders_are_reported(tmp_path, monkeypatch):
    """Nothing under DOWNLOADS is skipped without a message."""
    from mmdsynth.datasets.scan import find_sources

    dl = tmp_path / "dl"
    (dl / "grp" / "locked").mkdir(parents=True)
    (dl / "grp" / "m.pmx").write_bytes(b"x")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "far.pmx").write_bytes(b"x")
    os.symlink(tmp_path / "elsewhere", dl / "grp" / "linked")
    os.symlink("..", dl / "grp" / "loop")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    sources, notes = find_sources(dl)
    assert [s.path.name for s in sources] == ["m.pmx"]
    text = "\n".join(notes)
    assert f"{dl / 'grp' / 'linked'}: a link to a folder; skipped" in text
    assert f"{dl / 'grp' / 'loop'}: a link to a folder; skipped" in text
    assert f"{dl / 'grp' / 'locked'}: cannot read this folder: Permission denied; skipped" in text


def test_progress_counts_only_models_still_to_record(tmp_path, monkeypatch, capsys):
    """A resumed archive whose models were partly recorded: the bar ends at its total."""
    import mmdsynth.datasets.scan as scan_mod

    dl = tmp_path / "dl" / "grp"
    dl.mkdir(parents=True)
    ex = write_example(tmp_path / "src")
    (tmp_path / "src" / "second.pmx").write_bytes(ex.read_bytes() + b"\0")  # a second model, other bytes
    _zip_folder(ex.parent, dl / "two.zip", "two")
    lib = tmp_path / "lib"
    with Catalog.open(lib, create=True) as cat:
        scan_downloads(cat, tmp_path / "dl", workers=0, progress=False)
        row = cat.scan_source(str(dl / "two.zip"))
        victim = next(r for r in cat.models() if r.path.endswith("second.pmx"))
        with cat.transaction():  # as if the scan had died after recording one of the two models
            cat.connection.execute("UPDATE scan_sources SET state = 'extracted' WHERE path = ?", (row.path,))
            cat.connection.execute("DELETE FROM model_files WHERE model_id = ?", (victim.id,))
            cat.connection.execute("DELETE FROM models WHERE id = ?", (victim.id,))
        monkeypatch.setattr(scan_mod, "is_terminal", lambda stream: True)
        capsys.readouterr()
        report = scan_downloads(cat, tmp_path / "dl", workers=0, progress=True)
    assert report.ok == 1 and report.models == 1
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "2/2 " in bar  # the archive and the one model left; it used to end at 2/3


def test_interrupted_archive_is_resumed_not_extracted_again(scanned, downloads):
    lib, _, _ = scanned
    with Catalog.open(lib) as cat:
        row = next(s for s in cat.scan_sources() if s.path.endswith("props-pack.zip"))
        ids = [r.id for r in cat.models(group="props")]
        with cat.transaction():  # as if the scan had died after the extraction, before recording its models
            cat.connection.execute("UPDATE scan_sources SET state = 'extracted' WHERE path = ?", (row.path,))
            cat.connection.executemany("DELETE FROM models WHERE id = ?", [(i,) for i in ids])
            cat.connection.execute("DELETE FROM model_files WHERE source_path LIKE ?", (row.path + "!%",))
        folders = sorted(p.name for p in (lib / "models" / "props").iterdir())
        report = scan_downloads(cat, downloads, workers=1, progress=False)
        assert report.extracted == 0 and report.not_characters == 3
        assert sorted(r.id for r in cat.models(group="props")) == sorted(ids)
        assert sorted(p.name for p in (lib / "models" / "props").iterdir()) == folders
        assert cat.scan_source(row.path).state == "done" and cat.scan_source(row.path).models == 3


def test_hang_memory_and_crash_are_contained(tmp_path, gene_pmd):
    dl = tmp_path / "dl" / "g"
    dl.mkdir(parents=True)
    model = build_example_model()
    from mmdsynth.mmd.pmx_write import save_pmx

    save_pmx(model, tmp_path / "base.pmx")
    data = (tmp_path / "base.pmx").read_bytes()
    for i, name in enumerate(("hang.pmx", "boom.pmx", "crash.pmx", "fine.pmx")):
        (dl / name).write_bytes(data + bytes(i))  # distinct bytes, distinct catalog ids
    lib = tmp_path / "lib"
    limits = ScanLimits(load_timeout_s=3.0, memory_mib=512)
    start = time.perf_counter()
    with Catalog.open(lib, create=True) as cat:
        report = scan_downloads(cat, tmp_path / "dl", workers=2, limits=limits, load_fn=hook_loader, progress=False)
        rows = {Path(r.path).name: r for r in cat.models()}
    assert time.perf_counter() - start < 30
    assert rows["hang.pmx"].status == "error" and "timed out after 3 s" in rows["hang.pmx"].reason
    assert rows["boom.pmx"].status == "error" and "out of memory" in rows["boom.pmx"].reason
    assert rows["crash.pmx"].status == "error" and "worker died" in rows["crash.pmx"].reason
    assert rows["fine.pmx"].status == "ok"
    assert report.errors == 3 and report.ok == 1


def test_downloads_inside_library_and_concurrent_scans(tmp_path):
    lib = tmp_path / "lib"
    with Catalog.open(lib, create=True) as cat:
        with pytest.raises(ScanError, match="inside the library"):
            scan_downloads(cat, lib / "models", workers=0, progress=False)
        import fcntl

        with open(lib / ".scan.lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            (tmp_path / "dl").mkdir()
            with pytest.raises(ScanError, match="another mmdsynth scan"):
                scan_downloads(cat, tmp_path / "dl", workers=0, progress=False)


def test_character_check_reasons(babylon_models, gene_pmx):
    gene = check_character(load_model(gene_pmx), "Gene_light.pmx")
    assert gene.is_character and gene.reason == ""
    assert check_character(build_example_model()).is_character
    prop = check_character(load_model(babylon_models[0]), babylon_models[0].name)
    assert not prop.is_character and "no 首 bone" in prop.reason and "no face morphs" in prop.reason
    m = build_example_model()
    m.bones = [b for b in m.bones if b.name != "首"]
    m.name = "ステージ"
    check = check_character(m)
    assert check.reasons == ("no 首 bone", "a stage or prop (name says 'ステージ')")
    m = build_example_model()
    m.name = "ミク ステージ衣装"  # a stage costume is a character
    assert check_character(m).is_character
    m.positions = m.positions * [20.0, 1.0, 1.0]
    assert "a stage or prop" in check_character(m).reason
    m.morphs = []
    m.positions = m.positions[:100]
    assert "too few vertices (100 < 500)" in check_character(m).reason


def run(argv: list[str]) -> int:
    """The CLI, as a user runs it (returns the exit status)."""
    from mmdsynth.cli import main

    return main(argv)


def test_scan_cli(tmp_path, capsys):
    dl = tmp_path / "dl" / "grp"
    dl.mkdir(parents=True)
    ex = write_example(tmp_path / "src")
    _zip_folder(ex.parent, dl / "ex.zip", "ex")
    (dl / "broken.zip").write_bytes(b"PK\x03\x04 broken")
    code = run(["scan", str(tmp_path / "dl"), "--library", str(tmp_path / "lib"), "--workers", "1"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "archives 2: 1 extracted, 0 refused, 1 unreadable" in out
    assert "models 1: 1 ok, 0 errors, 0 not characters" in out
    assert "broken.zip" in err
    assert run(["scan", str(tmp_path / "missing"), "--library", str(tmp_path / "lib")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_scan_cli_refuses_bad_folders_before_making_a_library(tmp_path, capsys):
    """DOWNLOADS = LIB (an empty folder) or inside a new LIB, or a file: one line, exit 2, no library made."""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(["scan", str(empty), "--library", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "inside the library" in err
    assert list(empty.iterdir()) == []  # no catalog.sqlite, no models/ left in the downloads folder
    (tmp_path / "new" / "dl").mkdir(parents=True)
    assert run(["scan", str(tmp_path / "new" / "dl"), "--library", str(tmp_path / "new")]) == 2
    assert "inside the library" in capsys.readouterr().err and not (tmp_path / "new" / "catalog.sqlite").exists()
    (tmp_path / "file.zip").write_bytes(b"x")
    assert run(["scan", str(tmp_path / "file.zip"), "--library", str(tmp_path / "lib")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "file.zip: not a folder" in err and not (tmp_path / "lib").exists()


@pytest.mark.parametrize("option", [["--max-archive-gb", "inf"], ["--max-archive-gb", "nan"], ["--timeout", "inf"],
                                    ["--max-ratio", "-1"]])
def test_scan_cli_refuses_non_finite_limits(tmp_path, capsys, option):
    """These used to end in an OverflowError traceback (after creating the library)."""
    (tmp_path / "dl").mkdir()
    with pytest.raises(SystemExit) as exc:
        run(["scan", str(tmp_path / "dl"), "--library", str(tmp_path / "lib"), *option])
    assert exc.value.code == 2
    assert f"argument {option[0]}: '{option[1]}' must be a finite number > 0" in capsys.readouterr().err
    assert not (tmp_path / "lib").exists()


def test_scan_cli_tiny_archive_limit_refuses_archives(tmp_path, capsys):
    """--max-archive-gb 1e-12 is 1 byte, not 0 (which used to fail with a ValueError traceback)."""
    dl = tmp_path / "dl" / "grp"
    dl.mkdir(parents=True)
    _zip_folder(write_example(tmp_path / "src").parent, dl / "ex.zip", "ex")
    assert run(["scan", str(tmp_path / "dl"), "--library", str(tmp_path / "lib"), "--workers", "0",
                "--max-archive-gb", "1e-12"]) == 1
    out, err = capsys.readouterr()
    assert "archives 1: 0 extracted, 1 refused" in out and "grp/ex.zip: refused" in err
