"""PMX writer: any :class:`Model` (from PMX, PMD or built in code) to PMX 2.0/2.1.

The layout mirrors :mod:`mmdsynth.mmd.pmx` (PMX 2.0 specification, 2.1
additions). Index sizes are the smallest that hold the model's counts.
The file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from .atomic import atomic_write_bytes
from .binary import SIGNED_INDEX, UNSIGNED_INDEX, BinaryWriter
from .model import (
    IMPULSE_MORPH_DTYPE,
    MATERIAL_MORPH_DTYPE,
    BoneFlag,
    DeformType,
    MaterialFlag,
    Model,
    MorphKind,
)

_ENCODING_BYTE = {"utf-16-le": 0, "utf-8": 1}
_UV_KINDS = (MorphKind.UV, MorphKind.UV1, MorphKind.UV2, MorphKind.UV3, MorphKind.UV4)


def needs_pmx21(model: Model) -> bool:
    """True when the model uses a PMX 2.1 feature: QDEF, flip/impulse morphs,
    soft bodies, joint types other than spring 6DOF, or material flags 0x20-0x80."""
    return bool(
        (model.deform_types == DeformType.QDEF).any()
        or any(m.kind in (MorphKind.FLIP, MorphKind.IMPULSE) for m in model.morphs)
        or model.soft_bodies
        or any(j.kind != 0 for j in model.joints)
        or any(m.flags & (MaterialFlag.VERTEX_COLOR | MaterialFlag.POINT_DRAW | MaterialFlag.LINE_DRAW) for m in model.materials)
    )


def _vertex_index_size(count: int) -> int:
    return 1 if count < 256 else 2 if count < 65536 else 4


def _signed_index_size(count: int) -> int:
    return 1 if count < 128 else 2 if count < 32768 else 4


class _PMXWriter:
    def __init__(self, model: Model):
        self.m = model
        self.w = BinaryWriter()
        self.encoding = model.encoding if model.encoding in _ENCODING_BYTE else "utf-16-le"
        self.version = 2.1 if (model.format == "pmx" and model.version >= 2.1) or needs_pmx21(model) else 2.0
        self.sizes = {
            "vertex": _vertex_index_size(len(model.positions)),
            "texture": _signed_index_size(len(model.textures)),
            "material": _signed_index_size(len(model.materials)),
            "bone": _signed_index_size(len(model.bones)),
            "morph": _signed_index_size(len(model.morphs)),
            "rigid_body": _signed_index_size(len(model.rigid_bodies)),
        }
        self.vdt = UNSIGNED_INDEX[self.sizes["vertex"]]
        self.idt = {k: SIGNED_INDEX[v] for k, v in self.sizes.items() if k != "vertex"}
        self.fmt = {k: {1: "b", 2: "h", 4: "i"}[v] for k, v in self.sizes.items()}

    def text(self, s: str) -> None:
        raw = s.encode(self.encoding, errors="surrogatepass")
        self.w.pack("I", len(raw))
        self.w.add(raw)

    def index(self, kind: str, value: int) -> None:
        self.w.pack(self.fmt[kind], value)

    def header(self) -> None:
        m, w = self.m, self.w
        w.add(b"PMX ")
        w.pack("f", self.version)
        s = self.sizes
        w.pack("9B", 8, _ENCODING_BYTE[self.encoding], m.additional_uv_count,
               s["vertex"], s["texture"], s["material"], s["bone"], s["morph"], s["rigid_body"])
        for t in (m.name, m.name_en, m.comment, m.comment_en):
            self.text(t)

    def vertices(self) -> None:
        m = self.m
        n, A = len(m.positions), m.additional_uv_count
        bdt = self.idt["bone"]
        prefix = [("pos", "<f4", 3), ("nrm", "<f4", 3), ("uv", "<f4", 2)] + ([("add", "<f4", (A, 4))] if A else []) + [("type", "u1")]
        layouts = {
            DeformType.BDEF1: [("b", bdt, 1)],
            DeformType.BDEF2: [("b", bdt, 2), ("w", "<f4", 1)],
            DeformType.BDEF4: [("b", bdt, 4), ("w", "<f4", 4)],
            DeformType.SDEF: [("b", bdt, 2), ("w", "<f4", 1), ("sdef", "<f4", 9)],
            DeformType.QDEF: [("b", bdt, 4), ("w", "<f4", 4)],
        }
        types = np.asarray(m.deform_types, np.uint8)
        dts = {t: np.dtype(prefix + layout + [("edge", "<f4")]) for t, layout in layouts.items()}
        sizes = np.zeros(5, np.int64)
        for t, dt in dts.items():
            sizes[t] = dt.itemsize
        if n and types.max(initial=0) > 4:
            raise ValueError(f"unknown deform type {int(types.max())}")
        ends = np.cumsum(sizes[types])
        starts = ends - sizes[types]
        out = np.zeros(int(ends[-1]) if n else 0, np.uint8)
        for t, dt in dts.items():
            sel = np.flatnonzero(types == t)
            if sel.size == 0:
                continue
            rec = np.zeros(sel.size, dt)
            rec["pos"], rec["nrm"], rec["uv"] = m.positions[sel], m.normals[sel], m.uvs[sel]
            if A:
                rec["add"] = m.additional_uvs[sel]
            rec["type"] = t
            k = dt["b"].shape[0] if dt["b"].shape else 1
            rec["b"] = m.bone_indices[sel, :k].reshape(rec["b"].shape)
            if t in (DeformType.BDEF2, DeformType.SDEF):
                rec["w"] = m.bone_weights[sel, 0].reshape(rec["w"].shape)
            elif t in (DeformType.BDEF4, DeformType.QDEF):
                rec["w"] = m.bone_weights[sel]
            if t == DeformType.SDEF:
                rec["sdef"] = np.concatenate([m.sdef_c[sel], m.sdef_r0[sel], m.sdef_r1[sel]], axis=1)
            rec["edge"] = m.edge_scales[sel]
            rows = rec.view(np.uint8).reshape(sel.size, dt.itemsize)
            out[starts[sel, None] + np.arange(dt.itemsize)] = rows
        self.w.pack("I", n)
        self.w.add(out.tobytes())

    def faces(self) -> None:
        faces = np.asarray(self.m.faces).reshape(-1)
        self.w.pack("I", len(faces))
        self.w.array(faces, self.vdt)

    def textures(self) -> None:
        self.w.pack("I", len(self.m.textures))
        for t in self.m.textures:
            self.text(t)

    def materials(self) -> None:
        w = self.w
        w.pack("I", len(self.m.materials))
        for mat in self.m.materials:
            self.text(mat.name)
            self.text(mat.name_en)
            w.pack("4f3ff3fB4ff", *mat.diffuse, *mat.specular, mat.specular_power, *mat.ambient,
                   int(mat.flags) & 0xFF, *mat.edge_color, mat.edge_size)
            self.index("texture", mat.texture_index)
            self.index("texture", mat.sphere_index)
            w.pack("BB", int(mat.sphere_mode), int(mat.toon_shared))
            if mat.toon_shared:
                w.pack("B", mat.toon_index)
            else:
                self.index("texture", mat.toon_index)
            self.text(mat.memo)
            w.pack("i", mat.face_count * 3)

    def bones(self) -> None:
        w = self.w
        w.pack("I", len(self.m.bones))
        for b in self.m.bones:
            flags = int(b.flags)
            self.text(b.name)
            self.text(b.name_en)
            w.pack("3f", *b.position)
            self.index("bone", b.parent)
            w.pack("iH", b.layer, flags)
            if flags & BoneFlag.TAIL_IS_BONE:
                self.index("bone", b.tail_bone)
            else:
                w.pack("3f", *b.tail_offset)
            if flags & (BoneFlag.APPEND_ROTATION | BoneFlag.APPEND_TRANSLATION):
                self.index("bone", b.append_parent)
                w.pack("f", b.append_ratio)
            if flags & BoneFlag.FIXED_AXIS:
                w.pack("3f", *(b.fixed_axis or (1.0, 0.0, 0.0)))
            if flags & BoneFlag.LOCAL_AXES:
                w.pack("3f3f", *(b.local_x or (1.0, 0.0, 0.0)), *(b.local_z or (0.0, 0.0, 1.0)))
            if flags & BoneFlag.EXTERNAL_PARENT:
                w.pack("i", b.external_key or 0)
            if flags & BoneFlag.IK:
                if b.ik is None:
                    raise ValueError(f"bone {b.name!r} has the IK flag but no IK data")
                self.index("bone", b.ik.target)
                w.pack("ifi", b.ik.loop_count, b.ik.limit_angle, len(b.ik.links))
                for link in b.ik.links:
                    self.index("bone", link.bone)
                    if link.limit_min is not None:
                        w.pack("B3f3f", 1, *link.limit_min, *(link.limit_max or (0.0, 0.0, 0.0)))
                    else:
                        w.pack("B", 0)

    def morphs(self) -> None:
        w, vdt, idt = self.w, self.vdt, self.idt
        w.pack("I", len(self.m.morphs))
        for mo in self.m.morphs:
            self.text(mo.name)
            self.text(mo.name_en)
            kind = MorphKind(mo.kind)
            k = len(mo.indices)
            w.pack("BBi", int(mo.panel), int(kind), k)
            if kind == MorphKind.VERTEX:
                rec = np.zeros(k, [("i", vdt), ("o", "<f4", 3)])
                rec["o"] = mo.offsets
            elif kind in _UV_KINDS:
                rec = np.zeros(k, [("i", vdt), ("o", "<f4", 4)])
                rec["o"] = mo.offsets
            elif kind == MorphKind.BONE:
                rec = np.zeros(k, [("i", idt["bone"]), ("o", "<f4", 3), ("r", "<f4", 4)])
                rec["o"], rec["r"] = mo.offsets, mo.rotations
            elif kind in (MorphKind.GROUP, MorphKind.FLIP):
                rec = np.zeros(k, [("i", idt["morph"]), ("w", "<f4")])
                rec["w"] = mo.weights
            elif kind == MorphKind.MATERIAL:
                rec = np.zeros(k, [("i", idt["material"])] + [(n, MATERIAL_MORPH_DTYPE.fields[n][0]) for n in MATERIAL_MORPH_DTYPE.names])
                for name in MATERIAL_MORPH_DTYPE.names:
                    rec[name] = mo.material[name]
            else:
                rec = np.zeros(k, [("i", idt["rigid_body"])] + [(n, IMPULSE_MORPH_DTYPE.fields[n][0]) for n in IMPULSE_MORPH_DTYPE.names])
                for name in IMPULSE_MORPH_DTYPE.names:
                    rec[name] = mo.impulse[name]
            rec["i"] = mo.indices
            w.add(rec.tobytes())

    def display_frames(self) -> None:
        w = self.w
        w.pack("I", len(self.m.display_frames))
        for d in self.m.display_frames:
            self.text(d.name)
            self.text(d.name_en)
            w.pack("Bi", int(d.special), len(d.items))
            for target, index in d.items:
                w.pack("B", target)
                self.index("bone" if target == 0 else "morph", index)

    def rigid_bodies(self) -> None:
        w = self.w
        w.pack("I", len(self.m.rigid_bodies))
        for b in self.m.rigid_bodies:
            self.text(b.name)
            self.text(b.name_en)
            self.index("bone", b.bone)
            w.pack("BHB3f3f3f5fB", b.group, b.no_collision_mask, b.shape, *b.size, *b.position, *b.rotation,
                   b.mass, b.linear_damping, b.angular_damping, b.restitution, b.friction, b.mode)

    def joints(self) -> None:
        w = self.w
        w.pack("I", len(self.m.joints))
        for j in self.m.joints:
            self.text(j.name)
            self.text(j.name_en)
            w.pack("B", j.kind)
            self.index("rigid_body", j.rigid_a)
            self.index("rigid_body", j.rigid_b)
            w.pack("24f", *j.position, *j.rotation, *j.position_min, *j.position_max,
                   *j.rotation_min, *j.rotation_max, *j.spring_position, *j.spring_rotation)

    def soft_bodies(self) -> None:
        w = self.w
        w.pack("I", len(self.m.soft_bodies))
        for s in self.m.soft_bodies:
            self.text(s.name)
            self.text(s.name_en)
            w.pack("B", s.shape)
            self.index("material", s.material)
            w.pack("BHBiiffI12f6f4i3f", s.group, s.no_collision_mask, s.flags, s.b_link_distance, s.cluster_count,
                   s.total_mass, s.collision_margin, s.aero_model, *s.config, *s.cluster, *s.iterations, *s.material_params)
            w.pack("i", len(s.anchors))
            for rigid, vertex, near in s.anchors:
                self.index("rigid_body", rigid)
                w.add(np.array([vertex], self.vdt).tobytes())
                w.pack("B", near)
            w.pack("i", len(s.pins))
            w.array(np.asarray(s.pins, np.int64), self.vdt)

    def build(self) -> bytes:
        self.header()
        self.vertices()
        self.faces()
        self.textures()
        self.materials()
        self.bones()
        self.morphs()
        self.display_frames()
        self.rigid_bodies()
        self.joints()
        if self.version >= 2.1:
            self.soft_bodies()
        return self.w.getvalue()


def pmx_bytes(model: Model) -> bytes:
    """Serialise ``model`` as PMX bytes: 2.1 when the model was read from a
    PMX 2.1 file or uses a 2.1 feature (see :func:`needs_pmx21`), else 2.0.
    Text uses the model's encoding when it is UTF-16LE or UTF-8 (PMD's
    Shift-JIS becomes UTF-16LE).

    Raises:
        ValueError: the model is inconsistent (unknown deform type, IK flag
            without IK data, a value that does not fit its field).
    """
    try:
        return _PMXWriter(model).build()
    except struct.error as exc:
        raise ValueError(f"model does not fit the PMX format: {exc}") from exc


def save_pmx(model: Model, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` as PMX (see :func:`pmx_bytes`), through a
    temporary file renamed into place. Raises ValueError (bad model) or OSError."""
    atomic_write_bytes(path, pmx_bytes(model))
