"""Is a loaded model a character that THA data can be made from? (``mmdsynth scan``)

Downloads are full of things that load fine but are no use for talking-head
data: stages, props, accessories, motion-capture dummies. :func:`check_character`
says why a model is not a character, from what the render job needs:

* **bones 首 and 頭**: the pose schema rotates the neck (首, ``neck_z``) and the
  head (頭, ``head_x``/``head_y``); a model without either cannot be posed.
* **face morphs**: at least one morph that moves geometry (vertex, group, bone
  or flip morph with entries; PMD's hidden base morph does not count); the
  eye and mouth parameters drive such morphs.
* **enough vertices**: at least :data:`MIN_VERTICES` (500; the bundled example
  character has about 5,000, real characters 10,000-100,000; test boxes and
  dummies have tens).
* **not a stage or prop**: a shape no standing character has: more than
  :data:`MAX_WIDTH_RATIO` (3) times as wide or deep as tall, or taller than
  :data:`MAX_HEIGHT` (200 MMD units; a character is about 20, a stage is
  hundreds). A model or file name that says stage or prop (ステージ, stage,
  背景, スカイドーム, skydome, 床, floor, 小物, prop, ...) is named as the reason
  for a model that fails another check, but never rejects one on its own:
  "ステージ衣装" (a stage costume) is a character.

All reasons found are reported, joined by ``; `` (e.g. ``no 首 bone, no 頭
bone; no face morphs; too few vertices (48 < 500)``). Pure function of the
model, no file access.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from mmdsynth.mmd.model import Model, MorphKind, MorphPanel

__all__ = ["CharacterCheck", "MAX_HEIGHT", "MAX_WIDTH_RATIO", "MIN_VERTICES", "check_character"]

MIN_VERTICES = 500
MAX_WIDTH_RATIO = 3.0
MAX_HEIGHT = 200.0
NECK_BONE = "首"
HEAD_BONE = "頭"

_DEFORMING = {MorphKind.VERTEX, MorphKind.GROUP, MorphKind.BONE, MorphKind.FLIP}
# Whole words for ASCII ("prop" must not match "property"), substrings for Japanese.
_STAGE_WORDS_JA = ("ステージ", "背景", "スカイドーム", "天球", "床", "小物", "アクセサリ", "武器", "建物", "部屋", "教室")
_STAGE_WORDS_EN = ("stage", "skydome", "sky dome", "skybox", "floor", "prop", "props", "background", "accessory",
                   "weapon", "building", "room")
_EN_RE = re.compile(r"(?<![a-z])(" + "|".join(re.escape(w) for w in _STAGE_WORDS_EN) + r")(?![a-z])")


@dataclass(frozen=True)
class CharacterCheck:
    """The verdict of :func:`check_character`.

    ``is_character``: True when no reason was found; ``reasons``: one short
    phrase each; ``reason``: them joined by ``'; '`` (the catalog's reason
    for status ``not_character``)."""

    is_character: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text or "").lower()


def stage_word(*names: str) -> str | None:
    """The first stage/prop word found in ``names`` (NFKC, case-insensitive), or None."""
    for name in names:
        n = _norm(name)
        for w in _STAGE_WORDS_JA:
            if w in n:
                return w
        m = _EN_RE.search(n)
        if m:
            return m.group(1)
    return None


def check_character(model: Model, file_name: str = "", min_vertices: int = MIN_VERTICES) -> CharacterCheck:
    """Check whether ``model`` is a character (see the module docstring).

    Args:
        model: a loaded model.
        file_name: the model's file name (its stem is checked for stage words
            too; the folder is not, since download folders are often named
            after the stage a character came with).
        min_vertices: the vertex floor.

    Returns:
        A :class:`CharacterCheck`. Never raises for a loaded model.
    """
    reasons: list[str] = []
    names = {b.name.strip() for b in model.bones}
    missing = [b for b in (NECK_BONE, HEAD_BONE) if b not in names]
    if missing:
        reasons.append(", ".join(f"no {b} bone" for b in missing))
    face = [m for m in model.morphs
            if m.kind in _DEFORMING and len(m) > 0 and not (model.format == "pmd" and m.panel == MorphPanel.SYSTEM)]
    if not face:
        reasons.append("no face morphs")
    if model.vertex_count < min_vertices:
        reasons.append(f"too few vertices ({model.vertex_count} < {min_vertices})")
    stem = file_name.rsplit(".", 1)[0] if file_name else ""
    # A name alone never rejects a model that has what posing needs ("ステージ衣装",
    # a stage costume, is a character); it explains why one that lacks it is not.
    word = stage_word(model.name, model.name_en, stem) if reasons else None
    if word is not None:
        reasons.append(f"a stage or prop (name says {word!r})")
    elif model.vertex_count and model.face_count:
        used = np.unique(np.asarray(model.faces, np.int64).reshape(-1))
        used = used[used < model.vertex_count]
        if used.size:
            p = np.asarray(model.positions, np.float64)[used]
            p = p[np.all(np.isfinite(p), axis=1)]
            if len(p):
                ext = p.max(axis=0) - p.min(axis=0)
                height = float(ext[1])
                wide = float(max(ext[0], ext[2]))
                if height > MAX_HEIGHT:
                    reasons.append(f"a stage or prop ({height:.0f} units tall; a character is about 20)")
                elif wide > MAX_WIDTH_RATIO * max(height, 1e-6):
                    reasons.append(f"a stage or prop ({wide:.1f} units wide or deep, {height:.1f} tall)")
    return CharacterCheck(not reasons, tuple(reasons))
