"""The one error type the model loader lets escape."""

from __future__ import annotations

import os


class MMDFormatError(ValueError):
    """A PMX/PMD file that cannot be read as a model.

    Attributes:
        path: the file (str, may be ``"<bytes>"`` when parsing a buffer).
        offset: byte offset (int) where the problem was found, or None when the
            problem concerns the file as a whole.
        field: the field being read, e.g. ``"vertices[12].bone_indices"``.
        reason: what is wrong, in words.

    ``str(err)`` is one line: ``FILE: byte OFFSET: FIELD: REASON``.
    """

    def __init__(self, path: str | os.PathLike | None, offset: int | None, field: str, reason: str):
        self.path = str(path) if path is not None else "<bytes>"
        self.offset = offset
        self.field = field
        self.reason = reason
        where = f"byte {offset}" if offset is not None else "whole file"
        super().__init__(f"{self.path}: {where}: {field}: {reason}")

    def __reduce__(self):
        # Keep the error picklable across worker processes.
        return (type(self), (self.path, self.offset, self.field, self.reason))
