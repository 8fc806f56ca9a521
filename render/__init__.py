"""Headless rendering of posed MMD models (ModernGL over EGL).

* :mod:`~mmdsynth.render.context`: the process's one GL context (:func:`get_context`,
  :func:`renderer_string`).
* :mod:`~mmdsynth.render.framing`: presets (``tha1`` 256x256, ``tha3`` 512x512), the
  MMD -> view conversion and the orthographic :class:`Framing` (pure numpy).
* :mod:`~mmdsynth.render.renderer`: :class:`ModelRenderer` (Phong, RGBA out) and
  :class:`Lighting`.
"""

from .context import RenderError, get_context, is_software_renderer, renderer_string
from .framing import MMD_TO_VIEW, PRESETS, Framing, Preset, get_preset
from .renderer import TEXTURE_FILTERS, Lighting, ModelRenderer, default_antialiasing, default_texture_filter, rest_mesh

__all__ = [
    "MMD_TO_VIEW",
    "PRESETS",
    "Framing",
    "Lighting",
    "ModelRenderer",
    "Preset",
    "RenderError",
    "TEXTURE_FILTERS",
    "default_antialiasing",
    "default_texture_filter",
    "get_context",
    "get_preset",
    "is_software_renderer",
    "renderer_string",
    "rest_mesh",
]
