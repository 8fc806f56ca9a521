"""The annotation tools' benchmark (``mmdsynth bench annotate MODEL``), measured in one run.

See :func:`mmdsynth.annotate_cmd.bench_annotate` for the figures. Runs on the
offscreen Qt platform unless a display is set; never a timed test.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["build_bench_library", "run_bench"]


def build_bench_library(folder: Path, model: Path, rows: int, variants: int) -> Path:
    """A library in ``folder/library`` holding ``variants`` distinct copies of
    ``model`` (same geometry and textures, a different comment each, with the
    automatic suggestions) plus synthetic rows (status ok, auto annotations;
    their files do not exist) up to ``rows`` models in all. Returns the library."""
    from mmdsynth.catalog_cmd import suggest_annotations
    from mmdsynth.datasets.catalog import Catalog, ModelRecord
    from mmdsynth.datasets.library import add_models
    from mmdsynth.mmd.loader import load_model
    from mmdsynth.mmd.pmx_write import save_pmx

    src = folder / "src"
    src.mkdir(parents=True)
    for entry in model.parent.iterdir():
        if entry.suffix.lower() not in (".pmx", ".pmd"):
            (src / entry.name).symlink_to(entry.resolve())
    m = load_model(model)
    base = m.comment
    for k in range(variants):
        m.comment = f"{base}\n(mmdsynth bench annotate: variant {k})"
        save_pmx(m, src / f"{model.stem}_v{k}.pmx")
    lib = folder / "library"
    with Catalog.open(lib, create=True) as cat:
        add_models(cat, [src], group="bench", suggest=suggest_annotations, progress=False)
        missing = max(0, rows - cat.count())
        slots = {"wink_left": "ウィンク２", "wink_right": "ウィンク２右", "wink_both": "まばたき",
                 "smile_wink_left": "ウィンク", "smile_wink_right": "ウィンク右", "smile_wink_both": "笑い", "mouth": "あ"}
        with cat.transaction():
            for i in range(missing):
                mid = hashlib.sha256(f"mmdsynth synthetic row {i}".encode()).hexdigest()
                cat.insert_model(ModelRecord(id=mid, path=f"models/synthetic/m{i:05d}/m{i:05d}.pmx", format="pmx",
                                             name=f"synthetic {i:05d}", group="synthetic", vertices=1, faces=1,
                                             morphs=7))
                cat.set_annotations(mid, {"head_top": 20.0, "head_bottom": 16.5, **slots}, "auto")
    return lib


def _wait(app, predicate, timeout: float) -> bool:
    end = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > end:
            return False
        app.processEvents()
        time.sleep(0.001)
    return True


def _prefetched(w) -> bool:
    """Whether the model after the current one is loaded and all its prefetch renders are cached."""
    pos = w.position()
    if pos is None or pos + 1 >= w.list_model.rowCount():
        return True
    nxt = w.list_model.row_at(pos + 1)
    info = w.worker.cached_info(nxt.id)
    if info is None:
        return False
    return all(w.worker.cached_image(nxt.id, spec) is not None for spec in w.prefetch_specs(nxt, info))


class _StallMeter:
    """Longest gap between ticks of a 10 ms Qt timer (UI responsiveness)."""

    def __init__(self):
        from PyQt5 import QtCore

        self.timer = QtCore.QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.last = None
        self.worst = 0.0

    def _tick(self):
        now = time.perf_counter()
        if self.last is not None:
            self.worst = max(self.worst, now - self.last - 0.010)
        self.last = now

    def start(self):
        self.last, self.worst = None, 0.0
        self.timer.start()

    def stop(self) -> float:
        self.timer.stop()
        return self.worst


def _measure_tool(app, window_class, catalog, variants: int) -> dict:
    """Next-model times of one tool (prefetched and cold), UI stall, eyes grid time."""
    out: dict = {}
    w = window_class(catalog, filter_name="needs review")
    w.resize(1500, 900)
    w.show()
    ready: list[str] = []
    w.model_ready.connect(ready.append)
    if not _wait(app, lambda: ready, 120):
        raise RuntimeError(f"{window_class.__name__}: the first model did not show within 120 s")
    meter = _StallMeter()
    times, stalls = [], []
    for _ in range(max(1, variants - 1)):
        meter.start()
        _wait(app, lambda: _prefetched(w), 120)  # the person looks; the next model is prefetched
        stalls.append(meter.stop())
        ready.clear()
        start = time.perf_counter()
        w.next_model()
        _wait(app, lambda: ready, 120)
        w.centralWidget().grab()  # painted
        times.append(time.perf_counter() - start)
    out["next_median_s"] = statistics.median(times)
    out["next_max_s"] = max(times)
    out["ui_stall_ms"] = 1000 * max(stalls)
    w.close()

    cold = window_class(catalog, filter_name="needs review", prefetch=False)
    cold.resize(1500, 900)
    cold.show()
    ready.clear()
    cold.model_ready.connect(ready.append)
    _wait(app, lambda: ready, 120)
    ready.clear()
    start = time.perf_counter()
    cold.next_model()
    _wait(app, lambda: ready, 120)
    cold.centralWidget().grab()
    out["cold_s"] = time.perf_counter() - start
    if hasattr(cold, "tiles"):
        _wait(app, lambda: cold.tiles.tiles and all(t.index in cold.tiles.pixmaps for t in cold.tiles.tiles), 120)
        out["grid_s"] = time.perf_counter() - start
        out["tiles"] = len(cold.tiles.tiles)
    cold.close()
    return out


_OPEN_SCRIPT = r"""
import os, sys, time
from mmdsynth.annotate.app import ensure_application
from mmdsynth.annotate.heads import HeadsWindow
from mmdsynth.datasets.catalog import Catalog
app = ensure_application()
cat = Catalog.open(sys.argv[1])
w = HeadsWindow(cat)
w.show()
app.processEvents()
w.grab()
print("shown", flush=True)
os._exit(0)
"""


def run_bench(model: Path, rows: int = 10000, variants: int = 4) -> dict:
    """Build the bench library and measure (see :func:`mmdsynth.annotate_cmd.bench_annotate`)."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from mmdsynth.datasets.catalog import HEAD_KEYS, Catalog
    from mmdsynth.render import renderer_string

    from .app import ensure_application
    from .eyes import EyesWindow
    from .heads import HeadsWindow
    from .model_list import load_rows

    app = ensure_application()
    result: dict = {"model": str(model), "rows": rows, "variants": variants}
    with tempfile.TemporaryDirectory(prefix="mmdsynth-bench-annotate-") as tmp:
        lib = build_bench_library(Path(tmp), model, rows, variants)
        result["renderer"] = renderer_string()
        start = time.perf_counter()
        with Catalog.open(lib) as cat:
            load_rows(cat, HEAD_KEYS)
        result["list_s"] = time.perf_counter() - start
        start = time.perf_counter()
        cat = Catalog.open(lib)
        try:
            w = HeadsWindow(cat)
            w.show()
            app.processEvents()
            w.grab()
            result["open_s"] = time.perf_counter() - start
            w.close()
            start = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-c", _OPEN_SCRIPT, str(lib)], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True, env=dict(os.environ))
            line = proc.stdout.readline()
            result["open_process_s"] = time.perf_counter() - start if line.startswith("shown") else float("nan")
            proc.wait()
            result["heads"] = _measure_tool(app, HeadsWindow, cat, variants)
            result["eyes"] = _measure_tool(app, EyesWindow, cat, variants)
        finally:
            cat.close()
    return result
