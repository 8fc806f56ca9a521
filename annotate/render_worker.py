"""Renders for the annotation tools, made off the UI thread.

:class:`RenderWorker` owns one plain Python thread. That thread loads models,
computes the suggestions, owns the :class:`~mmdsynth.render.ModelRenderer`
objects and renders :class:`ViewSpec` requests; results arrive in the UI thread
as Qt signals (queued across threads) carrying ``QImage`` objects (which, unlike
pixmaps, may be made outside the UI thread).

The GL context
--------------
The renderer uses the process's one EGL context (:func:`mmdsynth.render.get_context`),
and a GL context is current on one thread at a time. The worker therefore
*borrows* it: :meth:`RenderWorker.start` makes the context not current on the
calling thread, the worker thread makes it current for its lifetime, and
:meth:`RenderWorker.stop` hands it back (so code in the UI thread that renders
afterwards, e.g. in a test run, keeps working). EGL contexts work from a
non-main thread this way on Mesa (llvmpipe) and NVIDIA alike; no display is
needed.

Queues and caches
-----------------
Two lanes of work: ``now`` (the model on screen) before ``prefetch`` (the
models next in the list). A new request for a lane replaces what is pending
there, so stale work is dropped when the person moves on; the live preview
uses :meth:`RenderWorker.request_latest`, which keeps only the newest pending
render of one kind. Results are kept in a small LRU (``(model id, spec) ->
QImage``, :meth:`cached_image`) and model information in another
(:meth:`cached_info`), which the UI checks first, synchronously; a prefetched
model therefore shows at once. At most ``max_models`` models (with their GPU
resources) stay loaded.
"""

from __future__ import annotations

import collections
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PyQt5 import QtCore, QtGui

__all__ = ["ModelInfo", "RenderWorker", "ViewSpec", "ANNOTATION_LIGHTING"]

#: Lights of every annotation render: the THA1 setup (white directional light
#: from the viewer, magnitude 0.5) with a mid-range ambient (THA1 draws it from
#: U[0.5, 1.2]), so faces look as in a typical training image.
ANNOTATION_LIGHTING = {"ambient": 0.7, "directional": 0.5}


@dataclass(frozen=True)
class ViewSpec:
    """One picture to render (hashable: it is the cache key with the model id).

    * ``kind``: ``"front"`` (rest pose from the front), ``"side"`` (rest pose
      turned 90 degrees: the character's left side faces the viewer, its face
      points to the image's left), or any other name for a front view (the
      tools use ``"tha1"``, ``"face"``, ``"body"`` to tell requests apart).
    * ``width``, ``height``: pixels; ``scale``: pixels per MMD unit;
      ``center_x``: MMD X on the image's centre line; ``top_y``: MMD Y at the
      image's top edge (as :class:`mmdsynth.render.Framing`).
    * ``morphs``: ``((morph index, weight), ...)`` applied (front views).
    """

    kind: str
    width: int
    height: int
    scale: float
    center_x: float
    top_y: float
    morphs: tuple[tuple[int, float], ...] = ()

    @classmethod
    def from_framing(cls, kind: str, framing, morphs: tuple[tuple[int, float], ...] = ()) -> ViewSpec:
        """The spec of ``framing`` (a :class:`mmdsynth.render.Framing`)."""
        return cls(kind, int(framing.width), int(framing.height), float(framing.scale),
                   float(framing.center_x), float(framing.top_y), tuple(morphs))

    @classmethod
    def region(cls, kind: str, left: float, right: float, top: float, bottom: float, width: int,
               morphs: tuple[tuple[int, float], ...] = ()) -> ViewSpec:
        """The spec showing the MMD rectangle X in [left, right], Y in [bottom,
        top] at ``width`` pixels (height follows the aspect ratio)."""
        scale = width / max(right - left, 1e-9)
        height = max(1, int(round((top - bottom) * scale)))
        return cls(kind, int(width), height, float(scale), float((left + right) / 2), float(top), tuple(morphs))

    def framing(self):
        """The :class:`mmdsynth.render.Framing` of this spec."""
        from mmdsynth.render import Framing

        return Framing(width=self.width, height=self.height, scale=self.scale, center_x=self.center_x, top_y=self.top_y)

    def to_image(self, x: float, y: float) -> tuple[float, float]:
        """Image pixel coordinates of the MMD point (x, y) (front views)."""
        return (self.width / 2.0 + (x - self.center_x) * self.scale, (self.top_y - y) * self.scale)


@dataclass
class ModelInfo:
    """What the tools need to know about a loaded model (made by the worker).

    * ``model_id``, ``path``, ``name``; ``load_seconds`` (load + suggestions).
    * ``morph_names``, ``morph_names_en``, ``morph_panels`` (per morph index).
    * ``head``: the :class:`~mmdsynth.annotate.suggest.HeadBounds` suggestion
      or None (``head_error`` says why).
    * ``morphs``: the :class:`~mmdsynth.annotate.suggest.MorphSuggestion` or
      None (not asked for, or ``morphs_error``).
    * ``center_x``: the 頭 bone's X (0 when there is none); ``head_z``: its Z.
    * ``bounds_min``, ``bounds_max``: the rest pose's bounding box (MMD units).
    * ``warnings``: loader warnings.
    """

    model_id: str
    path: str
    name: str
    morph_names: list[str]
    morph_names_en: list[str]
    morph_panels: list[int]
    head: Any = None
    head_error: str | None = None
    morphs: Any = None
    morphs_error: str | None = None
    center_x: float = 0.0
    head_z: float = 0.0
    bounds_min: tuple[float, float, float] = (0.0, 0.0, 0.0)
    bounds_max: tuple[float, float, float] = (0.0, 0.0, 0.0)
    warnings: list[str] = field(default_factory=list)
    load_seconds: float = 0.0

    def morph_index(self, name: str | None) -> int | None:
        """Index of the first morph called ``name``, or None."""
        if name is None:
            return None
        try:
            return self.morph_names.index(name)
        except ValueError:
            return None


class _Loaded:
    """A model loaded in the worker thread, with its renderer (made on first render)."""

    def __init__(self, model, info: ModelInfo):
        self.model = model
        self.info = info
        self.renderer = None
        self.side_mesh = None

    def release(self) -> None:
        """Free the renderer's GPU resources (worker thread only)."""
        if self.renderer is not None:
            try:
                self.renderer.release()
            except Exception:  # noqa: BLE001 - best effort at eviction
                pass
            self.renderer = None


def _qimage(rgba: np.ndarray) -> QtGui.QImage:
    """A QImage owning a copy of an (H, W, 4) uint8 straight-alpha RGBA array."""
    rgba = np.ascontiguousarray(rgba)
    h, w = rgba.shape[:2]
    return QtGui.QImage(rgba.data, w, h, 4 * w, QtGui.QImage.Format_RGBA8888).copy()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class RenderWorker(QtCore.QObject):
    """Loads models, computes suggestions and renders :class:`ViewSpec` s on a
    thread of its own (see the module docstring).

    Args:
        morphs: also compute :func:`~mmdsynth.annotate.suggest.suggest_morphs`
            (the eyes tool); the head suggestion is always computed.
        max_image_mib: size limit of the image cache (LRU), MiB.
        max_models: models kept loaded (with their GPU resources).

    Signals (delivered in the thread that made the worker):

    * ``info_ready(model_id, ModelInfo)``;
    * ``image_ready(model_id, ViewSpec, QImage)``;
    * ``failed(model_id, message)``: the model could not be loaded or
      rendered (the message is one line).

    Call :meth:`start` before requesting and :meth:`stop` when done.
    """

    info_ready = QtCore.pyqtSignal(str, object)
    image_ready = QtCore.pyqtSignal(str, object, object)
    failed = QtCore.pyqtSignal(str, str)

    def __init__(self, morphs: bool = False, max_image_mib: float = 192, max_models: int = 3, parent=None):
        super().__init__(parent)
        self.want_morphs = morphs
        self.max_image_bytes = int(max_image_mib * 2**20)
        self._image_bytes = 0
        self.max_models = max(1, max_models)
        self._cond = threading.Condition()
        self._lanes: dict[str, collections.deque] = {"now": collections.deque(), "prefetch": collections.deque()}
        self._images: collections.OrderedDict = collections.OrderedDict()
        self._infos: collections.OrderedDict = collections.OrderedDict()
        self._errors: dict[str, str] = {}
        self._loaded: collections.OrderedDict[str, _Loaded] = collections.OrderedDict()
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ctx = None
        self.render_error: str | None = None
        #: (what, model id, seconds) of the last jobs, newest last (for the benchmark).
        self.timings: collections.deque = collections.deque(maxlen=2000)

    # -- lifetime --------------------------------------------------------------

    def start(self) -> None:
        """Start the thread; borrows the process's GL context (module docstring)."""
        if self._thread is not None:
            return
        try:
            from mmdsynth.render import get_context

            self._ctx = get_context()
            self._ctx.__exit__(None, None, None)  # not current here any more: the worker takes it
        except Exception as exc:  # noqa: BLE001 - RenderError, or no moderngl at all
            self._ctx = None
            self.render_error = _one_line(exc)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="mmdsynth-render-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread (after its current job), free its renderers and hand
        the GL context back to the calling thread. Idempotent."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._stopping = True
            for lane in self._lanes.values():
                lane.clear()
            self._cond.notify_all()
        thread.join(timeout)
        self._thread = None
        if not thread.is_alive() and self._ctx is not None:
            try:
                self._ctx.__enter__()
            except Exception:  # noqa: BLE001 - nothing else to do
                pass

    # -- requests (UI thread) ---------------------------------------------------

    def cached_info(self, model_id: str) -> ModelInfo | None:
        """The model's :class:`ModelInfo` if already made, else None."""
        with self._cond:
            info = self._infos.get(model_id)
            if info is not None:
                self._infos.move_to_end(model_id)
            return info

    def error_of(self, model_id: str) -> str | None:
        """The load error of ``model_id`` if loading it failed, else None."""
        with self._cond:
            return self._errors.get(model_id)

    def cached_image(self, model_id: str, spec: ViewSpec) -> QtGui.QImage | None:
        """The image of (``model_id``, ``spec``) if in the cache, else None."""
        with self._cond:
            image = self._images.get((model_id, spec))
            if image is not None:
                self._images.move_to_end((model_id, spec))
            return image

    def request(self, model_id: str, path: str | Path, specs=(), lane: str = "now", replace: bool = True,
                front: bool = False) -> int:
        """Queue the model's info (when not made yet) and the renders of
        ``specs`` not in the cache, in ``lane`` (``"now"`` or ``"prefetch"``);
        ``replace`` drops what was pending in that lane first; ``front`` puts
        the jobs before the pending ones (e.g. the renders of a model whose
        info just arrived, made while it is still loaded). Returns the number
        of jobs queued (0: everything is cached)."""
        jobs = []
        with self._cond:
            if model_id not in self._infos and model_id not in self._errors:
                jobs.append(("info", model_id, str(path), None, True))
            for spec in specs:
                if (model_id, spec) not in self._images:
                    jobs.append(("render", model_id, str(path), spec, True))
            queue = self._lanes[lane]
            if replace:
                queue.clear()
            queued = set(queue)
            new = [job for job in jobs if job not in queued]
            if front:
                queue.extendleft(reversed(new))
            else:
                queue.extend(new)
            self._cond.notify_all()
        return len(jobs)

    def request_latest(self, model_id: str, path: str | Path, spec: ViewSpec, cache: bool = False) -> bool:
        """Queue one render at the front of the ``now`` lane, dropping pending
        renders of the same model and ``spec.kind`` (a live preview: only the
        newest matters). With ``cache`` False the image is delivered but not
        kept (previews of every drag position would flush the cache).
        Returns False when the image is already cached."""
        with self._cond:
            if (model_id, spec) in self._images:
                return False
            queue = self._lanes["now"]
            kept = [j for j in queue if not (j[0] == "render" and j[1] == model_id and j[3].kind == spec.kind)]
            queue.clear()
            queue.append(("render", model_id, str(path), spec, cache))
            queue.extend(kept)
            self._cond.notify_all()
        return True

    def clear_lane(self, lane: str) -> None:
        """Drop what is pending in ``lane``."""
        with self._cond:
            self._lanes[lane].clear()

    def pending(self, lane: str | None = None) -> int:
        """Jobs waiting (in ``lane``, or in both), plus 1 while one is running."""
        with self._cond:
            n = sum(len(q) for name, q in self._lanes.items() if lane in (None, name))
            return n + (1 if self._busy else 0)

    def forget(self, model_id: str) -> None:
        """Drop the cached info and load error of a model (e.g. to retry)."""
        with self._cond:
            self._infos.pop(model_id, None)
            self._errors.pop(model_id, None)

    # -- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        if self._ctx is not None:
            try:
                self._ctx.__enter__()
            except Exception as exc:  # noqa: BLE001
                self.render_error = _one_line(exc)
        try:
            while True:
                with self._cond:
                    while not self._stopping and not any(self._lanes.values()):
                        self._busy = False
                        self._cond.wait()
                    if self._stopping:
                        break
                    lane = self._lanes["now"] if self._lanes["now"] else self._lanes["prefetch"]
                    job = lane.popleft()
                    self._busy = True
                try:
                    self._do(job)
                except Exception:  # noqa: BLE001 - a bug must not kill the worker
                    traceback.print_exc()
        finally:
            for loaded in self._loaded.values():
                loaded.release()
            self._loaded.clear()
            if self._ctx is not None:
                try:
                    self._ctx.__exit__(None, None, None)
                except Exception:  # noqa: BLE001
                    pass
            with self._cond:
                self._busy = False

    def _do(self, job) -> None:
        what, model_id, path, spec, keep = job
        with self._cond:
            error = self._errors.get(model_id)
        if error is not None:
            return  # already reported
        start = time.perf_counter()
        loaded = self._load(model_id, path)
        if loaded is None:
            return
        if what == "info":
            return
        with self._cond:
            if (model_id, spec) in self._images:
                return
        if self.render_error is not None:
            self._fail(model_id, f"cannot render: {self.render_error}", permanent=False)
            return
        try:
            rgba = self._render(loaded, spec)
        except Exception as exc:  # noqa: BLE001 - RenderError, bad geometry, driver trouble
            self._fail(model_id, f"cannot render {spec.kind} view: {_one_line(exc)}", permanent=False)
            return
        image = _qimage(rgba)
        if keep:
            with self._cond:
                self._images[(model_id, spec)] = image
                self._image_bytes += image.sizeInBytes()
                while self._image_bytes > self.max_image_bytes and len(self._images) > 1:
                    _, old = self._images.popitem(last=False)
                    self._image_bytes -= old.sizeInBytes()
        self.timings.append(("render:" + spec.kind, model_id, time.perf_counter() - start))
        self.image_ready.emit(model_id, spec, image)

    def _fail(self, model_id: str, message: str, permanent: bool = True) -> None:
        if permanent:
            with self._cond:
                self._errors[model_id] = message
                for lane in self._lanes.values():
                    for job in [j for j in lane if j[1] == model_id]:
                        lane.remove(job)
        self.failed.emit(model_id, message)

    def _load(self, model_id: str, path: str) -> _Loaded | None:
        loaded = self._loaded.get(model_id)
        if loaded is not None:
            self._loaded.move_to_end(model_id)
            return loaded
        from mmdsynth.annotate import suggest
        from mmdsynth.mmd.loader import load_model

        start = time.perf_counter()
        try:
            model = load_model(path)
        except Exception as exc:  # noqa: BLE001 - MMDFormatError, OSError, ...
            self._fail(model_id, f"cannot load {Path(path).name}: {_one_line(exc)}")
            return None
        info = ModelInfo(model_id=model_id, path=path, name=model.name,
                         morph_names=[m.name for m in model.morphs], morph_names_en=[m.name_en for m in model.morphs],
                         morph_panels=[int(m.panel) for m in model.morphs], warnings=list(model.warnings))
        if model.vertex_count:
            lo, hi = model.positions.min(axis=0), model.positions.max(axis=0)
            info.bounds_min = tuple(float(v) for v in lo)
            info.bounds_max = tuple(float(v) for v in hi)
        head_bone = next((b for b in model.bones if b.name == suggest.HEAD_BONE), None)
        if head_bone is not None:
            info.center_x, info.head_z = float(head_bone.position[0]), float(head_bone.position[2])
        try:
            info.head = suggest.suggest_head_bounds(model)
            info.center_x = float(info.head.center_x)
        except Exception as exc:  # noqa: BLE001 - ValueError for models without a head
            info.head_error = _one_line(exc)
        if self.want_morphs:
            try:
                info.morphs = suggest.suggest_morphs(model)
            except Exception as exc:  # noqa: BLE001
                info.morphs_error = _one_line(exc)
        info.load_seconds = time.perf_counter() - start
        loaded = _Loaded(model, info)
        self._loaded[model_id] = loaded
        while len(self._loaded) > self.max_models:
            _, old = self._loaded.popitem(last=False)
            old.release()
        with self._cond:
            self._infos[model_id] = info
            while len(self._infos) > 200:
                self._infos.popitem(last=False)
        self.timings.append(("info", model_id, info.load_seconds))
        self.info_ready.emit(model_id, info)
        return loaded

    def _render(self, loaded: _Loaded, spec: ViewSpec) -> np.ndarray:
        from mmdsynth.mmd.posing import Pose
        from mmdsynth.render import Lighting, ModelRenderer

        if loaded.renderer is None:
            loaded.renderer = ModelRenderer(loaded.model, preset="tha1")
        lighting = Lighting(**ANNOTATION_LIGHTING)
        framing = spec.framing()
        if spec.kind == "side":
            if loaded.side_mesh is None:
                loaded.side_mesh = _side_mesh(loaded.model, loaded.info.center_x, loaded.info.head_z)
            return loaded.renderer.render(loaded.side_mesh, framing, lighting)
        pose = Pose(morphs={int(i): float(w) for i, w in spec.morphs}) if spec.morphs else None
        return loaded.renderer.render_pose(pose, framing, lighting)


def _side_mesh(model, center_x: float, center_z: float):
    """The rest mesh turned 90 degrees about the vertical axis through
    (``center_x``, ``center_z``): the character's left side (+X) faces the
    viewer (-Z) and its face (-Z) points to -X, the image's left."""
    from mmdsynth.render import rest_mesh

    mesh = rest_mesh(model)
    # (x, z) -> (x', z'): front (0, -1) -> (-1, 0); left (1, 0) -> (0, -1)
    c, s = 0.0, 1.0  # cos, sin of 90 degrees
    p = model.positions.astype(np.float64)
    x, z = p[:, 0] - center_x, p[:, 2] - center_z
    q = p.copy()
    q[:, 0] = center_x + x * c + z * s
    q[:, 2] = center_z - x * s + z * c
    n = model.normals.astype(np.float64)
    m = n.copy()
    m[:, 0] = n[:, 0] * c + n[:, 2] * s
    m[:, 2] = -n[:, 0] * s + n[:, 2] * c
    mesh.positions = q.astype(np.float32)
    mesh.normals = m.astype(np.float32)
    return mesh
