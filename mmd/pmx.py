"""PMX 2.0 / 2.1 reader.

Layout source: the PMX 2.0 specification (English translation by ulrikdamm)
and Kaitai Struct's ``mmd_pmx.ksy``; 2.1 additions (QDEF, flip and impulse
morphs, joint types, soft bodies, material flags 0x20-0x80) from the PMX 2.1
notes shipped with PMXEditor.

Vertices are variable-length (the skinning block depends on the deform type),
so they are parsed in two steps: one tight pass finds each vertex's offset
from its type byte, then numpy gathers every field of all vertices at once.
That keeps a 30k-vertex model well under the time of a per-vertex parser.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from .binary import SIGNED_INDEX, UNSIGNED_INDEX, BinaryReader
from .errors import MMDFormatError
from .model import (
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
    SphereMode,
)

PMX_MAGIC = b"PMX "
_ENCODINGS = {0: "utf-16-le", 1: "utf-8"}
# Index kinds of the deferred range checks -> (singular, plural) for messages.
_KIND_WORDS = {
    "vertex": ("vertex", "vertices"),
    "bone": ("bone", "bones"),
    "morph": ("morph", "morphs"),
    "material": ("material", "materials"),
    "rigid_body": ("rigid body", "rigid bodies"),
}

_MATERIAL_COLOURS = struct.Struct("<4f3ff3fB4ff")  # diffuse, specular, power, ambient, flags, edge colour, edge size
_RIGID_BODY = struct.Struct("<BHB3f3f3f5fB")
_JOINT_TAIL = struct.Struct("<3f3f3f3f3f3f3f3f")
_SOFT_BODY_PARAMS = struct.Struct("<BiiffI12f6f4i3f")


def _text(r: BinaryReader, encoding: str, field: str, warnings: list[str]) -> str:
    start = r.pos
    size = r.count(field, 1)
    raw = r.raw(size, field)
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        warnings.append(f"byte {start}: {field}: text is not valid {encoding}; undecodable bytes replaced")
        return raw.decode(encoding, errors="replace")


def _copy_fields(rec: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Copy the fields of ``dtype`` out of records that also hold an index."""
    out = np.empty(len(rec), dtype)
    for name in dtype.names:
        out[name] = rec[name]
    return out


class _PMXParser:
    def __init__(self, data: bytes, path: str | None):
        self.r = BinaryReader(data, path)
        self.warnings: list[str] = []
        self.checks: list[tuple] = []  # index checks deferred until all counts are known

    # -- helpers ---------------------------------------------------------
    def text(self, field: str) -> str:
        return _text(self.r, self.encoding, field, self.warnings)

    def defer_check(self, values: np.ndarray, kind: str, field: str, offsets, allow_none: bool) -> None:
        """Record that ``values`` must index ``kind`` (-1 allowed when ``allow_none``).
        ``offsets`` locates value i: an int (one value), a (start, stride) pair,
        or an array of per-value byte offsets."""
        self.checks.append((np.asarray(values), kind, field, offsets, allow_none))

    def run_checks(self, counts: dict[str, int]) -> None:
        for values, kind, field, offsets, allow_none in self.checks:
            if values.size == 0:
                continue
            limit = counts[kind]
            rows = values.reshape(len(values), -1)
            bad = np.flatnonzero(((rows < (-1 if allow_none else 0)) | (rows >= limit)).any(1))
            if bad.size:
                i = int(bad[0])
                value = values[i]
                if isinstance(offsets, tuple):
                    offset, name = offsets[0] + i * offsets[1], field.format(i=i)
                elif isinstance(offsets, np.ndarray):
                    offset, name = int(offsets[i]), field.format(i=i)
                else:
                    offset, name = offsets, field
                raise MMDFormatError(
                    self.r.path,
                    offset,
                    name,
                    f"{_KIND_WORDS[kind][0]} index {np.asarray(value).tolist()} out of range"
                    f" (model has {limit} {_KIND_WORDS[kind][limit != 1]})",
                )

    # -- sections --------------------------------------------------------
    def header(self, model: Model) -> None:
        r = self.r
        magic = r.raw(4, "header.magic") if r.remaining >= 4 else b""
        if magic != PMX_MAGIC:
            raise MMDFormatError(r.path, 0, "header.magic", f"not a PMX file (magic {magic!r})")
        version = r.f32("header.version")
        if not math.isfinite(version) or not 1.5 <= version < 3.0:
            raise r.fail("header.version", f"unsupported PMX version {version!r}", 4)
        version = round(version, 2)
        if version not in (2.0, 2.1):
            self.warnings.append(f"unusual PMX version {version}; read as {'2.1' if version > 2.0 else '2.0'}")
        model.version = version
        self.v21 = version >= 2.1
        n_globals = r.u8("header.globals_count")
        if n_globals < 8:
            raise r.fail("header.globals_count", f"{n_globals} globals, PMX needs 8", r.pos - 1)
        g = r.raw(n_globals, "header.globals")
        gstart = r.pos - n_globals
        if g[0] not in _ENCODINGS:
            raise MMDFormatError(r.path, gstart, "header.encoding", f"unknown text encoding {g[0]}")
        self.encoding = model.encoding = _ENCODINGS[g[0]]
        if g[1] > 4:
            raise MMDFormatError(r.path, gstart + 1, "header.additional_uv_count", f"{g[1]} additional UVs, at most 4")
        self.n_add_uv = g[1]
        names = ("vertex", "texture", "material", "bone", "morph", "rigid_body")
        sizes = {}
        for k, name in enumerate(names):
            if g[2 + k] not in (1, 2, 4):
                raise MMDFormatError(r.path, gstart + 2 + k, f"header.{name}_index_size", f"index size {g[2 + k]}, must be 1, 2 or 4")
            sizes[name] = g[2 + k]
        if n_globals > 8:
            self.warnings.append(f"header has {n_globals} globals; the {n_globals - 8} unknown ones are ignored")
        self.sizes = sizes
        self.vertex_dt = UNSIGNED_INDEX[sizes["vertex"]]
        self.idx_dt = {k: SIGNED_INDEX[v] for k, v in sizes.items() if k != "vertex"}
        model.name = self.text("header.name")
        model.name_en = self.text("header.name_en")
        model.comment = self.text("header.comment")
        model.comment_en = self.text("header.comment_en")

    def vertices(self, model: Model) -> None:
        r, data = self.r, self.r.data
        A, bs = self.n_add_uv, self.sizes["bone"]
        base = 32 + 16 * A  # position, normal, uv, additional uvs
        weight_size = [bs, 2 * bs + 4, 4 * bs + 16, 2 * bs + 4 + 36, 4 * bs + 16]
        step = [base + 1 + w + 4 for w in weight_size]
        n = r.count("vertices.count", step[0])
        start = r.pos
        offsets = [0] * n
        pos, end = start, len(data)
        # Find each vertex's start from its deform-type byte (the only sequential part).
        try:
            for i in range(n):
                offsets[i] = pos
                pos += step[data[pos + base]]
        except IndexError:
            tpos = offsets[i] + base
            if tpos >= end:
                raise MMDFormatError(r.path, end, f"vertices[{i}]", "file ends inside the vertex data") from None
            raise MMDFormatError(r.path, tpos, f"vertices[{i}].deform_type", f"unknown deform type {data[tpos]}") from None
        if pos > end:
            raise MMDFormatError(r.path, end, f"vertices[{n - 1}]", "file ends inside the vertex data")
        r.pos = pos
        buf = np.frombuffer(data, np.uint8)
        off = np.asarray(offsets, dtype=np.int64)
        prefix = buf[off[:, None] + np.arange(base + 1)]
        floats = prefix[:, :base].copy().view("<f4").astype(np.float32)
        model.positions = np.ascontiguousarray(floats[:, 0:3])
        model.normals = np.ascontiguousarray(floats[:, 3:6])
        model.uvs = np.ascontiguousarray(floats[:, 6:8])
        model.additional_uvs = np.ascontiguousarray(floats[:, 8:].reshape(n, A, 4))
        types = prefix[:, base].copy()
        model.deform_types = types
        bone_idx = np.full((n, 4), -1, np.int32)
        weights = np.zeros((n, 4), np.float32)
        sdef = np.zeros((n, 9), np.float32)
        edge = np.zeros(n, np.float32)
        idx_dt = self.idx_dt["bone"]
        for t, wsize in enumerate(weight_size):
            sel = np.flatnonzero(types == t)
            if sel.size == 0:
                continue
            block = buf[off[sel, None] + (base + 1) + np.arange(wsize + 4)]
            n_bones = (1, 2, 4, 2, 4)[t]
            ib = n_bones * bs
            bone_idx[sel, :n_bones] = block[:, :ib].copy().view(idx_dt)
            fl = block[:, ib:].copy().view("<f4")
            if t == DeformType.BDEF1:
                weights[sel, 0] = 1.0
            elif t in (DeformType.BDEF2, DeformType.SDEF):
                weights[sel, 0] = fl[:, 0]
                weights[sel, 1] = np.float32(1.0) - fl[:, 0]
                if t == DeformType.SDEF:
                    sdef[sel] = fl[:, 1:10]
            else:
                weights[sel] = fl[:, :4]
            edge[sel] = fl[:, -1]
        model.bone_indices, model.bone_weights, model.edge_scales = bone_idx, weights, edge
        model.sdef_c = np.ascontiguousarray(sdef[:, 0:3])
        model.sdef_r0 = np.ascontiguousarray(sdef[:, 3:6])
        model.sdef_r1 = np.ascontiguousarray(sdef[:, 6:9])
        # A -1 bone is allowed only where its weight is 0.
        used = bone_idx.copy()
        used[(bone_idx == -1) & (weights == 0)] = 0
        self.defer_check(used, "bone", "vertices[{i}].bone_indices", off + base + 1, False)

    def faces(self, model: Model) -> None:
        r = self.r
        size = self.sizes["vertex"]
        start = r.pos
        n_idx = r.count("faces.count", size)
        if n_idx % 3:
            raise r.fail("faces.count", f"{n_idx} vertex indices is not a multiple of 3", start)
        self.face_start = r.pos
        model.faces = r.array(self.vertex_dt, n_idx, "faces").astype(np.int64).reshape(-1, 3)

    def textures(self, model: Model) -> None:
        n = self.r.count("textures.count", 4)
        model.textures = [self.text(f"textures[{i}]") for i in range(n)]

    def materials(self, model: Model) -> None:
        r = self.r
        ts = self.sizes["texture"]
        n = r.count("materials.count", 8 + 8 + _MATERIAL_COLOURS.size + 2 * ts + 2 + 1 + 4 + 4)
        mats = []
        self.texture_refs = []
        for i in range(n):
            f = f"materials[{i}]"
            m = Material(name=self.text(f + ".name"), name_en=self.text(f + ".name_en"))
            c = r.struct(_MATERIAL_COLOURS, f + ".colours")
            m.diffuse, m.specular, m.specular_power, m.ambient = c[0:4], c[4:7], c[7], c[8:11]
            m.flags, m.edge_color, m.edge_size = c[11], c[12:16], c[16]
            tex_pos = r.pos
            m.texture_index = r.index(ts, f + ".texture_index")
            m.sphere_index = r.index(ts, f + ".sphere_index")
            self.texture_refs += [(m, "texture_index", tex_pos), (m, "sphere_index", tex_pos + ts)]
            mode_pos = r.pos
            mode = r.u8(f + ".sphere_mode")
            if mode > 3:
                self.warnings.append(f"byte {mode_pos}: {f}.sphere_mode: unknown sphere mode {mode}; sphere map off")
                mode = SphereMode.OFF
            m.sphere_mode = mode
            shared_pos = r.pos
            shared = r.u8(f + ".toon_shared")
            if shared not in (0, 1):
                raise r.fail(f + ".toon_shared", f"toon mode {shared}, must be 0 or 1", shared_pos)
            m.toon_shared = bool(shared)
            if m.toon_shared:
                m.toon_index = r.u8(f + ".toon_index")
                if m.toon_index > 9:
                    self.warnings.append(f"byte {r.pos - 1}: {f}.toon_index: shared toon {m.toon_index} does not exist (0-9)")
            else:
                self.texture_refs.append((m, "toon_index", r.pos))
                m.toon_index = r.index(ts, f + ".toon_index")
            m.memo = self.text(f + ".memo")
            count_pos = r.pos
            n_idx = r.i32(f + ".face_count")
            if n_idx < 0 or n_idx % 3:
                raise r.fail(f + ".face_count", f"index count {n_idx} is not a non-negative multiple of 3", count_pos)
            m.face_count = n_idx // 3
            mats.append(m)
        model.materials = mats
        total = sum(m.face_count for m in mats)
        if total != len(model.faces):
            raise MMDFormatError(
                r.path, r.pos, "materials.face_count",
                f"material face counts sum to {total}, the model has {len(model.faces)} faces",
            )

    def bones(self, model: Model) -> None:
        r = self.r
        bs = self.sizes["bone"]
        n = r.count("bones.count", 8 + 12 + bs + 4 + 2 + bs)
        bones = []
        refs = []  # (value, field, offset, allow_none)
        for i in range(n):
            f = f"bones[{i}]"
            b = Bone(name=self.text(f + ".name"), name_en=self.text(f + ".name_en"))
            b.position = r.vec(3, f + ".position")
            pos = r.pos
            b.parent = r.index(bs, f + ".parent")
            refs.append((b.parent, f + ".parent", pos, True))
            b.layer = r.i32(f + ".layer")
            b.flags = flags = r.u16(f + ".flags")
            if flags & BoneFlag.TAIL_IS_BONE:
                pos = r.pos
                b.tail_bone = r.index(bs, f + ".tail_bone")
                refs.append((b.tail_bone, f + ".tail_bone", pos, True))
            else:
                b.tail_offset = r.vec(3, f + ".tail_offset")
            if flags & (BoneFlag.APPEND_ROTATION | BoneFlag.APPEND_TRANSLATION):
                pos = r.pos
                b.append_parent = r.index(bs, f + ".append_parent")
                refs.append((b.append_parent, f + ".append_parent", pos, True))
                b.append_ratio = r.f32(f + ".append_ratio")
            if flags & BoneFlag.FIXED_AXIS:
                b.fixed_axis = r.vec(3, f + ".fixed_axis")
            if flags & BoneFlag.LOCAL_AXES:
                b.local_x = r.vec(3, f + ".local_x")
                b.local_z = r.vec(3, f + ".local_z")
            if flags & BoneFlag.EXTERNAL_PARENT:
                b.external_key = r.i32(f + ".external_key")
            if flags & BoneFlag.IK:
                pos = r.pos
                target = r.index(bs, f + ".ik.target")
                refs.append((target, f + ".ik.target", pos, False))
                ik = IK(target=target, loop_count=r.i32(f + ".ik.loop_count"), limit_angle=r.f32(f + ".ik.limit_angle"))
                n_links = r.count(f + ".ik.links.count", bs + 1, signed=True)
                for k in range(n_links):
                    pos = r.pos
                    link = IKLink(bone=r.index(bs, f"{f}.ik.links[{k}].bone"))
                    refs.append((link.bone, f"{f}.ik.links[{k}].bone", pos, False))
                    if r.u8(f"{f}.ik.links[{k}].has_limits"):
                        link.limit_min = r.vec(3, f"{f}.ik.links[{k}].limit_min")
                        link.limit_max = r.vec(3, f"{f}.ik.links[{k}].limit_max")
                    ik.links.append(link)
                b.ik = ik
            bones.append(b)
        model.bones = bones
        for value, field, pos, allow_none in refs:
            if not (-1 if allow_none else 0) <= value < n:
                raise MMDFormatError(r.path, pos, field, f"bone index {value} out of range (model has {n} bones)")

    def morphs(self, model: Model) -> None:
        r = self.r
        vdt, idt = self.vertex_dt, self.idx_dt
        n = r.count("morphs.count", 8 + 2 + 4)
        morphs = []
        for i in range(n):
            f = f"morphs[{i}]"
            m = Morph(name=self.text(f + ".name"), name_en=self.text(f + ".name_en"))
            m.panel = r.u8(f + ".panel")
            kind_pos = r.pos
            kind = r.u8(f + ".kind")
            if kind > 10 or (kind > 8 and not self.v21):
                raise r.fail(f + ".kind", f"unknown morph type {kind}" + (" (flip/impulse need PMX 2.1)" if kind <= 10 else ""), kind_pos)
            m.kind = MorphKind(kind)
            if kind == MorphKind.VERTEX:
                dt, target = np.dtype([("i", vdt), ("o", "<f4", 3)]), "vertex"
            elif kind in (MorphKind.UV, MorphKind.UV1, MorphKind.UV2, MorphKind.UV3, MorphKind.UV4):
                dt, target = np.dtype([("i", vdt), ("o", "<f4", 4)]), "vertex"
            elif kind == MorphKind.BONE:
                dt, target = np.dtype([("i", idt["bone"]), ("o", "<f4", 3), ("r", "<f4", 4)]), "bone"
            elif kind in (MorphKind.GROUP, MorphKind.FLIP):
                dt, target = np.dtype([("i", idt["morph"]), ("w", "<f4")]), "morph"
            elif kind == MorphKind.MATERIAL:
                dt, target = np.dtype([("i", idt["material"])] + [(name, MATERIAL_MORPH_DTYPE.fields[name][0]) for name in MATERIAL_MORPH_DTYPE.names]), "material"
            else:
                dt, target = np.dtype([("i", idt["rigid_body"])] + [(name, IMPULSE_MORPH_DTYPE.fields[name][0]) for name in IMPULSE_MORPH_DTYPE.names]), "rigid_body"
            k = r.count(f + ".count", dt.itemsize, signed=True)
            start = r.pos
            rec = r.array(dt, k, f + ".offsets")
            m.indices = rec["i"].astype(np.int32)
            if kind in (MorphKind.VERTEX, MorphKind.UV, MorphKind.UV1, MorphKind.UV2, MorphKind.UV3, MorphKind.UV4):
                m.offsets = rec["o"].astype(np.float32)
            elif kind == MorphKind.BONE:
                m.offsets, m.rotations = rec["o"].astype(np.float32), rec["r"].astype(np.float32)
            elif kind in (MorphKind.GROUP, MorphKind.FLIP):
                m.weights = rec["w"].astype(np.float32)
            elif kind == MorphKind.MATERIAL:
                m.material = _copy_fields(rec, MATERIAL_MORPH_DTYPE)
            else:
                m.impulse = _copy_fields(rec, IMPULSE_MORPH_DTYPE)
            allow_none = kind == MorphKind.MATERIAL  # -1 = every material
            self.defer_check(m.indices, target, f + ".offsets[{i}].index", (start, dt.itemsize), allow_none)
            morphs.append(m)
        model.morphs = morphs

    def display_frames(self, model: Model) -> None:
        r = self.r
        n = r.count("display_frames.count", 8 + 1 + 4)
        frames = []
        for i in range(n):
            f = f"display_frames[{i}]"
            d = DisplayFrame(name=self.text(f + ".name"), name_en=self.text(f + ".name_en"))
            d.special = bool(r.u8(f + ".special"))
            k = r.count(f + ".count", 2, signed=True)
            for j in range(k):
                pos = r.pos
                target = r.u8(f"{f}.items[{j}].target")
                if target == 0:
                    index = r.index(self.sizes["bone"], f"{f}.items[{j}].index")
                    self.defer_check(np.array([index]), "bone", f"{f}.items[{j}].index", pos + 1, False)
                elif target == 1:
                    index = r.index(self.sizes["morph"], f"{f}.items[{j}].index")
                    self.defer_check(np.array([index]), "morph", f"{f}.items[{j}].index", pos + 1, False)
                else:
                    raise r.fail(f"{f}.items[{j}].target", f"unknown display item type {target}", pos)
                d.items.append((target, index))
            frames.append(d)
        model.display_frames = frames

    def rigid_bodies(self, model: Model) -> None:
        r = self.r
        bs = self.sizes["bone"]
        n = r.count("rigid_bodies.count", 8 + bs + _RIGID_BODY.size)
        bodies = []
        for i in range(n):
            f = f"rigid_bodies[{i}]"
            b = RigidBody(name=self.text(f + ".name"), name_en=self.text(f + ".name_en"))
            pos = r.pos
            b.bone = r.index(bs, f + ".bone")
            self.defer_check(np.array([b.bone]), "bone", f + ".bone", pos, True)
            v = r.struct(_RIGID_BODY, f)
            b.group, b.no_collision_mask, b.shape = v[0], v[1], v[2]
            b.size, b.position, b.rotation = v[3:6], v[6:9], v[9:12]
            b.mass, b.linear_damping, b.angular_damping, b.restitution, b.friction = v[12:17]
            b.mode = v[17]
            bodies.append(b)
        model.rigid_bodies = bodies

    def joints(self, model: Model) -> None:
        r = self.r
        rs = self.sizes["rigid_body"]
        n = r.count("joints.count", 8 + 1 + 2 * rs + _JOINT_TAIL.size)
        joints = []
        for i in range(n):
            f = f"joints[{i}]"
            j = Joint(name=self.text(f + ".name"), name_en=self.text(f + ".name_en"))
            kind_pos = r.pos
            j.kind = r.u8(f + ".kind")
            if j.kind > 5 or (j.kind > 0 and not self.v21):
                self.warnings.append(f"byte {kind_pos}: {f}.kind: unknown joint type {j.kind}")
            pos = r.pos
            j.rigid_a = r.index(rs, f + ".rigid_a")
            j.rigid_b = r.index(rs, f + ".rigid_b")
            self.defer_check(np.array([j.rigid_a]), "rigid_body", f + ".rigid_a", pos, True)
            self.defer_check(np.array([j.rigid_b]), "rigid_body", f + ".rigid_b", pos + rs, True)
            v = r.struct(_JOINT_TAIL, f)
            j.position, j.rotation = v[0:3], v[3:6]
            j.position_min, j.position_max, j.rotation_min, j.rotation_max = v[6:9], v[9:12], v[12:15], v[15:18]
            j.spring_position, j.spring_rotation = v[18:21], v[21:24]
            joints.append(j)
        model.joints = joints

    def soft_bodies(self, model: Model) -> None:
        r = self.r
        ms, rs = self.sizes["material"], self.sizes["rigid_body"]
        vdt = self.vertex_dt
        n = r.count("soft_bodies.count", 8 + 1 + ms + 1 + 2 + _SOFT_BODY_PARAMS.size + 8)
        bodies = []
        for i in range(n):
            f = f"soft_bodies[{i}]"
            s = SoftBody(name=self.text(f + ".name"), name_en=self.text(f + ".name_en"))
            s.shape = r.u8(f + ".shape")
            pos = r.pos
            s.material = r.index(ms, f + ".material")
            self.defer_check(np.array([s.material]), "material", f + ".material", pos, True)
            s.group = r.u8(f + ".group")
            s.no_collision_mask = r.u16(f + ".no_collision_mask")
            v = r.struct(_SOFT_BODY_PARAMS, f + ".parameters")
            s.flags, s.b_link_distance, s.cluster_count, s.total_mass, s.collision_margin, s.aero_model = v[0:6]
            s.config, s.cluster, s.iterations, s.material_params = v[6:18], v[18:24], v[24:28], v[28:31]
            adt = np.dtype([("rigid", self.idx_dt["rigid_body"]), ("vertex", vdt), ("near", "u1")])
            k = r.count(f + ".anchors.count", adt.itemsize, signed=True)
            start = r.pos
            anchors = r.array(adt, k, f + ".anchors")
            self.defer_check(anchors["rigid"], "rigid_body", f + ".anchors[{i}].rigid_body", (start, adt.itemsize), False)
            self.defer_check(anchors["vertex"], "vertex", f + ".anchors[{i}].vertex", (start + rs, adt.itemsize), False)
            s.anchors = [(int(a), int(b), int(c)) for a, b, c in anchors.tolist()]
            k = r.count(f + ".pins.count", vdt.itemsize, signed=True)
            start = r.pos
            pins = r.array(vdt, k, f + ".pins")
            self.defer_check(pins, "vertex", f + ".pins[{i}]", (start, vdt.itemsize), False)
            s.pins = [int(p) for p in pins]
            bodies.append(s)
        model.soft_bodies = bodies

    def parse(self) -> Model:
        model = Model(format="pmx")
        self.header(model)
        self.vertices(model)
        self.faces(model)
        nv = len(model.positions)
        if len(model.faces):
            flat = model.faces.reshape(-1)
            bad = np.flatnonzero((flat < 0) | (flat >= nv))
            if bad.size:
                i = int(bad[0])
                raise MMDFormatError(
                    self.r.path, self.face_start + i * self.sizes["vertex"], f"faces[{i // 3}]",
                    f"vertex index {int(flat[i])} out of range (model has {nv} vertices)",
                )
        model.faces = model.faces.astype(np.uint32)
        self.textures(model)
        self.materials(model)
        for material, attr, pos in self.texture_refs:
            index = getattr(material, attr)
            if not -1 <= index < len(model.textures):
                self.warnings.append(f"byte {pos}: material {material.name!r}: {attr} {index} out of range; none used")
                setattr(material, attr, -1)
        self.bones(model)
        self.morphs(model)
        self.display_frames(model)
        self.rigid_bodies(model)
        self.joints(model)
        if self.v21 and self.r.remaining > 0:
            self.soft_bodies(model)
        self.run_checks(
            {
                "vertex": nv,
                "bone": len(model.bones),
                "morph": len(model.morphs),
                "material": len(model.materials),
                "rigid_body": len(model.rigid_bodies),
            }
        )
        if self.r.remaining:
            self.warnings.append(f"{self.r.remaining} trailing bytes after the last section (from byte {self.r.pos}) ignored")
        model.warnings = self.warnings
        return model


def read_pmx(data: bytes, path: str | None = None) -> Model:
    """Parse PMX 2.0/2.1 bytes into a :class:`Model`.

    Raises:
        MMDFormatError: bad magic, truncation, impossible counts, unknown
            deform/morph types, out-of-range indices, material face counts
            that do not sum to the face count.
    """
    return _PMXParser(data, path).parse()
