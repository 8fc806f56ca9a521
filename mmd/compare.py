"""Structural comparison of models, for round-trip checks and tests."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .model import Model

# Fields that describe where a model came from rather than what it is.
PROVENANCE_FIELDS = frozenset({"path", "warnings", "_texture_cache"})


def _same_scalar(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def _diff(a, b, where: str, out: list[str], ignore: frozenset[str], limit: int) -> None:
    if len(out) >= limit:
        return
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a_arr, b_arr = np.asarray(a), np.asarray(b)
        if a_arr.shape != b_arr.shape:
            out.append(f"{where}: shape {a_arr.shape} != {b_arr.shape}")
        elif a_arr.dtype.names or b_arr.dtype.names:
            if a_arr.dtype != b_arr.dtype or a_arr.tobytes() != b_arr.tobytes():
                out.append(f"{where}: structured arrays differ")
        elif not np.array_equal(a_arr, b_arr, equal_nan=a_arr.dtype.kind == "f" and b_arr.dtype.kind == "f"):
            with np.errstate(invalid="ignore"):
                bad = np.argwhere(a_arr != b_arr)
            first = tuple(int(x) for x in bad[0]) if len(bad) else ()
            out.append(f"{where}: {len(bad)} values differ, first at {first}: {a_arr[first]!r} != {b_arr[first]!r}")
        return
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
        if type(a) is not type(b):
            out.append(f"{where}: {type(a).__name__} != {type(b).__name__}")
            return
        for f in dataclasses.fields(a):
            if f.name not in ignore:
                _diff(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}", out, ignore, limit)
        return
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append(f"{where}: length {len(a)} != {len(b)}")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{where}[{i}]", out, ignore, limit)
        return
    if not _same_scalar(a, b):
        out.append(f"{where}: {a!r} != {b!r}")


def model_differences(a: Model, b: Model, ignore: set[str] | frozenset[str] = frozenset(), limit: int = 50) -> list[str]:
    """List how ``a`` and ``b`` differ, field by field (at most ``limit`` lines).

    Arrays must match exactly (NaN equals NaN), as must every dataclass field
    of materials, bones, morphs, frames, rigid bodies, joints and soft bodies.
    ``ignore`` names fields to skip at any depth (e.g. ``{"format", "version"}``
    when comparing a PMD with its PMX conversion); provenance fields (path,
    warnings, texture cache) are always skipped. An empty list means equal.
    """
    out: list[str] = []
    _diff(a, b, "model", out, frozenset(ignore) | PROVENANCE_FIELDS, limit)
    return out
