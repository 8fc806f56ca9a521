"""The in-memory MMD model: one representation for PMX and PMD.

Vertex data are numpy arrays; everything else is plain dataclasses. All
coordinates are in MMD space (left-handed, +Y up, the model faces -Z, the
character's left is +X), lengths in MMD units, angles in radians.

Field meanings follow the PMX 2.0/2.1 specification (Kaitai Struct
``mmd_pmx.ksy`` and the English PMX 2.0 translation); PMD data are converted
into the same fields by :mod:`mmdsynth.mmd.pmd` (see its docstring for the
mapping).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DeformType(enum.IntEnum):
    """Vertex skinning type (PMX ``weight deform type`` byte)."""

    BDEF1 = 0
    BDEF2 = 1
    BDEF4 = 2
    SDEF = 3
    QDEF = 4  # PMX 2.1


class MorphKind(enum.IntEnum):
    """PMX morph type byte."""

    GROUP = 0
    VERTEX = 1
    BONE = 2
    UV = 3
    UV1 = 4  # additional UV 1..4
    UV2 = 5
    UV3 = 6
    UV4 = 7
    MATERIAL = 8
    FLIP = 9  # PMX 2.1
    IMPULSE = 10  # PMX 2.1

    @property
    def label(self) -> str:
        """Lower-case name used by ``mmdsynth info`` ("vertex", "uv1", ...)."""
        return self.name.lower()


class MorphPanel(enum.IntEnum):
    """Where MMD's facial panel shows a morph (0 is PMD's hidden base morph)."""

    SYSTEM = 0
    EYEBROW = 1
    EYE = 2
    MOUTH = 3
    OTHER = 4


class MaterialFlag(enum.IntFlag):
    """PMX material drawing flags."""

    DOUBLE_SIDED = 0x01  # no back-face culling
    GROUND_SHADOW = 0x02
    SELF_SHADOW_MAP = 0x04  # casts onto the self-shadow map
    SELF_SHADOW = 0x08  # receives self shadow
    EDGE = 0x10
    VERTEX_COLOR = 0x20  # 2.1: additional UV 1 is a vertex colour
    POINT_DRAW = 0x40  # 2.1
    LINE_DRAW = 0x80  # 2.1


class BoneFlag(enum.IntFlag):
    """PMX bone flags (u16)."""

    TAIL_IS_BONE = 0x0001  # tail given as a bone index, else as an offset
    ROTATABLE = 0x0002
    TRANSLATABLE = 0x0004
    VISIBLE = 0x0008
    ENABLED = 0x0010  # operable by the user
    IK = 0x0020
    APPEND_LOCAL = 0x0080  # append from the parent's local transform
    APPEND_ROTATION = 0x0100
    APPEND_TRANSLATION = 0x0200
    FIXED_AXIS = 0x0400
    LOCAL_AXES = 0x0800
    AFTER_PHYSICS = 0x1000
    EXTERNAL_PARENT = 0x2000


class SphereMode(enum.IntEnum):
    """How a material's sphere map combines with the colour."""

    OFF = 0
    MULTIPLY = 1  # .sph
    ADD = 2  # .spa
    SUBTEXTURE = 3  # additional UV 1 samples the sphere texture


# Material morph entry (PMX): operation and the 28 floats it applies.
MATERIAL_MORPH_DTYPE = np.dtype(
    [
        ("op", "u1"),  # 0 multiply, 1 add
        ("diffuse", "<f4", 4),
        ("specular", "<f4", 3),
        ("specular_power", "<f4"),
        ("ambient", "<f4", 3),
        ("edge_color", "<f4", 4),
        ("edge_size", "<f4"),
        ("texture_tint", "<f4", 4),
        ("sphere_tint", "<f4", 4),
        ("toon_tint", "<f4", 4),
    ]
)

# Impulse morph entry (PMX 2.1): applied to rigid bodies.
IMPULSE_MORPH_DTYPE = np.dtype(
    [
        ("local", "u1"),
        ("velocity", "<f4", 3),
        ("torque", "<f4", 3),
    ]
)


@dataclass(eq=False)
class Material:
    """One material: a contiguous run of ``face_count`` faces, drawn in file order.

    Colours are linear floats as stored (diffuse RGBA, specular/ambient RGB).
    ``texture_index``/``sphere_index`` index ``Model.textures`` (-1: none).
    ``toon_shared`` True means ``toon_index`` is MMD's shared toon 0..9
    (toon01.bmp..toon10.bmp); False means it indexes ``Model.textures`` (-1: none).
    """

    name: str = ""
    name_en: str = ""
    diffuse: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    specular: tuple[float, float, float] = (0.0, 0.0, 0.0)
    specular_power: float = 5.0
    ambient: tuple[float, float, float] = (0.5, 0.5, 0.5)
    flags: int = 0  # MaterialFlag bits
    edge_color: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    edge_size: float = 1.0
    texture_index: int = -1
    sphere_index: int = -1
    sphere_mode: int = SphereMode.OFF
    toon_shared: bool = False
    toon_index: int = -1
    memo: str = ""
    face_count: int = 0  # triangles (the file stores 3x this as an index count)

    @property
    def double_sided(self) -> bool:
        """True when back faces must not be culled."""
        return bool(self.flags & MaterialFlag.DOUBLE_SIDED)


@dataclass(eq=False)
class IKLink:
    """One link of an IK chain; limits are Euler angles in radians (min, max), or None."""

    bone: int
    limit_min: tuple[float, float, float] | None = None
    limit_max: tuple[float, float, float] | None = None


@dataclass(eq=False)
class IK:
    """IK data of an IK bone: the target bone it drags, loop count, per-iteration
    angle limit (radians) and the chain links (from the target's parent upward)."""

    target: int
    loop_count: int = 40
    limit_angle: float = 2.0
    links: list[IKLink] = field(default_factory=list)


@dataclass(eq=False)
class Bone:
    """A bone; ``flags`` holds the raw PMX bits (see :class:`BoneFlag`).

    ``position`` is the rest-pose head position in model space. The tail is
    ``tail_bone`` when ``TAIL_IS_BONE`` is set, else ``tail_offset``.
    ``append_parent``/``append_ratio`` are the append (inherit) source and ratio,
    used when ``APPEND_ROTATION`` or ``APPEND_TRANSLATION`` is set.
    """

    name: str = ""
    name_en: str = ""
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    parent: int = -1
    layer: int = 0  # deform layer (transform order class)
    flags: int = BoneFlag.ROTATABLE | BoneFlag.VISIBLE | BoneFlag.ENABLED
    tail_bone: int = -1
    tail_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    append_parent: int = -1
    append_ratio: float = 0.0
    fixed_axis: tuple[float, float, float] | None = None
    local_x: tuple[float, float, float] | None = None
    local_z: tuple[float, float, float] | None = None
    external_key: int | None = None
    ik: IK | None = None

    def has(self, flag: BoneFlag) -> bool:
        """True when ``flag`` is set in ``flags``."""
        return bool(self.flags & flag)

    @property
    def rotatable(self) -> bool:
        return self.has(BoneFlag.ROTATABLE)

    @property
    def translatable(self) -> bool:
        return self.has(BoneFlag.TRANSLATABLE)

    @property
    def visible(self) -> bool:
        return self.has(BoneFlag.VISIBLE)

    @property
    def enabled(self) -> bool:
        return self.has(BoneFlag.ENABLED)

    @property
    def after_physics(self) -> bool:
        return self.has(BoneFlag.AFTER_PHYSICS)

    @property
    def append_rotation(self) -> bool:
        return self.has(BoneFlag.APPEND_ROTATION)

    @property
    def append_translation(self) -> bool:
        return self.has(BoneFlag.APPEND_TRANSLATION)

    @property
    def append_local(self) -> bool:
        return self.has(BoneFlag.APPEND_LOCAL)


@dataclass(eq=False)
class Morph:
    """A morph. ``indices`` (K,) int32 are the targets, whose kind depends on
    ``kind``: vertices (VERTEX, UV*), bones (BONE), morphs (GROUP, FLIP),
    materials (MATERIAL, -1 = every material) or rigid bodies (IMPULSE).

    Per-kind data (the other fields are None):
      * VERTEX: ``offsets`` (K,3) float32 position deltas, MMD units.
      * UV, UV1..UV4: ``offsets`` (K,4) float32 deltas (UV uses x, y).
      * BONE: ``offsets`` (K,3) float32 translations, ``rotations`` (K,4)
        float32 quaternions (x, y, z, w).
      * GROUP, FLIP: ``weights`` (K,) float32.
      * MATERIAL: ``material`` (K,) structured array of MATERIAL_MORPH_DTYPE.
      * IMPULSE: ``impulse`` (K,) structured array of IMPULSE_MORPH_DTYPE.
    """

    name: str = ""
    name_en: str = ""
    panel: int = MorphPanel.OTHER
    kind: MorphKind = MorphKind.VERTEX
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    offsets: np.ndarray | None = None
    rotations: np.ndarray | None = None
    weights: np.ndarray | None = None
    material: np.ndarray | None = None
    impulse: np.ndarray | None = None

    def __len__(self) -> int:
        return int(len(self.indices))


@dataclass(eq=False)
class DisplayFrame:
    """A display frame (bone/morph list in MMD's UI). Items are (target, index)
    with target 0 = bone, 1 = morph. ``special`` marks Root and 表情."""

    name: str = ""
    name_en: str = ""
    special: bool = False
    items: list[tuple[int, int]] = field(default_factory=list)


@dataclass(eq=False)
class RigidBody:
    """A physics rigid body. ``shape``: 0 sphere, 1 box, 2 capsule; ``size`` in
    MMD units; ``rotation`` Euler radians; ``mode``: 0 follows its bone,
    1 physics, 2 physics with the bone's position."""

    name: str = ""
    name_en: str = ""
    bone: int = -1
    group: int = 0
    no_collision_mask: int = 0
    shape: int = 0
    size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    mass: float = 1.0
    linear_damping: float = 0.5
    angular_damping: float = 0.5
    restitution: float = 0.0
    friction: float = 0.5
    mode: int = 0


@dataclass(eq=False)
class Joint:
    """A physics joint between rigid bodies ``rigid_a`` and ``rigid_b``.
    ``kind``: 0 spring 6DOF (2.1 adds 1 6DOF, 2 point-to-point, 3 cone twist,
    4 slider, 5 hinge). Rotations and rotation limits in radians."""

    name: str = ""
    name_en: str = ""
    kind: int = 0
    rigid_a: int = -1
    rigid_b: int = -1
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    position_min: tuple[float, float, float] = (0.0, 0.0, 0.0)
    position_max: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation_min: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation_max: tuple[float, float, float] = (0.0, 0.0, 0.0)
    spring_position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    spring_rotation: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(eq=False)
class SoftBody:
    """A PMX 2.1 soft body (Bullet btSoftBody parameters, stored as read).

    ``config``: 12 floats VCF, DP, DG, LF, PR, VC, DF, MT, CHR, KHR, SHR, AHR.
    ``cluster``: 6 floats SRHR_CL, SKHR_CL, SSHR_CL, SR_SPLT_CL, SK_SPLT_CL, SS_SPLT_CL.
    ``iterations``: 4 ints V_IT, P_IT, D_IT, C_IT. ``material_params``: LST, AST, VST.
    ``anchors``: (rigid body, vertex, near mode) triples; ``pins``: vertex indices.
    """

    name: str = ""
    name_en: str = ""
    shape: int = 0  # 0 triangle mesh, 1 rope
    material: int = -1
    group: int = 0
    no_collision_mask: int = 0
    flags: int = 0  # 1 B-link, 2 clusters, 4 link crossing
    b_link_distance: int = 0
    cluster_count: int = 0
    total_mass: float = 1.0
    collision_margin: float = 0.0
    aero_model: int = 0
    config: tuple[float, ...] = (0.0,) * 12
    cluster: tuple[float, ...] = (0.0,) * 6
    iterations: tuple[int, int, int, int] = (0, 0, 0, 0)
    material_params: tuple[float, float, float] = (1.0, 1.0, 1.0)
    anchors: list[tuple[int, int, int]] = field(default_factory=list)
    pins: list[int] = field(default_factory=list)


def _f32(shape) -> np.ndarray:
    return np.zeros(shape, np.float32)


@dataclass(eq=False)
class Model:
    """A loaded (or built) MMD model.

    Vertex arrays (N vertices, F faces, A additional UVs):
      * ``positions`` (N,3) float32, MMD units; ``normals`` (N,3) float32;
        ``uvs`` (N,2) float32 (v down, as stored); ``additional_uvs`` (N,A,4) float32.
      * ``deform_types`` (N,) uint8 (:class:`DeformType`).
      * ``bone_indices`` (N,4) int32, -1 in unused slots; ``bone_weights`` (N,4)
        float32. BDEF1: [b,-1,-1,-1] / [1,0,0,0]; BDEF2 and SDEF: [b1,b2,-1,-1] /
        [w, 1-w, 0, 0]; BDEF4 and QDEF: four of each, as stored.
      * ``sdef_c``, ``sdef_r0``, ``sdef_r1`` (N,3) float32 (zeros unless SDEF).
      * ``edge_scales`` (N,) float32 (PMD: 1.0 where the edge flag is 0, else 0.0).
      * ``faces`` (F,3) uint32, grouped by material in file order.

    ``textures`` are paths as written in the file (backslashes kept); use
    :meth:`texture_image` for decoded pixels. ``warnings`` collects what the
    loader tolerated. ``toon_textures`` holds PMD's ten toon texture names
    (empty for PMX).
    """

    format: str = "pmx"  # "pmx" or "pmd"
    version: float = 2.0  # PMX 2.0/2.1; PMD 1.0
    encoding: str = "utf-16-le"  # text encoding of the source file
    path: Path | None = None
    name: str = ""
    name_en: str = ""
    comment: str = ""
    comment_en: str = ""
    positions: np.ndarray = field(default_factory=lambda: _f32((0, 3)))
    normals: np.ndarray = field(default_factory=lambda: _f32((0, 3)))
    uvs: np.ndarray = field(default_factory=lambda: _f32((0, 2)))
    additional_uvs: np.ndarray = field(default_factory=lambda: _f32((0, 0, 4)))
    deform_types: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    bone_indices: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int32))
    bone_weights: np.ndarray = field(default_factory=lambda: _f32((0, 4)))
    sdef_c: np.ndarray = field(default_factory=lambda: _f32((0, 3)))
    sdef_r0: np.ndarray = field(default_factory=lambda: _f32((0, 3)))
    sdef_r1: np.ndarray = field(default_factory=lambda: _f32((0, 3)))
    edge_scales: np.ndarray = field(default_factory=lambda: _f32((0,)))
    faces: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.uint32))
    textures: list[str] = field(default_factory=list)
    materials: list[Material] = field(default_factory=list)
    bones: list[Bone] = field(default_factory=list)
    morphs: list[Morph] = field(default_factory=list)
    display_frames: list[DisplayFrame] = field(default_factory=list)
    rigid_bodies: list[RigidBody] = field(default_factory=list)
    joints: list[Joint] = field(default_factory=list)
    soft_bodies: list[SoftBody] = field(default_factory=list)
    toon_textures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    _texture_cache: dict = field(default_factory=dict, repr=False)

    @property
    def vertex_count(self) -> int:
        return int(len(self.positions))

    @property
    def face_count(self) -> int:
        return int(len(self.faces))

    @property
    def additional_uv_count(self) -> int:
        return int(self.additional_uvs.shape[1])

    def bone_index(self, name: str) -> int:
        """Index of the first bone called ``name``; raises KeyError if absent."""
        for i, bone in enumerate(self.bones):
            if bone.name == name:
                return i
        raise KeyError(f"no bone named {name!r}")

    def morph_index(self, name: str) -> int:
        """Index of the first morph called ``name``; raises KeyError if absent."""
        for i, morph in enumerate(self.morphs):
            if morph.name == name:
                return i
        raise KeyError(f"no morph named {name!r}")

    def material_face_ranges(self) -> list[tuple[int, int]]:
        """(first face, end face) per material, in face units."""
        ranges, start = [], 0
        for material in self.materials:
            ranges.append((start, start + material.face_count))
            start += material.face_count
        return ranges

    def texture_path(self, index: int) -> Path | None:
        """The file on disk for ``textures[index]``, resolved as MMD would
        (backslashes, case, Unicode normalisation); None when not found."""
        from .textures import resolve_texture_path

        if self.path is None or not 0 <= index < len(self.textures):
            return None
        return resolve_texture_path(Path(self.path).parent, self.textures[index])

    def texture_image(self, index: int) -> np.ndarray | None:
        """Decoded texture ``index`` as (H,W,4) uint8 RGBA, row 0 at the top,
        loaded lazily and cached; None (and a warning) when it is missing or
        cannot be decoded."""
        from .textures import load_texture

        return load_texture(self, index)
