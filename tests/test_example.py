"""The built-in example character (mmdsynth.mmd.example)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
from PIL import Image

from mmdsynth.mmd import BoneFlag, DeformType, MaterialFlag, MorphKind, MorphPanel
from mmdsynth.mmd import example as ex
from mmdsynth.mmd.example import EXAMPLE_TEXTURES, build_example_model, write_example

EYE_MORPHS = {
    # name: (panel, side closed) with side +1 = character's left (+X), -1 right, 0 both
    "まばたき": (MorphPanel.EYE, 0),
    "ウィンク": (MorphPanel.EYE, 1),
    "ウィンク右": (MorphPanel.EYE, -1),
    "笑い": (MorphPanel.EYE, 0),
    "ウィンク２": (MorphPanel.EYE, 1),
    "ウィンク２右": (MorphPanel.EYE, -1),
}
REQUIRED_PARENTS = {
    "センター": None,
    "上半身": "センター",
    "首": "上半身",
    "頭": "首",
    "両目": "頭",
    "左目": "頭",
    "右目": "頭",
}


@pytest.fixture(scope="module")
def model():
    return build_example_model()


def material_vertices(model, name: str) -> np.ndarray:
    """Indices of the vertices used by the faces of material ``name``."""
    for (start, end), mat in zip(model.material_face_ranges(), model.materials):
        if mat.name == name:
            return np.unique(model.faces[start:end])
    raise KeyError(name)


def material_faces(model, *names: str) -> np.ndarray:
    out = [model.faces[s:e] for (s, e), m in zip(model.material_face_ranges(), model.materials) if m.name in names]
    return np.concatenate(out).astype(np.int64)


def morphed(model, name: str, weight: float = 1.0) -> np.ndarray:
    pos = model.positions.astype(np.float64).copy()
    morph = model.morphs[model.morph_index(name)]
    pos[morph.indices] += weight * morph.offsets
    return pos


def covered(points: np.ndarray, tri: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """For 2D points (N,2) and triangles (M,3,2): is each point inside any triangle?"""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]

    def cross(u, v):
        return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]

    area = cross(b - a, c - a)
    keep = np.abs(area) > 1e-12
    a, b, c, area = a[keep], b[keep], c[keep], area[keep]
    p = points[:, None, :]
    w0 = cross(c - b, p - b) / area
    w1 = cross(a - c, p - c) / area
    w2 = 1.0 - w0 - w1
    inside = (w0 >= -eps) & (w1 >= -eps) & (w2 >= -eps)
    return inside.any(axis=1)


def sclera_samples(model, side: int) -> np.ndarray:
    """Points on the sclera of one eye (vertices and points along every edge), XY."""
    faces = material_faces(model, "白目")
    pos = model.positions.astype(np.float64)
    faces = faces[np.sign(pos[faces[:, 0], 0]) == side]
    pts = [pos[faces[:, k], :2] for k in range(3)]
    samples = []
    for k in range(3):
        p, q = pts[k], pts[(k + 1) % 3]
        for t in np.linspace(0.0, 1.0, 5):
            samples.append(p + t * (q - p))
    return np.concatenate(samples)


# ---------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------


def test_build_is_deterministic():
    a, b = build_example_model(), build_example_model()
    for field in ("positions", "normals", "uvs", "additional_uvs", "deform_types", "bone_indices",
                  "bone_weights", "sdef_c", "sdef_r0", "sdef_r1", "edge_scales", "faces"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and x.shape == y.shape, field
        assert np.array_equal(x, y), field
    assert a.textures == b.textures
    assert [vars(m) for m in a.materials] == [vars(m) for m in b.materials]
    assert [vars(m) for m in a.bones] == [vars(m) for m in b.bones]
    for m1, m2 in zip(a.morphs, b.morphs, strict=True):
        assert (m1.name, m1.panel, m1.kind) == (m2.name, m2.panel, m2.kind)
        assert np.array_equal(m1.indices, m2.indices)
        assert np.array_equal(m1.offsets, m2.offsets)
    tex_a, tex_b = ex.build_example_textures(), ex.build_example_textures()
    assert tex_a.keys() == tex_b.keys()
    assert all(np.array_equal(tex_a[k], tex_b[k]) for k in tex_a)


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_example_is_deterministic(tmp_path):
    first = write_example(tmp_path / "a")
    second = write_example(tmp_path / "b" / "nested")
    assert first == tmp_path / "a" / "example.pmx"
    assert second.name == "example.pmx" and second.is_file()
    files_a, files_b = _tree(tmp_path / "a"), _tree(tmp_path / "b" / "nested")
    assert set(files_a) == {"example.pmx", *EXAMPLE_TEXTURES}  # no temporary files left behind
    assert files_a == files_b
    # writing again over an existing folder gives the same bytes
    write_example(tmp_path / "a")
    assert _tree(tmp_path / "a") == files_a


def test_textures_written_with_alpha(tmp_path):
    pmx = write_example(tmp_path)
    model = build_example_model()
    used = {model.materials[i].texture_index for i in range(len(model.materials))} - {-1}
    assert used == set(range(len(model.textures)))
    for name in model.textures:
        assert not name.startswith("/") and "\\" not in name
        path = pmx.parent / name
        assert path.is_file(), name
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "RGBA"
    fringe = np.asarray(Image.open(pmx.parent / "tex/fringe.png"))
    alpha = fringe[..., 3]
    # opaque top, transparent gaps between the bangs, partial alpha on their edges
    assert (alpha[: alpha.shape[0] // 4] == 255).mean() > 0.8
    lower = alpha[alpha.shape[0] * 3 // 4 :]
    assert (lower == 0).mean() > 0.3 and (lower == 255).mean() > 0.05
    assert ((alpha > 0) & (alpha < 255)).any()
    eye = np.asarray(Image.open(pmx.parent / "tex/eye.png"))
    assert eye[0, 0, 3] == 0 and eye[eye.shape[0] // 2, eye.shape[1] // 2, 3] == 255


# ---------------------------------------------------------------------------
# structure
# ---------------------------------------------------------------------------


def test_size_and_arrays(model):
    n, f = model.vertex_count, model.face_count
    assert 1000 < n < 6000 and f > 1000
    assert model.positions.shape == (n, 3) and model.positions.dtype == np.float32
    assert model.normals.shape == (n, 3) and model.uvs.shape == (n, 2)
    assert model.additional_uvs.shape == (n, 0, 4)
    assert model.faces.dtype == np.uint32 and model.faces.shape == (f, 3)
    assert model.faces.max() < n
    assert sum(m.face_count for m in model.materials) == f
    assert np.all((model.uvs >= 0) & (model.uvs <= 1))
    assert np.allclose(np.linalg.norm(model.normals, axis=1), 1.0, atol=1e-4)
    assert model.format == "pmx" and model.version == 2.0
    # every vertex is used by some face
    assert len(np.unique(model.faces)) == n
    # no degenerate triangles
    p = model.positions.astype(np.float64)[model.faces.astype(np.int64)]
    area = np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1)
    assert area.min() > 0


def test_proportions(model):
    pos = model.positions
    assert 19.5 < pos[:, 1].max() < 22.5  # hair top / ahoge
    assert abs(pos[:, 1].min()) < 0.1  # feet on the ground
    head = model.bones[model.bone_index("頭")]
    # the eyes are about half way up the head and face -Z
    left = model.bones[model.bone_index("左目")].position
    right = model.bones[model.bone_index("右目")].position
    assert left[0] > 0.3 and right[0] < -0.3 and left[1] == right[1]
    assert 16.5 < left[1] < 18.5 and head.position[1] < left[1]
    sclera = model.positions[material_vertices(model, "白目")]
    assert sclera[:, 2].max() < -1.0  # on the front (-Z) of the head


def test_materials(model):
    names = [m.name for m in model.materials]
    for required in ("肌", "髪", "前髪", "白目", "瞳", "まぶた", "まつげ", "口", "服"):
        assert required in names
    by_name = {m.name: m for m in model.materials}
    assert by_name["前髪"].double_sided and by_name["前髪"].texture_index >= 0
    assert model.textures[by_name["前髪"].texture_index] == "tex/fringe.png"
    assert model.textures[by_name["瞳"].texture_index] == "tex/eye.png"
    for name in ("肌", "白目", "瞳", "まぶた", "まつげ", "口", "服"):
        assert not by_name[name].flags & MaterialFlag.DOUBLE_SIDED, name
    assert all(m.face_count > 0 for m in model.materials)


def test_faces_wind_outward(model):
    """PMX front faces: cross(b - a, c - a) points the way the smooth normals do."""
    p = model.positions.astype(np.float64)
    f = model.faces.astype(np.int64)
    cross = np.cross(p[f[:, 1]] - p[f[:, 0]], p[f[:, 2]] - p[f[:, 0]])
    nrm = model.normals[f].astype(np.float64).sum(axis=1)
    agree = np.einsum("ij,ij->i", cross, nrm) > 0
    assert agree.mean() > 0.995
    for (s, e), mat in zip(model.material_face_ranges(), model.materials):
        assert agree[s:e].mean() > 0.98, mat.name
    # facial parts face the viewer (-Z)
    for name in ("白目", "瞳", "まつげ", "口"):
        faces = material_faces(model, name)
        c = np.cross(p[faces[:, 1]] - p[faces[:, 0]], p[faces[:, 2]] - p[faces[:, 0]])
        assert (c[:, 2] < 0).all(), name


def test_bones(model):
    names = [b.name for b in model.bones]
    assert len(set(names)) == len(names)
    for name, parent in REQUIRED_PARENTS.items():
        bone = model.bones[model.bone_index(name)]
        assert bone.parent == (-1 if parent is None else model.bone_index(parent)), name
        assert bone.rotatable and bone.visible and bone.enabled, name
    for i, bone in enumerate(model.bones):
        assert bone.parent < i  # parents first
        if bone.has(BoneFlag.TAIL_IS_BONE):
            assert 0 <= bone.tail_bone < len(model.bones)
    assert model.bones[model.bone_index("センター")].translatable
    both = model.bone_index("両目")
    for name in ("左目", "右目"):
        bone = model.bones[model.bone_index(name)]
        assert bone.append_rotation and bone.append_parent == both and bone.append_ratio == 1.0
    y = {n: model.bones[model.bone_index(n)].position[1] for n in ("センター", "上半身", "首", "頭")}
    assert y["センター"] < y["上半身"] < y["首"] < y["頭"]


def test_skin_weights(model):
    idx, w = model.bone_indices, model.bone_weights
    nb = len(model.bones)
    assert np.allclose(w.sum(axis=1), 1.0, atol=1e-6)
    used = w > 0
    assert ((idx >= 0) & (idx < nb))[used].all()
    assert (idx[~used] == -1).all() | (w[~used] == 0).all()
    assert set(np.unique(model.deform_types)) <= {DeformType.BDEF1, DeformType.BDEF2}
    bdef1 = model.deform_types == DeformType.BDEF1
    assert (idx[bdef1, 1:] == -1).all() and (w[bdef1, 0] == 1).all()
    bdef2 = model.deform_types == DeformType.BDEF2
    assert (idx[bdef2, 2:] == -1).all() and (idx[bdef2, :2] >= 0).all()


def _single_bone(model, vertices) -> set[str]:
    assert (model.deform_types[vertices] == DeformType.BDEF1).all()
    return {model.bones[i].name for i in np.unique(model.bone_indices[vertices, 0])}


def test_skinning_regions(model):
    for name in ("白目", "まぶた", "まつげ", "眉", "口", "髪", "前髪"):
        assert _single_bone(model, material_vertices(model, name)) == {"頭"}, name
    iris = material_vertices(model, "瞳")
    x = model.positions[iris, 0]
    assert _single_bone(model, iris[x > 0]) == {"左目"}
    assert _single_bone(model, iris[x < 0]) == {"右目"}
    # the head itself (skin above the chin) follows 頭; the neck blends 上半身/首/頭
    skin = material_vertices(model, "肌")
    head_skin = skin[model.positions[skin, 1] > 17.0]
    assert _single_bone(model, head_skin) == {"頭"}
    neck = model.bone_index("首")
    assert (model.bone_indices == neck).any(axis=1).sum() > 10
    assert (model.deform_types == DeformType.BDEF2).any()


# ---------------------------------------------------------------------------
# morphs
# ---------------------------------------------------------------------------


def test_morph_list(model):
    names = [m.name for m in model.morphs]
    assert len(set(names)) == len(names)
    for name, (panel, _) in {**EYE_MORPHS, "あ": (MorphPanel.MOUTH, 0)}.items():
        morph = model.morphs[model.morph_index(name)]
        assert morph.kind == MorphKind.VERTEX and morph.panel == panel, name
        assert morph.indices.dtype == np.int32 and morph.offsets.dtype == np.float32
        assert morph.offsets.shape == (len(morph), 3) and len(morph) > 0
        assert len(np.unique(morph.indices)) == len(morph)
        assert 0 <= morph.indices.min() and morph.indices.max() < model.vertex_count
        assert (np.abs(morph.offsets).max(axis=1) > 0).all()
    frames = {f.name: f for f in model.display_frames}
    assert frames["Root"].special and frames["Root"].items == [(0, model.bone_index("センター"))]
    assert frames["表情"].special
    assert sorted(i for t, i in frames["表情"].items if t == 1) == list(range(len(model.morphs)))


@pytest.mark.parametrize("name", list(EYE_MORPHS))
def test_eye_morph_side_and_direction(model, name):
    _, side = EYE_MORPHS[name]
    morph = model.morphs[model.morph_index(name)]
    x = model.positions[morph.indices, 0]
    if side == 0:
        assert (x > 0).any() and (x < 0).any()
        assert abs(int((x > 0).sum()) - int((x < 0).sum())) == 0  # symmetric
    else:
        assert (np.sign(x) == side).all()
    assert _single_bone(model, morph.indices) == {"頭"}
    eyelids = np.union1d(material_vertices(model, "まぶた"), material_vertices(model, "まつげ"))
    assert np.isin(morph.indices, eyelids).all()
    dy = morph.offsets[:, 1]
    assert dy.sum() < 0 and (dy < 0).sum() > (dy > 0).sum()
    assert np.abs(morph.offsets[:, 0]).max() < 1e-6  # lids slide vertically only


@pytest.mark.parametrize("name", list(EYE_MORPHS))
def test_closed_eyelids_cover_the_eye(model, name):
    _, side = EYE_MORPHS[name]
    lids = material_faces(model, "まぶた", "まつげ")
    for weight in (0.0, 1.0):
        pos = morphed(model, name, weight)
        tri = pos[lids][:, :, :2]
        for eye in (1, -1):
            inside = covered(sclera_samples(model, eye), tri)
            if weight == 1.0 and side in (0, eye):
                assert inside.all(), (name, eye, int((~inside).sum()))
            else:
                assert inside.mean() < 0.3, (name, eye, weight)  # open eye stays visible


@pytest.mark.parametrize("name", list(EYE_MORPHS))
def test_eyelids_stay_in_front_of_the_eye(model, name):
    """Part way through the motion the lids still lie in front of the iris."""
    morph = model.morphs[model.morph_index(name)]
    iris = model.positions[material_vertices(model, "瞳")].astype(np.float64)
    iris_gap = ex.face_z(iris[:, 0], iris[:, 1]) - iris[:, 2]
    for weight in np.linspace(0.0, 1.0, 9):
        pos = morphed(model, name, weight)[morph.indices]
        gap = ex.face_z(pos[:, 0], pos[:, 1]) - pos[:, 2]
        assert gap.min() > iris_gap.max() + 0.01


def test_mouth_morph(model):
    morph = model.morphs[model.morph_index("あ")]
    mouth = material_vertices(model, "口")
    assert np.isin(morph.indices, mouth).all()
    assert _single_bone(model, morph.indices) == {"頭"}
    assert (morph.offsets[:, 1] < 0).all()
    assert -morph.offsets[:, 1].min() > 0.25  # opens visibly (MMD units)
    pos = model.positions[mouth]
    assert np.abs(pos[:, 0]).max() < 0.5
    eye_y = model.bones[model.bone_index("左目")].position[1]
    assert pos[:, 1].max() < eye_y - 0.5
    # closed at rest: the mouth shape is a thin line
    assert np.ptp(pos[:, 1]) < 0.1


def test_morphs_leave_other_vertices_alone(model):
    eye_parts = set(material_vertices(model, "まぶた")) | set(material_vertices(model, "まつげ"))
    mouth = set(material_vertices(model, "口"))
    for morph in model.morphs:
        allowed = mouth if morph.name == "あ" else eye_parts
        assert set(morph.indices.tolist()) <= allowed, morph.name


# ---------------------------------------------------------------------------
# round trip through the PMX writer and loader
# ---------------------------------------------------------------------------


def _float32_scalars(obj):
    """A copy of ``obj`` with every Python float scalar (in dataclasses, lists
    and tuples, at any depth) rounded to float32, as a PMX file stores it.
    Arrays are left alone (the builder makes them float32 already)."""
    if isinstance(obj, float):
        return float(np.float32(obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_float32_scalars(x) for x in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = copy.copy(obj)
        for f in dataclasses.fields(obj):
            object.__setattr__(out, f.name, _float32_scalars(getattr(obj, f.name)))
        return out
    return obj


def test_round_trip(tmp_path):
    """build -> write_example -> load -> save_pmx -> load: the file holds the
    built model exactly (up to float32 storage of its scalar fields), and a
    load/save/load round trip changes nothing (model_differences, as for Gene)."""
    from mmdsynth.mmd.compare import model_differences
    from mmdsynth.mmd.loader import load_model
    from mmdsynth.mmd.pmx_write import save_pmx

    path = write_example(tmp_path)
    original = build_example_model()
    loaded = load_model(path)
    assert not loaded.warnings
    assert model_differences(_float32_scalars(original), loaded) == []
    again = tmp_path / "again" / "example.pmx"
    again.parent.mkdir()
    save_pmx(loaded, again)
    assert again.read_bytes() == path.read_bytes()
    reloaded = load_model(again)
    assert model_differences(loaded, reloaded) == []
    assert not reloaded.warnings
    for i in range(len(loaded.textures)):
        image = loaded.texture_image(i)
        assert image is not None and image.ndim == 3 and image.shape[2] == 4
