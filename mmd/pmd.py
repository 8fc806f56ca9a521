"""PMD (MikuMikuDance 1.0 model) reader, converted into the shared :class:`Model`.

Format sources: the Kaitai Struct description ``3d/mmd_pmd.ksy``
(kaitai-io/kaitai_struct_formats) for the layout; blender mmd_tools
(``core/pmd/__init__.py``, ``core/pmd/importer.py``), pymeshio
(``pmd/reader.py``, ``converter.py``), babylon-mmd (``pmdReader.ts``) and saba
(``PMDModel.cpp``, ``MMDPhysics.cpp``) for the quirks and for the PMD -> PMX
conversion. Where they disagreed, the PMX and PMD versions of the "Gene" test
model (one exported from the other) decided.

Layout (little-endian; names are Shift-JIS/cp932, fixed size, cut at the first
NUL): header ``b"Pmd"``, f32 version 1.0, name[20], comment[256]; vertices;
face indices; materials; bones; IK chains; face morphs; display lists; then the
optional English names, ten toon texture names, rigid bodies and joints, each of
which may be missing (the file simply ends).

The PMD -> Model mapping (the Model uses PMX semantics throughout, so a PMD
model saves as PMX unchanged):

* Vertices: BDEF1 when both bones are equal, or the weight is 100 (bone 0) or 0
  (bone 1); otherwise BDEF2 with weights ``[w/100, 1 - w/100]``. Weights above
  100 are clamped (warning). ``edge_scales`` is 1.0 where the PMD "no edge" flag
  is 0, else 0.0.
* Materials: named ``材質N``/``MaterialN`` (PMD has no material names). Flags:
  the PMD edge flag ("輪郭・影", edge and shadow) gives ``EDGE | GROUND_SHADOW``;
  an alpha other than 0.98 (MMD's "no self shadow" value) gives
  ``SELF_SHADOW_MAP | SELF_SHADOW``; an alpha below 1 gives ``DOUBLE_SIDED``
  (MMD draws translucent PMD materials without culling). This follows
  babylon-mmd; pymeshio and mmd_tools differ only in the self-shadow bits.
  The texture field ``tex.bmp*sphere.sph`` is split at the first ``*``; a lone
  ``.sph``/``.spa`` name is a sphere map. Sphere mode is ADD for ``.spa`` and
  MULTIPLY otherwise. Texture names are de-duplicated (exact string) into
  ``Model.textures``, in order of first use (texture, sphere, custom toon per
  material).
* Toons: index 255 is none. Index 0..9 selects a toon slot; when the slot's name
  (from the toon block) is one of MMD's shared ``toon01.bmp``..``toon10.bmp`` (or
  empty, or there is no toon block) the material gets ``toon_shared=True`` and
  that shared index; any other name is appended to ``textures`` and referenced
  with ``toon_shared=False`` (as mmd_tools/babylon-mmd do). ``toon_textures``
  keeps the ten names as read (empty when the block is absent).
* Bones (PMD type -> PMX flags): every bone is ROTATABLE and ENABLED;
  TAIL_IS_BONE with ``tail_bone`` when the tail field is a real bone (not 0 and
  not 0xFFFF), else a zero tail offset. Type 1 (rotate+move) and 2 (IK) are
  TRANSLATABLE. Types 6 (IK target), 7 (invisible) and 9 (rotation-coupled) are
  not VISIBLE. Type 5 (under rotation): APPEND_ROTATION from the ik field, ratio
  1. Type 8 (twist): FIXED_AXIS along the normalised bone -> tail direction.
  Type 9: APPEND_ROTATION from the *tail* field with ratio = (ik field as a
  signed 16-bit number) / 100, so it has no display tail (mmd_tools, pymeshio;
  Gene's PMX has e.g. 左目 append 両目 0.15 where its PMD has tail=両目, ik=15, and
  negative ratios stored as 65526 = -10). Types 0, 3, 4 and unknown types are
  plain rotate bones (unknown types add a warning). Deform layer: 1 for bones
  that carry IK, 2 for type 5, 0 otherwise, and never lower than the parent's
  (pymeshio's conversion; Gene's PMX puts its foot IK bones in layer 1).
* IK: ``Bone.ik = IK(target, loop_count=iterations, limit_angle=4 * weight,
  links)`` on the IK bone, with the IK flag (the factor 4 is what saba,
  babylon-mmd, mmd_tools and pymeshio use; Gene's PMX has 2.00713 where its PMD
  has 0.501782). Links whose bone name contains ``ひざ`` (knee) get the limits
  x in [-180 deg, -0.5 deg], y = z = 0 (PMXEditor's "IK制限角" table as quoted by
  babylon-mmd; mmd_tools and pymeshio use the same numbers). A second IK entry on
  the same bone becomes a new bone ``name+`` appended after the others (child of
  the IK bone, invisible), as mmd_tools and babylon-mmd do.
* Morphs: the first face morph is the hidden "base" morph with absolute vertex
  indices; it is not stored. Every other morph becomes a VERTEX morph with
  absolute indices (``base_indices[i]``) and its offsets, panel = PMD type.
  PMX morph index = PMD morph index - 1.
* Display frames (as PMXEditor converts): "Root" (special, bone 0), "表情"
  (special, the face display entries with morph indices shifted by -1), then one
  frame per PMD bone frame name (trailing whitespace/newline stripped; PMD frame
  numbers in the bone display list are 1-based). Entries that point nowhere are
  dropped with a warning.
* Rigid bodies: PMD positions are relative to the rigid body's bone (to bone 0
  when it has none, as saba, mmd_tools, pymeshio and babylon-mmd do); they are
  converted to model space by adding that bone's position (float32 sum).
  Joints are copied (PMD stores position min, max, then rotation min, max).
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import numpy as np

from .binary import BinaryReader, fixed_text
from .errors import MMDFormatError
from .model import (
    IK,
    Bone,
    BoneFlag,
    DeformType,
    DisplayFrame,
    IKLink,
    Joint,
    Material,
    MaterialFlag,
    Model,
    Morph,
    MorphKind,
    RigidBody,
    SphereMode,
)

__all__ = ["read_pmd", "PMD_MAGIC"]

PMD_MAGIC = b"Pmd"
_ENC = "cp932"
_NO_INDEX = 0xFFFF

_VERTEX_DTYPE = np.dtype(
    [
        ("position", "<f4", (3,)),
        ("normal", "<f4", (3,)),
        ("uv", "<f4", (2,)),
        ("bones", "<u2", (2,)),
        ("weight", "u1"),
        ("no_edge", "u1"),
    ]
)
_MATERIAL_DTYPE = np.dtype(
    [
        ("diffuse", "<f4", (4,)),
        ("specular_power", "<f4"),
        ("specular", "<f4", (3,)),
        ("ambient", "<f4", (3,)),
        ("toon", "u1"),
        ("edge", "u1"),
        ("index_count", "<u4"),
        ("texture", "V20"),
    ]
)
_BONE_DTYPE = np.dtype(
    [
        ("name", "V20"),
        ("parent", "<u2"),
        ("tail", "<u2"),
        ("type", "u1"),
        ("ik", "<u2"),
        ("position", "<f4", (3,)),
    ]
)
_MORPH_VERTEX_DTYPE = np.dtype([("index", "<u4"), ("offset", "<f4", (3,))])
_BONE_DISPLAY_DTYPE = np.dtype([("bone", "<u2"), ("frame", "u1")])
_RIGID_DTYPE = np.dtype(
    [
        ("name", "V20"),
        ("bone", "<u2"),
        ("group", "u1"),
        ("mask", "<u2"),
        ("shape", "u1"),
        ("size", "<f4", (3,)),
        ("position", "<f4", (3,)),
        ("rotation", "<f4", (3,)),
        ("params", "<f4", (5,)),  # mass, linear damping, angular damping, restitution, friction
        ("mode", "u1"),
    ]
)
_JOINT_DTYPE = np.dtype(
    [
        ("name", "V20"),
        ("rigid", "<u4", (2,)),
        ("vectors", "<f4", (8, 3)),  # pos, rot, pos min, pos max, rot min, rot max, spring pos, spring rot
    ]
)
assert _VERTEX_DTYPE.itemsize == 38
assert _MATERIAL_DTYPE.itemsize == 70
assert _BONE_DTYPE.itemsize == 39
assert _RIGID_DTYPE.itemsize == 83
assert _JOINT_DTYPE.itemsize == 124

_IK_HEAD = struct.Struct("<HHBHf")  # ik bone, target, chain length, iterations, weight
_MORPH_HEAD_SIZE = 25  # name 20 + u32 count + u8 type
_HEADER_SIZE = 3 + 4 + 20 + 256
_ENGLISH_HEAD_SIZE = 20 + 256
_TOON_SLOTS = 10
_TOON_NAME_SIZE = 100
_FRAME_NAME_SIZE = 50

_SHARED_TOON = re.compile(r"toon(0[1-9]|10)\.bmp", re.IGNORECASE)

# Bone types (PMD): see the module docstring.
_ROTATE, _ROTATE_MOVE, _IK, _UNKNOWN, _UNDER_IK, _UNDER_ROTATE, _IK_TARGET, _INVISIBLE, _TWIST, _ROTATE_RATIO = range(10)

_KNEE = "ひざ"
_KNEE_MIN = (float(np.float32(-math.pi)), 0.0, 0.0)
_KNEE_MAX = (float(np.float32(math.radians(-0.5))), 0.0, 0.0)


def _text(raw) -> str:
    return fixed_text(bytes(raw), _ENC)


def _f32(x) -> float:
    """A Python float holding a float32 value (round-trips through PMX exactly)."""
    return float(np.float32(x))


def _vec(row) -> tuple[float, ...]:
    return tuple(float(v) for v in row)


class _PMDParser:
    def __init__(self, data: bytes, path: str | None):
        self.r = BinaryReader(data, path)
        self.path = path
        self.field = "header"
        self.model = Model(format="pmd", version=1.0, encoding=_ENC)
        if path is not None:
            self.model.path = Path(path)
        self.warnings = self.model.warnings

    # -- helpers ---------------------------------------------------------------

    def fail(self, field: str, reason: str, offset: int | None = -1) -> MMDFormatError:
        return self.r.fail(field, reason, offset)

    def small_count(self, reader_method, field: str, item_size: int) -> int:
        """A u8/u16 count checked against the bytes left (``item_size`` is the
        smallest element)."""
        start = self.r.pos
        n = reader_method(field)
        if n * item_size > self.r.remaining:
            raise self.fail(
                field, f"count {n} needs at least {n * item_size} bytes, {self.r.remaining} left", start
            )
        return n

    # -- sections --------------------------------------------------------------

    def parse(self) -> Model:
        self.header()
        self.vertices()
        self.faces()
        self.materials_raw()
        self.bones_raw()
        self.iks()
        self.morphs()
        self.display()
        self.optional()
        self.finish()
        return self.model

    def header(self) -> None:
        r, m = self.r, self.model
        self.field = "header.magic"
        magic = r.raw(3, "header.magic")
        if magic != PMD_MAGIC:
            raise self.fail("header.magic", f"not a PMD file (magic {magic!r}, expected {PMD_MAGIC!r})", 0)
        version = r.f32("header.version")
        if version != 1.0:
            self.warnings.append(f"PMD version {version!r} (expected 1.0); read as 1.0")
        m.name = _text(r.raw(20, "header.name"))
        m.comment = _text(r.raw(256, "header.comment"))

    def vertices(self) -> None:
        r, m = self.r, self.model
        self.field = "vertices"
        n = r.count("vertices", _VERTEX_DTYPE.itemsize)
        self.vertex_start = r.pos
        v = r.array(_VERTEX_DTYPE, n, "vertices")
        self.raw_vertices = v
        m.positions = np.array(v["position"], dtype=np.float32)
        m.normals = np.array(v["normal"], dtype=np.float32)
        m.uvs = np.array(v["uv"], dtype=np.float32)
        m.additional_uvs = np.zeros((n, 0, 4), np.float32)
        m.sdef_c = np.zeros((n, 3), np.float32)
        m.sdef_r0 = np.zeros((n, 3), np.float32)
        m.sdef_r1 = np.zeros((n, 3), np.float32)
        m.edge_scales = (v["no_edge"] == 0).astype(np.float32)

    def faces(self) -> None:
        r, m = self.r, self.model
        self.field = "faces"
        count_pos = r.pos
        n = r.count("faces", 2)
        if n % 3:
            raise self.fail("faces", f"index count {n} is not a multiple of 3", count_pos)
        start = r.pos
        idx = r.array("<u2", n, "faces")
        nv = m.vertex_count
        if n:
            bad = np.flatnonzero(idx >= nv)
            if bad.size:
                i = int(bad[0])
                raise self.fail(
                    f"faces[{i // 3}]",
                    f"vertex index {int(idx[i])} out of range (vertex count {nv})",
                    start + 2 * i,
                )
        m.faces = idx.astype(np.uint32).reshape(-1, 3)
        self.face_index_count = n

    def materials_raw(self) -> None:
        r = self.r
        self.field = "materials"
        self.material_count_pos = r.pos
        n = r.count("materials", _MATERIAL_DTYPE.itemsize)
        self.material_start = r.pos
        self.raw_materials = r.array(_MATERIAL_DTYPE, n, "materials")
        counts = self.raw_materials["index_count"].astype(np.int64)
        off = self.material_start + _MATERIAL_DTYPE.fields["index_count"][1]
        size = _MATERIAL_DTYPE.itemsize
        bad = np.flatnonzero(counts % 3)
        if bad.size:
            i = int(bad[0])
            raise self.fail(
                f"materials[{i}].face_count",
                f"index count {int(counts[i])} is not a multiple of 3",
                off + i * size,
            )
        total = self.face_index_count
        running = np.cumsum(counts)
        over = np.flatnonzero(running > total)
        if over.size:
            i = int(over[0])
            raise self.fail(
                f"materials[{i}].face_count",
                f"materials use {int(running[i])} face indices, the file has {total}",
                off + i * size,
            )
        used = int(running[-1]) if n else 0
        if used != total:
            raise self.fail(
                "materials",
                f"material index counts sum to {used}, the file has {total} face indices",
                self.material_count_pos,
            )

    def bones_raw(self) -> None:
        r = self.r
        self.field = "bones"
        n = self.small_count(r.u16, "bones", _BONE_DTYPE.itemsize)
        self.bone_start = r.pos
        self.raw_bones = r.array(_BONE_DTYPE, n, "bones")
        self.bone_count = n
        self.check_vertex_bones()

    def check_vertex_bones(self) -> None:
        """Vertex bone indices that are used must exist; build the skinning arrays."""
        m, v, nb = self.model, self.raw_vertices, self.bone_count
        nv = len(v)
        b = v["bones"].astype(np.int32)
        w = v["weight"].astype(np.int32)
        if nv and int(w.max()) > 100:
            k = int(np.count_nonzero(w > 100))
            self.warnings.append(f"{k} vertices have a bone weight above 100; clamped to 100")
            w = np.minimum(w, 100)
        b0, b1 = b[:, 0], b[:, 1]
        use0 = w > 0
        use1 = w < 100
        bad0 = use0 & (b0 >= nb)
        bad1 = use1 & (b1 >= nb)
        bad = np.flatnonzero(bad0 | bad1)
        if bad.size:
            i = int(bad[0])
            slot = 0 if bad0[i] else 1
            raise self.fail(
                f"vertices[{i}].bone_indices",
                f"bone {int(b[i, slot])} out of range (bone count {nb})",
                self.vertex_start + i * _VERTEX_DTYPE.itemsize + _VERTEX_DTYPE.fields["bones"][1] + 2 * slot,
            )
        single = (b0 == b1) | (w == 100) | (w == 0)
        only = np.where(w == 0, b1, b0)
        indices = np.full((nv, 4), -1, np.int32)
        indices[:, 0] = np.where(single, only, b0)
        indices[:, 1] = np.where(single, -1, b1)
        wf = w.astype(np.float32) / np.float32(100.0)
        weights = np.zeros((nv, 4), np.float32)
        weights[:, 0] = np.where(single, np.float32(1.0), wf)
        weights[:, 1] = np.where(single, np.float32(0.0), np.float32(1.0) - wf)
        m.bone_indices = indices
        m.bone_weights = weights
        m.deform_types = np.where(single, DeformType.BDEF1, DeformType.BDEF2).astype(np.uint8)

    def iks(self) -> None:
        r = self.r
        self.field = "ik_chains"
        n = self.small_count(r.u16, "ik_chains", _IK_HEAD.size)
        nb = self.bone_count
        chains = []
        for k in range(n):
            start = r.pos
            self.field = f"ik_chains[{k}]"
            bone, target, length, iterations, weight = r.struct(_IK_HEAD, self.field)
            links = r.array("<u2", length, f"ik_chains[{k}].links").tolist()
            if bone >= nb:
                raise self.fail(f"ik_chains[{k}].bone", f"bone {bone} out of range (bone count {nb})", start)
            if target >= nb:
                raise self.fail(
                    f"ik_chains[{k}].target", f"bone {target} out of range (bone count {nb})", start + 2
                )
            for j, link in enumerate(links):
                if link >= nb:
                    raise self.fail(
                        f"ik_chains[{k}].links[{j}]",
                        f"bone {link} out of range (bone count {nb})",
                        start + _IK_HEAD.size + 2 * j,
                    )
            chains.append((bone, target, iterations, weight, links))
        self.ik_chains = chains

    def morphs(self) -> None:
        r, m = self.r, self.model
        self.field = "morphs"
        n = self.small_count(r.u16, "morphs", _MORPH_HEAD_SIZE)
        nv = m.vertex_count
        base_indices = None
        morphs: list[Morph] = []
        for k in range(n):
            self.field = f"morphs[{k}]"
            name = _text(r.raw(20, f"morphs[{k}].name"))
            count = r.count(f"morphs[{k}].vertex_count", _MORPH_VERTEX_DTYPE.itemsize)
            panel = r.u8(f"morphs[{k}].panel")
            start = r.pos
            items = r.array(_MORPH_VERTEX_DTYPE, count, f"morphs[{k}].vertices")
            idx = items["index"]
            size = _MORPH_VERTEX_DTYPE.itemsize
            if k == 0:
                if panel != 0:
                    self.warnings.append(
                        f"the first face morph {name!r} has panel {panel}, not 0 (base); used as the base"
                    )
                bad = np.flatnonzero(idx >= nv)
                if bad.size:
                    i = int(bad[0])
                    raise self.fail(
                        f"morphs[0].vertices[{i}].index",
                        f"base morph vertex {int(idx[i])} out of range (vertex count {nv})",
                        start + i * size,
                    )
                base_indices = idx.astype(np.int32)
                continue
            bad = np.flatnonzero(idx >= len(base_indices))
            if bad.size:
                i = int(bad[0])
                raise self.fail(
                    f"morphs[{k}].vertices[{i}].index",
                    f"index {int(idx[i])} outside the base morph ({len(base_indices)} vertices)",
                    start + i * size,
                )
            morphs.append(
                Morph(
                    name=name,
                    panel=panel,
                    kind=MorphKind.VERTEX,
                    indices=base_indices[idx],
                    offsets=np.array(items["offset"], dtype=np.float32),
                )
            )
        self.pmd_morph_count = n
        m.morphs = morphs

    def display(self) -> None:
        r, m = self.r, self.model
        self.field = "face_display"
        n = self.small_count(r.u8, "face_display", 2)
        face_entries = r.array("<u2", n, "face_display").tolist()
        self.field = "bone_frame_names"
        nf = self.small_count(r.u8, "bone_frame_names", _FRAME_NAME_SIZE)
        names = [
            _text(r.raw(_FRAME_NAME_SIZE, f"bone_frame_names[{i}]")).rstrip() for i in range(nf)
        ]
        self.field = "bone_display"
        nd = r.count("bone_display", _BONE_DISPLAY_DTYPE.itemsize)
        entries = r.array(_BONE_DISPLAY_DTYPE, nd, "bone_display")

        root = DisplayFrame(name="Root", name_en="Root", special=True)
        if self.bone_count:
            root.items.append((0, 0))
        faces = DisplayFrame(name="表情", name_en="Exp", special=True)
        nm = len(m.morphs)
        dropped = 0
        for idx in face_entries:
            if 1 <= idx <= nm:
                faces.items.append((1, idx - 1))
            else:
                dropped += 1
        if dropped:
            self.warnings.append(f"{dropped} face display entries point to no morph; dropped")
        frames = [DisplayFrame(name=name) for name in names]
        dropped = 0
        for bone, frame in zip(entries["bone"].tolist(), entries["frame"].tolist()):
            if 1 <= frame <= nf and bone < self.bone_count:
                frames[frame - 1].items.append((0, bone))
            else:
                dropped += 1
        if dropped:
            self.warnings.append(f"{dropped} bone display entries point to no bone or frame; dropped")
        m.display_frames = [root, faces, *frames]
        self.frame_names_count = nf

    # -- optional trailing sections -----------------------------------------------

    def optional(self) -> None:
        """English names, toon names, rigid bodies, joints: each may be absent;
        a truncated one ends the parse with a warning."""
        self.english_names = None
        self.toon_names = None
        self.rigid_bodies = []
        r = self.r
        if r.remaining == 0:
            return
        self.field = "english"
        flag = r.u8("english.flag")
        if flag:
            nb, nf = self.bone_count, self.frame_names_count
            nm = max(self.pmd_morph_count - 1, 0)
            size = _ENGLISH_HEAD_SIZE + 20 * nb + 20 * nm + _FRAME_NAME_SIZE * nf
            if r.remaining < size:
                self.warnings.append(
                    f"English name block truncated at byte {r.pos} (needs {size} bytes, "
                    f"{r.remaining} left); English names and later sections ignored"
                )
                r.pos = len(r.data)
                return
            name = _text(r.raw(20, "english.name"))
            comment = _text(r.raw(256, "english.comment"))
            bones = [_text(r.raw(20, "english.bones")) for _ in range(nb)]
            morphs = [_text(r.raw(20, "english.morphs")) for _ in range(nm)]
            frames = [_text(r.raw(_FRAME_NAME_SIZE, "english.frames")).rstrip() for _ in range(nf)]
            self.english_names = (name, comment, bones, morphs, frames)
        if r.remaining == 0:
            return
        self.field = "toon_textures"
        size = _TOON_SLOTS * _TOON_NAME_SIZE
        if r.remaining < size:
            self.warnings.append(
                f"toon texture names truncated at byte {r.pos} (needs {size} bytes, "
                f"{r.remaining} left); ignored with the later sections"
            )
            r.pos = len(r.data)
            return
        self.toon_names = [_text(r.raw(_TOON_NAME_SIZE, "toon_textures")) for _ in range(_TOON_SLOTS)]
        if r.remaining == 0:
            return
        self.rigid_section()
        if r.remaining == 0:
            return
        self.joint_section()

    def truncated_list(self, field: str, item: np.dtype):
        """Count and records of an optional list, keeping complete records of a
        truncated one; None when the count itself is cut."""
        r = self.r
        if r.remaining < 4:
            self.warnings.append(f"{field}: count truncated at byte {r.pos}; section ignored")
            r.pos = len(r.data)
            return None
        n = r.u32(f"{field}")
        start = r.pos
        fit = r.remaining // item.itemsize
        if n > fit:
            self.warnings.append(
                f"{field}: {n} records declared at byte {start - 4}, only {fit} complete; "
                f"kept {fit}, later sections ignored"
            )
            recs = r.array(item, fit, field)
            r.pos = len(r.data)
        else:
            recs = r.array(item, n, field)
        return start, recs

    def rigid_section(self) -> None:
        self.field = "rigid_bodies"
        got = self.truncated_list("rigid_bodies", _RIGID_DTYPE)
        if got is None:
            return
        start, recs = got
        nb = self.bone_count
        bones = recs["bone"].tolist()
        bone_pos = self.raw_bones["position"]
        size = _RIGID_DTYPE.itemsize
        boff = _RIGID_DTYPE.fields["bone"][1]
        positions = recs["position"]
        names = recs["name"]
        groups = recs["group"].tolist()
        masks = recs["mask"].tolist()
        shapes = recs["shape"].tolist()
        sizes = recs["size"].tolist()
        rotations = recs["rotation"].tolist()
        params = recs["params"].tolist()
        modes = recs["mode"].tolist()
        zero = np.zeros(3, np.float32)
        out = []
        for i, b in enumerate(bones):
            if b == _NO_INDEX:
                bone = -1
                origin = bone_pos[0] if nb else zero
            elif b < nb:
                bone = b
                origin = bone_pos[b]
            else:
                raise self.fail(
                    f"rigid_bodies[{i}].bone", f"bone {b} out of range (bone count {nb})", start + i * size + boff
                )
            mass, linear, angular, restitution, friction = params[i]
            out.append(
                RigidBody(
                    name=_text(names[i]),
                    bone=bone,
                    group=groups[i],
                    no_collision_mask=masks[i],
                    shape=shapes[i],
                    size=tuple(sizes[i]),
                    position=tuple((positions[i] + origin).tolist()),
                    rotation=tuple(rotations[i]),
                    mass=mass,
                    linear_damping=linear,
                    angular_damping=angular,
                    restitution=restitution,
                    friction=friction,
                    mode=modes[i],
                )
            )
        self.model.rigid_bodies = out

    def joint_section(self) -> None:
        self.field = "joints"
        got = self.truncated_list("joints", _JOINT_DTYPE)
        if got is None:
            return
        start, recs = got
        nr = len(self.model.rigid_bodies)
        size = _JOINT_DTYPE.itemsize
        roff = _JOINT_DTYPE.fields["rigid"][1]
        rigid = recs["rigid"].tolist()
        vectors = recs["vectors"].tolist()
        names = recs["name"]
        out = []
        for i, (a, b) in enumerate(rigid):
            for slot, value in enumerate((a, b)):
                if value >= nr:
                    raise self.fail(
                        f"joints[{i}].rigid_{'ab'[slot]}",
                        f"rigid body {value} out of range (rigid body count {nr})",
                        start + i * size + roff + 4 * slot,
                    )
            vecs = [tuple(row) for row in vectors[i]]
            out.append(
                Joint(
                    name=_text(names[i]),
                    kind=0,
                    rigid_a=a,
                    rigid_b=b,
                    position=vecs[0],
                    rotation=vecs[1],
                    position_min=vecs[2],
                    position_max=vecs[3],
                    rotation_min=vecs[4],
                    rotation_max=vecs[5],
                    spring_position=vecs[6],
                    spring_rotation=vecs[7],
                )
            )
        self.model.joints = out

    # -- conversion --------------------------------------------------------------

    def finish(self) -> None:
        r, m = self.r, self.model
        if r.remaining:
            self.warnings.append(f"{r.remaining} trailing bytes after the last section (from byte {r.pos})")
        self.field = "materials"
        self.build_materials()
        self.field = "bones"
        self.build_bones()
        if self.english_names is not None:
            name, comment, bones, morphs, frames = self.english_names
            m.name_en, m.comment_en = name, comment
            for bone, text in zip(m.bones, bones):
                bone.name_en = text
            for morph, text in zip(m.morphs, morphs):
                morph.name_en = text
            for frame, text in zip(m.display_frames[2:], frames):
                frame.name_en = text
        m.toon_textures = list(self.toon_names) if self.toon_names is not None else []

    def build_materials(self) -> None:
        m = self.model
        textures: list[str] = []
        lookup: dict[str, int] = {}

        def tex_index(name: str) -> int:
            i = lookup.get(name)
            if i is None:
                i = lookup[name] = len(textures)
                textures.append(name)
            return i

        toon_names = self.toon_names
        raw = self.raw_materials
        diffuse = raw["diffuse"].tolist()
        power = raw["specular_power"].tolist()
        specular = raw["specular"].tolist()
        ambient = raw["ambient"].tolist()
        toon = raw["toon"].tolist()
        edge = raw["edge"].tolist()
        counts = raw["index_count"].tolist()
        names = raw["texture"]
        bad_toon = 0
        materials = []
        for i in range(len(raw)):
            alpha = diffuse[i][3]
            flags = 0
            if edge[i]:
                flags |= MaterialFlag.EDGE | MaterialFlag.GROUND_SHADOW
            if not abs(alpha - 0.98) < 1e-6:
                flags |= MaterialFlag.SELF_SHADOW_MAP | MaterialFlag.SELF_SHADOW
            if alpha < 1.0:
                flags |= MaterialFlag.DOUBLE_SIDED
            mat = Material(
                name=f"材質{i + 1}",
                name_en=f"Material{i + 1}",
                diffuse=tuple(diffuse[i]),
                specular=tuple(specular[i]),
                specular_power=power[i],
                ambient=tuple(ambient[i]),
                flags=int(flags),
                face_count=counts[i] // 3,
            )
            texture, sphere = _split_texture_name(_text(names[i]))
            if texture:
                mat.texture_index = tex_index(texture)
            if sphere:
                mat.sphere_index = tex_index(sphere)
                mat.sphere_mode = SphereMode.ADD if sphere.lower().endswith(".spa") else SphereMode.MULTIPLY
            t = toon[i]
            if t < _TOON_SLOTS:
                slot_name = toon_names[t] if toon_names is not None else ""
                shared = _SHARED_TOON.fullmatch(slot_name.strip())
                if not slot_name.strip():
                    mat.toon_shared, mat.toon_index = True, t
                elif shared:
                    mat.toon_shared, mat.toon_index = True, int(shared.group(1)) - 1
                else:
                    mat.toon_shared, mat.toon_index = False, tex_index(slot_name)
            elif t != 255:
                bad_toon += 1
            materials.append(mat)
        if bad_toon:
            self.warnings.append(f"{bad_toon} materials have a toon index outside 0..9 and 255; no toon used")
        m.materials = materials
        m.textures = textures

    def build_bones(self) -> None:
        m = self.model
        raw = self.raw_bones
        nb = self.bone_count
        names = [_text(x) for x in raw["name"]]
        parents = raw["parent"].tolist()
        tails = raw["tail"].tolist()
        types = raw["type"].tolist()
        iks = raw["ik"].tolist()
        pos_arr = raw["position"]
        positions = [tuple(p) for p in pos_arr.tolist()]
        size = _BONE_DTYPE.itemsize
        off = {k: self.bone_start + _BONE_DTYPE.fields[k][1] for k in ("parent", "tail", "ik")}
        bones: list[Bone] = []
        base_layer = [0] * nb
        unknown = 0
        for i in range(nb):
            parent, tail, btype, ikf = parents[i], tails[i], types[i], iks[i]
            if parent == _NO_INDEX:
                parent = -1
            elif parent >= nb:
                raise self.fail(
                    f"bones[{i}].parent", f"bone {parent} out of range (bone count {nb})", off["parent"] + i * size
                )
            flags = BoneFlag.ROTATABLE | BoneFlag.ENABLED | BoneFlag.VISIBLE
            bone = Bone(name=names[i], position=positions[i], parent=parent)
            if btype == _ROTATE_RATIO:
                # The tail field names the source bone, the ik field the ratio in percent.
                if tail >= nb:
                    raise self.fail(
                        f"bones[{i}].tail",
                        f"rotation source bone {tail} out of range (bone count {nb})",
                        off["tail"] + i * size,
                    )
                ratio = (ikf - 0x10000 if ikf >= 0x8000 else ikf) / 100.0
                flags |= BoneFlag.APPEND_ROTATION
                flags &= ~BoneFlag.VISIBLE
                bone.append_parent, bone.append_ratio = tail, _f32(ratio)
            else:
                if tail not in (0, _NO_INDEX):
                    if tail >= nb:
                        raise self.fail(
                            f"bones[{i}].tail", f"bone {tail} out of range (bone count {nb})", off["tail"] + i * size
                        )
                    flags |= BoneFlag.TAIL_IS_BONE
                    bone.tail_bone = tail
                if btype in (_ROTATE_MOVE, _IK):
                    flags |= BoneFlag.TRANSLATABLE
                elif btype == _UNDER_ROTATE:
                    if ikf >= nb:
                        raise self.fail(
                            f"bones[{i}].ik",
                            f"rotation source bone {ikf} out of range (bone count {nb})",
                            off["ik"] + i * size,
                        )
                    flags |= BoneFlag.APPEND_ROTATION
                    bone.append_parent, bone.append_ratio = ikf, 1.0
                    base_layer[i] = 2
                elif btype in (_IK_TARGET, _INVISIBLE):
                    flags &= ~BoneFlag.VISIBLE
                elif btype == _TWIST:
                    axis = self.twist_axis(i, tail, pos_arr)
                    if axis is not None:
                        flags |= BoneFlag.FIXED_AXIS
                        bone.fixed_axis = axis
                elif btype > _ROTATE_RATIO:
                    unknown += 1
            bone.flags = int(flags)
            bones.append(bone)
        if unknown:
            self.warnings.append(f"{unknown} bones have an unknown PMD bone type (> 9); read as rotate bones")

        # IK chains onto their IK bones; a second chain on one bone gets a copy bone.
        for k, (ikb, target, iterations, weight, links) in enumerate(self.ik_chains):
            ik = IK(
                target=target,
                loop_count=iterations,
                limit_angle=_f32(np.float32(weight) * np.float32(4.0)),
                links=[
                    IKLink(link, _KNEE_MIN, _KNEE_MAX) if _KNEE in names[link] else IKLink(link)
                    for link in links
                ],
            )
            owner = bones[ikb]
            if owner.ik is not None:
                self.warnings.append(
                    f"ik_chains[{k}]: bone {owner.name!r} already has an IK chain; added bone {owner.name + '+'!r}"
                )
                owner = Bone(
                    name=owner.name + "+",
                    name_en=owner.name_en,
                    position=owner.position,
                    parent=ikb,
                    flags=int((owner.flags | BoneFlag.IK) & ~BoneFlag.VISIBLE & ~BoneFlag.TAIL_IS_BONE),
                )
                bones.append(owner)
                base_layer.append(1)
            owner.ik = ik
            owner.flags = int(owner.flags | BoneFlag.IK | BoneFlag.TRANSLATABLE)
            if ikb < nb:
                base_layer[ikb] = max(base_layer[ikb], 1)
        self.assign_layers(bones, base_layer)
        m.bones = bones

    def twist_axis(self, i: int, tail: int, pos_arr: np.ndarray):
        """Unit vector from bone ``i`` to its tail bone (float32), or None."""
        if tail in (0, _NO_INDEX):
            self.warnings.append(f"bones[{i}]: twist bone without a tail bone; no fixed axis")
            return None
        with np.errstate(all="ignore"):
            d = pos_arr[tail].astype(np.float64) - pos_arr[i].astype(np.float64)
            length = float(np.sqrt(np.dot(d, d)))
            if not (length > 0.0 and math.isfinite(length)):
                self.warnings.append(f"bones[{i}]: twist bone with a degenerate tail direction; no fixed axis")
                return None
            return _vec((d / length).astype(np.float32))

    def assign_layers(self, bones: list[Bone], base_layer: list[int]) -> None:
        """layer = max(own base layer, parent's layer), in O(N), cycle-safe."""
        n = len(bones)
        layer = [-1] * n
        cycle = False
        for i in range(n):
            if layer[i] >= 0:
                continue
            chain = []
            on_chain = set()
            j = i
            while j >= 0 and layer[j] < 0 and j not in on_chain:
                chain.append(j)
                on_chain.add(j)
                j = bones[j].parent
            if j >= 0 and j in on_chain:
                cycle = True
                inherited = 0
            else:
                inherited = layer[j] if j >= 0 else 0
            for c in reversed(chain):
                inherited = max(inherited, base_layer[c])
                layer[c] = inherited
        for bone, value in zip(bones, layer):
            bone.layer = value
        if cycle:
            self.warnings.append("bone parents form a cycle")


def _split_texture_name(text: str) -> tuple[str, str]:
    """``"tex.bmp*sphere.sph"`` -> (texture, sphere); a lone sphere name is a sphere."""
    texture, star, sphere = text.partition("*")
    if not star and texture.lower().endswith((".sph", ".spa")):
        texture, sphere = "", texture
    return texture, sphere


def read_pmd(data: bytes, path: str | None = None) -> Model:
    """Parse a whole PMD file (magic ``b"Pmd"``, version 1.0) into a :class:`Model`.

    Args:
        data: the file's bytes (any bytes-like object).
        path: the file name, used in error messages and stored as
            ``Model.path`` (None when parsing a buffer).

    Returns:
        A Model with ``format="pmd"``, ``version=1.0``, ``encoding="cp932"``:
        ``positions``/``normals`` (N,3) float32 (MMD units, left-handed),
        ``uvs`` (N,2) float32, BDEF1/BDEF2 skinning in ``bone_indices`` (N,4)
        int32 and ``bone_weights`` (N,4) float32, ``faces`` (F,3) uint32, and
        materials, bones (with IK), vertex morphs (absolute vertex indices,
        int32, offsets (K,3) float32), display frames, rigid bodies and joints
        converted to PMX semantics (angles in radians) as the module docstring
        describes. What was tolerated (a missing or truncated optional section,
        trailing bytes, dropped display entries) is listed in ``warnings``.

    Raises:
        MMDFormatError: for anything else that is wrong: bad magic, truncation
            in the mandatory sections, impossible counts, a face index >= the
            vertex count, a used vertex bone index out of range, material index
            counts that do not sum to the face index count, out-of-range bone
            parent/tail/append/IK references, morph indices outside the base
            morph or base indices outside the vertices, rigid body bones or joint
            rigid bodies out of range. The error names the file, the byte offset
            and the field (e.g. ``"bones[5].parent"``). No other exception
            escapes for any input bytes; memory use is linear in the file size.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    parser = _PMDParser(data, path)
    try:
        with np.errstate(all="ignore"):
            return parser.parse()
    except MMDFormatError:
        raise
    except Exception as exc:  # a safety net: any surprise is still a format error
        raise MMDFormatError(
            path, parser.r.pos, parser.field, f"malformed data ({type(exc).__name__}: {exc})"
        ) from exc
