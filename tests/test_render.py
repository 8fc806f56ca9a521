"""The renderer: pixel facts on Gene (PMX and PMD), the example character and tiny
hand-built models. No golden images: every check is a property of the pixels.

One ModelRenderer per model and module (building one uploads the textures).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmdsynth.mmd.loader import load_model
from mmdsynth.mmd.model import DeformType, Material, MaterialFlag, Model
from mmdsynth.mmd.posing import Pose, pose_model
from mmdsynth.mmd.schema import THA1, MorphAssignment

render = pytest.importorskip("mmdsynth.render")
from mmdsynth.render import (  # noqa: E402
    MMD_TO_VIEW,
    PRESETS,
    Framing,
    Lighting,
    ModelRenderer,
    Preset,
    RenderError,
    get_context,
    rest_mesh,
)

try:
    get_context()
except RenderError as exc:  # pragma: no cover - machines without EGL
    pytest.skip(f"no headless OpenGL: {exc}", allow_module_level=True)


# Gene's head, measured on the geometry (rest pose): the highest vertex skinned to
# 頭 or its children (the top of a hair strand) and the chin tip (the lowest
# front-centre vertex of the face). Both formats share the vertex data.
GENE_TOP = 19.95762
GENE_CHIN = 16.657291
GENE_MORPHS = MorphAssignment(wink_left="ウィンク２", wink_right="ｳｨﾝｸ２右", wink_both="まばたき", mouth="あ")
EXAMPLE_MORPHS = MorphAssignment(wink_left="ウィンク", wink_right="ウィンク右", wink_both="まばたき", mouth="あ")
# Every eye slot of the example character (mmd/example.py): slot -> (morph, side closed),
# side +1 the character's left (+X, the image's right), -1 the right, 0 both.
EXAMPLE_EYE_SLOTS = {
    "wink_left": ("ウィンク", 1),
    "wink_right": ("ウィンク右", -1),
    "wink_both": ("まばたき", 0),
    "smile_wink_left": ("ウィンク２", 1),
    "smile_wink_right": ("ウィンク２右", -1),
    "smile_wink_both": ("笑い", 0),
}


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def head_mask(model: Model) -> np.ndarray:
    """(N,) bool: vertices whose largest weight is on 頭 or one of its descendants."""
    head = model.bone_index("頭")
    sub = {head}
    grown = True
    while grown:
        grown = False
        for i, bone in enumerate(model.bones):
            if i not in sub and bone.parent in sub:
                sub.add(i)
                grown = True
    dominant = model.bone_indices[np.arange(model.vertex_count), np.argmax(model.bone_weights, axis=1)]
    return np.isin(dominant, sorted(sub))


def face_front_model(model: Model) -> tuple[Model, float]:
    """A copy of ``model`` drawing only the front of the face: faces of the
    material holding the chin tip whose vertices are all head-skinned and in
    front of the 頭 bone. Returns (sub-model, chin Y); the vertex arrays (and
    so posing) are unchanged."""
    mask = head_mask(model)
    head_z = model.bones[model.bone_index("頭")].position[2]
    p = model.positions
    front = mask & (p[:, 2] < head_z)
    centre = front & (np.abs(p[:, 0] - model.bones[model.bone_index("頭")].position[0]) < 0.05)
    chin_vertex = np.flatnonzero(centre)[np.argmin(p[centre, 1])]
    ranges = model.material_face_ranges()
    mat = next(i for i, (a, b) in enumerate(ranges) if np.any(model.faces[a:b] == chin_vertex))
    a, b = ranges[mat]
    faces = model.faces[a:b]
    faces = faces[np.all(front[faces], axis=1)]
    materials = [dataclasses.replace(m, face_count=len(faces) if i == mat else 0) for i, m in enumerate(model.materials)]
    return dataclasses.replace(model, faces=faces, materials=materials), float(p[chin_vertex, 1])


def covered(img: np.ndarray) -> np.ndarray:
    return img[..., 3] > 0


def rows_cols(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.nonzero(covered(img))


def centroid_x(img: np.ndarray) -> float:
    a = img[..., 3].astype(np.float64)
    return float((a * np.arange(img.shape[1])[None, :]).sum() / a.sum())


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(a != b, axis=-1)


def pose_of(text: str, assignment: MorphAssignment) -> Pose:
    return THA1.to_pose(THA1.constrain(THA1.parse(text), assignment), assignment)


def morph_region(model: Model, framing: Framing, morph_name: str, pad: float = 2.0) -> tuple[float, float, float, float]:
    """Pixel box (x0, y0, x1, y1) holding every triangle that touches a vertex
    of the morph, before and after the morph at weight 1."""
    morph = model.morphs[model.morph_index(morph_name)]
    moved = np.zeros(model.vertex_count, bool)
    moved[morph.indices] = True
    tris = model.faces[np.any(moved[model.faces], axis=1)]
    verts = np.unique(tris)
    after = model.positions.copy()
    np.add.at(after, morph.indices, morph.offsets)
    px = framing.to_pixels(np.concatenate([model.positions[verts], after[verts]]))
    return px[:, 0].min() - pad, px[:, 1].min() - pad, px[:, 0].max() + pad, px[:, 1].max() + pad


def quads_model(double_sided_second: bool = False, alpha: float = 1.0, diffuse=(1.0, 0.5, 0.25),
                specular=(0.0, 0.0, 0.0)) -> Model:
    """Two unit quads in the plane Z = 0, both bones-free and untextured:
    quad A (x in [-2, -1]) faces the viewer (-Z), quad B (x in [1, 2]) faces away.
    PMX front faces are clockwise seen from the front: cross(b - a, c - a)
    points out of the front."""
    def quad(x0, facing_viewer):
        p = np.array([[x0, 0, 0], [x0, 1, 0], [x0 + 1, 1, 0], [x0 + 1, 0, 0]], np.float32)
        tris = np.array([[0, 1, 2], [0, 2, 3]]) if facing_viewer else np.array([[0, 2, 1], [0, 3, 2]])
        n = np.tile(np.array([0, 0, -1 if facing_viewer else 1], np.float32), (4, 1))
        return p, n, tris

    pa, na, ta = quad(-2.0, True)
    pb, nb, tb = quad(1.0, False)
    m = Model(name="quads")
    m.positions = np.concatenate([pa, pb])
    m.normals = np.concatenate([na, nb])
    m.uvs = np.zeros((8, 2), np.float32)
    m.faces = np.concatenate([ta, tb + 4]).astype(np.uint32)
    m.deform_types = np.zeros(8, np.uint8)
    m.bone_indices = np.full((8, 4), -1, np.int32)
    m.bone_weights = np.zeros((8, 4), np.float32)
    flags_b = MaterialFlag.DOUBLE_SIDED if double_sided_second else 0
    m.materials = [
        Material(name="A", diffuse=(*diffuse, alpha), specular=specular, specular_power=8.0, face_count=2),
        Material(name="B", diffuse=(*diffuse, alpha), specular=specular, specular_power=8.0, face_count=2, flags=flags_b),
    ]
    return m


QUAD_PRESET = Preset("quad", 64, 64, 16.0, 48.0)
# 16 px per unit: y in [0, 1] -> rows 32..48, x in [-2, 2] -> columns 0..64.
QUAD_FRAMING = Framing.from_head(QUAD_PRESET, 2.0, 0.0, 0.0)


def quad_pixels(img: np.ndarray, which: str) -> np.ndarray:
    """Interior pixels of quad A (x in [-2,-1]) or B (x in [1,2]) in QUAD_FRAMING."""
    return img[34:46, 2:14] if which == "A" else img[34:46, 50:62]


# ---------------------------------------------------------------------------
# Fixtures (module scope: one renderer per model)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gene(gene_pmx):
    model = load_model(gene_pmx)
    with ModelRenderer(model, "tha1") as r:
        yield model, r, Framing.from_head("tha1", GENE_TOP, GENE_CHIN, model.bones[model.bone_index("頭")].position[0])


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    write_example = pytest.importorskip("mmdsynth.mmd.example").write_example
    model = load_model(write_example(tmp_path_factory.mktemp("example")))
    top = float(model.positions[head_mask(model), 1].max())
    _, chin = face_front_model(model)
    with ModelRenderer(model, "tha1") as r:
        yield model, r, Framing.from_head("tha1", top, chin, model.bones[model.bone_index("頭")].position[0])


@pytest.fixture(scope="module", params=["gene", "example"])
def character(request):
    model, renderer, framing = request.getfixturevalue(request.param)
    assignment = GENE_MORPHS if request.param == "gene" else EXAMPLE_MORPHS
    rest = renderer.render_pose(None, framing)
    return request.param, model, renderer, framing, assignment, rest


@pytest.fixture(scope="module")
def face_fronts(gene, example):
    """(model, renderer, framing) of the face-front sub-models of both characters."""
    out = {}
    for name, (model, _, framing) in (("gene", gene), ("example", example)):
        sub, _ = face_front_model(model)
        out[name] = (sub, ModelRenderer(sub, "tha1"), framing)
    yield out
    for _, r, _ in out.values():
        r.release()


# ---------------------------------------------------------------------------
# Framing (pure numpy)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tha1", "tha3"])
def test_framing_puts_head_on_preset_rows(preset):
    f = Framing.from_head(preset, head_top=20.0, head_bottom=16.0, center_x=0.3)
    p = PRESETS[preset]
    assert (f.width, f.height) == (p.width, p.height) == ((256, 256) if preset == "tha1" else (512, 512))
    px = f.to_pixels(np.array([[0.3, 20.0, 5.0], [0.3, 16.0, -5.0], [1.3, 18.0, 0.0]]))
    np.testing.assert_allclose(px[0], [p.width / 2, 64.0])
    np.testing.assert_allclose(px[1], [p.width / 2, 192.0])
    np.testing.assert_allclose(px[2], [p.width / 2 + 32.0, 128.0])  # 128 px per 4 units
    np.testing.assert_allclose(f.to_mmd(px)[:, :2], [[0.3, 20.0], [0.3, 16.0], [1.3, 18.0]])
    # The projection sends the image corners to NDC corners and the nearest Z (smallest MMD Z) to -1.
    left, right, bottom, top = f.view_bounds
    mvp = f.mvp(-2.0, 3.0)
    corner = mvp @ np.array([left, top, -2.0, 1.0])
    np.testing.assert_allclose(corner[:3] / corner[3], [-1.0, 1.0, -1.0], atol=1e-12)
    corner = mvp @ np.array([right, bottom, 3.0, 1.0])
    np.testing.assert_allclose(corner[:3] / corner[3], [1.0, -1.0, 1.0], atol=1e-12)
    assert np.array_equal(MMD_TO_VIEW, np.diag([1.0, 1.0, -1.0, 1.0]))


def test_framing_rejects_bad_bounds():
    with pytest.raises(ValueError, match="above"):
        Framing.from_head("tha1", 16.0, 20.0)
    with pytest.raises(ValueError, match="finite"):
        Framing.from_head("tha1", float("nan"), 16.0)
    with pytest.raises(KeyError, match="tha1"):
        Framing.from_head("tha9", 20.0, 16.0)
    with pytest.raises(ValueError):
        Lighting(ambient=-1.0)
    with pytest.raises(ValueError):
        Lighting(direction=(0.0, 0.0, 0.0))


# ---------------------------------------------------------------------------
# Characters
# ---------------------------------------------------------------------------


def test_background_is_exactly_transparent_black(character):
    name, model, renderer, framing, assignment, rest = character
    assert rest.shape == (256, 256, 4) and rest.dtype == np.uint8
    posed = renderer.render_pose(pose_of("left_eye=1,mouth=1,head_x=1,head_y=-1,neck_z=0.7", assignment), framing)
    for img in (rest, posed):
        empty = img[..., 3] == 0
        assert empty.sum() > 0.2 * empty.size  # plenty of background
        assert not img[empty].any()  # every uncovered pixel is exactly (0,0,0,0)
        assert covered(img).sum() > 0.2 * empty.size
        assert not img[0].any() and not img[:128, 0].any() and not img[:128, -1].any()  # top, upper sides empty


def test_head_top_and_chin_land_on_preset_rows(character, face_fronts):
    name, model, renderer, framing, assignment, rest = character
    rows, _ = rows_cols(rest)
    assert abs(rows.min() - 64) <= 2, f"{name}: first covered row {rows.min()}, expected 64"
    _, front_renderer, _ = face_fronts[name]
    front = front_renderer.render_pose(None, framing)
    rows, cols = rows_cols(front)
    assert abs(rows.max() - 191) <= 2, f"{name}: chin in row {rows.max()}, expected 191 (head in rows 64..191)"
    assert abs(cols.mean() - 128) <= 2  # the face is centred on the 頭 bone's X


@pytest.mark.parametrize("side", ["left", "right"])
def test_eye_morph_changes_only_that_eye(character, side):
    name, model, renderer, framing, assignment, rest = character
    img = renderer.render_pose(pose_of(f"{side}_eye=1", assignment), framing)
    diff = changed(img, rest)
    assert diff.sum() > 20, f"{name}: the {side} eye morph changed {diff.sum()} pixels"
    ys, xs = np.nonzero(diff)
    x0, y0, x1, y1 = morph_region(model, framing, assignment.get(f"wink_{side}"))
    assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1
    # The character's left eye is on the image's right.
    if side == "left":
        assert xs.min() >= 128, f"{name}: left eye changed column {xs.min()}"
    else:
        assert xs.max() < 128, f"{name}: right eye changed column {xs.max()}"


@pytest.mark.parametrize("slot", list(EXAMPLE_EYE_SLOTS))
def test_every_example_eye_slot_changes_only_its_eyes(example, slot):
    """Each of the example's six eye morphs at weight 1 changes pixels only in
    the eye(s) it closes: one-eye morphs only that eye's box (the character's
    left = the image's right), both-eye morphs both boxes and nothing between;
    a both-eye picture is exactly the two one-eye pictures put side by side.
    (Measured: about 520 changed pixels per eye.)"""
    model, renderer, framing = example
    name, side = EXAMPLE_EYE_SLOTS[slot]
    family = "smile_wink" if slot.startswith("smile") else "wink"
    one_eye = {1: EXAMPLE_EYE_SLOTS[f"{family}_left"][0], -1: EXAMPLE_EYE_SLOTS[f"{family}_right"][0]}
    rest = renderer.render_pose(None, framing)

    def closed(morph):
        return renderer.render_pose(Pose(morphs={morph: 1.0}), framing)

    img = closed(name)
    diff = changed(img, rest)
    ys, xs = np.nonzero(diff)
    # Eye boxes: every triangle the one-eye morph of that side touches, before and after.
    boxes = {s: morph_region(model, framing, one_eye[s]) for s in (1, -1)}
    assert boxes[1][0] > 128 > boxes[-1][2]  # the two boxes are apart, the left eye on the image's right
    inside = {s: (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1) for s, (x0, y0, x1, y1) in boxes.items()}
    assert (inside[1] | inside[-1]).all(), f"{name}: {int((~(inside[1] | inside[-1])).sum())} changed pixels outside both eyes"
    for s in (1, -1):
        n = int(inside[s].sum())
        if side in (0, s):
            assert n > 200, f"{name}: only {n} pixels changed in the {'left' if s > 0 else 'right'} eye"
        else:
            assert n == 0, f"{name}: changed {n} pixels of the {'left' if s > 0 else 'right'} eye"
    if side == 0:
        assert np.array_equal(img[:, 128:], closed(one_eye[1])[:, 128:])
        assert np.array_equal(img[:, :128], closed(one_eye[-1])[:, :128])
    if family == "smile_wink":  # the smiling arcs are not the plain closed lids
        plain = EXAMPLE_EYE_SLOTS["wink" + slot[len("smile_wink"):]][0]
        assert changed(img, closed(plain)).sum() > 20


def test_mouth_morph_changes_only_the_mouth(character):
    name, model, renderer, framing, assignment, rest = character
    img = renderer.render_pose(pose_of("mouth=1", assignment), framing)
    diff = changed(img, rest)
    assert diff.sum() > 10
    ys, xs = np.nonzero(diff)
    x0, y0, x1, y1 = morph_region(model, framing, assignment.mouth)
    assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1
    eye_y = framing.to_pixels(np.array(model.bones[model.bone_index("左目")].position))[1]
    assert ys.min() > eye_y  # below the eyes
    assert abs(xs.mean() - 128) < 6  # centred


def test_rotation_signs(character, face_fronts):
    """head_y > 0: the face toward the image's right; head_x > 0: the chin up;
    neck_z > 0: counter-clockwise on screen (the face, above the neck, swings left).
    Measured on the front of the face (see face_front_model)."""
    name, model, renderer, framing, assignment, rest = character
    _, front_renderer, _ = face_fronts[name]
    base = front_renderer.render_pose(None, framing)
    rows = rows_cols(base)[0]

    def front(text):
        return front_renderer.render_pose(pose_of(text, assignment), framing)

    cx = centroid_x(base)
    assert abs(cx - 128) < 1.5
    # 15 degrees move the face's centroid by about 2 px at tha1 (the face is near the axis).
    assert centroid_x(front("head_y=1")) > cx + 1
    assert centroid_x(front("head_y=-1")) < cx - 1
    chin = rows.max()
    assert rows_cols(front("head_x=1"))[0].max() < chin - 2
    assert rows_cols(front("head_x=-1"))[0].max() > chin + 2
    assert centroid_x(front("neck_z=1")) < cx - 3
    assert centroid_x(front("neck_z=-1")) > cx + 3
    turned = renderer.render_pose(pose_of("head_y=1", assignment), framing)
    assert changed(turned, rest).sum() > 200


def test_head_y_turns_mirror_each_other_on_the_example(example, face_fronts):
    model, renderer, framing = example
    # Rows from the forehead down (the ahoge above curls to one side).
    start = rows_cols(face_fronts["example"][1].render_pose(None, framing))[0].min()
    plus = renderer.render_pose(pose_of("head_y=0.5", EXAMPLE_MORPHS), framing)[start:]
    minus = renderer.render_pose(pose_of("head_y=-0.5", EXAMPLE_MORPHS), framing)[start:]
    # Silhouettes mirror exactly up to rasterisation; colours up to the textures'
    # own asymmetry (eye highlights).
    mirrored = minus[:, ::-1]
    alpha_off = np.abs(plus[..., 3].astype(int) - mirrored[..., 3]) > 64
    plain_off = np.abs(plus[..., 3].astype(int) - minus[..., 3]) > 64
    assert alpha_off.sum() <= 20 and plain_off.sum() > 200
    mad_mirror = np.abs(plus.astype(int) - mirrored).mean()
    mad_plain = np.abs(plus.astype(int) - minus).mean()
    assert mad_mirror < 0.5 * mad_plain


def test_gene_pmx_and_pmd_render_nearly_the_same(gene, gene_pmd, record_property):
    model, renderer, framing = gene
    pmd = load_model(gene_pmd)
    a = renderer.render_pose(None, framing)
    with ModelRenderer(pmd, "tha1") as r:
        mesh = rest_mesh(pmd)
        raw = r.render(mesh, framing)
        # The PMD stores diffuse alpha 0.98 for the "pale face" (9) and "irritation mark" (12)
        # overlays that the PMX hides (alpha 0) and shows through material morphs, which PMD
        # cannot express; hide them as the PMX does to compare the renderer's handling.
        mesh.materials = [dataclasses.replace(m, diffuse=(*m.diffuse[:3], 0.0)) if i in (9, 12) else m
                          for i, m in enumerate(mesh.materials)]
        b = r.render(mesh, framing)
    mad = float(np.abs(a.astype(int) - b.astype(int)).mean())
    mad_raw = float(np.abs(a.astype(int) - raw.astype(int)).mean())
    record_property("pmx_pmd_mean_abs_diff", mad)
    record_property("pmx_pmd_mean_abs_diff_with_overlays", mad_raw)
    print(f"Gene PMX vs PMD: mean |diff| {mad:.5f} (with the PMD-only overlays: {mad_raw:.3f}) of 255")
    assert mad < 0.1
    assert mad_raw < 5.0


def test_same_call_gives_identical_bytes(gene):
    model, renderer, framing = gene
    pose = pose_of("left_eye=0.3,mouth=0.4,head_x=0.2,head_y=-0.5,neck_z=0.1", GENE_MORPHS)
    a = renderer.render_pose(pose, framing, Lighting(ambient=0.9))
    renderer.render_pose(None, framing)  # something else in between
    b = renderer.render_pose(pose, framing, Lighting(ambient=0.9))
    assert a.tobytes() == b.tobytes()
    c = renderer.render(pose_model(model, pose), framing, Lighting(ambient=0.9))
    assert c.tobytes() == renderer.render(pose_model(model, pose), framing, Lighting(ambient=0.9)).tobytes()


def test_gpu_skinning_matches_pose_model(gene):
    model, renderer, framing = gene
    pose = pose_of("left_eye=0.7,mouth=0.5,head_x=-0.8,head_y=0.9,neck_z=-0.6", GENE_MORPHS)
    ref = pose_model(model, pose)
    pos, nrm = renderer.skin_on_gpu(pose)
    assert np.abs(pos - ref.positions).max() < 1e-4
    assert np.abs(nrm - ref.normals).max() < 1e-4
    gpu = renderer.render_pose(pose, framing)
    cpu = renderer.render(ref, framing)
    diff = np.abs(gpu.astype(int) - cpu.astype(int))
    assert diff.mean() < 0.05 and (diff.max(axis=-1) > 16).sum() <= 3


def test_expression_only_pose_skips_skinning_with_the_same_pixels(gene, monkeypatch):
    model, renderer, framing = gene
    expression = pose_of("left_eye=0.8,mouth=0.6", GENE_MORPHS)  # head/neck rotations at 0 = identity
    assert expression.rotations and renderer.poser.skeleton_at_rest(expression)
    light = Lighting(ambient=0.6, directional=0.4)
    fast = renderer.render_pose(expression, framing, light)
    rest = renderer.render_pose(None, framing, light)
    calls = []
    real_bones = renderer.poser.bones
    monkeypatch.setattr(renderer.poser, "skeleton_at_rest", lambda *a, **k: False)  # force FK + GPU skinning
    monkeypatch.setattr(renderer.poser, "bones", lambda *a, **k: calls.append(1) or real_bones(*a, **k))
    assert renderer.render_pose(expression, framing, light).tobytes() == fast.tobytes()
    assert renderer.render_pose(None, framing, light).tobytes() == rest.tobytes()
    assert len(calls) == 2
    assert fast.tobytes() != rest.tobytes()  # the morphs did change the picture


def test_skeleton_at_rest_only_without_bone_motion(gene):
    model, renderer, framing = gene
    poser = renderer.poser
    assert poser.skeleton_at_rest(Pose()) and poser.skeleton_at_rest(Pose(morphs={GENE_MORPHS.mouth: 1.0}))
    assert poser.skeleton_at_rest(Pose(rotations={"頭": (0.0, 0.0, 0.0, 2.0)}, translations={"首": (0, 0, 0)}))
    assert not poser.skeleton_at_rest(Pose(rotations={"頭": (0.0, 0.01, 0.0, 1.0)}))
    assert not poser.skeleton_at_rest(Pose(translations={"首": (0.0, 0.0, 1e-6)}))
    assert not poser.skeleton_at_rest(Pose(rotations={"頭": (0.0, 0.0, 0.0, 0.0)}))  # invalid: the full path raises
    with pytest.raises(KeyError):
        poser.skeleton_at_rest(Pose(rotations={"no such bone": (0.0, 0.0, 0.0, 1.0)}))
    with pytest.raises(KeyError):
        renderer.render_pose(Pose(rotations={"no such bone": (0.0, 0.0, 0.0, 1.0)}), framing)


def test_texture_premultiply_rounds_like_the_formula():
    from mmdsynth.render.renderer import _premultiply

    c, a = np.meshgrid(np.arange(256), np.arange(256))
    out = _premultiply(np.stack([c, 255 - c, c // 2, a], -1).astype(np.uint8))
    for k, channel in enumerate((c, 255 - c, c // 2)):
        assert np.array_equal(out[..., k], (channel * a + 127) // 255)  # round(c * a / 255) for every pair
    assert np.array_equal(out[..., 3], a) and out.dtype == np.uint8 and out.flags.c_contiguous


@pytest.mark.parametrize("builder", ["quad_model", "full_model"])
def test_gpu_skinning_sdef_qdef_match_pose_model(builder):
    modelkit = pytest.importorskip("modelkit")
    model = getattr(modelkit, builder)()
    kinds = set(np.unique(model.deform_types).tolist())
    assert DeformType.SDEF in kinds and (builder == "quad_model" or DeformType.QDEF in kinds)
    angle = 0.6
    pose = Pose(rotations={1: (0.0, 0.0, np.sin(angle / 2), np.cos(angle / 2)), 0: (np.sin(0.1), 0.0, 0.0, np.cos(0.1))},
                translations={0: (0.1, 0.2, -0.3)})
    ref = pose_model(model, pose)
    with ModelRenderer(model, QUAD_PRESET) as r:
        pos, nrm = r.skin_on_gpu(pose)
    assert np.abs(pos - ref.positions).max() < 1e-5
    assert np.abs(nrm - ref.normals).max() < 1e-5


def test_edges_are_antialiased(gene):
    model, renderer, framing = gene
    img = renderer.render_pose(None, framing)
    partial = (img[..., 3] > 0) & (img[..., 3] < 255)
    assert partial.sum() > 200
    assert len(np.unique(img[..., 3][partial])) >= 3  # several coverage levels
    with ModelRenderer(model, "tha1", samples=0, supersample=1) as aliased:
        hard = aliased.render_pose(None, framing)
    assert not ((hard[..., 3] > 0) & (hard[..., 3] < 255)).any()
    with ModelRenderer(model, "tha1", samples=4, supersample=1) as msaa:
        soft = msaa.render_pose(None, framing)
    assert ((soft[..., 3] > 0) & (soft[..., 3] < 255)).sum() > 200
    assert not soft[soft[..., 3] == 0].any()  # background exact with MSAA too


def test_tha3_preset(gene):
    model, renderer, _ = gene
    framing = Framing.from_head("tha3", GENE_TOP, GENE_CHIN, 0.0)
    img = renderer.render_pose(pose_of("right_eye=1", GENE_MORPHS), framing)
    assert img.shape == (512, 512, 4)
    rows, cols = rows_cols(img)
    assert abs(rows.min() - 64) <= 2
    assert not img[img[..., 3] == 0].any()


# ---------------------------------------------------------------------------
# Hand-built models: culling, shading formula, transparency
# ---------------------------------------------------------------------------


def test_back_faces_are_culled_unless_double_sided():
    with ModelRenderer(quads_model(), QUAD_PRESET) as r:
        img = r.render(rest_mesh(r.model), QUAD_FRAMING)
    assert (quad_pixels(img, "A")[..., 3] == 255).all()  # front face: drawn
    assert not quad_pixels(img, "B").any()  # back face of a single-sided material: culled
    with ModelRenderer(quads_model(double_sided_second=True), QUAD_PRESET) as r:
        img2 = r.render(rest_mesh(r.model), QUAD_FRAMING)
    assert (quad_pixels(img2, "B")[..., 3] == 255).all()  # double-sided: drawn
    # ... and lit like a front face (its normal is flipped toward the viewer).
    assert np.abs(quad_pixels(img2, "B").astype(int) - quad_pixels(img2, "A")).max() <= 1


def test_shading_formula_on_a_flat_quad():
    """rgb = D * (ambient + directional * N.L) + S * directional * (R.V)^p, clamped."""
    with ModelRenderer(quads_model(diffuse=(0.8, 0.4, 0.2), specular=(0.2, 0.1, 0.0)), QUAD_PRESET) as r:
        mesh = rest_mesh(r.model)
        a = quad_pixels(r.render(mesh, QUAD_FRAMING, Lighting(ambient=0.5, directional=0.5)), "A")
        # Facing the light and the viewer: N.L = 1, R.V = 1.
        expect = np.array([0.8 * 1.0 + 0.2 * 0.5, 0.4 * 1.0 + 0.1 * 0.5, 0.2 * 1.0]) * 255
        assert np.abs(a[..., :3].astype(float) - expect).max() <= 1.0
        dark = quad_pixels(r.render(mesh, QUAD_FRAMING, Lighting(ambient=0.2, directional=0.0)), "A")
        assert np.abs(dark[..., :3].astype(float) - np.array([0.16, 0.08, 0.04]) * 255).max() <= 1.0
        bright = quad_pixels(r.render(mesh, QUAD_FRAMING, Lighting(ambient=1.2, directional=0.5)), "A")
        assert (bright[..., 0] == 255).all()  # clamped
        # Light from the side (along +x): N.L = 0, no specular: ambient only.
        side = quad_pixels(r.render(mesh, QUAD_FRAMING, Lighting(ambient=0.5, directional=0.5, direction=(1, 0, 0))), "A")
        assert np.abs(side[..., :3].astype(float) - np.array([0.4, 0.2, 0.1]) * 255).max() <= 1.0


def test_partial_alpha_is_straight_and_blends():
    with ModelRenderer(quads_model(alpha=0.5, diffuse=(1.0, 0.5, 0.25)), QUAD_PRESET) as r:
        img = r.render(rest_mesh(r.model), QUAD_FRAMING)
    a = quad_pixels(img, "A")
    assert (a[..., 3] == 128).all()  # coverage: 0.5 -> 128
    # Straight alpha: the colour itself, not premultiplied (within 8-bit rounding).
    assert np.abs(a[..., :3].astype(int) - [255, 128, 64]).max() <= 2


def test_transparent_texels_are_discarded_without_depth(tmp_path):
    """A texture that is transparent on its left half, in front of an opaque quad:
    the quad behind shows through there (no depth was written)."""
    tex = np.zeros((8, 8, 4), np.uint8)
    tex[:, 4:] = (0, 0, 255, 255)  # right half opaque blue, left half alpha 0
    Image.fromarray(tex).save(tmp_path / "t.png")
    p = np.array([[-2, 0, -1], [-2, 1, -1], [2, 1, -1], [2, 0, -1],  # front plane (nearer the viewer)
                  [-2, 0, 0], [-2, 1, 0], [2, 1, 0], [2, 0, 0]], np.float32)  # back plane
    m = Model(name="layers", path=tmp_path / "layers.pmx", textures=["t.png"])
    m.positions = p
    m.normals = np.tile(np.array([0, 0, -1], np.float32), (8, 1))
    m.uvs = np.array([[0, 1], [0, 0], [1, 0], [1, 1]] * 2, np.float32)
    m.faces = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]], np.uint32)
    m.materials = [Material(name="front", texture_index=0, face_count=2, flags=MaterialFlag.DOUBLE_SIDED),
                   Material(name="back", diffuse=(1.0, 0.0, 0.0, 1.0), face_count=2)]
    with ModelRenderer(m, QUAD_PRESET) as r:
        img = r.render(rest_mesh(m), QUAD_FRAMING)
    left, right = img[34:46, 6:26], img[34:46, 38:58]  # away from texel-filtering seams
    assert (left[..., 0] == 255).all() and (left[..., 2] == 0).all()  # the red back plane
    assert (right[..., 2] == 255).all() and (right[..., 0] == 0).all()  # the blue texture


def test_sphere_maps_are_optional(testdata, tmp_path):
    """The babylon-mmd matcap sample (a sphere whose material has only a .sph map,
    its image not shipped): given a sphere map red on the right and blue on the
    left, the sphere's right side (normals toward +x) turns red when sphere maps
    are on; off by default."""
    model = load_model(testdata / "models" / "babylon-mmd" / "matcap_sample.pmx")
    sph = np.zeros((16, 16, 4), np.uint8)
    sph[:, :8] = (0, 0, 255, 255)
    sph[:, 8:] = (255, 0, 0, 255)
    Image.fromarray(sph).save(tmp_path / "s.png")
    model.path = tmp_path / "matcap.pmx"
    model.textures = ["s.png"]
    model._texture_cache = {}
    assert model.materials[0].sphere_mode == 1 and model.materials[0].sphere_index == 0
    framing = Framing.from_head("tha1", 5.0, -5.0, 0.0)
    with ModelRenderer(model, "tha1") as r:
        plain = r.render_pose(None, framing)
    with ModelRenderer(model, "tha1", sphere_maps=True) as r:
        mapped = r.render_pose(None, framing)
    right, left = mapped[128, 150:175].astype(int), mapped[128, 81:106].astype(int)
    assert (right[:, 0] > 200).all() and (right[:, 2] < 10).all()
    assert (left[:, 2] > 200).all() and (left[:, 0] < 10).all()
    grey = plain[128, 81:175].astype(int)
    assert (np.abs(grey[:, 0] - grey[:, 2]) <= 1).all()  # off by default: untouched white material


def test_sphere_map_add_mode_adds_and_subtexture_mode_is_off(tmp_path):
    """Mode 2 (.spa) adds the sphere colour to tex.rgb before lighting
    (rgb = (tex + s) * D * (A + C * N.L)); mode 1 (.sph) multiplies; mode 3
    (sub-texture) is treated as off. A flat, untextured quad (tex = white)
    facing the viewer and a one-colour sphere texture, so the sample is exact."""
    from mmdsynth.mmd.model import SphereMode

    s = np.array([51, 102, 153]) / 255  # (0.2, 0.4, 0.6), exact in 8 bits
    sph = np.zeros((8, 8, 4), np.uint8)
    sph[...] = (51, 102, 153, 255)
    Image.fromarray(sph).save(tmp_path / "s.png")
    diffuse = np.array([0.4, 0.3, 0.2])
    light = Lighting(ambient=0.5, directional=0.0)

    def quad_a(mode, sphere_maps=True):
        m = quads_model(diffuse=tuple(diffuse))
        m.path, m.textures = tmp_path / "q.pmx", ["s.png"]
        for mat in m.materials:
            mat.sphere_index, mat.sphere_mode = (0, mode) if mode != SphereMode.OFF else (-1, mode)
        with ModelRenderer(m, QUAD_PRESET, sphere_maps=sphere_maps) as r:
            img = r.render(rest_mesh(m), QUAD_FRAMING, light)
        a = quad_pixels(img, "A")
        assert (a[..., 3] == 255).all()
        return a[..., :3].astype(float)

    plain = quad_a(SphereMode.OFF)
    np.testing.assert_allclose(plain, np.broadcast_to(diffuse * 0.5 * 255, plain.shape), atol=1.0)  # (0.2, 0.15, 0.1)
    added = quad_a(SphereMode.ADD)
    np.testing.assert_allclose(added, np.broadcast_to((1 + s) * diffuse * 0.5 * 255, added.shape), atol=1.0)  # (0.24, 0.21, 0.16)
    assert (added > plain + 8).all()  # brighter in every channel: added, not multiplied
    # (Added after lighting it would be D * 0.5 + s = (0.4, 0.55, 0.7): far off.)
    multiplied = quad_a(SphereMode.MULTIPLY)
    np.testing.assert_allclose(multiplied, np.broadcast_to(s * diffuse * 0.5 * 255, multiplied.shape), atol=1.0)
    # Mode 3 and the maps switched off give exactly the plain material.
    assert np.array_equal(quad_a(SphereMode.SUBTEXTURE), plain)
    assert np.array_equal(quad_a(SphereMode.ADD, sphere_maps=False), plain)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmdsynth", *args], capture_output=True, text=True)


def test_cli_pose_writes_a_png(gene_pmx, tmp_path):
    out = tmp_path / "sub" / "wink.png"
    res = run_cli("pose", str(gene_pmx), "--out", str(out), "--pose", "left_eye=1,head_y=0.5",
                  "--head-top", str(GENE_TOP), "--head-bottom", str(GENE_CHIN))
    assert res.returncode == 0, res.stderr
    img = np.asarray(Image.open(out))
    assert img.shape == (256, 256, 4) and img[..., 3].any()
    assert not img[img[..., 3] == 0].any()
    assert "suggested morphs" in res.stderr and "suggested head bounds" not in res.stderr
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, nothing left over


def test_cli_pose_suggests_head_bounds(gene_pmx, tmp_path):
    out = tmp_path / "rest.png"
    res = run_cli("pose", str(gene_pmx), "--out", str(out), "--rest", "--preset", "tha3")
    assert res.returncode == 0, res.stderr
    assert "suggested head bounds" in res.stderr
    assert np.asarray(Image.open(out)).shape == (512, 512, 4)


@pytest.mark.parametrize("args, message", [
    (["--pose", "left_eye=2"], "outside"),
    (["--pose", "nose=1"], "unknown pose parameter"),
    (["--pose", "mouth=x"], "not a number"),
    (["--pose", "mouth=1", "--rest"], "not both"),
    (["--head-top", "19"], "both"),
    (["--head-top", "15", "--head-bottom", "19"], "above"),
])
def test_cli_pose_bad_input_is_one_line(gene_pmx, tmp_path, capsys, args, message):
    from mmdsynth.cli import main

    assert main(["pose", str(gene_pmx), "--out", str(tmp_path / "x.png"), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("mmdsynth pose: error: ")
    assert not (tmp_path / "x.png").exists()


def test_cli_pose_bad_model(tmp_path):
    bad = tmp_path / "bad.pmx"
    bad.write_bytes(b"PMX \x00\x00\x00@garbage")
    res = run_cli("pose", str(bad), "--out", str(tmp_path / "x.png"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    res = run_cli("pose", str(tmp_path / "missing.pmx"), "--out", str(tmp_path / "x.png"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1


def test_bench_render_reports_the_figures(gene_pmx):
    from mmdsynth.bench import bench_render, format_render_result

    r = bench_render(gene_pmx, repeat=3, poses=2)
    assert r["pose_render_s"] > 0 and r["bare_s"] > 0 and r["ratio"] == pytest.approx(r["pose_render_s"] / r["bare_s"])
    text = format_render_result(r)
    assert "pose+render+readback" in text and "bare raster" in text and "ratio" in text
