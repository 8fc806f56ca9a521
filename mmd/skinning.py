"""Vertex skinning: BDEF1/2/4 (linear blend), SDEF and QDEF (numpy only).

:class:`Skinner` precomputes, once per model, the per-vertex influence data;
:meth:`Skinner.skin` deforms (morphed) rest positions and normals with the
skinning transforms of a :class:`~.skeleton.BonePose`.

Formulas (column vectors; ``M_b p = R_b p + s_b`` is bone b's skinning
transform, ``q_b`` its global rotation quaternion):

* BDEF1/BDEF2/BDEF4 (linear blend skinning, saba ``PMXModel::Update``
  ``Weight1/2/4``): ``p' = sum_i w_i M_i p``, ``n' = normalize(sum_i w_i R_i n)``.
  The weights are used as stored when they add up to 1 (BDEF1 is [1], BDEF2
  [w, 1-w]); BDEF4 weights that do not (saba would shrink such a vertex
  toward the origin, even at rest) are divided by their sum, and a vertex
  whose weights are all zero does not move.
* SDEF (saba ``PMXModel::Update`` case ``SDEF``, after mmd_tools' ``sdef.py``;
  babylon-mmd's ``sdefVertex`` shader is the same): with bones 0/1, weights
  ``w0``, ``w1 = 1 - w0``, centre ``C``, ``rw = w0 R0 + w1 R1``,
  ``cr0 = (C + (C + R0 - rw)) / 2``, ``cr1 = (C + (C + R1 - rw)) / 2``
  (the load-time correction in saba ``PMXModel::Load``):
  ``p' = Rs (p - C) + w0 M0 cr0 + w1 M1 cr1`` and ``n' = Rs n`` with
  ``Rs = R(slerp(q0, q1, w1))``.
* QDEF (dual quaternion linear blending, Kavan et al. 2007 "Skinning with dual
  quaternions"; saba ``PMXModel::Update`` case ``DualQuaternion``): each
  ``M_b`` becomes a unit dual quaternion ``(q_b, 0.5 (s_b, 0) q_b)``; weights
  of bones whose real part has a negative dot product with bone 0's are
  negated; the weighted sum is divided by the norm of its real part and
  applied to the position; the normal is rotated by the real part.

Everything is computed in float64 as offsets from the input (``p' = p + sum_i
w_i ((R_i - I) p + s_i)``, which equals the blend above since the weights add
up to 1), and only for vertices influenced by a bone whose skinning transform
is not exactly the identity: every other vertex keeps its input position and
normal bit for bit, so the rest pose is reproduced exactly.
"""

from __future__ import annotations

import numpy as np

from .model import DeformType, Model
from .quaternion import quat_multiply, quat_rotate, quat_slerp, quat_to_matrix
from .skeleton import BonePose

__all__ = ["Skinner"]

_I3 = np.eye(3)


def _normalize_rows(v: np.ndarray) -> np.ndarray:
    n = np.sqrt(np.einsum("ij,ij->i", v, v))
    return v / np.where(n > 0.0, n, 1.0)[:, None]


class Skinner:
    """Per-model skinning data.

    Attributes (V = vertex count):
      * ``pair_vertex``, ``pair_bone`` (P,) int64 and ``pair_weight`` (P,)
        float64: the non-zero influences of the linear-blend vertices
        (BDEF1/2/4, and any vertex of an unknown deform type).
      * ``sdef_vertex`` (S,) and the SDEF data ``sdef_bones`` (S,2),
        ``sdef_w0`` (S,), ``sdef_c``, ``sdef_cr0``, ``sdef_cr1`` (S,3) float64.
      * ``qdef_vertex`` (Q,), ``qdef_bones`` (Q,4) (-1 unused), ``qdef_weights`` (Q,4).
      * ``needs_quaternions``: the model has SDEF or QDEF vertices (they need
        the bones' global rotation quaternions).
      * ``warnings``: what was tolerated (weights renormalised, bad indices).

    Pairs are sorted by vertex, at most 4 per vertex. SDEF vertices whose two
    bones are not both valid are skinned as a linear blend.
    """

    def __init__(self, model: Model):
        nv = model.vertex_count
        nb = len(model.bones)
        self.vertex_count = nv
        self.warnings: list[str] = []
        types = np.asarray(model.deform_types).reshape(nv)
        idx = np.asarray(model.bone_indices, np.int64).reshape(nv, 4)
        w = np.asarray(model.bone_weights, np.float64).reshape(nv, 4)
        bad = (idx >= nb) | (idx < -1)
        if np.any(bad & (w != 0.0)):
            self.warnings.append(f"{int(np.any(bad & (w != 0.0), axis=1).sum())} vertices have bone indices "
                                 "out of range; those influences are ignored")
        valid = (idx >= 0) & (idx < nb)
        w = np.where(valid, w, 0.0)

        sdef = types == DeformType.SDEF
        sdef &= valid[:, 0] & valid[:, 1]  # otherwise handled as a linear blend
        qdef = types == DeformType.QDEF
        lbs = ~(sdef | qdef)

        # Linear blend: BDEF1 uses slot 0 only, BDEF2 slots 0-1 (as stored).
        wl = w.copy()
        wl[types == DeformType.BDEF1, 1:] = 0.0
        wl[types == DeformType.BDEF2, 2:] = 0.0
        wl[(types == DeformType.SDEF) & lbs, 2:] = 0.0
        total = wl.sum(axis=1)
        fix = lbs & (total != 0.0) & (np.abs(total - 1.0) > 1e-5)
        if np.any(fix):
            self.warnings.append(f"{int(fix.sum())} vertices have bone weights that do not add up to 1; normalised")
            wl[fix] /= total[fix, None]
        use = lbs[:, None] & (wl != 0.0)
        v_of = np.broadcast_to(np.arange(nv)[:, None], (nv, 4))
        self.pair_vertex = v_of[use]
        self.pair_bone = idx[use]
        self.pair_weight = wl[use]

        self.sdef_vertex = np.flatnonzero(sdef)
        s = self.sdef_vertex
        self.sdef_bones = idx[s, :2]
        w0 = w[s, 0]
        w1 = 1.0 - w0
        self.sdef_w0 = w0
        c = np.asarray(model.sdef_c, np.float64).reshape(nv, 3)[s]
        r0 = np.asarray(model.sdef_r0, np.float64).reshape(nv, 3)[s]
        r1 = np.asarray(model.sdef_r1, np.float64).reshape(nv, 3)[s]
        rw = r0 * w0[:, None] + r1 * w1[:, None]
        self.sdef_c = c
        self.sdef_cr0 = (c + (c + r0 - rw)) * 0.5
        self.sdef_cr1 = (c + (c + r1 - rw)) * 0.5

        self.qdef_vertex = np.flatnonzero(qdef)
        q = self.qdef_vertex
        self.qdef_bones = np.where(valid[q], idx[q], -1)
        self.qdef_weights = np.where(valid[q], w[q], 0.0)
        self.needs_quaternions = bool(self.sdef_vertex.size or self.qdef_vertex.size)

    def affected(self, moved: np.ndarray) -> np.ndarray:
        """(V,) bool: vertices with a non-zero influence from a bone in ``moved`` (B,) bool."""
        out = np.zeros(self.vertex_count, bool)
        out[self.pair_vertex[moved[self.pair_bone]]] = True
        if self.sdef_vertex.size:
            out[self.sdef_vertex[np.any(moved[self.sdef_bones], axis=1)]] = True
        if self.qdef_vertex.size:
            qb = self.qdef_bones
            hit = np.any(moved[np.maximum(qb, 0)] & (qb >= 0) & (self.qdef_weights != 0.0), axis=1)
            out[self.qdef_vertex[hit]] = True
        return out

    def skin(self, positions: np.ndarray, normals: np.ndarray, bones: BonePose) -> tuple[np.ndarray, np.ndarray]:
        """Deform positions and normals.

        Args:
            positions: (V,3) float32 (morphed) rest positions, MMD units.
            normals: (V,3) float32 rest normals.
            bones: the pose's :class:`~.skeleton.BonePose`.

        Returns ``(positions, normals)``, new (V,3) float32 arrays. Vertices not
        influenced by a moved bone are copied unchanged; the others get
        unit-length normals (a zero normal stays zero).
        """
        out_p = np.array(positions, np.float32, copy=True)
        out_n = np.array(normals, np.float32, copy=True)
        moved = bones.moved
        if not np.any(moved):
            return out_p, out_n
        a = bones.rotation_matrices - _I3  # exactly zero for unrotated bones
        s = bones.skin_translations
        nv = self.vertex_count

        sel = np.flatnonzero(moved[self.pair_bone])
        if sel.size:
            # Columns layout: (k, m) arrays keep numpy's inner loops contiguous.
            v = self.pair_vertex.take(sel)
            b = self.pair_bone.take(sel)
            w = self.pair_weight.take(sel)
            table = np.empty((12, len(a)))
            table[:9] = a.reshape(-1, 9).T
            table[9:] = s.T
            g = table.take(b, axis=1)  # (12, m): rows of R - I, then s
            cols = np.empty((6, nv))
            cols[:3] = positions.T
            cols[3:] = normals.T
            x = cols.take(v, axis=1)  # (6, m): p, n
            y = np.empty_like(x)
            px, py, pz, nx, ny, nz = x
            for r in range(3):
                g0, g1, g2 = g[3 * r], g[3 * r + 1], g[3 * r + 2]
                y[r] = g0 * px + g1 * py + g2 * pz + g[9 + r]
                y[3 + r] = g0 * nx + g1 * ny + g2 * nz
            y *= w
            # pairs are sorted by vertex: number each vertex's run and sum it
            first = np.empty(v.size, bool)
            first[0] = True
            np.not_equal(v[1:], v[:-1], out=first[1:])
            seg = np.cumsum(first) - 1
            verts = v[first]
            res = cols.take(verts, axis=1)
            for r in range(6):
                res[r] += np.bincount(seg, y[r], verts.size)
            length = np.sqrt(res[3] * res[3] + res[4] * res[4] + res[5] * res[5])
            length[length == 0.0] = 1.0
            for k in range(3):
                out_p[verts, k] = res[k]
                out_n[verts, k] = res[3 + k] / length

        if self.sdef_vertex.size:
            hit = np.any(moved[self.sdef_bones], axis=1)
            if np.any(hit):
                verts = self.sdef_vertex[hit]
                b0, b1 = self.sdef_bones[hit, 0], self.sdef_bones[hit, 1]
                w0 = self.sdef_w0[hit][:, None]
                w1 = 1.0 - w0
                c = self.sdef_c[hit]
                cr0, cr1 = self.sdef_cr0[hit], self.sdef_cr1[hit]
                q = quat_slerp(bones.global_rotations[b0], bones.global_rotations[b1], w1[:, 0])
                rs = quat_to_matrix(q) - _I3
                p = positions[verts].astype(np.float64)
                n = normals[verts].astype(np.float64)
                dp = (np.einsum("mij,mj->mi", rs, p - c)
                      + w0 * (np.einsum("mij,mj->mi", a[b0], cr0) + s[b0])
                      + w1 * (np.einsum("mij,mj->mi", a[b1], cr1) + s[b1]))
                out_p[verts] = p + dp
                out_n[verts] = _normalize_rows(n + np.einsum("mij,mj->mi", rs, n))

        if self.qdef_vertex.size:
            qb = self.qdef_bones
            qw = self.qdef_weights
            hit = np.any(moved[np.maximum(qb, 0)] & (qb >= 0) & (qw != 0.0), axis=1)
            if np.any(hit):
                verts = self.qdef_vertex[hit]
                bi = qb[hit]
                wi = qw[hit].copy()
                safe = np.maximum(bi, 0)
                real = bones.global_rotations[safe]  # (m,4,4)
                tq = np.concatenate([s[safe], np.zeros(safe.shape + (1,))], axis=-1)
                dual = 0.5 * quat_multiply(tq, real)
                dots = np.sum(real * real[:, :1], axis=-1)
                wi = np.where(dots < 0.0, -wi, wi)
                br = np.einsum("mk,mkj->mj", wi, real)
                bd = np.einsum("mk,mkj->mj", wi, dual)
                norm = np.linalg.norm(br, axis=1, keepdims=True)
                norm = np.where(norm > 0.0, norm, 1.0)
                br /= norm
                bd /= norm
                # translation t = 2 * dual * conj(real) (vector part)
                conj = br * np.array([-1.0, -1.0, -1.0, 1.0])
                t = 2.0 * quat_multiply(bd, conj)[:, :3]
                p = positions[verts].astype(np.float64)
                n = normals[verts].astype(np.float64)
                out_p[verts] = quat_rotate(br, p) + t
                out_n[verts] = _normalize_rows(quat_rotate(br, n))
        return out_p, out_n
