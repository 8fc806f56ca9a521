"""Tests for mmdsynth.mmd.textures: MMD-style texture look-up and decoding."""

from __future__ import annotations

import os
import struct
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmdsynth.mmd import Model
from mmdsynth.mmd.textures import (
    TextureError,
    decode_texture,
    load_texture,
    resolve_texture_path,
    texture_report,
)

def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _bmp32(pixels_rgba: np.ndarray, top_down: bool = False) -> bytes:
    """A 32-bit BI_RGB BMP written by hand: BITMAPFILEHEADER (14 bytes) and
    BITMAPINFOHEADER (40 bytes), then B,G,R,A pixels, rows bottom-up unless
    ``top_down`` (negative biHeight)."""
    h, w, _ = pixels_rgba.shape
    bgra = pixels_rgba[..., [2, 1, 0, 3]]
    rows = bgra if top_down else bgra[::-1]
    pixel_data = np.ascontiguousarray(rows, np.uint8).tobytes()
    off_bits = 14 + 40
    file_header = struct.pack("<2sIHHI", b"BM", off_bits + len(pixel_data), 0, 0, off_bits)
    info_header = struct.pack(
        "<IiiHHIIiiII",
        40,  # biSize
        w,  # biWidth
        -h if top_down else h,  # biHeight
        1,  # biPlanes
        32,  # biBitCount
        0,  # biCompression = BI_RGB
        len(pixel_data),  # biSizeImage
        2835,  # biXPelsPerMeter
        2835,  # biYPelsPerMeter
        0,  # biClrUsed
        0,  # biClrImportant
    )
    return file_header + info_header + pixel_data


# A 3-wide, 2-high test pattern: every pixel distinct, alpha varied.
PATTERN = np.array(
    [
        [[255, 0, 0, 255], [0, 255, 0, 128], [0, 0, 255, 0]],
        [[10, 20, 30, 40], [50, 60, 70, 80], [90, 100, 110, 255]],
    ],
    np.uint8,
)


def _check_rgba(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert isinstance(arr, np.ndarray)
    assert arr.dtype == np.uint8
    assert arr.shape == (*shape, 4)
    assert arr.flags.c_contiguous


# --------------------------------------------------------------------------
# resolve_texture_path
# --------------------------------------------------------------------------


def test_resolve_exact_and_backslashes(tmp_path):
    f = _touch(tmp_path / "tex" / "a.png")
    assert resolve_texture_path(tmp_path, "tex\\a.png") == f
    assert resolve_texture_path(tmp_path, "tex/a.png") == f
    assert resolve_texture_path(tmp_path, ".\\tex\\a.png") == f
    assert resolve_texture_path(tmp_path, "./tex//a.png") == f
    assert resolve_texture_path(tmp_path, "tex\\\\.\\a.png") == f
    assert resolve_texture_path(tmp_path, "tex\\sub\\..\\a.png") == f
    assert resolve_texture_path(tmp_path, "  tex\\a.png  ") == f


def test_resolve_case_insensitive_file_and_folder(tmp_path):
    f = _touch(tmp_path / "tex" / "face.png")
    g = _touch(tmp_path / "a1.bmp")
    assert resolve_texture_path(tmp_path, "Tex\\Face.PNG") == f
    assert resolve_texture_path(tmp_path, "TEX/FACE.png") == f
    assert resolve_texture_path(tmp_path, "A1.bmp") == g
    assert resolve_texture_path(str(tmp_path), "A1.BMP") == g  # str model_dir ok


def test_resolve_prefers_exact_case(tmp_path):
    upper = _touch(tmp_path / "A.png")
    lower = _touch(tmp_path / "a.png")
    assert resolve_texture_path(tmp_path, "A.png") == upper
    assert resolve_texture_path(tmp_path, "a.png") == lower


def test_resolve_backtracks_over_ambiguous_folders(tmp_path):
    (tmp_path / "Tex").mkdir()
    f = _touch(tmp_path / "tex" / "b.png")
    assert resolve_texture_path(tmp_path, "TEX\\b.png") == f


def test_resolve_unicode_nfc_nfd(tmp_path):
    nfc = "が顔.png"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    # File stored decomposed (as macOS writes it), name asked composed.
    f = _touch(tmp_path / unicodedata.normalize("NFD", "テクスチャ") / nfd)
    assert resolve_texture_path(tmp_path, "テクスチャ\\" + nfc) == f
    # And the other way round.
    g = _touch(tmp_path / "ぎ.bmp")
    assert resolve_texture_path(tmp_path, unicodedata.normalize("NFD", "ぎ.bmp")) == g


def test_resolve_fullwidth_halfwidth(tmp_path):
    f = _touch(tmp_path / "ｶﾐ" / "face.png")  # half-width katakana folder
    assert resolve_texture_path(tmp_path, "カミ\\ＦＡＣＥ.png") == f


def test_resolve_trailing_dots_and_spaces(tmp_path):
    f = _touch(tmp_path / "tex" / "a.png")
    assert resolve_texture_path(tmp_path, "tex \\a.png.") == f


def test_resolve_absolute_windows_path_falls_back_into_model_dir(tmp_path):
    f = _touch(tmp_path / "tex" / "face.png")
    assert resolve_texture_path(tmp_path, "C:\\Users\\me\\Desktop\\Model\\tex\\face.png") == f
    assert resolve_texture_path(tmp_path, "D:\\other\\Face.png") is None  # face.png not at top
    g = _touch(tmp_path / "body.png")
    assert resolve_texture_path(tmp_path, "D:\\somewhere\\else\\body.png") == g
    assert resolve_texture_path(tmp_path, "\\\\server\\share\\body.png") == g
    assert resolve_texture_path(tmp_path, "C:body.png") == g


def test_resolve_posix_absolute_path(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    outside = _touch(tmp_path / "elsewhere" / "x.png")
    assert resolve_texture_path(model_dir, str(outside)) == outside
    inside = _touch(model_dir / "y.png")
    assert resolve_texture_path(model_dir, str(tmp_path / "gone" / "y.png")) == inside


def test_resolve_parent_escape(tmp_path):
    model_dir = tmp_path / "models" / "miku"
    model_dir.mkdir(parents=True)
    shared = _touch(tmp_path / "models" / "Shared" / "toon.bmp")
    # Tried as written first (case-insensitively)...
    assert resolve_texture_path(model_dir, "..\\shared\\TOON.bmp").resolve() == shared.resolve()
    # ...then by base name inside the model folder.
    local = _touch(model_dir / "eye.png")
    assert resolve_texture_path(model_dir, "..\\..\\nowhere\\eye.png") == local
    assert resolve_texture_path(model_dir, "..\\..\\nowhere\\none.png") is None


def test_resolve_missing_and_non_files(tmp_path):
    (tmp_path / "dir.png").mkdir()
    assert resolve_texture_path(tmp_path, "dir.png") is None
    assert resolve_texture_path(tmp_path, "nope.png") is None
    assert resolve_texture_path(tmp_path, "no\\such\\dir\\nope.png") is None
    assert resolve_texture_path(tmp_path / "absent-model-dir", "a.png") is None
    for empty in ("", "   ", ".", "./", "\\", "..", "\0a.png"):
        assert resolve_texture_path(tmp_path, empty) is None, repr(empty)


def test_resolve_literal_backslash_filename(tmp_path):
    # Some unzip tools keep Windows separators as part of the file name.
    f = _touch(tmp_path / "tex\\odd.png")
    assert resolve_texture_path(tmp_path, "tex\\odd.png") == f


def test_resolve_never_raises(tmp_path):
    _touch(tmp_path / "a.png")
    weird = [
        "a.png\0junk",
        "\0",
        "x" * 100_000,
        ("d" * 300 + "\\") * 20 + "a.png",
        "\ud800.png",  # lone surrogate: cannot be encoded for the OS
        "a\nb\tc.png",
        "<>:\"|?*.png",
        "..\\" * 500 + "a.png",
        "\\\\?\\C:\\a.png",
        "CON",
        "\u202e\u200bgnp.a",
        "🎀.png",
        "tex.bmp*sphere.sph",
    ]
    for name in weird:
        result = resolve_texture_path(tmp_path, name)
        assert result is None or result.is_file(), repr(name[:40])
    assert resolve_texture_path(tmp_path, "a.png\0junk") == tmp_path / "a.png"
    assert resolve_texture_path(tmp_path, "..\\" * 500 + "a.png") == tmp_path / "a.png"
    assert resolve_texture_path(tmp_path, None) is None  # type: ignore[arg-type]


def test_resolve_cache_sees_new_files(tmp_path):
    assert resolve_texture_path(tmp_path, "Tex\\New.png") is None
    f = _touch(tmp_path / "tex" / "new.png")
    assert resolve_texture_path(tmp_path, "Tex\\New.png") == f
    f.unlink()
    assert resolve_texture_path(tmp_path, "Tex\\New.png") is None
    g = _touch(tmp_path / "tex" / "NEW.PNG")
    assert resolve_texture_path(tmp_path, "Tex\\New.png") == g


def test_resolve_cache_reused_for_old_directory(tmp_path):
    f = _touch(tmp_path / "tex" / "face.png")
    old = 1_000_000_000
    os.utime(tmp_path / "tex", (old, old))
    os.utime(tmp_path, (old, old))
    for _ in range(3):
        assert resolve_texture_path(tmp_path, "TEX\\FACE.PNG") == f
    # A new file changes the directory's mtime, which invalidates the listing.
    g = _touch(tmp_path / "tex" / "eye.png")
    assert resolve_texture_path(tmp_path, "TEX\\EYE.PNG") == g


def test_resolve_lists_each_directory_once(tmp_path, monkeypatch):
    import mmdsynth.mmd.textures as textures

    for i in range(20):
        _touch(tmp_path / "Tex" / f"Part{i}.PNG")
    calls = []
    real_listdir = os.listdir
    monkeypatch.setattr(textures.os, "listdir", lambda d: calls.append(d) or real_listdir(d))
    for i in range(20):
        assert resolve_texture_path(tmp_path, f"tex\\part{i}.png") is not None
    assert len(calls) == 2  # the model folder and Tex/, once each


def test_resolve_many_textures_is_fast(tmp_path):
    import time

    for i in range(200):
        _touch(tmp_path / "Tex" / f"Part{i:03d}.PNG")
    names = [f"tex\\part{i:03d}.png" for i in range(200)]
    start = time.perf_counter()
    for _ in range(5):
        assert all(resolve_texture_path(tmp_path, n) is not None for n in names)
    assert time.perf_counter() - start < 5.0


# --------------------------------------------------------------------------
# decode_texture
# --------------------------------------------------------------------------


def test_decode_bmp32_with_alpha_exact(tmp_path):
    f = _touch(tmp_path / "a.bmp", _bmp32(PATTERN))
    arr = decode_texture(f)
    _check_rgba(arr, (2, 3))
    np.testing.assert_array_equal(arr, PATTERN)  # row 0 is the top row
    assert arr[0, 1].tolist() == [0, 255, 0, 128]
    assert arr[1, 0].tolist() == [10, 20, 30, 40]


def test_decode_bmp32_top_down(tmp_path):
    f = _touch(tmp_path / "a.bmp", _bmp32(PATTERN, top_down=True))
    np.testing.assert_array_equal(decode_texture(f), PATTERN)


def test_decode_bmp32_zero_alpha_is_opaque(tmp_path):
    pattern = PATTERN.copy()
    pattern[..., 3] = 0
    f = _touch(tmp_path / "a.sph", _bmp32(pattern))  # sphere maps are BMPs
    arr = decode_texture(f)
    np.testing.assert_array_equal(arr[..., :3], PATTERN[..., :3])
    assert (arr[..., 3] == 255).all()


def test_decode_bmp32_truncated(tmp_path):
    f = _touch(tmp_path / "a.bmp", _bmp32(PATTERN)[:-5])
    with pytest.raises(TextureError, match="truncated"):
        decode_texture(f)


def test_decode_bmp24(tmp_path):
    rgb = PATTERN[..., :3]
    f = tmp_path / "a.bmp"
    Image.fromarray(rgb, "RGB").save(f, "BMP")
    arr = decode_texture(f)
    _check_rgba(arr, (2, 3))
    np.testing.assert_array_equal(arr[..., :3], rgb)
    assert (arr[..., 3] == 255).all()


def test_decode_bmp8_palette(tmp_path):
    im = Image.fromarray(PATTERN[..., :3], "RGB").quantize(colors=8)
    f = tmp_path / "p.bmp"
    im.save(f, "BMP")
    arr = decode_texture(f)
    np.testing.assert_array_equal(arr[..., :3], np.asarray(im.convert("RGB")))
    assert (arr[..., 3] == 255).all()


def test_decode_png_rgba(tmp_path):
    f = tmp_path / "a.png"
    Image.fromarray(PATTERN, "RGBA").save(f)
    arr = decode_texture(f)
    _check_rgba(arr, (2, 3))
    np.testing.assert_array_equal(arr, PATTERN)


def test_decode_png_palette_transparency(tmp_path):
    im = Image.new("P", (2, 2))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3))
    im.putdata([0, 1, 2, 1])
    f = tmp_path / "p.png"
    im.save(f, transparency=bytes([255, 0, 100]))  # per-entry alpha (tRNS)
    arr = decode_texture(f)
    assert arr.tolist() == [
        [[255, 0, 0, 255], [0, 255, 0, 0]],
        [[0, 0, 255, 100], [0, 255, 0, 0]],
    ]


def test_decode_gif_transparency(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([255, 255, 255, 10, 20, 30] + [0] * (254 * 3))
    im.putdata([0, 1])
    f = tmp_path / "a.gif"
    im.save(f, transparency=0)
    arr = decode_texture(f)
    assert arr[0, 0, 3] == 0
    assert arr[0, 1].tolist() == [10, 20, 30, 255]


def test_decode_grayscale_variants(tmp_path):
    gray = np.array([[0, 100], [200, 255]], np.uint8)
    f = tmp_path / "l.png"
    Image.fromarray(gray, "L").save(f)
    arr = decode_texture(f)
    for c in range(3):
        np.testing.assert_array_equal(arr[..., c], gray)
    assert (arr[..., 3] == 255).all()

    la = np.dstack([gray, 255 - gray])
    f = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(f)
    arr = decode_texture(f)
    np.testing.assert_array_equal(arr[..., 0], gray)
    np.testing.assert_array_equal(arr[..., 3], 255 - gray)

    g16 = np.array([[0, 257 * 100], [65535, 257 * 3]], np.uint16)
    f = tmp_path / "g16.png"
    Image.fromarray(g16).save(f)
    arr = decode_texture(f)
    assert arr[..., 0].tolist() == [[0, 100], [255, 3]]


def test_decode_tga(tmp_path):
    f = tmp_path / "a.tga"
    Image.fromarray(PATTERN, "RGBA").save(f)
    arr = decode_texture(f)
    _check_rgba(arr, (2, 3))
    np.testing.assert_array_equal(arr, PATTERN)

    f = tmp_path / "rle.tga"
    Image.fromarray(PATTERN, "RGBA").save(f, compression="tga_rle")
    np.testing.assert_array_equal(decode_texture(f), PATTERN)

    f = tmp_path / "rgb.tga"
    Image.fromarray(PATTERN[..., :3], "RGB").save(f)
    arr = decode_texture(f)
    np.testing.assert_array_equal(arr[..., :3], PATTERN[..., :3])
    assert (arr[..., 3] == 255).all()


def test_decode_tga32_without_alpha_bits_and_zero_alpha_is_opaque(tmp_path):
    # Hand-made TGA: uncompressed true-colour (type 2), 32 bpp, descriptor 0x20
    # (top-left origin, 0 alpha bits), B,G,R,A pixels with A = 0.
    h, w = PATTERN.shape[:2]
    header = struct.pack("<BBBHHBHHHHBB", 0, 0, 2, 0, 0, 0, 0, 0, w, h, 32, 0x20)
    bgra = PATTERN[..., [2, 1, 0, 3]].copy()
    bgra[..., 3] = 0
    f = _touch(tmp_path / "x.tga", header + bgra.tobytes())
    arr = decode_texture(f)
    np.testing.assert_array_equal(arr[..., :3], PATTERN[..., :3])
    assert (arr[..., 3] == 255).all()


def test_decode_jpeg(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:8] = (200, 40, 40)  # top half red, bottom half blue
    rgb[8:] = (40, 40, 200)
    f = tmp_path / "a.jpg"
    Image.fromarray(rgb, "RGB").save(f, quality=95)
    arr = decode_texture(f)
    _check_rgba(arr, (16, 16))
    assert (arr[..., 3] == 255).all()
    assert abs(int(arr[2, 2, 0]) - 200) < 12 and abs(int(arr[13, 2, 2]) - 200) < 12

    gray = tmp_path / "g.jpg"
    Image.fromarray(rgb[..., 0], "L").save(gray)
    _check_rgba(decode_texture(gray), (16, 16))

    cmyk = tmp_path / "c.jpg"
    Image.fromarray(rgb, "RGB").convert("CMYK").save(cmyk)
    _check_rgba(decode_texture(cmyk), (16, 16))


def test_decode_dds(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4] = (255, 0, 0, 255)  # top: opaque red
    rgba[4:] = (0, 0, 255, 0)  # bottom: transparent blue
    im = Image.fromarray(rgba, "RGBA")

    f = tmp_path / "raw.dds"
    im.save(f, "DDS")  # uncompressed
    np.testing.assert_array_equal(decode_texture(f), rgba)

    f = tmp_path / "dxt5.dds"
    try:
        im.save(f, "DDS", pixel_format="DXT5")
    except (OSError, KeyError, ValueError) as exc:
        pytest.skip(f"this Pillow cannot write DXT5 DDS: {exc}")
    arr = decode_texture(f)
    _check_rgba(arr, (8, 8))
    # Solid 4x4 blocks of pure colours survive DXT5 compression exactly.
    np.testing.assert_array_equal(arr, rgba)


def test_decode_dds_dxt1(tmp_path):
    rgb = np.zeros((4, 8, 3), np.uint8)
    rgb[:, :4] = (0, 255, 0)
    rgb[:, 4:] = (255, 255, 255)
    f = tmp_path / "dxt1.dds"
    try:
        Image.fromarray(rgb, "RGB").save(f, "DDS", pixel_format="DXT1")
    except (OSError, KeyError, ValueError) as exc:
        pytest.skip(f"this Pillow cannot write DXT1 DDS: {exc}")
    arr = decode_texture(f)
    np.testing.assert_array_equal(arr[..., :3], rgb)
    assert (arr[..., 3] == 255).all()


def test_decode_ignores_extension(tmp_path):
    f = tmp_path / "really_png.bmp"
    Image.fromarray(PATTERN, "RGBA").save(f, "PNG")
    np.testing.assert_array_equal(decode_texture(f), PATTERN)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not an image at all\n",
        b"BM" + b"\xff" * 60,
        b"\x89PNG\r\n\x1a\n" + b"\0" * 30,
        b"DDS " + b"\x7c" + b"\0" * 10,
    ],
)
def test_decode_corrupt_raises_texture_error(tmp_path, content):
    f = _touch(tmp_path / "bad.png", content)
    with pytest.raises(TextureError) as info:
        decode_texture(f)
    message = str(info.value)
    assert message and "\n" not in message
    assert "bad.png" in message


def test_decode_truncated_png(tmp_path):
    f = tmp_path / "t.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 4), np.uint8)).save(f)
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(TextureError):
        decode_texture(f)


def test_decode_missing_file(tmp_path):
    with pytest.raises(TextureError, match="cannot read"):
        decode_texture(tmp_path / "absent.png")


# --------------------------------------------------------------------------
# load_texture, Model.texture_image, texture_report
# --------------------------------------------------------------------------


def _model(tmp_path: Path, textures: list[str]) -> Model:
    return Model(path=tmp_path / "model.pmx", textures=textures)


def test_load_texture_ok_and_cached(tmp_path):
    f = tmp_path / "Tex" / "a.png"
    f.parent.mkdir()
    Image.fromarray(PATTERN, "RGBA").save(f)
    model = _model(tmp_path, ["tex\\A.PNG", "TEX/a.png"])
    first = load_texture(model, 0)
    np.testing.assert_array_equal(first, PATTERN)
    assert load_texture(model, 0) is first  # cached
    assert model.texture_image(0) is first
    assert model.texture_image(1) is first  # same file shares the array
    assert load_texture(model, np.int64(0)) is first
    assert not first.flags.writeable  # shared: callers must copy to modify
    assert model.texture_path(0) == f
    assert model.warnings == []


def test_load_texture_missing_warns_once(tmp_path):
    model = _model(tmp_path, ["tex\\a.bmp"])
    assert load_texture(model, 0) is None
    assert model.texture_image(0) is None
    assert model.warnings == ["texture 'tex\\a.bmp': not found"]


def test_load_texture_corrupt_warns(tmp_path):
    _touch(tmp_path / "bad.png", b"garbage")
    model = _model(tmp_path, ["bad.png"])
    assert load_texture(model, 0) is None
    assert load_texture(model, 0) is None
    assert len(model.warnings) == 1
    assert model.warnings[0].startswith("texture 'bad.png': cannot be decoded: ")
    assert "\n" not in model.warnings[0]


def test_load_texture_out_of_range_and_no_path(tmp_path):
    Image.fromarray(PATTERN, "RGBA").save(tmp_path / "a.png")
    model = _model(tmp_path, ["a.png"])
    assert load_texture(model, -1) is None
    assert load_texture(model, 1) is None
    assert model.texture_path(5) is None
    nopath = Model(textures=["a.png"])
    assert load_texture(nopath, 0) is None
    assert nopath.texture_image(0) is None
    assert model.warnings == [] and nopath.warnings == []


def test_load_texture_weird_name_warning_is_one_line(tmp_path):
    model = _model(tmp_path, ["a\nb\0c" + "x" * 1000])
    assert load_texture(model, 0) is None
    assert len(model.warnings) == 1
    assert "\n" not in model.warnings[0] and len(model.warnings[0]) < 300


def test_texture_report(tmp_path):
    Image.fromarray(PATTERN, "RGBA").save(tmp_path / "a.png")
    _touch(tmp_path / "bad.png", b"garbage")  # present, so not missing (no decoding)
    model = _model(tmp_path, ["A.png", "gone.bmp", "bad.png", "A.png", "", "sub\\gone.png"])
    report = texture_report(model)
    assert report == {
        "referenced": ["A.png", "gone.bmp", "bad.png", "sub\\gone.png"],
        "missing": ["gone.bmp", "sub\\gone.png"],
    }
    assert model.warnings == [] and model._texture_cache == {}
    assert texture_report(Model(textures=["a.png"])) == {"referenced": ["a.png"], "missing": ["a.png"]}
    assert texture_report(Model()) == {"referenced": [], "missing": []}


# --------------------------------------------------------------------------
# The real model in the shared test data
# --------------------------------------------------------------------------


def test_gene_textures_resolve_and_decode(gene_pmx):
    pmx = gene_pmx
    assert pmx.is_file(), pmx
    reader = pytest.importorskip("pymeshio.pmx.reader", reason="pymeshio reads the reference names")
    names = list(reader.read_from_file(str(pmx)).textures)
    assert names and all(n.startswith("light/") for n in names)

    # As written by the file, and as a Windows tool could have written them.
    variants = names + [n.replace("/", "\\").upper() for n in names]
    model = Model(path=pmx, textures=variants)
    report = texture_report(model)
    assert report["missing"] == []
    assert report["referenced"] == variants
    for i, name in enumerate(variants):
        path = model.texture_path(i)
        assert path is not None and path.is_file(), name
        assert path.parent.name == "light"
        image = model.texture_image(i)
        assert image is not None, model.warnings
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 4
        assert image.shape[0] > 0 and image.shape[1] > 0
    assert model.warnings == []
