"""Tests for the PMD reader (mmdsynth.mmd.pmd.read_pmd).

Real data: Gene_light.pmd (and its PMX twin) from the shared test data folder,
cross-checked against pymeshio. Everything else uses small PMD files built here
with ``struct``.
"""

from __future__ import annotations

import math
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from mmdsynth.mmd import BoneFlag, DeformType, MaterialFlag, MMDFormatError, MorphKind, SphereMode
from mmdsynth.mmd.pmd import read_pmd



# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def gene_dir(testdata) -> Path:
    return testdata / "models" / "gene"


@pytest.fixture(scope="module")
def gene_bytes(gene_dir) -> bytes:
    return (gene_dir / "Gene_light.pmd").read_bytes()


@pytest.fixture(scope="module")
def gene(gene_dir, gene_bytes):
    return read_pmd(gene_bytes, str(gene_dir / "Gene_light.pmd"))


@pytest.fixture(scope="module")
def gene_pymeshio(gene_dir):
    reader = pytest.importorskip("pymeshio.pmd.reader")
    return reader.read_from_file(str(gene_dir / "Gene_light.pmd"))


@pytest.fixture(scope="module")
def gene_pmx_pymeshio(gene_dir):
    reader = pytest.importorskip("pymeshio.pmx.reader")
    return reader.read_from_file(str(gene_dir / "Gene_light.pmx"))


# ------------------------------------------------------------------ PMD builder


def _name(text: str, size: int) -> bytes:
    raw = text.encode("cp932")
    assert len(raw) <= size
    return raw.ljust(size, b"\0")


DEFAULT_VERTICES = [
    # position, normal, uv, bone0, bone1, weight (0-100), no-edge flag
    ((0.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0), 0, 1, 100, 0),  # BDEF1 bone 0
    ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (1.0, 1.0), 0, 1, 0, 1),  # BDEF1 bone 1
    ((1.0, 1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0), 1, 1, 50, 0),  # BDEF1 bone 1 (same bones)
    ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (0.0, 0.0), 0, 1, 30, 0),  # BDEF2 0.3 / 0.7
]
DEFAULT_FACES = [0, 1, 2, 0, 2, 3]
DEFAULT_MATERIALS = [
    # diffuse rgba, specular power, specular, ambient, toon, edge, index count, texture field
    ((0.8, 0.7, 0.6, 1.0), 5.0, (0.1, 0.1, 0.1), (0.4, 0.4, 0.4), 255, 1, 6, "tex.bmp*sphere.sph"),
]
DEFAULT_BONES = [
    # name, parent, tail, type, ik field, position
    ("センター", 0xFFFF, 1, 1, 0, (0.0, 0.5, 0.0)),
    ("頭", 0, 0, 0, 0, (0.0, 1.0, 0.0)),
]
DEFAULT_MORPHS = [
    ("base", 0, [(2, (1.0, 1.0, 0.0)), (3, (0.0, 1.0, 0.0))]),
    ("あ", 3, [(1, (0.0, -0.5, 0.0)), (0, (0.0, -0.25, 0.0))]),
]


def build_pmd(
    *,
    magic: bytes = b"Pmd",
    version: float = 1.0,
    name: str = "テスト",
    comment: str = "コメント",
    vertices=DEFAULT_VERTICES,
    faces=DEFAULT_FACES,
    materials=DEFAULT_MATERIALS,
    bones=DEFAULT_BONES,
    iks=(),
    morphs=DEFAULT_MORPHS,
    face_display=(1,),
    frame_names=("体\n",),
    bone_display=((1, 1),),
    english=None,
    toons=None,
    rigids=None,
    joints=None,
    trailing: bytes = b"",
) -> bytes:
    """A PMD file. ``english``: None ends the file after the display lists
    (then toons/rigids/joints must be None too), False writes flag 0, else a
    tuple (name, comment, bone names, morph names, frame names)."""
    out = [magic, struct.pack("<f", version), _name(name, 20), _name(comment, 256)]
    out.append(struct.pack("<I", len(vertices)))
    for pos, normal, uv, b0, b1, w, edge in vertices:
        out.append(struct.pack("<8f2H2B", *pos, *normal, *uv, b0, b1, w, edge))
    out.append(struct.pack("<I", len(faces)))
    out.append(struct.pack(f"<{len(faces)}H", *faces))
    out.append(struct.pack("<I", len(materials)))
    for diffuse, power, spec, amb, toon, edge, count, tex in materials:
        out.append(struct.pack("<11f2BI", *diffuse, power, *spec, *amb, toon, edge, count) + _name(tex, 20))
    out.append(struct.pack("<H", len(bones)))
    for bname, parent, tail, btype, ikf, pos in bones:
        out.append(_name(bname, 20) + struct.pack("<2HBH3f", parent, tail, btype, ikf, *pos))
    out.append(struct.pack("<H", len(iks)))
    for bone, target, iterations, weight, links in iks:
        out.append(struct.pack("<HHBHf", bone, target, len(links), iterations, weight))
        out.append(struct.pack(f"<{len(links)}H", *links))
    out.append(struct.pack("<H", len(morphs)))
    for mname, panel, items in morphs:
        out.append(_name(mname, 20) + struct.pack("<IB", len(items), panel))
        for idx, off in items:
            out.append(struct.pack("<I3f", idx, *off))
    out.append(struct.pack("<B", len(face_display)))
    out.append(struct.pack(f"<{len(face_display)}H", *face_display))
    out.append(struct.pack("<B", len(frame_names)))
    for fname in frame_names:
        out.append(_name(fname, 50))
    out.append(struct.pack("<I", len(bone_display)))
    for bone, frame in bone_display:
        out.append(struct.pack("<HB", bone, frame))
    if english is None:
        assert toons is None and rigids is None and joints is None
    else:
        if english is False:
            out.append(b"\0")
        else:
            ename, ecomment, ebones, emorphs, eframes = english
            out.append(b"\1" + _name(ename, 20) + _name(ecomment, 256))
            out.extend(_name(t, 20) for t in ebones)
            out.extend(_name(t, 20) for t in emorphs)
            out.extend(_name(t, 50) for t in eframes)
        if toons is not None:
            out.extend(_name(t, 100) for t in toons)
            if rigids is not None:
                out.append(struct.pack("<I", len(rigids)))
                for rname, bone, group, mask, shape, size, pos, rot, *rest in rigids:
                    out.append(
                        _name(rname, 20)
                        + struct.pack("<HBHB9f5fB", bone, group, mask, shape, *size, *pos, *rot, *rest)
                    )
                if joints is not None:
                    out.append(struct.pack("<I", len(joints)))
                    for jname, a, b, *vecs in joints:
                        flat = [x for v in vecs for x in v]
                        out.append(_name(jname, 20) + struct.pack("<2I24f", a, b, *flat))
    out.append(trailing)
    return b"".join(out)


DEFAULT_TOONS = [f"toon{i:02d}.bmp" for i in range(1, 11)]
ZERO3 = (0.0, 0.0, 0.0)


def rigid(name="剛体", bone=1, pos=(0.0, 0.25, 0.0)):
    return (name, bone, 0, 0xFFFF, 1, (0.1, 0.2, 0.3), pos, (0.0, 0.5, 0.0), 1.0, 0.5, 0.5, 0.0, 0.5, 1)


def joint(a=0, b=1):
    return ("ジョイント", a, b, (0.0, 1.0, 0.0), ZERO3, (-1.0, -1.0, -1.0), (1.0, 1.0, 1.0),
            (-0.5, -0.5, -0.5), (0.5, 0.5, 0.5), ZERO3, (0.0, 10.0, 0.0))


HEADER = 3 + 4 + 20 + 256
VERTEX = 38


def field_offsets(data: bytes) -> dict[str, int]:
    """Byte offsets of the section counts of a default-shaped file."""
    nv = struct.unpack_from("<I", data, HEADER)[0]
    faces = HEADER + 4 + nv * VERTEX
    nf = struct.unpack_from("<I", data, faces)[0]
    materials = faces + 4 + 2 * nf
    return {"vertices": HEADER, "faces": faces, "materials": materials}


# ------------------------------------------------------------ hand-built files


def test_header_and_vertices():
    m = read_pmd(build_pmd(), "tiny.pmd")
    assert (m.format, m.version, m.encoding) == ("pmd", 1.0, "cp932")
    assert m.name == "テスト" and m.comment == "コメント"
    assert str(m.path) == "tiny.pmd"
    assert m.vertex_count == 4
    assert m.positions.dtype == np.float32 and m.positions.shape == (4, 3)
    np.testing.assert_array_equal(m.positions[3], [0, 1, 0])
    np.testing.assert_array_equal(m.uvs[1], [1, 1])
    assert m.positions.flags.writeable
    np.testing.assert_array_equal(m.edge_scales, [1.0, 0.0, 1.0, 1.0])
    assert m.faces.dtype == np.uint32
    np.testing.assert_array_equal(m.faces, [[0, 1, 2], [0, 2, 3]])
    assert m.additional_uvs.shape == (4, 0, 4)
    assert m.warnings == []


def test_bdef1_bdef2_weight_conversion():
    m = read_pmd(build_pmd())
    assert m.deform_types.tolist() == [DeformType.BDEF1, DeformType.BDEF1, DeformType.BDEF1, DeformType.BDEF2]
    np.testing.assert_array_equal(m.bone_indices, [[0, -1, -1, -1], [1, -1, -1, -1], [1, -1, -1, -1], [0, 1, -1, -1]])
    assert m.bone_indices.dtype == np.int32 and m.bone_weights.dtype == np.float32
    np.testing.assert_allclose(m.bone_weights[:3], [[1, 0, 0, 0]] * 3)
    np.testing.assert_allclose(m.bone_weights[3], [0.3, 0.7, 0, 0], rtol=1e-6)


def test_unused_vertex_bone_may_be_0xffff():
    verts = [(p, n, uv, b0, 0xFFFF, 100, e) for p, n, uv, b0, _, _, e in DEFAULT_VERTICES]
    m = read_pmd(build_pmd(vertices=verts))
    assert (m.bone_indices[:, 1:] == -1).all()


def test_used_vertex_bone_out_of_range():
    verts = list(DEFAULT_VERTICES)
    verts[2] = ((1.0, 1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0), 0, 7, 50, 0)
    with pytest.raises(MMDFormatError) as err:
        read_pmd(build_pmd(vertices=verts))
    assert err.value.field == "vertices[2].bone_indices"
    assert err.value.offset == HEADER + 4 + 2 * VERTEX + 32 + 2


def test_weight_above_100_is_clamped_with_warning():
    verts = list(DEFAULT_VERTICES)
    verts[3] = ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (0.0, 0.0), 0, 1, 150, 0)
    m = read_pmd(build_pmd(vertices=verts))
    assert m.deform_types[3] == DeformType.BDEF1 and m.bone_indices[3, 0] == 0
    assert any("above 100" in w for w in m.warnings)


@pytest.mark.parametrize(
    "field, texture, sphere, mode",
    [
        ("tex.bmp*sphere.sph", "tex.bmp", "sphere.sph", SphereMode.MULTIPLY),
        ("a.png*b.spa", "a.png", "b.spa", SphereMode.ADD),
        ("sphere.sph", None, "sphere.sph", SphereMode.MULTIPLY),
        ("ADD.SPA", None, "ADD.SPA", SphereMode.ADD),
        ("*only.spa", None, "only.spa", SphereMode.ADD),
        ("tex.bmp*", "tex.bmp", None, SphereMode.OFF),
        ("tex.bmp", "tex.bmp", None, SphereMode.OFF),
        ("", None, None, SphereMode.OFF),
    ],
)
def test_texture_sphere_split(field, texture, sphere, mode):
    mats = [((1.0, 1.0, 1.0, 1.0), 5.0, ZERO3, ZERO3, 255, 0, 6, field)]
    m = read_pmd(build_pmd(materials=mats))
    mat = m.materials[0]
    assert (m.textures[mat.texture_index] if mat.texture_index >= 0 else None) == texture
    assert (m.textures[mat.sphere_index] if mat.sphere_index >= 0 else None) == sphere
    assert mat.sphere_mode == mode


def test_textures_deduplicated_and_material_fields():
    mats = [
        ((0.8, 0.7, 0.6, 1.0), 5.0, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), 255, 1, 3, "a.bmp*s.sph"),
        ((1.0, 1.0, 1.0, 0.5), 9.0, ZERO3, ZERO3, 255, 0, 3, "a.bmp"),
    ]
    m = read_pmd(build_pmd(materials=mats))
    assert m.textures == ["a.bmp", "s.sph"]
    a, b = m.materials
    assert a.texture_index == b.texture_index == 0
    assert (a.name, b.name, a.name_en) == ("材質1", "材質2", "Material1")
    assert (a.face_count, b.face_count) == (1, 1)
    assert a.diffuse == pytest.approx((0.8, 0.7, 0.6, 1.0))
    assert a.specular == pytest.approx((0.1, 0.2, 0.3)) and a.ambient == pytest.approx((0.4, 0.5, 0.6))
    assert b.specular_power == 9.0
    shadow = MaterialFlag.SELF_SHADOW_MAP | MaterialFlag.SELF_SHADOW
    assert a.flags == MaterialFlag.EDGE | MaterialFlag.GROUND_SHADOW | shadow
    assert b.flags == MaterialFlag.DOUBLE_SIDED | shadow
    assert a.toon_index == -1 and not a.toon_shared


def test_alpha_098_turns_self_shadow_off():
    mats = [((1.0, 1.0, 1.0, 0.98), 5.0, ZERO3, ZERO3, 255, 0, 6, "")]
    m = read_pmd(build_pmd(materials=mats))
    assert m.materials[0].flags == MaterialFlag.DOUBLE_SIDED


def test_toon_shared_and_custom():
    mats = [
        ((1.0, 1.0, 1.0, 1.0), 5.0, ZERO3, ZERO3, 0, 0, 3, "a.bmp"),
        ((1.0, 1.0, 1.0, 1.0), 5.0, ZERO3, ZERO3, 3, 0, 3, "a.bmp"),
    ]
    toons = list(DEFAULT_TOONS)
    toons[3] = "mytoon.bmp"
    m = read_pmd(build_pmd(materials=mats, english=False, toons=toons))
    a, b = m.materials
    assert (a.toon_shared, a.toon_index) == (True, 0)
    assert (b.toon_shared, b.toon_index) == (False, m.textures.index("mytoon.bmp"))
    assert m.toon_textures == toons
    # No toon block: the index is a shared toon.
    m = read_pmd(build_pmd(materials=mats))
    assert [(x.toon_shared, x.toon_index) for x in m.materials] == [(True, 0), (True, 3)]
    assert m.toon_textures == []


def test_material_counts_must_sum_to_faces():
    mats = [((1.0, 1.0, 1.0, 1.0), 5.0, ZERO3, ZERO3, 255, 0, 3, "")]
    data = build_pmd(materials=mats)
    with pytest.raises(MMDFormatError) as err:
        read_pmd(data)
    assert err.value.field == "materials"
    assert err.value.offset == field_offsets(data)["materials"]
    mats = [((1.0, 1.0, 1.0, 1.0), 5.0, ZERO3, ZERO3, 255, 0, 3, "")] * 3
    with pytest.raises(MMDFormatError) as err:
        read_pmd(build_pmd(materials=mats))
    assert err.value.field == "materials[2].face_count"
    mats = [((1.0, 1.0, 1.0, 1.0), 5.0, ZERO3, ZERO3, 255, 0, 4, ""),
            ((1.0, 1.0, 1.0, 1.0), 5.0, ZERO3, ZERO3, 255, 0, 2, "")]
    with pytest.raises(MMDFormatError) as err:
        read_pmd(build_pmd(materials=mats))
    assert err.value.field == "materials[0].face_count"


def test_base_morph_index_resolution():
    m = read_pmd(build_pmd())
    assert [x.name for x in m.morphs] == ["あ"]  # the base morph is not stored
    morph = m.morphs[0]
    assert morph.kind == MorphKind.VERTEX and morph.panel == 3
    assert morph.indices.dtype == np.int32 and morph.offsets.dtype == np.float32
    # "あ" indexes the base list [2, 3]: entry 1 -> vertex 3, entry 0 -> vertex 2.
    np.testing.assert_array_equal(morph.indices, [3, 2])
    np.testing.assert_array_equal(morph.offsets, [[0, -0.5, 0], [0, -0.25, 0]])


def test_morph_index_outside_base():
    morphs = [DEFAULT_MORPHS[0], ("あ", 3, [(0, ZERO3), (2, ZERO3)])]
    with pytest.raises(MMDFormatError) as err:
        read_pmd(build_pmd(morphs=morphs))
    assert err.value.field == "morphs[1].vertices[1].index"


def test_base_index_outside_vertices():
    morphs = [("base", 0, [(2, ZERO3), (4, ZERO3)])]
    with pytest.raises(MMDFormatError) as err:
        read_pmd(build_pmd(morphs=morphs, face_display=()))
    assert err.value.field == "morphs[0].vertices[1].index"


def test_bad_magic():
    with pytest.raises(MMDFormatError) as err:
        read_pmd(build_pmd(magic=b"Pmx"), "x.pmd")
    assert (err.value.offset, err.value.field) == (0, "header.magic")
    assert str(err.value).startswith("x.pmd: byte 0: header.magic: ")


def test_truncation_reports_offset_and_field():
    data = build_pmd()
    cut = HEADER + 4 + VERTEX + 5  # inside the second vertex
    with pytest.raises(MMDFormatError) as err:
        read_pmd(data[:cut], "cut.pmd")
    assert err.value.field == "vertices"
    assert err.value.offset == HEADER  # the count that cannot be satisfied
    assert str(err.value).startswith(f"cut.pmd: byte {HEADER}: vertices: ")
    with pytest.raises(MMDFormatError) as err:
        read_pmd(data[:20])
    assert (err.value.field, err.value.offset) == ("header.name", 7)


def test_every_truncation_of_mandatory_sections_fails_cleanly():
    data = build_pmd()
    for cut in range(len(data)):
        with pytest.raises(MMDFormatError) as err:
            read_pmd(data[:cut])
        assert err.value.offset is not None and 0 <= err.value.offset <= cut


def test_impossible_count_fails_before_allocating():
    data = bytearray(build_pmd())
    struct.pack_into("<I", data, HEADER, 0xFFFFFFFF)
    with pytest.raises(MMDFormatError) as err:
        read_pmd(bytes(data))
    assert (err.value.field, err.value.offset) == ("vertices", HEADER)


def test_out_of_range_face_index():
    faces = [0, 1, 2, 0, 2, 9]
    data = build_pmd(faces=faces)
    with pytest.raises(MMDFormatError) as err:
        read_pmd(data, "f.pmd")
    assert err.value.field == "faces[1]"
    assert err.value.offset == field_offsets(data)["faces"] + 4 + 5 * 2
    assert "9" in err.value.reason


def test_face_count_not_multiple_of_three():
    mats = [((1.0, 1.0, 1.0, 1.0), 5.0, ZERO3, ZERO3, 255, 0, 4, "")]
    with pytest.raises(MMDFormatError) as err:
        read_pmd(build_pmd(faces=[0, 1, 2, 3], materials=mats))
    assert err.value.field == "faces"


def test_bone_conversion_and_references():
    m = read_pmd(build_pmd())
    center, head = m.bones
    assert center.name == "センター" and center.parent == -1 and head.parent == 0
    assert center.position == pytest.approx((0.0, 0.5, 0.0))
    assert center.has(BoneFlag.TRANSLATABLE) and not head.has(BoneFlag.TRANSLATABLE)
    assert center.has(BoneFlag.TAIL_IS_BONE) and center.tail_bone == 1
    assert not head.has(BoneFlag.TAIL_IS_BONE) and head.tail_offset == (0.0, 0.0, 0.0)  # tail 0 = none
    for bone in m.bones:
        assert bone.rotatable and bone.visible and bone.enabled and bone.ik is None

    for index, bone, field in [
        (1, ("頭", 5, 0, 0, 0, (0.0, 1.0, 0.0)), "bones[1].parent"),
        (1, ("頭", 0, 7, 0, 0, (0.0, 1.0, 0.0)), "bones[1].tail"),
        (1, ("頭", 0, 0, 5, 9, (0.0, 1.0, 0.0)), "bones[1].ik"),
    ]:
        bones = list(DEFAULT_BONES)
        bones[index] = bone
        with pytest.raises(MMDFormatError) as err:
            read_pmd(build_pmd(bones=bones))
        assert err.value.field == field


def test_bone_types_append_twist_invisible():
    bones = [
        ("センター", 0xFFFF, 1, 1, 0, (0.0, 0.0, 0.0)),
        ("両目", 0, 0, 0, 0, (0.0, 1.0, 0.0)),
        ("左目", 1, 1, 9, 15, (0.1, 1.0, 0.0)),  # type 9: source = tail field, ratio = ik field / 100
        ("右目", 1, 1, 9, 0x10000 - 10, (-0.1, 1.0, 0.0)),  # negative ratio stored as u16
        ("眼鏡", 1, 0, 5, 1, (0.0, 1.1, 0.0)),  # type 5: source = ik field, ratio 1
        ("腕捩", 0, 6, 8, 0, (1.0, 1.0, 0.0)),  # type 8: fixed axis toward the tail bone
        ("ひじ", 5, 0, 7, 0, (3.0, 1.0, 0.0)),  # type 7: invisible
    ]
    m = read_pmd(build_pmd(bones=bones))
    left, right, glasses, twist, elbow = m.bones[2:]
    assert left.append_rotation and left.append_parent == 1 and left.append_ratio == pytest.approx(0.15)
    assert not left.visible and not left.has(BoneFlag.TAIL_IS_BONE)
    assert right.append_parent == 1 and right.append_ratio == pytest.approx(-0.1)
    assert glasses.append_rotation and glasses.append_parent == 1 and glasses.append_ratio == 1.0
    assert glasses.layer == 2
    assert twist.has(BoneFlag.FIXED_AXIS) and twist.fixed_axis == pytest.approx((1.0, 0.0, 0.0))
    assert twist.tail_bone == 6
    assert not elbow.visible and elbow.enabled


def test_ik_chain_conversion():
    bones = [
        ("センター", 0xFFFF, 1, 1, 0, (0.0, 0.0, 0.0)),
        ("左足", 0, 2, 4, 4, (1.0, 8.0, 0.0)),
        ("左ひざ", 1, 3, 4, 4, (1.0, 4.0, 0.0)),
        ("左足首", 2, 0, 6, 0, (1.0, 0.5, 0.0)),
        ("左足ＩＫ", 0, 0, 2, 0, (1.0, 0.5, 0.0)),
        ("子", 4, 0, 0, 0, (1.0, 0.0, 0.0)),
    ]
    iks = [(4, 3, 40, 0.5, [2, 1]), (4, 3, 3, 1.0, [2])]
    m = read_pmd(build_pmd(bones=bones, iks=iks))
    ik_bone = m.bones[4]
    assert ik_bone.has(BoneFlag.IK) and ik_bone.translatable and ik_bone.layer == 1
    assert m.bones[5].layer == 1  # children follow their parent's layer
    ik = ik_bone.ik
    assert (ik.target, ik.loop_count) == (3, 40)
    assert ik.limit_angle == pytest.approx(2.0)  # PMD weight x 4
    assert [link.bone for link in ik.links] == [2, 1]
    knee, leg = ik.links
    assert knee.limit_min == pytest.approx((-math.pi, 0, 0)) and knee.limit_max == pytest.approx((math.radians(-0.5), 0, 0))
    assert leg.limit_min is None and leg.limit_max is None
    # A second chain on the same IK bone goes to an added bone.
    assert len(m.bones) == 7
    extra = m.bones[6]
    assert extra.name == "左足ＩＫ+" and extra.parent == 4 and extra.ik.loop_count == 3
    assert extra.ik.limit_angle == pytest.approx(4.0)
    assert any("already has an IK chain" in w for w in m.warnings)


def test_ik_reference_out_of_range():
    iks = [(1, 0, 10, 1.0, [0, 9])]
    with pytest.raises(MMDFormatError) as err:
        read_pmd(build_pmd(iks=iks))
    assert err.value.field == "ik_chains[0].links[1]"
    iks = [(1, 2, 10, 1.0, [0])]
    with pytest.raises(MMDFormatError) as err:
        read_pmd(build_pmd(iks=iks))
    assert err.value.field == "ik_chains[0].target"


def test_display_frames():
    m = read_pmd(build_pmd(face_display=(1, 0, 5), bone_display=((1, 1), (0, 2), (9, 1))))
    root, faces, body = m.display_frames
    assert (root.name, root.special, root.items) == ("Root", True, [(0, 0)])
    assert (faces.name, faces.special, faces.items) == ("表情", True, [(1, 0)])
    assert (body.name, body.special, body.items) == ("体", False, [(0, 1)])
    assert len(m.warnings) == 2  # dropped face and bone display entries


def test_english_block_absent():
    m = read_pmd(build_pmd())
    assert m.name_en == "" and m.bones[0].name_en == "" and m.warnings == []
    m = read_pmd(build_pmd(english=False))
    assert m.name_en == "" and m.warnings == []


def test_english_block_present():
    english = ("Test", "english comment", ["center", "head"], ["a"], ["Body"])
    m = read_pmd(build_pmd(english=english, toons=DEFAULT_TOONS))
    assert (m.name_en, m.comment_en) == ("Test", "english comment")
    assert [b.name_en for b in m.bones] == ["center", "head"]
    assert [x.name_en for x in m.morphs] == ["a"]
    assert m.display_frames[2].name_en == "Body"
    assert m.toon_textures == DEFAULT_TOONS
    assert m.warnings == []


def test_truncated_english_block_is_a_warning():
    english = ("Test", "english comment", ["center", "head"], ["a"], ["Body"])
    data = build_pmd(english=english)
    m = read_pmd(data[:-30])
    assert m.name_en == "" and any("English" in w for w in m.warnings)
    assert m.vertex_count == 4 and len(m.morphs) == 1


def test_rigid_bodies_and_joints():
    rigids = [rigid(bone=1), rigid(name="無", bone=0xFFFF, pos=(0.0, 0.0, 1.0))]
    data = build_pmd(english=False, toons=DEFAULT_TOONS, rigids=rigids, joints=[joint(0, 1)])
    m = read_pmd(data)
    a, b = m.rigid_bodies
    assert a.bone == 1 and a.position == pytest.approx((0.0, 1.25, 0.0))  # relative to 頭 at y = 1
    assert b.bone == -1 and b.position == pytest.approx((0.0, 0.5, 1.0))  # relative to bone 0
    assert (a.shape, a.mode, a.no_collision_mask) == (1, 1, 0xFFFF)
    assert a.size == pytest.approx((0.1, 0.2, 0.3)) and a.rotation == pytest.approx((0.0, 0.5, 0.0))
    (j,) = m.joints
    assert (j.rigid_a, j.rigid_b, j.kind) == (0, 1, 0)
    assert j.position_min == (-1.0, -1.0, -1.0) and j.position_max == (1.0, 1.0, 1.0)
    assert j.rotation_min == (-0.5, -0.5, -0.5) and j.spring_rotation == (0.0, 10.0, 0.0)
    assert m.warnings == []


def test_rigid_and_joint_references():
    with pytest.raises(MMDFormatError) as err:
        read_pmd(build_pmd(english=False, toons=DEFAULT_TOONS, rigids=[rigid(bone=5)]))
    assert err.value.field == "rigid_bodies[0].bone"
    with pytest.raises(MMDFormatError) as err:
        read_pmd(build_pmd(english=False, toons=DEFAULT_TOONS, rigids=[rigid()], joints=[joint(0, 1)]))
    assert err.value.field == "joints[0].rigid_b"


def test_truncated_optional_sections_keep_complete_records():
    rigids = [rigid(), rigid(name="2")]
    data = build_pmd(english=False, toons=DEFAULT_TOONS, rigids=rigids, joints=[joint(0, 1), joint(1, 0)])
    m = read_pmd(data[:-10])  # the second joint is cut
    assert len(m.rigid_bodies) == 2 and len(m.joints) == 1
    assert any("joints" in w for w in m.warnings)
    no_joints = len(data) - 4 - 2 * 124
    m = read_pmd(data[: no_joints - 40])  # the second rigid body is cut
    assert len(m.rigid_bodies) == 1 and m.joints == []
    assert any("rigid_bodies" in w for w in m.warnings)
    m = read_pmd(data[: no_joints + 2])  # the joint count is cut
    assert len(m.rigid_bodies) == 2 and m.joints == [] and m.warnings
    m = read_pmd(data[: no_joints])  # no joint section at all
    assert len(m.rigid_bodies) == 2 and m.warnings == []


def test_every_truncation_of_optional_sections_is_tolerated():
    english = ("Test", "english comment", ["center", "head"], ["a"], ["Body"])
    full = build_pmd(english=english, toons=DEFAULT_TOONS, rigids=[rigid(), rigid()], joints=[joint()])
    mandatory_end = len(build_pmd())
    for cut in range(mandatory_end, len(full)):
        m = read_pmd(full[:cut])
        assert m.vertex_count == 4 and len(m.bones) == 2
        for j in m.joints:
            assert j.rigid_a < len(m.rigid_bodies) and j.rigid_b < len(m.rigid_bodies)


def test_trailing_bytes_warning():
    m = read_pmd(build_pmd(english=False, toons=DEFAULT_TOONS, rigids=[], joints=[], trailing=b"xyz"))
    assert len(m.warnings) == 1 and "3 trailing bytes" in m.warnings[0]


def test_non_finite_floats_are_kept():
    verts = list(DEFAULT_VERTICES)
    verts[0] = ((math.nan, math.inf, -math.inf), (0.0, 0.0, -1.0), (0.0, 1.0), 0, 1, 100, 0)
    bones = [("センター", 0xFFFF, 1, 1, 0, (math.inf, 0.0, 0.0)), ("頭", 0, 0, 8, 0, (0.0, math.nan, 0.0))]
    rigids = [rigid(bone=0xFFFF, pos=(-math.inf, 0.0, 0.0))]
    m = read_pmd(build_pmd(vertices=verts, bones=bones, english=False, toons=DEFAULT_TOONS, rigids=rigids))
    assert math.isnan(m.positions[0, 0]) and math.isinf(m.positions[0, 1])
    assert math.isnan(m.rigid_bodies[0].position[0])


def _mutations(data: bytes, rng: random.Random, count: int):
    for _ in range(count):
        buf = bytearray(data)
        kind = rng.random()
        if kind < 0.5:
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif kind < 0.8:
            pos = rng.randrange(len(buf) - 4)
            struct.pack_into("<I", buf, pos, rng.choice([0, 1, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(1 << 32)]))
        else:
            buf = buf[: rng.randrange(len(buf))]
        yield bytes(buf)


def _check_only_format_errors(samples):
    for sample in samples:
        try:
            read_pmd(sample, "fuzz.pmd")
        except MMDFormatError as err:
            # Only deliberate checks, never the internal safety net.
            assert "malformed data (" not in err.reason, err


def test_fuzz_small_files():
    english = ("Test", "english comment", ["center", "head"], ["a"], ["Body"])
    full = build_pmd(english=english, toons=DEFAULT_TOONS, rigids=[rigid(), rigid(bone=0xFFFF)], joints=[joint()],
                     iks=[(1, 0, 10, 1.0, [0])])
    _check_only_format_errors(_mutations(full, random.Random(1234), 3000))


# ------------------------------------------------------------------- Gene


def test_gene_counts(gene):
    assert gene.vertex_count == 28646
    assert len(gene.bones) == 224
    assert len(gene.morphs) == 177  # 178 PMD morphs minus "base"
    assert len(gene.materials) == 13
    assert gene.face_count == 47106
    assert len(gene.rigid_bodies) == 87 and len(gene.joints) == 92
    assert gene.warnings == []


def test_gene_matches_pymeshio(gene, gene_pymeshio):
    src = gene_pymeshio
    assert gene.vertex_count == len(src.vertices)
    pos = np.array([tuple(v.pos.to_tuple()) for v in src.vertices], np.float64)
    nrm = np.array([tuple(v.normal.to_tuple()) for v in src.vertices], np.float64)
    uv = np.array([tuple(v.uv.to_tuple()) for v in src.vertices], np.float64)
    np.testing.assert_allclose(gene.positions, pos, atol=1e-6, rtol=0)
    np.testing.assert_allclose(gene.normals, nrm, atol=1e-6, rtol=0)
    np.testing.assert_allclose(gene.uvs, uv, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(gene.faces.ravel(), np.array(src.indices))
    weights = np.array([v.weight0 for v in src.vertices]) / 100.0
    bdef2 = gene.deform_types == DeformType.BDEF2
    np.testing.assert_allclose(gene.bone_weights[bdef2, 0], weights[bdef2], atol=1e-6)

    assert [b.name for b in gene.bones] == [b.name.decode("cp932") for b in src.bones]
    assert [b.parent for b in gene.bones] == [-1 if b.parent_index == 0xFFFF else b.parent_index for b in src.bones]
    np.testing.assert_allclose(
        [b.position for b in gene.bones], [tuple(b.pos.to_tuple()) for b in src.bones], atol=1e-6, rtol=0
    )

    base = src.morphs[0]
    assert base.name == b"base"
    assert [m.name for m in gene.morphs] == [m.name.decode("cp932") for m in src.morphs[1:]]
    for ours, theirs in zip(gene.morphs, src.morphs[1:]):
        assert ours.panel == theirs.type
        np.testing.assert_array_equal(ours.indices, [base.indices[i] for i in theirs.indices])
        np.testing.assert_allclose(ours.offsets, [tuple(p.to_tuple()) for p in theirs.pos_list], atol=1e-6, rtol=0)

    assert len(gene.materials) == len(src.materials)
    assert [m.face_count * 3 for m in gene.materials] == [m.vertex_count for m in src.materials]
    assert [m.diffuse[3] for m in gene.materials] == pytest.approx([m.alpha for m in src.materials])
    assert len(gene.rigid_bodies) == len(src.rigidbodies) and len(gene.joints) == len(src.joints)


def test_gene_pmd_agrees_with_pmx(gene, gene_pmx_pymeshio):
    pmx = gene_pmx_pymeshio
    assert gene.vertex_count == len(pmx.vertices)
    assert [b.name for b in gene.bones] == [b.name for b in pmx.bones]
    # The PMD was exported from the PMX: the conversions must land on the PMX values.
    by_name = {b.name: b for b in pmx.bones}
    for bone in gene.bones:
        ref = by_name[bone.name]
        if bone.append_rotation:
            assert (bone.append_parent, bone.append_ratio) == (ref.effect_index, pytest.approx(ref.effect_factor))
        if bone.has(BoneFlag.FIXED_AXIS):
            assert bone.fixed_axis == pytest.approx(ref.fixed_axis.to_tuple(), abs=1e-5)
        if bone.ik is not None:
            assert bone.ik.target == ref.ik.target_index and bone.ik.loop_count == ref.ik.loop
            assert bone.ik.limit_angle == pytest.approx(ref.ik.limit_radian, rel=1e-6)
            assert [link.bone for link in bone.ik.links] == [link.bone_index for link in ref.ik.link]
            for link, ref_link in zip(bone.ik.links, ref.ik.link):
                # PMD has no IK limits: knees get the standard ones (Gene's PMX uses
                # its own -165..10 degrees there, and limits a cloak link too).
                if "ひざ" in gene.bones[link.bone].name:
                    assert ref_link.limit_angle and link.limit_max == pytest.approx((math.radians(-0.5), 0, 0))
                else:
                    assert link.limit_min is None
    np.testing.assert_array_equal(gene.faces.ravel(), np.array(pmx.indices))
    vertex_morphs = [m for m in pmx.morphs if m.morph_type == 1]
    assert len(vertex_morphs) == len(gene.morphs)
    for ours, ref in zip(gene.morphs, vertex_morphs):
        assert ref.name.startswith(ours.name)  # PMD names are cut at 20 bytes
        theirs = {o.vertex_index: o.position_offset.to_tuple() for o in ref.offsets}
        for index, offset in zip(ours.indices.tolist(), ours.offsets.tolist()):
            assert theirs.get(index, (0.0, 0.0, 0.0)) == pytest.approx(offset, abs=1e-6)
    for body, ref in zip(gene.rigid_bodies, pmx.rigidbodies):
        assert body.position == pytest.approx(ref.shape_position.to_tuple(), abs=1e-5)
    frames = [(f.name, f.items) for f in gene.display_frames]
    ref_frames = [(s.name, [tuple(r) for r in s.references]) for s in pmx.display_slots]
    assert frames[0] == ref_frames[0] and frames[2:] == ref_frames[2:]  # 表情 differs: PMX-only morphs
    assert gene.textures == pmx.textures


def test_gene_saves_as_pmx_and_loads_back(gene):
    from mmdsynth.mmd.compare import model_differences
    from mmdsynth.mmd.pmx import read_pmx
    from mmdsynth.mmd.pmx_write import pmx_bytes

    back = read_pmx(pmx_bytes(gene), "gene.pmx")
    assert model_differences(gene, back, ignore={"format", "version", "encoding", "toon_textures"}) == []


