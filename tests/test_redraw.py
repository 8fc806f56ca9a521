"""Partial redraw: the same bytes as a full redraw, for every kind of pose change."""

from __future__ import annotations

import numpy as np
import pytest

from mmdsynth.mmd.loader import load_model
from mmdsynth.mmd.posing import Pose
from mmdsynth.mmd.schema import THA1, MorphAssignment
from mmdsynth.render.redraw import any_column, changed_rows, dirty_rect, face_boxes, faces_meeting, points_box

render = pytest.importorskip("mmdsynth.render")
from mmdsynth.render import Framing, Lighting, ModelRenderer, RenderError, get_context  # noqa: E402

try:
    get_context()
except RenderError as exc:  # pragma: no cover - machines without EGL
    pytest.skip(f"no headless OpenGL: {exc}", allow_module_level=True)

GENE_MORPHS = MorphAssignment(wink_left="ウィンク２", wink_right="ｳｨﾝｸ２右", wink_both="まばたき", mouth="あ")


def quat(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    half = np.radians(degrees) / 2
    return tuple(np.append(axis * np.sin(half), np.cos(half)))


@pytest.fixture(scope="module")
def gene_pair(gene_pmx):
    """The same model in two renderers: partial redraw on and off."""
    model = load_model(gene_pmx)
    head_x = model.bones[model.bone_index("頭")].position[0]
    with ModelRenderer(model) as partial, ModelRenderer(model, partial_redraw=False) as full:
        yield model, partial, full, Framing.from_head("tha1", 19.96, 16.66, head_x)


def spy_rects(renderer, monkeypatch) -> list:
    """The rectangles the renderer resolves (None: a full frame)."""
    rects = []
    real = renderer._resolve_and_read

    def resolve(target, rect=None):
        rects.append(rect)
        return real(target, rect)

    monkeypatch.setattr(renderer, "_resolve_and_read", resolve)
    return rects


def test_tha1_poses_give_the_bytes_of_a_full_redraw(gene_pair, monkeypatch):
    model, partial, full, framing = gene_pair
    rects = spy_rects(partial, monkeypatch)
    rng = np.random.default_rng(11)
    light = Lighting(ambient=0.9)
    for _ in range(6):
        values = THA1.sample(rng, GENE_MORPHS)
        expression = values.copy()
        expression[3:] = 0.0
        for v in (expression, values):
            pose = THA1.to_pose(v, GENE_MORPHS)
            assert partial.render_pose(pose, framing, light).tobytes() == full.render_pose(pose, framing, light).tobytes()
    partial_rects = [r for r in rects if r is not None]
    assert len(partial_rects) >= 6  # every expression-only image was a partial redraw
    w = max(r[2] - r[0] for r in partial_rects)
    h = max(r[3] - r[1] for r in partial_rects)
    assert w * h < 0.2 * framing.width * framing.height  # around the eyes and the mouth


@pytest.mark.parametrize("pose", [
    Pose(),
    Pose(morphs={"青ざめ": 1.0}),  # a material morph: its material's faces are redrawn
    Pose(morphs={"メッシュなし": 0.7}),  # a UV morph
    Pose(morphs={"まばたき": 0.5, "あ": 0.3}, rotations={"頭": quat((1, 0, 0), 1.0)}),  # a small head motion
    Pose(rotations={"左腕": quat((0, 0, 1), -40.0)}),  # an arm, mostly outside the picture
    Pose(translations={"センター": (0.0, -30.0, 0.0)}),  # everything leaves the picture
    Pose(rotations={"上半身": quat((0, 1, 0), 60.0)}),  # most of the picture changes: a full redraw
], ids=["rest", "material", "uv", "head", "arm", "away", "body"])
def test_any_pose_gives_the_bytes_of_a_full_redraw(gene_pair, pose):
    model, partial, full, framing = gene_pair
    for light in (Lighting(), Lighting(ambient=1.1, directional=0.3)):  # one kept rest frame per lighting
        assert partial.render_pose(pose, framing, light).tobytes() == full.render_pose(pose, framing, light).tobytes()


def test_other_framings_and_sizes(gene_pair):
    model, partial, full, framing = gene_pair
    head_x = model.bones[model.bone_index("頭")].position[0]
    tha3 = Framing.from_head("tha3", 19.96, 16.66, head_x)
    low = Framing.from_head("tha1", 15.0, 12.0, head_x)  # the body: the head above the picture
    pose = THA1.to_pose(THA1.parse("left_eye=1,mouth=0.5"), GENE_MORPHS)
    for f in (tha3, low, framing, tha3):
        assert partial.render_pose(pose, f).tobytes() == full.render_pose(pose, f).tobytes()


def test_the_rest_pose_returns_a_fresh_copy(gene_pair):
    model, partial, full, framing = gene_pair
    a = partial.render_pose(None, framing)
    a[:] = 7
    b = partial.render_pose(None, framing)
    assert b.flags.writeable and b.tobytes() == full.render_pose(None, framing).tobytes()


# ----------------------------------------------------------------------------- the helpers (pure numpy)


def test_changed_rows_and_any_column():
    rest = np.zeros((4, 3), np.float32)
    now = rest.copy()
    now[1, 2] = 1e-7
    now[3, 0] = np.nan
    assert changed_rows(now, rest).tolist() == [False, True, False, True]
    assert any_column(np.array([[0, 1], [0, 0], [1, 1]], bool)).tolist() == [True, False, True]


def test_boxes_rect_and_faces_meeting_it():
    pixels = np.array([[1.5, 2.0], [4.0, 2.5], [2.0, 6.25], [50.0, 50.0]])
    faces = np.array([[0, 1, 2], [1, 2, 3]])
    boxes = face_boxes(pixels, faces)
    np.testing.assert_array_equal(boxes, [[1.5, 2.0, 4.0, 6.25], [2.0, 2.5, 50.0, 50.0]])
    assert points_box(pixels[:3]).tolist() == [1.5, 2.0, 4.0, 6.25] and points_box(pixels[:0]) is None
    # floor(min) - pad .. floor(max) + 1 + pad, clipped to the image
    assert dirty_rect([boxes[0]], 64, 64) == (0, 1, 6, 8)
    assert dirty_rect([boxes[0], None], 64, 64, pad=0) == (1, 2, 5, 7)
    assert dirty_rect([np.array([70.0, 70.0, 80.0, 80.0])], 64, 64) is None  # outside the picture
    assert dirty_rect([None], 64, 64) is None
    with pytest.raises(ValueError, match="not finite"):
        dirty_rect([np.array([0.0, np.nan, 1.0, 1.0])], 64, 64)
    assert faces_meeting(boxes, (10, 10, 20, 20)).tolist() == [False, True]
    assert faces_meeting(boxes, (5, 7, 6, 8)).tolist() == [True, True]  # a pixel of margin


def test_msaa_targets_too(gene_pmx):
    """The GPU default (4x MSAA, no supersampling) resolves the same samples in a rectangle."""
    model = load_model(gene_pmx)
    framing = Framing.from_head("tha1", 19.96, 16.66, model.bones[model.bone_index("頭")].position[0])
    with ModelRenderer(model, samples=4, supersample=1) as partial, \
            ModelRenderer(model, samples=4, supersample=1, partial_redraw=False) as full:
        for text in ("right_eye=1", "left_eye=0.4,mouth=1", "mouth=0.2,head_y=0.3"):
            pose = THA1.to_pose(THA1.parse(text), GENE_MORPHS)
            assert partial.render_pose(pose, framing).tobytes() == full.render_pose(pose, framing).tobytes()
