"""Partial redraw: the part of an image that a pose can change (pure numpy).

The dataset renders many poses of one model under one framing and one
lighting, and most of each picture stays the same: an expression moves a few
hundred vertices around the eyes and the mouth, a head rotation moves the head
and the hair. :class:`~mmdsynth.render.renderer.ModelRenderer` therefore keeps
the rest-pose image of each (output size, framing, lighting) it has drawn and,
for a new pose, repaints only a rectangle of it.

Why the result equals a full redraw, pixel for pixel
----------------------------------------------------
Call a vertex *dirty* when its drawn data (position, normal or UV) may differ
from the rest pose: a morph moved it or changed its UV, or a bone with a
non-identity skinning transform influences it (the skinning pass and
:class:`~mmdsynth.mmd.skinning.Skinner` keep every other vertex bit for bit).
A face is dirty when one of its vertices is, or when a material morph touched
its material. Every sample a dirty face covers, in the rest pose or in the
new pose, lies inside the union of its screen bounding boxes in both poses;
the rectangle ``R`` (:func:`dirty_rect`) encloses all of them, padded by a
pixel for the GPU's rounding. Outside ``R`` only clean faces draw, with the
same data, in the same order, with the same depth range: those pixels are the
rest image's. Inside ``R`` the renderer clears and draws every face that can
reach ``R`` (:func:`faces_meeting`: all dirty faces and the clean faces whose
box meets ``R``) in file order with a scissor, so each sample there sees the
same fragments in the same order as in a full redraw. ``R`` is aligned to
output pixels, so the supersampling / MSAA resolve reads the same samples.

Boxes are in image pixels (:meth:`~mmdsynth.render.framing.Framing.to_pixels`:
x right, y down, pixel column c spans [c, c+1)).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["any_column", "changed_rows", "dirty_rect", "face_boxes", "faces_meeting", "points_box"]


def changed_rows(current: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """(N,) bool: the rows of ``current`` (N,K) that differ from ``rest`` (N,K)
    in any column (exact comparison; NaN counts as changed)."""
    n = len(rest)
    if n == 0:
        return np.zeros(0, bool)
    # One flat comparison, then OR the K columns (numpy's any(axis=1) over a
    # few columns is many times slower).
    flat = np.not_equal(np.ascontiguousarray(current).ravel(), np.ascontiguousarray(rest).ravel())
    return any_column(flat.reshape(n, -1))


def any_column(flags: np.ndarray) -> np.ndarray:
    """(N,) bool: the rows of ``flags`` (N,K) bool with a True in some column."""
    out = flags[:, 0].copy()
    for k in range(1, flags.shape[1]):
        out |= flags[:, k]
    return out


def face_boxes(pixels: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Screen bounding boxes of faces.

    Args:
        pixels: (N,2) float image x, y of every vertex (pixels).
        faces: (F,3) integer vertex indices.
    Returns:
        (F,4) float64 ``x_min, y_min, x_max, y_max`` per face (pixels).
    """
    if len(faces) == 0:
        return np.zeros((0, 4))
    x = pixels[:, 0].take(faces)
    y = pixels[:, 1].take(faces)
    return np.stack([x.min(axis=1), y.min(axis=1), x.max(axis=1), y.max(axis=1)], axis=1)


def points_box(pixels: np.ndarray) -> np.ndarray | None:
    """``x_min, y_min, x_max, y_max`` (float64) of (M,2) pixel points; None when
    there are none."""
    if len(pixels) == 0:
        return None
    # Column by column: numpy's axis-0 reduction over 2 columns is many times slower.
    x, y = pixels[:, 0], pixels[:, 1]
    return np.array([x.min(), y.min(), x.max(), y.max()], np.float64)


def dirty_rect(boxes: list[np.ndarray | None], width: int, height: int, pad: int = 1) -> tuple[int, int, int, int] | None:
    """The output-pixel rectangle that encloses ``boxes`` (each ``x_min, y_min,
    x_max, y_max`` in pixels, or None), grown by ``pad`` pixels and clipped to
    the image.

    Returns ``(x0, y0, x1, y1)`` (ints, half-open: columns x0..x1-1, rows
    y0..y1-1, row 0 at the top), None when nothing is left inside the image.
    Raises ValueError for a non-finite box (the caller then redraws all).
    """
    real = [b for b in boxes if b is not None]
    if not real:
        return None
    b = np.stack(real)
    if not np.all(np.isfinite(b)):
        raise ValueError("a dirty box is not finite")
    x_min, y_min = float(b[:, 0].min()), float(b[:, 1].min())
    x_max, y_max = float(b[:, 2].max()), float(b[:, 3].max())
    # A sample at continuous x lies in pixel floor(x); x_max may sit on a pixel's left edge.
    x0 = max(0, math.floor(x_min) - pad)
    y0 = max(0, math.floor(y_min) - pad)
    x1 = min(int(width), math.floor(x_max) + 1 + pad)
    y1 = min(int(height), math.floor(y_max) + 1 + pad)
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, y0, x1, y1


def faces_meeting(boxes: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    """(F,) bool: faces whose box (F,4) (pixels) meets the pixel rectangle
    ``rect`` (x0, y0, x1, y1 half-open), with a pixel of margin."""
    x0, y0, x1, y1 = rect
    return (boxes[:, 2] >= x0 - 1) & (boxes[:, 0] <= x1 + 1) & (boxes[:, 3] >= y0 - 1) & (boxes[:, 1] <= y1 + 1)
