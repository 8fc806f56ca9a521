"""Camera framing: image presets, the MMD-to-view conversion and the orthographic projection.

Pure numpy (no GL), so everything here is testable without a context.

Coordinate systems
------------------
* **MMD space** (model data): left-handed, +Y up, the model faces -Z, the
  character's left is +X, lengths in MMD units.
* **View space** (what the shaders see): right-handed, +x to the image's right,
  +y up, +z toward the viewer. The viewer stands in front of the character
  (at MMD -Z) and looks at its front, so the character's left (+X) is on the
  image's right and only z changes sign. :data:`MMD_TO_VIEW` (diag(1, 1, -1))
  is that conversion; it is the ONLY place where MMD space becomes view space
  (the renderer applies this one matrix to positions and normals in its vertex
  shader). A reflection reverses triangle winding: PMX/PMD front faces are
  clockwise on screen as seen from their front (Direct3D convention), and stay
  clockwise on screen after the flip, so the renderer declares clockwise
  triangles as front facing (``ctx.front_face = "cw"``).
* **Image (pixel) coordinates**: x to the right, y down, continuous; pixel
  (column c, row r) covers [c, c+1) x [r, r+1); row 0 is the top row.

Framing (DESIGN.md): an orthographic projection in which the annotated head top
and head bottom (chin tip), MMD Y units in the rest pose, land on the preset's
rows (the horizontal lines y = 64 and y = 192 for both presets, so the head
covers rows 64..191) and the 頭 bone's X lands on the image's centre line
(x = width / 2, the boundary between columns width/2 - 1 and width/2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MMD_TO_VIEW", "Preset", "PRESETS", "Framing", "get_preset", "ortho_matrix"]

#: (4,4) float64: MMD space -> right-handed view space (flip z). The one
#: conversion between the two; see the module docstring.
MMD_TO_VIEW = np.diag([1.0, 1.0, -1.0, 1.0])
MMD_TO_VIEW.flags.writeable = False


@dataclass(frozen=True)
class Preset:
    """An output image size and where the head goes.

    ``width``/``height`` in pixels; ``head_top_row``/``head_bottom_row``: the
    image y (pixels from the top edge, continuous) of the head top and of the
    chin tip.
    """

    name: str
    width: int
    height: int
    head_top_row: float = 64.0
    head_bottom_row: float = 192.0

    @property
    def center_column(self) -> float:
        """Image x of the head's centre line: width / 2 (pixels)."""
        return self.width / 2.0


#: Presets of DESIGN.md: ``tha1`` 256x256 and ``tha3`` 512x512, head in rows 64..192.
PRESETS: dict[str, Preset] = {
    "tha1": Preset("tha1", 256, 256, 64.0, 192.0),
    "tha3": Preset("tha3", 512, 512, 64.0, 192.0),
}


def get_preset(preset: str | Preset) -> Preset:
    """``preset`` itself or the preset of that name; KeyError lists the known names."""
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise KeyError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})") from None


def ortho_matrix(left: float, right: float, bottom: float, top: float, near: float, far: float) -> np.ndarray:
    """(4,4) float64 OpenGL orthographic projection (glOrtho): view x in
    [left, right] -> NDC [-1, 1], y in [bottom, top] -> [-1, 1], view z = -near
    -> -1 and z = -far -> +1 (near/far are distances in front of the viewer).
    Row-major (transpose it for GL's column-major uniforms)."""
    m = np.zeros((4, 4))
    m[0, 0] = 2.0 / (right - left)
    m[1, 1] = 2.0 / (top - bottom)
    m[2, 2] = -2.0 / (far - near)
    m[0, 3] = -(right + left) / (right - left)
    m[1, 3] = -(top + bottom) / (top - bottom)
    m[2, 3] = -(far + near) / (far - near)
    m[3, 3] = 1.0
    return m


@dataclass(frozen=True)
class Framing:
    """Where the camera looks: an orthographic view of MMD space onto an image.

    * ``width``, ``height``: image size in pixels.
    * ``scale``: pixels per MMD unit (the same horizontally and vertically).
    * ``center_x``: the MMD X that lands on the image's centre line x = width/2.
    * ``top_y``: the MMD Y at the image's top edge (y = 0).

    An MMD point (X, Y, Z) lands at image x = width/2 + (X - center_x) * scale,
    y = (top_y - Y) * scale (Z only decides what is in front). Build one with
    :meth:`from_head`.
    """

    width: int
    height: int
    scale: float
    center_x: float
    top_y: float
    preset: str = ""

    @classmethod
    def from_head(cls, preset: str | Preset, head_top: float, head_bottom: float, center_x: float = 0.0) -> Framing:
        """The framing that puts ``head_top`` on the preset's head-top row,
        ``head_bottom`` (the chin tip) on its head-bottom row and ``center_x``
        (normally the 頭 bone's rest X) on the centre line.

        Args:
            preset: ``"tha1"``, ``"tha3"`` or a :class:`Preset`.
            head_top, head_bottom: MMD Y units in the rest pose.
            center_x: MMD X units.

        Raises:
            KeyError: unknown preset name.
            ValueError: a bound is not finite, or ``head_top <= head_bottom``.
        """
        p = get_preset(preset)
        values = (float(head_top), float(head_bottom), float(center_x))
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"head bounds must be finite numbers (top={head_top}, bottom={head_bottom}, center_x={center_x})")
        top, bottom, cx = values
        if top <= bottom:
            raise ValueError(f"head top ({top:g}) must be above head bottom ({bottom:g})")
        scale = (p.head_bottom_row - p.head_top_row) / (top - bottom)
        return cls(width=p.width, height=p.height, scale=scale, center_x=cx, top_y=top + p.head_top_row / scale, preset=p.name)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return (self.width, self.height)

    @property
    def view_bounds(self) -> tuple[float, float, float, float]:
        """(left, right, bottom, top) of the image in view-space x/y (= MMD X/Y), MMD units."""
        half_w = self.width / (2.0 * self.scale)
        return (self.center_x - half_w, self.center_x + half_w, self.top_y - self.height / self.scale, self.top_y)

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """Image coordinates of MMD-space points.

        Args:
            points: (..., 3) or (..., 2) MMD X, Y (Z ignored), MMD units.
        Returns:
            (..., 2) float64 image x (right), y (down), in pixels, continuous
            (pixel column c spans [c, c+1)).
        """
        p = np.asarray(points, np.float64)
        x = self.width / 2.0 + (p[..., 0] - self.center_x) * self.scale
        y = (self.top_y - p[..., 1]) * self.scale
        return np.stack([x, y], axis=-1)

    def to_mmd(self, pixels: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_pixels`: (..., 2) image x, y (pixels) -> (..., 2) MMD X, Y (MMD units)."""
        p = np.asarray(pixels, np.float64)
        return np.stack([self.center_x + (p[..., 0] - self.width / 2.0) / self.scale, self.top_y - p[..., 1] / self.scale], axis=-1)

    def projection(self, z_min: float, z_max: float) -> np.ndarray:
        """(4,4) float64 row-major matrix from VIEW space to clip space.

        ``z_min``, ``z_max``: the MMD Z range that must not be clipped (MMD
        units; e.g. the posed model's bounding box, padded). View z = -MMD Z,
        so the nearest point to the viewer is the one with the smallest MMD Z.
        Raises ValueError when the range is empty or not finite.
        """
        if not (math.isfinite(z_min) and math.isfinite(z_max)) or z_max < z_min:
            raise ValueError(f"bad depth range [{z_min}, {z_max}]")
        if z_max - z_min < 1e-6:
            z_min, z_max = z_min - 0.5, z_max + 0.5
        left, right, bottom, top = self.view_bounds
        # view z = -Z: near plane (distance) = -(largest view z) = z_min.
        return ortho_matrix(left, right, bottom, top, near=z_min, far=z_max)

    def mvp(self, z_min: float, z_max: float) -> np.ndarray:
        """(4,4) float64 row-major MMD space -> clip space: ``projection @ MMD_TO_VIEW``."""
        return self.projection(z_min, z_max) @ MMD_TO_VIEW
