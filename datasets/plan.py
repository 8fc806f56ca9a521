"""Planning a render job: which model, pose and lights every example gets, and which shard it lands in.

Pure and deterministic: the same spec and the same model records give the same
plan on every machine, in every process, whatever order the records come in.
Nothing here touches a GPU or the disk.

How a split is planned (:func:`plan_split`)
-------------------------------------------
1. **Selection**: the split's ``models``/``groups``/``ids``/``from`` (see
   :mod:`.spec`) picks records out of the library's models.
2. **Eligibility**: a model is skipped, with its reason kept in
   :attr:`SplitPlan.skipped` (the render job writes them to ``index.json``),
   when it has no head bounds, when a pose parameter has no morph to drive
   (no mouth-open morph; an eye with neither its own wink morph nor a
   both-eyes morph), or, with ``accept_auto_annotations = false``, when its
   head bounds or morph assignment are automatic suggestions.
3. **Spread**: the eligible models, sorted by id, are shuffled with a
   generator seeded from (seed, split); example ``k`` goes to model
   ``order[k % n]`` (shuffled round-robin), so per-model counts differ by at
   most one.
4. **Shards**: examples ``[s * shard_size, (s + 1) * shard_size)`` form shard
   ``s``, written to ``OUTPUT/SPLIT/shard-{s:05d}.h5``.
5. **Draws**: example ``k`` gets its own ``numpy.random.Generator`` from
   ``SeedSequence(seed, spawn_key=(split_key, 1, k))`` (``split_key``: the
   first 8 bytes of sha256(split name)) and draws, in this order, the pose
   (``schema.sample(rng, assignment)``, then ``schema.constrain``: the pose
   actually applied, tied eyes equal), the ambient and the directional
   magnitude (U[low, high], or the fixed value without a draw). An example's
   pose therefore depends only on (seed, split, k), not on the shard size,
   on which node renders it, or on the other examples.
6. **Lights per model and shard**: the rest image is rendered once per model
   per shard, so the lights drawn for a model's first example in a shard are
   used for all of that model's examples in the shard (and its rest image):
   each (rest, morphed, posed) triple is lit alike, and a network never has to
   guess a brightness change it cannot see. With many models (each appears
   about once per shard) this is the same as drawing per example.

Spreading work over machines without a coordinator
---------------------------------------------------
Every node plans the same splits and renders ``shards_for_node(plans, i, n)``;
these sets are disjoint and together cover every shard. A rerun skips shards
that ``index.json`` lists with a matching sha256 and plan fingerprint (see
:func:`mmdsynth.datasets.shards.shard_is_complete`).

The render job, in outline (the CLI's ``mmdsynth render``)::

    from mmdsynth.datasets import plan as P, shards as S
    from mmdsynth.render import Framing, Lighting, ModelRenderer, renderer_string
    schema = spec.pose_schema
    plans = P.plan_all(spec, records)                      # records: list[PlanModel]
    for split_plan in plans.values():
        S.update_index(split_plan.split_dir, split=split_plan.split,
                       skipped=split_plan.skipped_records(), planned=split_plan.planned_record())
    for shard in P.shards_for_node(list(plans.values()), node, nodes):
        if S.shard_is_complete(shard.path, shard.fingerprint):
            continue                                           # done by an earlier run
        meta = S.ShardMeta.for_shard(spec, shard, renderer=renderer_string())
        with S.ShardWriter(shard.path, meta, num_examples=len(shard.examples),
                           compression=spec.compression, compression_level=spec.compression_level) as w:
            for m in shard.models:                             # load each model once per shard
                model = load_model(spec.library / m.path)
                center_x = m.head.center_x if m.head.center_x is not None else <the 頭 bone's rest X>
                framing = Framing.from_head(spec.preset, m.head.top, m.head.bottom, center_x)
                with ModelRenderer(model, spec.preset) as r:
                    rest = r.render_pose(None, framing, Lighting(ambient=..., directional=...))
                    row = w.add_model(m.model_id, m.name, m.path, rest, light=(..., ...))
                    for ex in shard.examples_of(m.model_id):  # ex.model == row
                        light = Lighting(ambient=ex.ambient, directional=ex.directional)
                        expr = P.expression_only(schema, ex.pose)   # rotations at rest
                        morphed = r.render_pose(schema.to_pose(expr, m.assignment, spec.max_angle), framing, light)
                        posed = r.render_pose(schema.to_pose(ex.pose, m.assignment, spec.max_angle), framing, light)
                        w.add_planned(ex, morphed, posed)
        S.update_index(shard.path.parent, shard=w.info)

A model that fails to load while rendering cannot simply be left out of its
shard (the round-robin would shift every later example); record it with
``update_index(..., failed=[...])`` and re-plan without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mmdsynth.mmd.schema import MorphAssignment, MorphTarget, PoseSchema

from .spec import RenderSpec, SplitSpec

__all__ = [
    "PlanError",
    "HeadBounds",
    "PlanModel",
    "SkippedModel",
    "ExamplePlan",
    "ShardPlan",
    "SplitPlan",
    "plan_split",
    "plan_all",
    "select_models",
    "eligibility",
    "shards_for_node",
    "expression_only",
    "example_rng",
    "split_key",
    "shard_file_name",
]

_SHUFFLE = 0
_EXAMPLE = 1


class PlanError(ValueError):
    """A split cannot be planned (no eligible model, an unknown id or group); one line."""


class HeadBounds(NamedTuple):
    """Annotated head framing, MMD units in the rest pose: ``top`` (head top Y),
    ``bottom`` (chin tip Y), ``center_x`` (the image's centre X: the 頭 bone's
    X; None = take it from the model's 頭 bone when rendering, which is what
    the catalog's ``head_bounds`` implies)."""

    top: float
    bottom: float
    center_x: float | None = None


@dataclass(frozen=True)
class PlanModel:
    """What planning needs to know about one library model (the catalog's record, reduced).

    * ``model_id``: the catalog id (int or str; stored in shards).
    * ``name``: display name. ``path``: the model file's path inside the library.
    * ``assignment``: which morph fills each expression slot (None: not annotated).
    * ``head``: :class:`HeadBounds` (or a ``(top, bottom, center_x)`` tuple), None if not annotated.
    * ``head_source``, ``morphs_source``: ``"human"`` (reviewed by a person) or
      ``"auto"`` (an automatic suggestion) for the head bounds and the morph assignment.
    * ``group``: the source group (download folder/archive); ``split``: the
      split the catalog assigns (``from = "catalog"``); either may be None.
    """

    model_id: int | str
    name: str
    path: str
    assignment: MorphAssignment | None
    head: HeadBounds | tuple | None
    head_source: str = "human"
    morphs_source: str = "human"
    group: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class SkippedModel:
    """A selected model that cannot be rendered, and why (one line)."""

    model_id: int | str
    name: str
    path: str
    reason: str

    def to_record(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "name": self.name, "path": self.path, "reason": self.reason}


@dataclass(frozen=True, eq=False)
class ExamplePlan:
    """One planned example.

    * ``index``: the example's number within its split (0-based).
    * ``position``: its row in its shard (0-based).
    * ``model_id``; ``model``: index of its model in :attr:`ShardPlan.models`
      (= its row of the shard's ``rest`` and ``models`` datasets).
    * ``pose``: (P,) float32, the pose applied (already constrained: in range,
      tied eyes equal). ``ambient``, ``directional``: light magnitudes.
    """

    index: int
    position: int
    model_id: int | str
    model: int
    pose: np.ndarray
    ambient: float
    directional: float


@dataclass(frozen=True, eq=False)
class ShardPlan:
    """One shard: ``index`` (its number in the split), ``path``
    (``OUTPUT/SPLIT/shard-NNNNN.h5``), ``examples`` in file order, and
    ``models``: the :class:`PlanModel` records it uses, in order of first
    appearance (the order of the shard's ``rest``/``models`` rows)."""

    split: str
    index: int
    path: Path
    examples: tuple[ExamplePlan, ...]
    models: tuple[PlanModel, ...]
    spec: RenderSpec = field(repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    def examples_of(self, model_id: int | str) -> list[ExamplePlan]:
        """The examples of one model, in file order."""
        return [e for e in self.examples if e.model_id == model_id]

    @property
    def fingerprint(self) -> str:
        """sha256 (hex) of everything that decides this shard's content: the
        preset, schema and max angle, each model's id, path, head bounds and
        morph assignment, and each example's model, pose and lights. Stored
        in the shard and in ``index.json``; a rerun keeps an existing shard
        only when it matches (a changed annotation or spec redoes it)."""
        doc = {
            "preset": self.spec.preset,
            "schema": self.spec.schema,
            "max_angle": self.spec.max_angle,
            "split": self.split,
            "index": self.index,
            "models": [
                [m.model_id, m.path, [None if v is None else float(v) for v in m.head] if m.head is not None else None,
                 m.assignment.as_dict() if m.assignment is not None else None]
                for m in self.models
            ],
            "examples": [[e.model, [float(v) for v in e.pose], float(e.ambient), float(e.directional)] for e in self.examples],
        }
        text = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, eq=False)
class SplitPlan:
    """The plan of one split.

    * ``models``: eligible models in round-robin order (example k uses
      ``models[k % len(models)]``).
    * ``skipped``: selected models that cannot be rendered, with reasons.
    * ``auto_annotated``: ids of eligible models that use automatic annotations
      (accepted by the spec; report the count as a warning).
    * ``shards``: in index order. ``split_dir``: ``OUTPUT/SPLIT``.
    """

    spec: RenderSpec = field(repr=False)
    split: str
    split_dir: Path
    num_examples: int
    models: tuple[PlanModel, ...]
    skipped: tuple[SkippedModel, ...]
    auto_annotated: tuple[int | str, ...]
    shards: tuple[ShardPlan, ...]
    warnings: tuple[str, ...] = ()

    def examples_per_model(self) -> dict[int | str, int]:
        """Model id -> number of examples it gets."""
        n = len(self.models)
        return {m.model_id: self.num_examples // n + (1 if i < self.num_examples % n else 0) for i, m in enumerate(self.models)}

    def skipped_records(self) -> list[dict[str, Any]]:
        """``skipped`` as JSON-ready dicts (model_id, name, path, reason) for ``index.json``."""
        return [s.to_record() for s in self.skipped]

    def planned_record(self) -> dict[str, Any]:
        """Totals for ``index.json``: ``{"shards": S, "examples": N, "models": M}``."""
        return {"shards": len(self.shards), "examples": self.num_examples, "models": len(self.models)}


# ----------------------------------------------------------------------------- random streams


def split_key(split: str) -> int:
    """A stable 64-bit integer for a split name (first 8 bytes of its sha256, little-endian)."""
    return int.from_bytes(hashlib.sha256(split.encode("utf-8")).digest()[:8], "little")


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of example ``index`` of ``split``:
    ``default_rng(SeedSequence(seed, spawn_key=(split_key(split), 1, index)))``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_key(split), _EXAMPLE, index)))


def _shuffle_rng(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_key(split), _SHUFFLE)))


def shard_file_name(index: int) -> str:
    """``shard-00042.h5`` for index 42."""
    return f"shard-{index:05d}.h5"


# ----------------------------------------------------------------------------- selection, eligibility


def _id_key(model_id: int | str) -> tuple[int, int | str]:
    return (0, model_id) if isinstance(model_id, (int, np.integer)) else (1, str(model_id))


def select_models(split: SplitSpec, models: Iterable[PlanModel]) -> list[PlanModel]:
    """The records a split's selection picks, sorted by id.

    Raises PlanError: a listed id is not among ``models``, two listed ids (or
    id prefixes) name the same model, a listed group has no model, or the
    selection picks nothing.
    """
    models = list(models)
    sel = split.models
    if sel.kind == "all":
        chosen = models
    elif sel.kind == "groups":
        wanted = set(sel.groups)
        chosen = [m for m in models if m.group in wanted]
        empty = [g for g in sel.groups if not any(m.group == g for m in chosen)]
        if empty:
            raise PlanError(f"split {split.name}: no model in group{'s' if len(empty) > 1 else ''} {', '.join(repr(g) for g in empty[:5])}")
    elif sel.kind == "ids":
        by_id = {m.model_id: m for m in models}
        chosen, missing = [], []
        listed_as: dict[int | str, int | str] = {}  # model id -> the spec's entry that named it
        for i in sel.ids:
            # A string may be a unique prefix of a (sha256) id, as the catalog shows them.
            hits = [by_id[i]] if i in by_id else [
                m for m in models if isinstance(i, str) and isinstance(m.model_id, str) and m.model_id.startswith(i)]
            if len(hits) > 1:
                raise PlanError(f"split {split.name}: model id prefix {i!r} matches {len(hits)} models; give more characters")
            if not hits:
                missing.append(i)
                continue
            m = hits[0]
            if m.model_id in listed_as:
                raise PlanError(f"split {split.name}: ids {listed_as[m.model_id]!r} and {i!r} name the same model "
                                f"{str(m.model_id)[:12]!r}; list it once")
            listed_as[m.model_id] = i
            chosen.append(m)
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise PlanError(f"split {split.name}: model id{'s' if len(missing) > 1 else ''} {', '.join(repr(i) for i in missing[:5])}{more} not in the library")
    elif sel.kind == "catalog":
        chosen = [m for m in models if m.split == split.name]
        if not chosen:
            raise PlanError(f"split {split.name}: the catalog assigns no model to split {split.name!r} (run mmdsynth split first)")
    else:  # pragma: no cover - spec validation prevents it
        raise PlanError(f"split {split.name}: unknown model selection {sel.kind!r}")
    if not chosen:
        raise PlanError(f"split {split.name}: the library has no models")
    ids = [m.model_id for m in chosen]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise PlanError(f"split {split.name}: model id {dup!r} appears in two records")
    return sorted(chosen, key=lambda m: _id_key(m.model_id))


def eligibility(model: PlanModel, schema: PoseSchema, accept_auto: bool = True) -> list[str]:
    """Why ``model`` cannot be rendered with ``schema`` (an empty list: it can).

    Checks: head bounds present and sane (finite, top above bottom); every
    morph parameter of the schema has a morph to drive (its own slot, or the
    both-eyes slot when eyes are tied); with ``accept_auto`` False, head
    bounds and morph assignment annotated by a person.
    """
    reasons = []
    head = model.head
    if head is None:
        reasons.append("no head bounds annotated")
    else:
        try:
            top, bottom = float(head[0]), float(head[1])
            cx = float(head[2]) if len(head) > 2 and head[2] is not None else 0.0
            if not (math.isfinite(top) and math.isfinite(bottom) and math.isfinite(cx)) or top <= bottom:
                reasons.append(f"head bounds are not usable (top {top:g}, bottom {bottom:g})")
        except (TypeError, ValueError, IndexError):
            reasons.append(f"head bounds are not usable ({head!r})")
    assignment = model.assignment
    if assignment is None:
        reasons.append("no morph assignment annotated")
    else:
        tied = {i for pair in schema.tied_pairs(assignment) for i in pair}
        for i, p in enumerate(schema.parameters):
            t = p.target
            if not isinstance(t, MorphTarget):
                continue
            slot = t.both_slot if i in tied else t.slot
            if assignment.get(slot) is None:
                if t.slot == "mouth":
                    reasons.append("no mouth-open morph (あ)")
                elif t.both_slot:
                    reasons.append(f"no morph closes the eye of {p.name} (no {t.slot} and no {t.both_slot} morph)")
                else:
                    reasons.append(f"no morph for {p.name} (slot {t.slot})")
    if not accept_auto:
        if head is not None and model.head_source != "human":
            reasons.append("head bounds are an automatic suggestion (the spec accepts human annotations only)")
        if assignment is not None and model.morphs_source != "human":
            reasons.append("morph assignment is an automatic suggestion (the spec accepts human annotations only)")
    return reasons


# ----------------------------------------------------------------------------- planning


def plan_split(spec: RenderSpec, split: str, models: Iterable[PlanModel], out_dir: str | Path | None = None,
               failed: Mapping[int | str, str] | None = None) -> SplitPlan:
    """Plan one split of ``spec``.

    Args:
        spec: the render spec.
        split: the split's name (a ``[splits.NAME]`` of the spec).
        models: the library's model records (any order; the split's selection
            is applied here, so passing every record is right).
        out_dir: the dataset folder (default ``spec.output``); shards go to
            ``out_dir/split/shard-NNNNN.h5``.
        failed: model id -> reason for models that failed to load or render in
            an earlier attempt. They keep their place in the shuffled order
            (so shards without them keep their content and fingerprint) but
            their examples go to the next model in that order that did not
            fail; they are reported in ``skipped``.

    Returns:
        The :class:`SplitPlan` (see the module docstring for the rules).

    Raises:
        SpecError: ``split`` is not in the spec.
        PlanError: the selection names unknown ids or empty groups, or no
            selected model is eligible (the message counts the reasons).
    """
    split_spec = spec.split(split)
    schema = spec.pose_schema
    split_dir = Path(out_dir if out_dir is not None else spec.output) / split
    selected = select_models(split_spec, models)

    eligible: list[PlanModel] = []
    skipped: list[SkippedModel] = []
    for m in selected:
        reasons = eligibility(m, schema, spec.accept_auto_annotations)
        if reasons:
            skipped.append(SkippedModel(m.model_id, m.name, m.path, "; ".join(reasons)))
        else:
            eligible.append(m)
    if not eligible:
        counts: dict[str, int] = {}
        for s in skipped:
            counts[s.reason] = counts.get(s.reason, 0) + 1
        top = ", ".join(f"{n} x {r}" for r, n in sorted(counts.items(), key=lambda x: -x[1])[:3])
        raise PlanError(f"split {split}: none of the {len(selected)} selected models can be rendered ({top})")

    auto = tuple(m.model_id for m in eligible if m.head_source != "human" or m.morphs_source != "human")
    order = _shuffle_rng(spec.seed, split).permutation(len(eligible))
    ordered = tuple(eligible[i] for i in order)

    failed = dict(failed or {})
    usable = [m for m in ordered if m.model_id not in failed]
    if not usable:
        raise PlanError(f"split {split}: every eligible model failed to render")
    for m in ordered:
        if m.model_id in failed:
            skipped.append(SkippedModel(m.model_id, m.name, m.path, f"failed to render: {failed[m.model_id]}"))

    n_examples = split_spec.examples
    n_models = len(ordered)
    shards = []
    for s, start in enumerate(range(0, n_examples, spec.shard_size)):
        stop = min(start + spec.shard_size, n_examples)
        shard_models: list[PlanModel] = []
        model_pos: dict[int | str, int] = {}
        model_light: dict[int | str, tuple[float, float]] = {}
        examples = []
        for k in range(start, stop):
            m = ordered[k % n_models]
            j = 1
            while m.model_id in failed:  # the next model in the shuffled order takes its place
                m = ordered[(k + j) % n_models]
                j += 1
            pose, ambient, directional = _draw(spec, schema, split, k, m.assignment)
            if m.model_id not in model_pos:
                model_pos[m.model_id] = len(shard_models)
                shard_models.append(m)
                model_light[m.model_id] = (ambient, directional)
            # The rest image is drawn once per model per shard, so the model's first
            # example there fixes the lights of all its examples in the shard: every
            # (rest, morphed, posed) triple is lit alike.
            ambient, directional = model_light[m.model_id]
            examples.append(ExamplePlan(k, k - start, m.model_id, model_pos[m.model_id], pose, ambient, directional))
        shards.append(ShardPlan(split, s, split_dir / shard_file_name(s), tuple(examples), tuple(shard_models), spec))

    warnings = []
    if auto:
        warnings.append(f"split {split}: {len(auto)} of {n_models} models use automatic (unreviewed) annotations")
    if n_examples < n_models:
        warnings.append(f"split {split}: {n_examples} examples for {n_models} models; {n_models - n_examples} models get none")
    ordered = tuple(usable)
    return SplitPlan(spec=spec, split=split, split_dir=split_dir, num_examples=n_examples, models=ordered,
                     skipped=tuple(skipped), auto_annotated=auto, shards=tuple(shards), warnings=tuple(warnings))


def _draw(spec: RenderSpec, schema: PoseSchema, split: str, k: int, assignment: MorphAssignment) -> tuple[np.ndarray, float, float]:
    rng = example_rng(spec.seed, split, k)
    pose = schema.constrain(schema.sample(rng, assignment), assignment)
    light = []
    for r in (spec.lighting.ambient, spec.lighting.directional):
        light.append(r.low if r.fixed else float(rng.uniform(r.low, r.high)))
    return pose, light[0], light[1]


def expression_only(schema: PoseSchema, pose: np.ndarray) -> np.ndarray:
    """The pose of the ``morphed`` image: ``pose`` ((P,) float) with every
    rotation parameter set to its default (the expression parameters kept).
    Returns a new (P,) float32 array."""
    out = np.array(pose, np.float32, copy=True)
    if out.shape != (schema.size,):
        raise ValueError(f"pose has shape {out.shape}, schema {schema.name} needs ({schema.size},)")
    for i, p in enumerate(schema.parameters):
        if not isinstance(p.target, MorphTarget):
            out[i] = p.default
    return out


def plan_all(spec: RenderSpec, models: Iterable[PlanModel], out_dir: str | Path | None = None,
             failed: Mapping[int | str, str] | None = None) -> dict[str, SplitPlan]:
    """Plan every split of ``spec`` (file order); ``failed`` as in :func:`plan_split`.
    A model selected by two splits adds a warning to both plans (a leak
    between splits). Raises like :func:`plan_split`."""
    models = list(models)
    plans = {s.name: plan_split(spec, s.name, models, out_dir, failed) for s in spec.splits}
    owners: dict[int | str, list[str]] = {}
    for name, p in plans.items():
        for m in p.models:
            owners.setdefault(m.model_id, []).append(name)
    shared = {mid: names for mid, names in owners.items() if len(names) > 1}
    if shared:
        result = {}
        for name, p in plans.items():
            n = sum(1 for names in shared.values() if name in names)
            if n:
                others = sorted({o for names in shared.values() if name in names for o in names if o != name})
                w = f"split {name}: {n} models also appear in split {', '.join(others)}"
                p = dataclasses.replace(p, warnings=p.warnings + (w,))
            result[name] = p
        plans = result
    return plans


def shards_for_node(plans: SplitPlan | Sequence[SplitPlan] | Sequence[ShardPlan], node_index: int, num_nodes: int) -> list[ShardPlan]:
    """The shards node ``node_index`` of ``num_nodes`` renders.

    All shards (of one split, or of several splits in the given order) are
    numbered 0, 1, 2, ...; node i takes those with number % num_nodes == i.
    The sets of different nodes are disjoint and together cover every shard;
    consecutive shards go to different nodes, so the work is balanced.

    Raises ValueError when ``num_nodes < 1`` or ``node_index`` is not in
    ``[0, num_nodes)``.
    """
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, (int, np.integer)) or num_nodes < 1:
        raise ValueError(f"num_nodes must be an integer >= 1, got {num_nodes!r}")
    if isinstance(node_index, bool) or not isinstance(node_index, (int, np.integer)) or not 0 <= node_index < num_nodes:
        raise ValueError(f"node_index must be an integer in [0, {num_nodes}), got {node_index!r}")
    if isinstance(plans, SplitPlan):
        plans = [plans]
    everything: list[ShardPlan] = []
    for p in plans:
        everything.extend(p.shards if isinstance(p, SplitPlan) else [p])
    return [s for i, s in enumerate(everything) if i % num_nodes == node_index]
