"""Small text helpers for one-line messages and summaries."""

from __future__ import annotations

from typing import Any


def one_line(text: Any, limit: int = 500) -> str:
    """``text`` with all whitespace runs (newlines included) collapsed to one
    space, cut to ``limit`` characters with "..." (a catalog reason or a
    progress message must stay on one line)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` with thousands separators and ``noun`` in the right number:
    ``count(1, "model")`` -> ``"1 model"``, ``count(1200, "model")`` -> ``"1,200 models"``,
    ``count(2, "copy", "copies")`` -> ``"2 copies"``."""
    return f"{n:,} {noun if n == 1 else (plural or noun + 's')}"


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units; whole bytes below 1 KiB)."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (False for anything without ``isatty``)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
