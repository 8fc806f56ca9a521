"""Tests of mmdsynth.annotate.suggest: head bounds and expression-morph suggestions.

Three kinds of models:

* tiny hand-built faces (:func:`face_model`, below): a skull with a pointed
  chin, a hair cap, long back hair and sidelocks hanging far below the chin
  (skinned to 頭 directly or to hair bones), an optional tall ahoge, two eyes
  with eyelids that close plainly or smiling, a mouth and brows; every
  geometric fact the suggestions should find is known exactly;
* the example character (:mod:`mmdsynth.mmd.example`), when importable;
* Gene (shared test data, PMX and PMD), a real model with 184 morphs.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest

from mmdsynth.annotate.suggest import (
    HeadBounds,
    MorphAnalysis,
    MorphSuggestion,
    analyse_morph,
    name_hint,
    normalize_morph_name,
    suggest_head_bounds,
    suggest_morphs,
)
from mmdsynth.mmd.model import Bone, Material, Model, Morph, MorphKind, MorphPanel
from mmdsynth.mmd.schema import EXPRESSION_SLOTS, MorphAssignment

from modelkit import quad_model

# ---------------------------------------------------------------------------
# A tiny parametric face
# ---------------------------------------------------------------------------

HEAD_CY, HEAD_RX, HEAD_RZ, HEAD_RY_UP, HEAD_RY_LO, CHIN_FWD = 18.0, 1.8, 1.8, 2.0, 2.4, 1.0
CHIN_Y = HEAD_CY - HEAD_RY_LO  # 15.6: the chin tip
HAIR_GAP = 0.15
HAIR_TOP = HEAD_CY + HEAD_RY_UP + HAIR_GAP  # 20.15: top of the hair cap
EYE_X, EYE_Y, EYE_HW, EYE_HH = 0.75, 17.3, 0.35, 0.42
LONG_HAIR_END = 13.0
SIDELOCK_END = 14.5


def _profile(t):
    """(y, half width, half depth, centre z) of the skull ring at t in [0,2]
    (0 top, 1 equator, 2 chin tip; the jaw narrows to a point pulled forward)."""
    t = np.asarray(t, np.float64)
    th = np.clip(t, 0, 1) * np.pi / 2
    s = np.clip(t - 1, 0, 1)
    k = np.cos(s * np.pi / 2).clip(0)
    up = t <= 1
    y = np.where(up, HEAD_CY + HEAD_RY_UP * np.cos(th), HEAD_CY - HEAD_RY_LO * s)
    w = np.where(up, HEAD_RX * np.sin(th), HEAD_RX * k**0.8)
    d = np.where(up, HEAD_RZ * np.sin(th), HEAD_RZ * k**0.7)
    c = np.where(up, 0.0, -CHIN_FWD * s**2)
    return y, w, d, c


def _t_of_y(y):
    y = np.asarray(y, np.float64)
    up = np.arccos(np.clip((y - HEAD_CY) / HEAD_RY_UP, 0, 1)) / (np.pi / 2)
    lo = 1 + np.clip((HEAD_CY - y) / HEAD_RY_LO, 0, 1)
    return np.where(y >= HEAD_CY, up, lo)


def face_z(x, y):
    """Z of the skull's front surface at (x, y)."""
    _, w, d, c = _profile(_t_of_y(y))
    r = np.clip(1 - (np.asarray(x) / np.maximum(w, 1e-6)) ** 2, 0, 1)
    return c - d * np.sqrt(r)


class _Builder:
    def __init__(self):
        self.pos: list[np.ndarray] = []
        self.skin: list[np.ndarray] = []  # (n,2) bone index, (n,2) weights
        self.faces: dict[str, list[np.ndarray]] = {}
        self.n = 0
        self.parts: dict[str, np.ndarray] = {}

    def grid(self, name, P, material, bones, weights=None):
        """Add a (R,C,3) grid of vertices (quads split in two triangles) skinned
        to ``bones`` (one bone or (R,C) bone indices), returns (R,C) indices."""
        R, C = P.shape[:2]
        idx = self.n + np.arange(R * C).reshape(R, C)
        self.pos.append(P.reshape(-1, 3))
        b = np.broadcast_to(np.asarray(bones), (R, C)).reshape(-1)
        w = np.ones(R * C) if weights is None else np.broadcast_to(np.asarray(weights, float), (R, C)).reshape(-1)
        self.skin.append((b, w))
        self.n += R * C
        f = []
        for r in range(R - 1):
            for c in range(C - 1):
                a, bb, cc, d = idx[r, c], idx[r, c + 1], idx[r + 1, c + 1], idx[r + 1, c]
                f += [(a, bb, cc), (a, cc, d)]
        self.faces.setdefault(material, []).append(np.array(f, np.int64).reshape(-1, 3))
        self.parts[name] = idx
        return idx


def _arc(u, cy):
    """The '^' line of a smiling closed eye (higher in the middle)."""
    return cy - 0.12 + 0.25 * (1 - u**2)


def face_model(*, hair_bones=False, ahoge=0.0, eye_bones=True, long_hair=True, morphs=(),
               hair_material="髪", eye_material="目", lid_bones=False, head_bone="頭", neck=True,
               bang=False) -> Model:
    """A small anime-like head (+ neck), in MMD space, facing -Z.

    * chin tip at (0, 15.6, -1.0), skull top 20.0, hair cap top 20.15;
    * long back hair (z = +1.95) down to y 13.0 and sidelocks (x = +-1.9) down
      to y 14.5, skinned to 頭 (``hair_bones=False``) or to a bone 髪 under 頭;
    * ``ahoge``: height of a thin lock sticking up from the crown (0: none);
    * ``bang``: a lock of hair hanging in front of the right eye, hiding it;
    * eyes at (+-0.75, 17.3): quads skinned to 左目/右目 (or to 頭 when
      ``eye_bones`` is False), material ``eye_material``; upper and lower
      eyelids in front of them (skinned to 頭, or upper lids to bones
      左まぶた/右まぶた when ``lid_bones``);
    * ``morphs``: (name, effect) pairs; effect is one of "close_L", "close_R",
      "close_LR" (upper lid down over the whole eye), "smile_L", "smile_R",
      "smile_LR" (upper lid down to a '^' arc, lower lid up to it), "mouth_a"
      (mouth opens), "brow" (brows down), "lid_bone_L"/"lid_bone_R" (a bone
      morph moving the eyelid bone down; needs ``lid_bones``), or
      ("group", [(member index, weight), ...]) for a group morph.
    """
    b = _Builder()
    bones = [
        Bone(name="センター", position=(0.0, 0.0, 0.0), parent=-1),
        Bone(name="上半身", position=(0.0, 11.0, 0.0), parent=0),
        Bone(name="首", position=(0.0, 15.0, 0.2), parent=1),
        Bone(name=head_bone, position=(0.0, 16.6, 0.1), parent=2),
    ]
    HEAD = 3
    L_EYE = R_EYE = HEAD
    if eye_bones:
        bones.append(Bone(name="左目", position=(EYE_X, EYE_Y, -1.0), parent=HEAD))
        bones.append(Bone(name="右目", position=(-EYE_X, EYE_Y, -1.0), parent=HEAD))
        L_EYE, R_EYE = len(bones) - 2, len(bones) - 1
    HAIR = AHOGE = HEAD
    if hair_bones:
        bones.append(Bone(name="髪", position=(0.0, 19.0, 0.0), parent=HEAD))
        HAIR = len(bones) - 1
        bones.append(Bone(name="アホ毛", position=(0.0, 20.0, 0.0), parent=HAIR))
        AHOGE = len(bones) - 1
    LID = {"L": HEAD, "R": HEAD}
    if lid_bones:
        bones.append(Bone(name="左まぶた", position=(EYE_X, EYE_Y + EYE_HH, -1.2), parent=HEAD))
        bones.append(Bone(name="右まぶた", position=(-EYE_X, EYE_Y + EYE_HH, -1.2), parent=HEAD))
        LID = {"L": len(bones) - 2, "R": len(bones) - 1}

    # skull (rings from the top to the chin tip; one connected mesh)
    t = np.concatenate([np.linspace(0, 1, 11), np.linspace(1, 2, 13)[1:]])
    phi = np.linspace(0, 2 * np.pi, 33)
    y, w, d, c = _profile(t[:, None])
    a = phi[None, :] - np.pi  # 0 at the front
    skull = np.stack(np.broadcast_arrays(w * np.sin(a), y, c - d * np.cos(a)), -1)
    b.grid("skull", skull, "肌", HEAD)
    # hair cap over the top (t <= 0.9), a little outside the skull
    tc = np.linspace(0, 0.9, 9)
    th = tc[:, None] * np.pi / 2
    cap = np.stack(np.broadcast_arrays((HEAD_RX + HAIR_GAP) * np.sin(th) * np.sin(a), HEAD_CY + (HEAD_RY_UP + HAIR_GAP) * np.cos(th),
                                       -(HEAD_RZ + HAIR_GAP) * np.sin(th) * np.cos(a)), -1)
    b.grid("cap", cap, hair_material, HAIR)
    if long_hair:
        xs = np.linspace(-1.5, 1.5, 7)
        ys = np.linspace(18.5, LONG_HAIR_END, 12)
        X, Y = np.meshgrid(xs, ys)
        b.grid("back", np.stack([X, Y, np.full_like(X, 1.95)], -1), hair_material, HAIR)
        for sgn in (1, -1):
            zs = np.linspace(-0.7, 0.3, 3)
            ys = np.linspace(18.2, SIDELOCK_END, 8)
            Z, Y = np.meshgrid(zs, ys)
            b.grid(f"side{sgn}", np.stack([np.full_like(Z, sgn * 1.9), Y, Z], -1), hair_material, HAIR)
    if bang:
        X, Y = np.meshgrid(np.linspace(-1.25, -0.25, 5), np.linspace(18.4, 16.7, 6))
        b.grid("bang", np.stack([X, Y, face_z(X, Y) - 0.35], -1), hair_material, HAIR)
    if ahoge > 0:
        s = np.linspace(0, 1, 7)[:, None]
        xs = np.array([-0.04, 0.04])[None, :]
        P = np.stack(np.broadcast_arrays(xs + 0.1 * s, HEAD_CY + HEAD_RY_UP + 0.1 + ahoge * s, -0.3 * s + 0 * xs), -1)
        b.grid("ahoge", P, hair_material, AHOGE)
    if neck:
        ang = np.linspace(0, 2 * np.pi, 17)
        ys = np.array([14.0, 15.0, 16.2])[:, None]
        P = np.stack(np.broadcast_arrays(0.55 * np.sin(ang), ys, 0.3 - 0.55 * np.cos(ang)), -1)
        bn = np.array([[1], [2], [HEAD]]) * np.ones((1, 17), int)
        b.grid("neck", P, "肌2", bn, weights=np.array([[1.0], [1.0], [0.6]]) * np.ones((1, 17)))

    # eyes, eyelids, brows
    u = np.linspace(-1, 1, 7)
    ul = np.linspace(-1.15, 1.15, 9)
    lid_rows = np.linspace(0, 1, 4)[:, None]
    targets: dict[str, dict[str, np.ndarray]] = {}
    for side, sgn, eb in (("L", 1.0, L_EYE), ("R", -1.0, R_EYE)):
        cx = sgn * EYE_X
        X, Y = np.meshgrid(cx + u * EYE_HW, EYE_Y + u * EYE_HH)
        b.grid(f"eye{side}", np.stack([X, Y, face_z(X, Y) - 0.05], -1), eye_material, eb)
        top, bot = EYE_Y + EYE_HH, EYE_Y - EYE_HH
        xs = cx + ul * EYE_HW
        zero = 0.0 * ul[None, :]
        rest_u = top + 0.14 - lid_rows * 0.12 + zero  # rows from the fixed top row to the lash line
        closed_u = top + 0.14 - lid_rows * (top + 0.14 - (bot - 0.04)) + zero
        smile_u = top + 0.14 - lid_rows * (top + 0.14 - _arc(ul, EYE_Y))
        XS = np.broadcast_to(xs, rest_u.shape)

        def at(Yv, off):
            return np.stack([XS, Yv, face_z(XS, Yv) - off], -1)

        lid_bone = np.where(lid_rows > 0, LID[side], HEAD) * np.ones_like(XS, int)
        lid_w = np.ones_like(XS)
        b.grid(f"lid{side}", at(rest_u, 0.12), "まぶた", lid_bone, weights=lid_w)
        rest_l = bot - 0.14 + lid_rows * 0.12 + zero
        smile_l = bot - 0.14 + lid_rows * (_arc(ul, EYE_Y) + 0.03 - (bot - 0.14))
        b.grid(f"low{side}", at(rest_l, 0.12), "まぶた", HEAD)
        targets[side] = {
            "close_up": (at(closed_u, 0.12) - at(rest_u, 0.12)).reshape(-1, 3),
            "smile_up": (at(smile_u, 0.12) - at(rest_u, 0.12)).reshape(-1, 3),
            "smile_low": (at(smile_l, 0.12) - at(rest_l, 0.12)).reshape(-1, 3),
        }
        bx = cx + np.linspace(-0.4, 0.4, 6)
        by = np.array([EYE_Y + 0.75, EYE_Y + 0.82])
        BX, BY = np.meshgrid(bx, by)
        b.grid(f"brow{side}", np.stack([BX, BY, face_z(BX, BY) - 0.05], -1), "眉", HEAD)
    mu = np.linspace(-1, 1, 7)
    MX, MY = np.meshgrid(0.3 * mu, np.linspace(16.25, 16.15, 3))
    b.grid("mouth", np.stack([MX, MY, face_z(MX, MY) - 0.04], -1), "口", HEAD)

    # assemble
    m = Model(name="face")
    m.positions = np.concatenate(b.pos).astype(np.float32)
    n = len(m.positions)
    bi = np.full((n, 4), -1, np.int32)
    bw = np.zeros((n, 4), np.float32)
    bb = np.concatenate([s[0] for s in b.skin])
    ww = np.concatenate([s[1] for s in b.skin])
    bi[:, 0] = bb
    bw[:, 0] = ww
    rest = ww < 1.0  # blended vertices: the remainder goes to 首
    bi[rest, 1] = 2
    bw[rest, 1] = 1.0 - ww[rest]
    m.bone_indices, m.bone_weights = bi, bw
    m.normals = np.tile(np.array([0, 0, -1], np.float32), (n, 1))
    m.uvs = np.zeros((n, 2), np.float32)
    m.deform_types = np.where(rest, 1, 0).astype(np.uint8)
    m.edge_scales = np.ones(n, np.float32)
    faces, mats = [], []
    for name, parts in b.faces.items():
        f = np.concatenate(parts)
        faces.append(f)
        mats.append(Material(name=name, face_count=len(f)))
    m.faces = np.concatenate(faces).astype(np.uint32)
    m.materials = mats
    m.bones = bones

    def vert(effect):
        sides = {"L": ["L"], "R": ["R"], "LR": ["L", "R"]}[effect.split("_")[1]]
        idx, off = [], []
        for s in sides:
            if effect.startswith("close"):
                idx.append(b.parts[f"lid{s}"].reshape(-1))
                off.append(targets[s]["close_up"])
            else:
                idx += [b.parts[f"lid{s}"].reshape(-1), b.parts[f"low{s}"].reshape(-1)]
                off += [targets[s]["smile_up"], targets[s]["smile_low"]]
        return np.concatenate(idx), np.concatenate(off)

    for name, effect in morphs:
        if isinstance(effect, tuple) and effect[0] == "group":
            members = effect[1]
            m.morphs.append(Morph(name=name, panel=MorphPanel.EYE, kind=MorphKind.GROUP,
                                  indices=np.array([i for i, _ in members], np.int32),
                                  weights=np.array([w for _, w in members], np.float32)))
        elif effect == "mouth_a":
            idx = b.parts["mouth"].reshape(-1)
            P = m.positions[idx]
            off = np.zeros((len(idx), 3), np.float32)
            low = P[:, 1] < 16.2
            off[low, 1] = -0.3 * (1 - (P[low, 0] / 0.3) ** 2)
            m.morphs.append(Morph(name=name, panel=MorphPanel.MOUTH, kind=MorphKind.VERTEX,
                                  indices=idx.astype(np.int32), offsets=off))
        elif effect == "brow":
            idx = np.concatenate([b.parts["browL"].reshape(-1), b.parts["browR"].reshape(-1)])
            off = np.tile(np.array([0, -0.15, 0], np.float32), (len(idx), 1))
            m.morphs.append(Morph(name=name, panel=MorphPanel.EYEBROW, kind=MorphKind.VERTEX,
                                  indices=idx.astype(np.int32), offsets=off))
        elif effect.startswith("lid_bone"):
            s = effect[-1]
            travel = (EYE_Y + EYE_HH + 0.02) - (EYE_Y - EYE_HH - 0.04)
            m.morphs.append(Morph(name=name, panel=MorphPanel.EYE, kind=MorphKind.BONE,
                                  indices=np.array([LID[s]], np.int32),
                                  offsets=np.array([[0, -travel, -0.05]], np.float32),
                                  rotations=np.array([[0, 0, 0, 1]], np.float32)))
        else:
            idx, off = vert(effect)
            order = np.argsort(idx)
            m.morphs.append(Morph(name=name, panel=MorphPanel.EYE, kind=MorphKind.VERTEX,
                                  indices=idx[order].astype(np.int32), offsets=off[order].astype(np.float32)))
    return m


STANDARD = (
    ("まばたき", "close_LR"),
    ("笑い", "smile_LR"),
    ("ウィンク", "smile_L"),  # the common MMD convention: ウィンク is the smiling wink
    ("ウィンク右", "smile_R"),
    ("ウィンク２", "close_L"),
    ("ｳｨﾝｸ２右", "close_R"),
    ("あ", "mouth_a"),
    ("怒り", "brow"),
)
STANDARD_EXPECTED = MorphAssignment(
    wink_left="ウィンク２", wink_right="ｳｨﾝｸ２右", wink_both="まばたき",
    smile_wink_left="ウィンク", smile_wink_right="ウィンク右", smile_wink_both="笑い", mouth="あ",
)


# ---------------------------------------------------------------------------
# Head bounds on tiny faces
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("hair_bones", [False, True], ids=["hair-skinned-to-head", "hair-bones"])
def test_head_bounds_long_hair(hair_bones):
    # long back hair and sidelocks hang 2.6 and 1.1 units below the chin and
    # are skinned to 頭 (or its children): they must not become the bottom
    m = face_model(hair_bones=hair_bones, morphs=STANDARD)
    hb = suggest_head_bounds(m)
    assert isinstance(hb, HeadBounds)
    assert hb.bottom == pytest.approx(CHIN_Y, abs=0.02)
    assert hb.top == pytest.approx(HAIR_TOP, abs=0.03)
    assert hb.center_x == 0.0
    assert hb.confidence >= 0.9
    assert hb.height == pytest.approx(hb.top - hb.bottom)
    assert all(isinstance(n, str) for n in hb.notes)


@pytest.mark.parametrize("hair_bones", [False, True])
def test_head_top_ignores_tall_ahoge(hair_bones):
    m = face_model(ahoge=1.5, hair_bones=hair_bones)
    assert m.positions[:, 1].max() > HAIR_TOP + 1.4
    hb = suggest_head_bounds(m)
    assert hb.top == pytest.approx(HAIR_TOP, abs=0.03)
    assert hb.bottom == pytest.approx(CHIN_Y, abs=0.02)
    assert any("protrusion" in n for n in hb.notes)


def test_head_bounds_do_not_need_hair_names():
    # hair found only by geometry (material names say nothing)
    m = face_model(hair_material="mat_a", eye_material="mat_b", ahoge=1.0)
    hb = suggest_head_bounds(m)
    assert hb.top == pytest.approx(HAIR_TOP, abs=0.03)
    assert hb.bottom == pytest.approx(CHIN_Y, abs=0.02)


def test_head_bounds_without_eye_bones_or_hair():
    m = face_model(eye_bones=False, long_hair=False)
    hb = suggest_head_bounds(m)
    assert hb.bottom == pytest.approx(CHIN_Y, abs=0.02)
    assert hb.top == pytest.approx(HAIR_TOP, abs=0.03)
    assert hb.confidence < 0.9  # the eye anchor is missing
    assert any("eye" in n for n in hb.notes)


def test_head_bounds_center_is_head_bone_x():
    m = face_model()
    shift = np.array([0.5, 0.0, 0.0], np.float32)
    m.positions = m.positions + shift
    for bone in m.bones:
        bone.position = tuple(np.add(bone.position, shift).tolist())
    hb = suggest_head_bounds(m)
    assert hb.center_x == pytest.approx(0.5)
    assert hb.bottom == pytest.approx(CHIN_Y, abs=0.02)


def test_head_bounds_no_head_bone_raises():
    with pytest.raises(ValueError, match="頭"):
        suggest_head_bounds(face_model(head_bone="atama"))
    with pytest.raises(ValueError, match="頭"):
        suggest_head_bounds(Model(name="empty"))


def test_head_bounds_english_head_bone_fallback():
    m = face_model(head_bone="head")
    hb = suggest_head_bounds(m)
    assert hb.bottom == pytest.approx(CHIN_Y, abs=0.02)


def test_head_bounds_pure():
    m = face_model(ahoge=1.0, morphs=STANDARD)
    before = m.positions.copy()
    a, b = suggest_head_bounds(m), suggest_head_bounds(m)
    assert (a.top, a.bottom, a.center_x, a.confidence) == (b.top, b.bottom, b.center_x, b.confidence)
    np.testing.assert_array_equal(m.positions, before)


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------


def test_name_normalisation():
    assert normalize_morph_name("ｳｨﾝｸ") == normalize_morph_name("ウィンク") == "ウィンク"
    assert normalize_morph_name("ウィンク２") == normalize_morph_name("ウィンク2") == "ウィンク2"
    assert normalize_morph_name("ｳｨﾝｸ２右") == "ウィンク2右"
    assert normalize_morph_name("ＥｙｅＢｌｉｎｋＬｅｆｔ") == "eyeblinkleft"
    assert name_hint("ｳｨﾝｸ") == name_hint("ウィンク") == ("wink", "left", 1.0)
    assert name_hint("ウィンク２")[:2] == name_hint("ウィンク2")[:2] == ("wink2", "left")
    assert name_hint("ｳｨﾝｸ２右")[:2] == ("wink2", "right")
    assert name_hint("eyeBlinkLeft")[:2] == ("blink", "left")
    assert name_hint("eyeBlinkRight")[:2] == ("blink", "right")
    assert name_hint("まばたき")[:2] == ("blink", "both")
    assert name_hint("笑い")[:2] == ("smile", "both")
    assert name_hint("あ") == ("mouth_a", None, 1.0)
    assert name_hint("mouthClose") is None
    assert name_hint("", "wink_R")[:2] == ("wink", "right")
    assert name_hint("口角上げ") is None


@pytest.mark.parametrize("wink", ["ｳｨﾝｸ", "ウィンク"])
@pytest.mark.parametrize("wink2", ["ウィンク２", "ウィンク2", "ｳｨﾝｸ2"])
def test_half_width_and_digit_variants(wink, wink2):
    # two geometrically identical left closers, one with an unrelated name:
    # the (normalised) conventional name wins the tie
    m = face_model(morphs=[("left_a", "close_L"), (wink2, "close_L"), ("left_b", "smile_L"), (wink, "smile_L")])
    s = suggest_morphs(m)
    assert s.assignment.wink_left == wink2
    assert s.assignment.smile_wink_left == wink
    assert s.assignment.wink_right is None and s.confidence["wink_right"] == 0.0


# ---------------------------------------------------------------------------
# Morphs on tiny faces
# ---------------------------------------------------------------------------


def test_standard_morphs():
    m = face_model(morphs=STANDARD)
    s = suggest_morphs(m)
    assert isinstance(s, MorphSuggestion)
    assert s.assignment == STANDARD_EXPECTED
    assert set(s.confidence) == set(EXPRESSION_SLOTS)
    for slot in EXPRESSION_SLOTS:
        assert 0.8 <= s.confidence[slot] <= 1.0, slot
    names = {a.name: a for a in s.analysis}
    assert names["ウィンク２"].side == "left" and names["ウィンク２"].category == "close"
    assert names["ｳｨﾝｸ２右"].side == "right" and names["ｳｨﾝｸ２右"].category == "close"
    assert names["ウィンク"].side == "left" and names["ウィンク"].category == "smile_close"
    assert names["まばたき"].side == "both" and names["笑い"].category == "smile_close"
    brow = analyse_morph(m, 7)
    assert brow.name == "怒り" and brow.category == "other" and brow.closure < 0.2
    assert names["あ"].category == "mouth_open"
    assert [a.name for a in s.candidates("wink_left")][0] == "ウィンク２"
    with pytest.raises(KeyError):
        s.candidates("nose")


def test_geometry_decides_side_when_names_lie():
    # ウィンク closes the character's RIGHT eye here, ウィンク右 the left one
    m = face_model(morphs=[("ウィンク", "close_R"), ("ウィンク右", "close_L"), ("まばたき", "close_LR")])
    s = suggest_morphs(m)
    assert s.assignment.wink_right == "ウィンク"
    assert s.assignment.wink_left == "ウィンク右"
    assert s.assignment.wink_both == "まばたき"
    a = analyse_morph(m, 0)
    assert a.side == "right" and a.hint_side == "left"
    assert a.closure_right > 0.9 and a.closure_left < 0.1
    # named for the other side: still suggested, but less sure than a clean match
    assert 0.5 < s.confidence["wink_right"] < s.confidence["wink_both"]
    assert any("named for the left side" in n for n in s.notes)


def test_plain_and_smile_told_apart_by_geometry_not_names():
    # the example character's convention (ウィンク plain, ウィンク２ smiling),
    # the opposite of STANDARD: geometry must sort them
    m = face_model(morphs=[("ウィンク", "close_L"), ("ウィンク右", "close_R"), ("ウィンク２", "smile_L"), ("ウィンク２右", "smile_R")])
    s = suggest_morphs(m)
    assert s.assignment.wink_left == "ウィンク" and s.assignment.wink_right == "ウィンク右"
    assert s.assignment.smile_wink_left == "ウィンク２" and s.assignment.smile_wink_right == "ウィンク２右"
    assert s.assignment.wink_both is None and s.assignment.smile_wink_both is None


def test_only_smiling_winks():
    # no plain closure in the model: the smiling winks fill only smile slots
    m = face_model(morphs=[("ウィンク", "smile_L"), ("ウィンク右", "smile_R")])
    s = suggest_morphs(m)
    assert s.assignment.smile_wink_left == "ウィンク" and s.assignment.smile_wink_right == "ウィンク右"
    assert s.assignment.wink_left is None and s.assignment.wink_right is None


def test_no_eye_morphs():
    m = face_model(morphs=[("怒り", "brow"), ("あ", "mouth_a")])
    s = suggest_morphs(m)
    for slot in EXPRESSION_SLOTS[:6]:
        assert s.assignment.get(slot) is None
        assert s.confidence[slot] == 0.0
    assert s.assignment.mouth == "あ"
    bare = face_model()
    s = suggest_morphs(bare)
    assert s.assignment == MorphAssignment()
    assert all(v == 0.0 for v in s.confidence.values())
    assert s.analysis == []


def test_group_morph_expanded():
    m = face_model(morphs=[("ウィンク２", "close_L"), ("ｳｨﾝｸ２右", "close_R"),
                           ("まばたき", ("group", [(0, 1.0), (1, 1.0)])), ("half", ("group", [(0, 0.3)]))])
    a = analyse_morph(m, 2)
    assert a.kind == "group" and a.side == "both"
    assert a.closure_left > 0.9 and a.closure_right > 0.9
    assert any("group" in n for n in a.notes)
    assert analyse_morph(m, 3).closure_left < 0.6  # 30% of a blink does not shut the eye
    # cycles in group morphs are cut, not followed forever
    m.morphs.append(Morph(name="cyc1", kind=MorphKind.GROUP, indices=np.array([5, 0], np.int32),
                          weights=np.array([1.0, 1.0], np.float32)))
    m.morphs.append(Morph(name="cyc2", kind=MorphKind.GROUP, indices=np.array([4, 4], np.int32),
                          weights=np.array([1.0, 1.0], np.float32)))
    cyc = analyse_morph(m, 4)
    assert cyc.side == "left" and any("cycle" in n for n in cyc.notes)
    s = suggest_morphs(m)
    assert s.assignment.wink_both == "まばたき"
    assert s.assignment.wink_left == "ウィンク２"


def test_bone_morph_blink():
    # eyelids driven by eyelid bones through bone morphs
    m = face_model(lid_bones=True, morphs=[("ウィンク", "lid_bone_L"), ("ウィンク右", "lid_bone_R")])
    a = analyse_morph(m, 0)
    assert a.kind == "bone" and a.side == "left" and a.closure_left > 0.9
    s = suggest_morphs(m)
    assert s.assignment.wink_left == "ウィンク" and s.assignment.wink_right == "ウィンク右"


def test_eyes_without_eye_bones():
    # eyes skinned to 頭: found by the eye material's name
    m = face_model(eye_bones=False, morphs=STANDARD)
    assert suggest_morphs(m).assignment == STANDARD_EXPECTED
    # nor by material name: closure estimated from the eyelid travel, less sure
    m = face_model(eye_bones=False, eye_material="mat_b", morphs=STANDARD)
    s = suggest_morphs(m)
    assert s.assignment.wink_left == "ウィンク２" and s.assignment.wink_right == "ｳｨﾝｸ２右"
    assert s.assignment.wink_both == "まばたき"
    assert s.confidence["wink_left"] < 0.7
    assert any("eyelid travel" in n for n in s.notes)


def test_eye_hidden_by_hair():
    # the right eye is hidden behind a lock of hair in the rest pose: its
    # closure is estimated from the eyelid travel, the left one measured
    m = face_model(bang=True, morphs=STANDARD)
    s = suggest_morphs(m)
    assert s.assignment == STANDARD_EXPECTED
    right = analyse_morph(m, 5)  # ｳｨﾝｸ２右
    assert right.side == "right" and right.closure_right > 0.9 and right.closure_left == 0.0
    assert any("eyelid travel" in n for n in right.notes)
    assert not analyse_morph(m, 4).notes  # ウィンク２ (left eye): measured, no estimate
    assert suggest_head_bounds(m).bottom == pytest.approx(CHIN_Y, abs=0.02)


def test_model_without_head_bone():
    m = face_model(head_bone="atama", morphs=STANDARD)
    s = suggest_morphs(m)  # does not raise
    for slot in EXPRESSION_SLOTS[:6]:
        assert s.assignment.get(slot) is None and s.confidence[slot] == 0.0
    assert s.assignment.mouth == "あ" and s.confidence["mouth"] <= 0.5
    assert any("頭" in n for n in s.notes)


def test_quad_model_and_non_geometric_morphs():
    m = quad_model()
    s = suggest_morphs(m)
    assert s.assignment.mouth == "あ"  # named あ, geometry unreadable: low confidence
    assert s.confidence["mouth"] <= 0.5
    with pytest.raises(IndexError):
        analyse_morph(m, 5)


def test_analyse_morph_fields():
    m = face_model(morphs=STANDARD)
    a = analyse_morph(m, 4)  # ウィンク２: plain close, left
    assert isinstance(a, MorphAnalysis)
    assert (a.name, a.index, a.kind, a.panel) == ("ウィンク２", 4, "vertex", MorphPanel.EYE)
    assert a.normalized_name == "ウィンク2" and a.name_hint == "wink2:left"
    assert a.vertex_count == 27  # 3 of the 4 rows of 9 lid vertices move
    assert a.eye_score > 0.9 and a.down_score > 0.9 and a.up_share < 0.05
    assert a.balance == pytest.approx(1.0)
    assert a.depth > 0.9 and a.smile_score < 0.3
    smile = analyse_morph(m, 2)  # ウィンク: smiling
    assert smile.up_share > 0.25 and smile.smile_score > 0.7 and smile.depth < a.depth
    mouth = analyse_morph(m, 6)
    assert mouth.mouth_score > 0.5 and mouth.side == "none" and mouth.closure == 0.0


def test_morph_suggestion_pure_and_fresh():
    m = face_model(morphs=STANDARD)
    before = [mo.offsets.copy() for mo in m.morphs if mo.offsets is not None]
    s1, s2 = suggest_morphs(m), suggest_morphs(m)
    assert s1.assignment == s2.assignment and s1.confidence == s2.confidence
    s1.analysis[0].notes.append("edited by a UI")
    assert "edited by a UI" not in suggest_morphs(m).analysis[0].notes
    after = [mo.offsets for mo in m.morphs if mo.offsets is not None]
    for x, y in zip(before, after):
        np.testing.assert_array_equal(x, y)
    # editing the model's morphs is seen by the next call (no stale cache)
    m.morphs[4].offsets = np.zeros_like(m.morphs[4].offsets)
    assert suggest_morphs(m).assignment.wink_left is None


# ---------------------------------------------------------------------------
# The example character
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example():
    mod = pytest.importorskip("mmdsynth.mmd.example")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return mod.build_example_model()


def test_example_head_bounds(example):
    # documented in mmd/example.py: chin tip at Y 15.6, skull top 20.05, hair
    # to about 20.35, the ahoge to about 21.4 (must be ignored)
    hb = suggest_head_bounds(example)
    assert hb.bottom == pytest.approx(15.6, abs=0.05)
    assert 20.0 <= hb.top <= 20.45
    assert hb.center_x == pytest.approx(example.bones[example.bone_index("頭")].position[0])
    assert hb.confidence >= 0.9


def test_example_morphs(example):
    # documented in mmd/example.py: ウィンク closes the character's left upper
    # lid (plain), ウィンク２ is the smiling wink of the left eye
    s = suggest_morphs(example)
    assert s.assignment == MorphAssignment(
        wink_left="ウィンク", wink_right="ウィンク右", wink_both="まばたき",
        smile_wink_left="ウィンク２", smile_wink_right="ウィンク２右", smile_wink_both="笑い", mouth="あ",
    )
    assert min(s.confidence.values()) >= 0.8


# ---------------------------------------------------------------------------
# Gene (shared test data)
# ---------------------------------------------------------------------------

# Ground truth for Gene's eye-closing morphs, (side, type), side = the
# CHARACTER's side (+X = left). Verified two ways: (1) the displacement-
# weighted mean X of each morph's moved vertices (+0.46..+0.49 for the left
# ones, -0.46..-0.49 for the right ones, ~0 for both); (2) by eye, on front
# views of both eyes rendered with the face texture for every morph below
# (script kept outside the repository): "plain" leaves a flat closed lash line
# like まばたき, "smile" a '^' arc like 笑い. Gene follows the common MMD
# convention: ウィンク/ウィンク右 are smiling winks, ウィンク２/ｳｨﾝｸ２右 plain ones.
# 悲しい（総 (a "sad" face preset) really shuts only the right eye.
GENE_CLOSERS = {
    "eyeBlink": ("both", "plain"), "eyeBlinkLeft": ("left", "plain"), "eyeBlinkRight": ("right", "plain"),
    "まばたき": ("both", "plain"), "笑い": ("both", "smile"),
    "ウィンク": ("left", "smile"), "ウィンク右": ("right", "smile"),
    "ウィンク２": ("left", "plain"), "ｳｨﾝｸ２右": ("right", "plain"),
    "eye_wink_geo_L": ("left", "smile"), "eye_wink_geo_R": ("right", "smile"),
    "eye_close_geo_L": ("left", "plain"), "eye_close_geo_R": ("right", "plain"),
    "まば左": ("left", "plain"), "まば右": ("right", "plain"),
    "笑顔(総": ("both", "smile"), "とじ目(総": ("both", "plain"), "にっこり口(総": ("both", "smile"),
    "悲しい（総": ("right", "plain"),
}
# partial closures and other eye morphs that must NOT count as closing an eye
GENE_NOT_CLOSING = ["eyeSquint", "eyeSquintLeft", "eyeSquintRight", "eyeLookDown", "eyeLookDownLeft", "じと目",
                    "なぬ！", "瞳小", "驚き", "ぐるぐる", "eye_downcast_geo_L", "eye_angry_geo_R", "browDown", "怒り",
                    "びっくり", "eyeWideLeft", "mabatakiparts", "じと目(総", "驚き(総"]
GENE_EXPECTED = MorphAssignment(
    wink_left="ウィンク２", wink_right="ｳｨﾝｸ２右", wink_both="まばたき",
    smile_wink_left="ウィンク", smile_wink_right="ウィンク右", smile_wink_both="笑い", mouth="あ",
)


@pytest.fixture(scope="module", params=["pmx", "pmd"])
def gene(request, testdata):
    from mmdsynth.mmd.loader import load_model

    return load_model(testdata / "models" / "gene" / f"Gene_light.{request.param}")


def test_gene_head_bounds(gene):
    # judged on front/side views of the head geometry: the chin tip is the
    # face vertex at (0, 16.657, -1.00); the hair dome peaks at 19.82 at the
    # crown, the thin ahoge above it reaches 19.96 and is ignored
    hb = suggest_head_bounds(gene)
    assert hb.bottom == pytest.approx(16.657, abs=0.02)
    assert hb.top == pytest.approx(19.82, abs=0.03)
    assert hb.center_x == pytest.approx(0.0, abs=1e-4)
    assert hb.confidence >= 0.9


def test_gene_assignment(gene):
    s = suggest_morphs(gene)
    assert s.assignment == GENE_EXPECTED
    for slot in EXPRESSION_SLOTS:
        assert s.confidence[slot] >= 0.8, slot


def test_gene_eye_morphs_classified(gene):
    s = suggest_morphs(gene)
    by_name = {a.name: a for a in s.analysis}
    wrong = []
    for name, (side, typ) in GENE_CLOSERS.items():
        a = by_name[name]
        want = "close" if typ == "plain" else "smile_close"
        if (a.side, a.category) != (side, want):
            wrong.append((name, a.side, a.category))
    assert wrong == []
    for name in GENE_NOT_CLOSING:
        a = by_name.get(name) or analyse_morph(gene, gene.morph_index(name))
        assert a.category not in ("close", "smile_close"), name
        assert a.closure < 0.6, name
    # nothing else in the model is taken for an eye closure
    closers = {a.name for a in s.analysis if a.category in ("close", "smile_close")}
    assert closers == set(GENE_CLOSERS)


def test_gene_candidates_listed(gene):
    s = suggest_morphs(gene)
    names = lambda slot: [a.name for a in s.candidates(slot)]  # noqa: E731
    assert set(names("wink_left")) == {"ウィンク２", "まば左", "eyeBlinkLeft", "eye_close_geo_L"}
    assert set(names("smile_wink_right")) == {"ウィンク右", "eye_wink_geo_R"}
    assert names("mouth")[:2] == ["あ", "ああ"]
    assert all(unicodedata.is_normalized("NFKC", a.normalized_name) for a in s.analysis)


def test_gene_without_eye_anchors(testdata):
    # the fallback path on a real model: eye bones renamed (Japanese and
    # English names) and the eye material renamed, so neither the eye surface
    # nor the eye level is known; closure is estimated from eyelid sweeps over
    # an eye box placed from the head bounds. Still right, but less sure.
    from mmdsynth.mmd.loader import load_model

    gene = load_model(testdata / "models" / "gene" / "Gene_light.pmx")
    for bone in gene.bones:
        if bone.name in ("左目", "右目"):
            bone.name, bone.name_en = bone.name + "x", ""
    for mat in gene.materials:
        if "目" in mat.name:
            mat.name = "mat"
    s = suggest_morphs(gene)
    assert s.assignment == GENE_EXPECTED
    for slot in EXPRESSION_SLOTS[:6]:
        assert 0.3 < s.confidence[slot] < 0.7, slot
    by_name = {a.name: a for a in s.analysis}
    for name, (side, typ) in GENE_CLOSERS.items():
        assert (by_name[name].side, by_name[name].category) == (side, "close" if typ == "plain" else "smile_close"), name
    assert {a.name for a in s.analysis if a.category in ("close", "smile_close")} == set(GENE_CLOSERS)
    assert suggest_head_bounds(gene).bottom == pytest.approx(16.657, abs=0.02)
