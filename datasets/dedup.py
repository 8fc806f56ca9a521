"""``mmdsynth dedup``: exact and near duplicates, and the decisions about them.

Downloads hold many copies of the same character: the same file twice, a PMX
and the PMD it was converted from, re-saved or re-packed copies, recolours and
small edits. THA's author removed them by eye; this module finds the candidates
and stores what a person (or, for exact copies, the tool) decided.

What counts as a duplicate
==========================

1. **Same bytes**: the catalog id is the sha256 of the file, so a byte copy never
   gets a second catalog row. ``mmdsynth scan`` records every model file it
   extracted into the library (``model_files``; :meth:`Catalog.byte_copies`
   lists the copies); a loose download whose bytes are already catalogued is
   not copied at all, only noted in ``scan_sources`` ("same bytes as ...").
2. **Same geometry** (``kind = 'geometry'``, distance 0): the rest-pose mesh
   hashed after quantisation (:func:`geometry_signature`): every vertex used by
   a face is rounded to a grid of :data:`GEOMETRY_QUANTUM` MMD units (1e-3; a
   character is about 20 units tall), each triangle becomes its three grid
   points (rotated so the smallest comes first, winding kept), the triangles
   are sorted, and the result is hashed (sha256). Vertex order, face order,
   material split, UVs, normals, bones, morphs, textures and the file format
   do not matter, so a re-saved copy or a PMD <-> PMX conversion of the same
   mesh is found. (Float32 positions survive those conversions exactly; noise
   from a lossy export is left to the near-duplicate test.)
3. **Near duplicates** (``kind = 'near'``): a distance in [0, 1] combining
   (:func:`near_distance`):

   * ``head``: Hamming distance / 64 of 64-bit DCT perceptual hashes (pHash, by
     ``imagehash.phash``: 32x32 grey, 2-D DCT-II, the 8x8 lowest frequencies
     against their median) of a front render of the rest pose framed on the
     head (THA framing from the head bounds: the annotation when there is one,
     else the suggestion), weight 0.35;
   * ``body``: the same for a front render of the whole model (bounding box
     fitted in the image), weight 0.25;
   * ``color``: half the L1 distance of 4x4x4 RGB histograms of the body
     render's covered pixels (texture statistics: a recolour moves it), weight 0.15;
   * ``geometry``: mean of clipped differences of vertex and face counts (log
     ratio / log 2), width/height and depth/height (difference / 0.5) and
     surface area / height^2 (log ratio / log 2), weight 0.25.

   Components missing on either side (no render) are left out and the weights
   renormalised. Renders are on a neutral grey background with the default
   lighting; the images are 256x256, hashed at 32x32.

   Pairs with distance <= ``threshold`` (default :data:`DEFAULT_THRESHOLD`,
   0.2) are linked. Measured on the shared test models and edits of them
   (renders 256x256): Gene's PMX against its PMD 0.054 (the PMD shows two
   face decals the PMX hides; a geometry pair anyway), Gene scaled by 1.15
   0.000, Gene's hair recoloured 0.024, all its textures hue-rotated 0.068,
   its hair moved by 0.4 units 0.12, the example character's hair recoloured
   0.065, the example 25% wider 0.089; Gene without its top (a costume
   change) 0.32; Gene against the example character 0.58 (0.51 to 0.61 over
   all the edits of both). The threshold is a user setting (``--threshold``):
   lower it for fewer, surer groups, raise it (0.35) to also catch costume
   variants.

Groups
======
Duplicate groups are the connected components of the linked pairs (single
linkage) plus the stored "duplicate of" decisions, minus the stored "not
duplicates" decisions. Each group lists every member with its distance to the
group's *representative* (the kept member, else the preferred one: status ok,
PMX before PMD, more morphs, more vertices, path order) and all pairwise
distances (:class:`DuplicateGroup`). Only models with status ``ok`` or
``duplicate`` take part.

Decisions
=========
Stored in the catalog (schema v2, see :mod:`.catalog`) with an origin and a
timestamp, like annotations: ``keep``, ``duplicate`` (of a kept model), and
"not duplicates" pairs. A re-run of dedup recomputes the candidate pairs only;
decisions survive it. A ``duplicate`` decision sets the model's status to
``duplicate`` (the render job takes ``ok`` models only, so duplicates are never
rendered); undoing it restores ``ok``. With ``auto_resolve`` (the default)
each same-geometry group is decided automatically (origin ``auto``: keep the
preferred member, the others are duplicates of it); a human decision always
wins and auto decisions that no longer hold are withdrawn on the next run.
The review window uses :func:`duplicate_groups`, :func:`keep_one`,
:func:`mark_duplicates`, :func:`split_group`, :func:`clear_decisions` and
:func:`revert` (each returns the :class:`DecisionChange` list it made, for undo).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .catalog import Catalog, DuplicateDecision, DuplicatePair, ModelFeatures, ModelRecord

__all__ = [
    "DEFAULT_THRESHOLD",
    "GEOMETRY_QUANTUM",
    "GEOMETRY_VERSION",
    "IMAGE_VERSION",
    "WEIGHTS",
    "DecisionChange",
    "DedupReport",
    "DuplicateGroup",
    "GroupMember",
    "clear_decisions",
    "duplicate_groups",
    "find_duplicates",
    "geometry_signature",
    "hamming",
    "image_features",
    "keep_one",
    "mark_duplicates",
    "model_stats",
    "near_distance",
    "phash",
    "revert",
    "split_group",
]

GEOMETRY_QUANTUM = 1e-3
GEOMETRY_VERSION = 1
IMAGE_VERSION = 1
DEFAULT_THRESHOLD = 0.2
WEIGHTS = {"head": 0.35, "body": 0.25, "color": 0.15, "geometry": 0.25}
RENDER_SIZE = 256
BACKGROUND = 128
_PARTICIPATING = ("ok", "duplicate")


# ---------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------


def _used_vertices(model) -> tuple[np.ndarray, np.ndarray]:
    """(positions float64 (N,3), faces int64 (F,3)) restricted to valid faces."""
    pos = np.asarray(model.positions, np.float64).reshape(-1, 3)
    faces = np.asarray(model.faces, np.int64).reshape(-1, 3)
    if len(faces):
        ok = np.all((faces >= 0) & (faces < len(pos)), axis=1)
        faces = faces[ok]
    if len(faces):
        finite = np.all(np.isfinite(pos), axis=1)
        faces = faces[np.all(finite[faces], axis=1)]
    return pos, faces


def geometry_signature(model, quantum: float = GEOMETRY_QUANTUM) -> str | None:
    """Hex sha256 of the model's rest mesh, independent of vertex and face order
    (see the module docstring); None when the model has no valid face.

    Args:
        model: a loaded :class:`~mmdsynth.mmd.model.Model`.
        quantum: grid step in MMD units.
    """
    pos, faces = _used_vertices(model)
    if not len(faces):
        return None
    used = np.unique(faces.reshape(-1))
    grid = np.round(pos[used] / quantum).astype(np.int64)
    uniq, inverse = np.unique(grid, axis=0, return_inverse=True)
    rank = np.empty(len(pos), np.int64)
    rank[used] = inverse.reshape(-1)
    tri = rank[faces]  # (F,3) ranks of grid points
    first = np.argmin(tri, axis=1)
    idx = (first[:, None] + np.arange(3)[None, :]) % 3
    tri = np.take_along_axis(tri, idx, axis=1)
    order = np.lexsort((tri[:, 2], tri[:, 1], tri[:, 0]))
    tri = tri[order]
    h = hashlib.sha256()
    h.update(f"mmdsynth-geometry-v{GEOMETRY_VERSION}:{quantum!r}:{len(uniq)}:{len(tri)}:".encode())
    h.update(np.ascontiguousarray(uniq, "<i8").tobytes())
    h.update(np.ascontiguousarray(tri, "<i8").tobytes())
    return h.hexdigest()


def model_stats(model) -> dict[str, float]:
    """Simple geometry statistics of the rest mesh: counts (vertices, faces,
    materials, bones, morphs, textures), bounding-box ``height``, ``width``,
    ``depth`` and the triangle ``area`` (MMD units), ``min_y``/``max_y``/
    ``center_x`` of the box. JSON-ready floats and ints."""
    pos, faces = _used_vertices(model)
    out: dict[str, float] = {
        "vertices": int(model.vertex_count), "faces": int(model.face_count), "materials": len(model.materials),
        "bones": len(model.bones), "morphs": len(model.morphs), "textures": len(model.textures),
    }
    if len(faces):
        p = pos[np.unique(faces.reshape(-1))]
        lo, hi = p.min(axis=0), p.max(axis=0)
        t = pos[faces]
        area = 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1).sum()
        out.update(width=float(hi[0] - lo[0]), height=float(hi[1] - lo[1]), depth=float(hi[2] - lo[2]),
                   area=float(area), min_y=float(lo[1]), max_y=float(hi[1]), center_x=float((lo[0] + hi[0]) / 2))
    return out




def phash(image, hash_size: int = 8, highfreq_factor: int = 4) -> int:
    """64-bit DCT perceptual hash of an image (``imagehash.phash``).

    Args:
        image: a PIL image (any mode) or an (H,W) / (H,W,3|4) uint8 array
            (RGBA is composited on :data:`BACKGROUND` grey first, so the
            transparent background hashes as a constant).
        hash_size, highfreq_factor: as imagehash (8 and 4: 32x32 -> 8x8 bits).

    Returns the bits as an int, row-major, first bit most significant (so
    ``f"{h:016x}"`` is imagehash's ``str()``).
    """
    import imagehash
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(_on_background(np.asarray(image)))
    return int(str(imagehash.phash(image, hash_size=hash_size, highfreq_factor=highfreq_factor)), 16)


def hamming(a: int | str, b: int | str) -> int:
    """Bits that differ between two hashes (ints or hex strings)."""
    a = int(a, 16) if isinstance(a, str) else a
    b = int(b, 16) if isinstance(b, str) else b
    return int(bin(a ^ b).count("1"))


def _on_background(rgba: np.ndarray) -> np.ndarray:
    if rgba.ndim == 2:
        return rgba.astype(np.uint8)
    if rgba.shape[-1] == 3:
        return rgba.astype(np.uint8)
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * a + BACKGROUND * (1.0 - a)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _color_histogram(rgba: np.ndarray) -> list[float] | None:
    covered = rgba[..., 3] > 127
    if not covered.any():
        return None
    q = (rgba[covered][:, :3] // 64).astype(np.int64)
    idx = q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2]
    hist = np.bincount(idx, minlength=64).astype(np.float64)
    return (hist / hist.sum()).tolist()


def image_features(model, head: tuple[float, float, float] | None, size: int = RENDER_SIZE) -> dict[str, Any]:
    """Render the rest pose from the front twice and hash it.

    Args:
        model: a loaded model whose ``path`` lets its textures resolve.
        head: ``(top, bottom, center_x)`` head bounds in MMD units (the head
            view uses THA1 framing: head in rows 64..192 of 256, and the
            central 192x192 pixels, the head with a 32-pixel margin, are
            hashed), or None (no head hash).
        size: render size in pixels.

    Returns ``{"head_hash": hex or None, "body_hash": hex or None, "color":
    list or None, "note": str}``. Raises RenderError when there is no GL
    context (the caller records the note and goes on without images).
    """
    from mmdsynth.render import Framing, ModelRenderer

    stats = model_stats(model)
    out: dict[str, Any] = {"head_hash": None, "body_hash": None, "color": None, "note": ""}
    if "height" not in stats:
        out["note"] = "no faces to render"
        return out
    notes = []
    with ModelRenderer(model, preset="tha1", samples=0, supersample=1) as renderer:
        h = max(stats["height"], 1e-6)
        w = max(stats["width"], 1e-6)
        scale = 0.92 * size / max(h, w)
        top_y = stats["max_y"] + (size / scale - h) / 2
        body = renderer.render_pose(None, Framing(size, size, scale, stats["center_x"], top_y, "body"))
        out["body_hash"] = f"{phash(body):016x}"
        out["color"] = _color_histogram(body)
        if head is not None:
            top, bottom, cx = head
            try:
                framing = Framing.from_head("tha1", top, bottom, cx)
            except ValueError as exc:
                notes.append(f"head bounds unusable: {exc}")
            else:
                img = renderer.render_pose(None, framing)
                out["head_hash"] = f"{phash(img[32:224, 32:224]):016x}"
        else:
            notes.append("no head bounds: body only")
    out["note"] = "; ".join(notes)
    return out


def _feature_task(path: str, head: tuple | None, need_geometry: bool, head_fn: Callable | None) -> dict[str, Any]:
    """Worker side: load a library model and compute the missing features."""
    from mmdsynth.mmd.loader import load_model

    model = load_model(path)
    out: dict[str, Any] = {}
    if need_geometry:
        out["geometry_hash"] = geometry_signature(model)
        out["stats"] = model_stats(model)
    if head is None and head_fn is not None:
        try:
            hb = head_fn(model)
            head = (float(hb.top), float(hb.bottom), float(hb.center_x))
        except Exception as exc:  # noqa: BLE001 - no head bounds: body only
            out["head_note"] = f"head bounds: {' '.join(str(exc).split())}"
    if head is not None and head[2] is None:
        head = (head[0], head[1], _head_bone_x(model))
    try:
        out["image"] = image_features(model, head)
    except Exception as exc:  # noqa: BLE001 - RenderError, a broken texture...: go on without images
        out["image"] = {"head_hash": None, "body_hash": None, "color": None,
                        "note": f"not rendered: {' '.join(str(exc).split())[:300]}"}
    return out


def _head_bone_x(model) -> float:
    for b in model.bones:
        if b.name == "頭":
            return float(b.position[0])
    return 0.0


# ---------------------------------------------------------------------------
# Distances
# ---------------------------------------------------------------------------


def _geom_vector(stats: dict) -> np.ndarray | None:
    if "height" not in stats:
        return None
    h = max(stats["height"], 1e-6)
    return np.array([
        math.log(max(stats["vertices"], 1)), math.log(max(stats["faces"], 1)),
        stats["width"] / h, stats["depth"] / h, math.log(max(stats["area"], 1e-9) / (h * h)),
    ])


_GEOM_SCALE = np.array([math.log(2), math.log(2), 0.5, 0.5, math.log(2)])


def near_distance(a: ModelFeatures, b: ModelFeatures) -> tuple[float, dict[str, float]]:
    """The near-duplicate distance of two models' features (module docstring):
    ``(distance in [0, 1], {component: value})``; components missing on
    either side are left out of both. ``(1.0, {})`` when nothing is comparable."""
    comp: dict[str, float] = {}
    if a.head_hash and b.head_hash:
        comp["head"] = hamming(a.head_hash, b.head_hash) / 64
    if a.body_hash and b.body_hash:
        comp["body"] = hamming(a.body_hash, b.body_hash) / 64
    if a.color and b.color:
        comp["color"] = 0.5 * float(np.abs(np.asarray(a.color) - np.asarray(b.color)).sum())
    ga, gb = _geom_vector(a.stats), _geom_vector(b.stats)
    if ga is not None and gb is not None:
        comp["geometry"] = float(np.minimum(1.0, np.abs(ga - gb) / _GEOM_SCALE).mean())
    if not comp:
        return 1.0, {}
    total = sum(WEIGHTS[k] for k in comp)
    return float(sum(WEIGHTS[k] * v for k, v in comp.items()) / total), {k: round(v, 4) for k, v in comp.items()}


def _popcount64(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    table = np.array([bin(i).count("1") for i in range(256)], np.int64)  # pragma: no cover - numpy < 2
    return table[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=-1)  # pragma: no cover


def _near_pairs(ids: list[str], feats: dict[str, ModelFeatures], threshold: float,
                block: int = 256) -> list[tuple[int, int, float, dict]]:
    """All pairs (i < j) with near distance <= threshold, vectorised by blocks.

    A lower bound from the hash components (which every pair with both renders
    has) prunes pairs before the colour and geometry terms are computed."""
    n = len(ids)
    if n < 2:
        return []
    head = np.zeros(n, np.uint64)
    body = np.zeros(n, np.uint64)
    has_head = np.zeros(n, bool)
    has_body = np.zeros(n, bool)
    color = np.zeros((n, 64), np.float32)
    has_color = np.zeros(n, bool)
    geom = np.zeros((n, 5), np.float64)
    has_geom = np.zeros(n, bool)
    for i, mid in enumerate(ids):
        f = feats[mid]
        if f.head_hash:
            head[i] = np.uint64(int(f.head_hash, 16))
            has_head[i] = True
        if f.body_hash:
            body[i] = np.uint64(int(f.body_hash, 16))
            has_body[i] = True
        if f.color and len(f.color) == 64:
            color[i] = f.color
            has_color[i] = True
        g = _geom_vector(f.stats)
        if g is not None:
            geom[i] = g
            has_geom[i] = True
    out: list[tuple[int, int, float, dict]] = []
    w = WEIGHTS
    for s in range(0, n, block):
        e = min(n, s + block)
        rows = np.arange(s, e)
        cols = np.arange(n)
        upper = cols[None, :] > rows[:, None]
        bh = has_head[s:e, None] & has_head[None, :]
        bb = has_body[s:e, None] & has_body[None, :]
        dh = _popcount64(head[s:e, None] ^ head[None, :]) / 64.0
        db = _popcount64(body[s:e, None] ^ body[None, :]) / 64.0
        bc = has_color[s:e, None] & has_color[None, :]
        bg = has_geom[s:e, None] & has_geom[None, :]
        wsum = w["head"] * bh + w["body"] * bb + w["color"] * bc + w["geometry"] * bg
        partial = w["head"] * dh * bh + w["body"] * db * bb
        # colour and geometry are >= 0: partial / wsum is a lower bound of the distance
        with np.errstate(invalid="ignore", divide="ignore"):
            bound = np.where(wsum > 0, partial / np.where(wsum > 0, wsum, 1), 1.0)
        cand = upper & (wsum > 0) & (bound <= threshold)
        ri, cj = np.nonzero(cand)
        if not len(ri):
            continue
        gi, gj = ri + s, cj
        dc = 0.5 * np.abs(color[gi] - color[gj]).sum(axis=1)
        dg = np.minimum(1.0, np.abs(geom[gi] - geom[gj]) / _GEOM_SCALE).mean(axis=1)
        mbh, mbb, mbc, mbg = bh[ri, cj], bb[ri, cj], bc[ri, cj], bg[ri, cj]
        total = partial[ri, cj] + w["color"] * dc * mbc + w["geometry"] * dg * mbg
        dist = total / wsum[ri, cj]
        keep = dist <= threshold
        for k in np.nonzero(keep)[0]:
            detail = {}
            if mbh[k]:
                detail["head"] = round(float(dh[ri[k], cj[k]]), 4)
            if mbb[k]:
                detail["body"] = round(float(db[ri[k], cj[k]]), 4)
            if mbc[k]:
                detail["color"] = round(float(dc[k]), 4)
            if mbg[k]:
                detail["geometry"] = round(float(dg[k]), 4)
            out.append((int(gi[k]), int(gj[k]), float(dist[k]), detail))
    return out


# ---------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------


class UnionFind:
    """Disjoint sets of strings; the smallest string names its set (so groups are deterministic)."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        parent = self.parent
        parent.setdefault(x, x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for x in list(self.parent):
            out.setdefault(self.find(x), []).append(x)
        return out


def _preference(rec: ModelRecord) -> tuple:
    """Sort key: the member to keep first (ok, PMX, more morphs, more vertices, path)."""
    return (rec.status != "ok", rec.format != "pmx", -(rec.morphs or 0), -(rec.vertices or 0), rec.path)


@dataclass
class GroupMember:
    """One model of a :class:`DuplicateGroup`.

    ``distance``: to the group's representative (0 for the representative; None
    when no distance was computed, e.g. a member linked only by a decision);
    ``decision``: the stored :class:`~mmdsynth.datasets.catalog.DuplicateDecision` or None."""

    model_id: str
    name: str
    path: str
    group: str
    status: str
    format: str
    vertices: int | None
    faces: int | None
    morphs: int | None
    distance: float | None
    decision: DuplicateDecision | None = None


@dataclass
class DuplicateGroup:
    """A group of models that are (candidate) duplicates of each other.

    * ``key``: a stable id (the smallest member id).
    * ``kind``: ``'geometry'`` when every link is a same-geometry pair, else ``'near'``.
    * ``representative``: the kept member, else the preferred one.
    * ``members``: representative first, then by distance.
    * ``pairs``: every stored pair inside the group (``linked`` ones are the edges).
    * ``resolved``: every member has a decision (keep or duplicate).
    * ``source_groups``: the source groups the members come from.
    """

    key: str
    kind: str
    representative: str
    members: list[GroupMember]
    pairs: list[DuplicatePair] = field(default_factory=list)
    resolved: bool = False

    @property
    def ids(self) -> list[str]:
        """Member model ids, in member order."""
        return [m.model_id for m in self.members]

    @property
    def source_groups(self) -> list[str]:
        """The source groups the members come from (sorted)."""
        return sorted({m.group for m in self.members})

    def distance(self, a: str, b: str) -> float | None:
        """The stored distance between two members (None when not computed)."""
        x, y = sorted((a, b))
        for p in self.pairs:
            if p.model_a == x and p.model_b == y:
                return p.distance
        return None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``mmdsynth dedup --json`` prints per group)."""
        return {
            "key": self.key, "kind": self.kind, "representative": self.representative, "resolved": self.resolved,
            "members": [{
                "id": m.model_id, "name": m.name, "path": m.path, "group": m.group, "status": m.status,
                "format": m.format, "vertices": m.vertices, "morphs": m.morphs, "distance": m.distance,
                "decision": None if m.decision is None else {
                    "decision": m.decision.decision, "duplicate_of": m.decision.duplicate_of,
                    "origin": m.decision.origin, "updated_at": m.decision.updated_at},
            } for m in self.members],
            "pairs": [{"a": p.model_a, "b": p.model_b, "kind": p.kind, "distance": round(p.distance, 4),
                       "linked": p.linked, "detail": p.detail} for p in self.pairs],
        }


def duplicate_groups(catalog: Catalog, include_resolved: bool = True) -> list[DuplicateGroup]:
    """The duplicate groups from the stored pairs and decisions (no recomputation).

    Edges: the last dedup run's linked pairs, plus each ``duplicate`` decision
    (model -> its kept model), minus the "not duplicates" pairs. Only models
    with status ``ok``/``duplicate`` take part. Sorted: unresolved first, then
    by size (largest first), then key.
    """
    with catalog.snapshot():
        records = {r.id: r for r in catalog.models() if r.status in _PARTICIPATING}
        pairs = catalog.duplicate_pairs()
        decisions = catalog.duplicate_decisions()
        distinct = catalog.distinct_pairs()
    uf = UnionFind()
    for p in pairs:
        if p.linked and p.model_a in records and p.model_b in records and (p.model_a, p.model_b) not in distinct:
            uf.union(p.model_a, p.model_b)
    for mid, d in decisions.items():
        if d.decision == "duplicate" and d.duplicate_of and mid in records and d.duplicate_of in records:
            uf.union(mid, d.duplicate_of)
    by_group: dict[str, list[DuplicatePair]] = {}
    comps = {root: sorted(ms) for root, ms in uf.groups().items() if len(ms) > 1}
    member_root = {m: root for root, ms in comps.items() for m in ms}
    for p in pairs:
        ra, rb = member_root.get(p.model_a), member_root.get(p.model_b)
        if ra is not None and ra == rb:
            by_group.setdefault(ra, []).append(p)
    out = []
    for root, ms in comps.items():
        gpairs = by_group.get(root, [])
        kept = [m for m in ms if decisions.get(m) is not None and decisions[m].decision == "keep"]
        rep = min(kept or ms, key=lambda m: _preference(records[m]))
        dist = {rep: 0.0}
        for p in gpairs:
            if p.model_a == rep:
                dist[p.model_b] = p.distance
            elif p.model_b == rep:
                dist[p.model_a] = p.distance
        linked_kinds = {p.kind for p in gpairs if p.linked}
        kind = "geometry" if linked_kinds == {"geometry"} else "near"
        members = [GroupMember(m, records[m].name, records[m].path, records[m].group, records[m].status, records[m].format,
                               records[m].vertices, records[m].faces, records[m].morphs, dist.get(m), decisions.get(m))
                   for m in ms]
        members.sort(key=lambda g: (g.model_id != rep, g.distance if g.distance is not None else 2.0, g.path))
        resolved = all(m.decision is not None for m in members)
        if resolved and not include_resolved:
            continue
        out.append(DuplicateGroup(ms[0], kind, rep, members, gpairs, resolved))
    out.sort(key=lambda g: (g.resolved, -len(g.members), g.key))
    return out


# ---------------------------------------------------------------------------
# Decisions (the review window's API)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DecisionChange:
    """One decision change, with what it replaced (for undo with :func:`revert`).

    ``target``: a model id (a keep/duplicate decision) or an ``(a, b)`` tuple
    (a "not duplicates" pair); ``before``/``after``: the stored value
    (:class:`DuplicateDecision`, or ``(origin, updated_at)`` for pairs) or None;
    ``status_before``: the model's ``(status, reason)`` before (None for pairs)."""

    target: str | tuple[str, str]
    before: Any
    after: Any
    status_before: tuple[str, str] | None = None


def _status(catalog: Catalog, model_id: str) -> tuple[str, str]:
    rec = catalog.get(model_id)
    if rec is None:
        raise KeyError(f"no model {model_id!r} in {catalog.library}")
    return rec.status, rec.reason


def _set(catalog: Catalog, model_id: str, decision: str, of: str | None, origin: str) -> DecisionChange | None:
    before = catalog.duplicate_decision(model_id)
    status = _status(catalog, model_id)
    if catalog.set_duplicate_decision(model_id, decision, of, origin):
        return DecisionChange(model_id, before, catalog.duplicate_decision(model_id), status)
    return None


def keep_one(catalog: Catalog, keeper: str, members: Iterable[str], origin: str = "human") -> list[DecisionChange]:
    """Keep ``keeper`` and mark every other model of ``members`` a duplicate of
    it, in one transaction. Statuses follow (``duplicate`` / back to ``ok``).
    Also forgets "not duplicates" pairs between the keeper and those members.
    Returns the changes (for :func:`revert`). KeyError for an unknown id."""
    members = [m for m in dict.fromkeys(members) if m != keeper]
    changes: list[DecisionChange] = []
    with catalog.transaction():
        c = _set(catalog, keeper, "keep", None, origin)
        if c:
            changes.append(c)
        changes.extend(_mark(catalog, members, keeper, origin))
    return changes


def _mark(catalog: Catalog, ids: Iterable[str], of: str, origin: str) -> list[DecisionChange]:
    changes = []
    distinct = catalog.distinct_pairs()
    for m in ids:
        pair = tuple(sorted((m, of)))
        if pair in distinct and origin == "human":
            catalog.clear_distinct(*pair)
            changes.append(DecisionChange(pair, distinct[pair], None))
        c = _set(catalog, m, "duplicate", of, origin)
        if c:
            changes.append(c)
    return changes


def mark_duplicates(catalog: Catalog, ids: Iterable[str], of: str, origin: str = "human") -> list[DecisionChange]:
    """Mark ``ids`` duplicates of ``of`` (which is not itself changed), in one
    transaction. Returns the changes. KeyError for an unknown id; ValueError
    when ``of`` is among ``ids``."""
    ids = list(dict.fromkeys(ids))
    if of in ids:
        raise ValueError("a model cannot be a duplicate of itself")
    with catalog.transaction():
        return _mark(catalog, ids, of, origin)


def split_group(catalog: Catalog, parts: Sequence[Iterable[str]], origin: str = "human") -> list[DecisionChange]:
    """Say that the models of different ``parts`` are not duplicates of each
    other (each pair across parts is stored as "not duplicates"; dedup never
    links them again). A ``duplicate`` decision pointing from one part into
    another is cleared. One transaction; returns the changes.

    ``split_group(cat, [[a], [b], [c]])`` says a group is no group at all."""
    parts = [list(dict.fromkeys(p)) for p in parts]
    changes: list[DecisionChange] = []
    with catalog.transaction():
        before = catalog.distinct_pairs()
        for i, pa in enumerate(parts):
            for pb in parts[i + 1:]:
                for a in pa:
                    for b in pb:
                        pair = tuple(sorted((a, b)))
                        if catalog.set_distinct(a, b, origin):
                            changes.append(DecisionChange(pair, before.get(pair), catalog.distinct_pairs()[pair]))
                        for x, y in ((a, b), (b, a)):
                            d = catalog.duplicate_decision(x)
                            if d is not None and d.decision == "duplicate" and d.duplicate_of == y:
                                status = _status(catalog, x)
                                if catalog.clear_duplicate_decision(x):
                                    changes.append(DecisionChange(x, d, None, status))
    return changes


def clear_decisions(catalog: Catalog, ids: Iterable[str]) -> list[DecisionChange]:
    """Forget the keep/duplicate decisions of ``ids`` (duplicates go back to
    ``ok``) and the "not duplicates" pairs among them. One transaction."""
    ids = list(dict.fromkeys(ids))
    changes: list[DecisionChange] = []
    with catalog.transaction():
        for m in ids:
            d = catalog.duplicate_decision(m)
            status = _status(catalog, m)
            if d is not None and catalog.clear_duplicate_decision(m):
                changes.append(DecisionChange(m, d, None, status))
        distinct = catalog.distinct_pairs()
        s = set(ids)
        for pair, value in distinct.items():
            if pair[0] in s and pair[1] in s and catalog.clear_distinct(*pair):
                changes.append(DecisionChange(pair, value, None))
    return changes


def revert(catalog: Catalog, changes: Sequence[DecisionChange]) -> None:
    """Undo ``changes`` (newest first), restoring decisions, their origins and
    timestamps, and model statuses. One transaction."""
    conn = catalog.connection
    with catalog.transaction():
        for c in reversed(list(changes)):
            if isinstance(c.target, tuple):
                a, b = c.target
                conn.execute("DELETE FROM distinct_pairs WHERE model_a = ? AND model_b = ?", (a, b))
                if c.before is not None:
                    conn.execute("INSERT INTO distinct_pairs (model_a, model_b, origin, updated_at) VALUES (?, ?, ?, ?)",
                                 (a, b, c.before[0], c.before[1]))
                continue
            conn.execute("DELETE FROM duplicate_decisions WHERE model_id = ?", (c.target,))
            if c.before is not None:
                conn.execute("INSERT INTO duplicate_decisions (model_id, decision, duplicate_of, origin, updated_at) "
                             "VALUES (?, ?, ?, ?, ?)", (c.target, *c.before))
            if c.status_before is not None:
                conn.execute("UPDATE models SET status = ?, reason = ? WHERE id = ?", (*c.status_before, c.target))


# ---------------------------------------------------------------------------
# The dedup run
# ---------------------------------------------------------------------------


@dataclass
class DedupReport:
    """What :func:`find_duplicates` did.

    ``models``: models compared; ``computed``: models whose features were
    computed now; ``feature_errors``: one line each (model not loadable, not
    rendered); ``geometry_pairs``/``near_pairs``: linked pairs found;
    ``groups``: the groups after decisions; ``auto_decided``: auto decisions
    written (``auto_withdrawn``: stale ones removed); ``byte_copies``:
    ``{model_id: [paths]}``; ``threshold``; ``seconds`` (``feature_seconds``
    of them computing features)."""

    models: int = 0
    computed: int = 0
    feature_errors: list[str] = field(default_factory=list)
    geometry_pairs: int = 0
    near_pairs: int = 0
    groups: list[DuplicateGroup] = field(default_factory=list)
    auto_decided: int = 0
    auto_withdrawn: int = 0
    byte_copies: dict[str, list[str]] = field(default_factory=dict)
    threshold: float = DEFAULT_THRESHOLD
    seconds: float = 0.0
    feature_seconds: float = 0.0
    unrendered: int = 0


def _catalog_head(catalog: Catalog, model_id: str) -> tuple | None:
    hb = catalog.head_bounds(model_id)
    if hb is None:
        return None
    return (hb[0], hb[1], None)


def compute_features(catalog: Catalog, records: Sequence[ModelRecord], workers: int = 0,
                     head_fn: Callable | None = None, timeout_s: float = 300.0, memory_mib: int | None = 8192,
                     progress: bool = False, recompute: bool = False) -> tuple[int, list[str]]:
    """Compute and store missing features of ``records`` (geometry when absent,
    renders when ``image_version`` is not current; all with ``recompute``).

    Each model is loaded and rendered in an :class:`~mmdsynth.datasets.workers.IsolatedPool`
    worker (``workers`` processes, 0 = in this process) with a time and memory
    limit. ``head_fn(model)`` (picklable, e.g. ``suggest_head_bounds``) gives
    head bounds for models without head annotations. Returns (models computed,
    error lines). A model that fails keeps its old features and is reported.
    """
    from tqdm import tqdm

    from .workers import IsolatedPool

    have = catalog.features([r.id for r in records])
    todo = []
    for r in records:
        f = have.get(r.id)
        need_geom = recompute or f is None or f.version != GEOMETRY_VERSION
        need_img = recompute or f is None or f.image_version != IMAGE_VERSION
        if need_geom or need_img:
            todo.append((r, need_geom))
    errors: list[str] = []
    if not todo:
        return 0, errors
    tmp = catalog.library / ".tmp"
    tmp.mkdir(exist_ok=True)
    done = 0
    import sys

    show = progress and sys.stderr.isatty()
    try:
        with IsolatedPool(workers, memory_mib, tempdir=tmp) as pool, \
                tqdm(total=len(todo), desc="features", unit="model", disable=not show, dynamic_ncols=True) as bar:
            pending = list(todo)
            window = 2 * max(workers, 1)

            def handle(o):
                nonlocal done
                rec, need_geom = o.key
                bar.update(1)
                if not o.ok:
                    errors.append(f"{rec.path}: {o.error}")
                    return
                v = o.value
                with catalog.transaction():
                    if need_geom and "stats" in v:
                        catalog.set_geometry_features(rec.id, v["geometry_hash"], v["stats"], GEOMETRY_VERSION)
                    img = v["image"]
                    note = "; ".join(x for x in (v.get("head_note", ""), img.get("note", "")) if x)
                    catalog.set_image_features(rec.id, img["head_hash"], img["body_hash"], img["color"], IMAGE_VERSION, note)
                if img["body_hash"] is None:
                    errors.append(f"{rec.path}: {note or 'not rendered'}")
                done += 1

            while pending or pool.pending:
                while pending and pool.pending < window:
                    rec, need_geom = pending.pop(0)
                    path = str(catalog.model_path(rec.id))
                    pool.submit((rec, need_geom), _feature_task, (path, _catalog_head(catalog, rec.id), need_geom, head_fn),
                                timeout=timeout_s)
                for o in pool.wait(None):
                    handle(o)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return done, errors


def find_duplicates(catalog: Catalog, threshold: float = DEFAULT_THRESHOLD, workers: int = 0,
                    head_fn: Callable | None = None, compute: bool = True, auto_resolve: bool = True,
                    recompute: bool = False, progress: bool = False, timeout_s: float = 300.0,
                    memory_mib: int | None = 8192) -> DedupReport:
    """Find exact and near duplicates among the library's ``ok``/``duplicate``
    models and store the candidate pairs (replacing the last run's).

    Args:
        catalog: the open library.
        threshold: near-duplicate distance at or below which two models are
            linked (in [0, 1]; see the module docstring for measured values).
        workers: processes computing missing features (0: in this process).
        head_fn: picklable ``model -> HeadBounds`` for models without head
            annotations (e.g. :func:`mmdsynth.annotate.suggest.suggest_head_bounds`).
        compute: compute missing features (False: compare what is stored).
        auto_resolve: decide same-geometry groups automatically (origin
            ``auto``; human decisions win) and withdraw stale auto decisions.
        recompute: recompute every model's features.
        progress: a tqdm bar while computing features.
        timeout_s, memory_mib: per-model limits of the feature workers.

    Returns a :class:`DedupReport` (with the groups, as :func:`duplicate_groups`).

    Raises ValueError for a threshold outside [0, 1].
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    start = time.perf_counter()
    report = DedupReport(threshold=threshold)
    records = [r for r in catalog.models() if r.status in _PARTICIPATING]
    report.models = len(records)
    if compute:
        t = time.perf_counter()
        report.computed, report.feature_errors = compute_features(
            catalog, records, workers=workers, head_fn=head_fn, timeout_s=timeout_s, memory_mib=memory_mib,
            progress=progress, recompute=recompute)
        report.feature_seconds = time.perf_counter() - t
    feats = catalog.features([r.id for r in records])
    by_id = {r.id: r for r in records}
    ids = sorted(i for i in by_id if i in feats)
    report.unrendered = sum(1 for i in ids if not feats[i].body_hash)

    pairs: dict[tuple[str, str], DuplicatePair] = {}
    # exact geometry
    by_geom: dict[str, list[str]] = {}
    for i in ids:
        g = feats[i].geometry_hash
        if g:
            by_geom.setdefault(g, []).append(i)
    geom_sets = [sorted(v) for v in by_geom.values() if len(v) > 1]
    for ms in geom_sets:
        for x in range(len(ms)):
            for y in range(x + 1, len(ms)):
                pairs[(ms[x], ms[y])] = DuplicatePair(ms[x], ms[y], "geometry", 0.0, True, {"geometry_hash": "same"})
    report.geometry_pairs = len(pairs)
    # near
    for i, j, d, detail in _near_pairs(ids, feats, threshold):
        a, b = ids[i], ids[j]
        if (a, b) not in pairs:
            pairs[(a, b)] = DuplicatePair(a, b, "near", d, True, detail)
            report.near_pairs += 1
    # complete the pairwise distances inside each component (for review)
    uf = UnionFind()
    for a, b in pairs:
        uf.union(a, b)
    for ms in uf.groups().values():
        if len(ms) < 2 or len(ms) > 200:
            continue
        ms = sorted(ms)
        for x in range(len(ms)):
            for y in range(x + 1, len(ms)):
                key = (ms[x], ms[y])
                if key not in pairs:
                    d, detail = near_distance(feats[ms[x]], feats[ms[y]])
                    pairs[key] = DuplicatePair(ms[x], ms[y], "near", d, False, detail)
    run = {"threshold": threshold, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "models": len(ids), "geometry_version": GEOMETRY_VERSION, "image_version": IMAGE_VERSION,
           "weights": WEIGHTS}
    catalog.replace_duplicate_pairs(sorted(pairs.values(), key=lambda p: (p.model_a, p.model_b)), run)
    if auto_resolve:
        report.auto_decided, report.auto_withdrawn = _auto_resolve(catalog, geom_sets, by_id)
    report.byte_copies = catalog.byte_copies()
    report.groups = duplicate_groups(catalog)
    report.seconds = time.perf_counter() - start
    return report


def _auto_resolve(catalog: Catalog, geom_sets: list[list[str]], by_id: dict[str, ModelRecord]) -> tuple[int, int]:
    """Auto decisions for same-geometry sets; withdraw auto decisions no set supports."""
    want: dict[str, tuple[str, str | None]] = {}
    decisions = catalog.duplicate_decisions()
    distinct = catalog.distinct_pairs()
    for ms in geom_sets:
        human_keep = [m for m in ms if decisions.get(m) and decisions[m].origin == "human" and decisions[m].decision == "keep"]
        keeper = min(human_keep or ms, key=lambda m: _preference(by_id[m]))
        want.setdefault(keeper, ("keep", None))
        for m in ms:
            if m != keeper and tuple(sorted((m, keeper))) not in distinct:
                want[m] = ("duplicate", keeper)
    written = withdrawn = 0
    with catalog.transaction():
        for mid, d in decisions.items():
            if d.origin == "auto" and want.get(mid) != (d.decision, d.duplicate_of):
                if catalog.clear_duplicate_decision(mid, origin="auto"):
                    withdrawn += 1
        for mid, (decision, of) in want.items():
            if catalog.set_duplicate_decision(mid, decision, of, origin="auto"):
                written += 1
    return written, withdrawn
