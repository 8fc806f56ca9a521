"""Small hand-built models for format tests."""

from __future__ import annotations

import numpy as np

from mmdsynth.mmd.model import (
    IK,
    IMPULSE_MORPH_DTYPE,
    MATERIAL_MORPH_DTYPE,
    Bone,
    BoneFlag,
    DeformType,
    DisplayFrame,
    IKLink,
    Joint,
    Material,
    Model,
    Morph,
    MorphKind,
    RigidBody,
    SoftBody,
)


def quad_model(n_add_uv: int = 0) -> Model:
    """Two triangles (4 vertices), one material, two bones, one vertex morph.
    Every vertex deform type except QDEF is used."""
    m = Model(name="quad", name_en="quad en", comment="c", comment_en="c en")
    m.positions = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
    m.normals = np.tile(np.array([0, 0, -1], np.float32), (4, 1))
    m.uvs = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], np.float32)
    m.additional_uvs = np.arange(4 * n_add_uv * 4, dtype=np.float32).reshape(4, n_add_uv, 4)
    m.deform_types = np.array([DeformType.BDEF1, DeformType.BDEF2, DeformType.BDEF4, DeformType.SDEF], np.uint8)
    m.bone_indices = np.array([[0, -1, -1, -1], [0, 1, -1, -1], [0, 1, 0, 1], [1, 0, -1, -1]], np.int32)
    m.bone_weights = np.array([[1, 0, 0, 0], [0.25, 0.75, 0, 0], [0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0, 0]], np.float32)
    m.sdef_c = np.array([[0, 0, 0]] * 3 + [[0.5, 0.5, 0]], np.float32)
    m.sdef_r0 = np.array([[0, 0, 0]] * 3 + [[0.5, 0.0, 0]], np.float32)
    m.sdef_r1 = np.array([[0, 0, 0]] * 3 + [[0.5, 1.0, 0]], np.float32)
    m.edge_scales = np.ones(4, np.float32)
    m.faces = np.array([[0, 1, 2], [0, 2, 3]], np.uint32)
    m.textures = ["tex\\skin.png", "toon.bmp"]
    m.materials = [Material(name="skin", name_en="skin", texture_index=0, toon_index=1, face_count=2, memo="memo")]
    m.bones = [
        Bone(name="センター", position=(0.0, 0.0, 0.0), flags=BoneFlag.ROTATABLE | BoneFlag.TRANSLATABLE | BoneFlag.VISIBLE | BoneFlag.ENABLED | BoneFlag.TAIL_IS_BONE, tail_bone=1),
        Bone(name="頭", position=(0.0, 1.0, 0.0), parent=0, tail_offset=(0.0, 1.0, 0.0)),
    ]
    m.morphs = [
        Morph(name="あ", panel=3, kind=MorphKind.VERTEX, indices=np.array([2, 3], np.int32),
              offsets=np.array([[0, -0.5, 0], [0, -0.25, 0]], np.float32)),
    ]
    m.display_frames = [DisplayFrame(name="Root", name_en="Root", special=True, items=[(0, 0)]),
                        DisplayFrame(name="表情", name_en="Exp", special=True, items=[(1, 0)])]
    return m


def full_model() -> Model:
    """:func:`quad_model` plus every optional feature of PMX 2.1: QDEF,
    additional UVs, all morph kinds, IK with limits, append, fixed and local
    axes, external parent, rigid bodies, joints and a soft body."""
    m = quad_model(n_add_uv=2)
    m.version = 2.1
    m.deform_types[2] = DeformType.QDEF
    m.bones.append(
        Bone(
            name="IK", parent=0, position=(0.0, 0.5, 0.0), layer=1,
            flags=BoneFlag.ROTATABLE | BoneFlag.TRANSLATABLE | BoneFlag.VISIBLE | BoneFlag.ENABLED | BoneFlag.IK
            | BoneFlag.APPEND_ROTATION | BoneFlag.APPEND_LOCAL | BoneFlag.FIXED_AXIS | BoneFlag.LOCAL_AXES
            | BoneFlag.EXTERNAL_PARENT | BoneFlag.AFTER_PHYSICS,
            append_parent=1, append_ratio=0.5, fixed_axis=(0.0, 1.0, 0.0), local_x=(1.0, 0.0, 0.0), local_z=(0.0, 0.0, 1.0),
            external_key=7,
            ik=IK(target=1, loop_count=10, limit_angle=0.25, links=[IKLink(0, (-3.0, 0.0, 0.0), (-0.5, 0.0, 0.0)), IKLink(1)]),
        )
    )
    material = np.zeros(1, MATERIAL_MORPH_DTYPE)
    material["op"], material["diffuse"], material["toon_tint"] = 1, (0.1, 0.2, 0.3, 0.4), (1, 1, 1, 1)
    impulse = np.zeros(1, IMPULSE_MORPH_DTYPE)
    impulse["local"], impulse["velocity"], impulse["torque"] = 1, (1, 2, 3), (4, 5, 6)
    i32 = lambda *v: np.array(v, np.int32)  # noqa: E731
    m.morphs += [
        Morph(name="group", kind=MorphKind.GROUP, indices=i32(0), weights=np.array([0.5], np.float32)),
        Morph(name="bone", kind=MorphKind.BONE, indices=i32(1), offsets=np.array([[0, 1, 0]], np.float32),
              rotations=np.array([[0, 0, 0.7071, 0.7071]], np.float32)),
        Morph(name="uv", kind=MorphKind.UV, indices=i32(0, 1), offsets=np.array([[0.1, 0.2, 0, 0], [0.3, 0.4, 0, 0]], np.float32)),
        Morph(name="uv1", kind=MorphKind.UV1, indices=i32(3), offsets=np.array([[1, 2, 3, 4]], np.float32)),
        Morph(name="material", kind=MorphKind.MATERIAL, indices=i32(-1), material=material),
        Morph(name="flip", kind=MorphKind.FLIP, indices=i32(0, 1), weights=np.array([1.0, 0.5], np.float32)),
        Morph(name="impulse", kind=MorphKind.IMPULSE, indices=i32(0), impulse=impulse),
    ]
    m.rigid_bodies = [RigidBody(name="rb", bone=1, group=2, no_collision_mask=0xFFF0, shape=2, size=(1.0, 2.0, 3.0), mode=1),
                      RigidBody(name="rb2", bone=-1)]
    m.joints = [Joint(name="j", kind=5, rigid_a=0, rigid_b=1, rotation_min=(-1.0, 0.0, 0.0), rotation_max=(1.0, 0.0, 0.0))]
    m.soft_bodies = [SoftBody(name="cloth", shape=0, material=0, flags=3, b_link_distance=2, cluster_count=4,
                              config=tuple(float(i) for i in range(12)), iterations=(1, 2, 3, 4),
                              anchors=[(0, 1, 1)], pins=[2, 3])]
    return m
