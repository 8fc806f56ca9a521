"""``mmdsynth bench``: speed figures measured in one run (never timed tests)."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from mmdsynth.errors import UserError
from mmdsynth.mmd.loader import load_model


def median_seconds(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeat`` calls after ``warmup`` calls (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _pymeshio_reader(path: Path) -> Callable[[], object] | None:
    """A pymeshio loader for ``path`` (PMX or PMD by magic), or None if pymeshio is absent."""
    try:
        import pymeshio.pmd.reader
        import pymeshio.pmx.reader
    except ImportError:
        return None
    with open(path, "rb") as fh:
        magic = fh.read(4)
    module = pymeshio.pmx.reader if magic == b"PMX " else pymeshio.pmd.reader
    return lambda: module.read_from_file(str(path))


def bench_parse(paths: list[Path], repeat: int = 7) -> list[dict]:
    """Median load time of :func:`load_model` and of pymeshio for each file.

    Returns one dict per file: path, ours_s, pymeshio_s (None when pymeshio is
    not installed), speedup (pymeshio_s / ours_s or None).
    """
    rows = []
    for path in paths:
        ours = median_seconds(lambda: load_model(path), repeat)
        other_fn = _pymeshio_reader(path)
        other = median_seconds(other_fn, max(3, repeat // 2)) if other_fn else None
        rows.append({"path": str(path), "ours_s": ours, "pymeshio_s": other, "speedup": other / ours if other else None})
    return rows


def format_parse_rows(rows: list[dict]) -> str:
    """A table of :func:`bench_parse` results."""
    lines = [f"{'file':40s} {'load_model':>12s} {'pymeshio':>12s} {'ratio':>8s}"]
    for r in rows:
        other = f"{r['pymeshio_s'] * 1000:9.1f} ms" if r["pymeshio_s"] is not None else "  (absent)"
        ratio = f"{r['speedup']:7.1f}x" if r["speedup"] is not None else "       -"
        lines.append(f"{Path(r['path']).name[:40]:40s} {r['ours_s'] * 1000:9.1f} ms {other:>12s} {ratio}")
    return "\n".join(lines)


def bench_render(path: Path, preset: str = "tha1", repeat: int = 35, poses: int = 8) -> dict:
    """Rendering speed of one model, measured in one run (``mmdsynth bench render``).

    Head bounds and morphs come from :func:`mmdsynth.cli.head_and_morphs`
    (the suggestions). ``poses`` THA1 poses are sampled (seeded, so runs are
    comparable) and rendered in turn.

    Timed, each as the median over ``repeat`` calls after 2 warm-up calls:

    * ``pose_render_s``: one image: pose (THA1 vector -> Pose, morphs and
      forward kinematics on the CPU) + GPU skinning + render + resolve +
      read-back (:meth:`ModelRenderer.render_pose`), seconds.
    * ``bare_s``: one flat-shaded untextured draw of the same geometry (all
      faces, no culling, rest positions already on the GPU) into the same
      render target (size, supersampling, MSAA) + the same resolve and
      read-back (:meth:`ModelRenderer.render_bare`), seconds.
    * ``ratio``: pose_render_s / bare_s.
    * ``cpu_pose_render_s``: the CPU alternative, ``pose_model`` +
      :meth:`ModelRenderer.render` (for information).
    * ``pose_render_cpu_s``, ``bare_cpu_s``, ``ratio_cpu``: the same two
      measurements in this process's CPU time (all threads; a software
      rasteriser's worker threads included), which other processes' load
      does not inflate; ``load_average``: the 1-minute load average at the end.

    Also returns path, preset, width, height, renderer (GL_RENDERER),
    samples, supersample, texture_filter, vertices, faces.
    """
    import numpy as np

    from mmdsynth.model_cmd import head_and_morphs
    from mmdsynth.mmd.posing import pose_model
    from mmdsynth.mmd.schema import THA1
    from mmdsynth.render import Framing, ModelRenderer, renderer_string

    model = load_model(path)
    top, bottom, center_x, assignment, _ = head_and_morphs(model)
    framing = Framing.from_head(preset, top, bottom, center_x)
    rng = np.random.default_rng(0)
    vectors = [THA1.constrain(THA1.sample(rng, assignment), assignment) for _ in range(max(1, poses))]
    with ModelRenderer(model, preset=preset) as renderer:
        counter = iter(range(1 << 62))

        def gpu_frame():
            pose = THA1.to_pose(vectors[next(counter) % len(vectors)], assignment)
            return renderer.render_pose(pose, framing)

        def cpu_frame():
            pose = THA1.to_pose(vectors[next(counter) % len(vectors)], assignment)
            return renderer.render(pose_model(model, pose), framing)

        # Interleave the two main measurements so that load from other processes hits both
        # alike; record wall time and this process's CPU time (all threads, llvmpipe's too).
        wall = {"gpu": [], "bare": []}
        cpu_time = {"gpu": [], "bare": []}
        for _ in range(2):
            gpu_frame()
            renderer.render_bare(framing)
        for _ in range(repeat):
            for key, fn in (("gpu", gpu_frame), ("bare", lambda: renderer.render_bare(framing))):
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                wall[key].append(time.perf_counter() - start)
                cpu_time[key].append(time.process_time() - start_cpu)
        cpu = median_seconds(cpu_frame, max(3, repeat // 3), warmup=2)
        pose_render = statistics.median(wall["gpu"])
        bare = statistics.median(wall["bare"])
        pose_render_cpu = statistics.median(cpu_time["gpu"])
        bare_cpu = statistics.median(cpu_time["bare"])
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = None
        return {
            "path": str(path), "preset": preset, "width": framing.width, "height": framing.height,
            "renderer": renderer_string(), "samples": renderer.samples, "supersample": renderer.supersample,
            "texture_filter": renderer.texture_filter,
            "vertices": model.vertex_count, "faces": model.face_count,
            "pose_render_s": pose_render, "bare_s": bare, "ratio": pose_render / bare, "cpu_pose_render_s": cpu,
            "pose_render_cpu_s": pose_render_cpu, "bare_cpu_s": bare_cpu, "ratio_cpu": pose_render_cpu / bare_cpu,
            "load_average": load,
        }


def format_render_result(r: dict) -> str:
    """Human-readable lines of a :func:`bench_render` result."""
    aa = []
    if r["supersample"] > 1:
        aa.append(f"{r['supersample']}x{r['supersample']} supersampling")
    if r["samples"] > 1:
        aa.append(f"{r['samples']}x MSAA")
    return "\n".join([
        f"model      {Path(r['path']).name} ({r['vertices']:,} vertices, {r['faces']:,} faces)",
        f"renderer   {r['renderer']}",
        f"image      {r['preset']} {r['width']}x{r['height']}, anti-aliasing: {', '.join(aa) or 'none'}, "
        f"textures: {r['texture_filter']}",
        f"pose+render+readback  {r['pose_render_s'] * 1000:8.2f} ms/image (median; GPU skinning)",
        f"bare raster pass      {r['bare_s'] * 1000:8.2f} ms/image (median; flat, untextured, same target)",
        f"ratio                 {r['ratio']:8.2f}",
        f"(process CPU time: {r['pose_render_cpu_s'] * 1000:.2f} ms vs {r['bare_cpu_s'] * 1000:.2f} ms, "
        f"ratio {r['ratio_cpu']:.2f}; load average {r['load_average'] if r['load_average'] is None else round(r['load_average'], 2)})",
        f"(CPU posing path: pose_model + render {r['cpu_pose_render_s'] * 1000:.2f} ms/image)",
    ])


def _bare_worker(args: tuple[str, str, float, float, float, int]) -> tuple[int, float]:
    """Bare raster passes of one model for ``count`` frames in a worker; (frames, seconds)."""
    from mmdsynth.render import Framing, ModelRenderer

    path, preset, top, bottom, center_x, count = args
    model = load_model(path)
    framing = Framing.from_head(preset, top, bottom, center_x)
    with ModelRenderer(model, preset=preset) as renderer:
        renderer.render_bare(framing)
        start = time.perf_counter()
        for _ in range(count):
            renderer.render_bare(framing)
        return count, time.perf_counter() - start


def bench_dataset(path: Path, examples: int = 2000, workers: int | None = None, reads: int = 2000) -> dict:
    """End-to-end dataset figures for one model (``mmdsynth bench dataset``), from one run.

    Builds a temporary library with the model (suggested annotations), renders
    one split of ``examples`` examples with the default spec settings and
    ``workers`` processes (default: one per core), then measures, in the same run:

    * ``images_per_s``: morphed + posed images written per second, wall clock
      from start to the last shard renamed into place (worker start-up and the
      rest images included, i.e. amortised).
    * ``bare_images_per_s``: bare raster passes per second of the same
      geometry, size and sample count with the same number of processes
      (one flat untextured draw + read-back each); ``ratio`` = images_per_s / bare.
    * ``bytes_per_example``: shard bytes on disk / examples.
    * ``peak_rss_mib``: the largest peak resident memory of a render worker.
    * ``read_per_s``: random-access ``open_split`` reads per second in one
      process (``read_per_s_2proc``: two processes together).
    """
    import multiprocessing as mp
    import tempfile

    from mmdsynth.catalog_cmd import suggest_annotations
    from mmdsynth.datasets.catalog import Catalog
    from mmdsynth.datasets.job import run_job
    from mmdsynth.datasets.workers import default_workers
    from mmdsynth.datasets.library import add_models
    from mmdsynth.datasets.shards import measure_read_rate, open_split
    from mmdsynth.datasets.spec import parse_spec

    workers = default_workers() if workers is None else workers
    with tempfile.TemporaryDirectory(prefix="mmdsynth-bench-") as tmp:
        lib = Path(tmp) / "library"
        with Catalog.open(lib, create=True) as cat:
            add_models(cat, [path], suggest=suggest_annotations, progress=False)
            (rec,) = cat.models(status="ok")
            top, bottom, _ = cat.head_bounds(rec.id)
        spec = parse_spec({"library": str(lib), "output": str(Path(tmp) / "out"),
                           "splits": {"train": {"examples": examples, "models": "all"}}}, base=tmp)
        report = run_job(spec, workers=workers, progress=False, log=lambda line: None)
        shard_bytes = sum(p.stat().st_size for p in (Path(tmp) / "out" / "train").glob("shard-*.h5"))
        model = load_model(path)
        center_x = next((float(b.position[0]) for b in model.bones if b.name == "頭"), 0.0)
        frames = max(20, report.images // max(workers, 1))
        job = (str(path), spec.preset, top, bottom, center_x, frames)
        with mp.get_context("spawn").Pool(max(workers, 1)) as pool:
            results = pool.map(_bare_worker, [job] * max(workers, 1))
        bare = sum(n for n, _ in results) / max(s for _, s in results)
        examples_seq = open_split(Path(tmp) / "out", "train")
        read = measure_read_rate(examples_seq, n=reads)
        with mp.get_context("fork").Pool(2) as pool:
            start = time.perf_counter()
            pool.starmap(_read_worker, [(str(Path(tmp) / "out"), reads // 2, seed) for seed in (1, 2)])
            read2 = reads / (time.perf_counter() - start)
    return {
        "path": str(path), "examples": examples, "workers": workers, "images": report.images,
        "seconds": report.seconds, "images_per_s": report.images_per_second, "bare_images_per_s": bare,
        "ratio": report.images_per_second / bare, "bytes_per_example": shard_bytes / examples,
        "peak_rss_mib": report.peak_rss_kib / 1024, "read_per_s": read["per_second"], "read_per_s_2proc": read2,
    }


def _read_worker(out: str, n: int, seed: int) -> None:
    from mmdsynth.datasets.shards import measure_read_rate, open_split

    measure_read_rate(open_split(out, "train"), n=n, seed=seed, warmup=0)


def format_dataset_result(r: dict) -> str:
    """Human-readable lines of a :func:`bench_dataset` result."""
    return "\n".join([
        f"model            {Path(r['path']).name}: {r['examples']} examples, {r['workers']} render workers",
        f"end to end       {r['images_per_s']:8.1f} images/s  ({r['images']} morphed+posed images in {r['seconds']:.1f} s)",
        f"bare raster      {r['bare_images_per_s']:8.1f} images/s  (same geometry, size and samples, {r['workers']} processes)",
        f"ratio            {r['ratio']:8.2f}",
        f"bytes/example    {r['bytes_per_example'] / 1024:8.1f} KiB",
        f"peak RSS/worker  {r['peak_rss_mib']:8.0f} MiB",
        f"open_split reads {r['read_per_s']:8.0f} examples/s random access (1 process); {r['read_per_s_2proc']:.0f}/s with 2",
    ])


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand."""
    p = sub.add_parser("bench", help="speed figures (parse: load_model against pymeshio; render: "
                                     "pose+render+readback against a bare raster pass; dataset: the main job end to end)")
    p.add_argument("what", choices=["parse", "render", "dataset", "scan", "train", "annotate"], help="which benchmark")
    p.add_argument("--rows", type=int, default=10000, help="annotate: catalog rows of the test library (default 10000)")
    p.add_argument("files", nargs="*", help="model files (render, dataset: one); train: a dataset folder (optional)")
    p.add_argument("--examples", type=int, default=None,
                   help="dataset: examples to render (default 2000); train: examples of the rendered set (default 400)")
    p.add_argument("--workers", type=int, default=None, help="dataset, scan: worker processes (default: one per core)")
    p.add_argument("--copies", type=int, default=8, help="scan: zips of each model (default 8)")
    p.add_argument("--entries", type=int, default=1000, help="scan: catalog entries for the dedup timing (default 1000)")
    p.add_argument("--repeat", type=int, default=7, help="timed runs per file (median reported; render: x5)")
    p.add_argument("--preset", choices=["tha1", "tha3"], default="tha1", help="render: image preset (default tha1)")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    for f in args.files if args.what != "train" else []:  # bench train takes a dataset folder
        if not Path(f).is_file():
            raise UserError(f"{f}: no such file")
    if args.what == "parse":
        if not args.files:
            raise UserError("bench parse needs at least one model file")
        print(format_parse_rows(bench_parse([Path(f) for f in args.files], repeat=args.repeat)))
    elif args.what == "render":
        from mmdsynth.render import RenderError

        if len(args.files) != 1:
            raise UserError("bench render needs exactly one model file")
        try:
            result = bench_render(Path(args.files[0]), preset=args.preset, repeat=max(3, args.repeat * 5))
        except RenderError as exc:
            raise UserError(f"cannot render: {exc}") from None
        print(format_render_result(result))
    elif args.what == "dataset":
        if len(args.files) != 1:
            raise UserError("bench dataset needs exactly one model file")
        print(format_dataset_result(bench_dataset(Path(args.files[0]), examples=args.examples or 2000, workers=args.workers)))
    elif args.what == "scan":
        from mmdsynth.curate_cmd import bench_scan, format_bench_scan

        print(format_bench_scan(bench_scan(models=[Path(f) for f in args.files] or None, copies=args.copies,
                                           workers=args.workers, entries=args.entries)))
    elif args.what == "annotate":
        from mmdsynth.annotate_cmd import cmd_bench_annotate

        return cmd_bench_annotate(args)
    elif args.what == "train":
        from mmdsynth.train_cmd import bench_train

        return bench_train(args)
    return 0
