"""The render job: a spec and a library in, HDF5 shards of (rest, morphed, posed) triples out.

Flow (``mmdsynth render SPEC.toml``):

1. The library's catalog gives one :class:`~.plan.PlanModel` per usable model
   (status ``ok``; head bounds and morph slots from its annotations).
2. :func:`~.plan.plan_all` plans every split; models that failed in an
   earlier attempt (``index.json`` ``failed``) are replaced locally. Shards
   that ``index.json`` lists beyond the plan (the spec now asks for fewer
   examples or larger shards) are dropped from it and deleted.
3. This node's shards (:func:`~.plan.shards_for_node`) that are not complete
   already (listed in ``index.json`` with the same plan fingerprint and a
   matching sha256) are cut into *units*: one model's examples in one shard.
4. Worker processes (an :class:`~.workers.IsolatedPool`: each with its own
   GL context, started with ``spawn`` so no GL state is shared through
   ``fork``) render units: the model's rest image, then for each example the
   morphed image (expression only) and the posed image (expression and
   rotations). A worker that crashes (a driver fault, the out-of-memory
   killer) or hangs (:func:`unit_time_limit`) fails its unit's model like a
   render error and is replaced.
5. The main process writes each shard through a :class:`~.shards.ShardWriter`
   (temporary file renamed into place when complete) and records it in
   ``index.json``. A model that fails to load or render is recorded in
   ``index.json``; the shards it was in are re-planned without it and redone,
   and the run goes on.

Killing the job at any moment leaves complete shards (listed in
``index.json``) and temporary files; a rerun removes this node's stale
temporary files and renders exactly the missing shards, which come out
identical to an uninterrupted run's (every draw depends only on the spec's
seed, the split and the example number).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .catalog import Catalog, ModelRecord
from .plan import HeadBounds, PlanError, PlanModel, ShardPlan, SplitPlan, expression_only, plan_all, shards_for_node
from .shards import (ShardMeta, ShardWriter, adopt_shard, encode_images, load_index, shard_is_complete,
                     update_index)
from .spec import RenderSpec
from .workers import IsolatedPool, default_workers

# Renderers a worker keeps (models appear in many shards; each costs GPU memory).
RENDERER_CACHE_SIZE = 2
# Examples per unit of work: small enough to spread one model's examples in a
# shard over all workers, large enough that the extra rest image is noise.
UNIT_EXAMPLES = 24


def catalog_records(catalog: Catalog) -> list[PlanModel]:
    """Planning records of the catalog's usable models (status ``ok``).

    ``head_source`` is the head bounds' origin; ``morphs_source`` is
    ``human`` only when every expression slot was annotated by a person.
    Models without annotations get ``None`` (the planner skips them with a reason).
    """
    from mmdsynth.mmd.schema import EXPRESSION_SLOTS

    records = []
    for rec in catalog.models(status="ok"):
        ann = catalog.annotations(rec.id)
        head = catalog.head_bounds(rec.id)
        has_slots = any(slot in ann for slot in EXPRESSION_SLOTS)
        morphs_source = "human" if has_slots and all(slot in ann and ann[slot].origin == "human" for slot in EXPRESSION_SLOTS) else "auto"
        records.append(PlanModel(
            model_id=rec.id, name=rec.name, path=rec.path,
            assignment=catalog.assignment(rec.id) if has_slots else None,
            head=HeadBounds(head[0], head[1]) if head else None,
            head_source=head[2] if head else "auto", morphs_source=morphs_source,
            group=rec.group, split=rec.split,
        ))
    return records


# ----------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class Unit:
    """Up to :data:`UNIT_EXAMPLES` of one model's examples in one shard: what a
    worker renders in one go. Chunk 0 of a model also renders its rest image.

    ``examples``: (position, pose (P,) float32, ambient, directional) per example;
    ``rest_light``: (ambient, directional) of the rest image.
    """

    split: str
    shard: int
    row: int  # the model's row in the shard (rest/models datasets)
    chunk: int
    model: PlanModel
    library: str
    preset: str
    schema: str
    max_angle: float
    rest_light: tuple[float, float]
    examples: tuple[tuple[int, np.ndarray, float, float], ...]
    compression: str = "lz4"
    compression_level: int | None = None


@dataclass
class UnitResult:
    """A rendered unit: the rest image, (position, morphed, posed) per example,
    already compressed as shard chunks (:class:`~.shards.EncodedImage`: the
    workers compress in parallel, the writer only copies bytes), or ``error``
    (one line) when the model could not be loaded or rendered."""

    split: str
    shard: int
    row: int
    chunk: int
    model_id: str
    rest: np.ndarray | None = None
    images: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)
    error: str | None = None
    renderer: str = ""
    peak_rss_kib: int = 0  # the worker's peak resident memory so far


_RENDERERS: OrderedDict = OrderedDict()


def _renderer_for(unit: Unit):
    """The worker's cached (model, renderer, framing) for ``unit``'s model."""
    from mmdsynth.mmd.loader import load_model
    from mmdsynth.render import Framing, ModelRenderer

    key = (unit.library, unit.model.path, unit.preset)
    if key in _RENDERERS:
        _RENDERERS.move_to_end(key)
        return _RENDERERS[key]
    model = load_model(Path(unit.library) / unit.model.path)
    head = unit.model.head
    center_x = head.center_x
    if center_x is None:
        center_x = next((float(b.position[0]) for b in model.bones if b.name == "頭"), 0.0)
    framing = Framing.from_head(unit.preset, head.top, head.bottom, center_x)
    renderer = ModelRenderer(model, preset=unit.preset)
    _RENDERERS[key] = (model, renderer, framing)
    while len(_RENDERERS) > RENDERER_CACHE_SIZE:
        _, (_, old, _) = _RENDERERS.popitem(last=False)
        old.release()
    return _RENDERERS[key]


def render_unit(unit: Unit) -> UnitResult:
    """Render one unit (runs in a worker process, or in-process with 0 workers).
    Errors from the model or the renderer become ``UnitResult.error``."""
    from mmdsynth.mmd.schema import get_schema
    from mmdsynth.render import Lighting, renderer_string

    result = UnitResult(unit.split, unit.shard, unit.row, unit.chunk, unit.model.model_id)
    try:
        _, renderer, framing = _renderer_for(unit)
        schema = get_schema(unit.schema)
        assignment = unit.model.assignment
        result.renderer = renderer_label(renderer, renderer_string())
        images = []
        if unit.chunk == 0:
            images.append(renderer.render_pose(None, framing, Lighting(*unit.rest_light)))
        for _, pose, ambient, directional in unit.examples:
            light = Lighting(ambient=ambient, directional=directional)
            expression = schema.to_pose(expression_only(schema, pose), assignment, unit.max_angle)
            full = schema.to_pose(pose, assignment, unit.max_angle)
            images += [renderer.render_pose(expression, framing, light), renderer.render_pose(full, framing, light)]
        encoded = encode_images(np.stack(images), unit.compression, unit.compression_level)
        if unit.chunk == 0:
            result.rest, encoded = encoded[0], encoded[1:]
        result.images = [(position, encoded[2 * i], encoded[2 * i + 1]) for i, (position, *_) in enumerate(unit.examples)]
    except Exception as exc:  # any failure of one model must not stop the job
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        result.rest, result.images = None, []
    result.peak_rss_kib = _peak_rss_kib()
    return result


def _peak_rss_kib() -> int:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 0
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def renderer_label(renderer, gl_renderer: str) -> str:
    """GL_RENDERER plus the anti-aliasing and texture filtering used (images differ by device)."""
    return (f"{gl_renderer} (supersample {renderer.supersample}x{renderer.supersample}, "
            f"msaa {renderer.samples}, textures {renderer.texture_filter})")


# ----------------------------------------------------------------------------- main side


@dataclass
class JobReport:
    """What a run did: shards written and kept, examples (and morphed + posed
    images) written in this run's shards, models skipped or failed (with
    reasons), images written per second, warnings."""

    shards_written: list[Path] = field(default_factory=list)
    shards_kept: list[Path] = field(default_factory=list)
    shards_adopted: list[Path] = field(default_factory=list)
    examples: int = 0
    images: int = 0
    seconds: float = 0.0
    skipped: dict[str, list[dict]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    peak_rss_kib: int = 0  # the largest peak resident memory of a render worker

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def _units(spec: RenderSpec, shard: ShardPlan) -> list[Unit]:
    units = []
    for row, m in enumerate(shard.models):
        exs = shard.examples_of(m.model_id)
        for chunk, start in enumerate(range(0, len(exs), UNIT_EXAMPLES)):
            units.append(Unit(
                split=shard.split, shard=shard.index, row=row, chunk=chunk, model=m, library=str(spec.library),
                preset=spec.preset, schema=spec.schema, max_angle=float(spec.max_angle),
                rest_light=(float(exs[0].ambient), float(exs[0].directional)),
                examples=tuple((e.position, np.asarray(e.pose, np.float32), float(e.ambient), float(e.directional))
                               for e in exs[start:start + UNIT_EXAMPLES]),
                compression=spec.compression, compression_level=spec.compression_level,
            ))
    return units


def _remove_stale_temporaries(shards: Sequence[ShardPlan]) -> None:
    """Temporary files a killed run left for this node's shards."""
    for shard in shards:
        for tmp in shard.path.parent.glob(f".{shard.path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)


class _ShardAssembly:
    """Collects unit results of one shard and writes them: models in row order
    (chunk 0 brings the rest image), examples as soon as their model is in."""

    def __init__(self, spec: RenderSpec, shard: ShardPlan):
        self.shard = shard
        self.spec = spec
        self.writer: ShardWriter | None = None
        self.rests: dict[int, UnitResult] = {}
        self.waiting: dict[int, list[UnitResult]] = {}
        self.next_row = 0
        self.written = 0
        self.examples = {e.position: e for e in shard.examples}

    def add(self, result: UnitResult) -> ShardWriter | None:
        """Store a result; returns the writer once every example is written."""
        if result.chunk == 0:
            self.rests[result.row] = result
        elif result.row < self.next_row:
            self._write_images(result)
        else:
            self.waiting.setdefault(result.row, []).append(result)
        while self.next_row in self.rests:
            first = self.rests.pop(self.next_row)
            if self.writer is None:
                meta = ShardMeta.for_shard(self.spec, self.shard, renderer=first.renderer)
                self.writer = ShardWriter(self.shard.path, meta, num_examples=len(self.shard.examples),
                                          compression=self.spec.compression, compression_level=self.spec.compression_level)
            m = self.shard.models[self.next_row]
            lead = self.shard.examples_of(m.model_id)[0]
            self.writer.add_model(m.model_id, m.name, m.path, first.rest, light=(lead.ambient, lead.directional))
            self._write_images(first)
            for r in self.waiting.pop(self.next_row, []):
                self._write_images(r)
            self.next_row += 1
        done = self.next_row == len(self.shard.models) and self.written == len(self.shard.examples)
        return self.writer if done else None

    def _write_images(self, result: UnitResult) -> None:
        for position, morphed, posed in result.images:
            self.writer.add_planned(self.examples[position], morphed, posed)
        self.written += len(result.images)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def unit_time_limit(unit: Unit) -> float:
    """Seconds a worker may spend on ``unit`` before it is stopped as hung:
    generous (loading a large model and compiling shaders take seconds, an
    image tens of milliseconds on a software rasteriser)."""
    return 300.0 + 10.0 * len(unit.examples)


def _map(workers: int, units: Sequence[Unit], render_fn: Callable[[Unit], UnitResult] = render_unit,
         time_limit: Callable[[Unit], float] = unit_time_limit) -> Iterator[UnitResult]:
    """Render ``units`` in ``workers`` processes (0: in this one), results in
    completion order. A worker that crashes (a driver fault, the kernel's
    out-of-memory killer) or hangs past ``time_limit(unit)`` seconds costs
    only its unit, which comes back as an error; the worker is replaced."""
    if workers <= 0:
        for unit in units:
            yield render_fn(unit)
        return
    with IsolatedPool(workers) as pool:
        for unit in units:
            pool.submit(unit, render_fn, (unit,), timeout=time_limit(unit))
        while pool.pending:
            for outcome in pool.wait():
                if outcome.ok:
                    yield outcome.value
                else:
                    u = outcome.key
                    yield UnitResult(u.split, u.shard, u.row, u.chunk, u.model.model_id,
                                     error=f"render worker: {outcome.error}")


def run_job(spec: RenderSpec, out_dir: str | Path | None = None, workers: int | None = None, node_index: int = 0,
            num_nodes: int = 1, progress: bool = True, log: Callable[[str], None] | None = None,
            render_fn: Callable[[Unit], UnitResult] = render_unit,
            time_limit: Callable[[Unit], float] = unit_time_limit) -> JobReport:
    """Render this node's share of ``spec`` into ``out_dir`` (default ``spec.output``).

    Args:
        workers: render processes (default: one per core; 0 renders in this process).
        node_index, num_nodes: this machine's share (see :func:`~.plan.shards_for_node`).
        progress: show a tqdm bar (images/s, ETA) on stderr.
        log: where one-line messages go (default: stderr).
        render_fn, time_limit: test hooks (picklable, module-level): what a
            worker runs per unit (default :func:`render_unit`) and its time
            limit in seconds (default :func:`unit_time_limit`); the tests use
            them to make a worker crash or hang, which real models rarely do.

    Returns the :class:`JobReport`. Raises SpecError/PlanError (bad spec or
    nothing to render), CatalogError (bad library) and OSError.
    """
    log = log or (lambda line: print(line, file=sys.stderr))
    out = Path(out_dir if out_dir is not None else spec.output)
    workers = default_workers() if workers is None else int(workers)
    report = JobReport()
    with Catalog.open(spec.library) as catalog:
        records = catalog_records(catalog)
        unusable = [r for r in catalog.models() if r.status != "ok"]
    _check_listed_ids(spec, unusable)
    if unusable:
        counts = Counter(r.status for r in unusable)
        log(f"not rendered: {', '.join(f'{n} {status}' for status, n in sorted(counts.items()))} model(s) of the "
            f"library (mmdsynth catalog {spec.library} --status STATUS lists them)")
    start = time.perf_counter()
    attempted: set[str] = set()
    while True:
        failed = {}
        for split in spec.split_names:
            for f in load_index(out / split).get("failed", []):
                failed[f["model_id"]] = f.get("reason", "failed")
        plans = plan_all(spec, records, out, failed=failed)
        todo = [s for s in shards_for_node(list(plans.values()), node_index, num_nodes)
                if not shard_is_complete(s.path, s.fingerprint)]
        todo = _adopt_copied_shards(todo, report, log)
        if not attempted:  # first pass: record the plans and what was kept
            _record_plans(plans, report, log)
            mine = shards_for_node(list(plans.values()), node_index, num_nodes)
            report.shards_kept = [s.path for s in mine if s not in todo]
        todo = [s for s in todo if s.path.name + s.split + s.fingerprint not in attempted]
        if not todo:
            break
        attempted.update(s.path.name + s.split + s.fingerprint for s in todo)
        new_failures = _render_shards(spec, todo, workers, progress, report, log, render_fn, time_limit)
        if not new_failures:
            break
    report.seconds = time.perf_counter() - start
    report.failed = failed | report.failed
    return report


def _adopt_copied_shards(todo: list[ShardPlan], report: JobReport, log) -> list[ShardPlan]:
    """Shards of ``todo`` whose file is present but not listed in ``index.json``
    (copied in from another node's output folder) are checked against the plan
    (:func:`~.shards.adopt_shard`) and listed; returns the rest of ``todo``.
    A listed file whose sha256 does not match is not adopted: it is redone."""
    left = []
    for shard in todo:
        info = None
        if shard.path.is_file() and not any(e.get("file") == shard.path.name
                                            for e in load_index(shard.path.parent).get("shards", [])):
            info = adopt_shard(shard.path, shard.fingerprint, len(shard.examples), shard.split, shard.index)
        if info is None:
            left.append(shard)
            continue
        update_index(shard.path.parent, shard=info, split=shard.split)
        report.shards_adopted.append(shard.path)
    if len(left) < len(todo):
        log(f"adopted {len(todo) - len(left)} shard file(s) that index.json did not list (plan and images checked)")
    return left


def _check_listed_ids(spec: RenderSpec, unusable: Sequence[ModelRecord]) -> None:
    """Raise PlanError when a split lists (by id or id prefix) a model whose
    status keeps it out of every dataset (duplicate, error, unusable, not a
    character), naming the status and its reason."""
    for split in spec.splits:
        if split.models.kind != "ids":
            continue
        for listed in split.models.ids:
            for r in unusable:
                if r.id == listed or (isinstance(listed, str) and isinstance(r.id, str) and r.id.startswith(listed)):
                    why = f" ({r.reason})" if r.reason else ""
                    raise PlanError(f"split {split.name}: model {listed!r} ({r.name or r.path}) has status "
                                    f"{r.status}{why}; only models with status ok are rendered")


def _record_plans(plans: dict[str, SplitPlan], report: JobReport, log) -> None:
    for name, plan in plans.items():
        stale = _stale_shards(plan)
        update_index(plan.split_dir, split=name, skipped=plan.skipped_records(), planned=plan.planned_record(),
                     remove=stale)
        for file in stale:  # unlisted first, then removed: a kill in between leaves an unread file, never a listed gap
            (plan.split_dir / file).unlink(missing_ok=True)
        if stale:
            log(f"split {name}: removed {len(stale)} shard(s) beyond the {len(plan.shards)} the spec now plans "
                f"({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''})")
        report.skipped[name] = plan.skipped_records()
        for w in plan.warnings:
            report.warnings.append(w)
            log(f"warning: {w}")
        for s in plan.skipped:
            log(f"skipped {s.name or s.model_id} ({s.path}): {s.reason}")


def _stale_shards(plan: SplitPlan) -> list[str]:
    """Shard files ``index.json`` lists that the plan no longer has (an earlier
    run of the spec asked for more examples or smaller shards): left listed,
    :func:`~.shards.open_split` would read them as part of the split."""
    planned = {s.path.name for s in plan.shards}
    return [s["file"] for s in load_index(plan.split_dir)["shards"]
            if s["file"] not in planned and s["file"] == Path(s["file"]).name]


def _render_shards(spec: RenderSpec, shards: list[ShardPlan], workers: int, progress: bool, report: JobReport,
                   log, render_fn: Callable[[Unit], UnitResult] = render_unit,
                   time_limit: Callable[[Unit], float] = unit_time_limit) -> dict[str, str]:
    """Render ``shards``; returns the models that failed in this pass."""
    _remove_stale_temporaries(shards)
    by_key = {(s.split, s.index): s for s in shards}
    assemblies = {key: _ShardAssembly(spec, s) for key, s in by_key.items()}
    units = [u for s in shards for u in _units(spec, s)]
    total = 2 * sum(len(s.examples) for s in shards)
    failures: dict[str, str] = {}
    dead: set[tuple[str, int]] = set()
    bar = tqdm(total=total, unit="img", desc="render", disable=not progress, dynamic_ncols=True, smoothing=0.1)
    try:
        for result in _map(workers, units, render_fn, time_limit):
            key = (result.split, result.shard)
            if key in dead:
                continue
            shard = by_key[key]
            if result.error is not None:
                m = shard.models[result.row]
                failures[m.model_id] = result.error
                report.failed[m.model_id] = result.error
                log(f"failed {m.name or m.model_id} ({m.path}): {result.error}; its shards are re-planned without it")
                update_index(shard.path.parent, failed=[{"model_id": m.model_id, "name": m.name, "path": m.path, "reason": result.error}])
                for k, s in by_key.items():  # every pending shard with this model is redone after re-planning
                    if k not in dead and any(x.model_id == m.model_id for x in s.models):
                        assemblies[k].abort()
                        dead.add(k)
                continue
            report.peak_rss_kib = max(report.peak_rss_kib, result.peak_rss_kib)
            bar.update(2 * len(result.images))
            writer = assemblies[key].add(result)
            if writer is not None:
                info = writer.close()
                # counted once written: the images of a shard dropped for a failed model are not output
                report.examples += len(shard.examples)
                report.images += 2 * len(shard.examples)
                update_index(shard.path.parent, shard=info, split=shard.split)
                report.shards_written.append(shard.path)
                dead.add(key)
    except BaseException:
        for key, assembly in assemblies.items():
            if key not in dead:
                assembly.abort()
        raise
    finally:
        bar.close()
    return failures


def format_report(report: JobReport, out_dir: Path) -> str:
    """Lines summarising a run for the terminal."""
    lines = [f"dataset: {out_dir}"]
    adopted = f", adopted: {len(report.shards_adopted)}" if report.shards_adopted else ""
    lines.append(f"  shards written: {len(report.shards_written)}, already complete: {len(report.shards_kept)}{adopted}")
    lines.append(f"  examples rendered: {report.examples} ({report.images} images in {report.seconds:.1f} s, "
                 f"{report.images_per_second:.1f} images/s)")
    n_skipped = sum(len(v) for v in report.skipped.values())
    if n_skipped:
        lines.append(f"  models skipped: {n_skipped} (reasons in each split's index.json)")
    if report.failed:
        lines.append(f"  models failed: {len(report.failed)} (recorded in index.json; their examples went to other models)")
    return "\n".join(lines)


def replace_output(spec: RenderSpec, out_dir: str | Path | None) -> RenderSpec:
    """``spec`` with its output folder replaced (the CLI's ``--out``)."""
    return spec if out_dir is None else dataclasses.replace(spec, output=Path(out_dir))
