"""Morphs: vertex, UV, bone, material and group morphs (numpy only).

:class:`Morpher` precomputes, once per model, the data every pose needs (name
lookup, group-morph expansion with cycles cut, per-morph index/offset arrays)
and :meth:`Morpher.evaluate` applies a set of morph weights.

Semantics (saba ``PMXModel::Morph*`` in ``src/Saba/Model/MMD/PMXModel.cpp``,
benikabocha/saba, and babylon-mmd ``src/Runtime/mmdMorphControllerBase.ts`` /
``mmdMorphController.ts``, noname0310/babylon-mmd):

* A name in a pose sets every morph with that name (MMD's behaviour, as
  babylon-mmd's ``setMorphWeight`` documents); an index sets that morph.
* Group morphs expand recursively: a member's weight is the group weight times
  the member ratio, multiplied along nested groups (saba recurses; babylon-mmd
  stops at one level). A member that closes a cycle (found by a depth-first
  search over group morphs in index order, saba's "Infinit Group Morph" check)
  is skipped; the cut is reported once per evaluation, as a warning, when a
  group that reaches it is used.
* All weights reaching the same leaf morph add up; each leaf morph is then
  applied once, in morph index order, with its total weight.
* Vertex morphs: ``position += offset * weight`` (weights add up).
* UV morphs: ``uv += offset.xy * weight``; additional UV morph k (UV1..UV4):
  ``additional_uvs[:, k-1] += offset * weight`` (all four components).
* Bone morphs: translation ``t += offset * weight``; rotation
  ``r = slerp(r, q, weight)`` starting from the identity (saba ``MorphBone``,
  babylon-mmd ``_applyBoneMorph``), so one morph gives slerp(identity, q, w).
* Material morphs (saba ``MaterialFactor::Mul``/``Add`` and
  ``EndMorphMaterial``): per material, a multiplicative factor starting at 1
  is multiplied by ``lerp(1, m, w)`` per multiply entry (op 0), an additive
  term starting at 0 gets ``m * w`` per add entry (op 1); then
  ``value = base * factor + term`` for diffuse RGBA, specular, specular power,
  ambient, edge colour RGBA and edge size. Target -1 means every material.
  The texture, sphere and toon tints have no base value: the factor and term
  are returned as ``tint_mul``/``tint_add`` (M,3,4) (identity: 1 and 0) for
  the renderer. babylon-mmd's MMD shader combines them with a texture colour
  ``c`` as ``c' = mix(1, c * mul.rgb, mul.a)`` then
  ``c'' = clamp(c' + (c' - 1) * add.a, 0, 1) + add.rgb`` on the RGB channels
  (its ``textureMultiplicativeColor``/``textureAdditiveColor``, the same for
  the sphere map; the texture alpha is left alone); with the identity tints
  that leaves ``c`` unchanged.
* Flip and impulse morphs (PMX 2.1) are unsupported: used with a non-zero
  weight they add a warning ("... morphs are unsupported; ignored") and are
  ignored.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np

from .model import Material, Model, MorphKind
from .quaternion import quat_slerp

__all__ = ["Morpher", "MorphResult", "TINT_TEXTURE", "TINT_SPHERE", "TINT_TOON"]

TINT_TEXTURE, TINT_SPHERE, TINT_TOON = 0, 1, 2
"""Rows of ``tint_mul``/``tint_add``: texture, sphere map, toon texture."""

_UV_SLOT = {MorphKind.UV: -1, MorphKind.UV1: 0, MorphKind.UV2: 1, MorphKind.UV3: 2, MorphKind.UV4: 3}


@dataclass(eq=False)
class MorphResult:
    """Morphs applied to a model's rest data (before skinning).

    * ``positions`` (N,3) float32: rest positions plus vertex morph offsets,
      MMD units (the morphed rest pose; skin these on a GPU).
    * ``uvs`` (N,2) float32, ``additional_uvs`` (N,A,4) float32 after UV morphs.
    * ``materials``: copies of the model's materials with material morphs applied.
    * ``tint_mul``, ``tint_add`` (M,3,4) float32: texture / sphere / toon tint
      factor and term per material (rows :data:`TINT_TEXTURE`,
      :data:`TINT_SPHERE`, :data:`TINT_TOON`; identity 1 and 0).
    * ``bone_translations`` (B,3) and ``bone_rotations`` (B,4) float64: the
      accumulated bone-morph translation and rotation (x, y, z, w) per bone.
    * ``weights`` (K,) float64: total weight per morph after group expansion
      (groups themselves are 0).
    * ``warnings``: what was tolerated (unsupported morphs, cycles, bad targets).
    * ``bone_morphs_used``: a bone morph with a non-zero weight was applied.
    * ``materials_touched`` (M,) bool: materials a material morph with a
      non-zero weight applied to (their colours or tints may differ from the
      model's); None is read as "none".
    """

    positions: np.ndarray
    uvs: np.ndarray
    additional_uvs: np.ndarray
    materials: list[Material]
    tint_mul: np.ndarray
    tint_add: np.ndarray
    bone_translations: np.ndarray
    bone_rotations: np.ndarray
    weights: np.ndarray
    warnings: list[str] = field(default_factory=list)
    bone_morphs_used: bool = False
    materials_touched: np.ndarray | None = None


_MAT_FIELDS = (
    ("diffuse", 4),
    ("specular", 3),
    ("specular_power", 1),
    ("ambient", 3),
    ("edge_color", 4),
    ("edge_size", 1),
)
_MAT_WIDTH = sum(w for _, w in _MAT_FIELDS)  # 16


def _material_vector(m: Material) -> list[float]:
    out: list[float] = []
    for name, width in _MAT_FIELDS:
        v = getattr(m, name)
        out.extend([float(v)] if width == 1 else [float(x) for x in v])
    return out


class Morpher:
    """Per-model morph data (built once, reused for every pose).

    Attributes: ``count`` (number of morphs K), ``names`` (name -> list of
    indices), ``kinds`` (K,) int, ``expansion`` (group index -> (leaves (L,)
    int64, factors (L,) float64)), ``warnings`` (problems found while
    building: targets out of range, group cycles).
    """

    def __init__(self, model: Model):
        self.model = model
        morphs = model.morphs
        self.count = len(morphs)
        self.warnings: list[str] = []
        self.names: dict[str, list[int]] = {}
        for i, m in enumerate(morphs):
            self.names.setdefault(m.name, []).append(i)
        self.kinds = np.array([int(m.kind) for m in morphs], np.int64)
        nv = model.vertex_count
        nb = len(model.bones)
        nm = len(model.materials)
        self.vertex: dict[int, tuple[np.ndarray, np.ndarray, bool]] = {}
        self.uv: dict[int, tuple[int, np.ndarray, np.ndarray, bool]] = {}
        self.bone: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.material: dict[int, list[tuple[int, int, np.ndarray, np.ndarray]]] = {}
        members: dict[int, list[tuple[int, float]]] = {}

        for i, m in enumerate(morphs):
            kind = int(m.kind)
            idx = np.asarray(m.indices, np.int64).reshape(-1)
            label = f"morph {i} {m.name!r}"
            if kind == MorphKind.VERTEX:
                off = np.asarray(m.offsets, np.float64).reshape(-1, 3)
                idx, off = self._valid(idx, off, nv, label, "vertex")
                self.vertex[i] = (idx, off, len(np.unique(idx)) == len(idx))
            elif kind in _UV_SLOT:
                off = np.asarray(m.offsets, np.float64).reshape(-1, 4)
                idx, off = self._valid(idx, off, nv, label, "vertex")
                self.uv[i] = (_UV_SLOT[kind], idx, off, len(np.unique(idx)) == len(idx))
            elif kind == MorphKind.BONE:
                off = np.asarray(m.offsets, np.float64).reshape(-1, 3)
                rot = np.asarray(m.rotations, np.float64).reshape(-1, 4)
                keep = (idx >= 0) & (idx < nb)
                if not np.all(keep):
                    self.warnings.append(f"{label}: {int((~keep).sum())} bone targets out of range; skipped")
                idx, off, rot = idx[keep], off[keep], rot[keep]
                norm = np.linalg.norm(rot, axis=1)
                bad = ~(np.isfinite(norm) & (norm > 0))
                if np.any(bad):
                    self.warnings.append(f"{label}: {int(bad.sum())} zero or invalid rotations; identity used")
                    rot[bad] = (0.0, 0.0, 0.0, 1.0)
                    norm[bad] = 1.0
                self.bone[i] = (idx, off, rot / norm[:, None])
            elif kind == MorphKind.MATERIAL:
                entries = []
                data = m.material
                if data is None:
                    data = np.zeros(0)
                for k in range(len(idx)):
                    target = int(idx[k])
                    if not (target == -1 or 0 <= target < nm):
                        self.warnings.append(f"{label}: material {target} out of range; entry skipped")
                        continue
                    e = data[k]
                    op = int(e["op"])
                    if op not in (0, 1):
                        self.warnings.append(f"{label}: unknown material operation {op}; entry skipped")
                        continue
                    vec = np.concatenate([np.atleast_1d(np.asarray(e[name], np.float64)) for name, _ in _MAT_FIELDS])
                    tints = np.stack([np.asarray(e[name], np.float64) for name in ("texture_tint", "sphere_tint", "toon_tint")])
                    entries.append((target, op, vec, tints))
                self.material[i] = entries
            elif kind == MorphKind.GROUP:
                w = np.asarray(m.weights, np.float64).reshape(-1)
                lst = []
                for c, f in zip(idx.tolist(), w.tolist()):
                    if 0 <= c < self.count:
                        lst.append((c, f))
                    else:
                        self.warnings.append(f"{label}: member morph {c} out of range; skipped")
                members[i] = lst

        self.expansion, self._group_cuts = self._expand_groups(members)

        self.base_materials = np.array([_material_vector(m) for m in model.materials], np.float64).reshape(nm, _MAT_WIDTH)

    def _valid(self, idx, off, limit, label, what):
        keep = (idx >= 0) & (idx < limit)
        if not np.all(keep):
            self.warnings.append(f"{label}: {int((~keep).sum())} {what} indices out of range; skipped")
            idx, off = idx[keep], off[keep]
        return idx, off

    def _expand_groups(self, members: dict[int, list[tuple[int, float]]]):
        """Cut cycle-closing members (depth-first, index order), then flatten each
        group into (leaves, factors) with factors multiplied along the paths."""
        morphs = self.model.morphs
        color: dict[int, int] = {}  # 1 on the stack, 2 done
        cut: set[tuple[int, int]] = set()
        cut_msgs: dict[tuple[int, int], str] = {}
        for root in sorted(members):
            if root in color:
                continue
            stack = [(root, 0)]
            color[root] = 1
            while stack:
                g, k = stack[-1]
                lst = members[g]
                if k >= len(lst):
                    color[g] = 2
                    stack.pop()
                    continue
                stack[-1] = (g, k + 1)
                c = lst[k][0]
                if c not in members:
                    continue
                state = color.get(c, 0)
                if state == 1:
                    cut.add((g, k))
                    cut_msgs[(g, k)] = (
                        f"group morph cycle: {g} {morphs[g].name!r} -> {c} {morphs[c].name!r} closes a loop; "
                        "that member is skipped"
                    )
                elif state == 0:
                    color[c] = 1
                    stack.append((c, 0))
        # Flatten in post-order (the graph is now acyclic).
        flat: dict[int, dict[int, float]] = {}
        cuts_of: dict[int, list[str]] = {}

        def visit(g: int) -> None:
            order = [(g, False)]
            while order:
                h, expanded = order.pop()
                if h in flat:
                    continue
                if not expanded:
                    order.append((h, True))
                    for k, (c, _) in enumerate(members[h]):
                        if c in members and (h, k) not in cut and c not in flat:
                            order.append((c, False))
                    continue
                acc: dict[int, float] = {}
                msgs: dict[str, None] = {}
                for k, (c, f) in enumerate(members[h]):
                    if (h, k) in cut:
                        msgs[cut_msgs[(h, k)]] = None
                        continue
                    if c in members:
                        for leaf, f2 in flat[c].items():
                            acc[leaf] = acc.get(leaf, 0.0) + f * f2
                        msgs.update(dict.fromkeys(cuts_of[c]))
                    else:
                        acc[c] = acc.get(c, 0.0) + f
                flat[h] = acc
                cuts_of[h] = list(msgs)

        for g in sorted(members):
            visit(g)
        expansion = {
            g: (np.array(list(d.keys()), np.int64), np.array(list(d.values()), np.float64)) for g, d in flat.items()
        }
        return expansion, cuts_of

    # ------------------------------------------------------------------ weights
    def resolve(self, morphs: dict) -> np.ndarray:
        """Direct weights (K,) float64 from a pose's ``{name or index: weight}``.

        A name sets every morph with that name; weights given twice for the
        same morph (by name and index) add up. Raises KeyError for an unknown
        name or an index outside [0, K), ValueError for a non-finite weight.
        """
        w = np.zeros(self.count)
        for key, value in morphs.items():
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"morph {key!r}: weight must be finite, got {value}")
            if isinstance(key, (bool, np.bool_)):
                raise KeyError(f"morph key must be a name or an index, not {key!r}")
            if isinstance(key, (int, np.integer)):
                if not 0 <= int(key) < self.count:
                    raise KeyError(f"morph index {int(key)} out of range (model has {self.count} morphs)")
                w[int(key)] += value
            elif isinstance(key, str):
                if key not in self.names:
                    raise KeyError(f"no morph named {key!r} (model has {self.count} morphs)")
                for i in self.names[key]:
                    w[i] += value
            else:
                raise KeyError(f"morph key must be a name or an index, not {key!r}")
        return w

    def expand(self, direct: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Leaf weights (K,) float64 from direct weights: groups expanded
        (their own entry becomes 0), plus the cycle warnings of the groups used."""
        leaf = direct.copy()
        warnings: dict[str, None] = {}
        for g in np.flatnonzero((direct != 0.0) & (self.kinds == MorphKind.GROUP)).tolist():
            wg = leaf[g]
            leaf[g] = 0.0
            members, factors = self.expansion[g]
            if members.size:
                np.add.at(leaf, members, wg * factors)
            warnings.update(dict.fromkeys(self._group_cuts[g]))
        return leaf, list(warnings)

    # ------------------------------------------------------------------ apply
    def evaluate(self, direct: np.ndarray) -> MorphResult:
        """Apply direct morph weights (K,) (see :meth:`resolve`) to the model.

        Returns a :class:`MorphResult`; arrays are new (the model is not
        modified). With all weights zero every array equals the model's bit
        for bit and the materials are plain copies.
        """
        model = self.model
        leaf, cycle_warnings = self.expand(direct)
        warnings = list(dict.fromkeys(self.warnings))
        warnings += cycle_warnings
        active = np.flatnonzero(leaf != 0.0).tolist()

        positions = model.positions
        uvs = model.uvs
        add_uvs = model.additional_uvs
        nb = len(model.bones)
        nm = len(model.materials)
        bone_t = np.zeros((nb, 3))
        bone_q = np.tile(np.array([0.0, 0.0, 0.0, 1.0]), (nb, 1))
        mat_mul = np.ones((nm, _MAT_WIDTH))
        mat_add = np.zeros((nm, _MAT_WIDTH))
        tint_mul = np.ones((nm, 3, 4))
        tint_add = np.zeros((nm, 3, 4))
        pos_delta = None
        uv_delta = None
        auv_delta = None
        bones_used = False
        mats_touched = np.zeros(nm, bool)
        for i in active:
            w = float(leaf[i])
            kind = int(self.kinds[i])
            if i in self.vertex:
                idx, off, unique = self.vertex[i]
                if pos_delta is None:
                    pos_delta = np.zeros(positions.shape, np.float64)
                if unique:
                    pos_delta[idx] += w * off
                else:
                    np.add.at(pos_delta, idx, w * off)
            elif i in self.uv:
                slot, idx, off, unique = self.uv[i]
                if slot < 0:
                    if uv_delta is None:
                        uv_delta = np.zeros(uvs.shape, np.float64)
                    target, val = uv_delta, w * off[:, :2]
                else:
                    if slot >= add_uvs.shape[1]:
                        warnings.append(
                            f"morph {i} {model.morphs[i].name!r}: additional UV {slot + 1} morph but the model "
                            f"has {add_uvs.shape[1]} additional UVs; ignored"
                        )
                        continue
                    if auv_delta is None:
                        auv_delta = np.zeros(add_uvs.shape, np.float64)
                    target, val = auv_delta[:, slot], w * off
                if unique:
                    target[idx] += val
                else:
                    np.add.at(target, idx, val)
            elif i in self.bone:
                idx, off, rot = self.bone[i]
                bones_used = True
                np.add.at(bone_t, idx, w * off)
                for b, q in zip(idx.tolist(), rot):
                    bone_q[b] = quat_slerp(bone_q[b], q, w)
            elif i in self.material:
                for target, op, vec, tints in self.material[i]:
                    rows = slice(None) if target == -1 else slice(target, target + 1)
                    if op == 0:
                        mat_mul[rows] *= 1.0 + (vec - 1.0) * w
                        tint_mul[rows] *= 1.0 + (tints - 1.0) * w
                    else:
                        mat_add[rows] += vec * w
                        tint_add[rows] += tints * w
                    mats_touched[rows] = True
            elif kind in (MorphKind.FLIP, MorphKind.IMPULSE):
                warnings.append(
                    f"morph {i} {model.morphs[i].name!r}: {MorphKind(kind).label} morphs are unsupported; ignored"
                )

        out_pos = positions.copy() if pos_delta is None else (positions.astype(np.float64) + pos_delta).astype(np.float32)
        out_uv = uvs.copy() if uv_delta is None else (uvs.astype(np.float64) + uv_delta).astype(np.float32)
        out_auv = add_uvs.copy() if auv_delta is None else (add_uvs.astype(np.float64) + auv_delta).astype(np.float32)

        materials = [copy.copy(m) for m in model.materials]
        if np.any(mats_touched):
            values = self.base_materials * mat_mul + mat_add
            for j in np.flatnonzero(mats_touched).tolist():
                v = values[j].tolist()
                m = materials[j]
                k = 0
                for name, width in _MAT_FIELDS:
                    setattr(m, name, v[k] if width == 1 else tuple(v[k:k + width]))
                    k += width
        return MorphResult(
            positions=out_pos,
            uvs=out_uv,
            additional_uvs=out_auv,
            materials=materials,
            tint_mul=tint_mul.astype(np.float32),
            tint_add=tint_add.astype(np.float32),
            bone_translations=bone_t,
            bone_rotations=bone_q,
            weights=leaf,
            warnings=list(dict.fromkeys(warnings)),
            bone_morphs_used=bones_used,
            materials_touched=mats_touched,
        )
