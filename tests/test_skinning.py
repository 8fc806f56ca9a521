"""Skinning: SDEF and QDEF against independent per-vertex implementations of
saba's SDEF formula and of dual quaternion blending, plus linear-blend edge
cases (BDEF4 weights, unused slots)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmdsynth.mmd.model import Bone, BoneFlag, DeformType, Material, Model
from mmdsynth.mmd.posing import Pose, Poser

PLAIN = BoneFlag.ROTATABLE | BoneFlag.TRANSLATABLE | BoneFlag.VISIBLE | BoneFlag.ENABLED


# ----------------------------------------------------------------------------- independent maths (per vertex)
def q_axis(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    h = math.radians(deg) / 2
    return np.array([*(axis * math.sin(h)), math.cos(h)])


def q_mul(a, b):
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz])


def q_conj(q):
    return np.array([-q[0], -q[1], -q[2], q[3]])


def q_apply(q, v):
    return q_mul(q_mul(q, np.array([*v, 0.0])), q_conj(q))[:3]


def q_matrix(q):
    return np.column_stack([q_apply(q, e) for e in np.eye(3)])


def q_slerp(a, b, t):
    d = float(np.dot(a, b))
    if d < 0:
        b, d = -b, -d
    if d > 1 - 1e-6:
        r = (1 - t) * a + t * b
    else:
        th = math.acos(d)
        r = (math.sin((1 - t) * th) * a + math.sin(t * th) * b) / math.sin(th)
    return r / np.linalg.norm(r)


def affine(q, t):
    m = np.eye(4)
    m[:3, :3] = q_matrix(q)
    m[:3, 3] = t
    return m


def sdef_reference(p, n, c, r0, r1, w0, m0, m1, q0, q1):
    """saba PMXModel::Update, SDEF branch, with the load-time C/R correction of PMXModel::Load."""
    w1 = 1.0 - w0
    rw = r0 * w0 + r1 * w1
    cr0 = (c + (c + r0 - rw)) * 0.5
    cr1 = (c + (c + r1 - rw)) * 0.5
    rot = q_matrix(q_slerp(q0, q1, w1))
    pos = rot @ (p - c) + (m0 @ np.r_[cr0, 1])[:3] * w0 + (m1 @ np.r_[cr1, 1])[:3] * w1
    return pos, rot @ n


def dq_reference(p, n, mats_q, mats_t, weights):
    """Dual quaternion linear blending (Kavan et al. 2007) of rigid transforms (q, t)."""
    reals = [np.asarray(q, float) for q in mats_q]
    duals = [0.5 * q_mul(np.array([*t, 0.0]), q) for q, t in zip(reals, mats_t)]
    real = np.zeros(4)
    dual = np.zeros(4)
    for k, w in enumerate(weights):
        if np.dot(reals[0], reals[k]) < 0:
            w = -w
        real += w * reals[k]
        dual += w * duals[k]
    norm = np.linalg.norm(real)
    real, dual = real / norm, dual / norm
    t = 2.0 * q_mul(dual, q_conj(real))[:3]
    return q_apply(real, p) + t, q_apply(real, n)


# ----------------------------------------------------------------------------- models
def two_bone_model(positions, normals, deform, weights, c=None, r0=None, r1=None, y=0.0) -> Model:
    """Bones along +X at height y: b0 head (0,y,0), b1 head (1,y,0) (child of b0).
    Each vertex uses bones [0,1] with weight w0 for bone 0."""
    n = len(positions)
    m = Model(name="skin")
    m.positions = np.asarray(positions, np.float32)
    m.normals = np.asarray(normals, np.float32)
    m.uvs = np.zeros((n, 2), np.float32)
    m.additional_uvs = np.zeros((n, 0, 4), np.float32)
    m.deform_types = np.full(n, deform, np.uint8)
    m.bone_indices = np.tile(np.array([0, 1, -1, -1], np.int32), (n, 1))
    w = np.asarray(weights, np.float32)
    m.bone_weights = np.stack([w, 1 - w, np.zeros(n), np.zeros(n)], axis=1).astype(np.float32)
    z = np.zeros((n, 3), np.float32)
    m.sdef_c = z if c is None else np.asarray(c, np.float32)
    m.sdef_r0 = z if r0 is None else np.asarray(r0, np.float32)
    m.sdef_r1 = z if r1 is None else np.asarray(r1, np.float32)
    m.edge_scales = np.ones(n, np.float32)
    m.faces = np.zeros((0, 3), np.uint32)
    m.materials = [Material(name="m")]
    m.bones = [Bone(name="b0", position=(0.0, y, 0.0), flags=PLAIN),
               Bone(name="b1", position=(1.0, y, 0.0), parent=0, flags=PLAIN)]
    return m


def ring_vertices(x_values, radius=0.3, count=12, y=0.0):
    pts, nrm, xs = [], [], []
    for x in x_values:
        for k in range(count):
            a = 2 * math.pi * k / count
            pts.append([x, y + radius * math.cos(a), radius * math.sin(a)])
            nrm.append([0.0, math.cos(a), math.sin(a)])
            xs.append(x)
    return np.array(pts), np.array(nrm), np.array(xs)


# ----------------------------------------------------------------------------- SDEF
def test_sdef_twist_matches_saba_formula_and_keeps_volume():
    xs_line = [0.6, 0.8, 1.0, 1.2, 1.4]
    pts, nrm, xs = ring_vertices(xs_line)
    w0 = np.clip(1.4 - xs, 0.0, 1.0) / 0.8  # 1 at x=0.6 .. 0 at x=1.4
    n = len(pts)
    c = np.tile([1.0, 0.0, 0.0], (n, 1))
    r0 = np.tile([0.6, 0.0, 0.0], (n, 1))
    r1 = np.tile([1.4, 0.0, 0.0], (n, 1))
    sdef = two_bone_model(pts, nrm, DeformType.SDEF, w0, c, r0, r1)
    q1 = q_axis([1, 0, 0], 90)  # twist about the bone axis
    poser = Poser(sdef)
    assert np.array_equal(poser.pose().positions, sdef.positions)  # rest exact
    posed = poser.pose(Pose(rotations={"b1": q1}))

    m0 = np.eye(4)
    m1 = affine(q1, [0, 0, 0]) @ affine([0, 0, 0, 1], [-1, 0, 0])
    m1[:3, 3] += [1, 0, 0]  # rotate about the b1 head (1,0,0)
    np.testing.assert_allclose(posed.skinning[1], m1, atol=1e-6)
    q0 = np.array([0.0, 0, 0, 1])
    for i in range(n):
        p_ref, n_ref = sdef_reference(sdef.positions[i].astype(float), sdef.normals[i].astype(float), c[i],
                                      r0[i], r1[i], float(sdef.bone_weights[i, 0]), m0, m1, q0, q1)
        np.testing.assert_allclose(posed.positions[i], p_ref, atol=2e-6)
        np.testing.assert_allclose(posed.normals[i], n_ref / np.linalg.norm(n_ref), atol=2e-6)

    # SDEF keeps the distance from the twist axis; BDEF2 with the same weights collapses it
    bdef = Poser(two_bone_model(pts, nrm, DeformType.BDEF2, w0)).pose(Pose(rotations={"b1": q1}))
    r_sdef = np.hypot(posed.positions[:, 1], posed.positions[:, 2])
    r_bdef = np.hypot(bdef.positions[:, 1], bdef.positions[:, 2])
    np.testing.assert_allclose(r_sdef, 0.3, atol=1e-5)
    mid = np.isclose(xs, 1.0)  # weight 0.5: LBS radius 0.3 cos 45
    np.testing.assert_allclose(r_bdef[mid], 0.3 * math.cos(math.radians(45)), atol=1e-5)
    assert np.abs(posed.positions - bdef.positions).max() > 0.05
    np.testing.assert_allclose(np.linalg.norm(posed.normals.astype(float), axis=1), 1.0, atol=1e-6)


def test_sdef_bend_with_translation_matches_saba_formula():
    rng = np.random.default_rng(3)
    pts = rng.uniform([0.5, -0.3, -0.3], [1.5, 0.3, 0.3], size=(40, 3)) + [0, 2, 0]
    nrm = rng.normal(size=(40, 3))
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    w0 = rng.uniform(0, 1, 40)
    c = np.tile([1.0, 2.0, 0.0], (40, 1)) + rng.normal(size=(40, 3)) * 0.05
    r0 = np.tile([0.7, 2.0, 0.0], (40, 1))
    r1 = np.tile([1.3, 2.1, 0.0], (40, 1))
    model = two_bone_model(pts, nrm, DeformType.SDEF, w0, c, r0, r1, y=2.0)
    qa, qb = q_axis([0, 1, 1], 35), q_axis([1, 0.2, 0], -70)
    posed = Poser(model).pose(Pose(rotations={"b0": qa, "b1": qb}, translations={"b0": (0.1, 0.2, 0.3)}))
    # independent FK: b0 = T(pos0 + t) R(qa); b1 = b0 * T(pos1 - pos0) R(qb)
    g0 = affine(qa, [0.1, 2.2, 0.3])
    g1 = g0 @ affine(qb, [1, 0, 0])
    m0 = g0 @ affine([0, 0, 0, 1], [0, -2, 0])
    m1 = g1 @ affine([0, 0, 0, 1], [-1, -2, 0])
    q0, q1 = qa, q_mul(qa, qb)
    for i in range(40):
        p_ref, n_ref = sdef_reference(model.positions[i].astype(float), model.normals[i].astype(float),
                                      model.sdef_c[i].astype(float), model.sdef_r0[i].astype(float),
                                      model.sdef_r1[i].astype(float), float(model.bone_weights[i, 0]),
                                      m0, m1, q0, q1)
        np.testing.assert_allclose(posed.positions[i], p_ref, atol=5e-6)
        np.testing.assert_allclose(posed.normals[i], n_ref / np.linalg.norm(n_ref), atol=5e-6)


# ----------------------------------------------------------------------------- QDEF
def test_qdef_half_turn_matches_dual_quaternions_without_candy_wrapper():
    y = 1.0
    pts, nrm, xs = ring_vertices([0.8, 1.0, 1.2], radius=0.25, y=y)
    w0 = np.clip(1.2 - xs, 0.0, 0.4) / 0.4  # 1, 0.5, 0
    qdef = two_bone_model(pts, nrm, DeformType.QDEF, w0, y=y)
    poser = Poser(qdef)
    assert np.array_equal(poser.pose().positions, qdef.positions)
    q1 = q_axis([1, 0, 0], 180)  # bone 1 twisted half a turn relative to bone 0
    posed = poser.pose(Pose(rotations={"b1": q1}))
    t1 = posed.skinning[1, :3, 3].astype(float)
    for i in range(len(pts)):
        p_ref, n_ref = dq_reference(qdef.positions[i].astype(float), qdef.normals[i].astype(float),
                                    [np.array([0.0, 0, 0, 1]), q1], [np.zeros(3), t1],
                                    [float(qdef.bone_weights[i, 0]), float(qdef.bone_weights[i, 1])])
        np.testing.assert_allclose(posed.positions[i], p_ref, atol=2e-6)
        np.testing.assert_allclose(posed.normals[i], n_ref, atol=2e-6)
    # distance from the twist axis is preserved (no candy wrapper) ...
    radius = np.hypot(posed.positions[:, 1] - y, posed.positions[:, 2])
    np.testing.assert_allclose(radius, 0.25, atol=1e-5)
    # ... where linear blending collapses the half-weight ring onto the axis
    bdef = Poser(two_bone_model(pts, nrm, DeformType.BDEF2, w0, y=y)).pose(Pose(rotations={"b1": q1}))
    mid = np.isclose(xs, 1.0)
    np.testing.assert_allclose(np.hypot(bdef.positions[mid, 1] - y, bdef.positions[mid, 2]), 0.0, atol=1e-5)
    # the half-weight ring turned a quarter
    np.testing.assert_allclose(posed.positions[mid][:, 1:] - [y, 0],
                               (pts[mid][:, 1:] - [y, 0]) @ np.array([[0, 1], [-1, 0]]), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(posed.normals.astype(float), axis=1), 1.0, atol=1e-6)


def test_qdef_general_pose_matches_dual_quaternions():
    rng = np.random.default_rng(5)
    pts = rng.uniform(-1, 2, size=(30, 3))
    nrm = rng.normal(size=(30, 3))
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    w0 = rng.uniform(0, 1, 30)
    model = two_bone_model(pts, nrm, DeformType.QDEF, w0, y=0.5)
    qa, qb = q_axis([1, 2, 3], 50), q_axis([0, 1, -1], 120)
    posed = Poser(model).pose(Pose(rotations={"b0": qa, "b1": qb}, translations={"b1": (0.0, 0.3, 0.1)}))
    mats = posed.skinning.astype(float)
    q0, q1 = qa, q_mul(qa, qb)
    np.testing.assert_allclose(mats[0, :3, :3], q_matrix(q0), atol=1e-6)
    np.testing.assert_allclose(mats[1, :3, :3], q_matrix(q1), atol=1e-6)
    for i in range(30):
        p_ref, n_ref = dq_reference(model.positions[i].astype(float), model.normals[i].astype(float),
                                    [q0, q1], [mats[0, :3, 3], mats[1, :3, 3]],
                                    [float(model.bone_weights[i, 0]), float(model.bone_weights[i, 1])])
        np.testing.assert_allclose(posed.positions[i], p_ref, atol=5e-6)
        np.testing.assert_allclose(posed.normals[i], n_ref, atol=5e-6)


def test_qdef_does_not_depend_on_quaternion_sign():
    """q and -q are the same rotation: the blend aligns hemispheres (weights of
    bones whose real part points away from bone 0's are negated)."""
    pts, nrm, xs = ring_vertices([0.8, 1.0, 1.2], radius=0.25)
    w0 = np.clip(1.2 - xs, 0.0, 0.4) / 0.4
    poser = Poser(two_bone_model(pts, nrm, DeformType.QDEF, w0))
    q = q_axis([1, 0, 0], 120)
    a = poser.pose(Pose(rotations={"b1": q}))
    b = poser.pose(Pose(rotations={"b1": -q}))
    np.testing.assert_allclose(a.positions, b.positions, atol=1e-6)
    np.testing.assert_allclose(a.normals, b.normals, atol=1e-6)
    mid = np.isclose(xs, 1.0)  # half weight: a 60 degree turn, radius kept
    ang = np.degrees(np.arctan2(b.positions[mid, 2], b.positions[mid, 1]) - np.arctan2(pts[mid, 2], pts[mid, 1]))
    np.testing.assert_allclose((ang + 180) % 360 - 180, 60.0, atol=1e-4)


# ----------------------------------------------------------------------------- linear blend details
def test_bdef4_weights_and_unused_slots():
    pts = np.array([[2.0, 0, 0], [2.0, 0, 0], [2.0, 0, 0]])
    nrm = np.tile([0.0, 0, -1], (3, 1))
    model = two_bone_model(pts, nrm, DeformType.BDEF4, [0.5, 0.5, 0.5])
    model.bone_indices = np.array([[0, 1, 0, 1], [0, 1, -1, -1], [1, -1, -1, -1]], np.int32)
    model.bone_weights = np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0, 0], [0, 0, 0, 0]], np.float32)
    poser = Poser(model)
    assert any("normalised" in w for w in poser.pose().warnings)
    assert np.array_equal(poser.pose().positions, model.positions)
    posed = poser.pose(Pose(rotations={"b1": q_axis([0, 0, 1], 90)}))
    moved = np.array([1.0, 1.0, 0.0])  # bone 1 carries (2,0,0) to (1,1,0)
    np.testing.assert_allclose(posed.positions[0], 0.4 * pts[0] + 0.6 * moved, atol=1e-6)  # duplicates add up
    np.testing.assert_allclose(posed.positions[1], 0.5 * pts[1] + 0.5 * moved, atol=1e-6)  # 0.25/0.25 -> 0.5/0.5
    assert np.array_equal(posed.positions[2], model.positions[2])  # all-zero weights: stays


def test_bdef1_ignores_other_slots_and_normals_unit():
    pts = np.array([[2.0, 0, 0], [0.0, 3, 0]])
    nrm = np.array([[0.0, 1, 0], [1.0, 0, 0]])
    model = two_bone_model(pts, nrm, DeformType.BDEF1, [1.0, 1.0])
    model.bone_indices = np.array([[1, 0, 0, 0], [0, 1, 1, 1]], np.int32)
    model.bone_weights = np.array([[1, 0.5, 0.5, 0.5], [1, 0.5, 0.5, 0.5]], np.float32)
    posed = Poser(model).pose(Pose(rotations={"b1": q_axis([0, 0, 1], 90)}))
    np.testing.assert_allclose(posed.positions[0], [1, 1, 0], atol=1e-6)
    np.testing.assert_allclose(posed.normals[0], [-1, 0, 0], atol=1e-6)
    assert np.array_equal(posed.positions[1], model.positions[1])


@pytest.mark.parametrize("deform", [DeformType.BDEF2, DeformType.SDEF, DeformType.QDEF])
def test_rest_and_untouched_vertices_exact_for_every_deform(deform):
    pts, nrm, xs = ring_vertices([0.2, 0.9, 1.6])
    w0 = np.where(xs < 0.5, 1.0, np.where(xs > 1.5, 0.0, 0.5))
    n = len(pts)
    c = np.tile([1.0, 0, 0], (n, 1))
    model = two_bone_model(pts, nrm, deform, w0, c, c - [0.3, 0, 0], c + [0.3, 0, 0])
    poser = Poser(model)
    rest = poser.pose()
    assert np.array_equal(rest.positions, model.positions) and np.array_equal(rest.normals, model.normals)
    # a translation of the root moves everything rigidly (every deform type agrees)
    posed = poser.pose(Pose(translations={"b0": (0.5, -1.0, 2.0)}))
    np.testing.assert_allclose(posed.positions, model.positions + np.float32([0.5, -1.0, 2.0]), atol=1e-6)
    np.testing.assert_allclose(posed.normals, model.normals, atol=1e-6)
