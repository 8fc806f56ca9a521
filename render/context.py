"""The process's one headless OpenGL context (ModernGL over EGL).

:func:`get_context` creates a standalone OpenGL 3.3+ core context through EGL on
first use and returns the same one afterwards (a forked child gets its own: a GL
context cannot cross ``fork``). It works without a display: on Mesa's llvmpipe
(software) and on NVIDIA's EGL driver alike.
"""

from __future__ import annotations

import os
import threading

import moderngl

__all__ = ["RenderError", "get_context", "renderer_string", "is_software_renderer", "release_context"]

_lock = threading.Lock()
_ctx: moderngl.Context | None = None
_ctx_pid: int | None = None

# Substrings of GL_RENDERER that mark a CPU (software) rasteriser.
_SOFTWARE_MARKERS = ("llvmpipe", "softpipe", "swiftshader", "lavapipe", "software rasterizer", "swrast")


class RenderError(RuntimeError):
    """The GL context or a GL resource could not be created (one-line message)."""


def get_context() -> moderngl.Context:
    """The process's standalone ModernGL context (EGL backend, OpenGL >= 3.3 core).

    Created on the first call (tens of milliseconds) and shared by every
    renderer in the process; not thread-safe to *use* from several threads at
    once (GL contexts are current on one thread).

    Raises:
        RenderError: no EGL/OpenGL 3.3 context can be created (no libEGL, no
            driver); the message names the cause in one line.
    """
    global _ctx, _ctx_pid
    with _lock:
        if _ctx is not None and _ctx_pid == os.getpid():
            return _ctx
        try:
            ctx = moderngl.create_standalone_context(require=330, backend="egl")
        except Exception as exc:  # noqa: BLE001 - moderngl/glcontext raise several types
            text = " ".join(str(exc).split()) or type(exc).__name__
            raise RenderError(f"cannot create a headless OpenGL 3.3 context through EGL: {text}") from None
        _ctx, _ctx_pid = ctx, os.getpid()
        return ctx


def renderer_string() -> str:
    """GL_RENDERER of the process's context, e.g. ``"llvmpipe (LLVM 15.0.6, 256 bits)"``
    or ``"NVIDIA H100 80GB HBM3/PCIe/SSE2"``. Raises RenderError like :func:`get_context`."""
    return str(get_context().info.get("GL_RENDERER", "unknown"))


def is_software_renderer() -> bool:
    """True when the context rasterises on the CPU (llvmpipe, softpipe, SwiftShader...)."""
    name = renderer_string().lower()
    return any(marker in name for marker in _SOFTWARE_MARKERS)


def release_context() -> None:
    """Release the process's context (renderers made from it become unusable).
    Mostly for tests; a later :func:`get_context` makes a new one."""
    global _ctx, _ctx_pid
    with _lock:
        if _ctx is not None and _ctx_pid == os.getpid():
            _ctx.release()
        _ctx, _ctx_pid = None, None
