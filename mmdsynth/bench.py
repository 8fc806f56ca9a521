"""``mmdsynth bench``: speed figures measured in one run (never timed tests)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

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
