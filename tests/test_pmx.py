"""PMX reader and writer: cross-checked against pymeshio, exact round trips,
every 2.1 feature, index sizes, encodings, and the errors bad files raise."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from modelkit import full_model, quad_model

from mmdsynth.mmd import BoneFlag, MMDFormatError, Model, MorphKind
from mmdsynth.mmd.compare import model_differences
from mmdsynth.mmd.loader import load_model, parse_model
from mmdsynth.mmd.pmx import _PMXParser, read_pmx
from mmdsynth.mmd.pmx_write import pmx_bytes, save_pmx

pymeshio_pmx = pytest.importorskip("pymeshio.pmx.reader")


def _vec(v, n=3):
    return [v.x, v.y, v.z][:n] if n == 3 else [v.x, v.y]


@pytest.fixture(scope="module")
def gene(gene_pmx) -> Model:
    return load_model(gene_pmx)


@pytest.fixture(scope="module")
def gene_oracle(gene_pmx):
    return pymeshio_pmx.read_from_file(str(gene_pmx))


def test_gene_counts_and_header(gene, gene_oracle):
    assert gene.format == "pmx" and gene.version == 2.0 and gene.encoding == "utf-16-le"
    assert gene.name == gene_oracle.name == "ジェネ / Gene"
    assert (gene.vertex_count, gene.face_count) == (len(gene_oracle.vertices), len(gene_oracle.indices) // 3) == (28646, 47106)
    assert len(gene.materials) == len(gene_oracle.materials) == 13
    assert len(gene.bones) == 224 and len(gene.morphs) == 184
    assert len(gene.rigid_bodies) == 87 and len(gene.joints) == 92
    assert gene.textures == list(gene_oracle.textures)
    assert gene.warnings == []


def _assert_vertices_match(ours: Model, theirs, every: int = 1) -> None:
    """Positions, normals, UVs (1e-6), faces (exact), edge scales and the
    skinning of every ``every``-th vertex against pymeshio's model."""
    vs = theirs.vertices
    assert ours.vertex_count == len(vs) and ours.faces.size == len(theirs.indices)
    np.testing.assert_allclose(ours.positions, np.array([_vec(v.position) for v in vs]).reshape(-1, 3), atol=1e-6, rtol=0)
    np.testing.assert_allclose(ours.normals, np.array([_vec(v.normal) for v in vs]).reshape(-1, 3), atol=1e-6, rtol=0)
    np.testing.assert_allclose(ours.uvs, np.array([[v.uv.x, v.uv.y] for v in vs]).reshape(-1, 2), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(ours.faces.reshape(-1), np.array(theirs.indices, np.int64))
    np.testing.assert_allclose(ours.edge_scales, np.array([v.edge_factor for v in vs], np.float64), atol=1e-6)
    # Skinning: pymeshio's Bdef1/Bdef2/Bdef4 objects against our (N,4) arrays.
    for i in range(0, len(vs), every):
        d = vs[i].deform
        kind = type(d).__name__
        if kind == "Bdef1":
            assert ours.deform_types[i] == 0 and ours.bone_indices[i, 0] == d.index0
        elif kind == "Bdef2":
            assert ours.deform_types[i] == 1
            assert list(ours.bone_indices[i, :2]) == [d.index0, d.index1]
            assert ours.bone_weights[i, 0] == pytest.approx(d.weight0, abs=1e-6)
            assert ours.bone_weights[i, 0] + ours.bone_weights[i, 1] == pytest.approx(1.0, abs=1e-6)
        else:
            assert kind == "Bdef4" and ours.deform_types[i] == 2
            assert list(ours.bone_indices[i]) == [d.index0, d.index1, d.index2, d.index3]
            np.testing.assert_allclose(ours.bone_weights[i], [d.weight0, d.weight1, d.weight2, d.weight3], atol=1e-6)


def _assert_bones_match(ours: Model, theirs) -> None:
    """Names, parents, flags, layers, positions (1e-6), tails, append parents and IK."""
    for b, t in zip(ours.bones, theirs.bones, strict=True):
        assert b.name == t.name and b.name_en == t.english_name, b.name
        assert b.parent == t.parent_index and b.flags == t.flag and b.layer == t.layer, b.name
        np.testing.assert_allclose(b.position, _vec(t.position), atol=1e-6, err_msg=b.name)
        if b.flags & BoneFlag.TAIL_IS_BONE:
            assert b.tail_bone == t.tail_index, b.name
        else:
            np.testing.assert_allclose(b.tail_offset, _vec(t.tail_position), atol=1e-6, err_msg=b.name)
        if b.flags & (BoneFlag.APPEND_ROTATION | BoneFlag.APPEND_TRANSLATION):
            assert b.append_parent == t.effect_index and b.append_ratio == pytest.approx(t.effect_factor, abs=1e-6), b.name
        assert (b.ik is None) == (t.ik is None), b.name
        if b.ik is not None:
            assert b.ik.target == t.ik.target_index, b.name
            assert [link.bone for link in b.ik.links] == [link.bone_index for link in t.ik.link], b.name


def _assert_morphs_match(ours: Model, theirs) -> None:
    """Names, types and panels; vertex morph targets and offsets (1e-6)."""
    assert [(m.name, int(m.kind), m.panel) for m in ours.morphs] == [(m.name, m.morph_type, m.panel) for m in theirs.morphs]
    for m, t in zip(ours.morphs, theirs.morphs, strict=True):
        if m.kind == MorphKind.VERTEX:  # pymeshio drops material morph offsets
            assert len(m) == len(t.offsets), m.name
            np.testing.assert_array_equal(m.indices, [o.vertex_index for o in t.offsets])
            np.testing.assert_allclose(m.offsets, np.array([_vec(o.position_offset) for o in t.offsets]).reshape(-1, 3), atol=1e-6)


def test_gene_vertices_match_pymeshio(gene, gene_oracle):
    _assert_vertices_match(gene, gene_oracle, every=97)
    counts = np.bincount(gene.deform_types, minlength=5)
    assert list(counts[:3]) == [13552, 10178, 4916]


def test_gene_bones_match_pymeshio(gene, gene_oracle):
    _assert_bones_match(gene, gene_oracle)
    assert sum(b.ik is not None for b in gene.bones) >= 4  # legs and toes


def test_gene_morphs_match_pymeshio(gene, gene_oracle):
    _assert_morphs_match(gene, gene_oracle)
    assert sum(m.kind == MorphKind.VERTEX for m in gene.morphs) > 100
    names = {m.name for m in gene.morphs}
    assert {"eyeBlinkLeft", "eyeBlinkRight", "まばたき", "あ"} <= names


def test_gene_materials_and_physics_match_pymeshio(gene, gene_oracle):
    for ours, theirs in zip(gene.materials, gene_oracle.materials, strict=True):
        assert ours.name == theirs.name and ours.flags == theirs.flag
        assert ours.face_count * 3 == theirs.vertex_count
        assert ours.texture_index == theirs.texture_index and ours.sphere_index == theirs.sphere_texture_index
        assert ours.toon_shared == bool(theirs.toon_sharing_flag)
        assert ours.diffuse[3] == pytest.approx(theirs.alpha)
    assert sum(m.face_count for m in gene.materials) == gene.face_count
    for ours, theirs in zip(gene.rigid_bodies, gene_oracle.rigidbodies, strict=True):
        assert ours.name == theirs.name and ours.bone == theirs.bone_index and ours.shape == theirs.shape_type
        np.testing.assert_allclose(ours.size, _vec(theirs.shape_size), atol=1e-6)
    for ours, theirs in zip(gene.joints, gene_oracle.joints, strict=True):
        assert (ours.rigid_a, ours.rigid_b) == (theirs.rigidbody_index_a, theirs.rigidbody_index_b)


def test_babylon_models_match_pymeshio(babylon_models):
    """Every babylon-mmd sample against pymeshio: counts, vertices, faces,
    bones and morphs (the same checks as Gene's). None of the nine stored
    samples has a morph (uv_morph_test.pmx included; both readers agree), so
    for them the morph check amounts to both lists being empty."""
    assert len(babylon_models) == 9
    vertices = 0
    for path in babylon_models:
        ours, theirs = load_model(path), pymeshio_pmx.read_from_file(str(path))
        assert ours.name == theirs.name, path.name
        assert (ours.vertex_count, ours.face_count) == (len(theirs.vertices), len(theirs.indices) // 3), path.name
        assert (len(ours.bones), len(ours.morphs), len(ours.materials)) == (len(theirs.bones), len(theirs.morphs), len(theirs.materials))
        assert (len(ours.rigid_bodies), len(ours.joints)) == (len(theirs.rigidbodies), len(theirs.joints)), path.name
        assert ours.textures == list(theirs.textures), path.name
        _assert_vertices_match(ours, theirs)
        _assert_bones_match(ours, theirs)
        _assert_morphs_match(ours, theirs)
        assert ours.warnings == [], path.name
        vertices += ours.vertex_count
    assert vertices == 4 * 48 + 2452 + 24  # constraint_test*, matcap_sample, uv_morph_test


def test_round_trip_is_byte_exact_on_real_files(gene_pmx, babylon_models, tmp_path):
    for path in [gene_pmx, *babylon_models]:
        model = load_model(path)
        out = tmp_path / path.name
        save_pmx(model, out)
        assert out.read_bytes() == path.read_bytes(), path.name
        assert model_differences(model, load_model(out)) == []


def test_every_pmx21_feature_round_trips():
    model = full_model()
    data = pmx_bytes(model)
    back = read_pmx(data)
    assert back.version == 2.1
    assert model_differences(model, back) == []
    assert pmx_bytes(back) == data
    assert [m.kind for m in back.morphs] == [MorphKind(k) for k in (1, 0, 2, 3, 4, 8, 9, 10)]
    assert back.deform_types.tolist() == [0, 1, 4, 3]
    np.testing.assert_array_equal(back.sdef_r1[3], [0.5, 1.0, 0.0])
    assert back.additional_uvs.shape == (4, 2, 4)
    assert back.soft_bodies[0].anchors == [(0, 1, 1)] and back.soft_bodies[0].pins == [2, 3]
    assert back.bones[2].external_key == 7 and back.bones[2].ik.links[0].limit_min == (-3.0, 0.0, 0.0)


def test_plain_model_is_written_as_pmx20():
    assert struct.unpack_from("<f", pmx_bytes(quad_model()), 4)[0] == 2.0


def test_utf8_encoding_round_trips():
    model = quad_model()
    model.encoding = "utf-8"
    model.name = "ミク UTF-8 ♪"
    data = pmx_bytes(model)
    assert data[9] == 1  # encoding byte
    back = read_pmx(data)
    assert back.encoding == "utf-8" and back.name == "ミク UTF-8 ♪"
    assert model_differences(model, back) == []


@pytest.mark.parametrize("n_vertices, size", [(255, 1), (40000, 2), (70000, 4)])
def test_vertex_index_sizes_are_unsigned_below_4(n_vertices, size):
    model = quad_model()
    pad = n_vertices - 4
    for name in ("positions", "normals", "sdef_c", "sdef_r0", "sdef_r1"):
        setattr(model, name, np.concatenate([getattr(model, name), np.zeros((pad, 3), np.float32)]))
    model.uvs = np.concatenate([model.uvs, np.zeros((pad, 2), np.float32)])
    model.additional_uvs = np.zeros((n_vertices, 0, 4), np.float32)
    model.deform_types = np.concatenate([model.deform_types, np.zeros(pad, np.uint8)])
    model.bone_indices = np.concatenate([model.bone_indices, np.tile([[0, -1, -1, -1]], (pad, 1)).astype(np.int32)])
    model.bone_weights = np.concatenate([model.bone_weights, np.tile([[1, 0, 0, 0]], (pad, 1)).astype(np.float32)])
    model.edge_scales = np.ones(n_vertices, np.float32)
    model.positions[-1] = (5, 6, 7)
    model.faces = np.array([[0, 1, n_vertices - 1], [0, 2, 3]], np.uint32)
    model.morphs[0].indices = np.array([2, n_vertices - 1], np.int32)
    data = pmx_bytes(model)
    assert data[11] == size  # vertex index size byte
    back = read_pmx(data)
    assert back.faces[0, 2] == n_vertices - 1 and back.morphs[0].indices[1] == n_vertices - 1
    assert model_differences(model, back) == []


def test_signed_bone_index_keeps_minus_one():
    model = quad_model()
    data = pmx_bytes(model)
    assert data[14] == 1  # bone index size
    assert read_pmx(data).bones[0].parent == -1


# -- errors --------------------------------------------------------------------------


def _header_end(data: bytes) -> int:
    parser = _PMXParser(data, None)
    parser.header(Model())
    return parser.r.pos


def _raises(data: bytes, field_part: str) -> MMDFormatError:
    with pytest.raises(MMDFormatError) as info:
        parse_model(data, "bad.pmx")
    err = info.value
    assert field_part in err.field, str(err)
    assert err.path == "bad.pmx" and str(err).startswith("bad.pmx: ")
    return err


def test_bad_magic():
    err = _raises(b"PMY " + pmx_bytes(quad_model())[4:], "header.magic")
    assert err.offset == 0


def test_truncation_names_field_and_offset():
    data = pmx_bytes(quad_model())
    cut = _header_end(data) + 4 + 10  # inside the first vertex
    err = _raises(data[:cut], "vertices")
    assert err.offset is not None and err.offset <= cut


def test_impossible_vertex_count_is_refused_before_allocating():
    data = bytearray(pmx_bytes(quad_model()))
    end = _header_end(bytes(data))
    data[end : end + 4] = struct.pack("<I", 0x7FFFFFFF)
    err = _raises(bytes(data), "vertices.count")
    assert err.offset == end and "2147483647" in err.reason


def test_unknown_deform_type():
    data = bytearray(pmx_bytes(quad_model()))
    type_pos = _header_end(bytes(data)) + 4 + 32
    data[type_pos] = 7
    err = _raises(bytes(data), "vertices[0].deform_type")
    assert err.offset == type_pos and "7" in err.reason


def test_face_index_out_of_range_points_at_the_index():
    model = quad_model()
    model.faces = np.array([[0, 1, 2], [0, 2, 9]], np.uint32)
    data = pmx_bytes(model)
    err = _raises(data, "faces[1]")
    assert data[err.offset] == 9 and "9" in err.reason


def test_weight_bone_out_of_range():
    model = quad_model()
    model.bone_indices[1, 1] = 5
    data = pmx_bytes(model)
    err = _raises(data, "vertices[1].bone_indices")
    assert "bone index" in err.reason and "5" in err.reason


def test_unused_minus_one_bone_with_zero_weight_is_fine():
    model = quad_model()
    model.bone_indices[2] = (0, 1, -1, -1)
    model.bone_weights[2] = (0.5, 0.5, 0.0, 0.0)
    assert read_pmx(pmx_bytes(model)).bone_indices[2, 2] == -1


@pytest.mark.parametrize(
    "kind, field, reason",
    [
        ("vertex", "morphs[0].offsets[1].index", "vertex index 4 out of range (model has 4 vertices)"),
        ("group", "morphs[1].offsets[0].index", "morph index 3 out of range (model has 2 morphs)"),
        ("material", "morphs[1].offsets[0].index", "material index 3 out of range (model has 1 material)"),
        ("bone", "morphs[1].offsets[0].index", "bone index 5 out of range (model has 2 bones)"),
        ("uv", "morphs[1].offsets[1].index", "vertex index 4 out of range (model has 4 vertices)"),
        ("uv1", "morphs[1].offsets[0].index", "vertex index 7 out of range (model has 4 vertices)"),
    ],
)
def test_morph_targets_out_of_range(kind, field, reason):
    model = quad_model()
    full = full_model()
    if kind == "vertex":
        model.morphs[0].indices = np.array([2, 4], np.int32)
    elif kind == "group":
        from mmdsynth.mmd import Morph

        model.morphs.append(Morph(name="g", kind=MorphKind.GROUP, indices=np.array([3], np.int32), weights=np.ones(1, np.float32)))
    elif kind == "material":
        model.morphs.append(full.morphs[5])
        model.morphs[1].indices = np.array([3], np.int32)
    elif kind == "bone":
        model.morphs.append(full.morphs[2])
        assert model.morphs[1].kind == MorphKind.BONE
        model.morphs[1].indices = np.array([5], np.int32)
    elif kind == "uv":
        model.morphs.append(full.morphs[3])
        assert model.morphs[1].kind == MorphKind.UV
        model.morphs[1].indices = np.array([0, 4], np.int32)  # the second target, one past the last vertex
    else:  # additional-UV morph (needs a model with additional UVs)
        model = full_model()
        model.morphs = [model.morphs[0], model.morphs[4]]
        assert model.morphs[1].kind == MorphKind.UV1
        model.morphs[1].indices = np.array([7], np.int32)
    data = pmx_bytes(model)
    err = _raises(data, field)
    assert err.reason == reason
    # The error's offset points at the bad index in the file. Header index-size
    # bytes: 11 vertex (unsigned below 4 bytes), 13 material, 14 bone, 15 morph.
    size_at = {"group": 15, "material": 13, "bone": 14}.get(kind, 11)
    size = data[size_at]
    value = int(reason.split(" index ")[1].split()[0])
    assert int.from_bytes(data[err.offset : err.offset + size], "little", signed=size_at != 11) == value


def test_rigid_body_index_out_of_range_says_rigid_bodies():
    model = full_model()
    model.joints[0].rigid_b = 5
    err = _raises(pmx_bytes(model), "joints[0].rigid_b")
    assert err.reason == "rigid body index 5 out of range (model has 2 rigid bodies)"


def test_material_face_counts_must_sum_to_face_count():
    model = quad_model()
    model.materials[0].face_count = 3
    err = _raises(pmx_bytes(model), "materials.face_count")
    assert "3" in err.reason and "2 faces" in err.reason


def test_flip_morph_in_a_pmx20_file_is_an_unknown_type():
    model = full_model()
    data = bytearray(pmx_bytes(model))
    data[4:8] = struct.pack("<f", 2.0)
    with pytest.raises(MMDFormatError) as info:
        parse_model(bytes(data), "bad.pmx")
    assert "morph type 9" in info.value.reason


def test_trailing_bytes_and_bad_texture_index_are_warnings():
    model = quad_model()
    model.materials[0].sphere_index = 5
    back = read_pmx(pmx_bytes(model) + b"\0junk")
    assert back.materials[0].sphere_index == -1
    assert any("sphere_index 5 out of range" in w for w in back.warnings)
    assert any("5 trailing bytes" in w for w in back.warnings)


def test_invalid_utf16_text_is_tolerated_with_a_warning():
    model = quad_model()
    data = bytearray(pmx_bytes(model))
    name_len_pos = 17
    assert struct.unpack_from("<I", data, name_len_pos)[0] == 8  # "quad" in UTF-16LE
    data[name_len_pos + 4 : name_len_pos + 6] = b"\x00\xd8"  # lone high surrogate
    back = read_pmx(bytes(data))
    assert back.name.endswith("uad") and any("header.name" in w for w in back.warnings)


def test_save_pmx_is_atomic_and_leaves_no_temporaries(tmp_path):
    out = tmp_path / "m.pmx"
    save_pmx(quad_model(), out)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pmx"]
    bad = quad_model()
    bad.deform_types[0] = 9
    with pytest.raises(ValueError):
        save_pmx(bad, out)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pmx"]
    assert load_model(out).name == "quad"
