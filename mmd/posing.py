"""Posing a model: morphs, forward kinematics and skinning, on the CPU.

This module is the single source of truth for the posing maths; any GPU path
must reproduce :func:`pose_model` (the tests compare them).

A :class:`Pose` names morph weights and local bone transforms; :func:`pose_model`
returns a :class:`PosedMesh` in MMD space.

Pipeline (:class:`Poser`, built once per model, reused for every pose):

1. morphs (:mod:`.morphing`): group expansion, vertex/UV/bone/material morphs
   -> morphed rest positions, UVs, materials, bone-morph offsets;
2. forward kinematics (:mod:`.skeleton`): user rotations/translations plus
   bone morphs, append (inherit) transforms in MMD's evaluation order ->
   global and skinning transforms;
3. skinning (:mod:`.skinning`): BDEF1/2/4, SDEF, QDEF on the morphed rest
   positions and the normals.

A GPU renderer can instead take :meth:`Poser.morph` (morphed rest positions)
and :meth:`Poser.skinning_matrices` and skin in a vertex shader; the CPU
result here stays the reference.

Rest pose: an empty :class:`Pose` gives positions, normals, UVs equal to the
model's bit for bit and skinning matrices exactly the identity.

Sources: saba (benikabocha/saba ``src/Saba/Model/MMD/PMXModel.cpp``,
``MMDNode.cpp``) and babylon-mmd (noname0310/babylon-mmd
``src/Runtime/mmdRuntimeBone.ts``, ``appendTransformSolver.ts``,
``mmdMorphControllerBase.ts``, ``mmdMorphController.ts``, the ``sdefVertex``
shader); see each module's docstring for which formula comes from where.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import numpy as np

from .model import Material, Model
from .morphing import Morpher, MorphResult
from .skeleton import BonePose, Skeleton
from .skinning import Skinner

__all__ = ["Pose", "PosedMesh", "Poser", "pose_model", "clear_pose_cache"]


@dataclass
class Pose:
    """What to apply to a model.

    * ``morphs``: morph name or index -> weight (usually in [0,1]); group
      morphs expand recursively into their members. A name sets every morph
      with that name.
    * ``rotations``: bone name or index -> local rotation quaternion
      (x, y, z, w), in the bone's parent frame, MMD space.
    * ``translations``: bone name or index -> local translation (3,), MMD units.

    An empty Pose is the rest pose.
    """

    morphs: dict[str | int, float] = field(default_factory=dict)
    rotations: dict[str | int, tuple[float, float, float, float] | np.ndarray] = field(default_factory=dict)
    translations: dict[str | int, tuple[float, float, float] | np.ndarray] = field(default_factory=dict)


@dataclass(eq=False)
class PosedMesh:
    """A posed model, ready to draw.

    * ``positions`` (N,3) float32, MMD units, MMD space.
    * ``normals`` (N,3) float32, unit length.
    * ``uvs`` (N,2) float32 after UV morphs; ``additional_uvs`` (N,A,4) float32.
    * ``materials``: the model's materials after material morphs (copies).
    * ``bone_transforms`` (B,4,4) float32: each bone's global transform
      (rest position folded in, i.e. maps bone-local offsets from the bone's
      rest position to model space); ``skinning`` (B,4,4) float32: global
      transform times inverse bind (identity at rest).
    * ``warnings``: what was tolerated (unsupported flip/impulse morphs, cycles).
    * ``material_tint_mul``, ``material_tint_add`` (M,3,4) float32 or None:
      the material-morph texture / sphere / toon tints per material (rows 0, 1,
      2; RGBA), multiplicative factor (identity 1) and additive term
      (identity 0). None means the identity. How a renderer applies them to a
      texture colour ``c`` (babylon-mmd's MMD shader, RGB only): ``c' = mix(1,
      c * mul.rgb, mul.a)``, then ``c'' = clamp(c' + (c' - 1) * add.a, 0, 1) +
      add.rgb``.
    """

    positions: np.ndarray
    normals: np.ndarray
    uvs: np.ndarray
    additional_uvs: np.ndarray
    materials: list[Material]
    bone_transforms: np.ndarray
    skinning: np.ndarray
    warnings: list[str] = field(default_factory=list)
    material_tint_mul: np.ndarray | None = None
    material_tint_add: np.ndarray | None = None


class Poser:
    """Posing for one model: precomputes everything once, then poses fast.

    ``Poser(model)`` builds the bone hierarchy and evaluation order
    (:class:`~.skeleton.Skeleton`), the morph tables with group expansion
    (:class:`~.morphing.Morpher`) and the per-vertex skinning data
    (:class:`~.skinning.Skinner`). The model's arrays are read again at every
    call (in-place edits of positions, normals or UVs are seen); changes to
    bones, morphs, weights or deform types need a new Poser.

    Raises nothing for malformed hierarchies: bad parents, out-of-range targets
    and group cycles are tolerated and reported in ``warnings``.
    """

    def __init__(self, model: Model):
        self.model = model
        self.skeleton = Skeleton(model)
        self.morpher = Morpher(model)
        self.skinner = Skinner(model)
        self.warnings: list[str] = list(dict.fromkeys(self.skeleton.warnings + self.skinner.warnings))

    # ------------------------------------------------------------------ inputs
    def _bone_inputs(self, pose: Pose) -> tuple[np.ndarray | None, np.ndarray | None]:
        """User rotations (B,4) and translations (B,3) float64, or None when absent.

        Raises KeyError (unknown bone) or ValueError (bad value shape, zero or
        non-finite quaternion, non-finite translation).
        """
        sk = self.skeleton
        rot = None
        if pose.rotations:
            rot = np.tile(np.array([0.0, 0.0, 0.0, 1.0]), (sk.count, 1))
            for key, value in pose.rotations.items():
                i = sk.bone_index(key)
                q = np.asarray(value, np.float64)
                if q.shape != (4,):
                    raise ValueError(f"rotation of bone {key!r}: expected a quaternion (x, y, z, w), got shape {q.shape}")
                norm = math.sqrt(float(q @ q))
                if not math.isfinite(norm) or norm == 0.0:
                    raise ValueError(f"rotation of bone {key!r}: quaternion must be finite and non-zero, got {q.tolist()}")
                rot[i] = q if norm == 1.0 else q / norm
        trans = None
        if pose.translations:
            trans = np.zeros((sk.count, 3))
            for key, value in pose.translations.items():
                i = sk.bone_index(key)
                t = np.asarray(value, np.float64)
                if t.shape != (3,):
                    raise ValueError(f"translation of bone {key!r}: expected (x, y, z), got shape {t.shape}")
                if not np.all(np.isfinite(t)):
                    raise ValueError(f"translation of bone {key!r}: must be finite, got {t.tolist()}")
                trans[i] += t
        return rot, trans

    # ------------------------------------------------------------------ stages
    def morph(self, pose: Pose | None = None) -> MorphResult:
        """Apply only the pose's morphs (step 1).

        Returns a :class:`~.morphing.MorphResult`: morphed rest ``positions``
        (N,3) float32 (rest positions plus vertex morph deltas, before
        skinning: the GPU path's input), ``uvs``, ``additional_uvs``,
        ``materials``, tints, and the bone-morph offsets that
        :meth:`bones` feeds to forward kinematics.

        Raises KeyError for an unknown morph name or index, ValueError for a
        non-finite weight.
        """
        pose = pose or Pose()
        direct = self.morpher.resolve(pose.morphs)
        return self.morpher.evaluate(direct)

    def bones(self, pose: Pose | None = None, morphed: MorphResult | None = None) -> BonePose:
        """Forward kinematics for ``pose`` (step 2): a :class:`~.skeleton.BonePose`.

        ``morphed``: the result of :meth:`morph` for the same pose (computed
        when None), whose bone-morph offsets join the user transforms.
        Raises KeyError for unknown bones or morphs, ValueError for bad values.
        """
        pose = pose or Pose()
        if morphed is None:
            morphed = self.morph(pose)
        rot, trans = self._bone_inputs(pose)
        quats = self.skinner.needs_quaternions
        if morphed.bone_morphs_used:
            return self.skeleton.solve(rot, trans, morphed.bone_rotations, morphed.bone_translations, quaternions=quats)
        return self.skeleton.solve(rot, trans, quaternions=quats)

    def skeleton_at_rest(self, pose: Pose | None = None, morphed: MorphResult | None = None) -> bool:
        """True when ``pose`` moves no bone: every rotation is the identity
        (x = y = z = 0), every translation zero, and no bone morph is active
        (``morphed``: :meth:`morph` of the same pose, computed when None).
        Forward kinematics then gives the rest pose and every skinning matrix
        is exactly the identity (IK is not solved, physics not simulated), so
        the skinned mesh is the morphed rest mesh. Raises KeyError for an
        unknown bone or morph."""
        pose = pose or Pose()
        if morphed is None:
            morphed = self.morph(pose)
        if morphed.bone_morphs_used:
            return False
        for key in (*pose.rotations, *pose.translations):
            self.skeleton.bone_index(key)  # unknown bones raise KeyError, as in bones()
        for value in pose.rotations.values():
            q = np.asarray(value, np.float64)
            if q.shape != (4,) or q[0] != 0.0 or q[1] != 0.0 or q[2] != 0.0 or not q[3] > 0.0:
                return False
        return all(np.shape(t) == (3,) and not np.any(np.asarray(t, np.float64)) for t in pose.translations.values())

    def skinning_matrices(self, pose: Pose | None = None, morphed: MorphResult | None = None) -> np.ndarray:
        """(B,4,4) float32 skinning matrices (global transform times inverse
        bind, column vectors: ``p' = M[:3,:3] p + M[:3,3]``) for ``pose``;
        exactly the identity for bones that do not move. Together with
        ``morph(pose).positions`` this is what a vertex shader needs.
        Raises as :meth:`bones`."""
        return self.bones(pose, morphed).skinning_matrices()

    def pose(self, pose: Pose | None = None) -> PosedMesh:
        """Apply ``pose`` (None: the rest pose) and return a :class:`PosedMesh`.

        Arrays are new (the model is not modified). Raises KeyError for an
        unknown morph or bone (name or index), ValueError for a non-finite
        weight, a zero/non-finite quaternion or a badly shaped value.
        """
        pose = pose or Pose()
        morphed = self.morph(pose)
        bones = self.bones(pose, morphed)
        positions, normals = self.skinner.skin(morphed.positions, self.model.normals, bones)
        return PosedMesh(
            positions=positions,
            normals=normals,
            uvs=morphed.uvs,
            additional_uvs=morphed.additional_uvs,
            materials=morphed.materials,
            bone_transforms=bones.bone_transforms(),
            skinning=bones.skinning_matrices(),
            warnings=list(dict.fromkeys(self.warnings + morphed.warnings)),
            material_tint_mul=morphed.tint_mul,
            material_tint_add=morphed.tint_add,
        )


_CACHE: "weakref.WeakKeyDictionary[Model, tuple[tuple, Poser]]" = weakref.WeakKeyDictionary()


def _signature(model: Model) -> tuple:
    """Cheap identity check of what a Poser precomputes from (see :func:`pose_model`)."""
    arrays = (model.positions, model.normals, model.uvs, model.additional_uvs, model.deform_types,
              model.bone_indices, model.bone_weights, model.sdef_c, model.sdef_r0, model.sdef_r1)
    return (
        tuple((id(a), a.shape) for a in arrays),
        id(model.bones), tuple(map(id, model.bones)),
        id(model.morphs), tuple(map(id, model.morphs)),
        id(model.materials), len(model.materials),
    )


def clear_pose_cache() -> None:
    """Forget the Posers that :func:`pose_model` cached."""
    _CACHE.clear()


def pose_model(model: Model, pose: Pose | None = None) -> PosedMesh:
    """Apply ``pose`` (None: rest pose) to ``model``; see the module docstring.

    A thin wrapper over :meth:`Poser.pose` that keeps one :class:`Poser` per
    model object (weakly, so models are still freed). The cached Poser is
    rebuilt when the model's arrays, bone/morph/material lists or their
    elements are replaced; after editing a bone, morph or weight *in place*,
    call :func:`clear_pose_cache` or use ``Poser(model)`` directly.

    Raises KeyError for an unknown morph or bone name/index, ValueError for a
    non-finite weight or a zero/non-finite quaternion.
    """
    sig = _signature(model)
    entry = _CACHE.get(model)
    if entry is None or entry[0] != sig:
        entry = (sig, Poser(model))
        _CACHE[model] = entry
    return entry[1].pose(pose)
