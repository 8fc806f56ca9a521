"""Pose schemas: named pose parameters as data (ranges, samplers, what each drives).

A schema turns a pose vector into a :class:`~mmdsynth.mmd.posing.Pose` for one
model, given that model's :class:`MorphAssignment` (which of its morphs fills
each expression slot). Schema ``tha1`` follows DESIGN.md and THA1 (Khungurn
2019, section 4): ``left_eye, right_eye, mouth, head_x, head_y, neck_z``.

Rotation signs, derived for MMD space (left-handed, +Y up, the model faces -Z,
the character's left is +X) with quaternions applied as ``q v q*``:

* ``head_x > 0`` (chin up): positive angle about +X carries the chin (below
  and in front of 頭, at -Y/-Z) toward -Z and +Y.
* ``head_y > 0`` (face toward the character's left, +X): the front vector
  (0,0,-1) turns toward +X under a *negative* angle about +Y.
* ``neck_z > 0`` (counter-clockwise on screen, the crown toward the character's
  right, -X): positive angle about +Z carries (0,1,0) toward -X.

The head rotation is pitch first, then yaw, both in the parent's frame:
``q = q_yaw * q_pitch``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

from .posing import Pose

# Expression slots a model's morphs are assigned to (annotation and catalog use these names).
EXPRESSION_SLOTS = (
    "wink_left",
    "wink_right",
    "wink_both",
    "smile_wink_left",
    "smile_wink_right",
    "smile_wink_both",
    "mouth",
)


@dataclass
class MorphAssignment:
    """Which morph (by name; None: the model has none) fills each expression slot.

    "Left" is the character's left. ``mouth`` is the mouth-open morph (あ).
    """

    wink_left: str | None = None
    wink_right: str | None = None
    wink_both: str | None = None
    smile_wink_left: str | None = None
    smile_wink_right: str | None = None
    smile_wink_both: str | None = None
    mouth: str | None = None

    def get(self, slot: str) -> str | None:
        """The morph in ``slot``; KeyError for an unknown slot name."""
        if slot not in EXPRESSION_SLOTS:
            raise KeyError(f"unknown expression slot {slot!r}")
        return getattr(self, slot)

    def as_dict(self) -> dict[str, str | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class MorphTarget:
    """A parameter that sets the weight of the morph in ``slot``.

    ``paired_slot``/``both_slot`` describe eye pairs: when the model has no
    morph in ``slot`` or ``paired_slot`` but has one in ``both_slot``, the two
    parameters are tied and drive the both-eyes morph together.
    """

    slot: str
    paired_slot: str | None = None
    both_slot: str | None = None


@dataclass(frozen=True)
class RotationTarget:
    """A parameter that rotates ``bone`` about ``axis`` (its parent's frame, MMD
    space) by ``value * max_angle * sign``; ``order`` sorts rotations on one
    bone, lowest applied first."""

    bone: str
    axis: tuple[float, float, float]
    sign: float
    order: int = 0


@dataclass(frozen=True)
class Parameter:
    """One pose parameter: its range, default, sampler and target.

    ``sampler``: ``"uniform"`` (uniform on [low, high]) or ``"abs"`` (density
    proportional to |v| on [-1, 1]: v = s * sqrt(u), s a random sign).
    """

    name: str
    low: float
    high: float
    sampler: str
    target: MorphTarget | RotationTarget
    default: float = 0.0


@dataclass(frozen=True)
class PoseSchema:
    """A named list of parameters plus the maximum rotation angle in degrees."""

    name: str
    parameters: tuple[Parameter, ...]
    max_angle_deg: float = 15.0
    _index: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        self._index.update({p.name: i for i, p in enumerate(self.parameters)})

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    @property
    def size(self) -> int:
        return len(self.parameters)

    def index(self, name: str) -> int:
        """Position of parameter ``name``; KeyError names the valid ones."""
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"unknown pose parameter {name!r} (schema {self.name}: {', '.join(self.names)})") from None

    def defaults(self) -> np.ndarray:
        """(P,) float32 default values (the rest pose)."""
        return np.array([p.default for p in self.parameters], np.float32)

    def ranges(self) -> np.ndarray:
        """(P,2) float32 [low, high] per parameter."""
        return np.array([(p.low, p.high) for p in self.parameters], np.float32)

    def parse(self, text: str) -> np.ndarray:
        """Parse ``"left_eye=1,mouth=0.5,head_y=0.8"`` into a (P,) float32 vector
        (unnamed parameters keep their defaults). Raises ValueError like
        :func:`parse_pose_text`."""
        values = parse_pose_text(text, self.names, [(p.low, p.high) for p in self.parameters])
        out = self.defaults()
        for name, value in values.items():
            out[self._index[name]] = value
        return out

    def tied_pairs(self, assignment: MorphAssignment) -> list[tuple[int, int]]:
        """Index pairs of parameters tied for this model (only a both-eyes morph)."""
        pairs = []
        for i, p in enumerate(self.parameters):
            t = p.target
            if isinstance(t, MorphTarget) and t.paired_slot and t.both_slot:
                j = next(k for k, q in enumerate(self.parameters) if isinstance(q.target, MorphTarget) and q.target.slot == t.paired_slot)
                if i < j and _needs_tie(t, assignment):
                    pairs.append((i, j))
        return pairs

    def constrain(self, values: np.ndarray, assignment: MorphAssignment) -> np.ndarray:
        """The pose that will actually be applied to this model: values clipped
        to their ranges, and tied eye pairs set to the larger of the two (a
        model with only a both-eyes morph closes both eyes together).
        Returns a new (P,) float32 array."""
        out = np.clip(np.asarray(values, np.float32), self.ranges()[:, 0], self.ranges()[:, 1]).astype(np.float32)
        for i, j in self.tied_pairs(assignment):
            out[i] = out[j] = max(out[i], out[j])
        return out

    def sample(self, rng: np.random.Generator, assignment: MorphAssignment | None = None) -> np.ndarray:
        """Draw one (P,) float32 pose: each parameter from its sampler,
        independently; tied pairs (see :meth:`tied_pairs`) share one draw."""
        values = np.empty(self.size, np.float32)
        for i, p in enumerate(self.parameters):
            u = rng.random()
            if p.sampler == "uniform":
                values[i] = p.low + (p.high - p.low) * u
            elif p.sampler == "abs":
                sign = 1.0 if rng.random() < 0.5 else -1.0
                values[i] = sign * math.sqrt(u) * p.high
            else:
                raise ValueError(f"unknown sampler {p.sampler!r} for {p.name}")
        if assignment is not None:
            for i, j in self.tied_pairs(assignment):
                values[j] = values[i]
        return values

    def to_pose(self, values: np.ndarray, assignment: MorphAssignment, max_angle_deg: float | None = None) -> Pose:
        """The :class:`Pose` that ``values`` (P,) mean for a model with
        ``assignment``. Apply :meth:`constrain` first to know what is stored.
        Angles: value * max_angle_deg (default the schema's), in radians in the
        quaternions. Morph slots without a morph contribute nothing."""
        values = np.asarray(values, np.float64)
        if values.shape != (self.size,):
            raise ValueError(f"pose vector has shape {values.shape}, schema {self.name} needs ({self.size},)")
        max_angle = math.radians(self.max_angle_deg if max_angle_deg is None else max_angle_deg)
        morphs: dict[str | int, float] = {}
        rotations: dict[str, list[tuple[int, np.ndarray]]] = {}
        for p, v in zip(self.parameters, values):
            t = p.target
            if isinstance(t, MorphTarget):
                slot = t.both_slot if _needs_tie(t, assignment) else t.slot
                name = assignment.get(slot)
                if name is not None and v != 0.0:
                    weight = float(v)
                    # A tied pair drives one morph: take the larger weight, not the sum.
                    morphs[name] = max(morphs.get(name, 0.0), weight) if slot == t.both_slot else morphs.get(name, 0.0) + weight
            else:
                angle = float(v) * max_angle * t.sign
                rotations.setdefault(t.bone, []).append((t.order, _axis_angle(t.axis, angle)))
        pose_rotations = {}
        for bone, parts in rotations.items():
            q = np.array([0.0, 0.0, 0.0, 1.0])
            for _, r in sorted(parts, key=lambda x: x[0]):
                q = _quat_mul(r, q)  # later rotations apply after earlier ones
            pose_rotations[bone] = q.astype(np.float32)
        return Pose(morphs=morphs, rotations=pose_rotations)


def _needs_tie(t: MorphTarget, assignment: MorphAssignment) -> bool:
    if not (t.paired_slot and t.both_slot):
        return False
    has_pair = assignment.get(t.slot) is not None and assignment.get(t.paired_slot) is not None
    return not has_pair and assignment.get(t.both_slot) is not None


def _axis_angle(axis, angle: float) -> np.ndarray:
    a = np.asarray(axis, np.float64)
    a = a / np.linalg.norm(a)
    s = math.sin(angle / 2)
    return np.array([a[0] * s, a[1] * s, a[2] * s, math.cos(angle / 2)])


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a*b of (x, y, z, w) quaternions: b applied first."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def parse_pose_text(text: str, names: list[str], ranges: list[tuple[float, float]]) -> dict[str, float]:
    """Parse ``"left_eye=1,mouth=0.5,head_y=0.8"`` against parameter ``names``
    and their [low, high] ``ranges``; returns only the named values.

    Raises ValueError naming the bad item: not NAME=VALUE, unknown name, not a
    number, out of range, or a name given twice.
    """
    values: dict[str, float] = {}
    for item in (s.strip() for s in (text or "").split(",")):
        if not item:
            continue
        name, sep, raw = (s.strip() for s in item.partition("="))
        if not sep:
            raise ValueError(f"pose item {item!r} is not NAME=VALUE")
        if name not in names:
            raise ValueError(f"unknown pose parameter {name!r} (known: {', '.join(names)})")
        if name in values:
            raise ValueError(f"pose parameter {name!r} given twice")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"pose parameter {name}: {raw!r} is not a number") from None
        low, high = ranges[names.index(name)]
        if not low <= value <= high:
            raise ValueError(f"pose parameter {name}={value:g} is outside [{low:g}, {high:g}]")
        values[name] = value
    return values


HEAD_BONE = "頭"
NECK_BONE = "首"

THA1 = PoseSchema(
    name="tha1",
    parameters=(
        Parameter("left_eye", 0.0, 1.0, "uniform", MorphTarget("wink_left", "wink_right", "wink_both")),
        Parameter("right_eye", 0.0, 1.0, "uniform", MorphTarget("wink_right", "wink_left", "wink_both")),
        Parameter("mouth", 0.0, 1.0, "uniform", MorphTarget("mouth")),
        Parameter("head_x", -1.0, 1.0, "abs", RotationTarget(HEAD_BONE, (1.0, 0.0, 0.0), +1.0, order=0)),
        Parameter("head_y", -1.0, 1.0, "abs", RotationTarget(HEAD_BONE, (0.0, 1.0, 0.0), -1.0, order=1)),
        Parameter("neck_z", -1.0, 1.0, "abs", RotationTarget(NECK_BONE, (0.0, 0.0, 1.0), +1.0, order=0)),
    ),
    max_angle_deg=15.0,
)

SCHEMAS: dict[str, PoseSchema] = {"tha1": THA1}


def get_schema(name: str) -> PoseSchema:
    """The schema called ``name``; KeyError lists the known ones."""
    try:
        return SCHEMAS[name]
    except KeyError:
        raise KeyError(f"unknown pose schema {name!r} (known: {', '.join(SCHEMAS)})") from None
