"""Posing: morphs, forward kinematics (evaluation order, append transforms)
and the pose API, on hand-built models and on Gene / the babylon-mmd models."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from mmdsynth.mmd.loader import load_model
from mmdsynth.mmd.model import (
    MATERIAL_MORPH_DTYPE,
    Bone,
    BoneFlag,
    DeformType,
    Material,
    Model,
    Morph,
    MorphKind,
)
from mmdsynth.mmd.posing import Pose, PosedMesh, Poser, clear_pose_cache, pose_model
from mmdsynth.mmd.quaternion import quat_from_axis_angle, quat_multiply, quat_slerp, quat_to_matrix

PLAIN = BoneFlag.ROTATABLE | BoneFlag.TRANSLATABLE | BoneFlag.VISIBLE | BoneFlag.ENABLED
APPEND_ROT = PLAIN | BoneFlag.APPEND_ROTATION


# ----------------------------------------------------------------------------- helpers
def make_model(bones, positions, bone_indices=None, bone_weights=None, deform=None, morphs=(), materials=None,
               n_add_uv=0) -> Model:
    """A model with the given bones and one point per position (BDEF1 on bone 0 unless told)."""
    positions = np.asarray(positions, np.float32).reshape(-1, 3)
    n = len(positions)
    m = Model(name="test")
    m.positions = positions
    m.normals = np.tile(np.array([0, 0, -1], np.float32), (n, 1))
    m.uvs = np.zeros((n, 2), np.float32)
    m.additional_uvs = np.arange(n * n_add_uv * 4, dtype=np.float32).reshape(n, n_add_uv, 4)
    if bone_indices is None:
        bone_indices = [[0, -1, -1, -1]] * n
        bone_weights = [[1, 0, 0, 0]] * n
    m.bone_indices = np.asarray(bone_indices, np.int32).reshape(n, 4)
    m.bone_weights = np.asarray(bone_weights, np.float32).reshape(n, 4)
    if deform is None:
        deform = [DeformType.BDEF1 if (row[1] == -1) else DeformType.BDEF2 for row in m.bone_indices.tolist()]
    m.deform_types = np.asarray(deform, np.uint8).reshape(n)
    m.sdef_c = np.zeros((n, 3), np.float32)
    m.sdef_r0 = np.zeros((n, 3), np.float32)
    m.sdef_r1 = np.zeros((n, 3), np.float32)
    m.edge_scales = np.ones(n, np.float32)
    m.faces = np.zeros((0, 3), np.uint32)
    m.bones = list(bones)
    m.morphs = list(morphs)
    m.materials = materials if materials is not None else [Material(name="m0")]
    return m


def bone(name, position, parent=-1, flags=PLAIN, layer=0, append_parent=-1, append_ratio=0.0) -> Bone:
    return Bone(name=name, position=tuple(float(x) for x in position), parent=parent, flags=flags, layer=layer,
                append_parent=append_parent, append_ratio=append_ratio)


def qz(deg: float) -> np.ndarray:
    return quat_from_axis_angle([0, 0, 1], math.radians(deg))


def rot_of(posed: PosedMesh, i: int) -> np.ndarray:
    return posed.bone_transforms[i, :3, :3].astype(np.float64)


def angle_between(r1: np.ndarray, r2: np.ndarray) -> float:
    c = (np.trace(r1.T @ r2) - 1.0) / 2.0
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


@pytest.fixture(scope="module")
def gene(gene_pmx) -> Model:
    return load_model(gene_pmx)


@pytest.fixture(scope="module")
def gene_poser(gene) -> Poser:
    return Poser(gene)


# ----------------------------------------------------------------------------- rest pose
def _assert_rest_exact(model: Model, posed: PosedMesh):
    assert posed.positions.dtype == np.float32 and posed.normals.dtype == np.float32
    assert np.array_equal(posed.positions, model.positions)
    assert np.array_equal(posed.normals, model.normals)
    assert np.array_equal(posed.uvs, model.uvs)
    assert np.array_equal(posed.additional_uvs, model.additional_uvs)
    b = len(model.bones)
    eye = np.tile(np.eye(4, dtype=np.float32), (b, 1, 1))
    assert posed.skinning.dtype == np.float32 and posed.skinning.shape == (b, 4, 4)
    assert np.array_equal(posed.skinning, eye)
    expected = eye.copy()
    expected[:, :3, 3] = np.array([bn.position for bn in model.bones], np.float32).reshape(b, 3)
    assert np.array_equal(posed.bone_transforms, expected)
    assert len(posed.materials) == len(model.materials)
    for got, base in zip(posed.materials, model.materials):
        assert got is not base
        assert (got.diffuse, got.specular, got.specular_power, got.ambient, got.edge_color, got.edge_size) == (
            base.diffuse, base.specular, base.specular_power, base.ambient, base.edge_color, base.edge_size)
    assert np.array_equal(posed.material_tint_mul, np.ones((len(model.materials), 3, 4), np.float32))
    assert np.array_equal(posed.material_tint_add, np.zeros((len(model.materials), 3, 4), np.float32))
    # new arrays, never views of the model's
    assert not np.shares_memory(posed.positions, model.positions)
    assert not np.shares_memory(posed.normals, model.normals)


def test_rest_pose_exact_gene_pmx_and_pmd(gene_pmx, gene_pmd):
    for path in (gene_pmx, gene_pmd):
        model = load_model(path)
        posed = pose_model(model)
        _assert_rest_exact(model, posed)
        assert posed.warnings == []
        # an explicit identity rotation and zero weights are the rest pose too
        posed = pose_model(model, Pose(morphs={0: 0.0}, rotations={"頭": (0, 0, 0, 1)}, translations={0: (0, 0, 0)}))
        _assert_rest_exact(model, posed)


def test_rest_pose_exact_babylon_models(babylon_models):
    assert babylon_models
    for path in babylon_models:
        model = load_model(path)
        _assert_rest_exact(model, Poser(model).pose(Pose()))


def test_hierarchy_with_parent_after_child(testdata):
    # bone_hierarchy_test2: bone 1's parent is bone 2 (a later index)
    model = load_model(testdata / "models" / "babylon-mmd" / "bone_hierarchy_test2.pmx")
    assert model.bones[1].parent == 2
    posed = Poser(model).pose(Pose(rotations={2: qz(90)}))
    pos = np.array([b.position for b in model.bones], np.float64)
    rz = quat_to_matrix(qz(90))
    expected_child = pos[2] + rz @ (pos[1] - pos[2])
    np.testing.assert_allclose(posed.bone_transforms[1, :3, 3], expected_child, atol=1e-5)
    np.testing.assert_allclose(rot_of(posed, 1), rz, atol=1e-6)


# ----------------------------------------------------------------------------- morphs
def _morph_model():
    v = Morph(name="v", kind=MorphKind.VERTEX, indices=np.array([1, 2], np.int32),
              offsets=np.array([[0.1, 0.2, 0.3], [1.0, -2.0, 0.5]], np.float32))
    v2 = Morph(name="v2", kind=MorphKind.VERTEX, indices=np.array([2], np.int32),
               offsets=np.array([[0.25, 0.0, 0.0]], np.float32))
    return make_model([bone("center", (0, 0, 0))], [[0, 0, 0], [1, 1, 1], [0.3, 0.7, 0.1]], morphs=[v, v2])


def test_vertex_morph_half_weight_moves_exactly_half():
    model = _morph_model()
    posed = Poser(model).pose(Pose(morphs={"v": 0.5}))
    expected = model.positions.copy()
    expected[[1, 2]] = (model.positions[[1, 2]].astype(np.float64)
                        + 0.5 * model.morphs[0].offsets.astype(np.float64)).astype(np.float32)
    assert np.array_equal(posed.positions, expected)
    assert np.array_equal(posed.positions[0], model.positions[0])
    np.testing.assert_allclose(posed.positions[1] - model.positions[1], [0.05, 0.1, 0.15], atol=1e-6)


def test_vertex_morph_weights_add_up_and_index_keys():
    model = _morph_model()
    poser = Poser(model)
    posed = poser.pose(Pose(morphs={0: 1.0, "v2": 0.5}))
    np.testing.assert_allclose(posed.positions[2], model.positions[2] + [1.0 + 0.125, -2.0, 0.5], atol=1e-6)
    # the same morph by name and by index: weights add up
    a = poser.pose(Pose(morphs={"v": 0.25, 0: 0.25}))
    b = poser.pose(Pose(morphs={"v": 0.5}))
    assert np.array_equal(a.positions, b.positions)


def test_unknown_morph_and_bone_raise_key_error():
    model = _morph_model()
    poser = Poser(model)
    with pytest.raises(KeyError, match="no morph named 'nope'"):
        poser.pose(Pose(morphs={"nope": 1.0}))
    with pytest.raises(KeyError, match="morph index 7 out of range"):
        poser.pose(Pose(morphs={7: 1.0}))
    with pytest.raises(KeyError, match="no bone named 'nope'"):
        poser.pose(Pose(rotations={"nope": (0, 0, 0, 1)}))
    with pytest.raises(KeyError, match="bone index 3 out of range"):
        poser.pose(Pose(translations={3: (0, 0, 0)}))
    with pytest.raises(KeyError):
        poser.pose(Pose(rotations={-1: (0, 0, 0, 1)}))
    with pytest.raises(ValueError):
        poser.pose(Pose(rotations={0: (0, 0, 0, 0)}))
    with pytest.raises(ValueError):
        poser.pose(Pose(morphs={"v": float("nan")}))


def _group_model():
    v1 = Morph(name="v1", kind=MorphKind.VERTEX, indices=np.array([0], np.int32),
               offsets=np.array([[1.0, 0, 0]], np.float32))
    v2 = Morph(name="v2", kind=MorphKind.VERTEX, indices=np.array([0], np.int32),
               offsets=np.array([[0, 1.0, 0]], np.float32))
    inner = Morph(name="inner", kind=MorphKind.GROUP, indices=np.array([0], np.int32),
                  weights=np.array([0.8], np.float32))
    outer = Morph(name="outer", kind=MorphKind.GROUP, indices=np.array([2, 1], np.int32),
                  weights=np.array([0.5, 1.0], np.float32))
    top = Morph(name="top", kind=MorphKind.GROUP, indices=np.array([3, 2], np.int32),
                weights=np.array([2.0, -1.0], np.float32))
    return make_model([bone("center", (0, 0, 0))], [[0, 0, 0]], morphs=[v1, v2, inner, outer, top])


def test_group_morph_nested_weights_multiply():
    model = _group_model()
    poser = Poser(model)
    posed = poser.pose(Pose(morphs={"outer": 0.5}))
    # v1: 0.5 * 0.5 * 0.8 = 0.2 ; v2: 0.5 * 1.0
    np.testing.assert_allclose(posed.positions[0], [0.2, 0.5, 0.0], atol=1e-6)
    posed = poser.pose(Pose(morphs={"top": 1.0}))
    # top -> outer x2 (v1 0.4*2=0.8, v2 2.0) + inner x-1 (v1 -0.8)
    np.testing.assert_allclose(posed.positions[0], [0.0, 2.0, 0.0], atol=1e-6)
    leaf = poser.morph(Pose(morphs={"top": 1.0})).weights
    np.testing.assert_allclose(leaf, [0.0, 2.0, 0.0, 0.0, 0.0], atol=1e-7)
    assert posed.warnings == []


def test_group_morph_cycle_warns_once_and_terminates():
    v = Morph(name="v", kind=MorphKind.VERTEX, indices=np.array([0], np.int32),
              offsets=np.array([[1.0, 0, 0]], np.float32))
    g1 = Morph(name="g1", kind=MorphKind.GROUP, indices=np.array([2, 0], np.int32),
               weights=np.array([0.5, 1.0], np.float32))
    g2 = Morph(name="g2", kind=MorphKind.GROUP, indices=np.array([1, 0], np.int32),
               weights=np.array([1.0, 0.5], np.float32))
    selfish = Morph(name="self", kind=MorphKind.GROUP, indices=np.array([3, 0], np.int32),
                    weights=np.array([1.0, 1.0], np.float32))
    model = make_model([bone("center", (0, 0, 0))], [[0, 0, 0]], morphs=[v, g1, g2, selfish])
    t0 = time.perf_counter()
    poser = Poser(model)
    posed = poser.pose(Pose(morphs={"g1": 1.0, "g2": 0.0}))
    assert time.perf_counter() - t0 < 5.0
    # g1 -> g2 -> (g1: cut) ; g1 gets v 1 + 0.5 * 0.5
    np.testing.assert_allclose(posed.positions[0], [1.25, 0, 0], atol=1e-6)
    cycle = [w for w in posed.warnings if "cycle" in w]
    assert len(cycle) == 1, posed.warnings
    assert "'g2'" in cycle[0] and "'g1'" in cycle[0]
    # both groups of the cycle used: still one warning
    posed = poser.pose(Pose(morphs={"g1": 1.0, "g2": 1.0}))
    assert len([w for w in posed.warnings if "cycle" in w]) == 1
    # a group containing itself
    posed = poser.pose(Pose(morphs={"self": 1.0}))
    np.testing.assert_allclose(posed.positions[0], [1.0, 0, 0], atol=1e-6)
    assert len([w for w in posed.warnings if "cycle" in w]) == 1
    # not used: no warning
    assert poser.pose(Pose(morphs={"v": 1.0})).warnings == []


def test_bone_morph_translation_and_rotation():
    q = qz(90)
    bm = Morph(name="bm", kind=MorphKind.BONE, indices=np.array([1], np.int32),
               offsets=np.array([[0, 1, 0]], np.float32), rotations=np.array([q], np.float32))
    model = make_model([bone("root", (0, 0, 0)), bone("b", (1, 0, 0), parent=0)], [[2, 0, 0]],
                       bone_indices=[[1, -1, -1, -1]], bone_weights=[[1, 0, 0, 0]], morphs=[bm])
    poser = Poser(model)
    posed = poser.pose(Pose(morphs={"bm": 0.5}))
    # translation half, rotation slerp(identity, 90 deg, 0.5) = 45 deg about Z
    np.testing.assert_allclose(posed.bone_transforms[1, :3, 3], [1, 0.5, 0], atol=1e-6)
    np.testing.assert_allclose(rot_of(posed, 1), quat_to_matrix(qz(45)), atol=1e-6)
    c = math.cos(math.radians(45))
    np.testing.assert_allclose(posed.positions[0], [1 + c, 0.5 + c, 0], atol=1e-6)
    # with a user rotation: local = morph * user (babylon-mmd)
    user = quat_from_axis_angle([1, 0, 0], 0.3)
    posed = poser.pose(Pose(morphs={"bm": 1.0}, rotations={"b": user}))
    np.testing.assert_allclose(rot_of(posed, 1), quat_to_matrix(quat_multiply(q, user)), atol=1e-6)


def test_uv_and_additional_uv_morphs():
    uv = Morph(name="uv", kind=MorphKind.UV, indices=np.array([0, 1], np.int32),
               offsets=np.array([[0.1, 0.2, 9, 9], [0.3, 0.4, 9, 9]], np.float32))
    uv1 = Morph(name="uv1", kind=MorphKind.UV1, indices=np.array([1], np.int32),
                offsets=np.array([[1, 2, 3, 4]], np.float32))
    uv3 = Morph(name="uv3", kind=MorphKind.UV3, indices=np.array([1], np.int32),
                offsets=np.array([[1, 2, 3, 4]], np.float32))
    model = make_model([bone("center", (0, 0, 0))], [[0, 0, 0], [1, 0, 0]], morphs=[uv, uv1, uv3], n_add_uv=1)
    model.uvs = np.array([[0.5, 0.5], [0.25, 0.75]], np.float32)
    posed = Poser(model).pose(Pose(morphs={"uv": 0.5, "uv1": 0.5}))
    np.testing.assert_allclose(posed.uvs, [[0.55, 0.6], [0.4, 0.95]], atol=1e-6)
    np.testing.assert_allclose(posed.additional_uvs[1, 0], model.additional_uvs[1, 0] + [0.5, 1, 1.5, 2], atol=1e-6)
    assert np.array_equal(posed.additional_uvs[0], model.additional_uvs[0])
    assert np.array_equal(posed.positions, model.positions)
    # UV3 on a model with one additional UV: warned, ignored
    posed = Poser(model).pose(Pose(morphs={"uv3": 1.0}))
    assert np.array_equal(posed.additional_uvs, model.additional_uvs)
    assert any("additional UV 3" in w for w in posed.warnings)


def _material_entry(op, target=0, **values):
    e = np.zeros(1, MATERIAL_MORPH_DTYPE)
    e["op"] = op
    if op == 0:
        for name in MATERIAL_MORPH_DTYPE.names[1:]:
            e[name] = 1.0
    for k, v in values.items():
        e[k] = v
    return e


def test_material_morph_multiply_and_add():
    mats = [Material(name="a", diffuse=(0.8, 0.6, 0.4, 1.0), specular=(0.5, 0.5, 0.5), specular_power=10.0,
                     ambient=(0.2, 0.3, 0.4), edge_color=(0, 0, 0, 1), edge_size=1.0),
            Material(name="b", diffuse=(1.0, 1.0, 1.0, 0.5), edge_size=2.0)]
    mul = Morph(name="mul", kind=MorphKind.MATERIAL, indices=np.array([0], np.int32),
                material=_material_entry(0, diffuse=(0.5, 0.0, 1.0, 0.0), specular_power=3.0,
                                         texture_tint=(0.0, 0.5, 1.0, 1.0)))
    add = Morph(name="add", kind=MorphKind.MATERIAL, indices=np.array([-1], np.int32),
                material=_material_entry(1, diffuse=(0.1, 0.2, 0.3, 0.4), edge_size=2.0, edge_color=(1, 0, 0, 0),
                                         toon_tint=(0.2, 0.2, 0.2, 1.0)))
    model = make_model([bone("center", (0, 0, 0))], [[0, 0, 0]], morphs=[mul, add], materials=mats)
    poser = Poser(model)
    posed = poser.pose(Pose(morphs={"mul": 0.5}))
    m0, m1 = posed.materials
    # mul: base * lerp(1, m, w)
    np.testing.assert_allclose(m0.diffuse, [0.8 * 0.75, 0.6 * 0.5, 0.4 * 1.0, 1.0 * 0.5], atol=1e-7)
    assert m0.specular_power == pytest.approx(10.0 * 2.0)
    np.testing.assert_allclose(m0.specular, [0.5, 0.5, 0.5], atol=1e-7)
    assert m1.diffuse == mats[1].diffuse  # target 0 only
    np.testing.assert_allclose(posed.material_tint_mul[0, 0], [0.5, 0.75, 1.0, 1.0], atol=1e-7)
    np.testing.assert_allclose(posed.material_tint_mul[1], np.ones((3, 4)), atol=0)
    # the model's materials are untouched
    assert mats[0].diffuse == (0.8, 0.6, 0.4, 1.0)

    posed = poser.pose(Pose(morphs={"add": 0.5}))
    for got, base in zip(posed.materials, mats):  # target -1: every material
        np.testing.assert_allclose(got.diffuse, np.add(base.diffuse, [0.05, 0.1, 0.15, 0.2]), atol=1e-7)
        assert got.edge_size == pytest.approx(base.edge_size + 1.0)
        np.testing.assert_allclose(got.edge_color, np.add(base.edge_color, [0.5, 0, 0, 0]), atol=1e-7)
    np.testing.assert_allclose(posed.material_tint_add[:, 2], [[0.1, 0.1, 0.1, 0.5]] * 2, atol=1e-7)
    np.testing.assert_allclose(posed.material_tint_add[:, :2], 0.0, atol=0)

    # both: multiply on the base, then add (saba's MaterialFactor)
    posed = poser.pose(Pose(morphs={"mul": 1.0, "add": 1.0}))
    np.testing.assert_allclose(posed.materials[0].diffuse, [0.8 * 0.5 + 0.1, 0.0 + 0.2, 0.4 + 0.3, 0.0 + 0.4],
                               atol=1e-7)


def test_flip_and_impulse_morphs_warn_only_when_used():
    from modelkit import full_model

    model = full_model()
    poser = Poser(model)
    assert not any("unsupported" in w for w in poser.pose(Pose(morphs={"flip": 0.0, "impulse": 0.0})).warnings)
    posed = poser.pose(Pose(morphs={"flip": 1.0, "impulse": 0.5}))
    assert len([w for w in posed.warnings if "unsupported" in w]) == 2
    assert np.array_equal(posed.positions, poser.pose().positions)
    # every other kind works on the full model
    posed = poser.pose(Pose(morphs={"group": 1.0, "bone": 1.0, "uv": 1.0, "uv1": 1.0, "material": 1.0}))
    assert np.all(np.isfinite(posed.positions))


# ----------------------------------------------------------------------------- forward kinematics
def test_parent_rotation_moves_bdef1_child_vertex_exactly():
    # a chain root (0,0,0) -> child (0,1,0); a vertex at (0,2,0) bound to the child
    model = make_model([bone("root", (0, 0, 0)), bone("child", (0, 1, 0), parent=0)], [[0, 2, 0], [1, 0, 0]],
                       bone_indices=[[1, -1, -1, -1], [0, -1, -1, -1]], bone_weights=[[1, 0, 0, 0], [1, 0, 0, 0]])
    posed = Poser(model).pose(Pose(rotations={"root": qz(90)}))
    # +90 deg about +Z carries +Y to -X and +X to +Y
    np.testing.assert_allclose(posed.positions[0], [-2, 0, 0], atol=1e-6)
    np.testing.assert_allclose(posed.positions[1], [0, 1, 0], atol=1e-6)
    np.testing.assert_allclose(posed.bone_transforms[1, :3, 3], [-1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(posed.normals[0], [0, 0, -1], atol=1e-6)
    # rotating the child about its own head, plus a translation of the root
    posed = Poser(model).pose(Pose(rotations={1: qz(-90)}, translations={0: (0, 0, 5)}))
    np.testing.assert_allclose(posed.positions[0], [1, 1, 5], atol=1e-6)
    np.testing.assert_allclose(posed.positions[1], [1, 0, 5], atol=1e-6)


def test_bdef2_half_blend():
    model = make_model([bone("root", (0, 0, 0)), bone("child", (0, 1, 0), parent=0)], [[0, 2, 0]],
                       bone_indices=[[0, 1, -1, -1]], bone_weights=[[0.5, 0.5, 0, 0]])
    posed = Poser(model).pose(Pose(rotations={"child": qz(90)}))
    # child rotation moves the point to (-1, 1, 0); root keeps it at (0, 2, 0)
    np.testing.assert_allclose(posed.positions[0], [-0.5, 1.5, 0], atol=1e-6)


def _append_model(ratio, flags=APPEND_ROT, layers=(0, 0)):
    return make_model(
        [bone("src", (0, 0, 0), layer=layers[0]),
         bone("dst", (2, 0, 0), flags=flags, layer=layers[1], append_parent=0, append_ratio=ratio)],
        [[3, 0, 0]], bone_indices=[[1, -1, -1, -1]], bone_weights=[[1, 0, 0, 0]])


@pytest.mark.parametrize("ratio,expected_deg", [(0.5, 45.0), (-0.5, -45.0), (1.0, 90.0), (2.0, 180.0)])
def test_append_rotation_ratio(ratio, expected_deg):
    posed = Poser(_append_model(ratio)).pose(Pose(rotations={"src": qz(90)}))
    np.testing.assert_allclose(rot_of(posed, 1), quat_to_matrix(qz(expected_deg)), atol=1e-6)
    a = math.radians(expected_deg)
    np.testing.assert_allclose(posed.positions[0], [2 + math.cos(a), math.sin(a), 0], atol=1e-6)


def test_append_rotation_composes_with_own_rotation():
    qa = quat_from_axis_angle([0, 1, 0], 0.7)
    qb = quat_from_axis_angle([1, 0, 0], 0.4)
    posed = Poser(_append_model(0.5)).pose(Pose(rotations={"src": qa, "dst": qb}))
    expected = quat_multiply(qb, quat_slerp([0, 0, 0, 1], qa, 0.5))  # own * append
    np.testing.assert_allclose(rot_of(posed, 1), quat_to_matrix(expected), atol=1e-6)


def test_append_translation_and_local_append():
    flags = PLAIN | BoneFlag.APPEND_TRANSLATION
    posed = Poser(_append_model(0.5, flags)).pose(Pose(translations={"src": (2, 4, 6)}, rotations={"src": qz(90)}))
    np.testing.assert_allclose(posed.bone_transforms[1, :3, 3], [2 + 1, 2, 3], atol=1e-6)
    np.testing.assert_allclose(rot_of(posed, 1), np.eye(3), atol=0)  # no rotation appended
    # APPEND_LOCAL: the source's global rotation (its parent's rotation included)
    model = make_model(
        [bone("p", (0, 0, 0)), bone("src", (0, 1, 0), parent=0),
         bone("dst", (5, 0, 0), flags=APPEND_ROT | BoneFlag.APPEND_LOCAL, append_parent=1, append_ratio=1.0),
         bone("dst2", (6, 0, 0), flags=APPEND_ROT, append_parent=1, append_ratio=1.0)],
        [[0, 0, 0]])
    qp, qs = qz(30), quat_from_axis_angle([1, 0, 0], 0.5)
    posed = Poser(model).pose(Pose(rotations={"p": qp, "src": qs}))
    np.testing.assert_allclose(rot_of(posed, 2), quat_to_matrix(quat_multiply(qp, qs)), atol=1e-6)
    np.testing.assert_allclose(rot_of(posed, 3), quat_to_matrix(qs), atol=1e-6)  # non-local: local rotation


def test_append_chain_takes_full_local_rotation_of_source():
    # a -> b (ratio 0.5, plus b's own rotation) -> c (ratio 1): c gets b's final local rotation
    model = make_model(
        [bone("a", (0, 0, 0)),
         bone("b", (1, 0, 0), flags=APPEND_ROT, append_parent=0, append_ratio=0.5),
         bone("c", (2, 0, 0), flags=APPEND_ROT, append_parent=1, append_ratio=1.0)], [[0, 0, 0]])
    qa, qb = qz(60), quat_from_axis_angle([1, 0, 0], 0.25)
    posed = Poser(model).pose(Pose(rotations={"a": qa, "b": qb}))
    b_local = quat_multiply(qb, quat_slerp([0, 0, 0, 1], qa, 0.5))
    np.testing.assert_allclose(rot_of(posed, 1), quat_to_matrix(b_local), atol=1e-6)
    np.testing.assert_allclose(rot_of(posed, 2), quat_to_matrix(b_local), atol=1e-6)


def _layer_model(c_layer, b_flags=APPEND_ROT):
    # a (user-rotated) -> b (layer 1, append a) -> c (append b); c's layer decides whether b is ready
    return make_model(
        [bone("a", (0, 0, 0)),
         bone("b", (1, 0, 0), flags=b_flags, layer=1, append_parent=0, append_ratio=1.0),
         bone("c", (2, 0, 0), flags=APPEND_ROT, layer=c_layer, append_parent=1, append_ratio=1.0)], [[0, 0, 0]])


def test_evaluation_order_follows_deform_layer():
    rz = quat_to_matrix(qz(90))
    # c in layer 0 is evaluated before b (layer 1): b's append is not ready, c gets nothing
    poser = Poser(_layer_model(0))
    assert poser.skeleton.order.tolist() == [0, 2, 1]
    posed = poser.pose(Pose(rotations={"a": qz(90)}))
    np.testing.assert_allclose(rot_of(posed, 1), rz, atol=1e-6)
    np.testing.assert_allclose(rot_of(posed, 2), np.eye(3), atol=0)
    # c in layer 2: evaluated after b, inherits b's rotation
    poser = Poser(_layer_model(2))
    assert poser.skeleton.order.tolist() == [0, 1, 2]
    posed = poser.pose(Pose(rotations={"a": qz(90)}))
    np.testing.assert_allclose(rot_of(posed, 2), rz, atol=1e-6)


def test_after_physics_bones_are_evaluated_last():
    # b is after-physics (layer 0), c is a normal bone in a high layer: c still comes first
    poser = Poser(_layer_model(5, b_flags=APPEND_ROT | BoneFlag.AFTER_PHYSICS))
    assert poser.skeleton.order.tolist() == [0, 2, 1]
    posed = poser.pose(Pose(rotations={"a": qz(90)}))
    np.testing.assert_allclose(rot_of(posed, 1), quat_to_matrix(qz(90)), atol=1e-6)
    np.testing.assert_allclose(rot_of(posed, 2), np.eye(3), atol=0)


def _rotate_naive(model, qs, ts):
    """Straightforward 4x4 forward kinematics + linear blend skinning for a
    model whose append sources have no append themselves (as Gene)."""
    b_count = len(model.bones)
    pos = np.array([b.position for b in model.bones], np.float64)
    order = sorted(range(b_count), key=lambda i: (model.bones[i].after_physics, model.bones[i].layer, i))
    local_q = qs.copy()
    for i in order:
        b = model.bones[i]
        if b.append_rotation and b.append_parent >= 0:
            local_q[i] = quat_multiply(qs[i], quat_slerp([0, 0, 0, 1], qs[b.append_parent], b.append_ratio))
    glob = [None] * b_count

    def g(i):
        if glob[i] is None:
            b = model.bones[i]
            local = np.eye(4)
            local[:3, :3] = quat_to_matrix(local_q[i])
            local[:3, 3] = pos[i] - (pos[b.parent] if b.parent >= 0 else 0) + ts[i]
            glob[i] = g(b.parent) @ local if b.parent >= 0 else local
        return glob[i]

    skin = np.array([g(i) @ np.block([[np.eye(3), -pos[i][:, None]], [np.zeros((1, 3)), np.ones((1, 1))]])
                     for i in range(b_count)])
    p = model.positions.astype(np.float64)
    out = np.zeros_like(p)
    for k in range(4):
        idx = model.bone_indices[:, k]
        w = np.where(idx >= 0, model.bone_weights[:, k], 0.0)
        mk = skin[np.maximum(idx, 0)]
        out += w[:, None] * (np.einsum("nij,nj->ni", mk[:, :3, :3], p) + mk[:, :3, 3])
    return skin, out


def test_gene_random_pose_matches_naive_matrices(gene_pmx, gene_pmd):
    rng = np.random.default_rng(7)
    for path in (gene_pmx, gene_pmd):
        model = load_model(path)
        n = len(model.bones)
        qs = rng.normal(size=(n, 4))
        qs = quat_slerp(np.tile([0.0, 0, 0, 1], (n, 1)), qs / np.linalg.norm(qs, axis=1, keepdims=True), 0.2)
        ts = rng.normal(size=(n, 3)) * 0.1
        posed = Poser(model).pose(Pose(rotations=dict(enumerate(qs)), translations=dict(enumerate(ts))))
        skin, positions = _rotate_naive(model, qs, ts)
        np.testing.assert_allclose(posed.skinning, skin, atol=1e-5)
        np.testing.assert_allclose(posed.positions, positions, atol=1e-5)
        n_len = np.linalg.norm(posed.normals.astype(np.float64), axis=1)
        np.testing.assert_allclose(n_len, 1.0, atol=1e-6)


def _descendants(model, root):
    kids = {root}
    changed = True
    while changed:
        changed = False
        for i, b in enumerate(model.bones):
            if b.parent in kids and i not in kids:
                kids.add(i)
                changed = True
    return kids


@pytest.mark.parametrize("fmt", ["pmx", "pmd"])
def test_gene_head_rotation_moves_only_head_rigidly(fmt, gene_pmx, gene_pmd):
    model = load_model(gene_pmx if fmt == "pmx" else gene_pmd)
    head = model.bone_index("頭")
    neck = model.bone_index("首")
    q = quat_multiply(quat_from_axis_angle([0, 1, 0], math.radians(-15)),
                      quat_from_axis_angle([1, 0, 0], math.radians(12)))
    posed = Poser(model).pose(Pose(rotations={"頭": q}))
    subtree = np.zeros(len(model.bones), bool)
    subtree[list(_descendants(model, head))] = True
    idx, w = model.bone_indices, model.bone_weights
    on_head = np.any(subtree[np.maximum(idx, 0)] & (idx >= 0) & (w != 0), axis=1)
    moved = np.any(posed.positions != model.positions, axis=1) | np.any(posed.normals != model.normals, axis=1)
    assert moved.sum() > 1000
    assert not np.any(moved & ~on_head), "a vertex not weighted to the head moved"
    assert np.array_equal(posed.positions[~on_head], model.positions[~on_head])
    # vertices entirely on head-subtree bones rotate rigidly about the head bone's position
    only_head = np.all(~((idx >= 0) & (w != 0)) | subtree[np.maximum(idx, 0)], axis=1)
    pivot = np.array(model.bones[head].position, np.float64)
    r = quat_to_matrix(q)
    expected = (model.positions[only_head].astype(np.float64) - pivot) @ r.T + pivot
    np.testing.assert_allclose(posed.positions[only_head], expected, atol=2e-5)
    np.testing.assert_allclose(posed.normals[only_head], model.normals[only_head].astype(np.float64) @ r.T,
                               atol=1e-5)
    # the neck blend region (weighted to both 首 and the head) moves part of the way
    blend = on_head & np.any((idx == neck) & (w != 0), axis=1)
    if blend.any():
        assert np.all(moved[blend])
    # normals stay unit length
    np.testing.assert_allclose(np.linalg.norm(posed.normals[moved].astype(np.float64), axis=1), 1.0, atol=1e-6)
    # bones outside the head subtree keep identity skinning
    eye = np.eye(4, dtype=np.float32)
    assert all(np.array_equal(posed.skinning[i], eye) for i in np.flatnonzero(~subtree))


def test_gpu_path_morph_plus_skinning_matrices_reproduces_cpu(gene, gene_poser):
    names = [m.name for m in gene.morphs if m.kind == MorphKind.VERTEX][:3]
    pose = Pose(morphs={n: 0.7 for n in names}, rotations={"頭": qz(10), "首": quat_from_axis_angle([1, 0, 0], 0.1)})
    posed = gene_poser.pose(pose)
    morphed = gene_poser.morph(pose)
    assert not np.array_equal(morphed.positions, gene.positions)
    mats = gene_poser.skinning_matrices(pose).astype(np.float64)
    assert np.array_equal(mats.astype(np.float32), posed.skinning)
    p = morphed.positions.astype(np.float64)
    out = np.zeros_like(p)
    for k in range(4):
        idx = gene.bone_indices[:, k]
        w = np.where(idx >= 0, gene.bone_weights[:, k], 0.0)
        mk = mats[np.maximum(idx, 0)]
        out += w[:, None] * (np.einsum("nij,nj->ni", mk[:, :3, :3], p) + mk[:, :3, 3])
    np.testing.assert_allclose(posed.positions, out, atol=1e-5)


def test_gene_group_and_material_morphs(gene, gene_poser):
    groups = [m for m in gene.morphs if m.kind == MorphKind.GROUP]
    mats = [m for m in gene.morphs if m.kind == MorphKind.MATERIAL]
    assert groups and mats
    g = groups[0]
    posed = gene_poser.pose(Pose(morphs={g.name: 1.0}))
    expected_leaf = np.zeros(len(gene.morphs))
    for i, w in zip(g.indices.tolist(), g.weights.tolist()):
        expected_leaf[i] += w
    np.testing.assert_allclose(gene_poser.morph(Pose(morphs={g.name: 1.0})).weights, expected_leaf, atol=1e-7)
    assert np.all(np.isfinite(posed.positions))
    posed = gene_poser.pose(Pose(morphs={mats[0].name: 1.0}))
    assert len(posed.materials) == len(gene.materials)
    assert all(np.isfinite(m.edge_size) for m in posed.materials)


def test_pose_by_index_equals_pose_by_name(gene, gene_poser):
    head = gene.bone_index("頭")
    a = gene_poser.pose(Pose(rotations={"頭": qz(7)}, morphs={gene.morphs[5].name: 0.5}))
    b = gene_poser.pose(Pose(rotations={head: qz(7)}, morphs={5: 0.5}))
    assert np.array_equal(a.positions, b.positions)


def test_pose_model_cache_follows_model_changes():
    model = _morph_model()
    a = pose_model(model, Pose(morphs={"v": 1.0}))
    model.positions = model.positions + np.float32(1.0)  # a new array: the cache notices
    b = pose_model(model, Pose(morphs={"v": 1.0}))
    np.testing.assert_allclose(b.positions - a.positions, 1.0, atol=1e-6)
    model.bones[0] = bone("center", (0, 0, 0))
    clear_pose_cache()
    c = pose_model(model, Pose(rotations={"center": qz(90)}))
    np.testing.assert_allclose(c.positions[1], [-2, 2, 2], atol=1e-6)


def test_gene_pose_is_fast(gene, gene_poser):
    """Loose guard against accidental slow paths (the real numbers are in the report)."""
    names = [m.name for m in gene.morphs if m.kind == MorphKind.VERTEX][:3]
    pose = Pose(morphs={n: 0.5 for n in names}, rotations={"頭": qz(10)})
    gene_poser.pose(pose)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        gene_poser.pose(pose)
        times.append(time.perf_counter() - t0)
    assert min(times) < 0.1
