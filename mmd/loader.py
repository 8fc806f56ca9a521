"""``load_model``: read a PMX or PMD file, chosen by its magic bytes."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import MMDFormatError
from .model import Model
from .pmd import PMD_MAGIC, read_pmd
from .pmx import PMX_MAGIC, read_pmx


def parse_model(data: bytes, path: str | os.PathLike | None = None) -> Model:
    """Parse model bytes; the format is chosen from the magic (``PMX `` or ``Pmd``),
    never from the file name.

    Raises:
        MMDFormatError: for any input that is not a readable model. No other
            exception type escapes for any bytes: an unexpected internal error
            is reported as an MMDFormatError too, so batch jobs can skip the file.
    """
    name = str(path) if path is not None else None
    data = bytes(data)
    if data[:4] == PMX_MAGIC:
        reader = read_pmx
    elif data[:3] == PMD_MAGIC:
        reader = read_pmd
    else:
        raise MMDFormatError(name, 0, "header.magic", f"not a PMX or PMD file (starts with {data[:4]!r})")
    try:
        model = reader(data, name)
    except MMDFormatError:
        raise
    except (MemoryError, RecursionError, ValueError, TypeError, IndexError, KeyError, OverflowError,
            ArithmeticError, UnicodeError, AttributeError) as exc:  # pragma: no cover - safety net
        raise MMDFormatError(name, None, "model", f"unreadable ({type(exc).__name__}: {exc})") from exc
    model.path = Path(path) if path is not None else None
    return model


def load_model(path: str | os.PathLike) -> Model:
    """Load a PMX 2.0/2.1 or PMD model file.

    Returns a :class:`Model` whose ``path`` is the file (textures resolve
    relative to its folder). Raises :class:`MMDFormatError` for malformed
    files and ``OSError`` (FileNotFoundError, PermissionError, ...) when the
    file cannot be read at all.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    return parse_model(data, path)
