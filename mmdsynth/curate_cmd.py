"""``mmdsynth scan``, ``mmdsynth dedup``, ``mmdsynth split``: curate downloads into a library.

* ``mmdsynth scan DOWNLOADS --library LIB [--workers N] [limits...]``
* ``mmdsynth dedup LIB [--threshold T] [--workers N] [--json] [--no-auto] [--recompute]``
* ``mmdsynth split LIB (--val GROUP... --test GROUP... | --ratio 0.98,0.01,0.01 [--seed S]) [--dry-run]``
* :func:`bench_scan` for ``mmdsynth bench scan`` (wired by :mod:`mmdsynth.bench`).

Handlers raise :class:`mmdsynth.errors.UserError` for bad input (one line on
stderr, exit 2). This module, not :mod:`mmdsynth.datasets`, hands the
suggestion heuristics (:mod:`mmdsynth.annotate.suggest`) to scan and dedup as
picklable callables.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from mmdsynth.catalog_cmd import suggester

__all__ = ["bench_scan", "cmd_dedup", "cmd_scan", "cmd_split", "format_bench_scan", "register"]


def _user_error(message: str) -> Exception:
    from mmdsynth.errors import UserError

    return UserError(message)


def _open(library: Path, create: bool = False):
    from mmdsynth.datasets.catalog import Catalog, CatalogError

    try:
        return Catalog.open(library, create=create)
    except CatalogError as exc:
        raise _user_error(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < v < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0")
    return v


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``scan``, ``dedup`` and ``split`` subcommands to ``subparsers``."""
    p = subparsers.add_parser(
        "scan",
        help="extract downloaded archives and folders safely into a library; load-check and character-check every model",
        description=(
            "Walk DOWNLOADS for .zip/.7z/.rar archives and .pmx/.pmd files. Archives are extracted (safely: no path "
            "escapes, no links, size/count/ratio limits; nested archives one level deep) into "
            "LIB/models/<group>/<archive name>/, where <group> is the first folder under DOWNLOADS; loose models are "
            "copied with their textures. Each model is loaded in a worker process with a time and memory limit and "
            "recorded in the catalog as ok, error (the loader's message) or not_character (the reason). A rerun skips "
            "what it already has. Exit status: 0, or 1 when some archive or model failed."
        ),
    )
    p.add_argument("downloads", type=Path, metavar="DOWNLOADS", help="the downloads folder")
    p.add_argument("--library", "-l", type=Path, required=True, metavar="LIB",
                   help="library folder (created when it does not exist)")
    p.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help="worker processes (default: one per core; 0: in this process, without limits, for debugging)")
    p.add_argument("--timeout", type=_positive_float, default=120.0, metavar="S",
                   help="seconds to load one model before it is stopped (default 120)")
    p.add_argument("--memory-mb", type=_positive_int, default=4096, metavar="M",
                   help="memory a worker may use above its baseline, MiB (default 4096; 0: no limit)")
    p.add_argument("--max-archive-gb", type=_positive_float, default=4.0, metavar="G",
                   help="largest total size extracted from one archive, GiB (default 4)")
    p.add_argument("--max-files", type=_positive_int, default=20000, metavar="N",
                   help="most members in one archive (default 20000)")
    p.add_argument("--max-ratio", type=_positive_float, default=100.0, metavar="R",
                   help="largest extracted/archive size ratio once past 64 MiB (default 100)")
    p.add_argument("--no-suggest", action="store_true", help="do not store automatic head/morph suggestions")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the summary (not each error or skipped member)")
    p.set_defaults(func=cmd_scan)

    p = subparsers.add_parser(
        "dedup",
        help="find exact and near-duplicate models; list the groups to review",
        description=(
            "Exact duplicates: the same bytes (one catalog entry; copies listed) and the same geometry (positions "
            "and faces hashed after quantisation; e.g. a PMX and its PMD), decided automatically (keep the PMX / "
            "the model with more morphs; human decisions always win). Near duplicates: perceptual hashes of front "
            "renders (head and full body) plus geometry and colour statistics, grouped at --threshold; review them "
            "in 'mmdsynth annotate dups LIB'. Decisions survive re-runs; a duplicate gets status 'duplicate' and is "
            "never rendered."
        ),
    )
    p.add_argument("library", type=Path, metavar="LIB", help="library folder")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="near-duplicate distance in [0, 1] at or below which models are grouped (default 0.2)")
    p.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help="processes rendering models whose features are missing (default: one per core)")
    p.add_argument("--no-auto", action="store_true", help="do not decide same-geometry groups automatically")
    p.add_argument("--recompute", action="store_true", help="recompute every model's features")
    p.add_argument("--all", action="store_true", help="also list resolved groups")
    p.add_argument("--json", action="store_true", help="print the groups as JSON")
    p.set_defaults(func=cmd_dedup)

    p = subparsers.add_parser(
        "split",
        help="assign train/val/test splits by source group (no group or duplicate group spans two splits)",
        description=(
            "Assign every ok (and duplicate) model a split. With --val/--test, the named source groups go to val/test "
            "and the rest to train; with --ratio, whole groups are drawn at random (--seed) until each split has its "
            "share of models. Source groups that duplicates connect always share a split. A render spec uses the "
            "result with: from = \"catalog\"."
        ),
    )
    p.add_argument("library", type=Path, metavar="LIB", help="library folder")
    p.add_argument("--val", nargs="+", action="extend", default=[], metavar="GROUP", help="source groups for val")
    p.add_argument("--test", nargs="+", action="extend", default=[], metavar="GROUP", help="source groups for test")
    p.add_argument("--ratio", metavar="TRAIN,VAL,TEST", help="shares of models, e.g. 0.98,0.01,0.01")
    p.add_argument("--seed", type=int, default=0, help="seed of --ratio (default 0)")
    p.add_argument("--dry-run", action="store_true", help="print the split without writing it")
    p.set_defaults(func=cmd_split)


# ---------------------------------------------------------------------------
# scan
# ---------------------------------------------------------------------------


def cmd_scan(args: argparse.Namespace) -> int:
    """``mmdsynth scan``: returns 0, or 1 when some archive or model failed."""
    from mmdsynth.datasets.archives import ArchiveLimits
    from mmdsynth.datasets.scan import ScanError, ScanLimits, check_downloads, scan_downloads
    from mmdsynth.datasets.workers import WorkerStartError

    try:  # before the library is created: a refused scan leaves no library behind
        check_downloads(args.downloads, args.library)
    except ScanError as exc:
        raise _user_error(str(exc)) from None
    limits = ScanLimits(
        load_timeout_s=args.timeout,
        memory_mib=args.memory_mb or None,
        archive=ArchiveLimits(max_bytes=max(1, int(args.max_archive_gb * (1 << 30))), max_members=max(1, args.max_files),
                              max_ratio=args.max_ratio),
    )
    suggest = None if args.no_suggest else suggester("scan")
    with _open(args.library, create=True) as catalog:
        try:
            report = scan_downloads(catalog, args.downloads, workers=args.workers, limits=limits, suggest=suggest,
                                    progress=True)
        except ScanError as exc:
            raise _user_error(str(exc)) from None
        except WorkerStartError as exc:
            raise _user_error(f"cannot start worker processes: {exc}") from None
        except sqlite3.Error as exc:
            raise _user_error(f"{catalog.path}: {exc}") from None
        if not args.quiet:
            for line in report.messages:
                print(f"mmdsynth scan: {line}", file=sys.stderr)
        print(report.summary())
        print(f"library: {catalog.library}")
    failed = report.errors + report.refused + report.archive_errors
    return 1 if failed else 0


# ---------------------------------------------------------------------------
# dedup
# ---------------------------------------------------------------------------


def _head_fn():
    try:
        from mmdsynth.annotate.suggest import suggest_head_bounds
    except Exception:  # noqa: BLE001 - body renders only
        return None
    return suggest_head_bounds


def format_groups(groups, limit: int | None = None) -> str:
    """Human-readable listing of duplicate groups (members with distances and decisions)."""
    lines = []
    for n, g in enumerate(groups[:limit] if limit else groups, 1):
        state = "resolved" if g.resolved else "to review"
        lines.append(f"group {n} ({g.kind}, {len(g.members)} models, {state}; source groups: {', '.join(g.source_groups)})")
        for m in g.members:
            d = m.decision
            if d is None:
                tag = "?"
            elif d.decision == "keep":
                tag = "keep"
            else:
                tag = "dup"
            origin = f" [{d.origin}]" if d is not None else ""
            dist = "  rep " if m.model_id == g.representative else (f"{m.distance:6.3f}" if m.distance is not None else "     -")
            lines.append(f"  {tag:4s}{origin:8s} {m.model_id[:8]} {dist}  {m.status:9s} {m.format:3s} "
                         f"{(m.vertices or 0):>7,} v {(m.morphs or 0):>4} morphs  {m.path}")
    if limit and len(groups) > limit:
        lines.append(f"... {len(groups) - limit} more groups (use --json for all)")
    return "\n".join(lines)


def cmd_dedup(args: argparse.Namespace) -> int:
    """``mmdsynth dedup``: finds groups, prints them; 0."""
    from mmdsynth.datasets.dedup import DEFAULT_THRESHOLD, find_duplicates
    from mmdsynth.datasets.workers import WorkerStartError, default_workers
    from mmdsynth.datasets.text import count

    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    if not 0.0 <= threshold <= 1.0:
        raise _user_error(f"--threshold {threshold}: must be in [0, 1]")
    workers = default_workers() if args.workers is None else args.workers
    with _open(args.library) as catalog:
        try:
            report = find_duplicates(catalog, threshold=threshold, workers=workers, head_fn=_head_fn(),
                                     auto_resolve=not args.no_auto, recompute=args.recompute, progress=True)
        except WorkerStartError as exc:
            raise _user_error(f"cannot start worker processes: {exc}") from None
        except sqlite3.Error as exc:
            raise _user_error(f"{catalog.path}: {exc}") from None
    groups = report.groups if args.all else [g for g in report.groups if not g.resolved]
    review = sum(1 for g in report.groups if not g.resolved)
    copies = sum(len(v) - 1 for v in report.byte_copies.values())
    if args.json:
        print(json.dumps({
            "threshold": threshold, "models": report.models, "computed": report.computed,
            "feature_errors": report.feature_errors, "byte_copies": report.byte_copies,
            "geometry_pairs": report.geometry_pairs, "near_pairs": report.near_pairs,
            "auto_decided": report.auto_decided, "groups": [g.to_json() for g in groups],
        }, ensure_ascii=False, indent=1))
        return 0
    for line in report.feature_errors[:20]:
        print(f"mmdsynth dedup: warning: {line}", file=sys.stderr)
    if len(report.feature_errors) > 20:
        print(f"mmdsynth dedup: warning: ... and {len(report.feature_errors) - 20} more models without renders "
              "(compared by geometry statistics only)", file=sys.stderr)
    if groups:
        print(format_groups(groups, limit=200))
    print(f"{count(report.models, 'model')} compared (features computed for {report.computed}); "
          f"{count(copies, 'byte copy', 'byte copies')} of {count(len(report.byte_copies), 'model')} "
          f"(one catalog entry each); {count(report.geometry_pairs, 'same-geometry pair')}, "
          f"{count(report.near_pairs, 'near pair')} at threshold {threshold:g}; "
          f"{count(len(report.groups), 'group')}, {review} to review; "
          f"{count(report.auto_decided, 'automatic decision')} ({report.seconds:.1f} s)")
    if review:
        print(f"review them with: mmdsynth annotate dups {args.library}")
    return 0


# ---------------------------------------------------------------------------
# split
# ---------------------------------------------------------------------------


def cmd_split(args: argparse.Namespace) -> int:
    """``mmdsynth split``: assigns splits and prints the counts; 0."""
    from mmdsynth.datasets.splits import SplitError, assign_splits, normalise_ratio

    ratio = None
    if args.ratio is not None:
        try:
            ratio = [float(x) for x in args.ratio.split(",")]
        except ValueError:
            raise _user_error(f"--ratio {args.ratio!r}: give three numbers, e.g. 0.98,0.01,0.01") from None
        try:
            shares = normalise_ratio(ratio)
        except SplitError as exc:
            raise _user_error(str(exc)) from None
        if abs(sum(ratio) - 1.0) > 1e-9:
            print(f"mmdsynth split: note: --ratio {args.ratio} adds up to {sum(ratio):g}, not 1; used as shares "
                  f"{','.join(f'{x:.3g}' for x in shares)}", file=sys.stderr)
    with _open(args.library) as catalog:
        try:
            plan = assign_splits(catalog, val=args.val, test=args.test, ratio=ratio, seed=args.seed, dry_run=args.dry_run)
        except SplitError as exc:
            raise _user_error(str(exc)) from None
        except sqlite3.Error as exc:
            raise _user_error(f"{catalog.path}: {exc}") from None
    for group, split, via in plan.pulled:
        print(f"mmdsynth split: note: group {group!r} goes to {split} with {via!r} (they share duplicates)", file=sys.stderr)
    print(plan.summary() + (" (dry run: nothing written)" if args.dry_run else ""))
    if plan.unassigned:
        print(f"{plan.unassigned} models without a split (status error, not_character or unusable)")
    return 0


# ---------------------------------------------------------------------------
# bench scan
# ---------------------------------------------------------------------------


def _bench_archives(downloads: Path, copies: int, models: list[Path]) -> dict[str, int]:
    """``copies`` zips of the example character and of each of ``models``, each
    zip holding the model (distinct bytes per copy: trailing bytes appended,
    which the loader ignores with a warning) and the image files of its folder."""
    import zipfile

    from mmdsynth.datasets.library import safe_name
    from mmdsynth.mmd.example import write_example

    made: dict[str, int] = {}
    example = write_example(downloads.parent / "src" / "example")
    sets = [("example", example)] + [(safe_name(m.stem.lower(), "model"), m) for m in models]
    for group, model in sets:
        folder = model.parent
        data = model.read_bytes()
        textures = [p for p in sorted(folder.rglob("*")) if p.is_file()
                    and p.suffix.lower() in (".png", ".bmp", ".jpg", ".jpeg", ".tga", ".sph", ".spa", ".dds")]
        (downloads / group).mkdir(parents=True, exist_ok=True)
        for i in range(copies):
            with zipfile.ZipFile(downloads / group / f"{group}-{i:03d}.zip", "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr(f"{group}/{model.name}", data + i.to_bytes(4, "little") * (i > 0))
                for t in textures:
                    z.write(t, f"{group}/{t.relative_to(folder).as_posix()}")
        made[group] = copies
    return made


def _bench_dedup_entries(root: Path, entries: int, seed: int = 0) -> dict[str, float]:
    """Time ``find_duplicates(compute=False)`` on a catalog of ``entries``
    synthetic models with stored features: 90% distinct (random 64-bit hashes,
    random colour histograms and geometry statistics), 10% near copies of one
    of them (up to 4 hash bits flipped, colours and statistics jittered by ~2%)."""
    import hashlib

    import numpy as np

    from mmdsynth.datasets.catalog import Catalog, ModelRecord
    from mmdsynth.datasets.dedup import GEOMETRY_VERSION, IMAGE_VERSION, find_duplicates

    rng = np.random.default_rng(seed)
    feats: list[tuple] = []
    with Catalog.open(root / "bench-dedup", create=True) as cat:
        with cat.transaction():
            for i in range(entries):
                mid = hashlib.sha256(f"bench-{i}".encode()).hexdigest()
                if feats and rng.random() < 0.1:
                    head, body, color, stats = feats[int(rng.integers(len(feats)))]
                    for _ in range(int(rng.integers(0, 5))):
                        bit = 1 << int(rng.integers(64))
                        if rng.random() < 0.5:
                            head ^= bit
                        else:
                            body ^= bit
                    color = np.abs(color + rng.normal(0, 0.002, 64))
                    color = color / color.sum()
                    stats = {k: (v * float(rng.uniform(0.98, 1.02)) if isinstance(v, float) else v) for k, v in stats.items()}
                else:
                    head, body = int(rng.integers(1 << 63)) << 1 | int(rng.integers(2)), int(rng.integers(1 << 63)) << 1
                    color = rng.dirichlet(np.full(64, 0.3))
                    h = float(rng.uniform(15, 25))
                    v = int(rng.lognormal(10, 0.7))
                    stats = {"vertices": v, "faces": int(v * rng.uniform(1.3, 2.0)), "height": h,
                             "width": h * float(rng.uniform(0.3, 1.0)), "depth": h * float(rng.uniform(0.15, 0.35)),
                             "area": h * h * float(rng.uniform(0.5, 1.2)), "max_y": h, "min_y": 0.0, "center_x": 0.0,
                             "morphs": 50, "bones": 200, "materials": 10, "textures": 8}
                    feats.append((head, body, color, stats))
                cat.insert_model(ModelRecord(mid, f"models/g{i % 50}/m{i}/m.pmx", "pmx", f"m{i}", f"g{i % 50}",
                                             vertices=stats["vertices"], faces=stats["faces"], morphs=50))
                cat.set_geometry_features(mid, hashlib.sha256(repr(sorted(stats.items())).encode()).hexdigest(), stats,
                                          GEOMETRY_VERSION)
                cat.set_image_features(mid, f"{head:016x}", f"{body:016x}", color.tolist(), IMAGE_VERSION)
        start = time.perf_counter()
        report = find_duplicates(cat, compute=False)
        seconds = time.perf_counter() - start
    return {"entries": entries, "dedup_s": seconds, "groups": len(report.groups), "near_pairs": report.near_pairs}


def bench_scan(models: list[Path] | None = None, copies: int = 8, workers: int | None = None,
               entries: int = 1000) -> dict[str, Any]:
    """Scan and dedup figures from one run (``mmdsynth bench scan [MODEL...]``).

    Builds, in a temporary folder, ``copies`` zips of the example character and
    ``copies`` of each model of ``models`` (default: Gene,
    ``$MMDSYNTH_TESTDATA/models/gene/Gene_light.pmx`` or
    ``../shared/testdata/...``, left out when absent), each zip with the model
    (distinct bytes per copy) and the images of its folder, and measures, with
    ``workers`` processes (default: one per core):

    * ``<set>_per_s`` / ``<set>_nosuggest_per_s``: models scanned per second
      (wall clock of :func:`~mmdsynth.datasets.scan.scan_downloads`: hashing,
      extraction in a worker, the load with limits, character check, geometry
      hash, catalog writes; worker start-up included), with the automatic
      head/morph suggestions (the default) and without (``--no-suggest``);
    * ``models_per_s``: both sets together, with suggestions;
    * ``feature_models_per_s``: dedup's render features (load + two front
      renders + hashes, in workers) on the scanned models;
    * ``dedup_s``: :func:`~mmdsynth.datasets.dedup.find_duplicates` with stored
      features over ``entries`` synthetic catalog entries (pairing, grouping,
      storing pairs, decisions).
    """
    import os
    import shutil
    import tempfile

    from mmdsynth.datasets.catalog import Catalog
    from mmdsynth.datasets.dedup import find_duplicates
    from mmdsynth.datasets.scan import scan_downloads
    from mmdsynth.datasets.workers import default_workers

    workers = default_workers() if workers is None else workers
    if models is None:
        env = os.environ.get("MMDSYNTH_TESTDATA")
        root = Path(env) if env else Path(__file__).resolve().parent.parent.parent / "shared" / "testdata"
        gene = root / "models" / "gene" / "Gene_light.pmx"
        models = [gene] if gene.is_file() else []
    suggest = suggester("bench")
    result: dict[str, Any] = {"workers": workers, "copies": copies}
    with tempfile.TemporaryDirectory(prefix="mmdsynth-bench-scan-") as tmp:
        tmp = Path(tmp)
        made = _bench_archives(tmp / "downloads", copies, [Path(m) for m in models])
        result["sets"] = made
        for group in made:
            only = tmp / f"only-{group}"
            shutil.copytree(tmp / "downloads" / group, only / group)
            for label, fn in (("", suggest), ("_nosuggest", None)):
                with Catalog.open(tmp / f"lib-{group}{label}", create=True) as cat:
                    r = scan_downloads(cat, only, workers=workers, suggest=fn, progress=False)
                result[f"{group}{label}_per_s"] = r.models / r.seconds if r.seconds else 0.0
        lib = tmp / "library"
        with Catalog.open(lib, create=True) as cat:
            r = scan_downloads(cat, tmp / "downloads", workers=workers, suggest=suggest, progress=False)
            result.update(models=r.models, ok=r.ok, scan_s=r.seconds, models_per_s=r.models / r.seconds if r.seconds else 0.0,
                          bytes_extracted=r.bytes_extracted)
            d = find_duplicates(cat, workers=workers, head_fn=_head_fn())
            result.update(features_computed=d.computed, features_s=d.feature_seconds,
                          feature_models_per_s=d.computed / d.feature_seconds if d.feature_seconds else 0.0,
                          scanned_groups=len(d.groups))
        result.update(_bench_dedup_entries(tmp, entries))
    return result


def format_bench_scan(r: dict[str, Any]) -> str:
    """Human-readable lines of a :func:`bench_scan` result."""
    lines = [f"scan        {r['models']} models from {sum(r['sets'].values())} zips "
             f"({', '.join(f'{k} x{v}' for k, v in r['sets'].items())}), {r['workers']} workers: "
             f"{r['models_per_s']:.2f} models/s ({r['scan_s']:.1f} s, {r['bytes_extracted'] / (1 << 20):.0f} MiB extracted)"]
    for k in r["sets"]:
        lines.append(f"  {k:9s} alone: {r[f'{k}_per_s']:.2f} models/s with suggestions, "
                     f"{r[f'{k}_nosuggest_per_s']:.2f} models/s with --no-suggest")
    lines.append(f"features    {r['feature_models_per_s']:.2f} models/s with {r['workers']} workers "
                 f"(load + 2 front renders + hashes; computed once per model, stored)")
    if "dedup_s" in r:
        lines.append(f"dedup       {r['dedup_s']:.2f} s for {r['entries']:,} catalog entries with stored features "
                     f"({r['groups']} groups, {r['near_pairs']} near pairs)")
    return "\n".join(lines)
