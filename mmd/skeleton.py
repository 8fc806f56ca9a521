"""Forward kinematics over an MMD bone hierarchy (no IK, no physics).

:class:`Skeleton` precomputes, once per model, everything the bone pass needs
(hierarchy levels, MMD's evaluation order, the append (付与, "inherit") links)
and :meth:`Skeleton.solve` turns per-bone animated rotations/translations into
global transforms and skinning transforms (:class:`BonePose`).

Model of a bone (MMD / saba / babylon-mmd): every bone's rest orientation is
the identity, its rest head position is ``Bone.position`` (model space). Its
local transform is ``T(position - parent.position + t) * R(q)`` and its global
transform is ``parent.global * local``; the skinning transform is
``global * inverse(T(position))``.

Local rotation and translation offset of a bone, following babylon-mmd
(``src/Runtime/mmdRuntimeBone.ts`` ``updateWorldMatrix`` and
``src/Runtime/appendTransformSolver.ts`` ``update``, noname0310/babylon-mmd;
saba's ``PMXNode::UpdateAppendTransform`` in ``src/Saba/Model/MMD/PMXModel.cpp``
is the same but for the two differences noted below):

* animated rotation ``a = m * u`` (``u`` the user rotation, ``m`` the
  accumulated bone-morph rotation; babylon-mmd's
  ``morphRotationOffset.multiply(rotation)``), animated offset
  ``o = user translation + bone-morph translation``.
* APPEND_ROTATION with source bone ``s`` and ratio ``r``: the source rotation
  ``src`` is

  - APPEND_LOCAL set: the rotation part of ``s``'s current global transform;
  - else, when ``s`` itself has APPEND_ROTATION: ``s``'s final local rotation
    (its own animated rotation times its append result) if ``s`` was already
    evaluated in this pass, else the identity (the per-frame reset value in
    both references);
  - else ``s``'s animated rotation.

  The bone's rotation is ``a * slerp(identity, src, r)`` (the slerp is skipped
  when ``r == 1``; negative ``r`` extrapolates: the opposite rotation).
* APPEND_TRANSLATION likewise: ``src`` is ``s``'s current displacement
  (global head position minus rest position) when APPEND_LOCAL is set, else
  ``s``'s final offset (if ``s`` has APPEND_TRANSLATION: after evaluation,
  zero before), else ``s``'s animated offset; the bone's offset is
  ``o + r * src``.
* FIXED_AXIS and LOCAL_AXES only constrain user input in MMD's UI; they do not
  change forward kinematics and are ignored here. IK is not solved.

Differences from saba, where babylon-mmd is followed: saba's non-local chained
append takes only the source's append part (not its own animated rotation),
its APPEND_LOCAL takes the source's *local* animated rotation, its bone-morph
rotation is composed as ``u * m`` and its append translation ignores the
source's animated translation.

Evaluation order (:attr:`Skeleton.order`): bones sorted by (AFTER_PHYSICS flag,
deform layer, index), stable, as saba (``std::stable_sort`` by deform depth,
then the after-physics pass) and babylon-mmd (``transformOrder`` sort, before/
after physics stages). The order only decides what an append reads: a source
evaluated later contributes its not-yet-updated state, exactly as in MMD,
where a wrong deform layer makes an append lag. Global transforms are always
consistent with the final local transforms of all ancestors (saba's last
``UpdateGlobalTransform`` pass), whatever the layers; a parent index that is
out of range or closes a loop is treated as "no parent" (with a warning), as
saba does for looping hierarchies.

Exact rest pose: global transforms are carried as ``(R, d)`` where ``d`` is
the displacement of the bone head from its rest position, updated as
``d = d_parent + (R_parent - I) (position - parent.position) + R_parent t``; the
skinning transform is ``(R, d - (R - I) position)``. With nothing posed every
``R`` is exactly the identity and every ``d`` exactly zero, so the skinning
matrices are exactly the identity, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .model import BoneFlag, Model
from .quaternion import matrix_to_quat, quat_multiply, quat_to_matrix

__all__ = ["Skeleton", "BonePose"]

_I3 = np.eye(3)


@dataclass(eq=False)
class BonePose:
    """The result of forward kinematics for B bones (all float64, MMD space, MMD units).

    * ``local_rotations`` (B,4): final local rotation quaternions (x, y, z, w),
      append included, in the parent's frame.
    * ``local_translations`` (B,3): final local translation offsets from the
      rest offset (user + bone morph + append), in the parent's frame.
    * ``global_rotations`` (B,4) quaternions and ``rotation_matrices`` (B,3,3):
      each bone's global rotation (also the rotation of its skinning transform,
      since rest orientations are the identity).
    * ``displacements`` (B,3): global head position minus rest head position.
    * ``skin_translations`` (B,3): translation of the skinning transform
      ``global * inverse bind`` (``p -> R p + skin_translation``).
    * ``moved`` (B,) bool: the skinning transform is not exactly the identity.
    * ``rest_positions`` (B,3): the bones' rest head positions.
    """

    local_rotations: np.ndarray
    local_translations: np.ndarray
    rotation_matrices: np.ndarray
    displacements: np.ndarray
    skin_translations: np.ndarray
    moved: np.ndarray
    rest_positions: np.ndarray
    _global_rotations: np.ndarray | None = None

    @property
    def global_rotations(self) -> np.ndarray:
        """(B,4) float64 global rotation quaternions (x, y, z, w); exactly the
        identity for unrotated bones (computed from ``rotation_matrices`` on
        first use unless :meth:`Skeleton.solve` was asked for them)."""
        if self._global_rotations is None:
            q = np.tile(np.array([0.0, 0.0, 0.0, 1.0]), (len(self.rotation_matrices), 1))
            rotated = np.any(self.rotation_matrices != _I3, axis=(1, 2))
            if np.any(rotated):
                q[rotated] = matrix_to_quat(self.rotation_matrices[rotated])
            self._global_rotations = q
        return self._global_rotations

    @property
    def global_positions(self) -> np.ndarray:
        """(B,3) float64 global head positions, MMD units."""
        return self.rest_positions + self.displacements

    def bone_transforms(self) -> np.ndarray:
        """(B,4,4) float32 global transforms: map offsets from a bone's rest
        head position, in the bone's frame, to model space
        (``[R | rest position + displacement]``, column vectors)."""
        return _affine(self.rotation_matrices, self.rest_positions + self.displacements)

    def skinning_matrices(self) -> np.ndarray:
        """(B,4,4) float32 skinning matrices ``global * inverse bind``
        (``[R | skin_translation]``, column vectors); exactly the identity
        for a bone that did not move."""
        return _affine(self.rotation_matrices, self.skin_translations)


def _affine(rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    out = np.zeros((len(rot), 4, 4), np.float32)
    out[:, :3, :3] = rot
    out[:, :3, 3] = trans
    out[:, 3, 3] = 1.0
    return out


# Scalar quaternion helpers for the (short) append loop: plain floats are much
# faster than numpy for one quaternion at a time.
def _qmul(a, b):
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return (aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz)


def _qrot(q, v):
    x, y, z, w = q
    tx = 2.0 * (y * v[2] - z * v[1])
    ty = 2.0 * (z * v[0] - x * v[2])
    tz = 2.0 * (x * v[1] - y * v[0])
    return (v[0] + w * tx + (y * tz - z * ty),
            v[1] + w * ty + (z * tx - x * tz),
            v[2] + w * tz + (x * ty - y * tx))


_QI = (0.0, 0.0, 0.0, 1.0)


def _slerp_identity(q, t: float):
    """slerp(identity, q, t), shortest arc, as :func:`.quaternion.quat_slerp`."""
    x, y, z, w = q
    if w < 0.0:
        x, y, z, w = -x, -y, -z, -w
    if w > 1.0 - 1e-6:
        k0, k1 = 1.0 - t, t
    else:
        theta = math.acos(min(w, 1.0))
        s = math.sin(theta)
        k0 = math.sin((1.0 - t) * theta) / s
        k1 = math.sin(t * theta) / s
    rx, ry, rz, rw = k1 * x, k1 * y, k1 * z, k0 + k1 * w
    n = math.sqrt(rx * rx + ry * ry + rz * rz + rw * rw)
    return (rx / n, ry / n, rz / n, rw / n)


class Skeleton:
    """Per-model forward-kinematics data (built once, reused for every pose).

    Attributes:
      * ``count``: number of bones B.
      * ``parents`` (B,) int64: sanitised parent indices (-1: root).
      * ``rest_positions`` (B,3) float64 rest head positions, MMD units.
      * ``rest_offsets`` (B,3) float64: ``position - parent.position`` (root:
        ``position``), the rest local translation.
      * ``order`` (B,) int64: MMD's evaluation order (see the module docstring).
      * ``levels``: list of (k,) int64 arrays, bones grouped by hierarchy depth
        (parents always in an earlier level).
      * ``appends``: ``(bone, source, ratio, rotation?, translation?, local?)``
        tuples in evaluation order, for bones whose append source is valid.
      * ``warnings``: what was tolerated while building (bad parents, append
        sources out of range).
    """

    def __init__(self, model: Model):
        bones = model.bones
        n = len(bones)
        self.count = n
        self.warnings: list[str] = []
        self.names: dict[str, int] = {}
        for i, b in enumerate(bones):
            self.names.setdefault(b.name, i)
        pos = np.array([b.position for b in bones], np.float64).reshape(n, 3)
        self.rest_positions = pos

        parents = np.full(n, -1, np.int64)
        for i, b in enumerate(bones):
            p = int(b.parent)
            if 0 <= p < n:
                parents[i] = p
            elif p != -1:
                self.warnings.append(f"bone {i} {b.name!r}: parent {p} out of range; treated as a root")
        # Break parent loops: walk up from each bone; a bone that reaches itself loses its parent.
        state = np.zeros(n, np.int8)  # 0 unknown, 1 on the current path, 2 done
        for start in range(n):
            path = []
            i = start
            while i != -1 and state[i] == 0:
                state[i] = 1
                path.append(i)
                i = int(parents[i])
            if i != -1 and state[i] == 1:  # closed a loop at bone i
                self.warnings.append(f"bone {i} {bones[i].name!r}: parent chain loops; treated as a root")
                parents[i] = -1
            for j in path:
                state[j] = 2
        self.parents = parents

        offsets = pos.copy()
        has_parent = parents >= 0
        offsets[has_parent] = pos[has_parent] - pos[parents[has_parent]]
        self.rest_offsets = offsets

        depth = np.full(n, -1, np.int64)
        for start in range(n):
            chain = []
            i = start
            while i != -1 and depth[i] < 0:
                chain.append(i)
                i = int(parents[i])
            d = -1 if i == -1 else int(depth[i])
            for j in reversed(chain):
                d += 1
                depth[j] = d
        self.depth = depth
        self.levels = [np.flatnonzero(depth == d) for d in range(int(depth.max()) + 1)] if n else []
        self._level_parents = [parents[level] for level in self.levels]

        self.order = np.array(
            sorted(range(n), key=lambda i: (bool(bones[i].flags & BoneFlag.AFTER_PHYSICS), int(bones[i].layer), i)),
            np.int64,
        )
        self.append_rotation = np.zeros(n, bool)
        self.append_translation = np.zeros(n, bool)
        appends = []
        for i in self.order.tolist():
            b = bones[i]
            rot = bool(b.flags & BoneFlag.APPEND_ROTATION)
            trans = bool(b.flags & BoneFlag.APPEND_TRANSLATION)
            if not (rot or trans):
                continue
            src = int(b.append_parent)
            if not 0 <= src < n:
                if src != -1:
                    self.warnings.append(f"bone {i} {b.name!r}: append source {src} out of range; append ignored")
                continue
            self.append_rotation[i] = rot
            self.append_translation[i] = trans
            appends.append((i, src, float(b.append_ratio), rot, trans, bool(b.flags & BoneFlag.APPEND_LOCAL)))
        self.appends = appends
        involved: set[int] = set()
        for b, src, _, _, _, local in appends:
            involved.update((b, src))
            if local:
                involved.update(self._chain(src))
        self._append_involved = sorted(involved)

    # ------------------------------------------------------------------ lookup
    def bone_index(self, key) -> int:
        """Index of bone ``key`` (a name: the first bone with that name, or an index).

        Raises KeyError for an unknown name or an index outside [0, B).
        """
        if isinstance(key, (bool, np.bool_)):
            raise KeyError(f"bone key must be a name or an index, not {key!r}")
        if isinstance(key, (int, np.integer)):
            if 0 <= int(key) < self.count:
                return int(key)
            raise KeyError(f"bone index {int(key)} out of range (model has {self.count} bones)")
        if isinstance(key, str):
            try:
                return self.names[key]
            except KeyError:
                raise KeyError(f"no bone named {key!r} (model has {self.count} bones)") from None
        raise KeyError(f"bone key must be a name or an index, not {key!r}")

    # ------------------------------------------------------------------ solve
    def solve(
        self,
        rotations: np.ndarray | None = None,
        translations: np.ndarray | None = None,
        morph_rotations: np.ndarray | None = None,
        morph_translations: np.ndarray | None = None,
        quaternions: bool = False,
    ) -> BonePose:
        """Forward kinematics for one pose.

        Args:
            rotations: (B,4) unit quaternions (x, y, z, w), user local rotations
                in the parent's frame (None: all identity).
            translations: (B,3) user local translation offsets, MMD units (None: zero).
            morph_rotations: (B,4) accumulated bone-morph rotations (None: identity).
            morph_translations: (B,3) accumulated bone-morph translations (None: zero).
            quaternions: also carry global rotation quaternions through the
                hierarchy (products of the local ones); otherwise
                ``BonePose.global_rotations`` is derived from the matrices
                when first used.

        Returns a :class:`BonePose` (float64). Bones that end up with the
        identity local transform and an unmoved ancestry get exactly the
        identity skinning transform. Formulas and order: module docstring.
        """
        n = self.count
        q_user = np.tile(np.array([0.0, 0.0, 0.0, 1.0]), (n, 1)) if rotations is None else np.asarray(rotations, np.float64)
        t_anim = np.zeros((n, 3)) if translations is None else np.array(translations, np.float64)
        q_anim = q_user
        if morph_rotations is not None:
            mr = np.asarray(morph_rotations, np.float64)
            touched = np.flatnonzero(np.any(mr != np.array([0.0, 0.0, 0.0, 1.0]), axis=1))
            if touched.size:
                q_anim = q_user.copy()
                q_anim[touched] = quat_multiply(mr[touched], q_user[touched])
        if morph_translations is not None:
            t_anim = t_anim + np.asarray(morph_translations, np.float64)

        q_local, t_local = self._appends(q_anim, t_anim)

        ident = np.all(q_local == np.array([0.0, 0.0, 0.0, 1.0]), axis=1) & np.all(t_local == 0.0, axis=1)
        active = ~ident
        rot_local = np.broadcast_to(_I3, (n, 3, 3)).copy()
        if np.any(active):
            rot_local[active] = quat_to_matrix(q_local[active])

        q_glob = np.tile(np.array([0.0, 0.0, 0.0, 1.0]), (n, 1)) if quaternions else None
        r_glob = np.broadcast_to(_I3, (n, 3, 3)).copy()
        disp = np.zeros((n, 3))
        parents = self.parents
        offsets = self.rest_offsets
        for depth, level in enumerate(self.levels):
            if depth == 0:  # roots: the parent transform is the identity
                idx = level[active[level]]
                if quaternions:
                    q_glob[idx] = q_local[idx]
                r_glob[idx] = rot_local[idx]
                disp[idx] = t_local[idx]
                continue
            act = active[level] | active[self._level_parents[depth]]
            if not act.any():
                continue
            active[level] = act
            idx = level[act]
            p = parents[idx]
            rp = r_glob[p]
            r_glob[idx] = rp @ rot_local[idx]
            if quaternions:
                q_glob[idx] = quat_multiply(q_glob[p], q_local[idx])
            # d = d_parent + (R_parent - I) offset + R_parent t = d_parent + (R_parent (offset + t) - offset):
            # the bracket is exactly zero when R_parent is the identity and t is zero
            off = offsets[idx]
            disp[idx] = disp[p] + (np.einsum("nij,nj->ni", rp, off + t_local[idx]) - off)

        skin_t = disp - np.einsum("nij,nj->ni", r_glob - _I3, self.rest_positions)
        moved = np.any(r_glob != _I3, axis=(1, 2)) | np.any(skin_t != 0.0, axis=1)
        return BonePose(
            local_rotations=q_local,
            local_translations=t_local,
            rotation_matrices=r_glob,
            displacements=disp,
            skin_translations=skin_t,
            moved=moved,
            rest_positions=self.rest_positions,
            _global_rotations=q_glob,
        )

    def _appends(self, q_anim: np.ndarray, t_anim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply append (inherit) rotations/translations in evaluation order.

        Works on plain float tuples of the bones involved (append bones, their
        sources, and the ancestors of APPEND_LOCAL sources)."""
        if not self.appends:
            return q_anim, t_anim
        keys = self._append_involved
        qa = dict(zip(keys, map(tuple, q_anim[keys].tolist())))
        ta = dict(zip(keys, map(tuple, t_anim[keys].tolist())))
        qf = dict(qa)  # current local rotation (append included once evaluated)
        tf = dict(ta)
        done = set()
        changed = []
        for b, s, ratio, rot, trans, local in self.appends:
            if rot:
                if local:
                    src = self._global_rotation(s, qf)
                elif self.append_rotation[s]:
                    src = qf[s] if s in done else _QI
                else:
                    src = qa[s]
                if src != _QI:
                    app = src if ratio == 1.0 else _slerp_identity(src, ratio)
                    qf[b] = _qmul(qa[b], app)
                    changed.append(b)
            if trans:
                if local:
                    src_t = self._displacement(s, qf, tf)
                elif self.append_translation[s]:
                    src_t = tf[s] if s in done else (0.0, 0.0, 0.0)
                else:
                    src_t = ta[s]
                if src_t != (0.0, 0.0, 0.0):
                    own = ta[b]
                    tf[b] = (own[0] + ratio * src_t[0], own[1] + ratio * src_t[1], own[2] + ratio * src_t[2])
                    changed.append(b)
            done.add(b)
        if not changed:
            return q_anim, t_anim
        q_out = q_anim.copy()
        t_out = t_anim.copy()
        for b in set(changed):
            q_out[b] = qf[b]
            t_out[b] = tf[b]
        return q_out, t_out

    def _chain(self, bone: int) -> list[int]:
        chain = []
        i = bone
        while i != -1:
            chain.append(i)
            i = int(self.parents[i])
        chain.reverse()
        return chain

    def _global_rotation(self, bone: int, q_local: list) -> tuple:
        q = _QI
        for i in self._chain(bone):
            if q_local[i] != _QI:
                q = _qmul(q, q_local[i])
        return q

    def _displacement(self, bone: int, q_local: list, t_local: list) -> tuple:
        q = _QI
        d = (0.0, 0.0, 0.0)
        for i in self._chain(bone):
            off = self.rest_offsets[i]
            t = t_local[i]
            if self.parents[i] >= 0 and q != _QI:
                v = _qrot(q, (off[0] + t[0], off[1] + t[1], off[2] + t[2]))
                d = (d[0] + v[0] - off[0], d[1] + v[1] - off[1], d[2] + v[2] - off[2])
            else:
                d = (d[0] + t[0], d[1] + t[1], d[2] + t[2])
            if q_local[i] != _QI:
                q = _qmul(q, q_local[i])
        return d
