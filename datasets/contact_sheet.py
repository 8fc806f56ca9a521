"""Contact sheets: a PNG that shows dataset examples to a person.

One row per example: ``rest | morphed | posed`` tiles, each composited over a
grey/white checkerboard (so transparency, and stray opaque pixels, are
visible), and beside them a text panel with the example number, the model's
name and id, every pose parameter (name, value and a small bar on the
parameter's range) and the light magnitudes. A header states the split, the
shard(s), the schema and how many examples are shown of how many.

Pure Pillow + numpy. Text uses DejaVu Sans / Sans Mono when installed, else
Pillow's scalable default font (``ImageFont.load_default(size=...)``, Pillow
>= 10.1), else its bitmap font. Model names in Japanese need a CJK font
(Noto Sans CJK, IPA, Droid Sans Fallback... searched in the usual places, or
``$MMDSYNTH_FONT``); without one, characters the font cannot draw show as
``?``.

The sheet's size depends only on the number of rows, the tile size and the
number of pose parameters (:func:`sheet_layout`), not on the text.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["SheetLayout", "sheet_layout", "checkerboard", "composite_over_checkerboard", "contact_sheet",
           "save_sheet", "CHECKER_LIGHT", "CHECKER_DARK", "CHECKER_SQUARE"]

#: Checkerboard colours (RGB) and square size in sheet pixels.
CHECKER_LIGHT = (255, 255, 255)
CHECKER_DARK = (204, 204, 204)
CHECKER_SQUARE = 8

BACKGROUND = (244, 244, 246)
INK = (24, 24, 28)
MUTED = (105, 105, 115)
RULE = (214, 214, 220)
BAR_BG = (222, 222, 228)
BAR_POS = (52, 101, 164)
BAR_NEG = (204, 102, 0)
TILE_BORDER = (170, 170, 178)

# Layout constants (pixels).
MARGIN = 24
TITLE_SIZE, TITLE_LINE = 20, 28
SUB_SIZE, SUB_LINE = 13, 20
HEADER_GAP = 12
COLTITLE_SIZE, COLTITLE_LINE = 14, 24
TEXT_SIZE, LINE = 13, 18
TILE_GAP = 8
PANEL_GAP = 16
ROW_GAP = 14
NAME_W, VALUE_W, BAR_W = 196, 58, 64  # NAME_W: 25 characters of 13 px DejaVu Sans Mono
COLUMN_W = NAME_W + 6 + VALUE_W + 8 + BAR_W + 24  # one column of parameter lines
PANEL_HEAD_LINES = 2  # "#index  model name", "id ... shard:row"
PANEL_TAIL_LINES = 1  # lights


@dataclass(frozen=True)
class SheetLayout:
    """Pixel geometry of a sheet with ``rows`` examples.

    ``tile``: edge of each image tile; ``row_height``: the tile, or more when
    the text panel needs it (small tiles); ``param_columns``/``lines_per_column``:
    how the pose lines wrap; ``panel_width``; ``width``/``height``: the sheet.
    Row r's tiles start at y = ``row_y(r)``; tile c (0 rest, 1 morphed, 2
    posed) at x = ``tile_x(c)``.
    """

    rows: int
    tile: int
    row_height: int
    num_params: int
    param_columns: int
    lines_per_column: int
    panel_width: int
    width: int
    height: int

    @property
    def header_height(self) -> int:
        return TITLE_LINE + SUB_LINE + HEADER_GAP + COLTITLE_LINE

    def tile_x(self, column: int) -> int:
        return MARGIN + column * (self.tile + TILE_GAP)

    @property
    def panel_x(self) -> int:
        return self.tile_x(3) - TILE_GAP + PANEL_GAP

    def row_y(self, row: int) -> int:
        return MARGIN + self.header_height + row * (self.row_height + ROW_GAP)


def sheet_layout(rows: int, image_size: int | tuple[int, int], num_params: int, tile: int | None = None) -> SheetLayout:
    """The geometry of a sheet.

    Args:
        rows: number of examples (>= 0).
        image_size: the dataset's image edge, or (height, width); tiles are
            square, images are scaled to fit.
        num_params: pose parameters per example.
        tile: tile edge in pixels, >= 96 (default: the image size clamped to
            96..256; larger images are scaled down, smaller ones up).

    Returns the :class:`SheetLayout`; ``width``/``height`` are the exact
    size of the image :func:`contact_sheet` returns.
    """
    if rows < 0 or num_params < 0:
        raise ValueError("rows and num_params must be >= 0")
    size = image_size if isinstance(image_size, int) else max(int(image_size[0]), int(image_size[1]))
    tile = int(tile) if tile is not None else max(96, min(int(size), 256))
    if tile < 96:
        raise ValueError(f"tile must be at least 96 pixels, got {tile}")
    fixed = (PANEL_HEAD_LINES + PANEL_TAIL_LINES) * LINE + LINE // 2 + LINE // 4
    # Pose lines per column: as many as fit beside the tile, but at least 8
    # (or all of them) so that small tiles grow the row instead of the width.
    lines = max(1, (tile - fixed) // LINE, min(num_params, 8))
    cols = max(1, math.ceil(num_params / lines)) if num_params else 1
    row_height = max(tile, fixed + min(num_params, lines) * LINE)
    panel = cols * COLUMN_W
    width = MARGIN + 3 * tile + 2 * TILE_GAP + PANEL_GAP + panel + MARGIN
    body = rows * row_height + max(0, rows - 1) * ROW_GAP
    height = MARGIN + TITLE_LINE + SUB_LINE + HEADER_GAP + COLTITLE_LINE + body + MARGIN
    return SheetLayout(rows, tile, row_height, num_params, cols, lines, panel, width, height)


# ----------------------------------------------------------------------------- images


def checkerboard(height: int, width: int, square: int = CHECKER_SQUARE) -> np.ndarray:
    """(height, width, 3) uint8 checkerboard of CHECKER_LIGHT / CHECKER_DARK
    squares (top-left square light)."""
    yy, xx = np.mgrid[0:height, 0:width]
    dark = ((yy // square) + (xx // square)) % 2 == 1
    out = np.empty((height, width, 3), np.uint8)
    out[...] = CHECKER_LIGHT
    out[dark] = CHECKER_DARK
    return out


def composite_over_checkerboard(rgba: np.ndarray, tile: int | None = None) -> Image.Image:
    """An RGB tile: ``rgba`` ((H, W, 4) uint8, straight alpha) scaled to fit a
    ``tile`` x ``tile`` square (default: its own size, no scaling; aspect kept,
    centred) and composited over a checkerboard. Raises ValueError for
    another shape or dtype."""
    a = np.asarray(rgba)
    if a.ndim != 3 or a.shape[2] != 4 or a.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 4) uint8 RGBA image, got {a.shape} {a.dtype}")
    h, w = a.shape[:2]
    img = Image.fromarray(a, "RGBA")
    if tile is not None and (h, w) != (tile, tile):
        s = tile / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        # Resize premultiplied so transparent pixels' colour does not bleed into edges.
        # Upscaling: nearest (pixels stay visible); downscaling: Lanczos.
        method = Image.Resampling.NEAREST if s > 1 else Image.Resampling.LANCZOS
        img = img.convert("RGBa").resize((nw, nh), method).convert("RGBA")
        canvas = Image.new("RGBA", (tile, tile), (0, 0, 0, 0))
        canvas.paste(img, ((tile - nw) // 2, (tile - nh) // 2))
        img = canvas
    board = Image.fromarray(checkerboard(img.height, img.width), "RGB")
    board.paste(img, (0, 0), img)  # straight-alpha "over"
    return board


# ----------------------------------------------------------------------------- fonts

_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "/usr/share/fonts/truetype", os.path.expanduser("~/.fonts"),
              os.path.expanduser("~/.local/share/fonts"), "/Library/Fonts", "/System/Library/Fonts",
              "C:/Windows/Fonts")
_CJK_FONTS = ("NotoSansCJK-Regular.ttc", "NotoSansCJKjp-Regular.otf", "NotoSansJP-Regular.otf", "NotoSansJP-Regular.ttf",
              "SourceHanSans-Regular.otf", "ipaexg.ttf", "ipag.ttf", "TakaoPGothic.ttf", "VL-PGothic-Regular.ttf",
              "DroidSansFallbackFull.ttf", "DroidSansFallback.ttf", "ヒラギノ角ゴシック W3.ttc", "YuGothR.ttc", "meiryo.ttc",
              "msgothic.ttc", "unifont.otf")


@functools.lru_cache(maxsize=None)
def _find_font_file(name: str) -> str | None:
    for d in _FONT_DIRS:
        if not os.path.isdir(d):
            continue
        direct = os.path.join(d, name)
        if os.path.isfile(direct):
            return direct
        for root, _dirs, files in os.walk(d):
            if name in files:
                return os.path.join(root, name)
    return None


@functools.lru_cache(maxsize=None)
def _font(size: int, kind: str = "sans") -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A font of ``size`` pixels: kind "sans", "bold", "mono" or "cjk" (falls back to sans)."""
    names = {"sans": ("DejaVuSans.ttf",), "bold": ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf"),
             "mono": ("DejaVuSansMono.ttf", "DejaVuSans.ttf"), "cjk": ()}[kind]
    if kind == "cjk":
        env = os.environ.get("MMDSYNTH_FONT")
        candidates = ([env] if env and os.path.isfile(env) else []) + [p for p in map(_find_font_file, _CJK_FONTS) if p]
        for path in candidates:
            try:
                return ImageFont.truetype(path, size)
            except OSError:
                continue
        return _font(size, "sans")
    for name in names:
        path = _find_font_file(name)
        if path:
            try:
                return ImageFont.truetype(path, size)
            except OSError:
                pass
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def _missing_glyph(font, ch: str) -> bool:
    """Whether ``font`` draws ``ch`` as its .notdef box."""
    if ch.isascii() or not isinstance(font, ImageFont.FreeTypeFont):
        return False
    try:
        return _glyph_sig(font, ch) == _glyph_sig(font, "\U0010fffd")
    except Exception:  # noqa: BLE001 - any rendering trouble: assume drawable
        return False


@functools.lru_cache(maxsize=4096)
def _glyph_sig(font, ch: str) -> bytes:
    img = Image.new("L", (font.size * 2, font.size * 2), 0)
    ImageDraw.Draw(img).text((0, 0), ch, font=font, fill=255)
    return img.tobytes()


def _drawable(font, text: str) -> str:
    return "".join("?" if _missing_glyph(font, ch) else ch for ch in text)


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _shrink_to_fit(draw: ImageDraw.ImageDraw, text: str, size: int, smallest: int, kind: str, width: int):
    """The largest font of ``kind`` from ``size`` down to ``smallest`` px in which ``text`` fits ``width``."""
    for s in range(size, smallest - 1, -1):
        font = _font(s, kind)
        if draw.textlength(text, font=font) <= width:
            return font
    return _font(smallest, kind)


def _needs_cjk(text: str) -> bool:
    return any(ord(ch) >= 0x2E80 for ch in text)


# ----------------------------------------------------------------------------- the sheet


def _fmt(v: float, lo: float) -> str:
    """3 decimals; signed when the range has negative values."""
    return f"{v:+.3f}" if lo < 0 else f"{v:.3f}"


def contact_sheet(examples: Sequence[Mapping[str, Any]], parameter_names: Sequence[str],
                  parameter_ranges: Sequence[Sequence[float]] | None = None, title: str = "", subtitle: str = "",
                  tile: int | None = None) -> Image.Image:
    """Draw a contact sheet.

    Args:
        examples: dicts as :class:`~mmdsynth.datasets.shards.ShardedExamples`
            gives them: ``rest``, ``morphed``, ``posed`` ((H, W, 4) uint8 RGBA,
            the same size for all), ``pose`` ((P,) numbers), ``light``
            ((2,) ambient, directional); optional ``model_name``, ``model_id``,
            ``model_path``, ``index``, ``shard``, ``position``.
        parameter_names: the P names. parameter_ranges: P (low, high) pairs for
            the bars (default [0, 1] for every parameter).
        title: the header line (split, shard, schema, count).
        subtitle: a smaller second header line (preset, renderer, version...).
        tile: tile edge in pixels (see :func:`sheet_layout`).

    Returns:
        An RGB :class:`PIL.Image.Image` of exactly ``sheet_layout(len(examples),
        image_size, P, tile)`` size (with no examples: the header only, image
        size 256 assumed).

    Raises:
        ValueError: images of the wrong shape/dtype or of different sizes, a
            pose of the wrong length.
    """
    names = [str(n) for n in parameter_names]
    ranges = [(float(lo), float(hi)) for lo, hi in parameter_ranges] if parameter_ranges is not None else [(0.0, 1.0)] * len(names)
    if len(ranges) != len(names):
        raise ValueError(f"{len(names)} parameter names but {len(ranges)} ranges")
    size = None
    for i, ex in enumerate(examples):
        for key in ("rest", "morphed", "posed"):
            a = np.asarray(ex[key])
            if a.ndim != 3 or a.shape[2] != 4 or a.dtype != np.uint8:
                raise ValueError(f"example {i}: {key} must be an (H, W, 4) uint8 RGBA image, got {a.shape} {a.dtype}")
            if size is None:
                size = a.shape[:2]
            elif a.shape[:2] != size:
                raise ValueError(f"example {i}: {key} is {a.shape[:2]}, other images are {size}")
        if np.asarray(ex["pose"]).shape != (len(names),):
            raise ValueError(f"example {i}: pose has shape {np.asarray(ex['pose']).shape}, expected ({len(names)},)")
    layout = sheet_layout(len(examples), size if size is not None else 256, len(names), tile)
    sheet = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)

    col_font, text_font, bold_font, mono_font = _font(COLTITLE_SIZE, "bold"), _font(TEXT_SIZE, "sans"), _font(TEXT_SIZE, "bold"), _font(TEXT_SIZE, "mono")
    text_w = layout.width - 2 * MARGIN

    y = MARGIN
    title_font = _shrink_to_fit(draw, title, TITLE_SIZE, 13, "bold", text_w)
    draw.text((MARGIN, y + TITLE_LINE // 2), _fit(draw, _drawable(title_font, title), title_font, text_w), font=title_font, fill=INK, anchor="lm")
    y += TITLE_LINE
    sub_font = _shrink_to_fit(draw, subtitle, SUB_SIZE, 10, "sans", text_w)
    draw.text((MARGIN, y + SUB_LINE // 2), _fit(draw, _drawable(sub_font, subtitle), sub_font, text_w), font=sub_font, fill=MUTED, anchor="lm")
    y += SUB_LINE + HEADER_GAP // 2
    draw.line([(MARGIN, y), (layout.width - MARGIN, y)], fill=RULE, width=1)
    y += HEADER_GAP - HEADER_GAP // 2
    for c, (label, short) in enumerate((("rest", "rest"), ("morphed (expression)", "morphed"), ("posed (expression + head)", "posed"))):
        if draw.textlength(label, font=col_font) > layout.tile:
            label = short
        draw.text((layout.tile_x(c), y + COLTITLE_LINE // 2), _fit(draw, label, col_font, layout.tile), font=col_font, fill=INK, anchor="lm")
    draw.text((layout.panel_x, y + COLTITLE_LINE // 2), "pose", font=col_font, fill=INK, anchor="lm")

    for r, ex in enumerate(examples):
        top = layout.row_y(r)
        if r:
            ry = top - ROW_GAP // 2
            draw.line([(MARGIN, ry), (layout.width - MARGIN, ry)], fill=RULE, width=1)
        for c, key in enumerate(("rest", "morphed", "posed")):
            tile_img = composite_over_checkerboard(np.asarray(ex[key]), layout.tile)
            x = layout.tile_x(c)
            sheet.paste(tile_img, (x, top))
            draw.rectangle([x - 1, top - 1, x + layout.tile, top + layout.tile], outline=TILE_BORDER, width=1)
        _draw_panel(draw, layout, ex, top, names, ranges, (text_font, bold_font, mono_font))
    return sheet


def _draw_panel(draw, layout: SheetLayout, ex: Mapping[str, Any], top: int, names, ranges, fonts) -> None:
    text_font, bold_font, mono_font = fonts
    x0 = layout.panel_x
    width = layout.panel_width - 8
    y = top
    index = ex.get("index")
    name = str(ex.get("model_name", "") or "")
    head = f"#{index}" if index is not None else ""
    name_font = _font(TEXT_SIZE, "cjk") if _needs_cjk(name) else bold_font
    hw = draw.textlength(head + "  ", font=bold_font) if head else 0
    if head:
        draw.text((x0, y + LINE // 2), head, font=bold_font, fill=INK, anchor="lm")
    draw.text((x0 + hw, y + LINE // 2), _fit(draw, _drawable(name_font, name), name_font, int(width - hw)), font=name_font, fill=INK, anchor="lm")
    y += LINE
    bits = []
    if ex.get("model_id") is not None:
        bits.append(f"model id {ex['model_id']}")
    if ex.get("model_path"):
        bits.append(Path(str(ex["model_path"]).replace("\\", "/")).name)
    if ex.get("shard") is not None:
        bits.append(f"{ex['shard']} row {ex.get('position', '?')}")
    draw.text((x0, y + LINE // 2), _fit(draw, _drawable(text_font, " · ".join(bits)), text_font, width), font=text_font, fill=MUTED, anchor="lm")
    y += LINE + LINE // 2

    pose = np.asarray(ex["pose"], np.float64)
    for i, (pname, value, (lo, hi)) in enumerate(zip(names, pose, ranges)):
        col, line = divmod(i, layout.lines_per_column)
        x = x0 + col * COLUMN_W
        ly = y + line * LINE
        draw.text((x, ly + LINE // 2), _fit(draw, pname, mono_font, NAME_W), font=mono_font, fill=INK, anchor="lm")
        draw.text((x + NAME_W + 6 + VALUE_W, ly + LINE // 2), _fmt(float(value), lo), font=mono_font, fill=INK, anchor="rm")
        _draw_bar(draw, x + NAME_W + 6 + VALUE_W + 8, ly + LINE // 2, float(value), lo, hi)

    light = ex.get("light")
    if light is not None:
        light = np.asarray(light, np.float64).reshape(-1)
        ly = y + min(len(names), layout.lines_per_column) * LINE + LINE // 4
        text = f"ambient {light[0]:.3f}   directional {light[1]:.3f}" if len(light) >= 2 else f"light {light}"
        draw.text((x0, ly + LINE // 2), text, font=text_font, fill=MUTED, anchor="lm")


def _draw_bar(draw, x: int, cy: int, value: float, lo: float, hi: float) -> None:
    """A BAR_W-wide bar: filled from 0 (or ``lo`` when 0 is outside the range) to ``value``."""
    h = 8
    y0, y1 = cy - h // 2, cy + h // 2
    draw.rectangle([x, y0, x + BAR_W - 1, y1 - 1], fill=BAR_BG)
    if not (math.isfinite(value) and hi > lo):
        return

    def px(v: float) -> float:
        return x + (min(max(v, lo), hi) - lo) / (hi - lo) * (BAR_W - 1)

    origin = 0.0 if lo <= 0.0 <= hi else lo
    a, b = sorted((px(origin), px(value)))
    if b - a >= 0.5:
        draw.rectangle([round(a), y0, round(b), y1 - 1], fill=BAR_POS if value >= origin else BAR_NEG)
    if lo < 0.0 < hi:
        zx = round(px(0.0))
        draw.line([(zx, y0 - 2), (zx, y1 + 1)], fill=MUTED, width=1)


def save_sheet(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` as PNG to ``path`` atomically (temporary file + rename).
    Returns the path. Raises OSError."""
    from mmdsynth.mmd.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=False)
    return path
