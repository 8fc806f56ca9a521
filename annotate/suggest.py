"""Automatic suggestions for the annotation tools: head bounds and expression morphs.

Pure functions of a :class:`~mmdsynth.mmd.model.Model` (no Qt, no rendering,
no file access): the annotators' Qt tools show these suggestions pre-filled and
the annotator confirms or corrects them, so they must be right most of the time
and say how sure they are.

Conventions (DESIGN.md): MMD space, left-handed, +Y up, the model faces -Z,
the character's LEFT is +X; lengths in MMD units; everything is measured on the
rest pose.

Head bounds (:func:`suggest_head_bounds`)
=========================================

The head is the geometry skinned (total weight >= 0.5) to the bone 頭 or any of
its descendants (eyes, hair, accessory bones). This works whether hair has bones
of its own or is skinned to 頭 directly; both long hair and an ahoge are then
part of the set and must be reasoned away:

*Head top* (the skull plus the flat hair covering it, not hair or accessories
sticking up). A top-view height map ``h(x, z)`` (the highest head surface over
each cell of the XZ plane, from densely sampled triangles) is cleaned by a
grey-scale morphological *opening* with a flat disc of radius ~0.22 head
half-widths. An opening removes every structure narrower than the disc (an
ahoge, a thin lock or antenna) and leaves broad, dome-like surfaces almost
untouched (a dome of radius R is lowered by about rho^2/2R, ~2% of the half
width). The top is the highest *original* height-map value among cells near the
crown (|x - cx| <= 0.35 half widths, |z - zc| <= 0.45 half depths, which also
keeps side buns and animal ears out) whose original value is within a small
tolerance of the opened one, i.e. which belong to the dome and not to a spike.

*Head bottom* (the chin tip: the lowest point of the face at the front). Hair
hanging below the chin (long back hair, sidelocks skinned to 頭) is excluded
three ways: (1) only a narrow central strip |x - cx| <= 0.25 head half-widths
is searched (sidelocks hang at the sides); (2) only the front half of the head
(z below the middle of the head's depth range above the eyes; back hair is at
+Z) is searched; (3) the search follows the *face surface*: the head mesh is
split into connected pieces (vertices welded by position, so UV seams do not
split a surface), the piece with the most triangle area in the front-centre
strip below the eyes is taken as the face (skin from the nose to the chin;
hair pieces there are thin strands at most), and the chin tip is its lowest
vertex in the strip and the front half. Materials named
like hair (髪, hair, ...) are left out when anything else is there. The eye bones (左目/右目) anchor the
search: the strip is searched below the eyes only, and the ratio
``(eye_y - bottom) / (top - eye_y)`` is checked against the anime-typical
range [0.4, 1.5] (it is 0.68 on Gene and 0.58 on the example character; the
often quoted "1.0-1.3 eye-to-crown distances" does not hold when the crown
includes the hair), lowering the confidence and adding a note when outside.

Eye and mouth morphs (:func:`suggest_morphs`, :func:`analyse_morph`)
====================================================================

Every morph is turned into a per-vertex displacement field at weight 1: vertex
morphs directly, group morphs by expanding their members recursively (weights
multiply, cycles are cut), bone morphs by skinning the vertices with the
morph's bone transforms (children follow their parents). UV and material morphs
have no geometry and are only reported.

*Which eye closes* is decided by occlusion, not by where vertices move: the
eye surface (triangles skinned to 左目/右目, or of eye-named materials) is
sampled where it is visible from the front in the rest pose, and a morph's
*closure* for each eye is the fraction of those samples that its moved
triangles (eyelids, lashes, skin) cover, in front of the eye, after the morph.
A blink covers ~100% of one eye and 0% of the other; brows, squints, iris
morphs and mouth shapes cover little. This is robust against names that lie
(ウィンク closing the right eye on some models) and against eyes that are not
where their bones are. The side is the character's: left = +X.

*Plain or smiling closure*: a smiling closure (笑い, "^ ^") raises the lower
lid and stops the upper lid higher than a blink. Each closing morph gets a
smile score from (a) the share of its eye-region motion that goes up (~0.3
for 笑い-like closures, ~0.1 or less for blinks, on Gene and the example
character alike), and (b) when the model's closers of that eye differ in
depth, its lid travel relative to the eye's blink depth (the median travel of
its plain-looking closers; a smiling lid stops at ~0.6-0.75 of a blink's
travel). Names (NFKC-normalised: half-width katakana and
full-width digits fold, so ｳｨﾝｸ２右 == ウィンク2右) are a tie-breaker among
geometrically equal candidates and a weak prior for the type (笑い, まばたき);
they never decide the side, and ウィンク/ウィンク２ say nothing about the type
(models disagree on which of them is the smiling one).

*Mouth*: the あ slot is the morph that opens the mouth: motion concentrated in
the mouth region (centre strip between the eyes and the chin), symmetric, and
opening (vertices below the mouth line go down more than those above).

The confidences are heuristic numbers in [0, 1]: high when geometry is clear and
the name agrees, lower when only one of them speaks or they disagree.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from mmdsynth.mmd.model import Model, MorphKind, MorphPanel
from mmdsynth.mmd.schema import EXPRESSION_SLOTS, MorphAssignment

__all__ = [
    "HeadBounds",
    "MorphAnalysis",
    "MorphSuggestion",
    "analyse_morph",
    "normalize_morph_name",
    "name_hint",
    "suggest_head_bounds",
    "suggest_morphs",
]

HEAD_BONE = "頭"
EYE_BONES = {"left": "左目", "right": "右目"}
_EYE_BONES_EN = {
    "left": ("eye_l", "eye l", "lefteye", "left eye", "eye.l", "eyel"),
    "right": ("eye_r", "eye r", "righteye", "right eye", "eye.r", "eyer"),
}
_HAIR_WORDS = ("髪", "hair", "かみ", "ヘア", "ahoge", "アホ毛", "あほ毛", "bangs", "ponytail", "twintail")
_EYE_MATERIAL_WORDS = ("目", "瞳", "eye", "iris", "pupil", "hitomi")
_NOT_EYE_WORDS = ("眉", "brow", "まつ", "睫", "lash", "まぶた", "瞼", "lid")
CLOSED = 0.6  # closure (fraction of the visible eye covered) above which an eye counts as shut


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass
class HeadBounds:
    """Suggested framing bounds of a model's head, rest pose.

    * ``top``: head top (skull plus the hair lying on it, not hair or
      accessories sticking up), MMD Y units.
    * ``bottom``: head bottom = chin tip, MMD Y units (``bottom < top``).
    * ``center_x``: X of the 頭 bone, MMD units (the image's centre column).
    * ``confidence``: in [0, 1]; below ~0.6 the annotator should look closely.
    * ``notes``: human-readable remarks on how the numbers were found and on
      anything unusual (no eye bones, protrusions ignored, odd proportions).
    """

    top: float
    bottom: float
    center_x: float
    confidence: float
    notes: list[str] = field(default_factory=list)

    @property
    def height(self) -> float:
        """``top - bottom``, MMD units."""
        return self.top - self.bottom


@dataclass
class MorphAnalysis:
    """What one morph does to the face, for ranking and for a UI listing candidates.

    Geometry (all measured on the displacement field at weight 1, rest pose):

    * ``side``: "left" (the character's left, +X), "right", "both" or "none",
      from ``closure_left``/``closure_right`` when the morph closes an eye, else
      from where its eye-region motion is.
    * ``closure_left``, ``closure_right``: fraction [0,1] of that eye's visible
      surface (front view, rest pose) covered by moved geometry after the morph;
      1 = the eye is shut. When the model has no usable eye geometry they are
      estimated from how far the lids travel down (a note says so); None when
      not even the head was found.
    * ``balance``: (L - R) / (L + R) of eye-region motion magnitude, in [-1, 1]
      (+1: only the character's left side moves); 0 when nothing moves there.
    * ``eye_score``: fraction [0,1] of the morph's total motion (sum of |d|)
      inside the two eye regions.
    * ``down_score``: fraction [0,1] of eye-region motion that is downward
      (sum of max(-dy, 0) over sum of |d|); a closing eyelid scores high.
    * ``up_share``: upward over (upward + downward) eye-region motion [0,1];
      smiling closures raise the lower lid (~0.3), blinks barely (~0.1).
    * ``depth``: largest downward travel in the eye regions divided by the eye
      height (the visible eye's vertical extent); ~1 for a blink.
    * ``smile_score``: [0,1], how much a closure looks like a smiling one
      ("^ ^", 笑い) rather than a plain blink; 0.5 when undecidable.
    * ``mouth_score``: [0,1], how much the morph looks like an open mouth (あ).
    * ``category``: "close" (plain eye closure), "smile_close", "mouth_open"
      or "other".

    Names: ``normalized_name`` (NFKC, casefolded), ``name_hint`` (e.g.
    ``"wink2:right"``, ``"blink:both"``, ``"mouth_a"``; None when the name says
    nothing) and ``hint_side``.

    ``vertex_count``: vertices the morph moves (after expanding groups and
    bones). ``notes``: remarks (group expanded, bone morph skinned, no geometry).
    """

    name: str
    index: int
    kind: str
    panel: int
    vertex_count: int = 0
    side: str = "none"
    balance: float = 0.0
    closure_left: float | None = None
    closure_right: float | None = None
    eye_score: float = 0.0
    down_score: float = 0.0
    up_share: float = 0.0
    depth: float = 0.0
    smile_score: float = 0.5
    mouth_score: float = 0.0
    category: str = "other"
    normalized_name: str = ""
    name_hint: str | None = None
    hint_side: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def closure(self) -> float:
        """The larger of the two eye closures (0 when unknown)."""
        return max(self.closure_left or 0.0, self.closure_right or 0.0)


@dataclass
class MorphSuggestion:
    """Suggested expression morphs of a model.

    * ``assignment``: a :class:`~mmdsynth.mmd.schema.MorphAssignment` (morph
      names; None where the model has nothing suitable).
    * ``confidence``: slot name -> [0, 1] (0 for an empty slot).
    * ``analysis``: one :class:`MorphAnalysis` per candidate morph (anything
      that shuts an eye, moves the eye regions or the mouth, or is named like
      an eye/mouth morph), in morph order, for a UI listing alternatives.
    * ``ranked``: slot name -> morph indices that qualify for the slot, best
      first (the first is the suggestion unless it was given to the paired
      wink/smile slot).
    * ``notes``: remarks about the model as a whole.
    """

    assignment: MorphAssignment
    confidence: dict[str, float]
    analysis: list[MorphAnalysis]
    notes: list[str] = field(default_factory=list)
    ranked: dict[str, list[int]] = field(default_factory=dict)
    _by_index: dict[int, MorphAnalysis] = field(default_factory=dict, repr=False, compare=False)

    def candidates(self, slot: str) -> list[MorphAnalysis]:
        """Analyses of the morphs that qualify for ``slot``, best first.
        KeyError for an unknown slot."""
        if slot not in EXPRESSION_SLOTS:
            raise KeyError(f"unknown expression slot {slot!r}")
        return [self._by_index[i] for i in self.ranked.get(slot, []) if i in self._by_index]


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------


def normalize_morph_name(name: str) -> str:
    """NFKC-normalised, casefolded, whitespace-free name: half-width katakana
    become full width (ｳｨﾝｸ -> ウィンク), full-width digits and letters become
    ASCII (２ -> 2), so that name variants compare equal."""
    s = unicodedata.normalize("NFKC", name or "").casefold()
    return re.sub(r"\s+", "", s)


# Exact (normalised) names -> (kind, side, strength). kind: "blink" (plain
# closure), "smile" (smiling closure), "wink"/"wink2" (one eye, type unknown:
# the conventions differ between models), "mouth_a" (open mouth).
_EXACT_HINTS: dict[str, tuple[str, str | None, float]] = {}


def _add_hints(kind, side, strength, *names):
    for n in names:
        _EXACT_HINTS[normalize_morph_name(n)] = (kind, side, strength)


_add_hints("blink", "both", 1.0, "まばたき")
_add_hints("blink", "both", 0.7, "瞬き", "blink", "eyeblink", "eye_blink", "まばたき両", "目閉じ", "とじ目", "閉じ目")
_add_hints("blink", "left", 0.8, "まばたき左", "まば左", "瞬き左", "blink_l", "blinkleft", "blink_left", "blinkl")
_add_hints("blink", "right", 0.8, "まばたき右", "まば右", "瞬き右", "blink_r", "blinkright", "blink_right", "blinkr")
_add_hints("blink", "left", 0.7, "eyeblinkleft", "eyeblink_l", "eyeblinkl", "eye_blink_l")
_add_hints("blink", "right", 0.7, "eyeblinkright", "eyeblink_r", "eyeblinkr", "eye_blink_r")
_add_hints("smile", "both", 1.0, "笑い")
_add_hints("smile", "both", 0.7, "eyesmile", "eye_smile", "smile", "にこ目", "笑い目")
_add_hints("wink", "left", 1.0, "ウィンク", "ウインク")
_add_hints("wink", "right", 1.0, "ウィンク右", "ウインク右")
_add_hints("wink", "left", 0.9, "ウィンク左", "ウインク左")
_add_hints("wink2", "left", 1.0, "ウィンク2", "ウインク2", "ウィンク2左", "ウインク2左")
_add_hints("wink2", "right", 1.0, "ウィンク2右", "ウインク2右")
_add_hints("wink", "left", 0.7, "wink", "wink_l", "winkleft", "wink_left", "winkl")
_add_hints("wink", "right", 0.7, "wink_r", "winkright", "wink_right", "winkr")
_add_hints("wink2", "left", 0.7, "wink2", "wink2_l", "wink2left", "wink_2")
_add_hints("wink2", "right", 0.7, "wink2_r", "wink2right", "wink_2_r")
_add_hints("mouth_a", None, 1.0, "あ")
_add_hints("mouth_a", None, 0.8, "ア", "a", "ああ", "あー", "mouth_a", "aa", "ah")
_add_hints("mouth_a", None, 0.3, "jawopen", "mouthopen", "mouth_open", "口開け")

def _loose_hint(n: str) -> tuple[str, str | None, float] | None:
    """Weak hints from words inside longer names (eye_close_geo_L, blink_R, ...)."""
    side = None
    if re.search(r"(左|left|[_.\-]l$|[_.\-]l[_.\-])", n):
        side = "left"
    elif re.search(r"(右|right|[_.\-]r$|[_.\-]r[_.\-])", n):
        side = "right"
    eye = "eye" in n or "目" in n
    if "まばたき" in n or "blink" in n or "まば" in n or (eye and any(w in n for w in ("close", "閉", "とじ"))):
        return ("blink", side or "both", 0.4)
    if re.search(r"ウ[ィイ]ンク2", n) or "wink2" in n:
        return ("wink2", side or "left", 0.5)
    if re.search(r"ウ[ィイ]ンク", n) or "wink" in n:
        return ("wink", side or "left", 0.4)
    if eye and ("smile" in n or "笑" in n):
        return ("smile", side or "both", 0.4)
    return None


def name_hint(name: str, name_en: str = "") -> tuple[str, str | None, float] | None:
    """What a morph's name suggests: ``(kind, side, strength)`` or None.

    ``kind`` is "blink", "smile", "wink", "wink2" or "mouth_a"; ``side`` is
    "left", "right", "both" or None (mouth); ``strength`` in (0, 1] (1 for the
    standard MMD names まばたき, 笑い, ウィンク, ウィンク右, ウィンク２, ウィンク２右,
    あ; less for English, ARKit and loose matches). The Japanese name is tried
    first, then the English one."""
    for raw, scale in ((name, 1.0), (name_en, 0.8)):
        n = normalize_morph_name(raw)
        if not n:
            continue
        if n in _EXACT_HINTS:
            kind, side, s = _EXACT_HINTS[n]
            return kind, side, s * scale
        loose = _loose_hint(n)
        if loose is not None:
            return loose[0], loose[1], loose[2] * scale
    return None


# ---------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------


def _find_bone(model: Model, name: str, english: tuple[str, ...] = ()) -> int | None:
    target = normalize_morph_name(name)
    for i, b in enumerate(model.bones):
        if b.name == name:
            return i
    for i, b in enumerate(model.bones):
        if normalize_morph_name(b.name) == target:
            return i
    for i, b in enumerate(model.bones):
        if normalize_morph_name(b.name_en) in english or normalize_morph_name(b.name) in english:
            return i
    return None


def _head_bone(model: Model) -> int | None:
    return _find_bone(model, HEAD_BONE, ("head", "j_head", "head_jnt"))


def _descendants(model: Model, root: int) -> np.ndarray:
    """Bone indices of ``root`` and all its descendants, (K,) int."""
    children: dict[int, list[int]] = {}
    for i, b in enumerate(model.bones):
        children.setdefault(b.parent, []).append(i)
    out, stack, seen = [], [root], set()
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        out.append(i)
        stack.extend(children.get(i, []))
    return np.array(sorted(out), np.int64)


def _skin_weight(model: Model, bones: np.ndarray) -> np.ndarray:
    """(N,) total skinning weight of each vertex on the given bones."""
    if model.vertex_count == 0 or len(bones) == 0:
        return np.zeros(model.vertex_count, np.float32)
    bi = model.bone_indices
    hit = np.isin(bi, bones) & (bi >= 0)
    return np.where(hit, model.bone_weights, 0.0).sum(axis=1)


def _vertex_material(model: Model) -> np.ndarray:
    """(N,) index of a material using each vertex (-1: none; last one wins)."""
    out = np.full(model.vertex_count, -1, np.int64)
    for i, (a, b) in enumerate(model.material_face_ranges()):
        if b > a:
            out[model.faces[a:b].reshape(-1).astype(np.int64)] = i
    return out


def _face_material(model: Model) -> np.ndarray:
    """(F,) material index of each face."""
    out = np.full(model.face_count, -1, np.int64)
    for i, (a, b) in enumerate(model.material_face_ranges()):
        out[a:min(b, model.face_count)] = i
    return out


def _material_flags(model: Model, words: tuple[str, ...], exclude: tuple[str, ...] = ()) -> np.ndarray:
    out = np.zeros(len(model.materials), bool)
    for i, m in enumerate(model.materials):
        n = normalize_morph_name(m.name) + "|" + normalize_morph_name(m.name_en)
        out[i] = any(w in n for w in words) and not any(w in n for w in exclude)
    return out


def _hidden_materials(model: Model) -> np.ndarray:
    """Materials drawn invisible at rest (diffuse alpha ~0: toggled by morphs)."""
    return np.array([float(m.diffuse[3]) <= 0.01 for m in model.materials], bool)


def _weld(positions: np.ndarray, tol: float) -> np.ndarray:
    """(N,) representative index per vertex: vertices at the same position
    (within ``tol``) share one, so UV seams do not split connected surfaces."""
    key = np.round(positions / max(tol, 1e-9)).astype(np.int64)
    _, inverse = np.unique(key, axis=0, return_inverse=True)
    return inverse.reshape(-1)


def _components(n: int, faces: np.ndarray) -> np.ndarray:
    """(n,) connected-component label of each node under the faces' edges."""
    parent = np.arange(n)

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    if len(faces):
        edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
        edges = np.unique(np.sort(edges, axis=1), axis=0)
        # vectorised label propagation, then a union-find polish
        label = np.arange(n)
        for _ in range(64):
            a, b = label[edges[:, 0]], label[edges[:, 1]]
            m = np.minimum(a, b)
            new = label.copy()
            np.minimum.at(new, edges[:, 0], m)
            np.minimum.at(new, edges[:, 1], m)
            new = new[new]
            if np.array_equal(new, label):
                break
            label = new
        else:
            parent = label.copy()
            for u, v in edges:
                ru, rv = find(u), find(v)
                if ru != rv:
                    parent[max(ru, rv)] = min(ru, rv)
            label = np.array([find(i) for i in range(n)])
        return label
    return parent


def _sample_triangles(tri: np.ndarray, cell: float, max_sub: int = 12) -> np.ndarray:
    """Points on triangles ``tri`` (T,3,3), spaced about ``cell`` apart in XZ
    (barycentric grid per triangle, subdivision capped at ``max_sub``). (M,3)."""
    if len(tri) == 0:
        return np.zeros((0, 3))
    xz = tri[:, :, [0, 2]]
    edge = np.max(np.linalg.norm(xz - np.roll(xz, 1, axis=1), axis=2), axis=1)
    nsub = np.clip(np.ceil(edge / max(cell, 1e-9)).astype(int), 1, max_sub)
    out = [tri.reshape(-1, 3)]
    for n in np.unique(nsub):
        sel = tri[nsub == n]
        i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        ok = (i + j) <= n
        a = i[ok] / n
        b = j[ok] / n
        w = np.stack([1 - a - b, a, b], axis=1)  # (S,3)
        out.append(np.einsum("sk,tkd->tsd", w, sel).reshape(-1, 3))
    return np.concatenate(out)


def _grey_open(h: np.ndarray, radius: int, floor: float) -> np.ndarray:
    """Grey-scale opening (erosion then dilation) of height map ``h`` with a
    flat disc of ``radius`` cells; outside the map counts as ``floor``."""
    if radius <= 0:
        return h.copy()
    offs = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if dy * dy + dx * dx <= radius * radius]
    ny, nx = h.shape

    def shifted(a, dy, dx, fill):
        out = np.full_like(a, fill)
        if abs(dy) >= ny or abs(dx) >= nx:
            return out
        ys = slice(max(0, dy), ny + min(0, dy))
        yd = slice(max(0, -dy), ny + min(0, -dy))
        xs = slice(max(0, dx), nx + min(0, dx))
        xd = slice(max(0, -dx), nx + min(0, -dx))
        out[yd, xd] = a[ys, xs]
        return out

    ero = np.full_like(h, np.inf)
    for dy, dx in offs:
        ero = np.minimum(ero, shifted(h, dy, dx, floor))
    dil = np.full_like(h, -np.inf)
    for dy, dx in offs:
        dil = np.maximum(dil, shifted(ero, dy, dx, floor))
    return dil


# ---------------------------------------------------------------------------
# Head frame: everything the two suggestions share
# ---------------------------------------------------------------------------


@dataclass
class _HeadFrame:
    head_bone: int
    center_x: float
    head_mask: np.ndarray  # (N,) bool, skinned >= 0.5 to the 頭 subtree
    eye_y: float | None  # from the eye bones
    eye_bones: dict  # side -> bone index
    rx: float  # head half width (upper head), MMD units
    zc: float  # middle of the upper head's depth range
    rz: float  # half depth


def _head_frame(model: Model) -> _HeadFrame:
    hb = _head_bone(model)
    if hb is None:
        raise ValueError(
            f"model {model.name!r} has no 頭 (head) bone: cannot locate the head "
            "(annotate the head bounds by hand)"
        )
    if model.vertex_count == 0:
        raise ValueError(f"model {model.name!r} has no vertices: nothing to measure")
    bones = _descendants(model, hb)
    w = _skin_weight(model, bones)
    mask = w >= 0.5
    if not mask.any():
        raise ValueError(
            f"model {model.name!r}: no vertex is skinned to the 頭 bone or its children; "
            "cannot tell which geometry is the head"
        )
    cx = float(model.bones[hb].position[0])
    eye_bones = {}
    for side, jp in EYE_BONES.items():
        b = _find_bone(model, jp, _EYE_BONES_EN[side])
        if b is not None:
            eye_bones[side] = b
    P = model.positions[mask].astype(np.float64)
    eye_y = None
    if eye_bones:
        ys = [model.bones[b].position[1] for b in eye_bones.values()]
        y = float(np.mean(ys))
        if P[:, 1].min() < y < P[:, 1].max():
            eye_y = y
    ref = eye_y if eye_y is not None else float(model.bones[hb].position[1])
    upper = P[P[:, 1] > ref]
    if len(upper) < 8:
        upper = P
    xl, xh = np.percentile(upper[:, 0], [2, 98])
    zl, zh = np.percentile(upper[:, 2], [2, 98])
    extent = float(np.max(P.max(axis=0) - P.min(axis=0)))
    floor = max(0.05 * extent, 1e-3)  # degenerate (flat, tiny) heads
    rx = max(float(max(xh - cx, cx - xl)), floor)
    rz = max(float(zh - zl) / 2, floor)
    return _HeadFrame(hb, cx, mask, eye_y, eye_bones, rx, float(zl + zh) / 2, rz)


# ---------------------------------------------------------------------------
# Head bounds
# ---------------------------------------------------------------------------


def _head_top(model: Model, fr: _HeadFrame, notes: list[str]) -> tuple[float, float]:
    """(top, protrusion height ignored). See the module docstring."""
    P = model.positions.astype(np.float64)
    faces = model.faces.astype(np.int64)
    hidden = _hidden_materials(model)
    fm = _face_material(model)
    keep = fr.head_mask[faces].all(axis=1) if len(faces) else np.zeros(0, bool)
    if len(faces) and len(hidden):
        keep &= ~hidden[np.clip(fm, 0, len(hidden) - 1)] | (fm < 0)
    cell = max(min(fr.rx, fr.rz) / 24.0, max(fr.rx, fr.rz) / 100.0)
    pts = _sample_triangles(P[faces[keep]], cell)
    if len(pts) == 0:
        pts = P[fr.head_mask]
        notes.append("no head triangles: the top is taken from vertices only")
    x0, x1 = fr.center_x - 1.6 * fr.rx, fr.center_x + 1.6 * fr.rx
    z0, z1 = fr.zc - 1.6 * fr.rz, fr.zc + 1.6 * fr.rz
    inside = (pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 2] >= z0) & (pts[:, 2] <= z1)
    pts = pts[inside]
    nx = int(math.ceil((x1 - x0) / cell)) + 1
    nz = int(math.ceil((z1 - z0) / cell)) + 1
    ix = np.clip(((pts[:, 0] - x0) / cell).astype(int), 0, nx - 1)
    iz = np.clip(((pts[:, 2] - z0) / cell).astype(int), 0, nz - 1)
    floor = float(P[fr.head_mask, 1].min())
    h = np.full((nz, nx), -np.inf)
    np.maximum.at(h, (iz, ix), pts[:, 1])
    h[~np.isfinite(h)] = floor
    radius = int(np.clip(round(0.22 * fr.rx / cell), 1, 24))
    opened = _grey_open(h, radius, floor)
    gx = x0 + (np.arange(nx) + 0.5) * cell
    gz = z0 + (np.arange(nz) + 0.5) * cell
    central = (np.abs(gx[None, :] - fr.center_x) <= 0.35 * fr.rx) & (np.abs(gz[:, None] - fr.zc) <= 0.45 * fr.rz)
    tol = 0.04 * fr.rx
    dome = central & (h - opened <= tol) & (h > floor)
    if dome.any():
        top = float(h[dome].max())
    elif central.any():
        top = float(opened[central].max())
        notes.append("top taken from the opened height map (no clean dome cells)")
    else:
        top = float(h.max())
    raw = float(P[fr.head_mask, 1].max())
    return top, raw - top


def _head_bottom(model: Model, fr: _HeadFrame, top: float, notes: list[str]) -> tuple[float, bool]:
    """(chin tip y, found on the face surface?). See the module docstring."""
    P = model.positions.astype(np.float64)
    mask = fr.head_mask.copy()
    vm = _vertex_material(model)
    hair = _material_flags(model, _HAIR_WORDS)
    hidden = _hidden_materials(model)
    not_hair = np.ones(model.vertex_count, bool)
    if len(hair):
        ok = vm >= 0
        not_hair[ok] = ~(hair[vm[ok]] | hidden[vm[ok]])
    ceiling = fr.eye_y if fr.eye_y is not None else top - 0.4 * (top - float(model.bones[fr.head_bone].position[1]))
    strip = np.abs(P[:, 0] - fr.center_x) <= 0.25 * fr.rx
    front = P[:, 2] < fr.zc
    below = P[:, 1] < ceiling
    cand = mask & strip & front & below & not_hair
    if not cand.any():
        cand = mask & strip & front & below
    if not cand.any():
        cand = mask & below
        notes.append("no head geometry in front below the eyes: chin = lowest head vertex below the eyes")
    if not cand.any():
        return float(P[mask, 1].min()), False
    # the face surface: of the connected pieces of head mesh (welded by
    # position), the one with the most area in the front-centre strip below the eyes
    faces = model.faces.astype(np.int64)
    if len(faces):
        fk = faces[mask[faces].all(axis=1) & cand[faces].all(axis=1)]
        if len(fk):
            weld = _weld(P, 1e-5 * max(fr.rx, 1.0))
            fall = faces[mask[faces].all(axis=1)]
            label = _components(int(weld.max()) + 1, weld[fall])
            t = P[fk]
            area = 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1)
            flab = label[weld[fk[:, 0]]]
            labels, inv = np.unique(flab, return_inverse=True)
            total = np.bincount(inv, weights=area)
            best = labels[int(np.argmax(total))]
            face = cand & (label[weld] == best)
            if face.any():
                return float(P[face, 1].min()), True
    notes.append("face surface not found: chin = lowest front-centre head vertex below the eyes")
    return float(P[cand, 1].min()), False


def suggest_head_bounds(model: Model) -> HeadBounds:
    """Suggest the head top and head bottom (chin tip) of ``model``, rest pose.

    Returns a :class:`HeadBounds` (``top``/``bottom`` in MMD Y units,
    ``center_x`` = the 頭 bone's X). The method is described in the module
    docstring: the top is the crown of the top-view height map after a
    morphological opening (thin protrusions such as an ahoge vanish), the
    bottom is the lowest point of the face surface in the front centre strip.

    Raises ValueError (naming the model) when it has no 頭 bone (the English
    names "head"/"j_head" are accepted as a fallback) or no geometry skinned to
    the head.
    """
    fr = _head_frame(model)
    notes: list[str] = []
    conf = 0.95  # a heuristic is never certain
    top, protrusion = _head_top(model, fr, notes)
    if protrusion > 0.05 * fr.rx:
        notes.append(f"ignored {protrusion:.3g} units of thin protrusions above the crown (ahoge, accessories)")
    bottom, on_face = _head_bottom(model, fr, top, notes)
    if not on_face:
        conf *= 0.6
    if fr.eye_y is None:
        conf *= 0.7
        notes.append("no 左目/右目 eye bones: eye level estimated from the 頭 bone")
    else:
        ratio = (fr.eye_y - bottom) / max(top - fr.eye_y, 1e-6)
        notes.append(f"eye-to-chin / eye-to-top = {ratio:.2f}")
        if not 0.4 <= ratio <= 1.5:
            conf *= 0.5
            notes.append("unusual proportions (expected 0.4-1.5): check the chin and the top")
    if not top > bottom:
        conf *= 0.2
        notes.append("top is not above bottom: geometry unusual, check by hand")
        top, bottom = max(top, bottom), min(top, bottom)
    notes.insert(0, f"head: {int(fr.head_mask.sum())} vertices skinned to 頭 and its children")
    return HeadBounds(top=float(top), bottom=float(bottom), center_x=float(fr.center_x),
                      confidence=float(np.clip(conf, 0.0, 1.0)), notes=notes)


# ---------------------------------------------------------------------------
# Morph displacement fields
# ---------------------------------------------------------------------------


def _quat_to_matrix(q) -> np.ndarray:
    x, y, z, w = (float(v) for v in q)
    n = math.sqrt(x * x + y * y + z * z + w * w)
    if n < 1e-12:
        return np.eye(3)
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _scale_quat(q, weight: float) -> np.ndarray:
    """Rotation ``q`` (x,y,z,w) scaled to ``weight`` of its angle."""
    q = np.asarray(q, np.float64)
    n = np.linalg.norm(q)
    if n < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0])
    q = q / n
    if q[3] < 0:
        q = -q
    angle = 2 * math.acos(min(1.0, q[3]))
    s = math.sin(angle / 2)
    if s < 1e-9:
        return np.array([0.0, 0.0, 0.0, 1.0])
    axis = q[:3] / s
    a = angle * weight
    return np.concatenate([axis * math.sin(a / 2), [math.cos(a / 2)]])


def _collect(model: Model, index: int, weight: float, verts: dict, bones: dict, notes: set,
             path: frozenset = frozenset()):
    """Accumulate morph ``index`` at ``weight`` into vertex offsets and bone
    transforms (group members recursively; cycles and deep nesting cut)."""
    if index in path or len(path) > 16 or not 0 <= index < len(model.morphs):
        notes.add("group cycle, deep nesting or bad member index: cut")
        return
    m = model.morphs[index]
    if m.kind == MorphKind.VERTEX and m.offsets is not None:
        idx = np.asarray(m.indices, np.int64)
        ok = (idx >= 0) & (idx < model.vertex_count)
        verts.setdefault("list", []).append((idx[ok], np.asarray(m.offsets, np.float64)[ok][:, :3] * weight))
    elif m.kind == MorphKind.GROUP and m.weights is not None:
        notes.add("group morph expanded")
        for j, w in zip(np.asarray(m.indices, np.int64), np.asarray(m.weights, np.float64)):
            _collect(model, int(j), weight * float(w), verts, bones, notes, path | {index})
    elif m.kind == MorphKind.BONE and m.offsets is not None:
        notes.add("bone morph skinned")
        rots = m.rotations if m.rotations is not None else np.tile([0.0, 0.0, 0.0, 1.0], (len(m.indices), 1))
        for b, t, q in zip(np.asarray(m.indices, np.int64), np.asarray(m.offsets, np.float64), np.asarray(rots, np.float64)):
            if 0 <= b < len(model.bones):
                bones.setdefault(int(b), []).append((t * weight, _scale_quat(q, weight)))
    elif m.kind not in (MorphKind.VERTEX, MorphKind.GROUP, MorphKind.BONE):
        notes.add(f"{m.kind.label} morph: no geometry")


def _bone_displacement(model: Model, bones: dict) -> tuple[np.ndarray, np.ndarray]:
    """Vertex displacements of bone-morph transforms (linear blend skinning,
    children follow their parents, append/IK ignored): (idx (K,), d (K,3))."""
    nb = len(model.bones)
    local = {}
    for b, parts in bones.items():
        R = np.eye(3)
        t = np.zeros(3)
        for tr, q in parts:
            R = _quat_to_matrix(q) @ R
            t = t + tr
        local[b] = (R, t)
    glob: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def g(i, seen=()):
        # global affine map (A, c): p -> A p + c, identity when nothing above moves
        if i in glob:
            return glob[i]
        par = model.bones[i].parent
        if 0 <= par < nb and par not in seen and len(seen) < nb:
            A, c = g(par, seen + (i,))
        else:
            A, c = np.eye(3), np.zeros(3)
        if i in local:
            R, t = local[i]
            pos = np.asarray(model.bones[i].position, np.float64)
            # local: p -> R (p - pos) + pos + t, then the parent's map
            A2 = A @ R
            c2 = A @ (pos - R @ pos + t) + c
            A, c = A2, c2
        glob[i] = (A, c)
        return A, c

    moved = set()
    for i in range(nb):
        A, c = g(i)
        if not (np.allclose(A, np.eye(3)) and np.allclose(c, 0)):
            moved.add(i)
    if not moved:
        return np.zeros(0, np.int64), np.zeros((0, 3))
    bi = model.bone_indices
    wts = model.bone_weights
    hit = np.isin(bi, list(moved)).any(axis=1)
    idx = np.flatnonzero(hit)
    P = model.positions[idx].astype(np.float64)
    out = np.zeros((len(idx), 3))
    for k in range(bi.shape[1]):
        b = bi[idx, k]
        w = wts[idx, k].astype(np.float64)
        for bone in np.unique(b[(w > 0) & (b >= 0)]):
            if int(bone) not in moved:
                continue
            sel = (b == bone) & (w > 0)
            A, c = glob[int(bone)]
            out[sel] += w[sel, None] * (P[sel] @ A.T + c - P[sel])
    return idx, out


def _displacement(model: Model, index: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Displacement field of morph ``index`` at weight 1 (groups expanded,
    bone morphs skinned): (idx (K,) int64 unique vertex indices, d (K,3)
    float64 MMD units, notes)."""
    verts: dict = {}
    bones: dict = {}
    notes: set = set()
    _collect(model, index, 1.0, verts, bones, notes)
    parts_i, parts_d = [], []
    for idx, d in verts.get("list", []):
        parts_i.append(idx)
        parts_d.append(d)
    if bones:
        bi, bd = _bone_displacement(model, bones)
        parts_i.append(bi)
        parts_d.append(bd)
    if not parts_i:
        return np.zeros(0, np.int64), np.zeros((0, 3)), sorted(notes)
    idx = np.concatenate(parts_i)
    d = np.concatenate(parts_d)
    uniq, inv = np.unique(idx, return_inverse=True)
    acc = np.zeros((len(uniq), 3))
    np.add.at(acc, inv, d)
    keep = np.linalg.norm(acc, axis=1) > 1e-7
    return uniq[keep], acc[keep], sorted(notes)


# ---------------------------------------------------------------------------
# Face context: eyes, mouth and occluders of one model (built once per model)
# ---------------------------------------------------------------------------


@dataclass
class _Eye:
    side: str
    samples: np.ndarray  # (K,3) rest positions of visible eye-surface samples
    weights: np.ndarray  # (K,) projected area each sample stands for
    box: tuple[float, float, float, float]  # x0, x1, y0, y1 of the visible eye
    region: tuple[float, float, float, float]  # box grown to include the eyelids

    @property
    def height(self) -> float:
        return max(self.box[3] - self.box[2], 1e-6)

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[1]) / 2, (self.box[2] + self.box[3]) / 2


@dataclass
class _FaceContext:
    frame: _HeadFrame | None
    top: float
    bottom: float
    eyes: dict  # side -> _Eye (from eye geometry) ; may be empty
    eye_regions: dict  # side -> (x0, x1, y0, y1), always both sides when the head is known
    eye_height: float
    mouth_region: tuple[float, float, float, float] | None
    mouth_y: float | None
    occluder: np.ndarray  # (F,) bool: faces that may cover an eye
    vert_faces: tuple[np.ndarray, np.ndarray]  # CSR: vertex -> faces
    notes: list[str]
    eye_boxes: dict = field(default_factory=dict)  # side -> (x0, x1, y0, y1): the eye opening, for estimates
    eye_vertices: np.ndarray | None = None  # (N,) bool: vertices of either eye
    analyses_cache: tuple | None = None  # (morph fingerprint, [MorphAnalysis])


def _covered(tri: np.ndarray, samples: np.ndarray, eps: float) -> np.ndarray:
    """(K,) bool: sample (x,y,z) lies inside the XY projection of some triangle
    of ``tri`` (M,3,3) whose interpolated z there is < sample z - eps (in front,
    the model facing -Z)."""
    K = len(samples)
    out = np.zeros(K, bool)
    if K == 0 or len(tri) == 0:
        return out
    sx, sy, sz = samples[:, 0], samples[:, 1], samples[:, 2]
    lo = tri[:, :, :2].min(axis=1)
    hi = tri[:, :, :2].max(axis=1)
    near = (hi[:, 0] >= sx.min()) & (lo[:, 0] <= sx.max()) & (hi[:, 1] >= sy.min()) & (lo[:, 1] <= sy.max())
    tri = tri[near]
    lo, hi = lo[near], hi[near]
    for s in range(0, len(tri), 256):
        t = tri[s:s + 256]
        a, b, c = t[:, 0], t[:, 1], t[:, 2]
        v0 = (b - a)[:, :2]
        v1 = (c - a)[:, :2]
        den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
        ok = np.abs(den) > 1e-14
        if not ok.any():
            continue
        a, v0, v1, den, t = a[ok], v0[ok], v1[ok], den[ok], t[ok]
        l, h = lo[s:s + 256][ok], hi[s:s + 256][ok]
        inbox = (sx[None, :] >= l[:, 0:1]) & (sx[None, :] <= h[:, 0:1]) & (sy[None, :] >= l[:, 1:2]) & (sy[None, :] <= h[:, 1:2])
        if not inbox.any():
            continue
        px = sx[None, :] - a[:, 0:1]
        py = sy[None, :] - a[:, 1:2]
        u = (px * v1[:, 1:2] - v1[:, 0:1] * py) / den[:, None]
        v = (v0[:, 0:1] * py - px * v0[:, 1:2]) / den[:, None]
        inside = inbox & (u >= -1e-9) & (v >= -1e-9) & (u + v <= 1 + 1e-9)
        z = t[:, 0, 2:3] + u * (t[:, 1, 2:3] - t[:, 0, 2:3]) + v * (t[:, 2, 2:3] - t[:, 0, 2:3])
        out |= (inside & (z < sz[None, :] - eps)).any(axis=0)
    return out


def _vertex_faces(model: Model) -> tuple[np.ndarray, np.ndarray]:
    f = model.faces.astype(np.int64).reshape(-1)
    face_id = np.repeat(np.arange(model.face_count), 3)
    order = np.argsort(f, kind="stable")
    starts = np.searchsorted(f[order], np.arange(model.vertex_count + 1))
    return starts, face_id[order]


def _faces_of(ctx: _FaceContext, verts: np.ndarray) -> np.ndarray:
    starts, fids = ctx.vert_faces
    if len(verts) == 0:
        return np.zeros(0, np.int64)
    verts = verts[(verts >= 0) & (verts < len(starts) - 1)]
    parts = [fids[starts[v]:starts[v + 1]] for v in verts]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def _build_context(model: Model) -> _FaceContext:
    notes: list[str] = []
    P = model.positions.astype(np.float64)
    faces = model.faces.astype(np.int64)
    hidden = _hidden_materials(model)
    fm = _face_material(model)
    face_hidden = np.zeros(len(faces), bool)
    if len(hidden) and len(faces):
        face_hidden = (fm >= 0) & hidden[np.clip(fm, 0, len(hidden) - 1)]
    try:
        fr = _head_frame(model)
    except ValueError as e:
        notes.append(str(e))
        fr = None
    top = bottom = float("nan")
    if fr is not None:
        try:
            hb = suggest_head_bounds(model)
            top, bottom = hb.top, hb.bottom
        except ValueError as e:  # pragma: no cover - _head_frame already passed
            notes.append(str(e))
    eyes: dict[str, _Eye] = {}
    eye_sets: dict[str, np.ndarray] = {}
    if fr is not None:
        for side, b in fr.eye_bones.items():
            w = _skin_weight(model, _descendants(model, b))
            eye_sets[side] = w >= 0.5
        vm = _vertex_material(model)
        eye_mat = _material_flags(model, _EYE_MATERIAL_WORDS, _NOT_EYE_WORDS)
        for side, sign in (("left", 1.0), ("right", -1.0)):
            s = eye_sets.get(side)
            if s is None or s.sum() < 3:
                mat_ok = np.zeros(model.vertex_count, bool)
                if eye_mat.any():
                    ok = vm >= 0
                    mat_ok[ok] = eye_mat[vm[ok]]
                s = mat_ok & fr.head_mask & (sign * (P[:, 0] - fr.center_x) > 0)
                if s.sum() >= 3:
                    notes.append(f"{side} eye found by material name")
            eye_sets[side] = s
    any_eye = np.zeros(model.vertex_count, bool)
    for s in eye_sets.values():
        any_eye |= s
    eye_face_any = any_eye[faces].all(axis=1) if len(faces) else np.zeros(0, bool)
    occluder = ~eye_face_any & ~face_hidden
    if fr is not None and len(faces):
        occluder &= fr.head_mask[faces].any(axis=1)
    scale = fr.rx if fr is not None else 1.0
    eps = 1e-3 * scale
    for side, s in eye_sets.items():
        ef = faces[s[faces].all(axis=1) & ~face_hidden] if len(faces) else np.zeros((0, 3), np.int64)
        if len(ef) == 0:
            continue
        t = P[ef]
        area = 0.5 * np.abs((t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1]) - (t[:, 2, 0] - t[:, 0, 0]) * (t[:, 1, 1] - t[:, 0, 1]))
        bary = np.array([[1 / 3, 1 / 3, 1 / 3], [0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6]])
        samples = np.einsum("sk,tkd->tsd", bary, t).reshape(-1, 3)
        weights = np.repeat(area / 4, 4)
        keep = weights > 0
        samples, weights = samples[keep], weights[keep]
        if len(samples) > 1600:
            step = int(math.ceil(len(samples) / 1600))
            samples, weights = samples[::step], weights[::step] * step
        lo, hi = samples.min(axis=0), samples.max(axis=0)
        grow = np.array([0.5, 0.5]) * (hi[:2] - lo[:2])
        oc = occluder.copy()
        if len(faces):
            ft = P[faces]
            flo, fhi = ft[:, :, :2].min(axis=1), ft[:, :, :2].max(axis=1)
            oc &= (fhi[:, 0] >= lo[0] - grow[0]) & (flo[:, 0] <= hi[0] + grow[0]) & (fhi[:, 1] >= lo[1] - grow[1]) & (flo[:, 1] <= hi[1] + grow[1])
        vis = ~_covered(P[faces[oc]], samples, eps)
        if vis.sum() < 4 or weights[vis].sum() <= 0:
            notes.append(f"{side} eye: no visible eye surface in the rest pose")
            continue
        samples, weights = samples[vis], weights[vis]
        x0, y0 = np.percentile(samples[:, 0], 2), np.percentile(samples[:, 1], 2)
        x1, y1 = np.percentile(samples[:, 0], 98), np.percentile(samples[:, 1], 98)
        w, h = x1 - x0, y1 - y0
        region = (x0 - 0.5 * w, x1 + 0.5 * w, y0 - 0.35 * h, y1 + 0.45 * h)
        if fr is not None:  # never cross the face's centre line
            if side == "left":
                region = (max(region[0], fr.center_x), region[1], region[2], region[3])
            else:
                region = (region[0], min(region[1], fr.center_x), region[2], region[3])
        eyes[side] = _Eye(side, samples, weights, (x0, x1, y0, y1), region)
    eye_regions = {side: e.region for side, e in eyes.items()}
    eye_height = float(np.mean([e.height for e in eyes.values()])) if eyes else float("nan")
    mouth_region = None
    mouth_y = None
    eye_boxes: dict = {}
    if fr is not None and np.isfinite(top):
        eye_y = fr.eye_y
        if eyes:
            eye_y = float(np.mean([e.center[1] for e in eyes.values()]))
        if eye_y is None or not bottom < eye_y < top:
            eye_y = bottom + 0.42 * (top - bottom)
            notes.append("eye level estimated from the head bounds")
        H = top - bottom
        if not np.isfinite(eye_height):
            eye_height = 0.12 * H
        for side, sign in (("left", 1.0), ("right", -1.0)):
            other = "right" if side == "left" else "left"
            if side not in eye_regions and other in eyes:
                # mirror the other eye about the head's centre line
                x0, x1, y0, y1 = eyes[other].region
                cxh = fr.center_x
                eye_regions[side] = (2 * cxh - x1, 2 * cxh - x0, y0, y1)
                x0, x1, y0, y1 = eyes[other].box
                eye_boxes[side] = (2 * cxh - x1, 2 * cxh - x0, y0, y1)
                notes.append(f"{side} eye region mirrored from the {other} eye")
            elif side not in eye_regions:
                xa, xb = fr.center_x + sign * 0.05 * fr.rx, fr.center_x + sign * 0.8 * fr.rx
                eye_regions[side] = (min(xa, xb), max(xa, xb), eye_y - 0.1 * H, eye_y + 0.12 * H)
                xa, xb = fr.center_x + sign * 0.15 * fr.rx, fr.center_x + sign * 0.6 * fr.rx
                eye_boxes[side] = (min(xa, xb), max(xa, xb), eye_y - 0.05 * H, eye_y + 0.05 * H)
        half = 0.45 * fr.rx
        if len(eyes) == 2:
            half = 0.55 * abs(eyes["left"].center[0] - eyes["right"].center[0])
        y_hi = eye_y - 0.3 * (eye_y - bottom)
        mouth_region = (fr.center_x - half, fr.center_x + half, bottom, y_hi)
        mouth_y = bottom + 0.5 * (y_hi - bottom)
    return _FaceContext(fr, top, bottom, eyes, eye_regions, eye_height, mouth_region, mouth_y,
                        occluder, _vertex_faces(model), notes, eye_boxes, any_eye)


_CONTEXT_CACHE: dict = {}


def _context(model: Model) -> _FaceContext:
    """The face context of ``model``, cached on a fingerprint of its geometry."""
    key = (
        id(model), model.positions.shape, hash(np.ascontiguousarray(model.positions).tobytes()),
        hash(np.ascontiguousarray(model.faces).tobytes()), hash(np.ascontiguousarray(model.bone_indices).tobytes()),
        hash(np.ascontiguousarray(model.bone_weights).tobytes()),
        tuple((b.name, b.parent, tuple(b.position)) for b in model.bones),
        tuple((m.name, m.face_count, float(m.diffuse[3])) for m in model.materials),
    )
    ctx = _CONTEXT_CACHE.get(key)
    if ctx is None:
        if len(_CONTEXT_CACHE) > 8:
            _CONTEXT_CACHE.clear()
        ctx = _CONTEXT_CACHE[key] = _build_context(model)
    return ctx


# ---------------------------------------------------------------------------
# Morph analysis
# ---------------------------------------------------------------------------


def _sweep_closure(P: np.ndarray, d: np.ndarray, box, cols: int = 8, rows: int = 16) -> float:
    """Estimated closure of an eye whose surface is unknown or hidden: the
    fraction of its opening ``box`` (x0, x1, y0, y1) swept by moving vertices.

    Each moved vertex sweeps the vertical interval between its rest and
    morphed Y; the opening is cut into ``cols`` columns and ``rows`` levels
    (inset by 10% of its height), and a cell counts as covered when a vertex
    of its column sweeps over it. A blink (the upper lid sweeping down over the
    eye) or a smiling closure (upper lid down, lower lid up, meeting) covers
    ~all cells; brows and iris motion cover few, squints part. P, d: (K,3) rest
    positions and displacements of the moved non-eye vertices."""
    x0, x1, y0, y1 = box
    h = y1 - y0
    if len(P) == 0 or x1 <= x0 or h <= 0:
        return 0.0
    ys = np.linspace(y0 + 0.1 * h, y1 - 0.1 * h, rows)
    # only long sweeps: eyelids travel a good part of the opening, while
    # small deformations of the eye surface itself (when it is not known) do not
    sel = (P[:, 0] >= x0) & (P[:, 0] <= x1) & (np.abs(d[:, 1]) >= 0.2 * h)
    if not sel.any():
        return 0.0
    y = P[sel, 1]
    lo = np.minimum(y, y + d[sel, 1])
    hi = np.maximum(y, y + d[sel, 1])
    col = np.clip(((P[sel, 0] - x0) / (x1 - x0) * cols).astype(int), 0, cols - 1)
    cov = np.zeros((cols, rows), bool)
    for c in range(cols):
        m = col == c
        if m.any():
            cov[c] = ((lo[m, None] <= ys[None, :]) & (hi[m, None] >= ys[None, :])).any(axis=0)
    # a column without vertices of its own (sparse meshes) is covered where both neighbours are
    fill = cov.copy()
    fill[1:-1] |= cov[:-2] & cov[2:]
    return float(fill.mean())


def _in_box(p: np.ndarray, box) -> np.ndarray:
    x0, x1, y0, y1 = box
    return (p[:, 0] >= x0) & (p[:, 0] <= x1) & (p[:, 1] >= y0) & (p[:, 1] <= y1)


def _analyse(model: Model, index: int, ctx: _FaceContext) -> tuple[MorphAnalysis, np.ndarray, np.ndarray]:
    m = model.morphs[index]
    a = MorphAnalysis(name=m.name, index=index, kind=m.kind.label, panel=int(m.panel),
                      normalized_name=normalize_morph_name(m.name))
    hint = name_hint(m.name, m.name_en)
    if hint is not None:
        kind, side, strength = hint
        a.name_hint = kind if side is None else f"{kind}:{side}"
        a.hint_side = side
    idx, d, notes = _displacement(model, index)
    a.notes.extend(notes)
    a.vertex_count = int(len(idx))
    if len(idx) == 0:
        if m.kind in (MorphKind.VERTEX, MorphKind.GROUP, MorphKind.BONE):
            a.notes.append("moves nothing")
        return a, idx, d
    P = model.positions[idx].astype(np.float64)
    mag = np.linalg.norm(d, axis=1)
    total = float(mag.sum())
    # eye-region motion
    masses = {}
    in_eye = np.zeros(len(idx), bool)
    for side, box in ctx.eye_regions.items():
        sel = _in_box(P, box)
        in_eye |= sel
        masses[side] = float(mag[sel].sum())
    L, R = masses.get("left", 0.0), masses.get("right", 0.0)
    if total > 0:
        a.eye_score = (L + R) / total
    if L + R > 0:
        a.balance = (L - R) / (L + R)
        de = d[in_eye]
        down = float(np.clip(-de[:, 1], 0, None).sum())
        up = float(np.clip(de[:, 1], 0, None).sum())
        a.down_score = down / max(float(mag[in_eye].sum()), 1e-12)
        a.up_share = up / max(up + down, 1e-12)
        if np.isfinite(ctx.eye_height):
            a.depth = float(max(0.0, -de[:, 1].min())) / ctx.eye_height
    # closure of each eye: moved non-eye triangles covering the visible eye;
    # for an eye without usable geometry (none found, or hidden by hair at
    # rest), an estimate from how far the lids travel down over its region
    # (a full blink travels about one eye height)
    tri = None
    estimated = False
    for side in ("left", "right"):
        e = ctx.eyes.get(side)
        if e is not None:
            if tri is None:
                fids = _faces_of(ctx, idx)
                fids = fids[ctx.occluder[fids]]
                Q = model.positions.astype(np.float64).copy()
                Q[idx] += d
                tri = Q[model.faces[fids].astype(np.int64)] if len(fids) else np.zeros((0, 3, 3))
            scale = ctx.frame.rx if ctx.frame is not None else 1.0
            cov = _covered(tri, e.samples, 1e-3 * scale)
            c = float(e.weights[cov].sum() / e.weights.sum())
        elif side in ctx.eye_boxes:
            keep = ~ctx.eye_vertices[idx] if ctx.eye_vertices is not None else np.ones(len(idx), bool)
            # calibrated so that a swept share >= 0.85 reads as shut and <= 0.5
            # as open (Gene with its eye geometry hidden: closers sweep
            # 0.85-0.91, squints 0.62, other eye morphs less)
            c = float(np.clip((_sweep_closure(P[keep], d[keep], ctx.eye_boxes[side]) - 0.5) / 0.35, 0.0, 1.0))
            estimated = estimated or c > 0
        else:
            continue
        if side == "left":
            a.closure_left = c
        else:
            a.closure_right = c
    if estimated:
        a.notes.append("closure estimated from eyelid travel (no eye geometry)")
    # mouth
    if ctx.mouth_region is not None and total > 0:
        sel = _in_box(P, ctx.mouth_region)
        if sel.any():
            frac = float(mag[sel].sum()) / total
            dm = d[sel]
            pm = P[sel]
            below = pm[:, 1] < ctx.mouth_y + 0.25 * (ctx.mouth_region[3] - ctx.mouth_region[2])
            # opening: the lower part goes down (jaw, lower lip); small dx/dz share
            down_low = float(np.clip(-dm[below, 1], 0, None).sum()) if below.any() else 0.0
            up_low = float(np.clip(dm[below, 1], 0, None).sum()) if below.any() else 0.0
            opening = (down_low - up_low) / max(float(np.linalg.norm(dm, axis=1).sum()), 1e-12)
            cxm = ctx.frame.center_x
            sym = 1.0
            ms = np.linalg.norm(dm, axis=1)
            if ms.sum() > 0:
                bal = float(((pm[:, 0] - cxm) * ms).sum() / (np.abs(pm[:, 0] - cxm) * ms).sum().clip(1e-12))
                sym = 1.0 - min(1.0, abs(bal))
            H = ctx.top - ctx.bottom
            amp = float(np.clip(-dm[:, 1], 0, None).max()) / max(0.04 * H, 1e-9)
            a.mouth_score = float(np.clip(frac, 0, 1) * np.clip(opening * 2.0, 0, 1) * sym * min(1.0, amp))
    # side
    cl, cr = a.closure_left or 0.0, a.closure_right or 0.0
    if max(cl, cr) >= CLOSED:
        if cl >= CLOSED and cr >= CLOSED:
            a.side = "both"
        else:
            a.side = "left" if cl > cr else "right"
    elif L + R > 0 and a.eye_score > 0.05:
        a.side = "left" if a.balance > 0.6 else "right" if a.balance < -0.6 else "both"
    return a, idx, d


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, x))))


_EYE_SLOTS = {
    # slot: (side, type)
    "wink_left": ("left", "plain"),
    "wink_right": ("right", "plain"),
    "wink_both": ("both", "plain"),
    "smile_wink_left": ("left", "smile"),
    "smile_wink_right": ("right", "smile"),
    "smile_wink_both": ("both", "smile"),
}
_KIND_FIT = {
    "plain": {"blink": 1.0, "wink": 1.0, "wink2": 1.0, "smile": 0.0},
    "smile": {"smile": 1.0, "wink": 1.0, "wink2": 1.0, "blink": 0.0},
}


def _morph_fingerprint(model: Model) -> tuple:
    out = []
    for m in model.morphs:
        parts = [m.name, m.name_en, int(m.kind), len(m.indices), hash(np.asarray(m.indices).tobytes())]
        for arr in (m.offsets, m.rotations, m.weights):
            parts.append(None if arr is None else hash(np.ascontiguousarray(arr).tobytes()))
        out.append(tuple(parts))
    return tuple(out)


def _all_analyses(model: Model) -> list[MorphAnalysis]:
    """Analyses of every morph of ``model`` with the model-level refinements
    (smile score, category), cached per model state."""
    ctx = _context(model)
    key = _morph_fingerprint(model)
    cache = ctx.analyses_cache
    if cache is not None and cache[0] == key:
        return cache[1]
    out = [_analyse(model, i, ctx)[0] for i in range(len(model.morphs))]
    _classify(out)
    ctx.analyses_cache = (key, out)
    return out


def _classify(analyses: list[MorphAnalysis]) -> None:
    """Smile score and category of every analysis (in place).

    Closers (an eye covered >= CLOSED, eyelid motion mostly downward) get a
    smile score from the share of upward motion (the lower lid rising, ~0.3
    for 笑い-like closures, ~0.1 for blinks) and, when the model's closers of
    that eye differ in depth, from the lid travel relative to the eye's blink
    depth (the median travel of its plain-looking closers; a smiling lid stops
    higher: ~0.6-0.75 of a blink). Names give a weak prior (笑い/smile up,
    まばたき/blink down)."""
    closers = [a for a in analyses if a.closure >= CLOSED and a.down_score >= 0.4]

    def p_up(a):
        return _sigmoid((a.up_share - 0.2) / 0.04)

    def shuts(a, side):
        return ((a.closure_left if side == "left" else a.closure_right) or 0.0) >= CLOSED

    # the blink depth of each eye: the median lid travel of its plain-looking
    # closers (robust against over-driven group morphs), when the eye also has
    # closers of clearly different depth
    blink_depth = {}
    for side in ("left", "right"):
        mine = [a for a in closers if shuts(a, side)]
        plain = [a.depth for a in mine if p_up(a) < 0.5]
        ds = [a.depth for a in mine]
        if plain and min(ds) > 0 and max(ds) > 1.25 * min(ds):
            blink_depth[side] = float(np.median(plain))
    for a in analyses:
        if a.mouth_score >= 0.25 and a.eye_score < 0.3:
            a.category = "mouth_open"
        if a not in closers:
            continue
        p = p_up(a)
        rel = [a.depth / blink_depth[s] for s in ("left", "right") if shuts(a, s) and blink_depth.get(s, 0) > 0]
        if rel:
            p = 0.5 * p + 0.5 * _sigmoid((0.85 - float(np.mean(rel))) / 0.07)
        kind = (a.name_hint or "").split(":")[0]
        if kind == "smile":
            p = 0.8 * p + 0.2
        elif kind == "blink":
            p = 0.8 * p
        a.smile_score = float(p)
        a.category = "smile_close" if p >= 0.5 else "close"


def analyse_morph(model: Model, index: int) -> MorphAnalysis:
    """Analyse morph ``index`` of ``model``: which eye it closes (occlusion of
    the visible eye surface, the character's left = +X), how (downward motion,
    smile score), whether it opens the mouth, and what its name suggests.

    See :class:`MorphAnalysis` for the fields and units, and the module
    docstring for the method. The smile score compares the morph with the
    model's other closing morphs, so the whole model is analysed once and
    cached. Raises IndexError for a bad index."""
    if not 0 <= index < len(model.morphs):
        raise IndexError(f"morph index {index} out of range (model has {len(model.morphs)} morphs)")
    return _copy_analysis(_all_analyses(model)[index])


def _copy_analysis(a: MorphAnalysis) -> MorphAnalysis:
    from dataclasses import replace

    return replace(a, notes=list(a.notes))


def _eye_slot_fit(a: MorphAnalysis, side: str, typ: str) -> float:
    """Geometric fit [0,1] of analysis ``a`` to an eye slot."""
    cl, cr = a.closure_left or 0.0, a.closure_right or 0.0
    if a.down_score < 0.4:
        return 0.0
    if side == "left":
        sf = cl * (1 - cr) if cl >= CLOSED else 0.0
    elif side == "right":
        sf = cr * (1 - cl) if cr >= CLOSED else 0.0
    else:
        sf = cl * cr if min(cl, cr) >= CLOSED else 0.0
    tf = a.smile_score if typ == "smile" else 1.0 - a.smile_score
    purity = min(1.0, a.eye_score / 0.9)
    return float(sf * tf * purity)


def _name_bonus(a: MorphAnalysis, model: Model, side: str | None, typ: str | None) -> float:
    m = model.morphs[a.index]
    hint = name_hint(m.name, m.name_en)
    if hint is None:
        return 0.0
    kind, hside, strength = hint
    if typ == "mouth":
        return strength if kind == "mouth_a" else 0.0
    if kind == "mouth_a" or hside != side:
        return 0.0
    return strength * _KIND_FIT[typ].get(kind, 0.0)


def suggest_morphs(model: Model) -> MorphSuggestion:
    """Suggest which morphs fill the seven expression slots of ``model``.

    Eye slots: a morph qualifies when it shuts that eye (closure >= 0.6, the
    other eye open for one-eye slots, both shut for ``*_both``), moves the
    eyelids mostly down, and its smile score matches the slot (``smile_*``:
    smiling closure like 笑い; the others: plain closure like まばたき). The
    geometric fit (closure x type x eye-region purity) ranks the candidates;
    the name adds at most 0.25 (standard names such as ウィンク２ or まばたき
    the most), so among geometrically equal morphs the conventional name
    wins, but a name never puts a morph on the wrong side. One morph fills at
    most one of ``wink_X``/``smile_wink_X``.

    Mouth: the morph that opens the mouth (see :class:`MorphAnalysis`
    ``mouth_score``), strongly preferring the name あ (vowel shapes all open
    the mouth; the name says which one is "a").

    Confidence per slot in [0, 1]: the geometric fit scaled by name agreement
    (x0.8 without a supporting name, x0.85 when the name points elsewhere,
    x0.6 when closure had to be estimated without eye geometry); 0 for an
    empty slot. Never raises for a model without a 頭 bone or eyes: slots stay
    empty (closure unknown) and ``notes`` says why.
    """
    analyses = _all_analyses(model)
    ctx = _context(model)
    notes = list(ctx.notes)
    if not ctx.eyes:
        notes.append("no eye geometry found: eye closure estimated from eyelid travel" if ctx.eye_regions
                     else "no head found: eye slots cannot be suggested")
    ranked: dict[str, list[int]] = {}
    assignment = MorphAssignment()
    confidence = {slot: 0.0 for slot in EXPRESSION_SLOTS}
    scores: dict[str, list[tuple[float, float, float, MorphAnalysis]]] = {}
    for slot, (side, typ) in _EYE_SLOTS.items():
        rows = []
        for a in analyses:
            g = _eye_slot_fit(a, side, typ)
            if g < 0.25:
                continue
            bonus = _name_bonus(a, model, side, typ)
            eye_panel = 0.01 if a.panel == MorphPanel.EYE else 0.0
            rows.append((g + 0.25 * bonus + eye_panel, g, bonus, a))
        rows.sort(key=lambda r: (-r[0], r[3].index))
        scores[slot] = rows
        ranked[slot] = [r[3].index for r in rows]
    # one morph per side pair: wink_X vs smile_wink_X
    for side in ("left", "right", "both"):
        plain, smile = f"wink_{side}", f"smile_wink_{side}"
        choice = {}
        for slot in (plain, smile):
            if scores[slot]:
                choice[slot] = 0
        if plain in choice and smile in choice and scores[plain][0][3].index == scores[smile][0][3].index:
            a = scores[plain][0][3]
            loser = plain if a.smile_score >= 0.5 else smile
            rows = scores[loser]
            nxt = next((k for k, r in enumerate(rows) if r[3].index != a.index), None)
            if nxt is None:
                del choice[loser]
            else:
                choice[loser] = nxt
        for slot, k in choice.items():
            total, g, bonus, a = scores[slot][k]
            setattr(assignment, slot, model.morphs[a.index].name)
            side_, typ = _EYE_SLOTS[slot]
            conf = g * (1.0 if bonus >= 0.5 else 0.8)
            if a.hint_side is not None and a.name_hint and not a.name_hint.startswith("mouth") and a.hint_side != side_:
                conf *= 0.85
                notes.append(f"{slot}: {a.name!r} is named for the {a.hint_side} side but closes the {side_} eye(s)")
            if any("estimated" in n for n in a.notes):
                conf *= 0.6
            confidence[slot] = float(np.clip(conf, 0.0, 1.0))
    # mouth
    mouth_rows = []
    cands = [a for a in analyses if a.mouth_score >= 0.1 and a.eye_score < 0.3]
    if cands:
        mass = {}
        for a in cands:
            idx, d, _ = _displacement(model, a.index)
            P = model.positions[idx].astype(np.float64)
            sel = _in_box(P, ctx.mouth_region)
            mass[a.index] = float(np.linalg.norm(d[sel], axis=1).sum())
        top_mass = max(mass.values()) or 1.0
        for a in cands:
            g = a.mouth_score * math.sqrt(mass[a.index] / top_mass)
            bonus = _name_bonus(a, model, None, "mouth")
            mouth_rows.append((g + 1.0 * bonus + (0.01 if a.panel == MorphPanel.MOUTH else 0.0), g, bonus, a))
        mouth_rows.sort(key=lambda r: (-r[0], r[3].index))
        ranked["mouth"] = [r[3].index for r in mouth_rows]
        total, g, bonus, a = mouth_rows[0]
        if g >= 0.1:
            assignment.mouth = model.morphs[a.index].name
            conf = (0.6 + 0.35 * min(1.0, g / 0.4)) if bonus >= 0.9 else min(0.8, g) * (0.6 + 0.4 * bonus)
            confidence["mouth"] = float(np.clip(conf, 0.0, 1.0))
    if assignment.mouth is None:
        # a morph named あ whose geometry we could not read (e.g. no head bone)
        for a in analyses:
            if a.name_hint == "mouth_a" and _name_bonus(a, model, None, "mouth") >= 0.9 and a.vertex_count > 0:
                assignment.mouth = model.morphs[a.index].name
                confidence["mouth"] = 0.4
                ranked.setdefault("mouth", [a.index])
                break
    keep = [
        _copy_analysis(a) for a in analyses
        if a.closure >= 0.3 or a.eye_score >= 0.3 or a.mouth_score >= 0.1 or a.name_hint is not None
    ]
    result = MorphSuggestion(assignment=assignment, confidence=confidence, analysis=keep, notes=notes)
    result.ranked = {slot: ranked.get(slot, []) for slot in EXPRESSION_SLOTS}
    result._by_index = {a.index: a for a in keep}
    for a in analyses:
        result._by_index.setdefault(a.index, _copy_analysis(a))
    return result
