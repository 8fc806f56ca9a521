"""Contact sheets: exact geometry, the checkerboard under transparency, and ``mmdsynth view``."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from mmdsynth.datasets.contact_sheet import (
    CHECKER_DARK,
    CHECKER_LIGHT,
    CHECKER_SQUARE,
    checkerboard,
    composite_over_checkerboard,
    contact_sheet,
    save_sheet,
    sheet_layout,
)
from mmdsynth.mmd.schema import THA1
from test_shards import synth_image, write_shard, write_split

NAMES = THA1.names
RANGES = [tuple(r) for r in THA1.ranges()]


def example(rng, size=256, index=0, transparent=False):
    img = np.zeros((size, size, 4), np.uint8) if transparent else synth_image(rng, size)
    return {"rest": img, "morphed": img.copy(), "posed": img.copy(), "pose": np.array([0.2, 0.2, 0.9, -0.5, 0.7, 0.0], np.float32),
            "light": np.array([0.8, 0.5], np.float32), "model_id": 7, "model_name": "Test model", "index": index,
            "shard": "shard-00000.h5", "position": index}


def test_layout_exact_size_for_tha1():
    # 24 margin + 3 x 256 tiles + 2 x 8 gaps + 16 + 356 panel + 24 margin;
    # 24 + 28 title + 20 subtitle + 12 gap + 24 column titles + n x 256 + (n-1) x 14 + 24
    for n in (1, 4, 16):
        layout = sheet_layout(n, 256, 6)
        assert (layout.width, layout.height) == (1204, 132 + n * 256 + (n - 1) * 14)
    assert (sheet_layout(4, 256, 6).width, sheet_layout(4, 256, 6).height) == (1204, 1198)


def test_sheet_has_exactly_the_layout_size():
    rng = np.random.default_rng(0)
    for n in (1, 3):
        sheet = contact_sheet([example(rng, index=i) for i in range(n)], NAMES, RANGES, title="t", subtitle="s")
        layout = sheet_layout(n, 256, 6)
        assert sheet.size == (layout.width, layout.height) and sheet.mode == "RGB"


def test_tiles_scale_and_parameter_columns_wrap():
    # 512 images default to 256 tiles; 45 parameters (THA3-sized) wrap into columns
    layout = sheet_layout(2, 512, 45)
    assert layout.tile == 256 and layout.param_columns > 1
    assert layout.param_columns * layout.lines_per_column >= 45
    assert layout.width == 24 + 3 * 256 + 16 + 16 + layout.param_columns * 356 + 24
    rng = np.random.default_rng(0)
    ex = example(rng, size=512)
    ex["pose"] = np.zeros(45, np.float32)
    sheet = contact_sheet([ex, ex], [f"p{i}" for i in range(45)], tile=None)
    assert sheet.size == (layout.width, layout.height)
    small = sheet_layout(1, 64, 6)
    assert small.tile == 96  # small images are shown at least 96 px
    assert small.param_columns == 1 and small.row_height > 96  # the row grows, not the width
    assert small.width == sheet_layout(1, 256, 6).width - 3 * 160
    with pytest.raises(ValueError):
        sheet_layout(1, 256, 6, tile=50)


def test_checkerboard_shows_under_transparent_pixels():
    rng = np.random.default_rng(0)
    ex = example(rng, transparent=True)
    ex["posed"][100:120, 100:120] = (255, 0, 0, 255)  # an opaque red square
    ex["posed"][0:16, 200:216] = (0, 0, 255, 128)  # half-transparent blue
    sheet = np.asarray(contact_sheet([ex], NAMES, RANGES, title="t"))
    layout = sheet_layout(1, 256, 6)
    y0 = layout.row_y(0)
    board = checkerboard(256, 256)
    for c in range(3):
        x0 = layout.tile_x(c)
        tile = sheet[y0:y0 + 256, x0:x0 + 256]
        if c < 2:
            np.testing.assert_array_equal(tile, board)
        else:
            np.testing.assert_array_equal(tile[:100, :100], board[:100, :100])
            assert (tile[100:120, 100:120] == (255, 0, 0)).all()
            blue = tile[0:16, 200:216].astype(int)
            under = board[0:16, 200:216].astype(int)
            expected = (under * 127 + np.array([0, 0, 255]) * 128 + 127) // 255
            assert np.abs(blue - expected).max() <= 2
    colours = {tuple(p) for p in board.reshape(-1, 3)}
    assert colours == {CHECKER_LIGHT, CHECKER_DARK}
    assert tuple(board[0, 0]) == CHECKER_LIGHT and tuple(board[0, CHECKER_SQUARE]) == CHECKER_DARK


def test_composite_scales_premultiplied():
    img = np.zeros((32, 32, 4), np.uint8)
    img[:, :16] = (255, 255, 255, 255)
    img[:, 16:] = (255, 0, 0, 0)  # invisible red must not bleed into the edge
    tile = np.asarray(composite_over_checkerboard(img, 96))
    assert tile.shape == (96, 96, 3)
    edge = tile[:, 40:56].astype(int)
    assert (np.abs(edge[..., 0] - edge[..., 1]) <= 2).all(), "no red fringe"
    with pytest.raises(ValueError):
        composite_over_checkerboard(np.zeros((4, 4, 3), np.uint8))


def test_bad_examples_are_rejected():
    rng = np.random.default_rng(0)
    ex = example(rng)
    with pytest.raises(ValueError, match="pose has shape"):
        contact_sheet([ex], NAMES[:5])
    bad = dict(ex, posed=ex["posed"][:100])
    with pytest.raises(ValueError, match="posed is"):
        contact_sheet([bad], NAMES)


def test_save_sheet_is_atomic_png(tmp_path):
    rng = np.random.default_rng(0)
    path = save_sheet(contact_sheet([example(rng)], NAMES, RANGES, title="x"), tmp_path / "sub" / "sheet.png")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["sheet.png"]
    assert Image.open(path).format == "PNG"


# ----------------------------------------------------------------------------- mmdsynth view


def run_view(*argv) -> int:
    from mmdsynth.cli import main

    return main(["view", *map(str, argv)])


def test_view_a_dataset_folder_split_folder_and_shard(tmp_path, capsys):
    write_split(tmp_path / "data", "train", shard_sizes=(5, 4))
    write_split(tmp_path / "data", "val", shard_sizes=(3,))
    out = tmp_path / "sheet.png"
    assert run_view(tmp_path / "data", "--out", out, "--n", 4) == 0
    assert capsys.readouterr().out.strip() == str(out)
    layout = sheet_layout(4, 64, 6)
    assert Image.open(out).size == (layout.width, layout.height)
    assert run_view(tmp_path / "data", "--out", out, "--split", "val", "--n", 16) == 0
    assert Image.open(out).size == (layout.width, sheet_layout(3, 64, 6).height)  # only 3 examples there
    assert run_view(tmp_path / "data" / "train", "--out", out, "--n", 2, "--start", 7) == 0
    assert Image.open(out).size[1] == sheet_layout(2, 64, 6).height
    assert run_view(tmp_path / "data" / "train" / "shard-00001.h5", "--out", out, "--n", 1) == 0
    assert Image.open(out).size[1] == sheet_layout(1, 64, 6).height


@pytest.mark.parametrize(
    "make, extra, expected",
    [
        (lambda p: p / "missing", [], "no such file or folder"),
        (lambda p: p, [], "no dataset here"),
        (lambda p: (p / "junk.h5").write_bytes(b"junk") and p / "junk.h5", [], "not a readable HDF5 file"),
        (lambda p: p / "data", ["--split", "test"], "no split 'test' (splits there: train, val)"),
        (lambda p: p / "data" / "train", ["--start", "99"], "--start 99 is outside"),
        (lambda p: p / "data", ["--n", "0"], "--n must be 1..500"),
    ],
)
def test_view_bad_input_is_one_line_exit_2(tmp_path, capsys, make, extra, expected):
    write_split(tmp_path / "data", "train", shard_sizes=(2,))
    write_split(tmp_path / "data", "val", shard_sizes=(2,))
    target = make(tmp_path)
    assert run_view(target, "--out", tmp_path / "s.png", *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmdsynth view: error: ") and expected in err
    assert err.count("\n") == 1
    assert not (tmp_path / "s.png").exists()


def test_view_needs_a_split_choice_when_ambiguous(tmp_path, capsys):
    write_split(tmp_path, "a", shard_sizes=(1,))
    write_split(tmp_path, "b", shard_sizes=(1,))
    assert run_view(tmp_path, "--out", tmp_path / "s.png") == 2
    assert "choose a split with --split (a, b)" in capsys.readouterr().err
    write_shard(tmp_path / "single.h5", n=1)
    assert run_view(tmp_path / "single.h5", "--out", tmp_path / "s.png", "--split", "a") == 2
