"""A small anime-style example character, built in code (no downloads needed).

:func:`build_example_model` returns a :class:`~mmdsynth.mmd.model.Model` of an
anime-style girl: a skull with a tapered jaw and pointed chin, a hair
cap with long back hair, an alpha-textured fringe with transparent gaps between
the bangs, two side locks and an ahoge (a lock sticking up from the crown,
which a head-top estimate should ignore), two large eyes (white sclera, a
textured iris with alpha, upper and lower eyelids with a lash line) a little in
front of the face surface, eyebrows, a small mouth (a dark mouth-interior strip
squeezed to a line at rest, opened by あ), neck, shirt, arm stubs, skirt, legs
and shoes. About 5,000 vertices, 8,400 triangles.
:func:`write_example` writes it as ``example.pmx`` with its PNG textures.

Everything is deterministic (no randomness): two builds give identical arrays
and two writes give identical bytes.

Coordinates are MMD's: left-handed, +Y up, the model faces -Z, the character's
left is +X, lengths in MMD units. The character is about 20 units tall (feet at
Y=0); the head spans Y 15.6 (chin tip) to 20.05 (skull top, hair to about
20.35, the ahoge to about 21.5). Faces follow the PMX (DirectX) convention:
front faces are clockwise as seen from their front, which for the numbers means
``cross(b - a, c - a)`` points out of the surface.

Skeleton (standard Japanese names, PMX flags set as in common models)::

    センター (translatable)
      上半身 -> 首 -> 頭 -> 両目
                        頭 -> 左目, 右目   (append rotation from 両目, ratio 1)
      下半身

Skinning: head, face parts, eyelids, mouth and hair follow 頭 (BDEF1); each
iris follows 左目 or 右目; the neck blends 上半身/首 at its base and 首/頭 at
its top (BDEF2); shirt and arms follow 上半身; skirt, legs and shoes 下半身.

Vertex morphs (all only move vertices skinned to 頭):

===========  =====  ===========================================================
name         panel  effect
===========  =====  ===========================================================
まばたき     EYE    both upper eyelids close
ウィンク     EYE    the character's left (+X) upper eyelid closes
ウィンク右   EYE    the character's right (-X) upper eyelid closes
笑い         EYE    both eyes close as smiling arcs "^ ^" (upper lids down,
                    lower lids up a little)
ウィンク２   EYE    smiling wink, character's left eye
ウィンク２右 EYE    smiling wink, character's right eye
あ           MOUTH  the mouth opens (only mouth-interior vertices move)
===========  =====  ===========================================================
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import atomic_path
from .model import (
    Bone,
    BoneFlag,
    DeformType,
    DisplayFrame,
    Material,
    MaterialFlag,
    Model,
    Morph,
    MorphKind,
    MorphPanel,
    RigidBody,
)

__all__ = ["build_example_model", "build_example_textures", "write_example", "EXAMPLE_TEXTURES"]

# ---------------------------------------------------------------------------
# Proportions (MMD units)
# ---------------------------------------------------------------------------

HEAD_CY = 18.0  # height of the skull's widest ring (the "equator")
HEAD_CZ = 0.1  # depth of the skull centre
HEAD_RX = 1.9  # half width
HEAD_RZ = 1.95  # half depth
HEAD_RY_UP = 2.05  # equator to skull top
HEAD_RY_LO = 2.4  # equator to chin tip
CHIN_FORWARD = 1.2  # how far the chin sits in front of the skull centre

EYE_X = 0.74  # |x| of the eye centres
EYE_Y = 17.33
EYE_HW = 0.46  # half width of an eye
LID_WIDEN = 1.12  # eyelids are this much wider than the eye

MOUTH_Y = 16.22
BLUSH_Y = 16.7
MOUTH_HW = 0.2

_FACE_UV_V = 0.9  # the head uses v in [0, 0.9] of the face texture; below is a palette

HAIR_GAP = 0.30  # hair cap distance outside the skull
FRINGE_GAP = 0.22  # fringe distance outside the skull (under the cap's edge)
HAIR_HANG = 3.0  # MMD units of hanging hair per unit of the hair parameter t > 1
_HAIR_UV_T = 2.7  # hair texture v = t / _HAIR_UV_T
_HAIR_RING_T = 0.30  # where the highlight ring sits on the cap
# the fringe strip uses u in [U0, 1-U0], v in [V0, V1] of its texture, so that
# wrapped (REPEAT) bilinear sampling never pulls the opaque top into the tips
_FRINGE_U0, _FRINGE_V0, _FRINGE_V1 = 0.01, 0.02, 0.97

# Offsets of facial parts in front of (towards -Z) the face surface.
OFF_SCLERA = 0.03
OFF_IRIS = 0.055
OFF_BROW = 0.06
OFF_MOUTH = 0.04
OFF_LOWER_LID = 0.13
OFF_UPPER_LID = 0.15

BONE_NAMES = ["センター", "上半身", "首", "頭", "両目", "左目", "右目", "下半身"]
_B = {name: i for i, name in enumerate(BONE_NAMES)}

# Texture file names, as stored in the model (relative to the .pmx).
EXAMPLE_TEXTURES = [
    "tex/face.png",
    "tex/eye.png",
    "tex/mouth.png",
    "tex/shirt.png",
    "tex/hair.png",
    "tex/fringe.png",
]
_T = {name.split("/")[1].split(".")[0]: i for i, name in enumerate(EXAMPLE_TEXTURES)}

SKIN = (1.0, 0.89, 0.83)
HAIR = (0.62, 0.38, 0.26)

# (name, name_en, diffuse RGBA, texture, flags, edge)
_MATERIALS = [
    ("肌", "skin", (1.0, 1.0, 1.0, 1.0), "face", 0, True),
    ("口", "mouth", (1.0, 1.0, 1.0, 1.0), "mouth", 0, False),
    ("白目", "eye white", (1.0, 1.0, 1.0, 1.0), None, 0, False),
    ("瞳", "iris", (1.0, 1.0, 1.0, 1.0), "eye", 0, False),
    ("まぶた", "eyelid", (1.0, 1.0, 1.0, 1.0), "face", 0, False),
    ("まつげ", "eyelash", (0.16, 0.09, 0.08, 1.0), None, 0, False),
    ("眉", "eyebrow", (0.42, 0.24, 0.16, 1.0), None, 0, False),
    ("服", "shirt", (1.0, 1.0, 1.0, 1.0), "shirt", 0, True),
    ("スカート", "skirt", (0.18, 0.22, 0.42, 1.0), None, 0, True),
    ("髪", "hair", (1.0, 1.0, 1.0, 1.0), "hair", MaterialFlag.DOUBLE_SIDED, True),
    ("前髪", "fringe", (1.0, 1.0, 1.0, 1.0), "fringe", MaterialFlag.DOUBLE_SIDED, False),
]
_M = {m[0]: i for i, m in enumerate(_MATERIALS)}


# ---------------------------------------------------------------------------
# Analytic surfaces
# ---------------------------------------------------------------------------


def _head_profile(t):
    """Skull rings for the parameter t in [0, 2] (0 top, 1 equator, 2 chin).

    Returns (y, w, d, c): ring height, half width, half depth and ring centre z.
    The lower half narrows to a V-shaped jaw whose tip (the chin) is pulled
    forward (towards -Z)."""
    t = np.asarray(t, np.float64)
    up = t <= 1.0
    th = np.clip(t, 0.0, 1.0) * (np.pi / 2)
    s = np.clip(t - 1.0, 0.0, 1.0)
    k = np.cos(s * np.pi / 2).clip(0.0)
    y = np.where(up, HEAD_CY + HEAD_RY_UP * np.cos(th), HEAD_CY - HEAD_RY_LO * s)
    w = np.where(up, HEAD_RX * np.sin(th), HEAD_RX * k**0.8 * (1 - 0.2 * s))
    d = np.where(up, HEAD_RZ * np.sin(th), HEAD_RZ * k**0.7)
    c = np.where(up, HEAD_CZ, HEAD_CZ - CHIN_FORWARD * s**2)
    return y, w, d, c


def _head_point(phi, t):
    """Skull surface point; phi in [0, 2pi] around (0 and 2pi at the back, pi
    at the front), t as in :func:`_head_profile`. Shapes broadcast; (..., 3)."""
    y, w, d, c = _head_profile(t)
    a = np.asarray(phi, np.float64) - np.pi  # 0 at the front
    return np.stack(np.broadcast_arrays(w * np.sin(a), y, c - d * np.cos(a)), axis=-1)


def _head_t(y):
    """Inverse of the profile's y(t)."""
    y = np.asarray(y, np.float64)
    cos_th = np.clip((y - HEAD_CY) / HEAD_RY_UP, 0.0, 1.0)
    t_up = np.arccos(cos_th) / (np.pi / 2)
    t_lo = 1.0 + np.clip((HEAD_CY - y) / HEAD_RY_LO, 0.0, 1.0)
    return np.where(y >= HEAD_CY, t_up, t_lo)


def face_z(x, y):
    """Z of the front (-Z side) of the analytic skull at (x, y), MMD units.

    The head mesh's flat triangles lie on or behind this surface, so facial
    parts placed at ``face_z(x, y) - offset`` are in front of the mesh."""
    x = np.asarray(x, np.float64)
    _, w, d, c = _head_profile(_head_t(y))
    r = np.clip(1.0 - (x / np.maximum(w, 1e-6)) ** 2, 0.0, 1.0)
    return c - d * np.sqrt(r)


def _face_uv(x, y):
    """UV of the head mesh (face texture) at the front point (x, y); (..., 2)."""
    t = _head_t(y)
    _, w, _, _ = _head_profile(t)
    phi = np.pi + np.arcsin(np.clip(np.asarray(x, np.float64) / np.maximum(w, 1e-6), -1.0, 1.0))
    return np.stack(np.broadcast_arrays(phi / (2 * np.pi), t / 2.0 * _FACE_UV_V), -1)


def _hair_point(phi, t, gap):
    """Hair shell point: the skull grown by ``gap`` for t <= 1, then hanging
    straight down (slightly flaring) for t > 1 (``HAIR_HANG`` units per unit t)."""
    phi = np.asarray(phi, np.float64)
    t = np.asarray(t, np.float64)
    a = phi - np.pi
    th = np.clip(t, 0.0, 1.0) * (np.pi / 2)
    hang = np.clip(t - 1.0, 0.0, None)
    flare = 1.0 + 0.08 * hang
    rx = (HEAD_RX + gap) * np.sin(th) * flare
    rz = (HEAD_RZ + gap) * np.sin(th) * flare
    y = HEAD_CY + (HEAD_RY_UP + gap) * np.cos(th) - HAIR_HANG * hang
    return np.stack(np.broadcast_arrays(rx * np.sin(a), y, HEAD_CZ - rz * np.cos(a)), axis=-1)


# Eye outline, u in [-1, 1] from the inner (nose side) to the outer corner.
def _eye_top(u):
    u = np.clip(u, -1.0, 1.0)
    return EYE_Y + 0.55 - 0.22 * (u - 0.15) ** 2


def _eye_bottom(u):
    u = np.clip(u, -1.0, 1.0)
    return EYE_Y - 0.47 + 0.28 * u**2


def _smile_arc(u):
    """The "^" line of a smiling closed eye."""
    u = np.clip(u, -1.0, 1.0)
    return EYE_Y - 0.24 + 0.36 * (1.0 - u**2)


def _lash_thickness(u):
    u = np.clip(u, -1.0, 1.0)
    return 0.10 + 0.07 * np.clip(u, 0.0, 1.0) ** 1.5


# ---------------------------------------------------------------------------
# Mesh helpers
# ---------------------------------------------------------------------------


def _grid_faces(rows: int, cols: int) -> np.ndarray:
    """Two triangles per grid cell of a row-major (rows, cols) vertex grid,
    all with the same parametric orientation."""
    r = np.arange(rows - 1)[:, None]
    c = np.arange(cols - 1)[None, :]
    a = r * cols + c
    b = a + 1
    d = a + cols
    e = d + 1
    t1 = np.stack([a, b, e], -1).reshape(-1, 3)
    t2 = np.stack([a, e, d], -1).reshape(-1, 3)
    return np.concatenate([t1, t2]).astype(np.int64)


def _tube(points, half_w, half_d, segments: int, ref=(0.0, 0.0, 1.0)):
    """A tube around a polyline, elliptical cross-section (half_w along the
    first frame axis, half_d along the second). Returns positions (M*(S+1), 3),
    uvs, faces and the per-vertex axis points (for orienting faces). The seam
    column is duplicated so UVs wrap; a zero radius makes a pointed tip."""
    points = np.asarray(points, np.float64)
    m = len(points)
    tangents = np.gradient(points, axis=0)
    length = np.linalg.norm(tangents, axis=1)
    for i in range(1, m):  # a repeated point (flat end cap) keeps the previous direction
        if length[i] < 1e-9:
            tangents[i], length[i] = tangents[i - 1], length[i - 1]
    tangents /= length[:, None]
    n = np.cross(tangents[0], np.asarray(ref, np.float64))
    n /= np.linalg.norm(n)
    frames = []
    for i in range(m):
        n = n - np.dot(n, tangents[i]) * tangents[i]
        n /= np.linalg.norm(n)
        frames.append((n, np.cross(tangents[i], n)))
    ang = np.linspace(0.0, 2 * np.pi, segments + 1)
    pos = np.empty((m, segments + 1, 3))
    for i, (nn, bb) in enumerate(frames):
        pos[i] = (
            points[i]
            + half_w[i] * np.cos(ang)[:, None] * nn
            + half_d[i] * np.sin(ang)[:, None] * bb
        )
    uv = np.stack(
        np.meshgrid(ang / (2 * np.pi), np.linspace(0.0, 1.0, m)), axis=-1
    ).reshape(-1, 2)
    axis = np.repeat(points, segments + 1, axis=0)
    return pos.reshape(-1, 3), uv, _grid_faces(m, segments + 1), axis


def _bezier(p0, p1, p2, p3, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2, p3 = (np.asarray(p, np.float64) for p in (p0, p1, p2, p3))
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _smooth_normals(pos: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals; vertices at the same position (UV seams,
    poles) share one normal. Unit length."""
    cross = np.cross(pos[faces[:, 1]] - pos[faces[:, 0]], pos[faces[:, 2]] - pos[faces[:, 0]])
    key = np.round(pos * 1e5).astype(np.int64)
    _, inverse = np.unique(key, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    acc = np.zeros((inverse.max() + 1, 3))
    for k in range(3):
        np.add.at(acc, inverse[faces[:, k]], cross)
    nrm = acc[inverse]
    length = np.linalg.norm(nrm, axis=1, keepdims=True)
    fallback = np.array([0.0, 0.0, -1.0])
    return np.where(length > 1e-12, nrm / np.maximum(length, 1e-12), fallback)


class _Builder:
    """Accumulates parts (vertices, per-material faces) and vertex morphs."""

    def __init__(self):
        self.pos, self.uv, self.nrm = [], [], []
        self.bidx, self.bw, self.dtype = [], [], []
        self.faces = {name: [] for name in _M}
        self.count = 0
        self.parts: dict[str, tuple[int, int]] = {}
        self.morphs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def add(self, name, pos, uv, faces, inside, material, skin, normal_pos=None) -> np.ndarray:
        """Add a part; returns the global index of each given vertex (-1 for
        vertices no face uses once degenerate triangles are dropped).

        ``inside``: per-vertex points behind the surface (faces are flipped as
        a whole so their normals point away from them). ``skin``: a bone name
        (BDEF1) or (bone1, bone2, weight1) arrays (BDEF2). ``normal_pos``:
        positions to compute normals from (default ``pos``)."""
        pos = np.asarray(pos, np.float64)
        n = len(pos)
        faces = np.asarray(faces, np.int64)
        npos = pos if normal_pos is None else np.asarray(normal_pos, np.float64)
        p0, p1, p2 = npos[faces[:, 0]], npos[faces[:, 1]], npos[faces[:, 2]]
        cross = np.cross(p1 - p0, p2 - p0)
        keep = np.linalg.norm(cross, axis=1) > 1e-9
        faces, cross = faces[keep], cross[keep]
        hint = (p0 + p1 + p2)[keep] / 3.0 - np.asarray(inside, np.float64)[faces].mean(axis=1)
        if np.einsum("ij,ij->", cross, hint) < 0:
            faces = faces[:, [0, 2, 1]]
        normals = _smooth_normals(npos, faces)

        idx = np.full((n, 4), -1, np.int32)
        wts = np.zeros((n, 4), np.float32)
        if isinstance(skin, str):
            idx[:, 0] = _B[skin]
            wts[:, 0] = 1.0
            dt = np.full(n, DeformType.BDEF1, np.uint8)
        else:
            b1, b2, w1 = (np.broadcast_to(np.asarray(v), (n,)) for v in skin)
            w1 = np.asarray(w1, np.float64)
            only1 = w1 >= 1.0 - 1e-6
            only2 = w1 <= 1e-6
            single = only1 | only2
            idx[:, 0] = np.where(only2, b2, b1)
            idx[:, 1] = np.where(single, -1, b2)
            wts[:, 0] = np.where(single, 1.0, w1)
            wts[:, 1] = np.where(single, 0.0, 1.0 - wts[:, 0])
            dt = np.where(single, DeformType.BDEF1, DeformType.BDEF2).astype(np.uint8)

        used = np.zeros(n, bool)
        used[faces.reshape(-1)] = True
        gidx = np.full(n, -1, np.int64)
        gidx[used] = self.count + np.arange(int(used.sum()))
        self.pos.append(pos[used])
        self.uv.append(np.asarray(uv, np.float64).reshape(n, 2)[used])
        self.nrm.append(normals[used])
        self.bidx.append(idx[used])
        self.bw.append(wts[used])
        self.dtype.append(dt[used])
        self.faces[material].append(gidx[faces])
        self.parts[name] = (self.count, self.count + int(used.sum()))
        self.count += int(used.sum())
        return gidx

    def morph(self, name, indices, offsets):
        """Add vertex offsets (global indices) to morph ``name``; zero offsets are dropped."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        offsets = np.asarray(offsets, np.float64).reshape(-1, 3)
        moved = np.abs(offsets).max(axis=1) > 1e-6
        assert (indices[moved] >= 0).all(), name  # a moved vertex must be in the mesh
        self.morphs.setdefault(name, []).append((indices[moved], offsets[moved]))


def _sheet(builder, name, xs, ys, offset, material, uv=None, skin="頭"):
    """A (rows, cols) grid lying ``offset`` in front of the face surface."""
    xs, ys = np.broadcast_arrays(np.asarray(xs, np.float64), np.asarray(ys, np.float64))
    rows, cols = xs.shape
    zs = face_z(xs, ys) - offset
    pos = np.stack([xs, ys, zs], -1).reshape(-1, 3)
    if uv is None:
        uv = np.stack(np.meshgrid(np.linspace(0, 1, cols), np.linspace(0, 1, rows)), -1)
    inside = pos + np.array([0.0, 0.0, 1.0])
    gidx = builder.add(name, pos, uv, _grid_faces(rows, cols), inside, material, skin)
    return gidx, pos


# ---------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------

_UV_PLAIN_SKIN = (0.25, 0.96)
_UV_SHADED_SKIN = (0.75, 0.96)
_UV_PLAIN_SHIRT = (0.02, 0.6)


def _add_head(b: _Builder):
    cols = 40
    t = np.concatenate([np.linspace(0.0, 1.0, 11), np.linspace(1.0, 2.0, 21)[1:]])
    phi = np.linspace(0.0, 2 * np.pi, cols + 1)
    P = _head_point(phi[None, :], t[:, None])
    uv = np.stack(np.meshgrid(phi / (2 * np.pi), t / 2.0 * _FACE_UV_V), -1)
    y, _, _, c = _head_profile(t)
    inside = np.stack(np.broadcast_arrays(0.0, y[:, None], c[:, None] + 0 * phi[None, :]), -1)
    b.add("head", P.reshape(-1, 3), uv.reshape(-1, 2), _grid_faces(len(t), cols + 1),
          inside.reshape(-1, 3), "肌", "頭")


def _add_eyes(b: _Builder):
    for side, sname in ((1, "左"), (-1, "右")):
        xc = side * EYE_X

        def ex(u):
            return xc + side * u * EYE_HW

        # sclera
        u = np.linspace(-1, 1, 13)
        r = np.linspace(0, 1, 7)[:, None]
        ys = _eye_bottom(u)[None, :] + r * (_eye_top(u) - _eye_bottom(u))[None, :]
        _sheet(b, f"sclera{sname}", ex(u)[None, :] + 0 * r, ys, OFF_SCLERA, "白目")

        # iris (rotates with the eye bone); UV u grows with +X for both eyes so
        # the highlights sit on the same side
        w, h = 0.62, 0.90
        xi = xc + side * 0.02
        yi = EYE_Y + 0.0
        gx = np.linspace(xi - w / 2, xi + w / 2, 6)
        gy = np.linspace(yi + h / 2, yi - h / 2, 7)
        X, Y = np.meshgrid(gx, gy)
        uv = np.stack(np.meshgrid(np.linspace(0, 1, 6), np.linspace(0, 1, 7)), -1)
        _sheet(b, f"iris{sname}", X, Y, OFF_IRIS, "瞳", uv=uv, skin=f"{sname}目")

        # upper eyelid: row 0 fixed above the eye, rows 1..4 skin, rows 4..5 lashes
        ul = np.linspace(-LID_WIDEN, LID_WIDEN, 17)
        T = _lash_thickness(ul)
        top = _eye_top(ul)

        def lid_rows(edge):
            """Row ys for a lash bottom at ``edge`` (rows: fixed top .. lash bottom)."""
            row0 = top + 0.16
            lash_top = edge + T
            k = np.linspace(0, 1, 5)[:, None]
            skin_rows = row0[None, :] + k * (lash_top - row0)[None, :]
            return np.concatenate([skin_rows, edge[None, :]])

        rest = lid_rows(top - 0.05)
        closed = lid_rows(_eye_bottom(ul) - 0.08 - T * 0.2)
        smile = lid_rows(_smile_arc(ul))
        xs = np.broadcast_to(ex(ul), rest.shape)
        rows = rest.shape[0]
        lid_pos = np.stack([xs, rest, face_z(xs, rest) - OFF_UPPER_LID], -1)
        faces = _grid_faces(rows, len(ul))
        inside = lid_pos.reshape(-1, 3) + np.array([0.0, 0.0, 1.0])
        ncell = len(ul) - 1
        # faces of the last row band are lashes; the rest eyelid skin
        band = np.concatenate([np.repeat(np.arange(rows - 1), ncell)] * 2)
        # normals from the closed pose (the rest pose is squeezed thin)
        closed_pos = np.stack([xs, closed, face_z(xs, closed) - OFF_UPPER_LID], -1).reshape(-1, 3)
        lid_uv = _face_uv(xs, np.full_like(rest, EYE_Y))  # plain skin (behind the eye)
        for mat, sel in (("まぶた", band < rows - 2), ("まつげ", band == rows - 2)):
            part_faces = faces[sel]
            used = np.unique(part_faces)
            remap = np.full(len(inside), -1)
            remap[used] = np.arange(len(used))
            gidx = b.add(f"{mat}{sname}", lid_pos.reshape(-1, 3)[used], lid_uv.reshape(-1, 2)[used],
                         remap[part_faces], inside[used], mat, "頭", normal_pos=closed_pos[used])
            for morph, target in ((f"close{sname}", closed), (f"smile{sname}", smile)):
                tgt = np.stack([xs, target, face_z(xs, target) - OFF_UPPER_LID], -1).reshape(-1, 3)
                b.morph(morph, gidx, tgt[used] - lid_pos.reshape(-1, 3)[used])

        # lower eyelid (only the smile morphs move it): row 0 fixed below the eye
        bot = _eye_bottom(ul)
        k = np.linspace(0, 1, 4)[:, None]
        row0 = bot - 0.12
        low_rest = row0[None, :] + k * ((bot - 0.06) - row0)[None, :]
        low_smile = row0[None, :] + k * ((_smile_arc(ul) + 0.03) - row0)[None, :]
        xs2 = np.broadcast_to(ex(ul), low_rest.shape)
        gidx, lpos = _sheet(b, f"lowerlid{sname}", xs2, low_rest, OFF_LOWER_LID, "まぶた",
                            uv=_face_uv(xs2, np.full_like(low_rest, EYE_Y)))
        tgt = np.stack([xs2, low_smile, face_z(xs2, low_smile) - OFF_LOWER_LID], -1).reshape(-1, 3)
        b.morph(f"smile{sname}", gidx, tgt - lpos)

        # eyebrow: a thin arched strip
        ub = np.linspace(-1, 1, 11)
        cx = xc + side * (ub * 0.44 + 0.03)
        cy = EYE_Y + 0.98 + 0.09 * (1 - ub**2) - 0.05 * ub
        th = 0.045 * (1 - 0.55 * ub**2) + 0.012
        ys = np.stack([cy - th, cy + th])
        _sheet(b, f"brow{sname}", np.broadcast_to(cx, ys.shape), ys, OFF_BROW, "眉")


def _add_mouth(b: _Builder):
    u = np.linspace(-1, 1, 11)
    x = u * MOUTH_HW
    top = MOUTH_Y + 0.035 * u**2
    k = np.linspace(0, 1, 5)[:, None]
    rest = top[None, :] - k * 0.05
    opened = top[None, :] - k * (0.05 + 0.36 * (1 - u**2) ** 0.6)[None, :]
    xs = np.broadcast_to(x, rest.shape)
    gidx, pos = _sheet(b, "mouth", xs, rest, OFF_MOUTH, "口")
    tgt = np.stack([xs, opened, face_z(xs, opened) - OFF_MOUTH], -1).reshape(-1, 3)
    b.morph("あ", gidx, tgt - pos)


def _add_hair(b: _Builder):
    # cap + long back hair: columns around, rows from the crown down to a
    # per-column end (a hairline above the forehead, long at the back)
    cols = 48
    phi = np.linspace(0.0, 2 * np.pi, cols + 1)
    a = np.degrees(np.abs(phi - np.pi))  # 0 front, 180 back
    ramp = np.clip((a - 48.0) / 32.0, 0.0, 1.0)
    ramp = ramp * ramp * (3 - 2 * ramp)
    back = 2.02 + 0.55 * np.clip((a - 80.0) / 100.0, 0.0, 1.0)
    zig = 0.09 * (np.arange(cols + 1) % 2) * (a > 75)
    tmax = 0.40 + ramp * (back - 0.40) + zig
    tmax[-1] = tmax[0]
    rows = 24
    t = tmax[None, :] * (np.linspace(0.0, 1.0, rows) ** 0.9)[:, None]
    P = _hair_point(phi[None, :], t, HAIR_GAP)
    uv = np.stack([np.broadcast_to(phi / (2 * np.pi), t.shape), t / _HAIR_UV_T], -1)
    inside = np.stack(np.broadcast_arrays(0.0, np.minimum(P[..., 1], HEAD_CY), HEAD_CZ), -1)
    b.add("hair cap", P.reshape(-1, 3), uv.reshape(-1, 2), _grid_faces(rows, cols + 1),
          inside.reshape(-1, 3), "髪", "頭")

    # fringe: a curved strip under the cap's front edge, alpha-textured bangs
    # (the bangs flare forward in the middle only; at the sides they stay under
    # the side hair)
    ncol, nrow = 29, 12
    a = np.linspace(-86.0, 86.0, ncol)
    tf = np.linspace(0.30, 1.10, nrow)
    middle = 1.0 - _smoothstep(35.0, 60.0, np.abs(a))
    flare = FRINGE_GAP + 0.14 * np.clip((tf[:, None] - 0.6) / 0.5, 0.0, None) ** 2 * middle[None, :]
    P = _hair_point(np.radians(a)[None, :] + np.pi, tf[:, None], flare)
    uv = np.stack(np.meshgrid(np.linspace(_FRINGE_U0, 1 - _FRINGE_U0, ncol),
                              np.linspace(_FRINGE_V0, _FRINGE_V1, nrow)), -1)
    inside = np.stack(np.broadcast_arrays(0.0, np.minimum(P[..., 1], HEAD_CY), HEAD_CZ), -1)
    b.add("fringe", P.reshape(-1, 3), uv.reshape(-1, 2), _grid_faces(nrow, ncol),
          inside.reshape(-1, 3), "前髪", "頭")

    # side locks framing the face
    for side, sname in ((1, "左"), (-1, "右")):
        path = _bezier((side * 1.4, 19.2, -0.8), (side * 2.0, 18.3, -1.1),
                       (side * 1.55, 16.6, -0.95), (side * 1.62, 14.9, -0.75), 14)
        s = np.linspace(0, 1, 14)
        hw = 0.30 * (1 - s**1.6) + 0.005 * (s < 1)
        hd = 0.12 * (1 - s**1.6) + 0.002 * (s < 1)
        hw[-1] = hd[-1] = 0.0
        pos, uv, faces, axis = _tube(path, hw, hd, 10)
        b.add(f"side lock{sname}", pos, uv * np.array([0.25, 0.7]) + np.array([0.1 * (side + 1), 0.2]),
              faces, axis, "髪", "頭")

    # ahoge: a lock curling up from the crown
    path = _bezier((0.05, 19.9, -0.1), (-0.05, 21.5, -0.3), (0.75, 21.85, -0.6), (1.0, 21.05, -0.8), 12)
    s = np.linspace(0, 1, 12)
    hw = 0.16 * (1 - s) ** 0.8
    hd = 0.06 * (1 - s) ** 0.8
    pos, uv, faces, axis = _tube(path, hw, hd, 8, ref=(0.0, 0.0, 1.0))
    b.add("ahoge", pos, uv * np.array([0.2, 0.3]) + np.array([0.0, 0.15]), faces, axis, "髪", "頭")


def _ring_tube(b, name, ys, half_w, half_d, cz, material, uv, skin, segments=24):
    """A vertical tube with elliptical rings; ``uv`` is a (u, v) pair or None
    for u around / v down."""
    ys = np.asarray(ys, np.float64)
    phi = np.linspace(0.0, 2 * np.pi, segments + 1)
    a = phi - np.pi
    P = np.stack(np.broadcast_arrays(
        np.asarray(half_w)[:, None] * np.sin(a)[None, :], ys[:, None],
        cz - np.asarray(half_d)[:, None] * np.cos(a)[None, :]), -1)
    if uv is None:
        v = (ys.max() - ys) / (ys.max() - ys.min())
        tex = np.stack(np.meshgrid(phi / (2 * np.pi), v), -1)
    else:
        tex = np.broadcast_to(np.asarray(uv, np.float64), P.shape[:2] + (2,))
    inside = np.stack(np.broadcast_arrays(0.0, ys[:, None], cz + 0 * phi[None, :]), -1)
    if callable(skin):
        skin = skin(np.broadcast_to(ys[:, None], P.shape[:2]).reshape(-1))
    return b.add(name, P.reshape(-1, 3), tex.reshape(-1, 2), _grid_faces(len(ys), segments + 1),
                 inside.reshape(-1, 3), material, skin)


def _add_body(b: _Builder):
    # neck: skinned 上半身/首 at the base, 首/頭 at the top
    def neck_skin(y):
        w_head = np.clip((y - 16.0) / 0.8, 0.0, 1.0)
        w_upper = np.clip((14.9 - y) / 0.6, 0.0, 1.0)
        b1 = np.where(w_head > 0, _B["頭"], _B["上半身"])
        w1 = np.where(w_head > 0, w_head, w_upper)
        return b1, np.full_like(b1, _B["首"]), w1

    ys = np.linspace(14.3, 16.9, 6)
    _ring_tube(b, "neck", ys, np.full(6, 0.36), np.full(6, 0.4), 0.32, "肌", _UV_SHADED_SKIN,
               neck_skin, 16)

    # shirt torso, closing in around the neck at the top
    prof_y = np.array([9.8, 11.0, 12.5, 13.6, 14.15, 14.5, 14.75])
    prof_w = np.array([1.05, 1.0, 1.3, 1.5, 1.3, 0.85, 0.5])
    prof_d = np.array([0.78, 0.74, 0.92, 0.86, 0.72, 0.6, 0.5])
    ys = np.linspace(9.8, 14.75, 14)
    _ring_tube(b, "torso", ys[::-1], np.interp(ys, prof_y, prof_w)[::-1],
               np.interp(ys, prof_y, prof_d)[::-1], 0.25, "服", None, "上半身", 24)

    # arm stubs (sleeves) with hands
    for side in (1, -1):
        path = np.linspace([side * 1.3, 13.9, 0.25], [side * 2.05, 10.9, 0.3], 4)
        r = np.linspace(0.36, 0.3, 4)
        pos, uv, faces, axis = _tube(path, r, r, 12)
        b.add(f"sleeve{side}", pos, np.broadcast_to(_UV_PLAIN_SHIRT, uv.shape), faces, axis, "服", "上半身")
        path = np.linspace([side * 2.06, 11.1, 0.3], [side * 2.25, 10.1, 0.32], 6)
        s = np.linspace(0, 1, 6)
        r = 0.25 * np.sqrt(np.clip(1 - (2 * s - 1) ** 2, 0.0, 1.0)) + 1e-9
        r[0] = r[-1] = 0.0
        pos, uv, faces, axis = _tube(path, r, r * 0.8, 8)
        b.add(f"hand{side}", pos, np.broadcast_to(_UV_PLAIN_SKIN, uv.shape), faces, axis, "肌", "上半身")

    # skirt and legs
    ys = np.linspace(10.5, 8.0, 4)
    _ring_tube(b, "skirt", ys, np.linspace(1.12, 1.95, 4), np.linspace(0.85, 1.6, 4), 0.25,
               "スカート", (0.5, 0.5), "下半身", 28)
    for side in (1, -1):
        path = np.linspace([side * 0.5, 9.4, 0.25], [side * 0.45, 0.6, 0.2], 5)
        path = np.concatenate([path, path[-1:]])  # flat end (inside the shoe)
        r = np.concatenate([np.linspace(0.42, 0.3, 5), [0.0]])
        pos, uv, faces, axis = _tube(path, r, r, 10)
        b.add(f"leg{side}", pos, np.broadcast_to(_UV_PLAIN_SKIN, uv.shape), faces, axis, "肌", "下半身")
        # shoe: a rounded capsule along -Z
        path = np.linspace([side * 0.45, 0.32, 0.45], [side * 0.45, 0.32, -0.95], 8)
        s = np.linspace(-1, 1, 8)
        r = np.sqrt(np.clip(1 - s**6, 0, 1))
        pos, uv, faces, axis = _tube(path, 0.36 * r, 0.32 * r, 10, ref=(0.0, 1.0, 0.0))
        b.add(f"shoe{side}", pos, np.broadcast_to((0.5, 0.5), uv.shape), faces, axis, "スカート", "下半身")


# ---------------------------------------------------------------------------
# Skeleton, morphs, frames
# ---------------------------------------------------------------------------


def _bones() -> list[Bone]:
    R, T, V, E = BoneFlag.ROTATABLE, BoneFlag.TRANSLATABLE, BoneFlag.VISIBLE, BoneFlag.ENABLED
    eye_z = float(face_z(EYE_X, EYE_Y)) + 0.75

    def bone(name, en, pos, parent, flags, tail=None, offset=(0.0, 0.0, 0.0), **kw):
        if tail is not None:
            flags |= BoneFlag.TAIL_IS_BONE
        return Bone(name=name, name_en=en, position=tuple(float(v) for v in pos), parent=parent,
                    flags=int(flags), tail_bone=_B[tail] if tail else -1,
                    tail_offset=tuple(float(v) for v in offset), **kw)

    eye_flags = R | V | E | BoneFlag.APPEND_ROTATION
    return [
        bone("センター", "center", (0, 8.0, 0.25), -1, R | T | V | E, offset=(0, -1.5, 0)),
        bone("上半身", "upper body", (0, 10.6, 0.25), _B["センター"], R | V | E, tail="首"),
        bone("首", "neck", (0, 14.55, 0.3), _B["上半身"], R | V | E, tail="頭"),
        bone("頭", "head", (0, 16.6, 0.2), _B["首"], R | V | E, offset=(0, 2.6, 0)),
        bone("両目", "eyes", (0, 20.6, -0.9), _B["頭"], R | V | E, offset=(0, 0, -1.0)),
        bone("左目", "eye_L", (EYE_X, EYE_Y, eye_z), _B["頭"], eye_flags, offset=(0, 0, -0.8),
             append_parent=_B["両目"], append_ratio=1.0),
        bone("右目", "eye_R", (-EYE_X, EYE_Y, eye_z), _B["頭"], eye_flags, offset=(0, 0, -0.8),
             append_parent=_B["両目"], append_ratio=1.0),
        bone("下半身", "lower body", (0, 10.6, 0.25), _B["センター"], R | V | E, offset=(0, -1.8, 0)),
    ]


# (name, name_en, panel, internal parts)
_MORPHS = [
    ("まばたき", "blink", MorphPanel.EYE, ("close左", "close右")),
    ("笑い", "blink happy", MorphPanel.EYE, ("smile左", "smile右")),
    ("ウィンク", "wink", MorphPanel.EYE, ("close左",)),
    ("ウィンク右", "wink R", MorphPanel.EYE, ("close右",)),
    ("ウィンク２", "wink 2", MorphPanel.EYE, ("smile左",)),
    ("ウィンク２右", "wink 2 R", MorphPanel.EYE, ("smile右",)),
    ("あ", "a", MorphPanel.MOUTH, ("あ",)),
]


def _morphs(b: _Builder) -> list[Morph]:
    out = []
    for name, en, panel, parts in _MORPHS:
        idx = np.concatenate([i for p in parts for i, _ in b.morphs[p]])
        off = np.concatenate([o for p in parts for _, o in b.morphs[p]])
        order = np.argsort(idx, kind="stable")
        out.append(Morph(name=name, name_en=en, panel=int(panel), kind=MorphKind.VERTEX,
                         indices=idx[order].astype(np.int32), offsets=off[order].astype(np.float32)))
    return out


def build_example_model() -> Model:
    """Build the example character (deterministic).

    Returns a PMX 2.0 :class:`Model` in MMD space (left-handed, +Y up, facing
    -Z, the character's left at +X, MMD units; about 20 units tall, head from
    Y 15.6 to 20.05). About 5,000 vertices and 8,400 triangles in 11 materials
    (skin, mouth, eye white, iris, eyelid, eyelash, eyebrow, shirt, skirt, hair,
    fringe); 8 bones; the 7 vertex morphs listed in the module docstring.
    Textures are referenced as ``tex/*.png`` (see :data:`EXAMPLE_TEXTURES`,
    pixels from :func:`build_example_textures`). ``model.path`` is None.
    """
    b = _Builder()
    _add_head(b)
    _add_mouth(b)
    _add_eyes(b)
    _add_body(b)
    _add_hair(b)

    pos = np.concatenate(b.pos).astype(np.float32)
    n = len(pos)
    faces = []
    materials = []
    for name, en, diffuse, tex, flags, edge in _MATERIALS:
        f = np.concatenate(b.faces[name]) if b.faces[name] else np.zeros((0, 3), np.int64)
        faces.append(f)
        all_flags = int(flags) | MaterialFlag.GROUND_SHADOW | MaterialFlag.SELF_SHADOW_MAP | MaterialFlag.SELF_SHADOW
        if edge:
            all_flags |= MaterialFlag.EDGE
        materials.append(Material(
            name=name, name_en=en, diffuse=diffuse,
            specular=(0.1, 0.1, 0.1), specular_power=10.0,
            ambient=tuple(round(0.6 * c, 4) for c in diffuse[:3]),
            flags=int(all_flags), edge_color=(0.25, 0.15, 0.12, 1.0), edge_size=0.6 if edge else 0.0,
            texture_index=_T[tex] if tex else -1, face_count=len(f)))

    model = Model(
        format="pmx",
        version=2.0,
        encoding="utf-16-le",
        name="サンプルちゃん",
        name_en="mmdsynth example",
        comment="mmdsynth の例のモデル。コードで生成 (CC0)。",
        comment_en="Example character generated in code by mmdsynth (CC0).",
        positions=pos,
        normals=np.concatenate(b.nrm).astype(np.float32),
        uvs=np.concatenate(b.uv).astype(np.float32),
        additional_uvs=np.zeros((n, 0, 4), np.float32),
        deform_types=np.concatenate(b.dtype).astype(np.uint8),
        bone_indices=np.concatenate(b.bidx).astype(np.int32),
        bone_weights=np.concatenate(b.bw).astype(np.float32),
        sdef_c=np.zeros((n, 3), np.float32),
        sdef_r0=np.zeros((n, 3), np.float32),
        sdef_r1=np.zeros((n, 3), np.float32),
        edge_scales=np.ones(n, np.float32),
        faces=np.concatenate(faces).astype(np.uint32),
        textures=list(EXAMPLE_TEXTURES),
        materials=materials,
        bones=_bones(),
        morphs=_morphs(b),
    )
    model.display_frames = [
        DisplayFrame("Root", "Root", True, [(0, _B["センター"])]),
        DisplayFrame("表情", "Exp", True, [(1, i) for i in range(len(model.morphs))]),
        DisplayFrame("体", "Body", False, [(0, _B[n]) for n in ("上半身", "下半身", "首", "頭")]),
        DisplayFrame("目", "Eyes", False, [(0, _B[n]) for n in ("両目", "左目", "右目")]),
    ]
    model.rigid_bodies = [
        RigidBody("頭", "head", _B["頭"], 0, 0, 0, (2.0, 0.0, 0.0), (0.0, HEAD_CY, HEAD_CZ)),
        RigidBody("上半身", "upper body", _B["上半身"], 0, 0, 2, (1.0, 2.4, 0.0), (0.0, 12.4, 0.25)),
    ]
    return model


# ---------------------------------------------------------------------------
# Textures
# ---------------------------------------------------------------------------


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _blend(img, color, alpha):
    """img (H,W,3) float; color RGB 0..255; alpha (H,W) in [0,1]."""
    a = np.asarray(alpha, np.float64)[..., None]
    return img * (1 - a) + np.asarray(color, np.float64) * a


def _rgba(rgb, alpha=None) -> np.ndarray:
    h, w = rgb.shape[:2]
    a = np.full((h, w), 255.0) if alpha is None else np.asarray(alpha) * 255.0
    return np.dstack([rgb, a]).round().clip(0, 255).astype(np.uint8)


def _texel_grid(h, w):
    """Texel-centre (u, v) arrays, v down (row 0 = v 0)."""
    return np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h)


def _face_texture() -> np.ndarray:
    h = w = 512
    u, v = _texel_grid(h, w)
    skin = np.array(SKIN) * 255
    img = np.broadcast_to(skin, (h, w, 3)).astype(np.float64)
    P = _head_point(u * 2 * np.pi, np.clip(v / _FACE_UV_V, 0, 1) * 2.0)
    x, y, z = P[..., 0], P[..., 1], P[..., 2]
    front = _smoothstep(-0.2, -0.8, z - HEAD_CZ)
    head = v < _FACE_UV_V
    # soft shadow under the hair line on the forehead and on the sides
    shade = _smoothstep(18.3, 19.2, y) * 0.55 + _smoothstep(1.2, 1.8, np.abs(x)) * 0.35
    img = _blend(img, (236, 190, 178), np.clip(shade, 0, 1) * head)
    # blush with three short slanted strokes
    for s in (1, -1):
        e = ((x - s * 1.1) / 0.36) ** 2 + ((y - BLUSH_Y) / 0.15) ** 2
        img = _blend(img, (255, 150, 160), 0.5 * np.clip(1 - e, 0, 1) ** 1.2 * front * head)
        for k in (-1, 0, 1):
            cx = s * 1.1 + 0.14 * k
            d = np.abs((x - cx) * 0.8 - (y - BLUSH_Y) * 0.6 * s)
            along = np.abs((x - cx) * 0.6 + (y - BLUSH_Y) * 0.8 * s)
            stroke = _smoothstep(0.022, 0.008, d) * _smoothstep(0.11, 0.07, along)
            img = _blend(img, (232, 110, 125), 0.8 * stroke * front * head)
    # nose: a tiny shade with a highlight
    e = ((x - 0.03) / 0.055) ** 2 + ((y - 16.7) / 0.04) ** 2
    img = _blend(img, (222, 160, 150), np.clip(1 - e, 0, 1) ** 0.7 * front * head)
    # palette strip: plain skin (left) and shaded neck skin (right)
    img[~head] = skin
    img[(~head) & (u > 0.5)] = (236, 196, 184)
    return _rgba(img)


def _eye_texture() -> np.ndarray:
    h = w = 128
    u, v = _texel_grid(h, w)
    nx, ny = u * 2 - 1, v * 2 - 1  # ny grows downward
    r = np.sqrt(nx**2 + ny**2)
    alpha = np.clip((1 - r) * 48, 0, 1)
    top, bottom = np.array([38, 52, 110]), np.array([80, 175, 205])
    g = np.clip((ny + 1) / 2, 0, 1)[..., None]
    img = top * (1 - g) + bottom * g
    img = _blend(img, (20, 24, 60), _smoothstep(0.78, 0.95, r))  # dark rim
    img = _blend(img, (140, 225, 235), 0.6 * _smoothstep(0.15, 0.6, ny) * _smoothstep(0.85, 0.5, r))
    pr = np.sqrt((nx / 0.36) ** 2 + ((ny - 0.04) / 0.46) ** 2)
    img = _blend(img, (16, 18, 40), _smoothstep(1.0, 0.85, pr))  # pupil
    for cx, cy, rx, ry in ((-0.36, -0.42, 0.24, 0.27), (0.38, 0.46, 0.1, 0.1)):
        e = np.sqrt(((nx - cx) / rx) ** 2 + ((ny - cy) / ry) ** 2)
        img = _blend(img, (255, 255, 255), _smoothstep(1.0, 0.75, e))
    return _rgba(img, alpha)


def _mouth_texture() -> np.ndarray:
    h = w = 64
    u, v = _texel_grid(h, w)
    img = np.broadcast_to(np.array([95, 22, 38.0]), (h, w, 3)).astype(np.float64)
    e = ((u - 0.5) / 0.33) ** 2 + ((v - 1.0) / 0.4) ** 2
    img = _blend(img, (226, 108, 120), _smoothstep(1.0, 0.8, e))
    return _rgba(img)


def _shirt_texture() -> np.ndarray:
    h = w = 256
    u, v = _texel_grid(h, w)
    img = np.broadcast_to(np.array([246, 246, 250.0]), (h, w, 3)).astype(np.float64)
    du = np.abs(u - 0.5)  # 0 at the front centre
    collar = (v < 0.16) | ((du < 0.09 - v * 0.25) & (v < 0.32))
    img = _blend(img, (40, 52, 105), collar.astype(float))
    stripe = (np.abs(v - 0.13) < 0.008) & (du > 0.06)
    img = _blend(img, (250, 250, 255), stripe.astype(float))
    bow = (np.abs(v - 0.2) < 0.03 + 0.5 * du) & (du < 0.06)
    knot = (du < 0.012) & (np.abs(v - 0.2) < 0.025)
    img = _blend(img, (210, 40, 60), bow.astype(float))
    img = _blend(img, (170, 25, 45), knot.astype(float))
    return _rgba(img)


def _hair_color_field(u, v, base):
    """Strand-striped hair colour; u periodic with period 1."""
    img = np.broadcast_to(np.asarray(base, np.float64), u.shape + (3,)).astype(np.float64)
    stripes = sum(np.sin(2 * np.pi * (k * u + 0.37 * k)) for k in (7, 11, 19, 29))
    img = _blend(img, (70, 38, 30), 0.3 * _smoothstep(0.8, 2.6, stripes))
    img = _blend(img, (205, 140, 105), 0.25 * _smoothstep(-0.8, -2.6, stripes))
    img = _blend(img, (70, 38, 30), 0.25 * _smoothstep(0.5, 1.0, v))
    return img


def _hair_texture() -> np.ndarray:
    h = w = 256
    u, v = _texel_grid(h, w)
    base = np.array(HAIR) * 255
    img = _hair_color_field(u, v, base)
    # angel ring highlight with a zigzag edge
    zig = 0.012 * np.abs(((u * 40) % 2) - 1)
    ring = _smoothstep(0.012, 0.0, np.abs(v - _HAIR_RING_T / _HAIR_UV_T - zig) - 0.012)
    img = _blend(img, (232, 190, 160), 0.75 * ring)
    return _rgba(img)


# (centre u, tip v, sideways curl) of each bang in the fringe texture
_BANGS = [
    (0.045, 1.00, -0.03), (0.13, 0.97, -0.04), (0.22, 0.96, -0.03), (0.31, 0.86, -0.02),
    (0.395, 0.8, -0.02), (0.47, 0.9, 0.0), (0.545, 0.78, 0.02), (0.625, 0.84, 0.02),
    (0.705, 0.93, 0.03), (0.79, 0.97, 0.03), (0.875, 0.97, 0.04), (0.955, 1.00, 0.03),
]


def _fringe_texture() -> np.ndarray:
    h = w = 256
    u, v = _texel_grid(h, w)
    mu = (u - _FRINGE_U0) / (1 - 2 * _FRINGE_U0)  # mesh parameters of each texel
    mv = (v - _FRINGE_V0) / (_FRINGE_V1 - _FRINGE_V0)
    solid_end = 0.38
    alpha = np.zeros((h, w))
    edge_dark = np.zeros((h, w))
    for cu, tip, curl in _BANGS:
        f = np.clip((mv - solid_end) / (tip - solid_end), 0, 1)
        centre = cu + curl * f**2
        half = 0.052 * np.clip(1 - f, 0, 1) ** 0.75
        d = np.abs(mu - centre) - half  # negative inside the lock
        a = np.clip(-d * w * 0.7, 0, 1) * (mv < tip)
        alpha = np.maximum(alpha, a)
        edge_dark = np.maximum(edge_dark, a * _smoothstep(-0.02, 0.0, d))
    alpha[mv < solid_end] = 1.0
    alpha[(mv < 0) | (mv > 1)] = 0.0  # transparent margins: no bleeding when wrapped
    base = np.array(HAIR) * 255
    img = _hair_color_field(u, mv * 0.6, base)
    img = _blend(img, (80, 44, 34), 0.45 * edge_dark)
    return _rgba(img, alpha)


def build_example_textures() -> dict[str, np.ndarray]:
    """The example's textures: {name as in ``Model.textures``: (H,W,4) uint8
    RGBA, row 0 at the top}. ``tex/fringe.png`` and ``tex/eye.png`` have real
    (partial and zero) alpha."""
    return {
        "tex/face.png": _face_texture(),
        "tex/eye.png": _eye_texture(),
        "tex/mouth.png": _mouth_texture(),
        "tex/shirt.png": _shirt_texture(),
        "tex/hair.png": _hair_texture(),
        "tex/fringe.png": _fringe_texture(),
    }


def write_example(outdir: str | os.PathLike) -> Path:
    """Write the example as ``outdir/example.pmx`` plus ``outdir/tex/*.png``.

    Creates ``outdir`` (and ``tex/``) as needed; each file is written to a
    temporary name in its folder and renamed into place. The bytes are the
    same on every call. Returns the path of the .pmx file."""
    from .pmx_write import save_pmx

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    for name, pixels in build_example_textures().items():
        target = outdir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG", optimize=False)
    path = outdir / "example.pmx"
    save_pmx(build_example_model(), path)
    return path
